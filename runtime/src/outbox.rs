//! One side's sending end of a connection, with the hand-overs it has in flight.
//!
//! Every frame leaves through an `Outbox`. A frame whose body holds segment handles gets a
//! hand-over id and a [`Handover`] in `Notified` state, registered *before* the frame is sent
//! (the acknowledgement may come back at once); the peer's acknowledgement completes it, and
//! the peer's death abandons every one still open. Either way the holds are dropped.

use crate::shm::handover::Handover;
use crate::transport::{Admission, Link, LinkSendError};
use crate::wire::{self, AckHeader, Encoded, WireError};
use serde::Serialize;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Why a frame was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The body (or header) did not encode, or is over the message limit; nothing was sent.
    #[error("could not encode the message")]
    Encode(#[source] WireError),
    /// The send queue is full; nothing was sent.
    #[error("the send queue is full")]
    Full,
    /// The peer's end is closed.
    #[error("the peer is gone")]
    Closed,
    /// The kernel refused the frame (e.g. no memory for a large body).
    #[error("the frame could not be sent")]
    Io(#[source] std::io::Error),
    /// The peer broke the protocol (garbage in the fast lane's ring).
    #[error("the peer broke the protocol")]
    Protocol(#[source] crate::transport::ProtocolError),
}

impl From<LinkSendError> for SendError {
    fn from(e: LinkSendError) -> Self {
        match e {
            LinkSendError::Full => SendError::Full,
            LinkSendError::Closed => SendError::Closed,
            LinkSendError::TooLarge { len, limit } => SendError::Encode(WireError::TooLarge { len, limit }),
            LinkSendError::Io(e) => SendError::Io(e),
            LinkSendError::Broken(e) => SendError::Protocol(e),
        }
    }
}

/// A sending end: frames with headers of type `H`.
pub struct Outbox<H> {
    link: Arc<Link>,
    next_transfer: AtomicU64,
    in_flight: Mutex<HashMap<u64, Handover>>,
    drained: Condvar,
    _header: PhantomData<fn(H)>,
}

impl<H: AckHeader> Outbox<H> {
    /// Sends on `link`.
    pub fn new(link: Arc<Link>) -> Self {
        Outbox {
            link,
            next_transfer: AtomicU64::new(1),
            in_flight: Mutex::new(HashMap::new()),
            drained: Condvar::new(),
            _header: PhantomData,
        }
    }

    /// The link frames leave on.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Encodes and sends one frame.
    ///
    /// # Errors
    /// [`SendError::Encode`] when it does not encode or is over the limit, [`SendError::Full`]
    /// when a bounded send finds the queue full, [`SendError::Closed`] when the peer is gone.
    pub fn send<B: Serialize + ?Sized>(
        &self,
        header: &H,
        body: &B,
        admission: Admission,
    ) -> Result<(), SendError> {
        if admission == Admission::Bounded && !self.link.has_room() {
            return Err(SendError::Full);
        }
        let encoded = wire::encode_into(self.link.frame_buf(), header, body).map_err(SendError::Encode)?;
        self.send_encoded(encoded, admission)
    }

    /// Sends an encoded frame, opening a hand-over if it carries segments.
    ///
    /// # Errors
    /// As [`Outbox::send`]; an open hand-over is abandoned when the frame was not sent.
    pub fn send_encoded(&self, mut encoded: Encoded, admission: Admission) -> Result<(), SendError> {
        // The segments' descriptors travel with the frame, in the order of their indexes.
        let fds = encoded
            .holds
            .iter()
            .map(|hold| hold.fd().try_clone_to_owned())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(SendError::Io)?;
        let transfer = match encoded.carries_segments() {
            true => {
                let transfer = self.next_transfer.fetch_add(1, Ordering::Relaxed);
                encoded.set_transfer(transfer).map_err(SendError::Io)?;
                let holds = std::mem::take(&mut encoded.holds);
                self.lock_in_flight().insert(transfer, Handover::notify(transfer, holds));
                Some(transfer)
            }
            false => None,
        };
        let sent = self.link.send(encoded.frame, fds, admission);
        if let Err(e) = sent {
            if let Some(transfer) = transfer {
                self.finish(transfer, |h| h.abandon());
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// The peer holds the segments of hand-over `transfer`: TRANSFER COMPLETE.
    pub fn acknowledged(&self, transfer: u64) {
        self.finish(transfer, |h| h.acknowledge().and_then(|()| h.complete()));
    }

    /// Tells the peer that this side holds the segments of its hand-over `transfer`.
    pub fn acknowledge(&self, transfer: u64) {
        if let Ok(mut encoded) = wire::encode_into(self.link.frame_buf(), &H::ack(transfer), &()) {
            if encoded.set_acknowledges(transfer).is_ok() {
                let _ = self.send_encoded(encoded, Admission::Control);
            }
        }
    }

    /// The peer is gone: every open hand-over is abandoned and its holds dropped.
    pub fn abandon_all(&self) {
        let open: Vec<_> = self.lock_in_flight().drain().collect();
        for (_, mut handover) in open {
            let _ = handover.abandon();
        }
        self.drained.notify_all();
    }

    /// Waits until no hand-over is open, at most `timeout`. Returns whether none is.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let in_flight = self.lock_in_flight();
        let (in_flight, _) = self
            .drained
            .wait_timeout_while(in_flight, timeout, |m| !m.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        in_flight.is_empty()
    }

    /// How many hand-overs are open.
    pub fn in_flight(&self) -> usize {
        self.lock_in_flight().len()
    }

    fn finish(
        &self,
        transfer: u64,
        end: impl FnOnce(&mut Handover) -> Result<(), crate::shm::handover::HandoverError>,
    ) {
        let handover = self.lock_in_flight().remove(&transfer);
        match handover {
            Some(mut handover) => {
                if let Err(e) = end(&mut handover) {
                    tracing::error!("{e}");
                }
            }
            None => tracing::warn!("acknowledgement of unknown hand-over {transfer}"),
        }
        self.drained.notify_all();
    }

    fn lock_in_flight(&self) -> MutexGuard<'_, HashMap<u64, Handover>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<H> std::fmt::Debug for Outbox<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}
