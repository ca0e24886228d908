//! The hand-over of segments from one process to another: notify, acknowledge, transfer.
//!
//! A frame whose body holds segment handles is a hand-over. Its sender keeps a [`Handover`]
//! until the receiver has the segments:
//!
//! | state | entered when | the sender | the receiver |
//! |---|---|---|---|
//! | [`Notified`](HandoverState::Notified) | the frame is sent (NOTIFY) | holds every segment in it | has not mapped them yet |
//! | [`Acknowledged`](HandoverState::Acknowledged) | the receiver's ACK arrives | still holds them | holds them (mapped and locked) |
//! | [`Complete`](HandoverState::Complete) | the sender drops its holds (TRANSFER COMPLETE) | no longer holds them | is a holder like any other |
//! | [`Abandoned`](HandoverState::Abandoned) | the receiver died first | drops its holds | gone; the kernel dropped its locks |
//!
//! Transitions: `Notified -> Acknowledged -> Complete`, and `Notified | Acknowledged ->
//! Abandoned`. Anything else is a [`HandoverError`] (a duplicate or unknown acknowledgement).
//!
//! Liveness is the kernel's: a segment is an anonymous memory file whose descriptor travels
//! with the frame, and its memory lives while any descriptor (one waiting in a socket's queue
//! included) or mapping does. The protocol is about ownership: who may write which range of a
//! `SharedSliceMut` (the sender gives it up at NOTIFY), and how long the sender keeps its own
//! mapping (until ACK, or the receiver's death). Unlike seed 000's protocol, the receiver needs
//! no TRANSFER COMPLETE message: its descriptor is its own from the moment it received it.
//!
//! What each side's death does:
//! - the receiver dies before ACK: the sender sees the connection close and abandons the
//!   hand-over; the kernel frees the descriptor that waited in the dead receiver's queue, and
//!   the memory goes with the last holder;
//! - the receiver dies after ACK: as above; its own descriptor and mapping went with it;
//! - the sender dies after NOTIFY: the descriptor in flight keeps the memory; the receiver maps
//!   it as usual and is then the only holder;
//! - the sender dies before the frame is sent: nothing was promised; its holds went with it.

use crate::shm::transfer::Hold;
use std::fmt;

/// Where one hand-over is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoverState {
    /// Sent; the sender holds the segments.
    Notified,
    /// The receiver holds them too.
    Acknowledged,
    /// The sender let go; the receiver holds them.
    Complete,
    /// The receiver died; the sender let go.
    Abandoned,
}

/// A transition the protocol does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("hand-over {transfer}: cannot go from {from:?} to {to:?}")]
pub struct HandoverError {
    /// The hand-over.
    pub transfer: u64,
    /// Its state.
    pub from: HandoverState,
    /// The state asked for.
    pub to: HandoverState,
}

/// The sender's record of one hand-over.
pub struct Handover {
    transfer: u64,
    state: HandoverState,
    holds: Vec<Hold>,
}

impl Handover {
    /// NOTIFY: the frame `transfer` carrying these segments was sent.
    pub fn notify(transfer: u64, holds: Vec<Hold>) -> Handover {
        Handover { transfer, state: HandoverState::Notified, holds }
    }

    /// The receiver's ACK arrived.
    ///
    /// # Errors
    /// Unless the hand-over is `Notified`.
    pub fn acknowledge(&mut self) -> Result<(), HandoverError> {
        self.go(HandoverState::Notified, HandoverState::Acknowledged)
    }

    /// TRANSFER COMPLETE: the sender drops its holds.
    ///
    /// # Errors
    /// Unless the hand-over is `Acknowledged`.
    pub fn complete(&mut self) -> Result<(), HandoverError> {
        self.go(HandoverState::Acknowledged, HandoverState::Complete)?;
        self.holds.clear();
        Ok(())
    }

    /// The receiver died: the sender drops its holds.
    ///
    /// # Errors
    /// When the hand-over has ended already.
    pub fn abandon(&mut self) -> Result<(), HandoverError> {
        match self.state {
            HandoverState::Notified | HandoverState::Acknowledged => {
                self.state = HandoverState::Abandoned;
                self.holds.clear();
                Ok(())
            }
            from => Err(HandoverError { transfer: self.transfer, from, to: HandoverState::Abandoned }),
        }
    }

    /// Where it is.
    pub fn state(&self) -> HandoverState {
        self.state
    }

    /// How many segments the sender still holds for it.
    pub fn holds(&self) -> usize {
        self.holds.len()
    }

    fn go(&mut self, from: HandoverState, to: HandoverState) -> Result<(), HandoverError> {
        if self.state == from {
            self.state = to;
            Ok(())
        } else {
            Err(HandoverError { transfer: self.transfer, from: self.state, to })
        }
    }
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("transfer", &self.transfer)
            .field("state", &self.state)
            .field("holds", &self.holds.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::segment::{Segment, SegmentId};
    use crate::shm::SharedSliceMut;
    use crate::sys::socket;
    use proptest::prelude::*;
    use std::marker::PhantomData;
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::Arc;

    fn handover() -> Handover {
        Handover::notify(7, vec![Segment::create(16).unwrap()])
    }

    #[test]
    fn the_happy_path_releases_the_holds_at_transfer_complete() {
        let mut h = handover();
        assert_eq!((h.state(), h.holds()), (HandoverState::Notified, 1));
        h.acknowledge().unwrap();
        assert_eq!((h.state(), h.holds()), (HandoverState::Acknowledged, 1));
        h.complete().unwrap();
        assert_eq!((h.state(), h.holds()), (HandoverState::Complete, 0));
    }

    #[test]
    fn every_transition_outside_the_protocol_is_refused() {
        let mut h = handover();
        assert!(h.complete().is_err(), "complete before ack");
        h.acknowledge().unwrap();
        assert!(h.acknowledge().is_err(), "duplicate ack");
        h.complete().unwrap();
        assert!(h.complete().is_err());
        assert!(h.abandon().is_err(), "abandon after complete");
        let mut a = handover();
        a.abandon().unwrap();
        assert_eq!(a.holds(), 0);
        assert!(a.acknowledge().is_err(), "ack after abandon");
        let mut b = handover();
        b.acknowledge().unwrap();
        b.abandon().unwrap();
        assert_eq!(b.state(), HandoverState::Abandoned);
    }

    /// One step of a two-process hand-over, played against the real kernel: the descriptor
    /// travels through a real socket pair, and a side's death closes what it held, as the
    /// kernel does for a killed process.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        SenderSends,
        SenderDropsItsHandle,
        ReceiverMaps,
        AckArrives,
        SenderDies,
        ReceiverDies,
        ReceiverDropsItsHandle,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::SenderSends),
            Just(Step::SenderDropsItsHandle),
            Just(Step::ReceiverMaps),
            Just(Step::AckArrives),
            Just(Step::SenderDies),
            Just(Step::ReceiverDies),
            Just(Step::ReceiverDropsItsHandle),
        ]
    }

    const PATTERN: &[u8; 8] = b"ensemble";

    struct World {
        id: SegmentId,
        sender_handle: Option<Arc<Segment>>,
        sender_alive: bool,
        handover: Option<Handover>,
        to_receiver: Option<OwnedFd>,
        receiver_socket: Option<OwnedFd>,
        sent: bool,
        receiver: Option<Arc<Segment>>,
        receiver_alive: bool,
        acked: bool,
    }

    impl World {
        fn new() -> World {
            let mut array = SharedSliceMut::<u8>::new(16).unwrap();
            array[..8].copy_from_slice(PATTERN);
            let created = Arc::clone(&array.segment);
            drop(array);
            let (a, b) = socket::seqpacket_pair().unwrap();
            World {
                id: created.id(),
                handover: Some(Handover::notify(1, vec![Arc::clone(&created) as crate::shm::Hold])),
                sender_handle: Some(created),
                sender_alive: true,
                to_receiver: Some(a),
                receiver_socket: Some(b),
                sent: false,
                receiver: None,
                receiver_alive: true,
                acked: false,
            }
        }

        fn apply(&mut self, step: Step) {
            match step {
                Step::SenderSends
                    if self.sender_alive
                        && !self.sent
                        && self.handover.as_ref().is_some_and(|h| h.holds() > 0) =>
                {
                    let held = &self.handover.as_ref().unwrap().holds[0];
                    let socket = self.to_receiver.as_ref().unwrap();
                    // A dead receiver's end is closed: the send fails and the sender abandons.
                    if socket::send_datagram(socket.as_fd(), &[b"handle"], &[held.fd()]).is_ok() {
                        self.sent = true;
                    }
                }
                Step::SenderDropsItsHandle => drop(self.sender_handle.take()),
                Step::ReceiverMaps
                    if self.receiver_alive && self.sent && self.receiver.is_none() && !self.acked =>
                {
                    let mut buf = [0u8; 16];
                    let socket = self.receiver_socket.as_ref().unwrap();
                    let got = socket::recv_datagram(socket.as_fd(), &mut buf).unwrap();
                    let segment = Segment::adopt(got.fds[0].as_fd(), 16, true).unwrap();
                    let array = SharedSliceMut::<u8> { segment, start: 0, len: 16, _element: PhantomData };
                    assert_eq!(&array[..8], PATTERN, "freed early");
                    self.receiver = Some(array.segment);
                }
                Step::AckArrives if self.receiver.is_some() && !self.acked => {
                    self.acked = true;
                    if self.sender_alive {
                        let h = self.handover.as_mut().unwrap();
                        h.acknowledge().unwrap();
                        h.complete().unwrap();
                    }
                }
                Step::SenderDies if self.sender_alive => {
                    self.sender_alive = false;
                    self.sender_handle = None;
                    self.handover = None;
                    self.to_receiver = None;
                }
                Step::ReceiverDies if self.receiver_alive => {
                    self.receiver_alive = false;
                    self.receiver = None;
                    self.receiver_socket = None; // frees the descriptor waiting in its queue
                    if self.sender_alive && !self.acked {
                        self.handover.as_mut().unwrap().abandon().unwrap();
                    }
                }
                Step::ReceiverDropsItsHandle if self.acked => drop(self.receiver.take()),
                _ => {}
            }
        }

        /// Whether any descriptor or mapping of the segment is left in this process.
        fn exists(&self) -> bool {
            let inode = format!(" {} ", self.id.ino);
            let mapped = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            let by_fd = std::fs::read_dir("/proc/self/fd").unwrap().flatten().any(|e| {
                std::fs::metadata(e.path()).is_ok_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino() == self.id.ino && m.dev() == self.id.dev
                })
            });
            by_fd || mapped.lines().any(|l| l.contains(&inode) && l.contains("memfd:ensemble"))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever the interleaving and whoever dies when: a receiver that maps the segment
        /// finds it intact, and once everyone let go or died, nothing of it is left.
        #[test]
        fn never_freed_early_never_leaked(steps in proptest::collection::vec(step(), 0..14)) {
            let mut world = World::new();
            for step in steps {
                world.apply(step);
            }
            for step in [Step::SenderSends, Step::ReceiverMaps, Step::AckArrives, Step::SenderDropsItsHandle, Step::ReceiverDropsItsHandle, Step::ReceiverDies, Step::SenderDies] {
                world.apply(step);
            }
            prop_assert!(!world.exists(), "leaked");
        }
    }
}
