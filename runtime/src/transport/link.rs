//! [`Link`]: one end of a connection, to send on from any thread; [`LinkDriver`]: its reading
//! and flushing, polled by a tokio reactor.

use super::framing::{self, Layout, Limits, ProtocolError, HEADER_LEN};
use super::lane::{self, Item, LaneConfig, LaneError, LaneRx, LaneStats, SpinFor};
use crate::ring::spsc::Producer;
use crate::ring::RingError;
use crate::sys::memfd::{self, BodyWriter};
use crate::sys::reactor::{self, Owner};
use crate::sys::socket;
use memmap2::Mmap;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The peer broke the protocol (it wrote garbage into the fast lane's ring).
    #[error("the peer broke the protocol")]
    Broken(#[source] ProtocolError),
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
                let header = framing::header(self.len, false, user_fds);
                Datagram { header, inline: bytes, fds, bounded, route: Route::Socket }
            }
            Spill::Memfd(writer) => {
                let mut fds = fds;
                fds.push(writer.seal().map_err(LinkSendError::Io)?);
                Datagram {
                    header: framing::header(self.len, true, user_fds),
                    inline: Vec::new(),
                    fds,
                    bounded,
                    route: Route::Socket,
                }
            }
        })
    }
}

impl Write for FrameBuf {
    // A frame is encoded a few bytes at a time (bincode writes each field): the common case,
    // a frame that stays in memory and under the limit, is a bounds check and a copy.
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = self.len + buf.len() as u64;
        if let Spill::Inline(bytes) = &mut self.inner {
            if len <= self.inline_max.min(self.limit) as u64 {
                bytes.extend_from_slice(buf);
                self.len = len;
                return Ok(buf.len());
            }
        }
        self.write_slow(buf)
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write(buf).map(drop)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FrameBuf {
    /// A write past what stays in memory, or past the limit.
    #[cold]
    fn write_slow(&mut self, buf: &[u8]) -> io::Result<usize> {
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
}

struct Datagram {
    header: [u8; HEADER_LEN],
    inline: Vec<u8>,
    fds: Vec<OwnedFd>,
    bounded: bool,
    route: Route,
}

/// Which way a frame leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// On the socket (no lane, or its marker is in the ring already).
    Socket,
    /// A marker in the lane's ring, then the frame on the socket.
    Marked,
    /// In a slot of the lane's ring.
    Ring,
}

/// How far a flush got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flushed {
    /// Everything queued left.
    Empty,
    /// The socket is full.
    SocketFull,
    /// The lane's ring is full.
    RingFull,
}

impl Datagram {
    /// The way this frame leaves a link whose lane has slots of `slot_size` bytes.
    fn lane_route(&self, slot_size: usize) -> Route {
        let inline = self.header[2] == 0 && self.fds.is_empty();
        if inline && self.inline.len() <= slot_size {
            Route::Ring
        } else {
            Route::Marked
        }
    }

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
    /// The fast lane's reading side, once there is one; locked by the one reader.
    rx: Mutex<Option<LaneRx>>,
    /// Whether frames are sent through a fast lane.
    lane_on: AtomicBool,
    /// Whether this end may take a lane offer (a child's end; a parent only offers).
    takes_offers: AtomicBool,
    /// The receive buffer of [`Link::recv_now`], made on first use and kept: a caller that
    /// reads its own reply calls it in a loop.
    scratch: Mutex<Vec<u8>>,
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
    /// The fast lane's producing end: frames leave through it (or leave a marker in it).
    lane: Option<Producer>,
}

impl Link {
    /// Wraps one end of a seqpacket pair (non-blocking) with a queue of `capacity` frames.
    pub fn new(socket: OwnedFd, limits: Limits, capacity: usize) -> Link {
        Link {
            socket,
            limits,
            capacity: capacity.max(1),
            out: Mutex::new(Outgoing::default()),
            rx: Mutex::new(None),
            lane_on: AtomicBool::new(false),
            takes_offers: AtomicBool::new(false),
            scratch: Mutex::new(Vec::new()),
        }
    }

    /// Lets this end take a fast lane the other end offers (a child's end does; a lane datagram
    /// that no offer of ours awaits is otherwise a protocol error).
    pub fn accept_lane_offers(&self) {
        self.takes_offers.store(true, Ordering::Relaxed);
    }

    /// Opens a fast lane to the child `peer` on the other end (see [`lane`](super::lane)):
    /// from now on this side's frames follow the lane's order, and the child's do once it has
    /// answered. Called by the parent, once, before it reads the connection.
    ///
    /// # Errors
    /// When the rings cannot be made or handed over; the connection is unchanged then.
    pub fn offer_lane(&self, config: LaneConfig, peer: u32) -> Result<(), LaneError> {
        let (offer, producer, consumer) = lane::create(config)?;
        let (body, fds) = offer.encode();
        *self.lock_rx() = Some(LaneRx::new(consumer, false, peer));
        self.switch_over(producer, &body, fds).map_err(|e| match e {
            LinkSendError::Io(e) => LaneError::Io(e),
            _ => LaneError::Closed,
        })
    }

    /// What this side's fast lane has done, if it has one.
    pub fn lane_stats(&self) -> Option<LaneStats> {
        let mut stats = self.lock_rx().as_ref()?.stats();
        stats.sent = self.lock().lane.as_ref().map_or(0, |producer| producer.stats().committed);
        Some(stats)
    }

    /// Someone other than the sleeping reader looks at the fast lane for a while (a caller
    /// waiting for its reply, holding the connection's read lock): the peer need not ring
    /// meanwhile. Returns whether the reader's "I sleep" flag was set (give it back with
    /// [`lane_reader_done`](Self::lane_reader_done)), and, when `spin`, how long the caller
    /// may spin (`None`: no lane, or spinning cannot pay; see [`lane`](super::lane)).
    pub fn lane_reader_looks(&self, spin: bool) -> (bool, Option<Duration>) {
        let mut rx = self.lock_rx();
        let Some(lane) = rx.as_mut() else { return (false, None) };
        (lane.wake_up(), if spin { lane.spin_budget() } else { Some(Duration::ZERO) })
    }

    /// The caller is done looking: sets the sleeping reader's flag again if it was set
    /// (`was_sleeping`). Whether the reader must be woken: a frame came meanwhile, or a marker
    /// was taken whose frame is still on the socket.
    pub fn lane_reader_done(&self, was_sleeping: bool) -> bool {
        let rx = self.lock_rx();
        let Some(lane) = rx.as_ref() else { return false };
        (was_sleeping && lane.back_to_sleep()) || lane.owes_socket_frame()
    }

    /// Whether the fast lane's ring seems to hold a frame not read yet.
    pub fn lane_waiting(&self) -> bool {
        // A reader holds the lock only while it reads: then nothing is neglected.
        match self.rx.try_lock() {
            Ok(rx) => rx.as_ref().is_some_and(LaneRx::looks_ready),
            Err(_) => false,
        }
    }

    /// Whether this side sends through a fast lane.
    pub fn has_lane(&self) -> bool {
        self.lane_on.load(Ordering::Relaxed)
    }

    /// Sends a lane switch-over (`body`, `fds`) in socket order, then routes every later frame
    /// through `producer`.
    fn switch_over(&self, producer: Producer, body: &[u8], fds: Vec<OwnedFd>) -> Result<(), LinkSendError> {
        let count = u8::try_from(fds.len()).expect("a switch-over carries at most four descriptors");
        let mut datagram = Datagram {
            header: framing::lane_header(body.len(), count),
            inline: body.to_vec(),
            fds,
            bounded: false,
            route: Route::Socket,
        };
        let mut out = self.lock();
        if out.queue.is_empty() {
            if !self.try_send(&mut out.lane, &mut datagram)? {
                out.queue.push_back(datagram);
            }
        } else {
            out.queue.push_back(datagram);
        }
        out.lane = Some(producer);
        self.lane_on.store(true, Ordering::Relaxed);
        if let Some(flusher) = out.flusher.take() {
            flusher.wake();
        }
        Ok(())
    }

    /// Takes up the lane a parent offered; its frames are read in ring order from here on,
    /// and ours follow once our answer is sent.
    fn accept_lane(&self, body: &[u8], fds: Vec<OwnedFd>) -> Result<(), ReadError> {
        let mut rx = self.lock_rx();
        if rx.is_some() {
            return Err(ReadError::Protocol(ProtocolError::Lane("a second offer".into())));
        }
        let (consumer, producer) = lane::Offer::accept(body, fds)?;
        *rx = Some(LaneRx::new(consumer, true, std::os::unix::process::parent_id()));
        drop(rx);
        self.switch_over(producer, &[], Vec::new()).map_err(|e| ReadError::Local(io::Error::other(e)))
    }

    /// A lane datagram was read: the parent's offer, or the child's answer to ours.
    fn lane_datagram(&self, body: Vec<u8>, fds: Vec<OwnedFd>) -> Result<(), ReadError> {
        let mut rx = self.lock_rx();
        match rx.as_mut() {
            Some(lane) if body.is_empty() && fds.is_empty() => Ok(lane.switched()?),
            Some(_) => {
                Err(ReadError::Protocol(ProtocolError::Lane("an offer where an answer was due".into())))
            }
            None if self.takes_offers.load(Ordering::Relaxed) => {
                drop(rx);
                self.accept_lane(&body, fds)
            }
            None => Err(ReadError::Protocol(ProtocolError::Lane("a switch-over nobody offered".into()))),
        }
    }

    fn lock_rx(&self) -> MutexGuard<'_, Option<LaneRx>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `datagram` now if its way is free; whether it left. A `Marked` frame whose marker
    /// went in but whose socket was full becomes `Socket`.
    fn try_send(&self, lane: &mut Option<Producer>, datagram: &mut Datagram) -> Result<bool, LinkSendError> {
        if datagram.route == Route::Socket {
            return match datagram.send(self.socket.as_fd()) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) => Err(send_error(e)),
            };
        }
        let producer = lane.as_mut().expect("a lane route is only taken with a lane");
        if datagram.route == Route::Ring {
            return producer.try_send(&datagram.inline).map_err(ring_send_error);
        }
        // The marker: an empty frame.
        if !producer.try_send(&[]).map_err(ring_send_error)? {
            return Ok(false);
        }
        datagram.route = Route::Socket;
        // The marker is in: the frame must follow, or the reader would take the next socket
        // frame in its place. A socket that refuses it for good breaks the connection.
        self.try_send(lane, datagram).map_err(|e| match e {
            LinkSendError::Io(e) => LinkSendError::Broken(ProtocolError::Lane(format!(
                "a frame announced in the ring failed: {e}"
            ))),
            other => other,
        })
    }

    /// This connection's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The socket, to wait on it in synchronous code (the handshake).
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Closes the connection both ways before the descriptor goes: the peer reads the end of
    /// the connection once it has read everything sent before (and its sends fail). A child
    /// does it after its last words, before it exits: its exit may take a while longer, since
    /// the kernel tears down its mappings first, and only then closes its descriptors. (Both
    /// ways, because a seqpacket peer sees a hang-up only then; after a half close it would
    /// read an empty datagram.)
    ///
    /// # Errors
    /// The kernel's, from `shutdown(2)` (`ENOTCONN` when the peer is gone).
    pub fn close(&self) -> io::Result<()> {
        // A fast lane's ends close too: the peer reads what is in the ring, then the end of it
        // (it may be reading the ring alone, and not look at the socket until then).
        drop(self.lock().lane.take());
        drop(self.lock_rx().take());
        rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Both).map_err(io::Error::from)
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
        let mut datagram = frame.into_datagram(fds, admission)?;
        let mut out = self.lock();
        if let Some(producer) = &out.lane {
            datagram.route = datagram.lane_route(producer.slot_size());
        }
        if out.queue.is_empty() {
            if self.try_send(&mut out.lane, &mut datagram)? {
                return Ok(());
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
            let flushed = self.flush_some()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if flushed == Flushed::Empty {
                return Ok(());
            }
            if left.is_zero() {
                return Err(LinkSendError::Io(io::ErrorKind::TimedOut.into()));
            }
            let wait = left.min(Duration::from_millis(50));
            if flushed == Flushed::SocketFull {
                let _ = socket::wait_writable(self.socket.as_fd(), wait);
                continue;
            }
            let mut out = self.lock();
            let producer = out.lane.as_mut().expect("a full ring means a lane");
            match producer.wait_room(wait) {
                Ok(()) | Err(RingError::TimedOut) => {}
                Err(e) => return Err(ring_send_error(e)),
            }
        }
    }

    /// Ready once the lane's ring has a free slot for the head of the queue.
    fn poll_lane_room(&self, cx: &mut Context<'_>) -> Poll<Result<(), LinkSendError>> {
        let mut out = self.lock();
        match out.lane.as_mut() {
            Some(producer) => producer.poll_room(cx).map_err(ring_send_error),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Reads one frame if one is waiting, without blocking (for synchronous code).
    ///
    /// # Errors
    /// As [`LinkDriver::poll_frame`].
    pub fn recv_now(&self) -> Result<Option<Frame>, ReadError> {
        loop {
            let mut rx = self.lock_rx();
            if let Some(lane) = rx.as_mut().filter(|lane| lane.reads_ring()) {
                match lane.take_now()? {
                    Some(Item::Frame(bytes)) => return Ok(Some(self.lane_frame(bytes)?)),
                    Some(Item::Marker) => continue,
                    None => return Ok(None),
                }
            }
            drop(rx);
            let mut buf = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            if buf.is_empty() {
                buf.resize(RECEIVE_BUFFER, 0);
            }
            match socket::recv_datagram(self.socket.as_fd(), &mut buf) {
                Ok(received) => match self.frame_from(&buf, received)? {
                    Incoming::Frame(frame) => return Ok(Some(frame)),
                    Incoming::Lane { body, fds } => self.lane_datagram(body, fds)?,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(read_error(e)),
            }
        }
    }

    /// A frame read from the lane's ring.
    fn lane_frame(&self, bytes: Vec<u8>) -> Result<Frame, ReadError> {
        if bytes.len() > self.limits.max_message {
            let error = ProtocolError::TooLarge { len: bytes.len() as u64, limit: self.limits.max_message };
            return Err(ReadError::Protocol(error));
        }
        Ok(Frame { bytes: Payload::Inline(bytes), fds: Vec::new(), sender: None })
    }

    /// Sends queued datagrams until the queue is empty or its head's way is full.
    fn flush_some(&self) -> Result<Flushed, LinkSendError> {
        let mut out = self.lock();
        loop {
            let Outgoing { queue, lane, .. } = &mut *out;
            let Some(head) = queue.front_mut() else { return Ok(Flushed::Empty) };
            if !self.try_send(lane, head)? {
                return Ok(if head.route == Route::Socket { Flushed::SocketFull } else { Flushed::RingFull });
            }
            let sent = out.queue.pop_front().expect("front exists");
            if sent.bounded {
                out.bounded -= 1;
                for waker in out.room.drain(..) {
                    waker.wake();
                }
            }
        }
    }

    fn frame_from(&self, buf: &[u8], received: socket::Received) -> Result<Incoming, ReadError> {
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
        let bytes = match framing::check(&buf[..len], truncated, fds.len(), self.limits)? {
            Layout::Inline { len } => Payload::Inline(buf[HEADER_LEN..HEADER_LEN + len].to_vec()),
            Layout::Memfd { len } => {
                let body = fds.pop().expect("checked: a body memfd is attached");
                let map = memfd::map_body(body.as_fd(), len)
                    .map_err(|e| ProtocolError::Body(crate::error_chain(&e)))?;
                Payload::Mapped(map)
            }
            Layout::Lane { len } => {
                return Ok(Incoming::Lane { body: buf[HEADER_LEN..HEADER_LEN + len].to_vec(), fds });
            }
        };
        if let Some(lane) = self.lock_rx().as_mut() {
            lane.socket_frame_read();
        }
        Ok(Incoming::Frame(Frame { bytes, fds, sender }))
    }

    fn lock(&self) -> MutexGuard<'_, Outgoing> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a datagram on the socket holds.
enum Incoming {
    Frame(Frame),
    /// A fast-lane switch-over.
    Lane {
        body: Vec<u8>,
        fds: Vec<OwnedFd>,
    },
}

/// A ring error met while sending: the peer gone, or its writes corrupt.
fn ring_send_error(e: RingError) -> LinkSendError {
    match e {
        RingError::PeerGone { .. } | RingError::Closed { .. } => LinkSendError::Closed,
        RingError::Corrupt(corrupt) => LinkSendError::Broken(ProtocolError::Lane(corrupt.to_string())),
        RingError::Io(e) => LinkSendError::Io(e),
        other => LinkSendError::Io(io::Error::other(other)),
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
        self.poll_frame_spinning(cx, SpinFor::Nothing)
    }

    /// As [`poll_frame`](Self::poll_frame); with a fast lane, `spin` says whether the reader
    /// may spin a while for the next frame before it sleeps.
    ///
    /// # Errors
    /// As [`poll_frame`](Self::poll_frame).
    pub fn poll_frame_spinning(
        &mut self,
        cx: &mut Context<'_>,
        spin: SpinFor,
    ) -> Poll<Result<Frame, ReadError>> {
        loop {
            let mut rx = self.link.lock_rx();
            if let Some(lane) = rx.as_mut().filter(|lane| lane.reads_ring()) {
                match lane.poll_item(cx, spin) {
                    Poll::Ready(Ok(Item::Frame(bytes))) => return Poll::Ready(self.link.lane_frame(bytes)),
                    Poll::Ready(Ok(Item::Marker)) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            drop(rx);
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadError::Local(e))),
                Poll::Pending => return Poll::Pending,
            };
            let received = match socket::recv_datagram(self.link.socket.as_fd(), &mut self.buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) => return Poll::Ready(Err(read_error(e))),
            };
            match self.link.frame_from(&self.buf, received) {
                Ok(Incoming::Frame(frame)) => return Poll::Ready(Ok(frame)),
                Ok(Incoming::Lane { body, fds }) => {
                    if let Err(e) = self.link.lane_datagram(body, fds) {
                        return Poll::Ready(Err(e));
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
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
                Ok(Flushed::Empty) => {
                    self.writer = None;
                    return Poll::Ready(Ok(()));
                }
                Ok(Flushed::SocketFull) => {}
                Ok(Flushed::RingFull) => match self.link.poll_lane_room(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                Err(e) => return Poll::Ready(Err(e)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> (Link, Link) {
        let (a, b) = socket::seqpacket_pair().unwrap();
        (Link::new(a, Limits::default(), 16), Link::new(b, Limits::default(), 16))
    }

    fn send(link: &Link, bytes: &[u8]) -> Result<(), LinkSendError> {
        let mut frame = link.frame_buf();
        frame.write_all(bytes).unwrap();
        link.send(frame, Vec::new(), Admission::Control)
    }

    fn recv(link: &Link) -> Vec<u8> {
        link.recv_now().unwrap().expect("a frame is waiting").bytes.to_vec()
    }

    /// A parent and a child link with a lane between them, switched over both ways.
    fn laned(config: LaneConfig) -> (Link, Link) {
        let (parent, child) = links();
        child.accept_lane_offers();
        parent.offer_lane(config, std::process::id()).unwrap();
        assert!(child.recv_now().unwrap().is_none(), "the offer is no frame");
        assert!(parent.recv_now().unwrap().is_none(), "the answer is no frame");
        assert!(parent.has_lane() && child.has_lane());
        (parent, child)
    }

    #[test]
    fn frames_in_slots_and_on_the_socket_arrive_in_the_order_sent() {
        let (parent, child) = laned(LaneConfig { slots: 8, slot_size: 64 });
        let large = vec![7u8; 1000];
        for bytes in [&b"one"[..], &large, b"two", &large, &large, b"three"] {
            send(&parent, bytes).unwrap();
        }
        for bytes in [&b"one"[..], &large, b"two", &large, &large, b"three"] {
            assert_eq!(recv(&child), bytes);
        }
        send(&child, b"reply").unwrap();
        assert_eq!(recv(&parent), b"reply");
        let stats = parent.lane_stats().unwrap();
        assert_eq!((stats.sent, stats.received), (6, 1), "{stats:?}");
    }

    #[test]
    fn after_a_close_the_peer_reads_every_frame_then_the_end_and_its_sends_fail() {
        let (parent, child) = laned(LaneConfig { slots: 8, slot_size: 64 });
        let large = vec![7u8; 1000];
        for bytes in [&b"last"[..], &large, b"words"] {
            send(&child, bytes).unwrap();
        }
        child.flush_blocking(Duration::from_secs(5)).unwrap();
        child.close().unwrap();
        for bytes in [&b"last"[..], &large, b"words"] {
            assert_eq!(recv(&parent), bytes);
        }
        let end = parent.recv_now();
        assert!(matches!(end, Err(ReadError::Closed)), "the end, after the frames: {end:?}");
        assert!(
            matches!(send(&parent, b"late"), Err(LinkSendError::Closed))
                || parent.flush_blocking(Duration::from_secs(1)).is_err(),
            "a send after the close fails"
        );
    }

    #[test]
    fn a_full_ring_queues_in_order_and_the_flush_moves_the_queue_on() {
        let (parent, child) = laned(LaneConfig { slots: 2, slot_size: 64 });
        for n in 0..10u8 {
            send(&parent, &[n]).unwrap();
        }
        assert_eq!(parent.queued(), 8);
        for n in 0..10u8 {
            let mut frame = child.recv_now().unwrap();
            while frame.is_none() {
                let _ = parent.flush_blocking(Duration::from_millis(10));
                frame = child.recv_now().unwrap();
            }
            assert_eq!(frame.unwrap().bytes.to_vec(), [n]);
        }
    }

    #[test]
    fn garbage_in_the_ring_is_a_protocol_error_on_both_ways() {
        let (parent, child) = laned(LaneConfig { slots: 4, slot_size: 64 });
        send(&child, b"fine").unwrap();
        assert_eq!(recv(&parent), b"fine");
        // The child scribbles over the ring it reads (so the parent's sends fail) and the
        // ring it writes (so the parent's reads fail).
        child.lock_rx().as_ref().unwrap().consumer().scribble();
        parent.lock_rx().as_ref().unwrap().consumer().scribble();
        assert!(matches!(send(&parent, b"x"), Err(LinkSendError::Broken(ProtocolError::Lane(_)))));
        assert!(matches!(parent.recv_now(), Err(ReadError::Protocol(ProtocolError::Lane(_)))));
    }

    #[test]
    fn a_lane_switch_out_of_turn_is_a_protocol_error() {
        let (parent, child) = laned(LaneConfig::default());
        // A second answer from the child, on the socket where the next marker points.
        let datagram = framing::lane_header(0, 0);
        socket::send_datagram(child.socket(), &[&datagram], &[]).unwrap();
        send(&child, &vec![1u8; 10_000]).unwrap();
        assert!(matches!(parent.recv_now(), Err(ReadError::Protocol(ProtocolError::Lane(_)))));
    }

    #[test]
    fn an_offer_to_an_end_that_takes_none_is_a_protocol_error() {
        let (parent, child) = links();
        // The child offers a lane of its own making to its parent.
        child.accept_lane_offers();
        child.offer_lane(LaneConfig::default(), std::process::id()).unwrap();
        assert!(matches!(parent.recv_now(), Err(ReadError::Protocol(ProtocolError::Lane(_)))));
    }
}
