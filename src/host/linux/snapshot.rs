//! Point-in-time copies of loopfs images: a reflink where the pool's filesystem shares
//! blocks, a sparse copy otherwise, taken with the volume's filesystem frozen.
//!
//! # Kernel semantics relied on
//! - **`FICLONE`** (`_IOW(0x94, 9, int)` on the destination fd, the source fd as argument)
//!   makes the destination share every extent of the source, copy-on-write, in one call;
//!   btrfs and xfs (reflink=1) support it, others answer `EOPNOTSUPP`/`EINVAL`/`EXDEV`,
//!   and berth falls back to the hole-skipping `copy_file_range` copy the tree copy uses.
//! - **`FIFREEZE`/`FITHAW`** (`_IOWR('X', 119/120, int)` on any fd of the filesystem)
//!   flush a mounted filesystem to its device and block new writes until the thaw. With a
//!   direct-I/O loop device the flushed blocks are in the image file, so a copy made while
//!   frozen is a clean, consistent filesystem. `FIFREEZE` of a frozen filesystem answers
//!   `EBUSY`; `FITHAW` of a thawed one answers `EINVAL`, which counts as thawed. The freeze
//!   is a kernel state: it outlives the process that set it, so a crash while frozen leaves
//!   the volume frozen until someone thaws it. The engine records its intent before
//!   freezing and recovery thaws ([`super::super::Host::thaw`]).
//! - The copy is written to its final name with `O_CREAT|O_TRUNC|O_NOFOLLOW`, so a retry
//!   after a crash overwrites a half-made copy; the engine publishes the snapshot only after
//!   the call returned.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::copy::copy_data;
use super::fd::{fsync_fd, invalid, nix_err, open_dir_nofollow, open_parent, statx_fd};
use crate::host::HostError;

mod ioctl {
    nix::ioctl_write_int!(ficlone, 0x94, 9);
    nix::ioctl_readwrite_bad!(fifreeze, 0xC004_5877, libc::c_int);
    nix::ioctl_readwrite_bad!(fithaw, 0xC004_5878, libc::c_int);
}

// The request numbers as <linux/fs.h> computes them.
const _: () = assert!(nix::request_code_write!(0x94, 9, size_of::<libc::c_int>()) == 0x4004_9409);
const _: () =
    assert!(nix::request_code_readwrite!(b'X', 119, size_of::<libc::c_int>()) == 0xC004_5877);
const _: () =
    assert!(nix::request_code_readwrite!(b'X', 120, size_of::<libc::c_int>()) == 0xC004_5878);

/// A frozen filesystem, thawed when dropped (also on an early return or a panic).
struct Frozen {
    fd: OwnedFd,
    path: std::path::PathBuf,
}

impl Frozen {
    fn freeze(mount_point: &Path) -> Result<Self, HostError> {
        let fd = open_dir_nofollow(mount_point)?;
        let mut arg: libc::c_int = 0;
        // SAFETY: FIFREEZE takes an int argument it ignores; `arg` is a live local for the
        // duration of the call and `fd` an open directory of the filesystem to freeze.
        match unsafe { ioctl::fifreeze(fd.as_raw_fd(), &mut arg) } {
            Ok(_) => Ok(Self {
                fd,
                path: mount_point.to_path_buf(),
            }),
            Err(Errno::EBUSY) => Err(HostError::io(
                "FIFREEZE",
                mount_point,
                std::io::Error::other(
                    "the filesystem is frozen already (by another snapshot or by hand)",
                ),
            )),
            Err(e) => Err(nix_err("FIFREEZE", mount_point, e)),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = thaw_fd(self.fd.as_fd(), &self.path) {
            tracing::error!(path = %self.path.display(), error = %e, "thawing after a snapshot");
        }
    }
}

fn thaw_fd(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> Result<(), HostError> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FITHAW takes an int argument it ignores; `arg` is a live local and `fd` an
    // open fd on the filesystem for the duration of the call.
    match unsafe { ioctl::fithaw(fd.as_raw_fd(), &mut arg) } {
        Ok(_) | Err(Errno::EINVAL) => Ok(()),
        Err(e) => Err(nix_err("FITHAW", path, e)),
    }
}

/// Thaws the filesystem mounted at `mount_point`; not frozen (or not mounted, or missing)
/// is success.
pub(super) fn thaw(mount_point: &Path) -> Result<(), HostError> {
    match open_dir_nofollow(mount_point) {
        Ok(fd) => thaw_fd(fd.as_fd(), mount_point),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies the image `from` to `to` (see the module docs), with the filesystem mounted at
/// `freeze` frozen for the copy when given. Ends with `fsync` of the copy and its directory.
pub(super) fn copy_image(from: &Path, to: &Path, freeze: Option<&Path>) -> Result<(), HostError> {
    let src = nix::fcntl::open(
        from,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| nix_err("open", from, e))?;
    let src_meta = statx_fd(src.as_fd()).map_err(|e| nix_err("stat", from, e))?;
    if !src_meta.is_file() {
        return Err(invalid("copy", from, "is not a regular file"));
    }
    let (parent, name) = open_parent(to)?;
    let dst = nix::fcntl::openat(
        &parent,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| match e {
        Errno::ELOOP => HostError::Symlink {
            path: to.to_path_buf(),
        },
        e => nix_err("create", to, e),
    })?;
    let dst_meta = statx_fd(dst.as_fd()).map_err(|e| nix_err("stat", to, e))?;
    if !dst_meta.is_file() || dst_meta.same_inode(&src_meta) {
        return Err(invalid("copy", to, "is not a separate regular file"));
    }
    let src = File::from(src);
    let dst = File::from(dst);
    {
        let _frozen = freeze.map(Frozen::freeze).transpose()?;
        // The size is read again under the freeze: a grow may have run before it.
        let size = statx_fd(src.as_fd())
            .map_err(|e| nix_err("stat", from, e))?
            .size;
        // SAFETY: FICLONE reads the source fd number from its argument; both fds are open
        // (borrowed from live `File`s) for the duration of the call, and no memory of ours
        // is passed.
        let cloned = unsafe { ioctl::ficlone(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) };
        match cloned {
            Ok(_) => {}
            Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::EXDEV | Errno::ENOTTY) => {
                copy_data(&src, &dst, size).map_err(|e| HostError::io("copy", to, e))?;
            }
            Err(e) => return Err(nix_err("FICLONE", to, e)),
        }
    }
    dst.sync_all().map_err(|e| HostError::io("fsync", to, e))?;
    fsync_fd(parent.as_fd(), to)
}
