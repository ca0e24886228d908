//! The unsafe half of shared memory: allocating and linking segment files, and turning a mapped
//! range into a slice.

use memmap2::MmapRaw;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Allocates `len` bytes of `file` up front, so that a full tmpfs fails here with `ENOSPC`
/// instead of with `SIGBUS` on a later write.
///
/// # Errors
/// The `posix_fallocate` error (`ENOSPC` when it does not fit).
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: the fd is valid for the lifetime of `file`; posix_fallocate only reads its integer
    // arguments and returns an error number instead of setting errno.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Gives the anonymous (`O_TMPFILE`) `file` the name `path`, atomically: the file appears in
/// the directory already allocated and already locked by us.
///
/// # Errors
/// The `linkat` error (e.g. `EEXIST`).
pub fn link_anonymous(file: &File, path: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let source = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL in a number");
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a segment path"))?;
    // SAFETY: both pointers come from live CStrings (NUL-terminated) that outlive the call;
    // AT_FDCWD with absolute paths touches no other fd.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            source.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The bytes `offset .. offset + len` of `map`, for reading.
///
/// # Safety
/// `offset + len <= map.len()`, and no one may write these bytes while the returned slice
/// lives: in this process or another. The segment-ownership types guarantee it: read views
/// exist only for frozen segments, and write views only for a range one value owns.
pub(crate) unsafe fn bytes(map: &MmapRaw, offset: usize, len: usize) -> &[u8] {
    debug_assert!(offset + len <= map.len());
    // SAFETY: the caller guarantees the range is inside the mapping and not written
    // concurrently; the mapping lives as long as the borrow of `map`.
    unsafe { std::slice::from_raw_parts(map.as_ptr().add(offset), len) }
}

/// The bytes `offset .. offset + len` of `map`, for writing.
///
/// # Safety
/// As [`bytes`], and in addition no other reference to these bytes may exist while the
/// returned slice lives: the caller owns the range exclusively.
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn bytes_mut(map: &MmapRaw, offset: usize, len: usize) -> &mut [u8] {
    debug_assert!(offset + len <= map.len());
    // SAFETY: the caller guarantees exclusive ownership of an in-bounds range; the mapping is
    // shared and writable (map_raw maps PROT_READ | PROT_WRITE, MAP_SHARED).
    unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().add(offset), len) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn anonymous() -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open("/dev/shm")
            .unwrap()
    }

    #[test]
    fn allocation_reserves_the_pages() {
        let file = anonymous();
        allocate(&file, 1 << 20).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
    }

    #[test]
    fn allocating_more_than_fits_is_enospc() {
        let file = anonymous();
        let err = allocate(&file, 1 << 62).unwrap_err();
        assert!(matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EFBIG)), "{err}");
    }

    #[test]
    fn an_anonymous_file_gets_its_name_atomically() {
        let file = anonymous();
        let path = std::env::temp_dir().join(format!("ensemble-sys-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let path = Path::new("/dev/shm").join(path.file_name().unwrap());
        link_anonymous(&file, &path).unwrap();
        assert!(path.exists());
        assert!(link_anonymous(&file, &path).is_err(), "an existing name is not replaced");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn views_read_and_write_the_mapping() {
        let file = anonymous();
        allocate(&file, 4096).unwrap();
        let map = memmap2::MmapOptions::new().len(4096).map_raw(&file).unwrap();
        // SAFETY: the range is in bounds and this test is the only user of the mapping.
        unsafe { bytes_mut(&map, 10, 3) }.copy_from_slice(b"abc");
        // SAFETY: as above; the mutable view above is gone.
        assert_eq!(unsafe { bytes(&map, 9, 5) }, b"\0abc\0");
    }
}
