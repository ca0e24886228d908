//! This process's supervisors as `ensemble ps` and `ensemble stop` see them: each supervisor
//! keeps a [`View`] (its children's pids, names, restarts and policies) that its actor updates,
//! and the runtime's introspection asks the views through one [`Provider`].
//!
//! A view is shared data, not the supervisor's state (an `Rc<RefCell<_>>` that only its actor
//! may touch): the endpoint reads views from the I/O thread, and reaches a supervisor only by a
//! message to its address (weak: the registry never keeps a supervisor alive).

use super::core::{StopChild, SupervisorActor};
use super::spec::Restart;
use actix::WeakAddr;
use ensemble_runtime::introspect::{self, Provider, Supervision};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};

/// What one supervisor shows of itself.
pub(crate) struct View {
    id: u64,
    addr: Mutex<Option<WeakAddr<SupervisorActor>>>,
    children: Mutex<HashMap<u32, Supervision>>,
}

static VIEWS: Mutex<Vec<Weak<View>>> = Mutex::new(Vec::new());

impl View {
    /// A new supervisor's view, registered with the runtime's introspection.
    pub(crate) fn new() -> Arc<View> {
        static PROVIDER: Once = Once::new();
        PROVIDER.call_once(|| introspect::add_provider(&Supervisors));
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let view = Arc::new(View {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addr: Mutex::new(None),
            children: Mutex::new(HashMap::new()),
        });
        let mut views = lock(&VIEWS);
        views.retain(|v| v.strong_count() > 0);
        views.push(Arc::downgrade(&view));
        view
    }

    /// The supervisor's address, once its actor runs.
    pub(crate) fn set_addr(&self, addr: WeakAddr<SupervisorActor>) {
        *lock(&self.addr) = Some(addr);
    }

    /// Child `name` runs as `pid`, after `restarts` restarts.
    pub(crate) fn started(&self, pid: u32, name: &str, restarts: u32, restart: Restart) {
        let restart = format!("{restart:?}").to_lowercase();
        let supervision = Supervision { supervisor: self.id, child: name.to_owned(), restarts, restart };
        lock(&self.children).insert(pid, supervision);
    }

    /// Process `pid` has exited.
    pub(crate) fn forget(&self, pid: u32) {
        lock(&self.children).remove(&pid);
    }
}

/// The provider of every view of this process.
struct Supervisors;

impl Supervisors {
    fn find<T>(pid: u32, f: impl Fn(&View, &Supervision) -> T) -> Option<T> {
        let views: Vec<_> = lock(&VIEWS).iter().filter_map(Weak::upgrade).collect();
        views.iter().find_map(|view| lock(&view.children).get(&pid).map(|s| f(view, s)))
    }
}

impl Provider for Supervisors {
    fn supervision(&self, pid: u32) -> Option<Supervision> {
        Self::find(pid, |_, supervision| supervision.clone())
    }

    fn stop(&self, pid: u32) -> Option<Result<String, String>> {
        Self::find(pid, |view, supervision| {
            let addr = lock(&view.addr).as_ref().and_then(WeakAddr::upgrade);
            match addr {
                Some(addr) => {
                    addr.do_send(StopChild(pid));
                    Ok(format!(
                        "stopping {} in order through supervisor {}, which will not restart it",
                        supervision.child, view.id
                    ))
                }
                None => Err(format!("the supervisor of process {pid} has ended")),
            }
        })
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("id", &self.id).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
