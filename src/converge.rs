//! One convergence, for the commands and the service alike: the state lock, the sweep of
//! interrupted writes, the PKI plan and its execution, then Docker's plan and its execution
//! with verification and rollback (snapshots of what Docker reads). Nothing here prints.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::config::{self, Settings};
use crate::docker::{self, daemon::UnixDocker, execute::Snapshot, plan::DockerPlan};
use crate::files::{Backups, StateLock};
use crate::host::HostIdentity;
use crate::layout::DockerdInputs;
use crate::pki::inspect::{self, DiskState};
use crate::pki::plan::{self, Force, Plan};
use crate::pki::{Layout, Slot, execute};
use crate::systemd::Dbus;

/// How long a command waits for the state lock held by another invocation.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Ctx {
    pub settings: Settings,
}

impl Ctx {
    pub fn load(config_path: Option<&Path>) -> Result<Ctx> {
        Ok(Ctx {
            settings: config::load(config_path)?,
        })
    }

    /// Every file the manager owns or reads.
    pub fn layout(&self) -> &Layout {
        &self.settings.paths
    }

    /// Where backups go, and their retention.
    pub fn backups(&self) -> Backups {
        Backups {
            dir: self.layout().backup_dir(),
            retention: self.settings.backup,
        }
    }

    /// Clients from the config and those added with `client add`.
    pub fn client_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.settings.clients.names.iter().cloned().collect();
        names.extend(self.layout().clients_on_disk());
        names.into_iter().collect()
    }

    pub fn inspect(&self) -> DiskState {
        inspect::inspect(
            self.layout(),
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

/// Whether a convergence may configure Docker again after `deconfigure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// `apply`: the admin asks for TLS; clears a `deconfigure`.
    Apply,
    /// `renew`, the service: keep what is configured; after `deconfigure`, certificates only.
    Maintain,
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
    /// What the authorization plugin's step did.
    pub authz: Vec<String>,
    /// What dockerd reads (daemon.json with `--config-file` followed), once observed.
    pub dockerd: Option<DockerdInputs>,
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
    let _lock = StateLock::acquire(ctx.layout(), wait).await?;
    remove_stale_temps(ctx, &DockerdInputs::configured(ctx.layout()), true);
    execute::finish_acme_pending(ctx.layout(), &ctx.backups(), now)?;
    if !pki_only {
        scheduled_rollover(ctx, now)?;
        refresh_renewal_info(ctx, now, force.ask_ari).await;
    }
    let (disk, mut plan) = ctx.plan(&host, now, force)?;
    let marker = ctx.layout().deconfigured();
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
            obs.pki_changes_server = true;
            out.dockerd = Some(obs.dockerd_inputs());
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
    let before: Vec<Snapshot> = ctx
        .layout()
        .docker_reads()
        .iter()
        .filter(|p| p.exists())
        .map(|p| Snapshot::take(p))
        .collect();
    // The server certificate from the ACME CA: ordered now (network I/O), written by the
    // executor. If the CA cannot be reached or refuses, the rest of the plan still runs, the
    // current certificate stays served, and the run fails so that it is retried with backoff.
    let mut acme_error = None;
    let mut acme_server = None;
    if let Some(acme) = &ctx.settings.acme
        && plan.issues_server()
    {
        if pki_only {
            // Before Docker starts (the guard unit, at boot): no network order that could hold
            // dockerd back; the service renews once it runs.
            tracing::info!("the server certificate from the ACME CA is left to the service");
            plan = plan.without_server_issue();
        } else {
            let sans: Vec<_> = plan.server_sans.iter().cloned().collect();
            // The certificate being replaced, when the CA offers renewal information (a record
            // about it exists).
            let replaces = disk.get(&Slot::Server).info().and_then(|i| {
                crate::ari::for_cert(i, disk.acme_renewal.as_ref()).map(|r| r.certificate.clone())
            });
            match crate::acme::issue(
                acme,
                &ctx.layout().acme_account(),
                &sans,
                ctx.settings.server.policy.key_type,
                replaces.as_deref(),
            )
            .await
            {
                Ok(issued) => acme_server = Some(issued),
                Err(e) => {
                    tracing::error!("no certificate from the ACME CA: {e:#}");
                    plan = plan.without_server_issue();
                    acme_error = Some(e.context("the server certificate from the ACME CA"));
                }
            }
        }
    }
    out.pki = Some(plan.clone());
    execute::execute_with(
        &plan,
        ctx.layout(),
        &ctx.settings,
        &host,
        now,
        acme_server.as_ref(),
    )?;
    out.pki_done = true;
    if acme_server.is_some() {
        // When to renew the new certificate: ask at once.
        refresh_renewal_info(ctx, SystemTime::now(), false).await;
    }
    if let Some(e) = acme_error.take_if(|_| !ctx.layout().cert_and_key(&Slot::Server).0.exists()) {
        // No server certificate yet: nothing Docker could serve; it is left as it is.
        return Err(e);
    }
    // Remember the costly checks of what is on disk now, for the next inspection (`status`).
    if plan.is_empty() {
        disk.memo.save(ctx.layout());
    } else {
        ctx.inspect().memo.save(ctx.layout());
    }
    inject_fault(ctx)?;
    if let Some(mut d) = held_back {
        // The server certificate was held back: the one inspected before is still served.
        let expires = disk
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
        return acme_error.map_or(Ok(()), Err);
    }
    if !ctx.settings.docker.manage || pki_only {
        return acme_error.map_or(Ok(()), Err);
    }
    if !configure_docker {
        out.deconfigured = true;
        tracing::info!(
            "Docker left alone: `deconfigure` ran; `docker-tls-manager apply` configures it again"
        );
        return acme_error.map_or(Ok(()), Err);
    }
    let side = DockerSide::connect(&ctx.settings).await?;
    let obs = side.observe(&ctx.settings).await?;
    out.dockerd = Some(obs.dockerd_inputs());
    // Where that daemon.json really is, temp files of a write cut short there go too.
    remove_stale_temps(ctx, &obs.dockerd_inputs(), false);
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
    let validator = docker::validate::Dockerd::for_unit(&obs.docker);
    let cx = side.exec_context(&obs, &validator, ctx.layout().backup_dir(), also_restore);
    docker::execute::execute(&dplan, &cx).await?;
    // Docker's authorization plugin (issue 11): after Docker is configured, never before.
    out.authz = crate::authz::setup::converge(
        &ctx.settings,
        &side.sd,
        &obs.daemon_json_path,
        &obs.guard_binary,
        &ctx.backups(),
    )
    .await?;
    if deconfigured {
        std::fs::remove_file(&marker)
            .with_context(|| format!("cannot remove '{}'", marker.display()))?;
        tracing::info!("configured again after `deconfigure`");
    }
    acme_error.map_or(Ok(()), Err)
}

/// Asks the ACME CA for its renewal information about the server certificate on disk (`ari`)
/// when no record is about it, the record says to ask again, or `now_anyway` (`renew`, a
/// reload of the service), and records the answer. Best effort, under the state lock: a CA
/// without ARI, unreachable or answering nonsense leaves the fallback renewal time in charge
/// and is only logged.
async fn refresh_renewal_info(ctx: &Ctx, now: SystemTime, now_anyway: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SAID_UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    static SAID_UNREACHABLE: AtomicBool = AtomicBool::new(false);
    let Some(acme) = &ctx.settings.acme else {
        return;
    };
    let path = ctx.layout().acme_renewal_info();
    let Some(info) = inspect::read_cert_info(&ctx.layout().cert_and_key(&Slot::Server).0) else {
        return;
    };
    let record = crate::ari::read(&path);
    if !now_anyway && !crate::ari::poll_due(&info, record.as_ref(), now) {
        return;
    }
    // Not more often than POLL_MIN on our own, even when the record cannot be written (a full
    // or read-only state directory would otherwise make every wake-up ask).
    static LAST_ASKED: std::sync::Mutex<Option<(String, SystemTime)>> = std::sync::Mutex::new(None);
    {
        let mut last = LAST_ASKED.lock().unwrap_or_else(|e| e.into_inner());
        if !now_anyway
            && last.as_ref().is_some_and(|(id, t)| {
                info.ari_id.as_ref() == Some(id) && now >= *t && now < *t + crate::ari::POLL_MIN
            })
        {
            return;
        }
        *last = info.ari_id.clone().map(|id| (id, now));
    }
    let Some(cert_id) = info.ari_id.clone() else {
        tracing::debug!("the server certificate has no authority key identifier: no ARI");
        return;
    };
    match crate::acme::renewal_info(acme, &ctx.layout().acme_account(), &cert_id).await {
        Ok(Some(answer)) => {
            let fallback = plan::acme_renewal_time(&info);
            let Some(r) = crate::ari::choose(
                &info,
                &answer,
                fallback,
                now,
                rand::random::<f64>(),
                // An admin's `renew` or reload may renew at once whatever happened before.
                record.as_ref().filter(|_| !now_anyway),
            ) else {
                return;
            };
            match (&r.chosen, &r.ignored) {
                (Some(t), _) => tracing::info!(
                    window_start = %crate::ari::format_time(r.window_start),
                    window_end = %crate::ari::format_time(r.window_end),
                    explanation = r.explanation_url.as_deref().unwrap_or(""),
                    "the ACME CA's renewal window for the server certificate: renewing at {}",
                    crate::ari::format_time(*t)
                ),
                (None, why) => tracing::warn!(
                    "ignoring the ACME CA's renewal window for the server certificate ({}); \
                     renewing at two thirds of its lifetime",
                    why.as_deref().unwrap_or("?")
                ),
            }
            SAID_UNREACHABLE.store(false, Ordering::Relaxed);
            if let Err(e) = crate::ari::write(&path, &r) {
                tracing::warn!("cannot record the ACME renewal information: {e:#}");
            }
        }
        Ok(None) => {
            if !SAID_UNSUPPORTED.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    "the ACME CA offers no renewal information (ARI): the server certificate \
                     renews at two thirds of its lifetime"
                );
            }
            let _ = std::fs::remove_file(&path);
        }
        Err(e) => {
            if let Some(r) = crate::ari::postponed(&info, record.as_ref(), now)
                && let Err(e) = crate::ari::write(&path, &r)
            {
                tracing::warn!("cannot record the ACME renewal information: {e:#}");
            }
            if SAID_UNREACHABLE.swap(true, Ordering::Relaxed) {
                tracing::debug!("no ACME renewal information: {e:#}");
            } else {
                tracing::info!(
                    "no ACME renewal information ({e:#}); the current renewal time stands"
                );
            }
        }
    }
}

/// The automatic CA key rollover (`[ca] key_lifetime`, `rollover_overlap`; see
/// `pki::rollover`): records phase 1 when the CA key is that old, phase 2 when the overlap is
/// over. The PKI plan does the rest. Under the state lock.
fn scheduled_rollover(ctx: &Ctx, now: SystemTime) -> Result<()> {
    use crate::pki::rollover::{self, Phase, Schedule};
    let layout = ctx.layout();
    if ctx.settings.ca_rollover.key_lifetime.is_none() {
        return Ok(());
    }
    let disk = ctx.inspect();
    let step = rollover::scheduled(&disk.rollover, &ctx.settings.ca_rollover, now);
    match (step, disk.rollover.record.clone()) {
        (Schedule::StartNow, None) => {
            // Never in the way of renewals: what stops a start is logged and left to the admin.
            let r = match rollover::start_record(&disk, layout, now, true) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("the CA key reached [ca] key_lifetime, but: {e:#}");
                    return Ok(());
                }
            };
            tracing::warn!(
                "the CA key reached [ca] key_lifetime: CA key rollover, phase 1 (bundles handed \
                 out before keep working for [ca] rollover_overlap; hand out new ones)"
            );
            rollover::write_record(layout, &r)
        }
        (Schedule::FinishNow, Some(mut r)) if r.phase == Phase::Overlap => {
            let holders = crate::status::old_ca_holders(layout, &ctx.client_names(), &r);
            if holders.is_empty() {
                tracing::warn!("[ca] rollover_overlap is over: CA key rollover, phase 2");
            } else {
                tracing::warn!(
                    "[ca] rollover_overlap is over: CA key rollover, phase 2; these clients still \
                     hold a bundle from the previous CA, which stops working now: {}",
                    holders.join(", ")
                );
            }
            r.phase = Phase::Finish;
            rollover::write_record(layout, &r)
        }
        _ => Ok(()),
    }
}

/// Temp files of an atomic write cut short (power loss, SIGKILL) in the directories we write:
/// safe to remove under the lock. The backup tree (`with_backups`) is walked whole: a copy cut
/// short there may hold an old key.
fn remove_stale_temps(ctx: &Ctx, dockerd: &DockerdInputs, with_backups: bool) {
    let mut dirs = ctx.layout().write_dirs(dockerd);
    let mut stack = if with_backups {
        vec![ctx.layout().backup_dir()]
    } else {
        vec![]
    };
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
/// replaces the freshly issued server key with one dockerd cannot load. Only in debug builds
/// (what `cargo test` runs in the machines); the packages are release builds without it.
#[cfg(debug_assertions)]
fn inject_fault(ctx: &Ctx) -> Result<()> {
    if std::env::var("DOCKER_TLS_MANAGER_FAULT").as_deref() == Ok("corrupt-server-key") {
        tracing::warn!("fault injection: corrupting the server key");
        let key = ctx.layout().cert_and_key(&Slot::Server).1;
        crate::files::atomic_write(
            &key,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            0o600,
        )?;
    }
    Ok(())
}

#[cfg(not(debug_assertions))]
fn inject_fault(_: &Ctx) -> Result<()> {
    Ok(())
}

/// The real outside systems the Docker side talks to: systemd over D-Bus, dockerd's unix
/// socket, and the mutual-TLS probe.
pub struct DockerSide {
    pub sd: Dbus,
    probe: docker::probe::TlsProbe,
    daemon: UnixDocker,
    backup_retention: config::BackupSettings,
}

impl DockerSide {
    pub async fn connect(settings: &Settings) -> Result<DockerSide> {
        Ok(DockerSide {
            sd: Dbus::connect().await?,
            probe: docker::tls_probe(settings),
            daemon: UnixDocker::default(),
            backup_retention: settings.backup,
        })
    }

    pub async fn observe(&self, settings: &Settings) -> Result<docker::plan::Observed> {
        docker::observe(settings, &self.sd, &self.daemon, &self.probe).await
    }

    pub fn exec_context<'a>(
        &'a self,
        obs: &docker::plan::Observed,
        validator: &'a docker::validate::Dockerd,
        backup_dir: PathBuf,
        also_restore: Vec<Snapshot>,
    ) -> docker::execute::ExecContext<'a, Dbus, docker::probe::TlsProbe, UnixDocker> {
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
            validate: Some(docker::validate::Check {
                validator,
                path: obs.daemon_json_path.clone(),
                current: obs.daemon_json.clone(),
            }),
        }
    }
}
