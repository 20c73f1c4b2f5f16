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
//!   asks for the next one. `LO_FLAGS_DIRECT_IO` is asked for and dropped on `EINVAL` (backing
//!   filesystems without `O_DIRECT`, like tmpfs).
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
//! Tree walks ([`Host::remove_tree`], [`Host::copy_tree`], [`Host::tree_usage`]) use an
//! explicit stack and keep at most [`MAX_OPEN_DIRS`] directory fds open; a directory whose fd
//! was closed is reopened through `..` of its child (checked by device and inode), so neither
//! the native stack nor the fd table limits the depth of a tree.

mod btrfs;
mod quota;
mod snapshot;

use std::collections::{BTreeSet, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::FsFlags;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::{
    FsKind, FsStats, Host, HostError, LoopDevice, MountEntry, RemovalStats, TargetKind, TreeUsage,
    mountinfo,
};
use crate::engine::types::{FsType, Ownership};

/// How many directory fds a tree walk keeps open at most (besides the top's).
pub const MAX_OPEN_DIRS: usize = 64;

/// How many times to ask for another free loop device when one is taken under our feet.
const LOOP_ATTEMPTS: usize = 16;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The kernel, for real. Every method reads the state it needs from the kernel; the only
/// state kept is a lock that serializes loop-device work within this process, so two
/// concurrent calls can not both find an image unattached and attach it twice (the engine is
/// expected to serialize work on one volume anyway; across processes nothing is locked).
#[derive(Debug, Default)]
pub struct LinuxHost {
    loops: Mutex<()>,
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

// ---------------------------------------------------------------------------------------
// Small helpers: errors, opening, statx.
// ---------------------------------------------------------------------------------------

fn nix_err(op: &'static str, path: &Path, errno: Errno) -> HostError {
    HostError::io(op, path, io::Error::from(errno))
}

fn invalid(op: &'static str, path: &Path, message: impl Into<String>) -> HostError {
    HostError::io(
        op,
        path,
        io::Error::new(ErrorKind::InvalidInput, message.into()),
    )
}

fn cstring(op: &'static str, path: &Path, bytes: &[u8]) -> Result<CString, HostError> {
    CString::new(bytes).map_err(|_| invalid(op, path, "path contains a NUL byte"))
}

fn oflags_dir() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn oflags_path() -> OFlag {
    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// `/proc/self/fd/N`: the path through which the kernel resolves exactly what `fd` holds.
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `fstatfs(2)` `f_type` of what `fd` holds (works on `O_PATH` fds).
fn fd_kind(fd: BorrowedFd<'_>, path: &Path) -> Result<FsKind, HostError> {
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
struct Meta {
    /// `S_IFMT` bits.
    kind: u32,
    /// Permission bits (`0o7777`).
    perm: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    dev: u64,
    ino: u64,
    rdev: u64,
    size: u64,
    blocks: u64,
    mount_root: bool,
    mnt_id: u64,
    atime: TimeSpec,
    mtime: TimeSpec,
}

impl Meta {
    fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
    fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
    fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }
    fn same_inode(&self, other: &Meta) -> bool {
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
fn statx_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Meta, Errno> {
    statx_raw(dir.as_raw_fd(), name, 0)
}

/// `statx` of what `fd` holds (works on `O_PATH` fds).
fn statx_fd(fd: BorrowedFd<'_>) -> Result<Meta, Errno> {
    statx_raw(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)
}

/// `statx` of a path, not following a symlink in its last component.
fn statx_path(path: &Path) -> Result<Meta, HostError> {
    let c = cstring("stat", path, path.as_os_str().as_bytes())?;
    statx_raw(libc::AT_FDCWD, &c, 0).map_err(|e| nix_err("stat", path, e))
}

/// Splits `path` into its parent (`.` for a bare name) and final name.
fn split(path: &Path) -> Result<(&Path, &OsStr), HostError> {
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
fn open_parent(path: &Path) -> Result<(OwnedFd, &OsStr), HostError> {
    let (parent, name) = split(path)?;
    let fd = open_dir_nofollow(parent)?;
    Ok((fd, name))
}

/// Opens `path` with `O_PATH|O_NOFOLLOW` and refuses a symlink.
fn open_nofollow(path: &Path) -> Result<(OwnedFd, Meta), HostError> {
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

/// Classifies an `ELOOP`/`ENOTDIR` from an `O_NOFOLLOW|O_DIRECTORY` open of `name` in `dir`.
fn not_a_dir_error(op: &'static str, dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> HostError {
    match statx_at(dir, name) {
        Ok(meta) if meta.is_symlink() => HostError::Symlink {
            path: path.to_path_buf(),
        },
        Ok(_) => invalid(op, path, "exists and is not a directory"),
        Err(e) => nix_err(op, path, e),
    }
}

fn fsync_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<(), HostError> {
    nix::unistd::fsync(fd).map_err(|e| nix_err("fsync", path, e))
}

fn read_mountinfo() -> Result<Vec<MountEntry>, HostError> {
    let text = std::fs::read_to_string(MOUNTINFO)
        .map_err(|e| HostError::io("read", Path::new(MOUNTINFO), e))?;
    Ok(mountinfo::parse(&text))
}

fn mount_by_id(id: u64) -> Result<Option<MountEntry>, HostError> {
    Ok(read_mountinfo()?
        .into_iter()
        .find(|m| u64::from(m.id) == id))
}

/// The path the kernel reports for an fd (`readlink /proc/self/fd/N`).
fn fd_real_path(fd: BorrowedFd<'_>, path: &Path) -> Result<PathBuf, HostError> {
    let link = fd_path(fd);
    std::fs::read_link(&link).map_err(|e| HostError::io("readlink", path, e))
}

/// Mount points strictly beneath the directory `fd` refers to, relative to it.
fn mounts_beneath(fd: BorrowedFd<'_>, path: &Path) -> Result<HashSet<PathBuf>, HostError> {
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

// ---------------------------------------------------------------------------------------
// The tree walker: explicit stack, bounded number of open fds.
// ---------------------------------------------------------------------------------------

/// A directory handle: the `DIR` stream it was read with, or a plain fd after a reopen.
enum Handle {
    Stream(Dir),
    Fd(OwnedFd),
}

impl AsFd for Handle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Stream(dir) => dir.as_fd(),
            Self::Fd(fd) => fd.as_fd(),
        }
    }
}

struct Frame {
    /// Name in the parent directory (the top frame's is unused).
    name: CString,
    meta: Meta,
    dir: Option<Handle>,
    /// A second directory walked in step (the destination of a copy).
    aux: Option<OwnedFd>,
    aux_id: Option<(u64, u64)>,
    /// Entries not yet handed out.
    entries: Vec<CString>,
    /// This directory's path relative to the top, kept only while some mount point in
    /// mountinfo lies beneath it.
    rel: Option<PathBuf>,
}

enum Step {
    /// An entry of the directory on top of the stack ([`Walker::dir`]).
    Entry { name: CString, meta: Meta },
    /// The directory `name` (a child of the new top, or the top itself when the stack is now
    /// empty) has been fully walked; its handles are given back.
    Leave {
        name: CString,
        meta: Meta,
        aux: Option<OwnedFd>,
    },
}

struct Walker {
    base: PathBuf,
    /// The path of the directory on top of the stack (for messages).
    cur: PathBuf,
    frames: Vec<Frame>,
    mounts: HashSet<PathBuf>,
    top_dev: u64,
}

fn read_entries(fd: OwnedFd) -> Result<(Dir, Vec<CString>), Errno> {
    let mut dir = Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok((dir, names))
}

impl Walker {
    /// Starts a walk of the directory `fd` (opened `O_RDONLY|O_DIRECTORY`) known as `base`.
    fn new(
        base: &Path,
        fd: OwnedFd,
        meta: Meta,
        aux: Option<OwnedFd>,
        mounts: HashSet<PathBuf>,
    ) -> Result<Self, HostError> {
        let aux_id = match &aux {
            Some(a) => {
                let m = statx_fd(a.as_fd()).map_err(|e| nix_err("stat", base, e))?;
                Some((m.dev, m.ino))
            }
            None => None,
        };
        let (dir, entries) = read_entries(fd).map_err(|e| nix_err("readdir", base, e))?;
        let rel = (!mounts.is_empty()).then(PathBuf::new);
        Ok(Self {
            base: base.to_path_buf(),
            cur: base.to_path_buf(),
            frames: vec![Frame {
                name: CString::default(),
                meta,
                dir: Some(Handle::Stream(dir)),
                aux,
                aux_id,
                entries,
                rel,
            }],
            mounts,
            top_dev: meta.dev,
        })
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The path of `name` in the directory on top of the stack (for messages).
    fn path_of(&self, name: &CStr) -> PathBuf {
        self.cur.join(OsStr::from_bytes(name.to_bytes()))
    }

    /// The fd of the directory on top of the stack. It is always open.
    fn dir(&self) -> Result<BorrowedFd<'_>, HostError> {
        self.frames
            .last()
            .and_then(|f| f.dir.as_ref())
            .map(AsFd::as_fd)
            .ok_or_else(|| HostError::io("walk", &self.base, io::Error::other("walk is over")))
    }

    fn aux(&self) -> Option<BorrowedFd<'_>> {
        self.frames
            .last()
            .and_then(|f| f.aux.as_ref())
            .map(AsFd::as_fd)
    }

    /// Whether the entry `name` (of the top directory) is, or may be, another mount.
    fn crosses(&self, name: &CStr, meta: &Meta) -> bool {
        if meta.mount_root || (meta.is_dir() && meta.dev != self.top_dev) {
            return true;
        }
        match self.frames.last().and_then(|f| f.rel.as_ref()) {
            Some(rel) => self
                .mounts
                .contains(&rel.join(OsStr::from_bytes(name.to_bytes()))),
            None => false,
        }
    }

    /// Enters the subdirectory `name` of the top directory; `aux` is its counterpart.
    fn descend(&mut self, name: &CStr, meta: &Meta, aux: Option<OwnedFd>) -> Result<(), HostError> {
        // Paths are only built for error messages: building one per entry would make a deep
        // walk quadratic.
        let path = || self.path_of(name);
        let parent = self.dir()?;
        let fd = nix::fcntl::openat(parent, name, oflags_dir(), Mode::empty()).map_err(|e| {
            if e == Errno::ELOOP || e == Errno::ENOTDIR {
                not_a_dir_error("open", parent, name, &path())
            } else {
                nix_err("open", &path(), e)
            }
        })?;
        let now = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", &path(), e))?;
        if !now.same_inode(meta) || now.mount_root {
            return Err(HostError::io(
                "open",
                &path(),
                io::Error::other("directory was replaced during the walk"),
            ));
        }
        let aux_id = match &aux {
            Some(a) => {
                let m = statx_fd(a.as_fd()).map_err(|e| nix_err("stat", &path(), e))?;
                Some((m.dev, m.ino))
            }
            None => None,
        };
        let (dir, entries) = read_entries(fd).map_err(|e| nix_err("readdir", &path(), e))?;
        let rel = self
            .frames
            .last()
            .and_then(|f| f.rel.as_ref())
            .map(|r| r.join(OsStr::from_bytes(name.to_bytes())))
            .filter(|r| self.mounts.iter().any(|m| m.starts_with(r) && m != r));
        self.frames.push(Frame {
            name: name.to_owned(),
            meta: *meta,
            dir: Some(Handle::Stream(dir)),
            aux,
            aux_id,
            entries,
            rel,
        });
        self.cur.push(OsStr::from_bytes(name.to_bytes()));
        // Keep the top frame's and the last MAX_OPEN_DIRS frames' fds; close the one that
        // just fell out of the window.
        let len = self.frames.len();
        if len > MAX_OPEN_DIRS + 1 {
            let frame = &mut self.frames[len - 1 - MAX_OPEN_DIRS];
            frame.dir = None;
            frame.aux = None;
        }
        Ok(())
    }

    /// The next entry of the top directory, or the end of one.
    fn next(&mut self) -> Result<Option<Step>, HostError> {
        loop {
            let Some(frame) = self.frames.last_mut() else {
                return Ok(None);
            };
            if let Some(name) = frame.entries.pop() {
                let dir = match frame.dir.as_ref() {
                    Some(d) => d.as_fd(),
                    None => {
                        return Err(HostError::io(
                            "walk",
                            &self.base,
                            io::Error::other("lost fd"),
                        ));
                    }
                };
                match statx_at(dir, &name) {
                    Ok(meta) => return Ok(Some(Step::Entry { name, meta })),
                    Err(Errno::ENOENT) => continue, // gone meanwhile
                    Err(e) => return Err(nix_err("stat", &self.path_of(&name), e)),
                }
            }
            let Some(done) = self.frames.pop() else {
                return Ok(None);
            };
            if !self.frames.is_empty() {
                self.cur.pop();
                self.reopen_top(&done)?;
            }
            return Ok(Some(Step::Leave {
                name: done.name,
                meta: done.meta,
                aux: done.aux,
            }));
        }
    }

    /// Makes sure the (new) top frame has its fds, reopening through `..` of `child`.
    fn reopen_top(&mut self, child: &Frame) -> Result<(), HostError> {
        let Some(top) = self.frames.last_mut() else {
            return Ok(());
        };
        if top.dir.is_none() {
            let child_fd = child.dir.as_ref().map(AsFd::as_fd);
            let fd = reopen_parent(child_fd, (top.meta.dev, top.meta.ino))
                .map_err(|(op, e)| HostError::io(op, &self.cur, e))?;
            top.dir = Some(Handle::Fd(fd));
        }
        if top.aux.is_none()
            && let Some(id) = top.aux_id
        {
            let child_fd = child.aux.as_ref().map(AsFd::as_fd);
            let fd =
                reopen_parent(child_fd, id).map_err(|(op, e)| HostError::io(op, &self.cur, e))?;
            top.aux = Some(fd);
        }
        Ok(())
    }
}

/// Opens `..` of `child` and checks it is still the directory `(dev, ino)`.
fn reopen_parent(
    child: Option<BorrowedFd<'_>>,
    id: (u64, u64),
) -> Result<OwnedFd, (&'static str, io::Error)> {
    let moved = || {
        (
            "reopen",
            io::Error::other("directory was moved during the walk"),
        )
    };
    let child = child.ok_or_else(moved)?;
    let fd = nix::fcntl::openat(
        child,
        c"..",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ("open", io::Error::from(e)))?;
    let meta = statx_fd(fd.as_fd()).map_err(|e| ("stat", io::Error::from(e)))?;
    if (meta.dev, meta.ino) != id {
        return Err(moved());
    }
    Ok(fd)
}

// ---------------------------------------------------------------------------------------
// remove_tree
// ---------------------------------------------------------------------------------------

/// The components of `path` beneath `root`, refusing `..` anywhere and `path == root`.
fn beneath<'a>(root: &Path, path: &'a Path) -> Result<Vec<&'a OsStr>, HostError> {
    let outside = || HostError::OutsideRoot {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
    };
    let has_parent = |p: &Path| p.components().any(|c| c == Component::ParentDir);
    if has_parent(root) || has_parent(path) {
        return Err(outside());
    }
    let rest = path.strip_prefix(root).map_err(|_| outside())?;
    let mut names = Vec::new();
    for component in rest.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            _ => return Err(outside()),
        }
    }
    if names.is_empty() {
        return Err(outside());
    }
    Ok(names)
}

fn remove_tree(root: &Path, path: &Path) -> Result<RemovalStats, HostError> {
    let names = beneath(root, path)?;
    let mut stats = RemovalStats::default();
    // `root` is berth's configuration: its ancestors are resolved normally, `root` itself
    // (a pool root) must not be a symlink, and nothing below it is followed.
    let mut dir = match open_dir_nofollow(root) {
        Ok(fd) => fd,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(stats),
        Err(e) => return Err(e),
    };
    let mut walked = root.to_path_buf();
    let (last, middle) = names
        .split_last()
        .ok_or_else(|| invalid("remove", path, "empty path"))?;
    for name in middle {
        walked.push(name);
        let c = cstring("open", &walked, name.as_bytes())?;
        dir = match nix::fcntl::openat(&dir, c.as_c_str(), oflags_dir(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(stats),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(not_a_dir_error("open", dir.as_fd(), &c, &walked));
            }
            Err(e) => return Err(nix_err("open", &walked, e)),
        };
    }
    let last_c = cstring("remove", path, last.as_bytes())?;
    let meta = match statx_at(dir.as_fd(), &last_c) {
        Ok(m) => m,
        Err(Errno::ENOENT) => return Ok(stats),
        Err(e) => return Err(nix_err("stat", path, e)),
    };
    if meta.is_symlink() {
        return Err(HostError::Symlink {
            path: path.to_path_buf(),
        });
    }
    let parent_meta = statx_fd(dir.as_fd()).map_err(|e| nix_err("stat", path, e))?;
    if meta.mount_root || meta.dev != parent_meta.dev {
        return Err(HostError::CrossesMount {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        unlink_counted(dir.as_fd(), &last_c, &meta, &mut stats)
            .map_err(|e| nix_err("unlink", path, e))?;
        fsync_fd(dir.as_fd(), path)?;
        return Ok(stats);
    }
    let top = match nix::fcntl::openat(&dir, last_c.as_c_str(), oflags_dir(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(stats),
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            return Err(not_a_dir_error("open", dir.as_fd(), &last_c, path));
        }
        Err(e) => return Err(nix_err("open", path, e)),
    };
    let top_meta = statx_fd(top.as_fd()).map_err(|e| nix_err("stat", path, e))?;
    if !top_meta.same_inode(&meta) || top_meta.mount_root {
        return Err(HostError::CrossesMount {
            path: path.to_path_buf(),
        });
    }
    let mounts = mounts_beneath(top.as_fd(), path)?;
    let mut walker = Walker::new(path, top, top_meta, None, mounts)?;
    let mut crossing: Option<PathBuf> = None;
    while let Some(step) = walker.next()? {
        match step {
            Step::Entry { name, meta } => {
                if walker.crosses(&name, &meta) {
                    crossing.get_or_insert_with(|| walker.path_of(&name));
                } else if meta.is_dir() {
                    walker.descend(&name, &meta, None)?;
                } else {
                    unlink_counted(walker.dir()?, &name, &meta, &mut stats)
                        .map_err(|e| nix_err("unlink", &walker.path_of(&name), e))?;
                }
            }
            Step::Leave { name, .. } => {
                let (parent, name) = if walker.is_empty() {
                    (dir.as_fd(), last_c.as_c_str())
                } else {
                    (walker.dir()?, name.as_c_str())
                };
                match nix::unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                    Ok(()) => stats.dirs += 1,
                    Err(Errno::ENOENT) => {}
                    // Holds the mount point we did not cross: reported below.
                    Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::EBUSY) if crossing.is_some() => {}
                    Err(e) => {
                        let entry_path = if walker.is_empty() {
                            path.to_path_buf()
                        } else {
                            walker.path_of(name)
                        };
                        return Err(nix_err("rmdir", &entry_path, e));
                    }
                }
            }
        }
    }
    fsync_fd(dir.as_fd(), path)?;
    match crossing {
        Some(path) => Err(HostError::CrossesMount { path }),
        None => Ok(stats),
    }
}

fn unlink_counted(
    dir: BorrowedFd<'_>,
    name: &CStr,
    meta: &Meta,
    stats: &mut RemovalStats,
) -> Result<(), Errno> {
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => {
            if meta.is_symlink() {
                stats.symlinks += 1;
            } else {
                stats.files += 1;
                if meta.is_file() {
                    stats.bytes += meta.size;
                }
            }
            Ok(())
        }
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------
// copy_tree
// ---------------------------------------------------------------------------------------

/// Opens the directory `path`, resolving its ancestors normally but refusing a symlink at
/// `path` itself ([`HostError::Symlink`]).
fn open_dir_nofollow(path: &Path) -> Result<OwnedFd, HostError> {
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

/// Copies the contents of `from` into `to` (whose own owner and mode are left as they are).
/// Regular files keep their holes; FIFOs, sockets and device nodes are recreated. Not
/// preserved: hard links (each name becomes its own file), extended attributes (ACLs, file
/// capabilities, SELinux labels). Existing destination files are overwritten, so a copy
/// interrupted by a crash can simply be run again. Ends with `syncfs` of the destination.
fn copy_tree(from: &Path, to: &Path) -> Result<(), HostError> {
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
fn copy_data(src: &File, dst: &File, size: u64) -> io::Result<()> {
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

// ---------------------------------------------------------------------------------------
// tree_usage
// ---------------------------------------------------------------------------------------

fn tree_usage(path: &Path) -> Result<TreeUsage, HostError> {
    let mut usage = TreeUsage::default();
    let meta = match statx_path(path) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(usage),
        Err(e) => return Err(e),
    };
    if meta.is_symlink() {
        return Err(HostError::Symlink {
            path: path.to_path_buf(),
        });
    }
    usage.bytes = meta.blocks * 512;
    usage.inodes = 1;
    if !meta.is_dir() {
        return Ok(usage);
    }
    let top = match nix::fcntl::open(path, oflags_dir(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(TreeUsage::default()),
        Err(e) => return Err(nix_err("open", path, e)),
    };
    let top_meta = statx_fd(top.as_fd()).map_err(|e| nix_err("stat", path, e))?;
    let mounts = mounts_beneath(top.as_fd(), path)?;
    let mut walker = Walker::new(path, top, top_meta, None, mounts)?;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    while let Some(step) = walker.next()? {
        if let Step::Entry { name, meta } = step {
            if walker.crosses(&name, &meta) {
                continue;
            }
            if !meta.is_dir() && meta.nlink > 1 && !seen.insert((meta.dev, meta.ino)) {
                continue; // another name of a file already counted
            }
            usage.bytes += meta.blocks * 512;
            usage.inodes += 1;
            if meta.is_dir() {
                walker.descend(&name, &meta, None)?;
            }
        }
    }
    Ok(usage)
}

// ---------------------------------------------------------------------------------------
// Images and filesystems
// ---------------------------------------------------------------------------------------

/// What filesystem signature the start of an image carries.
fn detect_fs(file: &File, path: &Path) -> Result<Option<FsType>, HostError> {
    let mut head = [0u8; 2048];
    let mut got = 0;
    while got < head.len() {
        let n = file
            .read_at(&mut head[got..], got as u64)
            .map_err(|e| HostError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    // XFS: "XFSB" at 0; byte 126 is sb_inprogress, set while mkfs.xfs has not finished.
    if got >= 128 && &head[0..4] == b"XFSB" && head[126] == 0 {
        return Ok(Some(FsType::Xfs));
    }
    // ext2/3/4: s_magic 0xEF53 (little endian) at 1024 + 56.
    if got >= 1082 && head[1080] == 0x53 && head[1081] == 0xEF {
        return Ok(Some(FsType::Ext4));
    }
    Ok(None)
}

/// Finds an administration tool: `$PATH` first, then the usual sbin directories (a daemon's
/// environment may lack them).
fn tool(name: &str) -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A finished tool run: its exit status, its complaint (stderr and stdout) and its command
/// line, for messages.
struct ToolRun {
    status: std::process::ExitStatus,
    text: String,
    command: String,
}

impl ToolRun {
    fn error(self) -> HostError {
        HostError::Command {
            command: self.command,
            status: self.status.to_string(),
            stderr: self.text,
        }
    }
}

fn run_tool(name: &str, args: &[&OsStr]) -> Result<ToolRun, HostError> {
    let program = tool(name);
    let mut command = name.to_string();
    for a in args {
        command.push(' ');
        command.push_str(&a.to_string_lossy());
    }
    let output = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HostError::io("exec", &program, e))?;
    // Both: e2fsck, say, says why on stdout ("... is in use.") and that it gave up on stderr.
    let text = [&output.stderr, &output.stdout]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Ok(ToolRun {
        status: output.status,
        text,
        command,
    })
}

fn run(name: &str, args: &[&OsStr]) -> Result<(), HostError> {
    let done = run_tool(name, args)?;
    if done.status.success() {
        Ok(())
    } else {
        Err(done.error())
    }
}

fn mkfs(image: &Path, fs: FsType) -> Result<(), HostError> {
    let img = image.as_os_str();
    match fs {
        FsType::Ext4 => run(
            "mkfs.ext4",
            &[
                OsStr::new("-q"),
                OsStr::new("-F"),
                OsStr::new("-E"),
                OsStr::new("nodiscard,lazy_itable_init=1,lazy_journal_init=1"),
                OsStr::new("-m"),
                OsStr::new("0"),
                img,
            ],
        ),
        FsType::Xfs => run(
            "mkfs.xfs",
            &[OsStr::new("-q"), OsStr::new("-f"), OsStr::new("-K"), img],
        ),
    }
}

fn create_image(image: &Path, size: u64, fs: Option<FsType>) -> Result<(), HostError> {
    let (parent, name) = open_parent(image)?;
    let fd = nix::fcntl::openat(
        &parent,
        name,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| match e {
        Errno::ELOOP => HostError::Symlink {
            path: image.to_path_buf(),
        },
        e => nix_err("create", image, e),
    })?;
    let meta = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", image, e))?;
    if !meta.is_file() {
        return Err(invalid("create", image, "exists and is not a regular file"));
    }
    let file = File::from(fd);
    if meta.size == 0 && size > 0 {
        let len = i64::try_from(size).map_err(|_| invalid("truncate", image, "size too large"))?;
        nix::unistd::ftruncate(&file, len).map_err(|e| nix_err("ftruncate", image, e))?;
    } else if meta.size != size {
        return Err(invalid(
            "create",
            image,
            format!("exists with {} bytes, not {size}", meta.size),
        ));
    }
    if let Some(fs) = fs {
        match detect_fs(&file, image)? {
            Some(found) if found == fs => {}
            Some(found) => {
                return Err(invalid(
                    "mkfs",
                    image,
                    format!("already holds {}, not {}", found.as_str(), fs.as_str()),
                ));
            }
            None => mkfs(image, fs)?,
        }
    }
    fsync_fd(file.as_fd(), image)?;
    fsync_fd(parent.as_fd(), image)
}

// ---------------------------------------------------------------------------------------
// Loop devices
// ---------------------------------------------------------------------------------------

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>` (the `LOOP_CONFIGURE` argument).
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

mod ioctl {
    use super::LoopConfig;
    // From <linux/loop.h>; these are "bad" (not _IOC-encoded) request numbers.
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_none_bad!(loop_set_capacity, 0x4C07);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
}

/// An attached loop device as `/sys/block` shows it.
#[derive(Clone, Debug)]
struct SysLoop {
    device: PathBuf,
    backing: PathBuf,
    /// `major:minor`, as in mountinfo.
    devnum: String,
    autoclear: bool,
}

fn read_sys(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim_end_matches('\n').to_string())
}

fn sys_loops() -> Result<Vec<SysLoop>, HostError> {
    let sys = Path::new("/sys/block");
    let entries = std::fs::read_dir(sys).map_err(|e| HostError::io("readdir", sys, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostError::io("readdir", sys, e))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let backing = match read_sys(&dir.join("loop/backing_file")) {
            Ok(b) => b,
            // Not attached (or detached meanwhile).
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(HostError::io("read", &dir.join("loop/backing_file"), e)),
        };
        let backing = backing
            .strip_suffix(" (deleted)")
            .map(str::to_string)
            .unwrap_or(backing);
        let devnum = read_sys(&dir.join("dev")).unwrap_or_else(|_| format!("7:{number}"));
        let autoclear = read_sys(&dir.join("loop/autoclear")).is_ok_and(|s| s.trim() == "1");
        out.push((
            number,
            SysLoop {
                device: PathBuf::from(format!("/dev/loop{number}")),
                backing: PathBuf::from(backing),
                devnum,
                autoclear,
            },
        ));
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out.into_iter().map(|(_, l)| l).collect())
}

/// Loop devices whose backing file is `image` (same device and inode; a deleted or replaced
/// file does not match).
fn loops_of(image: &Path) -> Result<Vec<SysLoop>, HostError> {
    let want = statx_path(image)?;
    Ok(sys_loops()?
        .into_iter()
        .filter(|l| statx_path(&l.backing).is_ok_and(|m| m.same_inode(&want) && m.is_file()))
        .collect())
}

/// Opens `/dev/loopN`, making the node if there is no udev to do it.
fn open_loop_node(number: i32) -> Result<(OwnedFd, PathBuf), HostError> {
    let device = PathBuf::from(format!("/dev/loop{number}"));
    let flags = OFlag::O_RDWR | OFlag::O_CLOEXEC;
    match nix::fcntl::open(&device, flags, Mode::empty()) {
        Ok(fd) => return Ok((fd, device)),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(nix_err("open", &device, e)),
    }
    let sys = PathBuf::from(format!("/sys/block/loop{number}/dev"));
    let devnum = read_sys(&sys).map_err(|e| HostError::io("read", &sys, e))?;
    let (major, minor) = devnum
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| invalid("read", &sys, format!("bad device number {devnum:?}")))?;
    match nix::sys::stat::mknod(
        &device,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        libc::makedev(major, minor),
    ) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(nix_err("mknod", &device, e)),
    }
    let fd =
        nix::fcntl::open(&device, flags, Mode::empty()).map_err(|e| nix_err("open", &device, e))?;
    Ok((fd, device))
}

/// Attaches `image` to a fresh loop device; returns the open device (keep it open until the
/// device has another user when `autoclear` is set) and its path.
fn attach(image: &Path, autoclear: bool) -> Result<(OwnedFd, PathBuf), HostError> {
    let backing = nix::fcntl::open(
        image,
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => HostError::Symlink {
            path: image.to_path_buf(),
        },
        e => nix_err("open", image, e),
    })?;
    let meta = statx_fd(backing.as_fd()).map_err(|e| nix_err("stat", image, e))?;
    if !meta.is_file() {
        return Err(invalid("attach", image, "not a regular file"));
    }
    let control_path = Path::new("/dev/loop-control");
    let control = nix::fcntl::open(
        control_path,
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| nix_err("open", control_path, e))?;
    let mut name = [0u8; LO_NAME_SIZE];
    let bytes = image.as_os_str().as_bytes();
    let n = bytes.len().min(LO_NAME_SIZE - 1);
    name[..n].copy_from_slice(&bytes[..n]);
    let backing_fd =
        u32::try_from(backing.as_raw_fd()).map_err(|_| invalid("attach", image, "negative fd"))?;
    let mut flags = LO_FLAGS_DIRECT_IO | if autoclear { LO_FLAGS_AUTOCLEAR } else { 0 };
    let mut last_error = None;
    for _ in 0..LOOP_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument; `control` is an open fd of
        // /dev/loop-control for the duration of the call.
        let number = unsafe { ioctl::loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(|e| nix_err("LOOP_CTL_GET_FREE", control_path, e))?;
        let (device_fd, device) = open_loop_node(number)?;
        loop {
            let config = LoopConfig {
                fd: backing_fd,
                block_size: 0,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: 0,
                    lo_sizelimit: 0,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: flags,
                    lo_file_name: name,
                    lo_crypt_name: [0; LO_NAME_SIZE],
                    lo_encrypt_key: [0; LO_KEY_SIZE],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `LoopConfig`
            // mirrors exactly (#[repr(C)], sizes asserted at compile time); the pointer is to
            // a live local for the duration of the call, and `device_fd`/`backing` are open
            // fds. The kernel takes its own reference to the backing file.
            let result = unsafe { ioctl::loop_configure(device_fd.as_raw_fd(), &config) };
            match result {
                Ok(_) => return Ok((device_fd, device)),
                Err(Errno::EINVAL) if flags & LO_FLAGS_DIRECT_IO != 0 => {
                    // The backing filesystem can not do O_DIRECT: buffered it is.
                    flags &= !LO_FLAGS_DIRECT_IO;
                }
                Err(Errno::EBUSY) => {
                    // Another process configured this device first: ask for another one.
                    last_error = Some(nix_err("LOOP_CONFIGURE", &device, Errno::EBUSY));
                    break;
                }
                Err(e) => return Err(nix_err("LOOP_CONFIGURE", &device, e)),
            }
        }
    }
    Err(last_error.unwrap_or_else(|| nix_err("LOOP_CONFIGURE", image, Errno::EBUSY)))
}

fn clear_loop(fd: BorrowedFd<'_>, device: &Path) -> Result<(), HostError> {
    // SAFETY: LOOP_CLR_FD takes no argument; `fd` is an open fd of a loop device.
    match unsafe { ioctl::loop_clr_fd(fd.as_raw_fd()) } {
        Ok(_) | Err(Errno::ENXIO) => Ok(()),
        Err(e) => Err(nix_err("LOOP_CLR_FD", device, e)),
    }
}

fn open_device(device: &Path) -> Result<Option<OwnedFd>, HostError> {
    match nix::fcntl::open(device, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        // Detached meanwhile (a device being torn down refuses new openers with ENXIO).
        Err(Errno::ENOENT | Errno::ENXIO) => Ok(None),
        Err(e) => Err(nix_err("open", device, e)),
    }
}

fn mount_image(image: &Path, target: &Path, fs: FsType) -> Result<(), HostError> {
    let (target_fd, target_meta) = open_nofollow(target)?;
    if !target_meta.is_dir() {
        return Err(invalid("mount", target, "not a directory"));
    }
    let ours = loops_of(image)?;
    if target_meta.mount_root {
        let entry = mount_by_id(target_meta.mnt_id)?;
        if let Some(entry) = entry {
            if ours.iter().any(|l| l.devnum == entry.device) {
                return Ok(()); // already mounted here
            }
            return Err(invalid(
                "mount",
                target,
                format!(
                    "already has a mount of {} ({})",
                    entry.source, entry.fs_type
                ),
            ));
        }
    }
    // Reuse a device already backed by the image: a second device over the same file would
    // be a second, independent block device and mounting both corrupts the filesystem.
    let mut device = None;
    for l in &ours {
        if let Some(fd) = open_device(&l.device)? {
            device = Some((fd, l.device.clone(), false));
            break;
        }
    }
    let (device_fd, device, fresh) = match device {
        Some(d) => d,
        None => {
            let (fd, dev) = attach(image, true)?;
            (fd, dev, true)
        }
    };
    let result = nix::mount::mount(
        Some(device.as_path()),
        &fd_path(target_fd.as_fd()),
        Some(fs.as_str()),
        MsFlags::empty(),
        None::<&str>,
    );
    match result {
        Ok(()) => Ok(()), // closing `device_fd` leaves the mount as the device's only user
        Err(e) => {
            let error = nix_err("mount", target, e);
            if fresh {
                // Best effort: with AUTOCLEAR the close below detaches it anyway.
                let _ = clear_loop(device_fd.as_fd(), &device);
            }
            drop(device_fd);
            Err(error)
        }
    }
}

fn grow_image(image: &Path, size: u64, mounted: Option<(&Path, FsType)>) -> Result<(), HostError> {
    let fd = nix::fcntl::open(
        image,
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => HostError::Symlink {
            path: image.to_path_buf(),
        },
        e => nix_err("open", image, e),
    })?;
    let meta = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", image, e))?;
    if !meta.is_file() {
        return Err(invalid("grow", image, "not a regular file"));
    }
    if size < meta.size {
        return Err(invalid(
            "grow",
            image,
            format!(
                "is {} bytes; shrinking to {size} is not supported",
                meta.size
            ),
        ));
    }
    let ours = loops_of(image)?;
    // Where the filesystem is mounted, and whether it can grow there, is settled before
    // anything changes: a refused grow leaves the image and its device as they were.
    let target = match mounted {
        None => None,
        Some((mount_point, fs)) => {
            let (entry, device) = mounted_from(image, mount_point, &ours)?;
            if fs == FsType::Ext4 && !has_capability(CAP_SYS_RESOURCE)? {
                offline_grow_refusal(mount_point, &entry)?;
            }
            Some((mount_point, fs, entry, device))
        }
    };
    // Extends the image and tells its loop devices; doing it again changes nothing.
    let extend = || -> Result<(), HostError> {
        if size > meta.size {
            let len = i64::try_from(size).map_err(|_| invalid("grow", image, "size too large"))?;
            nix::unistd::ftruncate(&fd, len).map_err(|e| nix_err("ftruncate", image, e))?;
            fsync_fd(fd.as_fd(), image)?;
        }
        for l in &ours {
            if let Some(dev) = open_device(&l.device)? {
                // SAFETY: LOOP_SET_CAPACITY takes no argument; `dev` is an open loop device fd.
                unsafe { ioctl::loop_set_capacity(dev.as_raw_fd()) }
                    .map_err(|e| nix_err("LOOP_SET_CAPACITY", &l.device, e))?;
            }
        }
        Ok(())
    };
    let Some((mount_point, fs, entry, device)) = target else {
        return extend();
    };
    match fs {
        FsType::Ext4 => grow_ext4(mount_point, &entry, &device, &extend),
        FsType::Xfs => {
            extend()?;
            run("xfs_growfs", &[OsStr::new("-d"), mount_point.as_os_str()])
        }
    }
}

/// The mount at `mount_point` (its root) and the one of `ours`, the loop devices of
/// `image`, that it is made from.
fn mounted_from(
    image: &Path,
    mount_point: &Path,
    ours: &[SysLoop],
) -> Result<(MountEntry, SysLoop), HostError> {
    let (mp_fd, mp_meta) = open_nofollow(mount_point)?;
    let entry = if mp_meta.mount_root {
        mount_by_id(mp_meta.mnt_id)?
    } else {
        None
    };
    drop(mp_fd);
    let Some(entry) = entry else {
        return Err(invalid("grow", mount_point, "is not a mount point"));
    };
    let Some(device) = ours.iter().find(|l| l.devnum == entry.device) else {
        return Err(invalid(
            "grow",
            mount_point,
            format!(
                "holds {}, not a loop device of {}",
                entry.source,
                image.display()
            ),
        ));
    };
    Ok((entry, device.clone()))
}

const CAP_SYS_RESOURCE: u32 = 24;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct` of `<linux/capability.h>`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const _: () = assert!(std::mem::size_of::<CapHeader>() == 8);
const _: () = assert!(std::mem::size_of::<CapData>() == 12);

/// Whether the calling thread has capability `cap` in effect (`capget(2)`).
fn has_capability(cap: u32) -> Result<bool, HostError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: with a version-3 header, capget reads `header` and writes two
    // `__user_cap_data_struct`s (mirrored by `CapData`, sizes asserted) to `data`, a live
    // local array of exactly two; both pointers are valid for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::from_mut(&mut header),
            data.as_mut_ptr(),
        )
    };
    Errno::result(rc).map_err(|e| nix_err("capget", Path::new("/proc/thread-self"), e))?;
    let word = usize::try_from(cap / 32).unwrap_or(usize::MAX);
    Ok(data
        .get(word)
        .is_some_and(|d| d.effective & (1 << (cap % 32)) != 0))
}

fn is_permission_denied(error: &HostError) -> bool {
    matches!(error, HostError::Command { stderr, .. }
        if stderr.contains("Permission denied") || stderr.contains("Operation not permitted"))
}

/// Grows the ext4 mounted at `mount_point` (the mount `entry`, on `device`) to its device's
/// size: online with `CAP_SYS_RESOURCE`, else offline if nothing else mounts it.
/// `extend` makes the image and its device larger; offline, it runs only once the
/// filesystem is checked, so a filesystem that turns out to be busy is left as it was.
fn grow_ext4(
    mount_point: &Path,
    entry: &MountEntry,
    device: &SysLoop,
    extend: &dyn Fn() -> Result<(), HostError>,
) -> Result<(), HostError> {
    if has_capability(CAP_SYS_RESOURCE)? {
        extend()?;
        match run("resize2fs", &[device.device.as_os_str()]) {
            Ok(()) => return Ok(()),
            // The capability is there but the resize was refused anyway (an LSM, a user
            // namespace that does not own the filesystem): offline it is.
            Err(e) if is_permission_denied(&e) => {}
            Err(e) => return Err(e),
        }
    }
    grow_ext4_offline(mount_point, entry, device, extend)
}

/// The `MS_*` flags that reproduce a mount's per-mount options (mountinfo field 6).
fn mount_flags(options: &str) -> MsFlags {
    let mut flags = MsFlags::empty();
    for option in options.split(',') {
        flags |= match option {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        };
    }
    flags
}

/// `e2fsck -f -p`: exit codes 0 (clean), 1 (errors fixed) and 2 (fixed, "reboot" — which
/// only matters for a mounted root filesystem) are fine; `resize2fs` insists on a freshly
/// checked filesystem.
fn check_ext4(device: &Path) -> Result<(), HostError> {
    let done = run_tool(
        "e2fsck",
        &[OsStr::new("-f"), OsStr::new("-p"), device.as_os_str()],
    )?;
    match done.status.code() {
        Some(0..=2) => Ok(()),
        _ => Err(done.error()),
    }
}

fn mount_device(
    device: &Path,
    mount_point: &Path,
    fs: &str,
    flags: MsFlags,
) -> Result<(), HostError> {
    let (fd, meta) = open_nofollow(mount_point)?;
    if !meta.is_dir() {
        return Err(invalid("mount", mount_point, "not a directory"));
    }
    nix::mount::mount(
        Some(device),
        &fd_path(fd.as_fd()),
        Some(fs),
        flags,
        None::<&str>,
    )
    .map_err(|e| nix_err("mount", mount_point, e))
}

/// Unmounts `mount_point`, retrying `EBUSY` briefly: a holder may be transient (a child
/// process forked elsewhere in this process that has not reached `exec` and its
/// close-on-exec yet, a udev probe). A mount still busy after that is reported.
fn unmount_when_idle(mount_point: &Path) -> Result<(), HostError> {
    let mut tries = 0;
    loop {
        match nix::mount::umount2(mount_point, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) if tries < 5 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(nix_err("umount", mount_point, e)),
        }
    }
}

/// Why the ext4 mounted at `mount_point` (the mount `entry`) cannot be grown offline, if it
/// cannot: another mount of it (a container may be using it), or a mount of a directory
/// inside it rather than its root.
fn offline_grow_refusal(mount_point: &Path, entry: &MountEntry) -> Result<(), HostError> {
    let others: Vec<String> = read_mountinfo()?
        .into_iter()
        .filter(|m| m.device == entry.device && m.id != entry.id)
        .map(|m| m.mount_point.display().to_string())
        .collect();
    if entry.root != Path::new("/") {
        // Mounting the device again would put the filesystem's root where a subdirectory
        // of it was: not the same mount. (berth's own image mounts are of the root.)
        return Err(HostError::Unsupported(format!(
            "online ext4 resize needs CAP_SYS_RESOURCE, and {} is a mount of {} inside the \
             filesystem, which berth does not remount",
            mount_point.display(),
            entry.root.display()
        )));
    }
    if !others.is_empty() {
        return Err(HostError::Unsupported(format!(
            "online ext4 resize needs CAP_SYS_RESOURCE; unpublish the volume to grow it \
             offline (also mounted at {})",
            others.join(", ")
        )));
    }
    Ok(())
}

/// Offline grow: see the module docs. Refused while the filesystem has another mount.
fn grow_ext4_offline(
    mount_point: &Path,
    entry: &MountEntry,
    device: &SysLoop,
    extend: &dyn Fn() -> Result<(), HostError>,
) -> Result<(), HostError> {
    offline_grow_refusal(mount_point, entry)?;
    // The device detaches itself on its last close (autoclear): hold it across the unmount.
    let Some(hold) = open_device(&device.device)? else {
        return Err(invalid(
            "grow",
            &device.device,
            "loop device went away during the grow",
        ));
    };
    let flags = mount_flags(&entry.options);
    unmount_when_idle(mount_point)?;
    let resized = check_ext4(&device.device)
        .and_then(|()| extend())
        .and_then(|()| run("resize2fs", &[device.device.as_os_str()]));
    let remounted = mount_device(&device.device, mount_point, "ext4", flags);
    drop(hold);
    match (resized, remounted) {
        (resized, Ok(())) => resized,
        (resized, Err(mount_error)) => {
            let mut message = format!(
                "{mount_error}; the filesystem on {} is left unmounted",
                device.device.display()
            );
            if let Err(e) = resized {
                message.push_str(&format!(" (the offline resize failed too: {e})"));
            }
            Err(HostError::io(
                "mount after offline resize",
                mount_point,
                io::Error::other(message),
            ))
        }
    }
}

fn attach_loop(image: &Path) -> Result<PathBuf, HostError> {
    let ours = loops_of(image)?;
    if let Some(l) = ours.iter().find(|l| !l.autoclear) {
        return Ok(l.device.clone());
    }
    if let Some(l) = ours.first() {
        // An autoclear device belongs to a mounted filesystem (or is being detached).
        return Err(HostError::io(
            "attach",
            image,
            io::Error::new(
                ErrorKind::ResourceBusy,
                format!(
                    "in use through {} (mounted or detaching)",
                    l.device.display()
                ),
            ),
        ));
    }
    let (_fd, device) = attach(image, false)?;
    Ok(device)
}

fn detach_loop(image: &Path) -> Result<(), HostError> {
    let ours = match loops_of(image) {
        Ok(l) => l,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    for l in ours {
        if let Some(fd) = open_device(&l.device)? {
            clear_loop(fd.as_fd(), &l.device)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------

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

fn bind_mount(source: &Path, target: &Path, read_only: bool) -> Result<(), HostError> {
    let (src_fd, src_meta) = open_nofollow(source)?;
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

fn unmount(target: &Path) -> Result<(), HostError> {
    match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
        Err(e) => Err(nix_err("umount", target, e)),
    }
}

// ---------------------------------------------------------------------------------------
// Targets, directories, renames
// ---------------------------------------------------------------------------------------

fn make_dir(dir: &Path, ownership: &Ownership) -> Result<(), HostError> {
    let (parent, name) = open_parent(dir)?;
    let mode = ownership.mode.unwrap_or(0o755) & 0o7777;
    match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(nix_err("mkdir", dir, e)),
    }
    let c = cstring("mkdir", dir, name.as_bytes())?;
    let fd =
        nix::fcntl::openat(&parent, c.as_c_str(), oflags_dir(), Mode::empty()).map_err(|e| {
            if e == Errno::ELOOP || e == Errno::ENOTDIR {
                not_a_dir_error("mkdir", parent.as_fd(), &c, dir)
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
    if let Some(mode) = ownership.mode {
        // After chown (which clears set-id bits); exact, whatever the umask.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777))
            .map_err(|e| nix_err("chmod", dir, e))?;
    }
    fsync_fd(fd.as_fd(), dir)?;
    fsync_fd(parent.as_fd(), dir)
}

fn rename(from: &Path, to: &Path) -> Result<(), HostError> {
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

fn prepare_target(target: &Path, kind: TargetKind) -> Result<bool, HostError> {
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
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
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

fn remove_target(target: &Path, kind: TargetKind) -> Result<(), HostError> {
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

fn sync_path(path: &Path) -> Result<(), HostError> {
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

fn fs_stats(path: &Path) -> Result<FsStats, HostError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| nix_err("statvfs", path, e))?;
    let frsize = st.fragment_size();
    Ok(FsStats {
        bytes_total: st.blocks() * frsize,
        bytes_free: st.blocks_free() * frsize,
        bytes_available: st.blocks_available() * frsize,
        inodes_total: st.files(),
        inodes_free: st.files_free(),
    })
}

impl Host for LinuxHost {
    fn make_dir(&self, dir: &Path, ownership: &Ownership) -> Result<(), HostError> {
        make_dir(dir, ownership)
    }

    fn remove_tree(&self, root: &Path, path: &Path) -> Result<RemovalStats, HostError> {
        remove_tree(root, path)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        rename(from, to)
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        copy_tree(from, to)
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

    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), HostError> {
        bind_mount(source, target, read_only)
    }

    fn unmount(&self, target: &Path) -> Result<(), HostError> {
        unmount(target)
    }

    fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        read_mountinfo()
    }

    fn create_image(&self, image: &Path, size: u64, fs: Option<FsType>) -> Result<(), HostError> {
        create_image(image, size, fs)
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

    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        fs_stats(path)
    }

    fn tree_usage(&self, path: &Path) -> Result<TreeUsage, HostError> {
        tree_usage(path)
    }

    fn sync_path(&self, path: &Path) -> Result<(), HostError> {
        sync_path(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_file_name), 56);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_init), 216);
        assert_eq!(std::mem::offset_of!(LoopConfig, info), 8);
        assert_eq!(std::mem::offset_of!(LoopConfig, reserved), 240);
    }

    #[test]
    fn mount_flags_from_options() {
        assert_eq!(
            mount_flags("ro,nosuid,nodev,relatime"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RELATIME
        );
        assert_eq!(mount_flags("rw"), MsFlags::empty());
    }

    #[test]
    fn capget_answers() {
        // Whatever this process has, the call itself must work.
        assert!(has_capability(CAP_SYS_RESOURCE).is_ok());
        assert!(has_capability(63).is_ok());
    }

    #[test]
    fn beneath_is_lexical_and_strict() {
        let root = Path::new("/var/lib/berth");
        assert!(beneath(root, Path::new("/var/lib/berth/v/a")).is_ok());
        for bad in [
            "/var/lib/berth",
            "/var/lib/berthx/a",
            "/var/lib/berth/../etc",
            "/var/lib/berth/a/../../etc",
            "/etc",
            "relative/a",
        ] {
            assert!(
                matches!(
                    beneath(root, Path::new(bad)),
                    Err(HostError::OutsideRoot { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            beneath(Path::new("/var/../var"), Path::new("/var/x")),
            Err(HostError::OutsideRoot { .. })
        ));
    }

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
