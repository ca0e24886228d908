//! How one side of a ring waits for the other: a short spin, then "I sleep" in the ring, a
//! re-check, and a sleep on its eventfd (rung by the other side only after it saw "I sleep")
//! and on its liveness socket (hung up when the other side's holders are all gone), with a
//! safety timeout.
//!
//! The protocol is Dekker's: the sleeper stores its flag, fences, and re-checks the ring; the
//! other side publishes, fences, and reads the flag. With both fences sequentially consistent,
//! at least one of them sees the other's store: the sleeper finds the work, or the waker rings.

use crate::sys::{eventfd, reactor, socket};
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

/// Spin rounds before sleeping, each a few `spin_loop` hints: a few microseconds in all.
const SPIN_ROUNDS: u32 = 64;

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// Look again: the condition may hold (a wake-up, or a spin that saw it).
    Look,
    /// Every holder of the other side's liveness socket is gone.
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
    /// This side's eventfd, rung by the other side.
    pub bell: Arc<OwnedFd>,
    /// This side's end of the liveness socket pair.
    pub live: Arc<OwnedFd>,
    pub counts: Counts,
    registered: Option<Registered>,
}

#[derive(Debug)]
struct Registered {
    bell: AsyncFd<reactor::Owner<Arc<OwnedFd>>>,
    live: AsyncFd<reactor::Owner<Arc<OwnedFd>>>,
    safety: Option<Pin<Box<tokio::time::Sleep>>>,
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

/// Rings `bell` if the side whose flag is `sleeping` said it sleeps. Call after publishing.
pub(crate) fn wake(sleeping: &AtomicU64, bell: &OwnedFd) {
    fence(Ordering::SeqCst);
    if sleeping.load(Ordering::Relaxed) != 0 && sleeping.swap(0, Ordering::SeqCst) != 0 {
        let _ = eventfd::add(bell.as_fd(), 1);
    }
}

impl Waiter {
    pub(crate) fn new(bell: Arc<OwnedFd>, live: Arc<OwnedFd>) -> Waiter {
        Waiter { bell, live, counts: Counts::default(), registered: None }
    }

    /// Whether every holder of the other side's liveness socket is gone.
    pub(crate) fn peer_hung_up(&self) -> bool {
        socket::peer_hung_up(self.live.as_fd())
    }

    /// Something the liveness socket says that is not a hang-up: data no correct peer sends.
    /// Read it and drop it, so that polling does not spin on it.
    fn discard_junk(&self) {
        let mut buf = [0u8; 64];
        while socket::recv_datagram(self.live.as_fd(), &mut buf).is_ok_and(|r| r.len > 0) {}
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
                    Some(left) if !left.is_zero() => left.min(SAFETY_TIMEOUT),
                    _ => {
                        sleeping.store(0, Ordering::Relaxed);
                        return Ok(Woke::TimedOut);
                    }
                },
                None => SAFETY_TIMEOUT,
            };
            self.counts.sleeps.fetch_add(1, Ordering::Relaxed);
            let woke = socket::wait_readable(&[self.bell.as_fd(), self.live.as_fd()], timeout);
            sleeping.store(0, Ordering::Relaxed);
            match woke? {
                Some(0) => {
                    eventfd::take(self.bell.as_fd())?;
                    return Ok(Woke::Look);
                }
                Some(_) if self.peer_hung_up() => return Ok(Woke::HungUp),
                Some(_) => self.discard_junk(),
                None => {
                    if self.timed_out(&ready) {
                        return Ok(Woke::Look);
                    }
                }
            }
        }
    }

    /// Counts a safety timeout; whether it found work (a lost wake-up).
    fn timed_out(&self, ready: &impl Fn() -> bool) -> bool {
        self.counts.safety_timeouts.fetch_add(1, Ordering::Relaxed);
        let lost = ready();
        if lost {
            self.counts.lost_wakeups.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }

    /// The waits since the last successful look are over: the safety timer starts afresh.
    pub(crate) fn settled(&mut self) {
        if let Some(registered) = &mut self.registered {
            registered.safety = None;
        }
    }

    /// As [`sleep`](Self::sleep), for a task: registers this end's descriptors with the current
    /// tokio runtime's reactor on first use.
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O and time enabled (actix's arbiters are such runtimes).
    pub(crate) fn poll_sleep(
        &mut self,
        cx: &mut Context<'_>,
        sleeping: &AtomicU64,
        ready: impl Fn() -> bool,
    ) -> Poll<io::Result<Woke>> {
        if self.registered.is_none() {
            let bell = reactor::register(Arc::clone(&self.bell))?;
            let live = reactor::register(Arc::clone(&self.live))?;
            self.registered = Some(Registered { bell, live, safety: None });
        }
        sleeping.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if ready() {
            sleeping.store(0, Ordering::Relaxed);
            return Poll::Ready(Ok(Woke::Look));
        }
        let registered = self.registered.as_mut().expect("registered above");
        // The liveness socket is readable only when it hangs up (or a broken peer writes to
        // it): no system call on this path while the other side lives.
        if let Poll::Ready(guard) = registered.live.poll_read_ready(cx) {
            let mut guard = guard?;
            if socket::peer_hung_up(self.live.as_fd()) {
                sleeping.store(0, Ordering::Relaxed);
                return Poll::Ready(Ok(Woke::HungUp));
            }
            guard.clear_ready();
            let mut buf = [0u8; 64];
            while socket::recv_datagram(self.live.as_fd(), &mut buf).is_ok_and(|r| r.len > 0) {}
            return Poll::Ready(Ok(Woke::Look));
        }
        if let Poll::Ready(guard) = registered.bell.poll_read_ready(cx) {
            let mut guard = guard?;
            let taken = eventfd::take(self.bell.as_fd())?;
            guard.clear_ready();
            sleeping.store(0, Ordering::Relaxed);
            if taken.is_some() {
                registered.safety = None;
                return Poll::Ready(Ok(Woke::Look));
            }
            // Readiness that was already consumed: register interest again.
            return self.poll_sleep(cx, sleeping, ready);
        }
        self.counts.sleeps.fetch_add(1, Ordering::Relaxed);
        let safety = registered.safety.get_or_insert_with(|| Box::pin(tokio::time::sleep(SAFETY_TIMEOUT)));
        if safety.as_mut().poll(cx).is_ready() {
            registered.safety = None;
            sleeping.store(0, Ordering::Relaxed);
            self.timed_out(&ready);
            return Poll::Ready(Ok(Woke::Look));
        }
        Poll::Pending
    }
}
