//! The status report: every certificate with its subject, SANs, serial, validity, days left,
//! next renewal and files, plus what `apply` would do about it. Rendered as text or JSON.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Settings;
use crate::pki::Slot;
use crate::pki::inspect::{CertState, DiskState};
use crate::pki::plan::{Action, Plan, renewal_time};

#[derive(Serialize, Debug)]
pub struct CertStatus {
    /// "ca", "server", "client", "probe"
    pub kind: String,
    pub name: String,
    /// ok, renew-due, expired, missing, needs-repair
    pub state: String,
    /// What apply would do, if anything.
    pub action: Option<String>,
    pub subject: Option<String>,
    pub sans: Vec<String>,
    pub serial: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    pub days_left: Option<i64>,
    pub next_renewal: Option<String>,
    pub key_type: Option<String>,
    pub fingerprint_sha256: Option<String>,
    pub cert_file: String,
    pub key_file: String,
    /// The ACME CA's renewal information (RFC 9773) for this certificate, when it offers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<RenewalInfoStatus>,
}

/// What the ACME CA said about renewing the server certificate (see `ari`).
#[derive(Serialize, Debug)]
pub struct RenewalInfoStatus {
    pub window_start: String,
    pub window_end: String,
    /// The time chosen in the window (what `next_renewal` is), unless the window was ignored.
    pub chosen: Option<String>,
    /// Why the window was ignored (the certificate renews at two thirds of its lifetime).
    pub ignored: Option<String>,
    pub explanation_url: Option<String>,
    /// When the ACME CA is asked again.
    pub next_check: String,
}

/// Docker's side, with `[docker] manage = true`.
#[derive(Serialize, Debug, Default)]
pub struct DockerStatus {
    /// ActiveState of docker.service and docker-tcp.socket.
    pub docker_service: String,
    pub socket_unit: String,
    /// Docker serves the server certificate on disk over mutual TLS (checked by a handshake).
    pub serving_current_certificate: bool,
    pub served_sha256: Option<String>,
    /// Containers run without live-restore, so the restart new certificates need waits.
    pub restart_deferred: bool,
    /// `deconfigure` ran: Docker is left alone until `apply`.
    pub deconfigured: bool,
    /// What apply would do.
    pub pending: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub config: Option<String>,
    /// When the next certificate is due for renewal (`pki::plan::next_due`).
    pub next_renewal: Option<String>,
    pub certificates: Vec<CertStatus>,
    pub docker: Option<DockerStatus>,
    pub warnings: Vec<String>,
}

fn rfc3339(t: SystemTime) -> String {
    if t < UNIX_EPOCH {
        return "before 1970".into();
    }
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whole days from `now` to `t` (negative when past).
pub fn days_between(now: SystemTime, t: SystemTime) -> i64 {
    match t.duration_since(now) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -(e.duration().as_secs().div_ceil(86_400) as i64),
    }
}

pub fn report(
    disk: &DiskState,
    plan: &Plan,
    settings: &Settings,
    now: SystemTime,
    handed_out: Vec<String>,
) -> Report {
    let mut certificates = Vec::new();
    for (slot, obs) in &disk.slots {
        let (kind, name) = match slot {
            Slot::Ca => ("ca", "ca".to_string()),
            Slot::Server => ("server", "server".to_string()),
            Slot::Client(n) => ("client", n.clone()),
            Slot::Probe => ("probe", "probe".to_string()),
        };
        let action = plan.actions.iter().find(|a| match a {
            Action::IssueCa { .. } => *slot == Slot::Ca,
            Action::Issue { slot: s, .. } => s == slot,
            _ => false,
        });
        let mut st = CertStatus {
            kind: kind.into(),
            name,
            state: String::new(),
            action: action.map(|a| a.to_string()),
            subject: None,
            sans: vec![],
            serial: None,
            not_before: None,
            not_after: None,
            days_left: None,
            next_renewal: None,
            key_type: None,
            fingerprint_sha256: None,
            cert_file: obs.cert_path.display().to_string(),
            key_file: obs.key_path.display().to_string(),
            renewal_info: None,
        };
        st.state = match (&obs.cert, action) {
            (CertState::Missing, _) => "missing".into(),
            (CertState::Present(i), _) if now >= i.not_after => "expired".into(),
            (_, Some(Action::Issue { reason, .. } | Action::IssueCa { reason, .. }))
                if reason.is_renewal() =>
            {
                "renew-due".into()
            }
            (_, Some(_)) => "needs-repair".into(),
            (CertState::Unparsable(_), None) => "needs-repair".into(),
            (CertState::Present(_), None) => "ok".into(),
        };
        if let Some(i) = obs.info() {
            st.subject = Some(i.subject.clone());
            st.sans = i.sans.iter().map(|s| s.to_string()).collect();
            st.serial = Some(i.serial.clone());
            st.not_before = Some(rfc3339(i.not_before));
            st.not_after = Some(rfc3339(i.not_after));
            st.days_left = Some(days_between(now, i.not_after));
            st.next_renewal = Some(rfc3339(
                crate::pki::plan::renewal_at(settings, slot, i, disk.acme_renewal.as_ref())
                    .max(now),
            ));
            if *slot == Slot::Server && settings.acme.is_some() {
                st.renewal_info = crate::ari::for_cert(i, disk.acme_renewal.as_ref()).map(|r| {
                    RenewalInfoStatus {
                        window_start: rfc3339(r.window_start),
                        window_end: rfc3339(r.window_end),
                        chosen: r.chosen.map(rfc3339),
                        ignored: r.ignored.clone(),
                        explanation_url: crate::ari::sane_url(r.explanation_url.as_deref()),
                        next_check: rfc3339(r.poll_after),
                    }
                });
            }
            st.key_type = i.key_type.map(|k| k.to_string());
            st.fingerprint_sha256 = Some(i.fingerprint.clone());
        }
        certificates.push(st);
    }
    Report {
        config: settings.source.as_ref().map(|p| p.display().to_string()),
        next_renewal: crate::pki::plan::next_due(disk, settings).map(|t| rfc3339(t.max(now))),
        certificates,
        docker: None,
        warnings: plan.warnings.iter().cloned().chain(handed_out).collect(),
    }
}

pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "config: {}",
        r.config.as_deref().unwrap_or("(none: defaults)")
    );
    if let Some(n) = &r.next_renewal {
        let _ = writeln!(s, "next renewal: {n}");
    }
    for c in &r.certificates {
        let title = if c.kind == "client" {
            format!("client {}", c.name)
        } else {
            c.kind.clone()
        };
        let _ = writeln!(s, "\n{title}: {}", c.state);
        if let Some(a) = &c.action {
            let _ = writeln!(s, "  apply would: {a}");
        }
        if let Some(subject) = &c.subject {
            let _ = writeln!(s, "  subject:      {subject}");
            if !c.sans.is_empty() {
                let _ = writeln!(s, "  SANs:         {}", c.sans.join(", "));
            }
            let _ = writeln!(s, "  serial:       {}", c.serial.as_deref().unwrap_or(""));
            let _ = writeln!(
                s,
                "  key:          {}",
                c.key_type.as_deref().unwrap_or("unknown")
            );
            let _ = writeln!(
                s,
                "  not before:   {}",
                c.not_before.as_deref().unwrap_or("")
            );
            let _ = writeln!(
                s,
                "  not after:    {} ({} days left)",
                c.not_after.as_deref().unwrap_or(""),
                c.days_left.unwrap_or(0)
            );
            let _ = writeln!(
                s,
                "  next renewal: {}",
                c.next_renewal.as_deref().unwrap_or("")
            );
            let _ = writeln!(
                s,
                "  sha256:       {}",
                c.fingerprint_sha256.as_deref().unwrap_or("")
            );
            if let Some(r) = &c.renewal_info {
                let _ = writeln!(
                    s,
                    "  ACME renewal window: {} .. {}, {}; asked again at {}",
                    r.window_start,
                    r.window_end,
                    match (&r.chosen, &r.ignored) {
                        (Some(t), _) => format!("renewing at {t}"),
                        (None, Some(why)) => format!("ignored ({why})"),
                        (None, None) => "ignored".into(),
                    },
                    r.next_check
                );
                if let Some(u) = &r.explanation_url {
                    let _ = writeln!(s, "  ACME renewal explanation: {u}");
                }
            }
        }
        let _ = writeln!(s, "  files:        {}, {}", c.cert_file, c.key_file);
    }
    if let Some(d) = &r.docker {
        let _ = writeln!(
            s,
            "\ndocker: docker.service {}, docker-tcp.socket {}",
            d.docker_service, d.socket_unit
        );
        let _ = writeln!(
            s,
            "  serving the current certificate over mutual TLS: {}",
            if d.serving_current_certificate {
                "yes"
            } else {
                "no"
            }
        );
        if d.deconfigured {
            let _ = writeln!(
                s,
                "  deconfigured: the service leaves Docker alone until `docker-tls-manager apply`"
            );
        }
        if d.restart_deferred {
            let _ = writeln!(
                s,
                "  restart deferred: containers are running and live-restore is off"
            );
        }
        for p in &d.pending {
            let _ = writeln!(s, "  apply would: {p}");
        }
        for w in &d.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
    }
    for w in &r.warnings {
        let _ = writeln!(s, "\nwarning: {w}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rollover_is_announced_ahead_and_names_the_old_bundles() {
        use crate::pki::rollover::{Phase, Record, write_record};
        const DAY: Duration = Duration::from_secs(86_400);
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::config::parse(
            &format!(
                "[paths]\ncert_dir = \"{0}/c\"\nstate_dir = \"{0}/s\"\n[docker]\nmanage = false\n\
                 [ca]\nkey_lifetime = \"365d\"\nrollover_overlap = \"30d\"\n",
                dir.path().display()
            ),
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let l = &settings.paths;
        std::fs::create_dir_all(&l.state_dir).unwrap();
        let key = std::fs::File::create(l.ca_key()).unwrap();
        let now = SystemTime::now();
        key.set_modified(now - 300 * DAY).unwrap();
        assert!(rollover_warnings(l, &[], &settings, now).is_empty());
        key.set_modified(now - 340 * DAY).unwrap();
        let w = rollover_warnings(l, &[], &settings, now);
        assert!(w[0].contains("reaches [ca] key_lifetime"), "{w:?}");

        let t = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        write_record(
            l,
            &Record {
                phase: Phase::Overlap,
                started: t(now - DAY),
                previous_public_key: "00".into(),
                previous_key_id: Some("aa".into()),
                automatic: true,
            },
        )
        .unwrap();
        for (name, id, at) in [
            ("a", Some("aa"), now),
            ("b", Some("bb"), now),
            ("c", None, now - 2 * DAY),
            ("d", None, now),
        ] {
            std::fs::create_dir_all(l.client_dir(name)).unwrap();
            let h = HandedOut {
                fingerprint_sha256: "f".into(),
                not_after: t(now + 300 * DAY),
                at: t(at),
                ca_key_id: id.map(str::to_string),
            };
            std::fs::write(l.handed_out(name), serde_json::to_vec(&h).unwrap()).unwrap();
        }
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let w = rollover_warnings(l, &names, &settings, now);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("from the previous CA: a, c ("), "{w:?}");
        assert!(w[0].contains("the service finishes it at"), "{w:?}");
    }

    #[test]
    fn days() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            days_between(now, now + Duration::from_secs(86_400 * 3 + 5)),
            3
        );
        assert_eq!(days_between(now, now - Duration::from_secs(10)), -1);
    }
}

/// Record of the certificate in the last bundle handed out for a client.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct HandedOut {
    pub fingerprint_sha256: String,
    pub not_after: String,
    pub at: String,
    /// Hex of the certificate's authority key identifier: which CA's bundle it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key_id: Option<String>,
}

/// Bundles already handed out cannot be renewed remotely: warn when one is about to expire
/// (within the clients' renew_before) or has expired.
pub fn handed_out_warnings(
    layout: &crate::pki::Layout,
    clients: &[String],
    settings: &Settings,
    now: SystemTime,
) -> Vec<String> {
    let mut out = Vec::new();
    for name in clients {
        let Ok(data) = std::fs::read(layout.handed_out(name)) else {
            continue;
        };
        let Ok(h) = serde_json::from_slice::<HandedOut>(&data) else {
            continue;
        };
        let Ok(not_after) = humantime::parse_rfc3339(&h.not_after) else {
            continue;
        };
        if now >= not_after {
            out.push(format!(
                "client '{name}': the bundle handed out at {} expired at {}; hand out a new one (`docker-tls-manager client bundle {name}`)",
                h.at, h.not_after
            ));
        } else if now >= renewal_time(not_after, &settings.clients.policy) {
            out.push(format!(
                "client '{name}': the bundle handed out at {} expires at {} ({} days); hand out a new one (`docker-tls-manager client bundle {name}`)",
                h.at,
                h.not_after,
                days_between(now, not_after)
            ));
        }
    }
    out
}

// --- CA key rollover (see `pki::rollover`) ---

/// Clients whose last bundle handed out is from the previous CA of the rollover `r`: its
/// certificate names the previous CA's key as authority (records from before that was noted:
/// handed out before the rollover started).
pub fn old_ca_holders(
    layout: &crate::pki::Layout,
    clients: &[String],
    r: &crate::pki::rollover::Record,
) -> Vec<String> {
    let started = r.started_at();
    clients
        .iter()
        .filter(|name| {
            let Some(h) = std::fs::read(layout.handed_out(name))
                .ok()
                .and_then(|d| serde_json::from_slice::<HandedOut>(&d).ok())
            else {
                return false;
            };
            match (&h.ca_key_id, &r.previous_key_id) {
                (Some(k), Some(p)) => k == p,
                _ => humantime::parse_rfc3339(&h.at)
                    .ok()
                    .zip(started)
                    .is_some_and(|(at, s)| at < s),
            }
        })
        .cloned()
        .collect()
}

/// The rollover's warnings for `status`, the log and `STATUS=`: the phase, when it finishes,
/// and who still holds a bundle of the previous CA.
pub fn rollover_warnings(
    layout: &crate::pki::Layout,
    clients: &[String],
    settings: &Settings,
    now: SystemTime,
) -> Vec<String> {
    use crate::pki::rollover::{self, Schedule};
    let record = rollover::load_record(layout).ok().flatten();
    let schedule = rollover::schedule(
        settings.ca_rollover.key_lifetime,
        settings.ca_rollover.overlap,
        rollover::key_born(layout),
        record.as_ref(),
        now,
    );
    let mut out = Vec::new();
    match (&record, schedule) {
        (Some(r), s) => {
            let holders = old_ca_holders(layout, clients, r);
            let when = match s {
                Schedule::FinishesAt(t) => format!(
                    "; the service finishes it at {} ({} days)",
                    rfc3339(t),
                    days_between(now, t)
                ),
                _ => String::new(),
            };
            let who = if holders.is_empty() {
                "no client holds a bundle from the previous CA".to_string()
            } else {
                format!(
                    "clients still holding a bundle from the previous CA: {} (hand each a new one:                      `docker-tls-manager client bundle NAME`)",
                    holders.join(", ")
                )
            };
            out.push(format!(
                "CA key rollover, {} since {}{when}; {who}",
                r.phase, r.started
            ));
        }
        (None, Schedule::StartsAt(t)) if t <= now + settings.ca_rollover.overlap => {
            out.push(format!(
                "the CA key reaches [ca] key_lifetime at {}: the service then starts a CA key                  rollover (bundles handed out before keep working for [ca] rollover_overlap)",
                rfc3339(t)
            ));
        }
        _ => {}
    }
    out
}
