//! The Identity service: who berth is, what it can do, and whether it is ready.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::proto::identity_server::Identity;
use super::proto::plugin_capability::{self, Service, VolumeExpansion, service, volume_expansion};
use super::proto::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use super::{CsiService, reply};

fn service_capability(kind: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::Service(Service {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl Identity for CsiService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: HashMap::from([("commit".to_string(), env!("BERTH_GIT_COMMIT").to_string())]),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![
                service_capability(service::Type::ControllerService),
                service_capability(service::Type::VolumeAccessibilityConstraints),
                // The engine grows loopfs filesystems while they are mounted.
                PluginCapability {
                    r#type: Some(plugin_capability::Type::VolumeExpansion(VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    })),
                },
            ],
        }))
    }

    /// Ready when the store answers and the mount table can be read; otherwise
    /// `FAILED_PRECONDITION` with what is wrong.
    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        match self.engine(|e| e.probe()).await {
            Ok(Ok(())) => Ok(Response::new(ProbeResponse { ready: Some(true) })),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "CSI probe: not ready");
                Err(Status::failed_precondition(format!(
                    "berth is not ready: {e}"
                )))
            }
            Err(failure) => reply("Probe", Err(failure)),
        }
    }
}
