//! `POST /v1/volumes/{id}/handover?to=csi|docker|mesos`: gives a volume to another
//! front-end (see [`crate::engine::VolumeService::handover`]), and for `csi` answers the
//! static PersistentVolume that makes the volume a Kubernetes volume where it lies.
//!
//! The PersistentVolume is what Kubernetes needs to use data it did not provision: the CSI
//! driver and `volumeHandle` (the volume's CSI id, which is its name), its size as
//! `capacity`, its filesystem as `fsType`, a required node affinity on this node's topology
//! (the segments berth reports to Kubernetes, which kubelet puts on the node as labels), and
//! the volume's labels as the PV's labels, so a claim's `selector` picks it. Its reclaim
//! policy is `Retain`: the data came from elsewhere, and deleting a claim must not destroy
//! it; `berth volume rm` releases it. Labels Kubernetes would refuse are left off and named.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::views::VolumeView;
use super::{ADMIN, Admin, Query, bad_request, engine_error, usage_of};
use crate::engine::EngineError;
use crate::engine::types::{AccessType, OwnerFrontend, Volume, VolumeName};
use crate::engine::{NodeInfo, VolumeService};
use crate::server::http::Reply;

/// The answer to a handover.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandoverView {
    /// The owner before the handover.
    pub from: OwnerFrontend,
    pub volume: VolumeView,
    /// For a handover to `csi`: the static PersistentVolume, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume: Option<Value>,
    /// Labels of the volume left off the PersistentVolume, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels_left_off: Vec<String>,
}

/// What the PersistentVolume is made of besides the volume.
pub struct PvOptions<'a> {
    pub driver: &'a str,
    /// Labels for the PV beside the volume's own (these win): a Marathon volume has none,
    /// and a claim's selector needs some to pick it.
    pub labels: &'a BTreeMap<String, String>,
    /// `storageClassName`; empty binds claims that ask for `storageClassName: ""`.
    pub storage_class: &'a str,
    /// The PV's name; by default derived from the volume's.
    pub name: Option<&'a str>,
}

impl Admin {
    pub(super) async fn handover(&self, id: &str, query: &Query) -> Reply {
        if let Err(e) = query.only(&["to", "storage_class", "pv_name", "labels"]) {
            return bad_request(&e);
        }
        let to = match query.get("to").map(str::parse::<OwnerFrontend>) {
            Some(Ok(to)) => to,
            Some(Err(e)) => return bad_request(&e.to_string()),
            None => return bad_request("a handover needs to=csi, to=docker or to=mesos"),
        };
        let name = match VolumeName::parse(id) {
            Ok(n) => n,
            Err(e) => return engine_error(&EngineError::Input(e)),
        };
        let storage_class = query.get("storage_class").unwrap_or("").to_string();
        if !storage_class.is_empty()
            && let Err(e) = check_dns_subdomain(&storage_class)
        {
            return bad_request(&format!("storage_class {storage_class:?}: {e}"));
        }
        let pv_name = query.get("pv_name").map(str::to_string);
        if let Some(Err(e)) = pv_name.as_deref().map(check_dns_subdomain) {
            return bad_request(&format!("pv_name {:?}: {e}", pv_name.unwrap_or_default()));
        }
        let labels = match query.get("labels").map(parse_labels).transpose() {
            Ok(labels) => labels.unwrap_or_default(),
            Err(e) => return bad_request(&e),
        };
        let driver = self.csi_driver.clone();
        let done = self
            .blocking(move |engine| {
                let from = engine.get(&name)?.frontend;
                let v = engine.handover(ADMIN, &name, to)?;
                let (persistent_volume, labels_left_off) = if to == OwnerFrontend::Csi {
                    let options = PvOptions {
                        driver: &driver,
                        storage_class: &storage_class,
                        name: pv_name.as_deref(),
                        labels: &labels,
                    };
                    let size = pv_size(engine, &v);
                    let (pv, left_off) = persistent_volume(&v, size, engine.node(), &options);
                    (Some(pv), left_off)
                } else {
                    (None, Vec::new())
                };
                Ok::<_, EngineError>(HandoverView {
                    from,
                    volume: VolumeView::new(&v, usage_of(engine, &v)),
                    persistent_volume,
                    labels_left_off,
                })
            })
            .await;
        match done {
            Ok(Ok(view)) => Reply::json(200, &view),
            Ok(Err(e)) => engine_error(&e),
            Err(reply) => reply,
        }
    }
}

/// The PV's capacity: the volume's size, or for an unlimited directory the filesystem's.
fn pv_size(engine: &dyn VolumeService, v: &Volume) -> u64 {
    v.size
        .or_else(|| engine.usage(&v.name).ok().map(|u| u.bytes_total))
        .unwrap_or(0)
}

/// The static PersistentVolume for `v` on `node`, and the labels left off it (with why).
pub fn persistent_volume(
    v: &Volume,
    size: u64,
    node: &NodeInfo,
    options: &PvOptions<'_>,
) -> (Value, Vec<String>) {
    let mut labels = BTreeMap::new();
    let mut left_off = Vec::new();
    for (key, value) in &v.spec.labels {
        match check_label(key, value) {
            Ok(()) => {
                labels.insert(key.to_string(), value.to_string());
            }
            Err(why) => left_off.push(format!("{key}={value}: {why}")),
        }
    }
    labels.extend(options.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let match_expressions: Vec<Value> = node
        .topology
        .iter()
        .map(|(key, value)| json!({"key": key, "operator": "In", "values": [value]}))
        .collect();
    let mut csi = json!({
        "driver": options.driver,
        "volumeHandle": v.name.as_str(),
    });
    let block = v.spec.access == AccessType::Block;
    if let (Some(fs), false) = (v.placement.fs, block) {
        csi["fsType"] = json!(fs.as_str());
    }
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": options.name.map_or_else(|| pv_name_for(v.name.as_str()), str::to_string),
            "labels": labels,
        },
        "spec": {
            "capacity": {"storage": size.to_string()},
            "volumeMode": if block { "Block" } else { "Filesystem" },
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": options.storage_class,
            "csi": csi,
            "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": match_expressions}
            ]}},
        },
    });
    (pv, left_off)
}

/// `labels=KEY=VALUE,KEY=VALUE`: each a valid Kubernetes label.
fn parse_labels(raw: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in raw.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("labels: {pair:?} is not KEY=VALUE"))?;
        check_label(key, value).map_err(|e| format!("label {pair:?}: {e}"))?;
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

/// A Kubernetes object name from a volume name: lower case, other characters as `-`.
fn pv_name_for(volume: &str) -> String {
    let mapped: String = volume
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "berth-volume".to_string()
    } else {
        trimmed.chars().take(253).collect()
    }
}

/// Kubernetes' rule for object names such as a PV's or a StorageClass's.
fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    for part in name.split('.') {
        let ok = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(
                "must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Kubernetes' rule for a label: `[prefix/]name` and a value of at most 63 characters.
fn check_label(key: &str, value: &str) -> Result<(), String> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            check_dns_subdomain(prefix).map_err(|e| format!("the key's prefix {e}"))?;
            name
        }
        None => key,
    };
    if name.is_empty() || !label_chars(name) {
        return Err(
            "the key's name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                .into(),
        );
    }
    if !value.is_empty() && !label_chars(value) {
        return Err(
            "the value must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

fn label_chars(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Writes `value` as a YAML document in block style. Every string is written quoted (a JSON
/// string is a YAML double-quoted scalar), so no value can change type or meaning (`yes`,
/// `1e3`, `null`, a leading `*`), whatever a volume's labels hold.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_list(&mut out, items, 0),
        scalar => {
            out.push_str(&scalar_yaml(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key_yaml(key));
        out.push(':');
        write_nested(out, value, indent);
    }
}

fn write_list(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                // The first key shares the dash's line; the rest line up under it.
                let mut first = String::new();
                write_map(&mut first, map, indent + 2);
                out.push(' ');
                out.push_str(&first[indent + 2..]);
            }
            other => write_nested(out, other, indent),
        }
    }
}

/// After `key:` or `-`: a scalar (or empty collection) on the same line, else a block below.
fn write_nested(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_list(out, items, indent + 2);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_yaml(scalar));
            out.push('\n');
        }
    }
}

fn scalar_yaml(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// Plain keys stay plain when nothing in them could be read otherwise; others are quoted.
fn key_yaml(key: &str) -> String {
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if plain {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trips_through_a_yaml_parser_with_awkward_strings() {
        let value = json!({
            "metadata": {"name": "db", "labels": {"app": "yes", "tier": "1e3", "empty": "",
                "example.com/role": "null", "quote": "a\"b: #c"}},
            "spec": {"list": [{"k": "v", "n": {"x": ["1", 2, true]}}, "plain", []],
                "none": {}, "count": 3},
        });
        let text = to_yaml(&value);
        let parsed: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let back: Value = serde_json::to_value(parsed).unwrap();
        assert_eq!(back, value, "{text}");
    }

    #[test]
    fn pv_names_and_labels_follow_kubernetes_rules() {
        assert_eq!(pv_name_for("mysql#MySQLData#53ab"), "mysql-mysqldata-53ab");
        assert_eq!(pv_name_for("#_#"), "berth-volume");
        assert!(check_dns_subdomain(&pv_name_for("a.b_c-d:e@f+g")).is_ok());
        assert!(check_dns_subdomain("Fast").is_err());
        assert!(check_label("media", "ssd").is_ok());
        assert!(check_label("example.com/rack", "r1").is_ok());
        assert!(check_label("media", "").is_ok());
        assert!(check_label("my key", "x").is_err());
        assert!(check_label("k", &"v".repeat(64)).is_err());
        assert!(check_label("k", "-v").is_err());
        let labels = parse_labels("app=mysql,example.com/rack=r1").unwrap();
        assert_eq!(labels.len(), 2);
        assert!(parse_labels("app").unwrap_err().contains("not KEY=VALUE"));
        assert!(parse_labels("app=my sql").is_err());
    }
}
