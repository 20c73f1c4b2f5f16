//! [`VolumeService`] for [`Engine`]: each call observed (logged once, counted) and run.

use std::sync::Arc;
use std::time::Duration;

use super::pool::PoolConfig;
use super::types::*;
use super::*;
use crate::host::Host;
use crate::store::StoreError;

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

    fn publish_on(
        &self,
        caller: Caller,
        name: &VolumeName,
        base: &PublishTarget,
        target: PublishTarget,
    ) -> Result<Volume, EngineError> {
        self.observe(caller, "publish", name.as_str(), || {
            self.do_publish_on(caller, name, base, target)
        })
    }

    fn create_in_range(
        &self,
        caller: Caller,
        request: CreateRequest,
        size: &sizing::SizeRequest,
    ) -> Result<Volume, EngineError> {
        let name = request.name.to_string();
        self.observe(caller, "create", &name, || {
            self.do_create_in_range(caller, request, size)
        })
    }

    fn publish_ephemeral(
        &self,
        caller: Caller,
        request: EphemeralRequest,
    ) -> Result<Volume, EngineError> {
        let name = request.create.name.to_string();
        self.observe(caller, "publish", &name, || {
            self.do_publish_ephemeral(caller, request)
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

    fn handover(
        &self,
        caller: Caller,
        name: &VolumeName,
        to: OwnerFrontend,
    ) -> Result<Volume, EngineError> {
        self.observe(caller, "handover", name.as_str(), || {
            self.do_handover(caller, name, to)
        })
    }

    fn get(&self, name: &VolumeName) -> Result<Volume, EngineError> {
        self.cached(name).ok_or_else(|| EngineError::NotFound {
            volume: name.to_string(),
        })
    }

    fn list(&self, filter: &VolumeFilter) -> Vec<Arc<Volume>> {
        self.cache()
            .values()
            .filter(|v| filter.matches(v))
            .cloned()
            .collect()
    }

    fn list_after(
        &self,
        caller: Caller,
        after: Option<&VolumeName>,
        limit: usize,
    ) -> Vec<Arc<Volume>> {
        use std::ops::Bound;
        let start = match after {
            Some(name) => Bound::Excluded(name),
            None => Bound::Unbounded,
        };
        self.cache()
            .range::<VolumeName, _>((start, Bound::Unbounded))
            .filter(|(_, v)| access::may_act(caller.frontend, v.frontend))
            .take(limit)
            .map(|(_, v)| Arc::clone(v))
            .collect()
    }

    fn usage(&self, name: &VolumeName) -> Result<Usage, EngineError> {
        self.do_usage(name)
    }

    fn health(&self, volume: &Volume) -> VolumeHealth {
        self.do_health(volume)
    }

    fn listed_health(&self, page: &[Arc<Volume>]) -> Vec<VolumeHealth> {
        self.do_listed_health(page)
    }

    fn sweep_health(&self, valid_for: Duration) -> usize {
        self.do_sweep_health(valid_for)
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
        MetricsSnapshot {
            store: self.store.stats(),
            ..self.metrics.snapshot()
        }
    }
    fn empty_trash(&self, wait: Duration) -> u64 {
        self.do_empty_trash(wait)
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

    fn export(
        &self,
        caller: Caller,
        name: &VolumeName,
        started: &mut dyn FnMut(&transfer::ExportPlan),
        out: &mut dyn std::io::Write,
    ) -> Result<ArchiveStats, EngineError> {
        self.observe(caller, "export", name.as_str(), || {
            self.do_export(caller, name, started, out)
        })
    }

    fn import(
        &self,
        caller: Caller,
        request: transfer::ImportRequest,
        input: &mut dyn std::io::Read,
    ) -> Result<Volume, EngineError> {
        let name = request.name.to_string();
        self.observe(caller, "import", &name, || {
            self.do_import(caller, request, input)
        })
    }

    fn recovery_report(&self) -> RecoveryReport {
        self.recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn dirs_beneath(&self, root: &Path, relative: &Path, create: bool) -> Result<(), EngineError> {
        self.host
            .dirs_beneath(root, relative, create)
            .map_err(|source| EngineError::Host {
                volume: None,
                operation: if create {
                    "making mount point directories"
                } else {
                    "checking mount point directories"
                },
                source,
            })
    }

    fn random_id(&self) -> Result<[u8; 16], EngineError> {
        let mut id = [0u8; 16];
        self.host
            .random_bytes(&mut id)
            .map_err(|source| EngineError::Host {
                volume: None,
                operation: "making a random id",
                source,
            })?;
        Ok(id)
    }

    fn probe(&self) -> Result<(), EngineError> {
        self.store
            .probe()
            .map_err(|source: StoreError| EngineError::Store {
                volume: None,
                operation: "probe",
                source,
            })?;
        self.host
            .mounts()
            .map(|_| ())
            .map_err(|source| EngineError::Host {
                volume: None,
                operation: "probe",
                source,
            })
    }
}
