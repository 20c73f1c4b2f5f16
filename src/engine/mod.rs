//! The one volume service every front-end calls.
//!
//! [`VolumeService`] is the whole contract: create, publish, unpublish, delete, wipe,
//! expand, get, list, usage, capacity. [`Engine`] implements it over a [`Host`] (the kernel)
//! and a [`Store`] (the durable reservations). Front-ends parse their protocol into
//! [`types`], call the service (blocking: wrap calls in `spawn_blocking`), and map
//! [`EngineError`] to their own statuses. The engine imports no protocol crate.
//!
//! # Crash safety
//! Every state change is one durable store commit, made *before* the host work it announces
//! when that work allocates or destroys something (create: `Creating`; delete and wipe: a
//! `Deleting` tombstone; publish: a `Publishing` publication), and after it otherwise. At
//! start, [`Engine::open`] reconciles the store with the mount table: half-made volumes are
//! rolled back, tombstoned ones finished, publications whose mount vanished dropped, loop
//! filesystems re-mounted after a reboot, and mounts berth did not record reported.
//! Every operation is idempotent, so a caller that lost its answer can simply retry.
//!
//! # Logging
//! Each operation is logged exactly once, here, with its volume, front-end, outcome and
//! duration, and counted in [`metrics`]; front-ends do not log operations again.

pub mod access;
pub mod error;
pub mod locks;
pub mod metrics;
pub mod pool;
mod room;
pub mod snapshot;
pub mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::host::{Host, HostError, TargetKind};
use crate::store::{Store, StoreError};

pub use crate::host::{MountEntry, RemovalStats};
pub use error::{EngineError, InputError};
use locks::VolumeLocks;
use metrics::{Metrics, MetricsSnapshot};
use pool::PoolConfig;
use snapshot::{Snapshot, SnapshotBook, SnapshotRequest};
use types::*;

/// Directory names inside each pool path that are berth's own, never volumes.
pub const IMAGES_DIR: &str = ".images";
pub const RETAINED_DIR: &str = ".retained";

/// This node as the orchestrators see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    /// Topology segments (e.g. `topology.berth.io/node = <hostname>`).
    pub topology: BTreeMap<String, String>,
    pub max_volumes: Option<usize>,
}

/// What the engine needs to start.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub store_path: PathBuf,
    pub pools: Vec<PoolConfig>,
    pub node: NodeInfo,
}

/// Which pools a capacity question is about.
#[derive(Clone, Debug, Default)]
pub struct PoolSelector {
    pub pool: Option<String>,
    pub kind: Option<PoolKind>,
    pub profile: Option<String>,
}

/// A place a new volume could go.
struct Candidate<'p> {
    pool: &'p PoolConfig,
    base: PathBuf,
    /// For directories the room left; for disks their size.
    room: u64,
    /// The size the volume gets there.
    size: Option<u64>,
}

/// What the start-up reconciliation found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub rolled_back_creates: Vec<String>,
    pub finished_deletes: Vec<String>,
    /// Tombstoned volumes whose delete failed again at start (volume, error): they stay
    /// tombstoned, so a retried delete or wipe can finish them, and berth starts anyway.
    pub unfinished_deletes: Vec<(String, String)>,
    pub remounted: Vec<String>,
    pub dropped_publications: Vec<(String, String)>,
    pub confirmed_publications: Vec<(String, String)>,
    /// Mounts of berth's volumes or under its pools that the store does not know.
    pub stray_mounts: Vec<PathBuf>,
    /// Loop devices backed by files under berth's pools that the store does not know.
    pub stray_loops: Vec<PathBuf>,
    /// Snapshots interrupted by a crash: their half-made copies removed (or an
    /// interrupted delete finished), or why that failed again.
    pub cleaned_snapshots: Vec<(String, Result<(), String>)>,
}

/// The contract between the front-ends and the engine. See the module docs.
pub trait VolumeService: Send + Sync {
    fn create(&self, caller: Caller, request: CreateRequest) -> Result<Volume, EngineError>;
    fn publish(
        &self,
        caller: Caller,
        name: &VolumeName,
        target: PublishTarget,
    ) -> Result<Volume, EngineError>;
    fn unpublish(
        &self,
        caller: Caller,
        name: &VolumeName,
        target: &PublishTarget,
    ) -> Result<Volume, EngineError>;
    /// Releases the reservation; the data is destroyed or retained as the reclaim policy says.
    fn delete(&self, caller: Caller, name: &VolumeName) -> Result<(), EngineError>;
    /// Destroys the data and releases the reservation, whatever the reclaim policy.
    fn wipe(&self, caller: Caller, name: &VolumeName) -> Result<RemovalStats, EngineError>;
    /// Creates a *pending* reservation: like `create`, but if the volume is not published
    /// within `attach_within`, [`VolumeService::expire_pending_reservations`] rolls it back
    /// (wipes it), so a task that never starts does not hold the space for ever. An existing
    /// volume is returned as it is (a retry does not extend or add a deadline).
    fn create_pending(
        &self,
        caller: Caller,
        request: CreateRequest,
        attach_within: Duration,
    ) -> Result<Volume, EngineError>;
    /// Wipes every pending reservation whose deadline is at or before `now_ms` (Unix
    /// milliseconds) and that was never published; returns their names. A volume busy with
    /// another operation is left for the next call.
    fn expire_pending_reservations(&self, now_ms: u64) -> Vec<VolumeName>;
    fn expand(&self, caller: Caller, name: &VolumeName, size: u64) -> Result<Volume, EngineError>;
    /// Gives group `gid` read-write access to a filesystem volume's data root: the root's
    /// group becomes `gid`, with group read/write/search and set-group-id so that files made
    /// inside inherit the group (CSI's `volume_mount_group`, Kubernetes' `fsGroup`). Existing
    /// files inside are not changed. Idempotent.
    fn grant_group(
        &self,
        caller: Caller,
        name: &VolumeName,
        gid: u32,
    ) -> Result<Volume, EngineError>;
    /// Hands a volume that nothing is attached to over to `owner`, if its owner is still
    /// `expected` (compare-and-set: of two callers racing for the same volume one wins, the
    /// other gets `Busy`). An attached volume is `InUse`. The Mesos hook uses it to give a
    /// scaled-down instance's detached volume to a new instance of the same app.
    fn adopt(
        &self,
        caller: Caller,
        name: &VolumeName,
        expected: &Owner,
        owner: Owner,
    ) -> Result<Volume, EngineError>;
    fn get(&self, name: &VolumeName) -> Result<Volume, EngineError>;
    fn list(&self, filter: &VolumeFilter) -> Vec<Volume>;
    /// [`VolumeService::get`] for a front-end, which sees only its own volumes: another
    /// front-end's is refused with [`EngineError::HeldByOther`].
    fn get_as(&self, caller: Caller, name: &VolumeName) -> Result<Volume, EngineError> {
        let volume = self.get(name)?;
        access::check(caller, &volume)?;
        Ok(volume)
    }
    /// [`VolumeService::list`] for a front-end: only the volumes it may act on.
    fn list_as(&self, caller: Caller, filter: &VolumeFilter) -> Vec<Volume> {
        let mut mine = self.list(filter);
        mine.retain(|v| access::may_act(caller.frontend, v.frontend));
        mine
    }
    /// At most `limit` volumes `caller` may act on, in name order, whose names sort after
    /// `after` (all names when `None`): one page of a listing.
    fn list_after(&self, caller: Caller, after: Option<&VolumeName>, limit: usize) -> Vec<Volume>;
    fn usage(&self, name: &VolumeName) -> Result<Usage, EngineError>;
    fn capacity(&self, selector: &PoolSelector) -> Vec<PoolCapacity>;
    fn node(&self) -> &NodeInfo;
    fn pools(&self) -> &[PoolConfig];
    fn metrics(&self) -> MetricsSnapshot;
    fn recovery_report(&self) -> RecoveryReport;
    /// Takes a snapshot of a volume; an existing snapshot of that name and source is
    /// returned as it is. See [`snapshot`].
    fn snapshot(&self, caller: Caller, request: SnapshotRequest) -> Result<Snapshot, EngineError>;
    /// Deletes a snapshot; a missing one is success.
    fn delete_snapshot(&self, caller: Caller, name: &VolumeName) -> Result<(), EngineError>;
    fn get_snapshot(&self, name: &VolumeName) -> Result<Snapshot, EngineError>;
    /// Every snapshot in name order, or those of `source`.
    fn list_snapshots(&self, source: Option<&VolumeName>) -> Vec<Snapshot>;
    /// Ready when the store answers and the mount table can be read.
    fn probe(&self) -> Result<(), EngineError>;
    /// Counts a request a front-end refused before calling the engine (malformed, bad
    /// options), as a failed `op` of error `kind`, so every refusal shows in the metrics.
    fn record_refused(
        &self,
        frontend: Frontend,
        op: &'static str,
        elapsed: std::time::Duration,
        kind: &'static str,
    );
}

/// See the module docs.
pub struct Engine<H: Host> {
    host: H,
    store: Store,
    pools: Vec<PoolConfig>,
    node: NodeInfo,
    /// The store's records, kept in memory for listing and capacity sums.
    volumes: Mutex<BTreeMap<VolumeName, Volume>>,
    locks: VolumeLocks,
    snapshots: SnapshotBook,
    /// Serializes "is there room?" with "reserve it", so concurrent creates never over-commit.
    placement: Mutex<()>,
    metrics: Metrics,
    recovery: Mutex<RecoveryReport>,
    /// Each pool's size-enforcing backend, resolved at start from its config and the
    /// filesystem under it.
    enforcing: HashMap<String, Backend>,
}

/// The first project id berth hands out; lower ids are left to the operator.
pub const FIRST_PROJECT_ID: u32 = 100_000;

/// Now, in the Unix milliseconds the store records times in.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<H: Host> Engine<H> {
    /// Opens the store, prepares the pools' own directories and reconciles the store with
    /// the host.
    pub fn open(config: EngineConfig, host: H) -> Result<Self, EngineError> {
        let internal = |source| EngineError::Store {
            volume: "-".into(),
            operation: "open",
            source,
        };
        let store = Store::open(&config.store_path).map_err(internal)?;
        let records: Vec<Volume> = store.load_all().map_err(internal)?;
        let snapshots: Vec<Snapshot> = store.load_snapshots().map_err(internal)?;
        for pool in config.pools.iter().filter(|p| p.kind != PoolKind::Mount) {
            for base in &pool.paths {
                for dir in [IMAGES_DIR, RETAINED_DIR] {
                    host.make_dir(&base.join(dir), &Ownership::default())
                        .map_err(|source| EngineError::Host {
                            volume: "-".into(),
                            operation: "preparing the pool",
                            source,
                        })?;
                }
            }
        }
        let mut enforcing = HashMap::new();
        for pool in &config.pools {
            enforcing.insert(pool.name.clone(), resolve_backend(&host, pool)?);
        }
        let engine = Self {
            enforcing,
            host,
            store,
            pools: config.pools,
            node: config.node,
            volumes: Mutex::new(records.into_iter().map(|v| (v.name.clone(), v)).collect()),
            locks: VolumeLocks::default(),
            snapshots: SnapshotBook::new(snapshots),
            placement: Mutex::new(()),
            metrics: Metrics::default(),
            recovery: Mutex::default(),
        };
        let report = engine.recover()?;
        *engine.recovery.lock().unwrap_or_else(|e| e.into_inner()) = report;
        Ok(engine)
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    fn cache(&self) -> MutexGuard<'_, BTreeMap<VolumeName, Volume>> {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, name: &VolumeName) -> Option<Volume> {
        self.cache().get(name).cloned()
    }

    /// Commits a record and updates the cache.
    fn save(&self, volume: &Volume, operation: &'static str) -> Result<(), EngineError> {
        self.store
            .put(volume.name.as_str(), volume)
            .map_err(|source| EngineError::Store {
                volume: volume.name.to_string(),
                operation,
                source,
            })?;
        self.cache().insert(volume.name.clone(), volume.clone());
        Ok(())
    }

    fn forget(&self, name: &VolumeName, operation: &'static str) -> Result<(), EngineError> {
        self.store
            .remove(name.as_str())
            .map_err(|source| EngineError::Store {
                volume: name.to_string(),
                operation,
                source,
            })?;
        self.cache().remove(name);
        Ok(())
    }

    fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    fn enforcing_of(&self, pool: &PoolConfig) -> Backend {
        self.enforcing
            .get(&pool.name)
            .copied()
            .unwrap_or(Backend::Loopfs)
    }

    /// The lowest project id that no berth volume holds and the filesystem under `base`
    /// does not already use (listed in `/etc/projid` or set on a directory there). Called
    /// under the placement lock, so two creates never get the same id.
    fn free_project_id(&self, base: &Path) -> Result<u32, EngineError> {
        let in_use = |dir: &Path| {
            self.host
                .project_ids_in_use(dir)
                .map_err(|source| EngineError::Host {
                    volume: "-".into(),
                    operation: "listing project ids in use",
                    source,
                })
        };
        let mut taken: BTreeSet<u32> = in_use(base)?;
        taken.extend(in_use(&base.join(RETAINED_DIR))?);
        taken.extend(self.cache().values().filter_map(|v| v.placement.project_id));
        (FIRST_PROJECT_ID..u32::MAX)
            .find(|id| !taken.contains(id))
            .ok_or_else(|| EngineError::Unsupported {
                volume: "-".into(),
                reason: "no project id is free".into(),
            })
    }

    /// Runs one operation: logs it once and counts it.
    fn observe<T>(
        &self,
        caller: Caller,
        op: &'static str,
        volume: &str,
        run: impl FnOnce() -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let started = Instant::now();
        let result = run();
        let elapsed = started.elapsed();
        let micros = elapsed.as_micros() as u64;
        let frontend = caller.frontend.as_str();
        match &result {
            Ok(_) => tracing::info!(op, volume, frontend, micros, "ok"),
            Err(e) => tracing::warn!(op, volume, frontend, micros, error = %e, "failed"),
        }
        self.metrics.record(
            caller.frontend,
            op,
            elapsed,
            result.as_ref().err().map(EngineError::kind),
        );
        result
    }

    fn host_err(
        volume: &VolumeName,
        operation: &'static str,
    ) -> impl FnOnce(HostError) -> EngineError {
        let volume = volume.to_string();
        move |source| EngineError::Host {
            volume,
            operation,
            source,
        }
    }

    // ----- create -------------------------------------------------------------------------

    fn do_create(
        &self,
        caller: Caller,
        request: CreateRequest,
        pending_until: Option<u64>,
    ) -> Result<Volume, EngineError> {
        let name = request.name.clone();
        let _guard = self.locks.acquire(&name, caller.wait_if_busy)?;
        if let Some(existing) = self.cached(&name) {
            access::check(caller, &existing)?;
            match existing.phase {
                Phase::Ready if existing.spec == request.spec => return Ok(existing),
                Phase::Ready => {
                    return Err(EngineError::AlreadyExists {
                        volume: name.to_string(),
                        difference: spec_difference(&existing.spec, &request.spec),
                    });
                }
                Phase::Deleting { .. } => {
                    return Err(EngineError::WrongPhase {
                        volume: name.to_string(),
                        phase: "deleted",
                    });
                }
                // A create that failed half-way and was not rolled back: start over.
                Phase::Creating => self.undo_create(&existing)?,
            }
        }
        let restore = self.restore_source(&name, &request.spec)?;
        // A restore goes to its snapshot's pool, with at least the snapshot's size.
        let mut placement_spec = request.spec.clone();
        if let Some((snapshot, _)) = &restore {
            placement_spec.pool = Some(snapshot.pool.clone());
            placement_spec.size = placement_spec.size.or(snapshot.source_size);
        }
        let source = self.validate_spec(&name, &placement_spec)?;
        let owner = OwnerFrontend::of_creator(caller.frontend);
        let volume = self.reserve(&request, &placement_spec, owner, pending_until)?;
        let carved = match &restore {
            Some((snapshot, _)) => self.carve_from_snapshot(&volume, snapshot),
            None => self.carve(&volume, source.as_ref()),
        };
        if let Err(e) = carved {
            if let Err(undo) = self.undo_create(&volume) {
                tracing::error!(volume = %name, error = %undo, "rolling back a failed create");
            }
            return Err(e);
        }
        let mut ready = volume;
        ready.phase = Phase::Ready;
        self.save(&ready, "create")?;
        Ok(ready)
    }

    /// Checks what the request asks beyond what its types guarantee; returns the clone source.
    fn validate_spec(
        &self,
        name: &VolumeName,
        spec: &VolumeSpec,
    ) -> Result<Option<Volume>, EngineError> {
        let invalid = |field: &str, reason: String| {
            EngineError::Input(InputError::Invalid {
                field: field.into(),
                reason,
            })
        };
        if let Some(mode) = spec.ownership.mode
            && mode > 0o7777
        {
            return Err(invalid(
                "mode",
                format!("{mode:o} is not a permission mode"),
            ));
        }
        if let (Some(size), Some(max)) = (spec.size, spec.max_size)
            && max < size
        {
            return Err(invalid(
                "max_size",
                format!("{max} is below the size {size}"),
            ));
        }
        if spec.max_size.is_some() && spec.kind != Some(PoolKind::Mount) {
            return Err(invalid(
                "max_size",
                "a maximum size applies only to volumes of type mount".into(),
            ));
        }
        if spec.access == AccessType::Block && spec.size.is_none() {
            return Err(invalid("size", "a block volume needs a size".into()));
        }
        if let Some(pool) = &spec.pool
            && self.pool(pool).is_none()
        {
            return Err(invalid(
                "pool",
                format!(
                    "no pool named {pool:?}; this node has {:?}",
                    self.pools.iter().map(|p| &p.name).collect::<Vec<_>>()
                ),
            ));
        }
        let Some(source_name) = &spec.source else {
            return Ok(None);
        };
        let source = self
            .cached(source_name)
            .ok_or_else(|| EngineError::NotFound {
                volume: source_name.to_string(),
            })?;
        if source.phase != Phase::Ready {
            return Err(EngineError::WrongPhase {
                volume: source_name.to_string(),
                phase: "created or deleted",
            });
        }
        if source.spec.access != AccessType::Filesystem || spec.access != AccessType::Filesystem {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: "cloning is supported between filesystem volumes only".into(),
            });
        }
        if let (Some(want), Some(have)) = (spec.size, source.size)
            && want < have
        {
            return Err(invalid(
                "size",
                format!("a clone of {source_name} needs at least its size, {have} bytes"),
            ));
        }
        Ok(Some(source))
    }

    /// Picks a pool and base path (or disk) with room, and records the volume as `Creating`.
    fn reserve(
        &self,
        request: &CreateRequest,
        placement_spec: &VolumeSpec,
        frontend: OwnerFrontend,
        pending_until: Option<u64>,
    ) -> Result<Volume, EngineError> {
        let name = &request.name;
        let _placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = self.node.max_volumes
            && self.cache().len() >= limit
        {
            return Err(EngineError::TooManyVolumes {
                volume: name.to_string(),
                limit,
            });
        }
        let mut reasons = Vec::new();
        let candidates = self
            .candidates(placement_spec, &mut reasons)
            .map_err(|e| e.for_volume(name.as_str()))?;
        // Directories go where there is most room; whole disks to the smallest that fits.
        // Without a requested kind, directories are preferred over giving away a disk.
        let best = candidates.into_iter().min_by_key(|c| match c.pool.kind {
            PoolKind::Mount => (1, c.room, c.base.clone()),
            _ => (0, u64::MAX - c.room, c.base.clone()),
        });
        let Some(Candidate {
            pool, base, size, ..
        }) = best
        else {
            return Err(EngineError::NoCapacity {
                volume: name.to_string(),
                reason: if reasons.is_empty() {
                    "no pools are configured".into()
                } else {
                    reasons.join("; ")
                },
            });
        };
        let backend = if request.spec.access == AccessType::Block {
            Backend::Loopfs
        } else {
            pool.backend_for(self.enforcing_of(pool), size)
        };
        let project_id = match backend {
            Backend::Prjquota => Some(
                self.free_project_id(&base)
                    .map_err(|e| e.for_volume(name.as_str()))?,
            ),
            _ => None,
        };
        let dir = match backend {
            Backend::Disk => base.clone(),
            _ => base.join(name.as_str()),
        };
        let (data, image, fs) = match (request.spec.access, backend) {
            (AccessType::Block, _) => {
                let image = base.join(IMAGES_DIR).join(format!("{name}.img"));
                (image.clone(), Some(image), None)
            }
            (AccessType::Filesystem, Backend::Loopfs) => (
                dir.join("data"),
                Some(base.join(IMAGES_DIR).join(format!("{name}.img"))),
                Some(pool.fs),
            ),
            (
                AccessType::Filesystem,
                Backend::None | Backend::Disk | Backend::Btrfs | Backend::Prjquota,
            ) => (dir.join("data"), None, None),
        };
        if fs == Some(FsType::Xfs)
            && let Some(size) = size
            && size < FsType::Xfs.min_size()
        {
            return Err(EngineError::Input(InputError::Invalid {
                field: "size".into(),
                reason: format!(
                    "pool {} makes xfs volumes, and xfs starts at {} (mkfs.xfs makes no smaller filesystem); ask for at least that, or use an ext4 pool",
                    pool.name,
                    format_size(FsType::Xfs.min_size())
                ),
            }));
        }
        let volume = Volume {
            name: name.clone(),
            spec: request.spec.clone(),
            size,
            placement: Placement {
                pool: pool.name.clone(),
                kind: pool.kind,
                backend,
                base,
                dir,
                data,
                image,
                fs,
                project_id,
            },
            reclaim: request.spec.reclaim.unwrap_or(pool.reclaim),
            owner: request.owner.clone(),
            frontend,
            phase: Phase::Creating,
            publications: Vec::new(),
            created_at: now_ms(),
            attached_at: None,
            detached_at: None,
            pending_until,
        };
        self.save(&volume, "create")?;
        Ok(volume)
    }

    /// Every place that can hold the spec, and why each other place cannot.
    fn candidates<'p>(
        &'p self,
        spec: &VolumeSpec,
        reasons: &mut Vec<String>,
    ) -> Result<Vec<Candidate<'p>>, EngineError> {
        let mut found = Vec::new();
        for pool in &self.pools {
            if let Some(why) = pool.mismatch(spec) {
                reasons.push(why);
                continue;
            }
            if pool.kind == PoolKind::Mount && spec.access == AccessType::Block {
                reasons.push(format!(
                    "pool {} gives whole disks, not block devices",
                    pool.name
                ));
                continue;
            }
            let bases = match pool.kind {
                PoolKind::Mount => self.disks(pool)?,
                _ => pool.paths.clone(),
            };
            if bases.is_empty() {
                reasons.push(format!(
                    "pool {} has no disks mounted under {:?}",
                    pool.name, pool.paths
                ));
            }
            for base in bases {
                let base_text = base.display().to_string();
                if let Some(c) = spec.constraints.iter().find(|c| !c.matches(&base_text)) {
                    reasons.push(format!("{base_text} in pool {} fails {c}", pool.name));
                    continue;
                }
                if pool.kind == PoolKind::Mount {
                    if let Some(c) = self.disk_candidate(pool, base, spec, reasons)? {
                        found.push(c);
                    }
                    continue;
                }
                let size = spec.size.or(pool.default_size);
                let limits = self.room_on(pool, &base)?;
                let room = limits.available();
                if size.unwrap_or(0) > room {
                    reasons.push(format!(
                        "{base_text} in pool {} has {} free ({}), {} asked",
                        pool.name,
                        format_size(room),
                        limits.describe(),
                        format_size(size.unwrap_or(0))
                    ));
                    continue;
                }
                found.push(Candidate {
                    pool,
                    base,
                    room,
                    size,
                });
            }
        }
        Ok(found)
    }

    /// The filesystems mounted directly beneath a mount pool's discovery directories,
    /// read afresh from the mount table on every call.
    fn disks(&self, pool: &PoolConfig) -> Result<Vec<PathBuf>, EngineError> {
        let mounts = self.host.mounts().map_err(|source| EngineError::Host {
            volume: "-".into(),
            operation: "discovering disks",
            source,
        })?;
        let mut disks: Vec<PathBuf> = mounts
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|mp| pool.paths.iter().any(|d| mp.parent() == Some(d.as_path())))
            .collect();
        disks.sort();
        disks.dedup();
        Ok(disks)
    }

    /// A disk can take a volume when no volume holds it, no data is left on it, and its
    /// size lies within what is asked.
    fn disk_candidate<'p>(
        &self,
        pool: &'p PoolConfig,
        disk: PathBuf,
        spec: &VolumeSpec,
        reasons: &mut Vec<String>,
    ) -> Result<Option<Candidate<'p>>, EngineError> {
        let text = disk.display().to_string();
        if let Some(holder) = self.cache().values().find(|v| v.placement.base == disk) {
            reasons.push(format!("disk {text} is held by volume {}", holder.name));
            return Ok(None);
        }
        let measure = |path: &Path| {
            self.host
                .tree_usage(path)
                .map_err(|source| EngineError::Host {
                    volume: "-".into(),
                    operation: "inspecting a disk",
                    source,
                })
        };
        if measure(&disk.join("data"))?.inodes > 0 || measure(&disk.join(RETAINED_DIR))?.inodes > 1
        {
            reasons.push(format!(
                "disk {text} still holds data of a released volume; wipe it first"
            ));
            return Ok(None);
        }
        let capacity = self.capacity_of(pool, &disk)?;
        if let Some(size) = spec.size
            && capacity < size
        {
            reasons.push(format!(
                "disk {text} has {}, {} asked",
                format_size(capacity),
                format_size(size)
            ));
            return Ok(None);
        }
        if let Some(max) = spec.max_size
            && capacity > max
        {
            reasons.push(format!(
                "disk {text} has {}, more than the maximum {}",
                format_size(capacity),
                format_size(max)
            ));
            return Ok(None);
        }
        Ok(Some(Candidate {
            pool,
            base: disk,
            room: capacity,
            size: Some(capacity),
        }))
    }

    /// Bytes a base path can still take (see [`room`]).
    fn available_on(&self, pool: &PoolConfig, base: &Path) -> Result<u64, EngineError> {
        self.room_on(pool, base).map(|r| r.available())
    }

    fn capacity_of(&self, pool: &PoolConfig, base: &Path) -> Result<u64, EngineError> {
        match pool.capacity {
            // A disk's capacity is its own size.
            Some(c) if pool.kind != PoolKind::Mount => Ok(c),
            _ => self
                .host
                .fs_stats(base)
                .map(|s| s.bytes_total)
                .map_err(|source| EngineError::Host {
                    volume: "-".into(),
                    operation: "measuring the pool",
                    source,
                }),
        }
    }

    fn reserved_on(&self, base: &Path) -> u64 {
        let volumes: u64 = self
            .cache()
            .values()
            .filter(|v| v.placement.base == base)
            .filter_map(|v| v.size)
            .sum();
        volumes + self.snapshots.bytes_on(base)
    }

    /// Makes the volume's host resources. Each step is idempotent.
    fn carve(&self, v: &Volume, source: Option<&Volume>) -> Result<(), EngineError> {
        let p = &v.placement;
        let err = |op| Self::host_err(&v.name, op);
        let no_owner = Ownership::default();
        match (v.spec.access, &p.image, p.fs) {
            (AccessType::Block, Some(image), _) => {
                let size = v.size.unwrap_or(0);
                self.host
                    .create_image(image, size, None)
                    .map_err(err("creating the image"))?;
            }
            (AccessType::Filesystem, Some(image), Some(fs)) => {
                let size = v.size.unwrap_or(0);
                self.host
                    .make_dir(&p.dir, &no_owner)
                    .map_err(err("creating the volume directory"))?;
                self.host
                    .create_image(image, size, Some(fs))
                    .map_err(err("creating the filesystem image"))?;
                self.host
                    .mount_image(image, &p.dir, fs)
                    .map_err(err("mounting the filesystem image"))?;
                self.host
                    .make_dir(&p.data, &v.spec.ownership)
                    .map_err(err("creating the data directory"))?;
            }
            _ => {
                let size = v.size.unwrap_or(0);
                match p.backend {
                    Backend::Btrfs => {
                        self.host
                            .btrfs_create_subvolume(&p.dir)
                            .map_err(err("creating the subvolume"))?;
                        self.host
                            .btrfs_set_limit(&p.dir, size)
                            .map_err(err("setting the qgroup limit"))?;
                    }
                    Backend::Prjquota => {
                        self.host
                            .make_dir(&p.dir, &no_owner)
                            .map_err(err("creating the volume directory"))?;
                        self.host
                            .set_project_quota(&p.dir, p.project_id.unwrap_or(0), size)
                            .map_err(err("setting the project quota"))?;
                    }
                    _ => self
                        .host
                        .make_dir(&p.dir, &no_owner)
                        .map_err(err("creating the volume directory"))?,
                }
                self.host
                    .make_dir(&p.data, &v.spec.ownership)
                    .map_err(err("creating the data directory"))?;
            }
        }
        if let Some(source) = source {
            self.host
                .copy_tree(&source.placement.data, &p.data)
                .map_err(err("copying the source volume"))?;
        }
        Ok(())
    }

    /// Removes whatever a create made, then the record.
    fn undo_create(&self, v: &Volume) -> Result<(), EngineError> {
        self.destroy(v, false)?;
        self.forget(&v.name, "rolling back a create")
    }

    /// Destroys (or, with `retain`, moves aside) a volume's host resources.
    fn destroy(&self, v: &Volume, retain: bool) -> Result<RemovalStats, EngineError> {
        let p = &v.placement;
        let err = |op| Self::host_err(&v.name, op);
        let mut stats = RemovalStats::default();
        if p.backend == Backend::Disk {
            // The disk itself stays: only what berth made on it goes.
            if retain {
                self.host
                    .make_dir(&p.base.join(RETAINED_DIR), &Ownership::default())
                    .map_err(err("retaining the data"))?;
                self.host
                    .rename(&p.data, &self.retained_path(v, ""))
                    .map_err(err("retaining the data"))?;
                return Ok(stats);
            }
            return self
                .host
                .remove_tree(&p.base, &p.data)
                .map_err(err("wiping the disk"));
        }
        // Retained data keeps its project id (its files carry it), so the id stays taken:
        // `free_project_id` also looks under the retained directory.
        if let Some(id) = p.project_id
            && !retain
        {
            self.host
                .clear_project_quota(&p.dir, id)
                .map_err(err("releasing the project quota"))?;
        }
        if p.backend == Backend::Btrfs {
            if retain {
                self.host
                    .rename(&p.dir, &self.retained_path(v, ""))
                    .map_err(err("retaining the data"))?;
            } else {
                self.host
                    .btrfs_delete_subvolume(&p.dir)
                    .map_err(err("deleting the subvolume"))?;
            }
            return Ok(stats);
        }
        if let Some(image) = &p.image {
            if p.fs.is_some() {
                if !retain {
                    // What the user had, measured inside the filesystem as it goes.
                    let data = self
                        .host
                        .remove_tree(&p.dir, &p.data)
                        .map_err(err("removing the volume data"))?;
                    stats.files += data.files;
                    stats.dirs += data.dirs;
                    stats.symlinks += data.symlinks;
                    stats.bytes += data.bytes;
                }
                self.host
                    .unmount(&p.dir)
                    .map_err(err("unmounting the volume filesystem"))?;
            } else {
                self.host
                    .detach_loop(image)
                    .map_err(err("detaching the loop device"))?;
            }
            if retain {
                let kept = self.retained_path(v, ".img");
                self.host
                    .rename(image, &kept)
                    .map_err(err("retaining the image"))?;
            } else {
                let removed = self
                    .host
                    .remove_tree(&p.base.join(IMAGES_DIR), image)
                    .map_err(err("removing the image"))?;
                stats.image_bytes += removed.bytes;
            }
        } else if retain {
            let kept = self.retained_path(v, "");
            self.host
                .rename(&p.dir, &kept)
                .map_err(err("retaining the data"))?;
        }
        let removed = self
            .host
            .remove_tree(&p.base, &p.dir)
            .map_err(err("removing the volume directory"))?;
        if p.image.is_some() && p.fs.is_some() {
            // Only berth's empty mount point was left: the data was counted inside.
            return Ok(stats);
        }
        stats.files += removed.files;
        stats.dirs += removed.dirs;
        stats.symlinks += removed.symlinks;
        stats.bytes += removed.bytes;
        Ok(stats)
    }

    fn retained_path(&self, v: &Volume, suffix: &str) -> PathBuf {
        v.placement
            .base
            .join(RETAINED_DIR)
            .join(format!("{}-{}{suffix}", v.name, v.created_at))
    }

    // ----- publish / unpublish ------------------------------------------------------------

    fn ready_volume(&self, name: &VolumeName) -> Result<Volume, EngineError> {
        let v = self.cached(name).ok_or_else(|| EngineError::NotFound {
            volume: name.to_string(),
        })?;
        match v.phase {
            Phase::Ready => Ok(v),
            Phase::Creating => Err(EngineError::WrongPhase {
                volume: name.to_string(),
                phase: "created",
            }),
            Phase::Deleting { .. } => Err(EngineError::WrongPhase {
                volume: name.to_string(),
                phase: "deleted",
            }),
        }
    }

    fn do_publish(
        &self,
        caller: Caller,
        name: &VolumeName,
        target: PublishTarget,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let mut v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        if let PublishTarget::Bind { path, .. } = &target {
            if !path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(EngineError::Input(InputError::Invalid {
                    field: "target".into(),
                    reason: format!("{} must be an absolute path without ..", path.display()),
                }));
            }
            self.check_target_free(name, path)?;
        }
        if let Some(existing) = v.publication(&target) {
            if existing.state == PublicationState::Published {
                return if existing.target == target {
                    Ok(v)
                } else {
                    Err(EngineError::TargetConflict {
                        volume: name.to_string(),
                        target: PathBuf::from(target.to_string()),
                        how: "with a different read-only setting".into(),
                    })
                };
            }
            // A publish that was interrupted: do it again from the start.
            v.publications.retain(|p| !p.target.same_place(&target));
        }
        let first = v.publications.is_empty();
        let mut publication = Publication {
            target: target.clone(),
            state: PublicationState::Publishing,
            created_target: false,
            device: None,
            published_at: now_ms(),
        };
        if let PublishTarget::Bind { path, read_only } = &target {
            // The intent says whether berth is about to create the target, so that a crash
            // before the publish is recorded still has the target removed at start.
            publication.created_target = !self
                .host
                .target_exists(path)
                .map_err(Self::host_err(name, "inspecting the target"))?;
            v.publications.push(publication.clone());
            self.save(&v, "publish")?;
            match self.bind(&v, path, *read_only) {
                Ok((created, device)) => {
                    publication.created_target = created;
                    publication.device = device;
                }
                Err(e) => {
                    v.publications.retain(|p| !p.target.same_place(&target));
                    if let Err(undo) = self.save(&v, "publish") {
                        tracing::error!(volume = %name, error = %undo, "recording a failed publish");
                    }
                    return Err(e);
                }
            }
            v.publications.retain(|p| !p.target.same_place(&target));
        }
        publication.state = PublicationState::Published;
        v.publications.push(publication);
        if first {
            v.attached_at = Some(now_ms());
        }
        v.pending_until = None;
        self.save(&v, "publish")?;
        Ok(v)
    }

    /// A bind target may carry only one volume.
    fn check_target_free(&self, name: &VolumeName, path: &Path) -> Result<(), EngineError> {
        let cache = self.cache();
        for other in cache.values().filter(|o| &o.name != name) {
            if other
                .publications
                .iter()
                .any(|p| matches!(&p.target, PublishTarget::Bind { path: q, .. } if q == path))
            {
                return Err(EngineError::TargetConflict {
                    volume: name.to_string(),
                    target: path.to_path_buf(),
                    how: format!("for volume {}", other.name),
                });
            }
        }
        Ok(())
    }

    /// Makes the mount for a bind publication; undoes its own steps if a later one fails.
    fn bind(
        &self,
        v: &Volume,
        target: &Path,
        read_only: bool,
    ) -> Result<(bool, Option<PathBuf>), EngineError> {
        let err = |op| Self::host_err(&v.name, op);
        let kind = match v.spec.access {
            AccessType::Block => TargetKind::File,
            AccessType::Filesystem => TargetKind::Directory,
        };
        let created = self
            .host
            .prepare_target(target, kind)
            .map_err(err("preparing the target"))?;
        let undo_target = |e: EngineError| {
            if created && let Err(undo) = self.host.remove_target(target, kind) {
                tracing::error!(volume = %v.name, error = %undo, "removing a target after a failed publish");
            }
            e
        };
        let (source, device) = match (v.spec.access, &v.placement.image) {
            (AccessType::Block, Some(image)) => {
                let dev = self
                    .host
                    .attach_loop(image)
                    .map_err(err("attaching the loop device"))
                    .map_err(undo_target)?;
                (dev.clone(), Some(dev))
            }
            _ => (v.placement.data.clone(), None),
        };
        if let Err(e) = self.host.bind_mount(&source, target, read_only) {
            if device.is_some()
                && !v
                    .publications
                    .iter()
                    .any(|p| p.device.is_some() && p.state == PublicationState::Published)
                && let Some(image) = &v.placement.image
                && let Err(undo) = self.host.detach_loop(image)
            {
                tracing::error!(volume = %v.name, error = %undo, "detaching after a failed publish");
            }
            return Err(undo_target(err("bind-mounting the volume")(e)));
        }
        Ok((created, device))
    }

    fn do_unpublish(
        &self,
        caller: Caller,
        name: &VolumeName,
        target: &PublishTarget,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let mut v = self.cached(name).ok_or_else(|| EngineError::NotFound {
            volume: name.to_string(),
        })?;
        access::check(caller, &v)?;
        let Some(publication) = v.publication(target).cloned() else {
            return Ok(v);
        };
        if let PublishTarget::Bind { path, .. } = &publication.target {
            // Exactly one unmount, of berth's own bind mount. A publication left
            // Unpublishing has lost it already: unmounting again would take whatever is
            // mounted beneath (a target that is itself a mount point).
            if publication.state != PublicationState::Unpublishing {
                self.host
                    .unmount(path)
                    .map_err(Self::host_err(name, "unmounting the target"))?;
            }
            if let Err(e) = self.clean_up_unpublished(&v, &publication, path) {
                // The mount is gone; record that only the clean-up is left, for a retry or
                // the next start to finish.
                for p in v.publications.iter_mut() {
                    if p.target.same_place(target) {
                        p.state = PublicationState::Unpublishing;
                    }
                }
                self.save(&v, "unpublish")?;
                return Err(e);
            }
        }
        v.publications.retain(|p| !p.target.same_place(target));
        if v.publications.is_empty() {
            v.detached_at = Some(now_ms());
        }
        self.save(&v, "unpublish")?;
        Ok(v)
    }

    /// What is left once berth's bind mount at `path` is gone: the target berth made, and
    /// the loop device of the last block publication.
    fn clean_up_unpublished(
        &self,
        v: &Volume,
        publication: &Publication,
        path: &Path,
    ) -> Result<(), EngineError> {
        let err = |op| Self::host_err(&v.name, op);
        let kind = if publication.device.is_some() {
            TargetKind::File
        } else {
            TargetKind::Directory
        };
        if publication.created_target {
            self.host
                .remove_target(path, kind)
                .map_err(err("removing the target"))?;
        }
        let other_block = v
            .publications
            .iter()
            .any(|p| p.device.is_some() && !p.target.same_place(&publication.target));
        if publication.device.is_some()
            && !other_block
            && let Some(image) = &v.placement.image
        {
            self.host
                .detach_loop(image)
                .map_err(err("detaching the loop device"))?;
        }
        Ok(())
    }

    // ----- delete / wipe ------------------------------------------------------------------

    fn do_delete(
        &self,
        caller: Caller,
        name: &VolumeName,
        wipe: bool,
    ) -> Result<RemovalStats, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let v = self.cached(name).ok_or_else(|| EngineError::NotFound {
            volume: name.to_string(),
        })?;
        access::check(caller, &v)?;
        self.delete_locked(v, wipe)
    }

    /// Tombstones and destroys a volume whose lock the caller holds.
    fn delete_locked(&self, mut v: Volume, wipe: bool) -> Result<RemovalStats, EngineError> {
        if !v.publications.is_empty() {
            return Err(in_use(&v));
        }
        let wipe = match v.phase {
            // An interrupted delete keeps the stronger of the two requests.
            Phase::Deleting { wipe: earlier } => earlier || wipe,
            Phase::Creating | Phase::Ready => wipe,
        };
        v.phase = Phase::Deleting { wipe };
        self.save(&v, if wipe { "wipe" } else { "delete" })?;
        self.finish_delete(&v, wipe)
    }

    /// Rolls back the pending reservations past their deadline; see the trait.
    fn do_expire_pending(&self, now: u64) -> Vec<VolumeName> {
        let candidates: Vec<VolumeName> = self
            .cache()
            .values()
            .filter(|v| v.pending_expired(now))
            .map(|v| v.name.clone())
            .collect();
        let caller = Caller {
            frontend: Frontend::Internal,
            wait_if_busy: false,
        };
        let mut expired = Vec::new();
        for name in candidates {
            // Busy: someone is publishing (or deleting) it right now; look again next time.
            let Ok(_guard) = self.locks.acquire(&name, false) else {
                continue;
            };
            let Some(v) = self.cached(&name).filter(|v| v.pending_expired(now)) else {
                continue;
            };
            let wiped = self.observe(caller, "expire", name.as_str(), || {
                self.delete_locked(v, true)
            });
            if wiped.is_ok() {
                expired.push(name);
            }
        }
        expired
    }

    fn finish_delete(&self, v: &Volume, wipe: bool) -> Result<RemovalStats, EngineError> {
        let retain = !wipe && v.reclaim == ReclaimPolicy::Retain;
        let stats = self.destroy(v, retain)?;
        self.forget(&v.name, if wipe { "wipe" } else { "delete" })?;
        Ok(stats)
    }

    // ----- expand -------------------------------------------------------------------------

    fn do_expand(
        &self,
        caller: Caller,
        name: &VolumeName,
        size: u64,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let mut v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        if v.size.is_some_and(|current| size <= current) {
            return Ok(v);
        }
        if v.placement.backend == Backend::Disk {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: format!(
                    "a mount volume is a whole disk of {}; it cannot grow",
                    format_size(v.size.unwrap_or(0))
                ),
            });
        }
        let _placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let pool = self
            .pool(&v.placement.pool)
            .ok_or_else(|| EngineError::Unsupported {
                volume: name.to_string(),
                reason: format!("its pool {} is no longer configured", v.placement.pool),
            })?;
        let growth = size - v.size.unwrap_or(0);
        let available = self
            .available_on(pool, &v.placement.base)
            .map_err(|e| e.for_volume(name.as_str()))?;
        if growth > available {
            return Err(EngineError::NoCapacity {
                volume: name.to_string(),
                reason: format!(
                    "growing by {} needs more than the {} left on {}",
                    format_size(growth),
                    format_size(available),
                    v.placement.base.display()
                ),
            });
        }
        let p = &v.placement;
        let grown = match (p.backend, &p.image, p.project_id) {
            (_, Some(image), _) => {
                let mounted = p.fs.map(|fs| (p.dir.as_path(), fs));
                self.host.grow_image(image, size, mounted)
            }
            (Backend::Btrfs, None, _) => self.host.btrfs_set_limit(&p.dir, size),
            (Backend::Prjquota, None, Some(id)) => self.host.set_project_quota(&p.dir, id, size),
            _ => Ok(()),
        };
        grown.map_err(Self::host_err(name, "growing the volume"))?;
        v.size = Some(size);
        self.save(&v, "expand")?;
        Ok(v)
    }

    // ----- group access -------------------------------------------------------------------

    fn do_grant_group(
        &self,
        caller: Caller,
        name: &VolumeName,
        gid: u32,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        if v.spec.access != AccessType::Filesystem {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: "group access applies to filesystem volumes, not block volumes".into(),
            });
        }
        // Keep the owner's and others' bits; add group rwx and set-group-id.
        let base = v.spec.ownership.mode.unwrap_or(0o755) & 0o7777;
        let ownership = Ownership {
            uid: None,
            gid: Some(gid),
            mode: Some(base | 0o2070),
        };
        self.host
            .make_dir(&v.placement.data, &ownership)
            .map_err(Self::host_err(name, "granting group access"))?;
        Ok(v)
    }

    // ----- adopt --------------------------------------------------------------------------

    fn do_adopt(
        &self,
        caller: Caller,
        name: &VolumeName,
        expected: &Owner,
        owner: Owner,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let mut v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        if v.owner == owner {
            return Ok(v);
        }
        if !v.publications.is_empty() {
            return Err(in_use(&v));
        }
        if v.owner != *expected {
            // Another caller adopted it first.
            return Err(EngineError::Busy {
                volume: name.to_string(),
            });
        }
        v.owner = owner;
        self.save(&v, "adopt")?;
        Ok(v)
    }

    // ----- usage and capacity -------------------------------------------------------------

    fn do_usage(&self, name: &VolumeName) -> Result<Usage, EngineError> {
        let v = self.ready_volume(name)?;
        let p = &v.placement;
        let err = |op| Self::host_err(name, op);
        match (v.spec.access, p.fs) {
            (AccessType::Filesystem, Some(_)) => {
                // The data directory lives inside the volume's own filesystem: if that is not
                // mounted (or the data is gone) this fails instead of measuring the pool.
                let s = self
                    .host
                    .fs_stats(&p.data)
                    .map_err(err("measuring usage"))?;
                Ok(Usage {
                    bytes_used: s.bytes_total.saturating_sub(s.bytes_free),
                    bytes_total: s.bytes_total,
                    bytes_available: s.bytes_available,
                    inodes_used: s.inodes_total.saturating_sub(s.inodes_free),
                    inodes_total: s.inodes_total,
                    inodes_available: s.inodes_free,
                })
            }
            (AccessType::Block, _) => {
                let image = p.image.as_deref().unwrap_or(&p.data);
                let used = self
                    .host
                    .tree_usage(image)
                    .map_err(err("measuring usage"))?;
                let size = v.size.unwrap_or(0);
                Ok(Usage {
                    bytes_used: used.bytes.min(size),
                    bytes_total: size,
                    bytes_available: size.saturating_sub(used.bytes),
                    ..Usage::default()
                })
            }
            (AccessType::Filesystem, None) => {
                // Enforcing backends know their usage; a plain directory is walked.
                let used = match (p.backend, p.project_id) {
                    (Backend::Btrfs, _) => self.host.btrfs_usage(&p.dir),
                    (Backend::Prjquota, Some(id)) => self.host.project_quota_usage(&p.dir, id),
                    _ => self.host.tree_usage(&p.dir),
                }
                .map_err(err("measuring usage"))?;
                let fs = self
                    .host
                    .fs_stats(&p.base)
                    .map_err(err("measuring usage"))?;
                let (total, available) = match v.size {
                    Some(size) => (
                        size,
                        size.saturating_sub(used.bytes).min(fs.bytes_available),
                    ),
                    None => (fs.bytes_total, fs.bytes_available),
                };
                Ok(Usage {
                    bytes_used: used.bytes,
                    bytes_total: total,
                    bytes_available: available,
                    inodes_used: used.inodes,
                    inodes_total: fs.inodes_total,
                    inodes_available: fs.inodes_free,
                })
            }
        }
    }

    fn do_capacity(&self, selector: &PoolSelector) -> Vec<PoolCapacity> {
        let spec = VolumeSpec {
            pool: selector.pool.clone(),
            kind: selector.kind,
            profile: selector.profile.clone(),
            ..VolumeSpec::default()
        };
        self.pools
            .iter()
            .filter(|pool| pool.mismatch(&spec).is_none())
            .map(|pool| {
                let mut capacity = 0u64;
                let mut reserved = 0u64;
                let mut available = 0u64;
                let bases = match pool.kind {
                    PoolKind::Mount => self.disks(pool).unwrap_or_default(),
                    _ => pool.paths.clone(),
                };
                for base in &bases {
                    let cap = self.capacity_of(pool, base).unwrap_or(0);
                    let res = self.reserved_on(base);
                    capacity += cap;
                    reserved += res;
                    if pool.kind == PoolKind::Mount {
                        let free = self
                            .disk_candidate(
                                pool,
                                base.clone(),
                                &VolumeSpec::default(),
                                &mut Vec::new(),
                            )
                            .ok()
                            .flatten()
                            .is_some();
                        available += if free { cap } else { 0 };
                    } else {
                        available += self.room_on(pool, base).map(|r| r.available()).unwrap_or(0);
                    }
                }
                let volumes = self
                    .cache()
                    .values()
                    .filter(|v| v.placement.pool == pool.name)
                    .count();
                PoolCapacity {
                    pool: pool.name.clone(),
                    kind: pool.kind,
                    backend: pool.backend_for(self.enforcing_of(pool), Some(1)),
                    profiles: pool.profiles.clone(),
                    capacity_bytes: capacity,
                    reserved_bytes: reserved,
                    available_bytes: available,
                    volumes,
                }
            })
            .collect()
    }

    // ----- recovery -----------------------------------------------------------------------

    /// Reconciles the store with the mount table and loop devices. See the module docs.
    fn recover(&self) -> Result<RecoveryReport, EngineError> {
        let mut report = RecoveryReport {
            cleaned_snapshots: self.recover_snapshots(),
            ..RecoveryReport::default()
        };
        let host_err = |source| EngineError::Host {
            volume: "-".into(),
            operation: "reading the mount table",
            source,
        };
        let mounts = self.host.mounts().map_err(host_err)?;
        let mounted: HashSet<&Path> = mounts.iter().map(|m| m.mount_point.as_path()).collect();
        let records: Vec<Volume> = self.cache().values().cloned().collect();
        for v in records {
            match v.phase {
                Phase::Creating => {
                    self.undo_create(&v)?;
                    report.rolled_back_creates.push(v.name.to_string());
                    continue;
                }
                Phase::Deleting { wipe } => {
                    // Publications of a tombstoned volume are already gone; see do_delete.
                    // One that cannot be finished (say a mount planted inside it) must not
                    // keep the node's every other volume from being served.
                    match self.finish_delete(&v, wipe) {
                        Ok(_) => report.finished_deletes.push(v.name.to_string()),
                        Err(e) => report
                            .unfinished_deletes
                            .push((v.name.to_string(), e.to_string())),
                    }
                    continue;
                }
                Phase::Ready => {}
            }
            let mut v = v;
            if let (Some(image), Some(fs)) = (&v.placement.image, v.placement.fs)
                && !mounted.contains(v.placement.dir.as_path())
            {
                self.host
                    .mount_image(image, &v.placement.dir, fs)
                    .map_err(Self::host_err(&v.name, "re-mounting the volume filesystem"))?;
                report.remounted.push(v.name.to_string());
            }
            let before = v.publications.len();
            let mut changed = false;
            let mut kept = Vec::new();
            for mut p in std::mem::take(&mut v.publications) {
                let PublishTarget::Bind { path, .. } = &p.target else {
                    kept.push(p);
                    continue;
                };
                if mounted.contains(path.as_path()) {
                    if p.state == PublicationState::Publishing {
                        report
                            .confirmed_publications
                            .push((v.name.to_string(), path.display().to_string()));
                        p.state = PublicationState::Published;
                        changed = true;
                    }
                    kept.push(p);
                } else {
                    changed = true;
                    report
                        .dropped_publications
                        .push((v.name.to_string(), path.display().to_string()));
                    if p.created_target {
                        let kind = if p.device.is_some() {
                            TargetKind::File
                        } else {
                            TargetKind::Directory
                        };
                        if let Err(e) = self.host.remove_target(path, kind) {
                            tracing::warn!(volume = %v.name, error = %e, "leaving a stale target in place");
                        }
                    }
                }
            }
            v.publications = kept;
            if v.spec.access == AccessType::Block
                && !v.publications.iter().any(|p| p.device.is_some())
                && let Some(image) = &v.placement.image
            {
                self.host
                    .detach_loop(image)
                    .map_err(Self::host_err(&v.name, "detaching the loop device"))?;
            }
            if changed {
                if v.publications.is_empty() && before > 0 {
                    v.detached_at = Some(now_ms());
                }
                self.save(&v, "recovery")?;
            }
        }
        // Read again: the rollbacks and deletes above unmounted their volumes.
        let mounts = self.host.mounts().map_err(host_err)?;
        self.find_strays(&mounts, &mut report)?;
        for name in &report.rolled_back_creates {
            tracing::warn!(volume = %name, "rolled back a create interrupted by a crash");
        }
        for name in &report.finished_deletes {
            tracing::warn!(volume = %name, "finished a delete interrupted by a crash");
        }
        for (name, error) in &report.unfinished_deletes {
            tracing::error!(volume = %name, error = %error, "could not finish a delete interrupted by a crash; the volume stays in state deleting until a retried delete or wipe succeeds");
        }
        for (name, target) in &report.dropped_publications {
            tracing::warn!(volume = %name, target = %target, "dropped a publication whose mount is gone");
        }
        for path in &report.stray_mounts {
            tracing::warn!(mount = %path.display(), "a mount under berth's pools that the store does not know; left in place");
        }
        for dev in &report.stray_loops {
            tracing::warn!(device = %dev.display(), "a loop device over a berth image that the store does not know; left in place");
        }
        Ok(report)
    }

    fn find_strays(
        &self,
        mounts: &[MountEntry],
        report: &mut RecoveryReport,
    ) -> Result<(), EngineError> {
        let cache = self.cache();
        let known_mounts: HashSet<&Path> = cache
            .values()
            .flat_map(|v| {
                let own = v.placement.fs.map(|_| v.placement.dir.as_path());
                own.into_iter()
                    .chain(v.publications.iter().filter_map(|p| match &p.target {
                        PublishTarget::Bind { path, .. } => Some(path.as_path()),
                        PublishTarget::Reference { .. } => None,
                    }))
            })
            .collect();
        let bases: Vec<&Path> = self
            .pools
            .iter()
            .flat_map(|p| p.paths.iter().map(PathBuf::as_path))
            .collect();
        let known_images: HashSet<&Path> = cache
            .values()
            .filter_map(|v| v.placement.image.as_deref())
            .collect();
        for m in mounts {
            let under_pool = bases.iter().any(|b| m.mount_point.starts_with(b));
            let from_pool = bases.iter().any(|b| m.root.starts_with(b) && m.root != *b);
            if (under_pool || from_pool) && !known_mounts.contains(m.mount_point.as_path()) {
                report.stray_mounts.push(m.mount_point.clone());
            }
        }
        let loops = self
            .host
            .loop_devices()
            .map_err(|source| EngineError::Host {
                volume: "-".into(),
                operation: "listing loop devices",
                source,
            })?;
        for l in loops {
            let ours = bases
                .iter()
                .any(|b| l.backing_file.starts_with(b.join(IMAGES_DIR)));
            if ours && !known_images.contains(l.backing_file.as_path()) {
                report.stray_loops.push(l.device);
            }
        }
        Ok(())
    }
}

/// Decides a pool's size-enforcing backend from its config and the filesystem under its
/// paths. An explicitly chosen backend that cannot work is refused at start, naming the
/// pool and why; `auto` falls back to `loopfs` and says why in the log.
fn resolve_backend<H: Host>(host: &H, pool: &PoolConfig) -> Result<Backend, EngineError> {
    use crate::host::FsKind;
    use pool::BackendChoice;
    let refuse = |reason: String| EngineError::PoolUnusable {
        pool: pool.name.clone(),
        reason,
    };
    if pool.kind == PoolKind::Mount {
        return Ok(Backend::Disk);
    }
    let all_btrfs = || -> Result<bool, EngineError> {
        for base in &pool.paths {
            let kind = host
                .fs_kind(base)
                .map_err(|e| refuse(format!("cannot inspect {}: {e}", base.display())))?;
            if kind != FsKind::Btrfs {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let enable_btrfs = || -> Result<(), EngineError> {
        for base in &pool.paths {
            host.btrfs_enable_quota(base)
                .map_err(|e| refuse(format!("enabling btrfs quotas on {}: {e}", base.display())))?;
        }
        Ok(())
    };
    let prjquota = || -> Result<(), String> {
        for base in &pool.paths {
            host.project_quota_support(base)
                .map_err(|e| format!("{}: {e}", base.display()))?;
        }
        Ok(())
    };
    match pool.backend {
        BackendChoice::None => Ok(Backend::None),
        BackendChoice::Loopfs => Ok(Backend::Loopfs),
        BackendChoice::Btrfs => {
            if !all_btrfs()? {
                return Err(refuse(format!(
                    "backend btrfs needs every path on btrfs: {:?}",
                    pool.paths
                )));
            }
            enable_btrfs()?;
            Ok(Backend::Btrfs)
        }
        BackendChoice::Prjquota => {
            prjquota().map_err(|why| refuse(format!("backend prjquota cannot work: {why}")))?;
            Ok(Backend::Prjquota)
        }
        BackendChoice::Auto => {
            if all_btrfs()? {
                match enable_btrfs() {
                    Ok(()) => return Ok(Backend::Btrfs),
                    Err(e) => {
                        tracing::warn!(pool = %pool.name, error = %e, "btrfs quotas unavailable; using loopfs")
                    }
                }
            } else if let Err(why) = prjquota() {
                tracing::info!(pool = %pool.name, reason = %why, "no project quotas; sizes are enforced with loopfs");
            } else {
                return Ok(Backend::Prjquota);
            }
            Ok(Backend::Loopfs)
        }
    }
}

/// `InUse` for a volume that still has publications, naming them.
fn in_use(v: &Volume) -> EngineError {
    EngineError::InUse {
        volume: v.name.to_string(),
        targets: v
            .publications
            .iter()
            .map(|p| p.target.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Names the fields in which two specs differ, for `AlreadyExists` messages.
fn spec_difference(old: &VolumeSpec, new: &VolumeSpec) -> String {
    let mut fields = Vec::new();
    macro_rules! cmp {
        ($($f:ident),*) => { $( if old.$f != new.$f { fields.push(stringify!($f)); } )* };
    }
    cmp!(
        size,
        max_size,
        pool,
        kind,
        profile,
        constraints,
        labels,
        ownership,
        access,
        source,
        snapshot,
        reclaim
    );
    if fields.is_empty() {
        "none".into()
    } else {
        fields.join(", ")
    }
}

impl<H: Host> VolumeService for Engine<H> {
    fn create(&self, caller: Caller, request: CreateRequest) -> Result<Volume, EngineError> {
        let name = request.name.to_string();
        self.observe(caller, "create", &name, || {
            self.do_create(caller, request, None)
        })
    }

    fn create_pending(
        &self,
        caller: Caller,
        request: CreateRequest,
        attach_within: Duration,
    ) -> Result<Volume, EngineError> {
        let name = request.name.to_string();
        let deadline = now_ms().saturating_add(attach_within.as_millis() as u64);
        self.observe(caller, "create", &name, || {
            self.do_create(caller, request, Some(deadline))
        })
    }

    fn expire_pending_reservations(&self, now_ms: u64) -> Vec<VolumeName> {
        self.do_expire_pending(now_ms)
    }

    fn publish(
        &self,
        caller: Caller,
        name: &VolumeName,
        target: PublishTarget,
    ) -> Result<Volume, EngineError> {
        self.observe(caller, "publish", name.as_str(), || {
            self.do_publish(caller, name, target)
        })
    }

    fn unpublish(
        &self,
        caller: Caller,
        name: &VolumeName,
        target: &PublishTarget,
    ) -> Result<Volume, EngineError> {
        self.observe(caller, "unpublish", name.as_str(), || {
            self.do_unpublish(caller, name, target)
        })
    }

    fn delete(&self, caller: Caller, name: &VolumeName) -> Result<(), EngineError> {
        self.observe(caller, "delete", name.as_str(), || {
            self.do_delete(caller, name, false).map(|_| ())
        })
    }

    fn wipe(&self, caller: Caller, name: &VolumeName) -> Result<RemovalStats, EngineError> {
        self.observe(caller, "wipe", name.as_str(), || {
            self.do_delete(caller, name, true)
        })
    }

    fn expand(&self, caller: Caller, name: &VolumeName, size: u64) -> Result<Volume, EngineError> {
        self.observe(caller, "expand", name.as_str(), || {
            self.do_expand(caller, name, size)
        })
    }

    fn grant_group(
        &self,
        caller: Caller,
        name: &VolumeName,
        gid: u32,
    ) -> Result<Volume, EngineError> {
        self.observe(caller, "grant_group", name.as_str(), || {
            self.do_grant_group(caller, name, gid)
        })
    }

    fn adopt(
        &self,
        caller: Caller,
        name: &VolumeName,
        expected: &Owner,
        owner: Owner,
    ) -> Result<Volume, EngineError> {
        self.observe(caller, "adopt", name.as_str(), || {
            self.do_adopt(caller, name, expected, owner)
        })
    }

    fn get(&self, name: &VolumeName) -> Result<Volume, EngineError> {
        self.cached(name).ok_or_else(|| EngineError::NotFound {
            volume: name.to_string(),
        })
    }

    fn list(&self, filter: &VolumeFilter) -> Vec<Volume> {
        self.cache()
            .values()
            .filter(|v| filter.matches(v))
            .cloned()
            .collect()
    }

    fn list_after(&self, caller: Caller, after: Option<&VolumeName>, limit: usize) -> Vec<Volume> {
        use std::ops::Bound;
        let start = match after {
            Some(name) => Bound::Excluded(name),
            None => Bound::Unbounded,
        };
        self.cache()
            .range::<VolumeName, _>((start, Bound::Unbounded))
            .filter(|(_, v)| access::may_act(caller.frontend, v.frontend))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn usage(&self, name: &VolumeName) -> Result<Usage, EngineError> {
        self.do_usage(name)
    }

    fn capacity(&self, selector: &PoolSelector) -> Vec<PoolCapacity> {
        self.do_capacity(selector)
    }

    fn node(&self) -> &NodeInfo {
        &self.node
    }

    fn pools(&self) -> &[PoolConfig] {
        &self.pools
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }
    fn record_refused(
        &self,
        frontend: Frontend,
        op: &'static str,
        elapsed: std::time::Duration,
        kind: &'static str,
    ) {
        tracing::warn!(
            op,
            frontend = frontend.as_str(),
            error = kind,
            "refused at the front-end"
        );
        self.metrics.record(frontend, op, elapsed, Some(kind));
    }

    fn snapshot(&self, caller: Caller, request: SnapshotRequest) -> Result<Snapshot, EngineError> {
        let name = format!("snapshot {}", request.name);
        self.observe(caller, "snapshot", &name, || {
            self.do_snapshot(caller, request)
        })
    }

    fn delete_snapshot(&self, caller: Caller, name: &VolumeName) -> Result<(), EngineError> {
        self.observe(
            caller,
            "delete_snapshot",
            &format!("snapshot {name}"),
            || self.do_delete_snapshot(caller, name),
        )
    }

    fn get_snapshot(&self, name: &VolumeName) -> Result<Snapshot, EngineError> {
        self.do_get_snapshot(name)
    }

    fn list_snapshots(&self, source: Option<&VolumeName>) -> Vec<Snapshot> {
        self.do_list_snapshots(source)
    }

    fn recovery_report(&self) -> RecoveryReport {
        self.recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn probe(&self) -> Result<(), EngineError> {
        self.store
            .probe()
            .map_err(|source: StoreError| EngineError::Store {
                volume: "-".into(),
                operation: "probe",
                source,
            })?;
        self.host
            .mounts()
            .map(|_| ())
            .map_err(|source| EngineError::Host {
                volume: "-".into(),
                operation: "probe",
                source,
            })
    }
}

#[cfg(test)]
mod tests;
