//! The local filesystem: the one atomic-write helper every write goes through, backups of
//! replaced files and their retention, directories with the right modes, and the lock on the
//! state directory.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::config::BackupSettings;
use crate::layout::Layout;

/// Prefix of temporary files; anything starting with it in our directories is a leftover.
pub const TEMP_PREFIX: &str = ".dtm-tmp-";

/// Outcome of [`write_if_changed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Unchanged,
    Written,
}

/// Writes `data` to `path` atomically with `mode`: a new temp file in the same directory
/// (random name, created exclusively, never through a symlink), mode set before any byte is
/// written, fsync, rename over `path`, fsync of the directory. The temp file is removed on
/// error, so `path` is either the old or the new content, never a mix. For our own files
/// (keys keep their 0600 whatever was there); a symlink at `path` is replaced.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_via_temp(path, data, mode, None)
        .with_context(|| format!("failed to write '{}'", path.display()))
}

/// [`atomic_write`] for a file that belongs to the user (daemon.json): a symlink at `path` is
/// followed to its final target, which is replaced in its own directory so the link stays;
/// an existing file keeps its mode and owner; a new one gets `default_mode`.
pub fn atomic_write_preserving(path: &Path, data: &[u8], default_mode: u32) -> Result<()> {
    let result = (|| -> Result<()> {
        let target = final_target(path)?;
        let (mode, owner) = match fs::metadata(&target) {
            Ok(m) => (m.permissions().mode() & 0o7777, Some((m.uid(), m.gid()))),
            Err(e) if e.kind() == ErrorKind::NotFound => (default_mode, None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect '{}'", target.display()));
            }
        };
        let r = write_via_temp(&target, data, mode, owner);
        if target != path {
            r.with_context(|| format!("it is a symlink to '{}'", target.display()))
        } else {
            r
        }
    })();
    result.with_context(|| format!("failed to write '{}'", path.display()))
}

/// The file that replacing `path` must replace: `path` itself, or the final target of the
/// symlink(s) at `path` (which need not exist yet).
fn final_target(path: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {}
        _ => return Ok(path.to_path_buf()),
    }
    match fs::canonicalize(path) {
        Ok(p) => return Ok(p),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot resolve symlink '{}'", path.display()));
        }
    }
    // A dangling link: follow it by hand to the missing file it names.
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = fs::read_link(&p)
                    .with_context(|| format!("cannot read symlink '{}'", p.display()))?;
                // `join` keeps an absolute `to` as it is.
                p = p.parent().unwrap_or(Path::new("/")).join(to);
            }
            _ => return Ok(p),
        }
    }
    bail!("too many levels of symlinks at '{}'", path.display())
}

/// The one write: temp file created exclusively beside `path`, owner (if given) then mode set
/// on its descriptor before any byte is written, fsync, rename, fsync of the directory.
fn write_via_temp(path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in '{}'", dir.display()))?;
    if let Some((uid, gid)) = owner {
        let m = tmp.as_file().metadata()?;
        // Only when it differs, so that a run without root can still write its own files.
        // Before the mode: chown clears setuid/setgid bits.
        if (m.uid(), m.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid))
                .with_context(|| format!("cannot give the temp file owner {uid}:{gid}"))?;
        }
    }
    // Exactly `mode`, whatever the umask.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(data).context("cannot write the temp file")?;
    tmp.as_file()
        .sync_all()
        .context("cannot fsync the temp file")?;
    // On error the NamedTempFile is dropped, which removes it.
    tmp.persist(path)
        .map_err(|e| e.error)
        .context("cannot rename the temp file into place")?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory '{}'", dir.display()))?;
    Ok(())
}

/// Writes only when the bytes differ (or the mode does); reports what it did.
pub fn write_if_changed(path: &Path, data: &[u8], mode: u32) -> Result<WriteOutcome> {
    if let Ok(old) = fs::read(path)
        && old == data
    {
        let cur = fs::metadata(path)?.permissions().mode() & 0o7777;
        if cur != mode {
            set_mode(path, mode)?;
        }
        return Ok(WriteOutcome::Unchanged);
    }
    atomic_write(path, data, mode)?;
    Ok(WriteOutcome::Written)
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {mode:o} '{}'", path.display()))
}

/// The permission bits of `path`, or `None` if it does not exist.
pub fn mode_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Creates `dir` (and parents) if missing and sets its mode.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if m.permissions().mode() & 0o7777 != mode {
                set_mode(dir, mode)?;
            }
            Ok(())
        }
        Ok(_) => bail!(
            "'{}' exists but is not a directory; move it away",
            dir.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory '{}'", dir.display()))?;
            set_mode(dir, mode)
        }
        Err(e) => Err(e).with_context(|| format!("cannot inspect '{}'", dir.display())),
    }
}

/// Where backups go (`state_dir/backup`) and how long they are kept.
#[derive(Clone, Debug)]
pub struct Backups {
    pub dir: PathBuf,
    pub retention: BackupSettings,
}

/// The directory name of the backups made at `now`, with a sequence number `seq` when that
/// second already holds a copy of the file: `2024-05-01T120000Z`, `2024-05-01T120000Z.1`
/// (RFC 3339 in UTC, seconds, without the colons).
fn stamp_name(now: SystemTime, seq: u32) -> String {
    let stamp = humantime::format_rfc3339_seconds(now)
        .to_string()
        .replace(':', "");
    if seq == 0 {
        stamp
    } else {
        format!("{stamp}.{seq}")
    }
}

/// What a backup directory's name encodes: (time, sequence number), or `None` if the name is
/// not one [`backup`] makes.
pub fn parse_stamp(name: &str) -> Option<(SystemTime, u32)> {
    let (stamp, seq) = match name.split_once('.') {
        Some((s, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (s, n.parse().ok()?)
        }
        Some(_) => return None,
        None => (name, 0),
    };
    let b = stamp.as_bytes();
    if b.len() != 18 || b[10] != b'T' || b[17] != b'Z' {
        return None;
    }
    let text = format!("{}:{}:{}Z", &stamp[..13], &stamp[13..15], &stamp[15..17]);
    let t = humantime::parse_rfc3339(&text).ok()?;
    Some((t, seq))
}

/// Which of one file's backups (the names of the directories holding a copy) to delete at
/// `now`: all but the `keep` newest, and those older than `keep_for`. The newest copy and any
/// name that is not a backup timestamp are always kept. Sorted by name.
pub fn backups_to_drop(
    names: &[String],
    now: SystemTime,
    retention: &BackupSettings,
) -> Vec<String> {
    let mut dated: Vec<((SystemTime, u32), &String)> = names
        .iter()
        .filter_map(|n| parse_stamp(n).map(|t| (t, n)))
        .collect();
    // Newest first.
    dated.sort_by_key(|d| std::cmp::Reverse(d.0));
    let keep = retention.keep.get() as usize;
    let mut drop: Vec<String> = dated
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, ((t, _), _))| {
            *i >= keep || now.duration_since(*t).unwrap_or_default() > retention.keep_for
        })
        .map(|(_, (_, n))| (*n).clone())
        .collect();
    drop.sort();
    drop
}

/// Copies `path` (if it exists) into `backups.dir/<timestamp>/<path without leading />` before
/// it is replaced or removed, keeping its mode; then removes the copies of `path` the retention
/// policy drops. Returns where the copy went.
pub fn backup(path: &Path, backups: &Backups, now: SystemTime) -> Result<Option<PathBuf>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read '{}' to back it up", path.display()));
        }
    };
    let mode = mode_of(path).unwrap_or(0o600);
    let rel = path.strip_prefix("/").unwrap_or(path);
    let root = &backups.dir;
    // A second backup of the same file within one second must not overwrite the first.
    let dest = (0..)
        .map(|seq| root.join(stamp_name(now, seq)).join(rel))
        .find(|d| fs::symlink_metadata(d).is_err())
        .expect("a free sequence number");
    let parent = dest.parent().expect("backup path has a parent");
    ensure_dir(root, 0o700)?;
    fs::create_dir_all(parent)
        .with_context(|| format!("cannot create backup directory '{}'", parent.display()))?;
    atomic_write(&dest, &data, mode)?;
    tracing::debug!(from = %path.display(), to = %dest.display(), "backed up");
    if let Err(e) = prune(rel, backups, now) {
        tracing::warn!("cannot remove old backups of '{}': {e:#}", path.display());
    }
    Ok(Some(dest))
}

/// Applies the retention policy to the copies of one file (`rel`, its path under each
/// timestamp directory), removing the directories it leaves empty.
fn prune(rel: &Path, backups: &Backups, now: SystemTime) -> Result<()> {
    let root = &backups.dir;
    let mut names = Vec::new();
    for e in fs::read_dir(root).with_context(|| format!("cannot list '{}'", root.display()))? {
        let e = e?;
        if let Ok(name) = e.file_name().into_string()
            && fs::symlink_metadata(e.path().join(rel)).is_ok()
        {
            names.push(name);
        }
    }
    for name in backups_to_drop(&names, now, &backups.retention) {
        let file = root.join(&name).join(rel);
        fs::remove_file(&file).with_context(|| format!("cannot remove '{}'", file.display()))?;
        tracing::info!(path = %file.display(), "removed an old backup");
        let mut dir = file.parent();
        while let Some(d) = dir.filter(|d| *d != root.as_path()) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
    Ok(())
}

/// The state lock is held by another invocation (a caller may retry soon).
#[derive(Debug, thiserror::Error)]
#[error(
    "another docker-tls-manager holds the lock '{}' (the service, or another command); try again when it has finished",
    .0.display()
)]
pub struct LockBusy(pub PathBuf);

/// An exclusive `flock` on `state_dir/lock`, held until dropped, so that the CLI and the
/// service never interleave their writes.
pub struct StateLock {
    _file: File,
}

impl StateLock {
    fn open(layout: &Layout) -> Result<(File, PathBuf)> {
        ensure_dir(&layout.state_dir, 0o700)?;
        let path = layout.lock();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open lock file '{}'", path.display()))?;
        Ok((file, path))
    }

    /// One attempt: `Ok(None)` if another process holds it.
    fn try_lock(file: &File, path: &Path) -> Result<bool> {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != ErrorKind::WouldBlock {
            return Err(err).with_context(|| format!("cannot lock '{}'", path.display()));
        }
        Ok(false)
    }

    /// Waits up to `wait` for the lock (`Layout::lock`) without blocking the runtime.
    pub async fn acquire(layout: &Layout, wait: Duration) -> Result<StateLock> {
        let (file, path) = Self::open(layout)?;
        let deadline = Instant::now() + wait;
        while !Self::try_lock(&file, &path)? {
            if Instant::now() >= deadline {
                return Err(LockBusy(path).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key.pem");
        atomic_write(&p, b"secret", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        assert_eq!(mode_of(&p), Some(0o600));
        atomic_write(&p, b"new", 0o644).unwrap();
        assert_eq!(mode_of(&p), Some(0o644));
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failed_write_keeps_old_content_and_removes_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub");
        fs::create_dir(&p).unwrap(); // renaming a file over a directory fails
        assert!(atomic_write(&p, b"x", 0o644).is_err());
        assert!(p.is_dir());
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn atomic_write_never_follows_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        // Whatever temp name an attacker guesses, a planted link is not written through.
        for i in 0..50 {
            std::os::unix::fs::symlink(&victim, d.path().join(format!("{TEMP_PREFIX}{i}")))
                .unwrap();
        }
        atomic_write(&d.path().join("out"), b"secret key", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(d.path().join("out")).unwrap(), b"secret key");
    }

    #[test]
    fn preserving_write_keeps_a_symlink_and_updates_its_target() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("daemon.d")).unwrap();
        let target = d.path().join("daemon.d/main.json");
        fs::write(&target, b"{}").unwrap();
        let link = d.path().join("daemon.json");
        std::os::unix::fs::symlink("daemon.d/main.json", &link).unwrap();
        atomic_write_preserving(&link, b"{\"a\": 1}", 0o644).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("daemon.d/main.json")
        );
        assert_eq!(fs::read(&target).unwrap(), b"{\"a\": 1}");
        // The temp file was made beside the target, and is gone.
        for dir in [d.path(), &d.path().join("daemon.d")] {
            for e in fs::read_dir(dir).unwrap() {
                let name = e.unwrap().file_name();
                assert!(!name.to_string_lossy().starts_with(TEMP_PREFIX), "{name:?}");
            }
        }
        // A chain of links, and a dangling link: the final target is written, the links stay.
        let link2 = d.path().join("link2");
        std::os::unix::fs::symlink(&link, &link2).unwrap();
        atomic_write_preserving(&link2, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert!(
            fs::symlink_metadata(&link2)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink("daemon.d/new.json", &dangling).unwrap();
        atomic_write_preserving(&dangling, b"new", 0o640).unwrap();
        assert!(
            fs::symlink_metadata(&dangling)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read(d.path().join("daemon.d/new.json")).unwrap(),
            b"new"
        );
        assert_eq!(mode_of(&d.path().join("daemon.d/new.json")), Some(0o640));
    }

    #[test]
    fn preserving_write_keeps_mode_and_owner() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("daemon.json");
        fs::write(&p, b"old").unwrap();
        set_mode(&p, 0o640).unwrap();
        // uid 0 gid 4 (adm on Debian) when run as root; otherwise our own ids.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let (uid, gid) = if unsafe { libc::geteuid() } == 0 {
            (0, 4)
        } else {
            let m = fs::metadata(&p).unwrap();
            (m.uid(), m.gid())
        };
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        atomic_write_preserving(&p, b"new", 0o644).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!((m.uid(), m.gid()), (uid, gid));
        // A new file gets the default mode.
        let q = d.path().join("fresh.json");
        atomic_write_preserving(&q, b"x", 0o644).unwrap();
        assert_eq!(mode_of(&q), Some(0o644));
        // Keys keep their forced mode with the plain helper.
        atomic_write(&p, b"key", 0o600).unwrap();
        assert_eq!(mode_of(&p), Some(0o600));
    }

    #[test]
    fn preserving_write_never_follows_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        for i in 0..50 {
            std::os::unix::fs::symlink(&victim, d.path().join(format!("{TEMP_PREFIX}{i}")))
                .unwrap();
        }
        let out = d.path().join("out");
        fs::write(&out, b"old").unwrap();
        atomic_write_preserving(&out, b"new", 0o644).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&out).unwrap(), b"new");
    }

    #[test]
    fn write_if_changed_reports_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        assert_eq!(
            write_if_changed(&p, b"a", 0o644).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(
            write_if_changed(&p, b"a", 0o644).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(
            write_if_changed(&p, b"b", 0o644).unwrap(),
            WriteOutcome::Written
        );
    }

    #[test]
    fn backup_copies_with_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        atomic_write(&p, b"old", 0o600).unwrap();
        let dest = backup(&p, &backups(d.path(), 5, "90d"), SystemTime::UNIX_EPOCH)
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_eq!(mode_of(&dest), Some(0o600));
        assert!(
            backup(
                &d.path().join("missing"),
                &backups(d.path(), 5, "90d"),
                SystemTime::UNIX_EPOCH
            )
            .unwrap()
            .is_none()
        );
    }

    fn backups(dir: &Path, keep: u32, keep_for: &str) -> Backups {
        Backups {
            dir: dir.join("backup"),
            retention: BackupSettings {
                keep: keep.try_into().unwrap(),
                keep_for: humantime::parse_duration(keep_for).unwrap(),
            },
        }
    }

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn stamp_names_round_trip() {
        let t = at("2024-05-01T12:34:56Z");
        assert_eq!(stamp_name(t, 0), "2024-05-01T123456Z");
        assert_eq!(parse_stamp("2024-05-01T123456Z"), Some((t, 0)));
        assert_eq!(parse_stamp("2024-05-01T123456Z.12"), Some((t, 12)));
        for bad in [
            "lost+found",
            "2024-05-01T123456",
            "2024-05-01T12:34:56Z",
            "2024-05-01T123456Z.",
            "2024-05-01T123456Z.x",
            "2024-13-01T123456Z",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn retention_drops_beyond_keep_and_too_old_but_never_the_newest() {
        let r = |keep: u32, keep_for: &str| backups(Path::new("/"), keep, keep_for).retention;
        let names: Vec<String> = [
            "2024-01-01T000000Z",
            "2024-02-01T000000Z",
            "2024-03-01T000000Z",
            "2024-03-01T000000Z.1",
            "2024-04-01T000000Z",
            "not-a-backup",
        ]
        .map(String::from)
        .to_vec();
        let now = at("2024-04-02T00:00:00Z");
        // By count: the 3 newest stay (the .1 is newer than its second).
        assert_eq!(
            backups_to_drop(&names, now, &r(3, "10y")),
            ["2024-01-01T000000Z", "2024-02-01T000000Z"]
        );
        // By age: older than 40 days go.
        assert_eq!(
            backups_to_drop(&names, now, &r(10, "40d")),
            ["2024-01-01T000000Z", "2024-02-01T000000Z"]
        );
        assert_eq!(
            backups_to_drop(&names, now, &r(10, "5d")),
            [
                "2024-01-01T000000Z",
                "2024-02-01T000000Z",
                "2024-03-01T000000Z",
                "2024-03-01T000000Z.1"
            ]
        );
        // The newest stays however old, and with keep = 1 only it.
        let later = at("2030-01-01T00:00:00Z");
        let kept: Vec<_> = names
            .iter()
            .filter(|n| !backups_to_drop(&names, later, &r(1, "1d")).contains(n))
            .collect();
        assert_eq!(kept, ["2024-04-01T000000Z", "not-a-backup"]);
        // A copy from the future (clock set back) is not too old.
        assert!(backups_to_drop(&names, at("2023-01-01T00:00:00Z"), &r(10, "1d")).is_empty());
        assert!(backups_to_drop(&[], now, &r(1, "1d")).is_empty());
    }

    #[test]
    fn backup_keeps_at_most_keep_copies_per_file_and_prunes_empty_dirs() {
        let d = tempfile::tempdir().unwrap();
        let b = backups(d.path(), 2, "90d");
        let key = d.path().join("key.pem");
        let other = d.path().join("other.pem");
        fs::write(&other, b"other").unwrap();
        let t0 = at("2024-01-01T00:00:00Z");
        backup(&other, &b, t0).unwrap();
        for i in 0..4u64 {
            fs::write(&key, format!("key {i}")).unwrap();
            // Twice in the same second: neither copy is overwritten.
            backup(&key, &b, t0 + Duration::from_secs(i / 2)).unwrap();
        }
        let copies = |name: &str| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&b.dir)
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.path()
                        .join(d.path().strip_prefix("/").unwrap())
                        .join(name)
                        .exists()
                })
                .map(|e| {
                    fs::read_to_string(
                        e.path()
                            .join(d.path().strip_prefix("/").unwrap())
                            .join(name),
                    )
                    .unwrap()
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(copies("key.pem"), ["key 2", "key 3"]);
        // Another file's copy is its own: its newest stays.
        assert_eq!(copies("other.pem"), ["other"]);
        // Directories emptied by the pruning are gone: t0 (other.pem), t0+1s and t0+1s.1.
        assert_eq!(fs::read_dir(&b.dir).unwrap().count(), 3);
        // Too old: removed at the next backup of the file.
        fs::write(&key, "key 4").unwrap();
        backup(&key, &b, t0 + Duration::from_secs(91 * 86400)).unwrap();
        assert_eq!(copies("key.pem"), ["key 4"]);
    }

    #[tokio::test]
    async fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let lock = Layout {
            cert_dir: d.path().join("certs"),
            state_dir: d.path().join("state"),
            systemd_dir: d.path().join("units"),
            daemon_json: d.path().join("daemon.json"),
            acme_issuer_root: None,
        };
        let _a = StateLock::acquire(&lock, Duration::ZERO).await.unwrap();
        assert_eq!(
            fs::metadata(d.path().join("state"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // flock locks belong to the open file description: a second open conflicts.
        let e = StateLock::acquire(&lock, Duration::from_millis(150))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("holds the lock"), "{e}");
    }
}
