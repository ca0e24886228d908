//! Where everything is in a ring's segment. Pure arithmetic, checked against the segment's
//! length before any word is touched.
//!
//! ```text
//! word  0..8    line 0: magic, version, policy, buffers, slot size; the producer's counters
//!               (commits, overwritten), which nobody reads on a hot path
//! word  8..16   line 1: the producer's side: pid, start time, sleeping, closed (read by the
//!               consumer at each look, so nothing written per frame lives here)
//! word 16..24   line 2: the consumer's side: pid, start time, sleeping, closed
//! word 24..56   lines 3-6: enqueue and dequeue positions of the committed and free queues
//! then          the committed queue's cells, then the free queue's (2 words each: sequence, value)
//! page-aligned  the buffers, `stride` bytes each: a 64-byte header (length, sequence number), data
//! ```

/// "ENSRING1".
pub(crate) const MAGIC: u64 = u64::from_be_bytes(*b"ENSRING1");
/// Bumped when the layout or the protocol changes.
pub(crate) const VERSION: u64 = 2;

/// Words of line 0.
pub(crate) const W_MAGIC: usize = 0;
pub(crate) const W_VERSION: usize = 1;
pub(crate) const W_POLICY: usize = 2;
pub(crate) const W_BUFFERS: usize = 3;
pub(crate) const W_SLOT_SIZE: usize = 4;
/// The producer's counters: frames committed and taken back unread over the ring's life.
pub(crate) const W_COMMITS: usize = 6;
pub(crate) const W_OVERWRITTEN: usize = 7;

/// A side's line: words relative to [`PRODUCER`] or [`CONSUMER`].
pub(crate) const S_PID: usize = 0;
pub(crate) const S_START: usize = 1;
pub(crate) const S_SLEEPING: usize = 2;
pub(crate) const S_CLOSED: usize = 3;

/// First word of the producer's line.
pub(crate) const PRODUCER: usize = 8;
/// First word of the consumer's line.
pub(crate) const CONSUMER: usize = 16;

/// The committed queue's enqueue and dequeue positions, each on a line of its own.
pub(crate) const COMMITTED_ENQ: usize = 24;
pub(crate) const COMMITTED_DEQ: usize = 32;
/// The free queue's.
pub(crate) const FREE_ENQ: usize = 40;
pub(crate) const FREE_DEQ: usize = 48;
/// First cell word.
const CELLS: usize = 56;

/// Bytes of a buffer's header, before its data.
pub(crate) const BUFFER_HEADER: usize = 64;
/// Buffers at least this large start on a page.
const PAGE: usize = 4096;

/// The most slots and the largest slot a ring may have.
pub(crate) const MAX_SLOTS: usize = 1 << 16;
pub(crate) const MAX_SLOT_SIZE: usize = 1 << 31;

/// A ring's shape, from which every offset follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Number of buffers (the slots the user asked for).
    pub buffers: usize,
    /// Usable bytes per slot.
    pub slot_size: usize,
}

/// Why a geometry cannot be a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// Fewer than two slots, or more than 65,536.
    #[error("a ring needs 2 to 65536 slots, not {0}")]
    Slots(usize),
    /// An empty slot, or one of 2 GiB or more.
    #[error("a ring's slot size must be 1 byte to 2 GiB, not {0}")]
    SlotSize(usize),
}

impl Geometry {
    /// Checks the bounds of a requested shape.
    pub(crate) fn new(buffers: usize, slot_size: usize) -> Result<Geometry, GeometryError> {
        if !(2..=MAX_SLOTS).contains(&buffers) {
            return Err(GeometryError::Slots(buffers));
        }
        if slot_size == 0 || slot_size >= MAX_SLOT_SIZE {
            return Err(GeometryError::SlotSize(slot_size));
        }
        Ok(Geometry { buffers, slot_size })
    }

    /// Cells per index queue: a power of two that can hold every buffer at once.
    pub(crate) fn queue_capacity(&self) -> usize {
        self.buffers.next_power_of_two()
    }

    /// First word of the committed queue's cells.
    pub(crate) fn committed_cells(&self) -> usize {
        CELLS
    }

    /// First word of the free queue's cells.
    pub(crate) fn free_cells(&self) -> usize {
        CELLS + 2 * self.queue_capacity()
    }

    /// Bytes from one buffer to the next: a whole page for large slots (so frames start
    /// page-aligned), a cache line otherwise.
    pub(crate) fn stride(&self) -> usize {
        let raw = BUFFER_HEADER + self.slot_size;
        let unit = if self.slot_size >= PAGE { PAGE } else { 64 };
        raw.div_ceil(unit) * unit
    }

    /// Offset in bytes of the first buffer.
    pub(crate) fn data_offset(&self) -> usize {
        let header_words = self.free_cells() + 2 * self.queue_capacity();
        (header_words * 8).div_ceil(PAGE) * PAGE
    }

    /// Offset in bytes of buffer `index`'s header.
    pub(crate) fn buffer(&self, index: usize) -> usize {
        self.data_offset() + index * self.stride()
    }

    /// First word of buffer `index`'s header (its length, then its sequence number).
    pub(crate) fn buffer_words(&self, index: usize) -> usize {
        self.buffer(index) / 8
    }

    /// Bytes the segment needs.
    pub(crate) fn segment_len(&self) -> usize {
        self.data_offset() + self.buffers * self.stride()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_never_overlap_the_header_or_each_other_and_large_ones_start_on_a_page() {
        for (buffers, slot_size) in [(2, 1), (3, 64), (8, 4096), (5, (1 << 20) + 1), (65536, 7)] {
            let g = Geometry::new(buffers, slot_size).unwrap();
            assert!(g.data_offset() >= (g.free_cells() + 2 * g.queue_capacity()) * 8);
            assert!(g.stride() >= BUFFER_HEADER + slot_size);
            assert_eq!(g.buffer(buffers - 1) + g.stride(), g.segment_len());
            assert_eq!(g.data_offset() % PAGE, 0);
            if slot_size >= PAGE {
                assert_eq!(g.stride() % PAGE, 0);
            }
            assert!(g.queue_capacity() >= buffers && g.queue_capacity().is_power_of_two());
        }
    }

    #[test]
    fn shapes_out_of_bounds_are_refused() {
        assert_eq!(Geometry::new(1, 8), Err(GeometryError::Slots(1)));
        assert_eq!(Geometry::new(MAX_SLOTS + 1, 8), Err(GeometryError::Slots(MAX_SLOTS + 1)));
        assert_eq!(Geometry::new(2, 0), Err(GeometryError::SlotSize(0)));
        assert_eq!(Geometry::new(2, MAX_SLOT_SIZE), Err(GeometryError::SlotSize(MAX_SLOT_SIZE)));
    }
}
