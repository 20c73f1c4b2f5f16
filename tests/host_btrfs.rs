//! `LinuxHost`'s btrfs calls against the real kernel: a btrfs made with `mkfs.btrfs` in a
//! sparse image under a scratch directory, mounted through a loop device, with quotas,
//! subvolumes and qgroup limits. Needs root and btrfs-progs (for the fixture only; berth
//! itself uses ioctls); without root the tests are skipped with a message. The scratch guard
//! unmounts everything beneath it and detaches the loop devices, also when a test fails.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth::host::linux::LinuxHost;
use berth::host::{FsKind, Host, HostError, TargetKind};

#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/host.rs"]
mod support;

use support::*;

/// A fresh 256 MiB btrfs mounted at `<scratch>/btrfs`.
fn btrfs(s: &Scratch) -> PathBuf {
    let image = s.join("btrfs.img");
    make_fs(&image, 256 * MIB, "mkfs.btrfs", &["-q", "-f"]);
    let mnt = s.join("btrfs");
    mount_loop(&image, &mnt, "");
    mnt
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

#[test]
fn subvolume_quota_limit_usage_delete() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let fs_root = btrfs(&s);
    assert_eq!(host.fs_kind(&fs_root).unwrap(), FsKind::Btrfs);
    host.btrfs_enable_quota(&fs_root).unwrap();
    host.btrfs_enable_quota(&fs_root).unwrap(); // already on: fine

    let vol = fs_root.join("vol");
    host.btrfs_create_subvolume(&vol).unwrap();
    host.btrfs_create_subvolume(&vol).unwrap(); // exists: fine
    assert_eq!(ino(&vol), 256);
    assert_ne!(
        fs::metadata(&vol).unwrap().dev(),
        fs::metadata(&fs_root).unwrap().dev(),
        "a subvolume has its own st_dev"
    );
    assert_eq!(host.fs_kind(&vol).unwrap(), FsKind::Btrfs);

    // 16 MiB limit: writes stop with EDQUOT around there.
    host.btrfs_set_limit(&vol, 16 * MIB).unwrap();
    let (n, err) = fill(&vol.join("fill"), 64 * MIB);
    let err = err.expect("the qgroup limit must stop the writes");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err} after {n}");
    sync_fs(&vol);
    let usage = host.btrfs_usage(&vol).unwrap();
    eprintln!("wrote {n} bytes before EDQUOT; qgroup usage {usage:?}");
    assert!((8 * MIB..=16 * MIB).contains(&n), "wrote {n}");
    // btrfs accounts extents and reserves ahead: allow 1 MiB of slack over the limit.
    assert!(
        usage.bytes >= 8 * MIB && usage.bytes <= 17 * MIB,
        "{usage:?}"
    );
    assert_eq!(usage.inodes, 0, "qgroup numbers (not the walk fallback)");

    // Raise it: more fits, and usage follows.
    host.btrfs_set_limit(&vol, 48 * MIB).unwrap();
    let (n, err) = fill(&vol.join("more"), 16 * MIB);
    assert!(
        err.is_none(),
        "after raising the limit, failed after {n}: {err:?}"
    );
    sync_fs(&vol);
    let raised = host.btrfs_usage(&vol).unwrap();
    assert!(
        raised.bytes >= usage.bytes + 15 * MIB && raised.bytes <= 48 * MIB,
        "{usage:?} -> {raised:?}"
    );
    // 0 removes the limit.
    host.btrfs_set_limit(&vol, 0).unwrap();
    let (n, err) = fill(&vol.join("unlimited"), 40 * MIB);
    assert!(err.is_none(), "without a limit, failed after {n}: {err:?}");

    // remove_tree does not treat a subvolume as its own: it has another st_dev.
    let err = host.remove_tree(&fs_root, &vol).unwrap_err();
    assert!(matches!(err, HostError::CrossesMount { .. }), "{err}");
    assert!(vol.join("fill").exists());

    // Symlinks inside pointing out (off the filesystem, and elsewhere on it) survive the
    // deletion; so does what they point at.
    let outside = s.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"outside").unwrap();
    fs::create_dir(fs_root.join("neighbour")).unwrap();
    fs::write(fs_root.join("neighbour/keep"), b"same fs").unwrap();
    std::os::unix::fs::symlink(&outside, vol.join("out")).unwrap();
    std::os::unix::fs::symlink("../neighbour", vol.join("up")).unwrap();
    fs::create_dir_all(vol.join("deep/er")).unwrap();
    fs::write(vol.join("deep/er/file"), b"x").unwrap();

    // A symlink to the subvolume is refused, not followed.
    let link = fs_root.join("link-to-vol");
    std::os::unix::fs::symlink(&vol, &link).unwrap();
    let err = host.btrfs_delete_subvolume(&link).unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    assert!(vol.join("fill").exists());
    // So are a plain directory and creating over one.
    assert!(
        host.btrfs_delete_subvolume(&fs_root.join("neighbour"))
            .is_err()
    );
    assert!(
        host.btrfs_create_subvolume(&fs_root.join("neighbour"))
            .is_err()
    );
    assert!(
        host.btrfs_set_limit(&fs_root.join("neighbour"), MIB)
            .is_err()
    );
    let err = host.btrfs_create_subvolume(&link).unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");

    host.btrfs_delete_subvolume(&vol).unwrap();
    assert!(!vol.exists());
    host.btrfs_delete_subvolume(&vol).unwrap(); // missing: fine
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"outside");
    assert_eq!(
        fs::read(fs_root.join("neighbour/keep")).unwrap(),
        b"same fs"
    );
    assert!(
        link.symlink_metadata().is_ok(),
        "the dangling link itself stays"
    );

    // A new subvolume at the same path is a new qgroup, without the old limit.
    host.btrfs_create_subvolume(&vol).unwrap();
    let (n, err) = fill(&vol.join("fresh"), 24 * MIB);
    assert!(err.is_none(), "fresh subvolume failed after {n}: {err:?}");
    host.btrfs_delete_subvolume(&vol).unwrap();
}

#[test]
fn delete_refuses_mounts_and_nested_subvolumes() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let fs_root = btrfs(&s);
    let vol = fs_root.join("vol");
    host.btrfs_create_subvolume(&vol).unwrap();
    fs::create_dir_all(vol.join("data/mnt")).unwrap();
    fs::write(vol.join("data/file"), b"published").unwrap();

    // Published: a bind mount of its data elsewhere.
    let target = s.join("pod-target");
    host.prepare_target(&target, TargetKind::Directory).unwrap();
    host.bind_mount(Path::new("/"), &vol.join("data"), &target, false)
        .unwrap();
    let err = host.btrfs_delete_subvolume(&vol).unwrap_err();
    assert!(
        err.to_string().contains(&target.display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read(target.join("file")).unwrap(), b"published");
    host.unmount(&target).unwrap();

    // Something mounted inside it (the kernel would silently detach it).
    let source = s.join("source");
    fs::create_dir(&source).unwrap();
    host.bind_mount(Path::new("/"), &source, &vol.join("data/mnt"), true)
        .unwrap();
    let err = host.btrfs_delete_subvolume(&vol).unwrap_err();
    assert!(matches!(err, HostError::CrossesMount { .. }), "{err}");
    assert!(vol.join("data/file").exists());
    host.unmount(&vol.join("data/mnt")).unwrap();

    // The same, seen through a second mount of the filesystem.
    let second = s.join("second-view");
    host.prepare_target(&second, TargetKind::Directory).unwrap();
    host.bind_mount(Path::new("/"), &fs_root, &second, false)
        .unwrap();
    host.bind_mount(Path::new("/"), &source, &second.join("vol/data/mnt"), true)
        .unwrap();
    let err = host.btrfs_delete_subvolume(&vol).unwrap_err();
    assert!(
        matches!(err, HostError::CrossesMount { ref path } if *path == second.join("vol/data/mnt")),
        "{err}"
    );
    host.unmount(&second.join("vol/data/mnt")).unwrap();
    host.unmount(&second).unwrap();

    // A nested subvolume: the kernel refuses (ENOTEMPTY); remove_tree does not enter it.
    let inner = vol.join("data/inner");
    host.btrfs_create_subvolume(&inner).unwrap();
    fs::write(inner.join("nested"), b"n").unwrap();
    let err = host.btrfs_delete_subvolume(&vol).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOTEMPTY), "{err}");
    let err = host.remove_tree(&vol, &vol.join("data")).unwrap_err();
    assert!(
        matches!(err, HostError::CrossesMount { ref path } if *path == inner),
        "{err}"
    );
    assert!(
        inner.join("nested").exists(),
        "the nested subvolume was entered"
    );
    assert!(!vol.join("data/file").exists(), "the rest was removed");

    host.btrfs_delete_subvolume(&inner).unwrap();
    host.btrfs_delete_subvolume(&vol).unwrap();
    assert!(!vol.exists());
}

#[test]
fn usage_falls_back_to_a_walk_without_quotas() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let fs_root = btrfs(&s);
    let vol = fs_root.join("vol");
    host.btrfs_create_subvolume(&vol).unwrap();
    fs::write(vol.join("f"), vec![1u8; 2 * MIB as usize]).unwrap();
    sync_fs(&vol);
    // Quotas off: no qgroup numbers, so the walk answers (with an inode count).
    let usage = host.btrfs_usage(&vol).unwrap();
    assert_eq!(usage.inodes, 2, "{usage:?}");
    assert!(usage.bytes >= 2 * MIB, "{usage:?}");
    let err = host.btrfs_set_limit(&vol, 16 * MIB).unwrap_err();
    match err {
        HostError::Unsupported(m) => assert!(m.contains("quotas are not enabled"), "{m}"),
        other => panic!("expected Unsupported, got {other}"),
    }
    // Enabling quotas on a filesystem with data: the rescan accounts the existing subvolume.
    host.btrfs_enable_quota(&fs_root).unwrap();
    host.btrfs_set_limit(&vol, 16 * MIB).unwrap();
    let usage = host.btrfs_usage(&vol).unwrap();
    // Either the rescan is done (qgroup numbers) or still running (the walk answers).
    eprintln!("after enabling quotas on existing data: {usage:?}");
    assert!(usage.bytes >= 2 * MIB, "{usage:?}");
    host.btrfs_delete_subvolume(&vol).unwrap();
}

#[test]
fn btrfs_calls_refuse_other_filesystems() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let image = s.join("ext4.img");
    make_fs(&image, 32 * MIB, "mkfs.ext4", &["-q", "-F"]);
    let mnt = s.join("ext4");
    mount_loop(&image, &mnt, "");
    let dir = mnt.join("dir");
    fs::create_dir(&dir).unwrap();
    for result in [
        host.btrfs_create_subvolume(&mnt.join("vol")),
        host.btrfs_enable_quota(&mnt),
        host.btrfs_set_limit(&dir, MIB),
        host.btrfs_usage(&dir).map(drop),
        host.btrfs_delete_subvolume(&dir),
    ] {
        match result {
            Err(HostError::Unsupported(m)) => assert!(m.ends_with("is on ext4, not btrfs"), "{m}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
    assert!(!mnt.join("vol").exists());
    assert!(dir.exists());
}
