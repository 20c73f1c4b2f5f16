//! The one volume service every front-end calls.
//!
//! [`VolumeService`] is the whole contract: create, publish, unpublish, delete, wipe,
//! expand, get, list, usage, capacity, snapshots ([`snapshot`]), export and import
//! ([`transfer`]). [`Engine`] implements it over a [`Host`] (the kernel)
//! and a [`Store`] (the durable reservations). Front-ends parse their protocol into
//! [`types`], call the service (blocking: wrap calls in `spawn_blocking`), and map
//! [`EngineError`] to their own statuses. The engine imports no protocol crate.
//!
//! # Crash safety
//! Every state change makes one durable store commit, *before* the host work it announces
//! when that work allocates or destroys something (create: `Creating`; delete and wipe: a
//! `Deleting` tombstone; publish: a `Publishing` publication; expand: `growing_to`), and after it otherwise. The
//! record that completes such an operation (`Ready`, `Published`, the tombstone's removal) is
//! committed without waiting for the disk: a crash that loses it leaves the durable intent,
//! and recovery finishes the operation from the host's state (a plain directory's interrupted
//! create is completed, a publication whose mount exists is confirmed, a tombstoned delete
//! finished), so what an answer said survives a crash, at one `fsync` per operation.
//! Concurrent commits share one `fsync` (see [`crate::store`]). At start, [`Engine::open`]
//! reconciles the store with the mount table: half-made volumes are rolled back, tombstoned
//! ones finished, publications whose mount vanished dropped (and references, which no mount
//! backs, taken in an earlier boot: by boot id), loop
//! filesystems re-mounted after a reboot, and mounts berth did not record reported.
//! Every operation is idempotent, so a caller that lost its answer can simply retry.
//! A loopfs image a delete destroys is renamed into its pool's trash, durably before the
//! tombstone goes, and unlinked later in the background; every trash is emptied after a
//! start too ([`trash`]).
//!
//! # Logging
//! Each operation is logged exactly once, here, with its volume, front-end, outcome and
//! duration, and counted in [`metrics`]; front-ends do not log operations again.

pub mod access;
mod adopt;
mod backend;
mod create;
mod delete;
mod ephemeral;
pub mod error;
mod expand;
mod group_access;
mod handover;
mod health;
pub mod labels;
pub mod locks;
pub mod metrics;
mod placement;
pub mod pool;
mod publish;
mod records;
mod recovery;
pub mod request;
mod room;
pub mod selector;
mod service;
pub mod sizing;
pub mod snapshot;
mod table;
pub mod transfer;
mod trash;
pub mod types;
mod usage;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::host::{Host, HostError};
use crate::store::Store;

pub use crate::host::{ArchiveStats, MountEntry, RemovalStats};
use backend::resolve_backend;
pub use ephemeral::EphemeralRequest;
pub use error::{EngineError, InputError};
pub use health::VolumeHealth;
use locks::VolumeLocks;
use metrics::{Metrics, MetricsSnapshot};
use pool::PoolConfig;
use snapshot::{Snapshot, SnapshotBook, SnapshotRequest};
use table::VolumeTable;
use transfer::{ExportPlan, ImportRequest};
use types::*;

/// Directory names inside each pool path that are berth's own, never volumes.
pub const IMAGES_DIR: &str = ".images";
pub const RETAINED_DIR: &str = ".retained";
/// Where deleted images wait to be unlinked (see [`trash`]); made at the first delete.
pub const TRASH_DIR: &str = ".trash";

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
    /// Only the disks and paths whose labels satisfy it count.
    pub selector: Option<selector::LabelSelector>,
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
    /// Grows cut short by a crash, finished at start.
    pub finished_grows: Vec<String>,
    /// Plain directory volumes whose create was interrupted, made whole.
    pub completed_creates: Vec<String>,
    pub finished_deletes: Vec<String>,
    /// Tombstoned volumes whose delete failed again at start (volume, error): they stay
    /// tombstoned, so a retried delete or wipe can finish them, and berth starts anyway.
    pub unfinished_deletes: Vec<(String, String)>,
    pub remounted: Vec<String>,
    /// (volume, target): bind publications whose mount is gone, references from an
    /// earlier boot.
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
    /// Publishes at `target` only while the volume is published at `base` (CSI: a
    /// publication on its staging mount), checked and done under one volume lock;
    /// [`EngineError::NotPublishedAt`] otherwise, changing nothing.
    fn publish_on(
        &self,
        caller: Caller,
        name: &VolumeName,
        base: &PublishTarget,
        target: PublishTarget,
    ) -> Result<Volume, EngineError>;
    /// Creates a volume in a size range: under the volume lock, its size is chosen as
    /// [`sizing::size_for_range`] says (or kept from an existing volume of this name whose
    /// size is in the range) and a filesystem type no candidate pool makes is refused;
    /// then it is created as [`VolumeService::create`] does.
    fn create_in_range(
        &self,
        caller: Caller,
        request: CreateRequest,
        size: &sizing::SizeRequest,
    ) -> Result<Volume, EngineError>;
    /// Creates a volume for one publication, grants `group` access to it if given and
    /// publishes it at `target`, all under one volume lock; if the grant or publish fails,
    /// a volume this call made is destroyed again (no volume, no record). A ready volume of
    /// the same spec (a retried call) is published and kept whatever happens.
    fn publish_ephemeral(
        &self,
        caller: Caller,
        request: EphemeralRequest,
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
    /// Waits up to `wait` for a pool's trash to be due (a delete moved an image into it, or
    /// the engine started), then unlinks what every due trash holds; returns how many
    /// entries went. The daemon calls it in a loop on a thread of its own. See [`trash`].
    fn empty_trash(&self, wait: Duration) -> u64;
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
    /// Hands a volume that nothing is attached to over to front-end `to`: from then on only
    /// `to` (and the admin API) acts on it. The data is untouched; an attached volume is
    /// `InUse`, and only the admin API (or berth itself) may call it. Idempotent.
    fn handover(
        &self,
        caller: Caller,
        name: &VolumeName,
        to: OwnerFrontend,
    ) -> Result<Volume, EngineError>;
    fn get(&self, name: &VolumeName) -> Result<Volume, EngineError>;
    fn list(&self, filter: &VolumeFilter) -> Vec<Arc<Volume>>;
    /// [`VolumeService::get`] for a front-end, which sees only its own volumes: another
    /// front-end's is refused with [`EngineError::HeldByOther`].
    fn get_as(&self, caller: Caller, name: &VolumeName) -> Result<Volume, EngineError> {
        let volume = self.get(name)?;
        access::check(caller, &volume)?;
        Ok(volume)
    }
    /// [`VolumeService::list`] for a front-end: only the volumes it may act on.
    fn list_as(&self, caller: Caller, filter: &VolumeFilter) -> Vec<Arc<Volume>> {
        let mut mine = self.list(filter);
        mine.retain(|v| access::may_act(caller.frontend, v.frontend));
        mine
    }
    /// At most `limit` volumes `caller` may act on, in name order, whose names sort after
    /// `after` (all names when `None`): one page of a listing.
    fn list_after(
        &self,
        caller: Caller,
        after: Option<&VolumeName>,
        limit: usize,
    ) -> Vec<Arc<Volume>>;
    fn usage(&self, name: &VolumeName) -> Result<Usage, EngineError>;
    /// Whether `volume` (a record from `get` or `list`) is whole on the host now: its data
    /// in place, a loopfs volume's filesystem mounted on a loop device over its image and
    /// without recorded errors, a published block volume's loop device attached. See
    /// [`health`].
    fn health(&self, volume: &Volume) -> VolumeHealth;
    /// The health of each volume of a listing's page, in order: probed now for a page of
    /// up to 256 volumes, from the last [`VolumeService::sweep_health`] for a larger one
    /// while it is fresh. See [`health`].
    fn listed_health(&self, page: &[Arc<Volume>]) -> Vec<VolumeHealth>;
    /// Probes every volume now and keeps what is wrong for large listings, which trust it
    /// for `valid_for`; returns how many volumes are abnormal. The daemon runs it at start
    /// and periodically.
    fn sweep_health(&self, valid_for: Duration) -> usize;
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
    /// Writes volume or snapshot `name` to `out` as a tar archive; `started` is told what
    /// is read before the first byte. See [`transfer`].
    fn export(
        &self,
        caller: Caller,
        name: &VolumeName,
        started: &mut dyn FnMut(&ExportPlan),
        out: &mut dyn std::io::Write,
    ) -> Result<ArchiveStats, EngineError>;
    /// Makes a new volume holding the tar archive read from `input`. See [`transfer`].
    fn import(
        &self,
        caller: Caller,
        request: ImportRequest,
        input: &mut dyn std::io::Read,
    ) -> Result<Volume, EngineError>;
    /// Ready when the store answers and the mount table can be read.
    fn probe(&self) -> Result<(), EngineError>;
    /// Makes (with `create`) or checks the directories from `root` down through `relative`
    /// by the host's fd-relative walk that follows no symbolic link
    /// ([`crate::host::Host::dirs_beneath`]): for a front-end that mounts beneath a
    /// directory its caller names (the Mesos hook's sandboxes and container root
    /// filesystems), so no path is checked and then used by name.
    fn dirs_beneath(&self, root: &Path, relative: &Path, create: bool) -> Result<(), EngineError>;
    /// Sixteen random bytes from the kernel, for ids a front-end makes up.
    fn random_id(&self) -> Result<[u8; 16], EngineError>;
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
    volumes: Mutex<VolumeTable>,
    locks: VolumeLocks,
    snapshots: SnapshotBook,
    /// Serializes "is there room?" with "reserve it", so concurrent creates never over-commit.
    placement: Mutex<()>,
    metrics: Metrics,
    recovery: Mutex<RecoveryReport>,
    /// What the last health sweep found, for large listings.
    health_book: Mutex<health::HealthBook>,
    /// The pool trashes with images to unlink.
    trash: trash::TrashQueue,
    /// Each pool's size-enforcing backend, resolved at start from its config and the
    /// filesystem under it.
    enforcing: HashMap<String, Backend>,
    /// The kernel's boot id, read at start: references taken in another boot are dropped.
    boot_id: String,
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
            volume: None,
            operation: "open",
            source,
        };
        let store = Store::open(&config.store_path).map_err(internal)?;
        let mut volumes = VolumeTable::default();
        store
            .load_each(|v: Volume| {
                volumes.insert(v.name.clone(), v);
            })
            .map_err(internal)?;
        let snapshots: Vec<Snapshot> = store.load_snapshots().map_err(internal)?;
        for pool in config.pools.iter().filter(|p| p.kind != PoolKind::Mount) {
            for base in &pool.paths {
                for dir in [IMAGES_DIR, RETAINED_DIR] {
                    host.make_dir(&base.join(dir), &Ownership::default())
                        .map_err(|source| EngineError::Host {
                            volume: None,
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
        let boot_id = host.boot_id().map_err(|source| EngineError::Host {
            volume: None,
            operation: "reading the boot id",
            source,
        })?;
        let engine = Self {
            enforcing,
            boot_id,
            host,
            store,
            pools: config.pools,
            node: config.node,
            volumes: Mutex::new(volumes),
            locks: VolumeLocks::default(),
            snapshots: SnapshotBook::new(snapshots),
            placement: Mutex::new(()),
            metrics: Metrics::default(),
            recovery: Mutex::default(),
            health_book: Mutex::default(),
            trash: trash::TrashQueue::default(),
        };
        let report = engine.recover()?;
        *engine.recovery.lock().unwrap_or_else(|e| e.into_inner()) = report;
        engine.queue_every_trash();
        Ok(engine)
    }

    pub fn host(&self) -> &H {
        &self.host
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
        let volume = Some(volume.to_string());
        move |source| EngineError::Host {
            volume,
            operation,
            source,
        }
    }
}

/// `InUse` for a volume that still has publications, naming them as its users can look
/// them up.
pub(super) fn in_use(v: &Volume) -> EngineError {
    EngineError::InUse {
        volume: v.name.to_string(),
        targets: v
            .publications
            .iter()
            .map(|p| p.target.describe(&v.name))
            .collect::<Vec<_>>()
            .join("; "),
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
        reclaim,
        selector,
        fs
    );
    if fields.is_empty() {
        "none".into()
    } else {
        fields.join(", ")
    }
}

#[cfg(test)]
mod selector_placement_tests;
#[cfg(test)]
mod tests;
