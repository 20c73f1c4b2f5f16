//! Issue 10: project quotas on XFS and ext4, proven inside a VM with a stock Debian kernel
//! (this machine's kernel has no quota support). Needs root and the Debian package
//! registry on the first run (QEMU and the kernel package; both cached afterwards).
//!
//! The host makes the filesystem images, fetches and caches the kernel, builds the guest
//! payload (`examples/prjquota_vm.rs`, volumes through berth's engine) and an initramfs
//! around it (`tests/vm/`), boots it under QEMU with TCG and reads the payload's checks from
//! the serial console.
//!
//! `BERTH_VM_SKIP_LIMIT=1` boots with `berth.skip_limit=1`: the payload then does not apply
//! the limit and this test must fail (the proof that it can). `BERTH_VM_KEEP=1` keeps the
//! work directory (images, initramfs, console log) under `/var/tmp`.

#[path = "vm/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::{Boot, Disk};

const INIT: &str = include_str!("vm/init.sh");
/// Modules the guest loads (their dependencies are added): virtio disks, XFS, ext4 with
/// its quota format, and the crc32c the filesystems' checksums need (`softdep`s, which the
/// dependency walk does not follow).
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "xfs",
    "ext4",
    "quota_v2",
];
const TIMEOUT: Duration = Duration::from_secs(240);
const MIB: u64 = 1 << 20;

/// The checks the payload runs on each project-quota filesystem; each must pass.
const LIFECYCLE: &[&str] = &[
    "support",
    "allocate-id",
    "set-project",
    "set-limit",
    "statvfs-size",
    "write-to-limit",
    "write-past-limit",
    "usage",
    "expand",
    "write-after-expand",
    "delete-releases-id",
    "id-reused",
    "retain-keeps-id",
    "auto-picks-prjquota",
];
/// Every check the payload must report as passed, per filesystem.
const REQUIRED: &[(&str, &[&str])] = &[
    ("xfs", LIFECYCLE),
    ("ext4", LIFECYCLE),
    ("plain", &["refuse-without-prjquota", "auto-falls-back"]),
];

fn step<T>(what: &str, f: impl FnOnce() -> harness::Result<T>) -> (T, Duration) {
    let start = Instant::now();
    let v = f().unwrap_or_else(|e| panic!("{what}: {e}"));
    let took = start.elapsed();
    eprintln!("vm: {what}: {:.1} s", took.as_secs_f64());
    (v, took)
}

#[test]
fn prjquota_xfs_and_ext4_in_a_vm() {
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the VM test installs packages and caches a kernel: run it as root"
    );
    let skip_limit = std::env::var("BERTH_VM_SKIP_LIMIT").is_ok_and(|v| v == "1");
    let cache = std::env::var_os("BERTH_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(harness::DEFAULT_CACHE));
    let work = tempfile::Builder::new()
        .prefix("berth-vm-")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    let dir = work.path();

    step("packages", || {
        harness::require_packages(&["qemu-system-x86", "xfsprogs", "e2fsprogs", "busybox-static"])
    });
    let (kernel, _) = step("kernel", || harness::kernel(&cache, MODULES));
    eprintln!(
        "vm: kernel {} ({}, {}), {} modules, booting {}",
        kernel.release,
        kernel.package,
        match kernel.fetched {
            Some((download, unpack)) => format!(
                "downloaded in {:.1} s, unpacked and extracted in {:.1} s",
                download.as_secs_f64(),
                unpack.as_secs_f64()
            ),
            None => "cached".into(),
        },
        kernel.modules.len(),
        kernel.boot_image.display()
    );
    let (payload, _) = step("payload build", || harness::build_example("prjquota_vm"));

    let disks = [
        Disk {
            image: dir.join("xfs.img"),
            size: 512 * MIB,
            mkfs: vec!["mkfs.xfs".into(), "-q".into(), "-f".into()],
        },
        Disk {
            image: dir.join("ext4.img"),
            size: 128 * MIB,
            mkfs: ["mkfs.ext4", "-q", "-F", "-I", "256", "-O", "quota,project"]
                .map(String::from)
                .to_vec(),
        },
        Disk {
            image: dir.join("plain.img"),
            size: 512 * MIB,
            mkfs: vec!["mkfs.xfs".into(), "-q".into(), "-f".into()],
        },
    ];
    step("disks", || harness::make_disks(&disks));

    let initrd = dir.join("initramfs.cpio");
    step("initramfs", || {
        let mut i = harness::base_initramfs(INIT, &kernel)?;
        harness::add_executable(&mut i, "/payload", &payload, dir)?;
        let bytes = i.finish();
        eprintln!("vm: initramfs {:.1} MiB", bytes.len() as f64 / MIB as f64);
        harness::write_file(&initrd, &bytes)
    });

    let mut cmdline = "console=ttyS0 quiet panic=-1".to_string();
    if skip_limit {
        cmdline.push_str(" berth.skip_limit=1");
    }
    let console_path = dir.join("console.log");
    let (console, _) = step("boot and run", || {
        harness::boot(&Boot {
            kernel: &kernel.boot_image,
            initrd: &initrd,
            disks: &disks,
            cmdline,
            memory_mib: 512,
            timeout: TIMEOUT,
            console: &console_path,
        })
    });
    if std::env::var("BERTH_VM_KEEP").is_ok_and(|v| v == "1") {
        eprintln!("vm: keeping {}", work.keep().display());
    }

    report(&console);
}

/// Prints the guest's results and fails the test unless every required check passed.
fn report(console: &harness::Console) {
    let booted = console.value("BERTH-VM-BOOTED:");
    let payload = console.value("BERTH-VM-PAYLOAD:").and_then(|v| {
        let (a, b) = v.split_once(' ')?;
        Some(b.parse::<f64>().ok()? - a.parse::<f64>().ok()?)
    });
    eprintln!(
        "vm: guest booted to /init at {} s uptime; payload ran {}; qemu wall time {:.1} s",
        booted.unwrap_or("?"),
        payload.map_or("?".into(), |p| format!("{p:.1} s")),
        console.wall.as_secs_f64()
    );
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    let mut problems = Vec::new();
    for line in console.lines() {
        if line.starts_with("CHECK ") || line.starts_with("INFO ") {
            eprintln!("  {line}");
        }
        if let Some(rest) = line.strip_prefix("CHECK PASS ") {
            let mut words = rest.splitn(3, ' ');
            if let (Some(fs), Some(name)) = (words.next(), words.next()) {
                passed.push(format!("{fs} {}", name.trim_end_matches(':')));
            }
        } else if let Some(rest) = line.strip_prefix("CHECK FAIL ") {
            let mut words = rest.splitn(3, ' ');
            if let (Some(fs), Some(name)) = (words.next(), words.next()) {
                failed.push(format!("{fs} {}", name.trim_end_matches(':')));
            }
            problems.push(line.to_string());
        }
    }
    if console.timed_out {
        problems.push(format!("the VM did not power off within {TIMEOUT:?}"));
    }
    match console.value("BERTH-VM-RESULT:") {
        Some(r) => eprintln!("vm: guest result: {r}"),
        None => problems.push("the payload printed no BERTH-VM-RESULT line".into()),
    }
    match console.value("BERTH-VM-EXIT:") {
        Some("0") => {}
        Some(code) => problems.push(format!("the payload exited with status {code}")),
        None => problems.push("the guest printed no BERTH-VM-EXIT line".into()),
    }
    for (fs, names) in REQUIRED {
        for name in *names {
            let key = format!("{fs} {name}");
            if !passed.contains(&key) && !failed.contains(&key) {
                problems.push(format!("check {key} was not reported"));
            }
        }
    }
    if !problems.is_empty() {
        panic!(
            "VM project-quota test failed:\n  {}\n--- console (last 60 lines) ---\n{}\n--- qemu stderr ---\n{}",
            problems.join("\n  "),
            console.tail(60),
            console.qemu_stderr
        );
    }
}

#[test]
fn modinfo_depends_is_read_from_the_modinfo_section() {
    let ko = b"\x7fELF...\0license=GPL\0depends=jbd2,mbcache,crc16\0intree=Y\0";
    assert_eq!(
        harness::modinfo_depends(ko),
        vec!["jbd2", "mbcache", "crc16"]
    );
    assert!(harness::modinfo_depends(b"\0depends=\0name=loop\0").is_empty());
    assert_eq!(
        harness::modinfo_depends(b"xdepends=no\0depends=a-b\0"),
        vec!["a_b"]
    );
}

#[test]
fn initramfs_is_a_padded_newc_archive() {
    let mut i = harness::Initramfs::new();
    i.file("/a/b/c", 0o644, b"hello");
    let bytes = i.finish();
    assert!(bytes.starts_with(b"070701"));
    assert_eq!(bytes.len() % 512, 0);
    let text = String::from_utf8_lossy(&bytes);
    // Parents first, then the file, then the trailer.
    let (a, ab, abc, trailer) = (
        text.find("a\0").unwrap(),
        text.find("a/b\0").unwrap(),
        text.find("a/b/c\0").unwrap(),
        text.find("TRAILER!!!\0").unwrap(),
    );
    assert!(a < ab && ab < abc && abc < trailer);
    assert!(text.contains("hello"));
}
