//! AF_UNIX `SOCK_SEQPACKET` sockets: the pair a connection runs on, and sending or receiving one
//! datagram with descriptors attached.
//!
//! Everything here goes through rustix's safe wrappers; the module sits under `sys` because it
//! is where the runtime meets the kernel, and its invariants (descriptors owned exactly once,
//! `MSG_CMSG_CLOEXEC`, `MSG_NOSIGNAL`) are stated next to the calls.

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// The most descriptors one datagram may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// The most parts one datagram is gathered from.
const MAX_PARTS: usize = 4;

/// A connected pair of seqpacket sockets, both close-on-exec and non-blocking.
///
/// # Errors
/// The `socketpair` error (e.g. `EMFILE`).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None)?)
}

/// A connected pair of stream sockets, both close-on-exec and non-blocking: a ring's doorbell
/// and liveness signal (bytes coalesce, so one read takes every pending ring; end of stream
/// is a hang-up).
///
/// # Errors
/// The `socketpair` error (e.g. `EMFILE`).
pub fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, flags, None)?)
}

/// Whether `fd` is a unix stream socket.
pub fn is_stream(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::STREAM)
}

/// Sends one datagram made of `parts`, with `fds` attached, without blocking and without
/// `SIGPIPE`. Returns `WouldBlock` when the socket's buffer is full.
///
/// # Errors
/// `WouldBlock`, `EPIPE`/`ECONNRESET` when the peer is gone, `EMSGSIZE` when it is too large.
pub fn send_datagram(socket: BorrowedFd<'_>, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    // A frame is a header and a body: no allocation per datagram on the send path.
    if parts.len() > MAX_PARTS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "more than 4 parts in one datagram"));
    }
    let mut slices = [IoSlice::new(&[]); MAX_PARTS];
    for (slice, part) in slices.iter_mut().zip(parts) {
        *slice = IoSlice::new(part);
    }
    let iov = &slices[..parts.len()];
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    if fds.is_empty() {
        let mut control = SendAncillaryBuffer::default();
        return Ok(rustix::net::sendmsg(socket, iov, &mut control, flags)?);
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "more than 253 descriptors in one frame"));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("the control buffer is too small"));
    }
    Ok(rustix::net::sendmsg(socket, iov, &mut control, flags)?)
}

/// One datagram taken from a socket.
#[derive(Debug, Default)]
pub struct Received {
    /// Its length; 0 for an empty record or a closed peer.
    pub len: usize,
    /// It was longer than the buffer (`MSG_TRUNC`): the rest is lost.
    pub truncated: bool,
    /// Descriptors were dropped (`MSG_CTRUNC`): more than we accept, or our table is full.
    pub control_truncated: bool,
    /// The descriptors attached to it, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The sender's pid, when `SO_PASSCRED` is set on this socket.
    pub sender_pid: Option<u32>,
}

/// Takes one datagram into `buf` without blocking. Descriptors arrive close-on-exec.
///
/// # Errors
/// `WouldBlock` when none is waiting; other socket errors.
pub fn recv_datagram(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS), ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC;
    let got = rustix::net::recvmsg(socket, &mut [IoSliceMut::new(buf)], &mut control, flags)?;
    let mut received = Received {
        len: got.bytes.min(buf.len()),
        truncated: got.flags.contains(ReturnFlags::TRUNC),
        control_truncated: got.flags.contains(ReturnFlags::CTRUNC),
        ..Received::default()
    };
    for message in control.drain() {
        match message {
            RecvAncillaryMessage::ScmRights(fds) => received.fds.extend(fds),
            RecvAncillaryMessage::ScmCredentials(cred) => {
                received.sender_pid = Some(cred.pid.as_raw_nonzero().get() as u32)
            }
            _ => {}
        }
    }
    Ok(received)
}

/// Asks the kernel to attach the sender's credentials to every datagram this socket receives.
///
/// # Errors
/// The `setsockopt` error.
pub fn set_pass_credentials(socket: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_passcred(socket, on)?)
}

/// Whether `fd` is a seqpacket socket.
pub fn is_seqpacket(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::SEQPACKET)
}

/// The socket's send buffer size (`SO_SNDBUF`), which bounds one datagram.
///
/// # Errors
/// The `getsockopt` error.
pub fn send_buffer_size(socket: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::net::sockopt::socket_send_buffer_size(socket)?)
}

/// Makes `fd` non-blocking (a flag of the open file description).
///
/// # Errors
/// The `fcntl` error.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    Ok(rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?)
}

/// Whether every other end of this socket is closed (`POLLHUP`), without blocking.
pub fn peer_hung_up(socket: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&socket, PollFlags::IN)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    rustix::event::poll(&mut fds, Some(&zero)).is_ok() && fds[0].revents().contains(PollFlags::HUP)
}

/// Waits until one of `fds` is readable (or hung up), at most `timeout`. Returns the index of
/// the first ready one, or `None` on timeout.
///
/// # Errors
/// The `poll` error other than `EINTR`.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Option<usize>> {
    let mut polled: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(fd, PollFlags::IN)).collect();
    let timeout = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    match rustix::event::poll(&mut polled, Some(&timeout)) {
        Ok(_) => Ok(polled.iter().position(|p| !p.revents().is_empty())),
        Err(rustix::io::Errno::INTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Waits until the socket has room to send, at most `timeout`. Returns whether it has.
///
/// # Errors
/// The `poll` error other than `EINTR`.
pub fn wait_writable(socket: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut polled = [PollFd::new(&socket, PollFlags::OUT)];
    let timeout = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    match rustix::event::poll(&mut polled, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Replaces this process's standard input by `/dev/null` and returns what it was, as a new
/// close-on-exec descriptor numbered 3 or above.
///
/// This is how a child takes the connection its parent handed it as standard input: programs
/// it runs later inherit neither.
///
/// # Errors
/// The `fcntl`, `open` or `dup2` error.
pub fn take_stdin() -> io::Result<OwnedFd> {
    let stdin = rustix::stdio::stdin();
    let taken = rustix::io::fcntl_dupfd_cloexec(stdin, 3)?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::stdio::dup2_stdin(null.as_fd())?;
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_datagram_keeps_its_boundaries_and_its_descriptors() {
        let (a, b) = seqpacket_pair().unwrap();
        let (x, _y) = seqpacket_pair().unwrap();
        send_datagram(a.as_fd(), &[b"head", b"-body"], &[x.as_fd()]).unwrap();
        send_datagram(a.as_fd(), &[b"second"], &[]).unwrap();
        let mut buf = [0u8; 64];
        let first = recv_datagram(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..first.len], b"head-body");
        assert_eq!(first.fds.len(), 1);
        assert_ne!(first.fds[0].as_raw_fd(), x.as_raw_fd(), "a new descriptor for the same socket");
        assert!(is_seqpacket(first.fds[0].as_fd()));
        let second = recv_datagram(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..second.len], b"second");
        assert!(second.fds.is_empty());
        let empty = recv_datagram(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_datagram_longer_than_the_buffer_is_reported_truncated() {
        let (a, b) = seqpacket_pair().unwrap();
        send_datagram(a.as_fd(), &[&[7u8; 100]], &[]).unwrap();
        let mut buf = [0u8; 10];
        let got = recv_datagram(b.as_fd(), &mut buf).unwrap();
        assert!(got.truncated);
        assert_eq!(got.len, 10);
    }

    #[test]
    fn a_closed_peer_reads_as_zero_and_hangs_up_while_an_empty_record_does_not() {
        let (a, b) = seqpacket_pair().unwrap();
        send_datagram(a.as_fd(), &[], &[]).unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(recv_datagram(b.as_fd(), &mut buf).unwrap().len, 0);
        assert!(!peer_hung_up(b.as_fd()));
        drop(a);
        assert!(peer_hung_up(b.as_fd()));
        assert_eq!(recv_datagram(b.as_fd(), &mut buf).unwrap().len, 0);
    }

    #[test]
    fn a_peer_that_closes_with_unread_datagrams_reads_as_a_reset() {
        let (a, b) = seqpacket_pair().unwrap();
        send_datagram(b.as_fd(), &[b"never read"], &[]).unwrap();
        drop(a);
        let mut buf = [0u8; 16];
        let err = recv_datagram(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET));
    }

    #[test]
    fn credentials_name_the_sender_when_asked_for() {
        let (a, b) = seqpacket_pair().unwrap();
        set_pass_credentials(b.as_fd(), true).unwrap();
        send_datagram(a.as_fd(), &[b"hi"], &[]).unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(recv_datagram(b.as_fd(), &mut buf).unwrap().sender_pid, Some(std::process::id()));
    }

    #[test]
    fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = seqpacket_pair().unwrap();
        drop(b);
        let err = send_datagram(a.as_fd(), &[b"x"], &[]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn waiting_for_a_readable_socket_times_out_or_names_it() {
        let (a, b) = seqpacket_pair().unwrap();
        assert_eq!(wait_readable(&[b.as_fd()], Duration::from_millis(10)).unwrap(), None);
        send_datagram(a.as_fd(), &[b"x"], &[]).unwrap();
        assert_eq!(wait_readable(&[a.as_fd(), b.as_fd()], Duration::from_secs(1)).unwrap(), Some(1));
    }
}
