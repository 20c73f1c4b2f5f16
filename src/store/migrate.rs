//! Schema migrations, run when the store is opened. Each one rewrites every record in the
//! same write transaction that bumps the schema version, so a crash (even `kill -9`) at any
//! point leaves the store wholly at the old version or wholly at the new one: redb commits
//! atomically, and an uncommitted transaction is simply gone at the next open.
//!
//! Version 1 → 2: every volume records the front-end that owns it (`frontend`). Version 1
//! did not, so it is inferred from what each front-end wrote into its records:
//! - Mesos: the hook is the only front-end that fills in the orchestrator's ids (framework,
//!   app, task, persistence id); CSI and Docker leave `owner` empty.
//! - CSI: Kubernetes' own keys (`csi.storage.k8s.io/pvc/name`, `…/ephemeral`, …) recorded as
//!   labels; raw block access (only CSI offers it); a publication under a kubelet
//!   `kubernetes.io~csi` directory; or the external-provisioner's `pvc-<uuid>` name.
//! - Docker: everything else (its records carry none of those marks; a `Mount` shows as a
//!   reference publication). A CSI volume provisioned without Kubernetes' metadata under a
//!   custom name prefix is indistinguishable from a Docker one: it is given to Docker, and
//!   `berth volume handover NAME --to csi` hands it back.

use serde_json::Value;

/// Kubernetes' own keys start with this; berth's CSI front-end records some as labels.
const K8S_LABEL_PREFIX: &str = "csi.storage.k8s.io/";
/// A kubelet publishes CSI volumes below directories of this name.
const KUBELET_CSI_DIR: &str = "/kubernetes.io~csi/";
/// The Mesos ids only the hook fills in.
const MESOS_OWNER_IDS: [&str; 4] = ["framework_id", "app_id", "task_id", "persistence_id"];

/// The owning front-ends, as version 2 records name them.
pub const CSI: &str = "csi";
pub const DOCKER: &str = "docker";
pub const MESOS: &str = "mesos";

/// The front-end that made a version 1 record: [`CSI`], [`DOCKER`] or [`MESOS`].
pub fn infer_frontend(record: &Value) -> &'static str {
    let owner = &record["owner"];
    if MESOS_OWNER_IDS
        .iter()
        .any(|id| owner[id].as_str().is_some_and(|v| !v.is_empty()))
    {
        return MESOS;
    }
    let spec = &record["spec"];
    let k8s_label = spec["labels"]
        .as_object()
        .is_some_and(|labels| labels.keys().any(|k| k.starts_with(K8S_LABEL_PREFIX)));
    let block = spec["access"].as_str() == Some("block");
    let kubelet_target = record["publications"].as_array().is_some_and(|ps| {
        ps.iter().any(|p| {
            p["target"]["path"]
                .as_str()
                .is_some_and(|path| path.contains(KUBELET_CSI_DIR))
        })
    });
    let provisioned_name = record["name"].as_str().is_some_and(is_provisioner_name);
    if k8s_label || block || kubelet_target || provisioned_name {
        CSI
    } else {
        DOCKER
    }
}

/// `pvc-` and a lowercase UUID: the name Kubernetes' external-provisioner gives a claim's
/// volume by default.
fn is_provisioner_name(name: &str) -> bool {
    let Some(uuid) = name.strip_prefix("pvc-") else {
        return false;
    };
    let groups: Vec<&str> = uuid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Adds the inferred `frontend` to a version 1 record; a record that already has one keeps it.
pub fn v1_to_v2(record: &mut Value) -> Result<(), String> {
    let frontend = infer_frontend(record);
    let Some(fields) = record.as_object_mut() else {
        return Err("a volume record must be a JSON object".into());
    };
    fields
        .entry("frontend")
        .or_insert_with(|| Value::String(frontend.to_string()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn mesos_ids_make_a_mesos_volume() {
        let r = json!({"name": "pvc-notes", "owner": {"task_id": "mysql.t1"}, "spec": {}});
        assert_eq!(infer_frontend(&r), MESOS);
        let empty_ids = json!({"name": "db", "owner": {"task_id": ""}, "spec": {}});
        assert_eq!(infer_frontend(&empty_ids), DOCKER);
    }

    #[test]
    fn kubernetes_marks_make_a_csi_volume() {
        for r in [
            json!({"name": "x", "spec": {"labels": {"csi.storage.k8s.io/pvc/name": "c"}}}),
            json!({"name": "x", "spec": {"access": "block"}}),
            json!({"name": "x", "spec": {}, "publications": [{"target": {"type": "bind",
                "path": "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/x/mount"}}]}),
            json!({"name": "pvc-1b4e28ba-2fa1-11d2-883f-0016d3cca427", "spec": {}}),
        ] {
            assert_eq!(infer_frontend(&r), CSI, "{r}");
        }
    }

    #[test]
    fn anything_else_is_docker() {
        for name in [
            "web",
            "pvc-notes",
            "pvc-1b4e28ba-2fa1-11d2-883f",
            "pvc-zzzzzzzz-2fa1-11d2-883f-0016d3cca427",
        ] {
            let r = json!({"name": name, "spec": {"labels": {"team": "db"}},
                "publications": [{"target": {"type": "reference", "holder": "c0ffee"}}]});
            assert_eq!(infer_frontend(&r), DOCKER, "{name}");
        }
    }

    #[test]
    fn an_existing_frontend_is_kept_and_non_objects_are_refused() {
        let mut r =
            json!({"name": "pvc-1b4e28ba-2fa1-11d2-883f-0016d3cca427", "frontend": "docker"});
        v1_to_v2(&mut r).unwrap();
        assert_eq!(r["frontend"], "docker");
        assert!(v1_to_v2(&mut json!([1])).is_err());
    }
}
