use super::*;
use crate::engine::types::{PathConstraint, PoolKind};
use serde_json::json;

const MYSQL_APP: &str = include_str!("../../../../tests/fixtures/marathon/stateful-mysql.json");
const POSTGRES_APP: &str =
    include_str!("../../../../tests/fixtures/marathon/stateful-postgres.json");
const PERSISTENT_POD: &str =
    include_str!("../../../../tests/fixtures/marathon/persistent-volume-pod.json");

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
            spec: VolumeSpec {
                kind: Some(PoolKind::Root),
                size: Some(1000 << 20),
                ..VolumeSpec::default()
            },
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
            spec: VolumeSpec {
                kind: Some(PoolKind::Mount),
                size: Some(524_288 << 20),
                max_size: Some(1_048_576 << 20),
                constraints: vec![PathConstraint::new(true, "/mnt/ssd-.+").unwrap()],
                ..VolumeSpec::default()
            },
        }]
    );
    assert_eq!(app.alias_mounts, vec![]);
    let constraint = &app.persistent_volumes[0].spec.constraints[0];
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
            spec: VolumeSpec {
                kind: Some(PoolKind::Root),
                size: Some(10 << 20),
                ..VolumeSpec::default()
            },
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

const MYSQL_VOLUME: &str = "/container/volumes/0";
const MYSQL_PERSISTENT: &str = "/container/volumes/0/persistent";
const MYSQL_ALIAS: &str = "/container/volumes/1";
const POSTGRES_VOLUME: &str = "/container/volumes/0";
const POSTGRES_PERSISTENT: &str = "/container/volumes/0/persistent";

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
        app(&json).persistent_volumes[0].spec.profile.as_deref(),
        Some("fast")
    );
}

#[test]
fn berth_labels_set_the_rest_of_the_vocabulary_per_volume() {
    let json = edited(MYSQL_APP, |doc| {
        set(
            doc,
            "",
            "labels",
            json!({
                "berth/mysqldata/selector": "media=ssd,rack in (r1,r2)",
                "berth/mysqldata/pool": "fast",
                "berth/mysqldata/uid": "999",
                "berth/mysqldata/reclaim": "retain",
                "berth/mysqldata/label.team": "db",
                "team": "not berth's",
            }),
        )
    });
    let spec = &app(&json).persistent_volumes[0].spec;
    assert_eq!(
        spec.selector.as_ref().map(|s| s.to_string()).as_deref(),
        Some("media=ssd,rack in (r1,r2)")
    );
    assert_eq!(spec.pool.as_deref(), Some("fast"));
    assert_eq!(spec.ownership.uid, Some(999));
    assert_eq!(
        spec.reclaim,
        Some(crate::engine::types::ReclaimPolicy::Retain)
    );
    assert_eq!(spec.labels.len(), 1);
    assert_eq!(&spec.labels["team"], "db");
    assert_eq!(
        spec.size,
        Some(1000 << 20),
        "the persistent fields still apply"
    );
}

#[test]
fn pattern_invalid_alone_is_rejected_even_if_valid_once_anchored() {
    // `^(?:a)(b)$` compiles; `a)(b` must not.
    let json = edited(POSTGRES_APP, |doc| {
        set(
            doc,
            POSTGRES_PERSISTENT,
            "constraints",
            json!([["path", "LIKE", "a)(b"]]),
        )
    });
    let violations = violations_of(&json);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(
        violations[0].path,
        "container.volumes[0].persistent.constraints"
    );
    assert!(
        violations[0].message.contains("unopened group"),
        "{}",
        violations[0].message
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

mod broken_cases;
