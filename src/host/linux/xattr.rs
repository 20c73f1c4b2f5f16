//! Extended attributes of one file, read and written without following a symlink: by fd
//! (`flistxattr`, `fgetxattr`, `fsetxattr`) or by name in a directory fd (the `l*` calls on
//! `/proc/self/fd/N/NAME`, which resolve exactly the directory the fd holds and do not
//! follow `NAME`). nix has no wrappers for these, hence the few `unsafe` calls here.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use super::fd::{cstring, fd_path, nix_err};
use crate::host::HostError;

/// Which file: the one an fd holds, or the entry `name` of a directory fd.
#[derive(Clone, Copy)]
pub(super) enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a CStr),
}

impl XattrTarget<'_> {
    fn proc_path(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<CString, HostError> {
        let full = fd_path(dir).join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        cstring("xattr", path, full.as_os_str().as_bytes())
    }
}

/// Extended attributes as (name, value) pairs.
pub(super) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Calls `call` with a buffer grown until the value fits (the size may change between the
/// sizing call and the read).
fn read_sized(mut call: impl FnMut(&mut [u8]) -> isize) -> Result<Vec<u8>, Errno> {
    loop {
        let size = Errno::result(call(&mut []))?.unsigned_abs();
        let mut buf = vec![0u8; size];
        match Errno::result(call(&mut buf)) {
            Ok(n) => {
                buf.truncate(n.unsigned_abs());
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Every extended attribute of `target` as (name, value), in the order the kernel lists
/// them. A filesystem without xattr support has none.
pub(super) fn read_xattrs(target: XattrTarget<'_>, path: &Path) -> Result<Xattrs, HostError> {
    let at = match target {
        XattrTarget::At(dir, name) => Some(XattrTarget::proc_path(dir, name, path)?),
        XattrTarget::Fd(_) => None,
    };
    let list = |buf: &mut [u8]| -> isize {
        let ptr = buf.as_mut_ptr().cast::<libc::c_char>();
        match (&target, &at) {
            // SAFETY: `buf` is valid for `buf.len()` writable bytes (a zero length only asks
            // for the size); the fd is borrowed and open for the call.
            (XattrTarget::Fd(fd), _) => unsafe { libc::flistxattr(fd.as_raw_fd(), ptr, buf.len()) },
            // SAFETY: `p` is a NUL-terminated path that outlives the call; `buf` as above.
            (_, Some(p)) => unsafe { libc::llistxattr(p.as_ptr(), ptr, buf.len()) },
            (XattrTarget::At(..), None) => -1,
        }
    };
    let names = match read_sized(list) {
        Ok(n) => n,
        Err(Errno::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(nix_err("listxattr", path, e)),
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = cstring("getxattr", path, name)?;
        let get = |buf: &mut [u8]| -> isize {
            let ptr = buf.as_mut_ptr().cast::<libc::c_void>();
            match (&target, &at) {
                // SAFETY: `cname` is NUL-terminated and outlives the call; `buf` is valid for
                // `buf.len()` writable bytes; the fd is borrowed and open.
                (XattrTarget::Fd(fd), _) => unsafe {
                    libc::fgetxattr(fd.as_raw_fd(), cname.as_ptr(), ptr, buf.len())
                },
                // SAFETY: as above, with `p` a NUL-terminated path that outlives the call.
                (_, Some(p)) => unsafe {
                    libc::lgetxattr(p.as_ptr(), cname.as_ptr(), ptr, buf.len())
                },
                (XattrTarget::At(..), None) => -1,
            }
        };
        match read_sized(get) {
            Ok(value) => out.push((name.to_vec(), value)),
            // Removed since it was listed.
            Err(Errno::ENODATA) => {}
            Err(e) => return Err(nix_err("getxattr", path, e)),
        }
    }
    Ok(out)
}

/// Sets the extended attribute `name` of `target` to `value`.
pub(super) fn write_xattr(
    target: XattrTarget<'_>,
    name: &[u8],
    value: &[u8],
    path: &Path,
) -> Result<(), HostError> {
    let cname = cstring("setxattr", path, name)?;
    let ptr = value.as_ptr().cast::<libc::c_void>();
    let rc = match target {
        // SAFETY: `cname` is NUL-terminated, `value` valid for `value.len()` bytes, both
        // outlive the call; the fd is borrowed and open.
        XattrTarget::Fd(fd) => unsafe {
            libc::fsetxattr(fd.as_raw_fd(), cname.as_ptr(), ptr, value.len(), 0)
        },
        XattrTarget::At(dir, entry) => {
            let p = XattrTarget::proc_path(dir, entry, path)?;
            // SAFETY: as above, with `p` a NUL-terminated path that outlives the call.
            unsafe { libc::lsetxattr(p.as_ptr(), cname.as_ptr(), ptr, value.len(), 0) }
        }
    };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| nix_err("setxattr", path, e))
}
