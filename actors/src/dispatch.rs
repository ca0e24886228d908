//! From a frame to a handler call and back: the glue `#[derive(ProcessActor)]` points at.
//!
//! Each handled message gets one monomorphised entry function, in a table indexed by the
//! message's tag. An entry decodes the body, calls the handler with panics caught, and encodes
//! the reply frame, so the backend never names a user type.

use crate::actor::{AsyncProcessHandler, ProcessActor, ProcessHandler};
use crate::context::ProcessContext;
use crate::message::RemoteMessage;
use ensemble_runtime::transport::Payload;
use ensemble_runtime::wire::{self, Encoded, Failure, ToParent};
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

/// What an entry produces: the reply frame for a call, `None` for a cast, or why it failed.
pub type Outcome = Result<Option<Encoded>, Failure>;

/// Which incoming message an entry handles: its call id (`None` for a cast) and the hand-over
/// its frame carries, to acknowledge once the message is decoded.
#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    /// The call id; `None` for a cast.
    pub id: Option<u64>,
    /// The hand-over of segments in the message, if any.
    pub transfer: Option<u64>,
}

/// A synchronous handler entry: state, encoded message, context, and what it answers.
pub type SyncEntry<A> = fn(&mut A, &[u8], Vec<OwnedFd>, &mut ProcessContext<A>, Delivery) -> Outcome;

/// An asynchronous handler entry: like [`SyncEntry`], owning what the future needs.
pub type AsyncEntry<A> = fn(
    Rc<RefCell<A>>,
    Payload,
    usize,
    Vec<OwnedFd>,
    ProcessContext<A>,
    Delivery,
) -> LocalBoxFuture<'static, Outcome>;

/// One row of an actor's handler table.
pub enum Dispatch<A: ProcessActor> {
    /// A [`ProcessHandler`].
    Sync(SyncEntry<A>),
    /// An [`AsyncProcessHandler`].
    Async(AsyncEntry<A>),
}

impl<A: ProcessActor> std::fmt::Debug for Dispatch<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dispatch::Sync(_) => f.write_str("Dispatch::Sync"),
            Dispatch::Async(_) => f.write_str("Dispatch::Async"),
        }
    }
}

/// The entry for a [`ProcessHandler<M>`].
///
/// # Errors
/// A [`Failure`] when the message does not decode or the handler panics.
pub fn sync_entry<A, M>(
    state: &mut A,
    body: &[u8],
    fds: Vec<OwnedFd>,
    ctx: &mut ProcessContext<A>,
    delivery: Delivery,
) -> Outcome
where
    A: ProcessHandler<M>,
    M: RemoteMessage,
{
    let msg = decode::<A, M>(body, fds, ctx, delivery)?;
    let reply = catching(|| state.handle(msg, ctx))?;
    encode_reply::<A, M>(ctx, delivery.id, &reply)
}

/// The entry for an [`AsyncProcessHandler<M>`].
pub fn async_entry<A, M>(
    state: Rc<RefCell<A>>,
    frame: Payload,
    at: usize,
    fds: Vec<OwnedFd>,
    mut ctx: ProcessContext<A>,
    delivery: Delivery,
) -> LocalBoxFuture<'static, Outcome>
where
    A: AsyncProcessHandler<M>,
    M: RemoteMessage,
{
    async move {
        let msg = decode::<A, M>(&frame[at..], fds, &ctx, delivery)?;
        drop(frame);
        // The borrow lives across the handler's awaits on purpose: the backend runs the future
        // with `ctx.wait`, so no other message (and no other borrow) is handled meanwhile.
        #[allow(clippy::await_holding_refcell_ref)]
        let handled = AssertUnwindSafe(async {
            let mut state = state.borrow_mut();
            state.handle(msg, &mut ctx).await
        });
        let reply = Catching(std::pin::pin!(handled.catch_unwind())).await.map_err(panic_failure)?;
        encode_reply::<A, M>(&ctx, delivery.id, &reply)
    }
    .boxed_local()
}

/// Decodes the message and, if it handed over segments, acknowledges them (also on failure, so
/// that the sender lets go).
pub(crate) fn decode<A: ProcessActor, M: RemoteMessage>(
    body: &[u8],
    fds: Vec<OwnedFd>,
    ctx: &ProcessContext<A>,
    delivery: Delivery,
) -> Result<M, Failure> {
    let msg = wire::decode_body_with::<M>(body, fds);
    if let Some(transfer) = delivery.transfer {
        ctx.shared().outbox.acknowledge(transfer);
    }
    msg.map_err(|e| Failure::Decode { what: std::any::type_name::<M>().to_owned(), detail: e.to_string() })
}

pub(crate) fn encode_reply<A: ProcessActor, M: RemoteMessage>(
    ctx: &ProcessContext<A>,
    id: Option<u64>,
    reply: &M::Result,
) -> Outcome {
    let Some(id) = id else { return Ok(None) };
    let frame = ctx.shared().outbox.link().frame_buf();
    wire::encode_into(frame, &ToParent::Reply { id, ok: true }, reply)
        .map(Some)
        .map_err(|e| Failure::Error { message: format!("the reply could not be encoded: {e}") })
}

thread_local! {
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
    /// How many [`catching`] scopes (or polls of a [`Catching`] future) this thread is in: a
    /// panic there becomes a [`Failure`] that someone reports, so the hook does not log it.
    static CATCHING: Cell<usize> = const { Cell::new(0) };
}

/// Installs the panic hook that records each panic's message, location and backtrace, so that
/// the failure sent to the caller carries them. Called once in every child.
///
/// One report per panic: a panic caught by [`catching`] travels to the caller (a cast's and
/// `post_run`'s are logged by the backend, with this backtrace); only a panic outside every such
/// scope (a spawned task, a thread of the user's) is logged here, since nobody else reports it.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = payload_message(info.payload());
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::force_capture();
        let backtrace = without_panic_machinery(&backtrace.to_string());
        if CATCHING.with(Cell::get) == 0 {
            tracing::error!("panicked at {location}: {message}\n{backtrace}");
        }
        LAST_PANIC.with(|last| {
            *last.borrow_mut() = Some((message, format!("panicked at {location}\n{backtrace}")));
        });
    }));
}

/// Runs `f` with panics caught and turned into the [`Failure`] its caller is sent.
pub(crate) fn catching<R>(f: impl FnOnce() -> R) -> Result<R, Failure> {
    let _scope = CatchScope::enter();
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(panic_failure)
}

/// A future polled inside a catching scope, for async handlers (whose panics `catch_unwind`
/// turns into failures).
struct Catching<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for Catching<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let _scope = CatchScope::enter();
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Marks this thread as inside a catching scope until dropped (also when unwinding).
struct CatchScope;

impl CatchScope {
    fn enter() -> CatchScope {
        CATCHING.with(|c| c.set(c.get() + 1));
        CatchScope
    }
}

impl Drop for CatchScope {
    fn drop(&mut self) {
        CATCHING.with(|c| c.set(c.get() - 1));
    }
}

/// A failure as the child logs it when nobody else reports it: a panic's message, then where it
/// panicked and the backtrace.
pub(crate) fn with_backtrace(failure: &Failure) -> String {
    match failure {
        Failure::Panicked { message, backtrace } => format!("panicked: {message}\n{backtrace}"),
        other => other.to_string(),
    }
}

/// Drops the leading frames of a backtrace that belong to the panic machinery (the hook, std's
/// and core's panicking functions), so that it starts at the code that panicked.
fn without_panic_machinery(backtrace: &str) -> String {
    let is_frame_start = |line: &str| {
        let t = line.trim_start();
        t.split_once(':').is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let machinery = [
        "install_panic_hook",
        "std::panicking",
        "core::panicking",
        "rust_begin_unwind",
        "__rust_end_short_backtrace",
    ];
    let lines: Vec<&str> = backtrace.lines().collect();
    // Everything up to the last machinery frame before the first frame of other code that
    // follows the unwinding entry point (later `std::panicking` frames are catch_unwind's).
    let mut cut = 0;
    let mut unwinding = false;
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| is_frame_start(l)) {
        if machinery.iter().any(|m| line.contains(m)) {
            unwinding |= line.contains("rust_begin_unwind") || line.contains("core::panicking");
            cut = i + 1;
            while lines.get(cut).is_some_and(|l| !is_frame_start(l)) {
                cut += 1; // its "at file:line"
            }
        } else if unwinding {
            break;
        }
    }
    // Then the standard library's frames that raised the panic (a slice index, `unwrap`), so
    // that the trace starts at the user's frame; kept when nothing else follows.
    let mut start = cut;
    while start < lines.len() && is_frame_start(lines[start]) {
        let mut end = start + 1;
        while lines.get(end).is_some_and(|l| !is_frame_start(l)) {
            end += 1;
        }
        let in_std = lines[start + 1..end].iter().any(|l| l.trim_start().starts_with("at /rustc/"));
        if !in_std || end >= lines.len() {
            break;
        }
        start = end;
    }
    lines[start..].join("\n")
}

/// Turns a caught panic into the failure reported to the caller.
pub(crate) fn panic_failure(payload: Box<dyn Any + Send>) -> Failure {
    let recorded = LAST_PANIC.with(|last| last.borrow_mut().take());
    let (message, backtrace) =
        recorded.unwrap_or_else(|| (payload_message(payload.as_ref()), String::from("(no backtrace)")));
    Failure::Panicked { message, backtrace }
}

fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        String::from("(a panic payload that is not a string)")
    }
}

#[cfg(test)]
mod tests {
    use super::without_panic_machinery;

    #[test]
    fn the_backtrace_starts_at_the_code_that_panicked() {
        let raw = "   0: ensemble_actors::dispatch::install_panic_hook::{{closure}}\n             at ./actors/src/dispatch.rs:144:25\n   1: std::panicking::panic_with_hook\n   2: core::panicking::panic_fmt\n             at /rustc/core/src/panicking.rs:80:14\n   3: my_crate::parse\n             at ./src/lib.rs:7:5\n   4: main";
        assert_eq!(
            without_panic_machinery(raw),
            "   3: my_crate::parse\n             at ./src/lib.rs:7:5\n   4: main"
        );
    }

    #[test]
    fn the_standard_library_frames_that_raised_the_panic_are_dropped_too() {
        let raw = "   0: std::panicking::begin_panic_handler\n   1: core::panicking::panic_fmt\n             at /rustc/h/library/core/src/panicking.rs:80:14\n   2: core::slice::index::slice_index_fail\n             at /rustc/h/library/core/src/panic.rs:177:9\n   3: my_crate::sum\n             at ./src/lib.rs:9:20\n   4: main";
        assert_eq!(
            without_panic_machinery(raw),
            "   3: my_crate::sum\n             at ./src/lib.rs:9:20\n   4: main"
        );
    }

    #[test]
    fn a_backtrace_without_machinery_is_kept_whole() {
        let raw = "   0: a\n   1: b";
        assert_eq!(without_panic_machinery(raw), raw);
    }
}
