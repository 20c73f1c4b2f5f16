//! The admin API's JSON shapes, shared by the server (which builds them from engine types)
//! and the `berth volume` CLI (which reads them). Times are RFC 3339 in UTC so operators and
//! `jq` can read them; sizes are bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::RemovalStats;
use crate::engine::pool::SizeRule;
use crate::engine::types::{
    AccessType, Backend, Owner, OwnerFrontend, PoolKind, Publication, PublicationState,
    PublishTarget, ReclaimPolicy, Usage, Volume, VolumeState,
};

/// One volume as `GET /v1/volumes` and `GET /v1/volumes/{id}` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeView {
    pub id: String,
    pub state: VolumeState,
    /// The enforced or reserved size; absent for an unlimited plain directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Which rule gave the size: the request, the pool's `default_size`, a whole disk, or
    /// none (unlimited).
    pub size_rule: SizeRule,
    /// Space and inodes in use; absent while the volume is being created or deleted, or
    /// when measuring failed (then `usage_error` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_error: Option<String>,
    pub kind: PoolKind,
    pub backend: Backend,
    pub access: AccessType,
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub reclaim: ReclaimPolicy,
    #[serde(default)]
    pub owner: Owner,
    /// The front-end the volume belongs to.
    pub frontend: OwnerFrontend,
    /// What is published: the data directory, or the image of a block volume.
    pub path: PathBuf,
    #[serde(default)]
    pub publications: Vec<PublicationView>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached_at: Option<String>,
    /// A pending reservation is rolled back if not attached by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_until: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicationView {
    #[serde(flatten)]
    pub target: PublishTarget,
    pub state: PublicationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
    pub published_at: String,
}

/// `GET /v1/volumes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeList {
    pub node: String,
    pub volumes: Vec<VolumeView>,
}

/// What became of a volume's data on `DELETE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataOutcome {
    Destroyed,
    /// Moved under the pool's retained directory (reclaim policy `retain`).
    Retained,
}

/// What a wipe removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedView {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// The user's data: for loopfs volumes measured inside their filesystem.
    pub bytes: u64,
    /// A loopfs volume's image file, reclaimed apart from `bytes`.
    #[serde(default)]
    pub image_bytes: u64,
    /// Why the counts are partial (a damaged filesystem, a directory already gone); absent
    /// when they are the whole volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

impl From<RemovalStats> for RemovedView {
    fn from(s: RemovalStats) -> Self {
        Self {
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            bytes: s.bytes,
            image_bytes: s.image_bytes,
            incomplete: s.incomplete,
        }
    }
}

/// `DELETE /v1/volumes/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteView {
    pub id: String,
    pub wiped: bool,
    pub data: DataOutcome,
    /// Only for wipes: what was destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<RemovedView>,
}

/// The body of every error reply on `/v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorView {
    pub error: String,
    /// A stable word (`not_found`, `in_use`, `unauthorized`, ...).
    pub kind: String,
}

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The reverse of [`rfc3339`]; `None` for text that is not such a time.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

fn publication_view(p: &Publication) -> PublicationView {
    PublicationView {
        target: p.target.clone(),
        state: p.state,
        device: p.device.clone(),
        published_at: rfc3339(p.published_at),
    }
}

impl VolumeView {
    /// Builds the view; `usage` is the engine's answer, if it was asked.
    pub fn new(v: &Volume, usage: Option<Result<Usage, String>>) -> Self {
        let (usage, usage_error) = match usage {
            Some(Ok(u)) => (Some(u), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        Self {
            id: v.name.to_string(),
            state: v.state(),
            size_bytes: v.size,
            size_rule: SizeRule::of(v),
            usage,
            usage_error,
            kind: v.placement.kind,
            backend: v.placement.backend,
            access: v.spec.access,
            pool: v.placement.pool.clone(),
            profile: v.spec.profile.clone(),
            labels: v.spec.labels.to_map(),
            reclaim: v.reclaim,
            owner: (*v.owner).clone(),
            frontend: v.frontend,
            path: v.placement.data.clone(),
            publications: v.publications.iter().map(publication_view).collect(),
            created_at: rfc3339(v.created_at),
            attached_at: v.attached_at.map(rfc3339),
            detached_at: v.detached_at.map(rfc3339),
            pending_until: v.pending_until.map(rfc3339),
        }
    }
}
