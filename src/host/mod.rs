//! Everything that touches the kernel, behind one trait.
//!
//! The engine decides *what* to do; a [`Host`] does it. [`linux::LinuxHost`] makes the real
//! syscalls; `fake::FakeHost` records calls and fails on demand, for the engine's unit
//! tests (it and `faults` exist only under `cfg(test)` or the `testing` feature, so release
//! builds do not carry them). The engine receives its host as a value, never picks one by
//! `cfg!(test)`.
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
//! - A btrfs subvolume has its own `st_dev` without being a mount, so [`Host::remove_tree`]
//!   refuses a subvolume (`CrossesMount`) and never enters one nested in a tree: volumes that
//!   are subvolumes are removed with [`Host::btrfs_delete_subvolume`], which deletes the whole
//!   subvolume in the kernel (no walk, nothing followed) and refuses while anything is
//!   mounted inside it or from it.
//! - Per-volume paths (a subvolume, a project-quota directory) are opened with `O_NOFOLLOW`
//!   on their final component, like every other volume path. Paths that only name a
//!   filesystem (`fs_kind`, `btrfs_enable_quota`, `project_quota_support`, ...) are resolved
//!   normally, as [`Host::fs_stats`] does: berth's state directory may sit behind a symlink.

#[cfg(any(test, feature = "testing"))]
pub mod fake;
#[cfg(any(test, feature = "testing"))]
pub mod faults;
pub mod linux;
pub mod mountinfo;
pub mod probe;
pub mod signals;
pub mod types;
pub mod users;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use types::{FsType, Ownership};

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

    /// Whether this is an I/O failure because the path does not exist (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
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
    /// The filesystem's device number (`st_dev` of the path): equal for paths on one
    /// filesystem.
    pub device: u64,
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemovalStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// A loopfs volume's image file, reclaimed apart from the data counted above.
    pub image_bytes: u64,
    /// Set when the counts above are not all the volume held, saying why: its damaged
    /// filesystem could not all be read, or its directory was already gone.
    pub incomplete: Option<String>,
}

impl RemovalStats {
    /// Adds `other`'s counts to these (not its `incomplete`).
    pub fn add_counts(&mut self, other: &RemovalStats) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.bytes += other.bytes;
        self.image_bytes += other.image_bytes;
    }
}

/// What an export or an import of a tree moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Archive entries, the top directory not counted.
    pub entries: u64,
    /// Archive bytes written or read.
    pub bytes: u64,
}

/// What kind of filesystem holds a path: `statfs(2)`'s `f_type` (the superblock magic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsKind {
    Btrfs,
    Xfs,
    /// ext2, ext3 and ext4 share the magic `0xEF53`.
    Ext4,
    Tmpfs,
    Overlay,
    /// Any other filesystem, by its magic number.
    Other(i64),
}

impl FsKind {
    pub const BTRFS_MAGIC: i64 = 0x9123_683E;
    pub const XFS_MAGIC: i64 = 0x5846_5342;
    pub const EXT4_MAGIC: i64 = 0xEF53;
    pub const TMPFS_MAGIC: i64 = 0x0102_1994;
    pub const OVERLAY_MAGIC: i64 = 0x794C_7630;

    /// The kind for a `statfs` `f_type`.
    pub fn from_magic(magic: i64) -> Self {
        match magic {
            Self::BTRFS_MAGIC => Self::Btrfs,
            Self::XFS_MAGIC => Self::Xfs,
            Self::EXT4_MAGIC => Self::Ext4,
            Self::TMPFS_MAGIC => Self::Tmpfs,
            Self::OVERLAY_MAGIC => Self::Overlay,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Btrfs => f.write_str("btrfs"),
            Self::Xfs => f.write_str("xfs"),
            Self::Ext4 => f.write_str("ext4"),
            Self::Tmpfs => f.write_str("tmpfs"),
            Self::Overlay => f.write_str("overlay"),
            Self::Other(magic) => write!(f, "a filesystem with magic {magic:#x}"),
        }
    }
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

    /// [`Host::make_dir`] for each directory in order, each inside the one before it (a
    /// volume's directory and its data directory). Durable on return like `make_dir`, for
    /// fewer syncs than one `make_dir` after another.
    fn make_dirs(&self, dirs: &[(&Path, &Ownership)]) -> Result<(), HostError> {
        dirs.iter()
            .try_for_each(|(dir, ownership)| self.make_dir(dir, ownership))
    }

    /// Removes `path` and everything beneath it; `path` must be beneath `root`, or be `root`'s
    /// child. Symlinks are unlinked, never followed; other mounts are never entered. A missing
    /// `path` is success.
    fn remove_tree(&self, root: &Path, path: &Path) -> Result<RemovalStats, HostError> {
        let mut removed = RemovalStats::default();
        self.remove_tree_counting(root, path, &mut removed)?;
        Ok(removed)
    }

    /// [`Host::remove_tree`], counting into `removed` as it goes. An entry the walk cannot
    /// read or remove (a damaged filesystem answers `EIO`, `EUCLEAN` or `ENOTEMPTY`) does not
    /// stop it: everything else still goes and is counted, and the first such error is
    /// returned at the end, with `removed` saying what went.
    fn remove_tree_counting(
        &self,
        root: &Path,
        path: &Path,
        removed: &mut RemovalStats,
    ) -> Result<(), HostError>;

    /// `rename(2)` without replacing an existing `to`. Missing `from` with existing `to` is
    /// success (the rename already happened).
    fn rename(&self, from: &Path, to: &Path) -> Result<(), HostError>;

    /// Moves each of `paths` into the trash directory `trash` (made if missing, mode 0700;
    /// its parent is a pool base on the same filesystem) under a fresh name, then makes the
    /// moves durable (the trash and every old parent fsynced, after all the renames, so one
    /// journal commit carries them): the cheap, durable step of a delete, whose freeing of
    /// blocks [`Host::empty_trash`] does later. A `trash` that is a symlink or another
    /// mount is refused, as is a path that is a mount. Returns the bytes of the moved files.
    /// A missing path is skipped: it was moved before. A file on another filesystem than
    /// the trash is unlinked where it is instead.
    fn move_to_trash(&self, trash: &Path, paths: &[&Path]) -> Result<u64, HostError>;

    /// Removes everything in the trash directory `trash`: a symlink there is unlinked, never
    /// followed, and no other mount is entered. A missing trash is success. Returns how many
    /// entries went; an entry that cannot be removed does not stop the others, and the
    /// first such error is returned at the end.
    fn empty_trash(&self, trash: &Path) -> Result<u64, HostError>;

    /// Copies the tree at `from` into the existing directory `to`: files, directories and
    /// symlinks (as links), with modes and owners; never follows links or crosses mounts.
    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), HostError>;

    /// Writes the tree at `root` to `out` as a tar archive (GNU tar with pax extended
    /// headers): directories, files, symlinks as links (never followed), hard links,
    /// FIFOs and device nodes, with numeric owners, modes, mtimes and extended attributes
    /// (`SCHILY.xattr.*`); the first entry, `./`, is `root` itself. Read fd-relative beneath
    /// `root`; other mounts are not entered. A failed export ends `out` without an
    /// end-of-archive block, so no reader takes it for whole.
    fn export_tree(&self, root: &Path, out: &mut dyn io::Write) -> Result<ArchiveStats, HostError>;

    /// Unpacks the tar archive read from `input` beneath the existing directory `root`,
    /// fd-relative and without following any link: an entry with an absolute name, a `..`
    /// component or a name through a symlink is refused ([`HostError::OutsideRoot`],
    /// [`HostError::Symlink`]) before anything of it is written. Owners, modes, mtimes and
    /// `SCHILY.xattr.*` records are applied. Reads `input` to its end; an archive cut off
    /// before its end-of-archive block is an error.
    fn import_tree(&self, root: &Path, input: &mut dyn io::Read)
    -> Result<ArchiveStats, HostError>;

    /// Makes sure `target` exists as `kind`; returns whether it was created. A symlink at
    /// `target` is refused.
    fn prepare_target(&self, target: &Path, kind: TargetKind) -> Result<bool, HostError>;

    /// Whether anything (directory, file, symlink: not followed) is at `target`, so the
    /// engine can record before `prepare_target` whether berth is about to create it.
    fn target_exists(&self, target: &Path) -> Result<bool, HostError>;

    /// Removes a target berth created (`rmdir` or `unlink` of an empty file). Missing is success;
    /// a non-empty directory is left in place and reported.
    fn remove_target(&self, target: &Path, kind: TargetKind) -> Result<(), HostError>;

    /// Bind-mounts `source` onto `target` (read-only if asked), refusing a symlinked target.
    /// `source` must lie beneath the directory `root` (a pool path) and is opened from it
    /// without following any symlink: a `root` that is a symlink, or a link anywhere between
    /// `root` and `source`, is refused ([`HostError::Symlink`]), as is a `source` outside
    /// `root` ([`HostError::OutsideRoot`]).
    fn bind_mount(
        &self,
        root: &Path,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError>;

    /// Unmounts `target` (without following a symlink). Not mounted is success.
    fn unmount(&self, target: &Path) -> Result<(), HostError>;

    /// The mount table of berth's mount namespace.
    fn mounts(&self) -> Result<Vec<MountEntry>, HostError>;

    /// Creates an image file with every block allocated: `size` bytes for a block image; with
    /// `fs`, that filesystem, in an image large enough for the filesystem to hold `size`
    /// beside its own metadata. An existing image already made so is left as it is.
    fn create_image(&self, image: &Path, size: u64, fs: Option<FsType>) -> Result<(), HostError>;

    /// Attaches `image` to a loop device (direct I/O, detached automatically on unmount) and
    /// mounts its filesystem at `target`. Already mounted there is success.
    fn mount_image(&self, image: &Path, target: &Path, fs: FsType) -> Result<(), HostError>;

    /// Grows `image` to `size` bytes (with a filesystem mounted at `mounted`: until that
    /// filesystem holds `size`), the growth allocated, tells its loop devices, and grows the
    /// filesystem online. ext4's online grow (`EXT4_IOC_RESIZE_FS`) needs
    /// `CAP_SYS_RESOURCE`; without it, a filesystem mounted only at `mounted` (no other mount
    /// of it, i.e. not published) is grown offline: unmounted, checked, resized and mounted
    /// again with the same mount flags. A published one is refused with
    /// [`HostError::Unsupported`].
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

    /// The loop devices backed by the file `image` (matched by device and inode, so a
    /// replaced or deleted file does not match, and a path reached through a symlinked
    /// ancestor does).
    fn image_loops(&self, image: &Path) -> Result<Vec<PathBuf>, HostError>;

    /// Whether `path` (not followed if a symlink) is the root of a mount.
    fn is_mount_point(&self, path: &Path) -> Result<bool, HostError>;

    /// How many errors the ext4 filesystem on the block device `device` has recorded since it
    /// was made (`/sys/fs/ext4/<device>/errors_count`, kept in its superblock). `None` when
    /// the kernel keeps no such count for it (not ext4, or not mounted).
    fn fs_error_count(&self, device: &Path) -> Result<Option<u64>, HostError>;

    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): a random value fixed for
    /// one boot, new after every reboot.
    fn boot_id(&self) -> Result<String, HostError>;

    /// `statvfs(2)` of the filesystem holding `path`.
    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError>;

    /// Space and inodes used beneath `path`.
    fn tree_usage(&self, path: &Path) -> Result<TreeUsage, HostError>;

    /// Makes `path`'s data and its directory entry durable (`fsync` of the file and its parent).
    fn sync_path(&self, path: &Path) -> Result<(), HostError>;

    /// Walks from the directory `root` down through `relative` (plain names only), each step
    /// `openat` on the previous directory's fd with `O_NOFOLLOW`, so no path is checked and
    /// then used by name: a component that is a symbolic link is [`HostError::Symlink`], one
    /// that is not a directory an error. With `create`, a missing component is made (mode
    /// 0755, less the umask); without, the walk stops at the first missing one (it is made
    /// later) and changes nothing. `root` itself must not be a symbolic link.
    fn dirs_beneath(&self, root: &Path, relative: &Path, create: bool) -> Result<(), HostError>;

    /// Fills `buf` with random bytes from the kernel (`getrandom(2)`).
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError>;

    // --- Snapshots -----------------------------------------------------------------------

    /// Copies the image file `from` to `to` (created, or overwritten when a copy was left
    /// half-made), sharing blocks where the filesystem can (`FICLONE`), else as a sparse
    /// `copy_file_range` copy; `to` is durable when this returns. With `freeze`, the
    /// filesystem mounted there is frozen (`FIFREEZE`) for the copy and thawed afterwards,
    /// also when the copy fails.
    fn copy_image(&self, from: &Path, to: &Path, freeze: Option<&Path>) -> Result<(), HostError>;

    /// Thaws the filesystem mounted at `mount_point` (`FITHAW`), as recovery does after a
    /// crash during a frozen copy. Not frozen, not mounted or missing is success.
    fn thaw(&self, mount_point: &Path) -> Result<(), HostError>;

    /// Makes `to` a snapshot of the btrfs subvolume `from` (read-only if asked): made whole
    /// or not at all by the kernel; an existing subvolume at `to` is success.
    fn btrfs_snapshot(&self, from: &Path, to: &Path, read_only: bool) -> Result<(), HostError>;

    // --- Size enforcement: filesystem kind ---------------------------------------------

    /// The kind of filesystem holding `path` (`statfs(2)` `f_type`), resolved like
    /// [`Host::fs_stats`].
    fn fs_kind(&self, path: &Path) -> Result<FsKind, HostError>;

    // --- Size enforcement: btrfs subvolumes and qgroups --------------------------------

    /// Creates a btrfs subvolume at `path` (`BTRFS_IOC_SUBVOL_CREATE` on the parent directory;
    /// the parent must be on btrfs). An existing subvolume at `path` (a directory with inode
    /// 256 that is not a mount point) is success; an existing plain directory, a file or a
    /// symlink there is an error. A new subvolume is its own qgroup `0/<subvolume id>` when
    /// quotas are enabled.
    fn btrfs_create_subvolume(&self, path: &Path) -> Result<(), HostError>;

    /// Deletes the btrfs subvolume at `path` with everything in it (`BTRFS_IOC_SNAP_DESTROY`
    /// on the parent directory: the kernel unlinks the subvolume at once and frees its
    /// extents in the background). A missing `path` is success; a symlink at `path` is
    /// refused, never followed; a plain directory is refused (use [`Host::remove_tree`]).
    /// Refused while anything is mounted inside the subvolume or from it (a bind
    /// publication), and by the kernel (`ENOTEMPTY`) while it contains nested subvolumes.
    fn btrfs_delete_subvolume(&self, path: &Path) -> Result<(), HostError>;

    /// Enables btrfs quotas (qgroups) on the filesystem holding `fs_path`
    /// (`BTRFS_IOC_QUOTA_CTL` `ENABLE`). Enabled already is success. On a filesystem with
    /// data, the kernel starts a rescan; qgroup numbers of existing subvolumes are
    /// approximate until it ends, those of subvolumes created afterwards are exact.
    fn btrfs_enable_quota(&self, fs_path: &Path) -> Result<(), HostError>;

    /// Limits the referenced bytes of the subvolume at `subvolume` (`BTRFS_IOC_QGROUP_LIMIT`
    /// on its qgroup `0/<id>`, `BTRFS_QGROUP_LIMIT_MAX_RFER`). Writes beyond the limit fail
    /// with `EDQUOT` (btrfs accounts at extent granularity and reserves ahead, so the limit
    /// holds within some slack). `bytes == 0` removes the limit. Needs quotas enabled.
    fn btrfs_set_limit(&self, subvolume: &Path, bytes: u64) -> Result<(), HostError>;

    /// Bytes referenced by the subvolume at `subvolume`: its qgroup's `referenced` count as
    /// of the last transaction commit (from `/sys/fs/btrfs/<fsid>/qgroups/0_<id>/`). `inodes`
    /// is 0: btrfs does not count inodes per subvolume. When quotas are off, the qgroup
    /// numbers are marked inconsistent, or the kernel has no such sysfs file, this falls back
    /// to [`Host::tree_usage`] (a walk, with an inode count).
    fn btrfs_usage(&self, subvolume: &Path) -> Result<TreeUsage, HostError>;

    // --- Size enforcement: project quotas (xfs, ext4) -----------------------------------

    /// Whether project quotas can be set on the filesystem holding `path`: it is xfs or ext4,
    /// the kernel has quota support for it, project quota accounting is on and limits are
    /// enforced (mounted with `prjquota`; ext4 also needs the `quota` and `project`
    /// features). `Err(HostError::Unsupported)` says which of these is missing.
    fn project_quota_support(&self, path: &Path) -> Result<(), HostError>;

    /// Puts the directory `dir` in project `project_id` (`FS_IOC_FSSETXATTR`: `fsx_projid`
    /// and `FS_XFLAG_PROJINHERIT`, so what is created inside inherits the project) and sets
    /// the project's hard block limit to `limit_bytes`, rounded up to 512-byte blocks
    /// (`quotactl(Q_XSETQLIM, PRJQUOTA)`); 0 means no limit. Only `dir` itself is tagged:
    /// files that already exist inside keep their project, so call this on an empty
    /// directory. Writes beyond the limit fail with `ENOSPC` on XFS (for every writer, root
    /// included) and `EDQUOT` on ext4 (only for writers without `CAP_SYS_RESOURCE`, which
    /// ext4's generic quota code lets through); `statfs` inside `dir` then
    /// reports the project's limit as the size. `project_id` 0 is refused.
    fn set_project_quota(
        &self,
        dir: &Path,
        project_id: u32,
        limit_bytes: u64,
    ) -> Result<(), HostError>;

    /// Removes the limit of project `project_id` and takes `dir` out of it (project 0, no
    /// inherit flag). A missing `dir` only clears the limit; a `dir` in another project is
    /// refused. On a filesystem without active project quotas only the directory is reset.
    fn clear_project_quota(&self, dir: &Path, project_id: u32) -> Result<(), HostError>;

    /// Blocks (as bytes) and inodes charged to project `project_id` on the filesystem
    /// holding `path` (`quotactl(Q_XGETQUOTA)`); a project without a quota record uses 0.
    fn project_quota_usage(&self, path: &Path, project_id: u32) -> Result<TreeUsage, HostError>;

    /// Project ids already taken: those named in `/etc/projid` and `/etc/projects`, and the
    /// projects of `fs_path` and of its immediate subdirectories. 0 is never listed.
    fn project_ids_in_use(&self, fs_path: &Path) -> Result<BTreeSet<u32>, HostError>;
}
