//! The deployment manifests, checked against each other and against berth's own config
//! parser: Kubernetes (`packaging/kubernetes/*.yaml`), Marathon
//! (`packaging/marathon/berth.json`) and the Docker managed plugin
//! (`packaging/docker-plugin/config.json` and `plugin.toml`). A socket path, driver name or
//! mount that disagrees between two files fails here, not on a cluster.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use berth::config::{Config, DEFAULT_DRIVER_NAME, DEFAULT_TOPOLOGY_KEY};
use berth::server::socket_path;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const K8S_DIR: &str = "packaging/kubernetes";
const NAMESPACE: &str = "berth";

/// Every document of every YAML file in packaging/kubernetes, with its file name.
fn k8s_documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = fs::read_dir(repo(K8S_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {v}"))
}

fn of_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn one_of_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

/// The berth config the DaemonSet runs, parsed by berth itself.
fn daemonset_config(docs: &[(String, Value)]) -> Config {
    let cm = one_of_kind(docs, "ConfigMap");
    Config::parse(str_at(cm, "/data/config.toml"), Path::new("configmap.yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn container<'a>(ds: &'a Value, name: &str) -> &'a Value {
    ds.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("the DaemonSet has no container {name}"))
}

fn args(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap()).collect())
        .unwrap_or_default()
}

/// The value of `--flag=value` among a container's args.
fn flag<'a>(c: &'a Value, name: &str) -> &'a str {
    let prefix = format!("{name}=");
    args(c)
        .into_iter()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{} has no {name}=", c["name"]))
}

/// The volume mounted in container `c` at `mount_path`: (volume name, mount).
fn mount_at<'a>(c: &'a Value, mount_path: &str) -> &'a Value {
    c["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["mountPath"] == mount_path))
        .unwrap_or_else(|| panic!("{} mounts nothing at {mount_path}", c["name"]))
}

fn volume<'a>(ds: &'a Value, name: &str) -> &'a Value {
    ds.pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("the DaemonSet has no volume {name}"))
}

/// The host directory and propagation under which a container sees `path`, by the
/// longest mount path that contains it.
fn host_mount_of<'a>(ds: &'a Value, c: &'a Value, path: &Path) -> (&'a Value, &'a Value) {
    let mounts = c["volumeMounts"].as_array().unwrap();
    let m = mounts
        .iter()
        .filter(|m| path.starts_with(str_at(m, "/mountPath")))
        .max_by_key(|m| str_at(m, "/mountPath").len())
        .unwrap_or_else(|| panic!("{} does not mount {}", c["name"], path.display()));
    (m, volume(ds, str_at(m, "/name")))
}

fn env_field<'a>(c: &'a Value, name: &str) -> &'a str {
    c["env"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["name"] == name))
        .map(|e| str_at(e, "/valueFrom/fieldRef/fieldPath"))
        .unwrap_or_else(|| panic!("{} has no env {name} from a field", c["name"]))
}

#[test]
fn every_kubernetes_document_is_well_formed_and_listed() {
    let docs = k8s_documents();
    let namespaced = [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "DaemonSet",
    ];
    let cluster_wide = [
        "Namespace",
        "CSIDriver",
        "StorageClass",
        "VolumeSnapshotClass",
        "ClusterRole",
        "ClusterRoleBinding",
        "Kustomization",
    ];
    for (file, d) in &docs {
        let kind = str_at(d, "/kind");
        assert!(!str_at(d, "/apiVersion").is_empty(), "{file}");
        if kind == "Kustomization" {
            continue;
        }
        assert!(!str_at(d, "/metadata/name").is_empty(), "{file}: {kind}");
        if namespaced.contains(&kind) {
            assert_eq!(
                str_at(d, "/metadata/namespace"),
                NAMESPACE,
                "{file}: {kind}"
            );
        } else {
            assert!(
                cluster_wide.contains(&kind),
                "{file}: unexpected kind {kind}"
            );
            assert!(d.pointer("/metadata/namespace").is_none(), "{file}: {kind}");
        }
    }
    let kinds: BTreeSet<&str> = docs.iter().map(|(_, d)| str_at(d, "/kind")).collect();
    for kind in namespaced.iter().chain(&cluster_wide) {
        assert!(kinds.contains(kind), "no {kind} in {K8S_DIR}");
    }
    // `kubectl apply -k packaging/kubernetes` applies every other file.
    let k = one_of_kind(&docs, "Kustomization");
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files: BTreeSet<&str> = docs
        .iter()
        .map(|(f, _)| f.as_str())
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);
    let ns = one_of_kind(&docs, "Namespace");
    assert_eq!(str_at(ns, "/metadata/name"), NAMESPACE);
    assert_eq!(
        str_at(ns, "/metadata/labels/pod-security.kubernetes.io~1enforce"),
        "privileged"
    );
}

#[test]
fn csidriver_and_storage_classes_name_berths_driver() {
    let docs = k8s_documents();
    let config = daemonset_config(&docs);
    assert_eq!(config.csi.driver_name, DEFAULT_DRIVER_NAME);
    let driver = one_of_kind(&docs, "CSIDriver");
    assert_eq!(str_at(driver, "/metadata/name"), config.csi.driver_name);
    assert_eq!(
        driver.pointer("/spec/attachRequired"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        driver.pointer("/spec/podInfoOnMount"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        driver.pointer("/spec/storageCapacity"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        driver.pointer("/spec/volumeLifecycleModes"),
        Some(&serde_json::json!(["Persistent", "Ephemeral"]))
    );

    let classes = of_kind(&docs, "StorageClass");
    let mut kinds = BTreeSet::new();
    for sc in &classes {
        let name = str_at(sc, "/metadata/name");
        assert_eq!(str_at(sc, "/provisioner"), config.csi.driver_name, "{name}");
        assert_eq!(
            str_at(sc, "/volumeBindingMode"),
            "WaitForFirstConsumer",
            "{name}"
        );
        let params = sc["parameters"].as_object().unwrap();
        assert_eq!(params.len(), 1, "{name}: {params:?}");
        let kind = str_at(sc, "/parameters/type");
        // Expansion only where berth can grow the volume: a mount volume is a whole disk.
        assert_eq!(
            sc["allowVolumeExpansion"],
            Value::Bool(kind != "mount"),
            "{name}"
        );
        // The same words berth's config and CSI parameters use for pool kinds.
        let parsed: berth::engine::types::PoolKind = kind.parse().unwrap();
        assert_eq!(parsed.as_str(), kind);
        assert_eq!(name, format!("berth-{kind}"));
        kinds.insert(kind);
    }
    assert_eq!(kinds, BTreeSet::from(["mount", "path", "root"]));
}

#[test]
fn daemonset_sidecars_agree_with_berths_sockets_and_paths() {
    let docs = k8s_documents();
    let config = daemonset_config(&docs);
    let ds = one_of_kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let berth = container(ds, "berth");

    // berth runs the ConfigMap's config, with the node name as its node id.
    let berth_args = args(berth);
    assert_eq!(berth_args[0], "serve", "{berth_args:?}");
    let config_file = Path::new(flag_or_next(&berth_args, "--config"));
    let config_mount = mount_at(berth, config_file.parent().unwrap().to_str().unwrap());
    let config_volume = volume(ds, str_at(config_mount, "/name"));
    assert_eq!(
        str_at(config_volume, "/configMap/name"),
        str_at(one_of_kind(&docs, "ConfigMap"), "/metadata/name")
    );
    assert_eq!(config_file.file_name().unwrap(), "config.toml");
    assert_eq!(env_field(berth, "BERTH_NODE_ID"), "spec.nodeName");
    assert_eq!(config.topology_key, DEFAULT_TOPOLOGY_KEY);
    assert_eq!(
        berth.pointer("/securityContext/privileged"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        str_at(berth, "/image"),
        format!("berth:{}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        config.listen.docker.is_empty(),
        "no Docker plugin on Kubernetes nodes"
    );

    // The CSI socket: berth listens where every sidecar connects, in the hostPath that
    // kubelet is told about.
    let csi = socket_path(&config.listen.csi);
    let socket_dir = csi.parent().unwrap().to_str().unwrap();
    let socket_file = csi.file_name().unwrap().to_str().unwrap();
    let socket_volume = str_at(mount_at(berth, socket_dir), "/name");
    let host_dir = str_at(volume(ds, socket_volume), "/hostPath/path");
    assert_eq!(
        host_dir,
        format!("/var/lib/kubelet/plugins/{}", config.csi.driver_name)
    );
    for name in [
        "node-driver-registrar",
        "csi-provisioner",
        "csi-resizer",
        "csi-snapshotter",
        "liveness-probe",
    ] {
        let c = container(ds, name);
        let address = flag(c, "--csi-address");
        let address = Path::new(address);
        let dir = address.parent().unwrap().to_str().unwrap();
        assert_eq!(str_at(mount_at(c, dir), "/name"), socket_volume, "{name}");
        assert_eq!(address.file_name().unwrap(), socket_file, "{name}");
        assert!(
            str_at(c, "/image").starts_with("registry.k8s.io/sig-storage/"),
            "{name}"
        );
    }
    let registrar = container(ds, "node-driver-registrar");
    assert_eq!(
        flag(registrar, "--kubelet-registration-path"),
        format!("{host_dir}/{socket_file}")
    );
    let registration = volume(ds, str_at(mount_at(registrar, "/registration"), "/name"));
    assert_eq!(
        str_at(registration, "/hostPath/path"),
        "/var/lib/kubelet/plugins_registry"
    );

    // The provisioner: one per node, publishing this node's capacity, owned by the pod.
    let provisioner = container(ds, "csi-provisioner");
    assert_eq!(flag(provisioner, "--node-deployment"), "true");
    assert_eq!(flag(provisioner, "--enable-capacity"), "true");
    assert_eq!(flag(provisioner, "--capacity-ownerref-level"), "0");
    assert_eq!(env_field(provisioner, "NODE_NAME"), "spec.nodeName");
    assert_eq!(env_field(provisioner, "POD_NAME"), "metadata.name");
    assert_eq!(env_field(provisioner, "NAMESPACE"), "metadata.namespace");
    assert_eq!(
        flag(container(ds, "csi-resizer"), "--leader-election"),
        "true"
    );

    // Liveness: kubelet asks the livenessprobe sidecar, which asks berth (CSI Probe).
    let port = flag(container(ds, "liveness-probe"), "--http-endpoint")
        .trim_start_matches(':')
        .parse::<u64>()
        .unwrap();
    let probe = &berth["livenessProbe"]["httpGet"];
    assert_eq!(str_at(probe, "/path"), "/healthz");
    let port_name = str_at(probe, "/port");
    let declared = berth["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port_name)
        .unwrap();
    assert_eq!(declared["containerPort"].as_u64(), Some(port));

    // Mounts berth makes must reach the host: kubelet's pod directories and berth's state
    // and pools at the host's own paths, Bidirectional.
    let mut must_reach_host: Vec<PathBuf> = vec!["/var/lib/kubelet/pods".into()];
    must_reach_host.push(config.state_dir.clone());
    for pool in config.effective_pools() {
        must_reach_host.extend(pool.paths.iter().cloned());
    }
    for path in &must_reach_host {
        let (m, v) = host_mount_of(ds, berth, path);
        assert_eq!(
            str_at(m, "/mountPropagation"),
            "Bidirectional",
            "{}",
            path.display()
        );
        assert_eq!(
            str_at(v, "/hostPath/path"),
            str_at(m, "/mountPath"),
            "{} is not at the host's path",
            path.display()
        );
    }
    let (m, _) = host_mount_of(ds, berth, Path::new("/dev/loop-control"));
    assert_eq!(str_at(m, "/mountPath"), "/dev");

    // RBAC: the pod's service account is the one bound to the sidecars' roles.
    let sa = one_of_kind(&docs, "ServiceAccount");
    assert_eq!(
        str_at(pod, "/serviceAccountName"),
        str_at(sa, "/metadata/name")
    );
    rbac_grants(&docs, "ClusterRole", "persistentvolumes", "create");
    rbac_grants(&docs, "ClusterRole", "persistentvolumes", "delete");
    rbac_grants(&docs, "ClusterRole", "csinodes", "get");
    rbac_grants(
        &docs,
        "ClusterRole",
        "persistentvolumeclaims/status",
        "patch",
    );
    rbac_grants(&docs, "Role", "csistoragecapacities", "create");
    rbac_grants(&docs, "Role", "pods", "get");
    rbac_grants(&docs, "Role", "leases", "update");
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for b in of_kind(&docs, kind) {
            let role_kind = str_at(b, "/roleRef/kind");
            let role = str_at(b, "/roleRef/name");
            assert!(
                of_kind(&docs, role_kind)
                    .iter()
                    .any(|r| str_at(r, "/metadata/name") == role),
                "{kind} {} names a missing {role_kind} {role}",
                b["metadata"]["name"]
            );
            let subject = &b["subjects"][0];
            assert_eq!(str_at(subject, "/name"), str_at(sa, "/metadata/name"));
            assert_eq!(str_at(subject, "/namespace"), NAMESPACE);
        }
    }
}

/// `--flag value` or `--flag=value`.
fn flag_or_next<'a>(args: &[&'a str], name: &str) -> &'a str {
    let prefix = format!("{name}=");
    for (i, a) in args.iter().enumerate() {
        if *a == name {
            return args[i + 1];
        }
        if let Some(v) = a.strip_prefix(prefix.as_str()) {
            return v;
        }
    }
    panic!("no {name} in {args:?}")
}

/// Some role of `kind` grants `verb` on `resource`.
fn rbac_grants(docs: &[(String, Value)], kind: &str, resource: &str, verb: &str) {
    let granted = of_kind(docs, kind).iter().any(|r| {
        r["rules"].as_array().unwrap().iter().any(|rule| {
            let has = |field: &str, want: &str| {
                rule[field]
                    .as_array()
                    .is_some_and(|xs| xs.iter().any(|x| x == want))
            };
            has("resources", resource) && has("verbs", verb)
        })
    });
    assert!(granted, "no {kind} grants {verb} on {resource}");
}

#[test]
fn marathon_app_runs_berth_on_every_agent_with_a_health_check() {
    let text = fs::read_to_string(repo("packaging/marathon/berth.json")).unwrap();
    let app: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(str_at(&app, "/id"), "/berth");
    assert_eq!(
        app["constraints"],
        serde_json::json!([["hostname", "UNIQUE"]])
    );
    assert!(app["instances"].as_u64().unwrap() >= 1);

    // The config it runs, parsed by berth.
    let config = Config::parse(
        str_at(&app, "/env/BERTH_CONFIG_TOML"),
        Path::new("berth.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cmd = str_at(&app, "/cmd");
    assert!(
        cmd.contains("\"$BERTH_CONFIG_TOML\" > /tmp/berth.toml"),
        "{cmd}"
    );
    assert!(
        cmd.ends_with("exec /usr/bin/berth serve --config /tmp/berth.toml"),
        "{cmd}"
    );
    let token_file = config.admin.token_file.as_ref().unwrap();
    assert!(
        cmd.contains(&format!("> {}", token_file.display())),
        "{cmd}"
    );

    // The health check reaches the admin API's /healthz (no token needed) on the port
    // Marathon reserves, on the loopback address MESOS_HTTP checks use.
    let checks = app["healthChecks"].as_array().unwrap();
    assert_eq!(checks.len(), 1);
    let check = &checks[0];
    assert_eq!(str_at(check, "/protocol"), "MESOS_HTTP");
    assert_eq!(str_at(check, "/path"), "/healthz");
    for field in [
        "gracePeriodSeconds",
        "intervalSeconds",
        "timeoutSeconds",
        "maxConsecutiveFailures",
    ] {
        assert!(check[field].as_u64().unwrap() > 0, "{field}");
    }
    assert!(check["timeoutSeconds"].as_u64() < check["intervalSeconds"].as_u64());
    let index = check["portIndex"].as_u64().unwrap() as usize;
    let port = app["portDefinitions"][index]["port"].as_u64().unwrap();
    assert_eq!(app["requirePorts"], Value::Bool(true));
    let admin_tcp: std::net::SocketAddr =
        config.listen.admin_tcp.as_ref().unwrap().parse().unwrap();
    assert_eq!(admin_tcp.port() as u64, port);
    assert!(admin_tcp.ip().is_loopback());
    assert_eq!(app["networks"], serde_json::json!([{"mode": "host"}]));

    // In the host's mount namespace where it matters, at the host's paths.
    let docker = &app["container"]["docker"];
    assert_eq!(str_at(&app, "/container/type"), "DOCKER");
    // Not privileged: what berth needs and no more (mounts, loop devices, no AppArmor
    // profile forbidding mount(2)).
    assert_eq!(docker["privileged"], Value::Bool(false));
    let params: Vec<(&str, &str)> = docker["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (str_at(p, "/key"), str_at(p, "/value")))
        .collect();
    for wanted in [
        ("cap-add", "SYS_ADMIN"),
        ("device", "/dev/loop-control"),
        ("device-cgroup-rule", "b 7:* rmw"),
        ("security-opt", "apparmor=unconfined"),
    ] {
        assert!(params.contains(&wanted), "no docker parameter {wanted:?}");
    }
    assert_eq!(
        str_at(docker, "/image"),
        format!("berth:{}", env!("CARGO_PKG_VERSION"))
    );
    let volumes: Vec<(&str, &str, Option<&str>)> = docker["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["key"] == "volume")
        .map(|p| {
            let mut parts = p["value"].as_str().unwrap().split(':');
            let host = parts.next().unwrap();
            let inside = parts.next().unwrap();
            (host, inside, parts.next())
        })
        .collect();
    let bound = |path: &Path| {
        volumes
            .iter()
            .filter(|(_, inside, _)| path.starts_with(inside))
            .max_by_key(|(_, inside, _)| inside.len())
            .copied()
            .unwrap_or_else(|| panic!("{} is not bound from the host", path.display()))
    };
    let mut propagated = vec![config.state_dir.clone(), config.mesos.work_dir.clone()];
    for pool in config.effective_pools() {
        propagated.extend(pool.paths.iter().cloned());
    }
    for path in &propagated {
        let (host, inside, mode) = bound(path);
        assert_eq!(host, inside, "{}", path.display());
        assert_eq!(mode, Some("rshared"), "{}", path.display());
    }
    for sock in [&config.listen.docker, &config.listen.admin] {
        let (host, inside, _) = bound(&socket_path(sock));
        assert_eq!(host, inside, "{sock}");
    }
    let (host, inside, _) = bound(token_file);
    assert_eq!(host, inside);
    assert!(config.listen.csi.is_empty(), "no CSI under Marathon");
}

#[test]
fn docker_plugin_config_matches_its_berth_config() {
    let text = fs::read_to_string(repo("packaging/docker-plugin/config.json")).unwrap();
    let plugin: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        plugin["interface"]["types"],
        serde_json::json!(["docker.volumedriver/1.0"])
    );
    let entrypoint: Vec<&str> = plugin["entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        entrypoint,
        [
            "/usr/bin/berth",
            "serve",
            "--config",
            "/etc/berth/plugin.toml"
        ]
    );
    let config_text = fs::read_to_string(repo("packaging/docker-plugin/plugin.toml")).unwrap();
    let config =
        Config::parse(&config_text, Path::new("plugin.toml")).unwrap_or_else(|e| panic!("{e}"));

    // Docker connects to interface.socket in the plugin's /run/docker/plugins.
    let docker = socket_path(&config.listen.docker);
    assert_eq!(docker.parent().unwrap(), Path::new("/run/docker/plugins"));
    assert_eq!(
        docker.file_name().unwrap().to_str().unwrap(),
        str_at(&plugin, "/interface/socket")
    );
    assert!(config.listen.csi.is_empty());
    // Volumes must be made under the propagated mount, or dockerd cannot see them; the
    // store lives there too so it survives like the data.
    let propagated = Path::new(str_at(&plugin, "/propagatedMount"));
    assert!(config.state_dir.starts_with(propagated));
    for pool in config.effective_pools() {
        for path in &pool.paths {
            assert!(path.starts_with(propagated), "{}", path.display());
        }
    }
    let caps: Vec<&str> = plugin["linux"]["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for cap in ["CAP_SYS_ADMIN", "CAP_MKNOD"] {
        assert!(caps.contains(&cap), "{caps:?}");
    }
    assert_eq!(plugin["linux"]["allowAllDevices"], Value::Bool(true));
    assert_eq!(
        str_at(&plugin, "/linux/devices/0/path"),
        "/dev/loop-control"
    );
}

#[test]
fn snapshots_have_a_class_a_node_local_snapshotter_and_its_rbac() {
    let docs = k8s_documents();
    let config = daemonset_config(&docs);
    let class = one_of_kind(&docs, "VolumeSnapshotClass");
    assert_eq!(str_at(class, "/apiVersion"), "snapshot.storage.k8s.io/v1");
    assert_eq!(str_at(class, "/driver"), config.csi.driver_name);
    assert_eq!(str_at(class, "/deletionPolicy"), "Delete");

    let ds = one_of_kind(&docs, "DaemonSet");
    let snapshotter = container(ds, "csi-snapshotter");
    assert!(
        str_at(snapshotter, "/image").starts_with("registry.k8s.io/sig-storage/csi-snapshotter:v8"),
        "{}",
        str_at(snapshotter, "/image")
    );
    let a = args(snapshotter);
    // Each node's instance handles only the snapshots of its own volumes.
    assert_eq!(flag_or_next(&a, "--node-deployment"), "true");
    assert_eq!(env_field(snapshotter, "NODE_NAME"), "spec.nodeName");
    for (resource, verb) in [
        ("volumesnapshotcontents", "update"),
        ("volumesnapshotcontents", "watch"),
        ("volumesnapshotcontents/status", "patch"),
        ("volumesnapshotclasses", "list"),
        ("events", "create"),
    ] {
        rbac_grants(&docs, "ClusterRole", resource, verb);
    }
}
