//! Engine lifecycle benchmark on the real host: create → publish → unpublish → delete of
//! plain directory volumes, through the engine API (no front-end), as root.
//!
//! Prints p50/p99 per operation and for the whole lifecycle. `BERTH_BENCH_N` sets the
//! number of volumes (default 500; `BERTH_BENCH_QUICK=1`, as the test command runs it: 20).
//! Each state change makes one durable store commit, so the figures are dominated by fsync;
//! the store's own counters are checked for exactly that (a count, not a timing: it cannot
//! flake).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth::engine::pool::PoolConfig;
use berth::engine::types::*;
use berth::engine::{Engine, EngineConfig, NodeInfo, VolumeService};
use berth::host::linux::LinuxHost;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label:<12} p50 {:>8.1} µs   p99 {:>8.1} µs   (n={})",
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.len()
    );
}

fn main() {
    if unsafe_geteuid() != 0 {
        eprintln!("engine_lifecycle: needs root (it bind-mounts)");
        std::process::exit(1);
    }
    let n: usize = std::env::var("BERTH_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(
            if std::env::var("BERTH_BENCH_QUICK").is_ok_and(|v| v == "1") {
                20
            } else {
                500
            },
        );
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let pool_path = dir.path().join("volumes");
    let targets = dir.path().join("targets");
    std::fs::create_dir_all(&pool_path).expect("pool dir");
    std::fs::create_dir_all(&targets).expect("targets dir");
    let mut pool = PoolConfig::default_root(dir.path());
    pool.paths = vec![pool_path];
    let engine = Engine::open(
        EngineConfig {
            store_path: dir.path().join("berth.redb"),
            pools: vec![pool],
            node: NodeInfo::default(),
        },
        LinuxHost::new(),
    )
    .expect("engine");
    let caller = Caller {
        frontend: Frontend::Internal,
        wait_if_busy: false,
    };
    let (mut create, mut publish, mut unpublish, mut delete, mut whole) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let name = VolumeName::parse(&format!("bench-{i}")).expect("name");
        let target = PublishTarget::Bind {
            path: targets.join(format!("t{i}")),
            read_only: false,
        };
        let start = Instant::now();
        engine
            .create(
                caller,
                CreateRequest {
                    name: name.clone(),
                    spec: VolumeSpec::default(),
                    owner: Owner::default(),
                },
            )
            .expect("create");
        let t1 = Instant::now();
        engine
            .publish(caller, &name, target.clone())
            .expect("publish");
        let t2 = Instant::now();
        engine.unpublish(caller, &name, &target).expect("unpublish");
        let t3 = Instant::now();
        engine.delete(caller, &name).expect("delete");
        let t4 = Instant::now();
        create.push(t1 - start);
        publish.push(t2 - t1);
        unpublish.push(t3 - t2);
        delete.push(t4 - t3);
        whole.push(t4 - start);
    }
    println!("engine lifecycle, {n} directory volumes, real mounts, durable store:");
    report("create", create);
    report("publish", publish);
    report("unpublish", unpublish);
    report("delete", delete);
    report("lifecycle", whole);
    let store = engine.metrics().store;
    println!(
        "store: {} durable commits ({:.2} per operation), {} unsynced",
        store.durable_commits,
        store.durable_commits as f64 / (4 * n) as f64,
        store.unsynced_commits
    );
    assert_eq!(
        store.durable_commits,
        4 * n as u64,
        "one durable commit (one fsync) per create, publish, unpublish and delete"
    );
    let _: PathBuf = dir.path().to_path_buf();
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
