//! [`Link`]: one end of a connection, to send on from any thread; [`LinkDriver`]: its reading
//! and flushing, polled by a tokio reactor.

use super::framing::{self, Layout, Limits, ProtocolError, HEADER_LEN};
use crate::sys::memfd::{self, BodyWriter};
use crate::sys::reactor::{self, Owner};
use crate::sys::socket;
use memmap2::Mmap;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// The receive buffer: larger than any datagram the sender puts inline.
const RECEIVE_BUFFER: usize = 256 << 10;

/// The largest frame sent inline: what one datagram can hold on this machine (`SO_SNDBUF`
/// minus the kernel's 32 bytes), less our header, capped by the receive buffer.
pub(crate) fn inline_max() -> usize {
    static INLINE_MAX: OnceLock<usize> = OnceLock::new();
    *INLINE_MAX.get_or_init(|| {
        let sndbuf = socket::seqpacket_pair()
            .and_then(|(a, _b)| socket::send_buffer_size(a.as_fd()))
            .unwrap_or(64 << 10);
        sndbuf.saturating_sub(32).min(RECEIVE_BUFFER).saturating_sub(HEADER_LEN).max(4096)
    })
}

/// Whether a send may be refused because the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A message the application chose to send: refused when the queue is full.
    Bounded,
    /// A reply, an acknowledgement or a stop: their number is bounded by what the peer sent,
    /// so they are always queued.
    Control,
}

/// Why a frame was not sent.
#[derive(Debug, thiserror::Error)]
pub enum LinkSendError {
    /// The send queue is full (see [`Admission::Bounded`]); nothing was sent.
    #[error("the send queue is full")]
    Full,
    /// The peer is gone.
    #[error("the peer is gone")]
    Closed,
    /// The frame is larger than this connection accepts; nothing was sent.
    #[error("a message of {len} bytes or more is over the limit of {limit} bytes (see max_message_size)")]
    TooLarge {
        /// How many bytes were encoded before the limit was passed.
        len: u64,
        /// The connection's limit.
        limit: usize,
    },
    /// The kernel refused (e.g. no memory for a large body's memfd).
    #[error("the frame could not be sent")]
    Io(#[source] io::Error),
}

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Every other end of the connection is closed.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer broke the protocol.
    #[error("the peer broke the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// A failure on our side (e.g. our descriptor table is full, so attached descriptors were
    /// dropped): not the peer's fault, but the connection cannot go on.
    #[error("reading the connection failed on this side")]
    Local(#[source] io::Error),
}

/// The bytes of a received frame: inline, or mapped from its sealed memfd (never copied).
#[derive(Debug)]
pub enum Payload {
    /// Arrived in the datagram.
    Inline(Vec<u8>),
    /// Arrived as a sealed memfd, mapped read-only.
    Mapped(Mmap),
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Payload::Inline(bytes) => bytes,
            Payload::Mapped(map) => map,
        }
    }
}

/// A received frame and the descriptors that came with it.
#[derive(Debug)]
pub struct Frame {
    /// The frame's bytes.
    pub bytes: Payload,
    /// Descriptors attached by the sender (a body memfd is not among them).
    pub fds: Vec<OwnedFd>,
    /// The sender's pid, when the receiving socket asked for credentials (the handshake).
    pub sender: Option<u32>,
}

/// A frame being encoded: in memory while it fits one datagram, then spilled to a memfd that
/// becomes its body, so that a huge message is written once and never streamed. Writing past
/// the limit fails, so that an oversized message is refused before it is all encoded.
#[derive(Debug)]
pub struct FrameBuf {
    inner: Spill,
    len: u64,
    inline_max: usize,
    limit: usize,
    over_limit: bool,
}

#[derive(Debug)]
enum Spill {
    Inline(Vec<u8>),
    Memfd(BodyWriter),
}

impl FrameBuf {
    /// An empty frame for a connection with `limits`.
    pub fn new(limits: Limits) -> FrameBuf {
        FrameBuf {
            inner: Spill::Inline(Vec::with_capacity(64)),
            len: 0,
            inline_max: inline_max(),
            limit: limits.max_message,
            over_limit: false,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, when the frame is still in memory.
    pub fn inline(&self) -> Option<&[u8]> {
        match &self.inner {
            Spill::Inline(bytes) => Some(bytes),
            Spill::Memfd(_) => None,
        }
    }

    /// Whether a write failed because the frame passed the limit.
    pub fn over_limit(&self) -> bool {
        self.over_limit
    }

    /// The error for a frame that passed the limit.
    pub fn too_large(&self) -> LinkSendError {
        LinkSendError::TooLarge { len: self.len, limit: self.limit }
    }

    /// Overwrites the first bytes of the frame (a prefix written once the body is known).
    ///
    /// # Errors
    /// The `pwrite` error of a spilled frame.
    pub fn patch_start(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            Spill::Inline(frame) => {
                frame[..bytes.len()].copy_from_slice(bytes);
                Ok(())
            }
            Spill::Memfd(writer) => writer.patch_start(bytes),
        }
    }

    fn spill(&mut self) -> io::Result<()> {
        if let Spill::Inline(bytes) = &self.inner {
            let mut writer = BodyWriter::new("ensemble-frame")?;
            writer.write_all(bytes)?;
            self.inner = Spill::Memfd(writer);
        }
        Ok(())
    }

    fn into_datagram(self, fds: Vec<OwnedFd>, admission: Admission) -> Result<Datagram, LinkSendError> {
        if self.len == 0 {
            return Err(LinkSendError::Io(io::Error::new(io::ErrorKind::InvalidInput, "an empty frame")));
        }
        let user_fds =
            u8::try_from(fds.len()).ok().filter(|n| usize::from(*n) < socket::MAX_FDS).ok_or_else(|| {
                LinkSendError::Io(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))
            })?;
        let bounded = admission == Admission::Bounded;
        Ok(match self.inner {
            Spill::Inline(bytes) => {
                Datagram { header: framing::header(self.len, false, user_fds), inline: bytes, fds, bounded }
            }
            Spill::Memfd(writer) => {
                let mut fds = fds;
                fds.push(writer.seal().map_err(LinkSendError::Io)?);
                Datagram {
                    header: framing::header(self.len, true, user_fds),
                    inline: Vec::new(),
                    fds,
                    bounded,
                }
            }
        })
    }
}

impl Write for FrameBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = self.len + buf.len() as u64;
        if len > self.limit as u64 {
            self.over_limit = true;
            return Err(io::Error::other("the frame is over the connection's message limit"));
        }
        if len > self.inline_max as u64 {
            self.spill()?;
        }
        match &mut self.inner {
            Spill::Inline(bytes) => bytes.extend_from_slice(buf),
            Spill::Memfd(writer) => writer.write_all(buf)?,
        }
        self.len = len;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Datagram {
    header: [u8; HEADER_LEN],
    inline: Vec<u8>,
    fds: Vec<OwnedFd>,
    bounded: bool,
}

impl Datagram {
    fn send(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = self.fds.iter().map(AsFd::as_fd).collect();
        socket::send_datagram(socket, &[&self.header, &self.inline], &fds).map(drop)
    }
}

/// One end of a connection. Send on it from any thread; a [`LinkDriver`] reads it and flushes
/// what did not fit in the socket.
pub struct Link {
    socket: OwnedFd,
    limits: Limits,
    capacity: usize,
    out: Mutex<Outgoing>,
}

#[derive(Default)]
struct Outgoing {
    queue: VecDeque<Datagram>,
    /// How many queued datagrams were admitted as [`Admission::Bounded`].
    bounded: usize,
    /// The driver, to wake when the queue gets a datagram.
    flusher: Option<Waker>,
    /// Senders waiting for room.
    room: Vec<Waker>,
}

impl Link {
    /// Wraps one end of a seqpacket pair (non-blocking) with a queue of `capacity` frames.
    pub fn new(socket: OwnedFd, limits: Limits, capacity: usize) -> Link {
        Link { socket, limits, capacity: capacity.max(1), out: Mutex::new(Outgoing::default()) }
    }

    /// This connection's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The socket, to wait on it in synchronous code (the handshake).
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// An empty frame to encode into.
    pub fn frame_buf(&self) -> FrameBuf {
        FrameBuf::new(self.limits)
    }

    /// Sends `frame` with `fds`: at once when the socket has room and nothing is queued, else
    /// through the queue. Never blocks.
    ///
    /// # Errors
    /// [`LinkSendError::Full`] for a bounded send to a full queue; [`LinkSendError::Closed`]
    /// when the peer is gone; [`LinkSendError::TooLarge`] when `frame` passed the limit.
    pub fn send(
        &self,
        frame: FrameBuf,
        fds: Vec<OwnedFd>,
        admission: Admission,
    ) -> Result<(), LinkSendError> {
        if frame.over_limit() {
            return Err(frame.too_large());
        }
        // With an empty queue there is always room; with a queue, room is checked under the lock.
        let datagram = frame.into_datagram(fds, admission)?;
        let mut out = self.lock();
        if out.queue.is_empty() {
            match datagram.send(self.socket.as_fd()) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(send_error(e)),
            }
        } else if datagram.bounded && out.bounded >= self.capacity {
            return Err(LinkSendError::Full);
        }
        out.bounded += usize::from(datagram.bounded);
        out.queue.push_back(datagram);
        if let Some(flusher) = out.flusher.take() {
            flusher.wake();
        }
        Ok(())
    }

    /// Whether a bounded send would be admitted now.
    pub fn has_room(&self) -> bool {
        self.lock().bounded < self.capacity
    }

    /// Ready when a bounded send would be admitted; else wakes `cx` when one would.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut out = self.lock();
        if out.bounded < self.capacity {
            Poll::Ready(())
        } else {
            out.room.push(cx.waker().clone());
            Poll::Pending
        }
    }

    /// How many frames wait in the queue.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Sends what is queued, waiting (blocking this thread) for room, at most `timeout`.
    /// For synchronous code that has no reactor: the handshake, a child's last words.
    ///
    /// # Errors
    /// As [`Link::send`]; `TimedOut` when the queue did not drain in time.
    pub fn flush_blocking(&self, timeout: Duration) -> Result<(), LinkSendError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.flush_some() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(send_error(e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LinkSendError::Io(io::ErrorKind::TimedOut.into()));
            }
            let _ = socket::wait_writable(self.socket.as_fd(), left.min(Duration::from_millis(50)));
        }
    }

    /// Reads one frame if one is waiting, without blocking (for synchronous code).
    ///
    /// # Errors
    /// As [`LinkDriver::poll_frame`].
    pub fn recv_now(&self) -> Result<Option<Frame>, ReadError> {
        let mut buf = vec![0u8; RECEIVE_BUFFER];
        match socket::recv_datagram(self.socket.as_fd(), &mut buf) {
            Ok(received) => self.frame_from(&buf, received).map(Some),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(read_error(e)),
        }
    }

    /// Sends queued datagrams until the queue is empty (`true`) or the socket is full.
    fn flush_some(&self) -> io::Result<bool> {
        let mut out = self.lock();
        while let Some(datagram) = out.queue.front() {
            match datagram.send(self.socket.as_fd()) {
                Ok(()) => {
                    let sent = out.queue.pop_front().expect("front exists");
                    if sent.bounded {
                        out.bounded -= 1;
                        for waker in out.room.drain(..) {
                            waker.wake();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn frame_from(&self, buf: &[u8], received: socket::Received) -> Result<Frame, ReadError> {
        let socket::Received { len, truncated, control_truncated, mut fds, sender_pid: sender } = received;
        if len == 0 && fds.is_empty() && !truncated {
            return Err(if socket::peer_hung_up(self.socket.as_fd()) {
                ReadError::Closed
            } else {
                ReadError::Protocol(ProtocolError::Empty)
            });
        }
        if control_truncated {
            let why = "descriptors attached to a frame were dropped: this process's descriptor table is full";
            return Err(ReadError::Local(io::Error::other(why)));
        }
        match framing::check(&buf[..len], truncated, fds.len(), self.limits)? {
            Layout::Inline { len } => {
                Ok(Frame { bytes: Payload::Inline(buf[HEADER_LEN..HEADER_LEN + len].to_vec()), fds, sender })
            }
            Layout::Memfd { len } => {
                let body = fds.pop().expect("checked: a body memfd is attached");
                let map = memfd::map_body(body.as_fd(), len)
                    .map_err(|e| ProtocolError::Body(crate::error_chain(&e)))?;
                Ok(Frame { bytes: Payload::Mapped(map), fds, sender })
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Outgoing> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn send_error(e: io::Error) -> LinkSendError {
    match e.raw_os_error() {
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) => LinkSendError::Closed,
        _ => LinkSendError::Io(e),
    }
}

/// A peer that closes its end while frames we sent wait unread in its queue makes our next
/// read fail with `ECONNRESET`: that is the peer closing, not a failure on our side.
fn read_error(e: io::Error) -> ReadError {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) => ReadError::Closed,
        _ => ReadError::Local(e),
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("socket", &self.socket.as_raw_fd())
            .field("limits", &self.limits)
            .finish()
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Reads frames from a [`Link`] and flushes its queue, driven by the tokio reactor it was
/// created in. One per link; the task that owns it is the only reader.
pub struct LinkDriver {
    link: Arc<Link>,
    /// The socket, registered for readability only.
    fd: AsyncFd<Owner<Arc<Link>>>,
    /// A duplicate registered for writability while the queue holds frames, so that an idle
    /// or unqueued link is not woken each time the peer reads.
    writer: Option<AsyncFd<Owner<OwnedFd>>>,
    buf: Box<[u8]>,
}

impl LinkDriver {
    /// Registers the link's socket with the current tokio runtime's reactor.
    ///
    /// # Errors
    /// When the socket cannot be registered.
    ///
    /// # Panics
    /// Outside a tokio runtime with IO enabled.
    pub fn new(link: Arc<Link>) -> io::Result<LinkDriver> {
        let fd = reactor::register(Arc::clone(&link))?;
        Ok(LinkDriver { link, fd, writer: None, buf: vec![0u8; RECEIVE_BUFFER].into_boxed_slice() })
    }

    /// The link this driver reads.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The next frame.
    ///
    /// # Errors
    /// [`ReadError::Closed`] once the peer closed (after every frame it sent was read),
    /// [`ReadError::Protocol`] for a frame that breaks a rule, [`ReadError::Local`] otherwise.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadError::Local(e))),
                Poll::Pending => return Poll::Pending,
            };
            match socket::recv_datagram(self.link.socket.as_fd(), &mut self.buf) {
                Ok(received) => return Poll::Ready(self.link.frame_from(&self.buf, received)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(read_error(e))),
            }
        }
    }

    /// Sends what waits in the queue. Ready when it is empty (and registers to be woken when a
    /// sender queues more); pending while the socket is full.
    ///
    /// # Errors
    /// [`LinkSendError::Closed`] when the peer is gone.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LinkSendError>> {
        loop {
            self.link.lock().flusher = Some(cx.waker().clone());
            match self.link.flush_some() {
                Ok(true) => {
                    self.writer = None;
                    return Poll::Ready(Ok(()));
                }
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(send_error(e))),
            }
            let writer = match &mut self.writer {
                Some(writer) => writer,
                None => {
                    let dup = self.link.socket.try_clone().map_err(LinkSendError::Io)?;
                    let registered = reactor::register_for(dup, tokio::io::Interest::WRITABLE);
                    self.writer.insert(registered.map_err(LinkSendError::Io)?)
                }
            };
            match writer.poll_write_ready(cx) {
                Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(LinkSendError::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl std::fmt::Debug for LinkDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkDriver").field("link", &self.link).finish()
    }
}
