//! Who is calling the engine: the front-end an operation came through, and the front-end a
//! volume belongs to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::engine::error::InputError;

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
