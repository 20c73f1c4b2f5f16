//! The Kubernetes CSI front-end: the Identity, Controller and Node gRPC services (CSI
//! v1.12.0) on a unix socket, over the one volume engine.
//!
//! berth's volumes live on the node whose berth made them, so every berth serves all three
//! services for its own node: the external-provisioner sidecar runs beside each berth
//! (`--node-deployment`), a StorageClass uses `volumeBindingMode: WaitForFirstConsumer`, and
//! each volume carries this node's topology. The CSI volume id is the engine's volume name
//! (the `name` of CreateVolume), so every RPC maps straight onto one engine call.
//!
//! What each RPC does, in engine terms:
//! - CreateVolume → `create` (size from `capacity_range`, the rest from `parameters`);
//!   DeleteVolume → `delete`; ControllerExpandVolume and NodeExpandVolume → `expand`.
//! - NodeStageVolume → `publish` at the staging path (for block volumes: a device node
//!   named after the volume inside it); NodePublishVolume → `publish` at the target path;
//!   the Unstage/Unpublish RPCs → `unpublish`. `volume_mount_group` → `grant_group`.
//! - An inline ephemeral volume is created by its NodePublishVolume and wiped by its
//!   NodeUnpublishVolume.
//!
//! Each accepted connection goes through [`authority::AuthorityRewriting`], so that clients
//! sending the socket's path as `:authority` (grpc-core, kubelets before 1.26) are answered.
//!
//! The engine is blocking, so each call runs on tokio's blocking pool. It logs every
//! operation; this module logs only requests it refuses before reaching the engine.
//! Operations are never queued behind each other: a second operation on a busy volume is
//! answered `ABORTED`, as CSI asks.

mod authority;
mod controller;
mod describe;
mod identity;
mod node;
mod params;
pub mod proto;
mod snapshots;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::config::Config;
use crate::engine::types::{Caller, Frontend, VolumeName};
use crate::engine::{EngineError, VolumeService};
use crate::server::{BoundSocket, ServeError, Servers};

use authority::AuthorityRewriting;
use proto::controller_server::ControllerServer;
use proto::identity_server::IdentityServer;
use proto::node_server::NodeServer;

/// The environment variable through which a CSI supervisor names the endpoint; it wins over
/// `listen.csi` in the config.
pub const ENDPOINT_ENV: &str = "CSI_ENDPOINT";

/// Every engine call made for CSI: refused at once when the volume is busy (`ABORTED`).
const CALLER: Caller = Caller {
    frontend: Frontend::Csi,
    wait_if_busy: false,
};

/// The three services, sharing one engine.
#[derive(Clone)]
pub struct CsiService {
    engine: Arc<dyn VolumeService>,
    driver_name: String,
}

impl CsiService {
    pub fn new(engine: Arc<dyn VolumeService>, driver_name: impl Into<String>) -> Self {
        Self {
            engine,
            driver_name: driver_name.into(),
        }
    }

    /// Runs a blocking engine call on the blocking pool.
    async fn engine<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn VolumeService) -> T + Send + 'static,
    ) -> Result<T, Failure> {
        crate::server::call_engine(&self.engine, call)
            .await
            .map_err(|e| Failure::Refused(Status::internal(format!("the engine call failed: {e}"))))
    }
}

/// Why an RPC failed. Every refusal is counted once in the metrics: the engine counts the
/// operations it runs, [`CsiService::answer`] the rest.
#[derive(Debug)]
enum Failure {
    /// The engine refused an operation (it has logged and counted that).
    Engine(EngineError),
    /// The engine refused a lookup (`get`, `usage`, a snapshot), which it does not count.
    Lookup(EngineError),
    /// This front-end refused the request before calling the engine.
    Refused(Status),
    /// An engine refusal (counted there) in CSI's words.
    Rephrased(Status),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Self::Refused(s)
    }
}

/// Adds the volume's name to a refusal from the parsing helpers.
fn about(volume: &str, status: Status) -> Failure {
    Failure::Refused(Status::new(
        status.code(),
        format!("volume {volume}: {}", status.message()),
    ))
}

/// A required string field, present.
fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Failure> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")).into())
    } else {
        Ok(value)
    }
}

/// The volume an existing-volume RPC names. An id that cannot be a berth volume name names
/// no volume, so it is `NOT_FOUND` (with the reason), like any unknown id.
fn volume_id(raw: &str, field: &str) -> Result<VolumeName, Failure> {
    let raw = required(raw, field)?;
    VolumeName::parse(raw).map_err(|e| {
        Status::not_found(format!("{field} {raw:?} names no berth volume: {e}")).into()
    })
}

/// A path field: present and absolute.
fn path_field(raw: &str, field: &str, volume: &VolumeName) -> Result<PathBuf, Failure> {
    let raw = required(raw, field)?;
    let path = PathBuf::from(raw);
    if !path.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "volume {volume}: {field} {raw:?} must be an absolute path"
        ))
        .into());
    }
    Ok(path)
}

/// The one mapping of engine errors to gRPC statuses. The message is the engine's, which
/// names the volume and what to do.
fn status_of(e: &EngineError) -> Status {
    let code = match e {
        EngineError::Input(_) => Code::InvalidArgument,
        EngineError::NotFound { .. } | EngineError::SnapshotNotFound { .. } => Code::NotFound,
        EngineError::AlreadyExists { .. } | EngineError::SnapshotExists { .. } => {
            Code::AlreadyExists
        }
        EngineError::Busy { .. } => Code::Aborted,
        EngineError::InUse { .. } => Code::FailedPrecondition,
        // A publish before its stage.
        EngineError::NotPublishedAt { .. } => Code::FailedPrecondition,
        // A create or delete of this volume is still pending: retry once it is done.
        EngineError::WrongPhase { .. } => Code::Aborted,
        EngineError::NoCapacity { .. } => Code::ResourceExhausted,
        EngineError::Unsupported { .. } => Code::InvalidArgument,
        // The node's pool is misconfigured for what it was asked; an operator must act.
        EngineError::PoolUnusable { .. } => Code::FailedPrecondition,
        // CSI: published but incompatible with the request.
        EngineError::TargetConflict { .. } => Code::AlreadyExists,
        EngineError::TooManyVolumes { .. } => Code::ResourceExhausted,
        // Another front-end's volume does not exist as far as Kubernetes is concerned.
        EngineError::HeldByOther { .. } => Code::NotFound,
        EngineError::Host { .. } => Code::Internal,
        EngineError::Store { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The metrics' `op` of an RPC: the engine operation it is.
fn operation(rpc: &str) -> &'static str {
    match rpc {
        "CreateVolume" => "create",
        "DeleteVolume" => "delete",
        "ControllerExpandVolume" | "NodeExpandVolume" => "expand",
        "NodeStageVolume" | "NodePublishVolume" => "publish",
        "NodeUnstageVolume" | "NodeUnpublishVolume" => "unpublish",
        "CreateSnapshot" => "snapshot",
        "DeleteSnapshot" => "delete_snapshot",
        "GetSnapshot" | "ListSnapshots" => "get_snapshot",
        "ValidateVolumeCapabilities" => "get",
        "ListVolumes" => "list",
        "GetCapacity" => "capacity",
        "NodeGetVolumeStats" => "usage",
        _ => "other",
    }
}

/// The metrics' error `kind` of a refusal made here, in the engine's vocabulary where one
/// fits.
fn refusal_kind(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid_input",
        Code::OutOfRange => "out_of_range",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::FailedPrecondition => "failed_precondition",
        Code::ResourceExhausted => "no_capacity",
        Code::Aborted => "busy",
        Code::Unimplemented => "unsupported",
        _ => "internal",
    }
}

impl CsiService {
    /// Runs one RPC and answers it, counting a refusal the engine did not count.
    async fn answer<T>(
        &self,
        rpc: &'static str,
        work: impl Future<Output = Result<T, Failure>>,
    ) -> Result<tonic::Response<T>, Status> {
        let started = std::time::Instant::now();
        let outcome = work.await;
        let kind = match &outcome {
            Err(Failure::Refused(status)) => Some(refusal_kind(status.code())),
            Err(Failure::Lookup(e)) => Some(e.kind()),
            Ok(_) | Err(Failure::Engine(_) | Failure::Rephrased(_)) => None,
        };
        if let Some(kind) = kind {
            self.engine
                .record_refused(Frontend::Csi, operation(rpc), started.elapsed(), kind);
        }
        reply(rpc, outcome)
    }
}

/// Turns an RPC's outcome into tonic's, logging refusals made here once.
fn reply<T>(rpc: &'static str, outcome: Result<T, Failure>) -> Result<tonic::Response<T>, Status> {
    match outcome {
        Ok(value) => Ok(tonic::Response::new(value)),
        Err(Failure::Engine(e) | Failure::Lookup(e)) => Err(status_of(&e)),
        Err(Failure::Rephrased(status)) => Err(status),
        Err(Failure::Refused(status)) => {
            if status.code() == Code::Internal {
                tracing::warn!(rpc, code = ?status.code(), message = status.message(), "CSI request failed");
            } else {
                tracing::debug!(rpc, code = ?status.code(), message = status.message(), "CSI request refused");
            }
            Err(status)
        }
    }
}

/// The endpoint to serve: `CSI_ENDPOINT` when set, else `listen.csi`; empty means off.
pub fn endpoint(config: &Config) -> String {
    std::env::var(ENDPOINT_ENV)
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| config.listen.csi.clone())
}

/// Starts the CSI server on its socket, if configured.
pub fn start(
    config: &Config,
    engine: &Arc<dyn VolumeService>,
    mode: u32,
    stop: &watch::Receiver<bool>,
    servers: &mut Servers,
) -> Result<(), ServeError> {
    let endpoint = endpoint(config);
    if endpoint.is_empty() {
        return Ok(());
    }
    let bound = crate::server::bind_socket(&endpoint, mode)?;
    tracing::info!(socket = %crate::server::socket_path(&endpoint).display(), driver = %config.csi.driver_name, "CSI listening");
    let service = CsiService::new(Arc::clone(engine), config.csi.driver_name.clone());
    servers.spawn(serve(
        bound,
        service,
        crate::server::shutdown_future(stop.clone()),
    ));
    Ok(())
}

/// Serves the three services on `bound` until `shutdown` resolves, then finishes the
/// requests in flight. The socket is removed when this returns.
pub async fn serve(
    bound: BoundSocket,
    service: CsiService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let path = bound
        .listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from))
        .unwrap_or_default();
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(service.clone()))
        .add_service(ControllerServer::new(service.clone()))
        .add_service(NodeServer::new(service))
        .serve_with_incoming_shutdown(Incoming::new(&bound.listener), shutdown)
        .await
        .map_err(|e| ServeError::Io {
            what: "serving CSI on",
            path,
            source: std::io::Error::other(e),
        })
}

/// Connects a client to berth's CSI socket (`/run/berth/csi.sock` or `unix:///...`), for
/// the generated clients in [`proto`] (`proto::node_client::NodeClient::new(channel)`).
pub async fn connect(endpoint: &str) -> Result<Channel, tonic::transport::Error> {
    let path = crate::server::socket_path(endpoint);
    // The URI is required by the API but unused: every connection goes to the socket.
    Endpoint::from_static("http://berth.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

/// The socket's connections as a stream (each with its `:authority` made acceptable to the
/// server), borrowing the listener so the bound socket (and
/// its lock) stays owned by the serving task. A failed accept (out of file descriptors,
/// say) is logged and retried after a pause rather than spun on.
struct Incoming<'a> {
    listener: &'a UnixListener,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<'a> Incoming<'a> {
    fn new(listener: &'a UnixListener) -> Self {
        Self {
            listener,
            backoff: None,
        }
    }
}

/// How long to wait after a failed accept.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

impl tokio_stream::Stream for Incoming<'_> {
    type Item = std::io::Result<AuthorityRewriting<UnixStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pause) = self.backoff.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, _))) => {
                    return Poll::Ready(Some(Ok(AuthorityRewriting::new(stream))));
                }
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "accepting a CSI connection failed; retrying");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
