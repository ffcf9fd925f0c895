//! Helpers for the integration tests: a sandbox with its own config, and the binary under test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Sandbox {
    /// A PKI-only sandbox (`[docker] manage = false`) with `extra` TOML appended.
    pub fn new(extra: &str) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[paths]\ncert_dir = \"{0}/certs\"\nstate_dir = \"{0}/state\"\nsystemd_dir = \"{0}/systemd\"\ndaemon_json = \"{0}/daemon.json\"\n[docker]\nmanage = false\n{extra}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        Sandbox { dir, config }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_docker-tls-manager"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path());
        cmd.output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} failed: {}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a tool that must be installed (openssl, curl, docker): fails clearly if it is not.
pub fn tool(name: &str) -> Command {
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .unwrap()
            .status
            .success(),
        "'{name}' is required by this test and is not installed (.ci/run installs it)"
    );
    Command::new(name)
}

/// A snapshot of every file under `dir`: path, mode and content.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
                out.push((p, m.permissions().mode(), vec![]));
            } else {
                out.push((
                    p.clone(),
                    m.permissions().mode(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}
pub mod lan;
pub mod machine;
pub mod pebble;
