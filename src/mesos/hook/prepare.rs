//! `POST /v1/mesos/prepare`: reserve or adopt each persistent volume of the task and mount it
//! where the definition says (see the parent module for the rules).

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::config::MesosConfig;
use crate::engine::types::{
    CreateRequest, Owner, Ownership, PoolKind, PublishTarget, Volume, VolumeFilter, VolumeSpec,
    VolumeState, format_size,
};
use crate::engine::{EngineError, VolumeService};
use crate::mesos::api::{
    MountPoint, Origin, PrepareReply, PrepareRequest, PreparedVolume, TaskLayout,
};
use crate::mesos::validate::{self, Definition, PersistentVolumeSpec};

use super::CALLER;
use super::error::HookError;
use super::ids::{check_id, persistence_id, uuid_v4};
use super::paths::{beneath_work_dir, check_mount_path, join_beneath, make_parents};

/// One place a volume is mounted for the task: `path`, which lies strictly beneath `root`, a
/// directory the hook trusts (the sandbox, a root filesystem, or `/` for host paths).
struct PlannedMount {
    /// The persistent volume's name in the definition.
    volume: String,
    root: PathBuf,
    path: PathBuf,
    read_only: bool,
}

pub(super) fn prepare(
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
        let reservations: Vec<Arc<Volume>> = existing
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
    reservations: Vec<Arc<Volume>>,
    donor: &mut Option<Option<String>>,
) -> Result<(Volume, Origin), HookError> {
    let task = Some(request.task_id.clone());
    if let Some(own) = reservations
        .iter()
        .filter(|v| v.owner.task_id == task)
        .min_by_key(|v| (v.created_at, v.name.clone()))
    {
        return Ok((Volume::clone(own), Origin::Relaunched));
    }
    // Prefer the old instance whose other volumes this task already took over.
    let mut detached: Vec<&Volume> = reservations
        .iter()
        .map(|v| &**v)
        .filter(|v| v.state() == VolumeState::Detached)
        .collect();
    detached.sort_by_key(|v| {
        let same_donor = donor.as_ref() == Some(&v.owner.task_id);
        (!same_donor, v.detached_at, v.name.clone())
    });
    for v in detached {
        let owner = Owner {
            task_id: task.clone(),
            ..(*v.owner).clone()
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
