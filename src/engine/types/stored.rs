//! How a volume record is read back from the store.
//!
//! A record keeps its phase at the top level (`"phase": "deleting", "wipe": true`), which
//! `Volume`'s derived `Serialize` writes through `#[serde(flatten)]`. Reading a flattened
//! field makes serde buffer every key and value of the record as owned strings before
//! decoding them a second time: at start, with every record read at once, that doubled
//! the allocations and most of the time. This is the same record with the phase as the
//! two plain fields it is on disk, decoded in one pass and turned into a [`Volume`].

use serde::Deserialize;

use super::*;

/// A phase's name as stored in the `phase` field.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PhaseName {
    Creating,
    Ready,
    Deleting,
}

/// [`Volume`] as stored; the attributes mirror `Volume`'s own.
#[derive(Deserialize)]
pub(super) struct StoredVolume {
    name: VolumeName,
    spec: VolumeSpec,
    size: Option<u64>,
    placement: Placement,
    reclaim: ReclaimPolicy,
    #[serde(default)]
    owner: OwnerSlot,
    frontend: OwnerFrontend,
    phase: PhaseName,
    /// Only with `deleting`: whether the delete is a wipe.
    #[serde(default)]
    wipe: Option<bool>,
    #[serde(default)]
    publications: Vec<Publication>,
    created_at: u64,
    #[serde(default)]
    attached_at: Option<u64>,
    #[serde(default)]
    detached_at: Option<u64>,
    #[serde(default)]
    pending_until: Option<u64>,
    #[serde(default)]
    growing_to: Option<u64>,
}

impl TryFrom<StoredVolume> for Volume {
    type Error = String;

    fn try_from(s: StoredVolume) -> Result<Self, Self::Error> {
        let phase = match (s.phase, s.wipe) {
            (PhaseName::Creating, None) => Phase::Creating,
            (PhaseName::Ready, None) => Phase::Ready,
            (PhaseName::Deleting, Some(wipe)) => Phase::Deleting { wipe },
            (PhaseName::Deleting, None) => return Err("phase deleting without `wipe`".into()),
            (_, Some(_)) => return Err("`wipe` belongs only to phase deleting".into()),
        };
        Ok(Volume {
            name: s.name,
            spec: s.spec,
            size: s.size,
            placement: s.placement,
            reclaim: s.reclaim,
            owner: s.owner,
            frontend: s.frontend,
            phase,
            publications: s.publications,
            created_at: s.created_at,
            attached_at: s.attached_at,
            detached_at: s.detached_at,
            pending_until: s.pending_until,
            growing_to: s.growing_to,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn volume(phase: Phase) -> Volume {
        Volume {
            name: VolumeName::parse("db").unwrap(),
            spec: VolumeSpec {
                size: Some(1 << 20),
                labels: [("app".to_string(), "mysql".to_string())].into(),
                ..VolumeSpec::default()
            },
            size: Some(1 << 20),
            placement: Placement {
                pool: "default".into(),
                kind: PoolKind::Root,
                backend: Backend::Loopfs,
                base: PathBuf::from("/pool"),
                dir: PathBuf::from("/pool/db"),
                data: PathBuf::from("/pool/db/data"),
                image: Some(PathBuf::from("/pool/.images/db.img")),
                fs: Some(FsType::Ext4),
                project_id: None,
            },
            reclaim: ReclaimPolicy::Retain,
            owner: Owner {
                task_id: Some("t1".into()),
                ..Owner::default()
            }
            .into(),
            frontend: OwnerFrontend::Csi,
            phase,
            publications: Vec::new(),
            created_at: 1,
            attached_at: Some(2),
            detached_at: None,
            pending_until: Some(3),
            growing_to: Some(2 << 20),
        }
    }

    #[test]
    fn every_phase_reads_back_as_written() {
        for phase in [
            Phase::Creating,
            Phase::Ready,
            Phase::Deleting { wipe: false },
            Phase::Deleting { wipe: true },
        ] {
            let v = volume(phase);
            let json = serde_json::to_vec(&v).unwrap();
            let back: Volume = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, v, "{}", String::from_utf8_lossy(&json));
        }
    }

    #[test]
    fn the_phase_stays_two_top_level_fields() {
        let json = serde_json::to_value(volume(Phase::Deleting { wipe: true })).unwrap();
        assert_eq!(json["phase"], "deleting");
        assert_eq!(json["wipe"], true);
        let json = serde_json::to_value(volume(Phase::Ready)).unwrap();
        assert_eq!(json["phase"], "ready");
        assert!(json.get("wipe").is_none());
    }

    #[test]
    fn a_phase_and_wipe_that_disagree_are_refused() {
        let mut json = serde_json::to_value(volume(Phase::Ready)).unwrap();
        json["wipe"] = true.into();
        let err = serde_json::from_value::<Volume>(json).unwrap_err();
        assert!(err.to_string().contains("only to phase deleting"), "{err}");
        let mut json = serde_json::to_value(volume(Phase::Deleting { wipe: false })).unwrap();
        json.as_object_mut().unwrap().remove("wipe");
        let err = serde_json::from_value::<Volume>(json).unwrap_err();
        assert!(err.to_string().contains("without `wipe`"), "{err}");
    }
}
