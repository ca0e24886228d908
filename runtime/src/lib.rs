//! The substrate of ensemble: child processes, the handshake, the wire format and the transport
//! over ipc-channel. It knows nothing of actix; `ensemble-actors` builds the actors on it.
//!
//! - [`spawn()`] re-executes the current executable as a child and runs the handshake.
//! - [`Connection`] is the parent's end of a live child: calls, casts, events, stop, exit.
//! - [`child`] is the child's end: the bootstrap that runs before `main`, and the registry of
//!   actor types ([`child::ACTORS`]).
//! - [`wire`] defines the frames.
//!
//! All `unsafe` code of ensemble lives in the private `sys` module.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod build;
pub mod child;
mod connection;
mod outbox;
mod process;
mod receive;
pub mod shm;
mod spawn;
mod stderr_tail;
#[allow(unsafe_code)]
mod sys;
pub mod wire;

pub use build::{BuildId, PROTOCOL_VERSION};
pub use connection::{Body, CallFailure, Connection, Exited, PendingCall};
pub use outbox::{Outbox, SendError};
pub use process::{live_children, signal_name, wait_for_children, ChildProcess, ExitInfo};
pub use receive::{Closed, Receiver};
pub use spawn::{spawn, SpawnConfig, SpawnError, Spawned};
pub use sys::{ignore_signal, pin_to_cpu, set_thread_name};
pub use wire::Failure;

#[doc(hidden)]
pub mod __private {
    pub use ipc_channel;
    pub use linkme;
}
