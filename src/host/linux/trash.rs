//! The trash of a pool base: a deleted image is renamed into it (the durable step of a
//! delete) and unlinked later, off the request's path. Unlinking a fully allocated image
//! frees every extent, and on a host filesystem mounted with `discard` the kernel discards
//! them all synchronously inside `unlinkat`: hundreds of milliseconds for a few tens of MiB.
//! The trash is opened fd-relative from its parent without following a symlink, must not be
//! another mount, and its entries are unlinked, never followed.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::RenameFlags;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use super::dir_sync::fsync_shared_dir;
use super::fd::{
    cstring, fsync_fd, invalid, nix_err, not_a_dir_error, oflags_dir, open_parent, statx_at,
    statx_fd,
};
use super::walk::{read_entries, remove_tree};
use crate::host::{HostError, RemovalStats};

/// Told apart from every other name moved into a trash by this process.
static MOVED: AtomicU64 = AtomicU64::new(0);

/// Opens the trash directory (made first when `create`), refusing a symlink or a mount
/// there. `None`: missing and not to be made.
fn open_trash(trash: &Path, create: bool) -> Result<Option<OwnedFd>, HostError> {
    let (parent, name) = open_parent(trash)?;
    if create {
        match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => fsync_fd(parent.as_fd(), trash)?,
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(nix_err("mkdir", trash, e)),
        }
    }
    let c = cstring("open", trash, name.as_bytes())?;
    let fd = match nix::fcntl::openat(&parent, c.as_c_str(), oflags_dir(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) if !create => return Ok(None),
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            return Err(not_a_dir_error("open", parent.as_fd(), &c, trash));
        }
        Err(e) => return Err(nix_err("open", trash, e)),
    };
    let meta = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", trash, e))?;
    let parent_meta = statx_fd(parent.as_fd()).map_err(|e| nix_err("stat", trash, e))?;
    if meta.mount_root || meta.dev != parent_meta.dev {
        return Err(HostError::CrossesMount {
            path: trash.to_path_buf(),
        });
    }
    Ok(Some(fd))
}

/// A name no other entry of the trash has: the moved entry's own name (for whoever looks),
/// the time and a counter.
fn trash_name(path: &Path, from: &OsStr) -> Result<CString, HostError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = MOVED.fetch_add(1, Ordering::Relaxed);
    let mut bytes = from.as_bytes().to_vec();
    bytes.extend_from_slice(format!(".{nanos}.{}.{n}", std::process::id()).as_bytes());
    cstring("rename", path, &bytes)
}

pub(super) fn move_to_trash(trash: &Path, paths: &[&Path]) -> Result<u64, HostError> {
    let mut bytes = 0;
    let mut parents = Vec::new();
    let mut trash_fd = None;
    for path in paths {
        let (from_parent, from_name) = open_parent(path)?;
        let from_c = cstring("stat", path, from_name.as_bytes())?;
        let meta = match statx_at(from_parent.as_fd(), &from_c) {
            Ok(m) => m,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(nix_err("stat", path, e)),
        };
        if meta.mount_root {
            return Err(HostError::CrossesMount {
                path: path.to_path_buf(),
            });
        }
        let into = match &trash_fd {
            Some(fd) => fd,
            None => match open_trash(trash, true)? {
                Some(fd) => trash_fd.insert(fd),
                None => return Err(invalid("open", trash, "the trash could not be made")),
            },
        };
        let to = trash_name(path, from_name)?;
        match nix::fcntl::renameat2(
            &from_parent,
            from_c.as_c_str(),
            into,
            to.as_c_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            // Another filesystem mounted between the two (on the images directory, say):
            // the file cannot be moved, so it goes where it is, on the request's path.
            Err(Errno::EXDEV) if meta.is_file() => {
                nix::unistd::unlinkat(&from_parent, from_c.as_c_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| nix_err("unlink", path, e))?;
            }
            Err(e) => return Err(nix_err("rename", path, e)),
        }
        if meta.is_file() {
            bytes += meta.size;
        }
        parents.push((from_parent, *path));
    }
    // Durable only once the directories say so: the trash holds them, their old places do
    // not. Synced after all the renames, so the first fsync commits them all.
    if let Some(fd) = &trash_fd {
        fsync_shared_dir(fd.as_fd(), trash)?;
    }
    for (parent, path) in &parents {
        fsync_shared_dir(parent.as_fd(), path)?;
    }
    Ok(bytes)
}

pub(super) fn empty_trash(trash: &Path) -> Result<u64, HostError> {
    let Some(fd) = open_trash(trash, false)? else {
        return Ok(0);
    };
    let listing = fd.try_clone().map_err(|e| HostError::io("dup", trash, e))?;
    let (_, names) = read_entries(listing).map_err(|e| nix_err("readdir", trash, e))?;
    let mut removed = 0;
    let mut first_error = None;
    for name in names {
        let path = trash.join(OsStr::from_bytes(name.as_bytes()));
        let gone = match statx_at(fd.as_fd(), &name) {
            // Symlinks and files alike: the entry itself goes, nothing it points at.
            Ok(meta) if !meta.is_dir() => {
                match nix::unistd::unlinkat(&fd, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(nix_err("unlink", &path, e)),
                }
            }
            // The fd-relative walk: symlinks unlinked, other mounts never entered.
            Ok(_) => remove_tree(trash, &path, &mut RemovalStats::default()),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(nix_err("stat", &path, e)),
        };
        match gone {
            Ok(()) => removed += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}
