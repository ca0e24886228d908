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
mod registry;
mod slot;
mod spec;

pub use self::core::EXIT_ESCALATED;
pub use slot::{Supervised, SupervisedCall};
pub use spec::{
    Backoff, ChildSpec, Intensity, Reap, Restart, StopOrder, Strategy, SupervisorConfig, WhileDown,
};

use self::child::{Child, TypedChild};
use self::core::{AddChild, Shutdown, Subscribe, SupervisorActor, Wait};
use crate::actor::ProcessActor;
use actix::Actor;
use ensemble_runtime::{ExitInfo, SpawnError};
use futures::channel::{mpsc, oneshot};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// What happened to a supervised child. Each event is also logged through `tracing`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A child was started for the first time.
    Started {
        /// The child's name.
        child: String,
        /// Its pid.
        pid: u32,
    },
    /// A child's process exited on its own (or was killed by someone else).
    Exited {
        /// The child's name.
        child: String,
        /// How it ended.
        exit: ExitInfo,
    },
    /// A child was started again.
    Restarted {
        /// The child's name.
        child: String,
        /// The new pid.
        pid: u32,
        /// How many times this child has been restarted.
        restarts: u32,
    },
    /// Starting a child again failed.
    StartFailed {
        /// The child's name.
        child: String,
        /// Why.
        error: String,
    },
    /// The supervisor stopped a child (shutdown, or its group was restarted).
    Stopped {
        /// The child's name.
        child: String,
        /// How it ended.
        exit: ExitInfo,
    },
    /// The restart intensity was exceeded; every child was stopped.
    GaveUp {
        /// The child whose exit was one too many.
        child: String,
        /// The intensity's `max_restarts`.
        restarts: u32,
        /// The intensity's window.
        within: Duration,
    },
}

/// One line per event, e.g. `worker restarted as pid 4242 (restart 3)`. An exit is told by its
/// code or signal; the tail of the child's stderr, which a terminal showed already, is left to
/// [`ExitInfo::stderr_tail`] (and to `ExitInfo`'s own Display).
impl std::fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorEvent::Started { child, pid } => write!(f, "{child} started as pid {pid}"),
            SupervisorEvent::Exited { child, exit } => write!(f, "{child} exited: {}", Ended(exit)),
            SupervisorEvent::Restarted { child, pid, restarts } => {
                write!(f, "{child} restarted as pid {pid} (restart {restarts})")
            }
            SupervisorEvent::StartFailed { child, error } => {
                write!(f, "{child} could not be started again: {error}")
            }
            SupervisorEvent::Stopped { child, exit } => write!(f, "{child} stopped: {}", Ended(exit)),
            SupervisorEvent::GaveUp { child, restarts, within } => write!(
                f,
                "{child} exited once more than {restarts} restarts within {within:?} allow: the supervisor gave up"
            ),
        }
    }
}

/// How a process ended, in one line: its code or its signal.
struct Ended<'a>(&'a ExitInfo);

impl std::fmt::Display for Ended<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ExitInfo { pid, status, .. } = self.0;
        match (status.code(), self.0.signal()) {
            (Some(code), _) => write!(f, "process {pid} exited with code {code}"),
            (None, Some(sig)) => {
                write!(f, "process {pid} was killed by signal {sig} ({})", ensemble_runtime::signal_name(sig))
            }
            _ => write!(f, "process {pid} ended: {status}"),
        }
    }
}

impl SupervisorEvent {
    fn log(&self) {
        match self {
            SupervisorEvent::Started { child, pid } => tracing::info!(child, pid, "started"),
            SupervisorEvent::Exited { child, exit } => tracing::warn!(child, "exited: {exit}"),
            SupervisorEvent::Restarted { child, pid, restarts } => {
                tracing::info!(child, pid, restarts, "restarted")
            }
            SupervisorEvent::StartFailed { child, error } => {
                tracing::error!(child, "restart failed: {error}")
            }
            SupervisorEvent::Stopped { child, exit } => tracing::info!(child, "stopped: {exit}"),
            SupervisorEvent::GaveUp { child, restarts, within } => {
                tracing::error!(child, "more than {restarts} restarts within {within:?}: giving up")
            }
        }
    }
}

/// Why a supervisor did not end cleanly.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SupervisorError {
    /// More restarts than the intensity allows; every child was stopped.
    #[error(
        "child {child:?} needed more than {restarts} restarts within {within:?}; the supervisor gave up"
    )]
    GaveUp {
        /// The child whose exit was one too many.
        child: String,
        /// The intensity's `max_restarts`.
        restarts: u32,
        /// The intensity's window.
        within: Duration,
    },
    /// A child could not be started when the supervisor started.
    #[error("child {child:?} could not be started")]
    Start {
        /// The child's name.
        child: String,
        /// Why: match on it (`SpawnError::BuildMismatch`, `SpawnError::Start`, ...) through
        /// the `Arc`.
        #[source]
        error: std::sync::Arc<SpawnError>,
    },
    /// The supervisor actor is gone (its actix system stopped).
    #[error("the supervisor is gone")]
    Gone,
    /// Installing the signal handlers failed.
    #[error("could not install the signal handlers")]
    Signals(#[source] std::sync::Arc<std::io::Error>),
}

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

/// A running supervisor. `Clone + Send`.
#[derive(Clone)]
pub struct SupervisorHandle {
    addr: actix::Addr<SupervisorActor>,
}

impl SupervisorHandle {
    /// Starts another child, after those already running.
    ///
    /// # Errors
    /// The [`SpawnError`] of its first start.
    pub async fn start_child<A: ProcessActor>(
        &self,
        spec: ChildSpec<A>,
    ) -> Result<Supervised<A>, SpawnError> {
        let (handle, child) = erase(spec);
        self.add_child(child).await?;
        Ok(handle)
    }

    async fn add_child(&self, child: Arc<dyn Child>) -> Result<(), SpawnError> {
        self.addr.send(AddChild(child)).await.map_err(|_| SpawnError::Abandoned("the supervisor is gone"))?
    }

    /// Stops every child in reverse start order (graceful, then killed after each one's
    /// shutdown timeout) and ends the supervisor.
    ///
    /// # Errors
    /// [`SupervisorError::GaveUp`] if it had given up before.
    pub async fn shutdown(&self) -> Result<(), SupervisorError> {
        self.addr.send(Shutdown).await.map_err(|_| SupervisorError::Gone)?
    }

    /// Asks the supervisor to shut down without waiting for it (for `Drop` impls).
    pub(crate) fn shutdown_in_background(&self) {
        self.addr.do_send(Shutdown);
    }

    /// Resolves when the supervisor has ended: after [`shutdown`](Self::shutdown), or when it
    /// gave up.
    ///
    /// # Errors
    /// [`SupervisorError::GaveUp`] when it gave up.
    pub async fn wait(&self) -> Result<(), SupervisorError> {
        let rx = self.addr.send(Wait).await.map_err(|_| SupervisorError::Gone)?;
        rx.await.map_err(|_| SupervisorError::Gone)?
    }

    /// Runs until SIGINT or SIGTERM, then shuts down in order; or until the supervisor gives
    /// up. This is the main loop of a program: what valkka's `MainContext` does.
    ///
    /// # Errors
    /// [`SupervisorError::GaveUp`] when it gave up; [`SupervisorError::Signals`] when the
    /// handlers could not be installed.
    pub async fn run_until_signal(&self) -> Result<(), SupervisorError> {
        use actix_rt::signal::unix::{signal, SignalKind};
        let signals = |kind| signal(kind).map_err(|e| SupervisorError::Signals(std::sync::Arc::new(e)));
        let (mut interrupt, mut terminate) =
            (signals(SignalKind::interrupt())?, signals(SignalKind::terminate())?);
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            ended = self.wait() => return ended,
        }
        self.shutdown().await
    }

    /// The events from now on. (Use [`Supervisor::events`] to see the first starts too.)
    ///
    /// # Errors
    /// [`SupervisorError::Gone`] when the supervisor actor is gone.
    pub async fn events(&self) -> Result<SupervisorEvents, SupervisorError> {
        let rx = self.addr.send(Subscribe).await.map_err(|_| SupervisorError::Gone)?;
        Ok(SupervisorEvents { rx })
    }
}

impl std::fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorHandle").finish_non_exhaustive()
    }
}

/// A supervisor running on a thread of its own, with its own actix system: for tests, and for
/// programs whose main thread is busy elsewhere (a GUI loop, a blocking library). Dropping it
/// shuts the supervisor down and joins the thread.
///
/// # Examples
/// ```
/// use ensemble::prelude::*;
/// use ensemble::supervisor::{Background, ChildSpec, Supervisor, SupervisorConfig};
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
/// // A plain, synchronous function: no runtime of its own.
/// let mut supervisor = Supervisor::new(SupervisorConfig::default());
/// let worker = supervisor.add(ChildSpec::new("worker", || Worker));
/// let background = Background::start(supervisor)?;
/// let pid = futures::executor::block_on(worker.send(Ping))?;
/// assert_ne!(pid, std::process::id());
/// background.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Background {
    handle: SupervisorHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Starts `supervisor` on a new thread and waits until its children are up.
    ///
    /// # Errors
    /// As [`Supervisor::start`]; [`SupervisorError::Gone`] if the thread could not start.
    pub fn start(supervisor: Supervisor) -> Result<Background, SupervisorError> {
        let (thread, started) = start_on_own_thread(supervisor)?;
        let handle = futures::executor::block_on(started).map_err(|_| SupervisorError::Gone)??;
        Ok(Background { handle, thread: Some(thread) })
    }

    /// The running supervisor.
    pub fn handle(&self) -> &SupervisorHandle {
        &self.handle
    }

    /// Shuts the supervisor down in order (blocking) and joins its thread.
    ///
    /// # Errors
    /// As [`SupervisorHandle::shutdown`].
    pub fn shutdown(mut self) -> Result<(), SupervisorError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), SupervisorError> {
        let result = futures::executor::block_on(self.handle.shutdown());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background").finish_non_exhaustive()
    }
}

static PROCESS_SUPERVISOR: std::sync::Mutex<Option<SupervisorHandle>> = std::sync::Mutex::new(None);

/// This process's own supervisor: started on first use (default configuration) on the current
/// actix arbiter, or on a thread of its own outside actix (as [`Supervisor::start`] does), and
/// shared by every later caller. Children started under it are stopped in order when the
/// process ends cleanly: by `#[ensemble::main]` in the main process, before `post_run` returns
/// control in a child. A `main` without `#[ensemble::main]` should call
/// [`shutdown_process_supervisor`] before it returns; otherwise its children are killed with
/// it, without `post_run`. Use it to build a tree without passing handles around.
///
/// # Errors
/// [`SupervisorError::Gone`] when its thread could not be started.
///
/// # Examples
/// ```
/// # use ensemble::prelude::*;
/// # #[derive(Serialize, Deserialize, ProcessActor)] struct Worker;
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let supervisor = ensemble::supervisor::process_supervisor()?;
/// let worker = supervisor.start_child(ChildSpec::new("worker", || Worker)).await?;
/// assert!(worker.remote().is_some());
/// ensemble::supervisor::shutdown_process_supervisor().await?;
/// # Ok(()) }
/// ```
pub fn process_supervisor() -> Result<SupervisorHandle, SupervisorError> {
    let mut slot = PROCESS_SUPERVISOR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = slot.as_ref().filter(|h| h.addr.connected()) {
        return Ok(handle.clone());
    }
    // A child process stops these children in order before it exits (a parent: when
    // `#[ensemble::main]` ends).
    static BEFORE_EXIT: std::sync::Once = std::sync::Once::new();
    BEFORE_EXIT.call_once(|| {
        crate::backend::before_exit(|| {
            Box::pin(async {
                if let Err(e) = shutdown_process_supervisor().await {
                    tracing::warn!("this process's supervisor: {e}");
                }
            })
        })
    });
    let handle = if on_actix_arbiter() {
        SupervisorHandle { addr: SupervisorActor::new(SupervisorConfig::default(), Vec::new()).start() }
    } else {
        // No child to start: the answer comes as soon as the thread's system runs.
        let (_thread, started) = start_on_own_thread(Supervisor::new(SupervisorConfig::default()))?;
        futures::executor::block_on(started).map_err(|_| SupervisorError::Gone)??
    };
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Stops the children of [`process_supervisor`] in reverse start order, if it was ever started.
///
/// # Errors
/// As [`SupervisorHandle::shutdown`].
pub async fn shutdown_process_supervisor() -> Result<(), SupervisorError> {
    let handle = PROCESS_SUPERVISOR.lock().unwrap_or_else(|e| e.into_inner()).take();
    match handle {
        Some(handle) if handle.addr.connected() => handle.shutdown().await,
        _ => Ok(()),
    }
}

/// A stream of [`SupervisorEvent`]s. Ends when the supervisor actor is gone.
#[derive(Debug)]
pub struct SupervisorEvents {
    rx: mpsc::UnboundedReceiver<SupervisorEvent>,
}

impl Stream for SupervisorEvents {
    type Item = SupervisorEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SupervisorEvent>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::SupervisorEvent;
    use ensemble_runtime::ExitInfo;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::time::Duration;

    fn check(event: SupervisorEvent, expected: &str) {
        assert_eq!(event.to_string(), expected);
    }

    fn exit(wait_status: i32) -> ExitInfo {
        let stderr_tail = String::from("already shown on the terminal\n");
        ExitInfo { pid: 7, status: ExitStatus::from_raw(wait_status), stderr_tail }
    }

    #[test]
    fn events_display_as_one_line_each() {
        let child = || String::from("flaky");
        check(SupervisorEvent::Started { child: child(), pid: 7 }, "flaky started as pid 7");
        check(
            SupervisorEvent::Exited { child: child(), exit: exit(6) }, // the wait status of SIGABRT
            "flaky exited: process 7 was killed by signal 6 (SIGABRT)",
        );
        check(
            SupervisorEvent::Restarted { child: child(), pid: 8, restarts: 2 },
            "flaky restarted as pid 8 (restart 2)",
        );
        check(
            SupervisorEvent::StartFailed { child: child(), error: "no memory".into() },
            "flaky could not be started again: no memory",
        );
        check(
            SupervisorEvent::Stopped { child: child(), exit: exit(0) },
            "flaky stopped: process 7 exited with code 0",
        );
        check(
            SupervisorEvent::GaveUp { child: child(), restarts: 3, within: Duration::from_secs(5) },
            "flaky exited once more than 3 restarts within 5s allow: the supervisor gave up",
        );
    }
}
