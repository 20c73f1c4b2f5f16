//! A volume that lives for one publication (CSI's inline ephemeral volume): made, given to
//! a group and published in one operation under the volume lock, and destroyed again if
//! the publish fails, so no other call ever sees it half-made.

use super::types::*;
use super::*;
use crate::host::Host;

/// What [`VolumeService::publish_ephemeral`] makes and where it publishes it.
#[derive(Clone, Debug)]
pub struct EphemeralRequest {
    pub create: CreateRequest,
    pub target: PublishTarget,
    /// A group given access to the volume's root before it is published.
    pub group: Option<u32>,
}

impl<H: Host> Engine<H> {
    pub(super) fn do_publish_ephemeral(
        &self,
        caller: Caller,
        request: EphemeralRequest,
    ) -> Result<Volume, EngineError> {
        let EphemeralRequest {
            create: request,
            target,
            group,
        } = request;
        let name = request.name.clone();
        let _guard = self.locks.acquire(&name, caller.wait_if_busy)?;
        // A ready volume of the same spec is this one, asked again: it is kept whatever
        // happens. Anything else is (re)made here, and removed if its publish fails.
        let made_here = self
            .cached(&name)
            .is_none_or(|existing| existing.phase != Phase::Ready);
        self.create_locked(caller, request, None)?;
        let published = group
            .map(|gid| self.grant_group_locked(caller, &name, gid))
            .transpose()
            .and_then(|_| self.publish_locked(caller, &name, target));
        if published.is_err()
            && made_here
            && let Some(half_made) = self.cached(&name)
            && let Err(undo) = self.delete_locked(half_made, true)
        {
            tracing::error!(volume = %name, error = %undo, "removing an ephemeral volume whose publish failed");
        }
        published
    }
}
