//! The Node service: stage, publish, stats and expansion on this node, and inline ephemeral
//! volumes.
//!
//! Staging binds the volume once per node at the staging path (a loopfs volume's own
//! filesystem is mounted by the engine when it is created); publishing binds it again at
//! each pod's target path, read-only if asked. A block volume is staged as a device node
//! named after the volume inside the staging directory, and published as a device node at
//! the target path.

use std::path::{Path, PathBuf};

use tonic::{Code, Request, Response, Status};

use super::controller::{grow, sizing_refused};
use super::describe::{bytes, condition_of};
use super::params::{
    Capability, EPHEMERAL_KEY, ParamSource, check_fits, parse_capability, parse_parameters,
    parse_range, read_only_block, topology_of,
};
use super::proto::node_server::Node;
use super::proto::node_service_capability::{self, Rpc, rpc};
use super::proto::volume_usage::Unit;
use super::proto::*;
use super::{CALLER, CsiService, Failure, about, path_field, required, volume_id};
use crate::engine::sizing::{self, SizeRange};
use crate::engine::types::{
    AccessType, CreateRequest, Owner, PublishTarget, Volume as EngineVolume, VolumeName,
};
use crate::engine::{EngineError, EphemeralRequest};

/// What the node does, and nothing more.
const CAPABILITIES: [rpc::Type; 5] = [
    rpc::Type::StageUnstageVolume,
    rpc::Type::GetVolumeStats,
    rpc::Type::ExpandVolume,
    rpc::Type::VolumeCondition,
    rpc::Type::VolumeMountGroup,
];

/// Where a volume staged at `staging` is bound: the staging directory itself for a
/// filesystem volume, a device node named after the volume inside it for a block volume.
fn staged_path(v: &EngineVolume, staging: &Path) -> PathBuf {
    match v.spec.access {
        AccessType::Filesystem => staging.to_path_buf(),
        AccessType::Block => staging.join(v.name.as_str()),
    }
}

fn bind(path: PathBuf, read_only: bool) -> PublishTarget {
    PublishTarget::Bind { path, read_only }
}

/// Whether the volume is staged or published at `path` (a block volume's staging
/// directory counts too).
fn available_at(v: &EngineVolume, path: &Path) -> bool {
    let here = |p: &Path| {
        v.publications.iter().any(|publication| {
            matches!(&publication.target, PublishTarget::Bind { path: q, .. } if q == p)
        })
    };
    here(path) || (v.spec.access == AccessType::Block && here(&path.join(v.name.as_str())))
}

fn is_ephemeral(v: &EngineVolume) -> bool {
    v.spec.labels.get(EPHEMERAL_KEY) == Some("true")
}

/// The capability of a stage or publish request: required, well-formed, and within what
/// berth volumes can do (`FAILED_PRECONDITION` otherwise, as CSI asks).
fn stage_capability(
    cap: Option<&VolumeCapability>,
    volume: &VolumeName,
) -> Result<Capability, Failure> {
    let cap = cap.ok_or_else(|| {
        about(
            volume.as_str(),
            Status::invalid_argument("volume_capability is required"),
        )
    })?;
    parse_capability(cap, "volume_capability")
        .map_err(|e| about(volume.as_str(), e.status(Code::FailedPrecondition)))
}

fn fits(cap: &Capability, v: &EngineVolume, code: Code) -> Result<(), Failure> {
    check_fits(cap, v, "volume_capability").map_err(|e| about(v.name.as_str(), e.status(code)))
}

impl CsiService {
    async fn stage(&self, req: NodeStageVolumeRequest) -> Result<NodeStageVolumeResponse, Failure> {
        let name = volume_id(&req.volume_id, "volume_id")?;
        let staging = path_field(&req.staging_target_path, "staging_target_path", &name)?;
        let cap = stage_capability(req.volume_capability.as_ref(), &name)?;
        self.engine(move |e| -> Result<(), Failure> {
            let v = e.get_as(CALLER, &name).map_err(Failure::Lookup)?;
            fits(&cap, &v, Code::FailedPrecondition)?;
            if let Some(gid) = cap.mount_group {
                e.grant_group(CALLER, &name, gid)?;
            }
            e.publish(
                CALLER,
                &name,
                bind(staged_path(&v, &staging), cap.read_only),
            )?;
            Ok(())
        })
        .await??;
        Ok(NodeStageVolumeResponse {})
    }

    async fn unstage(
        &self,
        req: NodeUnstageVolumeRequest,
    ) -> Result<NodeUnstageVolumeResponse, Failure> {
        let name = volume_id(&req.volume_id, "volume_id")?;
        let staging = path_field(&req.staging_target_path, "staging_target_path", &name)?;
        self.engine(move |e| -> Result<(), Failure> {
            let v = e.get_as(CALLER, &name).map_err(Failure::Lookup)?;
            e.unpublish(CALLER, &name, &bind(staged_path(&v, &staging), false))?;
            Ok(())
        })
        .await??;
        Ok(NodeUnstageVolumeResponse {})
    }

    async fn publish(
        &self,
        req: NodePublishVolumeRequest,
    ) -> Result<NodePublishVolumeResponse, Failure> {
        let name = volume_id(&req.volume_id, "volume_id")?;
        let target = path_field(&req.target_path, "target_path", &name)?;
        let cap = stage_capability(req.volume_capability.as_ref(), &name)?;
        let read_only = req.readonly || cap.read_only;
        if read_only && cap.access == AccessType::Block {
            return Err(about(
                name.as_str(),
                Status::failed_precondition(read_only_block("readonly")),
            ));
        }
        if req.volume_context.get(EPHEMERAL_KEY).map(String::as_str) == Some("true") {
            return self
                .publish_ephemeral(name, target, cap, read_only, &req.volume_context)
                .await;
        }
        if req.staging_target_path.is_empty() {
            return Err(about(
                name.as_str(),
                Status::failed_precondition(
                    "staging_target_path is not set: berth stages volumes (STAGE_UNSTAGE_VOLUME); call NodeStageVolume first",
                ),
            ));
        }
        let staging = path_field(&req.staging_target_path, "staging_target_path", &name)?;
        self.engine(move |e| -> Result<(), Failure> {
            let v = e.get_as(CALLER, &name).map_err(Failure::Lookup)?;
            fits(&cap, &v, Code::FailedPrecondition)?;
            let staged = staged_path(&v, &staging);
            if staged == target {
                return Err(about(
                    name.as_str(),
                    Status::invalid_argument(
                        "target_path is the staging path; publish to a path of its own",
                    ),
                ));
            }
            // The engine checks the stage under the volume lock it publishes under.
            match e.publish_on(CALLER, &name, &bind(staged, false), bind(target, read_only)) {
                Err(EngineError::NotPublishedAt { .. }) => {
                    return Err(about(
                        name.as_str(),
                        Status::failed_precondition(format!(
                            "it is not staged at {}; call NodeStageVolume first",
                            staging.display()
                        )),
                    ));
                }
                other => other?,
            };
            if let Some(gid) = cap.mount_group {
                e.grant_group(CALLER, &name, gid)?;
            }
            Ok(())
        })
        .await??;
        Ok(NodePublishVolumeResponse {})
    }

    /// An inline ephemeral volume: made from the pod's volume attributes (the same keys as
    /// StorageClass parameters, plus `size`) by its publish, wiped by its unpublish.
    async fn publish_ephemeral(
        &self,
        name: VolumeName,
        target: PathBuf,
        cap: Capability,
        read_only: bool,
        context: &std::collections::HashMap<String, String>,
    ) -> Result<NodePublishVolumeResponse, Failure> {
        let params = parse_parameters(context, ParamSource::EphemeralContext)
            .map_err(|s| about(name.as_str(), s))?;
        let mut spec = params.spec();
        spec.access = cap.access;
        spec.labels.insert(EPHEMERAL_KEY, "true");
        self.engine(move |e| -> Result<(), Failure> {
            if e.get(&name).is_ok_and(|v| !is_ephemeral(&v)) {
                return Err(about(
                    name.as_str(),
                    Status::already_exists(
                        "a persistent volume has this id; an inline ephemeral volume needs its own",
                    ),
                ));
            }
            let range = SizeRange {
                required: params.size().unwrap_or(0),
                limit: None,
            };
            spec.size = sizing::size_for_range(e, &spec, range, None)
                .map_err(|err| sizing_refused(name.as_str(), err))?;
            // The engine places it on any pool that could take it: each must make the
            // filesystem asked for.
            if let Some(fs) = &cap.fs_type {
                sizing::check_fs_type(e, &spec, fs).map_err(|err| {
                    about(name.as_str(), Status::failed_precondition(err.to_string()))
                })?;
            }
            // Made, published and, if that fails, removed again under one volume lock.
            e.publish_ephemeral(
                CALLER,
                EphemeralRequest {
                    create: CreateRequest {
                        name,
                        spec,
                        owner: Owner::default(),
                    },
                    target: bind(target, read_only),
                    group: cap.mount_group,
                },
            )?;
            Ok(())
        })
        .await??;
        Ok(NodePublishVolumeResponse {})
    }

    async fn unpublish(
        &self,
        req: NodeUnpublishVolumeRequest,
    ) -> Result<NodeUnpublishVolumeResponse, Failure> {
        let name = volume_id(&req.volume_id, "volume_id")?;
        let target = path_field(&req.target_path, "target_path", &name)?;
        self.engine(move |e| -> Result<(), Failure> {
            let v = e.unpublish(CALLER, &name, &bind(target, false))?;
            if is_ephemeral(&v) && v.publications.is_empty() {
                e.wipe(CALLER, &name)?;
            }
            Ok(())
        })
        .await??;
        Ok(NodeUnpublishVolumeResponse {})
    }

    async fn stats(
        &self,
        req: NodeGetVolumeStatsRequest,
    ) -> Result<NodeGetVolumeStatsResponse, Failure> {
        let name = volume_id(&req.volume_id, "volume_id")?;
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        self.engine(move |e| -> Result<NodeGetVolumeStatsResponse, Failure> {
            let v = e.get_as(CALLER, &name).map_err(Failure::Lookup)?;
            if !available_at(&v, &path) {
                return Err(about(
                    name.as_str(),
                    Status::not_found(format!(
                        "it is not staged or published at {}",
                        path.display()
                    )),
                ));
            }
            let condition = condition_of(e.health(&v));
            let usage = match e.usage(&name) {
                Ok(usage) => usage,
                // The data cannot be measured: its directory or filesystem is gone.
                Err(err @ EngineError::Host { .. }) => {
                    return Ok(NodeGetVolumeStatsResponse {
                        usage: Vec::new(),
                        volume_condition: Some(if condition.abnormal {
                            condition
                        } else {
                            VolumeCondition {
                                abnormal: true,
                                message: err.to_string(),
                            }
                        }),
                    });
                }
                Err(other) => return Err(Failure::Lookup(other)),
            };
            let mut entries = vec![VolumeUsage {
                available: bytes(usage.bytes_available),
                total: bytes(usage.bytes_total),
                used: bytes(usage.bytes_used),
                unit: Unit::Bytes as i32,
            }];
            if v.spec.access == AccessType::Filesystem && usage.inodes_total > 0 {
                entries.push(VolumeUsage {
                    available: bytes(usage.inodes_available),
                    total: bytes(usage.inodes_total),
                    used: bytes(usage.inodes_used),
                    unit: Unit::Inodes as i32,
                });
            }
            Ok(NodeGetVolumeStatsResponse {
                usage: entries,
                volume_condition: Some(condition),
            })
        })
        .await?
    }

    async fn node_expand(
        &self,
        req: NodeExpandVolumeRequest,
    ) -> Result<NodeExpandVolumeResponse, Failure> {
        let name = volume_id(&req.volume_id, "volume_id")?;
        let volume = name.to_string();
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        let range = parse_range(req.capacity_range.as_ref()).map_err(|s| about(&volume, s))?;
        let cap = req
            .volume_capability
            .as_ref()
            .map(|c| parse_capability(c, "volume_capability"))
            .transpose()
            .map_err(|e| about(&volume, e.status(Code::InvalidArgument)))?;
        let size = self
            .engine(move |e| -> Result<Option<u64>, Failure> {
                let v = e.get_as(CALLER, &name).map_err(Failure::Lookup)?;
                if !available_at(&v, &path) {
                    return Err(about(
                        name.as_str(),
                        Status::not_found(format!(
                            "it is not staged or published at {}",
                            path.display()
                        )),
                    ));
                }
                if let Some(cap) = &cap {
                    fits(cap, &v, Code::InvalidArgument)?;
                }
                grow(e, &v, range)
            })
            .await??;
        Ok(NodeExpandVolumeResponse {
            capacity_bytes: bytes(size.unwrap_or(0)),
        })
    }

    fn info(&self) -> NodeGetInfoResponse {
        let node = self.engine.node();
        NodeGetInfoResponse {
            node_id: node.node_id.clone(),
            max_volumes_per_node: node
                .max_volumes
                .map(|m| i64::try_from(m).unwrap_or(i64::MAX))
                .unwrap_or(0),
            accessible_topology: Some(topology_of(&node.topology)),
        }
    }
}

#[tonic::async_trait]
impl Node for CsiService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        self.answer("NodeStageVolume", self.stage(request.into_inner()))
            .await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        self.answer("NodeUnstageVolume", self.unstage(request.into_inner()))
            .await
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        self.answer("NodePublishVolume", self.publish(request.into_inner()))
            .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        self.answer("NodeUnpublishVolume", self.unpublish(request.into_inner()))
            .await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        self.answer("NodeGetVolumeStats", self.stats(request.into_inner()))
            .await
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        self.answer("NodeExpandVolume", self.node_expand(request.into_inner()))
            .await
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|&kind| NodeServiceCapability {
                    r#type: Some(node_service_capability::Type::Rpc(Rpc {
                        r#type: kind as i32,
                    })),
                })
                .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(self.info()))
    }
}
