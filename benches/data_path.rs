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
    runtime_s: 1,
    fsync_file: "16m",
    read_file: "64m",
    seq_file: "128m",
};

/// A volume made with `mkfs` + `losetup` + `mount`, differing from berth's way only in what
/// its fields say (berth's own way also sets `POSIX_FADV_RANDOM` on the image's open file,
/// which `losetup` cannot: [`EXT4`] and [`XFS`] are berth's way without it).
#[derive(Clone, Copy)]
struct Lever {
    fs: FsType,
    direct_io: bool,
    sector_size: u32,
    mkfs: &'static [&'static str],
    /// The inner filesystem's mount options.
    options: &'static str,
    /// `/sys/block/loopN/queue/<name>` values written before the mount.
    queue: &'static [(&'static str, &'static str)],
}

const EXT4: Lever = Lever {
    fs: FsType::Ext4,
    direct_io: false,
    sector_size: 512,
    mkfs: &[
        "-E",
        "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
        "-m",
        "0",
    ],
    options: "noinit_itable",
    queue: &[],
};

const XFS: Lever = Lever {
    fs: FsType::Xfs,
    direct_io: false,
    sector_size: 512,
    mkfs: &["-K"],
    options: "nouuid",
    queue: &[],
};

const EXT4_DIRECT: Lever = Lever {
    direct_io: true,
    ..EXT4
};

/// One way of making the directory the jobs run in.
#[derive(Clone, Copy)]
enum Setup {
    Plain,
    /// berth's own `create_image` + `mount_image`.
    Berth(FsType),
    Lever(Lever),
}

/// One round's figures: fsync'd 4k write IOPS, 4k random read IOPS (`O_DIRECT`, then
/// buffered), 1 MiB write MiB/s.
type Figures = [f64; COLUMNS];

const COLUMNS: usize = 4;
const HEADER: [&str; COLUMNS] = [
    "4k randwrite+fsync",
    "4k randread direct",
    "4k randread buffered",
    "1M seq write",
];
const UNITS: [&str; COLUMNS] = ["IOPS", "IOPS", "IOPS", "MiB/s"];

struct Variant {
    label: &'static str,
    setup: Setup,
    rounds: Vec<Figures>,
    /// The plain directory's figures measured right next to each round's.
    plain: Vec<Figures>,
}

impl Variant {
    fn new(label: &'static str, setup: Setup) -> Self {
        Self {
            label,
            setup,
            rounds: Vec::new(),
            plain: Vec::new(),
        }
    }
}

/// berth's variants, and the levers whose label contains one of `levers` (all of them for
/// `1`).
fn variants(levers: &[String]) -> Vec<Variant> {
    let mut all = vec![
        Variant::new("berth loopfs ext4", Setup::Berth(FsType::Ext4)),
        Variant::new("berth loopfs xfs", Setup::Berth(FsType::Xfs)),
    ];
    let lever = |label, lever| Variant::new(label, Setup::Lever(lever));
    all.extend([
        lever("ext4, no fadvise", EXT4),
        lever(
            "ext4, loop read_ahead 128k",
            Lever {
                queue: &[("read_ahead_kb", "128")],
                ..EXT4
            },
        ),
        lever(
            "ext4, noatime",
            Lever {
                options: "noinit_itable,noatime",
                ..EXT4
            },
        ),
        lever(
            "ext4, lazytime",
            Lever {
                options: "noinit_itable,lazytime",
                ..EXT4
            },
        ),
        lever("ext4, direct I/O", EXT4_DIRECT),
        lever(
            "ext4, dio, mq-deadline",
            Lever {
                queue: &[("scheduler", "mq-deadline")],
                ..EXT4_DIRECT
            },
        ),
        lever(
            "ext4, dio, rq_affinity 1",
            Lever {
                queue: &[("rq_affinity", "1")],
                ..EXT4_DIRECT
            },
        ),
        lever(
            "ext4, dio, nomerges 2",
            Lever {
                queue: &[("nomerges", "2")],
                ..EXT4_DIRECT
            },
        ),
        lever(
            "ext4, dio, 4k lbs, none",
            Lever {
                sector_size: 4096,
                queue: &[("scheduler", "none")],
                ..EXT4_DIRECT
            },
        ),
        lever(
            "ext4, buffered, 4k lbs",
            Lever {
                sector_size: 4096,
                ..EXT4
            },
        ),
        lever("xfs, no fadvise", XFS),
        lever(
            "xfs, dio, 4k lbs+sectors",
            Lever {
                direct_io: true,
                sector_size: 4096,
                mkfs: &["-K", "-s", "size=4096"],
                ..XFS
            },
        ),
        lever(
            "xfs, logbsize 256k",
            Lever {
                options: "nouuid,logbsize=256k",
                ..XFS
            },
        ),
    ]);
    let berth = 2;
    let chosen = |v: &Variant| {
        levers
            .iter()
            .any(|l| l == "1" || v.label.contains(l.as_str()))
    };
    let levers = all.split_off(berth).into_iter().filter(chosen);
    all.extend(levers);
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

fn os<'a>(args: &[&'a str]) -> Vec<&'a OsStr> {
    args.iter().map(|a| OsStr::new(*a)).collect()
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
            Setup::Lever(lever) => {
                let size = GIB.max(lever.fs.min_size()).to_string();
                let image_str = path_str(&image);
                run("truncate", &os(&["-s", &size, image_str]));
                let force = if lever.fs == FsType::Xfs { "-f" } else { "-F" };
                let mut args = vec!["-q", force];
                args.extend(lever.mkfs);
                args.push(image_str);
                run(&format!("mkfs.{}", lever.fs.as_str()), &os(&args));
                run("fallocate", &os(&["-l", &size, image_str]));
                let dio = format!("--direct-io={}", if lever.direct_io { "on" } else { "off" });
                let sector = format!("--sector-size={}", lever.sector_size);
                let device = run("losetup", &os(&["-f", "--show", &dio, &sector, image_str]));
                let name = device.trim_start_matches("/dev/");
                for (knob, value) in lever.queue {
                    let file = format!("/sys/block/{name}/queue/{knob}");
                    std::fs::write(&file, value).unwrap_or_else(|e| panic!("{file}: {e}"));
                }
                let place = Self {
                    dir,
                    image: Some(image),
                    device: Some(device),
                };
                let device = place.device.as_deref().unwrap();
                run(
                    "mount",
                    &os(&["-o", lever.options, device, path_str(&place.dir)]),
                );
                place
            }
        }
    }

    /// Writes back everything dirty on the host filesystem, so that no job pays for an
    /// earlier one's (or another variant's) writeback.
    /// The volume's filesystem first (a no-op twice over for the plain directory), then the
    /// host's, which the scratch directory holding `dir` is on.
    fn settle(&self) {
        for path in [&self.dir, self.dir.parent().unwrap()] {
            let dir = std::fs::File::open(path).unwrap();
            // SAFETY: syncfs only reads its fd argument; `dir` is open.
            let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
            assert_eq!(rc, 0, "syncfs {}", path.display());
        }
    }

    /// Drops the page cache of the job files (for a volume: the inner filesystem's) and of
    /// the image (the host's), all clean after a flush, so that a read finds nothing cached
    /// on either side.
    fn drop_caches(&self) {
        let mut files = job_files(&self.dir);
        files.extend(self.image.clone());
        for path in files {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: posix_fadvise only reads its integer arguments; `file` is open.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0, "posix_fadvise {}", path.display());
        }
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
    let out = run("fio", &os(&all));
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("fio's JSON: {e}: {out}"));
    let job = report["jobs"][0].clone();
    assert_eq!(job["error"], 0, "fio {args:?} in {}: {job}", dir.display());
    job
}

fn job_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("bench"))
        })
        .collect()
}

fn remove_job_files(dir: &Path) {
    for path in job_files(dir) {
        std::fs::remove_file(path).unwrap();
    }
}

fn measure(place: &Place, sizes: &Sizes) -> Figures {
    let runtime = format!("--runtime={}", sizes.runtime_s);
    let size = |s: &str| format!("--size={s}");
    let dir = place.dir.as_path();

    let fsync_file = size(sizes.fsync_file);
    place.settle();
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
    let fsync_write_iops = job["write"]["iops"].as_f64().unwrap();
    remove_job_files(dir);

    // Random reads of a file written and flushed before, with every cache of it dropped
    // first: with O_DIRECT (each read goes to the disk: fio's random map reads each block
    // once, so a volume's host cache can only help it through readahead), then buffered
    // (what most applications do: one page cache and one readahead on each side, the inner
    // filesystem's for a volume).
    let read_file = size(sizes.read_file);
    fio(dir, &["--rw=write", "--bs=1m", "--end_fsync=1", &read_file]);
    let mut rand_read_iops = [0.0; 2];
    for (direct, iops) in ["--direct=1", "--direct=0"].iter().zip(&mut rand_read_iops) {
        place.settle();
        place.drop_caches();
        let job = fio(
            dir,
            &["--rw=randread", "--bs=4k", direct, &read_file, &runtime],
        );
        *iops = job["read"]["iops"].as_f64().unwrap();
    }
    remove_job_files(dir);

    let seq_file = size(sizes.seq_file);
    place.settle();
    let job = fio(dir, &["--rw=write", "--bs=1m", "--end_fsync=1", &seq_file]);
    // fio's bandwidth is in KiB/s.
    let seq_write_mibps = job["write"]["bw"].as_f64().unwrap() / 1024.0;
    remove_job_files(dir);
    [
        fsync_write_iops,
        rand_read_iops[0],
        rand_read_iops[1],
        seq_write_mibps,
    ]
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Each round's figures as ratios to the plain directory's measured next to them.
fn paired_ratios(variant: &Variant) -> Vec<Figures> {
    variant
        .rounds
        .iter()
        .zip(&variant.plain)
        .map(|(v, p)| std::array::from_fn(|i| v[i] / p[i]))
        .collect()
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
    let levers: Vec<String> = match std::env::var("BERTH_BENCH_LEVERS") {
        Ok(list) if !quick => list
            .split(',')
            .filter(|l| !l.is_empty() && *l != "0")
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let mut variants = variants(&levers);
    let scratch = scratch();
    println!(
        "fio in a 1 GiB loopfs volume against a plain directory on the host filesystem ({}), \
         {rounds} round(s); ratios are to the plain directory measured beside each",
        run(
            "findmnt",
            &os(&["-no", "FSTYPE,SOURCE", "-T", path_str(scratch.path())])
        )
    );
    // The host's fsync latency drifts several times over within minutes (other builds):
    // each variant is measured right next to the plain directory, in alternating order, and
    // compared with that measurement only.
    let plain = Place::make(&scratch, Setup::Plain, 0);
    let mut n = 0;
    for round in 0..rounds {
        // Every other round runs the variants backwards.
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            n += 1;
            let place = Place::make(&scratch, variants[i].setup, n);
            let (inside, beside) = if n % 2 == 0 {
                let inside = measure(&place, sizes);
                (inside, measure(&plain, sizes))
            } else {
                let beside = measure(&plain, sizes);
                (measure(&place, sizes), beside)
            };
            variants[i].rounds.push(inside);
            variants[i].plain.push(beside);
        }
        println!(
            "round {}: the variant, then the plain directory beside it",
            round + 1
        );
        for v in &variants {
            let cells: Vec<String> = (0..COLUMNS)
                .map(|i| {
                    let (x, p) = (v.rounds[round][i], v.plain[round][i]);
                    format!("{x:>6.0}/{p:<6.0} {:<5} {:>5.2}x", UNITS[i], x / p)
                })
                .collect();
            println!("  {:<28} {}", v.label, cells.join("  "));
        }
    }
    println!(
        "median of the per-round ratios [lowest-highest]: {}",
        HEADER.join(" / ")
    );
    for v in &variants {
        let ratios = paired_ratios(v);
        let cells: Vec<String> = (0..COLUMNS)
            .map(|i| {
                let column: Vec<f64> = ratios.iter().map(|r| r[i]).collect();
                let low = column.iter().copied().fold(f64::INFINITY, f64::min);
                let high = column.iter().copied().fold(0.0, f64::max);
                format!("{:>5.2}x [{low:.2}-{high:.2}]", median(&column))
            })
            .collect();
        println!("  {:<28} {}", v.label, cells.join("  "));
    }
    println!("  targets: 4k randwrite+fsync >= 0.60x, 4k randread >= 0.90x, seq write >= 0.90x");
}
