//! Process-level calls: parent-death signal, signals, CPU affinity, thread names.

use std::io;

/// A POSIX signal number, as the kernel knows it.
pub type Signal = libc::c_int;

/// Asks the kernel to send `SIGKILL` to this process when the thread that spawned it exits,
/// then checks that the parent is still `expected_parent`.
///
/// The check closes the race in which the parent dies before `prctl` runs: the signal would then
/// never come, and the process would already have been re-parented.
///
/// # Errors
/// Fails when `prctl` fails, or with [`io::ErrorKind::NotFound`] when the parent is already gone.
pub fn die_with_parent(expected_parent: u32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number as its only argument; the remaining
    // arguments are ignored by the kernel and passed as zero. No memory is shared with the call.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if parent_pid() != expected_parent {
        return Err(io::Error::new(io::ErrorKind::NotFound, "the parent process already exited"));
    }
    Ok(())
}

/// The pid of this process's parent.
pub fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    let pid = unsafe { libc::getppid() };
    pid as u32
}

/// Sends `signal` to process `pid`.
///
/// Callers must make sure `pid` is a child that has not been reaped yet, so that the number
/// cannot have been reused by an unrelated process.
///
/// # Errors
/// The `kill` error, e.g. `ESRCH` when no such process exists.
pub fn kill(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill takes plain integers; a positive pid addresses exactly one process.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the disposition of `signal` to "ignore" for the whole process.
///
/// # Errors
/// The `sigaction` error, e.g. `EINVAL` for `SIGKILL`.
pub fn ignore_signal(signal: Signal) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags); we then set the
    // handler to SIG_IGN, which the kernel accepts for every catchable signal. The old action
    // pointer is null, which sigaction allows.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_IGN;
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread to one CPU; threads it starts afterwards inherit the pinning.
///
/// # Errors
/// Fails with `EINVAL` when `cpu` is not a CPU this process may run on.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cpu index too large"));
    }
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is the empty set; CPU_SET writes
    // one bit inside it (index checked above). sched_setaffinity reads `size_of::<cpu_set_t>()`
    // bytes from a pointer to a live local. Pid 0 means the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How many CPUs the calling thread may run on.
pub fn cpus_allowed() -> usize {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into the live local, and CPU_COUNT only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set) as usize
    }
}

/// The CPUs process `pid` (0: the calling thread) may run on, in ascending order.
///
/// # Errors
/// The `sched_getaffinity` error (`ESRCH` for a process that is gone).
pub fn cpu_set(pid: u32) -> io::Result<Vec<usize>> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into the live local, and CPU_ISSET only reads it, with an
    // index below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect())
    }
}

/// Sets the kernel name of the calling thread (what `top` and `ps -o comm` show), truncated to
/// the kernel's 15 bytes. On the main thread this is the process name.
pub fn set_thread_name(name: &str) {
    let mut buf = [0u8; 16];
    let bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    buf[..bytes.len()].copy_from_slice(&bytes);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer;
    // `buf` is 16 bytes long, zero-initialised, and at most 15 of them are written above, so it
    // is always terminated. The buffer outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// A pidfd for child `pid`: readable once the child has exited (Linux 5.3).
///
/// The caller must not have reaped `pid` yet, so that the number still names its child.
///
/// # Errors
/// The `pidfd_open` error (`ENOSYS` before Linux 5.3, `ESRCH`).
pub fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    Ok(rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?)
}

/// Raises this process's soft limit on open descriptors to the hard limit, once.
///
/// Descriptors travel in frames; a full table would make the kernel drop received ones
/// (`MSG_CTRUNC`), which would look like the peer's fault.
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
        }
    });
}

/// The running kernel's version as (major, minor), from `uname`.
pub fn kernel_version() -> (u32, u32) {
    let uname = rustix::system::uname();
    parse_kernel_release(&uname.release().to_string_lossy())
}

fn parse_kernel_release(release: &str) -> (u32, u32) {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok());
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_is_the_real_parent() {
        assert_eq!(parent_pid(), std::os::unix::process::parent_id());
    }

    #[test]
    fn kill_with_signal_zero_probes_a_live_process() {
        kill(std::process::id(), 0).unwrap();
    }

    #[test]
    fn kill_reports_a_missing_process() {
        let err = kill(i32::MAX as u32, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn pinning_rejects_an_impossible_cpu() {
        assert!(pin_to_cpu(100_000).is_err());
    }

    #[test]
    fn pinning_to_an_allowed_cpu_works_and_narrows_the_allowed_set() {
        let handle = std::thread::spawn(|| {
            pin_to_cpu(0)?;
            Ok::<_, io::Error>(cpus_allowed())
        });
        assert_eq!(handle.join().unwrap().unwrap(), 1);
        assert!(cpus_allowed() >= 1);
        assert_eq!(cpu_set(0).unwrap().len(), cpus_allowed());
    }

    #[test]
    fn kernel_releases_parse_to_major_and_minor() {
        assert_eq!(parse_kernel_release("6.18.0-1-cloud-amd64"), (6, 18));
        assert_eq!(parse_kernel_release("5.3"), (5, 3));
        assert_eq!(parse_kernel_release("garbage"), (0, 0));
        assert!(kernel_version() >= (5, 3));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain child, to watch through a pidfd
    fn a_pidfd_of_a_child_becomes_readable_when_it_exits() {
        use std::os::fd::AsFd;
        let mut child = std::process::Command::new("/bin/sleep").arg("0.05").spawn().unwrap();
        let pidfd = pidfd_open(child.id()).unwrap();
        let ready = crate::sys::socket::wait_readable(&[pidfd.as_fd()], std::time::Duration::from_secs(10));
        assert_eq!(ready.unwrap(), Some(0));
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn ignore_signal_refuses_sigkill() {
        assert!(ignore_signal(libc::SIGKILL).is_err());
    }

    #[test]
    fn thread_name_is_truncated_and_visible() {
        std::thread::spawn(|| {
            set_thread_name("a-very-long-thread-name");
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            assert_eq!(comm.trim_end(), "a-very-long-thr");
        })
        .join()
        .unwrap();
    }
}
