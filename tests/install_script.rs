//! `scripts/install.sh` as an operator runs it, into a private DESTDIR with the test binary
//! (no build, nothing started, no global path touched): a few lines of progress, the man
//! page the unit names, and the same result when run twice.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh");

/// Every file beneath `dir`: its mode and contents.
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (meta.permissions().mode(), Vec::new()));
                walk(root, &path, out);
            } else {
                out.insert(
                    rel,
                    (meta.permissions().mode(), std::fs::read(&path).unwrap()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn install(destdir: &Path) -> String {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .env("DESTDIR", destdir)
        .env("BERTH_BINARY", BERTH)
        .output()
        .expect("running install.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "install.sh failed: {stderr}");
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn install_twice_gives_the_same_files_with_the_man_page() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "install.sh needs root: run this test as root"
    );
    let dir = tempfile::Builder::new()
        .prefix("berth-install-")
        .tempdir_in("/var/tmp")
        .unwrap();

    let first = install(dir.path());
    let lines: Vec<&str> = first.lines().collect();
    assert!(lines.len() <= 5, "a few lines of progress: {first}");
    for (n, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("install.sh: {}/4 ", n + 1)),
            "{first}"
        );
    }
    let files = snapshot(dir.path());

    // The page systemd's Documentation=man:berth(8) names, generated from this binary.
    let page = dir.path().join("usr/local/share/man/man8/berth.8.gz");
    let mut roff = String::new();
    Command::new("gzip")
        .args(["-dc"])
        .arg(&page)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut roff)
        .unwrap();
    assert!(
        roff.starts_with(".TH BERTH 8"),
        "{}",
        &roff[..roff.len().min(200)]
    );
    assert!(
        roff.contains("berth volume wipe"),
        "every subcommand's help"
    );
    let unit =
        std::fs::read_to_string(dir.path().join("etc/systemd/system/berth.service")).unwrap();
    assert!(unit.contains("Documentation=man:berth(8)"));
    assert!(unit.contains("ExecStart=/usr/local/bin/berth serve"));
    assert_eq!(
        files["usr/local/bin/berth"].1,
        std::fs::read(BERTH).unwrap(),
        "the binary given"
    );
    assert_eq!(files["usr/local/bin/berth"].0 & 0o7777, 0o755);
    assert!(files.contains_key("etc/berth/config.toml.example"));
    assert!(
        !files
            .keys()
            .any(|f| f.ends_with(".lock") || f.ends_with(".pid")),
        "{:?}",
        files.keys()
    );

    let second = install(dir.path());
    assert_eq!(second, first, "the same progress");
    assert_eq!(snapshot(dir.path()), files, "the same files, byte for byte");
}
