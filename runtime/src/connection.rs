//! The parent's side of a live child: calls matched to replies, events, stop and exit.
//!
//! One reader thread per child blocks in `recv` on the child's channel; it is the only thread
//! that wakes when the child sends, and it completes the caller's future directly. Sends go out
//! on the caller's own thread with no hop.
//!
//! Invariants:
//! - A call is registered before its frame is sent, under the same lock that records the
//!   child's exit. So either the reader fails it when the child dies, or the caller sees the
//!   exit first: no call waits for a reply that cannot come.
//! - When the child's channel closes, the reader reaps the child, fails every pending call with
//!   its [`ExitInfo`], ends the event stream and wakes everyone waiting for the exit.

use crate::outbox::{Outbox, SendError};
use crate::process::{ChildProcess, ExitInfo};
use crate::receive::Receiver;
use crate::spawn::Spawned;
use crate::wire::{self, Failure, ToChild, ToParent};
use futures_channel::{mpsc, oneshot};
use ipc_channel::ipc::IpcBytesReceiver;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a child whose channel closed may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Why a call or cast produced no reply value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// The child ran the handler and it failed (panicked, or could not decode the message).
    Remote(Failure),
    /// The child exited or was killed before replying.
    Exited(ExitInfo),
    /// A stop was requested: the child takes no new calls.
    Stopping,
    /// The message could not be encoded.
    Encode(String),
}

/// An encoded reply, or the encoded event, with the offset of its body in the frame.
#[derive(Debug)]
pub struct Body {
    frame: Vec<u8>,
    at: usize,
    /// Where to acknowledge the hand-over of the segments in it.
    outbox: Arc<Outbox<ToChild>>,
}

impl Body {
    /// The encoded body.
    pub fn bytes(&self) -> &[u8] {
        &self.frame[self.at..]
    }

    /// Decodes the body; if it hands over segments, acknowledges them once they are held
    /// (and also when decoding failed, so that the sender lets go).
    ///
    /// # Errors
    /// As [`wire::decode_body`].
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, wire::WireError> {
        let value = wire::decode_body(self.bytes());
        if let Some(transfer) = wire::transfer_of(&self.frame) {
            self.outbox.acknowledge(transfer);
        }
        value
    }
}

/// The parent's end of a live child. Dropping it asks the child to stop and makes sure it is
/// reaped within `shutdown_timeout` (killed if need be).
#[derive(Debug)]
pub struct Connection {
    shared: Arc<Shared>,
    outbox: Arc<Outbox<ToChild>>,
    events: Mutex<Option<mpsc::UnboundedReceiver<Body>>>,
    shutdown_timeout: Duration,
}

#[derive(Debug)]
struct Shared {
    process: Arc<ChildProcess>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    pending: HashMap<u64, oneshot::Sender<Result<Body, CallFailure>>>,
    stopping: bool,
    exit: Option<ExitInfo>,
    exit_waiters: Vec<oneshot::Sender<ExitInfo>>,
}

impl Connection {
    /// Takes over a spawned child and starts its reader thread.
    ///
    /// # Errors
    /// When the reader thread cannot be started; the child is then killed and reaped.
    pub fn new(spawned: Spawned, shutdown_timeout: Duration) -> std::io::Result<Connection> {
        let Spawned { process, to_child, to_parent } = spawned;
        let shared = Arc::new(Shared { process, state: Mutex::new(State::default()) });
        let outbox = Arc::new(Outbox::new(to_child));
        let (events_tx, events_rx) = mpsc::unbounded();
        let (reader, reader_outbox) = (Arc::clone(&shared), Arc::clone(&outbox));
        std::thread::Builder::new()
            .name(format!("ensemble-rx-{}", shared.process.pid()))
            .spawn(move || reader.read(to_parent, &reader_outbox, events_tx))?;
        Ok(Connection { shared, outbox, events: Mutex::new(Some(events_rx)), shutdown_timeout })
    }

    /// The child process.
    pub fn process(&self) -> &Arc<ChildProcess> {
        &self.shared.process
    }

    /// Sends a call to handler `tag`; the returned future resolves to the reply body.
    ///
    /// # Errors
    /// [`CallFailure::Exited`] or [`CallFailure::Stopping`] at once when the child is gone or
    /// stopping; [`CallFailure::Encode`] when `body` does not serialize.
    pub fn call<B: Serialize + ?Sized>(&self, tag: u32, body: &B) -> Result<PendingCall, CallFailure> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.shared.lock();
            state.usable()?;
            state.next_id += 1;
            let id = state.next_id;
            state.pending.insert(id, tx);
            id
        };
        let pending = PendingCall { id, rx, shared: Arc::clone(&self.shared) };
        match self.outbox.send(&ToChild::Call { id, tag }, body) {
            // A closed channel means the child is gone: the reader fails the call with its exit.
            Ok(()) | Err(SendError::Closed) => Ok(pending),
            Err(SendError::Encode(e)) => Err(CallFailure::Encode(e)),
        }
    }

    /// Sends a message to handler `tag` without waiting for a reply.
    ///
    /// # Errors
    /// As [`Connection::call`]; in addition [`CallFailure::Exited`] when the send fails.
    pub fn cast<B: Serialize + ?Sized>(&self, tag: u32, body: &B) -> Result<(), CallFailure> {
        self.shared.lock().usable()?;
        match self.outbox.send(&ToChild::Cast { tag }, body) {
            Ok(()) => Ok(()),
            Err(SendError::Encode(e)) => Err(CallFailure::Encode(e)),
            Err(SendError::Closed) => Err(CallFailure::Exited(self.shared.process.reap(EXIT_GRACE))),
        }
    }

    /// The stream of encoded events; `None` after the first call.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Body>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Asks the child to finish the calls it has, run `post_run` and exit. New calls fail with
    /// [`CallFailure::Stopping`]. Returns false when the child had exited already.
    pub fn request_stop(&self) -> bool {
        {
            let mut state = self.shared.lock();
            if state.exit.is_some() {
                return false;
            }
            state.stopping = true;
        }
        self.outbox.send(&ToChild::Stop, &()).is_ok()
    }

    /// Resolves once the child has exited and was reaped.
    pub fn exited(&self) -> Exited {
        let mut state = self.shared.lock();
        let (tx, rx) = oneshot::channel();
        match &state.exit {
            Some(info) => {
                let _ = tx.send(info.clone());
            }
            None => state.exit_waiters.push(tx),
        }
        Exited { rx, process: Arc::clone(&self.shared.process) }
    }

    /// How the child ended, if it has.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.shared.lock().exit.clone()
    }

    /// How many hand-overs of segments to the child await its acknowledgement.
    pub fn handovers_in_flight(&self) -> usize {
        self.outbox.in_flight()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.request_stop() {
            return;
        }
        let process = Arc::clone(&self.shared.process);
        let timeout = self.shutdown_timeout;
        let watchdog = std::thread::Builder::new().name("ensemble-stop".into()).spawn(move || {
            if process.wait_reaped(timeout).is_none() {
                tracing::warn!(pid = process.pid(), "child did not stop within {timeout:?}; killing it");
                process.kill();
            }
        });
        if watchdog.is_err() {
            self.shared.process.kill();
        }
    }
}

impl State {
    fn usable(&self) -> Result<(), CallFailure> {
        match (&self.exit, self.stopping) {
            (Some(info), _) => Err(CallFailure::Exited(info.clone())),
            (None, true) => Err(CallFailure::Stopping),
            (None, false) => Ok(()),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reader thread: routes frames until the child's channel closes, then reaps.
    fn read(
        &self,
        from_child: IpcBytesReceiver,
        outbox: &Arc<Outbox<ToChild>>,
        events: mpsc::UnboundedSender<Body>,
    ) {
        let mut from_child = Receiver::new(from_child);
        loop {
            // Spin for the next frame only while a reply is due.
            let expecting = !self.lock().pending.is_empty();
            let Ok(frame) = from_child.recv(expecting) else { break };
            self.route(frame, outbox, &events);
        }
        drop(from_child);
        outbox.abandon_all();
        let exit = self.process.reap(EXIT_GRACE);
        let (pending, waiters) = {
            let mut state = self.lock();
            state.exit = Some(exit.clone());
            (std::mem::take(&mut state.pending), std::mem::take(&mut state.exit_waiters))
        };
        for (_, tx) in pending {
            let _ = tx.send(Err(CallFailure::Exited(exit.clone())));
        }
        for tx in waiters {
            let _ = tx.send(exit.clone());
        }
    }

    fn route(&self, frame: Vec<u8>, outbox: &Arc<Outbox<ToChild>>, events: &mpsc::UnboundedSender<Body>) {
        let (header, body) = match wire::decode::<ToParent>(&frame) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::error!(pid = self.process.pid(), "dropping a frame that does not decode: {e}");
                return;
            }
        };
        let at = frame.len() - body.len();
        match header {
            ToParent::Reply { id, ok } => {
                let Some(tx) = self.lock().pending.remove(&id) else { return };
                let result = if ok {
                    Ok(Body { frame, at, outbox: Arc::clone(outbox) })
                } else {
                    Err(CallFailure::Remote(wire::decode_body::<Failure>(&frame[at..]).unwrap_or_else(|e| {
                        Failure::Decode { what: "failure".into(), detail: e.to_string() }
                    })))
                };
                let _ = tx.send(result);
            }
            ToParent::Event => {
                let _ = events.unbounded_send(Body { frame, at, outbox: Arc::clone(outbox) });
            }
            ToParent::Ack { transfer } => outbox.acknowledged(transfer),
            other => tracing::error!(pid = self.process.pid(), "unexpected frame {other:?}"),
        }
    }
}

/// The reply to one call. Dropping it forgets the call: a late reply is discarded.
///
/// # Cancel safety
/// Dropping the future before it resolves is safe; the child still runs the handler.
#[derive(Debug)]
pub struct PendingCall {
    id: u64,
    rx: oneshot::Receiver<Result<Body, CallFailure>>,
    shared: Arc<Shared>,
}

impl Future for PendingCall {
    type Output = Result<Body, CallFailure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            // The reader drops senders only after it recorded the exit.
            Poll::Ready(Err(_)) => Poll::Ready(Err(self
                .shared
                .lock()
                .exit
                .clone()
                .map_or(CallFailure::Stopping, CallFailure::Exited))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

/// Resolves to how the child ended.
#[derive(Debug)]
pub struct Exited {
    rx: oneshot::Receiver<ExitInfo>,
    process: Arc<ChildProcess>,
}

impl Future for Exited {
    type Output = ExitInfo;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ExitInfo> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(info)) => Poll::Ready(info),
            Poll::Ready(Err(_)) => Poll::Ready(self.process.reap(EXIT_GRACE)),
            Poll::Pending => Poll::Pending,
        }
    }
}
