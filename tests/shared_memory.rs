//! Shared-memory arrays travel between real processes: never freed early, never leaked, also
//! when a side is killed at each step of the hand-over. A segment is a memfd whose descriptor
//! travels with its frame: whether a process still holds one is read from its `/proc/PID/fd`
//! and `/proc/PID/maps`, by the segment's inode, so tests running in parallel do not disturb
//! each other's counts. Nothing is ever created in `/dev/shm`.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use ensemble::prelude::*;
use ensemble::shm::SegmentId;
use harness::within;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Sum, Make, Fill, MakeAndDie, HoldAndSleep, TakeAndAbort), event = Made)]
struct Worker {
    /// A read-only input every worker maps (seed 003).
    input: Option<SharedSlice<f64>>,
}

/// Sums the worker's input.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "f64")]
struct Sum;

/// Creates an array 0, 1, 2, ... of `n` elements in the worker and returns it (seed 000, case 2).
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "SharedSlice<u64>")]
struct Make(usize);

/// Writes `value` into the part it is given and returns the part.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "SharedSliceMut<u32>")]
struct Fill {
    part: SharedSliceMut<u32>,
    value: u32,
}

/// Sends a new array as an event, then is killed before the parent can acknowledge it.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct MakeAndDie(usize);

#[derive(Serialize, Deserialize)]
struct Made(SharedSlice<u64>);

/// Keeps the worker busy, so that later messages wait undecoded.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct HoldAndSleep(u64);

/// Takes an array (acknowledging it), then aborts.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct TakeAndAbort(SharedSliceMut<u8>);

fn counting(n: usize) -> SharedSlice<u64> {
    let mut array = SharedSliceMut::<u64>::new(n).unwrap();
    for (i, x) in array.iter_mut().enumerate() {
        *x = i as u64;
    }
    array.freeze().unwrap()
}

impl ProcessHandler<Sum> for Worker {
    fn handle(&mut self, _: Sum, _: &mut ProcessContext<Self>) -> f64 {
        self.input.as_ref().map_or(0.0, |input| input.iter().sum())
    }
}

impl ProcessHandler<Make> for Worker {
    fn handle(&mut self, Make(n): Make, _: &mut ProcessContext<Self>) -> SharedSlice<u64> {
        counting(n)
    }
}

impl ProcessHandler<Fill> for Worker {
    fn handle(
        &mut self,
        Fill { mut part, value }: Fill,
        _: &mut ProcessContext<Self>,
    ) -> SharedSliceMut<u32> {
        part.fill(value);
        part
    }
}

impl ProcessHandler<MakeAndDie> for Worker {
    fn handle(&mut self, MakeAndDie(n): MakeAndDie, ctx: &mut ProcessContext<Self>) {
        ctx.send_out(Made(counting(n))).unwrap();
        kill_myself();
    }
}

impl ProcessHandler<HoldAndSleep> for Worker {
    fn handle(&mut self, HoldAndSleep(ms): HoldAndSleep, _: &mut ProcessContext<Self>) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl ProcessHandler<TakeAndAbort> for Worker {
    fn handle(&mut self, TakeAndAbort(array): TakeAndAbort, _: &mut ProcessContext<Self>) {
        assert_eq!(array[0], 42);
        std::process::abort();
    }
}

fn kill_myself() {
    let _ = std::process::Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
    std::thread::sleep(Duration::from_secs(60));
}

async fn worker(input: Option<SharedSlice<f64>>) -> Remote<Worker> {
    within(10, ensemble::spawn(Worker { input })).await.unwrap()
}

/// The inode of a segment, as `/proc` shows it.
fn inode(id: SegmentId) -> u64 {
    id.to_string().rsplit(' ').next().unwrap().parse().unwrap()
}

/// Whether process `pid` holds a descriptor or a mapping of the segment with inode `ino`.
fn holds(pid: u32, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let by_fd = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:ensemble:"))
            && std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino)
    });
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let needle = format!(" {ino} ");
    by_fd || maps.lines().any(|l| l.contains("memfd:ensemble:") && l.contains(&needle))
}

/// Whether any process on the machine holds the segment: the kernel frees it when none does.
fn held_anywhere(ino: u64) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| holds(pid, ino))
}

/// Waits until no process holds the segment; false after a deadline.
fn freed(id: SegmentId) -> bool {
    let ino = inode(id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !held_anywhere(ino) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn ensemble_files_in_dev_shm() -> Vec<String> {
    let entries = std::fs::read_dir("/dev/shm").into_iter().flatten().flatten();
    entries
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ensemble"))
        .collect()
}

#[tokio::test]
async fn a_read_only_input_is_mapped_by_every_worker_without_copying() {
    let mut input = SharedSliceMut::<f64>::new(100_000).unwrap();
    for (i, x) in input.iter_mut().enumerate() {
        *x = i as f64;
    }
    let input = input.freeze().unwrap();
    let id = input.segment_id();
    let expected = input.iter().sum::<f64>();
    let (a, b) = (worker(Some(input.clone())).await, worker(Some(input.clone())).await);
    assert_eq!(within(5, a.send(Sum)).await.unwrap(), expected);
    assert_eq!(within(5, b.send(Sum)).await.unwrap(), expected);
    assert!(holds(a.pid(), inode(id)) && holds(b.pid(), inode(id)), "each worker maps the same pages");
    drop(input);
    within(10, a.stop()).await.unwrap();
    within(10, b.stop()).await.unwrap();
    assert!(freed(id), "nobody holds it once everyone let go");
}

#[tokio::test]
async fn arrays_made_in_a_worker_that_stops_at_once_reach_the_parent_intact() {
    let worker = worker(None).await;
    let calls: Vec<_> = (0..6).map(|p| worker.send(Make(10usize.pow(p)))).collect();
    let stopping = worker.clone();
    let mut arrays = Vec::new();
    for (p, call) in calls.into_iter().enumerate() {
        let array = within(10, call).await.unwrap();
        assert_eq!(array.len(), 10usize.pow(p as u32));
        arrays.push(array);
    }
    within(10, stopping.stop()).await.unwrap();
    for array in &arrays {
        assert!(array.iter().enumerate().all(|(i, x)| *x == i as u64), "every element survived");
    }
    let ids: Vec<SegmentId> = arrays.iter().map(|a| a.segment_id()).collect();
    drop(arrays);
    assert!(ids.into_iter().all(freed), "nothing leaked");
}

#[tokio::test]
async fn disjoint_parts_are_written_by_different_workers_and_joined_back() {
    let workers = [worker(None).await, worker(None).await, worker(None).await];
    let parts = SharedSliceMut::<u32>::new(1000).unwrap().chunks(334);
    let id = parts[0].segment_id();
    let mut calls = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        calls.push(workers[i].send(Fill { part, value: i as u32 + 1 }));
    }
    let mut back = Vec::new();
    for call in calls {
        back.push(within(10, call).await.unwrap());
    }
    let whole = SharedSliceMut::join_all(back).unwrap().freeze().unwrap();
    assert!(whole[..334].iter().all(|x| *x == 1));
    assert!(whole[334..668].iter().all(|x| *x == 2));
    assert!(whole[668..].iter().all(|x| *x == 3));
    for w in &workers {
        within(10, w.stop()).await.unwrap();
    }
    drop(whole);
    assert!(freed(id));
}

#[tokio::test]
async fn a_sender_killed_between_notify_and_ack_still_delivers_and_nothing_leaks() {
    let worker = worker(None).await;
    let mut events = worker.events().unwrap();
    worker.do_send(MakeAndDie(1000)).unwrap();
    let exit = within(10, worker.exited()).await;
    assert_eq!(exit.signal(), Some(libc::SIGKILL));
    use futures::StreamExt;
    let Made(array) = within(10, events.next()).await.expect("the event arrived").unwrap();
    assert!(array.iter().enumerate().all(|(i, x)| *x == i as u64));
    let id = array.segment_id();
    drop(array);
    assert!(freed(id), "the receiver was the last holder");
}

#[tokio::test]
async fn a_receiver_killed_before_it_acknowledges_makes_the_sender_let_go() {
    let worker = worker(None).await;
    worker.do_send(HoldAndSleep(60_000)).unwrap();
    let array = SharedSliceMut::<u8>::new(4096).unwrap();
    let id = array.segment_id();
    worker.do_send(TakeAndAbort(array)).unwrap();
    assert!(holds(std::process::id(), inode(id)), "in flight: the sender holds it");
    worker.kill();
    within(10, worker.exited()).await;
    assert!(freed(id), "the abandoned hand-over released the last hold");
}

#[tokio::test]
async fn a_receiver_that_dies_after_acknowledging_leaves_nothing_behind() {
    let worker = worker(None).await;
    let mut array = SharedSliceMut::<u8>::new(4096).unwrap();
    array[0] = 42;
    let id = array.segment_id();
    let result = within(10, worker.send(TakeAndAbort(array))).await;
    assert!(
        matches!(result, Err(CallError::Exited(ref e)) if e.signal() == Some(libc::SIGABRT)),
        "{result:?}"
    );
    assert!(freed(id));
}

#[tokio::test]
async fn a_frozen_array_cannot_be_written_through_proc() {
    let worker = worker(None).await;
    let array = within(10, worker.send(Make(1000))).await.unwrap();
    let ino = inode(array.segment_id());
    let ours = std::fs::read_dir("/proc/self/fd").unwrap().flatten().find(|e| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino)
    });
    let path = ours.expect("the parent holds the segment's descriptor").path();
    let written = std::fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| {
        use std::io::Write;
        f.write_all(&[0xff; 8])
    });
    assert!(written.is_err(), "a write through {path:?} succeeded");
    assert_eq!(array[1], 1, "unchanged");
    within(10, worker.stop()).await.unwrap();
}

#[tokio::test]
async fn a_petabyte_is_refused_at_creation_with_a_clear_error() {
    match SharedSliceMut::<u8>::new(1 << 50) {
        Err(error @ ensemble::SegmentError::NoMemory { requested, .. }) => {
            assert_eq!(requested, 1 << 50);
            assert!(error.to_string().contains("does not fit in the memory that can back it"), "{error}");
        }
        other => panic!("expected NoMemory, got {other:?}"),
    }
}

const ROOT_ENV: &str = "ENSEMBLE_TEST_SHM_ROOT";

/// Not a test on its own: a program that hands an array to a worker, makes another, and waits
/// to be killed with its whole tree in the middle of it.
#[test]
#[ignore = "helper process for a_program_tree_killed_mid_handover_leaves_nothing"]
fn program_tree_helper() {
    if std::env::var_os(ROOT_ENV).is_none() {
        return;
    }
    let system = actix_rt::System::new();
    system.block_on(async {
        let worker = worker(None).await;
        worker.do_send(HoldAndSleep(60_000)).unwrap();
        let sent = SharedSliceMut::<u8>::new(1 << 20).unwrap();
        let kept = SharedSliceMut::<u8>::new(1 << 20).unwrap();
        println!(
            "SEGMENTS {} {} WORKER {}",
            inode(sent.segment_id()),
            inode(kept.segment_id()),
            worker.pid()
        );
        worker.do_send(TakeAndAbort(sent)).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(kept);
    });
}

#[test]
fn a_program_tree_killed_mid_handover_leaves_nothing() {
    let before = ensemble_files_in_dev_shm();
    let mut root = harness::Helper::start("program_tree_helper", ROOT_ENV, "1");
    let words: Vec<u64> =
        root.line_after("SEGMENTS ", 30).split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(words.len(), 3, "the helper printed its segments and its worker");
    let (sent, kept, worker) = (words[0], words[1], words[2] as u32);
    assert!(held_anywhere(sent) && held_anywhere(kept));
    root.signal(rustix::process::Signal::KILL);
    root.wait(10);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{worker}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!std::path::Path::new(&format!("/proc/{worker}/fd")).exists(), "the worker died with its parent");
    let deadline = Instant::now() + Duration::from_secs(5);
    while (held_anywhere(sent) || held_anywhere(kept)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!held_anywhere(sent) && !held_anywhere(kept), "the kernel freed both with their holders");
    assert_eq!(ensemble_files_in_dev_shm(), before, "nothing in /dev/shm");
}
