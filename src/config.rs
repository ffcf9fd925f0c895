//! Configuration: the TOML file as written by the admin (`RawConfig`, every key optional),
//! merged with the `DEFAULT_*` constants and validated once into [`Settings`], the typed
//! values the rest of the program uses. Bad input is rejected here, with the key and the file.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::UsageError;
use crate::layout::Layout;

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/docker-tls-manager/config.toml";
pub const DEFAULT_CERT_DIR: &str = "/etc/docker/tls";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/docker-tls-manager";
pub const DEFAULT_SYSTEMD_DIR: &str = "/etc/systemd/system";
pub const DEFAULT_DAEMON_JSON: &str = "/etc/docker/daemon.json";
pub const DEFAULT_KEY_TYPE: KeyType = KeyType::EcdsaP256;
pub const DEFAULT_CA_VALIDITY: &str = "10y";
pub const DEFAULT_CA_RENEW_BEFORE: &str = "1y";
pub const DEFAULT_SERVER_VALIDITY: &str = "90d";
pub const DEFAULT_SERVER_RENEW_BEFORE: &str = "30d";
pub const DEFAULT_CLIENT_VALIDITY: &str = "1y";
pub const DEFAULT_CLIENT_RENEW_BEFORE: &str = "30d";
pub const DEFAULT_CLIENT_NAMES: &[&str] = &["admin"];
pub const DEFAULT_LISTEN: &[&str] = &["2376"];
/// Where node_exporter's textfile collector looks on Debian (prometheus-node-exporter).
pub const DEFAULT_METRICS_FILE: &str = "/var/lib/prometheus/node-exporter/docker-tls-manager.prom";
/// Backups kept of each replaced file (`[backup] keep`).
pub const DEFAULT_BACKUP_KEEP: u32 = 5;
/// Age beyond which backups are removed (`[backup] keep_for`), the newest of a file excepted.
pub const DEFAULT_BACKUP_KEEP_FOR: &str = "90d";
/// The shortest validity accepted for any certificate.
pub const MIN_VALIDITY: Duration = Duration::from_secs(60);
/// The longest validity accepted for the CA: 100 years. Far beyond any sane CA lifetime, and
/// far inside what X.509 (GeneralizedTime), rcgen and `time` (year 9999) can encode.
pub const MAX_CA_VALIDITY: Duration = Duration::from_secs(100 * YEAR_SECS);
/// The longest validity accepted for the server and client certificates: 10 years.
pub const MAX_LEAF_VALIDITY: Duration = Duration::from_secs(10 * YEAR_SECS);
/// A year as humantime counts it ("1y" = 365.25 days), so "100y" and "10y" are accepted.
const YEAR_SECS: u64 = 31_557_600;
/// The shortest time between issuing a certificate and renewing it (`validity -
/// renew_before`), so a misconfiguration cannot make the service renew in a tight loop. One
/// minute rather than more: the machine tests watch a renewal happen with `validity = "3m"`.
pub const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(60);

/// The algorithm and size of a private key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    pub const ALL: [KeyType; 6] = [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    pub fn parse(s: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether dockerd's `live-restore` is switched on so restarts keep containers running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveRestore {
    /// On, unless swarm mode is active (the two are incompatible).
    Auto,
    On,
    Off,
}

/// One `ListenStream=` of the TCP socket unit: a port, or an address and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// The text as given (`2376`, `0.0.0.0:2376`, `[::1]:2376`), written as `ListenStream=`.
    pub spec: String,
    pub port: u16,
}

/// Key type and lifetime of one kind of certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPolicy {
    pub key_type: KeyType,
    pub validity: Duration,
    pub renew_before: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    pub policy: CertPolicy,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub auto_addresses: bool,
    /// Which of the host's addresses `auto_addresses` takes.
    pub address_filter: AddressFilter,
}

/// Interfaces whose addresses change by themselves (container networks, VPN tunnels) are
/// left out by default: each change would reissue the certificate and restart Docker.
pub const DEFAULT_EXCLUDE_INTERFACES: [&str; 15] = [
    "cni*",
    "flannel*",
    "cali*",
    "cilium*",
    "vxlan*",
    "kube-*",
    "weave*",
    "virbr*",
    "lxcbr*",
    "lxc*",
    "podman*",
    "tun*",
    "tap*",
    "tailscale*",
    "zt*",
];

/// Which host addresses go into the server certificate with `auto_addresses` (Docker's own
/// bridges never do). Interface patterns match a name exactly, or by prefix with a final `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressFilter {
    /// `[server] interfaces`: only these interfaces (empty: all).
    pub interfaces: Vec<String>,
    /// `[server] exclude_interfaces`.
    pub exclude_interfaces: Vec<String>,
    /// `[server] exclude_addresses`: addresses or networks (CIDR), e.g. a keepalived VIP.
    pub exclude_addresses: Vec<(IpAddr, u8)>,
    /// `[server] temporary_addresses`: IPv6 privacy addresses, which rotate daily.
    pub temporary_addresses: bool,
}

impl Default for AddressFilter {
    fn default() -> Self {
        AddressFilter {
            interfaces: vec![],
            exclude_interfaces: DEFAULT_EXCLUDE_INTERFACES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            exclude_addresses: vec![],
            temporary_addresses: false,
        }
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether `ip` lies in `net/len`.
pub fn in_network(ip: &IpAddr, net: &IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(*a) & mask == u32::from(*n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(*a) & mask == u128::from(*n) & mask
        }
        _ => false,
    }
}

impl AddressFilter {
    /// Whether an address found on `interface` belongs in the certificate.
    pub fn admits(&self, ip: &IpAddr, interface: &str, temporary: bool) -> bool {
        (self.interfaces.is_empty()
            || self
                .interfaces
                .iter()
                .any(|p| pattern_matches(p, interface)))
            && !self
                .exclude_interfaces
                .iter()
                .any(|p| pattern_matches(p, interface))
            && !self
                .exclude_addresses
                .iter()
                .any(|(n, l)| in_network(ip, n, *l))
            && (self.temporary_addresses || !temporary)
    }
}

/// Parses `ADDRESS` or `ADDRESS/LEN`.
fn parse_network(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    pub policy: CertPolicy,
    pub names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerSettings {
    pub manage: bool,
    pub listen: Vec<Listen>,
    pub live_restore: LiveRestore,
}

/// `[acme]`: the server certificate from an ACME CA (step-ca, Vault/OpenBao PKI, any RFC
/// 8555 server) instead of our own CA. Clients keep certificates from our CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The directory URL (https).
    pub directory: String,
    /// The CA certificate(s) to verify the ACME server's own HTTPS with; `None`: the system's.
    pub directory_ca: Option<PathBuf>,
    /// The root of the chains the ACME CA issues: what clients trust for the server.
    pub issuer_root: PathBuf,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    /// External account binding: key id and the raw HMAC key (decoded from base64url).
    pub eab: Option<(String, Vec<u8>)>,
    /// Port the HTTP-01 challenge is answered on (the ACME server connects to it).
    pub http_port: u16,
    /// Which challenge proves the host holds its names and addresses.
    pub challenge: AcmeChallenge,
    /// Port the TLS-ALPN-01 challenge is answered on.
    pub tls_port: u16,
}

/// `[acme] challenge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// "http-01": an HTTP answer on `http_port` (default).
    Http01,
    /// "tls-alpn-01": a TLS handshake on `tls_port` (RFC 8737, RFC 8738 for addresses).
    TlsAlpn01,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    /// Prometheus textfile (node_exporter textfile collector format); `None`: not written.
    pub metrics_file: Option<PathBuf>,
}

/// Retention of the copies in `state_dir/backup/`, applied per original file after each
/// backup of it. The newest copy of a file is never removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupSettings {
    /// At most this many copies of each file (default 5).
    pub keep: NonZeroU32,
    /// Copies older than this are removed (default 90 days).
    pub keep_for: Duration,
}

/// Automatic CA key rollovers (see `pki::rollover`): the service starts one when the CA key
/// is `key_lifetime` old and finishes it `overlap` later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaRollover {
    /// `None`: rollovers only on demand (`ca rollover start`).
    pub key_lifetime: Option<Duration>,
    pub overlap: Duration,
}

pub const DEFAULT_ROLLOVER_OVERLAP: &str = "30d";

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The file the settings came from, if one existed.
    pub source: Option<PathBuf>,
    /// Every file the manager owns or reads, from `[paths]`.
    pub paths: Layout,
    pub ca: CertPolicy,
    /// `[ca] key_lifetime`, `rollover_overlap`.
    pub ca_rollover: CaRollover,
    pub server: ServerSettings,
    pub clients: ClientSettings,
    pub docker: DockerSettings,
    pub service: ServiceSettings,
    pub backup: BackupSettings,
    /// `None`: the server certificate comes from our CA.
    pub acme: Option<AcmeSettings>,
    pub authz: AuthzSettings,
}

/// `[authz]`: Docker's authorization plugin served by us (revocation, roles, audit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzSettings {
    /// Our name in daemon.json's `authorization-plugins` (default true).
    pub enabled: bool,
    /// Role of each named client; the others have the role given at `client add --role`,
    /// else `admin`.
    pub roles: std::collections::BTreeMap<String, crate::authz::Role>,
}

// ---- The file as written: every key optional, unknown keys rejected. ----

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    ca: RawCert,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    clients: RawClients,
    #[serde(default)]
    docker: RawDocker,
    #[serde(default)]
    service: RawService,
    #[serde(default)]
    backup: RawBackup,
    #[serde(default)]
    acme: RawAcme,
    #[serde(default)]
    authz: RawAuthz,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawAuthz {
    enabled: Option<bool>,
    roles: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Option<String>,
    directory_ca: Option<PathBuf>,
    issuer_root: Option<PathBuf>,
    contact: Option<Vec<String>>,
    eab_kid: Option<String>,
    eab_hmac_key: Option<String>,
    http_port: Option<u16>,
    challenge: Option<String>,
    tls_port: Option<u16>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    keep: Option<i64>,
    keep_for: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawService {
    metrics_file: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    cert_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    systemd_dir: Option<PathBuf>,
    daemon_json: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawCert {
    key_type: Option<String>,
    validity: Option<String>,
    renew_before: Option<String>,
    /// [ca] only (see `CaRollover`).
    key_lifetime: Option<String>,
    rollover_overlap: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawServer {
    key_type: Option<String>,
    validity: Option<String>,
    renew_before: Option<String>,
    dns_names: Option<Vec<String>>,
    ip_addresses: Option<Vec<String>>,
    auto_addresses: Option<bool>,
    interfaces: Option<Vec<String>>,
    exclude_interfaces: Option<Vec<String>>,
    exclude_addresses: Option<Vec<String>>,
    temporary_addresses: Option<bool>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawClients {
    names: Option<Vec<String>>,
    key_type: Option<String>,
    validity: Option<String>,
    renew_before: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    manage: Option<bool>,
    listen: Option<Vec<String>>,
    live_restore: Option<RawLiveRestore>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum RawLiveRestore {
    Bool(bool),
    Word(String),
}

/// The annotated example configuration (config.example.toml), every key at its default.
pub const EXAMPLE: &str = include_str!("../config.example.toml");

/// The example with every key commented out: the packages' conffile. Uncommenting a line
/// gives its default, so the file documents every key and changes nothing.
pub fn commented_example() -> String {
    EXAMPLE
        .lines()
        .map(|l| {
            let key = l.split_once(" = ").map(|(k, _)| k);
            if key.is_some_and(|k| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            }) {
                format!("# {l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Loads the configuration. `explicit` is the `--config` argument: a file named there must
/// exist; the default path may be absent, which means every default.
pub fn load(explicit: Option<&Path>) -> Result<Settings, UsageError> {
    load_from(explicit, Path::new(DEFAULT_CONFIG_PATH))
}

fn load_from(explicit: Option<&Path>, default: &Path) -> Result<Settings, UsageError> {
    // Absolute: the guard unit calls `apply --pki-only --config PATH` from another directory.
    let absolute = explicit.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
    let explicit = absolute.as_deref();
    let path = explicit.unwrap_or(default);
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => parse("", path)
            .map(|mut s| {
                s.source = None;
                s
            }),
        Err(e) => Err(UsageError(format!(
            "cannot read the configuration file '{}': {e}; create it (see config.example.toml) \
             or pass another one with --config",
            path.display()
        ))),
    }
}

/// Parses and validates configuration text; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Settings, UsageError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        UsageError(format!(
            "invalid configuration in '{}': {}",
            path.display(),
            e.to_string().trim_end()
        ))
    })?;
    validate(raw, path)
}

fn validate(raw: RawConfig, path: &Path) -> Result<Settings, UsageError> {
    let bad = |key: &str, msg: String| {
        UsageError(format!(
            "invalid configuration in '{}': {key}: {msg}",
            path.display()
        ))
    };

    let abs = |key: &str, value: Option<PathBuf>, default: &str| -> Result<PathBuf, UsageError> {
        let p = value.unwrap_or_else(|| PathBuf::from(default));
        if !p.is_absolute() {
            return Err(bad(
                key,
                format!("'{}' is not an absolute path", p.display()),
            ));
        }
        Ok(p)
    };
    let paths = Layout {
        cert_dir: abs("[paths] cert_dir", raw.paths.cert_dir, DEFAULT_CERT_DIR)?,
        state_dir: abs("[paths] state_dir", raw.paths.state_dir, DEFAULT_STATE_DIR)?,
        systemd_dir: abs(
            "[paths] systemd_dir",
            raw.paths.systemd_dir,
            DEFAULT_SYSTEMD_DIR,
        )?,
        daemon_json: abs(
            "[paths] daemon_json",
            raw.paths.daemon_json,
            DEFAULT_DAEMON_JSON,
        )?,
        acme_issuer_root: None,
    };
    if paths.cert_dir == paths.state_dir {
        return Err(bad(
            "[paths] state_dir",
            "must differ from cert_dir (the CA key must not sit beside what Docker reads)".into(),
        ));
    }

    let policy = |section: &str,
                  raw: RawCert,
                  validity: &str,
                  renew_before: &str,
                  max_validity: Duration|
     -> Result<CertPolicy, UsageError> {
        let key_type = match raw.key_type {
            None => DEFAULT_KEY_TYPE,
            Some(s) => KeyType::parse(&s).ok_or_else(|| {
                bad(
                    &format!("[{section}] key_type"),
                    format!(
                        "unknown key type '{s}'; use one of: {}",
                        KeyType::ALL.map(KeyType::name).join(", ")
                    ),
                )
            })?,
        };
        let dur = |key: &str, v: Option<String>, default: &str| {
            let s = v.unwrap_or_else(|| default.to_string());
            humantime::parse_duration(&s).map_err(|e| {
                bad(
                    &format!("[{section}] {key}"),
                    format!("'{s}' is not a duration ({e}); write e.g. \"90d\", \"12h\", \"3m\""),
                )
            })
        };
        let validity = dur("validity", raw.validity, validity)?;
        let renew = dur("renew_before", raw.renew_before, renew_before)?;
        if validity < MIN_VALIDITY {
            return Err(bad(
                &format!("[{section}] validity"),
                format!(
                    "{} is under the minimum of 1 minute",
                    humantime::format_duration(validity)
                ),
            ));
        }
        if validity > max_validity {
            return Err(bad(
                &format!("[{section}] validity"),
                format!(
                    "{} is over the maximum of {}; write a shorter duration",
                    humantime::format_duration(validity),
                    humantime::format_duration(max_validity)
                ),
            ));
        }
        if renew >= validity {
            return Err(bad(
                &format!("[{section}] renew_before"),
                format!(
                    "{} must be shorter than validity ({})",
                    humantime::format_duration(renew),
                    humantime::format_duration(validity)
                ),
            ));
        }
        if validity - renew < MIN_RENEWAL_INTERVAL {
            return Err(bad(
                &format!("[{section}] renew_before"),
                format!(
                    "{} leaves {} between issuance and renewal (validity {}); the minimum is {}: \
                     shorten renew_before or lengthen validity",
                    humantime::format_duration(renew),
                    humantime::format_duration(validity - renew),
                    humantime::format_duration(validity),
                    humantime::format_duration(MIN_RENEWAL_INTERVAL)
                ),
            ));
        }
        Ok(CertPolicy {
            key_type,
            validity,
            renew_before: renew,
        })
    };

    let duration = |key: &str, v: &str| {
        humantime::parse_duration(v).map_err(|e| {
            bad(
                key,
                format!("'{v}' is not a duration ({e}); write e.g. \"30d\", \"5y\""),
            )
        })
    };
    let key_lifetime = match &raw.ca.key_lifetime {
        Some(v) => Some(duration("[ca] key_lifetime", v)?),
        None => None,
    };
    let overlap = duration(
        "[ca] rollover_overlap",
        raw.ca
            .rollover_overlap
            .as_deref()
            .unwrap_or(DEFAULT_ROLLOVER_OVERLAP),
    )?;
    if overlap < Duration::from_secs(60) {
        return Err(bad(
            "[ca] rollover_overlap",
            "must be at least 1 minute: clients need time to get their new bundles".into(),
        ));
    }
    if let Some(l) = key_lifetime
        && l <= overlap
    {
        return Err(bad(
            "[ca] key_lifetime",
            format!(
                "{} is not longer than [ca] rollover_overlap ({}): a key would be replaced \
                 before the previous rollover ends",
                humantime::format_duration(l),
                humantime::format_duration(overlap)
            ),
        ));
    }
    let ca_rollover = CaRollover {
        key_lifetime,
        overlap,
    };
    let ca = policy(
        "ca",
        raw.ca,
        DEFAULT_CA_VALIDITY,
        DEFAULT_CA_RENEW_BEFORE,
        MAX_CA_VALIDITY,
    )?;
    let s = raw.server;
    let server_policy = policy(
        "server",
        RawCert {
            key_type: s.key_type,
            validity: s.validity,
            renew_before: s.renew_before,
            ..RawCert::default()
        },
        DEFAULT_SERVER_VALIDITY,
        DEFAULT_SERVER_RENEW_BEFORE,
        MAX_LEAF_VALIDITY,
    )?;
    let dns_names = s.dns_names.unwrap_or_default();
    for name in &dns_names {
        if !valid_dns_name(name) {
            return Err(bad(
                "[server] dns_names",
                format!(
                    "'{name}' is not a DNS name (letters, digits, '-', '.', optional leading '*.')"
                ),
            ));
        }
    }
    let mut ip_addresses = Vec::new();
    for a in s.ip_addresses.unwrap_or_default() {
        ip_addresses.push(a.parse::<IpAddr>().map_err(|_| {
            bad(
                "[server] ip_addresses",
                format!("'{a}' is not an IPv4 or IPv6 address"),
            )
        })?);
    }
    let defaults = AddressFilter::default();
    let check_patterns = |key: &str, list: Option<Vec<String>>, default: Vec<String>| {
        let list = list.unwrap_or(default);
        for p in &list {
            let name = p.strip_suffix('*').unwrap_or(p);
            if name.is_empty() && p != "*" || name.len() > 15 || name.contains(['/', '*', ' ']) {
                return Err(bad(
                    key,
                    format!(
                        "'{p}' is not an interface name or a prefix ending in '*' (at most 15 characters, no '/' or spaces)"
                    ),
                ));
            }
        }
        Ok(list)
    };
    let interfaces = check_patterns("[server] interfaces", s.interfaces, defaults.interfaces)?;
    let exclude_interfaces = check_patterns(
        "[server] exclude_interfaces",
        s.exclude_interfaces,
        defaults.exclude_interfaces,
    )?;
    let mut exclude_addresses = Vec::new();
    for a in s.exclude_addresses.unwrap_or_default() {
        exclude_addresses.push(parse_network(&a).ok_or_else(|| {
            bad(
                "[server] exclude_addresses",
                format!("'{a}' is not an address or network (ADDRESS or ADDRESS/PREFIXLEN)"),
            )
        })?);
    }
    let server = ServerSettings {
        policy: server_policy,
        dns_names,
        ip_addresses,
        auto_addresses: s.auto_addresses.unwrap_or(true),
        address_filter: AddressFilter {
            interfaces,
            exclude_interfaces,
            exclude_addresses,
            temporary_addresses: s.temporary_addresses.unwrap_or(false),
        },
    };

    let c = raw.clients;
    let client_policy = policy(
        "clients",
        RawCert {
            key_type: c.key_type,
            validity: c.validity,
            renew_before: c.renew_before,
            ..RawCert::default()
        },
        DEFAULT_CLIENT_VALIDITY,
        DEFAULT_CLIENT_RENEW_BEFORE,
        MAX_LEAF_VALIDITY,
    )?;
    let names = c
        .names
        .unwrap_or_else(|| DEFAULT_CLIENT_NAMES.iter().map(|s| s.to_string()).collect());
    let mut seen = BTreeSet::new();
    for name in &names {
        validate_client_name(name).map_err(|m| bad("[clients] names", m))?;
        if !seen.insert(name) {
            return Err(bad("[clients] names", format!("'{name}' is listed twice")));
        }
    }
    let clients = ClientSettings {
        policy: client_policy,
        names,
    };

    let d = raw.docker;
    let listen_raw = d
        .listen
        .unwrap_or_else(|| DEFAULT_LISTEN.iter().map(|s| s.to_string()).collect());
    if listen_raw.is_empty() {
        return Err(bad("[docker] listen", "must name at least one port".into()));
    }
    let mut listen = Vec::new();
    for spec in listen_raw {
        let port = parse_listen(&spec).ok_or_else(|| {
            bad(
                "[docker] listen",
                format!("'{spec}' is not a port or ADDRESS:PORT (e.g. \"2376\", \"192.0.2.1:2376\", \"[::1]:2376\")"),
            )
        })?;
        listen.push(Listen { spec, port });
    }
    let live_restore = match d.live_restore {
        None => LiveRestore::Auto,
        Some(RawLiveRestore::Bool(true)) => LiveRestore::On,
        Some(RawLiveRestore::Bool(false)) => LiveRestore::Off,
        Some(RawLiveRestore::Word(w)) => match w.as_str() {
            "auto" => LiveRestore::Auto,
            "on" => LiveRestore::On,
            "off" => LiveRestore::Off,
            _ => {
                return Err(bad(
                    "[docker] live_restore",
                    format!("'{w}' is not one of \"auto\", \"on\", \"off\" (or true/false)"),
                ));
            }
        },
    };
    let docker = DockerSettings {
        manage: d.manage.unwrap_or(true),
        listen,
        live_restore,
    };

    let metrics_file = match raw.service.metrics_file {
        None => Some(PathBuf::from(DEFAULT_METRICS_FILE)),
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) if p.is_absolute() => Some(p),
        Some(p) => {
            return Err(bad(
                "[service] metrics_file",
                format!("'{}' is not an absolute path", p.display()),
            ));
        }
    };
    let service = ServiceSettings { metrics_file };

    let keep = raw.backup.keep.unwrap_or(DEFAULT_BACKUP_KEEP.into());
    let keep = u32::try_from(keep)
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| {
            bad(
                "[backup] keep",
                format!(
                    "{keep} is not a number of copies from 1 up (the newest copy of a file is always kept)"
                ),
            )
        })?;
    let keep_for = raw
        .backup
        .keep_for
        .unwrap_or_else(|| DEFAULT_BACKUP_KEEP_FOR.to_string());
    let keep_for = humantime::parse_duration(&keep_for).map_err(|e| {
        bad(
            "[backup] keep_for",
            format!("'{keep_for}' is not a duration ({e}); write e.g. \"90d\", \"1y\""),
        )
    })?;
    let backup = BackupSettings { keep, keep_for };
    let acme = acme_settings(raw.acme, &bad)?;
    let mut paths = paths;
    paths.acme_issuer_root = acme.as_ref().map(|a| a.issuer_root.clone());

    let mut roles = std::collections::BTreeMap::new();
    for (name, role) in raw.authz.roles.unwrap_or_default() {
        validate_client_name(&name).map_err(|m| bad("[authz] roles", m))?;
        let r = crate::authz::Role::parse(&role).map_err(|m| bad("[authz] roles", m))?;
        roles.insert(name, r);
    }
    let authz = AuthzSettings {
        enabled: raw.authz.enabled.unwrap_or(true),
        roles,
    };

    Ok(Settings {
        source: Some(path.to_path_buf()),
        paths,
        ca,
        ca_rollover,
        server,
        clients,
        docker,
        service,
        backup,
        authz,
        acme,
    })
}

/// `[acme]`: off unless `directory` is set; then `issuer_root` is needed too.
fn acme_settings(
    raw: RawAcme,
    bad: &dyn Fn(&str, String) -> UsageError,
) -> Result<Option<AcmeSettings>, UsageError> {
    let Some(directory) = raw.directory.filter(|d| !d.is_empty()) else {
        let set = [
            ("directory_ca", raw.directory_ca.is_some()),
            ("issuer_root", raw.issuer_root.is_some()),
            ("contact", raw.contact.is_some()),
            ("eab_kid", raw.eab_kid.is_some()),
            ("eab_hmac_key", raw.eab_hmac_key.is_some()),
            ("http_port", raw.http_port.is_some()),
            ("challenge", raw.challenge.is_some()),
            ("tls_port", raw.tls_port.is_some()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, s)| *s) {
            return Err(bad(
                &format!("[acme] {key}"),
                "is set but [acme] directory is not: set directory (the ACME server's directory \
                 URL) to get the server certificate by ACME, or remove the key"
                    .into(),
            ));
        }
        return Ok(None);
    };
    if !directory.starts_with("https://") {
        return Err(bad(
            "[acme] directory",
            format!("'{directory}' is not an https:// URL (ACME runs over HTTPS only)"),
        ));
    }
    let abs = |key: &str, p: PathBuf| -> Result<PathBuf, UsageError> {
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(bad(
                key,
                format!("'{}' is not an absolute path", p.display()),
            ))
        }
    };
    let issuer_root = abs(
        "[acme] issuer_root",
        raw.issuer_root.ok_or_else(|| {
            bad(
                "[acme] issuer_root",
                "is missing: name the ACME CA's root certificate (clients verify Docker's \
                 certificate with it; e.g. step-ca's root_ca.crt)"
                    .into(),
            )
        })?,
    )?;
    let directory_ca = raw
        .directory_ca
        .map(|p| abs("[acme] directory_ca", p))
        .transpose()?;
    let contact = raw.contact.unwrap_or_default();
    if let Some(c) = contact.iter().find(|c| !c.starts_with("mailto:")) {
        return Err(bad(
            "[acme] contact",
            format!("'{c}' is not a mailto: URL (write \"mailto:ops@example.net\")"),
        ));
    }
    let eab = match (raw.eab_kid, raw.eab_hmac_key) {
        (None, None) => None,
        (Some(kid), Some(key)) => {
            use base64::Engine;
            let raw_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key.trim_end_matches('='))
                .map_err(|e| {
                    bad(
                        "[acme] eab_hmac_key",
                        format!("is not base64url ({e}): paste the HMAC key the CA gave, as it is"),
                    )
                })?;
            Some((kid, raw_key))
        }
        (Some(_), None) => {
            return Err(bad(
                "[acme] eab_hmac_key",
                "is missing while eab_kid is set: external account binding needs both".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "[acme] eab_kid",
                "is missing while eab_hmac_key is set: external account binding needs both".into(),
            ));
        }
    };
    Ok(Some(AcmeSettings {
        directory,
        directory_ca,
        issuer_root,
        contact,
        eab,
        http_port: match raw.http_port {
            Some(0) => return Err(bad("[acme] http_port", "0 is not a port".into())),
            Some(p) => p,
            None => 80,
        },
        challenge: match raw.challenge.as_deref() {
            None | Some("http-01") => AcmeChallenge::Http01,
            Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
            Some(other) => {
                return Err(bad(
                    "[acme] challenge",
                    format!("'{other}' is not one of \"http-01\", \"tls-alpn-01\""),
                ));
            }
        },
        tls_port: match raw.tls_port {
            Some(0) => return Err(bad("[acme] tls_port", "0 is not a port".into())),
            Some(p) => p,
            None => 443,
        },
    }))
}

fn parse_listen(spec: &str) -> Option<u16> {
    let port = if let Ok(p) = spec.parse::<u16>() {
        p
    } else {
        spec.parse::<SocketAddr>().ok()?.port()
    };
    (port != 0).then_some(port)
}

fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A client name becomes a directory name and a certificate CN: keep it to a safe alphabet.
pub fn validate_client_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        // The manager's own identity: the authorization plugin lets it ping, nothing else.
        && name != crate::pki::PROBE_CN;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid client name: use 1 to 64 letters, digits, '.', '_' or '-', \
             starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Settings, UsageError> {
        parse(text, Path::new("/etc/x/config.toml"))
    }

    #[test]
    fn acme_off_unless_directory_and_each_mistake_named() {
        assert_eq!(p("").unwrap().acme, None);
        let ok = p(
            "[acme]\ndirectory = \"https://ca.example.net/dir\"\nissuer_root = \"/r.pem\"\n\
                    eab_kid = \"k\"\neab_hmac_key = \"aGVsbG8\"\ncontact = [\"mailto:a@b.c\"]",
        )
        .unwrap();
        let a = ok.acme.as_ref().unwrap();
        assert_eq!(a.http_port, 80);
        assert_eq!(a.eab, Some(("k".into(), b"hello".to_vec())));
        assert_eq!(
            ok.paths.acme_issuer_root.as_deref(),
            Some(Path::new("/r.pem"))
        );
        for (text, key) in [
            ("[acme]\nissuer_root = \"/r.pem\"", "[acme] issuer_root"),
            (
                "[acme]\ndirectory = \"https://x/dir\"",
                "[acme] issuer_root",
            ),
            (
                "[acme]\ndirectory = \"http://x/dir\"\nissuer_root = \"/r\"",
                "[acme] directory",
            ),
            (
                "[acme]\ndirectory = \"https://x/dir\"\nissuer_root = \"r.pem\"",
                "[acme] issuer_root",
            ),
            (
                "[acme]\ndirectory = \"https://x/dir\"\nissuer_root = \"/r\"\ncontact = [\"ops@x\"]",
                "[acme] contact",
            ),
            (
                "[acme]\ndirectory = \"https://x/dir\"\nissuer_root = \"/r\"\neab_kid = \"k\"",
                "[acme] eab_hmac_key",
            ),
            (
                "[acme]\ndirectory = \"https://x/dir\"\nissuer_root = \"/r\"\neab_kid = \"k\"\neab_hmac_key = \"%%\"",
                "[acme] eab_hmac_key",
            ),
            (
                "[acme]\ndirectory = \"https://x/dir\"\nissuer_root = \"/r\"\nhttp_port = 0",
                "[acme] http_port",
            ),
            (
                "[acme]\ndirectory = \"https://x/dir\"\nissuer_root = \"/r\"\nchallenge = \"dns-01\"",
                "[acme] challenge",
            ),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn address_filter_patterns_networks_and_bad_values() {
        let f = AddressFilter::default();
        assert!(f.admits(&"192.0.2.1".parse().unwrap(), "eth0", false));
        assert!(!f.admits(&"2001:db8::1".parse().unwrap(), "eth0", true));
        assert!(!f.admits(&"10.244.0.1".parse().unwrap(), "cni0", false));
        assert!(in_network(
            &"10.1.2.3".parse().unwrap(),
            &"10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(!in_network(
            &"11.1.2.3".parse().unwrap(),
            &"10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(in_network(
            &"2001:db8::1".parse().unwrap(),
            &"2001:db8::".parse().unwrap(),
            32
        ));
        assert!(in_network(
            &"192.0.2.7".parse().unwrap(),
            &"0.0.0.0".parse().unwrap(),
            0
        ));
        for (toml, key) in [
            (
                "[server]\nexclude_addresses = [\"10.0.0.0/33\"]",
                "exclude_addresses",
            ),
            (
                "[server]\nexclude_addresses = [\"nope\"]",
                "exclude_addresses",
            ),
            ("[server]\ninterfaces = [\"eth/0\"]", "interfaces"),
            (
                "[server]\nexclude_interfaces = [\"averyveryverylongname0\"]",
                "exclude_interfaces",
            ),
        ] {
            let e = parse(toml, Path::new("c.toml")).unwrap_err().0;
            assert!(e.contains(key) && e.contains("c.toml"), "{e}");
        }
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let s = p("").unwrap();
        assert_eq!(s.paths.cert_dir, PathBuf::from("/etc/docker/tls"));
        assert_eq!(
            s.paths.state_dir,
            PathBuf::from("/var/lib/docker-tls-manager")
        );
        assert_eq!(s.ca.key_type, KeyType::EcdsaP256);
        assert_eq!(s.ca.validity, humantime::parse_duration("10y").unwrap());
        assert_eq!(s.server.policy.validity, Duration::from_secs(90 * 86400));
        assert_eq!(
            s.server.policy.renew_before,
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(s.clients.names, vec!["admin".to_string()]);
        assert!(s.server.auto_addresses);
        assert!(s.docker.manage);
        assert_eq!(
            s.docker.listen,
            vec![Listen {
                spec: "2376".into(),
                port: 2376
            }]
        );
        assert_eq!(s.docker.live_restore, LiveRestore::Auto);
        assert_eq!(
            s.service.metrics_file,
            Some(PathBuf::from(DEFAULT_METRICS_FILE))
        );
        assert_eq!(s.backup.keep.get(), 5);
        assert_eq!(s.backup.keep_for, Duration::from_secs(90 * 86400));
        assert_eq!(
            p("[service]\nmetrics_file = \"\"")
                .unwrap()
                .service
                .metrics_file,
            None
        );
    }

    #[test]
    fn packaged_config_comments_every_key_and_equals_defaults() {
        let c = commented_example();
        assert_eq!(p(&c).unwrap(), p("").unwrap());
        for key in [
            "cert_dir",
            "state_dir",
            "systemd_dir",
            "daemon_json",
            "key_type",
            "validity",
            "renew_before",
            "dns_names",
            "ip_addresses",
            "auto_addresses",
            "interfaces",
            "exclude_interfaces",
            "exclude_addresses",
            "temporary_addresses",
            "names",
            "manage",
            "listen",
            "live_restore",
            "metrics_file",
            "keep",
            "keep_for",
        ] {
            assert!(
                c.lines().any(|l| l.starts_with(&format!("# {key} = "))),
                "{key} not documented"
            );
        }
        assert!(
            !c.lines().any(|l| l.contains(" = ") && !l.starts_with('#')),
            "{c}"
        );
    }

    #[test]
    fn example_config_loads_and_equals_defaults() {
        let text = EXAMPLE;
        let example = p(text).unwrap();
        let defaults = p("").unwrap();
        assert_eq!(example, defaults);
    }

    fn err(text: &str) -> String {
        p(text).unwrap_err().0
    }

    #[test]
    fn bad_values_name_key_and_file() {
        let cases = [
            ("[server]\nvalidity = \"banana\"", "[server] validity"),
            ("[server]\nrenew_before = \"90d\"", "[server] renew_before"),
            (
                "[clients]\nvalidity = \"30s\"\nrenew_before = \"1s\"",
                "[clients] validity",
            ),
            ("[ca]\nkey_type = \"dsa\"", "[ca] key_type"),
            ("[ca]\nkey_lifetime = \"soon\"", "[ca] key_lifetime"),
            ("[ca]\nrollover_overlap = \"10s\"", "[ca] rollover_overlap"),
            (
                "[ca]\nkey_lifetime = \"20d\"\nrollover_overlap = \"30d\"",
                "[ca] key_lifetime",
            ),
            (
                "[server]\nip_addresses = [\"10.0.0.300\"]",
                "[server] ip_addresses",
            ),
            ("[server]\ndns_names = [\"bad name\"]", "[server] dns_names"),
            ("[docker]\nlisten = [\"http\"]", "[docker] listen"),
            ("[docker]\nlisten = []", "[docker] listen"),
            (
                "[docker]\nlive_restore = \"maybe\"",
                "[docker] live_restore",
            ),
            ("[clients]\nnames = [\"../etc\"]", "[clients] names"),
            ("[clients]\nnames = [\"a\", \"a\"]", "[clients] names"),
            ("[paths]\ncert_dir = \"relative\"", "[paths] cert_dir"),
            ("[backup]\nkeep = 0", "[backup] keep"),
            ("[backup]\nkeep = -3", "[backup] keep"),
            ("[backup]\nkeep = 5000000000", "[backup] keep"),
            ("[backup]\nkeep_for = \"forever\"", "[backup] keep_for"),
        ];
        for (text, key) in cases {
            let m = err(text);
            assert!(m.contains(key), "{text:?}: {m}");
            assert!(m.contains("/etc/x/config.toml"), "{m}");
        }
    }

    #[test]
    fn validity_and_renew_before_are_bounded() {
        // 10000y used to pass validation and then panic when the certificate's not_after was
        // converted for rcgen (time's OffsetDateTime ends at year 9999).
        for (text, key, hint) in [
            ("[ca]\nvalidity = \"10000y\"", "[ca] validity", "maximum"),
            ("[ca]\nvalidity = \"101y\"", "[ca] validity", "maximum"),
            (
                "[server]\nvalidity = \"11y\"",
                "[server] validity",
                "maximum",
            ),
            (
                "[clients]\nvalidity = \"10000y\"",
                "[clients] validity",
                "maximum",
            ),
            (
                "[server]\nvalidity = \"10m\"\nrenew_before = \"9m30s\"",
                "[server] renew_before",
                "shorten renew_before",
            ),
            (
                "[clients]\nvalidity = \"1d\"\nrenew_before = \"1d\"",
                "[clients] renew_before",
                "shorter than validity",
            ),
        ] {
            let m = err(text);
            assert!(
                m.contains(key) && m.contains(hint) && m.contains("/etc/x/config.toml"),
                "{text:?}: {m}"
            );
        }
        let s = p("[ca]\nvalidity = \"100y\"\n[server]\nvalidity = \"10y\"\n\
                   [clients]\nvalidity = \"3m\"\nrenew_before = \"2m\"")
        .unwrap();
        assert_eq!(s.ca.validity, MAX_CA_VALIDITY);
        assert_eq!(s.server.policy.validity, MAX_LEAF_VALIDITY);
    }

    #[test]
    fn unknown_keys_and_sections_are_rejected() {
        let m = err("[server]\nvalidty = \"90d\"");
        assert!(
            m.contains("validty") && m.contains("/etc/x/config.toml"),
            "{m}"
        );
        let m = err("[srever]\n");
        assert!(m.contains("srever"), "{m}");
        let m = err("[server]\nvalidity = 90");
        assert!(m.contains("validity"), "{m}");
    }

    #[test]
    fn listen_forms() {
        let s = p("[docker]\nlisten = [\"2376\", \"127.0.0.1:2377\", \"[::1]:2378\"]\nlive_restore = false").unwrap();
        let ports: Vec<u16> = s.docker.listen.iter().map(|l| l.port).collect();
        assert_eq!(ports, vec![2376, 2377, 2378]);
        assert_eq!(s.docker.live_restore, LiveRestore::Off);
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
        let e = load(Some(Path::new("/nonexistent/dtm.toml"))).unwrap_err();
        assert!(e.0.contains("/nonexistent/dtm.toml"));
        let s = load_from(None, Path::new("/nonexistent/config.toml")).unwrap();
        assert_eq!(
            s,
            Settings {
                source: None,
                ..p("").unwrap()
            }
        );
        // A default path that exists but cannot be read is an error too.
        let d = tempfile::tempdir().unwrap();
        assert!(
            load_from(None, d.path())
                .unwrap_err()
                .0
                .contains(&d.path().display().to_string())
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: the loader never panics, whatever the bytes, and every rejection names
    //! the file.
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "[paths]",
        "[ca]",
        "[server]",
        "[clients]",
        "[docker]",
        "[service]",
        "[backup]",
        "keep",
        "keep_for",
        "cert_dir",
        "state_dir",
        "key_type",
        "validity",
        "renew_before",
        "dns_names",
        "ip_addresses",
        "auto_addresses",
        "names",
        "manage",
        "listen",
        "live_restore",
        "metrics_file",
        "=",
        "\"",
        "[",
        "]",
        "\n",
        "90d",
        "3m",
        "ecdsa-p256",
        "2376",
        "true",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            if let Err(e) = parse(&text, Path::new("/fuzz/config.toml")) {
                prop_assert!(e.0.contains("/fuzz/config.toml"), "{}", e.0);
            }
        }

        #[test]
        fn config_shaped_text_never_panics(parts in proptest::collection::vec(proptest::sample::select(KEYS), 0..60)) {
            let text = parts.join(" ");
            if let Err(e) = parse(&text, Path::new("/fuzz/config.toml")) {
                prop_assert!(e.0.contains("/fuzz/config.toml"), "{}", e.0);
            }
        }
    }
}
