//! The engine's vocabulary: validated names and sizes, what a caller asks for, and what a
//! volume is. Everything a front-end receives is parsed into these types at the edge, so the
//! engine never sees an unchecked name or a negative size.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::InputError;
use super::selector::LabelSelector;
pub use crate::host::types::{FsType, Ownership};

/// The longest volume name berth accepts. Kubernetes PV names (`pvc-<uuid>`, 40 bytes) and
/// Mesos persistence ids (`app#path#uuid`) fit with room to spare; the limit keeps every path
/// berth builds from a name far below `PATH_MAX`.
pub const MAX_NAME_LEN: usize = 128;

/// A volume's name, which is also its id in every front-end.
///
/// Allowed: ASCII letters, digits and `_ . - # : @ +`, first character a letter or digit,
/// at most [`MAX_NAME_LEN`] bytes. So a name is always one path component: it can contain no
/// `/`, no NUL, and cannot be `.` or `..` (they start with a dot).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeName(String);

impl VolumeName {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let invalid = |reason: &str| InputError::Name {
            name: raw.escape_debug().to_string(),
            reason: reason.to_string(),
        };
        if raw.is_empty() {
            return Err(invalid("a name cannot be empty"));
        }
        if raw.len() > MAX_NAME_LEN {
            return Err(invalid(&format!(
                "a name is at most {MAX_NAME_LEN} bytes, this one has {}",
                raw.len()
            )));
        }
        let first = raw.as_bytes()[0];
        if !first.is_ascii_alphanumeric() {
            return Err(invalid("a name starts with a letter or a digit"));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.-#:@+".contains(*c)))
        {
            return Err(invalid(&format!(
                "{:?} is not allowed; use letters, digits and _ . - # : @ +",
                bad
            )));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for VolumeName {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for VolumeName {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<VolumeName> for String {
    fn from(n: VolumeName) -> String {
        n.0
    }
}

/// Parses a size: plain bytes (`1048576`) or a number with a unit. Binary units (`KiB`, `MiB`,
/// `GiB`, `TiB`, and Docker's/Kubernetes' `Ki`, `Mi`, `Gi`, `Ti`) are powers of 1024; decimal
/// units (`k`/`K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB`) powers of 1000, as in Kubernetes
/// quantities. Negative, fractional-byte, empty and overflowing sizes are refused.
pub fn parse_size(raw: &str) -> Result<u64, InputError> {
    let invalid = |reason: &str| InputError::Size {
        value: raw.escape_debug().to_string(),
        reason: reason.to_string(),
    };
    let text = raw.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(invalid(
            "a size is a number of bytes or a number with a unit, such as 4096, 512MiB, 1.5GiB or 10G",
        ));
    }
    let multiplier: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "k" | "K" | "KB" | "kB" => 1000,
        "M" | "MB" => 1000u64.pow(2),
        "G" | "GB" => 1000u64.pow(3),
        "T" | "TB" => 1000u64.pow(4),
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => {
            return Err(invalid(&format!(
                "unknown unit {other:?}; use B, KiB, MiB, GiB, TiB (or K, M, G, T for powers of 1000)"
            )));
        }
    };
    let bytes = if let Some((whole, frac)) = number.split_once('.') {
        if whole.is_empty() || frac.is_empty() || frac.contains('.') {
            return Err(invalid("malformed number"));
        }
        let whole: u64 = whole.parse().map_err(|_| invalid("number too large"))?;
        let digits = frac.len().min(9);
        let frac_value: u64 = frac[..digits]
            .parse()
            .map_err(|_| invalid("malformed number"))?;
        let scale = 10u64.pow(digits as u32);
        let frac_bytes = (u128::from(frac_value) * u128::from(multiplier)) / u128::from(scale);
        whole
            .checked_mul(multiplier)
            .and_then(|w| w.checked_add(frac_bytes as u64))
            .ok_or_else(|| invalid("size too large"))?
    } else {
        let whole: u64 = number.parse().map_err(|_| invalid("size too large"))?;
        whole
            .checked_mul(multiplier)
            .ok_or_else(|| invalid("size too large"))?
    };
    if bytes == 0 {
        return Err(invalid("a size must be greater than zero"));
    }
    Ok(bytes)
}

/// Formats bytes the way operators read them: the largest binary unit that divides evenly,
/// otherwise one decimal place.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            if bytes.is_multiple_of(scale) {
                return format!("{}{unit}", bytes / scale);
            }
            return format!("{:.1}{unit}", bytes as f64 / scale as f64);
        }
    }
    format!("{bytes}B")
}

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

/// A `LIKE`/`UNLIKE` constraint on the path of the disk a volume lands on (Marathon's
/// `["path","LIKE","/mnt/ssd-.+"]`). The pattern must match the whole path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PathConstraint {
    pub like: bool,
    pub pattern: String,
}

impl PathConstraint {
    pub fn new(like: bool, pattern: &str) -> Result<Self, InputError> {
        whole_path_regex(pattern).map_err(|e| InputError::Invalid {
            field: "constraints".into(),
            reason: format!(
                "{pattern:?} is not a valid regular expression: {}",
                regex_reason(&e)
            ),
        })?;
        Ok(Self {
            like,
            pattern: pattern.to_string(),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        let matched = whole_path_regex(&self.pattern)
            .map(|re| re.is_match(path))
            .unwrap_or(false);
        matched == self.like
    }
}

/// `pattern` anchored to match a whole path. The bare pattern must compile by itself first:
/// wrapped in `^(?:...)$`, an unbalanced one such as `a)|(?:b` compiles to a different,
/// unanchored expression (found by the `path_constraint` fuzz target).
fn whole_path_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(pattern)?;
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// What is wrong with a pattern, on one line: a syntax error repeats the pattern over
/// several lines with a caret; its last line ("error: ...") is the part that reads well.
fn regex_reason(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("error: "))
            .map_or_else(|| text.replace('\n', " "), str::to_owned),
        other => other.to_string(),
    }
}

impl fmt::Display for PathConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.like { "LIKE" } else { "UNLIKE" };
        write!(f, "[\"path\",\"{op}\",{:?}]", self.pattern)
    }
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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
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

/// Where a publication makes the volume appear.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum PublishTarget {
    /// A bind mount of the volume onto `path` (a directory, or a device node for block
    /// volumes), read-only if asked.
    Bind { path: PathBuf, read_only: bool },
    /// A named reference held by a front-end that uses the volume's own data path (Docker's
    /// `Mount` by caller id): nothing is mounted, but the volume counts as attached.
    Reference { holder: String },
}

impl PublishTarget {
    /// Two publications are the same when they bind the same path, or hold the same reference.
    pub fn same_place(&self, other: &PublishTarget) -> bool {
        match (self, other) {
            (Self::Bind { path: a, .. }, Self::Bind { path: b, .. }) => a == b,
            (Self::Reference { holder: a }, Self::Reference { holder: b }) => a == b,
            _ => false,
        }
    }
}

/// The reference Docker's `Mount` calls hold: `docker:<ID>`, or just `docker` without an ID.
pub const DOCKER_HOLDER: &str = "docker";

impl PublishTarget {
    /// Where `volume` is attached, in terms its user can look up. dockerd's `Mount` carries
    /// an id it makes for each mount, not the container's id (`docker ps` never shows it),
    /// so a Docker attachment says so and names the `docker ps` filter that finds the
    /// container.
    pub fn describe(&self, volume: &VolumeName) -> String {
        let find = format!("`docker ps -a --filter volume={volume}` shows the container");
        match self {
            Self::Bind { path, .. } => format!("mounted at {}", path.display()),
            Self::Reference { holder } if holder == DOCKER_HOLDER => {
                format!("mounted by Docker without a mount id; {find}")
            }
            Self::Reference { holder } => match holder
                .strip_prefix(DOCKER_HOLDER)
                .and_then(|h| h.strip_prefix(':'))
            {
                Some(mount_id) => format!(
                    "mounted by Docker, mount id {mount_id} (dockerd's id for the mount, not the \
                     container's); {find}"
                ),
                None => format!("held by {holder}"),
            },
        }
    }
}

impl fmt::Display for PublishTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { path, .. } => write!(f, "{}", path.display()),
            Self::Reference { holder } => write!(f, "reference {holder:?}"),
        }
    }
}

/// A publication's progress; written before the mount is made and after, so a crash in
/// between is completed or undone at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublicationState {
    Publishing,
    Published,
    Unpublishing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub target: PublishTarget,
    pub state: PublicationState,
    /// berth created the target path and removes it again on unpublish.
    pub created_target: bool,
    /// The loop device behind a block publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
    pub published_at: u64,
    /// For a reference (which no mount backs, so the mount table cannot tell whether it
    /// outlived a reboot): the kernel boot id it was taken in. A start in another boot
    /// drops it. `None` in records written before berth kept it; those are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
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

/// A volume as stored: its spec, where it lives, its owner and its publications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: VolumeName,
    pub spec: VolumeSpec,
    /// The enforced or reserved size in bytes; `None` for an unlimited plain directory.
    pub size: Option<u64>,
    pub placement: Placement,
    pub reclaim: ReclaimPolicy,
    #[serde(default)]
    pub owner: Owner,
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

/// Who is calling, for the one log line and the metrics each operation produces, and whether
/// it would rather wait for a busy volume than be told it is busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub frontend: Frontend,
    pub wait_if_busy: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Frontend {
    Csi,
    Docker,
    Admin,
    Mesos,
    Internal,
}

impl Frontend {
    pub const ALL: [Frontend; 5] = [
        Self::Csi,
        Self::Docker,
        Self::Admin,
        Self::Mesos,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csi => "csi",
            Self::Docker => "docker",
            Self::Admin => "admin",
            Self::Mesos => "mesos",
            Self::Internal => "internal",
        }
    }
}

/// The front-end a volume belongs to. Set at create from the caller; only that front-end
/// (and the admin API, which acts on any volume) may see or change the volume, so a
/// Kubernetes claim never shows up in `docker volume ls` and `docker volume prune` cannot
/// remove a Marathon app's data. Distinct from [`Owner`], which is the orchestrator's own
/// naming (framework, app, task) within a front-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerFrontend {
    Csi,
    Docker,
    Mesos,
}

impl OwnerFrontend {
    pub const ALL: [OwnerFrontend; 3] = [Self::Csi, Self::Docker, Self::Mesos];

    /// The owner of a volume `caller` creates. The admin API and berth itself hold no
    /// volumes of their own: what they create belongs to Docker, the general-purpose
    /// front-end, until it is handed over.
    pub fn of_creator(caller: Frontend) -> Self {
        match caller {
            Frontend::Csi => Self::Csi,
            Frontend::Mesos => Self::Mesos,
            Frontend::Docker | Frontend::Admin | Frontend::Internal => Self::Docker,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csi => "csi",
            Self::Docker => "docker",
            Self::Mesos => "mesos",
        }
    }
}

impl fmt::Display for OwnerFrontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OwnerFrontend {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| InputError::Invalid {
                field: "frontend".into(),
                reason: format!("{s:?} is not a front-end; use csi, docker or mesos"),
            })
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
