//! [`export_tree`]: a directory tree written as a tar archive, read through the same
//! fd-relative, no-follow walk as [`super::copy::copy_tree`].
//!
//! The archive is GNU tar with pax extended headers: directories, regular files, symbolic
//! links (stored as links, never followed), hard links (a second name of a file already
//! written), FIFOs and device nodes; each with its owner (numeric), mode and mtime, and its
//! extended attributes as `SCHILY.xattr.NAME` pax records (as GNU tar `--xattrs` and
//! bsdtar write them). Sockets are left out. The first entry, `./`, carries the top
//! directory's own owner, mode and xattrs. Other mounts beneath the top are not entered.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::fd::{Meta, mounts_beneath, nix_err, open_dir_nofollow, statx_fd};
use super::walk::{Step, Walker};
use super::xattr::{XattrTarget, read_xattrs};
use crate::host::{ArchiveStats, HostError};

/// A writer that refuses everything once the export failed, so the tar builder's
/// end-of-archive blocks (written when it is dropped) never make a cut-off archive look
/// whole.
struct Fuse<'a> {
    out: &'a mut dyn Write,
    blown: bool,
    written: u64,
}

impl Write for Fuse<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.blown {
            return Err(io::Error::other("the export failed"));
        }
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct Exporter<'a> {
    tar: tar::Builder<Fuse<'a>>,
    root: PathBuf,
    /// First name of each file with more than one link.
    links: HashMap<(u64, u64), PathBuf>,
    stats: ArchiveStats,
}

/// Writes the tree at `root` to `out`; see the module docs.
pub(super) fn export_tree(root: &Path, out: &mut dyn Write) -> Result<ArchiveStats, HostError> {
    let mut exporter = Exporter {
        tar: tar::Builder::new(Fuse {
            out,
            blown: false,
            written: 0,
        }),
        root: root.to_path_buf(),
        links: HashMap::new(),
        stats: ArchiveStats::default(),
    };
    let result = exporter.run();
    if result.is_err() {
        exporter.tar.get_mut().blown = true;
    }
    result?;
    exporter
        .tar
        .finish()
        .map_err(|e| HostError::io("write", root, e))?;
    exporter.stats.bytes = exporter.tar.get_ref().written;
    Ok(exporter.stats)
}

impl Exporter<'_> {
    fn run(&mut self) -> Result<(), HostError> {
        let root = self.root.clone();
        let top = open_dir_nofollow(&root)?;
        let top_meta = statx_fd(top.as_fd()).map_err(|e| nix_err("stat", &root, e))?;
        let xattrs = read_xattrs(XattrTarget::Fd(top.as_fd()), &root)?;
        self.append(Path::new("./"), &top_meta, &xattrs, Body::None)?;
        let mounts = mounts_beneath(top.as_fd(), &root)?;
        let mut walker = Walker::new(&root, top, top_meta, None, mounts)?;
        let mut crossing: Option<PathBuf> = None;
        while let Some(step) = walker.next()? {
            let Step::Entry { name, meta } = step else {
                continue;
            };
            let path = walker.path_of(&name);
            if walker.crosses(&name, &meta) {
                crossing.get_or_insert(path);
                continue;
            }
            if meta.kind == libc::S_IFSOCK {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap_or(&path).to_path_buf();
            let dir = walker.dir()?;
            let xattrs = read_xattrs(XattrTarget::At(dir, &name), &path)?;
            if meta.is_dir() {
                self.append(&rel, &meta, &xattrs, Body::None)?;
                walker.descend(&name, &meta, None)?;
            } else if meta.is_symlink() {
                let target = nix::fcntl::readlinkat(dir, name.as_c_str())
                    .map_err(|e| nix_err("readlink", &path, e))?;
                self.append(&rel, &meta, &xattrs, Body::Link(Path::new(&target)))?;
            } else if meta.is_file() {
                if meta.nlink > 1 {
                    if let Some(first) = self.links.get(&(meta.dev, meta.ino)).cloned() {
                        self.append(&rel, &meta, &[], Body::HardLink(&first))?;
                        continue;
                    }
                    self.links.insert((meta.dev, meta.ino), rel.clone());
                }
                let file = open_file(dir, &name, &meta, &path)?;
                self.append(&rel, &meta, &xattrs, Body::File(file))?;
            } else {
                self.append(&rel, &meta, &xattrs, Body::None)?;
            }
        }
        match crossing {
            Some(path) => Err(HostError::CrossesMount { path }),
            None => Ok(()),
        }
    }

    fn append(
        &mut self,
        rel: &Path,
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        body: Body<'_>,
    ) -> Result<(), HostError> {
        let path = self.root.join(rel);
        let io_err = |e| HostError::io("write", &path, e);
        if !xattrs.is_empty() {
            let mut records = Vec::with_capacity(xattrs.len());
            for (name, value) in xattrs {
                let name = std::str::from_utf8(name).map_err(|_| {
                    HostError::io(
                        "export",
                        &path,
                        io::Error::other("an extended attribute's name is not UTF-8"),
                    )
                })?;
                records.push((format!("SCHILY.xattr.{name}"), value.as_slice()));
            }
            self.tar
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(io_err)?;
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.perm);
        header.set_uid(u64::from(meta.uid));
        header.set_gid(u64::from(meta.gid));
        header.set_mtime(u64::try_from(meta.mtime.tv_sec()).unwrap_or(0));
        header.set_size(0);
        self.stats.entries += 1;
        match body {
            Body::File(file) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(meta.size);
                // A file that shrinks while it is read is padded with zeros and one that
                // grows is cut at its size when it was listed: the header is already out.
                let data = file.take(meta.size).chain(io::repeat(0)).take(meta.size);
                self.tar.append_data(&mut header, rel, data).map_err(io_err)
            }
            Body::Link(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                self.tar
                    .append_link(&mut header, rel, target)
                    .map_err(io_err)
            }
            Body::HardLink(first) => {
                header.set_entry_type(tar::EntryType::Link);
                self.tar
                    .append_link(&mut header, rel, first)
                    .map_err(io_err)
            }
            Body::None => {
                let kind = match meta.kind {
                    libc::S_IFDIR => tar::EntryType::Directory,
                    libc::S_IFIFO => tar::EntryType::Fifo,
                    libc::S_IFCHR => tar::EntryType::Char,
                    libc::S_IFBLK => tar::EntryType::Block,
                    _ => {
                        return Err(HostError::io(
                            "export",
                            &path,
                            io::Error::other("a file of a kind tar cannot hold"),
                        ));
                    }
                };
                header.set_entry_type(kind);
                if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
                    let (major, minor) = (libc::major(meta.rdev), libc::minor(meta.rdev));
                    header.set_device_major(major).map_err(io_err)?;
                    header.set_device_minor(minor).map_err(io_err)?;
                }
                self.tar
                    .append_data(&mut header, rel, io::empty())
                    .map_err(io_err)
            }
        }
    }
}

enum Body<'a> {
    None,
    File(File),
    Link(&'a Path),
    HardLink(&'a Path),
}

/// Opens the regular file `name` in `dir` for reading, without following a link, and checks
/// it is still the file that was listed.
fn open_file(
    dir: BorrowedFd<'_>,
    name: &CStr,
    meta: &Meta,
    path: &Path,
) -> Result<File, HostError> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| nix_err("open", path, e))?;
    let now = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", path, e))?;
    if !now.same_inode(meta) {
        return Err(HostError::io(
            "open",
            path,
            io::Error::other("file was replaced during the export"),
        ));
    }
    Ok(File::from(fd))
}
