//! Shared-memory arrays travel between real processes: never freed early, never leaked, also
//! when a side is killed at each step of the hand-over.

use ensemble::prelude::*;
use ensemble::shm::SHM_DIR;
use std::io::BufRead;
use std::path::Path;
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

async fn within<F: std::future::Future>(secs: u64, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), future).await.expect("timed out")
}

async fn worker(input: Option<SharedSlice<f64>>) -> Remote<Worker> {
    within(10, ensemble::spawn(Worker { input })).await.unwrap()
}

fn exists(name: &str) -> bool {
    Path::new(SHM_DIR).join(name).exists()
}

/// Waits until segment `name` is gone from /dev/shm; false after a deadline.
fn gone(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !exists(name) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[tokio::test]
async fn a_read_only_input_is_mapped_by_every_worker_without_copying() {
    let mut input = SharedSliceMut::<f64>::new(100_000).unwrap();
    for (i, x) in input.iter_mut().enumerate() {
        *x = i as f64;
    }
    let input = input.freeze().unwrap();
    let name = input.segment_name().to_owned();
    let expected = input.iter().sum::<f64>();
    let (a, b) = (worker(Some(input.clone())).await, worker(Some(input.clone())).await);
    assert_eq!(within(5, a.send(Sum)).await.unwrap(), expected);
    assert_eq!(within(5, b.send(Sum)).await.unwrap(), expected);
    drop(input);
    assert!(exists(&name), "the workers still hold the input");
    within(10, a.stop()).await.unwrap();
    within(10, b.stop()).await.unwrap();
    assert!(gone(&name), "the last holder unlinked it");
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
    let names: Vec<String> = arrays.iter().map(|a| a.segment_name().to_owned()).collect();
    drop(arrays);
    assert!(names.iter().all(|n| gone(n)), "nothing leaked");
}

#[tokio::test]
async fn disjoint_parts_are_written_by_different_workers_and_joined_back() {
    let workers = [worker(None).await, worker(None).await, worker(None).await];
    let parts = SharedSliceMut::<u32>::new(1000).unwrap().chunks(334);
    let name = parts[0].segment_name().to_owned();
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
    assert!(gone(&name));
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
    let name = array.segment_name().to_owned();
    drop(array);
    assert!(gone(&name), "the receiver, last holder, unlinked it");
}

#[tokio::test]
async fn a_receiver_killed_before_it_acknowledges_makes_the_sender_let_go() {
    let worker = worker(None).await;
    worker.do_send(HoldAndSleep(60_000)).unwrap();
    let array = SharedSliceMut::<u8>::new(4096).unwrap();
    let name = array.segment_name().to_owned();
    worker.do_send(TakeAndAbort(array)).unwrap();
    assert!(exists(&name), "in flight: the sender holds it");
    worker.kill();
    within(10, worker.exited()).await;
    assert!(gone(&name), "the abandoned hand-over released the last hold");
}

#[tokio::test]
async fn a_receiver_that_dies_after_acknowledging_leaves_nothing_behind() {
    let worker = worker(None).await;
    let mut array = SharedSliceMut::<u8>::new(4096).unwrap();
    array[0] = 42;
    let name = array.segment_name().to_owned();
    let result = within(10, worker.send(TakeAndAbort(array))).await;
    assert!(
        matches!(result, Err(CallError::Exited(ref e)) if e.signal() == Some(libc::SIGABRT)),
        "{result:?}"
    );
    assert!(gone(&name));
}

#[tokio::test]
async fn a_segment_larger_than_dev_shm_fails_at_creation_with_a_clear_error() {
    match SharedSliceMut::<u8>::new(1 << 50) {
        Err(ensemble::SegmentError::NoSpace { requested, .. }) => assert_eq!(requested, 1 << 50),
        other => panic!("expected NoSpace, got {other:?}"),
    }
}

const ROOT_ENV: &str = "ENSEMBLE_TEST_SHM_ROOT";

/// Not a test on its own: a program that holds a segment until it is killed.
#[test]
#[ignore = "helper process for a_killed_program_leaves_orphans_that_the_next_one_removes"]
fn segment_holder_helper() {
    if std::env::var_os(ROOT_ENV).is_none() {
        return;
    }
    let array = SharedSliceMut::<u8>::new(1 << 16).unwrap();
    // Look like a segment orphaned long ago, past the sweeper's grace period.
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let path = Path::new(SHM_DIR).join(array.segment_name());
    std::fs::File::options().write(true).open(path).unwrap().set_modified(an_hour_ago).unwrap();
    println!("SEGMENT {}", array.segment_name());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_program_leaves_orphans_that_the_next_one_removes() {
    let mine = SharedSliceMut::<u8>::new(64).unwrap();
    let mut root = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["segment_holder_helper", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ROOT_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(root.stdout.take().unwrap());
    let name = stdout.lines().map_while(Result::ok).find_map(|line| {
        let at = line.find("SEGMENT ")?;
        Some(line[at + 8..].trim().to_owned())
    });
    root.kill().unwrap();
    root.wait().unwrap();
    let name = name.expect("the helper printed its segment");
    assert!(exists(&name), "a killed program cannot clean up");
    let removed = ensemble::shm::remove_orphans().unwrap();
    assert!(removed.contains(&name), "{removed:?}");
    assert!(!exists(&name));
    assert!(exists(mine.segment_name()), "a live program's segment is never swept");
}
