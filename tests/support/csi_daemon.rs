//! A real `berth serve` for tests and benches that talk CSI to it: its own config, state,
//! pools and socket in a fresh scratch directory, stopped and cleaned of every mount and
//! loop device beneath it even when a test fails. Built on [`crate::harness`]: include
//! `support/harness/mod.rs` as `mod harness` next to this file's `mod csi_daemon`.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    /// Whether the admin API listens too (on [`Daemon::admin_socket`]).
    admin: bool,
}

impl Daemon {
    /// Starts berth with a 64 GiB size-enforcing pool `default` (ext4 images), a 64 GiB pool
    /// `xfs` (xfs images), a plain-directory pool `plain` (profile `bulk`), and `extra`
    /// added to the config: its lines before its first table are top-level keys, the rest
    /// goes at the end.
    pub fn start(extra: &str) -> Self {
        let level = std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into());
        Self::start_logging(extra, &level)
    }

    /// [`Daemon::start`] with one more pool, `btrfs` (kind `path`, backend `btrfs`,
    /// capacity 1536 MiB), on a btrfs that `mkfs.btrfs` makes in a 2 GiB sparse image inside
    /// the daemon's directory, mounted through a loop device at `btrfs/`; the guard unmounts
    /// it and detaches the device like every other mount under the directory.
    pub fn start_with_btrfs(extra: &str) -> Self {
        let level = std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into());
        Self::start_prepared(extra, &level, false, |dir| {
            let image = dir.join("btrfs.img");
            File::create(&image)
                .and_then(|f| f.set_len(2 << 30))
                .expect("a sparse image");
            let made = Command::new("mkfs.btrfs")
                .args(["-q", "-f"])
                .arg(&image)
                .status()
                .expect("mkfs.btrfs runs: install btrfs-progs");
            assert!(made.success(), "mkfs.btrfs {}", image.display());
            let mnt = dir.join("btrfs");
            std::fs::create_dir_all(&mnt).expect("mount point");
            let mounted = Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mnt)
                .status()
                .expect("mount runs: install util-linux");
            assert!(mounted.success(), "mount -o loop {}", image.display());
            format!(
                "\n[[pools]]\nname = \"btrfs\"\nkind = \"path\"\npaths = [\"{}\"]\nbackend = \"btrfs\"\ncapacity = \"1536MiB\"\n",
                mnt.display()
            )
        })
    }

    /// [`Daemon::start`] with the admin API on [`Daemon::admin_socket`] too.
    pub fn start_with_admin(extra: &str) -> Self {
        Self::start_prepared(extra, "info", true, |_| String::new())
    }

    /// [`Daemon::start`] with the daemon's log level (`BERTH_LOG`) given.
    pub fn start_logging(extra: &str, log_level: &str) -> Self {
        Self::start_prepared(extra, log_level, false, |_| String::new())
    }

    /// [`Daemon::start_logging`] with the admin API on [`Daemon::admin_socket`] too.
    pub fn start_logging_with_admin(extra: &str, log_level: &str) -> Self {
        Self::start_prepared(extra, log_level, true, |_| String::new())
    }

    /// Makes the directory, runs `prepare` in it (which returns more config to append),
    /// then writes the config (with the admin API when `admin`) and starts berth.
    fn start_prepared(
        extra: &str,
        log_level: &str,
        admin: bool,
        prepare: impl FnOnce(&Path) -> String,
    ) -> Self {
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
            admin,
        };
        for sub in ["pool", "plain", "xfs", "k8s"] {
            std::fs::create_dir_all(daemon.path().join(sub)).expect("dirs");
        }
        let more = prepare(daemon.path());
        daemon.extra_config.push_str(&more);
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

    /// The admin API's socket, when started with [`Daemon::start_with_admin`].
    pub fn admin_socket(&self) -> PathBuf {
        self.path().join("admin.sock")
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
        let admin = if self.admin {
            self.admin_socket().display().to_string()
        } else {
            String::new()
        };
        // Keys before the first table of the extra config are top-level ones.
        let lines: Vec<&str> = self.extra_config.lines().collect();
        let first_table = lines
            .iter()
            .position(|line| line.trim_start().starts_with('['))
            .unwrap_or(lines.len());
        let (top, tables) = (
            lines[..first_table].join("\n"),
            lines[first_table..].join("\n"),
        );
        let config = format!(
            r#"state_dir = "{d}/state"
node_id = "{node}"
{top}

[listen]
csi = "unix://{d}/csi.sock"
docker = ""
admin = "{admin}"

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

{tables}
"#,
            node = self.node_id,
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
        self.status_kib("VmRSS:")
    }

    /// The part of [`Daemon::rss_kib`] that is the daemon's own memory rather than mapped
    /// pages of its binary and libraries.
    pub fn anonymous_rss_kib(&self) -> Option<u64> {
        self.status_kib("RssAnon:")
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
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
