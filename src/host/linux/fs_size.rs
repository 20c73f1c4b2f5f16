//! How big a volume's image must be for its filesystem to show the asked size: `df` inside a
//! loopfs volume shows the filesystem's blocks less its own metadata (ext4's journal, inode
//! tables and group descriptors; xfs's internal log), so that overhead is added to the image
//! rather than taken from the user's size. The figures are read straight from the superblock
//! (the fields `dumpe2fs -h` and `xfs_db -c 'sb 0'` print, the numbers the kernel's `statfs`
//! reports): reading 2 KiB of the image costs nothing, where running those tools cost a
//! process each on the create path.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use super::fd::invalid;
use crate::host::HostError;
use crate::host::types::FsType;

const MIB: u64 = 1 << 20;

/// Where ext4's superblock starts in the image.
const EXT4_SUPERBLOCK: usize = 1024;
/// How much of the image's start holds every field read here.
const HEAD: usize = EXT4_SUPERBLOCK + 1024;

/// What the filesystem in `image` holds for its user, from its superblock: for xfs what
/// `df` shows as its size, for ext4 that less the kernel's reserve (see [`ext4_usable`]).
pub(super) fn usable_bytes(image: &Path, fs: FsType) -> Result<u64, HostError> {
    let file = File::open(image).map_err(|e| HostError::io("open", image, e))?;
    let mut head = [0u8; HEAD];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| HostError::io("read", image, e))?;
    let parsed = match fs {
        FsType::Ext4 => ext4_usable(&head),
        FsType::Xfs => xfs_usable(&head),
    };
    parsed.ok_or_else(|| {
        invalid(
            "measure",
            image,
            format!("cannot read the {} superblock sizes", fs.as_str()),
        )
    })
}

fn le32(head: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        head[at..at + 4].try_into().expect("4 bytes"),
    ))
}

fn be32(head: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes(
        head[at..at + 4].try_into().expect("4 bytes"),
    ))
}

fn be64(head: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(head[at..at + 8].try_into().expect("8 bytes"))
}

/// `(Block count - Overhead clusters - reserved) * Block size`: what `df` shows less the
/// clusters the kernel keeps back from every writer (2% or 4096, whichever is fewer, for
/// delayed allocation), so that the asked size can really be written. berth never makes
/// bigalloc ext4, so a cluster is a block. Fields of `struct ext4_super_block`:
/// `s_blocks_count_lo` (0x04), `s_log_block_size` (0x18), `s_magic` (0x38),
/// `s_feature_incompat` (0x60, `INCOMPAT_64BIT` 0x80), `s_blocks_count_hi` (0x150),
/// `s_overhead_clusters` (0x248; 0 when mkfs did not record it).
fn ext4_usable(head: &[u8; HEAD]) -> Option<u64> {
    let sb = &head[EXT4_SUPERBLOCK..];
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return None;
    }
    let mut blocks = le32(sb, 0x04);
    if le32(sb, 0x60) & 0x80 != 0 {
        blocks |= le32(sb, 0x150) << 32;
    }
    let block_size = 1024u64.checked_shl(u32::try_from(le32(sb, 0x18)).ok()?)?;
    let overhead = le32(sb, 0x248);
    let kept_back = (blocks / 50).min(4096);
    blocks
        .checked_sub(overhead)?
        .checked_sub(kept_back)?
        .checked_mul(block_size)
}

/// `(dblocks - logblocks) * blocksize` for an internal log (`logstart` not 0). Fields of the
/// big-endian `struct xfs_dsb`: `sb_magicnum` (0), `sb_blocksize` (4), `sb_dblocks` (8),
/// `sb_logstart` (48), `sb_logblocks` (96).
fn xfs_usable(head: &[u8; HEAD]) -> Option<u64> {
    if head[0..4] != *b"XFSB" {
        return None;
    }
    let blocks = be64(head, 8);
    let log = match be64(head, 48) {
        0 => 0,
        _ => be32(head, 96),
    };
    blocks.checked_sub(log)?.checked_mul(be32(head, 4))
}

/// The image size that held each asked size last time, by filesystem: `mkfs` lays out the
/// same size the same way, so a second volume of a size is made in one `mkfs` run instead of
/// one too small and a second larger. Only a first guess: every image is still measured.
#[derive(Debug, Default)]
pub(super) struct SizeMemory(Mutex<HashMap<(FsType, u64), u64>>);

impl SizeMemory {
    pub(super) fn first_guess(&self, fs: FsType, want: u64) -> u64 {
        let known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        known.get(&(fs, want)).copied().unwrap_or(want)
    }

    pub(super) fn remember(&self, fs: FsType, want: u64, image_size: u64) {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        known.insert((fs, want), image_size);
    }
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

    fn ext4_head(blocks: u64, log_block_size: u32, overhead: u32) -> [u8; HEAD] {
        let mut head = [0u8; HEAD];
        let sb = &mut head[EXT4_SUPERBLOCK..];
        sb[0x04..0x08].copy_from_slice(&(blocks as u32).to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&log_block_size.to_le_bytes());
        sb[0x38..0x3a].copy_from_slice(&[0x53, 0xef]);
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&((blocks >> 32) as u32).to_le_bytes());
        sb[0x248..0x24c].copy_from_slice(&overhead.to_le_bytes());
        head
    }

    fn xfs_head(dblocks: u64, logstart: u64, logblocks: u32, blocksize: u32) -> [u8; HEAD] {
        let mut head = [0u8; HEAD];
        head[0..4].copy_from_slice(b"XFSB");
        head[4..8].copy_from_slice(&blocksize.to_be_bytes());
        head[8..16].copy_from_slice(&dblocks.to_be_bytes());
        head[48..56].copy_from_slice(&logstart.to_be_bytes());
        head[96..100].copy_from_slice(&logblocks.to_be_bytes());
        head
    }

    #[test]
    fn superblock_figures_give_what_statfs_reports() {
        // The superblocks of 16 MiB ext4 and 300 MiB xfs images (statfs: 14073 KiB, 60416
        // blocks of 4 KiB).
        assert_eq!(
            ext4_usable(&ext4_head(16384, 0, 2311)),
            Some((14073 - 327) * 1024)
        );
        assert_eq!(
            xfs_usable(&xfs_head(76800, 65542, 16384, 4096)),
            Some(60416 * 4096)
        );
        // An external log takes nothing from the data device.
        assert_eq!(
            xfs_usable(&xfs_head(76800, 0, 16384, 4096)),
            Some(76800 * 4096)
        );
        // Above 2^32 blocks the high half counts (64bit feature).
        let big = ext4_usable(&ext4_head((1 << 32) + 100, 2, 0)).unwrap();
        assert_eq!(big, ((1u64 << 32) + 100 - 4096) * 4096);
        // Neither filesystem: nothing read.
        assert_eq!(ext4_usable(&[0; HEAD]), None);
        assert_eq!(xfs_usable(&[0; HEAD]), None);
    }

    #[test]
    fn a_size_that_held_is_the_next_first_guess_for_that_filesystem_and_size_only() {
        let memory = SizeMemory::default();
        assert_eq!(memory.first_guess(FsType::Ext4, 16 * MIB), 16 * MIB);
        memory.remember(FsType::Ext4, 16 * MIB, 18 * MIB);
        assert_eq!(memory.first_guess(FsType::Ext4, 16 * MIB), 18 * MIB);
        assert_eq!(memory.first_guess(FsType::Ext4, 32 * MIB), 32 * MIB);
        assert_eq!(memory.first_guess(FsType::Xfs, 16 * MIB), 16 * MIB);
    }

    #[test]
    fn sizes_step_up_by_the_shortfall_and_keep_the_overhead_on_growth() {
        assert_eq!(next_image_size(16 * MIB, 14 * MIB, 16 * MIB), 18 * MIB);
        assert_eq!(next_image_size(16 * MIB, 16 * MIB - 1, 16 * MIB), 17 * MIB);
        let grown = grown_image_size(70 * MIB, 64 * MIB, 128 * MIB);
        assert_eq!(grown, 136 * MIB);
    }
}
