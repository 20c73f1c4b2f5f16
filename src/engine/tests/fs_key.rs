//! The `fs` request key: a volume that asks for a filesystem goes to a `loopfs` pool that
//! makes it; every other pool is refused with the reason.

use super::*;

/// Pools `ext4` (the fixture's), `xfs` (loopfs making xfs) and `plain` (backend none).
fn three_pools() -> (Fixture, FakeHost) {
    let mut f = Fixture::new();
    f.pools[0].name = "ext4".into();
    let mut xfs = f.pools[0].clone();
    xfs.name = "xfs".into();
    xfs.fs = FsType::Xfs;
    xfs.paths = vec![PathBuf::from("/xfs")];
    let mut plain = f.pools[0].clone();
    plain.name = "plain".into();
    plain.backend = BackendChoice::None;
    plain.paths = vec![PathBuf::from("/plain")];
    f.pools.push(xfs);
    f.pools.push(plain);
    let h = host();
    h.add_dir(Path::new("/xfs"));
    h.add_dir(Path::new("/plain"));
    (f, h)
}

fn asking(n: &str, fs: FsType) -> CreateRequest {
    let mut r = request(n, Some(GIB));
    r.spec.fs = Some(fs);
    r
}

#[test]
fn a_volume_asking_for_a_filesystem_goes_to_the_pool_that_makes_it() {
    let (f, h) = three_pools();
    let e = f.open(h);
    let x = e.create(CSI, asking("x", FsType::Xfs)).unwrap();
    assert_eq!(x.placement.pool, "xfs");
    assert_eq!(x.placement.fs, Some(FsType::Xfs));
    let y = e.create(CSI, asking("y", FsType::Ext4)).unwrap();
    assert_eq!(y.placement.pool, "ext4");
    assert_eq!(y.placement.fs, Some(FsType::Ext4));
    // Retried with the same request: the same volume; with another fs: a different request.
    e.create(CSI, asking("x", FsType::Xfs)).unwrap();
    let err = e.create(CSI, asking("x", FsType::Ext4)).unwrap_err();
    assert!(err.to_string().contains("fs"), "{err}");
}

#[test]
fn a_filesystem_no_pool_makes_is_refused_with_each_pools_reason() {
    let (mut f, h) = three_pools();
    f.pools.retain(|p| p.name != "xfs");
    let e = f.open(h);
    let calls = mutations(e.host());
    let err = e.create(CSI, asking("x", FsType::Xfs)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("pool ext4 makes ext4, not xfs"), "{text}");
    assert!(
        text.contains("pool plain makes no filesystems (backend none)"),
        "{text}"
    );
    assert!(e.get(&name("x")).is_err(), "nothing recorded");
    assert_eq!(mutations(e.host()), calls, "nothing made");
}
