//! CSI request builders shared by the crate's CSI tests (`src/csi/tests.rs`, on the fake
//! host) and the integration tests against the real daemon (`tests/csi*.rs`), so a request
//! reads the same in both. Built with `cfg(test)` or the `testing` feature only.

use std::collections::HashMap;
use std::path::Path;

use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::{
    AccessMode, AccessType as CsiAccess, BlockVolume, MountVolume,
};
use super::proto::*;

/// A capability of `access` with access mode `mode`.
pub fn cap(mode: Mode, access: CsiAccess) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(access),
    }
}

/// A single-node writer mount capability with no fs_type, flags or group.
pub fn mount() -> VolumeCapability {
    cap(
        Mode::SingleNodeWriter,
        CsiAccess::Mount(MountVolume::default()),
    )
}

/// A single-node writer mount capability with `fs_type`, mount `flags` and a
/// `volume_mount_group`.
pub fn mount_with(fs_type: &str, flags: &[&str], group: &str) -> VolumeCapability {
    cap(
        Mode::SingleNodeWriter,
        CsiAccess::Mount(MountVolume {
            fs_type: fs_type.into(),
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            volume_mount_group: group.into(),
        }),
    )
}

/// A single-node writer raw block capability.
pub fn block() -> VolumeCapability {
    cap(Mode::SingleNodeWriter, CsiAccess::Block(BlockVolume {}))
}

/// Request parameters (or volume context) from pairs.
pub fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn stage_request(id: &str, staging: &Path, caps: VolumeCapability) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(caps),
        ..Default::default()
    }
}

pub fn publish_request(
    id: &str,
    staging: &Path,
    target: &Path,
    caps: VolumeCapability,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(caps),
        readonly,
        ..Default::default()
    }
}

pub fn unpublish_request(id: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    }
}

pub fn unstage_request(id: &str, staging: &Path) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
    }
}

pub fn delete_request(id: &str) -> DeleteVolumeRequest {
    DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    }
}

pub fn stats_request(id: &str, path: &Path) -> NodeGetVolumeStatsRequest {
    NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    }
}

pub fn controller_expand_request(id: &str, required: i64) -> ControllerExpandVolumeRequest {
    ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        volume_capability: Some(mount()),
        ..Default::default()
    }
}

/// Fails unless `result` is an error with `code` whose message mentions `needle`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(needle),
        "{:?} does not mention {needle:?}",
        status.message()
    );
}
