//! The operating-system seam: every `unsafe` call of ensemble lives below this module.
//!
//! Each function here is a small safe wrapper around one Linux call. The rest of the runtime
//! reaches the kernel only through these wrappers, so that the invariants each call relies on
//! are stated once, next to the call.

mod hook;
mod process;
pub(crate) mod shared_slice;
pub(crate) mod shm;

pub use process::{cpus_allowed, die_with_parent, ignore_signal, kill, pin_to_cpu, set_thread_name, Signal};
