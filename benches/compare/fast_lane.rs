//! Fast-lane scenarios of `compare`: a typed call through shared-memory rings, against the floor
//! of any round trip over shared memory, and what an idle fast-lane actor costs.
//!
//! - `fast_lane_roundtrip`: `Echo` spawned with `SpawnOptions::fast_lane`, one call at a time,
//!   each timed alone (median and p99 over every call). Baseline: a hand-written round trip
//!   over two words of a shared memfd between the parent and a child of its own: each side
//!   publishes its word and spins on the other's, then sleeps on a futex (woken only when the
//!   other side said it sleeps). Split-cpu is the row with a target (<= 10); same-cpu, where
//!   neither side may spin and both must fall back to sleeping, is for information. A third
//!   side, the same call without a fast lane, shows what the lane saves
//!   (`fast_lane_vs_socket_call`, information).
//! - `fast_lane_idle_cpu`: CPU time per second of an idle actor and its parent, with a fast
//!   lane against without one, each in a helper process of its own (so that nothing else in
//!   the benchmark counts), measured from `/proc/<pid>/task/*/schedstat`.

use super::{stats, Echo, Ping, Row, Stats, ROLE};
use ensemble::prelude::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The word offsets (in u32s) of the floor's shared page: each on its own cache line.
const REQUEST: usize = 0;
const REQUEST_SLEEPING: usize = 16;
const REPLY: usize = 32;
const REPLY_SLEEPING: usize = 48;
const PAGE: usize = 4096;
/// How long the floor spins before it sleeps (when it spins at all).
const FLOOR_SPIN: Duration = Duration::from_micros(40);

/// The floor's shared page, mapped.
struct Page {
    words: *const AtomicU32,
    _fd: OwnedFd,
}

impl Page {
    fn create() -> Page {
        // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"bench-floor".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor this process owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain ftruncate on the descriptor just made.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), PAGE as i64) }, 0);
        Page::map(fd)
    }

    fn map(fd: OwnedFd) -> Page {
        // SAFETY: a shared mapping of one page of a memfd that is one page long; it lives as long
        // as the process (benchmark helpers), and only atomics are made of it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Page { words: ptr.cast(), _fd: fd }
    }

    fn word(&self, index: usize) -> &AtomicU32 {
        // SAFETY: index < 64 keeps the word inside the mapped page; AtomicU32 has the alignment
        // of u32, and a page-aligned mapping is aligned for it.
        unsafe { &*self.words.add(index) }
    }
}

fn futex(word: &AtomicU32, op: i32, value: u32, timeout: Option<&libc::timespec>) {
    let timeout = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: a futex on a live, aligned word of a shared mapping; a wait that returns early
    // (EAGAIN, EINTR, a timeout) is fine for both callers, which look at the word again.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), op, value, timeout);
    }
}

/// Waits until `word` holds `want`: spins a while if `spin`, then sleeps on the futex after
/// saying so in `sleeping` (Dekker: flag, fence, re-check; the writer publishes, fences, reads
/// the flag).
fn wait_for(word: &AtomicU32, sleeping: &AtomicU32, want: u32, spin: bool) {
    if spin {
        let start = Instant::now();
        loop {
            for _ in 0..32 {
                if word.load(Ordering::Acquire) == want {
                    return;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= FLOOR_SPIN {
                break;
            }
        }
    }
    let safety = libc::timespec { tv_sec: 0, tv_nsec: 100_000_000 };
    loop {
        sleeping.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let seen = word.load(Ordering::SeqCst);
        if seen == want {
            sleeping.store(0, Ordering::Relaxed);
            return;
        }
        futex(word, libc::FUTEX_WAIT, seen, Some(&safety));
        sleeping.store(0, Ordering::Relaxed);
        if word.load(Ordering::Acquire) == want {
            return;
        }
    }
}

fn publish(word: &AtomicU32, sleeping: &AtomicU32, value: u32) {
    word.store(value, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    if sleeping.load(Ordering::SeqCst) != 0 {
        futex(word, libc::FUTEX_WAKE, 1, None);
    }
}

/// The floor's child: answers each request number with the same reply number; 0 ends it.
pub fn floor_child(fd: &str, spin: bool) {
    // SAFETY: the descriptor number the parent left open for this process.
    let page = Page::map(unsafe { OwnedFd::from_raw_fd(fd.parse().unwrap()) });
    let mut n = 1u32;
    loop {
        wait_for(page.word(REQUEST), page.word(REQUEST_SLEEPING), n, spin);
        publish(page.word(REPLY), page.word(REPLY_SLEEPING), n);
        if n == u32::MAX {
            return;
        }
        n += 1;
    }
}

struct Floor {
    page: Page,
    child: Child,
    next: u32,
    spin: bool,
}

impl Floor {
    fn start(cpu: usize, spin: bool) -> Floor {
        let page = Page::create();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, format!("floor {} {cpu} {spin}", page._fd.as_raw_fd()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Floor { page, child, next: 1, spin }
    }

    fn round_trip(&mut self) {
        let n = self.next;
        self.next += 1;
        publish(self.page.word(REQUEST), self.page.word(REQUEST_SLEEPING), n);
        wait_for(self.page.word(REPLY), self.page.word(REPLY_SLEEPING), n, self.spin);
    }

    fn stop(mut self) {
        publish(self.page.word(REQUEST), self.page.word(REQUEST_SLEEPING), u32::MAX);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fast_lane_roundtrip.<placement>` (and `fast_lane_vs_socket_call.<placement>`, information).
pub fn roundtrip(
    rt: &actix_rt::SystemRunner,
    reps: usize,
    calls: usize,
    placement: &str,
    cpu: usize,
) -> Vec<Row> {
    let split = placement == "split-cpu";
    let lane = rt
        .block_on(ensemble::spawn_with(Echo { notes: 0 }, SpawnOptions::new().cpu(cpu).fast_lane()))
        .unwrap();
    let plain = rt.block_on(ensemble::spawn_with(Echo { notes: 0 }, SpawnOptions::new().cpu(cpu))).unwrap();
    let mut floor = Floor::start(cpu, split);
    let timed = |remote: &Remote<Echo>, samples: &mut Vec<f64>| {
        rt.block_on(async {
            for i in 0..calls as u64 {
                let start = Instant::now();
                assert_eq!(remote.send(Ping(i)).await.unwrap(), i);
                samples.push(start.elapsed().as_nanos() as f64);
            }
        });
    };
    let (mut on_lane, mut on_socket, mut on_floor) = (Vec::new(), Vec::new(), Vec::new());
    // Warm up: the lane's spin budget adapts within a few calls.
    timed(&lane, &mut Vec::new());
    timed(&plain, &mut Vec::new());
    for rep in 0..reps {
        for side in 0..3 {
            match (rep + side) % 3 {
                0 => timed(&lane, &mut on_lane),
                1 => timed(&plain, &mut on_socket),
                _ => {
                    for _ in 0..calls {
                        let start = Instant::now();
                        floor.round_trip();
                        on_floor.push(start.elapsed().as_nanos() as f64);
                    }
                }
            }
        }
    }
    let stats_of = |samples: Vec<f64>| -> Stats { stats(samples) };
    let lane_stats = lane.fast_lane_stats().unwrap();
    if lane_stats.lost_wakeups != 0 {
        eprintln!("fast_lane_roundtrip.{placement}: {} lost wake-ups", lane_stats.lost_wakeups);
    }
    rt.block_on(lane.stop()).unwrap();
    rt.block_on(plain.stop()).unwrap();
    floor.stop();
    let (lane, socket, floor) = (stats_of(on_lane), stats_of(on_socket), stats_of(on_floor));
    let info = if split { "" } else { " (info)" };
    vec![
        Row {
            scenario: format!("fast_lane_roundtrip.{placement}{info}"),
            ensemble: lane,
            baseline: floor,
            target: None,
        },
        Row {
            scenario: format!("fast_lane_vs_socket_call.{placement} (info)"),
            ensemble: lane,
            baseline: socket,
            target: None,
        },
    ]
}

/// A helper process's body: spawn `Echo` (with a fast lane or not), call it, let it idle for
/// `secs` and print the CPU time it and its child used per second.
pub fn idle_child(lane: bool, secs: u64) {
    let rt = actix_rt::System::new();
    let options = if lane { SpawnOptions::new().fast_lane() } else { SpawnOptions::new() };
    let echo = rt.block_on(ensemble::spawn_with(Echo { notes: 0 }, options)).unwrap();
    rt.block_on(async {
        for i in 0..1000 {
            echo.send(Ping(i)).await.unwrap();
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    });
    let used = || cpu_time_ns(std::process::id()) + cpu_time_ns(echo.pid());
    let (before, start) = (used(), Instant::now());
    rt.block_on(async { actix_rt::time::sleep(Duration::from_secs(secs)).await });
    let per_second = (used() - before) as f64 / start.elapsed().as_secs_f64();
    println!("IDLE {per_second}");
    rt.block_on(echo.stop()).unwrap();
}

/// CPU time of every thread of `pid`, in nanoseconds.
fn cpu_time_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn idle_run(lane: bool, secs: u64) -> f64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, format!("idle {lane} {secs}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().find_map(|l| l.strip_prefix("IDLE ")).unwrap_or_else(|| panic!("no figure: {text}"));
    line.trim().parse().unwrap()
}

/// `fast_lane_idle_cpu`: CPU ns per second of an idle fast-lane actor (and its parent) against
/// an idle plain one.
pub fn idle_cpu(reps: usize, secs: u64) -> Row {
    let (mut lane, mut plain) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        if rep % 2 == 0 {
            lane.push(idle_run(true, secs));
            plain.push(idle_run(false, secs));
        } else {
            plain.push(idle_run(false, secs));
            lane.push(idle_run(true, secs));
        }
    }
    Row {
        scenario: "fast_lane_idle_cpu (ns/s)".into(),
        ensemble: stats(lane),
        baseline: stats(plain),
        target: None,
    }
}
