//! The actors of ensemble, on actix: a process actor's frontend ([`Remote`]) in the parent and
//! its backend in the child.
//!
//! Users depend on the `ensemble` crate, which re-exports this one; see its docs for the whole
//! picture.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod actor;
mod backend;
mod context;
mod dispatch;
mod error;
pub mod farm;
mod message;
mod meter;
mod remote;
pub mod supervisor;

pub use actor::{AsyncProcessHandler, Handles, HookError, Hooks, ProcessActor, ProcessHandler};
pub use context::{ProcessContext, SendOutError};
/// The shape of a fast lane's rings and what it counted (see [`SpawnOptions::fast_lane`]).
pub use ensemble_runtime::transport::{LaneConfig, LaneStats};
pub use error::{CallError, EventError, StopError};
pub use farm::{Farm, FarmConfig, TaskError};
pub use message::{NoEvents, RemoteMessage};
pub use remote::{spawn, spawn_with, Call, Events, Remote, SpawnOptions};
pub use supervisor::{Supervised, Supervisor, SupervisorHandle};

pub use backend::EXIT_START_FAILED;

#[doc(hidden)]
pub mod __private {
    pub use crate::actor::{assert_hooks, HookProbe, NoHooks, RunHooks, UserHooks};
    pub use crate::backend::run_child;
    pub use crate::dispatch::{async_entry, sync_entry, AsyncEntry, Delivery, Dispatch, Outcome, SyncEntry};
    pub use crate::farm::worker::batch_entry;
    pub use crate::message::NotAMessage;
}

#[cfg(test)]
mod layering {
    /// The modules below the supervisor and the farm, with their sources.
    const LOWER: &[(&str, &str)] = &[
        ("message.rs", include_str!("message.rs")),
        ("actor.rs", include_str!("actor.rs")),
        ("context.rs", include_str!("context.rs")),
        ("dispatch.rs", include_str!("dispatch.rs")),
        ("backend.rs", include_str!("backend.rs")),
        ("remote.rs", include_str!("remote.rs")),
        ("meter.rs", include_str!("meter.rs")),
        ("error.rs", include_str!("error.rs")),
    ];

    #[test]
    fn no_module_below_the_supervisor_or_the_farm_names_them() {
        for (file, source) in LOWER {
            for (n, line) in source.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue; // doc links may point anywhere
                }
                let upward = line.contains("crate::supervisor") || line.contains("crate::farm");
                assert!(!upward, "{file}:{}: names a layer above it: {}", n + 1, line.trim());
            }
        }
    }
}
