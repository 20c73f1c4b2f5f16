//! Test support: the real `berth` binary serving the Docker volume plugin API on a socket of
//! its own, and a tiny HTTP/1.1 client for that socket.
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "support/docker_plugin.rs"]
//! mod docker_plugin;
//! ```
//!
//! Every [`Berth`] gets a temp directory (state, pool, config, log) under `/var/tmp` and a
//! plugin socket `/run/docker/plugins/berth-test-<pid>-<n>.sock` (driver
//! `berth-test-<pid>-<n>`), so tests run in parallel with each other and with a real berth.
//! Dropping it stops the daemon and removes everything it made: mounts and loop devices
//! under its directory, the directory, the socket and its lock file, even after a failed
//! assertion. Needs root; without it the test fails (it is not skipped). Built on
//! [`crate::harness`]: include `support/harness/mod.rs` as `mod harness` beside it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

#[allow(unused_imports)] // Each test uses a part.
pub use crate::harness::cleanup::assert_nothing_left_under as assert_nothing_mounted_under;
use crate::harness::cleanup::clean_under;
#[allow(unused_imports)] // Each test uses a part.
pub use crate::harness::http::{read_response, request};
use crate::harness::serve::{Serve, Served};

/// Where dockerd looks for plugin sockets.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running `berth serve` with only the Docker front-end on; see the module docs.
pub struct Berth {
    served: Option<Served>,
    dir: PathBuf,
    socket: PathBuf,
    driver: String,
}

impl Berth {
    /// Starts berth with a default root pool (loopfs enforces sizes) and waits until the
    /// plugin socket answers.
    pub fn start() -> Berth {
        Self::start_with_pool("")
    }

    /// Starts berth; `pool_extra` is appended to the pool's TOML table (e.g. `capacity`).
    pub fn start_with_pool(pool_extra: &str) -> Berth {
        crate::harness::require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let driver = format!("berth-test-{}-{n}", std::process::id());
        let dir = PathBuf::from(format!("/var/tmp/{driver}"));
        if dir.exists() {
            remove_dir(&dir);
        }
        std::fs::create_dir_all(dir.join("pool")).unwrap();
        let socket = PathBuf::from(format!("{PLUGIN_DIR}/{driver}.sock"));
        let config = format!(
            r#"state_dir = "{dir}/state"
node_id = "test-node"
[listen]
csi = ""
admin = "{dir}/admin.sock"
docker = "{socket}"
[[pools]]
name = "default"
kind = "root"
paths = ["{dir}/pool"]
{pool_extra}
"#,
            dir = dir.display(),
            socket = socket.display(),
        );
        std::fs::write(dir.join("berth.toml"), config).unwrap();
        let mut berth = Berth {
            served: None,
            dir,
            socket,
            driver,
        };
        berth.launch();
        berth
    }

    fn serve(&self, config: &str) -> Serve {
        Serve::new(self.dir.join(config), self.log_path()).log_level("debug")
    }

    /// Starts the daemon process (again) and waits for its socket.
    pub fn launch(&mut self) {
        assert!(self.served.is_none(), "berth is already running");
        let mut served = self.serve("berth.toml").spawn();
        served.wait_until("answer /Plugin.Activate", || {
            matches!(self.try_post("/Plugin.Activate", ""), Ok((200, _)))
        });
        self.served = Some(served);
    }

    /// Stops the daemon with SIGTERM and waits for it; panics if it does not exit cleanly.
    pub fn stop(&mut self) {
        if let Some(mut served) = self.served.take() {
            served.stop_cleanly();
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would: the socket file stays behind.
    pub fn crash(&mut self) {
        if let Some(mut served) = self.served.take() {
            served.kill();
        }
    }

    /// Starts a second `berth serve` with its own state and pool but this instance's plugin
    /// socket, and returns its output: it should exit by itself because the socket is taken.
    pub fn second_instance_output(&self) -> std::process::Output {
        let config = std::fs::read_to_string(self.dir.join("berth.toml"))
            .unwrap()
            .replace("/state\"", "/state2\"")
            .replace("/pool\"", "/pool2\"");
        std::fs::write(self.dir.join("berth2.toml"), config).unwrap();
        self.serve("berth2.toml").run_to_exit()
    }

    /// The driver name Docker knows this plugin by.
    pub fn driver(&self) -> &str {
        &self.driver
    }
    pub fn socket(&self) -> &Path {
        &self.socket
    }
    /// The admin API's socket (for `berth volume --admin-socket`).
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn pool(&self) -> PathBuf {
        self.dir.join("pool")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("berth.log")
    }
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// What the pool holds besides berth's own (empty) directories: volumes, images and
    /// retained data. Empty means nothing was left behind. The trash is not looked into:
    /// what it holds was deleted and waits to be unlinked in the background.
    pub fn pool_leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.pool()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name();
            if name.is_some_and(|n| n == ".trash") {
                continue;
            }
            let own = name.is_some_and(|n| n == ".images" || n == ".retained");
            if !own {
                out.push(path);
            } else {
                out.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
        }
        out
    }

    /// POSTs a JSON body; returns the status and the decoded reply.
    pub fn try_post(&self, path: &str, body: &str) -> std::io::Result<(u16, Value)> {
        let (status, raw) = request(&self.socket, "POST", path, &[], body.as_bytes())?;
        let value = serde_json::from_slice(&raw).map_err(|e| {
            std::io::Error::other(format!(
                "{path}: reply {:?}: {e}",
                String::from_utf8_lossy(&raw)
            ))
        })?;
        Ok((status, value))
    }

    #[track_caller]
    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.try_post(path, &body.to_string())
            .unwrap_or_else(|e| panic!("{path} {body}: {e}\n{}", self.log()))
    }

    /// POSTs and expects success (200, empty `Err`).
    #[track_caller]
    pub fn ok(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.post(path, body.clone());
        assert_eq!(status, 200, "{path} {body}: {value}");
        assert_eq!(value.get("Err").and_then(Value::as_str).unwrap_or(""), "");
        value
    }

    /// POSTs and expects a failure; returns the status and the `Err` message.
    #[track_caller]
    pub fn err(&self, path: &str, body: Value) -> (u16, String) {
        let (status, value) = self.post(path, body.clone());
        assert_ne!(status, 200, "{path} {body} should fail: {value}");
        let message = value["Err"].as_str().unwrap_or_default().to_string();
        assert!(!message.is_empty(), "{path} {body}: no Err in {value}");
        (status, message)
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.crash();
        remove_dir(&self.dir);
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(format!("{}.lock", self.socket.display()));
    }
}

/// Unmounts everything below `dir`, detaches loop devices over files in it, and removes it
/// unless a mount remains.
fn remove_dir(dir: &Path) {
    if clean_under(dir) {
        let _ = std::fs::remove_dir_all(dir);
    }
}
