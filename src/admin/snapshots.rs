//! The admin API's snapshot routes, for operators, Docker and Mesos users (whose own APIs
//! have no snapshots):
//! - `GET /v1/snapshots[?volume=NAME]`: the snapshots (of one volume).
//! - `GET /v1/snapshots/SNAP`, `DELETE /v1/snapshots/SNAP`.
//! - `POST /v1/volumes/NAME/snapshots/SNAP`: take a snapshot (idempotent by name).
//! - `POST /v1/snapshots/SNAP/restore/NEWNAME`: a new volume holding the snapshot, in the
//!   snapshot's pool, at least its size.

use serde::Serialize;

use super::{ADMIN, Admin, Query, bad_request, engine_error};
use crate::engine::snapshot::{Snapshot, SnapshotRequest};
use crate::engine::types::{CreateRequest, Owner, VolumeName, VolumeSpec};
use crate::engine::{EngineError, VolumeService};
use crate::server::http::Reply;

/// A snapshot as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotView {
    pub id: String,
    pub volume: String,
    pub pool: String,
    pub backend: String,
    pub size_bytes: u64,
    /// Unix milliseconds.
    pub created_at: u64,
}

impl SnapshotView {
    pub fn new(s: &Snapshot) -> Self {
        Self {
            id: s.name.to_string(),
            volume: s.source.to_string(),
            pool: s.pool.clone(),
            backend: s.backend.as_str().to_string(),
            size_bytes: s.size,
            created_at: s.created_at,
        }
    }
}

fn parse(raw: &str) -> Result<VolumeName, Reply> {
    VolumeName::parse(raw).map_err(|e| engine_error(&EngineError::Input(e)))
}

/// The two names a POST route carries in its path; it takes no query.
fn parse_pair(query: &Query, a: &str, b: &str) -> Result<(VolumeName, VolumeName), Reply> {
    query.only(&[]).map_err(|e| bad_request(&e))?;
    Ok((parse(a)?, parse(b)?))
}

impl Admin {
    async fn snapshot_call<T: Serialize + Send + 'static>(
        &self,
        call: impl FnOnce(&dyn VolumeService) -> Result<T, EngineError> + Send + 'static,
    ) -> Reply {
        match self.blocking(call).await {
            Ok(Ok(value)) => Reply::json(200, &value),
            Ok(Err(e)) => engine_error(&e),
            Err(reply) => reply,
        }
    }

    pub(super) async fn list_snapshots(&self, query: &Query) -> Reply {
        let volume = match query.only(&["volume"]) {
            Ok(()) => query.get("volume").map(parse).transpose(),
            Err(e) => return bad_request(&e),
        };
        let volume = match volume {
            Ok(v) => v,
            Err(reply) => return reply,
        };
        self.snapshot_call(move |e| {
            Ok(e.list_snapshots(volume.as_ref())
                .iter()
                .map(SnapshotView::new)
                .collect::<Vec<_>>())
        })
        .await
    }

    pub(super) async fn snapshot_route(&self, method: &str, id: &str, query: &Query) -> Reply {
        if let Err(e) = query.only(&[]) {
            return bad_request(&e);
        }
        let name = match parse(id) {
            Ok(n) => n,
            Err(reply) => return reply,
        };
        match method {
            "GET" => {
                self.snapshot_call(move |e| e.get_snapshot(&name).map(|s| SnapshotView::new(&s)))
                    .await
            }
            "DELETE" => {
                self.snapshot_call(move |e| {
                    e.delete_snapshot(ADMIN, &name)
                        .map(|()| serde_json::json!({ "id": name.to_string() }))
                })
                .await
            }
            _ => super::method_not_allowed("GET, DELETE"),
        }
    }

    pub(super) async fn take_snapshot(&self, volume: &str, id: &str, query: &Query) -> Reply {
        let (source, name) = match parse_pair(query, volume, id) {
            Ok(pair) => pair,
            Err(reply) => return reply,
        };
        self.snapshot_call(move |e| {
            e.snapshot(ADMIN, SnapshotRequest { name, source })
                .map(|s| SnapshotView::new(&s))
        })
        .await
    }

    pub(super) async fn restore(&self, id: &str, new_name: &str, query: &Query) -> Reply {
        let (snapshot, name) = match parse_pair(query, id, new_name) {
            Ok(pair) => pair,
            Err(reply) => return reply,
        };
        self.snapshot_call(move |e| {
            let s = e.get_snapshot(&snapshot)?;
            let request = CreateRequest {
                name,
                spec: VolumeSpec {
                    snapshot: Some(snapshot),
                    pool: Some(s.pool),
                    access: s.access,
                    ..VolumeSpec::default()
                },
                owner: Owner::default(),
            };
            let v = e.create(ADMIN, request)?;
            Ok(super::views::VolumeView::new(&v, None))
        })
        .await
    }
}
