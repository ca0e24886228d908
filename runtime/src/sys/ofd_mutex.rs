//! The kernel side of [`crate::sync::SharedMutex`]: an exclusive open-file-description lock
//! (`F_OFD_SETLK`) on a segment's memfd, a header word saying who holds it, and the value after
//! the header. It lives here because taking the lock is a raw `fcntl`, because the header is
//! read as atomic words of mapped memory, and because [`MutexGuard`]'s `Deref` is where that
//! memory becomes a `&mut T`.
//!
//! Layout of the segment (an anonymous memfd, sealed against resizing):
//!
//! ```text
//! 0          8             16                     value_offset      value_offset + size_of::<T>()
//! | magic    | holder      | (padding to align T) | T               |
//! ```
//!
//! Why this design, and not a glibc robust pthread mutex in the segment (what came before): a
//! pthread mutex keeps its state *and the links of the holder thread's robust list* in the
//! shared memory, so a peer that rewrites them could make our unlock fail and leave a dangling
//! entry in our thread's list (a crash later), or have glibc write a value of its choosing at an
//! address of its choosing. Here everything that decides who holds the lock is the kernel's:
//!
//! - **Exclusion across processes**: an exclusive OFD lock on the whole memfd. It belongs to an
//!   *open file description*; a descriptor received with `SCM_RIGHTS` (or dup'ed) shares the
//!   sender's, so every [`OfdMutex`] opens its own by re-opening the memfd through
//!   `/proc/self/fd/N` (`O_RDWR | O_CLOEXEC`) when it is created or received. Clones (one `Arc`)
//!   share it. The kernel drops the lock when the last descriptor of the description closes:
//!   when the holding process exits or is killed (`SIGKILL` included), so a dead holder never
//!   deadlocks the others. Nothing in the segment takes part in it, so nothing a peer writes
//!   there can break it.
//! - **Exclusion between threads of one process**: an OFD lock does not exclude a second request
//!   through the same description, so each `OfdMutex` also has a *gate*, an in-process lock that
//!   records the thread inside: a guard holds both, taking the gate first. A thread that locks
//!   again gets `EDEADLK` instead of a hang.
//! - **Waiting**: `F_OFD_SETLKW` cannot be bounded, so waits try `F_OFD_SETLK` with a backoff
//!   from 20 µs doubling to 1 ms (a waiter notices a release within about 1 ms).
//! - **Owner died**: the holder word is set to the locker's pid after it takes the lock and
//!   cleared before it releases; a locker that finds it non-zero knows that the previous holder
//!   did not release normally (it died, forgot its guard before its process exited, or panicked
//!   while holding it). A peer can write this word as it likes: **it can only lie about
//!   `owner_died`**, never make us crash, hang or hold the lock wrongly.
//! - **The value** lives in the shared mapping: plain bytes (`T: Pod`, any bit pattern valid).
//!   A peer that ignores the lock can write it at any time, as with any shared memory; what is at
//!   stake is only the value's bytes.
//! - The magic tells a received segment made by [`OfdMutex::create`] from any other memfd.

use crate::shm::segment::{Segment, SegmentError};
use bytemuck::Pod;
use rustix::fs::{Mode, OFlags};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// The first word of the segment: "ensmtx02", to recognize a received one.
const MAGIC: u64 = u64::from_le_bytes(*b"ensmtx02");
const MAGIC_OFFSET: usize = 0;
/// The pid of the process holding the lock, 0 when it is free.
const HOLDER_OFFSET: usize = 8;
const HEADER: usize = 16;
/// The first and the longest pause between two tries of a waiting lock.
const FIRST_PAUSE: Duration = Duration::from_micros(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(1);
/// The longest single wait for the gate: a safety net against a lost wake-up.
const GATE_SLICE: Duration = Duration::from_millis(250);

/// A value in a segment of its own behind an OFD lock on the segment's memfd (see the module
/// docs). One per handle created or received; clones of a handle share it through an `Arc`.
pub(crate) struct OfdMutex<T: Pod> {
    segment: Arc<Segment>,
    /// This handle's own open file description of the memfd: the OFD lock is its.
    description: OwnedFd,
    gate: Gate,
    _value: PhantomData<T>,
}

impl<T: Pod> OfdMutex<T> {
    /// Where `T` starts in the segment, and the segment's length.
    pub(crate) fn layout() -> (usize, usize) {
        let offset = HEADER.next_multiple_of(align_of::<T>());
        (offset, offset + size_of::<T>())
    }

    /// A new segment holding the magic, a free holder word, and `value`.
    ///
    /// # Errors
    /// When the segment cannot be created, or the memfd cannot be re-opened.
    pub(crate) fn create(value: T) -> Result<Self, SegmentError> {
        assert!(align_of::<T>() <= 4096, "a value aligned past a page cannot be placed in a segment");
        let (offset, len) = Self::layout();
        let segment = Segment::create(len)?;
        // SAFETY: the segment was created above, is mapped writable, `len` bytes long and
        // page-aligned, so `offset` (a multiple of `align_of::<T>()`, with `offset +
        // size_of::<T>() == len`) is in bounds and aligned for `T`. No other thread or process
        // has seen the segment yet, so nothing else accesses these bytes; `T: Pod` may be
        // written as bytes. The header words are not touched here (they are atomics).
        unsafe { segment.map_ref().as_mut_ptr().add(offset).cast::<T>().write(value) };
        word(&segment, MAGIC_OFFSET).store(MAGIC, Ordering::Release);
        Self::with_description(segment)
    }

    /// Takes a received segment as a mutex guarding a `T`, after checking its size and magic,
    /// and opens this handle's own description of it.
    ///
    /// # Errors
    /// [`SegmentError::Size`] when it is not exactly the layout's length, or not writable;
    /// [`SegmentError::Seals`] when the magic is missing; [`SegmentError::Io`] when the memfd
    /// cannot be re-opened.
    pub(crate) fn adopt(segment: Arc<Segment>) -> Result<Self, SegmentError> {
        let (_, len) = Self::layout();
        if segment.len() != len || !segment.writable() {
            return Err(SegmentError::Size { expected: len as u64, actual: segment.len() as u64 });
        }
        if word(&segment, MAGIC_OFFSET).load(Ordering::Acquire) != MAGIC {
            return Err(SegmentError::Seals { needed: "a shared mutex (its magic is missing)", seals: 0 });
        }
        Self::with_description(segment)
    }

    fn with_description(segment: Arc<Segment>) -> Result<Self, SegmentError> {
        let description = reopen(&segment)?;
        Ok(OfdMutex { segment, description, gate: Gate::default(), _value: PhantomData })
    }

    /// The segment, whose descriptor travels with the frames that carry the mutex.
    pub(crate) fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// Locks, waiting until `deadline` (for ever when `None`; not at all when it has passed):
    /// `None` when the lock is still held by another thread or process then.
    ///
    /// # Errors
    /// `EDEADLK` when this thread holds the lock through this handle already; the `fcntl`
    /// error (`ENOLCK`: the kernel is out of lock records).
    pub(crate) fn lock_until(
        self: &Arc<Self>,
        deadline: Option<Instant>,
    ) -> io::Result<Option<MutexGuard<'_, T>>> {
        if !self.gate.enter(deadline)? {
            return Ok(None);
        }
        match self.lock_description(deadline) {
            Ok(true) => {
                let previous = self.holder().swap(u64::from(std::process::id()), Ordering::AcqRel);
                let mutex = Arc::clone(self);
                Ok(Some(MutexGuard { mutex, owner_died: previous != 0, _borrow: PhantomData }))
            }
            Ok(false) => {
                self.gate.leave();
                Ok(None)
            }
            Err(e) => {
                self.gate.leave();
                Err(e)
            }
        }
    }

    /// Takes the OFD lock, trying with a backoff until `deadline`: whether it was taken.
    fn lock_description(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let mut pause = FIRST_PAUSE;
        loop {
            if try_lock_file(self.description.as_fd())? {
                return Ok(true);
            }
            let left = deadline.map_or(pause, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Ok(false);
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    fn holder(&self) -> &AtomicU64 {
        word(&self.segment, HOLDER_OFFSET)
    }

    fn value(&self) -> *mut T {
        let (offset, _) = Self::layout();
        self.segment.map_ref().as_mut_ptr().wrapping_add(offset).cast()
    }
}

impl<T: Pod> fmt::Debug for OfdMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfdMutex")
            .field("segment", &self.segment)
            .field("holder", &self.holder().load(Ordering::Relaxed))
            .finish()
    }
}

/// The header word at `offset` (`MAGIC_OFFSET` or `HOLDER_OFFSET`) of a mutex's segment, which
/// must be at least [`HEADER`] bytes long (`create` and `adopt` make sure).
fn word(segment: &Segment, offset: usize) -> &AtomicU64 {
    assert!(offset + size_of::<u64>() <= HEADER && segment.len() >= HEADER);
    // SAFETY: the word is inside the mapping (asserted above), which starts at a page boundary,
    // so it is aligned for an `AtomicU64`; the mapping lives as long as the borrowed segment.
    // Any bit pattern is a valid `AtomicU64`. In this process the header words are only ever
    // accessed atomically (through this function); other processes are outside our memory
    // model and may write them at any time, which an atomic access tolerates.
    unsafe { AtomicU64::from_ptr(segment.map_ref().as_mut_ptr().add(offset).cast()) }
}

/// This process's own open file description of the segment's memfd, checked to be the same
/// file.
fn reopen(segment: &Segment) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", segment.fd().as_raw_fd());
    let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let stat = rustix::fs::fstat(&fd)?;
    let id = segment.id();
    if (stat.st_dev, stat.st_ino) != (id.dev, id.ino) {
        return Err(io::Error::other("re-opening a shared mutex's memfd gave another file"));
    }
    Ok(fd)
}

/// Asks for an exclusive OFD lock on the whole file without waiting: whether it was taken (a
/// description that holds it already gets it again).
///
/// # Errors
/// The `fcntl` error other than "held elsewhere" (`ENOLCK`, `EBADF` for a read-only descriptor).
fn try_lock_file(fd: BorrowedFd<'_>) -> io::Result<bool> {
    match ofd_setlk(fd, libc::F_WRLCK) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES | libc::EINTR)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases the OFD lock of this description on the whole file.
fn unlock_file(fd: BorrowedFd<'_>) -> io::Result<()> {
    ofd_setlk(fd, libc::F_UNLCK as libc::c_int)
}

/// `fcntl(fd, F_OFD_SETLK, { l_type, whole file })`.
fn ofd_setlk(fd: BorrowedFd<'_>, l_type: libc::c_int) -> io::Result<()> {
    // SAFETY: `struct flock` is a C struct of integers, for which all-zero bytes are a valid
    // value (and the `l_pid` of 0 that `F_OFD_SETLK` requires).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = l_type as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start 0, l_len 0: from the first byte to the end of the file, whatever its size.
    // SAFETY: `fd` is an open descriptor for the duration of the call (it is borrowed);
    // `F_OFD_SETLK` reads one `struct flock` through the pointer, which points to `lock`, a
    // valid and initialized value that outlives the call. The call never blocks.
    let code = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &lock as *const libc::flock) };
    if code == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The in-process half of the lock: which thread of this process is inside, if any.
#[derive(Debug, Default)]
struct Gate {
    inside: Mutex<Option<ThreadId>>,
    left: Condvar,
}

impl Gate {
    /// Enters, waiting until `deadline` (for ever when `None`): whether it entered.
    ///
    /// # Errors
    /// `EDEADLK` when this thread is inside already.
    fn enter(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let me = std::thread::current().id();
        let mut inside = self.inside.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match *inside {
                None => {
                    *inside = Some(me);
                    return Ok(true);
                }
                Some(thread) if thread == me => return Err(io::Error::from_raw_os_error(libc::EDEADLK)),
                Some(_) => {}
            }
            let left = deadline.map_or(GATE_SLICE, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Ok(false);
            }
            inside = self
                .left
                .wait_timeout(inside, left.min(GATE_SLICE))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn leave(&self) {
        *self.inside.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.left.notify_all();
    }
}

/// Access to the value of a locked [`SharedMutex`](crate::sync::SharedMutex); unlocks on drop.
///
/// It is `!Send`, like `std::sync::MutexGuard`: the lock records the thread that took it, so
/// that the same thread locking again is told ([`LockError::WouldDeadlock`]) instead of waiting
/// for itself; a guard moved to another thread would make that record wrong.
///
/// A guard that is forgotten (`mem::forget`) keeps the lock until its process exits (then the
/// next locker is told [`owner_died`](Self::owner_died)), also when every handle of the mutex
/// is dropped: it keeps the handle's description open. A guard dropped while its thread
/// panics leaves the holder word set, so the next locker is told too, as a poisoned
/// `std::sync::Mutex` would tell it.
///
/// [`LockError::WouldDeadlock`]: crate::sync::LockError::WouldDeadlock
///
/// # Examples
/// ```
/// use ensemble_runtime::sync::SharedMutex;
/// let counter = SharedMutex::new(0u64)?;
/// let mut guard = counter.lock()?;
/// *guard += 1;
/// assert!(!guard.owner_died());
/// drop(guard);
/// assert_eq!(*counter.lock()?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MutexGuard<'a, T: Pod> {
    /// Keeps the handle's description (hence the lock) and the mapping for as long as the lock
    /// is held, also when the guard is forgotten.
    mutex: Arc<OfdMutex<T>>,
    owner_died: bool,
    /// Borrows the `SharedMutex` it came from, as `std::sync::MutexGuard` does, and is `!Send`.
    _borrow: PhantomData<(&'a (), *const ())>,
}

impl<T: Pod> MutexGuard<'_, T> {
    /// Whether the previous holder did not release the lock normally: its process died (a
    /// process killed holding it), its guard was forgotten before its process exited, or its
    /// thread panicked holding it. The value may be half-updated: check it, or repair it,
    /// before trusting it. Only the first locker after such a holder sees `true`.
    ///
    /// This flag is a word in the shared memory: a peer that scribbles on it can make it lie
    /// (say `true` or `false` wrongly), but cannot affect the lock itself.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }
}

impl<T: Pod> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the pointer is in bounds and aligned for `T` (see `layout`) in a mapping the
        // guard's `Arc` keeps alive; any bytes are a valid `T` (`Pod`). This guard holds the
        // lock (the gate excludes this process's other threads, the OFD lock other processes
        // and other handles), so no holder of the mutex writes the value while the reference
        // lives; a peer that writes it ignoring the lock changes only its bytes.
        unsafe { &*self.mutex.value() }
    }
}

impl<T: Pod> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through this guard,
        // and the lock excludes every other thread and process that takes it.
        unsafe { &mut *self.mutex.value() }
    }
}

impl<T: Pod> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.mutex.holder().store(0, Ordering::Release);
        }
        if let Err(e) = unlock_file(self.mutex.description.as_fd()) {
            // Unlocking a whole-file lock does not fail; if it did, the lock would stay with
            // this description (the next locker in this process takes it again).
            tracing::error!("could not release a shared mutex's OFD lock: {e}");
        }
        self.mutex.gate.leave();
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard").field("value", &**self).field("owner_died", &self.owner_died).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<T: Pod>(value: T) -> Arc<OfdMutex<T>> {
        Arc::new(OfdMutex::create(value).unwrap())
    }

    /// A second handle of the same segment, as a receiver in another process would have.
    fn another_handle<T: Pod>(mutex: &OfdMutex<T>) -> Arc<OfdMutex<T>> {
        Arc::new(OfdMutex::adopt(Arc::clone(mutex.segment())).unwrap())
    }

    fn try_lock<T: Pod>(mutex: &Arc<OfdMutex<T>>) -> io::Result<Option<MutexGuard<'_, T>>> {
        mutex.lock_until(Some(Instant::now()))
    }

    fn within(ms: u64) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(ms))
    }

    #[test]
    fn a_new_mutex_holds_its_value_and_locks_and_unlocks() {
        let mutex = new(41u64);
        let mut guard = try_lock(&mutex).unwrap().unwrap();
        assert!(!guard.owner_died());
        *guard += 1;
        drop(guard);
        assert_eq!(*mutex.lock_until(None).unwrap().unwrap(), 42);
    }

    #[test]
    fn the_value_is_aligned_after_the_header() {
        #[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
        #[repr(C, align(64))]
        struct Wide([u8; 64]);
        assert_eq!(OfdMutex::<u8>::layout(), (HEADER, HEADER + 1));
        assert_eq!(OfdMutex::<Wide>::layout(), (64, 128));
        let mutex = new(Wide([7; 64]));
        assert_eq!(mutex.value() as usize % 64, 0);
        assert_eq!(try_lock(&mutex).unwrap().unwrap().0, [7; 64]);
    }

    #[test]
    fn each_handle_has_its_own_description_and_the_kernel_excludes_them() {
        let mutex = new(0u32);
        let other = another_handle(&mutex);
        let (a, b) = (mutex.description.as_fd(), other.description.as_fd());
        assert!(try_lock_file(a).unwrap());
        assert!(try_lock_file(a).unwrap(), "the same description gets it again");
        assert!(!try_lock_file(b).unwrap(), "another description does not");
        unlock_file(a).unwrap();
        assert!(try_lock_file(b).unwrap());
        unlock_file(b).unwrap();
    }

    #[test]
    fn two_handles_in_one_process_exclude_each_other() {
        let mutex = new(0u32);
        let other = another_handle(&mutex);
        let mut held = try_lock(&mutex).unwrap().unwrap();
        *held = 9;
        assert!(try_lock(&other).unwrap().is_none());
        let start = Instant::now();
        assert!(other.lock_until(within(30)).unwrap().is_none());
        assert!(start.elapsed() >= Duration::from_millis(30));
        drop(held);
        let guard = other.lock_until(within(5_000)).unwrap().unwrap();
        assert_eq!(*guard, 9);
        assert!(!guard.owner_died());
    }

    #[test]
    fn locking_twice_on_one_thread_is_an_error_not_a_hang() {
        let mutex = new(0u32);
        let _held = try_lock(&mutex).unwrap().unwrap();
        let again = try_lock(&mutex).map(|g| g.is_some());
        assert_eq!(again.unwrap_err().raw_os_error(), Some(libc::EDEADLK));
        let timed = mutex.lock_until(within(10)).map(|g| g.is_some());
        assert_eq!(timed.unwrap_err().raw_os_error(), Some(libc::EDEADLK));
    }

    #[test]
    fn another_thread_waits_while_it_is_held_and_locks_after() {
        let mutex = new(0u32);
        let held = try_lock(&mutex).unwrap().unwrap();
        let other = Arc::clone(&mutex);
        let busy = std::thread::spawn(move || {
            let busy = try_lock(&other).unwrap().is_none();
            busy && other.lock_until(within(20)).unwrap().is_none()
        });
        assert!(busy.join().unwrap());
        drop(held);
        let other = Arc::clone(&mutex);
        let free = std::thread::spawn(move || other.lock_until(within(5_000)).unwrap().is_some());
        assert!(free.join().unwrap());
    }

    #[test]
    fn a_holder_that_did_not_release_is_reported_once() {
        let mutex = new(0u32);
        // What a killed holder leaves: its pid in the holder word, the OFD lock gone with it.
        mutex.holder().store(12345, Ordering::Release);
        let guard = try_lock(&mutex).unwrap().unwrap();
        assert!(guard.owner_died());
        drop(guard);
        assert!(!try_lock(&mutex).unwrap().unwrap().owner_died());
        // A thread that panics holding it.
        let other = Arc::clone(&mutex);
        let panicked = std::thread::spawn(move || {
            let mut guard = try_lock(&other).unwrap().unwrap();
            *guard = 5;
            panic!("while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        let guard = mutex.lock_until(within(5_000)).unwrap().unwrap();
        assert!(guard.owner_died());
        assert_eq!(*guard, 5);
    }

    #[test]
    fn a_forgotten_guard_holds_the_lock_after_its_handle_is_gone() {
        let mutex = new(1u32);
        let other = another_handle(&mutex);
        std::mem::forget(try_lock(&mutex).unwrap().unwrap());
        drop(mutex);
        assert!(try_lock(&other).unwrap().is_none(), "the description is still open");
    }

    #[test]
    fn a_peer_scribbling_over_the_whole_segment_cannot_crash_or_hang_us() {
        let mutex = new(0u64);
        let other = another_handle(&mutex);
        let (_, len) = OfdMutex::<u64>::layout();
        // The peer's own writable mapping of the same memfd.
        let peer = Segment::adopt(mutex.segment().fd(), len, true).unwrap();
        let scribble = |byte: u8| {
            // SAFETY: `peer` maps `len` writable bytes and lives across the call; the bytes
            // are shared memory whose every user reads the header atomically and the value as
            // plain data, which is what this test checks.
            unsafe { std::ptr::write_bytes(peer.map_ref().as_mut_ptr(), byte, len) };
        };
        scribble(0xa5);
        let guard = mutex.lock_until(within(5_000)).unwrap().unwrap();
        assert!(guard.owner_died(), "the scribbled holder word says so: a lie, but harmless");
        assert_eq!(*guard, u64::from_ne_bytes([0xa5; 8]));
        scribble(0xff);
        drop(guard);
        scribble(0x00);
        let guard = try_lock(&mutex).unwrap().unwrap();
        assert!(!guard.owner_died());
        drop(guard);
        // The lock is the kernel's: a handle locked elsewhere stays locked whatever the bytes.
        let held = try_lock(&other).unwrap().unwrap();
        scribble(0x5a);
        assert!(try_lock(&mutex).unwrap().is_none());
        drop(held);
        assert!(try_lock(&mutex).unwrap().is_some());
        // A new receiver sees the scribbled magic and refuses the segment with a clear error.
        assert!(matches!(
            OfdMutex::<u64>::adopt(Arc::clone(mutex.segment())),
            Err(SegmentError::Seals { .. })
        ));
    }

    #[test]
    fn a_received_segment_is_checked_for_size_and_magic() {
        let mutex = new(3u32);
        let adopted = another_handle(&mutex);
        assert_eq!(*try_lock(&adopted).unwrap().unwrap(), 3);
        assert!(matches!(
            OfdMutex::<u64>::adopt(Arc::clone(mutex.segment())),
            Err(SegmentError::Size { .. })
        ));
        let (_, len) = OfdMutex::<u32>::layout();
        let plain = Segment::create(len).unwrap();
        assert!(matches!(OfdMutex::<u32>::adopt(plain), Err(SegmentError::Seals { .. })));
    }
}
