//! The child side of the handshake, and the registry of actor types a child can run.
//!
//! A re-executed process finds the bootstrap variables in its environment before `main` runs
//! (see `sys/hook.rs`), connects to its parent, and hands control to the entry registered for
//! the requested actor type. It never returns into the program's own `main`.

use crate::build::{BuildId, PROTOCOL_VERSION};
use crate::spawn::{Bootstrap, Hello, ENV_BOOTSTRAP, ENV_CPU, ENV_NAME, ENV_PARENT, ENV_TERMINAL};
use crate::sys;
use crate::wire::{self, Failure, ToChild, ToParent};
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcSender};
use linkme::distributed_slice;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// The encoded initial state of the actor.
    pub state: Vec<u8>,
    /// Frames from the parent. `Start` has been consumed already.
    pub from_parent: IpcBytesReceiver,
    /// Frames to the parent. The first must be `Ready` or `StartFailed`.
    pub to_parent: IpcBytesSender,
    /// Whether the parent's stderr, where ours ends up, is a terminal (for colored logs).
    pub stderr_is_terminal: bool,
}

impl std::fmt::Debug for ChildBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildBoot").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ChildBoot {
    /// Tells the parent that the actor could not start.
    pub fn start_failed(&self, failure: &Failure) {
        if let Ok(encoded) = wire::encode(&ToParent::StartFailed, failure) {
            let _ = self.to_parent.send(&encoded.frame);
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
    let Some(server) = std::env::var_os(ENV_BOOTSTRAP) else { return };
    let code = match bootstrap(&server.to_string_lossy()) {
        Ok(boot) => boot,
        Err(message) => {
            eprintln!("ensemble child {}: {message}", std::process::id());
            EXIT_BOOTSTRAP_FAILED
        }
    };
    std::process::exit(code);
}

fn bootstrap(server: &str) -> Result<i32, String> {
    IS_CHILD.store(true, Ordering::Relaxed);
    let parent: u32 = env_value(ENV_PARENT)?.parse().map_err(|_| "bad parent pid".to_owned())?;
    let name = env_value(ENV_NAME)?;
    let cpu = std::env::var(ENV_CPU).ok();
    let stderr_is_terminal = std::env::var(ENV_TERMINAL).is_ok_and(|v| v == "1");
    for key in [ENV_BOOTSTRAP, ENV_PARENT, ENV_NAME, ENV_CPU, ENV_TERMINAL] {
        // Still single-threaded (we run before main): removing variables is sound, and keeps
        // our own children from mistaking themselves for this process's bootstrap.
        std::env::remove_var(key);
    }
    sys::die_with_parent(parent).map_err(|e| format!("parent check failed: {e}"))?;
    let _ = sys::ignore_signal(libc::SIGPIPE);
    let _ = sys::ignore_signal(libc::SIGINT);
    sys::set_thread_name(&name);
    if let Some(cpu) = cpu {
        let cpu: usize = cpu.parse().map_err(|_| format!("bad cpu {cpu:?}"))?;
        sys::pin_to_cpu(cpu).map_err(|e| format!("cannot pin to cpu {cpu}: {e}"))?;
    }
    let (from_parent, to_parent) = connect(server)?;
    let frame = from_parent.recv().map_err(|e| format!("no start frame: {e}"))?;
    let (header, state) = wire::decode::<ToChild>(&frame).map_err(|e| e.to_string())?;
    let ToChild::Start { actor, name } = header else {
        return Err(format!("expected a start frame, got {header:?}"));
    };
    let boot = ChildBoot { name, state: state.to_vec(), from_parent, to_parent, stderr_is_terminal };
    match ACTORS.iter().find(|entry| entry.key == actor) {
        Some(entry) => Ok((entry.run)(boot)),
        None => {
            let message = format!("no actor type {actor:?} is registered in this executable");
            boot.start_failed(&Failure::Error { message: message.clone() });
            Err(message)
        }
    }
}

fn connect(server: &str) -> Result<(IpcBytesReceiver, IpcBytesSender), String> {
    let bootstrap = IpcSender::<Bootstrap>::connect(server.to_owned())
        .map_err(|e| format!("cannot connect to the parent: {e}"))?;
    let (to_child, from_parent) = ipc::bytes_channel().map_err(|e| e.to_string())?;
    let (to_parent, from_child) = ipc::bytes_channel().map_err(|e| e.to_string())?;
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        build: BuildId::current(),
        pid: std::process::id(),
        to_child,
        to_parent: from_child,
    };
    bootstrap.send(Bootstrap::Hello(Box::new(hello))).map_err(|e| format!("cannot send the hello: {e}"))?;
    Ok((from_parent, to_parent))
}

fn env_value(key: &str) -> Result<String, String> {
    std::env::var(key).map_err(|_| format!("{key} is missing from the environment"))
}
