//! Shared memory: segments in `/dev/shm`, typed arrays over them, and their hand-over between
//! processes.
//!
//! - [`SharedSliceMut<T>`]: a mutable array with one owner per range; split it among workers,
//!   join the parts, [`freeze`](SharedSliceMut::freeze) it into a [`SharedSlice<T>`], a
//!   read-only array any number of processes map.
//! - Put either in a message, a reply, an event or an actor's initial state: the receiving
//!   process maps the same pages. Views borrow their handle, so no view outlives its mapping.
//! - [`handover`] is the notify / acknowledge / transfer protocol that keeps a segment alive
//!   while it travels; [`remove_orphans`] cleans up after programs that died.
//!
//! # Guarantees
//! 1. A segment is never unlinked while any process holds it or is being handed it: every
//!    holder keeps a shared `flock` on it, and a sender keeps its hold until the receiver
//!    acknowledges (or dies).
//! 2. It is unlinked as soon as the last holder lets go (the holder that can take the lock
//!    exclusively unlinks it).
//! 3. A process that dies, even by SIGKILL, stops holding what it held: the kernel drops its
//!    locks.
//! 4. Nothing of a program stays in `/dev/shm` once it ends normally; after a crash, the next
//!    ensemble process to create a segment (or [`remove_orphans`]) removes every segment no
//!    live process holds once it is [`ORPHAN_GRACE`] old, and never one that a live process
//!    holds. (The grace period covers a segment whose sender died just after sending it: no
//!    one holds it until its receiver maps it.)
//!
//! Segment files are created with mode 0600 under unguessable names `ensemble-<32 hex>`; a
//! handle naming anything else is refused. A segment that does not fit in `/dev/shm` fails at
//! creation ([`SegmentError::NoSpace`]), never with SIGBUS at first write.

mod handle;
pub mod handover;
#[cfg(feature = "ndarray")]
mod ndview;
pub(crate) mod segment;
pub(crate) mod transfer;

pub use crate::sys::shared_slice::{SharedSlice, SharedSliceMut};
pub use segment::{
    check_name, remove_orphans, remove_orphans_older_than, segment_names, Segment, SegmentError,
    ORPHAN_GRACE, PREFIX, SHM_DIR,
};
pub use transfer::Hold;
