//! [`SharedMutex`]: a value in shared memory behind a robust process-shared lock.

use super::{incoming, Kind, LockError, Outgoing, SyncError};
use crate::shm::transfer::{self, Hold};
use crate::sys::robust_mutex::{MutexGuard, RobustMutex};
use bytemuck::Pod;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest single timed lock of [`SharedMutex::lock`]: a safety net against a lost wake-up.
const LOCK_SLICE: Duration = Duration::from_millis(250);
/// The first and the longest pause of [`SharedMutex::lock_async`] between two tries.
const FIRST_PAUSE: Duration = Duration::from_micros(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(1);

/// A `T` in shared memory behind a lock that every process holding a clone can take, like
/// `std::sync::Mutex<T>` across processes (or `multiprocessing.Lock` with a `Value`).
///
/// A glibc pthread mutex, process-shared and robust, at the start of a segment (an anonymous
/// memfd), followed by the value. Send the mutex in a message (or an actor's initial state)
/// to share it: the receiver maps the same memory. `T` is plain data ([`Pod`]): no pointers,
/// which would mean nothing in another process.
///
/// - **A holder that dies does not deadlock the others.** When a process (or thread) dies
///   holding the lock, the kernel marks it, and the next locker gets it with
///   [`MutexGuard::owner_died`] `== true`: the lock is repaired, but **the value may be
///   half-updated** by the dead holder. Check or repair it before trusting it.
/// - The guard is `!Send`: the thread that locked must unlock (glibc's rule).
/// - Locking twice from one thread is an error ([`LockError::WouldDeadlock`]), not a hang.
/// - [`lock`](Self::lock) blocks the thread (in timed slices, never an untimed futex wait);
///   [`lock_async`](Self::lock_async) never does: the kernel offers nothing pollable for a
///   futex, so it tries, then sleeps from 20 µs doubling to 1 ms between tries. Keep critical
///   sections short.
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
    raw: Arc<RobustMutex<T>>,
}

impl<T: Pod> SharedMutex<T> {
    /// A new unlocked mutex holding `value`, in a segment of its own.
    ///
    /// # Errors
    /// [`SyncError::Segment`] when the segment cannot be created (no memory, descriptor table
    /// full).
    pub fn new(value: T) -> Result<SharedMutex<T>, SyncError> {
        let raw = RobustMutex::create(value).map_err(SyncError::Segment)?;
        Ok(SharedMutex { raw: Arc::new(raw) })
    }

    /// Blocks the thread until the lock is taken. Not on an arbiter others share: use
    /// [`lock_async`](Self::lock_async) there.
    ///
    /// # Errors
    /// [`LockError::WouldDeadlock`] when this thread holds it already;
    /// [`LockError::NotRecoverable`]; [`LockError::Os`].
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, LockError> {
        loop {
            if let Some(guard) = self.raw.lock_timeout(LOCK_SLICE).map_err(LockError::from_os)? {
                return Ok(guard);
            }
        }
    }

    /// Takes the lock if it is free now.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn try_lock(&self) -> Result<Option<MutexGuard<'_, T>>, LockError> {
        self.raw.try_lock().map_err(LockError::from_os)
    }

    /// Blocks the thread until the lock is taken or `timeout` has passed: `None` on timeout.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<MutexGuard<'_, T>>, LockError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = deadline.map_or(LOCK_SLICE, |d| d.saturating_duration_since(Instant::now()));
            if let Some(guard) = self.raw.lock_timeout(left.min(LOCK_SLICE)).map_err(LockError::from_os)? {
                return Ok(Some(guard));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Takes the lock without blocking the thread: tries, then sleeps (20 µs doubling to
    /// 1 ms) on the current tokio runtime's timer, and tries again.
    ///
    /// Another task of this thread holding the lock is waited for like any other holder (to
    /// glibc, they are one owner); a task that awaits a lock it holds itself waits forever, as
    /// with `tokio::sync::Mutex`.
    ///
    /// # Errors
    /// [`LockError::NotRecoverable`]; [`LockError::Os`].
    ///
    /// # Panics
    /// Outside a tokio runtime with a timer (actix's runtime has one).
    ///
    /// # Cancel safety
    /// Cancel safe: the lock is taken only in the poll that returns the guard.
    pub async fn lock_async(&self) -> Result<MutexGuard<'_, T>, LockError> {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.raw.try_lock().map_err(LockError::from_os) {
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
        let (_, len) = RobustMutex::<T>::layout();
        let opened = transfer::open(index, len, true).map_err(|e| SyncError::transfer(Kind::Mutex, e));
        let raw = opened
            .and_then(|segment| RobustMutex::adopt(segment).map_err(SyncError::Segment))
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
