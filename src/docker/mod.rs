//! Docker's side: the socket unit, the docker.service drop-in and daemon.json (`render`), the
//! planner (`plan`), the executor with rollback (`execute`), dockerd's Engine API (`daemon`)
//! and the mutual-TLS probe (`probe`). `observe` gathers what the planner needs.

pub mod daemon;
pub mod execute;
pub mod guard;
pub mod plan;
pub mod probe;
pub mod render;

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::config::Settings;
use crate::pki::{Layout, Slot};
use crate::systemd::Systemd;
use daemon::DockerDaemon;
use plan::{Observed, Owned};
use probe::{Prober, TlsProbe};
use render::{DOCKER_SERVICE, SOCKET_UNIT};

/// The probe that checks Docker with the manager's own client identity.
pub fn tls_probe(settings: &Settings) -> TlsProbe {
    let layout = Layout::new(&settings.paths);
    let (cert, key) = layout.cert_and_key(&Slot::Probe);
    let first = &settings.docker.listen[0];
    TlsProbe {
        addr: execute::probe_addr(&first.spec, first.port),
        ca: layout.ca_cert(),
        cert,
        key,
    }
}

/// The environment systemd gives a service: `Environment=`, then `EnvironmentFile=` (later
/// assignments win, as in systemd).
pub fn unit_environment(unit: &crate::systemd::UnitInfo) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut assign = |line: &str| {
        if let Some((k, v)) = line.split_once('=') {
            env.insert(k.trim().to_string(), v.to_string());
        }
    };
    for a in &unit.environment {
        assign(a);
    }
    for (path, _optional) in &unit.environment_files {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(v);
                assign(&format!("{}={v}", k.trim()));
            }
        }
    }
    env
}

/// Expands `$VAR` (a whole word: split on whitespace, dropped when empty) and `${VAR}` (inside
/// a word) the way systemd does for ExecStart=.
pub fn expand_argv(argv: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, arg) in argv.iter().enumerate() {
        if i > 0
            && let Some(name) = arg
                .strip_prefix('$')
                .filter(|n| !n.starts_with('{') && !n.is_empty())
        {
            if let Some(v) = env.get(name) {
                out.extend(v.split_whitespace().map(String::from));
            }
            continue;
        }
        let mut word = arg.clone();
        while let Some(start) = word.find("${") {
            let Some(len) = word[start..].find('}') else {
                break;
            };
            let name = word[start + 2..start + len].to_string();
            word.replace_range(
                start..start + len + 1,
                env.get(&name).map_or("", String::as_str),
            );
        }
        out.push(word);
    }
    out
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
    use std::os::unix::fs::MetadataExt;
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
mod unsafe_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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

/// Reads files, asks systemd and dockerd, and probes the TLS endpoint.
pub async fn observe<S: Systemd, D: DockerDaemon, P: Prober>(
    settings: &Settings,
    systemd: &S,
    daemon: &D,
    probe: &P,
) -> Result<Observed> {
    let layout = Layout::new(&settings.paths);
    let mut docker = systemd.unit(DOCKER_SERVICE).await?;
    // What dockerd really gets: `$DOCKER_OPTS` and the like expanded as systemd does.
    let env = unit_environment(&docker);
    docker.exec_start = docker
        .exec_start
        .iter()
        .map(|argv| expand_argv(argv, &env))
        .collect();
    let socket = systemd.unit(SOCKET_UNIT).await?;
    let daemon_json_path = plan::daemon_json_path(&docker, settings);
    let owned_path = plan::owned_path(settings);
    let owned: Owned = match std::fs::read(&owned_path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| {
            format!(
                "'{}' is corrupt; restore it from the backup directory or remove it",
                owned_path.display()
            )
        })?,
        Err(_) => Owned::default(),
    };
    let wanted = match crate::pki::inspect::read_cert_info(&layout.cert_and_key(&Slot::Server).0) {
        Some(i) => i.fingerprint,
        None => String::new(),
    };
    let running = docker.is_active();
    Ok(Observed {
        socket_file: std::fs::read_to_string(plan::socket_path(settings)).ok(),
        dropin_file: std::fs::read_to_string(plan::dropin_path(settings)).ok(),
        legacy_dropin_file: std::fs::read_to_string(plan::legacy_dropin_path(settings)).ok(),
        guard_unit_file: std::fs::read_to_string(plan::guard_unit_path(settings)).ok(),
        guard_binary_problem: unsafe_for_root(&guard_binary()),
        guard_binary: guard_binary(),
        daemon_json: std::fs::read_to_string(&daemon_json_path).ok(),
        daemon_json_path,
        daemon: if running {
            daemon.info().await.ok()
        } else {
            None
        },
        served: if running && socket.is_active() {
            probe.probe().await.ok()
        } else {
            None
        },
        docker,
        socket,
        wanted,
        owned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_opts_are_expanded_like_systemd_does() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("docker");
        std::fs::write(
            &file,
            "# comment\nDOCKER_OPTS=\"--live-restore --dns 192.0.2.53\"\n",
        )
        .unwrap();
        let unit = crate::systemd::UnitInfo {
            environment: vec!["X=1".into()],
            environment_files: vec![
                (file.display().to_string(), true),
                ("/nonexistent".into(), true),
            ],
            ..Default::default()
        };
        let env = unit_environment(&unit);
        let argv: Vec<String> = [
            "/usr/sbin/dockerd",
            "-H",
            "fd://",
            "$DOCKER_OPTS",
            "$UNSET",
            "--x=${X}y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            expand_argv(&argv, &env),
            [
                "/usr/sbin/dockerd",
                "-H",
                "fd://",
                "--live-restore",
                "--dns",
                "192.0.2.53",
                "--x=1y"
            ]
        );
    }
}
