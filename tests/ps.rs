//! What `ensemble ps` and `ensemble stop` rely on, end to end with real processes: the endpoint
//! of the root and of each child answers with names, actor types, the tree, supervision and
//! segments; a killed child's endpoint vanishes; `stop` through the endpoint stops a supervised
//! child in order and for good. (The command's rendering and its own run are tested in `cli/`.)

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use ensemble::prelude::*;
use ensemble::runtime::introspect::{self, ActorState, Role};
use ensemble::supervisor::SupervisorEvent;
use futures::StreamExt;
use harness::{wait_until, within};
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping))]
struct Holder {
    /// A segment the child keeps mapped for as long as it runs.
    frames: SharedSlice<u8>,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "usize")]
struct Ping;

impl ProcessHandler<Ping> for Holder {
    fn handle(&mut self, _: Ping, _: &mut ProcessContext<Self>) -> usize {
        self.frames.len()
    }
}

fn frames() -> SharedSlice<u8> {
    SharedSliceMut::<u8>::new(64 * 1024).unwrap().freeze().unwrap()
}

async fn listed(pid: u32) {
    wait_until(10, "the endpoint is listed", || introspect::discover().unwrap().contains(&pid)).await;
}

fn gone(pid: u32) -> bool {
    !introspect::discover().unwrap().contains(&pid)
}

#[actix_rt::test]
async fn endpoints_show_the_tree_supervision_calls_and_segments_and_vanish_with_their_process() {
    let shared = frames();
    let mut supervisor = Supervisor::new(SupervisorConfig::default());
    let one = {
        let shared = shared.clone();
        supervisor.add(ChildSpec::new("ps-holder-1", move || Holder { frames: shared.clone() }))
    };
    let two = supervisor.add(ChildSpec::new("ps-holder-2", || Holder { frames: frames() }));
    let mut events = supervisor.events();
    let handle = within(10, supervisor.start()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(within(10, one.send(Ping)).await.unwrap(), 64 * 1024);
    }
    let (first, second) = (within(10, one.up()).await.unwrap(), within(10, two.up()).await.unwrap());

    // The root: its children, their actor type, state, supervision and calls.
    let us = std::process::id();
    listed(us).await;
    let root = introspect::query(us).unwrap();
    assert_eq!((root.pid, root.role), (us, Role::Root));
    let child = root.children.iter().find(|c| c.pid == first.pid()).expect("ps-holder-1 is listed");
    assert_eq!(child.name, "ps-holder-1");
    assert!(child.actor.ends_with("Holder"), "{}", child.actor);
    assert_eq!(child.state, ActorState::Running);
    assert_eq!(child.calls.calls, 3);
    let supervision = child.supervision.as_ref().expect("supervised");
    assert_eq!((supervision.restarts, supervision.restart.as_str()), (0, "permanent"));
    assert!(root.children.iter().any(|c| c.pid == second.pid() && c.name == "ps-holder-2"));

    // The child: its own identity, its parent, and the segment it shares with us.
    listed(first.pid()).await;
    let info = introspect::query(first.pid()).unwrap();
    assert_eq!((info.role, info.ppid, info.name.as_str()), (Role::Child, us, "ps-holder-1"));
    assert!(info.actor.as_deref().is_some_and(|a| a.ends_with("Holder")));
    let ours: Vec<u64> = root.segments.iter().map(|s| s.inode).collect();
    assert!(
        info.segments.iter().any(|s| ours.contains(&s.inode)),
        "no shared inode: {ours:?} vs {:?}",
        info.segments
    );

    // Killed: its endpoint vanishes, the supervisor restarts it, and the restart is counted.
    first.kill();
    wait_until(10, "the killed child's endpoint is gone", || gone(first.pid())).await;
    let again = within(10, async {
        loop {
            if let Some(SupervisorEvent::Restarted { pid, .. }) = events.next().await {
                return pid;
            }
        }
    })
    .await;
    let root = introspect::query(us).unwrap();
    assert!(!root.children.iter().any(|c| c.pid == first.pid()), "the dead incarnation is forgotten");
    let restarted = root.children.iter().find(|c| c.pid == again).expect("the new incarnation is listed");
    assert_eq!(restarted.supervision.as_ref().map(|s| s.restarts), Some(1));

    // Stopped through the endpoint: in order, and not restarted.
    let how = introspect::request_stop(us, second.pid()).unwrap();
    assert!(how.contains("will not restart"), "{how}");
    let exit = within(10, second.exited()).await;
    assert!(exit.success(), "stopped in order: {exit}");
    wait_until(10, "the stopped child's endpoint is gone", || gone(second.pid())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let root = introspect::query(us).unwrap();
    assert!(!root.children.iter().any(|c| c.name == "ps-holder-2"), "ps-holder-2 was not restarted");
    within(20, handle.shutdown()).await.unwrap();
    wait_until(10, "no child is left", || introspect::query(us).unwrap().children.is_empty()).await;
}
