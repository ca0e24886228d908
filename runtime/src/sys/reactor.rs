//! Registering descriptors with tokio's reactor.
//!
//! `AsyncFd::register` is `unsafe` because the reactor keeps the descriptor's number: it must
//! stay open, naming the same file, for as long as the registration lives. [`register`] takes
//! the descriptor's owner (an `Arc` of what holds it) and keeps it inside the registration.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// An owner of a descriptor, kept alive by the registration that watches it.
#[derive(Debug)]
pub struct Owner<T>(T);

impl<T: AsFd> AsRawFd for Owner<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers the descriptor that `owner` holds with the current runtime's reactor.
///
/// `owner` must return the same descriptor from every `as_fd` call (the types used here hold an
/// `OwnedFd` that never changes).
///
/// # Errors
/// When the reactor refuses the descriptor.
///
/// # Panics
/// Outside a tokio runtime with IO enabled.
pub fn register<T: AsFd>(owner: T) -> io::Result<AsyncFd<Owner<T>>> {
    register_for(owner, Interest::READABLE)
}

/// As [`register`], for the readiness in `interest` only (a socket registered for writability
/// too wakes its task each time the peer makes room, which a reader need not know).
///
/// # Errors
/// When the reactor refuses the descriptor.
pub fn register_for<T: AsFd>(owner: T, interest: Interest) -> io::Result<AsyncFd<Owner<T>>> {
    // SAFETY: the registration owns `owner`, which owns (or, through an `Arc`, keeps alive) the
    // descriptor: it stays open and names the same open file description until the `AsyncFd`
    // is dropped, and `as_raw_fd` returns the same number each time (see the requirement above,
    // met by `Link` and `ChildProcess`, whose descriptors are fields set once).
    unsafe { AsyncFd::register_with_interest(Owner(owner), interest) }.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_registered_socket_becomes_readable_when_a_datagram_arrives() {
        let (a, b) = crate::sys::socket::seqpacket_pair().unwrap();
        let b = Arc::new(b);
        let watched = super::register(Arc::clone(&b)).unwrap();
        crate::sys::socket::send_datagram(a.as_fd(), &[b"x"], &[]).unwrap();
        let guard = watched.readable().await.unwrap();
        drop(guard);
        let mut buf = [0u8; 4];
        assert_eq!(crate::sys::socket::recv_datagram(b.as_fd(), &mut buf).unwrap().len, 1);
    }
}
