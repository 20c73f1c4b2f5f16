//! Bind mounts from a source opened beneath its pool root onto `/proc/self/fd/N`, read-only
//! remounts, and unmounts that never follow a symlink.
//!
//! A busy unmount is retried briefly: a child that berth (or another thread of it) has forked
//! holds copies of every descriptor until its `exec` closes the close-on-exec ones, so a
//! filesystem whose last descriptor was just closed can look busy for an instant while a
//! `mkfs` or `dumpe2fs` starts elsewhere. A mount that stays busy (a process really uses it)
//! is reported as busy after [`BUSY_RETRIES`] tries.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::statvfs::FsFlags;

use super::fd::{
    Meta, fd_path, invalid, mount_by_id, nix_err, open_dir_nofollow, open_nofollow, statx_fd,
    statx_path,
};
use crate::host::HostError;

/// Remounts the bind mount `fd` is the root of, read-only or not, keeping its other
/// per-mount flags (`MS_REMOUNT|MS_BIND` replaces all of them).
fn remount(fd: BorrowedFd<'_>, read_only: bool, target: &Path) -> Result<(), HostError> {
    let current = nix::sys::statvfs::fstatvfs(fd)
        .map_err(|e| nix_err("statvfs", target, e))?
        .flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(st) {
            flags |= ms;
        }
    }
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(
        None::<&str>,
        &fd_path(fd),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|e| nix_err("remount", target, e))
}

/// Opens `source` (`O_PATH`) beneath the directory `root`: `root` itself must not be a
/// symlink (its ancestors resolve normally, see the module docs of `linux`), and below it
/// `openat2(2)` follows no symlink at all (`RESOLVE_NO_SYMLINKS`) and never leaves `root`
/// (`RESOLVE_BENEATH`). What is returned is exactly the object beneath `root` now, so a pool
/// root swapped for a link to elsewhere after the volume was made is refused, not followed.
fn open_beneath(root: &Path, source: &Path) -> Result<(OwnedFd, Meta), HostError> {
    let outside = || HostError::OutsideRoot {
        path: source.to_path_buf(),
        root: root.to_path_buf(),
    };
    let rel = source.strip_prefix(root).map_err(|_| outside())?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let root_fd = open_dir_nofollow(root)?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = match nix::fcntl::openat2(&root_fd, rel, how) {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => return Err(first_symlink(root, rel, source)),
        Err(Errno::EXDEV) => return Err(outside()),
        Err(e) => return Err(nix_err("open", source, e)),
    };
    let meta = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", source, e))?;
    if meta.is_symlink() {
        return Err(HostError::Symlink {
            path: source.to_path_buf(),
        });
    }
    Ok((fd, meta))
}

/// The symlink that made a no-symlinks resolution of `rel` beneath `root` fail, for the
/// message (`source` itself if it cannot be found again: it may have changed since).
fn first_symlink(root: &Path, rel: &Path, source: &Path) -> HostError {
    let mut path = root.to_path_buf();
    for part in rel.components() {
        path.push(part);
        if statx_path(&path).is_ok_and(|m| m.is_symlink()) {
            return HostError::Symlink { path };
        }
    }
    HostError::Symlink {
        path: source.to_path_buf(),
    }
}

pub(super) fn bind_mount(
    root: &Path,
    source: &Path,
    target: &Path,
    read_only: bool,
) -> Result<(), HostError> {
    let (src_fd, src_meta) = open_beneath(root, source)?;
    let (tgt_fd, tgt_meta) = open_nofollow(target)?;
    if tgt_meta.mount_root && tgt_meta.same_inode(&src_meta) {
        // Already bound (the top mount at target shows the source's inode).
        let entry = mount_by_id(tgt_meta.mnt_id)?;
        if entry.is_some_and(|e| e.is_read_only() != read_only) {
            remount(tgt_fd.as_fd(), read_only, target)?;
        }
        return Ok(());
    }
    if src_meta.is_dir() != tgt_meta.is_dir() {
        return Err(invalid(
            "mount",
            target,
            if src_meta.is_dir() {
                "source is a directory, target is not"
            } else {
                "source is not a directory, target is"
            },
        ));
    }
    nix::mount::mount(
        Some(&fd_path(src_fd.as_fd())),
        &fd_path(tgt_fd.as_fd()),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| nix_err("mount", target, e))?;
    if !read_only {
        return Ok(());
    }
    // The fd still names the dentry under the new mount: resolve the target again, which
    // lands on the root of the mount just made, and check that before remounting it.
    let (top_fd, top_meta) = open_nofollow(target)?;
    if !(top_meta.mount_root && top_meta.same_inode(&src_meta)) {
        return Err(HostError::io(
            "remount",
            target,
            io::Error::other("target changed while it was being mounted"),
        ));
    }
    if let Err(e) = remount(top_fd.as_fd(), true, target) {
        // Never leave a writable mount where a read-only one was asked for.
        let _ = nix::mount::umount2(&fd_path(top_fd.as_fd()), MntFlags::empty());
        return Err(e);
    }
    Ok(())
}

pub(super) fn unmount(target: &Path) -> Result<(), HostError> {
    let mut tries = 0;
    loop {
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) if tries < BUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(5 * u64::from(tries)));
            }
            Err(e) => return Err(nix_err("umount", target, e)),
        }
    }
}

/// How often a busy unmount is retried (5, 10, … ms apart: about 0.3 s in all).
const BUSY_RETRIES: u32 = 10;
