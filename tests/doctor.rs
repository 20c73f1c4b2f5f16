//! `berth doctor` on the real kernel, as root: a healthy node (a daemon running with its
//! pool and plugin directory on a shared mount) and deliberately broken ones: a pool on a
//! full filesystem, a plugin directory on a private mount, and no /dev/loop-control (in a
//! private mount namespace, so the host's /dev is untouched). Every mount is made inside a
//! temp dir and undone by the guard.

#[path = "support/harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::process::{Command, Output};

use harness::cleanup::Scratch;
use harness::serve::{Serve, Served};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn sh(command: &str) {
    let status = Command::new("sh").args(["-c", command]).status().unwrap();
    assert!(status.success(), "{command}");
}

/// A temp dir bind-mounted on itself and made shared, as / is on a systemd host; a pool
/// `plain` and the admin and Docker sockets beneath it.
struct Node {
    // Field order is drop order: the daemon stops before the mounts are undone.
    daemon: Option<Served>,
    dir: PathBuf,
    _scratch: Scratch,
}

impl Node {
    fn new(test: &str) -> Self {
        harness::require_root();
        let scratch = Scratch::new(&format!("berth-doctor-{test}-"));
        let dir = scratch.path().to_path_buf();
        let node = Self {
            daemon: None,
            dir: dir.clone(),
            _scratch: scratch,
        };
        sh(&format!("mount --bind {0} {0}", dir.display()));
        sh(&format!("mount --make-rshared {}", dir.display()));
        for sub in ["plain", "plugins", "state"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        node.write_config("plain");
        node
    }

    fn write_config(&self, pool_dir: &str) {
        let d = self.dir.display();
        std::fs::write(
            self.dir.join("config.toml"),
            format!(
                r#"
state_dir = "{d}/state"
node_id = "doctor-node"
[listen]
csi = ""
docker = "{d}/plugins/berth.sock"
admin = "{d}/admin.sock"
[[pools]]
name = "plain"
kind = "root"
paths = ["{d}/{pool_dir}"]
backend = "none"
"#
            ),
        )
        .unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    fn start_daemon(&mut self) {
        let mut served = Serve::new(self.config(), self.dir.join("berth.log")).spawn();
        served.wait_for_socket(&self.dir.join("admin.sock"));
        self.daemon = Some(served);
    }

    /// `berth doctor -o json`, optionally inside `wrapper` (a shell prefix).
    fn doctor_in(&self, wrapper: &str) -> (Output, Vec<Value>) {
        let command = format!(
            "{wrapper} {BERTH} doctor --config {} -o json",
            self.config().display()
        );
        let out = Command::new("sh")
            .args(["-c", &command])
            .env_remove("BERTH_CONFIG")
            .output()
            .unwrap();
        let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        });
        (out, report)
    }

    fn doctor(&self) -> (Output, Vec<Value>) {
        self.doctor_in("")
    }
}

/// The report's entry whose name contains `needle`.
fn check<'a>(report: &'a [Value], needle: &str) -> &'a Value {
    report
        .iter()
        .find(|c| c["check"].as_str().unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no check {needle:?} in {report:#?}"))
}

fn failed(report: &[Value]) -> Vec<String> {
    report
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["check"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_healthy_node_passes_and_prints_a_table() {
    let mut node = Node::new("healthy");
    node.start_daemon();
    let (out, report) = node.doctor();
    assert!(failed(&report).is_empty(), "{report:#?}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "loop devices",
        "propagation",
        "free space",
        "size limits",
        "docker plugin directory",
        "admin socket",
        "store",
        "daemon health",
        "reservations",
    ] {
        let c = check(&report, name);
        assert!(c["status"] == "ok" || c["status"] == "skip", "{c}");
    }
    assert_eq!(check(&report, "daemon health")["status"], "ok");
    assert_eq!(
        check(&report, "store")["status"],
        "ok",
        "the daemon committed"
    );

    let table = Command::new(BERTH)
        .args(["doctor", "--config"])
        .arg(node.config())
        .output()
        .unwrap();
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("CHECK "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("daemon health") && l.contains(" ok ")),
        "{text}"
    );
}

#[test]
fn a_stopped_daemon_fails_with_what_to_do() {
    let node = Node::new("stopped");
    let (out, report) = node.doctor();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(failed(&report), vec!["daemon health".to_string()]);
    assert!(
        check(&report, "daemon health")["fix"]
            .as_str()
            .unwrap()
            .contains("systemctl start berth")
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The line the README's troubleshooting section quotes.
    assert!(stderr.starts_with("berth: 1 of "), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("checks failed (each says what to do)"),
        "{stderr}"
    );
    let readme = include_str!("../README.md");
    assert!(readme.contains("checks failed (each says what to do)"));
}

#[test]
fn a_pool_on_a_full_filesystem_fails() {
    let mut node = Node::new("full");
    let full = node.dir.join("full");
    std::fs::create_dir(&full).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=8m berth-doctor-full {}",
        full.display()
    ));
    sh(&format!(
        "dd if=/dev/zero of={}/fill bs=1M count=16 2>/dev/null || true",
        full.display()
    ));
    node.write_config("full");
    node.start_daemon();
    let (out, report) = node.doctor();
    assert_eq!(out.status.code(), Some(1));
    let space = check(&report, "free space");
    assert_eq!(space["status"], "fail", "{space}");
    assert!(
        space["detail"]
            .as_str()
            .unwrap()
            .contains("0B available of 8MiB"),
        "{space}"
    );
    assert_eq!(failed(&report).len(), 1, "{report:#?}");
    // The daemon's figures: nothing reserved, yet nothing available.
    let room = check(&report, "reservations");
    assert_eq!(room["status"], "warn", "{room}");
    let detail = room["detail"].as_str().unwrap();
    assert!(
        detail.contains("0B reserved of 8MiB; 0B available for new volumes: no new volume fits"),
        "{room}"
    );
}

#[test]
fn a_plugin_directory_on_a_private_mount_fails() {
    let mut node = Node::new("private");
    let plugins = node.dir.join("plugins");
    sh(&format!(
        "mount --bind {0} {0} && mount --make-private {0}",
        plugins.display()
    ));
    node.start_daemon();
    let (out, report) = node.doctor();
    assert_eq!(out.status.code(), Some(1));
    let c = check(&report, "docker plugin directory");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("private mount"),
        "{c}"
    );
    assert_eq!(
        c["fix"],
        format!("mount --make-rshared {}", plugins.display())
    );
    assert_eq!(failed(&report).len(), 1, "only that: {report:#?}");
}

#[test]
fn no_loop_control_fails() {
    let node = Node::new("noloop");
    let config = std::fs::read_to_string(node.config()).unwrap();
    std::fs::write(
        node.config(),
        config.replace("backend = \"none\"", "backend = \"loopfs\""),
    )
    .unwrap();
    // On the host it is there.
    let (_, report) = node.doctor();
    assert_eq!(check(&report, "loop devices")["status"], "ok");
    // An empty /dev in a private mount namespace: berth doctor finds no loop-control there.
    let (out, report) = node.doctor_in(
        "unshare --mount --propagation private sh -c 'mount -t tmpfs none /dev && exec \"$0\" \"$@\"'",
    );
    assert_eq!(out.status.code(), Some(1));
    let c = check(&report, "loop devices");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["fix"].as_str().unwrap().contains("modprobe loop"), "{c}");
}
