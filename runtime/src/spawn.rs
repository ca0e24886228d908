//! Starting a child process and running the handshake with it.
//!
//! The sequence, with the deadline that bounds each wait:
//!
//! 1. The parent makes a seqpacket socket pair and re-executes its own executable
//!    (`/proc/self/exe`, never `fork` alone) with one end as the child's standard input: the
//!    only way std hands one descriptor to one child without racing other threads' spawns.
//!    Only that child holds the other end, so nothing else can connect: the connection is
//!    authenticated by construction. The launch happens on one long-lived thread, because the
//!    child's parent-death signal fires when the *thread* that spawned it exits.
//! 2. The child (see [`crate::child`]) moves the socket off its standard input (close-on-exec,
//!    so programs it runs do not inherit it) and sends a hello: protocol version, build
//!    identity and pid. The kernel attaches the sender's credentials (`SO_PASSCRED`), so the
//!    parent checks that the hello comes from its child's pid. Bounded by
//!    [`SpawnConfig::handshake_timeout`]; a child that exits early is seen through its pidfd.
//! 3. The parent checks protocol and build, then sends `Start` with the actor's initial state.
//! 4. The child runs `pre_run` and answers `Ready` or `StartFailed`. Bounded by
//!    [`SpawnConfig::start_timeout`]: past it the child is killed.
//!
//! Every failure path kills and reaps the child before returning: a failed spawn leaves no
//! process behind. The handshake is synchronous (`poll` on the socket and the child's pidfd):
//! it runs on the spawning thread, with no helper thread.

use crate::build::{BuildId, PROTOCOL_VERSION};
use crate::process::{ChildProcess, ExitInfo, Launching};
use crate::stderr_tail::StderrTail;
use crate::sys::{self, socket};
use crate::transport::{Admission, Frame, LaneConfig, LaneError, Limits, Link, ProtocolError, ReadError};
use crate::wire::{self, Failure, ToChild, ToParent};
use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const ENV_BOOTSTRAP: &str = "ENSEMBLE_BOOTSTRAP";
pub(crate) const ENV_PARENT: &str = "ENSEMBLE_PARENT_PID";
pub(crate) const ENV_NAME: &str = "ENSEMBLE_NAME";
pub(crate) const ENV_CPU: &str = "ENSEMBLE_CPU";
pub(crate) const ENV_TERMINAL: &str = "ENSEMBLE_STDERR_TERMINAL";
pub(crate) const ENV_MAX_MESSAGE: &str = "ENSEMBLE_MAX_MESSAGE";
pub(crate) const ENV_SEND_QUEUE: &str = "ENSEMBLE_SEND_QUEUE";

/// The oldest Linux ensemble runs on: pidfds (`pidfd_open`, 5.3) tell when a child exits.
pub const MIN_LINUX: (u32, u32) = (5, 3);

/// How many frames a connection queues, by default, when its socket is full.
pub const DEFAULT_SEND_QUEUE: usize = 1024;

/// How to start a child process.
///
/// # Examples
/// ```
/// use ensemble_runtime::SpawnConfig;
/// use std::time::Duration;
/// let config = SpawnConfig {
///     name: "resizer".into(),
///     handshake_timeout: Duration::from_secs(2),
///     ..SpawnConfig::default()
/// };
/// assert_eq!(config.cpu, None);
/// ```
#[derive(Clone, Debug)]
pub struct SpawnConfig {
    /// The process name: shown by `ps` and `top`, and on every log line of the child.
    pub name: String,
    /// How long the child may take to start and connect. Default: 10 s.
    pub handshake_timeout: Duration,
    /// How long `pre_run` may take once connected. Default: 60 s.
    pub start_timeout: Duration,
    /// Pin the child (all its threads) to this CPU. Default: not pinned.
    pub cpu: Option<usize>,
    /// Extra environment variables for the child.
    pub env: Vec<(String, String)>,
    /// The largest message either side accepts. Default: 256 MiB.
    pub limits: Limits,
    /// How many frames wait for room in the socket before sends are refused or wait.
    /// Default: [`DEFAULT_SEND_QUEUE`].
    pub send_queue: usize,
    /// Open a fast lane (frames through shared-memory rings while both sides are busy; see
    /// [`transport::LaneConfig`](crate::transport::LaneConfig)). Default: none.
    pub fast_lane: Option<LaneConfig>,
}

impl Default for SpawnConfig {
    fn default() -> Self {
        SpawnConfig {
            name: String::from("ensemble-child"),
            handshake_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            cpu: None,
            env: Vec::new(),
            limits: Limits::default(),
            send_queue: DEFAULT_SEND_QUEUE,
            fast_lane: None,
        }
    }
}

/// Why a child could not be started. The child, if it ran at all, has been reaped.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The executable could not be started, or a socket could not be created.
    #[error("could not start the child process")]
    Launch(#[source] std::io::Error),
    /// The kernel is older than ensemble needs.
    #[error("ensemble needs Linux {}.{} or later (for pidfds); this kernel is {}.{}", needed.0, needed.1, found.0, found.1)]
    UnsupportedKernel {
        /// The running kernel's version.
        found: (u32, u32),
        /// [`MIN_LINUX`].
        needed: (u32, u32),
    },
    /// The child exited (or was killed) before it was ready.
    #[error("the child exited before it was ready: {0}")]
    Exited(ExitInfo),
    /// The child did not connect within the handshake timeout; it was killed.
    #[error("the child did not connect within {timeout:?}; it was killed ({exit})")]
    HandshakeTimeout {
        /// The timeout that passed.
        timeout: Duration,
        /// How the killed child ended, with its stderr.
        exit: ExitInfo,
    },
    /// The child's `pre_run` did not finish within the start timeout; it was killed.
    #[error("the child did not finish starting within {timeout:?}; it was killed ({exit})")]
    StartTimeout {
        /// The timeout that passed.
        timeout: Duration,
        /// How the killed child ended, with its stderr.
        exit: ExitInfo,
    },
    /// The child speaks another protocol version.
    #[error("the child speaks protocol {theirs}, this process speaks {ours}")]
    ProtocolMismatch {
        /// Our [`PROTOCOL_VERSION`].
        ours: u32,
        /// The child's.
        theirs: u32,
    },
    /// The child was built from other code (or with another build salt).
    #[error("the child is another build: ours is {ours}, the child's is {theirs}")]
    BuildMismatch {
        /// Our identity.
        ours: Box<BuildId>,
        /// The child's.
        theirs: Box<BuildId>,
    },
    /// The child broke the protocol during the handshake (garbage, a hello from another
    /// process, an unexpected frame); it was killed.
    #[error("the child broke the handshake; it was killed")]
    Protocol(#[source] ProtocolError),
    /// The actor's start-up in the child failed: its initial state did not decode, `pre_run`
    /// returned an error or panicked, or the actor type is unknown to the child.
    #[error("the actor failed to start: {0}")]
    Start(Failure),
    /// The actor's initial state could not be encoded, or is over the message limit.
    #[error("the initial state could not be encoded")]
    Encode(#[source] wire::WireError),
    /// Reading the connection failed on this side (e.g. out of descriptors).
    #[error("the handshake failed on this side")]
    Local(#[source] std::io::Error),
    /// The fast lane asked for could not be opened (no memory for its rings, ...); the child
    /// was stopped.
    #[error("could not open the fast lane")]
    Lane(#[source] LaneError),
    /// The spawn was given up before it began, e.g. because the supervisor that was to start
    /// the child has ended.
    #[error("the spawn was abandoned: {0}")]
    Abandoned(&'static str),
}

/// A child that completed the handshake and whose actor is ready.
#[derive(Debug)]
pub struct Spawned {
    /// The process, to signal and reap.
    pub process: Arc<ChildProcess>,
    /// The connection to it.
    pub link: Arc<Link>,
}

/// The first frame a child sends: protocol, build identity, pid. The protocol comes first and
/// alone, so that a child of another version is named as such.
pub(crate) fn encode_hello() -> Vec<u8> {
    let mut hello = PROTOCOL_VERSION.to_le_bytes().to_vec();
    hello.extend(
        wire::encode_body(&(BuildId::current(), std::process::id())).map(|(b, _)| b).unwrap_or_default(),
    );
    hello
}

fn decode_hello(frame: &[u8]) -> Result<(BuildId, u32), SpawnError> {
    let theirs = frame.get(..4).map_or(0, |v| u32::from_le_bytes(v.try_into().expect("4 bytes")));
    if theirs != PROTOCOL_VERSION {
        return Err(SpawnError::ProtocolMismatch { ours: PROTOCOL_VERSION, theirs });
    }
    wire::decode_body::<(BuildId, u32)>(&frame[4..])
        .map_err(|e| SpawnError::Protocol(ProtocolError::Undecodable(format!("the hello: {e}"))))
}

/// Starts a child running the actor registered under `actor` with the encoded initial `state`
/// (and `fds`, the descriptors of the segments it hands over, in the order of their indexes),
/// and blocks until it is ready or has failed.
///
/// # Errors
/// Every [`SpawnError`]; in each case no child is left running.
pub fn spawn(
    actor: &str,
    state: &[u8],
    fds: Vec<OwnedFd>,
    config: &SpawnConfig,
) -> Result<Spawned, SpawnError> {
    check_kernel()?;
    sys::raise_nofile_limit();
    crate::introspect::serve();
    let (ours, theirs) = socket::seqpacket_pair().map_err(SpawnError::Launch)?;
    socket::set_pass_credentials(ours.as_fd(), true).map_err(SpawnError::Launch)?;
    let launching = Launching::new();
    let child = launch(command(config, theirs)).map_err(SpawnError::Launch)?;
    let process = Arc::new(adopt(child, config, actor, launching)?);
    let link = Arc::new(Link::new(ours, config.limits, config.send_queue));
    let handshake = Handshake { link: &link, process: &process };
    handshake.hello(config.handshake_timeout)?;
    handshake.start(actor, state, fds, config)?;
    if let Some(lane) = config.fast_lane {
        link.offer_lane(lane, process.pid()).map_err(|e| handshake.refuse(SpawnError::Lane(e)))?;
    }
    process.record().set_state(crate::introspect::ActorState::Running);
    Ok(Spawned { process, link })
}

fn check_kernel() -> Result<(), SpawnError> {
    let found = sys::kernel_version();
    if found < MIN_LINUX {
        return Err(SpawnError::UnsupportedKernel { found, needed: MIN_LINUX });
    }
    Ok(())
}

fn command(config: &SpawnConfig, connection: OwnedFd) -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(format!("ensemble: {}", config.name))
        .env(ENV_BOOTSTRAP, PROTOCOL_VERSION.to_string())
        .env(ENV_PARENT, std::process::id().to_string())
        .env(ENV_NAME, &config.name)
        .env(ENV_TERMINAL, if std::io::stderr().is_terminal() { "1" } else { "0" })
        .env(ENV_MAX_MESSAGE, config.limits.max_message.to_string())
        .env(ENV_SEND_QUEUE, config.send_queue.to_string())
        .env_remove(ENV_CPU)
        .stdin(Stdio::from(connection))
        .stderr(Stdio::piped());
    if let Some(cpu) = config.cpu {
        cmd.env(ENV_CPU, cpu.to_string());
    }
    for (key, value) in &config.env {
        cmd.env(key, value);
    }
    cmd
}

/// Runs `Command::spawn` on the launcher thread, which lives as long as the process. The
/// command (and with it the parent's copy of the child's socket) is dropped there at once.
fn launch(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static LAUNCHER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = {
        let mut launcher = LAUNCHER.lock().unwrap_or_else(|e| e.into_inner());
        if launcher.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new().name("ensemble-launcher".into()).spawn(move || {
                for (mut cmd, reply) in rx {
                    #[allow(clippy::disallowed_methods)] // the one place that starts processes
                    let child = cmd.spawn();
                    drop(cmd);
                    let _ = reply.send(child);
                }
            })?;
            *launcher = Some(tx);
        }
        launcher.as_ref().expect("set above").send((cmd, reply_tx))
    };
    let gone = || std::io::Error::other("the ensemble launcher thread is gone");
    sent.map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}

fn adopt(
    mut child: Child,
    config: &SpawnConfig,
    actor: &str,
    launching: Launching,
) -> Result<ChildProcess, SpawnError> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let pid = child.id();
    match StderrTail::forward(stderr, format!("ensemble-stderr-{pid}")) {
        Ok(tail) => {
            ChildProcess::new(child, config.name.clone(), actor, tail, launching).map_err(SpawnError::Launch)
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(SpawnError::Launch(e))
        }
    }
}

/// The parent's side of one handshake.
struct Handshake<'a> {
    link: &'a Arc<Link>,
    process: &'a Arc<ChildProcess>,
}

/// Which wait of the handshake timed out.
#[derive(Clone, Copy)]
enum Phase {
    Hello,
    Start,
}

impl Handshake<'_> {
    fn hello(&self, timeout: Duration) -> Result<(), SpawnError> {
        let frame = self.next_frame(timeout, Phase::Hello)?;
        let (build, pid) = decode_hello(&frame.bytes).map_err(|e| self.refuse(e))?;
        let ours = BuildId::current();
        if build != ours {
            return Err(
                self.refuse(SpawnError::BuildMismatch { ours: Box::new(ours), theirs: Box::new(build) })
            );
        }
        let child = self.process.pid();
        if frame.sender.is_some_and(|sender| sender != child) || pid != child {
            let why =
                format!("a hello from pid {:?} (claiming {pid}) instead of our child {child}", frame.sender);
            return Err(self.refuse(SpawnError::Protocol(ProtocolError::Unexpected(why))));
        }
        socket::set_pass_credentials(self.link.socket(), false).map_err(|e| self.refuse(SpawnError::Local(e)))
    }

    fn start(
        &self,
        actor: &str,
        state: &[u8],
        fds: Vec<OwnedFd>,
        config: &SpawnConfig,
    ) -> Result<(), SpawnError> {
        let start = ToChild::Start { actor: actor.to_owned(), name: config.name.clone() };
        let frame = wire::encode_with_raw_body(self.link.frame_buf(), &start, state)
            .map_err(|e| self.refuse(SpawnError::Encode(e)))?;
        let sent = self.link.send(frame, fds, Admission::Control);
        if sent.and_then(|()| self.link.flush_blocking(config.handshake_timeout)).is_err() {
            return Err(SpawnError::Exited(self.process.reap(Duration::from_secs(1))));
        }
        let frame = self.next_frame(config.start_timeout, Phase::Start)?;
        match wire::decode::<ToParent>(&frame.bytes) {
            Ok((ToParent::Ready, _)) => Ok(()),
            Ok((ToParent::StartFailed, body)) => {
                let failure = wire::decode_body::<Failure>(body).unwrap_or_else(|e| Failure::Decode {
                    what: "the start failure".into(),
                    detail: e.to_string(),
                });
                let _ = self.process.reap(Duration::from_secs(1));
                Err(SpawnError::Start(failure))
            }
            Ok((other, _)) => Err(self.refuse(SpawnError::Protocol(ProtocolError::Unexpected(format!(
                "{other:?} instead of Ready"
            ))))),
            Err(e) => Err(self.refuse(SpawnError::Protocol(ProtocolError::Undecodable(e.to_string())))),
        }
    }

    /// The next frame from the child, within `timeout`. A child that exits, closes, breaks the
    /// framing or takes too long is killed and reaped.
    fn next_frame(&self, timeout: Duration, phase: Phase) -> Result<Frame, SpawnError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.link.recv_now() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(ReadError::Closed) => {
                    return Err(SpawnError::Exited(self.process.reap(Duration::from_secs(2))))
                }
                Err(ReadError::Protocol(e)) => return Err(self.refuse(SpawnError::Protocol(e))),
                Err(ReadError::Local(e)) => return Err(self.refuse(SpawnError::Local(e))),
            }
            if let Some(exit) = self.process.try_reap() {
                return Err(SpawnError::Exited(exit));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.process.kill();
                let exit = self.process.reap(Duration::from_secs(1));
                return Err(match phase {
                    Phase::Hello => SpawnError::HandshakeTimeout { timeout, exit },
                    Phase::Start => SpawnError::StartTimeout { timeout, exit },
                });
            }
            let fds = [self.link.socket(), self.process.pidfd()];
            socket::wait_readable(&fds, left).map_err(|e| self.refuse(SpawnError::Local(e)))?;
        }
    }

    /// Kills and reaps the child, then returns `error`.
    fn refuse(&self, error: SpawnError) -> SpawnError {
        if matches!(error, SpawnError::Protocol(_)) {
            tracing::error!(pid = self.process.pid(), "the child broke the handshake: {error:#}");
        }
        self.process.kill();
        self.process.reap(Duration::from_secs(1));
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `program` with a connection as its standard input, as if it were a child, and runs
    /// the parent's side of the hello. `also` gets a copy of the child's end, to play a process
    /// that got hold of it.
    fn handshake_with(
        program: &str,
        args: &[&str],
        timeout: Duration,
        also: impl FnOnce(OwnedFd),
    ) -> SpawnError {
        let (ours, theirs) = socket::seqpacket_pair().unwrap();
        socket::set_pass_credentials(ours.as_fd(), true).unwrap();
        also(theirs.try_clone().unwrap());
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::from(theirs)).stderr(Stdio::piped());
        let config = SpawnConfig { handshake_timeout: timeout, ..SpawnConfig::default() };
        let process = Arc::new(adopt(launch(cmd).unwrap(), &config, "test", Launching::new()).unwrap());
        let link = Arc::new(Link::new(ours, config.limits, 8));
        let error =
            Handshake { link: &link, process: &process }.hello(timeout).expect_err("no valid hello can come");
        assert!(process.exit_info().is_some(), "the child was reaped");
        error
    }

    fn shell(script: &str) -> SpawnError {
        handshake_with("/bin/sh", &["-c", script], Duration::from_secs(10), drop)
    }

    #[test]
    fn a_child_that_never_connects_is_killed_after_the_handshake_timeout() {
        match handshake_with("/bin/sleep", &["30"], Duration::from_millis(200), drop) {
            SpawnError::HandshakeTimeout { timeout, exit } => {
                assert_eq!(timeout, Duration::from_millis(200));
                assert_eq!(exit.signal(), Some(libc::SIGKILL));
            }
            other => panic!("expected a handshake timeout, got {other:?}"),
        }
    }

    #[test]
    fn a_child_that_exits_before_connecting_reports_status_and_stderr() {
        match shell("echo no luck >&2; exit 3") {
            SpawnError::Exited(exit) => {
                assert_eq!(exit.code(), Some(3));
                assert_eq!(exit.stderr_tail, "no luck\n");
                assert!(exit.to_string().contains("exited with code 3"), "{exit}");
            }
            other => panic!("expected an early exit, got {other:?}"),
        }
    }

    /// Garbage on the connection during the handshake: the child is killed, the error says why.
    #[test]
    fn garbage_instead_of_a_hello_is_a_protocol_error() {
        let cases = [
            ("printf 'xx' >&0; sleep 30", "shorter than the frame header"),
            // A header announcing a 1 TiB body in a memfd: refused before anything is allocated.
            (
                r"printf '\345\002\001\000\000\000\000\000\000\000\000\000\000\001\000\000' >&0; sleep 30",
                "over this connection's limit",
            ),
            (
                r"printf '\345\011\000\000\000\000\000\000\001\000\000\000\000\000\000\000x' >&0; sleep 30",
                "transport version 9",
            ),
            (
                r"printf '\345\002\000\000\000\000\000\000\002\000\000\000\000\000\000\000\377\377' >&0; sleep 30",
                "protocol",
            ),
        ];
        for (script, expected) in cases {
            let error = shell(script);
            let text = format!("{error}: {}", error.source_text());
            assert!(text.contains(expected), "{script}: {text}");
        }
    }

    #[test]
    fn a_hello_from_another_process_holding_the_socket_is_refused() {
        let error = handshake_with("/bin/sleep", &["30"], Duration::from_secs(10), |stolen| {
            let mut frame = crate::transport::FrameBuf::new(Limits::default());
            std::io::Write::write_all(&mut frame, &encode_hello()).unwrap();
            Link::new(stolen, Limits::default(), 8).send(frame, Vec::new(), Admission::Control).unwrap();
        });
        match error {
            SpawnError::Protocol(ProtocolError::Unexpected(why)) => {
                assert!(why.contains("instead of our child"), "{why}")
            }
            other => panic!("expected a refused hello, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_executable_is_a_launch_error() {
        let error = launch(Command::new("/nonexistent/ensemble-child")).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]
            /// Arbitrary bytes as a hello, with and without our protocol version in front: an
            /// error or a hello, never a panic.
            #[test]
            fn arbitrary_hellos_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128), ours in any::<bool>()) {
                let hello = if ours { [&PROTOCOL_VERSION.to_le_bytes()[..], &bytes].concat() } else { bytes };
                let _ = decode_hello(&hello);
            }
        }

        #[test]
        fn our_own_hello_decodes() {
            let (build, pid) = decode_hello(&encode_hello()).unwrap();
            assert_eq!((build, pid), (BuildId::current(), std::process::id()));
        }
    }

    impl SpawnError {
        fn source_text(&self) -> String {
            std::error::Error::source(self).map(|s| s.to_string()).unwrap_or_default()
        }
    }
}
