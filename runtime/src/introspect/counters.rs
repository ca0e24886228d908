//! Per-child call counters: atomics the actors layer bumps when a call completes, read by the
//! endpoint. They exist because ensemble never installs a `metrics` recorder of its own: the
//! user's recorder (if any) gets the `metrics` facade's events, and `ensemble ps` reads these.

use super::{Bucket, CallStats};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The upper bounds of the latency buckets, in microseconds (a last bucket takes the rest).
const BOUNDS_US: [u64; 6] = [100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// Counts of the calls to one child: completions, errors by kind, a latency summary.
#[derive(Debug, Default)]
pub struct CallCounters {
    calls: AtomicU64,
    errors: AtomicU64,
    nanos_sum: AtomicU64,
    nanos_max: AtomicU64,
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    kinds: Mutex<BTreeMap<&'static str, u64>>,
}

impl CallCounters {
    /// Records a completed call that took `elapsed`, failed with an error of kind `error` if any.
    pub fn record(&self, elapsed: Duration, error: Option<&'static str>) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.nanos_sum.fetch_add(nanos, Ordering::Relaxed);
        // Most calls are not the slowest yet: a load spares them the compare-and-swap loop.
        if nanos > self.nanos_max.load(Ordering::Relaxed) {
            self.nanos_max.fetch_max(nanos, Ordering::Relaxed);
        }
        let micros = nanos / 1_000;
        let bucket = BOUNDS_US.iter().position(|&bound| micros <= bound).unwrap_or(BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        if let Some(kind) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            *self.kinds.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
        }
    }

    /// A copy of the counts, with cumulative buckets.
    pub fn stats(&self) -> CallStats {
        let mut cumulative = 0;
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, count)| {
                cumulative += count.load(Ordering::Relaxed);
                let le = BOUNDS_US.get(i).map(|&us| us as f64 / 1e6);
                Bucket { le, count: cumulative }
            })
            .collect();
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        CallStats {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            errors_by_kind: kinds.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            seconds_sum: self.nanos_sum.load(Ordering::Relaxed) as f64 / 1e9,
            seconds_max: self.nanos_max.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_errors_and_buckets_add_up() {
        let counters = CallCounters::default();
        counters.record(Duration::from_micros(50), None);
        counters.record(Duration::from_millis(5), Some("timeout"));
        counters.record(Duration::from_secs(20), Some("timeout"));
        let stats = counters.stats();
        assert_eq!((stats.calls, stats.errors), (3, 2));
        assert_eq!(stats.errors_by_kind.get("timeout"), Some(&2));
        assert_eq!(stats.buckets.first().map(|b| b.count), Some(1));
        assert_eq!(stats.buckets[2], Bucket { le: Some(0.01), count: 2 });
        assert_eq!(stats.buckets.last(), Some(&Bucket { le: None, count: 3 }));
        assert!((stats.seconds_max - 20.0).abs() < 1e-9);
        assert!((stats.mean_seconds().unwrap() - 20.00505 / 3.0).abs() < 1e-6);
    }
}
