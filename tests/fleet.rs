//! Several hosts, one client trust (`ca export` / `ca import`), in three real systemd + dockerd
//! machines on a network of the test's own (tests/common/lan.rs): one client bundle works
//! against every host with the docker CLI and curl; a bundle from a host's own CA before the
//! import no longer does; each host serves its own server certificate (its own address).
//! Then the three take their server certificates from an ACME CA (Pebble beside them): the
//! same client identity still works everywhere, its bundle now carrying the ACME root. The
//! time each host takes to enroll (order, restart, verification) is printed (`--nocapture`;
//! docs/benchmarks.md). Last, a client revoked on one host is refused by all three once the
//! revocation list is exported and imported (`client revocations`).

mod common;

use common::lan::Lan;
use common::machine::Machine;
use common::pebble::{Pebble, ROOT_IN_MACHINE};

const ADMIN: &str = "C=/var/lib/docker-tls-manager/clients/admin;";

fn docker_at(m: &Machine, bundle: &str, ip: &str, args: &str) -> std::process::Output {
    m.sh(&format!(
        "C={bundle}; /usr/bin/docker --tlsverify --tlscacert $C/ca.pem --tlscert $C/cert.pem \
         --tlskey $C/key.pem -H tcp://{ip}:2376 {args}"
    ))
}

#[test]
fn one_bundle_works_on_every_host_after_ca_import() {
    let a = Machine::up("fleet-a");
    let b = Machine::up("fleet-b");
    let c = Machine::up("fleet-c");
    let lan = Lan::connect(
        "fleet",
        &[
            (&a, "10.77.0.11/24"),
            (&b, "10.77.0.12/24"),
            (&c, "10.77.0.13/24"),
        ],
    );
    a.ok("docker-tls-manager apply");
    // B runs on its own CA first and hands out a bundle; C is fresh.
    b.ok("docker-tls-manager apply && cp -a /var/lib/docker-tls-manager/clients/admin /root/b-own");
    a.ok("printf 'fleet pass phrase\\n' > /root/pass && docker-tls-manager ca export -o /root/fleet-ca.pem --passphrase-file /root/pass");
    let export = std::fs::read(a.root.join("root/fleet-ca.pem")).unwrap();
    for m in [&b, &c] {
        std::fs::write(m.root.join("root/fleet-ca.pem"), &export).unwrap();
        std::fs::write(m.root.join("root/pass"), "fleet pass phrase\n").unwrap();
    }
    // B's own CA issued a bundle: refused without --force, then done with it.
    let o = b.sh("docker-tls-manager ca import /root/fleet-ca.pem --passphrase-file /root/pass");
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o.stderr));
    b.ok("docker-tls-manager ca import /root/fleet-ca.pem --passphrase-file /root/pass --force");
    c.ok("docker-tls-manager ca import /root/fleet-ca.pem --passphrase-file /root/pass");
    c.ok("systemctl is-active docker-tcp.socket");

    // From A, with A's bundle: every host, by its address on the LAN.
    let admin = "/var/lib/docker-tls-manager/clients/admin";
    for ip in ["10.77.0.11", "10.77.0.12", "10.77.0.13"] {
        for args in ["version --format '{{.Server.Version}}'", "ps"] {
            let o = docker_at(&a, admin, ip, args);
            assert!(
                o.status.success(),
                "docker {args} against {ip}: {}",
                common::text(&o.stderr)
            );
        }
        a.ok(&format!(
            "{ADMIN} test \"$(curl -s --max-time 5 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://{ip}:2376/_ping)\" = OK"
        ));
    }
    // Each host serves its own certificate (its own address in it), from the shared CA.
    let served = |ip: &str| {
        a.ok(&format!(
            "{ADMIN} openssl s_client -connect {ip}:2376 -cert $C/cert.pem -key $C/key.pem -CAfile $C/ca.pem -verify_ip {ip} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
    };
    let fps = [served("10.77.0.12"), served("10.77.0.13")];
    assert!(!fps[0].is_empty() && fps[0] != fps[1], "{fps:?}");
    // B's clients hold B's bundles, now from the shared CA: they reach A and C too.
    let o = docker_at(&b, admin, "10.77.0.13", "ps");
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    // The bundle B's own CA issued before the import is refused by B now.
    let o = docker_at(&b, "/root/b-own", "10.77.0.12", "ps");
    assert!(!o.status.success(), "an old-CA bundle still works");

    // The server certificates from an ACME CA, one host after another.
    let pebble = Pebble::start(&lan, "10.77.0.1", 5002, 3600);
    let hosts = [(&a, "10.77.0.11"), (&b, "10.77.0.12"), (&c, "10.77.0.13")];
    let mut took = vec![];
    for (m, _) in hosts {
        let dir = pebble.trusted_by(&m.root);
        std::fs::write(
            dir.join("config.toml"),
            pebble.config(ROOT_IN_MACHINE, "http_port = 5002\n"),
        )
        .unwrap();
        let t = std::time::Instant::now();
        m.ok("docker-tls-manager apply");
        took.push(t.elapsed());
    }
    eprintln!(
        "ACME enrollment (order, Docker restart, verification): {:?} each, {:?} for the three",
        took,
        took.iter().sum::<std::time::Duration>()
    );
    for (m, ip) in hosts {
        let issuer = m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -issuer");
        assert!(issuer.contains("Pebble"), "{ip}: {issuer}");
        // A's client, its bundle now carrying the ACME root, on every host.
        let o = docker_at(&a, admin, ip, "ps");
        assert!(
            o.status.success(),
            "docker ps against {ip}: {}",
            common::text(&o.stderr)
        );
    }
    a.ok("cmp /var/lib/docker-tls-manager/clients/admin/ca.pem /etc/docker-tls-manager/acme-root.pem");

    // A client revoked once is refused by every host: revoked on A, the list exported and
    // imported on B and C (our authorization plugin answers on each).
    a.ok("docker-tls-manager client add mobile && cp -a /var/lib/docker-tls-manager/clients/mobile /root/mobile");
    for (_, ip) in hosts {
        let o = docker_at(&a, "/root/mobile", ip, "ps");
        assert!(
            o.status.success(),
            "mobile against {ip}: {}",
            common::text(&o.stderr)
        );
    }
    a.ok("docker-tls-manager client revoke mobile && docker-tls-manager client revocations export -o /root/revoked.json");
    let list = std::fs::read(a.root.join("root/revoked.json")).unwrap();
    for m in [&b, &c] {
        std::fs::write(m.root.join("root/revoked.json"), &list).unwrap();
        let out = m.ok("docker-tls-manager client revocations import /root/revoked.json");
        assert!(out.contains("1 new revocation"), "{out}");
    }
    for (_, ip) in hosts {
        let o = docker_at(&a, "/root/mobile", ip, "ps");
        assert!(
            !o.status.success(),
            "a revoked client still gets in at {ip}"
        );
        assert!(
            common::text(&o.stderr).contains("authorization denied by plugin"),
            "{ip}: {}",
            common::text(&o.stderr)
        );
        // The others are not affected.
        let o = docker_at(&a, admin, ip, "ps");
        assert!(
            o.status.success(),
            "admin against {ip}: {}",
            common::text(&o.stderr)
        );
    }
    // Importing again adds nothing.
    let out = b.ok("docker-tls-manager client revocations import /root/revoked.json");
    assert!(out.contains("0 new revocation"), "{out}");

    // A role travels with the certificate: a monitoring client added on A only is a
    // monitoring client on B and C, which never heard its name.
    a.ok("docker-tls-manager client add grafana --role monitoring && cp -a /var/lib/docker-tls-manager/clients/grafana /root/grafana");
    let subject = a.ok("openssl x509 -in /root/grafana/cert.pem -noout -subject -nameopt RFC2253");
    assert!(subject.contains("OU=role=monitoring"), "{subject}");
    for (m, ip) in hosts {
        assert!(
            !m.ok("docker-tls-manager client list").contains("grafana") || ip == "10.77.0.11",
            "{ip} knows grafana by name"
        );
        let o = docker_at(&a, "/root/grafana", ip, "ps");
        assert!(
            o.status.success(),
            "grafana lists at {ip}: {}",
            common::text(&o.stderr)
        );
        let o = docker_at(&a, "/root/grafana", ip, "create busybox true");
        let err = common::text(&o.stderr);
        assert!(
            !o.status.success() && err.contains("authorization denied by plugin"),
            "grafana (monitoring) created a container at {ip}: {err}"
        );
    }
    drop(pebble);
}
