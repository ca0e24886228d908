//! Starting and stopping: hooks, spawn failures with bounded waits, build identity, and no
//! process left behind whatever happens to the parent.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use harness::within;

use ensemble::prelude::*;
use ensemble::HookError;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping, Quit, async SpawnGrandchild), hooks)]
struct Hooked {
    /// post_run writes "post_run ran" here.
    marker: Option<PathBuf>,
    start: Start,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
enum Start {
    Fine,
    Fail,
    Panic,
    Hang,
}

impl Hooks for Hooked {
    fn pre_run(&mut self, _: &mut ProcessContext<Self>) -> Result<(), HookError> {
        match self.start {
            Start::Fine => Ok(()),
            Start::Fail => Err("the camera is not connected".into()),
            Start::Panic => panic!("pre_run exploded"),
            Start::Hang => {
                std::thread::sleep(Duration::from_secs(600));
                Ok(())
            }
        }
    }

    fn post_run(&mut self, _: &mut ProcessContext<Self>) {
        if let Some(marker) = &self.marker {
            std::fs::write(marker, "post_run ran").unwrap();
        }
    }
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Ping;

impl ProcessHandler<Ping> for Hooked {
    fn handle(&mut self, _: Ping, ctx: &mut ProcessContext<Self>) -> u32 {
        ctx.pid()
    }
}

/// Replies, then stops the actor from inside.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "String")]
struct Quit;

impl ProcessHandler<Quit> for Hooked {
    fn handle(&mut self, _: Quit, ctx: &mut ProcessContext<Self>) -> String {
        ctx.stop();
        "bye".into()
    }
}

/// Spawns a grandchild from inside the child and replies with its pid.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct SpawnGrandchild;

impl AsyncProcessHandler<SpawnGrandchild> for Hooked {
    async fn handle(&mut self, _: SpawnGrandchild, _: &mut ProcessContext<Self>) -> u32 {
        let grandchild = ensemble::spawn(Hooked::fine(None)).await.unwrap();
        let pid = grandchild.pid();
        std::mem::forget(grandchild); // keep it running for as long as this process lives
        pid
    }
}

impl Hooked {
    fn fine(marker: Option<PathBuf>) -> Self {
        Hooked { marker, start: Start::Fine }
    }
}

/// A unique file path that is removed when dropped, also when the test fails.
struct Marker(PathBuf);

impl Marker {
    fn new(tag: &str) -> Marker {
        Marker(std::env::temp_dir().join(format!("ensemble-test-{tag}-{}", std::process::id())))
    }

    fn wait_for_content(&self, deadline: Duration) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(text) = std::fs::read_to_string(&self.0) {
                return Some(text);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether `pid` is gone (or a zombie nobody will ever run again).
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if is_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[tokio::test]
async fn stop_runs_post_run_and_the_child_exits_zero_and_is_reaped() {
    let marker = Marker::new("stop");
    let actor = within(10, ensemble::spawn(Hooked::fine(Some(marker.0.clone())))).await.unwrap();
    let pid = actor.pid();
    within(10, actor.stop()).await.unwrap();
    assert_eq!(std::fs::read_to_string(&marker.0).unwrap(), "post_run ran");
    assert!(actor.exit_info().unwrap().success());
    assert!(is_gone(pid), "the child was reaped, not left a zombie");
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_child_cleanly() {
    let marker = Marker::new("drop");
    let actor = within(10, ensemble::spawn(Hooked::fine(Some(marker.0.clone())))).await.unwrap();
    let pid = actor.pid();
    let clone = actor.clone();
    drop(actor);
    assert_eq!(within(5, clone.send(Ping)).await.unwrap(), pid, "a clone keeps it alive");
    drop(clone);
    assert_eq!(marker.wait_for_content(Duration::from_secs(10)).as_deref(), Some("post_run ran"));
    assert!(wait_gone(pid, Duration::from_secs(10)));
}

#[tokio::test]
async fn a_handler_can_stop_its_own_process_and_later_calls_see_the_clean_exit() {
    let marker = Marker::new("quit");
    let actor = within(10, ensemble::spawn(Hooked::fine(Some(marker.0.clone())))).await.unwrap();
    let quit = actor.send(Quit);
    let after = actor.send(Ping);
    assert_eq!(within(5, quit).await.unwrap(), "bye");
    match within(5, after).await {
        Err(CallError::Exited(exit)) => assert!(exit.success(), "{exit}"),
        other => panic!("expected the clean exit, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&marker.0).unwrap(), "post_run ran");
}

#[tokio::test]
async fn a_failing_pre_run_fails_the_spawn_with_its_error() {
    let actor = Hooked { marker: None, start: Start::Fail };
    match within(10, ensemble::spawn(actor)).await {
        Err(SpawnError::Start(failure)) => {
            assert!(failure.to_string().contains("the camera is not connected"), "{failure}")
        }
        other => panic!("expected a start failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_panicking_pre_run_fails_the_spawn_with_the_panic() {
    let actor = Hooked { marker: None, start: Start::Panic };
    match within(20, ensemble::spawn(actor)).await {
        Err(SpawnError::Start(ensemble::runtime::Failure::Panicked { message, .. })) => {
            assert_eq!(message, "pre_run exploded")
        }
        other => panic!("expected a start panic, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hanging_pre_run_is_killed_after_the_start_timeout() {
    let actor = Hooked { marker: None, start: Start::Hang };
    let options = SpawnOptions::new().start_timeout(Duration::from_millis(300));
    match within(10, ensemble::spawn_with(actor, options)).await {
        Err(SpawnError::StartTimeout { timeout, exit }) => {
            assert_eq!(timeout, Duration::from_millis(300));
            assert_eq!(exit.signal(), Some(libc::SIGKILL));
            assert!(is_gone(exit.pid));
        }
        other => panic!("expected a start timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_child_that_dies_before_the_handshake_gives_its_status_and_stderr() {
    // No machine has CPU 100000: the child's bootstrap fails before it connects.
    let options = SpawnOptions::new().cpu(100_000);
    match within(10, ensemble::spawn_with(Hooked::fine(None), options)).await {
        Err(SpawnError::Exited(exit)) => {
            assert_eq!(exit.code(), Some(ensemble::runtime::child::EXIT_BOOTSTRAP_FAILED));
            assert!(exit.stderr_tail.contains("cannot pin to cpu 100000"), "{exit:?}");
        }
        other => panic!("expected an early exit, got {other:?}"),
    }
}

#[tokio::test]
async fn a_child_of_another_build_is_refused() {
    let options = SpawnOptions::new().env(ensemble::runtime::build::BUILD_SALT_ENV, "another-build");
    match within(10, ensemble::spawn_with(Hooked::fine(None), options)).await {
        Err(SpawnError::BuildMismatch { ours, theirs }) => {
            assert_eq!(theirs.salt, "another-build");
            assert_ne!(ours, theirs);
        }
        other => panic!("expected a build mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_pinned_child_runs_on_its_cpu() {
    let actor =
        within(10, ensemble::spawn_with(Hooked::fine(None), SpawnOptions::new().cpu(0))).await.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", actor.pid())).unwrap();
    let allowed = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
    assert_eq!(allowed.split_whitespace().nth(1), Some("0"));
    within(10, actor.stop()).await.unwrap();
}

const ROOT_ENV: &str = "ENSEMBLE_TEST_AS_ROOT";

/// Not a test on its own: the body of the separate root process started by the test below.
#[tokio::test]
#[ignore = "helper process for killing_the_root_with_sigkill_leaves_no_descendant"]
async fn root_process_helper() {
    if std::env::var_os(ROOT_ENV).is_none() {
        return;
    }
    let child = ensemble::spawn(Hooked::fine(None)).await.unwrap();
    let grandchild = child.send(SpawnGrandchild).await.unwrap();
    println!("PIDS {} {grandchild}", child.pid());
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[test]
fn killing_the_root_with_sigkill_leaves_no_descendant() {
    let mut root = harness::Helper::start("root_process_helper", ROOT_ENV, "1");
    let pids: Vec<u32> = root.line_after("PIDS ", 30).split(' ').map(|p| p.parse().unwrap()).collect();
    root.signal(rustix::process::Signal::KILL);
    root.wait(10);
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(wait_gone(pid, Duration::from_secs(5)), "descendant {pid} outlived the root");
    }
}

/// A child's parent-death signal is tied to the thread that forked it. ensemble forks only on
/// its launcher thread, which lives as long as the process, so a child spawned from a thread
/// that has since ended lives on.
#[tokio::test]
async fn a_child_spawned_from_a_thread_that_ended_lives_on() {
    let (actor, task) = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        (
            rt.block_on(ensemble::spawn(Hooked::fine(None))),
            std::path::Path::new("/proc").join(std::fs::read_link("/proc/thread-self").unwrap()),
        )
    })
    .join()
    .unwrap();
    let actor = actor.unwrap();
    assert!(task.starts_with("/proc") && task.iter().count() == 5, "a task of this process: {task:?}");
    // The thread is gone from /proc once the kernel released it, after it sent any
    // parent-death signal: a signal tied to the thread would have come by then.
    harness::wait_until(10, "the spawning thread released", || !task.exists()).await;
    assert_eq!(within(10, actor.send(Ping)).await.unwrap(), actor.pid(), "the child still answers");
    within(10, actor.stop()).await.unwrap();
}
