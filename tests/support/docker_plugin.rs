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
//! assertion. Needs root; without it the test fails (it is not skipped).
#![allow(dead_code)]

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth::host::Host;
use berth::host::linux::LinuxHost;
use serde_json::Value;

/// Where dockerd looks for plugin sockets.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";
const READY_DEADLINE: Duration = Duration::from_secs(30);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running `berth serve` with only the Docker front-end on; see the module docs.
pub struct Berth {
    child: Option<Child>,
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
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the Docker plugin tests mount filesystems: run them as root (scripts/test.sh)"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let driver = format!("berth-test-{}-{n}", std::process::id());
        let dir = PathBuf::from(format!("/var/tmp/{driver}"));
        if dir.exists() {
            cleanup_dir(&dir);
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
            child: None,
            dir,
            socket,
            driver,
        };
        berth.launch();
        berth
    }

    /// Starts the daemon process (again) and waits for its socket.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "berth is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(self.dir.join("berth.toml"))
            .env("BERTH_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning berth");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                panic!("berth exited at start ({status}):\n{}", self.log());
            }
            if let Ok((200, _)) = self.try_post("/Plugin.Activate", "") {
                return;
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "berth did not answer on {} within {READY_DEADLINE:?}:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon with SIGTERM and waits for it; panics if it does not exit cleanly.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "berth exited with {status}:\n{}",
                    self.log()
                );
                return;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berth did not stop within 20 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would: the socket file stays behind.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(self.dir.join("berth2.toml"))
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .output()
            .expect("spawning berth")
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
    /// retained data. Empty means nothing was left behind.
    pub fn pool_leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.pool()).unwrap() {
            let path = entry.unwrap().path();
            let own = path
                .file_name()
                .is_some_and(|n| n == ".images" || n == ".retained");
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
        let (status, raw) = request(&self.socket, "POST", path, body.as_bytes())?;
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
        cleanup_dir(&self.dir);
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(format!("{}.lock", self.socket.display()));
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(150)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    read_response(&mut stream)
}

/// Reads a whole `Connection: close` response.
pub fn read_response(stream: &mut UnixStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header in {raw:?}")))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = LinuxHost::new().mounts().expect("reading the mount table");
    mounts
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Loop devices whose backing file lies below `dir`.
pub fn loops_under(dir: &Path) -> Vec<PathBuf> {
    let loops = LinuxHost::new()
        .loop_devices()
        .expect("listing loop devices");
    loops
        .into_iter()
        .filter(|l| l.backing_file.starts_with(dir))
        .map(|l| l.device)
        .collect()
}

/// Unmounts everything below `dir` (deepest first), detaches loop devices over files in it,
/// and removes it.
pub fn cleanup_dir(dir: &Path) {
    for _ in 0..5 {
        let mut mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for mount in mounts {
            if let Ok(c) = CString::new(mount.as_os_str().as_bytes()) {
                // SAFETY: umount2 with a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    for device in loops_under(dir) {
        let _ = Command::new("losetup").arg("-d").arg(&device).status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Asserts that nothing of `dir` is mounted or attached any more.
#[track_caller]
pub fn assert_nothing_mounted_under(dir: &Path) {
    assert_eq!(
        mounts_under(dir),
        Vec::<PathBuf>::new(),
        "mounts left under {}",
        dir.display()
    );
    assert_eq!(
        loops_under(dir),
        Vec::<PathBuf>::new(),
        "loop devices left over {}",
        dir.display()
    );
}
