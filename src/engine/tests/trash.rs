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
    assert_eq!(e.background_work(Duration::ZERO), 0);
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

    assert_eq!(e.background_work(Duration::ZERO), 1);
    assert!(e.host().images_beneath(&trash()).is_empty());
    // Nothing more is due until the next delete.
    assert_eq!(e.background_work(Duration::ZERO), 0);
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
    assert_eq!(e.background_work(Duration::ZERO), 2);
    assert!(e.host().images_beneath(&trash()).is_empty());
}

#[test]
fn a_create_takes_a_stock_image_of_its_size_and_the_stock_is_refilled_in_the_background() {
    let f = Fixture::new();
    let e = f.open(host());
    let stock = PathBuf::from("/pool/volumes").join(STOCK_DIR);
    e.background_work(Duration::ZERO);
    let size = 16 << 20;
    e.create(CSI, request("a", Some(size))).unwrap();
    assert!(
        e.host().images_beneath(&stock).is_empty(),
        "made in the background"
    );
    e.background_work(Duration::ZERO);
    let made = e.host().images_beneath(&stock);
    assert_eq!(made.len(), 1, "{made:?}");
    // One per size: asking again makes nothing more.
    e.create(CSI, request("other", Some(2 * size))).unwrap();
    e.background_work(Duration::ZERO);
    assert_eq!(e.host().images_beneath(&stock).len(), 2);

    let b = e.create(CSI, request("b", Some(size))).unwrap();
    let image = b.placement.image.clone().unwrap();
    assert!(e.host().has_image(&image));
    let left = e.host().images_beneath(&stock);
    assert!(
        !left.contains(&made[0]),
        "the stock image became b's: {left:?}"
    );
    assert_eq!(left.len(), 1, "{left:?}");
    e.background_work(Duration::ZERO);
    assert_eq!(e.host().images_beneath(&stock).len(), 2, "refilled");
    // Bigger sizes are never kept in stock.
    e.create(
        CSI,
        request("big", Some(stock::STOCK_MAX_BYTES + (1 << 20))),
    )
    .unwrap();
    e.background_work(Duration::ZERO);
    assert_eq!(e.host().images_beneath(&stock).len(), 2);
}

#[test]
fn the_stock_is_emptied_at_start() {
    let f = Fixture::new();
    let h = host();
    let stock = PathBuf::from("/pool/volumes").join(STOCK_DIR);
    h.stock_image(&stock, 16 << 20, FsType::Ext4).unwrap();
    h.add_file(&stock.join(".tmp-ext4-16777216.half"));
    let e = f.open(h);
    assert_eq!(e.background_work(Duration::ZERO), 2);
    assert!(e.host().images_beneath(&stock).is_empty());
}
