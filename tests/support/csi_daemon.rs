//! A real `berth serve` for tests and benches that talk CSI to it: its own config, state,
//! pools and socket in a fresh scratch directory, stopped and cleaned of every mount and
//! loop device beneath it even when a test fails. Built on [`crate::harness`]: include
//! `support/harness/mod.rs` as `mod harness` next to this file's `mod csi_daemon`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use berth::csi::proto::NodeGetInfoRequest;

use crate::harness::cleanup::Scratch;
#[allow(unused_imports)] // Re-exported for the tests that check what is left.
pub use crate::harness::cleanup::{loops_under, mounts_under};
pub use crate::harness::csi::Clients;
use crate::harness::serve::{READY_DEADLINE, Serve, Served};

pub struct Daemon {
    // Field order is drop order: the daemon stops before its directory is cleaned.
    served: Option<Served>,
    dir: Scratch,
    pub node_id: String,
    extra_config: String,
    log_level: String,
}

impl Daemon {
    /// Starts berth with a 64 GiB size-enforcing pool `default` (ext4 images), a 64 GiB pool
    /// `xfs` (xfs images), a plain-directory pool `plain` (profile `bulk`), and `extra`
    /// appended to the config.
    pub fn start(extra: &str) -> Self {
        let level = std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into());
        Self::start_logging(extra, &level)
    }

    /// [`Daemon::start`] with the daemon's log level (`BERTH_LOG`) given.
    pub fn start_logging(extra: &str, log_level: &str) -> Self {
        crate::harness::require_root();
        let dir = Scratch::new("berth-csi-");
        let node_id = format!(
            "node-{}",
            dir.path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
                .trim_start_matches("berth-csi-")
                .to_ascii_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        let mut daemon = Self {
            served: None,
            dir,
            node_id,
            extra_config: extra.to_string(),
            log_level: log_level.to_string(),
        };
        for sub in ["pool", "plain", "xfs", "k8s"] {
            std::fs::create_dir_all(daemon.path().join(sub)).expect("dirs");
        }
        daemon.write_config();
        daemon.spawn();
        daemon
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("csi.sock")
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("berth.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path().join("berth.log")
    }

    /// A path under this daemon's directory for kubelet-style staging and target paths.
    pub fn k8s(&self, rel: &str) -> PathBuf {
        self.path().join("k8s").join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.served.as_ref().map(Served::pid).unwrap_or(0)
    }

    fn write_config(&self) {
        let d = self.path().display();
        let config = format!(
            r#"state_dir = "{d}/state"
node_id = "{node}"

[listen]
csi = "unix://{d}/csi.sock"
docker = ""
admin = ""

[[pools]]
name = "default"
kind = "root"
paths = ["{d}/pool"]
capacity = "64GiB"

[[pools]]
name = "xfs"
kind = "root"
paths = ["{d}/xfs"]
fs = "xfs"
capacity = "64GiB"

[[pools]]
name = "plain"
kind = "root"
paths = ["{d}/plain"]
backend = "none"
profiles = ["bulk"]
capacity = "8GiB"
{extra}"#,
            node = self.node_id,
            extra = self.extra_config
        );
        std::fs::write(self.config_path(), config).expect("config");
    }

    /// Runs `berth serve` on the config; its log goes to `berth.log`.
    pub fn spawn(&mut self) {
        let serve = Serve::new(self.config_path(), self.log_path()).log_level(&self.log_level);
        self.served = Some(serve.spawn());
    }

    /// Connects once the daemon answers Probe as ready.
    pub async fn clients(&self) -> Clients {
        crate::harness::csi::connect_ready(&self.endpoint(), READY_DEADLINE, || self.log()).await
    }

    /// Stops the daemon with SIGTERM and waits for it; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.served.take()?.stop()
    }

    /// Kills the daemon at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut served) = self.served.take() {
            served.kill();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Resident memory of the daemon, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// The node id berth reports.
    pub async fn node_id(&self, clients: &mut Clients) -> String {
        clients
            .node
            .node_get_info(NodeGetInfoRequest {})
            .await
            .expect("NodeGetInfo")
            .into_inner()
            .node_id
    }
}
