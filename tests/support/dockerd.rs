//! Test support: a real, private `dockerd` for integration tests.
//!
//! Include it from an integration test (tests/*.rs) with
//!
//! ```ignore
//! #[path = "support/dockerd.rs"]
//! mod dockerd;
//! use dockerd::{Dockerd, IMAGE};
//!
//! #[test]
//! fn runs_a_container() {
//!     let d = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
//!     let dir = d.scratch_dir("x");
//!     d.docker_ok(&["run", "--rm", "--network", "none",
//!                   "-v", &format!("{}:/data", dir.display()),
//!                   IMAGE, "sh", "-c", "echo hi > /data/x"]);
//! }   // drop: containers removed, dockerd + containerd stopped, mounts gone, dirs removed
//! ```
//!
//! Uses `std`, `libc` and the shared [`crate::harness`] (root check, mount clean-up; include
//! `support/harness/mod.rs` as `mod harness` beside it). Needs root, `dockerd` (docker.io) and a
//! *static* `/bin/busybox` (Debian: busybox-static). A missing piece is an `Err`, never a
//! silent skip: the README's test command installs them, so absence is a setup bug.
//!
//! Every instance gets its own directory `/tmp/berth-dockerd-<pid>-<n>-<rand>/` holding the
//! socket, data-root, exec-root, pidfile, log, containerd state and trust key, its own
//! containerd (spawned by dockerd), its own containerd namespace and its own cgroup parent
//! of the same name. Two instances (in one process or several) do not interfere.
//!
//! What *is* shared by every dockerd on the host: volume plugins are discovered in the fixed
//! directory [`PLUGIN_DIR`] (`/run/docker/plugins/NAME.sock`, not under exec-root), so a plugin
//! socket placed there is seen by all running private dockerds. Use [`unique_name`] for plugin
//! names in tests. Also shared but harmless: `/run/containerd/s/` (shim sockets, removed when
//! containers exit).
//!
//! Observed with Debian 12's docker.io 20.10.24 / containerd 1.6.20 / runc 1.1.5 (cgroup v1,
//! overlay2 on ext4, no AppArmor): start-to-ready ~0.15 s, import ~0.1-0.3 s,
//! `docker run --rm --network none IMAGE true` ~0.22 s (vfs: ~0.37 s), teardown ~0.25 s.
//! Volume plugin calls (SO_PEERCRED shows which dockerd is calling):
//! - first use of a plugin by a daemon: `Plugin.Activate` (empty body), then
//!   `VolumeDriver.Capabilities` (for `volume ls`: Activate, List, Capabilities);
//! - `volume create --driver P v`: Get(v) (expects Err "no such volume"), Create{Name, Opts};
//! - `run --rm -v v:/data`: Get, Get, Mount{Name, ID}, ... container runs ..., Get,
//!   Unmount{Name, ID}. If the target path exists and is non-empty in the image (copy-up), an
//!   extra Mount/Unmount pair with a different ID comes first, at create time;
//!   `run --volume-driver P -v new:/x` creates implicitly (Create with `Opts: null`);
//! - `create` only calls Get; `start` Get, Mount; container exit Get, Unmount; `rm` nothing;
//! - `volume rm v`: Get, Get, Remove (in use: one Get, then "volume is in use", no Remove);
//! - plugin restarted / socket recreated: dockerd does NOT re-send Activate or Capabilities;
//! - plugin socket missing: each call retries ~15 s before failing (a never-seen plugin name:
//!   "plugin not found" after 15 s; a socket appearing meanwhile is picked up, backoff 1,2,4 s).
//!
//! Env: `BERTH_TEST_STORAGE_DRIVER=vfs` forces a storage driver; `BERTH_TEST_DOCKERD_LOGS=DIR`
//! keeps each instance's dockerd log as DIR/NAME.log. Instances left behind by a test process
//! that was SIGKILLed are reaped (processes killed, unmounted, removed) by the next `start()`.
//!
//! Drop order matters when a test also runs a volume plugin: declare the plugin *before* the
//! `Dockerd` so the `Dockerd` is dropped first (locals drop in reverse order). If the plugin is
//! gone first, dockerd's Unmount calls during teardown retry for ~15 s each.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[allow(unused_imports)] // Each test uses a part.
pub use crate::harness::cleanup::mounts_under;

/// The image every instance imports at start: a busybox-static rootfs (all applets as
/// symlinks in /bin, /etc/passwd, /tmp, /proc, /sys, /dev, /root). It has no CMD: always give
/// a command. It has no /data directory (so `-v vol:/data` does no copy-up).
pub const IMAGE: &str = "berth-test/busybox:latest";

/// Where every dockerd on the host looks for volume plugin sockets (`NAME.sock`).
pub const PLUGIN_DIR: &str = "/run/docker/plugins";

/// Override the storage driver (default: overlay2, falling back to vfs if dockerd refuses it).
pub const STORAGE_DRIVER_ENV: &str = "BERTH_TEST_STORAGE_DRIVER";

/// If set to a directory, each instance's dockerd log is copied there (as NAME.log) before
/// the instance directory is removed. For debugging CI failures.
pub const KEEP_LOGS_ENV: &str = "BERTH_TEST_DOCKERD_LOGS";

const DIR_PREFIX: &str = "berth-dockerd-";
const READY_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(30);
const SHUTDOWN_DONE: &str = "Daemon shutdown complete";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private dockerd, stopped and cleaned up on drop.
pub struct Dockerd {
    child: Option<Child>,
    base: PathBuf,
    host: String,
    name: String,
    docker_bin: PathBuf,
    storage_driver: String,
    /// From spawning dockerd to `docker info` succeeding.
    pub ready_after: Duration,
    /// Building the busybox rootfs, tarring it and `docker import`.
    pub import_took: Duration,
}

impl Dockerd {
    /// Start a private dockerd, wait until it answers (60 s deadline) and import [`IMAGE`].
    ///
    /// Errors (dockerd missing, not root, dockerd failed, import failed) carry a readable
    /// message including the tail of dockerd's log; turn them into a test failure with
    /// `Dockerd::start().unwrap_or_else(|e| panic!("{e}"))`.
    pub fn start() -> Result<Dockerd, String> {
        crate::harness::require_root();
        let dockerd_bin = find_bin("dockerd").ok_or_else(|| {
            "Dockerd::start: `dockerd` not found in PATH, /usr/sbin or /usr/bin. This is a setup \
             bug, not a skip: run `scripts/test-deps.sh` as root (the README's test command does), \
             which installs docker.io and busybox-static."
                .to_string()
        })?;
        // docker.io's own CLI matches the daemon's API; any other `docker` on PATH also works
        // (it negotiates down), but prefer the matching one.
        let docker_bin = ["/usr/bin/docker"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
            .or_else(|| find_bin("docker"))
            .ok_or("Dockerd::start: `docker` CLI not found (install docker.io)")?;
        let busybox = find_static_busybox()?;

        reap_stale();

        let drivers: Vec<String> = match std::env::var(STORAGE_DRIVER_ENV) {
            Ok(d) if !d.is_empty() => vec![d],
            _ => vec!["overlay2".into(), "vfs".into()],
        };
        let mut errors = Vec::new();
        for driver in &drivers {
            let mut d = Dockerd::new_instance(docker_bin.clone(), driver)?;
            match d.launch(&dockerd_bin) {
                Ok(()) => {
                    d.import_image(&busybox)?; // on error `d` drops and cleans up
                    return Ok(d);
                }
                Err((exited_early, e)) => {
                    errors.push(format!("[storage driver {driver}] {e}"));
                    drop(d);
                    if !exited_early {
                        break; // timed out or similar: another driver won't help
                    }
                }
            }
        }
        Err(format!("Dockerd::start failed:\n{}", errors.join("\n")))
    }

    fn new_instance(docker_bin: PathBuf, driver: &str) -> Result<Dockerd, String> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Short: containerd's socket (`exec/containerd/containerd.sock.ttrpc`) must stay
        // under the 108-byte sun_path limit.
        let name = format!(
            "{DIR_PREFIX}{}-{n}-{:05x}",
            std::process::id(),
            nanos & 0xfffff
        );
        let base = std::env::temp_dir().join(&name);
        if base.exists() {
            cleanup_dir(&base, &name, &mut Vec::new());
        }
        for sub in ["data", "exec", "cli", "scratch"] {
            fs::create_dir_all(base.join(sub))
                .map_err(|e| format!("create {}: {e}", base.join(sub).display()))?;
        }
        let host = format!("unix://{}", base.join("docker.sock").display());
        Ok(Dockerd {
            child: None,
            base,
            host,
            name,
            docker_bin,
            storage_driver: driver.to_string(),
            ready_after: Duration::ZERO,
            import_took: Duration::ZERO,
        })
    }

    /// Err((exited_early, message)).
    fn launch(&mut self, dockerd_bin: &Path) -> Result<(), (bool, String)> {
        let b = &self.base;
        // The trust key would otherwise be written to /etc/docker/key.json; it has no
        // command-line flag in 20.10, only this config key.
        let config = format!(
            "{{\"deprecated-key-path\": \"{}\"}}\n",
            b.join("key.json").display()
        );
        fs::write(b.join("daemon.json"), config).map_err(|e| (false, e.to_string()))?;
        let log = File::create(self.log_path()).map_err(|e| (false, e.to_string()))?;
        let log2 = log.try_clone().map_err(|e| (false, e.to_string()))?;

        let mut cmd = Command::new(dockerd_bin);
        cmd.arg("--host")
            .arg(&self.host)
            .arg("--data-root")
            .arg(b.join("data"))
            .arg("--exec-root")
            .arg(b.join("exec"))
            .arg("--pidfile")
            .arg(b.join("docker.pid"))
            .arg("--config-file")
            .arg(b.join("daemon.json"))
            .arg("--containerd-namespace")
            .arg(&self.name)
            .arg("--containerd-plugins-namespace")
            .arg(format!("{}-plugins", self.name))
            .arg("--cgroup-parent")
            .arg(format!("/{}", self.name))
            .arg("--storage-driver")
            .arg(&self.storage_driver)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--userland-proxy=false",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        for v in CLEAN_ENV {
            cmd.env_remove(v);
        }
        let t0 = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| (false, format!("spawn {}: {e}", dockerd_bin.display())))?;
        self.child = Some(child);
        let sock = self.socket_path();
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                return Err((
                    true,
                    format!(
                        "dockerd exited early ({status}); log tail:\n{}",
                        self.log_tail(30)
                    ),
                ));
            }
            if ping(&sock) {
                break;
            }
            if t0.elapsed() > READY_DEADLINE {
                return Err((
                    false,
                    format!(
                        "dockerd not ready after {:?}; log tail:\n{}",
                        READY_DEADLINE,
                        self.log_tail(30)
                    ),
                ));
            }
            sleep(Duration::from_millis(25));
        }
        let out = self.docker(&["info", "--format", "{{.ServerVersion}} {{.Driver}}"]);
        if !out.status.success() {
            return Err((
                false,
                format!(
                    "`docker info` failed: {}\nlog tail:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tail(30)
                ),
            ));
        }
        self.ready_after = t0.elapsed();
        Ok(())
    }

    fn import_image(&mut self, busybox: &Path) -> Result<(), String> {
        let t0 = Instant::now();
        let root = self.base.join("rootfs");
        let tar = self.base.join("rootfs.tar");
        build_rootfs(busybox, &root)?;
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["--numeric-owner", "-cf"])
            .arg(&tar)
            .arg(".")
            .output()
            .map_err(|e| format!("run tar: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tar failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let tar_s = tar.to_string_lossy().into_owned();
        let out = self.docker(&["import", &tar_s, IMAGE]);
        if !out.status.success() {
            return Err(format!(
                "docker import failed: {}\nlog tail:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(20)
            ));
        }
        let _ = fs::remove_dir_all(&root);
        let _ = fs::remove_file(&tar);
        self.import_took = t0.elapsed();
        Ok(())
    }

    /// `docker -H <this daemon> ARGS...`; never panics on a non-zero exit.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.docker_bin.display()))
    }

    /// A `docker -H <this daemon>` command to add args to (for stdin, env, spawn...).
    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new(&self.docker_bin);
        c.arg("-H").arg(&self.host);
        for v in CLEAN_ENV {
            c.env_remove(v);
        }
        // Keep the CLI away from ~/.docker (contexts, credential helpers, config).
        c.env("DOCKER_CONFIG", self.base.join("cli"));
        c
    }

    /// Runs docker, panics (with stderr and dockerd's log tail) unless it succeeds; returns
    /// stdout with trailing whitespace trimmed.
    #[track_caller]
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if !out.status.success() {
            panic!(
                "docker {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndockerd log tail:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(20)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Runs docker, panics if it *succeeds*; returns stderr.
    #[track_caller]
    pub fn docker_err(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if out.status.success() {
            panic!(
                "docker {args:?} unexpectedly succeeded:\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `unix:///tmp/berth-dockerd-.../docker.sock`, for `docker -H` or DOCKER_HOST.
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn socket_path(&self) -> PathBuf {
        self.base.join("docker.sock")
    }
    /// The instance's private directory; everything below it is removed on drop.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }
    pub fn data_root(&self) -> PathBuf {
        self.base.join("data")
    }
    pub fn exec_root(&self) -> PathBuf {
        self.base.join("exec")
    }
    pub fn log_path(&self) -> PathBuf {
        self.base.join("dockerd.log")
    }
    /// Instance name: also its containerd namespace and cgroup parent (`/NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn storage_driver(&self) -> &str {
        &self.storage_driver
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A fresh directory under the instance dir (e.g. a bind-mount source); removed on drop.
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let p = self.base.join("scratch").join(name);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        p
    }

    /// Last `n` lines of dockerd's log (grpc chatter and containerd plugin loading left out).
    pub fn log_tail(&self, n: usize) -> String {
        let text = read_tail(&self.log_path(), 256 * 1024);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("module=grpc") && !l.contains("loading plugin"))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stop and clean up now (what Drop does), then verify that nothing is left: no process
    /// referring to the instance dir, no mount under it, no dir, no cgroup. Returns the time
    /// teardown took.
    pub fn stop(mut self) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut problems = self.shutdown();
        let took = t0.elapsed();
        problems.extend(leftovers(&self.base, &self.name));
        if problems.is_empty() {
            Ok(took)
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Idempotent teardown. Returns a list of problems (for logging; Drop must not panic).
    fn shutdown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                self.remove_containers();
                let containerd_pid =
                    fs::read_to_string(self.exec_root().join("containerd/containerd.pid"))
                        .ok()
                        .and_then(|s| s.trim().parse::<i32>().ok());
                let pid = child.id() as i32;
                // SAFETY: kill(2) on the pid of our dockerd child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let t0 = Instant::now();
                loop {
                    if !matches!(child.try_wait(), Ok(None)) {
                        break;
                    }
                    if t0.elapsed() > STOP_DEADLINE {
                        problems.push(format!(
                            "dockerd did not exit {STOP_DEADLINE:?} after SIGTERM; killed. log tail:\n{}",
                            self.log_tail(20)
                        ));
                        // SAFETY: kill(2) on the pid of our dockerd child, not yet reaped.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        let _ = child.wait();
                        break;
                    }
                    // dockerd 20.10 logs this once containers are stopped, layers unmounted
                    // and its containerd is gone, then idles ~2.5 s in grpc reconnects before
                    // exiting. Nothing is left to do by then, so don't wait for it.
                    if containerd_pid.is_none_or(|p| !pid_alive(p))
                        && read_tail(&self.log_path(), 8 * 1024).contains(SHUTDOWN_DONE)
                    {
                        sleep(Duration::from_millis(100));
                        if matches!(child.try_wait(), Ok(None)) {
                            // SAFETY: kill(2) on the pid of our dockerd child, not yet reaped.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                            let _ = child.wait();
                        }
                        break;
                    }
                    sleep(Duration::from_millis(20));
                }
            } else {
                let _ = child.wait();
            }
        }
        if let Some(dir) = std::env::var_os(KEEP_LOGS_ENV) {
            let dir = PathBuf::from(dir);
            let _ = fs::create_dir_all(&dir);
            let _ = fs::copy(self.log_path(), dir.join(format!("{}.log", self.name)));
        }
        cleanup_dir(&self.base, &self.name, &mut problems);
        problems
    }

    /// `docker rm -f` every container: dockerd's own shutdown would give each running
    /// container 10 s to react to SIGTERM (`--shutdown-timeout` does not shorten that).
    fn remove_containers(&self) {
        let mut ps = self.docker_cmd();
        ps.args(["ps", "-aq"]);
        let Some(out) = run_with_timeout(ps, Duration::from_secs(10)) else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut rm = self.docker_cmd();
        rm.args(["rm", "-f"]).args(&ids);
        let _ = run_with_timeout(rm, Duration::from_secs(40));
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for p in self.shutdown() {
            eprintln!("warning: Dockerd {} teardown: {p}", self.name);
        }
    }
}

/// A name unique to this process and call, e.g. for a volume plugin (`PLUGIN_DIR/NAME.sock`),
/// which every dockerd on the host can see.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Path of a volume plugin's socket that dockerd discovers by name.
pub fn plugin_socket_path(plugin_name: &str) -> PathBuf {
    Path::new(PLUGIN_DIR).join(format!("{plugin_name}.sock"))
}

// ---------------------------------------------------------------------------------------------

/// Variables that would redirect dockerd or the CLI elsewhere.
const CLEAN_ENV: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_API_VERSION",
    "DOCKER_CONFIG",
    "NOTIFY_SOCKET",
];

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn find_bin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
                "/usr/local/sbin",
                "/usr/local/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn find_static_busybox() -> Result<PathBuf, String> {
    let mut seen = Vec::new();
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = Path::new(p);
        if !is_executable(p) {
            continue;
        }
        match is_static_elf(p) {
            Ok(true) => return Ok(p.to_path_buf()),
            Ok(false) => seen.push(format!("{} is dynamically linked", p.display())),
            Err(e) => seen.push(format!("{}: {e}", p.display())),
        }
    }
    Err(format!(
        "Dockerd::start: no static busybox for the test image ({}). Run \
         `scripts/test-deps.sh` as root, which installs busybox-static.",
        if seen.is_empty() {
            "not found".to_string()
        } else {
            seen.join("; ")
        }
    ))
}

/// True if the ELF has no PT_INTERP (static or static-pie).
fn is_static_elf(p: &Path) -> Result<bool, String> {
    let b = fs::read(p).map_err(|e| e.to_string())?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            break;
        }
        if u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

fn build_rootfs(busybox: &Path, root: &Path) -> Result<(), String> {
    let e = |what: &str, err: std::io::Error| format!("build rootfs: {what}: {err}");
    for d in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "usr", "var",
    ] {
        fs::create_dir_all(root.join(d)).map_err(|err| e(d, err))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(|err| e("tmp", err))?;
    let bb = root.join("bin/busybox");
    fs::copy(busybox, &bb).map_err(|err| e("copy busybox", err))?;
    fs::set_permissions(&bb, fs::Permissions::from_mode(0o755)).map_err(|err| e("chmod", err))?;
    // Not `busybox --install -s DIR`: it writes *absolute* links to the host's busybox path.
    // Run the host's copy, not the fresh one: exec'ing a file just written can fail with
    // ETXTBSY while another test thread forks with the write fd still open.
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|err| e("busybox --list", err))?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                .map_err(|err| e(applet, err))?;
        }
    }
    for (link, target) in [
        ("sbin", "bin"),
        ("usr/bin", "../bin"),
        ("usr/sbin", "../bin"),
    ] {
        std::os::unix::fs::symlink(target, root.join(link)).map_err(|err| e(link, err))?;
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .map_err(|err| e("passwd", err))?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .map_err(|err| e("group", err))?;
    Ok(())
}

/// GET /_ping on the daemon socket; true on HTTP 200.
fn ping(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")
}

fn read_tail(p: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(p) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn run_with_timeout(mut cmd: Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if t0.elapsed() < limit => sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Alive and not a zombie.
fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit(')')
                .next()
                .and_then(|r| r.trim_start().chars().next()),
            Some('Z') | Some('X')
        ),
        Err(_) => false,
    }
}

/// Pids whose command line mentions `base/` (orphaned dockerd, containerd or shims).
fn procs_referring_to(base: &Path) -> Vec<i32> {
    let mut needle = base.as_os_str().as_bytes().to_vec();
    needle.push(b'/');
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            continue;
        }
        if let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline"))
            && cmdline
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
        {
            out.push(pid);
        }
    }
    out
}

/// Our cgroup-parent directories: `/sys/fs/cgroup/NAME` (v2) and `/sys/fs/cgroup/*/NAME` (v1).
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut out = vec![root.join(name)];
    if let Ok(rd) = fs::read_dir(root) {
        for ent in rd.flatten() {
            out.push(ent.path().join(name));
        }
    }
    out.retain(|p| p.is_dir());
    out
}

fn cgroup_tree_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for ent in rd.flatten() {
            if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                cgroup_tree_pids(&ent.path(), out);
            }
        }
    }
}

fn rmdir_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for ent in rd.flatten() {
            if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_cgroup_tree(&ent.path());
            }
        }
    }
    let _ = fs::remove_dir(dir); // cgroup dirs are removed with rmdir, files and all
}

/// Kill whatever still belongs to the instance, unmount everything below `base`, remove
/// our cgroups and the directory. Safe on a half-started or already cleaned instance.
fn cleanup_dir(base: &Path, name: &str, problems: &mut Vec<String>) {
    // 1. Processes: orphaned dockerd/containerd/shims (by command line) and container
    //    processes (by cgroup). Normally there are none.
    let mut pids = procs_referring_to(base);
    for cg in cgroup_dirs(name) {
        cgroup_tree_pids(&cg, &mut pids);
    }
    pids.sort();
    pids.dedup();
    pids.retain(|&p| p != std::process::id() as i32);
    if !pids.is_empty() {
        problems.push(format!("killed leftover processes {pids:?}"));
        // A SIGKILLed shim leaves its socket in the host-wide /run/containerd/s/.
        let shim_sockets = containerd_sockets_of(&pids);
        for &p in &pids {
            // SAFETY: kill(2) with a pid found under this instance's directory or cgroup.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let t0 = Instant::now();
        while pids.iter().any(|&p| pid_alive(p)) && t0.elapsed() < Duration::from_secs(5) {
            sleep(Duration::from_millis(20));
        }
        for s in shim_sockets {
            let _ = fs::remove_file(s);
        }
    }
    // containerd writes goroutine dumps to /tmp/containerd.PID.stacks.log when dockerd
    // restarts it (dockerd 20.10 sometimes dials containerd.sock a few ms too early at start,
    // then kills and restarts its containerd; harmless otherwise). Remove ours.
    remove_stack_dumps(&base.join("dockerd.log"));
    // 2. Mounts (overlay merged dirs, netns files, the data-root self bind), deepest first.
    let unmounted = mounts_under(base);
    if !unmounted.is_empty() {
        problems.push(format!("unmounted leftovers {unmounted:?}"));
        crate::harness::cleanup::clean_under(base);
    }
    // 3. cgroups (empty once the processes are gone).
    for cg in cgroup_dirs(name) {
        rmdir_cgroup_tree(&cg);
    }
    // 4. The directory.
    if base.exists()
        && let Err(e) = fs::remove_dir_all(base)
    {
        problems.push(format!("remove {}: {e}", base.display()));
    }
}

/// Unix sockets under /run/containerd/s/ that the given processes have open (shim sockets).
fn containerd_sockets_of(pids: &[i32]) -> Vec<PathBuf> {
    let mut inodes = Vec::new();
    for pid in pids {
        let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for ent in rd.flatten() {
            if let Ok(t) = fs::read_link(ent.path())
                && let Some(n) = t
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
            {
                inodes.push(n.to_string());
            }
        }
    }
    let table = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode [Path]
        if f.len() >= 8
            && inodes.iter().any(|i| i == f[6])
            && f[7].starts_with("/run/containerd/s/")
        {
            out.push(PathBuf::from(f[7]));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn remove_stack_dumps(log: &Path) {
    let Ok(text) = fs::read(log) else { return };
    let text = String::from_utf8_lossy(&text);
    const KEY: &str = "stack dump written to ";
    for (i, _) in text.match_indices(KEY) {
        let rest = &text[i + KEY.len()..];
        let path: String = rest
            .chars()
            .take_while(|c| !matches!(c, '"' | '\\' | '\n' | ' '))
            .collect();
        let fname = Path::new(&path)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("");
        if fname.starts_with("containerd.") && fname.ends_with(".stacks.log") {
            let _ = fs::remove_file(&path);
        }
    }
}

fn leftovers(base: &Path, name: &str) -> Vec<String> {
    let mut v = Vec::new();
    let m = mounts_under(base);
    if !m.is_empty() {
        v.push(format!("still mounted: {m:?}"));
    }
    let p = procs_referring_to(base);
    if !p.is_empty() {
        v.push(format!("processes still running: {p:?}"));
    }
    if base.exists() {
        v.push(format!("{} still exists", base.display()));
    }
    let cg = cgroup_dirs(name);
    if !cg.is_empty() {
        v.push(format!("cgroups still present: {cg:?}"));
    }
    v
}

/// Remove instances left by test processes that died without running Drop (SIGKILL, abort).
fn reap_stale() {
    let tmp = std::env::temp_dir();
    let Ok(rd) = fs::read_dir(&tmp) else { return };
    for ent in rd.flatten() {
        let fname = ent.file_name().to_string_lossy().into_owned();
        let Some(rest) = fname.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let mut problems = Vec::new();
        cleanup_dir(&ent.path(), &fname, &mut problems);
        eprintln!(
            "note: removed stale {} ({})",
            ent.path().display(),
            problems.join("; ")
        );
    }
}
