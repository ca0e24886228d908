//! A child's log lines, in its parent's subscriber.
//!
//! In a child, [`ForwardLayer`] (installed by the backend instead of a formatter on stderr)
//! turns each tracing event into a [`LogRecord`], tagged with the call whose handler logged it
//! (the backend runs each handler [`in_call`]: a thread-local, no span per call), and queues it,
//! never blocking: the queue holds
//! [`QUEUE_LIMIT`] records, and what does not fit is counted as dropped. The backend sends the
//! queue to the parent in `ToParent::Logs` frames: before each reply and event (so a handler's
//! lines arrive before its reply, in order), [`FLUSH_EVERY`] after a line was queued outside a
//! handler (an idle child is never woken for this), and before the process exits.
//!
//! In the parent, the connection re-emits each record as an event with target
//! `ensemble::child`, the child's name and pid, the original target and level, inside the span
//! that was current when the call that produced it was made: a request can be followed across
//! processes in one subscriber (an OpenTelemetry layer in the parent sees the child's lines as
//! events of the caller's span). A grandchild's lines pass through its parent the same way, so
//! they reach the root with both names. Without a subscriber in the parent, records are written
//! to stderr, as a child's own formatter would have.

use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;

/// The most records a child queues between two flushes; more are dropped and counted.
pub const QUEUE_LIMIT: usize = 4096;

/// How long after a line is queued outside a handler a child sends it (lines logged by a
/// handler leave with its reply).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

thread_local! {
    /// The call whose handler runs on this thread now, if any.
    static CALL: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The call whose handler runs on this thread now (set by the backend), if any.
pub fn current_call() -> Option<u64> {
    CALL.with(Cell::get)
}

/// Runs `f` as the handler of `call`: what it logs is tagged with it.
pub fn in_call<R>(call: Option<u64>, f: impl FnOnce() -> R) -> R {
    let outer = CALL.with(|c| c.replace(call));
    let result = f();
    CALL.with(|c| c.set(outer));
    result
}

/// A future that runs as the handler of a call: each poll is [`in_call`].
#[derive(Debug)]
pub struct InCall<F> {
    call: Option<u64>,
    inner: F,
}

impl<F> InCall<F> {
    /// Wraps `inner`, the handler of `call`.
    pub fn new(call: Option<u64>, inner: F) -> InCall<F> {
        InCall { call, inner }
    }
}

impl<F: Future + Unpin> Future for InCall<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let call = self.call;
        in_call(call, || Pin::new(&mut self.inner).poll(cx))
    }
}

/// One event of a child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// 0 trace, 1 debug, 2 info, 3 warn, 4 error.
    pub level: u8,
    /// The event's target (its module path, usually).
    pub target: String,
    /// The message and the other fields, `key=value` after it.
    pub message: String,
    /// The call whose handler logged it, if any.
    pub call: Option<u64>,
}

/// The body of a `ToParent::Logs` frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    /// Records dropped since the last batch because the queue was full.
    pub dropped: u64,
    /// The records, oldest first.
    pub records: Vec<LogRecord>,
}

struct Queue {
    records: VecDeque<LogRecord>,
    dropped: u64,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue { records: VecDeque::new(), dropped: 0 });

fn queue() -> std::sync::MutexGuard<'static, Queue> {
    QUEUE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes what is queued, if anything is.
pub fn take_batch() -> Option<LogBatch> {
    let mut queue = queue();
    if queue.records.is_empty() && queue.dropped == 0 {
        return None;
    }
    let dropped = std::mem::take(&mut queue.dropped);
    Some(LogBatch { dropped, records: queue.records.drain(..).collect() })
}

static QUEUED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Resolves once something was queued since the last batch was taken: a child with nothing to
/// say is never woken for its logs.
pub async fn queued() {
    QUEUED.notified().await;
}

fn push(record: LogRecord) {
    let mut queue = queue();
    let was_empty = queue.records.is_empty() && queue.dropped == 0;
    if queue.records.len() >= QUEUE_LIMIT {
        queue.dropped += 1;
    } else {
        queue.records.push_back(record);
    }
    drop(queue);
    if was_empty {
        QUEUED.notify_one();
    }
}

fn level_number(level: &Level) -> u8 {
    match *level {
        Level::TRACE => 0,
        Level::DEBUG => 1,
        Level::INFO => 2,
        Level::WARN => 3,
        Level::ERROR => 4,
    }
}

/// Formats an event's fields: the message first, then `key=value` for the others.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

/// The layer a child logs through: every event is queued for the parent (see the module docs).
#[derive(Debug, Default)]
pub struct ForwardLayer;

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        push(LogRecord {
            level: level_number(metadata.level()),
            target: metadata.target().to_owned(),
            message: fields.message + &fields.rest,
            call: current_call(),
        });
    }
}

/// Where a call was made: the span current then, and the call of this process's own handler
/// that made it (in a child that calls a grandchild), so that re-emitted lines travel on up.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub span: tracing::Span,
    pub call: Option<u64>,
}

impl Origin {
    /// Where a call made now is made; `None` when nothing would be learned from it.
    pub(crate) fn here() -> Option<Origin> {
        let origin = Origin { span: tracing::Span::current(), call: current_call() };
        (!origin.span.is_none() || origin.call.is_some()).then_some(origin)
    }
}

/// Re-emits a child's records in this process (see the module docs). `origin_of` gives where
/// a call was made.
pub(crate) fn emit(child: &str, pid: u32, batch: LogBatch, origin_of: impl Fn(u64) -> Option<Origin>) {
    let subscribed = !tracing::dispatcher::get_default(|d| d.is::<tracing::subscriber::NoSubscriber>());
    if batch.dropped > 0 {
        tracing::warn!(target: "ensemble::child", child, pid, "{} log lines of the child were dropped (its queue was full)", batch.dropped);
    }
    for record in batch.records {
        if !subscribed {
            eprintln!("{} {child}[{pid}] {}: {}", level_name(record.level), record.target, record.message);
            continue;
        }
        let origin = record.call.and_then(&origin_of);
        let (span, call) = origin.map_or((tracing::Span::none(), None), |o| (o.span, o.call));
        span.in_scope(|| in_call(call, || emit_one(child, pid, &record)));
    }
}

fn level_name(level: u8) -> &'static str {
    ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].get(level as usize).copied().unwrap_or("ERROR")
}

fn emit_one(child: &str, pid: u32, record: &LogRecord) {
    let (origin, message) = (record.target.as_str(), record.message.as_str());
    match record.level {
        0 => tracing::trace!(target: "ensemble::child", child, pid, origin, "{message}"),
        1 => tracing::debug!(target: "ensemble::child", child, pid, origin, "{message}"),
        2 => tracing::info!(target: "ensemble::child", child, pid, origin, "{message}"),
        3 => tracing::warn!(target: "ensemble::child", child, pid, origin, "{message}"),
        _ => tracing::error!(target: "ensemble::child", child, pid, origin, "{message}"),
    }
}

/// Writes what is still queued to stderr: for a child whose parent can no longer take it.
pub fn spill_to_stderr(name: &str) {
    while let Some(batch) = take_batch() {
        if batch.dropped > 0 {
            eprintln!("WARN {name}: {} log lines were dropped", batch.dropped);
        }
        for record in batch.records {
            eprintln!(
                "{} {name}[{}] {}: {}",
                level_name(record.level),
                std::process::id(),
                record.target,
                record.message
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_are_queued_with_their_fields_and_the_call_of_their_span() {
        let subscriber = tracing_subscriber::registry().with(ForwardLayer);
        tracing::subscriber::with_default(subscriber, || {
            let _ = take_batch();
            in_call(Some(42), || tracing::warn!(answer = 7, "inside {}", "the handler"));
            tracing::info!("outside");
        });
        let batch = take_batch().unwrap();
        let ours: Vec<_> = batch.records.iter().filter(|r| r.target == module_path!()).collect();
        assert_eq!(ours.len(), 2);
        assert_eq!(
            (ours[0].level, ours[0].message.as_str(), ours[0].call),
            (3, "inside the handler answer=7", Some(42))
        );
        assert_eq!((ours[1].message.as_str(), ours[1].call), ("outside", None));
    }
}
