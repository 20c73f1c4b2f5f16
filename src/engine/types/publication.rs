//! Where a volume is published (a mount target, a reference a caller holds) and the
//! publication records a volume keeps.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::VolumeName;

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
