//! The `persistent` object shared by app and pod volumes, and the scheduling rules any
//! definition with persistent volumes must follow.

use serde_json::{Map, Value};

use super::PersistentVolumeSpec;
use super::json::*;
use crate::engine::request;
use crate::engine::types::VolumeSpec;

/// Marathon's default, and the highest value it accepts, for `minimumHealthCapacity` of a
/// stateful app: old instances must stop before new ones can take over their volumes.
const STATEFUL_MAX_MINIMUM_HEALTH_CAPACITY: f64 = 0.5;

const PERSISTENT_INFO_FIELDS: &[&str] = &["type", "size", "maxSize", "profileName", "constraints"];

/// The `persistent` object shared by app and pod volumes. Each field goes through the
/// engine's request vocabulary ([`request::MARATHON_PERSISTENT`]) as text, so a bad value is
/// refused with the same reason a Docker option or a StorageClass parameter gets; only the
/// JSON shape (a number, a string, an array) is Marathon's own check.
pub(super) fn parse_persistent_info(
    name: Checked<&str>,
    persistent: &Value,
    path: &str,
    labels: &VolumeLabels,
    findings: &mut Findings,
) -> Checked<PersistentVolumeSpec> {
    let Value::Object(info) = persistent else {
        return Err(findings.report(
            path,
            format!("must be an object, got {}", describe(persistent)),
        ));
    };
    let dialect = &request::MARATHON_PERSISTENT;
    let mut result = reject_unknown_fields(info, path, PERSISTENT_INFO_FIELDS, findings);
    let size = required(info, "size", path, findings).map(|_| ());
    let mut spec = VolumeSpec::default();
    for (key, value) in info {
        if value.is_null() || !PERSISTENT_INFO_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let field = field_path(path, key);
        let text =
            match (key.as_str(), value) {
                ("size" | "maxSize", Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
                ("size" | "maxSize", other) => {
                    result = Err(findings.report(
                        field,
                        format!("must be an integer number of MiB, got {}", describe(other)),
                    ));
                    continue;
                }
                ("constraints", Value::Array(_)) => value.to_string(),
                ("constraints", other) => {
                    result = Err(findings
                        .report(field, format!("must be an array, got {}", describe(other))));
                    continue;
                }
                (_, Value::String(text)) => text.clone(),
                (_, other) => {
                    result = Err(findings
                        .report(field, format!("must be a string, got {}", describe(other))));
                    continue;
                }
            };
        if let Err(e) = dialect.apply(key, &text, &mut spec) {
            result = Err(findings.report(field, e.reason));
        }
    }
    spec.kind = spec.kind.or(dialect.default_kind);
    if let (Ok(()), Ok(())) = (&result, &size)
        && let Err(e) = dialect.check(&spec)
    {
        result = Err(findings.report(field_path(path, &e.key), e.reason));
    }
    if let Ok(name) = name {
        for (label_path, key, value) in labels.of(name) {
            if let Err(e) = request::MARATHON_LABELS.apply(key, value, &mut spec) {
                result = Err(findings.report(label_path, e.reason));
            }
        }
    }
    let (Ok(name), Ok(()), Ok(())) = (name, result, size) else {
        return Err(Reported);
    };
    Ok(PersistentVolumeSpec {
        name: name.to_owned(),
        spec,
    })
}

/// The per-volume request keys a definition sets in its `labels`: `"berth/VOLUME/KEY":
/// "VALUE"` for what the `persistent` object has no field for (`selector`, `pool`, `uid`,
/// `gid`, `mode`, `reclaim`, `label.KEY`). Marathon passes labels through untouched.
pub(super) struct VolumeLabels {
    /// JSON path, volume, key, value.
    entries: Vec<(String, String, String, String)>,
}

/// The label prefix of a per-volume request key.
const VOLUME_LABEL_PREFIX: &str = "berth/";

impl VolumeLabels {
    pub(super) fn read(root: &Map<String, Value>, findings: &mut Findings) -> Self {
        let mut entries = Vec::new();
        let labels = match present(root, "labels") {
            Some(Value::Object(labels)) => labels,
            Some(other) => {
                findings.report(
                    "labels",
                    format!("must be an object, got {}", describe(other)),
                );
                return Self { entries };
            }
            None => return Self { entries },
        };
        for (key, value) in labels {
            let Some(rest) = key.strip_prefix(VOLUME_LABEL_PREFIX) else {
                continue;
            };
            let path = field_path("labels", key);
            let Some((volume, request_key)) = rest.split_once('/') else {
                findings.report(
                    path,
                    format!("a berth label is {VOLUME_LABEL_PREFIX}VOLUME/KEY, such as berth/data/selector"),
                );
                continue;
            };
            match value {
                Value::String(text) => entries.push((
                    path,
                    volume.to_owned(),
                    request_key.to_owned(),
                    text.clone(),
                )),
                other => {
                    findings.report(path, format!("must be a string, got {}", describe(other)));
                }
            }
        }
        Self { entries }
    }

    /// JSON path, key and value of each label for `volume`.
    fn of<'l>(&'l self, volume: &'l str) -> impl Iterator<Item = (&'l str, &'l str, &'l str)> {
        self.entries
            .iter()
            .filter(move |(_, v, _, _)| v == volume)
            .map(|(path, _, key, value)| (path.as_str(), key.as_str(), value.as_str()))
    }

    /// Reports the labels that name no persistent volume of the definition.
    pub(super) fn check_volumes(&self, names: &[&str], findings: &mut Findings) {
        for (path, volume, _, _) in &self.entries {
            if !names.contains(&volume.as_str()) {
                findings.report(
                    path,
                    format!(
                        "{} is not a persistent volume of this definition",
                        quoted(volume)
                    ),
                );
            }
        }
    }
}

/// Marathon's rules for apps and pods with persistent volumes: an unreachable instance keeps its
/// volumes (no replacement elsewhere), and upgrades stop old instances before starting new ones.
pub(super) fn check_stateful_scheduling(
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
