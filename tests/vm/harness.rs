//! Test support: boot a stock Debian kernel under QEMU (TCG) with a payload of ours.
//!
//! Include it from an integration test with `#[path = "vm/harness.rs"] mod harness;`.
//!
//! What it does, each step a function so a test can report its time:
//! - [`require_packages`]: `qemu-system-x86`, `xfsprogs`, `e2fsprogs`, `busybox-static` must
//!   be installed (`scripts/test-deps.sh` installs them; a test never does).
//! - [`kernel`]: resolves the package `linux-image-amd64` depends on (`apt-cache depends`),
//!   `apt-get download`s it, unpacks it with `dpkg -x` (never installs it) and keeps only
//!   `vmlinuz` and the modules the guest needs, in dependency order (read from each module's
//!   `.modinfo`; the package ships no `modules.dep`), decompressed, in
//!   `/var/cache/berth-vm/<package>_<version>/` (`BERTH_VM_CACHE` overrides the base). Later
//!   runs reuse it; without package lists or a registry the newest complete cache is used.
//! - [`build_example`]: `cargo build --example NAME` (dynamically linked: it reuses the
//!   artifacts `cargo test` already built; a `crt-static` build would rebuild every
//!   dependency), then [`Initramfs`] packs it stripped with the libraries `ldd` names,
//!   a static `/bin/busybox`, `tests/vm/init.sh` as `/init` and the modules, as an
//!   uncompressed `newc` cpio (written here; no `cpio` tool needed).
//! - [`make_disks`]: filesystem images made on the host (`mkfs.xfs`, `mkfs.ext4 -O
//!   quota,project`), attached as virtio disks `/dev/vda`, `/dev/vdb`, ...
//! - [`boot`]: `qemu-system-x86_64 -accel tcg -m 512 -smp 1 -no-reboot`, serial console to a
//!   file, no network, a hard timeout; [`Console`] parses what the guest printed.
//!
//! A missing piece is an `Err`, never a silent skip.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, String>;

/// The meta-package whose dependency names the current stock kernel.
pub const KERNEL_META: &str = "linux-image-amd64";
pub const DEFAULT_CACHE: &str = "/var/cache/berth-vm";
/// Part of each cache entry's name: bump it when what an entry holds changes.
const CACHE_LAYOUT: &str = ".c1";

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_get(args: &[&str]) -> Result<String> {
    run(Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Checks that every one of `packages` is installed; the suite installs them in
/// `scripts/test-deps.sh` (never here), so a missing one is an error that says so.
pub fn require_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "missing Debian packages: {}. Run scripts/test-deps.sh as root (scripts/test.sh does): \
         it installs them, QEMU from the backports suite when the image's qemu-utils comes \
         from there",
        missing.join(" ")
    ))
}

/// A stock kernel and its modules, unpacked in the cache.
#[derive(Debug)]
pub struct Kernel {
    pub package: String,
    pub release: String,
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    /// What QEMU boots: the uncompressed ELF `vmlinux` through its PVH entry when the kernel
    /// has one (it starts ~6 s sooner: the bzImage's XZ decompressor is slow under TCG),
    /// else `vmlinuz`.
    pub boot_image: PathBuf,
    /// Module files in load order (dependencies first).
    pub modules: Vec<PathBuf>,
    /// When this call downloaded and unpacked it (not a cache hit): how long each took.
    pub fetched: Option<(Duration, Duration)>,
}

/// Holds `flock(LOCK_EX)` on a file until dropped.
struct FileLock(File);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self> {
        let f = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
        // SAFETY: flock(2) on an fd we own; it does not touch memory.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self(f))
    }
}

/// `linux-image-amd64`'s kernel package and its candidate version, from the package lists.
fn resolve_kernel_package() -> Result<(String, String)> {
    let resolve = || -> Result<(String, String)> {
        let deps = run(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
        let package = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
            .ok_or_else(|| format!("apt-cache depends {KERNEL_META}: no kernel in\n{deps}"))?
            .to_string();
        let policy = run(Command::new("apt-cache").args(["policy", &package]))?;
        let version = policy
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate: "))
            .map(str::trim)
            .find(|v| *v != "(none)")
            .ok_or_else(|| format!("apt-cache policy {package}: no candidate\n{policy}"))?
            .to_string();
        Ok((package, version))
    };
    resolve().or_else(|_| {
        apt_get(&["update", "-qq"])?;
        resolve()
    })
}

fn load_cached(dir: &Path, fetched: Option<(Duration, Duration)>) -> Result<Kernel> {
    let manifest = fs::read_to_string(dir.join("complete"))
        .map_err(|e| format!("{}/complete: {e}", dir.display()))?;
    let mut lines = manifest.lines();
    let package = lines.next().unwrap_or_default().to_string();
    let release = lines.next().unwrap_or_default().to_string();
    let order = fs::read_to_string(dir.join("modules/order"))
        .map_err(|e| format!("{}/modules/order: {e}", dir.display()))?;
    let vmlinux = dir.join("vmlinux");
    Ok(Kernel {
        package,
        release,
        dir: dir.to_path_buf(),
        vmlinuz: dir.join("vmlinuz"),
        boot_image: if vmlinux.is_file() {
            vmlinux
        } else {
            dir.join("vmlinuz")
        },
        modules: order
            .lines()
            .filter(|l| !l.is_empty())
            .map(|m| dir.join("modules").join(m))
            .collect(),
        fetched,
    })
}

/// The stock kernel with `wanted` modules (and their dependencies) ready to boot; see the
/// module docs.
pub fn kernel(cache: &Path, wanted: &[&str]) -> Result<Kernel> {
    fs::create_dir_all(cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let _lock = FileLock::acquire(&cache.join(".lock"))?;
    let (package, version) = match resolve_kernel_package() {
        Ok(pv) => pv,
        Err(e) => {
            // Offline: the newest complete cache will do.
            let mut cached: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(cache)
                .map_err(|e| format!("read {}: {e}", cache.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(CACHE_LAYOUT))
                .filter_map(|p| {
                    let done = fs::metadata(p.join("complete")).ok()?.modified().ok()?;
                    Some((done, p))
                })
                .collect();
            cached.sort();
            return match cached.pop() {
                Some((_, dir)) => load_cached(&dir, None),
                None => Err(format!("cannot resolve the kernel package: {e}")),
            };
        }
    };
    match cached_or_fetched(cache, &package, &version, wanted) {
        Ok(k) => Ok(k),
        Err(first) => {
            // Stale package lists can name a version the archive no longer has: refresh them
            // and try once more.
            apt_get(&["update", "-qq"]).map_err(|e| format!("{first}\n{e}"))?;
            let (package, version) = resolve_kernel_package()?;
            cached_or_fetched(cache, &package, &version, wanted)
                .map_err(|e| format!("{first}\nafter apt-get update: {e}"))
        }
    }
}

fn cached_or_fetched(
    cache: &Path,
    package: &str,
    version: &str,
    wanted: &[&str],
) -> Result<Kernel> {
    let key = format!("{package}_{version}{CACHE_LAYOUT}").replace([':', '/'], "%");
    let dir = cache.join(&key);
    if dir.join("complete").is_file() {
        return load_cached(&dir, None);
    }
    let tmp = cache.join(format!("{key}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let fetched = fetch(&tmp, &dir, package, version, wanted);
    let _ = fs::remove_dir_all(&tmp);
    fetched
}

/// Downloads and unpacks the kernel package in `tmp`, keeps what the guest needs and
/// renames `tmp` to `dir`.
fn fetch(tmp: &Path, dir: &Path, package: &str, version: &str, wanted: &[&str]) -> Result<Kernel> {
    fs::create_dir_all(tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    // apt-get download writes into its working directory.
    let download_start = Instant::now();
    run(Command::new("apt-get")
        .args(["download", "-qq", &format!("{package}={version}")])
        .current_dir(tmp)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let deb = fs::read_dir(tmp)
        .map_err(|e| format!("read {}: {e}", tmp.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .ok_or_else(|| format!("apt-get download {package}: no .deb in {}", tmp.display()))?;
    let download = download_start.elapsed();
    let unpack_start = Instant::now();
    let root = tmp.join("x");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;

    let vmlinuz_src = fs::read_dir(root.join("boot"))
        .map_err(|e| format!("{package}: no /boot: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("{package}: no /boot/vmlinuz-*"))?;
    let release = vmlinuz_src
        .file_name()
        .and_then(OsStr::to_str)
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let moddir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|d| d.is_dir())
        .ok_or_else(|| format!("{package}: no modules for {release}"))?;

    let index = module_index(&moddir)?;
    let builtin = builtin_modules(&moddir);
    let out = tmp.join("modules");
    fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        add_module(name, &index, &builtin, &out, &mut seen, &mut order)?;
    }
    fs::write(out.join("order"), order.join("\n") + "\n")
        .map_err(|e| format!("write order: {e}"))?;
    fs::copy(&vmlinuz_src, tmp.join("vmlinuz")).map_err(|e| format!("copy vmlinuz: {e}"))?;
    let config =
        fs::read_to_string(root.join("boot").join(format!("config-{release}"))).unwrap_or_default();
    if config.lines().any(|l| l == "CONFIG_PVH=y") {
        // Optional: without it, QEMU boots the bzImage (and decompresses it under TCG).
        if let Some(elf) = extract_vmlinux(&vmlinuz_src) {
            fs::write(tmp.join("vmlinux"), elf).map_err(|e| format!("write vmlinux: {e}"))?;
        }
    }
    fs::remove_dir_all(&root).map_err(|e| format!("remove {}: {e}", root.display()))?;
    fs::remove_file(&deb).map_err(|e| format!("remove {}: {e}", deb.display()))?;
    fs::write(
        tmp.join("complete"),
        format!("{package}\n{release}\n{version}\n"),
    )
    .map_err(|e| format!("write manifest: {e}"))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(tmp, dir).map_err(|e| format!("rename to {}: {e}", dir.display()))?;
    load_cached(dir, Some((download, unpack_start.elapsed())))
}

/// The ELF kernel inside an XZ-compressed bzImage (what `extract-vmlinux` does), or `None`.
fn extract_vmlinux(bzimage: &Path) -> Option<Vec<u8>> {
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let data = fs::read(bzimage).ok()?;
    let start = data.windows(XZ_MAGIC.len()).position(|w| w == XZ_MAGIC)?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let payload = data[start..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let out = child.wait_with_output().ok()?;
    // A write error only means xz stopped reading at the end of its stream.
    let _ = writer.join();
    (out.status.success() && out.stdout.starts_with(b"\x7fELF")).then_some(out.stdout)
}

/// A module's name as `depends=` and `modules.builtin` spell it (`-` becomes `_`).
fn module_name(file_name: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

fn module_index(moddir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| format!("read {}: {e}", d.display()))? {
            let p = e.map_err(|e| format!("read {}: {e}", d.display()))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(OsStr::to_str).and_then(module_name) {
                index.insert(name, p);
            }
        }
    }
    Ok(index)
}

fn builtin_modules(moddir: &Path) -> BTreeSet<String> {
    fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next().and_then(module_name))
        .collect()
}

/// A module file's contents, decompressed with the matching tool when needed.
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).map_err(|e| format!("read {}: {e}", path.display())),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{tool} -dc {}: {e}", path.display()))?;
            if !out.status.success() {
                return Err(format!("{tool} -dc {}: {}", path.display(), out.status));
            }
            Ok(out.stdout)
        }
    }
}

/// The `depends=` entry of a module's `.modinfo` section.
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"depends=";
    let mut from = 0;
    while let Some(pos) = ko[from..]
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|p| p + from)
    {
        if pos == 0 || ko[pos - 1] == 0 {
            let value = &ko[pos + KEY.len()..];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return String::from_utf8_lossy(&value[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect();
        }
        from = pos + 1;
    }
    Vec::new()
}

fn add_module(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    out: &Path,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if builtin.contains(&name) || !seen.insert(name.clone()) {
        return Ok(());
    }
    let path = index
        .get(&name)
        .ok_or_else(|| format!("module {name}: neither built in nor in the package"))?;
    let bytes = module_bytes(path)?;
    for dep in modinfo_depends(&bytes) {
        add_module(&dep, index, builtin, out, seen, order)?;
    }
    let file = format!("{name}.ko");
    fs::write(out.join(&file), &bytes).map_err(|e| format!("write {file}: {e}"))?;
    order.push(file);
    Ok(())
}

/// Builds `cargo build --example NAME` in this package and returns the executable.
pub fn build_example(name: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--example", name, "--message-format=json"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    // The test binary lives in <target>/<profile>/deps: build into the same target dir and
    // profile so the library artifacts are shared.
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        if profile_dir.file_name() == Some(OsStr::new("release")) {
            cmd.arg("--release");
        }
        if std::env::var_os("CARGO_TARGET_DIR").is_none()
            && let Some(target) = profile_dir.parent()
            && target.join("CACHEDIR.TAG").is_file()
        {
            cmd.arg("--target-dir").arg(target);
        }
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", out.status));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo build --example {name}: no executable reported"))
}

/// The shared libraries (and the dynamic loader) `ldd` says `exe` needs.
pub fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ldd {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static executable: "not a dynamic executable".
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, right)) => right.trim().split(" (").next().unwrap_or("").trim(),
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            return Err(format!("ldd {}: {line}", exe.display()));
        }
    }
    Ok(libs)
}

/// A `newc` cpio archive, as the kernel unpacks into its initramfs (uncompressed).
#[derive(Default)]
pub struct Initramfs {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// A directory and its missing parents.
    pub fn dir(&mut self, path: &str) {
        let mut so_far = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            so_far.push('/');
            so_far.push_str(comp);
            if self.dirs.insert(so_far.clone()) {
                let p = so_far.clone();
                self.entry(&p, 0o040755, (0, 0), &[]);
            }
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/')
            && !parent.is_empty()
        {
            self.dir(parent);
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent(path);
        self.entry(path, 0o100000 | (mode & 0o7777), (0, 0), data);
    }

    /// A host file's contents (symlinks followed) at `path`.
    pub fn copy(&mut self, path: &str, from: &Path, mode: u32) -> Result<()> {
        let data = fs::read(from).map_err(|e| format!("read {}: {e}", from.display()))?;
        self.file(path, mode, &data);
        Ok(())
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, 0o120777, (0, 0), target.as_bytes());
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.parent(path);
        self.entry(path, 0o020600, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // The kernel reads the archive in 512-byte blocks' worth; pad like cpio does.
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

/// Copies `exe` into the archive at `at`, stripped of debug info, with its shared libraries
/// at their own paths.
pub fn add_executable(initramfs: &mut Initramfs, at: &str, exe: &Path, work: &Path) -> Result<()> {
    let stripped = work.join("payload.stripped");
    let stripped_ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(exe)
        .stdin(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    initramfs.copy(at, if stripped_ok { &stripped } else { exe }, 0o755)?;
    for lib in shared_libraries(exe)? {
        initramfs.copy(&lib.to_string_lossy(), &lib, 0o755)?;
    }
    Ok(())
}

/// The guest's base: busybox (static), `/init`, `/dev/console`, mount points, modules.
pub fn base_initramfs(init: &str, kernel: &Kernel) -> Result<Initramfs> {
    let busybox = Path::new("/bin/busybox");
    if !shared_libraries(busybox)?.is_empty() {
        return Err("/bin/busybox is dynamically linked; install busybox-static".into());
    }
    let mut i = Initramfs::new();
    for d in ["/dev", "/proc", "/sys", "/mnt", "/tmp", "/root"] {
        i.dir(d);
    }
    i.char_device("/dev/console", 5, 1);
    i.copy("/bin/busybox", busybox, 0o755)?;
    i.symlink("/bin/sh", "busybox");
    i.file("/init", 0o755, init.as_bytes());
    let mut order = String::new();
    for m in &kernel.modules {
        let name = m
            .file_name()
            .and_then(OsStr::to_str)
            .ok_or_else(|| format!("module path {}", m.display()))?;
        i.copy(&format!("/modules/{name}"), m, 0o644)?;
        order.push_str(name);
        order.push('\n');
    }
    i.file("/modules/order", 0o644, order.as_bytes());
    Ok(i)
}

/// A disk image made on the host.
#[derive(Clone, Debug)]
pub struct Disk {
    pub image: PathBuf,
    pub size: u64,
    /// Full mkfs command line: program then arguments; the image path is appended.
    pub mkfs: Vec<String>,
}

/// Creates each disk as a sparse file in `dir` and makes its filesystem.
pub fn make_disks(disks: &[Disk]) -> Result<()> {
    for d in disks {
        let f = File::create(&d.image).map_err(|e| format!("create {}: {e}", d.image.display()))?;
        f.set_len(d.size)
            .map_err(|e| format!("size {}: {e}", d.image.display()))?;
        drop(f);
        let (program, args) = d
            .mkfs
            .split_first()
            .ok_or_else(|| "empty mkfs command".to_string())?;
        run(Command::new(program).args(args).arg(&d.image))?;
    }
    Ok(())
}

/// What the guest printed on its serial console, and how the run went.
#[derive(Debug, Default)]
pub struct Console {
    pub text: String,
    pub timed_out: bool,
    pub qemu_status: Option<std::process::ExitStatus>,
    pub qemu_stderr: String,
    pub wall: Duration,
}

impl Console {
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// The value after `prefix` on the first line that starts with it.
    pub fn value(&self, prefix: &str) -> Option<&str> {
        self.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Boot settings.
#[derive(Debug)]
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub disks: &'a [Disk],
    pub cmdline: String,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// Where the serial console is written.
    pub console: &'a Path,
}

/// Boots under TCG and waits for the guest to power off (or the timeout, then kills QEMU).
pub fn boot(b: &Boot<'_>) -> Result<Console> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-smp", "1", "-no-reboot", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-monitor", "none"])
        .args(["-m", &b.memory_mib.to_string()])
        .arg("-serial")
        .arg(format!("file:{}", b.console.display()))
        .arg("-kernel")
        .arg(b.kernel)
        .arg("-initrd")
        .arg(b.initrd)
        .args(["-append", &b.cmdline]);
    for d in b.disks {
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            d.image.display()
        ));
    }
    let stderr_path = b.console.with_extension("qemu-stderr");
    let stderr =
        File::create(&stderr_path).map_err(|e| format!("create {}: {e}", stderr_path.display()))?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn qemu-system-x86_64: {e}"))?;
    let mut console = Console::default();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                console.qemu_status = Some(status);
                break;
            }
            Ok(None) if start.elapsed() > b.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                console.timed_out = true;
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("wait for qemu: {e}")),
        }
    }
    console.wall = start.elapsed();
    console.text = String::from_utf8_lossy(&fs::read(b.console).unwrap_or_default()).into_owned();
    console.qemu_stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    Ok(console)
}

/// Writes `bytes` to `path` (mode 0644).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(())
}
