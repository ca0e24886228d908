//! The child side of a process actor: an actix actor that owns the user's state and runs the
//! handlers, fed by a task on the same arbiter that reads the parent's connection (one wake-up
//! per batch of frames, no thread hop).
//!
//! Life of a child, after the runtime's bootstrap:
//! 1. decode the initial state; install logging (name and pid on every line) and the panic hook;
//! 2. start an actix system; run `pre_run`; answer `Ready` (or `StartFailed`, exit code 1);
//! 3. handle frames in order until `Stop`, [`ProcessContext::stop`], or the parent's channel
//!    closes; then run `post_run` and exit with status 0.

use crate::actor::ProcessActor;
use crate::context::{ContextShared, ProcessContext};
use crate::dispatch::{catching, install_panic_hook, with_backtrace, Delivery, Dispatch, Outcome};
use actix::{Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Handler, WrapFuture};
use ensemble_runtime::child::ChildBoot;
use ensemble_runtime::error_chain;
use ensemble_runtime::logs;
use ensemble_runtime::transport::{Admission, Frame, LinkDriver, Payload, ReadError, SpinFor};
use ensemble_runtime::wire::{self, Failure, ToChild, ToParent};
use ensemble_runtime::Outbox;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Exit code of a child whose actor failed to start.
pub const EXIT_START_FAILED: i32 = 1;

/// Runs actor `A` in this (child) process until it stops; returns the exit code.
///
/// Referenced by the registry entry that `#[derive(ProcessActor)]` emits.
pub fn run_child<A: ProcessActor>(mut boot: ChildBoot) -> i32 {
    init_logging();
    let span = tracing::info_span!("actor", name = %boot.name, pid = std::process::id());
    let _entered = span.enter();
    install_panic_hook();
    let fds = boot.take_state_fds();
    let state = match wire::decode_body_with::<A>(boot.state(), fds) {
        Ok(state) => state,
        Err(e) => {
            let what = format!("the initial state of {}", std::any::type_name::<A>());
            boot.start_failed(&Failure::Decode { what, detail: e.to_string() });
            return EXIT_START_FAILED;
        }
    };
    let link = Arc::clone(&boot.link);
    let name = boot.name.clone();
    let shared = Arc::new(ContextShared {
        name: boot.name.clone(),
        outbox: Outbox::new(Arc::clone(&link)),
        stop: AtomicBool::new(false),
        handled: AtomicU64::new(0),
        reader: std::sync::Mutex::new(None),
        handler_waits: AtomicBool::new(false),
    });
    drop(boot);
    let system = actix_rt::System::new();
    let started = system.block_on(start(state, Arc::clone(&shared)));
    if !started {
        let _ = link.flush_blocking(LAST_WORDS);
        return EXIT_START_FAILED;
    }
    let code = match system.run() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("the actix system failed: {e}");
            EXIT_START_FAILED
        }
    };
    // Log lines, replies and events still queued leave before the process does.
    flush_logs(&shared);
    if link.flush_blocking(LAST_WORDS).is_err() {
        logs::spill_to_stderr(&name);
    }
    // The last words are out: the parent may go on now, while the kernel tears down this
    // process's mappings (left to the exit, see `Backend::stopped`) and then reaps it.
    let _ = link.close();
    code
}

/// How long an exiting child waits for its last frames to leave.
const LAST_WORDS: Duration = Duration::from_secs(5);

async fn start<A: ProcessActor>(mut state: A, shared: Arc<ContextShared>) -> bool {
    let mut ctx = ProcessContext::<A>::new(Arc::clone(&shared));
    let failure = match catching(|| state.pre_run(&mut ctx)) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Failure::Error { message: format!("pre_run failed: {}", error_chain(&*e)) }),
        Err(failure) => Some(failure),
    };
    if let Some(failure) = failure {
        let _ = shared.outbox.send(&ToParent::StartFailed, &failure, Admission::Control);
        return false;
    }
    let driver = match LinkDriver::new(Arc::clone(shared.outbox.link())) {
        Ok(driver) => driver,
        Err(e) => {
            let failure = Failure::Error { message: format!("cannot watch the connection: {e}") };
            let _ = shared.outbox.send(&ToParent::StartFailed, &failure, Admission::Control);
            return false;
        }
    };
    if shared.outbox.send(&ToParent::Ready, &(), Admission::Control).is_err() {
        return false;
    }
    let state = Rc::new(RefCell::new(state));
    let direct = Direct { state: Rc::downgrade(&state), ctx: ctx.clone() };
    let addr = Backend { state, ctx, backlog: VecDeque::new(), busy: false, stopping: false }.start();
    actix_rt::spawn(read_parent(driver, shared, addr, direct));
    true
}

/// What the reader needs to run a synchronous handler itself: with a fast lane, a call that
/// finds the backend idle is handled on the reader's task, without the hop through the actor's
/// mailbox (same thread, same order: the backend has nothing pending then).
struct Direct<A: ProcessActor> {
    /// The backend owns the state; it goes with the backend.
    state: std::rc::Weak<RefCell<A>>,
    ctx: ProcessContext<A>,
}

impl<A: ProcessActor> Direct<A> {
    /// Runs `frame` now if it is a call or cast to a synchronous handler (and nothing asked
    /// the actor to stop); gives it back otherwise, for the backend. Returns whether the actor
    /// must stop now (it asked to, or the parent is gone).
    fn handle(&mut self, frame: Frame) -> Result<bool, Frame> {
        if self.ctx.shared().stop.load(Ordering::SeqCst) {
            return Err(frame);
        }
        let Ok((header, body)) = wire::decode::<ToChild>(&frame.bytes) else { return Err(frame) };
        let (id, tag) = match header {
            ToChild::Call { id, tag } => (Some(id), tag),
            ToChild::Cast { tag } => (None, tag),
            _ => return Err(frame),
        };
        let Some(Dispatch::Sync(entry)) = A::HANDLERS.get(tag as usize) else { return Err(frame) };
        let Some(state) = self.state.upgrade() else { return Err(frame) };
        let Ok(mut state) = state.try_borrow_mut() else { return Err(frame) };
        let at = frame.bytes.len() - body.len();
        let Frame { bytes, fds, .. } = frame;
        let delivery = Delivery { id, transfer: wire::transfer_of(&bytes) };
        let outcome = logs::in_call(id, || entry(&mut state, &bytes[at..], fds, &mut self.ctx, delivery));
        drop(state);
        let sent = send_outcome(self.ctx.shared(), id, outcome);
        Ok(!sent || self.ctx.shared().stop.load(Ordering::SeqCst))
    }
}

/// Sends what a handler produced: its reply, a failure's reply, or (a cast's failure) a log
/// line. False when the parent is gone.
fn send_outcome(shared: &ContextShared, id: Option<u64>, outcome: Outcome) -> bool {
    let encoded = match (outcome, id) {
        (Ok(Some(encoded)), _) => Some(encoded),
        (Ok(None), _) => None,
        (Err(failure), Some(id)) => {
            let frame = shared.outbox.link().frame_buf();
            wire::encode_into(frame, &ToParent::Reply { id, ok: false }, &failure).ok()
        }
        (Err(failure), None) => {
            tracing::error!("a message sent with do_send failed: {}", with_backtrace(&failure));
            None
        }
    };
    if let Some(encoded) = encoded {
        // The handler's log lines go first: the parent has them before the reply.
        flush_logs(shared);
        if let Err(e) = shared.outbox.send_encoded(encoded, Admission::Control) {
            tracing::debug!("cannot reply, the parent is gone: {e}");
            return false;
        }
    }
    true
}

/// Reads the parent's frames on this arbiter and hands them to the backend, all that arrived
/// in one wake-up as one message; flushes what did not fit in the socket.
async fn read_parent<A: ProcessActor>(
    mut driver: LinkDriver,
    shared: Arc<ContextShared>,
    addr: Addr<Backend<A>>,
    mut direct: Direct<A>,
) {
    // After a frame is handed over alone, the next poll takes whatever else has arrived as one
    // batch: the first frame of a burst is handled at once, the rest with one wake-up.
    let mut batch_next = false;
    let mut handed = 0u64;
    let end = std::future::poll_fn(|cx| {
        if let Poll::Ready(Err(e)) = driver.poll_flush(cx) {
            return Poll::Ready(Err(ReadError::Local(std::io::Error::other(e))));
        }
        let mut batch = Vec::new();
        let mut direct_run = 0;
        // With a fast lane, spin for the next frame only once the backend is done with the
        // frames it has (it runs on this thread); it wakes this task when it is.
        let lane = driver.link().has_lane();
        // A stopping actor handles nothing more: the reader reads on (acknowledgements, the
        // parent's end) on the doorbell, and never waits for the backend, which may be gone.
        let stopping = shared.stop.load(Ordering::SeqCst);
        let spin = if !lane || stopping {
            SpinFor::Nothing
        } else if shared.handled.load(Ordering::Relaxed) == handed {
            SpinFor::NextFrame
        } else if shared.handler_waits.load(Ordering::Relaxed) {
            // An async handler may take long: read on (acknowledgements, the parent's end),
            // woken by the doorbell.
            SpinFor::Nothing
        } else {
            *shared.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            SpinFor::Later
        };
        let end = loop {
            // Once a frame is in hand, only what has arrived already joins it: no spin, and no
            // doorbell either (the backend wakes this task once it has handled the batch).
            let spin = if batch.is_empty() {
                spin
            } else if lane && !stopping && !shared.handler_waits.load(Ordering::Relaxed) {
                *shared.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                SpinFor::Later
            } else {
                SpinFor::Nothing
            };
            match driver.poll_frame_spinning(cx, spin) {
                Poll::Ready(Ok(frame)) if acknowledged(&shared, &frame) => {}
                // The backend is idle: a synchronous handler runs here, now.
                Poll::Ready(Ok(frame))
                    if lane && batch.is_empty() && shared.handled.load(Ordering::Relaxed) == handed =>
                {
                    match direct.handle(frame) {
                        // Let the other tasks of this thread run now and then.
                        Ok(false) => {
                            direct_run += 1;
                            if direct_run == MAX_BATCH {
                                cx.waker().wake_by_ref();
                                break Poll::Pending;
                            }
                        }
                        Ok(true) => {
                            addr.do_send(StopAsked);
                            cx.waker().wake_by_ref();
                            break Poll::Pending;
                        }
                        Err(frame) => {
                            batch.push(frame);
                            cx.waker().wake_by_ref();
                            break Poll::Pending;
                        }
                    }
                }
                Poll::Ready(Ok(frame)) => {
                    batch.push(frame);
                    if !batch_next {
                        // The backend handles it (and replies) before this task reads again:
                        // the read that finds the socket empty is off the round trip's path.
                        cx.waker().wake_by_ref();
                        break Poll::Pending;
                    }
                    if batch.len() == MAX_BATCH {
                        cx.waker().wake_by_ref();
                        break Poll::Pending;
                    }
                }
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        batch_next = !batch.is_empty() && !batch_next;
        if !batch.is_empty() {
            handed += batch.len() as u64;
            addr.do_send(Incoming(batch));
        }
        end
    })
    .await;
    match end {
        Err(ReadError::Closed) => tracing::debug!("the parent's connection closed"),
        Err(e) => tracing::error!("stopping: {e}"),
        Ok(()) => {}
    }
    shared.outbox.abandon_all();
    addr.do_send(ParentGone);
}

/// Handles the parent's acknowledgement of a hand-over at once, so that the holds go even while
/// the actor is busy or stopping. Returns whether `frame` was one. Only the frame's prefix is
/// read: other frames are decoded once, by the actor.
fn acknowledged(shared: &ContextShared, frame: &Frame) -> bool {
    match wire::acknowledgement_of(&frame.bytes) {
        Some(transfer) => {
            shared.outbox.acknowledged(transfer);
            true
        }
        None => false,
    }
}

/// The most frames handed to the backend in one message.
const MAX_BATCH: usize = 64;

/// How long a stopping child waits for the parent to take the segments it handed over.
const HANDOVER_GRACE: Duration = Duration::from_secs(5);

struct Backend<A: ProcessActor> {
    state: Rc<RefCell<A>>,
    ctx: ProcessContext<A>,
    /// Frames received but not handled yet, in order.
    backlog: VecDeque<Frame>,
    /// An async handler is running: the backlog waits for it.
    busy: bool,
    /// A stop was asked for: the backlog is dropped, its callers see the exit.
    stopping: bool,
}

impl<A: ProcessActor> Actor for Backend<A> {
    type Context = actix::Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        // Lines logged outside handlers (timers, threads the actor started) leave shortly after.
        let shared = Arc::clone(self.ctx.shared_arc());
        actix::spawn(async move {
            loop {
                logs::queued().await;
                tokio::time::sleep(logs::FLUSH_EVERY).await;
                flush_logs(&shared);
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        match self.state.try_borrow_mut() {
            Ok(mut state) => {
                if let Err(failure) = catching(|| state.post_run(&mut self.ctx)) {
                    tracing::error!("post_run {}", with_backtrace(&failure));
                }
            }
            Err(_) => tracing::error!("stopped while a handler still holds the state; post_run skipped"),
        }
        // The process exits next: the segments the state lets go of stay mapped until then, so
        // that the teardown of their page tables (about 35 ms per GiB) comes after this child
        // told its parent it is done, not before.
        ensemble_runtime::shm::leave_mappings_to_exit();
        let shared = Arc::clone(self.ctx.shared_arc());
        // Children of this process's supervisor stop in order before the process exits, and
        // segments this child handed over reach the parent before it lets go of them.
        actix::spawn(async move {
            finish_handovers(&shared).await;
            let hooks = EXIT_HOOKS.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for hook in hooks {
                hook().await;
            }
            actix::System::current().stop();
        });
    }
}

/// Work that must end before a child process exits, after `post_run`: registered by the layers
/// above this one (the process supervisor stops its children in order), so that the backend
/// needs to know none of them.
pub(crate) type ExitHook = fn() -> futures::future::LocalBoxFuture<'static, ()>;

static EXIT_HOOKS: std::sync::Mutex<Vec<ExitHook>> = std::sync::Mutex::new(Vec::new());

/// Runs `hook` (once per registration, in registration order) when this process, a child, has
/// stopped its actor and before it exits.
pub(crate) fn before_exit(hook: ExitHook) {
    EXIT_HOOKS.lock().unwrap_or_else(|e| e.into_inner()).push(hook);
}

/// Frames from the parent, in the order they arrived.
struct Incoming(Vec<Frame>);

impl actix::Message for Incoming {
    type Result = ();
}

struct ParentGone;

impl actix::Message for ParentGone {
    type Result = ();
}

/// A handler the reader ran asked the actor to stop (or its reply found the parent gone).
struct StopAsked;

impl actix::Message for StopAsked {
    type Result = ();
}

impl<A: ProcessActor> Handler<StopAsked> for Backend<A> {
    type Result = ();

    fn handle(&mut self, _: StopAsked, ctx: &mut Self::Context) {
        self.stop(ctx);
    }
}

impl<A: ProcessActor> Handler<Incoming> for Backend<A> {
    type Result = ();

    fn handle(&mut self, Incoming(frames): Incoming, ctx: &mut Self::Context) {
        self.backlog.extend(frames);
        self.drain(ctx);
    }
}

impl<A: ProcessActor> Handler<ParentGone> for Backend<A> {
    type Result = ();

    fn handle(&mut self, _: ParentGone, ctx: &mut Self::Context) {
        self.stop(ctx);
    }
}

impl<A: ProcessActor> Backend<A> {
    /// Handles the backlog in order, until it is empty or an async handler is running.
    fn drain(&mut self, ctx: &mut actix::Context<Self>) {
        while !self.busy && !self.stopping {
            let Some(frame) = self.backlog.pop_front() else { break };
            self.handle_frame(frame, ctx);
            if !self.busy {
                self.done_with_frame();
            }
        }
        if self.stopping {
            self.drop_backlog();
        } else if self.backlog.is_empty() && !self.busy {
            self.wake_reader();
        }
    }

    /// One more frame handled (the reader may spin on the fast lane once all are).
    fn done_with_frame(&self) {
        self.ctx_shared().handled.fetch_add(1, Ordering::Relaxed);
    }

    fn handle_frame(&mut self, frame: Frame, ctx: &mut actix::Context<Self>) {
        let Frame { bytes: frame, fds, .. } = frame;
        let (header, body) = match wire::decode::<ToChild>(&frame) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::error!("dropping a frame that does not decode: {e}");
                return;
            }
        };
        let at = frame.len() - body.len();
        match header {
            ToChild::Call { id, tag } => self.dispatch(tag, frame, at, fds, Some(id), ctx),
            ToChild::Cast { tag } => self.dispatch(tag, frame, at, fds, None, ctx),
            ToChild::Stop => self.stop(ctx),
            ToChild::Start { .. } => tracing::error!("ignoring a second start frame"),
            // Handled on the receiving thread already; one that slipped through changes nothing.
            ToChild::Ack { transfer } => self.ctx_shared().outbox.acknowledged(transfer),
        }
    }

    fn stop(&mut self, ctx: &mut actix::Context<Self>) {
        self.stopping = true;
        // Seen by the reader too: it runs no handler of its own from now on.
        self.ctx_shared().stop.store(true, Ordering::SeqCst);
        self.drop_backlog();
        ctx.stop();
    }

    /// A stopping backend handles nothing more: what waits is dropped (its callers see the
    /// exit), counted as done so that the reader does not wait for it, and the reader woken.
    fn drop_backlog(&mut self) {
        let dropped = self.backlog.len() as u64;
        self.backlog.clear();
        self.ctx_shared().handled.fetch_add(dropped, Ordering::Relaxed);
        self.wake_reader();
    }

    /// Wakes the reader if it waits for the backend to catch up.
    fn wake_reader(&self) {
        let reader = self.ctx_shared().reader.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    fn dispatch(
        &mut self,
        tag: u32,
        frame: Payload,
        at: usize,
        fds: Vec<OwnedFd>,
        id: Option<u64>,
        ctx: &mut actix::Context<Self>,
    ) {
        let delivery = Delivery { id, transfer: wire::transfer_of(&frame) };
        // Handlers run `in_call`: their log lines are tagged with the call, and the parent
        // re-emits them where the call was made.
        match A::HANDLERS.get(tag as usize) {
            Some(Dispatch::Sync(entry)) => {
                let outcome = logs::in_call(id, || {
                    entry(&mut self.state.borrow_mut(), &frame[at..], fds, &mut self.ctx, delivery)
                });
                self.finish(id, outcome, ctx);
            }
            Some(Dispatch::Async(entry)) => {
                let future = entry(Rc::clone(&self.state), frame, at, fds, self.ctx.clone(), delivery);
                let future = logs::InCall::new(id, future);
                self.busy = true;
                self.ctx_shared().handler_waits.store(true, Ordering::Relaxed);
                // The reader may be waiting for this frame to be done: it reads on meanwhile.
                self.wake_reader();
                ctx.wait(future.into_actor(self).map(move |outcome, act, ctx| {
                    act.busy = false;
                    act.ctx_shared().handler_waits.store(false, Ordering::Relaxed);
                    act.finish(id, outcome, ctx);
                    act.done_with_frame();
                    act.drain(ctx);
                }));
            }
            None => {
                if let Some(transfer) = delivery.transfer {
                    self.ctx_shared().outbox.acknowledge(transfer);
                }
                let detail = format!("{} has no handler with tag {tag}", A::KEY);
                self.finish(id, Err(Failure::Decode { what: "message tag".into(), detail }), ctx);
            }
        }
    }

    fn finish(&mut self, id: Option<u64>, outcome: Outcome, ctx: &mut actix::Context<Self>) {
        if !send_outcome(self.ctx_shared(), id, outcome) || self.ctx_shared().stop.load(Ordering::SeqCst) {
            self.stop(ctx);
        }
    }

    fn ctx_shared(&self) -> &ContextShared {
        self.ctx.shared()
    }
}

/// Segments this child handed over must reach the parent before the child lets go of them by
/// exiting: wait (bounded) for the parent's acknowledgements, which this arbiter reads.
async fn finish_handovers(shared: &ContextShared) {
    let deadline = tokio::time::Instant::now() + HANDOVER_GRACE;
    while shared.outbox.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if shared.outbox.in_flight() > 0 {
        tracing::warn!(
            "{} hand-overs still unacknowledged after {HANDOVER_GRACE:?}",
            shared.outbox.in_flight()
        );
    }
}

/// A child's log lines go to its parent's subscriber ([`ensemble_runtime::logs`]), filtered
/// here by `RUST_LOG` (default `info`).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry().with(filter).with(logs::ForwardLayer).try_init();
}

/// Sends the log lines queued so far to the parent, ahead of whatever is sent next.
fn flush_logs(shared: &ContextShared) {
    if let Some(batch) = logs::take_batch() {
        let _ = shared.outbox.send(&ToParent::Logs, &batch, Admission::Control);
    }
}
