//! Everything that touches the kernel, behind one trait.
//!
//! The engine decides *what* to do; a [`Host`] does it. [`linux::LinuxHost`] makes the real
//! syscalls; [`fake::FakeHost`] records calls and fails on demand, for the engine's unit
//! tests. The engine receives its host as a value, never picks one by `cfg!(test)`.
//!
//! # Path-safety rules every implementation keeps
//! - Paths given to [`Host::remove_tree`] must lie beneath its `root`; the walk opens every
//!   component with `O_NOFOLLOW` relative to its parent's fd, unlinks symlinks instead of
//!   following them, and never descends into another mount (different `st_dev` or a mount
//!   point in `/proc/self/mountinfo`).
//! - A publish target that is a symlink is refused: `mount(2)` would follow it (a target
//!   `-> /` would mount over the root). Mounts are made onto an `O_PATH|O_NOFOLLOW` fd of the
//!   target through `/proc/self/fd/N`, so the path cannot be swapped between check and mount.
//! - Unmounts use `UMOUNT_NOFOLLOW`; "not mounted" is success, so every call is idempotent.

pub mod fake;
pub mod faults;
pub mod linux;
pub mod mountinfo;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::engine::types::{FsType, Ownership};

pub use mountinfo::MountEntry;

#[derive(Debug, Error)]
pub enum HostError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is a symbolic link; berth does not follow links here")]
    Symlink { path: PathBuf },
    #[error("{path} is not beneath {root}")]
    OutsideRoot { path: PathBuf, root: PathBuf },
    #[error("{path} is a mount point of another filesystem; berth does not cross it")]
    CrossesMount { path: PathBuf },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("injected failure: {0}")]
    Injected(String),
}

impl HostError {
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The errno behind an I/O failure, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What a publish target must be: a directory for filesystem volumes, a file to bind a
/// device node onto for block volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Directory,
    File,
}

/// `statvfs(2)` of a filesystem, in bytes and inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    pub bytes_total: u64,
    pub bytes_free: u64,
    /// Free to unprivileged users (what `df` shows as available).
    pub bytes_available: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// Space used by a directory tree, counted without following links or crossing mounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Allocated bytes (`st_blocks * 512`).
    pub bytes: u64,
    pub inodes: u64,
}

/// What a removal did, so a wipe can say how much it destroyed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovalStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// An attached loop device and the file behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopDevice {
    pub device: PathBuf,
    pub backing_file: PathBuf,
}

/// The kernel, as berth uses it. Every method is idempotent: doing it again after it
/// succeeded (or half-succeeded before a crash) succeeds and changes nothing more.
pub trait Host: Send + Sync {
    /// Creates the directory `dir` (its parent must exist), not following a symlink at `dir`,
    /// then applies `ownership` (uid/gid/mode) if given. An existing directory is fine.
    fn make_dir(&self, dir: &Path, ownership: &Ownership) -> Result<(), HostError>;

    /// Removes `path` and everything beneath it; `path` must be beneath `root`, or be `root`'s
    /// child. Symlinks are unlinked, never followed; other mounts are never entered. A missing
    /// `path` is success.
    fn remove_tree(&self, root: &Path, path: &Path) -> Result<RemovalStats, HostError>;

    /// `rename(2)` without replacing an existing `to`. Missing `from` with existing `to` is
    /// success (the rename already happened).
    fn rename(&self, from: &Path, to: &Path) -> Result<(), HostError>;

    /// Copies the tree at `from` into the existing directory `to`: files, directories and
    /// symlinks (as links), with modes and owners; never follows links or crosses mounts.
    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), HostError>;

    /// Makes sure `target` exists as `kind`; returns whether it was created. A symlink at
    /// `target` is refused.
    fn prepare_target(&self, target: &Path, kind: TargetKind) -> Result<bool, HostError>;

    /// Removes a target berth created (`rmdir` or `unlink` of an empty file). Missing is success;
    /// a non-empty directory is left in place and reported.
    fn remove_target(&self, target: &Path, kind: TargetKind) -> Result<(), HostError>;

    /// Bind-mounts `source` onto `target` (read-only if asked), refusing a symlinked target.
    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), HostError>;

    /// Unmounts `target` (without following a symlink). Not mounted is success.
    fn unmount(&self, target: &Path) -> Result<(), HostError>;

    /// The mount table of berth's mount namespace.
    fn mounts(&self) -> Result<Vec<MountEntry>, HostError>;

    /// Creates a sparse image file of `size` bytes and, with `fs`, makes that filesystem in it.
    /// An existing image of that size is left as it is.
    fn create_image(&self, image: &Path, size: u64, fs: Option<FsType>) -> Result<(), HostError>;

    /// Attaches `image` to a loop device (direct I/O, detached automatically on unmount) and
    /// mounts its filesystem at `target`. Already mounted there is success.
    fn mount_image(&self, image: &Path, target: &Path, fs: FsType) -> Result<(), HostError>;

    /// Grows `image` to `size` bytes, tells its loop devices, and grows the filesystem mounted
    /// at `mounted` (if any) online.
    fn grow_image(
        &self,
        image: &Path,
        size: u64,
        mounted: Option<(&Path, FsType)>,
    ) -> Result<(), HostError>;

    /// Attaches `image` to a loop device for block access and returns the device; an
    /// existing attachment of the same image is reused.
    fn attach_loop(&self, image: &Path) -> Result<PathBuf, HostError>;

    /// Detaches every loop device backed by `image`. None attached is success.
    fn detach_loop(&self, image: &Path) -> Result<(), HostError>;

    /// All attached loop devices and their backing files.
    fn loop_devices(&self) -> Result<Vec<LoopDevice>, HostError>;

    /// `statvfs(2)` of the filesystem holding `path`.
    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError>;

    /// Space and inodes used beneath `path`.
    fn tree_usage(&self, path: &Path) -> Result<TreeUsage, HostError>;

    /// Makes `path`'s data and its directory entry durable (`fsync` of the file and its parent).
    fn sync_path(&self, path: &Path) -> Result<(), HostError>;
}
