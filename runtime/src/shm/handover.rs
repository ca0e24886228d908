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
//! Unlike seed 000's protocol, the receiver needs no TRANSFER COMPLETE message: its hold is a
//! kernel lock of its own, valid from the moment it acknowledges, whatever the sender does next.
//!
//! What each side's death does:
//! - the receiver dies before ACK: the sender sees the connection close and abandons the
//!   hand-over; if nobody else holds the segment, it is unlinked;
//! - the receiver dies after ACK: as above; its own lock went with it;
//! - the sender dies after NOTIFY: the segment file stays (no one unlinked it) and the receiver
//!   maps it as usual; it is then the only holder;
//! - the sender dies before the frame is sent: nothing was promised; the kernel dropped its
//!   lock and the next sweep removes the file.

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
    use crate::shm::segment::{Segment, SegmentError, SHM_DIR};
    use proptest::prelude::*;
    use std::path::Path;
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

    /// One step of a two-process hand-over, played against the real kernel: each side's holds
    /// are its own open file descriptions, so flock treats them as two processes.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        SenderDropsItsHandle,
        ReceiverMaps,
        AckArrives,
        SenderDies,
        ReceiverDies,
        ReceiverDropsItsHandle,
        Sweep,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::SenderDropsItsHandle),
            Just(Step::ReceiverMaps),
            Just(Step::AckArrives),
            Just(Step::SenderDies),
            Just(Step::ReceiverDies),
            Just(Step::ReceiverDropsItsHandle),
            Just(Step::Sweep),
        ]
    }

    struct World {
        name: String,
        sender_handle: Option<Arc<Segment>>,
        sender_alive: bool,
        handover: Option<Handover>,
        receiver: Option<Arc<Segment>>,
        receiver_alive: bool,
        acked: bool,
    }

    impl World {
        fn exists(&self) -> bool {
            Path::new(SHM_DIR).join(&self.name).exists()
        }

        fn apply(&mut self, step: Step) {
            match step {
                Step::SenderDropsItsHandle => drop(self.sender_handle.take()),
                Step::ReceiverMaps if self.receiver_alive && self.receiver.is_none() && !self.acked => {
                    match Segment::open(&self.name, 16) {
                        Ok(segment) => self.receiver = Some(segment),
                        Err(SegmentError::Gone(_)) => {
                            // Only allowed when the sender died before the receiver mapped.
                            assert!(!self.sender_alive, "a live sender's segment vanished before ACK");
                            self.receiver_alive = false; // the receiver reports the error
                        }
                        Err(e) => panic!("{e}"),
                    }
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
                    for held in
                        self.sender_handle.iter().chain(self.handover.iter().flat_map(|h| h.holds.iter()))
                    {
                        held.forget_on_drop();
                    }
                    self.sender_handle = None;
                    self.handover = None;
                }
                Step::ReceiverDies if self.receiver_alive => {
                    self.receiver_alive = false;
                    if let Some(r) = self.receiver.take() {
                        r.forget_on_drop();
                    }
                    if self.sender_alive && !self.acked {
                        self.handover.as_mut().unwrap().abandon().unwrap();
                    }
                }
                Step::ReceiverDropsItsHandle if self.acked => drop(self.receiver.take()),
                // What a sweep does to this segment (a real sweep would also touch other tests').
                Step::Sweep => {
                    crate::shm::segment::remove_if_unheld(&self.name);
                }
                _ => {}
            }
        }

        /// Nobody alive still needs it: not the sender, not a receiver that has it or is due it.
        fn needed(&self) -> bool {
            let sender_holds = self.sender_alive
                && (self.sender_handle.is_some() || self.handover.as_ref().is_some_and(|h| h.holds() > 0));
            sender_holds || (self.receiver_alive && self.receiver.is_some())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever the interleaving and whoever dies when: the segment exists while anyone
        /// alive needs it, and once nobody does (and a sweep ran), it is gone.
        #[test]
        fn never_freed_early_never_leaked(steps in proptest::collection::vec(step(), 0..12)) {
            let created = Segment::create(16).unwrap();
            let name = created.name().to_owned();
            let handover = Handover::notify(1, vec![Arc::clone(&created)]);
            let mut world = World {
                name,
                sender_handle: Some(created),
                sender_alive: true,
                handover: Some(handover),
                receiver: None,
                receiver_alive: true,
                acked: false,
            };
            for step in steps {
                world.apply(step);
                if world.needed() {
                    prop_assert!(world.exists(), "freed while needed, after {:?}", step);
                }
            }
            // Everyone lets go (or dies), then a sweep runs: nothing may be left.
            for step in [Step::ReceiverMaps, Step::AckArrives, Step::SenderDropsItsHandle, Step::ReceiverDropsItsHandle, Step::ReceiverDies, Step::SenderDies, Step::Sweep] {
                world.apply(step);
            }
            // A fork elsewhere in this test process (other tests spawn children) can hold a dup
            // of a descriptor for a moment; the janitor and the sweeper get it after.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while world.exists() && std::time::Instant::now() < deadline {
                crate::shm::segment::remove_if_unheld(&world.name);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            prop_assert!(!world.exists(), "leaked");
        }
    }
}
