//! How much a base path can still take: the smaller of what its pool may still reserve (its
//! capacity less the reservations) and what its filesystem can really still hold for berth
//! (free space less the part of the reservations not yet on disk). loopfs images are
//! allocated when made, so their reservations are already out of the free space; plain
//! directories, btrfs subvolumes and project-quota directories take their blocks as they
//! are written, so their whole reservation is held back from the free space (what they
//! already hold is counted twice: finding it would take a usage scan on every create).

use std::path::Path;

use super::pool::PoolConfig;
use super::types::format_size;
use super::{Engine, EngineError};
use crate::host::{FsStats, Host};

/// The two limits on a base path, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Room {
    /// Capacity less reservations.
    pub by_reservation: u64,
    /// Free space less reservations not yet allocated on disk.
    pub by_disk: u64,
}

impl Room {
    pub fn available(&self) -> u64 {
        self.by_reservation.min(self.by_disk)
    }

    /// Both figures, for a refusal.
    pub fn describe(&self) -> String {
        format!(
            "{} left to reserve of its capacity, {} its filesystem can still hold",
            format_size(self.by_reservation),
            format_size(self.by_disk)
        )
    }
}

impl<H: Host> Engine<H> {
    /// One `statvfs` of the base path's filesystem and the table's running sums.
    pub(super) fn room_on(&self, pool: &PoolConfig, base: &Path) -> Result<Room, EngineError> {
        self.room_seen(pool, base, &mut Vec::new())
    }

    /// [`Engine::room_on`], with the free space of a filesystem already measured for another
    /// base in `seen` taken from there: bases on one filesystem are compared on one
    /// measure, not on what was freed or written between two (a trash emptied meanwhile).
    pub(super) fn room_seen(
        &self,
        pool: &PoolConfig,
        base: &Path,
        seen: &mut Vec<FsStats>,
    ) -> Result<Room, EngineError> {
        let measured = self
            .host
            .fs_stats(base)
            .map_err(|source| EngineError::Host {
                volume: None,
                operation: "measuring the pool",
                source,
            })?;
        let stats = match seen.iter().find(|s| s.device == measured.device) {
            Some(first) => *first,
            None => {
                seen.push(measured);
                measured
            }
        };
        let capacity = pool.capacity.unwrap_or(stats.bytes_total);
        let reserved = self.cache().reserved_on(base);
        let (reserved, not_on_disk) = (reserved.bytes, reserved.not_on_disk);
        Ok(Room {
            // Snapshots hold their size like volumes; their copies are on disk already.
            by_reservation: capacity
                .saturating_sub(reserved.saturating_add(self.snapshots.bytes_on(base))),
            by_disk: stats.bytes_available.saturating_sub(not_on_disk),
        })
    }
}
