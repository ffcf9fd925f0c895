//! The one map of every file the manager owns or reads: built once from `[paths]` when the
//! configuration is validated (`Settings::paths`) and passed down. Nothing else spells a file
//! name. The watcher's list ([`Layout::watch_dirs`], [`Layout::classify`]), the sweep of
//! interrupted writes and the rollback snapshot ([`Layout::docker_reads`]) derive from it.
//!
//! | where | file | what |
//! |---|---|---|
//! | cert_dir | `ca.pem`, `server-cert.pem`, `server-key.pem` | what dockerd reads |
//! | state_dir | `ca-key.pem` | the CA key (never beside what Docker reads) |
//! | state_dir | `ca-subject.json`, `check-memo.json` | the CA's subject for life; memo of costly checks |
//! | state_dir | `rollover.json`, `ca-previous.pem`, `ca-previous-key.pem`, `ca-cross.pem` | a CA key rollover: its phase; the previous CA and its key (destroyed at the end); the previous CA certified by the new key (see `pki::rollover`) |
//! | state_dir | `clients/NAME/{ca,cert,key}.pem`, `probe/{ca,cert,key}.pem` | client bundles; our own probe identity |
//! | state_dir | `docker-owned.json`, `deconfigured` | what we put into daemon.json; `deconfigure` ran |
//! | state_dir | `metrics-state.json`, `lock`, `backup/` | service counters; the state lock; backups |
//! | systemd_dir | `docker-tcp.socket`, `docker-tls-manager-guard.service`, `docker.service.d/docker-tls-manager.conf` | our units |
//! | daemon_json | `daemon.json` | Docker's settings, shared with the admin (the one dockerd reads: see `docker::dockerd`) |

use std::path::{Path, PathBuf};

use crate::docker::render::{DROPIN_NAME, GUARD_UNIT, LEGACY_DROPIN_NAME, SOCKET_UNIT};
use crate::pki::Slot;

pub const KEY_MODE: u32 = 0o600;
pub const CERT_MODE: u32 = 0o644;
pub const KEY_DIR_MODE: u32 = 0o700;

/// Where everything lives (`[paths]`, validated: absolute, distinct).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// What dockerd reads: the CA certificate, the server certificate and key.
    pub cert_dir: PathBuf,
    /// The CA key, client bundles, our records, backups.
    pub state_dir: PathBuf,
    /// Where our systemd units go.
    pub systemd_dir: PathBuf,
    /// daemon.json as configured; dockerd may read another one (`--config-file` in its
    /// ExecStart): `docker::dockerd::daemon_json_path` finds that one.
    pub daemon_json: PathBuf,
}

impl Layout {
    /// The CA certificate Docker and clients trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.cert_dir.join("ca.pem")
    }
    /// The CA key: in the state directory, never beside what Docker reads.
    pub fn ca_key(&self) -> PathBuf {
        self.state_dir.join("ca-key.pem")
    }
    /// The CA's subject, recorded so the CA keeps it for life (see `inspect::CaRecord`).
    pub fn ca_subject_record(&self) -> PathBuf {
        self.state_dir.join("ca-subject.json")
    }
    /// The phase of a CA key rollover, while one runs (see `pki::rollover`).
    pub fn rollover_record(&self) -> PathBuf {
        self.state_dir.join("rollover.json")
    }
    /// The previous CA certificate during a rollover.
    pub fn ca_previous_cert(&self) -> PathBuf {
        self.state_dir.join("ca-previous.pem")
    }
    /// The previous CA key during a rollover: destroyed when it finishes.
    pub fn ca_previous_key(&self) -> PathBuf {
        self.state_dir.join("ca-previous-key.pem")
    }
    /// The previous CA (its name and key) certified by the new CA key: the intermediate that
    /// lets bundles of the new CA verify the server certificate of the previous one.
    pub fn ca_cross(&self) -> PathBuf {
        self.state_dir.join("ca-cross.pem")
    }
    /// Results of the costly checks of unchanged files (see `inspect::Memo`).
    pub fn check_memo(&self) -> PathBuf {
        self.state_dir.join("check-memo.json")
    }
    pub fn clients_dir(&self) -> PathBuf {
        self.state_dir.join("clients")
    }
    pub fn client_dir(&self, name: &str) -> PathBuf {
        self.clients_dir().join(name)
    }
    pub fn backup_dir(&self) -> PathBuf {
        self.state_dir.join("backup")
    }
    fn probe_dir(&self) -> PathBuf {
        self.state_dir.join("probe")
    }
    /// What we put into daemon.json, with the values it had before (see `docker::plan::Owned`).
    pub fn docker_owned(&self) -> PathBuf {
        self.state_dir.join("docker-owned.json")
    }
    /// Present after `deconfigure`: nothing but `apply` configures Docker again.
    pub fn deconfigured(&self) -> PathBuf {
        self.state_dir.join("deconfigured")
    }
    /// The service's counters that outlive a restart (see `metrics`).
    pub fn metrics_state(&self) -> PathBuf {
        self.state_dir.join("metrics-state.json")
    }
    /// The state lock (see `files::StateLock`).
    pub fn lock(&self) -> PathBuf {
        self.state_dir.join("lock")
    }

    /// The TCP socket unit.
    pub fn socket_unit(&self) -> PathBuf {
        self.systemd_dir.join(SOCKET_UNIT)
    }
    /// docker.service's drop-in directory.
    pub fn docker_dropin_dir(&self) -> PathBuf {
        self.systemd_dir.join("docker.service.d")
    }
    /// Our drop-in for docker.service.
    pub fn dropin(&self) -> PathBuf {
        self.docker_dropin_dir().join(DROPIN_NAME)
    }
    /// Where earlier versions wrote the drop-in (the name `systemctl edit` uses).
    pub fn legacy_dropin(&self) -> PathBuf {
        self.docker_dropin_dir().join(LEGACY_DROPIN_NAME)
    }
    /// The guard unit docker.service waits for.
    pub fn guard_unit(&self) -> PathBuf {
        self.systemd_dir.join(GUARD_UNIT)
    }

    /// What Docker reads from us, as snapshots for the rollback: if Docker cannot start with
    /// new certificates, these are put back as they were. (The unit files and daemon.json are
    /// the Docker plan's own writes and are restored by it.)
    pub fn docker_reads(&self) -> Vec<PathBuf> {
        let (server_cert, server_key) = self.cert_and_key(&Slot::Server);
        let (probe_cert, probe_key) = self.cert_and_key(&Slot::Probe);
        vec![
            self.ca_cert(),
            self.ca_key(),
            server_cert,
            server_key,
            probe_cert,
            probe_key,
            self.probe_dir().join("ca.pem"),
        ]
    }

    /// The directories holding files we own or read, given the daemon.json dockerd really
    /// reads and the configuration file (those that exist are watched; the rest once they
    /// appear). Also where interrupted writes leave temp files.
    pub fn watch_dirs(&self, daemon_json: &Path, config: &Path) -> Vec<PathBuf> {
        let mut dirs = std::collections::BTreeSet::new();
        dirs.insert(self.cert_dir.clone());
        dirs.insert(self.state_dir.clone());
        dirs.insert(self.probe_dir());
        dirs.insert(self.clients_dir());
        for c in self.clients_on_disk() {
            dirs.insert(self.client_dir(&c));
        }
        dirs.insert(self.systemd_dir.clone());
        dirs.insert(self.docker_dropin_dir());
        for f in [&self.daemon_json, daemon_json, config] {
            if let Some(d) = f.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        dirs.into_iter().collect()
    }

    /// Whether a changed path is one of ours or one we read (daemon.json: the configured one
    /// or the one dockerd really reads). Temp files of our own writes are not.
    pub fn is_watched_file(&self, daemon_json: &Path, path: &Path) -> bool {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy()) else {
            return false;
        };
        if name.starts_with(crate::files::TEMP_PREFIX) {
            return false;
        }
        let pem = name.ends_with(".pem");
        let Some(parent) = path.parent() else {
            return false;
        };
        (pem && parent == self.cert_dir)
            || path == self.ca_key()
            || path == self.ca_previous_cert()
            || path == self.ca_previous_key()
            || path == self.ca_cross()
            || (pem && parent.parent() == Some(self.clients_dir().as_path()))
            || (pem && parent == self.probe_dir())
            || path == self.socket_unit()
            || path == self.dropin()
            || path == self.guard_unit()
            || path == self.daemon_json
            || path == daemon_json
    }

    /// (certificate, key) of a slot.
    pub fn cert_and_key(&self, slot: &Slot) -> (PathBuf, PathBuf) {
        match slot {
            Slot::Ca => (self.ca_cert(), self.ca_key()),
            Slot::Server => (
                self.cert_dir.join("server-cert.pem"),
                self.cert_dir.join("server-key.pem"),
            ),
            Slot::Client(n) => (
                self.client_dir(n).join("cert.pem"),
                self.client_dir(n).join("key.pem"),
            ),
            Slot::Probe => (
                self.probe_dir().join("cert.pem"),
                self.probe_dir().join("key.pem"),
            ),
        }
    }

    /// The copy of the CA certificate kept beside a client's files (so the directory works as
    /// DOCKER_CERT_PATH as it is).
    pub fn ca_copy(&self, slot: &Slot) -> Option<PathBuf> {
        match slot {
            Slot::Client(n) => Some(self.client_dir(n).join("ca.pem")),
            Slot::Probe => Some(self.probe_dir().join("ca.pem")),
            _ => None,
        }
    }

    /// Directories that hold keys, with the mode they must have.
    pub fn key_dirs(&self, slot: &Slot) -> Vec<PathBuf> {
        match slot {
            Slot::Ca => vec![self.state_dir.clone()],
            Slot::Server => vec![self.cert_dir.clone()],
            Slot::Client(n) => vec![
                self.state_dir.clone(),
                self.clients_dir(),
                self.client_dir(n),
            ],
            Slot::Probe => vec![self.state_dir.clone(), self.probe_dir()],
        }
    }

    /// Names of the clients that have a directory on disk (added earlier by config or `client add`).
    pub fn clients_on_disk(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.clients_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::config::validate_client_name(n).is_ok())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            cert_dir: "/c".into(),
            state_dir: "/s".into(),
            systemd_dir: "/u".into(),
            daemon_json: "/d/daemon.json".into(),
        }
    }

    #[test]
    fn every_file_has_one_distinct_path_under_its_directory() {
        let l = layout();
        let (sc, sk) = l.cert_and_key(&Slot::Server);
        let (cc, ck) = l.cert_and_key(&Slot::Client("a".into()));
        let state = [
            l.ca_key(),
            l.ca_subject_record(),
            l.check_memo(),
            l.rollover_record(),
            l.ca_previous_cert(),
            l.ca_previous_key(),
            l.ca_cross(),
            l.docker_owned(),
            l.deconfigured(),
            l.metrics_state(),
            l.lock(),
            l.backup_dir(),
            cc,
            ck,
        ];
        let units = [
            l.socket_unit(),
            l.dropin(),
            l.legacy_dropin(),
            l.guard_unit(),
        ];
        let ca = l.ca_cert();
        let all: Vec<&PathBuf> = state.iter().chain(&units).chain([&ca, &sc, &sk]).collect();
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
        assert!(state.iter().all(|p| p.starts_with("/s")));
        assert!(units.iter().all(|p| p.starts_with("/u")));
        assert!([&ca, &sc, &sk].iter().all(|p| p.starts_with("/c")));
    }

    #[test]
    fn docker_reads_are_watched_and_swept() {
        let l = layout();
        let dj = Path::new("/etc/docker/other.json");
        let dirs = l.watch_dirs(dj, Path::new("/e/config.toml"));
        for f in l.docker_reads() {
            assert!(dirs.contains(&f.parent().unwrap().to_path_buf()), "{f:?}");
            assert!(l.is_watched_file(dj, &f), "{f:?}");
        }
        for f in [
            l.socket_unit(),
            l.dropin(),
            l.guard_unit(),
            l.daemon_json.clone(),
        ] {
            assert!(l.is_watched_file(dj, &f), "{f:?}");
        }
        assert!(l.is_watched_file(dj, dj));
        for f in [l.ca_previous_cert(), l.ca_previous_key(), l.ca_cross()] {
            assert!(l.is_watched_file(dj, &f), "{f:?}");
        }
        assert!(!l.is_watched_file(dj, &l.lock()));
        assert!(!l.is_watched_file(dj, &l.metrics_state()));
        assert!(!l.is_watched_file(dj, Path::new("/c/.dtm-tmp-1-server-key.pem")));
    }
}
