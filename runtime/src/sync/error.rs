//! The errors of the synchronisation primitives, one enum per family of operations: creating
//! and handing over ([`SyncError`], also the eventfd operations of events and semaphores, which
//! fail only when the kernel does), locking ([`LockError`]) and queueing ([`QueueError`]).

use crate::shm::SegmentError;
use crate::wire::WireError;
use std::io;

/// Why a primitive could not be created, sent or received, or why an event or semaphore
/// operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The kernel refused to create the primitive's descriptor (`EMFILE`, `ENFILE`, ...).
    #[error("could not create the {what}")]
    Create {
        /// "Event", "Semaphore", "Queue".
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A mutex's shared memory could not be created, or a received one is not a mutex's.
    #[error("the shared mutex's memory")]
    Segment(#[source] SegmentError),
    /// A handle was serialized or deserialized outside an ensemble message.
    #[error("synchronisation handles travel only inside ensemble messages")]
    OutsideMessage,
    /// A handle arrived without the descriptor it needs: handles cannot be made from bytes.
    #[error("a received {kind} has no descriptor (handles cannot be made from bytes)")]
    MissingDescriptor {
        /// The handle's type.
        kind: &'static str,
    },
    /// The descriptor that came with a handle is not the kind of object the handle needs.
    #[error("the descriptor of a received {kind} is not {needed}")]
    WrongDescriptor {
        /// The handle's type.
        kind: &'static str,
        /// What it had to be: "an eventfd", "a seqpacket socket".
        needed: &'static str,
    },
    /// A handle arrived as another type than it was sent as.
    #[error("{sent} was received as {expected}")]
    WrongType {
        /// What the sender sent.
        sent: String,
        /// What the receiver asked for.
        expected: String,
    },
    /// An eventfd operation (set, clear, wait, acquire) failed.
    #[error("an eventfd operation failed")]
    Io(#[source] io::Error),
}

/// Why a [`SharedMutex`](crate::sync::SharedMutex) could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// This thread holds the lock already (through this handle or a clone): locking it again
    /// would never return.
    #[error("this thread holds the lock already")]
    WouldDeadlock,
    /// The kernel refused the lock (`ENOLCK`: out of lock records).
    #[error("the lock failed")]
    Os(#[source] io::Error),
}

impl LockError {
    pub(crate) fn from_os(error: io::Error) -> LockError {
        match error.raw_os_error() {
            Some(libc::EDEADLK) => LockError::WouldDeadlock,
            _ => LockError::Os(error),
        }
    }
}

/// Why a [`Queue`](crate::sync::Queue) could not put or get a message.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The encoded message does not fit in one datagram. A queue is for small messages: put a
    /// `SharedSlice` or `SharedSliceMut` in the message for bulk data.
    #[error("a queue message of {size} bytes is over the {max} bytes one datagram can carry (put a SharedSlice in it for bulk data)")]
    TooLarge {
        /// Bytes of the encoded message.
        size: usize,
        /// The most one datagram of this queue carries.
        max: usize,
    },
    /// The message holds more handles (descriptors) than one datagram can carry.
    #[error("a queue message with {count} descriptors is over the {max} one datagram can carry")]
    TooManyDescriptors {
        /// Descriptors the message needs.
        count: usize,
        /// The most one datagram carries.
        max: usize,
    },
    /// The message's `Serialize` failed.
    #[error("the message could not be encoded")]
    Encode(#[source] WireError),
    /// The datagram taken from the queue is not a message of this queue's type (bytes from
    /// elsewhere, a message of another type, descriptors attached that its message does not
    /// name, or descriptors dropped by the kernel: `MSG_CTRUNC`, which also happens when this
    /// process's descriptor table is full). It was consumed; nothing else was lost.
    #[error("a malformed message of {len} bytes was taken from the queue and dropped")]
    Malformed {
        /// Bytes of the datagram.
        len: usize,
        /// What was wrong with it.
        #[source]
        source: WireError,
    },
    /// The message decoded, but a value in it was refused (by its type's own `Deserialize`, or
    /// a handle whose descriptor is missing or of the wrong kind). It was consumed.
    #[error("a message taken from the queue was refused")]
    Refused(#[source] WireError),
    /// The queue's socket failed.
    #[error("the queue's socket failed")]
    Io(#[source] io::Error),
}

/// Why [`Queue::try_put`](crate::sync::Queue::try_put) or
/// [`Queue::put_timeout`](crate::sync::Queue::put_timeout) did not put a message.
pub enum TryPutError<T> {
    /// The queue was full (until the timeout): the message was not put, and is handed back.
    Full(T),
    /// The message cannot be put at all (too large, ...); it was dropped.
    Failed(QueueError),
}

impl<T> TryPutError<T> {
    /// The message, when the queue was full.
    pub fn into_message(self) -> Option<T> {
        match self {
            TryPutError::Full(message) => Some(message),
            TryPutError::Failed(_) => None,
        }
    }
}

impl<T> std::fmt::Debug for TryPutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TryPutError::Full(_) => f.write_str("Full(..)"),
            TryPutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T> std::fmt::Display for TryPutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TryPutError::Full(_) => f.write_str("the queue is full"),
            TryPutError::Failed(_) => f.write_str("the message cannot be put"),
        }
    }
}

impl<T> std::error::Error for TryPutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TryPutError::Full(_) => None,
            TryPutError::Failed(e) => Some(e),
        }
    }
}
