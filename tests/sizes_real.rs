//! A reservation is a promise (issue 14), on the real kernel as root: the size `df` shows
//! inside a volume, what an unsized request gets on the embedded default, and the figures
//! every front-end reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth::admin::views::VolumeView;
use berth::config::Config;
use berth::daemon::open_engine;
use std::os::unix::fs::MetadataExt;

use berth::engine::pool::{BackendChoice, EMBEDDED_DEFAULT_SIZE, PoolConfig, SizeRule};
use berth::engine::types::*;
use berth::engine::{Engine, EngineConfig, EngineError, NodeInfo, PoolSelector, VolumeService};
use berth::host::linux::LinuxHost;

#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/host.rs"]
mod support;
use support::{MIB, Scratch, fill, make_fs, mount_loop, scratch, sync_fs};

const GIB: u64 = 1 << 30;
/// The sizes the issue names.
const SIZES: [u64; 3] = [16 * MIB, 64 * MIB, GIB];

const CALLER: Caller = Caller {
    frontend: Frontend::Internal,
    wait_if_busy: true,
};

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

/// What `df` shows as the size of the filesystem holding `path`.
fn df_total(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    s.blocks() * s.fragment_size()
}

#[test]
fn an_unsized_request_on_the_embedded_default_gets_the_documented_bounded_size() {
    let scratch = scratch();
    let config = Config::parse(
        &format!("state_dir = {:?}", scratch.path().display().to_string()),
        Path::new("test.toml"),
    )
    .unwrap();
    assert!(
        config.pools.is_empty(),
        "the embedded default is under test"
    );
    let engine: Arc<dyn VolumeService> = open_engine(&config).unwrap();

    let v = engine.create(CALLER, request("implicit", None)).unwrap();
    assert_eq!(v.size, Some(EMBEDDED_DEFAULT_SIZE));
    assert_eq!(EMBEDDED_DEFAULT_SIZE, 10 << 30, "the README says 10 GiB");
    assert_ne!(v.placement.backend, Backend::None, "the size is enforced");
    assert_eq!(SizeRule::of(&v), SizeRule::PoolDefault);
    let view = serde_json::to_value(VolumeView::new(&v, None)).unwrap();
    assert_eq!(view["size_rule"], "pool_default");
    assert_eq!(view["size_bytes"], EMBEDDED_DEFAULT_SIZE);

    let sized = engine
        .create(CALLER, request("sized", Some(64 << 20)))
        .unwrap();
    let view = serde_json::to_value(VolumeView::new(&sized, None)).unwrap();
    assert_eq!(view["size_rule"], "requested");

    if v.placement.backend == Backend::Loopfs {
        // The volume's own filesystem, not the node's disk.
        let data: PathBuf = v.placement.data.clone();
        assert!(df_total(&data) < 2 * EMBEDDED_DEFAULT_SIZE);
    }
    engine.delete(CALLER, &name("implicit")).unwrap();
    engine.delete(CALLER, &name("sized")).unwrap();
}

fn engine(scratch: &Scratch, base: &Path, backend: BackendChoice, fs: FsType) -> Engine<LinuxHost> {
    std::fs::create_dir_all(base).unwrap();
    let mut pool = PoolConfig::default_root(base);
    pool.paths = vec![base.to_path_buf()];
    pool.backend = backend;
    pool.fs = fs;
    Engine::open(
        EngineConfig {
            store_path: scratch.join("berth.redb"),
            pools: vec![pool],
            node: NodeInfo::default(),
        },
        LinuxHost::new(),
    )
    .unwrap()
}

/// `df` shows at least the size, and no more than the size plus 2% or 8 MiB.
#[track_caller]
fn assert_df_rule(total: u64, size: u64) {
    let slack = (size / 50).max(8 * MIB);
    assert!(
        total >= size && total <= size + slack,
        "df shows {total} bytes for {size} asked (allowed up to {})",
        size + slack
    );
}

/// Writing past the size (what `df` shows, within the rule above) stops with ENOSPC or
/// EDQUOT.
#[track_caller]
fn assert_write_past_fails(data: &Path, size: u64) {
    let (written, error) = fill(&data.join("fill"), size + 64 * MIB);
    let error = error.unwrap_or_else(|| panic!("{written} bytes written into {size}"));
    assert!(
        matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
        "{error}"
    );
    assert!(
        written <= df_total(data),
        "{written} bytes written into {size}"
    );
    std::fs::remove_file(data.join("fill")).unwrap();
}

/// Every block of the image is allocated: nothing else filling the host disk can take it.
#[track_caller]
fn assert_allocated(image: &Path) {
    let meta = std::fs::metadata(image).unwrap();
    assert!(
        meta.blocks() * 512 >= meta.size(),
        "{}: {} of {} bytes allocated",
        image.display(),
        meta.blocks() * 512,
        meta.size()
    );
}

/// `fstrim` inside the volume (as the host's weekly `fstrim.timer` does to every mounted
/// filesystem) after data came and went: the loop device refuses the discards, which it
/// would otherwise turn into holes punched in the image.
#[track_caller]
fn assert_trim_keeps_allocation(data: &Path, image: Option<&Path>) {
    let (_, error) = fill(&data.join("churn"), 32 * MIB);
    assert!(error.is_none(), "{error:?}");
    std::fs::remove_file(data.join("churn")).unwrap();
    let out = std::process::Command::new("fstrim")
        .arg("-v")
        .arg(data)
        .output()
        .expect("fstrim (util-linux) runs; scripts/test-deps.sh installs it");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("not supported"),
        "fstrim {}: {} {text} {}",
        data.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_allocated(image.unwrap());
}

fn loopfs_volumes_show_their_size(fs: FsType, sizes: &[u64]) {
    let scratch = scratch();
    let e = engine(&scratch, &scratch.join("pool"), BackendChoice::Loopfs, fs);
    for (i, &size) in sizes.iter().enumerate() {
        let n = format!("v{i}");
        let v = e.create(CALLER, request(&n, Some(size))).unwrap();
        let total = df_total(&v.placement.data);
        assert_df_rule(total, size);
        eprintln!("{} {size} bytes asked: df shows {total}", fs.as_str());
        assert_eq!(
            e.usage(&name(&n)).unwrap().bytes_total,
            total,
            "reported total"
        );
        // (after ext4's lazy inode-table init would have started: it must not punch holes)
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert_allocated(v.placement.image.as_deref().unwrap());
        assert_write_past_fails(&v.placement.data, size);
        let grown = e.expand(CALLER, &name(&n), size + 64 * MIB).unwrap();
        let total = df_total(&grown.placement.data);
        assert_df_rule(total, size + 64 * MIB);
        assert_allocated(v.placement.image.as_deref().unwrap());
        assert_trim_keeps_allocation(&grown.placement.data, grown.placement.image.as_deref());
        e.delete(CALLER, &name(&n)).unwrap();
    }
}

#[test]
fn loopfs_ext4_volumes_show_at_least_their_size_and_stop_there() {
    loopfs_volumes_show_their_size(FsType::Ext4, &SIZES);
}

#[test]
fn loopfs_xfs_volumes_show_at_least_their_size_and_small_ones_are_refused_clearly() {
    loopfs_volumes_show_their_size(FsType::Xfs, &[300 * MIB, GIB]);
    let scratch = scratch();
    let e = engine(
        &scratch,
        &scratch.join("pool"),
        BackendChoice::Loopfs,
        FsType::Xfs,
    );
    for size in [16 * MIB, 64 * MIB] {
        let err = e.create(CALLER, request("small", Some(size))).unwrap_err();
        assert!(matches!(err, EngineError::Input(_)), "{err}");
        assert!(err.to_string().contains("xfs starts at 300MiB"), "{err}");
        assert!(e.list(&VolumeFilter::default()).is_empty());
    }
}

/// btrfs: the qgroup limit stops writes with EDQUOT, but `df` in the subvolume shows the
/// whole btrfs filesystem (statfs knows nothing of qgroups); berth reports the limit.
#[test]
fn btrfs_volumes_report_their_limit_and_stop_there() {
    let scratch = scratch();
    let image = scratch.join("btrfs.img");
    make_fs(&image, 3 * GIB, "mkfs.btrfs", &["-q", "-f"]);
    let mnt = scratch.join("btrfs");
    mount_loop(&image, &mnt, "");
    let e = engine(&scratch, &mnt, BackendChoice::Btrfs, FsType::Ext4);
    for (i, &size) in SIZES.iter().enumerate() {
        let n = format!("b{i}");
        let v = e.create(CALLER, request(&n, Some(size))).unwrap();
        assert_eq!(v.placement.backend, Backend::Btrfs);
        assert_eq!(e.usage(&name(&n)).unwrap().bytes_total, size);
        assert_eq!(
            df_total(&v.placement.data),
            df_total(&mnt),
            "df: the filesystem"
        );
        let (written, error) = fill(&v.placement.data.join("fill"), size + 64 * MIB);
        sync_fs(&v.placement.data);
        let error = error.unwrap_or_else(|| panic!("{written} bytes written into {size}"));
        assert_eq!(error.raw_os_error(), Some(libc::EDQUOT), "{error}");
        e.delete(CALLER, &name(&n)).unwrap();
    }
}

/// none: the size is a reservation only; `df` shows the pool's filesystem and berth reports
/// the reservation.
#[test]
fn plain_directories_report_their_reservation_and_df_shows_the_pool() {
    let scratch = scratch();
    let pool = scratch.join("pool");
    let e = engine(&scratch, &pool, BackendChoice::None, FsType::Ext4);
    for (i, &size) in SIZES.iter().enumerate() {
        let n = format!("n{i}");
        let v = e.create(CALLER, request(&n, Some(size))).unwrap();
        assert_eq!(v.placement.backend, Backend::None);
        assert_eq!(e.usage(&name(&n)).unwrap().bytes_total, size);
        assert_eq!(df_total(&v.placement.data), df_total(&pool));
        e.delete(CALLER, &name(&n)).unwrap();
    }
}

/// The pool's filesystem filled by something else: the available figure follows the real
/// free space, a create between the two figures is refused naming both, and a loopfs volume
/// made before the fill can still be written to its full size (its image was allocated).
#[test]
fn capacity_follows_the_free_space_and_a_loopfs_reservation_holds_when_the_disk_fills() {
    let scratch = scratch();
    let image = scratch.join("poolfs.img");
    make_fs(&image, 512 * MIB, "mkfs.ext4", &["-q", "-F", "-m", "0"]);
    let poolfs = scratch.join("poolfs");
    mount_loop(&image, &poolfs, "");
    let e = engine(&scratch, &poolfs, BackendChoice::Loopfs, FsType::Ext4);
    let early = e.create(CALLER, request("early", Some(64 * MIB))).unwrap();
    let available = |e: &Engine<LinuxHost>| e.capacity(&PoolSelector::default())[0].available_bytes;
    let before = available(&e);

    let free = nix::sys::statvfs::statvfs(&poolfs).unwrap();
    let free = free.blocks_available() * free.fragment_size();
    let (_, error) = fill(&poolfs.join("not-berth"), free - 100 * MIB);
    assert!(error.is_none(), "{error:?}");
    let after = available(&e);
    let stats = nix::sys::statvfs::statvfs(&poolfs).unwrap();
    let really_free = stats.blocks_available() * stats.fragment_size();
    eprintln!("available: {before} before the fill, {after} after; {really_free} free");
    assert_eq!(after, really_free, "loopfs images are already allocated");
    assert!(after < before - 300 * MIB, "{before} -> {after}");

    let err = e
        .create(CALLER, request("between", Some(200 * MIB)))
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EngineError::NoCapacity { .. }), "{text}");
    assert!(text.contains("left to reserve of its capacity"), "{text}");
    assert!(text.contains("its filesystem can still hold"), "{text}");
    assert_eq!(e.list(&VolumeFilter::default()).len(), 1, "nothing made");

    let (written, error) = fill(&early.placement.data.join("mine"), 64 * MIB);
    assert!(
        error.is_none(),
        "the early volume took {written} bytes, then {error:?}"
    );
    e.delete(CALLER, &name("early")).unwrap();
}

/// A wipe reports the user's data, measured inside the loopfs filesystem before it goes,
/// and the image's reclaimed size apart.
#[test]
fn a_loopfs_wipe_reports_the_data_and_the_image_apart() {
    let scratch = scratch();
    let e = engine(
        &scratch,
        &scratch.join("pool"),
        BackendChoice::Loopfs,
        FsType::Ext4,
    );
    let v = e.create(CALLER, request("w", Some(64 * MIB))).unwrap();
    let data = &v.placement.data;
    for d in 0..3 {
        let dir = data.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..3 {
            std::fs::write(dir.join(format!("f{f}")), vec![1u8; 4096]).unwrap();
        }
    }
    std::fs::write(data.join("top"), vec![2u8; 1 << 20]).unwrap();
    let image_size = std::fs::metadata(v.placement.image.as_deref().unwrap())
        .unwrap()
        .len();
    let stats = e.wipe(CALLER, &name("w")).unwrap();
    assert_eq!(stats.files, 10, "{stats:?}");
    assert_eq!(stats.dirs, 3 + 1, "the three and the data root: {stats:?}");
    assert!(
        stats.bytes >= 9 * 4096 + (1 << 20) && stats.bytes < 2 << 20,
        "{stats:?}"
    );
    // Allocated: its blocks (and their extent tree) at least its length, not much more.
    assert!(
        stats.image_bytes >= image_size && stats.image_bytes < image_size + MIB,
        "{stats:?}, image of {image_size} bytes"
    );
}

/// A grow cut short by a crash between its resize and its allocation leaves holes in the
/// image (made here with a hole punched in the image's free tail while mounted): the next
/// daemon start fills them, the volume still mounted and its data untouched.
#[test]
fn a_daemon_start_fills_holes_left_in_a_mounted_image() {
    let scratch = scratch();
    let pool = scratch.join("pool");
    for fs in [FsType::Ext4, FsType::Xfs] {
        let e = engine(&scratch, &pool, BackendChoice::Loopfs, fs);
        let n = format!("holes-{}", fs.as_str());
        let v = e.create(CALLER, request(&n, Some(320 * MIB))).unwrap();
        std::fs::write(v.placement.data.join("kept"), b"mine").unwrap();
        sync_fs(&v.placement.data);
        let image = v.placement.image.clone().unwrap();
        let len = std::fs::metadata(&image).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        let hole = 4 * MIB;
        nix::fcntl::fallocate(
            &file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            i64::try_from(len - 2 * hole).unwrap(),
            i64::try_from(hole).unwrap(),
        )
        .unwrap();
        drop(file);
        let meta = std::fs::metadata(&image).unwrap();
        assert!(meta.blocks() * 512 < len, "the hole is there to be filled");
        drop(e);

        let e = engine(&scratch, &pool, BackendChoice::Loopfs, fs);
        assert_allocated(&image);
        assert_eq!(
            std::fs::read(v.placement.data.join("kept")).unwrap(),
            b"mine"
        );
        e.delete(CALLER, &name(&n)).unwrap();
    }
}
