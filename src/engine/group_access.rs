//! Granting a group access to a volume's root (kubelet's `fsGroup`, a task's group).

use super::types::*;
use super::*;
use crate::host::Host;

impl<H: Host> Engine<H> {
    pub(super) fn do_grant_group(
        &self,
        caller: Caller,
        name: &VolumeName,
        gid: u32,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        self.grant_group_locked(caller, name, gid)
    }

    /// The grant itself; the caller holds the volume's lock.
    pub(super) fn grant_group_locked(
        &self,
        caller: Caller,
        name: &VolumeName,
        gid: u32,
    ) -> Result<Volume, EngineError> {
        let v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        if v.spec.access != AccessType::Filesystem {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: "group access applies to filesystem volumes, not block volumes".into(),
            });
        }
        // Keep the owner's and others' bits; add group rwx and set-group-id.
        let base = v.spec.ownership.mode.unwrap_or(0o755) & 0o7777;
        let ownership = Ownership {
            uid: None,
            gid: Some(gid),
            mode: Some(base | 0o2070),
        };
        self.host
            .make_dir(&v.placement.data, &ownership)
            .map_err(Self::host_err(name, "granting group access"))?;
        Ok(v)
    }
}
