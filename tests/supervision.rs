//! Supervisors restart the right children in the right order, give up as specified, and shut
//! down in reverse order, with real processes killed for real.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use harness::within;

use ensemble::prelude::*;
use ensemble::supervisor::{
    Backoff, Intensity, Reap, StopOrder, SupervisorError, SupervisorEvent, SupervisorEvents,
};
use futures::StreamExt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping, Sleep, Quit), hooks)]
struct Worker {
    /// post_run appends the worker's name to this file.
    log: Option<PathBuf>,
    name: String,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Ping;

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Sleep(u64);

/// Ends the process with a status: 0 is a clean stop.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Quit(i32);

impl Hooks for Worker {
    fn post_run(&mut self, _: &mut ProcessContext<Self>) {
        if let Some(log) = &self.log {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).create(true).open(log).unwrap();
            // One write: lines of children stopping at once must not interleave.
            file.write_all(format!("{}\n", self.name).as_bytes()).unwrap();
        }
    }
}

impl ProcessHandler<Ping> for Worker {
    fn handle(&mut self, _: Ping, ctx: &mut ProcessContext<Self>) -> u32 {
        ctx.pid()
    }
}

impl ProcessHandler<Sleep> for Worker {
    fn handle(&mut self, Sleep(ms): Sleep, _: &mut ProcessContext<Self>) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl ProcessHandler<Quit> for Worker {
    fn handle(&mut self, Quit(code): Quit, ctx: &mut ProcessContext<Self>) {
        if code == 0 {
            ctx.stop();
        } else {
            std::process::exit(code);
        }
    }
}

fn spec(name: &str) -> ChildSpec<Worker> {
    let owned = name.to_owned();
    ChildSpec::new(name, move || Worker { log: None, name: owned.clone() })
}

fn logged_spec(name: &str, log: &Log) -> ChildSpec<Worker> {
    let (owned, path) = (name.to_owned(), log.0.clone());
    ChildSpec::new(name, move || Worker { log: Some(path.clone()), name: owned.clone() })
}

/// A file post_run hooks append to; removed when dropped, also when the test fails.
struct Log(PathBuf);

impl Log {
    fn new(tag: &str) -> Log {
        Log(std::env::temp_dir().join(format!("ensemble-sup-{tag}-{}", std::process::id())))
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.0).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Collects events until `done` says so, failing after a deadline.
async fn events_until(
    events: &mut SupervisorEvents,
    mut done: impl FnMut(&SupervisorEvent) -> bool,
) -> Vec<SupervisorEvent> {
    let mut seen = Vec::new();
    within(20, async {
        while let Some(event) = events.next().await {
            let stop = done(&event);
            seen.push(event);
            if stop {
                return;
            }
        }
    })
    .await;
    seen
}

/// The events as short strings, e.g. "exited b", "restarted b".
fn outline(events: &[SupervisorEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            SupervisorEvent::Started { child, .. } => format!("started {child}"),
            SupervisorEvent::Exited { child, .. } => format!("exited {child}"),
            SupervisorEvent::Restarted { child, .. } => format!("restarted {child}"),
            SupervisorEvent::StartFailed { child, .. } => format!("start failed {child}"),
            SupervisorEvent::Stopped { child, .. } => format!("stopped {child}"),
            SupervisorEvent::GaveUp { child, .. } => format!("gave up {child}"),
        })
        .collect()
}

fn config(strategy: Strategy) -> SupervisorConfig {
    SupervisorConfig { strategy, ..SupervisorConfig::default() }
}

#[actix_rt::test]
async fn sigkill_of_a_permanent_child_fails_calls_in_flight_and_restarts_it() {
    let mut supervisor = Supervisor::new(config(Strategy::OneForOne));
    let worker = supervisor.add(spec("w"));
    let mut events = supervisor.events();
    let root = within(10, supervisor.start()).await.unwrap();
    let first = within(5, worker.send(Ping)).await.unwrap();
    // A supervised call leaves when first polled: poll it once, so that it is in flight
    // before the kill (a yield would not poll it).
    let mut in_flight = Box::pin(worker.send(Sleep(60_000)));
    assert!(futures::poll!(&mut in_flight).is_pending());
    assert!(worker.remote().unwrap().kill());
    match within(10, in_flight).await {
        Err(CallError::Exited(exit)) => assert_eq!(exit.signal(), Some(libc::SIGKILL)),
        other => panic!("expected the kill, got {other:?}"),
    }
    let second = within(10, worker.send(Ping)).await.unwrap();
    assert_ne!(first, second, "a new process answers");
    let seen = events_until(&mut events, |e| matches!(e, SupervisorEvent::Restarted { .. })).await;
    assert_eq!(outline(&seen), ["started w", "exited w", "restarted w"]);
    within(10, root.shutdown()).await.unwrap();
}

/// Whether process `pid` has exited (a zombie or gone): its connection is closed. A leader
/// shows `Z` as soon as it exits, while its other threads (which share its descriptors) may
/// still be on their way out: only a zombie with no thread left has closed them.
fn is_dead(pid: u32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')));
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count());
    zombie && threads <= 1
}

#[actix_rt::test]
async fn a_call_to_an_incarnation_that_already_died_waits_for_the_next_one() {
    let intensity = Intensity { max_restarts: 10, within: Duration::from_secs(60) };
    let mut supervisor = Supervisor::new(SupervisorConfig { intensity, ..SupervisorConfig::default() });
    let worker = supervisor.add(spec("w"));
    let root = within(10, supervisor.start()).await.unwrap();
    for _ in 0..5 {
        let remote = within(10, worker.up()).await.unwrap();
        assert!(remote.kill());
        while !is_dead(remote.pid()) {
            std::thread::yield_now();
        }
        // Sent to a process whose connection is closed, before anyone saw it die: never
        // delivered, so it goes to the next incarnation instead of failing.
        let answered_by = within(10, worker.send(Ping)).await.unwrap();
        assert_ne!(answered_by, remote.pid());
    }
    within(10, root.shutdown()).await.unwrap();
}

#[actix_rt::test]
async fn a_transient_child_is_restarted_after_a_crash_but_not_after_a_clean_exit() {
    let mut supervisor = Supervisor::new(config(Strategy::OneForOne));
    let worker = supervisor.add(spec("t").restart(Restart::Transient));
    let mut events = supervisor.events();
    let root = within(10, supervisor.start()).await.unwrap();
    let _ = within(5, worker.send(Quit(9))).await;
    let seen = events_until(&mut events, |e| matches!(e, SupervisorEvent::Restarted { .. })).await;
    assert_eq!(outline(&seen), ["started t", "exited t", "restarted t"]);
    within(5, worker.send(Quit(0))).await.unwrap();
    let seen = events_until(&mut events, |e| matches!(e, SupervisorEvent::Exited { .. })).await;
    assert_eq!(outline(&seen), ["exited t"]);
    match within(5, worker.send(Ping)).await {
        Err(CallError::Exited(exit)) => assert!(exit.success()),
        other => panic!("a cleanly stopped transient child stays down, got {other:?}"),
    }
    within(10, root.shutdown()).await.unwrap();
}

#[actix_rt::test]
async fn a_temporary_child_is_never_restarted() {
    let mut supervisor = Supervisor::new(config(Strategy::OneForOne));
    let worker = supervisor.add(spec("tmp").restart(Restart::Temporary));
    let root = within(10, supervisor.start()).await.unwrap();
    let remote = worker.remote().unwrap();
    remote.kill();
    within(5, remote.exited()).await;
    match within(5, worker.up()).await {
        Err(CallError::Exited(exit)) => assert_eq!(exit.signal(), Some(libc::SIGKILL)),
        other => panic!("expected it to stay down, got {other:?}"),
    }
    within(10, root.shutdown()).await.unwrap();
}

/// Kills `b` of a, b, c under `strategy` and returns the events that follow and the pids of
/// the three before and after.
async fn kill_the_middle_child(strategy: Strategy) -> (Vec<String>, [u32; 3], [u32; 3]) {
    let mut supervisor = Supervisor::new(config(strategy));
    let workers = [supervisor.add(spec("a")), supervisor.add(spec("b")), supervisor.add(spec("c"))];
    let root = within(10, supervisor.start()).await.unwrap();
    let mut events = within(5, root.events()).await.unwrap();
    let pids = |workers: &[Supervised<Worker>; 3]| workers.clone().map(|w| w.remote().unwrap().pid());
    let before = pids(&workers);
    workers[1].remote().unwrap().kill();
    let restarted = match strategy {
        Strategy::OneForOne => "b",
        Strategy::OneForAll | Strategy::RestForOne => "c",
    };
    let seen = events_until(
        &mut events,
        |e| matches!(e, SupervisorEvent::Restarted { child, .. } if child == restarted),
    )
    .await;
    for worker in &workers {
        within(10, worker.up()).await.unwrap();
    }
    let after = pids(&workers);
    within(10, root.shutdown()).await.unwrap();
    (outline(&seen), before, after)
}

#[actix_rt::test]
async fn one_for_one_restarts_only_the_child_that_died() {
    let (events, before, after) = kill_the_middle_child(Strategy::OneForOne).await;
    assert_eq!(events, ["exited b", "restarted b"]);
    assert_eq!((before[0], before[2]), (after[0], after[2]));
    assert_ne!(before[1], after[1]);
}

#[actix_rt::test]
async fn one_for_all_stops_the_others_in_reverse_order_and_restarts_all_in_order() {
    let (events, before, after) = kill_the_middle_child(Strategy::OneForAll).await;
    assert_eq!(events, ["exited b", "stopped c", "stopped a", "restarted a", "restarted b", "restarted c"]);
    assert!(before.iter().zip(&after).all(|(b, a)| b != a));
}

#[actix_rt::test]
async fn rest_for_one_restarts_the_child_and_those_started_after_it() {
    let (events, before, after) = kill_the_middle_child(Strategy::RestForOne).await;
    assert_eq!(events, ["exited b", "stopped c", "restarted b", "restarted c"]);
    assert_eq!(before[0], after[0]);
    assert_ne!(before[1], after[1]);
    assert_ne!(before[2], after[2]);
}

#[actix_rt::test]
async fn exceeding_the_restart_intensity_stops_everything_and_reports_it() {
    let log = Log::new("intensity");
    let intensity = Intensity { max_restarts: 2, within: Duration::from_secs(30) };
    let mut supervisor = Supervisor::new(SupervisorConfig { intensity, ..SupervisorConfig::default() });
    let steady = supervisor.add(logged_spec("steady", &log));
    let crashy = supervisor.add(spec("crashy"));
    let mut events = supervisor.events();
    let root = within(10, supervisor.start()).await.unwrap();
    for _ in 0..3 {
        let remote = within(10, crashy.up()).await.unwrap();
        remote.kill();
        within(5, remote.exited()).await;
    }
    let gave_up = |result: Result<(), SupervisorError>| {
        matches!(result, Err(SupervisorError::GaveUp { child, restarts: 2, within })
            if child == "crashy" && within == Duration::from_secs(30))
    };
    assert!(gave_up(within(10, root.wait()).await));
    let seen = events_until(
        &mut events,
        |e| matches!(e, SupervisorEvent::Stopped { child, .. } if child == "steady"),
    )
    .await;
    let tail: Vec<_> = outline(&seen).into_iter().rev().take(2).collect();
    assert_eq!(tail, ["stopped steady", "gave up crashy"]);
    assert_eq!(log.lines(), ["steady"], "the other child was stopped gracefully");
    assert!(matches!(within(5, steady.send(Ping)).await, Err(CallError::Stopping)));
    assert!(gave_up(within(5, root.shutdown()).await));
}

#[actix_rt::test]
async fn while_down_fail_makes_calls_fail_at_once_during_a_restart() {
    let backoff = Backoff { initial: Duration::from_millis(500), max: Duration::from_millis(500) };
    let mut supervisor =
        Supervisor::new(SupervisorConfig { backoff: Some(backoff), ..SupervisorConfig::default() });
    let worker = supervisor.add(spec("f").while_down(WhileDown::Fail));
    let mut events = supervisor.events();
    let root = within(10, supervisor.start()).await.unwrap();
    worker.remote().unwrap().kill();
    events_until(&mut events, |e| matches!(e, SupervisorEvent::Exited { .. })).await;
    assert_eq!(within(5, worker.send(Ping)).await, Err(CallError::Down));
    assert!(matches!(worker.do_send(Ping), Err(CallError::Down)));
    within(10, worker.up()).await.unwrap();
    within(5, worker.send(Ping)).await.unwrap();
    within(10, root.shutdown()).await.unwrap();
}

#[actix_rt::test]
async fn shutdown_stops_children_in_reverse_order_and_kills_a_stuck_one() {
    let log = Log::new("order");
    let mut supervisor = Supervisor::new(SupervisorConfig::default());
    let _a = supervisor.add(logged_spec("a", &log));
    let b = supervisor.add(logged_spec("b", &log).shutdown_timeout(Duration::from_millis(300)));
    let _c = supervisor.add(logged_spec("c", &log));
    let mut events = supervisor.events();
    let root = within(10, supervisor.start()).await.unwrap();
    b.do_send(Sleep(60_000)).unwrap();
    within(20, root.shutdown()).await.unwrap();
    let seen =
        events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped { child, .. } if child == "a"))
            .await;
    let stops: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::Stopped { child, exit } => Some((child.as_str(), exit.signal())),
            _ => None,
        })
        .collect();
    assert_eq!(stops, [("c", None), ("b", Some(libc::SIGKILL)), ("a", None)]);
    assert_eq!(log.lines(), ["c", "a"], "post_run ran in the children that stopped gracefully");
}

/// With `StopOrder::Concurrent`, a stuck child does not hold up the others' orderly stop: their
/// post_run runs while it is still waiting for its shutdown timeout (5 s).
#[actix_rt::test]
async fn a_concurrent_shutdown_stops_the_others_while_a_stuck_one_waits_for_its_timeout() {
    let log = Log::new("concurrent");
    let mut supervisor = Supervisor::new(SupervisorConfig {
        stop_order: StopOrder::Concurrent,
        ..SupervisorConfig::default()
    });
    let _a = supervisor.add(logged_spec("a", &log));
    let b = supervisor.add(logged_spec("b", &log).shutdown_timeout(Duration::from_secs(5)));
    let _c = supervisor.add(logged_spec("c", &log));
    let mut events = supervisor.events();
    let root = within(10, supervisor.start()).await.unwrap();
    b.do_send(Sleep(60_000)).unwrap();
    let shutdown = actix_rt::spawn(async move { root.shutdown().await });
    harness::wait_until(3, "a and c stopped while b is stuck", || {
        let mut lines = log.lines();
        lines.sort();
        lines == ["a", "c"]
    })
    .await;
    within(20, shutdown).await.unwrap().unwrap();
    let seen =
        events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped { child, .. } if child == "a"))
            .await;
    let killed: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::Stopped { child, exit } => Some((child.as_str(), exit.signal())),
            _ => None,
        })
        .collect();
    assert_eq!(
        killed,
        [("c", None), ("b", Some(libc::SIGKILL)), ("a", None)],
        "events in reverse start order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_plain_tokio_a_supervisor_runs_on_a_thread_of_its_own_and_restarts_and_stops_in_order() {
    let log = Log::new("tokio");
    let mut supervisor = Supervisor::new(config(Strategy::OneForOne));
    let worker = supervisor.add(logged_spec("w", &log));
    let mut events = supervisor.events();
    let root = within(10, supervisor.start()).await.unwrap();
    let first = within(5, worker.send(Ping)).await.unwrap();
    let crashed = worker.remote().unwrap();
    crashed.kill();
    within(10, crashed.exited()).await;
    events_until(&mut events, |e| matches!(e, SupervisorEvent::Restarted { .. })).await;
    let second = within(5, worker.send(Ping)).await.unwrap();
    assert_ne!(first, second);
    within(10, root.shutdown()).await.unwrap();
    assert_eq!(log.lines(), ["w"], "post_run ran on shutdown");
}

#[tokio::test]
async fn under_plain_tokio_the_process_supervisor_starts_children_and_stops_them() {
    let log = Log::new("tokio-process");
    let supervisor = ensemble::supervisor::process_supervisor().unwrap();
    let worker = within(10, supervisor.start_child(logged_spec("p", &log))).await.unwrap();
    within(5, worker.send(Ping)).await.unwrap();
    within(10, ensemble::supervisor::shutdown_process_supervisor()).await.unwrap();
    assert_eq!(log.lines(), ["p"], "post_run ran on shutdown");
}

/// Runs a supervisor of its own, inside a child process.
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(async StartInner))]
struct Nest;

/// Starts an inner supervisor that allows no restart; replies with its child's pid.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct StartInner;

impl AsyncProcessHandler<StartInner> for Nest {
    async fn handle(&mut self, _: StartInner, _: &mut ProcessContext<Self>) -> u32 {
        let intensity = Intensity { max_restarts: 0, within: Duration::from_secs(60) };
        let mut supervisor = Supervisor::new(SupervisorConfig { intensity, ..SupervisorConfig::default() });
        let inner = supervisor.add(spec("inner"));
        supervisor.start().await.unwrap();
        inner.remote().unwrap().pid()
    }
}

#[actix_rt::test]
async fn a_nested_supervisor_that_gives_up_escalates_by_exiting_its_process() {
    let mut supervisor = Supervisor::new(SupervisorConfig::default());
    let nest = supervisor.add(ChildSpec::new("nest", || Nest).restart(Restart::Temporary));
    let root = within(10, supervisor.start()).await.unwrap();
    let middle = nest.remote().unwrap();
    let inner = within(10, nest.send(StartInner)).await.unwrap();
    let sent = std::process::Command::new("kill").args(["-KILL", &inner.to_string()]).status().unwrap();
    assert!(sent.success());
    let exit = within(10, middle.exited()).await;
    assert_eq!(exit.code(), Some(ensemble::supervisor::EXIT_ESCALATED), "{exit}");
    within(10, root.shutdown()).await.unwrap();
}

/// Starts a grandchild under its own process's supervisor; replies with the grandchild's pid.
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(async StartGrandchild))]
struct Parent;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct StartGrandchild(PathBuf);

impl AsyncProcessHandler<StartGrandchild> for Parent {
    async fn handle(&mut self, StartGrandchild(log): StartGrandchild, _: &mut ProcessContext<Self>) -> u32 {
        let supervisor = ensemble::supervisor::process_supervisor().unwrap();
        let spec = ChildSpec::new("grandchild", move || Worker {
            log: Some(log.clone()),
            name: "grandchild".into(),
        });
        let grandchild = supervisor.start_child(spec).await.unwrap();
        grandchild.remote().unwrap().pid()
    }
}

#[actix_rt::test]
async fn a_child_process_supervisor_stops_its_children_in_order_when_the_child_stops() {
    let log = Log::new("process-supervisor");
    let parent = within(10, ensemble::spawn(Parent)).await.unwrap();
    let grandchild = within(10, parent.send(StartGrandchild(log.0.clone()))).await.unwrap();
    within(20, parent.stop()).await.unwrap();
    assert_eq!(log.lines(), ["grandchild"], "the grandchild's post_run ran before its parent exited");
    assert!(!std::path::Path::new(&format!("/proc/{grandchild}")).exists(), "the grandchild was reaped");
}

const ROOT_ENV: &str = "ENSEMBLE_TEST_SUPERVISOR_ROOT";

/// Not a test on its own: the root program that the SIGINT test starts and interrupts.
#[actix_rt::test]
#[ignore = "helper process for sigint_to_the_root_shuts_everything_down_in_order"]
async fn supervisor_root_helper() {
    let Some(log) = std::env::var_os(ROOT_ENV) else { return };
    let log = Log(PathBuf::from(log));
    let mut supervisor = Supervisor::new(SupervisorConfig::default());
    let a = supervisor.add(logged_spec("a", &log));
    let b = supervisor.add(logged_spec("b", &log));
    let root = supervisor.start().await.unwrap();
    let pids = [a.send(Ping).await.unwrap(), b.send(Ping).await.unwrap()];
    println!("READY {} {}", pids[0], pids[1]);
    root.run_until_signal().await.unwrap();
    std::mem::forget(log); // the test reads and removes it
}

#[test]
fn sigint_to_the_root_shuts_everything_down_in_order() {
    let log = Log::new("sigint");
    let mut root = harness::Helper::start("supervisor_root_helper", ROOT_ENV, &log.0.to_string_lossy());
    let pids: Vec<u32> =
        root.line_after("READY ", 30).split_whitespace().map(|p| p.parse().unwrap()).collect();
    root.signal(rustix::process::Signal::INT);
    let status = root.wait(20);
    assert!(status.success(), "{status}");
    assert_eq!(log.lines(), ["b", "a"], "post_run ran in each child, in reverse start order");
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child {pid} was left behind");
    }
}

#[actix_rt::test]
async fn a_child_that_cannot_start_keeps_its_spawn_error_as_the_cause() {
    let options = SpawnOptions::new().env(ensemble::runtime::build::BUILD_SALT_ENV, "another-build");
    let mut supervisor = Supervisor::new(SupervisorConfig::default());
    supervisor.add(spec("alien").options(options));
    let error = within(10, supervisor.start()).await.expect_err("another build is refused");
    let SupervisorError::Start { child, error: cause } = &error else {
        panic!("expected Start, got {error:?}")
    };
    assert_eq!(child, "alien");
    assert!(matches!(**cause, SpawnError::BuildMismatch { .. }), "a value to match on: {cause:?}");
    let source = std::error::Error::source(&error).expect("the spawn error is the source");
    assert_eq!(source.to_string(), cause.to_string());
}

#[actix_rt::test]
async fn reaping_in_the_background_returns_after_post_run_and_still_reaps_every_child() {
    let log = Log::new("background");
    let config = SupervisorConfig {
        stop_order: StopOrder::Concurrent,
        reap: Reap::InBackground,
        ..Default::default()
    };
    let mut supervisor = Supervisor::new(config);
    let children = [supervisor.add(logged_spec("a", &log)), supervisor.add(logged_spec("b", &log))];
    let mut events = supervisor.events();
    let root = within(10, supervisor.start()).await.unwrap();
    let mut pids = Vec::new();
    for child in &children {
        pids.push(within(10, child.send(Ping)).await.unwrap());
    }
    within(10, root.shutdown()).await.unwrap();
    let mut stopped = log.lines();
    stopped.sort();
    assert_eq!(stopped, ["a", "b"], "both ran post_run before the shutdown returned");
    // Each child's Stopped event comes with its exit: a clean one (its mappings were left to
    // the exit, which the parent does not take for a child that closed its end and lingers).
    let mut exits = 0;
    let seen = events_until(&mut events, |e| {
        exits += usize::from(matches!(e, SupervisorEvent::Stopped { .. }));
        exits == 2
    })
    .await;
    for event in &seen {
        if let SupervisorEvent::Stopped { child, exit } = event {
            assert!(exit.success(), "{child}: {exit}");
        }
    }
    for pid in pids {
        let reaped = || !std::path::Path::new(&format!("/proc/{pid}")).exists();
        harness::wait_until(10, &format!("child {pid} reaped"), reaped).await;
    }
    let _ = std::fs::remove_file(&log.0);
}
