//! Docker's side: the socket unit, the docker.service drop-in, the guard unit and daemon.json
//! (`render`), the planner (`plan`), the executor with rollback (`execute`), dockerd as
//! systemd starts it (`dockerd`), the check systemd runs before the socket listens and before
//! dockerd starts (`guard`), dockerd's Engine API (`daemon`) and the mutual-TLS probe
//! (`probe`), `dockerd --validate` (`validate`). `observe` gathers what the planner needs.

pub mod daemon;
pub mod dockerd;
pub mod execute;
pub mod guard;
pub mod plan;
pub mod probe;
pub mod render;
pub mod validate;

use anyhow::{Context, Result};

use crate::config::Settings;
use crate::pki::Slot;
use crate::systemd::Systemd;
use daemon::DockerDaemon;
use plan::{Observed, Owned};
use probe::{Prober, TlsProbe};
use render::{DOCKER_SERVICE, SOCKET_UNIT};

/// The probe that checks Docker with the manager's own client identity.
pub fn tls_probe(settings: &Settings) -> TlsProbe {
    let layout = &settings.paths;
    let (cert, key) = layout.cert_and_key(&Slot::Probe);
    let first = &settings.docker.listen[0];
    TlsProbe {
        addr: execute::probe_addr(&first.spec, first.port),
        // The probe's own copy: someone deleting ca.pem mid-verification does not fail it.
        ca: layout
            .ca_copy(&Slot::Probe)
            .unwrap_or_else(|| layout.ca_cert()),
        cert,
        key,
        name_from: settings
            .acme
            .is_some()
            .then(|| layout.cert_and_key(&Slot::Server).0),
    }
}

/// Reads files, asks systemd and dockerd, and probes the TLS endpoint.
pub async fn observe<S: Systemd, D: DockerDaemon, P: Prober>(
    settings: &Settings,
    systemd: &S,
    daemon: &D,
    probe: &P,
) -> Result<Observed> {
    let layout = &settings.paths;
    // What dockerd really gets: `$DOCKER_OPTS` and the like expanded as systemd does.
    let docker = dockerd::expanded(systemd.unit(DOCKER_SERVICE).await?);
    let socket = systemd.unit(SOCKET_UNIT).await?;
    let daemon_json_path = dockerd::daemon_json_path(&docker, settings);
    let owned_path = settings.paths.docker_owned();
    let owned: Owned = match std::fs::read(&owned_path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| {
            format!(
                "'{}' is corrupt; restore it from the backup directory or remove it",
                owned_path.display()
            )
        })?,
        Err(_) => Owned::default(),
    };
    let wanted = match crate::pki::inspect::read_cert_info(&layout.cert_and_key(&Slot::Server).0) {
        Some(i) => i.fingerprint,
        None => String::new(),
    };
    let running = docker.is_active();
    let guard_binary = guard::guard_binary();
    Ok(Observed {
        socket_file: std::fs::read_to_string(settings.paths.socket_unit()).ok(),
        dropin_file: std::fs::read_to_string(settings.paths.dropin()).ok(),
        legacy_dropin_file: std::fs::read_to_string(settings.paths.legacy_dropin()).ok(),
        guard_unit_file: std::fs::read_to_string(settings.paths.guard_unit()).ok(),
        guard_binary_problem: guard::unsafe_for_root(&guard_binary),
        guard_binary,
        daemon_json: std::fs::read_to_string(&daemon_json_path).ok(),
        daemon_json_path,
        daemon: if running {
            daemon.info().await.ok()
        } else {
            None
        },
        served: if running && socket.is_active() {
            probe.probe().await.ok()
        } else {
            None
        },
        docker,
        socket,
        wanted,
        pki_changes_server: false,
        owned,
    })
}
