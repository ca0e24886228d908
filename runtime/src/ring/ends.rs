//! The two ends of a ring, their slots, and how ends travel in messages.

use super::index_queue::{Corrupt, IndexQueue};
use super::layout::{self as at, Geometry, GeometryError};
use super::sides::{self, Role, Sides};
use super::wait::{self, Waiter, Woke};
use crate::shm::{transfer, Segment, SegmentError};
use crate::sys::ring_memory::RingMemory;
use crate::sys::socket;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What the producer does when every slot is committed or lent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until the consumer gives a slot back (backpressure): nothing is lost.
    Block,
    /// Take the oldest committed slot the consumer has not taken (live video: the consumer sees
    /// the newest frames). Dropped frames show as gaps in [`Slot::sequence`] and are counted in
    /// [`RingStats::overwritten`]. The producer still waits if the consumer holds every slot.
    OverwriteOldest,
}

/// Why a ring could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateRingError {
    /// The shape asked for is out of bounds.
    #[error("invalid ring shape")]
    Shape(#[from] GeometryError),
    /// Its segment could not be created (not enough memory, ...).
    #[error("could not create the ring's segment")]
    Segment(#[from] SegmentError),
    /// Its socket pair could not be created (descriptor limit, ...).
    #[error("could not create the ring's descriptors")]
    Io(#[from] io::Error),
}

/// Why a ring operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The other side ended without closing its end (it was killed, or crashed), and nothing it
    /// committed is left.
    #[error("the {peer} (last held by pid {pid}) is gone: it ended without closing its end")]
    PeerGone {
        /// "producer" or "consumer".
        peer: &'static str,
        /// The process that held it last.
        pid: u32,
    },
    /// The other side closed its end, and nothing it committed is left.
    #[error("the {peer} closed its end")]
    Closed {
        /// "producer" or "consumer".
        peer: &'static str,
    },
    /// The deadline of a `_timeout` call passed.
    #[error("timed out")]
    TimedOut,
    /// A commit longer than a slot.
    #[error("a frame of {len} bytes does not fit a slot of {slot_size} bytes")]
    TooLarge {
        /// The length committed.
        len: usize,
        /// The ring's slot size.
        slot_size: usize,
    },
    /// The other side wrote what no correct peer writes.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// Waiting failed.
    #[error("waiting on the ring")]
    Io(#[from] io::Error),
}

/// Counts of one end in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingStats {
    /// Times this end slept (after a spin found nothing).
    pub sleeps: u64,
    /// Sleeps that ended by the safety timeout rather than a wake-up.
    pub safety_timeouts: u64,
    /// Safety timeouts that found work: wake-ups that were lost. Zero unless there is a bug.
    pub lost_wakeups: u64,
    /// Frames the producer took back unread ([`WhenFull::OverwriteOldest`]), over the ring's
    /// life.
    pub overwritten: u64,
    /// Frames committed over the ring's life.
    pub committed: u64,
}

/// A ring's shared state, as one process sees it.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) memory: RingMemory,
    pub(crate) geometry: Geometry,
    policy: WhenFull,
}

impl Core {
    fn word(&self, index: usize) -> &AtomicU64 {
        &self.memory.words(index, 1)[0]
    }

    fn queue(&self, enq: usize, deq: usize, cells: usize, name: &'static str) -> IndexQueue<'_> {
        IndexQueue {
            enqueue: self.word(enq),
            dequeue: self.word(deq),
            cells: self.memory.words(cells, 2 * self.geometry.queue_capacity()),
            bound: self.geometry.buffers as u64,
            name,
        }
    }

    fn committed(&self) -> IndexQueue<'_> {
        self.queue(at::COMMITTED_ENQ, at::COMMITTED_DEQ, self.geometry.committed_cells(), "committed queue")
    }

    fn free(&self) -> IndexQueue<'_> {
        self.queue(at::FREE_ENQ, at::FREE_DEQ, self.geometry.free_cells(), "free queue")
    }

    fn side(&self, line: usize, word: usize) -> &AtomicU64 {
        self.word(line + word)
    }

    /// A buffer's length and sequence number words.
    fn buffer_header(&self, index: u32) -> &[AtomicU64] {
        self.memory.words(self.geometry.buffer_words(index as usize), 2)
    }

    /// The consumer is done with buffer `index`: it goes back to the producer, woken through
    /// `consumer_socket` if it sleeps.
    fn release(&self, index: u32, consumer_socket: &OwnedFd) -> Result<(), Corrupt> {
        self.free().push(u64::from(index))?;
        wait::wake(self.side(at::PRODUCER, at::S_SLEEPING), consumer_socket);
        Ok(())
    }

    fn create(geometry: Geometry, policy: WhenFull) -> Result<Core, CreateRingError> {
        let segment = Segment::create(geometry.segment_len())?;
        let memory = RingMemory::new(segment).expect("a created segment is writable");
        let core = Core { memory, geometry, policy };
        core.committed().init();
        core.free().init();
        for index in 0..geometry.buffers as u64 {
            core.free().push(index).expect("the free queue holds every buffer");
        }
        let words = [
            (at::W_VERSION, at::VERSION),
            (at::W_POLICY, policy_word(policy)),
            (at::W_BUFFERS, geometry.buffers as u64),
            (at::W_SLOT_SIZE, geometry.slot_size as u64),
        ];
        for (word, value) in words {
            core.word(word).store(value, Ordering::Relaxed);
        }
        for role in [Role::Producer, Role::Consumer] {
            Sides { memory: &core.memory, role }.claim();
        }
        core.word(at::W_MAGIC).store(at::MAGIC, Ordering::Release);
        Ok(core)
    }

    /// Reads a received ring's shape, checking it against its segment.
    fn adopt(segment: Arc<Segment>) -> Result<Core, String> {
        let memory = RingMemory::new(segment).ok_or("a ring's segment must be writable")?;
        if memory.segment().len() < at::BUFFER_HEADER * 8 {
            return Err("a ring's segment is too small for its header".into());
        }
        let word = |w: usize| memory.words(w, 1)[0].load(Ordering::Acquire);
        if word(at::W_MAGIC) != at::MAGIC || word(at::W_VERSION) != at::VERSION {
            return Err("the segment is not a ring of this version".into());
        }
        let policy = match word(at::W_POLICY) {
            0 => WhenFull::Block,
            1 => WhenFull::OverwriteOldest,
            other => return Err(format!("unknown full-ring policy {other}")),
        };
        let geometry = Geometry::new(word(at::W_BUFFERS) as usize, word(at::W_SLOT_SIZE) as usize)
            .map_err(|e| e.to_string())?;
        if geometry.segment_len() > memory.segment().len() {
            return Err("the ring's shape does not fit its segment".into());
        }
        // A ring made by `channel` is allocated in full: a sparse one would make this process
        // fault in (and be charged for) whatever its maker chose.
        let allocated =
            rustix::fs::fstat(memory.segment().fd()).map_or(0, |stat| stat.st_blocks as u64 * 512);
        if allocated < geometry.segment_len() as u64 {
            return Err("the ring's segment is not allocated in full".into());
        }
        Ok(Core { memory, geometry, policy })
    }
}

fn policy_word(policy: WhenFull) -> u64 {
    match policy {
        WhenFull::Block => 0,
        WhenFull::OverwriteOldest => 1,
    }
}

/// Makes a ring of `slots` slots of `slot_size` bytes each and returns its two ends.
///
/// # Errors
/// [`CreateRingError`]: a shape out of bounds (2 to 65,536 slots, 1 byte to 2 GiB each), not
/// enough memory for `slots * slot_size` bytes, or no descriptors left.
///
/// # Examples
/// ```
/// use ensemble_runtime::ring::{self, WhenFull};
/// let (mut producer, mut consumer) = ring::channel(2, 8, WhenFull::OverwriteOldest)?;
/// for frame in [b"one", b"two", b"3rd"] {
///     producer.send(frame)?;
/// }
/// // The oldest frame was overwritten; the consumer sees the newest two.
/// assert_eq!(&*consumer.recv()?, b"two");
/// assert_eq!(consumer.recv()?.sequence(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn channel(
    slots: usize,
    slot_size: usize,
    when_full: WhenFull,
) -> Result<(Producer, Consumer), CreateRingError> {
    let geometry = Geometry::new(slots, slot_size)?;
    let core = Arc::new(Core::create(geometry, when_full)?);
    let (producer_socket, consumer_socket) = socket::stream_pair()?;
    let producer_waiter = Waiter::new(Arc::new(producer_socket));
    let consumer_waiter = Waiter::new(Arc::new(consumer_socket));
    let producer = Producer {
        end: End::new(Arc::clone(&core), producer_waiter, Role::Producer),
        spare: AtomicU64::new(NONE),
        sequence: 0,
        checked: Instant::now(),
    };
    let consumer = Consumer { end: End::new(core, consumer_waiter, Role::Consumer), done: false };
    Ok((producer, consumer))
}

/// No spare buffer.
const NONE: u64 = u64::MAX;

/// How often a producer that never has to wait looks whether its consumer is gone.
const LIVENESS_EVERY: Duration = Duration::from_millis(100);

/// What both ends have: the ring, how to wait, and whether the end moved to another process.
#[derive(Debug)]
struct End {
    core: Arc<Core>,
    waiter: Waiter,
    role: Role,
    /// Serialized into a message: dropping this copy does not close the end.
    moved: AtomicBool,
}

impl End {
    fn new(core: Arc<Core>, waiter: Waiter, role: Role) -> End {
        End { core, waiter, role, moved: AtomicBool::new(false) }
    }

    fn sides(&self) -> Sides<'_> {
        Sides { memory: &self.core.memory, role: self.role }
    }

    fn sleeping(&self) -> &AtomicU64 {
        self.sides().own(at::S_SLEEPING)
    }

    fn peer_closed(&self) -> bool {
        self.sides().peer_closed()
    }

    fn check_peer(&self) -> Result<(), Corrupt> {
        self.sides().check_peer()
    }

    fn peer_error(&self) -> RingError {
        self.sides().peer_error()
    }

    fn stats(&self) -> RingStats {
        let word = |w: usize| self.core.word(w).load(Ordering::Relaxed);
        sides::stats(&self.waiter.counts, word(at::W_OVERWRITTEN), word(at::W_COMMITS))
    }

    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let segment = transfer::hold(self.core.memory.segment()).map_err(S::Error::custom)?;
        let socket = Arc::clone(&self.waiter.socket) as transfer::Hold;
        let wire = EndWire {
            role: policy_role(self.role),
            segment,
            segment_len: self.core.memory.segment().len() as u64,
            socket: transfer::hold_any(socket).map_err(S::Error::custom)?,
        };
        let done = wire.serialize(serializer)?;
        self.moved.store(true, Ordering::SeqCst);
        Ok(done)
    }

    fn deserialize<'de, D: Deserializer<'de>>(deserializer: D, role: Role) -> Result<End, D::Error> {
        let wire = EndWire::deserialize(deserializer)?;
        if wire.role != policy_role(role) {
            return Err(D::Error::custom(format!(
                "a ring's {} end was received as its {} end",
                role.peer().name(),
                role.name()
            )));
        }
        let segment =
            transfer::open(wire.segment, wire.segment_len as usize, true).map_err(D::Error::custom)?;
        let own = transfer::open_fd(wire.socket).map_err(D::Error::custom)?;
        End::adopt(segment, own, role).map_err(D::Error::custom)
    }

    /// Takes up an end received as its segment and its socket, checking both.
    fn adopt(segment: Arc<Segment>, own: OwnedFd, role: Role) -> Result<End, String> {
        if !socket::is_stream(own.as_fd()) {
            return Err("a ring end's socket is not a unix stream socket".into());
        }
        let core = Core::adopt(segment)?;
        Sides { memory: &core.memory, role }.claim();
        Ok(End::new(Arc::new(core), Waiter::new(Arc::new(own)), role))
    }
}

impl Drop for End {
    fn drop(&mut self) {
        if self.moved.load(Ordering::SeqCst) {
            return;
        }
        self.sides().close();
        wait::ring(&self.waiter.socket);
    }
}

fn policy_role(role: Role) -> u8 {
    match role {
        Role::Producer => 1,
        Role::Consumer => 2,
    }
}

/// How an end travels: the indexes of its descriptors among the frame's.
#[derive(Serialize, Deserialize)]
struct EndWire {
    role: u8,
    segment: u32,
    segment_len: u64,
    /// Its socket of the ring's pair.
    socket: u32,
}

/// The producing end of a ring: one per ring, movable between processes in messages.
///
/// See the [module docs](crate::ring).
pub struct Producer {
    end: End,
    /// A buffer claimed and not committed: the next claim gets it.
    spare: AtomicU64,
    /// The next frame's sequence number.
    sequence: u64,
    /// When it last looked whether the consumer is gone.
    checked: Instant,
}

impl Producer {
    /// Usable bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.end.core.geometry.slot_size
    }

    /// What this end counted.
    pub fn stats(&self) -> RingStats {
        self.end.stats()
    }

    /// Lends a free slot to write, waiting while there is none (see [`WhenFull`]).
    ///
    /// # Errors
    /// [`RingError::Closed`] or [`RingError::PeerGone`] when the consumer is no longer there;
    /// [`RingError::Corrupt`].
    pub fn claim(&mut self) -> Result<SlotMut<'_>, RingError> {
        self.claim_until(None)
    }

    /// As [`claim`](Self::claim), waiting at most `timeout` ([`RingError::TimedOut`]).
    ///
    /// # Errors
    /// As [`claim`](Self::claim).
    pub fn claim_timeout(&mut self, timeout: Duration) -> Result<SlotMut<'_>, RingError> {
        self.claim_until(Some(Instant::now() + timeout))
    }

    /// A free slot if there is one now.
    ///
    /// # Errors
    /// As [`claim`](Self::claim).
    pub fn try_claim(&mut self) -> Result<Option<SlotMut<'_>>, RingError> {
        Ok(self.take_buffer()?.map(|index| SlotMut { producer: self, index, committed: false }))
    }

    /// As [`claim`](Self::claim), for async code: never blocks the thread.
    ///
    /// # Errors
    /// As [`claim`](Self::claim).
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O and time enabled (actix's arbiters are such runtimes).
    pub async fn claim_async(&mut self) -> Result<SlotMut<'_>, RingError> {
        let index = std::future::poll_fn(|cx| self.poll_take(cx)).await?;
        Ok(SlotMut { producer: self, index, committed: false })
    }

    /// Copies `frame` into a slot and commits it.
    ///
    /// # Errors
    /// [`RingError::TooLarge`] for a frame longer than a slot; as [`claim`](Self::claim).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), RingError> {
        let slot_size = self.slot_size();
        if frame.len() > slot_size {
            return Err(RingError::TooLarge { len: frame.len(), slot_size });
        }
        let mut slot = self.claim()?;
        slot[..frame.len()].copy_from_slice(frame);
        slot.commit(frame.len())
    }

    fn claim_until(&mut self, deadline: Option<Instant>) -> Result<SlotMut<'_>, RingError> {
        loop {
            if let Some(index) = self.take_buffer()? {
                return Ok(SlotMut { producer: self, index, committed: false });
            }
            let core = &self.end.core;
            let overwrite = core.policy == WhenFull::OverwriteOldest;
            let ready = || {
                core.free().looks_non_empty()
                    || (overwrite && core.committed().looks_non_empty())
                    || self.end.peer_closed()
            };
            match self.end.waiter.sleep(self.end.sleeping(), ready, deadline)? {
                Woke::Look => {}
                Woke::HungUp => return Err(self.end.peer_error()),
                Woke::TimedOut => return Err(RingError::TimedOut),
            }
        }
    }

    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Result<u32, RingError>> {
        loop {
            if let Some(index) = self.take_buffer()? {
                self.end.waiter.settled();
                return Poll::Ready(Ok(index));
            }
            let core = &self.end.core;
            let overwrite = core.policy == WhenFull::OverwriteOldest;
            let peer_closed = || core.side(at::CONSUMER, at::S_CLOSED).load(Ordering::SeqCst) != 0;
            let ready = || {
                core.free().looks_non_empty()
                    || (overwrite && core.committed().looks_non_empty())
                    || peer_closed()
            };
            let sleeping = core.side(at::PRODUCER, at::S_SLEEPING);
            match self.end.waiter.poll_sleep(cx, sleeping, ready) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(Woke::HungUp)) => return Poll::Ready(Err(self.end.peer_error())),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// A buffer to write: the spare, a free one, or (overwriting) the oldest committed one.
    fn take_buffer(&mut self) -> Result<Option<u32>, RingError> {
        self.end.check_peer()?;
        if self.end.peer_closed() {
            return Err(self.end.peer_error());
        }
        if self.checked.elapsed() >= LIVENESS_EVERY {
            self.checked = Instant::now();
            if self.end.waiter.peer_hung_up() {
                return Err(self.end.peer_error());
            }
        }
        let spare = self.spare.swap(NONE, Ordering::Relaxed);
        if spare != NONE {
            return Ok(Some(spare as u32));
        }
        let core = &self.end.core;
        if let Some(index) = core.free().pop()? {
            return Ok(Some(index as u32));
        }
        if core.policy == WhenFull::OverwriteOldest {
            if let Some(index) = core.committed().pop()? {
                core.word(at::W_OVERWRITTEN).fetch_add(1, Ordering::Relaxed);
                return Ok(Some(index as u32));
            }
        }
        Ok(None)
    }

    fn commit(&mut self, index: u32, len: usize) -> Result<(), RingError> {
        let core = &self.end.core;
        let header = core.buffer_header(index);
        header[0].store(len as u64, Ordering::Relaxed);
        header[1].store(self.sequence, Ordering::Relaxed);
        core.committed().push(u64::from(index))?;
        self.sequence = self.sequence.wrapping_add(1);
        core.word(at::W_COMMITS).fetch_add(1, Ordering::Relaxed);
        wait::wake(core.side(at::CONSUMER, at::S_SLEEPING), &self.end.waiter.socket);
        Ok(())
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("slots", &self.end.core.geometry.buffers)
            .field("slot_size", &self.end.core.geometry.slot_size)
            .field("when_full", &self.end.core.policy)
            .field("next_sequence", &self.sequence)
            .finish()
    }
}

impl Serialize for Producer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A slot claimed and not committed goes back, so that the next holder can have it.
        let spare = self.spare.swap(NONE, Ordering::Relaxed);
        if spare != NONE {
            self.end.core.free().push(spare).map_err(S::Error::custom)?;
        }
        self.end.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Producer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let end = End::deserialize(deserializer, Role::Producer)?;
        let sequence = end.core.word(at::W_COMMITS).load(Ordering::Relaxed);
        Ok(Producer { end, spare: AtomicU64::new(NONE), sequence, checked: Instant::now() })
    }
}

/// The consuming end of a ring: one per ring, movable between processes in messages; a
/// [`Stream`](futures_core::Stream) of [`Slot`]s that ends when the producer closes its end.
///
/// See the [module docs](crate::ring).
pub struct Consumer {
    end: End,
    /// The stream ended (the producer closed or is gone, and nothing was left).
    done: bool,
}

impl Consumer {
    /// What this end counted.
    pub fn stats(&self) -> RingStats {
        self.end.stats()
    }

    /// Usable bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.end.core.geometry.slot_size
    }

    /// Lends the oldest committed slot, waiting for one.
    ///
    /// # Errors
    /// [`RingError::Closed`] when the producer closed its end and every frame it committed was
    /// received; [`RingError::PeerGone`] when it ended without closing (killed); as
    /// [`RingError::Corrupt`].
    pub fn recv(&mut self) -> Result<Slot, RingError> {
        self.recv_until(None)
    }

    /// As [`recv`](Self::recv), waiting at most `timeout` ([`RingError::TimedOut`]).
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Slot, RingError> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// The oldest committed slot if there is one now.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Option<Slot>, RingError> {
        if let Some(slot) = self.take()? {
            return Ok(Some(slot));
        }
        if self.end.peer_closed() || self.end.waiter.peer_hung_up() {
            // Whatever was committed before the end closed is visible now.
            return match self.take()? {
                Some(slot) => Ok(Some(slot)),
                None => Err(self.end.peer_error()),
            };
        }
        Ok(None)
    }

    /// As [`recv`](Self::recv), for async code: never blocks the thread.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O and time enabled (actix's arbiters are such runtimes).
    pub async fn recv_async(&mut self) -> Result<Slot, RingError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The producer closed or is gone: what it committed before is still taken, then the end.
    fn last_look(&mut self) -> Result<Slot, RingError> {
        self.take()?.ok_or_else(|| self.end.peer_error())
    }

    // The waits below learn of a hang-up from their sleep, not from a system call per look.
    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Slot, RingError> {
        loop {
            if let Some(slot) = self.take()? {
                return Ok(slot);
            }
            if self.end.peer_closed() {
                return self.last_look();
            }
            let core = &self.end.core;
            let ready = || core.committed().looks_non_empty() || self.end.peer_closed();
            match self.end.waiter.sleep(self.end.sleeping(), ready, deadline)? {
                Woke::Look => {}
                Woke::HungUp => return self.last_look(),
                Woke::TimedOut => return Err(RingError::TimedOut),
            }
        }
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Slot, RingError>> {
        loop {
            if let Some(slot) = self.take()? {
                self.end.waiter.settled();
                return Poll::Ready(Ok(slot));
            }
            if self.end.peer_closed() {
                return Poll::Ready(self.last_look());
            }
            let core = &self.end.core;
            let peer_closed = || core.side(at::PRODUCER, at::S_CLOSED).load(Ordering::SeqCst) != 0;
            let ready = || core.committed().looks_non_empty() || peer_closed();
            let sleeping = core.side(at::CONSUMER, at::S_SLEEPING);
            match self.end.waiter.poll_sleep(cx, sleeping, ready) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(Woke::HungUp)) => return Poll::Ready(self.last_look()),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn take(&mut self) -> Result<Option<Slot>, RingError> {
        self.end.check_peer()?;
        let core = &self.end.core;
        let Some(index) = core.committed().pop()? else { return Ok(None) };
        let index = index as u32;
        let header = core.buffer_header(index);
        let (len, sequence) = (header[0].load(Ordering::Relaxed), header[1].load(Ordering::Relaxed));
        if len > core.geometry.slot_size as u64 {
            core.release(index, &self.end.waiter.socket)?;
            return Err(Corrupt("slot length").into());
        }
        let socket = Arc::clone(&self.end.waiter.socket);
        Ok(Some(Slot { core: Arc::clone(core), socket, index, len: len as usize, sequence, released: false }))
    }
}

impl futures_core::Stream for Consumer {
    type Item = Result<Slot, RingError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.poll_recv(cx) {
            Poll::Ready(Ok(slot)) => Poll::Ready(Some(Ok(slot))),
            Poll::Ready(Err(RingError::Closed { .. })) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("slots", &self.end.core.geometry.buffers)
            .field("slot_size", &self.end.core.geometry.slot_size)
            .field("when_full", &self.end.core.policy)
            .finish()
    }
}

impl Serialize for Consumer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.end.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Consumer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Consumer { end: End::deserialize(deserializer, Role::Consumer)?, done: false })
    }
}

/// A committed frame lent to the consumer: read it in place (`Deref<Target = [u8]>`); dropping
/// it gives the slot back to the producer. Independent of the [`Consumer`] (it may outlive it,
/// and move to another thread), so a stream of slots can feed an actor.
pub struct Slot {
    core: Arc<Core>,
    /// The consumer's socket, to wake the producer with.
    socket: Arc<OwnedFd>,
    index: u32,
    len: usize,
    sequence: u64,
    /// Given back already (by [`Slot::release`]).
    released: bool,
}

impl Slot {
    /// The frame's number: 0 for the ring's first frame, one more for each next. Gaps are frames
    /// overwritten before the consumer took them ([`WhenFull::OverwriteOldest`]).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub(crate) fn bytes_range(&self) -> (usize, usize) {
        (self.core.geometry.buffer(self.index as usize) + at::BUFFER_HEADER, self.len)
    }

    pub(crate) fn memory(&self) -> &RingMemory {
        &self.core.memory
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Err(e) = self.core.release(self.index, &self.socket) {
            tracing::error!("could not give a ring slot back: {e}");
        }
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").field("sequence", &self.sequence).field("len", &self.len).finish()
    }
}

/// A slot lent to the producer: write into it (`DerefMut<Target = [u8]>`, [`slot_size`] bytes)
/// and [`commit`](SlotMut::commit) it. Dropped without commit, it is never seen by the consumer
/// (the next claim gets it again).
///
/// [`slot_size`]: Producer::slot_size
pub struct SlotMut<'a> {
    producer: &'a mut Producer,
    index: u32,
    committed: bool,
}

impl SlotMut<'_> {
    /// Publishes the first `len` bytes of the slot as the next frame.
    ///
    /// # Errors
    /// [`RingError::TooLarge`] when `len` exceeds the slot (the slot stays unpublished);
    /// [`RingError::Corrupt`].
    pub fn commit(mut self, len: usize) -> Result<(), RingError> {
        let slot_size = self.producer.slot_size();
        if len > slot_size {
            return Err(RingError::TooLarge { len, slot_size });
        }
        self.producer.commit(self.index, len)?;
        self.committed = true;
        Ok(())
    }

    pub(crate) fn bytes_range(&self) -> (usize, usize) {
        let geometry = &self.producer.end.core.geometry;
        (geometry.buffer(self.index as usize) + at::BUFFER_HEADER, geometry.slot_size)
    }

    pub(crate) fn memory(&self) -> &RingMemory {
        &self.producer.end.core.memory
    }
}

impl Drop for SlotMut<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.producer.spare.store(u64::from(self.index), Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for SlotMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotMut").field("sequence", &self.producer.sequence).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn checksum(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }

    /// A frame whose content follows from its number, with its checksum at the end.
    fn frame(n: u64, len: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..len - 8).map(|i| (n as usize * 31 + i) as u8).collect();
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
        bytes
    }

    fn intact(bytes: &[u8]) -> bool {
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        checksum(body).to_le_bytes() == sum
    }

    #[test]
    fn frames_arrive_in_order_and_intact_under_load_and_the_stream_ends_when_the_producer_closes() {
        let (mut producer, mut consumer) = channel(4, 4096, WhenFull::Block).unwrap();
        let writer = thread::spawn(move || {
            for n in 0..20_000u64 {
                let len = 16 + (n as usize * 7) % 4000;
                let mut slot = producer.claim().unwrap();
                slot[..len].copy_from_slice(&frame(n, len));
                slot.commit(len).unwrap();
            }
            producer.stats()
        });
        for n in 0..20_000u64 {
            let slot = consumer.recv().unwrap();
            assert_eq!(slot.sequence(), n);
            assert_eq!(slot.len(), 16 + (n as usize * 7) % 4000);
            assert!(intact(&slot), "frame {n} torn");
        }
        let stats = writer.join().unwrap();
        assert!(matches!(consumer.recv(), Err(RingError::Closed { peer: "producer" })));
        assert_eq!(stats.lost_wakeups + consumer.stats().lost_wakeups, 0);
        assert_eq!(stats.committed, 20_000);
    }

    #[test]
    fn a_slot_dropped_without_commit_is_never_read_and_is_claimed_again() {
        let (mut producer, mut consumer) = channel(2, 16, WhenFull::Block).unwrap();
        let mut slot = producer.claim().unwrap();
        slot[..4].copy_from_slice(b"half");
        drop(slot);
        assert!(consumer.try_recv().unwrap().is_none());
        producer.send(b"whole").unwrap();
        producer.send(b"next").unwrap();
        assert_eq!(&*consumer.recv().unwrap(), b"whole");
    }

    #[test]
    fn a_blocking_ring_makes_the_producer_wait_until_a_slot_comes_back() {
        let (mut producer, mut consumer) = channel(2, 8, WhenFull::Block).unwrap();
        producer.send(b"a").unwrap();
        producer.send(b"b").unwrap();
        assert!(producer.try_claim().unwrap().is_none());
        assert!(matches!(producer.claim_timeout(Duration::from_millis(20)), Err(RingError::TimedOut)));
        let first = consumer.recv().unwrap();
        assert!(producer.try_claim().unwrap().is_none(), "a lent slot is not free");
        drop(first);
        producer.send(b"c").unwrap();
        let got: Vec<Vec<u8>> = (0..2).map(|_| consumer.recv().unwrap().to_vec()).collect();
        assert_eq!(got, [b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn overwriting_takes_the_oldest_unread_frame_and_never_a_lent_one() {
        let (mut producer, mut consumer) = channel(3, 8, WhenFull::OverwriteOldest).unwrap();
        producer.send(b"frame 0").unwrap();
        let lent = consumer.recv().unwrap();
        for n in 1..=10u8 {
            producer.send(&[b'f', n]).unwrap();
        }
        assert_eq!(&*lent, b"frame 0", "the lent slot was written");
        // Two slots are left to the producer: the newest two frames survive.
        let a = consumer.recv().unwrap();
        let b = consumer.recv().unwrap();
        assert_eq!((a.sequence(), b.sequence()), (9, 10));
        assert_eq!(producer.stats().overwritten, 8);
        drop((lent, a, b));
        // The consumer holds nothing: the producer never waits.
        for _ in 0..100 {
            producer.try_claim().unwrap().expect("a slot").commit(1).unwrap();
        }
    }

    #[test]
    fn a_consumer_that_closes_stops_the_producer() {
        let (mut producer, consumer) = channel(2, 8, WhenFull::Block).unwrap();
        drop(consumer);
        assert!(matches!(producer.send(b"x"), Err(RingError::Closed { peer: "consumer" })));
    }

    #[test]
    fn commits_longer_than_a_slot_are_refused() {
        let (mut producer, _consumer) = channel(2, 8, WhenFull::Block).unwrap();
        assert!(matches!(producer.send(&[0; 9]), Err(RingError::TooLarge { len: 9, slot_size: 8 })));
        let slot = producer.claim().unwrap();
        assert_eq!(slot.len(), 8);
        assert!(matches!(slot.commit(9), Err(RingError::TooLarge { .. })));
    }

    #[test]
    fn garbage_in_the_committed_queue_is_corrupt_not_a_crash() {
        let (mut producer, mut consumer) = channel(2, 8, WhenFull::Block).unwrap();
        producer.send(b"ok").unwrap();
        // A broken producer writes an index past the last buffer into the queue's first cell.
        consumer.end.core.committed().cells[1].store(1_000, Ordering::Relaxed);
        assert!(matches!(consumer.recv(), Err(RingError::Corrupt(_))));
        // And a length longer than a slot.
        producer.send(b"ok").unwrap();
        consumer.end.core.buffer_header(1)[0].store(1 << 40, Ordering::Relaxed);
        let got = consumer.recv();
        assert!(matches!(got, Err(RingError::Corrupt(Corrupt("slot length")))), "{got:?}");
    }

    /// Many short waits on both sides, alternating who sleeps: no wake-up is lost.
    #[test]
    fn no_wakeup_is_lost_over_many_short_waits() {
        let (mut producer, mut consumer) = channel(2, 8, WhenFull::Block).unwrap();
        let writer = thread::spawn(move || {
            for n in 0..3_000u64 {
                if n % 3 == 0 {
                    thread::sleep(Duration::from_micros(50));
                }
                producer.send(&n.to_le_bytes()).unwrap();
            }
            producer.stats()
        });
        for n in 0..3_000u64 {
            if n % 5 == 0 {
                thread::sleep(Duration::from_micros(50));
            }
            assert_eq!(&*consumer.recv().unwrap(), n.to_le_bytes());
        }
        let (p, c) = (writer.join().unwrap(), consumer.stats());
        assert!(p.sleeps + c.sleeps > 0, "the test must make the sides sleep");
        assert_eq!((p.lost_wakeups, c.lost_wakeups), (0, 0), "{p:?} {c:?}");
    }

    #[tokio::test]
    async fn the_consumer_is_a_stream_and_the_producer_claims_without_blocking() {
        use futures_core::Stream;
        let (mut producer, mut consumer) = channel(2, 8, WhenFull::Block).unwrap();
        let writer = tokio::spawn(async move {
            for n in 0..500u64 {
                let mut slot = producer.claim_async().await.unwrap();
                slot[..8].copy_from_slice(&n.to_le_bytes());
                slot.commit(8).unwrap();
            }
        });
        let mut n = 0u64;
        while let Some(slot) = std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)).await {
            assert_eq!(&*slot.unwrap(), n.to_le_bytes());
            n += 1;
        }
        assert_eq!(n, 500);
        writer.await.unwrap();
    }

    #[test]
    fn ends_travel_with_their_descriptors_and_keep_working() {
        let (producer, consumer) = channel(2, 8, WhenFull::Block).unwrap();
        let (bytes, holds) =
            transfer::collecting_holds(|| bincode::serialize(&(producer, consumer)).unwrap());
        assert_eq!(holds.len(), 3, "the segment and each end's socket");
        let fds = holds.iter().map(|h| h.fd().try_clone_to_owned().unwrap()).collect();
        drop(holds);
        let (received, opened) =
            transfer::receiving(fds, || bincode::deserialize::<(Producer, Consumer)>(&bytes));
        assert_eq!(opened, 4, "each end: its segment and its socket");
        let (mut producer, mut consumer) = received.unwrap();
        producer.send(b"moved").unwrap();
        assert_eq!(&*consumer.recv().unwrap(), b"moved");
        assert_eq!(
            consumer.end.core.side(at::CONSUMER, at::S_PID).load(Ordering::Relaxed),
            u64::from(std::process::id())
        );
    }

    #[test]
    fn an_end_received_as_the_other_end_is_refused() {
        let (producer, _consumer) = channel(2, 8, WhenFull::Block).unwrap();
        let (bytes, holds) = transfer::collecting_holds(|| bincode::serialize(&producer).unwrap());
        let fds = holds.iter().map(|h| h.fd().try_clone_to_owned().unwrap()).collect();
        let (received, _) = transfer::receiving(fds, || bincode::deserialize::<Consumer>(&bytes));
        let err = received.unwrap_err().to_string();
        assert!(err.contains("producer end was received as its consumer end"), "{err}");
    }

    #[test]
    fn a_dropped_liveness_socket_reads_as_a_dead_peer() {
        let (producer, mut consumer) = channel(2, 8, WhenFull::Block).unwrap();
        // What a SIGKILL does: the producer's descriptors close, and it never says "closed".
        producer.end.moved.store(true, Ordering::SeqCst);
        drop(producer);
        let started = Instant::now();
        let got = consumer.recv();
        assert!(matches!(got, Err(RingError::PeerGone { peer: "producer", .. })), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[cfg(test)]
mod runtimes {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Receives one frame on `rt`, sent only once the consumer waits (so that it registers).
    fn wait_for(
        rt: &tokio::runtime::Runtime,
        producer: &mut Producer,
        consumer: &mut Consumer,
        frame: &[u8],
    ) {
        rt.block_on(async {
            let (got, ()) = tokio::join!(consumer.recv_async(), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                producer.send(frame).unwrap();
            });
            assert_eq!(&*got.unwrap(), frame);
        });
    }

    /// An end awaited on one runtime keeps working on the next one, also after the first is gone.
    #[test]
    fn an_end_moves_from_one_runtime_to_another() {
        let (mut producer, mut consumer) = channel(2, 8, WhenFull::Block).unwrap();
        let first = runtime();
        wait_for(&first, &mut producer, &mut consumer, b"1");
        drop(first);
        wait_for(&runtime(), &mut producer, &mut consumer, b"2");
        let stats = consumer.stats();
        assert!(stats.sleeps >= 2, "{stats:?}");
        assert_eq!((stats.safety_timeouts, stats.lost_wakeups), (0, 0), "{stats:?}");
    }
}
