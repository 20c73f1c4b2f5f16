//! The engine on the real kernel, as root: real bind mounts, loop devices and removal, with
//! the engine closed and reopened from its store between steps (what a daemon restart does).

#[path = "support/harness/mod.rs"]
mod harness;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use berth::engine::pool::{BackendChoice, PoolConfig};
use berth::engine::types::*;
use berth::engine::{Engine, EngineConfig, EngineError, NodeInfo, VolumeService};
use berth::host::linux::LinuxHost;
use harness::cleanup::{Scratch, mounts_under};

const CALLER: Caller = Caller {
    frontend: Frontend::Internal,
    wait_if_busy: true,
};

/// A temp dir with a pool and a targets dir; unmounts whatever is left under it on drop.
struct Scene {
    dir: Scratch,
}

impl Scene {
    fn new() -> Self {
        harness::require_root();
        let dir = Scratch::new("berth-engine-");
        fs::create_dir_all(dir.path().join("volumes")).unwrap();
        fs::create_dir_all(dir.path().join("targets")).unwrap();
        Self { dir }
    }

    fn pool(&self) -> PoolConfig {
        let mut pool = PoolConfig::default_root(self.dir.path());
        pool.paths = vec![self.dir.path().join("volumes")];
        pool
    }

    fn open_with(&self, pool: PoolConfig) -> Engine<LinuxHost> {
        Engine::open(
            EngineConfig {
                store_path: self.dir.path().join("berth.redb"),
                pools: vec![pool],
                node: NodeInfo::default(),
            },
            LinuxHost::new(),
        )
        .unwrap()
    }

    fn open(&self) -> Engine<LinuxHost> {
        self.open_with(self.pool())
    }

    fn target(&self, name: &str) -> PathBuf {
        self.dir.path().join("targets").join(name)
    }
}

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

fn create(e: &Engine<LinuxHost>, n: &str, size: Option<u64>) -> Volume {
    e.create(
        CALLER,
        CreateRequest {
            name: name(n),
            spec: VolumeSpec {
                size,
                ..VolumeSpec::default()
            },
            owner: Owner::default(),
        },
    )
    .unwrap()
}

fn bind(path: &Path, read_only: bool) -> PublishTarget {
    PublishTarget::Bind {
        path: path.to_path_buf(),
        read_only,
    }
}

#[test]
fn lifecycle_with_restarts_between_steps() {
    let scene = Scene::new();
    let (a, b) = (scene.target("a"), scene.target("b"));
    let v = create(&scene.open(), "db", None);
    assert_eq!(v.placement.backend, Backend::None);

    {
        let e = scene.open();
        e.publish(CALLER, &name("db"), bind(&a, false)).unwrap();
        e.publish(CALLER, &name("db"), bind(&b, true)).unwrap();
    }
    fs::write(a.join("hello"), b"written through a").unwrap();
    assert_eq!(fs::read(b.join("hello")).unwrap(), b"written through a");
    let ro = fs::write(b.join("nope"), b"x").unwrap_err();
    assert_eq!(ro.raw_os_error(), Some(libc::EROFS));

    {
        // A restart keeps both publications: their mounts are still there.
        let e = scene.open();
        assert!(e.recovery_report().dropped_publications.is_empty());
        assert_eq!(e.get(&name("db")).unwrap().publications.len(), 2);
        assert!(matches!(
            e.delete(CALLER, &name("db")),
            Err(EngineError::InUse { .. })
        ));
        e.unpublish(CALLER, &name("db"), &bind(&a, false)).unwrap();
        e.unpublish(CALLER, &name("db"), &bind(&a, false)).unwrap();
    }
    assert!(!a.exists(), "the target berth created is removed");
    assert_eq!(fs::read(b.join("hello")).unwrap(), b"written through a");

    {
        let e = scene.open();
        e.unpublish(CALLER, &name("db"), &bind(&b, true)).unwrap();
        assert_eq!(e.get(&name("db")).unwrap().state(), VolumeState::Detached);
        e.delete(CALLER, &name("db")).unwrap();
    }
    let e = scene.open();
    assert!(matches!(
        e.get(&name("db")),
        Err(EngineError::NotFound { .. })
    ));
    assert!(!v.placement.dir.exists());
    assert!(mounts_under(scene.dir.path()).is_empty());
}

#[test]
fn a_publication_whose_mount_vanished_is_dropped_at_restart() {
    let scene = Scene::new();
    let a = scene.target("a");
    {
        let e = scene.open();
        create(&e, "v", None);
        e.publish(CALLER, &name("v"), bind(&a, false)).unwrap();
    }
    nix::mount::umount2(&a, nix::mount::MntFlags::empty()).unwrap();
    let e = scene.open();
    assert_eq!(e.recovery_report().dropped_publications.len(), 1);
    assert_eq!(e.get(&name("v")).unwrap().state(), VolumeState::Detached);
    assert!(!a.exists(), "the stale target berth created is removed");
}

#[test]
fn a_mount_berth_did_not_record_is_reported() {
    let scene = Scene::new();
    let v = create(&scene.open(), "v", None);
    let stray = scene.target("stray");
    fs::create_dir_all(&stray).unwrap();
    nix::mount::mount(
        Some(&v.placement.data),
        &stray,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let e = scene.open();
    assert_eq!(e.recovery_report().stray_mounts, vec![stray.clone()]);
    nix::mount::umount2(&stray, nix::mount::MntFlags::empty()).unwrap();
}

#[test]
fn wipe_removes_links_not_their_targets() {
    let scene = Scene::new();
    let e = scene.open();
    let victim = create(&e, "victim", None);
    let other = create(&e, "other", None);
    let outside = scene.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("canary"), b"alive").unwrap();
    fs::write(other.placement.data.join("precious"), b"mine").unwrap();

    let data = &victim.placement.data;
    fs::write(data.join("file"), b"x").unwrap();
    symlink("/etc", data.join("etc")).unwrap();
    symlink(&outside, data.join("outside")).unwrap();
    symlink(outside.join("canary"), data.join("canary-link")).unwrap();
    symlink("../../other/data", data.join("other")).unwrap();
    fs::create_dir_all(data.join("deep/er")).unwrap();
    symlink("../../../other/data/precious", data.join("deep/er/p")).unwrap();

    let stats = e.wipe(CALLER, &name("victim")).unwrap();
    assert!(stats.symlinks >= 5, "{stats:?}");
    assert!(!victim.placement.dir.exists());
    assert_eq!(fs::read(outside.join("canary")).unwrap(), b"alive");
    assert_eq!(
        fs::read(other.placement.data.join("precious")).unwrap(),
        b"mine"
    );
    assert!(Path::new("/etc/hostname").exists() || Path::new("/etc/passwd").exists());
}

#[test]
fn loopfs_volumes_enforce_their_size_and_show_it_in_statvfs() {
    let scene = Scene::new();
    let e = scene.open();
    let size = 32u64 << 20;
    let v = create(&e, "small", Some(size));
    assert_eq!(v.placement.backend, Backend::Loopfs);
    let t = scene.target("t");
    e.publish(CALLER, &name("small"), bind(&t, false)).unwrap();

    let stat = nix::sys::statvfs::statvfs(&t).unwrap();
    let total = stat.blocks() * stat.fragment_size();
    assert!(
        total >= size && total <= size + (8 << 20),
        "df shows {total} for a {size}-byte volume"
    );
    let mut f = fs::File::create(t.join("fill")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk).and_then(|_| f.sync_data()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written <= total, "wrote past what df shows");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    let usage = e.usage(&name("small")).unwrap();
    assert!(usage.bytes_used >= written / 2, "{usage:?}");

    e.unpublish(CALLER, &name("small"), &bind(&t, false))
        .unwrap();
    e.delete(CALLER, &name("small")).unwrap();
    assert!(!v.placement.image.unwrap().exists());
    assert!(mounts_under(scene.dir.path()).is_empty());
}

#[test]
fn loopfs_survives_a_restart_and_a_lost_mount() {
    let scene = Scene::new();
    let v = create(&scene.open(), "v", Some(16 << 20));
    fs::write(v.placement.data.join("kept"), b"data").unwrap();
    // What a reboot does to the volume's own filesystem mount.
    nix::mount::umount2(&v.placement.dir, nix::mount::MntFlags::empty()).unwrap();
    assert!(!v.placement.data.join("kept").exists());
    let e = scene.open();
    assert_eq!(e.recovery_report().remounted, vec!["v".to_string()]);
    assert_eq!(fs::read(v.placement.data.join("kept")).unwrap(), b"data");
    e.wipe(CALLER, &name("v")).unwrap();
}

#[test]
fn retained_pools_keep_data_until_a_wipe() {
    let scene = Scene::new();
    let mut pool = scene.pool();
    pool.reclaim = ReclaimPolicy::Retain;
    pool.backend = BackendChoice::None;
    let e = scene.open_with(pool);
    let v = create(&e, "keep", Some(1 << 20));
    fs::write(v.placement.data.join("f"), b"1").unwrap();
    e.delete(CALLER, &name("keep")).unwrap();
    let retained = v
        .placement
        .base
        .join(".retained")
        .join(format!("keep-{}", v.created_at));
    assert_eq!(fs::read(retained.join("data/f")).unwrap(), b"1");
    let again = create(&e, "keep", Some(1 << 20));
    assert!(
        fs::read_dir(&again.placement.data)
            .unwrap()
            .next()
            .is_none(),
        "a new volume of the same name starts empty"
    );
}

#[test]
fn block_volumes_publish_a_device_node() {
    let scene = Scene::new();
    let e = scene.open();
    e.create(
        CALLER,
        CreateRequest {
            name: name("raw"),
            spec: VolumeSpec {
                size: Some(8 << 20),
                access: AccessType::Block,
                ..VolumeSpec::default()
            },
            owner: Owner::default(),
        },
    )
    .unwrap();
    let t = scene.target("dev");
    e.publish(CALLER, &name("raw"), bind(&t, false)).unwrap();
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::metadata(&t).unwrap().file_type().is_block_device());
        let mut dev = fs::OpenOptions::new().write(true).open(&t).unwrap();
        dev.write_all(&[1u8; 4096]).unwrap();
        dev.sync_all().unwrap();
    }
    e.unpublish(CALLER, &name("raw"), &bind(&t, false)).unwrap();
    assert!(!t.exists());
    e.delete(CALLER, &name("raw")).unwrap();
}
