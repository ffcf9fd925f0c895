//! A throwaway systemd + dockerd machine (tests/machine/machine.sh) with the binary under test
//! copied in as /usr/local/bin/docker-tls-manager. Powered off when dropped.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::text;

pub struct Machine {
    pub name: String,
    pub root: PathBuf,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/machine/machine.sh")
}

impl Machine {
    /// Boots a machine. Needs root and systemd-nspawn: fails (never skips) without them.
    pub fn up(tag: &str) -> Machine {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the systemd-machine tests need root (run `bash tests/run.sh` as root; .ci/run does)"
        );
        let name = format!("dtm-{tag}-{}", std::process::id());
        let o = Command::new("bash")
            .arg(script())
            .args(["up", &name])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "machine {name} did not boot:\n{}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let root = PathBuf::from(
            text(
                &Command::new("bash")
                    .arg(script())
                    .args(["root", &name])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .trim(),
        );
        let dest = root.join("usr/local/bin/docker-tls-manager");
        std::fs::copy(env!("CARGO_BIN_EXE_docker-tls-manager"), &dest).unwrap();
        let poller = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/poller.py");
        std::fs::copy(poller, root.join("usr/local/bin/dtm-poller")).unwrap();
        Machine { name, root }
    }

    /// Runs a bash script inside the machine.
    pub fn sh(&self, script_text: &str) -> Output {
        Command::new("bash")
            .arg(script())
            .args(["exec", &self.name, "bash", "-c", script_text])
            .env("DTM_MACHINE_QUIET", "1")
            .output()
            .unwrap()
    }

    /// Runs a script that must succeed; returns its stdout.
    pub fn ok(&self, script_text: &str) -> String {
        let o = self.sh(script_text);
        assert!(
            o.status.success(),
            "in {}: `{script_text}` failed ({}):\n{}\n{}",
            self.name,
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// Installs the service as the package will: binary in /usr/bin, the unit from systemd/,
    /// and `config` as /etc/docker-tls-manager/config.toml. Not started.
    pub fn install_service(&self, config: &str) {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(
            env!("CARGO_BIN_EXE_docker-tls-manager"),
            self.root.join("usr/bin/docker-tls-manager"),
        )
        .unwrap();
        for unit in [
            "docker-tls-manager.service",
            "docker-tls-manager-prepare.service",
        ] {
            std::fs::copy(
                manifest.join("systemd").join(unit),
                self.root.join("etc/systemd/system").join(unit),
            )
            .unwrap();
        }
        // One binary, as on a real host: commands and the service write the same guard path.
        let _ = std::fs::remove_file(self.root.join("usr/local/bin/docker-tls-manager"));
        std::fs::create_dir_all(self.root.join("etc/docker-tls-manager")).unwrap();
        std::fs::write(self.root.join("etc/docker-tls-manager/config.toml"), config).unwrap();
        self.ok("systemctl daemon-reload");
    }

    /// Pulls the plug: SIGKILL to the machine's systemd-nspawn and its systemd (no shutdown),
    /// the overlay unmounted, its upper dir kept (`machine.sh powerfail`). Note: the upper dir
    /// lives on the host's file system, so writes not yet fsynced are NOT lost here; durability
    /// rests on the atomic-write helper's fsyncs, this is "a crash, then a cold boot".
    pub fn power_fail(&self) {
        let o = Command::new("bash")
            .arg(script())
            .args(["powerfail", &self.name])
            .env("DTM_MACHINE_QUIET", "1")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "powerfail {} failed:\n{}\n{}",
            self.name,
            text(&o.stdout),
            text(&o.stderr)
        );
    }

    /// Boots the machine again on the same upper dir (`machine.sh boot`), with nothing of ours
    /// run by hand; returns the script's output, Err when systemd or dockerd did not come up
    /// (the machine is then left running, if it runs, for a look).
    pub fn boot(&self) -> Result<String, String> {
        let o = Command::new("bash")
            .arg(script())
            .args(["boot", &self.name])
            .env("DTM_MACHINE_QUIET", "1")
            // systemd is up in ~2 s, dockerd a few s later: 30 s means it will not come
            .env("DTM_MACHINE_TIMEOUT", "30")
            .output()
            .unwrap();
        if o.status.success() {
            Ok(text(&o.stdout))
        } else {
            Err(format!("{}\n{}", text(&o.stdout), text(&o.stderr)))
        }
    }

    /// `power_fail` then `boot`.
    pub fn power_fail_and_boot(&self) -> Result<String, String> {
        self.power_fail();
        self.boot()
    }

    /// Waits until `script` succeeds in the machine; returns how long it took. On timeout,
    /// fails with the tail of the machine's journal.
    pub fn wait_for(&self, script: &str, timeout: std::time::Duration) -> std::time::Duration {
        let t0 = std::time::Instant::now();
        loop {
            if self.sh(script).status.success() {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "`{script}` did not succeed within {timeout:?}\n{}",
                text(&self.sh("journalctl --no-pager | tail -40").stdout)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn main_pid(&self) -> String {
        self.ok("systemctl show -p MainPID --value docker.service")
            .trim()
            .to_string()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.name])
            .env("DTM_MACHINE_QUIET", "1")
            .output();
    }
}

pub const ENV: &str = "export DOCKER_HOST=tcp://127.0.0.1:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/var/lib/docker-tls-manager/clients/admin;";
pub const CLIENT: &str = "C=/var/lib/docker-tls-manager/clients/admin;";

pub fn fingerprint_served(m: &Machine) -> String {
    m.ok(&format!(
        "{CLIENT} openssl s_client -connect 127.0.0.1:2376 -cert $C/cert.pem -key $C/key.pem -CAfile $C/ca.pem </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    ))
}

/// Succeeds when Docker serves, over mutual TLS, the server certificate on disk.
pub const SERVED_IS_DISK: &str = r#"C=/var/lib/docker-tls-manager/clients/admin
s=$(openssl s_client -connect 127.0.0.1:2376 -cert $C/cert.pem -key $C/key.pem -CAfile $C/ca.pem </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256)
d=$(openssl x509 -in /etc/docker/tls/server-cert.pem -noout -fingerprint -sha256 2>/dev/null)
[ -n "$s" ] && [ "$s" = "$d" ]"#;

pub fn fingerprint_on_disk(m: &Machine) -> String {
    m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -fingerprint -sha256")
}

/// Polls /_ping every 50 ms over mutual TLS in the background; `poll_result` collects counts.
/// Starts bench/poller.py in the machine: GET /_ping over mutual TLS every 50 ms, a new
/// connection each time (Python's ssl module: independent of the code under test).
pub const POLLER: &str = "rm -f /tmp/stop-poll /tmp/poll-result; (python3 /usr/local/bin/dtm-poller /var/lib/docker-tls-manager/clients/admin 127.0.0.1:2376 /tmp/stop-poll > /tmp/poll-result 2>&1 &)";

/// What the poller saw.
pub struct Poll {
    pub ok: u32,
    pub failed: u32,
    /// Connections closed without an answer, or reset, after the old dockerd accepted them:
    /// dockerd before 24 drops the requests it has already accepted when it shuts down
    /// (moby#45314, fixed in 24). Refusals and timeouts are not counted here.
    pub empty_answers: u32,
    pub longest_gap_ms: u32,
}

/// Stops the poller and reads what it saw.
pub fn poll(m: &Machine) -> Poll {
    let r = m.ok("touch /tmp/stop-poll; for i in $(seq 100); do grep -q requests= /tmp/poll-result 2>/dev/null && break; sleep 0.2; done; cat /tmp/poll-result");
    let field = |name: &str| -> u32 {
        r.split_whitespace()
            .find_map(|p| p.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in poller output: {r}"))
            .parse()
            .unwrap()
    };
    let count = |kind: &str| -> u32 {
        r.split_once(&format!("'{kind}': "))
            .and_then(|(_, rest)| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    // Both are a connection the old dockerd had accepted and then dropped as it exited: closed
    // without an answer, or reset during the TLS handshake (measured on 20.10, bench/multiclient.sh).
    let empty_answers = count("bad answer") + count("ConnectionResetError");
    if field("failed=") > 0 {
        eprintln!("poller: {r}");
    }
    Poll {
        ok: field("ok="),
        failed: field("failed="),
        empty_answers,
        longest_gap_ms: field("longest_gap_ms="),
    }
}

/// No client refused or failed during `restarts` restarts of Docker. On dockerd before 24, a
/// request the old dockerd had already accepted when it was stopped may get no answer
/// (moby#45314): at most one per restart for this one poller, and never a refusal.
/// Also: no client stalled 20 s or more.
pub fn assert_no_client_failed(m: &Machine, p: &Poll, restarts: u32) {
    eprintln!(
        "poller: {} ok, {} failed, longest gap {} ms",
        p.ok, p.failed, p.longest_gap_ms
    );
    assert!(
        p.longest_gap_ms < 20_000,
        "clients stalled {} ms",
        p.longest_gap_ms
    );
    assert_eq!(
        p.failed - p.empty_answers,
        0,
        "{} requests refused or failed ({} ok)",
        p.failed - p.empty_answers,
        p.ok
    );
    if p.empty_answers > 0 {
        let v = m.ok("dockerd --version");
        let major: u32 = v
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.split('.').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(99);
        assert!(
            major < 24 && p.empty_answers <= restarts,
            "{} requests got no answer across {restarts} restarts with {}",
            p.empty_answers,
            v.trim()
        );
        eprintln!(
            "{} request(s) accepted by the old dockerd got no answer when it stopped ({}; moby#45314)",
            p.empty_answers,
            v.trim()
        );
    }
}
