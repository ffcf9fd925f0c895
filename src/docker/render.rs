//! Renderers: the socket unit, the docker.service drop-in and the merged daemon.json, as pure
//! functions returning strings (checked against golden files under `tests/fixtures/`).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::Listen;

/// Name of the TCP socket unit.
pub const SOCKET_UNIT: &str = "docker-tcp.socket";
/// The Docker service the socket feeds.
pub const DOCKER_SERVICE: &str = "docker.service";
/// File name of our drop-in under `docker.service.d/`. Not `override.conf`: that is the file
/// `systemctl edit docker` writes, the admin's own.
pub const DROPIN_NAME: &str = "docker-tls-manager.conf";
/// The drop-in name of earlier versions: removed when it carries our header.
pub const LEGACY_DROPIN_NAME: &str = "override.conf";

/// The first line of every file we render, by which we recognise our own.
pub const HEADER_FIRST_LINE: &str = "# Written by docker-tls-manager";

const HEADER: &str = "# Written by docker-tls-manager: edits here are put back on the next apply.\n\
# Change /etc/docker-tls-manager/config.toml instead; `docker-tls-manager deconfigure` removes it.\n";

/// The oneshot docker.service pulls in before every start of dockerd: the guard.
pub const GUARD_UNIT: &str = "docker-tls-manager-guard.service";

/// How the units call the guard (`docker-tls-manager guard`): our binary, the CA daemon.json
/// must name, the daemon.json dockerd reads by default, and the files the socket requires (our
/// drop-in and guard unit). Paths are plain (checked by the planner), so they need no quoting
/// in a unit file or a shell command.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    pub binary: PathBuf,
    pub ca: PathBuf,
    /// The daemon.json dockerd reads now (as planned: `--config-file` honoured).
    pub daemon_json: PathBuf,
    /// The daemon.json dockerd reads without `--config-file`: what the guard unit falls back
    /// to when ExecStart no longer names one.
    pub default_daemon_json: PathBuf,
    pub dropin: PathBuf,
    pub guard_unit: PathBuf,
    /// `--config` for the repair before dockerd starts, when not the default file.
    pub config: Option<PathBuf>,
}

impl Guard {
    fn command(&self, daemon_json: &Path) -> String {
        format!(
            "{} guard --ca {} --daemon-json {}",
            self.binary.display(),
            self.ca.display(),
            daemon_json.display()
        )
    }
}

/// Whether a path can be written into a unit file and a shell command as it is.
pub fn is_plain_path(p: &Path) -> bool {
    let s = p.to_string_lossy();
    s.starts_with('/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
}

/// `docker-tcp.socket`: systemd holds the TCP listener(s), so clients queue rather than being
/// refused while docker.service restarts. It listens only if the guard passes: daemon.json
/// turns on mutual TLS with our CA, and the drop-in and guard unit that re-check at every start
/// of dockerd are in place. (No D-Bus here: sockets start before the bus at boot.)
pub fn socket_unit(listen: &[Listen], guard: &Guard) -> String {
    let mut s = String::from(HEADER);
    s.push_str("[Unit]\nDescription=Docker API over TCP with mutual TLS (docker-tls-manager)\n\n[Socket]\n");
    s.push_str("# Never listen unless dockerd will serve this socket with mutual TLS.\n");
    s.push_str(&format!(
        "ExecStartPre={} --require {} --require {}\n",
        guard.command(&guard.daemon_json),
        guard.dropin.display(),
        guard.guard_unit.display()
    ));
    for l in listen {
        s.push_str(&format!("ListenStream={}\n", l.spec));
    }
    s.push_str("BindIPv6Only=both\nService=docker.service\n\n[Install]\nWantedBy=sockets.target\n");
    s
}

/// docker.service's drop-in: docker.service pulls in the TCP socket and starts after it, so
/// systemd hands dockerd the listener (dockerd wraps TCP listeners from `-H fd://` in TLS); and
/// before every start of dockerd, the guard unit. A dependency, not an `ExecStartPre=`: another
/// drop-in can reset `ExecStartPre=`, not `Wants=`.
pub fn dropin() -> String {
    let mut s = String::from(HEADER);
    s.push_str(&format!(
        "[Unit]\nWants={SOCKET_UNIT} {GUARD_UNIT}\nAfter={SOCKET_UNIT} {GUARD_UNIT}\n"
    ));
    s
}

/// The guard unit: before every start of dockerd (restarts by anyone, crash restarts), checks
/// the daemon.json that docker.service's ExecStart really gives dockerd (asked of systemd, so
/// a `--config-file` added later counts); if it no longer turns on mutual TLS with our CA, or
/// our binary is gone, the socket is stopped, so dockerd never gets the port in plain HTTP.
/// Docker still starts.
pub fn guard_unit(guard: &Guard) -> String {
    let mut s = String::from(HEADER);
    s.push_str(&format!(
        "[Unit]\nDescription=Keep Docker's TCP socket closed unless dockerd serves it with mutual TLS (docker-tls-manager)\n\
         Before=docker.service\n\
         After=time-set.target\n\
         # Runs at every start of dockerd, however often: a rate limit would let one through.\n\
         StartLimitIntervalSec=0\n\n[Service]\nType=oneshot\nTimeoutStartSec=2min\nUMask=0077\n\
         # First repair the certificate files (a key and certificate a crash left unmatched):\n\
         # dockerd cannot start with them. Skipped while a convergence holds the lock.\n\
         ExecStart=-/usr/bin/timeout 60 {} {}apply --pki-only\n\
         ExecStart=/bin/sh -c '{} --effective || exec /bin/systemctl stop {SOCKET_UNIT}'\n\
         # Whatever made this unit fail (killed, timed out, a line changed by a drop-in): closed.\n\
         ExecStopPost=/bin/sh -c 'test \"$$SERVICE_RESULT\" = success || exec /bin/systemctl stop {SOCKET_UNIT}'\n",
        guard.binary.display(),
        guard
            .config
            .as_ref()
            .map(|c| format!("--config {} ", c.display()))
            .unwrap_or_default(),
        guard.command(&guard.default_daemon_json)
    ));
    s
}

// ---- The authorization plugin's units (issue 11): see `crate::authz`. ----

/// What the authorization plugin's units need to know.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthzUnits {
    pub binary: PathBuf,
    /// `--config` when not the default file.
    pub config: Option<PathBuf>,
    /// The shell script the fallback unit runs (in the state directory).
    pub fallback_script: PathBuf,
    /// The directory of the plugin's metrics file, writable in the service's sandbox.
    pub metrics_dir: Option<PathBuf>,
}

/// The plugin socket: held by systemd, so requests queue while the server restarts. Stopped
/// or failed outside a shutdown, the fallback takes our entry out of daemon.json: dockerd
/// would otherwise wait 32 s on every request, those on the local unix socket included.
pub fn authz_socket_unit() -> String {
    use crate::authz::{FALLBACK_UNIT, PLUGIN_SOCKET, SERVICE_UNIT};
    let mut s = String::from(HEADER);
    s.push_str(&format!(
        "[Unit]\nDescription=Docker authorization plugin socket (docker-tls-manager: revocation, roles, audit)\n\
         # Listening before dockerd starts; stopped after it at shutdown.\nBefore={DOCKER_SERVICE}\n\n\
         [Socket]\nListenStream={PLUGIN_SOCKET}\nSocketMode=0600\nRemoveOnStop=yes\nService={SERVICE_UNIT}\n\
         # Closed while the system runs (stopped by hand, failed): Docker must not wait for a\n\
         # plugin nobody serves.\n\
         ExecStopPost=/bin/sh -c 'systemctl is-system-running | grep -qx stopping || exec systemctl start --no-block {FALLBACK_UNIT}'\n\n\
         [Install]\nWantedBy=sockets.target\n"
    ));
    s
}

/// The plugin server, started by its socket, restarted always and without a rate limit. A
/// kill or a stop only restarts it (the socket keeps the requests), and so does a single
/// failure (a crash, an exit code): each is counted in its runtime directory, kept across
/// restarts, and only the `AUTHZ_FAILURES`-th within `AUTHZ_FAILURE_WINDOW_S` seconds runs
/// the fallback (which turns revocation and roles off: one crash an attacker provokes must
/// not). Our binary gone stops the socket at once, whose stop runs the fallback.
pub fn authz_service_unit(u: &AuthzUnits) -> String {
    use crate::authz::{
        AUTHZ_FAILURE_WINDOW_S, AUTHZ_FAILURES, AUTHZ_RUNTIME_DIR, FALLBACK_UNIT, SOCKET_UNIT,
    };
    let mut s = String::from(HEADER);
    s.push_str(&format!(
        "[Unit]\nDescription=Docker authorization plugin: revocation, roles, audit (docker-tls-manager)\n\
         Requires={SOCKET_UNIT}\nAfter={SOCKET_UNIT}\nStartLimitIntervalSec=0\n\n\
         [Service]\nExecStart={} {}authz serve\nRestart=always\nRestartSec=100ms\n\
         # The audit: journald's default rate limit would drop every client's lines while one\n\
         # floods. 0 would mean that default: a limit far above what the plugin can log instead.\n\
         LogRateLimitIntervalSec=1s\nLogRateLimitBurst=10000000\n\
         # Failures counted here, kept across restarts (the file's name is in ExecStopPost).\n\
         RuntimeDirectory={AUTHZ_RUNTIME_DIR}\nRuntimeDirectoryMode=0700\nRuntimeDirectoryPreserve=restart\n\
         # Our binary gone: the socket stops (ending the restarts), its stop runs the fallback.\n\
         # A kill or a stop: restarted. A failure (an abort or a crash included): restarted, and counted; the {AUTHZ_FAILURES}th within\n\
         # {AUTHZ_FAILURE_WINDOW_S} s (or failures that cannot be counted) runs the fallback.\n\
         ExecStopPost=/bin/sh -c 'test -x {} || exec /bin/systemctl stop --no-block {SOCKET_UNIT}; \\\n \
         case \"$$SERVICE_RESULT:$$EXIT_STATUS\" in success:*|signal:KILL|signal:TERM|signal:INT|signal:HUP) exit 0;; esac; \\\n \
         f=/run/{AUTHZ_RUNTIME_DIR}/failures; now=$$(cut -d. -f1 /proc/uptime); n=0; \\\n \
         if {{ tail -n {} \"$$f\" 2>/dev/null; echo \"$$now\"; }} > \"$$f.new\" && mv -f \"$$f.new\" \"$$f\"; \\\n \
         then while read t; do [ $$((now - t)) -ge {AUTHZ_FAILURE_WINDOW_S} ] || n=$$((n + 1)); done < \"$$f\"; else n={AUTHZ_FAILURES}; fi; \\\n \
         if [ $$n -lt {AUTHZ_FAILURES} ]; then echo \"failed ($$SERVICE_RESULT), $$n of {AUTHZ_FAILURES} within {AUTHZ_FAILURE_WINDOW_S} s: restarted, Docker still asks it\" >&2; exit 0; fi; \\\n \
         echo \"failed ($$SERVICE_RESULT) {AUTHZ_FAILURES} times within {AUTHZ_FAILURE_WINDOW_S} s: Docker stops asking it (fallback)\" >&2; \\\n \
         exec /bin/systemctl start --no-block {FALLBACK_UNIT}'\n\
         UMask=0077\nProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\nNoNewPrivileges=yes\n\
         RestrictAddressFamilies=AF_UNIX\nProtectKernelTunables=yes\nProtectKernelModules=yes\nProtectControlGroups=yes\n{}",
        u.binary.display(),
        u.config
            .as_ref()
            .map(|c| format!("--config {} ", c.display()))
            .unwrap_or_default(),
        u.binary.display(),
        AUTHZ_FAILURES - 1,
        u.metrics_dir
            .as_ref()
            .map(|d| format!("ReadWritePaths=-{}\n", d.display()))
            .unwrap_or_default(),
    ));
    s
}

/// The fallback: a shell oneshot, no binary of ours needed.
pub fn authz_fallback_unit(u: &AuthzUnits) -> String {
    let mut s = String::from(HEADER);
    s.push_str(&format!(
        "[Unit]\nDescription=Take docker-tls-manager out of Docker's authorization plugins when it cannot answer\n\n\
         [Service]\nType=oneshot\nExecStart=/bin/sh {}\n",
        u.fallback_script.display()
    ));
    s
}

/// The fallback's script: if daemon.json still holds our entry and is the very file we last
/// wrote or saw (its SHA-256), swap in the copy without our entry (same directory, mode and
/// owner kept, rename) and reload Docker (SIGHUP, never a restart). If the admin changed it
/// since, it is left alone and the journal says what to do.
pub fn authz_fallback_script(daemon_json: &Path, without: &Path, sha256: &Path) -> String {
    format!(
        "{HEADER}# Run by {fallback} when Docker's authorization plugin {name} cannot answer.\n\
set -u\n\
f={dj}\n\
grep -q '\"{name}\"' \"$f\" 2>/dev/null || exit 0\n\
t=$(readlink -f \"$f\")\n\
if [ \"$(sha256sum < \"$t\" | cut -d' ' -f1)\" != \"$(cat {sha} 2>/dev/null)\" ] || [ ! -s {without} ]; then\n\
  echo \"the authorization plugin {name} cannot answer and $f changed since {name} last saw it: left as it is. Docker waits on every request: remove {name} from authorization-plugins in $f, then systemctl reload docker\" >&2\n\
  exit 1\n\
fi\n\
tmp=\"$(dirname \"$t\")/.dtm-tmp-fallback.$$\"\n\
cp {without} \"$tmp\" && chmod --reference=\"$t\" \"$tmp\" && chown --reference=\"$t\" \"$tmp\" && sync \"$tmp\" && mv -f \"$tmp\" \"$t\" || {{ rm -f \"$tmp\"; exit 1; }}\n\
echo \"the authorization plugin {name} cannot answer: taken out of authorization-plugins in $f (revocation and roles are not enforced until docker-tls-manager apply, or the service, puts it back)\" >&2\n\
if systemctl is-active -q {docker}; then exec systemctl reload --no-block {docker}; fi\n",
        fallback = crate::authz::FALLBACK_UNIT,
        name = crate::authz::PLUGIN_NAME,
        dj = daemon_json.display(),
        without = without.display(),
        sha = sha256.display(),
        docker = DOCKER_SERVICE,
    )
}

/// The daemon.json keys the manager owns.
pub const TLS_KEYS: [&str; 4] = ["tlsverify", "tlscacert", "tlscert", "tlskey"];
pub const LIVE_RESTORE_KEY: &str = "live-restore";

/// The values the manager wants in daemon.json.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSettings {
    pub tlscacert: String,
    pub tlscert: String,
    pub tlskey: String,
    /// `Some(true)` to switch live-restore on; `None` to leave the key as it is.
    pub live_restore: Option<bool>,
}

impl DaemonSettings {
    pub fn entries(&self) -> Vec<(&'static str, Value)> {
        let mut v = vec![
            ("tlsverify", Value::Bool(true)),
            ("tlscacert", Value::String(self.tlscacert.clone())),
            ("tlscert", Value::String(self.tlscert.clone())),
            ("tlskey", Value::String(self.tlskey.clone())),
        ];
        if let Some(lr) = self.live_restore {
            v.push((LIVE_RESTORE_KEY, Value::Bool(lr)));
        }
        v
    }
}

/// Renders a JSON object the way Docker's docs write daemon.json: two-space indent, newline.
pub fn render_json(obj: &Map<String, Value>) -> String {
    let mut s = serde_json::to_string_pretty(obj).expect("a JSON map always serializes");
    s.push('\n');
    s
}

/// Merges our keys into the user's daemon.json object: their other keys, values and order stay.
pub fn merge_daemon_json(
    existing: &Map<String, Value>,
    wanted: &DaemonSettings,
) -> Map<String, Value> {
    let mut out = existing.clone();
    for (k, v) in wanted.entries() {
        out.insert(k.to_string(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(actual, expected, "{} differs", path.display());
    }

    fn listen(specs: &[&str]) -> Vec<Listen> {
        specs
            .iter()
            .map(|s| Listen {
                spec: s.to_string(),
                port: 2376,
            })
            .collect()
    }

    fn guard() -> Guard {
        Guard {
            binary: "/usr/bin/docker-tls-manager".into(),
            ca: "/etc/docker/tls/ca.pem".into(),
            daemon_json: "/etc/docker/daemon.json".into(),
            default_daemon_json: "/etc/docker/daemon.json".into(),
            dropin: "/etc/systemd/system/docker.service.d/docker-tls-manager.conf".into(),
            guard_unit: "/etc/systemd/system/docker-tls-manager-guard.service".into(),
            config: None,
        }
    }

    #[test]
    fn socket_unit_golden() {
        golden(
            "docker-tcp.socket",
            &socket_unit(&listen(&["2376"]), &guard()),
        );
        golden(
            "docker-tcp-two.socket",
            &socket_unit(&listen(&["192.0.2.1:2376", "[::1]:2377"]), &guard()),
        );
    }

    #[test]
    fn dropin_golden() {
        golden("docker-tls-manager.conf", &dropin());
        golden("docker-tls-manager-guard.service", &guard_unit(&guard()));
    }

    #[test]
    fn authz_units_golden() {
        let u = AuthzUnits {
            binary: "/usr/bin/docker-tls-manager".into(),
            config: None,
            fallback_script: "/var/lib/docker-tls-manager/authz/fallback.sh".into(),
            metrics_dir: Some("/var/lib/prometheus/node-exporter".into()),
        };
        golden("docker-tls-manager-authz.socket", &authz_socket_unit());
        golden("docker-tls-manager-authz.service", &authz_service_unit(&u));
        golden(
            "docker-tls-manager-authz-fallback.service",
            &authz_fallback_unit(&u),
        );
        golden(
            "docker-tls-manager-authz-fallback.sh",
            &authz_fallback_script(
                Path::new("/etc/docker/daemon.json"),
                Path::new("/var/lib/docker-tls-manager/authz/daemon.json.without-plugin"),
                Path::new("/var/lib/docker-tls-manager/authz/daemon.json.with-plugin.sha256"),
            ),
        );
    }

    #[test]
    fn plain_paths() {
        assert!(is_plain_path(Path::new("/etc/docker/daemon.json")));
        assert!(is_plain_path(Path::new(
            "/usr/local/bin/docker-tls-manager"
        )));
        for bad in ["etc/x", "/a b", "/a'b", "/a$b", "/a%b", "/a\\b", "/a;b"] {
            assert!(!is_plain_path(Path::new(bad)), "{bad}");
        }
    }

    fn wanted(lr: Option<bool>) -> DaemonSettings {
        DaemonSettings {
            tlscacert: "/etc/docker/tls/ca.pem".into(),
            tlscert: "/etc/docker/tls/server-cert.pem".into(),
            tlskey: "/etc/docker/tls/server-key.pem".into(),
            live_restore: lr,
        }
    }

    #[test]
    fn daemon_json_merge_keeps_user_keys_and_order() {
        let user: Map<String, Value> = serde_json::from_str(
            r#"{"log-driver": "journald", "storage-driver": "vfs", "live-restore": false, "dns": ["192.0.2.53"]}"#,
        )
        .unwrap();
        let merged = merge_daemon_json(&user, &wanted(Some(true)));
        golden("daemon.json.merged", &render_json(&merged));
        let fresh = merge_daemon_json(&Map::new(), &wanted(None));
        golden("daemon.json.fresh", &render_json(&fresh));
    }
}
