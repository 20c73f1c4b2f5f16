//! btrfs subvolumes and qgroup limits, through ioctls on directory fds (`<linux/btrfs.h>`).
//!
//! # Kernel semantics relied on
//! - **A subvolume's root directory has inode 256** (`BTRFS_FIRST_FREE_OBJECTID`) and its own
//!   anonymous `st_dev`, different from its parent's, although it is not a mount. A
//!   directory that is a mount root with inode 256 is another btrfs (or a bind of a
//!   subvolume) mounted there, never treated as the subvolume at that path.
//! - **`BTRFS_IOC_SUBVOL_CREATE`** and **`BTRFS_IOC_SNAP_DESTROY`** take a parent directory fd
//!   and a final name, which the kernel looks up in that directory without following it: a
//!   symlink is never a subvolume (its inode is not 256, the kernel answers `EINVAL`). As root
//!   (`CAP_SYS_ADMIN`), `SNAP_DESTROY` deletes a non-empty subvolume whole; it refuses one with
//!   nested subvolumes (`ENOTEMPTY`) and the default subvolume (`EPERM`). Deleting unlinks at
//!   once; the cleaner thread frees the extents later, so space comes back gradually. The
//!   kernel would also silently detach mounts whose mount point lies inside the subvolume
//!   (`d_invalidate`), and bind mounts *from* it would keep its data reachable: both are
//!   refused here before the ioctl.
//! - **`BTRFS_IOC_QUOTA_CTL` `ENABLE`** is a no-op returning 0 when quotas are enabled (in
//!   either mode); it creates qgroups `0/<id>` for existing subvolumes and starts a rescan.
//! - **`BTRFS_IOC_QGROUP_LIMIT`** with `qgroupid` 0 limits the qgroup of the subvolume the fd
//!   is in; so the fd must be the subvolume's root, which is checked (inode 256). A
//!   `max_rfer` of `u64::MAX` clears the limit. `ENOTCONN` means quotas are not enabled.
//!   The request number is `_IOR` although the kernel only reads the argument.
//! - A deleted subvolume's qgroup `0/<id>` may stay behind (seen on 6.18 with its old
//!   limit): harmless, since subvolume ids are never reused, so a new subvolume at the same
//!   path is a new, unlimited qgroup.
//! - **qgroup numbers** are updated at transaction commit; sysfs exposes them under
//!   `/sys/fs/btrfs/<fsid>/qgroups/<level>_<id>/referenced` (5.9+), with
//!   `qgroups/inconsistent` set while they are not to be trusted (during a rescan).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, ErrorKind};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::dir_sync::fsync_shared_dir;
use super::fd::{
    Meta, cstring, fd_kind, fd_real_path, invalid, mount_by_id, nix_err, open_parent,
    read_mountinfo, statx_at, statx_fd,
};
use super::walk::tree_usage;
use crate::host::{FsKind, HostError, MountEntry, TreeUsage};

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_INO_LOOKUP_PATH_MAX: usize = 4080;
const BTRFS_FSID_SIZE: usize = 16;
/// The inode number of every subvolume's root directory.
pub(super) const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`: the snapshot is read-only.
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1;
/// `max_rfer` value that clears a limit (`CLEAR_VALUE` in fs/btrfs/qgroup.c).
const BTRFS_QGROUP_CLEAR: u64 = u64::MAX;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` with the name member of its last union.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; BTRFS_INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_fs_info_args`.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; BTRFS_FSID_SIZE],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; BTRFS_FSID_SIZE],
    reserved: [u8; 944],
}

const _: () = assert!(size_of::<VolArgs>() == 4096);
const _: () = assert!(size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::offset_of!(VolArgsV2, name) == 56);
const _: () = assert!(size_of::<QuotaCtlArgs>() == 16);
const _: () = assert!(size_of::<QgroupLimit>() == 40);
const _: () = assert!(size_of::<QgroupLimitArgs>() == 48);
const _: () = assert!(size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(size_of::<FsInfoArgs>() == 1024);
const _: () = assert!(std::mem::offset_of!(FsInfoArgs, fsid) == 16);
const _: () = assert!(std::mem::offset_of!(FsInfoArgs, metadata_uuid) == 64);

mod ioctl {
    use super::VolArgs;
    use super::{BTRFS_IOCTL_MAGIC, FsInfoArgs, InoLookupArgs, QgroupLimitArgs, QuotaCtlArgs};
    nix::ioctl_write_ptr!(subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
    nix::ioctl_write_ptr!(snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
    nix::ioctl_readwrite!(ino_lookup, BTRFS_IOCTL_MAGIC, 18, InoLookupArgs);
    nix::ioctl_write_ptr!(snap_create_v2, BTRFS_IOCTL_MAGIC, 23, super::VolArgsV2);
    nix::ioctl_read!(fs_info, BTRFS_IOCTL_MAGIC, 31, FsInfoArgs);
    nix::ioctl_readwrite!(quota_ctl, BTRFS_IOCTL_MAGIC, 40, QuotaCtlArgs);
    nix::ioctl_read!(qgroup_limit, BTRFS_IOCTL_MAGIC, 43, QgroupLimitArgs);
}

// The request numbers as <linux/btrfs.h> computes them (checked against the C header).
const _: () = assert!(nix::request_code_write!(0x94, 14, size_of::<VolArgs>()) == 0x5000_940E);
const _: () = assert!(nix::request_code_write!(0x94, 15, size_of::<VolArgs>()) == 0x5000_940F);
const _: () =
    assert!(nix::request_code_readwrite!(0x94, 18, size_of::<InoLookupArgs>()) == 0xD000_9412);
const _: () = assert!(nix::request_code_write!(0x94, 23, size_of::<VolArgsV2>()) == 0x5000_9417);
const _: () = assert!(nix::request_code_read!(0x94, 31, size_of::<FsInfoArgs>()) == 0x8400_941F);
const _: () =
    assert!(nix::request_code_readwrite!(0x94, 40, size_of::<QuotaCtlArgs>()) == 0xC010_9428);
const _: () =
    assert!(nix::request_code_read!(0x94, 43, size_of::<QgroupLimitArgs>()) == 0x8030_942B);

impl VolArgs {
    fn new(name: &OsStr, path: &Path) -> Result<Box<Self>, HostError> {
        let bytes = name.as_bytes();
        if bytes.len() > BTRFS_PATH_NAME_MAX {
            return Err(invalid("subvolume", path, "name too long for btrfs"));
        }
        let mut args = Box::new(Self {
            fd: 0,
            name: [0; BTRFS_PATH_NAME_MAX + 1],
        });
        args.name[..bytes.len()].copy_from_slice(bytes);
        Ok(args)
    }
}

fn not_btrfs(path: &Path, kind: FsKind) -> HostError {
    HostError::Unsupported(format!("{} is on {kind}, not btrfs", path.display()))
}

/// Refuses an fd that is not on btrfs.
fn require_btrfs(fd: BorrowedFd<'_>, path: &Path) -> Result<(), HostError> {
    match fd_kind(fd, path)? {
        FsKind::Btrfs => Ok(()),
        other => Err(not_btrfs(path, other)),
    }
}

fn is_subvolume_root(meta: &Meta) -> bool {
    meta.is_dir() && meta.ino == BTRFS_FIRST_FREE_OBJECTID && !meta.mount_root
}

fn not_a_subvolume(path: &Path, meta: &Meta) -> HostError {
    if meta.is_symlink() {
        return HostError::Symlink {
            path: path.to_path_buf(),
        };
    }
    if meta.mount_root {
        return HostError::CrossesMount {
            path: path.to_path_buf(),
        };
    }
    invalid(
        "subvolume",
        path,
        if meta.is_dir() {
            "exists and is a plain directory, not a btrfs subvolume"
        } else {
            "exists and is not a directory"
        },
    )
}

/// Opens the subvolume root at `path` (final component not followed) and checks it is one.
fn open_subvolume(path: &Path) -> Result<OwnedFd, HostError> {
    let fd = super::fd::open_dir_nofollow(path)?;
    require_btrfs(fd.as_fd(), path)?;
    let meta = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", path, e))?;
    if meta.is_dir() && meta.ino == BTRFS_FIRST_FREE_OBJECTID {
        // A mount root is fine here: a bind mount of a subvolume is still that subvolume.
        return Ok(fd);
    }
    Err(not_a_subvolume(path, &meta))
}

pub(super) fn create_subvolume(path: &Path) -> Result<(), HostError> {
    let (parent, name) = open_parent(path)?;
    let (parent_path, _) = super::fd::split(path)?;
    require_btrfs(parent.as_fd(), parent_path)?;
    let c = cstring("subvolume", path, name.as_bytes())?;
    match statx_at(parent.as_fd(), &c) {
        Ok(meta) if is_subvolume_root(&meta) => return Ok(()),
        Ok(meta) => return Err(not_a_subvolume(path, &meta)),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(nix_err("stat", path, e)),
    }
    let args = VolArgs::new(name, path)?;
    // SAFETY: BTRFS_IOC_SUBVOL_CREATE reads one `struct btrfs_ioctl_vol_args`, which
    // `VolArgs` mirrors (#[repr(C)], size asserted at compile time); the pointer is to a live
    // heap allocation for the duration of the call, the name is NUL-terminated (the array is
    // one longer than the longest name), and `parent` is an open directory fd.
    let result = unsafe { ioctl::subvol_create(parent.as_raw_fd(), &*args) };
    match result {
        Ok(_) => {}
        Err(Errno::EEXIST) => {
            // Made by someone else meanwhile: fine if it is a subvolume.
            return match statx_at(parent.as_fd(), &c) {
                Ok(meta) if is_subvolume_root(&meta) => Ok(()),
                Ok(meta) => Err(not_a_subvolume(path, &meta)),
                Err(e) => Err(nix_err("stat", path, e)),
            };
        }
        Err(e) => return Err(nix_err("BTRFS_IOC_SUBVOL_CREATE", path, e)),
    }
    fsync_shared_dir(parent.as_fd(), path)
}

/// Makes `to` a snapshot of the subvolume `from` (`BTRFS_IOC_SNAP_CREATE_V2` on `to`'s
/// parent with `from`'s fd; read-only with `read_only`). The kernel makes the snapshot in one
/// transaction: it exists whole or not at all, so an existing subvolume at `to` is a
/// snapshot made before a crash and counts as success. Neither path is followed; both must
/// be on the same btrfs. The new subvolume gets its own qgroup `0/<id>`, without a limit.
pub(super) fn snapshot_subvolume(from: &Path, to: &Path, read_only: bool) -> Result<(), HostError> {
    let source = open_subvolume(from)?;
    let (parent, name) = open_parent(to)?;
    let (parent_path, _) = super::fd::split(to)?;
    require_btrfs(parent.as_fd(), parent_path)?;
    let c = cstring("snapshot", to, name.as_bytes())?;
    match statx_at(parent.as_fd(), &c) {
        Ok(meta) if is_subvolume_root(&meta) => return Ok(()),
        Ok(meta) => return Err(not_a_subvolume(to, &meta)),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(nix_err("stat", to, e)),
    }
    let bytes = name.as_bytes();
    if bytes.len() > BTRFS_SUBVOL_NAME_MAX {
        return Err(invalid("snapshot", to, "name too long for btrfs"));
    }
    let mut args = Box::new(VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if read_only { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    });
    args.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: BTRFS_IOC_SNAP_CREATE_V2 reads one `struct btrfs_ioctl_vol_args_v2`, which
    // `VolArgsV2` mirrors (#[repr(C)], size and name offset asserted); the pointer is to a
    // live heap allocation for the duration of the call, the name is NUL-terminated, and
    // both `parent` and the source fd in the arguments are open directory fds.
    let result = unsafe { ioctl::snap_create_v2(parent.as_raw_fd(), &*args) };
    match result {
        Ok(_) => {}
        Err(Errno::EEXIST) => {
            return match statx_at(parent.as_fd(), &c) {
                Ok(meta) if is_subvolume_root(&meta) => Ok(()),
                Ok(meta) => Err(not_a_subvolume(to, &meta)),
                Err(e) => Err(nix_err("stat", to, e)),
            };
        }
        Err(e) => return Err(nix_err("BTRFS_IOC_SNAP_CREATE_V2", to, e)),
    }
    fsync_shared_dir(parent.as_fd(), to)
}

/// The path of the directory `fd` inside its filesystem (what mountinfo's `root` field
/// names), and the device field of its mount.
fn fs_relative(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    path: &Path,
) -> Result<(PathBuf, String), HostError> {
    let real = fd_real_path(fd, path)?;
    let entry = mount_by_id(meta.mnt_id)?.ok_or_else(|| {
        HostError::io(
            "delete subvolume",
            path,
            io::Error::other("its mount is not in /proc/self/mountinfo"),
        )
    })?;
    let rel = real.strip_prefix(&entry.mount_point).map_err(|_| {
        HostError::io(
            "delete subvolume",
            path,
            io::Error::other(format!(
                "{} is not beneath its mount point {}",
                real.display(),
                entry.mount_point.display()
            )),
        )
    })?;
    Ok((entry.root.join(rel), entry.device))
}

/// Refuses to delete a subvolume something is mounted in or from, as seen through any
/// mount of its filesystem: a mount whose mount point lies inside it (the kernel would
/// detach it silently), or a mount of a directory inside it (a bind publication, which
/// would keep the deleted data in use).
fn check_unmounted(sub: BorrowedFd<'_>, sub_meta: &Meta, path: &Path) -> Result<(), HostError> {
    let (inside, device) = fs_relative(sub, sub_meta, path)?;
    let own = sub_mount_id(sub_meta);
    let mounts = read_mountinfo()?;
    let by_id: HashMap<u32, &MountEntry> = mounts.iter().map(|m| (m.id, m)).collect();
    for m in &mounts {
        if let Some(parent) = by_id.get(&m.parent)
            && parent.device == device
            && m.id != own
            && let Ok(rel) = m.mount_point.strip_prefix(&parent.mount_point)
            && parent.root.join(rel).starts_with(&inside)
        {
            return Err(HostError::CrossesMount {
                path: m.mount_point.clone(),
            });
        }
        if m.device == device && m.id != own && m.root.starts_with(&inside) {
            return Err(HostError::io(
                "delete subvolume",
                path,
                io::Error::new(
                    ErrorKind::ResourceBusy,
                    format!("mounted at {} (unmount it first)", m.mount_point.display()),
                ),
            ));
        }
    }
    Ok(())
}

fn sub_mount_id(meta: &Meta) -> u32 {
    u32::try_from(meta.mnt_id).unwrap_or(u32::MAX)
}

pub(super) fn delete_subvolume(path: &Path) -> Result<(), HostError> {
    let (parent, name) = match open_parent(path) {
        Ok(p) => p,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let c = cstring("delete subvolume", path, name.as_bytes())?;
    let meta = match statx_at(parent.as_fd(), &c) {
        Ok(m) => m,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(nix_err("stat", path, e)),
    };
    if !meta.is_symlink() {
        let (parent_path, _) = super::fd::split(path)?;
        require_btrfs(parent.as_fd(), parent_path)?;
    }
    if !is_subvolume_root(&meta) {
        return Err(not_a_subvolume(path, &meta));
    }
    let sub = match nix::fcntl::openat(
        &parent,
        c.as_c_str(),
        super::fd::oflags_dir(),
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(nix_err("open", path, e)),
    };
    require_btrfs(sub.as_fd(), path)?;
    let now = statx_fd(sub.as_fd()).map_err(|e| nix_err("stat", path, e))?;
    if !now.same_inode(&meta) || !is_subvolume_root(&now) {
        return Err(HostError::io(
            "delete subvolume",
            path,
            io::Error::other("was replaced while being checked"),
        ));
    }
    check_unmounted(sub.as_fd(), &now, path)?;
    drop(sub);
    let args = VolArgs::new(name, path)?;
    // SAFETY: BTRFS_IOC_SNAP_DESTROY reads one `struct btrfs_ioctl_vol_args` (mirrored by
    // `VolArgs`, size asserted) from a live heap allocation; the name is NUL-terminated and
    // `parent` is an open directory fd. The kernel looks the name up without following it.
    let result = unsafe { ioctl::snap_destroy(parent.as_raw_fd(), &*args) };
    match result {
        Ok(_) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(nix_err("BTRFS_IOC_SNAP_DESTROY", path, e)),
    }
    fsync_shared_dir(parent.as_fd(), path)
}

pub(super) fn enable_quota(fs_path: &Path) -> Result<(), HostError> {
    let fd = nix::fcntl::open(
        fs_path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| nix_err("open", fs_path, e))?;
    require_btrfs(fd.as_fd(), fs_path)?;
    let mut args = QuotaCtlArgs {
        cmd: BTRFS_QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: BTRFS_IOC_QUOTA_CTL reads and writes one `struct btrfs_ioctl_quota_ctl_args`,
    // mirrored by `QuotaCtlArgs` (size asserted); the pointer is to a live local and `fd` is
    // an open directory fd on btrfs.
    unsafe { ioctl::quota_ctl(fd.as_raw_fd(), &mut args) }
        .map_err(|e| nix_err("BTRFS_IOC_QUOTA_CTL", fs_path, e))?;
    Ok(())
}

pub(super) fn set_limit(subvolume: &Path, bytes: u64) -> Result<(), HostError> {
    let fd = open_subvolume(subvolume)?;
    let mut args = QgroupLimitArgs {
        qgroupid: 0, // the qgroup of the subvolume `fd` is the root of
        lim: QgroupLimit {
            flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
            max_rfer: if bytes == 0 {
                BTRFS_QGROUP_CLEAR
            } else {
                bytes
            },
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: BTRFS_IOC_QGROUP_LIMIT reads one `struct btrfs_ioctl_qgroup_limit_args`,
    // mirrored by `QgroupLimitArgs` (size asserted); the pointer is to a live local and `fd`
    // is an open directory fd, checked to be a subvolume root.
    match unsafe { ioctl::qgroup_limit(fd.as_raw_fd(), &mut args) } {
        Ok(_) => Ok(()),
        Err(Errno::ENOTCONN) => Err(HostError::Unsupported(format!(
            "quotas are not enabled on the btrfs holding {}; enable them first",
            subvolume.display()
        ))),
        Err(e) => Err(nix_err("BTRFS_IOC_QGROUP_LIMIT", subvolume, e)),
    }
}

/// The id of the subvolume `fd` is in (`BTRFS_IOC_INO_LOOKUP` of inode 256 in tree 0).
fn subvolume_id(fd: BorrowedFd<'_>, path: &Path) -> Result<u64, HostError> {
    let mut args = Box::new(InoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; BTRFS_INO_LOOKUP_PATH_MAX],
    });
    // SAFETY: BTRFS_IOC_INO_LOOKUP reads and writes one `struct btrfs_ioctl_ino_lookup_args`,
    // mirrored by `InoLookupArgs` (size asserted), in a live heap allocation; `fd` is an open
    // directory fd on btrfs. With treeid 0 and objectid 256 the kernel only fills in treeid.
    unsafe { ioctl::ino_lookup(fd.as_raw_fd(), &mut *args) }
        .map_err(|e| nix_err("BTRFS_IOC_INO_LOOKUP", path, e))?;
    Ok(args.treeid)
}

/// The filesystem's UUID as sysfs names its directory (`BTRFS_IOC_FS_INFO`).
fn fsid(fd: BorrowedFd<'_>, path: &Path) -> Result<String, HostError> {
    // SAFETY: `FsInfoArgs` is integers and byte arrays, for which all-zero bytes are valid.
    let mut args: Box<FsInfoArgs> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: BTRFS_IOC_FS_INFO writes one `struct btrfs_ioctl_fs_info_args` (mirrored by
    // `FsInfoArgs`, size asserted; `flags` 0 asks for nothing optional) into a live heap
    // allocation; `fd` is an open directory fd on btrfs.
    unsafe { ioctl::fs_info(fd.as_raw_fd(), &mut *args) }
        .map_err(|e| nix_err("BTRFS_IOC_FS_INFO", path, e))?;
    Ok(format_uuid(&args.fsid))
}

fn format_uuid(b: &[u8; BTRFS_FSID_SIZE]) -> String {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

fn read_u64(path: &Path) -> io::Result<u64> {
    std::fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))
}

pub(super) fn usage(subvolume: &Path) -> Result<TreeUsage, HostError> {
    let fd = open_subvolume(subvolume)?;
    let id = subvolume_id(fd.as_fd(), subvolume)?;
    let uuid = fsid(fd.as_fd(), subvolume)?;
    let qgroups = PathBuf::from(format!("/sys/fs/btrfs/{uuid}/qgroups"));
    // `qgroups/inconsistent` is newer than the per-qgroup files: absent, trust the numbers.
    let consistent = match read_u64(&qgroups.join("inconsistent")) {
        Ok(flag) => flag == 0,
        Err(e) => e.kind() == ErrorKind::NotFound && qgroups.is_dir(),
    };
    if consistent {
        match read_u64(&qgroups.join(format!("0_{id}/referenced"))) {
            Ok(bytes) => return Ok(TreeUsage { bytes, inodes: 0 }),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(HostError::io("read", &qgroups, e)),
        }
    }
    // Quotas off, numbers not to be trusted, or a kernel without qgroups in sysfs: walk.
    tree_usage(subvolume)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_format() {
        let b = [
            0x5e, 0xeb, 0x5b, 0x1f, 0x0a, 0xb1, 0x4f, 0xb0, 0x82, 0x09, 0xd0, 0xc1, 0x23, 0x62,
            0x3c, 0x6e,
        ];
        assert_eq!(format_uuid(&b), "5eeb5b1f-0ab1-4fb0-8209-d0c123623c6e");
    }

    #[test]
    fn vol_args_name_is_nul_terminated_and_bounded() {
        let p = Path::new("/x");
        let args = VolArgs::new(OsStr::new("vol"), p).expect("short name");
        assert_eq!(&args.name[..4], b"vol\0");
        let long = "a".repeat(BTRFS_PATH_NAME_MAX);
        let args = VolArgs::new(OsStr::new(&long), p).expect("longest name");
        assert_eq!(args.name[BTRFS_PATH_NAME_MAX], 0);
        assert!(VolArgs::new(OsStr::new(&format!("{long}a")), p).is_err());
    }

    #[test]
    fn layouts() {
        assert_eq!(std::mem::offset_of!(QgroupLimitArgs, lim), 8);
        assert_eq!(std::mem::offset_of!(QgroupLimit, max_rfer), 8);
        assert_eq!(std::mem::offset_of!(InoLookupArgs, name), 16);
        assert_eq!(std::mem::offset_of!(FsInfoArgs, flags), 48);
    }
}
