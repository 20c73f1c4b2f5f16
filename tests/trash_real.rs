//! The pools' trash for real (root): the host moves an image into it durably and empties
//! it without following a symlink (an image on another filesystem is unlinked in place);
//! the daemon's delete is done once the image is in the trash (it succeeds while the image
//! cannot be unlinked yet), and a restart empties what was left there.

#[path = "support/csi_daemon.rs"]
mod csi_daemon;
#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/host.rs"]
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use berth::csi::proto::*;
use berth::engine::TRASH_DIR;
use berth::host::linux::LinuxHost;
use berth::host::{Host, HostError};
use csi_daemon::{Clients, Daemon};
use support::{Scratch, chattr};

const MIB: u64 = 1 << 20;

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// A pool base with an allocated 4 MiB image in its `.images`, and something outside it.
fn pool_with_image(s: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let base = s.join("pool");
    let outside = s.join("outside");
    fs::create_dir_all(base.join(".images")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("keep"), b"not berth's").unwrap();
    let image = base.join(".images/v.img");
    let file = fs::File::create(&image).unwrap();
    file.set_len(4 * MIB).unwrap();
    (base, image, outside)
}

#[test]
fn an_image_moved_to_the_trash_leaves_its_place_at_once_and_emptying_unlinks_it() {
    harness::require_root();
    let s = Scratch::new("berth-trash-");
    let (base, image, _) = pool_with_image(&s);
    let host = LinuxHost::new();
    let trash = base.join(TRASH_DIR);

    assert_eq!(host.move_to_trash(&trash, &[&image]).unwrap(), 4 * MIB);
    assert!(!image.exists());
    let waiting = entries(&trash);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(fs::metadata(&waiting[0]).unwrap().len(), 4 * MIB);
    let mode = fs::metadata(&trash).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "only root looks into the trash");
    // Moved before: nothing to do.
    assert_eq!(host.move_to_trash(&trash, &[&image]).unwrap(), 0);

    assert_eq!(host.empty_trash(&trash).unwrap(), 1);
    assert!(entries(&trash).is_empty());
    assert_eq!(host.empty_trash(&trash).unwrap(), 0);
    fs::remove_dir(&trash).unwrap();
    assert_eq!(
        host.empty_trash(&trash).unwrap(),
        0,
        "a missing trash is empty"
    );
}

#[test]
fn emptying_the_trash_unlinks_symlinks_and_never_follows_them() {
    harness::require_root();
    let s = Scratch::new("berth-trash-");
    let (base, _, outside) = pool_with_image(&s);
    let host = LinuxHost::new();
    let trash = base.join(TRASH_DIR);
    fs::create_dir_all(trash.join("dir")).unwrap();
    std::os::unix::fs::symlink(&outside, trash.join("to-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("keep"), trash.join("to-file")).unwrap();
    std::os::unix::fs::symlink(&outside, trash.join("dir/inner")).unwrap();
    fs::write(trash.join("dir/file"), b"left by a crash").unwrap();

    assert_eq!(host.empty_trash(&trash).unwrap(), 3);
    assert!(entries(&trash).is_empty());
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"not berth's");
}

#[test]
fn a_trash_that_is_a_symlink_is_refused_and_nothing_moves() {
    harness::require_root();
    let s = Scratch::new("berth-trash-");
    let (base, image, outside) = pool_with_image(&s);
    let host = LinuxHost::new();
    let trash = base.join(TRASH_DIR);
    std::os::unix::fs::symlink(&outside, &trash).unwrap();

    let err = host.move_to_trash(&trash, &[&image]).unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    assert!(image.exists(), "the image stays where it was");
    let err = host.empty_trash(&trash).unwrap_err();
    assert!(matches!(err, HostError::Symlink { .. }), "{err}");
    assert_eq!(entries(&outside), vec![outside.join("keep")]);
}

fn mount_capability() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

async fn create(c: &mut Clients, id: &str) {
    c.controller
        .create_volume(CreateVolumeRequest {
            name: id.into(),
            volume_capabilities: vec![mount_capability()],
            capacity_range: Some(CapacityRange {
                required_bytes: (16 * MIB) as i64,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("CreateVolume");
}

async fn delete(
    c: &mut Clients,
    id: &str,
) -> Result<tonic::Response<DeleteVolumeResponse>, tonic::Status> {
    c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
}

/// Waits (up to 20 s) for the daemon's background task to leave `trash` empty.
fn wait_empty(daemon: &Daemon, trash: &Path) {
    let started = Instant::now();
    while !entries(trash).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the trash still holds {:?}\n{}",
            entries(trash),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_done_before_the_unlink_and_a_restart_empties_what_is_left() {
    let mut daemon = Daemon::start("");
    let mut c = daemon.clients().await;
    let pool = daemon.path().join("pool");
    let trash = pool.join(TRASH_DIR);
    create(&mut c, "first").await;
    delete(&mut c, "first").await.expect("DeleteVolume");
    wait_empty(&daemon, &trash);

    // Append-only: an image can be moved in, nothing can be unlinked from it.
    chattr("+a", &trash);
    create(&mut c, "second").await;
    let deleted = delete(&mut c, "second").await;
    let waiting = entries(&trash);
    chattr("-a", &trash);
    deleted.expect("DeleteVolume is done while its image cannot be unlinked yet");
    assert!(!pool.join(".images/second.img").exists());
    assert!(!pool.join("second").exists(), "its mount point went too");
    let names: Vec<String> = waiting
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "the image and the mount point: {names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("second.img.")),
        "{names:?}"
    );
    assert!(
        waiting.iter().any(|p| p.is_dir()
            && p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("second.")),
        "{names:?}"
    );

    // Planted while berth is down: emptied after the start, a link unlinked, not followed.
    daemon.stop();
    let outside = daemon.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("keep"), b"not berth's").unwrap();
    std::os::unix::fs::symlink(&outside, trash.join("planted-link")).unwrap();
    fs::write(trash.join("planted-file"), b"left by a crash").unwrap();
    daemon.spawn();
    let _c = daemon.clients().await;
    wait_empty(&daemon, &trash);
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"not berth's");
}

#[test]
fn an_image_on_another_filesystem_than_the_trash_is_unlinked_where_it_is() {
    harness::require_root();
    let s = Scratch::new("berth-trash-");
    let base = s.join("pool");
    let images = base.join(".images");
    fs::create_dir_all(&images).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &images,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=8m"),
    )
    .expect("mount a tmpfs");
    let image = images.join("v.img");
    fs::write(&image, vec![1u8; 4096]).unwrap();
    let host = LinuxHost::new();
    let trash = base.join(TRASH_DIR);

    let moved = host.move_to_trash(&trash, &[&image]);
    let left = image.exists();
    nix::mount::umount2(&images, nix::mount::MntFlags::UMOUNT_NOFOLLOW).expect("umount");
    assert_eq!(moved.unwrap(), 4096);
    assert!(!left, "the image is gone");
    assert!(entries(&trash).is_empty());
}
