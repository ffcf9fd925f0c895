//! `check`: the configuration and the environment, changing nothing.

use super::*;
use crate::docker::validate::{Validator, Verdict};

/// Validates config and environment; changes nothing. Exit 1 if anything would fail.
pub(crate) async fn check(ctx: &Ctx) -> Result<()> {
    let mut problems = 0;
    let src = ctx
        .settings
        .source
        .as_ref()
        .map_or("no file, defaults".into(), |p| p.display().to_string());
    println!("ok: configuration valid ({src})");
    match HostIdentity::detect() {
        Ok(h) => {
            println!(
                "ok: host {} (FQDN {}), addresses: {}",
                h.hostname,
                h.fqdn,
                h.addresses
                    .iter()
                    .map(|(ip, o)| {
                        let f = &ctx.settings.server.address_filter;
                        if !ctx.settings.server.auto_addresses {
                            format!("{ip} ({}, not used: auto_addresses = false)", o.interface)
                        } else if f.admits(ip, &o.interface, o.temporary) {
                            format!("{ip} ({})", o.interface)
                        } else if o.temporary {
                            format!("{ip} ({}, temporary: left out)", o.interface)
                        } else {
                            format!("{ip} ({}, left out by [server] settings)", o.interface)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match ctx.plan(&h, SystemTime::now(), Force::default()) {
                Ok((_, plan)) if plan.is_empty() => println!("ok: certificates up to date"),
                Ok((_, plan)) => print_would(&plan.actions, &plan.warnings),
                Err(e) => {
                    problems += 1;
                    println!("error: {e:#}");
                }
            }
        }
        Err(e) => {
            problems += 1;
            println!("error: cannot read the host's identity: {e:#}");
        }
    }
    for dir in [&ctx.settings.paths.cert_dir, &ctx.settings.paths.state_dir] {
        match writable_ancestor(dir) {
            Ok(()) => println!("ok: '{}' can be written", dir.display()),
            Err(e) => {
                problems += 1;
                println!("error: {e:#}");
            }
        }
    }
    if ctx.settings.docker.manage {
        problems += check_docker(ctx).await;
    }
    if problems > 0 {
        bail!("check found {problems} problem(s)");
    }
    Ok(())
}

/// Whether `dir`, or the nearest existing ancestor it would be created in, is writable.
fn writable_ancestor(dir: &Path) -> Result<()> {
    let mut p: PathBuf = dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            bail!("'{}' has no existing ancestor", dir.display());
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C string.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        bail!(
            "'{}' is not writable ({}): run as root, or point [paths] at writable directories",
            p.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The Docker part of `check`: what `apply` would run into. Returns the number of problems.
async fn check_docker(ctx: &Ctx) -> usize {
    let side = match DockerSide::connect(&ctx.settings).await {
        Ok(side) => side,
        Err(e) => {
            println!("error: {e:#}");
            return 1;
        }
    };
    println!("ok: systemd reachable over D-Bus");
    let obs = match side.observe(&ctx.settings).await {
        Ok(o) => o,
        Err(e) => {
            println!("error: {e:#}");
            return 1;
        }
    };
    let mut problems = 0;
    if let Some(argv) = obs.docker.exec_start.first() {
        println!("ok: docker.service ExecStart: {}", argv.join(" "));
        // What dockerd would say about daemon.json as it is, with docker.service's flags.
        let validator = crate::docker::validate::Dockerd::for_unit(&obs.docker);
        let path = obs.daemon_json_path.display();
        match obs.daemon_json.as_deref().map(|t| validator.validate(t)) {
            None => println!("ok: '{path}' does not exist yet"),
            Some(Ok(Verdict::Accepted)) => println!("ok: `dockerd --validate` accepts '{path}'"),
            Some(Ok(Verdict::Refused(msg))) => {
                problems += 1;
                println!("error: `dockerd --validate` refuses '{path}': {msg}");
            }
            Some(Ok(Verdict::Unavailable(v))) => println!(
                "info: {v} has no `dockerd --validate` (Docker 23+): '{path}' is checked by starting dockerd \
                 (verified, rolled back on failure)"
            ),
            Some(Err(e)) => println!("info: cannot run `dockerd --validate`: {e:#}"),
        }
    }
    println!("ok: daemon.json is '{}'", obs.daemon_json_path.display());
    match &obs.daemon {
        Some(d) => println!(
            "ok: dockerd running: swarm {}, live-restore {}, {} container(s) running",
            if d.swarm_active { "active" } else { "inactive" },
            if d.live_restore { "on" } else { "off" },
            d.containers_running
        ),
        None => println!("info: dockerd is not running"),
    }
    if obs.daemon.is_some() {
        let e = super::status::authz_enforcement(ctx).await;
        match &e {
            crate::authz::Enforcement::On => println!("ok: authorization plugin {}", e.describe()),
            e if e.is_mismatch() => {
                problems += 1;
                println!("error: authorization plugin {}", e.describe());
            }
            crate::authz::Enforcement::Off => {}
            e => println!("info: authorization plugin {}", e.describe()),
        }
    }
    match docker::plan::plan_configure(&obs, &ctx.settings) {
        Ok(p) if p.steps.is_empty() => println!("ok: Docker configuration up to date"),
        Ok(p) => print_would(&p.steps, &p.warnings),
        Err(e) => {
            problems += 1;
            println!("error: {e}");
        }
    }
    problems
}
