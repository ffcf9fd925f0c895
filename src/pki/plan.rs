//! The PKI planner: a pure function of (what is on disk, settings, host identity, now, what is
//! forced) to the ordered list of actions that brings the PKI to the wanted state.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};

use super::inspect::{CaName, CaRecord, CertState, DiskState, KeyState, San, SlotObservation};
use super::rollover::Phase;
use super::{PROBE_CN, Slot};
use crate::config::{CertPolicy, KeyType, Settings};
use crate::host::{Fqdn, HostIdentity};

/// Certificates to reissue even if they are fine (`renew --force`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Force {
    pub ca: bool,
    pub server: bool,
    pub clients: bool,
    /// Do not reissue the server certificate only because the host's addresses changed
    /// (at boot, before the network is up).
    pub keep_sans: bool,
    /// Ask the ACME CA's renewal information now, whatever the record says when to ask again
    /// (the admin's `renew`: a certificate revoked since shows up at once). Not the planner's.
    pub ask_ari: bool,
}

/// Why a certificate is (re)issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Unparsable(String),
    KeyMissing,
    KeyUnreadable(String),
    KeyMismatch,
    NotSignedByCa,
    WrongUsage(String),
    SansChanged {
        added: Vec<San>,
        removed: Vec<San>,
    },
    KeyTypeChanged {
        found: Option<KeyType>,
        wanted: KeyType,
    },
    CaReplaced,
    /// A CA key rollover starts: the CA gets a new key, bundles handed out keep working.
    RolloverStart,
    /// A CA key rollover changes what Docker trusts or presents (a Docker restart).
    RolloverChain,
    Due {
        not_after: SystemTime,
    },
    Expired {
        not_after: SystemTime,
    },
    /// Issued while the clock was ahead: not valid yet, and would stay so until the clock
    /// catches up.
    NotYetValid {
        not_before: SystemTime,
    },
    Forced,
    /// A client's role changed (config or `client add --role`): its certificate carries the
    /// role, so it is reissued with the new one (`found` is what the certificate names).
    RoleChanged {
        found: Option<String>,
        wanted: crate::authz::Role,
    },
}

impl Reason {
    /// Whether this is an ordinary renewal rather than a repair.
    pub fn is_renewal(&self) -> bool {
        matches!(
            self,
            Reason::Due { .. }
                | Reason::Expired { .. }
                | Reason::Forced
                | Reason::RolloverStart
                | Reason::RolloverChain
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |t: &SystemTime| humantime::format_rfc3339_seconds(*t);
        match self {
            Reason::Missing => f.write_str("missing"),
            Reason::Unparsable(e) => write!(f, "unreadable certificate ({e})"),
            Reason::KeyMissing => f.write_str("key file missing"),
            Reason::KeyUnreadable(e) => write!(f, "unreadable key ({e})"),
            Reason::KeyMismatch => f.write_str("key does not match the certificate"),
            Reason::NotSignedByCa => f.write_str("not signed by the current CA"),
            Reason::WrongUsage(e) => write!(f, "wrong usage ({e})"),
            Reason::SansChanged { added, removed } => {
                f.write_str("host names or addresses changed")?;
                for s in added {
                    write!(f, " +{s}")?;
                }
                for s in removed {
                    write!(f, " -{s}")?;
                }
                Ok(())
            }
            Reason::KeyTypeChanged { found, wanted } => write!(
                f,
                "key type {} differs from configured {wanted}",
                found.map_or("unknown".to_string(), |k| k.to_string())
            ),
            Reason::CaReplaced => f.write_str("the CA gets a new key"),
            Reason::RolloverStart => f.write_str(
                "CA key rollover, phase 1 (bundles handed out keep working until it finishes)",
            ),
            Reason::RolloverChain => f.write_str("CA key rollover"),
            Reason::Due { not_after } => write!(f, "due for renewal (expires {})", t(not_after)),
            Reason::Expired { not_after } => write!(f, "expired at {}", t(not_after)),
            Reason::NotYetValid { not_before } => write!(
                f,
                "not valid before {} (issued while the clock was ahead)",
                t(not_before)
            ),
            Reason::Forced => f.write_str("forced"),
            Reason::RoleChanged { found, wanted } => write!(
                f,
                "role changed to {wanted} (the certificate carries {})",
                found.as_deref().unwrap_or("no role")
            ),
        }
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Self-sign a CA certificate; with a new key, or re-signing the existing one.
    IssueCa { new_key: bool, reason: Reason },
    /// Issue a server or client certificate with a fresh key.
    Issue { slot: Slot, reason: Reason },
    /// Refresh a client's copy of the CA certificate.
    CopyCa { slot: Slot },
    /// Record the CA's subject (`state_dir/ca-subject.json`), missing or stale.
    RecordCaSubject,
    /// Rollover: keep the current CA and its key as the previous one.
    SavePreviousCa,
    /// Rollover: certify the previous CA (its name and key) with the current CA key.
    CrossSign,
    /// Write what dockerd trusts (ca.pem): the current CA, and the previous one in phase 1.
    WriteTrust { with_previous: bool },
    /// Rollover: remove the previous CA, its key and every backup copy of that key.
    DestroyPreviousCa,
    /// Rollover: done; remove its record.
    EndRollover,
    /// Set the mode of a file or directory.
    FixMode {
        path: PathBuf,
        mode: u32,
        found: u32,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::IssueCa {
                new_key: true,
                reason,
            } => write!(f, "create CA with a new key: {reason}"),
            Action::IssueCa {
                new_key: false,
                reason,
            } => write!(f, "re-sign CA with its existing key: {reason}"),
            Action::Issue { slot, reason } => write!(f, "issue {slot} certificate: {reason}"),
            Action::CopyCa { slot } => write!(f, "refresh the CA copy of {slot}"),
            Action::RecordCaSubject => f.write_str("record the CA subject"),
            Action::SavePreviousCa => {
                f.write_str("keep the current CA and its key as the previous CA")
            }
            Action::CrossSign => {
                f.write_str("certify the previous CA with the new CA key (for new bundles)")
            }
            Action::WriteTrust {
                with_previous: true,
            } => f.write_str("trust client certificates of the new and the previous CA"),
            Action::WriteTrust {
                with_previous: false,
            } => f.write_str("trust client certificates of the current CA only"),
            Action::DestroyPreviousCa => {
                f.write_str("destroy the previous CA key (and its backup copies)")
            }
            Action::EndRollover => f.write_str("end the CA key rollover"),
            Action::FixMode { path, mode, found } => {
                write!(f, "chmod {mode:o} '{}' (was {found:o})", path.display())
            }
        }
    }
}

/// The ordered actions, and warnings that need a human.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub warnings: Vec<String>,
    /// The name a re-signed CA keeps; `None`: a new CA, named after the host.
    pub ca_subject: Option<CaName>,
    /// The SANs a server certificate issued by this plan gets.
    pub server_sans: BTreeSet<San>,
    /// The rollover phase this plan leaves (`None`: none, or ended): in phase 1 the server
    /// certificate is signed by the previous CA and presented with the cross certificate.
    pub rollover: Option<super::rollover::Phase>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// This plan without what Docker would load at its next restart (the server certificate,
    /// the CA), for when that restart is deferred: whoever restarts Docker next must not load
    /// material that was never verified. `None` when that cannot wait: a repair (a file
    /// missing, broken, expired or not from the CA), since the files on disk do not work.
    /// Without a new CA key, client certificates and the rest go ahead.
    pub fn without_server_changes(&self) -> Option<Plan> {
        let can_wait = |r: &Reason| {
            matches!(
                r,
                Reason::Due { .. }
                    | Reason::Forced
                    | Reason::CaReplaced
                    | Reason::RolloverStart
                    | Reason::RolloverChain
                    | Reason::SansChanged { .. }
                    | Reason::KeyTypeChanged { .. }
            )
        };
        let mut ca_changes = false;
        for a in &self.actions {
            match a {
                // A rollover's steps wait for the restart as a whole.
                Action::SavePreviousCa
                | Action::CrossSign
                | Action::WriteTrust { .. }
                | Action::DestroyPreviousCa
                | Action::EndRollover => ca_changes = true,
                Action::IssueCa { reason, new_key } => {
                    if !can_wait(reason) {
                        return None;
                    }
                    // Re-signed with the same key and name, the CA still verifies what its
                    // key signs: only a new key holds the leaves back.
                    ca_changes |= *new_key;
                }
                Action::Issue {
                    slot: Slot::Server,
                    reason,
                } if !can_wait(reason) => return None,
                _ => {}
            }
        }
        let actions = self
            .actions
            .iter()
            .filter(|a| match a {
                Action::IssueCa { .. }
                | Action::SavePreviousCa
                | Action::CrossSign
                | Action::WriteTrust { .. }
                | Action::DestroyPreviousCa
                | Action::EndRollover => false,
                Action::Issue {
                    slot: Slot::Server, ..
                } => false,
                // Leaves and CA copies depend on the CA they would be issued under.
                Action::Issue { .. } | Action::CopyCa { .. } => !ca_changes,
                Action::RecordCaSubject | Action::FixMode { .. } => true,
            })
            .cloned()
            .collect();
        Some(Plan {
            actions,
            ..self.clone()
        })
    }

    /// This plan without (re)issuing the server certificate and without changing what
    /// clients trust for it (their copies must keep verifying what Docker serves): with
    /// `[acme]` when the ACME CA cannot be asked (`--pki-only` at boot) or did not deliver.
    /// The rest does not depend on it.
    pub fn without_server_issue(&self) -> Plan {
        Plan {
            actions: self
                .actions
                .iter()
                .filter(|a| {
                    !matches!(
                        a,
                        Action::Issue {
                            slot: Slot::Server,
                            ..
                        } | Action::CopyCa { .. }
                    )
                })
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// Whether the server certificate is (re)issued.
    pub fn issues_server(&self) -> bool {
        self.actions.iter().any(|a| {
            matches!(
                a,
                Action::Issue {
                    slot: Slot::Server,
                    ..
                }
            )
        })
    }

    /// Whether the certificate or key Docker serves changes.
    pub fn changes_server(&self) -> bool {
        self.actions.iter().any(|a| {
            matches!(
                a,
                Action::Issue {
                    slot: Slot::Server,
                    ..
                } | Action::IssueCa { .. }
                    | Action::WriteTrust { .. }
            )
        })
    }
}

/// The subject alternative names the server certificate must carry.
pub fn server_sans(settings: &Settings, host: &HostIdentity) -> BTreeSet<San> {
    let mut sans = BTreeSet::new();
    sans.insert(San::Dns(host.hostname.clone()));
    if let Fqdn::Name(f) = &host.fqdn {
        sans.insert(San::Dns(f.clone()));
    }
    sans.insert(San::Dns("localhost".into()));
    sans.insert(San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    sans.insert(San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    if settings.server.auto_addresses {
        let filter = &settings.server.address_filter;
        sans.extend(
            host.addresses
                .iter()
                .filter(|(ip, o)| filter.admits(ip, &o.interface, o.temporary))
                .map(|(ip, _)| San::Ip(*ip)),
        );
    }
    sans.extend(
        settings
            .server
            .dns_names
            .iter()
            .map(|d| San::Dns(d.to_ascii_lowercase())),
    );
    sans.extend(settings.server.ip_addresses.iter().copied().map(San::Ip));
    sans
}

/// The SANs the server certificate must carry, given what is on disk: the host's
/// ([`server_sans`]), plus, from the current certificate when the CA key signed it:
/// - its FQDN when the lookup failed (unknown is not gone): its DNS names with a dot other
///   than the hostname and the configured `dns_names`;
/// - with `keep_sans` (`apply --pki-only` at boot, before the network is up), all of its SANs.
///   SAN differences alone then reissue nothing, and a certificate reissued for another reason
///   (expired, key mismatch, ...) gets the union of its old SANs and the current ones rather
///   than the current ones only: at boot those may lack addresses not configured yet, and
///   clients that reached Docker by them must keep working. The service, once the network is
///   up, converges without `keep_sans` and drops what is gone.
pub fn wanted_server_sans(
    disk: &DiskState,
    settings: &Settings,
    host: &HostIdentity,
    keep_sans: bool,
) -> BTreeSet<San> {
    let mut sans = server_sans(settings, host);
    let current = disk
        .slots
        .get(&Slot::Server)
        .filter(|o| o.signed_by_ca || o.signed_by_ca_key || disk.rollover.server_signed_by_previous)
        .and_then(|o| o.info())
        .map(|i| &i.sans);
    let Some(current) = current else {
        return sans;
    };
    if matches!(host.fqdn, Fqdn::LookupFailed(_)) {
        let configured: BTreeSet<String> = settings
            .server
            .dns_names
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        sans.extend(
            current
                .iter()
                .filter(|s| {
                    matches!(s, San::Dns(d) if d.contains('.') && *d != host.hostname
                        && !configured.contains(d))
                })
                .cloned(),
        );
    }
    if keep_sans {
        sans.extend(current.iter().cloned());
    }
    sans
}

/// The server certificate's names when an ACME CA issues it (`[acme]`): no loopback address,
/// no `localhost` and no bare host name (without a dot): no ACME CA validates those.
pub fn acme_sans(sans: BTreeSet<San>) -> BTreeSet<San> {
    sans.into_iter()
        .filter(|s| match s {
            San::Ip(ip) => !ip.is_loopback(),
            San::Dns(d) => d.contains('.') && d != "localhost",
        })
        .collect()
}

/// When a certificate from the ACME CA is renewed: between 60 % and two thirds of its
/// lifetime, at a point drawn from its serial (so hosts renewing the same day spread out, and
/// every run agrees on the moment). Short lifetimes are the norm there (step-ca: 24 h).
pub fn acme_renewal_time(info: &super::inspect::CertInfo) -> SystemTime {
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    let seed = info
        .serial
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let u = f64::from(seed % 1000) / 1000.0;
    info.not_before + life.mul_f64(0.6 + (2.0 / 3.0 - 0.6) * u)
}

/// When the server certificate from the ACME CA is renewed: when the CA's renewal
/// information says (`ari`, a record about this very certificate), else
/// [`acme_renewal_time`].
pub fn acme_renewal(
    info: &super::inspect::CertInfo,
    ari: Option<&crate::ari::Record>,
) -> SystemTime {
    crate::ari::renewal_time(info, ari).unwrap_or_else(|| acme_renewal_time(info))
}

/// When a slot's certificate is due for renewal: `renew_before` its expiry, or, for a server
/// certificate from the ACME CA, [`acme_renewal`].
pub fn renewal_at(
    settings: &Settings,
    slot: &Slot,
    info: &super::inspect::CertInfo,
    ari: Option<&crate::ari::Record>,
) -> SystemTime {
    if *slot == Slot::Server && settings.acme.is_some() {
        acme_renewal(info, ari)
    } else {
        renewal_time(info.not_after, policy_of(settings, slot))
    }
}

/// When a certificate with `not_after` is due for renewal under `policy`.
pub fn renewal_time(not_after: SystemTime, policy: &CertPolicy) -> SystemTime {
    not_after
        .checked_sub(policy.renew_before)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// When the next certificate on disk is due for renewal (the earliest `not_after -
/// renew_before`); `None` when none can be read. The one answer to "when is the next thing
/// due", for the service's timer, `status` and the metrics.
pub fn next_due(disk: &DiskState, settings: &Settings) -> Option<SystemTime> {
    let rollover =
        super::rollover::next_step(&disk.rollover, &settings.ca_rollover, SystemTime::now());
    disk.slots
        .iter()
        .filter_map(|(slot, obs)| {
            obs.info()
                .map(|i| renewal_at(settings, slot, i, disk.acme_renewal.as_ref()))
        })
        .chain(rollover)
        .min()
}

/// A client certificate whose role is not the one this host gives the client (certificates
/// from before roles were carried count as admin: not reissued while the client is admin).
fn role_reason(
    settings: &Settings,
    given: &std::collections::BTreeMap<String, crate::authz::Role>,
    name: &str,
    found: Option<&str>,
) -> Option<Reason> {
    let wanted = crate::authz::policy::wanted_role(settings, given, name);
    let same = match found {
        Some(f) => f == wanted.name(),
        None => wanted == crate::authz::Role::Admin,
    };
    (!same).then(|| Reason::RoleChanged {
        found: found.map(str::to_string),
        wanted,
    })
}

/// The policy that governs a slot.
pub fn policy_of<'a>(settings: &'a Settings, slot: &Slot) -> &'a CertPolicy {
    match slot {
        Slot::Ca => &settings.ca,
        Slot::Server => &settings.server.policy,
        Slot::Client(_) | Slot::Probe => &settings.clients.policy,
    }
}

/// Common name a slot's certificate carries.
pub fn common_name(slot: &Slot, host: &HostIdentity) -> String {
    match slot {
        Slot::Ca => format!("docker-tls-manager CA for {}", host.hostname),
        Slot::Server => host.hostname.clone(),
        Slot::Client(n) => n.clone(),
        Slot::Probe => PROBE_CN.to_string(),
    }
}

/// How far in the future a `not_before` may lie before the certificate is reissued (our own
/// are backdated by `issue::BACKDATE`; this covers small clock steps).
pub const NOT_BEFORE_TOLERANCE: Duration = Duration::from_secs(5 * 60);

fn not_yet_valid(not_before: SystemTime, now: SystemTime) -> Option<Reason> {
    (not_before > now + NOT_BEFORE_TOLERANCE).then_some(Reason::NotYetValid { not_before })
}

fn due(not_after: SystemTime, policy: &CertPolicy, now: SystemTime) -> Option<Reason> {
    if now >= not_after {
        Some(Reason::Expired { not_after })
    } else if now >= renewal_time(not_after, policy) {
        Some(Reason::Due { not_after })
    } else {
        None
    }
}

fn mode_fixes(obs: &SlotObservation, actions: &mut Vec<Action>) {
    for (path, mode, found) in &obs.wrong_modes {
        let fix = Action::FixMode {
            path: path.clone(),
            mode: *mode,
            found: *found,
        };
        if !actions.contains(&fix) {
            actions.push(fix);
        }
    }
}

fn ca_action_new_key(p: &Plan) -> Option<bool> {
    p.actions.iter().find_map(|a| match a {
        Action::IssueCa { new_key, .. } => Some(*new_key),
        _ => None,
    })
}

/// Computes the plan. Fails only when the CA key exists but cannot be used: it is never
/// replaced behind the admin's back, since every client certificate depends on it.
pub fn plan(
    disk: &DiskState,
    settings: &Settings,
    host: &HostIdentity,
    now: SystemTime,
    force: Force,
) -> Result<Plan> {
    let mut p = Plan::default();

    // The CA.
    let ca = disk.get(&Slot::Ca);
    let ca_action = match &ca.key {
        KeyState::Unreadable(e) => bail!(
            "the CA key exists but cannot be used: {e}. It is never replaced automatically, \
             because every client certificate depends on it: restore it (backups are in '{}'), \
             fix its permissions, or move it away to create a new CA and then hand every client \
             a new bundle",
            settings.paths.backup_dir().display()
        ),
        KeyState::Missing => Some(Action::IssueCa {
            new_key: true,
            reason: if matches!(ca.cert, CertState::Missing) {
                Reason::Missing
            } else {
                Reason::KeyMissing
            },
        }),
        KeyState::Readable { public_key } => {
            let reason = if force.ca {
                Some(Reason::Forced)
            } else {
                match &ca.cert {
                    CertState::Missing => Some(Reason::Missing),
                    CertState::Unparsable(e) => Some(Reason::Unparsable(e.clone())),
                    CertState::Present(info) => {
                        if &info.public_key != public_key {
                            Some(Reason::KeyMismatch)
                        } else if !info.is_ca {
                            Some(Reason::WrongUsage("not a CA certificate".into()))
                        } else {
                            if info.key_type != Some(settings.ca.key_type) {
                                p.warnings.push(format!(
                                    "the CA key is {} but [ca] key_type is {}; the CA is not \
                                     replaced automatically: `docker-tls-manager ca rollover \
                                     start` switches without breaking a client bundle",
                                    info.key_type
                                        .map_or("of an unknown type".into(), |k| k.to_string()),
                                    settings.ca.key_type
                                ));
                            }
                            not_yet_valid(info.not_before, now)
                                .or_else(|| due(info.not_after, &settings.ca, now))
                        }
                    }
                }
            };
            // A forced CA renewal rotates the key (the reason to force it is usually a
            // suspected compromise); otherwise the existing key is re-signed, so every
            // certificate and bundle already out there stays valid.
            reason.map(|reason| Action::IssueCa {
                new_key: force.ca,
                reason,
            })
        }
    };
    let (phase, rollover_pre, ca_action) = rollover_ca_step(disk, settings, force, ca_action)?;
    p.rollover = phase;
    p.actions.extend(rollover_pre);
    // Leaves signed by the CA's previous key no longer verify once the CA certificate carries
    // another key: a new key, or a certificate that did not match the key file.
    let ca_new_key = matches!(
        ca_action,
        Some(
            Action::IssueCa { new_key: true, .. }
                | Action::IssueCa {
                    reason: Reason::KeyMismatch,
                    ..
                }
        )
    );
    let ca_changes = ca_action.is_some();
    let ca_rollover_start = matches!(
        ca_action,
        Some(Action::IssueCa {
            reason: Reason::RolloverStart,
            ..
        })
    );
    if let (Some(Action::IssueCa { new_key: false, .. }), KeyState::Readable { public_key }) =
        (&ca_action, &ca.key)
    {
        p.ca_subject = kept_ca_subject(disk, public_key);
        // In phase 1 a CA whose name is lost is the new one: no bundle names it yet.
        if p.ca_subject.is_none() && phase != Some(Phase::Overlap) {
            p.warnings.push(
                "the CA's subject is found neither in ca.pem, nor in the record, nor in any \
                 certificate it signed: the CA is re-signed under a new name, and bundles handed \
                 out before must be handed out again"
                    .into(),
            );
        }
    }
    match ca_action {
        Some(a) => p.actions.push(a),
        None => {
            if let CertState::Present(info) = &ca.cert
                && disk.ca_record.as_ref() != Some(&CaRecord::of(info))
            {
                p.actions.push(Action::RecordCaSubject);
            }
            mode_fixes(ca, &mut p.actions)
        }
    }
    if matches!(ca_action_new_key(&p), Some(true))
        && !matches!(ca.cert, CertState::Missing)
        && !ca_rollover_start
    {
        p.warnings.push(
            "the CA gets a new key: every client bundle handed out before must be handed out again"
                .into(),
        );
    }

    // Rollover: the cross certificate and what dockerd trusts. The server certificate is
    // reissued whenever what Docker trusts or presents changes: its fingerprint is what tells
    // that Docker restarted with the files on disk, also after a crash between the two.
    let ro = &disk.rollover;
    let overlap = phase == Some(Phase::Overlap);
    let mut server_refresh = false;
    if overlap && (ca_changes || !ro.cross_current(now)) {
        p.actions.push(Action::CrossSign);
        server_refresh = true;
    }
    let trust_ok = match (&ca.cert, ca_changes) {
        // The CA is written alone; the previous one is added after it.
        (_, true) => !overlap,
        (CertState::Present(info), false) => {
            let mut want = vec![info.der.clone()];
            if overlap && let Some(prev) = &ro.previous_cert {
                want.push(prev.der.clone());
            }
            ro.trust == want
        }
        _ => true,
    };
    if !trust_ok {
        p.actions.push(Action::WriteTrust {
            with_previous: overlap,
        });
        server_refresh = true;
    }
    let wanted_chain: Vec<Vec<u8>> = match (&ro.cross, overlap) {
        (Some(x), true) => vec![x.der.clone()],
        _ => vec![],
    };
    // (From the ACME CA the chain is the CA's own; a trust change still reissues it.)
    if settings.acme.is_none()
        && (ro.server_chain != wanted_chain || (!overlap && ro.server_signed_by_previous))
    {
        server_refresh = true;
    }

    // Leaves: server, probe, clients.
    let acme = settings.acme.is_some();
    let mut wanted_sans = wanted_server_sans(disk, settings, host, force.keep_sans);
    if acme {
        wanted_sans = acme_sans(wanted_sans);
    }
    p.server_sans = wanted_sans.clone();
    let mut roles_unreadable = false;
    for (slot, obs) in &disk.slots {
        if *slot == Slot::Ca {
            continue;
        }
        let policy = policy_of(settings, slot);
        let forced = match slot {
            Slot::Server => force.server,
            Slot::Client(_) => force.clients,
            _ => false,
        };
        // A CA re-signed under its name and key still verifies what it signed before.
        let signed = obs.signed_by_ca
            || (!ca_new_key
                && obs.signed_by_ca_key
                && obs.info().zip(p.ca_subject.as_ref()).is_some_and(|(i, n)| {
                    i.issuer_der == n.subject_der
                        && (i.authority_key_id.is_none() || i.authority_key_id == n.key_id)
                }));
        // In phase 1 the server certificate is the previous CA's (old bundles verify it
        // directly; new ones through the cross certificate).
        let from_acme = acme && *slot == Slot::Server;
        let signed = if from_acme {
            // The chain in the file verifies up to [acme] issuer_root.
            obs.signed_by_ca
        } else if overlap && *slot == Slot::Server {
            ro.server_signed_by_previous
        } else {
            signed
        };
        let mut reason = leaf_reason(
            obs,
            slot,
            policy,
            &wanted_sans,
            host,
            now,
            ca_new_key && !from_acme,
            forced,
            signed,
            force.keep_sans,
            from_acme.then_some(disk.acme_renewal.as_ref()),
        );
        if reason.is_none()
            && let Slot::Client(name) = slot
            && let (Some(info), Some(given)) = (obs.info(), disk.client_roles.as_ref())
        {
            reason = role_reason(settings, given, name, info.role.as_deref());
        }
        if *slot == Slot::Server
            && server_refresh
            && matches!(reason, None | Some(Reason::NotSignedByCa))
        {
            reason = Some(Reason::RolloverChain);
        }
        match reason {
            // Which role to sign is unknown: the clients keep what they have (Docker, the
            // server certificate and the probe go on).
            Some(_) if matches!(slot, Slot::Client(_)) && disk.client_roles.is_none() => {
                roles_unreadable = true;
            }
            Some(reason) => p.actions.push(Action::Issue {
                slot: slot.clone(),
                reason,
            }),
            None => {
                if (ca_changes || !obs.ca_copy_current)
                    && matches!(slot, Slot::Client(_) | Slot::Probe)
                {
                    p.actions.push(Action::CopyCa { slot: slot.clone() });
                }
                mode_fixes(obs, &mut p.actions);
            }
        }
    }
    if roles_unreadable {
        p.warnings.push(format!(
            "client certificates are not issued while the roles given by `client add --role` \
             cannot be read: restore '{}' from the backups (Docker refuses every client over TLS \
             meanwhile)",
            settings.paths.authz_roles().display()
        ));
    }
    if phase == Some(Phase::Finish) && ro.record.is_some() {
        p.actions.push(Action::EndRollover);
    }
    // Client copies refreshed while the CA stays: what clients trust for the server changed
    // ([acme] switched on or off, issuer_root replaced) or a copy was altered.
    if !ca_changes
        && p.actions.iter().any(|a| {
            matches!(
                a,
                Action::CopyCa {
                    slot: Slot::Client(_)
                }
            )
        })
    {
        p.warnings.push(
            "what clients trust for Docker's certificate changed (the ACME CA's root, or our CA: \
             [acme] switched, or issuer_root replaced): bundles handed out before no longer \
             verify Docker; hand them out again (`docker-tls-manager client bundle NAME`)"
                .into(),
        );
    }
    Ok(p)
}

/// The CA step of a CA key rollover (see `pki::rollover`): the phase this plan leaves, the
/// actions that come before the CA's, and the CA action (a new key when phase 1 starts).
fn rollover_ca_step(
    disk: &DiskState,
    settings: &Settings,
    force: Force,
    ca_action: Option<Action>,
) -> Result<(Option<Phase>, Vec<Action>, Option<Action>)> {
    let ro = &disk.rollover;
    if let Some(e) = &ro.record_error {
        bail!("{e}");
    }
    let mut pre = Vec::new();
    match ro.phase() {
        None => Ok((None, pre, ca_action)),
        Some(_) if force.ca => {
            // The immediate replacement ends a rollover: no previous CA stays trusted.
            if ro.previous_left() {
                pre.push(Action::DestroyPreviousCa);
            }
            if ro.record.is_some() {
                pre.push(Action::EndRollover);
            }
            Ok((None, pre, ca_action))
        }
        Some(Phase::Finish) => {
            if ro.previous_left() {
                pre.push(Action::DestroyPreviousCa);
            }
            Ok((Some(Phase::Finish), pre, ca_action))
        }
        Some(Phase::Overlap) => {
            let ca = disk.get(&Slot::Ca);
            let current = match &ca.key {
                KeyState::Readable { public_key } => Some(public_key.as_slice()),
                _ => None,
            };
            let prev = ro.previous_public_key();
            let saved = prev.as_deref().is_some_and(|k| ro.previous_saved(k));
            let unchanged = prev.is_some() && current == prev.as_deref();
            if !saved {
                let cert_is_prev = matches!(&ca.cert, CertState::Present(i)
                    if Some(i.public_key.as_slice()) == prev.as_deref());
                if !(unchanged && cert_is_prev) {
                    let l = &settings.paths;
                    bail!(
                        "a CA key rollover is in phase 1, but the previous CA ('{}', '{}') is                          missing or is not the one '{}' names: restore them from '{}', or end the                          rollover with `docker-tls-manager ca rollover finish --force` (bundles of                          the previous CA then stop working)",
                        l.ca_previous_cert().display(),
                        l.ca_previous_key().display(),
                        l.rollover_record().display(),
                        l.backup_dir().display()
                    );
                }
                pre.push(Action::SavePreviousCa);
            }
            let ca_action = if unchanged {
                Some(Action::IssueCa {
                    new_key: true,
                    reason: Reason::RolloverStart,
                })
            } else {
                ca_action
            };
            Ok((Some(Phase::Overlap), pre, ca_action))
        }
    }
}

/// The name (subject and key identifier) a CA re-signed with its existing key keeps: Go
/// (dockerd, the docker CLI) finds a certificate's issuer by comparing names byte for byte,
/// and OpenSSL also compares key identifiers, so a CA renamed under the same key would orphan
/// every leaf and bundle. Taken from ca.pem when it holds this key, else from the record
/// written with it, else from what a leaf signed by this key names as its issuer; never from
/// the current hostname, which may have changed since the CA was made.
fn kept_ca_subject(disk: &DiskState, ca_public_key: &[u8]) -> Option<CaName> {
    if let CertState::Present(info) = &disk.get(&Slot::Ca).cert
        && info.public_key == ca_public_key
    {
        return Some(CaName {
            subject_der: info.subject_der.clone(),
            key_id: info.subject_key_id.clone(),
        });
    }
    disk.ca_record
        .as_ref()
        .and_then(|r| r.name_for(ca_public_key))
        .or_else(|| disk.ca_key_issuers.first().cloned())
}

#[allow(clippy::too_many_arguments)]
fn leaf_reason(
    obs: &SlotObservation,
    slot: &Slot,
    policy: &CertPolicy,
    wanted_sans: &BTreeSet<San>,
    host: &HostIdentity,
    now: SystemTime,
    ca_new_key: bool,
    forced: bool,
    signed_by_ca: bool,
    keep_sans: bool,
    // For a certificate from the ACME CA: its renewal information, if recorded.
    from_acme: Option<Option<&crate::ari::Record>>,
) -> Option<Reason> {
    if matches!(obs.cert, CertState::Missing) {
        return Some(Reason::Missing);
    }
    if ca_new_key {
        return Some(Reason::CaReplaced);
    }
    if forced {
        return Some(Reason::Forced);
    }
    let info = match &obs.cert {
        CertState::Missing => return Some(Reason::Missing),
        CertState::Unparsable(e) => return Some(Reason::Unparsable(e.clone())),
        CertState::Present(i) => i,
    };
    match &obs.key {
        KeyState::Missing => return Some(Reason::KeyMissing),
        KeyState::Unreadable(e) => return Some(Reason::KeyUnreadable(e.clone())),
        KeyState::Readable { public_key } if *public_key != info.public_key => {
            return Some(Reason::KeyMismatch);
        }
        KeyState::Readable { .. } => {}
    }
    if !signed_by_ca {
        return Some(Reason::NotSignedByCa);
    }
    let is_server = *slot == Slot::Server;
    if is_server && !info.server_auth {
        return Some(Reason::WrongUsage(
            "no serverAuth extended key usage".into(),
        ));
    }
    if !is_server && !info.client_auth {
        return Some(Reason::WrongUsage(
            "no clientAuth extended key usage".into(),
        ));
    }
    if info.is_ca {
        return Some(Reason::WrongUsage(
            "a leaf certificate must not be a CA".into(),
        ));
    }
    let cn = common_name(slot, host);
    // The ACME CA names its certificates itself.
    if from_acme.is_none() && info.common_name != cn {
        return Some(Reason::WrongUsage(format!(
            "common name '{}' is not '{cn}'",
            info.common_name
        )));
    }
    if is_server && !keep_sans && info.sans != *wanted_sans {
        return Some(Reason::SansChanged {
            added: wanted_sans.difference(&info.sans).cloned().collect(),
            removed: info.sans.difference(wanted_sans).cloned().collect(),
        });
    }
    if info.key_type != Some(policy.key_type) {
        return Some(Reason::KeyTypeChanged {
            found: info.key_type,
            wanted: policy.key_type,
        });
    }
    if let Some(ari) = from_acme {
        return not_yet_valid(info.not_before, now).or_else(|| {
            if now >= info.not_after {
                Some(Reason::Expired {
                    not_after: info.not_after,
                })
            } else {
                (now >= acme_renewal(info, ari)).then_some(Reason::Due {
                    not_after: info.not_after,
                })
            }
        });
    }
    not_yet_valid(info.not_before, now).or_else(|| due(info.not_after, policy, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::inspect::inspect;
    use crate::pki::{Layout, execute::execute};
    use std::path::Path;

    const DAY: Duration = Duration::from_secs(86_400);

    struct Fixture {
        _dir: tempfile::TempDir,
        settings: Settings,
        layout: Layout,
        host: HostIdentity,
        t0: SystemTime,
    }

    fn settings_for(dir: &Path, extra: &str) -> Settings {
        let text = format!(
            "[paths]\ncert_dir = \"{0}/certs\"\nstate_dir = \"{0}/state\"\n[docker]\nmanage = false\n{extra}",
            dir.display()
        );
        crate::config::parse(&text, Path::new("test.toml")).unwrap()
    }

    fn eth0(ip: &str) -> (IpAddr, crate::host::AddressOrigin) {
        (
            ip.parse().unwrap(),
            crate::host::AddressOrigin {
                interface: "eth0".into(),
                temporary: false,
            },
        )
    }

    fn host() -> HostIdentity {
        HostIdentity {
            hostname: "dock1".into(),
            fqdn: Fqdn::Name("dock1.example.net".into()),
            addresses: [eth0("192.0.2.10")].into(),
        }
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let settings = settings_for(dir.path(), "");
            Fixture {
                _dir: dir,
                layout: settings.paths.clone(),
                settings,
                host: host(),
                t0: SystemTime::now(),
            }
        }
        fn plan_at(&self, now: SystemTime, force: Force) -> Plan {
            let disk = inspect(&self.layout, &self.settings.clients.names, false);
            plan(&disk, &self.settings, &self.host, now, force).unwrap()
        }
        fn converge(&self, now: SystemTime) {
            let p = self.plan_at(now, Force::default());
            execute(&p, &self.layout, &self.settings, &self.host, now).unwrap();
            assert!(
                self.plan_at(now, Force::default()).is_empty(),
                "not converged"
            );
        }
        fn issued(&self) -> Fixture {
            let f = Fixture::new();
            f.converge(f.t0);
            f
        }
        fn server_files(&self) -> (std::path::PathBuf, std::path::PathBuf) {
            self.layout.cert_and_key(&Slot::Server)
        }
    }

    /// The ACME server certificate's renewal time: the ARI choice for this very certificate
    /// (a window in the past: due now), else two thirds of its lifetime.
    #[test]
    fn acme_renewal_follows_ari_for_this_certificate_only() {
        let (der, _) = crate::pki::inspect::test_cert();
        let mut info = crate::pki::inspect::cert_info(&der).unwrap();
        let h = Duration::from_secs(3600);
        let t0 = SystemTime::UNIX_EPOCH + 500_000 * h;
        info.not_before = t0;
        info.not_after = t0 + 100 * h;
        info.ari_id = Some("aki.one".into());
        let fallback = acme_renewal_time(&info);
        assert!(fallback >= t0 + 60 * h && fallback <= t0 + 67 * h);
        let answer = |start, end| crate::ari::Answer {
            window_start: start,
            window_end: end,
            explanation_url: None,
            retry_after: 6 * h,
        };
        // A future window: its chosen time, not the fallback (later than two thirds, never
        // later than three quarters of the lifetime).
        let r = crate::ari::choose(
            &info,
            &answer(t0 + 68 * h, t0 + 72 * h),
            fallback,
            t0,
            0.5,
            None,
        )
        .unwrap();
        assert_eq!(acme_renewal(&info, Some(&r)), t0 + 70 * h);
        // A window in the past (a revoked certificate): due now.
        let now = t0 + 10 * h;
        let past =
            crate::ari::choose(&info, &answer(t0, t0 + h), fallback, now, 0.5, None).unwrap();
        assert!(acme_renewal(&info, Some(&past)) <= now);
        // Invalid: ends after expiry, or before it starts: the fallback.
        for (a, b) in [(t0 + 80 * h, t0 + 120 * h), (t0 + 80 * h, t0 + 70 * h)] {
            let r = crate::ari::choose(&info, &answer(a, b), fallback, t0, 0.5, None).unwrap();
            assert_eq!(acme_renewal(&info, Some(&r)), fallback);
        }
        // About another certificate (the one before a renewal): the fallback.
        let mut other = r.clone();
        other.certificate = "aki.two".into();
        assert_eq!(acme_renewal(&info, Some(&other)), fallback);
        assert_eq!(acme_renewal(&info, None), fallback);
    }

    /// Temporary IPv6 addresses, container and VPN interfaces and excluded addresses (a
    /// keepalived VIP) never reach the SANs by default: each change would restart Docker.
    #[test]
    fn churning_addresses_stay_out_of_the_sans() {
        let f = Fixture::new();
        let mut host = host();
        let o = |i: &str, t: bool| crate::host::AddressOrigin {
            interface: i.into(),
            temporary: t,
        };
        host.addresses
            .insert("2001:db8::5".parse().unwrap(), o("eth0", false));
        host.addresses
            .insert("2001:db8::a1b2:c3d4".parse().unwrap(), o("eth0", true));
        host.addresses
            .insert("10.244.0.1".parse().unwrap(), o("cni0", false));
        host.addresses
            .insert("10.8.0.2".parse().unwrap(), o("tun0", false));
        host.addresses
            .insert("192.0.2.100".parse().unwrap(), o("eth0", false));
        let ips = |s: &Settings| -> Vec<String> {
            server_sans(s, &host)
                .into_iter()
                .filter_map(|x| match x {
                    San::Ip(ip) if !ip.is_loopback() => Some(ip.to_string()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            ips(&f.settings),
            ["192.0.2.10", "192.0.2.100", "2001:db8::5"]
        );
        let s = settings_for(
            f._dir.path(),
            "[server]\nexclude_addresses = [\"192.0.2.100\"]\ntemporary_addresses = true\ninterfaces = [\"eth*\"]",
        );
        assert_eq!(
            ips(&s),
            ["192.0.2.10", "2001:db8::5", "2001:db8::a1b2:c3d4"]
        );
    }

    #[test]
    fn a_deferred_restart_holds_back_renewals_not_repairs() {
        let f = Fixture::new();
        f.converge(f.t0);
        // Forced server and clients: the server waits, the clients go ahead.
        let p = f.plan_at(
            f.t0,
            Force {
                server: true,
                clients: true,
                ..Force::default()
            },
        );
        let held = p.without_server_changes().unwrap();
        assert!(!held.changes_server());
        assert!(reasons(&held).iter().all(|(s, _)| s != "server"));
        assert!(
            reasons(&held).iter().any(|(s, _)| s.contains("admin")),
            "{:?}",
            reasons(&held)
        );
        // A new CA key: nothing issued under it until Docker can take it.
        let p = f.plan_at(
            f.t0,
            Force {
                ca: true,
                ..Force::default()
            },
        );
        assert!(reasons(&p.without_server_changes().unwrap()).is_empty());
        // A missing server key is a repair: it cannot wait.
        std::fs::remove_file(f.server_files().1).unwrap();
        assert!(
            f.plan_at(f.t0, Force::default())
                .without_server_changes()
                .is_none()
        );
    }

    /// The memo of costly checks is keyed by the bytes: a key swapped behind our back, or a
    /// certificate replaced, is checked again, never taken from the memo.
    #[test]
    fn the_check_memo_never_hides_a_change() {
        let f = Fixture::new();
        f.converge(f.t0);
        let disk = inspect(&f.layout, &f.settings.clients.names, false);
        disk.memo.save(&f.layout);
        assert!(f.layout.check_memo().is_file());
        assert!(f.plan_at(f.t0, Force::default()).is_empty());
        let (_, admin_key) = f.layout.cert_and_key(&Slot::Client("admin".into()));
        let (_, server_key) = f.server_files();
        std::fs::copy(&server_key, &admin_key).unwrap();
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert!(
            r.iter()
                .any(|(s, r)| s.contains("admin") && *r == Reason::KeyMismatch),
            "{r:?}"
        );
    }

    #[test]
    fn next_due_is_the_earliest_renewal_on_disk() {
        let f = Fixture::new();
        assert_eq!(
            next_due(
                &inspect(&f.layout, &f.settings.clients.names, false),
                &f.settings
            ),
            None
        );
        f.converge(f.t0);
        let disk = inspect(&f.layout, &f.settings.clients.names, false);
        let due = next_due(&disk, &f.settings).unwrap();
        // The server (90 d, renewed 30 d before) comes before the clients (1 y) and the CA.
        let server = disk.get(&Slot::Server).info().unwrap().not_after;
        assert_eq!(due, renewal_time(server, &f.settings.server.policy));
        assert!(f.plan_at(due - DAY, Force::default()).is_empty());
        assert!(!f.plan_at(due + DAY, Force::default()).is_empty());
    }

    fn reasons(p: &Plan) -> Vec<(String, Reason)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::IssueCa { reason, .. } => Some(("ca".to_string(), reason.clone())),
                Action::Issue { slot, reason } => Some((slot.to_string(), reason.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn empty_disk_creates_everything_in_order() {
        let f = Fixture::new();
        let p = f.plan_at(f.t0, Force::default());
        assert_eq!(
            p.actions,
            vec![
                Action::IssueCa {
                    new_key: true,
                    reason: Reason::Missing
                },
                Action::Issue {
                    slot: Slot::Server,
                    reason: Reason::Missing
                },
                Action::Issue {
                    slot: Slot::Client("admin".into()),
                    reason: Reason::Missing
                },
            ]
        );
    }

    #[test]
    fn fresh_certificates_are_kept() {
        let f = Fixture::new().issued();
        assert!(f.plan_at(f.t0 + 59 * DAY, Force::default()).is_empty());
    }

    #[test]
    fn server_renewed_at_renew_before_client_not_yet() {
        let f = Fixture::new().issued();
        // server: 90d validity, renew 30d before; client: 1y, 30d before.
        let p = f.plan_at(f.t0 + 61 * DAY, Force::default());
        assert!(
            matches!(reasons(&p)[..], [(ref s, Reason::Due { .. })] if s == "server"),
            "{p:?}"
        );
        assert!(p.changes_server());
        let p = f.plan_at(f.t0 + 91 * DAY, Force::default());
        assert!(
            matches!(reasons(&p)[..], [(ref s, Reason::Expired { .. })] if s == "server"),
            "{p:?}"
        );
        let p = f.plan_at(f.t0 + 336 * DAY, Force::default());
        let r = reasons(&p);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            matches!(r[1], (ref s, Reason::Due { .. }) if s == "client 'admin'"),
            "{r:?}"
        );
    }

    #[test]
    fn ca_due_is_resigned_with_same_key_and_leaves_stay_valid() {
        let f = Fixture::new().issued();
        let later = f.t0 + 9 * 365 * DAY + 200 * DAY;
        let p = f.plan_at(later, Force::default());
        assert!(
            matches!(
                p.actions[0],
                Action::IssueCa {
                    new_key: false,
                    reason: Reason::Due { .. }
                }
            ),
            "{p:?}"
        );
        let key_before = std::fs::read(f.layout.ca_key()).unwrap();
        execute(&p, &f.layout, &f.settings, &f.host, later).unwrap();
        assert_eq!(std::fs::read(f.layout.ca_key()).unwrap(), key_before);
        // The leaves were reissued because they expired, not because the CA changed.
        assert!(
            reasons(&p)
                .iter()
                .all(|(_, r)| !matches!(r, Reason::CaReplaced | Reason::NotSignedByCa))
        );
        assert!(f.plan_at(later, Force::default()).is_empty());
    }

    #[test]
    fn client_certificates_carry_their_role() {
        let f = Fixture::new().issued();
        let admin = Slot::Client("admin".into());
        let role_on_disk = |f: &Fixture| {
            let pem = std::fs::read(f.layout.cert_and_key(&admin).0).unwrap();
            let der = crate::pki::inspect::first_cert_der(&pem).unwrap();
            crate::pki::inspect::cert_info(&der).unwrap().role
        };
        assert_eq!(role_on_disk(&f).as_deref(), Some("admin"));
        // Every client certificate signed is recorded for revocation.
        let issued = crate::authz::policy::IssuedList::load(&f.layout.authz_issued()).unwrap();
        assert_eq!(issued.issued.len(), 1, "{issued:?}");
        assert_eq!(issued.issued[0].name, "admin");
        // `client add --role` (roles.json) changes it: reissued with the new role.
        let roles = f.layout.authz_roles();
        crate::files::ensure_dir(roles.parent().unwrap(), 0o700).unwrap();
        std::fs::write(&roles, r#"{"admin": "monitoring"}"#).unwrap();
        let p = f.plan_at(f.t0, Force::default());
        assert_eq!(
            reasons(&p),
            vec![(
                "client 'admin'".to_string(),
                Reason::RoleChanged {
                    found: Some("admin".into()),
                    wanted: crate::authz::Role::Monitoring
                }
            )]
        );
        f.converge(f.t0);
        assert_eq!(role_on_disk(&f).as_deref(), Some("monitoring"));
        assert_eq!(
            crate::authz::policy::IssuedList::load(&f.layout.authz_issued())
                .unwrap()
                .issued
                .len(),
            2,
            "the old certificate stays recorded until it expires"
        );
        // roles.json unreadable: nobody is reissued for a role, and no certificate is signed
        // with a role guessed (a forced renewal stops with the file named).
        std::fs::write(&roles, "{corrupt").unwrap();
        assert!(f.plan_at(f.t0, Force::default()).is_empty());
        let forced = Force {
            clients: true,
            ..Force::default()
        };
        let p = f.plan_at(f.t0, forced);
        assert!(p.is_empty(), "{p:?}");
        assert!(
            p.warnings.iter().any(|w| w.contains("roles.json")),
            "{:?}",
            p.warnings
        );
        // ... while the server certificate (and Docker) go on: the same at renewal time.
        let late = f.t0 + 300 * DAY;
        let p = f.plan_at(late, Force::default());
        assert!(
            reasons(&p).iter().any(|(s, _)| s == "server")
                && !reasons(&p).iter().any(|(s, _)| s.starts_with("client")),
            "{p:?}"
        );
        execute(&p, &f.layout, &f.settings, &f.host, late).unwrap();
        // Read again between plan and execution: never a certificate with a guessed role.
        std::fs::write(&roles, r#"{"admin": "monitoring"}"#).unwrap();
        let p = f.plan_at(f.t0, forced);
        std::fs::write(&roles, "{corrupt").unwrap();
        let err = execute(&p, &f.layout, &f.settings, &f.host, f.t0).unwrap_err();
        assert!(format!("{err:#}").contains("roles.json"), "{err:#}");
        assert_eq!(role_on_disk(&f).as_deref(), Some("monitoring"));
        // The config wins over roles.json.
        let g = Fixture::new();
        let settings = settings_for(g._dir.path(), "[authz]\nroles = { admin = \"operator\" }\n");
        let disk = inspect(&g.layout, &settings.clients.names, false);
        let p = plan(&disk, &settings, &g.host, g.t0, Force::default()).unwrap();
        execute(&p, &g.layout, &settings, &g.host, g.t0).unwrap();
        let pem = std::fs::read(g.layout.cert_and_key(&admin).0).unwrap();
        let der = crate::pki::inspect::first_cert_der(&pem).unwrap();
        assert_eq!(
            crate::pki::inspect::cert_info(&der)
                .unwrap()
                .role
                .as_deref(),
            Some("operator")
        );
        // The config's role taken away again: reissued as admin.
        let disk = inspect(&g.layout, &g.settings.clients.names, false);
        let p = plan(&disk, &g.settings, &g.host, g.t0, Force::default()).unwrap();
        assert_eq!(
            reasons(&p),
            vec![(
                "client 'admin'".to_string(),
                Reason::RoleChanged {
                    found: Some("operator".into()),
                    wanted: crate::authz::Role::Admin
                }
            )]
        );
        // Certificates from before roles were carried: left alone while the client is admin.
        let given = std::collections::BTreeMap::new();
        assert_eq!(role_reason(&f.settings, &given, "admin", None), None);
        let mon: std::collections::BTreeMap<_, _> =
            [("admin".to_string(), crate::authz::Role::Monitoring)].into();
        assert!(role_reason(&f.settings, &mon, "admin", None).is_some());
    }

    #[test]
    fn forced_targets() {
        let f = Fixture::new().issued();
        let p = f.plan_at(
            f.t0,
            Force {
                server: true,
                ..Force::default()
            },
        );
        assert_eq!(reasons(&p), vec![("server".to_string(), Reason::Forced)]);
        let p = f.plan_at(
            f.t0,
            Force {
                clients: true,
                ..Force::default()
            },
        );
        assert_eq!(
            reasons(&p),
            vec![("client 'admin'".to_string(), Reason::Forced)]
        );
        let p = f.plan_at(
            f.t0,
            Force {
                ca: true,
                ..Force::default()
            },
        );
        assert_eq!(
            p.actions[0],
            Action::IssueCa {
                new_key: true,
                reason: Reason::Forced
            }
        );
        assert!(
            reasons(&p)[1..]
                .iter()
                .all(|(_, r)| *r == Reason::CaReplaced)
        );
        assert_eq!(p.actions.len(), 3);
        assert!(!p.warnings.is_empty());
    }

    #[test]
    fn corrupt_certificate_is_reissued() {
        let f = Fixture::new().issued();
        std::fs::write(
            f.server_files().0,
            "-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert!(matches!(r[..], [(_, Reason::Unparsable(_))]), "{r:?}");
        f.converge(f.t0);
    }

    #[test]
    fn missing_or_mismatched_key_is_reissued() {
        let f = Fixture::new().issued();
        let (_, key) = f.server_files();
        let other = f.layout.cert_and_key(&Slot::Client("admin".into())).1;
        std::fs::copy(&other, &key).unwrap();
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert_eq!(r, vec![("server".to_string(), Reason::KeyMismatch)]);
        std::fs::remove_file(&key).unwrap();
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert_eq!(r, vec![("server".to_string(), Reason::KeyMissing)]);
        std::fs::write(&key, "garbage").unwrap();
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert!(matches!(r[..], [(_, Reason::KeyUnreadable(_))]), "{r:?}");
        f.converge(f.t0);
    }

    #[test]
    fn certificate_from_a_foreign_ca_is_reissued() {
        let f = Fixture::new().issued();
        let g = Fixture::new().issued();
        let (c, k) = f.server_files();
        let (gc, gk) = g.server_files();
        std::fs::copy(gc, &c).unwrap();
        std::fs::copy(gk, &k).unwrap();
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert_eq!(r, vec![("server".to_string(), Reason::NotSignedByCa)]);
        f.converge(f.t0);
    }

    #[test]
    fn new_address_changes_sans() {
        let mut f = Fixture::new().issued();
        f.host.addresses.extend([eth0("192.0.2.55")]);
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert_eq!(
            r,
            vec![(
                "server".to_string(),
                Reason::SansChanged {
                    added: vec![San::Ip("192.0.2.55".parse().unwrap())],
                    removed: vec![]
                }
            )]
        );
        f.host.addresses.clear();
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert!(
            matches!(&r[..], [(_, Reason::SansChanged { removed, .. })] if removed.len() == 1),
            "{r:?}"
        );
    }

    #[test]
    fn key_type_change_reissues_leaves_but_only_warns_for_the_ca() {
        let f = Fixture::new().issued();
        let s = settings_for(
            f._dir.path(),
            "[server]\nkey_type = \"ed25519\"\n[ca]\nkey_type = \"ecdsa-p384\"\n",
        );
        let disk = inspect(&f.layout, &s.clients.names, false);
        let p = plan(&disk, &s, &f.host, f.t0, Force::default()).unwrap();
        assert_eq!(
            reasons(&p),
            vec![(
                "server".to_string(),
                Reason::KeyTypeChanged {
                    found: Some(KeyType::EcdsaP256),
                    wanted: KeyType::Ed25519
                }
            )]
        );
        assert!(
            p.warnings.iter().any(|w| w.contains("ca rollover start")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn wrong_modes_are_fixed() {
        use std::os::unix::fs::PermissionsExt;
        let f = Fixture::new().issued();
        let (_, key) = f.server_files();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&f.layout.state_dir, std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let p = f.plan_at(f.t0, Force::default());
        assert!(p.actions.contains(&Action::FixMode {
            path: key.clone(),
            mode: 0o600,
            found: 0o644
        }));
        assert!(p.actions.contains(&Action::FixMode {
            path: f.layout.state_dir.clone(),
            mode: 0o700,
            found: 0o755
        }));
        assert!(reasons(&p).is_empty());
        f.converge(f.t0);
    }

    #[test]
    fn unreadable_ca_key_is_never_replaced() {
        let f = Fixture::new().issued();
        std::fs::write(f.layout.ca_key(), "not a key").unwrap();
        let disk = inspect(&f.layout, &f.settings.clients.names, false);
        let e = plan(&disk, &f.settings, &f.host, f.t0, Force::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("CA key") && e.contains("never replaced"), "{e}");
    }

    #[test]
    fn lost_ca_certificate_is_resigned_with_the_existing_key() {
        let f = Fixture::new().issued();
        std::fs::remove_file(f.layout.ca_cert()).unwrap();
        let p = f.plan_at(f.t0, Force::default());
        assert_eq!(
            p.actions[0],
            Action::IssueCa {
                new_key: false,
                reason: Reason::Missing
            }
        );
        f.converge(f.t0);
    }

    #[test]
    fn ca_certificate_with_another_key_invalidates_the_leaves() {
        // As after a crash between writing a new CA key and its certificate, or a rollback
        // that put back the old ca.pem: the key file is authoritative.
        let f = Fixture::new().issued();
        let g = Fixture::new().issued();
        std::fs::copy(g.layout.ca_key(), f.layout.ca_key()).unwrap();
        let p = f.plan_at(f.t0, Force::default());
        assert_eq!(
            p.actions[0],
            Action::IssueCa {
                new_key: false,
                reason: Reason::KeyMismatch
            }
        );
        assert!(
            reasons(&p)[1..]
                .iter()
                .all(|(_, r)| *r == Reason::CaReplaced),
            "{p:?}"
        );
        f.converge(f.t0);
        let ca = std::fs::read(f.layout.ca_cert()).unwrap();
        let der = crate::pki::inspect::first_cert_der(&ca).unwrap();
        let server = std::fs::read(f.server_files().0).unwrap();
        assert!(crate::pki::inspect::verify_signed_by(
            &crate::pki::inspect::first_cert_der(&server).unwrap(),
            &der
        ));
    }

    fn cert_der(path: &Path) -> Vec<u8> {
        crate::pki::inspect::first_cert_der(&std::fs::read(path).unwrap()).unwrap()
    }

    fn subject_der(path: &Path) -> Vec<u8> {
        crate::pki::inspect::cert_info(&cert_der(path))
            .unwrap()
            .subject_der
    }

    fn renamed(f: &mut Fixture) {
        f.host.hostname = "renamed".into();
        f.host.fqdn = Fqdn::Name("renamed.example.org".into());
    }

    #[test]
    fn ca_renewed_after_a_host_rename_keeps_its_subject() {
        let mut f = Fixture::new().issued();
        let subject = subject_der(&f.layout.ca_cert());
        let admin = f.layout.cert_and_key(&Slot::Client("admin".into())).0;
        let leaf_before = cert_der(&admin);
        renamed(&mut f);
        // The rename alone reissues the server certificate (its CN and SANs), not the CA.
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert!(
            matches!(&r[..], [(s, Reason::WrongUsage(_))] if s == "server"),
            "{r:?}"
        );
        let later = f.t0 + 9 * 365 * DAY + 200 * DAY;
        let p = f.plan_at(later, Force::default());
        assert!(
            matches!(
                p.actions[0],
                Action::IssueCa {
                    new_key: false,
                    reason: Reason::Due { .. }
                }
            ),
            "{p:?}"
        );
        execute(&p, &f.layout, &f.settings, &f.host, later).unwrap();
        assert_eq!(subject_der(&f.layout.ca_cert()), subject);
        assert!(crate::pki::inspect::verify_signed_by(
            &leaf_before,
            &cert_der(&f.layout.ca_cert())
        ));
    }

    #[test]
    fn lost_ca_certificate_after_a_rename_gets_its_original_subject_back() {
        let mut f = Fixture::new().issued();
        let subject = subject_der(&f.layout.ca_cert());
        let admin = f.layout.cert_and_key(&Slot::Client("admin".into())).0;
        let leaf_before = std::fs::read(&admin).unwrap();
        renamed(&mut f);
        f.converge(f.t0);
        // From the record written with the CA; then, without it, from the leaves' issuer.
        for lose_record in [false, true] {
            std::fs::remove_file(f.layout.ca_cert()).unwrap();
            if lose_record {
                std::fs::remove_file(f.layout.ca_subject_record()).unwrap();
            }
            let p = f.plan_at(f.t0, Force::default());
            assert_eq!(
                p.ca_subject.as_ref().map(|n| &n.subject_der),
                Some(&subject),
                "{p:?}"
            );
            f.converge(f.t0);
            assert_eq!(subject_der(&f.layout.ca_cert()), subject);
            // The client kept its certificate, and it verifies with the re-signed CA.
            assert_eq!(std::fs::read(&admin).unwrap(), leaf_before);
            assert!(crate::pki::inspect::verify_signed_by(
                &cert_der(&admin),
                &cert_der(&f.layout.ca_cert())
            ));
        }
        // A new key may take a new name.
        let p = f.plan_at(
            f.t0,
            Force {
                ca: true,
                ..Force::default()
            },
        );
        execute(&p, &f.layout, &f.settings, &f.host, f.t0).unwrap();
        let info = crate::pki::inspect::read_cert_info(&f.layout.ca_cert()).unwrap();
        assert!(info.common_name.ends_with("renamed"), "{}", info.subject);
    }

    #[test]
    fn missing_ca_subject_record_is_written() {
        let f = Fixture::new().issued();
        let record = std::fs::read(f.layout.ca_subject_record()).unwrap();
        std::fs::remove_file(f.layout.ca_subject_record()).unwrap();
        assert_eq!(
            f.plan_at(f.t0, Force::default()).actions,
            vec![Action::RecordCaSubject]
        );
        f.converge(f.t0);
        assert_eq!(std::fs::read(f.layout.ca_subject_record()).unwrap(), record);
        assert_eq!(
            crate::files::mode_of(&f.layout.ca_subject_record()),
            Some(0o600)
        );
    }

    #[test]
    fn certificates_issued_while_the_clock_was_ahead_are_repaired() {
        let f = Fixture::new();
        // Issued at t0 + 2 days, then the clock went back to t0.
        f.converge(f.t0 + 2 * DAY);
        let subject = subject_der(&f.layout.ca_cert());
        let key = std::fs::read(f.layout.ca_key()).unwrap();
        let p = f.plan_at(f.t0, Force::default());
        let r = reasons(&p);
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(
            r.iter()
                .all(|(_, r)| matches!(r, Reason::NotYetValid { .. })),
            "{r:?}"
        );
        assert!(matches!(
            p.actions[0],
            Action::IssueCa { new_key: false, .. }
        ));
        f.converge(f.t0);
        assert_eq!(std::fs::read(f.layout.ca_key()).unwrap(), key);
        assert_eq!(subject_der(&f.layout.ca_cert()), subject);
        // A few minutes ahead is within the tolerance.
        let g = Fixture::new();
        g.converge(g.t0 + Duration::from_secs(4 * 60));
        assert!(g.plan_at(g.t0, Force::default()).is_empty());
    }

    fn server_sans_on_disk(f: &Fixture) -> BTreeSet<San> {
        crate::pki::inspect::read_cert_info(&f.server_files().0)
            .unwrap()
            .sans
    }

    #[test]
    fn keep_sans_ignores_san_changes_and_keeps_old_sans_when_reissuing() {
        let mut f = Fixture::new().issued();
        let old: IpAddr = "192.0.2.10".parse().unwrap();
        let new: IpAddr = "192.0.2.55".parse().unwrap();
        f.host.addresses = [(new, crate::host::AddressOrigin::default())].into();
        let keep = Force {
            keep_sans: true,
            ..Force::default()
        };
        assert!(f.plan_at(f.t0, keep).is_empty());
        assert!(!f.plan_at(f.t0, Force::default()).is_empty());
        // Due for another reason: reissued with the union of the old and the current SANs.
        let later = f.t0 + 61 * DAY;
        let p = f.plan_at(later, keep);
        assert!(
            matches!(&reasons(&p)[..], [(s, Reason::Due { .. })] if s == "server"),
            "{p:?}"
        );
        execute(&p, &f.layout, &f.settings, &f.host, later).unwrap();
        let sans = server_sans_on_disk(&f);
        assert!(
            sans.contains(&San::Ip(old)) && sans.contains(&San::Ip(new)),
            "{sans:?}"
        );
        // Without keep_sans (the service, later), what is gone is dropped.
        f.converge(later);
        assert!(!server_sans_on_disk(&f).contains(&San::Ip(old)));
    }

    #[test]
    fn failed_fqdn_lookup_keeps_the_fqdn_san() {
        let mut f = Fixture::new().issued();
        let fqdn = San::Dns("dock1.example.net".into());
        f.host.fqdn = Fqdn::LookupFailed("Temporary failure in name resolution".into());
        assert!(f.plan_at(f.t0, Force::default()).is_empty());
        // Another change reissues the certificate: the FQDN stays.
        f.host.addresses.extend([eth0("192.0.2.55")]);
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert!(
            matches!(&r[..], [(_, Reason::SansChanged { removed, .. })] if removed.is_empty()),
            "{r:?}"
        );
        f.converge(f.t0);
        assert!(server_sans_on_disk(&f).contains(&fqdn));
        // An answer saying there is no FQDN removes it.
        f.host.fqdn = Fqdn::None;
        let r = reasons(&f.plan_at(f.t0, Force::default()));
        assert!(
            matches!(&r[..], [(_, Reason::SansChanged { removed, .. })] if *removed == vec![fqdn.clone()]),
            "{r:?}"
        );
    }

    #[test]
    fn stale_client_ca_copy_is_refreshed() {
        let f = Fixture::new().issued();
        let copy = f.layout.ca_copy(&Slot::Client("admin".into())).unwrap();
        std::fs::write(&copy, "old").unwrap();
        let p = f.plan_at(f.t0, Force::default());
        assert_eq!(
            p.actions,
            vec![Action::CopyCa {
                slot: Slot::Client("admin".into())
            }]
        );
        f.converge(f.t0);
    }

    // ---- CA key rollover (see `pki::rollover`): phase × what a crash left on disk ----

    use crate::pki::rollover::{self, Record, cert_ders, first_block};

    fn begin_rollover(f: &Fixture) {
        let ca = read_cert_info_at(&f.layout.ca_cert());
        rollover::write_record(
            &f.layout,
            &Record {
                phase: Phase::Overlap,
                started: humantime::format_rfc3339_seconds(f.t0).to_string(),
                previous_public_key: hex::encode(&ca.public_key),
                previous_key_id: ca.subject_key_id.as_ref().map(hex::encode),
                automatic: false,
            },
        )
        .unwrap();
    }

    fn request_finish(f: &Fixture) {
        let mut r = rollover::load_record(&f.layout).unwrap().unwrap();
        r.phase = Phase::Finish;
        rollover::write_record(&f.layout, &r).unwrap();
    }

    fn read_cert_info_at(p: &Path) -> crate::pki::inspect::CertInfo {
        crate::pki::inspect::read_cert_info(p).unwrap()
    }

    fn ders(p: &Path) -> Vec<Vec<u8>> {
        cert_ders(&std::fs::read(p).unwrap())
    }

    /// Runs plans until nothing is left (a crash may leave two rounds of work); at most 3.
    fn converge_fully(f: &Fixture, now: SystemTime) {
        for _ in 0..3 {
            let p = f.plan_at(now, Force::default());
            if p.is_empty() {
                return;
            }
            execute(&p, &f.layout, &f.settings, &f.host, now).unwrap();
        }
        panic!(
            "not converged: {:?}",
            f.plan_at(now, Force::default()).actions
        );
    }

    /// Phase 1 on disk: dockerd trusts [new, old]; the server presents [leaf of old, cross];
    /// the cross is the old CA (name, key, key id) signed by the new key; clients are the new
    /// CA's and their copy holds the new CA alone; the two CAs have different names.
    fn assert_overlap(f: &Fixture, old: &crate::pki::inspect::CertInfo) {
        let trust = ders(&f.layout.ca_cert());
        assert_eq!(trust.len(), 2, "ca.pem must hold the new and the old CA");
        assert_eq!(trust[1], old.der, "the old CA is the second one");
        let new = crate::pki::inspect::cert_info(&trust[0]).unwrap();
        assert_ne!(new.public_key, old.public_key, "no new key");
        assert_ne!(
            new.subject_der, old.subject_der,
            "the new CA needs its own name"
        );
        let server = ders(&f.layout.cert_and_key(&Slot::Server).0);
        assert_eq!(server.len(), 2, "leaf and cross");
        assert!(
            verify_signed_by(&server[0], &old.der),
            "leaf not the old CA's"
        );
        assert!(
            verify_signed_by(&server[1], &trust[0]),
            "cross not signed by the new CA"
        );
        let cross = crate::pki::inspect::cert_info(&server[1]).unwrap();
        assert_eq!(cross.subject_der, old.subject_der);
        assert_eq!(cross.public_key, old.public_key);
        assert_eq!(cross.subject_key_id, old.subject_key_id);
        assert!(cross.not_after <= f.t0 + rollover::CROSS_VALIDITY + DAY);
        let admin = Slot::Client("admin".into());
        let c = ders(&f.layout.cert_and_key(&admin).0);
        assert!(
            verify_signed_by(&c[0], &trust[0]),
            "client not the new CA's"
        );
        let ca_pem = std::fs::read(f.layout.ca_cert()).unwrap();
        assert_eq!(
            std::fs::read(f.layout.ca_copy(&admin).unwrap()).unwrap(),
            first_block(&ca_pem),
            "a client's CA copy must be the new CA alone"
        );
        assert_eq!(
            crate::pki::inspect::read_key(&f.layout.ca_previous_key()).public_key(),
            Some(old.public_key.clone())
        );
    }

    /// Finished: the new CA alone, the server its leaf alone, nothing of the old CA left.
    fn assert_finished(f: &Fixture, old: &crate::pki::inspect::CertInfo) {
        let trust = ders(&f.layout.ca_cert());
        assert_eq!(trust.len(), 1);
        assert_ne!(trust[0], old.der);
        let server = ders(&f.layout.cert_and_key(&Slot::Server).0);
        assert_eq!(server.len(), 1);
        assert!(verify_signed_by(&server[0], &trust[0]));
        for p in [
            f.layout.ca_previous_key(),
            f.layout.ca_previous_cert(),
            f.layout.ca_cross(),
            f.layout.rollover_record(),
        ] {
            assert!(!p.exists(), "{p:?} left");
        }
        assert!(
            rollover::key_copies(&f.layout.state_dir, &old.public_key).is_empty(),
            "a copy of the old CA key is left"
        );
    }

    use crate::pki::inspect::verify_signed_by;

    #[test]
    fn rollover_phase_1_then_phase_2() {
        let f = Fixture::new().issued();
        let old = read_cert_info_at(&f.layout.ca_cert());
        begin_rollover(&f);
        let p = f.plan_at(f.t0, Force::default());
        assert_eq!(p.rollover, Some(Phase::Overlap));
        assert!(p.changes_server());
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(
            p.actions[..4],
            [
                Action::SavePreviousCa,
                Action::IssueCa {
                    new_key: true,
                    reason: Reason::RolloverStart
                },
                Action::CrossSign,
                Action::WriteTrust {
                    with_previous: true
                },
            ]
        );
        // A deferred Docker restart holds the whole rollover back (and the leaves under it).
        let held = p.without_server_changes().unwrap();
        assert!(!held.changes_server(), "{:?}", held.actions);
        assert!(held.actions.is_empty(), "{:?}", held.actions);
        f.converge(f.t0);
        assert_overlap(&f, &old);
        // The cross certificate is re-signed before it expires, with a new server leaf (the
        // restart that presents it).
        let later = f.t0 + rollover::CROSS_VALIDITY - rollover::CROSS_RENEW_BEFORE;
        let r = reasons(&f.plan_at(later, Force::default()));
        assert!(
            f.plan_at(later, Force::default())
                .actions
                .contains(&Action::CrossSign)
        );
        assert!(
            r.contains(&("server".into(), Reason::RolloverChain)),
            "{r:?}"
        );

        // Near the old CA's end the cross certificate cannot outlive it: re-signed once, not at
        // every run (each would restart Docker).
        let late = old.not_after - DAY;
        f.converge(late);
        assert_eq!(
            read_cert_info_at(&f.layout.ca_cross()).not_after,
            old.not_after
        );
        f.converge(late + DAY / 2);

        request_finish(&f);
        // A copy of the old key in the backups (an older run's) goes too.
        let stray = f
            .layout
            .backup_dir()
            .join("2020-01-01T000000Z/x/ca-key.pem");
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::copy(f.layout.ca_previous_key(), &stray).unwrap();
        let p = f.plan_at(f.t0, Force::default());
        assert_eq!(
            p.actions[0],
            Action::DestroyPreviousCa,
            "the key goes first"
        );
        assert!(p.changes_server());
        assert_eq!(p.actions.last(), Some(&Action::EndRollover));
        f.converge(f.t0);
        assert_finished(&f, &old);
        assert!(!stray.exists());
    }

    /// Kill after any action of either phase (each action's writes are atomic): the next run
    /// converges on the phase asked for.
    #[test]
    fn a_crash_between_any_two_steps_of_a_rollover_converges() {
        for finish in [false, true] {
            let n = {
                let f = Fixture::new().issued();
                begin_rollover(&f);
                if finish {
                    f.converge(f.t0);
                    request_finish(&f);
                }
                f.plan_at(f.t0, Force::default()).actions.len()
            };
            for k in 0..n {
                let f = Fixture::new().issued();
                let old = read_cert_info_at(&f.layout.ca_cert());
                begin_rollover(&f);
                if finish {
                    f.converge(f.t0);
                    request_finish(&f);
                }
                let mut p = f.plan_at(f.t0, Force::default());
                p.actions.truncate(k);
                execute(&p, &f.layout, &f.settings, &f.host, f.t0).unwrap();
                converge_fully(&f, f.t0);
                if finish {
                    assert_finished(&f, &old);
                } else {
                    assert_overlap(&f, &old);
                }
            }
        }
    }

    /// Killed inside the new CA's issuance, between its key and its certificate: ca.pem still
    /// holds the old CA. The next run makes the new CA around that key, under a new name.
    #[test]
    fn a_crash_between_the_new_ca_key_and_its_certificate_converges() {
        let f = Fixture::new().issued();
        let old = read_cert_info_at(&f.layout.ca_cert());
        begin_rollover(&f);
        let mut p = f.plan_at(f.t0, Force::default());
        p.actions.truncate(1);
        execute(&p, &f.layout, &f.settings, &f.host, f.t0).unwrap();
        let key = crate::pki::issue::generate_key(KeyType::EcdsaP256).unwrap();
        crate::files::atomic_write(&f.layout.ca_key(), key.serialize_pem().as_bytes(), 0o600)
            .unwrap();
        let p = f.plan_at(f.t0, Force::default());
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        converge_fully(&f, f.t0);
        assert_overlap(&f, &old);
        assert_eq!(
            read_cert_info_at(&f.layout.ca_cert()).public_key,
            key.public_key_raw(),
            "the new key was replaced again"
        );
    }

    /// The immediate replacement during a rollover ends it: no previous CA stays trusted.
    #[test]
    fn replacing_the_ca_now_ends_a_rollover() {
        let f = Fixture::new().issued();
        let old = read_cert_info_at(&f.layout.ca_cert());
        begin_rollover(&f);
        f.converge(f.t0);
        let p = f.plan_at(
            f.t0,
            Force {
                ca: true,
                ..Force::default()
            },
        );
        assert_eq!(p.rollover, None);
        assert_eq!(
            p.actions[..3],
            [
                Action::DestroyPreviousCa,
                Action::EndRollover,
                Action::IssueCa {
                    new_key: true,
                    reason: Reason::Forced
                }
            ]
        );
        execute(&p, &f.layout, &f.settings, &f.host, f.t0).unwrap();
        converge_fully(&f, f.t0);
        assert_finished(&f, &old);
    }

    /// Phase 1 with the old CA's files gone: an error that says what to do, not a guess.
    #[test]
    fn a_lost_previous_ca_in_phase_1_is_an_error_naming_the_way_out() {
        let f = Fixture::new().issued();
        begin_rollover(&f);
        f.converge(f.t0);
        std::fs::remove_file(f.layout.ca_previous_key()).unwrap();
        let disk = inspect(&f.layout, &f.settings.clients.names, false);
        let e = plan(&disk, &f.settings, &f.host, f.t0, Force::default()).unwrap_err();
        assert!(e.to_string().contains("ca rollover finish --force"), "{e}");
        request_finish(&f);
        converge_fully(&f, f.t0);
        assert_eq!(ders(&f.layout.ca_cert()).len(), 1);
    }

    /// What dockerd trusts is derived, whatever the phase: an extra CA in ca.pem (a rollback
    /// after phase 2, a hand edit) leaves with a new server leaf (the restart that loads it).
    #[test]
    fn an_extra_ca_in_what_docker_trusts_is_removed() {
        let f = Fixture::new().issued();
        let ca = std::fs::read(f.layout.ca_cert()).unwrap();
        let other = Fixture::new().issued();
        let extra = std::fs::read(other.layout.ca_cert()).unwrap();
        std::fs::write(f.layout.ca_cert(), [ca, extra].concat()).unwrap();
        let p = f.plan_at(f.t0, Force::default());
        assert!(
            p.actions.contains(&Action::WriteTrust {
                with_previous: false
            }),
            "{:?}",
            p.actions
        );
        assert!(reasons(&p).contains(&("server".into(), Reason::RolloverChain)));
        f.converge(f.t0);
        assert_eq!(ders(&f.layout.ca_cert()).len(), 1);
    }
}
