//! The Docker planner: a pure function of what systemd, dockerd and the disk say (an
//! [`Observed`]) and the settings, to ordered [`Step`]s. It refuses, with what to change, when
//! the host's own configuration would stop dockerd from starting with ours.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::daemon::DaemonInfo;
use super::dockerd::{DockerdFlags, parse_dockerd_flags};
use super::render::{
    self, DOCKER_SERVICE, DaemonSettings, Guard, HEADER_FIRST_LINE, LIVE_RESTORE_KEY, SOCKET_UNIT,
    TLS_KEYS,
};
use crate::config::{LiveRestore, Settings};
use crate::error::UsageError;
use crate::pki::Slot;
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
    /// `docker.service.d/override.conf`: ours if an earlier version wrote it (our header),
    /// else the admin's (`systemctl edit docker`), left alone.
    pub legacy_dropin_file: Option<String>,
    /// `docker-tls-manager-guard.service`, ours.
    pub guard_unit_file: Option<String>,
    /// The binary the units call as the guard (this program's own path).
    pub guard_binary: PathBuf,
    /// Why that binary must not be called by systemd as root (someone else could replace it).
    pub guard_binary_problem: Option<String>,
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
    /// The PKI plan about to run changes what Docker serves (a new server certificate or CA):
    /// Docker is planned as if `wanted` were already that new certificate (`--dry-run`, and
    /// the look before issuing that holds a renewal back with a deferred restart).
    pub pki_changes_server: bool,
    pub owned: Owned,
}

impl Observed {
    /// What dockerd reads besides our files, for the watcher and the sweep.
    pub fn dockerd_inputs(&self) -> crate::layout::DockerdInputs {
        crate::layout::DockerdInputs {
            daemon_json: self.daemon_json_path.clone(),
            environment_files: self
                .docker
                .environment_files
                .iter()
                .map(|(p, _)| PathBuf::from(p))
                .collect(),
        }
    }
}

/// One step, run in order by the executor.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Write {
        path: PathBuf,
        content: String,
        mode: u32,
    },
    Remove {
        path: PathBuf,
    },
    DaemonReload,
    EnableSocket,
    DisableSocket,
    /// SIGHUP to dockerd (ReloadUnit): applies live-restore without a restart.
    ReloadDocker,
    /// What was written so far stays, whatever fails later: live-restore, once on, is never
    /// switched off by a rollback (a dockerd started without it kills running containers).
    Commit,
    /// Until dockerd's /info reports live-restore on.
    WaitLiveRestore,
    /// Right before a stop or restart: dockerd's /info again, so that a container started
    /// since the plan was made is not killed (none running, or live-restore on).
    CheckContainers,
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
            Step::Commit => {
                f.write_str("keep live-restore on from here, even if a later step fails")
            }
            Step::WaitLiveRestore => f.write_str("wait until dockerd reports live-restore on"),
            Step::CheckContainers => {
                f.write_str("check again that no running container would be killed")
            }
            Step::StopDocker => write!(f, "stop {DOCKER_SERVICE}"),
            Step::StartSocket => write!(f, "start {SOCKET_UNIT}"),
            Step::RestartSocket => write!(f, "restart {SOCKET_UNIT}"),
            Step::StopSocket => write!(f, "stop {SOCKET_UNIT}"),
            Step::StartDocker => write!(f, "start {DOCKER_SERVICE}"),
            Step::RestartDocker => write!(f, "restart {DOCKER_SERVICE}"),
            Step::VerifyTls => {
                f.write_str("verify: Docker serves the new certificate over mutual TLS")
            }
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

/// How our units call the guard, or a refusal when a path cannot go into a unit file as it is.
fn guard(obs: &Observed, settings: &Settings) -> Result<Guard, UsageError> {
    if let Some(problem) = &obs.guard_binary_problem {
        return Err(refuse(format!(
            "systemd would run '{}' as root before every start of Docker, but {problem}; install \
             the package (/usr/bin/docker-tls-manager) or copy the binary to a root-owned \
             directory such as /usr/local/bin, and run it from there",
            obs.guard_binary.display()
        )));
    }
    let g = Guard {
        binary: obs.guard_binary.clone(),
        ca: settings.paths.ca_cert(),
        daemon_json: obs.daemon_json_path.clone(),
        default_daemon_json: settings.paths.daemon_json.clone(),
        dropin: settings.paths.dropin(),
        guard_unit: settings.paths.guard_unit(),
        config: settings
            .source
            .clone()
            .filter(|c| c != Path::new(crate::config::DEFAULT_CONFIG_PATH)),
    };
    for p in [
        &g.binary,
        &g.ca,
        &g.daemon_json,
        &g.default_daemon_json,
        &g.dropin,
        &g.guard_unit,
    ]
    .into_iter()
    .chain(g.config.as_ref())
    {
        if !render::is_plain_path(p) {
            return Err(refuse(format!(
                "'{}' goes into the guard command of {SOCKET_UNIT} and {DOCKER_SERVICE}'s drop-in, and \
                 only absolute paths of letters, digits and / . _ - + are supported; move the file \
                 (or install the binary) to such a path",
                p.display()
            )));
        }
    }
    Ok(g)
}

/// A socket unit without comments and `ExecStartPre=`: what it listens on and for whom.
fn listening_part(unit: &str) -> Vec<&str> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("ExecStartPre="))
        .collect()
}

/// Our own `override.conf` from an earlier version, to remove.
fn legacy_ours(obs: &Observed) -> bool {
    obs.legacy_dropin_file
        .as_deref()
        .is_some_and(|t| t.starts_with(HEADER_FIRST_LINE))
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
            Ok(_) => Err(refuse(format!(
                "'{}' is not a JSON object; fix it (dockerd cannot use it either)",
                path.display()
            ))),
            Err(e) => Err(refuse(format!(
                "'{}' is not valid JSON ({e}); fix it (dockerd cannot start with it either), then run apply again",
                path.display()
            ))),
        },
    }
}

/// Checks the host's Docker setup for what would make dockerd fail with our configuration.
fn check_conflicts(
    obs: &Observed,
    flags: &DockerdFlags,
    daemon: &Map<String, Value>,
) -> Result<(), UsageError> {
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
    if obs.docker.exec_start[0]
        .iter()
        .any(|a| a.starts_with("/etc/init.d/"))
    {
        return Err(refuse(format!(
            "{DOCKER_SERVICE} is generated by systemd from the SysV script /etc/init.d/docker: Docker's own \
             systemd units (docker.service, docker.socket, shipped by docker.io and docker-ce) are missing; \
             reinstall the Docker package"
        )));
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
///
/// Order of writes, so that a crash between any two leaves no state in which the TCP port is
/// served without mutual TLS: daemon.json (TLS keys) first, then the drop-in (whose guard
/// re-checks daemon.json at every start of dockerd), then the socket unit (whose guard
/// refuses to listen unless both are in place).
pub fn plan_configure(obs: &Observed, settings: &Settings) -> Result<DockerPlan, UsageError> {
    let layout = &settings.paths;
    let flags = obs
        .docker
        .exec_start
        .first()
        .map(|a| parse_dockerd_flags(a))
        .unwrap_or_default();
    let existing = parse_daemon_json(&obs.daemon_json_path, obs.daemon_json.as_deref())?;
    check_conflicts(obs, &flags, &existing)?;
    if settings.authz.enabled && flags.authz_plugin_flag {
        return Err(refuse(format!(
            "{DOCKER_SERVICE}'s ExecStart passes --authorization-plugin, and our authorization \
             plugin goes into '{}' (`authorization-plugins`): dockerd refuses a setting given both \
             ways, so Docker would not start again. Move that plugin into daemon.json's \
             \"authorization-plugins\" list (ours is appended, yours kept) and remove the flag (see \
             `systemctl cat docker.service`), or set [authz] enabled = false",
            obs.daemon_json_path.display()
        )));
    }
    let guard = guard(obs, settings)?;
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
        if let Some(old) = existing.get(k).filter(|old| **old != v)
            && !obs.owned.original.contains_key(k)
        {
            plan.warnings.push(format!(
                    "'{}' had \"{k}\": {old}; replaced by {v} (the old value is restored by deconfigure)",
                    obs.daemon_json_path.display()
                ));
        }
    }

    let socket_content = render::socket_unit(&settings.docker.listen, &guard);
    let dropin_content = render::dropin();
    let guard_unit_content = render::guard_unit(&guard);
    let guard_unit_changed = obs.guard_unit_file.as_deref() != Some(&guard_unit_content);
    let socket_changed = obs.socket_file.as_deref() != Some(&socket_content);
    // Only what the socket listens on needs it re-opened; its guard is read at its next start.
    let socket_relisten =
        obs.socket_file.as_deref().map(listening_part) != Some(listening_part(&socket_content));
    let dropin_changed = obs.dropin_file.as_deref() != Some(&dropin_content);
    let legacy = legacy_ours(obs);
    let enable = obs.socket.unit_file_state != "enabled";
    let docker_active = obs.docker.is_active();
    let socket_active = obs.socket.is_active();
    let serving_current =
        !obs.pki_changes_server && obs.served.as_deref() == Some(obs.wanted.as_str());
    // The drop-in alone needs no restart: its guard is read at dockerd's next start.
    let needs_restart =
        docker_active && (socket_relisten || tls_changed || !serving_current || !socket_active);

    // What the running dockerd does (its /info), never what a file says: daemon.json may say
    // live-restore while dockerd never loaded it (edited, not reloaded).
    let running_lr = obs.daemon.as_ref().is_some_and(|d| d.live_restore);
    let switch_lr =
        docker_active && live_restore == Some(true) && !running_lr && (needs_restart || lr_changed);
    let running = obs.daemon.as_ref().map_or(0, |d| d.containers_running);
    if needs_restart && obs.daemon.is_none() {
        // Docker runs but does not answer /info: whether containers would die is unknown.
        plan.deferred = true;
        plan.warnings.push(format!(
            "restart of {DOCKER_SERVICE} deferred: dockerd does not answer on its unix socket, so whether \
             containers would be killed is unknown; nothing was changed for Docker"
        ));
    } else if needs_restart && running > 0 && !running_lr && !switch_lr {
        plan.deferred = true;
        plan.warnings.push(format!(
            "restart of {DOCKER_SERVICE} deferred: {running} container(s) running and live-restore is off{}, so a \
             restart would kill them; nothing was changed for Docker, which keeps serving its current certificate. \
             Enable live-restore ([docker] live_restore), or stop the containers, then run apply again",
            if swarm { " (swarm mode)" } else { "" }
        ));
    }
    if plan.deferred {
        // Nothing is written that Docker would pick up, unverified, at its next restart.
        return Ok(plan);
    }

    // The record of what we replaced, before the first change to daemon.json.
    if tls_changed || lr_changed {
        let mut owned = obs.owned.clone();
        if obs.owned.original.is_empty() {
            owned.created_daemon_json = obs.daemon_json.is_none();
            owned.original_text = obs.daemon_json.clone();
        }
        for (k, _) in wanted.entries() {
            owned
                .original
                .entry(k.to_string())
                .or_insert_with(|| existing.get(k).cloned());
        }
        if owned != obs.owned {
            plan.steps.push(Step::Write {
                path: settings.paths.docker_owned(),
                content: serde_json::to_string_pretty(&owned).expect("serializable") + "\n",
                mode: 0o600,
            });
        }
    }
    // live-restore on first, on its own, kept from here on: the reload job ends when SIGHUP is
    // sent, so wait until dockerd reports it on before anything can restart Docker.
    let mut tls_written = !tls_changed && !lr_changed;
    if switch_lr {
        if lr_changed {
            let mut with_lr = existing.clone();
            with_lr.insert(LIVE_RESTORE_KEY.to_string(), Value::Bool(true));
            if !tls_changed {
                tls_written = true;
            }
            plan.steps.push(Step::Write {
                path: obs.daemon_json_path.clone(),
                content: render::render_json(&with_lr),
                mode: 0o644,
            });
        }
        plan.steps.push(Step::Commit);
        plan.steps.push(Step::ReloadDocker);
        plan.steps.push(Step::WaitLiveRestore);
    }
    if !tls_written {
        plan.steps.push(Step::Write {
            path: obs.daemon_json_path.clone(),
            content: render::render_json(&merged),
            mode: 0o644,
        });
    }
    if legacy {
        plan.steps.push(Step::Remove {
            path: settings.paths.legacy_dropin(),
        });
    }
    if guard_unit_changed {
        plan.steps.push(Step::Write {
            path: settings.paths.guard_unit(),
            content: guard_unit_content,
            mode: 0o644,
        });
    }
    if dropin_changed {
        plan.steps.push(Step::Write {
            path: settings.paths.dropin(),
            content: dropin_content,
            mode: 0o644,
        });
    }
    if socket_changed {
        plan.steps.push(Step::Write {
            path: settings.paths.socket_unit(),
            content: socket_content,
            mode: 0o644,
        });
    }
    if enable {
        plan.steps.push(Step::EnableSocket);
    }
    if socket_changed || dropin_changed || guard_unit_changed || legacy || enable {
        plan.steps.push(Step::DaemonReload);
    }
    if needs_restart {
        if socket_relisten || !socket_active {
            // systemd hands a service the sockets that exist when it starts: stop, socket, start.
            plan.steps.push(Step::CheckContainers);
            plan.steps.push(Step::StopDocker);
            plan.steps.push(if socket_active {
                Step::RestartSocket
            } else {
                Step::StartSocket
            });
            plan.steps.push(Step::StartDocker);
        } else {
            // Certificates only: the socket stays open and clients queue during the restart.
            plan.steps.push(Step::CheckContainers);
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
        Some(t) if serde_json::from_str::<Map<String, Value>>(t).is_ok_and(|m| &m == map) => {
            t.clone()
        }
        _ => render::render_json(map),
    }
}

/// Plans putting Docker back as it was: socket unit and drop-in removed, our daemon.json keys
/// restored, Docker restarted; certificates kept.
///
/// The socket goes first (disabled, stopped, its file removed, systemd reloaded), so that from
/// then on no start of dockerd receives the TCP port; only then is Docker restarted (which
/// closes the port the running dockerd still holds) and are the TLS keys taken out of
/// daemon.json. A crash anywhere leaves either the socket guarded or no socket.
pub fn plan_deconfigure(obs: &Observed, settings: &Settings) -> Result<DockerPlan, UsageError> {
    let existing = parse_daemon_json(&obs.daemon_json_path, obs.daemon_json.as_deref())?;
    let mut plan = DockerPlan::default();
    let mut final_map = existing.clone();
    for k in TLS_KEYS.iter().chain([&LIVE_RESTORE_KEY]) {
        match obs.owned.original.get(*k) {
            Some(Some(v)) => {
                final_map.insert(k.to_string(), v.clone());
            }
            Some(None) => {
                final_map.remove(*k);
            }
            None => {}
        }
    }

    if obs.socket.unit_file_state == "enabled" {
        plan.steps.push(Step::DisableSocket);
    }
    let socket_was_active = obs.socket.is_active();
    if socket_was_active {
        plan.steps.push(Step::StopSocket);
    }
    if obs.socket_file.is_some() {
        plan.steps.push(Step::Remove {
            path: settings.paths.socket_unit(),
        });
    }
    if obs.dropin_file.is_some() {
        plan.steps.push(Step::Remove {
            path: settings.paths.dropin(),
        });
    }
    if legacy_ours(obs) {
        plan.steps.push(Step::Remove {
            path: settings.paths.legacy_dropin(),
        });
    }
    if obs.guard_unit_file.is_some() {
        plan.steps.push(Step::Remove {
            path: settings.paths.guard_unit(),
        });
    }
    if !plan.steps.is_empty() {
        plan.steps.push(Step::DaemonReload);
    }
    let docker_active = obs.docker.is_active();
    if docker_active && socket_was_active {
        // The running dockerd still holds the port: a restart closes it.
        let running = obs.daemon.as_ref().map_or(0, |d| d.containers_running);
        let lr = obs.daemon.as_ref().is_some_and(|d| d.live_restore);
        if running > 0 && !lr {
            plan.deferred = true;
            plan.warnings.push(format!(
                "restart of {DOCKER_SERVICE} deferred: {running} container(s) running and live-restore is off; the \
                 running dockerd keeps serving the TCP port (with mutual TLS) until it restarts, and no later start \
                 of Docker gets it (`systemctl restart docker` closes it now, killing the containers)"
            ));
        } else {
            plan.steps.push(Step::CheckContainers);
            plan.steps.push(Step::RestartDocker);
            plan.steps.push(Step::VerifyClosed);
        }
    }
    if final_map != existing {
        if obs.owned.created_daemon_json && final_map.is_empty() {
            plan.steps.push(Step::Remove {
                path: obs.daemon_json_path.clone(),
            });
        } else {
            plan.steps.push(Step::Write {
                path: obs.daemon_json_path.clone(),
                content: restored_text(&obs.owned, &final_map),
                mode: 0o644,
            });
        }
        if docker_active && existing.get(LIVE_RESTORE_KEY) != final_map.get(LIVE_RESTORE_KEY) {
            plan.steps.push(Step::ReloadDocker);
        }
    } else if obs.owned.created_daemon_json && final_map.is_empty() && obs.daemon_json.is_some() {
        plan.steps.push(Step::Remove {
            path: obs.daemon_json_path.clone(),
        });
    } else if let Some(text) = obs.daemon_json.as_deref() {
        // Same keys and values; put the user's own formatting back.
        let restored = restored_text(&obs.owned, &final_map);
        if !obs.owned.original.is_empty() && restored != text {
            plan.steps.push(Step::Write {
                path: obs.daemon_json_path.clone(),
                content: restored,
                mode: 0o644,
            });
        }
    }
    if !obs.owned.original.is_empty() || obs.owned.created_daemon_json {
        plan.steps.push(Step::Remove {
            path: settings.paths.docker_owned(),
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::render::{merge_daemon_json, render_json};

    fn settings(extra: &str) -> Settings {
        crate::config::parse(
            &format!("[paths]\nstate_dir = \"/s\"\ncert_dir = \"/c\"\nsystemd_dir = \"/u\"\ndaemon_json = \"/d/daemon.json\"\n{extra}"),
            Path::new("/t.toml"),
        )
        .unwrap()
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// A stock Debian host: docker.service active with -H fd://, no socket unit.
    fn stock() -> Observed {
        Observed {
            daemon_json_path: PathBuf::from("/d/daemon.json"),
            docker: UnitInfo {
                load_state: "loaded".into(),
                active_state: "active".into(),
                unit_file_state: "enabled".into(),
                main_pid: 100,
                exec_start: vec![argv(
                    "/usr/sbin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock",
                )],
                ..UnitInfo::default()
            },
            socket: UnitInfo {
                load_state: "not-found".into(),
                active_state: "inactive".into(),
                ..UnitInfo::default()
            },
            daemon: Some(DaemonInfo::default()),
            wanted: "new".into(),
            guard_binary: PathBuf::from("/usr/bin/docker-tls-manager"),
            ..Observed::default()
        }
    }

    fn written<'a>(p: &'a DockerPlan, name: &str) -> Vec<&'a str> {
        p.steps
            .iter()
            .filter_map(|st| match st {
                Step::Write { path, content, .. } if path.ends_with(name) => Some(content.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The same host after a successful apply.
    fn converged(s: &Settings) -> Observed {
        let mut o = stock();
        let p = plan_configure(&stock(), s).unwrap();
        o.socket_file = written(&p, "docker-tcp.socket")
            .last()
            .map(|c| c.to_string());
        o.dropin_file = written(&p, "docker-tls-manager.conf")
            .last()
            .map(|c| c.to_string());
        o.daemon_json = written(&p, "daemon.json").last().map(|c| c.to_string());
        o.guard_unit_file = written(&p, "docker-tls-manager-guard.service")
            .last()
            .map(|c| c.to_string());
        o.socket = UnitInfo {
            load_state: "loaded".into(),
            active_state: "active".into(),
            unit_file_state: "enabled".into(),
            ..UnitInfo::default()
        };
        o.daemon = Some(DaemonInfo {
            live_restore: true,
            ..DaemonInfo::default()
        });
        o.served = Some("new".into());
        o.owned.original.insert("tlsverify".into(), None);
        o
    }

    fn kinds(p: &DockerPlan) -> Vec<String> {
        p.steps
            .iter()
            .map(|s| match s {
                Step::Write { path, .. } => {
                    format!("write {}", path.file_name().unwrap().to_string_lossy())
                }
                Step::Remove { path } => {
                    format!("remove {}", path.file_name().unwrap().to_string_lossy())
                }
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn fresh_host_writes_then_stop_socket_start_in_order() {
        let s = settings("");
        let p = plan_configure(&stock(), &s).unwrap();
        assert_eq!(
            kinds(&p),
            [
                "write docker-owned.json",
                "write daemon.json",
                "Commit",
                "ReloadDocker",
                "WaitLiveRestore",
                "write daemon.json",
                "write docker-tls-manager-guard.service",
                "write docker-tls-manager.conf",
                "write docker-tcp.socket",
                "EnableSocket",
                "DaemonReload",
                "CheckContainers",
                "StopDocker",
                "StartSocket",
                "StartDocker",
                "VerifyTls"
            ]
        );
        assert!(!p.deferred);
        // live-restore alone first (kept by any rollback), then the TLS keys.
        let dj = written(&p, "daemon.json");
        assert!(
            dj[0].contains("live-restore") && !dj[0].contains("tls"),
            "{}",
            dj[0]
        );
        assert!(dj[1].contains("\"tlsverify\": true"), "{}", dj[1]);
        // The socket and the guard unit check the daemon.json dockerd reads, for our CA.
        let socket = written(&p, "docker-tcp.socket")[0];
        assert!(
            socket.contains("ExecStartPre=/usr/bin/docker-tls-manager guard --ca /c/ca.pem --daemon-json /d/daemon.json --require /u/docker.service.d/docker-tls-manager.conf --require /u/docker-tls-manager-guard.service"),
            "{socket}"
        );
        let unit = written(&p, "docker-tls-manager-guard.service")[0];
        assert!(
            unit.contains("/usr/bin/docker-tls-manager guard --ca /c/ca.pem --daemon-json /d/daemon.json --effective"),
            "{unit}"
        );
    }

    /// A crash between any two writes must never leave a socket unit without the TLS keys
    /// in daemon.json and the drop-in that re-checks them: daemon.json, drop-in, socket.
    #[test]
    fn writes_come_in_the_order_that_keeps_the_port_guarded() {
        let s = settings("");
        for o in [stock(), {
            let mut o = stock();
            o.daemon = Some(DaemonInfo {
                live_restore: true,
                ..DaemonInfo::default()
            });
            o
        }] {
            let k = kinds(&plan_configure(&o, &s).unwrap());
            let pos = |n: &str| k.iter().rposition(|x| x == n).unwrap();
            assert!(pos("write daemon.json") < pos("write docker-tls-manager-guard.service"));
            assert!(
                pos("write docker-tls-manager-guard.service")
                    < pos("write docker-tls-manager.conf")
            );
            assert!(pos("write docker-tls-manager.conf") < pos("write docker-tcp.socket"));
        }
    }

    /// daemon.json already says live-restore, but the running dockerd never loaded it: the
    /// decision follows dockerd's /info, so it is reloaded before the restart.
    #[test]
    fn live_restore_in_the_file_but_not_in_dockerd_is_reloaded_before_the_restart() {
        let s = settings("");
        let mut o = converged(&s);
        o.served = Some("old".into());
        o.daemon = Some(DaemonInfo {
            live_restore: false,
            containers_running: 2,
            ..DaemonInfo::default()
        });
        assert!(
            o.daemon_json
                .as_deref()
                .unwrap()
                .contains("\"live-restore\": true")
        );
        let p = plan_configure(&o, &s).unwrap();
        assert!(!p.deferred);
        assert_eq!(
            kinds(&p),
            [
                "Commit",
                "ReloadDocker",
                "WaitLiveRestore",
                "CheckContainers",
                "RestartDocker",
                "VerifyTls"
            ]
        );
        // With live_restore = "off", the same host defers instead of killing containers.
        let p = plan_configure(&o, &settings("[docker]\nlive_restore = \"off\"")).unwrap();
        assert!(p.deferred, "{:?}", kinds(&p));
    }

    #[test]
    fn our_old_override_conf_is_removed_the_admins_is_left_alone() {
        let s = settings("");
        let mut o = converged(&s);
        o.legacy_dropin_file = Some(format!("{HEADER_FIRST_LINE}: ...\n[Unit]\n"));
        assert_eq!(
            kinds(&plan_configure(&o, &s).unwrap()),
            ["remove override.conf", "DaemonReload", "VerifyTls"]
        );
        o.legacy_dropin_file = Some("[Service]\nEnvironment=HTTP_PROXY=x\n".into());
        assert_eq!(plan_configure(&o, &s).unwrap(), DockerPlan::default());
    }

    /// An upgrade from a version without the guard, or another path of the binary: the units
    /// are rewritten, and neither Docker nor the socket restarts (clients are never refused).
    #[test]
    fn a_new_guard_line_needs_no_restart() {
        let s = settings("");
        let mut o = converged(&s);
        o.guard_binary = PathBuf::from("/usr/local/bin/docker-tls-manager");
        assert_eq!(
            kinds(&plan_configure(&o, &s).unwrap()),
            [
                "write docker-tls-manager-guard.service",
                "write docker-tcp.socket",
                "DaemonReload",
                "VerifyTls"
            ]
        );
    }

    #[test]
    fn a_dropin_deleted_by_hand_is_put_back_without_a_restart() {
        let s = settings("");
        let mut o = converged(&s);
        o.dropin_file = None;
        assert_eq!(
            kinds(&plan_configure(&o, &s).unwrap()),
            ["write docker-tls-manager.conf", "DaemonReload", "VerifyTls"]
        );
        // The same for the guard unit, and a masked one (a link to /dev/null reads empty).
        let mut o = converged(&s);
        o.guard_unit_file = Some(String::new());
        assert_eq!(
            kinds(&plan_configure(&o, &s).unwrap()),
            [
                "write docker-tls-manager-guard.service",
                "DaemonReload",
                "VerifyTls"
            ]
        );
    }

    #[test]
    fn paths_that_cannot_go_into_a_unit_are_refused() {
        let s = settings("");
        let mut o = stock();
        o.guard_binary = PathBuf::from("/opt/my tools/docker-tls-manager");
        let e = plan_configure(&o, &s).unwrap_err().0;
        assert!(e.contains("/opt/my tools") && e.contains("guard"), "{e}");
    }

    #[test]
    fn converged_host_needs_nothing() {
        let s = settings("");
        assert_eq!(
            plan_configure(&converged(&s), &s).unwrap(),
            DockerPlan::default()
        );
    }

    #[test]
    fn new_certificate_only_restarts_docker_keeping_the_socket() {
        let s = settings("");
        let mut o = converged(&s);
        o.served = Some("old".into());
        assert_eq!(
            kinds(&plan_configure(&o, &s).unwrap()),
            ["CheckContainers", "RestartDocker", "VerifyTls"]
        );
    }

    /// The PKI plan about to issue a new server certificate: the Docker plan shows the restart
    /// itself (for `--dry-run`, and for the look that may hold the renewal back).
    #[test]
    fn a_pending_server_certificate_is_planned_as_a_restart() {
        let s = settings("");
        let mut o = converged(&s);
        o.pki_changes_server = true;
        assert_eq!(
            kinds(&plan_configure(&o, &s).unwrap()),
            ["CheckContainers", "RestartDocker", "VerifyTls"]
        );
        o.daemon = Some(DaemonInfo {
            containers_running: 1,
            ..DaemonInfo::default()
        });
        assert!(
            plan_configure(&o, &settings("[docker]\nlive_restore = \"off\""))
                .unwrap()
                .deferred
        );
    }

    #[test]
    fn listen_change_restarts_the_socket_between_stop_and_start() {
        let s = settings("[docker]\nlisten = [\"2377\"]");
        let o = converged(&settings(""));
        assert_eq!(
            kinds(&plan_configure(&o, &s).unwrap()),
            [
                "write docker-tcp.socket",
                "DaemonReload",
                "CheckContainers",
                "StopDocker",
                "RestartSocket",
                "StartDocker",
                "VerifyTls"
            ]
        );
    }

    #[test]
    fn stopped_docker_is_started() {
        let s = settings("");
        let mut o = converged(&s);
        o.docker.active_state = "failed".into();
        o.daemon = None;
        o.served = None;
        assert_eq!(
            kinds(&plan_configure(&o, &s).unwrap()),
            ["StartDocker", "VerifyTls"]
        );
    }

    #[test]
    fn running_containers_without_live_restore_defer_the_restart() {
        let s = settings("[docker]\nlive_restore = \"off\"");
        let mut o = stock();
        o.daemon = Some(DaemonInfo {
            containers_running: 3,
            ..DaemonInfo::default()
        });
        let p = plan_configure(&o, &s).unwrap();
        assert!(p.deferred);
        assert!(
            p.warnings.iter().any(|w| w.contains("3 container(s)")),
            "{:?}",
            p.warnings
        );
        assert!(
            !kinds(&p)
                .iter()
                .any(|k| k.contains("Docker") || k.contains("Socket") && k != "EnableSocket"),
            "{:?}",
            kinds(&p)
        );
    }

    #[test]
    fn swarm_keeps_live_restore_off_and_defers_with_containers() {
        let s = settings("");
        let mut o = stock();
        o.daemon = Some(DaemonInfo {
            swarm_active: true,
            containers_running: 1,
            live_restore: false,
        });
        let p = plan_configure(&o, &s).unwrap();
        assert!(p.deferred);
        assert!(
            p.warnings.iter().any(|w| w.contains("swarm")),
            "{:?}",
            p.warnings
        );
        // Without containers, swarm gets TLS but never live-restore.
        o.daemon.as_mut().unwrap().containers_running = 0;
        let p = plan_configure(&o, &s).unwrap();
        let dj = p.steps.iter().find_map(|st| match st {
            Step::Write { path, content, .. } if path.ends_with("daemon.json") => {
                Some(content.clone())
            }
            _ => None,
        });
        assert!(!dj.unwrap().contains("live-restore"));
        let s = settings("[docker]\nlive_restore = \"on\"");
        assert!(plan_configure(&o, &s).unwrap_err().0.contains("swarm"));
    }

    #[test]
    fn conflicts_are_refused_with_what_to_change() {
        let s = settings("");
        let mut o = stock();
        o.daemon_json = Some(r#"{"hosts": ["tcp://0.0.0.0:2375"]}"#.into());
        let e = plan_configure(&o, &s).unwrap_err().0;
        assert!(e.contains("\"hosts\"") && e.contains("Remove"), "{e}");
        let cases = [
            ("/usr/bin/dockerd -H unix:///run/docker.sock", "-H fd://"),
            (
                "/usr/bin/dockerd -H fd:// -H tcp://0.0.0.0:2376",
                "tcp://0.0.0.0:2376",
            ),
            (
                "/usr/bin/dockerd -H fd:// --tlsverify --tlscert=/x",
                "--tlsverify, --tlscert",
            ),
            (
                "/usr/bin/dockerd -H fd:// --authorization-plugin=opa",
                "--authorization-plugin",
            ),
            (
                "/usr/bin/dockerd -H fd:// --authorization-plugin opa",
                "--authorization-plugin",
            ),
        ];
        for (cmd, needle) in cases {
            let mut o = stock();
            o.docker.exec_start = vec![argv(cmd)];
            let e = plan_configure(&o, &s).unwrap_err().0;
            assert!(e.contains(needle), "{cmd}: {e}");
        }
        let mut o = stock();
        o.daemon_json = Some("{not json".into());
        assert!(
            plan_configure(&o, &s)
                .unwrap_err()
                .0
                .contains("not valid JSON")
        );
        // Without our plugin, the flag is the admin's business.
        let mut o = stock();
        o.docker.exec_start = vec![argv("/usr/bin/dockerd -H fd:// --authorization-plugin=opa")];
        assert!(plan_configure(&o, &settings("[authz]\nenabled = false")).is_ok());
        let mut o = stock();
        o.docker.exec_start = vec![argv("/etc/init.d/docker start")];
        assert!(plan_configure(&o, &s).unwrap_err().0.contains("SysV"));
        let mut o = stock();
        o.docker.load_state = "not-found".into();
        assert!(
            plan_configure(&o, &s)
                .unwrap_err()
                .0
                .contains("not installed")
        );
    }

    #[test]
    fn user_values_replaced_are_recorded_and_warned() {
        let s = settings("");
        let mut o = stock();
        o.daemon_json =
            Some(r#"{"live-restore": false, "tlscert": "/old.pem", "debug": true}"#.into());
        let p = plan_configure(&o, &s).unwrap();
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("tlscert") && w.contains("/old.pem")),
            "{:?}",
            p.warnings
        );
        let owned: Owned = p
            .steps
            .iter()
            .find_map(|st| match st {
                Step::Write { path, content, .. } if path.ends_with("docker-owned.json") => {
                    serde_json::from_str(content).ok()
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            owned.original["tlscert"],
            Some(Value::String("/old.pem".into()))
        );
        assert_eq!(owned.original["live-restore"], Some(Value::Bool(false)));
        assert_eq!(owned.original["tlsverify"], None);
        assert!(!owned.created_daemon_json);
    }

    #[test]
    fn deconfigure_restores_keys_after_the_restart_and_live_restore_last() {
        let s = settings("");
        let mut o = converged(&s);
        let user: Map<String, Value> = serde_json::from_str(r#"{"debug": true}"#).unwrap();
        let wanted = DaemonSettings {
            tlscacert: "/c/ca.pem".into(),
            tlscert: "/c/server-cert.pem".into(),
            tlskey: "/c/server-key.pem".into(),
            live_restore: Some(true),
        };
        o.daemon_json = Some(render_json(&merge_daemon_json(&user, &wanted)));
        o.owned = Owned {
            created_daemon_json: false,
            original_text: Some("{\"debug\": true}".into()),
            original: [
                ("tlsverify", None),
                ("tlscacert", None),
                ("tlscert", None),
                ("tlskey", None),
                ("live-restore", None),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        let p = plan_deconfigure(&o, &s).unwrap();
        assert_eq!(
            kinds(&p),
            [
                "DisableSocket",
                "StopSocket",
                "remove docker-tcp.socket",
                "remove docker-tls-manager.conf",
                "remove docker-tls-manager-guard.service",
                "DaemonReload",
                "CheckContainers",
                "RestartDocker",
                "VerifyClosed",
                "write daemon.json",
                "ReloadDocker",
                "remove docker-owned.json"
            ]
        );
        // The TLS keys leave daemon.json only once no dockerd can get the socket; the user's
        // own text comes back byte for byte.
        assert_eq!(written(&p, "daemon.json"), ["{\"debug\": true}"]);
    }

    /// Containers without live-restore: the restart is deferred, but the socket is stopped and
    /// its unit removed first, so no later start of dockerd gets the port, TLS keys or not.
    #[test]
    fn deferred_deconfigure_never_leaves_a_socket_for_a_dockerd_without_tls() {
        let s = settings("");
        let mut o = converged(&s);
        o.owned.original = TLS_KEYS.iter().map(|k| (k.to_string(), None)).collect();
        o.daemon = Some(DaemonInfo {
            containers_running: 1,
            ..DaemonInfo::default()
        });
        let p = plan_deconfigure(&o, &s).unwrap();
        assert!(p.deferred);
        let k = kinds(&p);
        assert_eq!(
            &k[..6],
            [
                "DisableSocket",
                "StopSocket",
                "remove docker-tcp.socket",
                "remove docker-tls-manager.conf",
                "remove docker-tls-manager-guard.service",
                "DaemonReload"
            ]
        );
        assert!(!k.iter().any(|x| x.contains("RestartDocker")), "{k:?}");
        assert!(
            k.iter().position(|x| x == "write daemon.json")
                > k.iter().position(|x| x == "DaemonReload"),
            "{k:?}"
        );
    }
}
