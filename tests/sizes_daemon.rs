//! A reservation is a promise (issue 14), through a real `berth serve` and its real sockets:
//! every front-end reports the same figures. The pool lives on a small loop-mounted ext4 of
//! its own, so filling it with a file berth did not make is quick and bounded.
//!
//! - Capacity: once something else fills the pool's filesystem below its nominal capacity,
//!   CSI GetCapacity and the admin view (`/metrics`' `berth_pool_available_bytes`) drop to
//!   what the filesystem really holds, a Docker create between the two figures is refused
//!   naming both, and a loopfs volume made before the fill still takes its whole size.
//! - Totals: Docker `VolumeDriver.Get`'s Status, `berth volume inspect`, CSI
//!   NodeGetVolumeStats and `df` inside the mount show the same total bytes.

#[path = "support/docker_plugin.rs"]
mod docker_plugin;
#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/host.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::csi::proto::controller_client::ControllerClient;
use berth::csi::proto::node_client::NodeClient;
use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use berth::csi::proto::*;
use berth::engine::types::format_size;
use docker_plugin::request;
use serde_json::{Value, json};
use support::{MIB, fill, make_fs, mount_loop};

/// `berth serve` on this test's sockets; killed (then waited for) on drop, before the
/// scratch directory's mounts are cleaned.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, pool: &Path) -> Self {
        let d = dir.display();
        let config = format!(
            r#"state_dir = "{d}/state"
node_id = "sizes-node"

[listen]
csi = "unix://{d}/csi.sock"
docker = "{d}/docker.sock"
admin = "{d}/admin.sock"

[[pools]]
name = "default"
kind = "root"
paths = ["{pool}"]
"#,
            pool = pool.display()
        );
        std::fs::write(dir.join("berth.toml"), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(dir.join("berth.toml"))
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("berth.log")).unwrap())
            .spawn()
            .unwrap();
        let daemon = Self {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !["csi.sock", "docker.sock", "admin.sock"]
            .iter()
            .all(|s| dir.join(s).exists())
        {
            assert!(
                Instant::now() < deadline,
                "berth did not open its sockets: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("berth.log")).unwrap_or_default()
    }

    /// A plugin protocol call on the Docker socket: status and reply.
    fn docker(&self, call: &str, body: Value) -> (u16, Value) {
        let (status, raw) = request(
            &self.dir.join("docker.sock"),
            "POST",
            &format!("/VolumeDriver.{call}"),
            &[],
            body.to_string().as_bytes(),
        )
        .unwrap();
        (status, serde_json::from_slice(&raw).unwrap())
    }

    /// `berth volume ARGS` on the admin socket; its JSON output.
    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("volume")
            .arg("--admin-socket")
            .arg(self.dir.join("admin.sock"))
            .args(args)
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_TOKEN_FILE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "berth volume {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A sample of `/metrics` for pool `default`.
    fn pool_gauge(&self, metric: &str) -> u64 {
        let (status, raw) =
            request(&self.dir.join("admin.sock"), "GET", "/metrics", &[], b"").unwrap();
        assert_eq!(status, 200);
        let text = String::from_utf8(raw).unwrap();
        let prefix = format!("{metric}{{pool=\"default\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `df` shows as the size of the filesystem at `path`, and what it has free.
fn df(path: &Path) -> (u64, u64) {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    (
        s.blocks() * s.fragment_size(),
        s.blocks_available() * s.fragment_size(),
    )
}

fn mount_capability() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_end_reports_the_real_capacity_and_the_same_totals() {
    harness::require_root(); // it mounts a pool filesystem and loopfs volumes
    let scratch = support::scratch();
    let image = scratch.join("poolfs.img");
    make_fs(&image, 512 * MIB, "mkfs.ext4", &["-q", "-F", "-m", "0"]);
    let poolfs = scratch.join("poolfs");
    mount_loop(&image, &poolfs, "");
    let daemon = Daemon::start(scratch.path(), &poolfs);
    let channel = berth::csi::connect(&format!("unix://{}", scratch.join("csi.sock").display()))
        .await
        .unwrap();
    let mut controller = ControllerClient::new(channel.clone());
    let mut node = NodeClient::new(channel);

    // Totals: a 64 MiB loopfs volume made through Docker and one made through CSI.
    daemon.docker(
        "Create",
        json!({"Name": "early", "Opts": {"size": "64MiB"}}),
    );
    let (status, mounted) = daemon.docker("Mount", json!({"Name": "early", "ID": "c1"}));
    assert_eq!(status, 200, "{mounted}");
    let docker_data = PathBuf::from(mounted["Mountpoint"].as_str().unwrap());
    let (status, got) = daemon.docker("Get", json!({"Name": "early"}));
    assert_eq!(status, 200, "{got}");
    let docker_total = got["Volume"]["Status"]["totalBytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("Get shows the total: {got}"));
    let (df_total, _) = df(&docker_data);
    let inspected = daemon.cli(&["inspect", "early"]);
    assert_eq!(docker_total, df_total, "Docker Get vs df inside the mount");
    assert_eq!(
        inspected["usage"]["bytes_total"], docker_total,
        "berth volume inspect vs Docker Get"
    );
    assert!(docker_total >= 64 * MIB, "{docker_total}");

    controller
        .create_volume(CreateVolumeRequest {
            name: "k".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_capability()],
            ..Default::default()
        })
        .await
        .unwrap();
    let staging = scratch.join("k8s/staging/k");
    std::fs::create_dir_all(&staging).unwrap();
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: "k".into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_capability()),
        ..Default::default()
    })
    .await
    .unwrap();
    let stats = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "k".into(),
            volume_path: staging.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let csi_total = u64::try_from(stats.usage[0].total).unwrap();
    assert_eq!(csi_total, df(&staging).0, "NodeGetVolumeStats vs df");
    assert_eq!(
        daemon.cli(&["inspect", "k"])["usage"]["bytes_total"],
        csi_total,
        "berth volume inspect vs NodeGetVolumeStats"
    );
    assert_eq!(
        csi_total, docker_total,
        "the same size shows the same total"
    );
    eprintln!("64 MiB asked: {docker_total} bytes total everywhere");

    // Capacity: fill the pool's filesystem with a file berth did not make.
    let capacity = |c: &mut ControllerClient<_>| {
        let mut c = c.clone();
        async move {
            let reply = c
                .get_capacity(GetCapacityRequest::default())
                .await
                .unwrap()
                .into_inner();
            u64::try_from(reply.available_capacity).unwrap()
        }
    };
    let before = capacity(&mut controller).await;
    assert_eq!(before, daemon.pool_gauge("berth_pool_available_bytes"));
    let (_, free) = df(&poolfs);
    let (_, error) = fill(&poolfs.join("not-berth"), free - 100 * MIB);
    assert!(error.is_none(), "{error:?}");
    let (_, really_free) = df(&poolfs);
    let after = capacity(&mut controller).await;
    let gauge = daemon.pool_gauge("berth_pool_available_bytes");
    let reservable = daemon.pool_gauge("berth_pool_capacity_bytes")
        - daemon.pool_gauge("berth_pool_reserved_bytes");
    eprintln!(
        "available: {before} before the fill; after it {after} (CSI), {gauge} (/metrics), \
         {really_free} free, {reservable} left to reserve"
    );
    assert_eq!(after, really_free, "CSI GetCapacity follows the free space");
    assert_eq!(gauge, really_free, "the admin view follows the free space");
    assert!(after + 200 * MIB < before, "{before} -> {after}");

    let between = 200 * MIB;
    assert!(after < between && between < reservable);
    let (status, refused) = daemon.docker(
        "Create",
        json!({"Name": "between", "Opts": {"size": "200MiB"}}),
    );
    let message = refused["Err"].as_str().unwrap_or_default();
    assert_ne!(status, 200, "{refused}");
    for figure in [
        format!(
            "{} left to reserve of its capacity",
            format_size(reservable)
        ),
        format!("{} its filesystem can still hold", format_size(really_free)),
    ] {
        assert!(message.contains(&figure), "{figure:?} in {message}");
    }
    let (_, listed) = daemon.docker("List", json!({}));
    let names: Vec<&str> = listed["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["Name"].as_str())
        .collect();
    assert_eq!(names, ["early"], "nothing made");

    // The volume made before the fill takes its whole size.
    let (written, error) = fill(&docker_data.join("mine"), 64 * MIB);
    assert!(
        error.is_none(),
        "the early volume took {written} bytes, then {error:?}"
    );

    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: "k".into(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .unwrap();
    daemon.docker("Unmount", json!({"Name": "early", "ID": "c1"}));
    drop(daemon);
}
