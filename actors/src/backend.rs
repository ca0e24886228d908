//! The child side of a process actor: an actix actor that owns the user's state and runs the
//! handlers, fed by a thread that blocks on the parent's channel.
//!
//! Life of a child, after the runtime's bootstrap:
//! 1. decode the initial state; install logging (name and pid on every line) and the panic hook;
//! 2. start an actix system; run `pre_run`; answer `Ready` (or `StartFailed`, exit code 1);
//! 3. handle frames in order until `Stop`, [`ProcessContext::stop`], or the parent's channel
//!    closes; then run `post_run` and exit with status 0.

use crate::actor::ProcessActor;
use crate::context::{ContextShared, ProcessContext};
use crate::dispatch::{install_panic_hook, panic_failure, Delivery, Dispatch, Outcome};
use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Handler, WrapFuture};
use ensemble_runtime::__private::ipc_channel::ipc::IpcBytesReceiver;
use ensemble_runtime::child::ChildBoot;
use ensemble_runtime::wire::{self, Failure, ToChild, ToParent};
use ensemble_runtime::{Outbox, Receiver};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exit code of a child whose actor failed to start.
pub const EXIT_START_FAILED: i32 = 1;

/// Runs actor `A` in this (child) process until it stops; returns the exit code.
///
/// Referenced by the registry entry that `#[derive(ProcessActor)]` emits.
pub fn run_child<A: ProcessActor>(boot: ChildBoot) -> i32 {
    init_logging(boot.stderr_is_terminal);
    let span = tracing::info_span!("actor", name = %boot.name, pid = std::process::id());
    let _entered = span.enter();
    install_panic_hook();
    let state = match wire::decode_body::<A>(&boot.state) {
        Ok(state) => state,
        Err(e) => {
            let what = format!("the initial state of {}", std::any::type_name::<A>());
            boot.start_failed(&Failure::Decode { what, detail: e.to_string() });
            return EXIT_START_FAILED;
        }
    };
    let ChildBoot { name, from_parent, to_parent, .. } = boot;
    let shared =
        Arc::new(ContextShared { name, outbox: Outbox::new(to_parent), stop: AtomicBool::new(false) });
    let system = actix_rt::System::new();
    let started = system.block_on(start(state, shared, from_parent, span.clone()));
    if !started {
        return EXIT_START_FAILED;
    }
    match system.run() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("the actix system failed: {e}");
            EXIT_START_FAILED
        }
    }
}

async fn start<A: ProcessActor>(
    mut state: A,
    shared: Arc<ContextShared>,
    from_parent: IpcBytesReceiver,
    span: tracing::Span,
) -> bool {
    let mut ctx = ProcessContext::<A>::new(Arc::clone(&shared));
    let failure = match std::panic::catch_unwind(AssertUnwindSafe(|| state.pre_run(&mut ctx))) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Failure::Error { message: format!("pre_run failed: {}", error_chain(&*e)) }),
        Err(payload) => Some(panic_failure(payload)),
    };
    if let Some(failure) = failure {
        let _ = shared.outbox.send(&ToParent::StartFailed, &failure);
        return false;
    }
    if shared.outbox.send(&ToParent::Ready, &()).is_err() {
        return false;
    }
    let addr = Backend {
        state: Rc::new(RefCell::new(state)),
        ctx,
        backlog: VecDeque::new(),
        busy: false,
        stopping: false,
    }
    .start();
    let receiving = std::thread::Builder::new().name("ensemble-rx".into()).spawn(move || {
        let _entered = span.enter();
        let mut from_parent = Receiver::new(from_parent);
        // After each frame the next is often close behind (the caller's next call): look for
        // it briefly before blocking.
        while let Ok(frame) = from_parent.recv(true) {
            // Hand over whatever else has arrived in one go: one wake-up of the arbiter per
            // batch instead of one per frame.
            let mut batch = Vec::new();
            let mut next = Some(frame);
            while let Some(frame) = next {
                if !acknowledged(&shared, &frame) {
                    batch.push(frame);
                }
                next = if batch.len() < MAX_BATCH {
                    // A closed channel shows up again at the next blocking `recv`.
                    from_parent.try_recv().and_then(Result::ok)
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                addr.do_send(Incoming(batch));
            }
        }
        tracing::debug!("the parent's channel closed");
        shared.outbox.abandon_all();
        addr.do_send(ParentGone);
    });
    receiving.is_ok()
}

/// Handles the parent's acknowledgement of a hand-over right on the receiving thread, so that
/// the holds go even while the actor is busy or stopping. Returns whether `frame` was one.
/// Only the frame's prefix is read: other frames are decoded once, by the actor.
fn acknowledged(shared: &ContextShared, frame: &[u8]) -> bool {
    match wire::acknowledgement_of(frame) {
        Some(transfer) => {
            shared.outbox.acknowledged(transfer);
            true
        }
        None => false,
    }
}

/// How long a stopping child waits for the parent to take the segments it handed over.
const HANDOVER_GRACE: Duration = Duration::from_secs(5);

/// The most frames handed to the arbiter in one message.
const MAX_BATCH: usize = 64;

struct Backend<A: ProcessActor> {
    state: Rc<RefCell<A>>,
    ctx: ProcessContext<A>,
    /// Frames received but not handled yet, in order.
    backlog: VecDeque<Vec<u8>>,
    /// An async handler is running: the backlog waits for it.
    busy: bool,
    /// A stop was asked for: the backlog is dropped, its callers see the exit.
    stopping: bool,
}

impl<A: ProcessActor> Actor for Backend<A> {
    type Context = actix::Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.finish_handovers();
        let Ok(mut state) = self.state.try_borrow_mut() else {
            tracing::error!("stopped while a handler still holds the state; post_run skipped");
            actix::System::current().stop();
            return;
        };
        if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| state.post_run(&mut self.ctx))) {
            tracing::error!("post_run {}", panic_failure(payload));
        }
        // Children of this process's supervisor stop in order before the process exits.
        actix::spawn(async {
            if let Err(e) = crate::supervisor::shutdown_process_supervisor().await {
                tracing::warn!("this process's supervisor: {e}");
            }
            actix::System::current().stop();
        });
    }
}

/// Frames from the parent, in the order they arrived.
struct Incoming(Vec<Vec<u8>>);

impl actix::Message for Incoming {
    type Result = ();
}

struct ParentGone;

impl actix::Message for ParentGone {
    type Result = ();
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
            let Some(frame) = self.backlog.pop_front() else { return };
            self.handle_frame(frame, ctx);
        }
    }

    fn handle_frame(&mut self, frame: Vec<u8>, ctx: &mut actix::Context<Self>) {
        let (header, body) = match wire::decode::<ToChild>(&frame) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::error!("dropping a frame that does not decode: {e}");
                return;
            }
        };
        let at = frame.len() - body.len();
        match header {
            ToChild::Call { id, tag } => self.dispatch(tag, frame, at, Some(id), ctx),
            ToChild::Cast { tag } => self.dispatch(tag, frame, at, None, ctx),
            ToChild::Stop => self.stop(ctx),
            ToChild::Start { .. } => tracing::error!("ignoring a second start frame"),
            // Handled on the receiving thread already; one that slipped through changes nothing.
            ToChild::Ack { transfer } => self.ctx_shared().outbox.acknowledged(transfer),
        }
    }

    fn stop(&mut self, ctx: &mut actix::Context<Self>) {
        self.stopping = true;
        ctx.stop();
    }

    fn dispatch(
        &mut self,
        tag: u32,
        frame: Vec<u8>,
        at: usize,
        id: Option<u64>,
        ctx: &mut actix::Context<Self>,
    ) {
        let delivery = Delivery { id, transfer: wire::transfer_of(&frame) };
        match A::HANDLERS.get(tag as usize) {
            Some(Dispatch::Sync(entry)) => {
                let outcome = entry(&mut self.state.borrow_mut(), &frame[at..], &mut self.ctx, delivery);
                self.finish(id, outcome, ctx);
            }
            Some(Dispatch::Async(entry)) => {
                let future = entry(Rc::clone(&self.state), frame, at, self.ctx.clone(), delivery);
                self.busy = true;
                ctx.wait(future.into_actor(self).map(move |outcome, act, ctx| {
                    act.busy = false;
                    act.finish(id, outcome, ctx);
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
        let encoded = match (outcome, id) {
            (Ok(Some(encoded)), _) => Some(encoded),
            (Ok(None), _) => None,
            (Err(failure), Some(id)) => wire::encode(&ToParent::Reply { id, ok: false }, &failure).ok(),
            (Err(failure), None) => {
                tracing::error!("a message sent with do_send failed: {failure}");
                None
            }
        };
        if let Some(encoded) = encoded {
            if let Err(e) = self.ctx_shared().outbox.send_encoded(encoded) {
                tracing::debug!("cannot reply, the parent is gone: {e}");
                self.stop(ctx);
            }
        }
        if self.ctx_shared().stop.load(Ordering::SeqCst) {
            self.stop(ctx);
        }
    }

    fn ctx_shared(&self) -> &ContextShared {
        self.ctx.shared()
    }

    /// Segments this child handed over must reach the parent before the child lets go of them
    /// by exiting: wait (bounded) for the parent's acknowledgements.
    fn finish_handovers(&self) {
        let outbox = &self.ctx_shared().outbox;
        if outbox.in_flight() > 0 && !outbox.wait_drained(HANDOVER_GRACE) {
            tracing::warn!("{} hand-overs still unacknowledged after {HANDOVER_GRACE:?}", outbox.in_flight());
        }
    }
}

fn init_logging(ansi: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
