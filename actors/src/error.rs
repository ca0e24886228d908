//! The errors of the actors crate: one per operation, each variant something the caller acts on
//! differently.

use ensemble_runtime::transport::ProtocolError;
use ensemble_runtime::{CallFailure, ExitInfo, Failure};
use std::time::Duration;

/// Why a call (`send`) or a `do_send` produced no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The handler panicked in the child. The actor keeps running.
    #[error("the handler panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
        /// The panic location and the backtrace captured in the child.
        backtrace: String,
    },
    /// The actor's process exited or was killed before it replied; every later call fails the
    /// same way.
    #[error("the actor's {0}")]
    Exited(ExitInfo),
    /// No reply within the deadline set with [`Call::timeout`](crate::Call::timeout). The
    /// handler may still run; its reply is discarded.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A message, reply or tag could not be decoded by the side that received it.
    #[error("could not decode {what}: {detail}")]
    Decode {
        /// What was being decoded (a type name, usually).
        what: String,
        /// The decoder's complaint.
        detail: String,
    },
    /// The message could not be encoded; nothing was sent.
    #[error("could not encode the message: {0}")]
    Encode(String),
    /// The supervised actor is down, waiting for a restart, and its handle was told not to
    /// wait ([`WhileDown::Fail`](crate::supervisor::WhileDown::Fail)).
    #[error("the actor is down, waiting for a restart")]
    Down,
    /// A stop was requested; the actor takes no new messages.
    #[error("the actor is stopping")]
    Stopping,
    /// The child reported another failure (e.g. a reply that could not be encoded).
    #[error("the call failed in the child: {0}")]
    Failed(String),
    /// The actor's process broke the protocol (wrote garbage on its connection, sent bytes that
    /// do not decode as what they claim to be): it was killed, and every call fails this way.
    #[error("the actor's process broke the protocol and was killed")]
    Protocol(#[source] ProtocolError),
    /// The actor's send queue is full (it is not reading): nothing was sent. `do_send` only;
    /// `send` waits for room instead.
    #[error("the actor's send queue is full")]
    Full,
    /// The actor's process had already closed its connection (it was exiting) when the message
    /// was sent: the message was certainly not delivered. A [`Supervised`](crate::supervisor::Supervised)
    /// handle and a farm send it again to the next incarnation instead of failing.
    #[error("the actor's process was exiting; the message was not delivered")]
    NotDelivered,
    /// The message is larger than the actor's `max_message_size`; nothing was sent.
    #[error("the message is over the size limit: {len} bytes or more, the limit is {limit} (SpawnOptions::max_message_size)")]
    TooLarge {
        /// How many bytes were encoded before the limit was passed.
        len: u64,
        /// The limit.
        limit: usize,
    },
}

impl From<CallFailure> for CallError {
    fn from(failure: CallFailure) -> Self {
        match failure {
            CallFailure::Remote(Failure::Panicked { message, backtrace }) => {
                CallError::Panicked { message, backtrace }
            }
            CallFailure::Remote(Failure::Decode { what, detail }) => CallError::Decode { what, detail },
            CallFailure::Remote(Failure::Error { message }) => CallError::Failed(message),
            CallFailure::Exited(info) => CallError::Exited(info),
            CallFailure::Stopping => CallError::Stopping,
            CallFailure::Encode(detail) => CallError::Encode(detail),
            CallFailure::Protocol(error) => CallError::Protocol(error),
            CallFailure::Full => CallError::Full,
            CallFailure::NotDelivered => CallError::NotDelivered,
            CallFailure::TooLarge { len, limit } => CallError::TooLarge { len, limit },
        }
    }
}

/// Why [`Remote::stop`](crate::Remote::stop) did not end in a clean exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    /// The actor did not exit within its shutdown timeout and was killed.
    #[error("the actor did not stop within {timeout:?} and was killed ({exit})")]
    Killed {
        /// The shutdown timeout.
        timeout: Duration,
        /// How the killed process ended.
        exit: ExitInfo,
    },
    /// The process had already ended, or ended with a non-zero status.
    #[error("the actor's {0}")]
    Exited(ExitInfo),
}

/// An event that arrived but could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not decode an event of type {what}: {detail}")]
pub struct EventError {
    /// The event type.
    pub what: &'static str,
    /// The decoder's complaint.
    pub detail: String,
}
