//! [`import_tree`]: a tar archive unpacked beneath a directory, every name resolved
//! fd-relative from that directory without following a symlink.
//!
//! Refused, before anything of the entry is written: an absolute name, a name with a `..`
//! component, and a name whose directories pass through a symbolic link (an archive that
//! makes `l -> /etc` and then `l/passwd` is stopped at `l/passwd`). A symbolic link is
//! created as a link, whatever it points to; a hard link's target is resolved by the same
//! rules. Owners (numeric), modes, mtimes and `SCHILY.xattr.*` pax records are applied; a
//! directory's mtime at the end, once nothing more is created in it. An archive cut off
//! before its end-of-archive block is an error, not a shorter tree.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::fd::{cstring, nix_err, not_a_dir_error, oflags_dir, open_dir_nofollow};
use super::xattr::{XattrTarget, Xattrs, write_xattr};
use crate::host::{ArchiveStats, HostError};

const XATTR_PREFIX: &str = "SCHILY.xattr.";

/// The input, counted, remembering whether it ended.
struct Tracked<'a> {
    input: &'a mut dyn Read,
    ended: bool,
    bytes: u64,
}

impl Read for Tracked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended = true;
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// What an entry's header says, read before its body.
struct EntryMeta {
    kind: tar::EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    link: Option<Vec<u8>>,
    rdev: u64,
    xattrs: Xattrs,
}

/// Unpacks the archive read from `input` beneath the existing directory `root`; see the
/// module docs. Reads `input` to its end.
pub(super) fn import_tree(root: &Path, input: &mut dyn Read) -> Result<ArchiveStats, HostError> {
    let top = open_dir_nofollow(root)?;
    let mut archive = tar::Archive::new(Tracked {
        input,
        ended: false,
        bytes: 0,
    });
    let read_err = |e| HostError::io("read the archive", root, e);
    let mut stats = ArchiveStats::default();
    let mut dir_times: Vec<(Vec<CString>, TimeSpec)> = Vec::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        if entry.header().entry_type().is_pax_global_extensions() {
            continue; // about the archive, not a file (berth's carries the source's size)
        }
        let raw = entry.path_bytes().into_owned();
        let names = entry_names(root, &raw)?;
        let path = root.join(OsStr::from_bytes(&raw));
        let meta = entry_meta(&mut entry, &path)?;
        let Some((last, parents)) = names.split_last() else {
            // `./`: the top directory itself.
            apply_fd(top.as_fd(), &meta, &path)?;
            dir_times.push((Vec::new(), meta.mtime));
            continue;
        };
        let parent = resolve_dirs(top.as_fd(), parents, root, true)?;
        let dir = parent.as_ref().map_or(top.as_fd(), AsFd::as_fd);
        stats.entries += 1;
        match meta.kind {
            tar::EntryType::Directory => {
                let fd = make_dir_at(dir, last, &path)?;
                apply_fd(fd.as_fd(), &meta, &path)?;
                dir_times.push((names.clone(), meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let file = create_at(dir, last, &path, |d, n| {
                    nix::fcntl::openat(
                        d,
                        n,
                        super::fd::oflags_create_new(),
                        Mode::from_bits_truncate(0o600),
                    )
                })?;
                let mut file = File::from(file);
                io::copy(&mut entry, &mut file).map_err(|e| HostError::io("write", &path, e))?;
                apply_fd(file.as_fd(), &meta, &path)?;
                nix::sys::stat::futimens(file.as_fd(), &meta.mtime, &meta.mtime)
                    .map_err(|e| nix_err("utimens", &path, e))?;
            }
            tar::EntryType::Symlink => {
                let target = meta.link.clone().unwrap_or_default();
                let target = OsStr::from_bytes(&target);
                create_at(dir, last, &path, |d, n| {
                    nix::unistd::symlinkat(target, d, n)
                })?;
                apply_at(dir, last, &meta, &path)?;
            }
            tar::EntryType::Link => {
                let target = meta.link.clone().unwrap_or_default();
                let target_names = entry_names(root, &target)?;
                let Some((target_last, target_parents)) = target_names.split_last() else {
                    return Err(HostError::io(
                        "link",
                        &path,
                        io::Error::other("a hard link to the top directory"),
                    ));
                };
                let target_parent = resolve_dirs(top.as_fd(), target_parents, root, false)?;
                let target_dir = target_parent.as_ref().map_or(top.as_fd(), AsFd::as_fd);
                create_at(dir, last, &path, |d, n| {
                    nix::unistd::linkat(target_dir, target_last.as_c_str(), d, n, AtFlags::empty())
                })?;
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                let kind = match meta.kind {
                    tar::EntryType::Fifo => SFlag::S_IFIFO,
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    _ => SFlag::S_IFBLK,
                };
                create_at(dir, last, &path, |d, n| {
                    nix::sys::stat::mknodat(d, n, kind, Mode::from_bits_truncate(0o600), meta.rdev)
                })?;
                apply_at(dir, last, &meta, &path)?;
                nix::sys::stat::fchmodat(
                    dir,
                    last.as_c_str(),
                    Mode::from_bits_truncate(meta.mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| nix_err("chmod", &path, e))?;
            }
            other => {
                return Err(HostError::io(
                    "import",
                    &path,
                    io::Error::other(format!("entries of type {other:?} are not supported")),
                ));
            }
        }
    }
    // Directories last, deepest first, so creating their entries does not touch them again.
    dir_times.sort_by_key(|(names, _)| std::cmp::Reverse(names.len()));
    for (names, mtime) in dir_times {
        let path = names.iter().fold(root.to_path_buf(), |p, n| {
            p.join(OsStr::from_bytes(n.to_bytes()))
        });
        let fd = resolve_dirs(top.as_fd(), &names, root, false)?;
        let fd = fd.as_ref().map_or(top.as_fd(), AsFd::as_fd);
        nix::sys::stat::futimens(fd, &mtime, &mtime).map_err(|e| nix_err("utimens", &path, e))?;
    }
    let mut tracked = archive.into_inner();
    if tracked.ended {
        return Err(HostError::io(
            "read the archive",
            root,
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends before its end-of-archive block: it was cut off",
            ),
        ));
    }
    io::copy(&mut tracked, &mut io::sink()).map_err(read_err)?;
    stats.bytes = tracked.bytes;
    nix::unistd::syncfs(&top).map_err(|e| nix_err("syncfs", root, e))?;
    Ok(stats)
}

/// The components of an entry's name, refusing an absolute name and `..`; `.` and empty
/// components are skipped, so `./` is the top directory (no components).
fn entry_names(root: &Path, raw: &[u8]) -> Result<Vec<CString>, HostError> {
    let path = root.join(OsStr::from_bytes(raw));
    let outside = || HostError::OutsideRoot {
        path: PathBuf::from(OsStr::from_bytes(raw)),
        root: root.to_path_buf(),
    };
    if raw.starts_with(b"/") {
        return Err(outside());
    }
    let mut names = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(outside()),
            name => names.push(cstring("import", &path, name)?),
        }
    }
    Ok(names)
}

fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<EntryMeta, HostError> {
    let bad =
        |what: &str| HostError::io("read the archive", path, io::Error::other(what.to_string()));
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry
        .pax_extensions()
        .map_err(|e| HostError::io("read the archive", path, e))?
    {
        for ext in extensions {
            let ext = ext.map_err(|e| HostError::io("read the archive", path, e))?;
            if let Some(name) = ext.key_bytes().strip_prefix(XATTR_PREFIX.as_bytes()) {
                xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    let header = entry.header();
    let id = |v: io::Result<u64>, what: &str| {
        v.ok()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad(what))
    };
    let mtime = header.mtime().map_err(|_| bad("a malformed mtime"))?;
    let rdev = match (header.device_major(), header.device_minor()) {
        (Ok(Some(major)), Ok(Some(minor))) => libc::makedev(major, minor),
        _ => 0,
    };
    Ok(EntryMeta {
        kind: header.entry_type(),
        mode: header.mode().map_err(|_| bad("a malformed mode"))? & 0o7777,
        uid: id(header.uid(), "a malformed owner")?,
        gid: id(header.gid(), "a malformed group")?,
        mtime: TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0),
        link: entry.link_name_bytes().map(|l| l.into_owned()),
        rdev,
        xattrs,
    })
}

/// Opens the directories `names` one below the other from `top`, never following a link;
/// with `create`, a missing one is made (mode 0755, as tar does for a directory an archive
/// does not list). `None` is `top` itself.
fn resolve_dirs(
    top: BorrowedFd<'_>,
    names: &[CString],
    root: &Path,
    create: bool,
) -> Result<Option<OwnedFd>, HostError> {
    let mut current: Option<OwnedFd> = None;
    let mut path = root.to_path_buf();
    for name in names {
        path.push(OsStr::from_bytes(name.to_bytes()));
        let dir = current.as_ref().map_or(top, AsFd::as_fd);
        if create {
            match nix::sys::stat::mkdirat(dir, name.as_c_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(nix_err("mkdir", &path, e)),
            }
        }
        let fd = open_dir_at(dir, name, &path)?;
        current = Some(fd);
    }
    Ok(current)
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<OwnedFd, HostError> {
    nix::fcntl::openat(dir, name, oflags_dir(), Mode::empty()).map_err(|e| {
        if e == Errno::ELOOP || e == Errno::ENOTDIR {
            not_a_dir_error("open", dir, name, path)
        } else {
            nix_err("open", path, e)
        }
    })
}

fn make_dir_at(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<OwnedFd, HostError> {
    match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => open_dir_at(dir, name, path),
        Err(e) => Err(nix_err("mkdir", path, e)),
    }
}

/// Runs `make` (which must fail with `EEXIST` rather than replace or follow anything);
/// when a non-directory is in the way, as when an archive lists a name twice, it is
/// unlinked and `make` runs once more.
fn create_at<T>(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
    make: impl Fn(BorrowedFd<'_>, &CStr) -> Result<T, Errno>,
) -> Result<T, HostError> {
    match make(dir, name) {
        Ok(v) => Ok(v),
        Err(Errno::EEXIST) => {
            nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| nix_err("unlink", path, e))?;
            make(dir, name).map_err(|e| nix_err("create", path, e))
        }
        Err(e) => Err(nix_err("create", path, e)),
    }
}

/// Owner, then mode (a `chown` clears set-id bits), then extended attributes, by fd.
fn apply_fd(fd: BorrowedFd<'_>, meta: &EntryMeta, path: &Path) -> Result<(), HostError> {
    nix::unistd::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| nix_err("chown", path, e))?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode))
        .map_err(|e| nix_err("chmod", path, e))?;
    for (name, value) in &meta.xattrs {
        write_xattr(XattrTarget::Fd(fd), name, value, path)?;
    }
    Ok(())
}

/// Owner, extended attributes and times of the entry `name` itself (a link is not
/// followed).
fn apply_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    meta: &EntryMeta,
    path: &Path,
) -> Result<(), HostError> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| nix_err("chown", path, e))?;
    for (xname, value) in &meta.xattrs {
        write_xattr(XattrTarget::At(dir, name), xname, value, path)?;
    }
    nix::sys::stat::utimensat(
        dir,
        name,
        &meta.mtime,
        &meta.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| nix_err("utimens", path, e))
}
