//! The admin API: what operators and their scripts use to see and reclaim volumes.
//!
//! HTTP/1.1 on a unix socket (default `/run/berth/admin.sock`) and, when
//! `listen.admin_tcp` is set, on TCP too; `listen.metrics_tcp` is a separate TCP listener
//! with only `/metrics` and `/healthz`, for Prometheus. Routes:
//! - `GET /v1/volumes` (filters `state`, `pool`, `app`, `task`, `label=KEY=VALUE`) and
//!   `GET /v1/volumes/{id}`: size, usage, kind, pool, owner, state, publications, times.
//! - `DELETE /v1/volumes/{id}[?wipe=true]`: release the reservation; the data is destroyed
//!   or kept under the pool's retained directory as its reclaim policy says, or always
//!   destroyed with `wipe=true`. Refused while attached.
//! - `POST /v1/volumes/{id}/handover?to=csi|docker|mesos[&storage_class=..][&pv_name=..]`:
//!   give a detached volume to another front-end, data untouched ([`handover`]); for `csi`
//!   the answer carries the static PersistentVolume that binds it in Kubernetes.
//! - `GET /v2/apps/{appId}/tasks` and `DELETE /v2/apps/{appId}/tasks/{taskId}[?wipe=true]`:
//!   the same, Marathon-shaped, for the volumes a task owns (`appId` may contain slashes).
//! - `POST /v1/mesos/prepare` and `POST /v1/mesos/cleanup`: the Mesos hook, answered by
//!   [`crate::mesos::hook`] (`berth mesos prepare|cleanup` call them).
//! - `GET /v1/volumes/{id}/export`, `POST /v1/volumes/{id}/import`: a volume or snapshot
//!   as a streamed tar archive, and a new volume from one ([`transfer`]).
//! - `GET /healthz` (no token needed, so a Marathon health check or a Kubernetes liveness
//!   probe can call it; it says only "ok" or "unhealthy" to a caller without the token) and
//!   `GET /metrics` (Prometheus text).
//!
//! # Authentication
//! One rule: with `admin.token` (or `admin.token_file`, read at start) every request but
//! `/healthz` must carry `Authorization: Bearer <token>`, on the unix socket and on TCP
//! alike; the comparison takes the same time wherever the first difference is. `berth
//! volume` and `berth mesos` find the token the daemon uses by themselves, from the daemon's
//! config file or `BERTH_ADMIN_TOKEN` ([`token_source`]). Without a token only the unix socket is
//! served (config validation refuses TCP), and it is created mode 0600 whatever
//! `listen.socket_mode` says: then the socket's mode is the only guard. The token and the
//! `Authorization` header are never logged.
//!
//! The API is a thin edge: it parses ids and filters into engine types, calls the engine
//! (in `spawn_blocking`) and maps [`EngineError`] in one place, the admin socket's
//! [`crate::server::status::admin_status`].

pub mod cli;
mod cli_transfer;
pub mod doctor;
pub mod handover;
mod listen;
mod marathon;
pub mod prometheus;
mod query;
mod replies;
pub mod snapshots;
mod token;
pub mod token_source;
mod transfer;
pub mod views;

pub use listen::start;
pub use token::{Token, configured_token, constant_time_eq};

pub use query::Query;
use query::{parse_query, percent_decode, volume_filter};
use replies::{
    bad_request, check_method, engine_error, error_reply, method_not_allowed, server_error,
};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::types::{
    Caller, Frontend, ReclaimPolicy, VolumeFilter, VolumeName, VolumeState,
};
use crate::engine::{EngineError, PoolSelector, VolumeService};
use crate::server::http::{HttpLimits, Reply, Request};
use crate::server::usage;
use views::{DataOutcome, DeleteView, RemovedView, VolumeList, VolumeView};

/// Operators' calls may wait for a busy volume rather than be told to retry.
const ADMIN: Caller = Caller {
    frontend: Frontend::Admin,
    wait_if_busy: true,
};

/// The limits of the admin API's HTTP server. A wipe of a large volume runs inside its
/// request, so requests may take long.
pub const LIMITS: HttpLimits = HttpLimits {
    max_body: 64 << 10,
    header_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(3600),
    max_connections: 64,
};

/// The shared state of both listeners.
pub struct Admin {
    engine: Arc<dyn VolumeService>,
    token: Option<Token>,
    /// Usage measurements for `/metrics`.
    usage: usage::UsageMeter,
    refusals: Refusals,
    /// For the Mesos hook, which answers `/v1/mesos/...` ([`crate::mesos::hook`]).
    mesos: crate::config::MesosConfig,
    /// The CSI driver name, for the PersistentVolume a handover to `csi` prints.
    csi_driver: String,
}

/// Logs refused (unauthenticated) requests at most once per [`Refusals::EVERY`], with how
/// many were refused since, so a client hammering the TCP port cannot flood the log.
#[derive(Default)]
struct Refusals {
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl Refusals {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&self, method: &hyper::Method, path: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            *suppressed += 1;
            return;
        }
        tracing::warn!(
            method = %method,
            path = %path,
            refused_since_last_report = *suppressed,
            "refused an admin request without a valid bearer token"
        );
        *last = Some(Instant::now());
        *suppressed = 0;
    }
}

impl Admin {
    pub fn new(engine: Arc<dyn VolumeService>, token: Option<Token>) -> Arc<Self> {
        Self::with_config(
            engine,
            token,
            crate::config::MesosConfig::default(),
            crate::config::DEFAULT_DRIVER_NAME,
        )
    }

    pub fn with_config(
        engine: Arc<dyn VolumeService>,
        token: Option<Token>,
        mesos: crate::config::MesosConfig,
        csi_driver: &str,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            token,
            usage: usage::UsageMeter::default(),
            refusals: Refusals::default(),
            mesos,
            csi_driver: csi_driver.to_string(),
        })
    }

    /// Answers one request on the metrics listener (`listen.metrics_tcp`): `/metrics` and
    /// `/healthz` without a token, and nothing else, so scraping never exposes the volume API.
    pub async fn handle_metrics_only(self: Arc<Self>, req: Request) -> Reply {
        match req.uri.path() {
            "/healthz" => match check_method(&req, "GET, HEAD") {
                Some(refused) => refused,
                None => self.healthz(false).await,
            },
            "/metrics" => {
                if let Some(refused) = check_method(&req, "GET") {
                    return refused;
                }
                match parse_query(req.uri.query()) {
                    Ok(query) => self.metrics(&query).await,
                    Err(e) => bad_request(&e),
                }
            }
            other => error_reply(
                404,
                "not_found",
                &format!(
                    "no route {other}: this listener serves only /metrics and /healthz; the volume API is on the admin socket"
                ),
            ),
        }
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, mut req: Request) -> Reply {
        let authorized = self
            .token
            .as_ref()
            .is_none_or(|t| t.admits(req.headers.get(hyper::header::AUTHORIZATION)));
        let path = req.uri.path().to_string();
        if path == "/healthz" {
            return match check_method(&req, "GET, HEAD") {
                Some(refused) => refused,
                None => self.healthz(authorized).await,
            };
        }
        if !authorized {
            self.refusals.note(&req.method, &path);
            return error_reply(
                401,
                "unauthorized",
                "this API needs the admin token: send `Authorization: Bearer <token>` (berth volume and berth mesos read it from the daemon's config, --config or BERTH_CONFIG or /etc/berth/config.toml, or take --token-file or BERTH_ADMIN_TOKEN)",
            )
            .with_header("www-authenticate", "Bearer realm=\"berth\"");
        }
        if let Some(reply) = crate::mesos::hook::handle(&self.engine, &self.mesos, &req).await {
            return reply;
        }
        if !req.body.is_empty() {
            return error_reply(400, "invalid_input", "admin requests take no body");
        }
        let query = match parse_query(req.uri.query()) {
            Ok(q) => q,
            Err(e) => return bad_request(&e),
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["metrics"] => match check_method(&req, "GET") {
                Some(refused) => refused,
                None => self.metrics(&query).await,
            },
            ["v1", "volumes"] => match check_method(&req, "GET") {
                Some(refused) => refused,
                None => self.list(&query).await,
            },
            ["v1", "volumes", id] => {
                let id = match percent_decode(id) {
                    Ok(id) => id,
                    Err(e) => return bad_request(&e),
                };
                match req.method.as_str() {
                    "GET" => self.get(&id, &query).await,
                    "DELETE" => self.delete(&id, &query).await,
                    _ => method_not_allowed("GET, DELETE"),
                }
            }
            ["v1", "volumes", id, "handover"] => match check_method(&req, "POST") {
                Some(refused) => refused,
                None => match percent_decode(id) {
                    Ok(id) => self.handover(&id, &query).await,
                    Err(e) => bad_request(&e),
                },
            },
            ["v1", "volumes", id, "export"] => {
                match (check_method(&req, "GET"), percent_decode(id)) {
                    (Some(refused), _) => refused,
                    (None, Ok(id)) => self.export(&id, &query).await,
                    (None, Err(e)) => bad_request(&e),
                }
            }
            ["v1", "volumes", id, "import"] => {
                match (check_method(&req, "POST"), percent_decode(id)) {
                    (Some(refused), _) => refused,
                    (None, Ok(id)) => self.import(&id, &query, req.upload.take()).await,
                    (None, Err(e)) => bad_request(&e),
                }
            }
            ["v1", "snapshots"] => match check_method(&req, "GET") {
                Some(refused) => refused,
                None => self.list_snapshots(&query).await,
            },
            ["v1", "snapshots", id] => match percent_decode(id) {
                Ok(id) => self.snapshot_route(req.method.as_str(), &id, &query).await,
                Err(e) => bad_request(&e),
            },
            ["v1", "volumes", volume, "snapshots", id] => match check_method(&req, "POST") {
                Some(refused) => refused,
                None => match (percent_decode(volume), percent_decode(id)) {
                    (Ok(v), Ok(id)) => self.take_snapshot(&v, &id, &query).await,
                    (Err(e), _) | (_, Err(e)) => bad_request(&e),
                },
            },
            ["v1", "snapshots", id, "restore", new_name] => match check_method(&req, "POST") {
                Some(refused) => refused,
                None => match (percent_decode(id), percent_decode(new_name)) {
                    (Ok(id), Ok(n)) => self.restore(&id, &n, &query).await,
                    (Err(e), _) | (_, Err(e)) => bad_request(&e),
                },
            },
            ["v2", "apps", rest @ ..] if !rest.is_empty() => {
                marathon::route(&self, &req.method, rest, &query).await
            }
            _ => error_reply(
                404,
                "not_found",
                &format!(
                    "no route {path}; the admin API serves /v1/volumes, /v2/apps/{{appId}}/tasks, /healthz and /metrics"
                ),
            ),
        }
    }

    /// Runs a blocking engine call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn VolumeService) -> T + Send + 'static,
    ) -> Result<T, Reply> {
        crate::server::call_engine(&self.engine, call)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "an admin request's engine call panicked");
                error_reply(
                    500,
                    "internal",
                    "the engine call failed unexpectedly; see the log",
                )
            })
    }

    async fn healthz(&self, authorized: bool) -> Reply {
        match self.blocking(|e| e.probe()).await {
            Ok(Ok(())) => Reply::text(200, "ok\n"),
            Ok(Err(e)) if authorized => Reply::text(503, format!("unhealthy: {e}\n")),
            Ok(Err(_)) | Err(_) => Reply::text(503, "unhealthy\n"),
        }
    }

    async fn list(&self, query: &Query) -> Reply {
        let filter = match volume_filter(query) {
            Ok(f) => f,
            Err(e) => return bad_request(&e),
        };
        let listed = self
            .blocking(move |engine| {
                let volumes = engine
                    .list(&filter)
                    .iter()
                    .map(|v| VolumeView::new(v, usage_of(engine, v)))
                    .collect();
                VolumeList {
                    node: engine.node().node_id.clone(),
                    volumes,
                }
            })
            .await;
        match listed {
            Ok(list) => Reply::json(200, &list),
            Err(reply) => reply,
        }
    }

    async fn get(&self, id: &str, query: &Query) -> Reply {
        if let Err(e) = query.only(&[]) {
            return bad_request(&e);
        }
        let name = match VolumeName::parse(id) {
            Ok(n) => n,
            Err(e) => return engine_error(&EngineError::Input(e)),
        };
        let found = self
            .blocking(move |engine| {
                engine
                    .get(&name)
                    .map(|v| VolumeView::new(&v, usage_of(engine, &v)))
            })
            .await;
        match found {
            Ok(Ok(view)) => Reply::json(200, &view),
            Ok(Err(e)) => engine_error(&e),
            Err(reply) => reply,
        }
    }

    async fn delete(&self, id: &str, query: &Query) -> Reply {
        let wipe = match query.only(&["wipe"]).and_then(|()| query.flag("wipe")) {
            Ok(w) => w,
            Err(e) => return bad_request(&e),
        };
        let name = match VolumeName::parse(id) {
            Ok(n) => n,
            Err(e) => return engine_error(&EngineError::Input(e)),
        };
        match self
            .blocking(move |engine| delete_volume(engine, &name, wipe))
            .await
        {
            Ok(Ok(view)) => Reply::json(200, &view),
            Ok(Err(e)) => engine_error(&e),
            Err(reply) => reply,
        }
    }

    async fn metrics(&self, query: &Query) -> Reply {
        if let Err(e) = query.only(&[]) {
            return bad_request(&e);
        }
        let used = match self.used_bytes().await {
            Ok(u) => u,
            Err(reply) => return reply,
        };
        let rendered = self
            .blocking(move |engine| {
                let operations = engine.metrics();
                let pools = engine.capacity(&PoolSelector::default());
                let volumes = engine.list(&VolumeFilter::default());
                let recovery = engine.recovery_report();
                prometheus::render(&prometheus::Scrape {
                    operations: &operations,
                    pools: &pools,
                    volumes: &volumes,
                    used_bytes: &used,
                    stray_mounts: recovery.stray_mounts.len(),
                    stray_loops: recovery.stray_loops.len(),
                })
            })
            .await;
        match rendered {
            Ok(text) => Reply::new(200, prometheus::CONTENT_TYPE, text),
            Err(reply) => reply,
        }
    }

    /// Bytes used per pool, each volume read through the shared usage meter
    /// ([`crate::server::usage`]): a volume's own filesystem is measured fresh, a plain
    /// directory's walk is reused for a while and never holds a scrape up for longer than
    /// the meter's budget, and concurrent scrapes share one walk per volume.
    async fn used_bytes(&self) -> Result<BTreeMap<String, u64>, Reply> {
        let meter = self.usage.clone();
        let engine = Arc::clone(&self.engine);
        self.blocking(move |_| {
            let mut used: BTreeMap<String, u64> = BTreeMap::new();
            for v in engine.list(&VolumeFilter::default()) {
                let measured = Arc::clone(&engine);
                let name = v.name.clone();
                let reading = meter.read(&v.name, usage::BUDGET, move || {
                    measured.usage(&name).map_err(|e| e.to_string())
                });
                if let usage::Reading::Measured { outcome: Ok(u), .. } = reading {
                    *used.entry(v.placement.pool.clone()).or_default() += u.bytes_used;
                }
            }
            used
        })
        .await
    }
}

/// A volume's usage for its view: measured for ready volumes, absent otherwise.
fn usage_of(
    engine: &dyn VolumeService,
    v: &crate::engine::types::Volume,
) -> Option<Result<crate::engine::types::Usage, String>> {
    match v.state() {
        VolumeState::Creating | VolumeState::Deleting => None,
        VolumeState::Reserved | VolumeState::Attached | VolumeState::Detached => {
            Some(engine.usage(&v.name).map_err(|e| e.to_string()))
        }
    }
}

/// Releases one volume: wiped, or as its reclaim policy says.
fn delete_volume(
    engine: &dyn VolumeService,
    name: &VolumeName,
    wipe: bool,
) -> Result<DeleteView, EngineError> {
    if wipe {
        let removed = engine.wipe(ADMIN, name)?;
        return Ok(DeleteView {
            id: name.to_string(),
            wiped: true,
            data: DataOutcome::Destroyed,
            removed: Some(RemovedView::from(removed)),
        });
    }
    // Read before the delete, which forgets it; a missing volume is the delete's to report.
    let reclaim = engine.get(name).map(|v| v.reclaim).unwrap_or_default();
    engine.delete(ADMIN, name)?;
    Ok(DeleteView {
        id: name.to_string(),
        wiped: false,
        data: match reclaim {
            ReclaimPolicy::Delete => DataOutcome::Destroyed,
            ReclaimPolicy::Retain => DataOutcome::Retained,
        },
        removed: None,
    })
}

#[cfg(test)]
mod tests;
