//! Handing a volume over to another front-end: the operator's way to move data between
//! orchestrators on one node (a Marathon app's volume into Kubernetes, a Docker volume to
//! Mesos) without copying a byte. Only the owner changes, in one durable store commit under
//! the volume's lock; the data, its place and its size stay as they are.

use super::types::*;
use super::*;
use crate::host::Host;

impl<H: Host> Engine<H> {
    pub(super) fn do_handover(
        &self,
        caller: Caller,
        name: &VolumeName,
        to: OwnerFrontend,
    ) -> Result<Volume, EngineError> {
        if !matches!(caller.frontend, Frontend::Admin | Frontend::Internal) {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: format!(
                    "the {} front-end may not hand volumes over; an administrator does, with `berth volume handover`",
                    caller.frontend.as_str()
                ),
            });
        }
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let mut v = self.ready_volume(name)?;
        if v.frontend == to {
            return Ok(v);
        }
        if !v.publications.is_empty() {
            return Err(in_use(&v));
        }
        if to == OwnerFrontend::Mesos
            && (v.owner.app_id.is_none() || v.owner.container_path.is_none())
        {
            // The hook finds a task's volumes by app and container path; without them no
            // Marathon app would ever mount this one.
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: "it has no Marathon app and container path (the Mesos hook did not make \
                         it), so no Marathon app could use it; only a volume made for Marathon \
                         can be handed back to mesos"
                    .into(),
            });
        }
        v.frontend = to;
        // A pending reservation would be rolled back (wiped) if the task it was made for
        // never starts; the new owner holds the volume on purpose, so it is no longer pending.
        v.pending_until = None;
        self.save(&v, "handover")?;
        Ok(v)
    }
}
