//! The data path: what a loopfs volume costs an application against a plain directory of
//! the same host filesystem, measured with fio in the same run (issue 17).
//!
//! Three jobs, each run in a 1 GiB loopfs volume made by berth's own host layer (ext4 and
//! xfs: `create_image` + `mount_image`, exactly what a volume gets) and in a plain directory
//! next to the image: 4k random writes with an `fsync` after each, 4k random reads
//! (`O_DIRECT` inside, from a file written and fsynced before, with the image's host page
//! cache dropped first so that no layer reads from memory), and 1 MiB sequential writes
//! ending with an `fsync`. Variants are interleaved round by round so drift hits all alike;
//! each figure is the median of its rounds, printed as a ratio to the plain directory.
//!
//! `BERTH_BENCH_LEVERS=1` adds the levers, made with `losetup`/`mkfs` so each differs from
//! berth's way in one thing only: loop direct I/O, the loop device's logical block size
//! (`--sector-size 4096`, which is `LOOP_CONFIGURE`'s `block_size`), ext4's inode tables and
//! journal zeroed at format (`lazy_itable_init=0,lazy_journal_init=0`), and a larger xfs
//! log. `BERTH_BENCH_QUICK=1` runs one short round of berth's variants only, for the test
//! command (prints, asserts nothing about time). `BERTH_BENCH_ROUNDS` sets the rounds
//! (default 3). Needs root and fio (scripts/test-deps.sh).
//!
//! # Findings (2 cores, virtio disk, host ext4, kernel 6.18, other builds running)
//! `BERTH_BENCH_LEVERS=1 BERTH_BENCH_ROUNDS=2`, medians, ratios to the plain directory
//! (fsync'd 4k random writes / 4k random reads / 1 MiB sequential writes):
//!
//! | variant | fsync'd 4k writes | 4k reads | 1 MiB writes |
//! |---|---|---|---|
//! | berth ext4 (buffered loop, lazy init) | 0.87x | 1.81x | 0.88x |
//! | berth xfs (buffered loop) | 2.48x | 0.65x | 1.03x |
//! | ext4, loop direct I/O (berth before) | 2.59x | 0.06x | 1.57x |
//! | ext4, direct I/O, 4096-byte loop blocks | 2.09x | 0.16x | 1.35x |
//! | ext4, buffered, 4096-byte loop blocks | 0.96x | 0.90x | 0.89x |
//! | ext4, buffered, inode tables and journal zeroed at format | 1.07x | 0.51x | 1.15x |
//! | xfs, loop direct I/O | 2.43x | 0.04x | 3.88x |
//! | xfs, buffered, 64 MiB log | 2.91x | 0.35x | 0.84x |
//!
//! - **Loop direct I/O** decides the reads. With `LO_FLAGS_DIRECT_IO` (berth's way before)
//!   every request the loop device passed to the image waited about one scheduler tick (4 ms
//!   at HZ=250; fio on the bare loop device shows the same 250 IOPS at queue depth 1, while
//!   `O_DIRECT` reads of the image file itself run at the directory's 6,000): 4k random reads
//!   inside a volume 0.04-0.16x, whatever the block size. Writes do well with it (an
//!   allocated image's fsync commits no host metadata). Buffered reads go through the host's
//!   page cache and readahead of the image, so they vary from run to run (0.35-1.8x in
//!   these runs; 0.6-5x in others) but never fall to the tick-bound floor. Buffered is as
//!   crash-safe: the loop driver turns the inner filesystem's flush and FUA into
//!   `vfs_fsync` of the image, so a journal commit inside is on the disk when it returns.
//!   Its cost is memory: the image's pages sit in the host page cache too (clean after a
//!   flush, so reclaimable). berth now attaches buffered.
//! - **Loop logical block size 4096** (`LOOP_CONFIGURE` `block_size`): 2-3x better direct
//!   reads, still tick-bound; buffered within the run-to-run spread. Left at 512.
//! - **Image fully allocated**: berth already `fallocate`s every block at create (a
//!   reservation is a guarantee), so no variant here runs on a sparse image.
//! - **ext4 lazy init** against `lazy_itable_init=0,lazy_journal_init=0`: within the spread
//!   (the journal is written before it is read either way) and the eager format writes the
//!   whole inode tables; berth keeps lazy init, mounted `noinit_itable` (see `image.rs`).
//! - **xfs log size**: a 64 MiB log against mkfs's default made no difference beyond the
//!   spread (each fsync'd commit is small).
//!
//! - **Spread**: three runs of berth's variants alone (medians of 1, 2 and 3 rounds) gave
//!   ext4 0.73-0.87x / 0.46-1.81x / 0.51-0.88x and xfs 1.81-2.48x / 0.65-1.02x /
//!   0.48-1.03x. Fsync'd writes meet their target in every run; reads and sequential writes
//!   buffered meet theirs in some runs only, direct I/O reads in none.
//!
//! Barriers and the inner journal's ordering are never touched.

#[path = "../tests/support/harness/mod.rs"]
mod harness;
#[path = "../tests/support/host.rs"]
mod host_support;

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth::host::Host;
use berth::host::linux::LinuxHost;
use berth::host::types::FsType;
use host_support::{Scratch, scratch};

const GIB: u64 = 1 << 30;

/// How long and how big each job runs.
struct Sizes {
    runtime_s: u32,
    fsync_file: &'static str,
    read_file: &'static str,
    seq_file: &'static str,
}

const FULL: Sizes = Sizes {
    runtime_s: 5,
    fsync_file: "64m",
    read_file: "256m",
    seq_file: "512m",
};

const QUICK: Sizes = Sizes {
    runtime_s: 2,
    fsync_file: "16m",
    read_file: "64m",
    seq_file: "128m",
};

/// One way of making the directory the jobs run in.
#[derive(Clone, Copy)]
enum Setup {
    Plain,
    /// berth's own `create_image` + `mount_image`.
    Berth(FsType),
    /// `mkfs` + `losetup` with one lever changed from berth's way.
    Lever {
        fs: FsType,
        direct_io: bool,
        sector_size: u32,
        mkfs: &'static [&'static str],
    },
}

struct Variant {
    label: &'static str,
    setup: Setup,
    fsync_write_iops: Vec<f64>,
    rand_read_iops: Vec<f64>,
    seq_write_mibps: Vec<f64>,
}

impl Variant {
    fn new(label: &'static str, setup: Setup) -> Self {
        Self {
            label,
            setup,
            fsync_write_iops: Vec::new(),
            rand_read_iops: Vec::new(),
            seq_write_mibps: Vec::new(),
        }
    }
}

const BERTH_EXT4_MKFS: &[&str] = &[
    "-E",
    "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
    "-m",
    "0",
];

fn variants(levers: bool) -> Vec<Variant> {
    let mut all = vec![
        Variant::new("plain directory", Setup::Plain),
        Variant::new("berth loopfs ext4", Setup::Berth(FsType::Ext4)),
        Variant::new("berth loopfs xfs", Setup::Berth(FsType::Xfs)),
    ];
    if levers {
        let ext4 = |direct_io, sector_size, mkfs| Setup::Lever {
            fs: FsType::Ext4,
            direct_io,
            sector_size,
            mkfs,
        };
        all.extend([
            Variant::new("ext4, loop direct I/O", ext4(true, 512, BERTH_EXT4_MKFS)),
            Variant::new(
                "ext4, direct I/O, 4k lbs",
                ext4(true, 4096, BERTH_EXT4_MKFS),
            ),
            Variant::new("ext4, buffered, 4k lbs", ext4(false, 4096, BERTH_EXT4_MKFS)),
            Variant::new(
                "ext4, buffered, eager init",
                ext4(
                    false,
                    512,
                    &[
                        "-E",
                        "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                        "-m",
                        "0",
                    ],
                ),
            ),
            Variant::new(
                "xfs, loop direct I/O",
                Setup::Lever {
                    fs: FsType::Xfs,
                    direct_io: true,
                    sector_size: 512,
                    mkfs: &["-K"],
                },
            ),
            Variant::new(
                "xfs, buffered, 64m log",
                Setup::Lever {
                    fs: FsType::Xfs,
                    direct_io: false,
                    sector_size: 512,
                    mkfs: &["-K", "-l", "size=64m"],
                },
            ),
        ]);
    }
    all
}

fn run(program: &str, args: &[&OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test-deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A mounted (or plain) directory for one round of one variant; torn down on drop.
struct Place {
    dir: PathBuf,
    image: Option<PathBuf>,
    device: Option<String>,
}

impl Place {
    fn make(scratch: &Scratch, setup: Setup, n: usize) -> Self {
        let dir = scratch.join(&format!("dir-{n}"));
        std::fs::create_dir(&dir).unwrap();
        let image = scratch.join(&format!("image-{n}"));
        match setup {
            Setup::Plain => Self {
                dir,
                image: None,
                device: None,
            },
            Setup::Berth(fs) => {
                let host = LinuxHost::new();
                host.create_image(&image, GIB, Some(fs)).unwrap();
                host.mount_image(&image, &dir, fs).unwrap();
                Self {
                    dir,
                    image: Some(image),
                    device: None,
                }
            }
            Setup::Lever {
                fs,
                direct_io,
                sector_size,
                mkfs,
            } => {
                let size = GIB.max(fs.min_size()).to_string();
                run("truncate", &["-s", &size, path_str(&image)].map(OsStr::new));
                let mut args = vec!["-q", "-F"];
                if fs == FsType::Xfs {
                    args = vec!["-q", "-f"];
                }
                args.extend(mkfs);
                args.push(path_str(&image));
                run(&format!("mkfs.{}", fs.as_str()), &args.map_os());
                run(
                    "fallocate",
                    &["-l", &size, path_str(&image)].map(OsStr::new),
                );
                let dio = format!("--direct-io={}", if direct_io { "on" } else { "off" });
                let sector = format!("--sector-size={sector_size}");
                let device = run(
                    "losetup",
                    &["-f", "--show", &dio, &sector, path_str(&image)].map(OsStr::new),
                );
                let options = if fs == FsType::Ext4 {
                    "noinit_itable"
                } else {
                    "defaults"
                };
                run(
                    "mount",
                    &["-o", options, &device, path_str(&dir)].map(OsStr::new),
                );
                Self {
                    dir,
                    image: Some(image),
                    device: Some(device),
                }
            }
        }
    }

    /// Drops the image's pages from the host page cache (they are clean after the inner
    /// filesystem's flush), so a read inside goes to the disk as the plain directory's does.
    fn drop_host_cache(&self) {
        let Some(image) = &self.image else { return };
        let file = std::fs::File::open(image).unwrap();
        // SAFETY: posix_fadvise only reads its integer arguments; `file` is open.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "posix_fadvise {}", image.display());
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.image.is_some() {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::UMOUNT_NOFOLLOW);
        }
        if let Some(device) = &self.device {
            let _ = Command::new("losetup").args(["-d", device]).status();
        }
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

trait MapOs {
    fn map_os(&self) -> Vec<&OsStr>;
}

impl MapOs for Vec<&str> {
    fn map_os(&self) -> Vec<&OsStr> {
        self.iter().map(OsStr::new).collect()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 scratch path")
}

/// Runs one fio job in `dir` and returns its JSON report's first job.
fn fio(dir: &Path, args: &[&str]) -> serde_json::Value {
    let directory = format!("--directory={}", dir.display());
    let mut all = vec![
        "--name=bench",
        &directory,
        "--ioengine=psync",
        "--output-format=json",
    ];
    all.extend(args);
    let out = run("fio", &all.map_os());
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("fio's JSON: {e}: {out}"));
    let job = report["jobs"][0].clone();
    assert_eq!(job["error"], 0, "fio {args:?} in {}: {job}", dir.display());
    job
}

fn remove_job_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("bench"))
        {
            std::fs::remove_file(path).unwrap();
        }
    }
}

fn measure(variant: &mut Variant, place: &Place, sizes: &Sizes) {
    let runtime = format!("--runtime={}", sizes.runtime_s);
    let size = |s: &str| format!("--size={s}");
    let dir = place.dir.as_path();

    let fsync_file = size(sizes.fsync_file);
    let job = fio(
        dir,
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--fsync=1",
            &fsync_file,
            &runtime,
        ],
    );
    variant
        .fsync_write_iops
        .push(job["write"]["iops"].as_f64().unwrap());
    remove_job_files(dir);

    let read_file = size(sizes.read_file);
    fio(dir, &["--rw=write", "--bs=1m", "--end_fsync=1", &read_file]);
    place.drop_host_cache();
    let job = fio(
        dir,
        &[
            "--rw=randread",
            "--bs=4k",
            "--direct=1",
            &read_file,
            &runtime,
        ],
    );
    variant
        .rand_read_iops
        .push(job["read"]["iops"].as_f64().unwrap());
    remove_job_files(dir);

    let seq_file = size(sizes.seq_file);
    let job = fio(dir, &["--rw=write", "--bs=1m", "--end_fsync=1", &seq_file]);
    // fio's bandwidth is in KiB/s.
    variant
        .seq_write_mibps
        .push(job["write"]["bw"].as_f64().unwrap() / 1024.0);
    remove_job_files(dir);
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() {
    harness::require_root();
    let quick = env_flag("BERTH_BENCH_QUICK");
    let rounds: usize = if quick {
        1
    } else {
        std::env::var("BERTH_BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(3)
    };
    let sizes = if quick { &QUICK } else { &FULL };
    let mut variants = variants(env_flag("BERTH_BENCH_LEVERS") && !quick);
    let scratch = scratch();
    let mut n = 0;
    for _ in 0..rounds {
        for variant in variants.iter_mut() {
            n += 1;
            let place = Place::make(&scratch, variant.setup, n);
            measure(variant, &place, sizes);
        }
    }
    println!(
        "fio in a 1 GiB loopfs volume against a plain directory on the host filesystem \
         ({}), median of {rounds} round(s)",
        run(
            "findmnt",
            &["-no", "FSTYPE,SOURCE", "-T", path_str(scratch.path())].map(OsStr::new)
        )
    );
    println!(
        "  {:<28} {:>18} {:>18} {:>18}",
        "", "4k randwrite+fsync", "4k randread", "1M seq write"
    );
    let plain = (
        median(&variants[0].fsync_write_iops),
        median(&variants[0].rand_read_iops),
        median(&variants[0].seq_write_mibps),
    );
    for v in &variants {
        let (w, r, s) = (
            median(&v.fsync_write_iops),
            median(&v.rand_read_iops),
            median(&v.seq_write_mibps),
        );
        println!(
            "  {:<28} {:>7.0} IOPS {:>5.2}x {:>7.0} IOPS {:>5.2}x {:>6.0} MiB/s {:>5.2}x",
            v.label,
            w,
            w / plain.0,
            r,
            r / plain.1,
            s,
            s / plain.2
        );
    }
    println!("  targets: 4k randwrite+fsync >= 0.60x, 4k randread >= 0.90x, seq write >= 0.90x");
}
