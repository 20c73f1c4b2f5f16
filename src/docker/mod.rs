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

mod inflight;
mod options;
mod replies;
mod request;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::engine::types::{AccessType, Caller, Frontend, VolumeFilter};
use crate::engine::{EngineError, VolumeService};
use crate::server::http::{self, HttpLimits, Reply};
use crate::server::{ServeError, Servers, bind_socket, shutdown_future, socket_path, usage};

use inflight::{Deadlines, Done, InFlight};
pub use replies::error_reply;
use replies::{
    ActivateReply, Capabilities, CapabilitiesReply, GetReply, ListReply, describe,
    engine_error_reply, json_reply, mountpoint_reply, ok_reply,
};
pub use request::{Call, Endpoint, Failure, parse_call};

/// The content type of the plugin protocol.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// The largest request body accepted; Docker's requests are a name and a few options.
pub const MAX_BODY: usize = 64 << 10;
/// The reference held by `Mount` calls without an `ID`.
pub const ANONYMOUS_HOLDER: &str = crate::engine::types::DOCKER_HOLDER;

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
