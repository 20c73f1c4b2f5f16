//! Pools on real devices, as root: `mount` pools of loop-backed disks discovered under a
//! directory, `path` pools chosen by profile and constraints, capacity that is never
//! over-committed, and online growth of an XFS `loopfs` volume.

#[path = "support/harness/mod.rs"]
mod harness;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth::engine::pool::{BackendChoice, PoolConfig};
use berth::engine::types::*;
use berth::engine::{Engine, EngineConfig, EngineError, NodeInfo, PoolSelector, VolumeService};
use berth::host::Host;
use berth::host::linux::LinuxHost;
use harness::cleanup::Scratch;

const MIB: u64 = 1 << 20;
const CALLER: Caller = Caller {
    frontend: Frontend::Internal,
    wait_if_busy: true,
};

/// A temp dir whose mounts are all undone on drop, deepest first.
struct Scene {
    dir: Scratch,
}

impl Scene {
    fn new() -> Self {
        harness::require_root();
        Self {
            dir: Scratch::new("berth-pools-"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// A loop-backed ext4 disk of `mib` MiB mounted at `disks/<name>`.
    fn disk(&self, name: &str, mib: u64) -> PathBuf {
        let host = LinuxHost::new();
        let image = self.path("images").join(format!("{name}.img"));
        let mount_point = self.path("disks").join(name);
        fs::create_dir_all(&mount_point).unwrap();
        host.create_image(&image, mib * MIB, Some(FsType::Ext4))
            .unwrap();
        host.mount_image(&image, &mount_point, FsType::Ext4)
            .unwrap();
        mount_point
    }

    fn open(&self, pools: Vec<PoolConfig>) -> Engine<LinuxHost> {
        Engine::open(
            EngineConfig {
                store_path: self.dir.path().join("berth.redb"),
                pools,
                node: NodeInfo::default(),
            },
            LinuxHost::new(),
        )
        .unwrap()
    }
}

fn pool(name: &str, kind: PoolKind, paths: Vec<PathBuf>) -> PoolConfig {
    let mut p = PoolConfig::default_root(Path::new("/unused"));
    p.name = name.into();
    p.kind = kind;
    p.paths = paths;
    p
}

fn spec(size: Option<u64>) -> VolumeSpec {
    VolumeSpec {
        size,
        ..VolumeSpec::default()
    }
}

fn create(e: &Engine<LinuxHost>, n: &str, spec: VolumeSpec) -> Result<Volume, EngineError> {
    e.create(
        CALLER,
        CreateRequest {
            name: VolumeName::parse(n).unwrap(),
            spec,
            owner: Owner::default(),
        },
    )
}

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

#[test]
fn mount_pools_give_whole_disks_exclusively_and_reuse_them_only_when_wiped() {
    let scene = Scene::new();
    let small = scene.disk("ssd-1", 64);
    let large = scene.disk("ssd-2", 160);
    let hdd = scene.disk("hdd-1", 96);
    let disks = scene.dir.path().join("disks");
    let mut disks_pool = pool("disks", PoolKind::Mount, vec![disks.clone()]);
    disks_pool.reclaim = ReclaimPolicy::Retain;
    let e = scene.open(vec![disks_pool]);

    // The smallest disk that fits.
    let mut s = spec(Some(80 * MIB));
    s.kind = Some(PoolKind::Mount);
    let a = create(&e, "a", s.clone()).unwrap();
    assert_eq!(a.placement.base, hdd);
    assert_eq!(a.placement.backend, Backend::Disk);
    assert!(a.size.unwrap() >= 80 * MIB);

    // A constraint narrows the choice; maxSize excludes disks that are too large.
    let mut ssd_only = spec(Some(10 * MIB));
    ssd_only.kind = Some(PoolKind::Mount);
    ssd_only.constraints = vec![PathConstraint::new(true, ".*/ssd-.+").unwrap()];
    ssd_only.max_size = Some(100 * MIB);
    let b = create(&e, "b", ssd_only.clone()).unwrap();
    assert_eq!(b.placement.base, small);

    // Nothing left that satisfies it: the refusal says why for each disk.
    let err = create(&e, "c", ssd_only.clone()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EngineError::NoCapacity { .. }), "{text}");
    assert!(text.contains("held by volume b"), "{text}");
    assert!(text.contains("more than the maximum"), "{text}");
    assert!(text.contains("fails [\"path\",\"LIKE\""), "{text}");

    // Data written to the volume fills the disk, not more.
    let t = scene.path("targets").join("b");
    e.publish(
        CALLER,
        &name("b"),
        PublishTarget::Bind {
            path: t.clone(),
            read_only: false,
        },
    )
    .unwrap();
    fs::write(t.join("f"), b"on the disk").unwrap();
    assert_eq!(fs::read(small.join("data/f")).unwrap(), b"on the disk");
    e.unpublish(
        CALLER,
        &name("b"),
        &PublishTarget::Bind {
            path: t,
            read_only: false,
        },
    )
    .unwrap();

    // Released with retain: the data stays and the disk is not handed out again...
    e.delete(CALLER, &name("b")).unwrap();
    let err = create(&e, "c", ssd_only.clone()).unwrap_err();
    assert!(err.to_string().contains("still holds data"), "{err}");
    // ...until the retained data is wiped away.
    fs::remove_dir_all(small.join(".retained")).unwrap();
    let c = create(&e, "c", ssd_only).unwrap();
    assert_eq!(c.placement.base, small);
    assert!(fs::read_dir(&c.placement.data).unwrap().next().is_none());
    e.wipe(CALLER, &name("c")).unwrap();
    assert!(!small.join("data").exists());
    assert!(small.exists(), "the disk itself stays");

    // Whole disks do not grow.
    let err = e.expand(CALLER, &name("a"), 500 * MIB).unwrap_err();
    assert!(matches!(err, EngineError::Unsupported { .. }), "{err}");

    let cap = e.capacity(&PoolSelector::default());
    assert_eq!(cap[0].available_bytes, fs_size(&small) + fs_size(&large));
}

fn fs_size(p: &Path) -> u64 {
    LinuxHost::new().fs_stats(p).unwrap().bytes_total
}

#[test]
fn path_pools_choose_by_profile_and_constraint_and_say_why_not() {
    let scene = Scene::new();
    let ssd = scene.path("mnt/ssd-a");
    let hdd = scene.path("mnt/hdd-a");
    let mut fast = pool("fast", PoolKind::Path, vec![ssd.clone()]);
    fast.profiles = vec!["ssd".into()];
    fast.backend = BackendChoice::None;
    fast.capacity = Some(100 * MIB);
    let mut slow = pool("slow", PoolKind::Path, vec![hdd.clone()]);
    slow.backend = BackendChoice::None;
    slow.capacity = Some(1000 * MIB);
    let e = scene.open(vec![fast, slow]);

    let mut want_ssd = spec(Some(10 * MIB));
    want_ssd.profile = Some("ssd".into());
    assert_eq!(create(&e, "p1", want_ssd).unwrap().placement.base, ssd);

    // Without a profile: the base with the most room.
    assert_eq!(
        create(&e, "p2", spec(Some(MIB))).unwrap().placement.base,
        hdd
    );

    let mut like_ssd = spec(Some(MIB));
    like_ssd.constraints = vec![PathConstraint::new(true, ".*/ssd-.+").unwrap()];
    assert_eq!(create(&e, "p3", like_ssd).unwrap().placement.base, ssd);

    let mut gold = spec(Some(MIB));
    gold.profile = Some("gold".into());
    let err = create(&e, "p4", gold).unwrap_err().to_string();
    assert!(err.contains("does not carry profile \"gold\""), "{err}");

    let mut too_big = spec(Some(200 * MIB));
    too_big.profile = Some("ssd".into());
    let err = create(&e, "p5", too_big).unwrap_err().to_string();
    assert!(err.contains("left to reserve of its capacity"), "{err}");
}

#[test]
fn concurrent_creates_on_a_nearly_full_pool_never_overcommit() {
    let scene = Scene::new();
    let base = scene.path("volumes");
    let mut p = pool("tight", PoolKind::Root, vec![base]);
    p.backend = BackendChoice::None;
    p.capacity = Some(100 * MIB);
    let e = Arc::new(scene.open(vec![p]));
    create(&e, "seed", spec(Some(52 * MIB))).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || create(&e, &format!("c{i}"), spec(Some(10 * MIB))).is_ok())
        })
        .collect();
    let created = threads
        .into_iter()
        .filter_map(|t| t.join().ok())
        .filter(|ok| *ok)
        .count();
    assert_eq!(created, 4, "48 MiB left holds four 10 MiB volumes");
    let cap = &e.capacity(&PoolSelector::default())[0];
    assert_eq!(cap.reserved_bytes, 92 * MIB);
}

#[test]
fn an_xfs_loopfs_volume_grows_online_while_published() {
    let scene = Scene::new();
    let mut p = pool("xfs", PoolKind::Root, vec![scene.path("volumes")]);
    p.fs = FsType::Xfs;
    p.backend = BackendChoice::Loopfs;
    let e = scene.open(vec![p]);
    create(&e, "grow", spec(Some(300 * MIB))).unwrap();
    let t = scene.path("targets").join("g");
    e.publish(
        CALLER,
        &name("grow"),
        PublishTarget::Bind {
            path: t.clone(),
            read_only: false,
        },
    )
    .unwrap();
    let total = |p: &Path| fs_size(p);
    let before = total(&t);
    let mut f = fs::File::create(t.join("fill")).unwrap();
    let chunk = vec![1u8; MIB as usize];
    let full = loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC));
    e.expand(CALLER, &name("grow"), 400 * MIB).unwrap();
    assert!(total(&t) >= before + 90 * MIB, "df shows the new size");
    f.write_all(&chunk).unwrap();
    f.sync_data().unwrap();
    drop(f);
    e.unpublish(
        CALLER,
        &name("grow"),
        &PublishTarget::Bind {
            path: t,
            read_only: false,
        },
    )
    .unwrap();
    e.wipe(CALLER, &name("grow")).unwrap();
}

#[test]
fn btrfs_pools_enforce_sizes_with_qgroups() {
    let scene = Scene::new();
    let image = scene.path("images").join("btrfs.img");
    let fs_dir = scene.path("btrfs");
    fs::File::create(&image)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    let mkfs = std::process::Command::new("mkfs.btrfs")
        .args(["-q", "-f"])
        .arg(&image)
        .output()
        .expect("mkfs.btrfs (btrfs-progs) is installed by scripts/test.sh");
    assert!(
        mkfs.status.success(),
        "{}",
        String::from_utf8_lossy(&mkfs.stderr)
    );
    let mount = std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&fs_dir)
        .status()
        .unwrap();
    assert!(mount.success());
    let volumes = fs_dir.join("volumes");
    fs::create_dir_all(&volumes).unwrap();
    let e = scene.open(vec![pool("b", PoolKind::Root, vec![volumes])]);
    let v = create(&e, "q", spec(Some(16 * MIB))).unwrap();
    assert_eq!(v.placement.backend, Backend::Btrfs);

    let mut f = fs::File::create(v.placement.data.join("fill")).unwrap();
    let chunk = vec![3u8; MIB as usize];
    let mut written = 0u64;
    let full = loop {
        match f.write_all(&chunk).and_then(|_| f.sync_data()) {
            Ok(()) => written += MIB,
            Err(e) => break e,
        }
        assert!(
            written <= 20 * MIB,
            "wrote {written} bytes past a 16 MiB qgroup"
        );
    };
    assert_eq!(full.raw_os_error(), Some(libc::EDQUOT), "{full}");
    let usage = e.usage(&name("q")).unwrap();
    assert!(usage.bytes_used >= 8 * MIB, "{usage:?}");
    assert_eq!(usage.bytes_total, 16 * MIB);

    e.expand(CALLER, &name("q"), 48 * MIB).unwrap();
    for _ in 0..8 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_data().unwrap();
    drop(f);
    e.wipe(CALLER, &name("q")).unwrap();
    assert!(!v.placement.dir.exists(), "the subvolume is gone");
    drop(e);
    let _ = nix::mount::umount2(&fs_dir, nix::mount::MntFlags::empty());
}
