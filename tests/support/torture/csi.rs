//! A blocking CSI client for test threads: the generated tonic clients on one connection to
//! berth's socket, driven through a shared tokio runtime, each call bounded in time. The
//! requests are the ones a kubelet and external-provisioner send for a filesystem volume.

use std::future::Future;
use std::path::Path;

use berth::csi::proto::controller_client::ControllerClient;
use berth::csi::proto::node_client::NodeClient;
use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use berth::csi::proto::*;
use tokio::runtime::Handle;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::berth::REQUEST_TIMEOUT;

#[derive(Clone)]
pub struct Csi {
    runtime: Handle,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
}

/// A single-node-writer filesystem capability, as a PVC's `ReadWriteOnce` asks.
pub fn mount_capability() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

/// Whether a CSI failure means the answer was lost on the way (the daemon died), rather
/// than a status berth sent. berth itself never answers with these codes.
pub fn is_transport(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

impl Csi {
    pub fn connect(runtime: &Handle, endpoint: &str) -> Result<Self, String> {
        let channel = runtime
            .block_on(async {
                tokio::time::timeout(REQUEST_TIMEOUT, berth::csi::connect(endpoint)).await
            })
            .map_err(|_| format!("connecting to {endpoint} took over {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| format!("connecting to {endpoint}: {e}"))?;
        Ok(Self {
            runtime: runtime.clone(),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        })
    }

    fn call<T, F>(&self, what: &str, request: F) -> Result<T, Status>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.runtime.block_on(async {
            match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
                Ok(result) => result.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "{what}: no answer from berth within {REQUEST_TIMEOUT:?}"
                ))),
            }
        })
    }

    /// CreateVolume; `size` is the required bytes, none for a plain directory.
    pub fn create(&self, name: &str, size: Option<u64>) -> Result<Volume, Status> {
        let request = CreateVolumeRequest {
            name: name.into(),
            capacity_range: size.map(|s| CapacityRange {
                required_bytes: s as i64,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_capability()],
            ..Default::default()
        };
        let mut c = self.controller.clone();
        self.call("CreateVolume", c.create_volume(request))?
            .volume
            .ok_or_else(|| Status::internal("CreateVolume answered without a volume"))
    }

    pub fn delete(&self, name: &str) -> Result<(), Status> {
        let request = DeleteVolumeRequest {
            volume_id: name.into(),
            ..Default::default()
        };
        let mut c = self.controller.clone();
        self.call("DeleteVolume", c.delete_volume(request))
            .map(drop)
    }

    /// ControllerExpandVolume to `size` bytes; returns the size berth reports.
    pub fn expand(&self, name: &str, size: u64) -> Result<i64, Status> {
        let request = ControllerExpandVolumeRequest {
            volume_id: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: size as i64,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_capability()),
            ..Default::default()
        };
        let mut c = self.controller.clone();
        self.call(
            "ControllerExpandVolume",
            c.controller_expand_volume(request),
        )
        .map(|r| r.capacity_bytes)
    }

    /// Every volume (id, capacity in bytes), following the pages.
    pub fn list(&self) -> Result<Vec<(String, i64)>, Status> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let request = ListVolumesRequest {
                max_entries: 16,
                starting_token: token.clone(),
            };
            let mut c = self.controller.clone();
            let page = self.call("ListVolumes", c.list_volumes(request))?;
            out.extend(
                page.entries
                    .into_iter()
                    .filter_map(|e| e.volume)
                    .map(|v| (v.volume_id, v.capacity_bytes)),
            );
            if page.next_token.is_empty() {
                return Ok(out);
            }
            token = page.next_token;
        }
    }

    pub fn stage(&self, name: &str, staging: &Path) -> Result<(), Status> {
        let request = NodeStageVolumeRequest {
            volume_id: name.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_capability()),
            ..Default::default()
        };
        let mut n = self.node.clone();
        self.call("NodeStageVolume", n.node_stage_volume(request))
            .map(drop)
    }

    pub fn publish(&self, name: &str, staging: &Path, target: &Path) -> Result<(), Status> {
        let request = NodePublishVolumeRequest {
            volume_id: name.into(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(mount_capability()),
            ..Default::default()
        };
        let mut n = self.node.clone();
        self.call("NodePublishVolume", n.node_publish_volume(request))
            .map(drop)
    }

    pub fn unpublish(&self, name: &str, target: &Path) -> Result<(), Status> {
        let request = NodeUnpublishVolumeRequest {
            volume_id: name.into(),
            target_path: target.display().to_string(),
        };
        let mut n = self.node.clone();
        self.call("NodeUnpublishVolume", n.node_unpublish_volume(request))
            .map(drop)
    }

    pub fn unstage(&self, name: &str, staging: &Path) -> Result<(), Status> {
        let request = NodeUnstageVolumeRequest {
            volume_id: name.into(),
            staging_target_path: staging.display().to_string(),
        };
        let mut n = self.node.clone();
        self.call("NodeUnstageVolume", n.node_unstage_volume(request))
            .map(drop)
    }
}

/// A status as one line for logs: `Code: message`.
pub fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
