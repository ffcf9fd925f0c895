//! Watching: the files the manager owns or reads (inotify through `notify`, on directories,
//! since an atomic rename-over drops a watch on the old inode) and the host's addresses
//! (rtnetlink address notifications: no polling). Both only send [`Trigger`]s; the service
//! loop decides what to do.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;

use crate::layout::{DockerdInputs, Layout};

/// Why the service loop should look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A file we own or read changed (path).
    File(PathBuf),
    /// The configuration file changed, or SIGHUP.
    Config,
    /// The host gained or lost an address.
    Addresses,
}

/// What the watcher looks at: the file map, what dockerd reads (the daemon.json named by
/// `--config-file` in its ExecStart, its environment files: learned at each convergence), the
/// configuration file.
pub struct Targets<'a> {
    pub layout: &'a Layout,
    pub dockerd: &'a DockerdInputs,
    pub config: &'a Path,
}

impl Targets<'_> {
    /// Decides whether a changed path matters, and how.
    pub fn classify(&self, path: &Path) -> Option<Trigger> {
        if path == self.config {
            return Some(Trigger::Config);
        }
        self.layout
            .is_watched_file(self.dockerd, path)
            .then(|| Trigger::File(path.to_path_buf()))
    }

    /// The directories to watch (those that exist are watched; the rest once they appear).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.layout.watch_dirs(self.dockerd, self.config)
    }
}

/// inotify watches on directories, (re)added as directories appear or are recreated.
pub struct FileWatcher {
    watcher: notify::RecommendedWatcher,
    /// Watched directories and their inode (for the debug line "watching").
    watched: std::collections::BTreeMap<PathBuf, u64>,
    /// The directories of the last refresh.
    dirs: Vec<PathBuf>,
}

impl FileWatcher {
    /// Starts watching; changed paths arrive on `tx` (unfiltered: see [`classify`]).
    pub fn new(tx: UnboundedSender<PathBuf>) -> Result<FileWatcher> {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if matches!(ev.kind, EventKind::Access(_)) {
                    return;
                }
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        })
        .context("cannot start the file watcher (inotify)")?;
        Ok(FileWatcher {
            watcher,
            watched: Default::default(),
            dirs: vec![],
        })
    }

    /// Called with each changed path: a watched directory itself (removed, moved) is watched
    /// again at once if it is back. notify drops the watch of a removed directory by its path
    /// after handing us the event, and only then takes our new watch: a directory removed and
    /// recreated before notify read the removal (within one convergence) would otherwise lose
    /// the watch added for the new one until the next refresh.
    pub fn on_path(&mut self, path: &Path) {
        if self.watched.contains_key(path) {
            let dirs = std::mem::take(&mut self.dirs);
            self.refresh(&dirs);
        }
    }

    /// Watches every directory of `dirs` that exists and is not watched yet (or was recreated);
    /// forgets vanished ones.
    pub fn refresh(&mut self, dirs: &[PathBuf]) {
        use std::os::unix::fs::MetadataExt;
        self.dirs = dirs.to_vec();
        let inode = |d: &Path| {
            std::fs::metadata(d)
                .ok()
                .filter(|m| m.is_dir())
                .map(|m| m.ino())
        };
        self.watched.retain(|d, ino| inode(d) == Some(*ino));
        // Directories no longer on the list (daemon.json moved elsewhere): unwatched.
        let gone: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|d| !dirs.contains(d))
            .cloned()
            .collect();
        for d in gone {
            let _ = self.watcher.unwatch(&d);
            self.watched.remove(&d);
        }
        for d in dirs {
            let Some(ino) = inode(d) else { continue };
            // Added again even when the inode number is the one recorded: a directory removed
            // and recreated can get its number back (ext4 and overlayfs reuse them) while the
            // kernel dropped the old watch. On a directory still watched, inotify keeps its
            // watch (same descriptor, no window without one).
            match self.watcher.watch(d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    if self.watched.insert(d.clone(), ino) != Some(ino) {
                        tracing::debug!(dir = %d.display(), "watching");
                    }
                }
                Err(e) => tracing::warn!(dir = %d.display(), "cannot watch: {e}"),
            }
        }
    }
}

/// An rtnetlink socket subscribed to IPv4 and IPv6 address changes.
pub struct AddressWatcher {
    fd: AsyncFd<OwnedFd>,
}

impl AddressWatcher {
    pub fn new() -> Result<AddressWatcher> {
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            bail!(
                "cannot open a netlink socket: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: raw is a fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; fields set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            bail!(
                "cannot subscribe to address changes: {}",
                std::io::Error::last_os_error()
            );
        }
        // The fd is an OwnedFd we hold for the AsyncFd's whole life, which is all
        // `AsyncFd::new`'s deprecation note asks for.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(AddressWatcher { fd })
    }

    /// Waits for the next batch of address notifications (their content does not matter:
    /// the host's addresses are read afresh).
    pub async fn changed(&self) -> Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            let mut guard = self.fd.readable().await?;
            let got = guard.try_io(|fd| {
                // SAFETY: buf is valid for buf.len() bytes.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match got {
                Ok(Ok(_)) => {
                    // Drain whatever else is queued, then report once.
                    // SAFETY: as above, non-blocking.
                    while unsafe {
                        libc::recv(
                            self.fd.get_ref().as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                        )
                    } > 0
                    {}
                    return Ok(());
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_paths() {
        let s = crate::config::parse(
            "[paths]\ncert_dir = \"/c\"\nstate_dir = \"/s\"\nsystemd_dir = \"/u\"\ndaemon_json = \"/d/daemon.json\"",
            Path::new("/e/config.toml"),
        )
        .unwrap();
        let dockerd = DockerdInputs {
            daemon_json: "/etc/docker/other/daemon.json".into(),
            environment_files: vec![],
        };
        let t = Targets {
            layout: &s.paths,
            dockerd: &dockerd,
            config: Path::new("/e/config.toml"),
        };
        let f = |p: &str| t.classify(Path::new(p));
        assert_eq!(f("/e/config.toml"), Some(Trigger::Config));
        assert!(matches!(f("/c/server-key.pem"), Some(Trigger::File(_))));
        assert!(matches!(f("/s/ca-key.pem"), Some(Trigger::File(_))));
        assert!(matches!(
            f("/s/clients/admin/cert.pem"),
            Some(Trigger::File(_))
        ));
        assert!(matches!(f("/u/docker-tcp.socket"), Some(Trigger::File(_))));
        assert!(matches!(
            f("/u/docker.service.d/docker-tls-manager.conf"),
            Some(Trigger::File(_))
        ));
        assert!(matches!(f("/d/daemon.json"), Some(Trigger::File(_))));
        // The one dockerd really reads (`--config-file`), and its directory is watched.
        assert!(matches!(
            f("/etc/docker/other/daemon.json"),
            Some(Trigger::File(_))
        ));
        assert!(t.dirs().contains(&PathBuf::from("/etc/docker/other")));
        assert!(t.dirs().contains(&PathBuf::from("/u/docker.service.d")));
        assert!(t.dirs().contains(&PathBuf::from("/e")));
        assert_eq!(f("/s/lock"), None);
        assert_eq!(f("/s/backup/x/c/server-key.pem"), None);
        assert_eq!(f("/c/.dtm-tmp-12-server-key.pem"), None);
        assert_eq!(f("/u/other.service"), None);
        assert_eq!(f("/e/other.toml"), None);
    }

    /// Whether an event for `p` arrives within 5 s (other paths skipped).
    async fn event_for(rx: &mut tokio::sync::mpsc::UnboundedReceiver<PathBuf>, p: &Path) -> bool {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Ok(Some(path)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if path == p {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn file_watcher_sees_rename_over() {
        let d = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = FileWatcher::new(tx).unwrap();
        w.refresh(&[d.path().to_path_buf()]);
        let p = d.path().join("server-key.pem");
        crate::files::atomic_write(&p, b"a", 0o600).unwrap();
        crate::files::atomic_write(&p, b"b", 0o600).unwrap();
        let seen = event_for(&mut rx, &p).await;
        assert!(seen, "no event for the renamed-over file");
    }

    /// A directory removed and recreated with the same inode number (ext4 and overlayfs reuse
    /// them; forced here) is watched again: its old watch went with the old directory.
    #[tokio::test]
    async fn a_recreated_directory_is_watched_again_even_with_its_old_inode_number() {
        use std::os::unix::fs::MetadataExt;
        let base = tempfile::tempdir().unwrap();
        let d = base.path().join("tls");
        std::fs::create_dir(&d).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = FileWatcher::new(tx).unwrap();
        w.refresh(std::slice::from_ref(&d));
        std::fs::remove_dir(&d).unwrap();
        std::fs::create_dir(&d).unwrap();
        // Once the watcher saw the old directory go (its own path comes as an event), record
        // the new one's number as the old one's, as a reused number would.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Ok(Some(path)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if path == d {
                break;
            }
        }
        while rx.try_recv().is_ok() {}
        let ino = std::fs::metadata(&d).unwrap().ino();
        w.watched.insert(d.clone(), ino);
        w.refresh(std::slice::from_ref(&d));
        let p = d.join("server-key.pem");
        std::fs::write(&p, b"x").unwrap();
        let seen = event_for(&mut rx, &p).await;
        assert!(seen, "no event in the recreated directory");
    }

    /// Removed and recreated before the watcher read the removal (as within one convergence),
    /// then refreshed at once: notify drops the watch of the removed path when it reads the
    /// removal, the new one included; `on_path` (as the service's watcher task calls it with
    /// each path) adds it again.
    #[tokio::test]
    async fn a_directory_recreated_before_its_removal_is_read_stays_watched() {
        let base = tempfile::tempdir().unwrap();
        let d = base.path().join("tls");
        std::fs::create_dir(&d).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = FileWatcher::new(tx).unwrap();
        w.refresh(std::slice::from_ref(&d));
        std::fs::remove_dir(&d).unwrap();
        std::fs::create_dir(&d).unwrap();
        w.refresh(std::slice::from_ref(&d));
        let p = d.join("server-key.pem");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = false;
        let mut written = false;
        while !seen {
            let Ok(Some(path)) = tokio::time::timeout_at(
                if written {
                    deadline
                } else {
                    tokio::time::Instant::now() + std::time::Duration::from_millis(300)
                },
                rx.recv(),
            )
            .await
            else {
                if written {
                    break;
                }
                // The removal was read (and handled); now a file in the new directory.
                std::fs::write(&p, b"x").unwrap();
                written = true;
                continue;
            };
            w.on_path(&path);
            seen = path == p;
        }
        assert!(
            seen,
            "no event in the directory recreated before its removal was read"
        );
    }
}
