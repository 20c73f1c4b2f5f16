//! A volume record's owner, kept out of line. Only Mesos volumes have one; every CSI and
//! Docker volume's owner is empty, and five empty `Option<String>`s inline cost each of
//! those records 120 bytes (1.2 MB of a daemon holding 10,000 volumes). The slot holds
//! nothing for an empty owner and a box otherwise, reads as an [`Owner`] through `Deref`,
//! and is stored exactly as an `Owner` is.

use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Owner;

/// What an empty slot reads as.
static NO_OWNER: Owner = Owner {
    framework_id: None,
    app_id: None,
    task_id: None,
    persistence_id: None,
    container_path: None,
};

/// A record's [`Owner`]: `None` when it is empty, so an empty owner and a missing one are
/// the same slot (and compare equal).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct OwnerSlot(Option<Box<Owner>>);

impl From<Owner> for OwnerSlot {
    fn from(owner: Owner) -> Self {
        if owner == NO_OWNER {
            Self(None)
        } else {
            Self(Some(Box::new(owner)))
        }
    }
}

impl Deref for OwnerSlot {
    type Target = Owner;

    fn deref(&self) -> &Owner {
        self.0.as_deref().unwrap_or(&NO_OWNER)
    }
}

impl PartialEq<Owner> for OwnerSlot {
    fn eq(&self, other: &Owner) -> bool {
        **self == *other
    }
}

impl Serialize for OwnerSlot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for OwnerSlot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Owner::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Owner {
        Owner {
            task_id: Some(id.into()),
            ..Owner::default()
        }
    }

    #[test]
    fn an_empty_owner_takes_no_box_and_reads_as_empty() {
        let slot = OwnerSlot::from(Owner::default());
        assert_eq!(slot, OwnerSlot::default());
        assert!(slot.0.is_none());
        assert_eq!(*slot, Owner::default());
    }

    #[test]
    fn an_owner_reads_back_as_given() {
        let slot = OwnerSlot::from(task("t1"));
        assert_eq!(slot, task("t1"));
        assert_ne!(slot, task("t2"));
        assert_eq!(slot.task_id.as_deref(), Some("t1"));
    }

    #[test]
    fn the_slot_is_stored_exactly_as_an_owner() {
        for owner in [Owner::default(), task("t1")] {
            let slot = OwnerSlot::from(owner.clone());
            let json = serde_json::to_string(&slot).unwrap();
            assert_eq!(json, serde_json::to_string(&owner).unwrap());
            let back: OwnerSlot = serde_json::from_str(&json).unwrap();
            assert_eq!(back, slot);
        }
    }
}
