//! Where every PKI file lives, derived from `[paths]`, and the mode each must have.

use std::path::PathBuf;

use super::Slot;
use crate::config::Paths;

pub const KEY_MODE: u32 = 0o600;
pub const CERT_MODE: u32 = 0o644;
pub const KEY_DIR_MODE: u32 = 0o700;

/// File locations of the PKI.
#[derive(Clone, Debug)]
pub struct Layout {
    pub cert_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl Layout {
    pub fn new(paths: &Paths) -> Layout {
        Layout {
            cert_dir: paths.cert_dir.clone(),
            state_dir: paths.state_dir.clone(),
        }
    }

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
