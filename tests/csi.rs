//! The CSI services of the real `berth` binary on its unix socket, with the generated
//! tonic client, as root on the real kernel: the full lifecycle of mount (loopfs and plain
//! directory), block and inline ephemeral volumes, idempotency of every RPC, each error code,
//! the socket's life cycle, restarts, and the flows csi-sanity runs for every capability berth
//! advertises. Each test runs its own daemon in its own directory.

#[path = "support/csi_daemon.rs"]
mod csi_daemon;
#[path = "support/harness/mod.rs"]
mod harness;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessType as CsiAccess, MountVolume};
use berth::csi::proto::*;
use berth::csi::testing::{
    block, cap, controller_expand_request, delete_request, mount, params, publish_request,
    stage_request, stats_request, unpublish_request, unstage_request,
};
use csi_daemon::{Clients, Daemon, loops_under, mounts_under};
use harness::serve::{READY_DEADLINE, Serve};
use tonic::Code;

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;
const NODE_KEY: &str = "topology.berth.io/node";

/// Retries a call that failed on a transient host condition, as a CO retries: an unmount
/// refused with EBUSY, or a device another process briefly holds (`e2fsck` cannot open it
/// exclusively). With other tests' daemons attaching and mounting at the same time these
/// show up now and then; anything else is returned at once.
macro_rules! retry_transient {
    ($call:expr) => {{
        let mut attempt = 0;
        loop {
            match $call.await {
                Err(status) if attempt < 20 && is_transient(&status) => {
                    attempt += 1;
                    eprintln!("retrying after a transient failure: {}", status.message());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other,
            }
        }
    }};
}

fn is_transient(status: &tonic::Status) -> bool {
    status.code() == Code::Internal
        && ["busy", "Cannot continue"]
            .iter()
            .any(|m| status.message().contains(m))
}

/// Loop devices are detached by the kernel once their filesystem's last user lets go,
/// which can lag the unmount a little.
async fn assert_no_loops_under(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !loops_under(path).is_empty() {
        assert!(
            Instant::now() < deadline,
            "loop devices left: {:?}",
            loops_under(path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mount_group(gid: u32) -> VolumeCapability {
    cap(
        Mode::SingleNodeWriter,
        CsiAccess::Mount(MountVolume {
            volume_mount_group: gid.to_string(),
            ..MountVolume::default()
        }),
    )
}

fn create_request(name: &str, required: i64, caps: VolumeCapability) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![caps],
        ..Default::default()
    }
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needles: &[&str]) {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "{}", status.message());
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{:?} does not mention {needle:?}",
            status.message()
        );
    }
}

fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

/// Total bytes of the filesystem at `path` (`statvfs`).
fn fs_total(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).expect("statvfs");
    s.blocks() * s.fragment_size()
}

async fn list_entries(c: &mut Clients) -> Vec<list_volumes_response::Entry> {
    c.controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
}

async fn list_ids(c: &mut Clients) -> Vec<String> {
    list_entries(c)
        .await
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_volumes_live_through_the_whole_lifecycle() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    for (id, required, pool) in [("sized", 64 * MIB, "default"), ("dir", 0, "plain")] {
        let mut create = create_request(id, required, mount());
        create.parameters = params(&[("pool", pool)]);
        let created = c
            .controller
            .create_volume(create.clone())
            .await
            .unwrap()
            .into_inner();
        let again = c
            .controller
            .create_volume(create)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created, again, "{id}: CreateVolume is idempotent");
        assert_eq!(created.volume.as_ref().unwrap().capacity_bytes, required);

        // kubelet makes the staging directory and the targets' parents.
        let staging = daemon.k8s(&format!("{id}/globalmount"));
        let (a, b) = (
            daemon.k8s(&format!("{id}/pod-a/mount")),
            daemon.k8s(&format!("{id}/pod-b/mount")),
        );
        for dir in [
            &staging,
            &a.parent().unwrap().to_path_buf(),
            &b.parent().unwrap().to_path_buf(),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for _ in 0..2 {
            c.node
                .node_stage_volume(stage_request(id, &staging, mount()))
                .await
                .unwrap();
        }
        assert!(is_mount_point(&staging), "{id} staged");
        for _ in 0..2 {
            c.node
                .node_publish_volume(publish_request(id, &staging, &a, mount(), false))
                .await
                .unwrap();
            c.node
                .node_publish_volume(publish_request(id, &staging, &b, mount(), true))
                .await
                .unwrap();
        }
        // Written through one publication, read through another; the read-only one refuses writes.
        std::fs::write(a.join("hello"), b"world").unwrap();
        assert_eq!(std::fs::read(b.join("hello")).unwrap(), b"world");
        assert_eq!(std::fs::read(staging.join("hello")).unwrap(), b"world");
        let refused = std::fs::write(b.join("nope"), b"x").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");

        let stats = c
            .node
            .node_get_volume_stats(stats_request(id, &a))
            .await
            .unwrap()
            .into_inner();
        assert!(!stats.volume_condition.unwrap().abnormal);
        let bytes = stats
            .usage
            .iter()
            .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
            .unwrap();
        let inodes = stats
            .usage
            .iter()
            .find(|u| u.unit == volume_usage::Unit::Inodes as i32)
            .unwrap();
        assert!(
            bytes.used > 0 && bytes.total > 0 && bytes.available > 0,
            "{bytes:?}"
        );
        assert!(inodes.used > 0 && inodes.total >= inodes.used, "{inodes:?}");
        if id == "sized" {
            // NodeGetVolumeStats reports what df shows: at least the size asked.
            assert_eq!(bytes.total as u64, fs_total(&a), "{bytes:?}");
            assert!(
                bytes.total >= 64 * MIB && bytes.total <= 72 * MIB,
                "{bytes:?}"
            );
            // The size is enforced by the volume's own filesystem.
            let mut file = std::fs::File::create(a.join("big")).unwrap();
            let full = file
                .write_all(&vec![7u8; 80 << 20])
                .and_then(|_| file.sync_all())
                .unwrap_err();
            assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
            drop(file);
            std::fs::remove_file(a.join("big")).unwrap();
        }
        for _ in 0..2 {
            retry_transient!(c.node.node_unpublish_volume(unpublish_request(id, &a))).unwrap();
            retry_transient!(c.node.node_unpublish_volume(unpublish_request(id, &b))).unwrap();
        }
        assert!(
            !a.exists() && !b.exists(),
            "berth removes the targets it made"
        );
        for _ in 0..2 {
            retry_transient!(c.node.node_unstage_volume(unstage_request(id, &staging))).unwrap();
        }
        assert!(!is_mount_point(&staging));
        assert!(staging.is_dir(), "kubelet's staging directory is kubelet's");
        for _ in 0..2 {
            retry_transient!(c.controller.delete_volume(delete_request(id))).unwrap();
        }
        assert!(!list_ids(&mut c).await.contains(&id.to_string()));
    }
    assert_eq!(
        mounts_under(daemon.path()),
        Vec::<std::path::PathBuf>::new()
    );
    assert_no_loops_under(daemon.path()).await;
    let leftovers: Vec<_> = std::fs::read_dir(daemon.path().join("pool"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volumes_are_loop_devices_at_the_target() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let id = "raw";
    let create = create_request(id, 32 * MIB, block());
    for _ in 0..2 {
        let v = c
            .controller
            .create_volume(create.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.volume.unwrap().capacity_bytes, 32 * MIB);
    }
    let staging = daemon.k8s("raw/staging");
    let target = daemon.k8s("raw/pod/dev");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    for _ in 0..2 {
        c.node
            .node_stage_volume(stage_request(id, &staging, block()))
            .await
            .unwrap();
        c.node
            .node_publish_volume(publish_request(id, &staging, &target, block(), false))
            .await
            .unwrap();
    }
    // A read-only bind of a device node would not stop writes: refused, not pretended.
    let readonly = daemon.k8s("raw/pod/ro-dev");
    assert_code(
        c.node
            .node_publish_volume(publish_request(id, &staging, &readonly, block(), true))
            .await,
        Code::FailedPrecondition,
        &["volume raw", "read-only"],
    );
    assert!(!readonly.exists());
    let staged = staging.join(id);
    for node in [&staged, &target] {
        let meta = std::fs::metadata(node).unwrap();
        assert!(
            meta.file_type().is_block_device(),
            "{} is a device node",
            node.display()
        );
    }
    assert_eq!(
        loops_under(daemon.path()).len(),
        1,
        "one loop device for the volume"
    );
    // Written through the published device, read through the staged one.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    {
        let mut dev = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        dev.seek(SeekFrom::Start(1 << 20)).unwrap();
        dev.write_all(&pattern).unwrap();
        dev.sync_all().unwrap();
        assert_eq!(dev.seek(SeekFrom::End(0)).unwrap(), 32 << 20, "device size");
    }
    let mut back = vec![0u8; 4096];
    let mut dev = std::fs::File::open(&staged).unwrap();
    dev.seek(SeekFrom::Start(1 << 20)).unwrap();
    dev.read_exact(&mut back).unwrap();
    assert_eq!(back, pattern);
    drop(dev);
    let stats = c
        .node
        .node_get_volume_stats(stats_request(id, &target))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage.len(), 1);
    assert_eq!(stats.usage[0].total, 32 * MIB);
    for _ in 0..2 {
        retry_transient!(c.node.node_unpublish_volume(unpublish_request(id, &target))).unwrap();
    }
    assert!(!target.exists());
    for _ in 0..2 {
        retry_transient!(c.node.node_unstage_volume(unstage_request(id, &staging))).unwrap();
    }
    assert!(!staged.exists());
    assert_no_loops_under(daemon.path()).await;
    for _ in 0..2 {
        retry_transient!(c.controller.delete_volume(delete_request(id))).unwrap();
    }
    assert!(!daemon.path().join("pool/.images/raw.img").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_ephemeral_volume_lives_as_long_as_its_pod() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let id = "csi-4c1c0d9f3b2a";
    let target = daemon.k8s("pods/p1/volumes/scratch");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let publish = NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount()),
        volume_context: params(&[
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.name", "p1"),
            ("csi.storage.k8s.io/pod.namespace", "default"),
            ("csi.storage.k8s.io/pod.uid", "0a1b"),
            ("csi.storage.k8s.io/serviceAccount.name", "default"),
            ("size", "32Mi"),
            ("pool", "default"),
        ]),
        ..Default::default()
    };
    for _ in 0..2 {
        c.node.node_publish_volume(publish.clone()).await.unwrap();
    }
    assert!(is_mount_point(&target));
    std::fs::write(target.join("tmp"), b"scratch").unwrap();
    let total = fs_total(&target);
    assert!(
        (32 << 20..=40 << 20).contains(&total),
        "sized by the pod's attribute: df shows {total}"
    );
    assert_eq!(list_ids(&mut c).await, [id]);
    retry_transient!(c.node.node_unpublish_volume(unpublish_request(id, &target))).unwrap();
    assert!(!target.exists());
    assert!(list_ids(&mut c).await.is_empty(), "removed with its pod");
    assert!(mounts_under(daemon.path()).is_empty());
    assert!(!daemon.path().join(format!("pool/{id}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_mount_group_gives_the_pod_group_the_volume() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let id = "shared";
    c.controller
        .create_volume(create_request(id, 32 * MIB, mount()))
        .await
        .unwrap();
    let staging = daemon.k8s("shared/globalmount");
    let target = daemon.k8s("shared/pod/mount");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    c.node
        .node_stage_volume(stage_request(id, &staging, mount_group(4242)))
        .await
        .unwrap();
    c.node
        .node_publish_volume(publish_request(
            id,
            &staging,
            &target,
            mount_group(4242),
            false,
        ))
        .await
        .unwrap();
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(meta.gid(), 4242);
    assert_eq!(
        meta.mode() & 0o2070,
        0o2070,
        "group rwx and set-group-id: {:o}",
        meta.mode()
    );
    std::fs::create_dir(target.join("made-by-pod")).unwrap();
    assert_eq!(
        std::fs::metadata(target.join("made-by-pod")).unwrap().gid(),
        4242
    );
    retry_transient!(c.node.node_unpublish_volume(unpublish_request(id, &target))).unwrap();
    retry_transient!(c.node.node_unstage_volume(unstage_request(id, &staging))).unwrap();
    retry_transient!(c.controller.delete_volume(delete_request(id))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_say_abnormal_when_the_volume_filesystem_is_gone() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let id = "fragile";
    c.controller
        .create_volume(create_request(id, 32 * MIB, mount()))
        .await
        .unwrap();
    let staging = daemon.k8s("fragile/globalmount");
    std::fs::create_dir_all(&staging).unwrap();
    c.node
        .node_stage_volume(stage_request(id, &staging, mount()))
        .await
        .unwrap();
    // Someone unmounts the volume's own filesystem behind berth's back.
    let own = daemon.path().join("pool").join(id);
    assert!(
        std::process::Command::new("umount")
            .arg("-l")
            .arg(&own)
            .status()
            .unwrap()
            .success()
    );
    let stats = c
        .node
        .node_get_volume_stats(stats_request(id, &staging))
        .await
        .unwrap()
        .into_inner();
    let condition = stats.volume_condition.unwrap();
    assert!(condition.abnormal);
    assert!(condition.message.contains(id), "{}", condition.message);
    retry_transient!(c.node.node_unstage_volume(unstage_request(id, &staging))).unwrap();
    retry_transient!(c.controller.delete_volume(delete_request(id))).unwrap();
}

/// The condition NodeGetVolumeStats reports for `id` at `path`.
async fn stats_condition(c: &mut Clients, id: &str, path: &Path) -> VolumeCondition {
    c.node
        .node_get_volume_stats(stats_request(id, path))
        .await
        .unwrap()
        .into_inner()
        .volume_condition
        .expect("a condition")
}

/// ListVolumes' status of `id`.
async fn listed_status(c: &mut Clients, id: &str) -> list_volumes_response::VolumeStatus {
    list_entries(c)
        .await
        .into_iter()
        .find(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == id))
        .and_then(|e| e.status)
        .expect("a listed status")
}

fn assert_abnormal(condition: &VolumeCondition, words: &str) {
    assert!(condition.abnormal, "{condition:?}");
    assert!(condition.message.contains(words), "{}", condition.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_abnormal_when_a_loop_device_or_a_directory_vanishes() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let node_id = daemon.node_id(&mut c).await;
    let caps = c
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    for wanted in [
        controller_service_capability::rpc::Type::ListVolumesPublishedNodes,
        controller_service_capability::rpc::Type::VolumeCondition,
    ] {
        assert!(
            caps.iter().any(|cap| matches!(
                &cap.r#type,
                Some(controller_service_capability::Type::Rpc(r)) if r.r#type == wanted as i32
            )),
            "the controller advertises {wanted:?}"
        );
    }

    // A loopfs block volume whose loop device an operator detaches.
    let raw = "health-raw";
    // Pinned to the ext4 pool: `default` and `xfs` share a filesystem, so which one has more
    // room left changes with what other tests write.
    let mut create = create_request(raw, 32 * MIB, block());
    create.parameters = params(&[("pool", "default")]);
    c.controller.create_volume(create).await.unwrap();
    assert!(
        listed_status(&mut c, raw)
            .await
            .published_node_ids
            .is_empty()
    );
    let staging = daemon.k8s("health-raw/staging");
    let target = daemon.k8s("health-raw/pod/dev");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    retry_transient!(
        c.node
            .node_stage_volume(stage_request(raw, &staging, block()))
    )
    .unwrap();
    retry_transient!(c.node.node_publish_volume(publish_request(
        raw,
        &staging,
        &target,
        block(),
        false
    )))
    .unwrap();
    let condition = stats_condition(&mut c, raw, &target).await;
    assert!(!condition.abnormal, "{condition:?}");
    let status = listed_status(&mut c, raw).await;
    assert_eq!(status.published_node_ids, vec![node_id.clone()]);
    assert!(!status.volume_condition.unwrap().abnormal);
    let image = daemon.path().join("pool/.images/health-raw.img");
    let devices: Vec<_> = loops_under(daemon.path())
        .into_iter()
        .filter(|d| {
            let sys = Path::new("/sys/block")
                .join(d.file_name().unwrap())
                .join("loop/backing_file");
            std::fs::read_to_string(sys).is_ok_and(|b| Path::new(b.trim()) == image)
        })
        .collect();
    assert_eq!(devices.len(), 1, "one loop device over {}", image.display());
    let detached = std::process::Command::new("losetup")
        .arg("-d")
        .arg(&devices[0])
        .status()
        .expect("losetup (util-linux) is installed");
    assert!(detached.success());
    assert_abnormal(
        &stats_condition(&mut c, raw, &target).await,
        "it was detached",
    );
    assert_abnormal(
        &listed_status(&mut c, raw).await.volume_condition.unwrap(),
        "it was detached",
    );
    retry_transient!(
        c.node
            .node_unpublish_volume(unpublish_request(raw, &target))
    )
    .unwrap();
    retry_transient!(c.node.node_unstage_volume(unstage_request(raw, &staging))).unwrap();
    retry_transient!(c.controller.delete_volume(delete_request(raw))).unwrap();

    // A plain-directory volume whose directory someone removes.
    let plain = "health-plain";
    let mut create = create_request(plain, 32 * MIB, mount());
    create.parameters = params(&[("pool", "plain")]);
    c.controller.create_volume(create).await.unwrap();
    let staging = daemon.k8s("health-plain/staging");
    let target = daemon.k8s("health-plain/target");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(&target).unwrap();
    retry_transient!(
        c.node
            .node_stage_volume(stage_request(plain, &staging, mount()))
    )
    .unwrap();
    retry_transient!(c.node.node_publish_volume(publish_request(
        plain,
        &staging,
        &target,
        mount(),
        false
    )))
    .unwrap();
    assert!(!stats_condition(&mut c, plain, &target).await.abnormal);
    let data = daemon.path().join("plain").join(plain).join("data");
    std::fs::remove_dir(&data).expect("the plain volume's data directory");
    let words = format!("{} is gone", data.display());
    assert_abnormal(&stats_condition(&mut c, plain, &target).await, &words);
    let status = listed_status(&mut c, plain).await;
    assert_eq!(status.published_node_ids, vec![node_id]);
    assert_abnormal(&status.volume_condition.unwrap(), &words);
    retry_transient!(
        c.node
            .node_unpublish_volume(unpublish_request(plain, &target))
    )
    .unwrap();
    retry_transient!(c.node.node_unstage_volume(unstage_request(plain, &staging))).unwrap();
    retry_transient!(c.controller.delete_volume(delete_request(plain))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_volume_grows_online() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let id = "grown";
    let mut create = create_request(id, 320 * MIB, mount());
    create.parameters = params(&[("pool", "xfs")]);
    c.controller.create_volume(create).await.unwrap();
    let staging = daemon.k8s("grown/globalmount");
    let target = daemon.k8s("grown/pod/mount");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    c.node
        .node_stage_volume(stage_request(id, &staging, mount()))
        .await
        .unwrap();
    c.node
        .node_publish_volume(publish_request(id, &staging, &target, mount(), false))
        .await
        .unwrap();
    std::fs::write(target.join("kept"), b"across the growth").unwrap();
    let before = fs_total(&target);
    let range = Some(CapacityRange {
        required_bytes: 640 * MIB,
        limit_bytes: 0,
    });
    for _ in 0..2 {
        let r = c
            .controller
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: id.into(),
                capacity_range: range,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, 640 * MIB);
        assert!(!r.node_expansion_required);
    }
    let after = fs_total(&target);
    assert!(after > before + (256 << 20), "{before} -> {after}");
    let stats = c
        .node
        .node_get_volume_stats(stats_request(id, &target))
        .await
        .unwrap()
        .into_inner();
    assert!(stats.usage[0].total > 512 * MIB, "{:?}", stats.usage);
    for _ in 0..2 {
        let r = c
            .node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: id.into(),
                volume_path: target.display().to_string(),
                capacity_range: range,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, 640 * MIB);
    }
    assert_eq!(
        std::fs::read(target.join("kept")).unwrap(),
        b"across the growth"
    );
    // Asking for less changes nothing; a limit below the size is refused.
    let smaller = ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 400 * MIB,
            limit_bytes: 500 * MIB,
        }),
        ..Default::default()
    };
    assert_code(
        retry_transient!(c.controller.controller_expand_volume(smaller.clone())),
        Code::OutOfRange,
        &["volume grown", "limit_bytes"],
    );
    retry_transient!(c.node.node_unpublish_volume(unpublish_request(id, &target))).unwrap();
    retry_transient!(c.node.node_unstage_volume(unstage_request(id, &staging))).unwrap();
    retry_transient!(c.controller.delete_volume(delete_request(id))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_code_names_the_volume_and_the_field() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let staging = daemon.k8s("e/globalmount");
    std::fs::create_dir_all(&staging).unwrap();
    // INVALID_ARGUMENT
    assert_code(
        c.controller
            .create_volume(create_request("", GIB, mount()))
            .await,
        Code::InvalidArgument,
        &["name is required"],
    );
    let mut bad = create_request("e1", GIB, mount());
    bad.parameters = params(&[("sise", "1Gi")]);
    assert_code(
        c.controller.create_volume(bad).await,
        Code::InvalidArgument,
        &["volume e1", "parameters.sise: unknown key"],
    );
    assert_code(
        c.controller
            .create_volume(create_request("../etc", GIB, mount()))
            .await,
        Code::InvalidArgument,
        &["name", "../etc"],
    );
    // NOT_FOUND
    assert_code(
        c.node
            .node_stage_volume(stage_request("ghost", &staging, mount()))
            .await,
        Code::NotFound,
        &["volume ghost"],
    );
    let mut clone = create_request("e2", GIB, mount());
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: "ghost".into(),
            },
        )),
    });
    assert_code(
        c.controller.create_volume(clone).await,
        Code::NotFound,
        &["ghost"],
    );
    // ALREADY_EXISTS
    c.controller
        .create_volume(create_request("e3", GIB, mount()))
        .await
        .unwrap();
    assert_code(
        c.controller
            .create_volume(create_request("e3", 2 * GIB, mount()))
            .await,
        Code::AlreadyExists,
        &["volume e3", "size"],
    );
    // OUT_OF_RANGE
    let mut tiny = create_request("e4", MIB, mount());
    tiny.capacity_range.as_mut().unwrap().limit_bytes = 2 * MIB;
    assert_code(
        c.controller.create_volume(tiny).await,
        Code::OutOfRange,
        &["volume e4", "limit_bytes"],
    );
    // RESOURCE_EXHAUSTED: the pool cannot hold it, or the topology excludes this node.
    assert_code(
        c.controller
            .create_volume(create_request("e5", 100 * GIB, mount()))
            .await,
        Code::ResourceExhausted,
        &["volume e5"],
    );
    let mut elsewhere = create_request("e6", GIB, mount());
    elsewhere.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![Topology {
            segments: params(&[(NODE_KEY, "some-other-node")]),
        }],
        preferred: vec![],
    });
    assert_code(
        c.controller.create_volume(elsewhere).await,
        Code::ResourceExhausted,
        &["volume e6", "accessibility_requirements.requisite"],
    );
    // FAILED_PRECONDITION: deleting a staged volume; publishing an unstaged one.
    c.node
        .node_stage_volume(stage_request("e3", &staging, mount()))
        .await
        .unwrap();
    assert_code(
        retry_transient!(c.controller.delete_volume(delete_request("e3"))),
        Code::FailedPrecondition,
        &["volume e3", "unpublish"],
    );
    c.controller
        .create_volume(create_request("e7", GIB, mount()))
        .await
        .unwrap();
    assert_code(
        c.node
            .node_publish_volume(publish_request(
                "e7",
                &daemon.k8s("e7s"),
                &daemon.k8s("e7t"),
                mount(),
                false,
            ))
            .await,
        Code::FailedPrecondition,
        &["volume e7", "NodeStageVolume"],
    );
    // ABORTED: a bad page token, and a second operation on a volume that is busy.
    assert_code(
        c.controller
            .list_volumes(ListVolumesRequest {
                max_entries: 0,
                starting_token: "invalid-token".into(),
            })
            .await,
        Code::Aborted,
        &["starting_token"],
    );
    let mut aborted = None;
    for attempt in 0..10 {
        let id = format!("busy-{attempt}");
        let slow = create_request(&id, 8 * GIB, mount());
        let mut first = c.clone();
        let request = slow.clone();
        let running = tokio::spawn(async move { first.controller.create_volume(request).await });
        // The create is recorded before its filesystem is made: once it is listed, the
        // volume is busy until mkfs and mount are done.
        let listed = Instant::now();
        while !list_ids(&mut c).await.contains(&id) && listed.elapsed() < Duration::from_secs(5) {
            tokio::task::yield_now().await;
        }
        let second = c.controller.create_volume(slow).await;
        running.await.unwrap().unwrap();
        retry_transient!(c.controller.delete_volume(delete_request(&id))).unwrap();
        if let Err(status) = second {
            aborted = Some(status);
            break;
        }
    }
    let status = aborted.expect("a create racing another create of the same volume is ABORTED");
    assert_eq!(status.code(), Code::Aborted, "{}", status.message());
    assert!(status.message().contains("busy"), "{}", status.message());
    retry_transient!(c.node.node_unstage_volume(unstage_request("e3", &staging))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_private_replaced_when_stale_and_never_shared() {
    harness::require_root();
    let mut first = Daemon::start("");
    first.clients().await;
    let mode = std::fs::metadata(first.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // A second daemon cannot serve the same socket while the first lives.
    let second_config = first.path().join("second.toml");
    let original = std::fs::read_to_string(first.config_path()).unwrap();
    let second_state = first.path().join("second-state");
    std::fs::write(
        &second_config,
        original.replace(
            &format!("state_dir = \"{}/state\"", first.path().display()),
            &format!("state_dir = \"{}\"", second_state.display()),
        ),
    )
    .unwrap();
    let refused = Serve::new(&second_config, first.path().join("second.log")).run_to_exit();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("served by another running process"),
        "{stderr}"
    );
    first.clients().await;
    // Nothing but the socket is put beside it.
    let beside: Vec<_> = std::fs::read_dir(first.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("csi.sock"))
        .collect();
    assert_eq!(beside, ["csi.sock"]);
    // A crashed daemon leaves its socket behind; the next one replaces it.
    first.kill();
    assert!(first.socket().exists(), "the stale socket is still there");
    first.spawn();
    first.clients().await;
    // Shut down cleanly, the socket goes away.
    assert!(first.stop().unwrap().success());
    assert!(!first.socket().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_socket_mode_and_csi_endpoint_are_honoured() {
    harness::require_root();
    let daemon = Daemon::start("");
    drop(daemon.clients().await);
    let other = daemon.path().join("other.sock");
    let mut config = std::fs::read_to_string(daemon.config_path()).unwrap();
    config = config.replace("admin = \"\"", "admin = \"\"\nsocket_mode = 0o660");
    let path = daemon.path().join("mode.toml");
    std::fs::write(&path, config.replace("state\"", "state2\"")).unwrap();
    let mut served = Serve::new(&path, daemon.path().join("mode.log"))
        .env("CSI_ENDPOINT", format!("unix://{}", other.display()))
        .spawn();
    served.wait_for_socket(&other);
    harness::csi::connect_ready(
        &format!("unix://{}", other.display()),
        READY_DEADLINE,
        || served.log(),
    )
    .await;
    let mode = std::fs::metadata(&other).map(|m| m.permissions().mode() & 0o777);
    served.kill();
    assert_eq!(mode.unwrap(), 0o660);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_and_their_mounts_survive_a_restart() {
    harness::require_root();
    let mut daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    c.controller
        .create_volume(create_request("kept", 32 * MIB, mount()))
        .await
        .unwrap();
    let staging = daemon.k8s("kept/globalmount");
    let target = daemon.k8s("kept/pod/mount");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    c.node
        .node_stage_volume(stage_request("kept", &staging, mount()))
        .await
        .unwrap();
    c.node
        .node_publish_volume(publish_request("kept", &staging, &target, mount(), false))
        .await
        .unwrap();
    std::fs::write(target.join("f"), b"1").unwrap();
    drop(c);
    assert!(daemon.stop().unwrap().success());
    daemon.spawn();
    let mut c = daemon.clients().await;
    assert_eq!(list_ids(&mut c).await, ["kept"]);
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"1");
    // The publications are still known: unpublish and unstage undo them.
    retry_transient!(
        c.node
            .node_unpublish_volume(unpublish_request("kept", &target))
    )
    .unwrap();
    assert!(!target.exists());
    retry_transient!(
        c.node
            .node_unstage_volume(unstage_request("kept", &staging))
    )
    .unwrap();
    retry_transient!(c.controller.delete_volume(delete_request("kept"))).unwrap();
    assert!(mounts_under(daemon.path()).is_empty());
}

/// The pool kinds the conformance flows run on, each with the StorageClass parameters
/// berth's manifests give it (`type`, and what picks the pool among the test daemon's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PoolUnderTest {
    /// xfs images on loop devices (growing a *mounted* ext4 needs CAP_SYS_RESOURCE, which
    /// some sandboxes do not grant root; ext4 growth is tested apart below).
    Loopfs,
    /// Plain directories (backend `none`): sizes are reservations only.
    Plain,
    /// btrfs subvolumes with qgroup limits, on a btrfs on a loop device.
    Btrfs,
}

impl PoolUnderTest {
    /// The test daemon's pool of this kind.
    fn pool(self) -> &'static str {
        match self {
            Self::Loopfs => "xfs",
            Self::Plain => "plain",
            Self::Btrfs => "btrfs",
        }
    }

    /// What csi-sanity is given as `--csi.testvolumeparameters`.
    fn parameters(self) -> HashMap<String, String> {
        match self {
            Self::Loopfs => params(&[("type", "root"), ("pool", "xfs")]),
            Self::Plain => params(&[("type", "root"), ("profile", "bulk")]),
            Self::Btrfs => params(&[("type", "path")]),
        }
    }

    fn daemon(self) -> Daemon {
        match self {
            Self::Btrfs => Daemon::start_with_btrfs(""),
            Self::Loopfs | Self::Plain => Daemon::start(""),
        }
    }

    /// The pool's configured capacity.
    fn capacity(self) -> i64 {
        match self {
            Self::Loopfs => 64 * GIB,
            Self::Plain => 8 * GIB,
            Self::Btrfs => 1536 * MIB,
        }
    }

    /// Whether a volume's blocks are allocated when it is made (loopfs images), rather
    /// than held back from the free space until written.
    fn allocates(self) -> bool {
        self == Self::Loopfs
    }
}

/// A create request for the pool kind, with its parameters.
fn sanity_request(
    kind: PoolUnderTest,
    name: &str,
    required: i64,
    caps: VolumeCapability,
) -> CreateVolumeRequest {
    let mut request = create_request(name, required, caps);
    request.parameters = kind.parameters();
    request
}

/// csi-sanity's `--csi.testvolumesize` and `--csi.testvolumeexpandsize` here: the smallest
/// xfs berth makes and 64 MiB more, so three pools of volumes stay small on a shared disk.
const SANITY_SIZE: i64 = 320 * MIB;
const SANITY_GROWN: i64 = SANITY_SIZE + 64 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csi_sanity_flows_pass_on_a_loopfs_pool() {
    harness::require_root();
    sanity_flows(PoolUnderTest::Loopfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csi_sanity_flows_pass_on_a_plain_directory_pool() {
    harness::require_root();
    sanity_flows(PoolUnderTest::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csi_sanity_flows_pass_on_a_btrfs_pool() {
    harness::require_root();
    sanity_flows(PoolUnderTest::Btrfs).await;
}

/// The flows csi-sanity runs for the capabilities berth advertises, on one pool kind, with
/// its path layout (a target path the driver must create and remove).
async fn sanity_flows(kind: PoolUnderTest) {
    let daemon = kind.daemon();
    let mut c = daemon.clients().await;
    let mountdir = daemon.k8s("sanity/mount");
    let stagingdir = daemon.k8s("sanity/staging");
    std::fs::create_dir_all(&mountdir).unwrap();
    std::fs::create_dir_all(&stagingdir).unwrap();
    let target = mountdir.join("target");
    let info = c
        .node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, daemon.node_id);
    let topology = info
        .accessible_topology
        .clone()
        .expect("accessible_topology");
    assert_eq!(topology.segments.get(NODE_KEY), Some(&daemon.node_id));

    // "should work" and "should be idempotent": create with the node's topology, stage and
    // publish (twice), stats, then the cleanup csi-sanity does.
    let mut create = sanity_request(kind, "sanity-node-full", SANITY_SIZE, mount());
    create.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topology.clone()],
        preferred: vec![],
    });
    let volume = c
        .controller
        .create_volume(create)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(volume.capacity_bytes >= SANITY_SIZE);
    assert_eq!(volume.accessible_topology, vec![topology]);
    let id = volume.volume_id.as_str();
    for _ in 0..2 {
        c.node
            .node_stage_volume(stage_request(id, &stagingdir, mount()))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        c.node
            .node_publish_volume(publish_request(id, &stagingdir, &target, mount(), false))
            .await
            .unwrap();
    }
    let stats = c
        .node
        .node_get_volume_stats(stats_request(id, &target))
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.usage.is_empty());
    assert_code(
        c.node
            .node_get_volume_stats(stats_request(id, Path::new("some/path")))
            .await,
        Code::NotFound,
        &[id],
    );
    // NodeExpandVolume after NodePublishVolume, controller expansion first.
    let expanded = c
        .controller
        .controller_expand_volume(controller_expand_request(id, SANITY_GROWN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expanded.capacity_bytes, SANITY_GROWN);
    retry_transient!(c.node.node_expand_volume(NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: target.display().to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: SANITY_GROWN,
            limit_bytes: 0,
        }),
        ..Default::default()
    }))
    .unwrap();
    let grown = c
        .node
        .node_get_volume_stats(stats_request(id, &target))
        .await
        .unwrap()
        .into_inner();
    assert!(
        grown.usage[0].total > stats.usage[0].total,
        "grown from {} to {}",
        stats.usage[0].total,
        grown.usage[0].total
    );
    assert!(!grown.volume_condition.unwrap().abnormal);
    // Cleanup: unpublish must remove the target path it created.
    assert!(target.exists());
    retry_transient!(c.node.node_unpublish_volume(unpublish_request(id, &target))).unwrap();
    assert!(
        !target.exists(),
        "NodeUnpublishVolume removes the target path"
    );
    retry_transient!(c.node.node_unstage_volume(unstage_request(id, &stagingdir))).unwrap();
    retry_transient!(c.controller.delete_volume(delete_request(id))).unwrap();
    // csi-sanity's cleanup unpublishes and unstages volumes it never published.
    c.controller
        .create_volume(sanity_request(kind, "sanity-unused", SANITY_SIZE, mount()))
        .await
        .unwrap();
    retry_transient!(
        c.node
            .node_unpublish_volume(unpublish_request("sanity-unused", &target))
    )
    .unwrap();
    retry_transient!(
        c.node
            .node_unstage_volume(unstage_request("sanity-unused", &stagingdir))
    )
    .unwrap();
    retry_transient!(c.controller.delete_volume(delete_request("sanity-unused"))).unwrap();

    // "check the presence of new volumes and absence of deleted ones in the volume list":
    // a volume without capacity_range.
    let before = list_ids(&mut c).await.len();
    let mut plain = sanity_request(kind, "sanity", 0, mount());
    plain.capacity_range = None;
    c.controller.create_volume(plain).await.unwrap();
    assert_eq!(list_ids(&mut c).await.len(), before + 1);
    retry_transient!(c.controller.delete_volume(delete_request("sanity"))).unwrap();
    assert_eq!(list_ids(&mut c).await.len(), before);

    // Cloning, and the maximum-length name.
    let mut source = sanity_request(kind, "sanity-source", SANITY_SIZE, mount());
    source.capacity_range.as_mut().unwrap().limit_bytes = SANITY_SIZE;
    c.controller.create_volume(source.clone()).await.unwrap();
    let mut clone = source.clone();
    clone.name = "sanity-clone".into();
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: "sanity-source".into(),
            },
        )),
    });
    c.controller.create_volume(clone).await.unwrap();
    let long = format!("sanity-maxlen-{}", "x".repeat(128 - 14));
    assert_eq!(long.len(), 128);
    c.controller
        .create_volume(sanity_request(kind, &long, SANITY_SIZE, mount()))
        .await
        .unwrap();
    // GetCapacity counts what these hold: the smaller of what the pool may still reserve
    // and what its disk can still hold (less the reservations not yet written, where
    // volumes are not allocated up front). Other tests write to the same disk, hence the
    // margin.
    let capacity = c
        .controller
        .get_capacity(GetCapacityRequest {
            parameters: kind.parameters(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let reserved = 3 * SANITY_SIZE;
    let free = nix::sys::statvfs::statvfs(&daemon.path().join(kind.pool())).unwrap();
    let free = (free.blocks_available() * free.fragment_size()) as i64;
    let by_disk = if kind.allocates() {
        free
    } else {
        free - reserved
    };
    let expected = (kind.capacity() - reserved).min(by_disk);
    assert!(
        capacity.available_capacity <= kind.capacity() - reserved
            && (capacity.available_capacity - expected).abs() < 128 * MIB,
        "{} available, {expected} expected, {free} free on the disk",
        capacity.available_capacity
    );
    for id in ["sanity-clone", "sanity-source", long.as_str()] {
        retry_transient!(c.controller.delete_volume(delete_request(id))).unwrap();
    }
    retry_transient!(c.controller.delete_volume(delete_request("fake-volume-id"))).unwrap();
    assert!(list_ids(&mut c).await.is_empty());
}

/// csi-sanity's "ExpandVolume should work" on the default (ext4) pool: a volume that is
/// not published grows (offline), and the grown filesystem is what a later stage sees.
/// (Growing a *mounted* ext4 needs CAP_SYS_RESOURCE, which some sandboxes withhold from
/// root, so the online case is tested on xfs above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpublished_ext4_volume_grows() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    c.controller
        .create_volume(create_request("ext", 10 * GIB, mount()))
        .await
        .unwrap();
    let expand = ControllerExpandVolumeRequest {
        volume_id: "ext".into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 11 * GIB,
            limit_bytes: 0,
        }),
        volume_capability: Some(mount()),
        ..Default::default()
    };
    for _ in 0..2 {
        let r = c
            .controller
            .controller_expand_volume(expand.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, 11 * GIB);
    }
    let staging = daemon.k8s("ext/globalmount");
    std::fs::create_dir_all(&staging).unwrap();
    c.node
        .node_stage_volume(stage_request("ext", &staging, mount()))
        .await
        .unwrap();
    assert!(fs_total(&staging) > 10 << 30, "{}", fs_total(&staging));
    retry_transient!(c.node.node_unstage_volume(unstage_request("ext", &staging))).unwrap();
    retry_transient!(c.controller.delete_volume(delete_request("ext"))).unwrap();
}

/// The cluster's one external-resizer asks the berth beside it, which may not hold the
/// volume: that berth records nothing and leaves the growth to the node, and the owning
/// node's NodeExpandVolume grows the volume with its pool's checks. The volume is xfs, which
/// grows online here (online ext4 growth needs CAP_SYS_RESOURCE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expansion_asked_of_another_node_is_completed_by_the_owning_nodes_node_expand() {
    harness::require_root();
    let owner = Daemon::start("");
    let other = Daemon::start("");
    let mut a = owner.clients().await;
    let mut b = other.clients().await;
    let id = "grown-elsewhere";
    let staging = owner.k8s("grow/staging");
    let target = owner.k8s("grow/target");
    std::fs::create_dir_all(&staging).unwrap();
    create_stage_publish(
        &mut a,
        sanity_request(PoolUnderTest::Loopfs, id, 64 * MIB, mount()),
        &staging,
        &target,
    )
    .await;
    let total = |stats: NodeGetVolumeStatsResponse| {
        stats
            .usage
            .iter()
            .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
            .unwrap()
            .total
    };
    let before = total(
        a.node
            .node_get_volume_stats(stats_request(id, &target))
            .await
            .unwrap()
            .into_inner(),
    );

    let asked = b
        .controller
        .controller_expand_volume(controller_expand_request(id, 512 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert!(asked.node_expansion_required);
    assert_eq!(asked.capacity_bytes, 512 * MIB);
    // The other berth recorded nothing; the owner's volume is unchanged so far.
    let listed = b
        .controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty(), "{listed:?}");
    let unchanged = a
        .node
        .node_get_volume_stats(stats_request(id, &target))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(total(unchanged), before);

    let expand = |required: i64, limit: i64| NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: target.display().to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        volume_capability: Some(mount()),
        ..Default::default()
    };
    let grown = retry_transient!(a.node.node_expand_volume(expand(512 * MIB, 0)))
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 512 * MIB);
    let after = total(
        a.node
            .node_get_volume_stats(stats_request(id, &target))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(
        after > before + 150 * MIB,
        "the filesystem grew from {before} to {after} bytes"
    );

    // The owning node's pool (64 GiB) decides what fits, and nothing shrinks.
    let too_big = a
        .node
        .node_expand_volume(expand(128 * GIB, 0))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::ResourceExhausted, "{too_big:?}");
    let below = a
        .node
        .node_expand_volume(expand(64 * MIB, 128 * MIB))
        .await
        .unwrap_err();
    assert_eq!(below.code(), Code::OutOfRange, "{below:?}");

    retry_transient!(a.node.node_unpublish_volume(unpublish_request(id, &target))).unwrap();
    retry_transient!(a.node.node_unstage_volume(unstage_request(id, &staging))).unwrap();
    retry_transient!(a.controller.delete_volume(DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    }))
    .unwrap();
}

/// `listen.group`: the socket belongs to that group, which may read and write it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_group_gets_the_socket() {
    harness::require_root();
    let group_line = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("nogroup:"))
        .expect("the group nogroup (Debian's base system has it)")
        .to_string();
    let gid: u32 = group_line.split(':').nth(2).unwrap().parse().unwrap();
    let mut daemon = Daemon::start("");
    daemon.clients().await;
    let plain = std::fs::metadata(daemon.socket()).unwrap();
    assert_eq!((plain.mode() & 0o777, plain.gid()), (0o600, 0));
    assert!(daemon.stop().unwrap().success());
    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    std::fs::write(
        daemon.config_path(),
        config.replace("admin = \"\"", "admin = \"\"\ngroup = \"nogroup\""),
    )
    .unwrap();
    daemon.spawn();
    daemon.clients().await;
    let shared = std::fs::metadata(daemon.socket()).unwrap();
    assert_eq!((shared.mode() & 0o777, shared.gid()), (0o660, gid));

    // A group that does not exist stops berth before it serves, naming the group.
    assert!(daemon.stop().unwrap().success());
    std::fs::write(
        daemon.config_path(),
        config.replace(
            "admin = \"\"",
            "admin = \"\"\ngroup = \"no-such-group-berth\"",
        ),
    )
    .unwrap();
    let refused = Serve::new(daemon.config_path(), daemon.log_path()).run_to_exit();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no-such-group-berth"), "{stderr}");
}

/// Creates a mount volume, stages it at `staging` and publishes it read-write at `target`.
async fn create_stage_publish(
    c: &mut Clients,
    create: CreateVolumeRequest,
    staging: &Path,
    target: &Path,
) {
    let id = create.name.clone();
    retry_transient!(c.controller.create_volume(create.clone())).unwrap();
    retry_transient!(
        c.node
            .node_stage_volume(stage_request(&id, staging, mount()))
    )
    .unwrap();
    retry_transient!(c.node.node_publish_volume(publish_request(
        &id,
        staging,
        target,
        mount(),
        false
    )))
    .unwrap();
}

/// The filesystem type mounted at `path`, from mountinfo (the last mount there).
fn fs_type_at(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        (Path::new(fields[4]) == path).then(|| fields[dash + 1].to_string())
    })
}

/// Unpublish removes exactly the mount berth made: a target that is itself a mount point
/// keeps its own filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_leaves_a_mount_beneath_the_target() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let id = "over-tmpfs";
    let staging = daemon.k8s("tmpfs/staging");
    let target = daemon.k8s("tmpfs/target");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(&target).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "berth-test-tmpfs"])
        .arg(&target)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs");
    assert_eq!(fs_type_at(&target).as_deref(), Some("tmpfs"));

    create_stage_publish(
        &mut c,
        create_request(id, 64 * MIB, mount()),
        &staging,
        &target,
    )
    .await;
    assert_ne!(
        fs_type_at(&target).as_deref(),
        Some("tmpfs"),
        "published over it"
    );
    // Twice: a repeated unpublish must not take the tmpfs either.
    for _ in 0..2 {
        retry_transient!(c.node.node_unpublish_volume(unpublish_request(id, &target))).unwrap();
        assert_eq!(
            fs_type_at(&target).as_deref(),
            Some("tmpfs"),
            "the tmpfs beneath the target survives"
        );
    }
    retry_transient!(c.node.node_unstage_volume(unstage_request(id, &staging))).unwrap();
    retry_transient!(c.controller.delete_volume(DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    }))
    .unwrap();
    let unmounted = std::process::Command::new("umount")
        .arg(&target)
        .status()
        .unwrap();
    assert!(unmounted.success());
}
