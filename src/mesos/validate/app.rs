//! Marathon apps: `container.volumes`, persistent volumes and their alias mounts.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::json::*;
use super::persistent::{VolumeLabels, check_stateful_scheduling, parse_persistent_info};
use super::{AliasMount, AppSpec, PersistentVolumeSpec, UnmanagedKind, UnmanagedVolume};

const APP_PERSISTENT_VOLUME_FIELDS: &[&str] = &["containerPath", "mode", "persistent"];
const APP_ALIAS_VOLUME_FIELDS: &[&str] = &["containerPath", "hostPath", "mode"];

/// Appended when an app's persistent volume has a nested or absolute `containerPath`.
const ALIAS_HINT: &str = "; to mount at an absolute or nested path, add a second volume with that \
                          containerPath and a hostPath naming this volume";

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

pub(super) fn parse_app(root: &Map<String, Value>, findings: &mut Findings) -> Checked<AppSpec> {
    let id = parse_id(root, findings);
    let labels = VolumeLabels::read(root, findings);
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
                    volume, persistent, &path, &labels, findings,
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
    labels.check_volumes(&persistent_names, findings);
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
    labels: &VolumeLabels,
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
        labels,
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
