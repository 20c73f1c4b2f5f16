//! The engine's logic against the recording fake host: idempotency of every operation,
//! refusals that change nothing, failures at every host step, crash recovery and capacity
//! under concurrency. The same flows run against the real kernel in `tests/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::pool::{BackendChoice, PoolConfig};
use super::*;
use crate::host::fake::FakeHost;

mod ephemeral;
mod trash;
mod wipe;

const GIB: u64 = 1 << 30;
const CSI: Caller = Caller {
    frontend: Frontend::Csi,
    wait_if_busy: false,
};

struct Fixture {
    dir: tempfile::TempDir,
    pools: Vec<PoolConfig>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = PoolConfig::default_root(Path::new("/pool"));
        pool.paths = vec![PathBuf::from("/pool/volumes")];
        pool.capacity = Some(10 * GIB);
        Self {
            dir,
            pools: vec![pool],
        }
    }

    fn config(&self) -> EngineConfig {
        EngineConfig {
            store_path: self.dir.path().join("berth.redb"),
            pools: self.pools.clone(),
            node: NodeInfo {
                node_id: "n1".into(),
                ..NodeInfo::default()
            },
        }
    }

    fn open(&self, host: FakeHost) -> Engine<FakeHost> {
        Engine::open(self.config(), host).unwrap()
    }
}

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

fn request(n: &str, size: Option<u64>) -> CreateRequest {
    CreateRequest {
        name: name(n),
        spec: VolumeSpec {
            size,
            ..VolumeSpec::default()
        },
        owner: Owner::default(),
    }
}

fn bind(path: &str, read_only: bool) -> PublishTarget {
    PublishTarget::Bind {
        path: PathBuf::from(path),
        read_only,
    }
}

fn host() -> FakeHost {
    let h = FakeHost::new(100 * GIB);
    h.add_dir(Path::new("/pool/volumes"));
    h
}

/// Calls that change the host (everything but reads).
fn mutations(h: &FakeHost) -> usize {
    h.calls()
        .iter()
        .filter(|c| {
            !matches!(
                c.op,
                "mounts" | "loop_devices" | "fs_stats" | "tree_usage" | "target_exists"
            )
        })
        .count()
}

#[test]
fn lifecycle_is_idempotent_at_every_step() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = e.create(CSI, request("db", Some(GIB))).unwrap();
    assert_eq!(v.placement.backend, Backend::Loopfs);
    assert_eq!(v.state(), VolumeState::Reserved);
    let again = e.create(CSI, request("db", Some(GIB))).unwrap();
    assert_eq!(v, again);
    let dir = v.placement.dir.clone();
    assert!(e.host().mounted_at(&dir).is_some(), "loopfs mounted");

    for _ in 0..2 {
        e.publish(CSI, &name("db"), bind("/t/a", false)).unwrap();
        e.publish(CSI, &name("db"), bind("/t/b", true)).unwrap();
    }
    let v = e.get(&name("db")).unwrap();
    assert_eq!(v.publications.len(), 2);
    assert_eq!(v.state(), VolumeState::Attached);
    assert_eq!(
        e.host().mounted_at(Path::new("/t/b")),
        Some((v.placement.data.clone(), true))
    );

    // Same target, other read-only setting: a conflict, not a silent change.
    let err = e.publish(CSI, &name("db"), bind("/t/a", true)).unwrap_err();
    assert!(matches!(err, EngineError::TargetConflict { .. }), "{err}");

    let err = e.delete(CSI, &name("db")).unwrap_err();
    assert!(matches!(err, EngineError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("/t/a"), "{err}");

    for _ in 0..2 {
        e.unpublish(CSI, &name("db"), &bind("/t/a", false)).unwrap();
    }
    assert!(e.host().mounted_at(Path::new("/t/a")).is_none());
    assert!(
        !e.host().is_dir(Path::new("/t/a")),
        "created target removed"
    );
    assert!(e.host().mounted_at(Path::new("/t/b")).is_some());
    e.unpublish(CSI, &name("db"), &bind("/t/b", true)).unwrap();
    assert_eq!(e.get(&name("db")).unwrap().state(), VolumeState::Detached);

    e.delete(CSI, &name("db")).unwrap();
    assert!(matches!(
        e.delete(CSI, &name("db")),
        Err(EngineError::NotFound { .. })
    ));
    assert_eq!(e.host().mount_count(), 0);
    assert_eq!(e.host().loop_count(), 0);
    assert!(
        !e.host()
            .has_image(&f.pools[0].paths[0].join(".images/db.img"))
    );
    assert!(!e.host().is_dir(&dir));
}

#[test]
fn same_name_with_other_parameters_is_refused_and_changes_nothing() {
    let f = Fixture::new();
    let e = f.open(host());
    e.create(CSI, request("db", Some(GIB))).unwrap();
    let before = mutations(e.host());
    let err = e.create(CSI, request("db", Some(2 * GIB))).unwrap_err();
    assert!(matches!(err, EngineError::AlreadyExists { .. }));
    assert!(err.to_string().contains("size"), "{err}");
    assert_eq!(mutations(e.host()), before);
}

#[test]
fn bad_requests_touch_nothing() {
    let f = Fixture::new();
    let e = f.open(host());
    let before = mutations(e.host());
    let mut bad_pool = request("a", Some(GIB));
    bad_pool.spec.pool = Some("nope".into());
    let mut bad_mode = request("b", Some(GIB));
    bad_mode.spec.ownership.mode = Some(0o17777);
    let mut bad_max = request("c", Some(GIB));
    bad_max.spec.max_size = Some(2 * GIB);
    let mut bad_profile = request("d", Some(GIB));
    bad_profile.spec.profile = Some("gold".into());
    let too_big = request("e", Some(11 * GIB));
    let mut missing_source = request("f", Some(GIB));
    missing_source.spec.source = Some(name("ghost"));
    for r in [
        bad_pool,
        bad_mode,
        bad_max,
        bad_profile,
        too_big,
        missing_source,
    ] {
        let n = r.name.clone();
        assert!(e.create(CSI, r).is_err());
        assert!(matches!(e.get(&n), Err(EngineError::NotFound { .. })));
    }
    assert!(matches!(
        e.publish(CSI, &name("ghost"), bind("/t/x", false)),
        Err(EngineError::NotFound { .. })
    ));
    e.create(CSI, request("ok", None)).unwrap();
    let after_create = mutations(e.host());
    let relative = e.publish(CSI, &name("ok"), bind("t/x", false)).unwrap_err();
    assert!(relative.to_string().contains("absolute"), "{relative}");
    let dotdot = e
        .publish(CSI, &name("ok"), bind("/t/../etc", false))
        .unwrap_err();
    assert!(matches!(dotdot, EngineError::Input(_)));
    assert_eq!(mutations(e.host()), after_create);
    assert!(before < after_create);
}

#[test]
fn a_failure_at_any_host_step_of_create_leaves_nothing_and_a_retry_succeeds() {
    // Count the host calls one create makes, then fail each in turn.
    let probe = Fixture::new();
    let e = probe.open(host());
    let start = e.host().call_count();
    e.create(CSI, request("v", Some(GIB))).unwrap();
    let steps = e.host().call_count() - start;
    drop(e);
    assert!(steps >= 4, "a loopfs create makes several host calls");

    for step in 0..steps {
        let f = Fixture::new();
        let e = f.open(host());
        let base = e.host().call_count();
        e.host().fail_at_call(base + step);
        let err = e.create(CSI, request("v", Some(GIB))).unwrap_err();
        assert!(
            matches!(err, EngineError::Host { .. }),
            "step {step}: {err}"
        );
        assert!(err.to_string().contains("volume v"), "{err}");
        assert!(e.list(&VolumeFilter::default()).is_empty(), "step {step}");
        assert_eq!(e.host().mount_count(), 0, "step {step}");
        assert_eq!(e.host().loop_count(), 0, "step {step}");
        e.create(CSI, request("v", Some(GIB))).unwrap();
    }
}

#[test]
fn a_failed_publish_leaves_no_mount_no_target_and_no_publication() {
    let f = Fixture::new();
    let e = f.open(host());
    e.create(CSI, request("v", None)).unwrap();
    e.host().fail_op("bind_mount");
    let err = e.publish(CSI, &name("v"), bind("/t/a", false)).unwrap_err();
    assert!(err.to_string().contains("bind-mounting"), "{err}");
    let v = e.get(&name("v")).unwrap();
    assert!(v.publications.is_empty());
    assert!(!e.host().is_dir(Path::new("/t/a")));
    e.host().heal();
    e.publish(CSI, &name("v"), bind("/t/a", false)).unwrap();
}

#[test]
fn restart_rolls_back_half_creates_and_finishes_tombstoned_deletes() {
    let f = Fixture::new();
    let store_path = f.config().store_path;
    {
        let e = f.open(host());
        e.create(CSI, request("done", Some(GIB))).unwrap();
        e.create(CSI, request("half", Some(GIB))).unwrap();
        e.create(CSI, request("dying", Some(GIB))).unwrap();
    }
    {
        // Forge the states a crash leaves behind.
        let store = Store::open(&store_path).unwrap();
        let mut all: Vec<Volume> = store.load_all().unwrap();
        for v in &mut all {
            match v.name.as_str() {
                "half" => v.phase = Phase::Creating,
                "dying" => v.phase = Phase::Deleting { wipe: true },
                _ => {}
            }
            store.put(v.name.as_str(), v).unwrap();
        }
    }
    let h = host();
    // The host as it was: the three volumes' images exist and are mounted.
    for n in ["done", "half", "dying"] {
        let image = PathBuf::from(format!("/pool/volumes/.images/{n}.img"));
        let dir = PathBuf::from(format!("/pool/volumes/{n}"));
        h.make_dir(&dir, &Ownership::default()).unwrap();
        h.create_image(&image, GIB, Some(FsType::Ext4)).unwrap();
        h.mount_image(&image, &dir, FsType::Ext4).unwrap();
    }
    let e = f.open(h);
    let report = e.recovery_report();
    assert_eq!(report.rolled_back_creates, vec!["half".to_string()]);
    assert_eq!(report.finished_deletes, vec!["dying".to_string()]);
    // Their mounts went with them: nothing is reported as a stray.
    assert_eq!(report.stray_mounts, Vec::<PathBuf>::new());
    let names: Vec<String> = e
        .list(&VolumeFilter::default())
        .iter()
        .map(|v| v.name.to_string())
        .collect();
    assert_eq!(names, vec!["done".to_string()]);
    assert_eq!(e.host().mount_count(), 1);
    assert!(
        !e.host()
            .has_image(Path::new("/pool/volumes/.images/half.img"))
    );
}

/// A fresh host with the pool, volume `v`'s directory and its 1 GiB image, nothing mounted:
/// what a restart of the machine (or of a host model) leaves.
fn host_keeping_v() -> FakeHost {
    let h = host();
    h.make_dir(Path::new("/pool/volumes/v"), &Ownership::default())
        .unwrap();
    h.create_image(
        Path::new("/pool/volumes/.images/v.img"),
        GIB,
        Some(FsType::Ext4),
    )
    .unwrap();
    h
}

#[test]
fn after_a_reboot_filesystems_are_remounted_and_vanished_publications_dropped() {
    let f = Fixture::new();
    let h = host();
    {
        let e = f.open(h);
        e.create(CSI, request("v", Some(GIB))).unwrap();
        e.publish(CSI, &name("v"), bind("/t/a", false)).unwrap();
        e.publish(
            CSI,
            &name("v"),
            PublishTarget::Reference {
                holder: "docker:1".into(),
            },
        )
        .unwrap();
    }
    // A fresh host with the pool and the image, nothing mounted, another boot id: what a
    // reboot leaves.
    let h = host_keeping_v();
    h.reboot();
    let e = f.open(h);
    let report = e.recovery_report();
    assert_eq!(report.remounted, vec!["v".to_string()]);
    assert_eq!(
        report.dropped_publications,
        vec![
            ("v".to_string(), "/t/a".to_string()),
            ("v".to_string(), "reference \"docker:1\"".to_string())
        ]
    );
    let v = e.get(&name("v")).unwrap();
    assert!(v.publications.is_empty(), "{:?}", v.publications);
    assert_eq!(v.state(), VolumeState::Detached);
    assert!(e.host().mounted_at(Path::new("/pool/volumes/v")).is_some());
}

#[test]
fn references_survive_a_restart_in_the_same_boot() {
    let f = Fixture::new();
    let h = host();
    let holder = PublishTarget::Reference {
        holder: "docker:1".into(),
    };
    {
        let e = f.open(h);
        e.create(CSI, request("v", Some(GIB))).unwrap();
        e.publish(CSI, &name("v"), holder.clone()).unwrap();
    }
    // Same boot (a berth restart, say an upgrade): the container may still run.
    let h = host_keeping_v();
    let e = f.open(h);
    assert!(e.recovery_report().dropped_publications.is_empty());
    let v = e.get(&name("v")).unwrap();
    assert_eq!(v.publications.len(), 1);
    assert!(v.publications[0].target.same_place(&holder));
    assert_eq!(v.publications[0].boot_id.as_deref(), Some("fake-boot-0"));
}

#[test]
fn a_target_made_by_a_publish_that_crashed_before_the_mount_is_removed_at_start() {
    let f = Fixture::new();
    let e = f.open(host());
    e.create(CSI, request("v", Some(GIB))).unwrap();
    // Killed after making the target, before mounting onto it.
    e.host().crash_at("bind_mount");
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        e.publish(CSI, &name("v"), bind("/t/a", false))
    }));
    assert!(crashed.is_err());
    let intent = e.get(&name("v")).unwrap().publications;
    assert_eq!(intent.len(), 1);
    assert_eq!(intent[0].state, PublicationState::Publishing);
    assert!(
        intent[0].created_target,
        "the intent records that berth makes the target"
    );
    assert!(e.host().is_dir(Path::new("/t/a")));
    drop(e);
    // What the crash left on the host: the volume's filesystem and the new, empty target.
    let h = host();
    h.make_dir(Path::new("/pool/volumes/v"), &Ownership::default())
        .unwrap();
    let image = Path::new("/pool/volumes/.images/v.img");
    h.create_image(image, GIB, Some(FsType::Ext4)).unwrap();
    h.mount_image(image, Path::new("/pool/volumes/v"), FsType::Ext4)
        .unwrap();
    h.add_dir(Path::new("/t"));
    h.add_dir(Path::new("/t/a"));
    let e = f.open(h);
    assert_eq!(
        e.recovery_report().dropped_publications,
        vec![("v".to_string(), "/t/a".to_string())]
    );
    assert!(
        !e.host().is_dir(Path::new("/t/a")),
        "the target berth made is removed"
    );
    assert!(e.get(&name("v")).unwrap().publications.is_empty());
    // A target that existed before the publish (made by the orchestrator) is not berth's.
    e.host().add_dir(Path::new("/t/b"));
    e.host().crash_at("bind_mount");
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        e.publish(CSI, &name("v"), bind("/t/b", false))
    }));
    assert!(crashed.is_err());
    assert!(!e.get(&name("v")).unwrap().publications[0].created_target);
}

#[test]
fn retained_deletes_keep_data_and_wipes_destroy_it() {
    let mut f = Fixture::new();
    f.pools[0].reclaim = ReclaimPolicy::Retain;
    f.pools[0].backend = BackendChoice::None;
    let e = f.open(host());
    let v = e.create(CSI, request("keep", Some(GIB))).unwrap();
    e.delete(CSI, &name("keep")).unwrap();
    assert!(!e.host().is_dir(&v.placement.dir));
    let kept = Path::new("/pool/volumes/.retained").join(format!("keep-{}", v.created_at));
    assert!(e.host().is_dir(&kept), "data moved aside");

    let v = e.create(CSI, request("gone", Some(GIB))).unwrap();
    e.wipe(CSI, &name("gone")).unwrap();
    assert!(!e.host().is_dir(&v.placement.dir));
    assert!(
        !e.host()
            .calls()
            .iter()
            .any(|c| c.op == "rename" && c.path == v.placement.dir)
    );
}

#[test]
fn concurrent_creates_never_overcommit_a_pool() {
    let f = Fixture::new();
    let e = Arc::new(f.open(host()));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || e.create(CSI, request(&format!("v{i}"), Some(GIB))).is_ok())
        })
        .collect();
    let created = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(created, 10, "a 10 GiB pool holds ten 1 GiB volumes");
    let cap = e.capacity(&PoolSelector::default());
    assert_eq!(cap[0].reserved_bytes, 10 * GIB);
    assert_eq!(cap[0].available_bytes, 0);
    let err = e.create(CSI, request("more", Some(1))).unwrap_err();
    assert!(matches!(err, EngineError::NoCapacity { .. }));
    assert!(
        err.to_string().contains("left to reserve of its capacity"),
        "{err}"
    );
}

#[test]
fn expand_grows_within_capacity_and_is_idempotent() {
    let f = Fixture::new();
    let e = f.open(host());
    e.create(CSI, request("v", Some(GIB))).unwrap();
    for _ in 0..2 {
        let v = e.expand(CSI, &name("v"), 2 * GIB).unwrap();
        assert_eq!(v.size, Some(2 * GIB));
    }
    // Shrinking is not growing: the volume stays as it is.
    assert_eq!(e.expand(CSI, &name("v"), GIB).unwrap().size, Some(2 * GIB));
    let err = e.expand(CSI, &name("v"), 20 * GIB).unwrap_err();
    assert!(matches!(err, EngineError::NoCapacity { .. }), "{err}");
    assert_eq!(e.get(&name("v")).unwrap().size, Some(2 * GIB));
}

#[test]
fn the_second_operation_on_a_busy_volume_is_refused_not_interleaved() {
    let f = Fixture::new();
    let e = f.open(host());
    e.create(CSI, request("v", None)).unwrap();
    let guard = e.locks.acquire(&name("v"), false).unwrap();
    let err = e.publish(CSI, &name("v"), bind("/t/a", false)).unwrap_err();
    assert!(matches!(err, EngineError::Busy { .. }));
    assert!(e.get(&name("v")).unwrap().publications.is_empty());
    drop(guard);
    e.publish(CSI, &name("v"), bind("/t/a", false)).unwrap();
}

#[test]
fn block_volumes_attach_a_loop_device_per_publication() {
    let f = Fixture::new();
    let e = f.open(host());
    let mut r = request("raw", Some(GIB));
    r.spec.access = AccessType::Block;
    e.create(CSI, r).unwrap();
    assert_eq!(e.host().loop_count(), 0);
    let v = e.publish(CSI, &name("raw"), bind("/t/dev", false)).unwrap();
    assert_eq!(e.host().loop_count(), 1);
    assert!(v.publications[0].device.is_some());
    e.unpublish(CSI, &name("raw"), &bind("/t/dev", false))
        .unwrap();
    assert_eq!(e.host().loop_count(), 0);
    e.delete(CSI, &name("raw")).unwrap();
}

#[test]
fn one_target_carries_one_volume() {
    let f = Fixture::new();
    let e = f.open(host());
    e.create(CSI, request("a", None)).unwrap();
    e.create(CSI, request("b", None)).unwrap();
    e.publish(CSI, &name("a"), bind("/t/x", false)).unwrap();
    let err = e.publish(CSI, &name("b"), bind("/t/x", false)).unwrap_err();
    assert!(err.to_string().contains("for volume a"), "{err}");
}

#[test]
fn grant_group_makes_the_data_root_group_writable_and_inheriting() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = e.create(CSI, request("shared", None)).unwrap();
    for _ in 0..2 {
        e.grant_group(CSI, &name("shared"), 2000).unwrap();
        assert_eq!(
            e.host().ownership_of(&v.placement.data),
            Some(Ownership {
                uid: None,
                gid: Some(2000),
                mode: Some(0o2775),
            })
        );
    }
    // The creator's mode is kept; only group bits are added.
    let mut private = request("private", None);
    private.spec.ownership.mode = Some(0o700);
    let v = e.create(CSI, private).unwrap();
    e.grant_group(CSI, &name("private"), 7).unwrap();
    let granted = e.host().ownership_of(&v.placement.data).unwrap();
    assert_eq!(granted.mode, Some(0o2770));

    let mut raw = request("raw", Some(GIB));
    raw.spec.access = AccessType::Block;
    e.create(CSI, raw).unwrap();
    let err = e.grant_group(CSI, &name("raw"), 7).unwrap_err();
    assert!(matches!(err, EngineError::Unsupported { .. }), "{err}");
    let err = e.grant_group(CSI, &name("missing"), 7).unwrap_err();
    assert!(matches!(err, EngineError::NotFound { .. }), "{err}");
    let guard = e.locks.acquire(&name("shared"), false).unwrap();
    let err = e.grant_group(CSI, &name("shared"), 7).unwrap_err();
    assert!(matches!(err, EngineError::Busy { .. }), "{err}");
    drop(guard);
}

#[test]
fn list_after_pages_in_name_order_and_survives_a_deleted_cursor() {
    let f = Fixture::new();
    let e = f.open(host());
    for n in ["c", "a", "e", "b", "d"] {
        e.create(CSI, request(n, None)).unwrap();
    }
    let names = |vs: Vec<Arc<Volume>>| {
        vs.into_iter()
            .map(|v| v.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(e.list_after(CSI, None, 2)), ["a", "b"]);
    assert_eq!(names(e.list_after(CSI, Some(&name("b")), 2)), ["c", "d"]);
    assert_eq!(names(e.list_after(CSI, Some(&name("d")), 2)), ["e"]);
    assert!(e.list_after(CSI, Some(&name("e")), 2).is_empty());
    assert!(e.list_after(CSI, None, 0).is_empty());
    // The cursor need not exist any more: paging goes on after where it was.
    e.delete(CSI, &name("b")).unwrap();
    assert_eq!(
        names(e.list_after(CSI, Some(&name("b")), 10)),
        ["c", "d", "e"]
    );
    assert_eq!(
        names(e.list_after(CSI, None, usize::MAX)),
        ["a", "c", "d", "e"]
    );
}

#[test]
fn usage_of_a_loopfs_volume_is_measured_inside_its_own_filesystem() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = e.create(CSI, request("db", Some(GIB))).unwrap();
    e.usage(&name("db")).unwrap();
    let measured: Vec<PathBuf> = e
        .host()
        .calls()
        .into_iter()
        .filter(|c| c.op == "fs_stats")
        .map(|c| c.path)
        .collect();
    assert_eq!(measured.last(), Some(&v.placement.data), "{measured:?}");
    // When the volume's filesystem cannot be measured, usage says so instead of guessing.
    e.host().fail_op("fs_stats");
    let err = e.usage(&name("db")).unwrap_err();
    assert!(matches!(err, EngineError::Host { .. }), "{err}");
}

#[test]
fn adopt_hands_a_detached_volume_to_one_new_owner_only() {
    let f = Fixture::new();
    let owner = |task: &str| Owner {
        app_id: Some("/db".into()),
        task_id: Some(task.into()),
        ..Owner::default()
    };
    {
        let e = f.open(host());
        // A plain directory, so that a fresh fake host can reopen the store below.
        let mut req = request("v", None);
        req.owner = owner("t1");
        e.create(CSI, req).unwrap();
        e.publish(CSI, &name("v"), bind("/t/a", false)).unwrap();

        // Attached: refused, nothing changes.
        let before = mutations(e.host());
        let err = e
            .adopt(CSI, &name("v"), &owner("t1"), owner("t2"))
            .unwrap_err();
        assert!(matches!(err, EngineError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("/t/a"), "{err}");
        assert_eq!(e.get(&name("v")).unwrap().owner, owner("t1"));

        assert_eq!(
            mutations(e.host()),
            before,
            "a refused adopt touches nothing"
        );
        e.unpublish(CSI, &name("v"), &bind("/t/a", false)).unwrap();
        let before = mutations(e.host());
        let v = e.adopt(CSI, &name("v"), &owner("t1"), owner("t2")).unwrap();
        assert_eq!(v.owner, owner("t2"));
        assert_eq!(
            v.state(),
            VolumeState::Detached,
            "adopting attaches nothing"
        );
        // A retry by the winner is a no-op; a loser who still expects t1 is told Busy.
        e.adopt(CSI, &name("v"), &owner("t1"), owner("t2")).unwrap();
        let err = e
            .adopt(CSI, &name("v"), &owner("t1"), owner("t3"))
            .unwrap_err();
        assert!(matches!(err, EngineError::Busy { .. }), "{err}");
        assert!(matches!(
            e.adopt(CSI, &name("nope"), &owner("t1"), owner("t2")),
            Err(EngineError::NotFound { .. })
        ));
        assert_eq!(mutations(e.host()), before, "adopting is bookkeeping only");
    }
    // The new owner is durable.
    let e = f.open(host());
    assert_eq!(e.get(&name("v")).unwrap().owner, owner("t2"));
}

#[test]
fn a_pending_reservation_never_attached_is_rolled_back_at_its_deadline_and_can_be_retried() {
    let f = Fixture::new();
    let e = f.open(host());
    let within = std::time::Duration::from_secs(20);
    let before = now_ms();
    let v = e
        .create_pending(CSI, request("pending", Some(GIB)), within)
        .unwrap();
    let deadline = v.pending_until.expect("a deadline");
    assert!(deadline >= before + 20_000, "{deadline} {before}");
    e.create(CSI, request("plain", Some(GIB))).unwrap();
    e.create_pending(CSI, request("used", Some(GIB)), within)
        .unwrap();
    e.publish(CSI, &name("used"), bind("/t/used", false))
        .unwrap();
    assert_eq!(e.get(&name("used")).unwrap().pending_until, None);
    // Attached once, it is an ordinary volume: detaching does not make it expire.
    e.unpublish(CSI, &name("used"), &bind("/t/used", false))
        .unwrap();

    assert!(e.expire_pending_reservations(deadline - 1).is_empty());
    assert!(e.get(&name("pending")).is_ok());

    // A volume busy with another operation is left for the next sweep.
    let guard = e.locks.acquire(&name("pending"), false).unwrap();
    assert!(e.expire_pending_reservations(deadline).is_empty());
    drop(guard);

    let expired = e.expire_pending_reservations(deadline);
    assert_eq!(expired, vec![name("pending")]);
    assert!(matches!(
        e.get(&name("pending")),
        Err(EngineError::NotFound { .. })
    ));
    assert!(!e.host().is_dir(&v.placement.dir), "the data is wiped");
    assert!(!e.host().has_image(v.placement.image.as_deref().unwrap()));
    assert_eq!(
        e.capacity(&PoolSelector::default())[0].reserved_bytes,
        2 * GIB
    );
    let later = deadline + 3_600_000;
    assert!(e.expire_pending_reservations(later).is_empty());
    assert!(e.get(&name("plain")).is_ok() && e.get(&name("used")).is_ok());
    let m = e.metrics();
    assert_eq!(m.ops[&("internal", "expire")].count, 1);

    // The attempt can be made again, and this time the task starts.
    e.create_pending(CSI, request("pending", Some(GIB)), within)
        .unwrap();
    e.publish(CSI, &name("pending"), bind("/t/p", false))
        .unwrap();
    assert!(e.expire_pending_reservations(later).is_empty());
}

#[test]
fn a_pending_deadline_survives_a_restart_and_a_retried_create_does_not_extend_it() {
    let f = Fixture::new();
    let h = host();
    let within = std::time::Duration::from_secs(20);
    let deadline = {
        let e = f.open(h);
        let v = e.create_pending(CSI, request("p", None), within).unwrap();
        v.pending_until.unwrap()
    };
    let h = host();
    h.make_dir(Path::new("/pool/volumes/p"), &Ownership::default())
        .unwrap();
    let e = f.open(h);
    assert_eq!(e.get(&name("p")).unwrap().pending_until, Some(deadline));
    std::thread::sleep(std::time::Duration::from_millis(5));
    let again = e.create_pending(CSI, request("p", None), within).unwrap();
    assert_eq!(
        again.pending_until,
        Some(deadline),
        "a retry keeps the deadline"
    );
    // A plain create of the same volume neither adds nor removes a deadline.
    let plain = e.create(CSI, request("p", None)).unwrap();
    assert_eq!(plain.pending_until, Some(deadline));
    assert_eq!(e.expire_pending_reservations(deadline), vec![name("p")]);
    assert!(!e.host().is_dir(Path::new("/pool/volumes/p")));
}

#[test]
fn a_tombstoned_delete_that_fails_again_at_start_does_not_keep_the_engine_down() {
    let f = Fixture::new();
    let store_path = f.config().store_path;
    {
        let e = f.open(host());
        e.create(CSI, request("stuck", None)).unwrap();
        e.create(CSI, request("fine", None)).unwrap();
    }
    {
        let store = Store::open(&store_path).unwrap();
        let mut stuck = store
            .load_all::<Volume>()
            .unwrap()
            .into_iter()
            .find(|v| v.name.as_str() == "stuck")
            .unwrap();
        stuck.phase = Phase::Deleting { wipe: true };
        store.put(stuck.name.as_str(), &stuck).unwrap();
    }
    let h = host();
    for n in ["stuck", "fine"] {
        h.make_dir(
            &PathBuf::from(format!("/pool/volumes/{n}")),
            &Ownership::default(),
        )
        .unwrap();
    }
    h.fail_op("remove_tree");
    let e = f.open(h);
    let report = e.recovery_report();
    assert!(report.finished_deletes.is_empty());
    assert_eq!(report.unfinished_deletes.len(), 1);
    assert_eq!(report.unfinished_deletes[0].0, "stuck");
    assert!(report.unfinished_deletes[0].1.contains("injected"));
    assert_eq!(
        e.get(&name("stuck")).unwrap().state(),
        VolumeState::Deleting
    );
    assert_eq!(e.get(&name("fine")).unwrap().state(), VolumeState::Reserved);
    e.host().heal();
    // A plain delete of the tombstone keeps the stronger request: it is still a wipe.
    e.delete(CSI, &name("stuck")).unwrap();
    assert!(matches!(
        e.get(&name("stuck")),
        Err(EngineError::NotFound { .. })
    ));
    assert!(!e.host().is_dir(Path::new("/pool/volumes/stuck")));
}

fn prjquota_fixture(backend: BackendChoice) -> Fixture {
    let mut f = Fixture::new();
    f.pools[0].backend = backend;
    f
}

#[test]
fn project_quota_pools_get_unique_ids_that_skip_the_operators_and_are_released() {
    let f = prjquota_fixture(BackendChoice::Auto);
    let h = host();
    h.set_fs_kind(Path::new("/pool"), crate::host::FsKind::Xfs);
    h.set_project_quotas(true);
    h.reserve_project_id(FIRST_PROJECT_ID);
    let e = f.open(h);
    let a = e.create(CSI, request("a", Some(GIB))).unwrap();
    let b = e.create(CSI, request("b", Some(GIB))).unwrap();
    assert_eq!(a.placement.backend, Backend::Prjquota);
    let (ida, idb) = (
        a.placement.project_id.unwrap(),
        b.placement.project_id.unwrap(),
    );
    assert_eq!(ida, FIRST_PROJECT_ID + 1, "the operator's id is skipped");
    assert_ne!(ida, idb);
    assert_eq!(e.host().project_of(&a.placement.dir), Some((ida, GIB)));
    e.expand(CSI, &name("a"), 2 * GIB).unwrap();
    assert_eq!(e.host().project_of(&a.placement.dir), Some((ida, 2 * GIB)));
    e.delete(CSI, &name("a")).unwrap();
    assert_eq!(e.host().project_of(&a.placement.dir), None, "released");
    // The released id is handed out again.
    let c = e.create(CSI, request("c", Some(GIB))).unwrap();
    assert_eq!(c.placement.project_id, Some(ida));
    // Without a size: a plain directory, no quota.
    let d = e.create(CSI, request("d", None)).unwrap();
    assert_eq!(d.placement.backend, Backend::None);
    assert_eq!(d.placement.project_id, None);
}

#[test]
fn an_explicit_backend_the_filesystem_cannot_serve_is_refused_at_start() {
    let f = prjquota_fixture(BackendChoice::Prjquota);
    let err = Engine::open(f.config(), host()).err().unwrap().to_string();
    assert!(err.contains("pool default"), "{err}");
    assert!(err.contains("prjquota cannot work"), "{err}");
    let f = prjquota_fixture(BackendChoice::Btrfs);
    let err = Engine::open(f.config(), host()).err().unwrap().to_string();
    assert!(err.contains("needs every path on btrfs"), "{err}");
    // Auto on a filesystem without quotas falls back to loopfs.
    let f = prjquota_fixture(BackendChoice::Auto);
    let e = f.open(host());
    let v = e.create(CSI, request("v", Some(GIB))).unwrap();
    assert_eq!(v.placement.backend, Backend::Loopfs);
}

#[test]
fn btrfs_pools_make_subvolumes_with_qgroup_limits() {
    let f = prjquota_fixture(BackendChoice::Auto);
    let h = host();
    h.set_fs_kind(Path::new("/pool"), crate::host::FsKind::Btrfs);
    let e = f.open(h);
    let v = e.create(CSI, request("v", Some(GIB))).unwrap();
    assert_eq!(v.placement.backend, Backend::Btrfs);
    assert_eq!(e.host().subvolume_limit(&v.placement.dir), Some(Some(GIB)));
    e.expand(CSI, &name("v"), 3 * GIB).unwrap();
    assert_eq!(
        e.host().subvolume_limit(&v.placement.dir),
        Some(Some(3 * GIB))
    );
    e.usage(&name("v")).unwrap();
    e.wipe(CSI, &name("v")).unwrap();
    assert!(!e.host().is_subvolume(&v.placement.dir));
}

#[test]
fn a_btrfs_snapshot_is_restored_on_its_own_filesystem() {
    let mut f = prjquota_fixture(BackendChoice::Auto);
    f.pools[0].paths = vec![PathBuf::from("/pool/a"), PathBuf::from("/pool/b")];
    let h = FakeHost::new(100 * GIB);
    h.add_dir(Path::new("/pool/a"));
    h.add_dir(Path::new("/pool/b"));
    h.set_fs_kind(Path::new("/pool"), crate::host::FsKind::Btrfs);
    let e = f.open(h);
    let v = e.create(CSI, request("v", Some(GIB))).unwrap();
    assert_eq!(v.placement.base, Path::new("/pool/a"));
    e.snapshot(
        CSI,
        crate::engine::snapshot::SnapshotRequest {
            name: name("s"),
            source: name("v"),
        },
    )
    .unwrap();
    // /pool/b now has the most room, but the restore stays with its snapshot.
    let mut restore = request("r", Some(GIB));
    restore.spec.snapshot = Some(name("s"));
    let r = e.create(CSI, restore).unwrap();
    assert_eq!(r.placement.base, Path::new("/pool/a"));
    assert_eq!(
        r.spec.constraints,
        Vec::new(),
        "the pin is not part of the request"
    );
    let other = e.create(CSI, request("w", Some(GIB))).unwrap();
    assert_eq!(
        other.placement.base,
        Path::new("/pool/b"),
        "room decides otherwise"
    );
}

#[test]
fn retained_project_quota_data_keeps_its_id_taken() {
    let mut f = prjquota_fixture(BackendChoice::Prjquota);
    f.pools[0].reclaim = ReclaimPolicy::Retain;
    let h = host();
    h.set_fs_kind(Path::new("/pool"), crate::host::FsKind::Xfs);
    h.set_project_quotas(true);
    h.add_dir(Path::new("/pool/volumes/.retained"));
    let e = f.open(h);
    let a = e.create(CSI, request("a", Some(GIB))).unwrap();
    let id = a.placement.project_id.unwrap();
    e.delete(CSI, &name("a")).unwrap();
    let kept = Path::new("/pool/volumes/.retained").join(format!("a-{}", a.created_at));
    assert_eq!(e.host().project_of(&kept).map(|(i, _)| i), Some(id));
    let b = e.create(CSI, request("b", Some(GIB))).unwrap();
    assert_ne!(
        b.placement.project_id,
        Some(id),
        "the retained data's id is not reused"
    );
}

#[test]
fn a_volume_belongs_to_the_frontend_that_created_it() {
    let f = Fixture::new();
    let e = f.open(host());
    for (n, frontend) in [
        ("k", Frontend::Csi),
        ("d", Frontend::Docker),
        ("m", Frontend::Mesos),
        ("a", Frontend::Admin),
    ] {
        e.create(by(frontend), request(n, None)).unwrap();
    }
    let owned = |e: &Engine<FakeHost>, f: OwnerFrontend| -> Vec<String> {
        e.list(&VolumeFilter {
            frontend: Some(f),
            ..VolumeFilter::default()
        })
        .iter()
        .map(|v| v.name.to_string())
        .collect()
    };
    assert_eq!(owned(&e, OwnerFrontend::Csi), ["k"]);
    assert_eq!(owned(&e, OwnerFrontend::Docker), ["a", "d"]);
    assert_eq!(owned(&e, OwnerFrontend::Mesos), ["m"]);
}

#[test]
fn a_front_end_cannot_see_or_change_another_front_ends_volume_and_the_admin_api_can() {
    let f = Fixture::new();
    let e = f.open(host());
    let docker = by(Frontend::Docker);
    let mesos = by(Frontend::Mesos);
    let k8s = e.create(CSI, request("pvc-1", Some(GIB))).unwrap();
    e.publish(CSI, &name("pvc-1"), bind("/t/k8s", false))
        .unwrap();
    let before = e.get(&name("pvc-1")).unwrap();
    let calls = mutations(e.host());

    let refused = |r: Result<Volume, EngineError>| {
        let err = r.unwrap_err();
        assert!(matches!(err, EngineError::HeldByOther { .. }), "{err}");
        err.to_string()
    };
    let message = refused(e.get_as(docker, &name("pvc-1")));
    assert!(
        message.contains("belongs to the csi front-end: docker may not use"),
        "{message}"
    );
    refused(e.create(docker, request("pvc-1", Some(GIB))));
    refused(e.create(mesos, request("pvc-1", Some(2 * GIB))));
    refused(e.publish(docker, &name("pvc-1"), bind("/t/d", false)));
    refused(e.unpublish(mesos, &name("pvc-1"), &bind("/t/k8s", false)));
    refused(e.expand(docker, &name("pvc-1"), 2 * GIB));
    refused(e.grant_group(mesos, &name("pvc-1"), 100));
    refused(e.adopt(mesos, &name("pvc-1"), &Owner::default(), Owner::default()));
    let delete = e.delete(docker, &name("pvc-1")).unwrap_err();
    assert!(
        matches!(delete, EngineError::HeldByOther { .. }),
        "{delete}"
    );
    let wipe = e.wipe(mesos, &name("pvc-1")).unwrap_err();
    assert!(matches!(wipe, EngineError::HeldByOther { .. }), "{wipe}");
    assert!(e.list_as(docker, &VolumeFilter::default()).is_empty());
    assert!(e.list_after(docker, None, 10).is_empty());
    // Nothing changed: the record and the host are as they were.
    assert_eq!(e.get(&name("pvc-1")).unwrap(), before);
    assert_eq!(mutations(e.host()), calls);

    // Its owner and the admin API act on it.
    assert_eq!(e.get_as(CSI, &name("pvc-1")).unwrap().name, k8s.name);
    assert_eq!(e.list_after(CSI, None, 10).len(), 1);
    let admin = by(Frontend::Admin);
    e.unpublish(admin, &name("pvc-1"), &bind("/t/k8s", false))
        .unwrap();
    e.delete(admin, &name("pvc-1")).unwrap();
    assert!(e.get(&name("pvc-1")).is_err());
}

#[test]
fn a_handover_changes_only_the_owner_durably_and_is_refused_while_published() {
    let f = Fixture::new();
    let e = f.open(host());
    let mesos = by(Frontend::Mesos);
    let admin = by(Frontend::Admin);
    let within = std::time::Duration::from_secs(60);
    let made = e
        .create_pending(mesos, request("mysql#data#1", Some(GIB)), within)
        .unwrap();
    let target = bind("/sandbox/data", false);
    e.publish(mesos, &name("mysql#data#1"), target.clone())
        .unwrap();

    // Published: refused, nothing changed.
    let busy = e
        .handover(admin, &name("mysql#data#1"), OwnerFrontend::Csi)
        .unwrap_err();
    assert!(matches!(busy, EngineError::InUse { .. }), "{busy}");
    assert_eq!(
        e.get(&name("mysql#data#1")).unwrap().frontend,
        OwnerFrontend::Mesos
    );
    // A front-end may not hand over, not even its own volume.
    e.unpublish(mesos, &name("mysql#data#1"), &target).unwrap();
    for caller in [mesos, CSI, by(Frontend::Docker)] {
        let refused = e
            .handover(caller, &name("mysql#data#1"), OwnerFrontend::Csi)
            .unwrap_err();
        assert!(
            matches!(refused, EngineError::Unsupported { .. }),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("berth volume handover"),
            "{refused}"
        );
    }
    let calls = mutations(e.host());

    let moved = e
        .handover(admin, &name("mysql#data#1"), OwnerFrontend::Csi)
        .unwrap();
    assert_eq!(moved.frontend, OwnerFrontend::Csi);
    assert_eq!(
        moved.placement, made.placement,
        "the data stays where it is"
    );
    assert_eq!(moved.size, made.size);
    assert_eq!(
        moved.pending_until, None,
        "no longer a reservation to roll back"
    );
    assert_eq!(mutations(e.host()), calls, "the host is not touched");
    // Idempotent, and now the new owner's alone.
    assert_eq!(
        e.handover(admin, &name("mysql#data#1"), OwnerFrontend::Csi)
            .unwrap(),
        moved
    );
    assert!(e.get_as(CSI, &name("mysql#data#1")).is_ok());
    let held = e.get_as(mesos, &name("mysql#data#1")).unwrap_err();
    assert!(matches!(held, EngineError::HeldByOther { .. }), "{held}");
    assert!(
        e.expire_pending_reservations(u64::MAX).is_empty(),
        "a handed-over volume is never rolled back as an unused reservation"
    );
    // Back to Mesos works for a volume made for Marathon; one made elsewhere has no app.
    e.create(CSI, request("pvc-2", Some(GIB))).unwrap();
    let no_app = e
        .handover(admin, &name("pvc-2"), OwnerFrontend::Mesos)
        .unwrap_err();
    assert!(
        matches!(no_app, EngineError::Unsupported { .. }),
        "{no_app}"
    );
    assert!(no_app.to_string().contains("no Marathon app"), "{no_app}");
    assert_eq!(e.get(&name("pvc-2")).unwrap().frontend, OwnerFrontend::Csi);
    e.delete(CSI, &name("pvc-2")).unwrap();
    let missing = e
        .handover(admin, &name("nothing"), OwnerFrontend::Docker)
        .unwrap_err();
    assert!(matches!(missing, EngineError::NotFound { .. }), "{missing}");

    // Durable: the store holds the new owner.
    drop(e);
    let store = Store::open(&f.config().store_path).unwrap();
    let records: Vec<Volume> = store.load_all().unwrap();
    assert_eq!(records, vec![moved]);
}

/// A caller through `frontend` that would rather be told a volume is busy.
fn by(frontend: Frontend) -> Caller {
    Caller {
        frontend,
        wait_if_busy: false,
    }
}

fn health_of(e: &Engine<FakeHost>, n: &str) -> VolumeHealth {
    e.health(&e.get(&name(n)).unwrap())
}

fn abnormal_about(health: VolumeHealth, words: &str) {
    match health {
        VolumeHealth::Abnormal(message) => assert!(message.contains(words), "{message}"),
        VolumeHealth::Normal => panic!("expected abnormal ({words}), got normal"),
    }
}

#[test]
fn a_large_listing_reports_the_last_sweep_and_a_small_one_probes() {
    let mut f = Fixture::new();
    f.pools[0].backend = BackendChoice::None;
    let e = f.open(host());
    for i in 0..=health::LIVE_PROBE_LIMIT {
        e.create(CSI, request(&format!("v{i:03}"), None)).unwrap();
    }
    let all = e.list_after(CSI, None, usize::MAX);
    assert!(all.len() > health::LIVE_PROBE_LIMIT);
    let gone = |n: &str| e.host().drop_dir(&e.get(&name(n)).unwrap().placement.dir);

    // Before any sweep, a large listing probes for itself.
    gone("v000");
    let listed = e.listed_health(&all);
    abnormal_about(listed[0].clone(), "v000/data is gone");
    assert!(listed[1..].iter().all(|h| *h == VolumeHealth::Normal));

    // Volumes made in the sweep's first millisecond would be probed: keep them older.
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(e.sweep_health(Duration::from_secs(60)), 1);
    gone("v001");
    let listed = e.listed_health(&all);
    abnormal_about(listed[0].clone(), "v000/data is gone");
    assert_eq!(
        listed[1],
        VolumeHealth::Normal,
        "what went after the sweep shows at the next one in a large listing"
    );
    // A small listing, and the volume alone, are probed as they answer.
    abnormal_about(e.listed_health(&all[..2])[1].clone(), "v001/data is gone");
    abnormal_about(e.health(&all[1]), "v001/data is gone");

    assert_eq!(e.sweep_health(Duration::from_secs(60)), 2);
    abnormal_about(e.listed_health(&all)[1].clone(), "v001/data is gone");

    // A volume made again under a swept name is probed, not taken for the one swept.
    std::thread::sleep(Duration::from_millis(2));
    e.delete(CSI, &name("v000")).unwrap();
    e.create(CSI, request("v000", None)).unwrap();
    let all = e.list_after(CSI, None, usize::MAX);
    assert_eq!(e.listed_health(&all)[0], VolumeHealth::Normal);
    // A sweep no longer fresh is not trusted.
    assert_eq!(e.sweep_health(Duration::ZERO), 1);
    abnormal_about(e.listed_health(&all)[1].clone(), "v001/data is gone");
    e.host().drop_dir(&all[2].placement.dir);
    abnormal_about(e.listed_health(&all)[2].clone(), "v002/data is gone");
}

#[test]
fn a_loopfs_volume_is_abnormal_when_its_mount_loop_or_filesystem_fails() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = e.create(CSI, request("v", Some(GIB))).unwrap();
    e.publish(CSI, &name("v"), bind("/t/a", false)).unwrap();
    assert_eq!(health_of(&e, "v"), VolumeHealth::Normal);
    let device = e.host().loop_devices().unwrap().remove(0).device;

    e.host().set_fs_errors(&device, 2);
    abnormal_about(health_of(&e, "v"), "recorded 2 error(s)");
    e.host().set_fs_errors(&device, 0);
    assert_eq!(health_of(&e, "v"), VolumeHealth::Normal);

    e.host().drop_loop(&device);
    abnormal_about(health_of(&e, "v"), "it was detached");

    e.host().unmount(&v.placement.dir).unwrap();
    abnormal_about(health_of(&e, "v"), "no longer mounted at /pool/volumes/v");
}

#[test]
fn a_plain_volume_is_abnormal_when_its_directory_vanished() {
    let mut f = Fixture::new();
    f.pools[0].backend = BackendChoice::None;
    let e = f.open(host());
    let v = e.create(CSI, request("p", None)).unwrap();
    let other = e.create(CSI, request("q", None)).unwrap();
    e.host().drop_dir(&v.placement.dir);
    abnormal_about(
        e.health(&e.get(&name("p")).unwrap()),
        "/pool/volumes/p/data is gone",
    );
    assert_eq!(
        e.health(&other),
        VolumeHealth::Normal,
        "only the one whose data went"
    );
}

#[test]
fn a_published_block_volume_is_abnormal_when_its_loop_device_is_detached() {
    let f = Fixture::new();
    let e = f.open(host());
    let mut r = request("raw", Some(GIB));
    r.spec.access = AccessType::Block;
    e.create(CSI, r).unwrap();
    assert_eq!(health_of(&e, "raw"), VolumeHealth::Normal, "not published");
    let v = e.publish(CSI, &name("raw"), bind("/t/dev", false)).unwrap();
    assert_eq!(health_of(&e, "raw"), VolumeHealth::Normal);
    let device = v.publications[0].device.clone().unwrap();
    e.host().drop_loop(&device);
    abnormal_about(health_of(&e, "raw"), "no longer holds its image");
}

mod commits;
mod fs_key;

#[test]
fn an_error_about_no_one_volume_names_none_until_a_request_names_it() {
    let unnamed = EngineError::Host {
        volume: None,
        operation: "measuring the pool",
        source: crate::host::HostError::Injected("disk gone".into()),
    };
    let text = unnamed.to_string();
    assert!(text.starts_with("measuring the pool failed: "), "{text}");
    assert!(!text.contains("volume"), "{text}");
    let named = unnamed.for_volume("db").to_string();
    assert!(
        named.starts_with("volume db: measuring the pool failed: "),
        "{named}"
    );

    let store = EngineError::Store {
        volume: None,
        operation: "open",
        source: crate::store::StoreError::Corrupt {
            key: "db".into(),
            reason: "bad record".into(),
        },
    };
    assert!(
        store
            .to_string()
            .starts_with("the reservation store failed during open: "),
        "{store}"
    );
    // An error that already names its volume keeps it.
    let own = EngineError::Host {
        volume: Some("logs".into()),
        operation: "mount",
        source: crate::host::HostError::Injected("x".into()),
    };
    assert!(
        own.for_volume("db")
            .to_string()
            .starts_with("volume logs: mount failed")
    );
}

#[test]
fn a_publication_on_a_base_needs_the_base_published_under_the_same_lock() {
    let f = Fixture::new();
    let e = f.open(host());
    e.create(CSI, request("db", None)).unwrap();
    let base = bind("/k/staging/db", false);
    let before = e.get(&name("db")).unwrap();
    let calls = mutations(e.host());
    let err = e
        .publish_on(CSI, &name("db"), &base, bind("/k/pod/db", false))
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::NotPublishedAt { base, .. } if base == Path::new("/k/staging/db")),
        "{err}"
    );
    assert_eq!(e.get(&name("db")).unwrap(), before, "nothing is recorded");
    assert_eq!(mutations(e.host()), calls, "nothing is mounted");

    e.publish(CSI, &name("db"), base.clone()).unwrap();
    let v = e
        .publish_on(CSI, &name("db"), &base, bind("/k/pod/db", true))
        .unwrap();
    assert_eq!(v.publications.len(), 2);
    // Idempotent, as a publish is.
    e.publish_on(CSI, &name("db"), &base, bind("/k/pod/db", true))
        .unwrap();
    // Once the base is gone a new publication on it is refused again.
    e.unpublish(CSI, &name("db"), &bind("/k/pod/db", true))
        .unwrap();
    e.unpublish(CSI, &name("db"), &base).unwrap();
    assert!(matches!(
        e.publish_on(CSI, &name("db"), &base, bind("/k/pod/db", false)),
        Err(EngineError::NotPublishedAt { .. })
    ));
}
