//! The volume records: every change is committed to the store (durably, or without waiting
//! for the disk for the record that completes an operation) and then mirrored in the
//! in-memory [`VolumeTable`], so the two never disagree. Kept apart from the engine's
//! construction in `mod.rs`; every operation reads and writes records through these.

use std::sync::MutexGuard;

use super::table::VolumeTable;
use super::types::{Volume, VolumeName};
use super::{Engine, EngineError};
use crate::host::Host;
use crate::store::{Store, StoreError};

impl<H: Host> Engine<H> {
    pub(super) fn cache(&self) -> MutexGuard<'_, VolumeTable> {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn cached(&self, name: &VolumeName) -> Option<Volume> {
        self.cache().get(name).map(|v| Volume::clone(v))
    }

    /// Commits a record durably and updates the cache.
    pub(super) fn save(&self, volume: &Volume, operation: &'static str) -> Result<(), EngineError> {
        self.commit(volume, operation, Store::put::<Volume>)
    }

    /// Commits the record that completes an operation whose durable intent was committed
    /// before its host work, without waiting for the disk (see "Crash safety" in the engine
    /// docs): a crash that loses it leaves the intent, which recovery finishes from the
    /// host's state.
    pub(super) fn save_completion(
        &self,
        volume: &Volume,
        operation: &'static str,
    ) -> Result<(), EngineError> {
        self.commit(volume, operation, Store::put_unsynced::<Volume>)
    }

    fn commit(
        &self,
        volume: &Volume,
        operation: &'static str,
        put: fn(&Store, &str, &Volume) -> Result<(), StoreError>,
    ) -> Result<(), EngineError> {
        put(&self.store, volume.name.as_str(), volume).map_err(|source| EngineError::Store {
            volume: Some(volume.name.to_string()),
            operation,
            source,
        })?;
        self.cache().insert(volume.name.clone(), volume.clone());
        Ok(())
    }

    /// Durably removes a record and drops it from the cache.
    pub(super) fn forget(
        &self,
        name: &VolumeName,
        operation: &'static str,
    ) -> Result<(), EngineError> {
        self.drop_record(name, operation, Store::remove)
    }

    /// Removes the record of a volume whose `Deleting` tombstone is durable, without waiting
    /// for the disk: a crash that loses the removal leaves the tombstone, and recovery
    /// finishes the delete.
    pub(super) fn forget_completion(
        &self,
        name: &VolumeName,
        operation: &'static str,
    ) -> Result<(), EngineError> {
        self.drop_record(name, operation, Store::remove_unsynced)
    }

    fn drop_record(
        &self,
        name: &VolumeName,
        operation: &'static str,
        remove: fn(&Store, &str) -> Result<(), StoreError>,
    ) -> Result<(), EngineError> {
        remove(&self.store, name.as_str()).map_err(|source| EngineError::Store {
            volume: Some(name.to_string()),
            operation,
            source,
        })?;
        self.cache().remove(name);
        Ok(())
    }
}
