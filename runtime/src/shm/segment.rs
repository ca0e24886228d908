//! A named shared-memory segment: a file in `/dev/shm`, mapped, and held with a shared `flock`.
//!
//! Who holds a segment is decided by the kernel, not by messages: every process that holds it
//! keeps an open descriptor with a shared lock, and the kernel drops the lock when the process
//! dies, however it dies. Whoever can take the lock exclusively knows nobody else holds it.
//!
//! - Creating: an anonymous `O_TMPFILE` file is allocated (`posix_fallocate`, so a full tmpfs
//!   fails here), locked, and only then linked under its name: there is no moment in which the
//!   name exists unlocked, so a sweeper can never take a segment being born.
//! - Dropping the last holder: it converts its lock to exclusive (non-blocking) and, if that
//!   succeeds, unlinks the name. Of several holders dropping at once, the last always succeeds.
//! - A segment being handed over stays held by its sender until the receiver holds it too
//!   (see [`crate::shm::handover`]).

use crate::sys;
use memmap2::MmapRaw;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

/// Where segments live.
pub const SHM_DIR: &str = "/dev/shm";

/// The prefix of every segment name; a name received from a peer must have it.
pub const PREFIX: &str = "ensemble-";

/// Why a segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// `/dev/shm` has no room for the segment.
    #[error("/dev/shm has no room for a segment of {requested} bytes ({available} bytes free)")]
    NoSpace {
        /// Bytes asked for.
        requested: u64,
        /// Bytes free in `/dev/shm` when it failed.
        available: u64,
    },
    /// A name that is not an ensemble segment name.
    #[error("{0:?} is not an ensemble segment name")]
    BadName(String),
    /// The segment no longer exists (its last holder let go, e.g. its sender died before the
    /// hand-over completed).
    #[error("segment {0} no longer exists")]
    Gone(String),
    /// The segment is smaller than its handle says.
    #[error("segment {name} has {actual} bytes, the handle expects {expected}")]
    Size {
        /// The segment.
        name: String,
        /// Bytes the handle needs.
        expected: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// A handle's element type differs from the receiving type.
    #[error("segment {name} holds {sent}, received as {expected}")]
    ElementType {
        /// The segment.
        name: String,
        /// The element type the sender wrote.
        sent: String,
        /// The element type the receiver asked for.
        expected: String,
    },
    /// A segment handle was serialized or deserialized outside an ensemble message.
    #[error("segment handles travel only inside ensemble messages")]
    OutsideMessage,
    /// Another I/O error.
    #[error("shared memory: {0}")]
    Io(#[from] io::Error),
}

/// A mapped segment held by this process. Shared through `Arc`; the last drop in the last
/// process unlinks it. Users meet it only through the shared arrays and hand-over holds.
pub struct Segment {
    name: String,
    file: File,
    map: MmapRaw,
    len: usize,
    /// Tests model a process killed outright: its descriptors close, no cleanup code runs.
    #[cfg(test)]
    killed: std::sync::atomic::AtomicBool,
}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes.
    pub(crate) fn create(len: usize) -> Result<Arc<Segment>, SegmentError> {
        sweep_once();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .mode(0o600)
            .open(SHM_DIR)?;
        let bytes = len.max(1) as u64;
        sys::shm::allocate(&file, bytes).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EFBIG) => {
                SegmentError::NoSpace { requested: bytes, available: free_space().unwrap_or(0) }
            }
            _ => SegmentError::Io(e),
        })?;
        file.lock_shared()?;
        let name = format!("{PREFIX}{}", uuid::Uuid::new_v4().simple());
        sys::shm::link_anonymous(&file, &path_of(&name))?;
        let map = memmap2::MmapOptions::new().len(bytes as usize).map_raw(&file)?;
        Ok(Arc::new(Segment {
            name,
            file,
            map,
            len,
            #[cfg(test)]
            killed: Default::default(),
        }))
    }

    /// Opens and holds the segment `name`, which must have at least `len` bytes.
    pub(crate) fn open(name: &str, len: usize) -> Result<Arc<Segment>, SegmentError> {
        check_name(name)?;
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(path_of(name)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SegmentError::Gone(name.to_owned())),
            Err(e) => return Err(e.into()),
        };
        file.lock_shared()?;
        let actual = file.metadata()?.len();
        if actual < len as u64 {
            return Err(SegmentError::Size { name: name.to_owned(), expected: len as u64, actual });
        }
        let map = memmap2::MmapOptions::new().len(actual.max(1) as usize).map_raw(&file)?;
        Ok(Arc::new(Segment {
            name: name.to_owned(),
            file,
            map,
            len,
            #[cfg(test)]
            killed: Default::default(),
        }))
    }

    /// The segment's name in `/dev/shm`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The usable length in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn map(&self) -> &MmapRaw {
        &self.map
    }

    /// Makes the last drop behave like the death of the holding process: close, no unlink.
    #[cfg(test)]
    pub(crate) fn forget_on_drop(&self) {
        self.killed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.killed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // Succeeds only when no other process holds a shared lock: we are the last holder.
        if self.file.try_lock().is_ok() {
            unlink(&self.name);
        } else {
            // Another holder, usually. But a child being forked by another thread of this
            // process holds a copy of our descriptor until it execs: look again shortly.
            janitor::recheck(self.name.clone());
        }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("name", &self.name).field("len", &self.len).finish()
    }
}

/// Checks that `name` is an ensemble segment name: the prefix and 32 lowercase hex digits.
///
/// # Errors
/// [`SegmentError::BadName`] otherwise (this rejects paths, `..`, other programs' segments).
pub fn check_name(name: &str) -> Result<(), SegmentError> {
    let hex = name.strip_prefix(PREFIX).unwrap_or("");
    if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(SegmentError::BadName(name.to_owned()))
    }
}

fn unlink(name: &str) {
    if let Err(e) = std::fs::remove_file(path_of(name)) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("could not unlink segment {name}: {e}");
        }
    }
}

/// Removes `name` if nobody holds it. Never blocks.
pub(crate) fn remove_if_unheld(name: &str) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(path_of(name)) else {
        return false;
    };
    file.try_lock().is_ok() && std::fs::remove_file(path_of(name)).is_ok()
}

/// Looks again, a few times over some milliseconds, at segments whose last drop could not tell
/// whether it was the last holder.
mod janitor {
    use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    const LOOKS: [Duration; 4] = [
        Duration::from_millis(2),
        Duration::from_millis(10),
        Duration::from_millis(50),
        Duration::from_millis(250),
    ];

    pub(super) fn recheck(name: String) {
        static QUEUE: OnceLock<Mutex<Sender<String>>> = OnceLock::new();
        let queue = QUEUE.get_or_init(|| {
            let (tx, rx) = channel::<String>();
            let started = std::thread::Builder::new().name("ensemble-shm-janitor".into()).spawn(move || {
                let mut pending: Vec<(String, usize, Instant)> = Vec::new();
                loop {
                    let next = pending.iter().map(|p| p.2).min();
                    let wait = next
                        .map_or(Duration::from_secs(3600), |t| t.saturating_duration_since(Instant::now()));
                    match rx.recv_timeout(wait) {
                        Ok(name) => pending.push((name, 0, Instant::now() + LOOKS[0])),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let now = Instant::now();
                    pending.retain_mut(|(name, looks, at)| {
                        if *at > now {
                            return true;
                        }
                        if super::remove_if_unheld(name) || !super::path_of(name).exists() {
                            return false;
                        }
                        *looks += 1;
                        *at = now + LOOKS.get(*looks).copied().unwrap_or_default();
                        *looks < LOOKS.len()
                    });
                }
            });
            if let Err(e) = started {
                tracing::warn!("no shared-memory janitor: {e}");
            }
            Mutex::new(tx)
        });
        let _ = queue.lock().unwrap_or_else(|e| e.into_inner()).send(name);
    }
}

fn path_of(name: &str) -> PathBuf {
    Path::new(SHM_DIR).join(name)
}

fn free_space() -> Option<u64> {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail", SHM_DIR]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
}

/// The names of every ensemble segment in `/dev/shm` now, held or not, by any program.
///
/// # Errors
/// When `/dev/shm` cannot be listed.
pub fn segment_names() -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if check_name(&name).is_ok() {
            names.push(name);
        }
    }
    Ok(names)
}

/// How old a segment nobody holds must be before a sweep removes it. A segment whose sender
/// died right after sending it is held by nobody until its receiver maps it; the grace period
/// leaves the receiver that time.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// Removes the segments of ensemble programs that died without cleaning up: every segment file
/// no live process holds and that is at least [`ORPHAN_GRACE`] old. Never touches a segment a
/// live process holds. Returns the names removed.
///
/// Runs once by itself in every process before its first segment is created.
///
/// # Errors
/// When `/dev/shm` cannot be listed.
pub fn remove_orphans() -> io::Result<Vec<String>> {
    remove_orphans_older_than(ORPHAN_GRACE)
}

/// [`remove_orphans`] with another grace period; `Duration::ZERO` removes every unheld
/// segment at once (for a cleanup when no ensemble program runs).
///
/// # Errors
/// When `/dev/shm` cannot be listed.
pub fn remove_orphans_older_than(grace: Duration) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in segment_names()? {
        let modified = std::fs::metadata(path_of(&name)).and_then(|m| m.modified());
        let age = modified.ok().and_then(|t| t.elapsed().ok());
        if age.is_none_or(|age| age < grace) {
            continue;
        }
        if remove_if_unheld(&name) {
            tracing::info!("removed orphaned segment {name}");
            removed.push(name);
        }
    }
    Ok(removed)
}

fn sweep_once() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        if let Err(e) = remove_orphans() {
            tracing::warn!("could not sweep {SHM_DIR}: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_prefix_are_rejected() {
        for bad in [
            "",
            "ensemble-",
            "../etc/passwd",
            "ensemble-../../x",
            "psm_1234",
            "ensemble-0123456789abcdef0123456789ABCDEF",
        ] {
            assert!(matches!(check_name(bad), Err(SegmentError::BadName(_))), "{bad:?}");
        }
        check_name("ensemble-0123456789abcdef0123456789abcdef").unwrap();
    }

    #[test]
    fn a_created_segment_is_private_named_and_gone_after_the_last_drop() {
        let segment = Segment::create(10_000).unwrap();
        assert!(segment_names().unwrap().contains(&segment.name().to_owned()));
        let path = path_of(segment.name());
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(meta.len() >= 10_000);
        let second = Segment::open(segment.name(), 10_000).unwrap();
        drop(segment);
        assert!(path.exists(), "a second holder keeps it");
        drop(second);
        assert!(!path.exists(), "the last holder unlinks it");
    }

    #[test]
    fn opening_a_missing_or_short_segment_is_a_clear_error() {
        let missing = "ensemble-00000000000000000000000000000000";
        assert!(matches!(Segment::open(missing, 1), Err(SegmentError::Gone(_))));
        let segment = Segment::create(100).unwrap();
        assert!(matches!(Segment::open(segment.name(), 1 << 20), Err(SegmentError::Size { .. })));
    }

    #[test]
    fn a_segment_larger_than_dev_shm_fails_at_creation() {
        match Segment::create(1 << 50) {
            Err(SegmentError::NoSpace { requested, .. }) => assert_eq!(requested, 1 << 50),
            other => panic!("expected NoSpace, got {other:?}"),
        }
    }

    fn age(segment: &Segment) {
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        segment.file.set_modified(an_hour_ago).unwrap();
    }

    #[test]
    fn the_sweeper_takes_old_unheld_segments_and_never_a_held_one() {
        let held = Segment::create(64).unwrap();
        let orphan = Segment::create(64).unwrap();
        let young_orphan = Segment::create(64).unwrap();
        let (orphan_name, young_name) = (orphan.name().to_owned(), young_orphan.name().to_owned());
        age(&held);
        age(&orphan);
        orphan.forget_on_drop();
        young_orphan.forget_on_drop();
        drop((orphan, young_orphan));
        let removed = remove_orphans().unwrap();
        assert!(removed.contains(&orphan_name), "{removed:?}");
        assert!(!removed.contains(&held.name().to_owned()));
        assert!(path_of(held.name()).exists());
        assert!(path_of(&young_name).exists(), "a young orphan may still be in flight");
        assert!(remove_if_unheld(&young_name));
    }
}
