//! A ring for exactly one producer and one consumer that hand slots over strictly in order:
//! the fast lane's (see `crate::transport::lane`).
//!
//! The general ring lends slots out of order (a consumer may hold several and give them back
//! in any order; a producer may overwrite), which takes two shared index queues: about ten
//! cache lines move between the CPUs per frame. Here a frame moves with its own slot's lines
//! and nothing else:
//!
//! - slot `p % slots` carries frame number `p`; its first word, the *stamp*, is `p + 1` once the
//!   frame is published, and `p + 1 - slots` (0 on the first lap) while it is free;
//! - the consumer copies the frame out and publishes how many frames it has taken (its
//!   *position*, a word on a line of its own); the producer reads that word only when it
//!   believes every slot is taken;
//! - each side keeps its own position in its own memory: what the other side writes is only
//!   ever compared against it, never trusted as an index.
//!
//! ```text
//! word  0..8    line 0: magic, version, slots, slot size
//! word  8..16   line 1: the producer's side: pid, start time, sleeping, closed
//! word 16..24   line 2: the consumer's side: pid, start time, sleeping, closed
//! word 24       line 3: the consumer's position
//! byte 4096..   the slots, each a multiple of 64 bytes: stamp, length, data
//! ```
//!
//! Waiting and liveness are the general ring's (`super::wait`): "I sleep" flags, a doorbell
//! rung only for a sleeper, a socket pair whose hang-up tells that the other side is gone.
//!
//! What the other side can write is checked where it is read: a stamp that is neither "free"
//! nor "published" for the position this side expects, a length past the slot, a position
//! that goes backwards or past what was sent, and flags other than 0 or 1 are
//! [`RingError::Corrupt`].

use super::ends::{CreateRingError, RingError, RingStats};
use super::index_queue::Corrupt;
use super::layout::{self as at, Geometry};
use super::sides::{self, Role, Sides};
use super::wait::{self, Waiter, Woke};
use crate::shm::Segment;
use crate::sys::ring_memory::RingMemory;
use crate::sys::socket;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// "ENSLANE1".
const MAGIC: u64 = u64::from_be_bytes(*b"ENSLANE1");
/// Bumped when the layout or the protocol changes.
const VERSION: u64 = 1;

const W_MAGIC: usize = 0;
const W_VERSION: usize = 1;
const W_SLOTS: usize = 2;
const W_SLOT_SIZE: usize = 3;
/// The consumer's position: frames it has taken.
const W_POSITION: usize = 24;

/// Bytes before the first slot.
const SLOTS_AT: usize = 4096;
/// A slot's header: its stamp and its length.
const SLOT_HEADER: usize = 16;

/// How often a producer that never has to wait looks whether its consumer is gone: every so
/// many frames, if this long has passed (a clock read per frame would cost more than the
/// rest of a send).
const LIVENESS_FRAMES: u64 = 64;
const LIVENESS_EVERY: Duration = Duration::from_millis(100);

/// An end on its way to another process outside a message (the fast lane's offer): duplicates of its descriptors and its segment's length.
#[derive(Debug)]
pub(crate) struct Exported {
    pub segment: OwnedFd,
    pub segment_len: u64,
    pub socket: OwnedFd,
}

/// Where everything is in a ring of a checked [`Geometry`] whose slot count is a power of two
/// (so a position's slot is a mask away, not a division).
#[derive(Debug, Clone, Copy)]
struct Shape {
    slots: u64,
    slot_size: usize,
}

impl Shape {
    fn new(geometry: Geometry) -> Result<Shape, String> {
        if !geometry.buffers.is_power_of_two() {
            return Err(format!("a lane ring's slot count must be a power of two, not {}", geometry.buffers));
        }
        Ok(Shape { slots: geometry.buffers as u64, slot_size: geometry.slot_size })
    }

    fn stride(&self) -> usize {
        (SLOT_HEADER + self.slot_size).div_ceil(64) * 64
    }

    fn segment_len(&self) -> usize {
        SLOTS_AT + self.slots as usize * self.stride()
    }

    /// Byte offset of the slot that carries frame number `position`.
    fn slot(&self, position: u64) -> usize {
        SLOTS_AT + (position & (self.slots - 1)) as usize * self.stride()
    }

    /// The stamp of the slot of frame `position` while that frame is not published yet.
    fn free_stamp(&self, position: u64) -> u64 {
        (position + 1).saturating_sub(self.slots)
    }
}

/// A ring's memory and shape, as one process sees it.
#[derive(Debug)]
struct Core {
    memory: RingMemory,
    shape: Shape,
}

impl Core {
    fn word(&self, index: usize) -> &AtomicU64 {
        &self.memory.words(index, 1)[0]
    }

    /// The stamp and length words of the slot of frame `position`.
    fn header(&self, position: u64) -> &[AtomicU64] {
        self.memory.words(self.shape.slot(position) / 8, 2)
    }

    fn create(geometry: Geometry) -> Result<Core, CreateRingError> {
        let shape = Shape::new(geometry).expect("`channel` rounds the slot count up to a power of two");
        let segment = Segment::create(shape.segment_len())?;
        let memory = RingMemory::new(segment).expect("a created segment is writable");
        let core = Core { memory, shape };
        core.word(W_VERSION).store(VERSION, Ordering::Relaxed);
        core.word(W_SLOTS).store(shape.slots, Ordering::Relaxed);
        core.word(W_SLOT_SIZE).store(shape.slot_size as u64, Ordering::Relaxed);
        for role in [Role::Producer, Role::Consumer] {
            Sides { memory: &core.memory, role }.claim();
        }
        core.word(W_MAGIC).store(MAGIC, Ordering::Release);
        Ok(core)
    }

    /// Reads a received ring's shape, checking it against its segment.
    fn adopt(segment: Arc<Segment>) -> Result<Core, String> {
        let memory = RingMemory::new(segment).ok_or("a ring's segment must be writable")?;
        if memory.segment().len() < SLOTS_AT {
            return Err("a ring's segment is too small for its header".into());
        }
        let word = |w: usize| memory.words(w, 1)[0].load(Ordering::Acquire);
        if word(W_MAGIC) != MAGIC || word(W_VERSION) != VERSION {
            return Err("the segment is not a lane ring of this version".into());
        }
        let geometry =
            Geometry::new(word(W_SLOTS) as usize, word(W_SLOT_SIZE) as usize).map_err(|e| e.to_string())?;
        let shape = Shape::new(geometry)?;
        if shape.segment_len() > memory.segment().len() {
            return Err("the ring's shape does not fit its segment".into());
        }
        // Made by `channel`, the segment is allocated in full: a sparse one would make this
        // process fault in (and be charged for) whatever its maker chose.
        let allocated =
            rustix::fs::fstat(memory.segment().fd()).map_or(0, |stat| stat.st_blocks as u64 * 512);
        if allocated < shape.segment_len() as u64 {
            return Err("the ring's segment is not allocated in full".into());
        }
        Ok(Core { memory, shape })
    }
}

/// Makes a ring of at least `slots` slots (the next power of two) of `slot_size` bytes each
/// and returns its two ends.
pub(crate) fn channel(slots: usize, slot_size: usize) -> Result<(Producer, Consumer), CreateRingError> {
    Geometry::new(slots, slot_size)?;
    let geometry = Geometry::new(slots.next_power_of_two(), slot_size)?;
    let producer_core = Core::create(geometry)?;
    let consumer_core = Core {
        memory: RingMemory::new(Arc::clone(producer_core.memory.segment())).expect("writable"),
        shape: producer_core.shape,
    };
    let (producer_socket, consumer_socket) = socket::stream_pair()?;
    let producer = Producer::new(End::new(producer_core, producer_socket, Role::Producer));
    let consumer = Consumer::new(End::new(consumer_core, consumer_socket, Role::Consumer));
    Ok((producer, consumer))
}

/// What both ends have: the ring, how to wait, and whether the end went to another process.
#[derive(Debug)]
struct End {
    core: Core,
    waiter: Waiter,
    role: Role,
    /// Exported: dropping this copy does not close the end.
    moved: bool,
}

impl End {
    fn new(core: Core, socket: OwnedFd, role: Role) -> End {
        End { core, waiter: Waiter::new(Arc::new(socket)), role, moved: false }
    }

    fn sides(&self) -> Sides<'_> {
        Sides { memory: &self.core.memory, role: self.role }
    }

    fn own(&self, word: usize) -> &AtomicU64 {
        self.sides().own(word)
    }

    fn peer_closed(&self) -> bool {
        self.sides().peer_closed()
    }

    /// Rings the other side's doorbell if it said it sleeps. Call after publishing.
    fn wake_peer(&self) {
        wait::wake(self.sides().peer(at::S_SLEEPING), &self.waiter.socket);
    }

    fn check_peer(&self) -> Result<(), Corrupt> {
        self.sides().check_peer()
    }

    fn peer_error(&self) -> RingError {
        self.sides().peer_error()
    }

    fn stats(&self, frames: u64) -> RingStats {
        sides::stats(&self.waiter.counts, 0, frames)
    }

    /// Duplicates of what another process needs to take this end up; this copy no longer
    /// closes the end when dropped.
    fn export(&mut self) -> io::Result<Exported> {
        let exported = Exported {
            segment: self.core.memory.segment().fd().try_clone_to_owned()?,
            segment_len: self.core.memory.segment().len() as u64,
            socket: self.waiter.socket.try_clone()?,
        };
        self.moved = true;
        Ok(exported)
    }

    /// Takes up an end another process exported, checking its segment and its socket.
    fn import(exported: &Exported, role: Role) -> Result<End, String> {
        let len = usize::try_from(exported.segment_len).map_err(|_| "a ring's length is out of range")?;
        if !socket::is_stream(exported.socket.as_fd()) {
            return Err("a ring end's socket is not a unix stream socket".into());
        }
        let segment = Segment::adopt(exported.segment.as_fd(), len, true).map_err(|e| e.to_string())?;
        let core = Core::adopt(segment)?;
        Sides { memory: &core.memory, role }.claim();
        let socket = exported.socket.try_clone().map_err(|e| e.to_string())?;
        Ok(End::new(core, socket, role))
    }
}

impl Drop for End {
    fn drop(&mut self) {
        if self.moved {
            return;
        }
        self.sides().close();
        wait::ring(&self.waiter.socket);
    }
}

/// The producing end: sends frames, in order.
#[derive(Debug)]
pub(crate) struct Producer {
    end: End,
    /// Frames sent: the next frame's number.
    position: u64,
    /// The consumer's position when last read.
    consumed: u64,
    /// When it last looked whether the consumer is gone.
    checked: Instant,
}

impl Producer {
    fn new(end: End) -> Producer {
        Producer { end, position: 0, consumed: 0, checked: Instant::now() }
    }

    /// The largest frame a slot holds.
    pub(crate) fn slot_size(&self) -> usize {
        self.end.core.shape.slot_size
    }

    /// What this end counted (`committed`: frames sent).
    pub(crate) fn stats(&self) -> RingStats {
        self.end.stats(self.position)
    }

    /// Copies `frame` into the next slot and publishes it, if a slot is free; whether it did.
    /// An empty frame is a frame too (the lane's marker).
    pub(crate) fn try_send(&mut self, frame: &[u8]) -> Result<bool, RingError> {
        let slot_size = self.slot_size();
        if frame.len() > slot_size {
            return Err(RingError::TooLarge { len: frame.len(), slot_size });
        }
        self.check()?;
        if !self.has_room()? {
            return Ok(false);
        }
        let core = &self.end.core;
        core.memory.copy_in(core.shape.slot(self.position) + SLOT_HEADER, frame);
        let header = core.header(self.position);
        header[1].store(frame.len() as u64, Ordering::Relaxed);
        header[0].store(self.position + 1, Ordering::Release);
        self.position += 1;
        self.end.wake_peer();
        Ok(true)
    }

    /// Waits (blocking the thread) until a slot is free, at most `timeout`.
    pub(crate) fn wait_room(&mut self, timeout: Duration) -> Result<(), RingError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check()?;
            if self.has_room()? {
                return Ok(());
            }
            let End { core, waiter, .. } = &self.end;
            let consumed = self.consumed;
            let ready = || moved_on(core, consumed);
            match waiter.sleep(core.word(at::PRODUCER + at::S_SLEEPING), ready, Some(deadline))? {
                Woke::Look => {}
                Woke::HungUp => return Err(self.end.peer_error()),
                Woke::TimedOut => return Err(RingError::TimedOut),
            }
        }
    }

    /// Ready once a slot is free; until then the task sleeps and is woken when the consumer
    /// takes a frame.
    pub(crate) fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RingError>> {
        loop {
            self.check()?;
            if self.has_room()? {
                self.end.waiter.settled();
                return Poll::Ready(Ok(()));
            }
            let End { core, waiter, .. } = &mut self.end;
            let consumed = self.consumed;
            let ready = || moved_on(core, consumed);
            match waiter.poll_sleep(cx, core.word(at::PRODUCER + at::S_SLEEPING), ready) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(Woke::HungUp)) => return Poll::Ready(Err(self.end.peer_error())),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Hands this end to another process outside a message.
    pub(crate) fn export(&mut self) -> io::Result<Exported> {
        self.end.export()
    }

    /// Takes up a producing end another process exported (of a ring nothing was sent on yet).
    pub(crate) fn import(exported: &Exported) -> Result<Producer, String> {
        Ok(Producer::new(End::import(exported, Role::Producer)?))
    }

    /// The consumer is still there and its flags are sane.
    fn check(&mut self) -> Result<(), RingError> {
        self.end.check_peer()?;
        if self.end.peer_closed() {
            return Err(self.end.peer_error());
        }
        if self.position.is_multiple_of(LIVENESS_FRAMES) && self.checked.elapsed() >= LIVENESS_EVERY {
            self.checked = Instant::now();
            if self.end.waiter.peer_hung_up() {
                return Err(self.end.peer_error());
            }
        }
        Ok(())
    }

    /// Whether the next frame's slot is free, reading the consumer's position only when the
    /// last one read says it is not.
    fn has_room(&mut self) -> Result<bool, Corrupt> {
        let slots = self.end.core.shape.slots;
        if self.position - self.consumed < slots {
            return Ok(true);
        }
        let consumed = self.end.core.word(W_POSITION).load(Ordering::Acquire);
        if consumed < self.consumed || consumed > self.position {
            return Err(Corrupt("consumer's position"));
        }
        self.consumed = consumed;
        Ok(self.position - consumed < slots)
    }
}

/// Whether the consumer's position moved past `consumed`, or it closed: for a wait's re-check.
fn moved_on(core: &Core, consumed: u64) -> bool {
    core.word(W_POSITION).load(Ordering::Relaxed) != consumed
        || core.word(at::CONSUMER + at::S_CLOSED).load(Ordering::SeqCst) != 0
}

/// The consuming end: takes frames, in order, copying each out of its slot.
#[derive(Debug)]
pub(crate) struct Consumer {
    end: End,
    /// Frames taken: the next frame's number.
    position: u64,
}

impl Consumer {
    fn new(end: End) -> Consumer {
        Consumer { end, position: 0 }
    }

    /// What this end counted (`committed`: frames taken).
    pub(crate) fn stats(&self) -> RingStats {
        self.end.stats(self.position)
    }

    /// Takes up a consuming end another process exported (of a ring nothing was sent on yet).
    pub(crate) fn import(exported: &Exported) -> Result<Consumer, String> {
        Ok(Consumer::new(End::import(exported, Role::Consumer)?))
    }

    /// Hands this end to another process outside a message.
    pub(crate) fn export(&mut self) -> io::Result<Exported> {
        self.end.export()
    }

    /// Sets how long a wait sleeps at most before it looks again by itself.
    pub(crate) fn set_safety_timeout(&mut self, timeout: Duration) {
        self.end.waiter.safety = timeout;
    }

    /// The next frame, if one is there now, or the end once the producer closed and every
    /// frame it sent was taken: no system call.
    pub(crate) fn take_now(&mut self) -> Result<Option<Vec<u8>>, RingError> {
        match self.take()? {
            Some(frame) => Ok(Some(frame)),
            None if self.end.peer_closed() => self.last_look().map(Some),
            None => Ok(None),
        }
    }

    /// The end's own waiter found a frame outside its wait: the waits before it are over.
    pub(crate) fn settle(&mut self) {
        self.end.waiter.settled();
    }

    /// Whether the next frame seems to be there (or the producer closed): for a spin. A slot
    /// the peer scribbled on looks ready too; taking it tells.
    pub(crate) fn looks_ready(&self) -> bool {
        let core = &self.end.core;
        core.header(self.position)[0].load(Ordering::Relaxed) != core.shape.free_stamp(self.position)
            || self.end.peer_closed()
    }

    /// Clears the "I sleep" flag: this side is awake and looking, so the producer need not
    /// ring. Says whether it was set.
    pub(crate) fn wake_up(&self) -> bool {
        let sleeping = self.end.own(at::S_SLEEPING);
        sleeping.load(Ordering::Relaxed) != 0 && sleeping.swap(0, Ordering::SeqCst) != 0
    }

    /// Sets the "I sleep" flag again (after [`wake_up`](Self::wake_up) said it was set), with
    /// the re-check of Dekker's protocol: whether a frame (or the end) is there, in which case
    /// the sleeper must be woken to take it.
    pub(crate) fn back_to_sleep(&self) -> bool {
        self.end.own(at::S_SLEEPING).store(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.looks_ready()
    }

    /// The next frame, sleeping on the doorbell until there is one (for a task).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<u8>, RingError>> {
        loop {
            if let Some(frame) = self.take()? {
                self.end.waiter.settled();
                return Poll::Ready(Ok(frame));
            }
            if self.end.peer_closed() {
                return Poll::Ready(self.last_look());
            }
            let End { core, waiter, .. } = &mut self.end;
            let position = self.position;
            let ready = || {
                core.header(position)[0].load(Ordering::Relaxed) != core.shape.free_stamp(position)
                    || core.word(at::PRODUCER + at::S_CLOSED).load(Ordering::SeqCst) != 0
            };
            match waiter.poll_sleep(cx, core.word(at::CONSUMER + at::S_SLEEPING), ready) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(Woke::HungUp)) => return Poll::Ready(self.last_look()),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Fills the whole ring with 0xFF, as a buggy peer's stray write would.
    #[cfg(test)]
    pub(crate) fn scribble(&self) {
        let words = self.end.core.memory.segment().len() / 8;
        for word in self.end.core.memory.words(0, words) {
            word.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// Waits (blocking the thread) for the next frame, at most `timeout`.
    #[cfg(test)]
    pub(crate) fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, RingError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.take_now()? {
                return Ok(frame);
            }
            let ready = || self.looks_ready();
            match self.end.waiter.sleep(self.end.own(at::S_SLEEPING), ready, Some(deadline))? {
                Woke::Look => {}
                Woke::HungUp => return self.last_look(),
                Woke::TimedOut => return Err(RingError::TimedOut),
            }
        }
    }

    /// The producer closed or is gone: a frame it sent before is still taken, then the end.
    fn last_look(&mut self) -> Result<Vec<u8>, RingError> {
        self.take()?.ok_or_else(|| self.end.peer_error())
    }

    fn take(&mut self) -> Result<Option<Vec<u8>>, RingError> {
        self.end.check_peer()?;
        let core = &self.end.core;
        let header = core.header(self.position);
        let stamp = header[0].load(Ordering::Acquire);
        if stamp != self.position + 1 {
            if stamp == core.shape.free_stamp(self.position) {
                return Ok(None);
            }
            return Err(Corrupt("slot's sequence word").into());
        }
        let len = header[1].load(Ordering::Relaxed);
        if len > core.shape.slot_size as u64 {
            return Err(Corrupt("slot length").into());
        }
        let frame = core.memory.copy_out(core.shape.slot(self.position) + SLOT_HEADER, len as usize);
        self.position += 1;
        // Release: the copy is done before the producer may write the slot again.
        core.word(W_POSITION).store(self.position, Ordering::Release);
        self.end.wake_peer();
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(slots: usize, slot_size: usize) -> (Producer, Consumer) {
        channel(slots, slot_size).unwrap()
    }

    #[test]
    fn frames_arrive_in_order_over_many_laps_and_empty_ones_are_frames_too() {
        let (mut producer, mut consumer) = ring(3, 16);
        for lap in 0..50u8 {
            let frames: [&[u8]; 2] = [&[lap; 16], &[]];
            for frame in frames {
                assert!(producer.try_send(frame).unwrap());
                assert_eq!(consumer.take_now().unwrap().unwrap(), frame);
            }
        }
        assert_eq!(consumer.take_now().unwrap(), None);
        assert_eq!((producer.stats().committed, consumer.stats().committed), (100, 100));
    }

    #[test]
    fn a_full_ring_refuses_until_the_consumer_takes_a_frame() {
        let (mut producer, mut consumer) = ring(2, 8);
        assert!(producer.try_send(b"1").unwrap());
        assert!(producer.try_send(b"2").unwrap());
        assert!(!producer.try_send(b"3").unwrap());
        assert!(matches!(producer.wait_room(Duration::from_millis(10)), Err(RingError::TimedOut)));
        assert_eq!(consumer.take_now().unwrap().unwrap(), b"1");
        producer.wait_room(Duration::from_millis(10)).unwrap();
        assert!(producer.try_send(b"3").unwrap());
        assert_eq!(consumer.take_now().unwrap().unwrap(), b"2");
        assert_eq!(consumer.take_now().unwrap().unwrap(), b"3");
    }

    #[test]
    fn a_frame_larger_than_a_slot_is_refused_and_nothing_is_sent() {
        let (mut producer, mut consumer) = ring(2, 4);
        assert!(matches!(producer.try_send(b"12345"), Err(RingError::TooLarge { len: 5, slot_size: 4 })));
        assert_eq!(consumer.take_now().unwrap(), None);
    }

    #[test]
    fn a_closed_producer_leaves_its_frames_then_the_end() {
        let (mut producer, mut consumer) = ring(4, 8);
        producer.try_send(b"last").unwrap();
        drop(producer);
        assert_eq!(consumer.take_now().unwrap().unwrap(), b"last");
        assert!(matches!(consumer.take_now(), Err(RingError::Closed { peer: "producer" })));
    }

    #[test]
    fn a_producer_gone_without_closing_is_seen_through_the_socket() {
        let (mut producer, mut consumer) = ring(4, 8);
        // Exported and dropped: the end is not closed in the ring, and every holder of its
        // socket is gone, as when its process is killed.
        drop(producer.export().unwrap());
        drop(producer);
        let error = consumer.recv_timeout(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(error, RingError::PeerGone { peer: "producer", .. }), "{error}");
    }

    #[test]
    fn a_consumer_that_closed_fails_the_next_send() {
        let (mut producer, consumer) = ring(4, 8);
        drop(consumer);
        assert!(matches!(producer.try_send(b"x"), Err(RingError::Closed { peer: "consumer" })));
    }

    #[test]
    fn a_scribbled_ring_is_corrupt_for_both_sides() {
        let (mut producer, mut consumer) = ring(2, 8);
        consumer.scribble();
        assert!(consumer.looks_ready(), "a spin stops on garbage, and the take tells");
        assert!(matches!(consumer.take_now(), Err(RingError::Corrupt(_))));
        assert!(matches!(producer.try_send(b"x"), Err(RingError::Corrupt(_))));
    }

    #[test]
    fn each_word_a_peer_writes_is_checked() {
        // A stamp from another lap.
        let (producer, mut consumer) = ring(2, 8);
        consumer.end.core.header(0)[0].store(7, Ordering::Relaxed);
        assert_eq!(consumer.take_now().unwrap_err().to_string(), Corrupt("slot's sequence word").to_string());
        drop(producer);
        // A length past the slot.
        let (mut producer, mut consumer) = ring(2, 8);
        producer.try_send(b"ok").unwrap();
        consumer.end.core.header(0)[1].store(9, Ordering::Relaxed);
        assert_eq!(consumer.take_now().unwrap_err().to_string(), Corrupt("slot length").to_string());
        // A position past what was sent, read once the ring looks full.
        let (mut producer, consumer) = ring(2, 8);
        producer.try_send(b"1").unwrap();
        producer.try_send(b"2").unwrap();
        consumer.end.core.word(W_POSITION).store(3, Ordering::Relaxed);
        assert_eq!(
            producer.try_send(b"3").unwrap_err().to_string(),
            Corrupt("consumer's position").to_string()
        );
        // A sleeping flag that is neither 0 nor 1.
        let (mut producer, consumer) = ring(2, 8);
        consumer.end.own(at::S_SLEEPING).store(2, Ordering::Relaxed);
        assert_eq!(producer.try_send(b"1").unwrap_err().to_string(), Corrupt("sleeping flag").to_string());
    }

    #[test]
    fn ends_travel_as_descriptors_and_a_foreign_segment_is_refused() {
        let (mut producer, mut consumer) = ring(4, 32);
        let (sent, taken) = (producer.export().unwrap(), consumer.export().unwrap());
        let mut producer = Producer::import(&sent).unwrap();
        let mut consumer = Consumer::import(&taken).unwrap();
        producer.try_send(b"moved").unwrap();
        assert_eq!(consumer.recv_timeout(Duration::from_secs(5)).unwrap(), b"moved");
        // Any other segment is not a lane ring.
        let segment = Segment::create(8192).unwrap();
        let foreign = Exported {
            segment: segment.fd().try_clone_to_owned().unwrap(),
            segment_len: 8192,
            socket: socket::stream_pair().unwrap().0,
        };
        let error = Producer::import(&foreign).unwrap_err();
        assert!(error.contains("not a lane ring"), "{error}");
    }

    #[test]
    fn a_stream_across_threads_keeps_order_and_loses_no_wake_up() {
        let (mut producer, mut consumer) = ring(4, 8);
        const FRAMES: u64 = 20_000;
        let sender = std::thread::spawn(move || {
            for n in 0..FRAMES {
                while !producer.try_send(&n.to_le_bytes()).unwrap() {
                    match producer.wait_room(Duration::from_secs(5)) {
                        Ok(()) | Err(RingError::TimedOut) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                if n % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            producer.stats()
        });
        for n in 0..FRAMES {
            let frame = consumer.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(frame, n.to_le_bytes());
        }
        let sent = sender.join().unwrap();
        assert_eq!(sent.lost_wakeups + consumer.stats().lost_wakeups, 0);
        assert!(matches!(consumer.recv_timeout(Duration::from_secs(5)), Err(RingError::Closed { .. })));
    }
}
