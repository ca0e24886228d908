//! Starting a child process and running the handshake with it.
//!
//! The sequence, with the deadline that bounds each wait:
//!
//! 1. The parent opens an ipc-channel one-shot server and re-executes its own executable
//!    (`/proc/self/exe`, never `fork` alone) with the server's name in the environment. The
//!    launch happens on one long-lived thread, because the child's parent-death signal fires
//!    when the *thread* that spawned it exits.
//! 2. The child (see [`crate::child`]) connects and sends a `Hello`: protocol version, build
//!    identity, pid, and the two byte channels of the connection. Bounded by
//!    [`SpawnConfig::handshake_timeout`]; a child that exits or never connects is noticed, and the
//!    blocked `accept` is released by connecting to the server ourselves.
//! 3. The parent checks protocol and build, then sends `Start` with the actor's initial state.
//! 4. The child runs `pre_run` and answers `Ready` or `StartFailed`. Bounded by
//!    [`SpawnConfig::start_timeout`]: past it the child is killed.
//!
//! Every failure path kills and reaps the child before returning: a failed spawn leaves no
//! process behind.

use crate::build::{BuildId, PROTOCOL_VERSION};
use crate::process::{ChildProcess, ExitInfo};
use crate::stderr_tail::StderrTail;
use crate::wire::{self, Failure, ToChild, ToParent};
use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const ENV_BOOTSTRAP: &str = "ENSEMBLE_BOOTSTRAP";
pub(crate) const ENV_PARENT: &str = "ENSEMBLE_PARENT_PID";
pub(crate) const ENV_NAME: &str = "ENSEMBLE_NAME";
pub(crate) const ENV_CPU: &str = "ENSEMBLE_CPU";
pub(crate) const ENV_TERMINAL: &str = "ENSEMBLE_STDERR_TERMINAL";

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
}

impl Default for SpawnConfig {
    fn default() -> Self {
        SpawnConfig {
            name: String::from("ensemble-child"),
            handshake_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            cpu: None,
            env: Vec::new(),
        }
    }
}

/// Why a child could not be started. The child, if it ran at all, has been reaped.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The executable could not be started, or a channel could not be created.
    #[error("could not start the child process")]
    Launch(#[source] std::io::Error),
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
    /// The child speaks another protocol version, or sent a hello that does not decode.
    #[error("the child speaks protocol {theirs}, this process speaks {ours}")]
    ProtocolMismatch {
        /// Our [`PROTOCOL_VERSION`].
        ours: u32,
        /// The child's, or 0 when its hello could not be decoded at all.
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
    /// The actor's start-up in the child failed: its initial state did not decode, `pre_run`
    /// returned an error or panicked, or the actor type is unknown to the child.
    #[error("the actor failed to start: {0}")]
    Start(Failure),
    /// The actor's initial state could not be encoded.
    #[error("the initial state could not be encoded: {0}")]
    Encode(String),
    /// The connection to the child broke during the handshake.
    #[error("the handshake with the child failed: {0}")]
    Handshake(String),
}

/// A child that completed the handshake and whose actor is ready.
#[derive(Debug)]
pub struct Spawned {
    /// The process, to signal and reap.
    pub process: Arc<ChildProcess>,
    /// Frames to the child.
    pub to_child: IpcBytesSender,
    /// Frames from the child.
    pub to_parent: IpcBytesReceiver,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Bootstrap {
    Hello(Box<Hello>),
    /// Sent by the parent to itself to release a blocked `accept`.
    Abort,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) protocol: u32,
    pub(crate) build: BuildId,
    pub(crate) pid: u32,
    pub(crate) to_child: IpcBytesSender,
    pub(crate) to_parent: IpcBytesReceiver,
}

/// Starts a child running the actor registered under `actor` with the encoded initial `state`,
/// and blocks until it is ready or has failed.
///
/// # Errors
/// Every [`SpawnError`]; in each case no child is left running.
pub fn spawn(actor: &str, state: &[u8], config: &SpawnConfig) -> Result<Spawned, SpawnError> {
    let (server, server_name) = IpcOneShotServer::<Bootstrap>::new().map_err(SpawnError::Launch)?;
    let child = launch(command(&server_name, config)).map_err(SpawnError::Launch)?;
    let process = Arc::new(adopt(child, config)?);
    let hello = await_hello(server, &server_name, &process, config)?;
    check_hello(&hello, &process)?;
    let Hello { to_child, to_parent, .. } = *hello;
    let start = ToChild::Start { actor: actor.to_owned(), name: config.name.clone() };
    let frame =
        wire::encode_with_raw_body(&start, state).map_err(|e| SpawnError::Handshake(e.to_string()))?;
    if to_child.send(&frame).is_err() {
        return Err(SpawnError::Exited(process.reap(Duration::from_secs(1))));
    }
    await_ready(&to_parent, &process, config.start_timeout)?;
    Ok(Spawned { process, to_child, to_parent })
}

fn command(server_name: &str, config: &SpawnConfig) -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(format!("ensemble: {}", config.name))
        .env(ENV_BOOTSTRAP, server_name)
        .env(ENV_PARENT, std::process::id().to_string())
        .env(ENV_NAME, &config.name)
        .env(ENV_TERMINAL, if std::io::stderr().is_terminal() { "1" } else { "0" })
        .env_remove(ENV_CPU)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(cpu) = config.cpu {
        cmd.env(ENV_CPU, cpu.to_string());
    }
    for (key, value) in &config.env {
        cmd.env(key, value);
    }
    cmd
}

/// Runs `Command::spawn` on the launcher thread, which lives as long as the process.
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
                    let _ = reply.send(cmd.spawn());
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

fn adopt(mut child: Child, config: &SpawnConfig) -> Result<ChildProcess, SpawnError> {
    let stderr = child.stderr.take().expect("stderr is piped");
    match StderrTail::forward(stderr, format!("ensemble-stderr-{}", child.id())) {
        Ok(tail) => Ok(ChildProcess::new(child, config.name.clone(), tail)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(SpawnError::Launch(e))
        }
    }
}

fn await_hello(
    server: IpcOneShotServer<Bootstrap>,
    server_name: &str,
    process: &ChildProcess,
    config: &SpawnConfig,
) -> Result<Box<Hello>, SpawnError> {
    let (tx, rx) = mpsc::channel();
    let accepted = std::thread::Builder::new().name("ensemble-accept".into()).spawn(move || {
        let _ = tx.send(server.accept().map(|(_, bootstrap)| bootstrap));
    });
    accepted.map_err(SpawnError::Launch)?;
    let deadline = Instant::now() + config.handshake_timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        match rx.recv_timeout(pause) {
            Ok(Ok(Bootstrap::Hello(hello))) => return Ok(hello),
            Ok(Ok(Bootstrap::Abort)) => {
                // Not from our child: something else connected to the one-shot server first.
                process.kill();
                let exit = process.reap(Duration::from_secs(1));
                return Err(SpawnError::Handshake(format!("another process answered the handshake; {exit}")));
            }
            Ok(Err(e)) => {
                process.kill();
                let exit = process.reap(Duration::from_secs(1));
                return Err(SpawnError::Handshake(format!("the child's hello did not decode ({e}); {exit}")));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SpawnError::Handshake("the accept thread died".into()))
            }
        }
        if let Some(exit) = process.try_reap() {
            release_accept(server_name);
            return Err(SpawnError::Exited(exit));
        }
        if Instant::now() >= deadline {
            process.kill();
            release_accept(server_name);
            let exit = process.reap(Duration::from_secs(1));
            return Err(SpawnError::HandshakeTimeout { timeout: config.handshake_timeout, exit });
        }
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Connects to our own one-shot server so that the thread blocked in `accept` returns.
fn release_accept(server_name: &str) {
    if let Ok(sender) = IpcSender::<Bootstrap>::connect(server_name.to_owned()) {
        let _ = sender.send(Bootstrap::Abort);
    }
}

fn check_hello(hello: &Hello, process: &ChildProcess) -> Result<(), SpawnError> {
    let refuse = |err: SpawnError| {
        process.kill();
        process.reap(Duration::from_secs(1));
        Err(err)
    };
    if hello.protocol != PROTOCOL_VERSION {
        return refuse(SpawnError::ProtocolMismatch { ours: PROTOCOL_VERSION, theirs: hello.protocol });
    }
    let ours = BuildId::current();
    if hello.build != ours {
        let theirs = Box::new(hello.build.clone());
        return refuse(SpawnError::BuildMismatch { ours: Box::new(ours), theirs });
    }
    if hello.pid != process.pid() {
        return refuse(SpawnError::Handshake(format!(
            "a process with pid {} answered instead of our child {}",
            hello.pid,
            process.pid()
        )));
    }
    Ok(())
}

fn await_ready(
    to_parent: &IpcBytesReceiver,
    process: &Arc<ChildProcess>,
    timeout: Duration,
) -> Result<(), SpawnError> {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (process, timed_out) = (Arc::clone(process), Arc::clone(&timed_out));
        std::thread::Builder::new().name("ensemble-start-watchdog".into()).spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
                timed_out.store(true, Ordering::SeqCst);
                process.kill();
            }
        })
    };
    watchdog.map_err(SpawnError::Launch)?;
    let frame = to_parent.recv();
    let _ = done_tx.send(());
    let grace = Duration::from_secs(1);
    let frame = match frame {
        Ok(frame) => frame,
        Err(_) if timed_out.load(Ordering::SeqCst) => {
            return Err(SpawnError::StartTimeout { timeout, exit: process.reap(grace) })
        }
        Err(_) => return Err(SpawnError::Exited(process.reap(grace))),
    };
    let failed = |failure: Failure| {
        let _ = process.reap(grace);
        Err(SpawnError::Start(failure))
    };
    match wire::decode::<ToParent>(&frame) {
        Ok((ToParent::Ready, _)) => Ok(()),
        Ok((ToParent::StartFailed, body)) => match wire::decode_body::<Failure>(body) {
            Ok(failure) => failed(failure),
            Err(e) => failed(Failure::Decode { what: "start failure".into(), detail: e.to_string() }),
        },
        Ok((other, _)) => {
            process.kill();
            failed(Failure::Error { message: format!("unexpected first frame {other:?}") })
        }
        Err(e) => {
            process.kill();
            failed(Failure::Decode { what: "first frame".into(), detail: e.to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `program` as if it were a child and runs the parent's side of the handshake.
    fn handshake_with(program: &str, args: &[&str], timeout: Duration) -> SpawnError {
        let (server, name) = IpcOneShotServer::<Bootstrap>::new().unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stderr(Stdio::piped());
        let config = SpawnConfig { handshake_timeout: timeout, ..SpawnConfig::default() };
        let process = adopt(launch(cmd).unwrap(), &config).unwrap();
        let error = await_hello(server, &name, &process, &config).err().expect("no hello can come");
        assert!(process.exit_info().is_some(), "the child was reaped");
        error
    }

    #[test]
    fn a_child_that_never_connects_is_killed_after_the_handshake_timeout() {
        match handshake_with("/bin/sleep", &["30"], Duration::from_millis(200)) {
            SpawnError::HandshakeTimeout { timeout, exit } => {
                assert_eq!(timeout, Duration::from_millis(200));
                assert_eq!(exit.signal(), Some(libc::SIGKILL));
            }
            other => panic!("expected a handshake timeout, got {other:?}"),
        }
    }

    #[test]
    fn a_child_that_exits_before_connecting_reports_status_and_stderr() {
        match handshake_with("/bin/sh", &["-c", "echo no luck >&2; exit 3"], Duration::from_secs(10)) {
            SpawnError::Exited(exit) => {
                assert_eq!(exit.code(), Some(3));
                assert_eq!(exit.stderr_tail, "no luck\n");
                assert!(exit.to_string().contains("exited with code 3"), "{exit}");
            }
            other => panic!("expected an early exit, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_executable_is_a_launch_error() {
        let error = launch(Command::new("/nonexistent/ensemble-child")).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }
}
