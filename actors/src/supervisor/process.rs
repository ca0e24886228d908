//! Every process's own supervisor.

use super::core::SupervisorActor;
use super::{
    on_actix_arbiter, start_on_own_thread, Supervisor, SupervisorConfig, SupervisorError, SupervisorHandle,
};
use actix::Actor;

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
