//! The service loop (`docker-tls-manager run`, Type=notify): one supervisor over the tasks —
//! the worker (renewal timer and convergence), the file watcher, the address watcher and the
//! signals — with a shared shutdown. sd_notify: READY=1 once Docker serves TLS with the current
//! certificates (or converging failed, with the reason in STATUS=), WATCHDOG=1 from the worker,
//! RELOADING=1 on SIGHUP, STOPPING=1 at once on SIGTERM (the worker then finishes the write in
//! flight and exits).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use sd_notify::NotifyState;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::DEFAULT_CONFIG_PATH;
use crate::converge::{Ctx, Intent, Outcome, converge_once};
use crate::docker::plan::Step;
use crate::files::{LockBusy, atomic_write};
use crate::layout::DockerdInputs;
use crate::metrics::{self, LastRun, Metrics};
use crate::pki::Slot;
use crate::pki::plan::{Action, Force, next_due};
use crate::watch::{AddressWatcher, FileWatcher, Targets, Trigger};

/// This service's unit.
pub const SERVICE_UNIT: &str = "docker-tls-manager.service";
/// The longest sleep: the wall clock is re-read at least this often (suspend, clock jumps).
pub const RECHECK: Duration = Duration::from_secs(5 * 60);
/// How often Docker is fully re-verified when nothing is due.
pub const FULL_CHECK: Duration = Duration::from_secs(60 * 60);
/// Quiet time after a change before acting on it (editors and tools write in bursts).
pub const DEBOUNCE: Duration = Duration::from_millis(300);
pub const ADDRESS_DEBOUNCE: Duration = Duration::from_secs(2);
/// First retry delay after a failure; doubles up to [`MAX_BACKOFF`], with ±20 % jitter.
pub const MIN_BACKOFF: Duration = Duration::from_secs(15);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("sd_notify failed: {e}");
    }
}

/// Delay before retry number `failures` (1-based), with jitter in [0.8, 1.2).
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = MIN_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    base.min(MAX_BACKOFF)
        .mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

fn short_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How long the worker sleeps: until a retry if one is set, else until the earliest
/// renewal or the time to ask the ACME CA's renewal information again (`poll_in`), and
/// never longer than [`RECHECK`] (the wall clock is re-read: suspend, clock jumps) nor
/// shorter than a second (no tight loop, whatever the clock says).
pub fn next_wakeup(
    retry_in: Option<Duration>,
    due_in: Option<Duration>,
    poll_in: Option<Duration>,
) -> Duration {
    retry_in
        .or(due_in.into_iter().chain(poll_in).min())
        .map_or(RECHECK, |d| d.min(RECHECK))
        .max(Duration::from_secs(1))
}

/// When the service asks the ACME CA about the server certificate next (`ari`): only with
/// `[acme]` and a record about the certificate on disk.
fn ari_poll(
    disk: &crate::pki::inspect::DiskState,
    settings: &crate::config::Settings,
) -> Option<SystemTime> {
    settings.acme.as_ref()?;
    crate::ari::next_poll(disk.get(&Slot::Server).info()?, disk.acme_renewal.as_ref())
}

/// What the worker knows when it reports, for [`status_line`].
pub struct StatusFacts<'a> {
    /// The served certificate's expiry and renewal time.
    pub server: Option<(SystemTime, SystemTime)>,
    pub clients: usize,
    /// A Docker restart waits for containers without live-restore.
    pub deferred: bool,
    /// `deconfigure` ran: Docker is left alone until `apply`.
    pub deconfigured: bool,
    /// Client bundles whose CA copy expires soon.
    pub bundles_to_hand_out: usize,
    /// A CA key rollover runs or is near (`status::rollover_warnings`, shortened).
    pub rollover: Option<String>,
    pub last_error: Option<&'a str>,
    /// Failed convergences in a row.
    pub failures: u32,
}

/// The one line `systemctl status` shows (STATUS=): the certificate, then whatever needs the
/// admin, the last failure last (its first line, at most 300 characters).
pub fn status_line(f: &StatusFacts) -> String {
    let mut status = match f.server {
        Some((expires, renewal)) => format!(
            "server cert valid until {}, renewal {}; {} clients",
            short_time(expires),
            short_time(renewal),
            f.clients
        ),
        None => "no server certificate yet".to_string(),
    };
    if f.deferred {
        status.push_str("; Docker restart deferred (containers running without live-restore)");
    }
    if f.deconfigured {
        status.push_str(
            "; Docker left alone since deconfigure (`docker-tls-manager apply` configures it again)",
        );
    }
    if let Some(r) = &f.rollover {
        status.push_str("; ");
        status.push_str(r);
    }
    if f.bundles_to_hand_out > 0 {
        status.push_str(&format!(
            "; {} client bundle(s) need handing out again",
            f.bundles_to_hand_out
        ));
    }
    if let Some(e) = f.last_error {
        let first: String = e.lines().next().unwrap_or("").chars().take(300).collect();
        status.push_str(&format!(
            "; last attempt failed ({} in a row): {first}",
            f.failures
        ));
    }
    status
}

/// How soon to retry when the CLI holds the state lock (not a failure).
pub const LOCK_RETRY: Duration = Duration::from_secs(5);

/// Content hash and mode of a file (None: absent).
type FileState = Option<([u8; 32], u32)>;

fn file_state(p: &Path) -> FileState {
    use sha2::Digest;
    let data = std::fs::read(p).ok()?;
    Some((
        sha2::Sha256::digest(&data).into(),
        crate::files::mode_of(p).unwrap_or(0),
    ))
}

struct Worker {
    config_path: Option<PathBuf>,
    ctx: Ctx,
    metrics: Metrics,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    last_full: Option<Instant>,
    deferred: bool,
    /// `deconfigure` ran: Docker is left alone until `apply`.
    deconfigured: bool,
    warnings: BTreeSet<String>,
    refresh: mpsc::UnboundedSender<Vec<PathBuf>>,
    /// What dockerd reads, as the last convergence found it.
    dockerd: DockerdInputs,
    /// Content hash and mode of the watched files after the last convergence: an event whose
    /// file is still so is our own write (or no change) and is ignored.
    known: BTreeMap<PathBuf, FileState>,
    /// Half of WATCHDOG_USEC, if the watchdog is on.
    watchdog: Option<Duration>,
    /// When the timer fires next; moved only by real work, never by a watchdog ping.
    deadline: tokio::time::Instant,
}

impl Worker {
    /// The configuration file as loaded (absolute), else as named, else the default.
    fn config_file(&self) -> PathBuf {
        self.ctx
            .settings
            .source
            .clone()
            .or_else(|| self.config_path.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }

    fn targets<'a>(&'a self, config: &'a Path) -> Targets<'a> {
        Targets {
            layout: self.ctx.layout(),
            dockerd: &self.dockerd,
            config,
        }
    }

    fn refresh_watches(&self) {
        let config = self.config_file();
        let _ = self.refresh.send(self.targets(&config).dirs());
    }

    fn metrics_state_path(&self) -> PathBuf {
        self.ctx.layout().metrics_state()
    }

    /// One convergence, with its bookkeeping: metrics, backoff, STATUS=. It runs in its own
    /// task while this loop keeps pinging the watchdog: a convergence may legitimately take
    /// minutes (lock wait, restart jobs, verification, rollback), each step with its own timeout.
    async fn converge(&mut self, why: &str) {
        self.converge_with(why, Force::default()).await
    }

    /// [`Self::converge`] with `force` (a reload asks the ACME CA's renewal information again).
    async fn converge_with(&mut self, why: &str, force: Force) {
        info!(reason = why, "converging");
        let ctx = self.ctx.clone();
        let mut task = tokio::spawn(async move {
            let mut out = Outcome::default();
            let r = converge_once(&ctx, force, false, Intent::Maintain, &mut out).await;
            (out, r)
        });
        let (out, result) = loop {
            tokio::select! {
                r = &mut task => break r.unwrap_or_else(|e| (Outcome::default(), Err(anyhow::anyhow!("convergence panicked: {e}")))),
                _ = tokio::time::sleep(self.watchdog.unwrap_or(Duration::MAX)), if self.watchdog.is_some() => {
                    notify(&[NotifyState::Watchdog]);
                }
            }
        };
        let now = SystemTime::now();
        self.last_full = Some(Instant::now());
        // Metrics: each part's own result.
        let renewed = out.pki.as_ref().is_some_and(|p| {
            p.actions
                .iter()
                .any(|a| matches!(a, Action::Issue { .. } | Action::IssueCa { .. }))
        });
        if renewed {
            self.metrics.last_renewal = LastRun {
                at: Some(now),
                ok: out.pki_done,
            };
        }
        let restarted = out.docker.as_ref().is_some_and(|d| {
            d.steps
                .iter()
                .any(|s| matches!(s, Step::RestartDocker | Step::StartDocker))
        });
        if restarted {
            self.metrics.last_restart = LastRun {
                at: Some(now),
                ok: result.is_ok(),
            };
        }
        if let Some(d) = &out.docker {
            self.deferred = d.deferred;
        }
        self.deconfigured = out.deconfigured;
        if let Some(d) = out.dockerd {
            self.dockerd = d;
        }
        match result {
            Ok(()) => {
                self.failures = 0;
                self.retry_at = None;
                self.last_error = None;
            }
            Err(e) if e.chain().any(|c| c.downcast_ref::<LockBusy>().is_some()) => {
                info!(
                    "the state lock is busy (a command is running); retrying in {}s",
                    LOCK_RETRY.as_secs()
                );
                self.retry_at = Some(Instant::now() + LOCK_RETRY);
            }
            Err(e) => {
                self.failures += 1;
                self.metrics.converge_failures += 1;
                let delay = backoff(self.failures, rand::random::<f64>());
                self.retry_at = Some(Instant::now() + delay);
                error!(
                    "convergence failed (attempt {}), retrying in {}s: {e:#}",
                    self.failures,
                    delay.as_secs()
                );
                self.last_error = Some(format!("{e:#}"));
            }
        }
        self.report();
        self.refresh_watches();
        self.remember_files();
    }

    fn remember_files(&mut self) {
        let config = self.config_file();
        let targets = self.targets(&config);
        let mut known = BTreeMap::new();
        for dir in targets.dirs() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if matches!(targets.classify(&p), Some(Trigger::File(_))) {
                    known.insert(p.clone(), file_state(&p));
                }
            }
        }
        self.known = known;
    }

    /// Whether a changed path is worth acting on: not our own write, not unchanged.
    fn changed(&self, p: &Path) -> bool {
        self.known.get(p).is_none_or(|h| *h != file_state(p))
    }

    /// Whether the host's names and addresses differ from the served certificate's SANs
    /// (address events also come for Docker's veths and link-local addresses).
    fn sans_changed(&self) -> bool {
        let Ok(host) = crate::host::HostIdentity::detect() else {
            return true;
        };
        let disk = self.ctx.inspect();
        let wanted = crate::pki::plan::wanted_server_sans(&disk, &self.ctx.settings, &host, false);
        disk.get(&Slot::Server)
            .info()
            .is_none_or(|i| i.sans != wanted)
    }

    /// The rollover's metrics (`metrics::render_rollover`).
    fn rollover_metrics(&self, disk: &crate::pki::inspect::DiskState, now: SystemTime) -> String {
        let ro = &disk.rollover;
        let old = ro.record.as_ref().map_or(0, |r| {
            crate::status::old_ca_holders(self.ctx.layout(), &self.ctx.client_names(), r).len()
        });
        metrics::render_rollover(
            ro.phase(),
            old,
            crate::pki::rollover::next_step(ro, &self.ctx.settings.ca_rollover, now),
        )
    }

    /// Writes metrics (and their state, so a restart keeps them), logs new warnings, sets STATUS=.
    fn report(&mut self) {
        let now = SystemTime::now();
        let disk = self.ctx.inspect();
        if let Ok(state) = serde_json::to_vec(&self.metrics) {
            let _ = atomic_write(&self.metrics_state_path(), &state, 0o600);
        }
        if let Some(path) = &self.ctx.settings.service.metrics_file {
            // Written where node_exporter's textfile collector looks, if it is installed.
            if path.parent().is_some_and(|d| d.is_dir())
                && let Err(e) = atomic_write(
                    path,
                    (metrics::render(&disk, &self.metrics, next_due(&disk, &self.ctx.settings))
                        + &self.rollover_metrics(&disk, now))
                        .as_bytes(),
                    0o644,
                )
            {
                warn!("cannot write metrics: {e:#}");
            }
        }
        let handed = crate::status::handed_out_warnings(
            self.ctx.layout(),
            &self.ctx.client_names(),
            &self.ctx.settings,
            now,
        );
        let bundles_to_hand_out = handed.len();
        let rollover = crate::status::rollover_warnings(
            self.ctx.layout(),
            &self.ctx.client_names(),
            &self.ctx.settings,
            now,
        );
        let rollover_line = rollover.first().map(|w| {
            let short: String = w
                .split(" (hand each")
                .next()
                .unwrap_or(w)
                .chars()
                .take(300)
                .collect();
            short
        });
        let warnings: BTreeSet<String> = handed.into_iter().chain(rollover).collect();
        for w in warnings.difference(&self.warnings) {
            warn!("{w}");
        }
        self.warnings = warnings;
        let server = disk.get(&Slot::Server).info();
        let status = status_line(&StatusFacts {
            server: server.map(|i| {
                (
                    i.not_after,
                    crate::pki::plan::renewal_at(
                        &self.ctx.settings,
                        &Slot::Server,
                        i,
                        disk.acme_renewal.as_ref(),
                    ),
                )
            }),
            clients: self.ctx.client_names().len(),
            deferred: self.deferred,
            deconfigured: self.deconfigured,
            bundles_to_hand_out,
            rollover: rollover_line,
            last_error: self.last_error.as_deref(),
            failures: self.failures,
        });
        notify(&[NotifyState::Status(&status)]);
    }

    fn rearm(&mut self) {
        let now = SystemTime::now();
        let retry_in = self
            .retry_at
            .map(|r| r.saturating_duration_since(Instant::now()));
        let disk = self.ctx.inspect();
        let until = |t: SystemTime| t.duration_since(now).unwrap_or(Duration::ZERO);
        let (due_in, poll_in) = match retry_in {
            Some(_) => (None, None),
            None => (
                next_due(&disk, &self.ctx.settings).map(until),
                ari_poll(&disk, &self.ctx.settings).map(until),
            ),
        };
        self.deadline = tokio::time::Instant::now() + next_wakeup(retry_in, due_in, poll_in);
    }

    /// After a timer wake-up: converge if something is due, a retry is due, a deferred restart
    /// waits, or a full check is due; otherwise only the wall clock was re-read.
    async fn on_timer(&mut self) {
        let pki_due = self.retry_at.is_none()
            && match crate::host::HostIdentity::detect()
                .and_then(|h| self.ctx.plan(&h, SystemTime::now(), Force::default()))
            {
                Ok((disk, plan)) => {
                    !plan.is_empty()
                        || ari_poll(&disk, &self.ctx.settings)
                            .is_some_and(|t| SystemTime::now() >= t)
                        || matches!(
                            crate::pki::rollover::scheduled(
                                &disk.rollover,
                                &self.ctx.settings.ca_rollover,
                                SystemTime::now(),
                            ),
                            crate::pki::rollover::Schedule::StartNow
                                | crate::pki::rollover::Schedule::FinishNow
                        )
                }
                Err(_) => true,
            };
        let full_due = self.last_full.is_none_or(|t| t.elapsed() >= FULL_CHECK);
        if let Some(why) = timer_decision(
            self.retry_at,
            Instant::now(),
            pki_due,
            full_due,
            self.deferred,
        ) {
            self.converge(why).await;
        }
    }

    /// SIGHUP or a changed config file: load and validate; a bad config is logged and the old kept.
    async fn reload(&mut self) {
        notify(&[NotifyState::Reloading]);
        match Ctx::load(self.config_path.as_deref()) {
            Ok(ctx) => {
                if ctx.settings != self.ctx.settings {
                    info!("configuration reloaded");
                    self.ctx = ctx;
                    self.retry_at = None;
                }
                // The admin's reload also asks the ACME CA's renewal information again (a
                // certificate revoked since shows up at once).
                let force = Force {
                    ask_ari: true,
                    ..Force::default()
                };
                self.converge_with("configuration reloaded", force).await;
            }
            Err(e) => {
                error!("configuration rejected, still running on the previous one: {e:#}");
                self.last_error = Some(format!("configuration rejected: {e:#}"));
                self.report();
            }
        }
        notify(&[NotifyState::Ready]);
    }

    async fn on_triggers(
        &mut self,
        first: Trigger,
        triggers: &mut mpsc::UnboundedReceiver<Trigger>,
    ) {
        // Debounce, then act once on everything that arrived. Address changes come in bursts
        // (IPv4 and IPv6, DHCP): wait longer so Docker restarts once.
        let wait = if first == Trigger::Addresses {
            ADDRESS_DEBOUNCE
        } else {
            DEBOUNCE
        };
        let mut batch = vec![first];
        tokio::time::sleep(wait).await;
        while let Ok(t) = triggers.try_recv() {
            batch.push(t);
        }
        let config = self.config_file();
        let mut relevant: Vec<Trigger> = batch
            .into_iter()
            .filter_map(|t| match t {
                Trigger::File(p) => self
                    .targets(&config)
                    .classify(&p)
                    .filter(|t| *t == Trigger::Config || self.changed(&p)),
                other => Some(other),
            })
            .collect();
        relevant.sort_by_key(|t| format!("{t:?}"));
        relevant.dedup();
        if relevant == [Trigger::Addresses] && !self.sans_changed() {
            tracing::debug!("address change that does not concern the certificate");
            return;
        }
        if relevant.contains(&Trigger::Config) {
            self.reload().await;
        } else if !relevant.is_empty() {
            let why: Vec<String> = relevant
                .iter()
                .map(|t| match t {
                    Trigger::File(p) => format!("{} changed", p.display()),
                    _ => "host addresses changed".to_string(),
                })
                .collect();
            self.converge(&why.join(", ")).await;
        }
    }

    async fn run(
        mut self,
        mut triggers: mpsc::UnboundedReceiver<Trigger>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        if let Ok(b) = std::fs::read(self.metrics_state_path()) {
            self.metrics = serde_json::from_slice(&b).unwrap_or_default();
        }
        self.converge("start").await;
        notify(&[NotifyState::Ready]);
        let mut watchdog_tick = self
            .watchdog
            .map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
        self.rearm();
        loop {
            let deadline = self.deadline;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    info!("stopping");
                    return Ok(());
                }
                _ = async { watchdog_tick.as_mut().unwrap().tick().await }, if watchdog_tick.is_some() => {
                    notify(&[NotifyState::Watchdog]);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.on_timer().await;
                    self.rearm();
                }
                t = triggers.recv() => {
                    let Some(first) = t else {
                        if *shutdown.borrow() {
                            return Ok(());
                        }
                        bail!("trigger channel closed");
                    };
                    if *shutdown.borrow() {
                        continue;
                    }
                    self.on_triggers(first, &mut triggers).await;
                    self.rearm();
                }
            }
        }
    }
}

async fn file_watcher_task(
    tx: mpsc::UnboundedSender<Trigger>,
    mut refresh: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<String> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    let mut watcher = FileWatcher::new(raw_tx)?;
    loop {
        tokio::select! {
            dirs = refresh.recv() => match dirs {
                Some(d) => watcher.refresh(&d),
                None => return Ok("worker gone".into()),
            },
            p = raw_rx.recv() => match p {
                Some(p) => {
                    watcher.on_path(&p);
                    let _ = tx.send(Trigger::File(p));
                }
                None => bail!("inotify watcher stopped"),
            },
            _ = shutdown.changed() => return Ok("shutdown".into()),
        }
    }
}

async fn address_task(
    tx: mpsc::UnboundedSender<Trigger>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<String> {
    let w = AddressWatcher::new()?;
    loop {
        tokio::select! {
            r = w.changed() => {
                r?;
                let _ = tx.send(Trigger::Addresses);
            }
            _ = shutdown.changed() => return Ok("shutdown".into()),
        }
    }
}

async fn signal_task(
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: watch::Sender<bool>,
) -> Result<String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => { info!("SIGHUP: reloading the configuration"); let _ = tx.send(Trigger::Config); }
            _ = term.recv() => {
                // Tell systemd at once; the worker finishes the write in flight, then exits.
                notify(&[NotifyState::Stopping]);
                let _ = shutdown.send(true);
                return Ok("SIGTERM".into());
            }
            _ = int.recv() => {
                notify(&[NotifyState::Stopping]);
                let _ = shutdown.send(true);
                return Ok("SIGINT".into());
            }
        }
    }
}

/// Whether a timer wake-up converges, and why. After a failure only the retry time counts:
/// a renewal that keeps failing (each attempt restarting Docker twice, with the rollback) is
/// retried with backoff, never at every wake-up because it is still due.
pub fn timer_decision(
    retry_at: Option<Instant>,
    now: Instant,
    pki_due: bool,
    full_due: bool,
    deferred: bool,
) -> Option<&'static str> {
    if let Some(r) = retry_at {
        return (now >= r).then_some("retry");
    }
    if pki_due {
        Some("renewal due")
    } else if deferred {
        Some("deferred Docker restart")
    } else if full_due {
        Some("periodic check")
    } else {
        None
    }
}

fn ended(name: &str, r: Result<Result<String>, tokio::task::JoinError>) -> bool {
    match r {
        Ok(Ok(why)) => {
            info!(task = name, "task ended: {why}");
            true
        }
        Ok(Err(e)) => {
            error!(task = name, "task failed: {e:#}");
            false
        }
        Err(e) => {
            error!(task = name, "task panicked or was cancelled: {e}");
            false
        }
    }
}

/// Runs the service until SIGTERM. A bad configuration at start is an error (exit 2).
pub async fn run(config_path: Option<&Path>) -> Result<()> {
    let ctx = Ctx::load(config_path)?;
    let dockerd_default = DockerdInputs::configured(ctx.layout());
    info!(config = %ctx.settings.source.as_ref().map_or("defaults".into(), |p| p.display().to_string()), "starting");
    let (trig_tx, trig_rx) = mpsc::unbounded_channel();
    let (refresh_tx, refresh_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let worker = Worker {
        config_path: config_path.map(Path::to_path_buf),
        ctx,
        metrics: Metrics::default(),
        failures: 0,
        retry_at: None,
        last_error: None,
        last_full: None,
        deferred: false,
        deconfigured: false,
        warnings: BTreeSet::new(),
        refresh: refresh_tx,
        dockerd: dockerd_default,
        known: BTreeMap::new(),
        watchdog: sd_notify::watchdog_enabled().map(|d| d / 2),
        deadline: tokio::time::Instant::now(),
    };
    worker.refresh_watches();
    let mut files = tokio::spawn(file_watcher_task(
        trig_tx.clone(),
        refresh_rx,
        shutdown_rx.clone(),
    ));
    let mut addresses = tokio::spawn(address_task(trig_tx.clone(), shutdown_rx.clone()));
    let mut signals = tokio::spawn(signal_task(trig_tx, shutdown_tx.clone()));
    let mut work = tokio::spawn(worker.run(trig_rx, shutdown_rx));

    // The supervisor: whichever task ends first, say which and why, then shut the rest down.
    let clean = tokio::select! {
        r = &mut work => return match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context("the worker failed")),
            Err(e) => Err(anyhow::anyhow!("the worker panicked: {e}")),
        },
        r = &mut files => ended("file watcher", r),
        r = &mut addresses => ended("address watcher", r),
        r = &mut signals => ended("signals", r),
    };
    let _ = shutdown_tx.send(true);
    // The worker finishes the convergence in flight, then stops.
    let r = work.await.context("the worker panicked")?;
    for t in [files, addresses, signals] {
        t.abort();
    }
    r?;
    if clean {
        Ok(())
    } else {
        bail!("a service task failed; exiting so systemd restarts the service")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `systemctl stop` (and `apt remove`) waits for the convergence in flight: killing it in
    /// the middle of a rollback would leave Docker stopped.
    #[test]
    fn the_unit_waits_for_the_longest_convergence_on_stop() {
        let unit = include_str!("../systemd/docker-tls-manager.service");
        let stop = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .expect("TimeoutStopSec= in the unit");
        let stop = humantime::parse_duration(stop).unwrap();
        // Lock wait; stop, socket, start jobs; verification; rollback: restart job, start
        // job, verification.
        let worst = crate::converge::LOCK_WAIT
            + crate::systemd::JOB_TIMEOUT * 5
            + crate::docker::execute::VERIFY_TIMEOUT * 2;
        assert!(stop >= worst, "TimeoutStopSec={stop:?} < {worst:?}");
    }

    #[test]
    fn a_pending_retry_is_not_bypassed_by_a_due_renewal() {
        let now = Instant::now();
        let later = now + Duration::from_secs(600);
        // A failed renewal is still due: only the retry time brings the next attempt.
        assert_eq!(timer_decision(Some(later), now, true, true, true), None);
        assert_eq!(
            timer_decision(Some(now), now, true, false, false),
            Some("retry")
        );
        assert_eq!(
            timer_decision(None, now, true, false, false),
            Some("renewal due")
        );
        assert_eq!(
            timer_decision(None, now, false, false, true),
            Some("deferred Docker restart")
        );
        assert_eq!(
            timer_decision(None, now, false, true, false),
            Some("periodic check")
        );
        assert_eq!(timer_decision(None, now, false, false, false), None);
    }

    #[test]
    fn wakeup_follows_retry_then_renewal_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(next_wakeup(None, None, None), RECHECK);
        assert_eq!(next_wakeup(None, Some(s(90)), None), s(90));
        assert_eq!(next_wakeup(None, Some(s(86400)), None), RECHECK);
        // Asking the ACME CA again wakes the worker, whichever comes first.
        assert_eq!(next_wakeup(None, Some(s(90)), Some(s(60))), s(60));
        assert_eq!(next_wakeup(None, Some(s(60)), Some(s(90))), s(60));
        assert_eq!(next_wakeup(None, None, Some(s(120))), s(120));
        assert_eq!(next_wakeup(Some(s(30)), None, Some(s(5))), s(30));
        // A retry set wins over a renewal (the planner would only fail again sooner).
        assert_eq!(next_wakeup(Some(s(30)), Some(s(5)), None), s(30));
        // Overdue, or a clock that went backwards: one second, never a tight loop.
        assert_eq!(next_wakeup(None, Some(Duration::ZERO), None), s(1));
        assert_eq!(next_wakeup(Some(Duration::ZERO), None, None), s(1));
    }

    #[test]
    fn status_line_says_what_needs_the_admin() {
        let t = |x: &str| humantime::parse_rfc3339(x).unwrap();
        let mut f = StatusFacts {
            server: Some((t("2027-11-26T12:00:00Z"), t("2027-10-27T12:00:00Z"))),
            clients: 2,
            deferred: false,
            deconfigured: false,
            bundles_to_hand_out: 0,
            rollover: None,
            last_error: None,
            failures: 0,
        };
        assert_eq!(
            status_line(&f),
            "server cert valid until 2027-11-26T12:00:00Z, renewal 2027-10-27T12:00:00Z; 2 clients"
        );
        let long = format!("cannot reach systemd\ncaused by: {}", "x".repeat(400));
        f.deferred = true;
        f.deconfigured = true;
        f.bundles_to_hand_out = 3;
        f.rollover = Some("CA key rollover, phase 1: both CAs trusted since X; clients still holding a bundle from the previous CA: a".into());
        f.last_error = Some(&long);
        f.failures = 4;
        let line = status_line(&f);
        assert!(line.contains("; Docker restart deferred"), "{line}");
        assert!(
            line.contains("; Docker left alone since deconfigure"),
            "{line}"
        );
        assert!(
            line.contains("; 3 client bundle(s) need handing out again"),
            "{line}"
        );
        assert!(
            line.contains("; CA key rollover, phase 1: both CAs trusted since X; clients still holding a bundle from the previous CA: a;"),
            "{line}"
        );
        assert!(
            line.ends_with("; last attempt failed (4 in a row): cannot reach systemd"),
            "only the first line of the error: {line}"
        );
        assert!(!line.contains('\n'));
        f.server = None;
        f.last_error = Some(&long[..0]);
        assert!(status_line(&f).starts_with("no server certificate yet;"));
        let huge = "y".repeat(1000);
        f.last_error = Some(&huge);
        assert!(status_line(&f).ends_with(&"y".repeat(300)));
        assert!(!status_line(&f).contains(&"y".repeat(301)));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff(1, 0.5), MIN_BACKOFF);
        assert_eq!(backoff(2, 0.5), MIN_BACKOFF * 2);
        assert_eq!(backoff(40, 0.5), MAX_BACKOFF);
        assert!(backoff(3, 0.0) < backoff(3, 1.0));
        assert!(backoff(1, 0.0) >= MIN_BACKOFF.mul_f64(0.8));
    }
}
