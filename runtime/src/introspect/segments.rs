//! The segments a process holds: its descriptors whose link in `/proc/<pid>/fd` names an
//! ensemble memfd (`/memfd:ensemble:...`), with inode and size from `stat` through that link.
//! The inode is the memfd's identity across processes: two processes that list the same inode
//! share the memory. Mappings whose descriptor was closed are not listed (a `Segment` keeps its
//! descriptor for as long as it is mapped, so none of ensemble's are missed).

use super::SegmentInfo;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

/// The ensemble memfds among this process's descriptors, one entry per inode.
pub(super) fn held() -> std::io::Result<Vec<SegmentInfo>> {
    held_in(std::path::Path::new("/proc/self/fd"))
}

fn held_in(fds: &std::path::Path) -> std::io::Result<Vec<SegmentInfo>> {
    let mut by_inode: BTreeMap<u64, SegmentInfo> = BTreeMap::new();
    for entry in std::fs::read_dir(fds)? {
        let Ok(entry) = entry else { continue };
        let Ok(link) = std::fs::read_link(entry.path()) else { continue };
        let link = link.to_string_lossy();
        let Some(name) = link.strip_prefix("/memfd:").filter(|n| n.starts_with("ensemble:")) else {
            continue;
        };
        // The descriptor may have been closed since the directory was read: skip it then.
        let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
        let name = name.strip_suffix(" (deleted)").unwrap_or(name).to_owned();
        by_inode
            .entry(meta.ino())
            .or_insert(SegmentInfo { name, inode: meta.ino(), size: meta.size(), descriptors: 0 })
            .descriptors += 1;
    }
    Ok(by_inode.into_values().collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_created_segment_is_listed_once_with_its_inode_and_size() {
        let segment = crate::shm::Segment::create(8192).unwrap();
        let copy = segment.fd().try_clone_to_owned().unwrap();
        let held = super::held().unwrap();
        let meta =
            std::fs::metadata(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&copy))).unwrap();
        let listed =
            held.iter().find(|s| s.inode == std::os::unix::fs::MetadataExt::ino(&meta)).expect("listed");
        assert!(listed.name.starts_with("ensemble:"), "{}", listed.name);
        assert!(listed.size >= 8192);
        assert!(listed.descriptors >= 2);
    }
}
