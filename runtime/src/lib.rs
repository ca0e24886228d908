//! The substrate of ensemble: child processes, the handshake, the wire format and the transport
//! (AF_UNIX seqpacket sockets of its own, driven by tokio's reactor). It knows nothing of actix;
//! `ensemble-actors` builds the actors on it.
//!
//! - [`spawn()`] re-executes the current executable as a child and runs the handshake.
//! - [`Connection`] is the parent's end of a live child: calls, casts, events, stop, exit.
//! - [`child`] is the child's end: the bootstrap that runs before `main`, and the registry of
//!   actor types ([`child::ACTORS`]).
//! - [`wire`] defines the frames; [`transport`] carries them.
//! - [`introspect`] is what a process tells the `ensemble` command about itself.
//!
//! All `unsafe` code of ensemble lives in the private `sys` module.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod build;
pub mod child;
mod connection;
pub mod introspect;
pub mod io_thread;
pub mod logs;
mod outbox;
mod process;
pub mod ring;
pub mod shm;
mod spawn;
mod stderr_tail;
pub mod sync;
#[allow(unsafe_code)]
mod sys;
pub mod transport;
pub mod wire;

pub use build::{BuildId, PROTOCOL_VERSION};
pub use connection::{Body, CallFailure, Connection, Exited, PendingCall, ReadOn};
pub use outbox::{Outbox, SendError};
pub use process::{
    live_children, signal_name, wait_for_children, will_wait_for_children, ChildProcess, ExitInfo,
};
pub use spawn::{spawn, SpawnConfig, SpawnError, Spawned, DEFAULT_SEND_QUEUE, MIN_LINUX};
pub use sys::{ignore_signal, pin_to_cpu, set_thread_name};
pub use wire::Failure;

#[doc(hidden)]
pub mod __private {
    pub use linkme;
}

/// An error's message followed by those of its sources, joined with ": ".
///
/// # Examples
/// ```
/// let inner = std::io::Error::other("disk full");
/// let outer = ensemble_runtime::SpawnError::Launch(inner);
/// assert_eq!(ensemble_runtime::error_chain(&outer), "could not start the child process: disk full");
/// ```
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
