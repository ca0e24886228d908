//! The unsafe half of shared memory: turning a mapped range into a slice.

use memmap2::MmapRaw;

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

/// Takes the mapping out of its owner, to unmap it (drop it) or leave it mapped until the
/// process exits (forget it). For `Segment`'s `Drop` only.
pub(crate) fn take_mapping(map: &mut std::mem::ManuallyDrop<MmapRaw>) -> MmapRaw {
    // SAFETY: called once, from the `Drop` of the segment that owns `map`, which touches the
    // field no more afterwards; no slice of the mapping outlives the segment (every view
    // borrows the handle that holds the segment's `Arc`), so whoever unmaps it later unmaps
    // memory nothing points into.
    unsafe { std::mem::ManuallyDrop::take(map) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_read_and_write_the_mapping() {
        let fd = crate::sys::memfd::create_segment("ensemble:test-views", 4096).unwrap();
        let file = std::fs::File::from(fd);
        let map = memmap2::MmapOptions::new().len(4096).map_raw(&file).unwrap();
        // SAFETY: the range is in bounds and this test is the only user of the mapping.
        unsafe { bytes_mut(&map, 10, 3) }.copy_from_slice(b"abc");
        // SAFETY: as above; the mutable view above is gone.
        assert_eq!(unsafe { bytes(&map, 9, 5) }, b"\0abc\0");
    }

    fn mapped(name: &str) -> bool {
        std::fs::read_to_string("/proc/self/maps").unwrap().contains(name)
    }

    #[test]
    fn a_taken_mapping_is_unmapped_when_dropped_and_stays_when_forgotten() {
        for (name, forget) in [("ensemble:test-take-drop", false), ("ensemble:test-take-forget", true)] {
            let file = std::fs::File::from(crate::sys::memfd::create_segment(name, 4096).unwrap());
            let map = memmap2::MmapOptions::new().len(4096).map_raw(&file).unwrap();
            let mut owner = std::mem::ManuallyDrop::new(map);
            assert!(mapped(name));
            let taken = take_mapping(&mut owner);
            match forget {
                true => std::mem::forget(taken),
                false => drop(taken),
            }
            assert_eq!(mapped(name), forget, "{name}");
        }
    }
}
