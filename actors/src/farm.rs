//! Worker farms: map tasks over a supervised pool of process actors, with batching,
//! backpressure, retries of tasks lost with a crashed worker, and a progress bar.
//!
//! The worker type lists the task message in `batches(...)` as well as (or instead of)
//! `handles(...)`: the farm sends tasks in [`Batch`]es, and each task of a batch runs on its own
//! (a panic fails only its task).
//!
//! ```
//! use ensemble::prelude::*;
//! use ensemble::farm::{Farm, FarmConfig};
//!
//! #[derive(Serialize, Deserialize, ProcessActor)]
//! #[actor(batches(Square))]
//! struct Worker;
//!
//! #[derive(Clone, Serialize, Deserialize, RemoteMessage)]
//! #[rtype(result = "u64")]
//! struct Square(u64);
//!
//! impl ProcessHandler<Square> for Worker {
//!     fn handle(&mut self, Square(n): Square, _: &mut ProcessContext<Self>) -> u64 { n * n }
//! }
//!
//! # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let farm = Farm::start(FarmConfig { workers: 2, ..FarmConfig::default() }, |_| Worker).await?;
//! let squares = farm.map((0..1000).map(Square)).await?;
//! assert_eq!(squares[999], 998_001);
//! farm.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - **Order.** [`Farm::map`] and [`Farm::map_all`] return results in input order;
//!   [`Farm::stream`] and [`Farm::for_each`] hand them over as they complete, with their input
//!   index.
//! - **Bounded memory.** Inputs are pulled lazily: at most `workers * in_flight` batches are
//!   out at a time, however long the input iterator is.
//! - **Panics** fail their own task with [`TaskError::Panicked`] (index, message, backtrace);
//!   the worker goes on.
//! - **Crashes.** A worker whose process dies is restarted by the farm's supervisor. The tasks
//!   of its unfinished batches are sent again one by one, so that a task that kills its worker
//!   is isolated. The batch that was running when the worker died may be sent `retries` more
//!   times, then its tasks fail with [`TaskError::WorkerDied`]; batches that were only queued
//!   behind it are bystanders and are sent again without counting (up to 10 times). A task is
//!   never reported twice; a task that crashed its worker may have run more than once.
//! - **Signals.** [`Farm::map_until_signal`] stops dispatch on SIGINT or SIGTERM and returns
//!   what finished; the workers themselves ignore SIGINT and stop when the farm does.
//! - **Scope.** Dropping the farm (or [`Farm::shutdown`]) stops every worker; they are reaped.

use crate::actor::{Handles, ProcessActor};
use crate::error::CallError;
use crate::message::RemoteMessage;
use crate::supervisor::{
    ChildSpec, Intensity, Supervised, Supervisor, SupervisorConfig, SupervisorError, SupervisorHandle,
};
use ensemble_runtime::transport::ProtocolError;
use ensemble_runtime::{ExitInfo, Failure};
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Tasks sent to a worker together. The worker's `batches(M)` entry runs each on its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Batch<M> {
    /// The tasks, in order.
    pub tasks: Vec<M>,
}

impl<M: RemoteMessage> RemoteMessage for Batch<M> {
    type Result = Vec<Result<M::Result, Failure>>;
}

/// How many tasks go in one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchSize {
    /// Grow batches until one takes about 2 ms in the worker, so that the cost of a message
    /// does not dominate tiny tasks; never so large that a worker would sit idle at the end.
    #[default]
    Auto,
    /// Always this many (at least 1).
    Fixed(usize),
}

/// How a farm runs. Every field has a default.
#[derive(Clone, Debug)]
pub struct FarmConfig {
    /// Worker processes. Default: the number of CPUs.
    pub workers: usize,
    /// Batches in flight per worker (the backpressure bound). Default: 2.
    pub in_flight: usize,
    /// Batch sizing. Default: [`BatchSize::Auto`].
    pub batch: BatchSize,
    /// How many more times a task lost with a crashed worker is sent. Default: 2.
    pub retries: u32,
    /// Show a progress bar on stderr when it is a terminal. Default: true.
    pub progress: bool,
    /// Prefix of the workers' process names. Default: "worker".
    pub name: String,
}

impl Default for FarmConfig {
    fn default() -> Self {
        FarmConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            in_flight: 2,
            batch: BatchSize::Auto,
            retries: 2,
            progress: true,
            name: String::from("worker"),
        }
    }
}

/// Why one task has no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The task's handler panicked.
    #[error("task {index} panicked: {message}")]
    Panicked {
        /// The task's input index.
        index: usize,
        /// The panic message.
        message: String,
        /// Where it panicked, with the worker's backtrace.
        backtrace: String,
    },
    /// The worker died every time the task was sent.
    #[error("task {index} was lost with its worker {attempts} times; last: {exit}")]
    WorkerDied {
        /// The task's input index.
        index: usize,
        /// How the last worker ended.
        exit: ExitInfo,
        /// How many times it was sent.
        attempts: u32,
    },
    /// Another failure of the call (e.g. the task or its result did not encode or decode).
    #[error("task {index} failed: {error}")]
    Failed {
        /// The task's input index.
        index: usize,
        /// The call's error.
        error: CallError,
    },
}

impl TaskError {
    /// The input index of the task.
    pub fn index(&self) -> usize {
        match self {
            TaskError::Panicked { index, .. }
            | TaskError::WorkerDied { index, .. }
            | TaskError::Failed { index, .. } => *index,
        }
    }
}

/// What a [`Farm::for_each`] run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tasks with a result.
    pub succeeded: usize,
    /// Tasks with an error.
    pub failed: usize,
    /// Whether the callback stopped the run before every input was done.
    pub stopped: bool,
}

/// A pool of worker processes of actor type `A`, supervised (`one_for_one`, permanent).
pub struct Farm<A: ProcessActor> {
    root: SupervisorHandle,
    workers: Vec<Supervised<A>>,
    config: FarmConfig,
    /// Seconds per task learned by earlier runs, to size the first batches of the next one.
    per_task: std::sync::Mutex<Option<f64>>,
    /// One per worker, shared by every run (several may go on at once, e.g. in a service).
    lanes: Vec<Lane>,
}

/// What every run knows about one worker.
#[derive(Default)]
struct Lane {
    /// Batches sent to it and not answered yet, by all runs.
    in_flight: AtomicUsize,
    /// Batches it answered, ever.
    answered: AtomicU64,
    /// Held while a ticket is taken and its frame sent.
    order: std::sync::Mutex<()>,
}

/// Where a batch stood in its worker's queue when it was sent.
#[derive(Clone, Copy)]
struct Ticket {
    /// Batches in flight ahead of it.
    ahead: usize,
    /// The worker's `answered` count then.
    answered: u64,
}

impl Lane {
    fn send(&self) -> Ticket {
        Ticket {
            ahead: self.in_flight.fetch_add(1, Ordering::SeqCst),
            answered: self.answered.load(Ordering::SeqCst),
        }
    }

    fn done(&self, answered: bool) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if answered {
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Whether the batch of `ticket` was at the head of the worker's queue (all batches ahead
    /// of it were answered), i.e. running when the worker died, rather than queued behind the
    /// batch that killed it.
    fn was_running(&self, ticket: Ticket) -> bool {
        self.answered.load(Ordering::SeqCst) - ticket.answered >= ticket.ahead as u64
    }
}

/// How long an automatic batch aims to take in the worker.
const BATCH_TARGET: Duration = Duration::from_millis(2);
/// The largest automatic batch.
const MAX_BATCH: usize = 4096;

impl<A: ProcessActor> Farm<A> {
    /// Starts `config.workers` workers, worker `i` from `factory(i)` (also when restarted).
    ///
    /// # Errors
    /// [`SupervisorError::Start`] when a worker cannot be started; none is left running.
    pub async fn start(
        config: FarmConfig,
        factory: impl Fn(usize) -> A + Send + Sync + 'static,
    ) -> Result<Self, SupervisorError> {
        let workers = config.workers.max(1);
        let intensity = Intensity { max_restarts: 10 * workers as u32, within: Duration::from_secs(60) };
        let mut supervisor = Supervisor::new(SupervisorConfig { intensity, ..SupervisorConfig::default() });
        let factory = std::sync::Arc::new(factory);
        let handles = (0..workers)
            .map(|i| {
                let factory = std::sync::Arc::clone(&factory);
                supervisor.add(ChildSpec::new(format!("{}-{i}", config.name), move || factory(i)))
            })
            .collect();
        let root = supervisor.start().await?;
        Ok(Farm {
            root,
            workers: handles,
            config: FarmConfig { workers, ..config },
            per_task: Default::default(),
            lanes: (0..workers).map(|_| Lane::default()).collect(),
        })
    }

    /// Sends a batch to worker `w` once it is up, and tells, with the answer, whether the batch
    /// was at the head of the worker's queue (see [`Lane::was_running`]).
    async fn send<M>(
        &self,
        w: usize,
        batch: Batch<M>,
    ) -> (Result<Vec<Result<M::Result, Failure>>, CallError>, bool)
    where
        M: RemoteMessage,
        A: Handles<Batch<M>>,
    {
        let remote = match self.workers[w].up().await {
            Ok(remote) => remote,
            Err(error) => return (Err(error), false),
        };
        let lane = &self.lanes[w];
        let tasks = batch.tasks.len();
        // The ticket and the frame go out together, so that tickets are in queue order.
        let (ticket, call) = {
            let _order = lane.order.lock().unwrap_or_else(|e| e.into_inner());
            (lane.send(), remote.send(batch))
        };
        let result = match call.await {
            Ok(results) if results.len() != tasks => {
                let error = ProtocolError::Unexpected(format!(
                    "a batch reply with {} results for {tasks} tasks",
                    results.len()
                ));
                remote.protocol_violation(error.clone());
                Err(CallError::Protocol(error))
            }
            other => other,
        };
        lane.done(result.is_ok());
        (result, lane.was_running(ticket))
    }

    /// The workers, for messages other than the farm's tasks.
    pub fn workers(&self) -> &[Supervised<A>] {
        &self.workers
    }

    /// Maps every input to its result, in input order; stops at the first failed task.
    ///
    /// # Errors
    /// The first [`TaskError`]; tasks still running are abandoned.
    pub async fn map<M, I>(&self, inputs: I) -> Result<Vec<M::Result>, TaskError>
    where
        I: IntoIterator<Item = M>,
        M: RemoteMessage + Clone,
        A: Handles<Batch<M>>,
    {
        let mut results: Vec<Option<M::Result>> = Vec::new();
        let mut first_error = None;
        self.for_each(inputs, |index, result| match result {
            Ok(value) => {
                if results.len() <= index {
                    results.resize_with(index + 1, || None);
                }
                results[index] = Some(value);
                ControlFlow::Continue(())
            }
            Err(error) => {
                first_error = Some(error);
                ControlFlow::Break(())
            }
        })
        .await;
        match first_error {
            Some(error) => Err(error),
            None => Ok(results.into_iter().map(|r| r.expect("every task reported once")).collect()),
        }
    }

    /// Maps every input, collecting results and errors alike, in input order.
    pub async fn map_all<M, I>(&self, inputs: I) -> Vec<Result<M::Result, TaskError>>
    where
        I: IntoIterator<Item = M>,
        M: RemoteMessage + Clone,
        A: Handles<Batch<M>>,
    {
        let mut results: Vec<Option<Result<M::Result, TaskError>>> = Vec::new();
        self.for_each(inputs, |index, result| {
            if results.len() <= index {
                results.resize_with(index + 1, || None);
            }
            results[index] = Some(result);
            ControlFlow::Continue(())
        })
        .await;
        results.into_iter().map(|r| r.expect("every task reported once")).collect()
    }

    /// Runs every input and hands each result to `sink` as it completes, with its input index.
    /// Memory stays bounded whatever the number of inputs. `sink` may stop the run.
    ///
    /// # Cancel safety
    /// Dropping the future stops dispatch; batches in flight finish in the workers and their
    /// results are discarded. The workers stay up.
    pub async fn for_each<M, I, F>(&self, inputs: I, sink: F) -> Summary
    where
        I: IntoIterator<Item = M>,
        M: RemoteMessage + Clone,
        A: Handles<Batch<M>>,
        F: FnMut(usize, Result<M::Result, TaskError>) -> ControlFlow<()>,
    {
        Run::new(self, inputs.into_iter(), sink).go().await
    }

    /// Runs every input and yields `(input index, result)` as results complete: a [`Stream`].
    ///
    /// The farm works only while the stream is polled, so results never pile up beyond the
    /// batches in flight. Dropping the stream stops dispatch (see [`Farm::for_each`]); to stop
    /// on Ctrl-C, select between the stream and `actix_rt::signal::ctrl_c()` and keep what
    /// arrived.
    pub fn stream<'a, M, I>(
        &'a self,
        inputs: I,
    ) -> impl Stream<Item = (usize, Result<M::Result, TaskError>)> + 'a
    where
        I: IntoIterator<Item = M> + 'a,
        M: RemoteMessage + Clone,
        A: Handles<Batch<M>>,
    {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let engine = self.for_each(inputs, move |index, result| {
            let _ = tx.unbounded_send((index, result));
            ControlFlow::Continue(())
        });
        // The engine yields nothing itself; polling it moves the work on and feeds `rx`.
        let engine = futures::stream::once(engine).filter_map(|_| futures::future::ready(None));
        futures::stream::select(rx, engine)
    }

    /// Like [`Farm::map_all`], but SIGINT (Ctrl-C) or SIGTERM stops dispatch: batches in flight
    /// are abandoned, and what finished is returned, in input order (`None` for tasks that did
    /// not finish, up to the last one that did), with whether a signal came. The workers stay up; [`Farm::shutdown`] stops them.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub async fn map_until_signal<M, I>(
        &self,
        inputs: I,
    ) -> std::io::Result<(Vec<Option<Result<M::Result, TaskError>>>, bool)>
    where
        I: IntoIterator<Item = M>,
        M: RemoteMessage + Clone,
        A: Handles<Batch<M>>,
    {
        use actix_rt::signal::unix::{signal, SignalKind};
        let (mut interrupt, mut terminate) =
            (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
        let mut results: Vec<Option<Result<M::Result, TaskError>>> = Vec::new();
        let stream = self.stream(inputs);
        futures::pin_mut!(stream);
        let interrupted = loop {
            tokio::select! {
                next = stream.next() => match next {
                    Some((index, result)) => {
                        if results.len() <= index {
                            results.resize_with(index + 1, || None);
                        }
                        results[index] = Some(result);
                    }
                    None => break false,
                },
                _ = interrupt.recv() => break true,
                _ = terminate.recv() => break true,
            }
        };
        Ok((results, interrupted))
    }

    /// Stops every worker in order and waits until they are reaped.
    ///
    /// # Errors
    /// [`SupervisorError::GaveUp`] if workers crashed too often and the farm gave up before.
    pub async fn shutdown(self) -> Result<(), SupervisorError> {
        self.root.shutdown().await
    }
}

impl<A: ProcessActor> Drop for Farm<A> {
    fn drop(&mut self) {
        self.root.shutdown_in_background();
    }
}

/// One task out: its input index, the task (kept for a retry), and how often it was lost.
struct Out<M> {
    index: usize,
    task: M,
    /// Lost while running in a worker that died: counts against `retries`.
    crashes: u32,
    /// Lost while queued behind another batch that killed the worker.
    bystanders: u32,
}

/// How often a task may be lost as a bystander of other tasks' crashes.
const MAX_BYSTANDER: u32 = 10;

/// The state of one `for_each` run.
struct Run<'f, A: ProcessActor, M, I, F> {
    farm: &'f Farm<A>,
    inputs: std::iter::Enumerate<I>,
    retry: VecDeque<Out<M>>,
    sink: F,
    load: Vec<usize>,
    batch: usize,
    per_task: Option<f64>,
    summary: Summary,
    progress: indicatif::ProgressBar,
}

impl<'f, A, M, I, F> Run<'f, A, M, I, F>
where
    A: ProcessActor + Handles<Batch<M>>,
    M: RemoteMessage + Clone,
    I: Iterator<Item = M>,
    F: FnMut(usize, Result<M::Result, TaskError>) -> ControlFlow<()>,
{
    fn new(farm: &'f Farm<A>, inputs: I, sink: F) -> Self {
        let per_task = *farm.per_task.lock().unwrap_or_else(|e| e.into_inner());
        let batch = match (farm.config.batch, per_task) {
            (BatchSize::Fixed(n), _) => n.max(1),
            (BatchSize::Auto, Some(per_task)) => auto_batch(per_task),
            (BatchSize::Auto, None) => 1,
        };
        let progress = progress_bar(farm.config.progress, inputs.size_hint());
        Run {
            load: vec![0; farm.workers.len()],
            farm,
            inputs: inputs.enumerate(),
            retry: VecDeque::new(),
            sink,
            batch,
            per_task,
            summary: Summary::default(),
            progress,
        }
    }

    async fn go(mut self) -> Summary {
        let mut running = FuturesUnordered::new();
        loop {
            while !self.summary.stopped {
                let Some(worker) = self.idle_worker() else { break };
                let tasks = self.next_batch();
                if tasks.is_empty() {
                    break;
                }
                self.load[worker] += 1;
                let batch = Batch { tasks: tasks.iter().map(|t| t.task.clone()).collect() };
                let farm = self.farm;
                running.push(async move {
                    let started = Instant::now();
                    let (result, was_running) = farm.send(worker, batch).await;
                    (worker, tasks, result, was_running, started.elapsed())
                });
            }
            let Some((worker, tasks, result, was_running, elapsed)) = running.next().await else { break };
            self.load[worker] -= 1;
            self.settle(tasks, result, elapsed, was_running);
            if self.summary.stopped {
                break;
            }
        }
        self.progress.finish_and_clear();
        if self.per_task.is_some() {
            *self.farm.per_task.lock().unwrap_or_else(|e| e.into_inner()) = self.per_task;
        }
        self.summary
    }

    /// A worker with room for another batch of this run, the least loaded by all runs.
    fn idle_worker(&self) -> Option<usize> {
        (0..self.load.len())
            .filter(|w| self.load[*w] < self.farm.config.in_flight)
            .min_by_key(|w| (self.farm.lanes[*w].in_flight.load(Ordering::SeqCst), self.load[*w]))
    }

    /// Retries go alone, so that a task that kills its worker takes nothing else down with it.
    fn next_batch(&mut self) -> Vec<Out<M>> {
        if let Some(retry) = self.retry.pop_front() {
            return vec![retry];
        }
        let size = self.batch_size();
        self.inputs
            .by_ref()
            .take(size)
            .map(|(index, task)| Out { index, task, crashes: 0, bystanders: 0 })
            .collect()
    }

    fn batch_size(&self) -> usize {
        if let BatchSize::Fixed(n) = self.farm.config.batch {
            return n.max(1);
        }
        // Leave a few batches per worker at the end, so that none sits idle while one finishes.
        let slots = self.farm.workers.len() * self.farm.config.in_flight * 4;
        let remaining = self.inputs.size_hint().0;
        let balanced = if remaining > 0 { remaining.div_ceil(slots) } else { MAX_BATCH };
        self.batch.min(balanced).clamp(1, MAX_BATCH)
    }

    fn settle(
        &mut self,
        tasks: Vec<Out<M>>,
        result: Result<Vec<Result<M::Result, Failure>>, CallError>,
        elapsed: Duration,
        was_running: bool,
    ) {
        match result {
            Ok(results) => {
                self.learn(tasks.len(), elapsed);
                for (out, result) in tasks.into_iter().zip(results) {
                    let result = result.map_err(|failure| task_failure(out.index, failure));
                    self.deliver(out.index, result);
                }
            }
            Err(CallError::Exited(exit)) => {
                for mut out in tasks {
                    // A batch queued behind the one that killed the worker is sent again freely
                    // (within reason); the one that was running counts against `retries`.
                    if was_running || out.bystanders >= MAX_BYSTANDER {
                        out.crashes += 1;
                    } else {
                        out.bystanders += 1;
                    }
                    if out.crashes <= self.farm.config.retries {
                        self.retry.push_back(out);
                    } else {
                        let attempts = out.crashes + out.bystanders;
                        let error = TaskError::WorkerDied { index: out.index, exit: exit.clone(), attempts };
                        self.deliver(out.index, Err(error));
                    }
                }
            }
            Err(error) => {
                for out in tasks {
                    self.deliver(
                        out.index,
                        Err(TaskError::Failed { index: out.index, error: error.clone() }),
                    );
                }
            }
        }
    }

    /// Grows or shrinks the automatic batch size from a batch's round trip.
    fn learn(&mut self, tasks: usize, elapsed: Duration) {
        if self.farm.config.batch != BatchSize::Auto || tasks == 0 {
            return;
        }
        let sample = elapsed.as_secs_f64() / tasks as f64;
        let per_task = self.per_task.map_or(sample, |avg| 0.7 * avg + 0.3 * sample);
        self.per_task = Some(per_task);
        self.batch = auto_batch(per_task).min(self.batch.saturating_mul(4).max(2));
    }

    fn deliver(&mut self, index: usize, result: Result<M::Result, TaskError>) {
        self.progress.inc(1);
        match &result {
            Ok(_) => self.summary.succeeded += 1,
            Err(_) => self.summary.failed += 1,
        }
        if (self.sink)(index, result).is_break() {
            self.summary.stopped = true;
        }
    }
}

/// The batch size that takes about [`BATCH_TARGET`] at `per_task` seconds a task.
fn auto_batch(per_task: f64) -> usize {
    ((BATCH_TARGET.as_secs_f64() / per_task.max(1e-9)) as usize).clamp(1, MAX_BATCH)
}

fn task_failure(index: usize, failure: Failure) -> TaskError {
    match failure {
        Failure::Panicked { message, backtrace } => TaskError::Panicked { index, message, backtrace },
        Failure::Decode { what, detail } => {
            TaskError::Failed { index, error: CallError::Decode { what, detail } }
        }
        Failure::Error { message } => TaskError::Failed { index, error: CallError::Failed(message) },
    }
}

/// A bar on stderr when it is a terminal (indicatif hides it otherwise), with rate and ETA.
fn progress_bar(enabled: bool, size_hint: (usize, Option<usize>)) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match size_hint.1 {
        Some(len) => indicatif::ProgressBar::new(len as u64),
        None => indicatif::ProgressBar::no_length(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}  {elapsed_precise}",
    );
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}
