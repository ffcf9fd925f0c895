//! The commands: each loads what it needs, plans, and acts. Output for humans goes to stdout;
//! logs (tracing) go to stderr.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::bundle::{self, ClientFiles};
use crate::cli::{BundleFormat, ClientCommand, Command, Target};
use crate::config::{self, Settings};
use crate::docker::{
    self,
    daemon::UnixDocker,
    execute::Snapshot,
    plan::{DockerPlan, Step},
};
use crate::error::UsageError;
use crate::files::{Backups, StateLock, atomic_write, backup, ensure_dir};
use crate::host::HostIdentity;
use crate::pki::inspect::{self, DiskState};
use crate::pki::layout::KEY_DIR_MODE;
use crate::pki::plan::{self, Force, Plan};
use crate::pki::{Layout, Slot, execute};
use crate::status;
use crate::systemd::{Dbus, Systemd};

/// How long a command waits for the state lock held by another invocation.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Ctx {
    pub settings: Settings,
    pub layout: Layout,
}

impl Ctx {
    pub fn load(config_path: Option<&Path>) -> Result<Ctx> {
        let settings = config::load(config_path)?;
        let layout = Layout::new(&settings.paths);
        Ok(Ctx { settings, layout })
    }

    /// Where backups go, and their retention.
    pub fn backups(&self) -> Backups {
        Backups {
            dir: self.layout.backup_dir(),
            retention: self.settings.backup,
        }
    }

    /// Clients from the config and those added with `client add`.
    pub fn client_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.settings.clients.names.iter().cloned().collect();
        names.extend(self.layout.clients_on_disk());
        names.into_iter().collect()
    }

    pub fn inspect(&self) -> DiskState {
        inspect::inspect(
            &self.layout,
            &self.client_names(),
            self.settings.docker.manage,
        )
    }

    pub fn plan(
        &self,
        host: &HostIdentity,
        now: SystemTime,
        force: Force,
    ) -> Result<(DiskState, Plan)> {
        let disk = self.inspect();
        let plan = plan::plan(&disk, &self.settings, host, now, force)?;
        Ok((disk, plan))
    }
}

pub async fn run(cmd: Command, config_path: Option<&Path>) -> Result<()> {
    match cmd {
        Command::Run => return crate::service::run(config_path).await,
        Command::GenerateAssets { dir } => return generate_assets(&dir),
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
                return converge(&ctx, Force::default(), false, false, Intent::Maintain).await;
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
        Command::Status { json } => status_cmd(&ctx, json).await,
        Command::Check => check(&ctx).await,
        Command::Client(c) => client(&ctx, c).await,
        Command::Deconfigure => deconfigure(&ctx).await,
        Command::Run | Command::GenerateAssets { .. } | Command::Guard { .. } => {
            unreachable!("handled above")
        }
    }
}

/// Whether a convergence may configure Docker again after `deconfigure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// `apply`: the admin asks for TLS; clears a `deconfigure`.
    Apply,
    /// `renew`, the service: keep what is configured; after `deconfigure`, certificates only.
    Maintain,
}

/// Brings the PKI to the wanted state, then Docker (when `[docker] manage`).
async fn converge(
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
            let dplan = docker::plan::plan_configure(&obs, &ctx.settings)?;
            print_docker_plan(&dplan, true, plan.changes_server());
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
        print_docker_plan(d, false, false);
    }
    if outcome.deconfigured {
        println!(
            "docker: left alone since `deconfigure`; `docker-tls-manager apply` configures mutual TLS again"
        );
    }
    Ok(())
}

/// What one convergence did, filled in as it goes (so a failure still tells what was tried).
#[derive(Default)]
pub struct Outcome {
    /// The PKI plan, once made.
    pub pki: Option<Plan>,
    /// The PKI plan was carried out.
    pub pki_done: bool,
    /// The Docker plan, once made (`None` with `[docker] manage = false` or `--pki-only`).
    pub docker: Option<DockerPlan>,
    /// Docker was left alone because the admin ran `deconfigure`.
    pub deconfigured: bool,
}

/// One convergence under the state lock: the PKI, then Docker (verified, rolled back on
/// failure) unless `pki_only`.
pub async fn converge_once(
    ctx: &Ctx,
    force: Force,
    pki_only: bool,
    intent: Intent,
    out: &mut Outcome,
) -> Result<()> {
    let host = HostIdentity::detect()?;
    let now = SystemTime::now();
    // `--pki-only` runs from the unit ordered before docker.service, also when the service
    // itself restarts Docker while holding the lock: it must not wait for it.
    let wait = if pki_only { Duration::ZERO } else { LOCK_WAIT };
    let _lock = StateLock::acquire_async(&ctx.settings.paths.state_dir, wait).await?;
    remove_stale_temps(ctx);
    let (_, mut plan) = ctx.plan(&host, now, force)?;
    let marker = docker::plan::deconfigured_path(&ctx.settings);
    let deconfigured = marker.exists();
    let configure_docker =
        ctx.settings.docker.manage && !pki_only && !(deconfigured && intent == Intent::Maintain);
    // A new server certificate or CA needs a Docker restart. If that restart would be
    // deferred (containers without live-restore), the renewal waits too: whoever restarts
    // Docker next must not load material nobody verified. Repairs do not wait.
    let mut held_back = None;
    if configure_docker && plan.changes_server() {
        // Best effort: whatever stops this look (no bus, a refused setup) is reported by the
        // Docker step below, after the certificates.
        let look = async {
            let side = DockerSide::connect(&ctx.settings).await?;
            let mut obs = side.observe(&ctx.settings).await?;
            obs.wanted = "(the certificate this run would issue)".into();
            anyhow::Ok(docker::plan::plan_configure(&obs, &ctx.settings)?)
        };
        match look.await {
            Ok(dplan) => {
                if dplan.deferred
                    && let Some(p) = plan.without_server_changes()
                {
                    held_back = Some(dplan);
                    plan = p;
                }
            }
            Err(e) => tracing::debug!("cannot look at Docker before issuing: {e:#}"),
        }
    }
    // What Docker reads, as it was: restored if Docker cannot start with the new files.
    let (server_cert, server_key) = ctx.layout.cert_and_key(&Slot::Server);
    let (probe_cert, probe_key) = ctx.layout.cert_and_key(&Slot::Probe);
    let probe_ca = ctx
        .layout
        .ca_copy(&Slot::Probe)
        .expect("the probe has a CA copy");
    let before: Vec<Snapshot> = [
        ctx.layout.ca_cert(),
        ctx.layout.ca_key(),
        server_cert,
        server_key,
        probe_cert,
        probe_key,
        probe_ca,
    ]
    .iter()
    .filter(|p| p.exists())
    .map(|p| Snapshot::take(p))
    .collect();
    out.pki = Some(plan.clone());
    execute::execute(&plan, &ctx.layout, &ctx.settings, &host, now)?;
    out.pki_done = true;
    inject_fault(ctx)?;
    if let Some(mut d) = held_back {
        let expires = ctx
            .inspect()
            .get(&Slot::Server)
            .info()
            .map(|i| humantime::format_rfc3339_seconds(i.not_after).to_string())
            .unwrap_or_else(|| "?".into());
        d.warnings.push(format!(
            "the new server certificate waits for that restart; Docker keeps serving the current one, \
             which expires at {expires}: Docker must restart before then (stop the containers, or \
             enable live-restore), or clients will be refused"
        ));
        for w in &d.warnings {
            tracing::warn!("{w}");
        }
        out.docker = Some(d);
        return Ok(());
    }
    if !ctx.settings.docker.manage || pki_only {
        return Ok(());
    }
    if !configure_docker {
        out.deconfigured = true;
        tracing::info!(
            "Docker left alone: `deconfigure` ran; `docker-tls-manager apply` configures it again"
        );
        return Ok(());
    }
    let side = DockerSide::connect(&ctx.settings).await?;
    let obs = side.observe(&ctx.settings).await?;
    let dplan = docker::plan::plan_configure(&obs, &ctx.settings)?;
    for w in &dplan.warnings {
        tracing::warn!("{w}");
    }
    out.docker = Some(dplan.clone());
    let also_restore = if plan.changes_server() {
        before
    } else {
        vec![]
    };
    let cx = side.exec_context(&obs, ctx.layout.backup_dir(), also_restore);
    docker::execute::execute(&dplan, &cx).await?;
    if deconfigured {
        std::fs::remove_file(&marker)
            .with_context(|| format!("cannot remove '{}'", marker.display()))?;
        tracing::info!("configured again after `deconfigure`");
    }
    Ok(())
}

/// Temp files of an atomic write cut short (power loss, SIGKILL): safe to remove under the lock.
/// The backup tree is walked whole: a copy cut short there may hold an old key.
fn remove_stale_temps(ctx: &Ctx) {
    let mut dirs = crate::watch::watch_dirs(&ctx.settings, Path::new(config::DEFAULT_CONFIG_PATH));
    let mut stack = vec![ctx.layout.backup_dir()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        dirs.push(d);
    }
    for d in dirs {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(crate::files::TEMP_PREFIX)
            {
                tracing::info!(path = %e.path().display(), "removing a temp file left by an interrupted write");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Fault injection for the rollback tests: `DOCKER_TLS_MANAGER_FAULT=corrupt-server-key`
/// replaces the freshly issued server key with one dockerd cannot load.
fn inject_fault(ctx: &Ctx) -> Result<()> {
    if std::env::var("DOCKER_TLS_MANAGER_FAULT").as_deref() == Ok("corrupt-server-key") {
        tracing::warn!("fault injection: corrupting the server key");
        let key = ctx.layout.cert_and_key(&Slot::Server).1;
        atomic_write(
            &key,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            0o600,
        )?;
    }
    Ok(())
}

/// Puts Docker back as it was and records that the admin asked for it, so that neither the
/// service nor `renew` configures Docker again until `apply`.
async fn deconfigure(ctx: &Ctx) -> Result<()> {
    let _lock = StateLock::acquire(&ctx.settings.paths.state_dir, LOCK_WAIT)?;
    let side = DockerSide::connect(&ctx.settings).await?;
    let obs = side.observe(&ctx.settings).await?;
    let dplan = docker::plan::plan_deconfigure(&obs, &ctx.settings)?;
    // Recorded before anything changes: a crash halfway must not let the service (which
    // watches the files removed below) configure Docker again at the next boot. Taken back
    // if the run fails: the rollback restored the configuration, which the service keeps.
    let marker = docker::plan::deconfigured_path(&ctx.settings);
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
    let cx = side.exec_context(&obs, ctx.layout.backup_dir(), vec![]);
    if let Err(e) = docker::execute::execute(&dplan, &cx).await {
        if !had_marker {
            let _ = std::fs::remove_file(&marker);
        }
        return Err(e);
    }
    print_docker_plan(&dplan, false, false);
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

fn print_docker_plan(plan: &DockerPlan, dry_run: bool, server_changes: bool) {
    if plan.deferred && plan.steps.is_empty() {
        println!("docker: restart deferred, nothing changed for Docker");
    } else if plan.steps.is_empty() && !server_changes {
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
        if dry_run
            && server_changes
            && !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::RestartDocker | Step::StartDocker))
        {
            println!(
                "  - restart {} (new server certificate)",
                docker::render::DOCKER_SERVICE
            );
        }
        for s in &plan.steps {
            println!("  - {s}");
        }
    }
    for w in &plan.warnings {
        println!("warning: {w}");
    }
}

fn print_plan(plan: &Plan, dry_run: bool) {
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

async fn status_cmd(ctx: &Ctx, json: bool) -> Result<()> {
    let host = HostIdentity::detect()?;
    let now = SystemTime::now();
    let disk = ctx.inspect();
    let plan = match plan::plan(&disk, &ctx.settings, &host, now, Force::default()) {
        Ok(p) => p,
        Err(e) => Plan {
            warnings: vec![format!("{e:#}")],
            ..Plan::default()
        },
    };
    let handed = status::handed_out_warnings(&ctx.layout, &ctx.client_names(), &ctx.settings, now);
    let mut report = status::report(&disk, &plan, &ctx.settings, now, handed);
    if ctx.settings.docker.manage {
        report.docker = Some(docker_status(ctx).await);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status::render_text(&report));
    }
    Ok(())
}

/// Docker's side for `status`: what systemd and the TLS endpoint say, and what apply would do.
async fn docker_status(ctx: &Ctx) -> status::DockerStatus {
    let mut st = status::DockerStatus::default();
    let result = async {
        let obs = DockerSide::connect(&ctx.settings)
            .await?
            .observe(&ctx.settings)
            .await?;
        st.docker_service = obs.docker.active_state.clone();
        st.socket_unit = obs.socket.active_state.clone();
        st.serving_current_certificate =
            obs.served.is_some() && obs.served.as_deref() == Some(obs.wanted.as_str());
        st.served_sha256 = obs.served.clone();
        st.deconfigured = docker::plan::deconfigured_path(&ctx.settings).exists();
        match docker::plan::plan_configure(&obs, &ctx.settings) {
            Ok(p) => {
                st.restart_deferred = p.deferred;
                st.pending = p.steps.iter().map(|s| s.to_string()).collect();
                st.warnings = p.warnings;
            }
            Err(e) => st.warnings.push(e.0),
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        st.warnings.push(format!("cannot inspect Docker: {e:#}"));
    }
    st
}

/// Validates config and environment; changes nothing. Exit 1 if anything would fail.
async fn check(ctx: &Ctx) -> Result<()> {
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

async fn client(ctx: &Ctx, cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Add { name } => {
            config::validate_client_name(&name).map_err(UsageError)?;
            if ctx.client_names().contains(&name)
                && ctx
                    .layout
                    .cert_and_key(&Slot::Client(name.clone()))
                    .0
                    .exists()
            {
                bail!(
                    "client '{name}' already exists; `docker-tls-manager client bundle {name}` hands it out"
                );
            }
            {
                let _lock = StateLock::acquire(&ctx.settings.paths.state_dir, LOCK_WAIT)?;
                ensure_dir(&ctx.layout.clients_dir(), KEY_DIR_MODE)?;
                ensure_dir(&ctx.layout.client_dir(&name), KEY_DIR_MODE)?;
            }
            converge(ctx, Force::default(), false, false, Intent::Maintain).await?;
            println!(
                "client '{name}' added: `docker-tls-manager client bundle {name}` hands it out"
            );
            Ok(())
        }
        ClientCommand::List => {
            let now = SystemTime::now();
            let disk = ctx.inspect();
            for name in ctx.client_names() {
                let obs = disk.get(&Slot::Client(name.clone()));
                let source = if ctx.settings.clients.names.contains(&name) {
                    "config"
                } else {
                    "added"
                };
                match obs.info() {
                    Some(i) => println!(
                        "{name}\t{source}\texpires {}\t{} days left",
                        humantime::format_rfc3339_seconds(i.not_after),
                        status::days_between(now, i.not_after)
                    ),
                    None => println!("{name}\t{source}\tnot issued yet (run apply)"),
                }
            }
            Ok(())
        }
        ClientCommand::Remove { name } => {
            config::validate_client_name(&name).map_err(UsageError)?;
            if ctx.settings.clients.names.contains(&name) {
                let file = ctx
                    .settings
                    .source
                    .as_ref()
                    .map_or("the configuration".into(), |p| p.display().to_string());
                return Err(UsageError(format!(
                    "client '{name}' is listed in [clients] names in '{file}': remove it there first, then run this again"
                ))
                .into());
            }
            let dir = ctx.layout.client_dir(&name);
            if !dir.is_dir() {
                return Err(UsageError(format!(
                    "no client '{name}' (see `docker-tls-manager client list`)"
                ))
                .into());
            }
            let _lock = StateLock::acquire(&ctx.settings.paths.state_dir, LOCK_WAIT)?;
            let not_after = ctx
                .inspect()
                .get(&Slot::Client(name.clone()))
                .info()
                .map(|i| i.not_after);
            let now = SystemTime::now();
            for entry in std::fs::read_dir(&dir)? {
                backup(&entry?.path(), &ctx.backups(), now)?;
            }
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove '{}'", dir.display()))?;
            println!(
                "client '{name}' removed (files backed up in '{}')",
                ctx.layout.backup_dir().display()
            );
            if let Some(t) = not_after.filter(|t| *t > now) {
                println!(
                    "warning: its certificate stays valid until {} (dockerd cannot revoke certificates); \
                     to shut it out now, `docker-tls-manager renew --force ca` and hand the other clients new bundles",
                    humantime::format_rfc3339_seconds(t)
                );
            }
            Ok(())
        }
        ClientCommand::Bundle {
            name,
            output,
            format,
            host,
        } => {
            known_client(ctx, &name)?;
            // Under the lock: never a key and a certificate from either side of a renewal.
            let _lock = StateLock::acquire(&ctx.settings.paths.state_dir, LOCK_WAIT)?;
            let files = client_files(ctx, &name)?;
            let host = client_host(host)?;
            let port = ctx.settings.docker.listen[0].port;
            let url = format!("tcp://{}:{port}", bracket(&host));
            let (data, default_name) = match format {
                BundleFormat::TarGz => (bundle::tar_gz(&files)?, format!("{name}.tar.gz")),
                BundleFormat::Context => (
                    bundle::context_archive(&files, &format!("{name}@{host}"), &url)?,
                    format!("{name}.dockercontext"),
                ),
            };
            let out = output.unwrap_or_else(|| PathBuf::from(default_name));
            atomic_write(&out, &data, 0o600)?;
            record_handed_out(ctx, &name, &files.cert)?;
            println!(
                "wrote {} (holds the private key: keep it safe)",
                out.display()
            );
            match format {
                BundleFormat::TarGz => println!(
                    "on the client: mkdir -p ~/.docker && tar -xzf {} -C ~/.docker && export DOCKER_HOST={url} DOCKER_TLS_VERIFY=1",
                    out.display()
                ),
                BundleFormat::Context => println!(
                    "on the client: docker context import {host} {} && docker context use {host}",
                    out.display()
                ),
            }
            Ok(())
        }
        ClientCommand::Env { name, host } => {
            known_client(ctx, &name)?;
            let _lock = StateLock::acquire(&ctx.settings.paths.state_dir, LOCK_WAIT)?;
            client_files(ctx, &name)?;
            let host = client_host(host)?;
            let port = ctx.settings.docker.listen[0].port;
            println!("export DOCKER_HOST=tcp://{}:{port}", bracket(&host));
            println!("export DOCKER_TLS_VERIFY=1");
            println!(
                "export DOCKER_CERT_PATH={}",
                ctx.layout.client_dir(&name).display()
            );
            Ok(())
        }
    }
}

/// Remembers which certificate went out in a bundle, so its expiry can be warned about.
fn record_handed_out(ctx: &Ctx, name: &str, cert_pem: &[u8]) -> Result<()> {
    let der = inspect::first_cert_der(cert_pem).map_err(|e| anyhow::anyhow!(e))?;
    let info = inspect::cert_info(&der).map_err(|e| anyhow::anyhow!(e))?;
    let rec = status::HandedOut {
        fingerprint_sha256: info.fingerprint,
        not_after: humantime::format_rfc3339_seconds(info.not_after).to_string(),
        at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    atomic_write(
        &status::handed_out_path(&ctx.layout, name),
        serde_json::to_string_pretty(&rec)?.as_bytes(),
        0o600,
    )
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn client_host(given: Option<String>) -> Result<String> {
    match given {
        Some(h) => Ok(h),
        None => {
            let h = HostIdentity::detect()?;
            Ok(h.fqdn.name().map_or(h.hostname.clone(), str::to_string))
        }
    }
}

/// A valid name of a client in the config or on disk.
fn known_client(ctx: &Ctx, name: &str) -> Result<()> {
    config::validate_client_name(name).map_err(UsageError)?;
    if !ctx.client_names().iter().any(|n| n == name) {
        return Err(UsageError(format!(
            "no client '{name}': add it with `docker-tls-manager client add {name}`"
        ))
        .into());
    }
    Ok(())
}

/// A client's three files, checked to work together ([`bundle::check`]). Call it under the
/// state lock, so a renewal cannot run between the reads.
fn client_files(ctx: &Ctx, name: &str) -> Result<ClientFiles> {
    known_client(ctx, name)?;
    let slot = Slot::Client(name.to_string());
    let (cert, key) = ctx.layout.cert_and_key(&slot);
    let ca = ctx.layout.ca_copy(&slot).expect("clients have a CA copy");
    let read = |p: &Path| {
        std::fs::read(p).with_context(|| {
            format!(
                "cannot read '{}': run `docker-tls-manager apply` to issue client '{name}'",
                p.display()
            )
        })
    };
    let files = ClientFiles {
        ca: read(&ca)?,
        cert: read(&cert)?,
        key: read(&key)?,
    };
    let current = ctx.layout.ca_cert();
    let current_ca = read(&current)?;
    let why = match bundle::check(&files, &current_ca, SystemTime::now()) {
        Ok(()) => return Ok(files),
        Err(bundle::Unfit::CertUnreadable(e)) => format!("'{}': {e}", cert.display()),
        Err(bundle::Unfit::KeyUnreadable(e)) => format!("'{}': {e}", key.display()),
        Err(bundle::Unfit::KeyMismatch) => format!(
            "the key '{}' does not match the certificate '{}'",
            key.display(),
            cert.display()
        ),
        Err(bundle::Unfit::NotSignedByCa) => format!(
            "the certificate '{}' is not signed by the current CA '{}'",
            cert.display(),
            current.display()
        ),
        Err(bundle::Unfit::StaleCaCopy) => format!(
            "'{}' is not the current CA certificate '{}' (the certificate '{}' is)",
            ca.display(),
            current.display(),
            cert.display()
        ),
        Err(bundle::Unfit::Expired(t)) => format!(
            "the certificate '{}' expired at {}",
            cert.display(),
            humantime::format_rfc3339_seconds(t)
        ),
        Err(bundle::Unfit::NotYetValid(t)) => format!(
            "the certificate '{}' is not valid before {}",
            cert.display(),
            humantime::format_rfc3339_seconds(t)
        ),
    };
    bail!(
        "client '{name}' cannot be handed out: {why}; nothing written: `docker-tls-manager apply` repairs it"
    )
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
        let validate = std::process::Command::new(&argv[0])
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--validate"))
            .unwrap_or(false);
        println!(
            "{}: `dockerd --validate` {}",
            if validate { "ok" } else { "info" },
            if validate {
                "available"
            } else {
                "not available (Docker < 23): configurations are checked by starting dockerd"
            }
        );
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

/// The man page (section 8) and bash, zsh and fish completions, generated from the clap
/// definition so they never drift from it.
fn generate_assets(dir: &Path) -> Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    ensure_dir(dir, 0o755)?;
    let cmd = crate::cli::Cli::command();
    let mut man = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .render(&mut man)?;
    atomic_write(&dir.join("docker-tls-manager.8"), &man, 0o644)?;
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
        "wrote the man page, completions and the packaged config.toml to {}",
        dir.display()
    );
    Ok(())
}

/// `check`'s report of what apply would do.
fn print_would<T: std::fmt::Display>(items: &[T], warnings: &[String]) {
    println!("ok: apply would:");
    for i in items {
        println!("  - {i}");
    }
    for w in warnings {
        println!("warning: {w}");
    }
}

/// The real outside systems the Docker side talks to: systemd over D-Bus, dockerd's unix
/// socket, and the mutual-TLS probe.
struct DockerSide {
    sd: Dbus,
    probe: docker::probe::TlsProbe,
    daemon: UnixDocker,
    backup_retention: config::BackupSettings,
}

impl DockerSide {
    async fn connect(settings: &Settings) -> Result<DockerSide> {
        Ok(DockerSide {
            sd: Dbus::connect().await?,
            probe: docker::tls_probe(settings),
            daemon: UnixDocker::default(),
            backup_retention: settings.backup,
        })
    }

    async fn observe(&self, settings: &Settings) -> Result<docker::plan::Observed> {
        docker::observe(settings, &self.sd, &self.daemon, &self.probe).await
    }

    fn exec_context(
        &self,
        obs: &docker::plan::Observed,
        backup_dir: PathBuf,
        also_restore: Vec<Snapshot>,
    ) -> docker::execute::ExecContext<'_, Dbus, docker::probe::TlsProbe, UnixDocker> {
        docker::execute::ExecContext {
            systemd: &self.sd,
            probe: &self.probe,
            daemon: &self.daemon,
            previous_served: obs.served.clone(),
            wanted: obs.wanted.clone(),
            backups: Backups {
                dir: backup_dir,
                retention: self.backup_retention,
            },
            also_restore,
        }
    }
}
