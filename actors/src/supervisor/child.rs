//! Type erasure of supervised children, so that one supervisor holds actors of many types.

use crate::actor::ProcessActor;
use crate::remote::{spawn_with, Remote};
use crate::supervisor::slot::SlotState;
use crate::supervisor::spec::{ChildSpec, Restart};
use ensemble_runtime::{ExitInfo, SpawnError};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::Arc;
use tokio::sync::watch;

/// A child spec and the slot its handles watch, with the actor type erased.
pub(crate) trait Child: Send + Sync {
    fn name(&self) -> &str;
    /// The actor type's registry key.
    fn actor(&self) -> &'static str;
    fn restart(&self) -> Restart;
    /// Spawns a new incarnation from the factory and makes it the one the handles call.
    fn start(&self) -> BoxFuture<'static, Result<Arc<dyn Incarnation>, SpawnError>>;
    /// The child is down: handles wait or fail, by its `WhileDown`.
    fn mark_down(&self);
    /// The child is not coming back.
    fn mark_gone(&self, exit: Option<ExitInfo>);
}

/// One running process of a child.
pub(crate) trait Incarnation: Send + Sync {
    fn pid(&self) -> u32;
    /// Resolves when the process has exited, however.
    fn exited(&self) -> BoxFuture<'static, ExitInfo>;
    /// Stops it gracefully, kills it after its shutdown timeout, and resolves to how it ended.
    fn stop(&self) -> BoxFuture<'static, ExitInfo>;
    /// As `stop`, but resolves once the child has closed its connection after `post_run`,
    /// before its exit (see [`Reap::InBackground`](crate::supervisor::Reap::InBackground)).
    fn stop_until_closed(&self) -> BoxFuture<'static, ()>;
}

pub(crate) struct TypedChild<A: ProcessActor> {
    pub(crate) spec: ChildSpec<A>,
    pub(crate) slot: Arc<watch::Sender<SlotState<A>>>,
}

impl<A: ProcessActor> Child for TypedChild<A> {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn actor(&self) -> &'static str {
        A::KEY
    }

    fn restart(&self) -> Restart {
        self.spec.restart
    }

    fn start(&self) -> BoxFuture<'static, Result<Arc<dyn Incarnation>, SpawnError>> {
        let state = (self.spec.factory)();
        let options = self.spec.options.clone();
        let slot = Arc::clone(&self.slot);
        async move {
            let remote = spawn_with(state, options).await?;
            slot.send_replace(SlotState::Up(remote.clone()));
            Ok(Arc::new(remote) as Arc<dyn Incarnation>)
        }
        .boxed()
    }

    fn mark_down(&self) {
        self.slot.send_replace(SlotState::Down);
    }

    fn mark_gone(&self, exit: Option<ExitInfo>) {
        self.slot.send_replace(SlotState::Gone(exit));
    }
}

impl<A: ProcessActor> Incarnation for Remote<A> {
    fn pid(&self) -> u32 {
        Remote::pid(self)
    }

    fn exited(&self) -> BoxFuture<'static, ExitInfo> {
        let remote = self.clone();
        async move { remote.exited().await }.boxed()
    }

    fn stop(&self) -> BoxFuture<'static, ExitInfo> {
        let remote = self.clone();
        async move {
            let _ = remote.stop().await;
            remote.exited().await
        }
        .boxed()
    }

    fn stop_until_closed(&self) -> BoxFuture<'static, ()> {
        let remote = self.clone();
        async move { remote.stop_until_closed().await }.boxed()
    }
}
