//! The operating-system seam: every `unsafe` call of ensemble lives below this module.
//!
//! Each function here is a small safe wrapper around one Linux call. The rest of the runtime
//! reaches the kernel only through these wrappers, so that the invariants each call relies on
//! are stated once, next to the call.

pub(crate) mod eventfd;
mod hook;
pub(crate) mod memfd;
pub(crate) mod ofd_mutex;
mod process;
pub(crate) mod reactor;
pub(crate) mod ring_memory;
pub(crate) mod shared_slice;
pub(crate) mod shm;
pub(crate) mod socket;

pub use process::{
    cpu_set, cpus_allowed, die_with_parent, ignore_signal, kernel_version, kill, pidfd_open, pin_to_cpu,
    raise_nofile_limit, set_thread_name, Signal,
};
