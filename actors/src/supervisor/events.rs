//! What a supervisor tells its subscribers: [`SupervisorEvent`]s, one line each, and the stream
//! of them.

use ensemble_runtime::ExitInfo;
use futures::channel::mpsc;
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// What happened to a supervised child. Each event is also logged through `tracing`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A child was started for the first time.
    Started {
        /// The child's name.
        child: String,
        /// Its pid.
        pid: u32,
    },
    /// A child's process exited on its own (or was killed by someone else).
    Exited {
        /// The child's name.
        child: String,
        /// How it ended.
        exit: ExitInfo,
    },
    /// A child was started again.
    Restarted {
        /// The child's name.
        child: String,
        /// The new pid.
        pid: u32,
        /// How many times this child has been restarted.
        restarts: u32,
    },
    /// Starting a child again failed.
    StartFailed {
        /// The child's name.
        child: String,
        /// Why.
        error: String,
    },
    /// The supervisor stopped a child (shutdown, or its group was restarted).
    Stopped {
        /// The child's name.
        child: String,
        /// How it ended.
        exit: ExitInfo,
    },
    /// The restart intensity was exceeded; every child was stopped.
    GaveUp {
        /// The child whose exit was one too many.
        child: String,
        /// The intensity's `max_restarts`.
        restarts: u32,
        /// The intensity's window.
        within: Duration,
    },
}

/// One line per event, e.g. `worker restarted as pid 4242 (restart 3)`. An exit is told by its
/// code or signal; the tail of the child's stderr, which a terminal showed already, is left to
/// [`ExitInfo::stderr_tail`] (and to `ExitInfo`'s own Display).
impl std::fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorEvent::Started { child, pid } => write!(f, "{child} started as pid {pid}"),
            SupervisorEvent::Exited { child, exit } => write!(f, "{child} exited: {}", Ended(exit)),
            SupervisorEvent::Restarted { child, pid, restarts } => {
                write!(f, "{child} restarted as pid {pid} (restart {restarts})")
            }
            SupervisorEvent::StartFailed { child, error } => {
                write!(f, "{child} could not be started again: {error}")
            }
            SupervisorEvent::Stopped { child, exit } => write!(f, "{child} stopped: {}", Ended(exit)),
            SupervisorEvent::GaveUp { child, restarts, within } => write!(
                f,
                "{child} exited once more than {restarts} restarts within {within:?} allow: the supervisor gave up"
            ),
        }
    }
}

/// How a process ended, in one line: its code or its signal.
struct Ended<'a>(&'a ExitInfo);

impl std::fmt::Display for Ended<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ExitInfo { pid, status, .. } = self.0;
        match (status.code(), self.0.signal()) {
            (Some(code), _) => write!(f, "process {pid} exited with code {code}"),
            (None, Some(sig)) => {
                write!(f, "process {pid} was killed by signal {sig} ({})", ensemble_runtime::signal_name(sig))
            }
            _ => write!(f, "process {pid} ended: {status}"),
        }
    }
}

impl SupervisorEvent {
    pub(super) fn log(&self) {
        match self {
            SupervisorEvent::Started { child, pid } => tracing::info!(child, pid, "started"),
            SupervisorEvent::Exited { child, exit } => tracing::warn!(child, "exited: {exit}"),
            SupervisorEvent::Restarted { child, pid, restarts } => {
                tracing::info!(child, pid, restarts, "restarted")
            }
            SupervisorEvent::StartFailed { child, error } => {
                tracing::error!(child, "restart failed: {error}")
            }
            SupervisorEvent::Stopped { child, exit } => tracing::info!(child, "stopped: {exit}"),
            SupervisorEvent::GaveUp { child, restarts, within } => {
                tracing::error!(child, "more than {restarts} restarts within {within:?}: giving up")
            }
        }
    }
}

/// A stream of [`SupervisorEvent`]s. Ends when the supervisor actor is gone.
#[derive(Debug)]
pub struct SupervisorEvents {
    pub(super) rx: mpsc::UnboundedReceiver<SupervisorEvent>,
}

impl Stream for SupervisorEvents {
    type Item = SupervisorEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SupervisorEvent>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::SupervisorEvent;
    use ensemble_runtime::ExitInfo;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::time::Duration;

    fn check(event: SupervisorEvent, expected: &str) {
        assert_eq!(event.to_string(), expected);
    }

    fn exit(wait_status: i32) -> ExitInfo {
        let stderr_tail = String::from("already shown on the terminal\n");
        ExitInfo { pid: 7, status: ExitStatus::from_raw(wait_status), stderr_tail }
    }

    #[test]
    fn events_display_as_one_line_each() {
        let child = || String::from("flaky");
        check(SupervisorEvent::Started { child: child(), pid: 7 }, "flaky started as pid 7");
        check(
            SupervisorEvent::Exited { child: child(), exit: exit(6) }, // the wait status of SIGABRT
            "flaky exited: process 7 was killed by signal 6 (SIGABRT)",
        );
        check(
            SupervisorEvent::Restarted { child: child(), pid: 8, restarts: 2 },
            "flaky restarted as pid 8 (restart 2)",
        );
        check(
            SupervisorEvent::StartFailed { child: child(), error: "no memory".into() },
            "flaky could not be started again: no memory",
        );
        check(
            SupervisorEvent::Stopped { child: child(), exit: exit(0) },
            "flaky stopped: process 7 exited with code 0",
        );
        check(
            SupervisorEvent::GaveUp { child: child(), restarts: 3, within: Duration::from_secs(5) },
            "flaky exited once more than 3 restarts within 5s allow: the supervisor gave up",
        );
    }
}
