//! Shared memory: segments (anonymous memory files), typed arrays over them, and their
//! hand-over between processes.
//!
//! - [`SharedSliceMut<T>`]: a mutable array with one owner per range; split it among workers,
//!   join the parts, [`freeze`](SharedSliceMut::freeze) it into a [`SharedSlice<T>`], a
//!   read-only array any number of processes map.
//! - Put either in a message, a reply, an event or an actor's initial state: the segment's
//!   descriptor travels with the frame, and the receiving process maps the same pages. Views
//!   borrow their handle, so no view outlives its mapping.
//! - [`handover`] is the notify / acknowledge / transfer protocol: who may write which range,
//!   and when a sender's hold ends.
//!
//! # Guarantees
//! 1. A segment's memory lives while any process holds its descriptor or a mapping of it,
//!    including while the descriptor waits in a socket's queue: it is never freed early.
//! 2. It is freed when the last holder lets go, however that holder ends (SIGKILL included):
//!    the kernel counts the holders. Nothing is ever created in `/dev/shm`; there is nothing to
//!    sweep and nothing to leak.
//! 3. A handle cannot be forged: it needs the descriptor, which only travels attached to a
//!    frame. A receiver checks the seals it relies on before mapping: sealed against resizing
//!    (so no read ever faults with SIGBUS), and for a read-only array, against writing.
//! 4. A frozen array cannot be written by anyone, not even through `/proc/PID/fd`.
//! 5. A request larger than the memory that can back it fails at creation
//!    ([`SegmentError::NoMemory`]), never with SIGBUS or the OOM killer at first write.
//!
//! Segments stay visible to people: `/proc/PID/fd` and `/proc/PID/maps` show each as
//! `memfd:ensemble:<process name>`.

mod handle;
pub mod handover;
#[cfg(feature = "ndarray")]
mod ndview;
pub(crate) mod segment;
pub(crate) mod transfer;

pub use crate::sys::shared_slice::{SharedSlice, SharedSliceMut};
pub use segment::{backing_memory, held_segments, leave_mappings_to_exit, Segment, SegmentError, SegmentId};
pub use transfer::Hold;
