//! `cargo bench --bench compare [-- --quick]`: ensemble against raw ipc-channel, side by side.
//!
//! Each scenario measures ensemble and its baseline in the same run, interleaved batch by batch
//! (A B A B ...), and reports medians and p99 over the batches. Latency scenarios run twice:
//! both processes pinned to CPU 0 (`.same-cpu`) and parent on CPU 0, child on CPU 1
//! (`.split-cpu`); the row without a suffix carries the worse ratio. See
//! `../shared/BENCHMARKING.md` for why placement dominates these numbers.
//!
//! The baseline child is this same executable, re-executed with `COMPARE_ROLE` set: a
//! hand-written ipc-channel server that blocks in `recv` and answers with `send`, i.e. the
//! fastest way to use ipc-channel for request/reply.
//!
//! `call_vs_reactor` and `call_vs_blocking_socket` hold the same typed call against the floors
//! of the transport it runs on, hand-written in this file: a 64-byte ping-pong over an
//! `AF_UNIX` `SOCK_SEQPACKET` pair whose child end is the re-executed child's stdin, with both
//! sides waiting in a tokio current-thread reactor (`AsyncFd`, as ensemble's connection does:
//! `raw_socket_reactor`) or blocking in `recv` (`raw_socket_blocking`, informational).
//!
//! `handover_*` time a segment handed over by a worker (created beforehand, filled with
//! nothing) from the parent's request to its readable view, against the same bytes through
//! `IpcBytesSender`; `handover_small` is a 4 KiB hand-over against a tiny call.
//!
//! `restart_latency` times a supervised child from its SIGKILL to the first successful call on
//! its new incarnation, against `spawn_stop`'s fresh spawn + first reply + stop.
//!
//! `farm_tiny_tasks` maps 100,000 trivial tasks over 2 workers against two hand-written
//! request/reply loops over raw ipc-channel children. `weather_hours` is seed 003's workload at
//! 1e6 x 16 (warm map phase, and `weather_hours_cold`: the whole job) against Python's
//! `multiprocessing.Pool(2)` with numpy (`benches/python/weather_hours.py`; skipped without
//! python3 and numpy). `weather_hours_vs_threads` holds the farm's warm map at the original
//! 1e7 x 16 against the same map on as many threads of one process: the machine's limit.
//!
//! `ring_1MiB_frames`, `ring_wakeup` and `ring_small_msgs` (in `compare/rings.rs`, whose docs
//! describe them) hold rings against a single-process memcpy, a hand-written eventfd ping-pong
//! over shared memory, and raw ipc-channel one-way sends.
//!
//! `fast_lane_roundtrip` and `fast_lane_idle_cpu` (in `compare/fast_lane.rs`, whose docs
//! describe them) hold a call through the fast lane against a hand-written spin-then-futex
//! round trip over shared memory, and an idle fast-lane actor's CPU time against a plain one's.
//!
//! `-- --only call_roundtrip,handover` runs only the scenarios whose names start with those.
//!
//! `raw_socket_reactor` registers its socket for readability and writability, as
//! `AsyncFd::new` did: each side then also wakes (`EPOLLOUT`) when its peer reads, which on
//! this VM keeps the vCPU out of halt before the reply comes and makes split-CPU round trips
//! faster. ensemble registers for readability only (writability only while its queue holds
//! frames). `COMPARE_READ_ONLY=1` registers the baseline for readability only too, to see both.
//!
//! Writes the table to stdout and the rows to `target/ensemble-compare.json`.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

use ensemble::farm::{Farm, FarmConfig};
use ensemble::prelude::*;
use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use tokio::io::unix::AsyncFd;

#[path = "compare/rings.rs"]
mod rings;

#[path = "compare/fast_lane.rs"]
mod fast_lane;

#[path = "compare/baselines.rs"]
mod baselines;
#[path = "compare/harness.rs"]
mod harness;
#[path = "compare/weather.rs"]
mod weather;

use baselines::*;
use harness::*;
use weather::*;

// ---------------------------------------------------------------- the ensemble side

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Ping, Note))]
struct Echo {
    notes: u64,
}

/// A farm worker for tiny tasks.
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(batches(Tiny))]
struct TinyWorker;

#[derive(Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Tiny(u64);

impl ProcessHandler<Tiny> for TinyWorker {
    fn handle(&mut self, Tiny(n): Tiny, _: &mut ProcessContext<Self>) -> u64 {
        n + 1
    }
}

/// Makes segments ahead of time and hands them over on request.
#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Prepare, Give))]
struct Vault {
    #[serde(skip)]
    ready: Vec<SharedSliceMut<u8>>,
}

/// Create (and fill nothing in) a segment of this many bytes.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Prepare(usize);

/// Hand over the segment prepared last.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "SharedSlice<u8>")]
struct Give;

impl ProcessHandler<Prepare> for Vault {
    fn handle(&mut self, Prepare(bytes): Prepare, _: &mut ProcessContext<Self>) {
        self.ready.push(SharedSliceMut::new(bytes).unwrap());
    }
}

impl ProcessHandler<Give> for Vault {
    fn handle(&mut self, _: Give, _: &mut ProcessContext<Self>) -> SharedSlice<u8> {
        self.ready.pop().expect("prepared").freeze().unwrap()
    }
}

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Ping(u64);

#[derive(Serialize, Deserialize, RemoteMessage)]
struct Note(u64);

impl ProcessHandler<Ping> for Echo {
    fn handle(&mut self, Ping(n): Ping, _: &mut ProcessContext<Self>) -> u64 {
        n + self.notes
    }
}

impl ProcessHandler<Note> for Echo {
    fn handle(&mut self, Note(_): Note, _: &mut ProcessContext<Self>) {
        self.notes += 1;
    }
}

struct Plan {
    reps: usize,
    calls: usize,
    casts: usize,
    spawns: usize,
}

/// `child_cpu: None` leaves both sides unpinned, as most programs run: the machine decides
/// where each side runs, so that figure moves between the two placements (informational).
fn call_roundtrip(
    rt: &actix_rt::SystemRunner,
    plan: &Plan,
    placement: &str,
    child_cpu: Option<usize>,
) -> Row {
    let mut options = SpawnOptions::new().name("bench-echo");
    options.cpu = child_cpu;
    let echo = rt.block_on(ensemble::spawn_with(Echo { notes: 0 }, options)).unwrap();
    let raw = Raw::start(child_cpu.unwrap_or(usize::MAX));
    let warm = |n| {
        for i in 0..n {
            rt.block_on(echo.send(Ping(i))).unwrap();
            raw.call(i);
        }
    };
    warm(200);
    let (ens, base) = interleave(
        plan.reps,
        || {
            let start = Instant::now();
            rt.block_on(async {
                for i in 0..plan.calls as u64 {
                    assert_eq!(echo.send(Ping(i)).await.unwrap(), i);
                }
            });
            per_op(start, plan.calls)
        },
        || {
            let start = Instant::now();
            for i in 0..plan.calls as u64 {
                assert_eq!(raw.call(i), i);
            }
            per_op(start, plan.calls)
        },
    );
    rt.block_on(echo.stop()).unwrap();
    raw.stop();
    Row { scenario: format!("call_roundtrip.{placement}"), ensemble: ens, baseline: base, target: None }
}

/// The typed call of `call_roundtrip` against the two hand-written socket floors, each a
/// 64-byte ping-pong over a seqpacket pair with the same placement: `call_vs_reactor` (both
/// sides wait in a tokio reactor, as ensemble's connection does; target 1.3) and
/// `call_vs_blocking_socket` (both sides block in `recv`: informational, the floor under any
/// reactor). All wanted sides are interleaved in one loop, so both rows share the ensemble
/// figures.
fn call_vs_sockets(
    rt: &actix_rt::SystemRunner,
    plan: &Plan,
    placement: &str,
    child_cpu: usize,
    floors: &[Waiting],
) -> Vec<Row> {
    let options = SpawnOptions::new().name("bench-echo").cpu(child_cpu);
    let echo = rt.block_on(ensemble::spawn_with(Echo { notes: 0 }, options)).unwrap();
    let peers: Vec<SocketPeer> = floors.iter().map(|w| SocketPeer::start(*w, child_cpu)).collect();
    for i in 0..200 {
        rt.block_on(echo.send(Ping(i))).unwrap();
    }
    for peer in &peers {
        peer.round_trips(0, 200);
    }
    let mut sides: Vec<Box<dyn FnMut() -> f64 + '_>> = vec![Box::new(|| {
        let start = Instant::now();
        rt.block_on(async {
            for i in 0..plan.calls as u64 {
                assert_eq!(echo.send(Ping(i)).await.unwrap(), i);
            }
        });
        per_op(start, plan.calls)
    })];
    for peer in &peers {
        sides.push(Box::new(move || peer.round_trips(0, plan.calls)));
    }
    let measured = interleave_all(plan.reps, &mut sides);
    drop(sides);
    rt.block_on(echo.stop()).unwrap();
    for peer in peers {
        peer.stop();
    }
    floors
        .iter()
        .zip(&measured[1..])
        .map(|(waiting, floor)| {
            let name = match waiting {
                Waiting::Reactor => "call_vs_reactor",
                Waiting::Blocking => "call_vs_blocking_socket",
            };
            Row {
                scenario: format!("{name}.{placement}"),
                ensemble: measured[0],
                baseline: *floor,
                target: None,
            }
        })
        .collect()
}

fn oneway_throughput(rt: &actix_rt::SystemRunner, plan: &Plan, placement: &str, child_cpu: usize) -> Row {
    let options = SpawnOptions::new().name("bench-echo").cpu(child_cpu);
    let echo = rt.block_on(ensemble::spawn_with(Echo { notes: 0 }, options)).unwrap();
    let raw = Raw::start(child_cpu);
    let (mut sent_e, mut sent_r) = (0u64, 0u64);
    let (ens, base) = interleave(
        plan.reps,
        || {
            let start = Instant::now();
            rt.block_on(async {
                for i in 0..plan.casts as u64 {
                    echo.cast(Note(i)).await.unwrap();
                }
            });
            sent_e += plan.casts as u64;
            // One call at the end: the batch counts only once every note was handled.
            assert_eq!(rt.block_on(echo.send(Ping(0))).unwrap(), sent_e);
            per_op(start, plan.casts)
        },
        || {
            let start = Instant::now();
            for i in 0..plan.casts as u64 {
                raw.tx.send(RawRequest::Cast(i)).unwrap();
            }
            sent_r += plan.casts as u64;
            assert_eq!(raw.call(0), sent_r);
            per_op(start, plan.casts)
        },
    );
    rt.block_on(echo.stop()).unwrap();
    raw.stop();
    Row { scenario: format!("oneway_throughput.{placement}"), ensemble: ens, baseline: base, target: None }
}

fn spawn_stop(rt: &actix_rt::SystemRunner, plan: &Plan) -> Row {
    let (ens, base) = interleave(
        plan.reps,
        || {
            let start = Instant::now();
            for _ in 0..plan.spawns {
                rt.block_on(async {
                    let echo = ensemble::spawn(Echo { notes: 0 }).await.unwrap();
                    echo.send(Ping(1)).await.unwrap();
                    echo.stop().await.unwrap();
                });
            }
            per_op(start, plan.spawns)
        },
        || {
            let start = Instant::now();
            for _ in 0..plan.spawns {
                let status =
                    Command::new(std::env::current_exe().unwrap()).env(ROLE, "exit").status().unwrap();
                assert!(status.success());
            }
            per_op(start, plan.spawns)
        },
    );
    Row { scenario: "spawn_stop".into(), ensemble: ens, baseline: base, target: None }
}

fn restart_latency(rt: &actix_rt::SystemRunner, plan: &Plan) -> Row {
    use ensemble::supervisor::{Intensity, SupervisorConfig};
    let intensity = Intensity { max_restarts: u32::MAX, within: std::time::Duration::from_secs(1) };
    let mut supervisor = Supervisor::new(SupervisorConfig { intensity, ..SupervisorConfig::default() });
    let echo = supervisor.add(ChildSpec::new("bench-restart", || Echo { notes: 0 }));
    let root = rt.block_on(supervisor.start()).unwrap();
    let fresh = |rt: &actix_rt::SystemRunner| {
        rt.block_on(async {
            let echo = ensemble::spawn(Echo { notes: 0 }).await.unwrap();
            echo.send(Ping(1)).await.unwrap();
            echo.stop().await.unwrap();
        })
    };
    let (ens, base) = interleave(
        plan.reps,
        || {
            let start = Instant::now();
            for _ in 0..plan.spawns {
                rt.block_on(async {
                    echo.up().await.unwrap().kill();
                    // A call racing the death may still reach the dead process and fail with
                    // `Exited`; the first success is what the scenario times.
                    while echo.send(Ping(1)).await.is_err() {}
                });
            }
            per_op(start, plan.spawns)
        },
        || {
            let start = Instant::now();
            for _ in 0..plan.spawns {
                fresh(rt);
            }
            per_op(start, plan.spawns)
        },
    );
    rt.block_on(root.shutdown()).unwrap();
    Row { scenario: "restart_latency".into(), ensemble: ens, baseline: base, target: None }
}

/// A segment of `bytes` handed over by a worker, from the parent's request to its readable
/// view, against the same bytes sent through ipc-channel's `IpcBytesSender`.
fn handover(rt: &actix_rt::SystemRunner, reps: usize, bytes: usize, scenario: &str) -> Row {
    let vault =
        rt.block_on(ensemble::spawn_with(Vault { ready: Vec::new() }, SpawnOptions::new().cpu(1))).unwrap();
    let raw = Raw::start(1);
    raw.tx.send(RawRequest::Bytes(bytes)).unwrap();
    assert_eq!(raw.bytes.recv().unwrap().len(), bytes); // the child writes its buffer once
    let (ens, base) = interleave(
        reps,
        || {
            rt.block_on(vault.send(Prepare(bytes))).unwrap();
            let start = Instant::now();
            let view = rt.block_on(vault.send(Give)).unwrap();
            assert_eq!((view.len(), view[bytes / 2]), (bytes, 0));
            let elapsed = per_op(start, 1);
            drop(view); // unmapping and freeing are not part of the hand-over
            elapsed
        },
        || {
            let start = Instant::now();
            raw.tx.send(RawRequest::Bytes(bytes)).unwrap();
            let received = raw.bytes.recv().unwrap();
            assert_eq!((received.len(), received[bytes / 2]), (bytes, 7));
            per_op(start, 1)
        },
    );
    rt.block_on(vault.stop()).unwrap();
    raw.stop();
    Row { scenario: scenario.into(), ensemble: ens, baseline: base, target: None }
}

/// A 4 KiB hand-over against a plain tiny call, both to a worker on CPU 1.
fn handover_small(rt: &actix_rt::SystemRunner, plan: &Plan) -> Row {
    let vault =
        rt.block_on(ensemble::spawn_with(Vault { ready: Vec::new() }, SpawnOptions::new().cpu(1))).unwrap();
    let echo = rt.block_on(ensemble::spawn_with(Echo { notes: 0 }, SpawnOptions::new().cpu(1))).unwrap();
    let rounds = plan.calls / 10;
    let (ens, base) = interleave(
        plan.reps,
        || {
            let mut total = 0.0;
            for _ in 0..rounds {
                rt.block_on(vault.send(Prepare(4096))).unwrap();
                let start = Instant::now();
                let view = rt.block_on(vault.send(Give)).unwrap();
                assert_eq!(view[0], 0);
                total += per_op(start, 1);
            }
            total / rounds as f64
        },
        || {
            let start = Instant::now();
            rt.block_on(async {
                for i in 0..rounds as u64 {
                    echo.send(Ping(i)).await.unwrap();
                }
            });
            per_op(start, rounds)
        },
    );
    rt.block_on(vault.stop()).unwrap();
    rt.block_on(echo.stop()).unwrap();
    Row { scenario: "handover_small".into(), ensemble: ens, baseline: base, target: None }
}

/// 100,000 trivial tasks over 2 workers: the farm against two threads each running a
/// request/reply loop with its own raw ipc-channel child.
fn farm_tiny_tasks(rt: &actix_rt::SystemRunner, reps: usize) -> Row {
    const TASKS: usize = 100_000;
    let config = FarmConfig { workers: 2, progress: false, ..FarmConfig::default() };
    let farm = rt.block_on(Farm::start(config, |_| TinyWorker)).unwrap();
    let raws = [std::sync::Mutex::new(Raw::start(0)), std::sync::Mutex::new(Raw::start(1))];
    let (ens, base) = interleave(
        reps,
        || {
            let start = Instant::now();
            let results = rt.block_on(farm.map((0..TASKS as u64).map(Tiny))).unwrap();
            assert_eq!(results[TASKS - 1], TASKS as u64);
            per_op(start, TASKS)
        },
        || {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for (w, raw) in raws.iter().enumerate() {
                    scope.spawn(move || {
                        let raw = raw.lock().unwrap();
                        for i in (w..TASKS).step_by(2) {
                            assert_eq!(raw.call(i as u64), i as u64);
                        }
                    });
                }
            });
            per_op(start, TASKS)
        },
    );
    rt.block_on(farm.shutdown()).unwrap();
    for raw in raws {
        raw.into_inner().unwrap().stop();
    }
    Row { scenario: "farm_tiny_tasks".into(), ensemble: ens, baseline: base, target: None }
}

/// The Python side of `weather_hours`, when python3 with numpy is there.
fn main() {
    ensemble::init();
    if let Ok(role) = std::env::var(ROLE) {
        let mut words = role.split(' ');
        match words.next() {
            Some("raw") => {
                let server = words.next().unwrap().to_owned();
                let cpu: usize = words.next().unwrap().parse().unwrap();
                if cpu != usize::MAX {
                    ensemble::runtime::pin_to_cpu(cpu).unwrap();
                }
                raw_child(server);
            }
            Some("socket") => {
                let waiting = words.next().unwrap().to_owned();
                let cpu: usize = words.next().unwrap().parse().unwrap();
                ensemble::runtime::pin_to_cpu(cpu).unwrap();
                socket_child(&waiting);
            }
            Some("eventfd") => {
                let fds = words.next().unwrap().to_owned();
                let cpu: usize = words.next().unwrap().parse().unwrap();
                ensemble::runtime::pin_to_cpu(cpu).unwrap();
                rings::eventfd_child(&fds);
            }
            Some("floor") => {
                let fd = words.next().unwrap().to_owned();
                let cpu: usize = words.next().unwrap().parse().unwrap();
                ensemble::runtime::pin_to_cpu(cpu).unwrap();
                fast_lane::floor_child(&fd, words.next() == Some("true"));
            }
            Some("idle") => {
                let lane = words.next() == Some("true");
                fast_lane::idle_child(lane, words.next().unwrap().parse().unwrap());
            }
            Some("exit") => {}
            _ => panic!("unknown role {role}"),
        }
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only a,b` runs the scenarios whose names start with one of these.
    let only: Option<Vec<String>> = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .map(|list| list.split(',').map(str::to_owned).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| name.starts_with(p.as_str())));
    let plan = if quick {
        Plan { reps: 15, calls: 1_000, casts: 5_000, spawns: 5 }
    } else {
        Plan { reps: 41, calls: 5_000, casts: 20_000, spawns: 20 }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = actix_rt::System::new();
    // Throughput over all CPUs first, unpinned: the first spawn also starts ensemble's launcher
    // thread, whose CPU mask every later child inherits unless it is pinned explicitly.
    let mut farm_rows = Vec::new();
    if wanted("call_roundtrip.unpinned") {
        farm_rows.push(call_roundtrip(&rt, &plan, "unpinned (info)", None));
    }
    if wanted("farm_tiny_tasks") {
        farm_rows.push(farm_tiny_tasks(&rt, if quick { 3 } else { 9 }));
    }
    if wanted("weather_hours_vs_threads") {
        farm_rows.push(weather_hours_vs_threads(&rt, if quick { 5 } else { 15 }));
    }
    if wanted("weather_hours_full_cold") {
        farm_rows.extend(weather_hours_full_cold(&rt, if quick { 3 } else { 7 }));
    }
    if wanted("weather_hours") {
        farm_rows.extend(weather_hours(&rt, if quick { 3 } else { 9 }));
    }
    if wanted("fast_lane_idle_cpu") {
        farm_rows.push(fast_lane::idle_cpu(if quick { 3 } else { 5 }, if quick { 2 } else { 5 }));
    }
    // Then the latency scenarios: the parent's main thread (the actix system runs on it, and the
    // reader threads it starts inherit its mask) on CPU 0, children pinned as each scenario says.
    ensemble::runtime::pin_to_cpu(0).expect("pin the parent to CPU 0");
    let mut rows = Vec::new();
    let mut placements = vec![("same-cpu", 0)];
    if cpus > 1 {
        placements.push(("split-cpu", 1));
    }
    for (placement, cpu) in &placements {
        if wanted("call_roundtrip") {
            rows.push(call_roundtrip(&rt, &plan, placement, Some(*cpu)));
        }
        if wanted("oneway_throughput") {
            rows.push(oneway_throughput(&rt, &plan, placement, *cpu));
        }
        let floors: Vec<Waiting> = [
            (Waiting::Reactor, wanted("call_vs_reactor")),
            (Waiting::Blocking, wanted("call_vs_blocking_socket")),
        ]
        .into_iter()
        .filter_map(|(waiting, wanted)| wanted.then_some(waiting))
        .collect();
        if !floors.is_empty() {
            rows.extend(call_vs_sockets(&rt, &plan, placement, *cpu, &floors));
        }
        if wanted("ring_1MiB_frames") {
            rows.push(rings::frames(&rt, plan.reps, placement, *cpu));
        }
        if wanted("ring_wakeup") {
            rows.push(rings::wakeup(&rt, plan.reps, plan.calls, placement, *cpu));
        }
        if wanted("ring_small_msgs") {
            rows.push(rings::small_msgs(&rt, plan.reps, plan.casts, placement, *cpu));
        }
        if wanted("fast_lane_roundtrip") {
            rows.extend(fast_lane::roundtrip(&rt, plan.reps, plan.calls, placement, *cpu));
        }
    }
    worst_of(&mut rows, "call_roundtrip");
    worst_of(&mut rows, "oneway_throughput");
    worst_of(&mut rows, "call_vs_reactor");
    worst_of(&mut rows, "call_vs_blocking_socket");
    for scenario in ["ring_1MiB_frames", "ring_wakeup", "ring_small_msgs"] {
        worst_of(&mut rows, scenario);
    }
    if wanted("spawn_stop") {
        rows.push(spawn_stop(&rt, &plan));
    }
    if wanted("restart_latency") {
        rows.push(restart_latency(&rt, &plan));
    }
    if wanted("handover_small") {
        rows.push(handover_small(&rt, &plan));
    }
    let big_reps = if quick { 3 } else { 7 };
    if wanted("handover_64MiB") {
        rows.push(handover(&rt, big_reps, 64 << 20, "handover_64MiB"));
    }
    if wanted("handover_1GiB") {
        rows.push(handover(&rt, big_reps, 1 << 30, "handover_1GiB"));
    }
    rows.extend(farm_rows);
    for row in &mut rows {
        row.target = target(&row.scenario);
    }
    print_table(&rows);
    let median_of = |name: &str| rows.iter().find(|r| r.scenario == name).map(|r| r.ensemble.median);
    if let (Some(small), Some(big)) = (median_of("handover_64MiB"), median_of("handover_1GiB")) {
        let growth = big / small;
        let verdict = if growth <= 2.0 { "meets" } else { "MISSES" };
        println!("\nhand-over growth from 64 MiB to 1 GiB: {growth:.2}x (target at most 2x): {verdict}");
    }
    match write_json(&rows) {
        Ok(path) => println!("\nwritten to {}", path.display()),
        Err(e) => eprintln!("could not write the JSON report: {e}"),
    }
}
