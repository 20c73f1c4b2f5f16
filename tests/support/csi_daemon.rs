//! A real `berth serve` for tests and benches that talk CSI to it: its own config, state,
//! pools and socket in a fresh directory under /var/tmp, and a guard that, even when a test
//! fails, stops the daemon, unmounts everything under that directory, detaches the loop
//! devices behind its images and removes it.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::csi::proto::controller_client::ControllerClient;
use berth::csi::proto::identity_client::IdentityClient;
use berth::csi::proto::node_client::NodeClient;
use berth::csi::proto::{NodeGetInfoRequest, ProbeRequest};
use tonic::transport::Channel;

/// Whether we may mount things; tests that need it skip with a note otherwise.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The three CSI clients on one connection.
#[derive(Clone)]
pub struct Clients {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

pub struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
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

    /// [`Daemon::start`] with one more pool, `btrfs` (kind `path`, backend `btrfs`,
    /// capacity 1536 MiB), on a btrfs that `mkfs.btrfs` makes in a 2 GiB sparse image inside
    /// the daemon's directory, mounted through a loop device at `btrfs/`; the guard unmounts
    /// it and detaches the device like every other mount under the directory.
    pub fn start_with_btrfs(extra: &str) -> Self {
        let level = std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into());
        Self::start_prepared(extra, &level, |dir| {
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

    /// [`Daemon::start`] with the daemon's log level (`BERTH_LOG`) given.
    pub fn start_logging(extra: &str, log_level: &str) -> Self {
        Self::start_prepared(extra, log_level, |_| String::new())
    }

    /// Makes the directory, runs `prepare` in it (which returns more config to append),
    /// then writes the config and starts berth.
    fn start_prepared(extra: &str, log_level: &str, prepare: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-csi-")
            .tempdir_in(std::env::var("BERTH_TEST_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("a temp dir");
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
            dir,
            child: None,
            node_id,
            extra_config: extra.to_string(),
            log_level: log_level.to_string(),
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
        self.child.as_ref().map(Child::id).unwrap_or(0)
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
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("BERTH_LOG", &self.log_level)
            .env_remove("CSI_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("berth starts");
        self.child = Some(child);
    }

    /// Connects once the daemon answers Probe as ready (at most 20 s).
    pub async fn clients(&self) -> Clients {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(channel) = berth::csi::connect(&self.endpoint()).await {
                let mut identity = IdentityClient::new(channel.clone());
                if let Ok(probe) = identity.probe(ProbeRequest {}).await
                    && probe.into_inner().ready == Some(true)
                {
                    return Clients {
                        identity,
                        controller: ControllerClient::new(channel.clone()),
                        node: NodeClient::new(channel),
                    };
                }
            }
            assert!(
                Instant::now() < deadline,
                "berth did not become ready; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the daemon with SIGTERM and waits for it; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the daemon at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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

/// Mount points under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(byte) = u8::from_str_radix(&code, 8) {
                out.push(byte as char);
                continue;
            }
            out.push(c);
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// Loop devices whose backing file lies under `dir`.
pub fn loops_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim().trim_end_matches(" (deleted)");
            Path::new(backing)
                .starts_with(dir)
                .then(|| PathBuf::from("/dev").join(e.file_name()))
        })
        .collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- berth log ---\n{}", self.log());
        }
        for mount in mounts_under(self.path()) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        for device in loops_under(self.path()) {
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
        }
    }
}
