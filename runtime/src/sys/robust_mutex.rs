//! A robust, process-shared pthread mutex at the start of a segment, followed by a value: the
//! kernel side of [`crate::sync::SharedMutex`]. It lives here because locking it calls glibc
//! through raw pointers into mapped memory, and because [`MutexGuard`]'s `Deref` is where that
//! memory becomes a `&mut T`.
//!
//! Layout of the segment (an anonymous memfd, sealed against resizing):
//!
//! ```text
//! 0                      40           48                    value_offset      value_offset + size_of::<T>()
//! | pthread_mutex_t      | magic      | (padding to align T) | T               |
//! ```
//!
//! - The mutex is `PTHREAD_PROCESS_SHARED` (the futex is keyed by the file and offset, so each
//!   process may map the segment at its own address), `PTHREAD_MUTEX_ROBUST` (when a holder
//!   dies, the kernel marks the futex and the next locker gets `EOWNERDEAD`) and
//!   `PTHREAD_MUTEX_ERRORCHECK` (a thread that locks it twice gets `EDEADLK` instead of hanging).
//! - After `EOWNERDEAD` the locker must call `pthread_mutex_consistent` before it unlocks, or
//!   glibc marks the mutex unusable for good (`ENOTRECOVERABLE`). [`RobustMutex`] does it at
//!   once, and reports the death in [`MutexGuard::owner_died`].
//! - The layout is glibc's: fine, because every process of ensemble runs the same executable.
//! - The magic tells a received segment made by [`RobustMutex::create`] from any other memfd.

use crate::shm::segment::{Segment, SegmentError};
use bytemuck::Pod;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What follows the mutex in the segment: "ensmtx01", to recognize a received one.
const MAGIC: u64 = u64::from_le_bytes(*b"ensmtx01");
const MAGIC_OFFSET: usize = size_of::<libc::pthread_mutex_t>();
const HEADER: usize = MAGIC_OFFSET + size_of::<u64>();

/// A robust process-shared mutex guarding a `T` in a segment of its own.
pub(crate) struct RobustMutex<T: Pod> {
    segment: Arc<Segment>,
    _value: PhantomData<T>,
}

/// How a lock attempt ended, short of an error.
enum Attempt {
    Locked { owner_died: bool },
    Busy,
}

impl<T: Pod> RobustMutex<T> {
    /// Where `T` starts in the segment, and the segment's length.
    pub(crate) fn layout() -> (usize, usize) {
        let offset = HEADER.next_multiple_of(align_of::<T>());
        (offset, offset + size_of::<T>())
    }

    /// A new segment holding an initialized mutex, the magic, and `value`.
    ///
    /// # Errors
    /// When the segment cannot be created, or glibc refuses the attributes (never on Linux).
    pub(crate) fn create(value: T) -> Result<Self, SegmentError> {
        assert!(align_of::<T>() <= 4096, "a value aligned past a page cannot be placed in a segment");
        let (offset, len) = Self::layout();
        let segment = Segment::create(len)?;
        let base = segment.map_ref().as_mut_ptr();
        init_mutex(base.cast())?;
        // SAFETY: the segment was created above, is mapped writable and at least `len` bytes
        // long, and no other process or thread has seen it yet: nothing else accesses these
        // bytes. `base` is page-aligned, so `MAGIC_OFFSET` (40) is aligned for a u64 and
        // `offset` is a multiple of `align_of::<T>()`; `T: Pod` may be written as bytes.
        unsafe {
            base.add(MAGIC_OFFSET).cast::<u64>().write(MAGIC);
            base.add(offset).cast::<T>().write(value);
        }
        Ok(RobustMutex { segment, _value: PhantomData })
    }

    /// Takes a received segment as a mutex guarding a `T`, after checking its size and magic.
    ///
    /// # Errors
    /// [`SegmentError::Size`] when it is not exactly the layout's length, or
    /// [`SegmentError::Seals`] when the magic is missing.
    pub(crate) fn adopt(segment: Arc<Segment>) -> Result<Self, SegmentError> {
        let (_, len) = Self::layout();
        if segment.len() != len || !segment.writable() {
            return Err(SegmentError::Size { expected: len as u64, actual: segment.len() as u64 });
        }
        // SAFETY: the mapping is at least `len >= HEADER` bytes long and page-aligned, so the
        // u64 at `MAGIC_OFFSET` is in bounds and aligned. It is read with a volatile read because
        // another process may write the segment; any bit pattern is a valid u64.
        let magic = unsafe { segment.map_ref().as_ptr().add(MAGIC_OFFSET).cast::<u64>().read_volatile() };
        if magic != MAGIC {
            return Err(SegmentError::Seals { needed: "a shared mutex (its magic is missing)", seals: 0 });
        }
        Ok(RobustMutex { segment, _value: PhantomData })
    }

    /// The segment, whose descriptor travels with the frames that carry the mutex.
    pub(crate) fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// Locks without waiting: `None` when another thread or process holds it.
    ///
    /// # Errors
    /// `EDEADLK` when this thread holds it, `ENOTRECOVERABLE`, or another `pthread` error.
    pub(crate) fn try_lock(&self) -> io::Result<Option<MutexGuard<'_, T>>> {
        // SAFETY: `mutex()` points to a mutex initialized by `create` (or, for a received
        // segment, by the process that created it, as the magic shows), in a mapping this
        // `RobustMutex` keeps alive for as long as any guard borrows it. glibc accesses it
        // with atomic operations only, so other processes locking it meanwhile are fine.
        let code = unsafe { libc::pthread_mutex_trylock(self.mutex()) };
        self.finish(code)
    }

    /// Locks, waiting at most `timeout`: `None` when it is still held then.
    ///
    /// # Errors
    /// As [`RobustMutex::try_lock`].
    pub(crate) fn lock_timeout(&self, timeout: Duration) -> io::Result<Option<MutexGuard<'_, T>>> {
        let deadline = realtime_deadline(timeout);
        // SAFETY: as in `try_lock`; `deadline` is a valid timespec that outlives the call.
        let code = unsafe { libc::pthread_mutex_timedlock(self.mutex(), &deadline) };
        self.finish(code)
    }

    /// Turns a pthread result into a guard: `EOWNERDEAD` makes the mutex consistent first.
    fn finish(&self, code: i32) -> io::Result<Option<MutexGuard<'_, T>>> {
        match self.attempt(code)? {
            Attempt::Locked { owner_died } => {
                let mapping = Arc::clone(&self.segment);
                Ok(Some(MutexGuard { mutex: self, owner_died, _mapping: mapping, _not_send: PhantomData }))
            }
            Attempt::Busy => Ok(None),
        }
    }

    fn attempt(&self, code: i32) -> io::Result<Attempt> {
        match code {
            0 => Ok(Attempt::Locked { owner_died: false }),
            libc::EOWNERDEAD => {
                // SAFETY: this thread holds the mutex (EOWNERDEAD is returned with the lock
                // taken), which is what `pthread_mutex_consistent` requires; the pointer is
                // valid as in `try_lock`.
                let code = unsafe { libc::pthread_mutex_consistent(self.mutex()) };
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(code));
                }
                Ok(Attempt::Locked { owner_died: true })
            }
            libc::EBUSY | libc::ETIMEDOUT => Ok(Attempt::Busy),
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }

    fn mutex(&self) -> *mut libc::pthread_mutex_t {
        self.segment.map_ref().as_mut_ptr().cast()
    }

    fn value(&self) -> *mut T {
        let (offset, _) = Self::layout();
        self.segment.map_ref().as_mut_ptr().wrapping_add(offset).cast()
    }
}

impl<T: Pod> fmt::Debug for RobustMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RobustMutex").field("segment", &self.segment).finish()
    }
}

/// Initializes a process-shared, robust, error-checking mutex at `mutex`.
fn init_mutex(mutex: *mut libc::pthread_mutex_t) -> io::Result<()> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    let check = |code: i32| if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(code)) };
    // SAFETY: `attr` is initialized by `pthread_mutexattr_init` before any other use, and
    // destroyed once, after `pthread_mutex_init` (which copies what it needs). `mutex` points
    // to `size_of::<pthread_mutex_t>()` writable, suitably aligned (page-aligned) bytes of a
    // fresh segment that no other thread or process can reach yet, so it is initialized once
    // and never while in use.
    unsafe {
        check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
        let set = check(libc::pthread_mutexattr_settype(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ERRORCHECK))
            .and_then(|()| {
                check(libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED))
            })
            .and_then(|()| {
                check(libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST))
            })
            .and_then(|()| check(libc::pthread_mutex_init(mutex, attr.as_ptr())));
        libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        set
    }
}

/// `now + timeout` on `CLOCK_REALTIME`, what `pthread_mutex_timedlock` takes.
fn realtime_deadline(timeout: Duration) -> libc::timespec {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let at = now.saturating_add(timeout);
    libc::timespec {
        tv_sec: libc::time_t::try_from(at.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: at.subsec_nanos() as libc::c_long,
    }
}

/// Access to the value of a locked [`SharedMutex`](crate::sync::SharedMutex); unlocks on drop.
///
/// It is `!Send`: glibc requires the thread that locked a mutex to be the one that unlocks it
/// (and a robust mutex is on that thread's list of held locks, which the kernel walks when the
/// thread dies). A guard that is forgotten (`mem::forget`) keeps the lock until its thread
/// exits (then the next locker is told [`owner_died`](Self::owner_died)), and keeps the mutex's
/// memory mapped for good.
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
    mutex: &'a RobustMutex<T>,
    owner_died: bool,
    /// Keeps the mapping for as long as the lock is held, also when the guard is forgotten
    /// (`mem::forget` leaks it with the guard): glibc links every robust mutex a thread holds
    /// into a list through the mutexes themselves, and touches its neighbours when another
    /// one is locked or unlocked, so a held mutex must never be unmapped.
    _mapping: Arc<Segment>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> MutexGuard<'_, T> {
    /// Whether the previous holder died holding the lock (a process killed, a thread that
    /// exited). The lock has been made consistent again, but the value may be half-updated:
    /// check it, or repair it, before trusting it. Only the first locker after the death sees
    /// `true`.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }
}

impl<T: Pod> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the pointer is in bounds and aligned for `T` (see `layout`) in a mapping the
        // borrowed `RobustMutex` keeps alive; the value was written at creation, and any bytes
        // are a valid `T` (`Pod`). This guard holds the lock, so no other holder of the mutex
        // writes the value while the reference lives (writers outside the lock would break the
        // mutex's only contract, as with any shared memory).
        unsafe { &*self.mutex.value() }
    }
}

impl<T: Pod> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through this guard,
        // and the lock excludes every other thread and process.
        unsafe { &mut *self.mutex.value() }
    }
}

impl<T: Pod> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard exists only while this thread holds the mutex (it is `!Send`, and
        // made only after a successful lock), the mutex was made consistent if its owner had
        // died, and the pointer is valid as in `try_lock`. The result can only be `EPERM` (not
        // the owner), which the guard rules out.
        unsafe { libc::pthread_mutex_unlock(self.mutex.mutex()) };
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

    #[test]
    fn a_new_mutex_holds_its_value_and_locks_and_unlocks() {
        let mutex = RobustMutex::create(41u64).unwrap();
        let mut guard = mutex.try_lock().unwrap().unwrap();
        assert!(!guard.owner_died());
        *guard += 1;
        drop(guard);
        assert_eq!(*mutex.lock_timeout(Duration::from_secs(1)).unwrap().unwrap(), 42);
    }

    #[test]
    fn the_value_is_aligned_after_the_header() {
        #[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
        #[repr(C, align(64))]
        struct Wide([u8; 64]);
        assert_eq!(RobustMutex::<u8>::layout(), (HEADER, HEADER + 1));
        assert_eq!(RobustMutex::<Wide>::layout(), (64, 128));
        let mutex = RobustMutex::create(Wide([7; 64])).unwrap();
        assert_eq!(mutex.value() as usize % 64, 0);
        assert_eq!(mutex.try_lock().unwrap().unwrap().0, [7; 64]);
    }

    #[test]
    fn locking_twice_on_one_thread_is_an_error_not_a_hang() {
        let mutex = RobustMutex::create(0u32).unwrap();
        let _held = mutex.try_lock().unwrap().unwrap();
        let again = mutex.try_lock().map(|g| g.is_some());
        assert_eq!(again.unwrap_err().raw_os_error(), Some(libc::EDEADLK));
        let timed = mutex.lock_timeout(Duration::from_millis(10)).map(|g| g.is_some());
        assert_eq!(timed.unwrap_err().raw_os_error(), Some(libc::EDEADLK));
    }

    #[test]
    fn another_thread_times_out_while_it_is_held_and_locks_after() {
        let mutex = Arc::new(RobustMutex::create(0u32).unwrap());
        let held = mutex.try_lock().unwrap().unwrap();
        let other = Arc::clone(&mutex);
        let busy = std::thread::spawn(move || {
            let busy = other.try_lock().unwrap().is_none();
            busy && other.lock_timeout(Duration::from_millis(20)).unwrap().is_none()
        });
        assert!(busy.join().unwrap());
        drop(held);
        let other = Arc::clone(&mutex);
        let free = std::thread::spawn(move || other.lock_timeout(Duration::from_secs(5)).unwrap().is_some());
        assert!(free.join().unwrap());
    }

    #[test]
    fn a_holder_that_dies_is_reported_once_and_the_mutex_stays_usable() {
        let mutex = Arc::new(RobustMutex::create(0u32).unwrap());
        let other = Arc::clone(&mutex);
        // A thread that exits holding a robust mutex is a dead owner, as a process would be.
        std::thread::spawn(move || {
            let mut guard = other.try_lock().unwrap().unwrap();
            *guard = 5;
            std::mem::forget(guard);
        })
        .join()
        .unwrap();
        let guard = mutex.lock_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert!(guard.owner_died());
        assert_eq!(*guard, 5);
        drop(guard);
        let guard = mutex.try_lock().unwrap().unwrap();
        assert!(!guard.owner_died());
    }

    #[test]
    fn a_forgotten_guard_keeps_its_mutex_mapped_for_the_threads_robust_list() {
        let forgotten = RobustMutex::create(1u32).unwrap();
        let segment = Arc::downgrade(forgotten.segment());
        std::mem::forget(forgotten.try_lock().unwrap().unwrap());
        drop(forgotten);
        assert!(segment.upgrade().is_some(), "still mapped while held");
        // Locking and unlocking another robust mutex on this thread walks the list through it.
        let other = RobustMutex::create(2u32).unwrap();
        assert_eq!(*other.try_lock().unwrap().unwrap(), 2);
    }

    #[test]
    fn a_received_segment_is_checked_for_size_and_magic() {
        let mutex = RobustMutex::create(3u32).unwrap();
        let adopted = RobustMutex::<u32>::adopt(Arc::clone(mutex.segment())).unwrap();
        assert_eq!(*adopted.try_lock().unwrap().unwrap(), 3);
        assert!(matches!(
            RobustMutex::<u64>::adopt(Arc::clone(mutex.segment())),
            Err(SegmentError::Size { .. })
        ));
        let (_, len) = RobustMutex::<u32>::layout();
        let plain = Segment::create(len).unwrap();
        assert!(matches!(RobustMutex::<u32>::adopt(plain), Err(SegmentError::Seals { .. })));
    }

    #[test]
    fn a_deadline_is_now_plus_the_timeout_on_the_realtime_clock() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let at = realtime_deadline(Duration::from_secs(10));
        assert!((before + 9..=before + 11).contains(&at.tv_sec));
        assert!((0..1_000_000_000).contains(&at.tv_nsec));
        assert_eq!(realtime_deadline(Duration::MAX).tv_sec, libc::time_t::MAX);
    }
}
