//! The handle on a supervised child that survives its restarts.

use crate::actor::{Handles, ProcessActor};
use crate::error::CallError;
use crate::message::RemoteMessage;
use crate::remote::{Deadline, Remote};
use crate::supervisor::spec::WhileDown;
use ensemble_runtime::ExitInfo;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;

/// Where a supervised child is in its life, as its handles see it.
#[derive(Clone)]
pub(crate) enum SlotState<A: ProcessActor> {
    /// Not started yet, or being restarted.
    Down,
    /// The current incarnation.
    Up(Remote<A>),
    /// Not coming back: its last exit (none when the supervisor stopped it).
    Gone(Option<ExitInfo>),
}

/// A handle on a supervised child that stays valid across restarts.
///
/// Calls go to the current incarnation. While the child is down they wait for the next one or
/// fail with [`CallError::Down`], as its [`WhileDown`] says. Calls in flight when the child
/// dies fail with [`CallError::Exited`]; nothing is retried.
pub struct Supervised<A: ProcessActor> {
    name: Arc<str>,
    state: watch::Receiver<SlotState<A>>,
    while_down: WhileDown,
}

impl<A: ProcessActor> Supervised<A> {
    pub(crate) fn new(name: &str, while_down: WhileDown) -> (Supervised<A>, watch::Sender<SlotState<A>>) {
        let (tx, rx) = watch::channel(SlotState::Down);
        (Supervised { name: name.into(), state: rx, while_down }, tx)
    }

    /// Sends `msg` to the current incarnation and resolves to its reply. A message that could
    /// not be delivered because the incarnation was already exiting goes to the next one (as
    /// [`WhileDown`] says); a message delivered to an incarnation that then dies fails with
    /// [`CallError::Exited`]: it may have been handled, so it is never sent twice.
    ///
    /// # Errors
    /// As [`Remote::send`], plus [`CallError::Down`] while the child is down (with
    /// [`WhileDown::Fail`]) and [`CallError::Exited`] / [`CallError::Stopping`] once it is not
    /// coming back.
    pub fn send<M>(&self, msg: M) -> SupervisedCall<M>
    where
        A: Handles<M>,
        M: RemoteMessage,
    {
        // Sent at once when the child is up, like `Remote::send`; else when polled.
        let mut msg = msg;
        if let Some(remote) = self.remote() {
            match remote.send_or_return(msg) {
                Ok(call) => return SupervisedCall { future: call.boxed(), deadline: Deadline::default() },
                Err(back) => msg = back,
            }
        }
        let this = self.clone();
        let future = async move {
            loop {
                let remote = this.current().await?;
                match remote.send_or_return(msg) {
                    Ok(call) => return call.await,
                    // The incarnation was exiting: once it is known dead, the next one gets it.
                    Err(back) => {
                        msg = back;
                        remote.exited().await;
                    }
                }
            }
        }
        .boxed();
        SupervisedCall { future, deadline: Deadline::default() }
    }

    /// Sends `msg` to the current incarnation without waiting for the handler.
    ///
    /// # Errors
    /// [`CallError::Down`] while the child is down, whatever its [`WhileDown`]; otherwise as
    /// [`Remote::do_send`].
    pub fn do_send<M>(&self, msg: M) -> Result<(), CallError>
    where
        A: Handles<M>,
        M: RemoteMessage,
    {
        match &*self.state.borrow() {
            SlotState::Up(remote) if remote.exit_info().is_none() => remote.do_send(msg),
            SlotState::Up(_) | SlotState::Down => Err(CallError::Down),
            SlotState::Gone(exit) => Err(gone(exit)),
        }
    }

    /// The current incarnation, if the child is up.
    pub fn remote(&self) -> Option<Remote<A>> {
        match &*self.state.borrow() {
            SlotState::Up(remote) if remote.exit_info().is_none() => Some(remote.clone()),
            _ => None,
        }
    }

    /// Waits until the child is up and returns its current incarnation.
    ///
    /// # Errors
    /// [`CallError::Exited`] or [`CallError::Stopping`] when it is not coming back.
    pub async fn up(&self) -> Result<Remote<A>, CallError> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                // An incarnation known to be dead is down, even before the supervisor says so.
                SlotState::Up(remote) if remote.exit_info().is_none() => return Ok(remote.clone()),
                SlotState::Up(_) => {}
                SlotState::Gone(exit) => return Err(gone(exit)),
                SlotState::Down => {}
            }
            if state.changed().await.is_err() {
                return Err(CallError::Stopping);
            }
        }
    }

    /// The child's name in its supervisor.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn current(&self) -> impl Future<Output = Result<Remote<A>, CallError>> + Send + 'static {
        let this = self.clone();
        async move {
            match (&*this.state.borrow(), this.while_down) {
                (SlotState::Up(remote), _) if remote.exit_info().is_none() => return Ok(remote.clone()),
                (SlotState::Up(_), WhileDown::Fail) => return Err(CallError::Down),
                (SlotState::Up(_), WhileDown::Wait) => {}
                (SlotState::Gone(exit), _) => return Err(gone(exit)),
                (SlotState::Down, WhileDown::Fail) => return Err(CallError::Down),
                (SlotState::Down, WhileDown::Wait) => {}
            }
            this.up().await
        }
    }
}

fn gone(exit: &Option<ExitInfo>) -> CallError {
    exit.clone().map_or(CallError::Stopping, CallError::Exited)
}

impl<A: ProcessActor> Clone for Supervised<A> {
    fn clone(&self) -> Self {
        Supervised { name: Arc::clone(&self.name), state: self.state.clone(), while_down: self.while_down }
    }
}

impl<A: ProcessActor> fmt::Debug for Supervised<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervised").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A call through a [`Supervised`] handle.
#[must_use = "await the call to get its reply"]
pub struct SupervisedCall<M: RemoteMessage> {
    future: BoxFuture<'static, Result<M::Result, CallError>>,
    deadline: Deadline,
}

impl<M: RemoteMessage> std::fmt::Debug for SupervisedCall<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisedCall").finish_non_exhaustive()
    }
}

impl<M: RemoteMessage> SupervisedCall<M> {
    /// Fails with [`CallError::Timeout`] if no reply came within `deadline`, waiting for a
    /// restart included.
    pub fn timeout(mut self, deadline: Duration) -> Self {
        self.deadline.set(deadline);
        self
    }
}

impl<M: RemoteMessage> Future for SupervisedCall<M> {
    type Output = Result<M::Result, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(result) = this.future.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        match this.deadline.poll_passed(cx) {
            Some(deadline) => Poll::Ready(Err(CallError::Timeout(deadline))),
            None => Poll::Pending,
        }
    }
}
