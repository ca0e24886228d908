//! The fast lane (`SpawnOptions::fast_lane`): calls, replies and events through rings in shared
//! memory, with the same results and the same failure semantics as over the socket.

#![allow(clippy::disallowed_methods)] // tests start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use ensemble::prelude::*;
use ensemble::shm::SharedSliceMut;
use harness::within;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Echo, Blob, Sum, Nap, Panic, Shout, Scribble, Big, Halt), event = Heard)]
struct Lane;

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Echo(u64);

/// Too large for a slot: travels on the socket, behind a marker.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "(u64, u64)")]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

/// Carries a segment's descriptor: travels on the socket, behind a marker.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Sum(SharedSlice<u64>);

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Nap(u64);

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Panic;

/// Sends `n` events, then replies.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Shout(u32);

/// Writes garbage over every ring this child maps, then replies (a buggy native library).
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Scribble;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Heard(u32);

/// A reply of this many bytes: larger than a slot, it takes the socket behind a marker.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Vec<u8>")]
struct Big(usize);

/// Stops the actor once handled.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Halt;

impl ProcessHandler<Big> for Lane {
    fn handle(&mut self, Big(n): Big, _: &mut ProcessContext<Self>) -> Vec<u8> {
        vec![7; n]
    }
}

impl ProcessHandler<Halt> for Lane {
    fn handle(&mut self, _: Halt, ctx: &mut ProcessContext<Self>) {
        ctx.stop();
    }
}

impl ProcessHandler<Echo> for Lane {
    fn handle(&mut self, Echo(n): Echo, _: &mut ProcessContext<Self>) -> u64 {
        n
    }
}

impl ProcessHandler<Blob> for Lane {
    fn handle(&mut self, Blob(bytes): Blob, _: &mut ProcessContext<Self>) -> (u64, u64) {
        (bytes.len() as u64, bytes.iter().map(|b| u64::from(*b)).sum())
    }
}

impl ProcessHandler<Sum> for Lane {
    fn handle(&mut self, Sum(slice): Sum, _: &mut ProcessContext<Self>) -> u64 {
        slice.iter().sum()
    }
}

/// Says it has started (an event), then sleeps.
impl ProcessHandler<Nap> for Lane {
    fn handle(&mut self, Nap(ms): Nap, ctx: &mut ProcessContext<Self>) {
        ctx.send_out(Heard(u32::MAX)).unwrap();
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl ProcessHandler<Panic> for Lane {
    fn handle(&mut self, _: Panic, _: &mut ProcessContext<Self>) -> u64 {
        panic!("the handler gave up");
    }
}

impl ProcessHandler<Shout> for Lane {
    fn handle(&mut self, Shout(n): Shout, ctx: &mut ProcessContext<Self>) -> u32 {
        for i in 0..n {
            ctx.send_out(Heard(i)).unwrap();
        }
        n
    }
}

impl ProcessHandler<Scribble> for Lane {
    fn handle(&mut self, _: Scribble, _: &mut ProcessContext<Self>) -> u32 {
        scribble_over_rings()
    }
}

/// Maps every ring segment this process holds and fills it with 0xFF: what a stray memset in
/// a native library could do. Returns how many it hit.
fn scribble_over_rings() -> u32 {
    use std::os::fd::AsRawFd;
    let mut hit = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("/memfd:ensemble") {
            continue;
        }
        let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(entry.path()) else {
            continue;
        };
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a shared mapping of a memfd this process holds, of its size, unmapped below;
        // other mappings of it see the writes, which is the point: the parent must treat them
        // as garbage, not crash on them.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            if map == libc::MAP_FAILED {
                continue;
            }
            std::ptr::write_bytes(map.cast::<u8>(), 0xFF, len);
            libc::munmap(map, len);
        }
        hit += 1;
    }
    hit
}

async fn lane() -> Remote<Lane> {
    within(10, ensemble::spawn_with(Lane, SpawnOptions::new().fast_lane())).await.unwrap()
}

#[actix_rt::test]
async fn calls_go_through_the_rings_and_come_back_in_order() {
    let remote = lane().await;
    for n in 0..1000 {
        assert_eq!(within(5, remote.send(Echo(n))).await.unwrap(), n);
    }
    let stats = remote.fast_lane_stats().expect("spawned with a fast lane");
    assert!(stats.sent >= 1000 && stats.received >= 1000, "{stats:?}");
    assert_eq!(stats.lost_wakeups, 0, "{stats:?}");
}

#[actix_rt::test]
async fn large_frames_and_descriptors_keep_their_place_among_ring_frames() {
    let remote = lane().await;
    let numbers: Vec<u64> = (0..1000).collect();
    let numbers = SharedSliceMut::from_slice(&numbers).unwrap().freeze().unwrap();
    // Sent together, without awaiting: small, large, with a descriptor, small.
    let first = remote.send(Echo(1));
    let blob = remote.send(Blob(vec![3; 100_000]));
    let sum = remote.send(Sum(numbers.clone()));
    let last = remote.send(Echo(2));
    let started = Instant::now();
    assert_eq!(within(10, first).await.unwrap(), 1);
    assert_eq!(within(10, blob).await.unwrap(), (100_000, 300_000));
    assert_eq!(within(10, sum).await.unwrap(), 499_500);
    assert_eq!(within(10, last).await.unwrap(), 2);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[actix_rt::test]
async fn events_arrive_in_order_before_the_reply_that_follows_them() {
    let remote = lane().await;
    let mut events = remote.events().unwrap();
    assert_eq!(within(10, remote.send(Shout(500))).await.unwrap(), 500);
    for i in 0..500 {
        assert_eq!(within(5, events.next()).await.unwrap().unwrap(), Heard(i));
    }
}

#[actix_rt::test]
async fn a_panic_fails_its_call_and_the_next_call_works() {
    let remote = lane().await;
    let error = within(10, remote.send(Panic)).await.unwrap_err();
    assert!(error.to_string().contains("the handler gave up"), "{error}");
    assert_eq!(within(10, remote.send(Echo(7))).await.unwrap(), 7);
}

#[actix_rt::test]
async fn a_child_killed_mid_call_fails_the_call_at_once() {
    let remote = lane().await;
    let mut events = remote.events().unwrap();
    let call = remote.send(Nap(30_000));
    // Killed once the handler runs: the call was delivered.
    assert_eq!(within(10, events.next()).await.unwrap().unwrap(), Heard(u32::MAX));
    assert!(remote.kill());
    let started = Instant::now();
    let error = within(10, call).await.unwrap_err();
    assert!(matches!(error, CallError::Exited(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[actix_rt::test]
async fn a_deadline_holds_over_the_fast_lane() {
    let remote = lane().await;
    let error = within(10, remote.send(Nap(2_000)).timeout(Duration::from_millis(100))).await.unwrap_err();
    assert!(matches!(error, CallError::Timeout(_)), "{error}");
    assert_eq!(within(10, remote.send(Echo(3))).await.unwrap(), 3);
}

/// The child ruins both rings. The parent neither crashes nor hangs: the calls fail at once
/// (usually the parent finds the garbage first and kills the child for a protocol error; the
/// child may also find it first, in its own reply, and exit), and a sibling carries on.
#[actix_rt::test]
async fn garbage_in_the_rings_fails_calls_without_a_crash_or_a_hang() {
    let (bad, sibling) = (lane().await, lane().await);
    let scribbled = within(10, bad.send(Scribble)).await;
    let next = within(10, bad.send(Echo(1))).await;
    for result in [scribbled.map(u64::from), next] {
        match result {
            Ok(n) => assert!(n >= 2, "the scribble found both rings: {n}"),
            Err(CallError::Protocol(_) | CallError::Exited(_) | CallError::NotDelivered) => {}
            Err(other) => panic!("expected a protocol error or an exit, got {other}"),
        }
    }
    let exit = within(10, bad.exited()).await;
    assert!(exit.signal() == Some(libc::SIGKILL) || exit.code().is_some(), "{exit}");
    assert!(within(10, bad.send(Echo(2))).await.is_err());
    assert_eq!(within(10, sibling.send(Echo(3))).await.unwrap(), 3);
}

#[actix_rt::test]
async fn busy_and_idle_phases_in_turn_lose_no_wake_up() {
    let remote = lane().await;
    let mut n = 0;
    for phase in 0..20u64 {
        for _ in 0..200 {
            n += 1;
            assert_eq!(within(5, remote.send(Echo(n))).await.unwrap(), n);
        }
        // Idle long enough for both sides to stop spinning and sleep.
        actix_rt::time::sleep(Duration::from_millis(1 + phase % 4 * 5)).await;
    }
    let stats = remote.fast_lane_stats().unwrap();
    assert!(stats.sleeps > 0, "{stats:?}");
    // Every sleep ended by a doorbell: none waited for its safety timeout (2 s, longer than
    // any idle phase here), let alone found a frame when it ended.
    assert_eq!((stats.safety_timeouts, stats.lost_wakeups), (0, 0), "{stats:?}");
}

const IDLE_ENV: &str = "ENSEMBLE_TEST_IDLE_LANE";

/// Not a test on its own: the body of the helper process of the test below, so that no other
/// test's work counts against the idle actor.
#[actix_rt::test]
#[ignore = "helper process for an_idle_fast_lane_actor_uses_under_one_percent_of_a_cpu"]
async fn idle_lane_helper() {
    if std::env::var_os(IDLE_ENV).is_none() {
        return;
    }
    let remote = lane().await;
    for n in 0..1000 {
        assert_eq!(remote.send(Echo(n)).await.unwrap(), n);
    }
    // Let the spins that follow the last call run out.
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let (parent, child) = (harness::cpu_time_ns(std::process::id()), harness::cpu_time_ns(remote.pid()));
    let started = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(10)).await;
    let elapsed = started.elapsed().as_nanos() as u64;
    let parent = harness::cpu_time_ns(std::process::id()) - parent;
    let child = harness::cpu_time_ns(remote.pid()) - child;
    println!("IDLE {elapsed} {parent} {child}");
    remote.stop().await.unwrap();
}

#[test]
fn an_idle_fast_lane_actor_uses_under_one_percent_of_a_cpu() {
    let line = harness::run_helper("idle_lane_helper", IDLE_ENV, "IDLE ", 60);
    let figures: Vec<u64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
    let (elapsed, parent, child) = (figures[0], figures[1], figures[2]);
    let share = (parent + child) as f64 / elapsed as f64;
    assert!(
        share < 0.01,
        "idle for {elapsed} ns, the parent used {parent} ns and the child {child} ns: {:.3}%",
        share * 100.0
    );
    println!("idle share of a CPU: {:.4}% (parent {parent} ns, child {child} ns)", share * 100.0);
}

/// Replies too large for a slot reach a caller whose connection is read on the I/O thread (a
/// plain thread spawned it): a caller that took the marker and gave up before the frame came
/// must leave the rest to the driver, at once.
#[test]
fn large_replies_reach_a_caller_on_a_plain_thread_without_waiting_for_a_timeout() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let caller = std::thread::spawn(move || {
        let remote =
            futures::executor::block_on(ensemble::spawn_with(Lane, SpawnOptions::new().fast_lane())).unwrap();
        for n in 0..300 {
            let bytes = futures::executor::block_on(remote.send(Big(5_000 + n))).unwrap();
            assert_eq!(bytes.len(), 5_000 + n);
        }
        let _ = done_tx.send(());
    });
    // 300 calls take well under a second; each wait that ended by the lane's 2 s safety
    // timeout instead of a wake-up would add 2 s.
    done_rx.recv_timeout(Duration::from_secs(60)).expect("300 large replies within 60 s");
    caller.join().unwrap();
}

/// A call queued behind one whose handler stops the actor fails with the exit, at once.
#[actix_rt::test]
async fn a_call_behind_a_stop_fails_with_the_exit() {
    let remote = lane().await;
    let halt = remote.send(Halt);
    let behind = remote.send(Echo(1));
    within(10, halt).await.unwrap();
    assert!(matches!(within(10, behind).await, Err(CallError::Exited(_))));
    assert_eq!(within(10, remote.exited()).await.code(), Some(0));
}
