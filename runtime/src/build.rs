//! The identity of a build, checked in the handshake so that a child built from other code is
//! refused instead of misreading the parent's bytes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::os::unix::fs::MetadataExt;

/// Version of the handshake and wire format. Bumped whenever a frame changes shape.
pub const PROTOCOL_VERSION: u32 = 3;

/// Environment variable mixed into the build identity. Two processes whose values differ refuse
/// each other, which lets a deployment tell apart builds that share an executable path.
pub const BUILD_SALT_ENV: &str = "ENSEMBLE_BUILD_SALT";

/// What a process is built from: the ensemble version, the executable file and an optional salt.
///
/// Children are started from `/proc/self/exe`, the very file the parent runs, so the identities
/// match unless the executable was replaced in between or the salt differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildId {
    /// `CARGO_PKG_VERSION` of ensemble-runtime.
    pub runtime_version: String,
    /// Device, inode, size and modification time (ns) of the running executable.
    pub executable: (u64, u64, u64, i128),
    /// The value of [`BUILD_SALT_ENV`], empty when unset.
    pub salt: String,
}

impl BuildId {
    /// The identity of the running process.
    pub fn current() -> BuildId {
        let executable = std::fs::metadata("/proc/self/exe")
            .map(|m| {
                let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
                (m.dev(), m.ino(), m.size(), mtime)
            })
            .unwrap_or_default();
        BuildId {
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
            executable,
            salt: std::env::var(BUILD_SALT_ENV).unwrap_or_default(),
        }
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (dev, ino, size, mtime) = self.executable;
        write!(
            f,
            "ensemble-runtime {}, executable dev {dev} inode {ino} size {size} mtime {mtime}",
            self.runtime_version
        )?;
        if !self.salt.is_empty() {
            write!(f, ", salt {:?}", self.salt)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_build_is_stable_within_a_process() {
        assert_eq!(BuildId::current(), BuildId::current());
    }

    #[test]
    fn the_identity_names_the_running_executable() {
        let id = BuildId::current();
        let exe = std::fs::metadata(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(id.executable.1, exe.ino());
        assert_eq!(id.executable.2, exe.size());
    }
}
