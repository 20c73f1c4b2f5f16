//! Marathon pods: pod-level `volumes` and each container's `volumeMounts`.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::json::*;
use super::persistent::{VolumeLabels, check_stateful_scheduling, parse_persistent_info};
use super::{PodMount, PodSpec, UnmanagedKind, UnmanagedVolume};

const POD_PERSISTENT_VOLUME_FIELDS: &[&str] = &["name", "persistent"];
const POD_VOLUME_MOUNT_FIELDS: &[&str] = &["name", "mountPath", "readOnly"];

/// A pod-level volume name and whether berth manages the volume.
struct DeclaredPodVolume {
    path: String,
    persistent: bool,
}

pub(super) fn parse_pod(root: &Map<String, Value>, findings: &mut Findings) -> Checked<PodSpec> {
    let id = parse_id(root, findings);
    let labels = VolumeLabels::read(root, findings);
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
            let spec = parse_persistent_info(
                name,
                persistent,
                &field_path(&path, "persistent"),
                &labels,
                findings,
            );
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
    let persistent_names: Vec<&str> = declared
        .iter()
        .filter(|(_, volume)| volume.persistent)
        .map(|(name, _)| *name)
        .collect();
    labels.check_volumes(&persistent_names, findings);
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
