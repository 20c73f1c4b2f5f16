//! Publishing a volume at a target (bind mount, or mounting its filesystem) and
//! unpublishing it: exactly the mount berth made is removed.

use std::path::{Path, PathBuf};

use super::types::*;
use super::*;
use crate::host::{Host, TargetKind};

impl<H: Host> Engine<H> {
    pub(super) fn ready_volume(&self, name: &VolumeName) -> Result<Volume, EngineError> {
        let v = self.cached(name).ok_or_else(|| EngineError::NotFound {
            volume: name.to_string(),
        })?;
        match v.phase {
            Phase::Ready => Ok(v),
            Phase::Creating => Err(EngineError::WrongPhase {
                volume: name.to_string(),
                phase: "created",
            }),
            Phase::Deleting { .. } => Err(EngineError::WrongPhase {
                volume: name.to_string(),
                phase: "deleted",
            }),
        }
    }

    pub(super) fn do_publish(
        &self,
        caller: Caller,
        name: &VolumeName,
        target: PublishTarget,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        self.publish_locked(caller, name, target)
    }

    /// Publishes at `target` only if the volume is published at `base` (a CSI staging
    /// mount), checked under the same volume lock as the publish, so an unpublish of `base`
    /// cannot come in between.
    pub(super) fn do_publish_on(
        &self,
        caller: Caller,
        name: &VolumeName,
        base: &PublishTarget,
        target: PublishTarget,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        let on_base = v
            .publication(base)
            .is_some_and(|p| p.state == PublicationState::Published);
        if !on_base {
            return Err(EngineError::NotPublishedAt {
                volume: name.to_string(),
                base: PathBuf::from(base.to_string()),
            });
        }
        self.publish_locked(caller, name, target)
    }

    /// The publish itself; the caller holds the volume's lock.
    pub(super) fn publish_locked(
        &self,
        caller: Caller,
        name: &VolumeName,
        target: PublishTarget,
    ) -> Result<Volume, EngineError> {
        let mut v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        if let PublishTarget::Bind { path, .. } = &target {
            if !path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(EngineError::Input(InputError::Invalid {
                    field: "target".into(),
                    reason: format!("{} must be an absolute path without ..", path.display()),
                }));
            }
            self.check_target_free(name, path)?;
        }
        if let Some(existing) = v.publication(&target) {
            if existing.state == PublicationState::Published {
                return if existing.target == target {
                    Ok(v)
                } else {
                    Err(EngineError::TargetConflict {
                        volume: name.to_string(),
                        target: PathBuf::from(target.to_string()),
                        how: "with a different read-only setting".into(),
                    })
                };
            }
            // A publish that was interrupted: do it again from the start.
            v.publications.retain(|p| !p.target.same_place(&target));
        }
        let first = v.publications.is_empty();
        let mut publication = Publication {
            target: target.clone(),
            state: PublicationState::Publishing,
            created_target: false,
            device: None,
            published_at: now_ms(),
            boot_id: match &target {
                PublishTarget::Reference { .. } => Some(self.boot_id.clone()),
                PublishTarget::Bind { .. } => None,
            },
        };
        if let PublishTarget::Bind { path, read_only } = &target {
            // The intent says whether berth is about to create the target, so that a crash
            // before the publish is recorded still has the target removed at start.
            publication.created_target = !self
                .host
                .target_exists(path)
                .map_err(Self::host_err(name, "inspecting the target"))?;
            v.publications.push(publication.clone());
            self.save(&v, "publish")?;
            match self.bind(&v, path, *read_only) {
                Ok((created, device)) => {
                    publication.created_target = created;
                    publication.device = device;
                }
                Err(e) => {
                    v.publications.retain(|p| !p.target.same_place(&target));
                    if let Err(undo) = self.save(&v, "publish") {
                        tracing::error!(volume = %name, error = %undo, "recording a failed publish");
                    }
                    return Err(e);
                }
            }
            v.publications.retain(|p| !p.target.same_place(&target));
        }
        publication.state = PublicationState::Published;
        let bind = matches!(target, PublishTarget::Bind { .. });
        v.publications.push(publication);
        if first {
            v.attached_at = Some(now_ms());
        }
        v.pending_until = None;
        if bind {
            // The durable `Publishing` intent and the mount itself let recovery confirm it.
            self.save_completion(&v, "publish")?;
        } else {
            self.save(&v, "publish")?;
        }
        Ok(v)
    }

    /// A bind target may carry only one volume.
    pub(super) fn check_target_free(
        &self,
        name: &VolumeName,
        path: &Path,
    ) -> Result<(), EngineError> {
        let cache = self.cache();
        for other in cache.values().filter(|o| &o.name != name) {
            if other
                .publications
                .iter()
                .any(|p| matches!(&p.target, PublishTarget::Bind { path: q, .. } if q == path))
            {
                return Err(EngineError::TargetConflict {
                    volume: name.to_string(),
                    target: path.to_path_buf(),
                    how: format!("for volume {}", other.name),
                });
            }
        }
        Ok(())
    }

    /// Makes the mount for a bind publication; undoes its own steps if a later one fails.
    pub(super) fn bind(
        &self,
        v: &Volume,
        target: &Path,
        read_only: bool,
    ) -> Result<(bool, Option<PathBuf>), EngineError> {
        let err = |op| Self::host_err(&v.name, op);
        let kind = match v.spec.access {
            AccessType::Block => TargetKind::File,
            AccessType::Filesystem => TargetKind::Directory,
        };
        let created = self
            .host
            .prepare_target(target, kind)
            .map_err(err("preparing the target"))?;
        let undo_target = |e: EngineError| {
            if created && let Err(undo) = self.host.remove_target(target, kind) {
                tracing::error!(volume = %v.name, error = %undo, "removing a target after a failed publish");
            }
            e
        };
        // The source is opened beneath the pool path, so a pool path swapped for a symlink
        // since the volume was made is refused rather than followed; a loop device is opened
        // beneath /dev likewise.
        let (root, source, device) = match (v.spec.access, &v.placement.image) {
            (AccessType::Block, Some(image)) => {
                let dev = self
                    .host
                    .attach_loop(image)
                    .map_err(err("attaching the loop device"))
                    .map_err(undo_target)?;
                let dev_dir = dev.parent().unwrap_or(Path::new("/")).to_path_buf();
                (dev_dir, dev.clone(), Some(dev))
            }
            _ => (v.placement.base.clone(), v.placement.data.clone(), None),
        };
        if let Err(e) = self.host.bind_mount(&root, &source, target, read_only) {
            if device.is_some()
                && !v
                    .publications
                    .iter()
                    .any(|p| p.device.is_some() && p.state == PublicationState::Published)
                && let Some(image) = &v.placement.image
                && let Err(undo) = self.host.detach_loop(image)
            {
                tracing::error!(volume = %v.name, error = %undo, "detaching after a failed publish");
            }
            return Err(undo_target(err("bind-mounting the volume")(e)));
        }
        Ok((created, device))
    }

    pub(super) fn do_unpublish(
        &self,
        caller: Caller,
        name: &VolumeName,
        target: &PublishTarget,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let mut v = self.cached(name).ok_or_else(|| EngineError::NotFound {
            volume: name.to_string(),
        })?;
        access::check(caller, &v)?;
        let Some(publication) = v.publication(target).cloned() else {
            return Ok(v);
        };
        if let PublishTarget::Bind { path, .. } = &publication.target {
            // Exactly one unmount, of berth's own bind mount. A publication left
            // Unpublishing has lost it already: unmounting again would take whatever is
            // mounted beneath (a target that is itself a mount point).
            if publication.state != PublicationState::Unpublishing {
                self.host
                    .unmount(path)
                    .map_err(Self::host_err(name, "unmounting the target"))?;
            }
            if let Err(e) = self.clean_up_unpublished(&v, &publication, path) {
                // The mount is gone; record that only the clean-up is left, for a retry or
                // the next start to finish.
                for p in v.publications.iter_mut() {
                    if p.target.same_place(target) {
                        p.state = PublicationState::Unpublishing;
                    }
                }
                self.save(&v, "unpublish")?;
                return Err(e);
            }
        }
        v.publications.retain(|p| !p.target.same_place(target));
        if v.publications.is_empty() {
            v.detached_at = Some(now_ms());
        }
        self.save(&v, "unpublish")?;
        Ok(v)
    }

    /// What is left once berth's bind mount at `path` is gone: the target berth made, and
    /// the loop device of the last block publication.
    pub(super) fn clean_up_unpublished(
        &self,
        v: &Volume,
        publication: &Publication,
        path: &Path,
    ) -> Result<(), EngineError> {
        let err = |op| Self::host_err(&v.name, op);
        let kind = if publication.device.is_some() {
            TargetKind::File
        } else {
            TargetKind::Directory
        };
        if publication.created_target {
            self.host
                .remove_target(path, kind)
                .map_err(err("removing the target"))?;
        }
        let other_block = v
            .publications
            .iter()
            .any(|p| p.device.is_some() && !p.target.same_place(&publication.target));
        if publication.device.is_some()
            && !other_block
            && let Some(image) = &v.placement.image
        {
            self.host
                .detach_loop(image)
                .map_err(err("detaching the loop device"))?;
        }
        Ok(())
    }
}
