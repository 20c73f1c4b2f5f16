//! Test support: the packaging scripts, run from tests.
//!
//! Include it with `#[path = "support/release.rs"] mod release;`.
//!
//! [`release_binary`] runs `packaging/build-release.sh` once per test process and returns
//! the static, stripped release binary every package ships. The first build in a fresh
//! target directory takes minutes on two cores; later ones are cargo no-ops (about a
//! second), so every packaging test binary may call it. It builds for an explicit target
//! triple, so it locks `target/<triple>/release` and `target/release`, never the
//! `target/debug` that the running `cargo test` holds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The repository's root (where Cargo.toml is).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The release binary, built once per process; panics with the build's output on failure.
pub fn release_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let started = Instant::now();
        let out = script("packaging/build-release.sh", &[], &[]);
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        eprintln!(
            "release binary {} ready in {:.1?}",
            path.display(),
            started.elapsed()
        );
        path
    })
    .clone()
}

/// Runs a repository script with extra environment; panics unless it succeeds.
#[track_caller]
pub fn script(path: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(repo().join(path));
    cmd.args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    assert!(
        out.status.success(),
        "{path} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command; panics unless it succeeds; returns trimmed stdout.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// `git rev-parse --short=12 HEAD` of the repository, as build.rs records it.
pub fn git_commit() -> String {
    run_ok(
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo()),
    )
}

/// The version line every berth binary of this checkout must print.
pub fn expected_version_line() -> String {
    format!("berth {} ({})", env!("CARGO_PKG_VERSION"), git_commit())
}

/// True if the ELF file has a PT_INTERP program header (is dynamically linked).
pub fn has_interpreter(elf: &[u8]) -> bool {
    assert!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2,
        "not an ELF64 file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]]) == 3
    })
}

/// The names of the ELF file's sections.
pub fn section_names(elf: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    if shoff == 0 || shnum == 0 {
        return Vec::new();
    }
    let strtab = u64_at(shoff + shstrndx * shentsize + 0x18);
    (0..shnum)
        .map(|i| {
            let start = strtab + u32_at(shoff + i * shentsize) as usize;
            let end = elf[start..]
                .iter()
                .position(|&b| b == 0)
                .map_or(elf.len(), |n| start + n);
            String::from_utf8_lossy(&elf[start..end]).into_owned()
        })
        .collect()
}
