//! A bounded queue of buffer indexes in shared memory, safe for any number of enqueuers and
//! dequeuers in any processes (Dmitry Vyukov's bounded MPMC queue).
//!
//! Each cell has a sequence word and a value word. Cell `i` is free for the enqueuer at position
//! `p` (with `p % capacity == i`) when its sequence is `p`, and holds a value for the dequeuer at
//! position `p` when its sequence is `p + 1`; the dequeuer then sets it to `p + capacity`, which
//! frees it for the enqueuer one lap later. Positions only grow (64 bits: no wrap-around in the
//! life of a ring), so a position compared-and-swapped is never confused with an older one.
//!
//! A ring has two: the committed queue (the producer enqueues a filled buffer; the consumer
//! dequeues it, and so does the producer when it overwrites the oldest) and the free queue (the
//! consumer enqueues a buffer it is done with; the producer dequeues it). Neither can be full:
//! each can hold every buffer at once.
//!
//! A queue that looks full is one whose dequeuer one lap back took its position and has not
//! yet freed the cell (it is between two instructions, or was preempted there): the enqueuer
//! waits for it, spinning, then yielding.
//!
//! The peer is another process and may be broken or hostile (or killed between those two
//! instructions): a value is checked against the number of buffers, positions and sequences
//! wrap instead of overflowing, and a wait or a retry loop (also one of lost compare-and-swaps)
//! that a peer could prolong by rewriting words gives up after [`GIVE_UP`]; both are reported
//! as [`Corrupt`].
//!
//! The protocol is model-checked with loom (every interleaving of a producer, a consumer and an
//! overwriting producer on a two-buffer ring):
//! `RUSTFLAGS="--cfg ensemble_loom" cargo test -p ensemble-runtime --release --lib loom`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A 64-bit atomic word: the standard one in shared memory, loom's under the model checker.
pub(crate) trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

impl Word for AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }

    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order);
    }

    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        AtomicU64::compare_exchange_weak(self, current, new, success, failure)
    }
}

/// The peer wrote something a correct peer never writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the ring's {0} is corrupt: its other side wrote what no correct peer writes")]
pub struct Corrupt(pub &'static str);

/// How long an operation waits for a cell, or keeps losing races, before calling the queue
/// corrupt. Honest parties hold a cell for a few instructions (plus a preemption).
pub(crate) const GIVE_UP: Duration = Duration::from_secs(1);

/// Spins, then yields; errors once [`GIVE_UP`] has passed since the first wait.
struct Patience {
    attempts: u32,
    since: Option<Instant>,
}

impl Patience {
    fn new() -> Patience {
        Patience { attempts: 0, since: None }
    }

    fn wait(&mut self, name: &'static str) -> Result<(), Corrupt> {
        self.attempts += 1;
        if cfg!(ensemble_loom) {
            #[cfg(ensemble_loom)]
            loom::thread::yield_now();
            return Ok(());
        }
        if self.attempts < 64 {
            std::hint::spin_loop();
            return Ok(());
        }
        std::thread::yield_now();
        if self.attempts.is_multiple_of(256)
            && self.since.get_or_insert_with(Instant::now).elapsed() > GIVE_UP
        {
            return Err(Corrupt(name));
        }
        Ok(())
    }
}

/// A view of one queue in a ring's words.
#[derive(Debug)]
pub(crate) struct IndexQueue<'a, W: Word = AtomicU64> {
    pub enqueue: &'a W,
    pub dequeue: &'a W,
    /// `2 * capacity` words: sequence, value, sequence, value, ...
    pub cells: &'a [W],
    /// Values must be below this.
    pub bound: u64,
    pub name: &'static str,
}

impl<W: Word> Clone for IndexQueue<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W: Word> Copy for IndexQueue<'_, W> {}

impl<W: Word> IndexQueue<'_, W> {
    fn capacity(&self) -> u64 {
        (self.cells.len() / 2) as u64
    }

    fn cell(&self, position: u64) -> (&W, &W) {
        let i = (position % self.capacity()) as usize * 2;
        (&self.cells[i], &self.cells[i + 1])
    }

    /// Lays out an empty queue: every cell free for the first lap.
    pub(crate) fn init(&self) {
        for position in 0..self.capacity() {
            let (sequence, value) = self.cell(position);
            sequence.store(position, Ordering::Relaxed);
            value.store(0, Ordering::Relaxed);
        }
        self.enqueue.store(0, Ordering::Relaxed);
        self.dequeue.store(0, Ordering::Release);
    }

    /// Appends `value`. A queue that stays full (impossible for a ring's queues) is corrupt.
    pub(crate) fn push(&self, value: u64) -> Result<(), Corrupt> {
        let mut position = self.enqueue.load(Ordering::Relaxed);
        let mut patience = Patience::new();
        loop {
            let (sequence, slot) = self.cell(position);
            let seen = sequence.load(Ordering::Acquire);
            match seen.wrapping_sub(position) as i64 {
                0 => match self.enqueue.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        slot.store(value, Ordering::Relaxed);
                        sequence.store(position.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(now) => {
                        patience.wait(self.name)?;
                        position = now;
                    }
                },
                // Behind: the cell's last dequeuer has not freed it yet. Ahead: another
                // enqueuer took this position. Either way, wait a little and look again.
                _ => {
                    patience.wait(self.name)?;
                    position = self.enqueue.load(Ordering::Relaxed);
                }
            }
        }
    }

    /// Takes the oldest value, or `None` when the queue is empty.
    pub(crate) fn pop(&self) -> Result<Option<u64>, Corrupt> {
        let mut position = self.dequeue.load(Ordering::Relaxed);
        let mut patience = Patience::new();
        loop {
            let (sequence, slot) = self.cell(position);
            let seen = sequence.load(Ordering::Acquire);
            match seen.wrapping_sub(position.wrapping_add(1)) as i64 {
                0 => match self.dequeue.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let value = slot.load(Ordering::Relaxed);
                        sequence.store(position.wrapping_add(self.capacity()), Ordering::Release);
                        return match value < self.bound {
                            true => Ok(Some(value)),
                            false => Err(Corrupt(self.name)),
                        };
                    }
                    Err(now) => {
                        patience.wait(self.name)?;
                        position = now;
                    }
                },
                d if d < 0 => return Ok(None),
                _ => {
                    patience.wait(self.name)?;
                    position = self.dequeue.load(Ordering::Relaxed);
                }
            }
        }
    }

    /// Whether a value is ready at the head (a hint: it may be taken by the time one looks).
    pub(crate) fn looks_non_empty(&self) -> bool {
        let position = self.dequeue.load(Ordering::Relaxed);
        self.cell(position).0.load(Ordering::Acquire) == position.wrapping_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    struct Words(Vec<AtomicU64>);

    impl Words {
        fn new(capacity: usize) -> Arc<Words> {
            Arc::new(Words((0..2 + 2 * capacity).map(|_| AtomicU64::new(0)).collect()))
        }

        fn queue(&self, bound: u64) -> IndexQueue<'_> {
            IndexQueue {
                enqueue: &self.0[0],
                dequeue: &self.0[1],
                cells: &self.0[2..],
                bound,
                name: "test queue",
            }
        }
    }

    #[test]
    fn values_come_out_in_order_lap_after_lap() {
        let words = Words::new(4);
        let q = words.queue(100);
        q.init();
        for lap in 0..5 {
            for v in 0..4 {
                q.push(lap * 4 + v).unwrap();
            }
            if lap == 0 {
                assert_eq!(q.push(99), Err(Corrupt("test queue")), "a fifth value never fits");
            }
            assert!(q.looks_non_empty());
            for v in 0..4 {
                assert_eq!(q.pop().unwrap(), Some(lap * 4 + v));
            }
            assert_eq!(q.pop().unwrap(), None);
            assert!(!q.looks_non_empty());
        }
    }

    #[test]
    fn a_value_out_of_bounds_is_corrupt() {
        let words = Words::new(2);
        let q = words.queue(3);
        q.init();
        q.push(7).unwrap();
        assert_eq!(q.pop(), Err(Corrupt("test queue")));
    }

    #[test]
    fn positions_written_by_a_peer_at_the_end_of_the_range_wrap_instead_of_panicking() {
        let words = Words::new(2);
        let q = words.queue(3);
        q.init();
        for word in [q.enqueue, q.dequeue] {
            word.store(u64::MAX, Ordering::Relaxed);
        }
        q.cells[2].store(u64::MAX, Ordering::Relaxed);
        let _ = q.looks_non_empty();
        let _ = q.pop();
        let _ = q.push(1);
    }

    #[test]
    fn a_sequence_word_rewritten_by_a_peer_never_hangs() {
        let words = Words::new(2);
        let q = words.queue(3);
        q.init();
        q.cells[0].store(u64::MAX / 2, Ordering::Relaxed);
        assert!(q.push(1).is_err());
    }

    /// Buffers circulate between two queues as in a ring, from several threads at once:
    /// every buffer is always in exactly one place, none is lost or seen twice.
    #[test]
    fn buffers_circulating_between_two_queues_from_many_threads_are_never_lost_or_doubled() {
        const BUFFERS: u64 = 8;
        let committed = Words::new(8);
        let free = Words::new(8);
        committed.queue(BUFFERS).init();
        free.queue(BUFFERS).init();
        for b in 0..BUFFERS {
            free.queue(BUFFERS).push(b).unwrap();
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (committed, free) = (Arc::clone(&committed), Arc::clone(&free));
                std::thread::spawn(move || {
                    let (c, f) = (committed.queue(BUFFERS), free.queue(BUFFERS));
                    for i in 0..20_000 {
                        // Even threads produce (free -> committed), odd ones consume.
                        let (from, to) = if (t + i) % 2 == 0 { (f, c) } else { (c, f) };
                        if let Some(b) = from.pop().unwrap() {
                            to.push(b).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut seen = HashSet::new();
        for q in [committed.queue(BUFFERS), free.queue(BUFFERS)] {
            while let Some(b) = q.pop().unwrap() {
                assert!(seen.insert(b), "buffer {b} twice");
            }
        }
        assert_eq!(seen.len() as u64, BUFFERS);
    }
}

/// Every interleaving of the ring's parties on one two-buffer ring, explored by loom: buffers
/// are never lost or doubled, and what the consumer takes is what the producer committed.
#[cfg(all(test, ensemble_loom))]
mod loom_model {
    use super::*;
    use loom::sync::atomic::AtomicU64 as LoomU64;
    use loom::sync::Arc;

    impl Word for LoomU64 {
        fn load(&self, order: Ordering) -> u64 {
            LoomU64::load(self, order)
        }

        fn store(&self, value: u64, order: Ordering) {
            LoomU64::store(self, value, order);
        }

        fn compare_exchange_weak(
            &self,
            current: u64,
            new: u64,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u64, u64> {
            LoomU64::compare_exchange_weak(self, current, new, success, failure)
        }
    }

    const BUFFERS: u64 = 2;

    /// Two queues of capacity 2 (committed, free) and the payload word of each buffer.
    struct Ring {
        words: Vec<LoomU64>,
    }

    impl Ring {
        fn new() -> Arc<Ring> {
            let ring = Ring { words: (0..2 * 6 + 2).map(|_| LoomU64::new(0)).collect() };
            ring.committed().init();
            ring.free().init();
            for b in 0..BUFFERS {
                ring.free().push(b).unwrap();
            }
            Arc::new(ring)
        }

        fn queue(&self, at: usize, name: &'static str) -> IndexQueue<'_, LoomU64> {
            IndexQueue {
                enqueue: &self.words[at],
                dequeue: &self.words[at + 1],
                cells: &self.words[at + 2..at + 6],
                bound: BUFFERS,
                name,
            }
        }

        fn committed(&self) -> IndexQueue<'_, LoomU64> {
            self.queue(0, "committed")
        }

        fn free(&self) -> IndexQueue<'_, LoomU64> {
            self.queue(6, "free")
        }

        fn payload(&self, buffer: u64) -> &LoomU64 {
            &self.words[12 + buffer as usize]
        }
    }

    /// The producer commits frames 1 and 2 (overwriting the oldest when nothing is free); the
    /// consumer takes what it finds and gives it back. Afterwards each buffer is in exactly one
    /// queue, and every frame the consumer saw was whole (its payload was written before it was
    /// committed and not rewritten while lent).
    #[test]
    fn buffers_are_never_lost_doubled_or_written_while_lent() {
        loom::model(|| {
            let ring = Ring::new();
            let consumer = {
                let ring = Arc::clone(&ring);
                loom::thread::spawn(move || {
                    let mut seen = Vec::new();
                    for _ in 0..2 {
                        if let Some(b) = ring.committed().pop().unwrap() {
                            let frame = ring.payload(b).load(Ordering::Relaxed);
                            loom::thread::yield_now();
                            assert_eq!(ring.payload(b).load(Ordering::Relaxed), frame, "written while lent");
                            seen.push(frame);
                            ring.free().push(b).unwrap();
                        }
                    }
                    seen
                })
            };
            for frame in 1..=2 {
                let b = match ring.free().pop().unwrap() {
                    Some(b) => b,
                    None => match ring.committed().pop().unwrap() {
                        Some(b) => b,
                        None => continue,
                    },
                };
                ring.payload(b).store(frame, Ordering::Relaxed);
                ring.committed().push(b).unwrap();
            }
            let seen = consumer.join().unwrap();
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
            assert!(seen.iter().all(|f| (1..=2).contains(f)), "only committed frames: {seen:?}");
            let mut found = Vec::new();
            for q in [ring.committed(), ring.free()] {
                while let Some(b) = q.pop().unwrap() {
                    found.push(b);
                }
            }
            found.sort_unstable();
            assert_eq!(found, [0, 1]);
        });
    }
}
