//! The hand-written baselines: a raw ipc-channel server child, and the socket floors (a
//! 64-byte ping-pong over a seqpacket pair, blocking or on a tokio reactor).

use super::*;

#[derive(Serialize, Deserialize)]
pub(crate) enum RawRequest {
    Call(u64),
    Cast(u64),
    /// Send this many bytes back through the bytes channel.
    Bytes(usize),
    Stop,
}

pub(crate) type RawHello = (IpcSender<RawRequest>, IpcReceiver<u64>, ipc::IpcBytesReceiver);

pub(crate) const ROLE: &str = "COMPARE_ROLE";

/// The raw child: connect, then answer calls until told to stop.
pub(crate) fn raw_child(server: String) {
    let (req_tx, req_rx) = ipc::channel::<RawRequest>().unwrap();
    let (rep_tx, rep_rx) = ipc::channel::<u64>().unwrap();
    let (bytes_tx, bytes_rx) = ipc::bytes_channel().unwrap();
    IpcSender::<RawHello>::connect(server).unwrap().send((req_tx, rep_rx, bytes_rx)).unwrap();
    let mut notes = 0;
    let mut buffer: Vec<u8> = Vec::new();
    while let Ok(request) = req_rx.recv() {
        match request {
            RawRequest::Call(n) => rep_tx.send(n + notes).unwrap(),
            RawRequest::Cast(_) => notes += 1,
            RawRequest::Bytes(n) => {
                if buffer.len() != n {
                    buffer = vec![7u8; n]; // written once, outside the timed sends that follow
                }
                bytes_tx.send(&buffer).unwrap();
            }
            RawRequest::Stop => break,
        }
    }
}

pub(crate) struct Raw {
    pub(crate) child: Child,
    pub(crate) tx: IpcSender<RawRequest>,
    pub(crate) rx: IpcReceiver<u64>,
    pub(crate) bytes: ipc::IpcBytesReceiver,
}

impl Raw {
    pub(crate) fn start(cpu: usize) -> Raw {
        let (server, name) = IpcOneShotServer::<RawHello>::new().unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, format!("raw {name} {cpu}"))
            .spawn()
            .unwrap();
        let (_, (tx, rx, bytes)) = server.accept().unwrap();
        Raw { child, tx, rx, bytes }
    }

    pub(crate) fn call(&self, n: u64) -> u64 {
        self.tx.send(RawRequest::Call(n)).unwrap();
        self.rx.recv().unwrap()
    }

    pub(crate) fn stop(mut self) {
        self.tx.send(RawRequest::Stop).unwrap();
        self.child.wait().unwrap();
    }
}

// ---------------------------------------------------------------- the raw socket floors

/// Bytes in each direction of a socket floor's round trip.
pub(crate) const PACKET: usize = 64;

/// How a socket floor waits for the next packet, on both sides.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// `recv` blocks the thread (`raw_socket_blocking`).
    Blocking,
    /// A tokio current-thread runtime waits on a non-blocking socket with `AsyncFd`
    /// (`raw_socket_reactor`): what a reactor-driven connection pays at least.
    Reactor,
}

impl Waiting {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Waiting::Blocking => "blocking",
            Waiting::Reactor => "reactor",
        }
    }
}

/// A `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub(crate) fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two descriptors into the array of two it is given.
    let rc = unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just created, are open, and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub(crate) fn set_nonblocking(socket: BorrowedFd<'_>) {
    // SAFETY: F_GETFL and F_SETFL on a descriptor that `socket` keeps open; no pointers.
    let rc = unsafe {
        let flags = libc::fcntl(socket.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(socket.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    assert!(rc >= 0, "fcntl O_NONBLOCK: {}", io::Error::last_os_error());
}

/// One packet out (`MSG_NOSIGNAL`: a gone peer is `EPIPE`, not `SIGPIPE`).
pub(crate) fn send_packet(socket: BorrowedFd<'_>, packet: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads `packet.len()` bytes from a live slice, on a descriptor `socket` keeps open.
    let n =
        unsafe { libc::send(socket.as_raw_fd(), packet.as_ptr().cast(), packet.len(), libc::MSG_NOSIGNAL) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One packet in; 0 means the peer closed (no side ever sends an empty packet).
pub(crate) fn recv_packet(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into a live, exclusively borrowed slice, on a
    // descriptor `socket` keeps open.
    let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Registers `socket` (non-blocking) with the current tokio runtime's reactor.
pub(crate) fn register(socket: OwnedFd) -> AsyncFd<OwnedFd> {
    set_nonblocking(socket.as_fd());
    let interest = if std::env::var_os("COMPARE_READ_ONLY").is_some() {
        tokio::io::Interest::READABLE
    } else {
        tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE
    };
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, so the descriptor stays open and names the same
    // socket until the registration is dropped, and `as_raw_fd` always returns that number.
    unsafe { AsyncFd::register_with_interest(socket, interest) }
        .map_err(io::Error::from)
        .expect("register with the reactor")
}

/// Sends one packet from a reactor: at once if the socket has room (as ensemble's `Link::send`
/// does), else when it is writable.
pub(crate) async fn send_ready(socket: &AsyncFd<OwnedFd>, packet: &[u8]) -> io::Result<usize> {
    match send_packet(socket.get_ref().as_fd(), packet) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        sent => return sent,
    }
    loop {
        let mut guard = socket.writable().await?;
        // `try_io` clears the readiness when the send would block, so the next await waits.
        if let Ok(sent) = guard.try_io(|s| send_packet(s.get_ref().as_fd(), packet)) {
            return sent;
        }
    }
}

/// Receives one packet from a reactor: readable().await, try recv, clear on `WouldBlock`.
pub(crate) async fn recv_ready(socket: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = socket.readable().await?;
        // Readiness is edge-triggered: it is cleared only after a recv said `WouldBlock`.
        if let Ok(received) = guard.try_io(|s| recv_packet(s.get_ref().as_fd(), buf)) {
            return received;
        }
    }
}

/// The socket floors' child: its end of the pair is its stdin; it echoes every packet until
/// the parent closes its end.
pub(crate) fn socket_child(waiting: &str) {
    // A close-on-exec duplicate of stdin, owned here (this child starts no other program).
    let socket = io::stdin().as_fd().try_clone_to_owned().expect("the socket on stdin");
    let mut buf = [0u8; PACKET];
    match waiting {
        "blocking" => loop {
            let n = recv_packet(socket.as_fd(), &mut buf).expect("recv");
            if n == 0 {
                break;
            }
            assert_eq!(send_packet(socket.as_fd(), &buf[..n]).expect("send"), n);
        },
        "reactor" => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
            rt.block_on(async {
                let socket = register(socket);
                loop {
                    let n = recv_ready(&socket, &mut buf).await.expect("recv");
                    if n == 0 {
                        break;
                    }
                    assert_eq!(send_ready(&socket, &buf[..n]).await.expect("send"), n);
                }
            });
        }
        _ => panic!("unknown waiting {waiting}"),
    }
}

/// The parent's side of a socket floor: a re-executed child that echoes 64-byte packets.
pub(crate) struct SocketPeer {
    pub(crate) child: Child,
    pub(crate) end: PeerEnd,
}

pub(crate) enum PeerEnd {
    Blocking(OwnedFd),
    /// The registration is dropped before the runtime whose reactor holds it.
    Reactor(AsyncFd<OwnedFd>, tokio::runtime::Runtime),
}

impl SocketPeer {
    pub(crate) fn start(waiting: Waiting, cpu: usize) -> SocketPeer {
        let (ours, theirs) = seqpacket_pair();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, format!("socket {} {cpu}", waiting.word()))
            .stdin(Stdio::from(theirs))
            .spawn()
            .unwrap();
        let end = match waiting {
            Waiting::Blocking => PeerEnd::Blocking(ours),
            Waiting::Reactor => {
                let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
                let socket = {
                    let _entered = rt.enter();
                    register(ours)
                };
                PeerEnd::Reactor(socket, rt)
            }
        };
        SocketPeer { child, end }
    }

    /// `count` round trips starting with number `first`; ns per round trip.
    pub(crate) fn round_trips(&self, first: u64, count: usize) -> f64 {
        let mut packet = [0u8; PACKET];
        let mut echo = [0u8; PACKET];
        let start = Instant::now();
        match &self.end {
            PeerEnd::Blocking(socket) => {
                for n in first..first + count as u64 {
                    packet[..8].copy_from_slice(&n.to_le_bytes());
                    assert_eq!(send_packet(socket.as_fd(), &packet).unwrap(), PACKET);
                    assert_eq!(recv_packet(socket.as_fd(), &mut echo).unwrap(), PACKET);
                    assert_eq!(echo[..8], packet[..8]);
                }
            }
            PeerEnd::Reactor(socket, rt) => rt.block_on(async {
                for n in first..first + count as u64 {
                    packet[..8].copy_from_slice(&n.to_le_bytes());
                    assert_eq!(send_ready(socket, &packet).await.unwrap(), PACKET);
                    assert_eq!(recv_ready(socket, &mut echo).await.unwrap(), PACKET);
                    assert_eq!(echo[..8], packet[..8]);
                }
            }),
        }
        per_op(start, count)
    }

    /// Closes the parent's end: the child reads 0 bytes and exits.
    pub(crate) fn stop(mut self) {
        match self.end {
            PeerEnd::Blocking(socket) => drop(socket),
            PeerEnd::Reactor(socket, rt) => {
                drop(socket);
                drop(rt);
            }
        }
        assert!(self.child.wait().unwrap().success());
    }
}
