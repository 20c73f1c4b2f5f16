//! The fake's model of the machine: directories, mounts, images, loop devices, quotas, and
//! the calls recorded so far.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::host::types::Ownership;
use crate::host::{FsKind, HostError, TreeUsage};

/// One recorded call: the operation and its main path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: &'static str,
    pub path: PathBuf,
}

#[derive(Default)]
pub(super) struct Model {
    pub(super) dirs: BTreeSet<PathBuf>,
    /// The ownership last applied to each directory by `make_dir`.
    pub(super) ownership: BTreeMap<PathBuf, Ownership>,
    pub(super) files: BTreeSet<PathBuf>,
    /// mount point -> (source, read-only)
    pub(super) mounts: BTreeMap<PathBuf, (PathBuf, bool)>,
    /// image -> size
    pub(super) images: BTreeMap<PathBuf, u64>,
    /// device -> image
    pub(super) loops: BTreeMap<PathBuf, PathBuf>,
    pub(super) next_loop: u32,
    pub(super) calls: Vec<Call>,
    pub(super) fail_at_call: Option<usize>,
    pub(super) fail_ops: BTreeSet<&'static str>,
    pub(super) crash_ops: BTreeSet<&'static str>,
    /// path prefix -> filesystem kind (longest prefix wins; ext4 elsewhere)
    pub(super) fs_kinds: BTreeMap<PathBuf, FsKind>,
    /// btrfs subvolume -> referenced-bytes limit
    pub(super) subvolumes: BTreeMap<PathBuf, Option<u64>>,
    /// paths on which btrfs quotas were enabled (covering everything beneath)
    pub(super) btrfs_quota: BTreeSet<PathBuf>,
    pub(super) project_quotas: bool,
    /// directory -> (project id, limit in bytes; 0 = none)
    pub(super) projects: BTreeMap<PathBuf, (u32, u64)>,
    /// ids "in /etc/projid"
    pub(super) reserved_project_ids: BTreeSet<u32>,
    /// Counts reboots: the boot id is derived from it.
    pub(super) boots: u32,
    /// device -> errors its filesystem recorded
    pub(super) fs_errors: BTreeMap<PathBuf, u64>,
    /// Symbolic links someone planted (`dirs_beneath` refuses them).
    pub(super) symlinks: BTreeSet<PathBuf>,
    /// Bytes handed out by `random_bytes` so far: the next ones differ.
    pub(super) random_counter: u64,
    /// directories a damaged filesystem can no longer empty (see `FakeHost::damage_dir`)
    pub(super) damaged: BTreeSet<PathBuf>,
}

impl Model {
    pub(super) fn kind_of(&self, path: &Path) -> FsKind {
        self.fs_kinds
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.components().count())
            .map_or(FsKind::Ext4, |(_, kind)| *kind)
    }

    pub(super) fn require_btrfs(&self, path: &Path) -> Result<(), HostError> {
        match self.kind_of(path) {
            FsKind::Btrfs => Ok(()),
            other => Err(HostError::Unsupported(format!(
                "{} is on {other}, not btrfs",
                path.display()
            ))),
        }
    }

    pub(super) fn require_subvolume(&self, path: &Path) -> Result<(), HostError> {
        self.require_btrfs(path)?;
        if self.subvolumes.contains_key(path) {
            Ok(())
        } else if self.dirs.contains(path) {
            Err(invalid(path, "is a plain directory, not a btrfs subvolume"))
        } else {
            Err(not_found("subvolume", path))
        }
    }

    pub(super) fn require_project_quotas(&self, path: &Path) -> Result<(), HostError> {
        if self.project_quotas {
            Ok(())
        } else {
            Err(HostError::Unsupported(format!(
                "fake host: project quotas are off for {}",
                path.display()
            )))
        }
    }

    pub(super) fn usage_beneath(&self, path: &Path) -> TreeUsage {
        let inodes = self.dirs.iter().filter(|d| d.starts_with(path)).count() as u64;
        TreeUsage {
            bytes: inodes * 4096,
            inodes,
        }
    }
}

pub(super) fn not_found(op: &'static str, path: &Path) -> HostError {
    HostError::io(op, path, std::io::Error::from_raw_os_error(libc::ENOENT))
}

pub(super) fn invalid(path: &Path, message: &str) -> HostError {
    HostError::io(
        "fake",
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, message.to_string()),
    )
}
