//! The link between handles and frames: while a frame is encoded, every handle in it (a segment,
//! a ring's end, a lock, a queue) leaves a hold with the sender and names each of its
//! descriptors by its index among the frame's attached descriptors; while a frame is decoded,
//! every handle in it adopts the descriptors at its indexes, and is counted, so that the
//! receiver knows to acknowledge.
//!
//! Both are thread-local contexts set by the wire layer around one encode or decode; a handle
//! serialized or deserialized anywhere else is refused ([`SegmentError::OutsideMessage`]), so
//! that handles cannot be duplicated outside the hand-over protocol, and a handle decoded from
//! bytes alone, with no descriptor, is refused ([`SegmentError::MissingDescriptor`]).

use crate::shm::segment::{Segment, SegmentError};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// Something whose descriptor a frame carries: a segment, or a descriptor of a ring, a lock or
/// a queue.
pub trait Held: Send + Sync + fmt::Debug {
    /// The descriptor to attach to the frame.
    fn fd(&self) -> BorrowedFd<'_>;
}

impl Held for Segment {
    fn fd(&self) -> BorrowedFd<'_> {
        Segment::fd(self)
    }
}

impl Held for OwnedFd {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

/// What a sender keeps alive until the receiver has acknowledged it. Its descriptor is attached
/// to the frame that carries its handle.
pub type Hold = Arc<dyn Held>;

thread_local! {
    static OUTGOING: Cell<Option<Vec<Hold>>> = const { Cell::new(None) };
    static INCOMING: RefCell<Option<Incoming>> = const { RefCell::new(None) };
    /// A frame without descriptors is being decoded (most are): every handle in it misses its
    /// descriptor. Cheaper to set than `INCOMING`; a decode with descriptors clears it.
    static BARE: Cell<bool> = const { Cell::new(false) };
}

/// The descriptors of a frame being decoded, and the segments adopted from them.
struct Incoming {
    fds: Vec<OwnedFd>,
    adopted: Vec<Option<Arc<Segment>>>,
    /// Which descriptors a handle named.
    named: Vec<bool>,
    count: usize,
}

/// Runs `encode` and returns what it produced with the holds of the handles it serialized, in
/// the order of their indexes: attach their descriptors to the frame in that order.
pub(crate) fn collecting_holds<R>(encode: impl FnOnce() -> R) -> (R, Vec<Hold>) {
    let scope = Restore::Outgoing(OUTGOING.replace(Some(Vec::new())));
    let result = encode();
    let holds = OUTGOING.take().unwrap_or_default();
    drop(scope);
    (result, holds)
}

/// Runs `decode` with the frame's descriptors and returns its result with the number of
/// segment handles it decoded.
#[cfg(test)]
pub(crate) fn receiving<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> (R, usize) {
    let (result, opened, _) = receiving_counted(fds, decode);
    (result, opened)
}

/// As [`receiving`], and also the number of the frame's descriptors that no handle named (a
/// sender attaches exactly the descriptors its handles name: more is a broken peer).
pub(crate) fn receiving_counted<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> (R, usize, usize) {
    if fds.is_empty() {
        let _scope = Restore::Bare(BARE.replace(true));
        return (decode(), 0, 0);
    }
    let adopted = fds.iter().map(|_| None).collect();
    let named = vec![false; fds.len()];
    let outer = INCOMING.with(|i| i.replace(Some(Incoming { fds, adopted, named, count: 0 })));
    let scope = Restore::Incoming { outer, bare: BARE.replace(false) };
    let result = decode();
    let incoming = INCOMING.with(|i| i.borrow_mut().take());
    drop(scope);
    let opened = incoming.as_ref().map_or(0, |i| i.count);
    let unnamed = incoming.map_or(0, |i| i.named.iter().filter(|named| !**named).count());
    (result, opened, unnamed)
}

/// Puts back what an encode or a decode found in this thread's contexts when it ends, also
/// when a user's `Serialize` or `Deserialize` panics through it: a context left behind would
/// let a handle met later outside any message take descriptors that are not its own.
enum Restore {
    Outgoing(Option<Vec<Hold>>),
    Bare(bool),
    Incoming { outer: Option<Incoming>, bare: bool },
}

impl Drop for Restore {
    fn drop(&mut self) {
        match self {
            Restore::Outgoing(outer) => OUTGOING.set(outer.take()),
            Restore::Bare(outer) => BARE.set(*outer),
            Restore::Incoming { outer, bare } => {
                INCOMING.with(|i| *i.borrow_mut() = outer.take());
                BARE.set(*bare);
            }
        }
    }
}

/// Called by a handle's `Serialize`: keeps `segment` alive with the sender and returns the index
/// of its descriptor among the frame's.
pub(crate) fn hold(segment: &Arc<Segment>) -> Result<u32, SegmentError> {
    hold_any(Arc::clone(segment) as Hold)
}

/// As [`hold`], for any descriptor: a ring's, a lock's, a queue's. One held thing appears once
/// among a frame's descriptors however many handles name it.
pub(crate) fn hold_any(held: Hold) -> Result<u32, SegmentError> {
    let Some(mut holds) = OUTGOING.take() else { return Err(SegmentError::OutsideMessage) };
    let same = |h: &Hold| std::ptr::addr_eq(Arc::as_ptr(h), Arc::as_ptr(&held));
    let index = match holds.iter().position(same) {
        Some(index) => index,
        None => {
            holds.push(held);
            holds.len() - 1
        }
    };
    OUTGOING.set(Some(holds));
    Ok(index as u32)
}

/// Called by the `Deserialize` of a handle that is not a segment: a descriptor of its own for
/// the one at `index` among the frame's, counted as a handle received.
pub(crate) fn open_fd(index: u32) -> Result<OwnedFd, SegmentError> {
    if BARE.get() {
        return Err(SegmentError::MissingDescriptor);
    }
    INCOMING.with(|i| {
        let mut incoming = i.borrow_mut();
        let incoming = incoming.as_mut().ok_or(SegmentError::OutsideMessage)?;
        let fd = incoming.fds.get(index as usize).ok_or(SegmentError::MissingDescriptor)?;
        let own = fd.try_clone().map_err(SegmentError::Io)?;
        incoming.named[index as usize] = true;
        incoming.count += 1;
        Ok(own)
    })
}

/// Called by a handle's `Deserialize`: adopts the descriptor at `index` as a segment of at
/// least `len` bytes, mapped writable or read-only. Two handles of one segment in a frame (two
/// parts of an array) share one mapping.
pub(crate) fn open(index: u32, len: usize, writable: bool) -> Result<Arc<Segment>, SegmentError> {
    if BARE.get() {
        return Err(SegmentError::MissingDescriptor);
    }
    INCOMING.with(|i| {
        let mut incoming = i.borrow_mut();
        let incoming = incoming.as_mut().ok_or(SegmentError::OutsideMessage)?;
        let index = index as usize;
        let fd = incoming.fds.get(index).ok_or(SegmentError::MissingDescriptor)?;
        let segment = match &incoming.adopted[index] {
            Some(segment) if segment.len() >= len && segment.writable() == writable => Arc::clone(segment),
            _ => Segment::adopt(fd.as_fd(), len, writable)?,
        };
        incoming.adopted[index] = Some(Arc::clone(&segment));
        incoming.named[index] = true;
        incoming.count += 1;
        Ok(segment)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_decode_or_an_encode_leaves_no_context_behind() {
        let (a, _b) = crate::sys::socket::stream_pair().unwrap();
        for fds in [Vec::new(), vec![a]] {
            let panicked =
                std::panic::catch_unwind(|| receiving_counted(fds, || panic!("a user's Deserialize")));
            assert!(panicked.is_err());
            assert!(!BARE.get());
            assert!(INCOMING.with(|i| i.borrow().is_none()));
            assert!(matches!(open_fd(0), Err(SegmentError::OutsideMessage)));
        }
        let panicked = std::panic::catch_unwind(|| collecting_holds(|| panic!("a user's Serialize")));
        assert!(panicked.is_err());
        let held: Hold = Arc::new(crate::sys::socket::stream_pair().unwrap().0);
        assert!(matches!(hold_any(held), Err(SegmentError::OutsideMessage)));
    }
}
