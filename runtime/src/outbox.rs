//! One side's sending end of a connection, with the hand-overs it has in flight.
//!
//! Every frame leaves through an `Outbox`. A frame whose body holds segment handles gets a
//! hand-over id and a [`Handover`] in `Notified` state, registered *before* the frame is sent
//! (the acknowledgement may come back at once); the peer's acknowledgement completes it, and
//! the peer's death abandons every one still open. Either way the holds are dropped.

use crate::shm::handover::Handover;
use crate::wire::{self, AckHeader, Encoded};
use ipc_channel::ipc::IpcBytesSender;
use serde::Serialize;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Why a frame was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The body (or header) did not encode; nothing was sent.
    #[error("could not encode: {0}")]
    Encode(String),
    /// The peer's end is closed.
    #[error("the peer is gone")]
    Closed,
}

/// A sending end: frames with headers of type `H`.
pub struct Outbox<H> {
    sender: Mutex<IpcBytesSender>,
    next_transfer: AtomicU64,
    in_flight: Mutex<HashMap<u64, Handover>>,
    drained: Condvar,
    _header: PhantomData<fn(H)>,
}

impl<H: AckHeader> Outbox<H> {
    /// Wraps the ipc-channel sender of a connection.
    pub fn new(sender: IpcBytesSender) -> Self {
        Outbox {
            sender: Mutex::new(sender),
            next_transfer: AtomicU64::new(1),
            in_flight: Mutex::new(HashMap::new()),
            drained: Condvar::new(),
            _header: PhantomData,
        }
    }

    /// Encodes and sends one frame.
    ///
    /// # Errors
    /// [`SendError::Encode`] when it does not encode, [`SendError::Closed`] when the peer is gone.
    pub fn send<B: Serialize + ?Sized>(&self, header: &H, body: &B) -> Result<(), SendError> {
        let encoded = wire::encode(header, body).map_err(|e| SendError::Encode(e.to_string()))?;
        self.send_encoded(encoded)
    }

    /// Sends an encoded frame, opening a hand-over if it carries segments.
    ///
    /// # Errors
    /// [`SendError::Closed`] when the peer is gone (the hand-over is abandoned).
    pub fn send_encoded(&self, mut encoded: Encoded) -> Result<(), SendError> {
        let transfer = encoded.carries_segments().then(|| {
            let transfer = self.next_transfer.fetch_add(1, Ordering::Relaxed);
            encoded.set_transfer(transfer);
            let holds = std::mem::take(&mut encoded.holds);
            self.lock_in_flight().insert(transfer, Handover::notify(transfer, holds));
            transfer
        });
        let sent = self.sender.lock().unwrap_or_else(|e| e.into_inner()).send(&encoded.frame);
        if sent.is_err() {
            if let Some(transfer) = transfer {
                self.finish(transfer, |h| h.abandon());
            }
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// The peer holds the segments of hand-over `transfer`: TRANSFER COMPLETE.
    pub fn acknowledged(&self, transfer: u64) {
        self.finish(transfer, |h| h.acknowledge().and_then(|()| h.complete()));
    }

    /// Tells the peer that this side holds the segments of its hand-over `transfer`.
    pub fn acknowledge(&self, transfer: u64) {
        if let Ok(mut encoded) = wire::encode(&H::ack(transfer), &()) {
            encoded.set_acknowledges(transfer);
            let _ = self.send_encoded(encoded);
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
