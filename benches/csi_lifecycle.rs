//! CSI benchmark against the real `berth` daemon over its unix socket, as root.
//!
//! 1. Lifecycle: Create → Stage → Publish → Unpublish → Unstage → Delete of plain directory
//!    volumes (no capacity range), at concurrency 1 and 8: p50/p99 per RPC, end to end, and
//!    volumes per second.
//! 2. Scale: `BERTH_BENCH_SCALE` volumes in the store; ListVolumes over all pages at several
//!    page sizes (checked complete, ordered and without duplicates), GetCapacity, the
//!    daemon's RSS, and the time from a restart to a ready Probe.
//!
//! Environment: `BERTH_BENCH_N` lifecycle volumes per concurrency level (default 200),
//! `BERTH_BENCH_SCALE` (default 10000), `BERTH_BENCH_PAGES` page sizes (default
//! `1,10,100,1000,0`), `BERTH_TEST_DIR` where the daemon's state and pools live (default
//! /var/tmp; every state change is an fsync'd commit, so the disk under it sets the pace),
//! `BERTH_LOG` the daemon's log filter (default `warn,berth::daemon=info`: no line per
//! operation, but the start-up line with its own ready time).

#[path = "../tests/support/csi_daemon.rs"]
mod csi_daemon;
#[path = "../tests/support/harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use berth::csi::proto::*;
use csi_daemon::{Clients, Daemon};

const RPCS: [&str; 6] = [
    "CreateVolume",
    "NodeStageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeUnstageVolume",
    "DeleteVolume",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "  {label:<22} p50 {:>9.1} µs   p99 {:>9.1} µs   (n={})",
        micros(percentile(&samples, 0.5)),
        micros(percentile(&samples, 0.99)),
        samples.len()
    );
}

fn mount_capability() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

/// The filesystem type under `path`, from the mount table.
fn fs_type_of(path: &Path) -> String {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, mount_point, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), fs.to_string()))
        })
        .max()
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "unknown".into())
}

/// One volume's trip through the six RPCs; returns each RPC's time.
async fn lifecycle(c: &mut Clients, id: &str, k8s: &Path) -> [Duration; 6] {
    let staging = k8s.join(id).join("globalmount");
    let target = k8s.join(id).join("pod").join("mount");
    // What kubelet prepares before it calls: the staging directory and the target's parent.
    std::fs::create_dir_all(&staging).expect("staging dir");
    std::fs::create_dir_all(target.parent().expect("parent")).expect("target parent");
    let (staging_s, target_s) = (staging.display().to_string(), target.display().to_string());
    let mut times = [Duration::ZERO; 6];
    let t = Instant::now();
    c.controller
        .create_volume(CreateVolumeRequest {
            name: id.into(),
            volume_capabilities: vec![mount_capability()],
            ..Default::default()
        })
        .await
        .expect("CreateVolume");
    times[0] = t.elapsed();
    let t = Instant::now();
    c.node
        .node_stage_volume(NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging_s.clone(),
            volume_capability: Some(mount_capability()),
            ..Default::default()
        })
        .await
        .expect("NodeStageVolume");
    times[1] = t.elapsed();
    let t = Instant::now();
    c.node
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging_s.clone(),
            target_path: target_s.clone(),
            volume_capability: Some(mount_capability()),
            ..Default::default()
        })
        .await
        .expect("NodePublishVolume");
    times[2] = t.elapsed();
    let t = Instant::now();
    c.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target_s,
        })
        .await
        .expect("NodeUnpublishVolume");
    times[3] = t.elapsed();
    let t = Instant::now();
    c.node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging_s,
        })
        .await
        .expect("NodeUnstageVolume");
    times[4] = t.elapsed();
    let t = Instant::now();
    c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("DeleteVolume");
    times[5] = t.elapsed();
    let _ = std::fs::remove_dir_all(k8s.join(id));
    times
}

/// Runs `n` lifecycles with `concurrency` workers; prints the figures, returns volumes/s.
async fn lifecycle_run(daemon: &Daemon, clients: &Clients, n: usize, concurrency: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let k8s = daemon.k8s(&format!("bench-c{concurrency}"));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, k8s, mut c) = (Arc::clone(&next), k8s.clone(), clients.clone());
        workers.push(tokio::spawn(async move {
            let mut samples: Vec<[Duration; 6]> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return samples;
                }
                let id = format!("lc{concurrency}-{i:06}");
                samples.push(lifecycle(&mut c, &id, &k8s).await);
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let wall = started.elapsed();
    let rate = n as f64 / wall.as_secs_f64();
    println!(
        "lifecycle, concurrency {concurrency}: {n} volumes in {wall:.2?} = {rate:.1} volumes/s"
    );
    for (i, rpc) in RPCS.iter().enumerate() {
        report(rpc, all.iter().map(|s| s[i]).collect());
    }
    report("end to end", all.iter().map(|s| s.iter().sum()).collect());
    rate
}

/// Creates `count` plain directory volumes with 8 workers, as Kubernetes would.
async fn populate(clients: &Clients, count: usize) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (next, mut c) = (Arc::clone(&next), clients.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                // What the external-provisioner sends with --extra-create-metadata; berth
                // records the claim's name and namespace as labels.
                let name = format!("scale-{i:06}");
                let parameters = [
                    ("csi.storage.k8s.io/pvc/name", format!("data-{i}")),
                    ("csi.storage.k8s.io/pvc/namespace", "bench".to_string()),
                    ("csi.storage.k8s.io/pv/name", name.clone()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                c.controller
                    .create_volume(CreateVolumeRequest {
                        name,
                        volume_capabilities: vec![mount_capability()],
                        parameters,
                        ..Default::default()
                    })
                    .await
                    .expect("CreateVolume");
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    started.elapsed()
}

/// Lists every page at `page_size`; checks the listing is complete, ordered and without
/// duplicates; returns (pages, total time, per-page times).
async fn list_all(
    c: &mut Clients,
    page_size: i32,
    expected: &[String],
) -> (usize, Duration, Vec<Duration>) {
    let mut seen = Vec::with_capacity(expected.len());
    let mut token = String::new();
    let mut per_page = Vec::new();
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let page = c
            .controller
            .list_volumes(ListVolumesRequest {
                max_entries: page_size,
                starting_token: token,
            })
            .await
            .expect("ListVolumes")
            .into_inner();
        per_page.push(t.elapsed());
        if page_size > 0 {
            assert!(page.entries.len() <= page_size as usize, "page too long");
        }
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.expect("volume").volume_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    let total = started.elapsed();
    assert_eq!(seen.len(), expected.len(), "page size {page_size}: count");
    assert!(
        seen == expected,
        "page size {page_size}: every volume once, in order"
    );
    (per_page.len(), total, per_page)
}

/// The log without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn time_to_ready(daemon: &mut Daemon) -> (Duration, Option<u64>) {
    let ready_lines = |log: &str| strip_ansi(log).matches("berth is ready").count();
    let before = ready_lines(&daemon.log());
    let status = daemon.stop();
    assert!(status.is_some_and(|s| s.success()), "berth stops cleanly");
    let started = Instant::now();
    daemon.spawn();
    loop {
        if let Ok(channel) = berth::csi::connect(&daemon.endpoint()).await {
            let mut identity = identity_client::IdentityClient::new(channel);
            if let Ok(probe) = identity.probe(ProbeRequest {}).await
                && probe.into_inner().ready == Some(true)
            {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "berth did not come back"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ready = started.elapsed();
    // The start-up line is written just after the socket is served.
    let waited = Instant::now();
    while ready_lines(&daemon.log()) == before && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // berth's own figure, from opening the store to serving.
    let own = strip_ansi(&daemon.log())
        .lines()
        .rev()
        .find(|l| l.contains("berth is ready"))
        .and_then(|l| l.split("millis=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    (ready, own)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    harness::require_root();
    let log_level = std::env::var("BERTH_LOG").unwrap_or_else(|_| "warn,berth::daemon=info".into());
    let n: usize = env_or("BERTH_BENCH_N", 200);
    let scale: usize = env_or("BERTH_BENCH_SCALE", 10_000);
    let page_sizes: Vec<i32> = std::env::var("BERTH_BENCH_PAGES")
        .unwrap_or_else(|_| "1,10,100,1000,0".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();

    let mut daemon = Daemon::start_logging("", &log_level);
    let clients = daemon.clients().await;
    let base: PathBuf = daemon.path().to_path_buf();
    println!(
        "berth CSI bench: state and pools in {} ({}), {} cores, daemon log level {}",
        base.display(),
        fs_type_of(&base),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        log_level
    );

    // The cost of the transport alone: an RPC that does not reach the engine, and one that
    // runs a blocking engine call.
    let mut c = clients.clone();
    let (mut info, mut probe) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        let t = Instant::now();
        c.node
            .node_get_info(NodeGetInfoRequest {})
            .await
            .expect("NodeGetInfo");
        info.push(t.elapsed());
        let t = Instant::now();
        c.identity.probe(ProbeRequest {}).await.expect("Probe");
        probe.push(t.elapsed());
    }
    println!("transport:");
    report("NodeGetInfo", info);
    report("Probe", probe);

    let mut rates = BTreeMap::new();
    for concurrency in [1, 8] {
        rates.insert(
            concurrency,
            lifecycle_run(&daemon, &clients, n, concurrency).await,
        );
    }
    println!(
        "volumes/s at concurrency 8 vs 1: {:.2}x",
        rates[&8] / rates[&1]
    );

    println!("scale: creating {scale} plain directory volumes (8 workers)");
    let took = populate(&clients, scale).await;
    println!(
        "  created in {took:.2?} = {:.0} volumes/s",
        scale as f64 / took.as_secs_f64()
    );
    let expected: Vec<String> = (0..scale).map(|i| format!("scale-{i:06}")).collect();
    let mut c = clients.clone();
    for &page_size in &page_sizes {
        let (pages, total, per_page) = list_all(&mut c, page_size, &expected).await;
        let mut per_page = per_page;
        per_page.sort();
        println!(
            "  ListVolumes max_entries {page_size:>5}: {pages:>6} pages in {total:>10.2?}, page p50 {:>8.1} µs p99 {:>8.1} µs, all {scale} once in order",
            micros(percentile(&per_page, 0.5)),
            micros(percentile(&per_page, 0.99)),
        );
    }
    let mut capacity = Vec::new();
    let mut available = 0;
    for _ in 0..200 {
        let t = Instant::now();
        available = c
            .controller
            .get_capacity(GetCapacityRequest::default())
            .await
            .expect("GetCapacity")
            .into_inner()
            .available_capacity;
        capacity.push(t.elapsed());
    }
    report("GetCapacity", capacity);
    println!("  available_capacity {available} bytes");
    println!(
        "  daemon RSS with {scale} volumes, after listing: {:.1} MiB",
        daemon.rss_kib().unwrap_or(0) as f64 / 1024.0
    );
    let store = daemon.path().join("state/berth.redb");
    println!(
        "  store file {}: {:.1} MiB",
        store.display(),
        std::fs::metadata(&store).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64
    );
    drop(c);
    drop(clients);
    let (ready, own) = time_to_ready(&mut daemon).await;
    println!(
        "  restart to ready Probe: {:.1} ms (berth's own store-open-to-serving: {} ms)",
        ready.as_secs_f64() * 1e3,
        own.map_or("?".into(), |m| m.to_string())
    );
    println!(
        "  daemon RSS with {scale} volumes, fresh after restart: {:.1} MiB",
        daemon.rss_kib().unwrap_or(0) as f64 / 1024.0
    );
}
