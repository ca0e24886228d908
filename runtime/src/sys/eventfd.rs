//! Eventfds: the doorbells of rings and the kernel objects behind events and semaphores.
//!
//! An eventfd is a 64-bit counter the kernel keeps: `write(n)` adds `n`, `read` takes the whole
//! count (or, with `EFD_SEMAPHORE`, one), and it is readable while the count is above zero, so
//! `poll`, `epoll` and tokio's reactor can wait on it. Its descriptor travels with a frame like
//! any other. Every eventfd here is created non-blocking, but that flag belongs to the open file
//! description, which every process holding a copy shares: a peer can clear it (`fcntl`), and
//! then a plain `read` of a zero count, or a `write` that would overflow it, blocks for ever.
//! So nothing here relies on it:
//! - [`take`] reads with `preadv2(.., RWF_NOWAIT)`, which says `EAGAIN` whatever the flag. A
//!   kernel whose eventfd refuses `RWF_NOWAIT` (`EOPNOTSUPP`, older kernels) gets the flag set
//!   back before a plain read: a peer that clears it again in between can still block that read.
//! - [`add`] cannot use `RWF_NOWAIT` (eventfd writes refuse it): it polls for `POLLOUT` without
//!   waiting first, and, for more than one, sets the flag back if it was cleared. What remains is
//!   a narrow race: a peer that raises the count to within `n` of 2^64 - 1 (and clears the flag)
//!   between the poll and the write blocks that write until someone reads.

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::io::{Errno, ReadWriteFlags};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// A new eventfd with count `initial`, close-on-exec and non-blocking; with `semaphore`, each
/// read takes one from the count instead of all of it.
///
/// # Errors
/// The `eventfd` error (`EMFILE`, ...).
pub fn create(initial: u32, semaphore: bool) -> io::Result<OwnedFd> {
    let mut flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
    if semaphore {
        flags |= EventfdFlags::SEMAPHORE;
    }
    Ok(rustix::event::eventfd(initial, flags)?)
}

/// Adds `n` to the count, never blocking (see the module docs for the one narrow race). A count
/// that would overflow (only after 2^64 - 2 unread additions, or a peer's large write) is left as
/// it is: it is readable either way.
///
/// # Errors
/// The `poll`, `fcntl` or `write` error other than `EAGAIN`.
pub fn add(fd: BorrowedFd<'_>, n: u64) -> io::Result<()> {
    if !has_room(fd)? {
        return Ok(());
    }
    if n > 1 {
        // POLLOUT promises room for one; a larger write relies on the flag.
        ensure_nonblocking(fd)?;
    }
    match rustix::io::write(fd, &n.to_ne_bytes()) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Takes the count (or one, for a semaphore eventfd) without blocking, also when a peer cleared
/// `O_NONBLOCK`: `None` when it is zero.
///
/// # Errors
/// The `read` error other than `EAGAIN`.
pub fn take(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut buf = [0u8; 8];
    // u64::MAX: at the file's position, as `read` does (an eventfd has none).
    let read = rustix::io::preadv2(fd, &mut [IoSliceMut::new(&mut buf)], u64::MAX, ReadWriteFlags::NOWAIT);
    let read = match read {
        Err(Errno::OPNOTSUPP | Errno::INVAL) => {
            ensure_nonblocking(fd)?;
            rustix::io::read(fd, &mut buf)
        }
        other => other,
    };
    match read {
        Ok(8) => Ok(Some(u64::from_ne_bytes(buf))),
        Ok(n) => Err(io::Error::other(format!("an eventfd read returned {n} bytes"))),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a write of one would not block now (`POLLOUT`: the count is below 2^64 - 2).
fn has_room(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut polled = [PollFd::new(&fd, PollFlags::OUT)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    match rustix::event::poll(&mut polled, Some(&zero)) {
        Ok(_) => Ok(polled[0].revents().contains(PollFlags::OUT)),
        Err(Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Sets `O_NONBLOCK` back if a peer cleared it (it is ours as much as theirs).
fn ensure_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    if !flags.contains(rustix::fs::OFlags::NONBLOCK) {
        rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    }
    Ok(())
}

/// Whether the eventfd `fd` counts as a semaphore (`EFD_SEMAPHORE`), as `/proc/self/fdinfo`
/// says: `None` when it does not say (kernels before 6.6 have no `eventfd-semaphore:` line).
pub fn is_semaphore(fd: BorrowedFd<'_>) -> Option<bool> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let value = info.lines().find_map(|line| line.strip_prefix("eventfd-semaphore:"))?;
    match value.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Whether `fd` is an eventfd without `EFD_SEMAPHORE` (what an [`Event`](crate::sync::Event)
/// receives), where the kernel says.
pub fn is_plain_eventfd(fd: BorrowedFd<'_>) -> bool {
    is_eventfd(fd) && is_semaphore(fd) != Some(true)
}

/// Whether `fd` is an eventfd with `EFD_SEMAPHORE` (what a
/// [`Semaphore`](crate::sync::Semaphore) receives), where the kernel says.
pub fn is_semaphore_eventfd(fd: BorrowedFd<'_>) -> bool {
    is_eventfd(fd) && is_semaphore(fd) != Some(false)
}

/// Whether `fd` is an eventfd (what a received descriptor must be before it is used as one).
pub fn is_eventfd(fd: BorrowedFd<'_>) -> bool {
    crate::sys::memfd::fd_link(fd).is_ok_and(|link| link == "anon_inode:[eventfd]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn the_count_adds_up_and_is_taken_whole() {
        let fd = create(0, false).unwrap();
        assert_eq!(take(fd.as_fd()).unwrap(), None);
        add(fd.as_fd(), 2).unwrap();
        add(fd.as_fd(), 3).unwrap();
        assert_eq!(take(fd.as_fd()).unwrap(), Some(5));
        assert_eq!(take(fd.as_fd()).unwrap(), None);
        assert!(is_eventfd(fd.as_fd()));
    }

    #[test]
    fn a_semaphore_eventfd_gives_one_per_read() {
        let fd = create(2, true).unwrap();
        assert_eq!(take(fd.as_fd()).unwrap(), Some(1));
        assert_eq!(take(fd.as_fd()).unwrap(), Some(1));
        assert_eq!(take(fd.as_fd()).unwrap(), None);
    }

    /// Runs `f` on another thread and fails (instead of hanging) if it takes over 10 s.
    fn without_blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("it blocked")
    }

    fn clear_nonblocking(fd: BorrowedFd<'_>) {
        let flags = rustix::fs::fcntl_getfl(fd).unwrap();
        rustix::fs::fcntl_setfl(fd, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
    }

    #[test]
    fn a_peer_clearing_o_nonblock_blocks_neither_take_nor_add() {
        for semaphore in [false, true] {
            let fd = std::sync::Arc::new(create(0, semaphore).unwrap());
            clear_nonblocking(fd.as_fd()); // what a peer holding the same description can do
            let shared = fd.clone();
            assert_eq!(without_blocking(move || take(shared.as_fd()).unwrap()), None);
            // A count at the most a write may bring it to (2^64 - 2): adding one would block.
            add(fd.as_fd(), u64::MAX - 1).unwrap();
            clear_nonblocking(fd.as_fd());
            let shared = fd.clone();
            without_blocking(move || add(shared.as_fd(), 1).unwrap());
            // A count with room for one but not for five.
            if !semaphore {
                assert_eq!(take(fd.as_fd()).unwrap(), Some(u64::MAX - 1));
                add(fd.as_fd(), u64::MAX - 4).unwrap();
                clear_nonblocking(fd.as_fd());
                let shared = fd.clone();
                without_blocking(move || add(shared.as_fd(), 5).unwrap());
                assert_eq!(take(fd.as_fd()).unwrap(), Some(u64::MAX - 4));
            }
        }
    }

    #[test]
    fn fdinfo_tells_a_semaphore_eventfd_from_a_plain_one() {
        let plain = create(0, false).unwrap();
        let semaphore = create(0, true).unwrap();
        if is_semaphore(plain.as_fd()).is_none() {
            return; // a kernel before 6.6: nothing to tell them apart by
        }
        assert_eq!(is_semaphore(plain.as_fd()), Some(false));
        assert_eq!(is_semaphore(semaphore.as_fd()), Some(true));
        assert!(is_plain_eventfd(plain.as_fd()) && !is_plain_eventfd(semaphore.as_fd()));
        assert!(is_semaphore_eventfd(semaphore.as_fd()) && !is_semaphore_eventfd(plain.as_fd()));
    }

    #[test]
    fn a_memfd_is_not_an_eventfd() {
        let fd = crate::sys::memfd::create_segment("ensemble:test-not-eventfd", 64).unwrap();
        assert!(!is_eventfd(fd.as_fd()));
    }
}
