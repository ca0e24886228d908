//! Worker farms map tasks over real worker processes: ordered results, bounded memory, panics
//! and crashes reported per task, lost tasks retried once each, cancellation.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use harness::within;

use ensemble::farm::{BatchSize, Farm, FarmConfig, TaskError};
use ensemble::prelude::*;
use std::cell::Cell;
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Pid), batches(Task))]
struct Worker;

#[derive(Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
enum Task {
    Square(u64),
    Panic(u64),
    Abort,
    Sleep(u64),
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Pid;

impl ProcessHandler<Task> for Worker {
    fn handle(&mut self, task: Task, _: &mut ProcessContext<Self>) -> u64 {
        match task {
            Task::Square(n) => n * n,
            Task::Panic(n) => panic!("task {n} refuses"),
            Task::Abort => std::process::abort(),
            Task::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                ms
            }
        }
    }
}

impl ProcessHandler<Pid> for Worker {
    fn handle(&mut self, _: Pid, ctx: &mut ProcessContext<Self>) -> u32 {
        ctx.pid()
    }
}

fn config(workers: usize) -> FarmConfig {
    FarmConfig { workers, progress: false, ..FarmConfig::default() }
}

async fn farm(config: FarmConfig) -> Farm<Worker> {
    within(20, Farm::start(config, |_| Worker)).await.unwrap()
}

#[actix_rt::test]
async fn map_returns_every_result_in_input_order() {
    let farm = farm(config(2)).await;
    let squares = within(60, farm.map((0..20_000).map(Task::Square))).await.unwrap();
    assert_eq!(squares.len(), 20_000);
    assert!(squares.iter().enumerate().all(|(i, s)| *s == (i * i) as u64));
    within(20, farm.shutdown()).await.unwrap();
}

/// Tiny batches through the fast lane: the same results, and a worker killed mid-run costs no
/// task.
#[actix_rt::test]
async fn a_farm_with_a_fast_lane_maps_and_survives_a_killed_worker() {
    let farm = farm(FarmConfig { batch: BatchSize::Fixed(1), fast_lane: true, ..config(2) }).await;
    let squares = within(60, farm.map((0..5_000).map(Task::Square))).await.unwrap();
    assert!(squares.iter().enumerate().all(|(i, s)| *s == (i * i) as u64));
    let victim = within(10, farm.workers()[1].up()).await.unwrap();
    let mut killed = false;
    let summary = within(
        60,
        farm.for_each((0..40).map(|_| Task::Sleep(5)), |_, result| {
            assert_eq!(result.unwrap(), 5);
            if !killed {
                killed = victim.kill();
            }
            ControlFlow::Continue(())
        }),
    )
    .await;
    assert!(killed);
    assert_eq!((summary.succeeded, summary.failed), (40, 0));
    within(20, farm.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_farm_works_under_a_plain_tokio_runtime() {
    let farm = farm(config(2)).await;
    let squares = within(60, farm.map((0..1_000).map(Task::Square))).await.unwrap();
    assert_eq!(squares[999], 998_001);
    within(20, farm.shutdown()).await.unwrap();
}

#[actix_rt::test]
async fn a_million_tiny_inputs_are_pulled_only_as_fast_as_they_complete() {
    let farm = farm(config(2)).await;
    let (pulled, done, worst) = (Cell::new(0usize), Cell::new(0usize), Cell::new(0usize));
    let inputs = (0..1_000_000u64).map(|n| {
        pulled.set(pulled.get() + 1);
        worst.set(worst.get().max(pulled.get() - done.get()));
        Task::Square(n % 1000)
    });
    let summary = within(
        300,
        farm.for_each(inputs, |_, result| {
            result.unwrap();
            done.set(done.get() + 1);
            ControlFlow::Continue(())
        }),
    )
    .await;
    assert_eq!((summary.succeeded, summary.failed), (1_000_000, 0));
    // 2 workers x 2 batches in flight x at most 4096 tasks per batch.
    assert!(worst.get() <= 2 * 2 * 4096, "{} inputs were pulled ahead of their results", worst.get());
    within(20, farm.shutdown()).await.unwrap();
}

#[actix_rt::test]
async fn a_stream_yields_every_result_once_as_it_completes_and_can_be_dropped_early() {
    use futures::StreamExt;
    let farm = farm(config(2)).await;
    let mut seen: Vec<usize> = farm
        .stream((0..5000u64).map(Task::Square))
        .map(|(index, result)| {
            assert_eq!(result.unwrap(), (index * index) as u64);
            index
        })
        .collect()
        .await;
    seen.sort_unstable();
    assert_eq!(seen, (0..5000).collect::<Vec<_>>());
    let first_two: Vec<_> = farm.stream((0..1000).map(|_| Task::Sleep(1))).take(2).collect().await;
    assert_eq!(first_two.len(), 2);
    assert_eq!(within(30, farm.map((0..10).map(Task::Square))).await.unwrap()[9], 81, "still usable");
    within(20, farm.shutdown()).await.unwrap();
}

/// Two failing tasks in one batch: `map` returns the first, and its sink is not called after
/// it said stop.
#[actix_rt::test]
async fn map_returns_the_first_error_and_the_sink_is_not_called_after_break() {
    let farm = farm(FarmConfig { batch: BatchSize::Fixed(8), ..config(1) }).await;
    let tasks = || (0..16).map(|i| if i == 3 || i == 5 { Task::Panic(i) } else { Task::Square(i) });
    assert_eq!(within(60, farm.map(tasks())).await.unwrap_err().index(), 3);
    let calls = Cell::new(0);
    let summary = within(
        60,
        farm.for_each(tasks(), |_, result| {
            calls.set(calls.get() + 1);
            if result.is_err() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }),
    )
    .await;
    assert!(summary.stopped);
    assert_eq!(calls.get(), 4, "indexes 0, 1, 2 and the failing 3; nothing after Break");
    within(20, farm.shutdown()).await.unwrap();
}

#[actix_rt::test]
async fn a_panicking_task_fails_alone_with_its_index_and_backtrace() {
    let farm = farm(FarmConfig { batch: BatchSize::Fixed(8), ..config(2) }).await;
    let tasks = (0..100).map(|i| if i == 42 { Task::Panic(i) } else { Task::Square(i) });
    let results = within(60, farm.map_all(tasks)).await;
    for (i, result) in results.iter().enumerate() {
        match (i, result) {
            (42, Err(TaskError::Panicked { index, message, backtrace })) => {
                assert_eq!((*index, message.as_str()), (42, "task 42 refuses"));
                assert!(backtrace.contains("farm.rs"), "{backtrace}");
            }
            (_, Ok(square)) => assert_eq!(*square, (i * i) as u64),
            other => panic!("unexpected {other:?}"),
        }
    }
    let first =
        within(60, farm.map((0..100).map(|i| if i == 42 { Task::Panic(i) } else { Task::Square(i) }))).await;
    assert_eq!(first.unwrap_err().index(), 42);
    within(20, farm.shutdown()).await.unwrap();
}

#[actix_rt::test]
async fn tasks_lost_with_a_killed_worker_are_retried_and_reported_once() {
    let farm = farm(FarmConfig { batch: BatchSize::Fixed(1), ..config(2) }).await;
    let victim = within(10, farm.workers()[0].up()).await.unwrap();
    let mut seen = HashSet::new();
    let mut killed = false;
    let summary = within(
        60,
        farm.for_each((0..60).map(|_| Task::Sleep(10)), |index, result| {
            assert_eq!(result.unwrap(), 10);
            assert!(seen.insert(index), "task {index} reported twice");
            if !killed && seen.len() == 10 {
                killed = victim.kill();
            }
            ControlFlow::Continue(())
        }),
    )
    .await;
    assert!(killed);
    assert_eq!((summary.succeeded, summary.failed), (60, 0));
    assert_eq!(seen.len(), 60, "no result lost");
    within(20, farm.shutdown()).await.unwrap();
}

#[actix_rt::test]
async fn a_task_that_always_kills_its_worker_fails_after_its_retries() {
    let farm = farm(FarmConfig { retries: 2, batch: BatchSize::Fixed(4), ..config(2) }).await;
    let tasks = (0..20).map(|i| if i == 7 { Task::Abort } else { Task::Square(i) });
    let results = within(60, farm.map_all(tasks)).await;
    match &results[7] {
        // Sent once and retried twice while running; it may also have been re-sent as a
        // bystander of its own earlier crash (queued behind a batch to the dead process).
        Err(TaskError::WorkerDied { index: 7, exit, attempts }) => {
            assert_eq!(exit.signal(), Some(libc::SIGABRT));
            assert!(*attempts >= 3, "{attempts}");
        }
        other => panic!("expected the task to be given up, got {other:?}"),
    }
    for (i, result) in results.iter().enumerate().filter(|(i, _)| *i != 7) {
        assert_eq!(*result.as_ref().unwrap(), (i * i) as u64, "task {i} was not taken down with task 7");
    }
    within(20, farm.shutdown()).await.unwrap();
}

#[actix_rt::test]
async fn stopping_early_keeps_the_farm_usable_and_dropping_it_stops_the_workers() {
    let farm = farm(config(2)).await;
    let summary =
        within(60, farm.for_each((0..1000).map(|_| Task::Sleep(1)), |_, _| ControlFlow::Break(()))).await;
    assert!(summary.stopped);
    assert_eq!(summary.succeeded, 1);
    assert_eq!(within(60, farm.map((0..10).map(Task::Square))).await.unwrap()[3], 9);
    let pids: Vec<u32> = futures::future::join_all(farm.workers().iter().map(|w| w.send(Pid)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(farm);
    for pid in pids {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(std::time::Instant::now() < deadline, "worker {pid} outlived its farm");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

const FARM_ROOT_ENV: &str = "ENSEMBLE_TEST_FARM_ROOT";

/// Not a test on its own: a program mapping slow tasks until it is interrupted.
#[actix_rt::test]
#[ignore = "helper process for sigint_stops_dispatch_and_returns_what_finished"]
async fn farm_root_helper() {
    if std::env::var_os(FARM_ROOT_ENV).is_none() {
        return;
    }
    use actix_rt::signal::unix::{signal, SignalKind};
    // Take over SIGINT before announcing readiness, so that the signal can never kill us.
    let _sigint = signal(SignalKind::interrupt()).unwrap();
    // One task per batch, two batches in flight per worker: the first 4 inputs go out at once,
    // and every later input is pulled only after a result came back.
    let farm = farm(FarmConfig { batch: BatchSize::Fixed(1), ..config(2) }).await;
    let inputs = (0..100_000).map(|i| {
        // Input 10 is pulled once 10 - 4 = 6 results came back: at least 6 tasks finished.
        if i == 10 {
            println!("PROGRESS");
        }
        Task::Sleep(2)
    });
    let (results, interrupted) = farm.map_until_signal(inputs).await.unwrap();
    let finished = results.iter().filter(|r| matches!(r, Some(Ok(2)))).count();
    println!("FINISHED {finished} INTERRUPTED {interrupted}");
    farm.shutdown().await.unwrap();
}

#[test]
fn sigint_stops_dispatch_and_returns_what_finished() {
    let mut root = harness::Helper::start("farm_root_helper", FARM_ROOT_ENV, "1");
    root.line_after("PROGRESS", 60);
    root.signal(rustix::process::Signal::INT);
    let summary = root.line_after("FINISHED", 60);
    let status = root.wait(30);
    assert!(status.success(), "{status}");
    let words: Vec<&str> = summary.split_whitespace().collect();
    let finished: usize = words[0].parse().unwrap();
    assert_eq!(words[2], "true", "{summary}");
    assert!((5..100_000).contains(&finished), "{summary}");
}
