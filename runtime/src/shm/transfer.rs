//! The link between segment handles and frames: while a frame is encoded, every handle in it
//! leaves a hold with the sender; while a frame is decoded, every handle in it is opened and
//! counted, so that the receiver knows to acknowledge.
//!
//! Both are thread-local contexts set by the wire layer around one encode or decode; a handle
//! serialized or deserialized anywhere else is refused ([`SegmentError::OutsideMessage`]),
//! so that handles cannot be duplicated outside the hand-over protocol.

use crate::shm::segment::{Segment, SegmentError};
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// A segment kept alive by its sender until the receiver has acknowledged it.
pub type Hold = Arc<Segment>;

thread_local! {
    static OUTGOING: RefCell<Option<Vec<Hold>>> = const { RefCell::new(None) };
    static INCOMING: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `encode` and returns what it produced with the holds of the handles it serialized.
pub(crate) fn collecting_holds<R>(encode: impl FnOnce() -> R) -> (R, Vec<Hold>) {
    let outer = OUTGOING.with(|o| o.replace(Some(Vec::new())));
    let result = encode();
    let holds = OUTGOING.with(|o| o.replace(outer)).unwrap_or_default();
    (result, holds)
}

/// Runs `decode` and returns its result with the number of segments it opened.
pub(crate) fn counting_opens<R>(decode: impl FnOnce() -> R) -> (R, usize) {
    let outer = INCOMING.with(|i| i.replace(Some(0)));
    let result = decode();
    let opened = INCOMING.with(|i| i.replace(outer)).unwrap_or(0);
    (result, opened)
}

/// Called by a handle's `Serialize`: keeps `segment` alive with the sender.
pub(crate) fn hold(segment: &Arc<Segment>) -> Result<(), SegmentError> {
    OUTGOING.with(|o| match o.borrow_mut().as_mut() {
        Some(holds) => {
            // bincode serializes twice (once to size the buffer): hold each segment once.
            if !holds.iter().any(|h| Arc::ptr_eq(h, segment)) {
                holds.push(Arc::clone(segment));
            }
            Ok(())
        }
        None => Err(SegmentError::OutsideMessage),
    })
}

/// Called by a handle's `Deserialize`: opens and holds the segment.
pub(crate) fn open(name: &str, len: usize) -> Result<Arc<Segment>, SegmentError> {
    let Some(count) = INCOMING.with(Cell::get) else { return Err(SegmentError::OutsideMessage) };
    let segment = Segment::open(name, len)?;
    INCOMING.with(|i| i.set(Some(count + 1)));
    Ok(segment)
}
