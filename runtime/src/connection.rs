//! The parent's side of a live child: calls matched to replies, events, stop and exit.
//!
//! One task per child, the *driver*, reads the child's frames, flushes what did not fit in the
//! socket, and watches the child's pidfd. It runs on a tokio reactor chosen at creation
//! ([`ReadOn`]): the spawning actix arbiter (one wake-up per reply: the reactor wakes the
//! arbiter, which completes the caller's future in the same turn) or the process-wide I/O thread.
//! If that runtime stops while the child still runs, or leaves the connection unread (its thread
//! is blocked, or it is not being polled), the driver moves to the I/O thread (see
//! [`watchdog`]), so that no reply, event or exit ever waits for a runtime that nobody polls.
//! Sends go out on the caller's own thread with no hop.
//!
//! Invariants:
//! - A call is registered before its frame is sent, under the same lock that records the
//!   child's exit. So either the driver fails it when the child dies, or the caller sees the
//!   exit first: no call waits for a reply that cannot come.
//! - The child's exit is learned from its pidfd, never from a read of 0 bytes. When it has
//!   exited, the driver reads what the child sent before, reaps it, fails every pending call,
//!   ends the event stream and wakes everyone waiting for the exit.
//! - A child that breaks the protocol (any [`ProtocolError`], also one found while decoding a
//!   reply or event body) is killed and reaped; every pending and later call fails at once
//!   with [`CallFailure::Protocol`].

mod watchdog;

use crate::io_thread;
use crate::outbox::{Outbox, SendError};
use crate::process::{ChildProcess, ExitInfo};
use crate::spawn::Spawned;
use crate::sys::reactor::{self, Owner};
use crate::transport::{Admission, Frame, LinkDriver, Payload, ProtocolError, ReadError};
use crate::wire::{self, Failure, ToChild, ToParent, WireError};
use futures_channel::{mpsc, oneshot};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How long a child whose connection closed may take to exit before it is killed. A child
/// closes its end after its last words and then exits: the kernel first tears down its
/// mappings (about 35 ms per GiB mapped here), so this leaves room for about 140 GiB.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Why a call or cast produced no reply value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The child ran the handler and it failed (panicked, or could not decode the message).
    #[error("the child's handler failed: {0}")]
    Remote(Failure),
    /// The child exited or was killed before replying.
    #[error("the child ended before replying: {0}")]
    Exited(ExitInfo),
    /// The child broke the protocol; it was killed.
    #[error("the child broke the protocol and was killed")]
    Protocol(#[source] ProtocolError),
    /// A stop was requested: the child takes no new calls.
    #[error("the child is stopping")]
    Stopping,
    /// The message could not be encoded.
    #[error("could not encode the message: {0}")]
    Encode(String),
    /// The message is larger than the connection's limit; nothing was sent.
    #[error("the message is over the size limit: {len} bytes or more, the limit is {limit}")]
    TooLarge {
        /// How many bytes were encoded before the limit was passed.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// The send queue is full; nothing was sent.
    #[error("the send queue is full")]
    Full,
    /// The child's end of the connection was already closed when the message was sent (it is
    /// exiting or has exited): the message was certainly not delivered, and may be sent again
    /// to another process.
    #[error("the child was exiting; the message was not delivered")]
    NotDelivered,
}

/// Where a connection's driver runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOn {
    /// The current tokio runtime, which must poll its tasks for as long as it lives (an actix
    /// arbiter does; a current-thread runtime outside `block_on` does not). When it shuts down
    /// the driver moves to the I/O thread.
    Current,
    /// The process-wide I/O thread ([`crate::io_thread`]).
    IoThread,
}

/// An encoded reply, or an encoded event, with the offset of its body in the frame.
#[derive(Debug)]
pub struct Body {
    frame: Payload,
    at: usize,
    /// The descriptors of the segments the body hands over, until it is decoded.
    fds: Mutex<Vec<OwnedFd>>,
    core: Arc<Core>,
    /// What an event's body counts against [`Unread`] until it is dropped.
    unread: Option<(usize, usize)>,
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some((bytes, descriptors)) = self.unread {
            self.core.unread.events.fetch_sub(1, Ordering::Relaxed);
            self.core.unread.bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.core.unread.descriptors.fetch_sub(descriptors, Ordering::Relaxed);
        }
    }
}

/// The most events a parent holds unread for one child before it calls the child a flood and
/// kills it; also the most bytes and descriptors they may hold. Generous for any consumer that
/// reads its events; what stops a child from exhausting its parent's memory or descriptors.
pub const MAX_UNREAD_EVENTS: usize = 1 << 20;
/// See [`MAX_UNREAD_EVENTS`].
pub const MAX_UNREAD_EVENT_BYTES: usize = 1 << 30;
/// See [`MAX_UNREAD_EVENTS`].
pub const MAX_UNREAD_EVENT_DESCRIPTORS: usize = 4096;

/// What the events a child sent and nobody has read yet hold.
#[derive(Debug, Default)]
struct Unread {
    events: AtomicUsize,
    bytes: AtomicUsize,
    descriptors: AtomicUsize,
}

impl Unread {
    /// Counts one more event; the limit it passes, if any.
    fn add(&self, bytes: usize, descriptors: usize) -> Option<ProtocolError> {
        let events = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let descriptors = self.descriptors.fetch_add(descriptors, Ordering::Relaxed) + descriptors;
        let limit = if events > MAX_UNREAD_EVENTS {
            "1,048,576 events"
        } else if bytes > MAX_UNREAD_EVENT_BYTES {
            "1 GiB"
        } else if descriptors > MAX_UNREAD_EVENT_DESCRIPTORS {
            "4096 descriptors"
        } else {
            return None;
        };
        Some(ProtocolError::EventsUnread { events, bytes, descriptors, limit })
    }
}

impl Body {
    /// The encoded body.
    pub fn bytes(&self) -> &[u8] {
        &self.frame[self.at..]
    }

    /// Decodes the body; if it hands over segments, acknowledges them once they are held
    /// (and also when decoding failed, so that the sender lets go). Malformed bytes (see
    /// [`WireError::is_malformed`]) mean the child broke the protocol: it is killed.
    ///
    /// # Errors
    /// As [`wire::decode_body`].
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, WireError> {
        let fds = std::mem::take(&mut *self.fds.lock().unwrap_or_else(|e| e.into_inner()));
        let value = wire::decode_body_with(self.bytes(), fds);
        if let Some(transfer) = wire::transfer_of(&self.frame) {
            self.core.outbox.acknowledge(transfer);
        }
        if let Err(e) = &value {
            if e.is_malformed() {
                self.core.violation(ProtocolError::Undecodable(e.to_string()));
            }
        }
        value
    }
}

/// The parent's end of a live child. Dropping it asks the child to stop and makes sure it is
/// reaped within `shutdown_timeout` (killed if need be).
#[derive(Debug)]
pub struct Connection {
    core: Arc<Core>,
    events: Mutex<Option<mpsc::UnboundedReceiver<Body>>>,
    shutdown_timeout: Duration,
}

#[derive(Debug)]
struct Core {
    process: Arc<ChildProcess>,
    outbox: Outbox<ToChild>,
    state: Mutex<State>,
    events: mpsc::UnboundedSender<Body>,
    unread: Unread,
    reading: Reading,
}

/// Who reads the connection. A driver reads only under `lock`; a driver on a caller's runtime
/// stops reading once `moved` is set, and the I/O thread's driver takes over.
#[derive(Debug, Default)]
struct Reading {
    lock: Mutex<()>,
    moved: AtomicBool,
    /// Counts the polls of the driver on the caller's runtime: the watchdog's sign of life.
    progress: AtomicU64,
    /// The driver's task, woken when a call goes out through a fast lane so that it spins for
    /// the reply instead of sleeping until a doorbell.
    driver: Mutex<Option<std::task::Waker>>,
}

/// Where a driver runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Home {
    /// A runtime of the caller's: it may stop, or stop polling.
    Caller,
    /// The I/O thread, which always polls.
    Io,
}

/// A call in `State::pending`: a slot rather than a channel, since its reply comes under the
/// state's lock anyway (a channel would add an allocation and a dozen atomic operations to
/// every call).
#[derive(Debug)]
enum Awaiting {
    /// No reply yet; the caller's task to wake when it comes.
    Reply(Option<Waker>),
    /// The reply, or why there will be none.
    Done(Result<Body, CallFailure>),
}

impl State {
    fn await_reply(&mut self, id: u64) {
        self.pending.insert(id, Awaiting::Reply(None));
        self.awaiting += 1;
    }

    /// Records the outcome of call `id`, if its caller still waits; the task to wake.
    fn complete(&mut self, id: u64, outcome: Result<Body, CallFailure>) -> Option<Waker> {
        let slot = self.pending.get_mut(&id)?;
        match std::mem::replace(slot, Awaiting::Done(outcome)) {
            Awaiting::Reply(waker) => {
                self.awaiting -= 1;
                waker
            }
            // A second reply to one call: the first stands.
            done @ Awaiting::Done(_) => {
                *slot = done;
                None
            }
        }
    }

    /// Fails every call still waiting; the tasks to wake.
    fn fail_all(&mut self, failure: &CallFailure) -> Vec<Waker> {
        let mut wakers = Vec::new();
        for slot in self.pending.values_mut() {
            if let Awaiting::Reply(waker) = slot {
                wakers.extend(waker.take());
                *slot = Awaiting::Done(Err(failure.clone()));
            }
        }
        self.awaiting = 0;
        wakers
    }

    /// The caller forgets call `id` (it took the outcome, or dropped the call).
    fn forget(&mut self, id: u64) -> Option<Awaiting> {
        let slot = self.pending.remove(&id)?;
        if matches!(slot, Awaiting::Reply(_)) {
            self.awaiting -= 1;
        }
        self.spans.remove(&id);
        Some(slot)
    }
}

/// A map keyed by call id.
type ById<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Hashes call ids: a counter this process picks itself, so a multiply that spreads them over
/// the table is enough (SipHash's defence against chosen keys costs more than the rest of the
/// lookup, on every call).
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(FIBONACCI);
    }
}

/// 2^64 divided by the golden ratio: consecutive ids land far apart.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// The calls sent and not yet collected by their callers.
    pending: ById<Awaiting>,
    /// How many of them wait for their reply (the rest hold it, or why there is none).
    awaiting: usize,
    /// Where each pending call was made (when that says anything): the child's log lines for
    /// the call are re-emitted there.
    spans: ById<crate::logs::Origin>,
    stopping: bool,
    broken: Option<ProtocolError>,
    exit: Option<ExitInfo>,
    exit_waiters: Vec<oneshot::Sender<ExitInfo>>,
    /// The child closed its end: it will send nothing more.
    closed: bool,
    closed_waiters: Vec<oneshot::Sender<()>>,
}

impl Connection {
    /// Takes over a spawned child and starts its driver on `read_on`.
    ///
    /// # Panics
    /// With [`ReadOn::Current`] outside a tokio runtime.
    pub fn new(spawned: Spawned, shutdown_timeout: Duration, read_on: ReadOn) -> Connection {
        let Spawned { process, link } = spawned;
        let (events_tx, events_rx) = mpsc::unbounded();
        let core = Arc::new(Core {
            process,
            outbox: Outbox::new(link),
            state: Mutex::new(State::default()),
            events: events_tx,
            unread: Unread::default(),
            reading: Reading::default(),
        });
        match read_on {
            ReadOn::Current => {
                watchdog::watch(&core);
                drop(tokio::spawn(drive(Arc::clone(&core), Home::Caller)));
            }
            ReadOn::IoThread => core.move_to_io_thread(),
        }
        let stopper = Arc::downgrade(&core) as std::sync::Weak<dyn crate::introspect::StopChild>;
        core.process.record().set_stopper(stopper);
        Connection { core, events: Mutex::new(Some(events_rx)), shutdown_timeout }
    }

    /// The child process.
    pub fn process(&self) -> &Arc<ChildProcess> {
        &self.core.process
    }

    /// Sends a call to handler `tag`; the returned future resolves to the reply body.
    ///
    /// # Errors
    /// At once, with nothing sent: [`CallFailure::Exited`], [`CallFailure::Protocol`] or
    /// [`CallFailure::Stopping`] when the child is gone, broken or stopping;
    /// [`CallFailure::Full`] when the send queue is full (see [`Connection::poll_room`]);
    /// [`CallFailure::NotDelivered`] when the child's end is already closed;
    /// [`CallFailure::Encode`] or [`CallFailure::TooLarge`] when `body` does not encode.
    pub fn call<B: Serialize + ?Sized>(&self, tag: u32, body: &B) -> Result<PendingCall, CallFailure> {
        let id = {
            let mut state = self.core.lock();
            state.usable()?;
            state.next_id += 1;
            let id = state.next_id;
            state.await_reply(id);
            if let Some(origin) = crate::logs::Origin::here() {
                state.spans.insert(id, origin);
            }
            id
        };
        let pending = PendingCall { id, core: Arc::clone(&self.core), spun: false };
        match self.core.outbox.send(&ToChild::Call { id, tag }, body, Admission::Bounded) {
            Ok(()) => {
                watchdog::call_made();
                Ok(pending)
            }
            // The child's end is closed: it is exiting and will never read this.
            Err(SendError::Closed) => Err(CallFailure::NotDelivered),
            Err(e) => Err(self.core.send_failure(e)),
        }
    }

    /// Sends a message to handler `tag` without waiting for a reply.
    ///
    /// # Errors
    /// As [`Connection::call`].
    pub fn cast<B: Serialize + ?Sized>(&self, tag: u32, body: &B) -> Result<(), CallFailure> {
        self.core.lock().usable()?;
        match self.core.outbox.send(&ToChild::Cast { tag }, body, Admission::Bounded) {
            Ok(()) => Ok(()),
            Err(SendError::Closed) => Err(CallFailure::NotDelivered),
            Err(e) => Err(self.core.send_failure(e)),
        }
    }

    /// Ready when the send queue has room for a call or cast; else wakes `cx` when it has.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.core.outbox.link().poll_room(cx)
    }

    /// The stream of encoded events; `None` after the first call.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Body>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Asks the child to finish the calls it has, run `post_run` and exit. New calls fail with
    /// [`CallFailure::Stopping`]. Returns false when the child had exited already.
    pub fn request_stop(&self) -> bool {
        crate::introspect::StopChild::request_stop(&*self.core)
    }

    /// Resolves once the child has exited and was reaped.
    pub fn exited(&self) -> Exited {
        let mut state = self.core.lock();
        let (tx, rx) = oneshot::channel();
        match &state.exit {
            Some(info) => {
                let _ = tx.send(info.clone());
            }
            None => state.exit_waiters.push(tx),
        }
        Exited { rx, process: Arc::clone(&self.core.process) }
    }

    /// Resolves once the child has closed its end of the connection or has exited. A child
    /// that stops closes its end after its last words (`post_run` done, every reply, event and
    /// log line sent), and then exits; its exit can take a while longer, since the kernel first
    /// tears down the child's mappings (about 35 ms per GiB it mapped). The driver still reaps
    /// it, whether or not anyone waits.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut state = self.core.lock();
        let (tx, rx) = oneshot::channel();
        match state.closed || state.exit.is_some() {
            true => {
                let _ = tx.send(());
            }
            false => state.closed_waiters.push(tx),
        }
        async move {
            // A dropped sender means the connection's core is gone, the child with it.
            let _ = rx.await;
        }
    }

    /// Why calls fail now, if they do: the child broke the protocol, exited, or is stopping.
    pub fn failure(&self) -> Option<CallFailure> {
        self.core.lock().usable().err()
    }

    /// How the child ended, if it has.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.core.lock().exit.clone()
    }

    /// What the fast lane to the child has done, if it has one.
    pub fn lane_stats(&self) -> Option<crate::transport::LaneStats> {
        self.core.outbox.link().lane_stats()
    }

    /// How many hand-overs of segments to the child await its acknowledgement.
    pub fn handovers_in_flight(&self) -> usize {
        self.core.outbox.in_flight()
    }

    /// Declares that the child broke the protocol (found by a layer above, e.g. a batch reply
    /// of the wrong length): it is killed, and every pending and later call fails.
    pub fn protocol_violation(&self, error: ProtocolError) {
        self.core.violation(error);
    }
}

/// How `ensemble stop` reaches a child that no supervisor runs, and what [`Connection::request_stop`]
/// does.
impl crate::introspect::StopChild for Core {
    fn request_stop(&self) -> bool {
        {
            let mut state = self.lock();
            if state.exit.is_some() {
                return false;
            }
            state.stopping = true;
        }
        self.process.record().set_state(crate::introspect::ActorState::Stopping);
        self.outbox.send(&ToChild::Stop, &(), Admission::Control).is_ok()
    }
}

fn send_failure(e: SendError) -> CallFailure {
    match e {
        SendError::Protocol(e) => CallFailure::Protocol(e),
        SendError::Encode(WireError::TooLarge { len, limit }) => CallFailure::TooLarge { len, limit },
        SendError::Encode(e) => CallFailure::Encode(e.to_string()),
        SendError::Full => CallFailure::Full,
        SendError::Closed => CallFailure::Stopping,
        SendError::Io(e) => CallFailure::Encode(format!("the frame could not be sent: {e}")),
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.request_stop() {
            return;
        }
        crate::process::warn_unless_waited_for(self.core.process.name());
        let process = Arc::clone(&self.core.process);
        let timeout = self.shutdown_timeout;
        io_thread::handle().spawn(async move {
            tokio::time::sleep(timeout).await;
            if process.exit_info().is_none() && process.kill() {
                tracing::warn!(pid = process.pid(), "child did not stop within {timeout:?}; killed it");
            }
        });
    }
}

impl State {
    fn usable(&self) -> Result<(), CallFailure> {
        match (&self.broken, &self.exit, self.stopping) {
            (Some(broken), _, _) => Err(CallFailure::Protocol(broken.clone())),
            (None, Some(info), _) => Err(CallFailure::Exited(info.clone())),
            (None, None, true) => Err(CallFailure::Stopping),
            (None, None, false) => Ok(()),
        }
    }
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why a send failed, for the caller; garbage the child wrote into the fast lane's ring,
    /// found while sending, is a protocol violation like any other.
    fn send_failure(&self, e: SendError) -> CallFailure {
        if let SendError::Protocol(error) = &e {
            self.violation(error.clone());
        }
        send_failure(e)
    }

    /// Starts the I/O thread's driver, once; a driver on a caller's runtime stops reading.
    fn move_to_io_thread(self: &Arc<Self>) {
        if !self.reading.moved.swap(true, Ordering::SeqCst) {
            drop(io_thread::handle().spawn(drive(Arc::clone(self), Home::Io)));
        }
    }

    /// Whether a driver on a caller's runtime must stop.
    fn moved_away(&self, home: Home) -> bool {
        home == Home::Caller && self.reading.moved.load(Ordering::SeqCst)
    }

    /// The child broke the protocol: fail every call now, kill it; the driver reaps it.
    fn violation(&self, error: ProtocolError) {
        let pending = {
            let mut state = self.lock();
            if state.broken.is_some() || state.exit.is_some() {
                return;
            }
            tracing::error!(
                pid = self.process.pid(),
                name = self.process.name(),
                "the child broke the protocol and is killed: {error}"
            );
            state.broken = Some(error.clone());
            state.fail_all(&CallFailure::Protocol(error))
        };
        self.process.kill();
        for waker in pending {
            waker.wake();
        }
    }

    fn route(self: &Arc<Self>, frame: Frame) {
        // Only a frame that hands over segments may carry descriptors.
        if !frame.fds.is_empty() && wire::transfer_of(&frame.bytes).is_none() {
            let received = frame.fds.len();
            return self.violation(ProtocolError::UnexpectedDescriptors { announced: 0, received });
        }
        let (header, at) = match wire::decode::<ToParent>(&frame.bytes) {
            Ok((header, body)) => (header, frame.bytes.len() - body.len()),
            Err(e) => return self.violation(ProtocolError::Undecodable(e.to_string())),
        };
        let mut body =
            Body { frame: frame.bytes, at, fds: Mutex::new(frame.fds), core: Arc::clone(self), unread: None };
        match header {
            ToParent::Reply { id, ok } => self.reply(id, ok, body),
            ToParent::Event => {
                let charge = (body.frame.len(), body.fds.lock().unwrap_or_else(|e| e.into_inner()).len());
                body.unread = Some(charge);
                let flood = self.unread.add(charge.0, charge.1);
                let _ = self.events.unbounded_send(body);
                if let Some(flood) = flood {
                    self.violation(flood);
                }
            }
            ToParent::Logs => match wire::decode_body::<crate::logs::LogBatch>(body.bytes()) {
                Ok(batch) => {
                    let span_of = |call| self.lock().spans.get(&call).cloned();
                    crate::logs::emit(self.process.name(), self.process.pid(), batch, span_of);
                }
                Err(e) => self.violation(ProtocolError::Undecodable(format!("log lines: {e}"))),
            },
            ToParent::Ack { transfer } => self.outbox.acknowledged(transfer),
            other => self.violation(ProtocolError::Unexpected(format!("{other:?} after the handshake"))),
        }
    }

    fn reply(&self, id: u64, ok: bool, body: Body) {
        let result = if ok {
            Ok(body)
        } else {
            match wire::decode_body::<Failure>(body.bytes()) {
                Ok(failure) => Err(CallFailure::Remote(failure)),
                Err(e) => return self.violation(ProtocolError::Undecodable(format!("a failure: {e}"))),
            }
        };
        // A reply to a call nobody waits for any more (dropped, timed out) is discarded.
        let waker = {
            let mut state = self.lock();
            state.spans.remove(&id);
            state.complete(id, result)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The child closed its end of the connection: tell those waiting for that.
    fn closed_by_child(&self) {
        let waiters = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.closed_waiters)
        };
        for tx in waiters {
            let _ = tx.send(());
        }
    }

    /// The child has exited: reap it and tell everyone.
    fn finish(&self, exit: ExitInfo) {
        self.outbox.abandon_all();
        self.closed_by_child();
        let (pending, waiters) = {
            let mut state = self.lock();
            state.exit = Some(exit.clone());
            state.spans.clear();
            let failure =
                state.broken.clone().map_or_else(|| CallFailure::Exited(exit.clone()), CallFailure::Protocol);
            (state.fail_all(&failure), std::mem::take(&mut state.exit_waiters))
        };
        for waker in pending {
            waker.wake();
        }
        for tx in waiters {
            let _ = tx.send(exit.clone());
        }
        self.events.close_channel();
    }
}

/// Moves a driver to the I/O thread if its runtime drops it before the child was reaped.
struct MoveOnDrop(Option<Arc<Core>>);

impl Drop for MoveOnDrop {
    fn drop(&mut self) {
        if let Some(core) = self.0.take() {
            tracing::debug!(
                pid = core.process.pid(),
                "the connection's runtime stopped; reading it on the I/O thread"
            );
            core.move_to_io_thread();
        }
    }
}

/// How the reading phase of a driver ended.
enum End {
    Exited,
    Read(ReadError),
    /// The driver on the I/O thread took over.
    Moved,
}

async fn drive(core: Arc<Core>, home: Home) {
    let mut guard = MoveOnDrop((home == Home::Caller).then(|| Arc::clone(&core)));
    let exit = read_until_exit(&core, home).await;
    guard.0 = None;
    if let Some(exit) = exit {
        if !core.moved_away(home) {
            core.finish(exit);
        }
    }
}

/// Reads until the child has exited and was reaped; `None` when another driver took over.
async fn read_until_exit(core: &Arc<Core>, home: Home) -> Option<ExitInfo> {
    let registered = LinkDriver::new(Arc::clone(core.outbox.link()))
        .and_then(|driver| Ok((driver, reactor::register(Arc::clone(&core.process))?)));
    let (mut driver, pidfd) = match registered {
        Ok(registered) => registered,
        Err(e) => {
            tracing::error!(pid = core.process.pid(), "cannot watch the connection: {e}; killing the child");
            core.process.kill();
            return Some(reap(core).await);
        }
    };
    let end = std::future::poll_fn(|cx| poll_connection(core, home, &mut driver, &pidfd, cx)).await;
    match end {
        End::Moved => return None,
        End::Exited => drain(core),
        End::Read(ReadError::Closed) => {
            core.closed_by_child();
            loop {
                if tokio::time::timeout(EXIT_GRACE, pidfd.readable()).await.is_ok() {
                    break;
                }
                // A child the kernel is still tearing down (many GiB of mappings, a loaded
                // machine) has closed its end honestly: wait on. One that lives on is lying.
                if !crate::process::is_exiting(core.process.pid()) {
                    core.violation(ProtocolError::ClosedWhileAlive);
                    break;
                }
            }
        }
        End::Read(ReadError::Protocol(e)) => core.violation(e),
        End::Read(ReadError::Local(e)) => {
            tracing::error!(
                pid = core.process.pid(),
                "reading the connection failed on our side: {e}; killing the child"
            );
            core.process.kill();
        }
    }
    let _ = pidfd.readable().await;
    Some(reap(core).await)
}

fn poll_connection(
    core: &Arc<Core>,
    home: Home,
    driver: &mut LinkDriver,
    pidfd: &AsyncFd<Owner<Arc<ChildProcess>>>,
    cx: &mut Context<'_>,
) -> Poll<End> {
    let _reading = core.reading.lock.lock().unwrap_or_else(|e| e.into_inner());
    if core.moved_away(home) {
        return Poll::Ready(End::Moved);
    }
    core.reading.progress.fetch_add(1, Ordering::Relaxed);
    // A failed flush means the child is gone (its pidfd will say so), or that it wrote garbage
    // into the fast lane's ring.
    if let Poll::Ready(Err(crate::transport::LinkSendError::Broken(e))) = driver.poll_flush(cx) {
        return Poll::Ready(End::Read(ReadError::Protocol(e)));
    }
    let expecting = driver.link().has_lane() && {
        let mut stored = core.reading.driver.lock().unwrap_or_else(|e| e.into_inner());
        if !stored.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
            *stored = Some(cx.waker().clone());
        }
        drop(stored);
        core.lock().awaiting > 0
    };
    let spin = if expecting { crate::transport::SpinFor::Reply } else { crate::transport::SpinFor::Nothing };
    match driver.poll_frame_spinning(cx, spin) {
        Poll::Ready(Ok(frame)) => {
            core.route(frame);
            if core.lock().broken.is_some() {
                return Poll::Ready(End::Exited);
            }
            // Let the caller the frame woke run (and send its next call) before the read that
            // finds the socket empty: that read is off the round trip's critical path.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Err(e)) => return Poll::Ready(End::Read(e)),
        Poll::Pending => {}
    }
    match pidfd.poll_read_ready(cx) {
        Poll::Ready(_) => Poll::Ready(End::Exited),
        Poll::Pending => Poll::Pending,
    }
}

/// The most frames read after a child exited: more than its socket and its fast lane can hold
/// (a grandchild that kept the lane's memory could otherwise keep the driver here for ever).
const DRAIN_MAX: usize = 1 << 16;

/// Routes the frames the child sent before it exited.
fn drain(core: &Arc<Core>) {
    let _reading = core.reading.lock.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..DRAIN_MAX {
        if core.lock().broken.is_some() {
            return;
        }
        match core.outbox.link().recv_now() {
            Ok(Some(frame)) => core.route(frame),
            Ok(None) | Err(ReadError::Closed) => return,
            Err(ReadError::Protocol(e)) => return core.violation(e),
            Err(ReadError::Local(_)) => return,
        }
    }
}

/// Reaps an exited (or killed) child without blocking the runtime.
async fn reap(core: &Core) -> ExitInfo {
    loop {
        if let Some(exit) = core.process.try_reap() {
            return exit;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The reply to one call. Dropping it forgets the call: a late reply is discarded.
///
/// # Cancel safety
/// Dropping the future before it resolves is safe; the child still runs the handler.
#[derive(Debug)]
pub struct PendingCall {
    id: u64,
    core: Arc<Core>,
    /// The caller has spun for the reply once (later polls only take what is there).
    spun: bool,
}

impl PendingCall {
    /// With a fast lane, the caller reads the connection itself for a while (when no driver is
    /// reading it), spinning, so that a quick reply reaches it without waking any task or
    /// making the child ring. The driver's "I sleep" flag is cleared meanwhile and set again
    /// after (Dekker's re-check: a frame that came in between wakes the driver).
    fn look_for_reply(&mut self) {
        let core = &self.core;
        let link = core.outbox.link();
        if !link.has_lane() {
            return;
        }
        let Ok(reading) = core.reading.lock.try_lock() else { return };
        // One spin per call, on its first poll; later polls (spurious, or a `join` of many)
        // only take what is there.
        let first = !std::mem::replace(&mut self.spun, true);
        let (was_sleeping, budget) = link.lane_reader_looks(first);
        let budget = budget.unwrap_or_default();
        let start = std::time::Instant::now();
        let mut looks = 0u32;
        loop {
            looks += 1;
            // Bounded also while frames keep coming (events, other callers' replies).
            if looks.is_multiple_of(32) && start.elapsed() >= budget {
                break;
            }
            match link.recv_now() {
                Ok(Some(frame)) => {
                    core.route(frame);
                    let state = core.lock();
                    if !matches!(state.pending.get(&self.id), Some(Awaiting::Reply(_))) {
                        break;
                    }
                }
                Ok(None) if budget.is_zero() => break,
                Ok(None) => std::hint::spin_loop(),
                Err(ReadError::Protocol(e)) => {
                    drop(reading);
                    core.violation(e);
                    return;
                }
                // The driver finds the same and deals with it.
                Err(_) => break,
            }
        }
        // The driver sleeps as it did, unless something came that it must read (in the ring,
        // or on the socket where a marker we took points).
        let wake = link.lane_reader_done(was_sleeping);
        drop(reading);
        if wake {
            if let Some(driver) = core.reading.driver.lock().unwrap_or_else(|e| e.into_inner()).take() {
                driver.wake();
            }
        }
    }
}

impl Future for PendingCall {
    type Output = Result<Body, CallFailure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The reply may be in already; if not, and this caller finds it while it looks, no
        // waker was registered to be woken for nothing.
        if let Poll::Ready(outcome) = self.outcome(None) {
            return Poll::Ready(outcome);
        }
        self.look_for_reply();
        self.outcome(Some(cx))
    }
}

impl PendingCall {
    /// The call's outcome if it is in; else registers `cx` (if given) to be woken when it is.
    fn outcome(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Result<Body, CallFailure>> {
        let mut state = self.core.lock();
        match state.pending.get_mut(&self.id) {
            Some(Awaiting::Reply(waker)) => {
                if let Some(cx) = cx {
                    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *waker = Some(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
            Some(Awaiting::Done(_)) => match state.forget(self.id) {
                Some(Awaiting::Done(outcome)) => Poll::Ready(outcome),
                _ => unreachable!("the slot was looked at under this lock"),
            },
            // Collected already (polled after it resolved).
            None => Poll::Ready(Err(state.usable().err().unwrap_or(CallFailure::Stopping))),
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.core.lock().forget(self.id);
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
