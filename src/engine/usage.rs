//! How much of a volume is used, measured the way its backend can.

use super::types::*;
use super::*;
use crate::host::Host;

impl<H: Host> Engine<H> {
    pub(super) fn do_usage(&self, name: &VolumeName) -> Result<Usage, EngineError> {
        let v = self.ready_volume(name)?;
        let p = &v.placement;
        let err = |op| Self::host_err(name, op);
        match (v.spec.access, p.fs) {
            (AccessType::Filesystem, Some(_)) => {
                // The data directory lives inside the volume's own filesystem: if that is not
                // mounted (or the data is gone) this fails instead of measuring the pool.
                let s = self
                    .host
                    .fs_stats(&p.data)
                    .map_err(err("measuring usage"))?;
                Ok(Usage {
                    bytes_used: s.bytes_total.saturating_sub(s.bytes_free),
                    bytes_total: s.bytes_total,
                    bytes_available: s.bytes_available,
                    inodes_used: s.inodes_total.saturating_sub(s.inodes_free),
                    inodes_total: s.inodes_total,
                    inodes_available: s.inodes_free,
                })
            }
            (AccessType::Block, _) => {
                let image = p.image.as_deref().unwrap_or(&p.data);
                let used = self
                    .host
                    .tree_usage(image)
                    .map_err(err("measuring usage"))?;
                let size = v.size.unwrap_or(0);
                Ok(Usage {
                    bytes_used: used.bytes.min(size),
                    bytes_total: size,
                    bytes_available: size.saturating_sub(used.bytes),
                    ..Usage::default()
                })
            }
            (AccessType::Filesystem, None) => {
                // Enforcing backends know their usage; a plain directory is walked.
                let used = match (p.backend, p.project_id) {
                    (Backend::Btrfs, _) => self.host.btrfs_usage(&p.dir),
                    (Backend::Prjquota, Some(id)) => self.host.project_quota_usage(&p.dir, id),
                    _ => self.host.tree_usage(&p.dir),
                }
                .map_err(err("measuring usage"))?;
                let fs = self
                    .host
                    .fs_stats(&p.base)
                    .map_err(err("measuring usage"))?;
                let (total, available) = match v.size {
                    Some(size) => (
                        size,
                        size.saturating_sub(used.bytes).min(fs.bytes_available),
                    ),
                    None => (fs.bytes_total, fs.bytes_available),
                };
                Ok(Usage {
                    bytes_used: used.bytes,
                    bytes_total: total,
                    bytes_available: available,
                    inodes_used: used.inodes,
                    inodes_total: fs.inodes_total,
                    inodes_available: fs.inodes_free,
                })
            }
        }
    }
}
