//! Ring scenarios of `compare`: frames, wake-ups and small messages through a ring between two
//! processes, against their floors measured in the same run.
//!
//! - `ring_1MiB_frames`: a child copies a 1 MiB frame into a slot and commits it; the parent
//!   reads every word of it in place. Baseline: one process copying the same frame into four
//!   rotating buffers (the ring's slots). Time per frame.
//! - `ring_wakeup`: one message at a time there and back through two rings, both sides
//!   sleeping between messages (`async`, no spin). Baseline: the same ping-pong hand-written
//!   over a shared-memory word and two eventfds, each side waiting in a tokio current-thread
//!   reactor (`AsyncFd`), ringing on every message. Time per round trip.
//! - `ring_small_msgs`: 64-byte messages pushed by the parent, counted by a child. Baseline:
//!   raw ipc-channel one-way sends to a child (as `oneway_throughput`). Time per message.

use super::{interleave, per_op, Raw, Row, ROLE};
use ensemble::prelude::*;
use ensemble::ring::{self, Consumer, Producer, RingError, WhenFull};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::io::unix::AsyncFd;

const FRAME: usize = 1 << 20;
const SLOTS: usize = 4;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(TakeProducer, TakeConsumer, Pump, Count, async Bounce))]
pub struct RingPeer {
    producer: Option<Producer>,
    consumer: Option<Consumer>,
}

#[derive(Serialize, Deserialize, RemoteMessage)]
struct TakeProducer(Producer);

#[derive(Serialize, Deserialize, RemoteMessage)]
struct TakeConsumer(Consumer);

/// Copies a 1 MiB frame into `frames` slots of the kept producer.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Pump(u64);

/// Receives `n` messages from the kept consumer; replies with the sum of their first words.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Count(u64);

/// Echoes every message of the first ring into the second until the first closes.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Bounce(Consumer, Producer);

impl ProcessHandler<TakeProducer> for RingPeer {
    fn handle(&mut self, TakeProducer(p): TakeProducer, _: &mut ProcessContext<Self>) {
        self.producer = Some(p);
    }
}

impl ProcessHandler<TakeConsumer> for RingPeer {
    fn handle(&mut self, TakeConsumer(c): TakeConsumer, _: &mut ProcessContext<Self>) {
        self.consumer = Some(c);
    }
}

impl ProcessHandler<Pump> for RingPeer {
    fn handle(&mut self, Pump(frames): Pump, _: &mut ProcessContext<Self>) {
        let source = vec![0x5au8; FRAME];
        let producer = self.producer.as_mut().expect("a producer");
        for _ in 0..frames {
            let mut slot = producer.claim().expect("claim");
            slot[..FRAME].copy_from_slice(&source);
            slot.commit(FRAME).expect("commit");
        }
    }
}

impl ProcessHandler<Count> for RingPeer {
    fn handle(&mut self, Count(n): Count, _: &mut ProcessContext<Self>) -> u64 {
        let consumer = self.consumer.as_mut().expect("a consumer");
        (0..n).map(|_| first_word(&consumer.recv().expect("a message"))).sum()
    }
}

impl AsyncProcessHandler<Bounce> for RingPeer {
    async fn handle(&mut self, Bounce(mut from, mut to): Bounce, _: &mut ProcessContext<Self>) -> u64 {
        let mut n = 0;
        loop {
            let word = match from.recv_async().await {
                Ok(message) => first_word(&message),
                Err(RingError::Closed { .. }) => return n,
                Err(e) => panic!("{e}"),
            };
            let mut slot = to.claim_async().await.expect("claim");
            slot[..8].copy_from_slice(&word.to_le_bytes());
            slot.commit(8).expect("commit");
            n += 1;
        }
    }
}

fn first_word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

/// Reads every word of `frame` (what a consumer that looks at all of a frame pays).
fn read_all(frame: &[u8]) -> u64 {
    let words: &[u64] = bytemuck::cast_slice(frame);
    words.iter().fold(0, |acc, &w| acc ^ w)
}

async fn peer(cpu: usize) -> Remote<RingPeer> {
    let options = SpawnOptions::new().name("bench-ring").cpu(cpu);
    ensemble::spawn_with(RingPeer { producer: None, consumer: None }, options).await.unwrap()
}

pub fn frames(rt: &actix_rt::SystemRunner, reps: usize, placement: &str, cpu: usize) -> Row {
    let child = rt.block_on(peer(cpu));
    let (producer, mut consumer) = ring::channel(SLOTS, FRAME, WhenFull::Block).unwrap();
    rt.block_on(child.send(TakeProducer(producer))).unwrap();
    let batch = 64u64;
    let source = vec![0x5au8; FRAME];
    let mut targets = vec![vec![0u8; FRAME]; SLOTS];
    let (mut sink, mut sink_base) = (0u64, 0u64);
    let (ens, base) = interleave(
        reps,
        || {
            let start = Instant::now();
            let pumping = child.send(Pump(batch));
            let reading = async {
                for _ in 0..batch {
                    sink ^= read_all(&consumer.recv_async().await.unwrap());
                }
            };
            let (pumped, ()) = rt.block_on(futures::future::join(pumping, reading));
            pumped.unwrap();
            per_op(start, batch as usize)
        },
        || {
            let start = Instant::now();
            for i in 0..batch as usize {
                targets[i % SLOTS].copy_from_slice(&source);
            }
            sink_base ^= u64::from(std::hint::black_box(&targets)[0][0]);
            per_op(start, batch as usize)
        },
    );
    std::hint::black_box((sink, sink_base));
    drop(consumer);
    rt.block_on(child.stop()).unwrap();
    Row { scenario: format!("ring_1MiB_frames.{placement}"), ensemble: ens, baseline: base, target: None }
}

pub fn small_msgs(
    rt: &actix_rt::SystemRunner,
    reps: usize,
    count: usize,
    placement: &str,
    cpu: usize,
) -> Row {
    let child = rt.block_on(peer(cpu));
    let (mut producer, consumer) = ring::channel(256, 64, WhenFull::Block).unwrap();
    rt.block_on(child.send(TakeConsumer(consumer))).unwrap();
    let raw = Raw::start(cpu);
    let (mut sent_r, mut message) = (0u64, [0u8; 64]);
    let (ens, base) = interleave(
        reps,
        || {
            let start = Instant::now();
            let counted = child.send(Count(count as u64));
            let sending = async {
                for i in 0..count as u64 {
                    message[..8].copy_from_slice(&i.to_le_bytes());
                    producer.send(&message).unwrap();
                }
            };
            let (counted, ()) = rt.block_on(futures::future::join(counted, sending));
            assert_eq!(counted.unwrap(), (count as u64 - 1) * count as u64 / 2);
            per_op(start, count)
        },
        || {
            let start = Instant::now();
            for i in 0..count as u64 {
                raw.tx.send(super::RawRequest::Cast(i)).unwrap();
            }
            sent_r += count as u64;
            assert_eq!(raw.call(0), sent_r);
            per_op(start, count)
        },
    );
    drop(producer);
    rt.block_on(child.stop()).unwrap();
    raw.stop();
    Row { scenario: format!("ring_small_msgs.{placement}"), ensemble: ens, baseline: base, target: None }
}

pub fn wakeup(rt: &actix_rt::SystemRunner, reps: usize, trips: usize, placement: &str, cpu: usize) -> Row {
    let child = rt.block_on(peer(cpu));
    let (mut there, far_end) = ring::channel(2, 64, WhenFull::Block).unwrap();
    let (near_end, mut back) = ring::channel(2, 64, WhenFull::Block).unwrap();
    let bouncing = child.send(Bounce(far_end, near_end));
    let floor = EventfdPeer::start(cpu);
    let mut next = 0u64;
    let mut floor_next = 0u64;
    let (ens, base) = interleave(
        reps,
        || {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..trips {
                    let mut slot = there.claim_async().await.unwrap();
                    slot[..8].copy_from_slice(&next.to_le_bytes());
                    slot.commit(8).unwrap();
                    assert_eq!(first_word(&back.recv_async().await.unwrap()), next);
                    next += 1;
                }
            });
            per_op(start, trips)
        },
        || {
            let start = Instant::now();
            floor.round_trips(floor_next, trips);
            floor_next += trips as u64;
            per_op(start, trips)
        },
    );
    let sleeps = back.stats().sleeps;
    println!(
        "ring_wakeup.{placement}: the parent slept in {:.0}% of its round trips",
        100.0 * sleeps as f64 / next as f64
    );
    drop(there);
    assert_eq!(rt.block_on(bouncing).unwrap(), next);
    drop(back);
    floor.stop();
    rt.block_on(child.stop()).unwrap();
    Row { scenario: format!("ring_wakeup.{placement}"), ensemble: ens, baseline: base, target: None }
}

// ---------------------------------------------------------------- the eventfd floor

/// A 4 KiB shared mapping: word 0 is the parent's ping, word 8 the child's pong.
struct SharedWords {
    ptr: *mut AtomicU64,
}

impl SharedWords {
    fn map(memfd: &OwnedFd) -> SharedWords {
        // SAFETY: maps 4096 bytes of a memfd of that size, shared and writable; the mapping is
        // never unmapped (the process ends first), so the pointer stays valid.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
        SharedWords { ptr: ptr.cast() }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: i < 512 words of a live, page-aligned shared mapping, accessed only atomically.
        unsafe { &*self.ptr.add(i) }
    }
}

fn eventfd() -> OwnedFd {
    // Inheritable on purpose: the floor's child gets it by number.
    rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap()
}

fn ring_bell(fd: &AsyncFd<OwnedFd>) {
    rustix::io::write(fd.get_ref(), &1u64.to_ne_bytes()).unwrap();
}

async fn wait_bell(fd: &AsyncFd<OwnedFd>) {
    loop {
        let mut guard = fd.readable().await.unwrap();
        let mut buf = [0u8; 8];
        if guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf).map_err(io::Error::from)).is_ok() {
            return;
        }
    }
}

fn register(fd: OwnedFd) -> AsyncFd<OwnedFd> {
    // SAFETY: the `AsyncFd` owns the descriptor, so it stays open and names the same eventfd
    // until the registration is dropped.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.unwrap()
}

/// The floor's child: waits on its bell, copies ping to pong, rings the parent's bell; a ping
/// of `u64::MAX` ends it.
pub fn eventfd_child(fds: &str) {
    let own = |n: &str| {
        let n: i32 = n.parse().unwrap();
        // SAFETY: the parent passed these descriptors open, by number, to this process only,
        // and each number appears once.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) }
    };
    let mut fds = fds.split(',').map(own);
    let (memfd, to_child, to_parent) = (fds.next().unwrap(), fds.next().unwrap(), fds.next().unwrap());
    let words = SharedWords::map(&memfd);
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    rt.block_on(async {
        let (bell, parent) = (register(to_child), register(to_parent));
        loop {
            wait_bell(&bell).await;
            let ping = words.word(0).load(Ordering::Acquire);
            if ping == u64::MAX {
                break;
            }
            words.word(8).store(ping, Ordering::Release);
            ring_bell(&parent);
        }
    });
}

struct EventfdPeer {
    child: Child,
    words: SharedWords,
    to_child: AsyncFd<OwnedFd>,
    to_parent: AsyncFd<OwnedFd>,
    rt: tokio::runtime::Runtime,
}

impl EventfdPeer {
    fn start(cpu: usize) -> EventfdPeer {
        let memfd = rustix::fs::memfd_create("bench-eventfd-floor", rustix::fs::MemfdFlags::empty()).unwrap();
        rustix::fs::ftruncate(&memfd, 4096).unwrap();
        let (to_child, to_parent) = (eventfd(), eventfd());
        let numbers = [&memfd, &to_child, &to_parent].map(|fd| fd.as_raw_fd().to_string()).join(",");
        let child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, format!("eventfd {numbers} {cpu}"))
            .spawn()
            .unwrap();
        // Later children must not inherit them.
        for fd in [&memfd, &to_child, &to_parent] {
            rustix::io::fcntl_setfd(fd.as_fd(), rustix::io::FdFlags::CLOEXEC).unwrap();
        }
        let words = SharedWords::map(&memfd);
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let (to_child, to_parent) = {
            let _entered = rt.enter();
            (register(to_child), register(to_parent))
        };
        EventfdPeer { child, words, to_child, to_parent, rt }
    }

    fn round_trips(&self, first: u64, count: usize) {
        self.rt.block_on(async {
            for n in first..first + count as u64 {
                self.words.word(0).store(n, Ordering::Release);
                ring_bell(&self.to_child);
                wait_bell(&self.to_parent).await;
                assert_eq!(self.words.word(8).load(Ordering::Acquire), n);
            }
        });
    }

    fn stop(mut self) {
        self.words.word(0).store(u64::MAX, Ordering::Release);
        ring_bell(&self.to_child);
        assert!(self.child.wait().unwrap().success());
    }
}
