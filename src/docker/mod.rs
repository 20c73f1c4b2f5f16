//! The Docker volume plugin front-end: HTTP/1.1 + JSON on a unix socket in
//! `/run/docker/plugins/`, the legacy (v1) plugin protocol that `dockerd` and `dvdcli` speak.
//!
//! Docker names a plugin after its socket file: `berth.sock` is the driver `berth`.
//! Endpoints: `/Plugin.Activate`, `/VolumeDriver.{Create,Remove,Mount,Unmount,Path,Get,
//! List,Capabilities}`; every answer is JSON with an `Err` field that is empty on success.
//!
//! Mapping onto the engine:
//! - `Create` parses `Opts` (see [`options`]) into a spec; the engine makes it idempotent
//!   (same options: the same volume; other options: an error).
//! - `Mount` publishes a [`PublishTarget::Reference`] held by `docker:<ID>`, so mounts are
//!   counted per caller and survive a restart of berth (they live in the reservation store;
//!   dockerd never re-sends `Mount` after a plugin restart). A `Mount` without an `ID` (as
//!   `dvdcli` sends) holds the one anonymous reference `docker`: anonymous mounts are not
//!   counted separately, the first `Unmount` without an `ID` releases them all.
//!   Nothing is mounted: dockerd bind-mounts the answered `Mountpoint` (the volume's data
//!   directory; for a sized volume it lies in the volume's own filesystem) into the container.
//! - `Remove` deletes (refused while any reference or other publication exists).
//!   `Remove` and `Unmount` of a volume that no longer exists succeed: the caller's goal
//!   is already met, and dockerd could otherwise never forget a volume removed elsewhere.
//!
//! - `Get` reports usage measured within a short budget (see [`usage`]): dockerd calls it
//!   two or three times per container start.
//!
//! Time: dockerd waits two minutes for `Create` and `Mount` and one for the rest. berth
//! answers a little before that (see `Deadlines`) with an error saying the call is still
//! running. A `Mount` whose answer never reached dockerd (that deadline, or the connection
//! closed) has its reference released when it completes, since dockerd will never send the
//! matching `Unmount`.
//!
//! Errors: engine errors go through [`engine_error_reply`] (one exhaustive match); every
//! error is `{"Err": "..."}` with a non-200 status, which dockerd reports as
//! `VolumeDriver.<Method>: <message>`. Bodies are limited to [`MAX_BODY`] bytes; the shared
//! [`crate::server::http`] server keeps slow clients from stalling others.
//!
//! Request types follow Docker's protocol, which we do not control, so unknown fields are
//! ignored (a newer dockerd may add some) and lower-case field names are accepted (Go's JSON
//! decoder, which other plugins use, is case-insensitive).

mod options;
#[cfg(test)]
mod tests;
mod usage;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;
use crate::engine::types::{
    AccessType, Caller, CreateRequest, Frontend, Owner, PublishTarget, Volume, VolumeFilter,
    VolumeName, format_size,
};
use crate::engine::{EngineError, VolumeService};
use crate::server::http::{self, HttpLimits, Reply};
use crate::server::{ServeError, Servers, bind_socket, shutdown_future, socket_path};

/// The content type of the plugin protocol.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// The largest request body accepted; Docker's requests are a name and a few options.
pub const MAX_BODY: usize = 64 << 10;
/// The reference held by `Mount` calls without an `ID`.
pub const ANONYMOUS_HOLDER: &str = crate::engine::types::DOCKER_HOLDER;
/// The longest caller `ID` accepted (dockerd sends 64 hex digits).
const MAX_ID_LEN: usize = 256;

const CALLER: Caller = Caller {
    frontend: Frontend::Docker,
    // dockerd sends overlapping requests for one volume (two containers starting).
    wait_if_busy: true,
};

/// Starts the plugin server on `listen.docker`, unless that is `""`.
pub fn start(
    config: &Config,
    engine: &Arc<dyn VolumeService>,
    mode: u32,
    stop: &watch::Receiver<bool>,
    servers: &mut Servers,
) -> Result<(), ServeError> {
    if config.listen.docker.is_empty() {
        return Ok(());
    }
    let socket = bind_socket(&config.listen.docker, mode)?;
    let plugin = Plugin::new(
        Arc::clone(engine),
        &driver_name(&socket_path(&config.listen.docker)),
    );
    let stop = shutdown_future(stop.clone());
    servers.spawn(async move {
        let listener = &socket.listener;
        http::serve(
            || async move { listener.accept().await.map(|(stream, _)| stream) },
            move |request| plugin.clone().handle(request),
            limits(),
            error_reply,
            stop,
        )
        .await;
        // Dropping the socket removes it: a dockerd scanning the plugin directory (every
        // `docker volume ls`) would otherwise wait 15 s on it.
        drop(socket);
        Ok(())
    });
    Ok(())
}

/// The driver name Docker derives from the socket: the file name without `.sock`.
pub fn driver_name(socket: &Path) -> String {
    let file = socket
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.strip_suffix(".sock").unwrap_or(&file).to_string()
}

fn limits() -> HttpLimits {
    HttpLimits {
        max_body: MAX_BODY,
        // Above the plugin's own deadlines (see `Deadlines`), which answer first.
        request_timeout: Duration::from_secs(115),
        ..HttpLimits::default()
    }
}

/// The plugin's state: the engine, the driver name it is known by (for messages) and the
/// usage figures `Get` shows.
#[derive(Clone)]
pub struct Plugin {
    engine: Arc<dyn VolumeService>,
    driver: Arc<str>,
    usage: usage::UsageMeter,
    deadlines: Deadlines,
}

/// How long a call may take before berth answers that it is still running: a little less
/// than dockerd waits (two minutes for Create and Mount, one for the rest), so dockerd shows
/// berth's message rather than a bare timeout.
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    create_and_mount: Duration,
    other: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            create_and_mount: Duration::from_secs(110),
            other: Duration::from_secs(50),
        }
    }
}

impl Deadlines {
    fn of(&self, call: &Call) -> Duration {
        match call {
            Call::Create(_) | Call::Mount(..) => self.create_and_mount,
            Call::Activate
            | Call::Capabilities
            | Call::Remove(_)
            | Call::Unmount(..)
            | Call::Path(_)
            | Call::Get(_)
            | Call::List => self.other,
        }
    }
}

/// A finished call: the reply, and the mount reference it took (if it took a new one).
struct Done {
    reply: Reply,
    taken: Option<(VolumeName, PublishTarget)>,
}

/// An engine call in flight. If it is dropped before its answer was handed back (the
/// deadline passed, or the client went away) and the call turns out to have taken a mount
/// reference, the reference is released again: dockerd treats that Mount as failed and will
/// never send the Unmount that would release it.
struct InFlight {
    task: Option<tokio::task::JoinHandle<Result<Done, Failure>>>,
    engine: Arc<dyn VolumeService>,
}

impl InFlight {
    /// The call's outcome, or `None` if it did not finish within `deadline`.
    async fn wait(
        &mut self,
        deadline: Duration,
    ) -> Option<Result<Result<Done, Failure>, tokio::task::JoinError>> {
        let task = self.task.as_mut()?;
        let joined = tokio::time::timeout(deadline, task).await.ok()?;
        self.task = None;
        Some(joined)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = Arc::clone(&self.engine);
        runtime.spawn(async move {
            let Ok(Ok(Done {
                taken: Some((name, holder)),
                ..
            })) = task.await
            else {
                return;
            };
            tracing::warn!(volume = %name, holder = %holder, "releasing a mount whose answer never reached the caller");
            let released = crate::server::call_engine(&engine, move |e| {
                e.unpublish(CALLER, &name, &holder)
            })
            .await;
            if let Ok(Err(e)) = released {
                tracing::warn!(error = %e, "releasing an undelivered mount failed");
            }
        });
    }
}

/// The endpoints of the plugin protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Activate,
    Create,
    Remove,
    Mount,
    Unmount,
    Path,
    Get,
    List,
    Capabilities,
}

impl Endpoint {
    /// The engine operation this call is, for the metrics' `op` label.
    fn operation(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Remove => "delete",
            Self::Mount => "publish",
            Self::Unmount => "unpublish",
            Self::Path | Self::Get => "get",
            Self::List => "list",
            Self::Activate | Self::Capabilities => "handshake",
        }
    }

    const ALL: [Endpoint; 9] = [
        Self::Activate,
        Self::Create,
        Self::Remove,
        Self::Mount,
        Self::Unmount,
        Self::Path,
        Self::Get,
        Self::List,
        Self::Capabilities,
    ];

    fn path(self) -> &'static str {
        match self {
            Self::Activate => "/Plugin.Activate",
            Self::Create => "/VolumeDriver.Create",
            Self::Remove => "/VolumeDriver.Remove",
            Self::Mount => "/VolumeDriver.Mount",
            Self::Unmount => "/VolumeDriver.Unmount",
            Self::Path => "/VolumeDriver.Path",
            Self::Get => "/VolumeDriver.Get",
            Self::List => "/VolumeDriver.List",
            Self::Capabilities => "/VolumeDriver.Capabilities",
        }
    }

    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// What a well-formed body looks like, for error messages.
    fn example(self) -> &'static str {
        match self {
            Self::Create => r#"{"Name":"v","Opts":{"size":"1GiB"}}"#,
            Self::Mount | Self::Unmount => r#"{"Name":"v","ID":"<caller id>"}"#,
            Self::Remove | Self::Path | Self::Get => r#"{"Name":"v"}"#,
            Self::Activate | Self::List | Self::Capabilities => "{}",
        }
    }
}

// ----- wire types ------------------------------------------------------------------------

#[derive(Deserialize)]
struct NameBody {
    #[serde(rename = "Name", alias = "name")]
    name: String,
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "Name", alias = "name")]
    name: String,
    #[serde(rename = "Opts", alias = "opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct MountBody {
    #[serde(rename = "Name", alias = "name")]
    name: String,
    #[serde(rename = "ID", alias = "id", alias = "Id", default)]
    id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrReply {
    err: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ActivateReply {
    implements: [&'static str; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CapabilitiesReply {
    capabilities: Capabilities,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Capabilities {
    scope: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MountpointReply {
    mountpoint: String,
    err: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GetReply {
    volume: VolumeInfo,
    err: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListReply {
    volumes: Vec<VolumeInfo>,
    err: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct VolumeInfo {
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

// ----- requests --------------------------------------------------------------------------

/// A parsed request.
pub enum Call {
    Activate,
    Capabilities,
    Create(Box<CreateRequest>),
    Remove(VolumeName),
    Mount(VolumeName, PublishTarget),
    Unmount(VolumeName, PublishTarget),
    Path(VolumeName),
    Get(VolumeName),
    List,
}

impl Call {
    /// What the call does, for messages.
    fn describe(&self) -> String {
        match self {
            Self::Activate => "Plugin.Activate".into(),
            Self::Capabilities => "VolumeDriver.Capabilities".into(),
            Self::Create(r) => format!("creating volume {}", r.name),
            Self::Remove(n) => format!("removing volume {n}"),
            Self::Mount(n, _) => format!("mounting volume {n}"),
            Self::Unmount(n, _) => format!("unmounting volume {n}"),
            Self::Path(n) | Self::Get(n) => format!("looking up volume {n}"),
            Self::List => "listing volumes".into(),
        }
    }
}

/// Why a request failed before or in the engine.
pub enum Failure {
    /// The request itself is unusable (wrong method, endpoint or body).
    Protocol {
        status: u16,
        message: String,
    },
    Engine(EngineError),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure::Engine(e)
    }
}

impl Plugin {
    pub fn new(engine: Arc<dyn VolumeService>, driver: &str) -> Self {
        Self {
            engine,
            driver: Arc::from(driver),
            usage: usage::UsageMeter::default(),
            deadlines: Deadlines::default(),
        }
    }

    /// The same plugin with other deadlines (tests use short ones).
    #[cfg(test)]
    fn with_deadlines(mut self, create_and_mount: Duration, other: Duration) -> Self {
        self.deadlines = Deadlines {
            create_and_mount,
            other,
        };
        self
    }

    /// Answers one request.
    pub async fn handle(self, request: http::Request) -> Reply {
        let path = request.uri.path();
        let Some(endpoint) = Endpoint::from_path(path) else {
            tracing::debug!(path, "unknown plugin endpoint");
            return error_reply(
                404,
                &format!(
                    "berth does not serve {path}; it implements Plugin.Activate and VolumeDriver.* (the volume plugin protocol)"
                ),
            );
        };
        if request.method != hyper::Method::POST {
            tracing::debug!(path, method = %request.method, "plugin call with the wrong method");
            return error_reply(405, &format!("{path} takes POST, not {}", request.method));
        }
        let parse_started = std::time::Instant::now();
        let call = match parse_call(endpoint, &request.body) {
            Ok(call) => call,
            Err(failure) => {
                let kind = match &failure {
                    Failure::Protocol { .. } => "malformed_request",
                    Failure::Engine(e) => e.kind(),
                };
                self.engine.record_refused(
                    Frontend::Docker,
                    endpoint.operation(),
                    parse_started.elapsed(),
                    kind,
                );
                return self.failure_reply(failure);
            }
        };
        match call {
            Call::Activate => json_reply(&ActivateReply {
                implements: ["VolumeDriver"],
            }),
            Call::Capabilities => json_reply(&CapabilitiesReply {
                capabilities: Capabilities { scope: "local" },
            }),
            call => {
                let deadline = self.deadlines.of(&call);
                let what = call.describe();
                let late = if matches!(call, Call::Mount(..)) {
                    "if it completes late, berth releases the mount again"
                } else {
                    "it completes in the background"
                };
                let plugin = self.clone();
                let mut in_flight = InFlight {
                    task: Some(tokio::task::spawn_blocking(move || plugin.run(call))),
                    engine: Arc::clone(&self.engine),
                };
                match in_flight.wait(deadline).await {
                    Some(Ok(Ok(done))) => done.reply,
                    Some(Ok(Err(failure))) => self.failure_reply(failure),
                    Some(Err(e)) => {
                        error_reply(500, &format!("{what} failed inside berth: {e}; retry"))
                    }
                    // `in_flight` is dropped with the task still running: see `InFlight`.
                    None => error_reply(
                        503,
                        &format!(
                            "{what} is still running after {} s, and dockerd gives up soon; \
                             {late}; retry",
                            deadline.as_secs()
                        ),
                    ),
                }
            }
        }
    }

    /// Runs a call on the engine (blocking).
    fn run(&self, call: Call) -> Result<Done, Failure> {
        let engine = &*self.engine;
        let reply = match call {
            Call::Activate | Call::Capabilities => {
                return Err(Failure::Protocol {
                    status: 500,
                    message: "Plugin.Activate and VolumeDriver.Capabilities need no engine".into(),
                });
            }
            Call::Create(request) => {
                engine.create(CALLER, *request)?;
                ok_reply()
            }
            Call::Remove(name) => match engine.delete(CALLER, &name) {
                Ok(()) | Err(EngineError::NotFound { .. }) => ok_reply(),
                Err(e) => return Err(e.into()),
            },
            Call::Mount(name, holder) => {
                let volume = engine.get_as(CALLER, &name)?;
                if volume.spec.access == AccessType::Block {
                    return Err(EngineError::Unsupported {
                        volume: name.to_string(),
                        reason:
                            "it is a raw block volume; Docker can mount only filesystem volumes"
                                .into(),
                    }
                    .into());
                }
                let held_before = volume.publication(&holder).is_some();
                let volume = engine.publish(CALLER, &name, holder.clone())?;
                return Ok(Done {
                    reply: mountpoint_reply(&volume),
                    taken: (!held_before).then_some((name, holder)),
                });
            }
            Call::Unmount(name, holder) => match engine.unpublish(CALLER, &name, &holder) {
                Ok(_) | Err(EngineError::NotFound { .. }) => ok_reply(),
                Err(e) => return Err(e.into()),
            },
            Call::Path(name) => mountpoint_reply(&engine.get_as(CALLER, &name)?),
            Call::Get(name) => {
                let volume = engine.get_as(CALLER, &name)?;
                let (measured, measured_name) = (Arc::clone(&self.engine), name.clone());
                let reading = self.usage.read(&name, usage::BUDGET, move || {
                    measured.usage(&measured_name).map_err(|e| e.to_string())
                });
                json_reply(&GetReply {
                    volume: describe(&volume, Some(reading)),
                    err: String::new(),
                })
            }
            Call::List => {
                // Usage is left out: measuring it is a syscall (or a tree walk) per volume.
                let volumes = engine
                    .list_as(CALLER, &VolumeFilter::default())
                    .iter()
                    .map(|v| describe(v, None))
                    .collect();
                json_reply(&ListReply {
                    volumes,
                    err: String::new(),
                })
            }
        };
        Ok(Done { reply, taken: None })
    }

    fn failure_reply(&self, failure: Failure) -> Reply {
        match failure {
            Failure::Protocol { status, message } => error_reply(status, &message),
            Failure::Engine(e) => engine_error_reply(&e, &self.driver),
        }
    }
}

/// Parses a request body into a call; names and options are checked here, at the edge.
/// Public (with [`Endpoint`], [`Call`] and [`Failure`]) for the `docker_request` fuzz target.
pub fn parse_call(endpoint: Endpoint, body: &[u8]) -> Result<Call, Failure> {
    let malformed = |e: serde_json::Error| {
        let what = endpoint.path().trim_start_matches('/');
        tracing::debug!(endpoint = what, error = %e, "malformed plugin request");
        Failure::Protocol {
            status: 400,
            message: format!(
                "malformed {what} request: {e}; send JSON like {}",
                endpoint.example()
            ),
        }
    };
    let name = |raw: &str| VolumeName::parse(raw).map_err(|e| Failure::Engine(e.into()));
    Ok(match endpoint {
        Endpoint::Create => {
            let b: CreateBody = decode(body).map_err(malformed)?;
            let volume = name(&b.name)?;
            let spec = options::parse_options(&volume, &b.opts.unwrap_or_default())
                .map_err(|e| Failure::Engine(e.into()))?;
            Call::Create(Box::new(CreateRequest {
                name: volume,
                spec,
                owner: Owner::default(),
            }))
        }
        Endpoint::Mount | Endpoint::Unmount => {
            let b: MountBody = decode(body).map_err(malformed)?;
            let volume = name(&b.name)?;
            let holder = holder(&volume, b.id.as_deref())?;
            if endpoint == Endpoint::Mount {
                Call::Mount(volume, holder)
            } else {
                Call::Unmount(volume, holder)
            }
        }
        Endpoint::Remove | Endpoint::Path | Endpoint::Get => {
            let b: NameBody = decode(body).map_err(malformed)?;
            let volume = name(&b.name)?;
            match endpoint {
                Endpoint::Remove => Call::Remove(volume),
                Endpoint::Path => Call::Path(volume),
                _ => Call::Get(volume),
            }
        }
        // These take no arguments; dockerd sends `{}` or nothing, which is not checked.
        Endpoint::List => Call::List,
        Endpoint::Activate => Call::Activate,
        Endpoint::Capabilities => Call::Capabilities,
    })
}

/// Decodes a JSON object into `T`; an array with the right number of items is refused too.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    serde_json::from_value(serde_json::Value::Object(object))
}

/// The reference a `Mount`/`Unmount` holds: `docker:<ID>`, or the anonymous one.
fn holder(volume: &VolumeName, id: Option<&str>) -> Result<PublishTarget, Failure> {
    let holder = match id {
        None | Some("") => ANONYMOUS_HOLDER.to_string(),
        Some(id) if id.len() <= MAX_ID_LEN && id.chars().all(|c| c.is_ascii_graphic()) => {
            format!("{ANONYMOUS_HOLDER}:{id}")
        }
        Some(_) => {
            return Err(Failure::Engine(EngineError::Input(
                crate::engine::InputError::Invalid {
                    field: format!("ID for volume {volume}"),
                    reason: format!(
                        "a caller id is at most {MAX_ID_LEN} printable ASCII characters without spaces"
                    ),
                },
            )));
        }
    };
    Ok(PublishTarget::Reference { holder })
}

// ----- replies ---------------------------------------------------------------------------

fn json_reply(value: &impl Serialize) -> Reply {
    let mut reply = Reply::json(200, value);
    reply.content_type = CONTENT_TYPE;
    reply
}

fn ok_reply() -> Reply {
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

fn mountpoint_reply(volume: &Volume) -> Reply {
    json_reply(&MountpointReply {
        mountpoint: volume.placement.data.to_string_lossy().into_owned(),
        err: String::new(),
    })
}

/// A volume as Docker shows it; `usage` is measured for `Get` and left out of `List`.
fn describe(v: &Volume, usage: Option<usage::Reading>) -> VolumeInfo {
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
            labels: v.spec.labels.clone(),
            published_to: v
                .publications
                .iter()
                .map(|p| p.target.to_string())
                .collect(),
        },
    }
}

/// Maps every engine error to a status and a message that says what to do.
fn engine_error_reply(e: &EngineError, driver: &str) -> Reply {
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
