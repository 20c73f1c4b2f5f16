//! How big a volume's image must be for its filesystem to show the asked size: `df` inside a
//! loopfs volume shows the filesystem's blocks less its own metadata (ext4's journal, inode
//! tables and group descriptors; xfs's internal log), so that overhead is added to the image
//! rather than taken from the user's size. The figures are read from the superblock with
//! `dumpe2fs -h` and `xfs_db -r`, the numbers the kernel's `statfs` reports.

use std::ffi::OsStr;
use std::path::Path;

use super::fd::invalid;
use super::image::run_tool;
use crate::host::HostError;
use crate::host::types::FsType;

const MIB: u64 = 1 << 20;

/// What the filesystem in `image` holds for its user, from its superblock: for xfs what
/// `df` shows as its size, for ext4 that less the kernel's reserve (see [`ext4_usable`]).
pub(super) fn usable_bytes(image: &Path, fs: FsType) -> Result<u64, HostError> {
    let done = match fs {
        FsType::Ext4 => run_tool("dumpe2fs", &[OsStr::new("-h"), image.as_os_str()])?,
        FsType::Xfs => run_tool(
            "xfs_db",
            &[
                OsStr::new("-r"),
                OsStr::new("-c"),
                OsStr::new("sb 0"),
                OsStr::new("-c"),
                OsStr::new("p dblocks logblocks logstart blocksize"),
                image.as_os_str(),
            ],
        )?,
    };
    if !done.status.success() {
        return Err(done.error());
    }
    let parsed = match fs {
        FsType::Ext4 => ext4_usable(&done.text),
        FsType::Xfs => xfs_usable(&done.text),
    };
    parsed.ok_or_else(|| {
        invalid(
            "measure",
            image,
            format!("cannot read the {} superblock sizes", fs.as_str()),
        )
    })
}

/// The value of `key` in `key: value` (dumpe2fs) or `key = value` (xfs_db) lines.
fn field(text: &str, key: &str, separator: char) -> Option<u64> {
    text.split(['\n', ';'])
        .filter_map(|line| line.split_once(separator))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// `(Block count - Overhead clusters - reserved) * Block size`: what `df` shows less the
/// clusters the kernel keeps back from every writer (2% or 4096, whichever is fewer, for
/// delayed allocation), so that the asked size can really be written. berth never makes
/// bigalloc ext4, so a cluster is a block.
fn ext4_usable(header: &str) -> Option<u64> {
    let blocks = field(header, "Block count", ':')?;
    let overhead = field(header, "Overhead clusters", ':').unwrap_or(0);
    let block_size = field(header, "Block size", ':')?;
    let kept_back = (blocks / 50).min(4096);
    blocks
        .checked_sub(overhead)?
        .checked_sub(kept_back)?
        .checked_mul(block_size)
}

/// `(dblocks - logblocks) * blocksize` for an internal log (`logstart` not 0).
fn xfs_usable(print: &str) -> Option<u64> {
    let blocks = field(print, "dblocks", '=')?;
    let log = match field(print, "logstart", '=')? {
        0 => 0,
        _ => field(print, "logblocks", '=')?,
    };
    let block_size = field(print, "blocksize", '=')?;
    blocks.checked_sub(log)?.checked_mul(block_size)
}

/// The next image size to try when a filesystem made in `image_size` bytes holds `usable`
/// and `want` is asked: the shortfall, in whole MiB, added.
pub(super) fn next_image_size(image_size: u64, usable: u64, want: u64) -> u64 {
    image_size + want.saturating_sub(usable).div_ceil(MIB).max(1) * MIB
}

/// The image size for growing a filesystem that holds `usable` in `image_size` bytes to hold
/// `want`: its present overhead kept, and 1/32 of the growth added for the metadata the new
/// space brings (ext4 inode tables are 1/64 of it).
pub(super) fn grown_image_size(image_size: u64, usable: u64, want: u64) -> u64 {
    let overhead = image_size.saturating_sub(usable);
    let growth = want.saturating_sub(usable);
    (want + overhead + growth / 32).div_ceil(MIB) * MIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_figures_give_what_statfs_reports() {
        // dumpe2fs -h and xfs_db of 16 MiB ext4 and 300 MiB xfs images (statfs: 14073 KiB,
        // 60416 blocks of 4 KiB).
        let ext4 = "dumpe2fs 1.47.0 (5-Feb-2023); Filesystem volume name:   <none>\n\
                    Block count:              16384\nReserved block count:     0\n\
                    Overhead clusters:        2311\nBlock size:               1024\n";
        assert_eq!(ext4_usable(ext4), Some((14073 - 327) * 1024));
        let xfs = "dblocks = 76800\nlogblocks = 16384\nlogstart = 65542\nblocksize = 4096\n";
        assert_eq!(xfs_usable(xfs), Some(60416 * 4096));
        let external = "dblocks = 76800\nlogblocks = 16384\nlogstart = 0\nblocksize = 4096\n";
        assert_eq!(xfs_usable(external), Some(76800 * 4096));
        assert_eq!(ext4_usable("Block size: 1024\n"), None);
    }

    #[test]
    fn sizes_step_up_by_the_shortfall_and_keep_the_overhead_on_growth() {
        assert_eq!(next_image_size(16 * MIB, 14 * MIB, 16 * MIB), 18 * MIB);
        assert_eq!(next_image_size(16 * MIB, 16 * MIB - 1, 16 * MIB), 17 * MIB);
        let grown = grown_image_size(70 * MIB, 64 * MIB, 128 * MIB);
        assert_eq!(grown, 136 * MIB);
    }
}
