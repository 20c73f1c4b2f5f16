use super::*;

#[test]
fn btrfs_model() {
    let host = FakeHost::new(1 << 30);
    let pool = Path::new("/pool");
    let vol = Path::new("/pool/vol");
    assert_eq!(host.fs_kind(pool).ok(), Some(FsKind::Ext4));
    assert!(matches!(
        host.btrfs_create_subvolume(vol),
        Err(HostError::Unsupported(_))
    ));
    host.set_fs_kind(pool, FsKind::Btrfs);
    assert_eq!(host.fs_kind(vol).ok(), Some(FsKind::Btrfs));
    host.btrfs_create_subvolume(vol).expect("create");
    host.btrfs_create_subvolume(vol).expect("again");
    assert!(host.is_subvolume(vol) && host.is_dir(vol));
    assert!(matches!(
        host.btrfs_set_limit(vol, 1 << 20),
        Err(HostError::Unsupported(_))
    ));
    host.btrfs_enable_quota(pool).expect("quota");
    host.btrfs_set_limit(vol, 1 << 20).expect("limit");
    assert_eq!(host.subvolume_limit(vol), Some(Some(1 << 20)));
    host.btrfs_set_limit(vol, 0).expect("no limit");
    assert_eq!(host.subvolume_limit(vol), Some(None));
    assert_eq!(host.btrfs_usage(vol).map(|u| u.inodes).ok(), Some(1));
    // A plain directory is not a subvolume; remove_tree does not take a subvolume.
    host.add_dir(Path::new("/pool/plain"));
    assert!(
        host.btrfs_create_subvolume(Path::new("/pool/plain"))
            .is_err()
    );
    assert!(
        host.btrfs_delete_subvolume(Path::new("/pool/plain"))
            .is_err()
    );
    assert!(matches!(
        host.remove_tree(pool, vol),
        Err(HostError::CrossesMount { .. })
    ));
    // Nested subvolumes and mounts from it are refused.
    let inner = Path::new("/pool/vol/inner");
    host.btrfs_create_subvolume(inner).expect("inner");
    assert_eq!(
        host.btrfs_delete_subvolume(vol)
            .err()
            .and_then(|e| e.errno()),
        Some(libc::ENOTEMPTY)
    );
    host.btrfs_delete_subvolume(inner).expect("inner");
    host.add_dir(Path::new("/target"));
    host.bind_mount(Path::new("/"), vol, Path::new("/target"), false)
        .expect("bind");
    assert!(host.btrfs_delete_subvolume(vol).is_err());
    host.unmount(Path::new("/target")).expect("unmount");
    host.btrfs_delete_subvolume(vol).expect("delete");
    host.btrfs_delete_subvolume(vol).expect("missing");
    assert!(!host.is_dir(vol) && !host.is_subvolume(vol));
    let ops: Vec<&str> = host.calls().iter().map(|c| c.op).collect();
    assert!(ops.contains(&"btrfs_set_limit") && ops.contains(&"btrfs_delete_subvolume"));
}

#[test]
fn project_quota_model() {
    let host = FakeHost::new(1 << 30);
    let pool = Path::new("/pool");
    let vol = Path::new("/pool/vol");
    host.add_dir(pool);
    host.add_dir(vol);
    assert!(matches!(
        host.project_quota_support(pool),
        Err(HostError::Unsupported(_))
    ));
    assert!(host.set_project_quota(vol, 7, 1 << 20).is_err());
    host.set_project_quotas(true);
    host.project_quota_support(pool).expect("supported");
    assert!(host.set_project_quota(vol, 0, 1 << 20).is_err());
    host.set_project_quota(vol, 7, 1 << 20).expect("set");
    assert_eq!(host.project_of(vol), Some((7, 1 << 20)));
    host.reserve_project_id(9);
    let ids: Vec<u32> = host
        .project_ids_in_use(pool)
        .expect("ids")
        .into_iter()
        .collect();
    assert_eq!(ids, vec![7, 9]);
    assert_eq!(
        host.project_quota_usage(pool, 7).map(|u| u.inodes).ok(),
        Some(1)
    );
    assert!(host.clear_project_quota(vol, 8).is_err());
    host.clear_project_quota(vol, 7).expect("clear");
    host.clear_project_quota(vol, 7).expect("again");
    assert_eq!(host.project_of(vol), None);
    host.fail_op("set_project_quota");
    assert!(matches!(
        host.set_project_quota(vol, 7, 1),
        Err(HostError::Injected(_))
    ));
}
