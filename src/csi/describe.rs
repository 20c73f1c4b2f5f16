//! Engine volumes and listings in CSI's terms: a volume's description and condition, byte
//! counts as CSI carries them, and the paging tokens of the list RPCs.

use tonic::Status;

use super::params::topology_of;
use super::proto::list_volumes_response::VolumeStatus;
use super::proto::volume_content_source::{self, SnapshotSource, VolumeSource};
use super::proto::{Topology, Volume, VolumeCondition, VolumeContentSource};
use crate::engine::types::{PublishTarget, Volume as EngineVolume, VolumeName};
use crate::engine::{NodeInfo, VolumeHealth};

/// ListVolumes tokens are `after/<last volume name of the previous page>`: a `/` never
/// appears in a name, and paging goes on correctly when that volume is deleted meanwhile.
pub(super) const TOKEN_PREFIX: &str = "after/";

/// A paged listing's `max_entries` (0: no limit) and `starting_token` (one berth gave:
/// `after/NAME`), as the page size and the name the page starts after.
pub(super) fn page_request(
    max_entries: i32,
    starting_token: &str,
) -> Result<(usize, Option<VolumeName>), Status> {
    let limit = usize::try_from(max_entries).map_err(|_| {
        Status::invalid_argument(format!(
            "max_entries: {max_entries} is negative; use 0 for no limit"
        ))
    })?;
    let limit = if limit == 0 { usize::MAX } else { limit };
    let after = match starting_token {
        "" => None,
        token => Some(
            token
                .strip_prefix(TOKEN_PREFIX)
                .and_then(|n| VolumeName::parse(n).ok())
                .ok_or_else(|| {
                    Status::aborted(format!(
                        "starting_token {token:?} is not a token berth gave; list again without one"
                    ))
                })?,
        ),
    };
    Ok((limit, after))
}

/// A byte count as CSI carries it.
pub(super) fn bytes(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An engine volume as CSI describes it: id, size (0 for an unlimited directory, which CSI
/// reads as unknown), the clone source and this node's topology.
pub(super) fn csi_volume(v: &EngineVolume, node: &NodeInfo) -> Volume {
    Describer::new(node).volume(v)
}

/// The engine's health of a volume as CSI's `VolumeCondition`.
pub(super) fn condition_of(health: VolumeHealth) -> VolumeCondition {
    match health {
        VolumeHealth::Abnormal(message) => VolumeCondition {
            abnormal: true,
            message,
        },
        VolumeHealth::Normal => VolumeCondition {
            abnormal: false,
            message: NORMAL.into(),
        },
    }
}

/// A normal condition's message.
const NORMAL: &str = "the volume's data is in place";

/// Describes the volumes of one reply. What every entry shares (this node's topology as
/// CSI carries it) is built once: a listing of 10,000 volumes otherwise rebuilt and hashed
/// the same segment map for each.
pub(super) struct Describer<'a> {
    node: &'a NodeInfo,
    topology: Vec<Topology>,
}

impl<'a> Describer<'a> {
    pub fn new(node: &'a NodeInfo) -> Self {
        Self {
            node,
            topology: vec![topology_of(&node.topology)],
        }
    }

    /// See [`csi_volume`].
    pub fn volume(&self, v: &EngineVolume) -> Volume {
        Volume {
            capacity_bytes: bytes(v.size.unwrap_or(0)),
            volume_id: v.name.as_str().to_owned(),
            volume_context: Default::default(),
            content_source: match (&v.spec.source, &v.spec.snapshot) {
                (Some(source), _) => Some(VolumeContentSource {
                    r#type: Some(volume_content_source::Type::Volume(VolumeSource {
                        volume_id: source.as_str().to_owned(),
                    })),
                }),
                (None, Some(snapshot)) => Some(VolumeContentSource {
                    r#type: Some(volume_content_source::Type::Snapshot(SnapshotSource {
                        snapshot_id: snapshot.as_str().to_owned(),
                    })),
                }),
                (None, None) => None,
            },
            accessible_topology: self.topology.clone(),
        }
    }

    /// A listed volume's status: the node it is staged or published on (this one, or
    /// none: berth volumes are node-local) and its condition.
    pub fn status(&self, v: &EngineVolume, health: VolumeHealth) -> VolumeStatus {
        let published = v
            .publications
            .iter()
            .any(|p| matches!(p.target, PublishTarget::Bind { .. }));
        VolumeStatus {
            published_node_ids: if published {
                vec![self.node.node_id.clone()]
            } else {
                Vec::new()
            },
            volume_condition: Some(condition_of(health)),
        }
    }
}
