//! The Controller's snapshot RPCs: CreateSnapshot, DeleteSnapshot, ListSnapshots and
//! GetSnapshot. A snapshot's id is its name (like a volume's); snapshots are taken and kept
//! on this node, ready to use as soon as CreateSnapshot returns.

use std::time::{Duration, UNIX_EPOCH};

use tonic::Status;

use super::describe::{TOKEN_PREFIX, bytes, page_request};
use super::proto::list_snapshots_response::Entry;
use super::proto::*;
use super::{CALLER, CsiService, Failure, required};
use crate::engine::snapshot::{Snapshot as EngineSnapshot, SnapshotRequest};
use crate::engine::types::VolumeName;

/// An engine snapshot as CSI describes it.
fn csi_snapshot(s: &EngineSnapshot) -> Snapshot {
    let created = UNIX_EPOCH + Duration::from_millis(s.created_at);
    Snapshot {
        size_bytes: bytes(s.size),
        snapshot_id: s.name.to_string(),
        source_volume_id: s.source.to_string(),
        creation_time: Some(prost_types::Timestamp::from(created)),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// The snapshot an RPC names. An id that cannot be a berth name names no snapshot.
pub(super) fn snapshot_id(raw: &str, field: &str) -> Result<VolumeName, Failure> {
    let raw = required(raw, field)?;
    VolumeName::parse(raw).map_err(|e| {
        Status::not_found(format!("{field} {raw:?} names no berth snapshot: {e}")).into()
    })
}

impl CsiService {
    pub(super) async fn create_snapshot_rpc(
        &self,
        req: CreateSnapshotRequest,
    ) -> Result<CreateSnapshotResponse, Failure> {
        let raw = required(&req.name, "name")?;
        let name =
            VolumeName::parse(raw).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        let source = super::volume_id(&req.source_volume_id, "source_volume_id")?;
        if let Some(key) = req.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "parameters: berth takes no snapshot parameters, {key:?} given"
            ))
            .into());
        }
        let snapshot = self
            .engine(move |e| e.snapshot(CALLER, SnapshotRequest { name, source }))
            .await??;
        Ok(CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&snapshot)),
        })
    }

    pub(super) async fn delete_snapshot_rpc(
        &self,
        req: DeleteSnapshotRequest,
    ) -> Result<DeleteSnapshotResponse, Failure> {
        let raw = required(&req.snapshot_id, "snapshot_id")?;
        // An id that cannot be a name names no snapshot: deleting it is done already.
        let Ok(name) = VolumeName::parse(raw) else {
            return Ok(DeleteSnapshotResponse {});
        };
        self.engine(move |e| e.delete_snapshot(CALLER, &name))
            .await??;
        Ok(DeleteSnapshotResponse {})
    }

    pub(super) async fn get_snapshot_rpc(
        &self,
        req: GetSnapshotRequest,
    ) -> Result<GetSnapshotResponse, Failure> {
        let name = snapshot_id(&req.snapshot_id, "snapshot_id")?;
        let snapshot = self
            .engine(move |e| e.get_snapshot(&name))
            .await?
            .map_err(Failure::Lookup)?;
        Ok(GetSnapshotResponse {
            snapshot: Some(csi_snapshot(&snapshot)),
        })
    }

    pub(super) async fn list_snapshots_rpc(
        &self,
        req: ListSnapshotsRequest,
    ) -> Result<ListSnapshotsResponse, Failure> {
        let (limit, after) = page_request(req.max_entries, &req.starting_token)?;
        // Filters by ids that cannot be berth names match nothing.
        let parse_filter = |raw: &str| match raw {
            "" => Ok(None),
            raw => VolumeName::parse(raw).map(Some).map_err(|_| ()),
        };
        let (Ok(by_id), Ok(by_source)) = (
            parse_filter(&req.snapshot_id),
            parse_filter(&req.source_volume_id),
        ) else {
            return Ok(ListSnapshotsResponse::default());
        };
        let mut page: Vec<EngineSnapshot> = self
            .engine(move |e| {
                e.list_snapshots(by_source.as_ref())
                    .into_iter()
                    .filter(|s| by_id.as_ref().is_none_or(|id| &s.name == id))
                    .filter(|s| after.as_ref().is_none_or(|a| &s.name > a))
                    .take(limit.saturating_add(1))
                    .collect()
            })
            .await?;
        let next_token = if page.len() > limit {
            page.truncate(limit);
            page.last()
                .map(|s| format!("{TOKEN_PREFIX}{}", s.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListSnapshotsResponse {
            entries: page
                .iter()
                .map(|s| Entry {
                    snapshot: Some(csi_snapshot(s)),
                })
                .collect(),
            next_token,
        })
    }
}
