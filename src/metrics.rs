//! Prometheus metrics as a node_exporter textfile: each certificate's expiry, and the time and
//! result of the last renewal and the last Docker restart. Rendered as a string, written
//! atomically (the collector must never read half a file).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::pki::Slot;
use crate::pki::inspect::DiskState;

/// The time and outcome of the last attempt at something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastRun {
    pub at: Option<SystemTime>,
    pub ok: bool,
}

/// What the service knows for the metrics (kept in state_dir across restarts).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub last_renewal: LastRun,
    pub last_restart: LastRun,
    pub converge_failures: u64,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn labels(slot: &Slot) -> String {
    match slot {
        Slot::Ca => "kind=\"ca\",name=\"ca\"".into(),
        Slot::Server => "kind=\"server\",name=\"server\"".into(),
        Slot::Client(n) => format!("kind=\"client\",name=\"{n}\""),
        Slot::Probe => "kind=\"probe\",name=\"probe\"".into(),
    }
}

pub fn render(disk: &DiskState, m: &Metrics, next_due: Option<std::time::SystemTime>) -> String {
    let mut s = String::new();
    if let Some(due) = next_due {
        s.push_str("# HELP docker_tls_manager_next_renewal_timestamp_seconds When the next certificate is due for renewal.\n");
        s.push_str("# TYPE docker_tls_manager_next_renewal_timestamp_seconds gauge\n");
        let _ = writeln!(
            s,
            "docker_tls_manager_next_renewal_timestamp_seconds {}",
            secs(due)
        );
    }
    s.push_str("# HELP docker_tls_manager_cert_expiry_timestamp_seconds When the certificate expires (not_after).\n");
    s.push_str("# TYPE docker_tls_manager_cert_expiry_timestamp_seconds gauge\n");
    for (slot, obs) in &disk.slots {
        if let Some(i) = obs.info() {
            let _ = writeln!(
                s,
                "docker_tls_manager_cert_expiry_timestamp_seconds{{{}}} {}",
                labels(slot),
                secs(i.not_after)
            );
        }
    }
    let mut last = |name: &str, help: &str, r: &LastRun| {
        if let Some(at) = r.at {
            let _ = writeln!(
                s,
                "# HELP docker_tls_manager_last_{name}_timestamp_seconds When the last {help} happened."
            );
            let _ = writeln!(
                s,
                "# TYPE docker_tls_manager_last_{name}_timestamp_seconds gauge"
            );
            let _ = writeln!(
                s,
                "docker_tls_manager_last_{name}_timestamp_seconds {}",
                secs(at)
            );
            let _ = writeln!(
                s,
                "# HELP docker_tls_manager_last_{name}_success Whether the last {help} succeeded (1) or failed (0)."
            );
            let _ = writeln!(s, "# TYPE docker_tls_manager_last_{name}_success gauge");
            let _ = writeln!(
                s,
                "docker_tls_manager_last_{name}_success {}",
                u8::from(r.ok)
            );
        }
    };
    last("renewal", "certificate renewal", &m.last_renewal);
    last("restart", "Docker restart", &m.last_restart);
    s.push_str("# HELP docker_tls_manager_converge_failures_total Failed convergence runs since the service started.\n");
    s.push_str("# TYPE docker_tls_manager_converge_failures_total counter\n");
    let _ = writeln!(
        s,
        "docker_tls_manager_converge_failures_total {}",
        m.converge_failures
    );
    s
}

/// The CA key rollover (see `pki::rollover`): its phase (0 none, 1 both CAs trusted, 2
/// finishing), how many clients still hold a bundle from the previous CA, and when the service
/// takes its next step on its own (`[ca] key_lifetime`).
pub fn render_rollover(
    phase: Option<crate::pki::rollover::Phase>,
    old_bundles: usize,
    next_step: Option<SystemTime>,
) -> String {
    use crate::pki::rollover::Phase;
    let mut s = String::new();
    s.push_str("# HELP docker_tls_manager_ca_rollover_phase CA key rollover: 0 none, 1 both CAs trusted, 2 finishing.\n");
    s.push_str("# TYPE docker_tls_manager_ca_rollover_phase gauge\n");
    let n = match phase {
        None => 0,
        Some(Phase::Overlap) => 1,
        Some(Phase::Finish) => 2,
    };
    let _ = writeln!(s, "docker_tls_manager_ca_rollover_phase {n}");
    s.push_str("# HELP docker_tls_manager_ca_rollover_old_bundles Clients whose last bundle handed out is from the previous CA (refused when the rollover finishes).\n");
    s.push_str("# TYPE docker_tls_manager_ca_rollover_old_bundles gauge\n");
    let _ = writeln!(
        s,
        "docker_tls_manager_ca_rollover_old_bundles {old_bundles}"
    );
    if let Some(t) = next_step {
        s.push_str("# HELP docker_tls_manager_ca_rollover_next_step_timestamp_seconds When the service starts or finishes a CA key rollover, or re-signs its cross certificate.\n");
        s.push_str("# TYPE docker_tls_manager_ca_rollover_next_step_timestamp_seconds gauge\n");
        let _ = writeln!(
            s,
            "docker_tls_manager_ca_rollover_next_step_timestamp_seconds {}",
            secs(t)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::inspect::DiskState;

    #[test]
    fn renders_textfile_format() {
        let disk = DiskState::default();
        let m = Metrics {
            last_renewal: LastRun {
                at: Some(UNIX_EPOCH + std::time::Duration::from_secs(1700000000)),
                ok: true,
            },
            last_restart: LastRun::default(),
            converge_failures: 2,
        };
        let out = render(
            &disk,
            &m,
            Some(UNIX_EPOCH + std::time::Duration::from_secs(1800000000)),
        );
        assert!(
            out.contains("docker_tls_manager_last_renewal_timestamp_seconds 1700000000\n"),
            "{out}"
        );
        assert!(out.contains("docker_tls_manager_last_renewal_success 1\n"));
        assert!(!out.contains("last_restart"));
        assert!(out.contains("docker_tls_manager_converge_failures_total 2\n"));
        assert!(out.contains("docker_tls_manager_next_renewal_timestamp_seconds 1800000000\n"));
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(!name.is_empty() && value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn rollover_metrics() {
        use crate::pki::rollover::Phase;
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let out = render_rollover(Some(Phase::Overlap), 2, Some(t));
        assert!(
            out.contains("docker_tls_manager_ca_rollover_phase 1\n"),
            "{out}"
        );
        assert!(out.contains("docker_tls_manager_ca_rollover_old_bundles 2\n"));
        assert!(
            out.contains("docker_tls_manager_ca_rollover_next_step_timestamp_seconds 1700000000\n")
        );
        let out = render_rollover(None, 0, None);
        assert!(out.contains("docker_tls_manager_ca_rollover_phase 0\n"));
        assert!(!out.contains("next_step"));
    }
}
