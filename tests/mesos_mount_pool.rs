//! The documented stateful PostgreSQL app's volume as Marathon means it, on the real kernel,
//! as root: `type: mount` (a whole disk, used exclusively), `maxSize` (no disk larger than
//! that) and a `["path", "LIKE", ...]` constraint pick the disk; a second instance finds no
//! disk left and is told why, disk by disk. The sizes and the constraint's directory are
//! scaled to loop disks in a scratch directory.

#[path = "support/harness/mod.rs"]
mod harness;
mod mesos_support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use berth::engine::types::FsType;
use berth::host::Host;
use berth::host::linux::LinuxHost;
use mesos_support::{Daemon, Scratch, is_mounted, require_root};
use serde_json::{Value, json};

const POSTGRES: &str = include_str!("fixtures/marathon/stateful-postgres.json");
const MIB: u64 = 1 << 20;

/// A loop-backed ext4 disk of `mib` MiB mounted at `disks/NAME`.
fn disk(scratch: &Path, name: &str, mib: u64) -> PathBuf {
    let host = LinuxHost::new();
    let images = scratch.join("images");
    let mount_point = scratch.join("disks").join(name);
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&mount_point).unwrap();
    let image = images.join(format!("{name}.img"));
    host.create_image(&image, mib * MIB, Some(FsType::Ext4))
        .unwrap();
    host.mount_image(&image, &mount_point, FsType::Ext4)
        .unwrap();
    mount_point
}

fn prepare_args(task: &str, sandbox: &Path, definition: &Path) -> Vec<OsString> {
    vec![
        "prepare".into(),
        definition.into(),
        "--task-id".into(),
        task.into(),
        "--framework-id".into(),
        "marathon-1".into(),
        "--sandbox".into(),
        sandbox.into(),
    ]
}

fn sandbox(work_dir: &Path, run: &str) -> PathBuf {
    let dir = work_dir
        .join("slaves/S0/frameworks/marathon-1/executors/pg/runs")
        .join(run);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

#[test]
fn type_max_size_and_constraints_choose_the_disk() {
    require_root();
    let scratch = Scratch::new("berth-mmnt-");
    let root = scratch.path().canonicalize().unwrap();
    let ssd_small = disk(&root, "ssd-1", 96);
    disk(&root, "ssd-2", 256);
    disk(&root, "hdd-1", 96);
    let work_dir = root.join("mesos");
    std::fs::create_dir(&work_dir).unwrap();
    let pools = format!(
        "[[pools]]\nname = \"disks\"\nkind = \"mount\"\npaths = [\"{}\"]\n",
        root.join("disks").display()
    );
    let daemon = Daemon::start_with(&root, &work_dir, &pools);

    // The documented app, scaled: 64 MiB on a disk of at most 128 MiB whose path matches.
    let mut app: Value = serde_json::from_str(POSTGRES).unwrap();
    let persistent = &mut app["container"]["volumes"][0]["persistent"];
    assert_eq!(persistent["type"], "mount");
    persistent["size"] = json!(64);
    persistent["maxSize"] = json!(128);
    persistent["constraints"] = json!([[
        "path",
        "LIKE",
        format!("{}/ssd-.+", root.join("disks").display())
    ]]);
    let definition = root.join("postgres.json");
    std::fs::write(&definition, app.to_string()).unwrap();

    let first = sandbox(&work_dir, "run-1");
    let reply = daemon.mesos(prepare_args("postgres.t1", &first, &definition));
    let name = reply["volumes"][0]["volume"].as_str().unwrap().to_string();
    assert!(name.starts_with("postgres#pgdata#"), "{reply:#}");
    // The whole disk (its filesystem's capacity), more than the 64 MiB asked. The test disk
    // is a 96 MiB `create_image`, which sizes the image so its filesystem holds at least 96
    // MiB and at most 8 MiB more.
    let size = reply["volumes"][0]["size"].as_u64().unwrap();
    assert!(size > 64 * MIB && size <= 104 * MIB, "{reply:#}");
    assert!(is_mounted(&first.join("pgdata")));
    let (_, view) = daemon.volume(&name);
    assert_eq!(view["kind"], "mount", "{view:#}");
    assert_eq!(view["pool"], "disks");
    std::fs::write(first.join("pgdata/PG_VERSION"), "15\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(ssd_small.join("data/PG_VERSION")).unwrap(),
        "15\n",
        "the data is on ssd-1"
    );

    // A second instance: ssd-1 is taken, ssd-2 is larger than maxSize, hdd-1 fails the
    // constraint. The refusal names each, and nothing is left behind.
    let second = sandbox(&work_dir, "run-2");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("mesos")
        .args(prepare_args("postgres.t2", &second, &definition))
        .arg("--admin-socket")
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("berth refused (507)"), "{stderr}");
    assert!(
        stderr.contains(&format!("held by volume {name}")),
        "{stderr}"
    );
    assert!(stderr.contains("more than the maximum"), "{stderr}");
    assert!(stderr.contains("fails [\"path\",\"LIKE\""), "{stderr}");
    assert!(!is_mounted(&second.join("pgdata")));

    let reply = daemon.mesos([
        "cleanup",
        "--task-id",
        "postgres.t1",
        "--framework-id",
        "marathon-1",
        "--sandbox",
        first.to_str().unwrap(),
    ]);
    assert_eq!(reply["volumes"][0]["state"], "detached", "{reply:#}");
    assert_eq!(daemon.wipe(&name).0, 200);
    assert!(!ssd_small.join("data/PG_VERSION").exists(), "wiped");
}
