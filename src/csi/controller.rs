//! The Controller service: create, delete, validate, list, capacity and expansion. berth
//! volumes need no attach step, so ControllerPublish/Unpublish are not offered; ListVolumes
//! reports this node as a volume's published node while it is staged or published here, and
//! the engine's health of it as its condition. The snapshot RPCs live in `snapshots`;
//! everything advertised in [`CAPABILITIES`] is implemented.

use tonic::{Code, Request, Response, Status};

use super::describe::{Describer, TOKEN_PREFIX, bytes, csi_volume, page_request};
use super::params::{
    ParamSource, check_fits, check_requirements, node_in, parse_capability, parse_parameters,
    parse_range,
};
use super::proto::controller_server::Controller;
use super::proto::controller_service_capability::{self, Rpc, rpc};
use super::proto::list_volumes_response::Entry;
use super::proto::validate_volume_capabilities_response::Confirmed;
use super::proto::volume_content_source;
use super::proto::*;
use super::{CALLER, CsiService, Failure, about, required, volume_id};
use crate::engine::sizing::{self, SizeRange, SizeRequest, choose_size};
use crate::engine::types::{AccessType, CreateRequest, Owner, Volume as EngineVolume, VolumeName};
use crate::engine::{EngineError, InputError, PoolSelector, VolumeService};

/// The engine's refusal of a size range or filesystem type, in CSI's words: a limit below
/// what the volume needs is `OUT_OF_RANGE` and names `capacity_range.limit_bytes`.
pub(super) fn sizing_refused(volume: &str, e: InputError) -> Failure {
    Failure::Refused(sizing_status(volume, e))
}

fn sizing_status(volume: &str, e: InputError) -> Status {
    match e {
        InputError::OutOfRange { .. } => {
            Status::out_of_range(format!("volume {volume}: capacity_range.limit_bytes: {e}"))
        }
        other => Status::invalid_argument(format!("volume {volume}: {other}")),
    }
}

/// A listing reply of more volumes than this hands its memory back once sent (about 400
/// bytes of small allocations an entry).
const LARGE_REPLY: usize = 1000;

/// What the controller does, and nothing more.
const CAPABILITIES: [rpc::Type; 10] = [
    rpc::Type::CreateDeleteVolume,
    rpc::Type::ListVolumes,
    rpc::Type::ListVolumesPublishedNodes,
    rpc::Type::VolumeCondition,
    rpc::Type::GetCapacity,
    rpc::Type::CloneVolume,
    rpc::Type::ExpandVolume,
    rpc::Type::CreateDeleteSnapshot,
    rpc::Type::ListSnapshots,
    rpc::Type::GetSnapshot,
];

/// Grows a volume to what `range` asks (never shrinks it) and returns its size: shared by
/// ControllerExpandVolume and NodeExpandVolume. The engine grows a loopfs filesystem while
/// it is mounted, so nothing is left for the node to do.
pub(super) fn grow(
    engine: &dyn VolumeService,
    v: &EngineVolume,
    range: SizeRange,
) -> Result<Option<u64>, Failure> {
    if range.required == 0 || v.size.is_some_and(|current| current >= range.required) {
        return within_limit(v, range);
    }
    let want = choose_size(range, None, 0)
        .map_err(|e| sizing_refused(v.name.as_str(), e))?
        .unwrap_or(range.required);
    let grown = engine.expand(CALLER, &v.name, want)?;
    Ok(grown.size)
}

fn within_limit(v: &EngineVolume, range: SizeRange) -> Result<Option<u64>, Failure> {
    match (v.size, range.limit) {
        (Some(size), Some(limit)) if size > limit => Err(about(
            v.name.as_str(),
            Status::out_of_range(format!(
                "it is already {size} bytes, above capacity_range.limit_bytes {limit}; berth does not shrink volumes"
            )),
        )),
        (size, _) => Ok(size),
    }
}

impl CsiService {
    async fn create(&self, req: CreateVolumeRequest) -> Result<CreateVolumeResponse, Failure> {
        let raw = required(&req.name, "name")?;
        let name =
            VolumeName::parse(raw).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        let volume = name.to_string();
        if req.volume_capabilities.is_empty() {
            return Err(about(
                &volume,
                Status::invalid_argument("volume_capabilities is required: give at least one"),
            ));
        }
        let mut access = None;
        let mut fs_type: Option<String> = None;
        for (i, c) in req.volume_capabilities.iter().enumerate() {
            let cap = parse_capability(c, &format!("volume_capabilities[{i}]"))
                .map_err(|e| about(&volume, e.status(Code::InvalidArgument)))?;
            if access.is_some_and(|a| a != cap.access) {
                return Err(about(
                    &volume,
                    Status::invalid_argument(
                        "volume_capabilities mix block and mount access; a volume is one or the other",
                    ),
                ));
            }
            if let (Some(a), Some(b)) = (&fs_type, &cap.fs_type)
                && a != b
            {
                return Err(about(
                    &volume,
                    Status::invalid_argument(format!(
                        "volume_capabilities ask for fs_type {a:?} and {b:?}; a volume has one"
                    )),
                ));
            }
            access = Some(cap.access);
            fs_type = fs_type.or(cap.fs_type);
        }
        let params = parse_parameters(&req.parameters, ParamSource::Parameters)
            .map_err(|s| about(&volume, s))?;
        check_requirements(
            &self.engine.node().topology,
            req.accessibility_requirements.as_ref(),
        )
        .map_err(|s| about(&volume, s))?;
        let range = parse_range(req.capacity_range.as_ref()).map_err(|s| about(&volume, s))?;
        let (source, snapshot) = match req.volume_content_source.and_then(|s| s.r#type) {
            None => (None, None),
            Some(volume_content_source::Type::Snapshot(src)) => (
                None,
                Some(super::snapshots::snapshot_id(
                    &src.snapshot_id,
                    "volume_content_source.snapshot.snapshot_id",
                )?),
            ),
            Some(volume_content_source::Type::Volume(src)) => (
                Some(volume_id(
                    &src.volume_id,
                    "volume_content_source.volume.volume_id",
                )?),
                None,
            ),
        };
        let mut spec = params.spec();
        spec.access = access.unwrap_or(AccessType::Filesystem);
        let created = self
            .engine(move |e| -> Result<EngineVolume, Failure> {
                let source_size = match (source, snapshot) {
                    (Some(source), _) => {
                        let s = e.get_as(CALLER, &source).map_err(Failure::Lookup)?;
                        spec.source = Some(source);
                        s.size
                    }
                    (None, Some(snapshot)) => {
                        let s = e.get_snapshot(&snapshot).map_err(Failure::Lookup)?;
                        spec.snapshot = Some(snapshot);
                        spec.pool = spec.pool.or(Some(s.pool));
                        s.source_size
                    }
                    (None, None) => None,
                };
                let volume = name.to_string();
                let request = CreateRequest {
                    name,
                    spec,
                    owner: Owner::default(),
                };
                // A name another front-end holds: CSI's answer to a name taken by an
                // incompatible volume.
                let size = SizeRequest {
                    range,
                    at_least: source_size,
                    fs_type,
                };
                e.create_in_range(CALLER, request, &size)
                    .map_err(|err| match err {
                        EngineError::HeldByOther { .. } => Failure::Rephrased(
                            Status::already_exists(format!("volume {volume}: {err}")),
                        ),
                        EngineError::Input(out_of_range @ InputError::OutOfRange { .. }) => {
                            Failure::Rephrased(sizing_status(&volume, out_of_range))
                        }
                        other => other.into(),
                    })
            })
            .await??;
        Ok(CreateVolumeResponse {
            volume: Some(csi_volume(&created, self.engine.node())),
        })
    }

    async fn delete(&self, req: DeleteVolumeRequest) -> Result<DeleteVolumeResponse, Failure> {
        let raw = required(&req.volume_id, "volume_id")?;
        // An id that cannot be a volume name names no volume: it is deleted already.
        let Ok(name) = VolumeName::parse(raw) else {
            tracing::debug!(
                volume_id = raw,
                "DeleteVolume of an id that names no volume"
            );
            return Ok(DeleteVolumeResponse {});
        };
        self.engine(move |e| match e.get_as(CALLER, &name) {
            Err(_) => Ok(()),
            Ok(_) => match e.delete(CALLER, &name) {
                Ok(()) | Err(EngineError::NotFound { .. }) => Ok(()),
                // Another front-end's volume: as far as Kubernetes knows it does not exist,
                // and deleting a volume that does not exist succeeds (CSI's idempotent
                // DeleteVolume). Nothing is deleted.
                Err(held @ EngineError::HeldByOther { .. }) => {
                    tracing::warn!(error = %held, "DeleteVolume of another front-end's volume: nothing deleted");
                    Ok(())
                }
                Err(other) => Err(other),
            },
        })
        .await??;
        Ok(DeleteVolumeResponse {})
    }

    async fn validate(
        &self,
        req: ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse, Failure> {
        let name = volume_id(&req.volume_id, "volume_id")?;
        let volume = name.to_string();
        if req.volume_capabilities.is_empty() {
            return Err(about(
                &volume,
                Status::invalid_argument("volume_capabilities is required: give at least one"),
            ));
        }
        let params = parse_parameters(&req.parameters, ParamSource::Parameters)
            .map_err(|s| about(&volume, s))?;
        let v = self
            .engine(move |e| e.get_as(CALLER, &name))
            .await?
            .map_err(Failure::Lookup)?;
        let mut problems = Vec::new();
        for (i, c) in req.volume_capabilities.iter().enumerate() {
            let field = format!("volume_capabilities[{i}]");
            let checked = parse_capability(c, &field).and_then(|cap| check_fits(&cap, &v, &field));
            match checked {
                Ok(()) => {}
                Err(e @ super::params::CapabilityError::Invalid(_)) => {
                    return Err(about(&volume, e.status(Code::InvalidArgument)));
                }
                Err(super::params::CapabilityError::Unsupported(m)) => problems.push(m),
            }
        }
        let differs = |what: &str, asked: &str, has: &str| {
            format!("parameters.{what} is {asked:?}, volume {volume} has {has:?}")
        };
        if let Some(kind) = params.request.kind
            && kind != v.placement.kind
        {
            problems.push(differs("type", kind.as_str(), v.placement.kind.as_str()));
        }
        if let Some(pool) = &params.request.pool
            && pool != &v.placement.pool
        {
            problems.push(differs("pool", pool, &v.placement.pool));
        }
        if let Some(profile) = &params.request.profile
            && Some(profile) != v.spec.profile.as_ref()
        {
            problems.push(differs(
                "profile",
                profile,
                v.spec.profile.as_deref().unwrap_or(""),
            ));
        }
        if problems.is_empty() {
            Ok(ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            })
        } else {
            Ok(ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: problems.join("; "),
            })
        }
    }

    async fn list(&self, req: ListVolumesRequest) -> Result<ListVolumesResponse, Failure> {
        let (limit, after) = page_request(req.max_entries, &req.starting_token)?;
        let (mut page, mut health) = self
            .engine(move |e| {
                let page = e.list_after(CALLER, after.as_ref(), limit.saturating_add(1));
                let health = e.listed_health(&page);
                (page, health)
            })
            .await?;
        let next_token = if page.len() > limit {
            page.truncate(limit);
            health.truncate(limit);
            page.last()
                .map(|v| format!("{TOKEN_PREFIX}{}", v.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        if page.len() > LARGE_REPLY {
            crate::server::release_memory_after_reply();
        }
        let describe = Describer::new(self.engine.node());
        Ok(ListVolumesResponse {
            entries: page
                .iter()
                .zip(health)
                .map(|(v, health)| Entry {
                    volume: Some(describe.volume(v)),
                    status: Some(describe.status(v, health)),
                })
                .collect(),
            next_token,
        })
    }

    async fn capacity(&self, req: GetCapacityRequest) -> Result<GetCapacityResponse, Failure> {
        let params = parse_parameters(&req.parameters, ParamSource::Parameters)?;
        let mut access = AccessType::Filesystem;
        for (i, c) in req.volume_capabilities.iter().enumerate() {
            match parse_capability(c, &format!("volume_capabilities[{i}]")) {
                Ok(cap) => access = cap.access,
                Err(e @ super::params::CapabilityError::Invalid(_)) => {
                    return Err(e.status(Code::InvalidArgument).into());
                }
                // No volume can be made with it, so there is no room for one.
                Err(super::params::CapabilityError::Unsupported(_)) => {
                    return Ok(GetCapacityResponse::default());
                }
            }
        }
        if let Some(topology) = &req.accessible_topology
            && !node_in(&self.engine.node().topology, topology)
        {
            return Ok(GetCapacityResponse::default());
        }
        let mut spec = params.spec();
        spec.access = access;
        let selector = PoolSelector {
            pool: params.request.pool,
            kind: params.request.kind,
            profile: params.request.profile,
            selector: params.request.selector,
        };
        self.engine(move |e| {
            let pools = e.capacity(&selector);
            let available: u64 = pools.iter().map(|p| p.available_bytes).sum();
            // A volume lies on one pool path: the largest room is exact only for pools of
            // one path, so it is given only when every matching pool has one.
            let single_path = pools.iter().all(|c| {
                e.pools()
                    .iter()
                    .any(|p| p.name == c.pool && p.paths.len() == 1)
            });
            let largest = pools.iter().map(|p| p.available_bytes).max();
            let minimum = sizing::minimum_size(&pools, e.pools(), &spec);
            GetCapacityResponse {
                available_capacity: bytes(available),
                maximum_volume_size: largest.filter(|_| single_path).map(bytes),
                minimum_volume_size: (minimum > 0).then_some(bytes(minimum)),
            }
        })
        .await
    }

    async fn expand(
        &self,
        req: ControllerExpandVolumeRequest,
    ) -> Result<ControllerExpandVolumeResponse, Failure> {
        let name = volume_id(&req.volume_id, "volume_id")?;
        let volume = name.to_string();
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(about(
                &volume,
                Status::invalid_argument("capacity_range is required"),
            ));
        };
        let range = parse_range(Some(range)).map_err(|s| about(&volume, s))?;
        let cap = req
            .volume_capability
            .as_ref()
            .map(|c| parse_capability(c, "volume_capability"))
            .transpose()
            .map_err(|e| about(&volume, e.status(Code::InvalidArgument)))?;
        let size = self
            .engine(move |e| -> Result<Option<Option<u64>>, Failure> {
                // Another front-end's volume here is refused (its owner's error), not left
                // to a node that does not hold it.
                let v = match e.get_as(CALLER, &name) {
                    Ok(v) => v,
                    Err(EngineError::NotFound { .. }) => return Ok(None),
                    Err(other) => return Err(Failure::Lookup(other)),
                };
                if let Some(cap) = &cap {
                    check_fits(cap, &v, "volume_capability")
                        .map_err(|e| about(v.name.as_str(), e.status(Code::InvalidArgument)))?;
                }
                grow(e, &v, range).map(Some)
            })
            .await??;
        Ok(match size {
            Some(size) => ControllerExpandVolumeResponse {
                capacity_bytes: bytes(size.unwrap_or(0)),
                node_expansion_required: false,
            },
            // Another node's berth holds the volume (the one resizer of the cluster asks the
            // berth beside it): that node's NodeExpandVolume grows it, checking its pool.
            None => {
                tracing::debug!(volume, "expansion left to the node holding the volume");
                ControllerExpandVolumeResponse {
                    capacity_bytes: bytes(range.required),
                    node_expansion_required: true,
                }
            }
        })
    }
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "berth does not offer {what} (see ControllerGetCapabilities)"
    )))
}

#[tonic::async_trait]
impl Controller for CsiService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        self.answer("CreateVolume", self.create(request.into_inner()))
            .await
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        self.answer("DeleteVolume", self.delete(request.into_inner()))
            .await
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        unimplemented("ControllerPublishVolume: volumes need no attach step")
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        unimplemented("ControllerUnpublishVolume: volumes need no attach step")
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        self.answer(
            "ValidateVolumeCapabilities",
            self.validate(request.into_inner()),
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        self.answer("ListVolumes", self.list(request.into_inner()))
            .await
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        self.answer("GetCapacity", self.capacity(request.into_inner()))
            .await
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|&kind| ControllerServiceCapability {
                    r#type: Some(controller_service_capability::Type::Rpc(Rpc {
                        r#type: kind as i32,
                    })),
                })
                .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        self.answer(
            "CreateSnapshot",
            self.create_snapshot_rpc(request.into_inner()),
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        self.answer(
            "DeleteSnapshot",
            self.delete_snapshot_rpc(request.into_inner()),
        )
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        self.answer(
            "ListSnapshots",
            self.list_snapshots_rpc(request.into_inner()),
        )
        .await
    }

    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        self.answer("GetSnapshot", self.get_snapshot_rpc(request.into_inner()))
            .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        self.answer("ControllerExpandVolume", self.expand(request.into_inner()))
            .await
    }

    async fn controller_get_volume(
        &self,
        _request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        unimplemented("ControllerGetVolume")
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        unimplemented("ControllerModifyVolume")
    }
}
