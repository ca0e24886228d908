//! Seed 002 ("Understanding Multiprocessing: Shared Memory Management, Locks and Queues in
//! Python"), in ensemble: a job prints a few lines under a lock and puts its index on a queue;
//! the parent reads the queue back and checks that every index came out once.
//!
//! Python: `mp.Lock()` and `mp.Queue()` work when processes inherit them (`mp.Process(args=..)`)
//! and fail when they are passed to a `Pool` ("RuntimeError: Lock objects should only be
//! shared between processes through inheritance"); the workaround is a `Manager`, a server
//! process that owns the lock and the queue and proxies every `acquire` and `put`.
//!
//! Here the lock (a [`SharedMutex`], a value in shared memory under a kernel file lock) and the
//! queue (a [`Queue`], one datagram per message on a socket pair) are kernel objects whose descriptors
//! travel attached to the messages that carry them, so all four of the seed's combinations
//! work, and none needs a manager:
//!
//! 1. a pool of worker processes (a farm), the lock and the queue passed in every task;
//! 2. a pool whose workers get the lock and the queue once, in their initial state (what a
//!    `Pool(initializer=..)` would do);
//! 3. an individual process per task (at most 3 at a time), the lock and the queue in its
//!    initial state (Python's `mp.Process(target=the_job, args=(task,))`);
//! 4. an individual process per task, the lock and the queue in the task message.
//!
//! Each worker prints its block of lines while it holds the lock, so blocks never interleave;
//! the lock also guards a counter of printed blocks, which the parent checks.
//!
//! Run: `cargo run --example locks_and_queues` (or `-- --quick` for fewer jobs). Exits 0 only
//! if all four scenarios pass.

use ensemble::farm::{Farm, FarmConfig};
use ensemble::prelude::*;
use ensemble::sync::{Queue, SharedMutex};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::io::Write;
use std::time::Duration;

/// At most this many worker processes at a time, as the seed's `ncores`.
const NCORES: usize = 3;

/// What the seed's `make_iterator` pairs with every index: the lock and the queue.
#[derive(Clone, Serialize, Deserialize)]
struct Shared {
    /// The print lock; it guards the number of blocks printed.
    lock: SharedMutex<u64>,
    /// Where each job puts its index.
    queue: Queue<u32>,
}

/// A worker process: in scenarios 2 and 3 it is given the lock and the queue when it starts.
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Job), batches(Job))]
struct Worker {
    shared: Option<Shared>,
}

/// The seed's `the_job`: the index, and the lock and queue when the task carries them
/// (scenarios 1 and 4).
#[derive(Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Result<(), String>")]
struct Job {
    idx: u32,
    shared: Option<Shared>,
    pause_ms: u64,
}

impl ProcessHandler<Job> for Worker {
    fn handle(&mut self, job: Job, _: &mut ProcessContext<Self>) -> Result<(), String> {
        let shared = job.shared.as_ref().or(self.shared.as_ref()).ok_or("no lock and queue: not given")?;
        the_job(job.idx, shared, job.pause_ms).map_err(|e| ensemble::runtime::error_chain(e.as_ref()))
    }
}

fn the_job(idx: u32, shared: &Shared, pause_ms: u64) -> Result<(), Box<dyn std::error::Error>> {
    std::thread::sleep(Duration::from_millis(pause_ms));
    {
        let mut printed = shared.lock.lock()?;
        let mut out = std::io::stdout().lock();
        for line in ["I", "was", "here", "!!!!", "1111", "einhundertelfzigelf"] {
            writeln!(out, "    {line}")?;
        }
        writeln!(out, "    By run {idx} (pid {})", std::process::id())?;
        out.flush()?;
        *printed += 1;
    }
    shared.queue.put(idx)?;
    Ok(())
}

/// The seed's `read_queue`: everything in the queue, as a list (every job put its index
/// before it replied, so the queue holds them all by now).
fn read_queue(queue: &Queue<u32>) -> anyhow::Result<Vec<u32>> {
    let mut results = Vec::new();
    while let Some(idx) = queue.try_get()? {
        results.push(idx);
    }
    Ok(results)
}

fn job(idx: u32, shared: Option<&Shared>, pause_ms: u64) -> Job {
    Job { idx, shared: shared.cloned(), pause_ms }
}

/// Scenario 1 (`pool` and `in_tasks`) or 2 (`pool`, given at start).
async fn pool(shared: &Shared, jobs: u32, pause_ms: u64, in_tasks: bool) -> anyhow::Result<()> {
    let config = FarmConfig { workers: NCORES, progress: false, ..FarmConfig::default() };
    let given = (!in_tasks).then(|| shared.clone());
    let farm = Farm::start(config, move |_| Worker { shared: given.clone() }).await?;
    let tasks = (0..jobs).map(|idx| job(idx, in_tasks.then_some(shared), pause_ms));
    let results = farm.map(tasks).await;
    farm.shutdown().await?;
    results?.into_iter().collect::<Result<(), String>>().map_err(anyhow::Error::msg)
}

/// Scenario 3 (given at start) or 4 (`in_tasks`): one process per job, at most `NCORES` at
/// a time, each stopped when its job is done.
async fn individual(shared: &Shared, jobs: u32, pause_ms: u64, in_tasks: bool) -> anyhow::Result<()> {
    let one = |idx: u32| async move {
        let given = (!in_tasks).then(|| shared.clone());
        let process = ensemble::spawn(Worker { shared: given }).await?;
        let done = process.send(job(idx, in_tasks.then_some(shared), pause_ms)).await;
        process.stop().await?;
        done?.map_err(anyhow::Error::msg)
    };
    stream::iter(0..jobs).map(one).buffer_unordered(NCORES).try_collect().await
}

/// Runs scenario `number` and checks what came out of the queue and the counter.
async fn scenario(number: u32, what: &str, jobs: u32, pause_ms: u64) -> anyhow::Result<()> {
    let shared = Shared { lock: SharedMutex::new(0)?, queue: Queue::new()? };
    println!("scenario {number}: {what}");
    match number {
        1 => pool(&shared, jobs, pause_ms, true).await?,
        2 => pool(&shared, jobs, pause_ms, false).await?,
        3 => individual(&shared, jobs, pause_ms, false).await?,
        _ => individual(&shared, jobs, pause_ms, true).await?,
    }
    let mut results = read_queue(&shared.queue)?;
    results.sort_unstable();
    let printed = *shared.lock.lock()?;
    anyhow::ensure!(
        results == (0..jobs).collect::<Vec<_>>(),
        "scenario {number}: the queue gave {results:?}"
    );
    anyhow::ensure!(printed == u64::from(jobs), "scenario {number}: {printed} blocks printed, not {jobs}");
    println!("scenario {number}: ok: {jobs} indexes back from the queue, each once; {printed} blocks printed whole\n");
    Ok(())
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (jobs, pause_ms) = if quick { (6, 0) } else { (10, 50) };
    let scenarios = [
        "a pool of worker processes, the lock and the queue passed in every task",
        "a pool of worker processes, given the lock and the queue when they start",
        "one process per task, the lock and the queue in its initial state",
        "one process per task, the lock and the queue passed in the task",
    ];
    let mut failed = Vec::new();
    for (number, what) in (1..).zip(scenarios) {
        if let Err(e) = scenario(number, what, jobs, pause_ms).await {
            println!("scenario {number}: FAILED: {e:#}\n");
            failed.push(number);
        }
    }
    anyhow::ensure!(failed.is_empty(), "scenarios {failed:?} failed");
    println!("all four scenarios passed, with no manager process");
    Ok(())
}
