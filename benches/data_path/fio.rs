//! The fio jobs the data path bench runs in one place, and the figures read from their
//! JSON reports: fsync'd 4k writes, 4k random reads (direct, then buffered) and 1 MiB
//! sequential writes. Apart from `data_path.rs`, which picks the variants, runs the rounds
//! and reports.

use std::path::{Path, PathBuf};

use super::place::Place;
use super::{os, run};

/// How long and how big each job runs.
pub(super) struct Sizes {
    runtime_s: u32,
    fsync_file: &'static str,
    read_file: &'static str,
    /// How much of `read_file` a random read job reads at most: a quarter, so that the
    /// job is not over by the time a cache would hold the whole file.
    read_io: &'static str,
    seq_file: &'static str,
}

pub(super) const FULL: Sizes = Sizes {
    runtime_s: 5,
    fsync_file: "64m",
    read_file: "256m",
    read_io: "64m",
    seq_file: "512m",
};

pub(super) const QUICK: Sizes = Sizes {
    runtime_s: 1,
    fsync_file: "16m",
    read_file: "64m",
    read_io: "16m",
    seq_file: "128m",
};

/// One round's figures: fsync'd 4k write IOPS, 4k random read IOPS (`O_DIRECT`, then
/// buffered), 1 MiB write MiB/s.
pub(super) type Figures = [f64; COLUMNS];

pub(super) const COLUMNS: usize = 4;
pub(super) const HEADER: [&str; COLUMNS] = [
    "4k randwrite+fsync",
    "4k randread direct",
    "4k randread buffered",
    "1M seq write",
];
pub(super) const UNITS: [&str; COLUMNS] = ["IOPS", "IOPS", "IOPS", "MiB/s"];

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

pub(super) fn job_files(dir: &Path) -> Vec<PathBuf> {
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

pub(super) fn measure(place: &Place, sizes: &Sizes) -> Figures {
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
    let read_io = format!("--io_size={}", sizes.read_io);
    fio(dir, &["--rw=write", "--bs=1m", "--end_fsync=1", &read_file]);
    let mut rand_read_iops = [0.0; 2];
    for (direct, iops) in ["--direct=1", "--direct=0"].iter().zip(&mut rand_read_iops) {
        place.settle();
        place.drop_caches();
        let job = fio(
            dir,
            &[
                "--rw=randread",
                "--bs=4k",
                direct,
                &read_file,
                &read_io,
                &runtime,
            ],
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
