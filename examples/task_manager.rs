//! Seed 001's `TaskManager`, done with a farm.
//!
//! The Python version is a context manager around a task queue, a result queue, two
//! `multiprocessing.Process` workers that poll with `sleep(0.01)`, a "stop" sentinel, `exec` of
//! script strings, tracebacks captured with `traceback.print_exc`, and a tqdm bar fed by polling.
//! Here: a farm is the scope (workers stop and are reaped when it ends), tasks are typed
//! messages, the shared array is a `SharedSlice` every worker maps, the progress bar draws itself
//! on a terminal, results come back in task order, and a task that fails comes back as an error
//! with its message and the worker's backtrace, without taking the other tasks down.
//!
//! Run: `cargo run --example task_manager` (`-- --quick` for a fast run).

use ensemble::farm::{Farm, FarmConfig, TaskError};
use ensemble::prelude::*;
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(batches(Task))]
struct Worker {
    fibonacci: SharedSlice<u64>,
    pause: Duration,
}

/// Sum the shared numbers in `from..to`.
#[derive(Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Task {
    id: usize,
    from: usize,
    to: usize,
}

impl ProcessHandler<Task> for Worker {
    fn handle(&mut self, task: Task, ctx: &mut ProcessContext<Self>) -> u64 {
        std::thread::sleep(self.pause); // something worth a progress bar
        let window = &self.fibonacci[task.from..task.to]; // panics when out of range
        tracing::debug!("task {} handled by {}", task.id, ctx.name());
        window.iter().sum()
    }
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut fibonacci = SharedSliceMut::<u64>::new(40)?;
    (fibonacci[0], fibonacci[1]) = (1, 1);
    for i in 2..40 {
        fibonacci[i] = fibonacci[i - 1] + fibonacci[i - 2];
    }
    let fibonacci = fibonacci.freeze().expect("sole owner");
    let pause = Duration::from_millis(if quick { 5 } else { 150 });

    let config = FarmConfig { workers: 2, ..FarmConfig::default() };
    let shared = fibonacci.clone();
    let farm = Farm::start(config, move |_| Worker { fibonacci: shared.clone(), pause }).await?;
    // Task 13 reads past the end of the array: it fails, the others do not notice.
    let tasks = (0..20).map(|id| Task { id, from: id, to: if id == 13 { 99 } else { id + 5 } });
    let results = farm.map_all(tasks).await;
    for (id, result) in results.iter().enumerate() {
        match result {
            Ok(sum) => println!("task {id:>2}: sum of fibonacci[{id}..{}] = {sum}", id + 5),
            Err(TaskError::Panicked { message, backtrace, .. }) => {
                let trace: Vec<&str> = backtrace.lines().take(3).collect();
                println!("task {id:>2}: failed: {message}\n           {}", trace.join("\n           "));
            }
            Err(other) => println!("task {id:>2}: {other}"),
        }
    }
    let failed = results.iter().filter(|r| r.is_err()).count();
    println!("{} tasks done, {failed} failed", results.len() - failed);
    farm.shutdown().await?;
    println!("all workers stopped");
    anyhow::ensure!(failed == 1 && results[13].is_err(), "exactly task 13 fails");
    Ok(())
}
