//! Docker's authorization plugin, served by us: revocation of client certificates (by serial
//! and issuer), a role per client, and an audit line per request over TLS. `roles` is the pure
//! matcher (method + path against each role's table), `policy` the state it reads (revocation
//! list, roles) and the decision, `server` the plugin protocol on the socket systemd holds,
//! `setup` the convergence step (units, daemon.json's `authorization-plugins`, the fallback
//! that takes our entry out when the plugin cannot answer).
//!
//! Every file name of this feature is here, once.

pub mod policy;
pub mod roles;
pub mod server;
pub mod setup;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Settings;

/// Our name in daemon.json's `authorization-plugins` and in dockerd's messages
/// ("authorization denied by plugin docker-tls-manager: ...").
pub const PLUGIN_NAME: &str = "docker-tls-manager";
/// Where dockerd looks for a legacy plugin of that name; held by `SOCKET_UNIT`.
pub const PLUGIN_SOCKET: &str = "/run/docker/plugins/docker-tls-manager.sock";
/// The daemon.json key.
pub const DAEMON_JSON_KEY: &str = "authorization-plugins";
/// systemd holds the plugin socket, so requests queue while the server restarts.
pub const SOCKET_UNIT: &str = "docker-tls-manager-authz.socket";
/// `docker-tls-manager authz serve`, socket-activated, restarted always.
pub const SERVICE_UNIT: &str = "docker-tls-manager-authz.service";
/// The plugin service's runtime directory (under /run, kept across its restarts): its
/// failure count.
pub const AUTHZ_RUNTIME_DIR: &str = "docker-tls-manager-authz";
/// This many failures of the plugin (exits other than a stop or a kill)...
pub const AUTHZ_FAILURES: u32 = 5;
/// ...within this many seconds run the fallback; fewer only restart it.
pub const AUTHZ_FAILURE_WINDOW_S: u32 = 30;
/// A shell oneshot that takes our entry out of daemon.json (and reloads Docker) when the
/// plugin cannot answer: needs neither our binary nor our service.
pub const FALLBACK_UNIT: &str = "docker-tls-manager-authz-fallback.service";

/// What a client may do. Ordered from the most power to the least: of two roles, `max` is
/// the more restrictive (each one's table holds the next one's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything (the default).
    Admin,
    /// Monitoring, plus start, stop, restart, kill, pause, unpause of containers.
    Operator,
    /// List and inspect containers, images, networks, volumes; info, version, events, ping.
    Monitoring,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Monitoring];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Monitoring => "monitoring",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!("'{s}' is not a role: use \"admin\", \"operator\" or \"monitoring\"")
            })
    }
}

/// How a client certificate names its role: one subject OU `role=NAME`, set when we sign it,
/// so every host that trusts our CA (a shared CA, see `ca export`) applies the same role.
pub const ROLE_OU_PREFIX: &str = "role=";

impl Role {
    /// The subject OU a certificate of this role carries.
    pub fn ou(self) -> String {
        format!("{ROLE_OU_PREFIX}{}", self.name())
    }

    /// The role a client may have on this host: the most restrictive of the one its
    /// certificate carries and the one this host gives it (config, then `client add --role`);
    /// admin when neither names one (certificates signed before roles were carried).
    /// Err: the certificate names a role this version does not know.
    pub fn effective(in_cert: Option<&str>, local: Option<Role>) -> Result<Role, String> {
        let cert = in_cert
            .map(|n| {
                Role::parse(n).map_err(|_| {
                    format!(
                        "its certificate carries the role '{n}', which this version does not know"
                    )
                })
            })
            .transpose()?;
        Ok(match (cert, local) {
            (Some(c), Some(l)) => c.max(l),
            (Some(r), None) | (None, Some(r)) => r,
            (None, None) => Role::Admin,
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The files of this feature.
#[derive(Clone, Debug)]
pub struct Files {
    /// `state_dir/authz`: our state (mode 0700).
    pub dir: PathBuf,
    /// The revoked certificates (serial + issuer), 0600: read by the plugin at each change.
    pub revoked: PathBuf,
    /// Roles given by `client add NAME --role ROLE` (the config's `[authz] roles` win).
    pub roles: PathBuf,
    /// Every unexpired client certificate we signed, recorded at signing (0600).
    pub issued: PathBuf,
    /// daemon.json without our entry, as the fallback unit puts it back.
    pub fallback_daemon_json: PathBuf,
    /// SHA-256 of the daemon.json we last wrote or saw with our entry: the fallback swaps only
    /// if the file is still that one.
    pub fallback_sha256: PathBuf,
    /// The fallback unit's shell script.
    pub fallback_script: PathBuf,
    /// The plugin's counters (node_exporter textfile), beside the service's metrics file.
    pub metrics: Option<PathBuf>,
}

impl Files {
    /// The feature's files, from the one map (`crate::layout`).
    pub fn new(settings: &Settings) -> Files {
        let l = &settings.paths;
        Files {
            revoked: l.authz_revoked(),
            roles: l.authz_roles(),
            issued: l.authz_issued(),
            fallback_daemon_json: l.authz_fallback_daemon_json(),
            fallback_sha256: l.authz_fallback_sha256(),
            fallback_script: l.authz_fallback_script(),
            metrics: settings
                .service
                .metrics_file
                .as_ref()
                .and_then(|m| m.parent())
                .map(|d| d.join("docker-tls-manager-authz.prom")),
            dir: l.authz_dir(),
        }
    }

    pub fn unit_path(settings: &Settings, unit: &str) -> PathBuf {
        settings.paths.systemd_dir.join(unit)
    }
}

/// Whether Docker consults the plugin: what the configuration asks, against what dockerd does
/// (asked through the probe identity: `docker::probe::TlsProbe::consulted_blocking`), for
/// `status` and `check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Configured, and dockerd consults it: revocation and roles are enforced.
    On,
    /// Configured, but dockerd does not consult it (the fallback took it out, daemon.json
    /// edited, Docker not reloaded): revocation and roles are not enforced.
    NotConsulted,
    /// Off in the configuration, but dockerd still consults it.
    OffButConsulted,
    /// Off in the configuration, and dockerd does not consult it (or cannot be asked).
    Off,
    /// Configured; dockerd could not be asked (the reason).
    Unknown(String),
}

impl Enforcement {
    /// `configured`: `[authz] enabled` and `[docker] manage`; `consulted`: whether dockerd
    /// asked our plugin about a request, or why that could not be found out.
    pub fn decide(configured: bool, consulted: Result<bool, String>) -> Enforcement {
        match (configured, consulted) {
            (true, Ok(true)) => Enforcement::On,
            (true, Ok(false)) => Enforcement::NotConsulted,
            (true, Err(e)) => Enforcement::Unknown(e),
            (false, Ok(true)) => Enforcement::OffButConsulted,
            (false, _) => Enforcement::Off,
        }
    }

    /// For people: `status`'s line, `check`'s message.
    pub fn describe(&self) -> String {
        match self {
            Enforcement::On => "on (dockerd consults it)".into(),
            Enforcement::NotConsulted => format!(
                "configured but dockerd does not consult it: revocation and roles are not enforced; \
                 run `docker-tls-manager apply` or `systemctl reload docker` \
                 (`journalctl -u {FALLBACK_UNIT} -u {SERVICE_UNIT}` says why it was taken out)"
            ),
            Enforcement::OffButConsulted => format!(
                "off in the configuration but dockerd still consults it: run `docker-tls-manager apply` \
                 (takes {PLUGIN_NAME} out of \"{DAEMON_JSON_KEY}\")"
            ),
            Enforcement::Off => "off".into(),
            Enforcement::Unknown(e) => format!("configured; cannot ask dockerd: {e}"),
        }
    }

    /// A mismatch `check` counts as a problem.
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            Enforcement::NotConsulted | Enforcement::OffButConsulted
        )
    }

    /// For `status --json`.
    pub fn key(&self) -> &'static str {
        match self {
            Enforcement::On => "on",
            Enforcement::NotConsulted => "configured-not-consulted",
            Enforcement::OffButConsulted => "off-but-consulted",
            Enforcement::Off => "off",
            Enforcement::Unknown(_) => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforcement_is_what_dockerd_does() {
        let on = Enforcement::decide(true, Ok(true));
        assert_eq!(on, Enforcement::On);
        assert_eq!(on.describe(), "on (dockerd consults it)");
        assert!(!on.is_mismatch());
        let not = Enforcement::decide(true, Ok(false));
        assert_eq!(not, Enforcement::NotConsulted);
        assert!(not.is_mismatch());
        assert!(
            not.describe()
                .starts_with("configured but dockerd does not consult it")
        );
        let stale = Enforcement::decide(false, Ok(true));
        assert_eq!(stale, Enforcement::OffButConsulted);
        assert!(stale.is_mismatch());
        assert_eq!(Enforcement::decide(false, Ok(false)), Enforcement::Off);
        assert_eq!(
            Enforcement::decide(false, Err("down".into())),
            Enforcement::Off
        );
        let u = Enforcement::decide(true, Err("connection refused".into()));
        assert!(!u.is_mismatch() && u.describe().contains("connection refused"));
    }
}
