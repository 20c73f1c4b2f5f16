//! The Mesos hook makes and checks mount points beneath a sandbox or a container root
//! filesystem through the host layer's fd-relative walk, which follows no symbolic link. On
//! the real kernel: a link planted in a sandbox, or in an image's root filesystem, pointing
//! outside is refused, and nothing is created outside, neither a directory nor a mount; the
//! walk itself, called directly, refuses a link at any depth. Needs root.

#[path = "support/harness/mod.rs"]
mod harness;
mod mesos_support;

use std::path::Path;

use berth::host::linux::LinuxHost;
use berth::host::{Host, HostError};
use mesos_support::{Daemon, Scratch, mount_points, require_root};
use serde_json::{Value, json};

const MYSQL: &str = include_str!("fixtures/marathon/stateful-mysql.json");

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn prepare(daemon: &Daemon, definition: &Path, sandbox: &Path, rootfs: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["mesos", "prepare"])
        .arg(definition)
        .args(["--task-id", "mysql.t1", "--framework-id", "marathon-1"])
        .arg("--sandbox")
        .arg(sandbox)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--admin-socket")
        .arg(&daemon.socket)
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_ADMIN_TOKEN")
        .env_remove("BERTH_TOKEN_FILE")
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_link_planted_in_a_sandbox_or_an_image_pointing_outside_is_refused_and_nothing_is_made_there() {
    require_root();
    let scratch = Scratch::new("berth-mlink-");
    let root = scratch.path().canonicalize().unwrap();
    let work_dir = root.join("mesos");
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let sandbox = work_dir.join("slaves/S0/frameworks/marathon-1/executors/E/runs/c1");
    let rootfs = work_dir.join("provisioner/containers/c1/rootfs");
    std::fs::create_dir_all(&sandbox).unwrap();
    std::fs::create_dir_all(&rootfs).unwrap();
    let daemon = Daemon::start(&root, &work_dir);
    let mut app: Value = serde_json::from_str(MYSQL).unwrap();
    app["container"]["volumes"][0]["persistent"]["size"] = json!(32);
    let definition = root.join("mysql.json");
    std::fs::write(&definition, app.to_string()).unwrap();

    // An image whose /var points outside: the alias /var/lib/mysql would land there.
    std::os::unix::fs::symlink(&outside, rootfs.join("var")).unwrap();
    let (ok, stderr) = prepare(&daemon, &definition, &sandbox, &rootfs);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert!(stderr.contains("var is a symbolic link"), "{stderr}");
    assert_eq!(entries(&outside), 0, "nothing made outside");

    // A task that planted a link where its volume goes.
    std::fs::remove_file(rootfs.join("var")).unwrap();
    std::os::unix::fs::symlink(&outside, sandbox.join("mysqldata")).unwrap();
    let (ok, stderr) = prepare(&daemon, &definition, &sandbox, &rootfs);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("mysqldata is a symbolic link"), "{stderr}");
    assert_eq!(entries(&outside), 0, "nothing made outside");
    assert!(
        !mount_points().iter().any(|m| m.starts_with(&outside)),
        "nothing mounted outside"
    );
    let (_, volumes) = daemon.admin("GET", "/v1/volumes");
    assert_eq!(volumes["volumes"], json!([]), "no volume reserved");

    // Without the links the same task is prepared: the parents are made by the walk.
    std::fs::remove_file(sandbox.join("mysqldata")).unwrap();
    let (ok, stderr) = prepare(&daemon, &definition, &sandbox, &rootfs);
    assert!(ok, "{stderr}\n{}", daemon.log());
    assert!(rootfs.join("var/lib").is_dir());
    assert!(mount_points().contains(&rootfs.join("var/lib/mysql")));
    daemon.mesos([
        "cleanup",
        "--task-id",
        "mysql.t1",
        "--framework-id",
        "marathon-1",
        "--sandbox",
        sandbox.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
    ]);
}

#[test]
fn the_walk_refuses_a_link_at_any_depth_and_makes_nothing_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("a/b/link")).unwrap();
    std::fs::write(root.join("a/file"), "x").unwrap();
    let host = LinuxHost::new();

    for create in [false, true] {
        let refused = host
            .dirs_beneath(&root, Path::new("a/b/link/c/d"), create)
            .unwrap_err();
        assert!(
            matches!(&refused, HostError::Symlink { path } if path.ends_with("a/b/link")),
            "{refused}"
        );
        assert_eq!(entries(&outside), 0, "create={create}");
        let not_dir = host
            .dirs_beneath(&root, Path::new("a/file/x"), create)
            .unwrap_err();
        assert!(not_dir.to_string().contains("not a directory"), "{not_dir}");
    }
    // The root itself may not be a link either.
    std::os::unix::fs::symlink(&root, dir.path().join("root-link")).unwrap();
    let refused = host
        .dirs_beneath(&dir.path().join("root-link"), Path::new("x"), true)
        .unwrap_err();
    assert!(matches!(refused, HostError::Symlink { .. }), "{refused}");
    // Checking stops at the first missing component and makes nothing; making makes all.
    host.dirs_beneath(&root, Path::new("a/new/deeper"), false)
        .unwrap();
    assert!(!root.join("a/new").exists());
    host.dirs_beneath(&root, Path::new("a/new/deeper"), true)
        .unwrap();
    assert!(root.join("a/new/deeper").is_dir());
    host.dirs_beneath(&root, Path::new("a/new/deeper"), true)
        .unwrap();
    assert!(
        host.dirs_beneath(&root, Path::new("a/../escape"), true)
            .is_err()
    );
    assert!(!dir.path().join("escape").exists());
}
