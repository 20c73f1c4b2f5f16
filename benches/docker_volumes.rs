//! Docker volume round trip, berth against Docker's built-in `local` driver, on a private
//! dockerd: one round is `docker volume create` + `docker run --rm -v VOL:/data IMAGE true`
//! + `docker volume rm`, timed as a whole from the CLI.
//!
//! Prints the median round for `local`, for berth without a size (a plain directory) and
//! for berth with `--opt size=16MiB` (its own loop-mounted ext4), and each berth figure as a
//! ratio of `local`. Variants are interleaved round by round so drift hits all alike.
//! `BERTH_BENCH_ROUNDS` sets the rounds (default 20; 3 with `BERTH_BENCH_QUICK=1`, the test
//! command's mode, which prints and asserts nothing about time). Needs root, docker.io and
//! busybox-static, like the end-to-end tests.
//!
//! # Figures (10 rounds, release, this 2-core machine shared with other builds)
//! A round is dominated by `docker run` (about 0.4 s); berth's own part of a sized volume is
//! its create (format, allocate, mount) and its remove (unmount, image freed). Before the
//! trash (2026-12-07, load about 2): local 444.5 ms, berth directory 1.02x, berth
//! size=16MiB 1.10x. After (a removed image and its mount point are renamed into the pool's
//! trash and unlinked in the background, so `docker volume rm` no longer waits for the host
//! filesystem to discard the image's extents), six runs at load 5-7: local 481-550 ms,
//! directory 0.97-1.12x, size=16MiB 1.06, 1.10, 1.13, 1.21, 1.22, 1.25x. Berth's own time
//! in a sized round, from its log: create 17.6 ms (mostly `mkfs.ext4`), publish 0.6,
//! unpublish 1.1, delete 5.7 ms; the directory variant's 0.97-1.12x is what dockerd's
//! plugin calls cost beside it, and with 10 rounds the spread between runs is as wide as
//! the bar's margin.

#[path = "../tests/support/docker_plugin.rs"]
mod docker_plugin;
#[path = "../tests/support/dockerd.rs"]
mod dockerd;
#[path = "../tests/support/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use docker_plugin::Berth;
use dockerd::{Dockerd, IMAGE};

struct Variant {
    label: &'static str,
    driver: String,
    opts: &'static [&'static str],
    samples: Vec<Duration>,
}

fn round(docker: &Dockerd, variant: &Variant, volume: &str) -> Duration {
    let started = Instant::now();
    let mut create = vec!["volume", "create", "--driver", &variant.driver];
    for opt in variant.opts {
        create.extend(["--opt", opt]);
    }
    create.push(volume);
    docker.docker_ok(&create);
    let mount = format!("{volume}:/data");
    docker.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &mount,
        IMAGE,
        "true",
    ]);
    docker.docker_ok(&["volume", "rm", volume]);
    started.elapsed()
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn main() {
    let quick = std::env::var("BERTH_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(if quick { 3 } else { 20 });
    // Declared first so it is dropped last: dockerd's teardown may still call the plugin.
    let berth = Berth::start();
    let docker = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    let mut variants = [
        Variant {
            label: "local",
            driver: "local".into(),
            opts: &[],
            samples: Vec::new(),
        },
        Variant {
            label: "berth (directory)",
            driver: berth.driver().into(),
            opts: &[],
            samples: Vec::new(),
        },
        Variant {
            label: "berth (size=16MiB)",
            driver: berth.driver().into(),
            opts: &["size=16MiB"],
            samples: Vec::new(),
        },
    ];
    for (i, variant) in variants.iter().enumerate() {
        round(&docker, variant, &format!("warmup-{i}"));
    }
    for r in 0..rounds {
        for (i, variant) in variants.iter_mut().enumerate() {
            let took = round(&docker, variant, &format!("bench-{r}-{i}"));
            variant.samples.push(took);
        }
    }
    println!("docker volume create + docker run --rm -v VOL:/data true + docker volume rm");
    println!(
        "median of {rounds} rounds (dockerd {}):",
        docker.storage_driver()
    );
    let local = median(&variants[0].samples);
    for variant in &variants {
        let m = median(&variant.samples);
        println!(
            "  {:<20} {:>8.1} ms   {:.2}x local",
            variant.label,
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / local.as_secs_f64()
        );
    }
}
