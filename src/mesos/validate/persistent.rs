//! The `persistent` object shared by app and pod volumes, and the scheduling rules any
//! definition with persistent volumes must follow.

use serde_json::{Map, Value};

use super::json::*;
use super::kinds::compile_whole_path_pattern;
use super::{ConstraintOp, PathConstraint, PersistentVolumeSpec, VolumeKind};

/// Marathon's default, and the highest value it accepts, for `minimumHealthCapacity` of a
/// stateful app: old instances must stop before new ones can take over their volumes.
const STATEFUL_MAX_MINIMUM_HEALTH_CAPACITY: f64 = 0.5;

const PERSISTENT_INFO_FIELDS: &[&str] = &["type", "size", "maxSize", "profileName", "constraints"];

/// The `persistent` object shared by app and pod volumes.
pub(super) fn parse_persistent_info(
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
