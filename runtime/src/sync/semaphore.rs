//! [`Semaphore`]: permits counted by the kernel (an `EFD_SEMAPHORE` eventfd), shared by
//! processes.

use super::{incoming, open_checked, poll_ready, when_ready, Kind, Outgoing, SyncError};
use crate::shm::transfer::Hold;
use crate::sys::eventfd;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;

/// A counting semaphore shared by processes, like `multiprocessing.Semaphore`.
///
/// An `EFD_SEMAPHORE` eventfd: its count is the number of free permits; acquiring reads one
/// (without blocking, after a `poll` for readability), releasing writes one. Each acquire gives
/// a [`SemaphorePermit`] that releases on drop. Send it in a message to share it; clones share
/// the one eventfd.
///
/// **Permits held by a process that dies do not come back.** The kernel counts permits, not
/// holders: it does not know who took one. If workers may crash while holding permits, let
/// the supervisor that sees a death give them back with [`add_permits`](Semaphore::add_permits)
/// (it knows how many the dead worker could hold: one per task it was running), or keep the
/// count per holder yourself (pid and start time) and reconcile it.
///
/// # Examples
/// ```
/// use ensemble_runtime::sync::Semaphore;
/// let slots = Semaphore::new(2)?;
/// let a = slots.acquire()?;
/// let b = slots.try_acquire()?.expect("a second permit");
/// assert!(slots.try_acquire()?.is_none(), "both taken");
/// drop(a);
/// let c = slots.try_acquire()?.expect("a's permit came back");
/// c.forget(); // stays taken
/// drop(b);
/// # Ok::<(), ensemble_runtime::sync::SyncError>(())
/// ```
#[derive(Clone)]
pub struct Semaphore {
    fd: Arc<OwnedFd>,
}

/// A permit of a [`Semaphore`], given back when dropped (unless [forgotten](Self::forget)).
#[must_use = "a permit is given back as soon as it is dropped"]
pub struct SemaphorePermit {
    semaphore: Semaphore,
    forgotten: bool,
}

impl Semaphore {
    /// A new semaphore with `permits` free permits.
    ///
    /// # Errors
    /// [`SyncError::Create`] when the kernel refuses an eventfd (descriptor table full).
    pub fn new(permits: u32) -> Result<Semaphore, SyncError> {
        let fd = eventfd::create(permits, true)
            .map_err(|source| SyncError::Create { what: "Semaphore", source })?;
        Ok(Semaphore { fd: Arc::new(fd) })
    }

    /// Takes a permit if one is free now.
    ///
    /// # Errors
    /// [`SyncError::Io`] when the read fails (never for a valid eventfd).
    pub fn try_acquire(&self) -> Result<Option<SemaphorePermit>, SyncError> {
        let taken = eventfd::take(self.fd.as_fd()).map_err(SyncError::Io)?;
        Ok(taken.map(|_| SemaphorePermit { semaphore: self.clone(), forgotten: false }))
    }

    /// Blocks the thread until a permit is free, and takes it. Not on an arbiter others share:
    /// use [`acquire_async`](Semaphore::acquire_async) there.
    ///
    /// # Errors
    /// [`SyncError::Io`] when `poll` or the read fails.
    pub fn acquire(&self) -> Result<SemaphorePermit, SyncError> {
        loop {
            if let Some(permit) = self.acquire_timeout(Duration::from_secs(3600))? {
                return Ok(permit);
            }
        }
    }

    /// Blocks the thread until a permit is free or `timeout` has passed: `None` on timeout.
    ///
    /// # Errors
    /// [`SyncError::Io`] when `poll` or the read fails.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<SemaphorePermit>, SyncError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(permit) = self.try_acquire()? {
                return Ok(Some(permit));
            }
            let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
            // Readable means "a permit was free": another process may take it first, so try again.
            if left.is_zero() || !poll_ready(self.fd.as_fd(), left, false).map_err(SyncError::Io)? {
                return Ok(None);
            }
        }
    }

    /// Waits until a permit is free and takes it, without blocking the thread (tokio's reactor
    /// watches the eventfd).
    ///
    /// # Errors
    /// [`SyncError::Io`] when the reactor refuses the descriptor or the read fails.
    ///
    /// # Panics
    /// Outside a tokio runtime with IO enabled (actix's runtime has it).
    ///
    /// # Cancel safety
    /// Cancel safe: a permit is taken only in the poll that returns it.
    pub async fn acquire_async(&self) -> Result<SemaphorePermit, SyncError> {
        let fd = self.fd.as_fd();
        let take = || eventfd::take(fd).map(|taken| taken.map(drop));
        when_ready(fd, Interest::READABLE, take).await.map_err(SyncError::Io)?;
        Ok(SemaphorePermit { semaphore: self.clone(), forgotten: false })
    }

    /// Adds `n` free permits: to raise the limit, or to give back the permits of a process
    /// that died holding them.
    ///
    /// # Errors
    /// [`SyncError::Io`] when the write fails (never for a valid eventfd).
    pub fn add_permits(&self, n: u64) -> Result<(), SyncError> {
        if n == 0 {
            return Ok(());
        }
        eventfd::add(self.fd.as_fd(), n).map_err(SyncError::Io)
    }
}

impl SemaphorePermit {
    /// Keeps the permit taken: it is not given back on drop (see
    /// [`Semaphore::add_permits`] to give it back later).
    pub fn forget(mut self) {
        self.forgotten = true;
    }
}

impl Drop for SemaphorePermit {
    fn drop(&mut self) {
        if !self.forgotten {
            // Cannot fail for a valid eventfd; a permit that could not be given back is lost,
            // as it would be if this process died.
            let _ = self.semaphore.add_permits(1);
        }
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore").field("fd", &self.fd.as_raw_fd()).finish()
    }
}

impl fmt::Debug for SemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").field("semaphore", &self.semaphore).finish()
    }
}

impl Serialize for Semaphore {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let holds = [Arc::clone(&self.fd) as Hold];
        Outgoing { kind: Kind::Semaphore, holds: &holds, element: "", element_size: 0 }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let [index, _] = incoming(deserializer, Kind::Semaphore, "", 0)?;
        let fd =
            open_checked(Kind::Semaphore, index, "an EFD_SEMAPHORE eventfd", eventfd::is_semaphore_eventfd)?;
        Ok(Semaphore { fd: Arc::new(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{received, sent};
    use super::*;

    #[test]
    fn permits_are_taken_one_at_a_time_and_come_back_on_drop() {
        let semaphore = Semaphore::new(2).unwrap();
        let a = semaphore.try_acquire().unwrap().unwrap();
        let b = semaphore.acquire_timeout(Duration::from_secs(1)).unwrap().unwrap();
        assert!(semaphore.acquire_timeout(Duration::from_millis(5)).unwrap().is_none());
        drop(a);
        b.forget();
        let c = semaphore.acquire().unwrap();
        assert!(semaphore.try_acquire().unwrap().is_none(), "b was forgotten");
        drop(c);
        semaphore.add_permits(1).unwrap();
        let _both = (semaphore.try_acquire().unwrap().unwrap(), semaphore.try_acquire().unwrap().unwrap());
    }

    #[test]
    fn a_received_semaphore_shares_the_permits() {
        let semaphore = Semaphore::new(1).unwrap();
        let (bytes, fds) = sent(&semaphore);
        let copy: Semaphore = received(&bytes, fds).unwrap();
        let permit = copy.try_acquire().unwrap().unwrap();
        assert!(semaphore.try_acquire().unwrap().is_none());
        drop(permit);
        assert!(semaphore.try_acquire().unwrap().is_some());
    }

    #[tokio::test]
    async fn an_async_acquire_waits_for_a_release_elsewhere() {
        let semaphore = Semaphore::new(0).unwrap();
        let giver = semaphore.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            giver.add_permits(1).unwrap();
        });
        let permit = tokio::time::timeout(Duration::from_secs(10), semaphore.acquire_async()).await;
        permit.unwrap().unwrap().forget();
        assert!(semaphore.try_acquire().unwrap().is_none());
    }
}
