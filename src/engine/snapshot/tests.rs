//! The snapshot service on the fake host: idempotence, ownership, restores, and a failure or crash at any step.

use std::path::{Path, PathBuf};

use super::*;
use crate::engine::pool::PoolConfig;
use crate::engine::types::{CreateRequest, Frontend, Owner};
use crate::engine::{EngineConfig, NodeInfo, VolumeService};
use crate::host::fake::FakeHost;

const GIB: u64 = 1 << 30;
const CALLER: Caller = Caller {
    frontend: Frontend::Admin,
    wait_if_busy: false,
};

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

fn config(dir: &Path) -> EngineConfig {
    let mut pool = PoolConfig::default_root(Path::new("/pool"));
    pool.paths = vec![PathBuf::from("/pool/volumes")];
    pool.capacity = Some(10 * GIB);
    EngineConfig {
        store_path: dir.join("berth.redb"),
        pools: vec![pool],
        node: NodeInfo::default(),
    }
}

fn host() -> FakeHost {
    let h = FakeHost::new(100 * GIB);
    h.add_dir(Path::new("/pool/volumes"));
    h
}

fn create(e: &Engine<FakeHost>, n: &str, size: u64, snapshot: Option<&str>) -> Volume {
    e.create(
        CALLER,
        CreateRequest {
            name: name(n),
            spec: VolumeSpec {
                size: Some(size),
                snapshot: snapshot.map(name),
                ..VolumeSpec::default()
            },
            owner: Owner::default(),
        },
    )
    .unwrap()
}

fn snap(e: &Engine<FakeHost>, n: &str, source: &str) -> Result<Snapshot, EngineError> {
    e.snapshot(
        CALLER,
        SnapshotRequest {
            name: name(n),
            source: name(source),
        },
    )
}

#[test]
fn snapshots_are_idempotent_counted_and_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path()), host()).unwrap();
    create(&e, "v", 3 * GIB, None);
    let s = snap(&e, "s", "v").unwrap();
    assert_eq!(s.size, 3 * GIB);
    assert_eq!(s.path, Path::new("/pool/volumes/.snapshots/s.img"));
    assert!(e.host().has_image(&s.path));
    assert_eq!(snap(&e, "s", "v").unwrap(), s, "idempotent by name");
    let pool = &e.capacity(&crate::engine::PoolSelector::default())[0];
    assert_eq!((pool.snapshots, pool.snapshot_bytes), (1, 3 * GIB));
    assert_eq!(pool.reserved_bytes, 6 * GIB, "the volume and its snapshot");
    create(&e, "w", 2 * GIB, None);
    assert!(matches!(
        snap(&e, "s", "w"),
        Err(EngineError::SnapshotExists { .. })
    ));
    // 3 (v) + 3 (s) + 2 (w) of 10 GiB: another 3 GiB copy does not fit.
    let full = snap(&e, "s2", "v").unwrap_err();
    assert!(matches!(full, EngineError::NoCapacity { .. }), "{full}");
    assert!(
        e.get_snapshot(&name("s2")).is_err(),
        "refused, not recorded"
    );
    // A restore gets at least the snapshot's size (3 GiB > 2 GiB free).
    let r = e
        .create(
            CALLER,
            CreateRequest {
                name: name("r"),
                spec: VolumeSpec {
                    snapshot: Some(name("s")),
                    ..VolumeSpec::default()
                },
                owner: Owner::default(),
            },
        )
        .unwrap_err();
    assert!(matches!(r, EngineError::NoCapacity { .. }), "{r}");
    e.delete_snapshot(CALLER, &name("s")).unwrap();
    e.delete_snapshot(CALLER, &name("s")).unwrap();
    assert!(!e.host().has_image(&s.path));
    assert!(e.list_snapshots(None).is_empty());
    let s = snap(&e, "s", "v").unwrap();
    e.delete(CALLER, &name("w")).unwrap();
    let r = create(&e, "r", 3 * GIB, Some("s"));
    assert!(
        e.host()
            .calls()
            .iter()
            .any(|c| c.op == "copy_image" && Some(&c.path) == r.placement.image.as_ref())
    );
    assert_eq!(e.list_snapshots(Some(&name("v"))), vec![s]);
}

#[test]
fn a_snapshot_is_its_front_ends_and_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path()), host()).unwrap();
    let as_ = |frontend| Caller {
        frontend,
        wait_if_busy: false,
    };
    let request = |n: &str, snapshot: Option<&str>| CreateRequest {
        name: name(n),
        spec: VolumeSpec {
            size: Some(GIB),
            snapshot: snapshot.map(name),
            ..VolumeSpec::default()
        },
        owner: Owner::default(),
    };
    e.create(as_(Frontend::Csi), request("v", None)).unwrap();
    let take = |frontend, n: &str| {
        e.snapshot(
            as_(frontend),
            SnapshotRequest {
                name: name(n),
                source: name("v"),
            },
        )
    };
    let refused = take(Frontend::Docker, "s").unwrap_err();
    assert!(
        matches!(refused, EngineError::HeldByOther { .. }),
        "{refused}"
    );
    let s = take(Frontend::Csi, "s").unwrap();
    assert_eq!(s.frontend, Some(OwnerFrontend::Csi));
    for other in [Frontend::Docker, Frontend::Mesos] {
        let refused = e.create(as_(other), request("r", Some("s"))).unwrap_err();
        assert!(
            matches!(refused, EngineError::HeldByOther { .. }),
            "{refused}"
        );
        let refused = e.delete_snapshot(as_(other), &name("s")).unwrap_err();
        assert!(
            matches!(refused, EngineError::HeldByOther { .. }),
            "{refused}"
        );
    }
    // The operator restores it; the volume is the caller's front-end's (an operator's
    // volumes are Docker's), and CSI restores its own.
    let r = e.create(CALLER, request("r", Some("s"))).unwrap();
    assert_eq!(r.frontend, OwnerFrontend::Docker);
    let r2 = e
        .create(as_(Frontend::Csi), request("r2", Some("s")))
        .unwrap();
    assert_eq!(r2.frontend, OwnerFrontend::Csi);
    e.delete_snapshot(CALLER, &name("s")).unwrap();
}

#[test]
fn a_failure_at_any_step_leaves_nothing_and_a_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path()), host()).unwrap();
    create(&e, "v", GIB, None);
    let before = e.host().call_count();
    snap(&e, "probe", "v").unwrap();
    let steps = e.host().call_count() - before;
    e.delete_snapshot(CALLER, &name("probe")).unwrap();
    for step in 0..steps {
        e.host().fail_at_call(e.host().call_count() + step);
        assert!(snap(&e, "s", "v").is_err(), "step {step}");
        assert!(e.get_snapshot(&name("s")).is_err(), "step {step}");
        assert!(
            !e.host()
                .has_image(Path::new("/pool/volumes/.snapshots/s.img"))
        );
        e.host().heal();
    }
    snap(&e, "s", "v").unwrap();
}

#[test]
fn a_crash_during_the_copy_is_rolled_back_and_the_source_thawed() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path()), host()).unwrap();
    let v = create(&e, "v", GIB, None);
    e.host().crash_at("copy_image");
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| snap(&e, "s", "v")));
    assert!(crashed.is_err());
    drop(e);
    let h = host();
    h.make_dir(&v.placement.dir, &Ownership::default()).unwrap();
    let image = v.placement.image.clone().unwrap();
    h.create_image(&image, GIB, Some(FsType::Ext4)).unwrap();
    h.mount_image(&image, &v.placement.dir, FsType::Ext4)
        .unwrap();
    // A half-made copy, as the crash may leave it.
    h.create_image(Path::new("/pool/volumes/.snapshots/s.img"), GIB, None)
        .unwrap();
    let e = Engine::open(config(dir.path()), h).unwrap();
    assert_eq!(
        e.recovery_report().cleaned_snapshots,
        vec![("s".to_string(), Ok(()))]
    );
    assert!(
        e.host()
            .calls()
            .iter()
            .any(|c| c.op == "thaw" && c.path == v.placement.dir)
    );
    assert!(
        !e.host()
            .has_image(Path::new("/pool/volumes/.snapshots/s.img"))
    );
    assert!(e.get_snapshot(&name("s")).is_err());
    snap(&e, "s", "v").unwrap();
}
