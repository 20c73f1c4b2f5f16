//! Which caller may act on which volume. One node serves Kubernetes, Docker and Mesos at
//! once; a volume belongs to the front-end that created it ([`Volume::frontend`]), and only
//! that front-end may publish, unpublish, delete, expand or adopt it, so `docker volume
//! prune` cannot remove a Kubernetes claim and a CSI id cannot reach a Marathon app's data.
//! The admin API (an operator) and berth itself act on any volume. Checked under the
//! volume's lock, against the record the operation is about to change.

use super::error::EngineError;
use super::types::{Caller, Frontend, OwnerFrontend, Volume};

/// Whether `caller` may act on `volume`; the refusal names the owner.
pub fn check(caller: Caller, volume: &Volume) -> Result<(), EngineError> {
    if may_act(caller.frontend, volume.frontend) {
        Ok(())
    } else {
        Err(EngineError::HeldByOther {
            volume: volume.name.to_string(),
            owner: volume.frontend,
            caller: caller.frontend,
        })
    }
}

/// The rule itself: a front-end acts on its own volumes, the admin API and berth on any.
pub fn may_act(caller: Frontend, owner: OwnerFrontend) -> bool {
    match caller {
        Frontend::Admin | Frontend::Internal => true,
        Frontend::Csi => owner == OwnerFrontend::Csi,
        Frontend::Docker => owner == OwnerFrontend::Docker,
        Frontend::Mesos => owner == OwnerFrontend::Mesos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_ends_act_on_their_own_and_the_admin_api_on_any() {
        for owner in OwnerFrontend::ALL {
            for caller in Frontend::ALL {
                let expected = matches!(caller, Frontend::Admin | Frontend::Internal)
                    || caller.as_str() == owner.as_str();
                assert_eq!(may_act(caller, owner), expected, "{caller:?} on {owner:?}");
            }
        }
    }

    #[test]
    fn owners_are_named_as_the_store_migration_writes_them() {
        use crate::store::migrate;
        let named = [
            (OwnerFrontend::Csi, migrate::CSI),
            (OwnerFrontend::Docker, migrate::DOCKER),
            (OwnerFrontend::Mesos, migrate::MESOS),
        ];
        for (owner, name) in named {
            assert_eq!(serde_json::to_value(owner).unwrap(), name);
        }
    }
}
