//! One `berth serve` for a torture or concurrency test, with all three front-ends on (CSI,
//! Docker plugin, admin API with a token), each socket, the state, the pool and the
//! kubelet-style target directory in one fresh directory under /var/tmp. It can be killed
//! with SIGKILL and started again any number of times; dropping it kills the daemon and
//! removes every mount, loop device and file under its directory, even after a failure.
//! Started, stopped and cleaned up by [`crate::harness`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::cleanup::{Scratch, unescape_mountinfo};
use crate::harness::http;
use crate::harness::serve::{Serve, Served};

/// How long one request to berth may take before the test calls it hung.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Berth {
    // Field order is drop order: the daemon dies before its directory is cleaned.
    served: Option<Served>,
    pub dir: PathBuf,
    pub token: String,
    /// How many times the daemon was started.
    pub starts: usize,
    _scratch: Scratch,
}

impl Berth {
    /// Makes the directory and config; `extra` is appended to the config. Not started yet.
    pub fn new(label: &str, extra: &str) -> Self {
        crate::harness::require_root();
        let scratch = Scratch::new(&format!("berth-{label}-"));
        let token = format!("torture-{}", std::process::id());
        let berth = Self {
            served: None,
            dir: scratch.path().to_path_buf(),
            token,
            starts: 0,
            _scratch: scratch,
        };
        std::fs::create_dir_all(berth.pool()).expect("pool dir");
        std::fs::create_dir_all(berth.k8s()).expect("k8s dir");
        let d = berth.dir.display();
        let config = format!(
            r#"state_dir = "{d}/state"
node_id = "torture"

[listen]
csi = "unix://{csi}"
docker = "{docker}"
admin = "{admin}"

[admin]
token = "{token}"

[[pools]]
name = "default"
kind = "root"
paths = ["{pool}"]
backend = "auto"
capacity = "8GiB"
{extra}"#,
            csi = berth.csi_socket().display(),
            docker = berth.docker_socket().display(),
            admin = berth.admin_socket().display(),
            pool = berth.pool().display(),
            token = berth.token,
        );
        std::fs::write(berth.config_path(), config).expect("config");
        berth
    }

    pub fn pool(&self) -> PathBuf {
        self.dir.join("pool")
    }
    /// Where the test, as a kubelet would, puts staging and target paths.
    pub fn k8s(&self) -> PathBuf {
        self.dir.join("k8s")
    }
    pub fn csi_socket(&self) -> PathBuf {
        self.dir.join("csi.sock")
    }
    pub fn csi_endpoint(&self) -> String {
        format!("unix://{}", self.csi_socket().display())
    }
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("plugins").join("berth-torture.sock")
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("berth.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("berth.log")
    }

    /// Starts the daemon and waits until every front-end answers; returns how long that took.
    pub fn start(&mut self, within: Duration) -> Result<Duration, String> {
        assert!(self.served.is_none(), "berth is already running");
        let started = Instant::now();
        let mut served = Serve::new(self.config_path(), self.log_path())
            .env("NO_COLOR", "1")
            // An error at start is one line, not a backtrace.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .spawn();
        self.starts += 1;
        loop {
            if let Some(status) = served.try_wait() {
                return Err(format!(
                    "berth exited at start ({status}); its log ends:\n{}",
                    self.log_tail(30)
                ));
            }
            // The admin socket is bound last, after recovery and the other front-ends.
            let endpoints = self.endpoints();
            let ready = matches!(endpoints.admin("GET", "/healthz"), Ok((200, _)))
                && matches!(
                    endpoints.docker("/Plugin.Activate", &Value::Null),
                    Ok((200, _))
                );
            if ready {
                self.served = Some(served);
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                return Err(format!(
                    "berth did not answer within {within:?}; its log ends:\n{}",
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL, as a crash would, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut served) = self.served.take() {
            served.kill();
        }
    }

    /// SIGTERM and wait; returns whether it exited cleanly.
    pub fn stop(&mut self) -> Result<(), String> {
        match self.served.take().and_then(|mut served| served.stop()) {
            Some(status) if !status.success() => Err(format!("berth exited with {status}")),
            _ => Ok(()),
        }
    }

    /// Whether the daemon is still running (it has not exited or crashed).
    pub fn alive(&mut self) -> bool {
        self.served
            .as_mut()
            .is_some_and(|served| served.try_wait().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Copies the whole log out of the directory (which is removed on drop) and says where.
    pub fn keep_log(&self) -> String {
        let kept = self.dir.with_extension("log");
        match std::fs::copy(self.log_path(), &kept) {
            Ok(_) => format!("berth's whole log is kept at {}", kept.display()),
            Err(e) => format!("berth's log could not be kept: {e}"),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The sockets, to hand to client threads while the daemon is killed and restarted.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            docker: self.docker_socket(),
            admin: self.admin_socket(),
            token: self.token.clone(),
        }
    }
}

/// Where the Docker plugin and the admin API listen, and the admin token.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub docker: PathBuf,
    pub admin: PathBuf,
    pub token: String,
}

impl Endpoints {
    /// A Docker plugin call: the HTTP status and the decoded reply.
    pub fn docker(&self, path: &str, body: &Value) -> std::io::Result<(u16, Value)> {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, raw) = http::request(&self.docker, "POST", path, &[], body.as_bytes())?;
        Ok((status, decode(path, &raw)?))
    }

    /// An admin API call with the bearer token: the HTTP status and the decoded reply.
    pub fn admin(&self, method: &str, path: &str) -> std::io::Result<(u16, Value)> {
        let bearer = format!("Bearer {}", self.token);
        let (status, raw) = http::request(
            &self.admin,
            method,
            path,
            &[("Authorization", &bearer)],
            b"",
        )?;
        if path == "/healthz" {
            return Ok((status, Value::String(String::from_utf8_lossy(&raw).into())));
        }
        Ok((status, decode(path, &raw)?))
    }
}

fn decode(path: &str, raw: &[u8]) -> std::io::Result<Value> {
    serde_json::from_slice(raw).map_err(|e| {
        std::io::Error::other(format!(
            "{path}: the reply {:?} is not JSON: {e}",
            String::from_utf8_lossy(raw)
        ))
    })
}

/// The mount points at or below `dir`, as the kernel lists them (one entry per mount, so a
/// path mounted twice appears twice).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Attached loop devices whose backing file lies under `dir`: (device, backing file as
/// `/sys` shows it, with a ` (deleted)` suffix if the file was unlinked).
pub fn loops_under(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<(String, String)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim_end_matches('\n').to_string();
            Path::new(backing.trim_end_matches(" (deleted)"))
                .starts_with(dir)
                .then(|| (e.file_name().to_string_lossy().into_owned(), backing))
        })
        .collect();
    found.sort();
    found
}

/// The filesystem tools running now (`pid: command line`): a daemon killed while it ran
/// `e2fsck`, `resize2fs` or `mkfs` leaves them running.
pub fn tools_running() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            pid.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            ["e2fsck", "resize2fs", "mkfs", "mke2fs"]
                .iter()
                .any(|t| cmdline.split(' ').next().is_some_and(|p| p.ends_with(t)))
                .then(|| format!("{pid}: {}", cmdline.trim()))
        })
        .collect()
}
