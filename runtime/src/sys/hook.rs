//! The constructor that turns a re-executed process into an ensemble child before `main` runs.
//!
//! Running before `main` is what lets children work in any executable without cooperation from
//! its `main`: integration tests (whose `main` is libtest's), examples, benchmarks. The hook reads
//! one environment variable and returns at once when it is absent, so a parent pays nothing.

// SAFETY: the constructor runs before `main`, while the process has a single thread. It only
// reads the environment (libc `getenv`, valid before main) and, in a child, runs the child to
// completion and exits the process; it never returns into a half-initialised runtime. Nothing
// it calls depends on Rust's `main` setup except SIGPIPE handling, which `child::run_if_child`
// sets itself.
#[ctor::ctor(unsafe)]
fn ensemble_child_hook() {
    crate::child::run_if_child();
}
