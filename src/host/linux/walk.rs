//! The tree walker (explicit stack, bounded open fds) and the two walks built on it:
//! [`remove_tree`] and [`tree_usage`].

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use super::MAX_OPEN_DIRS;
use super::fd::{
    Meta, cstring, fsync_fd, invalid, mounts_beneath, nix_err, not_a_dir_error, oflags_dir,
    open_dir_nofollow, statx_at, statx_fd, statx_path,
};
use crate::host::{HostError, RemovalStats, TreeUsage};

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

pub(super) enum Step {
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

pub(super) struct Walker {
    base: PathBuf,
    /// The path of the directory on top of the stack (for messages).
    cur: PathBuf,
    frames: Vec<Frame>,
    mounts: HashSet<PathBuf>,
    top_dev: u64,
}

/// The names in the directory `fd`, `.` and `..` left out.
pub(super) fn read_entries(fd: OwnedFd) -> Result<(Dir, Vec<CString>), Errno> {
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
    pub(super) fn new(
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

    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The path of `name` in the directory on top of the stack (for messages).
    pub(super) fn path_of(&self, name: &CStr) -> PathBuf {
        self.cur.join(OsStr::from_bytes(name.to_bytes()))
    }

    /// The fd of the directory on top of the stack. It is always open.
    pub(super) fn dir(&self) -> Result<BorrowedFd<'_>, HostError> {
        self.frames
            .last()
            .and_then(|f| f.dir.as_ref())
            .map(AsFd::as_fd)
            .ok_or_else(|| HostError::io("walk", &self.base, io::Error::other("walk is over")))
    }

    pub(super) fn aux(&self) -> Option<BorrowedFd<'_>> {
        self.frames
            .last()
            .and_then(|f| f.aux.as_ref())
            .map(AsFd::as_fd)
    }

    /// Whether the entry `name` (of the top directory) is, or may be, another mount.
    pub(super) fn crosses(&self, name: &CStr, meta: &Meta) -> bool {
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
    pub(super) fn descend(
        &mut self,
        name: &CStr,
        meta: &Meta,
        aux: Option<OwnedFd>,
    ) -> Result<(), HostError> {
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
    pub(super) fn next(&mut self) -> Result<Option<Step>, HostError> {
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

/// Counts into `stats` as it goes, so a walk stopped by an error still says what it
/// removed.
pub(super) fn remove_tree(
    root: &Path,
    path: &Path,
    stats: &mut RemovalStats,
) -> Result<(), HostError> {
    let names = beneath(root, path)?;
    // `root` is berth's configuration: its ancestors are resolved normally, `root` itself
    // (a pool root) must not be a symlink, and nothing below it is followed.
    let mut dir = match open_dir_nofollow(root) {
        Ok(fd) => fd,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
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
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(not_a_dir_error("open", dir.as_fd(), &c, &walked));
            }
            Err(e) => return Err(nix_err("open", &walked, e)),
        };
    }
    let last_c = cstring("remove", path, last.as_bytes())?;
    let meta = match statx_at(dir.as_fd(), &last_c) {
        Ok(m) => m,
        Err(Errno::ENOENT) => return Ok(()),
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
        unlink_counted(dir.as_fd(), &last_c, &meta, stats)
            .map_err(|e| nix_err("unlink", path, e))?;
        fsync_fd(dir.as_fd(), path)?;
        return Ok(());
    }
    let top = match nix::fcntl::openat(&dir, last_c.as_c_str(), oflags_dir(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
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
    // An entry that cannot be read or removed (a damaged filesystem answers EIO, EUCLEAN or
    // ENOTEMPTY) does not stop the walk: the rest still goes and is counted, and the first
    // such error is returned at the end. Each failing step has already consumed its entry,
    // so the walk always moves on.
    let mut failed: Option<HostError> = None;
    loop {
        let step = match walker.next() {
            Ok(Some(step)) => step,
            Ok(None) => break,
            Err(e) => {
                failed.get_or_insert(e);
                continue;
            }
        };
        let done = match step {
            Step::Entry { name, meta } => {
                if walker.crosses(&name, &meta) {
                    crossing.get_or_insert_with(|| walker.path_of(&name));
                    Ok(())
                } else if meta.is_dir() {
                    walker.descend(&name, &meta, None)
                } else {
                    walker.dir().and_then(|parent| {
                        unlink_counted(parent, &name, &meta, stats)
                            .map_err(|e| nix_err("unlink", &walker.path_of(&name), e))
                    })
                }
            }
            Step::Leave { name, .. } => {
                let parent = if walker.is_empty() {
                    Ok((dir.as_fd(), last_c.as_c_str()))
                } else {
                    walker.dir().map(|fd| (fd, name.as_c_str()))
                };
                parent.and_then(|(parent, name)| {
                    match nix::unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                        Ok(()) => {
                            stats.dirs += 1;
                            Ok(())
                        }
                        Err(Errno::ENOENT) => Ok(()),
                        // Holds the mount point we did not cross: reported below.
                        Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::EBUSY)
                            if crossing.is_some() =>
                        {
                            Ok(())
                        }
                        Err(e) => {
                            let entry_path = if walker.is_empty() {
                                path.to_path_buf()
                            } else {
                                walker.path_of(name)
                            };
                            Err(nix_err("rmdir", &entry_path, e))
                        }
                    }
                })
            }
        };
        if let Err(e) = done {
            failed.get_or_insert(e);
        }
    }
    fsync_fd(dir.as_fd(), path)?;
    match (crossing, failed) {
        (Some(path), _) => Err(HostError::CrossesMount { path }),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(()),
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

pub(super) fn tree_usage(path: &Path) -> Result<TreeUsage, HostError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
