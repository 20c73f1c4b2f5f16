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

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};

/// Marathon's default, and the highest value it accepts, for `minimumHealthCapacity` of a
/// stateful app: old instances must stop before new ones can take over their volumes.
const STATEFUL_MAX_MINIMUM_HEALTH_CAPACITY: f64 = 0.5;

const APP_PERSISTENT_VOLUME_FIELDS: &[&str] = &["containerPath", "mode", "persistent"];
const APP_ALIAS_VOLUME_FIELDS: &[&str] = &["containerPath", "hostPath", "mode"];
const POD_PERSISTENT_VOLUME_FIELDS: &[&str] = &["name", "persistent"];
const POD_VOLUME_MOUNT_FIELDS: &[&str] = &["name", "mountPath", "readOnly"];
const PERSISTENT_INFO_FIELDS: &[&str] = &["type", "size", "maxSize", "profileName", "constraints"];

/// Appended when an app's persistent volume has a nested or absolute `containerPath`.
const ALIAS_HINT: &str = "; to mount at an absolute or nested path, add a second volume with that \
                          containerPath and a hostPath naming this volume";

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
    pub kind: VolumeKind,
    pub size_mib: u64,
    /// Only for [`VolumeKind::Mount`]: the largest mount disk to consider; never below `size_mib`.
    pub max_size_mib: Option<u64>,
    /// Marathon's `profileName`: only disks with this profile qualify.
    pub profile: Option<String>,
    /// All must hold for a disk path to qualify.
    pub constraints: Vec<PathConstraint>,
}

/// The Mesos disk resource type backing a persistent volume (`persistent.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A directory on the agent's root disk; Marathon's default.
    #[default]
    Root,
    /// A directory on an additional disk.
    Path,
    /// A whole mounted disk, used exclusively.
    Mount,
}

impl VolumeKind {
    /// The spelling Marathon uses in `persistent.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Root => "root",
            VolumeKind::Path => "path",
            VolumeKind::Mount => "mount",
        }
    }

    fn from_marathon(value: &str) -> Option<Self> {
        match value {
            "root" => Some(VolumeKind::Root),
            "path" => Some(VolumeKind::Path),
            "mount" => Some(VolumeKind::Mount),
            _ => None,
        }
    }
}

impl fmt::Display for VolumeKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// How a [`PathConstraint`] treats a disk path its pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ConstraintOp {
    /// The disk path must match.
    Like,
    /// The disk path must not match.
    Unlike,
}

impl ConstraintOp {
    /// The spelling Marathon uses in a constraint triple.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintOp::Like => "LIKE",
            ConstraintOp::Unlike => "UNLIKE",
        }
    }

    fn from_marathon(value: &str) -> Option<Self> {
        match value {
            "LIKE" => Some(ConstraintOp::Like),
            "UNLIKE" => Some(ConstraintOp::Unlike),
            _ => None,
        }
    }
}

impl fmt::Display for ConstraintOp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A `["path", "LIKE"|"UNLIKE", REGEX]` constraint on where a persistent volume may be created.
/// The pattern must match the whole disk path, as in Marathon.
#[derive(Debug, Clone, Serialize)]
pub struct PathConstraint {
    op: ConstraintOp,
    pattern: String,
    #[serde(skip)]
    whole_path: Regex,
}

impl PathConstraint {
    pub fn new(op: ConstraintOp, pattern: &str) -> Result<Self, InvalidPattern> {
        Ok(PathConstraint {
            op,
            pattern: pattern.to_owned(),
            whole_path: compile_whole_path_pattern(pattern)?,
        })
    }

    pub fn op(&self) -> ConstraintOp {
        self.op
    }

    /// The pattern as written in the definition, without anchors.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether a disk at `disk_path` satisfies this constraint.
    pub fn matches(&self, disk_path: &str) -> bool {
        let pattern_matches = self.whole_path.is_match(disk_path);
        match self.op {
            ConstraintOp::Like => pattern_matches,
            ConstraintOp::Unlike => !pattern_matches,
        }
    }
}

impl PartialEq for PathConstraint {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op && self.pattern == other.pattern
    }
}

impl Eq for PathConstraint {}

/// A constraint pattern that is not a valid regular expression.
#[derive(Debug, thiserror::Error)]
#[error("invalid path pattern {pattern:?}")]
pub struct InvalidPattern {
    pattern: String,
    #[source]
    source: regex::Error,
}

impl InvalidPattern {
    /// What is wrong with the pattern, on one line.
    pub fn reason(&self) -> String {
        match &self.source {
            // The syntax error text repeats the pattern over several lines with a caret; its last
            // line ("error: ...") is the part that reads well inside a violation message.
            regex::Error::Syntax(text) => text
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix("error: "))
                .map_or_else(|| text.replace('\n', " "), str::to_owned),
            other => other.to_string(),
        }
    }
}

/// Compiles `pattern` so that it must match a whole path, like Marathon's Java `matches()`.
fn compile_whole_path_pattern(pattern: &str) -> Result<Regex, InvalidPattern> {
    let invalid = |source| InvalidPattern {
        pattern: pattern.to_owned(),
        source,
    };
    // Compile the bare pattern first: wrapping an invalid one such as `a)(b` in `^(?:...)$` can
    // produce a valid regex with a different meaning.
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)
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

/// Marks a value that failed a check; the violation is already in [`Findings`].
struct Reported;

type Checked<T> = Result<T, Reported>;

#[derive(Default)]
struct Findings {
    violations: Vec<Violation>,
}

impl Findings {
    fn report(&mut self, path: impl Into<String>, message: impl Into<String>) -> Reported {
        self.violations.push(Violation::new(path, message));
        Reported
    }
}

/// Collects every item, so that each failing item has reported its violations.
fn all_checked<T>(results: impl IntoIterator<Item = Checked<T>>) -> Checked<Vec<T>> {
    let mut values = Vec::new();
    let mut any_failed = false;
    for result in results {
        match result {
            Ok(value) => values.push(value),
            Err(Reported) => any_failed = true,
        }
    }
    if any_failed {
        Err(Reported)
    } else {
        Ok(values)
    }
}

fn field_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn item_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// A JSON value as it appears in a message: scalars verbatim, containers by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        scalar => scalar.to_string(),
    }
}

fn quoted(text: &str) -> String {
    Value::from(text).to_string()
}

/// `null` counts as absent: Marathon writes unset optional fields that way.
fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

fn reject_unknown_fields(
    object: &Map<String, Value>,
    path: &str,
    known: &[&str],
    findings: &mut Findings,
) -> Checked<()> {
    let mut result = Ok(());
    for key in object.keys().filter(|key| !known.contains(&key.as_str())) {
        result = Err(findings.report(
            field_path(path, key),
            format!("unknown field, expected one of: {}", known.join(", ")),
        ));
    }
    result
}

fn required<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    findings: &mut Findings,
) -> Checked<&'a Value> {
    present(object, key).ok_or_else(|| findings.report(field_path(path, key), "is required"))
}

fn as_string<'a>(value: &'a Value, path: &str, findings: &mut Findings) -> Checked<&'a str> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(findings.report(path, format!("must be a string, got {}", describe(other)))),
    }
}

fn required_string<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    findings: &mut Findings,
) -> Checked<&'a str> {
    let value = required(object, key, path, findings)?;
    as_string(value, &field_path(path, key), findings)
}

fn non_empty<'a>(text: &'a str, path: &str, findings: &mut Findings) -> Checked<&'a str> {
    if text.is_empty() {
        Err(findings.report(path, "must not be empty"))
    } else {
        Ok(text)
    }
}

fn optional_bool(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
    findings: &mut Findings,
) -> Checked<Option<bool>> {
    match present(object, key) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(other) => Err(findings.report(
            field_path(path, key),
            format!("must be true or false, got {}", describe(other)),
        )),
    }
}

/// An optional array; absent reads as empty.
fn optional_array<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    findings: &mut Findings,
) -> Checked<&'a [Value]> {
    match present(object, key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(findings.report(
            field_path(path, key),
            format!("must be an array, got {}", describe(other)),
        )),
    }
}

fn mebibytes(value: &Value, path: &str, findings: &mut Findings) -> Checked<u64> {
    value.as_u64().filter(|&mib| mib > 0).ok_or_else(|| {
        findings.report(
            path,
            format!(
                "must be a positive integer number of MiB, got {}",
                describe(value)
            ),
        )
    })
}

/// Names that become a directory of their own: `data`, not `/data`, `var/data`, `..` or `.`.
fn check_single_segment(
    name: &str,
    path: &str,
    hint: &str,
    findings: &mut Findings,
) -> Checked<()> {
    non_empty(name, path, findings)?;
    if name.contains('/') || name == "." || name == ".." {
        return Err(findings.report(
            path,
            format!(
                "must be a single relative path segment like \"data\", got {}{hint}",
                quoted(name)
            ),
        ));
    }
    Ok(())
}

/// Mount points inside a container: absolute or sandbox-relative, but never climbing with `..`.
fn mount_point(text: &str, path: &str, findings: &mut Findings) -> Checked<PathBuf> {
    non_empty(text, path, findings)?;
    let mount_point = Path::new(text);
    if mount_point
        .components()
        .any(|component| component == Component::ParentDir)
    {
        return Err(findings.report(
            path,
            format!("must not contain \"..\" segments, got {}", quoted(text)),
        ));
    }
    Ok(mount_point.to_path_buf())
}

fn read_only_from_mode(
    volume: &Map<String, Value>,
    path: &str,
    findings: &mut Findings,
) -> Checked<bool> {
    match present(volume, "mode") {
        None => Ok(false),
        Some(Value::String(mode)) if mode == "RW" => Ok(false),
        Some(Value::String(mode)) if mode == "RO" => Ok(true),
        Some(other) => Err(findings.report(
            field_path(path, "mode"),
            format!("must be \"RW\" or \"RO\", got {}", describe(other)),
        )),
    }
}

fn parse_id(root: &Map<String, Value>, findings: &mut Findings) -> Checked<String> {
    let id = required_string(root, "id", "", findings)?;
    Ok(non_empty(id, "id", findings)?.to_owned())
}

/// The `persistent` object shared by app and pod volumes.
fn parse_persistent_info(
    name: Checked<&str>,
    persistent: &Value,
    path: &str,
    findings: &mut Findings,
) -> Checked<PersistentVolumeSpec> {
    let Value::Object(info) = persistent else {
        return Err(findings.report(
            path,
            format!("must be an object, got {}", describe(persistent)),
        ));
    };
    let known_fields = reject_unknown_fields(info, path, PERSISTENT_INFO_FIELDS, findings);

    let kind = match present(info, "type") {
        None => Ok(VolumeKind::default()),
        Some(value) => value
            .as_str()
            .and_then(VolumeKind::from_marathon)
            .ok_or_else(|| {
                findings.report(
                    field_path(path, "type"),
                    format!(
                        "must be one of \"root\", \"path\", \"mount\", got {}",
                        describe(value)
                    ),
                )
            }),
    };
    let size_mib = required(info, "size", path, findings)
        .and_then(|size| mebibytes(size, &field_path(path, "size"), findings));
    let max_size_path = field_path(path, "maxSize");
    let mut max_size_mib = present(info, "maxSize")
        .map(|max_size| mebibytes(max_size, &max_size_path, findings))
        .transpose();
    if let (Ok(kind), Ok(Some(_))) = (&kind, &max_size_mib)
        && *kind != VolumeKind::Mount
    {
        max_size_mib = Err(findings.report(
            &max_size_path,
            format!(
                "is only allowed for type \"mount\", this volume is type {}",
                quoted(kind.as_str())
            ),
        ));
    }
    if let (Ok(size), Ok(Some(max_size))) = (&size_mib, &max_size_mib)
        && max_size < size
    {
        max_size_mib = Err(findings.report(
            &max_size_path,
            format!("must not be smaller than size ({size} MiB), got {max_size}"),
        ));
    }
    let profile = match present(info, "profileName") {
        None => Ok(None),
        Some(value) => {
            let profile_path = field_path(path, "profileName");
            as_string(value, &profile_path, findings)
                .and_then(|profile| non_empty(profile, &profile_path, findings))
                .map(|profile| Some(profile.to_owned()))
        }
    };
    let constraints = optional_array(info, "constraints", path, findings).and_then(|items| {
        let constraints_path = field_path(path, "constraints");
        all_checked(items.iter().enumerate().map(|(index, item)| {
            parse_path_constraint(item, &item_path(&constraints_path, index), findings)
        }))
    });

    let (Ok(name), Ok(()), Ok(kind), Ok(size_mib), Ok(max_size_mib), Ok(profile), Ok(constraints)) = (
        name,
        known_fields,
        kind,
        size_mib,
        max_size_mib,
        profile,
        constraints,
    ) else {
        return Err(Reported);
    };
    Ok(PersistentVolumeSpec {
        name: name.to_owned(),
        kind,
        size_mib,
        max_size_mib,
        profile,
        constraints,
    })
}

/// One `["path", "LIKE"|"UNLIKE", REGEX]` triple.
fn parse_path_constraint(
    constraint: &Value,
    path: &str,
    findings: &mut Findings,
) -> Checked<PathConstraint> {
    const SHAPE: &str = "[\"path\", \"LIKE\"|\"UNLIKE\", REGEX]";
    let Value::Array(parts) = constraint else {
        return Err(findings.report(
            path,
            format!("must be a triple {SHAPE}, got {}", describe(constraint)),
        ));
    };
    let [field, op, pattern] = parts.as_slice() else {
        return Err(findings.report(
            path,
            format!("must be a triple {SHAPE}, got {} elements", parts.len()),
        ));
    };

    let field = match field.as_str() {
        Some("path") => Ok(()),
        _ => Err(findings.report(
            item_path(path, 0),
            format!(
                "only \"path\" constraints are supported on volumes, got {}",
                describe(field)
            ),
        )),
    };
    let op = op
        .as_str()
        .and_then(ConstraintOp::from_marathon)
        .ok_or_else(|| {
            findings.report(
                item_path(path, 1),
                format!("must be \"LIKE\" or \"UNLIKE\", got {}", describe(op)),
            )
        });
    let pattern_path = item_path(path, 2);
    let pattern = as_string(pattern, &pattern_path, findings).and_then(|pattern| {
        compile_whole_path_pattern(pattern)
            .map(|whole_path| (pattern, whole_path))
            .map_err(|error| {
                findings.report(
                    &pattern_path,
                    format!("is not a valid regular expression: {}", error.reason()),
                )
            })
    });

    let (Ok(()), Ok(op), Ok((pattern, whole_path))) = (field, op, pattern) else {
        return Err(Reported);
    };
    Ok(PathConstraint {
        op,
        pattern: pattern.to_owned(),
        whole_path,
    })
}

/// Marathon's rules for apps and pods with persistent volumes: an unreachable instance keeps its
/// volumes (no replacement elsewhere), and upgrades stop old instances before starting new ones.
fn check_stateful_scheduling(
    parent: &Map<String, Value>,
    parent_path: &str,
    upgrade_key: &str,
    owner: &str,
    findings: &mut Findings,
) {
    let unreachable_path = field_path(parent_path, "unreachableStrategy");
    match present(parent, "unreachableStrategy") {
        Some(Value::String(strategy)) if strategy == "disabled" => {}
        None => {
            findings.report(
                unreachable_path,
                format!("must be \"disabled\" for {owner} with persistent volumes, but is absent"),
            );
        }
        Some(other) => {
            findings.report(
                unreachable_path,
                format!(
                    "must be \"disabled\" for {owner} with persistent volumes, got {}",
                    describe(other)
                ),
            );
        }
    }

    // Absent values take Marathon's stateful defaults (0.5 and 0), which pass.
    let upgrade_path = field_path(parent_path, upgrade_key);
    let upgrade = match present(parent, upgrade_key) {
        None => return,
        Some(Value::Object(upgrade)) => upgrade,
        Some(other) => {
            findings.report(
                upgrade_path,
                format!("must be an object, got {}", describe(other)),
            );
            return;
        }
    };
    if let Some(capacity) =
        capacity_fraction(upgrade, "minimumHealthCapacity", &upgrade_path, findings)
        && capacity > STATEFUL_MAX_MINIMUM_HEALTH_CAPACITY
    {
        findings.report(
            field_path(&upgrade_path, "minimumHealthCapacity"),
            format!(
                "must be at most {STATEFUL_MAX_MINIMUM_HEALTH_CAPACITY} for {owner} with \
                 persistent volumes, got {capacity}"
            ),
        );
    }
    if let Some(capacity) =
        capacity_fraction(upgrade, "maximumOverCapacity", &upgrade_path, findings)
        && capacity != 0.0
    {
        findings.report(
            field_path(&upgrade_path, "maximumOverCapacity"),
            format!("must be 0 for {owner} with persistent volumes, got {capacity}"),
        );
    }
}

/// A number between 0 and 1, or `None` when absent or already reported.
fn capacity_fraction(
    upgrade: &Map<String, Value>,
    key: &str,
    path: &str,
    findings: &mut Findings,
) -> Option<f64> {
    let value = present(upgrade, key)?;
    match value.as_f64() {
        Some(fraction) if (0.0..=1.0).contains(&fraction) => Some(fraction),
        _ => {
            findings.report(
                field_path(path, key),
                format!("must be a number between 0 and 1, got {}", describe(value)),
            );
            None
        }
    }
}

/// How berth treats one entry of an app's `container.volumes`.
enum AppVolumeRole<'a> {
    /// Carries the `persistent` value.
    Persistent(&'a Value),
    /// A relative `hostPath`: must name one of the app's persistent volumes.
    Alias,
    Unmanaged(UnmanagedKind),
}

fn app_volume_role(volume: &Map<String, Value>) -> AppVolumeRole<'_> {
    if let Some(persistent) = volume.get("persistent") {
        AppVolumeRole::Persistent(persistent)
    } else if volume.contains_key("external") {
        AppVolumeRole::Unmanaged(UnmanagedKind::External)
    } else if volume.contains_key("secret") {
        AppVolumeRole::Unmanaged(UnmanagedKind::Secret)
    } else {
        match present(volume, "hostPath") {
            Some(Value::String(host_path)) if host_path.starts_with('/') => {
                AppVolumeRole::Unmanaged(UnmanagedKind::HostBind {
                    host_path: host_path.clone(),
                })
            }
            Some(_) => AppVolumeRole::Alias,
            None => AppVolumeRole::Unmanaged(UnmanagedKind::Other),
        }
    }
}

fn parse_app(root: &Map<String, Value>, findings: &mut Findings) -> Checked<AppSpec> {
    let id = parse_id(root, findings);
    if root.contains_key("volumes") {
        findings.report(
            "volumes",
            "apps declare volumes in container.volumes; a top-level volumes array belongs to a pod, \
             which also needs a containers array",
        );
    }
    let volumes = match present(root, "container") {
        None => Ok(&[][..]),
        Some(Value::Object(container)) => {
            optional_array(container, "volumes", "container", findings)
        }
        Some(other) => Err(findings.report(
            "container",
            format!("must be an object, got {}", describe(other)),
        )),
    };
    let volumes = volumes.unwrap_or(&[]);

    let mut persistent_volumes = Vec::new();
    let mut persistent_names: Vec<&str> = Vec::new();
    let mut aliases = Vec::new();
    let mut unmanaged_volumes = Vec::new();
    let mut container_path_users: HashMap<&str, String> = HashMap::new();
    for (index, volume) in volumes.iter().enumerate() {
        let path = item_path("container.volumes", index);
        let Value::Object(volume) = volume else {
            findings.report(
                &path,
                format!("must be an object, got {}", describe(volume)),
            );
            continue;
        };
        let container_path = volume.get("containerPath").and_then(Value::as_str);
        if let Some(container_path) = container_path {
            if let Some(first_user) = container_path_users.get(container_path) {
                findings.report(
                    field_path(&path, "containerPath"),
                    format!("{} is already used by {first_user}", quoted(container_path)),
                );
            } else {
                container_path_users.insert(container_path, path.clone());
            }
        }
        match app_volume_role(volume) {
            AppVolumeRole::Persistent(persistent) => {
                // Known even when the rest of the volume is broken, so that its aliases still
                // resolve and each mistake is reported once.
                persistent_names.extend(container_path);
                persistent_volumes.push(parse_app_persistent_volume(
                    volume, persistent, &path, findings,
                ));
            }
            AppVolumeRole::Alias => aliases.push((path, volume)),
            AppVolumeRole::Unmanaged(kind) => {
                unmanaged_volumes.push(UnmanagedVolume { path, kind })
            }
        }
    }
    let alias_mounts = all_checked(
        aliases
            .iter()
            .map(|(path, volume)| parse_alias_mount(volume, path, &persistent_names, findings)),
    );
    if !persistent_volumes.is_empty() {
        check_stateful_scheduling(root, "", "upgradeStrategy", "an app", findings);
    }

    // Anything reported fails the whole definition in `parse_definition`; these are only the
    // parts a spec cannot be built without.
    let (Ok(id), Ok(persistent_volumes), Ok(alias_mounts)) =
        (id, all_checked(persistent_volumes), alias_mounts)
    else {
        return Err(Reported);
    };
    Ok(AppSpec {
        id,
        persistent_volumes,
        alias_mounts,
        unmanaged_volumes,
    })
}

fn parse_app_persistent_volume(
    volume: &Map<String, Value>,
    persistent: &Value,
    path: &str,
    findings: &mut Findings,
) -> Checked<PersistentVolumeSpec> {
    let known_fields = reject_unknown_fields(volume, path, APP_PERSISTENT_VOLUME_FIELDS, findings);
    let container_path_path = field_path(path, "containerPath");
    let container_path =
        required_string(volume, "containerPath", path, findings).and_then(|name| {
            check_single_segment(name, &container_path_path, ALIAS_HINT, findings).map(|()| name)
        });
    let mode = match present(volume, "mode") {
        None => Ok(()),
        Some(Value::String(mode)) if mode == "RW" => Ok(()),
        Some(other) => Err(findings.report(
            field_path(path, "mode"),
            format!(
                "persistent volumes are read-write only: must be \"RW\", got {}",
                describe(other)
            ),
        )),
    };
    let spec = parse_persistent_info(
        container_path,
        persistent,
        &field_path(path, "persistent"),
        findings,
    );
    known_fields?;
    mode?;
    spec
}

fn parse_alias_mount(
    volume: &Map<String, Value>,
    path: &str,
    persistent_names: &[&str],
    findings: &mut Findings,
) -> Checked<AliasMount> {
    let known_fields = reject_unknown_fields(volume, path, APP_ALIAS_VOLUME_FIELDS, findings);
    let container_path = required_string(volume, "containerPath", path, findings)
        .and_then(|text| mount_point(text, &field_path(path, "containerPath"), findings));
    let host_path_path = field_path(path, "hostPath");
    let target = required_string(volume, "hostPath", path, findings).and_then(|host_path| {
        if persistent_names.contains(&host_path) {
            return Ok(host_path);
        }
        let declared = if persistent_names.is_empty() {
            "this app declares none".to_owned()
        } else {
            let names: Vec<String> = persistent_names.iter().map(|name| quoted(name)).collect();
            format!("declared: {}", names.join(", "))
        };
        Err(findings.report(
            &host_path_path,
            format!(
                "{} does not name a persistent volume of this app; a relative hostPath must equal \
                 the containerPath of one ({declared}), an absolute one binds a host directory",
                quoted(host_path)
            ),
        ))
    });
    let read_only = read_only_from_mode(volume, path, findings);

    let (Ok(()), Ok(container_path), Ok(target), Ok(read_only)) =
        (known_fields, container_path, target, read_only)
    else {
        return Err(Reported);
    };
    Ok(AliasMount {
        volume: target.to_owned(),
        container_path,
        read_only,
    })
}

/// A pod-level volume name and whether berth manages the volume.
struct DeclaredPodVolume {
    path: String,
    persistent: bool,
}

fn parse_pod(root: &Map<String, Value>, findings: &mut Findings) -> Checked<PodSpec> {
    let id = parse_id(root, findings);
    let volumes = optional_array(root, "volumes", "", findings);

    let mut declared: HashMap<&str, DeclaredPodVolume> = HashMap::new();
    let mut persistent_volumes = Vec::new();
    let mut unmanaged_volumes = Vec::new();
    for (index, volume) in volumes.unwrap_or(&[]).iter().enumerate() {
        let path = item_path("volumes", index);
        let Value::Object(volume) = volume else {
            findings.report(
                &path,
                format!("must be an object, got {}", describe(volume)),
            );
            continue;
        };
        let persistent = volume.get("persistent");
        let name_path = field_path(&path, "name");
        let name = required_string(volume, "name", &path, findings)
            .and_then(|name| non_empty(name, &name_path, findings));
        let name = name.and_then(|name| match declared.get(name) {
            Some(first) => Err(findings.report(
                &name_path,
                format!("{} is already declared by {}", quoted(name), first.path),
            )),
            None => {
                declared.insert(
                    name,
                    DeclaredPodVolume {
                        path: path.clone(),
                        persistent: persistent.is_some(),
                    },
                );
                Ok(name)
            }
        });

        if let Some(persistent) = persistent {
            let known_fields =
                reject_unknown_fields(volume, &path, POD_PERSISTENT_VOLUME_FIELDS, findings);
            let name = name.and_then(|name| {
                check_single_segment(name, &name_path, "", findings).map(|()| name)
            });
            let spec =
                parse_persistent_info(name, persistent, &field_path(&path, "persistent"), findings);
            persistent_volumes.push(known_fields.and(spec));
        } else {
            let kind = if let Some(host) = present(volume, "host") {
                match host {
                    Value::String(host_path) => UnmanagedKind::HostBind {
                        host_path: host_path.clone(),
                    },
                    other => {
                        findings.report(
                            field_path(&path, "host"),
                            format!("must be a string, got {}", describe(other)),
                        );
                        continue;
                    }
                }
            } else if volume.contains_key("secret") {
                UnmanagedKind::Secret
            } else {
                UnmanagedKind::Ephemeral
            };
            unmanaged_volumes.push(UnmanagedVolume { path, kind });
        }
    }

    let mounts = match present(root, "containers") {
        Some(Value::Array(containers)) => {
            all_checked(containers.iter().enumerate().map(|(index, container)| {
                parse_container_mounts(
                    container,
                    &item_path("containers", index),
                    &declared,
                    findings,
                )
            }))
            .map(|per_container| per_container.into_iter().flatten().collect())
        }
        other => Err(findings.report(
            "containers",
            format!(
                "must be an array, got {}",
                other.map_or_else(|| "null".to_owned(), describe)
            ),
        )),
    };
    if !persistent_volumes.is_empty() {
        match present(root, "scheduling") {
            None => {
                check_stateful_scheduling(&Map::new(), "scheduling", "upgrade", "a pod", findings)
            }
            Some(Value::Object(scheduling)) => {
                check_stateful_scheduling(scheduling, "scheduling", "upgrade", "a pod", findings);
            }
            Some(other) => {
                findings.report(
                    "scheduling",
                    format!("must be an object, got {}", describe(other)),
                );
            }
        }
    }

    let (Ok(id), Ok(persistent_volumes), Ok(mounts)) =
        (id, all_checked(persistent_volumes), mounts)
    else {
        return Err(Reported);
    };
    Ok(PodSpec {
        id,
        persistent_volumes,
        mounts,
        unmanaged_volumes,
    })
}

/// The container's mounts of persistent volumes; mounts of other volumes are checked, then dropped.
fn parse_container_mounts(
    container: &Value,
    path: &str,
    declared: &HashMap<&str, DeclaredPodVolume>,
    findings: &mut Findings,
) -> Checked<Vec<PodMount>> {
    let Value::Object(container) = container else {
        return Err(findings.report(
            path,
            format!("must be an object, got {}", describe(container)),
        ));
    };
    let volume_mounts = optional_array(container, "volumeMounts", path, findings)?;
    if volume_mounts.is_empty() {
        return Ok(Vec::new());
    }
    let container_name = required_string(container, "name", path, findings)
        .and_then(|name| non_empty(name, &field_path(path, "name"), findings));
    let mounts_path = field_path(path, "volumeMounts");
    let mounts = all_checked(volume_mounts.iter().enumerate().map(|(index, mount)| {
        parse_volume_mount(mount, &item_path(&mounts_path, index), declared, findings)
    }))?;
    let container_name = container_name?;
    Ok(mounts
        .into_iter()
        .flatten()
        .map(|mount| PodMount {
            container: container_name.to_owned(),
            volume: mount.volume.to_owned(),
            mount_path: mount.mount_path,
            read_only: mount.read_only,
        })
        .collect())
}

/// A `volumeMounts` entry of a persistent volume, before it is tied to its container.
struct PersistentMount<'a> {
    volume: &'a str,
    mount_path: PathBuf,
    read_only: bool,
}

/// A checked `volumeMounts` entry; `None` when it mounts a volume berth does not manage.
fn parse_volume_mount<'a>(
    mount: &'a Value,
    path: &str,
    declared: &HashMap<&str, DeclaredPodVolume>,
    findings: &mut Findings,
) -> Checked<Option<PersistentMount<'a>>> {
    let Value::Object(mount) = mount else {
        return Err(findings.report(path, format!("must be an object, got {}", describe(mount))));
    };
    let known_fields = reject_unknown_fields(mount, path, POD_VOLUME_MOUNT_FIELDS, findings);
    let name_path = field_path(path, "name");
    let volume =
        required_string(mount, "name", path, findings).and_then(|name| match declared.get(name) {
            Some(volume) => Ok((name, volume.persistent)),
            None => {
                let mut names: Vec<String> = declared.keys().map(|name| quoted(name)).collect();
                names.sort();
                let declared = if names.is_empty() {
                    "this pod declares no volumes".to_owned()
                } else {
                    format!("declared: {}", names.join(", "))
                };
                Err(findings.report(
                    &name_path,
                    format!(
                        "no volume named {} is declared in this pod's volumes ({declared})",
                        quoted(name)
                    ),
                ))
            }
        });
    let mount_path = required_string(mount, "mountPath", path, findings)
        .and_then(|text| mount_point(text, &field_path(path, "mountPath"), findings));
    let read_only = optional_bool(mount, "readOnly", path, findings);

    let (Ok(()), Ok((volume, persistent)), Ok(mount_path), Ok(read_only)) =
        (known_fields, volume, mount_path, read_only)
    else {
        return Err(Reported);
    };
    Ok(persistent.then(|| PersistentMount {
        volume,
        mount_path,
        read_only: read_only.unwrap_or(false),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MYSQL_APP: &str = include_str!("../../tests/fixtures/marathon/stateful-mysql.json");
    const POSTGRES_APP: &str = include_str!("../../tests/fixtures/marathon/stateful-postgres.json");
    const PERSISTENT_POD: &str =
        include_str!("../../tests/fixtures/marathon/persistent-volume-pod.json");

    fn parse_ok(json: &str) -> Definition {
        match parse_definition(json) {
            Ok(definition) => definition,
            Err(violations) => panic!("expected a valid definition, got {violations:#?}"),
        }
    }

    fn app(json: &str) -> AppSpec {
        match parse_ok(json) {
            Definition::App(app) => app,
            other => panic!("expected an app, got {other:#?}"),
        }
    }

    fn pod(json: &str) -> PodSpec {
        match parse_ok(json) {
            Definition::Pod(pod) => pod,
            other => panic!("expected a pod, got {other:#?}"),
        }
    }

    fn violations_of(json: &str) -> Vec<Violation> {
        match parse_definition(json) {
            Ok(definition) => panic!("expected violations, got {definition:#?}"),
            Err(violations) => violations,
        }
    }

    fn edited(fixture: &str, edit: impl FnOnce(&mut Value)) -> String {
        let mut document: Value = serde_json::from_str(fixture).unwrap();
        edit(&mut document);
        document.to_string()
    }

    /// Sets `key` in the object at JSON pointer `object`.
    fn set(document: &mut Value, object: &str, key: &str, value: Value) {
        document
            .pointer_mut(object)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("no object at {object}"))
            .insert(key.to_owned(), value);
    }

    fn remove(document: &mut Value, object: &str, key: &str) {
        let removed = document
            .pointer_mut(object)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("no object at {object}"))
            .remove(key);
        assert!(removed.is_some(), "{object} has no {key}");
    }

    #[test]
    fn stateful_mysql_example_yields_volume_and_alias() {
        let app = app(MYSQL_APP);
        assert_eq!(app.id, "/mysql");
        assert_eq!(
            app.persistent_volumes,
            vec![PersistentVolumeSpec {
                name: "mysqldata".to_owned(),
                kind: VolumeKind::Root,
                size_mib: 1000,
                max_size_mib: None,
                profile: None,
                constraints: vec![],
            }]
        );
        assert_eq!(
            app.alias_mounts,
            vec![AliasMount {
                volume: "mysqldata".to_owned(),
                container_path: PathBuf::from("/var/lib/mysql"),
                read_only: false,
            }]
        );
        assert_eq!(app.unmanaged_volumes, vec![]);
    }

    #[test]
    fn stateful_postgres_example_yields_mount_volume_with_constraint() {
        let app = app(POSTGRES_APP);
        assert_eq!(app.id, "/postgres");
        assert_eq!(
            app.persistent_volumes,
            vec![PersistentVolumeSpec {
                name: "pgdata".to_owned(),
                kind: VolumeKind::Mount,
                size_mib: 524_288,
                max_size_mib: Some(1_048_576),
                profile: None,
                constraints: vec![PathConstraint::new(ConstraintOp::Like, "/mnt/ssd-.+").unwrap()],
            }]
        );
        assert_eq!(app.alias_mounts, vec![]);
        let constraint = &app.persistent_volumes[0].constraints[0];
        assert!(constraint.matches("/mnt/ssd-0"));
        assert!(!constraint.matches("/mnt/hdd-0"));
        assert!(!constraint.matches("/mnt/ssd-"), "`.+` needs a character");
        assert!(
            !constraint.matches("/data/mnt/ssd-0"),
            "must match from the start"
        );
    }

    #[test]
    fn persistent_volume_pod_example_yields_volume_and_both_mounts() {
        let pod = pod(PERSISTENT_POD);
        assert_eq!(pod.id, "/persistent-volume-pod");
        assert_eq!(
            pod.persistent_volumes,
            vec![PersistentVolumeSpec {
                name: "pst".to_owned(),
                kind: VolumeKind::Root,
                size_mib: 10,
                max_size_mib: None,
                profile: None,
                constraints: vec![],
            }]
        );
        let mount = |container: &str, mount_path: &str| PodMount {
            container: container.to_owned(),
            volume: "pst".to_owned(),
            mount_path: PathBuf::from(mount_path),
            read_only: false,
        };
        assert_eq!(
            pod.mounts,
            vec![mount("container1", "pst1"), mount("container2", "pst2")]
        );
        assert_eq!(pod.unmanaged_volumes, vec![]);
    }

    enum Input {
        Edited(&'static str, fn(&mut Value)),
        Raw(&'static str),
    }

    struct BrokenCase {
        name: &'static str,
        input: Input,
        path: &'static str,
        message_fragment: &'static str,
    }

    const MYSQL_VOLUME: &str = "/container/volumes/0";
    const MYSQL_PERSISTENT: &str = "/container/volumes/0/persistent";
    const MYSQL_ALIAS: &str = "/container/volumes/1";
    const POSTGRES_VOLUME: &str = "/container/volumes/0";
    const POSTGRES_PERSISTENT: &str = "/container/volumes/0/persistent";

    fn broken_cases() -> Vec<BrokenCase> {
        use Input::{Edited, Raw};
        vec![
            BrokenCase {
                name: "absolute containerPath",
                input: Edited(POSTGRES_APP, |doc| {
                    set(doc, POSTGRES_VOLUME, "containerPath", json!("/data"))
                }),
                path: "container.volumes[0].containerPath",
                message_fragment: "must be a single relative path segment like \"data\", got \"/data\"",
            },
            BrokenCase {
                name: "nested containerPath",
                input: Edited(POSTGRES_APP, |doc| {
                    set(doc, POSTGRES_VOLUME, "containerPath", json!("var/data"))
                }),
                path: "container.volumes[0].containerPath",
                message_fragment: "got \"var/data\"",
            },
            BrokenCase {
                name: "climbing containerPath",
                input: Edited(POSTGRES_APP, |doc| {
                    set(doc, POSTGRES_VOLUME, "containerPath", json!("../x"))
                }),
                path: "container.volumes[0].containerPath",
                message_fragment: "single relative path segment",
            },
            BrokenCase {
                name: "containerPath ..",
                input: Edited(POSTGRES_APP, |doc| {
                    set(doc, POSTGRES_VOLUME, "containerPath", json!(".."))
                }),
                path: "container.volumes[0].containerPath",
                message_fragment: "single relative path segment",
            },
            BrokenCase {
                name: "containerPath .",
                input: Edited(POSTGRES_APP, |doc| {
                    set(doc, POSTGRES_VOLUME, "containerPath", json!("."))
                }),
                path: "container.volumes[0].containerPath",
                message_fragment: "single relative path segment",
            },
            BrokenCase {
                name: "empty containerPath",
                input: Edited(POSTGRES_APP, |doc| {
                    set(doc, POSTGRES_VOLUME, "containerPath", json!(""))
                }),
                path: "container.volumes[0].containerPath",
                message_fragment: "must not be empty",
            },
            BrokenCase {
                name: "read-only persistent volume",
                input: Edited(MYSQL_APP, |doc| set(doc, MYSQL_VOLUME, "mode", json!("RO"))),
                path: "container.volumes[0].mode",
                message_fragment: "read-write only: must be \"RW\", got \"RO\"",
            },
            BrokenCase {
                name: "unknown disk type",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_PERSISTENT, "type", json!("tape"))
                }),
                path: "container.volumes[0].persistent.type",
                message_fragment: "must be one of \"root\", \"path\", \"mount\", got \"tape\"",
            },
            BrokenCase {
                name: "zero size",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_PERSISTENT, "size", json!(0))
                }),
                path: "container.volumes[0].persistent.size",
                message_fragment: "must be a positive integer number of MiB, got 0",
            },
            BrokenCase {
                name: "negative size",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_PERSISTENT, "size", json!(-1))
                }),
                path: "container.volumes[0].persistent.size",
                message_fragment: "must be a positive integer number of MiB, got -1",
            },
            BrokenCase {
                name: "size in words",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_PERSISTENT, "size", json!("ten"))
                }),
                path: "container.volumes[0].persistent.size",
                message_fragment: "must be a positive integer number of MiB, got \"ten\"",
            },
            BrokenCase {
                name: "fractional size",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_PERSISTENT, "size", json!(1.5))
                }),
                path: "container.volumes[0].persistent.size",
                message_fragment: "got 1.5",
            },
            BrokenCase {
                name: "missing size",
                input: Edited(MYSQL_APP, |doc| remove(doc, MYSQL_PERSISTENT, "size")),
                path: "container.volumes[0].persistent.size",
                message_fragment: "is required",
            },
            BrokenCase {
                name: "maxSize on a root volume",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_PERSISTENT, "maxSize", json!(2000))
                }),
                path: "container.volumes[0].persistent.maxSize",
                message_fragment: "only allowed for type \"mount\", this volume is type \"root\"",
            },
            BrokenCase {
                name: "maxSize below size",
                input: Edited(POSTGRES_APP, |doc| {
                    set(doc, POSTGRES_PERSISTENT, "maxSize", json!(1000))
                }),
                path: "container.volumes[0].persistent.maxSize",
                message_fragment: "must not be smaller than size (524288 MiB), got 1000",
            },
            BrokenCase {
                name: "profileName not a string",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_PERSISTENT, "profileName", json!(7))
                }),
                path: "container.volumes[0].persistent.profileName",
                message_fragment: "must be a string, got 7",
            },
            BrokenCase {
                name: "misspelt persistent field",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_PERSISTENT, "maxsize", json!(7))
                }),
                path: "container.volumes[0].persistent.maxsize",
                message_fragment: "unknown field, expected one of: type, size, maxSize",
            },
            BrokenCase {
                name: "invalid constraint regex",
                input: Edited(POSTGRES_APP, |doc| {
                    set(
                        doc,
                        POSTGRES_PERSISTENT,
                        "constraints",
                        json!([["path", "LIKE", "/mnt/(ssd"]]),
                    )
                }),
                path: "container.volumes[0].persistent.constraints[0][2]",
                message_fragment: "is not a valid regular expression: unclosed group",
            },
            BrokenCase {
                name: "unknown constraint operator",
                input: Edited(POSTGRES_APP, |doc| {
                    set(
                        doc,
                        POSTGRES_PERSISTENT,
                        "constraints",
                        json!([["path", "MATCHES", "/mnt/ssd-.+"]]),
                    )
                }),
                path: "container.volumes[0].persistent.constraints[0][1]",
                message_fragment: "must be \"LIKE\" or \"UNLIKE\", got \"MATCHES\"",
            },
            BrokenCase {
                name: "constraint on another field",
                input: Edited(POSTGRES_APP, |doc| {
                    set(
                        doc,
                        POSTGRES_PERSISTENT,
                        "constraints",
                        json!([["hostname", "LIKE", "agent-.+"]]),
                    )
                }),
                path: "container.volumes[0].persistent.constraints[0][0]",
                message_fragment: "only \"path\" constraints are supported",
            },
            BrokenCase {
                name: "constraint pair",
                input: Edited(POSTGRES_APP, |doc| {
                    set(
                        doc,
                        POSTGRES_PERSISTENT,
                        "constraints",
                        json!([["path", "LIKE"]]),
                    )
                }),
                path: "container.volumes[0].persistent.constraints[0]",
                message_fragment: "got 2 elements",
            },
            BrokenCase {
                name: "alias naming no persistent volume",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_ALIAS, "hostPath", json!("mysql-data"))
                }),
                path: "container.volumes[1].hostPath",
                message_fragment: "\"mysql-data\" does not name a persistent volume of this app",
            },
            BrokenCase {
                name: "alias climbing out of the container",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_ALIAS, "containerPath", json!("/var/../../etc"))
                }),
                path: "container.volumes[1].containerPath",
                message_fragment: "must not contain \"..\" segments",
            },
            BrokenCase {
                name: "two volumes at one containerPath",
                input: Edited(MYSQL_APP, |doc| {
                    set(doc, MYSQL_ALIAS, "containerPath", json!("mysqldata"))
                }),
                path: "container.volumes[1].containerPath",
                message_fragment: "\"mysqldata\" is already used by container.volumes[0]",
            },
            BrokenCase {
                name: "unreachableStrategy missing",
                input: Edited(MYSQL_APP, |doc| remove(doc, "", "unreachableStrategy")),
                path: "unreachableStrategy",
                message_fragment: "must be \"disabled\" for an app with persistent volumes, but is absent",
            },
            BrokenCase {
                name: "unreachableStrategy with timeouts",
                input: Edited(MYSQL_APP, |doc| {
                    set(
                        doc,
                        "",
                        "unreachableStrategy",
                        json!({"inactiveAfterSeconds": 0}),
                    )
                }),
                path: "unreachableStrategy",
                message_fragment: "must be \"disabled\" for an app with persistent volumes, got an object",
            },
            BrokenCase {
                name: "minimumHealthCapacity above 0.5",
                input: Edited(POSTGRES_APP, |doc| {
                    set(doc, "/upgradeStrategy", "minimumHealthCapacity", json!(0.8))
                }),
                path: "upgradeStrategy.minimumHealthCapacity",
                message_fragment: "must be at most 0.5 for an app with persistent volumes, got 0.8",
            },
            BrokenCase {
                name: "maximumOverCapacity above 0",
                input: Edited(POSTGRES_APP, |doc| {
                    set(doc, "/upgradeStrategy", "maximumOverCapacity", json!(0.2))
                }),
                path: "upgradeStrategy.maximumOverCapacity",
                message_fragment: "must be 0 for an app with persistent volumes, got 0.2",
            },
            BrokenCase {
                name: "app volumes at the top level",
                input: Edited(MYSQL_APP, |doc| set(doc, "", "volumes", json!([]))),
                path: "volumes",
                message_fragment: "apps declare volumes in container.volumes",
            },
            BrokenCase {
                name: "missing id",
                input: Edited(MYSQL_APP, |doc| remove(doc, "", "id")),
                path: "id",
                message_fragment: "is required",
            },
            BrokenCase {
                name: "pod mount of an undeclared volume",
                input: Edited(PERSISTENT_POD, |doc| {
                    set(doc, "/containers/1/volumeMounts/0", "name", json!("ghost"))
                }),
                path: "containers[1].volumeMounts[0].name",
                message_fragment: "no volume named \"ghost\" is declared in this pod's volumes (declared: \"pst\")",
            },
            BrokenCase {
                name: "pod mount without a mountPath",
                input: Edited(PERSISTENT_POD, |doc| {
                    set(doc, "/containers/0/volumeMounts/0", "mountPath", json!(""))
                }),
                path: "containers[0].volumeMounts[0].mountPath",
                message_fragment: "must not be empty",
            },
            BrokenCase {
                name: "pod mount readOnly as a string",
                input: Edited(PERSISTENT_POD, |doc| {
                    set(doc, "/containers/0/volumeMounts/0", "readOnly", json!("no"))
                }),
                path: "containers[0].volumeMounts[0].readOnly",
                message_fragment: "must be true or false, got \"no\"",
            },
            BrokenCase {
                name: "pod volume declared twice",
                input: Edited(PERSISTENT_POD, |doc| {
                    doc["volumes"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"name": "pst"}))
                }),
                path: "volumes[1].name",
                message_fragment: "\"pst\" is already declared by volumes[0]",
            },
            BrokenCase {
                name: "pod without disabled unreachableStrategy",
                input: Edited(PERSISTENT_POD, |doc| {
                    remove(doc, "/scheduling", "unreachableStrategy")
                }),
                path: "scheduling.unreachableStrategy",
                message_fragment: "must be \"disabled\" for a pod with persistent volumes",
            },
            BrokenCase {
                name: "pod upgrade over capacity",
                input: Edited(PERSISTENT_POD, |doc| {
                    set(doc, "/scheduling/upgrade", "maximumOverCapacity", json!(1))
                }),
                path: "scheduling.upgrade.maximumOverCapacity",
                message_fragment: "must be 0 for a pod with persistent volumes, got 1",
            },
            BrokenCase {
                name: "pod persistent volume size in words",
                input: Edited(PERSISTENT_POD, |doc| {
                    set(doc, "/volumes/0/persistent", "size", json!("ten"))
                }),
                path: "volumes[0].persistent.size",
                message_fragment: "must be a positive integer number of MiB, got \"ten\"",
            },
            BrokenCase {
                name: "malformed JSON",
                input: Raw("{\"id\": \"/mysql\", \"container\": {"),
                path: "",
                message_fragment: "not valid JSON: EOF while parsing",
            },
            BrokenCase {
                name: "not an object",
                input: Raw("[]"),
                path: "",
                message_fragment: "must be a JSON object, got an array",
            },
        ]
    }

    #[test]
    fn broken_definitions_report_one_violation_at_the_right_path() {
        let cases = broken_cases();
        assert!(cases.len() >= 15);
        for case in cases {
            let json = match case.input {
                Input::Edited(fixture, edit) => edited(fixture, edit),
                Input::Raw(text) => text.to_owned(),
            };
            let violations = violations_of(&json);
            assert_eq!(
                violations.len(),
                1,
                "{}: expected exactly one violation, got {violations:#?}",
                case.name
            );
            let violation = &violations[0];
            assert_eq!(violation.path, case.path, "{}: wrong path", case.name);
            assert!(
                violation.message.contains(case.message_fragment),
                "{}: message {:?} lacks {:?}",
                case.name,
                violation.message,
                case.message_fragment
            );
        }
    }

    #[test]
    fn every_violation_is_reported_not_just_the_first() {
        let json = edited(MYSQL_APP, |doc| {
            set(doc, MYSQL_VOLUME, "mode", json!("RO"));
            set(doc, MYSQL_PERSISTENT, "size", json!("ten"));
            set(doc, MYSQL_ALIAS, "hostPath", json!("nothing"));
            remove(doc, "", "unreachableStrategy");
        });
        let paths: Vec<String> = violations_of(&json).into_iter().map(|v| v.path).collect();
        assert_eq!(
            paths,
            vec![
                "container.volumes[0].mode",
                "container.volumes[0].persistent.size",
                "container.volumes[1].hostPath",
                "unreachableStrategy",
            ]
        );
    }

    #[test]
    fn broken_persistent_volume_still_resolves_its_alias() {
        let json = edited(MYSQL_APP, |doc| {
            set(doc, MYSQL_PERSISTENT, "type", json!(3))
        });
        let violations = violations_of(&json);
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].path, "container.volumes[0].persistent.type");
    }

    #[test]
    fn alias_may_precede_its_persistent_volume() {
        let json = edited(MYSQL_APP, |doc| {
            doc["container"]["volumes"]
                .as_array_mut()
                .unwrap()
                .reverse();
        });
        let app = app(&json);
        assert_eq!(app.alias_mounts[0].volume, "mysqldata");
    }

    #[test]
    fn read_only_alias_is_kept_read_only() {
        let json = edited(MYSQL_APP, |doc| set(doc, MYSQL_ALIAS, "mode", json!("RO")));
        assert!(app(&json).alias_mounts[0].read_only);
    }

    #[test]
    fn absolute_host_path_is_an_unmanaged_host_bind() {
        let json = edited(MYSQL_APP, |doc| {
            doc["container"]["volumes"]
                .as_array_mut()
                .unwrap()
                .push(json!({
                    "containerPath": "/data",
                    "hostPath": "/data/x",
                    "mode": "RO"
                }));
        });
        let app = app(&json);
        assert_eq!(app.alias_mounts.len(), 1);
        let host_bind = UnmanagedVolume {
            path: "container.volumes[2]".to_owned(),
            kind: UnmanagedKind::HostBind {
                host_path: "/data/x".to_owned(),
            },
        };
        assert_eq!(
            host_bind.to_string(),
            "container.volumes[2]: host bind of /data/x, not managed by berth"
        );
        assert_eq!(app.unmanaged_volumes, vec![host_bind]);
    }

    #[test]
    fn absent_upgrade_strategy_takes_the_stateful_defaults() {
        let json = edited(MYSQL_APP, |doc| remove(doc, "", "upgradeStrategy"));
        assert_eq!(app(&json).persistent_volumes.len(), 1);
    }

    #[test]
    fn app_without_persistent_volumes_needs_no_stateful_settings() {
        let app = app(r#"{
            "id": "/prod/web",
            "cpus": 0.5,
            "upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 1},
            "container": {"volumes": [{"containerPath": "/srv", "hostPath": "/srv", "mode": "RO"}]}
        }"#);
        assert_eq!(app.id, "/prod/web");
        assert_eq!(app.persistent_volumes, vec![]);
        assert_eq!(app.unmanaged_volumes.len(), 1);
    }

    #[test]
    fn pod_mounts_of_ephemeral_volumes_are_checked_but_not_kept() {
        let json = edited(PERSISTENT_POD, |doc| {
            doc["volumes"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "scratch"}));
            doc["containers"][0]["volumeMounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "scratch", "mountPath": "/tmp/scratch"}));
        });
        let pod = pod(&json);
        assert_eq!(pod.mounts.len(), 2);
        assert_eq!(
            pod.unmanaged_volumes,
            vec![UnmanagedVolume {
                path: "volumes[1]".to_owned(),
                kind: UnmanagedKind::Ephemeral,
            }]
        );
    }

    #[test]
    fn profile_name_is_kept() {
        let json = edited(MYSQL_APP, |doc| {
            set(doc, MYSQL_PERSISTENT, "profileName", json!("fast"))
        });
        assert_eq!(
            app(&json).persistent_volumes[0].profile.as_deref(),
            Some("fast")
        );
    }

    #[test]
    fn unlike_constraint_rejects_matching_paths() {
        let constraint = PathConstraint::new(ConstraintOp::Unlike, "/mnt/hdd-.*").unwrap();
        assert!(!constraint.matches("/mnt/hdd-1"));
        assert!(constraint.matches("/mnt/ssd-1"));
        assert!(
            constraint.matches("/x/mnt/hdd-1"),
            "the pattern must match the whole path"
        );
    }

    #[test]
    fn pattern_invalid_alone_is_rejected_even_if_valid_once_anchored() {
        // `^(?:a)(b)$` compiles; `a)(b` must not.
        let error = PathConstraint::new(ConstraintOp::Like, "a)(b").unwrap_err();
        assert_eq!(error.to_string(), "invalid path pattern \"a)(b\"");
        assert!(
            error.reason().contains("unopened group"),
            "{}",
            error.reason()
        );
    }

    #[test]
    fn violation_displays_path_then_message() {
        let violation = Violation::new("container.volumes[0].mode", "must be \"RW\", got \"RO\"");
        assert_eq!(
            violation.to_string(),
            "container.volumes[0].mode: must be \"RW\", got \"RO\""
        );
        assert_eq!(
            Violation::new("", "not valid JSON").to_string(),
            "not valid JSON"
        );
    }
}
