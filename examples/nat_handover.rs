//! Seed 000's test of the Notify-Acknowledge-Transfer hand-over (CPython issue 82300).
//!
//! In Python, a worker that creates a `SharedMemory` block, sends its name to the main process
//! and moves on loses the block before the main process attaches. Here workers create arrays
//! of 10^0 .. 10^7 elements (10^6 with `--quick`), return them in their replies, and are
//! stopped right away; the main process checks every element and the total, and holds nothing
//! at the end. Each segment is an anonymous memory file whose descriptor travels with the reply:
//! the kernel keeps it alive while the reply is in flight, even after its sender has exited,
//! and frees it with the last holder. Nothing ever appears in /dev/shm; nobody writes a line of
//! the hand-over protocol.
//!
//! Run: `cargo run --release --example nat_handover`

use ensemble::prelude::*;
use std::time::Instant;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Task))]
struct Worker;

/// Create an array of `len` elements holding `seed`, `seed + 1`, ...
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "SharedSlice<u64>")]
struct Task {
    len: usize,
    seed: u64,
}

impl ProcessHandler<Task> for Worker {
    fn handle(&mut self, task: Task, _: &mut ProcessContext<Self>) -> SharedSlice<u64> {
        let mut array = SharedSliceMut::<u64>::new(task.len).expect("memory for the array");
        for (i, x) in array.iter_mut().enumerate() {
            *x = task.seed + i as u64;
        }
        array.freeze().expect("the worker owns the whole array")
    }
}

fn held() -> usize {
    ensemble::shm::held_segments().unwrap_or(usize::MAX)
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let max_power = if std::env::args().any(|a| a == "--quick") { 6 } else { 7 };
    let before = held();
    let workers = [ensemble::spawn(Worker).await?, ensemble::spawn(Worker).await?];
    let started = Instant::now();
    // Every task is sent at once; the workers answer while the main process is still busy.
    let calls: Vec<_> = (0..=max_power)
        .map(|p| workers[p % 2].send(Task { len: 10usize.pow(p as u32), seed: p as u64 * 1000 }))
        .collect();
    let mut arrays = Vec::new();
    for call in calls {
        arrays.push(call.await?);
    }
    for worker in &workers {
        worker.stop().await?; // the senders are gone before the main process reads anything
    }
    let mut total: u128 = 0;
    for (p, array) in arrays.iter().enumerate() {
        let seed = p as u64 * 1000;
        assert_eq!(array.len(), 10usize.pow(p as u32));
        assert!(array.iter().enumerate().all(|(i, x)| *x == seed + i as u64), "array 10^{p} is intact");
        let sum: u128 = array.iter().map(|x| u128::from(*x)).sum();
        total += sum;
        println!("10^{p:<2} elements from segment {}: sum {sum}", array.segment_id());
    }
    let expected: u128 = (0..=max_power)
        .map(|p| {
            let (n, seed) = (10u128.pow(p as u32), p as u128 * 1000);
            n * seed + n * (n - 1) / 2
        })
        .sum();
    assert_eq!(total, expected);
    println!("total {total} as expected, in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
    drop(arrays);
    let after = held();
    println!("segments held by this process: {before} before, {after} after (and none in /dev/shm)");
    anyhow::ensure!(after <= before, "segments leaked");
    Ok(())
}
