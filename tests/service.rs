//! The service (`docker-tls-manager run` under its own Type=notify unit, hardened as shipped)
//! against a real systemd, D-Bus and dockerd in a throwaway machine.

mod common;

use common::machine::{
    CLIENT, Machine, POLLER, SERVED_IS_DISK, assert_no_client_failed, fingerprint_on_disk,
    fingerprint_served, poll,
};
use common::text;
use std::time::Duration;

fn journal(m: &Machine) -> String {
    text(
        &m.sh("journalctl -u docker-tls-manager --no-pager | tail -40")
            .stdout,
    )
}

#[test]
fn started_by_its_unit_ready_only_when_docker_serves_tls() {
    let m = Machine::up("svc-start");
    m.install_service("");
    // node_exporter's textfile directory: metrics go there when it exists.
    m.ok("mkdir -p /var/lib/prometheus/node-exporter");
    // `systemctl start` of a Type=notify unit returns once READY=1 is sent.
    m.ok("systemctl enable --now docker-tls-manager");
    // Enabling it also enabled the boot-time repair ordered before docker.service.
    assert_eq!(
        m.ok("systemctl is-enabled docker-tls-manager-prepare")
            .trim(),
        "enabled"
    );
    m.ok("systemctl show -p Before --value docker-tls-manager-prepare | grep -q docker.service");
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
    // Metrics in node_exporter's textfile format, readable by it.
    let prom = m.ok("cat /var/lib/prometheus/node-exporter/docker-tls-manager.prom");
    assert!(
        prom.contains(
            "docker_tls_manager_cert_expiry_timestamp_seconds{kind=\"server\",name=\"server\"}"
        ),
        "{prom}"
    );
    assert!(
        prom.contains("docker_tls_manager_last_restart_success 1")
            && prom.contains("docker_tls_manager_last_renewal_success 1"),
        "{prom}"
    );
    assert_eq!(
        m.ok("stat -c %a /var/lib/prometheus/node-exporter/docker-tls-manager.prom")
            .trim(),
        "644"
    );
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
    m.wait_for(&format!(
            "[ \"$({})\" != '{}' ]",
            "C=/var/lib/docker-tls-manager/clients/admin; openssl s_client -connect 127.0.0.1:2376 -cert $C/cert.pem -key $C/key.pem -CAfile $C/ca.pem </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
            first.trim()
        ),
        Duration::from_secs(120),
    );
    m.ok("sleep 2");
    let p = poll(&m);
    assert_no_client_failed(&m, &p, 1);
    assert!(p.ok > 100, "only {} requests", p.ok);
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
    // dockerd 23+ checked daemon.json from inside the service's sandbox (no capabilities, a
    // system-call filter) before the restart; older dockerd is named as having no --validate.
    assert!(
        j.contains("`dockerd --validate` accepts") || j.contains("has no `dockerd --validate`"),
        "{j}"
    );
    if m.ok("dockerd --help").contains("--validate") {
        assert!(!j.contains("cannot run `dockerd --validate`"), "{j}");
    }
}

#[test]
fn deleted_key_repaired_new_address_covered_bad_reload_rejected() {
    let m = Machine::up("svc-repair");
    m.install_service("");
    m.ok("systemctl enable --now docker-tls-manager");

    // 3. A deleted server key is repaired and served again within 5 s.
    m.ok("rm /etc/docker/tls/server-key.pem");
    let took = m.wait_for(
        &format!("test -s /etc/docker/tls/server-key.pem && {SERVED_IS_DISK}"),
        Duration::from_secs(5),
    );
    eprintln!("key repaired and served in {took:?}");
    // A key made world-readable is put back to 0600.
    m.ok("chmod 644 /var/lib/docker-tls-manager/clients/admin/key.pem");
    m.wait_for(
        "test $(stat -c %a /var/lib/docker-tls-manager/clients/admin/key.pem) = 600",
        Duration::from_secs(10),
    );
    // A certificate directory removed and recreated is still watched.
    m.ok("rm -rf /etc/docker/tls");
    m.wait_for(
        &format!("test -s /etc/docker/tls/server-key.pem && {SERVED_IS_DISK}"),
        Duration::from_secs(20),
    );
    m.ok("sleep 1; rm /etc/docker/tls/server-key.pem");
    m.wait_for(
        &format!("test -s /etc/docker/tls/server-key.pem && {SERVED_IS_DISK}"),
        Duration::from_secs(10),
    );
    // An outside edit to a file it owns is put back.
    m.ok("echo '# edited' >> /etc/systemd/system/docker-tcp.socket");
    m.wait_for(
        "! grep -q edited /etc/systemd/system/docker-tcp.socket",
        Duration::from_secs(10),
    );

    // 4. A new address on the machine is in the served certificate within 60 s.
    m.ok("ip link add dtm0 type veth peer name dtm1 && ip addr add 192.0.2.55/24 dev dtm0 && ip link set dtm0 up && ip link set dtm1 up");
    let took = m.wait_for(&format!(
            "{CLIENT} openssl s_client -connect 127.0.0.1:2376 -cert $C/cert.pem -key $C/key.pem -CAfile $C/ca.pem -verify_ip 192.0.2.55 -verify_return_error </dev/null >/dev/null 2>&1"
        ),
        Duration::from_secs(60),
    );
    eprintln!("new address covered in {took:?}");
    // Reached on that address, by name-less clients using the IP.
    m.ok(&format!("{CLIENT} test \"$(curl -s --max-time 5 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://192.0.2.55:2376/_ping)\" = OK"));

    // The daemon.json dockerd really reads (--config-file in $DOCKER_OPTS) is watched, not
    // only the configured one: a change of docker.service's environment file is seen, and an
    // edit of the file it names is repaired; a temp file of a write cut short there is swept.
    m.ok("mkdir -p /etc/docker/cm && cp /etc/docker/daemon.json /etc/docker/cm/alt.json && echo 'DOCKER_OPTS=\"--config-file=/etc/docker/cm/alt.json\"' > /etc/default/docker && systemctl restart docker");
    m.wait_for(
        "journalctl -u docker-tls-manager --no-pager | grep -q 'converging.*/etc/default/docker changed'",
        Duration::from_secs(20),
    );
    m.ok("sleep 2; touch /etc/docker/cm/.dtm-tmp-stale; python3 -c 'import json; p=\"/etc/docker/cm/alt.json\"; d=json.load(open(p)); del d[\"tlsverify\"]; json.dump(d, open(p, \"w\"))'");
    let took = m.wait_for(
        &format!("grep -q tlsverify /etc/docker/cm/alt.json && {SERVED_IS_DISK}"),
        Duration::from_secs(30),
    );
    eprintln!("edit of the --config-file daemon.json repaired in {took:?}");
    m.ok("test ! -e /etc/docker/cm/.dtm-tmp-stale");
    m.ok("rm /etc/default/docker && systemctl restart docker");

    // 5. SIGHUP with a broken config: still running on the old one, error in the journal.
    let pid = m.ok("systemctl show -p MainPID --value docker-tls-manager");
    m.ok("echo '[server]\nvalidity = \"banana\"' > /etc/docker-tls-manager/config.toml && systemctl reload docker-tls-manager");
    m.wait_for(
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
    m.wait_for(
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
    // Past the 300 ms debounce: during issuance, the writes, the restart job and the verification.
    for delay in ["0.35", "0.45", "0.6", "0.9", "1.3"] {
        let restarts: u32 = m
            .ok("systemctl show -p NRestarts --value docker-tls-manager")
            .trim()
            .parse()
            .unwrap();
        let old =
            m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -fingerprint -sha256");
        m.ok(&format!("rm /etc/docker/tls/server-key.pem; sleep {delay}; systemctl kill -s KILL docker-tls-manager"));
        // systemd restarts it (Restart=on-failure) and it converges.
        m.wait_for(&format!(
                "test \"$(systemctl show -p NRestarts --value docker-tls-manager)\" -gt {restarts} && systemctl is-active docker-tls-manager"
            ),
            Duration::from_secs(30),
        );
        m.wait_for(
            &format!("test -s /etc/docker/tls/server-key.pem && {SERVED_IS_DISK}"),
            Duration::from_secs(30),
        );
        assert_ne!(
            m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -fingerprint -sha256"),
            old
        );
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

#[test]
fn boot_repair_runs_before_docker_starts() {
    let m = Machine::up("svc-boot");
    m.install_service("");
    m.ok("systemctl enable --now docker-tls-manager");
    // As if the host was off: the service stopped, Docker stopped, the key lost meanwhile.
    m.ok("systemctl stop docker-tls-manager docker docker.socket docker-tcp.socket && rm /etc/docker/tls/server-key.pem");
    // Docker starts (at boot, or by hand): the repair unit runs first, so dockerd can load its key.
    m.ok("systemctl start docker");
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    m.ok(SERVED_IS_DISK);
    // The repair unit, or the guard unit (which repairs first too, for hosts without the
    // service): whichever gets the lock first.
    let j = m.ok("journalctl -u docker-tls-manager-prepare -u docker-tls-manager-guard --no-pager");
    assert!(j.contains("issue server certificate"), "{j}");
    // While the service converges (holding the lock) and restarts Docker, the repair unit does
    // not wait for the lock: a forced rotation is not slowed down.
    m.ok("systemctl start docker-tls-manager");
    let t0 = std::time::Instant::now();
    m.ok("docker-tls-manager renew --force server >/dev/null");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "rotation took {:?}",
        t0.elapsed()
    );
}
