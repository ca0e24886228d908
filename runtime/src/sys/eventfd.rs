//! Eventfds: the doorbells of rings and the kernel objects behind events and semaphores.
//!
//! An eventfd is a 64-bit counter the kernel keeps: `write(n)` adds `n`, `read` takes the whole
//! count (or, with `EFD_SEMAPHORE`, one), and it is readable while the count is above zero, so
//! `poll`, `epoll` and tokio's reactor can wait on it. Its descriptor travels with a frame like
//! any other. Every eventfd here is non-blocking; since that flag belongs to the open file
//! description, which every process holding a copy shares, a synchronous waiter polls instead
//! of flipping it.

use rustix::event::EventfdFlags;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

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

/// Adds `n` to the count. A count that would overflow (only after 2^64 - 2 unread additions)
/// is left as it is: it is readable either way.
///
/// # Errors
/// The `write` error other than `EAGAIN`.
pub fn add(fd: BorrowedFd<'_>, n: u64) -> io::Result<()> {
    match rustix::io::write(fd, &n.to_ne_bytes()) {
        Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Takes the count (or one, for a semaphore eventfd) without blocking: `None` when it is zero.
///
/// # Errors
/// The `read` error other than `EAGAIN`.
pub fn take(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut buf = [0u8; 8];
    match rustix::io::read(fd, &mut buf) {
        Ok(8) => Ok(Some(u64::from_ne_bytes(buf))),
        Ok(n) => Err(io::Error::other(format!("an eventfd read returned {n} bytes"))),
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
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

    #[test]
    fn a_memfd_is_not_an_eventfd() {
        let fd = crate::sys::memfd::create_segment("ensemble:test-not-eventfd", 64).unwrap();
        assert!(!is_eventfd(fd.as_fd()));
    }
}
