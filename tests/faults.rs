//! Faults: a full disk, a read-only certificate directory, the system bus not up yet, no
//! docker.service, dockerd failing to start. Each: a clear error, nothing lost, Docker left
//! running whenever it was running before.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::machine::{ENV, Machine};
use common::{Sandbox, snapshot, text};

fn sh(cmd: &str) -> std::process::Output {
    Command::new("bash").arg("-c").arg(cmd).output().unwrap()
}

fn as_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "mounting tmpfs needs root (run tests/run.sh as root)"
    );
}

/// Every PEM under `dir` parses and every key matches its certificate.
fn consistent(dir: &Path) {
    for (cert, key) in [
        ("certs/server-cert.pem", "certs/server-key.pem"),
        (
            "state/clients/admin/cert.pem",
            "state/clients/admin/key.pem",
        ),
    ] {
        let c = text(
            &sh(&format!(
                "openssl x509 -in {}/{cert} -noout -pubkey",
                dir.display()
            ))
            .stdout,
        );
        let k = text(&sh(&format!("openssl pkey -in {}/{key} -pubout", dir.display())).stdout);
        assert!(!c.is_empty() && c == k, "{cert} and {key} do not match");
        let v = sh(&format!(
            "openssl verify -CAfile {0}/certs/ca.pem {0}/{cert}",
            dir.display()
        ));
        assert!(v.status.success(), "{cert} does not verify");
    }
}

#[test]
fn full_disk_fails_clearly_and_loses_nothing() {
    as_root();
    let s = Sandbox::new("");
    let root = s.dir.path();
    assert!(sh(&format!("mount -t tmpfs -o size=96k dtm-full {0}/certs 2>/dev/null || (mkdir -p {0}/certs && mount -t tmpfs -o size=96k dtm-full {0}/certs)", root.display())).status.success());
    let _unmount = Unmount(root.join("certs"));
    s.ok(&["apply"]);
    let before = snapshot(&root.join("certs"));
    // Fill the file system to the last block.
    sh(&format!(
        "dd if=/dev/zero of={}/certs/filler bs=1k count=1000 2>/dev/null",
        root.display()
    ));
    let o = s.run(&["renew", "--force", "server"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("No space left on device") && err.contains("certs"),
        "{err}"
    );
    let after: Vec<_> = snapshot(&root.join("certs"))
        .into_iter()
        .filter(|(p, _, _)| !p.ends_with("filler"))
        .collect();
    assert_eq!(before, after, "files changed or lost on a full disk");
    consistent(root);
    sh(&format!("rm {}/certs/filler", root.display()));
    s.ok(&["renew", "--force", "server"]);
    consistent(root);
}

#[test]
fn read_only_certificate_directory_fails_clearly_and_loses_nothing() {
    as_root();
    let s = Sandbox::new("");
    let root = s.dir.path();
    s.ok(&["apply"]);
    let certs = root.join("certs");
    assert!(
        sh(&format!(
            "mount --bind {0} {0} && mount -o remount,ro,bind {0}",
            certs.display()
        ))
        .status
        .success()
    );
    let _unmount = Unmount(certs.clone());
    let before = snapshot(root);
    let o = s.run(&["renew", "--force", "server"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("Read-only file system") && err.contains("certs"),
        "{err}"
    );
    // Nothing changed but the lock file's presence (backups are written only before a replace).
    let after = snapshot(root);
    let strip = |v: Vec<(std::path::PathBuf, u32, Vec<u8>)>| -> Vec<_> {
        v.into_iter()
            .filter(|(p, _, _)| !p.to_string_lossy().contains("/backup"))
            .collect()
    };
    assert_eq!(strip(before), strip(after));
    consistent(root);
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {}", self.0.display()));
    }
}

#[test]
fn system_bus_not_up_yet_is_retried_until_it_is() {
    let m = Machine::up("nobus");
    m.install_service("");
    // The service comes up before the bus it will use (a path that does not exist yet).
    m.ok("mkdir -p /etc/systemd/system/docker-tls-manager.service.d && printf '[Service]\\nEnvironment=DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dtm-late-bus\\nReadWritePaths=/run\\n' > /etc/systemd/system/docker-tls-manager.service.d/late-bus.conf && systemctl daemon-reload");
    m.ok("systemctl start docker-tls-manager");
    let status = m.ok("systemctl show -p StatusText --value docker-tls-manager");
    assert!(
        status.contains("last attempt failed") && status.contains("D-Bus"),
        "{status}"
    );
    assert_eq!(
        m.ok("systemctl is-active docker").trim(),
        "active",
        "Docker disturbed"
    );
    // The bus appears: the retry (backoff from 15 s) configures Docker.
    m.ok("ln -s /run/dbus/system_bus_socket /run/dtm-late-bus");
    let t0 = Instant::now();
    while !m
        .sh(&format!("{ENV} docker version >/dev/null 2>&1"))
        .status
        .success()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not configured after the bus came up"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let j = m.ok("journalctl -u docker-tls-manager --no-pager");
    assert!(j.contains("retrying in"), "{j}");
}

#[test]
fn no_docker_service_is_refused_and_nothing_written() {
    let m = Machine::up("nodocker");
    // (The init script goes too: systemd would generate a docker.service from it.)
    m.ok("systemctl stop docker docker.socket && rm /lib/systemd/system/docker.service /lib/systemd/system/docker.socket /etc/init.d/docker && systemctl daemon-reload");
    let o = m.sh("docker-tls-manager apply");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("docker.service is not installed"),
        "{}",
        text(&o.stderr)
    );
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket && test ! -e /etc/docker/daemon.json");
    let o = m.sh("docker-tls-manager check");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stdout).contains("not installed"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn dockerd_failing_to_start_is_rolled_back_with_docker_running() {
    let m = Machine::up("nostart");
    m.ok("docker-tls-manager apply");
    let before = m.ok("sha256sum /etc/docker/tls/*.pem /etc/docker/daemon.json /etc/systemd/system/docker-tcp.socket");
    let pid = m.main_pid();
    // The new key is one dockerd cannot load: `dockerd --validate` (Docker 23+) refuses it
    // before the restart; dockerd 20.10 has none, and the restart fails and is rolled back.
    let o =
        m.sh("DOCKER_TLS_MANAGER_FAULT=corrupt-server-key docker-tls-manager renew --force server");
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    if m.ok("dockerd --help").contains("--validate") {
        assert!(
            err.contains(
                "dockerd refuses '/etc/docker/daemon.json' with what this run would put in place"
            ) && err.contains("X509 key pair")
                && err.contains("not restarted and the previous files were restored"),
            "{err}"
        );
        assert_eq!(m.main_pid(), pid, "docker restarted");
    } else {
        assert!(
            err.contains("restored and docker.service is running")
                && err.contains("has no `dockerd --validate`"),
            "{err}"
        );
        assert_ne!(m.main_pid(), pid, "the restart was not tried");
    }
    assert_eq!(m.ok("systemctl is-active docker").trim(), "active");
    assert_eq!(m.ok("sha256sum /etc/docker/tls/*.pem /etc/docker/daemon.json /etc/systemd/system/docker-tcp.socket"), before);
    m.ok(&format!("{ENV} docker version >/dev/null"));
}
