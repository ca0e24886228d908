//! A running supervisor: its handle, and [`Background`], one on a thread of its own.

use super::child::Child;
use super::core::{AddChild, Shutdown, Subscribe, SupervisorActor, Wait};
use super::{
    erase, start_on_own_thread, ChildSpec, Supervised, Supervisor, SupervisorError, SupervisorEvents,
};
use crate::actor::ProcessActor;
use ensemble_runtime::SpawnError;
use std::sync::Arc;

/// A running supervisor. `Clone + Send`.
#[derive(Clone)]
pub struct SupervisorHandle {
    pub(super) addr: actix::Addr<SupervisorActor>,
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

    pub(super) async fn add_child(&self, child: Arc<dyn Child>) -> Result<(), SpawnError> {
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
