//! Directories, renames and publish targets: making, preparing and removing them without
//! following a symlink, and syncing.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::dir_sync::fsync_shared_dir;
use super::fd::{
    cstring, fsync_fd, invalid, nix_err, not_a_dir_error, oflags_dir, open_dir_nofollow,
    open_parent, split, statx_at, statx_fd,
};
use crate::host::types::Ownership;
use crate::host::{FsStats, HostError, TargetKind};

pub(super) fn make_dir(dir: &Path, ownership: &Ownership) -> Result<(), HostError> {
    make_dirs(&[(dir, ownership)])
}

/// See [`crate::host::Host::make_dirs`]. Every directory is made first and synced after,
/// deepest first: the first `fsync` commits the filesystem's journal with all of them, so
/// the others (each needed for its own entry by POSIX) cost only a cache flush.
pub(super) fn make_dirs(dirs: &[(&Path, &Ownership)]) -> Result<(), HostError> {
    let Some(((first, _), _)) = dirs.split_first() else {
        return Ok(());
    };
    for pair in dirs.windows(2) {
        if pair[1].0.parent() != Some(pair[0].0) {
            return Err(invalid(
                "mkdir",
                pair[1].0,
                "each directory made together must be inside the one before it",
            ));
        }
    }
    let (first_parent, first_name) = open_parent(first)?;
    let mut made: Vec<(&Path, OwnedFd)> = Vec::with_capacity(dirs.len());
    for (dir, ownership) in dirs {
        let (parent, name) = match made.last() {
            None => (first_parent.as_fd(), first_name),
            Some((_, fd)) => (fd.as_fd(), split(dir)?.1),
        };
        let fd = create_dir_at(parent, name, dir, ownership)?;
        made.push((dir, fd));
    }
    for (dir, fd) in made.iter().rev() {
        fsync_fd(fd.as_fd(), dir)?;
    }
    fsync_shared_dir(first_parent.as_fd(), first)
}

/// Makes `name` in `parent` (an existing directory is fine), opens it without following a
/// symlink and applies `ownership`.
fn create_dir_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    dir: &Path,
    ownership: &Ownership,
) -> Result<OwnedFd, HostError> {
    let mode = ownership.mode.unwrap_or(0o755) & 0o7777;
    match nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(nix_err("mkdir", dir, e)),
    }
    let c = cstring("mkdir", dir, name.as_bytes())?;
    let fd =
        nix::fcntl::openat(parent, c.as_c_str(), oflags_dir(), Mode::empty()).map_err(|e| {
            if e == Errno::ELOOP || e == Errno::ENOTDIR {
                not_a_dir_error("mkdir", parent, &c, dir)
            } else {
                nix_err("open", dir, e)
            }
        })?;
    if ownership.uid.is_some() || ownership.gid.is_some() {
        nix::unistd::fchown(
            &fd,
            ownership.uid.map(Uid::from_raw),
            ownership.gid.map(Gid::from_raw),
        )
        .map_err(|e| nix_err("chown", dir, e))?;
    }
    // After chown (which clears set-id bits); exact, whatever the daemon's umask (the
    // systemd unit runs berth with UMask=0077).
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
        .map_err(|e| nix_err("chmod", dir, e))?;
    Ok(fd)
}

/// See [`crate::host::Host::dirs_beneath`].
pub(super) fn dirs_beneath(root: &Path, relative: &Path, create: bool) -> Result<(), HostError> {
    let mut dir = open_dir_nofollow(root)?;
    let mut path = root.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(invalid(
                "mkdir",
                &root.join(relative),
                "only plain names are walked beneath a root",
            ));
        };
        path.push(name);
        let c = cstring("mkdir", &path, name.as_bytes())?;
        if create {
            match nix::sys::stat::mkdirat(&dir, c.as_c_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(nix_err("mkdir", &path, e)),
            }
        }
        dir = match nix::fcntl::openat(&dir, c.as_c_str(), oflags_dir(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if !create => return Ok(()),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(not_a_dir_error("open", dir.as_fd(), &c, &path));
            }
            Err(e) => return Err(nix_err("open", &path, e)),
        };
    }
    Ok(())
}

pub(super) fn rename(from: &Path, to: &Path) -> Result<(), HostError> {
    let (from_parent, from_name) = open_parent(from)?;
    let (to_parent, to_name) = open_parent(to)?;
    match nix::fcntl::renameat2(
        &from_parent,
        from_name,
        &to_parent,
        to_name,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {}
        Err(Errno::ENOENT) => {
            let to_c = cstring("rename", to, to_name.as_bytes())?;
            let from_c = cstring("rename", from, from_name.as_bytes())?;
            let from_gone = matches!(statx_at(from_parent.as_fd(), &from_c), Err(Errno::ENOENT));
            if from_gone && statx_at(to_parent.as_fd(), &to_c).is_ok() {
                return Ok(()); // done before
            }
            return Err(nix_err("rename", from, Errno::ENOENT));
        }
        Err(e) => return Err(nix_err("rename", from, e)),
    }
    fsync_fd(to_parent.as_fd(), to)?;
    let same = match (statx_fd(from_parent.as_fd()), statx_fd(to_parent.as_fd())) {
        (Ok(a), Ok(b)) => a.same_inode(&b),
        _ => false,
    };
    if !same {
        fsync_fd(from_parent.as_fd(), from)?;
    }
    Ok(())
}

pub(super) fn prepare_target(target: &Path, kind: TargetKind) -> Result<bool, HostError> {
    let (parent, name) = open_parent(target)?;
    let c = cstring("prepare", target, name.as_bytes())?;
    // Two rounds: a target created by someone else between our check and our create is
    // checked again.
    for _ in 0..2 {
        match statx_at(parent.as_fd(), &c) {
            Ok(meta) => {
                if meta.is_symlink() {
                    return Err(HostError::Symlink {
                        path: target.to_path_buf(),
                    });
                }
                return match (kind, meta.is_dir()) {
                    (TargetKind::Directory, true) | (TargetKind::File, false) => Ok(false),
                    (TargetKind::Directory, false) => {
                        Err(invalid("prepare", target, "exists and is not a directory"))
                    }
                    (TargetKind::File, true) => {
                        Err(invalid("prepare", target, "exists and is a directory"))
                    }
                };
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(nix_err("stat", target, e)),
        }
        let created = match kind {
            TargetKind::Directory => {
                match nix::sys::stat::mkdirat(
                    &parent,
                    c.as_c_str(),
                    Mode::from_bits_truncate(0o750),
                ) {
                    Ok(()) => {
                        let fd =
                            nix::fcntl::openat(&parent, c.as_c_str(), oflags_dir(), Mode::empty())
                                .map_err(|e| nix_err("open", target, e))?;
                        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o750))
                            .map_err(|e| nix_err("chmod", target, e))?;
                        true
                    }
                    Err(Errno::EEXIST) => false,
                    Err(e) => return Err(nix_err("mkdir", target, e)),
                }
            }
            TargetKind::File => match nix::fcntl::openat(
                &parent,
                c.as_c_str(),
                super::fd::oflags_create_new(),
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => {
                    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o600))
                        .map_err(|e| nix_err("chmod", target, e))?;
                    true
                }
                Err(Errno::EEXIST) => false,
                Err(e) => return Err(nix_err("create", target, e)),
            },
        };
        if created {
            return Ok(true);
        }
    }
    Err(nix_err("prepare", target, Errno::EEXIST))
}

pub(super) fn remove_target(target: &Path, kind: TargetKind) -> Result<(), HostError> {
    let (parent, name) = match open_parent(target) {
        Ok(p) => p,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let c = cstring("remove", target, name.as_bytes())?;
    let meta = match statx_at(parent.as_fd(), &c) {
        Ok(m) => m,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(nix_err("stat", target, e)),
    };
    if meta.is_symlink() {
        return Err(HostError::Symlink {
            path: target.to_path_buf(),
        });
    }
    let (flag, op) = match (kind, meta.is_dir()) {
        (TargetKind::Directory, true) => (UnlinkatFlags::RemoveDir, "rmdir"),
        (TargetKind::File, false) => (UnlinkatFlags::NoRemoveDir, "unlink"),
        (TargetKind::Directory, false) => {
            return Err(invalid("rmdir", target, "exists and is not a directory"));
        }
        (TargetKind::File, true) => return Err(invalid("unlink", target, "is a directory")),
    };
    match nix::unistd::unlinkat(&parent, c.as_c_str(), flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(nix_err(op, target, e)),
    }
}

pub(super) fn sync_path(path: &Path) -> Result<(), HostError> {
    match nix::fcntl::open(
        path,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => match nix::unistd::fsync(&fd) {
            // FIFOs and the like have nothing to flush.
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(nix_err("fsync", path, e)),
        },
        Err(Errno::ELOOP) => {} // a symlink: its directory entry is all there is
        Err(e) => return Err(nix_err("open", path, e)),
    }
    if path.parent().is_some() {
        let (parent, _) = open_parent(path)?;
        fsync_fd(parent.as_fd(), path)?;
    }
    Ok(())
}

pub(super) fn fs_stats(path: &Path) -> Result<FsStats, HostError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| nix_err("statvfs", path, e))?;
    let frsize = st.fragment_size();
    // Followed like statvfs follows it.
    let device = std::os::unix::fs::MetadataExt::dev(
        &std::fs::metadata(path).map_err(|e| HostError::io("stat", path, e))?,
    );
    Ok(FsStats {
        device,
        bytes_total: st.blocks() * frsize,
        bytes_free: st.blocks_free() * frsize,
        bytes_available: st.blocks_available() * frsize,
        inodes_total: st.files(),
        inodes_free: st.files_free(),
    })
}
