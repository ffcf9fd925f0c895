//! A CA key rollover without a flag day (issue 14), in a real systemd + dockerd machine, with
//! the docker CLI (Go), curl (OpenSSL) and docker-py (Python's ssl) as clients: phase 1 lets old
//! and new bundles in, phase 2 shuts the old ones out and destroys the old key; each phase is
//! one Docker restart that refuses no request and keeps containers running.

mod common;

use common::machine::{Machine, assert_no_client_failed, poll};
use common::text;

const OLD: &str = "/tmp/old";
const NEW: &str = "/tmp/new";
const STATE: &str = "/var/lib/docker-tls-manager";

/// The three clients against Docker with the bundle in `dir`: (name, succeeded, output).
fn clients(m: &Machine, dir: &str) -> Vec<(&'static str, bool, String)> {
    let run = |name: &'static str, script: String| {
        let o = m.sh(&script);
        (
            name,
            o.status.success(),
            format!("{}{}", text(&o.stdout), text(&o.stderr)),
        )
    };
    vec![
        run(
            "docker CLI",
            format!(
                "DOCKER_HOST=tcp://localhost:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={dir} \
                 timeout 20 docker version --format '{{{{.Server.Version}}}}'"
            ),
        ),
        run(
            "curl",
            format!(
                "curl -sS --fail --max-time 10 --cacert {dir}/ca.pem --cert {dir}/cert.pem \
                 --key {dir}/key.pem https://localhost:2376/_ping"
            ),
        ),
        run(
            "docker-py",
            format!(
                "timeout 20 /usr/bin/python3 -c \"import docker; t = docker.tls.TLSConfig(\
                 client_cert=('{dir}/cert.pem', '{dir}/key.pem'), ca_cert='{dir}/ca.pem', \
                 verify=True); print(docker.DockerClient(base_url='https://localhost:2376', \
                 tls=t).ping())\""
            ),
        ),
    ]
}

fn all_work(m: &Machine, dir: &str, when: &str) {
    for (name, ok, out) in clients(m, dir) {
        assert!(ok, "{when}: {name} with {dir} was refused:\n{out}");
    }
}

fn all_refused(m: &Machine, dir: &str, when: &str) {
    for (name, ok, out) in clients(m, dir) {
        assert!(!ok, "{when}: {name} with {dir} still got in:\n{out}");
    }
}

fn poller(dir: &str) -> String {
    format!(
        "rm -f /tmp/stop-poll /tmp/poll-result; (python3 /usr/local/bin/dtm-poller {dir} \
         127.0.0.1:2376 /tmp/stop-poll > /tmp/poll-result 2>&1 &); sleep 1"
    )
}

fn bundle(m: &Machine, dir: &str) {
    m.ok(&format!(
        "docker-tls-manager client bundle admin -o {dir}.tar.gz --host localhost && rm -rf {dir} \
         && mkdir {dir} && tar -xzf {dir}.tar.gz -C {dir}"
    ));
}

/// Files under the state and certificate directories (backups included) holding the private
/// key whose public key is `public_pem`.
fn copies_of_key(m: &Machine, public_pem: &str) -> String {
    m.ok(&format!(
        "want='{public_pem}'; for f in $(find {STATE} /etc/docker -type f); do \
         [ \"$(openssl pkey -in $f -pubout 2>/dev/null)\" = \"$want\" ] && echo $f; done; true"
    ))
}

#[test]
fn staged_rollover_refuses_no_client_then_shuts_the_old_ca_out() {
    let m = Machine::up("rollover");
    m.ok("docker-tls-manager apply");
    bundle(&m, OLD);
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    all_work(&m, OLD, "before the rollover");
    let old_key = m.ok(&format!("openssl pkey -in {STATE}/ca-key.pem -pubout"));
    let old_key = old_key.trim();

    // Phase 1: one restart; a client polling with the old bundle is never refused.
    m.ok(&poller(OLD));
    let dockerd = m.main_pid();
    m.ok("docker-tls-manager ca rollover start");
    assert_ne!(m.main_pid(), dockerd, "phase 1 did not restart Docker");
    let p = poll(&m);
    assert_no_client_failed(&m, &p, 1);
    assert!(p.ok > 10, "only {} requests", p.ok);
    all_work(&m, OLD, "phase 1");
    // Twice: refused, nothing changed.
    let again = m.sh("docker-tls-manager ca rollover start");
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("already in phase 1"));

    // The chain, as independent tools see it: the old CA verifies the leaf directly, the new
    // CA through the cross certificate; the new CA alone does not (pathlen and issuer checked).
    m.ok("cd /tmp && awk '/BEGIN/{n++} {print > (\"srv\" n \".pem\")}' /etc/docker/tls/server-cert.pem");
    m.ok(&format!(
        "openssl verify -CAfile {OLD}/ca.pem /tmp/srv1.pem"
    ));
    m.ok(&format!(
        "openssl verify -CAfile {STATE}/clients/admin/ca.pem -untrusted /tmp/srv2.pem /tmp/srv1.pem"
    ));
    assert!(
        !m.sh(&format!(
            "openssl verify -CAfile {STATE}/clients/admin/ca.pem /tmp/srv1.pem"
        ))
        .status
        .success()
    );

    // Who still holds an old bundle: status names admin, finish refuses without --force.
    let st = m.ok("docker-tls-manager ca rollover status");
    assert!(
        st.contains("previous CA: admin"),
        "status does not name admin:\n{st}"
    );
    assert!(
        m.ok("docker-tls-manager status")
            .contains("previous CA: admin")
    );
    let early = m.sh("docker-tls-manager ca rollover finish");
    assert_eq!(early.status.code(), Some(2), "{}", text(&early.stderr));
    assert!(text(&early.stderr).contains("admin"));

    // A bundle handed out now is from the new CA, and works.
    bundle(&m, NEW);
    assert_eq!(
        m.ok(&format!("grep -c BEGIN {NEW}/ca.pem")).trim(),
        "1",
        "a new bundle must carry the new CA alone"
    );
    all_work(&m, NEW, "phase 1");
    assert!(
        m.ok("docker-tls-manager ca rollover status")
            .contains("no client holds")
    );

    // The cross certificate every phase-1 handshake hands out, kept by an old client.
    m.ok(&format!("cp {STATE}/ca-cross.pem /tmp/cross.pem"));
    // Phase 2: one restart; a client polling with the new bundle is never refused.
    m.ok(&poller(NEW));
    let dockerd = m.main_pid();
    m.ok("docker-tls-manager ca rollover finish");
    assert_ne!(m.main_pid(), dockerd, "phase 2 did not restart Docker");
    let p = poll(&m);
    assert_no_client_failed(&m, &p, 1);
    all_work(&m, NEW, "phase 2");
    all_refused(&m, OLD, "phase 2");
    // The old client certificate with the new CA: dockerd refuses it (not only the client
    // refusing the server).
    let mixed = m.sh(&format!(
        "curl -sS --fail --max-time 10 --cacert {NEW}/ca.pem --cert {OLD}/cert.pem --key {OLD}/key.pem https://localhost:2376/_ping"
    ));
    assert!(
        !mixed.status.success(),
        "dockerd still trusts the old CA's client certificates"
    );
    // ...also when it sends the cross certificate as an intermediate (old leaf -> cross -> new
    // CA): the cross certificate is for server authentication only.
    m.ok(&format!(
        "cat {OLD}/cert.pem /tmp/cross.pem > /tmp/old-chain.pem"
    ));
    for (client, cmd) in [
        (
            "curl",
            format!(
                "curl -sS --fail --max-time 10 --cacert {NEW}/ca.pem --cert /tmp/old-chain.pem \
                 --key {OLD}/key.pem https://localhost:2376/_ping"
            ),
        ),
        (
            "docker CLI",
            format!(
                "timeout 20 /usr/bin/docker --tlsverify --tlscacert {NEW}/ca.pem --tlscert \
                 /tmp/old-chain.pem --tlskey {OLD}/key.pem -H tcp://localhost:2376 ps"
            ),
        ),
    ] {
        let o = m.sh(&cmd);
        assert!(
            !o.status.success(),
            "{client}: an old client certificate got in through the cross certificate"
        );
    }
    // The old key is gone: no file, no backup copy, no temp file.
    assert_eq!(copies_of_key(&m, old_key), "", "copies of the old CA key");
    let left = m.ok(&format!(
        "ls {STATE}/ca-previous-key.pem {STATE}/ca-cross.pem {STATE}/rollover.json 2>/dev/null; true"
    ));
    assert_eq!(left.trim(), "", "rollover files left");
    let twice = m.sh("docker-tls-manager ca rollover finish");
    assert_eq!(twice.status.code(), Some(2));
    assert!(text(&twice.stderr).contains("no CA key rollover in progress"));
    assert_eq!(
        m.ok("docker inspect -f '{{.State.Pid}}' c1"),
        pid,
        "the container restarted"
    );
}

/// `[ca] key_lifetime`: the service starts the rollover when the key is that old and finishes
/// it `rollover_overlap` later; STATUS=, the metrics and the log name the client still on the
/// old CA meanwhile.
#[test]
fn the_service_rolls_the_ca_key_over_on_schedule() {
    use std::time::Duration;
    let m = Machine::up("rollover-auto");
    m.ok("mkdir -p /var/lib/prometheus/node-exporter");
    m.install_service("[ca]\nkey_lifetime = \"1h\"\nrollover_overlap = \"1m\"\n");
    m.ok("systemctl enable --now docker-tls-manager");
    bundle(&m, OLD);
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    let pid = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    let metrics = "/var/lib/prometheus/node-exporter/docker-tls-manager.prom";
    // The key is made two hours old; a reload makes the service look at once.
    m.ok(&format!(
        "touch -d '2 hours ago' {STATE}/ca-key.pem && systemctl reload docker-tls-manager"
    ));
    m.wait_for(
        &format!(
            "grep -q '\"automatic\": true' {STATE}/rollover.json && \
             [ $(grep -c BEGIN /etc/docker/tls/server-cert.pem) = 2 ]"
        ),
        Duration::from_secs(30),
    );
    m.wait_for(
        "systemctl show -p StatusText --value docker-tls-manager | grep -q 'previous CA: admin'",
        Duration::from_secs(30),
    );
    all_work(&m, OLD, "automatic phase 1");
    m.ok(&format!(
        "grep -qx 'docker_tls_manager_ca_rollover_phase 1' {metrics} && \
         grep -qx 'docker_tls_manager_ca_rollover_old_bundles 1' {metrics}"
    ));
    // After the overlap the service finishes by itself, naming who is shut out.
    m.wait_for(
        &format!(
            "! test -e {STATE}/rollover.json && [ $(grep -c BEGIN /etc/docker/tls/ca.pem) = 1 ] \
             && grep -qx 'docker_tls_manager_ca_rollover_phase 0' {metrics}"
        ),
        Duration::from_secs(150),
    );
    m.wait_for(
        &format!(
            "[ $(grep -c BEGIN /etc/docker/tls/server-cert.pem) = 1 ] && \
             curl -sf --cacert {STATE}/clients/admin/ca.pem --cert {STATE}/clients/admin/cert.pem \
             --key {STATE}/clients/admin/key.pem https://localhost:2376/_ping"
        ),
        Duration::from_secs(60),
    );
    let j = text(&m.sh("journalctl -u docker-tls-manager --no-pager").stdout);
    assert!(j.contains("reached [ca] key_lifetime"), "{j}");
    assert!(
        j.contains("stops working now: admin"),
        "the log does not name admin:\n{j}"
    );
    all_refused(&m, OLD, "after the automatic phase 2");
    bundle(&m, NEW);
    all_work(&m, NEW, "after the automatic phase 2");
    assert_eq!(
        m.ok("docker inspect -f '{{.State.Pid}}' c1"),
        pid,
        "the container restarted"
    );
}

/// The admin on a bad day, without Docker: `ca replace` without --now, finish with nothing to
/// finish, start twice, and the immediate replacement in the middle of a rollover (it ends the
/// rollover: no old CA trusted, no copy of the old key left anywhere).
#[test]
fn the_commands_refuse_what_makes_no_sense_and_replace_ends_a_rollover() {
    use common::Sandbox;
    use std::os::unix::fs::PermissionsExt;
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    let ca_before = std::fs::read(s.path("certs/ca.pem")).unwrap();
    let o = s.run(&["ca", "replace"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("ca rollover start"),
        "{}",
        text(&o.stderr)
    );
    let o = s.run(&["ca", "rollover", "finish"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(s.path("certs/ca.pem")).unwrap(), ca_before);
    let key1 = std::fs::read_to_string(s.path("state/ca-key.pem")).unwrap();

    s.ok(&["ca", "rollover", "start"]);
    let mode = |p: &str| std::fs::metadata(s.path(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("state/ca-previous-key.pem"), 0o600);
    assert_eq!(
        std::fs::read_to_string(s.path("state/ca-previous-key.pem")).unwrap(),
        key1
    );
    assert_ne!(
        std::fs::read_to_string(s.path("state/ca-key.pem")).unwrap(),
        key1
    );
    assert_eq!(s.run(&["ca", "rollover", "start"]).status.code(), Some(2));
    assert!(s.ok(&["ca", "rollover", "status"]).contains("phase 1"));
    assert!(s.ok(&["status"]).contains("CA key rollover, phase 1"));
    // Converged: a second apply does nothing.
    assert!(s.ok(&["apply"]).contains("up to date"));

    let out = s.ok(&["ca", "replace", "--now"]);
    assert!(
        out.contains("every bundle handed out before no longer works"),
        "{out}"
    );
    assert_eq!(
        String::from_utf8(std::fs::read(s.path("certs/ca.pem")).unwrap())
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        1
    );
    for f in [
        "ca-previous-key.pem",
        "ca-previous.pem",
        "ca-cross.pem",
        "rollover.json",
    ] {
        assert!(!s.path("state").join(f).exists(), "{f} left");
    }
    // The old key is nowhere under the state directory (backups included).
    let mut stack = vec![s.path("state")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let data = std::fs::read(e.path()).unwrap();
                assert!(data != key1.as_bytes(), "old CA key in {:?}", e.path());
            }
        }
    }
    assert!(
        s.ok(&["ca", "rollover", "status"])
            .contains("no CA key rollover")
    );
    assert!(s.ok(&["apply"]).contains("up to date"));
    let o = s.run(&["ca", "rollover", "finish", "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

/// `ca rollover start` and `ca rollover finish --force` (PKI only) killed with SIGKILL at
/// every file write (the N-th rename: the atomic-write helper renames a temp file over its
/// target) and, for finish, every removal; then `apply` converges on the phase asked for, as
/// OpenSSL sees it: in phase 1 the old bundle verifies the server directly, the new one through
/// the cross certificate, dockerd's ca.pem verifies client certificates of both CAs; after
/// phase 2 only the new CA, and no copy of the old key. The Docker side of a kill is the usual
/// one (a new server certificate: tests/crash.rs).
#[test]
fn a_rollover_killed_at_every_write_converges_on_the_next_apply() {
    use common::Sandbox;
    let verify = |s: &Sandbox, ca: &str, untrusted: Option<&str>, cert: &str| -> bool {
        let mut c = std::process::Command::new("openssl");
        c.arg("verify").arg("-CAfile").arg(s.path(ca));
        if let Some(u) = untrusted {
            c.arg("-untrusted").arg(s.path(u));
        }
        c.arg(s.path(cert)).output().unwrap().status.success()
    };
    let no_temp_files = |s: &Sandbox| {
        let o = std::process::Command::new("find")
            .arg(s.path(""))
            .args(["-name", ".dtm-tmp-*"])
            .output()
            .unwrap();
        assert_eq!(text(&o.stdout), "", "temp files left");
    };
    for (cmd, syscalls) in [
        ("ca rollover start", &["renameat"][..]),
        ("ca rollover finish --force", &["renameat", "unlink"][..]),
    ] {
        for sys in syscalls {
            let mut n = 1;
            loop {
                let s = Sandbox::new("");
                s.ok(&["apply"]);
                std::fs::create_dir(s.path("old")).unwrap();
                for f in ["ca.pem", "cert.pem", "key.pem"] {
                    std::fs::copy(s.path("state/clients/admin").join(f), s.path("old").join(f))
                        .unwrap();
                }
                let old_key = std::fs::read(s.path("state/ca-key.pem")).unwrap();
                let finish = cmd.contains("finish");
                if finish {
                    s.ok(&["ca", "rollover", "start"]);
                }
                let o = std::process::Command::new("strace")
                    .args(["-f", "-o", "/dev/null", "-e"])
                    .arg(format!("trace={sys}"))
                    .arg("-e")
                    .arg(format!("inject={sys}:signal=KILL:when={n}"))
                    .arg(env!("CARGO_BIN_EXE_docker-tls-manager"))
                    .arg("--config")
                    .arg(&s.config)
                    .args(cmd.split(' '))
                    .output()
                    .expect("strace (scripts/install-deps.sh installs it)");
                let what = format!("`{cmd}` killed at {sys} #{n}");
                eprintln!("{what}");
                if o.status.success() {
                    eprintln!("{cmd}: completed after {} kills at {sys}", n - 1);
                    assert!(n > 3, "{what}: too few writes to kill");
                    break;
                }
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(o.status.signal(), Some(9), "{what}: {}", text(&o.stderr));
                // What was asked for when the kill came: the record (written first) says.
                let record = std::fs::read_to_string(s.path("state/rollover.json")).ok();
                let phase = match record.as_deref() {
                    None if finish => "finished",
                    None => "none",
                    Some(r) if r.contains("\"overlap\"") => "overlap",
                    Some(_) => "finished",
                };
                s.ok(&["apply"]);
                assert!(
                    s.ok(&["apply"]).contains("up to date"),
                    "{what}: not converged"
                );
                no_temp_files(&s);
                let server = "certs/server-cert.pem";
                let admin = "state/clients/admin";
                let new_ca = &format!("{admin}/ca.pem");
                assert!(
                    verify(&s, new_ca, Some(server), server),
                    "{what}: new bundle"
                );
                assert!(verify(
                    &s,
                    "certs/ca.pem",
                    None,
                    &format!("{admin}/cert.pem")
                ));
                if phase == "none" {
                    assert!(verify(&s, "old/ca.pem", None, server), "{what}: old bundle");
                    assert!(!s.path("state/ca-previous-key.pem").exists(), "{what}");
                } else if phase == "finished" {
                    assert!(!verify(&s, "old/ca.pem", Some(server), server), "{what}");
                    assert!(!verify(&s, "certs/ca.pem", None, "old/cert.pem"), "{what}");
                    let o = std::process::Command::new("grep")
                        .args(["-rlF", "--"])
                        .arg(String::from_utf8_lossy(&old_key).lines().nth(1).unwrap())
                        .arg(s.path(""))
                        .output()
                        .unwrap();
                    assert_eq!(text(&o.stdout), "", "{what}: the old CA key is left");
                } else {
                    assert!(verify(&s, "old/ca.pem", None, server), "{what}: old bundle");
                    assert!(verify(&s, "certs/ca.pem", None, "old/cert.pem"), "{what}");
                    assert!(s.path("state/ca-previous-key.pem").exists(), "{what}");
                }
                n += 1;
                assert!(n < 80, "{cmd}: more than 80 writes?");
            }
        }
    }
}

/// Runs `cmd` in the machine and SIGKILLs it as its first systemd/D-Bus step begins (every
/// file written, Docker not restarted yet), or at the N-th rename; true if it was killed.
fn kill_in_machine(m: &Machine, cmd: &str, at_rename: Option<u32>) -> bool {
    let script = match at_rename {
        Some(n) => format!(
            "strace -f -o /dev/null -e trace=renameat -e inject=renameat:signal=KILL:when={n} \
             docker-tls-manager {cmd} >/tmp/kill-out 2>&1; echo rc=$?"
        ),
        None => format!(
            r#"rm -f /tmp/kill-fifo; mkfifo /tmp/kill-fifo
            NO_COLOR=1 docker-tls-manager {cmd} 2>/tmp/kill-fifo >/tmp/kill-out & p=$!
            while IFS= read -r l; do
              case $l in
                *" docker step=write "*|*" docker step=remove "*) ;;
                *" docker step="*) kill -9 $p; break ;;
              esac
            done </tmp/kill-fifo
            wait $p; echo rc=$?"#
        ),
    };
    let out = m.ok(&script);
    out.trim().ends_with("rc=137")
}

/// The attacker's question after a crash: `ca rollover finish` killed once every file is
/// written but before Docker restarts (the old key already destroyed, the record gone): the
/// next `apply` still restarts Docker, and the old bundle is refused. Same for phase 1 (both
/// bundles work after `apply`), and for kills at a rename in the middle of each phase.
#[test]
fn a_rollover_killed_in_the_machine_converges_with_docker_on_the_next_apply() {
    let m = Machine::up("rollover-kill");
    m.ok("docker-tls-manager apply");
    let curl = |dir: &str| {
        m.sh(&format!(
            "curl -sS --fail --max-time 10 --cacert {dir}/ca.pem --cert {dir}/cert.pem \
             --key {dir}/key.pem https://localhost:2376/_ping"
        ))
        .status
        .success()
    };
    let admin = format!("{STATE}/clients/admin");
    for at in [None, Some(4), Some(12)] {
        bundle(&m, OLD);
        let what = format!("start killed at {at:?}");
        assert!(
            kill_in_machine(&m, "ca rollover start", at),
            "{what}: not killed"
        );
        if at.is_none() {
            // Every file says phase 1, the running dockerd does not yet: `apply` must see it.
            assert!(
                !curl(&admin),
                "{what}: Docker already restarted, the trial proves nothing"
            );
        }
        m.ok("docker-tls-manager apply");
        m.wait_for(
            common::machine::SERVED_IS_DISK,
            std::time::Duration::from_secs(10),
        );
        assert!(curl(OLD), "{what}: the old bundle is refused");
        assert!(curl(&admin), "{what}: the new bundle is refused");
        let what = format!("finish killed at {at:?}");
        assert!(
            kill_in_machine(&m, "ca rollover finish --force", at.map(|n| n.min(3))),
            "{what}: not killed"
        );
        if at.is_none() {
            // Every file says phase 2 (the old key is gone), the running dockerd does not yet:
            // `apply` must see it.
            assert!(
                curl(OLD),
                "{what}: Docker already restarted, the trial proves nothing"
            );
            assert!(
                !m.sh(&format!("test -e {STATE}/ca-previous-key.pem"))
                    .status
                    .success(),
                "{what}: the finish did not get to its files"
            );
        }
        m.ok("docker-tls-manager apply");
        m.wait_for(
            common::machine::SERVED_IS_DISK,
            std::time::Duration::from_secs(10),
        );
        assert!(!curl(OLD), "{what}: the old bundle still gets in");
        assert!(curl(&admin), "{what}: the new bundle is refused");
        assert!(
            m.ok(&format!("ls {STATE}"))
                .lines()
                .all(|f| !f.contains("previous")),
            "{what}: the previous CA is left"
        );
    }
}
