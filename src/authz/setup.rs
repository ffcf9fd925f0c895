//! The convergence step of the plugin: its units and the fallback's script and files, the
//! socket enabled and listening, the plugin answering, and only then our name appended to
//! daemon.json's `authorization-plugins` (other plugins and their order kept) and Docker
//! reloaded (SIGHUP, never a restart). `remove` undoes it in the opposite order: our name out
//! of daemon.json and Docker reloaded first, then the units.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{
    DAEMON_JSON_KEY, FALLBACK_UNIT, Files, PLUGIN_NAME, PLUGIN_SOCKET, SERVICE_UNIT, SOCKET_UNIT,
};
use crate::config::Settings;
use crate::docker::render::{self, AuthzUnits, DOCKER_SERVICE};
use crate::files::{Backups, atomic_write, atomic_write_preserving, backup, ensure_dir};
use crate::systemd::{JobKind, Systemd};

/// How long the plugin has to answer its activation before Docker is told to ask it.
const ACTIVATE_TIMEOUT: Duration = Duration::from_secs(10);

fn script_path(files: &Files) -> PathBuf {
    files.fallback_script.clone()
}

/// The unit files and the fallback script, as they must be.
fn rendered(settings: &Settings, binary: &Path, daemon_json: &Path) -> Vec<(PathBuf, String, u32)> {
    let files = Files::new(settings);
    let u = AuthzUnits {
        binary: binary.to_path_buf(),
        config: settings
            .source
            .clone()
            .filter(|c| c != Path::new(crate::config::DEFAULT_CONFIG_PATH)),
        fallback_script: script_path(&files),
        metrics_dir: files
            .metrics
            .as_ref()
            .and_then(|m| m.parent())
            .map(Path::to_path_buf),
    };
    vec![
        (
            script_path(&files),
            render::authz_fallback_script(
                daemon_json,
                &files.fallback_daemon_json,
                &files.fallback_sha256,
            ),
            0o700,
        ),
        (
            Files::unit_path(settings, FALLBACK_UNIT),
            render::authz_fallback_unit(&u),
            0o644,
        ),
        (
            Files::unit_path(settings, SERVICE_UNIT),
            render::authz_service_unit(&u),
            0o644,
        ),
        (
            Files::unit_path(settings, SOCKET_UNIT),
            render::authz_socket_unit(),
            0o644,
        ),
    ]
}

/// daemon.json as a map (absent or empty: none).
fn read_daemon_json(path: &Path) -> Result<(Option<String>, Map<String, Value>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, Map::new())),
        Err(e) => return Err(e).with_context(|| format!("cannot read '{}'", path.display())),
    };
    if text.trim().is_empty() {
        return Ok((Some(text), Map::new()));
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok((Some(text), m)),
        _ => bail!(
            "'{}' is not a JSON object; fix it, then run apply again",
            path.display()
        ),
    }
}

/// The plugins listed, or a refusal if the key is not a list of names.
fn plugins(map: &Map<String, Value>, path: &Path) -> Result<Vec<String>> {
    match map.get(DAEMON_JSON_KEY) {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .with_context(|| {
                format!(
                    "'{}': \"{DAEMON_JSON_KEY}\" must list plugin names",
                    path.display()
                )
            }),
        Some(_) => bail!(
            "'{}': \"{DAEMON_JSON_KEY}\" must be a list of plugin names",
            path.display()
        ),
    }
}

/// `map` with our name appended (kept where it is if present).
pub fn with_plugin(map: &Map<String, Value>) -> Map<String, Value> {
    let mut out = map.clone();
    let mut list: Vec<Value> = match map.get(DAEMON_JSON_KEY) {
        Some(Value::Array(a)) => a.clone(),
        _ => vec![],
    };
    if !list.iter().any(|v| v.as_str() == Some(PLUGIN_NAME)) {
        list.push(Value::String(PLUGIN_NAME.into()));
    }
    out.insert(DAEMON_JSON_KEY.into(), Value::Array(list));
    out
}

/// `map` without our name; the key goes when nothing else is listed.
pub fn without_plugin(map: &Map<String, Value>) -> Map<String, Value> {
    let mut out = map.clone();
    if let Some(Value::Array(a)) = map.get(DAEMON_JSON_KEY) {
        let rest: Vec<Value> = a
            .iter()
            .filter(|v| v.as_str() != Some(PLUGIN_NAME))
            .cloned()
            .collect();
        if rest.is_empty() {
            out.remove(DAEMON_JSON_KEY);
        } else {
            out.insert(DAEMON_JSON_KEY.into(), Value::Array(rest));
        }
    }
    out
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Asks the plugin to activate, as dockerd does: `Ok` when it answers that it implements authz.
pub fn activate(socket: &Path, timeout: Duration) -> Result<()> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to the plugin socket '{}'", socket.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .with_context(|| format!("the plugin on '{}' did not answer", socket.display()))?;
    let (status, body) = crate::docker::daemon::parse_http(&resp)?;
    if status != 200 || !String::from_utf8_lossy(body).contains("\"authz\"") {
        bail!(
            "the plugin on '{}' answered {status}: {}",
            socket.display(),
            String::from_utf8_lossy(body)
        );
    }
    Ok(())
}

/// Writes `path` if its content differs (the old one backed up); true if written.
fn write_changed(
    path: &Path,
    content: &str,
    mode: u32,
    backups: &Backups,
    now: SystemTime,
) -> Result<bool> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    backup(path, backups, now)?;
    atomic_write(path, content.as_bytes(), mode)?;
    Ok(true)
}

/// Records what the fallback needs: daemon.json without our entry, and the SHA-256 of the
/// daemon.json it may replace (the one on disk, with our entry).
fn record_fallback(files: &Files, with_text: &str, without: &Map<String, Value>) -> Result<()> {
    let without_text = render::render_json(without);
    let sha = sha256_hex(with_text.as_bytes()) + "\n";
    if std::fs::read_to_string(&files.fallback_daemon_json)
        .ok()
        .as_deref()
        != Some(without_text.as_str())
    {
        atomic_write(&files.fallback_daemon_json, without_text.as_bytes(), 0o600)?;
    }
    if std::fs::read_to_string(&files.fallback_sha256)
        .ok()
        .as_deref()
        != Some(sha.as_str())
    {
        atomic_write(&files.fallback_sha256, sha.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// Brings the plugin to the configured state (on, or off with `[authz] enabled = false`).
/// Returns what it did, for people.
pub async fn converge<S: Systemd>(
    settings: &Settings,
    sd: &S,
    daemon_json: &Path,
    binary: &Path,
    backups: &Backups,
) -> Result<Vec<String>> {
    if !settings.authz.enabled {
        return remove(settings, sd, daemon_json, backups).await;
    }
    let files = Files::new(settings);
    let now = SystemTime::now();
    let mut done = vec![];
    let (text, map) = read_daemon_json(daemon_json)?;
    let listed = plugins(&map, daemon_json)?;
    let has = listed.iter().any(|p| p == PLUGIN_NAME);
    // Docker is told to ask the plugin only once it answers; if it cannot be made to answer,
    // our entry goes (Docker would wait 32 s on every request).
    if let Err(e) = serve(settings, sd, daemon_json, binary, backups, now, &mut done).await {
        if has {
            done.extend(take_out(&files, daemon_json, &map, sd, backups, now).await?);
            for d in &done {
                tracing::warn!("authz: {d}");
            }
        }
        return Err(e);
    }
    let with = with_plugin(&map);
    let without = without_plugin(&map);
    if has {
        // Kept up to date, so the fallback recognises the file as it is now.
        record_fallback(&files, text.as_deref().unwrap_or(""), &without)?;
    } else {
        let new_text = render::render_json(&with);
        record_fallback(&files, &new_text, &without)?;
        backup(daemon_json, backups, now)?;
        atomic_write_preserving(daemon_json, new_text.as_bytes(), 0o644)?;
        done.push(format!(
            "add {PLUGIN_NAME} to \"{DAEMON_JSON_KEY}\" in '{}'",
            daemon_json.display()
        ));
        reload_docker(sd, &mut done).await?;
        await_dockerd(settings, sd, true, &mut done).await;
    }
    Ok(done)
}

/// After the reload that adds (`want`) or removes our entry: until dockerd does as told, at
/// most 5 s (dockerd applies the SIGHUP after `systemctl reload` has returned). So `status`
/// and `check` right after see it, and the plugin's socket is not stopped while dockerd still
/// asks it. Asked as `status` does (the probe identity over TLS); gives up at once when Docker
/// cannot be asked that way (TLS not served yet: a deferred restart; Docker stopped).
async fn await_dockerd<S: Systemd>(
    settings: &Settings,
    sd: &S,
    want: bool,
    done: &mut Vec<String>,
) {
    const PATIENCE: Duration = Duration::from_secs(5);
    // Docker stopped: no reload was sent, and a connection to its TLS port would start it
    // (docker-tcp.socket activates docker.service).
    if !sd.unit(DOCKER_SERVICE).await.is_ok_and(|u| u.is_active()) {
        return;
    }
    let probe = crate::docker::tls_probe(settings);
    let t0 = std::time::Instant::now();
    loop {
        let p = probe.clone();
        let asked = tokio::time::timeout(
            PATIENCE,
            tokio::task::spawn_blocking(move || p.consulted_blocking()),
        )
        .await;
        match asked {
            Ok(Ok(Ok(c))) if c == want => {
                done.push(format!(
                    "verified: dockerd {} {PLUGIN_NAME}",
                    if want {
                        "consults"
                    } else {
                        "no longer consults"
                    }
                ));
                return;
            }
            Ok(Ok(Ok(_))) if t0.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Ok(Ok(_))) => {
                tracing::warn!(
                    "dockerd {} {PLUGIN_NAME} {PATIENCE:?} after its reload",
                    if want {
                        "does not consult"
                    } else {
                        "still consults"
                    }
                );
                return;
            }
            Ok(Ok(Err(e))) => {
                tracing::debug!("cannot ask dockerd whether it consults {PLUGIN_NAME}: {e:#}");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!("asking dockerd whether it consults {PLUGIN_NAME}: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("asking dockerd whether it consults {PLUGIN_NAME}: timed out");
                return;
            }
        }
    }
}

/// Units written, socket enabled and listening, the plugin answering its activation.
async fn serve<S: Systemd>(
    settings: &Settings,
    sd: &S,
    daemon_json: &Path,
    binary: &Path,
    backups: &Backups,
    now: SystemTime,
    done: &mut Vec<String>,
) -> Result<()> {
    let files = Files::new(settings);
    for p in [binary, daemon_json, files.dir.as_path()]
        .into_iter()
        .chain(settings.source.as_deref())
    {
        if !render::is_plain_path(p) {
            bail!(
                "'{}' goes into the authorization plugin's units, and only absolute paths of letters, \
                 digits and / . _ - + are supported; move it, or set [authz] enabled = false",
                p.display()
            );
        }
    }
    ensure_dir(&files.dir, 0o700)?;
    let mut units_changed = false;
    let mut service_changed = false;
    let service_path = Files::unit_path(settings, SERVICE_UNIT);
    for (path, content, mode) in rendered(settings, binary, daemon_json) {
        if write_changed(&path, &content, mode, backups, now)? {
            done.push(format!("write '{}'", path.display()));
            units_changed |= path.extension().is_some_and(|e| e != "sh");
            service_changed |= path == service_path;
        }
    }
    if units_changed {
        sd.reload().await?;
        done.push("systemd daemon-reload".into());
    }
    // A plugin started from the old unit (another binary, other paths) must not go on: it is
    // restarted if it runs (try-restart); its socket keeps Docker's requests meanwhile.
    if service_changed && sd.unit(SERVICE_UNIT).await?.is_active() {
        sd.job(JobKind::Restart, SERVICE_UNIT).await?;
        done.push(format!("restart {SERVICE_UNIT} (its unit changed)"));
    }
    let socket = sd.unit(SOCKET_UNIT).await?;
    if socket.unit_file_state != "enabled" {
        sd.enable(SOCKET_UNIT).await?;
        done.push(format!("enable {SOCKET_UNIT}"));
    }
    if !socket.is_active() {
        let _ = sd.reset_failed(SERVICE_UNIT).await;
        let _ = sd.reset_failed(SOCKET_UNIT).await;
        sd.job(JobKind::Start, SOCKET_UNIT).await?;
        done.push(format!("start {SOCKET_UNIT}"));
    }
    tokio::task::spawn_blocking(|| activate(Path::new(PLUGIN_SOCKET), ACTIVATE_TIMEOUT))
        .await
        .context("the plugin check panicked")?
        .with_context(|| {
            format!(
                "the authorization plugin does not answer on '{PLUGIN_SOCKET}' (`journalctl -u {SERVICE_UNIT}`); \
                 Docker is not told to ask it"
            )
        })
}

async fn reload_docker<S: Systemd>(sd: &S, done: &mut Vec<String>) -> Result<()> {
    if sd.unit(DOCKER_SERVICE).await?.is_active() {
        sd.job(JobKind::Reload, DOCKER_SERVICE).await?;
        done.push(format!("reload {DOCKER_SERVICE} (SIGHUP, no restart)"));
    }
    Ok(())
}

/// Our entry out of daemon.json, Docker reloaded.
async fn take_out<S: Systemd>(
    files: &Files,
    daemon_json: &Path,
    map: &Map<String, Value>,
    sd: &S,
    backups: &Backups,
    now: SystemTime,
) -> Result<Vec<String>> {
    let mut done = vec![];
    let without = without_plugin(map);
    backup(daemon_json, backups, now)?;
    atomic_write_preserving(daemon_json, render::render_json(&without).as_bytes(), 0o644)?;
    let _ = std::fs::remove_file(&files.fallback_sha256);
    done.push(format!(
        "remove {PLUGIN_NAME} from \"{DAEMON_JSON_KEY}\" in '{}'",
        daemon_json.display()
    ));
    reload_docker(sd, &mut done).await?;
    Ok(done)
}

/// Takes the plugin out: our entry out of daemon.json and Docker reloaded first, then the
/// socket and service stopped and disabled, their files removed (backed up).
pub async fn remove<S: Systemd>(
    settings: &Settings,
    sd: &S,
    daemon_json: &Path,
    backups: &Backups,
) -> Result<Vec<String>> {
    let files = Files::new(settings);
    let now = SystemTime::now();
    let mut done = vec![];
    let (_, map) = read_daemon_json(daemon_json)?;
    if plugins(&map, daemon_json)
        .unwrap_or_default()
        .iter()
        .any(|p| p == PLUGIN_NAME)
    {
        done.extend(take_out(&files, daemon_json, &map, sd, backups, now).await?);
        // Before its socket goes: dockerd would otherwise wait on a plugin nobody serves.
        await_dockerd(settings, sd, false, &mut done).await;
    }
    let socket_file = Files::unit_path(settings, SOCKET_UNIT);
    let any_unit = [SOCKET_UNIT, SERVICE_UNIT, FALLBACK_UNIT]
        .iter()
        .any(|u| Files::unit_path(settings, u).exists());
    if !any_unit {
        return Ok(done);
    }
    if socket_file.exists() {
        let socket = sd.unit(SOCKET_UNIT).await?;
        if socket.unit_file_state == "enabled" {
            sd.disable(SOCKET_UNIT).await?;
            done.push(format!("disable {SOCKET_UNIT}"));
        }
        if socket.is_active() {
            sd.job(JobKind::Stop, SOCKET_UNIT).await?;
            done.push(format!("stop {SOCKET_UNIT}"));
        }
    }
    if sd.unit(SERVICE_UNIT).await?.is_active() {
        sd.job(JobKind::Stop, SERVICE_UNIT).await?;
        done.push(format!("stop {SERVICE_UNIT}"));
    }
    for u in [SOCKET_UNIT, SERVICE_UNIT, FALLBACK_UNIT] {
        let p = Files::unit_path(settings, u);
        if p.exists() {
            backup(&p, backups, now)?;
            std::fs::remove_file(&p).with_context(|| format!("cannot remove '{}'", p.display()))?;
            done.push(format!("remove '{}'", p.display()));
        }
    }
    for p in [
        script_path(&files),
        files.fallback_daemon_json.clone(),
        files.fallback_sha256.clone(),
    ] {
        let _ = std::fs::remove_file(p);
    }
    sd.reload().await?;
    done.push("systemd daemon-reload".into());
    for u in [SERVICE_UNIT, SOCKET_UNIT, FALLBACK_UNIT] {
        let _ = sd.reset_failed(u).await;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn entry_appended_others_kept_in_order() {
        let user =
            m(r#"{"log-level":"info","authorization-plugins":["opa","other"],"tlsverify":true}"#);
        let w = with_plugin(&user);
        assert_eq!(
            w["authorization-plugins"],
            serde_json::json!(["opa", "other", PLUGIN_NAME])
        );
        assert_eq!(
            w.keys().collect::<Vec<_>>(),
            user.keys().collect::<Vec<_>>()
        );
        assert_eq!(with_plugin(&w), w, "idempotent");
        assert_eq!(without_plugin(&w), user);
        let fresh = m(r#"{"tlsverify":true}"#);
        assert_eq!(
            without_plugin(&with_plugin(&fresh)),
            fresh,
            "the key goes with our entry"
        );
        let ours_first = m(r#"{"authorization-plugins":["docker-tls-manager","opa"]}"#);
        assert_eq!(with_plugin(&ours_first), ours_first, "kept where it is");
        assert_eq!(
            without_plugin(&ours_first),
            m(r#"{"authorization-plugins":["opa"]}"#)
        );
    }

    #[test]
    fn a_key_that_is_not_a_list_is_refused() {
        let p = Path::new("/etc/docker/daemon.json");
        assert!(plugins(&m(r#"{"authorization-plugins":"opa"}"#), p).is_err());
        assert!(plugins(&m(r#"{"authorization-plugins":[1]}"#), p).is_err());
        assert_eq!(plugins(&m(r#"{}"#), p).unwrap(), Vec::<String>::new());
    }
}
