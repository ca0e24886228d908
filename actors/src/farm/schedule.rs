//! What a run decides, apart from processes: which worker gets the next batch, how large it
//! is, what a lost batch costs its tasks, and which results reach the caller. Pure and
//! synchronous: [`Run`](super::Run) feeds it the answers of real workers, the tests below feed
//! it made-up ones.

use crate::error::CallError;
use crate::farm::{BatchSize, Summary, TaskError};
use ensemble_runtime::Failure;
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Duration;

/// How long an automatic batch aims to take in the worker.
/// Measured on 2 CPUs at 8,760 tasks of ~25 us: 2 ms (about 100 batches per worker) cost
/// 15-30% against the same map on threads; 8 ms is within a few percent.
pub(super) const BATCH_TARGET: Duration = Duration::from_millis(8);
/// The shortest automatic batch at the end of a run, where batches shrink so that the workers
/// finish together (the time is the learned one, which counts a batch's wait in the queue).
/// Measured at 8,760 tasks of ~2.5 us on 2 CPUs (`weather_hours`, medians of 15 maps, 8 runs
/// each): with no floor the tail's ~60 batches of a few tasks cost 20-25% against threads; a
/// floor of 1 ms 3-13%, 2 ms 0-10%, 4 ms 6-18%.
pub(super) const BATCH_FLOOR: Duration = Duration::from_millis(2);
/// The largest automatic batch.
pub(super) const MAX_BATCH: usize = 4096;
/// How often a task may be lost as a bystander of other tasks' crashes.
pub(super) const MAX_BYSTANDER: u32 = 10;

/// One task out: its input index, the task (kept for a retry), and how often it was lost.
#[derive(Debug)]
pub(super) struct Out<M> {
    pub(super) index: usize,
    pub(super) task: M,
    /// Lost while running in a worker that died: counts against `retries`.
    crashes: u32,
    /// Lost while queued behind another batch that killed the worker.
    bystanders: u32,
}

/// How a run is shaped: the parts of the farm's configuration the schedule needs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub(super) workers: usize,
    pub(super) in_flight: usize,
    pub(super) batch: BatchSize,
    pub(super) retries: u32,
}

/// The state of one run's dispatch.
pub(super) struct Schedule<M, I> {
    shape: Shape,
    inputs: std::iter::Enumerate<I>,
    retry: VecDeque<Out<M>>,
    /// Batches of this run in flight, per worker.
    load: Vec<usize>,
    batch: usize,
    /// Seconds per task, learned (from earlier runs too).
    per_task: Option<f64>,
    summary: Summary,
}

impl<M, I: Iterator<Item = M>> Schedule<M, I> {
    /// A schedule over `inputs`, starting from what earlier runs learned (`per_task`).
    pub(super) fn new(shape: Shape, inputs: I, per_task: Option<f64>) -> Self {
        let batch = match (shape.batch, per_task) {
            (BatchSize::Fixed(n), _) => n.max(1),
            (BatchSize::Auto, Some(per_task)) => batch_of(BATCH_TARGET, per_task),
            (BatchSize::Auto, None) => 1,
        };
        Schedule {
            load: vec![0; shape.workers],
            shape,
            inputs: inputs.enumerate(),
            retry: VecDeque::new(),
            batch,
            per_task,
            summary: Summary::default(),
        }
    }

    /// What the run did so far.
    pub(super) fn summary(&self) -> Summary {
        self.summary
    }

    /// Seconds per task learned so far.
    pub(super) fn per_task(&self) -> Option<f64> {
        self.per_task
    }

    /// The next batch and the worker to send it to, or `None` when every worker has its fill
    /// of this run's batches, the inputs are done, or the sink stopped the run. The worker is
    /// the least loaded by all runs (`in_flight_everywhere(w)`), then by this one.
    pub(super) fn next(
        &mut self,
        in_flight_everywhere: impl Fn(usize) -> usize,
    ) -> Option<(usize, Vec<Out<M>>)> {
        if self.summary.stopped {
            return None;
        }
        let worker = (0..self.load.len())
            .filter(|w| self.load[*w] < self.shape.in_flight)
            .min_by_key(|w| (in_flight_everywhere(*w), self.load[*w]))?;
        let tasks = self.next_batch();
        if tasks.is_empty() {
            return None;
        }
        self.load[worker] += 1;
        Some((worker, tasks))
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
        if let BatchSize::Fixed(n) = self.shape.batch {
            return n.max(1);
        }
        // Leave a few batches per worker at the end, so that none sits idle while one finishes
        // (the batches shrink as the inputs run out), but none shorter than `BATCH_FLOOR`.
        let slots = self.shape.workers * self.shape.in_flight * 2;
        let remaining = self.inputs.size_hint().0;
        let balanced = if remaining > 0 { remaining.div_ceil(slots) } else { MAX_BATCH };
        let floor = self.per_task.map_or(1, |per_task| batch_of(BATCH_FLOOR, per_task));
        self.batch.min(balanced.max(floor)).clamp(1, MAX_BATCH)
    }

    /// Takes the answer to a batch `worker` was sent: results go to `sink` (in the batch's
    /// order), lost tasks are queued again or fail. `was_running`: the batch was at the head of
    /// the worker's queue when it died (see `Ledger::was_running`).
    pub(super) fn settle<R>(
        &mut self,
        worker: usize,
        tasks: Vec<Out<M>>,
        answer: Result<Vec<Result<R, Failure>>, CallError>,
        elapsed: Duration,
        was_running: bool,
        sink: &mut impl FnMut(usize, Result<R, TaskError>) -> ControlFlow<()>,
    ) {
        self.load[worker] -= 1;
        match answer {
            Ok(results) => {
                self.learn(tasks.len(), elapsed);
                for (out, result) in tasks.into_iter().zip(results) {
                    let result = result.map_err(|failure| task_failure(out.index, failure));
                    self.deliver(out.index, result, sink);
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
                    if out.crashes <= self.shape.retries {
                        self.retry.push_back(out);
                    } else {
                        let attempts = out.crashes + out.bystanders;
                        let error = TaskError::WorkerDied { index: out.index, exit: exit.clone(), attempts };
                        self.deliver(out.index, Err(error), sink);
                    }
                }
            }
            Err(error) => {
                for out in tasks {
                    let error = TaskError::Failed { index: out.index, error: error.clone() };
                    self.deliver(out.index, Err(error), sink);
                }
            }
        }
    }

    /// Grows or shrinks the automatic batch size from a batch's round trip.
    fn learn(&mut self, tasks: usize, elapsed: Duration) {
        if self.shape.batch != BatchSize::Auto || tasks == 0 {
            return;
        }
        let sample = elapsed.as_secs_f64() / tasks as f64;
        let per_task = self.per_task.map_or(sample, |avg| 0.7 * avg + 0.3 * sample);
        self.per_task = Some(per_task);
        self.batch = batch_of(BATCH_TARGET, per_task).min(self.batch.saturating_mul(4).max(2));
    }

    fn deliver<R>(
        &mut self,
        index: usize,
        result: Result<R, TaskError>,
        sink: &mut impl FnMut(usize, Result<R, TaskError>) -> ControlFlow<()>,
    ) {
        match &result {
            Ok(_) => self.summary.succeeded += 1,
            Err(_) => self.summary.failed += 1,
        }
        // After `Break`, results of batches still in flight are counted, not handed over: the
        // sink's first `Break` is its last call.
        if !self.summary.stopped && sink(index, result).is_break() {
            self.summary.stopped = true;
        }
    }
}

/// How many tasks of `per_task` seconds fill `time` (at least one, at most [`MAX_BATCH`]).
pub(super) fn batch_of(time: Duration, per_task: f64) -> usize {
    ((time.as_secs_f64() / per_task.max(1e-9)) as usize).clamp(1, MAX_BATCH)
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

#[cfg(test)]
mod tests {
    use super::*;
    use ensemble_runtime::ExitInfo;
    use std::os::unix::process::ExitStatusExt;

    const MS: Duration = Duration::from_millis(1);

    fn shape(workers: usize, batch: BatchSize) -> Shape {
        Shape { workers, in_flight: 2, batch, retries: 2 }
    }

    fn killed() -> CallError {
        let status = std::process::ExitStatus::from_raw(9); // the wait status of SIGKILL
        CallError::Exited(ExitInfo { pid: 7, status, stderr_tail: String::new() })
    }

    /// The answer a worker that squares every task gives.
    fn squares(tasks: &[Out<u64>]) -> Result<Vec<Result<u64, Failure>>, CallError> {
        Ok(tasks.iter().map(|t| Ok(t.task * t.task)).collect())
    }

    fn indices(tasks: &[Out<u64>]) -> Vec<usize> {
        tasks.iter().map(|t| t.index).collect()
    }

    #[test]
    fn each_worker_gets_at_most_in_flight_batches_of_a_run() {
        let mut schedule = Schedule::new(shape(2, BatchSize::Fixed(3)), 0..100u64, None);
        let sent: Vec<_> = std::iter::from_fn(|| schedule.next(|_| 0)).collect();
        let workers: Vec<usize> = sent.iter().map(|(w, _)| *w).collect();
        assert_eq!(workers.len(), 4, "2 workers x 2 in flight");
        assert_eq!(workers.iter().filter(|w| **w == 0).count(), 2);
        assert_eq!(indices(&sent[0].1), [0, 1, 2]);
        assert_eq!(indices(&sent[3].1), [9, 10, 11]);
    }

    #[test]
    fn the_worker_least_loaded_by_all_runs_goes_first() {
        let mut schedule = Schedule::new(shape(3, BatchSize::Fixed(1)), 0..10u64, None);
        let busy_elsewhere = [5, 0, 2];
        let (worker, _) = schedule.next(|w| busy_elsewhere[w]).unwrap();
        assert_eq!(worker, 1);
    }

    #[test]
    fn automatic_batches_grow_from_one_as_the_run_learns() {
        let mut schedule = Schedule::new(shape(1, BatchSize::Auto), 0..100_000u64, None);
        let mut sizes = Vec::new();
        let mut sink = |_, _| ControlFlow::Continue(());
        for _ in 0..6 {
            let (worker, tasks) = schedule.next(|_| 0).unwrap();
            sizes.push(tasks.len());
            let answer = squares(&tasks);
            // 10 us per task.
            let elapsed = Duration::from_micros(10 * tasks.len() as u64);
            schedule.settle(worker, tasks, answer, elapsed, false, &mut sink);
        }
        assert_eq!(sizes[0], 1, "nothing learned yet");
        assert!(
            sizes.windows(2).all(|w| w[1] <= w[0].saturating_mul(4).max(2)),
            "at most x4 a step: {sizes:?}"
        );
        assert_eq!(*sizes.last().unwrap(), 800, "8 ms at 10 us a task: {sizes:?}");
    }

    #[test]
    fn the_tail_shrinks_for_balance_but_not_below_the_floor() {
        // Learned: 10 us a task, so the target is 800 tasks and the floor 200.
        let mut schedule = Schedule::new(shape(2, BatchSize::Auto), 0..10_000u64, Some(10e-6));
        let mut sizes = Vec::new();
        let mut sink = |_, _| ControlFlow::Continue(());
        while let Some((worker, tasks)) = schedule.next(|_| 0) {
            sizes.push(tasks.len());
            let answer = squares(&tasks);
            schedule.settle(
                worker,
                tasks,
                answer,
                Duration::from_micros(10 * sizes[sizes.len() - 1] as u64),
                false,
                &mut sink,
            );
        }
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        assert_eq!(sizes[0], 800, "the learned target");
        assert!(
            sizes.iter().rev().skip(1).all(|s| *s >= 200),
            "no batch but the last below the floor: {sizes:?}"
        );
        assert!(sizes.len() < 30, "{} batches", sizes.len());
        assert!(sizes.windows(2).rev().take(5).all(|w| w[1] <= w[0]), "the tail shrinks: {sizes:?}");
    }

    #[test]
    fn results_reach_the_sink_with_their_input_index() {
        let mut schedule = Schedule::new(shape(2, BatchSize::Fixed(4)), 0..10u64, None);
        let mut seen = Vec::new();
        let mut sink = |index, result: Result<u64, TaskError>| {
            seen.push((index, result.unwrap()));
            ControlFlow::Continue(())
        };
        while let Some((worker, tasks)) = schedule.next(|_| 0) {
            let answer = squares(&tasks);
            schedule.settle(worker, tasks, answer, MS, false, &mut sink);
        }
        seen.sort();
        assert_eq!(seen, (0..10).map(|i| (i, (i * i) as u64)).collect::<Vec<_>>());
        assert_eq!(schedule.summary(), Summary { succeeded: 10, failed: 0, stopped: false });
    }

    #[test]
    fn the_sinks_first_break_is_its_last_call() {
        let mut schedule = Schedule::new(shape(1, BatchSize::Fixed(5)), 0..20u64, None);
        let (worker, tasks) = schedule.next(|_| 0).unwrap();
        let mut calls = Vec::new();
        let mut sink = |index, _: Result<u64, TaskError>| {
            calls.push(index);
            if index == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        // Tasks 1 and 3 fail; the sink breaks at the first failure it sees.
        let answer = Ok(tasks
            .iter()
            .map(|t| if t.index % 2 == 1 { Err(Failure::Error { message: "no".into() }) } else { Ok(t.task) })
            .collect());
        schedule.settle(worker, tasks, answer, MS, false, &mut sink);
        assert_eq!(calls, [0, 1], "nothing after the Break");
        assert_eq!(schedule.summary(), Summary { succeeded: 3, failed: 2, stopped: true });
        assert!(schedule.next(|_| 0).is_none(), "a stopped run sends nothing more");
    }

    #[test]
    fn a_task_that_kills_its_worker_is_retried_alone_then_fails() {
        let mut schedule = Schedule::new(shape(1, BatchSize::Fixed(3)), 0..3u64, None);
        let mut failures = Vec::new();
        let mut sink = |index, result: Result<u64, TaskError>| {
            if let Err(error) = result {
                failures.push((index, error));
            }
            ControlFlow::Continue(())
        };
        let (worker, tasks) = schedule.next(|_| 0).unwrap();
        schedule.settle(worker, tasks, Err(killed()), MS, true, &mut sink);
        // The three go again one by one; task 1 kills its worker every time.
        let mut attempts_of_1 = 1;
        while let Some((worker, tasks)) = schedule.next(|_| 0) {
            assert_eq!(tasks.len(), 1, "retries go alone");
            if tasks[0].index == 1 {
                attempts_of_1 += 1;
                schedule.settle(worker, tasks, Err(killed()), MS, true, &mut sink);
            } else {
                let answer = squares(&tasks);
                schedule.settle(worker, tasks, answer, MS, false, &mut sink);
            }
        }
        assert_eq!(attempts_of_1, 3, "sent once and retried twice");
        assert!(
            matches!(failures.as_slice(), [(1, TaskError::WorkerDied { index: 1, attempts: 3, .. })]),
            "{failures:?}"
        );
        assert_eq!(schedule.summary(), Summary { succeeded: 2, failed: 1, stopped: false });
    }

    #[test]
    fn a_bystander_of_a_crash_is_sent_again_without_using_its_retries() {
        let mut schedule =
            Schedule::new(Shape { retries: 0, ..shape(1, BatchSize::Fixed(2)) }, 0..2u64, None);
        let mut ok = Vec::new();
        let mut sink = |index, result: Result<u64, TaskError>| {
            ok.push((index, result.is_ok()));
            ControlFlow::Continue(())
        };
        let (worker, tasks) = schedule.next(|_| 0).unwrap();
        // The batch was queued behind another that killed the worker: not its fault.
        schedule.settle(worker, tasks, Err(killed()), MS, false, &mut sink);
        while let Some((worker, tasks)) = schedule.next(|_| 0) {
            let answer = squares(&tasks);
            schedule.settle(worker, tasks, answer, MS, false, &mut sink);
        }
        assert_eq!(ok, [(0, true), (1, true)], "no retries allowed, yet both ran");
    }

    #[test]
    fn other_call_errors_fail_every_task_of_the_batch() {
        let mut schedule = Schedule::new(shape(1, BatchSize::Fixed(2)), 0..2u64, None);
        let mut errors = Vec::new();
        let mut sink = |index, result: Result<u64, TaskError>| {
            errors.push((index, result.unwrap_err().index()));
            ControlFlow::Continue(())
        };
        let (worker, tasks) = schedule.next(|_| 0).unwrap();
        schedule.settle(worker, tasks, Err(CallError::Timeout(MS)), MS, false, &mut sink);
        assert_eq!(errors, [(0, 0), (1, 1)]);
    }
}
