//! `POST /v1/mesos/cleanup`: unmount the task's volumes, keep their reservations and data.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::MesosConfig;
use crate::engine::VolumeService;
use crate::engine::types::{PublishTarget, Volume, VolumeFilter, VolumeName};
use crate::mesos::api::{CleanedVolume, CleanupReply, CleanupRequest};

use super::CALLER;
use super::error::HookError;
use super::ids::check_id;
use super::paths::beneath_work_dir;

pub(super) fn cleanup(
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
    let volumes: Vec<Arc<Volume>> = engine
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
