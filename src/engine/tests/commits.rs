//! What each operation costs the store: one durable commit (one `fsync`) per state change,
//! none for a call that finds nothing to do, and the completions written without waiting for
//! the disk are finished by recovery when a crash loses them.

use super::*;

fn durable(e: &Engine<FakeHost>) -> u64 {
    e.metrics().store.durable_commits
}

/// The durable commits `run` makes.
fn fsyncs_of<T>(e: &Engine<FakeHost>, run: impl FnOnce() -> T) -> u64 {
    let before = durable(e);
    run();
    durable(e) - before
}

#[test]
fn each_state_change_makes_one_durable_commit_and_a_repeat_none() {
    let f = Fixture::new();
    let e = f.open(host());
    let plain = || request("dir", None);
    let target = || bind("/t/a", false);
    assert_eq!(fsyncs_of(&e, || e.create(CSI, plain()).unwrap()), 1);
    assert_eq!(
        e.get(&name("dir")).unwrap().placement.backend,
        Backend::None
    );
    assert_eq!(fsyncs_of(&e, || e.create(CSI, plain()).unwrap()), 0);
    assert_eq!(
        fsyncs_of(&e, || e.publish(CSI, &name("dir"), target()).unwrap()),
        1
    );
    assert_eq!(
        fsyncs_of(&e, || e.publish(CSI, &name("dir"), target()).unwrap()),
        0
    );
    assert_eq!(
        fsyncs_of(&e, || e.unpublish(CSI, &name("dir"), &target()).unwrap()),
        1
    );
    assert_eq!(
        fsyncs_of(&e, || e.unpublish(CSI, &name("dir"), &target()).unwrap()),
        0
    );
    assert_eq!(fsyncs_of(&e, || e.delete(CSI, &name("dir")).unwrap()), 1);
    assert_eq!(
        fsyncs_of(&e, || e.delete(CSI, &name("dir")).unwrap_err()),
        0
    );
    // A loopfs volume's create is made durable as a whole before it is answered.
    assert_eq!(
        fsyncs_of(&e, || e.create(CSI, request("img", Some(GIB))).unwrap()),
        2
    );
}

/// Rewrites stored records as a crash that lost their completions leaves them.
fn forge(f: &Fixture, change: impl Fn(&mut Volume)) {
    let store = Store::open(&f.config().store_path).unwrap();
    let mut all: Vec<Volume> = store.load_all().unwrap();
    for v in &mut all {
        change(v);
        store.put(v.name.as_str(), v).unwrap();
    }
}

#[test]
fn a_plain_create_whose_ready_record_was_lost_is_completed_at_start() {
    let f = Fixture::new();
    {
        let e = f.open(host());
        e.create(CSI, request("answered", None)).unwrap();
    }
    forge(&f, |v| v.phase = Phase::Creating);
    // Its directories may or may not have reached the disk: here, none did.
    let e = f.open(host());
    let report = e.recovery_report();
    assert_eq!(report.completed_creates, vec!["answered".to_string()]);
    assert!(report.rolled_back_creates.is_empty());
    let v = e.get(&name("answered")).unwrap();
    assert_eq!(v.phase, Phase::Ready);
    assert!(e.host().is_dir(&v.placement.data), "made again");
    // Durably so: another restart finds it ready and does nothing.
    drop(e);
    let h = host();
    h.make_dir(&v.placement.dir, &Ownership::default()).unwrap();
    h.make_dir(&v.placement.data, &Ownership::default())
        .unwrap();
    let e = f.open(h);
    assert!(e.recovery_report().completed_creates.is_empty());
    assert_eq!(e.get(&name("answered")).unwrap().phase, Phase::Ready);
}

#[test]
fn a_publish_whose_published_record_was_lost_is_confirmed_with_its_deadline_cleared() {
    let f = Fixture::new();
    let data;
    {
        let e = f.open(host());
        e.create_pending(CSI, request("p", None), Duration::from_secs(60))
            .unwrap();
        let v = e.publish(CSI, &name("p"), bind("/t/p", false)).unwrap();
        assert_eq!(v.pending_until, None);
        data = v.placement.data.clone();
    }
    forge(&f, |v| {
        v.pending_until = Some(1);
        v.attached_at = None;
        for p in &mut v.publications {
            p.state = PublicationState::Publishing;
        }
    });
    let h = host();
    h.make_dir(&data, &Ownership::default()).unwrap();
    h.add_dir(Path::new("/t/p"));
    h.bind_mount(Path::new("/pool"), &data, Path::new("/t/p"), false)
        .unwrap();
    let e = f.open(h);
    assert_eq!(
        e.recovery_report().confirmed_publications,
        vec![("p".to_string(), "/t/p".to_string())]
    );
    let v = e.get(&name("p")).unwrap();
    assert_eq!(v.pending_until, None, "published, so no longer pending");
    assert!(v.attached_at.is_some());
    assert!(e.expire_pending_reservations(u64::MAX).is_empty());
}

#[test]
fn a_grow_cut_short_by_a_crash_is_finished_at_start() {
    let mut f = Fixture::new();
    f.pools[0].backend = BackendChoice::None;
    {
        let e = f.open(host());
        e.create(CSI, request("grown", Some(GIB))).unwrap();
    }
    // The intent reached the disk; the grow and its record did not.
    forge(&f, |v| v.growing_to = Some(2 * GIB));
    let h = host();
    h.add_dir(Path::new("/pool/volumes/grown/data"));
    let e = f.open(h);
    assert_eq!(
        e.recovery_report().finished_grows,
        vec!["grown".to_string()]
    );
    let v = e.get(&name("grown")).unwrap();
    assert_eq!(v.size, Some(2 * GIB));
    assert_eq!(v.growing_to, None);
}

#[test]
fn a_failed_grow_leaves_the_size_and_no_intent() {
    let f = Fixture::new();
    let h = host();
    let e = f.open(h);
    e.create(CSI, request("v", Some(GIB))).unwrap();
    e.host().fail_op("grow_image");
    e.expand(CSI, &name("v"), 2 * GIB).unwrap_err();
    let v = e.get(&name("v")).unwrap();
    assert_eq!(v.size, Some(GIB));
    assert_eq!(v.growing_to, None, "the intent is cleared");
    drop(e);
    let store = Store::open(&f.config().store_path).unwrap();
    let stored: Vec<Volume> = store.load_all().unwrap();
    assert_eq!(stored[0].growing_to, None, "durably too");
}
