//! A segment: an anonymous memory file (memfd), sized and allocated at creation, sealed against
//! shrinking and growing, mapped, and never linked into any directory.
//!
//! Its lifetime is the kernel's business: the memory lives while any process holds a descriptor
//! of it or a mapping, including while a descriptor waits in a socket's queue, and goes when the
//! last holder lets go, however it exits. There is nothing to sweep, no name to guess, no file
//! to leave behind in `/dev/shm`.
//!
//! - Creating: the request is checked against the memory that can back it (`MemAvailable`, and
//!   the cgroup's `memory.max` where one is set), then allocated (`fallocate`), so that an
//!   oversized request fails here with [`SegmentError::NoMemory`] instead of ending in SIGBUS or
//!   the OOM killer at first write.
//! - Handing over: a handle travels as a descriptor attached to its frame; a receiver adopts it
//!   with [`Segment::adopt`], which checks the seals it relies on before mapping.
//! - Freezing: [`Segment::freeze`] seals the memfd with `F_SEAL_FUTURE_WRITE`: no new writable
//!   mapping and no `write` anywhere from then on, also through `/proc/PID/fd`. The freezing
//!   process keeps the mapping it wrote through (its `SharedSliceMut` is gone, so safe code can
//!   only read it), which makes freezing one system call at any size: a new read-only mapping
//!   would leave the old one to unmap, and unmapping written pages costs about 35 ms per GiB
//!   (a 1 GiB hand-over took 97 ms that way, 0.3 ms this way). `F_SEAL_WRITE`, which the
//!   kernel grants only once no writable mapping is left anywhere, is not used: receivers rely
//!   on the future-write seal.
//! - Names: the memfd is named `ensemble:<process name>`, which `/proc/PID/fd` and
//!   `/proc/PID/maps` show (`memfd:ensemble:worker-1 (deleted)`), so people can see who holds
//!   what.

use crate::sys;
use memmap2::MmapRaw;
use rustix::fs::SealFlags;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, OnceLock};

/// Why a segment could not be created, adopted or frozen.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The memory that can back the segment (the machine's, or the cgroup's) is smaller than
    /// the request.
    #[error("a segment of {requested} bytes does not fit in the memory that can back it ({available} bytes available)")]
    NoMemory {
        /// Bytes asked for.
        requested: u64,
        /// Bytes available when it failed.
        available: u64,
    },
    /// A handle arrived without the descriptor it needs: handles cannot be made from bytes.
    #[error("a segment handle arrived without its descriptor (handles cannot be made from bytes)")]
    MissingDescriptor,
    /// The descriptor is not a memfd with the seals its use needs.
    #[error("the segment's descriptor is not {needed} (its seals are {seals:#x})")]
    Seals {
        /// What the receiver needed: "sealed against resizing", "sealed against writing", ...
        needed: &'static str,
        /// The seals it carries (0 when it cannot carry any).
        seals: u32,
    },
    /// The segment is smaller than its handle says.
    #[error("the segment has {actual} bytes, the handle needs {expected}")]
    Size {
        /// Bytes the handle needs.
        expected: u64,
        /// Bytes the segment has.
        actual: u64,
    },
    /// A handle's element type differs from the receiving type.
    #[error("the segment holds {sent} ({sent_size} bytes each), received as {expected} ({expected_size} bytes each)")]
    ElementType {
        /// The element type the sender wrote, as `std::any::type_name` gives it.
        sent: String,
        /// Its size in bytes.
        sent_size: usize,
        /// The element type the receiver asked for.
        expected: &'static str,
        /// Its size in bytes.
        expected_size: usize,
    },
    /// A segment handle was serialized or deserialized outside an ensemble message.
    #[error("segment handles travel only inside ensemble messages")]
    OutsideMessage,
    /// Another I/O error.
    #[error("shared memory")]
    Io(#[from] io::Error),
}

/// Who a segment is, across processes: its inode on the kernel's internal shmem mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// Set once this process is about to exit (see [`leave_mappings_to_exit`]).
static LEAVE_TO_EXIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, segments this process held until now stay mapped, when it lets go of them,
/// until it exits, instead of being unmapped one by one (segments made later are unmapped as
/// usual). For a process about to exit: unmapping a large mapping costs the page tables'
/// teardown (about 35 ms per GiB mapped), which the kernel then does at exit, after the
/// process has said its last words to its parent, rather than before. An ensemble child calls
/// it once its actor has stopped; it cannot be undone.
#[doc(hidden)]
pub fn leave_mappings_to_exit() {
    LEAVE_TO_EXIT.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl Drop for Segment {
    fn drop(&mut self) {
        let map = sys::shm::take_mapping(&mut self.map);
        if !self.made_after_exit_began && LEAVE_TO_EXIT.load(std::sync::atomic::Ordering::Relaxed) {
            std::mem::forget(map); // the kernel unmaps it at exit
        }
    }
}

/// A mapped segment held by this process. Shared through `Arc`; its memory goes when the last
/// descriptor and mapping in every process are gone.
pub struct Segment {
    file: File,
    map: std::mem::ManuallyDrop<MmapRaw>,
    /// Made after [`leave_mappings_to_exit`]: unmapped as usual when dropped.
    made_after_exit_began: bool,
    len: usize,
    id: SegmentId,
    writable: bool,
}

impl Segment {
    /// Creates a zero-filled, writable segment of `len` bytes.
    pub(crate) fn create(len: usize) -> Result<Arc<Segment>, SegmentError> {
        let bytes = len.max(1) as u64;
        if let Some(available) = backing_memory() {
            if bytes > available {
                return Err(SegmentError::NoMemory { requested: bytes, available });
            }
        }
        let fd = sys::memfd::create_segment(&format!("ensemble:{}", process_label()), bytes).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ENOMEM | libc::ENOSPC | libc::EFBIG) => {
                    SegmentError::NoMemory { requested: bytes, available: backing_memory().unwrap_or(0) }
                }
                _ => SegmentError::Io(e),
            },
        )?;
        let segment = Segment::map(File::from(fd), len, true)?;
        // The memory is allocated (fallocate); mapping every page now, in one call, costs less
        // than one fault per 4 KiB at first write (128 MB: 57-66 ms vs 92 ms here). Kernels
        // before 5.14 say EINVAL: the pages are mapped at first write then. (Read mappings are
        // left lazy: the kernel maps 16 pages per read fault, which measured faster than
        // MADV_POPULATE_READ.)
        let _ = segment.map.advise(memmap2::Advice::PopulateWrite);
        Ok(segment)
    }

    /// Takes a received descriptor as a segment of at least `len` bytes, after checking its
    /// seals: always against resizing; for a `writable` mapping, not against writing; for a
    /// read-only one, against writing.
    pub(crate) fn adopt(
        fd: BorrowedFd<'_>,
        len: usize,
        writable: bool,
    ) -> Result<Arc<Segment>, SegmentError> {
        let seals = sys::memfd::seals(fd).map_err(|_| SegmentError::Seals { needed: "a memfd", seals: 0 })?;
        let resizing = SealFlags::SHRINK | SealFlags::GROW;
        let writing = SealFlags::WRITE | SealFlags::FUTURE_WRITE;
        let bits = seals.bits();
        if !seals.contains(resizing) {
            return Err(SegmentError::Seals { needed: "sealed against resizing", seals: bits });
        }
        if writable && seals.intersects(writing) {
            return Err(SegmentError::Seals { needed: "writable (it is frozen)", seals: bits });
        }
        if !writable && !seals.intersects(writing) {
            return Err(SegmentError::Seals { needed: "sealed against writing", seals: bits });
        }
        let actual = rustix::fs::fstat(fd).map_err(io::Error::from)?.st_size as u64;
        if actual < len as u64 {
            return Err(SegmentError::Size { expected: len as u64, actual });
        }
        Segment::map(File::from(fd.try_clone_to_owned()?), len, writable)
    }

    /// Seals the segment against writing (see the module docs): from now on nobody maps it
    /// writable or writes it, and this process's writable mapping is only read through.
    pub(crate) fn freeze(&self) -> Result<(), SegmentError> {
        sys::memfd::add_seals(self.file.as_fd(), SealFlags::FUTURE_WRITE)?;
        Ok(())
    }

    fn map(file: File, len: usize, writable: bool) -> Result<Arc<Segment>, SegmentError> {
        let stat = rustix::fs::fstat(&file).map_err(io::Error::from)?;
        let id = SegmentId { dev: stat.st_dev, ino: stat.st_ino };
        let mut options = memmap2::MmapOptions::new();
        options.len(len.max(1));
        let map = if writable { options.map_raw(&file)? } else { options.map_raw_read_only(&file)? };
        let map = std::mem::ManuallyDrop::new(map);
        let made_after_exit_began = LEAVE_TO_EXIT.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Arc::new(Segment { file, map, made_after_exit_began, len, id, writable }))
    }

    /// Whether this mapping is writable.
    pub(crate) fn writable(&self) -> bool {
        self.writable
    }

    /// The memfd's descriptor, to attach to a frame (see [`crate::shm::Hold`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Who the segment is, across processes.
    pub fn id(&self) -> SegmentId {
        self.id
    }

    /// The usable length in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Maps every page of the segment into this process now (`MADV_POPULATE_READ`).
    pub(crate) fn populate(&self) -> io::Result<()> {
        self.map.advise(memmap2::Advice::PopulateRead)
    }

    pub(crate) fn map_ref(&self) -> &MmapRaw {
        &self.map
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("id", &self.id).field("len", &self.len).finish()
    }
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "memfd inode {}", self.ino)
    }
}

/// This process's name for its segments: the actor's process name in a child, the program's
/// name otherwise.
pub(crate) fn process_label() -> &'static str {
    static LABEL: OnceLock<String> = OnceLock::new();
    LABEL.get_or_init(|| {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        let label: String = comm.trim().chars().filter(|c| !c.is_control() && *c != '/').take(64).collect();
        if label.is_empty() {
            String::from("process")
        } else {
            label
        }
    })
}

/// Bytes of memory that can back a new segment: `MemAvailable`, capped by what the cgroup
/// still allows when it sets `memory.max`. `None` when neither can be read.
pub fn backing_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|m| meminfo_field(m, "MemAvailable:"));
    match (available, cgroup_room()) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

fn meminfo_field(meminfo: &str, field: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// `memory.max - memory.current` of this process's cgroup (v2), when it has a limit.
fn cgroup_room() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let max: u64 = max.trim().parse().ok()?; // "max" means no limit
    let current: u64 = std::fs::read_to_string(dir.join("memory.current")).ok()?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// How many segments this process holds (descriptors named `memfd:ensemble:*`): what
/// `/proc/PID/fd` shows a person. Mappings without a descriptor are not counted.
///
/// # Errors
/// When `/proc/self/fd` cannot be read.
pub fn held_segments() -> io::Result<usize> {
    let mut held = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let link = std::fs::read_link(entry?.path()).unwrap_or_default();
        if link.to_string_lossy().starts_with("/memfd:ensemble:") {
            held += 1;
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_segment_is_a_sealed_memfd_named_for_people_and_never_in_dev_shm() {
        let before: Vec<_> =
            std::fs::read_dir("/dev/shm").unwrap().flatten().map(|e| e.file_name()).collect();
        let segment = Segment::create(10_000).unwrap();
        let link = sys::memfd::fd_link(segment.fd()).unwrap();
        assert!(link.starts_with("/memfd:ensemble:"), "{link}");
        let seals = sys::memfd::seals(segment.fd()).unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW));
        let after: Vec<_> = std::fs::read_dir("/dev/shm").unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(before.len(), after.len(), "nothing appears in /dev/shm");
        assert!(held_segments().unwrap() >= 1);
    }

    #[test]
    fn adopting_checks_seals_and_size() {
        let segment = Segment::create(100).unwrap();
        let adopted = Segment::adopt(segment.fd(), 100, true).unwrap();
        assert_eq!(adopted.id(), segment.id());
        assert!(matches!(Segment::adopt(segment.fd(), 1 << 20, true), Err(SegmentError::Size { .. })));
        assert!(matches!(Segment::adopt(segment.fd(), 100, false), Err(SegmentError::Seals { .. })));
        let (socket, _) = sys::socket::seqpacket_pair().unwrap();
        assert!(matches!(Segment::adopt(socket.as_fd(), 1, true), Err(SegmentError::Seals { seals: 0, .. })));
    }

    #[test]
    fn a_frozen_segment_cannot_be_written_through_proc() {
        let segment = Segment::create(4096).unwrap();
        segment.freeze().unwrap();
        assert!(matches!(Segment::adopt(segment.fd(), 4096, true), Err(SegmentError::Seals { .. })));
        Segment::adopt(segment.fd(), 4096, false).unwrap();
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&segment.fd()));
        let written = std::fs::OpenOptions::new().write(true).open(path).and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"x")
        });
        assert!(written.is_err(), "a write through /proc succeeded");
        assert!(
            sys::memfd::seals(segment.fd()).unwrap().contains(SealFlags::FUTURE_WRITE),
            "sealed against future writes"
        );
    }

    #[test]
    fn meminfo_fields_parse_to_bytes() {
        assert_eq!(
            meminfo_field("MemTotal: 10 kB\nMemAvailable:    2048 kB\n", "MemAvailable:"),
            Some(2 << 20)
        );
        assert_eq!(meminfo_field("MemTotal: 10 kB\n", "MemAvailable:"), None);
    }
}
