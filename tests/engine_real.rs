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
fn references_from_an_earlier_boot_are_dropped_at_start() {
    let scene = Scene::new();
    let holder = PublishTarget::Reference {
        holder: "docker:c1".into(),
    };
    let this_boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    {
        let e = scene.open();
        create(&e, "v", None);
        let v = e.publish(CALLER, &name("v"), holder.clone()).unwrap();
        assert_eq!(v.publications[0].boot_id.as_deref(), Some(this_boot.trim()));
    }
    {
        // A restart in the same boot keeps it: the container may still run.
        let e = scene.open();
        assert!(e.recovery_report().dropped_publications.is_empty());
        assert_eq!(e.get(&name("v")).unwrap().state(), VolumeState::Attached);
    }
    // The kernel's boot id cannot be changed without a reboot: make the stored reference
    // belong to another boot instead, as a record written before a reboot would.
    {
        let store = berth::store::Store::open(&scene.dir.path().join("berth.redb")).unwrap();
        let mut v: Volume = store
            .load_all::<Volume>()
            .unwrap()
            .into_iter()
            .find(|v| v.name == name("v"))
            .unwrap();
        v.publications[0].boot_id = Some("00000000-0000-0000-0000-000000000000".into());
        store.put("v", &v).unwrap();
    }
    let e = scene.open();
    assert_eq!(
        e.recovery_report().dropped_publications,
        vec![("v".to_string(), holder.to_string())]
    );
    let v = e.get(&name("v")).unwrap();
    assert!(v.publications.is_empty());
    assert_eq!(v.state(), VolumeState::Detached);
    e.delete(CALLER, &name("v")).unwrap();
}

#[test]
fn a_pool_path_swapped_for_a_symlink_after_create_is_refused_at_publish() {
    let scene = Scene::new();
    let a = scene.target("a");
    let e = scene.open();
    let v = create(&e, "v", None);
    let pool = scene.dir.path().join("volumes");
    let real = scene.dir.path().join("volumes.real");
    let decoy = scene.dir.path().join("decoy");
    fs::create_dir_all(decoy.join("v/data")).unwrap();
    fs::rename(&pool, &real).unwrap();
    symlink(&decoy, &pool).unwrap();

    let err = e.publish(CALLER, &name("v"), bind(&a, false)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("{} is a symbolic link", pool.display())),
        "{message}"
    );
    assert!(
        mounts_under(scene.dir.path()).is_empty(),
        "nothing was mounted"
    );
    assert!(!a.exists(), "the target berth made is gone again");
    assert!(e.get(&name("v")).unwrap().publications.is_empty());

    fs::remove_file(&pool).unwrap();
    fs::rename(&real, &pool).unwrap();
    e.publish(CALLER, &name("v"), bind(&a, false)).unwrap();
    fs::write(a.join("x"), b"x").unwrap();
    assert!(v.placement.data.join("x").exists());
    assert!(!decoy.join("v/data/x").exists());
    e.unpublish(CALLER, &name("v"), &bind(&a, false)).unwrap();
}

/// Runs `program` and returns its standard output; a missing program fails the test naming
/// the package to install.
fn run(program: &str, package: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs ({e}): install {package}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_loopfs_volume_whose_filesystem_recorded_errors_is_abnormal() {
    use berth::engine::VolumeHealth;
    use std::ffi::OsStr;
    use std::io::{Seek, SeekFrom};
    let scene = Scene::new();
    let e = scene.open();
    let neighbour = create(&e, "neighbour", Some(32 << 20));
    fs::write(neighbour.placement.data.join("keep"), b"neighbour's").unwrap();
    let v = create(&e, "hurt", Some(32 << 20));
    assert_eq!(v.placement.backend, Backend::Loopfs);
    // Beside the directory to be damaged: a file the wipe can still read and count.
    fs::write(v.placement.data.join("readable"), b"12345").unwrap();
    assert_eq!(e.health(&v), VolumeHealth::Normal);
    // A directory with a block of its own, on disk.
    let dir = v.placement.data.join("d");
    fs::create_dir(&dir).unwrap();
    for i in 0..8 {
        fs::write(dir.join(format!("file-{i}")), b"x").unwrap();
    }
    run("sync", "coreutils", &[]);
    let image = v.placement.image.clone().unwrap();
    let blocks = run(
        "debugfs",
        "e2fsprogs",
        &[
            OsStr::new("-R"),
            OsStr::new("blocks /data/d"),
            image.as_os_str(),
        ],
    );
    let block: u64 = blocks
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("debugfs blocks: {blocks:?}"));
    let header = run(
        "dumpe2fs",
        "e2fsprogs",
        &[OsStr::new("-h"), image.as_os_str()],
    );
    let block_size: u64 = header
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| panic!("dumpe2fs -h: {header}"));
    let device = fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .find(|entry| {
            fs::read_to_string(entry.path().join("loop/backing_file"))
                .is_ok_and(|b| std::path::Path::new(b.trim()) == image)
        })
        .map(|entry| PathBuf::from("/dev").join(entry.file_name()))
        .expect("the volume's loop device");
    // Damage that block on the device, then drop the device's cached buffers so the
    // filesystem reads it again, and list the directory: ext4 finds a bad checksum and
    // records an error.
    {
        let mut disk = fs::OpenOptions::new().write(true).open(&device).unwrap();
        disk.seek(SeekFrom::Start(block * block_size)).unwrap();
        disk.write_all(&vec![0xa5; block_size as usize]).unwrap();
        disk.sync_all().unwrap();
    }
    run(
        "blockdev",
        "util-linux",
        &[OsStr::new("--flushbufs"), device.as_os_str()],
    );
    // (ext4 skips or refuses a directory block that fails its checks: the files vanish from the
    // listing, or the listing fails.)
    let listed = fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert!(
        listed < 8,
        "the damaged directory still lists its {listed} files"
    );
    // ext4 writes its error count to the superblock from a worker: wait for it briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let health = loop {
        let health = e.health(&v);
        if health != VolumeHealth::Normal || std::time::Instant::now() > deadline {
            break health;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    match &health {
        VolumeHealth::Abnormal(message) => {
            assert!(message.contains("recorded"), "{message}");
            assert!(message.contains(&device.display().to_string()), "{message}");
        }
        other => panic!("expected abnormal, got {other:?}"),
    }

    // The operator wipes it: the walk that counts the data cannot remove the damaged
    // directory; it counts the rest, and the wipe goes on and says its count is partial.
    let removed = e.wipe(CALLER, &name("hurt")).unwrap();
    let why = removed
        .incomplete
        .as_deref()
        .expect("the count is marked partial");
    assert!(why.contains("could not all be read"), "{why}");
    assert!(removed.files >= 1 && removed.bytes >= 5, "{removed:?}");
    assert!(removed.image_bytes >= 32 << 20, "{removed:?}");
    assert!(e.get(&name("hurt")).is_err(), "the record is gone");
    assert!(!image.exists(), "the image is removed");
    assert!(!v.placement.dir.exists(), "the volume directory is removed");
    assert!(
        !mounts_under(scene.dir.path()).contains(&v.placement.dir),
        "its filesystem is unmounted"
    );
    // The loop device is released when its filesystem is unmounted (autoclear), which the
    // kernel may finish just after umount returns.
    let backing = |dev: &Path| {
        let name = dev.file_name().unwrap();
        fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file"))
            .map(|b| b.trim().to_string())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&backing(&device)).starts_with(scene.dir.path())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !Path::new(&backing(&device)).starts_with(scene.dir.path()),
        "{} still holds {}",
        device.display(),
        backing(&device)
    );
    // Nothing of the other volume was touched.
    assert_eq!(
        fs::read(neighbour.placement.data.join("keep")).unwrap(),
        b"neighbour's"
    );
    assert!(neighbour.placement.image.as_ref().unwrap().exists());
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
