//! The promises when things go wrong (issue 9), each tried the way an admin on a bad day or an
//! attacker would, in a real systemd + dockerd machine: never plain TCP, never a killed
//! container, deconfigure sticks.

mod common;

use common::machine::{ENV, Machine, SERVED_IS_DISK};
use common::text;
use std::time::{Duration, Instant};

/// Plain HTTP on 2376 must never answer; returns curl's exit code (7: refused).
fn plain_never_answers(m: &Machine, when: &str) -> i32 {
    let o = m.sh("curl -s --max-time 5 http://127.0.0.1:2376/_ping");
    assert_ne!(
        text(&o.stdout).trim(),
        "OK",
        "{when}: Docker's API served in PLAIN HTTP on 2376"
    );
    o.status.code().unwrap_or(-1)
}

fn pid_of(m: &Machine, c: &str) -> String {
    m.ok(&format!("docker inspect -f '{{{{.State.Pid}}}}' {c}"))
}

#[test]
fn daemon_json_rewritten_without_tls_closes_the_port_instead_of_serving_plain() {
    let m = Machine::up("plain");
    m.ok("docker-tls-manager apply");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = pid_of(&m, "c1");

    // Config management templates daemon.json without our keys, then Docker restarts.
    m.ok("printf '{\"live-restore\": true, \"log-level\": \"info\"}\\n' > /etc/docker/daemon.json");
    m.ok("systemctl restart docker");
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    assert_eq!(
        plain_never_answers(&m, "after daemon.json lost its TLS keys"),
        7,
        "the port should be closed"
    );
    let log = m.ok("journalctl -u docker-tls-manager-guard --no-pager | grep 'guard:' | tail -1");
    assert!(
        log.contains("tlsverify") && log.contains("docker-tls-manager apply"),
        "{log}"
    );
    assert_eq!(pid_of(&m, "c1"), pid, "container restarted");
    m.ok("docker version >/dev/null");
    // However often Docker restarts: no rate limit lets one start through unguarded.
    for i in 0..8 {
        m.ok("systemctl reset-failed docker; systemctl start docker-tcp.socket 2>/dev/null; systemctl restart docker");
        plain_never_answers(&m, &format!("restart {i} in a burst"));
    }

    // The same at boot: the socket itself refuses to listen while daemon.json is unsafe.
    m.ok("systemctl stop docker docker-tcp.socket");
    let o = m.sh("systemctl start docker-tcp.socket");
    assert!(
        !o.status.success(),
        "the socket started with daemon.json unsafe"
    );
    m.ok("systemctl start docker");
    plain_never_answers(&m, "socket started without TLS in daemon.json");

    m.ok("docker-tls-manager apply");
    m.ok(&format!("{ENV} docker version >/dev/null"));

    // Our binary gone (package removed, units left behind): closed, Docker still starts.
    m.ok("mv /usr/local/bin/docker-tls-manager /root/dtm");
    m.ok("printf '{\"live-restore\": true}\\n' > /etc/docker/daemon.json && systemctl restart docker");
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    assert_eq!(plain_never_answers(&m, "binary removed"), 7);
    assert_eq!(pid_of(&m, "c1"), pid, "container restarted");
    m.ok("mv /root/dtm /usr/local/bin/docker-tls-manager");

    // apply brings mutual TLS back, without killing the container.
    m.ok("docker-tls-manager apply");
    m.ok(&format!("{ENV} docker version >/dev/null"));
    plain_never_answers(&m, "after apply");
    assert_eq!(pid_of(&m, "c1"), pid, "container restarted");

    // Config management points dockerd at another daemon.json (--config-file in DOCKER_OPTS):
    // the guard asks systemd which file dockerd really reads.
    m.ok("echo '{\"live-restore\": true, \"log-level\": \"info\"}' > /etc/docker/cm.json && echo 'DOCKER_OPTS=\"--config-file=/etc/docker/cm.json\"' > /etc/default/docker && systemctl restart docker");
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    assert_eq!(plain_never_answers(&m, "--config-file moved"), 7);
    m.ok("rm /etc/default/docker && systemctl restart docker && docker-tls-manager apply");
    m.ok(&format!("{ENV} docker version >/dev/null"));

    // Another drop-in resets ExecStartPre= (ours is a dependency, which it cannot reset), then
    // daemon.json loses its keys.
    m.ok("printf '[Service]\\nExecStartPre=\\n' > /etc/systemd/system/docker.service.d/zz-local.conf && systemctl daemon-reload");
    // The test's own restarts count against docker.service's StartLimitBurst (3 in 60 s): dockerd
    // 26 (Debian 13) starts in 0.3 s, and four of them land inside one minute.
    m.ok("printf '{\"live-restore\": true}\\n' > /etc/docker/daemon.json && systemctl reset-failed docker && systemctl restart docker");
    assert_eq!(
        plain_never_answers(&m, "ExecStartPre= reset by another drop-in"),
        7
    );
    // A CA other than ours (the system bundle): not mutual TLS with our clients only.
    m.ok("rm /etc/systemd/system/docker.service.d/zz-local.conf && systemctl daemon-reload && docker-tls-manager apply");
    m.ok("sed -i 's#/etc/docker/tls/ca.pem#/etc/ssl/certs/ca-certificates.crt#' /etc/docker/daemon.json && systemctl restart docker");
    assert_eq!(plain_never_answers(&m, "another CA"), 7);
    assert_eq!(pid_of(&m, "c1"), pid, "container restarted");

    // A --config-file named at apply time and removed later: the guard unit checks the file
    // dockerd then reads, not the one it was configured with.
    m.ok("printf '{\"live-restore\": true}\\n' > /etc/docker/alt.json && echo 'DOCKER_OPTS=\"--config-file=/etc/docker/alt.json\"' > /etc/default/docker && systemctl restart docker && docker-tls-manager apply");
    m.ok(&format!("{ENV} docker version >/dev/null"));
    m.ok("grep -q tlsverify /etc/docker/alt.json");
    m.ok("printf '{\"live-restore\": true}\\n' > /etc/docker/daemon.json && rm /etc/default/docker && systemctl restart docker");
    assert_eq!(plain_never_answers(&m, "--config-file removed"), 7);

    // The guard unit itself failing (here a drop-in replacing its check): its ExecStopPost
    // closes the socket all the same.
    m.ok("docker-tls-manager apply");
    m.ok(&format!("{ENV} docker version >/dev/null"));
    m.ok("mkdir -p /etc/systemd/system/docker-tls-manager-guard.service.d && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' > /etc/systemd/system/docker-tls-manager-guard.service.d/zz.conf && systemctl daemon-reload");
    m.ok("printf '{\"live-restore\": true}\\n' > /etc/docker/daemon.json && systemctl restart docker");
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    assert_eq!(plain_never_answers(&m, "guard unit failing"), 7);
    assert_eq!(pid_of(&m, "c1"), pid, "container restarted");
}

/// A refused Docker setup (here `hosts` in daemon.json) is reported, but does not stop the
/// certificates from being renewed.
#[test]
fn a_refused_docker_setup_does_not_block_certificate_renewals() {
    let m = Machine::up("refusedpki");
    m.ok("docker-tls-manager apply");
    let client = "openssl x509 -in /var/lib/docker-tls-manager/clients/admin/cert.pem -noout -fingerprint -sha256";
    let before = m.ok(client);
    m.ok("printf '{\"hosts\": [\"unix:///run/docker.sock\"]}' > /etc/docker/daemon.json");
    let o = m.sh("docker-tls-manager renew --force all");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert_ne!(m.ok(client), before, "client certificate not renewed");
}

#[test]
fn failed_first_apply_with_the_port_taken_keeps_containers_running() {
    let m = Machine::up("taken");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = pid_of(&m, "c1");
    m.ok("busybox nc -l -p 2376 >/dev/null 2>&1 & echo $! > /tmp/nc.pid; sleep 0.5");
    let o = m.sh("docker-tls-manager apply");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("restored"), "{}", text(&o.stderr));
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    assert_eq!(
        m.ok("docker inspect -f '{{.State.Running}}' c1").trim(),
        "true",
        "the rollback killed the container"
    );
    assert_eq!(pid_of(&m, "c1"), pid, "container restarted");
    // live-restore stays on (it is what kept the container); the TLS keys are gone.
    let dj = m.ok("cat /etc/docker/daemon.json");
    assert!(
        dj.contains("\"live-restore\": true") && !dj.contains("tls"),
        "{dj}"
    );
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket");
    // Once the port is free, apply completes, and the container still runs.
    m.ok("kill $(cat /tmp/nc.pid); sleep 0.3; docker-tls-manager apply");
    m.ok(&format!("{ENV} docker version >/dev/null"));
    assert_eq!(pid_of(&m, "c1"), pid, "container restarted");
    // deconfigure puts the user's daemon.json back as it was before the first attempt.
    m.ok("docker-tls-manager deconfigure");
    m.ok("test ! -e /etc/docker/daemon.json");
    assert_eq!(pid_of(&m, "c1"), pid, "container restarted");
}

#[test]
fn live_restore_in_daemon_json_that_dockerd_never_loaded_keeps_containers() {
    let m = Machine::up("lrfile");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = pid_of(&m, "c1");
    // Edited, not reloaded: the file says live-restore, the running dockerd does not.
    m.ok("printf '{\"live-restore\": true}\\n' > /etc/docker/daemon.json");
    assert_eq!(
        m.ok("docker info --format '{{.LiveRestoreEnabled}}'")
            .trim(),
        "false"
    );
    let out = m.ok("docker-tls-manager apply");
    assert!(out.contains("reload docker.service"), "{out}");
    assert_eq!(pid_of(&m, "c1"), pid, "container killed by the restart");
    m.ok(&format!("{ENV} docker version >/dev/null"));
}

#[test]
fn deconfigure_sticks_while_the_service_runs_until_apply() {
    let m = Machine::up("stick");
    m.install_service("");
    m.ok("systemctl enable --now docker-tls-manager");
    m.ok(&format!("{ENV} docker version >/dev/null"));
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = pid_of(&m, "c1");

    let out = m.ok("docker-tls-manager deconfigure");
    assert!(
        out.contains("docker-tls-manager.service: still running")
            && out.contains("docker-tls-manager apply"),
        "{out}"
    );
    // The service watches the files deconfigure removed: it must leave them removed.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        m.ok("test ! -e /etc/systemd/system/docker-tcp.socket");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(plain_never_answers(&m, "after deconfigure"), 7);
    let status = m.ok("systemctl show -p StatusText --value docker-tls-manager");
    assert!(status.contains("deconfigure"), "{status}");
    let st = m.ok("docker-tls-manager status");
    assert!(st.contains("deconfigured:"), "{st}");
    // Also across a restart of the service (and so a reboot).
    m.ok("systemctl restart docker-tls-manager; sleep 2");
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket && ! grep -qs tlsverify /etc/docker/daemon.json");
    assert_eq!(plain_never_answers(&m, "after the service restarted"), 7);
    // renew keeps certificates, leaves Docker alone.
    let out = m.ok("docker-tls-manager renew");
    assert!(out.contains("left alone"), "{out}");
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket");
    // apply is the admin asking again.
    m.ok("docker-tls-manager apply");
    m.ok(&format!("{ENV} docker version >/dev/null"));
    m.ok("test ! -e /var/lib/docker-tls-manager/deconfigured");
    assert_eq!(pid_of(&m, "c1"), pid, "container restarted");
}

#[test]
fn a_deferred_restart_holds_back_the_new_server_certificate() {
    let m = Machine::up("hold");
    m.ok("mkdir -p /etc/docker-tls-manager && printf '[docker]\\nlive_restore = \"off\"\\n' > /etc/docker-tls-manager/config.toml");
    m.ok("docker-tls-manager apply");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = pid_of(&m, "c1");
    let on_disk = common::machine::fingerprint_on_disk(&m);
    let out = m.ok("docker-tls-manager renew --force server 2>&1");
    assert!(
        out.contains("deferred") && out.contains("waits for that restart"),
        "{out}"
    );
    // Nothing Docker would load at its next restart changed: whoever restarts it next gets
    // the verified certificate.
    assert_eq!(common::machine::fingerprint_on_disk(&m), on_disk);
    assert_eq!(common::machine::fingerprint_served(&m), on_disk);
    assert_eq!(pid_of(&m, "c1"), pid, "container killed");
    // Once the containers are gone, the renewal goes through.
    m.ok("docker rm -f c1 >/dev/null && docker-tls-manager renew --force server");
    assert_ne!(common::machine::fingerprint_on_disk(&m), on_disk);
    assert_eq!(
        common::machine::fingerprint_served(&m),
        common::machine::fingerprint_on_disk(&m)
    );
}

/// A local client socket-activates Docker while it is stopped (as in the middle of apply's
/// stop, socket, start): the drop-in is loaded before the stop, so that start pulls in the TCP
/// socket first and dockerd gets it with TLS; the apply that follows only verifies.
#[test]
fn socket_activation_while_docker_is_stopped_still_brings_up_mutual_tls() {
    let m = Machine::up("activate");
    m.ok("docker-tls-manager apply");
    m.ok("systemctl stop docker docker-tcp.socket");
    assert_eq!(
        m.sh("systemctl is-active docker-tcp.socket").status.code(),
        Some(3)
    );
    // docker.socket (unix) activates docker.service.
    m.ok("docker version >/dev/null");
    assert_eq!(
        m.ok("systemctl is-active docker-tcp.socket").trim(),
        "active"
    );
    m.ok(&format!("{ENV} docker version >/dev/null"));
    plain_never_answers(&m, "after socket activation");
    let out = m.ok("docker-tls-manager apply");
    assert!(out.contains("docker: up to date"), "{out}");
}

/// The host is renamed: the service sees the new name (no `ProtectHostname=`) and reissues the
/// server certificate; then ca.pem is lost and re-signed: it keeps its subject, so a bundle
/// handed out before the rename still works with the docker CLI.
#[test]
fn a_host_rename_keeps_every_bundle_working() {
    let m = Machine::up("rename");
    m.install_service("");
    m.ok("systemctl enable --now docker-tls-manager");
    m.ok("docker-tls-manager client bundle admin -o /tmp/b.tar.gz --host localhost && mkdir /tmp/old && tar -xzf /tmp/b.tar.gz -C /tmp/old");
    let old = "DOCKER_HOST=tcp://localhost:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/tmp/old";
    let subject = m.ok("openssl x509 -in /etc/docker/tls/ca.pem -noout -subject");
    m.ok("hostname renamed-host && systemctl reload docker-tls-manager");
    // The service follows the rename, then its convergence ends (Docker serves the new one).
    m.wait_for(
        "openssl x509 -in /etc/docker/tls/server-cert.pem -noout -ext subjectAltName | grep -q renamed-host",
        Duration::from_secs(60),
    );
    m.wait_for(SERVED_IS_DISK, Duration::from_secs(60));
    m.ok("rm /etc/docker/tls/ca.pem && docker-tls-manager apply");
    assert_eq!(
        m.ok("openssl x509 -in /etc/docker/tls/ca.pem -noout -subject"),
        subject,
        "the CA changed its name"
    );
    m.ok(&format!("{old} docker version >/dev/null"));
    m.ok("openssl verify -CAfile /etc/docker/tls/ca.pem /tmp/old/cert.pem");
}
