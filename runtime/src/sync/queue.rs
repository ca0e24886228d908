//! [`Queue`]: a multi-producer multi-consumer queue of messages between processes, one
//! datagram per message on a seqpacket socket pair.

use super::{
    incoming, open_checked, poll_ready, when_ready, Kind, Outgoing, QueueError, SyncError, TryPutError,
};
use crate::shm::transfer::Hold;
use crate::sys::socket::{self, MAX_FDS};
use crate::wire::{self, WireError};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;

/// The first bytes of every message: tells a queue's datagram from stray bytes, and keeps
/// every datagram non-empty (a zero-length record reads like a closed peer).
const PREFIX: &[u8; 4] = b"enQ1";
/// What a datagram costs of the send buffer beyond its bytes (the kernel's check is
/// `len > sk_sndbuf - 32`).
const DATAGRAM_OVERHEAD: usize = 32;
/// The most bytes one message may have, whatever the socket's send buffer: the receive buffer
/// is sized from it, and a privileged peer can raise `SO_SNDBUF` to about 2 GiB.
const MAX_MESSAGE: usize = 4 << 20;

thread_local! {
    /// Where datagrams are received: one datagram's worth, kept per thread.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A queue of `T` shared by processes, like `multiprocessing.Queue`: any holder puts, any
/// holder gets, each message is taken by exactly one getter, in the order it was put (per
/// producer; messages of different producers interleave).
///
/// A `SOCK_SEQPACKET` socket pair. Every clone holds both ends, so [`put`](Queue::put) and
/// [`get`](Queue::get) work from any process that received it; send it in a message (an
/// actor's initial state, a task of a farm) to share it. Each message is one datagram, encoded
/// with bincode. Because the kernel sends and receives a datagram whole, **a producer killed in
/// the middle of a `put` has sent all of the message or none of it**: nothing it did can
/// corrupt the queue, unlike a byte pipe with a length prefix.
///
/// - Messages are small: one must fit in one datagram (the socket's send buffer, about
///   208 KiB here, and never over 4 MiB), or `put` fails with [`QueueError::TooLarge`]. For bulk data, put a
///   [`SharedSlice`](crate::shm::SharedSlice) or [`SharedSliceMut`](crate::shm::SharedSliceMut)
///   in the message: its descriptor travels attached to the datagram, and the getter maps the
///   same memory. Any ensemble handle (a [`SharedMutex`](super::SharedMutex), an
///   [`Event`](super::Event), another queue) can travel in a message the same way.
/// - The queue holds what the socket's buffer holds (a few hundred small messages): a `put`
///   to a full queue waits for a getter (`try_put` hands the message back, `put_async` awaits).
/// - Messages live in the kernel: they are lost only when the last process holding the queue
///   lets go of it.
/// - A datagram that does not decode is consumed and reported ([`QueueError::Malformed`]); the
///   messages after it are not affected.
///
/// # Examples
/// ```
/// use ensemble_runtime::sync::Queue;
/// let results = Queue::<(u32, String)>::new()?;
/// let producer = results.clone(); // in a real program: sent to another process
/// producer.put((7, "seven".to_owned()))?;
/// assert_eq!(results.get()?, (7, "seven".to_owned()));
/// assert!(results.try_get()?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    /// The end messages are sent on.
    send: Arc<OwnedFd>,
    /// The end messages are received from.
    recv: Arc<OwnedFd>,
    /// The most bytes one message may have.
    max: usize,
    _message: PhantomData<fn(T) -> T>,
}

/// A message encoded for the queue, with the holds of the handles in it.
struct Encoded {
    bytes: Vec<u8>,
    holds: Vec<Hold>,
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A new empty queue.
    ///
    /// # Errors
    /// [`SyncError::Create`] when the kernel refuses a socket pair (descriptor table full).
    pub fn new() -> Result<Queue<T>, SyncError> {
        let create = |source| SyncError::Create { what: "Queue", source };
        let (send, recv) = socket::seqpacket_pair().map_err(create)?;
        Queue::of(send, recv).map_err(create)
    }

    fn of(send: OwnedFd, recv: OwnedFd) -> io::Result<Queue<T>> {
        let max = max_message(socket::send_buffer_size(send.as_fd())?);
        Ok(Queue { send: Arc::new(send), recv: Arc::new(recv), max, _message: PhantomData })
    }

    /// The most bytes one encoded message may have.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    /// Puts `message` in the queue if it has room now; when it is full, hands it back in
    /// [`TryPutError::Full`].
    ///
    /// The message is moved, as a message to an actor is: a [`SharedSliceMut`] in it changes
    /// owner, from the putter to the getter.
    ///
    /// [`SharedSliceMut`]: crate::shm::SharedSliceMut
    ///
    /// # Errors
    /// [`TryPutError::Full`]; [`TryPutError::Failed`] with [`QueueError::TooLarge`],
    /// [`QueueError::TooManyDescriptors`], [`QueueError::Encode`] or [`QueueError::Io`].
    pub fn try_put(&self, message: T) -> Result<(), TryPutError<T>> {
        self.put_timeout(message, Duration::ZERO)
    }

    /// Puts `message` in the queue, blocking the thread while it is full. Not on an arbiter
    /// others share: use [`put_async`](Queue::put_async) there.
    ///
    /// # Errors
    /// [`QueueError::TooLarge`], [`QueueError::TooManyDescriptors`], [`QueueError::Encode`],
    /// [`QueueError::Io`].
    pub fn put(&self, message: T) -> Result<(), QueueError> {
        let encoded = self.encode(&message)?;
        while !self.send_encoded(&encoded)? {
            poll_ready(self.send.as_fd(), Duration::from_secs(3600), true).map_err(QueueError::Io)?;
        }
        Ok(())
    }

    /// Puts `message` in the queue, blocking the thread while it is full, at most `timeout`;
    /// when it is still full then, hands it back in [`TryPutError::Full`].
    ///
    /// # Errors
    /// As [`try_put`](Queue::try_put).
    pub fn put_timeout(&self, message: T, timeout: Duration) -> Result<(), TryPutError<T>> {
        let encoded = self.encode(&message).map_err(TryPutError::Failed)?;
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.send_encoded(&encoded).map_err(TryPutError::Failed)? {
                return Ok(());
            }
            let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
            let room = || {
                poll_ready(self.send.as_fd(), left, true).map_err(|e| TryPutError::Failed(QueueError::Io(e)))
            };
            if left.is_zero() || !room()? {
                return Err(TryPutError::Full(message));
            }
        }
    }

    /// Puts `message` in the queue, waiting while it is full without blocking the thread
    /// (tokio's reactor watches the socket).
    ///
    /// # Errors
    /// As [`put`](Queue::put), and [`QueueError::Io`] when the reactor refuses the descriptor.
    ///
    /// # Panics
    /// Outside a tokio runtime with IO enabled (actix's runtime has it).
    ///
    /// # Cancel safety
    /// The message is sent whole in the poll that returns, or not at all (and then dropped).
    pub async fn put_async(&self, message: T) -> Result<(), QueueError> {
        let encoded = self.encode(&message)?;
        let mut failed = None;
        let attempt = || match self.send_encoded(&encoded) {
            Ok(sent) => Ok(sent.then_some(())),
            Err(e) => {
                failed = Some(e);
                Ok(Some(()))
            }
        };
        when_ready(self.send.as_fd(), Interest::WRITABLE, attempt).await.map_err(QueueError::Io)?;
        failed.map_or(Ok(()), Err)
    }

    /// Takes the next message if there is one now.
    ///
    /// # Errors
    /// [`QueueError::Malformed`] or [`QueueError::Refused`] when the datagram taken does not
    /// decode (it is consumed, and the next one is unaffected); [`QueueError::Io`].
    pub fn try_get(&self) -> Result<Option<T>, QueueError> {
        let mut buffer = BUFFER.with_borrow_mut(std::mem::take);
        buffer.resize(buffer.len().max(self.max + 1), 0);
        let got = self.receive(&mut buffer);
        BUFFER.with_borrow_mut(|b| *b = buffer);
        got
    }

    /// Takes the next message, blocking the thread until there is one. Not on an arbiter
    /// others share: use [`get_async`](Queue::get_async) there.
    ///
    /// # Errors
    /// As [`try_get`](Queue::try_get).
    pub fn get(&self) -> Result<T, QueueError> {
        loop {
            if let Some(message) = self.get_timeout(Duration::from_secs(3600))? {
                return Ok(message);
            }
        }
    }

    /// Takes the next message, blocking the thread at most `timeout`: `None` when there was
    /// none.
    ///
    /// # Errors
    /// As [`try_get`](Queue::try_get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<T>, QueueError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(message) = self.try_get()? {
                return Ok(Some(message));
            }
            // Readable means "a message is waiting": another getter may take it first.
            let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() || !poll_ready(self.recv.as_fd(), left, false).map_err(QueueError::Io)? {
                return Ok(None);
            }
        }
    }

    /// Takes the next message, waiting without blocking the thread (tokio's reactor watches
    /// the socket).
    ///
    /// # Errors
    /// As [`try_get`](Queue::try_get), and [`QueueError::Io`] when the reactor refuses the
    /// descriptor.
    ///
    /// # Panics
    /// Outside a tokio runtime with IO enabled (actix's runtime has it).
    ///
    /// # Cancel safety
    /// Cancel safe: a message is taken only in the poll that returns it.
    pub async fn get_async(&self) -> Result<T, QueueError> {
        let mut failed = None;
        let attempt = || match self.try_get() {
            Ok(got) => Ok(got.map(Some)),
            Err(e) => {
                failed = Some(e);
                Ok(Some(None))
            }
        };
        let got = when_ready(self.recv.as_fd(), Interest::READABLE, attempt).await.map_err(QueueError::Io)?;
        match (got, failed) {
            (Some(message), _) => Ok(message),
            (None, Some(e)) => Err(e),
            (None, None) => unreachable!("an attempt that gives nothing records its error"),
        }
    }

    /// Whether no message is waiting now (by the time the answer is read, another holder may
    /// have put or taken one).
    pub fn is_empty(&self) -> bool {
        !poll_ready(self.recv.as_fd(), Duration::ZERO, false).unwrap_or(false)
    }

    /// Sends `bytes` as one datagram, as they are: for tests of what a getter does with bytes
    /// that are not a message.
    ///
    /// # Errors
    /// [`QueueError::Io`] (`WouldBlock` when the queue is full).
    #[doc(hidden)]
    pub fn put_raw(&self, bytes: &[u8]) -> Result<(), QueueError> {
        socket::send_datagram(self.send.as_fd(), &[bytes], &[]).map(drop).map_err(QueueError::Io)
    }

    fn encode(&self, message: &T) -> Result<Encoded, QueueError> {
        let (bytes, holds) = wire::encode_body(message).map_err(QueueError::Encode)?;
        let size = PREFIX.len() + bytes.len();
        if size > self.max {
            return Err(QueueError::TooLarge { size, max: self.max });
        }
        if holds.len() > MAX_FDS {
            return Err(QueueError::TooManyDescriptors { count: holds.len(), max: MAX_FDS });
        }
        Ok(Encoded { bytes, holds })
    }

    /// Sends one encoded message: `false` when the queue is full. The holds can go as soon as
    /// it returns: a descriptor waiting in a socket's queue keeps its file alive.
    fn send_encoded(&self, encoded: &Encoded) -> Result<bool, QueueError> {
        let fds: Vec<BorrowedFd<'_>> = encoded.holds.iter().map(|h| h.fd()).collect();
        match socket::send_datagram(self.send.as_fd(), &[PREFIX, &encoded.bytes], &fds) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                Err(QueueError::TooLarge { size: PREFIX.len() + encoded.bytes.len(), max: self.max })
            }
            Err(e) => Err(QueueError::Io(e)),
        }
    }

    fn receive(&self, buffer: &mut [u8]) -> Result<Option<T>, QueueError> {
        let received = match socket::recv_datagram(self.recv.as_fd(), buffer) {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(QueueError::Io(e)),
        };
        let len = received.len;
        if received.control_truncated {
            return Err(QueueError::Malformed { len, source: malformed(DROPPED) });
        }
        let body = match buffer[..len].strip_prefix(PREFIX.as_slice()) {
            Some(body) if !received.truncated => body,
            _ => return Err(QueueError::Malformed { len, source: malformed(NOT_A_MESSAGE) }),
        };
        match wire::decode_body_counted(body, received.fds) {
            Ok((_, unnamed)) if unnamed > 0 => Err(QueueError::Malformed { len, source: malformed(UNNAMED) }),
            Ok((message, _)) => Ok(Some(message)),
            Err(e) if e.is_malformed() => Err(QueueError::Malformed { len, source: e }),
            Err(e) => Err(QueueError::Refused(e)),
        }
    }
}

/// The most bytes one message may have on a socket whose send buffer is `send_buffer` bytes.
fn max_message(send_buffer: usize) -> usize {
    send_buffer.saturating_sub(DATAGRAM_OVERHEAD).min(MAX_MESSAGE)
}

const NOT_A_MESSAGE: &str = "not a queue message (no prefix, or truncated)";
const DROPPED: &str = "descriptors attached to it were dropped (MSG_CTRUNC: more than a datagram \
                       carries, or this process's descriptor table is full)";
const UNNAMED: &str = "it carried descriptors that no handle in the message names";

fn malformed(what: &str) -> WireError {
    WireError::Value(Box::new(bincode::ErrorKind::Custom(what.into())))
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            send: Arc::clone(&self.send),
            recv: Arc::clone(&self.recv),
            max: self.max,
            _message: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("message", &std::any::type_name::<T>())
            .field("send", &self.send.as_raw_fd())
            .field("recv", &self.recv.as_raw_fd())
            .field("max", &self.max)
            .finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let holds = [Arc::clone(&self.send) as Hold, Arc::clone(&self.recv) as Hold];
        let element = std::any::type_name::<T>();
        Outgoing { kind: Kind::Queue, holds: &holds, element, element_size: size_of::<T>() }
            .serialize(serializer)
    }
}

impl<'de, T: Serialize + DeserializeOwned> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let element = std::any::type_name::<T>();
        let [send, recv] = incoming(deserializer, Kind::Queue, element, size_of::<T>())?;
        let open =
            |index| open_checked::<D::Error>(Kind::Queue, index, "a seqpacket socket", socket::is_seqpacket);
        let (send, recv) = (open(send)?, open(recv)?);
        Queue::of(send, recv).map_err(|e| D::Error::custom(crate::error_chain(&SyncError::Io(e))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{received, sent};
    use super::*;
    use crate::shm::SharedSliceMut;

    #[test]
    fn messages_come_out_in_order_from_any_clone() {
        let queue = Queue::<String>::new().unwrap();
        let other = queue.clone();
        assert!(queue.is_empty());
        queue.put("one".to_owned()).unwrap();
        other.try_put("two".to_owned()).unwrap();
        assert!(!queue.is_empty());
        assert_eq!(other.get().unwrap(), "one");
        assert_eq!(queue.get_timeout(Duration::from_secs(1)).unwrap().unwrap(), "two");
        assert!(queue.get_timeout(Duration::from_millis(5)).unwrap().is_none());
    }

    #[test]
    fn an_empty_message_is_still_a_datagram() {
        let queue = Queue::<()>::new().unwrap();
        queue.put(()).unwrap();
        queue.try_get().unwrap().unwrap();
        assert!(queue.try_get().unwrap().is_none());
    }

    #[test]
    fn a_full_queue_refuses_without_waiting_and_frees_up_when_read() {
        let queue = Queue::<Vec<u8>>::new().unwrap();
        let mut n = 0;
        let refused = loop {
            match queue.try_put(vec![1; 1000]) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100_000, "never full");
        };
        assert_eq!(refused.into_message().unwrap().len(), 1000, "handed back");
        assert!(n > 10, "{n} messages fit");
        let timed_out = queue.put_timeout(vec![2; 1000], Duration::from_millis(5)).unwrap_err();
        assert!(matches!(timed_out, TryPutError::Full(_)));
        queue.get().unwrap();
        queue.put_timeout(vec![3; 1000], Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_message_over_one_datagram_is_too_large_and_one_at_the_limit_is_not() {
        let queue = Queue::<Vec<u8>>::new().unwrap();
        // A Vec<u8> encodes as an 8-byte length and its bytes, after the 4-byte prefix.
        let fits = vec![7; queue.max_message_size() - 12];
        queue.put(fits.clone()).unwrap();
        assert_eq!(queue.get().unwrap().len(), fits.len());
        let err = queue.put(vec![0; queue.max_message_size() - 11]).unwrap_err();
        assert!(matches!(err, QueueError::TooLarge { size, max } if size == max + 1), "{err}");
        assert!(err.to_string().contains("put a SharedSlice in it"));
    }

    #[test]
    fn stray_bytes_are_malformed_and_the_next_message_arrives() {
        let queue = Queue::<(u32, String)>::new().unwrap();
        queue.put_raw(b"garbage").unwrap();
        queue.put_raw(b"enQ1\x01\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
        queue.put((1, "after".to_owned())).unwrap();
        assert!(matches!(queue.get(), Err(QueueError::Malformed { len: 7, .. })));
        assert!(matches!(queue.get(), Err(QueueError::Malformed { len: 16, .. })));
        assert_eq!(queue.get().unwrap(), (1, "after".to_owned()));
    }

    #[test]
    fn a_datagram_with_descriptors_its_message_does_not_name_is_malformed() {
        let queue = Queue::<u32>::new().unwrap();
        let mut datagram = PREFIX.to_vec();
        datagram.extend_from_slice(&7u32.to_le_bytes());
        let stray = crate::sys::eventfd::create(0, false).unwrap();
        socket::send_datagram(queue.send.as_fd(), &[&datagram], &[stray.as_fd()]).unwrap();
        let err = queue.try_get().unwrap_err();
        assert!(matches!(err, QueueError::Malformed { len: 8, .. }), "{err}");
        assert!(crate::error_chain(&err).contains("no handle in the message names"), "{err}");
        queue.put(8).unwrap();
        assert_eq!(queue.get().unwrap(), 8);
    }

    #[test]
    fn the_largest_message_is_bounded_whatever_the_send_buffer() {
        assert_eq!(max_message(212_992), 212_960);
        assert_eq!(max_message(10), 0);
        // What a privileged peer can raise SO_SNDBUF to (SO_SNDBUFFORCE): ~2 GiB.
        assert_eq!(max_message(i32::MAX as usize), MAX_MESSAGE);
    }

    #[test]
    fn a_shared_array_in_a_message_arrives_mapped() {
        let queue = Queue::<SharedSliceMut<u16>>::new().unwrap();
        queue.put(SharedSliceMut::from_slice(&[4, 5, 6]).unwrap()).unwrap();
        let array = queue.get().unwrap();
        assert_eq!(&*array, &[4, 5, 6]);
    }

    #[test]
    fn a_received_queue_carries_messages_both_ways() {
        let queue = Queue::<u64>::new().unwrap();
        let (bytes, fds) = sent(&queue);
        assert_eq!(fds.len(), 2);
        let copy: Queue<u64> = received(&bytes, fds).unwrap();
        copy.put(1).unwrap();
        queue.put(2).unwrap();
        assert_eq!(queue.get().unwrap(), 1);
        assert_eq!(copy.get().unwrap(), 2);
    }

    #[tokio::test]
    async fn async_getters_and_putters_meet_through_a_full_queue() {
        let queue = Queue::<Vec<u8>>::new().unwrap();
        let getter = queue.clone();
        let consumer = tokio::spawn(async move {
            let mut n = 0;
            while getter.get_async().await.unwrap()[0] != 0 {
                n += 1;
            }
            n
        });
        for _ in 0..500 {
            queue.put_async(vec![1; 4096]).await.unwrap();
        }
        queue.put_async(vec![0; 4096]).await.unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(20), consumer).await.unwrap().unwrap(), 500);
    }
}
