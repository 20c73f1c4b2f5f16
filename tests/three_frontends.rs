//! One node, three orchestrators: ONE `berth serve` serving CSI, the Docker volume plugin and
//! the Mesos hook at once, driven by a real private dockerd, a CSI client and `berth mesos`.
//! Docker sees only Docker's volumes, and `docker volume rm`, `docker volume prune` and
//! `docker run -v NAME` on a name Kubernetes or Marathon holds change nothing and say who holds
//! it and how to hand it over; CSI lists only CSI volumes and its DeleteVolume of a Docker or
//! Mesos volume's id deletes nothing. Every refused call leaves each volume's bytes exactly as
//! they were. Needs root, dockerd (docker.io) and a static busybox (`scripts/test-deps.sh`).

#[path = "support/all_frontends.rs"]
mod all_frontends;
#[path = "support/dockerd.rs"]
mod dockerd;
#[path = "support/harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;

use all_frontends::{Node, mount_capability, task_args};
use berth::csi::proto::*;
use dockerd::{Dockerd, IMAGE};

const MIB: i64 = 1 << 20;

/// Content no other volume has: the volume's name and a pattern.
fn content(name: &str) -> Vec<u8> {
    let mut data = format!("owned data of {name}\n").into_bytes();
    data.extend((0..64 * 1024u32).map(|i| (i.wrapping_mul(40_503) >> 7) as u8 ^ name.len() as u8));
    data
}

/// A volume's data directory, as the admin API shows it.
fn data_dir(node: &Node, name: &str) -> PathBuf {
    let (status, view) = node.volume(name);
    assert_eq!(status, 200, "{name}: {view}");
    PathBuf::from(view["path"].as_str().unwrap())
}

/// The bytes of `file` in each volume, read through the admin API's path.
fn snapshot(node: &Node, names: &[&str]) -> BTreeMap<String, Vec<u8>> {
    names
        .iter()
        .map(|n| {
            let bytes = std::fs::read(data_dir(node, n).join("owned.bin"))
                .unwrap_or_else(|e| panic!("{n}: {e}"));
            (n.to_string(), bytes)
        })
        .collect()
}

/// What dockerd lists for berth's driver.
fn docker_names(docker: &Dockerd, driver: &str) -> Vec<String> {
    docker
        .docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"])
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{driver} ")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_orchestrator_sees_and_changes_only_its_own_volumes_on_one_daemon() {
    // Declared first so the Dockerd is dropped before berth goes (its Unmounts need berth).
    let node = Node::start();
    let docker = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    let driver = node.driver.clone();

    // Kubernetes' volume, written through a CSI publish, then detached.
    let (mut controller, mut csi) = node.csi().await;
    let pvc = "pvc-3fe-orders";
    controller
        .create_volume(CreateVolumeRequest {
            name: pvc.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 32 * MIB,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_capability()],
            ..Default::default()
        })
        .await
        .unwrap();
    let target = node.csi_attach(&mut csi, pvc).await.unwrap();
    std::fs::write(target.join("owned.bin"), content(pvc)).unwrap();
    node.csi_detach(&mut csi, pvc).await;

    // Marathon's volume, written by its task, then detached by the task's cleanup.
    let definition = node.mysql_app();
    let sandbox = node.sandbox("run-1");
    let task = |sub: &str| task_args(sub, &definition, &sandbox);
    let prepared = node.mesos(task("prepare"));
    let mesos_name = prepared["volumes"][0]["volume"]
        .as_str()
        .unwrap()
        .to_string();
    let mesos = mesos_name.as_str();
    std::fs::write(sandbox.join("mysqldata/owned.bin"), content(mesos)).unwrap();
    node.mesos(task("cleanup"));

    // Docker's own volume, written by a container.
    docker.docker_ok(&[
        "volume",
        "create",
        "--driver",
        &driver,
        "--opt",
        "size=32MiB",
        "web",
    ]);
    docker.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "web:/data",
        IMAGE,
        "sh",
        "-c",
        "printf 'owned data of web\\n' > /data/owned.bin",
    ]);

    let held = [pvc, mesos];
    let before = snapshot(&node, &held);
    let before_all = snapshot(&node, &[pvc, mesos, "web"]);
    assert_eq!(before_all["web"], b"owned data of web\n");
    assert_eq!(before[pvc], content(pvc));
    assert_eq!(before[mesos], content(mesos));

    // Docker lists only its own.
    assert_eq!(docker_names(&docker, &driver), ["web"]);

    // CSI lists only its own; its DeleteVolume of another front-end's id deletes nothing; it
    // cannot publish one.
    let listed = controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = listed
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    assert_eq!(ids, [pvc]);
    for other in [mesos, "web"] {
        controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: other.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(node.volume(other).0, 200, "{other} is still there");
    }
    assert_eq!(snapshot(&node, &[pvc, mesos, "web"]), before_all);
    let refused = node.csi_attach(&mut csi, mesos).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");

    // Docker cannot remove, inspect, create over or mount a volume another front-end holds.
    // `volume rm` and `volume inspect` of a name dockerd has never seen ask every driver and
    // drop their refusals, so dockerd says only that it has no such volume; a create or a
    // `run -v` reaches berth's answer, which names the holder and the handover.
    for (name, owner) in [(pvc, "csi"), (mesos, "mesos")] {
        let says_why = |stderr: &str| {
            assert!(
                stderr.contains(&format!("belongs to the {owner} front-end"))
                    && stderr.contains(&format!("berth volume handover {name} --to docker")),
                "{name}: {stderr}"
            );
        };
        for verb in ["rm", "inspect"] {
            let stderr = docker.docker_err(&["volume", verb, name]);
            assert!(
                stderr.contains("No such volume"),
                "volume {verb} {name}: {stderr}"
            );
        }
        says_why(&docker.docker_err(&["volume", "create", "--driver", &driver, name]));
        let bind = format!("{name}:/x");
        says_why(&docker.docker_err(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--volume-driver",
            &driver,
            "-v",
            &bind,
            IMAGE,
            "cat",
            "/x/owned.bin",
        ]));
    }
    // Prune. A docker CLI talking to a daemon of API 1.42 or later has --all (named volumes
    // too); an older daemon's prune takes named volumes anyway and the CLI hides the flag.
    let pruned = docker.docker(&["volume", "prune", "--all", "--force"]);
    if !pruned.status.success() {
        let stderr = String::from_utf8_lossy(&pruned.stderr);
        assert!(
            stderr.contains("unknown flag: --all"),
            "volume prune --all: {stderr}"
        );
        docker.docker_ok(&["volume", "prune", "--force"]);
    }
    let listed = docker_names(&docker, &driver);
    assert!(listed.is_empty() || listed == ["web"], "{listed:?}");
    assert_eq!(node.volume(pvc).0, 200);
    assert_eq!(node.volume(mesos).0, 200);

    // Every refused call left the data byte for byte.
    assert_eq!(snapshot(&node, &held), before);
    let (_, views) = node.admin("GET", "/v1/volumes");
    let owners: BTreeMap<String, String> = views["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["frontend"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    owners
        .get("web")
        .inspect(|o| assert_eq!(o.as_str(), "docker"));
    let held_by: Vec<(&str, &str)> = owners
        .iter()
        .filter(|(n, _)| n.as_str() != "web")
        .map(|(n, o)| (n.as_str(), o.as_str()))
        .collect();
    let mut expected = vec![(pvc, "csi"), (mesos, "mesos")];
    expected.sort();
    assert_eq!(held_by, expected);
}
