//! The Docker planner: a pure function of what systemd, dockerd and the disk say (an
//! [`Observed`]) and the settings, to ordered [`Step`]s. It refuses, with what to change, when
//! the host's own configuration would stop dockerd from starting with ours.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::daemon::DaemonInfo;
use super::render::{
    self, DOCKER_SERVICE, DaemonSettings, LIVE_RESTORE_KEY, SOCKET_UNIT, TLS_KEYS,
};
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
    /// Until dockerd's /info reports live-restore on.
    WaitLiveRestore,
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
            Step::WaitLiveRestore => f.write_str("wait until dockerd reports live-restore on"),
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
            _ if a.starts_with("-H") && a.len() > 2 && !a.starts_with("--") => {
                ("-H".to_string(), Some(a[2..].to_string()))
            }
            _ => (a.clone(), None),
        };
        let takes_value = matches!(
            name.as_str(),
            "-H" | "--host" | "--config-file" | "--tlscacert" | "--tlscert" | "--tlskey"
        );
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
            "--tls" | "--tlsverify" | "--tlscacert" | "--tlscert" | "--tlskey" => {
                f.tls_flags.push(name.clone())
            }
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
    settings
        .paths
        .systemd_dir
        .join("docker.service.d")
        .join(render::DROPIN_NAME)
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
pub fn plan_configure(obs: &Observed, settings: &Settings) -> Result<DockerPlan, UsageError> {
    let layout = Layout::new(&settings.paths);
    let flags = obs
        .docker
        .exec_start
        .first()
        .map(|a| parse_dockerd_flags(a))
        .unwrap_or_default();
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
    let needs_restart =
        docker_active && (units_changed || tls_changed || !serving_current || !socket_active);

    let effective_lr = flags.live_restore
        || obs.daemon.as_ref().is_some_and(|d| d.live_restore)
        || live_restore == Some(true);
    let running = obs.daemon.as_ref().map_or(0, |d| d.containers_running);
    if needs_restart && obs.daemon.is_none() {
        // Docker runs but does not answer /info: whether containers would die is unknown.
        plan.deferred = true;
        plan.warnings.push(format!(
            "restart of {DOCKER_SERVICE} deferred: dockerd does not answer on its unix socket, so whether \
             containers would be killed is unknown; nothing was changed for Docker"
        ));
    } else if needs_restart && running > 0 && !effective_lr {
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

    // Files.
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
                path: owned_path(settings),
                content: serde_json::to_string_pretty(&owned).expect("serializable") + "\n",
                mode: 0o600,
            });
        }
    }
    if socket_changed {
        plan.steps.push(Step::Write {
            path: socket_path(settings),
            content: socket_content,
            mode: 0o644,
        });
    }
    if dropin_changed {
        plan.steps.push(Step::Write {
            path: dropin_path(settings),
            content: dropin_content,
            mode: 0o644,
        });
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
    // Switch live-restore on before the restart, so the restart keeps containers; the reload
    // job ends when SIGHUP is sent, so wait until dockerd reports it on.
    if lr_changed && live_restore == Some(true) && docker_active {
        plan.steps.push(Step::ReloadDocker);
        plan.steps.push(Step::WaitLiveRestore);
    }
    if needs_restart {
        if socket_changed || !socket_active {
            // systemd hands a service the sockets that exist when it starts: stop, socket, start.
            plan.steps.push(Step::StopDocker);
            plan.steps.push(if socket_active {
                Step::RestartSocket
            } else {
                Step::StartSocket
            });
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
        Some(t) if serde_json::from_str::<Map<String, Value>>(t).is_ok_and(|m| &m == map) => {
            t.clone()
        }
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
        plan.steps.push(Step::Remove {
            path: socket_path(settings),
        });
    }
    if obs.dropin_file.is_some() {
        plan.steps.push(Step::Remove {
            path: dropin_path(settings),
        });
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
        if docker_active {
            plan.steps.push(Step::ReloadDocker);
        }
    } else if obs.owned.created_daemon_json && final_map.is_empty() && obs.daemon_json.is_some() {
        plan.steps.push(Step::Remove {
            path: obs.daemon_json_path.clone(),
        });
    } else if without_tls != existing {
        let text = restored_text(&obs.owned, &final_map);
        if text != render::render_json(&final_map) {
            plan.steps.push(Step::Write {
                path: obs.daemon_json_path.clone(),
                content: text,
                mode: 0o644,
            });
        }
    }
    plan.steps.push(Step::Remove {
        path: owned_path(settings),
    });
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::render::{dropin, merge_daemon_json, render_json, socket_unit};

    fn settings(extra: &str) -> Settings {
        crate::config::parse(
            &format!("[paths]\nstate_dir = \"/s\"\ncert_dir = \"/c\"\nsystemd_dir = \"/u\"\ndaemon_json = \"/d/daemon.json\"\n{extra}"),
            Path::new("t.toml"),
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
            ..Observed::default()
        }
    }

    /// The same host after a successful apply.
    fn converged(s: &Settings) -> Observed {
        let mut o = stock();
        o.socket_file = Some(socket_unit(&s.docker.listen));
        o.dropin_file = Some(dropin());
        let p = plan_configure(&stock(), s).unwrap();
        let dj = p.steps.iter().find_map(|st| match st {
            Step::Write { path, content, .. } if path.ends_with("daemon.json") => {
                Some(content.clone())
            }
            _ => None,
        });
        o.daemon_json = dj;
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
                "write docker-tcp.socket",
                "write override.conf",
                "write daemon.json",
                "EnableSocket",
                "DaemonReload",
                "ReloadDocker",
                "WaitLiveRestore",
                "StopDocker",
                "StartSocket",
                "StartDocker",
                "VerifyTls"
            ]
        );
        assert!(!p.deferred);
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
            ["RestartDocker", "VerifyTls"]
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
    fn dockerd_flags() {
        let f = parse_dockerd_flags(&argv(
            "/usr/bin/dockerd -Hfd:// --host=unix:///x --config-file /etc/d.json --live-restore --tlskey k",
        ));
        assert_eq!(f.hosts, ["fd://", "unix:///x"]);
        assert_eq!(f.config_file, Some(PathBuf::from("/etc/d.json")));
        assert!(f.live_restore);
        assert_eq!(f.tls_flags, ["--tlskey"]);
        let mut o = stock();
        o.docker.exec_start = vec![argv(
            "/usr/bin/dockerd -H fd:// --config-file=/etc/docker/other.json",
        )];
        assert_eq!(
            daemon_json_path(&o.docker, &settings("")),
            PathBuf::from("/etc/docker/other.json")
        );
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
                "remove docker-tcp.socket",
                "remove override.conf",
                "write daemon.json",
                "DaemonReload",
                "StopDocker",
                "StopSocket",
                "StartDocker",
                "VerifyClosed",
                "write daemon.json",
                "ReloadDocker",
                "remove docker-owned.json"
            ]
        );
        // The first write keeps live-restore for the restart; the last is the user's text.
        let writes: Vec<&String> = p
            .steps
            .iter()
            .filter_map(|st| match st {
                Step::Write { content, .. } => Some(content),
                _ => None,
            })
            .collect();
        assert!(writes[0].contains("live-restore") && !writes[0].contains("tls"));
        assert_eq!(writes[1], "{\"debug\": true}");
    }
}
