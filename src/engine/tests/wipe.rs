//! Deleting and wiping volumes the host damaged or changed behind berth's back: a loopfs
//! filesystem that can no longer be read, one no longer mounted, a loop device detached,
//! a plain or btrfs directory removed. Each still goes, its record with it, and the report
//! says when its count is partial and why.

use super::*;

/// A loopfs volume holding `a`, `ok/b` and a damaged directory `bad` (with `c` inside).
fn damaged_loopfs(e: &Engine<FakeHost>, volume: &str) -> Volume {
    let v = e.create(CSI, request(volume, Some(GIB))).unwrap();
    let data = &v.placement.data;
    let h = e.host();
    h.add_file(&data.join("a"));
    h.add_dir(&data.join("ok"));
    h.add_file(&data.join("ok/b"));
    h.damage_dir(&data.join("bad"));
    h.add_file(&data.join("bad/c"));
    v
}

fn assert_all_gone(e: &Engine<FakeHost>, v: &Volume) {
    assert!(e.get(&v.name).is_err(), "the record is gone");
    assert!(!e.host().is_dir(&v.placement.dir), "its directory is gone");
    if let Some(image) = &v.placement.image {
        assert!(!e.host().has_image(image), "its image is gone");
        assert!(e.host().image_loops(image).unwrap().is_empty());
    }
    assert!(e.host().mounted_at(&v.placement.dir).is_none());
}

#[test]
fn a_wipe_of_a_loopfs_volume_whose_filesystem_is_damaged_succeeds_with_a_partial_count() {
    let f = Fixture::new();
    let e = f.open(host());
    let other = e.create(CSI, request("other", Some(GIB))).unwrap();
    let v = damaged_loopfs(&e, "v");

    let removed = e.wipe(CSI, &name("v")).unwrap();
    // What the walk could read: `a`, `ok/b` and `ok`; not `bad`, `bad/c` or `data`.
    assert_eq!((removed.files, removed.dirs), (2, 1), "{removed:?}");
    let why = removed
        .incomplete
        .as_deref()
        .expect("the count says it is partial");
    assert!(why.contains("could not all be read"), "{why}");
    assert!(why.contains("/pool/volumes/v/data/bad"), "{why}");
    assert!(why.contains("Directory not empty"), "{why}");
    assert_all_gone(&e, &v);

    // Nothing outside the volume was touched.
    let image = other.placement.image.as_ref().unwrap();
    assert!(e.host().has_image(image));
    assert!(e.host().mounted_at(&other.placement.dir).is_some());
    assert!(e.host().is_dir(&other.placement.data));
    assert_eq!(e.host().loop_count(), 1);
}

#[test]
fn a_delete_of_a_loopfs_volume_whose_filesystem_is_damaged_succeeds() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = damaged_loopfs(&e, "v");
    e.delete(CSI, &name("v")).unwrap();
    assert_all_gone(&e, &v);
}

#[test]
fn a_damaged_wipe_is_tombstoned_before_the_walk_and_finished_at_start_after_a_crash() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = damaged_loopfs(&e, "v");
    // Killed right after the walk gave up, before the filesystem was unmounted.
    e.host().crash_at("unmount");
    let crashed =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.wipe(CSI, &name("v"))));
    assert!(crashed.is_err());
    assert_eq!(e.get(&name("v")).unwrap().state(), VolumeState::Deleting);
    drop(e);
    // What the crash left on the host: the damaged filesystem, still mounted.
    let h = host();
    h.make_dir(&v.placement.dir, &Ownership::default()).unwrap();
    let image = v.placement.image.as_ref().unwrap();
    h.create_image(image, GIB, Some(FsType::Ext4)).unwrap();
    h.mount_image(image, &v.placement.dir, FsType::Ext4)
        .unwrap();
    h.damage_dir(&v.placement.data.join("bad"));
    let e = f.open(h);
    // Recovery finishes the wipe: the same damage does not stop it either.
    assert_eq!(e.recovery_report().finished_deletes, vec!["v".to_string()]);
    assert_all_gone(&e, &v);
}

#[test]
fn a_loopfs_volume_whose_filesystem_is_no_longer_mounted_is_wiped_and_says_it_was_not_counted() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = e.create(CSI, request("v", Some(GIB))).unwrap();
    e.host().unmount(&v.placement.dir).unwrap();
    let removed = e.wipe(CSI, &name("v")).unwrap();
    let why = removed.incomplete.as_deref().expect("partial");
    assert!(
        why.contains("not mounted at /pool/volumes/v") && why.contains("not counted"),
        "{why}"
    );
    assert_all_gone(&e, &v);
}

#[test]
fn a_loopfs_or_block_volume_whose_loop_device_was_detached_is_deleted_and_wiped() {
    let f = Fixture::new();
    let e = f.open(host());
    for block in [false, true] {
        for wipe in [false, true] {
            let n = format!("{}-{}", ["fs", "block"][usize::from(block)], wipe);
            let mut r = request(&n, Some(GIB));
            if block {
                r.spec.access = AccessType::Block;
            }
            let v = e.create(CSI, r).unwrap();
            let target = bind(&format!("/t/{n}"), false);
            if block {
                // A block volume has a loop device only while published.
                e.publish(CSI, &name(&n), target.clone()).unwrap();
            }
            let image = v.placement.image.as_ref().unwrap();
            let device = e.host().image_loops(image).unwrap().remove(0);
            e.host().drop_loop(&device);
            if block {
                e.unpublish(CSI, &name(&n), &target).unwrap();
            }
            if wipe {
                let removed = e.wipe(CSI, &name(&n)).unwrap();
                assert_eq!(removed.incomplete, None, "{n}: nothing was unreadable");
            } else {
                e.delete(CSI, &name(&n)).unwrap();
            }
            assert_all_gone(&e, &v);
        }
    }
}

#[test]
fn a_plain_volume_whose_directory_vanished_is_deleted_retained_and_wiped() {
    let mut f = Fixture::new();
    f.pools[0].backend = BackendChoice::None;
    f.pools[0].reclaim = ReclaimPolicy::Retain;
    let e = f.open(host());
    let kept = e.create(CSI, request("kept", None)).unwrap();
    for n in ["retained", "wiped"] {
        let v = e.create(CSI, request(n, None)).unwrap();
        e.host().drop_dir(&v.placement.dir);
        if n == "wiped" {
            let removed = e.wipe(CSI, &name(n)).unwrap();
            assert_eq!(
                removed.incomplete.as_deref(),
                Some("its directory /pool/volumes/wiped was already gone")
            );
        } else {
            // The pool retains deleted data: there is none left to move aside.
            e.delete(CSI, &name(n)).unwrap();
        }
        assert!(e.get(&name(n)).is_err(), "{n}: the record is gone");
    }
    assert!(e.host().is_dir(&kept.placement.data), "the others stay");
    assert!(
        !e.host().calls().iter().any(|c| c.op == "rename"),
        "nothing was moved aside"
    );
}

#[test]
fn a_btrfs_volume_whose_subvolume_vanished_is_deleted_and_wiped() {
    let mut f = prjquota_fixture(BackendChoice::Btrfs);
    f.pools[0].reclaim = ReclaimPolicy::Retain;
    let h = host();
    h.set_fs_kind(Path::new("/pool"), crate::host::FsKind::Btrfs);
    let e = f.open(h);
    for n in ["retained", "wiped"] {
        let v = e.create(CSI, request(n, Some(GIB))).unwrap();
        assert_eq!(v.placement.backend, Backend::Btrfs);
        e.host().drop_dir(&v.placement.dir);
        if n == "wiped" {
            let removed = e.wipe(CSI, &name(n)).unwrap();
            let why = removed.incomplete.unwrap();
            assert_eq!(why, "its directory /pool/volumes/wiped was already gone");
        } else {
            e.delete(CSI, &name(n)).unwrap();
        }
        assert!(e.get(&name(n)).is_err(), "{n}: the record is gone");
    }
}

#[test]
fn a_mount_inside_a_loopfs_volume_still_stops_its_wipe_and_is_left_alone() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = e.create(CSI, request("v", Some(GIB))).unwrap();
    let inner = v.placement.data.join("sub");
    e.host().add_dir(&inner);
    e.host().add_dir(Path::new("/elsewhere"));
    e.host()
        .bind_mount(Path::new("/"), Path::new("/elsewhere"), &inner, false)
        .unwrap();
    let err = e.wipe(CSI, &name("v")).unwrap_err().to_string();
    assert!(err.contains("mount point of another filesystem"), "{err}");
    assert_eq!(e.get(&name("v")).unwrap().state(), VolumeState::Deleting);
    assert!(e.host().mounted_at(&inner).is_some());
    assert!(e.host().has_image(v.placement.image.as_ref().unwrap()));
    assert!(e.host().is_dir(Path::new("/elsewhere")));
}
