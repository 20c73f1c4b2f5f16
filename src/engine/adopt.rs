//! Adopting an existing directory under a pool as a volume, data untouched.

use super::types::*;
use super::*;
use crate::host::Host;

impl<H: Host> Engine<H> {
    pub(super) fn do_adopt(
        &self,
        caller: Caller,
        name: &VolumeName,
        expected: &Owner,
        owner: Owner,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let mut v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        if v.owner == owner {
            return Ok(v);
        }
        if !v.publications.is_empty() {
            return Err(in_use(&v));
        }
        if v.owner != *expected {
            // Another caller adopted it first.
            return Err(EngineError::Busy {
                volume: name.to_string(),
            });
        }
        v.owner = owner.into();
        self.save(&v, "adopt")?;
        Ok(v)
    }
}
