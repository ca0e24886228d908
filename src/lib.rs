//! ensemble: actors that live in separate operating-system processes.
//!
//! A process actor is a serializable struct whose value is sent to a new child process, where
//! it handles typed messages on actix, one at a time. The parent holds a [`Remote`] handle:
//! [`Remote::send`] returns the typed reply, [`Remote::do_send`] fires and forgets,
//! [`Remote::events`] streams what the child pushes back, [`Remote::stop`] ends it cleanly.
//! This is valkka-multiprocess's `MessageProcess` (frontend methods, `c__` backend handlers,
//! `send_out__`) with types, timeouts, crash reports and no leftover processes.
//!
//! ```
//! use ensemble::prelude::*;
//!
//! #[derive(Serialize, Deserialize, ProcessActor)]
//! #[actor(handles(Greet))]
//! struct Greeter { greeting: String }
//!
//! #[derive(Serialize, Deserialize, RemoteMessage)]
//! #[rtype(result = "String")]
//! struct Greet(String);
//!
//! impl ProcessHandler<Greet> for Greeter {
//!     fn handle(&mut self, Greet(who): Greet, ctx: &mut ProcessContext<Self>) -> String {
//!         format!("{}, {who}, from process {}", self.greeting, ctx.pid())
//!     }
//! }
//!
//! #[ensemble::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let greeter = ensemble::spawn(Greeter { greeting: "hello".into() }).await?;
//!     let text = greeter.send(Greet("world".into())).await?;
//!     assert!(text.starts_with("hello, world, from process"));
//!     assert_ne!(greeter.pid(), std::process::id());
//!     greeter.stop().await?;
//!     Ok(())
//! }
//! ```
//!
//! # How a child starts
//! [`spawn`] re-executes the current executable (never a bare `fork`). A constructor that runs
//! before `main` recognises the re-executed process and turns it into the child, so children
//! work in any binary, in `cargo test` integration tests and in examples. Call [`init`] (or use
//! `#[ensemble::main]`) at the top of `main` anyway: it documents the fact, and it is what
//! makes the child start on a platform where constructors do not run.
//!
//! # Guarantees
//! - **Order.** Messages from one `Remote` (and its clones, from one thread) are handled in the
//!   order they were sent; events arrive in the order they were sent, interleaved correctly
//!   with replies.
//! - **No hang.** When the child exits or is killed, every pending call fails at once with
//!   [`CallError::Exited`] (exit code or signal, and the tail of the child's stderr), and every
//!   later call fails the same way. Spawning fails within the handshake and start timeouts.
//! - **Panics.** A handler that panics fails its call with [`CallError::Panicked`] (message and
//!   the child's backtrace); the actor keeps running with its state as the panic left it.
//!   A panic in a `do_send` handler is logged by the child.
//! - **Nothing handled twice.** A call is sent once; if the child dies after it was delivered,
//!   the call fails. A message that certainly never reached the child (its connection was
//!   already closed when it was sent) fails with [`CallError::Exited`] on a `Remote` and goes
//!   to the next incarnation on a `Supervised` handle or a farm.
//! - **A child cannot take its parent down.** Whatever a child writes on its connection, the
//!   parent does not panic, abort, allocate a size the child chose, or hang: a child that breaks
//!   the protocol is killed, and its calls fail with [`CallError::Protocol`]. Messages are
//!   limited to `SpawnOptions::max_message_size`; sending never blocks a thread
//!   ([`CallError::Full`] from `do_send` on a full queue; `send` waits for room).
//! - **No orphans, no zombies.** Every child is reaped by its parent. A child dies with its
//!   parent (`PR_SET_PDEATHSIG`, checked against a parent that died first) and exits when its
//!   parent's connection closes. Dropping the last `Remote` asks the child to stop (post_run runs)
//!   and kills it after its shutdown timeout, if this process lives that long: `#[ensemble::main]`
//!   waits for such children at the end of `main`; a `main` without it that returns at once
//!   takes them down with it, without post_run ([`Hooks`] says when post_run runs).
//! - **Streams and shared primitives.** A [`ring`]'s frames are never read half-written and a
//!   slot being read is never written; a killed peer is reported to the other end at once
//!   ([`ring::RingError::PeerGone`]), never a wait for ever. [`sync`]'s mutex is a kernel lock (a
//!   holder killed while holding it is reported to the next locker, never a deadlock); its
//!   queue's messages are single datagrams (a producer killed mid-put sent all or nothing).
//! - **The fast lane changes speed, nothing else.** An actor spawned with
//!   [`SpawnOptions::fast_lane`] keeps every guarantee above: order across frames in its rings
//!   and frames on its socket, a dead child failing its calls at once, garbage in the rings
//!   treated as a protocol violation. Its callers spin for their replies only while spinning
//!   can pay (never when both sides can only share one CPU), for at most 50 µs per wait.
//! - **Builds.** The handshake checks the protocol version and the identity of the
//!   executable; a child from another build is refused with [`SpawnError::BuildMismatch`].
//!
//! # Differences from actix
//! - Messages and actors must be `Serialize + Deserialize`: they cross a process boundary.
//! - The handler traits are [`ProcessHandler`] and [`AsyncProcessHandler`], and the messages an
//!   actor handles are listed in `#[actor(handles(...))]`; the names differ from actix's so that
//!   both preludes can be imported together. A handler's reply type is its message's `rtype`:
//!   there is no `type Result` in the impl. `Self::Context` is [`ProcessContext<Self>`].
//! - A farm's worker lists its task in `#[actor(batches(...))]`, not `handles`: a farm sends
//!   tasks in batches.
//! - Hooks are a trait of their own, [`Hooks`] (`pre_run`, `post_run`), not `Actor::started`.
//! - No actix system is needed to use actors: `spawn`, supervisors and farms work in a plain
//!   tokio runtime too (`#[tokio::main]`, axum, hyper), where a supervisor runs on a thread of
//!   its own. `#[ensemble::main]` adds an actix system and waits for stopping children at exit.
//! - [`Remote::send`] sends at once, not on first poll, and its future does not need an actix
//!   system: any tokio runtime with a timer will do.
//! - An actor's state lives in the child: the parent cannot borrow it, only message it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use ensemble_actors::{
    spawn, spawn_with, AsyncProcessHandler, Call, CallError, EventError, Events, Handles, HookError, Hooks,
    LaneConfig, LaneStats, NoEvents, ProcessActor, ProcessContext, ProcessHandler, Remote, RemoteMessage,
    SendOutError, SpawnOptions, StopError, Supervised, Supervisor, SupervisorHandle,
};

/// Supervision: restart policies, strategies, intensity, orderly shutdown (re-export of
/// `ensemble_actors::supervisor`; its docs list the guarantees).
pub use ensemble_actors::supervisor;
pub use ensemble_macros::{main, ProcessActor, RemoteMessage};
pub use ensemble_runtime::{ExitInfo, SpawnError};

/// Worker farms: map tasks over a supervised pool of processes (re-export of
/// `ensemble_actors::farm`; its docs list the guarantees).
pub use ensemble_actors::farm;
pub use ensemble_actors::{Farm, FarmConfig, TaskError};

/// Shared memory: segments, typed arrays and their hand-over (re-export of
/// `ensemble_runtime::shm`; its docs list the guarantees).
pub use ensemble_runtime::shm;
pub use ensemble_runtime::shm::{SegmentError, SharedSlice, SharedSliceMut};

/// Rings: streams of frames between processes through shared memory, without copying
/// (re-export of `ensemble_runtime::ring`; its docs list the guarantees).
pub use ensemble_runtime::ring;

/// Synchronisation that travels in messages: events, semaphores, shared mutexes, queues
/// (re-export of `ensemble_runtime::sync`; its docs list the guarantees).
pub use ensemble_runtime::sync;

/// What a program around process actors may need of the process substrate: CPU pinning,
/// waiting for the children of the process, names of signals and chains of errors, the
/// introspection client that `ensemble ps` uses, the build identity and a child's exit codes.
///
/// The rest of `ensemble-runtime` (connections, the wire format, the transport) is ensemble's
/// own machinery and not part of its API.
pub mod runtime {
    /// The introspection endpoint of every ensemble process, and its client (`ensemble ps`).
    pub use ensemble_runtime::introspect;
    pub use ensemble_runtime::{
        error_chain, ignore_signal, live_children, pin_to_cpu, set_thread_name, signal_name,
        wait_for_children, will_wait_for_children, Failure, MIN_LINUX,
    };

    /// The build identity that parent and child compare at the handshake.
    pub mod build {
        pub use ensemble_runtime::build::{BuildId, BUILD_SALT_ENV, PROTOCOL_VERSION};
    }

    /// The child's side of a process: whether this process is one, and its exit codes.
    pub mod child {
        pub use ensemble_runtime::child::{is_child, EXIT_BOOTSTRAP_FAILED};
    }
}

/// serde, re-exported: what messages are encoded with. Name it as `ensemble::serde` (in bounds,
/// in the modules of `#[serde(with = "..")]`) without a dependency of your own.
pub use serde;

/// bytemuck, re-exported: the `Pod` and `Zeroable` traits of shared arrays' elements, and its casts.
pub use bytemuck;

/// Timers: tokio's `time` module (through actix-rt): `sleep`, `timeout`, `interval`, `Instant`.
pub use actix_rt::time;

/// The common path: `use ensemble::prelude::*;`.
///
/// Besides ensemble's own types it carries what programs around process actors use:
/// [`StreamExt`](futures::StreamExt) (`events.next().await`), [`sleep`](crate::time::sleep)
/// (tokio's: `.await` it, in async code; a sync handler blocks with `std::thread::sleep`), and
/// the derives `Serialize`, `Deserialize` (serde's) and `Pod`, `Zeroable` (bytemuck's, for
/// your own element types of shared arrays). The derives are serde's and bytemuck's own, run
/// through ensemble, so a crate needs no `serde` or `bytemuck` dependency; they read
/// `#[serde(..)]` and `#[bytemuck(..)]` attributes as usual. A crate that has `serde` may use
/// `#[derive(serde::Serialize)]` instead; both implement the same trait.
///
/// # Examples
/// ```
/// use ensemble::prelude::*;
///
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[repr(C)]
/// struct Pixel { r: u8, g: u8, b: u8, a: u8 }
///
/// #[derive(Serialize, Deserialize, RemoteMessage)]
/// #[serde(rename_all = "camelCase")]
/// struct Paint { pixels: SharedSlice<Pixel>, fill_ratio: f32 }
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut pixels = SharedSliceMut::<Pixel>::new(4)?;
/// pixels[0] = Pixel { r: 255, g: 0, b: 0, a: 255 };
/// let mut ticks = futures::stream::iter([1, 2]);
/// while let Some(tick) = ticks.next().await {   // StreamExt
///     sleep(std::time::Duration::from_millis(tick)).await;
/// }
/// # Ok(()) }
/// ```
pub mod prelude {
    pub use crate::supervisor::{ChildSpec, Restart, Strategy, SupervisorConfig, WhileDown};
    pub use crate::time::sleep;
    pub use crate::{
        AsyncProcessHandler, CallError, HookError, Hooks, ProcessActor, ProcessContext, ProcessHandler,
        Remote, RemoteMessage, SpawnError, SpawnOptions, Supervised, Supervisor,
    };
    pub use crate::{Farm, FarmConfig, SharedSlice, SharedSliceMut, TaskError};
    pub use futures::{Stream, StreamExt};
    // The traits under their own paths, which name no derive; the derives are ensemble's.
    pub use ensemble_macros::{Deserialize, Pod, Serialize, Zeroable};
    pub use serde::{de::Deserialize, ser::Serialize};
    // bytemuck has no path that names its traits alone: the glob brings them, and the derives
    // imported above shadow the glob's.
    pub use bytemuck_traits::*;
    mod bytemuck_traits {
        pub use bytemuck::{Pod, Zeroable};
    }
}

/// Makes this process an ensemble child if it was started as one (and then never returns);
/// returns at once otherwise. Call it first thing in `main`.
///
/// # Examples
/// ```
/// ensemble::init(); // first thing in `main`
/// assert!(!ensemble::runtime::child::is_child());
/// ```
pub fn init() {
    ensemble_runtime::child::run_if_child();
}

#[doc(hidden)]
pub mod __private {
    pub use bytemuck;
    pub use ensemble_actors::__private::*;
    pub use ensemble_runtime::child::{ActorEntry, ACTORS};
    pub use linkme;
    pub use serde;

    use std::time::Duration;

    /// How long `#[ensemble::main]` waits, after `main`, for dropped actors to stop.
    const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

    /// The body of an async `#[ensemble::main]`.
    pub fn block_on_main<F: std::future::Future>(main: F) -> F::Output {
        finish_main(|| {
            actix_rt::System::new().block_on(async {
                let output = main.await;
                if let Err(e) = ensemble_actors::supervisor::shutdown_process_supervisor().await {
                    tracing::warn!("the process supervisor: {e}");
                }
                output
            })
        })
    }

    /// The body of a sync `#[ensemble::main]`.
    pub fn finish_main<R>(main: impl FnOnce() -> R) -> R {
        ensemble_runtime::will_wait_for_children();
        let output = main();
        let left = ensemble_runtime::wait_for_children(FINISH_TIMEOUT);
        if left > 0 {
            tracing::warn!("{left} child processes did not stop within {FINISH_TIMEOUT:?}");
        }
        output
    }
}

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
