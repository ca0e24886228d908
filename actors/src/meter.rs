//! Per-actor metrics, through the `metrics` crate's facade: ensemble emits, the user's recorder
//! (if the program installed one) collects; ensemble never installs a recorder of its own.
//!
//! - `ensemble_calls_total` (counter): calls completed, by the parent's side (`Remote::send`
//!   and what is built on it: supervised handles, farms' batches).
//! - `ensemble_call_errors_total` (counter, label `kind`): those that failed.
//! - `ensemble_call_seconds` (histogram): from the send to the reply or the error.
//! - `ensemble_restarts_total` (counter): restarts by a supervisor.
//!
//! Every series carries `actor` (the actor type's name) and `name` (the process name given at
//! spawn, which a supervised child keeps across restarts). The same calls also go into the
//! child's [`CallCounters`](ensemble_runtime::introspect::CallCounters), which `ensemble ps`
//! reads from the endpoint: that needs no recorder.

use crate::error::CallError;
use ensemble_runtime::introspect::ChildRecord;
use std::sync::Arc;
use std::time::Instant;

/// One child's series in the facade, registered once (when its handle is made), so that a call
/// costs a few dynamic calls and no allocation. A recorder installed after the child was
/// spawned does not see its calls: install yours at the start of `main`.
pub(crate) struct Series {
    calls: metrics::Counter,
    seconds: metrics::Histogram,
    actor: &'static str,
    name: String,
}

impl Series {
    pub(crate) fn new(name: &str, actor_key: &'static str) -> Arc<Series> {
        let (actor, name) = (short_name(actor_key), name.to_owned());
        Arc::new(Series {
            calls: metrics::counter!("ensemble_calls_total", "actor" => actor, "name" => name.clone()),
            seconds: metrics::histogram!("ensemble_call_seconds", "actor" => actor, "name" => name.clone()),
            actor,
            name,
        })
    }
}

/// A call being timed: made when it is sent, finished when it resolves.
pub(crate) struct Meter {
    started: Instant,
    record: Arc<ChildRecord>,
    series: Arc<Series>,
}

impl Meter {
    pub(crate) fn start(record: &Arc<ChildRecord>, series: &Arc<Series>) -> Meter {
        Meter { started: Instant::now(), record: Arc::clone(record), series: Arc::clone(series) }
    }

    /// Counts the call, failed or not, in the child's counters and in the facade.
    pub(crate) fn finish<T>(self, result: &Result<T, CallError>) {
        let elapsed = self.started.elapsed();
        let error = result.as_ref().err().map(kind);
        self.record.calls().record(elapsed, error);
        self.series.calls.increment(1);
        self.series.seconds.record(elapsed.as_secs_f64());
        if let Some(kind) = error {
            let (actor, name) = (self.series.actor, self.series.name.clone());
            metrics::counter!("ensemble_call_errors_total", "actor" => actor, "name" => name, "kind" => kind)
                .increment(1);
        }
    }
}

/// Counts one restart of the child `name` by a supervisor.
pub(crate) fn restarted(name: &str, actor_key: &'static str) {
    let actor = short_name(actor_key);
    metrics::counter!("ensemble_restarts_total", "actor" => actor, "name" => name.to_owned()).increment(1);
}

/// The type's name without its module path: `app::workers::Resizer` is `Resizer`.
fn short_name(key: &'static str) -> &'static str {
    key.rsplit("::").next().unwrap_or(key)
}

/// The `kind` label of a failed call.
fn kind(error: &CallError) -> &'static str {
    match error {
        CallError::Panicked { .. } => "panicked",
        CallError::Exited(_) => "exited",
        CallError::Timeout(_) => "timeout",
        CallError::Decode { .. } => "decode",
        CallError::Encode(_) => "encode",
        CallError::Down => "down",
        CallError::Stopping => "stopping",
        CallError::Failed(_) => "failed",
        CallError::Protocol(_) => "protocol",
        CallError::Full => "full",
        CallError::NotDelivered => "not_delivered",
        CallError::TooLarge { .. } => "too_large",
    }
}
