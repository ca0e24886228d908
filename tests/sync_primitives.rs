//! Events, semaphores, shared mutexes and queues shared by real processes: each handle travels
//! in a message (or a farm's task) to worker processes, which use the same kernel object as
//! the parent. A holder killed while it holds a mutex does not deadlock the others; queues
//! lose and duplicate nothing, also with several producers, and survive stray bytes.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use ensemble::farm::{Farm, FarmConfig};
use ensemble::prelude::*;
use ensemble::sync::{Event, Queue, QueueError, Semaphore, SharedMutex};
use harness::within;
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(SetLater, TakePermits, AcquireWithin, LockAndHold, Produce, MakeArray))]
struct Helper;

/// Sleeps `ms`, then sets the event.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct SetLater {
    event: Event,
    ms: u64,
}

/// Takes up to `n` permits without waiting and keeps them; replies how many it got.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct TakePermits {
    semaphore: Semaphore,
    n: u32,
}

/// Waits at most `ms` for a permit (blocking), gives it back; replies whether it got one.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "bool")]
struct AcquireWithin {
    semaphore: Semaphore,
    ms: u64,
}

/// Locks, writes `value`, and keeps the lock (the guard is forgotten): the parent kills it.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "()")]
struct LockAndHold {
    mutex: SharedMutex<u64>,
    value: u64,
}

/// Puts `(producer, 0..count)` on the queue.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Produce {
    queue: Queue<(u32, u32)>,
    producer: u32,
    count: u32,
}

/// Makes an array `0..n` times `factor` and puts it on the queue.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct MakeArray {
    queue: Queue<SharedSliceMut<u32>>,
    n: usize,
    factor: u32,
}

impl ProcessHandler<SetLater> for Helper {
    fn handle(&mut self, SetLater { event, ms }: SetLater, _: &mut ProcessContext<Self>) {
        std::thread::sleep(Duration::from_millis(ms));
        event.set().unwrap();
    }
}

impl ProcessHandler<TakePermits> for Helper {
    fn handle(&mut self, TakePermits { semaphore, n }: TakePermits, _: &mut ProcessContext<Self>) -> u32 {
        let mut taken = 0;
        while taken < n {
            match semaphore.try_acquire().unwrap() {
                Some(permit) => permit.forget(),
                None => break,
            }
            taken += 1;
        }
        taken
    }
}

impl ProcessHandler<AcquireWithin> for Helper {
    fn handle(
        &mut self,
        AcquireWithin { semaphore, ms }: AcquireWithin,
        _: &mut ProcessContext<Self>,
    ) -> bool {
        semaphore.acquire_timeout(Duration::from_millis(ms)).unwrap().is_some()
    }
}

impl ProcessHandler<LockAndHold> for Helper {
    fn handle(&mut self, LockAndHold { mutex, value }: LockAndHold, _: &mut ProcessContext<Self>) {
        let mut guard = mutex.lock().unwrap();
        *guard = value;
        std::mem::forget(guard);
    }
}

impl ProcessHandler<Produce> for Helper {
    fn handle(&mut self, Produce { queue, producer, count }: Produce, _: &mut ProcessContext<Self>) {
        for seq in 0..count {
            queue.put((producer, seq)).unwrap();
        }
    }
}

impl ProcessHandler<MakeArray> for Helper {
    fn handle(&mut self, MakeArray { queue, n, factor }: MakeArray, _: &mut ProcessContext<Self>) {
        let values: Vec<u32> = (0..n as u32).map(|i| i * factor).collect();
        queue.put(SharedSliceMut::from_slice(&values).unwrap()).unwrap();
    }
}

/// A farm worker: tasks carry the lock they work under (seed 002, scenario 1).
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(batches(Increment))]
struct PoolWorker;

/// Adds one to the counter `times` times, each a read, a pause and a write under the lock.
#[derive(Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Increment {
    counter: SharedMutex<u64>,
    times: u32,
}

impl ProcessHandler<Increment> for PoolWorker {
    fn handle(&mut self, Increment { counter, times }: Increment, ctx: &mut ProcessContext<Self>) -> u32 {
        for _ in 0..times {
            let mut guard = counter.lock().unwrap();
            let before = *guard;
            std::thread::yield_now();
            *guard = before + 1;
        }
        ctx.pid()
    }
}

async fn helper() -> Remote<Helper> {
    within(20, ensemble::spawn(Helper)).await.unwrap()
}

async fn stop(remote: Remote<Helper>) {
    within(20, remote.stop()).await.unwrap();
}

#[tokio::test]
async fn an_event_set_in_a_child_wakes_an_async_waiter_in_the_parent() {
    let child = helper().await;
    let event = Event::new().unwrap();
    child.do_send(SetLater { event: event.clone(), ms: 100 }).unwrap();
    assert!(!event.is_set());
    within(20, event.wait_async()).await.unwrap();
    assert!(event.is_set(), "waiting does not consume it");
    stop(child).await;
}

#[tokio::test]
async fn an_event_set_in_a_child_wakes_a_blocking_waiter_in_the_parent() {
    let child = helper().await;
    let event = Event::new().unwrap();
    child.do_send(SetLater { event: event.clone(), ms: 100 }).unwrap();
    let waiter = event.clone();
    let woke = within(30, tokio::task::spawn_blocking(move || waiter.wait_timeout(Duration::from_secs(20))));
    assert!(woke.await.unwrap().unwrap());
    stop(child).await;
}

#[tokio::test]
async fn semaphore_permits_are_shared_across_processes() {
    let child = helper().await;
    let semaphore = Semaphore::new(3).unwrap();
    let mine = semaphore.try_acquire().unwrap().unwrap();
    let taken = within(10, child.send(TakePermits { semaphore: semaphore.clone(), n: 5 })).await.unwrap();
    assert_eq!(taken, 2, "the two the parent left");
    assert!(semaphore.try_acquire().unwrap().is_none());
    // The child waits for a permit; the parent's comes back while it waits.
    let waiting = child.send(AcquireWithin { semaphore: semaphore.clone(), ms: 20_000 });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(mine);
    assert!(within(30, waiting).await.unwrap());
    // The child's two forgotten permits are given back the way a supervisor would.
    semaphore.add_permits(2).unwrap();
    let permits: Vec<_> = (0..3).map(|_| semaphore.try_acquire().unwrap()).collect();
    assert!(permits.iter().all(Option::is_some));
    stop(child).await;
}

#[tokio::test]
async fn a_mutex_whose_holder_is_killed_is_recovered_by_the_next_locker() {
    let child = helper().await;
    let mutex = SharedMutex::new(0u64).unwrap();
    within(10, child.send(LockAndHold { mutex: mutex.clone(), value: 7 })).await.unwrap();
    assert!(mutex.lock_timeout(Duration::from_millis(50)).unwrap().is_none(), "the child holds it");
    assert!(child.kill());
    let exit = within(10, child.exited()).await;
    assert_eq!(exit.signal(), Some(libc::SIGKILL));
    let guard = mutex.lock_timeout(Duration::from_secs(10)).unwrap().expect("not a deadlock");
    assert!(guard.owner_died(), "the next locker is told");
    assert_eq!(*guard, 7, "what the dead holder wrote is there, maybe half-updated");
    drop(guard);
    let guard = mutex.lock().unwrap();
    assert!(!guard.owner_died(), "only once");
}

#[actix_rt::test]
async fn a_lock_passed_to_pool_workers_as_a_task_argument_serializes_their_updates() {
    let (workers, tasks, times) = (3, 12, 300);
    let config = FarmConfig { workers, progress: false, ..FarmConfig::default() };
    let farm = within(30, Farm::start(config, |_| PoolWorker)).await.unwrap();
    let counter = SharedMutex::new(0u64).unwrap();
    let work = (0..tasks).map(|_| Increment { counter: counter.clone(), times });
    let pids = within(120, farm.map(work)).await.unwrap();
    assert_eq!(*counter.lock().unwrap(), u64::from(tasks * times));
    assert!(pids.iter().all(|pid| *pid != std::process::id()), "done in worker processes");
    within(30, farm.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_queue_with_several_producer_processes_loses_and_duplicates_nothing() {
    let (producers, count) = (3u32, 400u32);
    let children = [helper().await, helper().await, helper().await];
    let queue = Queue::<(u32, u32)>::new().unwrap();
    for (producer, child) in children.iter().enumerate() {
        child.do_send(Produce { queue: queue.clone(), producer: producer as u32, count }).unwrap();
    }
    let mut next = vec![0u32; producers as usize];
    for _ in 0..producers * count {
        let (producer, seq) = within(30, queue.get_async()).await.unwrap();
        assert_eq!(seq, next[producer as usize], "each producer's messages arrive once, in order");
        next[producer as usize] += 1;
    }
    assert!(next.iter().all(|n| *n == count));
    assert!(queue.get_timeout(Duration::from_millis(50)).unwrap().is_none(), "nothing more");
    for child in children {
        stop(child).await;
    }
}

#[tokio::test]
async fn a_shared_array_put_on_a_queue_in_a_child_arrives_mapped() {
    let child = helper().await;
    let queue = Queue::<SharedSliceMut<u32>>::new().unwrap();
    child.do_send(MakeArray { queue: queue.clone(), n: 100_000, factor: 3 }).unwrap();
    let array = within(30, queue.get_async()).await.unwrap();
    assert_eq!(array.len(), 100_000);
    assert!(array.iter().enumerate().all(|(i, x)| *x == i as u32 * 3));
    stop(child).await;
}

#[tokio::test]
async fn stray_bytes_in_a_queue_are_malformed_and_the_next_message_still_arrives() {
    let child = helper().await;
    let queue = Queue::<(u32, u32)>::new().unwrap();
    queue.put_raw(b"not a message at all").unwrap();
    child.do_send(Produce { queue: queue.clone(), producer: 9, count: 1 }).unwrap();
    let err = queue.get().unwrap_err();
    assert!(matches!(err, QueueError::Malformed { len: 20, .. }), "{err}");
    assert_eq!(within(30, queue.get_async()).await.unwrap(), (9, 0));
    stop(child).await;
}

#[tokio::test]
async fn a_message_larger_than_one_datagram_is_refused_with_the_limit() {
    let queue = Queue::<Vec<u8>>::new().unwrap();
    let err = queue.put(vec![0; 300_000]).unwrap_err();
    match err {
        QueueError::TooLarge { size, max } => {
            assert_eq!(size, 300_012);
            assert_eq!(max, queue.max_message_size());
            assert!(max > 100_000, "about one send buffer: {max}");
        }
        other => panic!("{other}"),
    }
    assert!(queue.is_empty());
}
