//! One volume vocabulary across the three front-ends of one real `berth serve`: the same
//! bad value sent as a Docker option, a CSI StorageClass parameter and a Marathon field (or
//! `berth/VOLUME/KEY` label) is refused with the same reason through each real socket, and
//! each operator of the label-selector grammar lands the volume on the same pool and path
//! whichever front-end asked. Root: the Mesos hook bind-mounts the volume into the sandbox.

#[path = "support/harness/mod.rs"]
mod harness;
mod mesos_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use berth::csi::proto::controller_client::ControllerClient;
use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use berth::csi::proto::{CapacityRange, CreateVolumeRequest, VolumeCapability};
use mesos_support::{Daemon, Scratch, require_root};
use serde_json::{Value, json};

/// Three path pools of plain directories: `fast` (media=ssd, rack=r1), `slow` (media=hdd,
/// rack=r3) and `mixed`, labelled tier=bulk, whose path `mixed-a` also carries its own disk
/// labels rack=r2, media=nvme.
struct Node {
    root: PathBuf,
    work_dir: PathBuf,
    daemon: Daemon,
    _scratch: Scratch,
}

impl Node {
    fn start() -> Self {
        let scratch = Scratch::new("berth-vocab-");
        let root = scratch.path().canonicalize().unwrap();
        for dir in ["fast", "slow", "mixed-a", "mixed-b", "mesos"] {
            std::fs::create_dir(root.join(dir)).unwrap();
        }
        let work_dir = root.join("mesos");
        let r = root.display();
        let pools = format!(
            r#"[[pools]]
name = "fast"
kind = "path"
paths = ["{r}/fast"]
backend = "none"
capacity = "1GiB"
labels = {{ media = "ssd", rack = "r1" }}

[[pools]]
name = "slow"
kind = "path"
paths = ["{r}/slow"]
backend = "none"
capacity = "1GiB"
labels = {{ media = "hdd", rack = "r3" }}

[[pools]]
name = "mixed"
kind = "path"
paths = ["{r}/mixed-a", "{r}/mixed-b"]
backend = "none"
capacity = "1GiB"
labels = {{ tier = "bulk" }}
disk_labels = {{ "{r}/mixed-a" = {{ rack = "r2", media = "nvme" }} }}
"#
        );
        let daemon = Daemon::start_all_front_ends(&root, &work_dir, &pools);
        Self {
            root,
            work_dir,
            daemon,
            _scratch: scratch,
        }
    }

    /// `VolumeDriver.Create`: the status and the `Err` text (empty on success).
    fn docker_create(&self, name: &str, opts: &Value) -> (u16, String) {
        let body = json!({"Name": name, "Opts": opts});
        let (status, reply) = post(
            &self.root.join("docker.sock"),
            "/VolumeDriver.Create",
            &body,
        );
        (
            status,
            reply["Err"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// `CreateVolume` with `parameters`: the volume id, or the status message.
    fn csi_create(&self, name: &str, parameters: &[(&str, &str)]) -> Result<String, String> {
        let endpoint = format!("unix://{}", self.root.join("csi.sock").display());
        let parameters = parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let request = CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 1 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(MountVolume::default())),
            }],
            parameters,
            ..Default::default()
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let channel = berth::csi::connect(&endpoint).await.unwrap();
            match ControllerClient::new(channel).create_volume(request).await {
                Ok(reply) => Ok(reply.into_inner().volume.unwrap().volume_id),
                Err(status) => Err(status.message().to_string()),
            }
        })
    }

    /// A Mesos sandbox of run `run` beneath the agent work directory.
    fn sandbox(&self, run: &str) -> PathBuf {
        let dir = self
            .work_dir
            .join("slaves/S0/frameworks/marathon-1/executors/e/runs")
            .join(run);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `POST /v1/mesos/prepare` on the admin socket, as `berth mesos prepare` sends it.
    fn mesos_prepare(&self, task: &str, definition: &Value) -> (u16, Value) {
        let body = json!({
            "definition": definition,
            "task_id": task,
            "framework_id": "marathon-1",
            "layout": {"sandbox": self.sandbox(task)},
        });
        post(&self.daemon.socket, "/v1/mesos/prepare", &body)
    }

    /// Where a volume landed: its pool and the pool path its data lies under.
    fn placement(&self, name: &str) -> (String, String) {
        let (status, view) = self.daemon.volume(name);
        assert_eq!(status, 200, "{view:#}");
        let path = PathBuf::from(view["path"].as_str().unwrap());
        let base = ["fast", "slow", "mixed-a", "mixed-b"]
            .into_iter()
            .find(|base| path.starts_with(self.root.join(base)))
            .unwrap_or_else(|| panic!("{} is under no pool path", path.display()));
        (view["pool"].as_str().unwrap().to_string(), base.to_string())
    }
}

fn post(socket: &Path, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut stream = UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, reply) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(reply).unwrap_or(Value::Null))
}

/// A Marathon app with one persistent volume `data` of 1 MiB on a `path` disk, `persistent`
/// fields added and `labels` set.
fn app(id: &str, persistent: &[(&str, Value)], labels: &[(&str, &str)]) -> Value {
    let mut info = json!({"size": 1, "type": "path"});
    for (key, value) in persistent {
        info[key] = value.clone();
    }
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "id": id,
        "container": {"volumes": [{"containerPath": "data", "mode": "RW", "persistent": info}]},
        "labels": labels,
        "unreachableStrategy": "disabled",
        "upgradeStrategy": {"minimumHealthCapacity": 0, "maximumOverCapacity": 0},
    })
}

/// How a bad value reaches Marathon: a `persistent` field, or a `berth/data/KEY` label.
enum Marathon {
    Field(&'static str, Value),
    Label(&'static str),
}

struct BadInput {
    docker: &'static str,
    /// `None` where a StorageClass has no such parameter (the size comes from the claim).
    csi: Option<&'static str>,
    marathon: Marathon,
    value: &'static str,
    /// Part of the one reason all three give.
    reason: &'static str,
}

fn bad_inputs() -> Vec<BadInput> {
    use Marathon::{Field, Label};
    let row = |docker, csi, marathon, value, reason| BadInput {
        docker,
        csi,
        marathon,
        value,
        reason,
    };
    vec![
        row(
            "type",
            Some("type"),
            Field("type", json!("floppy")),
            "floppy",
            "\"floppy\" is not a volume type; use root, path or mount",
        ),
        row(
            "size",
            None,
            Field("size", json!(0)),
            "0",
            "\"0\" is not a size: a size must be greater than zero",
        ),
        row(
            "size",
            None,
            Field("size", json!(-1)),
            "-1",
            "\"-1\" is not a size: a size is a number",
        ),
        row(
            "profile",
            Some("profile"),
            Field("profileName", json!("")),
            "",
            "must not be empty; leave the key out instead",
        ),
        row(
            "constraints",
            Some("constraints"),
            Field("constraints", json!([["path", "IS", "x"]])),
            r#"[["path","IS","x"]]"#,
            "constraint 1: must be \"LIKE\" or \"UNLIKE\", got \"IS\"",
        ),
        row(
            "constraints",
            Some("constraints"),
            Field("constraints", json!([["path", "LIKE", "/mnt/(ssd"]])),
            r#"[["path","LIKE","/mnt/(ssd"]]"#,
            "constraint 1: \"/mnt/(ssd\" is not a valid regular expression: unclosed group",
        ),
        row(
            "constraints",
            Some("constraints"),
            Field("constraints", json!([["hostname", "LIKE", "x"]])),
            r#"[["hostname","LIKE","x"]]"#,
            "constraint 1: only \"path\" constraints are supported on volumes",
        ),
        row(
            "pool",
            Some("pool"),
            Label("pool"),
            " ",
            "must not be empty",
        ),
        row(
            "fs",
            Some("fs"),
            Label("fs"),
            "btrfs",
            "\"btrfs\" is not a filesystem berth makes; use ext4 or xfs",
        ),
        row(
            "uid",
            Some("uid"),
            Label("uid"),
            "-3",
            "\"-3\" is not a numeric id",
        ),
        row(
            "gid",
            Some("gid"),
            Label("gid"),
            "staff",
            "\"staff\" is not a numeric id",
        ),
        row(
            "mode",
            Some("mode"),
            Label("mode"),
            "+755",
            "\"+755\" is not an octal permission mode",
        ),
        row(
            "mode",
            Some("mode"),
            Label("mode"),
            "0999",
            "\"0999\" is not an octal permission mode",
        ),
        row(
            "reclaim",
            Some("reclaim"),
            Label("reclaim"),
            "forever",
            "\"forever\" is not a reclaim policy; use delete or retain",
        ),
        row(
            "selector",
            Some("selector"),
            Label("selector"),
            "rack in (r1",
            "\"(\" without a matching \")\"",
        ),
        row(
            "selector",
            Some("selector"),
            Label("selector"),
            "media=s s d",
            "requirement 1 \"media=s s d\": label value \"s s d\"",
        ),
        row(
            "selector",
            Some("selector"),
            Label("selector"),
            "rack < 3",
            "expected =, ==, !=, in or notin after the key",
        ),
        row(
            "label.a b",
            Some("label/a b"),
            Label("label.a b"),
            "x",
            "label key \"a b\"",
        ),
        row(
            "label.team",
            Some("label/team"),
            Label("label.team"),
            "a b",
            "label value \"a b\"",
        ),
        row(
            "label.../../victim",
            Some("label/../../victim"),
            Label("label.../../victim"),
            "x",
            "must be a DNS subdomain",
        ),
    ]
}

#[test]
fn the_same_bad_value_gets_the_same_reason_from_every_front_end() {
    require_root();
    let node = Node::start();
    for (index, input) in bad_inputs().into_iter().enumerate() {
        let what = format!("{}={:?}", input.docker, input.value);

        let name = format!("v{index}");
        let (status, message) = node.docker_create(&name, &json!({ input.docker: input.value }));
        assert_eq!(status, 400, "{what}: {message}");
        let lead = format!("invalid option {:?} for volume {name}: ", input.docker);
        let docker = message
            .strip_prefix(&lead)
            .unwrap_or_else(|| panic!("{what}: {message:?} does not start {lead:?}"))
            .to_string();
        assert!(docker.contains(input.reason), "{what}: {docker}");

        if let Some(key) = input.csi {
            let message = node
                .csi_create(&format!("pvc-{index}"), &[(key, input.value)])
                .expect_err(&what);
            let lead = format!("parameters.{key}: ");
            let (_, csi) = message
                .split_once(&lead)
                .unwrap_or_else(|| panic!("{what}: {message:?} lacks {lead:?}"));
            assert_eq!(csi, docker, "{what}: CSI and Docker differ");
        }

        let (definition, path) = match &input.marathon {
            Marathon::Field(field, value) => (
                app("/bad", &[(field, value.clone())], &[]),
                format!("container.volumes[0].persistent.{field}"),
            ),
            Marathon::Label(key) => {
                let label = format!("berth/data/{key}");
                (
                    app("/bad", &[], &[(&label, input.value)]),
                    format!("labels.{label}"),
                )
            }
        };
        let (status, reply) = node.mesos_prepare(&format!("bad.{index}"), &definition);
        assert_eq!(status, 422, "{what}: {reply:#}");
        let violations = reply["violations"].as_array().unwrap();
        assert_eq!(violations.len(), 1, "{what}: {reply:#}");
        assert_eq!(violations[0]["path"], path.as_str(), "{what}");
        assert_eq!(
            violations[0]["message"].as_str().unwrap(),
            docker,
            "{what}: Marathon and Docker differ"
        );
    }
    let (status, listed) = node.daemon.admin("GET", "/v1/volumes");
    assert_eq!(status, 200);
    assert_eq!(listed["volumes"], json!([]), "{listed:#}");
}

#[test]
fn each_selector_operator_picks_the_same_place_through_every_front_end() {
    require_root();
    let node = Node::start();
    let cases = [
        ("media=ssd", ("fast", "fast")),
        ("media==hdd", ("slow", "slow")),
        ("media!=ssd,media!=hdd,media!=nvme", ("mixed", "mixed-b")),
        ("rack in (r2,r9)", ("mixed", "mixed-a")),
        ("rack notin (r1,r2),media", ("slow", "slow")),
        ("tier,!rack", ("mixed", "mixed-b")),
        ("!tier,rack", ("fast", "fast")),
    ];
    for (index, (selector, (pool, base))) in cases.into_iter().enumerate() {
        let expected = (pool.to_string(), base.to_string());

        let docker = format!("docker-{index}");
        let (status, message) =
            node.docker_create(&docker, &json!({"size": "1MiB", "selector": selector}));
        assert_eq!(status, 200, "{selector}: {message}");
        assert_eq!(node.placement(&docker), expected, "Docker, {selector}");

        let csi = node
            .csi_create(&format!("pvc-{index}"), &[("selector", selector)])
            .unwrap_or_else(|e| panic!("CSI, {selector}: {e}"));
        assert_eq!(node.placement(&csi), expected, "CSI, {selector}");

        let task = format!("m{index}.t1");
        let definition = app(
            &format!("/m{index}"),
            &[],
            &[("berth/data/selector", selector)],
        );
        let (status, reply) = node.mesos_prepare(&task, &definition);
        assert_eq!(status, 200, "Mesos, {selector}: {reply:#}");
        let mesos = reply["volumes"][0]["volume"].as_str().unwrap();
        assert_eq!(node.placement(mesos), expected, "Mesos, {selector}");
    }

    // A selector no place satisfies: each front-end is told why, place by place.
    let (status, message) = node.docker_create(
        "nowhere",
        &json!({"size": "1MiB", "selector": "media=tape"}),
    );
    assert_eq!(status, 507, "{message}");
    for place in ["fast", "slow", "mixed-a", "mixed-b"] {
        assert!(
            message.contains(&format!("{} in pool", node.root.join(place).display())),
            "{place}: {message}"
        );
    }
    assert!(
        message.contains("fails the selector's media=tape"),
        "{message}"
    );
    let csi = node
        .csi_create("pvc-nowhere", &[("selector", "media=tape")])
        .unwrap_err();
    assert!(csi.contains("fails the selector's media=tape"), "{csi}");
    let definition = app("/nowhere", &[], &[("berth/data/selector", "media=tape")]);
    let (status, reply) = node.mesos_prepare("nowhere.t1", &definition);
    assert_eq!(status, 507, "{reply:#}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("fails the selector's media=tape"),
        "{reply:#}"
    );
}

/// A loop-backed ext4 disk of 32 MiB mounted at `disks/NAME`.
fn disk(root: &Path, name: &str) -> PathBuf {
    use berth::host::Host;
    let host = berth::host::linux::LinuxHost::new();
    let images = root.join("images");
    let mount_point = root.join("disks").join(name);
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&mount_point).unwrap();
    let image = images.join(format!("{name}.img"));
    let ext4 = berth::engine::types::FsType::Ext4;
    host.create_image(&image, 32 << 20, Some(ext4)).unwrap();
    host.mount_image(&image, &mount_point, ext4).unwrap();
    mount_point
}

#[test]
fn a_selector_picks_a_whole_disk_by_its_own_labels() {
    require_root();
    let scratch = Scratch::new("berth-vocab-disks-");
    let root = scratch.path().canonicalize().unwrap();
    let ssd = disk(&root, "a");
    let hdd = disk(&root, "b");
    let work_dir = root.join("mesos");
    std::fs::create_dir(&work_dir).unwrap();
    let pools = format!(
        r#"[[pools]]
name = "disks"
kind = "mount"
paths = ["{}"]
labels = {{ rack = "r1" }}
disk_labels = {{ "{}" = {{ media = "ssd" }}, "{}" = {{ media = "hdd" }} }}
"#,
        root.join("disks").display(),
        ssd.display(),
        hdd.display()
    );
    let daemon = Daemon::start_all_front_ends(&root, &work_dir, &pools);
    let create = |name: &str, selector: &str| {
        let body = json!({"Name": name, "Opts": {"type": "mount", "selector": selector}});
        post(&root.join("docker.sock"), "/VolumeDriver.Create", &body)
    };
    // The ssd disk sorts first and is the same size, so only the selector sends this to b.
    let (status, reply) = create("cold", "media notin (ssd),rack=r1");
    assert_eq!(status, 200, "{reply:#}");
    let (_, view) = daemon.volume("cold");
    let path = PathBuf::from(view["path"].as_str().unwrap());
    assert!(path.starts_with(&hdd), "{view:#}");
    // The hdd is taken now: a second cold volume is told why, disk by disk.
    let (status, reply) = create("cold-2", "media=hdd");
    assert_eq!(status, 507, "{reply:#}");
    let message = reply["Err"].as_str().unwrap();
    assert!(
        message.contains(&format!("disk {} is held by volume cold", hdd.display())),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "{} in pool disks has labels {{media=ssd, rack=r1}} and fails the selector's media=hdd",
            ssd.display()
        )),
        "{message}"
    );
}
