//! Deleting and wiping: a `Deleting` tombstone is committed first, then the host work,
//! then the record is forgotten; detached volumes whose reclaim policy retains them are
//! moved aside instead of destroyed. A loopfs image goes to its pool's trash (see
//! [`super::trash`]) after whatever a wipe does inside it.

use std::path::PathBuf;

use super::types::*;
use super::*;
use crate::host::{Host, HostError};

impl<H: Host> Engine<H> {
    /// Destroys (or, with `retain`, moves aside) a volume's host resources.
    pub(super) fn destroy(&self, v: &Volume, retain: bool) -> Result<RemovalStats, EngineError> {
        let p = &v.placement;
        let err = |op| Self::host_err(&v.name, op);
        let mut stats = RemovalStats::default();
        if p.backend == Backend::Disk {
            // The disk itself stays: only what berth made on it goes.
            if retain {
                self.host
                    .make_dir(&p.base.join(RETAINED_DIR), &Ownership::default())
                    .map_err(err("retaining the data"))?;
                self.host
                    .rename(&p.data, &self.retained_path(v, ""))
                    .map_err(err("retaining the data"))?;
                return Ok(stats);
            }
            return self
                .host
                .remove_tree(&p.base, &p.data)
                .map_err(err("wiping the disk"));
        }
        if p.image.is_none() && !self.dir_present(v)? {
            // Removed behind berth's back: nothing is left to count, move or delete, but
            // the record (and a project quota's limit, below) must still go.
            stats.incomplete = Some(format!(
                "its directory {} was already gone",
                p.dir.display()
            ));
        }
        let gone = stats.incomplete.is_some();
        // Retained data keeps its project id (its files carry it), so the id stays taken:
        // `free_project_id` also looks under the retained directory.
        if let Some(id) = p.project_id
            && !retain
        {
            self.host
                .clear_project_quota(&p.dir, id)
                .map_err(err("releasing the project quota"))?;
        }
        if p.backend == Backend::Btrfs {
            if retain && !gone {
                self.host
                    .rename(&p.dir, &self.retained_path(v, ""))
                    .map_err(err("retaining the data"))?;
            } else if !retain {
                self.host
                    .btrfs_delete_subvolume(&p.dir)
                    .map_err(err("deleting the subvolume"))?;
            }
            return Ok(stats);
        }
        if let Some(image) = &p.image {
            if p.fs.is_some() {
                if !retain {
                    self.remove_data_inside(v, &mut stats)?;
                }
                self.host
                    .unmount(&p.dir)
                    .map_err(err("unmounting the volume filesystem"))?;
            } else {
                self.host
                    .detach_loop(image)
                    .map_err(err("detaching the loop device"))?;
            }
            if retain {
                let kept = self.retained_path(v, ".img");
                self.host
                    .rename(image, &kept)
                    .map_err(err("retaining the image"))?;
            } else if p.fs.is_some() {
                // Durable here, the emptied mount point with it (one journal commit for
                // both); the blocks are freed by the trash's emptying, later. The data was
                // counted inside.
                stats.image_bytes += self.trash_paths(v, &[image, &p.dir])?;
                return Ok(stats);
            } else {
                stats.image_bytes += self.trash_paths(v, &[image])?;
            }
        } else if retain && !gone {
            let kept = self.retained_path(v, "");
            self.host
                .rename(&p.dir, &kept)
                .map_err(err("retaining the data"))?;
        }
        let removed = self
            .host
            .remove_tree(&p.base, &p.dir)
            .map_err(err("removing the volume directory"))?;
        if p.image.is_some() && p.fs.is_some() {
            // Only berth's empty mount point was left: the data was counted inside.
            return Ok(stats);
        }
        stats.add_counts(&removed);
        Ok(stats)
    }

    /// Whether a plain or btrfs volume's directory is still there.
    fn dir_present(&self, v: &Volume) -> Result<bool, EngineError> {
        self.host
            .target_exists(&v.placement.dir)
            .map_err(Self::host_err(&v.name, "looking for the volume directory"))
    }

    /// Removes a loopfs volume's data inside its mounted filesystem, counting what the user
    /// had. The image goes afterwards whatever its inside holds, so a filesystem that cannot
    /// be read (damaged, or no longer mounted) does not stop the wipe: the count says it is
    /// partial and why. What is not the filesystem failing still stops it: a mount found
    /// inside the volume (the unmount after would fail on it anyway, less clearly) or a
    /// symlink where the data directory should be.
    fn remove_data_inside(&self, v: &Volume, stats: &mut RemovalStats) -> Result<(), EngineError> {
        let p = &v.placement;
        match self.host.is_mount_point(&p.dir) {
            Ok(true) => {}
            Ok(false) => {
                stats.incomplete = Some(format!(
                    "its filesystem was not mounted at {}, so the data in its image was not counted",
                    p.dir.display()
                ));
                return Ok(());
            }
            Err(e) if e.is_not_found() => {
                stats.incomplete = Some(format!(
                    "its directory {} was already gone, so the data in its image was not counted",
                    p.dir.display()
                ));
                return Ok(());
            }
            Err(e) => {
                return Err(Self::host_err(&v.name, "looking for the volume filesystem")(e));
            }
        }
        match self.host.remove_tree_counting(&p.dir, &p.data, stats) {
            Ok(()) => Ok(()),
            Err(e @ HostError::Io { .. }) => {
                stats.incomplete = Some(format!(
                    "its filesystem could not all be read ({e}); counted what could be"
                ));
                Ok(())
            }
            Err(e) => Err(Self::host_err(&v.name, "removing the volume data")(e)),
        }
    }

    pub(super) fn retained_path(&self, v: &Volume, suffix: &str) -> PathBuf {
        v.placement
            .base
            .join(RETAINED_DIR)
            .join(format!("{}-{}{suffix}", v.name, v.created_at))
    }

    pub(super) fn do_delete(
        &self,
        caller: Caller,
        name: &VolumeName,
        wipe: bool,
    ) -> Result<RemovalStats, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let v = self.cached(name).ok_or_else(|| EngineError::NotFound {
            volume: name.to_string(),
        })?;
        access::check(caller, &v)?;
        self.delete_locked(v, wipe)
    }

    /// Tombstones and destroys a volume whose lock the caller holds.
    pub(super) fn delete_locked(
        &self,
        mut v: Volume,
        wipe: bool,
    ) -> Result<RemovalStats, EngineError> {
        if !v.publications.is_empty() {
            return Err(in_use(&v));
        }
        let wipe = match v.phase {
            // An interrupted delete keeps the stronger of the two requests.
            Phase::Deleting { wipe: earlier } => earlier || wipe,
            Phase::Creating | Phase::Ready => wipe,
        };
        v.phase = Phase::Deleting { wipe };
        self.save(&v, if wipe { "wipe" } else { "delete" })?;
        self.finish_delete(&v, wipe)
    }

    /// Rolls back the pending reservations past their deadline; see the trait.
    pub(super) fn do_expire_pending(&self, now: u64) -> Vec<VolumeName> {
        let candidates: Vec<VolumeName> = self
            .cache()
            .values()
            .filter(|v| v.pending_expired(now))
            .map(|v| v.name.clone())
            .collect();
        let caller = Caller {
            frontend: Frontend::Internal,
            wait_if_busy: false,
        };
        let mut expired = Vec::new();
        for name in candidates {
            // Busy: someone is publishing (or deleting) it right now; look again next time.
            let Ok(_guard) = self.locks.acquire(&name, false) else {
                continue;
            };
            let Some(v) = self.cached(&name).filter(|v| v.pending_expired(now)) else {
                continue;
            };
            let wiped = self.observe(caller, "expire", name.as_str(), || {
                self.delete_locked(v, true)
            });
            if wiped.is_ok() {
                expired.push(name);
            }
        }
        expired
    }

    pub(super) fn finish_delete(
        &self,
        v: &Volume,
        wipe: bool,
    ) -> Result<RemovalStats, EngineError> {
        let retain = !wipe && v.reclaim == ReclaimPolicy::Retain;
        let stats = self.destroy(v, retain)?;
        self.forget_completion(&v.name, if wipe { "wipe" } else { "delete" })?;
        Ok(stats)
    }
}
