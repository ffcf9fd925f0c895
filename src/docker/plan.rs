//! The Docker planner: a pure function of what systemd, dockerd and the disk say (an
//! [`Observed`]) and the settings, to ordered [`Step`]s. It refuses, with what to change, when
//! the host's own configuration would stop dockerd from starting with ours.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::daemon::DaemonInfo;
use super::render::{self, DOCKER_SERVICE, DaemonSettings, LIVE_RESTORE_KEY, SOCKET_UNIT, TLS_KEYS};
use crate::config::{LiveRestore, Settings};
use crate::error::UsageError;
use crate::pki::{Layout, Slot};
use crate::systemd::UnitInfo;

/// What the manager changed in daemon.json, to put back on `deconfigure`: each key it set,
/// with the value it had before (None: absent). Kept in `state_dir/docker-owned.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Owned {
    /// daemon.json did not exist before the manager created it.
    pub created_daemon_json: bool,
    /// daemon.json as it was before the first change, to put back byte for byte when the
    /// restored keys make it equal again.
    #[serde(default)]
    pub original_text: Option<String>,
    pub original: BTreeMap<String, Option<Value>>,
}

/// Everything the planner looks at.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub socket_file: Option<String>,
    pub dropin_file: Option<String>,
    /// The daemon.json dockerd reads (`--config-file` in ExecStart, else `[paths] daemon_json`).
    pub daemon_json_path: PathBuf,
    pub daemon_json: Option<String>,
    pub docker: UnitInfo,
    pub socket: UnitInfo,
    /// `None` when dockerd is not running.
    pub daemon: Option<DaemonInfo>,
    /// SHA-256 of the certificate Docker serves now, if the probe got through.
    pub served: Option<String>,
    /// SHA-256 of the server certificate on disk.
    pub wanted: String,
    pub owned: Owned,
}

/// One step, run in order by the executor.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Write { path: PathBuf, content: String, mode: u32 },
    Remove { path: PathBuf },
    DaemonReload,
    EnableSocket,
    DisableSocket,
    /// SIGHUP to dockerd (ReloadUnit): applies live-restore without a restart.
    ReloadDocker,
    StopDocker,
    StartSocket,
    RestartSocket,
    StopSocket,
    StartDocker,
    RestartDocker,
    /// docker.service active, then TLS + /_ping served with the certificate on disk.
    VerifyTls,
    /// docker.service active and the TCP port closed.
    VerifyClosed,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Write { path, .. } => write!(f, "write '{}'", path.display()),
            Step::Remove { path } => write!(f, "remove '{}'", path.display()),
            Step::DaemonReload => f.write_str("systemd daemon-reload"),
            Step::EnableSocket => write!(f, "enable {SOCKET_UNIT}"),
            Step::DisableSocket => write!(f, "disable {SOCKET_UNIT}"),
            Step::ReloadDocker => write!(f, "reload {DOCKER_SERVICE} (SIGHUP: live-restore)"),
            Step::StopDocker => write!(f, "stop {DOCKER_SERVICE}"),
            Step::StartSocket => write!(f, "start {SOCKET_UNIT}"),
            Step::RestartSocket => write!(f, "restart {SOCKET_UNIT}"),
            Step::StopSocket => write!(f, "stop {SOCKET_UNIT}"),
            Step::StartDocker => write!(f, "start {DOCKER_SERVICE}"),
            Step::RestartDocker => write!(f, "restart {DOCKER_SERVICE}"),
            Step::VerifyTls => f.write_str("verify: Docker serves the new certificate over mutual TLS"),
            Step::VerifyClosed => f.write_str("verify: Docker running, TCP port closed"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DockerPlan {
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
    /// A restart was needed but put off (containers would be killed).
    pub deferred: bool,
}

/// Flags of dockerd's effective ExecStart that matter here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerdFlags {
    pub hosts: Vec<String>,
    pub config_file: Option<PathBuf>,
    pub live_restore: bool,
    /// TLS flags present (each conflicts with the same key in daemon.json).
    pub tls_flags: Vec<String>,
}

/// Reads the flags we care about from dockerd's argv (pflag syntax: `-H x`, `-Hx`, `--host=x`).
pub fn parse_dockerd_flags(argv: &[String]) -> DockerdFlags {
    let mut f = DockerdFlags::default();
    let mut i = 1;
    while i < argv.len() {
        let a = &argv[i];
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ if a.starts_with("-H") && a.len() > 2 && !a.starts_with("--") => ("-H".to_string(), Some(a[2..].to_string())),
            _ => (a.clone(), None),
        };
        let takes_value = matches!(name.as_str(), "-H" | "--host" | "--config-file" | "--tlscacert" | "--tlscert" | "--tlskey");
        let value = if takes_value && inline.is_none() {
            i += 1;
            argv.get(i).cloned()
        } else {
            inline.clone()
        };
        match name.as_str() {
            "-H" | "--host" => f.hosts.extend(value),
            "--config-file" => f.config_file = value.map(PathBuf::from),
            "--live-restore" => f.live_restore = inline.as_deref() != Some("false"),
            "--tls" | "--tlsverify" | "--tlscacert" | "--tlscert" | "--tlskey" => f.tls_flags.push(name.clone()),
            _ => {}
        }
        i += 1;
    }
    f
}

/// The effective daemon.json path for dockerd's ExecStart.
pub fn daemon_json_path(docker: &UnitInfo, settings: &Settings) -> PathBuf {
    docker
        .exec_start
        .first()
        .and_then(|argv| parse_dockerd_flags(argv).config_file)
        .unwrap_or_else(|| settings.paths.daemon_json.clone())
}

pub fn socket_path(settings: &Settings) -> PathBuf {
    settings.paths.systemd_dir.join(SOCKET_UNIT)
}

pub fn dropin_path(settings: &Settings) -> PathBuf {
    settings.paths.systemd_dir.join("docker.service.d").join(render::DROPIN_NAME)
}

pub fn owned_path(settings: &Settings) -> PathBuf {
    settings.paths.state_dir.join("docker-owned.json")
}

fn refuse(msg: String) -> UsageError {
    UsageError(format!("refusing to configure Docker: {msg}"))
}

fn parse_daemon_json(path: &Path, text: Option<&str>) -> Result<Map<String, Value>, UsageError> {
    match text {
        None => Ok(Map::new()),
        Some(t) if t.trim().is_empty() => Ok(Map::new()),
        Some(t) => match serde_json::from_str::<Value>(t) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(refuse(format!("'{}' is not a JSON object; fix it (dockerd cannot use it either)", path.display()))),
            Err(e) => Err(refuse(format!(
                "'{}' is not valid JSON ({e}); fix it (dockerd cannot start with it either), then run apply again",
                path.display()
            ))),
        },
    }
}

/// Checks the host's Docker setup for what would make dockerd fail with our configuration.
fn check_conflicts(obs: &Observed, flags: &DockerdFlags, daemon: &Map<String, Value>) -> Result<(), UsageError> {
    if obs.docker.load_state != "loaded" {
        return Err(refuse(format!(
            "{DOCKER_SERVICE} is not installed (load state '{}'): install Docker (docker.io or docker-ce), \
             or set [docker] manage = false to manage only the certificates",
            obs.docker.load_state
        )));
    }
    if obs.docker.exec_start.is_empty() {
        return Err(refuse(format!("{DOCKER_SERVICE} has no ExecStart")));
    }
    if !flags.hosts.iter().any(|h| h.starts_with("fd://")) {
        return Err(refuse(format!(
            "{DOCKER_SERVICE}'s ExecStart ({}) does not take its sockets from systemd (-H fd://), so it \
             would never receive {SOCKET_UNIT}; remove the drop-in that replaced ExecStart (see \
             `systemctl cat docker.service`)",
            obs.docker.exec_start[0].join(" ")
        )));
    }
    if let Some(h) = flags.hosts.iter().find(|h| h.starts_with("tcp://")) {
        return Err(refuse(format!(
            "{DOCKER_SERVICE}'s ExecStart already listens on {h}; remove that -H flag (see `systemctl cat \
             docker.service`): {SOCKET_UNIT} provides the TCP listener with TLS"
        )));
    }
    if !flags.tls_flags.is_empty() {
        return Err(refuse(format!(
            "{DOCKER_SERVICE}'s ExecStart passes {}; remove them (see `systemctl cat docker.service`): the \
             TLS settings go into '{}', and dockerd refuses a setting given both ways",
            flags.tls_flags.join(", "),
            obs.daemon_json_path.display()
        )));
    }
    if let Some(h) = daemon.get("hosts") {
        return Err(refuse(format!(
            "'{}' sets \"hosts\": {h}, while {DOCKER_SERVICE} passes -H fd://; dockerd refuses to start with \
             both (\"specified both as a flag and in the configuration file\"). Remove \"hosts\" from '{}' \
             ({SOCKET_UNIT} provides the TCP listener, docker.socket the unix one), then run apply again",
            obs.daemon_json_path.display(),
            obs.daemon_json_path.display()
        )));
    }
    Ok(())
}

/// Plans the configuration of Docker for mutual TLS on the socket unit.
pub fn plan_configure(obs: &Observed, settings: &Settings) -> Result<DockerPlan, UsageError> {
    let layout = Layout::new(&settings.paths);
    let flags = obs.docker.exec_start.first().map(|a| parse_dockerd_flags(a)).unwrap_or_default();
    let existing = parse_daemon_json(&obs.daemon_json_path, obs.daemon_json.as_deref())?;
    check_conflicts(obs, &flags, &existing)?;
    let mut plan = DockerPlan::default();

    // live-restore: keeps containers running across the restart that new TLS material needs.
    let swarm = obs.daemon.as_ref().is_some_and(|d| d.swarm_active);
    let live_restore = match settings.docker.live_restore {
        LiveRestore::Off => None,
        _ if flags.live_restore => None,
        LiveRestore::On if swarm => {
            return Err(refuse(
                "[docker] live_restore = \"on\" but this node is in swarm mode, with which live-restore is \
                 incompatible; set live_restore = \"auto\" or \"off\""
                    .into(),
            ));
        }
        LiveRestore::On => Some(true),
        LiveRestore::Auto if swarm || obs.daemon.is_none() => None,
        LiveRestore::Auto => Some(true),
    };
    let (server_cert, server_key) = layout.cert_and_key(&Slot::Server);
    let wanted = DaemonSettings {
        tlscacert: layout.ca_cert().display().to_string(),
        tlscert: server_cert.display().to_string(),
        tlskey: server_key.display().to_string(),
        live_restore,
    };
    let merged = render::merge_daemon_json(&existing, &wanted);
    let differs = |k: &str| existing.get(k) != merged.get(k);
    let tls_changed = TLS_KEYS.iter().any(|k| differs(k));
    let lr_changed = differs(LIVE_RESTORE_KEY);
    for (k, v) in wanted.entries() {
        if let Some(old) = existing.get(k).filter(|old| **old != v) {
            if !obs.owned.original.contains_key(k) {
                plan.warnings.push(format!(
                    "'{}' had \"{k}\": {old}; replaced by {v} (the old value is restored by deconfigure)",
                    obs.daemon_json_path.display()
                ));
            }
        }
    }

    let socket_content = render::socket_unit(&settings.docker.listen);
    let dropin_content = render::dropin();
    let socket_changed = obs.socket_file.as_deref() != Some(&socket_content);
    let dropin_changed = obs.dropin_file.as_deref() != Some(&dropin_content);
    let units_changed = socket_changed || dropin_changed;
    let enable = obs.socket.unit_file_state != "enabled";
    let docker_active = obs.docker.is_active();
    let socket_active = obs.socket.is_active();
    let serving_current = obs.served.as_deref() == Some(obs.wanted.as_str());
    let needs_restart = docker_active && (units_changed || tls_changed || !serving_current || !socket_active);

    let effective_lr =
        flags.live_restore || obs.daemon.as_ref().is_some_and(|d| d.live_restore) || live_restore == Some(true);
    let running = obs.daemon.as_ref().map_or(0, |d| d.containers_running);
    if needs_restart && running > 0 && !effective_lr {
        plan.deferred = true;
        plan.warnings.push(format!(
            "restart of {DOCKER_SERVICE} deferred: {running} container(s) running and live-restore is off{}, so a \
             restart would kill them; Docker keeps serving its current certificate. Restart Docker when convenient \
             (`systemctl restart docker`), or enable live-restore",
            if swarm { " (swarm mode)" } else { "" }
        ));
    }

    // Files.
    if tls_changed || lr_changed {
        let mut owned = obs.owned.clone();
        if obs.owned.original.is_empty() {
            owned.created_daemon_json = obs.daemon_json.is_none();
            owned.original_text = obs.daemon_json.clone();
        }
        for (k, _) in wanted.entries() {
            owned.original.entry(k.to_string()).or_insert_with(|| existing.get(k).cloned());
        }
        if owned != obs.owned {
            plan.steps.push(Step::Write {
                path: owned_path(settings),
                content: serde_json::to_string_pretty(&owned).expect("serializable") + "\n",
                mode: 0o600,
            });
        }
    }
    if socket_changed {
        plan.steps.push(Step::Write { path: socket_path(settings), content: socket_content, mode: 0o644 });
    }
    if dropin_changed {
        plan.steps.push(Step::Write { path: dropin_path(settings), content: dropin_content, mode: 0o644 });
    }
    if tls_changed || lr_changed {
        plan.steps.push(Step::Write {
            path: obs.daemon_json_path.clone(),
            content: render::render_json(&merged),
            mode: 0o644,
        });
    }
    if enable {
        plan.steps.push(Step::EnableSocket);
    }
    if units_changed || enable {
        plan.steps.push(Step::DaemonReload);
    }
    if plan.deferred {
        return Ok(plan);
    }
    // Switch live-restore on before the restart, so the restart keeps containers.
    if lr_changed && live_restore == Some(true) && docker_active {
        plan.steps.push(Step::ReloadDocker);
    }
    if needs_restart {
        if socket_changed || !socket_active {
            // systemd hands a service the sockets that exist when it starts: stop, socket, start.
            plan.steps.push(Step::StopDocker);
            plan.steps.push(if socket_active { Step::RestartSocket } else { Step::StartSocket });
            plan.steps.push(Step::StartDocker);
        } else {
            // Certificates only: the socket stays open and clients queue during the restart.
            plan.steps.push(Step::RestartDocker);
        }
    } else if !docker_active {
        if !socket_active {
            plan.steps.push(Step::StartSocket);
        }
        plan.steps.push(Step::StartDocker);
    }
    if !plan.steps.is_empty() {
        plan.steps.push(Step::VerifyTls);
    }
    Ok(plan)
}

/// The user's original daemon.json text if `map` equals it again, else `map` rendered.
fn restored_text(owned: &Owned, map: &Map<String, Value>) -> String {
    match &owned.original_text {
        Some(t) if serde_json::from_str::<Map<String, Value>>(t).is_ok_and(|m| &m == map) => t.clone(),
        _ => render::render_json(map),
    }
}

/// Plans putting Docker back as it was: socket unit and drop-in removed, our daemon.json keys
/// restored, Docker restarted; certificates kept.
pub fn plan_deconfigure(obs: &Observed, settings: &Settings) -> Result<DockerPlan, UsageError> {
    let existing = parse_daemon_json(&obs.daemon_json_path, obs.daemon_json.as_deref())?;
    let mut plan = DockerPlan::default();
    let restore = |map: &mut Map<String, Value>, key: &str| match obs.owned.original.get(key) {
        Some(Some(v)) => {
            map.insert(key.to_string(), v.clone());
        }
        Some(None) => {
            map.remove(key);
        }
        None => {}
    };
    // First pass: TLS keys back; live-restore stays until Docker has restarted.
    let mut without_tls = existing.clone();
    for k in TLS_KEYS {
        restore(&mut without_tls, k);
    }
    let mut final_map = without_tls.clone();
    restore(&mut final_map, LIVE_RESTORE_KEY);

    let socket_exists = obs.socket_file.is_some();
    if obs.socket.unit_file_state == "enabled" {
        plan.steps.push(Step::DisableSocket);
    }
    if socket_exists {
        plan.steps.push(Step::Remove { path: socket_path(settings) });
    }
    if obs.dropin_file.is_some() {
        plan.steps.push(Step::Remove { path: dropin_path(settings) });
    }
    if without_tls != existing {
        plan.steps.push(Step::Write {
            path: obs.daemon_json_path.clone(),
            content: render::render_json(&without_tls),
            mode: 0o644,
        });
    }
    if plan.steps.is_empty() && !obs.socket.is_active() {
        return Ok(plan);
    }
    plan.steps.push(Step::DaemonReload);
    let docker_active = obs.docker.is_active();
    let running = obs.daemon.as_ref().map_or(0, |d| d.containers_running);
    let lr = obs.daemon.as_ref().is_some_and(|d| d.live_restore);
    if docker_active && running > 0 && !lr {
        plan.deferred = true;
        plan.warnings.push(format!(
            "restart of {DOCKER_SERVICE} deferred: {running} container(s) running and live-restore is off; the TCP \
             port stays open until Docker restarts (`systemctl stop docker docker-tcp.socket; systemctl start docker`)"
        ));
        return Ok(plan);
    }
    if docker_active {
        plan.steps.push(Step::StopDocker);
        plan.steps.push(Step::StopSocket);
        plan.steps.push(Step::StartDocker);
    } else {
        plan.steps.push(Step::StopSocket);
    }
    plan.steps.push(Step::VerifyClosed);
    if final_map != without_tls {
        if obs.owned.created_daemon_json && final_map.is_empty() {
            plan.steps.push(Step::Remove { path: obs.daemon_json_path.clone() });
        } else {
            plan.steps.push(Step::Write {
                path: obs.daemon_json_path.clone(),
                content: restored_text(&obs.owned, &final_map),
                mode: 0o644,
            });
        }
        if docker_active {
            plan.steps.push(Step::ReloadDocker);
        }
    } else if obs.owned.created_daemon_json && final_map.is_empty() && obs.daemon_json.is_some() {
        plan.steps.push(Step::Remove { path: obs.daemon_json_path.clone() });
    } else if without_tls != existing {
        let text = restored_text(&obs.owned, &final_map);
        if text != render::render_json(&final_map) {
            plan.steps.push(Step::Write { path: obs.daemon_json_path.clone(), content: text, mode: 0o644 });
        }
    }
    plan.steps.push(Step::Remove { path: owned_path(settings) });
    Ok(plan)
}
