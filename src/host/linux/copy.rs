//! [`copy_tree`]: a fd-relative copy of a directory tree that keeps holes and never follows
//! a symlink.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::fd::{
    Meta, invalid, mounts_beneath, nix_err, not_a_dir_error, oflags_dir, open_dir_nofollow,
    statx_at, statx_fd,
};
use super::walk::{Step, Walker};
use crate::host::HostError;

/// Copies the contents of `from` into `to` (whose own owner and mode are left as they are).
/// Regular files keep their holes; FIFOs, sockets and device nodes are recreated. Not
/// preserved: hard links (each name becomes its own file), extended attributes (ACLs, file
/// capabilities, SELinux labels). Existing destination files are overwritten, so a copy
/// interrupted by a crash can simply be run again. Ends with `syncfs` of the destination.
pub(super) fn copy_tree(from: &Path, to: &Path) -> Result<(), HostError> {
    let src = open_dir_nofollow(from)?;
    let dst = open_dir_nofollow(to)?;
    let src_meta = statx_fd(src.as_fd()).map_err(|e| nix_err("stat", from, e))?;
    let dst_meta = statx_fd(dst.as_fd()).map_err(|e| nix_err("stat", to, e))?;
    if src_meta.same_inode(&dst_meta) {
        return Err(invalid(
            "copy",
            to,
            "source and destination are the same directory",
        ));
    }
    let mounts = mounts_beneath(src.as_fd(), from)?;
    let sync_fd = nix::unistd::dup(&dst).map_err(|e| nix_err("dup", to, e))?;
    let mut walker = Walker::new(from, src, src_meta, Some(dst), mounts)?;
    let mut crossing: Option<PathBuf> = None;
    while let Some(step) = walker.next()? {
        match step {
            Step::Entry { name, meta } => {
                if meta.same_inode(&dst_meta) {
                    continue; // the destination inside the source: do not copy it into itself
                }
                if walker.crosses(&name, &meta) {
                    crossing.get_or_insert_with(|| walker.path_of(&name));
                    continue;
                }
                // Paths for error messages only, built lazily (a deep copy would be quadratic).
                let src_path = || walker.path_of(&name);
                let dst_path = || to.join(src_path().strip_prefix(from).unwrap_or(Path::new("")));
                let src_dir = walker.dir()?;
                let dst_dir = walker
                    .aux()
                    .ok_or_else(|| HostError::io("copy", to, io::Error::other("lost fd")))?;
                if meta.is_dir() {
                    let child = make_copy_dir(dst_dir, &name, &dst_path)?;
                    walker.descend(&name, &meta, Some(child))?;
                } else if meta.is_file() {
                    copy_file(src_dir, dst_dir, &name, &meta, &src_path, &dst_path)?;
                } else if meta.is_symlink() {
                    copy_symlink(src_dir, dst_dir, &name, &meta, &src_path, &dst_path)?;
                } else {
                    copy_node(dst_dir, &name, &meta, &dst_path)?;
                }
            }
            Step::Leave { name, meta, aux } => {
                // The top directory's attributes stay those of `to`.
                if !walker.is_empty()
                    && let Some(fd) = aux
                {
                    let dst_path = || {
                        to.join(
                            walker
                                .path_of(&name)
                                .strip_prefix(from)
                                .unwrap_or(Path::new("")),
                        )
                    };
                    apply_attrs(fd.as_fd(), &meta, &dst_path)?;
                }
            }
        }
    }
    nix::unistd::syncfs(&sync_fd).map_err(|e| nix_err("syncfs", to, e))?;
    match crossing {
        Some(path) => Err(HostError::CrossesMount { path }),
        None => Ok(()),
    }
}

fn make_copy_dir(
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    path: &dyn Fn() -> PathBuf,
) -> Result<OwnedFd, HostError> {
    match nix::sys::stat::mkdirat(dst_dir, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(nix_err("mkdir", &path(), e)),
    }
    nix::fcntl::openat(dst_dir, name, oflags_dir(), Mode::empty()).map_err(|e| {
        if e == Errno::ELOOP || e == Errno::ENOTDIR {
            not_a_dir_error("open", dst_dir, name, &path())
        } else {
            nix_err("open", &path(), e)
        }
    })
}

/// Owner, then mode (a `chown` clears set-id bits), then times.
fn apply_attrs(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    path: &dyn Fn() -> PathBuf,
) -> Result<(), HostError> {
    nix::unistd::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| nix_err("chown", &path(), e))?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.perm))
        .map_err(|e| nix_err("chmod", &path(), e))?;
    nix::sys::stat::futimens(fd, &meta.atime, &meta.mtime)
        .map_err(|e| nix_err("utimens", &path(), e))
}

fn copy_file(
    src_dir: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    meta: &Meta,
    src_path: &dyn Fn() -> PathBuf,
    path: &dyn Fn() -> PathBuf,
) -> Result<(), HostError> {
    let src = nix::fcntl::openat(
        src_dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| nix_err("open", &src_path(), e))?;
    let now = statx_fd(src.as_fd()).map_err(|e| nix_err("stat", &src_path(), e))?;
    if !now.same_inode(meta) {
        return Err(HostError::io(
            "open",
            &src_path(),
            io::Error::other("file was replaced during the copy"),
        ));
    }
    let dst = nix::fcntl::openat(
        dst_dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| nix_err("create", &path(), e))?;
    let src = File::from(src);
    let dst = File::from(dst);
    copy_data(&src, &dst, now.size).map_err(|e| HostError::io("copy", &path(), e))?;
    apply_attrs(dst.as_fd(), meta, path)
}

/// One `copy_file_range(2)` of up to `len` bytes at offset `pos` in both files.
fn copy_range(src: &File, dst: &File, pos: i64, len: usize) -> Result<usize, Errno> {
    let mut off_in: libc::loff_t = pos;
    let mut off_out: libc::loff_t = pos;
    // SAFETY: both fds are open for the duration of the call (borrowed from live `File`s);
    // the offset pointers are to live locals the kernel reads and updates; no memory
    // buffer of ours is involved.
    let n = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            len,
            0,
        )
    };
    Errno::result(n).map(|n| n.unsigned_abs())
}

/// Copies `size` bytes, skipping holes (`SEEK_DATA`/`SEEK_HOLE`) so sparse files stay sparse,
/// with `copy_file_range` (a reflink or in-kernel copy where the filesystem can) and a plain
/// read/write loop where it can not.
pub(super) fn copy_data(src: &File, dst: &File, size: u64) -> io::Result<()> {
    let end = i64::try_from(size).map_err(io::Error::other)?;
    let mut offset: i64 = 0;
    let mut use_cfr = true;
    while offset < end {
        let data = match nix::unistd::lseek(src, offset, nix::unistd::Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break,   // only a hole is left
            Err(Errno::EINVAL) => offset, // no SEEK_DATA: all data
            Err(e) => return Err(e.into()),
        };
        let hole = match nix::unistd::lseek(src, data, nix::unistd::Whence::SeekHole) {
            Ok(h) => h.min(end),
            Err(Errno::EINVAL) => end,
            Err(e) => return Err(e.into()),
        };
        let mut pos = data;
        while pos < hole {
            let want = usize::try_from(hole - pos)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            if use_cfr {
                match copy_range(src, dst, pos, want) {
                    Ok(0) => break, // the file shrank meanwhile
                    Ok(n) => {
                        pos += i64::try_from(n).map_err(io::Error::other)?;
                        continue;
                    }
                    Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                        use_cfr = false;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let mut buf = vec![0u8; want.min(1 << 20)];
            let upos = u64::try_from(pos).map_err(io::Error::other)?;
            let n = src.read_at(&mut buf, upos)?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], upos)?;
            pos += i64::try_from(n).map_err(io::Error::other)?;
        }
        offset = hole;
    }
    dst.set_len(size)
}

fn copy_symlink(
    src_dir: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    meta: &Meta,
    src_path: &dyn Fn() -> PathBuf,
    path: &dyn Fn() -> PathBuf,
) -> Result<(), HostError> {
    let target =
        nix::fcntl::readlinkat(src_dir, name).map_err(|e| nix_err("readlink", &src_path(), e))?;
    match nix::unistd::symlinkat(target.as_os_str(), dst_dir, name) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            // A retry: replace a link we made before, refuse anything else.
            match statx_at(dst_dir, name) {
                Ok(m) if m.is_symlink() => {
                    nix::unistd::unlinkat(dst_dir, name, UnlinkatFlags::NoRemoveDir)
                        .map_err(|e| nix_err("unlink", &path(), e))?;
                    nix::unistd::symlinkat(target.as_os_str(), dst_dir, name)
                        .map_err(|e| nix_err("symlink", &path(), e))?;
                }
                Ok(_) => return Err(nix_err("symlink", &path(), Errno::EEXIST)),
                Err(e) => return Err(nix_err("stat", &path(), e)),
            }
        }
        Err(e) => return Err(nix_err("symlink", &path(), e)),
    }
    nix::unistd::fchownat(
        dst_dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| nix_err("chown", &path(), e))?;
    nix::sys::stat::utimensat(
        dst_dir,
        name,
        &meta.atime,
        &meta.mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| nix_err("utimens", &path(), e))
}

/// FIFOs, sockets and device nodes.
fn copy_node(
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    meta: &Meta,
    path: &dyn Fn() -> PathBuf,
) -> Result<(), HostError> {
    let kind = SFlag::from_bits_truncate(meta.kind);
    match nix::sys::stat::mknodat(
        dst_dir,
        name,
        kind,
        Mode::from_bits_truncate(0o600),
        meta.rdev,
    ) {
        Ok(()) => {}
        Err(Errno::EEXIST) => match statx_at(dst_dir, name) {
            Ok(m) if m.kind == meta.kind && m.rdev == meta.rdev => {}
            Ok(_) => return Err(nix_err("mknod", &path(), Errno::EEXIST)),
            Err(e) => return Err(nix_err("stat", &path(), e)),
        },
        Err(e) => return Err(nix_err("mknod", &path(), e)),
    }
    nix::unistd::fchownat(
        dst_dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| nix_err("chown", &path(), e))?;
    nix::sys::stat::fchmodat(
        dst_dir,
        name,
        Mode::from_bits_truncate(meta.perm),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| nix_err("chmod", &path(), e))
}
