//! Small helpers under every other file here: errno mapping, fd-relative opens that never
//! follow the final component, `statx`, and reading mountinfo.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;

use crate::host::{FsKind, HostError, MountEntry, mountinfo};

const MOUNTINFO: &str = "/proc/self/mountinfo";

pub(super) fn nix_err(op: &'static str, path: &Path, errno: Errno) -> HostError {
    HostError::io(op, path, io::Error::from(errno))
}

pub(super) fn invalid(op: &'static str, path: &Path, message: impl Into<String>) -> HostError {
    HostError::io(
        op,
        path,
        io::Error::new(ErrorKind::InvalidInput, message.into()),
    )
}

pub(super) fn cstring(op: &'static str, path: &Path, bytes: &[u8]) -> Result<CString, HostError> {
    CString::new(bytes).map_err(|_| invalid(op, path, "path contains a NUL byte"))
}

pub(super) fn oflags_dir() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// A new file, write-only: fails with `EEXIST` on anything already there, a symlink included.
pub(super) fn oflags_create_new() -> OFlag {
    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn oflags_path() -> OFlag {
    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// `/proc/self/fd/N`: the path through which the kernel resolves exactly what `fd` holds.
pub(super) fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `fstatfs(2)` `f_type` of what `fd` holds (works on `O_PATH` fds).
pub(super) fn fd_kind(fd: BorrowedFd<'_>, path: &Path) -> Result<FsKind, HostError> {
    let st = nix::sys::statfs::fstatfs(fd).map_err(|e| nix_err("statfs", path, e))?;
    Ok(FsKind::from_magic(magic_number(st.filesystem_type().0)))
}

/// `f_type` as the 32-bit magic it is (`__fsword_t` is signed and 32 bits wide on some
/// targets, where magics above `i32::MAX` come out negative).
fn magic_number(raw: impl Into<i64>) -> i64 {
    raw.into() & 0xFFFF_FFFF
}

/// What `statx(2)` says about one file, not following a symlink.
#[derive(Clone, Copy, Debug)]
pub(super) struct Meta {
    /// `S_IFMT` bits.
    pub(super) kind: u32,
    /// Permission bits (`0o7777`).
    pub(super) perm: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) nlink: u32,
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) rdev: u64,
    pub(super) size: u64,
    pub(super) blocks: u64,
    pub(super) mount_root: bool,
    pub(super) mnt_id: u64,
    pub(super) atime: TimeSpec,
    pub(super) mtime: TimeSpec,
}

impl Meta {
    pub(super) fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
    pub(super) fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
    pub(super) fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }
    pub(super) fn same_inode(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

fn statx_raw(dirfd: libc::c_int, name: &CStr, flags: libc::c_int) -> Result<Meta, Errno> {
    // SAFETY: `libc::statx` is plain old data (integers only), for which all-zero bytes are
    // a valid value.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let mask = libc::STATX_BASIC_STATS | libc::STATX_MNT_ID;
    let flags = flags | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
    // SAFETY: `name` is a valid NUL-terminated string, `buf` a valid, writable `statx` that
    // outlives the call; `dirfd` is either an fd borrowed by the caller for the duration of
    // the call or `AT_FDCWD`. The kernel writes at most `size_of::<statx>()` bytes.
    let rc = unsafe { libc::statx(dirfd, name.as_ptr(), flags, mask, &mut buf) };
    Errno::result(rc)?;
    let mount_attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(Meta {
        kind: u32::from(buf.stx_mode) & libc::S_IFMT,
        perm: u32::from(buf.stx_mode) & 0o7777,
        uid: buf.stx_uid,
        gid: buf.stx_gid,
        nlink: buf.stx_nlink,
        dev: libc::makedev(buf.stx_dev_major, buf.stx_dev_minor),
        ino: buf.stx_ino,
        rdev: libc::makedev(buf.stx_rdev_major, buf.stx_rdev_minor),
        size: buf.stx_size,
        blocks: buf.stx_blocks,
        mount_root: buf.stx_attributes_mask & mount_attr != 0
            && buf.stx_attributes & mount_attr != 0,
        mnt_id: if buf.stx_mask & libc::STATX_MNT_ID != 0 {
            buf.stx_mnt_id
        } else {
            0
        },
        atime: TimeSpec::new(buf.stx_atime.tv_sec, i64::from(buf.stx_atime.tv_nsec)),
        mtime: TimeSpec::new(buf.stx_mtime.tv_sec, i64::from(buf.stx_mtime.tv_nsec)),
    })
}

/// `statx` of the entry `name` in the directory `dir`, not following a symlink.
pub(super) fn statx_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Meta, Errno> {
    statx_raw(dir.as_raw_fd(), name, 0)
}

/// `statx` of what `fd` holds (works on `O_PATH` fds).
pub(super) fn statx_fd(fd: BorrowedFd<'_>) -> Result<Meta, Errno> {
    statx_raw(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)
}

/// `statx` of a path, not following a symlink in its last component.
pub(super) fn statx_path(path: &Path) -> Result<Meta, HostError> {
    let c = cstring("stat", path, path.as_os_str().as_bytes())?;
    statx_raw(libc::AT_FDCWD, &c, 0).map_err(|e| nix_err("stat", path, e))
}

/// Splits `path` into its parent (`.` for a bare name) and final name.
pub(super) fn split(path: &Path) -> Result<(&Path, &OsStr), HostError> {
    let name = path
        .file_name()
        .ok_or_else(|| invalid("resolve", path, "path has no final name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

/// Opens the parent directory of `path` and returns it with the final name, which callers
/// then handle relative to that fd without following it. The parent's ancestors are resolved
/// normally (berth's own directories may sit behind a symlink such as
/// `/var/lib/berth -> /data/berth`), but the parent itself must not be a symlink: a pool root
/// swapped for a link to elsewhere is refused rather than followed.
pub(super) fn open_parent(path: &Path) -> Result<(OwnedFd, &OsStr), HostError> {
    let (parent, name) = split(path)?;
    let fd = open_dir_nofollow(parent)?;
    Ok((fd, name))
}

/// Opens `path` with `O_PATH|O_NOFOLLOW` and refuses a symlink.
pub(super) fn open_nofollow(path: &Path) -> Result<(OwnedFd, Meta), HostError> {
    let fd = nix::fcntl::open(path, oflags_path(), Mode::empty())
        .map_err(|e| nix_err("open", path, e))?;
    let meta = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", path, e))?;
    if meta.is_symlink() {
        return Err(HostError::Symlink {
            path: path.to_path_buf(),
        });
    }
    Ok((fd, meta))
}

/// Opens the regular file `path` (an image) read-write without following a symlink; `op`
/// names the operation in the refusal of anything else.
pub(super) fn open_regular_rw(op: &'static str, path: &Path) -> Result<(OwnedFd, Meta), HostError> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => HostError::Symlink {
            path: path.to_path_buf(),
        },
        e => nix_err("open", path, e),
    })?;
    let meta = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", path, e))?;
    if !meta.is_file() {
        return Err(invalid(op, path, "not a regular file"));
    }
    Ok((fd, meta))
}

/// Classifies an `ELOOP`/`ENOTDIR` from an `O_NOFOLLOW|O_DIRECTORY` open of `name` in `dir`.
pub(super) fn not_a_dir_error(
    op: &'static str,
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
) -> HostError {
    match statx_at(dir, name) {
        Ok(meta) if meta.is_symlink() => HostError::Symlink {
            path: path.to_path_buf(),
        },
        Ok(_) => invalid(op, path, "exists and is not a directory"),
        Err(e) => nix_err(op, path, e),
    }
}

pub(super) fn fsync_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<(), HostError> {
    nix::unistd::fsync(fd).map_err(|e| nix_err("fsync", path, e))
}

pub(super) fn read_mountinfo() -> Result<Vec<MountEntry>, HostError> {
    let text = std::fs::read_to_string(MOUNTINFO)
        .map_err(|e| HostError::io("read", Path::new(MOUNTINFO), e))?;
    Ok(mountinfo::parse(&text))
}

pub(super) fn mount_by_id(id: u64) -> Result<Option<MountEntry>, HostError> {
    Ok(read_mountinfo()?
        .into_iter()
        .find(|m| u64::from(m.id) == id))
}

/// The path the kernel reports for an fd (`readlink /proc/self/fd/N`).
pub(super) fn fd_real_path(fd: BorrowedFd<'_>, path: &Path) -> Result<PathBuf, HostError> {
    let link = fd_path(fd);
    std::fs::read_link(&link).map_err(|e| HostError::io("readlink", path, e))
}

/// Mount points strictly beneath the directory `fd` refers to, relative to it.
pub(super) fn mounts_beneath(
    fd: BorrowedFd<'_>,
    path: &Path,
) -> Result<HashSet<PathBuf>, HostError> {
    let real = fd_real_path(fd, path)?;
    Ok(read_mountinfo()?
        .into_iter()
        .filter_map(|m| {
            m.mount_point
                .strip_prefix(&real)
                .ok()
                .filter(|rel| !rel.as_os_str().is_empty())
                .map(Path::to_path_buf)
        })
        .collect())
}

/// Opens the directory `path`, resolving its ancestors normally but refusing a symlink at
/// `path` itself ([`HostError::Symlink`]).
pub(super) fn open_dir_nofollow(path: &Path) -> Result<OwnedFd, HostError> {
    match nix::fcntl::open(path, oflags_dir(), Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP | Errno::ENOTDIR) => match statx_path(path) {
            Ok(m) if m.is_symlink() => Err(HostError::Symlink {
                path: path.to_path_buf(),
            }),
            Ok(_) => Err(invalid("open", path, "exists and is not a directory")),
            Err(e) => Err(e),
        },
        Err(e) => Err(nix_err("open", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_handles_bare_names() {
        assert_eq!(
            split(Path::new("x")).ok(),
            Some((Path::new("."), OsStr::new("x")))
        );
        assert!(split(Path::new("/")).is_err());
        assert!(split(Path::new("/a/..")).is_err());
    }
}
