//! A volume made for one publication: created, granted and published under one volume
//! lock, and gone again (volume, image, mount and record) when its publish fails.

use super::*;

fn ephemeral(n: &str, target: &str, group: Option<u32>) -> EphemeralRequest {
    EphemeralRequest {
        create: request(n, Some(GIB)),
        target: bind(target, false),
        group,
    }
}

#[test]
fn a_failed_ephemeral_publish_leaves_no_volume_and_no_record() {
    let f = Fixture::new();
    let e = f.open(host());
    e.host().fail_op("bind_mount");
    let err = e
        .publish_ephemeral(CSI, ephemeral("eph", "/t/a", Some(3000)))
        .unwrap_err();
    assert!(err.to_string().contains("bind-mounting"), "{err}");
    assert!(matches!(
        e.get(&name("eph")),
        Err(EngineError::NotFound { .. })
    ));
    assert!(
        !e.host()
            .has_image(Path::new("/pool/volumes/.images/eph.img"))
    );
    assert!(!e.host().is_dir(Path::new("/pool/volumes/eph")));
    assert!(!e.host().is_dir(Path::new("/t/a")));
    assert_eq!(e.host().mount_count(), 0);
    drop(e);
    // Nothing durable either: a restart finds no record to recover.
    let e = f.open(host());
    assert!(e.list(&VolumeFilter::default()).is_empty());
    assert!(e.recovery_report().rolled_back_creates.is_empty());
    // Once the host works again the same call succeeds.
    let v = e
        .publish_ephemeral(CSI, ephemeral("eph", "/t/a", Some(3000)))
        .unwrap();
    assert_eq!(v.publications.len(), 1);
    assert_eq!(
        e.host().ownership_of(&v.placement.data).unwrap().gid,
        Some(3000)
    );
}

#[test]
fn a_retried_ephemeral_publish_keeps_the_volume_it_did_not_make() {
    let f = Fixture::new();
    let e = f.open(host());
    let made = e
        .publish_ephemeral(CSI, ephemeral("eph", "/t/a", None))
        .unwrap();
    // Asked again: the same volume, published once.
    let again = e
        .publish_ephemeral(CSI, ephemeral("eph", "/t/a", None))
        .unwrap();
    assert_eq!(again.created_at, made.created_at);
    assert_eq!(again.publications.len(), 1);
    // A second publication that fails removes nothing of a volume this call did not make.
    let mounts = e.host().mount_count();
    e.host().fail_op("bind_mount");
    e.publish_ephemeral(CSI, ephemeral("eph", "/t/b", None))
        .unwrap_err();
    e.host().heal();
    let kept = e.get(&name("eph")).unwrap();
    assert_eq!(kept.publications.len(), 1);
    assert_eq!(e.host().mount_count(), mounts);
}

#[test]
fn an_ephemeral_publish_on_a_busy_volume_is_refused_and_makes_nothing() {
    let f = Fixture::new();
    let e = f.open(host());
    let before = mutations(e.host());
    let guard = e.locks.acquire(&name("eph"), false).unwrap();
    let err = e
        .publish_ephemeral(CSI, ephemeral("eph", "/t/a", None))
        .unwrap_err();
    assert!(matches!(err, EngineError::Busy { .. }), "{err}");
    drop(guard);
    assert!(e.get(&name("eph")).is_err());
    assert_eq!(mutations(e.host()), before);
}
