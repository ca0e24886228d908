//! The supervisor actor: it starts children, watches their exits, restarts them by policy and
//! strategy, gives up past the restart intensity, and stops them in reverse order.
//!
//! The actor's state lives in an `Rc<RefCell<Core>>` so that each operation can be written as
//! one straight async procedure; the actor runs those with `ctx.wait`, one at a time, so an exit
//! that arrives during a restart is handled after it. No borrow is held across an await.

use crate::supervisor::child::{Child, Incarnation};
use crate::supervisor::registry::View;
use crate::supervisor::spec::{Reap, Restart, StopOrder, Strategy, SupervisorConfig};
use crate::supervisor::{SupervisorError, SupervisorEvent};
use actix::{Actor, AsyncContext, Handler, Message, WrapFuture};
use ensemble_runtime::{ExitInfo, SpawnError};
use futures::channel::{mpsc, oneshot};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Exit code of a child process whose own supervisor gave up: its parent sees an abnormal exit.
pub const EXIT_ESCALATED: i32 = 75;

pub(crate) struct SupervisorActor {
    core: Rc<RefCell<Core>>,
}

pub(crate) struct Core {
    config: SupervisorConfig,
    children: Vec<Entry>,
    restarts: VecDeque<Instant>,
    subscribers: Vec<mpsc::UnboundedSender<SupervisorEvent>>,
    ended: Option<Result<(), SupervisorError>>,
    waiters: Vec<oneshot::Sender<Result<(), SupervisorError>>>,
    /// What `ensemble ps` sees of this supervisor.
    view: Arc<View>,
}

struct Entry {
    child: Arc<dyn Child>,
    current: Option<Arc<dyn Incarnation>>,
    /// Bumped whenever the supervisor itself stops the child, so its exit is not a failure.
    generation: u64,
    /// Restarts of this child, for the backoff.
    attempts: u32,
}

impl SupervisorActor {
    pub(crate) fn new(
        config: SupervisorConfig,
        subscribers: Vec<mpsc::UnboundedSender<SupervisorEvent>>,
    ) -> Self {
        let core = Core {
            config,
            children: Vec::new(),
            restarts: VecDeque::new(),
            subscribers,
            ended: None,
            waiters: Vec::new(),
            view: View::new(),
        };
        SupervisorActor { core: Rc::new(RefCell::new(core)) }
    }
}

impl Actor for SupervisorActor {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.core.borrow().view.set_addr(ctx.address().downgrade());
    }
}

/// Start and adopt a new child (at the end of the start order).
pub(crate) struct AddChild(pub(crate) Arc<dyn Child>);

impl Message for AddChild {
    type Result = Result<(), SpawnError>;
}

/// An incarnation exited.
struct Exited {
    index: usize,
    generation: u64,
    exit: ExitInfo,
}

impl Message for Exited {
    type Result = ();
}

/// Stop every child in reverse start order; resolves once they are all reaped.
pub(crate) struct Shutdown;

impl Message for Shutdown {
    type Result = Result<(), SupervisorError>;
}

/// Stop the child running as this pid for good (`ensemble stop`): no restart, its handles see
/// it gone.
pub(crate) struct StopChild(pub(crate) u32);

impl Message for StopChild {
    type Result = ();
}

/// Resolves when the supervisor has ended.
pub(crate) struct Wait;

impl Message for Wait {
    type Result = oneshot::Receiver<Result<(), SupervisorError>>;
}

/// The events from now on.
pub(crate) struct Subscribe;

impl Message for Subscribe {
    type Result = mpsc::UnboundedReceiver<SupervisorEvent>;
}

impl Handler<AddChild> for SupervisorActor {
    type Result = actix::AtomicResponse<Self, Result<(), SpawnError>>;

    fn handle(&mut self, AddChild(child): AddChild, ctx: &mut Self::Context) -> Self::Result {
        let core = Rc::clone(&self.core);
        let addr = ctx.address();
        actix::AtomicResponse::new(Box::pin(
            async move {
                if core.borrow().ended.is_some() {
                    return Err(SpawnError::Abandoned("the supervisor has ended"));
                }
                let incarnation = child.start().await?;
                let index = {
                    let mut core = core.borrow_mut();
                    core.children.push(Entry {
                        child: Arc::clone(&child),
                        current: None,
                        generation: 0,
                        attempts: 0,
                    });
                    core.children.len() - 1
                };
                adopt(&core, &addr, index, incarnation, false);
                Ok(())
            }
            .into_actor(self),
        ))
    }
}

impl Handler<Exited> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, exited: Exited, ctx: &mut Self::Context) {
        let core = Rc::clone(&self.core);
        let addr = ctx.address();
        ctx.wait(on_exit(core, addr, exited).into_actor(self));
    }
}

impl Handler<Shutdown> for SupervisorActor {
    type Result = actix::AtomicResponse<Self, Result<(), SupervisorError>>;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        let core = Rc::clone(&self.core);
        actix::AtomicResponse::new(Box::pin(
            async move {
                if let Some(ended) = core.borrow().ended.clone() {
                    return ended;
                }
                stop_all(&core).await;
                finish(&core, Ok(()));
                Ok(())
            }
            .into_actor(self),
        ))
    }
}

impl Handler<StopChild> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, StopChild(pid): StopChild, ctx: &mut Self::Context) {
        let core = Rc::clone(&self.core);
        ctx.wait(async move { stop_one(&core, pid).await }.into_actor(self));
    }
}

impl Handler<Wait> for SupervisorActor {
    type Result = actix::MessageResult<Wait>;

    fn handle(&mut self, _: Wait, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let mut core = self.core.borrow_mut();
        match &core.ended {
            Some(result) => {
                let _ = tx.send(result.clone());
            }
            None => core.waiters.push(tx),
        }
        actix::MessageResult(rx)
    }
}

impl Handler<Subscribe> for SupervisorActor {
    type Result = actix::MessageResult<Subscribe>;

    fn handle(&mut self, _: Subscribe, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = mpsc::unbounded();
        self.core.borrow_mut().subscribers.push(tx);
        actix::MessageResult(rx)
    }
}

/// Makes `incarnation` the current one of child `index` and watches for its exit.
fn adopt(
    core: &Rc<RefCell<Core>>,
    addr: &actix::Addr<SupervisorActor>,
    index: usize,
    incarnation: Arc<dyn Incarnation>,
    restarted: bool,
) {
    let mut c = core.borrow_mut();
    let entry = &mut c.children[index];
    entry.current = Some(Arc::clone(&incarnation));
    let generation = entry.generation;
    let child = entry.child.name().to_owned();
    let attempts = entry.attempts;
    let (policy, actor) = (entry.child.restart(), entry.child.actor());
    let pid = incarnation.pid();
    c.view.started(pid, &child, attempts, policy);
    if restarted {
        crate::meter::restarted(&child, actor);
    }
    let addr = addr.clone();
    actix::spawn(async move {
        let exit = incarnation.exited().await;
        addr.do_send(Exited { index, generation, exit });
    });
    let event = if restarted {
        SupervisorEvent::Restarted { child, pid, restarts: attempts }
    } else {
        SupervisorEvent::Started { child, pid }
    };
    c.emit(event);
}

async fn on_exit(core: Rc<RefCell<Core>>, addr: actix::Addr<SupervisorActor>, exited: Exited) {
    let Exited { index, generation, exit } = exited;
    core.borrow().view.forget(exit.pid);
    let (child, restart) = {
        let mut c = core.borrow_mut();
        let ended = c.ended.is_some();
        let Some(entry) = c.children.get_mut(index) else { return };
        if ended || entry.generation != generation {
            return; // stopped on purpose, or the supervisor is done
        }
        entry.current = None;
        let child = Arc::clone(&entry.child);
        c.emit(SupervisorEvent::Exited { child: child.name().to_owned(), exit: exit.clone() });
        let restart = match child.restart() {
            Restart::Permanent => true,
            Restart::Transient => !exit.success(),
            Restart::Temporary => false,
        };
        (child, restart)
    };
    if !restart {
        child.mark_gone(Some(exit));
        return;
    }
    child.mark_down();
    if !core.borrow_mut().allow_restart() {
        give_up(&core, index).await;
        return;
    }
    restart_group(&core, &addr, index).await;
}

/// Restarts child `index` and, by the strategy, its group.
async fn restart_group(core: &Rc<RefCell<Core>>, addr: &actix::Addr<SupervisorActor>, index: usize) {
    let group = core.borrow().group(index);
    for &i in group.iter().rev() {
        let (incarnation, child) = {
            let mut c = core.borrow_mut();
            let entry = &mut c.children[i];
            entry.generation += 1;
            entry.child.mark_down();
            (entry.current.take(), Arc::clone(&entry.child))
        };
        if let Some(incarnation) = incarnation {
            let exit = incarnation.stop().await;
            core.borrow().emit(SupervisorEvent::Stopped { child: child.name().to_owned(), exit });
        }
    }
    for &i in &group {
        let child = Arc::clone(&core.borrow().children[i].child);
        if i != index && child.restart() == Restart::Temporary {
            child.mark_gone(None);
            continue;
        }
        if !start_again(core, addr, i).await {
            give_up(core, i).await;
            return;
        }
    }
}

/// Starts child `index` again, retrying failed starts while the intensity allows.
async fn start_again(core: &Rc<RefCell<Core>>, addr: &actix::Addr<SupervisorActor>, index: usize) -> bool {
    loop {
        let (child, delay) = {
            let mut c = core.borrow_mut();
            let backoff = c.config.backoff;
            let entry = &mut c.children[index];
            entry.attempts += 1;
            let delay = backoff.map(|b| b.delay(entry.attempts));
            (Arc::clone(&entry.child), delay)
        };
        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
            actix_rt::time::sleep(delay).await;
        }
        match child.start().await {
            Ok(incarnation) => {
                adopt(core, addr, index, incarnation, true);
                return true;
            }
            Err(error) => {
                let event =
                    SupervisorEvent::StartFailed { child: child.name().to_owned(), error: error.to_string() };
                let mut c = core.borrow_mut();
                c.emit(event);
                if !c.allow_restart() {
                    return false;
                }
            }
        }
    }
}

/// Stops every child in reverse start order (one after the other, or all at once, as the
/// config says) and waits until each is reaped.
async fn stop_all(core: &Rc<RefCell<Core>>) {
    let count = core.borrow().children.len();
    let concurrent = core.borrow().config.stop_order == StopOrder::Concurrent;
    let mut stopping = Vec::new();
    for i in (0..count).rev() {
        let (incarnation, child) = {
            let mut c = core.borrow_mut();
            let entry = &mut c.children[i];
            entry.generation += 1;
            (entry.current.take(), Arc::clone(&entry.child))
        };
        child.mark_gone(None);
        if let Some(incarnation) = incarnation {
            let stop = stop_child(core, Arc::clone(&child), incarnation);
            match concurrent {
                true => stopping.push((child, stop)),
                false => stopped(core, &*child, stop.await),
            }
        }
    }
    let (children, stops): (Vec<_>, Vec<_>) = stopping.into_iter().unzip();
    for (child, exit) in children.into_iter().zip(futures::future::join_all(stops).await) {
        stopped(core, &*child, exit);
    }
}

/// Stops one child for good. Resolves to its exit, or, with [`Reap::InBackground`], to `None`
/// once it closed its connection: its `Stopped` event then comes when it exits.
fn stop_child(
    core: &Rc<RefCell<Core>>,
    child: Arc<dyn Child>,
    incarnation: Arc<dyn Incarnation>,
) -> impl std::future::Future<Output = Option<ExitInfo>> {
    let core = Rc::clone(core);
    async move {
        if core.borrow().config.reap == Reap::BeforeReturning {
            return Some(incarnation.stop().await);
        }
        incarnation.stop_until_closed().await;
        // The exit comes later, maybe after this supervisor's system has ended (a shutdown
        // returns now): the event is sent from the I/O thread, which lives as long as the
        // process, to the subscribers of now.
        let exited = incarnation.exited();
        let subscribers = core.borrow().subscribers.clone();
        let name = child.name().to_owned();
        drop(ensemble_runtime::io_thread::handle().spawn(async move {
            let event = SupervisorEvent::Stopped { child: name, exit: exited.await };
            emit_to(&subscribers, event);
        }));
        None
    }
}

/// Says that `child` stopped, once its exit is known.
fn stopped(core: &Rc<RefCell<Core>>, child: &dyn Child, exit: Option<ExitInfo>) {
    if let Some(exit) = exit {
        core.borrow().emit(SupervisorEvent::Stopped { child: child.name().to_owned(), exit });
    }
}

/// Stops the child whose current incarnation is `pid`, in order, and leaves it stopped.
async fn stop_one(core: &Rc<RefCell<Core>>, pid: u32) {
    let found = {
        let mut c = core.borrow_mut();
        let entry = c.children.iter_mut().find(|e| e.current.as_ref().is_some_and(|i| i.pid() == pid));
        entry.map(|entry| {
            entry.generation += 1;
            (entry.current.take(), Arc::clone(&entry.child))
        })
    };
    let Some((Some(incarnation), child)) = found else { return };
    child.mark_gone(None);
    let exit = incarnation.stop().await;
    core.borrow().emit(SupervisorEvent::Stopped { child: child.name().to_owned(), exit });
}

async fn give_up(core: &Rc<RefCell<Core>>, index: usize) {
    let (child, intensity) = {
        let c = core.borrow();
        (c.children[index].child.name().to_owned(), c.config.intensity)
    };
    let error = SupervisorError::GaveUp {
        child: child.clone(),
        restarts: intensity.max_restarts,
        within: intensity.within,
    };
    core.borrow().emit(SupervisorEvent::GaveUp {
        child,
        restarts: intensity.max_restarts,
        within: intensity.within,
    });
    stop_all(core).await;
    finish(core, Err(error));
    if ensemble_runtime::child::is_child() {
        tracing::error!("this process's supervisor gave up; exiting with {EXIT_ESCALATED} to escalate");
        std::process::exit(EXIT_ESCALATED);
    }
}

fn finish(core: &Rc<RefCell<Core>>, result: Result<(), SupervisorError>) {
    let waiters = {
        let mut c = core.borrow_mut();
        if c.ended.is_some() {
            return;
        }
        c.ended = Some(result.clone());
        std::mem::take(&mut c.waiters)
    };
    for waiter in waiters {
        let _ = waiter.send(result.clone());
    }
}

impl Core {
    /// Records a restart; false when it would exceed the intensity.
    fn allow_restart(&mut self) -> bool {
        let now = Instant::now();
        let window = self.config.intensity.within;
        while self.restarts.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        self.restarts.len() <= self.config.intensity.max_restarts as usize
    }

    /// The children that restart together with `index`, in start order.
    fn group(&self, index: usize) -> Vec<usize> {
        let live = |i: &usize| *i == index || self.children[*i].current.is_some();
        match self.config.strategy {
            Strategy::OneForOne => vec![index],
            Strategy::OneForAll => (0..self.children.len()).filter(live).collect(),
            Strategy::RestForOne => (index..self.children.len()).filter(live).collect(),
        }
    }

    fn emit(&self, event: SupervisorEvent) {
        emit_to(&self.subscribers, event);
    }
}

/// Logs `event` and hands it to every subscriber still listening.
fn emit_to(subscribers: &[mpsc::UnboundedSender<SupervisorEvent>], event: SupervisorEvent) {
    event.log();
    for subscriber in subscribers {
        let _ = subscriber.unbounded_send(event.clone());
    }
}
