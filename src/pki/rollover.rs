//! A CA key rollover without a flag day, in two phases, each one Docker restart.
//!
//! ```text
//!  phase 1 (overlap)                          phase 2 (finished)
//!  dockerd tlscacert = new CA + old CA        dockerd tlscacert = new CA
//!  dockerd presents:                          dockerd presents:
//!     server leaf  (issuer: old CA)              server leaf (issuer: new CA)
//!     cross        (old CA's name and key,
//!                   issuer: new CA)
//!  old bundle:  leaf ─▶ old CA (its ca.pem)   old bundle: refused both ways
//!  new bundle:  leaf ─▶ cross ─▶ new CA       new bundle: leaf ─▶ new CA
//! ```
//!
//! Why the old CA certifies nothing new: every CA this tool made before carries
//! `pathlen:0`, which Go, OpenSSL and Python (checked) apply to the trust anchor, so an old
//! bundle cannot accept an intermediate under it ("too many intermediates for path length
//! constraint"). The new CA is made with `pathlen:1`, so new bundles accept the one
//! intermediate. The cross certificate lives [`CROSS_VALIDITY`] and is re-signed while phase 1
//! lasts: after phase 2 it is the only thing that still ties the old key to new bundles, and
//! it expires within that time.
//!
//! State: `rollover.json` (the phase, when it started, the old key's public key), the old CA
//! and its key (`ca-previous.pem`, `ca-previous-key.pem`), the cross certificate
//! (`ca-cross.pem`); `ca-key.pem`/`ca.pem` hold the new CA from the start of phase 1. The
//! planner (`pki::plan`) derives every file from these, so a crash at any write converges on
//! the next run.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Layout;
use super::inspect::{CertInfo, KeyState, read_cert_info, read_key};
use crate::layout::KEY_MODE;

/// How long the cross certificate is valid.
pub const CROSS_VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// When, before its expiry, the cross certificate is re-signed (phase 1 only).
pub const CROSS_RENEW_BEFORE: Duration = Duration::from_secs(10 * 86_400);

/// The phase a rollover is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Both CAs are trusted; new bundles carry the new one.
    Overlap,
    /// Asked to finish: the old CA leaves, its key is destroyed.
    Finish,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Overlap => "phase 1: both CAs trusted",
            Phase::Finish => "phase 2: finishing",
        })
    }
}

/// `state_dir/rollover.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub phase: Phase,
    /// When phase 1 was asked for (RFC 3339).
    pub started: String,
    /// Hex of the raw public key of the old CA key (as `CertInfo::public_key`).
    pub previous_public_key: String,
    /// Hex of the old CA's subject key identifier: bundles whose certificate names it as
    /// authority are from the old CA.
    #[serde(default)]
    pub previous_key_id: Option<String>,
    /// Started by the service because the key reached `[ca] key_lifetime`.
    #[serde(default)]
    pub automatic: bool,
}

impl Record {
    pub fn started_at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.started).ok()
    }
    pub fn previous_public_key(&self) -> Option<Vec<u8>> {
        hex::decode(&self.previous_public_key).ok()
    }
}

/// Reads the record: `Ok(None)` when no rollover runs.
pub fn load_record(layout: &Layout) -> Result<Option<Record>> {
    let path = layout.rollover_record();
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read '{}'", path.display())),
        Ok(b) => serde_json::from_slice(&b).map(Some).with_context(|| {
            format!(
                "'{}' is not a rollover record; restore it from the backup or remove it and run \
                 `docker-tls-manager ca rollover finish --force`",
                path.display()
            )
        }),
    }
}

pub fn write_record(layout: &Layout, r: &Record) -> Result<()> {
    crate::files::atomic_write(
        &layout.rollover_record(),
        &serde_json::to_vec_pretty(r)?,
        KEY_MODE,
    )
}

/// The record of a phase 1 starting at `now` for the CA on disk; an error (saying what to do)
/// when the CA is not complete or an earlier rollover left files.
pub fn start_record(
    disk: &super::inspect::DiskState,
    layout: &Layout,
    now: SystemTime,
    automatic: bool,
) -> Result<Record> {
    use super::inspect::CertState;
    let ca = disk.get(&super::Slot::Ca);
    let (CertState::Present(info), KeyState::Readable { public_key }) = (&ca.cert, &ca.key) else {
        anyhow::bail!(
            "the CA is not complete ('{}', '{}'): run `docker-tls-manager apply` first",
            ca.cert_path.display(),
            ca.key_path.display()
        );
    };
    if info.public_key != *public_key {
        anyhow::bail!(
            "the CA certificate '{}' does not match its key '{}': run `docker-tls-manager apply` first",
            ca.cert_path.display(),
            ca.key_path.display()
        );
    }
    if super::transfer::shared_key(layout).as_deref() == Some(public_key.as_slice()) {
        return Err(crate::error::UsageError(format!(
            "this CA is shared with other hosts (`ca export`/`ca import`, recorded in '{}'): a \
             rollover here alone would leave them trusting only the old key. Roll over with \
             `ca replace --now` on one host and `ca export`/`ca import` to the others, or remove \
             that file to roll over this host alone",
            layout.ca_shared().display()
        ))
        .into());
    }
    if disk.rollover.previous_left() {
        anyhow::bail!(
            "files of an earlier rollover are left ('{}', '{}'): run `docker-tls-manager apply` first",
            layout.ca_previous_cert().display(),
            layout.ca_previous_key().display()
        );
    }
    Ok(Record {
        phase: Phase::Overlap,
        started: humantime::format_rfc3339_seconds(now).to_string(),
        previous_public_key: hex::encode(public_key),
        previous_key_id: info.subject_key_id.as_ref().map(hex::encode),
        automatic,
    })
}

/// What the planner needs to know about a rollover on disk.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub record: Option<Record>,
    /// The record exists but cannot be read.
    pub record_error: Option<String>,
    pub previous_key: Option<KeyState>,
    pub previous_cert: Option<CertInfo>,
    pub cross: Option<CertInfo>,
    /// The cross certificate is signed by the current CA (first certificate of ca.pem).
    pub cross_signed_by_current: bool,
    /// The certificates in ca.pem (what dockerd trusts), DER, in order.
    pub trust: Vec<Vec<u8>>,
    /// The certificates after the leaf in server-cert.pem, DER.
    pub server_chain: Vec<Vec<u8>>,
    /// The server certificate is signed by the previous CA.
    pub server_signed_by_previous: bool,
    /// Copies of the old CA key in the backups (when the record names it).
    pub previous_key_copies: Vec<PathBuf>,
    /// When the current CA key was made (`key_born`).
    pub key_born: Option<SystemTime>,
}

impl Observed {
    /// The phase: the record's, or phase 1 when the old CA's files are there without one.
    pub fn phase(&self) -> Option<Phase> {
        match &self.record {
            Some(r) => Some(r.phase),
            None if self.previous_key.is_some() || self.previous_cert.is_some() => {
                Some(Phase::Overlap)
            }
            None => None,
        }
    }

    /// The old CA key's public key: from the record, else from the key file.
    pub fn previous_public_key(&self) -> Option<Vec<u8>> {
        self.record
            .as_ref()
            .and_then(Record::previous_public_key)
            .or_else(|| self.previous_key.as_ref().and_then(KeyState::public_key))
    }

    /// Whether the old CA and its key are saved beside the new one, matching `public_key`.
    pub fn previous_saved(&self, public_key: &[u8]) -> bool {
        matches!(&self.previous_key, Some(KeyState::Readable { public_key: k }) if k == public_key)
            && self
                .previous_cert
                .as_ref()
                .is_some_and(|c| c.public_key == public_key)
    }

    /// Whether any file of the old CA (or a copy of its key) is left.
    pub fn previous_left(&self) -> bool {
        self.previous_key.is_some()
            || self.previous_cert.is_some()
            || self.cross.is_some()
            || !self.previous_key_copies.is_empty()
    }

    /// Whether the cross certificate certifies the saved old CA under the current CA and is
    /// not due at `now`.
    pub fn cross_current(&self, now: SystemTime) -> bool {
        match (&self.cross, &self.previous_cert) {
            (Some(x), Some(p)) => {
                self.cross_signed_by_current
                    // For server authentication only (see `execute::cross_sign`).
                    && x.server_auth
                    && !x.client_auth
                    && x.subject_der == p.subject_der
                    && x.public_key == p.public_key
                    && x.subject_key_id == p.subject_key_id
                    // Due; unless it already lasts as long as the old CA: re-signing would
                    // not extend it (and would restart Docker at every run).
                    && (now + CROSS_RENEW_BEFORE < x.not_after || x.not_after >= p.not_after)
            }
            _ => false,
        }
    }
}

/// Every certificate (DER) of a PEM file, in order.
pub fn cert_ders(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .map_while(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// The first PEM block of a file we wrote (the current CA in ca.pem, the leaf in
/// server-cert.pem), as text: what clients get as their CA copy.
pub fn first_block(pem: &[u8]) -> &[u8] {
    const END: &[u8] = b"-----END CERTIFICATE-----";
    match pem.windows(END.len()).position(|w| w == END) {
        Some(i) => {
            let mut end = i + END.len();
            if pem.get(end) == Some(&b'\r') {
                end += 1;
            }
            if pem.get(end) == Some(&b'\n') {
                end += 1;
            }
            &pem[..end]
        }
        None => pem,
    }
}

fn key_if_present(path: &Path) -> Option<KeyState> {
    match read_key(path) {
        KeyState::Missing => None,
        k => Some(k),
    }
}

/// Reads the rollover's files. `ca_der`: the current CA certificate (first of ca.pem).
pub fn inspect(layout: &Layout, ca_der: Option<&[u8]>, server_cert: &Path) -> Observed {
    let (record, record_error) = match load_record(layout) {
        Ok(r) => (r, None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let previous_cert = read_cert_info(&layout.ca_previous_cert());
    let cross = read_cert_info(&layout.ca_cross());
    let cross_signed_by_current = match (&cross, ca_der) {
        (Some(x), Some(ca)) => super::inspect::verify_signed_by(&x.der, ca),
        _ => false,
    };
    let trust = std::fs::read(layout.ca_cert())
        .map(|b| cert_ders(&b))
        .unwrap_or_default();
    let server = std::fs::read(server_cert)
        .map(|b| cert_ders(&b))
        .unwrap_or_default();
    let server_signed_by_previous = match (server.first(), &previous_cert) {
        (Some(leaf), Some(p)) => super::inspect::verify_signed_by(leaf, &p.der),
        _ => false,
    };
    let mut o = Observed {
        record,
        record_error,
        previous_key: key_if_present(&layout.ca_previous_key()),
        previous_cert,
        cross,
        cross_signed_by_current,
        trust,
        server_chain: server.into_iter().skip(1).collect(),
        server_signed_by_previous,
        previous_key_copies: vec![],
        key_born: key_born(layout),
    };
    if let Some(pk) = o.record.as_ref().and_then(Record::previous_public_key) {
        o.previous_key_copies = key_copies(&layout.backup_dir(), &pk);
    }
    o
}

/// Files under `dir` (the backups) holding the private key whose public key is `public_key`.
pub fn key_copies(dir: &Path, public_key: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file()
                && e.file_name().to_string_lossy().ends_with(".pem")
                && matches!(read_key(&e.path()), KeyState::Readable { public_key: k } if k == public_key)
            {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// When the service starts and finishes rollovers on its own (`[ca] key_lifetime`,
/// `rollover_overlap`): what is due at `now`, and what comes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// No automatic rollover configured, or nothing planned.
    Off,
    /// Start phase 1 now.
    StartNow,
    /// Phase 1 starts at this time.
    StartsAt(SystemTime),
    /// Finish (phase 2) now.
    FinishNow,
    /// Phase 2 is due at this time.
    FinishesAt(SystemTime),
}

/// Pure: the schedule, from the key's birth (`key_born`: when the current CA key was made),
/// the settings and the record.
pub fn schedule(
    key_lifetime: Option<Duration>,
    overlap: Duration,
    key_born: Option<SystemTime>,
    record: Option<&Record>,
    now: SystemTime,
) -> Schedule {
    let Some(lifetime) = key_lifetime else {
        return Schedule::Off;
    };
    match record {
        Some(r) if r.phase == Phase::Finish => Schedule::FinishNow,
        Some(r) => match r.started_at() {
            Some(s) if now >= s + overlap => Schedule::FinishNow,
            Some(s) => Schedule::FinishesAt(s + overlap),
            None => Schedule::FinishNow,
        },
        None => match key_born {
            Some(b) if now >= b + lifetime => Schedule::StartNow,
            Some(b) => Schedule::StartsAt(b + lifetime),
            None => Schedule::Off,
        },
    }
}

/// [`schedule`] for what is on disk: nothing is scheduled while the old CA's files are left
/// without a record (an admin's hand; `ca rollover finish` ends it).
pub fn scheduled(o: &Observed, settings: &crate::config::CaRollover, now: SystemTime) -> Schedule {
    if o.record.is_none() && o.previous_left() {
        return Schedule::Off;
    }
    schedule(
        settings.key_lifetime,
        settings.overlap,
        o.key_born,
        o.record.as_ref(),
        now,
    )
}

/// When the next scheduled step is due (a start, a finish, or re-signing the cross
/// certificate in phase 1), for the service's timer, `status` and the metrics.
pub fn next_step(
    o: &Observed,
    settings: &crate::config::CaRollover,
    now: SystemTime,
) -> Option<SystemTime> {
    let scheduled = match scheduled(o, settings, now) {
        Schedule::Off => None,
        Schedule::StartNow | Schedule::FinishNow => Some(now),
        Schedule::StartsAt(t) | Schedule::FinishesAt(t) => Some(t),
    };
    let cross = match (o.phase(), &o.cross) {
        (Some(Phase::Overlap), Some(x)) => x.not_after.checked_sub(CROSS_RENEW_BEFORE),
        _ => None,
    };
    scheduled.into_iter().chain(cross).min()
}

/// When the current CA key was made: the key file's modification time (only a new key
/// rewrites the file).
pub fn key_born(layout: &Layout) -> Option<SystemTime> {
    std::fs::metadata(layout.ca_key()).ok()?.modified().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn rec(phase: Phase, started: SystemTime) -> Record {
        Record {
            phase,
            started: humantime::format_rfc3339_seconds(started).to_string(),
            previous_public_key: "00".into(),
            previous_key_id: None,
            automatic: true,
        }
    }

    #[test]
    fn schedule_starts_at_the_key_lifetime_and_finishes_after_the_overlap() {
        let t0 = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let life = Some(365 * DAY);
        let ov = 30 * DAY;
        assert_eq!(schedule(None, ov, Some(t0), None, t0), Schedule::Off);
        assert_eq!(
            schedule(life, ov, Some(t0), None, t0 + DAY),
            Schedule::StartsAt(t0 + 365 * DAY)
        );
        assert_eq!(
            schedule(life, ov, Some(t0), None, t0 + 365 * DAY),
            Schedule::StartNow
        );
        assert_eq!(schedule(life, ov, None, None, t0), Schedule::Off);
        let r = rec(Phase::Overlap, t0);
        assert_eq!(
            schedule(life, ov, Some(t0), Some(&r), t0 + DAY),
            Schedule::FinishesAt(t0 + ov)
        );
        assert_eq!(
            schedule(life, ov, Some(t0), Some(&r), t0 + ov),
            Schedule::FinishNow
        );
        let r = rec(Phase::Finish, t0);
        assert_eq!(
            schedule(life, ov, Some(t0), Some(&r), t0),
            Schedule::FinishNow
        );
    }

    #[test]
    fn first_block_is_the_first_certificate() {
        let a = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let b = b"-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        let both = [&a[..], &b[..]].concat();
        assert_eq!(first_block(&both), &a[..]);
        assert_eq!(first_block(a), &a[..]);
        assert_eq!(first_block(b"junk"), b"junk");
    }
}
