//! The stock of a pool base: formatted, allocated images made ahead, in the background, so
//! that a create of a common size renames one into place instead of running `mkfs`. An
//! image is made under a temporary name (`.tmp-...`) and renamed to its stock name
//! (`<fs>-<size>.<unique>`) only once it is whole (formatted, allocated, fsynced), so every
//! name without the dot is a complete image; the engine empties the stock at start, which
//! takes whatever a crash left half made.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::RenameFlags;
use nix::unistd::UnlinkatFlags;

use super::fd::{cstring, fsync_fd, invalid, nix_err, open_parent};
use super::fs_size::SizeMemory;
use super::image::create_image;
use super::trash::{open_own_dir, unique_suffix};
use super::walk::read_entries;
use crate::host::HostError;
use crate::host::types::FsType;

/// The start of a complete stock image's name for `size` bytes of `fs`.
fn prefix(size: u64, fs: FsType) -> String {
    format!("{}-{size}.", fs.as_str())
}

/// The complete images for `size` and `fs` the stock directory `dir` names.
fn complete(
    dir: &impl AsFd,
    stock: &Path,
    size: u64,
    fs: FsType,
) -> Result<Vec<Vec<u8>>, HostError> {
    let listing = nix::unistd::dup(dir).map_err(|e| nix_err("dup", stock, e))?;
    let (_, names) = read_entries(listing).map_err(|e| nix_err("readdir", stock, e))?;
    let prefix = prefix(size, fs);
    Ok(names
        .into_iter()
        .map(|n| n.into_bytes())
        .filter(|n| n.starts_with(prefix.as_bytes()))
        .collect())
}

pub(super) fn stock_image(
    stock: &Path,
    size: u64,
    fs: FsType,
    sizes: &SizeMemory,
) -> Result<bool, HostError> {
    let Some(dir) = open_own_dir(stock, true)? else {
        return Err(invalid("open", stock, "the stock could not be made"));
    };
    if !complete(&dir, stock, size, fs)?.is_empty() {
        return Ok(false);
    }
    let name = format!("{}{}", prefix(size, fs), unique_suffix());
    let tmp_name = format!(".tmp-{name}");
    let tmp = stock.join(&tmp_name);
    if let Err(e) = create_image(&tmp, size, Some(fs), sizes) {
        let _ = nix::unistd::unlinkat(&dir, tmp_name.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    nix::fcntl::renameat2(
        &dir,
        tmp_name.as_str(),
        &dir,
        name.as_str(),
        RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| nix_err("rename", &tmp, e))?;
    fsync_fd(dir.as_fd(), stock)?;
    Ok(true)
}

pub(super) fn take_from_stock(
    stock: &Path,
    size: u64,
    fs: FsType,
    image: &Path,
) -> Result<bool, HostError> {
    let Some(dir) = open_own_dir(stock, false)? else {
        return Ok(false);
    };
    let (to_parent, to_name) = open_parent(image)?;
    let to_c = cstring("rename", image, to_name.as_bytes())?;
    for name in complete(&dir, stock, size, fs)? {
        let from = stock.join(OsStr::from_bytes(&name));
        let from_c = cstring("rename", &from, &name)?;
        match nix::fcntl::renameat2(
            &dir,
            from_c.as_c_str(),
            &to_parent,
            to_c.as_c_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                fsync_fd(to_parent.as_fd(), image)?;
                fsync_fd(dir.as_fd(), stock)?;
                return Ok(true);
            }
            // Taken by another create, or emptied at start, meanwhile.
            Err(Errno::ENOENT) => continue,
            // A retried create: the image it made is there already.
            Err(Errno::EEXIST) => return Ok(false),
            Err(e) => return Err(nix_err("rename", &from, e)),
        }
    }
    Ok(false)
}
