//! What a handler can do besides replying: push events, stop its process, know its name.

use crate::actor::ProcessActor;
use ensemble_runtime::transport::Admission;
use ensemble_runtime::wire::ToParent;
use ensemble_runtime::{Outbox, SendError};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The backend's handle on its process, passed to every handler and hook.
///
/// It is `Clone + Send`: an async handler or a thread the actor starts may keep a copy to push
/// events later.
pub struct ProcessContext<A: ProcessActor> {
    shared: Arc<ContextShared>,
    _actor: PhantomData<fn(A)>,
}

pub(crate) struct ContextShared {
    pub(crate) name: String,
    pub(crate) outbox: Outbox<ToParent>,
    pub(crate) stop: AtomicBool,
    /// Frames the backend has finished with (the reader counts those it handed over: while
    /// they differ, the reader must not spin on the fast lane, or the handler could not run).
    pub(crate) handled: std::sync::atomic::AtomicU64,
    /// The reader's task, woken when the backend has caught up, so that it may spin then.
    pub(crate) reader: std::sync::Mutex<Option<std::task::Waker>>,
    /// An async handler runs: the reader keeps reading (acknowledgements, the parent's end)
    /// and sleeps on the doorbell instead of waiting for the backend.
    pub(crate) handler_waits: AtomicBool,
}

/// An event that could not be sent to the frontend.
#[derive(Debug, thiserror::Error)]
pub enum SendOutError {
    /// The event's `Serialize` impl failed, or it is over the size limit.
    #[error("the event could not be encoded")]
    Encode(#[source] ensemble_runtime::wire::WireError),
    /// The connection's send queue is full: the parent is not reading. Nothing was sent.
    #[error("the send queue to the parent is full")]
    Full,
    /// The parent has gone away.
    #[error("the parent process is gone")]
    ParentGone,
    /// The kernel refused the frame (e.g. no memory for a large event).
    #[error("the event could not be sent")]
    Io(#[source] std::io::Error),
}

impl<A: ProcessActor> ProcessContext<A> {
    pub(crate) fn new(shared: Arc<ContextShared>) -> Self {
        ProcessContext { shared, _actor: PhantomData }
    }

    /// Pushes an event to the frontend, where it arrives on [`Remote::events`](crate::Remote::events)
    /// (valkka's `send_out__`). Events keep their order, also relative to replies.
    ///
    /// Never blocks: when the connection's queue is full (the parent is not reading), the
    /// event is refused.
    ///
    /// # Errors
    /// [`SendOutError`] when the event does not encode, the queue is full or the parent is gone.
    pub fn send_out(&self, event: A::Event) -> Result<(), SendOutError> {
        // Log lines logged before the event arrive before it.
        if let Some(batch) = ensemble_runtime::logs::take_batch() {
            let _ = self.shared.outbox.send(&ToParent::Logs, &batch, Admission::Control);
        }
        self.shared.outbox.send(&ToParent::Event, &event, Admission::Bounded).map_err(|e| match e {
            SendError::Encode(e) => SendOutError::Encode(e),
            SendError::Full => SendOutError::Full,
            SendError::Closed => SendOutError::ParentGone,
            SendError::Io(e) => SendOutError::Io(e),
            SendError::Protocol(e) => SendOutError::Io(std::io::Error::other(e)),
        })
    }

    /// Stops the actor once the current message is handled: `post_run` runs and the process
    /// exits with status 0. Calls sent after this one fail with the exit status.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// The process name given at spawn.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub(crate) fn shared(&self) -> &ContextShared {
        &self.shared
    }

    pub(crate) fn shared_arc(&self) -> &Arc<ContextShared> {
        &self.shared
    }

    /// This process's pid.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

impl<A: ProcessActor> Clone for ProcessContext<A> {
    fn clone(&self) -> Self {
        ProcessContext { shared: Arc::clone(&self.shared), _actor: PhantomData }
    }
}

impl<A: ProcessActor> fmt::Debug for ProcessContext<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessContext").field("name", &self.shared.name).finish()
    }
}
