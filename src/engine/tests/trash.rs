//! The trash on the fake host: a delete moves a loopfs image into its pool's trash and is
//! done, the trash is emptied afterwards (and after a start), and a delete cut short once
//! the image is in the trash finishes at the next start.

use std::time::Duration;

use super::*;

fn trash() -> PathBuf {
    PathBuf::from("/pool/volumes").join(TRASH_DIR)
}

#[test]
fn a_delete_moves_the_image_to_the_trash_and_emptying_it_unlinks_it() {
    let f = Fixture::new();
    let e = f.open(host());
    // What the start queued: nothing there yet.
    assert_eq!(e.empty_trash(Duration::ZERO), 0);
    let v = e.create(CSI, request("v", Some(GIB))).unwrap();
    let image = v.placement.image.clone().unwrap();
    e.delete(CSI, &name("v")).unwrap();

    assert!(e.get(&name("v")).is_err(), "the record is gone");
    assert!(!e.host().has_image(&image), "the image left its place");
    assert!(e.host().mounted_at(&v.placement.dir).is_none());
    let waiting = e.host().images_beneath(&trash());
    assert_eq!(
        waiting.len(),
        1,
        "the image waits in the trash: {waiting:?}"
    );
    // Its name is free again at once, while the old image still waits.
    e.create(CSI, request("v", Some(GIB))).unwrap();
    assert!(e.host().has_image(&image));

    assert_eq!(e.empty_trash(Duration::ZERO), 1);
    assert!(e.host().images_beneath(&trash()).is_empty());
    // Nothing more is due until the next delete.
    assert_eq!(e.empty_trash(Duration::ZERO), 0);
}

#[test]
fn a_wipe_removes_the_data_inside_before_the_image_goes_to_the_trash() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = e.create(CSI, request("v", Some(GIB))).unwrap();
    e.host().add_file(&v.placement.data.join("secret"));
    let removed = e.wipe(CSI, &name("v")).unwrap();
    assert_eq!(removed.files, 1, "{removed:?}");
    assert_eq!(removed.image_bytes, GIB, "{removed:?}");
    let calls: Vec<&str> = e.host().calls().iter().map(|c| c.op).collect();
    let inside = calls.iter().position(|op| *op == "remove_tree").unwrap();
    let trashed = calls.iter().position(|op| *op == "move_to_trash").unwrap();
    let unmounted = calls.iter().rposition(|op| *op == "unmount").unwrap();
    assert!(
        inside < unmounted && unmounted < trashed,
        "wipe inside, unmount, then trash: {calls:?}"
    );
}

#[test]
fn a_failed_move_to_the_trash_keeps_the_tombstone_and_a_retry_finishes() {
    let f = Fixture::new();
    let e = f.open(host());
    let v = e.create(CSI, request("v", Some(GIB))).unwrap();
    e.host().fail_op("move_to_trash");
    assert!(e.delete(CSI, &name("v")).is_err());
    let kept = e.get(&name("v")).unwrap();
    assert!(matches!(kept.phase, Phase::Deleting { .. }), "{kept:?}");
    assert!(e.host().has_image(v.placement.image.as_ref().unwrap()));

    e.host().heal();
    e.delete(CSI, &name("v")).unwrap();
    assert!(e.get(&name("v")).is_err());
    assert_eq!(e.host().images_beneath(&trash()).len(), 1);
}

#[test]
fn a_delete_cut_short_after_the_move_finishes_at_start_and_the_trash_is_emptied() {
    let f = Fixture::new();
    let store_path = f.config().store_path;
    let v = {
        let e = f.open(host());
        e.create(CSI, request("dying", Some(GIB))).unwrap()
    };
    {
        // The crash: the tombstone was written, the image moved, the record not forgotten.
        let store = Store::open(&store_path).unwrap();
        let mut dying: Volume = store.load_all().unwrap().pop().unwrap();
        dying.phase = Phase::Deleting { wipe: false };
        store.put(dying.name.as_str(), &dying).unwrap();
    }
    let h = host();
    let image = v.placement.image.clone().unwrap();
    h.make_dir(&v.placement.dir, &Ownership::default()).unwrap();
    h.create_image(&image, GIB, Some(FsType::Ext4)).unwrap();
    h.move_to_trash(&trash(), &[&image, &v.placement.dir])
        .unwrap();
    // And something an earlier run left in the trash.
    h.add_symlink(&trash().join("link"));

    let e = f.open(h);
    assert_eq!(
        e.recovery_report().finished_deletes,
        vec!["dying".to_string()]
    );
    assert!(e.get(&name("dying")).is_err());
    assert!(!e.host().is_dir(&v.placement.dir));
    assert_eq!(e.host().images_beneath(&trash()).len(), 1);
    // The start queued every trash: the image and the link go.
    assert_eq!(e.empty_trash(Duration::ZERO), 2);
    assert!(e.host().images_beneath(&trash()).is_empty());
}
