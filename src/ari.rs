//! ACME Renewal Information (ARI, RFC 9773): when the ACME CA says the server certificate
//! should be renewed. The ACME side (`acme::renewal_info`) asks; [`choose`] turns the answer
//! into a [`Record`] (pure); the record is kept in `state_dir/acme-renewal-info.json` (the
//! layout's `acme_renewal_info`) and read by the inspection; the planner renews at the record's
//! chosen time when the record belongs to the certificate on disk ([`renewal_time`]), else at
//! two thirds of its lifetime (`pki::plan::acme_renewal_time`). A server without it,
//! unreachable, or with a window that makes no sense for the certificate leaves the fallback
//! in charge; a window late in the life is followed up to three quarters of it, never further.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use crate::pki::inspect::CertInfo;

/// Bounds on when to ask again, whatever the server's Retry-After says.
pub const POLL_MIN: Duration = Duration::from_secs(3600);
pub const POLL_MAX: Duration = Duration::from_secs(24 * 3600);

/// What the ACME CA said about one certificate, and what we made of it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The certificate it is about: its RFC 9773 §4.1 identifier (`CertInfo::ari_id`).
    pub certificate: String,
    /// The suggested window, as the server sent it.
    #[serde(with = "rfc3339")]
    pub window_start: SystemTime,
    #[serde(with = "rfc3339")]
    pub window_end: SystemTime,
    /// When we renew: uniformly random in the window (RFC 9773 §4.2); `None` when the
    /// window was ignored.
    #[serde(with = "rfc3339_opt", default)]
    pub chosen: Option<SystemTime>,
    /// Why the window was ignored (the fallback renewal time applies).
    #[serde(default)]
    pub ignored: Option<String>,
    #[serde(default)]
    pub explanation_url: Option<String>,
    /// When to ask again (Retry-After within [`POLL_MIN`]..[`POLL_MAX`], never after the
    /// fallback renewal time).
    #[serde(with = "rfc3339")]
    pub poll_after: SystemTime,
    /// When a window in the past last made us renew at once: carried to the next
    /// certificate's record, so a CA that says "now" of every certificate gets one renewal
    /// per [`POLL_MIN`], not one per wake-up.
    #[serde(with = "rfc3339_opt", default)]
    pub renewed_at_once: Option<SystemTime>,
}

/// The latest a time may be written as RFC 3339 (9999-12-31T23:59:59Z): what lies outside
/// the epoch..this range is no time a CA means.
const LAST_TIME: Duration = Duration::from_secs(253_402_300_799);

fn in_range(t: SystemTime) -> bool {
    t >= SystemTime::UNIX_EPOCH && t <= SystemTime::UNIX_EPOCH + LAST_TIME
}

/// `t` as RFC 3339, never panicking (times outside 1970..9999 are clamped).
pub fn format_time(t: SystemTime) -> String {
    let t = t.clamp(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH + LAST_TIME);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The CA's explanation URL, if it is one: http(s), at most 2 KiB, no control characters
/// (it is printed by `status` and logged).
pub fn sane_url(url: Option<&str>) -> Option<String> {
    url.filter(|u| {
        (u.starts_with("https://") || u.starts_with("http://"))
            && u.len() <= 2048
            && !u.chars().any(char::is_control)
    })
    .map(str::to_string)
}

/// The server's answer for one certificate.
pub struct Answer {
    pub window_start: SystemTime,
    pub window_end: SystemTime,
    pub explanation_url: Option<String>,
    pub retry_after: Duration,
}

/// The record for `answer` about the certificate `info`: the chosen time at `u` (in [0, 1))
/// of the window. A window that ends before it starts, after the certificate expires, or
/// outside 1970..9999 is ignored (recorded with the reason; the fallback applies). A chosen
/// time in the past means renew now, at most once per [`POLL_MIN`] (`previous`, the record
/// before this one, says when that last happened). The chosen time is never later than three
/// quarters of the lifetime: a CA down then still leaves a quarter for retries.
pub fn choose(
    info: &CertInfo,
    answer: &Answer,
    fallback: SystemTime,
    now: SystemTime,
    u: f64,
    previous: Option<&Record>,
) -> Option<Record> {
    let certificate = info.ari_id.clone()?;
    let ignored = if !in_range(answer.window_start) || !in_range(answer.window_end) {
        Some("the suggested window lies outside the years 1970 to 9999".to_string())
    } else if answer.window_end < answer.window_start {
        Some("the suggested window ends before it starts".to_string())
    } else if answer.window_end > info.not_after {
        Some(format!(
            "the suggested window ends at {}, after the certificate expires ({})",
            format_time(answer.window_end),
            format_time(info.not_after)
        ))
    } else {
        None
    };
    let renewed_at_once = previous.and_then(|p| p.renewed_at_once);
    let mut at_once = None;
    let chosen = ignored.is_none().then(|| {
        let span = answer
            .window_end
            .duration_since(answer.window_start)
            .unwrap_or_default();
        let mut t = answer.window_start + span.mul_f64(u.clamp(0.0, 1.0));
        let life = info
            .not_after
            .duration_since(info.not_before)
            .unwrap_or_default();
        t = t.min(info.not_after - life / 4);
        if t <= now {
            match renewed_at_once.filter(|last| *last + POLL_MIN > now) {
                Some(last) => t = last + POLL_MIN,
                None => at_once = Some(now),
            }
        }
        t
    });
    let poll = now + answer.retry_after.clamp(POLL_MIN, POLL_MAX);
    Some(Record {
        certificate,
        window_start: answer
            .window_start
            .clamp(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH + LAST_TIME),
        window_end: answer
            .window_end
            .clamp(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH + LAST_TIME),
        chosen,
        ignored,
        explanation_url: sane_url(answer.explanation_url.as_deref()),
        // Not after the fallback while that is ahead (once it is past, the certificate is
        // renewed anyway or ARI moved the time later: the bounded hint stands).
        poll_after: if fallback > now {
            poll.min(fallback)
        } else {
            poll
        },
        renewed_at_once: at_once.or(renewed_at_once),
    })
}

/// The record, if it belongs to the certificate `info`.
pub fn for_cert<'a>(info: &CertInfo, record: Option<&'a Record>) -> Option<&'a Record> {
    record.filter(|r| info.ari_id.as_deref() == Some(r.certificate.as_str()))
}

/// When ARI says to renew `info`: the record's chosen time, if the record is about this
/// certificate and the time is before its expiry (a record edited by hand is not trusted
/// further than that).
pub fn renewal_time(info: &CertInfo, record: Option<&Record>) -> Option<SystemTime> {
    for_cert(info, record)
        .and_then(|r| r.chosen)
        .filter(|t| *t < info.not_after)
}

/// When to ask the ACME CA again about `info`: `None` without a record for it (a convergence
/// asks; the service's timer is not driven by a server that never answered).
pub fn next_poll(info: &CertInfo, record: Option<&Record>) -> Option<SystemTime> {
    for_cert(info, record).map(|r| r.poll_after)
}

/// Whether a convergence should ask the ACME CA about `info` now.
pub fn poll_due(info: &CertInfo, record: Option<&Record>, now: SystemTime) -> bool {
    next_poll(info, record).is_none_or(|t| now >= t || t > now + POLL_MAX)
}

/// After a failed question: the record about `info`, asked again in [`POLL_MIN`] (not at
/// every wake-up while the CA is unreachable); `None` without one.
pub fn postponed(info: &CertInfo, record: Option<&Record>, now: SystemTime) -> Option<Record> {
    for_cert(info, record).map(|r| Record {
        poll_after: now + POLL_MIN,
        ..r.clone()
    })
}

/// Reads the record; a file that cannot be parsed is ignored with a warning (the fallback
/// renewal time applies until the next answer replaces it).
pub fn read(path: &Path) -> Option<Record> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice::<Record>(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                "ignoring the ACME renewal information record ({e}); renewing at two thirds of \
                 the certificate's lifetime until the ACME CA is asked again"
            );
            None
        }
    }
}

pub fn write(path: &Path, record: &Record) -> Result<()> {
    crate::files::atomic_write(path, &serde_json::to_vec_pretty(record)?, 0o600)
}

mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&super::format_time(*t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let text = <Option<String> as serde::Deserialize>::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339_weak(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    fn cert(not_before: SystemTime, life: Duration) -> CertInfo {
        let (der, _) = crate::pki::inspect::test_cert();
        let mut info = crate::pki::inspect::cert_info(&der).unwrap();
        info.not_before = not_before;
        info.not_after = not_before + life;
        info.ari_id = Some("aki.serial".into());
        info
    }

    fn answer(start: SystemTime, end: SystemTime, retry: Duration) -> Answer {
        Answer {
            window_start: start,
            window_end: end,
            explanation_url: None,
            retry_after: retry,
        }
    }

    #[test]
    fn the_chosen_time_lies_in_a_future_window_and_is_used() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let info = cert(t0, 100 * H);
        let a = answer(t0 + 40 * H, t0 + 90 * H, 6 * H);
        let fallback = t0 + 64 * H;
        for u in [0.0, 0.25, 0.999] {
            let r = choose(&info, &a, fallback, t0 + H, u, None).unwrap();
            let c = r.chosen.unwrap();
            assert!(c >= a.window_start && c <= a.window_end, "{u}");
            assert_eq!(renewal_time(&info, Some(&r)), Some(c));
            assert_eq!(r.poll_after, t0 + 7 * H);
        }
        // Another draw, another time: uniform in the window, not a fixed point.
        let a1 = choose(&info, &a, fallback, t0, 0.1, None).unwrap().chosen;
        let a2 = choose(&info, &a, fallback, t0, 0.9, None).unwrap().chosen;
        assert_ne!(a1, a2);
    }

    /// What a hostile or broken CA may say: nothing panics, nothing loops, nothing is late.
    #[test]
    fn hostile_answers_are_bounded() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let info = cert(t0, 100 * H);
        let fallback = t0 + 64 * H;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        // Go's zero time (year 1), and a window past year 9999: ignored, written, read back.
        let year1 = SystemTime::UNIX_EPOCH - Duration::from_secs(62_135_596_800);
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        for (a, b) in [(year1, year1), (year1, t0 + 50 * H), (t0, far)] {
            let r = choose(&info, &answer(a, b, 6 * H), fallback, t0, 0.5, None).unwrap();
            assert!(r.chosen.is_none(), "{r:?}");
            assert!(r.ignored.as_deref().unwrap().contains("1970"), "{r:?}");
            write(&p, &r).unwrap();
            assert!(read(&p).is_some());
        }
        assert!(!format_time(year1).is_empty() && !format_time(far).is_empty());
        // A window late in the life: never after three quarters of it.
        let r = choose(
            &info,
            &answer(t0 + 98 * H, t0 + 99 * H, 6 * H),
            fallback,
            t0,
            0.5,
            None,
        )
        .unwrap();
        assert_eq!(r.chosen, Some(t0 + 75 * H));
        // "Now" of every certificate: once at once, then not before POLL_MIN has passed.
        let now = t0 + 2 * H;
        let past = answer(t0, t0 + H / 2, 6 * H);
        let first = choose(&info, &past, fallback, now, 0.5, None).unwrap();
        assert!(first.chosen.unwrap() <= now);
        assert_eq!(first.renewed_at_once, Some(now));
        let renewed = cert(now, 100 * H);
        let soon = now + Duration::from_secs(60);
        let second = choose(&renewed, &past, fallback, soon, 0.5, Some(&first)).unwrap();
        assert_eq!(second.chosen, Some(now + POLL_MIN));
        assert_eq!(second.renewed_at_once, Some(now));
        let later = now + POLL_MIN + Duration::from_secs(1);
        let third = choose(&renewed, &past, fallback, later, 0.5, Some(&second)).unwrap();
        assert!(third.chosen.unwrap() <= later);
        // An explanation URL with a terminal escape, or not a web address: dropped.
        let mut a = answer(t0 + 40 * H, t0 + 50 * H, 6 * H);
        for bad in [
            "https://x/\u{1b}]52;c;aGk=\u{7}",
            "javascript:alert(1)",
            "file:///etc",
        ] {
            a.explanation_url = Some(bad.replace("\\u{1b}", "\u{1b}"));
            let r = choose(&info, &a, fallback, t0, 0.5, None).unwrap();
            assert_eq!(r.explanation_url, None, "{bad}");
        }
        a.explanation_url = Some("https://ca.example/why".into());
        let r = choose(&info, &a, fallback, t0, 0.5, None).unwrap();
        assert_eq!(r.explanation_url.as_deref(), Some("https://ca.example/why"));
        // A record asking again a year from now (written while the clock was ahead): due.
        let mut r = r;
        r.poll_after = t0 + 365 * 24 * H;
        assert!(poll_due(&info, Some(&r), t0));
    }

    /// RFC 9773 Appendix A's example.
    #[test]
    fn certificate_identifier_as_rfc_9773_writes_it() {
        let aki = hex::decode("69885B6B87464041E1B37B847BA0AE2CDE01C8D4").unwrap();
        let serial = hex::decode("0087654321").unwrap();
        assert_eq!(
            crate::pki::inspect::ari_id(&aki, &serial),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
    }

    #[test]
    fn a_window_in_the_past_means_renew_now() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let info = cert(t0, 100 * H);
        let now = t0 + 2 * H;
        let r = choose(
            &info,
            &answer(t0, t0 + H / 2, 6 * H),
            t0 + 64 * H,
            now,
            0.5,
            None,
        )
        .unwrap();
        assert!(renewal_time(&info, Some(&r)).unwrap() <= now);
    }

    #[test]
    fn malformed_windows_and_windows_past_expiry_are_ignored() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let info = cert(t0, 100 * H);
        let backwards = choose(
            &info,
            &answer(t0 + 50 * H, t0 + 40 * H, 6 * H),
            t0 + 64 * H,
            t0,
            0.5,
            None,
        )
        .unwrap();
        assert!(backwards.chosen.is_none());
        assert!(backwards.ignored.unwrap().contains("ends before it starts"));
        let late = choose(
            &info,
            &answer(t0 + 50 * H, t0 + 101 * H, 6 * H),
            t0 + 64 * H,
            t0,
            0.5,
            None,
        )
        .unwrap();
        assert_eq!(renewal_time(&info, Some(&late)), None);
        assert!(
            late.ignored
                .unwrap()
                .contains("after the certificate expires")
        );
    }

    #[test]
    fn a_record_for_another_certificate_is_not_used_and_asks_again() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let info = cert(t0, 100 * H);
        let mut r = choose(
            &info,
            &answer(t0 + 40 * H, t0 + 90 * H, 6 * H),
            t0 + 64 * H,
            t0,
            0.5,
            None,
        )
        .unwrap();
        assert!(!poll_due(&info, Some(&r), t0 + H));
        assert!(poll_due(&info, Some(&r), t0 + 6 * H));
        r.certificate = "other.serial".into();
        assert_eq!(renewal_time(&info, Some(&r)), None);
        assert!(poll_due(&info, Some(&r), t0 + H));
        assert_eq!(next_poll(&info, Some(&r)), None);
        assert!(poll_due(&info, None, t0));
    }

    #[test]
    fn polling_is_clamped_and_never_after_the_fallback() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let info = cert(t0, 100 * H);
        let w = |retry, fallback| {
            choose(
                &info,
                &answer(t0 + 40 * H, t0 + 90 * H, retry),
                fallback,
                t0,
                0.5,
                None,
            )
            .unwrap()
            .poll_after
        };
        assert_eq!(w(Duration::ZERO, t0 + 64 * H), t0 + H);
        assert_eq!(w(1000 * H, t0 + 64 * H), t0 + 24 * H);
        assert_eq!(w(6 * H, t0 + 3 * H), t0 + 3 * H);
        // A fallback already past never makes the next question due at once (no busy loop).
        assert_eq!(w(6 * H, t0 - H), t0 + 6 * H);
    }

    #[test]
    fn a_corrupt_record_is_ignored_and_a_written_one_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acme-renewal-info.json");
        std::fs::write(
            &p,
            b"{\"certificate\": \"aki.serial\", \"window_start\": 12",
        )
        .unwrap();
        assert_eq!(read(&p), None);
        std::fs::write(&p, b"{\"certificate\": \"aki.serial\", \"window_start\": \"yesterday\", \"window_end\": \"2026-01-01T00:00:00Z\", \"poll_after\": \"2026-01-01T00:00:00Z\"}").unwrap();
        assert_eq!(read(&p), None);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let info = cert(t0, 100 * H);
        let r = choose(
            &info,
            &answer(t0 + 40 * H, t0 + 90 * H, 6 * H),
            t0 + 64 * H,
            t0,
            0.5,
            None,
        )
        .unwrap();
        write(&p, &r).unwrap();
        assert_eq!(read(&p), Some(r));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A chosen time after expiry (edited by hand) is not trusted.
        let mut bad = read(&p).unwrap();
        bad.chosen = Some(t0 + 200 * H);
        assert_eq!(renewal_time(&info, Some(&bad)), None);
    }
}
