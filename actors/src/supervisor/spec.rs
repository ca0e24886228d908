//! How a supervisor treats its children: restart policies, strategies, intensity, backoff, and
//! the spec of one child.

use crate::actor::ProcessActor;
use crate::remote::SpawnOptions;
use std::sync::Arc;
use std::time::Duration;

/// When a child that exited is started again (Erlang/OTP's restart types).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted, whatever its exit status.
    #[default]
    Permanent,
    /// Restarted only after an abnormal exit (non-zero code or a signal).
    Transient,
    /// Never restarted; its handle reports the exit.
    Temporary,
}

/// Which children restart when one exits and must be restarted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that exited.
    #[default]
    OneForOne,
    /// Every child: the others are stopped (in reverse start order), then all start again in order.
    OneForAll,
    /// The child that exited and those started after it.
    RestForOne,
}

/// At most `max_restarts` restarts within `within`; one more and the supervisor gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed in the window.
    pub max_restarts: u32,
    /// The sliding window.
    pub within: Duration,
}

impl Default for Intensity {
    /// 3 restarts within 5 seconds.
    fn default() -> Self {
        Intensity { max_restarts: 3, within: Duration::from_secs(5) }
    }
}

/// A pause before a restart that doubles with each restart still in the intensity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The pause before the first restart.
    pub initial: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Backoff {
    /// The pause before restart number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

/// What calls through a [`Supervised`](crate::Supervised) handle do while its child is down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhileDown {
    /// Wait for the next incarnation (bound the wait with the call's timeout).
    #[default]
    Wait,
    /// Fail at once with [`CallError::Down`](crate::CallError::Down).
    Fail,
}

/// In what order a supervisor stops its children when it shuts down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopOrder {
    /// One at a time, in reverse start order, each after the one started after it has exited
    /// (Erlang/OTP's order: a child may depend on those started before it).
    #[default]
    ReverseStart,
    /// All at once: for children that do not depend on each other, such as a farm's workers.
    /// Their teardowns (unmapping large arrays, ~35 ms per GiB each) overlap.
    Concurrent,
}

/// When a stop of children (at shutdown, or when a supervisor gives up) is done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reap {
    /// Once every child stopped has exited and was reaped; its `Stopped` event comes before.
    #[default]
    BeforeReturning,
    /// Once every child stopped has run `post_run` and closed its connection (every reply,
    /// event and log line it sent is in). The kernel's teardown of each child's memory (about
    /// 35 ms per GiB it mapped) and its reaping go on in the background: no child is left
    /// unreaped, its `Stopped` event comes when it exits, and `#[ensemble::main]` waits for
    /// it before the program ends. A farm's workers stop this way.
    InBackground,
}

/// The group settings of a supervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Which children restart together.
    pub strategy: Strategy,
    /// When to give up.
    pub intensity: Intensity,
    /// Pause before restarts; none by default.
    pub backoff: Option<Backoff>,
    /// How the children stop at shutdown. Default: [`StopOrder::ReverseStart`].
    pub stop_order: StopOrder,
    /// Whether a shutdown waits for its children's exits. Default: [`Reap::BeforeReturning`].
    pub reap: Reap,
}

/// One supervised child: how to build its initial state, and how to treat it.
///
/// # Examples
/// ```
/// # use ensemble::prelude::*;
/// # #[derive(Serialize, Deserialize, ProcessActor)] struct Worker { id: u32 }
/// use ensemble::supervisor::{ChildSpec, Restart, WhileDown};
/// use std::time::Duration;
///
/// let spec = ChildSpec::new("worker-1", || Worker { id: 1 })
///     .restart(Restart::Transient)
///     .while_down(WhileDown::Fail)
///     .shutdown_timeout(Duration::from_secs(2));
/// assert_eq!(spec.name(), "worker-1");
/// ```
pub struct ChildSpec<A: ProcessActor> {
    pub(crate) name: String,
    pub(crate) factory: Arc<dyn Fn() -> A + Send + Sync>,
    pub(crate) restart: Restart,
    pub(crate) while_down: WhileDown,
    pub(crate) options: SpawnOptions,
}

impl<A: ProcessActor> std::fmt::Debug for ChildSpec<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("while_down", &self.while_down)
            .finish_non_exhaustive()
    }
}

impl<A: ProcessActor> ChildSpec<A> {
    /// A permanent child named `name` whose every incarnation starts from `factory()`.
    pub fn new(name: impl Into<String>, factory: impl Fn() -> A + Send + Sync + 'static) -> Self {
        let name = name.into();
        ChildSpec {
            options: SpawnOptions::new().name(name.clone()),
            name,
            factory: Arc::new(factory),
            restart: Restart::Permanent,
            while_down: WhileDown::Wait,
        }
    }

    /// Sets the restart policy.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets what calls do while the child is down.
    pub fn while_down(mut self, while_down: WhileDown) -> Self {
        self.while_down = while_down;
        self
    }

    /// Sets the graceful-stop timeout, after which the child is killed.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.options.shutdown_timeout = timeout;
        self
    }

    /// Sets the spawn options (the name given to [`ChildSpec::new`] is kept unless they set one).
    pub fn options(mut self, options: SpawnOptions) -> Self {
        let name = options.name.clone().unwrap_or_else(|| self.name.clone());
        self.options = options.name(name);
        self
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let backoff = Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(50) };
        let delays: Vec<_> = (1..=5).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 50, 50]);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) };
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(60));
    }
}
