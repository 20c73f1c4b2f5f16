//! What the Mesos root tests share: a scratch directory that cleans up every mount and loop
//! device beneath it, a real `berth serve` with its own state, pool, admin socket and Mesos
//! work directory, and the `berth mesos` command pointed at it. Built on the shared
//! [`crate::harness`]: include `support/harness/mod.rs` as `mod harness` beside it.

#![allow(dead_code)] // Each test file uses a part.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

#[allow(unused_imports)] // Each test uses a part.
pub use crate::harness::cleanup::{Scratch, is_mounted};
#[allow(unused_imports)] // Each test uses a part.
pub use crate::harness::require_root;
use crate::harness::serve::{Serve, Served};

/// Mount points of this (the host's) mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(crate::harness::cleanup::unescape_mountinfo(p)))
        .collect()
}

/// `berth serve` with its own state, pool, admin socket and Mesos work directory; stopped
/// with SIGTERM when dropped.
pub struct Daemon {
    served: Served,
    pub socket: PathBuf,
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
        let mut served = Serve::new(config, scratch.join("berth.log"))
            .log_level("info")
            .spawn();
        served.wait_for_socket(&socket);
        Self { served, socket }
    }

    pub fn log(&self) -> String {
        self.served.log()
    }

    /// One admin API request: status and JSON body.
    pub fn admin(&self, method: &str, path: &str) -> (u16, Value) {
        crate::harness::http::json(&self.socket, method, path, "")
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
        self.served.stop();
    }
}
