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
        std::fs::create_dir_all(self.root.join("etc/docker-tls-manager")).unwrap();
        std::fs::write(self.root.join("etc/docker-tls-manager/config.toml"), config).unwrap();
        self.ok("systemctl daemon-reload");
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

pub fn fingerprint_on_disk(m: &Machine) -> String {
    m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -fingerprint -sha256")
}

/// Polls /_ping every 50 ms over mutual TLS in the background; `poll_result` collects counts.
pub const POLLER: &str = r#"
C=/var/lib/docker-tls-manager/clients/admin
( ok=0; fail=0; max=0; while [ ! -e /tmp/stop-poll ]; do
    t0=$(date +%s%N)
    if [ "$(curl -s --max-time 60 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://127.0.0.1:2376/_ping)" = OK ]; then ok=$((ok+1)); else fail=$((fail+1)); fi
    ms=$(( ($(date +%s%N) - t0) / 1000000 )); [ $ms -gt $max ] && max=$ms
    sleep 0.05
  done; echo "ok=$ok fail=$fail max_ms=$max" > /tmp/poll-result ) >/dev/null 2>&1 &
"#;

/// Stops the poller: (successful requests, failed requests, longest request in ms).
pub fn poll_result(m: &Machine) -> (u32, u32, u32) {
    let r = m.ok("touch /tmp/stop-poll; for i in $(seq 100); do [ -s /tmp/poll-result ] && break; sleep 0.2; done; cat /tmp/poll-result");
    let mut ok = 0;
    let mut fail = 0;
    let mut max = 0;
    for part in r.split_whitespace() {
        if let Some(v) = part.strip_prefix("ok=") {
            ok = v.parse().unwrap();
        }
        if let Some(v) = part.strip_prefix("fail=") {
            fail = v.parse().unwrap();
        }
        if let Some(v) = part.strip_prefix("max_ms=") {
            max = v.parse().unwrap();
        }
    }
    (ok, fail, max)
}
