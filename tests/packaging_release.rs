//! The release binary every package ships (`packaging/build-release.sh`): it names its
//! version and commit, is stripped and statically linked, and runs in a root directory
//! that holds nothing but itself. Needs root (chroot).

#[path = "support/release.rs"]
mod release;

use std::fs;
use std::process::Command;

use release::{expected_version_line, has_interpreter, release_binary, run_ok, section_names};

#[test]
fn version_names_the_version_and_the_commit() {
    let debug = run_ok(Command::new(env!("CARGO_BIN_EXE_berth")).arg("--version"));
    assert_eq!(debug, expected_version_line());
    let commit = debug.rsplit('(').next().unwrap().trim_end_matches(')');
    assert_eq!(commit.len(), 12, "{debug}");
    assert!(commit.chars().all(|c| c.is_ascii_hexdigit()), "{debug}");
}

#[test]
fn release_binary_is_static_stripped_and_needs_nothing_else() {
    let bin = release_binary();
    let elf = fs::read(&bin).unwrap();
    assert!(
        !has_interpreter(&elf),
        "{} is dynamically linked",
        bin.display()
    );
    let sections = section_names(&elf);
    assert!(sections.iter().any(|s| s == ".text"), "{sections:?}");
    assert!(
        !sections
            .iter()
            .any(|s| s == ".symtab" || s.starts_with(".debug")),
        "{} is not stripped: {sections:?}",
        bin.display()
    );
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    let said = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );

    // A root with nothing but berth: no libc, no /etc, no /proc.
    let root = tempfile::tempdir().unwrap();
    fs::copy(&bin, root.path().join("berth")).unwrap();
    let version = run_ok(
        Command::new("chroot")
            .arg(root.path())
            .args(["/berth", "--version"]),
    );
    assert_eq!(version, expected_version_line());
    let example = run_ok(
        Command::new("chroot")
            .arg(root.path())
            .args(["/berth", "config"]),
    );
    assert!(example.contains("[listen]"), "{example}");
}
