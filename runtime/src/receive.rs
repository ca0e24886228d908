//! Receiving frames with a short, adaptive spin before blocking.
//!
//! A thread blocked in `recv` is woken by the kernel when a frame arrives; on a virtual machine
//! whose other CPU is idle that wake-up costs about 25 µs (see `../shared/BENCHMARKING.md`).
//! When an answer is expected soon, looking for it a little while first (yielding the CPU
//! between looks, so that a peer on the same CPU runs) avoids that cost. The spin is bounded
//! and backs off by itself when it keeps finding nothing, so an idle or slow peer costs next to
//! nothing.
//!
//! A thread that may run on one CPU only never spins: there, looking is what keeps its peer
//! (pinned to the same CPU) from running, and yielding costs more than blocking.

use ipc_channel::ipc::IpcBytesReceiver;
use ipc_channel::TryRecvError;
use std::time::{Duration, Instant};

/// How long one spin looks before blocking.
const SPIN: Duration = Duration::from_micros(50);

/// A receiver that spins briefly, when asked and while it pays off, before blocking.
pub struct Receiver {
    inner: IpcBytesReceiver,
    /// Whether this thread may run on more than one CPU.
    may_spin: bool,
    /// Above zero: recent spins found frames. Below: they did not; skip spinning for a while.
    score: i32,
}

/// The sending side is gone.
#[derive(Debug)]
pub struct Closed;

impl Receiver {
    /// Wraps an ipc-channel byte receiver.
    pub fn new(inner: IpcBytesReceiver) -> Self {
        Receiver { inner, may_spin: crate::sys::cpus_allowed() > 1, score: 0 }
    }

    /// The next frame. Spins first when `expecting` says a frame is due soon.
    ///
    /// # Errors
    /// [`Closed`] when every sender is gone.
    pub fn recv(&mut self, expecting: bool) -> Result<Vec<u8>, Closed> {
        if expecting && self.may_spin {
            if self.score >= 0 {
                match self.spin() {
                    Some(frame) => {
                        self.score = (self.score + 1).min(8);
                        return frame;
                    }
                    None => self.score -= 4,
                }
            } else {
                self.score += 1; // look again after a few waits
            }
        }
        self.inner.recv().map_err(|_| Closed)
    }

    /// A frame already waiting, if any, without blocking.
    pub fn try_recv(&self) -> Option<Result<Vec<u8>, Closed>> {
        match self.inner.try_recv() {
            Ok(frame) => Some(Ok(frame)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::IpcError(_)) => Some(Err(Closed)),
        }
    }

    fn spin(&self) -> Option<Result<Vec<u8>, Closed>> {
        let start = Instant::now();
        loop {
            if let Some(frame) = self.try_recv() {
                return Some(frame);
            }
            if start.elapsed() >= SPIN {
                return None;
            }
            std::thread::yield_now();
        }
    }
}
