//! Per-actor metrics reach the program's own `metrics` recorder (here metrics-util's debugging
//! recorder, installed by the test: ensemble never installs one), and the same calls show in
//! the counters `ensemble ps` reads.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use ensemble::prelude::*;
use ensemble::supervisor::SupervisorEvent;
use futures::StreamExt;
use harness::within;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Echo, Explode))]
struct Metered;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Echo(u32);

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Explode;

impl ProcessHandler<Echo> for Metered {
    fn handle(&mut self, Echo(n): Echo, _: &mut ProcessContext<Self>) -> u32 {
        n
    }
}

impl ProcessHandler<Explode> for Metered {
    fn handle(&mut self, _: Explode, _: &mut ProcessContext<Self>) {
        panic!("boom");
    }
}

/// A series: its name, its labels, its value.
type Series = (String, Vec<(String, String)>, DebugValue);

/// The value of the series `name` whose labels include every pair of `labels`.
fn value<'a>(snapshot: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(n, l, _)| {
            n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
}

#[actix_rt::test]
async fn calls_errors_latency_and_restarts_reach_the_users_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("no other recorder in this test binary");

    let remote =
        within(10, ensemble::spawn_with(Metered, SpawnOptions::new().name("metered-1"))).await.unwrap();
    for n in 0..3 {
        assert_eq!(within(10, remote.send(Echo(n))).await.unwrap(), n);
    }
    assert!(matches!(within(10, remote.send(Explode)).await, Err(CallError::Panicked { .. })));
    let stats = ensemble::runtime::introspect::snapshot()
        .children
        .into_iter()
        .find(|c| c.pid == remote.pid())
        .expect("the child is listed")
        .calls;
    assert_eq!((stats.calls, stats.errors), (4, 1));
    assert_eq!(stats.errors_by_kind.get("panicked"), Some(&1));
    within(10, remote.stop()).await.unwrap();

    let mut supervisor = Supervisor::new(SupervisorConfig::default());
    let supervised = supervisor.add(ChildSpec::new("metered-sup", || Metered));
    let mut events = supervisor.events();
    let handle = within(10, supervisor.start()).await.unwrap();
    let first = within(10, supervised.up()).await.unwrap();
    first.kill();
    loop {
        match within(10, events.next()).await {
            Some(SupervisorEvent::Restarted { .. }) => break,
            Some(_) => {}
            None => panic!("the supervisor ended"),
        }
    }
    within(10, handle.shutdown()).await.unwrap();

    let snapshot: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            (key.name().to_owned(), labels, value)
        })
        .collect();
    let ours = [("actor", "Metered"), ("name", "metered-1")];
    assert_eq!(value(&snapshot, "ensemble_calls_total", &ours), Some(&DebugValue::Counter(4)));
    let panicked = [("actor", "Metered"), ("name", "metered-1"), ("kind", "panicked")];
    assert_eq!(value(&snapshot, "ensemble_call_errors_total", &panicked), Some(&DebugValue::Counter(1)));
    match value(&snapshot, "ensemble_call_seconds", &ours) {
        Some(DebugValue::Histogram(values)) => assert_eq!(values.len(), 4),
        other => panic!("no latency histogram: {other:?}"),
    }
    let restarts = [("actor", "Metered"), ("name", "metered-sup")];
    assert_eq!(value(&snapshot, "ensemble_restarts_total", &restarts), Some(&DebugValue::Counter(1)));
}
