//! `dockerd --validate` (Docker 23+): asks the installed dockerd, with the flags docker.service
//! gives it, whether it would start with a daemon.json, without starting it. Behind
//! [`Validator`] so the executor can be tested; dockerd 20.10 has no `--validate`
//! ([`Verdict::Unavailable`]), and then a bad file is only found by starting dockerd (verified,
//! rolled back).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What dockerd said about a daemon.json.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// dockerd's own message.
    Refused(String),
    /// This dockerd has no `--validate`; its `--version`.
    Unavailable(String),
}

pub trait Validator: Send + Sync {
    /// dockerd's verdict on `daemon_json` (the file's text).
    fn validate(&self, daemon_json: &str) -> Result<Verdict>;
}

/// The dockerd of docker.service's ExecStart (expanded as systemd does), run with the same
/// flags (a directive given both as a flag and in the file is refused, as at a real start),
/// its `--config-file` replaced by a private copy of the text to check.
pub struct Dockerd {
    pub argv: Vec<String>,
}

/// How long `dockerd --validate` may take (it answers in well under a second).
const TIMEOUT: Duration = Duration::from_secs(30);

impl Dockerd {
    /// The dockerd docker.service runs (its ExecStart, expanded).
    pub fn for_unit(docker: &crate::systemd::UnitInfo) -> Dockerd {
        Dockerd {
            argv: docker.exec_start.first().cloned().unwrap_or_default(),
        }
    }

    /// The command line for checking `file`: ExecStart's flags without its `--config-file`.
    pub fn command_line(&self, file: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut args = self.argv.iter();
        if let Some(program) = args.next() {
            out.push(program.clone());
        }
        while let Some(a) = args.next() {
            if a == "--config-file" {
                args.next();
                continue;
            }
            if a.starts_with("--config-file=") {
                continue;
            }
            out.push(a.clone());
        }
        out.extend(["--validate", "--config-file", file].map(String::from));
        out
    }
}

impl Validator for Dockerd {
    fn validate(&self, daemon_json: &str) -> Result<Verdict> {
        if self.argv.is_empty() {
            bail!("docker.service has no ExecStart to take dockerd from");
        }
        // Not next to daemon.json: the service watches that directory.
        let mut tmp = tempfile::Builder::new()
            .prefix("docker-tls-manager-validate-")
            .suffix(".json")
            .tempfile()
            .context("cannot create a temp file for `dockerd --validate`")?;
        tmp.write_all(daemon_json.as_bytes())
            .and_then(|()| tmp.flush())
            .context("cannot write the temp file for `dockerd --validate`")?;
        let argv = self.command_line(&tmp.path().display().to_string());
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run '{}'", argv.join(" ")))?;
        let deadline = Instant::now() + TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "'{}' did not answer within {}s",
                    argv.join(" "),
                    TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Killed (a sandbox's system-call filter, the OOM killer) or silent: no verdict on the
        // file, which must not be blamed for it.
        if out.status.code().is_none() || (!out.status.success() && said.trim().is_empty()) {
            bail!(
                "'{}' ended with {} and said nothing",
                argv.join(" "),
                out.status
            );
        }
        Ok(verdict(out.status.success(), &said, || {
            Command::new(&argv[0])
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        }))
    }
}

/// Reads dockerd's answer; the temp file's name is taken out of its message.
fn verdict(success: bool, said: &str, version: impl FnOnce() -> String) -> Verdict {
    if success {
        return Verdict::Accepted;
    }
    if said.contains("unknown flag: --validate") {
        return Verdict::Unavailable(version());
    }
    let msg = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // "unable to configure the Docker daemon with file /tmp/docker-tls-manager-validate-X.json: ..."
    let msg = match msg.split_once(" with file ") {
        Some((head, rest)) if rest.contains("docker-tls-manager-validate-") => {
            match rest.split_once(": ") {
                Some((_, tail)) => format!("{head}: {tail}"),
                None => msg.clone(),
            }
        }
        _ => msg,
    };
    Verdict::Refused(msg)
}

/// What the executor checks before it restarts or reloads Docker: the daemon.json dockerd
/// reads now (a rollback puts it back) and each one the plan writes.
pub struct Check<'a> {
    pub validator: &'a dyn Validator,
    pub path: PathBuf,
    pub current: Option<String>,
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// Refuses any text containing `refuse_if` (with `message`), or says `--validate` is
    /// unavailable; records what it was asked.
    #[derive(Default)]
    pub struct FakeValidator {
        pub refuse_if: Option<(String, String)>,
        pub unavailable: bool,
        pub asked: Mutex<Vec<String>>,
    }

    impl Validator for FakeValidator {
        fn validate(&self, daemon_json: &str) -> Result<Verdict> {
            self.asked.lock().unwrap().push(daemon_json.to_string());
            if self.unavailable {
                return Ok(Verdict::Unavailable("Docker version 20.10.24".into()));
            }
            Ok(match &self.refuse_if {
                Some((needle, msg)) if daemon_json.contains(needle.as_str()) => {
                    Verdict::Refused(msg.clone())
                }
                _ => Verdict::Accepted,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_keeps_execstart_flags_and_replaces_config_file() {
        let d = Dockerd {
            argv: [
                "/usr/bin/dockerd",
                "-H",
                "fd://",
                "--config-file",
                "/etc/docker/other.json",
                "--containerd=/run/containerd/containerd.sock",
                "--config-file=/x.json",
            ]
            .map(String::from)
            .to_vec(),
        };
        assert_eq!(
            d.command_line("/tmp/t.json"),
            [
                "/usr/bin/dockerd",
                "-H",
                "fd://",
                "--containerd=/run/containerd/containerd.sock",
                "--validate",
                "--config-file",
                "/tmp/t.json"
            ]
        );
    }

    #[test]
    fn verdicts_from_dockerd_output() {
        let v = || "Docker version 20.10.24".to_string();
        assert_eq!(verdict(true, "configuration OK\n", v), Verdict::Accepted);
        assert_eq!(
            verdict(
                false,
                "Status: unknown flag: --validate\nSee 'dockerd --help'., Code: 125\n",
                v
            ),
            Verdict::Unavailable("Docker version 20.10.24".into())
        );
        assert_eq!(
            verdict(
                false,
                "unable to configure the Docker daemon with file /tmp/docker-tls-manager-validate-Ab1.json: \
                 the following directives don't match any configuration option: bogus\n",
                v
            ),
            Verdict::Refused(
                "unable to configure the Docker daemon: the following directives don't match any \
                 configuration option: bogus"
                    .into()
            )
        );
        assert_eq!(
            verdict(
                false,
                "invalid TLS configuration: Could not load X509 key pair\n",
                v
            ),
            Verdict::Refused("invalid TLS configuration: Could not load X509 key pair".into())
        );
    }
}
