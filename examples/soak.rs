//! A fault-injection soak: calls, segment hand-overs, farm maps and rings, all at once, while a
//! chaos task SIGKILLs random workers at random points and, now and then, a whole program tree.
//!
//! What runs, concurrently and in a random mix chosen by a seeded PRNG:
//! - **calls** to three workers under a `one_for_one` supervisor (`Restart::Permanent`, called
//!   through `Supervised` handles; the second worker, and the farm's, talk through a fast
//!   lane). Each call carries an operation id and a value; the worker
//!   appends `(id, value)` to a journal file of its slot (one `write`, which SIGKILL cannot cut
//!   in two) before it replies with a function of both. After the run the journals are read:
//!   an `Ok` whose record is missing or wrong, or whose reply is wrong, is *lost*; an id
//!   recorded twice is *duplicated*.
//! - **segment hand-overs**: a `SharedSliceMut<u64>` filled here, sent to a supervised worker
//!   that transforms every element and hands it back; every element is checked.
//! - **farm maps** (`map_all` and `for_each`) over tasks with known results on a farm of two
//!   workers; a task lost with a killed worker must be retried or reported as `WorkerDied`,
//!   never wrong, never twice, never missing.
//! - **rings**: a `Producer` end is sent to a supervised worker that streams numbered,
//!   checksummed frames; this process consumes and checks order and integrity. A killed
//!   producer must end the stream with `RingError::PeerGone`, never a hang.
//! - **trees**: a child process that starts a supervisor and a farm of its own (four
//!   grandchildren) and reports their pids, then is SIGKILLed: none of its descendants may
//!   survive it (ensemble sets `PR_SET_PDEATHSIG`).
//!
//! Every call has a deadline; a call that returns later than its deadline plus 1 s is *late*.
//! The chaos task kills through `Remote::kill` or, half of the time, by pid (a pidfd opened and
//! checked to be a child of this process before the signal). Farm workers are killed at most
//! 12 times a minute: a farm's supervisor gives up after 10 restarts per worker within 60 s.
//!
//! At the end everything is shut down and the program prints operations attempted, results
//! acknowledged, lost (must be 0), duplicated (0), calls failed cleanly because their worker
//! was killed (by kind), late (0), unexpected errors (0), ensemble processes left (0: this
//! process's descendants and every pid learned during the run), descriptors leaked (0:
//! `/proc/self/fd` before the first worker's start, after a warm-up spawn, against the end) and
//! new files in `/dev/shm` (0). It exits with an error if any must-be-zero figure is not zero.
//!
//! Run: `cargo run --release --example soak -- [--seed N] [--minutes N]` (default: seed
//! 20261201, one minute); `-- --quick` is what CI runs: 60 s of soaking, in a debug build too.

use ensemble::farm::{BatchSize, TaskError};
use ensemble::prelude::*;
use ensemble::ring::{self, Producer, RingError, WhenFull};
use ensemble::supervisor::{Intensity, SupervisorHandle};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The workers

/// The supervised workers, the farm's workers, and the grandchildren of a tree.
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Apply, Transform, Produce, Pid), batches(Crunch))]
struct Worker {
    /// Where `Apply` records its effects; shared by every incarnation of one slot.
    journal: Option<PathBuf>,
}

/// Records `(op, value)` in the journal after `delay_us`, waits `after_us` (a window for a kill
/// between the effect and the reply), then replies `effect(op, value)`.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Apply {
    op: u64,
    value: u64,
    delay_us: u64,
    after_us: u64,
}

/// Transforms every element of `data` with `transform(op, i, x)` and hands the array back.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "SharedSliceMut<u64>")]
struct Transform {
    op: u64,
    data: SharedSliceMut<u64>,
}

/// Streams `frames` frames of `len` bytes into the ring, pausing now and then, closes it, and
/// replies with the number committed.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Produce {
    producer: Producer,
    op: u64,
    frames: u64,
    len: usize,
    pause_us: u64,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Pid;

/// A farm task: `crunch(n)` after `sleep_us`.
#[derive(Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Crunch {
    n: u64,
    sleep_us: u64,
}

fn effect(op: u64, value: u64) -> u64 {
    mix(op ^ value.rotate_left(17))
}

fn transform(op: u64, i: usize, x: u64) -> u64 {
    x.wrapping_mul(3) ^ op.wrapping_add(i as u64)
}

fn fill(op: u64, i: usize) -> u64 {
    mix(op.wrapping_mul(0x1_0000_0001).wrapping_add(i as u64))
}

fn crunch(n: u64) -> u64 {
    mix(n).wrapping_add(n)
}

impl ProcessHandler<Apply> for Worker {
    fn handle(
        &mut self,
        Apply { op, value, delay_us, after_us }: Apply,
        _: &mut ProcessContext<Self>,
    ) -> u64 {
        std::thread::sleep(Duration::from_micros(delay_us));
        if let Some(journal) = &self.journal {
            let mut record = [0u8; 16];
            record[..8].copy_from_slice(&op.to_le_bytes());
            record[8..].copy_from_slice(&value.to_le_bytes());
            let mut file =
                std::fs::OpenOptions::new().append(true).create(true).open(journal).expect("journal");
            file.write_all(&record).expect("one write to the journal");
        }
        std::thread::sleep(Duration::from_micros(after_us));
        effect(op, value)
    }
}

impl ProcessHandler<Transform> for Worker {
    fn handle(
        &mut self,
        Transform { op, mut data }: Transform,
        _: &mut ProcessContext<Self>,
    ) -> SharedSliceMut<u64> {
        for (i, x) in data.iter_mut().enumerate() {
            *x = transform(op, i, *x);
        }
        data
    }
}

fn frame_checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

impl ProcessHandler<Produce> for Worker {
    fn handle(
        &mut self,
        Produce { mut producer, op, frames, len, pause_us }: Produce,
        _: &mut ProcessContext<Self>,
    ) -> u64 {
        for n in 0..frames {
            let mut slot = producer.claim().expect("the consumer is there");
            slot[..8].copy_from_slice(&n.to_le_bytes());
            slot[8..16].copy_from_slice(&op.to_le_bytes());
            for (i, b) in slot[16..len - 8].iter_mut().enumerate() {
                *b = (op.wrapping_add(n).wrapping_mul(131) as usize).wrapping_add(i) as u8;
            }
            let sum = frame_checksum(&slot[..len - 8]);
            slot[len - 8..len].copy_from_slice(&sum.to_le_bytes());
            slot.commit(len).expect("a frame fits");
            if n % 16 == 15 {
                std::thread::sleep(Duration::from_micros(pause_us));
            }
        }
        drop(producer); // closed: the consumer sees `Closed` after the last frame
        frames
    }
}

impl ProcessHandler<Pid> for Worker {
    fn handle(&mut self, _: Pid, ctx: &mut ProcessContext<Self>) -> u32 {
        ctx.pid()
    }
}

impl ProcessHandler<Crunch> for Worker {
    fn handle(&mut self, Crunch { n, sleep_us }: Crunch, _: &mut ProcessContext<Self>) -> u64 {
        std::thread::sleep(Duration::from_micros(sleep_us));
        crunch(n)
    }
}

/// The root of a program tree: starts a supervisor and a farm of its own and keeps them.
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(async Grow, async Churn))]
struct TreeRoot {
    #[serde(skip)]
    supervisor: Option<SupervisorHandle>,
    #[serde(skip)]
    farm: Option<Farm<Worker>>,
}

/// Starts two supervised workers and a farm of two; replies with the four pids.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "Vec<u32>")]
struct Grow;

/// Maps slow tasks on the tree's farm (to be killed in the middle of it).
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Churn;

impl AsyncProcessHandler<Grow> for TreeRoot {
    async fn handle(&mut self, _: Grow, _: &mut ProcessContext<Self>) -> Vec<u32> {
        let mut supervisor = Supervisor::new(SupervisorConfig::default());
        let workers = [
            supervisor.add(ChildSpec::new("tree-w0", || Worker { journal: None })),
            supervisor.add(ChildSpec::new("tree-w1", || Worker { journal: None })),
        ];
        self.supervisor = Some(supervisor.start().await.expect("the tree's supervisor"));
        let config =
            FarmConfig { workers: 2, progress: false, name: "tree-farm".into(), ..FarmConfig::default() };
        let farm = Farm::start(config, |_| Worker { journal: None }).await.expect("the tree's farm");
        let mut pids = Vec::new();
        for worker in workers.iter().chain(farm.workers()) {
            pids.push(worker.up().await.expect("up").pid());
        }
        self.farm = Some(farm);
        pids
    }
}

impl AsyncProcessHandler<Churn> for TreeRoot {
    async fn handle(&mut self, _: Churn, _: &mut ProcessContext<Self>) -> u64 {
        let farm = self.farm.as_ref().expect("grown");
        let results = farm.map_all((0..1000).map(|n| Crunch { n, sleep_us: 2_000 })).await;
        results.into_iter().filter(Result::is_ok).count() as u64
    }
}

// ---------------------------------------------------------------------------------------------
// The PRNG: splitmix64, seeded per task so that each task's choices repeat with the seed.

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping

#[derive(Default)]
struct Stats {
    attempted: BTreeMap<&'static str, u64>,
    acknowledged: BTreeMap<&'static str, u64>,
    /// Failed cleanly because a worker was killed (or its deadline passed), by kind.
    failed_clean: BTreeMap<String, u64>,
    lost: u64,
    duplicated: u64,
    late: u64,
    unexpected: u64,
    kills: BTreeMap<&'static str, u64>,
    trees: u64,
    /// Tasks of the farm maps, and those with their result.
    farm_tasks: u64,
    farm_tasks_ok: u64,
    tree_processes_left: u64,
    /// Ops whose call failed but whose effect was recorded (killed between effect and reply).
    effect_without_ack: u64,
    /// Apply calls: op -> value, acknowledged or not.
    applied_ok: HashMap<u64, u64>,
    applied_failed: HashSet<u64>,
    /// Every pid learned during the run.
    pids: HashSet<u32>,
    problems: Vec<String>,
    worst_overrun: Duration,
}

type Shared = Rc<RefCell<Stats>>;

impl Stats {
    fn attempt(&mut self, kind: &'static str) {
        *self.attempted.entry(kind).or_default() += 1;
    }

    fn ack(&mut self, kind: &'static str) {
        *self.acknowledged.entry(kind).or_default() += 1;
    }

    fn clean(&mut self, kind: &str, error: &str) {
        *self.failed_clean.entry(format!("{kind}: {error}")).or_default() += 1;
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < 40 {
            eprintln!("PROBLEM: {what}");
            self.problems.push(what);
        }
    }

    fn lost(&mut self, what: String) {
        self.lost += 1;
        self.problem(format!("lost: {what}"));
    }

    fn unexpected(&mut self, what: String) {
        self.unexpected += 1;
        self.problem(format!("unexpected: {what}"));
    }

    /// Counts a late return and remembers the worst overrun of any deadline.
    fn timed(&mut self, what: &str, took: Duration, deadline: Duration) {
        if took > deadline {
            self.worst_overrun = self.worst_overrun.max(took - deadline);
        }
        if took > deadline + Duration::from_secs(1) {
            self.late += 1;
            self.problem(format!("late: {what} took {took:?}, deadline {deadline:?}"));
        }
    }
}

/// How a call failed, as a short name; `None` for errors a kill cannot explain.
fn clean_kind(error: &CallError) -> Option<&'static str> {
    match error {
        CallError::Exited(exit) if exit.signal() == Some(libc::SIGKILL) => Some("worker killed"),
        CallError::Timeout(_) => Some("deadline"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The drivers

const CALL_DEADLINE: Duration = Duration::from_secs(10);
const RING_DEADLINE: Duration = Duration::from_secs(20);
const FARM_DEADLINE: Duration = Duration::from_secs(30);
const FRAME_WAIT: Duration = Duration::from_secs(5);
const TREE_DEADLINE: Duration = Duration::from_secs(30);

struct World {
    workers: Vec<Supervised<Worker>>,
    /// Operations in flight per supervised worker: the chaos task aims at busy ones.
    in_flight: RefCell<Vec<u32>>,
    farm: Farm<Worker>,
    stats: Shared,
    next_op: Cell<u64>,
    stop_at: Instant,
}

impl World {
    fn op(&self) -> u64 {
        let op = self.next_op.get();
        self.next_op.set(op + 1);
        op
    }

    fn running(&self) -> bool {
        Instant::now() < self.stop_at
    }

    /// Marks supervised worker `w` busy until the guard is dropped.
    fn busy(&self, w: usize) -> Busy<'_> {
        self.in_flight.borrow_mut()[w] += 1;
        Busy(self, w)
    }

    /// A supervised worker with an operation in flight, if any.
    fn a_busy_worker(&self, rng: &mut Rng) -> Option<usize> {
        let busy: Vec<usize> = (0..self.workers.len()).filter(|&w| self.in_flight.borrow()[w] > 0).collect();
        (!busy.is_empty()).then(|| busy[rng.below(busy.len() as u64) as usize])
    }

    /// Sleeps `d`, or until the soak ends if that is sooner.
    async fn nap(&self, d: Duration) {
        let left = self.stop_at.saturating_duration_since(Instant::now());
        ensemble::time::sleep(d.min(left)).await;
    }
}

struct Busy<'a>(&'a World, usize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.in_flight.borrow_mut()[self.1] -= 1;
    }
}

async fn call(world: &World, rng: &mut Rng) {
    let op = world.op();
    let value = rng.next();
    let w = rng.below(world.workers.len() as u64) as usize;
    let worker = &world.workers[w];
    let delay_us = if rng.chance(30) { rng.range(1_000, 20_000) } else { rng.below(500) };
    let after_us = if rng.chance(30) { rng.range(1_000, 20_000) } else { 0 };
    world.stats.borrow_mut().attempt("call");
    let started = Instant::now();
    let _busy = world.busy(w);
    let result = worker.send(Apply { op, value, delay_us, after_us }).timeout(CALL_DEADLINE).await;
    let mut stats = world.stats.borrow_mut();
    stats.timed(&format!("call {op}"), started.elapsed(), CALL_DEADLINE);
    match result {
        Ok(reply) if reply == effect(op, value) => {
            stats.ack("call");
            stats.applied_ok.insert(op, value);
        }
        Ok(reply) => {
            stats.lost(format!("call {op}: reply {reply:#x}, expected {:#x}", effect(op, value)));
            stats.applied_ok.insert(op, value);
        }
        Err(error) => {
            stats.applied_failed.insert(op);
            match clean_kind(&error) {
                Some(kind) => stats.clean("call", kind),
                None => stats.unexpected(format!("call {op}: {error}")),
            }
        }
    }
}

async fn handover(world: &World, rng: &mut Rng) {
    let op = world.op();
    let len = if rng.chance(10) { rng.range(100_000, 1 << 20) } else { rng.range(1, 20_000) } as usize;
    let w = rng.below(world.workers.len() as u64) as usize;
    let worker = &world.workers[w];
    world.stats.borrow_mut().attempt("hand-over");
    let mut data = match SharedSliceMut::<u64>::new(len) {
        Ok(data) => data,
        Err(error) => return world.stats.borrow_mut().unexpected(format!("hand-over {op}: {error}")),
    };
    for (i, x) in data.iter_mut().enumerate() {
        *x = fill(op, i);
    }
    let started = Instant::now();
    let _busy = world.busy(w);
    let result = worker.send(Transform { op, data }).timeout(CALL_DEADLINE).await;
    let took = started.elapsed();
    let mut stats = world.stats.borrow_mut();
    stats.timed(&format!("hand-over {op}"), took, CALL_DEADLINE);
    match result {
        Ok(back) => {
            let wrong = back.iter().enumerate().filter(|&(i, &x)| x != transform(op, i, fill(op, i))).count();
            if back.len() != len || wrong > 0 {
                stats.lost(format!("hand-over {op}: {} elements back of {len}, {wrong} wrong", back.len()));
            } else {
                stats.ack("hand-over");
            }
        }
        Err(error) => match clean_kind(&error) {
            Some(kind) => stats.clean("hand-over", kind),
            None => stats.unexpected(format!("hand-over {op}: {error}")),
        },
    }
}

async fn farm_map(world: &World, rng: &mut Rng) {
    let tasks = rng.range(20, 300);
    let base = world.op() << 20;
    let sleep_us = rng.range(0, 3_000);
    let inputs = (0..tasks).map(|i| Crunch { n: base + i, sleep_us });
    let as_stream = rng.chance(50);
    world.stats.borrow_mut().attempt("farm map");
    world.stats.borrow_mut().farm_tasks += tasks;
    let started = Instant::now();
    // (index, result) in the order reported; map_all's are in input order.
    let reported: Option<Vec<(usize, Result<u64, TaskError>)>> = if as_stream {
        let mut seen = Vec::new();
        let run = world.farm.for_each(inputs, |index, result| {
            seen.push((index, result));
            ControlFlow::Continue(())
        });
        ensemble::time::timeout(FARM_DEADLINE, run).await.ok().map(|_| seen)
    } else {
        ensemble::time::timeout(FARM_DEADLINE, world.farm.map_all(inputs))
            .await
            .ok()
            .map(|results| results.into_iter().enumerate().collect())
    };
    let mut stats = world.stats.borrow_mut();
    stats.timed(&format!("farm map {base:#x}"), started.elapsed(), FARM_DEADLINE);
    let Some(reported) = reported else {
        stats.clean("farm map", "deadline");
        return;
    };
    let mut seen = vec![0u32; tasks as usize];
    let mut all_ok = true;
    for (index, result) in reported {
        let Some(count) = seen.get_mut(index) else {
            stats.unexpected(format!("farm map {base:#x}: index {index} of {tasks}"));
            continue;
        };
        *count += 1;
        if *count == 2 {
            stats.duplicated += 1;
            stats.problem(format!("duplicated: farm task {index} of map {base:#x} reported twice"));
        }
        let n = base + index as u64;
        match result {
            Ok(value) if value == crunch(n) => stats.farm_tasks_ok += 1,
            Ok(value) => {
                all_ok = false;
                stats.lost(format!(
                    "farm task {index} of map {base:#x}: {value:#x}, expected {:#x}",
                    crunch(n)
                ));
            }
            Err(TaskError::WorkerDied { exit, .. }) if exit.signal() == Some(libc::SIGKILL) => {
                all_ok = false;
                stats.clean("farm task", "lost with its worker every try");
            }
            Err(error) => {
                all_ok = false;
                stats.unexpected(format!("farm task {index} of map {base:#x}: {error}"));
            }
        }
    }
    let missing = seen.iter().filter(|&&c| c == 0).count();
    if missing > 0 {
        all_ok = false;
        stats.lost(format!("farm map {base:#x}: {missing} of {tasks} tasks never reported"));
    }
    if all_ok {
        stats.ack("farm map");
    } else {
        stats.clean("farm map", "some tasks failed");
    }
}

fn ring_frame_ok(frame: &[u8], op: u64, n: u64) -> bool {
    let len = frame.len();
    len >= 24
        && frame[..8] == n.to_le_bytes()
        && frame[8..16] == op.to_le_bytes()
        && frame[len - 8..] == frame_checksum(&frame[..len - 8]).to_le_bytes()
}

async fn ring_stream(world: &World, rng: &mut Rng) {
    let op = world.op();
    let frames = rng.range(20, 400);
    let len = rng.range(24, 8192) as usize;
    let pause_us = rng.range(0, 2_000);
    let w = rng.below(world.workers.len() as u64) as usize;
    let worker = &world.workers[w];
    world.stats.borrow_mut().attempt("ring stream");
    let (producer, mut consumer) = match ring::channel(4, 8192, WhenFull::Block) {
        Ok(ends) => ends,
        Err(error) => return world.stats.borrow_mut().unexpected(format!("ring {op}: {error}")),
    };
    let started = Instant::now();
    let _busy = world.busy(w);
    let produced = worker.send(Produce { producer, op, frames, len, pause_us }).timeout(RING_DEADLINE);
    let consume = async {
        let (mut n, mut bad) = (0u64, 0u64);
        let end = loop {
            match ensemble::time::timeout(FRAME_WAIT, consumer.recv_async()).await {
                Err(_) => break Err("no frame and no end within 5 s (a hang)".to_string()),
                Ok(Ok(frame)) => {
                    bad += u64::from(!ring_frame_ok(&frame, op, n) || frame.sequence() != n);
                    n += 1;
                }
                Ok(Err(error)) => break Ok(error),
            }
        };
        (n, bad, end)
    };
    let (produced, (received, bad, end)) = futures::future::join(produced, consume).await;
    let mut stats = world.stats.borrow_mut();
    stats.timed(&format!("ring {op}"), started.elapsed(), RING_DEADLINE);
    if bad > 0 {
        stats.lost(format!("ring {op}: {bad} of {received} frames torn or out of order"));
        return;
    }
    match (produced, end) {
        (_, Err(hang)) => {
            stats.late += 1;
            stats.problem(format!("late: ring {op}: {hang}"));
        }
        (Ok(count), Ok(RingError::Closed { .. })) if count == frames && received == frames => {
            stats.ack("ring stream")
        }
        (Ok(count), end) => stats.lost(format!(
            "ring {op}: producer says {count} of {frames}, consumer got {received}, then {end:?}"
        )),
        (Err(error), Ok(RingError::PeerGone { .. } | RingError::Closed { .. })) => match clean_kind(&error) {
            Some(kind) => stats.clean("ring stream", kind),
            None => stats.unexpected(format!("ring {op}: {error}")),
        },
        (Err(error), Ok(end)) => stats.unexpected(format!("ring {op}: {error}; the consumer: {end}")),
    }
}

/// One driver: a random mix of the four kinds of operation until the soak ends.
async fn drive(world: Rc<World>, mut rng: Rng) {
    while world.running() {
        match rng.below(100) {
            0..=44 => call(&world, &mut rng).await,
            45..=69 => handover(&world, &mut rng).await,
            70..=84 => ring_stream(&world, &mut rng).await,
            _ => farm_map(&world, &mut rng).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chaos

/// SIGKILLs `pid` if it is still a child of this process named `ensemble: ...`: a pidfd is
/// opened first, so that a pid reused after a reap is never signalled.
fn kill_child_by_pid(pid: u32) -> bool {
    let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else { return false };
    let Ok(pidfd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) else {
        return false;
    };
    // The pidfd's process is `pid` as long as it has not been reaped; if it was and the pid
    // was reused, the signal below fails with ESRCH whatever /proc says now.
    let ours = stat(pid).is_some_and(|s| s.ppid == std::process::id() && s.state != 'Z')
        && cmdline(pid).starts_with("ensemble: ");
    ours && rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL).is_ok()
}

/// Kills random workers at random points until the soak ends. Farm workers at most 12 times a
/// minute (their supervisor allows 20 restarts per minute for two workers).
async fn chaos(world: Rc<World>, mut rng: Rng, pace: (u64, u64)) {
    let mut farm_kills: Vec<Instant> = Vec::new();
    while world.running() {
        world.nap(Duration::from_millis(rng.range(pace.0, pace.1))).await;
        if !world.running() {
            break;
        }
        farm_kills.retain(|at| at.elapsed() < Duration::from_secs(62));
        let by_pid = rng.chance(50);
        let (target, remote) = if rng.chance(25) && farm_kills.len() < 12 {
            let w = &world.farm.workers()[rng.below(world.farm.workers().len() as u64) as usize];
            ("farm worker", w.remote())
        } else {
            // Half of the time a worker in the middle of an operation, a few ms into it.
            let w = match world.a_busy_worker(&mut rng).filter(|_| rng.chance(50)) {
                Some(w) => {
                    ensemble::time::sleep(Duration::from_micros(rng.below(5_000))).await;
                    w
                }
                None => rng.below(world.workers.len() as u64) as usize,
            };
            ("supervised worker", world.workers[w].remote())
        };
        let Some(remote) = remote else { continue };
        world.stats.borrow_mut().pids.insert(remote.pid());
        let killed = if by_pid { kill_child_by_pid(remote.pid()) } else { remote.kill() };
        if killed {
            if target == "farm worker" {
                farm_kills.push(Instant::now());
            }
            *world.stats.borrow_mut().kills.entry(target).or_default() += 1;
        }
    }
}

/// Now and then, a program tree: started, checked, SIGKILLed at its root (sometimes while its
/// farm is busy), and then none of its processes may remain.
async fn trees(world: Rc<World>, mut rng: Rng, every: (u64, u64)) {
    loop {
        world.nap(Duration::from_millis(rng.range(every.0, every.1))).await;
        // A tree takes a few seconds (eight spawns in a debug build); none starts near the end.
        if world.stop_at.saturating_duration_since(Instant::now()) < Duration::from_secs(5) {
            break;
        }
        world.stats.borrow_mut().attempt("tree");
        let options = SpawnOptions::new().name("tree");
        let root = match ensemble::time::timeout(
            CALL_DEADLINE,
            ensemble::spawn_with(TreeRoot { supervisor: None, farm: None }, options),
        )
        .await
        {
            Ok(Ok(root)) => root,
            Ok(Err(error)) => {
                world.stats.borrow_mut().unexpected(format!("tree: spawn: {error}"));
                continue;
            }
            Err(_) => {
                world.stats.borrow_mut().unexpected("tree: spawn took over 10 s".into());
                continue;
            }
        };
        let growing = Instant::now();
        let grown = root.send(Grow).timeout(TREE_DEADLINE).await;
        world.stats.borrow_mut().timed("tree grow", growing.elapsed(), TREE_DEADLINE);
        let mut pids = match grown {
            Ok(pids) => pids,
            Err(error) => {
                world.stats.borrow_mut().unexpected(format!("tree: grow: {error}"));
                root.kill();
                continue;
            }
        };
        pids.push(root.pid());
        world.stats.borrow_mut().pids.extend(&pids);
        let alive_before = pids.iter().filter(|&&p| alive(p)).count();
        if alive_before != pids.len() {
            world
                .stats
                .borrow_mut()
                .unexpected(format!("tree: {alive_before} of {} processes up", pids.len()));
        }
        let churn = rng.chance(60).then(|| root.send(Churn).timeout(TREE_DEADLINE));
        ensemble::time::sleep(Duration::from_millis(rng.range(0, 300))).await;
        let killed = if rng.chance(50) { kill_child_by_pid(root.pid()) } else { root.kill() };
        if !killed {
            world.stats.borrow_mut().unexpected("tree: its root could not be killed".into());
        }
        *world.stats.borrow_mut().kills.entry("tree root").or_default() += 1;
        if let Some(churn) = churn {
            let started = Instant::now();
            let result = churn.await;
            world.stats.borrow_mut().timed("tree churn", started.elapsed(), Duration::from_secs(1));
            if !matches!(&result, Err(CallError::Exited(e)) if e.signal() == Some(libc::SIGKILL)) {
                world.stats.borrow_mut().unexpected(format!("tree: churn ended {result:?}"));
            }
        }
        let exit = ensemble::time::timeout(Duration::from_secs(5), root.exited()).await;
        if !matches!(&exit, Ok(e) if e.signal() == Some(libc::SIGKILL)) {
            world.stats.borrow_mut().unexpected(format!("tree: its root ended {exit:?}"));
        }
        let gone_by = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&p| alive(p)) && Instant::now() < gone_by {
            ensemble::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        let mut stats = world.stats.borrow_mut();
        stats.trees += 1;
        if left.is_empty() {
            stats.ack("tree");
        } else {
            stats.tree_processes_left += left.len() as u64;
            stats.problem(format!("tree: processes {left:?} outlived their root by 5 s"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the kernel shows

struct Stat {
    state: char,
    ppid: u32,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid })
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Whether `pid` is a running (not zombie) process of ensemble.
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X') && cmdline(pid).starts_with("ensemble: ")
}

/// Live `ensemble:` processes that descend from this one.
fn descendants() -> Vec<u32> {
    let me = std::process::id();
    let parents: HashMap<u32, u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?.ppid)))
        .collect();
    parents
        .keys()
        .copied()
        .filter(|&pid| {
            let mut at = pid;
            for _ in 0..64 {
                match parents.get(&at) {
                    Some(&parent) if parent == me => return alive(pid),
                    Some(&parent) if parent > 1 => at = parent,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(usize::MAX, |d| d.count())
}

fn shm_files() -> HashSet<String> {
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every record of the journals: op -> values recorded.
fn read_journals(dir: &Path) -> HashMap<u64, Vec<u64>> {
    let mut records: HashMap<u64, Vec<u64>> = HashMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        for record in bytes.chunks_exact(16) {
            let op = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
            let value = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
            records.entry(op).or_default().push(value);
        }
    }
    records
}

fn argument(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------

#[ensemble::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let seed = argument("--seed").unwrap_or(20_261_201);
    let soak = if quick {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(60 * argument("--minutes").unwrap_or(1))
    };
    let drivers = 4;
    println!(
        "soak: seed {seed}, {} s, {drivers} drivers, chaos on (rerun with --seed {seed})",
        soak.as_secs()
    );

    let journal_dir = std::env::temp_dir().join(format!("ensemble-soak-{}", std::process::id()));
    std::fs::create_dir_all(&journal_dir)?;
    let shm_before = shm_files();

    // Warm-up: the process-wide threads and descriptors ensemble opens once (I/O thread,
    // launcher) exist before the descriptors are counted.
    let warm = ensemble::spawn(Worker { journal: None }).await?;
    warm.send(Pid).timeout(CALL_DEADLINE).await?;
    warm.stop().await?;
    let fds_before = open_descriptors();

    let mut master = Rng(seed);
    let config = SupervisorConfig {
        strategy: Strategy::OneForOne,
        intensity: Intensity { max_restarts: 10_000, within: Duration::from_secs(10) },
        ..SupervisorConfig::default()
    };
    let mut supervisor = Supervisor::new(config);
    let workers: Vec<Supervised<Worker>> = (0..3)
        .map(|i| {
            let journal = journal_dir.join(format!("w{i}"));
            // Every other worker talks through a fast lane: the same kills, the same checks.
            let options = match i % 2 {
                1 => SpawnOptions::new().fast_lane(),
                _ => SpawnOptions::new(),
            };
            supervisor.add(
                ChildSpec::new(format!("soak-w{i}"), move || Worker { journal: Some(journal.clone()) })
                    .options(options)
                    .restart(Restart::Permanent)
                    .shutdown_timeout(Duration::from_secs(5)),
            )
        })
        .collect();
    let root = supervisor.start().await?;
    let farm_config = FarmConfig {
        workers: 2,
        batch: BatchSize::Auto,
        progress: false,
        name: "soak-farm".into(),
        fast_lane: true,
        ..FarmConfig::default()
    };
    let farm = Farm::start(farm_config, |_| Worker { journal: None }).await?;
    // The detector of processes left must see the five workers now, or its zero means nothing.
    let seen = descendants().len();
    anyhow::ensure!(seen == 5, "the process scan finds {seen} workers of 5");

    let stats: Shared = Rc::default();
    let world = Rc::new(World {
        workers,
        in_flight: RefCell::new(vec![0; 3]),
        farm,
        stats: Rc::clone(&stats),
        next_op: Cell::new(1),
        stop_at: Instant::now() + soak,
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..drivers {
        tasks.push(actix_rt::spawn(drive(Rc::clone(&world), Rng(master.next()))));
    }
    tasks.push(actix_rt::spawn(chaos(Rc::clone(&world), Rng(master.next()), (100, 700))));
    tasks.push(actix_rt::spawn(trees(Rc::clone(&world), Rng(master.next()), (6_000, 12_000))));
    let mut last_report = Instant::now();
    while world.running() {
        ensemble::time::sleep(Duration::from_millis(250)).await;
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            let s = stats.borrow();
            println!(
                "  {:>4} s: {} operations, {} acknowledged, {} kills, lost {}, duplicated {}, late {}",
                started.elapsed().as_secs(),
                s.attempted.values().sum::<u64>(),
                s.acknowledged.values().sum::<u64>(),
                s.kills.values().sum::<u64>(),
                s.lost,
                s.duplicated,
                s.late
            );
        }
    }
    for task in tasks {
        if let Err(error) = task.await {
            stats.borrow_mut().unexpected(format!("a driver task failed: {error}"));
        }
    }
    let soaked = started.elapsed();

    // Learn the last incarnations' pids, then stop everything in order.
    for worker in world.workers.iter().chain(world.farm.workers()) {
        if let Some(remote) = worker.remote() {
            stats.borrow_mut().pids.insert(remote.pid());
        }
    }
    let stopping = Instant::now();
    let world = Rc::try_unwrap(world).map_err(|_| anyhow::anyhow!("a task still holds the world"))?;
    let World { workers, farm, .. } = world;
    if let Err(error) = root.shutdown().await {
        stats.borrow_mut().unexpected(format!("supervisor shutdown: {error}"));
    }
    if let Err(error) = farm.shutdown().await {
        stats.borrow_mut().unexpected(format!("farm shutdown: {error}"));
    }
    drop(workers);
    let shutdown = stopping.elapsed();

    // Settle: exits are reaped and descriptors closed by ensemble's I/O thread.
    let settle_by = Instant::now() + Duration::from_secs(3);
    let (mut left, mut fds_after);
    loop {
        let learned = stats.borrow().pids.iter().copied().filter(|&p| alive(p)).collect::<HashSet<_>>();
        left = descendants().into_iter().collect::<HashSet<_>>();
        left.extend(learned);
        fds_after = open_descriptors();
        if (left.is_empty() && fds_after <= fds_before) || Instant::now() > settle_by {
            break;
        }
        ensemble::time::sleep(Duration::from_millis(50)).await;
    }
    let new_shm: Vec<String> = shm_files().difference(&shm_before).cloned().collect();

    // The journals against the acknowledged calls.
    let journal = read_journals(&journal_dir);
    let _ = std::fs::remove_dir_all(&journal_dir);
    let mut s = stats.borrow_mut();
    let acked: Vec<(u64, u64)> = s.applied_ok.iter().map(|(&op, &value)| (op, value)).collect();
    for (op, value) in acked {
        match journal.get(&op).map(Vec::as_slice) {
            Some([recorded]) if *recorded == value => {}
            Some([recorded]) => {
                s.lost(format!("call {op}: journal has value {recorded:#x}, sent {value:#x}"))
            }
            None | Some([]) => s.lost(format!("call {op}: acknowledged, but no effect in the journal")),
            Some(many) => {
                s.duplicated += 1;
                s.problem(format!("duplicated: call {op} recorded {} times", many.len()));
            }
        }
    }
    let failed: Vec<u64> = s.applied_failed.iter().copied().collect();
    for op in failed {
        match journal.get(&op).map(Vec::len).unwrap_or(0) {
            0 => {}
            1 => s.effect_without_ack += 1,
            n => {
                s.duplicated += 1;
                s.problem(format!("duplicated: failed call {op} recorded {n} times"));
            }
        }
    }
    let known: HashSet<u64> = s.applied_ok.keys().chain(s.applied_failed.iter()).copied().collect();
    for op in journal.keys().filter(|op| !known.contains(op)) {
        let what = format!("the journal records op {op}, which was never sent");
        s.unexpected(what);
    }

    let fds_leaked = fds_after.saturating_sub(fds_before) as u64;
    let processes_left = left.len() as u64 + s.tree_processes_left;
    println!();
    println!(
        "soak: seed {seed}, soaked {:.1} s, shutdown {:.2} s",
        soaked.as_secs_f64(),
        shutdown.as_secs_f64()
    );
    println!("{:<58} {:>10}", "figure", "count");
    println!("{}", "-".repeat(69));
    let row = |name: &str, n: u64| println!("{name:<58} {n:>10}");
    row("operations attempted", s.attempted.values().sum());
    for (kind, n) in &s.attempted {
        row(&format!("  {kind}"), *n);
    }
    row("results acknowledged", s.acknowledged.values().sum());
    for (kind, n) in &s.acknowledged {
        row(&format!("  {kind}"), *n);
    }
    row("tasks in the farm maps", s.farm_tasks);
    row("  with their result (retried after a kill or not)", s.farm_tasks_ok);
    row("failed cleanly (worker killed, or its deadline passed)", s.failed_clean.values().sum());
    for (kind, n) in &s.failed_clean {
        row(&format!("  {kind}"), *n);
    }
    row("  (of the failed calls, effect recorded before the kill)", s.effect_without_ack);
    row("SIGKILLs sent", s.kills.values().sum());
    for (target, n) in &s.kills {
        row(&format!("  {target}"), *n);
    }
    row("program trees killed at the root", s.trees);
    println!("{:<58} {:>10.3}", "worst overrun of a deadline (s)", s.worst_overrun.as_secs_f64());
    println!("{}", "-".repeat(69));
    let must_be_zero = [
        ("results lost", s.lost),
        ("results duplicated", s.duplicated),
        ("late (past deadline + 1 s, or a ring hang)", s.late),
        ("unexpected errors", s.unexpected),
        ("processes left", processes_left),
        ("descriptors leaked", fds_leaked),
        ("files in /dev/shm", new_shm.len() as u64),
    ];
    for (name, n) in must_be_zero {
        println!("{:<58} {n:>10}{}", format!("{name} (must be 0)"), if n == 0 { "" } else { "  <-- FAIL" });
    }
    if !left.is_empty() {
        println!("left running: {left:?}");
    }
    if fds_leaked > 0 {
        println!("descriptors: {fds_before} before, {fds_after} after");
    }
    if !new_shm.is_empty() {
        println!("new in /dev/shm: {new_shm:?}");
    }
    let failed: Vec<&str> = must_be_zero.iter().filter(|(_, n)| *n > 0).map(|(name, _)| *name).collect();
    if !failed.is_empty() {
        println!("soak FAILED (seed {seed}): {}", failed.join(", "));
        std::process::exit(1); // everything is stopped already; no backtrace of our own making
    }
    println!("soak passed (seed {seed})");
    Ok(())
}
