//! Supervision: a supervisor actor starts process actors, restarts them when they exit, and
//! stops them in order, with Erlang/OTP's semantics.
//!
//! Build a [`Supervisor`], [`add`](Supervisor::add) children (each gives a [`Supervised`]
//! handle that survives restarts), [`start`](Supervisor::start) it, and either
//! [`run_until_signal`](SupervisorHandle::run_until_signal) (what valkka's `MainContext` loop
//! does) or [`shutdown`](SupervisorHandle::shutdown) when done; [`Background`] runs one on a
//! thread of its own. A supervisor is an actix actor: on an actix arbiter (`#[ensemble::main]`,
//! `#[actix_rt::main]`, actix-web) it runs there, and in a plain tokio runtime (`#[tokio::main]`,
//! axum) on a thread of its own with its own actix system. Any process can host one; a child process that does supervises its own children (a tree).
//! [`process_supervisor`] is every process's own, started on first use and shut down in order
//! when the process ends.
//!
//! # Guarantees
//! - **What a crash does.** When a child's process exits, its calls in flight fail with
//!   [`CallError::Exited`](crate::CallError::Exited) (code or signal). By its [`Restart`]
//!   policy, it is started again (`Permanent`: always; `Transient`: after an abnormal exit;
//!   `Temporary`: never), together with its group by the [`Strategy`]. Meanwhile its handles
//!   wait or fail with [`CallError::Down`](crate::CallError::Down), by its [`WhileDown`].
//! - **Nothing is retried.** A call that failed because the child died is not sent again.
//! - **Intensity.** More than `max_restarts` restarts within `within` (failed starts count):
//!   the supervisor stops every child and gives up. The root reports it through
//!   [`SupervisorHandle::wait`] and [`SupervisorHandle::run_until_signal`]
//!   ([`SupervisorError::GaveUp`]); a supervisor inside a child process exits that process
//!   with [`EXIT_ESCALATED`], so that its own parent sees the failure.
//! - **Order.** Children start in the order they were added. On shutdown, and when a
//!   strategy stops a group, they stop in reverse order; each gets a graceful stop (`post_run`
//!   runs) and is killed after its shutdown timeout. Every child is reaped.
//! - **Signals.** [`SupervisorHandle::run_until_signal`] turns SIGINT and SIGTERM into that
//!   orderly shutdown. Children ignore SIGINT (a terminal's Ctrl-C reaches the whole process
//!   group; the root decides). If the root is killed outright, every descendant dies with it.

mod child;
mod core;
mod error;
mod events;
mod handle;
mod process;
mod registry;
mod slot;
mod spec;

pub use self::core::EXIT_ESCALATED;
pub use error::SupervisorError;
pub use events::{SupervisorEvent, SupervisorEvents};
pub use handle::{Background, SupervisorHandle};
pub use process::{process_supervisor, shutdown_process_supervisor};
pub use slot::{Supervised, SupervisedCall};
pub use spec::{
    Backoff, ChildSpec, Intensity, Reap, Restart, StopOrder, Strategy, SupervisorConfig, WhileDown,
};

use self::child::{Child, TypedChild};
use self::core::SupervisorActor;
use crate::actor::ProcessActor;
use actix::Actor;
use futures::channel::{mpsc, oneshot};
use std::sync::Arc;

/// A supervisor being built: its configuration and first children.
///
/// # Examples
/// ```
/// use ensemble::prelude::*;
/// use ensemble::supervisor::{ChildSpec, Supervisor, SupervisorConfig, Strategy};
///
/// #[derive(Serialize, Deserialize, ProcessActor)]
/// #[actor(handles(Ping))]
/// struct Worker;
///
/// #[derive(Serialize, Deserialize, RemoteMessage)]
/// #[rtype(result = "u32")]
/// struct Ping;
///
/// impl ProcessHandler<Ping> for Worker {
///     fn handle(&mut self, _: Ping, ctx: &mut ProcessContext<Self>) -> u32 { ctx.pid() }
/// }
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut supervisor = Supervisor::new(SupervisorConfig { strategy: Strategy::OneForOne, ..Default::default() });
/// let worker = supervisor.add(ChildSpec::new("worker", || Worker));
/// let root = supervisor.start().await?;
/// let first = worker.send(Ping).await?;
/// let crashed = worker.remote().unwrap();
/// crashed.kill();                                  // crash it
/// crashed.exited().await;
/// let second = worker.send(Ping).await?;           // waits for the restart
/// assert_ne!(first, second);
/// root.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Supervisor {
    config: SupervisorConfig,
    children: Vec<Arc<dyn Child>>,
    subscribers: Vec<mpsc::UnboundedSender<SupervisorEvent>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("config", &self.config)
            .field("children", &self.children.len())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor with `config` and no children yet.
    pub fn new(config: SupervisorConfig) -> Self {
        Supervisor { config, children: Vec::new(), subscribers: Vec::new() }
    }

    /// Adds a child, started by [`Supervisor::start`] after those added before it.
    pub fn add<A: ProcessActor>(&mut self, spec: ChildSpec<A>) -> Supervised<A> {
        let (handle, child) = erase(spec);
        self.children.push(child);
        handle
    }

    /// The events of this supervisor, from its first start on.
    pub fn events(&mut self) -> SupervisorEvents {
        let (tx, rx) = mpsc::unbounded();
        self.subscribers.push(tx);
        SupervisorEvents { rx }
    }

    /// Starts the supervisor actor and its children in order.
    ///
    /// The supervisor is an actix actor. On an actix arbiter (`#[ensemble::main]`,
    /// `#[actix_rt::main]`, an actix-web worker) it runs there. Anywhere else (a plain tokio
    /// runtime: `#[tokio::main]`, an axum or hyper service) it runs on a thread of its own with
    /// its own actix system, as [`Background`] does; that thread ends when the supervisor does
    /// ([`SupervisorHandle::shutdown`], or giving up). Either way the handle and the
    /// [`Supervised`] handles work from any thread and runtime.
    ///
    /// # Errors
    /// [`SupervisorError::Start`] when a child cannot be started; those started already are
    /// stopped again. [`SupervisorError::Gone`] when its thread could not be started.
    pub async fn start(self) -> Result<SupervisorHandle, SupervisorError> {
        if !on_actix_arbiter() {
            let (_thread, started) = start_on_own_thread(self)?;
            return started.await.map_err(|_| SupervisorError::Gone)?;
        }
        self.start_here().await
    }

    /// Starts the supervisor on the current actix arbiter.
    async fn start_here(self) -> Result<SupervisorHandle, SupervisorError> {
        let addr = SupervisorActor::new(self.config, self.subscribers).start();
        let handle = SupervisorHandle { addr };
        for child in self.children {
            let name = child.name().to_owned();
            if let Err(error) = handle.add_child(child).await {
                let _ = handle.shutdown().await;
                return Err(SupervisorError::Start { child: name, error: std::sync::Arc::new(error) });
            }
        }
        Ok(handle)
    }
}

/// Whether this thread runs an actix arbiter (where `Actor::start` may spawn its local task).
fn on_actix_arbiter() -> bool {
    actix_rt::Arbiter::try_current().is_some() && tokio::runtime::Handle::try_current().is_ok()
}

/// What a supervisor started on its own thread answers once its children are up.
type Started = oneshot::Receiver<Result<SupervisorHandle, SupervisorError>>;

/// Starts `supervisor` on a new thread with an actix system of its own, which runs until the
/// supervisor ends.
fn start_on_own_thread(
    supervisor: Supervisor,
) -> Result<(std::thread::JoinHandle<()>, Started), SupervisorError> {
    let (tx, rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("ensemble-supervisor".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                match supervisor.start_here().await {
                    Ok(handle) => {
                        let _ = tx.send(Ok(handle.clone()));
                        let _ = handle.wait().await;
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error));
                    }
                }
            })
        })
        .map_err(|_| SupervisorError::Gone)?;
    Ok((thread, rx))
}

fn erase<A: ProcessActor>(spec: ChildSpec<A>) -> (Supervised<A>, Arc<dyn Child>) {
    let (handle, slot) = Supervised::new(&spec.name, spec.while_down);
    (handle, Arc::new(TypedChild { spec, slot: Arc::new(slot) }))
}
