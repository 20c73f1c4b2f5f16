//! `berth volume handover`: a Marathon app's volume moves into Kubernetes and on to Docker on
//! one real daemon, with real mounts, without a byte copied; refused while the task has it
//! mounted and over TCP without the token; the PersistentVolume printed for Kubernetes is
//! parsed as YAML and bound, by Kubernetes' selector rules, to a claim that asks for its
//! labels. Needs root.

#[path = "support/all_frontends.rs"]
mod all_frontends;
#[path = "support/harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;

use all_frontends::{Node, TOKEN, encode, task_args};
use berth::admin::cli::Client;
use serde_json::{Value, json};

/// Bytes no two runs share by accident: a text line and a pattern.
fn precious() -> Vec<u8> {
    let mut data = b"the only copy of the orders table\n".to_vec();
    data.extend((0..256 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    data
}

fn frontend_of(node: &Node, name: &str) -> String {
    let (status, view) = node.volume(name);
    assert_eq!(status, 200, "{view}");
    view["frontend"].as_str().unwrap().to_string()
}

fn cli_ok(node: &Node, args: &[&str]) -> (String, String) {
    let out = node.cli(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "berth volume {args:?}: {stderr}\n{}",
        node.log()
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marathon_volume_moves_into_kubernetes_and_on_to_docker_with_its_data() {
    let node = Node::start();
    let definition = node.mysql_app();
    let sandbox = node.sandbox("run-1");
    let task = |sub: &str| task_args(sub, &definition, &sandbox);

    // The Marathon task has its volume and writes to it.
    let reply = node.mesos(task("prepare"));
    let name = reply["volumes"][0]["volume"].as_str().unwrap().to_string();
    assert!(name.starts_with("mysql#mysqldata#"), "{reply:#}");
    let data = precious();
    std::fs::write(sandbox.join("mysqldata/orders.ibd"), &data).unwrap();
    let size = node.volume(&name).1["size_bytes"].as_u64().unwrap();

    // Refused while the task has it mounted: nothing changes.
    let out = node.cli(&["handover", &name, "--to", "csi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("409") && stderr.contains("is attached"),
        "{stderr}"
    );
    assert_eq!(frontend_of(&node, &name), "mesos");

    node.mesos(task("cleanup"));

    // Over TCP the token is required, whatever else the request says.
    let path = format!("/v1/volumes/{}/handover?to=csi", encode(&name));
    let tcp = format!("http://127.0.0.1:{}", node.port);
    for token in [None, Some("not-the-token")] {
        let answer = Client::new(&tcp, token)
            .unwrap()
            .call("POST", &path)
            .unwrap();
        assert_eq!(answer.status, 401, "{token:?}");
    }
    assert_eq!(frontend_of(&node, &name), "mesos");

    // To Kubernetes: `berth volume` finds the token in the daemon's config file by itself.
    let (yaml, stderr) = cli_ok(
        &node,
        &[
            "handover",
            &name,
            "--to",
            "csi",
            "--storage-class",
            "berth-static",
            "--label",
            "app=mysql",
        ],
    );
    assert!(stderr.contains("handed over from mesos to csi"), "{stderr}");
    let pv: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&yaml).unwrap()).unwrap();
    assert_eq!(pv["kind"], "PersistentVolume", "{yaml}");
    assert_eq!(pv["spec"]["csi"]["driver"], "berth.csi.io", "{yaml}");
    assert_eq!(pv["spec"]["csi"]["volumeHandle"], name.as_str(), "{yaml}");
    assert_eq!(pv["spec"]["csi"]["fsType"], "ext4", "{yaml}");
    assert_eq!(pv["metadata"]["labels"], json!({"app": "mysql"}), "{yaml}");
    assert_eq!(
        pv["spec"]["capacity"]["storage"],
        size.to_string(),
        "{yaml}"
    );
    assert_eq!(pv["spec"]["storageClassName"], "berth-static", "{yaml}");
    assert_eq!(
        pv["spec"]["persistentVolumeReclaimPolicy"], "Retain",
        "{yaml}"
    );
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"],
        json!([{"key": "topology.berth.io/node", "operator": "In", "values": [node.node_id]}]),
        "{yaml}"
    );
    assert!(
        pv["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("mysql-mysqldata-"),
        "{yaml}"
    );
    assert_eq!(frontend_of(&node, &name), "csi");

    // kubelet stages and publishes it by the PV's volumeHandle: the same bytes.
    let (_, mut csi) = node.csi().await;
    let target = node.csi_attach(&mut csi, &name).await.unwrap();
    assert_eq!(std::fs::read(target.join("orders.ibd")).unwrap(), data);
    // The Mesos hook no longer acts on it: a new task of the app cannot take it back.
    let out = all_frontends::berth_command()
        .args([
            "mesos",
            "cleanup",
            "--task-id",
            "mysql.t1",
            "--framework-id",
            "marathon-1",
        ])
        .arg("--sandbox")
        .arg(&sandbox)
        .arg("--admin-socket")
        .arg(node.admin_socket())
        .arg("--config")
        .arg(node.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mounted(&target),
        "Mesos' cleanup left Kubernetes' mount alone"
    );
    // Published to Kubernetes: no handover.
    let out = node.cli(&["handover", &name, "--to", "docker"]);
    assert!(!out.status.success());
    node.csi_detach(&mut csi, &name).await;

    // On to Docker: its Mount answers the same data.
    let (stdout, _) = cli_ok(&node, &["handover", &name, "--to", "docker"]);
    assert_eq!(stdout.trim(), name);
    let (status, mounted) = node.docker_plugin(
        "/VolumeDriver.Mount",
        json!({"Name": name, "ID": "container-1"}),
    );
    assert_eq!(status, 200, "{mounted}");
    let mountpoint = mounted["Mountpoint"].as_str().unwrap();
    assert_eq!(
        std::fs::read(Path::new(mountpoint).join("orders.ibd")).unwrap(),
        data
    );
    let (status, _) = node.docker_plugin(
        "/VolumeDriver.Unmount",
        json!({"Name": name, "ID": "container-1"}),
    );
    assert_eq!(status, 200);
    // Kubernetes no longer reaches it.
    let refused = node.csi_attach(&mut csi, &name).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    assert_eq!(frontend_of(&node, &name), "docker");
}

/// Kubernetes' label-selector rule (`matchLabels` and `matchExpressions`, ANDed).
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector["matchLabels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let labels_ok = match_labels
        .iter()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let expressions = selector["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    labels_ok
        && expressions.iter().all(|e| {
            let key = e["key"].as_str().unwrap();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let has = labels.get(key);
            match e["operator"].as_str().unwrap() {
                "In" => has.is_some_and(|v| values.contains(&v.as_str())),
                "NotIn" => has.is_none_or(|v| !values.contains(&v.as_str())),
                "Exists" => has.is_some(),
                "DoesNotExist" => has.is_none(),
                other => panic!("not a selector operator: {other}"),
            }
        })
}

/// Whether a claim binds the PV as Kubernetes' binder decides for a pre-made PV: the same
/// storage class, an access mode it offers, enough capacity, the selector.
fn binds(claim: &Value, pv: &Value) -> bool {
    let labels: BTreeMap<String, String> =
        serde_json::from_value(pv["metadata"]["labels"].clone()).unwrap_or_default();
    let class = claim["spec"]["storageClassName"].as_str().unwrap_or("");
    let wanted: u64 = claim["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .unwrap()
        .strip_suffix("Mi")
        .unwrap()
        .parse::<u64>()
        .unwrap()
        << 20;
    let capacity: u64 = pv["spec"]["capacity"]["storage"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let modes = pv["spec"]["accessModes"].as_array().unwrap();
    class == pv["spec"]["storageClassName"].as_str().unwrap()
        && claim["spec"]["accessModes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| modes.contains(m))
        && wanted <= capacity
        && selects(&claim["spec"]["selector"], &labels)
}

const CLAIM: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: mysql-data
spec:
  storageClassName: ""
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 16Mi
  selector:
    matchLabels:
      app: mysql
    matchExpressions:
      - {key: tier, operator: In, values: [db, cache]}
      - {key: example.com/rack, operator: Exists}
      - {key: tier, operator: NotIn, values: [web]}
      - {key: legacy, operator: DoesNotExist}
"#;

#[test]
fn the_printed_persistent_volume_binds_a_claim_whose_selector_asks_for_its_labels() {
    let node = Node::start();
    let (status, body) = node.docker_plugin(
        "/VolumeDriver.Create",
        json!({"Name": "orders", "Opts": {
            "size": "32MiB", "label.app": "mysql", "label.tier": "db",
            "label.example.com/rack": "r1"
        }}),
    );
    assert_eq!(status, 200, "{body}");
    let out = all_frontends::berth_command()
        .args(["volume", "handover", "orders", "--to", "csi"])
        .arg("--admin-socket")
        .arg(node.admin_socket())
        .env("BERTH_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pv: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&yaml).unwrap()).unwrap();
    assert_eq!(
        pv["metadata"]["labels"],
        json!({"app": "mysql", "tier": "db", "example.com/rack": "r1"}),
        "{yaml}"
    );
    assert_eq!(pv["metadata"]["name"], "orders", "{yaml}");
    assert_eq!(pv["spec"]["storageClassName"], "", "{yaml}");

    let claim: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(CLAIM).unwrap()).unwrap();
    assert!(binds(&claim, &pv), "{yaml}");
    // The rule is not vacuous: a claim asking for other labels, more space or another
    // class does not bind it.
    for (pointer, value) in [
        ("/spec/selector/matchExpressions/0/values", json!(["web"])),
        ("/spec/selector/matchLabels/app", json!("postgres")),
        ("/spec/selector/matchExpressions/3/key", json!("tier")),
        ("/spec/resources/requests/storage", json!("64Mi")),
        ("/spec/storageClassName", json!("standard")),
    ] {
        let mut other = claim.clone();
        *other.pointer_mut(pointer).unwrap() = value;
        assert!(!binds(&other, &pv), "{pointer}");
    }
}

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == path)
}
