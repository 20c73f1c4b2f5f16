//! Fault injection on the real kernel: every host call of every operation fails in turn.
//! After each failure the error names the operation and the volume, the store agrees with
//! the kernel (no unknown mount, loop device, directory or image), a retry succeeds, and a
//! final clean-up leaves nothing behind.

#[path = "support/harness/mod.rs"]
mod harness;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use berth::engine::pool::{BackendChoice, PoolConfig};
use berth::engine::types::*;
use berth::engine::{Engine, EngineConfig, EngineError, NodeInfo, VolumeService};
use berth::host::Host;
use berth::host::faults::Faulty;
use berth::host::linux::LinuxHost;
use harness::cleanup::Scratch;

const CALLER: Caller = Caller {
    frontend: Frontend::Internal,
    wait_if_busy: true,
};
const MIB: u64 = 1 << 20;

type TestEngine = Engine<Faulty<LinuxHost>>;

struct Scene {
    dir: Scratch,
    fs: FsType,
}

impl Scene {
    fn new(fs: FsType) -> Self {
        harness::require_root();
        let dir = Scratch::new("berth-faults-");
        fs::create_dir_all(dir.path().join("volumes")).unwrap();
        fs::create_dir_all(dir.path().join("targets")).unwrap();
        Self { dir, fs }
    }

    fn open(&self) -> TestEngine {
        let mut pool = PoolConfig::default_root(self.dir.path());
        pool.paths = vec![self.pool()];
        pool.backend = BackendChoice::Auto;
        pool.fs = self.fs;
        Engine::open(
            EngineConfig {
                store_path: self.dir.path().join("berth.redb"),
                pools: vec![pool],
                node: NodeInfo::default(),
            },
            Faulty::new(LinuxHost::new()),
        )
        .unwrap()
    }

    fn pool(&self) -> PathBuf {
        self.dir.path().join("volumes")
    }

    fn target(&self, n: &str) -> PathBuf {
        self.dir.path().join("targets").join(n)
    }

    fn mounts(&self) -> BTreeSet<PathBuf> {
        let root = self.dir.path();
        LinuxHost::new()
            .mounts()
            .unwrap()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|mp| mp.starts_with(root))
            .collect()
    }

    fn loops(&self) -> BTreeSet<PathBuf> {
        let root = self.dir.path();
        LinuxHost::new()
            .loop_devices()
            .unwrap()
            .into_iter()
            .map(|l| l.backing_file)
            .filter(|f| f.starts_with(root))
            .collect()
    }

    /// The store and the kernel agree.
    fn check_consistent(&self, e: &TestEngine, context: &str) {
        let volumes = e.list(&VolumeFilter::default());
        let mut expected_mounts = BTreeSet::new();
        let mut expected_loops = BTreeSet::new();
        let mut expected_entries = BTreeSet::new();
        let mut expected_targets = BTreeSet::new();
        for v in &volumes {
            let p = &v.placement;
            if let Phase::Deleting { .. } = v.phase {
                // A tombstone: whatever is left of it may still be there until the retry
                // or the next start finishes the delete; nothing else may be.
                assert!(v.publications.is_empty(), "{context}");
                for path in [Some(&p.dir), p.image.as_ref()].into_iter().flatten() {
                    if path.exists() {
                        expected_entries.insert(path.clone());
                    }
                }
                if self.mounts().contains(&p.dir) {
                    expected_mounts.insert(p.dir.clone());
                }
                if let Some(image) = &p.image
                    && self.loops().contains(image)
                {
                    expected_loops.insert(image.clone());
                }
                continue;
            }
            assert_eq!(
                v.phase,
                Phase::Ready,
                "{context}: {} left {:?}",
                v.name,
                v.phase
            );
            if let Some(image) = &p.image {
                assert!(image.exists(), "{context}: image of {} missing", v.name);
                expected_entries.insert(image.clone());
            }
            if p.fs.is_some() {
                expected_mounts.insert(p.dir.clone());
                expected_loops.insert(p.image.clone().unwrap());
            }
            if v.spec.access == AccessType::Filesystem {
                assert!(p.data.is_dir(), "{context}: data of {} missing", v.name);
                expected_entries.insert(p.dir.clone());
            }
            for publication in &v.publications {
                if let PublishTarget::Bind { path, .. } = &publication.target {
                    match publication.state {
                        PublicationState::Published => expected_mounts.insert(path.clone()),
                        // Unmounted; only the target's removal is left to do.
                        PublicationState::Unpublishing => expected_targets.insert(path.clone()),
                        PublicationState::Publishing => panic!("{context}: publishing left"),
                    };
                    if publication.device.is_some() {
                        expected_loops.insert(p.image.clone().unwrap());
                    }
                }
            }
        }
        assert_eq!(self.mounts(), expected_mounts, "{context}: mounts");
        assert_eq!(self.loops(), expected_loops, "{context}: loop devices");
        let mut on_disk = BTreeSet::new();
        for entry in fs::read_dir(self.pool()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name == ".images" {
                for image in fs::read_dir(&path).unwrap() {
                    on_disk.insert(image.unwrap().path());
                }
            } else if name != ".retained" && name != ".trash" {
                on_disk.insert(path);
            }
        }
        assert_eq!(on_disk, expected_entries, "{context}: pool contents");
        for entry in fs::read_dir(self.dir.path().join("targets")).unwrap() {
            let path = entry.unwrap().path();
            assert!(
                expected_mounts.contains(&path) || expected_targets.contains(&path),
                "{context}: stray target {path:?}"
            );
        }
    }
}

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

fn create_req(n: &str, size: Option<u64>, access: AccessType) -> CreateRequest {
    CreateRequest {
        name: name(n),
        spec: VolumeSpec {
            size,
            access,
            ..VolumeSpec::default()
        },
        owner: Owner::default(),
    }
}

fn bind(path: &Path, read_only: bool) -> PublishTarget {
    PublishTarget::Bind {
        path: path.to_path_buf(),
        read_only,
    }
}

/// One scenario: what exists before, and the operation under test.
struct Scenario {
    label: &'static str,
    fs: FsType,
    setup: fn(&Scene, &TestEngine),
    op: fn(&Scene, &TestEngine) -> Result<(), EngineError>,
    /// Words the error must carry.
    names: &'static str,
    /// A restart completes the operation itself (deletes and wipes are tombstoned).
    finished_by_restart: bool,
}

fn run(s: &Scenario) {
    // A dry run counts the host calls the operation makes.
    let steps = {
        let scene = Scene::new(s.fs);
        let e = scene.open();
        (s.setup)(&scene, &e);
        let before = e.host().calls();
        (s.op)(&scene, &e).unwrap_or_else(|err| panic!("{}: dry run: {err}", s.label));
        e.host().calls() - before
    };
    assert!(steps > 0, "{}", s.label);
    for step in 0..steps {
        let scene = Scene::new(s.fs);
        let e = scene.open();
        (s.setup)(&scene, &e);
        e.host().fail_in(step);
        let context = format!("{} failing at step {step}", s.label);
        let err = (s.op)(&scene, &e).expect_err(&context);
        let text = err.to_string();
        assert!(text.contains(s.names), "{context}: {text}");
        assert!(text.contains("injected failure"), "{context}: {text}");
        scene.check_consistent(&e, &context);
        // A restart reconciles to the same consistent state.
        drop(e);
        let e = scene.open();
        scene.check_consistent(&e, &format!("{context}, after a restart"));
        assert!(
            e.list(&VolumeFilter::default())
                .iter()
                .all(|v| v.phase == Phase::Ready),
            "{context}: a restart finishes or rolls back every interrupted operation"
        );
        match (s.op)(&scene, &e) {
            Ok(()) => {}
            // The restart already finished the interrupted delete.
            Err(EngineError::NotFound { .. }) if s.finished_by_restart => {}
            Err(err) => panic!("{context}: retry: {err}"),
        }
        scene.check_consistent(&e, &format!("{context}, after the retry"));
        // Tear everything down through the engine: nothing may be left.
        for v in e.list(&VolumeFilter::default()) {
            for p in &v.publications {
                e.unpublish(CALLER, &v.name, &p.target).unwrap();
            }
            e.wipe(CALLER, &v.name).unwrap();
        }
        scene.check_consistent(&e, &format!("{context}, after clean-up"));
        assert!(scene.mounts().is_empty() && scene.loops().is_empty());
    }
    println!("{}: {steps} host steps, each failed once", s.label);
}

#[test]
fn every_step_of_every_operation_can_fail_safely() {
    let scenarios = [
        Scenario {
            label: "create loopfs",
            fs: FsType::Ext4,
            setup: |_, _| {},
            op: |_, e| {
                e.create(
                    CALLER,
                    create_req("v", Some(16 * MIB), AccessType::Filesystem),
                )
                .map(drop)
            },
            names: "volume v",
            finished_by_restart: false,
        },
        Scenario {
            label: "create directory",
            fs: FsType::Ext4,
            setup: |_, _| {},
            op: |_, e| {
                e.create(CALLER, create_req("d", None, AccessType::Filesystem))
                    .map(drop)
            },
            names: "volume d",
            finished_by_restart: false,
        },
        Scenario {
            label: "create block",
            fs: FsType::Ext4,
            setup: |_, _| {},
            op: |_, e| {
                e.create(CALLER, create_req("b", Some(8 * MIB), AccessType::Block))
                    .map(drop)
            },
            names: "volume b",
            finished_by_restart: false,
        },
        Scenario {
            label: "publish read-only loopfs",
            fs: FsType::Ext4,
            setup: |_, e| {
                e.create(
                    CALLER,
                    create_req("v", Some(16 * MIB), AccessType::Filesystem),
                )
                .unwrap();
            },
            op: |s, e| {
                e.publish(CALLER, &name("v"), bind(&s.target("t"), true))
                    .map(drop)
            },
            names: "volume v",
            finished_by_restart: false,
        },
        Scenario {
            label: "publish block",
            fs: FsType::Ext4,
            setup: |_, e| {
                e.create(CALLER, create_req("b", Some(8 * MIB), AccessType::Block))
                    .unwrap();
            },
            op: |s, e| {
                e.publish(CALLER, &name("b"), bind(&s.target("dev"), false))
                    .map(drop)
            },
            names: "volume b",
            finished_by_restart: false,
        },
        Scenario {
            label: "unpublish",
            fs: FsType::Ext4,
            setup: |s, e| {
                e.create(CALLER, create_req("d", None, AccessType::Filesystem))
                    .unwrap();
                e.publish(CALLER, &name("d"), bind(&s.target("t"), false))
                    .unwrap();
            },
            op: |s, e| {
                e.unpublish(CALLER, &name("d"), &bind(&s.target("t"), false))
                    .map(drop)
            },
            names: "volume d",
            finished_by_restart: false,
        },
        Scenario {
            label: "unpublish block",
            fs: FsType::Ext4,
            setup: |s, e| {
                e.create(CALLER, create_req("b", Some(8 * MIB), AccessType::Block))
                    .unwrap();
                e.publish(CALLER, &name("b"), bind(&s.target("dev"), false))
                    .unwrap();
            },
            op: |s, e| {
                e.unpublish(CALLER, &name("b"), &bind(&s.target("dev"), false))
                    .map(drop)
            },
            names: "volume b",
            finished_by_restart: false,
        },
        Scenario {
            label: "delete loopfs",
            fs: FsType::Ext4,
            setup: |_, e| {
                let v = e
                    .create(
                        CALLER,
                        create_req("v", Some(16 * MIB), AccessType::Filesystem),
                    )
                    .unwrap();
                fs::write(v.placement.data.join("f"), b"x").unwrap();
            },
            op: |_, e| e.delete(CALLER, &name("v")),
            names: "volume v",
            finished_by_restart: true,
        },
        Scenario {
            label: "wipe directory",
            fs: FsType::Ext4,
            setup: |_, e| {
                let v = e
                    .create(CALLER, create_req("d", None, AccessType::Filesystem))
                    .unwrap();
                for i in 0..50 {
                    fs::write(v.placement.data.join(format!("f{i}")), b"x").unwrap();
                }
            },
            op: |_, e| e.wipe(CALLER, &name("d")).map(drop),
            names: "volume d",
            finished_by_restart: true,
        },
        Scenario {
            label: "expand xfs loopfs",
            fs: FsType::Xfs,
            setup: |_, e| {
                e.create(
                    CALLER,
                    create_req("x", Some(300 * MIB), AccessType::Filesystem),
                )
                .unwrap();
            },
            op: |_, e| e.expand(CALLER, &name("x"), 320 * MIB).map(drop),
            names: "volume x",
            finished_by_restart: false,
        },
    ];
    for s in &scenarios {
        run(s);
    }
}
