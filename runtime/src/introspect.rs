//! Introspection: what an ensemble process tells about itself, and the small endpoint on which
//! it tells it, for the `ensemble` command (`ensemble ps`, `ensemble stop`).
//!
//! Every ensemble process serves one endpoint: the root from its first [`crate::spawn`], each
//! child from its start. It is an `AF_UNIX` stream socket in the *abstract* namespace, named
//! `ensemble-<pid>` ([`endpoint_name`]): nothing on disk, gone with the process, so a killed
//! program leaves nothing behind and `/proc/net/unix` lists exactly the live ones
//! ([`discover`]). It is served on the runtime's I/O thread ([`crate::io_thread`]): actors are
//! never blocked by it.
//!
//! Contract of the endpoint:
//! - **Who may ask.** Abstract sockets ignore file modes, so each accepted connection's peer
//!   credentials (`SO_PEERCRED`, the kernel's) are checked: only our own uid, or root, is
//!   answered; anyone else is closed on without a word.
//! - **Protocol.** One request line (`info`, or `stop <pid>`), at most [`MAX_REQUEST`] bytes,
//!   answered with one JSON document ([`Answer`]) and the connection closed.
//! - **A misbehaving client cannot hurt the program.** A client has [`CLIENT_TIMEOUT`] to send
//!   its request and take the answer; at most [`MAX_CLIENTS`] are served at once, and more are
//!   closed at once; nothing a client sends is ever allocated beyond [`MAX_REQUEST`].
//! - **Opting out.** `ENSEMBLE_INTROSPECT=off` in the environment (inherited by children) keeps
//!   a process from serving an endpoint.
//!
//! What a process reports ([`ProcessInfo`]): its identity and uptime, its live children from the
//! runtime's registry of [`ChildRecord`]s (name, actor type, state, per-child call counters that
//! the actors layer feeds), what the layers above add about each child (a supervisor's restarts,
//! through a [`Provider`]), and the segments it holds (memfds named `memfd:ensemble:*` among its
//! descriptors, with their inode, so that a reader can tell who else holds the same one).

mod client;
mod counters;
mod endpoint;
mod registry;
mod segments;

pub use client::{discover, query, request_stop, QueryError};
pub use counters::CallCounters;
pub use endpoint::{peer_allowed, serve, serve_as_child};
pub use registry::{add_provider, snapshot, ChildRecord, Provider, StopChild};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The longest request line the endpoint reads.
pub const MAX_REQUEST: usize = 256;

/// The largest answer a client reads.
pub const MAX_ANSWER: usize = 4 << 20;

/// How long a client may take to send its request and read the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many clients the endpoint serves at once.
pub const MAX_CLIENTS: usize = 8;

/// The abstract socket name of process `pid`'s endpoint (without the leading NUL, which
/// `/proc/net/unix` shows as `@`).
pub fn endpoint_name(pid: u32) -> String {
    format!("ensemble-{pid}")
}

/// Whether a process is the program's root or a child started by [`crate::spawn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Started some other way (the program's `main`).
    Root,
    /// Started by a parent's [`crate::spawn`].
    Child,
}

/// Where an actor's process is in its life, as its parent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorState {
    /// Launched; the handshake or `pre_run` is under way.
    Starting,
    /// Ready and handling messages.
    Running,
    /// Asked to stop; finishing its calls and `post_run`.
    Stopping,
    /// Exited and reaped (never listed: the registry forgets it).
    Exited,
}

/// What one process answers to `info`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// The name given at spawn (a child), or the executable's name (the root).
    pub name: String,
    /// Root or child.
    pub role: Role,
    /// The actor type it runs (its registry key), for a child.
    pub actor: Option<String>,
    /// How long it has been running, in milliseconds.
    pub uptime_ms: u64,
    /// Its live children, in the order they were started.
    pub children: Vec<ChildInfo>,
    /// The segments (shared memory) it holds descriptors of.
    pub segments: Vec<SegmentInfo>,
}

/// One live child, as its parent sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildInfo {
    /// Its pid.
    pub pid: u32,
    /// The name given at spawn.
    pub name: String,
    /// The actor type it runs (its registry key).
    pub actor: String,
    /// Starting, running or stopping.
    pub state: ActorState,
    /// How long this process (this incarnation, for a supervised child) has run, in ms.
    pub uptime_ms: u64,
    /// The calls made to it from this process.
    pub calls: CallStats,
    /// What its supervisor says, when one of this process's supervisors runs it.
    pub supervision: Option<Supervision>,
}

/// A child's place under a supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervision {
    /// Which supervisor of the process (numbered from 1 in the order they were made).
    pub supervisor: u64,
    /// The child's name in the supervisor's spec.
    pub child: String,
    /// How many times the supervisor has restarted this child.
    pub restarts: u32,
    /// Its restart policy (`permanent`, `transient`, `temporary`).
    pub restart: String,
}

/// Counts of the calls made to one child, with a latency summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallStats {
    /// Calls that completed (with a reply or an error).
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Failed calls by kind (`exited`, `timeout`, `panicked`, ...).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The sum of the calls' durations, in seconds.
    pub seconds_sum: f64,
    /// The longest call, in seconds.
    pub seconds_max: f64,
    /// Cumulative buckets: how many calls took at most `le` seconds (the last is `+Inf`).
    pub buckets: Vec<Bucket>,
}

impl CallStats {
    /// The mean duration of a call, in seconds, when there were calls.
    pub fn mean_seconds(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.seconds_sum / self.calls as f64)
    }
}

/// One cumulative latency bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// The bucket's upper bound in seconds (`f64::INFINITY` is written as `null`).
    pub le: Option<f64>,
    /// Calls that took at most `le`.
    pub count: u64,
}

/// A segment (an ensemble memfd) the process holds a descriptor of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// The memfd's name, as the kernel shows it (`ensemble:...`).
    pub name: String,
    /// Its inode: the same in every process that holds it.
    pub inode: u64,
    /// Its size in bytes.
    pub size: u64,
    /// How many of this process's descriptors refer to it.
    pub descriptors: u32,
}

/// What the endpoint answers: one JSON document per request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// The answer to `info`.
    Info(ProcessInfo),
    /// The answer to `stop <pid>`: the stop was started; `how` says by whom.
    Stopping {
        /// The child being stopped.
        pid: u32,
        /// What was done (e.g. "stopped by its supervisor, which will not restart it").
        how: String,
    },
    /// The request was not understood or could not be carried out.
    Error {
        /// Why.
        message: String,
    },
}
