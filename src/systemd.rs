//! systemd, through its D-Bus API (org.freedesktop.systemd1, zbus): reload, unit jobs waited
//! on race-free through `JobRemoved`, unit state, enabling unit files. [`Systemd`] is the narrow
//! interface the executor uses; [`Dbus`] is the real one and `fake::Recorder` the test double.

#![allow(async_fn_in_trait)]

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

/// How long one unit job may take before it counts as failed.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Start,
    Stop,
    Restart,
    /// `ReloadUnit`: for dockerd, SIGHUP (re-reads the reloadable part of daemon.json).
    Reload,
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Restart => "restart",
            JobKind::Reload => "reload",
        })
    }
}

/// A job that ended with another result than `done`.
#[derive(Debug, thiserror::Error)]
#[error("systemd could not {kind} {unit}: job result '{result}'{hint}")]
pub struct JobFailed {
    pub kind: JobKind,
    pub unit: String,
    pub result: String,
    pub hint: String,
}

/// What systemd knows about a unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitInfo {
    /// loaded, not-found, masked, ...
    pub load_state: String,
    /// active, inactive, failed, activating, deactivating, reloading
    pub active_state: String,
    pub sub_state: String,
    /// enabled, disabled, static, ... (empty if no unit file)
    pub unit_file_state: String,
    /// Main PID for services (0 if none).
    pub main_pid: u32,
    /// The argv of each effective ExecStart= line, for services.
    pub exec_start: Vec<Vec<String>>,
    /// The service's last result, e.g. success, exit-code, start-limit-hit.
    pub result: String,
    /// `Environment=` assignments (KEY=VALUE).
    pub environment: Vec<String>,
    /// `EnvironmentFile=` paths, and whether each may be missing (`-` prefix).
    pub environment_files: Vec<(String, bool)>,
}

impl UnitInfo {
    pub fn is_active(&self) -> bool {
        self.active_state == "active" || self.active_state == "reloading"
    }
}

/// The operations the manager needs from systemd.
pub trait Systemd {
    /// `daemon-reload`; returns when systemd has reloaded.
    async fn reload(&self) -> Result<()>;
    /// Queues a job (mode `replace`) and waits until it is removed; an error unless `done`.
    async fn job(&self, kind: JobKind, unit: &str) -> Result<()>;
    async fn reset_failed(&self, unit: &str) -> Result<()>;
    async fn unit(&self, unit: &str) -> Result<UnitInfo>;
    /// Enables a unit file (symlinks per its [Install] section).
    async fn enable(&self, unit: &str) -> Result<()>;
    async fn disable(&self, unit: &str) -> Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: zbus::zvariant::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn unit_file_state(&self) -> zbus::Result<String>;
}

type ExecCommand = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn exec_start(&self) -> zbus::Result<Vec<ExecCommand>>;
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn environment(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn environment_files(&self) -> zbus::Result<Vec<(String, bool)>>;
}

/// systemd on the system bus.
pub struct Dbus {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl Dbus {
    /// Connects to the system bus and subscribes to job signals.
    pub async fn connect() -> Result<Dbus> {
        let conn = zbus::Connection::system().await.context(
            "cannot connect to the D-Bus system bus (is this a systemd host with dbus running?)",
        )?;
        let manager = ManagerProxy::new(&conn).await?;
        manager
            .subscribe()
            .await
            .context("systemd Subscribe failed")?;
        Ok(Dbus { conn, manager })
    }
}

impl Systemd for Dbus {
    async fn reload(&self) -> Result<()> {
        tracing::info!("systemd: daemon-reload");
        self.manager
            .reload()
            .await
            .context("systemd daemon-reload failed")
    }

    async fn job(&self, kind: JobKind, unit: &str) -> Result<()> {
        tracing::info!(unit, "systemd: {kind}");
        // Race-free: listen for JobRemoved before the job exists, then match its path.
        let mut removed = self.manager.receive_job_removed().await?;
        let m = &self.manager;
        let job = match kind {
            JobKind::Start => m.start_unit(unit, "replace").await,
            JobKind::Stop => m.stop_unit(unit, "replace").await,
            JobKind::Restart => m.restart_unit(unit, "replace").await,
            JobKind::Reload => m.reload_unit(unit, "replace").await,
        }
        .with_context(|| format!("systemd refused to {kind} {unit}"))?;
        let result = tokio::time::timeout(JOB_TIMEOUT, async {
            while let Some(sig) = removed.next().await {
                let args = sig.args()?;
                if args.job().as_str() == job.as_str() {
                    return Ok::<String, zbus::Error>(args.result().to_string());
                }
            }
            Err(zbus::Error::Failure("the D-Bus connection closed".into()))
        })
        .await
        .map_err(|_| {
            anyhow!(
                "timed out after {}s waiting for systemd to {kind} {unit}",
                JOB_TIMEOUT.as_secs()
            )
        })??;
        if result == "done" {
            return Ok(());
        }
        let info = self.unit(unit).await.unwrap_or_default();
        let hint = if info.result == "start-limit-hit" {
            " (start limit hit: too many starts within the interval)".to_string()
        } else if !info.result.is_empty() && info.result != "success" {
            format!(
                " (unit result '{}'; see `journalctl -u {unit}`)",
                info.result
            )
        } else {
            format!(" (see `journalctl -u {unit}`)")
        };
        Err(JobFailed {
            kind,
            unit: unit.to_string(),
            result,
            hint,
        }
        .into())
    }

    async fn reset_failed(&self, unit: &str) -> Result<()> {
        self.manager
            .reset_failed_unit(unit)
            .await
            .with_context(|| format!("cannot reset-failed {unit}"))
    }

    async fn unit(&self, unit: &str) -> Result<UnitInfo> {
        let path = self
            .manager
            .load_unit(unit)
            .await
            .with_context(|| format!("cannot load unit {unit}"))?;
        let u = UnitProxy::builder(&self.conn)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let mut info = UnitInfo {
            load_state: u.load_state().await?,
            active_state: u.active_state().await?,
            sub_state: u.sub_state().await?,
            unit_file_state: u.unit_file_state().await.unwrap_or_default(),
            ..UnitInfo::default()
        };
        if unit.ends_with(".service") && info.load_state == "loaded" {
            let s = ServiceProxy::builder(&self.conn)
                .path(path)?
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            info.main_pid = s.main_pid().await?;
            info.exec_start = s.exec_start().await?.into_iter().map(|c| c.1).collect();
            info.result = s.result().await?;
            info.environment = s.environment().await.unwrap_or_default();
            info.environment_files = s.environment_files().await.unwrap_or_default();
        }
        Ok(info)
    }

    async fn enable(&self, unit: &str) -> Result<()> {
        tracing::info!(unit, "systemd: enable");
        self.manager
            .enable_unit_files(&[unit], false, true)
            .await
            .with_context(|| format!("cannot enable {unit}"))?;
        Ok(())
    }

    async fn disable(&self, unit: &str) -> Result<()> {
        tracing::info!(unit, "systemd: disable");
        self.manager
            .disable_unit_files(&[unit], false)
            .await
            .with_context(|| format!("cannot disable {unit}"))?;
        Ok(())
    }
}

#[cfg(test)]
pub mod fake {
    //! A recording fake of [`Systemd`]: logs every call, answers from a table.

    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<String>>,
        pub units: RefCell<BTreeMap<String, UnitInfo>>,
        /// Jobs ("start docker.service") that fail.
        pub failing: RefCell<Vec<String>>,
    }

    impl Recorder {
        pub fn with_unit(self, name: &str, info: UnitInfo) -> Self {
            self.units.borrow_mut().insert(name.to_string(), info);
            self
        }
        pub fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
        fn set_state(&self, unit: &str, state: &str) {
            let mut units = self.units.borrow_mut();
            let u = units.entry(unit.to_string()).or_default();
            u.active_state = state.to_string();
            if state == "active" {
                u.main_pid += 1000;
            }
        }
    }

    impl Systemd for Recorder {
        async fn reload(&self) -> Result<()> {
            self.calls.borrow_mut().push("reload".into());
            Ok(())
        }
        async fn job(&self, kind: JobKind, unit: &str) -> Result<()> {
            let call = format!("{kind} {unit}");
            self.calls.borrow_mut().push(call.clone());
            if self.failing.borrow().contains(&call) {
                self.set_state(unit, "failed");
                return Err(JobFailed {
                    kind,
                    unit: unit.into(),
                    result: "failed".into(),
                    hint: String::new(),
                }
                .into());
            }
            match kind {
                JobKind::Start | JobKind::Restart => self.set_state(unit, "active"),
                JobKind::Stop => self.set_state(unit, "inactive"),
                JobKind::Reload => {}
            }
            Ok(())
        }
        async fn reset_failed(&self, unit: &str) -> Result<()> {
            self.calls.borrow_mut().push(format!("reset-failed {unit}"));
            // Like systemd: resetting clears a tripped start limit.
            let limited = self
                .units
                .borrow()
                .get(unit)
                .is_some_and(|u| u.result == "start-limit-hit");
            if limited {
                self.failing.borrow_mut().retain(|c| !c.ends_with(unit));
                self.units.borrow_mut().get_mut(unit).unwrap().result = "success".into();
            }
            Ok(())
        }
        async fn unit(&self, unit: &str) -> Result<UnitInfo> {
            Ok(self.units.borrow().get(unit).cloned().unwrap_or_default())
        }
        async fn enable(&self, unit: &str) -> Result<()> {
            let call = format!("enable {unit}");
            self.calls.borrow_mut().push(call.clone());
            if self.failing.borrow().contains(&call) {
                anyhow::bail!("cannot enable {unit}: read-only file system");
            }
            self.units
                .borrow_mut()
                .entry(unit.to_string())
                .or_default()
                .unit_file_state = "enabled".into();
            Ok(())
        }
        async fn disable(&self, unit: &str) -> Result<()> {
            self.calls.borrow_mut().push(format!("disable {unit}"));
            Ok(())
        }
    }
}
