//! Rings: a stream of frames from one process to another through shared memory, without
//! copying (libValkka's shared-memory ring buffers, seed 004 part III).
//!
//! [`channel`] makes a ring of a fixed number of slots of a fixed maximum size and returns its
//! two ends. Put the [`Producer`] in a message (or an actor's initial state) to one process and
//! the [`Consumer`] in a message to another; ends can move again later, any number of times.
//!
//! - **Produce without copying**: [`Producer::claim`] lends a slot ([`SlotMut`]), write into it,
//!   [`SlotMut::commit`] publishes it with its length. A slot dropped without commit is never
//!   seen by the consumer.
//! - **Consume without copying**: [`Consumer::recv`] lends the oldest committed slot ([`Slot`]);
//!   dropping it gives the buffer back. Several slots may be lent at once.
//! - **When full**, chosen at creation ([`WhenFull`]): the producer waits for the consumer
//!   (backpressure), or takes the oldest committed slot the consumer has not taken yet (live
//!   video: the consumer sees the newest frames, and gaps in [`Slot::sequence`]). A slot lent to
//!   the consumer is never written.
//! - **Waiting**: a short spin (only with more than one CPU), then sleep. Each end holds one
//!   socket of a pair made with the ring: a side rings the other's doorbell (one datagram) only
//!   when it was told that the other sleeps. Every sleep has a safety timeout;
//!   [`RingStats::lost_wakeups`] counts the ones that found work without a doorbell (zero in the
//!   tests). The consumer is a [`Stream`](futures_core::Stream) (actix `add_stream`, tokio);
//!   both ends have `async` methods that never block a thread, on whatever runtime polls them.
//! - **A dead peer is seen at once**: when every process holding the other end's socket is gone
//!   (killed included), the kernel reports a hang-up to this end's socket, whoever held the
//!   other end before; a producer that never waits looks every 100 ms. An end dropped normally
//!   says so in the ring first: the other side gets [`RingError::Closed`] (after the frames
//!   still committed), a crashed one [`RingError::PeerGone`] with its pid.
//! - **Moving ends**: an end moves in any message, any number of times. Give lent slots back
//!   before moving a consumer (a slot left in a process that dies is lost to the ring), and do
//!   not put ends in a [`Queue`](crate::sync::Queue) message: a message waiting in a queue keeps
//!   the end's socket alive, so its peer cannot see the sender die.
//!
//! # Examples
//! ```
//! use ensemble_runtime::ring::{self, WhenFull};
//! let (mut producer, mut consumer) = ring::channel(4, 1024, WhenFull::Block)?;
//! let mut slot = producer.claim()?;
//! slot[..5].copy_from_slice(b"frame");
//! slot.commit(5)?;
//! let frame = consumer.recv()?;
//! assert_eq!(&*frame, b"frame");
//! assert_eq!(frame.sequence(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Trust
//! The other side is another process. Everything it can write (indexes, lengths, sequence
//! words) is checked before use; what no correct peer writes is [`RingError::Corrupt`], never a
//! crash or a hang. The bytes of a slot are plain bytes: a broken producer can change them while
//! they are read, as with any shared memory.

mod ends;
mod index_queue;
mod layout;
mod sides;
pub(crate) mod spsc;
mod wait;

pub use ends::{channel, Consumer, CreateRingError, Producer, RingError, RingStats, Slot, SlotMut, WhenFull};
pub use index_queue::Corrupt;
pub use layout::GeometryError;
pub(crate) use spsc::Exported;
