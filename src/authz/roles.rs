//! What each role may do, endpoint by endpoint against the Engine API, denied by default.
//!
//! dockerd asks the plugin only for requests its router matched, and passes the raw request
//! target (`RequestUri`): percent-escapes undecoded, the `/vX.Y` prefix and the query string
//! included. The router matches on the decoded path, so we decode too; a path a client would
//! never send (`//`, `.`, `..`, a bad escape, not starting with `/`) is denied. Routes with a
//! `{name:.*}` parameter (containers, images, volumes) may hold `/` in the middle: like
//! dockerd's router, we match their fixed prefix and suffix, which no other route shares.

use super::Role;

/// One line of a role's table.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// This exact path.
    Exact(&'static str, &'static str),
    /// `PREFIX{name}SUFFIX`, the name non-empty (it may contain `/`, as dockerd's routes allow).
    Around(&'static str, &'static str, &'static str),
}

impl Rule {
    fn matches(&self, method: &str, path: &str) -> bool {
        match *self {
            Rule::Exact(m, p) => m == method && p == path,
            Rule::Around(m, prefix, suffix) => {
                m == method
                    && path.len() > prefix.len() + suffix.len()
                    && path.starts_with(prefix)
                    && path.ends_with(suffix)
            }
        }
    }
}

/// Monitoring: list and inspect. No archive, export, logs, stats, top, changes, image save,
/// history, exec, attach: those hand out files, secrets or output.
pub const MONITORING: &[Rule] = &[
    Rule::Exact("GET", "/_ping"),
    Rule::Exact("HEAD", "/_ping"),
    Rule::Exact("GET", "/version"),
    Rule::Exact("GET", "/info"),
    Rule::Exact("GET", "/events"),
    Rule::Exact("GET", "/containers/json"),
    Rule::Around("GET", "/containers/", "/json"),
    Rule::Exact("GET", "/images/json"),
    Rule::Around("GET", "/images/", "/json"),
    Rule::Exact("GET", "/networks"),
    Rule::Exact("GET", "/networks/"),
    Rule::Around("GET", "/networks/", ""),
    Rule::Exact("GET", "/volumes"),
    Rule::Around("GET", "/volumes/", ""),
];

/// Operator: monitoring, plus the life cycle of existing containers (no create, remove, exec).
pub const OPERATOR_EXTRA: &[Rule] = &[
    Rule::Around("POST", "/containers/", "/start"),
    Rule::Around("POST", "/containers/", "/stop"),
    Rule::Around("POST", "/containers/", "/restart"),
    Rule::Around("POST", "/containers/", "/kill"),
    Rule::Around("POST", "/containers/", "/pause"),
    Rule::Around("POST", "/containers/", "/unpause"),
];

/// The manager's own probe identity: what `docker::probe` sends to verify Docker serves the
/// current certificate (`GET /_ping`), and nothing else. Its key sits on the host; whoever
/// reads it must not get the Engine API.
pub const PROBE: &[Rule] = &[Rule::Exact("GET", "/_ping"), Rule::Exact("HEAD", "/_ping")];

/// Whether the manager's probe identity may send `method` to `uri`; Err: why not.
pub fn check_probe(method: &str, uri: &str) -> Result<(), String> {
    let path = route_path(uri).map_err(str::to_string)?;
    if PROBE.iter().any(|r| r.matches(method, &path)) {
        Ok(())
    } else {
        Err(format!(
            "the manager's probe identity may only ping (GET /_ping), not {method} {path}"
        ))
    }
}

/// The path dockerd's router matches, without the API version prefix; Err says why it is
/// refused whatever the role.
pub fn route_path(uri: &str) -> Result<String, &'static str> {
    let raw = uri.split_once('?').map_or(uri, |(p, _)| p);
    if !raw.starts_with('/') {
        return Err("the request target is not a path");
    }
    let path = percent_decode(raw).ok_or("the path has an invalid escape")?;
    if path.contains('?') || path.contains('#') || path.chars().any(|c| c.is_control()) {
        return Err("the path holds an escaped '?', '#' or a control character");
    }
    if path.len() > 1 && path[1..].split('/').any(|s| s == "." || s == "..") {
        return Err("the path holds '.' or '..'");
    }
    if path.contains("//") {
        return Err("the path holds '//'");
    }
    Ok(strip_version(&path).to_string())
}

/// `/v1.41/containers/json` -> `/containers/json` (dockerd's `/v{version:[0-9.]+}` prefix).
fn strip_version(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if end > 0 && rest[end..].starts_with('/') {
            return &rest[end..];
        }
    }
    path
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The oldest Engine API version a role other than admin may name. Before 1.24 some calls
/// carry settings that later ones refuse (`POST /containers/ID/start` with a HostConfig:
/// privileged, binds), and dockerd 20.10 still accepts versions from 1.12.
pub const MIN_API_VERSION: (u32, u32) = (1, 24);

/// The API version a request names (`/v1.41/...`), if any.
fn api_version(uri: &str) -> Option<(u32, u32)> {
    let raw = uri.split_once('?').map_or(uri, |(p, _)| p);
    let path = percent_decode(raw)?;
    let rest = path.strip_prefix("/v")?;
    let v = &rest[..rest.find('/')?];
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether `role` may send `method` to `uri` (the raw request target); Err: why not.
pub fn check(role: Role, method: &str, uri: &str) -> Result<(), String> {
    let path = route_path(uri).map_err(str::to_string)?;
    if role == Role::Admin {
        return Ok(());
    }
    if api_version(uri).is_some_and(|v| v < MIN_API_VERSION) {
        return Err(format!(
            "API versions before {}.{} are refused for role {role}",
            MIN_API_VERSION.0, MIN_API_VERSION.1
        ));
    }
    let table: Vec<&Rule> = match role {
        Role::Admin => unreachable!(),
        Role::Monitoring => MONITORING.iter().collect(),
        Role::Operator => MONITORING.iter().chain(OPERATOR_EXTRA).collect(),
    };
    if table.iter().any(|r| r.matches(method, &path)) {
        Ok(())
    } else {
        Err(format!("role {role} does not allow {method} {path}"))
    }
}

#[cfg(test)]
mod tests {
    /// `Role::effective` takes the larger role as the more restrictive: each role's table must
    /// hold the next one's, request by request.
    #[test]
    fn each_role_holds_the_more_restrictive_ones() {
        let mut samples: Vec<(&str, String)> = vec![];
        for r in MONITORING.iter().chain(OPERATOR_EXTRA) {
            match *r {
                Rule::Exact(m, p) => samples.push((m, p.to_string())),
                Rule::Around(m, pre, suf) => samples.push((m, format!("{pre}c1{suf}"))),
            }
        }
        for (m, p) in [
            ("POST", "/containers/create"),
            ("DELETE", "/containers/c1"),
            ("POST", "/containers/c1/exec"),
            ("GET", "/containers/c1/archive"),
            ("GET", "/images/get"),
            ("POST", "/v1.23/containers/c1/start"),
        ] {
            samples.push((m, p.to_string()));
        }
        let order = [Role::Monitoring, Role::Operator, Role::Admin];
        for (m, p) in &samples {
            for pair in order.windows(2) {
                let (narrow, wide) = (pair[0], pair[1]);
                assert!(narrow > wide, "Ord: {narrow} is the more restrictive");
                if check(narrow, m, p).is_ok() {
                    assert!(
                        check(wide, m, p).is_ok(),
                        "{narrow} may {m} {p}, {wide} may not"
                    );
                }
            }
        }
    }

    #[test]
    fn old_api_versions_are_refused_for_every_role_but_admin() {
        let start = "/v1.23/containers/c2/start";
        assert!(check(Role::Operator, "POST", start).is_err());
        assert!(check(Role::Operator, "POST", "/v1.12/containers/c2/start").is_err());
        assert!(check(Role::Operator, "POST", "/v1%2E23/containers/c2/start").is_err());
        assert!(check(Role::Monitoring, "GET", "/v1.23/containers/json").is_err());
        assert!(check(Role::Operator, "POST", "/v1.24/containers/c2/start").is_ok());
        assert!(check(Role::Operator, "POST", "/v1.41/containers/c2/start").is_ok());
        assert!(check(Role::Operator, "POST", "/containers/c2/start").is_ok());
        assert!(check(Role::Admin, "POST", start).is_ok());
    }

    use super::*;

    fn ok(role: Role, m: &str, uri: &str) -> bool {
        check(role, m, uri).is_ok()
    }

    #[test]
    fn monitoring_lists_and_inspects() {
        for (m, u) in [
            ("HEAD", "/_ping"),
            ("GET", "/_ping"),
            ("GET", "/v1.41/version"),
            ("GET", "/v1.41/info"),
            ("GET", "/v1.41/events?since=1&filters=%7B%7D"),
            ("GET", "/v1.41/containers/json?all=1"),
            ("GET", "/v1.41/containers/c1/json"),
            ("GET", "/v1.41/containers/c1/json?size=1"),
            ("GET", "/v1.41/images/json"),
            (
                "GET",
                "/v1.41/images/registry.example:5000/library/busybox:1/json",
            ),
            ("GET", "/v1.41/networks"),
            ("GET", "/v1.41/networks/bridge"),
            ("GET", "/v1.41/volumes"),
            ("GET", "/v1.41/volumes/data"),
        ] {
            assert!(ok(Role::Monitoring, m, u), "{m} {u}");
            assert!(ok(Role::Operator, m, u), "{m} {u}");
            assert!(ok(Role::Admin, m, u), "{m} {u}");
        }
    }

    #[test]
    fn monitoring_gets_no_contents_and_no_changes() {
        for (m, u) in [
            ("GET", "/v1.41/containers/c1/archive?path=/etc"),
            ("HEAD", "/v1.41/containers/c1/archive?path=/etc"),
            ("GET", "/v1.41/containers/c1/export"),
            ("GET", "/v1.41/containers/c1/logs?stdout=1"),
            ("GET", "/v1.41/containers/c1/stats"),
            ("GET", "/v1.41/containers/c1/top"),
            ("GET", "/v1.41/containers/c1/changes"),
            ("GET", "/v1.41/images/busybox/get"),
            ("GET", "/v1.41/images/get?names=busybox"),
            ("GET", "/v1.41/images/busybox/history"),
            ("POST", "/v1.41/containers/c1/exec"),
            ("POST", "/v1.41/exec/abc/start"),
            ("POST", "/v1.41/containers/c1/attach?stream=1"),
            ("POST", "/v1.41/containers/create"),
            ("DELETE", "/v1.41/containers/c1"),
            ("PUT", "/v1.41/containers/c1/archive?path=/"),
            ("POST", "/v1.41/containers/c1/start"),
            ("POST", "/v1.41/images/create?fromImage=x"),
            ("POST", "/v1.41/build"),
            ("POST", "/session"),
            ("GET", "/v1.41/secrets"),
            ("GET", "/v1.41/plugins"),
            ("GET", "/v1.41/system/df"),
            ("get", "/v1.41/containers/json"),
            ("Get", "/_ping"),
        ] {
            assert!(!ok(Role::Monitoring, m, u), "{m} {u}");
            assert!(ok(Role::Admin, m, u), "{m} {u}");
        }
    }

    #[test]
    fn operator_runs_the_life_cycle_only() {
        for a in ["start", "stop", "restart", "kill", "pause", "unpause"] {
            let u = format!("/v1.41/containers/c1/{a}?t=10");
            assert!(ok(Role::Operator, "POST", &u), "{u}");
            assert!(!ok(Role::Monitoring, "POST", &u), "{u}");
            assert!(!ok(Role::Operator, "GET", &u), "{u}");
        }
        for (m, u) in [
            ("POST", "/v1.41/containers/create"),
            ("POST", "/v1.41/containers/c1/exec"),
            ("DELETE", "/v1.41/containers/c1?force=1"),
            ("POST", "/v1.41/containers/c1/update"),
            ("POST", "/v1.41/containers/c1/rename?name=x"),
            ("GET", "/v1.41/containers/c1/logs"),
            ("POST", "/v1.41/containers/prune"),
        ] {
            assert!(!ok(Role::Operator, m, u), "{m} {u}");
        }
    }

    #[test]
    fn tricky_paths() {
        // Exec creation hidden behind escapes or a version prefix: still exec.
        assert!(!ok(Role::Monitoring, "POST", "/v1.41/containers/x/exec"));
        assert!(!ok(Role::Operator, "POST", "/v1.41/containers/x%2Fexec"));
        assert!(!ok(Role::Operator, "POST", "/containers/x%2fexec"));
        // Encoded suffix that decodes to an allowed one is what dockerd's router sees too.
        assert!(ok(Role::Monitoring, "GET", "/v1.41/containers/x%2Fjson"));
        assert_eq!(
            route_path("/v1.41/containers/x%2Fjson").unwrap(),
            "/containers/x/json"
        );
        // Never sent by a client; refused for every role, admin included.
        for u in [
            "//containers/json",
            "/v1.41//containers/json",
            "/v1.41/containers/../images/x/get",
            "/v1.41/containers/%2e%2e/x/archive",
            "/v1.41/containers/x/./json",
            "/containers/x%zzjson",
            "/containers/x%2",
            "/containers/x%3Fa/json",
            "/containers/x%00/json",
            "http://h/containers/json",
            "*",
            "",
        ] {
            assert!(route_path(u).is_err(), "{u}");
            assert!(!ok(Role::Admin, "GET", u), "{u}");
        }
        // Only one version prefix, as dockerd's router.
        assert!(!ok(Role::Monitoring, "GET", "/v1.41/v1.40/containers/json"));
        assert_eq!(
            route_path("/v1/containers/json").unwrap(),
            "/containers/json"
        );
        assert_eq!(
            route_path("/vx/containers/json").unwrap(),
            "/vx/containers/json"
        );
        assert_eq!(route_path("/v1.41").unwrap(), "/v1.41");
        // A suffix is not enough without a name.
        assert!(!ok(Role::Operator, "POST", "/containers//start"));
        assert!(!ok(Role::Operator, "POST", "/containers/start"));
        // The query string does not count.
        assert!(!ok(Role::Monitoring, "GET", "/containers/c1/logs?x=/json"));
        assert!(ok(
            Role::Monitoring,
            "GET",
            "/containers/json?all=1&x=/exec"
        ));
    }

    #[test]
    fn the_probe_only_pings() {
        assert!(check_probe("GET", "/_ping").is_ok());
        assert!(check_probe("HEAD", "/v1.41/_ping").is_ok());
        for (m, uri) in [
            ("GET", "/containers/json"),
            ("GET", "/version"),
            ("POST", "/_ping"),
            ("POST", "/containers/create"),
            ("GET", "/_ping/../containers/json"),
            ("GET", "/_pingx"),
        ] {
            let e = check_probe(m, uri).unwrap_err();
            assert!(
                e.contains("probe identity may only ping") || e.contains("'..'"),
                "{m} {uri}: {e}"
            );
        }
    }

    #[test]
    fn role_names() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Ok(r));
        }
        assert!(Role::parse("root").is_err());
    }
}
