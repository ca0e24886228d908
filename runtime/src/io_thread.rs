//! The process-wide I/O thread: a tokio current-thread runtime that drives every connection
//! that no caller's runtime can be trusted to drive.
//!
//! A connection's reading must never wait for a runtime that nobody polls. The actors layer
//! reads a connection on the actix arbiter that spawned it (an arbiter polls its tasks for as
//! long as it lives); every other connection (spawned from a plain thread, a `#[tokio::test]`,
//! a tokio runtime that may be blocked or dropped) is read here, and so is one whose arbiter
//! stopped while its child still runs. The thread starts on first use and lives as long as the
//! process, like the launcher thread.

use std::sync::OnceLock;
use tokio::runtime::Handle;

/// The I/O runtime's handle, starting its thread on first use.
///
/// # Panics
/// When the thread or its runtime cannot be created (the process is out of threads or
/// descriptors): nothing could read a connection then.
pub fn handle() -> Handle {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(start).clone()
}

fn start() -> Handle {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ensemble-io")
        .build()
        .expect("ensemble: cannot create the I/O runtime");
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("ensemble-io".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .expect("ensemble: cannot start the I/O thread");
    handle
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_io_runtime_runs_tasks_from_any_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            super::handle().spawn(async move { tx.send(std::thread::current().name().map(String::from)) });
        });
        let name = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(name.as_deref(), Some("ensemble-io"));
    }
}
