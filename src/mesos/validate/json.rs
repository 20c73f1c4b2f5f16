//! Strict reading of the JSON values berth interprets: each failed check records a
//! violation at its JSON path and the caller carries on, so every mistake is reported.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::Violation;

/// Marks a value that failed a check; the violation is already in [`Findings`].
pub(super) struct Reported;

pub(super) type Checked<T> = Result<T, Reported>;

#[derive(Default)]
pub(super) struct Findings {
    pub(super) violations: Vec<Violation>,
}

impl Findings {
    pub(super) fn report(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Reported {
        self.violations.push(Violation::new(path, message));
        Reported
    }
}

/// Collects every item, so that each failing item has reported its violations.
pub(super) fn all_checked<T>(results: impl IntoIterator<Item = Checked<T>>) -> Checked<Vec<T>> {
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

pub(super) fn field_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

pub(super) fn item_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// A JSON value as it appears in a message: scalars verbatim, containers by kind.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        scalar => scalar.to_string(),
    }
}

pub(super) fn quoted(text: &str) -> String {
    Value::from(text).to_string()
}

/// `null` counts as absent: Marathon writes unset optional fields that way.
pub(super) fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

pub(super) fn reject_unknown_fields(
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

pub(super) fn required<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    findings: &mut Findings,
) -> Checked<&'a Value> {
    present(object, key).ok_or_else(|| findings.report(field_path(path, key), "is required"))
}

pub(super) fn as_string<'a>(
    value: &'a Value,
    path: &str,
    findings: &mut Findings,
) -> Checked<&'a str> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(findings.report(path, format!("must be a string, got {}", describe(other)))),
    }
}

pub(super) fn required_string<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    findings: &mut Findings,
) -> Checked<&'a str> {
    let value = required(object, key, path, findings)?;
    as_string(value, &field_path(path, key), findings)
}

pub(super) fn non_empty<'a>(
    text: &'a str,
    path: &str,
    findings: &mut Findings,
) -> Checked<&'a str> {
    if text.is_empty() {
        Err(findings.report(path, "must not be empty"))
    } else {
        Ok(text)
    }
}

pub(super) fn optional_bool(
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
pub(super) fn optional_array<'a>(
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

/// Names that become a directory of their own: `data`, not `/data`, `var/data`, `..` or `.`.
pub(super) fn check_single_segment(
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
pub(super) fn mount_point(text: &str, path: &str, findings: &mut Findings) -> Checked<PathBuf> {
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

pub(super) fn read_only_from_mode(
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

pub(super) fn parse_id(root: &Map<String, Value>, findings: &mut Findings) -> Checked<String> {
    let id = required_string(root, "id", "", findings)?;
    Ok(non_empty(id, "id", findings)?.to_owned())
}
