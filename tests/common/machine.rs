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
        let o = Command::new("bash").arg(script()).args(["up", &name]).output().unwrap();
        assert!(o.status.success(), "machine {name} did not boot:\n{}\n{}", text(&o.stdout), text(&o.stderr));
        let root = PathBuf::from(
            text(&Command::new("bash").arg(script()).args(["root", &name]).output().unwrap().stdout).trim(),
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

    pub fn main_pid(&self) -> String {
        self.ok("systemctl show -p MainPID --value docker.service").trim().to_string()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).args(["down", &self.name]).env("DTM_MACHINE_QUIET", "1").output();
    }
}
