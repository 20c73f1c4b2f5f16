//! Validation of the volumes in Marathon app and pod definitions, for `berth mesos validate`.
//! Marathon rejects a bad local persistent volume only at deploy time, one complaint at a time; this
//! reports every violation with its JSON path up front and hands the rest of berth typed specs instead
//! of raw JSON. Pure: the caller passes the JSON text in, nothing here touches disk or network.
//!
//! What berth manages: local persistent volumes (`persistent`), and in apps the "alias" volumes of the
//! documented `/var/lib/mysql` workaround, which bind a persistent volume at an absolute or nested path.
//! Everything else (host binds with an absolute `hostPath`, external, secret and ephemeral volumes)
//! is accepted and listed as unmanaged. Unknown fields elsewhere in the definition are ignored, but
//! the volume objects berth interprets are parsed strictly: unknown keys and wrong types are violations.

mod app;
mod json;
mod persistent;
mod pod;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::engine::types::VolumeSpec;

use app::parse_app;
use json::{Findings, describe};
use pod::parse_pod;

/// A Marathon definition that passed validation, reduced to what berth needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Definition {
    App(AppSpec),
    /// Detected by a top-level `containers` key.
    Pod(PodSpec),
}

impl Definition {
    /// The Marathon id as written, e.g. `/prod/mysql`.
    pub fn id(&self) -> &str {
        match self {
            Definition::App(app) => &app.id,
            Definition::Pod(pod) => &pod.id,
        }
    }

    pub fn persistent_volumes(&self) -> &[PersistentVolumeSpec] {
        match self {
            Definition::App(app) => &app.persistent_volumes,
            Definition::Pod(pod) => &pod.persistent_volumes,
        }
    }

    pub fn unmanaged_volumes(&self) -> &[UnmanagedVolume] {
        match self {
            Definition::App(app) => &app.unmanaged_volumes,
            Definition::Pod(pod) => &pod.unmanaged_volumes,
        }
    }
}

/// The volumes of a Marathon app (`container.volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppSpec {
    /// The app id as written, e.g. `/prod/mysql`.
    pub id: String,
    /// In definition order. Each is mounted at `$MESOS_SANDBOX/<name>`.
    pub persistent_volumes: Vec<PersistentVolumeSpec>,
    /// Further mount points of the persistent volumes (the `/var/lib/mysql` workaround).
    pub alias_mounts: Vec<AliasMount>,
    pub unmanaged_volumes: Vec<UnmanagedVolume>,
}

/// The volumes of a Marathon pod and where its containers mount them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodSpec {
    /// The pod id as written, e.g. `/persistent-volume-pod`.
    pub id: String,
    /// In definition order.
    pub persistent_volumes: Vec<PersistentVolumeSpec>,
    /// Mounts of persistent volumes only, in container then mount order.
    pub mounts: Vec<PodMount>,
    pub unmanaged_volumes: Vec<UnmanagedVolume>,
}

/// One local persistent volume, the part of a definition berth provisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersistentVolumeSpec {
    /// Apps: the `containerPath`, a single path segment that is also the volume's directory in the
    /// sandbox and the name alias mounts refer to. Pods: the volume's `name`, also a single segment.
    pub name: String,
    /// What the volume asks of the engine, in its one request vocabulary: the `persistent`
    /// fields (its size always set, its kind Marathon's `root` unless given) and the
    /// definition's `berth/NAME/KEY` labels.
    pub spec: VolumeSpec,
}

impl PersistentVolumeSpec {
    /// The size in Marathon's MiB, as the definition wrote it.
    pub fn size_mib(&self) -> u64 {
        self.spec.size.unwrap_or(0) >> 20
    }
}

/// An app volume that mounts a persistent volume of the same app at another path: the documented
/// workaround for the single-segment `containerPath` rule (`/var/lib/mysql` with `hostPath: "mysqldata"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AliasMount {
    /// The [`PersistentVolumeSpec::name`] of the volume mounted here (the JSON `hostPath`).
    pub volume: String,
    /// Where the volume appears in the container: absolute (`/var/lib/mysql`), or relative to the
    /// sandbox with more than one segment (`var/data`); never contains `..`.
    pub container_path: PathBuf,
    /// `mode: "RO"`.
    pub read_only: bool,
}

/// A pod container's mount of one of the pod's persistent volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodMount {
    /// The container's `name`.
    pub container: String,
    /// The [`PersistentVolumeSpec::name`] of the mounted volume.
    pub volume: String,
    /// The `mountPath` as written: absolute, or relative to the sandbox; never contains `..`.
    pub mount_path: PathBuf,
    pub read_only: bool,
}

/// A volume berth accepts but does not manage, reported so the operator knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnmanagedVolume {
    /// JSON path of the volume object, e.g. `container.volumes[2]`.
    pub path: String,
    pub kind: UnmanagedKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmanagedKind {
    /// A bind of an absolute agent path (`hostPath` in apps, `host` in pods).
    HostBind {
        host_path: String,
    },
    External,
    Secret,
    /// A pod volume with only a name: scratch space that dies with the pod.
    Ephemeral,
    /// An app volume of no kind berth recognises.
    Other,
}

impl fmt::Display for UnmanagedVolume {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let description = match &self.kind {
            UnmanagedKind::HostBind { host_path } => format!("host bind of {host_path}"),
            UnmanagedKind::External => "external volume".to_owned(),
            UnmanagedKind::Secret => "secret volume".to_owned(),
            UnmanagedKind::Ephemeral => "ephemeral volume".to_owned(),
            UnmanagedKind::Other => "volume".to_owned(),
        };
        write!(
            formatter,
            "{}: {description}, not managed by berth",
            self.path
        )
    }
}

/// One rule a definition breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Violation {
    /// JSON path of the offending value, e.g. `container.volumes[1].containerPath` or
    /// `containers[0].volumeMounts[1].name`; empty when the document as a whole is at fault.
    pub path: String,
    /// Reads as a continuation of the path: `must be "RW", got "RO"`.
    pub message: String,
}

impl Violation {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            formatter.write_str(&self.message)
        } else {
            write!(formatter, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Violation {}

/// Parses a Marathon app or pod definition and checks its volumes; on failure returns every
/// violation found, in document order.
pub fn parse_definition(json: &str) -> Result<Definition, Vec<Violation>> {
    let document: Value = serde_json::from_str(json)
        .map_err(|error| vec![Violation::new("", format!("not valid JSON: {error}"))])?;
    let Value::Object(root) = &document else {
        return Err(vec![Violation::new(
            "",
            format!(
                "a Marathon app or pod definition must be a JSON object, got {}",
                describe(&document)
            ),
        )]);
    };

    let mut findings = Findings::default();
    let parsed = if root.contains_key("containers") {
        parse_pod(root, &mut findings).map(Definition::Pod)
    } else {
        parse_app(root, &mut findings).map(Definition::App)
    };
    match (parsed, findings.violations) {
        (Ok(definition), violations) if violations.is_empty() => Ok(definition),
        (_, violations) => {
            debug_assert!(!violations.is_empty(), "a failed check must record why");
            Err(violations)
        }
    }
}
