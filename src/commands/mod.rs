//! The commands: each loads what it needs, plans, and acts, through the convergence engine
//! (`crate::converge`). Output for humans goes to stdout; logs (tracing) go to stderr. By noun:
//! `ca`, `client`, `status`, `check`; apply, renew and deconfigure here.

mod ca;
mod check;
mod client;
mod status;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::bundle::{self, ClientFiles};
use crate::cli::{BundleFormat, ClientCommand, Command, Target};
use crate::config;
use crate::converge::{Ctx, DockerSide, Intent, LOCK_WAIT, Outcome, converge_once};
use crate::docker::{self, plan::DockerPlan};
use crate::error::UsageError;
use crate::files::{StateLock, atomic_write, ensure_dir};
use crate::host::HostIdentity;
use crate::layout::KEY_DIR_MODE;
use crate::pki::Slot;
use crate::pki::plan::{Force, Plan};
use crate::status as report;
use crate::systemd::Systemd;

pub async fn run(cmd: Command, config_path: Option<&Path>) -> Result<()> {
    match cmd {
        Command::Run => return crate::service::run(config_path).await,
        Command::GenerateAssets { dir } => return generate_assets(&dir),
        // Before loading the config: a bad one must not stop the plugin (it then refuses TLS).
        Command::Authz(crate::cli::AuthzCommand::Serve { listen }) => {
            return crate::authz::server::serve(config_path, listen.as_deref());
        }
        Command::Guard {
            ca,
            daemon_json,
            effective,
            require,
        } => {
            let path = if effective {
                docker::guard::effective_daemon_json(&daemon_json)
                    .await
                    .context("guard: cannot tell which daemon.json dockerd will read")?
            } else {
                daemon_json
            };
            return docker::guard::check(&path, &ca, &require).map_err(|e| {
                anyhow::anyhow!(
                    "guard: {}; {} is not served (Docker itself starts). `docker-tls-manager apply` \
                     configures mutual TLS again; `docker-tls-manager deconfigure` removes the socket",
                    e.0,
                    docker::render::SOCKET_UNIT
                )
            });
        }
        _ => {}
    }
    let ctx = Ctx::load(config_path)?;
    match cmd {
        Command::Apply { dry_run, pki_only } => {
            // At boot (the unit ordered before docker.service) the network may not be up yet:
            // host address changes wait for the service.
            let force = Force {
                keep_sans: pki_only,
                ..Force::default()
            };
            converge(&ctx, force, dry_run, pki_only, Intent::Apply).await
        }
        Command::Renew { force, target } => {
            if !force {
                let f = Force {
                    ask_ari: true,
                    ..Force::default()
                };
                return converge(&ctx, f, false, false, Intent::Maintain).await;
            }
            let f = match target {
                Target::Server => Force {
                    server: true,
                    ..Force::default()
                },
                Target::Clients => Force {
                    clients: true,
                    ..Force::default()
                },
                Target::Ca => Force {
                    ca: true,
                    ..Force::default()
                },
                Target::All => Force {
                    server: true,
                    clients: true,
                    ..Force::default()
                },
            };
            converge(&ctx, f, false, false, Intent::Maintain).await
        }
        Command::Status { json } => status::status_cmd(&ctx, json).await,
        Command::Check => check::check(&ctx).await,
        Command::Ca(c) => ca::ca(&ctx, c).await,
        Command::Client(c) => client::client(&ctx, c).await,
        Command::Deconfigure => deconfigure(&ctx).await,
        Command::Run
        | Command::GenerateAssets { .. }
        | Command::Guard { .. }
        | Command::Authz(_) => {
            unreachable!("handled above")
        }
    }
}

/// Brings the PKI to the wanted state, then Docker (when `[docker] manage`).
pub(crate) async fn converge(
    ctx: &Ctx,
    force: Force,
    dry_run: bool,
    pki_only: bool,
    intent: Intent,
) -> Result<()> {
    let host = HostIdentity::detect()?;
    let now = SystemTime::now();
    if dry_run {
        let (_, plan) = ctx.plan(&host, now, force)?;
        print_plan(&plan, true);
        if ctx.settings.docker.manage && !pki_only {
            let obs = DockerSide::connect(&ctx.settings)
                .await?
                .observe(&ctx.settings)
                .await?;
            let mut obs = obs;
            obs.pki_changes_server = plan.changes_server();
            let dplan = docker::plan::plan_configure(&obs, &ctx.settings)?;
            print_docker_plan(&dplan, true);
        }
        return Ok(());
    }
    let mut outcome = Outcome::default();
    match converge_once(ctx, force, pki_only, intent, &mut outcome).await {
        Err(e)
            if pki_only
                && e.chain()
                    .any(|c| c.downcast_ref::<crate::files::LockBusy>().is_some()) =>
        {
            println!(
                "certificates: another docker-tls-manager (the service) is converging; nothing to do here"
            );
            return Ok(());
        }
        r => r?,
    }
    if let Some(p) = &outcome.pki {
        print_plan(p, false);
    }
    if let Some(d) = &outcome.docker {
        print_docker_plan(d, false);
    }
    for d in &outcome.authz {
        println!("authz: {d}");
    }
    if outcome.deconfigured {
        println!(
            "docker: left alone since `deconfigure`; `docker-tls-manager apply` configures mutual TLS again"
        );
    }
    Ok(())
}

/// Puts Docker back as it was and records that the admin asked for it, so that neither the
/// service nor `renew` configures Docker again until `apply`.
async fn deconfigure(ctx: &Ctx) -> Result<()> {
    let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
    let side = DockerSide::connect(&ctx.settings).await?;
    // The authorization plugin first: our entry out of daemon.json (reload), then its units.
    let before = side.observe(&ctx.settings).await?;
    for d in crate::authz::setup::remove(
        &ctx.settings,
        &side.sd,
        &before.daemon_json_path,
        &ctx.backups(),
    )
    .await?
    {
        println!("authz: {d}");
    }
    let obs = side.observe(&ctx.settings).await?;
    let dplan = docker::plan::plan_deconfigure(&obs, &ctx.settings)?;
    // Recorded before anything changes: a crash halfway must not let the service (which
    // watches the files removed below) configure Docker again at the next boot. Taken back
    // if the run fails: the rollback restored the configuration, which the service keeps.
    let marker = ctx.layout().deconfigured();
    let had_marker = marker.exists();
    ensure_dir(&ctx.settings.paths.state_dir, KEY_DIR_MODE)?;
    atomic_write(
        &marker,
        format!(
            "deconfigure ran at {}; `docker-tls-manager apply` configures Docker again\n",
            humantime::format_rfc3339_seconds(SystemTime::now())
        )
        .as_bytes(),
        0o600,
    )?;
    let validator = docker::validate::Dockerd::for_unit(&obs.docker);
    let cx = side.exec_context(&obs, &validator, ctx.layout().backup_dir(), vec![]);
    if let Err(e) = docker::execute::execute(&dplan, &cx).await {
        if !had_marker {
            let _ = std::fs::remove_file(&marker);
        }
        return Err(e);
    }
    print_docker_plan(&dplan, false);
    println!(
        "certificates kept in '{}' and '{}'",
        ctx.settings.paths.cert_dir.display(),
        ctx.settings.paths.state_dir.display()
    );
    let service = side
        .sd
        .unit(crate::service::SERVICE_UNIT)
        .await
        .unwrap_or_default();
    if service.is_active() {
        println!(
            "{}: still running; it keeps the certificates renewed and leaves Docker alone until \
             `docker-tls-manager apply` (stop it with `systemctl disable --now {}`)",
            crate::service::SERVICE_UNIT,
            crate::service::SERVICE_UNIT
        );
    } else {
        println!(
            "{}: not running; when it starts it leaves Docker alone until `docker-tls-manager apply`",
            crate::service::SERVICE_UNIT
        );
    }
    Ok(())
}

/// Prints the Docker plan; with `--dry-run` the plan already accounts for what the PKI plan
/// will change (`Observed::pki_changes_server`), restart included.
pub(crate) fn print_docker_plan(plan: &DockerPlan, dry_run: bool) {
    if plan.deferred && plan.steps.is_empty() {
        println!("docker: restart deferred, nothing changed for Docker");
    } else if plan.steps.is_empty() {
        println!("docker: up to date, nothing to do");
    } else {
        println!(
            "docker{}:",
            if dry_run {
                " (dry run, nothing changed)"
            } else {
                ""
            }
        );
        for s in &plan.steps {
            println!("  - {s}");
        }
    }
    for w in &plan.warnings {
        println!("warning: {w}");
    }
}

pub(crate) fn print_plan(plan: &Plan, dry_run: bool) {
    let mut out = std::io::stdout().lock();
    if plan.is_empty() {
        let _ = writeln!(out, "certificates: up to date, nothing to do");
    } else {
        let _ = writeln!(
            out,
            "{}",
            if dry_run {
                "plan (dry run, nothing changed):"
            } else {
                "done:"
            }
        );
        for a in &plan.actions {
            let _ = writeln!(out, "  - {a}");
        }
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
}

/// The man pages (crate::manual), bash, zsh and fish completions and the packaged config.toml,
/// generated from the code so they never drift from it.
fn generate_assets(dir: &Path) -> Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    ensure_dir(dir, 0o755)?;
    let cmd = crate::cli::Cli::command();
    for page in crate::manual::pages() {
        atomic_write(&dir.join(&page.file_name), page.text.as_bytes(), 0o644)?;
    }
    for (shell, name) in [
        (Shell::Bash, "docker-tls-manager.bash"),
        (Shell::Zsh, "_docker-tls-manager"),
        (Shell::Fish, "docker-tls-manager.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "docker-tls-manager", &mut out);
        atomic_write(&dir.join(name), &out, 0o644)?;
    }
    atomic_write(
        &dir.join("config.toml"),
        config::commented_example().as_bytes(),
        0o644,
    )?;
    println!(
        "wrote the man pages, completions and the packaged config.toml to {}",
        dir.display()
    );
    Ok(())
}

/// `check`'s report of what apply would do.
pub(crate) fn print_would<T: std::fmt::Display>(items: &[T], warnings: &[String]) {
    println!("ok: apply would:");
    for i in items {
        println!("  - {i}");
    }
    for w in warnings {
        println!("warning: {w}");
    }
}
