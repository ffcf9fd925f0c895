//! Docker on mutual TLS through systemd's D-Bus API, against a real systemd, D-Bus and dockerd
//! in a throwaway machine, checked with the real docker CLI, curl and openssl.

mod common;

use common::machine::{
    CLIENT, ENV, Machine, POLLER, assert_no_client_failed, fingerprint_on_disk, fingerprint_served,
    poll,
};
use common::text;

#[test]
fn fresh_host_apply_then_docker_cli_over_tls_and_idempotent_second_apply() {
    let m = Machine::up("fresh");
    // A container running before the first apply keeps running: live-restore goes on first.
    m.ok("docker run -d --network none --name before dtm-busybox /bin/sleep 100000");
    let pid_before = m.ok("docker inspect -f '{{.State.Pid}}' before");
    let out = m.ok("docker-tls-manager apply");
    assert!(
        out.contains("start docker-tcp.socket") && out.contains("verify"),
        "{out}"
    );
    assert_eq!(
        m.ok("docker inspect -f '{{.State.Pid}}' before"),
        pid_before,
        "container restarted"
    );

    // Scenario 1: the real docker CLI with the client's files.
    let v = m.ok(&format!(
        "{ENV} docker version --format '{{{{.Server.Version}}}}'"
    ));
    assert!(!v.trim().is_empty());
    let info = m.ok(&format!(
        "{ENV} docker info --format '{{{{.LiveRestoreEnabled}}}} {{{{.ContainersRunning}}}}'"
    ));
    assert_eq!(info.trim(), "true 1");
    // The bundle, unpacked into ~/.docker as users do, with the host name from the SANs.
    m.ok("docker-tls-manager client bundle admin -o /tmp/admin.tar.gz --host localhost && mkdir -p /root/.docker && tar -xzf /tmp/admin.tar.gz -C /root/.docker");
    m.ok("DOCKER_HOST=tcp://localhost:2376 DOCKER_TLS_VERIFY=1 docker version >/dev/null");
    // The context archive, imported by the docker CLI.
    m.ok("docker-tls-manager client bundle admin --format context -o /tmp/admin.ctx --host localhost && docker context import tlsctx /tmp/admin.ctx && docker --context tlsctx info >/dev/null");
    // Files and modes.
    m.ok("test $(stat -c %a /etc/docker/tls/server-key.pem) = 600 && test $(stat -c %a /var/lib/docker-tls-manager/ca-key.pem) = 600");
    let unit = m.ok("systemctl cat docker-tcp.socket");
    assert!(
        unit.contains("ListenStream=2376") && unit.contains("BindIPv6Only=both"),
        "{unit}"
    );
    assert_eq!(
        m.ok("systemctl is-enabled docker-tcp.socket").trim(),
        "enabled"
    );

    // Scenario 3: a second apply changes nothing and does not restart Docker.
    let pid = m.main_pid();
    let out = m.ok("docker-tls-manager apply");
    assert!(
        out.contains("certificates: up to date") && out.contains("docker: up to date"),
        "{out}"
    );
    assert_eq!(m.main_pid(), pid, "docker restarted by an idempotent apply");
    assert_eq!(fingerprint_served(&m), fingerprint_on_disk(&m));
}

#[test]
fn refused_plain_http_no_client_cert_foreign_ca_expired_and_server_cert() {
    let m = Machine::up("refuse");
    m.ok("docker-tls-manager apply");
    // Plain HTTP.
    let o = m.sh("curl -s --max-time 10 http://127.0.0.1:2376/_ping");
    assert_ne!(text(&o.stdout).trim(), "OK");
    assert!(
        text(&o.stdout).contains("HTTP request to an HTTPS server"),
        "{}",
        text(&o.stdout)
    );
    // TLS without a client certificate.
    let o = m.sh(&format!(
        "{CLIENT} curl -s --max-time 10 --cacert $C/ca.pem https://127.0.0.1:2376/_ping"
    ));
    assert!(!o.status.success() && text(&o.stdout).trim() != "OK");
    // A client certificate from another CA (a second, independent PKI).
    m.ok("printf '[paths]\\ncert_dir = \"/tmp/other/certs\"\\nstate_dir = \"/tmp/other/state\"\\n[docker]\\nmanage = false\\n' > /tmp/other.toml && docker-tls-manager --config /tmp/other.toml apply");
    let o = m.sh(&format!(
        "{CLIENT} O=/tmp/other/state/clients/admin; curl -s --max-time 10 --cacert $C/ca.pem --cert $O/cert.pem --key $O/key.pem https://127.0.0.1:2376/_ping"
    ));
    assert!(
        !o.status.success() && text(&o.stdout).trim() != "OK",
        "foreign client accepted"
    );
    // A client certificate from our own CA, but expired; and the same recipe, valid, is
    // accepted (so the refusal is the expiry's doing).
    let issue = |name: &str, start: &str, end: &str| {
        format!(
            "set -e; d=/tmp/{name}; mkdir -p $d && cd $d
             openssl ecparam -genkey -name prime256v1 -noout | openssl pkcs8 -topk8 -nocrypt -out key.pem
             openssl req -new -key key.pem -subj /CN={name} -out req.csr
             printf '[ca]\\ndefault_ca=c\\n[c]\\ndatabase=index.txt\\nnew_certs_dir=.\\nserial=serial\\ndefault_md=sha256\\npolicy=p\\nx509_extensions=e\\n[p]\\ncommonName=supplied\\n[e]\\nextendedKeyUsage=clientAuth\\n' > ca.cnf
             touch index.txt; echo 1000 > serial
             openssl ca -batch -config ca.cnf -cert /etc/docker/tls/ca.pem -keyfile /var/lib/docker-tls-manager/ca-key.pem -in req.csr -out cert.pem -startdate {start} -enddate {end} 2>/dev/null"
        )
    };
    m.ok(&issue("expired", "20200101000000Z", "20200201000000Z"));
    m.ok(&issue("valid", "20200101000000Z", "20990101000000Z"));
    let ping = |dir: &str| {
        m.sh(&format!(
            "{CLIENT} curl -s --max-time 10 --cacert $C/ca.pem --cert {dir}/cert.pem --key {dir}/key.pem https://127.0.0.1:2376/_ping"
        ))
    };
    let o = ping("/tmp/valid");
    assert_eq!(
        text(&o.stdout).trim(),
        "OK",
        "the recipe itself is wrong: {}",
        text(&o.stderr)
    );
    let o = ping("/tmp/expired");
    assert!(
        !o.status.success() && text(&o.stdout).trim() != "OK",
        "expired client accepted"
    );
    // The server's own certificate presented as a client (no clientAuth usage).
    let o = m.sh(&format!(
        "{CLIENT} curl -s --max-time 10 --cacert $C/ca.pem --cert /etc/docker/tls/server-cert.pem --key /etc/docker/tls/server-key.pem https://127.0.0.1:2376/_ping"
    ));
    assert!(
        !o.status.success() && text(&o.stdout).trim() != "OK",
        "server certificate accepted as a client"
    );
    // The docker CLI with the foreign identity fails too; with ours it works.
    let o = m.sh("DOCKER_HOST=tcp://127.0.0.1:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/tmp/other/state/clients/admin docker version");
    assert!(!o.status.success());
    m.ok(&format!("{ENV} docker version >/dev/null"));
}

#[test]
fn forced_server_rotation_refuses_no_client_and_keeps_containers() {
    let m = Machine::up("rotate");
    m.ok("docker-tls-manager apply");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    let old = fingerprint_served(&m);
    m.ok(POLLER);
    m.ok("sleep 1");
    let out = m.ok("docker-tls-manager renew --force server");
    assert!(
        out.contains("restart docker.service") && !out.contains("stop docker.service"),
        "{out}"
    );
    // More rotations than docker.service's StartLimitBurst (3 per 60 s): when that limit
    // trips, systemd fails the socket and refuses clients, so it must never trip on ours.
    for _ in 0..3 {
        m.ok("sleep 1; docker-tls-manager renew --force server >/dev/null");
    }
    m.ok("sleep 1");
    let p = poll(&m);
    // Four restarts: the forced rotation and three more.
    assert_no_client_failed(&m, &p, 4);
    assert!(p.ok > 10, "poller made only {} requests", p.ok);
    let new = fingerprint_served(&m);
    assert_ne!(old, new);
    assert_eq!(new, fingerprint_on_disk(&m));
    assert_eq!(
        m.ok("docker inspect -f '{{.State.Pid}}' c1"),
        pid,
        "container restarted"
    );
}

#[test]
fn hosts_in_daemon_json_is_refused_clearly_and_docker_keeps_running() {
    let m = Machine::up("hosts");
    let pid = m.main_pid();
    let user = r#"{"hosts": ["unix:///run/docker.sock"], "log-level": "info"}"#;
    m.ok(&format!("printf '%s' '{user}' > /etc/docker/daemon.json"));
    let o = m.sh("docker-tls-manager apply");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("\"hosts\"")
            && err.contains("/etc/docker/daemon.json")
            && err.contains("Remove"),
        "{err}"
    );
    assert_eq!(
        m.ok("cat /etc/docker/daemon.json"),
        user,
        "daemon.json changed"
    );
    assert_eq!(m.main_pid(), pid, "docker restarted");
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket");
    // `check` names the same problem, exit 1, changing nothing.
    let o = m.sh("docker-tls-manager check");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).contains("\"hosts\""), "{}", text(&o.stdout));
    // Once the user removes it, apply goes through and keeps their other key.
    m.ok(
        "printf '{\"log-level\": \"info\"}' > /etc/docker/daemon.json && docker-tls-manager apply",
    );
    let dj = m.ok("cat /etc/docker/daemon.json");
    assert!(
        dj.contains("\"log-level\": \"info\"") && dj.contains("\"tlsverify\": true"),
        "{dj}"
    );
}

#[test]
fn failures_roll_back_and_leave_docker_healthy() {
    let m = Machine::up("fail");
    // 1. First configuration, with the TCP port already taken: the socket cannot start.
    m.ok("busybox nc -l -p 2376 >/dev/null 2>&1 & echo $! > /tmp/nc.pid; sleep 0.5");
    let o = m.sh("docker-tls-manager apply");
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("docker-tcp.socket") && err.contains("restored"),
        "{err}"
    );
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket && test ! -e /etc/systemd/system/docker.service.d/docker-tls-manager.conf");
    m.ok("test ! -e /etc/docker/daemon.json || ! grep -q tlsverify /etc/docker/daemon.json");
    m.ok("docker version >/dev/null");
    m.ok("kill $(cat /tmp/nc.pid); sleep 0.3; docker-tls-manager apply");

    // 2. A rotation whose new key Docker cannot load: old certificate back, Docker serving it.
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let old = fingerprint_served(&m);
    let o =
        m.sh("DOCKER_TLS_MANAGER_FAULT=corrupt-server-key docker-tls-manager renew --force server");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("restored"), "{}", text(&o.stderr));
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    assert_eq!(fingerprint_served(&m), old);
    assert_eq!(fingerprint_on_disk(&m), old);
    m.ok(&format!("{ENV} docker version >/dev/null"));
    assert_eq!(
        m.ok("docker inspect -f '{{.State.Running}}' c1").trim(),
        "true"
    );
    // Many restarts in a row do not trip docker.service's start limit.
    for _ in 0..4 {
        m.ok("docker-tls-manager renew --force server >/dev/null");
    }
}

#[test]
fn deconfigure_closes_the_port_and_restores_daemon_json() {
    let m = Machine::up("deconf");
    let user = "{\n    \"log-level\": \"warn\"\n}\n";
    m.ok(&format!("printf '%s' '{user}' > /etc/docker/daemon.json"));
    m.ok("docker-tls-manager apply");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    let out = m.ok("docker-tls-manager deconfigure");
    assert!(out.contains("certificates kept"), "{out}");
    let o = m.sh("curl -s --max-time 5 http://127.0.0.1:2376/");
    assert_eq!(o.status.code(), Some(7), "port still open");
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    assert_eq!(
        m.ok("cat /etc/docker/daemon.json"),
        user,
        "daemon.json not restored byte for byte"
    );
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket && test ! -e /etc/systemd/system/docker.service.d");
    m.ok("test -s /etc/docker/tls/ca.pem && test -s /var/lib/docker-tls-manager/ca-key.pem");
    assert_eq!(m.ok("docker inspect -f '{{.State.Pid}}' c1"), pid);
    m.ok("docker version >/dev/null");
    // And back again.
    m.ok("docker-tls-manager apply");
    m.ok(&format!("{ENV} docker version >/dev/null"));
}

#[test]
fn running_containers_without_live_restore_defer_the_restart_visibly() {
    let m = Machine::up("defer");
    m.ok("mkdir -p /etc/docker-tls-manager && printf '[docker]\\nlive_restore = \"off\"\\n' > /etc/docker-tls-manager/config.toml");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    let docker_pid = m.main_pid();
    let o = m.sh("docker-tls-manager apply");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout) + &text(&o.stderr);
    assert!(
        out.contains("deferred") && out.contains("1 container(s)"),
        "{out}"
    );
    assert_eq!(
        m.main_pid(),
        docker_pid,
        "docker restarted despite running containers"
    );
    assert_eq!(m.ok("docker inspect -f '{{.State.Pid}}' c1"), pid);
    let st = m.ok("docker-tls-manager status");
    assert!(
        st.contains("restart deferred")
            && st.contains("serving the current certificate over mutual TLS: no"),
        "{st}"
    );
    // Nothing was written for Docker: its next restart (by anyone) starts it as it was.
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket && ! grep -qs tlsverify /etc/docker/daemon.json");
    // dockerd not answering /info: never assumed to run no containers.
    m.ok("mv /run/docker.sock /run/docker.sock.away");
    let o = m.sh("docker-tls-manager apply");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("does not answer"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(m.main_pid(), docker_pid);
    m.ok("mv /run/docker.sock.away /run/docker.sock");
    // Once the container is gone, apply completes the job.
    m.ok("docker rm -f c1 >/dev/null && docker-tls-manager apply");
    assert!(
        m.ok("docker-tls-manager status")
            .contains("serving the current certificate over mutual TLS: yes")
    );
}

#[test]
fn docker_opts_from_the_environment_file_are_honoured() {
    let m = Machine::up("opts");
    // Debian's unit: ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS, EnvironmentFile=-/etc/default/docker.
    m.ok("grep -q 'DOCKER_OPTS' /lib/systemd/system/docker.service");
    m.ok("echo 'DOCKER_OPTS=\"--live-restore\"' > /etc/default/docker && systemctl restart docker");
    m.ok("docker-tls-manager apply");
    // live-restore came as a flag: it must not be written to daemon.json too (dockerd refuses both).
    m.ok("! grep -q live-restore /etc/docker/daemon.json");
    m.ok(&format!(
        "{ENV} docker info --format '{{{{.LiveRestoreEnabled}}}}' | grep -q true"
    ));
    // A TLS flag in DOCKER_OPTS is a conflict apply refuses, saying where it comes from.
    m.ok("echo 'DOCKER_OPTS=\"--tlsverify\"' > /etc/default/docker");
    let o = m.sh("docker-tls-manager apply");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("--tlsverify"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn failed_ca_rotation_is_rolled_back_and_recovers() {
    let m = Machine::up("carot");
    m.ok("docker-tls-manager apply");
    m.ok("docker-tls-manager client bundle admin -o /tmp/old.tar.gz && mkdir /tmp/old && tar -xzf /tmp/old.tar.gz -C /tmp/old");
    let ca_key = m.ok("sha256sum /var/lib/docker-tls-manager/ca-key.pem");
    let o = m.sh("DOCKER_TLS_MANAGER_FAULT=corrupt-server-key docker-tls-manager renew --force ca");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(
        m.ok("sha256sum /var/lib/docker-tls-manager/ca-key.pem"),
        ca_key,
        "CA key not restored"
    );
    // The bundle handed out before still works: same CA, Docker serving over TLS.
    m.ok("test \"$(curl -s --max-time 10 --cacert /tmp/old/ca.pem --cert /tmp/old/cert.pem --key /tmp/old/key.pem https://127.0.0.1:2376/_ping)\" = OK");
    // And the next apply converges (client files issued under the abandoned key are redone).
    m.ok("docker-tls-manager apply");
    m.ok("docker-tls-manager apply | grep -q 'certificates: up to date'");
    m.ok(&format!("{ENV} docker version >/dev/null"));
    m.ok("test \"$(curl -s --max-time 10 --cacert /tmp/old/ca.pem --cert /tmp/old/cert.pem --key /tmp/old/key.pem https://127.0.0.1:2376/_ping)\" = OK");
}

/// docker-ce's unit: `/usr/bin/dockerd`, no `$DOCKER_OPTS`, `Requires=docker.socket`. apply,
/// forced rotations and deconfigure against it, the flags read from ExecStart as systemd has it.
#[test]
fn docker_ce_style_unit_apply_rotation_and_deconfigure() {
    let m = Machine::up("dockerce");
    m.ok(
        r#"test -e /usr/bin/dockerd || ln -s /usr/sbin/dockerd /usr/bin/dockerd
cat > /etc/systemd/system/docker.service <<'UNIT'
[Unit]
Description=Docker Application Container Engine
Documentation=https://docs.docker.com
After=network-online.target docker.socket firewalld.service containerd.service time-set.target
Wants=network-online.target containerd.service
Requires=docker.socket

[Service]
Type=notify
ExecStart=/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock
ExecReload=/bin/kill -s HUP $MAINPID
TimeoutStartSec=0
RestartSec=2
Restart=always
StartLimitBurst=3
StartLimitInterval=60s
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
Delegate=yes
KillMode=process
OOMScoreAdjust=-500

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload && systemctl restart docker"#,
    );
    m.wait_for(
        "docker version >/dev/null 2>&1",
        std::time::Duration::from_secs(30),
    );
    let exec = m.ok("systemctl show -p ExecStart --value docker.service");
    assert!(
        exec.contains("/usr/bin/dockerd") && !exec.contains("DOCKER_OPTS"),
        "{exec}"
    );
    let user = "{\n    \"log-level\": \"warn\"\n}\n";
    m.ok(&format!("printf '%s' '{user}' > /etc/docker/daemon.json"));
    let out = m.ok("docker-tls-manager check");
    assert!(out.contains("/usr/bin/dockerd -H fd://"), "{out}");
    m.ok("docker-tls-manager apply");
    m.ok(&format!("{ENV} docker version >/dev/null"));
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    let old = fingerprint_served(&m);
    m.ok(POLLER);
    m.ok("sleep 1");
    for _ in 0..2 {
        m.ok("docker-tls-manager renew --force server >/dev/null; sleep 1");
    }
    let p = poll(&m);
    assert_no_client_failed(&m, &p, 2);
    assert_ne!(old, fingerprint_served(&m));
    assert_eq!(fingerprint_served(&m), fingerprint_on_disk(&m));
    assert_eq!(m.ok("docker inspect -f '{{.State.Pid}}' c1"), pid);
    // The unit dockerd runs under is still docker-ce's, with our drop-in beside it.
    assert!(
        m.ok("systemctl show -p ExecStart --value docker.service")
            .contains("/usr/bin/dockerd")
    );
    m.ok("docker-tls-manager deconfigure");
    assert_eq!(
        m.sh("curl -s --max-time 5 http://127.0.0.1:2376/")
            .status
            .code(),
        Some(7),
        "port still open"
    );
    assert_eq!(m.ok("cat /etc/docker/daemon.json"), user);
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    assert_eq!(m.ok("docker inspect -f '{{.State.Pid}}' c1"), pid);
}

/// The major version of the machine's dockerd.
fn dockerd_major(m: &Machine) -> u32 {
    m.ok("dockerd --version")
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .expect("dockerd --version")
}

/// A daemon.json the user broke in ways only dockerd knows (an unknown key; live-restore given
/// both as a flag in `$DOCKER_OPTS` and in the file) while dockerd runs. With `dockerd
/// --validate` (Docker 23+): refused with dockerd's own words, exit 2, nothing restarted or
/// written. Without it (20.10): the log says so, the restart fails and is rolled back.
#[test]
fn a_daemon_json_only_dockerd_can_judge_is_refused_before_any_restart() {
    let m = Machine::up("validate");
    m.ok("docker-tls-manager apply");
    let major = dockerd_major(&m);
    let check = m.ok("docker-tls-manager check");
    assert!(check.contains("--validate"), "{check}");
    let cases = [
        (
            "unknown key",
            "",
            r#"s/"tlsverify"/"bogus-key": 1, "tlsverify"/"#,
            "bogus-key",
        ),
        (
            "flag and file",
            "DOCKER_OPTS=--live-restore",
            "",
            "live-restore",
        ),
    ];
    for (what, opts, sed, needle) in cases {
        let before = m.ok("cat /etc/docker/daemon.json");
        let pid = m.main_pid();
        if !opts.is_empty() {
            m.ok(&format!("echo '{opts}' > /etc/default/docker"));
        }
        if !sed.is_empty() {
            m.ok(&format!("sed -i '{sed}' /etc/docker/daemon.json"));
        }
        let broken = m.ok("cat /etc/docker/daemon.json");
        let o = m.sh("docker-tls-manager renew --force server");
        let err = text(&o.stderr);
        if major >= 23 {
            assert_eq!(o.status.code(), Some(2), "{what}: {err}");
            assert!(
                err.contains("dockerd refuses '/etc/docker/daemon.json' as it is now")
                    && err.contains(needle)
                    && err.contains("not restarted"),
                "{what}: {err}"
            );
            assert_eq!(m.main_pid(), pid, "{what}: docker restarted");
            assert_eq!(m.ok("cat /etc/docker/daemon.json"), broken, "{what}");
            m.ok(&format!("{ENV} docker version >/dev/null"));
            let c = m.sh("docker-tls-manager check");
            assert!(
                text(&c.stdout).contains(needle) && c.status.code() == Some(1),
                "{what}: check: {}",
                text(&c.stdout)
            );
        } else {
            assert_ne!(o.status.code(), Some(0), "{what}: {err}");
            let log = text(&o.stderr) + &text(&o.stdout);
            assert!(log.contains("has no `dockerd --validate`"), "{what}: {log}");
        }
        // Put the user's file right again; apply brings mutual TLS back.
        m.ok(&format!(
            "rm -f /etc/default/docker; printf '%s' '{before}' > /etc/docker/daemon.json; systemctl reset-failed docker; systemctl restart docker || true"
        ));
        m.ok("docker-tls-manager apply");
        m.ok(&format!("{ENV} docker version >/dev/null"));
    }
}
