//! Volume roots have the owner and mode the request asks for whatever berth's umask: the
//! daemons here start under umask 0077, as the shipped systemd unit (`UMask=0077`) runs
//! them. A non-root writer (uid 999, as PostgreSQL's and MySQL's images run) writes through
//! a real container of the test dockerd and through a CSI publish.
//!
//! One test: the umask is the whole process's, so nothing else in this binary runs beside
//! it. Needs root, docker.io and busybox-static (scripts/test-deps.sh installs them).

#[path = "support/csi_daemon.rs"]
mod csi_daemon;
#[path = "support/docker_plugin.rs"]
mod docker_plugin;
#[path = "support/dockerd.rs"]
mod dockerd;
#[path = "support/harness/mod.rs"]
mod harness;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use berth::csi::proto::*;
use csi_daemon::Daemon;
use docker_plugin::Berth;
use dockerd::{Dockerd, IMAGE};
use serde_json::Value;

const WRITER: u32 = 999;

/// Runs `script` with `sh` as uid/gid `WRITER` (no supplementary groups) in the directory
/// `dir`, reached through an fd this (root) process opened, as a container reaches its
/// volume through a mount and not through the host's path to it.
fn run_as_writer(dir: &Path, script: &str) -> std::process::Output {
    let dir_fd = File::open(dir).unwrap();
    let raw = dir_fd.as_raw_fd();
    let mut command = Command::new("/bin/sh");
    command.args(["-c", script]).uid(WRITER).gid(WRITER);
    // SAFETY: the closure only calls fchdir(2), which is async-signal-safe; `raw` stays open
    // (owned by `dir_fd`) until the child has been spawned.
    unsafe {
        command.pre_exec(move || {
            if libc::fchdir(raw) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = command.output().unwrap();
    drop(dir_fd);
    out
}

#[track_caller]
fn assert_root_0755(dir: &Path) {
    let meta = std::fs::metadata(dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o755),
        "{} is {}:{} {:o}",
        dir.display(),
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777
    );
}

#[track_caller]
fn assert_writer_owns(dir: &Path) {
    let meta = std::fs::metadata(dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (WRITER, WRITER),
        "{}",
        dir.display()
    );
    let out = run_as_writer(dir, "echo written > by-writer");
    assert!(
        out.status.success(),
        "uid {WRITER} cannot write {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(dir.join("by-writer")).unwrap().uid(),
        WRITER
    );
}

fn mount_capability() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

/// Creates, stages and publishes a 32 MiB CSI volume with `parameters`; returns the target.
async fn csi_publish(
    daemon: &Daemon,
    clients: &mut csi_daemon::Clients,
    id: &str,
    parameters: &[(&str, &str)],
) -> std::path::PathBuf {
    clients
        .controller
        .create_volume(CreateVolumeRequest {
            name: id.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 32 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_capability()],
            parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let staging = daemon.k8s(&format!("{id}/globalmount"));
    let target = daemon.k8s(&format!("{id}/pod/mount"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    clients
        .node
        .node_stage_volume(NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_capability()),
            ..Default::default()
        })
        .await
        .unwrap();
    clients
        .node
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(mount_capability()),
            ..Default::default()
        })
        .await
        .unwrap();
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_umask_0077_roots_are_as_asked_and_a_non_root_writer_can_write() {
    harness::require_root();
    // dockerd is started first, under the usual umask; only berth runs under 0077.
    let docker = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: umask(2) cannot fail; it changes the mask of this whole process, which is why
    // this binary holds this one test.
    unsafe { libc::umask(0o077) };

    // Docker: a real container running as uid 999.
    let berth = Berth::start();
    let driver = berth.driver().to_string();
    let uid = format!("uid={WRITER}");
    let gid = format!("gid={WRITER}");
    for (volume, opts) in [
        ("owned", vec!["size=32MiB", &uid, &gid]),
        ("plain-owned", vec![&uid, &gid]),
        ("default", vec!["size=32MiB"]),
    ] {
        let mut args = vec!["volume", "create", "--driver", &driver];
        for opt in opts {
            args.extend(["--opt", opt]);
        }
        args.push(volume);
        docker.docker_ok(&args);
    }
    let user = format!("{WRITER}:{WRITER}");
    for volume in ["owned", "plain-owned"] {
        let mount = format!("{volume}:/data");
        let out = docker.docker_ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            &user,
            "-v",
            &mount,
            IMAGE,
            "sh",
            "-c",
            "echo hello > /data/f && cat /data/f",
        ]);
        assert_eq!(out.trim(), "hello", "{volume}");
    }
    let out = docker.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "default:/data",
        IMAGE,
        "stat",
        "-c",
        "%u:%g %a",
        "/data",
    ]);
    assert_eq!(
        out.trim(),
        "0:0 755",
        "the default root, seen in a container"
    );
    let inspected: Value =
        serde_json::from_str(&docker.docker_ok(&["volume", "inspect", "default"])).unwrap();
    let mountpoint = inspected[0]["Mountpoint"].as_str().unwrap().to_string();
    for volume in ["owned", "plain-owned", "default"] {
        docker.docker_ok(&["volume", "rm", volume]);
    }
    drop(docker);
    drop(berth);
    assert!(!Path::new(&mountpoint).exists());

    // CSI: publish, then write as uid 999 at the target.
    let daemon = Daemon::start("");
    let mut clients = daemon.clients().await;
    let owned = csi_publish(
        &daemon,
        &mut clients,
        "owned",
        &[("uid", "999"), ("gid", "999")],
    )
    .await;
    assert_writer_owns(&owned);
    let plain = csi_publish(
        &daemon,
        &mut clients,
        "plain-owned",
        &[("pool", "plain"), ("uid", "999"), ("gid", "999")],
    )
    .await;
    assert_writer_owns(&plain);
    let default = csi_publish(&daemon, &mut clients, "default", &[]).await;
    assert_root_0755(&default);
    let out = run_as_writer(&default, "echo no > refused");
    assert!(
        !out.status.success(),
        "0755 root: uid {WRITER} must not write"
    );
    let group = csi_publish(&daemon, &mut clients, "mode", &[("mode", "0770")]).await;
    let meta = std::fs::metadata(&group).unwrap();
    assert_eq!(
        meta.mode() & 0o7777,
        0o770,
        "an asked mode, whatever the umask"
    );
}
