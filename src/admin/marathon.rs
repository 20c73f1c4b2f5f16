//! Marathon-shaped routes, so operators' existing scripts keep working against berth:
//! `GET /v2/apps/{appId}/tasks` lists the tasks that own volumes on this node with their
//! `localVolumes`, and `DELETE /v2/apps/{appId}/tasks/{taskId}?wipe=true` releases (and with
//! `wipe=true` destroys) every volume that task owns, as Marathon's own
//! "kill and wipe" does for a resident task.
//!
//! App ids may contain slashes (`/prod/db` arrives as `/v2/apps/prod/db/tasks/T`), so the
//! path is read from its end. Ids match with or without their leading slash. Volumes owned
//! by an app but by no task are not listed here; `GET /v1/volumes?app=...` shows them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::views::DeleteView;
use super::{Admin, Query, delete_volume, percent_decode};
use crate::engine::types::{Volume, VolumeFilter, VolumeState};
use crate::server::http::Reply;
use crate::server::status::admin_status;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LocalVolume {
    container_path: Option<String>,
    persistence_id: Option<String>,
    /// berth's id of the volume (for `berth volume inspect`).
    volume_id: String,
    state: VolumeState,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Task {
    id: String,
    app_id: String,
    host: String,
    local_volumes: Vec<LocalVolume>,
}

#[derive(Debug, Serialize)]
struct TaskList {
    tasks: Vec<Task>,
}

#[derive(Debug, Serialize)]
struct Failure {
    id: String,
    message: String,
}

#[derive(Debug, Serialize)]
struct TaskDeleted {
    task: Task,
    wiped: bool,
    volumes: Vec<DeleteView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed: Vec<Failure>,
}

/// Marathon's error shape: `{"message": ...}`.
fn message(status: u16, kind: &str, text: &str) -> Reply {
    #[derive(Serialize)]
    struct Message<'a> {
        message: &'a str,
        kind: &'a str,
    }
    if status == 400 {
        tracing::debug!(error = text, "refused a malformed Marathon-style request");
    }
    Reply::json(
        status,
        &Message {
            message: text,
            kind,
        },
    )
}

fn normalize(app_id: &str) -> &str {
    app_id.trim_matches('/')
}

/// Handles everything under `/v2/apps/`; `rest` is the path after it, split at `/`.
pub(super) async fn route(
    admin: &Arc<Admin>,
    method: &hyper::Method,
    rest: &[&str],
    query: &Query,
) -> Reply {
    let decoded: Result<Vec<String>, String> = rest.iter().map(|s| percent_decode(s)).collect();
    let segments = match decoded {
        Ok(s) => s,
        Err(e) => return message(400, "invalid_input", &e),
    };
    match (method.as_str(), segments.as_slice()) {
        ("GET", [app @ .., last]) if last == "tasks" && !app.is_empty() => {
            if let Err(e) = query.only(&[]) {
                return message(400, "invalid_input", &e);
            }
            list_tasks(admin, app_id(app)).await
        }
        ("DELETE", [app @ .., tasks, task]) if tasks == "tasks" && !app.is_empty() => {
            let wipe = match marathon_delete_params(query) {
                Ok(w) => w,
                Err(e) => return message(400, "invalid_input", &e),
            };
            delete_task(admin, app_id(app), task.clone(), wipe).await
        }
        ("GET" | "DELETE", _) => message(
            404,
            "not_found",
            "berth serves GET /v2/apps/{appId}/tasks and DELETE /v2/apps/{appId}/tasks/{taskId}",
        ),
        _ => message(405, "method_not_allowed", "this route takes GET or DELETE")
            .with_header("allow", "GET, DELETE"),
    }
}

fn app_id(segments: &[String]) -> String {
    format!("/{}", normalize(&segments.join("/")))
}

/// Marathon's kill-task parameters: `wipe`, plus `force` (accepted; berth never waits for a
/// deployment) and `scale` (only `false`: berth cannot scale an app).
fn marathon_delete_params(query: &Query) -> Result<bool, String> {
    query.only(&["wipe", "force", "scale"])?;
    query.flag("force")?;
    if query.flag("scale")? {
        return Err("scale=true: berth only releases volumes; scale the app in Marathon".into());
    }
    query.flag("wipe")
}

fn task_of(app: &str, id: String, node: &str, volumes: &[&Volume]) -> Task {
    Task {
        id,
        app_id: app.to_string(),
        host: node.to_string(),
        local_volumes: volumes
            .iter()
            .map(|v| LocalVolume {
                container_path: v.owner.container_path.clone(),
                persistence_id: v.owner.persistence_id.clone(),
                volume_id: v.name.to_string(),
                state: v.state(),
            })
            .collect(),
    }
}

/// Volumes of `app` (normalized), grouped by task id.
fn by_task(volumes: &[Arc<Volume>], app: &str) -> BTreeMap<String, Vec<Arc<Volume>>> {
    let mut tasks: BTreeMap<String, Vec<Arc<Volume>>> = BTreeMap::new();
    for v in volumes {
        let owned = v
            .owner
            .app_id
            .as_deref()
            .is_some_and(|a| normalize(a) == normalize(app));
        if let (true, Some(task)) = (owned, &v.owner.task_id) {
            tasks.entry(task.clone()).or_default().push(v.clone());
        }
    }
    tasks
}

async fn list_tasks(admin: &Arc<Admin>, app: String) -> Reply {
    let listed = admin
        .blocking(move |engine| {
            let node = engine.node().node_id.clone();
            let volumes = engine.list(&VolumeFilter::default());
            let tasks = by_task(&volumes, &app)
                .into_iter()
                .map(|(task, vs)| {
                    let refs: Vec<&Volume> = vs.iter().map(|v| &**v).collect();
                    task_of(&app, task, &node, &refs)
                })
                .collect();
            TaskList { tasks }
        })
        .await;
    match listed {
        Ok(list) => Reply::json(200, &list),
        Err(reply) => reply,
    }
}

async fn delete_task(admin: &Arc<Admin>, app: String, task: String, wipe: bool) -> Reply {
    let done = admin
        .blocking(move |engine| {
            let node = engine.node().node_id.clone();
            let volumes = engine.list(&VolumeFilter::default());
            let Some(owned) = by_task(&volumes, &app).remove(&task) else {
                return message(
                    404,
                    "not_found",
                    &format!("app {app} has no task {task} with volumes on node {node}"),
                );
            };
            let attached: Vec<String> = owned
                .iter()
                .filter(|v| v.state() == VolumeState::Attached)
                .map(|v| v.name.to_string())
                .collect();
            if !attached.is_empty() {
                return message(
                    409,
                    "in_use",
                    &format!(
                        "task {task} of app {app} still has attached volumes ({}); stop the task first, nothing was changed",
                        attached.join(", ")
                    ),
                );
            }
            let refs: Vec<&Volume> = owned.iter().map(|v| &**v).collect();
            let described = task_of(&app, task, &node, &refs);
            let mut deleted = Vec::new();
            let mut failed = Vec::new();
            let mut status = 200;
            for v in &owned {
                match delete_volume(engine, &v.name, wipe) {
                    Ok(view) => deleted.push(view),
                    Err(e) => {
                        if status == 200 {
                            status = admin_status(&e);
                        }
                        failed.push(Failure {
                            id: v.name.to_string(),
                            message: e.to_string(),
                        });
                    }
                }
            }
            Reply::json(
                status,
                &TaskDeleted {
                    task: described,
                    wiped: wipe,
                    volumes: deleted,
                    failed,
                },
            )
        })
        .await;
    match done {
        Ok(reply) | Err(reply) => reply,
    }
}
