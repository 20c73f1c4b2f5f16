//! CSI snapshots and restores through the real `berth` binary, as root on the real kernel,
//! for a loopfs pool (ext4 images) and a plain-directory pool: the data round trip (write,
//! snapshot, write more, restore gives exactly the snapshot), clones independent of their
//! source, and every snapshot and clone spec of csi-test's `pkg/sanity/controller.go`, those
//! also on a btrfs pool on a loop device.

#[path = "support/csi_daemon.rs"]
mod csi_daemon;
#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/host.rs"]
mod host_support;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth::csi::proto::controller_service_capability::rpc;
use berth::csi::proto::volume_content_source::{SnapshotSource, Type, VolumeSource};
use berth::csi::proto::*;
use berth::csi::testing::{assert_code, mount};
use csi_daemon::{Clients, Daemon, loops_under};
use tonic::Code;

const MIB: i64 = 1 << 20;
/// The loopfs pool and the plain-directory pool of the test daemon.
const POOLS: [&str; 2] = ["default", "plain"];
/// The pools csi-test's specs run on: those and the btrfs pool of
/// [`Daemon::start_with_btrfs`].
const SANITY_POOLS: [&str; 3] = ["default", "plain", "btrfs"];

fn create_request(name: &str, pool: &str, size: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount()],
        parameters: HashMap::from([("pool".to_string(), pool.to_string())]),
        ..Default::default()
    }
}

fn from_snapshot(name: &str, pool: &str, size: i64, snapshot: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(Type::Snapshot(SnapshotSource {
                snapshot_id: snapshot.into(),
            })),
        }),
        ..create_request(name, pool, size)
    }
}

fn from_volume(name: &str, pool: &str, size: i64, volume: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(Type::Volume(VolumeSource {
                volume_id: volume.into(),
            })),
        }),
        ..create_request(name, pool, size)
    }
}

fn snapshot_request(name: &str, source: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        ..Default::default()
    }
}

/// The size each pool's test volumes get (a plain directory has no size).
fn size_in(pool: &str) -> i64 {
    if pool == "plain" { 0 } else { 32 * MIB }
}

async fn create(c: &mut Clients, req: CreateVolumeRequest) -> Volume {
    c.controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}

async fn take(c: &mut Clients, name: &str, source: &str) -> Snapshot {
    c.controller
        .create_snapshot(snapshot_request(name, source))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap()
}

async fn list(c: &mut Clients, req: ListSnapshotsRequest) -> ListSnapshotsResponse {
    c.controller.list_snapshots(req).await.unwrap().into_inner()
}

/// The data directory of a volume of the test daemon (berth keeps loopfs volumes mounted
/// at their own directory, so their data is readable there without a publication).
fn data_of(daemon: &Daemon, pool: &str, volume: &str) -> PathBuf {
    let dir = if pool == "plain" { "plain" } else { "pool" };
    daemon.path().join(dir).join(volume).join("data")
}

/// Everything beneath `root`, by relative path: kind, mode, owner and content (or link
/// target), never following a symlink.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if rel == Path::new("lost+found") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()
            };
            let attrs = format!(
                "{:o} {}:{}",
                meta.permissions().mode() & 0o7777,
                meta.uid(),
                meta.gid()
            );
            out.insert(rel, format!("{attrs} {what}"));
        }
    }
    out
}

fn write_first_generation(data: &Path) {
    std::fs::create_dir_all(data.join("db/sub")).unwrap();
    std::fs::write(data.join("db/records"), b"one\ntwo\n").unwrap();
    std::fs::write(data.join("db/sub/deep"), vec![7u8; 300_000]).unwrap();
    std::fs::set_permissions(
        data.join("db/records"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::chown(data.join("db/records"), Some(999), Some(998)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data.join("outside")).unwrap();
    std::os::unix::fs::symlink("db/records", data.join("inside")).unwrap();
    nix::unistd::sync();
}

fn write_second_generation(data: &Path) {
    std::fs::write(data.join("db/records"), b"one\ntwo\nthree\n").unwrap();
    std::fs::write(data.join("later"), b"after the snapshot").unwrap();
    std::fs::remove_file(data.join("db/sub/deep")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_holds_exactly_the_snapshot_and_a_clone_is_independent() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    for pool in POOLS {
        let size = size_in(pool);
        let source = format!("src-{pool}");
        create(&mut c, create_request(&source, pool, size)).await;
        let data = data_of(&daemon, pool, &source);
        write_first_generation(&data);
        let at_snapshot = tree(&data);

        let snap = take(&mut c, &format!("snap-{pool}"), &source).await;
        assert!(snap.ready_to_use, "{pool}");
        assert_eq!(snap.source_volume_id, source);
        assert!(
            snap.creation_time
                .is_some_and(|t| t.seconds > 1_700_000_000)
        );
        if size > 0 {
            assert_eq!(
                snap.size_bytes, size,
                "{pool}: a snapshot has its source's size"
            );
        } else {
            assert!(snap.size_bytes >= 300_000, "{pool}: {}", snap.size_bytes);
        }
        write_second_generation(&data);
        let after = tree(&data);
        assert_ne!(after, at_snapshot);

        let restored = format!("restored-{pool}");
        let volume = create(
            &mut c,
            from_snapshot(&restored, pool, size, &snap.snapshot_id),
        )
        .await;
        assert_eq!(
            volume.content_source.unwrap().r#type,
            Some(Type::Snapshot(SnapshotSource {
                snapshot_id: snap.snapshot_id.clone()
            }))
        );
        let restored_data = data_of(&daemon, pool, &restored);
        assert_eq!(
            tree(&restored_data),
            at_snapshot,
            "{pool}: the restore holds exactly the snapshot"
        );
        assert_eq!(tree(&data), after, "{pool}: the source is untouched");

        // A clone of the source is its current content, and then goes its own way.
        let clone = format!("clone-{pool}");
        create(&mut c, from_volume(&clone, pool, size, &source)).await;
        let clone_data = data_of(&daemon, pool, &clone);
        assert_eq!(
            tree(&clone_data),
            after,
            "{pool}: a clone copies its source"
        );
        std::fs::write(clone_data.join("later"), b"changed in the clone").unwrap();
        std::fs::write(data.join("db/records"), b"changed in the source").unwrap();
        assert_eq!(
            std::fs::read(data.join("later")).unwrap(),
            b"after the snapshot",
            "{pool}"
        );
        assert_eq!(
            std::fs::read(clone_data.join("db/records")).unwrap(),
            b"one\ntwo\nthree\n",
            "{pool}"
        );

        // The snapshot outlives its source; deleting it leaves the restore alone.
        for id in [&source, &clone] {
            c.controller
                .delete_volume(DeleteVolumeRequest {
                    volume_id: id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let again = create(
            &mut c,
            from_snapshot(&format!("again-{pool}"), pool, size, &snap.snapshot_id),
        )
        .await;
        assert_eq!(
            tree(&data_of(&daemon, pool, &again.volume_id)),
            at_snapshot,
            "{pool}: restored after its source is gone"
        );
        c.controller
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(tree(&restored_data), at_snapshot, "{pool}");
        let snapshots_dir = daemon
            .path()
            .join(if pool == "plain" { "plain" } else { "pool" })
            .join(".snapshots");
        assert_eq!(
            std::fs::read_dir(&snapshots_dir).unwrap().count(),
            0,
            "{pool}: the deleted snapshot's copy is gone"
        );
    }
    // Snapshots attach nothing: the only loop devices are those of the mounted volumes.
    assert_eq!(
        loops_under(daemon.path()).len(),
        2,
        "{:?}",
        loops_under(daemon.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_advertises_snapshots_and_clones() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let caps: Vec<i32> = c
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|cap| {
            cap.r#type
                .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    for wanted in [
        rpc::Type::CreateDeleteSnapshot,
        rpc::Type::ListSnapshots,
        rpc::Type::GetSnapshot,
        rpc::Type::CloneVolume,
    ] {
        assert!(caps.contains(&(wanted as i32)), "{wanted:?} in {caps:?}");
    }
}

/// csi-test's CreateSnapshot, DeleteSnapshot and GetSnapshot specs, per pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sanity_snapshot_specs_pass() {
    harness::require_root();
    let daemon = Daemon::start_with_btrfs("");
    let mut c = daemon.clients().await;
    for pool in SANITY_POOLS {
        let size = size_in(pool);
        let vol = format!("CreateSnapshot-volume-1-{pool}");
        let other = format!("CreateSnapshot-volume-2-{pool}");
        create(&mut c, create_request(&vol, pool, size)).await;
        create(&mut c, create_request(&other, pool, size)).await;

        // CreateSnapshot: should fail when no name / no source volume id is provided.
        assert_code(
            c.controller
                .create_snapshot(snapshot_request("", "testId"))
                .await,
            Code::InvalidArgument,
            "name",
        );
        assert_code(
            c.controller
                .create_snapshot(snapshot_request("name", ""))
                .await,
            Code::InvalidArgument,
            "source_volume_id",
        );
        // ... should succeed with an existing name and the same source volume id.
        let name = format!("CreateSnapshot-snapshot-1-{pool}");
        let first = take(&mut c, &name, &vol).await;
        let second = take(&mut c, &name, &vol).await;
        assert_eq!(first, second, "{pool}: CreateSnapshot is idempotent");
        // ... should fail with an existing name and a different source volume id.
        assert_code(
            c.controller
                .create_snapshot(snapshot_request(&name, &other))
                .await,
            Code::AlreadyExists,
            &vol,
        );
        // ... should succeed with a maximum-length (128) name, twice.
        let long = format!("{pool}-{}", "x".repeat(128 - pool.len() - 1));
        assert_eq!(long.len(), 128);
        assert_eq!(
            take(&mut c, &long, &vol).await,
            take(&mut c, &long, &vol).await
        );
        // A source that does not exist is NOT_FOUND.
        assert_code(
            c.controller
                .create_snapshot(snapshot_request("orphan", "no-such-volume"))
                .await,
            Code::NotFound,
            "no-such-volume",
        );

        // GetSnapshot: the snapshot as CreateSnapshot described it; unknown is NOT_FOUND.
        let got = c
            .controller
            .get_snapshot(GetSnapshotRequest {
                snapshot_id: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(got, first);
        assert_code(
            c.controller
                .get_snapshot(GetSnapshotRequest {
                    snapshot_id: "reallyfakesnapshotid".into(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            "reallyfakesnapshotid",
        );

        // DeleteSnapshot: no id is INVALID_ARGUMENT; an unknown id succeeds; deletes twice.
        assert_code(
            c.controller
                .delete_snapshot(DeleteSnapshotRequest::default())
                .await,
            Code::InvalidArgument,
            "snapshot_id",
        );
        for id in ["reallyfakesnapshotid", "not a/valid id", &long, &long] {
            c.controller
                .delete_snapshot(DeleteSnapshotRequest {
                    snapshot_id: id.to_string(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }

        // CreateVolume: from an existing snapshot or volume; unknown sources are NOT_FOUND.
        let restored = create(
            &mut c,
            from_snapshot(&format!("from-snap-{pool}"), pool, size, &name),
        )
        .await;
        assert_eq!(restored.capacity_bytes, size);
        create(
            &mut c,
            from_volume(&format!("from-vol-{pool}"), pool, size, &vol),
        )
        .await;
        assert_code(
            c.controller
                .create_volume(from_snapshot("nope-1", pool, size, "no-such-snapshot"))
                .await,
            Code::NotFound,
            "no-such-snapshot",
        );
        assert_code(
            c.controller
                .create_volume(from_volume("nope-2", pool, size, "no-such-volume"))
                .await,
            Code::NotFound,
            "no-such-volume",
        );
        if size > 0 {
            // A restore smaller than the snapshot does not fit its range.
            let mut small = from_snapshot("nope-3", pool, 16 * MIB, &name);
            small.capacity_range = Some(CapacityRange {
                required_bytes: 16 * MIB,
                limit_bytes: 16 * MIB,
            });
            let status = c.controller.create_volume(small).await.unwrap_err();
            assert!(
                [Code::OutOfRange, Code::InvalidArgument].contains(&status.code()),
                "{status:?}"
            );
        }
        c.controller
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// csi-test's ListSnapshots specs: filters by snapshot id and source volume id, unknown
/// ids give empty lists, new snapshots appear and deleted ones go, and paging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sanity_list_snapshot_specs_pass() {
    harness::require_root();
    let daemon = Daemon::start_with_btrfs("");
    let mut c = daemon.clients().await;
    let mut made = Vec::new();
    for (i, pool) in SANITY_POOLS.iter().cycle().take(5).enumerate() {
        let vol = format!("listSnapshots-volume-{i}");
        create(&mut c, create_request(&vol, pool, size_in(pool))).await;
        made.push(take(&mut c, &format!("listSnapshots-snapshot-{i}"), &vol).await);
    }
    let all = list(&mut c, ListSnapshotsRequest::default()).await;
    assert_eq!(all.entries.len(), 5);
    assert!(all.next_token.is_empty());
    for entry in &all.entries {
        let s = entry.snapshot.as_ref().unwrap();
        assert!(s.ready_to_use && s.creation_time.is_some() && !s.snapshot_id.is_empty());
    }

    let target = &made[2];
    let by_id = list(
        &mut c,
        ListSnapshotsRequest {
            snapshot_id: target.snapshot_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_id.entries.len(), 1);
    assert_eq!(by_id.entries[0].snapshot.as_ref(), Some(target));
    let by_source = list(
        &mut c,
        ListSnapshotsRequest {
            source_volume_id: target.source_volume_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_source.entries.len(), 1);
    assert_eq!(by_source.entries[0].snapshot.as_ref(), Some(target));
    for req in [
        ListSnapshotsRequest {
            snapshot_id: "none-exist-id".into(),
            ..Default::default()
        },
        ListSnapshotsRequest {
            source_volume_id: "no-such-volume".into(),
            ..Default::default()
        },
        ListSnapshotsRequest {
            snapshot_id: "not a/name".into(),
            ..Default::default()
        },
    ] {
        assert!(list(&mut c, req).await.entries.is_empty());
    }

    // Paging: two, then the rest at once, each exactly once.
    let page = list(
        &mut c,
        ListSnapshotsRequest {
            max_entries: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(page.entries.len(), 2);
    assert!(!page.next_token.is_empty());
    let rest = list(
        &mut c,
        ListSnapshotsRequest {
            starting_token: page.next_token.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(rest.entries.len(), 3);
    let mut seen: Vec<_> = page
        .entries
        .iter()
        .chain(&rest.entries)
        .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);
    assert_code(
        c.controller
            .list_snapshots(ListSnapshotsRequest {
                starting_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::Aborted,
        "garbage",
    );

    // A deleted snapshot is omitted.
    c.controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: target.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        list(&mut c, ListSnapshotsRequest::default())
            .await
            .entries
            .len(),
        4
    );
}

/// A loopfs volume that a process keeps writing to (each record `fsync`ed) is snapshotted
/// with its filesystem frozen: each restore is a filesystem `e2fsck` finds clean, holding
/// a prefix of the records (the one being written may be there in part), at least those
/// whose fsync returned before the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_volume_being_written_restores_clean_with_a_prefix() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    create(&mut c, create_request("busy", "default", 64 * MIB)).await;
    let data = data_of(&daemon, "default", "busy");
    let log = data.join("records");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let synced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, synced, log) = (stop.clone(), synced.clone(), log.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&log).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                writeln!(f, "record {n:08} {}", "x".repeat(100)).unwrap();
                f.sync_data().unwrap();
                n += 1;
                synced.store(n, std::sync::atomic::Ordering::SeqCst);
            }
            n
        })
    };
    let mut checked = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let durable = synced.load(std::sync::atomic::Ordering::SeqCst);
        let s = take(&mut c, &format!("busy-{round}"), "busy").await;
        let image = daemon
            .path()
            .join("pool/.snapshots")
            .join(format!("{}.img", s.snapshot_id));
        let fsck = std::process::Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(&image)
            .output()
            .expect("e2fsck runs (install e2fsprogs)");
        assert!(
            fsck.status.success(),
            "round {round}: e2fsck finds the snapshot clean: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        let restored = format!("busy-restored-{round}");
        create(
            &mut c,
            from_snapshot(&restored, "default", 64 * MIB, &s.snapshot_id),
        )
        .await;
        let text = std::fs::read_to_string(data_of(&daemon, "default", &restored).join("records"))
            .unwrap();
        // `writeln!` on a File is several write(2) calls, so the record being written at the
        // freeze may be there in part: whole records, then at most the start of the next.
        let (whole, torn) = text.split_at(text.rfind('\n').map_or(0, |i| i + 1));
        let lines: Vec<&str> = whole.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(
                *line,
                format!("record {i:08} {}", "x".repeat(100)),
                "round {round}: a prefix of whole records"
            );
        }
        let next = format!("record {:08} {}", lines.len(), "x".repeat(100));
        assert!(
            next.starts_with(torn),
            "round {round}: after the whole records, only the start of the next: {torn:?}"
        );
        assert!(
            lines.len() as u64 >= durable,
            "round {round}: {} records restored, {durable} were durable before the snapshot",
            lines.len()
        );
        checked.push(lines.len());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.join().unwrap();
    eprintln!("records in the 3 snapshots: {checked:?}, written in all: {written}");
    assert!(checked.windows(2).all(|w| w[0] < w[1]), "{checked:?}");
}

/// Whether a write with `fsync` into `dir` completes within 5 s (it blocks on a frozen
/// filesystem).
fn writable(dir: &Path) -> bool {
    let file = dir.join("thawed-probe");
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ok = std::fs::write(&file, b"x").is_ok()
            && std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .is_ok();
        let _ = done.send(ok);
    });
    wait.recv_timeout(std::time::Duration::from_secs(5))
        .unwrap_or(false)
}

/// berth killed with SIGKILL at different moments of snapshots and restores: after each
/// restart no filesystem is frozen, the `.snapshots` directories hold exactly the listed
/// snapshots, the loop devices are exactly those of the listed loopfs volumes, every listed
/// volume's data is there, and retrying the interrupted calls succeeds with the right data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_snapshots_and_restores_leaves_nothing_half_made() {
    harness::require_root();
    let mut daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let mut expected = HashMap::new();
    for pool in POOLS {
        let source = format!("src-{pool}");
        create(&mut c, create_request(&source, pool, size_in(pool))).await;
        let data = data_of(&daemon, pool, &source);
        write_first_generation(&data);
        expected.insert(pool, tree(&data));
    }
    let delays_ms = [0u64, 1, 3, 6, 10, 15, 25, 40, 60, 90];
    for (round, delay) in delays_ms.iter().enumerate() {
        let mut busy = c.clone();
        let work = tokio::spawn(async move {
            for pool in POOLS {
                let snap = format!("k{round}-{pool}");
                let _ = busy
                    .controller
                    .create_snapshot(snapshot_request(&snap, &format!("src-{pool}")))
                    .await;
                let _ = busy
                    .controller
                    .create_volume(from_snapshot(
                        &format!("kr{round}-{pool}"),
                        pool,
                        size_in(pool),
                        &snap,
                    ))
                    .await;
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(*delay)).await;
        daemon.kill();
        let _ = work.await;
        daemon.spawn();
        c = daemon.clients().await;

        let snapshots: Vec<String> = list(&mut c, ListSnapshotsRequest::default())
            .await
            .entries
            .into_iter()
            .map(|e| e.snapshot.unwrap().snapshot_id)
            .collect();
        let volumes: Vec<String> = c
            .controller
            .list_volumes(ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .map(|e| e.volume.unwrap().volume_id)
            .collect();
        for pool in POOLS {
            let dir = if pool == "plain" { "plain" } else { "pool" };
            assert!(
                writable(&data_of(&daemon, pool, &format!("src-{pool}"))),
                "round {round}: src-{pool} is frozen after the restart"
            );
            let mut on_disk: Vec<String> =
                std::fs::read_dir(daemon.path().join(dir).join(".snapshots"))
                    .map(|d| {
                        d.map(|e| {
                            let name = e.unwrap().file_name().into_string().unwrap();
                            name.trim_end_matches(".img").to_string()
                        })
                        .collect()
                    })
                    .unwrap_or_default();
            on_disk.sort();
            let mut listed: Vec<String> = snapshots
                .iter()
                .filter(|s| s.ends_with(&format!("-{pool}")))
                .cloned()
                .collect();
            listed.sort();
            assert_eq!(on_disk, listed, "round {round}: {pool} snapshot copies");
        }
        let loopfs_volumes = volumes.iter().filter(|v| v.ends_with("-default")).count();
        assert_eq!(
            loops_under(daemon.path()).len(),
            loopfs_volumes,
            "round {round}: loop devices {:?} for volumes {volumes:?}",
            loops_under(daemon.path())
        );
        // Retries succeed, and the restores hold the snapshot.
        for pool in POOLS {
            let snap = format!("k{round}-{pool}");
            take(&mut c, &snap, &format!("src-{pool}")).await;
            let restored = format!("kr{round}-{pool}");
            create(&mut c, from_snapshot(&restored, pool, size_in(pool), &snap)).await;
            let mut got = tree(&data_of(&daemon, pool, &restored));
            got.remove(Path::new("thawed-probe"));
            assert_eq!(&got, &expected[pool], "round {round}: {restored}");
        }
    }
    let log = daemon.log();
    eprintln!(
        "kill -9 rounds: {}; snapshots cleaned up at restart: {}; creates rolled back: {}",
        delays_ms.len(),
        log.matches("cleaned up a snapshot interrupted by a crash")
            .count(),
        log.matches("rolled back a create interrupted by a crash")
            .count()
    );
}

/// The same round trip on a btrfs pool (a btrfs on a loop device): the snapshot is a
/// read-only subvolume, the restore a writable snapshot of it with its own qgroup limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_snapshots_are_read_only_subvolumes_and_restore_exactly() {
    harness::require_root();
    let scratch = host_support::scratch();
    let image = scratch.join("btrfs.img");
    host_support::make_fs(&image, 512 << 20, "mkfs.btrfs", &["-q", "-f"]);
    let fs_root = scratch.join("btrfs");
    host_support::mount_loop(&image, &fs_root, "");
    let daemon = Daemon::start(&format!(
        "\n[[pools]]\nname = \"btr\"\nkind = \"path\"\npaths = [\"{}\"]\nbackend = \"btrfs\"\ncapacity = \"256MiB\"\n",
        fs_root.display()
    ));
    let mut c = daemon.clients().await;
    create(&mut c, create_request("bsrc", "btr", 32 * MIB)).await;
    let data = fs_root.join("bsrc/data");
    write_first_generation(&data);
    let at_snapshot = tree(&data);
    let snap = take(&mut c, "bsnap", "bsrc").await;
    assert_eq!(snap.size_bytes, 32 * MIB);
    let copy = fs_root.join(".snapshots/bsnap");
    assert_eq!(
        std::fs::symlink_metadata(&copy).unwrap().ino(),
        256,
        "the snapshot is a subvolume"
    );
    let refused = std::fs::write(copy.join("data/new"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
    write_second_generation(&data);

    create(&mut c, from_snapshot("brestored", "btr", 32 * MIB, "bsnap")).await;
    let restored = fs_root.join("brestored/data");
    assert_eq!(tree(&restored), at_snapshot);
    std::fs::write(restored.join("mine"), b"writable").unwrap();
    assert!(!copy.join("data/mine").exists());
    c.controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: "bsnap".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!copy.exists(), "the snapshot subvolume is deleted");
    assert_eq!(tree(&restored).len(), at_snapshot.len() + 1);
}

/// An xfs loopfs snapshot restores while its source is still mounted (the copy has the
/// source's filesystem UUID, which xfs refuses to mount twice unless told).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xfs_snapshot_restores_beside_its_mounted_source() {
    harness::require_root();
    let daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    create(&mut c, create_request("x", "xfs", 320 * MIB)).await;
    let data = daemon.path().join("xfs/x/data");
    write_first_generation(&data);
    let at_snapshot = tree(&data);
    take(&mut c, "xs", "x").await;
    create(&mut c, from_snapshot("xr", "xfs", 320 * MIB, "xs")).await;
    assert_eq!(tree(&daemon.path().join("xfs/xr/data")), at_snapshot);
}
