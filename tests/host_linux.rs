//! Integration tests of `LinuxHost` against the real kernel. They need root (mounts, loop
//! devices) and `mkfs.ext4`/`mkfs.xfs`/`resize2fs`/`xfs_growfs`; without root they are
//! skipped with a message. Each test works in its own directory under /tmp, and a guard
//! unmounts everything beneath it and detaches loop devices backed by files in it, also when
//! the test fails.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::engine::types::{FsType, Ownership};
use berth::host::linux::LinuxHost;
use berth::host::{FsKind, Host, HostError, TargetKind};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/host.rs"]
mod support;

use support::*;

/// CPU time (user + system) this thread has used: what a walk costs, whatever else the
/// machine is busy with.
fn thread_cpu() -> Duration {
    // SAFETY: (test) all-zero bytes are a valid `rusage` (integers only).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: (test) `usage` is a valid, writable `rusage` for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(rc, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[test]
fn bind_mount_rw_two_targets_then_unmount() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let data = s.join("data");
    host.make_dir(&data, &Ownership::default()).unwrap();
    let (a, b) = (s.join("a"), s.join("b"));
    assert!(host.prepare_target(&a, TargetKind::Directory).unwrap());
    assert!(host.prepare_target(&b, TargetKind::Directory).unwrap());
    assert!(!host.prepare_target(&a, TargetKind::Directory).unwrap());
    assert_eq!(
        fs::metadata(&a).unwrap().permissions().mode() & 0o7777,
        0o750
    );

    host.bind_mount(Path::new("/"), &data, &a, false).unwrap();
    host.bind_mount(Path::new("/"), &data, &b, false).unwrap();
    let before = host.mounts().unwrap().len();
    host.bind_mount(Path::new("/"), &data, &a, false).unwrap(); // idempotent: no second mount
    assert_eq!(host.mounts().unwrap().len(), before);

    fs::write(a.join("hello"), b"through a").unwrap();
    assert_eq!(fs::read(b.join("hello")).unwrap(), b"through a");
    assert_eq!(fs::read(data.join("hello")).unwrap(), b"through a");
    let entry = mount_of(&a).expect("a is mounted");
    assert!(!entry.is_read_only());

    // Still mounted: a target is never removed with its mount.
    assert!(host.remove_target(&a, TargetKind::Directory).is_err());

    for t in [&a, &b] {
        host.unmount(t).unwrap();
        host.unmount(t).unwrap(); // not mounted: fine
        assert!(mount_of(t).is_none());
        host.remove_target(t, TargetKind::Directory).unwrap();
        host.remove_target(t, TargetKind::Directory).unwrap(); // missing: fine
        assert!(!t.exists());
    }
    host.unmount(&s.join("never-existed")).unwrap();
    assert!(data.join("hello").exists());
}

#[test]
fn bind_mount_read_only() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let data = s.join("data");
    host.make_dir(&data, &Ownership::default()).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    let ro = s.join("ro");
    host.prepare_target(&ro, TargetKind::Directory).unwrap();
    host.bind_mount(Path::new("/"), &data, &ro, true).unwrap();

    let err = fs::write(ro.join("new"), b"no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(fs::read(ro.join("f")).unwrap(), b"x");
    let entry = mount_of(&ro).expect("mounted");
    assert!(entry.is_read_only(), "{entry:?}");
    // Exactly one mount at the target (the read-only remount did not stack another).
    let count = host
        .mounts()
        .unwrap()
        .iter()
        .filter(|m| m.mount_point == ro)
        .count();
    assert_eq!(count, 1);
    // The source stays writable.
    fs::write(data.join("g"), b"y").unwrap();

    // Asking again with another mode remounts in place.
    host.bind_mount(Path::new("/"), &data, &ro, false).unwrap();
    assert!(!mount_of(&ro).unwrap().is_read_only());
    fs::write(ro.join("now-rw"), b"ok").unwrap();
    host.bind_mount(Path::new("/"), &data, &ro, true).unwrap();
    assert!(mount_of(&ro).unwrap().is_read_only());
    let count = host
        .mounts()
        .unwrap()
        .iter()
        .filter(|m| m.mount_point == ro)
        .count();
    assert_eq!(count, 1);

    host.unmount(&ro).unwrap();
    host.remove_target(&ro, TargetKind::Directory).unwrap();
}

#[test]
fn bind_mount_refuses_symlinks() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let data = s.join("data");
    host.make_dir(&data, &Ownership::default()).unwrap();
    let elsewhere = s.join("elsewhere");
    host.make_dir(&elsewhere, &Ownership::default()).unwrap();
    let to_dir = s.join("to-dir");
    std::os::unix::fs::symlink(&elsewhere, &to_dir).unwrap();
    let to_root = s.join("to-root");
    std::os::unix::fs::symlink("/", &to_root).unwrap();

    let before = host.mounts().unwrap();
    let err = host
        .bind_mount(Path::new("/"), &data, &to_dir, false)
        .unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    let err = host
        .bind_mount(Path::new("/"), &data, &to_dir, true)
        .unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    let err = host
        .bind_mount(Path::new("/"), &data, &to_root, false)
        .unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    // A symlinked source is refused too.
    let src_link = s.join("src-link");
    std::os::unix::fs::symlink(&data, &src_link).unwrap();
    let target = s.join("target");
    host.prepare_target(&target, TargetKind::Directory).unwrap();
    let err = host
        .bind_mount(Path::new("/"), &src_link, &target, false)
        .unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");

    let after = host.mounts().unwrap();
    let at = |mounts: &[berth::host::MountEntry], p: &Path| {
        mounts.iter().filter(|m| m.mount_point == p).count()
    };
    for p in [Path::new("/"), elsewhere.as_path(), target.as_path()] {
        assert_eq!(at(&before, p), at(&after, p), "mounts at {}", p.display());
    }
    assert!(mounts_under(s.path()).is_empty());

    // prepare_target and remove_target refuse a symlink as well, and unmount of a link is a
    // no-op.
    let err = host
        .prepare_target(&to_dir, TargetKind::Directory)
        .unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    let err = host
        .remove_target(&to_dir, TargetKind::Directory)
        .unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    host.unmount(&to_root).unwrap();
    assert!(to_root.symlink_metadata().unwrap().file_type().is_symlink());
}

#[test]
fn bind_source_is_opened_beneath_its_root_without_links() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let pool = s.join("pool");
    host.make_dir(&pool, &Ownership::default()).unwrap();
    host.make_dir(&pool.join("v"), &Ownership::default())
        .unwrap();
    host.make_dir(&pool.join("v/data"), &Ownership::default())
        .unwrap();
    let target = s.join("target");
    host.prepare_target(&target, TargetKind::Directory).unwrap();

    // The pool root swapped for a link to a look-alike tree: refused, naming the root.
    let real = s.join("pool.real");
    std::fs::rename(&pool, &real).unwrap();
    let decoy = s.join("decoy");
    std::fs::create_dir_all(decoy.join("v/data")).unwrap();
    std::os::unix::fs::symlink(&decoy, &pool).unwrap();
    let err = host
        .bind_mount(&pool, &pool.join("v/data"), &target, false)
        .unwrap_err();
    assert!(
        matches!(&err, HostError::Symlink { path } if *path == pool),
        "{err}"
    );
    std::fs::remove_file(&pool).unwrap();
    std::fs::rename(&real, &pool).unwrap();

    // A link between the root and the source: refused, naming the link.
    let v = pool.join("v");
    std::fs::rename(&v, pool.join("v.real")).unwrap();
    std::os::unix::fs::symlink(decoy.join("v"), &v).unwrap();
    let err = host
        .bind_mount(&pool, &v.join("data"), &target, false)
        .unwrap_err();
    assert!(
        matches!(&err, HostError::Symlink { path } if *path == v),
        "{err}"
    );
    // A source outside the root is refused.
    let err = host
        .bind_mount(&pool, &decoy.join("v/data"), &target, false)
        .unwrap_err();
    assert!(matches!(err, HostError::OutsideRoot { .. }), "{err}");
    assert!(mounts_under(s.path()).is_empty(), "nothing was mounted");

    // The real tree binds.
    std::fs::remove_file(&v).unwrap();
    std::fs::rename(pool.join("v.real"), &v).unwrap();
    host.bind_mount(&pool, &v.join("data"), &target, false)
        .unwrap();
    std::fs::write(target.join("x"), b"x").unwrap();
    assert!(v.join("data/x").exists());
    assert!(!decoy.join("v/data/x").exists());
    host.unmount(&target).unwrap();
}

#[test]
fn remove_tree_big_tree_with_symlinks_out() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let root = s.join("root");
    let vol = root.join("vol");
    let other = s.join("root/other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("keep.txt"), b"keep").unwrap();
    for d in 0..100 {
        let dir = vol.join(format!("d{d:03}/nested"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:03}")), b"0123456789").unwrap();
        }
    }
    std::os::unix::fs::symlink("/etc", vol.join("data")).unwrap();
    std::os::unix::fs::symlink("../other", vol.join("up")).unwrap();
    let etc_before = fs::read_dir("/etc").unwrap().count();

    let start = Instant::now();
    let cpu = thread_cpu();
    let stats = host.remove_tree(&root, &vol).unwrap();
    let took = thread_cpu() - cpu;
    eprintln!(
        "remove_tree of 10,000 files took {:?} ({took:?} CPU): {stats:?}",
        start.elapsed()
    );
    assert_eq!(stats.files, 10_000);
    assert_eq!(stats.symlinks, 2);
    assert_eq!(stats.dirs, 201);
    assert_eq!(stats.bytes, 100_000);
    // CPU time, not wall time: a loaded test machine must not make this flaky.
    assert!(took < Duration::from_secs(1), "too slow: {took:?} CPU");
    assert!(!vol.exists());
    assert_eq!(fs::read(other.join("keep.txt")).unwrap(), b"keep");
    assert_eq!(fs::read_dir("/etc").unwrap().count(), etc_before);

    // Missing: success, nothing done.
    assert_eq!(host.remove_tree(&root, &vol).unwrap(), Default::default());
    assert_eq!(
        host.remove_tree(&root, &root.join("a/b/c")).unwrap(),
        Default::default()
    );
}

#[test]
fn remove_tree_refuses_outside_root_and_symlinked_paths() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let root = s.join("root");
    let real = root.join("real");
    fs::create_dir_all(real.join("sub")).unwrap();
    fs::write(real.join("sub/file"), b"x").unwrap();
    let outside = s.join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("file"), b"x").unwrap();

    for path in [
        outside.clone(),
        root.clone(),
        root.join("../outside"),
        root.join("real/../../outside"),
        PathBuf::from("/etc"),
    ] {
        let err = host.remove_tree(&root, &path).unwrap_err();
        assert!(
            matches!(err, HostError::OutsideRoot { .. }),
            "{}: {err}",
            path.display()
        );
    }
    std::os::unix::fs::symlink(&real, root.join("link")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out-link")).unwrap();
    for path in [
        root.join("link/sub"),
        root.join("link"),
        root.join("out-link"),
    ] {
        let err = host.remove_tree(&root, &path).unwrap_err();
        assert!(
            matches!(err, HostError::Symlink { .. }),
            "{}: {err}",
            path.display()
        );
    }
    assert!(real.join("sub/file").exists());
    assert!(outside.join("file").exists());
}

#[test]
fn remove_tree_goes_past_an_entry_it_cannot_remove_and_counts_the_rest() {
    harness::require_root(); // an immutable file needs CAP_LINUX_IMMUTABLE
    let s = scratch();
    let host = LinuxHost::new();
    let root = s.join("root");
    let vol = root.join("vol");
    for d in ["a", "b", "c"] {
        fs::create_dir_all(vol.join(d)).unwrap();
        fs::write(vol.join(d).join("f"), b"1234").unwrap();
    }
    // Stands for an entry a damaged filesystem will not let go of, wherever the walk
    // meets it among its siblings.
    let stuck = vol.join("b/f");
    chattr("+i", &stuck);
    let mut removed = berth::host::RemovalStats::default();
    let result = host.remove_tree_counting(&root, &vol, &mut removed);
    chattr("-i", &stuck);
    let err = result.unwrap_err();
    assert_eq!(err.errno(), Some(libc::EPERM), "{err}");
    assert!(err.to_string().contains("b/f"), "{err}");
    assert_eq!(
        (removed.files, removed.dirs, removed.bytes),
        (2, 2, 8),
        "a/f, c/f, a and c went: {removed:?}"
    );
    assert!(!vol.join("a").exists() && !vol.join("c").exists());
    assert!(stuck.exists());
    // Once it can go, a retry finishes the job.
    let rest = host.remove_tree(&root, &vol).unwrap();
    assert_eq!((rest.files, rest.dirs), (1, 2), "{rest:?}");
    assert!(!vol.exists());
}

#[test]
fn remove_tree_does_not_cross_mounts() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let root = s.join("root");
    let vol = root.join("vol");
    fs::create_dir_all(vol.join("a/deeper")).unwrap();
    fs::write(vol.join("a/deeper/gone"), b"x").unwrap();
    let source = s.join("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("survivor"), b"still here").unwrap();
    let mnt = vol.join("a/mnt");
    fs::create_dir_all(&mnt).unwrap();
    host.bind_mount(Path::new("/"), &source, &mnt, false)
        .unwrap();
    // A file bind-mounted onto a file inside the tree.
    fs::write(s.join("file-src"), b"file source").unwrap();
    fs::write(vol.join("file-target"), b"").unwrap();
    host.bind_mount(
        Path::new("/"),
        &s.join("file-src"),
        &vol.join("file-target"),
        false,
    )
    .unwrap();

    let err = host.remove_tree(&root, &vol).unwrap_err();
    match &err {
        HostError::CrossesMount { path } => {
            assert!(path == &mnt || path == &vol.join("file-target"), "{err}")
        }
        other => panic!("expected CrossesMount, got {other}"),
    }
    assert_eq!(
        fs::read(source.join("survivor")).unwrap(),
        b"still here",
        "the mount was entered"
    );
    assert_eq!(fs::read(s.join("file-src")).unwrap(), b"file source");
    assert!(!vol.join("a/deeper").exists(), "the rest was removed");
    assert!(mnt.exists());

    // The path itself being a mount point: nothing is removed.
    let err = host.remove_tree(&root, &mnt).unwrap_err();
    assert!(matches!(err, HostError::CrossesMount { .. }), "{err}");
    assert!(source.join("survivor").exists());

    host.unmount(&mnt).unwrap();
    host.unmount(&vol.join("file-target")).unwrap();
    let stats = host.remove_tree(&root, &vol).unwrap();
    assert_eq!(stats.dirs, 3); // vol, a, mnt
    assert_eq!(stats.files, 1);
    assert!(!vol.exists());
    assert!(source.join("survivor").exists());
}

#[test]
fn remove_tree_10000_deep() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let root = s.join("root");
    let vol = root.join("vol");
    fs::create_dir_all(&vol).unwrap();
    // Build it fd by fd: the full path is far beyond PATH_MAX.
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = nix::fcntl::open(&vol, flags, Mode::empty()).unwrap();
    for _ in 0..10_000 {
        nix::sys::stat::mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).unwrap();
        let next = nix::fcntl::openat(&fd, "d", flags, Mode::empty()).unwrap();
        let file = nix::fcntl::openat(
            &fd,
            "f",
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        drop(file);
        fd = next;
    }
    drop(fd);

    let start = Instant::now();
    let usage = host.tree_usage(&vol).unwrap();
    eprintln!("tree_usage 10,000 deep took {:?}", start.elapsed());
    assert_eq!(usage.inodes, 20_001);
    let copy = root.join("copy");
    fs::create_dir(&copy).unwrap();
    let start = Instant::now();
    host.copy_tree(&vol, &copy).unwrap();
    eprintln!("copy_tree 10,000 deep took {:?}", start.elapsed());
    assert_eq!(host.tree_usage(&copy).unwrap().inodes, 20_001);
    let copied = host.remove_tree(&root, &copy).unwrap();
    assert_eq!(copied.dirs, 10_001);

    let start = Instant::now();
    let cpu = thread_cpu();
    let stats = host.remove_tree(&root, &vol).unwrap();
    let took = thread_cpu() - cpu;
    eprintln!(
        "remove_tree 10,000 deep took {:?} ({took:?} CPU)",
        start.elapsed()
    );
    assert!(took < Duration::from_secs(2), "too slow: {took:?} CPU");
    assert_eq!(stats.dirs, 10_001);
    assert_eq!(stats.files, 10_000);
    assert!(!vol.exists());
}

fn image_lifecycle(fs_type: FsType, size: u64, fits: u64, grown: u64, more: u64) {
    let s = scratch();
    let host = LinuxHost::new();
    let image = s.join("vol.img");
    let mnt = s.join("mnt");
    host.prepare_target(&mnt, TargetKind::Directory).unwrap();

    let start = Instant::now();
    host.create_image(&image, size, Some(fs_type)).unwrap();
    let made = start.elapsed();
    host.mount_image(&image, &mnt, fs_type).unwrap();
    eprintln!(
        "{}: create_image {:?}, + mount_image {:?}",
        fs_type.as_str(),
        made,
        start.elapsed()
    );
    // The image carries the filesystem's metadata beside `size`, every block allocated.
    let meta = fs::metadata(&image).unwrap();
    assert!(meta.len() >= size, "{}", meta.len());
    assert!(meta.blocks() * 512 >= meta.len(), "image is allocated");
    // Mounting again is a no-op.
    host.mount_image(&image, &mnt, fs_type).unwrap();
    let entry = mount_of(&mnt).expect("mounted");
    assert_eq!(entry.fs_type, fs_type.as_str());
    assert_eq!(
        host.mounts()
            .unwrap()
            .iter()
            .filter(|m| m.mount_point == mnt)
            .count(),
        1
    );
    let loops = backed_loops(&host, &image);
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(entry.source, loops[0].to_string_lossy());
    let loop_name = loops[0].file_name().unwrap().to_string_lossy().to_string();
    let sys = |attr: &str| {
        fs::read_to_string(format!("/sys/block/{loop_name}/loop/{attr}"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(sys("autoclear"), "1");
    // Buffered: direct I/O through a loop device cost a scheduler tick per request on the
    // kernels measured (benches/data_path.rs).
    assert_eq!(sys("dio"), "0", "the loop device is buffered");

    let stats = host.fs_stats(&mnt).unwrap();
    eprintln!("{}: {stats:?}", fs_type.as_str());
    assert!(stats.bytes_total >= size, "df shows the size: {stats:?}");
    assert!(stats.bytes_total <= size + 8 * MIB, "{stats:?}");
    assert!(stats.bytes_total >= fits, "{stats:?}");

    let (n, err) = fill(&mnt.join("fill"), fits);
    assert!(
        err.is_none(),
        "writing {fits} bytes failed after {n}: {err:?}"
    );
    let (n, err) = fill(&mnt.join("fill"), size);
    let err = err.expect("writing past the end must fail");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(
        fits + n <= stats.bytes_total,
        "wrote {} of {size}",
        fits + n
    );

    assert_eq!(device_size(&loops[0]), meta.len());
    let result = host.grow_image(&image, grown, Some((&mnt, fs_type)));
    let grown_meta = fs::metadata(&image).unwrap();
    assert!(grown_meta.len() >= grown, "{}", grown_meta.len());
    assert!(
        grown_meta.blocks() * 512 >= grown_meta.len(),
        "growth allocated"
    );
    assert_eq!(
        device_size(&loops[0]),
        grown_meta.len(),
        "LOOP_SET_CAPACITY"
    );
    // ext4 without CAP_SYS_RESOURCE: grown offline (nothing else mounts it), see below.
    result.unwrap();
    let stats = host.fs_stats(&mnt).unwrap();
    assert!(stats.bytes_total >= grown, "{stats:?}");
    assert!(stats.bytes_total <= grown + 8 * MIB, "{stats:?}");
    let (n, err) = fill(&mnt.join("after-grow"), more);
    assert!(err.is_none(), "after growing, failed after {n}: {err:?}");
    // Growing again to the same size is a no-op; shrinking is refused.
    host.grow_image(&image, grown, Some((&mnt, fs_type)))
        .unwrap();
    assert!(host.grow_image(&image, size, None).is_err());

    host.unmount(&mnt).unwrap();
    wait_no_loops(&host, &image);
    host.unmount(&mnt).unwrap();
    host.remove_target(&mnt, TargetKind::Directory).unwrap();
}

#[test]
fn image_ext4_mount_fill_grow() {
    // (Where the process lacks CAP_SYS_RESOURCE this exercises the offline fallback.)
    harness::require_root();
    // 64 MiB ext4 (1 KiB blocks, 4 MiB journal, 16k inodes) takes ~9 MiB of metadata
    // beside the 64 MiB df shows.
    image_lifecycle(FsType::Ext4, 64 * MIB, 50 * MIB, 128 * MIB, 50 * MIB);
}

#[test]
fn image_xfs_mount_fill_grow() {
    harness::require_root();
    // mkfs.xfs refuses less than 300 MiB; its 64 MiB log leaves ~236 MiB for data.
    image_lifecycle(FsType::Xfs, 300 * MIB, 200 * MIB, 400 * MIB, 90 * MIB);
}

#[test]
fn create_image_is_idempotent() {
    harness::require_root();
    for (fs_type, size) in [(FsType::Ext4, 64 * MIB), (FsType::Xfs, 300 * MIB)] {
        let s = scratch();
        let host = LinuxHost::new();
        let image = s.join("vol.img");
        let mnt = s.join("mnt");
        host.prepare_target(&mnt, TargetKind::Directory).unwrap();
        host.create_image(&image, size, Some(fs_type)).unwrap();
        host.mount_image(&image, &mnt, fs_type).unwrap();
        fs::write(mnt.join("precious"), b"data").unwrap();
        host.unmount(&mnt).unwrap();
        wait_no_loops(&host, &image);

        host.create_image(&image, size, Some(fs_type)).unwrap();
        host.mount_image(&image, &mnt, fs_type).unwrap();
        assert_eq!(fs::read(mnt.join("precious")).unwrap(), b"data");
        host.unmount(&mnt).unwrap();
        wait_no_loops(&host, &image);

        // Another size or another filesystem is refused, not re-made.
        assert!(host.create_image(&image, size * 2, Some(fs_type)).is_err());
        let other = match fs_type {
            FsType::Ext4 => FsType::Xfs,
            FsType::Xfs => FsType::Ext4,
        };
        assert!(host.create_image(&image, size, Some(other)).is_err());
        let mode = fs::metadata(&image).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn image_on_tmpfs() {
    harness::require_root();
    // tmpfs may not do O_DIRECT; loop devices are buffered, so it serves as any backing.
    let s = scratch();
    let host = LinuxHost::new();
    let tmpfs = s.join("tmpfs");
    fs::create_dir(&tmpfs).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &tmpfs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=128m"),
    )
    .unwrap();
    let image = tmpfs.join("vol.img");
    let mnt = s.join("mnt");
    host.prepare_target(&mnt, TargetKind::Directory).unwrap();
    host.create_image(&image, 64 * MIB, Some(FsType::Ext4))
        .unwrap();
    host.mount_image(&image, &mnt, FsType::Ext4).unwrap();
    fs::write(mnt.join("x"), b"on tmpfs").unwrap();
    host.unmount(&mnt).unwrap();
    wait_no_loops(&host, &image);
}

#[test]
fn mount_image_reuses_the_loop_device_for_a_second_target() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let image = s.join("vol.img");
    host.create_image(&image, 64 * MIB, Some(FsType::Ext4))
        .unwrap();
    let (m1, m2) = (s.join("m1"), s.join("m2"));
    host.prepare_target(&m1, TargetKind::Directory).unwrap();
    host.prepare_target(&m2, TargetKind::Directory).unwrap();
    host.mount_image(&image, &m1, FsType::Ext4).unwrap();
    host.mount_image(&image, &m2, FsType::Ext4).unwrap();
    assert_eq!(backed_loops(&host, &image).len(), 1);
    fs::write(m1.join("x"), b"shared").unwrap();
    assert_eq!(fs::read(m2.join("x")).unwrap(), b"shared");
    host.unmount(&m1).unwrap();
    assert_eq!(backed_loops(&host, &image).len(), 1);
    host.unmount(&m2).unwrap();
    wait_no_loops(&host, &image);
}

#[test]
fn block_volume_attach_bind_detach() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let image = s.join("block.img");
    host.create_image(&image, 16 * MIB, None).unwrap();
    host.create_image(&image, 16 * MIB, None).unwrap();
    let device = host.attach_loop(&image).unwrap();
    assert_eq!(host.attach_loop(&image).unwrap(), device);
    assert_eq!(backed_loops(&host, &image), vec![device.clone()]);

    let target = s.join("dev-target");
    assert!(host.prepare_target(&target, TargetKind::File).unwrap());
    assert!(!host.prepare_target(&target, TargetKind::File).unwrap());
    assert!(host.prepare_target(&target, TargetKind::Directory).is_err());
    host.bind_mount(Path::new("/"), &device, &target, false)
        .unwrap();
    host.bind_mount(Path::new("/"), &device, &target, false)
        .unwrap();
    let meta = fs::metadata(&target).unwrap();
    assert!(meta.file_type().is_block_device());
    assert_eq!(meta.rdev(), fs::metadata(&device).unwrap().rdev());

    // Write through the bound node, read it back from the image.
    {
        let mut dev = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&target)
            .unwrap();
        let mut block = vec![0u8; 4096];
        block[..5].copy_from_slice(b"berth");
        // O_DIRECT needs an aligned buffer: copy into an aligned allocation.
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: (test) layout is non-zero-sized; the buffer is freed below.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        // SAFETY: (test) ptr is valid for 4096 bytes and exclusively ours.
        let aligned = unsafe { std::slice::from_raw_parts_mut(ptr, 4096) };
        aligned.copy_from_slice(&block);
        dev.seek(SeekFrom::Start(4096)).unwrap();
        let result = dev.write_all(aligned);
        // SAFETY: (test) allocated above with the same layout.
        unsafe { std::alloc::dealloc(ptr, layout) };
        result.unwrap();
        dev.sync_all().unwrap();
    }
    let mut img = fs::File::open(&image).unwrap();
    img.seek(SeekFrom::Start(4096)).unwrap();
    let mut head = [0u8; 5];
    img.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"berth");

    host.unmount(&target).unwrap();
    host.remove_target(&target, TargetKind::File).unwrap();
    host.detach_loop(&image).unwrap();
    wait_no_loops(&host, &image);
    host.detach_loop(&image).unwrap();
}

#[test]
fn tree_usage_and_copy_tree() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let from = s.join("from");
    fs::create_dir_all(from.join("sub/deeper")).unwrap();
    fs::write(from.join("sub/deeper/data"), vec![7u8; MIB as usize]).unwrap();
    fs::hard_link(from.join("sub/deeper/data"), from.join("hardlink")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", from.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", from.join("sub/abs-link")).unwrap();
    fs::write(from.join("small"), b"hello").unwrap();
    nix::unistd::chown(
        &from.join("small"),
        Some(nix::unistd::Uid::from_raw(1234)),
        Some(nix::unistd::Gid::from_raw(5678)),
    )
    .unwrap();
    fs::set_permissions(from.join("small"), fs::Permissions::from_mode(0o4640)).unwrap();
    fs::set_permissions(from.join("sub"), fs::Permissions::from_mode(0o705)).unwrap();
    nix::unistd::mkfifo(&from.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    fs::set_permissions(from.join("fifo"), fs::Permissions::from_mode(0o620)).unwrap();
    let _sock = UnixListener::bind(from.join("sock")).unwrap();
    // Sparse: 8 MiB with 4 KiB of data in the middle.
    {
        let f = fs::File::create(from.join("sparse")).unwrap();
        f.set_len(8 * MIB).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"middle", 4 * MIB).unwrap();
    }

    let usage = host.tree_usage(&from).unwrap();
    eprintln!("usage: {usage:?}");
    // from, sub, deeper, data (once for two names), link, abs-link, small, fifo, sock, sparse
    assert_eq!(usage.inodes, 10);
    assert!(usage.bytes >= MIB && usage.bytes < 2 * MIB, "{usage:?}");
    assert_eq!(
        host.tree_usage(&s.join("missing")).unwrap(),
        Default::default()
    );
    let err = host.tree_usage(&from.join("link")).unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");

    let to = s.join("to");
    host.make_dir(
        &to,
        &Ownership {
            uid: Some(42),
            gid: Some(43),
            mode: Some(0o2770),
        },
    )
    .unwrap();
    host.copy_tree(&from, &to).unwrap();
    host.copy_tree(&from, &to).unwrap(); // again: overwrites, same result

    let to_meta = fs::metadata(&to).unwrap();
    assert_eq!((to_meta.uid(), to_meta.gid()), (42, 43));
    assert_eq!(to_meta.permissions().mode() & 0o7777, 0o2770);
    assert_eq!(
        fs::read(to.join("sub/deeper/data")).unwrap(),
        vec![7u8; MIB as usize]
    );
    assert_eq!(
        fs::read_link(to.join("link")).unwrap(),
        Path::new("../outside/secret")
    );
    assert_eq!(
        fs::read_link(to.join("sub/abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    let small = fs::metadata(to.join("small")).unwrap();
    assert_eq!((small.uid(), small.gid()), (1234, 5678));
    assert_eq!(small.permissions().mode() & 0o7777, 0o4640);
    assert_eq!(
        fs::metadata(to.join("sub")).unwrap().permissions().mode() & 0o7777,
        0o705
    );
    assert!(
        fs::symlink_metadata(to.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        fs::symlink_metadata(to.join("fifo"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o620
    );
    assert!(
        fs::symlink_metadata(to.join("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    let sparse = fs::metadata(to.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 8 * MIB);
    assert!(sparse.blocks() * 512 < MIB, "copy is not sparse");
    let bytes = fs::read(to.join("sparse")).unwrap();
    assert_eq!(&bytes[4 * MIB as usize..4 * MIB as usize + 6], b"middle");
    let usage_to = host.tree_usage(&to).unwrap();
    // The hard link became two files.
    assert_eq!(usage_to.inodes, 11, "{usage_to:?}");

    // A symlinked source is refused; a mount inside the source is not entered.
    let err = host.copy_tree(&from.join("link"), &to).unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    let mounted = s.join("mounted-src");
    fs::create_dir_all(&mounted).unwrap();
    fs::write(mounted.join("not-copied"), b"x").unwrap();
    fs::create_dir_all(from.join("mnt")).unwrap();
    host.bind_mount(Path::new("/"), &mounted, &from.join("mnt"), true)
        .unwrap();
    let to2 = s.join("to2");
    host.make_dir(&to2, &Ownership::default()).unwrap();
    let err = host.copy_tree(&from, &to2).unwrap_err();
    assert!(matches!(err, HostError::CrossesMount { .. }), "{err}");
    assert!(!to2.join("mnt/not-copied").exists());
    assert!(to2.join("small").exists());
    let usage_mounted = host.tree_usage(&from).unwrap();
    assert_eq!(usage_mounted.inodes, usage.inodes, "mount was counted");
    host.unmount(&from.join("mnt")).unwrap();
}

/// A volume's directory and its data directory made together: ownership on each, again is
/// fine, a chain that is not one is refused before anything is made, and a symlink in the
/// chain is refused without following it.
#[test]
fn make_dirs_makes_a_chain_or_nothing() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let (vol, data) = (s.join("vol"), s.join("vol/data"));
    let owned = Ownership {
        uid: Some(1000),
        gid: Some(2000),
        mode: Some(0o2770),
    };
    let chain = [
        (vol.as_path(), &Ownership::default()),
        (data.as_path(), &owned),
    ];
    host.make_dirs(&chain).unwrap();
    host.make_dirs(&chain).unwrap();
    let meta = fs::metadata(&data).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 2000));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o2770);
    assert_eq!(
        fs::metadata(&vol).unwrap().permissions().mode() & 0o7777,
        0o755
    );

    let (other, stray) = (s.join("other"), s.join("stray"));
    let err = host
        .make_dirs(&[(other.as_path(), &owned), (stray.as_path(), &owned)])
        .unwrap_err();
    assert!(
        matches!(&err, HostError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput),
        "{err}"
    );
    assert!(
        !other.exists() && !stray.exists(),
        "a refused chain made something"
    );

    let outside = scratch();
    let linked = s.join("linked");
    fs::create_dir(&linked).unwrap();
    std::os::unix::fs::symlink(outside.path(), linked.join("data")).unwrap();
    let err = host
        .make_dirs(&[
            (linked.as_path(), &owned),
            (s.join("linked/data").as_path(), &owned),
        ])
        .unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    let outside_meta = fs::metadata(outside.path()).unwrap();
    assert_ne!(outside_meta.uid(), 1000, "followed the link!");
}

/// Creates and deletes in one pool at the same time share the syncs of the pool and its
/// trash (`host/linux/dir_sync.rs`): every one of them still finds its own work done.
#[test]
fn concurrent_creates_and_deletes_in_one_pool_all_land() {
    harness::require_root();
    let s = scratch();
    let host = std::sync::Arc::new(LinuxHost::new());
    let pool = s.path().to_path_buf();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (host, pool) = (std::sync::Arc::clone(&host), pool.clone());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let vol = pool.join(format!("v{w}-{i}"));
                    let data = vol.join("data");
                    let own = Ownership::default();
                    host.make_dirs(&[(vol.as_path(), &own), (data.as_path(), &own)])
                        .unwrap();
                    assert!(data.is_dir());
                    if i % 2 == 0 {
                        host.move_to_trash(&pool.join(".trash"), &[vol.as_path()])
                            .unwrap();
                        assert!(!vol.exists());
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let kept = fs::read_dir(&pool)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != ".trash")
        .count();
    assert_eq!(kept, 8 * 12, "every odd volume kept, every even one moved");
    assert_eq!(fs::read_dir(pool.join(".trash")).unwrap().count(), 8 * 13);
}

#[test]
fn make_dir_rename_sync_and_stats() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let dir = s.join("owned");
    let own = Ownership {
        uid: Some(1000),
        gid: Some(2000),
        mode: Some(0o750),
    };
    host.make_dir(&dir, &own).unwrap();
    host.make_dir(&dir, &own).unwrap();
    let meta = fs::metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 2000));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    // Missing parent, symlink and file are refused.
    assert!(
        host.make_dir(&s.join("no/parent"), &Ownership::default())
            .is_err()
    );
    std::os::unix::fs::symlink("/tmp", s.join("link")).unwrap();
    let err = host
        .make_dir(
            &s.join("link"),
            &Ownership {
                uid: Some(1),
                gid: None,
                mode: Some(0o777),
            },
        )
        .unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    assert_ne!(fs::metadata("/tmp").unwrap().uid(), 1, "followed the link!");
    fs::write(s.join("file"), b"").unwrap();
    assert!(
        host.make_dir(&s.join("file"), &Ownership::default())
            .is_err()
    );

    // rename: no replace, and a done rename is success.
    let (a, b) = (s.join("a"), s.join("b"));
    fs::write(&a, b"A").unwrap();
    host.rename(&a, &b).unwrap();
    host.rename(&a, &b).unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"A");
    fs::write(&a, b"A2").unwrap();
    let err = host.rename(&a, &b).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert_eq!(fs::read(&b).unwrap(), b"A");
    assert!(host.rename(&s.join("x"), &s.join("y")).is_err());
    host.rename(&dir, &s.join("sub-renamed")).unwrap();

    // remove_target: a non-empty directory stays.
    let t = s.join("target");
    host.prepare_target(&t, TargetKind::Directory).unwrap();
    fs::write(t.join("content"), b"x").unwrap();
    let err = host.remove_target(&t, TargetKind::Directory).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOTEMPTY), "{err}");
    assert!(t.join("content").exists());
    assert!(host.remove_target(&t, TargetKind::File).is_err());

    host.sync_path(&b).unwrap();
    host.sync_path(&t).unwrap();
    host.sync_path(&s.join("link")).unwrap();
    assert!(host.sync_path(&s.join("missing")).is_err());

    let stats = host.fs_stats(s.path()).unwrap();
    assert!(stats.bytes_total > 0 && stats.bytes_available <= stats.bytes_free);
    assert!(stats.bytes_free <= stats.bytes_total);
    assert!(stats.inodes_total >= stats.inodes_free);
    // The loop device list is readable and names /dev/loopN devices.
    for l in host.loop_devices().unwrap() {
        assert!(l.device.to_string_lossy().starts_with("/dev/loop"), "{l:?}");
    }
}

// ---------------------------------------------------------------------------------------
// ext4 grow without CAP_SYS_RESOURCE, filesystem kinds, project quotas
// ---------------------------------------------------------------------------------------

#[test]
fn ext4_grow_offline_fallback() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let image = s.join("vol.img");
    let mnt = s.join("mnt");
    host.prepare_target(&mnt, TargetKind::Directory).unwrap();
    host.create_image(&image, 32 * MIB, Some(FsType::Ext4))
        .unwrap();
    // 32 MiB as df shows it, and the filesystem's metadata.
    let made = fs::metadata(&image).unwrap().len();
    host.mount_image(&image, &mnt, FsType::Ext4).unwrap();
    fs::create_dir(mnt.join("data")).unwrap();
    fs::write(mnt.join("data/precious"), vec![0x5au8; 3 * MIB as usize]).unwrap();
    let before = host.fs_stats(&mnt).unwrap();
    let device = backed_loops(&host, &image);
    assert_eq!(device.len(), 1);

    // Published (a bind mount of its data elsewhere): only an online grow may touch it.
    let publication = s.join("pod-target");
    host.prepare_target(&publication, TargetKind::Directory)
        .unwrap();
    host.bind_mount(Path::new("/"), &mnt.join("data"), &publication, false)
        .unwrap();
    let online = has_capability(CAP_SYS_RESOURCE);
    let result = host.grow_image(&image, 48 * MIB, Some((&mnt, FsType::Ext4)));
    if online {
        result.unwrap();
    } else {
        let err = result.unwrap_err();
        match &err {
            HostError::Unsupported(message) => {
                assert!(
                    message.starts_with(
                        "online ext4 resize needs CAP_SYS_RESOURCE; unpublish the volume to \
                         grow it offline"
                    ),
                    "{message}"
                );
                assert!(
                    message.contains(&publication.display().to_string()),
                    "{message}"
                );
            }
            other => panic!("expected Unsupported, got {other}"),
        }
        // Refused before anything changed: the mounts, the image and its device.
        assert_eq!(host.fs_stats(&mnt).unwrap().bytes_total, before.bytes_total);
        assert_eq!(fs::metadata(&image).unwrap().len(), made);
        assert_eq!(device_size(&device[0]), made);
        // (stat, not read: an fd open here could make the unmount below EBUSY should a
        // concurrent test fork meanwhile)
        assert_eq!(
            fs::metadata(publication.join("precious")).unwrap().len(),
            3 * MIB
        );
        eprintln!("no CAP_SYS_RESOURCE: published volume refused as expected ({err})");
    }
    if !online {
        // Only the filesystem's root mount is ever remounted.
        let err = host
            .grow_image(&image, 48 * MIB, Some((&publication, FsType::Ext4)))
            .unwrap_err();
        assert!(
            matches!(err, HostError::Unsupported(ref m) if m.contains("does not remount")),
            "{err}"
        );
    }
    host.unmount(&publication).unwrap();

    // Unpublished: grown (offline without the capability), data intact, same device.
    let start = Instant::now();
    host.grow_image(&image, 64 * MIB, Some((&mnt, FsType::Ext4)))
        .unwrap();
    eprintln!(
        "ext4 grow 32 -> 64 MiB ({}) took {:?}",
        if online { "online" } else { "offline" },
        start.elapsed()
    );
    let after = host.fs_stats(&mnt).unwrap();
    eprintln!("before {before:?}\nafter {after:?}");
    assert!(
        after.bytes_total > before.bytes_total + 24 * MIB,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        fs::read(mnt.join("data/precious")).unwrap(),
        vec![0x5au8; 3 * MIB as usize]
    );
    assert_eq!(backed_loops(&host, &image), device, "same loop device");
    assert_eq!(device_size(&device[0]), fs::metadata(&image).unwrap().len());
    assert!(
        after.bytes_total >= 64 * MIB,
        "df shows the grown size: {after:?}"
    );
    let entry = mount_of(&mnt).expect("mounted again");
    assert_eq!(entry.source, device[0].to_string_lossy());
    assert_eq!(
        host.mounts()
            .unwrap()
            .iter()
            .filter(|m| m.mount_point == mnt)
            .count(),
        1
    );
    // The space is usable.
    let (n, err) = fill(&mnt.join("more"), 40 * MIB);
    assert!(err.is_none(), "after growing, failed after {n}: {err:?}");
    // Same size again: nothing to do, still fine.
    host.grow_image(&image, 64 * MIB, Some((&mnt, FsType::Ext4)))
        .unwrap();

    host.unmount(&mnt).unwrap();
    wait_no_loops(&host, &image);
}

/// A filesystem still mounted in another mount namespace (a container, a service with a
/// private namespace, made while the volume was mounted) cannot be checked offline: the
/// grow is refused, the filesystem mounted back, and the image left as it was.
#[test]
fn ext4_offline_grow_of_a_filesystem_mounted_in_another_namespace_changes_nothing() {
    harness::require_root();
    if has_capability(CAP_SYS_RESOURCE) {
        return;
    }
    let s = scratch();
    let host = LinuxHost::new();
    let image = s.join("vol.img");
    let mnt = s.join("mnt");
    host.prepare_target(&mnt, TargetKind::Directory).unwrap();
    host.create_image(&image, 32 * MIB, Some(FsType::Ext4))
        .unwrap();
    // 32 MiB as df shows it, and the filesystem's metadata.
    let made = fs::metadata(&image).unwrap().len();
    host.mount_image(&image, &mnt, FsType::Ext4).unwrap();
    fs::write(mnt.join("precious"), b"kept").unwrap();
    let device = backed_loops(&host, &image);
    // A process in a mount namespace of its own, with a private copy of the mount.
    let mut elsewhere = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "30"])
        .spawn()
        .expect("unshare (util-linux)");
    let ours = fs::read_link("/proc/self/ns/mnt").unwrap();
    let ns_has_copy = || {
        let pid = elsewhere.id();
        fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|ns| ns != ours)
            && fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                .is_ok_and(|m| m.contains(&*mnt.to_string_lossy()))
    };
    let started = Instant::now();
    while !ns_has_copy() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no namespace copy"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = host
        .grow_image(&image, 64 * MIB, Some((&mnt, FsType::Ext4)))
        .unwrap_err();
    let _ = elsewhere.kill();
    let _ = elsewhere.wait();
    assert!(err.to_string().contains("is in use"), "{err}");
    assert_eq!(fs::metadata(&image).unwrap().len(), made);
    assert_eq!(device_size(&device[0]), made);
    assert_eq!(fs::read(mnt.join("precious")).unwrap(), b"kept");
    // With the other namespace gone, the same grow works.
    host.grow_image(&image, 64 * MIB, Some((&mnt, FsType::Ext4)))
        .unwrap();
    assert!(host.fs_stats(&mnt).unwrap().bytes_total >= 64 * MIB);
    host.unmount(&mnt).unwrap();
    wait_no_loops(&host, &image);
}

#[test]
fn fs_kind_of_each_filesystem() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let cases: [(&str, u64, &str, &[&str], FsKind); 3] = [
        ("ext4", 32 * MIB, "mkfs.ext4", &["-q", "-F"], FsKind::Ext4),
        ("xfs", 300 * MIB, "mkfs.xfs", &["-q", "-f"], FsKind::Xfs),
        (
            "btrfs",
            256 * MIB,
            "mkfs.btrfs",
            &["-q", "-f"],
            FsKind::Btrfs,
        ),
    ];
    for (name, size, mkfs, args, kind) in cases {
        let image = s.join(&format!("{name}.img"));
        make_fs(&image, size, mkfs, args);
        let mnt = s.join(name);
        mount_loop(&image, &mnt, "");
        assert_eq!(host.fs_kind(&mnt).unwrap(), kind, "{name}");
        fs::create_dir(mnt.join("sub")).unwrap();
        assert_eq!(host.fs_kind(&mnt.join("sub")).unwrap(), kind, "{name}/sub");
    }
    let tmpfs = s.join("tmpfs");
    fs::create_dir(&tmpfs).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &tmpfs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m"),
    )
    .unwrap();
    assert_eq!(host.fs_kind(&tmpfs).unwrap(), FsKind::Tmpfs);
    assert!(matches!(
        host.fs_kind(Path::new("/proc")).unwrap(),
        FsKind::Other(0x9fa0)
    ));
    // The final component is followed, like fs_stats: a link into the btrfs is btrfs.
    std::os::unix::fs::symlink(s.join("btrfs"), s.join("link")).unwrap();
    assert_eq!(host.fs_kind(&s.join("link")).unwrap(), FsKind::Btrfs);
    let err = host.fs_kind(&s.join("missing")).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
}

/// The `fsx_projid` of `dir`, by `FS_IOC_FSGETXATTR` (via xfs_io, a fixture tool).
fn projid_of(dir: &Path) -> u32 {
    let out = std::process::Command::new("xfs_io")
        .args(["-c", "lsproj"])
        .arg(dir)
        .output()
        .expect("xfs_io");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("projid = ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("xfs_io lsproj: {text:?}"))
}

fn unsupported_message(result: Result<(), HostError>) -> String {
    match result {
        Err(HostError::Unsupported(message)) => message,
        Err(other) => panic!("expected Unsupported, got {other}"),
        Ok(()) => panic!("expected Unsupported, got Ok"),
    }
}

/// A real project-quota round trip, for kernels that have quota support (not this CI's:
/// there the callers below take the refusal branch).
fn project_quota_enforced(host: &LinuxHost, mnt: &Path) {
    host.project_quota_support(mnt).unwrap();
    let vol = mnt.join("vol");
    fs::create_dir(&vol).unwrap();
    let id = 4_242_001;
    host.set_project_quota(&vol, id, 16 * MIB).unwrap();
    host.set_project_quota(&vol, id, 16 * MIB).unwrap();
    assert!(host.project_ids_in_use(mnt).unwrap().contains(&id));
    let (n, err) = fill(&vol.join("fill"), 64 * MIB);
    let err = err.expect("the project limit must stop the writes");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err} after {n}");
    assert!(n <= 16 * MIB, "wrote {n}");
    let usage = host.project_quota_usage(mnt, id).unwrap();
    assert!(
        usage.bytes <= 16 * MIB && usage.bytes >= 8 * MIB,
        "{usage:?}"
    );
    host.set_project_quota(&vol, id, 32 * MIB).unwrap();
    let (n, err) = fill(&vol.join("more"), 8 * MIB);
    assert!(
        err.is_none(),
        "after raising the limit, failed after {n}: {err:?}"
    );
    host.clear_project_quota(&vol, id).unwrap();
    host.clear_project_quota(&vol, id).unwrap();
    assert!(!host.project_ids_in_use(mnt).unwrap().contains(&id));
}

#[test]
fn project_quotas_xfs() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let image = s.join("xfs.img");
    make_fs(&image, 300 * MIB, "mkfs.xfs", &["-q", "-f"]);
    let mnt = s.join("xfs");
    let (with_prjquota, stderr) = try_mount_loop(&image, &mnt, "prjquota");
    if with_prjquota {
        eprintln!("this kernel mounts xfs with prjquota: full project quota test");
        project_quota_enforced(&host, &mnt);
        return;
    }
    // A kernel without CONFIG_XFS_QUOTA refuses the mount ("quota support not available in
    // this kernel"); mounted without it, berth says why it can not use project quotas.
    eprintln!(
        "xfs -o prjquota refused ({}); testing the refusal",
        stderr.trim()
    );
    mount_loop(&image, &mnt, "");
    let message = unsupported_message(host.project_quota_support(&mnt));
    let mount_part = format!("xfs at {} is mounted without prjquota", mnt.display());
    assert_eq!(
        message,
        format!("the kernel has no quota support for xfs (quotactl: ENOSYS); {mount_part}")
    );
    // Every call that needs the quotas refuses the same way and changes nothing.
    let vol = mnt.join("vol");
    fs::create_dir(&vol).unwrap();
    assert_eq!(
        unsupported_message(host.set_project_quota(&vol, 4_242_001, 16 * MIB)),
        message
    );
    assert_eq!(projid_of(&vol), 0);
    let err = host.project_quota_usage(&vol, 4_242_001).unwrap_err();
    assert!(
        matches!(err, HostError::Unsupported(ref m) if *m == message),
        "{err}"
    );
    assert!(host.set_project_quota(&vol, 0, MIB).is_err(), "project 0");

    // project ids: xfs keeps inode project ids even without quota support.
    for (name, id) in [("a", 4_242_007u32), ("b", 4_242_042)] {
        fs::create_dir(mnt.join(name)).unwrap();
        cmd(
            "xfs_io",
            &[
                "-c",
                &format!("chproj {id}"),
                mnt.join(name).to_str().unwrap(),
            ],
        );
    }
    fs::write(mnt.join("file"), b"x").unwrap();
    std::os::unix::fs::symlink(mnt.join("a"), mnt.join("link")).unwrap();
    let ids = host.project_ids_in_use(&mnt).unwrap();
    assert!(
        ids.contains(&4_242_007) && ids.contains(&4_242_042),
        "{ids:?}"
    );
    assert!(!ids.contains(&0));
    // clear: the limit part is skipped (no quota support), the directory is reset; a
    // directory in another project is refused; a missing one only clears the limit.
    host.clear_project_quota(&mnt.join("a"), 4_242_007).unwrap();
    assert_eq!(projid_of(&mnt.join("a")), 0);
    host.clear_project_quota(&mnt.join("a"), 4_242_007).unwrap();
    assert!(host.clear_project_quota(&mnt.join("b"), 4_242_007).is_err());
    assert_eq!(projid_of(&mnt.join("b")), 4_242_042);
    host.clear_project_quota(&mnt.join("gone"), 4_242_007)
        .unwrap();
    let ids = host.project_ids_in_use(&mnt).unwrap();
    assert!(
        !ids.contains(&4_242_007) && ids.contains(&4_242_042),
        "{ids:?}"
    );
}

#[test]
fn project_quotas_ext4() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();

    // Without the project feature.
    let plain = s.join("plain.img");
    make_fs(&plain, 32 * MIB, "mkfs.ext4", &["-q", "-F"]);
    let mnt = s.join("plain");
    mount_loop(&plain, &mnt, "");
    assert_eq!(
        unsupported_message(host.project_quota_support(&mnt)),
        format!(
            "ext4 at {} lacks the project feature; mkfs.ext4 -O quota,project and mount -o \
             prjquota",
            mnt.display()
        )
    );
    fs::create_dir(mnt.join("vol")).unwrap();
    assert!(matches!(
        host.set_project_quota(&mnt.join("vol"), 4_242_001, MIB),
        Err(HostError::Unsupported(_))
    ));
    assert!(
        host.project_ids_in_use(&mnt)
            .unwrap()
            .is_disjoint(&[4_242_001].into())
    );
    host.clear_project_quota(&mnt.join("vol"), 4_242_001)
        .unwrap();

    // With it. A kernel without CONFIG_QFMT_V2 refuses to mount it read-write at all.
    let featured = s.join("featured.img");
    make_fs(
        &featured,
        32 * MIB,
        "mkfs.ext4",
        &["-q", "-F", "-O", "quota,project"],
    );
    let mnt = s.join("featured");
    let (rw, stderr) = try_mount_loop(&featured, &mnt, "prjquota");
    if rw {
        eprintln!("this kernel mounts ext4 with quota,project: full project quota test");
        project_quota_enforced(&host, &mnt);
        return;
    }
    eprintln!(
        "ext4 -O quota,project refused read-write ({}); read-only",
        stderr.trim()
    );
    mount_loop(&featured, &mnt, "ro");
    let message = unsupported_message(host.project_quota_support(&mnt));
    assert!(
        message.starts_with(&format!("ext4 at {} is mounted read-only", mnt.display())),
        "{message}"
    );
}

#[test]
fn project_quotas_refused_elsewhere() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let tmpfs = s.join("tmpfs");
    fs::create_dir(&tmpfs).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &tmpfs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m"),
    )
    .unwrap();
    assert_eq!(
        unsupported_message(host.project_quota_support(&tmpfs)),
        format!(
            "project quotas need xfs or ext4; {} is on tmpfs",
            tmpfs.display()
        )
    );
    fs::create_dir(tmpfs.join("vol")).unwrap();
    std::os::unix::fs::symlink(tmpfs.join("vol"), tmpfs.join("link")).unwrap();
    let err = host
        .set_project_quota(&tmpfs.join("link"), 4_242_001, MIB)
        .unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    // No project ids on tmpfs, and reading them is no error.
    let ids = host.project_ids_in_use(&tmpfs).unwrap();
    assert!(!ids.contains(&0));
}
