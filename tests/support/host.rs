//! Shared by the root integration tests of the host layer: a scratch directory that is
//! cleaned of mounts and loop devices on drop (also when a test fails), and small helpers.
//! Built on [`crate::harness`]: include `support/harness/mod.rs` as `mod harness` beside it.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth::host::Host;
use berth::host::linux::LinuxHost;

#[allow(unused_imports)] // Each test uses a part.
pub use crate::harness::cleanup::{Scratch, mounts_under};
#[allow(unused_imports)] // Each test uses a part.
pub use crate::harness::require_root;

pub const MIB: u64 = 1024 * 1024;

/// A scratch directory under /tmp, cleaned of mounts and loop devices on drop.
pub fn scratch() -> Scratch {
    Scratch::new_in(Path::new("/tmp"), "berth-host-")
}

/// Whether this process has capability `bit` (e.g. CAP_SYS_RESOURCE = 24) in effect.
pub fn has_capability(bit: u32) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

pub const CAP_SYS_RESOURCE: u32 = 24;

/// The size in bytes the kernel gives a loop device.
pub fn device_size(device: &Path) -> u64 {
    let name = device.file_name().unwrap().to_string_lossy().to_string();
    let sectors: u64 = fs::read_to_string(format!("/sys/block/{name}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sectors * 512
}

pub fn mount_of(target: &Path) -> Option<berth::host::MountEntry> {
    LinuxHost::new()
        .mounts()
        .expect("mountinfo")
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target)
}

pub fn backed_loops(host: &LinuxHost, image: &Path) -> Vec<PathBuf> {
    host.loop_devices()
        .expect("loop devices")
        .into_iter()
        .filter(|l| l.backing_file == image)
        .map(|l| l.device)
        .collect()
}

/// Polls (the kernel tears an autoclear loop device down on the last close) up to 2 s.
pub fn wait_no_loops(host: &LinuxHost, image: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !backed_loops(host, image).is_empty() {
        assert!(
            Instant::now() < deadline,
            "loop devices of {} still attached: {:?}",
            image.display(),
            backed_loops(host, image)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `limit` bytes (or until an error) in 1 MiB chunks, then fsyncs; returns bytes
/// written and the error, if any.
pub fn fill(path: &Path, limit: u64) -> (u64, Option<std::io::Error>) {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open fill file");
    let chunk = vec![0xa5u8; MIB as usize];
    let mut written = 0;
    while written < limit {
        if let Err(e) = file.write_all(&chunk) {
            return (written, Some(e));
        }
        written += MIB;
    }
    match file.sync_all() {
        Ok(()) => (written, None),
        Err(e) => (written, Some(e)),
    }
}

/// Runs a fixture tool (tests may shell out; berth itself does not on these paths) and
/// returns whether it succeeded, with its stderr.
pub fn try_cmd(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (is it installed?)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a fixture tool that must succeed.
pub fn cmd(program: &str, args: &[&str]) {
    let (ok, stderr) = try_cmd(program, args);
    assert!(ok, "{program} {args:?} failed: {stderr}");
}

/// A sparse image of `size` bytes at `image`, formatted by `mkfs` with `args`.
pub fn make_fs(image: &Path, size: u64, mkfs: &str, args: &[&str]) {
    let f = fs::File::create(image).expect("create image");
    f.set_len(size).expect("size image");
    drop(f);
    let mut all: Vec<&str> = args.to_vec();
    all.push(image.to_str().expect("utf-8 path"));
    cmd(mkfs, &all);
}

/// `mount -o loop[,OPTIONS] IMAGE TARGET` (util-linux makes the loop device autoclear, and the
/// scratch guard detaches leftovers). Returns whether the mount worked, and mount's stderr.
pub fn try_mount_loop(image: &Path, target: &Path, options: &str) -> (bool, String) {
    fs::create_dir_all(target).expect("mount point");
    let opts = if options.is_empty() {
        "loop".to_string()
    } else {
        format!("loop,{options}")
    };
    try_cmd(
        "mount",
        &[
            "-o",
            &opts,
            image.to_str().expect("utf-8 path"),
            target.to_str().expect("utf-8 path"),
        ],
    )
}

pub fn mount_loop(image: &Path, target: &Path, options: &str) {
    let (ok, stderr) = try_mount_loop(image, target, options);
    assert!(ok, "mount {} failed: {stderr}", image.display());
}

/// `syncfs` of the filesystem holding `path`: btrfs updates qgroup numbers at commit.
pub fn sync_fs(path: &Path) {
    let f = fs::File::open(path).expect("open for syncfs");
    nix::unistd::syncfs(&f).expect("syncfs");
}

/// `chattr FLAG path`; a missing program fails the test naming its package.
pub fn chattr(flag: &str, path: &Path) {
    let status = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .unwrap_or_else(|e| panic!("chattr runs ({e}): install e2fsprogs"));
    assert!(status.success(), "chattr {flag} {}", path.display());
}
