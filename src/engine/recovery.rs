//! Start-up reconciliation of the store with the mount table and loop devices.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::types::*;
use super::*;
use crate::host::{Host, TargetKind};

impl<H: Host> Engine<H> {
    /// Reconciles the store with the mount table and loop devices. See the module docs.
    pub(super) fn recover(&self) -> Result<RecoveryReport, EngineError> {
        let mut report = RecoveryReport {
            cleaned_snapshots: self.recover_snapshots(),
            ..RecoveryReport::default()
        };
        let host_err = |source| EngineError::Host {
            volume: None,
            operation: "reading the mount table",
            source,
        };
        let mounts = self.host.mounts().map_err(host_err)?;
        let mounted: HashSet<&Path> = mounts.iter().map(|m| m.mount_point.as_path()).collect();
        let records: Vec<Arc<Volume>> = self.cache().values().cloned().collect();
        for v in records {
            if at_rest(&v) {
                continue;
            }
            let v = Volume::clone(&v);
            match v.phase {
                Phase::Creating if v.completes_at_start() => {
                    // Its answer may have gone out with a `Ready` record the crash lost.
                    match self.carve(&v, None) {
                        Ok(()) => {
                            let mut ready = v;
                            ready.phase = Phase::Ready;
                            self.save(&ready, "recovery")?;
                            report.completed_creates.push(ready.name.to_string());
                        }
                        Err(e) => {
                            tracing::warn!(volume = %v.name, error = %e, "could not complete an interrupted create; rolling it back");
                            self.undo_create(&v)?;
                            report.rolled_back_creates.push(v.name.to_string());
                        }
                    }
                    continue;
                }
                Phase::Creating => {
                    self.undo_create(&v)?;
                    report.rolled_back_creates.push(v.name.to_string());
                    continue;
                }
                Phase::Deleting { wipe } => {
                    // Publications of a tombstoned volume are already gone; see do_delete.
                    // One that cannot be finished (say a mount planted inside it) must not
                    // keep the node's every other volume from being served.
                    match self.finish_delete(&v, wipe) {
                        Ok(_) => report.finished_deletes.push(v.name.to_string()),
                        Err(e) => report
                            .unfinished_deletes
                            .push((v.name.to_string(), e.to_string())),
                    }
                    continue;
                }
                Phase::Ready => {}
            }
            let mut v = v;
            if let (Some(image), Some(fs)) = (&v.placement.image, v.placement.fs) {
                // Also where it is still mounted: the mount fills holes a grow cut short by
                // the crash left in the image, so the reservation is a guarantee again.
                self.host
                    .mount_image(image, &v.placement.dir, fs)
                    .map_err(Self::host_err(&v.name, "re-mounting the volume filesystem"))?;
                if !mounted.contains(v.placement.dir.as_path()) {
                    report.remounted.push(v.name.to_string());
                }
            }
            let before = v.publications.len();
            let mut changed = false;
            if let Some(to) = v.growing_to.take() {
                // A grow cut short: finished (growing again to a size reached changes
                // nothing), or, if it cannot be, the volume keeps its recorded size.
                changed = true;
                match self.grow_on_host(&v, to) {
                    Ok(()) => {
                        v.size = Some(to);
                        report.finished_grows.push(v.name.to_string());
                    }
                    Err(e) => {
                        tracing::warn!(volume = %v.name, error = %e, "an interrupted grow could not be finished; the volume keeps its recorded size")
                    }
                }
            }
            let mut kept = Vec::new();
            for mut p in std::mem::take(&mut v.publications) {
                let PublishTarget::Bind { path, .. } = &p.target else {
                    // A reference leaves no mount to look for; the boot id it was taken in
                    // tells whether its holder (a container) can still be running.
                    if p.boot_id.as_ref().is_some_and(|b| *b != self.boot_id) {
                        changed = true;
                        report
                            .dropped_publications
                            .push((v.name.to_string(), p.target.to_string()));
                    } else {
                        kept.push(p);
                    }
                    continue;
                };
                if mounted.contains(path.as_path()) {
                    if p.state == PublicationState::Publishing {
                        report
                            .confirmed_publications
                            .push((v.name.to_string(), path.display().to_string()));
                        p.state = PublicationState::Published;
                        // What the lost `Published` record also said.
                        v.attached_at = v.attached_at.or(Some(p.published_at));
                        v.pending_until = None;
                        changed = true;
                    }
                    kept.push(p);
                } else {
                    changed = true;
                    report
                        .dropped_publications
                        .push((v.name.to_string(), path.display().to_string()));
                    if p.created_target {
                        let kind = if p.device.is_some() {
                            TargetKind::File
                        } else {
                            TargetKind::Directory
                        };
                        if let Err(e) = self.host.remove_target(path, kind) {
                            tracing::warn!(volume = %v.name, error = %e, "leaving a stale target in place");
                        }
                    }
                }
            }
            v.publications = kept;
            if v.spec.access == AccessType::Block
                && !v.publications.iter().any(|p| p.device.is_some())
                && let Some(image) = &v.placement.image
            {
                self.host
                    .detach_loop(image)
                    .map_err(Self::host_err(&v.name, "detaching the loop device"))?;
            }
            if changed {
                if v.publications.is_empty() && before > 0 {
                    v.detached_at = Some(now_ms());
                }
                self.save(&v, "recovery")?;
            }
        }
        // Read again: the rollbacks and deletes above unmounted their volumes.
        let mounts = self.host.mounts().map_err(host_err)?;
        self.find_strays(&mounts, &mut report)?;
        for name in &report.completed_creates {
            tracing::warn!(volume = %name, "completed a create interrupted by a crash");
        }
        for name in &report.rolled_back_creates {
            tracing::warn!(volume = %name, "rolled back a create interrupted by a crash");
        }
        for name in &report.finished_deletes {
            tracing::warn!(volume = %name, "finished a delete interrupted by a crash");
        }
        for (name, error) in &report.unfinished_deletes {
            tracing::error!(volume = %name, error = %error, "could not finish a delete interrupted by a crash; the volume stays in state deleting until a retried delete or wipe succeeds");
        }
        for (name, target) in &report.dropped_publications {
            tracing::warn!(volume = %name, target = %target, "dropped a publication whose mount is gone or that an earlier boot took");
        }
        for path in &report.stray_mounts {
            tracing::warn!(mount = %path.display(), "a mount under berth's pools that the store does not know; left in place");
        }
        for dev in &report.stray_loops {
            tracing::warn!(device = %dev.display(), "a loop device over a berth image that the store does not know; left in place");
        }
        Ok(report)
    }

    pub(super) fn find_strays(
        &self,
        mounts: &[MountEntry],
        report: &mut RecoveryReport,
    ) -> Result<(), EngineError> {
        let cache = self.cache();
        let known_mounts: HashSet<&Path> = cache
            .values()
            .flat_map(|v| {
                let own = v.placement.fs.map(|_| v.placement.dir.as_path());
                own.into_iter()
                    .chain(v.publications.iter().filter_map(|p| match &p.target {
                        PublishTarget::Bind { path, .. } => Some(path.as_path()),
                        PublishTarget::Reference { .. } => None,
                    }))
            })
            .collect();
        let bases: Vec<&Path> = self
            .pools
            .iter()
            .flat_map(|p| p.paths.iter().map(PathBuf::as_path))
            .collect();
        let known_images: HashSet<&Path> = cache
            .values()
            .filter_map(|v| v.placement.image.as_deref())
            .collect();
        for m in mounts {
            let under_pool = bases.iter().any(|b| m.mount_point.starts_with(b));
            let from_pool = bases.iter().any(|b| m.root.starts_with(b) && m.root != *b);
            if (under_pool || from_pool) && !known_mounts.contains(m.mount_point.as_path()) {
                report.stray_mounts.push(m.mount_point.clone());
            }
        }
        let loops = self
            .host
            .loop_devices()
            .map_err(|source| EngineError::Host {
                volume: None,
                operation: "listing loop devices",
                source,
            })?;
        for l in loops {
            let ours = bases
                .iter()
                .any(|b| l.backing_file.starts_with(b.join(IMAGES_DIR)));
            if ours && !known_images.contains(l.backing_file.as_path()) {
                report.stray_loops.push(l.device);
            }
        }
        Ok(())
    }
}

/// A ready volume with nothing on the host to confirm: no filesystem of its own to mount,
/// no publication to check and no grow to finish. Most of a large node's volumes are such,
/// and recovery passes them by without copying their records.
fn at_rest(v: &Volume) -> bool {
    v.phase == Phase::Ready
        && v.placement.image.is_none()
        && v.growing_to.is_none()
        && v.publications.is_empty()
}
