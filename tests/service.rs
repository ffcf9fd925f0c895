//! The service (`docker-tls-manager run` under its own Type=notify unit, hardened as shipped)
//! against a real systemd, D-Bus and dockerd in a throwaway machine.

mod common;

use common::machine::{
    CLIENT, Machine, POLLER, fingerprint_on_disk, fingerprint_served, poll_result,
};
use common::text;
use std::time::{Duration, Instant};

/// Waits until `script` succeeds in the machine; returns how long it took.
fn wait_for(m: &Machine, script: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if m.sh(script).status.success() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "`{script}` did not succeed within {timeout:?}\n{}",
            journal(m)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn journal(m: &Machine) -> String {
    text(
        &m.sh("journalctl -u docker-tls-manager --no-pager | tail -40")
            .stdout,
    )
}

const SERVED_IS_DISK: &str = r#"C=/var/lib/docker-tls-manager/clients/admin
s=$(openssl s_client -connect 127.0.0.1:2376 -cert $C/cert.pem -key $C/key.pem -CAfile $C/ca.pem </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256)
d=$(openssl x509 -in /etc/docker/tls/server-cert.pem -noout -fingerprint -sha256 2>/dev/null)
[ -n "$s" ] && [ "$s" = "$d" ]"#;

#[test]
fn started_by_its_unit_ready_only_when_docker_serves_tls() {
    let m = Machine::up("svc-start");
    m.install_service("");
    // `systemctl start` of a Type=notify unit returns once READY=1 is sent.
    m.ok("systemctl enable --now docker-tls-manager");
    assert_eq!(
        m.ok("systemctl is-active docker-tls-manager").trim(),
        "active"
    );
    // Immediately: Docker serves mutual TLS with the current certificate.
    m.ok(&format!("{CLIENT} test \"$(curl -s --max-time 5 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://127.0.0.1:2376/_ping)\" = OK"));
    m.ok(SERVED_IS_DISK);
    let status = m.ok("systemctl show -p StatusText --value docker-tls-manager");
    assert!(
        status.contains("server cert valid until")
            && status.contains("renewal")
            && status.contains("1 clients"),
        "{status}"
    );
    // The hardened unit scores as required.
    let score = m.ok("systemd-analyze security --no-pager docker-tls-manager | tail -1");
    assert!(score.contains("exposure level"), "{score}");
    // A restart with nothing to change does not restart Docker.
    let pid = m.main_pid();
    m.ok("systemctl restart docker-tls-manager");
    assert_eq!(m.main_pid(), pid, "docker restarted though nothing changed");
    // SIGTERM: clean stop.
    m.ok("systemctl stop docker-tls-manager");
    assert!(journal(&m).contains("stopping"), "{}", journal(&m));
    assert_eq!(
        m.ok("systemctl show -p Result --value docker-tls-manager")
            .trim(),
        "success"
    );
}

#[test]
fn automatic_rotation_before_expiry_with_no_failed_request() {
    let m = Machine::up("svc-rotate");
    // Renewal 1 minute after issuance, expiry after 3.
    m.install_service("[server]\nvalidity = \"3m\"\nrenew_before = \"2m\"\n");
    m.ok("systemctl enable --now docker-tls-manager");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    let first = fingerprint_served(&m);
    let not_after = m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -enddate");
    m.ok(POLLER);
    // The renewal is due ~60 s after issuance.
    wait_for(
        &m,
        &format!(
            "[ \"$({})\" != '{}' ]",
            "C=/var/lib/docker-tls-manager/clients/admin; openssl s_client -connect 127.0.0.1:2376 -cert $C/cert.pem -key $C/key.pem -CAfile $C/ca.pem </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
            first.trim()
        ),
        Duration::from_secs(120),
    );
    m.ok("sleep 2");
    let (ok, fail, max_ms) = poll_result(&m);
    eprintln!("poller: {ok} ok, {fail} failed, longest request {max_ms} ms");
    assert!(max_ms < 20_000, "a request stalled {max_ms} ms");
    assert_eq!(
        fail, 0,
        "{fail} failed /_ping requests during the automatic rotation ({ok} ok)"
    );
    assert!(ok > 100, "only {ok} requests");
    assert_eq!(fingerprint_served(&m), fingerprint_on_disk(&m));
    // The old certificate had not expired yet when the new one was served.
    let old_end = m.ok(&format!(
        "date -d \"$(echo '{}' | cut -d= -f2)\" +%s",
        not_after.trim()
    ));
    let now = m.ok("date +%s");
    assert!(
        now.trim().parse::<i64>().unwrap() < old_end.trim().parse::<i64>().unwrap(),
        "served the new cert only after the old expired"
    );
    assert_eq!(
        m.ok("docker inspect -f '{{.State.Pid}}' c1"),
        pid,
        "container restarted"
    );
    let j = journal(&m);
    assert!(j.contains("renewal due"), "{j}");
}

#[test]
fn deleted_key_repaired_new_address_covered_bad_reload_rejected() {
    let m = Machine::up("svc-repair");
    m.install_service("");
    m.ok("systemctl enable --now docker-tls-manager");

    // 3. A deleted server key is repaired and served again within 5 s.
    m.ok("rm /etc/docker/tls/server-key.pem");
    let took = wait_for(
        &m,
        &format!("test -s /etc/docker/tls/server-key.pem && {SERVED_IS_DISK}"),
        Duration::from_secs(5),
    );
    eprintln!("key repaired and served in {took:?}");
    // An outside edit to a file it owns is put back.
    m.ok("echo '# edited' >> /etc/systemd/system/docker-tcp.socket");
    wait_for(
        &m,
        "! grep -q edited /etc/systemd/system/docker-tcp.socket",
        Duration::from_secs(10),
    );

    // 4. A new address on the machine is in the served certificate within 60 s.
    m.ok("ip link add dtm0 type veth peer name dtm1 && ip addr add 192.0.2.55/24 dev dtm0 && ip link set dtm0 up && ip link set dtm1 up");
    let took = wait_for(
        &m,
        &format!(
            "{CLIENT} openssl s_client -connect 127.0.0.1:2376 -cert $C/cert.pem -key $C/key.pem -CAfile $C/ca.pem -verify_ip 192.0.2.55 -verify_return_error </dev/null >/dev/null 2>&1"
        ),
        Duration::from_secs(60),
    );
    eprintln!("new address covered in {took:?}");
    // Reached on that address, by name-less clients using the IP.
    m.ok(&format!("{CLIENT} test \"$(curl -s --max-time 5 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://192.0.2.55:2376/_ping)\" = OK"));

    // 5. SIGHUP with a broken config: still running on the old one, error in the journal.
    let pid = m.ok("systemctl show -p MainPID --value docker-tls-manager");
    m.ok("echo '[server]\nvalidity = \"banana\"' > /etc/docker-tls-manager/config.toml && systemctl reload docker-tls-manager");
    wait_for(
        &m,
        "journalctl -u docker-tls-manager --no-pager | grep -q 'configuration rejected'",
        Duration::from_secs(10),
    );
    let j = journal(&m);
    assert!(j.contains("[server] validity"), "{j}");
    assert_eq!(
        m.ok("systemctl is-active docker-tls-manager").trim(),
        "active"
    );
    assert_eq!(
        m.ok("systemctl show -p MainPID --value docker-tls-manager"),
        pid
    );
    // ...and it still works on the old configuration.
    m.ok("rm /etc/docker/tls/server-key.pem");
    wait_for(
        &m,
        &format!("test -s /etc/docker/tls/server-key.pem && {SERVED_IS_DISK}"),
        Duration::from_secs(10),
    );
    // No key material in the journal.
    let o = m.sh("journalctl --no-pager | grep -c 'PRIVATE KEY'");
    assert_eq!(text(&o.stdout).trim(), "0", "key material in the journal");
}

#[test]
fn sigkill_during_renewal_converges_after_restart() {
    let m = Machine::up("svc-kill");
    m.install_service("");
    m.ok("systemctl enable --now docker-tls-manager");
    for delay in ["0.05", "0.3", "0.8"] {
        // A forced change makes the service reissue and restart Docker; kill it mid-way.
        m.ok(&format!("rm /etc/docker/tls/server-key.pem; sleep {delay}; systemctl kill -s KILL docker-tls-manager"));
        // systemd restarts it (Restart=on-failure) and it converges.
        wait_for(
            &m,
            "test \"$(systemctl show -p NRestarts --value docker-tls-manager)\" -ge 1 && systemctl is-active docker-tls-manager",
            Duration::from_secs(30),
        );
        wait_for(&m, SERVED_IS_DISK, Duration::from_secs(30));
        assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
        let temps = m.ok(
            "find /etc/docker /var/lib/docker-tls-manager /etc/systemd/system -name '.dtm-tmp-*'",
        );
        assert_eq!(
            temps.trim(),
            "",
            "temp files left after SIGKILL at +{delay}s"
        );
        m.ok("openssl verify -CAfile /etc/docker/tls/ca.pem /etc/docker/tls/server-cert.pem");
    }
}
