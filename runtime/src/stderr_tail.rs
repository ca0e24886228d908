//! Forwarding a child's stderr to ours while keeping its last few kilobytes for error reports.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::ChildStderr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How many bytes of a child's stderr are kept for error messages.
pub const TAIL_BYTES: usize = 4096;

/// The tail of a child's stderr, filled by a forwarding thread.
pub(crate) struct StderrTail {
    buf: Arc<Mutex<VecDeque<u8>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StderrTail {
    /// Starts forwarding `stderr` to this process's stderr, keeping the last [`TAIL_BYTES`].
    pub(crate) fn forward(mut stderr: ChildStderr, thread_name: String) -> std::io::Result<StderrTail> {
        let buf = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_BYTES)));
        let sink = Arc::clone(&buf);
        let thread = std::thread::Builder::new().name(thread_name).spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                let _ = std::io::stderr().write_all(&chunk[..n]);
                let mut tail = sink.lock().unwrap_or_else(|e| e.into_inner());
                tail.extend(&chunk[..n]);
                let excess = tail.len().saturating_sub(TAIL_BYTES);
                tail.drain(..excess);
            }
        })?;
        Ok(StderrTail { buf, thread: Mutex::new(Some(thread)) })
    }

    /// What was captured so far.
    pub(crate) fn snapshot(&self) -> String {
        let tail = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = tail.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).into_owned()
    }

    /// Waits briefly for the forwarder to drain what the exited child wrote, then snapshots.
    ///
    /// The wait is bounded: a grandchild that inherited the pipe may keep it open.
    pub(crate) fn finish(&self) -> String {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let mut pause = Duration::from_micros(20);
            let mut waited = Duration::ZERO;
            while waited < Duration::from_millis(100) {
                if handle.is_finished() {
                    let _ = handle.join();
                    break;
                }
                std::thread::sleep(pause);
                waited += pause;
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        }
        self.snapshot()
    }
}
