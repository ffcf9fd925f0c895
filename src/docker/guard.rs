//! The guard: the check systemd runs before `docker-tcp.socket` listens (its `ExecStartPre=`)
//! and before every start of dockerd (the oneshot `docker-tls-manager-guard.service`, which
//! our drop-in makes docker.service want and wait for). It answers one question without our
//! configuration or the state lock: will the dockerd that receives the TCP socket serve it with
//! mutual TLS, verifying clients against our CA? When the answer is no (daemon.json rewritten
//! without our keys or moved by a new `--config-file`, a crash between two writes, our binary
//! removed), the socket is not served: the socket unit fails to start, or the guard unit's
//! shell stops it before dockerd starts. Docker itself always starts; only the port stays
//! closed. Missing certificate files are not the guard's business: dockerd refuses to start
//! with TLS settings it cannot load (it never falls back to plain), and the repair unit
//! ordered before docker.service restores them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use super::render::HEADER_FIRST_LINE;

/// Why the TCP socket must not be served, in words for the journal.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsafe(pub String);

/// Checks that `daemon_json` (the file dockerd reads) turns on client verification against
/// `ca`, with a certificate and key named, and that each of `require` (our drop-in and guard
/// unit, for the socket) is one of our files (not removed, not masked).
pub fn check(daemon_json: &Path, ca: &Path, require: &[PathBuf]) -> Result<(), Unsafe> {
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
    let shown = |k: &str| map.get(k).map_or("nothing".to_string(), |v| v.to_string());
    if map.get("tlsverify") != Some(&Value::Bool(true)) {
        return Err(Unsafe(format!(
            "'{}' does not set \"tlsverify\": true (found {}), so dockerd would serve the TCP socket \
             without verifying clients",
            daemon_json.display(),
            shown("tlsverify")
        )));
    }
    if map.get("tlscacert").and_then(Value::as_str) != Some(&*ca.to_string_lossy()) {
        return Err(Unsafe(format!(
            "'{}' has \"tlscacert\": {}, not our CA '{}', so dockerd would let in clients we never \
             issued",
            daemon_json.display(),
            shown("tlscacert"),
            ca.display()
        )));
    }
    for key in ["tlscert", "tlskey"] {
        if map
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(|s| s.is_empty())
        {
            return Err(Unsafe(format!(
                "'{}' has no usable \"{key}\" (found {})",
                daemon_json.display(),
                shown(key)
            )));
        }
    }
    for file in require {
        let ours = std::fs::symlink_metadata(file).is_ok_and(|m| m.is_file())
            && std::fs::read_to_string(file).is_ok_and(|t| t.starts_with(HEADER_FIRST_LINE));
        if !ours {
            return Err(Unsafe(format!(
                "'{}' is missing, masked or not ours, so a later change to '{}' would go unchecked \
                 when dockerd restarts",
                file.display(),
                daemon_json.display()
            )));
        }
    }
    Ok(())
}

/// The daemon.json docker.service's ExecStart really gives dockerd now: `--config-file` in
/// ExecStart (with `$DOCKER_OPTS` and the like expanded as systemd does), else `default`.
/// Asked of systemd over D-Bus; only from the guard unit, which runs after the bus is up.
pub async fn effective_daemon_json(default: &Path) -> Result<PathBuf> {
    use crate::systemd::Systemd;
    let sd = crate::systemd::Dbus::connect().await?;
    let docker = super::dockerd::expanded(
        sd.unit(super::render::DOCKER_SERVICE)
            .await
            .context("cannot read docker.service's ExecStart from systemd")?,
    );
    Ok(docker
        .exec_start
        .first()
        .and_then(|argv| super::dockerd::parse_dockerd_flags(argv).config_file)
        .unwrap_or_else(|| default.to_path_buf()))
}

/// The path the units call the guard by: this program's own, as installed.
pub fn guard_binary() -> std::path::PathBuf {
    match std::env::current_exe() {
        // Replaced under us (a package upgrade): the new file is at the same path.
        Ok(p) => match p.to_string_lossy().strip_suffix(" (deleted)") {
            Some(s) => s.into(),
            None => p,
        },
        Err(_) => "/usr/bin/docker-tls-manager".into(),
    }
}

/// Why systemd must not run `path` as root: it, or a directory above it, is not root's, or
/// others may write it (whoever can replace the file would run code as root).
pub fn unsafe_for_root(path: &std::path::Path) -> Option<String> {
    let mut p = Some(path);
    while let Some(cur) = p {
        match std::fs::metadata(cur) {
            Ok(m) if m.uid() != 0 => {
                return Some(format!(
                    "'{}' belongs to uid {}, not root",
                    cur.display(),
                    m.uid()
                ));
            }
            Ok(m) if m.mode() & 0o022 != 0 => {
                return Some(format!(
                    "'{}' is writable by group or others (mode {:o})",
                    cur.display(),
                    m.mode() & 0o7777
                ));
            }
            Ok(_) => {}
            Err(e) => return Some(format!("'{}' cannot be read: {e}", cur.display())),
        }
        p = cur.parent();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const CA: &str = "/etc/docker/tls/ca.pem";

    fn tls_json() -> String {
        format!(
            r#"{{"debug": true, "tlsverify": true, "tlscacert": "{CA}", "tlscert": "/c/cert.pem", "tlskey": "/c/key.pem"}}"#
        )
    }

    fn setup(json: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let dj = d.path().join("daemon.json");
        std::fs::write(&dj, json).unwrap();
        (d, dj)
    }

    #[test]
    fn mutual_tls_with_our_ca_passes() {
        let (_d, dj) = setup(&tls_json());
        assert_eq!(check(&dj, Path::new(CA), &[]), Ok(()));
    }

    #[test]
    fn rewritten_without_tls_keys_fails() {
        let (_d, dj) = setup(r#"{"log-driver": "journald"}"#);
        let e = check(&dj, Path::new(CA), &[]).unwrap_err().0;
        assert!(e.contains("tlsverify"), "{e}");
    }

    #[test]
    fn missing_unparsable_false_string_and_bom_fail() {
        let d = tempfile::tempdir().unwrap();
        let dj = d.path().join("daemon.json");
        let ca = Path::new(CA);
        assert!(check(&dj, ca, &[]).unwrap_err().0.contains("cannot read"));
        for bad in [
            "{not json".to_string(),
            tls_json().replace("\"tlsverify\": true", "\"tlsverify\": false"),
            tls_json().replace("\"tlsverify\": true", "\"tlsverify\": \"true\""),
            format!("\u{feff}{}", tls_json()),
            tls_json().replace("\"tlskey\": \"/c/key.pem\"", "\"tlskey\": \"\""),
        ] {
            std::fs::write(&dj, &bad).unwrap();
            assert!(check(&dj, ca, &[]).is_err(), "passed: {bad}");
        }
    }

    /// Any CA but ours lets in clients we never issued: the system bundle, say.
    #[test]
    fn another_ca_fails() {
        let (_d, dj) = setup(&tls_json().replace(CA, "/etc/ssl/certs/ca-certificates.crt"));
        let e = check(&dj, Path::new(CA), &[]).unwrap_err().0;
        assert!(e.contains("not our CA"), "{e}");
    }

    /// Duplicate keys: serde_json keeps the last, as Go's encoding/json does (checked against
    /// dockerd 20.10 in both orders).
    #[test]
    fn duplicate_keys_are_read_as_dockerd_reads_them() {
        let (_d, dj) = setup(&tls_json().replace("{", "{\"tlsverify\": false, "));
        assert_eq!(check(&dj, Path::new(CA), &[]), Ok(()));
        let (_d, dj) = setup(&tls_json().replace("}", ", \"tlsverify\": false}"));
        assert!(check(&dj, Path::new(CA), &[]).is_err());
    }

    #[test]
    fn the_socket_also_needs_our_dropin_and_guard_unit() {
        let (d, dj) = setup(&tls_json());
        let unit = d.path().join("docker-tls-manager-guard.service");
        let ca = Path::new(CA);
        assert!(
            check(&dj, ca, std::slice::from_ref(&unit))
                .unwrap_err()
                .0
                .contains("missing")
        );
        std::fs::write(&unit, "[Unit]\n").unwrap();
        assert!(
            check(&dj, ca, std::slice::from_ref(&unit)).is_err(),
            "not ours"
        );
        std::fs::remove_file(&unit).unwrap();
        std::os::unix::fs::symlink("/dev/null", &unit).unwrap();
        assert!(
            check(&dj, ca, std::slice::from_ref(&unit)).is_err(),
            "masked"
        );
        std::fs::remove_file(&unit).unwrap();
        std::fs::write(&unit, format!("{HEADER_FIRST_LINE}: ...\n")).unwrap();
        assert_eq!(check(&dj, ca, &[unit]), Ok(()));
    }

    #[test]
    fn binaries_others_could_replace_are_refused() {
        assert_eq!(unsafe_for_root(std::path::Path::new("/bin/sh")), None);
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("docker-tls-manager");
        std::fs::write(&bin, "x").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(unsafe_for_root(&bin).unwrap().contains("writable"));
        // /tmp itself is writable by all.
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(unsafe_for_root(&bin).is_some());
        std::os::unix::fs::chown(&bin, Some(1000), None).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = unsafe_for_root(&bin).unwrap();
        assert!(e.contains("uid 1000") || e.contains("writable"), "{e}");
    }
}
