//! Synchronisation primitives that travel in messages: [`Event`], [`Semaphore`],
//! [`SharedMutex`] and [`Queue`].
//!
//! Python's `multiprocessing.Lock` and `Queue` work when a child inherits them and fail when
//! they are passed to a `Pool` ("Lock objects should only be shared between processes through
//! inheritance"), because what makes them work is a descriptor or a named semaphore that only a
//! fork copies. Here each primitive is a kernel object whose descriptor travels attached to the
//! frame that carries its handle, like a [`SharedSliceMut`](crate::shm::SharedSliceMut): put one
//! in an actor's initial state, in a task of a farm, in a reply, an event, or even in a
//! [`Queue`] message, and the receiver holds the same object. No manager process, no names.
//!
//! | type | kernel object | like |
//! |---|---|---|
//! | [`Event`] | an eventfd (count > 0 is "set") | `multiprocessing.Event`, `threading.Event` |
//! | [`Semaphore`] | an `EFD_SEMAPHORE` eventfd | `multiprocessing.Semaphore`, `tokio::sync::Semaphore` |
//! | [`SharedMutex<T>`] | a `T` in a memfd, locked with an open-file-description lock on it | `std::sync::Mutex<T>`, `multiprocessing.Lock` + `Value` |
//! | [`Queue<T>`] | a `SOCK_SEQPACKET` socket pair, one datagram per message | `multiprocessing.Queue` |
//!
//! Guarantees, and what differs:
//! - Handles are `Clone` (cheap: clones share the descriptors), `Send` and `Sync`; one lock or
//!   queue can be handed to any number of processes. The kernel object lives while any process
//!   holds a descriptor of it (or one waits in a socket's queue), and goes with the last.
//! - A handle is serialized only inside an ensemble message (elsewhere it is an error, so that
//!   handles are not forged from bytes), decoded only with its descriptor, and a received
//!   descriptor is checked to be the right kind of object (an eventfd, a seqpacket socket, a
//!   memfd of the right size holding a mutex; an eventfd with `EFD_SEMAPHORE` for a semaphore and
//!   without for an event, where `/proc/self/fdinfo` says) before use.
//! - Whatever a peer holding the same object does to it (writes in a mutex's memory, clears
//!   `O_NONBLOCK` on a shared eventfd, sends oversized or odd datagrams on a queue) cannot make
//!   this process crash or hang in a `try_` form or past a timeout; it can only change the
//!   values it shares (and a mutex's `owner_died` flag).
//! - Every operation comes in four forms: `try_` (never waits), blocking, `_timeout`, and
//!   `_async`. Blocking waits are `poll` loops with bounded slices (never an untimed futex
//!   wait); async waits never block the thread: descriptors are watched by tokio's reactor, and
//!   the mutex, which the kernel offers nothing pollable for, is tried with a short backoff
//!   (its blocking forms too). Do not call the blocking forms on an actix arbiter that others
//!   share.
//! - What a crash does: a mutex whose holder dies is released by the kernel and taken by the
//!   next locker, which is told ([`MutexGuard::owner_died`]); a semaphore permit held by a dead
//!   process is lost (see [`Semaphore`]); a queue message is one datagram, so a producer
//!   killed mid-put has sent all of it or none of it.

mod error;
mod event;
mod mutex;
mod queue;
mod semaphore;

pub use crate::sys::ofd_mutex::MutexGuard;
pub use error::{LockError, QueueError, SyncError, TryPutError};
pub use event::Event;
pub use mutex::SharedMutex;
pub use queue::Queue;
pub use semaphore::{Semaphore, SemaphorePermit};

use crate::shm::transfer::{self, Hold};
use crate::shm::SegmentError;
use crate::sys::{reactor, socket};
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};
use tokio::io::Interest;

/// The longest single `poll` of a blocking wait: a safety net, so that no wait depends on one
/// wake-up alone.
const POLL_SLICE: Duration = Duration::from_millis(250);

/// Which primitive a handle is, on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Event,
    Semaphore,
    Mutex,
    Queue,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Event => "Event",
            Kind::Semaphore => "Semaphore",
            Kind::Mutex => "SharedMutex",
            Kind::Queue => "Queue",
        }
    }
}

/// A handle as it travels: what it is, which of the frame's descriptors are its own, and the
/// type it holds (for a mutex or a queue).
#[derive(Serialize, Deserialize)]
struct HandleWire {
    kind: Kind,
    descriptors: [u32; 2],
    element: String,
    element_size: u64,
}

/// What a handle's `Serialize` needs: its kind, its holds (one or two) and its element type.
struct Outgoing<'a> {
    kind: Kind,
    holds: &'a [Hold],
    element: &'static str,
    element_size: usize,
}

impl Outgoing<'_> {
    fn serialize<S: Serializer>(self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut descriptors = [0; 2];
        for (descriptor, held) in descriptors.iter_mut().zip(self.holds) {
            *descriptor = transfer::hold_any(held.clone())
                .map_err(|e| S::Error::custom(crate::error_chain(&SyncError::transfer(self.kind, e))))?;
        }
        let wire = HandleWire {
            kind: self.kind,
            descriptors,
            element: self.element.to_owned(),
            element_size: self.element_size as u64,
        };
        wire.serialize(serializer)
    }
}

/// Decodes a handle's wire form, checking that it is a `kind` holding `element`.
fn incoming<'de, D: Deserializer<'de>>(
    deserializer: D,
    kind: Kind,
    element: &'static str,
    element_size: usize,
) -> Result<[u32; 2], D::Error> {
    let wire = HandleWire::deserialize(deserializer)?;
    if wire.kind != kind || wire.element != element || wire.element_size != element_size as u64 {
        let sent = describe(wire.kind, &wire.element, wire.element_size);
        let expected = describe(kind, element, element_size as u64);
        return Err(D::Error::custom(SyncError::WrongType { sent, expected }));
    }
    Ok(wire.descriptors)
}

/// "Event", or "SharedMutex<u32> (4 bytes)".
fn describe(kind: Kind, element: &str, size: u64) -> String {
    match element {
        "" => kind.name().to_owned(),
        _ => format!("{}<{element}> ({size} bytes)", kind.name()),
    }
}

/// The receiver's own copy of the descriptor at `index`, checked by `is_kind`.
fn open_checked<E: serde::de::Error>(
    kind: Kind,
    index: u32,
    needed: &'static str,
    is_kind: fn(BorrowedFd<'_>) -> bool,
) -> Result<OwnedFd, E> {
    let fd =
        transfer::open_fd(index).map_err(|e| E::custom(crate::error_chain(&SyncError::transfer(kind, e))))?;
    if !is_kind(fd.as_fd()) {
        return Err(E::custom(SyncError::WrongDescriptor { kind: kind.name(), needed }));
    }
    Ok(fd)
}

impl SyncError {
    fn transfer(kind: Kind, error: SegmentError) -> SyncError {
        match error {
            SegmentError::OutsideMessage => SyncError::OutsideMessage,
            SegmentError::MissingDescriptor => SyncError::MissingDescriptor { kind: kind.name() },
            other => SyncError::Segment(other),
        }
    }
}

/// Whether `fd` becomes readable (or, with `writable`, writable) within `timeout`, polling in
/// slices of at most [`POLL_SLICE`].
fn poll_ready(fd: BorrowedFd<'_>, timeout: Duration, writable: bool) -> io::Result<bool> {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map_or(POLL_SLICE, |d| d.saturating_duration_since(Instant::now()));
        let slice = left.min(POLL_SLICE);
        let ready = if writable {
            socket::wait_writable(fd, slice)?
        } else {
            socket::wait_readable(&[fd], slice)?.is_some()
        };
        if ready {
            return Ok(true);
        }
        if left.is_zero() {
            return Ok(false);
        }
    }
}

/// Runs `attempt` until it gives a value, waiting in between for `fd` to be readable or
/// writable (per `interest`) on the current tokio runtime's reactor, never blocking the thread.
/// `fd` is duplicated for the registration, so that any number of tasks may wait on one handle.
async fn when_ready<R>(
    fd: BorrowedFd<'_>,
    interest: Interest,
    mut attempt: impl FnMut() -> io::Result<Option<R>>,
) -> io::Result<R> {
    if let Some(done) = attempt()? {
        return Ok(done);
    }
    let registration = reactor::register_for(fd.try_clone_to_owned()?, interest)?;
    loop {
        let mut ready = if interest.is_writable() {
            registration.writable().await?
        } else {
            registration.readable().await?
        };
        if let Some(done) = attempt()? {
            return Ok(done);
        }
        // Edge-triggered: cleared only after an attempt found nothing (tokio keeps a readiness
        // that arrived since `readable()` returned).
        ready.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `value` as a message would, and gives the bytes and the descriptors to attach.
    pub(super) fn sent<V: Serialize>(value: &V) -> (Vec<u8>, Vec<OwnedFd>) {
        let (bytes, holds) = transfer::collecting_holds(|| bincode::serialize(value).unwrap());
        let fds = holds.iter().map(|h| h.fd().try_clone_to_owned().unwrap()).collect();
        (bytes, fds)
    }

    /// Decodes what [`sent`] gave, as a receiver would.
    pub(super) fn received<V: serde::de::DeserializeOwned>(
        bytes: &[u8],
        fds: Vec<OwnedFd>,
    ) -> bincode::Result<V> {
        transfer::receiving(fds, || bincode::deserialize::<V>(bytes)).0
    }

    #[test]
    fn handles_cannot_be_serialized_outside_a_message() {
        let event = Event::new().unwrap();
        let err = bincode::serialize(&event).unwrap_err().to_string();
        assert!(err.contains("only inside ensemble messages"), "{err}");
        let queue = Queue::<u8>::new().unwrap();
        assert!(bincode::serialize(&queue).is_err());
    }

    #[test]
    fn handles_forged_from_bytes_are_refused() {
        let (bytes, _fds) = sent(&Semaphore::new(1).unwrap());
        let err = received::<Semaphore>(&bytes, Vec::new()).unwrap_err().to_string();
        assert!(err.contains("a received Semaphore has no descriptor"), "{err}");
    }

    #[test]
    fn a_handle_received_as_another_kind_or_type_names_both() {
        let (bytes, fds) = sent(&Event::new().unwrap());
        let err = received::<Semaphore>(&bytes, fds).unwrap_err().to_string();
        assert!(err.contains("Event was received as Semaphore"), "{err}");
        let (bytes, fds) = sent(&SharedMutex::new(1u32).unwrap());
        let err = received::<SharedMutex<u64>>(&bytes, fds).unwrap_err().to_string();
        assert!(
            err.contains("SharedMutex<u32> (4 bytes) was received as SharedMutex<u64> (8 bytes)"),
            "{err}"
        );
    }

    #[test]
    fn a_descriptor_of_the_wrong_kind_is_refused() {
        let (bytes, _) = sent(&Event::new().unwrap());
        let (socket, _peer) = socket::seqpacket_pair().unwrap();
        let err = received::<Event>(&bytes, vec![socket]).unwrap_err().to_string();
        assert!(err.contains("the descriptor of a received Event is not an eventfd"), "{err}");
        if crate::sys::eventfd::is_semaphore(crate::sys::eventfd::create(0, true).unwrap().as_fd()).is_some()
        {
            let (bytes, _) = sent(&Event::new().unwrap());
            let fds = vec![crate::sys::eventfd::create(0, true).unwrap()];
            let err = received::<Event>(&bytes, fds).unwrap_err().to_string();
            assert!(err.contains("a received Event is not an eventfd without EFD_SEMAPHORE"), "{err}");
            let (bytes, _) = sent(&Semaphore::new(0).unwrap());
            let fds = vec![crate::sys::eventfd::create(0, false).unwrap()];
            let err = received::<Semaphore>(&bytes, fds).unwrap_err().to_string();
            assert!(err.contains("a received Semaphore is not an EFD_SEMAPHORE eventfd"), "{err}");
        }
        let (bytes, _) = sent(&Queue::<u8>::new().unwrap());
        let fds = vec![
            crate::sys::eventfd::create(0, false).unwrap(),
            crate::sys::eventfd::create(0, false).unwrap(),
        ];
        let err = received::<Queue<u8>>(&bytes, fds).unwrap_err().to_string();
        assert!(err.contains("is not a seqpacket socket"), "{err}");
    }

    #[test]
    fn clones_travel_as_one_descriptor() {
        let event = Event::new().unwrap();
        let (_, fds) = sent(&vec![event.clone(), event]);
        assert_eq!(fds.len(), 1);
        let queue = Queue::<u8>::new().unwrap();
        let (_, fds) = sent(&(queue.clone(), queue));
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn a_poll_times_out_then_sees_readiness() {
        let fd = crate::sys::eventfd::create(0, false).unwrap();
        assert!(!poll_ready(fd.as_fd(), Duration::from_millis(5), false).unwrap());
        crate::sys::eventfd::add(fd.as_fd(), 1).unwrap();
        assert!(poll_ready(fd.as_fd(), Duration::from_secs(5), false).unwrap());
        assert!(poll_ready(fd.as_fd(), Duration::ZERO, false).unwrap());
    }
}
