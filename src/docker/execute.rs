//! Runs a Docker plan against systemd, verifies the result, and on any failure puts the
//! previous files back, reloads systemd, resets the start limit and starts Docker again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use tracing::{error, info, warn};

use super::daemon::DockerDaemon;
use super::plan::{DockerPlan, Step};
use super::probe::Prober;
use super::render::{DOCKER_SERVICE, SOCKET_UNIT};
use super::validate::{Check, Verdict};
use crate::error::UsageError;
use crate::files::{Backups, atomic_write_preserving, backup, ensure_dir};
use crate::systemd::{JobKind, Systemd};

/// How long Docker gets to come up and serve TLS after a (re)start.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long dockerd gets to report live-restore on after SIGHUP.
#[cfg(not(test))]
const LIVE_RESTORE_TIMEOUT: Duration = Duration::from_secs(20);
#[cfg(test)]
const LIVE_RESTORE_TIMEOUT: Duration = Duration::from_millis(500);

/// A file's content before the run (`None`: it did not exist), to restore on failure.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub path: PathBuf,
    pub content: Option<Vec<u8>>,
    pub mode: u32,
}

impl Snapshot {
    pub fn take(path: &Path) -> Snapshot {
        Snapshot {
            path: path.to_path_buf(),
            content: std::fs::read(path).ok(),
            mode: crate::files::mode_of(path).unwrap_or(0o644),
        }
    }

    fn restore(&self) -> Result<()> {
        match &self.content {
            Some(c) => atomic_write_preserving(&self.path, c, self.mode),
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot remove '{}'", self.path.display()))
                }
                _ => Ok(()),
            },
        }
    }
}

/// What the executor needs besides the plan.
pub struct ExecContext<'a, S: Systemd, P: Prober, D: DockerDaemon> {
    pub systemd: &'a S,
    pub probe: &'a P,
    pub daemon: &'a D,
    /// SHA-256 of the server certificate Docker must serve.
    pub wanted: String,
    /// SHA-256 of what Docker served before, if it served TLS: checked again after a rollback.
    pub previous_served: Option<String>,
    pub backups: Backups,
    /// Files changed before this plan (the PKI files Docker and the probe read) to restore on
    /// failure.
    pub also_restore: Vec<Snapshot>,
    /// `dockerd --validate` on daemon.json before Docker is restarted or reloaded.
    pub validate: Option<Check<'a>>,
}

/// Whether a step acts on the running Docker (after it, a rollback must restart Docker). A
/// reload (SIGHUP) does not: dockerd keeps running, and the only reloads we send switch
/// live-restore on, which a rollback keeps.
fn touches_docker(step: &Step) -> bool {
    matches!(
        step,
        Step::StopDocker
            | Step::StartDocker
            | Step::RestartDocker
            | Step::StartSocket
            | Step::RestartSocket
            | Step::StopSocket
    )
}

/// Runs `plan`. On failure: rollback, then an error naming the cause and the rollback outcome.
pub async fn execute<S: Systemd, P: Prober, D: DockerDaemon>(
    plan: &DockerPlan,
    cx: &ExecContext<'_, S, P, D>,
) -> Result<()> {
    let mut snapshots: Vec<Snapshot> = cx.also_restore.clone();
    for step in &plan.steps {
        if let Step::Write { path, .. } | Step::Remove { path } = step
            && !snapshots.iter().any(|s| &s.path == path)
        {
            snapshots.push(Snapshot::take(path));
        }
    }
    let socket_before = cx.systemd.unit(SOCKET_UNIT).await.unwrap_or_default();
    // Before anything is written: a daemon.json dockerd would refuse stops the run here.
    if let Some(check) = &cx.validate
        && plan
            .steps
            .iter()
            .any(|s| touches_docker(s) || *s == Step::ReloadDocker)
        && let Err(e) = check_daemon_json(plan, check)
    {
        error!("{e:#}");
        if crate::error::exit_code(&e) == crate::error::EXIT_USAGE {
            // The admin's file: as with any Docker setup we refuse, certificates renewed just
            // before stay (they wait for Docker's next restart) and nothing else was written.
            return Err(e.context(format!(
                "{DOCKER_SERVICE} was not restarted and nothing was written for Docker"
            )));
        }
        return match rollback(&snapshots, &socket_before, false, cx).await {
            Ok(()) => Err(e.context(format!(
                "{DOCKER_SERVICE} was not restarted and the previous files were restored"
            ))),
            Err(r) => Err(e.context(format!(
                "{DOCKER_SERVICE} was not restarted, but restoring the previous files failed: {r:#}"
            ))),
        };
    }
    let now = SystemTime::now();
    let mut backed_up: Vec<PathBuf> = Vec::new();
    let mut docker_touched = false;
    for (i, step) in plan.steps.iter().enumerate() {
        info!(step = %step, "docker");
        if *step == Step::Commit {
            // Files written so far are the new baseline of the rollback.
            for st in &plan.steps[..i] {
                if let Step::Write { path, .. } | Step::Remove { path } = st
                    && let Some(s) = snapshots.iter_mut().find(|s| &s.path == path)
                {
                    *s = Snapshot::take(path);
                }
            }
            continue;
        }
        docker_touched |= touches_docker(step);
        // Each file is backed up once per run, as it was before the run (a second write of
        // the same file must not replace the backup of the user's original).
        let backup_result = match step {
            Step::Write { path, content, .. } if !backed_up.contains(path) => {
                backed_up.push(path.clone());
                if std::fs::read(path).is_ok_and(|old| old != content.as_bytes()) {
                    backup(path, &cx.backups, now).map(|_| ())
                } else {
                    Ok(())
                }
            }
            Step::Remove { path } if !backed_up.contains(path) => {
                backed_up.push(path.clone());
                backup(path, &cx.backups, now).map(|_| ())
            }
            _ => Ok(()),
        };
        if let Err(e) = match backup_result {
            Ok(()) => run_step(step, cx).await,
            Err(e) => Err(e),
        } {
            error!("step '{step}' failed: {e:#}; rolling back");
            return match rollback(&snapshots, &socket_before, docker_touched, cx).await {
                Ok(()) => Err(e.context(format!(
                    "'{step}' failed; the previous configuration was restored{}",
                    if docker_touched {
                        format!(" and {DOCKER_SERVICE} is running")
                    } else {
                        String::new()
                    }
                ))),
                Err(r) => Err(e.context(format!(
                    "'{step}' failed, and the rollback failed too: {r:#}"
                ))),
            };
        }
    }
    Ok(())
}

/// `dockerd --validate` on the daemon.json dockerd will read: each one the plan writes, else
/// the one there now. A refusal is the admin's to fix (a UsageError, exit 2) when the file as
/// it is now is refused for the same reason, except for TLS material, which is ours; anything
/// else is a failure (exit 1). Without `--validate` (Docker < 23) the log says so, and the
/// verification after the restart, with its rollback, is what checks the file.
fn check_daemon_json(plan: &DockerPlan, check: &Check<'_>) -> Result<()> {
    let path = check.path.display();
    let mut targets: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Write { path, content, .. } if *path == check.path => Some(content.as_str()),
            _ => None,
        })
        .collect();
    if targets.is_empty() {
        match &check.current {
            Some(c) => targets.push(c),
            None => return Ok(()),
        }
    }
    let ask = |text: &str| match check.validator.validate(text) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(
                "cannot run `dockerd --validate` ({e:#}): '{path}' is checked by starting dockerd"
            );
            None
        }
    };
    for text in targets {
        let msg = match ask(text) {
            None => continue,
            Some(Verdict::Accepted) => {
                info!("`dockerd --validate` accepts '{path}'");
                continue;
            }
            Some(Verdict::Unavailable(version)) => {
                info!(
                    "{version} has no `dockerd --validate` (Docker 23 and later have it): '{path}' is checked \
                     by starting dockerd, verified, and rolled back if dockerd fails"
                );
                return Ok(());
            }
            Some(Verdict::Refused(msg)) => msg,
        };
        // TLS material is ours, whatever file names it.
        let current = check.current.as_deref();
        let users = !msg.starts_with("invalid TLS configuration")
            && (current == Some(text)
                || current.and_then(ask) == Some(Verdict::Refused(msg.clone())));
        if users {
            return Err(UsageError(format!(
                "dockerd refuses '{path}' as it is now (`dockerd --validate`): {msg}. Fix it (dockerd would \
                 not start with it, after a restart or a rollback alike), then run apply again"
            ))
            .into());
        }
        bail!(
            "dockerd refuses '{path}' with what this run would put in place (`dockerd --validate`): {msg}"
        );
    }
    Ok(())
}

async fn run_step<S: Systemd, P: Prober, D: DockerDaemon>(
    step: &Step,
    cx: &ExecContext<'_, S, P, D>,
) -> Result<()> {
    let sd = cx.systemd;
    match step {
        Step::Write {
            path,
            content,
            mode,
        } => {
            if let Some(parent) = path.parent()
                && !parent.exists()
            {
                ensure_dir(parent, 0o755)?;
            }
            atomic_write_preserving(path, content.as_bytes(), *mode)
        }
        Step::Remove { path } => {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove '{}'", path.display()));
                }
                _ => {}
            }
            // The drop-in directory, if we emptied it (fails harmlessly when not empty).
            if let Some(dir) = path.parent().filter(|d| d.ends_with("docker.service.d")) {
                let _ = std::fs::remove_dir(dir);
            }
            Ok(())
        }
        Step::DaemonReload => sd.reload().await,
        Step::EnableSocket => sd.enable(SOCKET_UNIT).await,
        Step::DisableSocket => sd.disable(SOCKET_UNIT).await,
        Step::ReloadDocker => sd.job(JobKind::Reload, DOCKER_SERVICE).await,
        Step::Commit => Ok(()),
        Step::CheckContainers => {
            let i = cx
                .daemon
                .info()
                .await
                .context("dockerd does not answer /info, so whether a restart kills containers is unknown; not restarting it")?;
            if i.containers_running > 0 && !i.live_restore {
                bail!(
                    "{} container(s) run now and live-restore is off: a restart would kill them; not restarting \
                     {DOCKER_SERVICE} (run apply again once they are stopped, or enable live-restore)",
                    i.containers_running
                );
            }
            Ok(())
        }
        Step::StopDocker => sd.job(JobKind::Stop, DOCKER_SERVICE).await,
        // A socket the guard kept closed may have hit its start limit meanwhile.
        Step::StartSocket => {
            let _ = sd.reset_failed(SOCKET_UNIT).await;
            sd.job(JobKind::Start, SOCKET_UNIT).await
        }
        Step::RestartSocket => {
            let _ = sd.reset_failed(SOCKET_UNIT).await;
            sd.job(JobKind::Restart, SOCKET_UNIT).await
        }
        Step::StopSocket => sd.job(JobKind::Stop, SOCKET_UNIT).await,
        Step::WaitLiveRestore => {
            let deadline = Instant::now() + LIVE_RESTORE_TIMEOUT;
            loop {
                if cx.daemon.info().await.is_ok_and(|i| i.live_restore) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!("dockerd did not switch live-restore on after SIGHUP; not restarting it");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Step::StartDocker => start_docker(sd, JobKind::Start).await,
        Step::RestartDocker => start_docker(sd, JobKind::Restart).await,
        Step::VerifyTls => verify_tls(sd, cx.probe, &cx.wanted, VERIFY_TIMEOUT).await,
        Step::VerifyClosed => {
            wait_active(sd, VERIFY_TIMEOUT).await?;
            let addr = cx.probe.addr();
            let connect = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
                bail!("{addr} still accepts connections after deconfigure");
            }
            Ok(())
        }
    }
}

/// Starts or restarts docker.service, first resetting its start-rate counter: when the stock
/// `StartLimitBurst=3` trips, systemd fails docker-tcp.socket too (`service-start-limit-hit`)
/// and closes the port, refusing clients. Our restarts are deliberate, one per run and
/// verified, so they must not count against a limit meant for crash loops (a dockerd that
/// crashes by itself still trips it). If the limit trips anyway, reset and try once more.
async fn start_docker<S: Systemd>(sd: &S, kind: JobKind) -> Result<()> {
    let _ = sd.reset_failed(DOCKER_SERVICE).await;
    match sd.job(kind, DOCKER_SERVICE).await {
        Err(e)
            if sd
                .unit(DOCKER_SERVICE)
                .await
                .is_ok_and(|u| u.result == "start-limit-hit") =>
        {
            warn!(
                "{DOCKER_SERVICE} hit its start limit ({e:#}); resetting it and trying once more"
            );
            sd.reset_failed(DOCKER_SERVICE).await?;
            let _ = sd.reset_failed(SOCKET_UNIT).await;
            sd.job(kind, DOCKER_SERVICE).await
        }
        r => r,
    }
}

/// Waits until docker.service is active; fails early if it failed.
pub async fn wait_active<S: Systemd>(sd: &S, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let u = sd.unit(DOCKER_SERVICE).await?;
        match u.active_state.as_str() {
            "active" => return Ok(()),
            "failed" => bail!(
                "{DOCKER_SERVICE} failed (result '{}'; see `journalctl -u docker`)",
                u.result
            ),
            "inactive" => bail!("{DOCKER_SERVICE} is not running"),
            _ if Instant::now() >= deadline => {
                bail!(
                    "{DOCKER_SERVICE} still '{}' after {}s",
                    u.active_state,
                    timeout.as_secs()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Docker active, then a mutual-TLS `/_ping` served with the certificate whose hash is `wanted`.
pub async fn verify_tls<S: Systemd, P: Prober>(
    sd: &S,
    probe: &P,
    wanted: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    wait_active(sd, timeout).await?;
    let mut last = anyhow!("no attempt");
    while Instant::now() < deadline {
        match probe.probe().await {
            Ok(fp) if fp == wanted => {
                info!(addr = %probe.addr(), "verified: Docker serves the current certificate over mutual TLS");
                return Ok(());
            }
            Ok(fp) => last = anyhow!("Docker serves certificate sha256 {fp}, not the new {wanted}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last.context(format!(
        "Docker does not serve mutual TLS on {} as expected",
        probe.addr()
    )))
}

async fn rollback<S: Systemd, P: Prober, D: DockerDaemon>(
    snapshots: &[Snapshot],
    socket_before: &crate::systemd::UnitInfo,
    docker_touched: bool,
    cx: &ExecContext<'_, S, P, D>,
) -> Result<()> {
    let sd = cx.systemd;
    // A socket this run opened is closed, and Docker stopped (which cancels a pending
    // automatic restart), before daemon.json loses its TLS keys: no dockerd may start in
    // between with the port and without them.
    if docker_touched && !socket_before.is_active() {
        let _ = sd.job(JobKind::Stop, DOCKER_SERVICE).await;
        let _ = sd.job(JobKind::Stop, SOCKET_UNIT).await;
    }
    // Every file back, best effort: one that cannot be restored does not stop the others.
    let mut failed = Vec::new();
    for s in snapshots {
        if let Err(e) = s.restore() {
            error!("rollback: {e:#}");
            failed.push(s.path.display().to_string());
        }
    }
    // The socket's enablement as it was (a failed deconfigure had disabled it).
    if socket_before.unit_file_state == "enabled" {
        if let Err(e) = sd.enable(SOCKET_UNIT).await {
            error!("rollback: cannot enable {SOCKET_UNIT} again: {e:#}");
        }
    } else {
        let _ = sd.disable(SOCKET_UNIT).await;
    }
    if let Err(e) = sd.reload().await {
        error!("rollback: systemd reload failed: {e:#}");
        failed.push("(systemd reload)".to_string());
    }
    if docker_touched {
        let _ = sd.reset_failed(DOCKER_SERVICE).await;
        let _ = sd.reset_failed(SOCKET_UNIT).await;
        if !socket_before.is_active() {
            let _ = sd.job(JobKind::Stop, SOCKET_UNIT).await;
        }
        let docker = sd.unit(DOCKER_SERVICE).await?;
        if docker.is_active() {
            sd.job(JobKind::Restart, DOCKER_SERVICE).await?;
        } else {
            sd.job(JobKind::Start, DOCKER_SERVICE).await?;
        }
        match &cx.previous_served {
            // Docker served TLS before: it must serve the restored certificate again.
            Some(fp) => verify_tls(sd, cx.probe, fp, VERIFY_TIMEOUT).await?,
            None => wait_active(sd, VERIFY_TIMEOUT).await?,
        }
    }
    if !failed.is_empty() {
        bail!("could not restore {}", failed.join(", "));
    }
    warn!(
        "rolled back: previous files restored{}",
        if docker_touched {
            ", Docker running"
        } else {
            "; Docker was not touched"
        }
    );
    Ok(())
}

/// The address the probe connects to for the first `[docker] listen` entry.
pub fn probe_addr(spec: &str, port: u16) -> SocketAddr {
    match spec.parse::<SocketAddr>() {
        Ok(a) if !a.ip().is_unspecified() => a,
        _ => SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::daemon::fake::FixedDaemon;
    use crate::docker::plan::{Observed, plan_configure};
    use crate::docker::validate::fake::FakeValidator;
    use crate::systemd::UnitInfo;
    use crate::systemd::fake::Recorder;

    struct FakeProbe(String);
    impl Prober for FakeProbe {
        fn addr(&self) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], 9)) // discard port: nothing listens
        }
        async fn probe(&self) -> Result<String> {
            Ok(self.0.clone())
        }
    }

    fn setup() -> (
        tempfile::TempDir,
        crate::config::Settings,
        Observed,
        Recorder,
    ) {
        let d = tempfile::tempdir().unwrap();
        let s = crate::config::parse(
            &format!(
                "[paths]\nstate_dir = \"{0}/s\"\ncert_dir = \"{0}/c\"\nsystemd_dir = \"{0}/u\"\ndaemon_json = \"{0}/daemon.json\"\n",
                d.path().display()
            ),
            Path::new("/t.toml"),
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("s")).unwrap();
        std::fs::write(d.path().join("daemon.json"), "{\"debug\": true}").unwrap();
        let docker = UnitInfo {
            load_state: "loaded".into(),
            active_state: "active".into(),
            exec_start: vec![vec![
                "/usr/sbin/dockerd".into(),
                "-H".into(),
                "fd://".into(),
            ]],
            ..UnitInfo::default()
        };
        let obs = Observed {
            daemon_json_path: d.path().join("daemon.json"),
            daemon_json: Some("{\"debug\": true}".into()),
            docker: docker.clone(),
            daemon: Some(Default::default()),
            wanted: "fp".into(),
            guard_binary: "/usr/bin/docker-tls-manager".into(),
            ..Observed::default()
        };
        let sd = Recorder::default().with_unit(DOCKER_SERVICE, docker);
        (d, s, obs, sd)
    }

    fn live_restore_on() -> crate::docker::daemon::DaemonInfo {
        crate::docker::daemon::DaemonInfo {
            live_restore: true,
            ..Default::default()
        }
    }

    /// Runs a plan against the fakes; the probe sees the wanted certificate "fp".
    async fn run(plan: &DockerPlan, sd: &Recorder, daemon: &FixedDaemon, dir: &Path) -> Result<()> {
        run_validated(plan, sd, daemon, dir, None).await
    }

    /// `run`, with `dockerd --validate` answered by `validator` (the current daemon.json is
    /// read from `dir`).
    async fn run_validated(
        plan: &DockerPlan,
        sd: &Recorder,
        daemon: &FixedDaemon,
        dir: &Path,
        validator: Option<&FakeValidator>,
    ) -> Result<()> {
        let probe = FakeProbe("fp".into());
        let cx = ExecContext {
            systemd: sd,
            probe: &probe,
            daemon,
            wanted: "fp".into(),
            previous_served: None,
            backups: Backups {
                dir: dir.join("b"),
                retention: crate::config::parse("", Path::new("t.toml"))
                    .unwrap()
                    .backup,
            },
            also_restore: vec![],
            validate: validator.map(|v| Check {
                validator: v,
                path: dir.join("daemon.json"),
                current: std::fs::read_to_string(dir.join("daemon.json")).ok(),
            }),
        };
        execute(plan, &cx).await
    }

    #[tokio::test]
    async fn fresh_host_calls_systemd_in_order() {
        let (d, s, obs, sd) = setup();
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(Some(live_restore_on()));
        run(&plan, &sd, &daemon, d.path()).await.unwrap();
        assert_eq!(
            sd.calls(),
            [
                "reload docker.service",
                "enable docker-tcp.socket",
                "reload",
                "stop docker.service",
                "reset-failed docker-tcp.socket",
                "start docker-tcp.socket",
                "reset-failed docker.service",
                "start docker.service"
            ]
        );
        assert!(s.paths.socket_unit().is_file());
        assert!(
            s.paths
                .systemd_dir
                .join("docker.service.d/docker-tls-manager.conf")
                .is_file()
        );
        let dj = std::fs::read_to_string(d.path().join("daemon.json")).unwrap();
        assert!(
            dj.contains("\"debug\": true") && dj.contains("tlsverify"),
            "{dj}"
        );
        // The user's original is in the backup directory.
        let mut found = false;
        let mut stack = vec![d.path().join("b")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else if e.file_name() == "daemon.json" {
                    found |= std::fs::read_to_string(e.path()).unwrap() == "{\"debug\": true}";
                }
            }
        }
        assert!(
            found,
            "the original daemon.json is not in the backup directory"
        );
    }

    /// Port 2376 taken by another program: the socket fails after Docker was stopped with
    /// live-restore on. The rollback restores everything but live-restore: a dockerd started
    /// without it would kill the containers that survived the stop.
    #[tokio::test]
    async fn failed_socket_start_rolls_everything_back_and_starts_docker() {
        let (d, s, obs, sd) = setup();
        sd.failing
            .borrow_mut()
            .push("start docker-tcp.socket".into());
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(Some(live_restore_on()));
        let e = format!(
            "{:#}",
            run(&plan, &sd, &daemon, d.path()).await.unwrap_err()
        );
        assert!(
            e.contains("start docker-tcp.socket") && e.contains("restored"),
            "{e}"
        );
        let calls = sd.calls();
        let after = &calls[calls
            .iter()
            .position(|c| c == "start docker-tcp.socket")
            .unwrap()
            + 1..];
        assert_eq!(
            after,
            [
                // Docker and the new socket stopped before any file is put back.
                "stop docker.service",
                "stop docker-tcp.socket",
                "disable docker-tcp.socket",
                "reload",
                "reset-failed docker.service",
                "reset-failed docker-tcp.socket",
                "stop docker-tcp.socket",
                "start docker.service"
            ]
        );
        assert!(!s.paths.socket_unit().exists());
        assert!(
            !s.paths
                .systemd_dir
                .join("docker.service.d/docker-tls-manager.conf")
                .exists()
        );
        let dj: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("daemon.json")).unwrap())
                .unwrap();
        assert_eq!(
            dj,
            serde_json::json!({"debug": true, "live-restore": true}),
            "live-restore must survive the rollback, the TLS keys must not"
        );
        // deconfigure still knows live-restore was ours.
        let owned = std::fs::read_to_string(s.paths.docker_owned()).unwrap();
        assert!(owned.contains("live-restore"), "{owned}");
    }

    /// dockerd never switches live-restore on after SIGHUP: nothing restarts Docker, and the
    /// rollback leaves it running untouched.
    #[tokio::test]
    async fn live_restore_that_never_comes_on_stops_before_any_restart() {
        let (d, s, obs, sd) = setup();
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(Some(Default::default()));
        let e = format!(
            "{:#}",
            run(&plan, &sd, &daemon, d.path()).await.unwrap_err()
        );
        assert!(e.contains("live-restore"), "{e}");
        assert!(
            !sd.calls()
                .iter()
                .any(|c| c.contains("start") || c.contains("stop")),
            "{:?}",
            sd.calls()
        );
        assert!(!s.paths.socket_unit().exists());
    }

    /// daemon.json as config management leaves it: a link into daemon.d, mode 0640, group 4.
    fn link_daemon_json(d: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(d.join("daemon.d")).unwrap();
        let target = d.join("daemon.d/main.json");
        std::fs::rename(d.join("daemon.json"), &target).unwrap();
        std::os::unix::fs::symlink("daemon.d/main.json", d.join("daemon.json")).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&target, Some(0), Some(4)).unwrap();
        }
        target
    }

    fn assert_link_kept(d: &Path, target: &Path) {
        use std::os::unix::fs::MetadataExt;
        let link = d.join("daemon.json");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "daemon.json was replaced by a plain file"
        );
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("daemon.d/main.json")
        );
        let m = std::fs::metadata(target).unwrap();
        assert_eq!(crate::files::mode_of(target), Some(0o640));
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!((m.uid(), m.gid()), (0, 4));
        }
    }

    #[tokio::test]
    async fn writing_daemon_json_keeps_its_link_mode_and_owner() {
        let (d, s, obs, sd) = setup();
        let target = link_daemon_json(d.path());
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(Some(live_restore_on()));
        run(&plan, &sd, &daemon, d.path()).await.unwrap();
        assert_link_kept(d.path(), &target);
        let dj = std::fs::read_to_string(&target).unwrap();
        assert!(
            dj.contains("\"debug\": true") && dj.contains("tlsverify"),
            "{dj}"
        );
    }

    #[tokio::test]
    async fn rollback_of_daemon_json_keeps_its_link_mode_and_owner() {
        let (d, s, obs, sd) = setup();
        let target = link_daemon_json(d.path());
        sd.failing
            .borrow_mut()
            .push("start docker-tcp.socket".into());
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(Some(live_restore_on()));
        assert!(run(&plan, &sd, &daemon, d.path()).await.is_err());
        assert_link_kept(d.path(), &target);
        // Back as before the TLS keys, live-restore kept (see the test above).
        let dj: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
        assert_eq!(dj, serde_json::json!({"debug": true, "live-restore": true}));
    }

    /// A container started after the plan was made, with live-restore off: nothing restarts
    /// Docker, not even the rollback.
    #[tokio::test]
    async fn a_container_started_since_planning_is_never_killed() {
        let (d, s, mut obs, sd) = setup();
        obs.daemon = Some(live_restore_on());
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(Some(crate::docker::daemon::DaemonInfo {
            containers_running: 1,
            ..Default::default()
        }));
        let e = format!(
            "{:#}",
            run(&plan, &sd, &daemon, d.path()).await.unwrap_err()
        );
        assert!(e.contains("would kill"), "{e}");
        assert!(
            !sd.calls()
                .iter()
                .any(|c| c.contains("docker.service") && !c.starts_with("reload")),
            "{:?}",
            sd.calls()
        );
    }

    #[tokio::test]
    async fn a_failure_before_any_docker_job_leaves_docker_alone() {
        let (d, s, mut obs, sd) = setup();
        // Deferred-free plan that fails at `enable`, before Docker is touched.
        obs.daemon = Some(crate::docker::daemon::DaemonInfo {
            live_restore: true,
            containers_running: 2,
            ..Default::default()
        });
        sd.failing
            .borrow_mut()
            .push("enable docker-tcp.socket".into());
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(obs.daemon.clone());
        let e = format!(
            "{:#}",
            run(&plan, &sd, &daemon, d.path()).await.unwrap_err()
        );
        assert!(e.contains("restored") && !e.contains("is running"), "{e}");
        assert!(
            !sd.calls().iter().any(|c| c.ends_with("docker.service")),
            "Docker touched: {:?}",
            sd.calls()
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("daemon.json")).unwrap(),
            "{\"debug\": true}"
        );
    }

    /// A key only dockerd knows is wrong, in the user's daemon.json: refused with dockerd's
    /// message as the admin's to fix (exit 2), before any file is written or Docker touched.
    #[tokio::test]
    async fn a_daemon_json_dockerd_refuses_stops_the_run_before_anything_changes() {
        let (d, s, mut obs, sd) = setup();
        let broken = "{\"debug\": true, \"bogus-key\": 1}";
        std::fs::write(d.path().join("daemon.json"), broken).unwrap();
        obs.daemon_json = Some(broken.into());
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(Some(live_restore_on()));
        let v = FakeValidator {
            refuse_if: Some((
                "bogus-key".into(),
                "the following directives don't match any configuration option: bogus-key".into(),
            )),
            ..Default::default()
        };
        let e = run_validated(&plan, &sd, &daemon, d.path(), Some(&v))
            .await
            .unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2, "{e:#}");
        let e = format!("{e:#}");
        assert!(
            e.contains("don't match any configuration option: bogus-key")
                && e.contains("as it is now")
                && e.contains("not restarted"),
            "{e}"
        );
        assert!(
            !sd.calls().iter().any(|c| c.ends_with("docker.service")),
            "Docker touched: {:?}",
            sd.calls()
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("daemon.json")).unwrap(),
            broken
        );
        assert!(!s.paths.systemd_dir.join("docker-tcp.socket").exists());
        // Asked about what it would write and about the file as it is now.
        assert_eq!(v.asked.lock().unwrap().len(), 2);
    }

    /// dockerd cannot load the TLS material we would point it at: our failure (exit 1), not
    /// the admin's, and still nothing restarted.
    #[tokio::test]
    async fn tls_material_dockerd_refuses_is_our_failure_and_nothing_restarts() {
        let (d, s, obs, sd) = setup();
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(Some(live_restore_on()));
        let v = FakeValidator {
            refuse_if: Some((
                "tlskey".into(),
                "invalid TLS configuration: Could not load X509 key pair".into(),
            )),
            ..Default::default()
        };
        let e = run_validated(&plan, &sd, &daemon, d.path(), Some(&v))
            .await
            .unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 1, "{e:#}");
        assert!(format!("{e:#}").contains("would put in place"), "{e:#}");
        assert!(!sd.calls().iter().any(|c| c.ends_with("docker.service")));
        assert_eq!(
            std::fs::read_to_string(d.path().join("daemon.json")).unwrap(),
            "{\"debug\": true}"
        );
    }

    /// dockerd 20.10: no `--validate`; the plan runs, checked by its verification.
    #[tokio::test]
    async fn without_validate_the_plan_runs_as_before() {
        let (d, s, obs, sd) = setup();
        let plan = plan_configure(&obs, &s).unwrap();
        let daemon = FixedDaemon(Some(live_restore_on()));
        let v = FakeValidator {
            unavailable: true,
            ..Default::default()
        };
        run_validated(&plan, &sd, &daemon, d.path(), Some(&v))
            .await
            .unwrap();
        assert!(sd.calls().contains(&"start docker.service".to_string()));
    }

    #[tokio::test]
    async fn start_limit_never_closes_the_socket() {
        let (_d, _s, _obs, sd) = setup();
        sd.failing
            .borrow_mut()
            .push("restart docker.service".into());
        sd.units
            .borrow_mut()
            .get_mut(DOCKER_SERVICE)
            .unwrap()
            .result = "start-limit-hit".into();
        start_docker(&sd, JobKind::Restart).await.unwrap();
        // The counter is reset before the restart, so the limit never trips on ours.
        assert_eq!(
            sd.calls(),
            ["reset-failed docker.service", "restart docker.service"]
        );
        // Any other failure is reported, the limit left alone.
        let (_d, _s, _obs, sd) = setup();
        sd.failing
            .borrow_mut()
            .push("restart docker.service".into());
        assert!(start_docker(&sd, JobKind::Restart).await.is_err());
        assert_eq!(
            sd.calls(),
            ["reset-failed docker.service", "restart docker.service"]
        );
    }

    #[tokio::test]
    async fn wrong_certificate_served_fails_verification() {
        let (_d, _s, _obs, sd) = setup();
        let probe = FakeProbe("old".into());
        let e = verify_tls(&sd, &probe, "fp", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("not the new fp"), "{e:#}");
    }

    #[test]
    fn probe_addresses() {
        assert_eq!(probe_addr("2376", 2376), "127.0.0.1:2376".parse().unwrap());
        assert_eq!(
            probe_addr("0.0.0.0:2377", 2377),
            "127.0.0.1:2377".parse().unwrap()
        );
        assert_eq!(
            probe_addr("192.0.2.1:2376", 2376),
            "192.0.2.1:2376".parse().unwrap()
        );
    }
}
