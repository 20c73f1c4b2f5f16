//! The few volume facts the host acts on (which filesystem to make, who owns a directory).
//! They live here, at the bottom, so the host needs nothing from the engine; the engine
//! re-exports them as part of its vocabulary.

use serde::{Deserialize, Serialize};

/// The filesystem berth makes inside a `loopfs` image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
        }
    }

    /// The smallest image this filesystem is made in: below it `mkfs` refuses (xfs wants more
    /// than 300 MB) or leaves next to no room beside its own metadata (ext4).
    pub fn min_size(self) -> u64 {
        match self {
            Self::Ext4 => 16 << 20,
            Self::Xfs => 300 << 20,
        }
    }
}

/// Owner and permissions of a volume's data directory, applied at create.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ownership {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits (at most 0o7777).
    pub mode: Option<u32>,
}
