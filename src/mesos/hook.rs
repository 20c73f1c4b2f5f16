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

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{
    CLEANUP_PATH, CleanedVolume, CleanupReply, CleanupRequest, ErrorReply, MountPoint, Origin,
    PREPARE_PATH, PrepareReply, PrepareRequest, PreparedVolume, TaskLayout,
};
use super::validate::{self, Definition, PersistentVolumeSpec, Violation};
use crate::config::MesosConfig;
use crate::engine::types::{
    Caller, CreateRequest, Frontend, MAX_NAME_LEN, Owner, Ownership, PoolKind, PublishTarget,
    Volume, VolumeFilter, VolumeName, VolumeSpec, VolumeState, format_size,
};
use crate::engine::{EngineError, VolumeService};
use crate::host::HostError;
use crate::server::http::{Reply, Request};
use crate::server::status::admin_status;

/// A Mesos task launch waits for a busy volume rather than failing.
const CALLER: Caller = Caller {
    frontend: Frontend::Mesos,
    wait_if_busy: true,
};

/// The longest task or framework id accepted (Mesos ids are far shorter).
const MAX_ID_LEN: usize = 512;

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

/// Why a hook request was refused or failed.
#[derive(Debug)]
enum HookError {
    /// The request itself is wrong: an id, a path, a field that does not apply.
    BadRequest(String),
    /// The definition breaks Marathon's rules.
    Definition(Vec<Violation>),
    /// A path the hook will not mount at.
    Forbidden(String),
    /// The definition changes what Marathon cannot change after deploy.
    Changed(String),
    /// Looking up the task's user failed.
    Io(String),
    /// The engine refused an operation (it has counted that).
    Engine(EngineError),
    /// The engine refused a lookup, which it does not count.
    Lookup(EngineError),
}

impl From<EngineError> for HookError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl HookError {
    /// The error kind of a refusal the engine has not counted (made here, or a lookup).
    fn uncounted_kind(&self) -> Option<&'static str> {
        match self {
            Self::BadRequest(_) => Some("invalid_input"),
            Self::Definition(_) => Some("invalid_definition"),
            Self::Forbidden(_) => Some("forbidden"),
            Self::Changed(_) => Some("immutable_after_deploy"),
            Self::Io(_) => Some("host"),
            Self::Lookup(e) => Some(e.kind()),
            Self::Engine(_) => None,
        }
    }

    fn into_reply(self) -> Reply {
        match self {
            Self::BadRequest(message) => error_reply(400, "invalid_input", message),
            Self::Definition(violations) => Reply::json(
                422,
                &ErrorReply {
                    error: format!(
                        "the definition breaks {} of Marathon's rules for volumes",
                        violations.len()
                    ),
                    kind: "invalid_definition".into(),
                    violations,
                },
            ),
            Self::Forbidden(message) => error_reply(403, "forbidden", message),
            Self::Changed(message) => error_reply(409, "immutable_after_deploy", message),
            Self::Io(message) => error_reply(500, "host", message),
            Self::Engine(e) | Self::Lookup(e) => {
                error_reply(admin_status(&e), e.kind(), e.to_string())
            }
        }
    }
}

// ----- prepare ------------------------------------------------------------------------------

/// One place a volume is mounted for the task: `path`, which lies strictly beneath `root`, a
/// directory the hook trusts (the sandbox, a root filesystem, or `/` for host paths).
struct PlannedMount {
    /// The persistent volume's name in the definition.
    volume: String,
    root: PathBuf,
    path: PathBuf,
    read_only: bool,
}

fn prepare(
    engine: &dyn VolumeService,
    config: &MesosConfig,
    request: PrepareRequest,
) -> Result<PrepareReply, HookError> {
    let definition = validate::parse_definition(&request.definition.to_string())
        .map_err(HookError::Definition)?;
    check_id("task_id", &request.task_id)?;
    if let Some(framework) = &request.framework_id {
        check_id("framework_id", framework)?;
    }
    let mounts = plan_mounts(&config.work_dir, &request, &definition)?;
    for mount in &mounts {
        check_mount_path(engine, &mount.root, &mount.path)?;
    }
    let ownership = task_ownership(&request)?;
    // Marathon's ids are absolute; `mysql` in a definition is `/mysql`.
    let app_id = format!("/{}", definition.id().trim_start_matches('/'));
    let app_id = app_id.as_str();
    let existing = engine.list_as(
        CALLER,
        &VolumeFilter {
            app_id: Some(app_id.to_string()),
            ..VolumeFilter::default()
        },
    );
    // Everything is checked before the first volume is touched.
    let mut wanted = Vec::new();
    for pv in definition.persistent_volumes() {
        let spec = volume_spec(pv, ownership.clone());
        let reservations: Vec<Volume> = existing
            .iter()
            .filter(|v| {
                v.owner.framework_id == request.framework_id
                    && v.owner.container_path.as_deref() == Some(pv.name.as_str())
                    && v.owner.persistence_id.is_some()
                    && matches!(
                        v.state(),
                        VolumeState::Reserved | VolumeState::Attached | VolumeState::Detached
                    )
            })
            .cloned()
            .collect();
        for v in &reservations {
            check_unchanged(app_id, pv, &spec, v)?;
        }
        wanted.push((pv, spec, reservations));
    }

    let mut donor = None;
    let mut reserved = Vec::new();
    for (pv, spec, reservations) in wanted {
        let (volume, origin) =
            reserve(engine, &request, app_id, pv, spec, reservations, &mut donor)?;
        reserved.push((pv.name.clone(), volume, origin));
    }
    // Shallowest first, so a mount inside another volume's mount is made on top of it.
    let mut in_order: Vec<&PlannedMount> = mounts.iter().collect();
    in_order.sort_by_key(|m| m.path.components().count());
    for mount in in_order {
        // The validator ties every mount to a persistent volume of the definition.
        let Some((_, volume, _)) = reserved.iter().find(|(name, _, _)| *name == mount.volume)
        else {
            return Err(HookError::BadRequest(format!(
                "{} mounts {:?}, which is not a persistent volume of {app_id}",
                mount.path.display(),
                mount.volume
            )));
        };
        make_parents(engine, &mount.root, &mount.path)?;
        let target = PublishTarget::Bind {
            path: mount.path.clone(),
            read_only: mount.read_only,
        };
        engine.publish(CALLER, &volume.name, target)?;
    }
    let volumes = reserved
        .into_iter()
        .map(|(container_path, volume, origin)| PreparedVolume {
            volume: volume.name.to_string(),
            mounts: mounts
                .iter()
                .filter(|m| m.volume == container_path)
                .map(|m| MountPoint {
                    path: m.path.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            container_path,
            origin,
            size: volume.size,
        })
        .collect();
    Ok(PrepareReply {
        task_id: request.task_id,
        volumes,
    })
}

/// This task's own reservation, else a detached one of the app, else a new one.
fn reserve(
    engine: &dyn VolumeService,
    request: &PrepareRequest,
    app_id: &str,
    pv: &PersistentVolumeSpec,
    spec: VolumeSpec,
    reservations: Vec<Volume>,
    donor: &mut Option<Option<String>>,
) -> Result<(Volume, Origin), HookError> {
    let task = Some(request.task_id.clone());
    if let Some(own) = reservations
        .iter()
        .filter(|v| v.owner.task_id == task)
        .min_by_key(|v| (v.created_at, v.name.clone()))
    {
        return Ok((own.clone(), Origin::Relaunched));
    }
    // Prefer the old instance whose other volumes this task already took over.
    let mut detached: Vec<&Volume> = reservations
        .iter()
        .filter(|v| v.state() == VolumeState::Detached)
        .collect();
    detached.sort_by_key(|v| {
        let same_donor = donor.as_ref() == Some(&v.owner.task_id);
        (!same_donor, v.detached_at, v.name.clone())
    });
    for v in detached {
        let owner = Owner {
            task_id: task.clone(),
            ..v.owner.clone()
        };
        match engine.adopt(CALLER, &v.name, &v.owner, owner) {
            Ok(adopted) => {
                donor.get_or_insert_with(|| v.owner.task_id.clone());
                let from_task = v.owner.task_id.clone();
                return Ok((adopted, Origin::Adopted { from_task }));
            }
            // Another new instance took it first, or it went away: try the next one.
            Err(
                EngineError::Busy { .. }
                | EngineError::InUse { .. }
                | EngineError::NotFound { .. }
                | EngineError::WrongPhase { .. },
            ) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let uuid = uuid_v4(engine.random_id()?);
    let name = persistence_id(app_id, &pv.name, &uuid)?;
    let owner = Owner {
        framework_id: request.framework_id.clone(),
        app_id: Some(app_id.to_string()),
        task_id: task,
        persistence_id: Some(name.to_string()),
        container_path: Some(pv.name.clone()),
    };
    let volume = engine.create(CALLER, CreateRequest { name, spec, owner })?;
    Ok((volume, Origin::Created))
}

/// The engine spec of a persistent volume.
/// Who owns the task's new volumes: the uid/gid the request names, else the definition's
/// `user` (an app's or a pod's) as this node knows it, else root. An unknown user is refused
/// before anything is made.
fn task_ownership(request: &PrepareRequest) -> Result<Ownership, HookError> {
    let user = request.definition.get("user").and_then(|u| u.as_str());
    let account = match (request.owner_uid, user) {
        (None, Some(user)) => Some(
            crate::host::users::account(user)
                .map_err(|e| HookError::Io(e.to_string()))?
                .ok_or_else(|| {
                    HookError::BadRequest(format!(
                        "the definition runs as user {user:?}, who does not exist on this node"
                    ))
                })?,
        ),
        _ => None,
    };
    Ok(Ownership {
        uid: request.owner_uid.or(account.map(|a| a.uid)),
        gid: request.owner_gid.or(account.map(|a| a.gid)),
        mode: None,
    })
}

fn volume_spec(pv: &PersistentVolumeSpec, ownership: Ownership) -> VolumeSpec {
    // Ownership the definition's labels ask for wins over the task user's.
    let asked = &pv.spec.ownership;
    VolumeSpec {
        ownership: Ownership {
            uid: asked.uid.or(ownership.uid),
            gid: asked.gid.or(ownership.gid),
            mode: asked.mode.or(ownership.mode),
        },
        ..pv.spec.clone()
    }
}

/// Refuses a definition that changes an existing reservation's size, type or profile.
fn check_unchanged(
    app_id: &str,
    pv: &PersistentVolumeSpec,
    wanted: &VolumeSpec,
    v: &Volume,
) -> Result<(), HookError> {
    // Marathon speaks MiB.
    let size = |s: Option<u64>| match s {
        Some(bytes) if bytes % (1 << 20) == 0 => format!("{} MiB", bytes >> 20),
        Some(bytes) => format_size(bytes),
        None => "none".to_string(),
    };
    let kind = |k: Option<PoolKind>| k.map_or("none", PoolKind::as_str);
    let profile = |p: &Option<String>| p.clone().unwrap_or_else(|| "none".into());
    let mut changes = Vec::new();
    if v.spec.size != wanted.size {
        changes.push(format!(
            "persistent.size asks {} but it has {}",
            size(wanted.size),
            size(v.spec.size)
        ));
    }
    if v.spec.kind != wanted.kind {
        changes.push(format!(
            "persistent.type asks {} but it is {}",
            kind(wanted.kind),
            kind(v.spec.kind)
        ));
    }
    if v.spec.profile != wanted.profile {
        changes.push(format!(
            "persistent.profileName asks {} but it has {}",
            profile(&wanted.profile),
            profile(&v.spec.profile)
        ));
    }
    if changes.is_empty() {
        return Ok(());
    }
    Err(HookError::Changed(format!(
        "app {app_id}, persistent volume {:?}: Marathon cannot change a persistent volume's size, \
         type or profile after deploy; the reservation {} (task {}): {}. Deploy the volume as it \
         was, or wipe the reservation (DELETE /v1/volumes/{}?wipe=true) to start empty",
        pv.name,
        v.name,
        v.owner.task_id.as_deref().unwrap_or("none"),
        changes.join("; "),
        v.name.as_str().replace('#', "%23")
    )))
}

/// Where each volume is mounted for this task; see the module docs.
fn plan_mounts(
    work_dir: &Path,
    request: &PrepareRequest,
    definition: &Definition,
) -> Result<Vec<PlannedMount>, HookError> {
    let layout = &request.layout;
    let sandbox = beneath_work_dir(work_dir, &layout.sandbox, "sandbox", true)?;
    let mut mounts = Vec::new();
    for pv in definition.persistent_volumes() {
        mounts.push(PlannedMount {
            volume: pv.name.clone(),
            path: join_beneath(&sandbox, Path::new(&pv.name), "sandbox")?,
            root: sandbox.clone(),
            read_only: false,
        });
    }
    match definition {
        Definition::App(app) => {
            if !layout.container_rootfs.is_empty() || !layout.container_sandboxes.is_empty() {
                return Err(HookError::BadRequest(format!(
                    "app {}: container_rootfs and container_sandboxes are for pods; an app has one \
                     container, give its root filesystem as rootfs",
                    app.id
                )));
            }
            let rootfs = layout
                .rootfs
                .as_deref()
                .map(|r| beneath_work_dir(work_dir, r, "rootfs", true))
                .transpose()?;
            for alias in &app.alias_mounts {
                let root = if alias.container_path.is_absolute() {
                    container_root(
                        rootfs.as_ref(),
                        layout,
                        &alias.container_path,
                        "--rootfs DIR",
                    )?
                } else {
                    sandbox.clone()
                };
                mounts.push(PlannedMount {
                    volume: alias.volume.clone(),
                    path: join_beneath(&root, &alias.container_path, "containerPath")?,
                    root,
                    read_only: alias.read_only,
                });
            }
        }
        Definition::Pod(pod) => {
            if layout.rootfs.is_some() {
                return Err(HookError::BadRequest(format!(
                    "pod {}: rootfs is for apps; give each container's root filesystem in \
                     container_rootfs (NAME=DIR)",
                    pod.id
                )));
            }
            let containers: BTreeSet<&str> =
                pod.mounts.iter().map(|m| m.container.as_str()).collect();
            for name in layout
                .container_rootfs
                .keys()
                .chain(layout.container_sandboxes.keys())
            {
                if !containers.contains(name.as_str()) {
                    return Err(HookError::BadRequest(format!(
                        "pod {}: no container named {name:?} mounts a persistent volume; those \
                         that do: {}",
                        pod.id,
                        containers.iter().copied().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
            for mount in &pod.mounts {
                // `base` is what the mount path is relative to; `root`, the directory below
                // which the hook checks and makes the missing parents.
                let (root, base) = if mount.mount_path.is_absolute() {
                    let rootfs = layout
                        .container_rootfs
                        .get(&mount.container)
                        .map(|r| beneath_work_dir(work_dir, r, "container_rootfs", true))
                        .transpose()?;
                    let root = container_root(
                        rootfs.as_ref(),
                        layout,
                        &mount.mount_path,
                        "--container-rootfs NAME=DIR",
                    )?;
                    (root.clone(), root)
                } else {
                    match layout.container_sandboxes.get(&mount.container) {
                        Some(dir) => {
                            let dir = beneath_work_dir(work_dir, dir, "container_sandboxes", true)?;
                            (dir.clone(), dir)
                        }
                        None => (
                            sandbox.clone(),
                            default_container_sandbox(
                                &sandbox,
                                &request.task_id,
                                &mount.container,
                            )?,
                        ),
                    }
                };
                mounts.push(PlannedMount {
                    volume: mount.volume.clone(),
                    path: join_beneath(&base, &mount.mount_path, "mountPath")?,
                    root,
                    read_only: mount.read_only,
                });
            }
        }
    }
    Ok(mounts)
}

/// The root an absolute container path is mounted under: the container's root filesystem,
/// or with `allow_host_paths` the host's.
fn container_root(
    rootfs: Option<&PathBuf>,
    layout: &TaskLayout,
    container_path: &Path,
    flag: &str,
) -> Result<PathBuf, HookError> {
    match rootfs {
        Some(rootfs) => Ok(rootfs.clone()),
        None if layout.allow_host_paths => Ok(PathBuf::from("/")),
        None => Err(HookError::Forbidden(format!(
            "{} is an absolute container path and no root filesystem was given: without one \
             the container shares the host's, so the volume would be mounted over the host's \
             {}. Give the container's root filesystem with `berth mesos prepare {flag}` (a \
             Mesos-containerizer task with an image has one), or pass --allow-host-paths if \
             mounting over the host's directory is really meant",
            container_path.display(),
            container_path.display()
        ))),
    }
}

/// `SANDBOX/tasks/TASK_ID.CONTAINER`: where Mesos' default executor puts the sandbox of a
/// pod container whose Marathon task id is `INSTANCE_ID.CONTAINER`.
fn default_container_sandbox(
    sandbox: &Path,
    task_id: &str,
    container: &str,
) -> Result<PathBuf, HookError> {
    let segment = format!("{task_id}.{container}");
    let mut components = Path::new(&segment).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) => Ok(sandbox.join("tasks").join(segment)),
        _ => Err(HookError::BadRequest(format!(
            "container {container:?}: cannot make a sandbox directory name of {segment:?}; give \
             the container's sandbox in container_sandboxes"
        ))),
    }
}

// ----- cleanup ------------------------------------------------------------------------------

fn cleanup(
    engine: &dyn VolumeService,
    config: &MesosConfig,
    request: CleanupRequest,
) -> Result<CleanupReply, HookError> {
    check_id("task_id", &request.task_id)?;
    if let Some(framework) = &request.framework_id {
        check_id("framework_id", framework)?;
    }
    let layout = &request.layout;
    let work_dir = &config.work_dir;
    let mut roots = vec![beneath_work_dir(
        work_dir,
        &layout.sandbox,
        "sandbox",
        false,
    )?];
    if let Some(rootfs) = &layout.rootfs {
        roots.push(beneath_work_dir(work_dir, rootfs, "rootfs", false)?);
    }
    for dir in layout.container_rootfs.values() {
        roots.push(beneath_work_dir(work_dir, dir, "container_rootfs", false)?);
    }
    for dir in layout.container_sandboxes.values() {
        roots.push(beneath_work_dir(
            work_dir,
            dir,
            "container_sandboxes",
            false,
        )?);
    }
    let volumes: Vec<Volume> = engine
        .list_as(
            CALLER,
            &VolumeFilter {
                task_id: Some(request.task_id.clone()),
                ..VolumeFilter::default()
            },
        )
        .into_iter()
        .filter(|v| {
            v.owner.framework_id == request.framework_id && v.owner.persistence_id.is_some()
        })
        .collect();
    let mut targets = Vec::new();
    for v in &volumes {
        for p in &v.publications {
            if let PublishTarget::Bind { path, .. } = &p.target
                && (layout.allow_host_paths || roots.iter().any(|root| path.starts_with(root)))
            {
                targets.push((v.name.clone(), p.target.clone(), path.clone()));
            }
        }
    }
    // Deepest first, so a mount inside another volume's mount goes before it.
    targets.sort_by_key(|(_, _, path)| std::cmp::Reverse(path.components().count()));
    let mut unmounted: Vec<(VolumeName, PathBuf)> = Vec::new();
    for (name, target, path) in targets {
        engine.unpublish(CALLER, &name, &target)?;
        unmounted.push((name, path));
    }
    let mut cleaned = Vec::new();
    for v in volumes {
        let after = engine.get_as(CALLER, &v.name).map_err(HookError::Lookup)?;
        cleaned.push(CleanedVolume {
            volume: v.name.to_string(),
            container_path: v.owner.container_path.clone(),
            unmounted: unmounted
                .iter()
                .filter(|(name, _)| *name == v.name)
                .map(|(_, path)| path.clone())
                .collect(),
            kept: after
                .publications
                .iter()
                .map(|p| p.target.to_string())
                .collect(),
            state: after.state().as_str().to_string(),
        });
    }
    Ok(CleanupReply {
        task_id: request.task_id,
        volumes: cleaned,
    })
}

// ----- names, ids and paths -----------------------------------------------------------------

/// Mesos' rule for ids: not empty, not `.` or `..`, no `/`, `\` or control characters. Task
/// ids become path components here, so the rule matters.
fn check_id(field: &str, id: &str) -> Result<(), HookError> {
    let reason = if id.is_empty() {
        Some("must not be empty")
    } else if id.len() > MAX_ID_LEN {
        Some("is too long")
    } else if id == "." || id == ".." {
        Some("must not be . or ..")
    } else if id.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        Some("must not contain /, \\ or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(HookError::BadRequest(format!(
            "{field} {:?} {reason}",
            id.escape_debug().to_string()
        ))),
        None => Ok(()),
    }
}

/// The engine volume name of a new reservation: its persistence id `APP#CONTAINERPATH#UUID`,
/// APP being the app id without its leading `/` and with `/` as `.` (`/prod/mysql` ->
/// `prod.mysql`). A name longer than [`MAX_NAME_LEN`] keeps the UUID and a hash of the
/// whole `APP#CONTAINERPATH`, so it stays unique and the same for the same app and path.
fn persistence_id(app_id: &str, container_path: &str, uuid: &str) -> Result<VolumeName, HookError> {
    let app = app_id.trim_start_matches('/').replace('/', ".");
    let head = format!("{app}#{container_path}");
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.-#:@+".contains(c);
    if let Some(bad) = head.chars().find(|c| !allowed(*c)) {
        return Err(HookError::BadRequest(format!(
            "app {app_id}, volume {container_path:?}: {bad:?} cannot be part of a volume name \
             (APP#CONTAINERPATH#UUID); use letters, digits and _ . - : @ +"
        )));
    }
    let full = format!("{head}#{uuid}");
    let name = if full.len() <= MAX_NAME_LEN {
        full
    } else {
        // `+` and 16 hex digits of the hash, `#`, the UUID.
        let keep = MAX_NAME_LEN.saturating_sub(uuid.len() + 18);
        format!("{}+{:016x}#{uuid}", &head[..keep], fnv1a(head.as_bytes()))
    };
    VolumeName::parse(&name).map_err(|e| {
        HookError::BadRequest(format!(
            "app {app_id}, volume {container_path:?}: the persistence id is not a usable volume \
             name: {e}"
        ))
    })
}

/// 64-bit FNV-1a: a hash whose value never changes between builds (std's does not promise so).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A random (version 4) UUID made of `bytes`, as Marathon uses in persistence ids.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Resolves a directory the caller names (following links) and checks that it lies strictly
/// beneath the agent work directory. A directory that is gone (`must_exist` false, for
/// cleanup) is checked as written.
fn beneath_work_dir(
    work_dir: &Path,
    path: &Path,
    field: &str,
    must_exist: bool,
) -> Result<PathBuf, HookError> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(HookError::BadRequest(format!(
            "{field} {} must be an absolute path without ..",
            path.display()
        )));
    }
    let work = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    let resolved = match std::fs::canonicalize(path) {
        Ok(resolved) => resolved,
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
            path.components().collect()
        }
        Err(e) => {
            return Err(HookError::BadRequest(format!(
                "{field} {}: {e}",
                path.display()
            )));
        }
    };
    if resolved == work || !resolved.starts_with(&work) {
        return Err(HookError::Forbidden(format!(
            "{field} {} is not beneath the Mesos agent work directory {} ([mesos] work_dir in \
             berth's config); berth mounts volumes only into sandboxes and container root \
             filesystems there",
            path.display(),
            work_dir.display()
        )));
    }
    Ok(resolved)
}

/// `root` joined with the normal components of `inner` (absolute or relative); refuses a
/// path that names `root` itself.
fn join_beneath(root: &Path, inner: &Path, field: &str) -> Result<PathBuf, HookError> {
    let mut joined = root.to_path_buf();
    for component in inner.components() {
        match component {
            Component::Normal(part) => joined.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(HookError::BadRequest(format!(
                    "{field} {} must not contain ..",
                    inner.display()
                )));
            }
        }
    }
    if joined == root {
        return Err(HookError::BadRequest(format!(
            "{field} {:?} names {} itself; mount a volume at a directory below it",
            inner.display().to_string(),
            root.display()
        )));
    }
    Ok(joined)
}

/// Checks the existing part of the path from `root` down to `target` through the host's
/// fd-relative walk: each component must be a directory and not a symbolic link. The part
/// that does not exist yet is made later, by the same walk.
fn check_mount_path(
    engine: &dyn VolumeService,
    root: &Path,
    target: &Path,
) -> Result<(), HookError> {
    let relative = beneath(root, target)?;
    engine
        .dirs_beneath(root, relative, false)
        .map_err(walk_error)
}

/// Creates the missing directories above `target` (the engine makes `target` itself, and
/// removes it again on unmount), walking from `root` by fd without following a link.
fn make_parents(engine: &dyn VolumeService, root: &Path, target: &Path) -> Result<(), HookError> {
    let Some(parent) = target.parent() else {
        return Ok(());
    };
    let relative = beneath(root, parent)?;
    engine
        .dirs_beneath(root, relative, true)
        .map_err(walk_error)
}

/// `path` relative to `root`, which it must lie beneath.
fn beneath<'p>(root: &Path, path: &'p Path) -> Result<&'p Path, HookError> {
    path.strip_prefix(root).map_err(|_| {
        HookError::Forbidden(format!(
            "{} is not beneath {}",
            path.display(),
            root.display()
        ))
    })
}

/// A refused walk in the words of a task's author.
fn walk_error(e: EngineError) -> HookError {
    match e {
        EngineError::Host {
            source: HostError::Symlink { path },
            ..
        } => HookError::Forbidden(format!(
            "{} is a symbolic link; berth does not follow links when mounting into a sandbox or \
             a container (a link can point out of it); mount at the path it points to instead",
            path.display()
        )),
        EngineError::Host {
            source: HostError::Io { path, source, .. },
            ..
        } if source.kind() == std::io::ErrorKind::InvalidInput => HookError::BadRequest(format!(
            "{} exists and is not a directory; a volume is mounted on a directory",
            path.display()
        )),
        other => HookError::Engine(other),
    }
}

#[cfg(test)]
mod tests;
