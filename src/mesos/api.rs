//! The two requests `berth mesos prepare|cleanup` send to the daemon over the admin socket,
//! and the replies. The daemon owns the store, so the command is a thin client: it validates
//! the definition locally for a quick answer, and the daemon validates everything again.
//!
//! Where things go (see [`super::hook`] for the rules): a persistent volume appears at
//! `SANDBOX/NAME`; an app's alias mount at an absolute path lands inside `rootfs`; a pod
//! container's relative `mountPath` lands in that container's sandbox, an absolute one inside
//! its root filesystem.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::validate::Violation;

pub const PREPARE_PATH: &str = "/v1/mesos/prepare";
pub const CLEANUP_PATH: &str = "/v1/mesos/cleanup";

/// Reserve, create (or reuse) and mount a task's persistent volumes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    /// The Marathon app or pod definition, as JSON.
    pub definition: serde_json::Value,
    /// The Mesos task id; for a pod, the Marathon instance id.
    pub task_id: String,
    #[serde(default)]
    pub framework_id: Option<String>,
    pub layout: TaskLayout,
    /// Owner of a new volume's data directory; without it, the definition's `user` (looked
    /// up on the node), else root.
    #[serde(default)]
    pub owner_uid: Option<u32>,
    #[serde(default)]
    pub owner_gid: Option<u32>,
}

/// Unmount a task's volumes from its sandbox and root filesystems; they stay reserved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupRequest {
    pub task_id: String,
    #[serde(default)]
    pub framework_id: Option<String>,
    pub layout: TaskLayout,
}

/// Where a task's files are on the agent. Every directory must lie beneath the configured
/// agent work directory (`[mesos] work_dir`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskLayout {
    /// The task's sandbox (the executor's, for a pod).
    pub sandbox: PathBuf,
    /// Apps: the container's root filesystem; absolute alias mounts land inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    /// Pods: each container's root filesystem, by container name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_rootfs: BTreeMap<String, PathBuf>,
    /// Pods: each container's sandbox, by container name; default
    /// `SANDBOX/tasks/TASK_ID.NAME` (Mesos' default executor, Marathon's task ids).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_sandboxes: BTreeMap<String, PathBuf>,
    /// Without a root filesystem, mount absolute container paths on the host itself.
    #[serde(default)]
    pub allow_host_paths: bool,
}

/// What `prepare` did, volume by volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareReply {
    pub task_id: String,
    pub volumes: Vec<PreparedVolume>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreparedVolume {
    /// The engine's volume name, which is the persistence id `APP#CONTAINERPATH#UUID`.
    pub volume: String,
    /// The app volume's `containerPath`, or the pod volume's `name`.
    pub container_path: String,
    pub origin: Origin,
    /// Bytes.
    pub size: Option<u64>,
    /// Every place the volume is mounted for this task.
    pub mounts: Vec<MountPoint>,
}

/// Where a prepared volume came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Origin {
    /// Newly reserved and created.
    Created,
    /// This task's own reservation: a relaunch, or a retried prepare.
    Relaunched,
    /// A detached reservation of a scaled-down instance of the same app.
    Adopted { from_task: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountPoint {
    pub path: PathBuf,
    pub read_only: bool,
}

/// What `cleanup` did, volume by volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupReply {
    pub task_id: String,
    pub volumes: Vec<CleanedVolume>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanedVolume {
    pub volume: String,
    pub container_path: Option<String>,
    pub unmounted: Vec<PathBuf>,
    /// Publications outside the task's sandbox and root filesystems, left in place.
    pub kept: Vec<String>,
    /// The volume's state afterwards: `detached` once nothing holds it.
    pub state: String,
}

/// Every error reply: a message, and for a definition that breaks Marathon's rules, each
/// violation with its JSON path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
    /// A stable word, as the admin API uses: `invalid_input`, `forbidden`, `no_capacity`, ...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}
