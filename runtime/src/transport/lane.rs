//! The fast lane: a connection's frames through a pair of rings in shared memory while both
//! sides are busy, so that a side already awake and looking gets a frame without a system call.
//!
//! The socket stays the connection's backbone: frames too large for a slot, frames that carry
//! descriptors, the switch-over itself and the peer's death all go through it, or are seen on
//! it. Order across both paths is kept by making the ring the master order once the lane is on:
//! a frame that must take the socket leaves an empty slot (a *marker*) in the ring, and the
//! reader, on a marker, reads exactly one frame from the socket before it looks at the ring
//! again.
//!
//! Switching over, without a gap or a reordering in either direction:
//! 1. the parent makes both rings, keeps its consuming end of the child-to-parent ring (not yet
//!    read), and sends a *lane offer* on the socket (a datagram of framing kind "lane" carrying
//!    the child's two ends); every frame it sends after the offer follows the lane's order;
//! 2. the child, reading the offer in socket order, takes up its ends, reads the parent's
//!    frames in ring order from then on, and answers with an empty lane datagram on the socket,
//!    after which its own frames follow the lane's order;
//! 3. the parent reads the socket until that answer, then the ring.
//!
//! Waiting: a reader spins only while it pays: never when the two sides share the only CPU
//! either may run on, and only where a frame is likely soon ([`SpinFor`]): in the parent, a
//! caller awaiting its reply reads the lane itself for up to 50 µs (see
//! `connection::PendingCall`); in the child, the reader spins for the next call once the
//! handlers have run, for a budget that halves after a spin that found nothing and returns to
//! full when a frame came soon after the reader slept. Then it sleeps on the ring's doorbell,
//! which the writer rings only when it saw "I sleep" (see [`crate::ring`]). An idle lane costs
//! no CPU beyond the ring's safety timeouts (2 s).
//!
//! The rings are the lane's own (`crate::ring::spsc`): one producer, one consumer, frames copied
//! in and out in order, so that a frame crosses between the CPUs with its slot's cache lines
//! alone (the general ring's two shared index queues cost ~0.7 µs of a round trip here).
//!
//! What a peer writes into the ring is input like any other: a slot length past the slot, an
//! index out of range or a frame that does not decode is a protocol error, never a crash.

use crate::ring::spsc::{self, Consumer, Producer};
use crate::ring::{self, Exported, RingError};
use crate::sys;
use crate::transport::framing::ProtocolError;
use crate::transport::link::ReadError;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The shape of a fast lane's two rings (one per direction).
///
/// # Examples
/// ```
/// use ensemble_runtime::transport::LaneConfig;
/// let lane = LaneConfig { slots: 128, ..LaneConfig::default() };
/// assert_eq!(lane.slot_size, LaneConfig::default().slot_size);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneConfig {
    /// Frames that can wait in each direction, rounded up to a power of two (2 to 65,536).
    /// Default: 64.
    pub slots: usize,
    /// The largest frame (header and body, encoded) that travels in a slot; larger ones take
    /// the socket, in order. Default: 4032 bytes (a slot and its header in one 4 KiB page).
    pub slot_size: usize,
}

impl Default for LaneConfig {
    fn default() -> Self {
        LaneConfig { slots: 64, slot_size: 4032 }
    }
}

/// What one side's fast lane has done so far.
///
/// # Examples
/// ```
/// use ensemble_runtime::transport::LaneStats;
/// let stats = LaneStats::default();
/// assert_eq!(stats.lost_wakeups, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Slots this side committed to the other (frames, and markers of frames sent on the
    /// socket).
    pub sent: u64,
    /// Slots this side took from the other's ring (frames, and markers).
    pub received: u64,
    /// Times this side's reader slept (a spin, if any, found nothing).
    pub sleeps: u64,
    /// Sleeps that ended by the ring's safety timeout rather than a doorbell.
    pub safety_timeouts: u64,
    /// Safety timeouts that found a frame: wake-ups that were lost. Zero unless there is a bug.
    pub lost_wakeups: u64,
    /// Spins of this side's reader that found a frame.
    pub spins_found: u64,
    /// Spins that found nothing (the reader then slept).
    pub spins_missed: u64,
}

/// Why a fast lane could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// A ring could not be made (shape out of bounds, no memory).
    #[error("could not create the fast lane's rings")]
    Ring(#[from] ring::CreateRingError),
    /// Its descriptors could not be duplicated or sent.
    #[error("could not hand the fast lane to the child")]
    Io(#[from] std::io::Error),
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
}

/// Whether a reader with a fast lane may spin for the next frame before it sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpinFor {
    /// Sleep at once (on the ring's doorbell): nothing is expected soon.
    Nothing,
    /// Do not wait on the ring at all: another task of this thread runs first (a handler with
    /// frames to handle) and wakes this one when it is done. The peer need not ring meanwhile.
    Later,
    /// Spin if frames came recently (the next is likely close behind).
    NextFrame,
    /// Spin: a reply is awaited.
    Reply,
}

/// The most a lane datagram's body may hold: an offer is 16 bytes.
pub(crate) const MAX_LANE_BODY: usize = 64;

/// The parent's offer: the child's consuming end of the parent-to-child ring and its producing
/// end of the child-to-parent ring. Body: the two segment lengths (little-endian u64s);
/// descriptors: segment and socket of each end, in that order.
pub(crate) struct Offer {
    pub consumer: Exported,
    pub producer: Exported,
}

impl Offer {
    pub(crate) fn encode(self) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut body = self.consumer.segment_len.to_le_bytes().to_vec();
        body.extend_from_slice(&self.producer.segment_len.to_le_bytes());
        let fds =
            vec![self.consumer.segment, self.consumer.socket, self.producer.segment, self.producer.socket];
        (body, fds)
    }

    /// Takes up the ends of an offer; a malformed one is a protocol error.
    pub(crate) fn accept(body: &[u8], fds: Vec<OwnedFd>) -> Result<(Consumer, Producer), ProtocolError> {
        let bad = |why: String| ProtocolError::Lane(format!("an offer: {why}"));
        if body.len() != 16 || fds.len() != 4 {
            return Err(bad(format!(
                "{} bytes and {} descriptors, expected 16 and 4",
                body.len(),
                fds.len()
            )));
        }
        let len = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let mut fds = fds.into_iter();
        let mut next = || fds.next().expect("four descriptors");
        let consumer = Exported { segment: next(), segment_len: len(0), socket: next() };
        let producer = Exported { segment: next(), segment_len: len(8), socket: next() };
        let consumer = Consumer::import(&consumer).map_err(bad)?;
        let producer = Producer::import(&producer).map_err(bad)?;
        Ok((consumer, producer))
    }
}

/// Makes a lane's two rings: the offer for the child, and the parent's ends (its producer of
/// the parent-to-child ring, its consumer of the other).
pub(crate) fn create(config: LaneConfig) -> Result<(Offer, Producer, Consumer), LaneError> {
    let (to_child, mut child_reads) = spsc::channel(config.slots, config.slot_size)?;
    let (mut child_writes, from_child) = spsc::channel(config.slots, config.slot_size)?;
    let offer = Offer { consumer: child_reads.export()?, producer: child_writes.export()? };
    Ok((offer, to_child, from_child))
}

/// What the reader found in the ring.
pub(crate) enum Item {
    /// A frame's bytes.
    Frame(Vec<u8>),
    /// The next frame is on the socket.
    Marker,
}

/// The reading side of a lane: its ring's consumer, and where the order stands.
#[derive(Debug)]
pub(crate) struct LaneRx {
    consumer: Consumer,
    /// The peer's frames follow the lane's order (its switch-over was read).
    on: bool,
    /// Markers read whose socket frames are not read yet.
    owed: usize,
    spin: Spin,
}

impl LaneRx {
    /// A reader of `consumer`, whose writer (`peer`) has switched over already (`on`) or will
    /// say so on the socket.
    pub(crate) fn new(mut consumer: Consumer, on: bool, peer: u32) -> LaneRx {
        // The peer's death is seen at once (its end of the doorbell hangs up); the safety
        // timeout only bounds a lost wake-up, and each one wakes an idle process.
        consumer.set_safety_timeout(SAFETY_TIMEOUT);
        LaneRx { consumer, on, owed: 0, spin: Spin::new(peer) }
    }

    /// How long a caller waiting for its reply may spin on this ring, if spinning pays at all.
    pub(crate) fn spin_budget(&mut self) -> Option<Duration> {
        self.spin.pays().then_some(SPIN_MAX)
    }

    /// Clears this reader's "I sleep" flag; whether it was set.
    pub(crate) fn wake_up(&self) -> bool {
        self.consumer.wake_up()
    }

    /// Sets it again, with the re-check; whether a frame is there.
    pub(crate) fn back_to_sleep(&self) -> bool {
        self.consumer.back_to_sleep()
    }

    /// Whether the ring seems to hold a frame: for the watchdog, which looks whether the
    /// runtime reading the connection neglects it.
    pub(crate) fn looks_ready(&self) -> bool {
        self.on && self.consumer.looks_ready()
    }

    /// What the reading side counted; `sent` is the writer's to fill in.
    pub(crate) fn stats(&self) -> LaneStats {
        let ring = self.consumer.stats();
        LaneStats {
            sent: 0,
            received: ring.committed,
            sleeps: ring.sleeps,
            safety_timeouts: ring.safety_timeouts,
            lost_wakeups: ring.lost_wakeups,
            spins_found: self.spin.found,
            spins_missed: self.spin.missed,
        }
    }

    /// Whether a marker was taken whose frame is still on the socket.
    pub(crate) fn owes_socket_frame(&self) -> bool {
        self.owed > 0
    }

    /// Whether the next frame is read from the ring (else from the socket).
    pub(crate) fn reads_ring(&self) -> bool {
        self.on && self.owed == 0
    }

    /// The peer's switch-over was read.
    pub(crate) fn switched(&mut self) -> Result<(), ProtocolError> {
        if self.on {
            return Err(ProtocolError::Lane("a second switch-over".into()));
        }
        self.on = true;
        Ok(())
    }

    /// A frame was read from the socket.
    pub(crate) fn socket_frame_read(&mut self) {
        if self.on {
            self.owed = self.owed.saturating_sub(1);
        }
    }

    /// The next item if one is in the ring now (synchronous code: the last frames of a child
    /// that exited).
    pub(crate) fn take_now(&mut self) -> Result<Option<Item>, ReadError> {
        match self.consumer.take_now() {
            Ok(Some(frame)) => Ok(Some(self.item(frame))),
            Ok(None) => Ok(None),
            Err(e) => Err(read_error(e)),
        }
    }

    /// The next item, spinning first when `spin` asks for it and that pays, then
    /// sleeping on the ring's doorbell.
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>, spin: SpinFor) -> Poll<Result<Item, ReadError>> {
        self.consumer.wake_up();
        let mut looks = 0;
        loop {
            match self.consumer.take_now() {
                Ok(Some(frame)) => {
                    self.consumer.settle();
                    self.spin.found();
                    return Poll::Ready(Ok(self.item(frame)));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(read_error(e))),
            }
            // One spin per poll: a ring that looks ready and yields nothing (a closed or
            // scribbled one) goes on to the wait below, which tells which.
            looks += 1;
            let consumer = &self.consumer;
            let wanted = match spin {
                SpinFor::Later => return Poll::Pending,
                SpinFor::Nothing => false,
                SpinFor::NextFrame => self.spin.hot,
                SpinFor::Reply => true,
            };
            if looks == 1 && wanted {
                if self.spin.spin(|| consumer.looks_ready()) {
                    continue;
                }
                // Nothing came within the spin: cold until a frame comes.
                self.spin.hot = false;
            }
            return match self.consumer.poll_recv(cx) {
                Poll::Ready(Ok(frame)) => {
                    self.spin.found();
                    Poll::Ready(Ok(self.item(frame)))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(read_error(e))),
                Poll::Pending => {
                    self.spin.sleeping();
                    Poll::Pending
                }
            };
        }
    }

    #[cfg(test)]
    pub(crate) fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// What a frame taken from the ring is: an empty one is a marker.
    fn item(&mut self, frame: Vec<u8>) -> Item {
        if frame.is_empty() {
            self.owed += 1;
            Item::Marker
        } else {
            Item::Frame(frame)
        }
    }
}

/// A ring error met while reading: the peer gone, or its writes corrupt.
fn read_error(e: RingError) -> ReadError {
    match e {
        RingError::PeerGone { .. } | RingError::Closed { .. } => ReadError::Closed,
        RingError::Corrupt(corrupt) => ReadError::Protocol(ProtocolError::Lane(corrupt.to_string())),
        RingError::Io(e) => ReadError::Local(e),
        other => ReadError::Local(std::io::Error::other(other)),
    }
}

/// How long a lane's reader sleeps at most before it looks again by itself.
const SAFETY_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a reader spins before it sleeps: about what a sleep and a wake-up cost here.
const SPIN_MAX: Duration = Duration::from_micros(50);
/// The shortest budget a reader keeps after spins that found nothing.
const SPIN_MIN: Duration = Duration::from_micros(2);
/// A frame found within this long after the reader went to sleep (a wake-up included, which
/// costs 10-40 µs here) would have been caught by a full spin: the budget goes back up.
const SPIN_WOULD_HAVE_PAID: Duration = Duration::from_micros(100);
/// How often whether spinning can pay at all is looked at again (CPU affinities change).
const SPIN_RECHECK: Duration = Duration::from_secs(1);

/// When and how long a lane's reader spins.
#[derive(Debug)]
struct Spin {
    /// The process on the other side, whose CPU affinity matters.
    peer: u32,
    budget: Duration,
    /// A frame was found since the last sleep: more are likely.
    hot: bool,
    /// When the reader last went to sleep, if it has not found a frame since.
    slept: Option<Instant>,
    pays: bool,
    checked: Option<Instant>,
    found: u64,
    missed: u64,
}

impl Spin {
    fn new(peer: u32) -> Spin {
        Spin {
            peer,
            budget: SPIN_MAX,
            hot: false,
            slept: None,
            pays: false,
            checked: None,
            found: 0,
            missed: 0,
        }
    }

    /// Whether spinning can pay: not when this side and the peer can only run on one and the
    /// same CPU (the spin would keep the peer off it).
    fn pays(&mut self) -> bool {
        if self.checked.is_none_or(|at| at.elapsed() >= SPIN_RECHECK) {
            self.checked = Some(Instant::now());
            self.pays = spin_pays(self.peer);
        }
        self.pays
    }

    /// Spins until `ready` or the budget is spent; a spin that found nothing halves the budget.
    fn spin(&mut self, ready: impl Fn() -> bool) -> bool {
        if !self.pays() {
            return false;
        }
        let start = Instant::now();
        loop {
            for _ in 0..32 {
                if ready() {
                    self.found += 1;
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= self.budget {
                self.budget = (self.budget / 2).max(SPIN_MIN);
                self.missed += 1;
                return false;
            }
        }
    }

    fn sleeping(&mut self) {
        self.slept = Some(Instant::now());
    }

    /// A frame was found. If it came soon after the reader went to sleep, a full spin would
    /// have caught it: the budget goes back up to the full spin.
    fn found(&mut self) {
        self.hot = true;
        if let Some(slept) = self.slept.take() {
            if slept.elapsed() < SPIN_WOULD_HAVE_PAID {
                self.budget = SPIN_MAX;
            }
        }
    }
}

/// Whether this thread and process `peer` may run on different CPUs.
fn spin_pays(peer: u32) -> bool {
    let Ok(ours) = sys::cpu_set(0) else { return false };
    match ours.len() {
        0 => false,
        1 => sys::cpu_set(peer).map_or(true, |theirs| theirs != ours),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spin_that_finds_nothing_halves_its_budget_down_to_a_floor() {
        let mut spin = Spin::new(std::process::id());
        spin.pays = true;
        spin.checked = Some(Instant::now());
        let before = spin.budget;
        assert!(!spin.spin(|| false));
        assert_eq!(spin.budget, (before / 2).max(SPIN_MIN));
        for _ in 0..20 {
            spin.spin(|| false);
        }
        assert_eq!(spin.budget, SPIN_MIN);
        assert!(spin.spin(|| true), "a spin stops as soon as the condition holds");
    }

    #[test]
    fn a_frame_soon_after_a_sleep_lengthens_the_budget_and_a_late_one_does_not() {
        let mut spin = Spin::new(std::process::id());
        spin.budget = SPIN_MIN;
        spin.sleeping();
        spin.found();
        assert_eq!(spin.budget, SPIN_MAX);
        assert!(spin.hot);
        spin.budget = SPIN_MIN;
        spin.slept = Some(Instant::now() - Duration::from_millis(5));
        spin.found();
        assert_eq!(spin.budget, SPIN_MIN, "a long sleep says spinning would not have paid");
    }

    #[test]
    fn a_process_may_spin_against_itself_only_with_more_than_one_cpu() {
        let ours = sys::cpu_set(0).unwrap();
        assert_eq!(spin_pays(std::process::id()), ours.len() > 1);
    }

    #[test]
    fn an_offer_round_trips_and_a_malformed_one_is_a_protocol_error() {
        let (offer, mut to_child, mut from_child) = create(LaneConfig { slots: 4, slot_size: 64 }).unwrap();
        let (body, fds) = offer.encode();
        let (mut child_reads, mut child_writes) = Offer::accept(&body, fds).unwrap();
        assert!(to_child.try_send(b"down").unwrap());
        assert!(child_writes.try_send(b"up").unwrap());
        assert_eq!(child_reads.recv_timeout(Duration::from_secs(5)).unwrap(), b"down");
        assert_eq!(from_child.recv_timeout(Duration::from_secs(5)).unwrap(), b"up");
        let error = Offer::accept(&body[..8], Vec::new()).map(|_| ()).unwrap_err();
        assert!(error.to_string().contains("fast lane: an offer"), "{error}");
    }
}
