//! Why a supervisor did not end cleanly.

use ensemble_runtime::SpawnError;
use std::time::Duration;

/// Why a supervisor did not end cleanly.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SupervisorError {
    /// More restarts than the intensity allows; every child was stopped.
    #[error(
        "child {child:?} needed more than {restarts} restarts within {within:?}; the supervisor gave up"
    )]
    GaveUp {
        /// The child whose exit was one too many.
        child: String,
        /// The intensity's `max_restarts`.
        restarts: u32,
        /// The intensity's window.
        within: Duration,
    },
    /// A child could not be started when the supervisor started.
    #[error("child {child:?} could not be started")]
    Start {
        /// The child's name.
        child: String,
        /// Why: match on it (`SpawnError::BuildMismatch`, `SpawnError::Start`, ...) through
        /// the `Arc`.
        #[source]
        error: std::sync::Arc<SpawnError>,
    },
    /// The supervisor actor is gone (its actix system stopped).
    #[error("the supervisor is gone")]
    Gone,
    /// Installing the signal handlers failed.
    #[error("could not install the signal handlers")]
    Signals(#[source] std::sync::Arc<std::io::Error>),
}
