//! The engine's vocabulary: validated names and sizes, what a caller asks for, and what a
//! volume is. Everything a front-end receives is parsed into these types at the edge, so the
//! engine never sees an unchecked name or a negative size.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::InputError;
pub use super::labels::LabelSet;
use super::selector::LabelSelector;
pub use crate::host::types::{FsType, Ownership};

mod caller;
mod names;
mod owner_slot;
mod path_constraint;
mod publication;
mod stored;

pub use caller::{Caller, Frontend, OwnerFrontend};
pub use names::{MAX_NAME_LEN, VolumeName, format_size, parse_size};
pub use owner_slot::OwnerSlot;
pub use path_constraint::PathConstraint;
pub use publication::{DOCKER_HOLDER, Publication, PublicationState, PublishTarget};

/// The three kinds of Mesos disk resource, which berth's pools mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Directories on the root disk.
    Root,
    /// Directories on dedicated, mounted disks.
    Path,
    /// Whole disks, one volume each.
    Mount,
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Path => "path",
            Self::Mount => "mount",
        }
    }
}

impl FromStr for PoolKind {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "root" => Ok(Self::Root),
            "path" => Ok(Self::Path),
            "mount" => Ok(Self::Mount),
            other => Err(InputError::Invalid {
                field: "type".into(),
                reason: format!("{other:?} is not a volume type; use root, path or mount"),
            }),
        }
    }
}

/// How a volume's size is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A plain directory: the size is a reservation only; usage is measured.
    None,
    /// An allocated image file with its own filesystem on a loop device: a hard limit and a
    /// guarantee of the space.
    Loopfs,
    /// A whole disk of a `mount` pool: the disk's own size is the limit.
    Disk,
    /// A btrfs subvolume with a qgroup limit.
    Btrfs,
    /// A directory with an XFS or ext4 project quota.
    Prjquota,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Loopfs => "loopfs",
            Self::Disk => "disk",
            Self::Btrfs => "btrfs",
            Self::Prjquota => "prjquota",
        }
    }
}

/// Whether the volume is a filesystem tree or a raw block device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessType {
    #[default]
    Filesystem,
    Block,
}

/// What happens to the data when a volume is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReclaimPolicy {
    /// Delete destroys the data.
    #[default]
    Delete,
    /// Delete moves the data under the pool's retained directory; only a wipe destroys it.
    Retain,
}

impl FromStr for ReclaimPolicy {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "delete" | "Delete" => Ok(Self::Delete),
            "retain" | "Retain" => Ok(Self::Retain),
            other => Err(InputError::Invalid {
                field: "reclaim".into(),
                reason: format!("{other:?} is not a reclaim policy; use delete or retain"),
            }),
        }
    }
}

/// Who a volume belongs to, as the orchestrator names it. Free-form: berth only stores,
/// filters and shows these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_path: Option<String>,
}

/// Everything that defines a volume as its creator asked for it. Creating a volume that
/// exists is idempotent exactly when the two specs are equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Bytes; `None` asks for the pool's default size, or an unlimited plain directory.
    pub size: Option<u64>,
    /// For `mount` pools: the largest disk the volume may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PoolKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<PathConstraint>,
    #[serde(default, skip_serializing_if = "LabelSet::is_empty")]
    pub labels: LabelSet,
    #[serde(default)]
    pub ownership: Ownership,
    #[serde(default)]
    pub access: AccessType,
    /// Create as a copy of this existing volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VolumeName>,
    /// Create as a copy of this snapshot (restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<VolumeName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim: Option<ReclaimPolicy>,
    /// Only pools and disks whose labels satisfy it qualify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The filesystem the volume must have: only `loopfs` pools that make it qualify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsType>,
}

/// A request to create (reserve and carve) a volume.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    pub name: VolumeName,
    pub spec: VolumeSpec,
    pub owner: Owner,
}

/// A volume's lifecycle phase as stored. Attached/detached are derived from publications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Reserved in the store; host resources may be half made. A start rolls it back.
    Creating,
    Ready,
    /// A delete or wipe was recorded (the tombstone); a start finishes it.
    Deleting {
        wipe: bool,
    },
}

/// What operators see as a volume's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    Creating,
    /// Created, never attached.
    Reserved,
    Attached,
    /// Was attached, now has no publications; keeps its reservation and data.
    Detached,
    Deleting,
}

impl VolumeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Reserved => "reserved",
            Self::Attached => "attached",
            Self::Detached => "detached",
            Self::Deleting => "deleting",
        }
    }
}

impl FromStr for VolumeState {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "creating" => Ok(Self::Creating),
            "reserved" => Ok(Self::Reserved),
            "attached" => Ok(Self::Attached),
            "detached" => Ok(Self::Detached),
            "deleting" => Ok(Self::Deleting),
            other => Err(InputError::Invalid {
                field: "state".into(),
                reason: format!(
                    "{other:?} is not a state; use reserved, attached, detached, creating or deleting"
                ),
            }),
        }
    }
}

/// Where a volume lives on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub pool: String,
    pub kind: PoolKind,
    pub backend: Backend,
    /// The pool path (or disk) the volume was carved from.
    pub base: PathBuf,
    /// The volume's own directory (for `loopfs`, the mount point of its filesystem).
    pub dir: PathBuf,
    /// What is published: `dir/data` for filesystem volumes, the image for block ones.
    pub data: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsType>,
    /// The project id of a `prjquota` volume, unique on its filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u32>,
}

/// A volume as stored: its spec, where it lives, its owner and its publications. Read back
/// through [`stored`], which decodes the flattened phase in one pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "stored::StoredVolume")]
pub struct Volume {
    pub name: VolumeName,
    pub spec: VolumeSpec,
    /// The enforced or reserved size in bytes; `None` for an unlimited plain directory.
    pub size: Option<u64>,
    pub placement: Placement,
    pub reclaim: ReclaimPolicy,
    /// Empty (and unboxed) for every volume but a Mesos one.
    #[serde(default)]
    pub owner: OwnerSlot,
    /// The front-end the volume belongs to: only it (and the admin API) acts on the volume.
    pub frontend: OwnerFrontend,
    #[serde(flatten)]
    pub phase: Phase,
    #[serde(default)]
    pub publications: Vec<Publication>,
    /// Unix milliseconds.
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached_at: Option<u64>,
    /// Unix milliseconds: a pending reservation (made for a task that has yet to start) that
    /// is rolled back if it is not published by then. Cleared by its first publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_until: Option<u64>,
    /// The size a grow in progress is taking the volume to: recorded before the host work
    /// (a grow allocates), so a grow cut short by a crash is finished at the next start and
    /// the record never says less than the filesystem holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growing_to: Option<u64>,
}

impl Volume {
    /// Whether an interrupted create of this volume is completed at start rather than rolled
    /// back: a plain directory volume, made from nothing, whose making is two idempotent
    /// `mkdir`s (so its `Ready` record need not be durable before the answer).
    pub fn completes_at_start(&self) -> bool {
        self.placement.backend == Backend::None
            && self.placement.image.is_none()
            && self.spec.access == AccessType::Filesystem
            && self.spec.source.is_none()
            && self.spec.snapshot.is_none()
    }

    /// A pending reservation whose deadline has passed without a publication.
    pub fn pending_expired(&self, now_ms: u64) -> bool {
        self.phase == Phase::Ready
            && self.publications.is_empty()
            && self
                .pending_until
                .is_some_and(|deadline| deadline <= now_ms)
    }

    pub fn state(&self) -> VolumeState {
        match self.phase {
            Phase::Creating => VolumeState::Creating,
            Phase::Deleting { .. } => VolumeState::Deleting,
            Phase::Ready if !self.publications.is_empty() => VolumeState::Attached,
            Phase::Ready if self.detached_at.is_some() => VolumeState::Detached,
            Phase::Ready => VolumeState::Reserved,
        }
    }

    pub fn publication(&self, target: &PublishTarget) -> Option<&Publication> {
        self.publications
            .iter()
            .find(|p| p.target.same_place(target))
    }
}

/// Space and inodes used by a volume, and what its limit leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub bytes_used: u64,
    /// The volume's size, or for an unlimited directory the filesystem it lives on.
    pub bytes_total: u64,
    pub bytes_available: u64,
    pub inodes_used: u64,
    pub inodes_total: u64,
    pub inodes_available: u64,
}

/// What a pool can still hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCapacity {
    pub pool: String,
    pub kind: PoolKind,
    pub backend: Backend,
    pub profiles: Vec<String>,
    pub capacity_bytes: u64,
    pub reserved_bytes: u64,
    pub available_bytes: u64,
    pub volumes: usize,
    /// Snapshots kept in the pool, and the bytes they hold against its capacity (part of
    /// `reserved_bytes`).
    pub snapshots: usize,
    pub snapshot_bytes: u64,
}

/// Filters for listing volumes; every field that is set must match.
#[derive(Clone, Debug, Default)]
pub struct VolumeFilter {
    pub state: Option<VolumeState>,
    pub pool: Option<String>,
    pub task_id: Option<String>,
    pub app_id: Option<String>,
    pub label: Option<(String, String)>,
    pub frontend: Option<OwnerFrontend>,
}

impl VolumeFilter {
    pub fn matches(&self, v: &Volume) -> bool {
        self.state.is_none_or(|s| v.state() == s)
            && self.pool.as_ref().is_none_or(|p| &v.placement.pool == p)
            && self
                .task_id
                .as_ref()
                .is_none_or(|t| v.owner.task_id.as_ref() == Some(t))
            && self
                .app_id
                .as_ref()
                .is_none_or(|a| v.owner.app_id.as_ref() == Some(a))
            && self
                .label
                .as_ref()
                .is_none_or(|(k, val)| v.spec.labels.get(k) == Some(val))
            && self.frontend.is_none_or(|f| v.frontend == f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attachment_is_named_as_its_user_can_find_it() {
        let db = VolumeName::parse("db").unwrap();
        let docker = PublishTarget::Reference {
            holder: "docker:c9f491e7".into(),
        }
        .describe(&db);
        assert!(docker.contains("mount id c9f491e7"), "{docker}");
        assert!(docker.contains("not the container's"), "{docker}");
        assert!(
            docker.contains("docker ps -a --filter volume=db"),
            "{docker}"
        );
        let anonymous = PublishTarget::Reference {
            holder: DOCKER_HOLDER.into(),
        }
        .describe(&db);
        assert!(
            anonymous.contains("docker ps -a --filter volume=db"),
            "{anonymous}"
        );
        let csi = PublishTarget::Bind {
            path: "/var/lib/kubelet/pods/uid/volumes/x/mount".into(),
            read_only: false,
        }
        .describe(&db);
        assert_eq!(csi, "mounted at /var/lib/kubelet/pods/uid/volumes/x/mount");
        let other = PublishTarget::Reference {
            holder: "task-7".into(),
        }
        .describe(&db);
        assert_eq!(other, "held by task-7");
    }

    #[test]
    fn names_are_single_safe_components() {
        for good in [
            "db",
            "pvc-1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "postgres#pgdata#53ab8732",
            "a.b_c-d:e@f+g",
        ] {
            assert!(VolumeName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", "a\0b", ".hidden", "-x", "a b", "é",
        ] {
            assert!(VolumeName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(VolumeName::parse(&"a".repeat(MAX_NAME_LEN)).is_ok());
        let long = VolumeName::parse(&"a".repeat(300)).unwrap_err().to_string();
        assert!(long.contains("at most 128 bytes"), "{long}");
        // Read from JSON by the same rule, escapes included.
        let db: VolumeName = serde_json::from_str(r#""d\u0062""#).unwrap();
        assert_eq!(serde_json::to_string(&db).unwrap(), r#""db""#);
        for bad in [r#""../x""#, r#""a\/b""#, "7", "null"] {
            assert!(serde_json::from_str::<VolumeName>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_from_bytes_and_units() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("16Mi").unwrap(), 16 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("10G").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size(" 2 TiB ").unwrap(), 2 << 40);
        for bad in [
            "",
            "-1",
            "lots",
            "0",
            "1.2.3",
            "5XB",
            "99999999999999999999",
            "20000000TiB",
            ".5G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        let refusal = parse_size("-1").unwrap_err().to_string();
        assert!(refusal.contains("\"-1\""), "{refusal}");
        // The text describes what is accepted: fractions with a unit are.
        assert!(!refusal.contains("whole number"), "{refusal}");
        assert!(refusal.contains("1.5GiB"), "{refusal}");
        assert_eq!(parse_size("1.5GiB").unwrap(), 1536 << 20);
    }

    #[test]
    fn sizes_format_for_people() {
        assert_eq!(format_size(16 << 20), "16MiB");
        assert_eq!(format_size(1536 << 20), "1.5GiB");
        assert_eq!(format_size(100), "100B");
    }

    #[test]
    fn constraints_match_whole_paths() {
        let ssd = PathConstraint::new(true, "/mnt/ssd-.+").unwrap();
        assert!(ssd.matches("/mnt/ssd-1"));
        assert!(!ssd.matches("/mnt/hdd-1"));
        assert!(!ssd.matches("/x/mnt/ssd-1"));
        let not_ssd = PathConstraint::new(false, "/mnt/ssd-.+").unwrap();
        assert!(not_ssd.matches("/mnt/hdd-1"));
        assert!(PathConstraint::new(true, "(").is_err());
    }
}
