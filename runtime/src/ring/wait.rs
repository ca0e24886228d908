//! How one side of a ring waits for the other: a short spin, then "I sleep" in the ring, a
//! re-check, and a sleep on its end of the ring's socket pair, with a safety timeout.
//!
//! The socket pair (unix stream sockets) is the ring's doorbell and its liveness signal at once:
//! each end holds one socket; a side wakes the other by sending one byte on its own socket
//! (only after it saw "I sleep"), and when every holder of one socket is gone (a killed process
//! included), the other reads the end of the stream. Bytes coalesce, so one short read takes
//! every pending doorbell. Each send and receive is `MSG_DONTWAIT` by itself, whatever flags a
//! peer sets on the shared open file description; a full socket buffer means a wake-up is
//! already pending. Descriptors a peer might attach are closed on receipt.
//!
//! The protocol is Dekker's: the sleeper stores its flag, fences, and re-checks the ring; the
//! other side publishes, fences, and reads the flag. With both fences sequentially consistent,
//! at least one of them sees the other's store: the sleeper finds the work, or the waker rings.

use crate::sys::{reactor, socket};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// The longest sleep before a waiter looks again by itself. A wake-up that never comes costs
/// this much latency, and is counted.
pub(crate) const SAFETY_TIMEOUT: Duration = Duration::from_millis(100);

/// Doorbells in a row that found nothing ready before a polled wait yields to other tasks.
const MAX_EMPTY_RINGS: u32 = 4;

/// Spin rounds before sleeping, each a few `spin_loop` hints: a few microseconds in all.
const SPIN_ROUNDS: u32 = 64;

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// Look again: the condition may hold (a wake-up, or a spin that saw it).
    Look,
    /// Every holder of the other side's socket is gone.
    HungUp,
    /// The caller's deadline passed.
    TimedOut,
}

/// This process's counts for one end.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub sleeps: AtomicU64,
    pub safety_timeouts: AtomicU64,
    pub lost_wakeups: AtomicU64,
}

/// What one end waits with.
#[derive(Debug)]
pub(crate) struct Waiter {
    /// This side's socket of the ring's pair: the other side's doorbell rings here, and it
    /// hangs up when the other side is gone.
    pub socket: Arc<OwnedFd>,
    pub counts: Counts,
    registered: Option<Registered>,
    /// The longest sleep before looking again by itself ([`SAFETY_TIMEOUT`] unless set).
    pub safety: Duration,
}

#[derive(Debug)]
struct Registered {
    /// The runtime whose reactor holds the registration.
    runtime: tokio::runtime::Id,
    socket: AsyncFd<reactor::Owner<Arc<OwnedFd>>>,
    safety: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether a doorbell was read since the safety timer was set.
    rung: bool,
}

/// Whether spinning can pay: another CPU may be running the other side. (Asked each time:
/// a thread may be pinned after it started.)
fn many_cpus() -> bool {
    crate::sys::cpus_allowed() > 1
}

/// Spins a little while `ready` does not hold; whether it came to hold.
fn spin(ready: &impl Fn() -> bool) -> bool {
    if !many_cpus() {
        return false;
    }
    for round in 0..SPIN_ROUNDS {
        if ready() {
            return true;
        }
        for _ in 0..(1 << (round / 16).min(3)) * 8 {
            std::hint::spin_loop();
        }
    }
    ready()
}

/// Rings the other side's doorbell (through `own`, this side's socket of the pair) if the
/// other side's flag `sleeping` says it sleeps. Call after publishing.
pub(crate) fn wake(sleeping: &AtomicU64, own: &OwnedFd) {
    fence(Ordering::SeqCst);
    if sleeping.load(Ordering::Relaxed) != 0 && sleeping.swap(0, Ordering::SeqCst) != 0 {
        ring(own);
    }
}

/// Sends one doorbell byte on `own`. A full buffer (wake-ups are pending) and a gone peer are
/// both fine.
pub(crate) fn ring(own: &OwnedFd) {
    let _ = socket::send_datagram(own.as_fd(), &[b"!"], &[]);
}

impl Waiter {
    pub(crate) fn new(socket: Arc<OwnedFd>) -> Waiter {
        Waiter { socket, counts: Counts::default(), registered: None, safety: SAFETY_TIMEOUT }
    }

    /// Reads every pending doorbell (closing any descriptor a peer attached); whether there
    /// was one, and whether the other side hung up.
    fn drain(&self) -> (bool, bool) {
        let mut buf = [0u8; 64];
        let mut rung = false;
        // Bounded: a peer that keeps sending cannot keep us here.
        for _ in 0..64 {
            match socket::recv_datagram(self.socket.as_fd(), &mut buf) {
                // The end of the stream: every holder of the other end is gone.
                Ok(received) if received.len == 0 && received.fds.is_empty() => return (rung, true),
                // Doorbells coalesce in a stream: a short read took all that was pending.
                Ok(received) if received.len < buf.len() => return (true, false),
                Ok(_) => rung = true,
                // Nothing pending: at the end of the stream `recv` would have read 0 instead.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (rung, false),
                Err(_) => break,
            }
        }
        (rung, socket::peer_hung_up(self.socket.as_fd()))
    }

    /// Whether every holder of the other side's socket is gone. Drains pending doorbells
    /// first, so that a descriptor a peer sent along cannot keep its own socket alive.
    pub(crate) fn peer_hung_up(&self) -> bool {
        self.drain().1
    }

    /// Blocks until `ready` may hold, the other side is gone, or `deadline`.
    pub(crate) fn sleep(
        &self,
        sleeping: &AtomicU64,
        ready: impl Fn() -> bool,
        deadline: Option<Instant>,
    ) -> io::Result<Woke> {
        if spin(&ready) {
            return Ok(Woke::Look);
        }
        loop {
            sleeping.store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if ready() {
                sleeping.store(0, Ordering::Relaxed);
                return Ok(Woke::Look);
            }
            let timeout = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(self.safety),
                    _ => {
                        sleeping.store(0, Ordering::Relaxed);
                        return Ok(Woke::TimedOut);
                    }
                },
                None => self.safety,
            };
            self.counts.sleeps.fetch_add(1, Ordering::Relaxed);
            let woke = socket::wait_readable(&[self.socket.as_fd()], timeout);
            sleeping.store(0, Ordering::Relaxed);
            match woke? {
                Some(_) => {
                    let (rung, hung_up) = self.drain();
                    if rung || !hung_up {
                        return Ok(Woke::Look);
                    }
                    return Ok(Woke::HungUp);
                }
                None => {
                    if self.timed_out(&ready, false) {
                        return Ok(Woke::Look);
                    }
                }
            }
        }
    }

    /// Counts a safety timeout; whether it found work (then, unless a doorbell was read, a
    /// wake-up that was lost or very late).
    fn timed_out(&self, ready: &impl Fn() -> bool, rung: bool) -> bool {
        self.counts.safety_timeouts.fetch_add(1, Ordering::Relaxed);
        let found = ready();
        if found && !rung {
            self.counts.lost_wakeups.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// A look found work: the waits before it are over. A safety timer that had expired by then
    /// (the task was woken by it, not by a doorbell) is counted here, where the look happens.
    pub(crate) fn settled(&mut self) {
        if let Some(registered) = &mut self.registered {
            if let Some(safety) = registered.safety.take() {
                if safety.is_elapsed() {
                    self.counts.safety_timeouts.fetch_add(1, Ordering::Relaxed);
                    if !registered.rung {
                        self.counts.lost_wakeups.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            registered.rung = false;
        }
    }

    /// The registration with the current runtime's reactor, made again when the end is used
    /// on another runtime than before.
    fn registered(&mut self) -> io::Result<&mut Registered> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?.id();
        if self.registered.as_ref().is_none_or(|r| r.runtime != runtime) {
            self.registered = None;
            let socket = reactor::register(Arc::clone(&self.socket))?;
            self.registered = Some(Registered { runtime, socket, safety: None, rung: false });
        }
        Ok(self.registered.as_mut().expect("registered above"))
    }

    /// As [`sleep`](Self::sleep), for a task: registers this end's socket with the current
    /// tokio runtime's reactor on first use (and again on another runtime).
    ///
    /// # Errors
    /// Outside a tokio runtime, or when the reactor refuses the socket.
    ///
    /// # Panics
    /// In a tokio runtime without time enabled (actix's arbiters have it).
    pub(crate) fn poll_sleep(
        &mut self,
        cx: &mut Context<'_>,
        sleeping: &AtomicU64,
        ready: impl Fn() -> bool,
    ) -> Poll<io::Result<Woke>> {
        // Doorbells that found nothing ready: a peer may ring without publishing anything, and
        // on a multi-thread runtime another worker may mark the socket readable again at once;
        // after a few, this task yields instead of looping.
        let mut empty_rings = 0;
        loop {
            self.registered()?;
            sleeping.store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if ready() {
                sleeping.store(0, Ordering::Relaxed);
                return Poll::Ready(Ok(Woke::Look));
            }
            let registered = self.registered.as_mut().expect("registered above");
            if let Poll::Ready(guard) = registered.socket.poll_read_ready(cx) {
                let mut guard = guard?;
                guard.clear_ready();
                let (rung, hung_up) = self.drain();
                let registered = self.registered.as_mut().expect("registered above");
                registered.rung |= rung;
                if hung_up && !rung {
                    sleeping.store(0, Ordering::Relaxed);
                    return Poll::Ready(Ok(Woke::HungUp));
                }
                if rung && ready() {
                    sleeping.store(0, Ordering::Relaxed);
                    return Poll::Ready(Ok(Woke::Look));
                }
                if rung {
                    empty_rings += 1;
                    if empty_rings >= MAX_EMPTY_RINGS {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                // Readiness that was already consumed: look again, registering interest anew.
                continue;
            }
            self.counts.sleeps.fetch_add(1, Ordering::Relaxed);
            let timeout = self.safety;
            let safety = registered.safety.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            if safety.as_mut().poll(cx).is_ready() {
                let rung = registered.rung;
                registered.safety = None;
                registered.rung = false;
                sleeping.store(0, Ordering::Relaxed);
                self.timed_out(&ready, rung);
                return Poll::Ready(Ok(Woke::Look));
            }
            return Poll::Pending;
        }
    }
}
