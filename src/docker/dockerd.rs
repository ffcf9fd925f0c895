//! dockerd as systemd starts it: docker.service's ExecStart with the environment expanded as
//! systemd does (`$DOCKER_OPTS` from `EnvironmentFile=`), and the flags of it that matter here
//! (hosts, `--config-file`, `--live-restore`, TLS flags).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::Settings;
use crate::systemd::UnitInfo;

/// The environment systemd gives a service: `Environment=`, then `EnvironmentFile=` (later
/// assignments win, as in systemd).
pub fn unit_environment(unit: &UnitInfo) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut assign = |line: &str| {
        if let Some((k, v)) = line.split_once('=') {
            env.insert(k.trim().to_string(), v.to_string());
        }
    };
    for a in &unit.environment {
        assign(a);
    }
    for (path, _optional) in &unit.environment_files {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(v);
                assign(&format!("{}={v}", k.trim()));
            }
        }
    }
    env
}

/// Expands `$VAR` (a whole word: split on whitespace, dropped when empty) and `${VAR}` (inside
/// a word) the way systemd does for ExecStart=.
pub fn expand_argv(argv: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, arg) in argv.iter().enumerate() {
        if i > 0
            && let Some(name) = arg
                .strip_prefix('$')
                .filter(|n| !n.starts_with('{') && !n.is_empty())
        {
            if let Some(v) = env.get(name) {
                out.extend(v.split_whitespace().map(String::from));
            }
            continue;
        }
        let mut word = arg.clone();
        while let Some(start) = word.find("${") {
            let Some(len) = word[start..].find('}') else {
                break;
            };
            let name = word[start + 2..start + len].to_string();
            word.replace_range(
                start..start + len + 1,
                env.get(&name).map_or("", String::as_str),
            );
        }
        out.push(word);
    }
    out
}

/// Flags of dockerd's effective ExecStart that matter here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerdFlags {
    pub hosts: Vec<String>,
    pub config_file: Option<PathBuf>,
    pub live_restore: bool,
    /// TLS flags present (each conflicts with the same key in daemon.json).
    pub tls_flags: Vec<String>,
    /// `--authorization-plugin` given (conflicts with `authorization-plugins` in daemon.json).
    pub authz_plugin_flag: bool,
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
            "-H" | "--host"
                | "--config-file"
                | "--tlscacert"
                | "--tlscert"
                | "--tlskey"
                | "--authorization-plugin"
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
            "--authorization-plugin" => f.authz_plugin_flag = true,
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

/// docker.service with its ExecStart expanded as systemd would run it.
pub fn expanded(mut unit: UnitInfo) -> UnitInfo {
    let env = unit_environment(&unit);
    unit.exec_start = unit
        .exec_start
        .iter()
        .map(|argv| expand_argv(argv, &env))
        .collect();
    unit
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn docker_opts_are_expanded_like_systemd_does() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("docker");
        std::fs::write(
            &file,
            "# comment\nDOCKER_OPTS=\"--live-restore --dns 192.0.2.53\"\n",
        )
        .unwrap();
        let unit = crate::systemd::UnitInfo {
            environment: vec!["X=1".into()],
            environment_files: vec![
                (file.display().to_string(), true),
                ("/nonexistent".into(), true),
            ],
            ..Default::default()
        };
        let env = unit_environment(&unit);
        let argv: Vec<String> = [
            "/usr/sbin/dockerd",
            "-H",
            "fd://",
            "$DOCKER_OPTS",
            "$UNSET",
            "--x=${X}y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            expand_argv(&argv, &env),
            [
                "/usr/sbin/dockerd",
                "-H",
                "fd://",
                "--live-restore",
                "--dns",
                "192.0.2.53",
                "--x=1y"
            ]
        );
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
        let unit = UnitInfo {
            exec_start: vec![argv(
                "/usr/bin/dockerd -H fd:// --config-file=/etc/docker/other.json",
            )],
            ..UnitInfo::default()
        };
        let s = crate::config::parse("", Path::new("/t.toml")).unwrap();
        assert_eq!(
            daemon_json_path(&unit, &s),
            PathBuf::from("/etc/docker/other.json")
        );
    }
}
