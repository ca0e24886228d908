//! Every error a caller can get is provoked for real, and none of them hangs.

#[path = "common/harness.rs"]
mod harness;

use harness::within;

use ensemble::prelude::*;
use ensemble::{ExitInfo, StopError};
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Add, Panic, Exit, Abort, Sleep, Even, Odd))]
struct Fragile {
    total: u64,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Add(u64);

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Panic(String);

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Exit(i32);

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Abort;

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Sleep(u64);

/// Decodes only even numbers: sending an odd one makes the child's decoder fail.
#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[serde(try_from = "u32")]
#[rtype(result = "u32")]
struct Even(u32);

impl TryFrom<u32> for Even {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        if n.is_multiple_of(2) {
            Ok(Even(n))
        } else {
            Err(format!("{n} is odd"))
        }
    }
}

/// Its reply decodes only when even: the child replies with an odd one.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Even")]
struct Odd;

impl ProcessHandler<Add> for Fragile {
    fn handle(&mut self, Add(n): Add, _: &mut ProcessContext<Self>) -> u64 {
        self.total += n;
        self.total
    }
}

impl ProcessHandler<Panic> for Fragile {
    fn handle(&mut self, Panic(why): Panic, _: &mut ProcessContext<Self>) -> u64 {
        panic_in_a_named_function(&why)
    }
}

fn panic_in_a_named_function(why: &str) -> u64 {
    panic!("{why}")
}

impl ProcessHandler<Exit> for Fragile {
    fn handle(&mut self, Exit(code): Exit, _: &mut ProcessContext<Self>) {
        eprintln!("fragile: exiting with {code} on purpose");
        std::process::exit(code);
    }
}

impl ProcessHandler<Abort> for Fragile {
    fn handle(&mut self, _: Abort, _: &mut ProcessContext<Self>) {
        eprintln!("fragile: aborting on purpose");
        std::process::abort();
    }
}

impl ProcessHandler<Sleep> for Fragile {
    fn handle(&mut self, Sleep(ms): Sleep, _: &mut ProcessContext<Self>) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl ProcessHandler<Even> for Fragile {
    fn handle(&mut self, Even(n): Even, _: &mut ProcessContext<Self>) -> u32 {
        n
    }
}

impl ProcessHandler<Odd> for Fragile {
    fn handle(&mut self, _: Odd, _: &mut ProcessContext<Self>) -> Even {
        Even(3)
    }
}

async fn fragile() -> Remote<Fragile> {
    let options = SpawnOptions::new().shutdown_timeout(Duration::from_secs(2));
    within(10, ensemble::spawn_with(Fragile { total: 0 }, options)).await.unwrap()
}

fn exited(error: CallError) -> ExitInfo {
    match error {
        CallError::Exited(info) => info,
        other => panic!("expected CallError::Exited, got {other:?}"),
    }
}

#[tokio::test]
async fn a_panicking_handler_fails_its_call_with_message_and_backtrace_and_the_actor_lives_on() {
    let actor = fragile().await;
    actor.send(Add(5)).await.unwrap();
    match within(20, actor.send(Panic("bad input 17".into()))).await {
        Err(CallError::Panicked { message, backtrace }) => {
            assert_eq!(message, "bad input 17");
            assert!(backtrace.contains("failures.rs"), "{backtrace}");
            assert!(backtrace.contains("panic_in_a_named_function"), "{backtrace}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(within(5, actor.send(Add(1))).await.unwrap(), 6, "state survives the panic");
    within(10, actor.stop()).await.unwrap();
}

#[tokio::test]
async fn sigkill_mid_call_fails_every_pending_and_later_call_with_the_signal() {
    let actor = fragile().await;
    let stuck = actor.send(Sleep(60_000));
    let queued = actor.send(Add(1));
    assert!(actor.kill());
    let (stuck, queued) = within(10, async { tokio::join!(stuck, queued) }).await;
    for result in [stuck.map(|_| 0), queued] {
        let info = exited(result.unwrap_err());
        assert_eq!(info.signal(), Some(libc::SIGKILL));
        assert!(info.to_string().contains("SIGKILL"), "{info}");
    }
    let later = exited(within(1, actor.send(Add(1))).await.unwrap_err());
    assert_eq!(later.signal(), Some(libc::SIGKILL));
    assert!(matches!(actor.do_send(Add(1)), Err(CallError::Exited(_))));
    assert!(matches!(within(5, actor.stop()).await, Err(StopError::Exited(_))));
}

#[tokio::test]
async fn a_child_that_exits_reports_its_code_and_the_tail_of_its_stderr() {
    let actor = fragile().await;
    let info = exited(within(10, actor.send(Exit(3))).await.unwrap_err());
    assert_eq!(info.code(), Some(3));
    assert!(info.stderr_tail.contains("exiting with 3 on purpose"), "{info:?}");
    assert_eq!(within(5, actor.exited()).await, info);
}

#[tokio::test]
async fn a_child_that_aborts_reports_sigabrt() {
    let actor = fragile().await;
    let info = exited(within(10, actor.send(Abort)).await.unwrap_err());
    assert_eq!(info.signal(), Some(libc::SIGABRT));
    assert!(info.stderr_tail.contains("aborting on purpose"), "{info:?}");
}

#[tokio::test]
async fn a_deadline_fails_the_call_and_the_actor_stays_usable() {
    let actor = fragile().await;
    let late = within(10, actor.send(Sleep(500)).timeout(Duration::from_millis(50))).await;
    assert_eq!(late.unwrap_err(), CallError::Timeout(Duration::from_millis(50)));
    assert_eq!(within(10, actor.send(Add(2))).await.unwrap(), 2);
    within(10, actor.stop()).await.unwrap();
}

#[tokio::test]
async fn a_message_the_child_cannot_decode_is_a_decode_error() {
    let actor = fragile().await;
    assert_eq!(within(5, actor.send(Even(4))).await.unwrap(), 4);
    match within(5, actor.send(Even(5))).await {
        Err(CallError::Decode { what, detail }) => {
            assert!(what.ends_with("Even"), "{what}");
            assert!(detail.contains("5 is odd"), "{detail}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(within(5, actor.send(Add(1))).await.unwrap(), 1);
    within(10, actor.stop()).await.unwrap();
}

#[tokio::test]
async fn a_reply_the_parent_cannot_decode_is_a_decode_error() {
    let actor = fragile().await;
    match within(5, actor.send(Odd)).await {
        Err(CallError::Decode { what, detail }) => {
            assert!(what.contains("reply to"), "{what}");
            assert!(detail.contains("3 is odd"), "{detail}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    within(10, actor.stop()).await.unwrap();
}

#[tokio::test]
async fn calls_after_stop_fail_at_once() {
    let actor = fragile().await;
    let clone = actor.clone();
    within(10, actor.stop()).await.unwrap();
    let info = exited(within(1, clone.send(Add(1))).await.unwrap_err());
    assert!(info.success());
}

#[tokio::test]
async fn an_actor_stuck_in_a_handler_is_killed_after_its_shutdown_timeout() {
    let options = SpawnOptions::new().shutdown_timeout(Duration::from_millis(200));
    let actor = within(10, ensemble::spawn_with(Fragile { total: 0 }, options)).await.unwrap();
    actor.do_send(Sleep(60_000)).unwrap();
    match within(10, actor.stop()).await {
        Err(StopError::Killed { timeout, exit }) => {
            assert_eq!(timeout, Duration::from_millis(200));
            assert_eq!(exit.signal(), Some(libc::SIGKILL));
        }
        other => panic!("expected a kill, got {other:?}"),
    }
}

/// A child that sends events carrying descriptors faster than anyone reads them.
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Flood), event = SharedSlice<u8>)]
struct Flooder;

/// Sends this many events, each a new one-byte array (one descriptor each).
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Flood(u32);

impl ProcessHandler<Flood> for Flooder {
    fn handle(&mut self, Flood(n): Flood, ctx: &mut ProcessContext<Self>) {
        for _ in 0..n {
            let array = SharedSliceMut::<u8>::new(1).unwrap().freeze().unwrap();
            while let Err(ensemble::SendOutError::Full) = ctx.send_out(array.clone()) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Unread events that hold more descriptors than the parent keeps for a child make the child a
/// flood: it is killed, and its calls fail, before the parent runs out of descriptors.
#[actix_rt::test]
async fn a_child_flooding_its_parent_with_unread_events_is_killed() {
    let flooder = within(10, ensemble::spawn(Flooder)).await.unwrap();
    match within(60, flooder.send(Flood(5_000))).await {
        Err(CallError::Protocol(error)) => {
            let text = error.to_string();
            assert!(text.contains("piled up unread") && text.contains("4096 descriptors"), "{text}");
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(within(10, flooder.exited()).await.signal(), Some(libc::SIGKILL));
}
