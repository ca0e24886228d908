//! [`Event`]: a flag any process holding it can set, clear and wait for (an eventfd).

use super::{incoming, open_checked, poll_ready, when_ready, Kind, Outgoing, SyncError};
use crate::shm::transfer::Hold;
use crate::sys::eventfd;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;

/// A flag shared by processes, like `multiprocessing.Event`: set, cleared, waited for.
///
/// An eventfd: its count above zero means "set". [`set`](Event::set) adds one,
/// [`clear`](Event::clear) takes the count, and waiting polls for readability without reading,
/// so a wait never consumes the event: every waiter of every process wakes. Send it in a
/// message (or an actor's initial state) to share it; clones share the one eventfd.
///
/// # Examples
/// ```
/// use ensemble_runtime::sync::Event;
/// use std::time::Duration;
/// let ready = Event::new()?;
/// let setter = ready.clone(); // in a real program: sent to another process in a message
/// std::thread::spawn(move || setter.set());
/// ready.wait()?;
/// assert!(ready.is_set());
/// ready.clear()?;
/// assert!(!ready.wait_timeout(Duration::from_millis(1))?);
/// # Ok::<(), ensemble_runtime::sync::SyncError>(())
/// ```
#[derive(Clone)]
pub struct Event {
    fd: Arc<OwnedFd>,
}

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    /// [`SyncError::Create`] when the kernel refuses an eventfd (descriptor table full).
    pub fn new() -> Result<Event, SyncError> {
        let fd = eventfd::create(0, false).map_err(|source| SyncError::Create { what: "Event", source })?;
        Ok(Event { fd: Arc::new(fd) })
    }

    /// Sets the event: every waiter wakes, and waits return at once until it is cleared.
    ///
    /// # Errors
    /// [`SyncError::Io`] when the write fails (never for a valid eventfd).
    pub fn set(&self) -> Result<(), SyncError> {
        eventfd::add(self.fd.as_fd(), 1).map_err(SyncError::Io)
    }

    /// Clears the event (whatever number of times it was set).
    ///
    /// # Errors
    /// [`SyncError::Io`] when the read fails (never for a valid eventfd).
    pub fn clear(&self) -> Result<(), SyncError> {
        eventfd::take(self.fd.as_fd()).map(drop).map_err(SyncError::Io)
    }

    /// Whether the event is set now.
    pub fn is_set(&self) -> bool {
        poll_ready(self.fd.as_fd(), Duration::ZERO, false).unwrap_or(false)
    }

    /// Blocks the thread until the event is set. Not on an arbiter others share: use
    /// [`wait_async`](Event::wait_async) there.
    ///
    /// # Errors
    /// [`SyncError::Io`] when `poll` fails.
    pub fn wait(&self) -> Result<(), SyncError> {
        while !self.wait_timeout(Duration::from_secs(3600))? {}
        Ok(())
    }

    /// Blocks the thread until the event is set or `timeout` has passed; returns whether it is
    /// set.
    ///
    /// # Errors
    /// [`SyncError::Io`] when `poll` fails.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, SyncError> {
        poll_ready(self.fd.as_fd(), timeout, false).map_err(SyncError::Io)
    }

    /// Waits until the event is set, without blocking the thread (tokio's reactor watches the
    /// eventfd).
    ///
    /// # Errors
    /// [`SyncError::Io`] when the reactor refuses the descriptor.
    ///
    /// # Panics
    /// Outside a tokio runtime with IO enabled (actix's runtime has it).
    ///
    /// # Cancel safety
    /// Cancel safe: waiting takes nothing.
    pub async fn wait_async(&self) -> Result<(), SyncError> {
        let set = || Ok(self.is_set().then_some(()));
        when_ready(self.fd.as_fd(), Interest::READABLE, set).await.map_err(SyncError::Io)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event").field("fd", &self.fd.as_raw_fd()).field("set", &self.is_set()).finish()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let holds = [Arc::clone(&self.fd) as Hold];
        Outgoing { kind: Kind::Event, holds: &holds, element: "", element_size: 0 }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let [index, _] = incoming(deserializer, Kind::Event, "", 0)?;
        let fd =
            open_checked(Kind::Event, index, "an eventfd without EFD_SEMAPHORE", eventfd::is_plain_eventfd)?;
        Ok(Event { fd: Arc::new(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{received, sent};
    use super::*;

    #[test]
    fn waiting_does_not_consume_the_event() {
        let event = Event::new().unwrap();
        assert!(!event.is_set());
        event.set().unwrap();
        event.set().unwrap();
        assert!(event.wait_timeout(Duration::ZERO).unwrap());
        event.wait().unwrap();
        assert!(event.is_set());
        event.clear().unwrap();
        assert!(!event.is_set());
        event.clear().unwrap();
    }

    #[test]
    fn a_received_event_is_the_same_eventfd() {
        let event = Event::new().unwrap();
        let (bytes, fds) = sent(&event);
        let copy: Event = received(&bytes, fds).unwrap();
        copy.set().unwrap();
        assert!(event.is_set());
    }

    #[tokio::test]
    async fn many_async_waiters_wake_when_another_thread_sets_it() {
        let event = Event::new().unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let event = event.clone();
                tokio::spawn(async move { event.wait_async().await })
            })
            .collect();
        tokio::task::yield_now().await;
        let setter = event.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            setter.set().unwrap();
        });
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
        }
    }
}
