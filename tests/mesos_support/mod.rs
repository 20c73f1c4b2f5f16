//! What the Mesos root tests share: a scratch directory that cleans up every mount and loop
//! device beneath it, a real `berth serve` with its own state, pool, admin socket and Mesos
//! work directory, and the `berth mesos` command pointed at it.

#![allow(dead_code)] // Each test file uses a part.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts filesystems and needs root (scripts/test.sh runs it so)"
    );
}

/// A scratch directory under /var/tmp that takes every mount and loop device beneath it
/// along when dropped, even after a failed assertion.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let root = self.path().to_path_buf();
        let mut mounts: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for entry in entries.flatten() {
                let backing = entry.path().join("loop/backing_file");
                if let Ok(file) = std::fs::read_to_string(&backing)
                    && Path::new(file.trim()).starts_with(&root)
                {
                    let device = Path::new("/dev").join(entry.file_name());
                    let _ = Command::new("losetup").arg("-d").arg(device).status();
                }
            }
        }
    }
}

/// Mount points of this (the host's) mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// `berth serve` with its own state, pool, admin socket and Mesos work directory; stopped
/// with SIGTERM when dropped.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// With one `root` pool of size-enforcing `loopfs` volumes.
    pub fn start(scratch: &Path, work_dir: &Path) -> Self {
        let pools = format!(
            "[[pools]]\nname = \"default\"\nkind = \"root\"\npaths = [\"{}\"]\nbackend = \"loopfs\"\n",
            scratch.join("pool").display()
        );
        Self::start_with(scratch, work_dir, &pools)
    }

    /// With `tables` (TOML tables: `[[pools]]`, `[admin]`, ...) after the common settings.
    pub fn start_with(scratch: &Path, work_dir: &Path, tables: &str) -> Self {
        Self::launch(scratch, work_dir, "csi = \"\"\ndocker = \"\"", tables)
    }

    /// [`Daemon::start_with`], also serving CSI at `csi.sock` and the Docker plugin at
    /// `docker.sock` in `scratch`: all three front-ends of one daemon.
    pub fn start_all_front_ends(scratch: &Path, work_dir: &Path, tables: &str) -> Self {
        let listen = format!(
            "csi = \"unix://{}\"\ndocker = \"{}\"",
            scratch.join("csi.sock").display(),
            scratch.join("docker.sock").display()
        );
        Self::launch(scratch, work_dir, &listen, tables)
    }

    fn launch(scratch: &Path, work_dir: &Path, listen: &str, tables: &str) -> Self {
        let socket = scratch.join("admin.sock");
        let config = scratch.join("berth.toml");
        std::fs::write(
            &config,
            format!(
                r#"state_dir = "{state}"
node_id = "mesos-test"

[listen]
{listen}
admin = "{socket}"

[mesos]
work_dir = "{work}"

{tables}"#,
                state = scratch.join("state").display(),
                socket = socket.display(),
                work = work_dir.display(),
            ),
        )
        .unwrap();
        let log = scratch.join("berth.log");
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("BERTH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Self { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&daemon.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "berth did not open its admin socket: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One admin API request: status and JSON body.
    pub fn admin(&self, method: &str, path: &str) -> (u16, Value) {
        let mut stream = UnixStream::connect(&self.socket).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
        };
        (status, body)
    }

    /// `GET /v1/volumes/{name}`.
    pub fn volume(&self, name: &str) -> (u16, Value) {
        self.admin("GET", &format!("/v1/volumes/{}", name.replace('#', "%23")))
    }

    /// `DELETE /v1/volumes/{name}?wipe=true`.
    pub fn wipe(&self, name: &str) -> (u16, Value) {
        let path = format!("/v1/volumes/{}?wipe=true", name.replace('#', "%23"));
        self.admin("DELETE", &path)
    }

    /// `berth mesos ARGS --json` against this daemon: its answer, or a panic with its reason.
    pub fn mesos<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("mesos")
            .args(args)
            .arg("--admin-socket")
            .arg(&self.socket)
            .arg("--json")
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_ADMIN_TOKEN")
            .env_remove("BERTH_CONFIG")
            .env_remove("BERTH_TOKEN_FILE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "berth mesos: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
