//! The real [`Host`]: syscalls on a Linux kernel (5.12 or newer; developed on 6.x).
//!
//! # Kernel semantics relied on
//! - **`O_PATH` fds and `/proc/self/fd/N`.** An `open(O_PATH|O_NOFOLLOW)` of a symlink returns
//!   a descriptor of the link itself (seen as `S_IFLNK` by `fstat`), so opening a path that way
//!   and checking the type is a race-free "is this a symlink?" test. Mounting onto (or from)
//!   `/proc/self/fd/N` makes the kernel resolve that magic link to exactly the object the fd
//!   holds, so the path can not be swapped for a symlink between the check and the mount.
//!   After a mount onto `/proc/self/fd/N` the new mount sits on top of the dentry the fd still
//!   refers to; to remount the *new* mount (read-only bind) the target is resolved again
//!   (`O_PATH|O_NOFOLLOW`), which crosses into the top mount, and the result is checked to be
//!   the mount root of the bind we just made (same inode as the source) before remounting.
//! - **`statx(2)` with `STATX_MNT_ID` and `STATX_ATTR_MOUNT_ROOT`** (5.8+) tells whether an fd or
//!   a directory entry is the root of a mount and which line of `/proc/self/mountinfo` (first
//!   field) it belongs to. Tree walks use it, together with `st_dev` and a one-time look at
//!   mountinfo, to never enter another mount, including bind mounts of the same filesystem.
//! - **`UMOUNT_NOFOLLOW`**: `umount2` does not follow a symlink in the final component, so an
//!   unmount of a target that became a link does not unmount whatever it points at. `EINVAL`
//!   (not a mount point) and `ENOENT` count as "already unmounted". Each call removes the
//!   topmost mount only: a target with stacked mounts needs one call per mount.
//! - **Loop devices** are configured with `LOOP_CONFIGURE` (5.8+) on a device number from
//!   `LOOP_CTL_GET_FREE`, never with `losetup`. `LO_FLAGS_AUTOCLEAR` makes the kernel detach
//!   the device when its last opener goes away: for [`Host::mount_image`] berth holds the
//!   device open across `mount(2)`, so once mounted the filesystem is the only user and the
//!   device disappears by itself at unmount (this happens in the release path of the last
//!   close, so it may be visible in `/sys` a moment later). `LOOP_CLR_FD` on a device that is
//!   still open elsewhere only marks it autoclear and returns success; it goes on last close.
//!   `EBUSY` from `LOOP_CONFIGURE` means another process took the "free" device first: berth
//!   asks for the next one. Devices are buffered, without `LO_FLAGS_DIRECT_IO`: on the
//!   kernels measured, direct I/O through a loop device cost a scheduler tick per request
//!   (benches/data_path.rs); the inner filesystem's flushes still reach the disk, as an fsync
//!   of the image.
//! - Two loop devices over one image file are two independent block devices: mounting both
//!   would corrupt the filesystem. So every path that needs a device first looks for one
//!   already backed by the image (matched by device and inode of the backing file).
//! - Filesystems are made and grown by `mkfs.ext4`/`mkfs.xfs`, `resize2fs` (online grow of a
//!   mounted ext4 through its device) and `xfs_growfs` (online, through the mount point).
//!   Recent xfsprogs refuse XFS filesystems smaller than 300 MiB.
//! - **ext4 online grow needs `CAP_SYS_RESOURCE`** (`EXT4_IOC_RESIZE_FS` checks it; resize2fs
//!   then says "Permission denied to resize filesystem"). Sandboxed roots may lack it, so
//!   [`Host::grow_image`] checks it with `capget(2)` and, without it (or when resize2fs is
//!   refused anyway), grows offline — but only a filesystem with no other mount than the one
//!   it was given (no bind publications: another line in mountinfo with the same device
//!   means a container may be using it). Offline: hold the (autoclear) loop device open so
//!   it survives the unmount, `umount`, `e2fsck -f -p`, extend the image, `resize2fs`, and
//!   mount the device at the same place again with the same per-mount flags, also when the
//!   check or resize failed. A busy mount point (open files, submounts) makes the unmount
//!   fail with `EBUSY` before anything changed; a grow that cannot go offline is refused
//!   before the image is extended. Mounts in other mount namespaces are not in our
//!   mountinfo; if the filesystem is still mounted in one, `e2fsck`'s exclusive open of the
//!   device fails ("is in use") and the filesystem is mounted back unchanged, its image
//!   not extended yet. A mount of a subdirectory of the filesystem (mountinfo root other
//!   than `/`) is not remounted: refused.
//! - **Size enforcement** lives in two submodules: `btrfs` (subvolumes and qgroup limits
//!   through `BTRFS_IOC_*` ioctls) and `quota` (xfs/ext4 project quotas through
//!   `FS_IOC_FSSETXATTR` and `quotactl(2)`). Their module docs list the kernel behaviour they
//!   rely on. `fs_kind` is `fstatfs(2)`'s `f_type`.
//! - **Boot id and filesystem errors**: `kernel_state` reads
//!   `/proc/sys/kernel/random/boot_id` and ext4's `/sys/fs/ext4/<device>/errors_count`.
//! - **Bind sources** are opened beneath their pool path with `openat2(2)`
//!   (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, 5.6+) and mounted from that fd.
//! - **Snapshots**: `snapshot` copies loopfs images (`FICLONE`, else a sparse copy) with the
//!   volume's filesystem frozen (`FIFREEZE`/`FITHAW`); `btrfs` makes read-only subvolume
//!   snapshots (`BTRFS_IOC_SNAP_CREATE_V2`).
//! - **Archives**: `export` writes a tree as tar through the tree walker, `import` unpacks
//!   one, opening every directory of every entry fd-relative with `O_NOFOLLOW` from the
//!   top; `xattr` reads and writes extended attributes without following links.
//!
//! Path resolution: the final component of every path berth acts on (a directory it makes, a
//! target, an image, a tree's top) is never followed, and neither is the directory it acts
//! in (a pool root, a target's parent): a pool path that is a symlink is refused at start,
//! and a pool root swapped for a symlink while berth runs is refused, not followed. The
//! ancestors above that are resolved normally, because berth's own state directory may
//! legitimately sit behind a symlink (`/var/lib/berth -> /data/berth`); they are berth's or
//! the orchestrator's, never a container's. Below a tree's top every component is opened
//! fd-relative with `O_NOFOLLOW`.
//!
//! Tree walks ([`Host::remove_tree`], [`Host::copy_tree`], [`Host::tree_usage`],
//! [`Host::export_tree`]) use an
//! explicit stack and keep at most [`MAX_OPEN_DIRS`] directory fds open; a directory whose fd
//! was closed is reopened through `..` of its child (checked by device and inode), so neither
//! the native stack nor the fd table limits the depth of a tree.

mod btrfs;
mod copy;
mod dir_sync;
mod dirs;
mod export;
mod fd;
mod fs_size;
mod group;
mod grow;
mod image;
mod import;
mod kernel_state;
mod loopdev;
mod memory;
mod mount;
mod quota;
mod random;
mod snapshot;
mod trash;
mod walk;
mod xattr;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::host::types::{FsType, Ownership};
use crate::host::{
    ArchiveStats, FsKind, FsStats, Host, HostError, LoopDevice, MountEntry, RemovalStats,
    TargetKind, TreeUsage,
};
use copy::copy_tree;
use dirs::{fs_stats, make_dir, make_dirs, prepare_target, remove_target, rename, sync_path};
use fd::{fd_kind, nix_err, read_mountinfo, statx_path};
pub use group::{group_id, set_group};
use grow::grow_image;
use image::{create_image, mount_image};
use loopdev::{attach_loop, detach_loop, loops_of, sys_loops};
pub use memory::{limit_allocator_arenas, release_free_memory, restart_without_thread_cache};
use mount::{bind_mount, unmount};
use walk::{remove_tree, tree_usage};

/// How many directory fds a tree walk keeps open at most (besides the top's).
pub const MAX_OPEN_DIRS: usize = 64;

/// The kernel, for real. Every method reads the state it needs from the kernel; the only
/// state kept is a lock that serializes loop-device work within this process, so two
/// concurrent calls can not both find an image unattached and attach it twice (the engine is
/// expected to serialize work on one volume anyway; across processes nothing is locked), and
/// a first guess of each image size that held its filesystem's asked size.
#[derive(Debug, Default)]
pub struct LinuxHost {
    loops: Mutex<()>,
    image_sizes: fs_size::SizeMemory,
}

impl LinuxHost {
    pub fn new() -> Self {
        Self::default()
    }

    fn loop_lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic while holding it leaves nothing inconsistent.
        self.loops.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Host for LinuxHost {
    fn make_dir(&self, dir: &Path, ownership: &Ownership) -> Result<(), HostError> {
        make_dir(dir, ownership)
    }

    fn make_dirs(&self, dirs: &[(&Path, &Ownership)]) -> Result<(), HostError> {
        make_dirs(dirs)
    }

    fn remove_tree_counting(
        &self,
        root: &Path,
        path: &Path,
        removed: &mut RemovalStats,
    ) -> Result<(), HostError> {
        remove_tree(root, path, removed)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        rename(from, to)
    }

    fn move_to_trash(&self, trash: &Path, paths: &[&Path]) -> Result<u64, HostError> {
        trash::move_to_trash(trash, paths)
    }

    fn empty_trash(&self, trash: &Path) -> Result<u64, HostError> {
        trash::empty_trash(trash)
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        copy_tree(from, to)
    }

    fn export_tree(
        &self,
        root: &Path,
        out: &mut dyn std::io::Write,
    ) -> Result<ArchiveStats, HostError> {
        export::export_tree(root, out)
    }

    fn import_tree(
        &self,
        root: &Path,
        input: &mut dyn std::io::Read,
    ) -> Result<ArchiveStats, HostError> {
        import::import_tree(root, input)
    }

    fn prepare_target(&self, target: &Path, kind: TargetKind) -> Result<bool, HostError> {
        prepare_target(target, kind)
    }

    fn target_exists(&self, target: &Path) -> Result<bool, HostError> {
        match std::fs::symlink_metadata(target) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(HostError::io("stat", target, e)),
        }
    }

    fn remove_target(&self, target: &Path, kind: TargetKind) -> Result<(), HostError> {
        remove_target(target, kind)
    }

    fn bind_mount(
        &self,
        root: &Path,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError> {
        bind_mount(root, source, target, read_only)
    }

    fn unmount(&self, target: &Path) -> Result<(), HostError> {
        unmount(target)
    }

    fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        read_mountinfo()
    }

    fn create_image(&self, image: &Path, size: u64, fs: Option<FsType>) -> Result<(), HostError> {
        create_image(image, size, fs, &self.image_sizes)
    }

    fn mount_image(&self, image: &Path, target: &Path, fs: FsType) -> Result<(), HostError> {
        let _lock = self.loop_lock();
        mount_image(image, target, fs)
    }

    fn grow_image(
        &self,
        image: &Path,
        size: u64,
        mounted: Option<(&Path, FsType)>,
    ) -> Result<(), HostError> {
        let _lock = self.loop_lock();
        grow_image(image, size, mounted)
    }

    fn attach_loop(&self, image: &Path) -> Result<PathBuf, HostError> {
        let _lock = self.loop_lock();
        attach_loop(image)
    }

    fn detach_loop(&self, image: &Path) -> Result<(), HostError> {
        let _lock = self.loop_lock();
        detach_loop(image)
    }

    fn loop_devices(&self) -> Result<Vec<LoopDevice>, HostError> {
        Ok(sys_loops()?
            .into_iter()
            .map(|l| LoopDevice {
                device: l.device,
                backing_file: l.backing,
            })
            .collect())
    }

    fn image_loops(&self, image: &Path) -> Result<Vec<PathBuf>, HostError> {
        Ok(loops_of(image)?.into_iter().map(|l| l.device).collect())
    }

    fn is_mount_point(&self, path: &Path) -> Result<bool, HostError> {
        Ok(statx_path(path)?.mount_root)
    }

    fn fs_error_count(&self, device: &Path) -> Result<Option<u64>, HostError> {
        kernel_state::fs_error_count(Path::new(kernel_state::EXT4_SYSFS), device)
    }

    fn boot_id(&self) -> Result<String, HostError> {
        kernel_state::boot_id()
    }

    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        fs_stats(path)
    }

    fn tree_usage(&self, path: &Path) -> Result<TreeUsage, HostError> {
        tree_usage(path)
    }

    fn sync_path(&self, path: &Path) -> Result<(), HostError> {
        sync_path(path)
    }

    fn dirs_beneath(&self, root: &Path, relative: &Path, create: bool) -> Result<(), HostError> {
        dirs::dirs_beneath(root, relative, create)
    }

    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        random::fill(buf)
    }

    fn copy_image(&self, from: &Path, to: &Path, freeze: Option<&Path>) -> Result<(), HostError> {
        snapshot::copy_image(from, to, freeze)
    }

    fn thaw(&self, mount_point: &Path) -> Result<(), HostError> {
        snapshot::thaw(mount_point)
    }

    fn btrfs_snapshot(&self, from: &Path, to: &Path, read_only: bool) -> Result<(), HostError> {
        btrfs::snapshot_subvolume(from, to, read_only)
    }

    fn fs_kind(&self, path: &Path) -> Result<FsKind, HostError> {
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| nix_err("open", path, e))?;
        fd_kind(fd.as_fd(), path)
    }

    fn btrfs_create_subvolume(&self, path: &Path) -> Result<(), HostError> {
        btrfs::create_subvolume(path)
    }

    fn btrfs_delete_subvolume(&self, path: &Path) -> Result<(), HostError> {
        btrfs::delete_subvolume(path)
    }

    fn btrfs_enable_quota(&self, fs_path: &Path) -> Result<(), HostError> {
        btrfs::enable_quota(fs_path)
    }

    fn btrfs_set_limit(&self, subvolume: &Path, bytes: u64) -> Result<(), HostError> {
        btrfs::set_limit(subvolume, bytes)
    }

    fn btrfs_usage(&self, subvolume: &Path) -> Result<TreeUsage, HostError> {
        btrfs::usage(subvolume)
    }

    fn project_quota_support(&self, path: &Path) -> Result<(), HostError> {
        quota::support(path)
    }

    fn set_project_quota(
        &self,
        dir: &Path,
        project_id: u32,
        limit_bytes: u64,
    ) -> Result<(), HostError> {
        quota::set_project(dir, project_id, limit_bytes)
    }

    fn clear_project_quota(&self, dir: &Path, project_id: u32) -> Result<(), HostError> {
        quota::clear_project(dir, project_id)
    }

    fn project_quota_usage(&self, path: &Path, project_id: u32) -> Result<TreeUsage, HostError> {
        quota::usage(path, project_id)
    }

    fn project_ids_in_use(&self, fs_path: &Path) -> Result<BTreeSet<u32>, HostError> {
        quota::ids_in_use(fs_path, &quota::PROJECT_FILES)
    }
}
