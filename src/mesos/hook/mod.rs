//! The daemon side of the Mesos hook: `POST /v1/mesos/prepare` and `POST /v1/mesos/cleanup`
//! on the admin socket (the admin router hands every `/v1/mesos/...` request to [`handle`]).
//! The client is untrusted: the definition is validated again here, and every path it names
//! is checked before anything changes.
//!
//! # Prepare
//! For each persistent volume of the definition, in order: reuse this task's own reservation
//! (a relaunch: its data is there); else adopt a detached reservation of the same app and
//! container path (a scaled-up instance takes over a scaled-down one's volume, as Marathon
//! does; volumes of one old instance go together); else reserve a new volume named by its
//! persistence id `APP#CONTAINERPATH#UUID`. A reservation whose size, type or profile differs
//! from the definition is refused before anything changes: Marathon cannot change them after
//! deploy. Then the volume is mounted at `SANDBOX/NAME` and wherever else the definition
//! mounts it. Running prepare again changes nothing; after a failure, retry or clean up.
//!
//! # Where mounts go, and why that is safe
//! The daemon runs as root and the caller names paths, so the sandbox and every root
//! filesystem must resolve (links followed) strictly beneath `[mesos] work_dir`, and below
//! them no existing component may be a symbolic link: an image or a task could otherwise
//! point a mount at, say, the host's `/etc`. Missing parent directories are created. Both
//! the check and the making go through the host layer ([`VolumeService::dirs_beneath`]): a
//! walk from a descriptor on the root, one `openat(O_NOFOLLOW)` per component, so no path is
//! checked by name and then used; persistence ids' random part comes from the host too.
//! - Apps: an alias mount (the `/var/lib/mysql` workaround) at an absolute path goes inside the
//!   container's root filesystem, a relative one inside the sandbox. Without a root filesystem
//!   the container shares the host's (Mesos' command executor without an image), so an
//!   absolute path is a host path: refused unless the caller sets `allow_host_paths`.
//! - Pods: the volume appears once at `SANDBOX/NAME` (the executor's sandbox, as in Mesos),
//!   then for each container mount at `mountPath`: a relative one in that container's sandbox
//!   (`SANDBOX/tasks/TASK_ID.CONTAINER` unless given), an absolute one in its root filesystem
//!   (same rule as apps), read-only where the definition says so.
//!
//! # Cleanup
//! Unmounts, deepest first, every mount of the task's volumes beneath its sandbox and root
//! filesystems (anywhere, with `allow_host_paths`). Reservations and data stay: the volumes are
//! `detached` until a relaunch, a scale-up, or a wipe through the admin API.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{CLEANUP_PATH, ErrorReply, PREPARE_PATH};
use crate::config::MesosConfig;
use crate::engine::VolumeService;
use crate::engine::types::{Caller, Frontend};
use crate::server::http::{Reply, Request};

mod cleanup;
mod error;
mod ids;
mod paths;
mod prepare;

use cleanup::cleanup;
use error::HookError;
use prepare::prepare;

/// A Mesos task launch waits for a busy volume rather than failing.
const CALLER: Caller = Caller {
    frontend: Frontend::Mesos,
    wait_if_busy: true,
};

/// Answers `/v1/mesos/...`; `None` for every other path, which the caller routes elsewhere.
/// The caller has checked the bearer token.
pub async fn handle(
    engine: &Arc<dyn VolumeService>,
    config: &MesosConfig,
    req: &Request,
) -> Option<Reply> {
    let path = req.uri.path();
    if path != "/v1/mesos" && !path.starts_with("/v1/mesos/") {
        return None;
    }
    let post = req.method == hyper::Method::POST;
    let started = std::time::Instant::now();
    let (reply, refused) = match (path, post) {
        (PREPARE_PATH, true) => run(engine, config, &req.body, prepare).await,
        (CLEANUP_PATH, true) => run(engine, config, &req.body, cleanup).await,
        (PREPARE_PATH | CLEANUP_PATH, false) => (
            error_reply(
                405,
                "method_not_allowed",
                format!("{path} takes POST, not {}", req.method),
            ),
            Some("method_not_allowed"),
        ),
        _ => (
            error_reply(
                404,
                "not_found",
                format!("{path}: no such endpoint; use POST {PREPARE_PATH} or POST {CLEANUP_PATH}"),
            ),
            Some("not_found"),
        ),
    };
    if let Some(kind) = refused {
        // Prepare mounts a task's volumes, cleanup unmounts them.
        let op = if path == CLEANUP_PATH {
            "unpublish"
        } else {
            "publish"
        };
        engine.record_refused(Frontend::Mesos, op, started.elapsed(), kind);
    }
    Some(reply)
}

/// Parses the body, runs the blocking operation off the async threads, encodes the answer;
/// with it, the kind of a refusal the engine did not count.
async fn run<Q, A>(
    engine: &Arc<dyn VolumeService>,
    config: &MesosConfig,
    body: &[u8],
    operation: fn(&dyn VolumeService, &MesosConfig, Q) -> Result<A, HookError>,
) -> (Reply, Option<&'static str>)
where
    Q: DeserializeOwned + Send + 'static,
    A: Serialize + Send + 'static,
{
    let request: Q = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => {
            tracing::debug!(error = %e, "malformed Mesos hook request");
            let reply = error_reply(400, "invalid_input", format!("malformed request body: {e}"));
            return (reply, Some("malformed_request"));
        }
    };
    let config = config.clone();
    match crate::server::call_engine(engine, move |e| operation(e, &config, request)).await {
        Ok(Ok(answer)) => (Reply::json(200, &answer), None),
        Ok(Err(e)) => {
            let uncounted = e.uncounted_kind();
            (e.into_reply(), uncounted)
        }
        Err(e) => (
            error_reply(500, "internal", format!("the Mesos hook failed: {e}")),
            Some("internal"),
        ),
    }
}

fn error_reply(status: u16, kind: &str, error: String) -> Reply {
    Reply::json(
        status,
        &ErrorReply {
            error,
            kind: kind.to_string(),
            violations: Vec::new(),
        },
    )
}

#[cfg(test)]
mod tests;
