//! Part II of valkka-multiprocess's tutorial ("Organizing workers"), in ensemble.
//!
//! valkka: a `MainContext` subclass with `startProcesses`, `startThreads`, `close` and a
//! `__call__` loop that `safe_select`s over every worker's pipe, keeps a cache of available
//! workers, calls `ignoreSIGINT()` on each, and catches `KeyboardInterrupt` to close them.
//! Here a supervisor owns the workers (restarting any that crashes), the main loop waits on
//! whichever worker finishes first (`FuturesUnordered` instead of `select` over pipes), hands it
//! the next job, and Ctrl-C (or SIGTERM) stops everything in order. Children ignore SIGINT
//! already; no manual close.
//!
//! Run: `cargo run --example 07_worker_manager` (Ctrl-C to stop), or with `-- --quick` to run
//! 12 jobs and exit.

use ensemble::prelude::*;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(DoWork))]
struct WorkerProcess {
    /// The worker's model: 100 x 100 values, as in the tutorial.
    model: Vec<f64>,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Vec<f64>")]
struct DoWork {
    value: f64,
    pause_ms: u64,
}

impl ProcessHandler<DoWork> for WorkerProcess {
    fn handle(&mut self, work: DoWork, ctx: &mut ProcessContext<Self>) -> Vec<f64> {
        tracing::info!("doWork: will change array values from {} to {}", self.model[0], work.value);
        self.model.fill(work.value);
        std::thread::sleep(Duration::from_millis(work.pause_ms));
        tracing::info!("doWork: ..did that! ({})", ctx.name());
        self.model[..5].to_vec()
    }
}

/// Hands one job to worker `i` and tells which worker it was when it is done.
async fn run(
    i: usize,
    worker: &Supervised<WorkerProcess>,
    job: DoWork,
) -> (usize, Result<Vec<f64>, CallError>) {
    (i, worker.send(job).await)
}

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).with_ansi(std::io::stderr().is_terminal()).init();
    let quick = std::env::args().any(|a| a == "--quick");
    let (n_workers, jobs, pause) = if quick { (3, 12, 20) } else { (4, usize::MAX, 1000) };

    let mut supervisor = Supervisor::new(SupervisorConfig::default());
    let workers: Vec<Supervised<WorkerProcess>> = (0..n_workers)
        .map(|i| {
            supervisor
                .add(ChildSpec::new(format!("worker-{i}"), || WorkerProcess { model: vec![0.0; 100 * 100] }))
        })
        .collect();
    let root = supervisor.start().await?;

    let job = |n: usize| DoWork { value: (n % 5 + 1) as f64, pause_ms: pause * (n as u64 % 3 + 1) };
    // Like valkka's `avail_cache`: idle workers queue up, the first in line gets the next job.
    let mut idle: VecDeque<usize> = (0..n_workers).collect();
    let mut running = FuturesUnordered::new();
    let mut next = 0;
    for _ in 0..3 {
        let i = idle.pop_front().expect("at least 3 workers");
        running.push(run(i, &workers[i], job(next)));
        next += 1;
    }
    let mut done = 0;
    let mut interrupted = std::pin::pin!(actix_rt::signal::ctrl_c());
    while done < jobs {
        tokio::select! {
            _ = &mut interrupted => {
                tracing::warn!("SIGINT: will exit asap");
                break;
            }
            Some((i, result)) = running.next() => {
                done += 1;
                match result {
                    Ok(values) => tracing::info!("worker-{i} returned values {values:?}"),
                    Err(e) => tracing::error!("worker-{i} failed: {e}"),
                }
                idle.push_back(i);
                if next < jobs {
                    let free = idle.pop_front().expect("the worker that just finished is idle");
                    running.push(run(free, &workers[free], job(next)));
                    next += 1;
                }
            }
        }
    }
    drop(running);
    root.shutdown().await?;
    tracing::info!("bye!");
    Ok(())
}
