//! Anonymous memory files (memfd) that carry large frame bodies: written once by the sender,
//! sealed, and mapped read-only by the receiver.
//!
//! A sealed memfd cannot change under its reader: `F_SEAL_WRITE` forbids writes by anyone (also
//! through `/proc/PID/fd`), `F_SEAL_SHRINK` forbids the truncation that would turn a read of the
//! mapping into `SIGBUS`, and `F_SEAL_SEAL` freezes the set. The receiver checks all three
//! before it maps.

use memmap2::Mmap;
use rustix::fs::{MemfdFlags, SealFlags};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, OwnedFd};

/// The seals a frame body's memfd must carry before its receiver maps it.
const BODY_SEALS: SealFlags =
    SealFlags::WRITE.union(SealFlags::SHRINK).union(SealFlags::GROW).union(SealFlags::SEAL);

/// A memfd being written; [`BodyWriter::seal`] turns it into a frame body.
#[derive(Debug)]
pub struct BodyWriter {
    file: io::BufWriter<File>,
    len: u64,
}

impl BodyWriter {
    /// A new empty memfd named `name` (it shows in `/proc/PID/fd` as `memfd:NAME`).
    ///
    /// # Errors
    /// The `memfd_create` error (`EMFILE`, `ENOMEM`).
    pub fn new(name: &str) -> io::Result<BodyWriter> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        Ok(BodyWriter { file: io::BufWriter::with_capacity(1 << 20, File::from(fd)), len: 0 })
    }

    /// How many bytes were written so far.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Overwrites the first bytes written (a frame's prefix, known only once its body is).
    ///
    /// # Errors
    /// The `pwrite` error.
    pub fn patch_start(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.flush()?;
        self.file.get_ref().write_all_at(bytes, 0)
    }

    /// Flushes, seals against every change and returns the descriptor.
    ///
    /// # Errors
    /// The `write` error (`ENOMEM`, `ENOSPC` from a cgroup limit) or the `fcntl` error.
    pub fn seal(self) -> io::Result<OwnedFd> {
        let file = self.file.into_inner().map_err(io::IntoInnerError::into_error)?;
        let fd = OwnedFd::from(file);
        rustix::fs::fcntl_add_seals(&fd, BODY_SEALS)?;
        Ok(fd)
    }
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A new segment memfd named `name`, allocated to `len` bytes (so that no later write can fail
/// for lack of memory) and sealed against resizing.
///
/// # Errors
/// The `memfd_create`, `fallocate` (`ENOMEM`, `ENOSPC` under a cgroup limit) or `fcntl` error.
pub fn create_segment(name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)?;
    Ok(fd)
}

/// The seals a memfd carries.
///
/// # Errors
/// `EINVAL` when `fd` is not a memfd (or another file that supports seals).
pub fn seals(fd: BorrowedFd<'_>) -> io::Result<SealFlags> {
    Ok(rustix::fs::fcntl_get_seals(fd)?)
}

/// Adds `seals` to a memfd.
///
/// # Errors
/// `EBUSY` for a write seal while a writable mapping exists; `EPERM` once sealed against seals.
pub fn add_seals(fd: BorrowedFd<'_>, seals: SealFlags) -> io::Result<()> {
    Ok(rustix::fs::fcntl_add_seals(fd, seals)?)
}

/// Why a received body descriptor was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyMapError {
    /// It lacks seals the receiver relies on.
    #[error("the body's memfd is not sealed against change (seals {0:#x})")]
    NotSealed(u32),
    /// Its size is not the length the frame announced.
    #[error("the body's memfd holds {actual} bytes, the frame announced {announced}")]
    WrongSize {
        /// From the frame header.
        announced: u64,
        /// From `fstat`.
        actual: u64,
    },
    /// It is not a memfd (seals cannot be read) or it cannot be mapped.
    #[error("the body's descriptor cannot be used")]
    Unusable(#[source] io::Error),
}

/// Maps a received body of `announced` bytes read-only, after checking its seals and size.
///
/// # Errors
/// [`BodyMapError`] when the descriptor is not a sealed memfd of exactly that size.
pub fn map_body(fd: BorrowedFd<'_>, announced: u64) -> Result<Mmap, BodyMapError> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| BodyMapError::Unusable(e.into()))?;
    if !seals.contains(BODY_SEALS) {
        return Err(BodyMapError::NotSealed(seals.bits()));
    }
    let actual = rustix::fs::fstat(fd).map_err(|e| BodyMapError::Unusable(e.into()))?.st_size as u64;
    if actual != announced {
        return Err(BodyMapError::WrongSize { announced, actual });
    }
    let file = File::from(fd.try_clone_to_owned().map_err(BodyMapError::Unusable)?);
    // SAFETY: memmap2 requires that the file is not changed or truncated while mapped, or the
    // slice would change under safe code (or fault with SIGBUS). The seals checked above
    // (write, shrink, grow, and the seal on seals) make the memfd immutable for every process,
    // for as long as it exists, and its size is the one we map.
    let map = unsafe { Mmap::map(&file) }.map_err(BodyMapError::Unusable)?;
    Ok(map)
}

/// The name of a descriptor as `/proc/self/fd` shows it.
pub fn fd_link(fd: BorrowedFd<'_>) -> io::Result<String> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(link.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn written(bytes: &[u8]) -> OwnedFd {
        let mut writer = BodyWriter::new("ensemble-test-body").unwrap();
        writer.write_all(bytes).unwrap();
        assert_eq!(writer.len(), bytes.len() as u64);
        writer.seal().unwrap()
    }

    #[test]
    fn a_sealed_body_maps_with_its_bytes_and_its_name_shows() {
        let fd = written(b"a large body");
        assert_eq!(&map_body(fd.as_fd(), 12).unwrap()[..], b"a large body");
        assert!(fd_link(fd.as_fd()).unwrap().starts_with("/memfd:ensemble-test-body"));
    }

    #[test]
    fn a_sealed_body_cannot_be_written_by_anyone() {
        let fd = written(b"frozen");
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let err = std::fs::OpenOptions::new().write(true).open(path).and_then(|mut f| f.write_all(b"x"));
        assert!(err.is_err(), "a write through /proc succeeded");
    }

    #[test]
    fn a_wrong_size_or_missing_seals_are_refused() {
        let fd = written(b"12345");
        assert!(matches!(map_body(fd.as_fd(), 6), Err(BodyMapError::WrongSize { announced: 6, actual: 5 })));
        let open = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&open, 5).unwrap();
        assert!(matches!(map_body(open.as_fd(), 5), Err(BodyMapError::NotSealed(_))));
        let (socket, _) = crate::sys::socket::seqpacket_pair().unwrap();
        assert!(matches!(map_body(socket.as_fd(), 5), Err(BodyMapError::Unusable(_))));
    }
}
