//! The transport: ensemble's own connection between a parent and one child, over a pair of
//! `AF_UNIX` `SOCK_SEQPACKET` sockets.
//!
//! This is the seam between process actors and the kernel. Everything above it (the handshake,
//! [`crate::Connection`], the child's backend) sees four things: a [`Link`] to send frames on
//! from any thread, a [`LinkDriver`] that a tokio reactor polls for incoming frames and for
//! room to flush, [`Frame`]s with their descriptors, and the errors. Another transport (to
//! another host, say) would provide the same four.
//!
//! Contracts:
//! - A frame is one datagram: a fixed 16-byte header (see [`framing`]) and the frame's bytes,
//!   or, when larger than one datagram may be, the header alone with the bytes in a sealed
//!   memfd attached. Order is kept across both paths: both go through one socket, in one queue.
//! - With a fast lane ([`Link::offer_lane`]), small frames travel in a ring instead, and order
//!   is kept across ring and socket by markers in the ring (see [`lane`]'s module docs).
//! - Every length is checked against [`Limits::max_message`] before anything is allocated; a
//!   frame over the limit is refused at send with [`LinkSendError::TooLarge`].
//! - Sending never blocks a thread. A frame that does not fit in the socket's buffer waits in a
//!   bounded queue that the driver flushes when the socket is writable; a bounded send to a full
//!   queue is refused with [`LinkSendError::Full`] (control frames, whose number the peer bounds,
//!   are always queued).
//! - Whatever a peer writes, reading it yields a [`Frame`] or a [`ReadError`]: never a panic,
//!   an abort or an allocation the peer chose.
//! - Descriptors travel with frames (`SCM_RIGHTS`, at most 253), close-on-exec on arrival.

pub mod framing;
pub mod lane;
mod link;

pub use framing::{Limits, ProtocolError};
pub use lane::{LaneConfig, LaneError, LaneStats, SpinFor};
#[cfg(test)]
pub(crate) use link::inline_max;
pub use link::{Admission, Frame, FrameBuf, Link, LinkDriver, LinkSendError, Payload, ReadError};
