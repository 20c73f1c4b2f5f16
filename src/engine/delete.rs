//! Deleting and wiping: a `Deleting` tombstone is committed first, then the host work,
//! then the record is forgotten; detached volumes whose reclaim policy retains them are
//! moved aside instead of destroyed.

use std::path::PathBuf;

use super::types::*;
use super::*;
use crate::host::Host;

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
            if retain {
                self.host
                    .rename(&p.dir, &self.retained_path(v, ""))
                    .map_err(err("retaining the data"))?;
            } else {
                self.host
                    .btrfs_delete_subvolume(&p.dir)
                    .map_err(err("deleting the subvolume"))?;
            }
            return Ok(stats);
        }
        if let Some(image) = &p.image {
            if p.fs.is_some() {
                if !retain {
                    // What the user had, measured inside the filesystem as it goes.
                    let data = self
                        .host
                        .remove_tree(&p.dir, &p.data)
                        .map_err(err("removing the volume data"))?;
                    stats.files += data.files;
                    stats.dirs += data.dirs;
                    stats.symlinks += data.symlinks;
                    stats.bytes += data.bytes;
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
            } else {
                let removed = self
                    .host
                    .remove_tree(&p.base.join(IMAGES_DIR), image)
                    .map_err(err("removing the image"))?;
                stats.image_bytes += removed.bytes;
            }
        } else if retain {
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
        stats.files += removed.files;
        stats.dirs += removed.dirs;
        stats.symlinks += removed.symlinks;
        stats.bytes += removed.bytes;
        Ok(stats)
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
