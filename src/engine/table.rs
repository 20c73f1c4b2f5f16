//! The in-memory table of volume records, with running sums of what each base path has
//! reserved and how many volumes each pool holds, kept up to date on every insert and remove.
//!
//! Why: placement and capacity ask "how much is reserved on this base?" on every create and
//! `GetCapacity`; summing over every record made them grow with the number of volumes.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::types::{Backend, Volume, VolumeName};

/// What the volumes on one base path hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Reserved {
    /// The sum of their sizes.
    pub bytes: u64,
    /// The part not yet allocated on disk (everything but loopfs images).
    pub not_on_disk: u64,
}

/// Every record by name (read through `Deref`), plus the sums. Records are shared
/// (`Arc`): a listing hands out references instead of copying every record, and the map's
/// nodes stay small.
#[derive(Default)]
pub(super) struct VolumeTable {
    by_name: BTreeMap<VolumeName, Arc<Volume>>,
    reserved: HashMap<PathBuf, Reserved>,
    per_pool: HashMap<String, usize>,
}

impl Deref for VolumeTable {
    type Target = BTreeMap<VolumeName, Arc<Volume>>;

    fn deref(&self) -> &Self::Target {
        &self.by_name
    }
}

impl VolumeTable {
    pub fn insert(&mut self, name: VolumeName, volume: Volume) -> Option<Arc<Volume>> {
        self.count(&volume, true);
        let old = self.by_name.insert(name, Arc::new(volume));
        if let Some(old) = &old {
            self.count(old, false);
        }
        old
    }

    pub fn remove(&mut self, name: &VolumeName) -> Option<Arc<Volume>> {
        let old = self.by_name.remove(name);
        if let Some(old) = &old {
            self.count(old, false);
        }
        old
    }

    /// What the volumes on `base` reserve.
    pub fn reserved_on(&self, base: &Path) -> Reserved {
        self.reserved.get(base).copied().unwrap_or_default()
    }

    /// How many volumes `pool` holds.
    pub fn in_pool(&self, pool: &str) -> usize {
        self.per_pool.get(pool).copied().unwrap_or(0)
    }

    fn count(&mut self, v: &Volume, add: bool) {
        let pool = self.per_pool.entry(v.placement.pool.clone()).or_default();
        *pool = if add {
            *pool + 1
        } else {
            pool.saturating_sub(1)
        };
        let Some(size) = v.size else {
            return;
        };
        let pending = match v.placement.backend {
            Backend::Loopfs => 0,
            _ => size,
        };
        let sums = self.reserved.entry(v.placement.base.clone()).or_default();
        if add {
            sums.bytes = sums.bytes.saturating_add(size);
            sums.not_on_disk = sums.not_on_disk.saturating_add(pending);
        } else {
            sums.bytes = sums.bytes.saturating_sub(size);
            sums.not_on_disk = sums.not_on_disk.saturating_sub(pending);
        }
    }
}
