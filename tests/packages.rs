//! The packages built by packaging/build.sh (tests/run.sh builds them first): the .deb through
//! the user's whole path in a throwaway systemd + Docker machine, the .rpm by inspection with
//! rpm (no RPM-based system is available here), both through their distribution's linter
//! (lintian, rpmlint), and the unit's hardening score.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::machine::{ENV, Machine, POLLER, assert_no_client_failed, poll};
use common::text;

fn one_file(dir: &str, ext: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let found: Vec<PathBuf> = std::fs::read_dir(&d)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run `bash packaging/build.sh` first (tests/run.sh does)",
                d.display()
            )
        })
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one .{ext} in {}: {found:?}",
        d.display()
    );
    found.into_iter().next().unwrap()
}

fn host(cmd: &str) -> String {
    let o = Command::new("bash").arg("-c").arg(cmd).output().unwrap();
    assert!(o.status.success(), "`{cmd}` failed: {}", text(&o.stderr));
    text(&o.stdout)
}

fn copy_in(m: &Machine, file: &Path, name: &str) {
    std::fs::copy(file, m.root.join("root").join(name)).unwrap();
}

#[test]
fn deb_install_enable_restart_upgrade_remove_purge() {
    let deb = one_file("target/debian", "deb");
    let upgrade = one_file("target/debian-upgrade", "deb");
    let m = Machine::up("pkg");
    copy_in(&m, &deb, "docker-tls-manager.deb");
    copy_in(&m, &upgrade, "docker-tls-manager-upgrade.deb");

    // 1. Install: nothing enabled or started; then the one command.
    // (packaging) As on a real host: no policy-rc.d (the machine boots this host's tree, a
    // Docker image whose policy-rc.d forbids maintainer scripts to start or stop services;
    // step 6 puts it back).
    m.ok("rm -f /usr/sbin/policy-rc.d");
    m.ok("cd /root && apt-get install -y ./docker-tls-manager.deb");
    // As on a real host: the packaged binary is the only one.
    m.ok("rm -f /usr/local/bin/docker-tls-manager");
    assert_eq!(
        text(&m.sh("systemctl is-enabled docker-tls-manager").stdout).trim(),
        "disabled"
    );
    assert_eq!(
        text(&m.sh("systemctl is-active docker-tls-manager").stdout).trim(),
        "inactive"
    );
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket");
    let conf = m.ok("cat /etc/docker-tls-manager/config.toml");
    assert!(
        conf.contains("# validity = \"90d\"")
            && !conf
                .lines()
                .any(|l| l.contains(" = ") && !l.starts_with('#'))
    );
    m.ok("test -e /usr/share/man/man8/docker-tls-manager.8.gz && test -e /usr/share/man/man5/docker-tls-manager.toml.5.gz");
    m.ok("test -e /usr/share/bash-completion/completions/docker-tls-manager && test -e /usr/share/doc/docker-tls-manager/README.md");
    m.ok("systemctl enable --now docker-tls-manager");
    m.ok(&format!("{ENV} docker version >/dev/null"));
    m.ok("docker-tls-manager client bundle admin -o /root/admin.tar.gz --host localhost && mkdir -p /root/old && tar -xzf /root/admin.tar.gz -C /root/old");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");

    // 2. Restart with nothing to change: Docker is not restarted.
    let docker_pid = m.main_pid();
    m.ok("systemctl restart docker-tls-manager");
    assert_eq!(m.main_pid(), docker_pid);

    // 3. Upgrade while running: same CA, old bundle works, service restarted.
    let ca = m.ok("openssl x509 -in /etc/docker/tls/ca.pem -noout -fingerprint -sha256");
    let svc_pid = m.ok("systemctl show -p MainPID --value docker-tls-manager");
    // The authorization plugin too: restarted on the new binary, no request failing meanwhile.
    let plugin_pid = || {
        m.ok("systemctl show -p MainPID --value docker-tls-manager-authz.service")
            .trim()
            .to_string()
    };
    m.ok(&format!("{ENV} docker ps >/dev/null"));
    let authz_pid = plugin_pid();
    assert_ne!(authz_pid, "0", "the plugin is not running");
    m.ok(POLLER);
    std::thread::sleep(std::time::Duration::from_secs(1));
    m.ok("cd /root && apt-get install -y ./docker-tls-manager-upgrade.deb");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let p = poll(&m);
    assert_no_client_failed(&m, &p, 0);
    assert!(p.ok > 0, "the poller saw no answer");
    let now = plugin_pid();
    assert!(
        now != "0" && now != authz_pid,
        "the plugin was not restarted on upgrade ({authz_pid} -> {now})"
    );
    let exe = m.ok(&format!("readlink /proc/{now}/exe"));
    assert_eq!(
        exe.trim(),
        "/usr/bin/docker-tls-manager",
        "the plugin runs {exe}"
    );
    assert!(
        m.ok("dpkg-query -W -f '${Version}' docker-tls-manager")
            .contains("upgrade")
    );
    // (packaging) The units stay enabled across the upgrade (postinst's deb-systemd-helper).
    m.ok("systemctl is-enabled docker-tls-manager && test -L /etc/systemd/system/docker.service.wants/docker-tls-manager-prepare.service");
    assert_eq!(
        m.ok("systemctl is-active docker-tls-manager").trim(),
        "active"
    );
    assert_ne!(
        m.ok("systemctl show -p MainPID --value docker-tls-manager"),
        svc_pid,
        "not restarted on upgrade"
    );
    assert_eq!(
        m.ok("openssl x509 -in /etc/docker/tls/ca.pem -noout -fingerprint -sha256"),
        ca
    );
    let old = "DOCKER_HOST=tcp://localhost:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/root/old";
    m.ok(&format!("{old} docker version >/dev/null"));
    // Upgrade while stopped: stays stopped.
    m.ok("systemctl stop docker-tls-manager && cd /root && apt-get install -y --reinstall ./docker-tls-manager-upgrade.deb");
    assert_eq!(
        text(&m.sh("systemctl is-active docker-tls-manager").stdout).trim(),
        "inactive"
    );
    m.ok("systemctl start docker-tls-manager");

    // The service configured the authorization plugin (issue 11).
    m.ok("grep -q '\"docker-tls-manager\"' /etc/docker/daemon.json");
    // 4. Remove: Docker put back as it was (nothing would renew the certificates), the
    //    running container kept, the CA kept. Reinstall + enable: the old bundle works again.
    let c1 = m.ok("docker inspect -f '{{.State.Pid}}' c1");
    let o = m.sh("apt-get remove -y docker-tls-manager");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let said = text(&o.stdout) + &text(&o.stderr);
    assert!(said.contains("port closed"), "{said}");
    assert_eq!(
        text(&m.sh("systemctl is-active docker-tls-manager").stdout).trim(),
        "inactive"
    );
    m.ok("test ! -e /usr/bin/docker-tls-manager && test -s /var/lib/docker-tls-manager/ca-key.pem");
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket && ! grep -qs tlsverify /etc/docker/daemon.json");
    assert_eq!(
        m.sh("curl -s --max-time 5 http://127.0.0.1:2376/_ping")
            .status
            .code(),
        Some(7),
        "port 2376 still open after apt remove"
    );
    assert_eq!(m.ok("docker inspect -f '{{.State.Pid}}' c1"), c1);
    // The plugin taken out before the binary went: Docker answers at once (issue 11).
    let dj = text(&m.sh("cat /etc/docker/daemon.json").stdout);
    assert!(!dj.contains("\"docker-tls-manager\""), "{dj}");
    m.ok("test ! -e /etc/systemd/system/docker-tls-manager-authz.socket && timeout 5 docker ps >/dev/null");
    m.ok("systemctl restart docker && docker run --rm --network none dtm-busybox /bin/true");
    // (packaging) Removal disabled both units: no link left, and a reinstall enables and
    // starts nothing (the admin enables it again).
    m.ok("test ! -e /etc/systemd/system/multi-user.target.wants/docker-tls-manager.service && test ! -e /etc/systemd/system/docker.service.wants/docker-tls-manager-prepare.service");
    m.ok("cd /root && apt-get install -y ./docker-tls-manager-upgrade.deb");
    assert_eq!(
        text(&m.sh("systemctl is-enabled docker-tls-manager").stdout).trim(),
        "disabled"
    );
    m.ok("test ! -e /etc/systemd/system/docker-tcp.socket");
    m.ok("systemctl enable --now docker-tls-manager");
    m.ok(&format!("{old} docker version >/dev/null"));
    // 5. Remove (the service running), then purge: configuration gone, CA and certificates
    //    kept, Docker healthy. (`apt-get purge` of the installed package runs the same scripts:
    //    prerm remove, postrm remove, postrm purge.)
    m.ok("apt-get remove -y docker-tls-manager && dpkg --purge docker-tls-manager");
    m.ok("test ! -e /etc/docker-tls-manager/config.toml && test -s /var/lib/docker-tls-manager/ca-key.pem");
    // (packaging) deb-systemd-helper's record of the units is gone with the purge.
    m.ok("! ls /var/lib/systemd/deb-systemd-helper-enabled/ 2>/dev/null | grep -q docker-tls-manager");
    m.ok("systemctl restart docker && systemctl is-active docker && docker run --rm --network none dtm-busybox /bin/true");
    // Nothing docker.service reads points at a missing file.
    m.ok("for f in $(grep -o '\"/[^\"]*\\.pem\"' /etc/docker/daemon.json 2>/dev/null | tr -d '\"'); do test -s $f; done");

    // 6. (packaging) Removed where policy-rc.d forbids stopping services: the service and
    //    Docker are left alone (the service is not raced by a deconfigure), the port keeps
    //    mutual TLS, and the guard closes it at Docker's next start, the binary gone.
    m.ok("cd /root && apt-get install -y ./docker-tls-manager-upgrade.deb && systemctl enable --now docker-tls-manager");
    m.ok(&format!("{old} docker version >/dev/null"));
    m.ok("printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d");
    let o = m.sh("apt-get remove -y docker-tls-manager");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let said = text(&o.stdout) + &text(&o.stderr);
    assert!(said.contains("policy-rc.d forbids"), "{said}");
    m.ok("test ! -e /usr/bin/docker-tls-manager && systemctl is-active docker-tls-manager");
    m.ok(&format!("{old} docker version >/dev/null"));
    m.ok("test ! -e /etc/systemd/system/multi-user.target.wants/docker-tls-manager.service");
    m.ok("systemctl stop docker-tls-manager; systemctl restart docker && docker run --rm --network none dtm-busybox /bin/true");
    assert_eq!(
        m.sh("curl -s --max-time 5 http://127.0.0.1:2376/_ping")
            .status
            .code(),
        Some(7),
        "port 2376 served after Docker's restart without the binary"
    );
    m.ok("rm -f /usr/sbin/policy-rc.d && dpkg --purge docker-tls-manager");
}

#[test]
fn rpm_metadata_files_modes_and_scriptlets() {
    let rpm = one_file("target/generate-rpm", "rpm");
    let r = rpm.display();
    let info = host(&format!("rpm -qip {r}"));
    for want in [
        "Name        : docker-tls-manager",
        "License     : MIT",
        "Summary     : Docker's TCP API behind mutual TLS",
    ] {
        assert!(info.contains(want), "missing '{want}' in:\n{info}");
    }
    let files = host(&format!("rpm -qlvp {r}"));
    for (mode, path) in [
        ("-rwxr-xr-x", "/usr/bin/docker-tls-manager"),
        (
            "-rw-r--r--",
            "/usr/lib/systemd/system/docker-tls-manager.service",
        ),
        ("-rw-r--r--", "/etc/docker-tls-manager/config.toml"),
        ("-rw-r--r--", "/usr/share/man/man8/docker-tls-manager.8.gz"),
        (
            "-rw-r--r--",
            "/usr/share/man/man5/docker-tls-manager.toml.5.gz",
        ),
        (
            "-rw-r--r--",
            "/usr/share/bash-completion/completions/docker-tls-manager",
        ),
        (
            "-rw-r--r--",
            "/usr/share/licenses/docker-tls-manager/LICENSE",
        ),
        (
            "-rw-r--r--",
            "/usr/share/licenses/docker-tls-manager/THIRD-PARTY",
        ),
    ] {
        assert!(
            files
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{path} with {mode} missing:\n{files}"
        );
    }
    assert!(host(&format!("rpm -qcp {r}")).contains("/etc/docker-tls-manager/config.toml"));
    let scripts = host(&format!("rpm -qp --scripts {r}"));
    assert!(
        scripts.contains("postinstall scriptlet") && scripts.contains("daemon-reload"),
        "{scripts}"
    );
    assert!(
        !scripts.contains("enable --now") || scripts.contains("disable --now"),
        "{scripts}"
    );
    assert!(
        scripts.contains("preuninstall scriptlet")
            && scripts.contains("disable --now docker-tls-manager.service"),
        "{scripts}"
    );
    assert!(
        scripts.contains("postuninstall scriptlet")
            && scripts.contains("try-restart docker-tls-manager.service"),
        "{scripts}"
    );
    // The authorization plugin runs the new binary after an upgrade.
    assert!(
        scripts.contains("try-restart docker-tls-manager-authz.service"),
        "{scripts}"
    );
    assert!(host(&format!("rpm -qp --requires {r}")).contains("systemd"));
}

#[test]
fn deb_metadata() {
    let deb = one_file("target/debian", "deb");
    let d = deb.display();
    let info = host(&format!("dpkg-deb -I {d}"));
    assert!(
        info.contains("Depends:") && info.contains("systemd"),
        "{info}"
    );
    assert!(
        host(&format!(
            "dpkg-deb --ctrl-tarfile {d} | tar -xO ./conffiles"
        ))
        .contains("/etc/docker-tls-manager/config.toml")
    );
    let files = host(&format!("dpkg-deb -c {d}"));
    assert!(
        files
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./usr/bin/docker-tls-manager")),
        "{files}"
    );
    assert!(
        files.contains("./lib/systemd/system/docker-tls-manager.service"),
        "{files}"
    );
    for f in [
        "./usr/share/doc/docker-tls-manager/changelog.Debian.gz",
        "./usr/share/doc/docker-tls-manager/copyright",
        "./usr/share/doc/docker-tls-manager/THIRD-PARTY",
        "./usr/share/lintian/overrides/docker-tls-manager",
        "./usr/share/man/man8/docker-tls-manager.8.gz",
        "./usr/share/man/man5/docker-tls-manager.toml.5.gz",
    ] {
        assert!(
            files.lines().any(|l| l.ends_with(f)),
            "{f} missing:\n{files}"
        );
    }
    // The notices of the crates linked in, the C one (aws-lc) included.
    let third = host(&format!(
        "dpkg-deb --fsys-tarfile {d} | tar -xO ./usr/share/doc/docker-tls-manager/THIRD-PARTY"
    ));
    for krate in ["rustls ", "aws-lc-sys ", "zbus ", "tokio "] {
        assert!(
            third.lines().any(|l| l.starts_with(krate)),
            "THIRD-PARTY lists no {krate}"
        );
    }
    // The changelog's newest entry is the package's version (cargo-deb's default revision -1).
    let version = env!("CARGO_PKG_VERSION");
    let changelog = host(&format!(
        "dpkg-deb --fsys-tarfile {d} | tar -xO ./usr/share/doc/docker-tls-manager/changelog.Debian.gz | gzip -d"
    ));
    assert!(
        changelog.starts_with(&format!("docker-tls-manager ({version}-1) ")),
        "packaging/debian/changelog: the newest entry must be {version}-1:\n{changelog}"
    );
}

// ---- Linters (packaging/): a finding fails with the linter's own output. ----

/// lintian as Debian's archive runs it: no error and no warning (each remaining tag is
/// overridden, with its reason, in packaging/debian/lintian-overrides, shipped in the
/// package), and no override left that matches nothing.
#[test]
fn deb_lintian_clean() {
    let deb = one_file("target/debian", "deb");
    let o = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info"])
        .arg(&deb)
        .output()
        .expect("lintian (scripts/install-deps.sh installs it)");
    let out = text(&o.stdout);
    let findings: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.starts_with("E: ")
                || l.starts_with("W: ")
                || l.contains("unused-override")
                || l.contains("mismatched-override")
        })
        .collect();
    assert!(
        o.status.success() && findings.is_empty(),
        "lintian {}:\n{out}{}",
        deb.display(),
        text(&o.stderr)
    );
}

/// rpmlint with the settings of the distributions we target (packaging/rpm/rpmlint.toml) and
/// the findings that cannot be fixed with cargo-generate-rpm filtered, each with its reason
/// (packaging/rpm/docker-tls-manager.rpmlintrc; a filter that matches nothing is an error).
#[test]
fn rpm_rpmlint_clean() {
    let rpm = one_file("target/generate-rpm", "rpm");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/rpm");
    let o = Command::new("rpmlint")
        .arg("-c")
        .arg(dir.join("rpmlint.toml"))
        .arg("-r")
        .arg(dir.join("docker-tls-manager.rpmlintrc"))
        .arg(&rpm)
        .output()
        .expect("rpmlint (scripts/install-deps.sh installs it)");
    let out = text(&o.stdout);
    assert!(
        o.status.success() && out.contains(" 0 errors, 0 warnings"),
        "rpmlint {}:\n{out}{}",
        rpm.display(),
        text(&o.stderr)
    );
}

// ---- End of the linters. ----

#[test]
fn unit_hardening_exposure_at_most_2_5() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/docker-tls-manager.service");
    let out = host(&format!(
        "systemd-analyze security --offline=true --no-pager {} 2>&1",
        unit.display()
    ));
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{out}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(score <= 2.5, "exposure {score} > 2.5:\n{out}");
}
