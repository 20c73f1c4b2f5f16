//! Snapshots: read-only, point-in-time copies of a volume's data, kept beside the volumes
//! under each pool path's `.snapshots` directory, and volumes restored from them.
//!
//! # The cheapest correct copy per backend
//! - `loopfs` (and block volumes): a copy of the image file, `FICLONE` where the pool's
//!   filesystem shares blocks, a sparse copy otherwise, taken with the volume's filesystem
//!   frozen so the copy is consistent ([`Host::copy_image`]). A published block volume is
//!   refused: there is no filesystem to freeze.
//! - `btrfs`: a read-only snapshot of the volume's subvolume ([`Host::btrfs_snapshot`]).
//! - `none` and `prjquota`: a file-by-file copy of the volume directory
//!   ([`Host::copy_tree`]: fd-relative, never following a symlink, never leaving the volume).
//! - `disk` (`mount` pools): refused; a whole disk has nowhere on itself to keep a copy.
//!
//! A snapshot counts against its pool path's capacity like a volume: with the source's size,
//! or for an unlimited directory with the bytes its data used when the copy was taken.
//!
//! # Crash safety
//! A snapshot is recorded `Creating` before any host work and `Ready` after it; a delete is
//! recorded `Deleting` before the copy is removed. At start, [`Engine::recover_snapshots`]
//! thaws the source of a snapshot interrupted while its filesystem may have been frozen,
//! removes the half-made copy and forgets the record, and finishes interrupted deletes. A
//! restore is a create (recorded `Creating` first), so recovery rolls it back like any other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::locks::{VolumeGuard, VolumeLocks};
use super::types::{
    AccessType, Backend, Caller, Frontend, FsType, OwnerFrontend, Ownership, PoolKind, Volume,
    VolumeName, VolumeSpec,
};
use super::{Engine, EngineError, now_ms};
use crate::host::Host;

/// The directory inside each pool path that holds its snapshots.
pub const SNAPSHOTS_DIR: &str = ".snapshots";

/// A snapshot's lifecycle phase as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPhase {
    /// Recorded; the copy may be half made. A start rolls it back.
    Creating,
    Ready,
    /// A delete was recorded; a start finishes it.
    Deleting,
}

/// A snapshot as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The snapshot's name, which is also its id.
    pub name: VolumeName,
    /// The volume it copies (which may have been deleted since).
    pub source: VolumeName,
    pub pool: String,
    /// The pool path it lives under.
    pub base: PathBuf,
    /// The source's backend, which says what `path` is.
    pub backend: Backend,
    pub access: AccessType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsType>,
    /// The copy: an image file (`loopfs`, block), a read-only subvolume (`btrfs`) or a
    /// directory (`none`, `prjquota`); the last two hold the volume's `data` directory.
    pub path: PathBuf,
    /// Bytes counted against the pool path.
    pub size: u64,
    /// The source's size when the snapshot was taken: the least a restored volume gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_size: Option<u64>,
    pub phase: SnapshotPhase,
    /// Unix milliseconds.
    pub created_at: u64,
    /// The front-end whose caller took it (an operator's snapshots are Docker's, as their
    /// volumes are): only that front-end and an operator may restore, export or delete
    /// it. `None` for a snapshot taken before berth recorded it: any front-end may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<OwnerFrontend>,
}

impl Snapshot {
    /// The copy is an image file, not a directory tree.
    pub fn is_image(&self) -> bool {
        matches!(self.backend, Backend::Loopfs) || self.access == AccessType::Block
    }

    /// Where an export mounts its temporary copy of an image (`transfer`).
    pub fn view_dir(&self) -> PathBuf {
        self.path.with_extension("view")
    }
}

/// A request to snapshot a volume.
#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    pub name: VolumeName,
    pub source: VolumeName,
}

/// The engine's snapshot records and their locks.
#[derive(Default)]
pub struct SnapshotBook {
    records: Mutex<BTreeMap<VolumeName, Snapshot>>,
    pub(super) locks: VolumeLocks,
}

impl SnapshotBook {
    pub fn new(records: Vec<Snapshot>) -> Self {
        Self {
            records: Mutex::new(records.into_iter().map(|s| (s.name.clone(), s)).collect()),
            locks: VolumeLocks::default(),
        }
    }

    fn cache(&self) -> MutexGuard<'_, BTreeMap<VolumeName, Snapshot>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes the snapshots under `base` hold.
    pub fn bytes_on(&self, base: &Path) -> u64 {
        self.cache()
            .values()
            .filter(|s| s.base == base)
            .map(|s| s.size)
            .sum()
    }

    /// How many snapshots pool `pool` holds.
    pub fn count_in(&self, pool: &str) -> usize {
        self.cache().values().filter(|s| s.pool == pool).count()
    }
}

fn snapshot_not_found(name: &VolumeName) -> EngineError {
    EngineError::SnapshotNotFound {
        snapshot: name.to_string(),
    }
}

impl<H: Host> Engine<H> {
    fn snapshot_cached(&self, name: &VolumeName) -> Option<Snapshot> {
        self.snapshots.cache().get(name).cloned()
    }

    /// Whether `caller` may restore, export or delete `s`; see [`Snapshot::frontend`].
    pub(super) fn check_snapshot_access(
        &self,
        caller: Caller,
        s: &Snapshot,
    ) -> Result<(), EngineError> {
        match s.frontend {
            Some(owner)
                if !matches!(caller.frontend, Frontend::Admin | Frontend::Internal)
                    && OwnerFrontend::of_creator(caller.frontend) != owner =>
            {
                Err(EngineError::HeldByOther {
                    volume: format!("snapshot {}", s.name),
                    owner,
                    caller: caller.frontend,
                })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn save_snapshot(
        &self,
        s: &Snapshot,
        operation: &'static str,
    ) -> Result<(), EngineError> {
        self.store
            .put_snapshot(s.name.as_str(), s)
            .map_err(|source| EngineError::Store {
                volume: Some(format!("snapshot {}", s.name)),
                operation,
                source,
            })?;
        self.snapshots.cache().insert(s.name.clone(), s.clone());
        Ok(())
    }

    fn forget_snapshot(&self, s: &Snapshot, operation: &'static str) -> Result<(), EngineError> {
        self.store
            .remove_snapshot(s.name.as_str())
            .map_err(|source| EngineError::Store {
                volume: Some(format!("snapshot {}", s.name)),
                operation,
                source,
            })?;
        self.snapshots.cache().remove(&s.name);
        Ok(())
    }

    fn snapshot_host_err(
        name: &VolumeName,
        operation: &'static str,
    ) -> impl FnOnce(crate::host::HostError) -> EngineError {
        let volume = Some(format!("snapshot {name}"));
        move |source| EngineError::Host {
            volume,
            operation,
            source,
        }
    }

    pub(super) fn do_snapshot(
        &self,
        caller: Caller,
        request: SnapshotRequest,
    ) -> Result<Snapshot, EngineError> {
        let name = &request.name;
        let _snapshot_guard = self.snapshots.locks.acquire(name, caller.wait_if_busy)?;
        if let Some(existing) = self.snapshot_cached(name) {
            match existing.phase {
                SnapshotPhase::Ready if existing.source == request.source => return Ok(existing),
                SnapshotPhase::Ready => {
                    return Err(EngineError::SnapshotExists {
                        snapshot: name.to_string(),
                        source_volume: existing.source.to_string(),
                    });
                }
                // Interrupted: finish that first, then take the snapshot anew.
                SnapshotPhase::Creating | SnapshotPhase::Deleting => {
                    self.remove_snapshot_copy(&existing)?;
                }
            }
        }
        let _volume_guard = self.locks.acquire(&request.source, caller.wait_if_busy)?;
        let source = self.ready_volume(&request.source)?;
        super::access::check(caller, &source)?;
        let mut snapshot = self.reserve_snapshot(caller, name, &source)?;
        if let Err(e) = self.copy_for_snapshot(&source, &snapshot) {
            if let Err(undo) = self.remove_snapshot_copy(&snapshot) {
                tracing::error!(snapshot = %name, error = %undo, "rolling back a failed snapshot");
            }
            return Err(e);
        }
        snapshot.phase = SnapshotPhase::Ready;
        self.save_snapshot(&snapshot, "snapshot")?;
        Ok(snapshot)
    }

    /// Checks the source can be copied and there is room, and records the snapshot
    /// `Creating`.
    fn reserve_snapshot(
        &self,
        caller: Caller,
        name: &VolumeName,
        source: &Volume,
    ) -> Result<Snapshot, EngineError> {
        let p = &source.placement;
        let unsupported = |reason: String| EngineError::Unsupported {
            volume: source.name.to_string(),
            reason,
        };
        if p.kind == PoolKind::Mount || p.backend == Backend::Disk {
            return Err(unsupported(format!(
                "it is a whole disk of mount pool {}; berth cannot snapshot a disk, there is no room on it for a copy",
                p.pool
            )));
        }
        if source.spec.access == AccessType::Block && !source.publications.is_empty() {
            return Err(super::in_use(source));
        }
        let dir = p.base.join(SNAPSHOTS_DIR);
        let image = source.spec.access == AccessType::Block || p.backend == Backend::Loopfs;
        let path = if image {
            dir.join(format!("{name}.img"))
        } else {
            dir.join(name.as_str())
        };
        let size = match source.size {
            Some(size) => size,
            None => {
                self.host
                    .tree_usage(&p.data)
                    .map_err(Self::host_err(&source.name, "measuring the data to copy"))?
                    .bytes
            }
        };
        let pool = self
            .pool(&p.pool)
            .ok_or_else(|| unsupported(format!("its pool {} is no longer configured", p.pool)))?;
        let _placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.available_on(pool, &p.base)?;
        if size > room {
            return Err(EngineError::NoCapacity {
                volume: format!("snapshot {name}"),
                reason: format!(
                    "{} in pool {} has {} free of its capacity, the copy of {} needs {}",
                    p.base.display(),
                    p.pool,
                    super::types::format_size(room),
                    source.name,
                    super::types::format_size(size)
                ),
            });
        }
        self.host
            .make_dir(&dir, &Ownership::default())
            .map_err(Self::snapshot_host_err(
                name,
                "creating the snapshot directory",
            ))?;
        let snapshot = Snapshot {
            name: name.clone(),
            source: source.name.clone(),
            pool: p.pool.clone(),
            base: p.base.clone(),
            backend: p.backend,
            access: source.spec.access,
            fs: p.fs,
            path,
            size,
            source_size: source.size,
            phase: SnapshotPhase::Creating,
            created_at: now_ms(),
            frontend: Some(OwnerFrontend::of_creator(caller.frontend)),
        };
        self.save_snapshot(&snapshot, "snapshot")?;
        Ok(snapshot)
    }

    /// Makes the copy. Each step is idempotent, so a retry after a failure starts over.
    fn copy_for_snapshot(&self, source: &Volume, s: &Snapshot) -> Result<(), EngineError> {
        let p = &source.placement;
        let err = |op| Self::snapshot_host_err(&s.name, op);
        match (&p.image, p.backend) {
            (Some(image), _) => {
                let frozen = p.fs.map(|_| p.dir.as_path());
                self.host
                    .copy_image(image, &s.path, frozen)
                    .map_err(err("copying the image"))
            }
            (None, Backend::Btrfs) => self
                .host
                .btrfs_snapshot(&p.dir, &s.path, true)
                .map_err(err("snapshotting the subvolume")),
            (None, _) => {
                self.host
                    .make_dir(&s.path, &Ownership::default())
                    .map_err(err("creating the snapshot directory"))?;
                self.host
                    .copy_tree(&p.dir, &s.path)
                    .map_err(err("copying the volume"))
            }
        }
    }

    /// Removes a snapshot's copy (whatever of it exists), then its record.
    pub(super) fn remove_snapshot_copy(&self, s: &Snapshot) -> Result<(), EngineError> {
        let err = |op| Self::snapshot_host_err(&s.name, op);
        if s.phase == SnapshotPhase::Creating
            && let Some(source) = self.cached(&s.source)
            && source.placement.fs.is_some()
            && source.placement.image.is_some()
        {
            // The copy may have been cut off while the source was frozen.
            self.host
                .thaw(&source.placement.dir)
                .map_err(Self::host_err(&source.name, "thawing the filesystem"))?;
        }
        if s.phase != SnapshotPhase::Deleting {
            let mut tombstone = s.clone();
            tombstone.phase = SnapshotPhase::Deleting;
            self.save_snapshot(&tombstone, "deleting a snapshot")?;
        }
        let dir = s.base.join(SNAPSHOTS_DIR);
        if s.is_image() {
            // An export's copy may be mounted for reading (`transfer`).
            let view = s.view_dir();
            self.host
                .unmount(&view)
                .map_err(err("unmounting the export's copy"))?;
            self.host
                .remove_tree(&dir, &view)
                .map_err(err("removing the export's mount point"))?;
        }
        if s.backend == Backend::Btrfs && !s.is_image() {
            self.host
                .btrfs_delete_subvolume(&s.path)
                .map_err(err("deleting the snapshot subvolume"))?;
        } else {
            self.host
                .remove_tree(&dir, &s.path)
                .map_err(err("removing the snapshot"))?;
        }
        self.forget_snapshot(s, "deleting a snapshot")
    }

    pub(super) fn do_delete_snapshot(
        &self,
        caller: Caller,
        name: &VolumeName,
    ) -> Result<(), EngineError> {
        let _guard = self.snapshots.locks.acquire(name, caller.wait_if_busy)?;
        match self.snapshot_cached(name) {
            None => Ok(()),
            Some(s) => {
                self.check_snapshot_access(caller, &s)?;
                self.remove_snapshot_copy(&s)
            }
        }
    }

    pub(super) fn do_get_snapshot(&self, name: &VolumeName) -> Result<Snapshot, EngineError> {
        match self.snapshot_cached(name) {
            Some(s) if s.phase == SnapshotPhase::Ready => Ok(s),
            _ => Err(snapshot_not_found(name)),
        }
    }

    /// Ready snapshots in name order, of `source` only when given.
    pub(super) fn do_list_snapshots(&self, source: Option<&VolumeName>) -> Vec<Snapshot> {
        self.snapshots
            .cache()
            .values()
            .filter(|s| s.phase == SnapshotPhase::Ready)
            .filter(|s| source.is_none_or(|v| &s.source == v))
            .cloned()
            .collect()
    }

    /// The snapshot a create restores from, held (not waiting: a delete of it in progress
    /// is `Busy`) until the create is done; checks the request can take it.
    pub(super) fn restore_source(
        &self,
        caller: Caller,
        name: &VolumeName,
        spec: &VolumeSpec,
    ) -> Result<Option<(Snapshot, VolumeGuard<'_>)>, EngineError> {
        let Some(snapshot_name) = &spec.snapshot else {
            return Ok(None);
        };
        let invalid = |field: &str, reason: String| {
            EngineError::Input(super::InputError::Invalid {
                field: field.into(),
                reason,
            })
        };
        if spec.source.is_some() {
            return Err(invalid(
                "source",
                "a volume is a copy of a volume or of a snapshot, not both".into(),
            ));
        }
        let guard = self.snapshots.locks.acquire(snapshot_name, false)?;
        let snapshot = self.do_get_snapshot(snapshot_name)?;
        self.check_snapshot_access(caller, &snapshot)?;
        if spec.access != snapshot.access {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: format!(
                    "snapshot {snapshot_name} is of a {} volume; restore it as one",
                    match snapshot.access {
                        AccessType::Block => "block",
                        AccessType::Filesystem => "filesystem",
                    }
                ),
            });
        }
        if let Some(pool) = &spec.pool
            && pool != &snapshot.pool
        {
            return Err(invalid(
                "pool",
                format!(
                    "snapshot {snapshot_name} lives in pool {}; a restore goes there",
                    snapshot.pool
                ),
            ));
        }
        if let (Some(want), Some(have)) = (spec.size, snapshot.source_size)
            && want < have
        {
            return Err(invalid(
                "size",
                format!("a restore of {snapshot_name} needs at least its size, {have} bytes"),
            ));
        }
        Ok(Some((snapshot, guard)))
    }

    /// Carves a volume restored from `s`: the same steps as an empty volume, with the
    /// snapshot's content instead of nothing. Each step is idempotent.
    pub(super) fn carve_from_snapshot(&self, v: &Volume, s: &Snapshot) -> Result<(), EngineError> {
        let p = &v.placement;
        let err = |op| Self::host_err(&v.name, op);
        if s.is_image() {
            let Some(image) = &p.image else {
                return Err(EngineError::Unsupported {
                    volume: v.name.to_string(),
                    reason: format!(
                        "snapshot {} is a filesystem image; it restores only into a loopfs volume",
                        s.name
                    ),
                });
            };
            if p.fs != s.fs {
                return Err(EngineError::Unsupported {
                    volume: v.name.to_string(),
                    reason: format!(
                        "snapshot {} holds {}, the volume would get {}",
                        s.name,
                        s.fs.map_or("a block device", FsType::as_str),
                        p.fs.map_or("a block device", FsType::as_str),
                    ),
                });
            }
            let size = v.size.unwrap_or(0);
            let copied = s.source_size.unwrap_or(size);
            self.host
                .copy_image(&s.path, image, None)
                .map_err(err("copying the snapshot image"))?;
            match p.fs {
                Some(fs) => {
                    self.host
                        .make_dir(&p.dir, &Ownership::default())
                        .map_err(err("creating the volume directory"))?;
                    self.host
                        .mount_image(image, &p.dir, fs)
                        .map_err(err("mounting the filesystem image"))?;
                    self.host
                        .make_dir(&p.data, &v.spec.ownership)
                        .map_err(err("creating the data directory"))?;
                    if size > copied {
                        self.host
                            .grow_image(image, size, Some((&p.dir, fs)))
                            .map_err(err("growing the restored filesystem"))?;
                    }
                }
                None if size > copied => self
                    .host
                    .grow_image(image, size, None)
                    .map_err(err("growing the restored image"))?,
                None => {}
            }
            return Ok(());
        }
        if s.backend == Backend::Btrfs && p.backend == Backend::Btrfs {
            self.host
                .btrfs_snapshot(&s.path, &p.dir, false)
                .map_err(err("snapshotting the snapshot subvolume"))?;
            self.host
                .btrfs_set_limit(&p.dir, v.size.unwrap_or(0))
                .map_err(err("setting the qgroup limit"))?;
            return self
                .host
                .make_dir(&p.data, &v.spec.ownership)
                .map_err(err("creating the data directory"));
        }
        // A directory copy (or a btrfs snapshot read as one) fills any freshly carved volume.
        self.carve(v, None)?;
        self.host
            .copy_tree(&s.path, &p.dir)
            .map_err(err("copying the snapshot"))
    }

    /// Finishes or rolls back what a crash interrupted; see the module docs. A snapshot
    /// whose cleanup fails again is left as it is (and logged), so berth still starts.
    pub(super) fn recover_snapshots(&self) -> Vec<(String, Result<(), String>)> {
        let pending: Vec<Snapshot> = self
            .snapshots
            .cache()
            .values()
            .filter(|s| s.phase != SnapshotPhase::Ready)
            .cloned()
            .collect();
        pending
            .into_iter()
            .map(|s| {
                let outcome = self.remove_snapshot_copy(&s).map_err(|e| e.to_string());
                match &outcome {
                    Ok(()) => {
                        tracing::warn!(snapshot = %s.name, "cleaned up a snapshot interrupted by a crash")
                    }
                    Err(e) => {
                        tracing::error!(snapshot = %s.name, error = %e, "could not clean up a snapshot interrupted by a crash")
                    }
                }
                (s.name.to_string(), outcome)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
