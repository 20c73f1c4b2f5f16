//! The engine's errors. Each names the volume and the paths involved, so the one line a
//! front-end logs (and the message it returns) tells an operator what happened and where.
//! Every front-end maps [`EngineError`] exhaustively to its own status codes.

use std::path::PathBuf;

use thiserror::Error;

use super::types::{Frontend, OwnerFrontend};
use crate::host::HostError;
use crate::store::StoreError;

/// Input that was refused before anything was touched.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
    #[error("invalid volume name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("invalid size {value:?}: {reason}")]
    Size { value: String, reason: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A size range whose limit is below what the volume needs (see `sizing`).
    #[error("the size limit {limit} is below the {need} bytes this volume needs{why}")]
    OutOfRange { limit: u64, need: u64, why: String },
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Input(#[from] InputError),

    #[error("volume {volume} not found")]
    NotFound { volume: String },

    #[error("snapshot {snapshot} not found")]
    SnapshotNotFound { snapshot: String },

    #[error(
        "snapshot {snapshot} already exists, of volume {source_volume}; delete it or use another name"
    )]
    SnapshotExists {
        snapshot: String,
        source_volume: String,
    },

    #[error(
        "volume {volume} already exists with different parameters ({difference}); delete it or use another name"
    )]
    AlreadyExists { volume: String, difference: String },

    #[error("volume {volume} is busy: another operation on it is in progress; retry")]
    Busy { volume: String },

    #[error("volume {volume} is attached ({targets}); unpublish it first")]
    InUse { volume: String, targets: String },

    #[error("volume {volume} is being {phase}; retry once that has finished")]
    WrongPhase { volume: String, phase: &'static str },

    /// A publication that must sit on another one (CSI's publish on its staging mount) whose
    /// base is not there.
    #[error("volume {volume} is not published at {base}; publish it there first")]
    NotPublishedAt { volume: String, base: PathBuf },

    #[error("volume {volume}: no pool can hold it: {reason}")]
    NoCapacity { volume: String, reason: String },

    #[error("volume {volume}: {reason}")]
    Unsupported { volume: String, reason: String },

    #[error("pool {pool} cannot be used: {reason}")]
    PoolUnusable { pool: String, reason: String },

    #[error("volume {volume}: target {target} is already published {how}; unpublish it first")]
    TargetConflict {
        volume: String,
        target: PathBuf,
        how: String,
    },

    #[error("volume {volume}: the limit of {limit} volumes on this node is reached")]
    TooManyVolumes { volume: String, limit: usize },

    #[error(
        "volume {volume} belongs to the {owner} front-end: {caller} may not use or change it \
         (only its owner, and an administrator through `berth volume`, act on it); use another \
         name, or have an administrator hand it over: `berth volume handover {volume} --to {caller}`",
        caller = caller.as_str()
    )]
    HeldByOther {
        volume: String,
        owner: OwnerFrontend,
        caller: Frontend,
    },

    /// `volume` is None for work on no one volume (opening the store, measuring a pool,
    /// recovery's look at the mount table); [`EngineError::for_volume`] names it later
    /// where a request's volume is known.
    #[error("{}{operation} failed: {source}", volume_prefix(volume))]
    Host {
        volume: Option<String>,
        operation: &'static str,
        #[source]
        source: HostError,
    },

    #[error(
        "{}the reservation store failed during {operation}: {source}",
        volume_prefix(volume)
    )]
    Store {
        volume: Option<String>,
        operation: &'static str,
        #[source]
        source: StoreError,
    },
}

impl EngineError {
    /// Names `volume` in an error raised where no volume was known yet (pool measuring,
    /// disk discovery), so the caller's message says which request failed.
    pub fn for_volume(self, name: &str) -> Self {
        match self {
            Self::Host {
                volume: None,
                operation,
                source,
            } => Self::Host {
                volume: Some(name.to_string()),
                operation,
                source,
            },
            Self::Store {
                volume: None,
                operation,
                source,
            } => Self::Store {
                volume: Some(name.to_string()),
                operation,
                source,
            },
            other => other,
        }
    }

    /// A short stable word for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Input(_) => "invalid_input",
            Self::NotFound { .. } | Self::SnapshotNotFound { .. } => "not_found",
            Self::SnapshotExists { .. } => "already_exists",
            Self::AlreadyExists { .. } => "already_exists",
            Self::Busy { .. } => "busy",
            Self::InUse { .. } => "in_use",
            Self::WrongPhase { .. } => "wrong_phase",
            Self::NotPublishedAt { .. } => "not_published",
            Self::NoCapacity { .. } => "no_capacity",
            Self::Unsupported { .. } => "unsupported",
            Self::PoolUnusable { .. } => "pool_unusable",
            Self::TargetConflict { .. } => "target_conflict",
            Self::TooManyVolumes { .. } => "too_many_volumes",
            Self::HeldByOther { .. } => "held_by_other",
            Self::Host { .. } => "host",
            Self::Store { .. } => "store",
        }
    }
}

/// "volume NAME: " before a message about one volume; nothing before one about none.
fn volume_prefix(volume: &Option<String>) -> String {
    volume
        .as_ref()
        .map(|v| format!("volume {v}: "))
        .unwrap_or_default()
}
