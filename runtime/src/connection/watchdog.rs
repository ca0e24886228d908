//! The watchdog that moves a connection to the I/O thread when the runtime reading it stops
//! reading.
//!
//! A connection spawned from an actix arbiter is read there: one wake-up per reply. But an
//! arbiter can stop being polled while its `System` lives (a `SystemRunner` between
//! `block_on` calls), and its thread can block (a synchronous wait on a call). Every 20 ms,
//! while such connections exist and one of them has a call in flight or frames queued, the
//! I/O thread looks at each: if something waits to be read (a frame on the socket or in the
//! fast lane, the child's exit) or sent, and the driver has not run for two looks in a row,
//! the I/O thread's driver takes the connection over for good. A healthy runtime answers
//! within microseconds, so a connection with a call in flight is moved after ~20-40 ms of
//! neglect. While no call is in flight the looks come every 250 ms (events a child pushes
//! then wait at most ~0.5 s for a neglected runtime), so that an idle process is not woken
//! 50 times a second; a new call brings the 20 ms looks back at once.

use super::Core;
use crate::io_thread;
use crate::sys::socket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often the watchdog looks while a call is in flight.
const TICK: Duration = Duration::from_millis(20);
/// How often it looks while none is.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// The watchdog sleeps its idle tick.
static IDLE: AtomicBool = AtomicBool::new(false);
/// Wakes an idle watchdog.
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A call went out: an idle watchdog goes back to looking every 20 ms.
pub(super) fn call_made() {
    if IDLE.load(Ordering::Relaxed) && IDLE.swap(false, Ordering::SeqCst) {
        WAKE.notify_one();
    }
}

struct Watched {
    core: Weak<Core>,
    /// The driver's progress counter at the last look.
    seen: u64,
    /// Looks in a row that found work waiting and no progress.
    stale: u8,
}

#[derive(Default)]
struct Registry {
    watched: Vec<Watched>,
    running: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { watched: Vec::new(), running: false });

/// Watches a connection read on a caller's runtime.
pub(super) fn watch(core: &Arc<Core>) {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.watched.push(Watched { core: Arc::downgrade(core), seen: 0, stale: 0 });
    if !registry.running {
        registry.running = true;
        drop(io_thread::handle().spawn(look_until_none_left()));
    }
}

async fn look_until_none_left() {
    let mut tick = TICK;
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = WAKE.notified() => {}
        }
        let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        registry.watched.retain_mut(still_watched);
        if registry.watched.is_empty() {
            registry.running = false;
            IDLE.store(false, Ordering::SeqCst);
            return;
        }
        // Idle is said before the look that decides it, so that a call made meanwhile either
        // is seen by the look or sees the flag and wakes the watchdog.
        IDLE.store(true, Ordering::SeqCst);
        let busy = registry
            .watched
            .iter()
            .any(|entry| entry.stale > 0 || entry.core.upgrade().is_some_and(|core| busy(&core)));
        tick = if busy { TICK } else { IDLE_TICK };
        IDLE.store(!busy, Ordering::SeqCst);
    }
}

/// Whether a connection has a call in flight or frames to send.
fn busy(core: &Core) -> bool {
    !core.lock().pending.is_empty() || core.outbox.link().queued() > 0
}

/// Looks at one connection; false once it needs no more watching.
fn still_watched(entry: &mut Watched) -> bool {
    let Some(core) = entry.core.upgrade() else { return false };
    if core.reading.moved.load(Ordering::SeqCst) || core.lock().exit.is_some() {
        return false;
    }
    let progress = core.reading.progress.load(Ordering::Relaxed);
    if progress != entry.seen || !work_waiting(&core) {
        entry.seen = progress;
        entry.stale = 0;
        return true;
    }
    entry.stale += 1;
    if entry.stale < 2 {
        return true;
    }
    tracing::debug!(
        pid = core.process.pid(),
        "the runtime reading this connection stopped reading it; moving it to the I/O thread"
    );
    core.move_to_io_thread();
    false
}

fn work_waiting(core: &Core) -> bool {
    let link = core.outbox.link();
    let fds = [link.socket(), core.process.pidfd()];
    link.queued() > 0
        || link.lane_waiting()
        || socket::wait_readable(&fds, Duration::ZERO).is_ok_and(|ready| ready.is_some())
}
