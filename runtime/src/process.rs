//! A started child process: its pid, its stderr tail, and the one place where it is killed and
//! reaped.
//!
//! Invariants:
//! - The `Child` sits in a mutex together with its exit status. It is reaped (`try_wait`) and
//!   signalled (`kill`) only under that mutex, and never signalled after it was reaped, so a
//!   signal can never reach an unrelated process that reused the pid.
//! - Every `ChildProcess` is reaped: [`ChildProcess::reap`] is called by whoever sees the child's
//!   channel close, and `Drop` kills and reaps a child nobody reaped.

use crate::introspect::{ActorState, ChildRecord};
use crate::stderr_tail::StderrTail;
use crate::sys;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a child process ended, with what it last wrote to stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// The child's pid.
    pub pid: u32,
    /// The status `waitpid` reported.
    pub status: ExitStatus,
    /// The last few kilobytes the child wrote to stderr (lossy UTF-8).
    pub stderr_tail: String,
}

impl ExitInfo {
    /// The exit code, when the process exited rather than being killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The signal that killed the process, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    /// Whether the process exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => write!(f, "process {} exited with code {code}", self.pid)?,
            (None, Some(sig)) => {
                write!(f, "process {} was killed by signal {sig} ({})", self.pid, signal_name(sig))?
            }
            _ => write!(f, "process {} ended: {}", self.pid, self.status)?,
        }
        let tail = self.stderr_tail.trim_end();
        if !tail.is_empty() {
            write!(f, "; its stderr ended with:\n{tail}")?;
        }
        Ok(())
    }
}

/// Whether process `pid` (a child not reaped yet, so the number is still its own) is exiting:
/// the kernel's `PF_EXITING` flag in `/proc/PID/stat`, set once it entered `exit` (while its
/// mappings are torn down), or already a zombie. False when it cannot be read.
pub(crate) fn is_exiting(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // Fields after the command (which may hold spaces, so after its closing parenthesis):
    // state, ppid, pgrp, session, tty_nr, tpgid, flags.
    let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else { return false };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = matches!(fields.first(), Some(&"Z" | &"X"));
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    zombie || flags & PF_EXITING != 0
}

/// The conventional name of a signal number.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

static LIVE: Mutex<usize> = Mutex::new(0);
static WAITED_FOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Declares that this process will call [`wait_for_children`] before it exits
/// (`#[ensemble::main]` does), so that children whose last handle was dropped finish `post_run`.
pub fn will_wait_for_children() {
    WAITED_FOR.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Warns, once per process, that a child asked to stop may be killed without `post_run` when
/// nothing waits for it before this process exits.
pub(crate) fn warn_unless_waited_for(name: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if !WAITED_FOR.load(std::sync::atomic::Ordering::Relaxed) {
        WARNED.call_once(|| {
            tracing::warn!(
                "the last handle of {name} was dropped and nothing waits for children before this process \
                 exits: if it exits first, the child is killed without post_run. Use #[ensemble::main], \
                 stop() the actor, or call ensemble::runtime::wait_for_children before exiting"
            );
        });
    }
}
static LIVE_CHANGED: Condvar = Condvar::new();

/// How many children of this process are being started or have been started and not reaped
/// yet.
pub fn live_children() -> usize {
    *LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Blocks until every child of this process was reaped, or `timeout` passes. Returns how many
/// are still unreaped.
///
/// Handles that are dropped ask their child to stop in the background; call this before the
/// program exits so that those children finish `post_run` instead of being killed with their
/// parent.
pub fn wait_for_children(timeout: Duration) -> usize {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let (live, _) =
        LIVE_CHANGED.wait_timeout_while(live, timeout, |n| *n > 0).unwrap_or_else(|e| e.into_inner());
    *live
}

fn count_live(delta: isize) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    *live = live.saturating_add_signed(delta);
    LIVE_CHANGED.notify_all();
}

/// A child about to be launched, counted as live from before `fork` until a [`ChildProcess`]
/// takes the count over (or the launch fails), so that [`wait_for_children`] never returns
/// while a spawn is under way and its child could outlive the wait.
#[derive(Debug)]
pub(crate) struct Launching(());

impl Launching {
    pub(crate) fn new() -> Launching {
        count_live(1);
        Launching(())
    }
}

impl Drop for Launching {
    fn drop(&mut self) {
        count_live(-1);
    }
}

/// A child process started by [`crate::spawn`], owned by the parent until it is reaped.
pub struct ChildProcess {
    pid: u32,
    /// Readable once the child has exited: how its end is noticed, never by a read of 0.
    pidfd: OwnedFd,
    name: String,
    /// What `ensemble ps` is told about it.
    record: Arc<ChildRecord>,
    state: Mutex<State>,
    exited: Condvar,
    stderr: StderrTail,
}

struct State {
    child: Child,
    exit: Option<ExitInfo>,
}

impl ChildProcess {
    /// Takes over a started child (running actor type `actor`) and the count of `launching`.
    /// On error (no pidfd) the child is killed and reaped.
    pub(crate) fn new(
        mut child: Child,
        name: String,
        actor: &str,
        stderr: StderrTail,
        launching: Launching,
    ) -> std::io::Result<ChildProcess> {
        let pidfd = match sys::pidfd_open(child.id()) {
            Ok(pidfd) => pidfd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        std::mem::forget(launching); // its count is ours now
        Ok(ChildProcess {
            pid: child.id(),
            pidfd,
            record: ChildRecord::register(child.id(), &name, actor),
            name,
            state: Mutex::new(State { child, exit: None }),
            exited: Condvar::new(),
            stderr,
        })
    }

    /// A descriptor that becomes readable when the child exits.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name the child was given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the runtime's introspection knows of the child: state, call counters.
    pub fn record(&self) -> &Arc<ChildRecord> {
        &self.record
    }

    /// How the child ended, if it was reaped already.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.lock().exit.clone()
    }

    /// The last bytes the child wrote to stderr so far.
    pub fn stderr_tail(&self) -> String {
        self.stderr.snapshot()
    }

    /// Sends `signal` to the child unless it was reaped already. Returns whether it was sent.
    pub fn signal(&self, signal: sys::Signal) -> bool {
        let state = self.lock();
        state.exit.is_none() && sys::kill(self.pid, signal).is_ok()
    }

    /// Kills the child with `SIGKILL` unless it was reaped already.
    pub fn kill(&self) -> bool {
        self.signal(libc::SIGKILL)
    }

    /// Waits until the child has exited and reaps it, killing it once `grace` has passed.
    ///
    /// Call this when the child's channel has closed: the child is exiting, so the wait is
    /// short. Returns how it ended; every later call returns the same.
    pub fn reap(&self, grace: Duration) -> ExitInfo {
        let deadline = Instant::now() + grace;
        let mut killed = false;
        loop {
            if let Some(info) = self.try_reap() {
                return info;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !killed && left.is_zero() {
                killed = self.kill();
            }
            let wait = if killed { Duration::from_millis(100) } else { left };
            let _ = sys::socket::wait_readable(&[self.pidfd.as_fd()], wait);
        }
    }

    /// Reaps the child if it has exited. Never blocks.
    pub fn try_reap(&self) -> Option<ExitInfo> {
        let mut state = self.lock();
        if let Some(info) = &state.exit {
            return Some(info.clone());
        }
        let status = match state.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            // ECHILD: someone else reaped it (e.g. SIGCHLD set to SIG_IGN); report a kill.
            Err(_) => ExitStatus::from_raw(libc::SIGKILL),
        };
        drop(state.child.stdin.take());
        let info = ExitInfo { pid: self.pid, status, stderr_tail: self.stderr.finish() };
        tracing::debug!(pid = self.pid, name = %self.name, "{info}");
        state.exit = Some(info.clone());
        self.record.set_state(ActorState::Exited);
        self.exited.notify_all();
        count_live(-1);
        Some(info)
    }

    /// Blocks until the child was reaped by someone, or `timeout` passes.
    pub fn wait_reaped(&self, timeout: Duration) -> Option<ExitInfo> {
        let state = self.lock();
        let (state, _) = self
            .exited
            .wait_timeout_while(state, timeout, |s| s.exit.is_none())
            .unwrap_or_else(|e| e.into_inner());
        state.exit.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.try_reap().is_none() {
            self.kill();
            self.reap(Duration::ZERO);
        }
    }
}

impl AsFd for ChildProcess {
    /// The pidfd.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

impl fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildProcess").field("pid", &self.pid).field("name", &self.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::is_exiting;

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain child, to look at in /proc
    fn a_living_child_is_not_exiting_and_a_zombie_is() {
        let mut child = std::process::Command::new("/bin/sleep").arg("10").spawn().unwrap();
        assert!(!is_exiting(child.id()), "a sleeping child is not exiting");
        child.kill().unwrap();
        // Killed but not reaped: a zombie, until `wait`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_exiting(child.id()) {
            assert!(std::time::Instant::now() < deadline, "the killed child never looked exiting");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.wait().unwrap();
        assert!(!is_exiting(u32::MAX), "no such process: not exiting");
    }
}
