//! The child side of the handshake, and the registry of actor types a child can run.
//!
//! A re-executed process finds the bootstrap variables in its environment before `main` runs
//! (see `sys/hook.rs`), takes the connection its parent handed it as standard input, says
//! hello, and hands control to the entry registered for
//! the requested actor type. It never returns into the program's own `main`.

use crate::spawn::{
    ENV_BOOTSTRAP, ENV_CPU, ENV_MAX_MESSAGE, ENV_NAME, ENV_PARENT, ENV_SEND_QUEUE, ENV_TERMINAL,
};
use crate::sys::{self, socket};
use crate::transport::{Admission, Frame, Limits, Link};
use crate::wire::{self, Failure, ToChild, ToParent};
use linkme::distributed_slice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exit code of a child whose bootstrap failed before it could report anything to its parent.
pub const EXIT_BOOTSTRAP_FAILED: i32 = 70;

/// An actor type a child process can run: registered by `#[derive(ProcessActor)]`.
#[derive(Debug)]
pub struct ActorEntry {
    /// The key the parent names in `Start`: the actor's module path and type name.
    pub key: &'static str,
    /// Runs the actor in this process and returns the exit code.
    pub run: fn(ChildBoot) -> i32,
}

/// Every actor type linked into this executable.
#[distributed_slice]
pub static ACTORS: [ActorEntry];

/// What a child's actor needs from the bootstrap: its name, state and connection.
pub struct ChildBoot {
    /// The process name given at spawn.
    pub name: String,
    /// The `Start` frame; the actor's encoded initial state is its body.
    start: Frame,
    /// Where the body starts in `start`.
    state_at: usize,
    /// The connection to the parent. The first frame sent must be `Ready` or `StartFailed`.
    pub link: Arc<Link>,
    /// Whether the parent's stderr, where ours ends up, is a terminal (for colored logs).
    pub stderr_is_terminal: bool,
}

impl std::fmt::Debug for ChildBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildBoot").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ChildBoot {
    /// The actor's encoded initial state.
    pub fn state(&self) -> &[u8] {
        &self.start.bytes[self.state_at..]
    }

    /// The descriptors of the segments the initial state hands over (once; empty after).
    pub fn take_state_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.start.fds)
    }

    /// Tells the parent that the actor could not start.
    pub fn start_failed(&self, failure: &Failure) {
        if let Ok(encoded) = wire::encode_into(self.link.frame_buf(), &ToParent::StartFailed, failure) {
            let _ = self.link.send(encoded.frame, Vec::new(), Admission::Control);
            let _ = self.link.flush_blocking(Duration::from_secs(5));
        }
    }
}

static IS_CHILD: AtomicBool = AtomicBool::new(false);

/// Whether this process is an ensemble child (it was started by [`crate::spawn`]).
pub fn is_child() -> bool {
    IS_CHILD.load(Ordering::Relaxed) || std::env::var_os(ENV_BOOTSTRAP).is_some()
}

/// Becomes the child if this process was started as one: never returns in that case.
/// Returns at once in any other process.
pub fn run_if_child() {
    if std::env::var_os(ENV_BOOTSTRAP).is_none() {
        return;
    }
    let code = match bootstrap() {
        Ok(boot) => boot,
        Err(message) => {
            eprintln!("ensemble child {}: {message}", std::process::id());
            EXIT_BOOTSTRAP_FAILED
        }
    };
    std::process::exit(code);
}

fn bootstrap() -> Result<i32, String> {
    IS_CHILD.store(true, Ordering::Relaxed);
    let parent: u32 = env_value(ENV_PARENT)?.parse().map_err(|_| "bad parent pid".to_owned())?;
    let name = env_value(ENV_NAME)?;
    let cpu = std::env::var(ENV_CPU).ok();
    let stderr_is_terminal = std::env::var(ENV_TERMINAL).is_ok_and(|v| v == "1");
    let limits =
        Limits { max_message: env_number(ENV_MAX_MESSAGE)?.unwrap_or(Limits::default().max_message) };
    let send_queue = env_number(ENV_SEND_QUEUE)?.unwrap_or(crate::spawn::DEFAULT_SEND_QUEUE);
    for key in [ENV_BOOTSTRAP, ENV_PARENT, ENV_NAME, ENV_CPU, ENV_TERMINAL, ENV_MAX_MESSAGE, ENV_SEND_QUEUE] {
        // Still single-threaded (we run before main): removing variables is sound, and keeps
        // our own children from mistaking themselves for this process's bootstrap.
        std::env::remove_var(key);
    }
    sys::die_with_parent(parent).map_err(|e| format!("parent check failed: {e}"))?;
    let _ = sys::ignore_signal(libc::SIGPIPE);
    let _ = sys::ignore_signal(libc::SIGINT);
    sys::raise_nofile_limit();
    sys::set_thread_name(&name);
    if let Some(cpu) = cpu {
        let cpu: usize = cpu.parse().map_err(|_| format!("bad cpu {cpu:?}"))?;
        sys::pin_to_cpu(cpu).map_err(|e| format!("cannot pin to cpu {cpu}: {e}"))?;
    }
    let link = Arc::new(Link::new(connection()?, limits, send_queue));
    // The parent may open a fast lane; only a child's end takes an offer.
    link.accept_lane_offers();
    let mut hello = link.frame_buf();
    std::io::Write::write_all(&mut hello, &crate::spawn::encode_hello()).map_err(|e| e.to_string())?;
    link.send(hello, Vec::new(), Admission::Control).map_err(|e| format!("cannot send the hello: {e}"))?;
    let start = next_frame(&link)?;
    let (header, state) = wire::decode::<ToChild>(&start.bytes).map_err(|e| e.to_string())?;
    let ToChild::Start { actor, name } = header else {
        return Err(format!("expected a start frame, got {header:?}"));
    };
    let state_at = start.bytes.len() - state.len();
    crate::introspect::serve_as_child(&name, &actor);
    let boot = ChildBoot { name, start, state_at, link, stderr_is_terminal };
    match ACTORS.iter().find(|entry| entry.key == actor) {
        Some(entry) => Ok((entry.run)(boot)),
        None => {
            let message = format!("no actor type {actor:?} is registered in this executable");
            boot.start_failed(&Failure::Error { message: message.clone() });
            Err(message)
        }
    }
}

/// Takes the connection the parent handed over as standard input, leaving `/dev/null` there.
fn connection() -> Result<OwnedFd, String> {
    let socket = socket::take_stdin().map_err(|e| format!("cannot take the connection from stdin: {e}"))?;
    if !socket::is_seqpacket(socket.as_fd()) {
        return Err(format!("{ENV_BOOTSTRAP} is set but standard input is not an ensemble connection"));
    }
    socket::set_nonblocking(socket.as_fd()).map_err(|e| e.to_string())?;
    Ok(socket)
}

/// Waits for the parent's next frame (the handshake runs before any reactor exists). A parent
/// that dies takes this process with it (parent-death signal).
fn next_frame(link: &Link) -> Result<Frame, String> {
    loop {
        match link.recv_now() {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(format!("no start frame: {e}")),
        }
        let _ = socket::wait_readable(&[link.socket()], Duration::from_secs(1));
    }
}

fn env_value(key: &str) -> Result<String, String> {
    std::env::var(key).map_err(|_| format!("{key} is missing from the environment"))
}

fn env_number(key: &str) -> Result<Option<usize>, String> {
    std::env::var(key).ok().map(|v| v.parse().map_err(|_| format!("bad {key} {v:?}"))).transpose()
}
