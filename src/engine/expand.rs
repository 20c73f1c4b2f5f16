//! Growing a volume online or offline, within its pool's reservations.

use super::types::*;
use super::*;
use crate::host::{Host, HostError};

impl<H: Host> Engine<H> {
    pub(super) fn do_expand(
        &self,
        caller: Caller,
        name: &VolumeName,
        size: u64,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let mut v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        if v.size.is_some_and(|current| size <= current) {
            return Ok(v);
        }
        if v.placement.backend == Backend::Disk {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: format!(
                    "a mount volume is a whole disk of {}; it cannot grow",
                    format_size(v.size.unwrap_or(0))
                ),
            });
        }
        let _placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let pool = self
            .pool(&v.placement.pool)
            .ok_or_else(|| EngineError::Unsupported {
                volume: name.to_string(),
                reason: format!("its pool {} is no longer configured", v.placement.pool),
            })?;
        let growth = size - v.size.unwrap_or(0);
        let available = self
            .available_on(pool, &v.placement.base)
            .map_err(|e| e.for_volume(name.as_str()))?;
        if growth > available {
            return Err(EngineError::NoCapacity {
                volume: name.to_string(),
                reason: format!(
                    "growing by {} needs more than the {} left on {}",
                    format_size(growth),
                    format_size(available),
                    v.placement.base.display()
                ),
            });
        }
        // The intent first (durable): the grow allocates, and a crash after it must not leave
        // a filesystem larger than its record. Recovery finishes an interrupted grow.
        v.growing_to = Some(size);
        self.save(&v, "expand")?;
        let grown = self.grow_on_host(&v, size);
        v.growing_to = None;
        if let Err(e) = grown {
            self.save_completion(&v, "expand")?;
            return Err(Self::host_err(name, "growing the volume")(e));
        }
        v.size = Some(size);
        self.save_completion(&v, "expand")?;
        Ok(v)
    }

    /// Grows `v`'s storage to `size` on the host: its image (and the filesystem in it, where
    /// mounted), its btrfs limit or its project quota. Growing to a size already reached
    /// changes nothing, so an interrupted grow can be run again.
    pub(super) fn grow_on_host(&self, v: &Volume, size: u64) -> Result<(), HostError> {
        let p = &v.placement;
        match (p.backend, &p.image, p.project_id) {
            (_, Some(image), _) => {
                let mounted = p.fs.map(|fs| (p.dir.as_path(), fs));
                self.host.grow_image(image, size, mounted)
            }
            (Backend::Btrfs, None, _) => self.host.btrfs_set_limit(&p.dir, size),
            (Backend::Prjquota, None, Some(id)) => self.host.set_project_quota(&p.dir, id, size),
            _ => Ok(()),
        }
    }
}
