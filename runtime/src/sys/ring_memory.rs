//! The unsafe half of rings: a ring's segment seen as 64-bit atomic words (its header and index
//! queues) and as slot buffers, each lent to one side at a time by the ring's protocol.
//!
//! The `Deref` impls of [`Slot`] and [`SlotMut`] live here because they are where mapped memory
//! becomes a Rust slice; the types and the protocol that lends a buffer to exactly one of them
//! are in `crate::ring`.

use crate::ring::{Slot, SlotMut};
use crate::shm::Segment;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A ring's segment: writable, mapped at a page boundary.
#[derive(Debug)]
pub(crate) struct RingMemory {
    segment: Arc<Segment>,
}

impl RingMemory {
    /// Wraps a writable segment; `None` for a read-only one.
    pub(crate) fn new(segment: Arc<Segment>) -> Option<RingMemory> {
        segment.writable().then_some(RingMemory { segment })
    }

    /// The segment, to hand over with an end.
    pub(crate) fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// `count` atomic words starting at word `first`.
    ///
    /// # Panics
    /// When the range is outside the segment: ring code computes ranges from a geometry it
    /// checked against the segment's length.
    pub(crate) fn words(&self, first: usize, count: usize) -> &[AtomicU64] {
        let end = first.checked_add(count).and_then(|w| w.checked_mul(8));
        assert!(end.is_some_and(|end| end <= self.segment.len()), "ring words out of range");
        let base = self.segment.map_ref().as_mut_ptr().cast::<AtomicU64>();
        // SAFETY: the range is inside the mapping (asserted above), which starts at a page
        // boundary, so every word is 8-byte aligned; `AtomicU64` has the size and alignment of
        // `u64`, and these words are only ever accessed atomically, by this process and by the
        // peer (ring code never makes a plain reference to them). The mapping lives as long as
        // `self.segment`, which the borrow of `self` keeps.
        unsafe { std::slice::from_raw_parts(base.add(first), count) }
    }

    fn buffer_ptr(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.segment.len()),
            "ring buffer out of range"
        );
        // SAFETY: `offset` is inside the mapping (asserted above).
        unsafe { self.segment.map_ref().as_mut_ptr().add(offset) }
    }
}

impl RingMemory {
    /// Copies `bytes` into the segment at byte `offset`: a slot the caller's protocol lent to
    /// this process alone (the lane's producer, for a slot the consumer released).
    ///
    /// # Panics
    /// When the range is outside the segment.
    pub(crate) fn copy_in(&self, offset: usize, bytes: &[u8]) {
        let ptr = self.buffer_ptr(offset, bytes.len());
        // SAFETY: the range is inside the mapping (checked by `buffer_ptr`), which is shared and
        // writable, and `bytes` is a slice of this process's own memory, so the two cannot
        // overlap. A correct peer does not read these bytes until they are published; a broken
        // one reads plain bytes, which have no validity invariant.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) }
    }

    /// Copies `len` bytes out of the segment from byte `offset` into a new vector.
    ///
    /// # Panics
    /// When the range is outside the segment.
    pub(crate) fn copy_out(&self, offset: usize, len: usize) -> Vec<u8> {
        let ptr = self.buffer_ptr(offset, len);
        let mut bytes = Vec::with_capacity(len);
        // SAFETY: the range is inside the mapping (checked by `buffer_ptr`); the vector has room
        // for `len` bytes and is this process's own memory, so the two cannot overlap. Every
        // byte is written before `set_len`. A broken peer may change the source while it is
        // copied: the copy then holds garbage, which the caller decodes as untrusted input.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr, bytes.as_mut_ptr(), len);
            bytes.set_len(len);
        }
        bytes
    }
}

impl Deref for Slot {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let (offset, len) = self.bytes_range();
        let ptr = self.memory().buffer_ptr(offset, len);
        // SAFETY: the range is inside the mapping (checked by `buffer_ptr`); the ring's protocol
        // lent this buffer to this `Slot` alone, and a correct producer does not write a buffer
        // between committing it and getting it back from the consumer. A misbehaving peer
        // process could still write these bytes: they are plain bytes with no validity
        // invariant, which is all a reader of shared memory can be given. The mapping lives
        // as long as the `Arc` this slot holds.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

impl Deref for SlotMut<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let (offset, len) = self.bytes_range();
        let ptr = self.memory().buffer_ptr(offset, len);
        // SAFETY: as in `deref_mut`; a shared borrow of the slot gives a shared view.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

impl DerefMut for SlotMut<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let (offset, len) = self.bytes_range();
        let ptr = self.memory().buffer_ptr(offset, len);
        // SAFETY: the range is inside the mapping; the buffer was taken from the free queue (or
        // from the oldest committed ones, which the consumer had not taken) by this producer,
        // so no `Slot` lends it and no other `SlotMut` exists (a `SlotMut` borrows the
        // producer mutably). The mapping is shared and writable.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn words_are_shared_with_every_mapping_of_the_segment() {
        let segment = Segment::create(4096).unwrap();
        let memory = RingMemory::new(Arc::clone(&segment)).unwrap();
        memory.words(3, 2)[1].store(42, Ordering::SeqCst);
        let again = RingMemory::new(segment).unwrap();
        assert_eq!(again.words(4, 1)[0].load(Ordering::SeqCst), 42);
    }

    #[test]
    fn bytes_copied_in_are_read_back_through_another_mapping() {
        let segment = Segment::create(4096).unwrap();
        RingMemory::new(Arc::clone(&segment)).unwrap().copy_in(100, b"lane");
        assert_eq!(RingMemory::new(segment).unwrap().copy_out(99, 6), b"\0lane\0");
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn a_copy_past_the_end_is_refused() {
        RingMemory::new(Segment::create(4096).unwrap()).unwrap().copy_out(4000, 97);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn words_past_the_end_are_refused() {
        let memory = RingMemory::new(Segment::create(64).unwrap()).unwrap();
        memory.words(7, 2);
    }
}
