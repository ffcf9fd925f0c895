//! The guard: the check systemd runs before dockerd starts (`ExecStartPre=` in our drop-in) and
//! before `docker-tcp.socket` listens (its own `ExecStartPre=`). It answers one question
//! without reading our configuration or taking the state lock: will the dockerd that receives
//! the TCP socket serve it with mutual TLS? When the answer is no (daemon.json rewritten without
//! our keys, a certificate file gone, a crash between two writes, our binary removed), the
//! socket is not served: the socket unit fails to start, or the drop-in's shell stops it before
//! dockerd starts. Docker itself always starts; only port 2376 stays closed.

use std::path::Path;

use serde_json::{Map, Value};

/// Why the TCP socket must not be served, in words for the journal.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsafe(pub String);

/// Checks that `daemon_json` (the file dockerd reads) turns on mutual TLS with files that
/// exist, and, when given, that docker.service's drop-in carries this guard (so that a later
/// rewrite of daemon.json is caught at the next start of dockerd too).
pub fn check(daemon_json: &Path, dropin: Option<&Path>) -> Result<(), Unsafe> {
    let text = std::fs::read_to_string(daemon_json).map_err(|e| {
        Unsafe(format!(
            "cannot read '{}' ({e}), so dockerd would serve the TCP socket without TLS",
            daemon_json.display()
        ))
    })?;
    let map: Map<String, Value> = serde_json::from_str(&text).map_err(|e| {
        Unsafe(format!(
            "'{}' is not a JSON object ({e})",
            daemon_json.display()
        ))
    })?;
    if map.get("tlsverify") != Some(&Value::Bool(true)) {
        return Err(Unsafe(format!(
            "'{}' does not set \"tlsverify\": true (found {}), so dockerd would serve the TCP socket \
             without verifying clients",
            daemon_json.display(),
            map.get("tlsverify")
                .map_or("nothing".to_string(), |v| v.to_string())
        )));
    }
    for key in ["tlscacert", "tlscert", "tlskey"] {
        let file = match map.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Path::new(s),
            other => {
                return Err(Unsafe(format!(
                    "'{}' has no usable \"{key}\" (found {})",
                    daemon_json.display(),
                    other.map_or("nothing".to_string(), |v| v.to_string())
                )));
            }
        };
        match std::fs::metadata(file) {
            Ok(m) if m.is_file() && m.len() > 0 => {}
            Ok(_) => {
                return Err(Unsafe(format!(
                    "\"{key}\" names '{}', which is empty or not a file",
                    file.display()
                )));
            }
            Err(e) => {
                return Err(Unsafe(format!("\"{key}\" names '{}': {e}", file.display())));
            }
        }
    }
    if let Some(dropin) = dropin {
        let has_guard = std::fs::read_to_string(dropin).is_ok_and(|t| {
            t.lines()
                .any(|l| l.starts_with("ExecStartPre=") && l.contains(" guard "))
        });
        if !has_guard {
            return Err(Unsafe(format!(
                "docker.service's drop-in '{}' is missing or lacks the guard, so a later change to '{}' \
                 would go unchecked when dockerd restarts",
                dropin.display(),
                daemon_json.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let dj = d.path().join("daemon.json");
        (d, dj)
    }

    fn tls_json(dir: &Path) -> String {
        format!(
            r#"{{"debug": true, "tlsverify": true, "tlscacert": "{0}/ca.pem", "tlscert": "{0}/cert.pem", "tlskey": "{0}/key.pem"}}"#,
            dir.display()
        )
    }

    #[test]
    fn mutual_tls_with_files_passes() {
        let (d, dj) = setup();
        std::fs::write(&dj, tls_json(d.path())).unwrap();
        assert_eq!(check(&dj, None), Ok(()));
    }

    #[test]
    fn rewritten_without_tls_keys_fails() {
        let (_d, dj) = setup();
        std::fs::write(&dj, r#"{"log-driver": "journald"}"#).unwrap();
        let e = check(&dj, None).unwrap_err().0;
        assert!(e.contains("tlsverify"), "{e}");
    }

    #[test]
    fn missing_unparsable_false_and_missing_files_fail() {
        let (d, dj) = setup();
        assert!(check(&dj, None).unwrap_err().0.contains("cannot read"));
        std::fs::write(&dj, "{not json").unwrap();
        assert!(
            check(&dj, None)
                .unwrap_err()
                .0
                .contains("not a JSON object")
        );
        std::fs::write(
            &dj,
            tls_json(d.path()).replace("\"tlsverify\": true", "\"tlsverify\": false"),
        )
        .unwrap();
        assert!(check(&dj, None).unwrap_err().0.contains("false"));
        std::fs::write(&dj, tls_json(d.path())).unwrap();
        std::fs::remove_file(d.path().join("key.pem")).unwrap();
        let e = check(&dj, None).unwrap_err().0;
        assert!(e.contains("tlskey") && e.contains("key.pem"), "{e}");
        std::fs::write(d.path().join("key.pem"), "").unwrap();
        assert!(check(&dj, None).unwrap_err().0.contains("empty"));
    }

    #[test]
    fn the_socket_also_needs_the_dropin_with_the_guard() {
        let (d, dj) = setup();
        std::fs::write(&dj, tls_json(d.path())).unwrap();
        let dropin = d.path().join("docker-tls-manager.conf");
        assert!(check(&dj, Some(&dropin)).unwrap_err().0.contains("drop-in"));
        std::fs::write(&dropin, "[Unit]\nWants=docker-tcp.socket\n").unwrap();
        assert!(check(&dj, Some(&dropin)).is_err());
        std::fs::write(
            &dropin,
            "[Service]\nExecStartPre=/bin/sh -c '/usr/bin/docker-tls-manager guard --daemon-json /x || exit 0'\n",
        )
        .unwrap();
        assert_eq!(check(&dj, Some(&dropin)), Ok(()));
    }
}
