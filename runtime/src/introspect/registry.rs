//! The process-wide registries the endpoint reads: this process's identity, a record per live
//! child, and the providers through which the layers above (supervisors) add what they know.
//!
//! A [`ChildRecord`] is made with its `ChildProcess` and marked exited when that is reaped; the
//! registry forgets exited records the next time it is read or written, so it never holds more
//! than the live children plus those reaped since. Nothing here holds a `ChildProcess`: reading
//! the registry can never be what keeps a child alive, or what drops (kills) one.

use super::counters::CallCounters;
use super::{ActorState, Answer, ChildInfo, ProcessInfo, Role, Supervision};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

/// A way to stop one child in order: the connection to it (its `Stop` frame).
pub trait StopChild: Send + Sync {
    /// Asks the child to finish its calls, run `post_run` and exit. False when it had exited.
    fn request_stop(&self) -> bool;
}

/// What a layer above the runtime knows about this process's children (its supervisors).
pub trait Provider: Send + Sync {
    /// The supervision of child `pid`, if one of this provider's supervisors runs it.
    fn supervision(&self, pid: u32) -> Option<Supervision>;
    /// Stops child `pid` if this provider runs it: `None` when it does not, else what was done
    /// or why it could not be.
    fn stop(&self, pid: u32) -> Option<Result<String, String>>;
}

/// What the runtime knows about one child: identity, state, and the calls made to it.
pub struct ChildRecord {
    pid: u32,
    name: String,
    actor: String,
    started: Instant,
    state: AtomicU8,
    calls: CallCounters,
    stopper: Mutex<Option<Weak<dyn StopChild>>>,
}

static CHILDREN: Mutex<Vec<Arc<ChildRecord>>> = Mutex::new(Vec::new());
static PROVIDERS: Mutex<Vec<&'static dyn Provider>> = Mutex::new(Vec::new());

impl ChildRecord {
    /// Makes the record of a child just launched (state `Starting`) and registers it.
    pub(crate) fn register(pid: u32, name: &str, actor: &str) -> Arc<ChildRecord> {
        let record = Arc::new(ChildRecord {
            pid,
            name: name.to_owned(),
            actor: actor.to_owned(),
            started: Instant::now(),
            state: AtomicU8::new(ActorState::Starting as u8),
            calls: CallCounters::default(),
            stopper: Mutex::new(None),
        });
        let mut children = lock(&CHILDREN);
        children.retain(|c| c.state() != ActorState::Exited);
        children.push(Arc::clone(&record));
        record
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The actor type's registry key.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The counters of the calls made to this child, for the actors layer to bump.
    pub fn calls(&self) -> &CallCounters {
        &self.calls
    }

    /// Where the child is in its life.
    pub fn state(&self) -> ActorState {
        match self.state.load(Ordering::Relaxed) {
            0 => ActorState::Starting,
            1 => ActorState::Running,
            2 => ActorState::Stopping,
            _ => ActorState::Exited,
        }
    }

    /// Moves the child on in its life (never back from `Exited`).
    pub(crate) fn set_state(&self, state: ActorState) {
        let _ = self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
            (now != ActorState::Exited as u8).then_some(state as u8)
        });
    }

    /// Names the connection that can stop this child in order.
    pub(crate) fn set_stopper(&self, stopper: Weak<dyn StopChild>) {
        *lock(&self.stopper) = Some(stopper);
    }

    fn info(&self) -> ChildInfo {
        ChildInfo {
            pid: self.pid,
            name: self.name.clone(),
            actor: self.actor.clone(),
            state: self.state(),
            uptime_ms: millis(self.started.elapsed()),
            calls: self.calls.stats(),
            supervision: providers().iter().find_map(|p| p.supervision(self.pid)),
        }
    }
}

impl std::fmt::Debug for ChildRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildRecord")
            .field("pid", &self.pid)
            .field("name", &self.name)
            .field("actor", &self.actor)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Adds a provider (once per provider: the actors layer registers its supervisors' on first use).
pub fn add_provider(provider: &'static dyn Provider) {
    lock(&PROVIDERS).push(provider);
}

/// Who this process is.
struct Identity {
    role: Role,
    name: String,
    actor: Option<String>,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();

/// Records this process's identity; the first caller wins (a child records its own at boot,
/// before anything could call it a root).
pub(super) fn set_identity(role: Role, name: String, actor: Option<String>) {
    let _ = IDENTITY.set(Identity { role, name, actor });
}

/// What this process would answer to `info`, without going through the endpoint.
pub fn snapshot() -> ProcessInfo {
    let identity = IDENTITY.get_or_init(|| Identity { role: Role::Root, name: root_name(), actor: None });
    let children =
        lock(&CHILDREN).iter().filter(|c| c.state() != ActorState::Exited).cloned().collect::<Vec<_>>();
    ProcessInfo {
        pid: std::process::id(),
        ppid: std::os::unix::process::parent_id(),
        name: identity.name.clone(),
        role: identity.role,
        actor: identity.actor.clone(),
        uptime_ms: process_uptime_ms(),
        children: children.iter().map(|c| c.info()).collect(),
        segments: super::segments::held().unwrap_or_default(),
    }
}

/// Stops child `pid` in order: through the supervisor that runs it (which then does not
/// restart it), else through its connection.
pub(super) fn stop(pid: u32) -> Answer {
    if let Some(done) = providers().iter().find_map(|p| p.stop(pid)) {
        return match done {
            Ok(how) => Answer::Stopping { pid, how },
            Err(message) => Answer::Error { message },
        };
    }
    let record = lock(&CHILDREN).iter().find(|c| c.pid == pid && c.state() != ActorState::Exited).cloned();
    let Some(record) = record else {
        return Answer::Error {
            message: format!("process {pid} is not a live child of {}", std::process::id()),
        };
    };
    let stopper = lock(&record.stopper).as_ref().and_then(Weak::upgrade);
    match stopper {
        Some(stopper) if stopper.request_stop() => {
            Answer::Stopping { pid, how: "asked to stop (post_run runs); not supervised".into() }
        }
        _ => Answer::Error { message: format!("process {pid} has no connection to stop it through") },
    }
}

fn providers() -> Vec<&'static dyn Provider> {
    lock(&PROVIDERS).clone()
}

fn root_name() -> String {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let path = std::path::Path::new(&argv0);
    path.file_name().unwrap_or(argv0.as_os_str()).to_string_lossy().into_owned()
}

/// This process's age from the kernel's start time (`/proc/self/stat`, in clock ticks of
/// `USER_HZ`, which is 100 on every Linux ABI) against the system's uptime.
fn process_uptime_ms() -> u64 {
    static FALLBACK: OnceLock<Instant> = OnceLock::new();
    let from_proc = || -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        let start_ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
        let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
        let uptime_s: f64 = uptime.split_whitespace().next()?.parse().ok()?;
        Some(((uptime_s * 1000.0) as u64).saturating_sub(start_ticks * 10))
    };
    from_proc().unwrap_or_else(|| millis(FALLBACK.get_or_init(Instant::now).elapsed()))
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_children_are_forgotten_and_states_never_leave_exited() {
        let record = ChildRecord::register(u32::MAX - 7, "probe", "tests::Probe");
        record.set_state(ActorState::Running);
        assert!(snapshot().children.iter().any(|c| c.pid == u32::MAX - 7 && c.state == ActorState::Running));
        record.set_state(ActorState::Exited);
        record.set_state(ActorState::Running);
        assert_eq!(record.state(), ActorState::Exited);
        assert!(!snapshot().children.iter().any(|c| c.pid == u32::MAX - 7));
    }

    #[test]
    fn stopping_an_unknown_pid_is_an_error() {
        assert!(matches!(stop(u32::MAX - 8), Answer::Error { .. }));
    }

    #[test]
    fn this_process_reports_a_plausible_uptime() {
        let info = snapshot();
        assert_eq!(info.pid, std::process::id());
        assert!(info.uptime_ms < 24 * 3600 * 1000, "{}", info.uptime_ms);
    }
}
