//! The server certificate from an ACME CA (`[acme]`), against Pebble (Debian's ACME test
//! server) on a network of the test's own, with a real systemd + dockerd machine as the Docker
//! host: issuance by http-01 on an IP identifier, the full chain served, clients of our CA
//! let in and an ACME leaf presented as a client refused, renewal at two thirds of a short
//! lifetime under a polling client with a container kept, and the ACME server unreachable at
//! renewal time: retried, the served certificate kept, renewed once it is back. ACME Renewal
//! Information (RFC 9773) against Debian 13's Pebble: the window honoured, a revocation renewed
//! with `replaces`, a window past expiry ignored.

mod common;

use std::time::Duration;

use common::lan::Lan;
use common::machine::{Machine, POLLER, SERVED_IS_DISK, assert_no_client_failed, poll};
use common::pebble::{HTTPS_CA_IN_MACHINE, Pebble, ROOT_IN_MACHINE};

const HOST: &str = "10.77.0.11";

fn serial(m: &Machine) -> String {
    m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -serial")
}

#[test]
fn server_certificate_from_pebble_issued_renewed_and_kept_while_unreachable() {
    let m = Machine::up("acme");
    let lan = Lan::connect("acme", &[(&m, "10.77.0.11/24")]);
    // 90 s certificates: renewed between 54 and 60 s of age.
    let pebble = Pebble::start(&lan, "10.77.0.1", 5002, 90);
    pebble.trusted_by(&m.root);
    m.install_service(&acme_config(&pebble, ROOT_IN_MACHINE));
    m.ok("systemctl enable --now docker-tls-manager");

    // Issued by Pebble for the host's LAN address, the chain in the file, served.
    let text =
        m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -issuer -ext subjectAltName");
    assert!(text.contains("Pebble"), "{text}");
    assert!(text.contains(&format!("IP Address:{HOST}")), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    assert_eq!(
        m.ok("grep -c 'BEGIN CERTIFICATE' /etc/docker/tls/server-cert.pem")
            .trim(),
        "2"
    );
    m.ok(SERVED_IS_DISK);
    // Clients: Pebble's root for the server, our CA's certificate for themselves.
    m.ok("cmp /var/lib/docker-tls-manager/clients/admin/ca.pem /etc/docker-tls-manager/acme-root.pem");
    let admin = "/var/lib/docker-tls-manager/clients/admin";
    m.ok(&format!(
        "C={admin}; /usr/bin/docker --tlsverify --tlscacert $C/ca.pem --tlscert $C/cert.pem \
         --tlskey $C/key.pem -H tcp://{HOST}:2376 version --format '{{{{.Server.Version}}}}'"
    ));
    m.ok(&format!(
        "C={admin}; test \"$(curl -s --max-time 5 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://{HOST}:2376/_ping)\" = OK"
    ));
    // A certificate from the ACME CA (it carries clientAuth) is no client of Docker's.
    let o = m.sh(&format!(
        "curl -s --max-time 5 --cacert /etc/docker-tls-manager/acme-root.pem \
         --cert /etc/docker/tls/server-cert.pem --key /etc/docker/tls/server-key.pem \
         https://{HOST}:2376/_ping"
    ));
    assert!(
        !common::text(&o.stdout).contains("OK"),
        "an ACME leaf was let in as a client"
    );
    let status = m.ok("docker-tls-manager status");
    assert!(status.contains(HOST), "{status}");

    // Renewal at two thirds of the lifetime, under a polling client, a container kept.
    m.ok("docker run -d --name c1 --network none dtm-busybox sleep 100000");
    let pid = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    let first = serial(&m);
    m.ok(&format!(
        "export POLL_NAME={HOST}; {}",
        POLLER.replace("127.0.0.1", HOST)
    ));
    m.wait_for(
        &format!(
            "test \"$(openssl x509 -in /etc/docker/tls/server-cert.pem -noout -serial)\" != '{}' && {SERVED_IS_DISK}",
            first.trim()
        ),
        Duration::from_secs(120),
    );
    let p = poll(&m);
    assert_no_client_failed(&m, &p, 1);
    assert_eq!(m.ok("docker inspect -f '{{.State.Pid}}' c1"), pid);

    // Pebble unreachable when the next renewal is due: the served certificate stays, the
    // failure shows in STATUS= and the journal, and the renewal happens once it is back.
    pebble.cut();
    let second = serial(&m);
    m.wait_for(
        "systemctl show -p StatusText --value docker-tls-manager | grep -q 'last attempt failed'",
        Duration::from_secs(120),
    );
    assert_eq!(
        serial(&m),
        second,
        "the certificate changed while the CA was unreachable"
    );
    m.ok(SERVED_IS_DISK);
    m.ok("journalctl -u docker-tls-manager --no-pager | grep -q 'no certificate from the ACME CA'");
    pebble.reconnect();
    // The service retries with backoff (15 s, 30 s, ...).
    m.wait_for(
        &format!(
            "test \"$(openssl x509 -in /etc/docker/tls/server-cert.pem -noout -serial)\" != '{}' && {SERVED_IS_DISK}",
            second.trim()
        ),
        Duration::from_secs(150),
    );
    assert_eq!(m.ok("docker inspect -f '{{.State.Pid}}' c1"), pid);
    drop(pebble);
    drop(lan);
}

/// What the ACME CA refuses is said with the key to look at, and nothing is half-done: a wrong
/// external account binding on a fresh host leaves Docker as it was (no certificate to serve),
/// then the right one enrolls it.
#[test]
fn wrong_external_account_binding_is_named_and_leaves_docker_alone() {
    let m = Machine::up("acme-eab");
    let lan = Lan::connect("acme-eab", &[(&m, "10.77.0.11/24")]);
    let good = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_with_eab(&lan, "10.77.0.1", 5002, 3600, Some(("kid-1", good)));
    let dir = pebble.trusted_by(&m.root);
    let config = |key: &str| {
        pebble.config(
            ROOT_IN_MACHINE,
            &format!("http_port = 5002\neab_kid = \"kid-1\"\neab_hmac_key = \"{key}\"\n"),
        )
    };
    std::fs::write(
        dir.join("config.toml"),
        config("b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH"),
    )
    .unwrap();
    let o = m.sh("docker-tls-manager apply");
    let err = common::text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("eab_kid") && err.contains("eab_hmac_key"),
        "{err}"
    );
    m.ok("test ! -e /etc/docker/tls/server-cert.pem && test ! -e /etc/systemd/system/docker-tcp.socket");
    m.ok("systemctl is-active docker && ! grep -q tlsverify /etc/docker/daemon.json 2>/dev/null");
    m.ok("test ! -e /var/lib/docker-tls-manager/acme-account.json");
    std::fs::write(dir.join("config.toml"), config(good)).unwrap();
    m.ok("docker-tls-manager apply");
    m.ok(SERVED_IS_DISK);
    drop(pebble);
    drop(lan);
}

/// tls-alpn-01 (RFC 8737, RFC 8738 for an address) instead of http-01.
#[test]
fn tls_alpn_01_enrolls_the_host_too() {
    let m = Machine::up("acme-alpn");
    let lan = Lan::connect("acme-alpn", &[(&m, "10.77.0.11/24")]);
    let pebble = Pebble::start(&lan, "10.77.0.1", 5002, 3600);
    let dir = pebble.trusted_by(&m.root);
    std::fs::write(
        dir.join("config.toml"),
        pebble.config(
            ROOT_IN_MACHINE,
            "challenge = \"tls-alpn-01\"\ntls_port = 5001\n",
        ),
    )
    .unwrap();
    m.ok("docker-tls-manager apply");
    let issuer = m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -issuer");
    assert!(issuer.contains("Pebble"), "{issuer}");
    m.ok(SERVED_IS_DISK);
    // Nothing answered http-01 (Pebble validates it on port 5002, where nothing listened):
    // the order went through tls-alpn-01 on port 5001.
    m.ok("! ss -ltn | grep -q ':5002 '");
    drop(pebble);
    drop(lan);
}

fn acme_config(pebble: &Pebble, root: &str) -> String {
    pebble.config(root, "http_port = 5002\n")
}

/// What the ACME CA sends is checked before it is written (a chain that does not lead to
/// `issuer_root` is refused, Docker untouched), and a renewal killed at every write is finished
/// from its record, without the CA (cut off), by the check that runs before dockerd starts.
#[test]
fn unverified_chains_are_not_written_and_a_cut_install_finishes_without_the_ca() {
    let m = Machine::up("acme-crash");
    let lan = Lan::connect("acme-crash", &[(&m, "10.77.0.11/24")]);
    let pebble = Pebble::start(&lan, "10.77.0.1", 5002, 3600);
    let dir = pebble.trusted_by(&m.root);
    std::fs::write(
        dir.join("config.toml"),
        acme_config(&pebble, ROOT_IN_MACHINE),
    )
    .unwrap();
    m.ok("docker-tls-manager apply");
    m.ok(SERVED_IS_DISK);

    // issuer_root names another CA (here: the one of Pebble's own HTTPS): refused, nothing
    // written, Docker not restarted.
    let before = m.ok("sha256sum /etc/docker/tls/server-cert.pem /etc/docker/tls/server-key.pem");
    let pid = m.ok("systemctl show -p MainPID --value docker");
    let wrong = acme_config(&pebble, HTTPS_CA_IN_MACHINE);
    std::fs::write(dir.join("wrong.toml"), wrong).unwrap();
    let o =
        m.sh("docker-tls-manager --config /etc/docker-tls-manager/wrong.toml renew --force server");
    let err = common::text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("issuer_root") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(
        m.ok("sha256sum /etc/docker/tls/server-cert.pem /etc/docker/tls/server-key.pem"),
        before
    );
    assert_eq!(m.ok("systemctl show -p MainPID --value docker"), pid);

    // Killed at each rename of a forced renewal (the record, the key, the chain, their
    // backups), then the CA cut off and Docker restarted: the guard's pre-start check finishes
    // the installation from the record; dockerd starts and serves the pair on disk.
    let mut n = 1;
    loop {
        let o = m.sh(&format!(
            "strace -f -o /dev/null -e trace=renameat -e inject=renameat:signal=KILL:when={n} \
             docker-tls-manager renew --force server"
        ));
        let killed = !o.status.success();
        pebble.cut();
        m.ok(
            "systemctl reset-failed docker; systemctl restart docker && systemctl is-active docker",
        );
        m.wait_for(SERVED_IS_DISK, Duration::from_secs(20));
        m.ok("test ! -e /var/lib/docker-tls-manager/acme-pending.pem");
        pebble.reconnect();
        if !killed {
            break;
        }
        n += 1;
        assert!(n < 20, "the renewal never finished");
    }
    assert!(n > 3, "too few writes to be a real trial: {n}");
    drop(pebble);
    drop(lan);
}

/// The RFC 9773 §4.1 identifier of the served certificate, computed here from what openssl
/// prints (not by the code under test): base64url(AKI keyIdentifier) "." base64url(serial DER
/// content).
fn ari_id(m: &Machine) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let hex_bytes = |h: &str| -> Vec<u8> {
        let h: String = h.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let h = if h.len() % 2 == 1 { format!("0{h}") } else { h };
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    };
    let aki = m.ok(
        "openssl x509 -in /etc/docker/tls/server-cert.pem -noout -ext authorityKeyIdentifier \
         | sed -n 2p | sed 's/keyid://'",
    );
    let serial = serial(m);
    let mut serial = hex_bytes(serial.trim().trim_start_matches("serial="));
    if serial[0] & 0x80 != 0 {
        serial.insert(0, 0);
    }
    format!("{}.{}", b64.encode(hex_bytes(&aki)), b64.encode(serial))
}

fn time(v: &serde_json::Value) -> std::time::SystemTime {
    humantime::parse_rfc3339_weak(v.as_str().unwrap_or_else(|| panic!("no time: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn server_status(m: &Machine) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_str(&m.ok("docker-tls-manager status --json")).unwrap();
    report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "server")
        .unwrap()
        .clone()
}

/// ACME renewal information (RFC 9773), with Debian 13's Pebble (2.6, which offers it): the
/// service renews at a time it chose inside the window Pebble suggests (read here with curl);
/// a revoked certificate (Pebble's window then lies in the past) is renewed as soon as the CA
/// is asked (a reload of the service, or `renew`), under a polling client with no failed request and a container kept, by
/// an order that names the certificate it replaces.
#[test]
fn renewal_follows_the_acme_cas_renewal_information() {
    let m = Machine::up("acme-ari");
    let lan = Lan::connect("acme-ari", &[(&m, "10.77.0.11/24")]);
    // Four-day certificates: Pebble's window (two days around two thirds of the lifetime) lies
    // inside the lifetime. (For certificates under three days it ends after expiry: ignored.)
    let pebble = Pebble::start_ari(&lan, "10.77.0.1", 5002, 4 * 86400);
    pebble.trusted_by(&m.root);
    m.install_service(&acme_config(&pebble, ROOT_IN_MACHINE));
    m.ok("systemctl enable --now docker-tls-manager");
    m.wait_for(
        "test -s /var/lib/docker-tls-manager/acme-renewal-info.json",
        Duration::from_secs(60),
    );
    m.ok(SERVED_IS_DISK);

    // The window as Pebble says it, asked independently; the time chosen lies in it and is
    // the renewal time the status reports.
    let id = ari_id(&m);
    let record: serde_json::Value =
        serde_json::from_str(&m.ok("cat /var/lib/docker-tls-manager/acme-renewal-info.json"))
            .unwrap();
    assert_eq!(record["certificate"], id.as_str());
    m.ok("test \"$(stat -c %a /var/lib/docker-tls-manager/acme-renewal-info.json)\" = 600");
    let info: serde_json::Value = serde_json::from_str(&pebble.renewal_info(&id)).unwrap();
    let (start, end) = (
        time(&info["suggestedWindow"]["start"]),
        time(&info["suggestedWindow"]["end"]),
    );
    let server = server_status(&m);
    let ari = &server["renewal_info"];
    let chosen = time(&ari["chosen"]);
    let second = Duration::from_secs(1);
    assert!(
        chosen + second >= start && chosen <= end,
        "chosen {ari} outside Pebble's window {info}"
    );
    assert_eq!(time(&server["next_renewal"]), chosen, "{server}");
    assert!(time(&ari["window_start"]) + second >= start && time(&ari["window_start"]) <= start);
    assert!(time(&ari["window_end"]) + second >= end && time(&ari["window_end"]) <= end);
    assert!(
        time(&ari["next_check"]) > std::time::SystemTime::now(),
        "{ari}"
    );
    let text = m.ok("docker-tls-manager status");
    assert!(text.contains("ACME renewal window:"), "{text}");

    // Revoked: Pebble's window moves to the past; `renew` asks again and renews at once.
    m.ok("docker run -d --name c1 --network none dtm-busybox sleep 100000");
    let pid = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    let first = serial(&m);
    m.ok(&format!(
        "export POLL_NAME={HOST}; {}",
        POLLER.replace("127.0.0.1", HOST)
    ));
    std::thread::sleep(Duration::from_secs(2));
    m.ok("cp -p /etc/docker/tls/server-cert.pem /etc/docker/tls/server-key.pem /root/");
    pebble.revoke(
        &m.ok("cat /var/lib/docker-tls-manager/acme-account.json"),
        &m.ok("cat /etc/docker/tls/server-cert.pem"),
    );
    let revoked: serde_json::Value = serde_json::from_str(&pebble.renewal_info(&id)).unwrap();
    assert!(
        time(&revoked["suggestedWindow"]["end"]) < std::time::SystemTime::now(),
        "{revoked}"
    );
    // The service asks again on a reload (else at the next question, Retry-After: 6 h here).
    m.ok("systemctl reload docker-tls-manager");
    m.wait_for(
        &format!(
            "test \"$(openssl x509 -in /etc/docker/tls/server-cert.pem -noout -serial)\" != '{}' && {SERVED_IS_DISK}",
            first.trim()
        ),
        Duration::from_secs(60),
    );
    let p = poll(&m);
    assert_no_client_failed(&m, &p, 1);
    assert_eq!(m.ok("docker inspect -f '{{.State.Pid}}' c1"), pid);
    // The new order said which certificate it replaces (Pebble logs the replacement).
    let log = pebble.log();
    assert!(log.contains("is a replacement of"), "{log}");
    // The new certificate's window is asked for at once: a time in its future.
    let server = server_status(&m);
    let chosen = time(&server["renewal_info"]["chosen"]);
    assert!(chosen > std::time::SystemTime::now(), "{server}");
    assert_ne!(ari_id(&m), id);

    // The revoked certificate put back (a restore from an old backup): renewed again at once;
    // Pebble refuses an order replacing a certificate already replaced, so the order goes
    // through without `replaces`.
    m.ok("systemctl stop docker-tls-manager");
    m.ok("cp -p /root/server-cert.pem /root/server-key.pem /etc/docker/tls/");
    assert_eq!(serial(&m), first);
    let o = m.sh("docker-tls-manager renew");
    let err = common::text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("ordering without `replaces`"), "{err}");
    assert_ne!(serial(&m), first, "{err}");
    m.wait_for(SERVED_IS_DISK, Duration::from_secs(30));
    drop(pebble);
    drop(lan);
}

/// A window that makes no sense for the certificate is not followed: Pebble 2.6 suggests two
/// days around two thirds of the lifetime, which for a two-minute certificate ends long after
/// it expires. The window is shown as ignored, the fallback (60 % to two thirds of the
/// lifetime) stays the renewal time.
#[test]
fn a_renewal_window_past_expiry_is_ignored() {
    let m = Machine::up("acme-ari-late");
    let lan = Lan::connect("acme-ari-late", &[(&m, "10.77.0.11/24")]);
    let pebble = Pebble::start_ari(&lan, "10.77.0.1", 5002, 120);
    let dir = pebble.trusted_by(&m.root);
    std::fs::write(
        dir.join("config.toml"),
        acme_config(&pebble, ROOT_IN_MACHINE),
    )
    .unwrap();
    let o = m.sh("docker-tls-manager apply");
    let err = common::text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("ignoring the ACME CA's renewal window")
            && err.contains("after the certificate expires"),
        "{err}"
    );
    let server = server_status(&m);
    let ari = &server["renewal_info"];
    assert!(ari["chosen"].is_null(), "{server}");
    assert!(
        ari["ignored"]
            .as_str()
            .unwrap()
            .contains("after the certificate expires")
    );
    let (nb, na) = (time(&server["not_before"]), time(&server["not_after"]));
    let life = na.duration_since(nb).unwrap();
    let next = time(&server["next_renewal"]);
    assert!(
        next + Duration::from_secs(1) >= nb + life.mul_f64(0.6)
            && next <= nb + life.mul_f64(2.0 / 3.0) + Duration::from_secs(1),
        "{server}"
    );
    drop(pebble);
    drop(lan);
}
