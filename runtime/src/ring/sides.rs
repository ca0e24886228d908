//! The line each end of a ring keeps about itself (pid, start time, "I sleep", closed), laid
//! out the same in both kinds of ring (`ends.rs`, `spsc.rs`), and what one end may conclude
//! from what the other wrote there.

use super::index_queue::Corrupt;
use super::layout as at;
use super::wait::Counts;
use super::{RingError, RingStats};
use crate::sys::ring_memory::RingMemory;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which end of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Producer,
    Consumer,
}

impl Role {
    /// First word of this end's line.
    pub(super) fn line(self) -> usize {
        match self {
            Role::Producer => at::PRODUCER,
            Role::Consumer => at::CONSUMER,
        }
    }

    pub(super) fn peer(self) -> Role {
        match self {
            Role::Producer => Role::Consumer,
            Role::Consumer => Role::Producer,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        }
    }
}

/// The two lines of a ring, seen from the end `role`.
pub(super) struct Sides<'a> {
    pub memory: &'a RingMemory,
    pub role: Role,
}

impl<'a> Sides<'a> {
    /// Word `word` (`at::S_*`) of this end's line.
    pub(super) fn own(&self, word: usize) -> &'a AtomicU64 {
        &self.memory.words(self.role.line() + word, 1)[0]
    }

    /// Word `word` of the other end's line.
    pub(super) fn peer(&self, word: usize) -> &'a AtomicU64 {
        &self.memory.words(self.role.peer().line() + word, 1)[0]
    }

    /// Writes this process as the holder of this end.
    pub(super) fn claim(&self) {
        let (pid, start) = this_process();
        self.own(at::S_PID).store(u64::from(pid), Ordering::Relaxed);
        self.own(at::S_START).store(start, Ordering::Release);
    }

    /// Says in the ring that this end is closed (its peer is woken separately).
    pub(super) fn close(&self) {
        self.own(at::S_CLOSED).store(1, Ordering::SeqCst);
    }

    pub(super) fn peer_closed(&self) -> bool {
        self.peer(at::S_CLOSED).load(Ordering::SeqCst) != 0
    }

    /// The words the peer writes about itself hold what a correct peer writes (0 or 1).
    pub(super) fn check_peer(&self) -> Result<(), Corrupt> {
        for (word, name) in [(at::S_CLOSED, "closed flag"), (at::S_SLEEPING, "sleeping flag")] {
            if self.peer(word).load(Ordering::Relaxed) > 1 {
                return Err(Corrupt(name));
            }
        }
        Ok(())
    }

    /// The error for a peer that is no longer there: closed, or gone without closing.
    pub(super) fn peer_error(&self) -> RingError {
        let peer = self.role.peer().name();
        match self.peer_closed() {
            true => RingError::Closed { peer },
            false => RingError::PeerGone { peer, pid: self.peer(at::S_PID).load(Ordering::Relaxed) as u32 },
        }
    }
}

/// What an end counted, from its waiter's counts and the ring's frame counts.
pub(super) fn stats(counts: &Counts, overwritten: u64, committed: u64) -> RingStats {
    RingStats {
        sleeps: counts.sleeps.load(Ordering::Relaxed),
        safety_timeouts: counts.safety_timeouts.load(Ordering::Relaxed),
        lost_wakeups: counts.lost_wakeups.load(Ordering::Relaxed),
        overwritten,
        committed,
    }
}

/// This process's pid and start time (clock ticks after boot, field 22 of `/proc/PID/stat`):
/// together they name a process for good, where a pid alone may be reused.
fn this_process() -> (u32, u64) {
    let start = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        })
        .unwrap_or(0);
    (std::process::id(), start)
}
