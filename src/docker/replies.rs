//! Replies of the plugin protocol: the JSON Docker expects, a volume as `docker volume
//! inspect` shows it, and the one map from engine errors to statuses and messages.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::engine::EngineError;
use crate::engine::types::{Volume, format_size};
use crate::server::http::Reply;

use super::CONTENT_TYPE;
use crate::server::usage;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrReply {
    err: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ActivateReply {
    pub(super) implements: [&'static str; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CapabilitiesReply {
    pub(super) capabilities: Capabilities,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Capabilities {
    pub(super) scope: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MountpointReply {
    mountpoint: String,
    err: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct GetReply {
    pub(super) volume: VolumeInfo,
    pub(super) err: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListReply {
    pub(super) volumes: Vec<VolumeInfo>,
    pub(super) err: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct VolumeInfo {
    name: String,
    mountpoint: String,
    /// RFC 3339: anything else makes `docker volume inspect` answer "No such volume".
    created_at: String,
    status: Status,
}

/// What `docker volume inspect` shows under `Status`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    state: &'static str,
    kind: &'static str,
    backend: &'static str,
    pool: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
    /// `16MiB`, or `unlimited` for a plain directory without a size.
    size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    used_bytes: Option<u64>,
    /// What the volume holds and has left, as `df` inside it and CSI's NodeGetVolumeStats
    /// show (for a loopfs volume a little more than `sizeBytes`: see the README).
    #[serde(skip_serializing_if = "Option::is_none")]
    total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    available_bytes: Option<u64>,
    /// Set when `usedBytes` comes from a slow measurement reused for a while.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_age_seconds: Option<u64>,
    /// Why `usedBytes` is missing: still being measured, or the measurement failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_note: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    /// Who holds the volume: `docker:<ID>` references, CSI target paths, ...
    #[serde(skip_serializing_if = "Vec::is_empty")]
    published_to: Vec<String>,
}
pub(super) fn json_reply(value: &impl Serialize) -> Reply {
    let mut reply = Reply::json(200, value);
    reply.content_type = CONTENT_TYPE;
    reply
}

pub(super) fn ok_reply() -> Reply {
    json_reply(&ErrReply { err: String::new() })
}

/// `{"Err": message}` with `status`; also what the HTTP server sends for its own refusals.
pub fn error_reply(status: u16, message: &str) -> Reply {
    let mut reply = Reply::json(
        status,
        &ErrReply {
            err: message.to_string(),
        },
    );
    reply.content_type = CONTENT_TYPE;
    reply
}

pub(super) fn mountpoint_reply(volume: &Volume) -> Reply {
    json_reply(&MountpointReply {
        mountpoint: volume.placement.data.to_string_lossy().into_owned(),
        err: String::new(),
    })
}

/// A volume as Docker shows it; `usage` is measured for `Get` and left out of `List`.
pub(super) fn describe(v: &Volume, usage: Option<usage::Reading>) -> VolumeInfo {
    let created = UNIX_EPOCH + Duration::from_millis(v.created_at);
    let (mut measured, mut usage_note, mut usage_age_seconds) = (None, None, None);
    match usage {
        None => {}
        Some(usage::Reading::Pending) => {
            usage_note = Some("being measured in the background; ask again shortly".into());
        }
        Some(usage::Reading::Measured { outcome, age }) => {
            match outcome {
                Ok(usage) => measured = Some(usage),
                Err(e) => usage_note = Some(e),
            }
            usage_age_seconds = Some(age.as_secs()).filter(|&s| s > 0);
        }
    }
    VolumeInfo {
        name: v.name.to_string(),
        mountpoint: v.placement.data.to_string_lossy().into_owned(),
        created_at: humantime::format_rfc3339_seconds(created).to_string(),
        status: Status {
            state: v.state().as_str(),
            kind: v.placement.kind.as_str(),
            backend: v.placement.backend.as_str(),
            pool: v.placement.pool.clone(),
            profile: v.spec.profile.clone(),
            size: v.size.map_or_else(|| "unlimited".to_string(), format_size),
            size_bytes: v.size,
            used_bytes: measured.map(|u| u.bytes_used),
            total_bytes: measured.map(|u| u.bytes_total),
            available_bytes: measured.map(|u| u.bytes_available),
            usage_age_seconds,
            usage_note,
            labels: v.spec.labels.to_map(),
            published_to: v
                .publications
                .iter()
                .map(|p| p.target.to_string())
                .collect(),
        },
    }
}

/// Maps every engine error to a status and a message that says what to do.
pub(super) fn engine_error_reply(e: &EngineError, driver: &str) -> Reply {
    let (status, message) = match e {
        EngineError::Input(_) => (400, e.to_string()),
        EngineError::NotFound { volume } => (
            404,
            format!(
                "volume {volume} not found; create it with `docker volume create --driver {driver} {volume}`"
            ),
        ),
        EngineError::SnapshotNotFound { .. } => (404, e.to_string()),
        EngineError::AlreadyExists { .. } | EngineError::SnapshotExists { .. } => {
            (409, e.to_string())
        }
        EngineError::Busy { .. } => (503, e.to_string()),
        EngineError::InUse { volume, targets } => (
            409,
            format!(
                "volume {volume} is in use ({targets}); stop and remove the containers using it, then retry"
            ),
        ),
        EngineError::WrongPhase { .. } | EngineError::NotPublishedAt { .. } => (409, e.to_string()),
        EngineError::NoCapacity { .. } => (507, e.to_string()),
        EngineError::Unsupported { .. } => (422, e.to_string()),
        EngineError::PoolUnusable { .. } => (
            500,
            format!(
                "{e}; fix the pool in berth's configuration, or choose another with --opt pool=NAME"
            ),
        ),
        EngineError::TargetConflict { .. } => (409, e.to_string()),
        EngineError::TooManyVolumes { .. } => (507, e.to_string()),
        EngineError::HeldByOther { .. } => (409, e.to_string()),
        EngineError::Host { .. } => (500, e.to_string()),
        EngineError::Store { .. } => (500, e.to_string()),
    };
    error_reply(status, &message)
}
