//! The documented two-container pod on the real kernel, as root: one persistent volume in the
//! executor's sandbox, mounted in each container's sandbox, read-only in the second; what the
//! first container writes the second reads and cannot change. Cleanup detaches the volume;
//! the next instance of the pod takes it over with its data.

#[path = "support/harness/mod.rs"]
mod harness;
mod mesos_support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use mesos_support::{Daemon, Scratch, is_mounted, require_root};
use serde_json::Value;

const POD: &str = include_str!("fixtures/marathon/persistent-volume-pod.json");

fn args(subcommand: &str, task: &str, sandbox: &Path, definition: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![subcommand.into()];
    args.extend(definition.map(OsString::from));
    args.extend([
        "--task-id".into(),
        task.into(),
        "--framework-id".into(),
        "marathon-1".into(),
        "--sandbox".into(),
        sandbox.into(),
    ]);
    args
}

fn executor_sandbox(work_dir: &Path, run: &str) -> PathBuf {
    let dir = work_dir
        .join("slaves/S0/frameworks/marathon-1/executors/pod/runs")
        .join(run);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

#[test]
fn a_pod_shares_one_volume_between_its_containers_read_only_where_asked() {
    require_root();
    let scratch = Scratch::new("berth-mpod-");
    let work_dir = scratch.path().join("mesos");
    std::fs::create_dir(&work_dir).unwrap();
    let daemon = Daemon::start(scratch.path(), &work_dir);
    let mut pod: Value = serde_json::from_str(POD).unwrap();
    pod["containers"][1]["volumeMounts"][0]["readOnly"] = Value::Bool(true);
    let definition = scratch.path().join("pod.json");
    std::fs::write(&definition, pod.to_string()).unwrap();

    let instance = "persistent-volume-pod.instance-1";
    let sandbox = executor_sandbox(&work_dir, "run-1");
    let reply = daemon.mesos(args("prepare", instance, &sandbox, Some(&definition)));
    let volume = &reply["volumes"][0];
    let name = volume["volume"].as_str().unwrap().to_string();
    assert!(name.starts_with("persistent-volume-pod#pst#"), "{reply:#}");
    assert_eq!(volume["size"], 10 << 20);
    let shared = sandbox.join("pst");
    let writer = sandbox.join(format!("tasks/{instance}.container1/pst1"));
    let reader = sandbox.join(format!("tasks/{instance}.container2/pst2"));
    for path in [&shared, &writer, &reader] {
        assert!(is_mounted(path), "{}", path.display());
    }

    // container1's command: `echo 'hello' >> pst1/foo`.
    std::fs::write(writer.join("foo"), "hello\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(reader.join("foo")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("foo")).unwrap(),
        "hello\n"
    );
    let refused = std::fs::write(reader.join("bar"), "x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");

    let reply = daemon.mesos(args("cleanup", instance, &sandbox, None));
    assert_eq!(reply["volumes"][0]["state"], "detached", "{reply:#}");
    assert_eq!(
        reply["volumes"][0]["unmounted"].as_array().unwrap().len(),
        3
    );
    for path in [&shared, &writer, &reader] {
        assert!(!is_mounted(path), "{}", path.display());
    }

    // The next instance of the pod takes the detached volume over, data included.
    let next = "persistent-volume-pod.instance-2";
    let sandbox = executor_sandbox(&work_dir, "run-2");
    let reply = daemon.mesos(args("prepare", next, &sandbox, Some(&definition)));
    assert_eq!(reply["volumes"][0]["volume"], name.as_str());
    assert_eq!(reply["volumes"][0]["origin"]["from_task"], instance);
    let reader = sandbox.join(format!("tasks/{next}.container2/pst2"));
    assert_eq!(
        std::fs::read_to_string(reader.join("foo")).unwrap(),
        "hello\n"
    );
    daemon.mesos(args("cleanup", next, &sandbox, None));
    assert_eq!(daemon.wipe(&name).0, 200);
}
