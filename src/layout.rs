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
//! | state_dir | `clients/NAME/{ca,cert,key}.pem`, `clients/NAME/handed-out.json`, `probe/{ca,cert,key}.pem` | client bundles and when each went out; our own probe identity |
//! | state_dir | `authz/revoked.json`, `authz/roles.json`, `authz/issued.jsonl`, `authz/daemon.json.*`, `authz/fallback.sh` | the authorization plugin: revocations, roles, every unexpired client certificate signed, the fallback's daemon.json, its hash and its script |
//! | state_dir | `acme-account.json`, `acme-pending.pem`, `acme-renewal-info.json` | the ACME account's key and URL (`[acme]`); a certificate from it being installed; what the ACME CA said about renewing the server certificate (ARI, see `ari`) |
//! | state_dir | `ca-shared.json` | the CA was exported or imported: shared with other hosts |
//! | state_dir | `rollover.json`, `ca-previous.pem`, `ca-previous-key.pem`, `ca-cross.pem` | a CA key rollover: its phase; the previous CA and its key (destroyed at the end); the previous CA certified by the new key (see `pki::rollover`) |
//! | state_dir | `clients/NAME/{ca,cert,key}.pem`, `probe/{ca,cert,key}.pem` | client bundles; our own probe identity |
//! | state_dir | `docker-owned.json`, `deconfigured` | what we put into daemon.json; `deconfigure` ran |
//! | state_dir | `metrics-state.json`, `lock`, `backup/` | service counters; the state lock; backups |
//! | systemd_dir | `docker-tcp.socket`, `docker-tls-manager-guard.service`, `docker.service.d/docker-tls-manager.conf` | our units |
//! | daemon_json | `daemon.json` | Docker's settings, shared with the admin (the one dockerd reads: see `docker::dockerd`) |
//! | (read) | docker.service's drop-ins and `EnvironmentFile=`s | watched: they can move daemon.json ([`DockerdInputs`]) |

use std::path::{Path, PathBuf};

use crate::docker::render::{DROPIN_NAME, GUARD_UNIT, LEGACY_DROPIN_NAME, SOCKET_UNIT};
use crate::pki::Slot;

pub const KEY_MODE: u32 = 0o600;
pub const CERT_MODE: u32 = 0o644;
pub const KEY_DIR_MODE: u32 = 0o700;

/// What dockerd reads besides our files, as the last look at docker.service found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerdInputs {
    /// The daemon.json dockerd reads (`--config-file` in its ExecStart followed).
    pub daemon_json: PathBuf,
    /// docker.service's `EnvironmentFile=`s (`$DOCKER_OPTS` can move daemon.json).
    pub environment_files: Vec<PathBuf>,
}

impl DockerdInputs {
    /// Before any look at docker.service: the configured daemon.json.
    pub fn configured(layout: &Layout) -> DockerdInputs {
        DockerdInputs {
            daemon_json: layout.daemon_json.clone(),
            environment_files: vec![],
        }
    }

    /// daemon.json as configured, as dockerd reads it, and where a symlink there leads.
    pub fn daemon_json_files(&self, layout: &Layout) -> Vec<PathBuf> {
        let mut files = vec![layout.daemon_json.clone(), self.daemon_json.clone()];
        for f in files.clone() {
            if let Ok(target) = std::fs::canonicalize(&f)
                && target != f
            {
                files.push(target);
            }
        }
        files.dedup();
        files
    }
}

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
    /// `[acme] issuer_root`: with ACME, what clients trust for the server (else our CA).
    pub acme_issuer_root: Option<PathBuf>,
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
    /// When a client's bundle went out, and with which certificate (see `status`).
    pub fn handed_out(&self, name: &str) -> PathBuf {
        self.client_dir(name).join("handed-out.json")
    }
    /// Present once the CA was exported to or imported from another host (`ca export`, `ca
    /// import`): the public key it was shared with. A rollover on one host alone would split
    /// the group, so it is refused while this names the current key.
    pub fn ca_shared(&self) -> PathBuf {
        self.state_dir.join("ca-shared.json")
    }
    /// A certificate from the ACME CA being installed: its key and chain in one file (0600),
    /// written before either goes into place and removed after both are (see `converge`).
    pub fn acme_pending(&self) -> PathBuf {
        self.state_dir.join("acme-pending.pem")
    }
    /// The ACME account's credentials (`[acme]`; see `acme`).
    pub fn acme_account(&self) -> PathBuf {
        self.state_dir.join("acme-account.json")
    }
    /// The ACME CA's renewal information for the server certificate (0600; see `ari`).
    pub fn acme_renewal_info(&self) -> PathBuf {
        self.state_dir.join("acme-renewal-info.json")
    }
    /// The authorization plugin's state (0700; see `authz`).
    pub fn authz_dir(&self) -> PathBuf {
        self.state_dir.join("authz")
    }
    /// The revoked certificates (serial + issuer), 0600: read by the plugin at each change.
    pub fn authz_revoked(&self) -> PathBuf {
        self.authz_dir().join("revoked.json")
    }
    /// Roles given by `client add NAME --role ROLE`.
    pub fn authz_roles(&self) -> PathBuf {
        self.authz_dir().join("roles.json")
    }
    /// Every client certificate we signed and that has not expired (name, serial, issuer),
    /// recorded before it is written: `client revoke` reaches those whose files are gone.
    pub fn authz_issued(&self) -> PathBuf {
        self.authz_dir().join("issued.jsonl")
    }
    /// daemon.json without our plugin entry, as the fallback unit puts it back.
    pub fn authz_fallback_daemon_json(&self) -> PathBuf {
        self.authz_dir().join("daemon.json.without-plugin")
    }
    /// SHA-256 of the daemon.json we last wrote or saw with our entry.
    pub fn authz_fallback_sha256(&self) -> PathBuf {
        self.authz_dir().join("daemon.json.with-plugin.sha256")
    }
    /// The fallback unit's script: takes our entry out of daemon.json without our binary.
    pub fn authz_fallback_script(&self) -> PathBuf {
        self.authz_dir().join("fallback.sh")
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

    /// The directories holding files we own or read (those that exist are watched; the rest
    /// once they appear): ours, those of what dockerd reads (`inputs`) and the config file's.
    pub fn watch_dirs(&self, inputs: &DockerdInputs, config: &Path) -> Vec<PathBuf> {
        let mut dirs: std::collections::BTreeSet<PathBuf> =
            self.write_dirs(inputs).into_iter().collect();
        for f in inputs
            .environment_files
            .iter()
            .map(PathBuf::as_path)
            .chain([config])
            .chain(self.acme_issuer_root.as_deref())
        {
            if let Some(d) = f.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        dirs.into_iter().collect()
    }

    /// The directories we write into, where an interrupted atomic write leaves its temp file
    /// (the backup tree aside: see `converge`). daemon.json counts where dockerd reads it and
    /// where a symlink there leads (the write goes to the link's target).
    pub fn write_dirs(&self, inputs: &DockerdInputs) -> Vec<PathBuf> {
        let mut dirs = std::collections::BTreeSet::new();
        dirs.insert(self.cert_dir.clone());
        dirs.insert(self.state_dir.clone());
        dirs.insert(self.probe_dir());
        dirs.insert(self.clients_dir());
        for c in self.clients_on_disk() {
            dirs.insert(self.client_dir(&c));
        }
        dirs.insert(self.authz_dir());
        dirs.insert(self.systemd_dir.clone());
        dirs.insert(self.docker_dropin_dir());
        for f in inputs.daemon_json_files(self) {
            if let Some(d) = f.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        dirs.into_iter().collect()
    }

    /// Whether a changed path is one of ours or one dockerd reads: daemon.json (configured,
    /// really read, or a symlink's target), docker.service's drop-ins and environment files
    /// (they can move daemon.json). Temp files of our own writes are not.
    pub fn is_watched_file(&self, inputs: &DockerdInputs, path: &Path) -> bool {
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
            || path == self.guard_unit()
            || (parent == self.docker_dropin_dir() && name.ends_with(".conf"))
            || inputs.daemon_json_files(self).iter().any(|f| f == path)
            || inputs.environment_files.iter().any(|f| f == path)
            || self.acme_issuer_root.as_deref() == Some(path)
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
            acme_issuer_root: None,
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
        let inputs = DockerdInputs {
            daemon_json: "/etc/docker/cm/other.json".into(),
            environment_files: vec!["/etc/default/docker".into()],
        };
        let dj = inputs.daemon_json.as_path();
        let dirs = l.watch_dirs(&inputs, Path::new("/e/config.toml"));
        let swept = l.write_dirs(&inputs);
        for f in l.docker_reads() {
            let dir = f.parent().unwrap().to_path_buf();
            assert!(dirs.contains(&dir) && swept.contains(&dir), "{f:?}");
            assert!(l.is_watched_file(&inputs, &f), "{f:?}");
        }
        for f in [
            l.socket_unit(),
            l.dropin(),
            l.guard_unit(),
            l.daemon_json.clone(),
        ] {
            assert!(l.is_watched_file(&inputs, &f), "{f:?}");
        }
        // What dockerd reads, and what can change it.
        assert!(l.is_watched_file(&inputs, dj));
        assert!(l.is_watched_file(&inputs, Path::new("/etc/default/docker")));
        assert!(l.is_watched_file(&inputs, Path::new("/u/docker.service.d/admin.conf")));
        assert!(dirs.contains(&PathBuf::from("/etc/default")));
        assert!(dirs.contains(&PathBuf::from("/e")));
        // Swept: where we write (daemon.json as dockerd reads it), not where we only read.
        assert!(swept.contains(&PathBuf::from("/etc/docker/cm")));
        assert!(swept.contains(&PathBuf::from("/d")));
        assert!(!swept.contains(&PathBuf::from("/etc/default")));
        assert!(!swept.contains(&PathBuf::from("/e")));
        for f in [l.ca_previous_cert(), l.ca_previous_key(), l.ca_cross()] {
            assert!(l.is_watched_file(&inputs, &f), "{f:?}");
        }
        assert!(!l.is_watched_file(&inputs, &l.lock()));
        assert!(!l.is_watched_file(&inputs, &l.metrics_state()));
        assert!(!l.is_watched_file(&inputs, Path::new("/etc/default/grub")));
        assert!(!l.is_watched_file(&inputs, Path::new("/c/.dtm-tmp-1-server-key.pem")));
    }

    #[test]
    fn a_symlinked_daemon_json_is_followed_to_its_target() {
        let d = tempfile::tempdir().unwrap();
        let target_dir = d.path().join("daemon.d");
        std::fs::create_dir(&target_dir).unwrap();
        std::fs::write(target_dir.join("main.json"), "{}").unwrap();
        let link = d.path().join("daemon.json");
        std::os::unix::fs::symlink("daemon.d/main.json", &link).unwrap();
        let mut l = layout();
        l.daemon_json = link;
        let inputs = DockerdInputs::configured(&l);
        let target = std::fs::canonicalize(target_dir.join("main.json")).unwrap();
        assert!(l.is_watched_file(&inputs, &target));
        assert!(
            l.write_dirs(&inputs)
                .contains(&target.parent().unwrap().to_path_buf())
        );
    }
}
