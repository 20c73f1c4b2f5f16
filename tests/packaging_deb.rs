//! The Debian package (`packaging/deb/build.sh`), installed for real: `dpkg -i` in a clean
//! Debian bookworm root (debootstrap minbase), `berth --version` there, then `dpkg --purge`
//! removes everything it installed and nothing of the volumes' data. Needs root.
//!
//! The clean root is made once with `debootstrap --variant=minbase bookworm` (about two
//! minutes, from Debian's mirror: `BERTH_DEBIAN_MIRROR`, default deb.debian.org) and kept
//! as a tarball in `/var/cache/berth-test/` (`BERTH_TEST_CACHE`); each run unpacks a fresh
//! copy (seconds). Delete the tarball to make a new one.

#[path = "support/release.rs"]
mod release;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth::config::Config;
use release::{expected_version_line, run_ok};

const SUITE: &str = "bookworm";

fn cache_dir() -> PathBuf {
    std::env::var_os("BERTH_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-test"))
}

/// The cached minbase root as a tarball, made on first use (under an exclusive lock, so
/// concurrent test runs make it once).
fn minbase_tarball() -> PathBuf {
    let cache = cache_dir();
    fs::create_dir_all(&cache).unwrap();
    let tarball = cache.join(format!("{SUITE}-minbase.tar"));
    let lock = fs::File::create(cache.join(".lock")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    // SAFETY: flock on a descriptor we own, held until `lock` drops at the end.
    let locked = unsafe { libc::flock(fd, libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock {}", cache.display());
    if tarball.exists() {
        return tarball;
    }
    let mirror = std::env::var("BERTH_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let build = cache.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&build);
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["900", "debootstrap", "--variant=minbase", SUITE])
        .arg(&build)
        .arg(&mirror)
        .output()
        .expect("debootstrap (Debian: debootstrap) must be installed");
    assert!(
        out.status.success(),
        "debootstrap failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let partial = cache.join(format!("{SUITE}-minbase.tar.partial"));
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&build)
            .args(["--numeric-owner", "-cf"])
            .arg(&partial)
            .arg("."),
    );
    fs::rename(&partial, &tarball).unwrap();
    fs::remove_dir_all(&build).unwrap();
    eprintln!("made {} in {:?}", tarball.display(), started.elapsed());
    tarball
}

/// A fresh unpacked Debian root; removed on drop.
struct Chroot {
    dir: tempfile::TempDir,
}

impl Chroot {
    fn new() -> Self {
        let tarball = minbase_tarball();
        let dir = tempfile::Builder::new()
            .prefix("berth-deb-")
            .tempdir_in("/var/tmp")
            .unwrap();
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(dir.path())
                .args(["--numeric-owner", "-xf"])
                .arg(&tarball),
        );
        Self { dir }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("chroot");
        c.arg(self.dir.path())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.command(args))
    }
}

#[test]
fn deb_installs_runs_and_purges_in_a_clean_debian_root() {
    let started = Instant::now();
    let bin = release::release_binary();
    let out_dir = tempfile::tempdir().unwrap();
    let built = release::script(
        "packaging/deb/build.sh",
        &[out_dir.path().to_str().unwrap()],
        &[("BERTH_BINARY", bin.to_str().unwrap())],
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("berth_{}_amd64.deb", env!("CARGO_PKG_VERSION"))
    );
    let build_took = started.elapsed();

    // What the package says about itself.
    let field = |name: &str| run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
    assert_eq!(field("Package"), "berth");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Depends"), "e2fsprogs");
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.'))
        .filter(|p| !p.ends_with('/'))
        .collect();
    let expected = [
        "/usr/bin/berth",
        "/lib/systemd/system/berth.service",
        "/etc/berth/config.toml.example",
        "/etc/default/berth",
        "/usr/share/man/man8/berth.8.gz",
        "/usr/share/doc/berth/README.md",
        "/usr/share/doc/berth/copyright",
        "/usr/share/doc/berth/changelog.gz",
    ];
    let mut sorted = files.clone();
    sorted.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(sorted, want, "the package's files");

    // Install into a clean bookworm root.
    let root = Chroot::new();
    let unpacked = started.elapsed();
    fs::copy(&deb, root.path("/tmp/berth.deb")).unwrap();
    let installed = root.ok(&["dpkg", "-i", "/tmp/berth.deb"]);
    eprintln!("{installed}");
    assert_eq!(root.ok(&["berth", "--version"]), expected_version_line());
    assert_eq!(
        root.ok(&["dpkg-query", "-W", "-f", "${Status}", "berth"]),
        "install ok installed"
    );
    // The shipped example config is what `berth config` prints, and it passes the check.
    let example = fs::read_to_string(root.path("/etc/berth/config.toml.example")).unwrap();
    assert_eq!(example, root.ok(&["berth", "config"]) + "\n");
    Config::parse(&example, Path::new("example")).unwrap();
    root.ok(&[
        "berth",
        "config",
        "--check",
        "/etc/berth/config.toml.example",
    ]);
    let conffiles = fs::read_to_string(root.path("/var/lib/dpkg/info/berth.conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/berth/config.toml.example", "/etc/default/berth"]
    );
    let mode = fs::metadata(root.path("/usr/bin/berth"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    // Enabled like any Debian service, but nothing was started: there is no systemd here.
    let wants = root.path("/etc/systemd/system/multi-user.target.wants/berth.service");
    assert_eq!(
        fs::read_link(&wants).unwrap(),
        Path::new("/lib/systemd/system/berth.service")
    );
    assert!(!root.path("/run/berth").exists(), "postinst started berth");
    assert!(!root.path("/var/lib/berth").exists(), "postinst made state");

    // What berth would have made at run time: volumes, their store, sockets.
    let data = root.path("/var/lib/berth/volumes/x/data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("file"), "keep me").unwrap();
    fs::write(root.path("/var/lib/berth/berth.redb"), "store").unwrap();
    fs::create_dir_all(root.path("/run/berth")).unwrap();
    fs::write(root.path("/run/berth/admin.sock"), "").unwrap();
    fs::write(root.path("/run/berth/admin.sock.lock"), "").unwrap();

    root.ok(&["dpkg", "--purge", "berth"]);
    let known = root
        .command(&["dpkg-query", "-W", "berth"])
        .output()
        .unwrap();
    assert!(
        !known.status.success(),
        "dpkg still knows berth after the purge"
    );
    for path in expected {
        assert!(!root.path(path).exists(), "{path} survived the purge");
    }
    for gone in ["/etc/berth", "/run/berth", "/usr/share/doc/berth"] {
        assert!(!root.path(gone).exists(), "{gone} survived the purge");
    }
    assert!(
        fs::symlink_metadata(&wants).is_err(),
        "the multi-user.target.wants link survived the purge"
    );
    // Never the volumes' data, nor the store that describes them.
    assert_eq!(fs::read_to_string(data.join("file")).unwrap(), "keep me");
    assert_eq!(
        fs::read_to_string(root.path("/var/lib/berth/berth.redb")).unwrap(),
        "store"
    );
    eprintln!(
        "deb: built in {build_took:?}, root unpacked by {unpacked:?}, all done in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(1200));
}
