//! [`SharedMutex`]: a value in shared memory behind a lock the kernel keeps (an OFD lock on
//! the segment's memfd, see `sys/ofd_mutex.rs`).

use super::{incoming, Kind, LockError, Outgoing, SyncError};
use crate::shm::transfer::{self, Hold};
use crate::sys::ofd_mutex::{MutexGuard, OfdMutex};
use bytemuck::Pod;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first and the longest pause of [`SharedMutex::lock_async`] between two tries.
const FIRST_PAUSE: Duration = Duration::from_micros(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(1);

/// A `T` in shared memory behind a lock that every process holding a clone can take, like
/// `std::sync::Mutex<T>` across processes (or `multiprocessing.Lock` with a `Value`).
///
/// The value lives in a segment (an anonymous memfd) after a small header; the lock is an
/// exclusive *open file description* lock (`F_OFD_SETLK`) on that memfd, which the kernel keeps:
/// nothing a peer writes in the shared memory can break it. Send the mutex in a message (or an
/// actor's initial state) to share it: the receiver maps the same memory and opens its own
/// description of the memfd. `T` is plain data ([`Pod`]): no pointers, which would mean nothing
/// in another process, and any bytes are a valid value.
///
/// - **A holder that dies does not deadlock the others.** The kernel drops the lock when the
///   holding process exits or is killed; the next locker gets it with
///   [`MutexGuard::owner_died`] `== true`: **the value may be half-updated** by the dead holder.
///   Check or repair it before trusting it. (The flag is a word in the shared memory: a peer
///   can make it lie, not break the lock.)
/// - The guard is `!Send`, as `std::sync::MutexGuard` is.
/// - Locking twice from one thread through one handle (or its clones) is an error
///   ([`LockError::WouldDeadlock`]), not a hang. Two handles of one mutex that reached one
///   process separately (received in two messages) are independent lockers: a thread holding
///   one and locking the other waits, as it would for another process.
/// - [`lock`](Self::lock) blocks the thread; [`lock_async`](Self::lock_async) never does. The
///   kernel offers nothing pollable for the lock, and its blocking form cannot be bounded, so
///   both try, then pause from 20 µs doubling to 1 ms between tries: a release is noticed within
///   about 1 ms, and waiters are not served in order. Keep critical sections short.
/// - The value is in memory every holder maps writable: a peer that ignores the lock can write
///   it at any time. It cannot make this process crash or hang through it.
///
/// # Examples
/// ```
/// use ensemble_runtime::sync::SharedMutex;
/// let total = SharedMutex::new(0u64)?;
/// let workers: Vec<_> = (0..4)
///     .map(|_| {
///         let total = total.clone(); // in a real program: sent to worker processes
///         std::thread::spawn(move || *total.lock().unwrap() += 10)
///     })
///     .collect();
/// for worker in workers {
///     worker.join().unwrap();
/// }
/// assert_eq!(*total.lock()?, 40);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedMutex<T: Pod> {
    raw: Arc<OfdMutex<T>>,
}

impl<T: Pod> SharedMutex<T> {
    /// A new unlocked mutex holding `value`, in a segment of its own.
    ///
    /// # Errors
    /// [`SyncError::Segment`] when the segment cannot be created (no memory, descriptor table
    /// full) or its memfd cannot be re-opened through `/proc/self/fd`.
    pub fn new(value: T) -> Result<SharedMutex<T>, SyncError> {
        let raw = OfdMutex::create(value).map_err(SyncError::Segment)?;
        Ok(SharedMutex { raw: Arc::new(raw) })
    }

    /// Blocks the thread until the lock is taken. Not on an arbiter others share: use
    /// [`lock_async`](Self::lock_async) there.
    ///
    /// # Errors
    /// [`LockError::WouldDeadlock`] when this thread holds it already; [`LockError::Os`].
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, LockError> {
        loop {
            // Without a deadline, `lock_until` returns only with the lock or an error.
            if let Some(guard) = self.raw.lock_until(None).map_err(LockError::from_os)? {
                return Ok(guard);
            }
        }
    }

    /// Takes the lock if it is free now.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn try_lock(&self) -> Result<Option<MutexGuard<'_, T>>, LockError> {
        self.raw.lock_until(Some(Instant::now())).map_err(LockError::from_os)
    }

    /// Blocks the thread until the lock is taken or `timeout` has passed: `None` on timeout.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<MutexGuard<'_, T>>, LockError> {
        self.raw.lock_until(Instant::now().checked_add(timeout)).map_err(LockError::from_os)
    }

    /// Takes the lock without blocking the thread: tries, then sleeps (20 µs doubling to
    /// 1 ms) on the current tokio runtime's timer, and tries again.
    ///
    /// Another task of this thread holding the lock is waited for like any other holder; a
    /// task that awaits a lock it holds itself waits forever, as with `tokio::sync::Mutex`.
    ///
    /// # Errors
    /// [`LockError::Os`].
    ///
    /// # Panics
    /// Outside a tokio runtime with a timer (actix's runtime has one).
    ///
    /// # Cancel safety
    /// Cancel safe: the lock is taken only in the poll that returns the guard.
    pub async fn lock_async(&self) -> Result<MutexGuard<'_, T>, LockError> {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.try_lock() {
                Ok(Some(guard)) => return Ok(guard),
                Ok(None) | Err(LockError::WouldDeadlock) => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }
}

impl<T: Pod> Clone for SharedMutex<T> {
    fn clone(&self) -> Self {
        SharedMutex { raw: Arc::clone(&self.raw) }
    }
}

impl<T: Pod> fmt::Debug for SharedMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMutex")
            .field("value", &std::any::type_name::<T>())
            .field("segment", &self.raw.segment())
            .finish()
    }
}

impl<T: Pod> Serialize for SharedMutex<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let holds = [Arc::clone(self.raw.segment()) as Hold];
        let element = std::any::type_name::<T>();
        Outgoing { kind: Kind::Mutex, holds: &holds, element, element_size: size_of::<T>() }
            .serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedMutex<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let [index, _] = incoming(deserializer, Kind::Mutex, std::any::type_name::<T>(), size_of::<T>())?;
        let (_, len) = OfdMutex::<T>::layout();
        let opened = transfer::open(index, len, true).map_err(|e| SyncError::transfer(Kind::Mutex, e));
        let raw = opened
            .and_then(|segment| OfdMutex::adopt(segment).map_err(SyncError::Segment))
            .map_err(|e| D::Error::custom(crate::error_chain(&e)))?;
        Ok(SharedMutex { raw: Arc::new(raw) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{received, sent};
    use super::*;

    #[test]
    fn a_received_mutex_maps_the_same_value_and_lock() {
        let mutex = SharedMutex::new([1u32, 2]).unwrap();
        let (bytes, fds) = sent(&mutex);
        let copy: SharedMutex<[u32; 2]> = received(&bytes, fds).unwrap();
        copy.lock().unwrap()[1] = 20;
        let held = mutex.lock().unwrap();
        assert_eq!(*held, [1, 20]);
        let other = copy.clone();
        let busy =
            std::thread::spawn(move || other.lock_timeout(Duration::from_millis(10)).unwrap().is_none());
        assert!(busy.join().unwrap());
    }

    #[test]
    fn locking_twice_on_one_thread_says_so() {
        let mutex = SharedMutex::new(0u8).unwrap();
        let _held = mutex.lock().unwrap();
        assert!(matches!(mutex.lock(), Err(LockError::WouldDeadlock)));
        assert!(matches!(mutex.try_lock(), Err(LockError::WouldDeadlock)));
    }

    #[test]
    fn a_timeout_returns_none_after_about_the_timeout() {
        let mutex = SharedMutex::new(0u8).unwrap();
        let other = mutex.clone();
        let _held = mutex.lock().unwrap();
        let waited = std::thread::spawn(move || {
            let start = Instant::now();
            let none = other.lock_timeout(Duration::from_millis(300)).unwrap().is_none();
            (none, start.elapsed())
        });
        let (none, elapsed) = waited.join().unwrap();
        assert!(none);
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    }

    #[tokio::test]
    async fn async_lockers_on_one_thread_wait_for_each_other() {
        let mutex = SharedMutex::new(0u64).unwrap();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let mutex = mutex.clone();
                        tokio::task::spawn_local(async move {
                            for _ in 0..10 {
                                let mut guard = mutex.lock_async().await.unwrap();
                                let before = *guard;
                                tokio::task::yield_now().await;
                                *guard = before + 1;
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap();
                }
            })
            .await;
        assert_eq!(*mutex.lock().unwrap(), 40);
    }
}
