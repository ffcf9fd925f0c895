//! The PKI: the CA, the daemon's server certificate and the client certificates.
//! `crate::layout` says where each file lives, `inspect` reads what is on disk with a real X.509
//! parser, `plan` decides (purely, from disk + settings + clock) what to do, `issue` makes keys
//! and certificates with rcgen, and `execute` carries out a plan through the atomic-write helper.

pub mod execute;
pub mod inspect;
pub mod issue;
pub mod plan;
pub mod rollover;
pub mod transfer;

pub use crate::layout::Layout;

use std::fmt;

/// One certificate the manager keeps.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    Ca,
    Server,
    Client(String),
    /// The manager's own client identity, used to probe Docker's TLS endpoint.
    Probe,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Ca => f.write_str("ca"),
            Slot::Server => f.write_str("server"),
            Slot::Client(n) => write!(f, "client '{n}'"),
            Slot::Probe => f.write_str("probe client"),
        }
    }
}

/// Common name of the manager's own probe identity.
pub const PROBE_CN: &str = "docker-tls-manager-probe";
