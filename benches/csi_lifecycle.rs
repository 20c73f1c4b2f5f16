//! CSI benchmark against the real `berth` daemon over its unix socket, as root.
//!
//! 1. Floor: what a lifecycle cannot go below on this machine, measured in the same run (see
//!    `floor`): a gRPC round trip, an fsync'd append, mkdir/rmdir with a directory fsync, a
//!    bind mount and an umount. Every lifecycle figure is printed as a ratio to it.
//! 2. Lifecycle: Create → Stage → Publish → Unpublish → Unstage → Delete of plain directory
//!    volumes (no capacity range), at concurrency 1 and 8: p50/p99 per RPC, end to end, and
//!    volumes per second; the bar is a directory lifecycle p50 within 2x the floor.
//! 3. Where the time goes (see `attribution`): each RPC split into engine and transport
//!    time with the durable store commits it made, read from the daemon's own metrics; a
//!    repeated call (nothing to do) must commit nothing, which is checked.
//! 4. Scale: `BERTH_BENCH_SCALE` volumes in the store, created and deleted with 8 workers,
//!    throughput at a tenth (at most 1,000) and at the full count; ListVolumes over all
//!    pages at several page sizes (checked complete, ordered and without duplicates; pages
//!    of up to 256 volumes probe each volume's health, larger ones report the daemon's
//!    health sweep, run every second here), GetCapacity, the daemon's RSS (after the
//!    creates, after a sweep, after the listings, after a restart and after the full
//!    listings that follow it), and the time from a restart to a ready Probe.
//!
//! Environment: `BERTH_BENCH_QUICK=1` for a smoke run (N=20, SCALE=500: the test command runs
//! it so the bench cannot rot; it prints figures, asserts no timing), `BERTH_BENCH_N`
//! lifecycle volumes per concurrency level (default 200), `BERTH_BENCH_SCALE` (default
//! 10000), `BERTH_BENCH_PAGES` page sizes (default `1,10,100,1000,0`), `BERTH_TEST_DIR`
//! where the daemon's state and pools live (default /var/tmp; every state change is an
//! fsync'd commit, so the disk under it sets the pace), `BERTH_LOG` the daemon's log filter
//! (default `warn,berth::daemon=info`: no line per operation, but the start-up line with its
//! own ready time), `BERTH_DAEMON_BIN` the berth binary to serve with (default: cargo's
//! build, dynamically linked; the README's figures are of the static release binary every
//! package ships, `packaging/build-release.sh`, whose RSS holds no shared libraries).
//!
//! # Where the time went (2 cores, ext4 on a virtual disk, shared with six other builds)
//! Profiled with `strace -c -f` on the daemon over the same 250 lifecycles (100 at C=1, 100
//! at C=8, 50 attributed), no exec in either.
//!
//! Before: 10 durable store commits per lifecycle (create 2: `Creating` then `Ready`; stage
//! and publish 2 each: `Publishing` then `Published`; unpublish and unstage 1; delete 2: the
//! tombstone then the removal), 1938 `fdatasync`s (7.8 per lifecycle), 1269 directory
//! `fsync`s (5.1: `make_dir` syncs the new directory and its parent, twice per create; the
//! delete syncs the parent of what it removed), 4056 `statfs` (16: the safe path walks check
//! each step's filesystem; placement's one `statvfs` per candidate pool), ~120 futex waits
//! (the hand-off to the blocking pool). The placement lock was held across the `Creating`
//! commit's `fsync`, so concurrent creates queued behind each other's disk flushes; every
//! commit was its own transaction and `fsync`. Lifecycle p50 at C=1 (under strace) 2.37x
//! the floor measured alongside; per RPC p50 to its floor: create 2.24x, stage 2.80x,
//! publish 2.97x, unpublish 1.54x, unstage 1.17x, delete 1.66x.
//!
//! After: one durable commit per RPC (6 per lifecycle) plus 4 unsynced completions that
//! recovery can redo; concurrent commits share one `fsync` (group commit): 1170
//! `fdatasync`s for the same 250 lifecycles (4.7 each). The directory `fsync`s are now the
//! larger half (5.1 per lifecycle, unchanged). Lifecycle p50 at C=1 (under strace) 1.82x the
//! floor; without strace, in a run whose disk was shared with other helpers' fio jobs
//! (fsync'd append p50 3.6 ms), 1.76x, and C=8 gave 2.43x the volumes/s of C=1.
//!
//! Then (`strace -f -T`, `perf record -g` and `perf stat` of the daemon over 300 lifecycles
//! from a Python grpcio client at C=1): a durable redb commit wrote about ten scattered
//! pages (51 `pwrite`s per lifecycle) and its `fdatasync` took 330-450 µs against 165-190
//! µs for a small append; a create made four directory `fsync`s (the volume directory and
//! the pool, then the data directory and the volume directory). Now each write is one frame
//! appended to the store's journal and one `fdatasync` of blocks written in place (10
//! `pwrite`s per lifecycle; redb is made durable at checkpoints, every few hundred writes),
//! and a create makes both directories first and syncs them deepest first (three `fsync`s,
//! the second and third covering what the first committed). The daemon's CPU time stayed
//! about 3 ms per lifecycle, two thirds of it in the kernel: the flushes' block I/O and
//! virtio notifications, and 76 context switches per lifecycle (20% of the CPU in
//! `finish_task_switch`). A current-thread runtime cut that by 7% with no change in
//! latency, and running engine calls with `block_in_place` instead of on the blocking pool
//! (a 10 µs round trip here) changed nothing measurable; neither was kept.
//!
//! Last, concurrent creates and deletes share the `fsync` of the pool directory, its trash
//! and the images directory (`host::linux::dir_sync`, a group sync like the store's). With
//! a Python client at C=8 it took the directory `fsync`s from 4.00 to 3.92 per lifecycle,
//! and C=8 vs C=1 stayed 2.3-2.7x in three alternating pairs of runs: on this VM the cores
//! are full at C=8 before the disk is. On a disk whose flush takes milliseconds the shared
//! syncs are what concurrent creates wait on.
//!
//! # Where the scale run's time and memory went (10,000 volumes, same machine)
//! Profiled with `perf record -g` and `heaptrack` on the daemon, and `perf stat` of its
//! start to ready (CPU time, which load does not inflate).
//!
//! Before: restart to ready 224-252 ms, of which the store's read was most: every record
//! decoded twice (serde buffers a record with a `#[serde(flatten)]` field as owned strings,
//! then decodes those), collected into a `Vec` of 632-byte records and moved into the table,
//! then every record cloned once more by recovery; 7,220 `mprotect`s growing the heap and the
//! page faults behind them. RSS 46-62 MiB after a restart: the records (each volume's two
//! Kubernetes labels in a `BTreeMap` whose smallest node is 544 bytes), redb's 4 MiB page
//! cache filled by the read, and freed start-up garbage. A full ListVolumes 71-98 ms: half in
//! `lstat` of each volume's data directory for its health (about 4 µs a call on this VM),
//! the rest in cloning every record and building the reply.
//!
//! After: records decoded in one pass straight into the table (`Store::load_each`), kept
//! behind `Arc` (listings and recovery take references), labels in one sorted allocation,
//! names shared between the table and the record, redb's cache at 256 KiB, and the release
//! build optimised as one unit (fat LTO: start-up CPU 68 -> 37 ms, RSS -2 MiB of mapped
//! binary). Start-up CPU time 37 ms; listings larger than 256 volumes report the daemon's
//! health sweep instead of probing each volume. The remaining RSS is about half the
//! daemon's own memory (records at about 1.2 KiB each) and half pages of its binary and
//! libraries, which the bench prints apart.
//!
//! # The next round: the reply and the allocator (10,000 volumes, same machine)
//! Figures from one run each, lifecycles cut to 5 or 20 (`BERTH_BENCH_N`); RSS as total
//! (own anonymous memory). The VM was shared with other builds: listing times swing by a
//! third from run to run, the RSS figures by about 0.5 MiB.
//!
//! Before (d89ec1f): right after the creates 24.0 MiB (14.8), unchanged after a health
//! sweep; right after the listings 28.3 (19.1); fresh after a restart 20.0 (11.5). A full
//! listing after the restart p50 21.3 ms, min 15.3 (an earlier run: 22.5 and 19.1), timed
//! with the bench's own check of the reply (about 1.5 ms). `perf record` on the daemon
//! during the full listings (its binary is stripped: kernel and libc symbols only; the
//! window also caught the first deletes) put malloc, free and their consolidation first in
//! user space: the reply is about six small
//! allocations per entry (id, topology list, its segment map and two strings, the
//! condition's message), megabytes per listing, which glibc kept once freed: a freed 2 MB
//! block raises its mmap and trim thresholds to that size, so up to twice that stays on the
//! heap, and each of the two arenas then held its own listing's worth.
//!
//! What each change did:
//! - a record's owner out of line (`OwnerSlot`: empty for CSI and Docker volumes, 120 bytes
//!   a record): fresh after a restart 18.9 (10.4), after the creates 22.5 (13.2);
//! - the topology built once per reply, not once per entry: within the noise of the
//!   listing times;
//! - fixed mmap and trim thresholds alone (tried through `GLIBC_TUNABLES`, two arenas):
//!   right after one listing 23.0 (13.8) instead of 26.8 (17.4), but after five listings
//!   in a row still 27.5 (18.8);
//! - one arena as well: after five listings 23.2 (14.7), though 26.0 (16.6) right after
//!   the first;
//! - handing the memory back 10 ms after a reply of more than 1,000 volumes, alone (two
//!   arenas, glibc's moving thresholds): no change, 26.8 (17.4) after a listing;
//! - all three together (two runs): right after a listing 22.4 (13.0) and 22.1 (12.7), the
//!   same as before it; after five listings in a row, measured at once, 23.1 (14.5) and
//!   22.7 (14.2).
//!
//! After (all of the above, two runs): after the creates 22.4 (13.0) and 22.0 (12.7); fresh
//! after a restart 18.8 (10.4) both; a full listing after a restart, timed from request to
//! decoded reply, p50 18.5 and 15.8 ms (min 15.7 and 11.8); two later runs with the same
//! daemon, on a busier and a quieter VM: 26.2 (min 17.0) and 14.2 (min 13.2).
//!
//! Not reached: 20 MiB right after the creates. glibc's `malloc_stats` (called through gdb)
//! after the creates and a sweep: 12.2 MB in use of 12.3 MB held, against 10.2 of 10.3
//! after a restart, so it is held blocks, not fragmentation. They are the per-thread caches
//! of freed blocks (tcache: no trim returns them) of the blocking threads the creates
//! started (18 threads after them, 7 after a restart): the same binary run with
//! `GLIBC_TUNABLES=glibc.malloc.tcache_count=0` gave 20.2 (10.8) after the creates. glibc
//! has no call to shrink those caches. Ending idle blocking threads after 1 s instead of
//! 10 (tokio's `thread_keep_alive`) was tried and not kept: 9 threads after the sweep, but
//! still 22.2 (12.9), since the blocks the ended threads hand back lie between records, and
//! meanwhile the heap had grown past them. The binary's and libraries' pages are 9.3 MiB of
//! the total after the creates against 8.4 after a restart.
//!
//! # Then: the threads' caches and the binary's pages (10,000 volumes, same machine)
//! `heaptrack` of a daemon killed right after the creates: 8.4 MB of live blocks, 6.2 MB
//! of them the records themselves (an `Arc<Volume>` of about 500 bytes each, as after a
//! restart), so the 2.1 MiB more of the daemon's own memory than after a restart is not
//! live data. `smaps`: of the rest of the RSS, 7.6 MiB were pages of berth's binary (the
//! kernel maps 64 KiB around each page of code touched, and 80% of the 9.5 MB binary had
//! been touched somewhere), 2.2 MiB libc, libm, ld.so and libgcc_s; thread stacks about
//! 30 KiB a thread.
//! - glibc's per-thread caches off (`glibc.malloc.tcache_count=0`, which `berth serve` now
//!   sets by starting itself again, `host::linux::memory`): own memory right after the
//!   creates 10.7-10.8 MiB, as after a restart (12.5-12.8 with the caches); the daemon's CPU
//!   per lifecycle the same (3.0-3.5 ms either way, three alternating runs of 150);
//! - `opt-level = "s"`: a 7.1 MB binary instead of 9.5 (8.2 MB static), its mapped pages
//!   5.9 instead of 7.6 MiB after the creates; CPU per lifecycle, start-up CPU and a full
//!   listing's time the same within the spread of alternating runs (blending, the crate at
//!   3 and its dependencies at "s", made an 8.9 MB binary: not kept);
//! - the static binary the packages ship maps no shared libraries.
//!
//! After (one run each; this VM was then about three times slower than in the rounds above,
//! a gRPC round trip 278 µs instead of 90, and the old binary's restart and listing times
//! as slow as the new one's): the static release binary 17.1 MiB right after the creates
//! (10.8 its own) in three runs, 16.5-16.6 fresh after a restart; cargo's dynamic build
//! 18.3-18.6 and 17.6-17.7; opt-level 3 with the caches (the build before) 22.0-22.4 and
//! 18.9-19.3 in the same hour.

#[path = "csi_lifecycle/attribution.rs"]
mod attribution;
#[path = "../tests/support/csi_daemon.rs"]
mod csi_daemon;
#[path = "csi_lifecycle/floor.rs"]
mod floor;
#[path = "../tests/support/harness/mod.rs"]
mod harness;
#[path = "../tests/support/release.rs"]
mod release;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use attribution::{Counters, Share};
use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use berth::csi::proto::*;
use csi_daemon::{Clients, Daemon};
use floor::Floor;

const RPCS: [&str; 6] = [
    "CreateVolume",
    "NodeStageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeUnstageVolume",
    "DeleteVolume",
];

/// The daemon's RSS against the bar, and how much of it is its own memory (the rest is its
/// binary's and libraries' pages, shared with the page cache).
fn print_rss(daemon: &Daemon, scale: usize, when: &str) {
    let mib = |kib: Option<u64>| kib.unwrap_or(0) as f64 / 1024.0;
    let threads =
        std::fs::read_dir(format!("/proc/{}/task", daemon.pid())).map_or(0, Iterator::count);
    println!(
        "  daemon RSS with {scale} volumes, {when}: {:.1} MiB (bar: 20 MiB at 10000), of which {:.1} MiB its own (anonymous) memory; {threads} threads",
        mib(daemon.rss_kib()),
        mib(daemon.anonymous_rss_kib())
    );
}

/// How many full listings the figure after a restart is the median of (one listing swings
/// with whatever else the two cores run at that moment).
const FULL_LISTINGS: usize = 5;

/// Long enough for the daemon's health sweep (every second here) to have covered every
/// volume.
const SWEPT: Duration = Duration::from_millis(2500);

/// "static" or "dynamic": the packages ship a static binary (`packaging/build-release.sh`),
/// whose RSS has no shared libraries' pages; cargo's own build is dynamic.
fn linkage_of(binary: &Path) -> &'static str {
    match std::fs::read(binary) {
        Ok(elf) if release::has_interpreter(&elf) => "dynamic",
        Ok(_) => "static",
        Err(_) => "unreadable",
    }
}

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

/// [`report`] with the p50 as a ratio to `floor`; returns that ratio.
fn report_vs(label: &str, mut samples: Vec<Duration>, floor: Duration) -> f64 {
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    let ratio = p50.as_secs_f64() / floor.as_secs_f64().max(1e-9);
    println!(
        "  {label:<22} p50 {:>9.1} µs = {ratio:>5.2}x its floor   p99 {:>9.1} µs   (n={})",
        micros(p50),
        micros(percentile(&samples, 0.99)),
        samples.len()
    );
    ratio
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

/// Where kubelet would stage and publish volume `id`, made as kubelet makes them before it
/// calls: the staging directory and the target's parent.
struct Paths {
    staging: String,
    target: String,
}

impl Paths {
    fn prepare(k8s: &Path, id: &str) -> Self {
        let staging = k8s.join(id).join("globalmount");
        let target = k8s.join(id).join("pod").join("mount");
        std::fs::create_dir_all(&staging).expect("staging dir");
        std::fs::create_dir_all(target.parent().expect("parent")).expect("target parent");
        Self {
            staging: staging.display().to_string(),
            target: target.display().to_string(),
        }
    }
}

/// Calls the `step`-th RPC of a lifecycle (in the order of [`RPCS`]) for volume `id`.
async fn call(c: &mut Clients, step: usize, id: &str, paths: &Paths) {
    let volume_id = id.to_string();
    let outcome = match step {
        0 => c
            .controller
            .create_volume(CreateVolumeRequest {
                name: volume_id,
                volume_capabilities: vec![mount_capability()],
                ..Default::default()
            })
            .await
            .map(drop),
        1 => c
            .node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id,
                staging_target_path: paths.staging.clone(),
                volume_capability: Some(mount_capability()),
                ..Default::default()
            })
            .await
            .map(drop),
        2 => c
            .node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id,
                staging_target_path: paths.staging.clone(),
                target_path: paths.target.clone(),
                volume_capability: Some(mount_capability()),
                ..Default::default()
            })
            .await
            .map(drop),
        3 => c
            .node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id,
                target_path: paths.target.clone(),
            })
            .await
            .map(drop),
        4 => c
            .node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id,
                staging_target_path: paths.staging.clone(),
            })
            .await
            .map(drop),
        _ => c
            .controller
            .delete_volume(DeleteVolumeRequest {
                volume_id,
                ..Default::default()
            })
            .await
            .map(drop),
    };
    if let Err(status) = outcome {
        panic!("{} of {id}: {status}", RPCS[step]);
    }
}

/// One volume's trip through the six RPCs; returns each RPC's time.
async fn lifecycle(c: &mut Clients, id: &str, k8s: &Path) -> [Duration; 6] {
    let paths = Paths::prepare(k8s, id);
    let mut times = [Duration::ZERO; 6];
    for (step, time) in times.iter_mut().enumerate() {
        let t = Instant::now();
        call(c, step, id, &paths).await;
        *time = t.elapsed();
    }
    let _ = std::fs::remove_dir_all(k8s.join(id));
    times
}

/// `rounds` lifecycles at concurrency 1, each RPC between two scrapes of the daemon's
/// counters and then repeated; returns each RPC's share.
async fn attribute(daemon: &Daemon, c: &mut Clients, rounds: usize) -> [Share; 6] {
    let k8s = daemon.k8s("attribution");
    let admin = daemon.admin_socket();
    let mut shares: [Share; 6] = Default::default();
    for i in 0..rounds {
        let id = format!("at-{i:05}");
        let paths = Paths::prepare(&k8s, &id);
        for (step, share) in shares.iter_mut().enumerate() {
            let before = Counters::scrape(&admin);
            let t = Instant::now();
            call(c, step, &id, &paths).await;
            let took = t.elapsed();
            let after = Counters::scrape(&admin);
            share.add(took, before.delta(&after));
            // A caller that lost the answer asks again; there is nothing left to do.
            call(c, step, &id, &paths).await;
            let again = Counters::scrape(&admin);
            let (durable, unsynced, _) = after.delta(&again);
            share.repeat_commits += durable + unsynced;
        }
        let _ = std::fs::remove_dir_all(k8s.join(&id));
    }
    shares
}

/// Runs `n` lifecycles with `concurrency` workers; prints the figures, returns volumes/s.
async fn lifecycle_run(
    daemon: &Daemon,
    clients: &Clients,
    n: usize,
    concurrency: usize,
    floor: &Floor,
) -> f64 {
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
    let floors = floor.of_rpcs();
    for (i, rpc) in RPCS.iter().enumerate() {
        report_vs(rpc, all.iter().map(|s| s[i]).collect(), floors[i]);
    }
    let ratio = report_vs(
        "end to end",
        all.iter().map(|s| s.iter().sum()).collect(),
        floor.lifecycle(),
    );
    if concurrency == 1 {
        println!(
            "  directory lifecycle p50 = {ratio:.2}x the floor (bar: at most 2x, which matches 0.09x the reference driver): {}",
            if ratio <= 2.0 { "met" } else { "NOT met" }
        );
    }
    rate
}

/// Creates (or deletes) plain directory volume `scale-<i>` as Kubernetes would: the
/// external-provisioner's --extra-create-metadata gives the claim's name and namespace,
/// which berth records as labels.
async fn create_or_delete(c: &mut Clients, i: usize, create: bool) {
    let name = format!("scale-{i:06}");
    if !create {
        c.controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: name,
                ..Default::default()
            })
            .await
            .expect("DeleteVolume");
        return;
    }
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

/// Creates (or deletes) volumes `scale-<i>` for `range` with 8 workers; returns volumes per
/// second.
async fn sweep(clients: &Clients, range: std::ops::Range<usize>, create: bool) -> f64 {
    let (first, end) = (range.start, range.end);
    let next = Arc::new(AtomicUsize::new(first));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (next, mut c) = (Arc::clone(&next), clients.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return;
                }
                create_or_delete(&mut c, i, create).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    (end - first) as f64 / started.elapsed().as_secs_f64()
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
    let quick = std::env::var("BERTH_BENCH_QUICK").is_ok_and(|v| v == "1");
    let log_level = std::env::var("BERTH_LOG").unwrap_or_else(|_| "warn,berth::daemon=info".into());
    let n: usize = env_or("BERTH_BENCH_N", if quick { 20 } else { 200 });
    let scale: usize = env_or("BERTH_BENCH_SCALE", if quick { 500 } else { 10_000 });
    let page_sizes: Vec<i32> = std::env::var("BERTH_BENCH_PAGES")
        .unwrap_or_else(|_| if quick { "1,100,0" } else { "1,10,100,1000,0" }.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds = if quick { 50 } else { 500 };

    // A health sweep every second (30 s by default): the full listings below then report
    // it, as on a node whose volumes were not all made in the last half minute.
    let daemon_binary = harness::serve::daemon_binary();
    let mut daemon = Daemon::start_logging_with_admin("health_sweep_secs = 1\n", &log_level);
    let clients = daemon.clients().await;
    let base: PathBuf = daemon.path().to_path_buf();
    println!(
        "berth CSI bench{}: state and pools in {} ({}), {} cores, daemon log level {}, daemon {} ({})",
        if quick {
            " (quick: figures only, no timing is asserted)"
        } else {
            ""
        },
        base.display(),
        fs_type_of(&base),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        log_level,
        daemon_binary.display(),
        linkage_of(&daemon_binary),
    );

    // The cost of the transport alone: an RPC that does not reach the engine, and one that
    // runs a blocking engine call.
    let mut c = clients.clone();
    let (mut info, mut probe) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
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
    info.sort();
    let floor = Floor::measure(&base, percentile(&info, 0.5), rounds);
    floor.print();
    println!("transport:");
    report("NodeGetInfo", info);
    report("Probe", probe);

    let mut rates = BTreeMap::new();
    for concurrency in [1, 8] {
        rates.insert(
            concurrency,
            lifecycle_run(&daemon, &clients, n, concurrency, &floor).await,
        );
    }
    println!(
        "volumes/s at concurrency 8 vs 1: {:.2}x (bar: at least 3x)",
        rates[&8] / rates[&1]
    );

    let attribution_rounds = n.min(if quick { 10 } else { 50 });
    println!(
        "where each RPC's time goes (concurrency 1, mean of {attribution_rounds}; engine time and commits from the daemon's metrics):"
    );
    let shares = attribute(&daemon, &mut c, attribution_rounds).await;
    for ((rpc, share), floor) in RPCS.iter().zip(&shares).zip(floor.of_rpcs()) {
        share.print(rpc, floor);
    }
    for (rpc, share) in RPCS.iter().zip(&shares) {
        assert_eq!(
            share.repeat_commits, 0,
            "{rpc} repeated, with nothing left to do, committed to the store"
        );
    }

    let tenth = (scale / 10).clamp(1, 1000).min(scale / 2);
    println!("scale: creating {scale} plain directory volumes (8 workers)");
    let create_small = sweep(&clients, 0..tenth, true).await;
    sweep(&clients, tenth..scale - tenth, true).await;
    let create_full = sweep(&clients, scale - tenth..scale, true).await;
    println!(
        "  create throughput: {create_small:.0} volumes/s for the first {tenth}, {create_full:.0} volumes/s for the last {tenth} (up to {scale}): {:.2}x",
        create_full / create_small
    );
    print_rss(&daemon, scale, "right after creating them");
    let expected: Vec<String> = (0..scale).map(|i| format!("scale-{i:06}")).collect();
    // Pages of up to 256 volumes probe each volume's health; larger ones report the sweep,
    // which also hands back what the creates freed.
    tokio::time::sleep(SWEPT).await;
    print_rss(&daemon, scale, "after a health sweep");
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
    print_rss(&daemon, scale, "right after listing");
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
        "  restart to ready Probe: {:.1} ms (bar: 100 ms at 10000; berth's own store-open-to-serving: {} ms)",
        ready.as_secs_f64() * 1e3,
        own.map_or("?".into(), |m| m.to_string())
    );
    print_rss(&daemon, scale, "fresh after restart");
    let clients = daemon.clients().await;
    let mut c = clients.clone();
    tokio::time::sleep(SWEPT).await;
    let mut full = Vec::new();
    for _ in 0..FULL_LISTINGS {
        let (pages, _, per_page) = list_all(&mut c, 0, &expected).await;
        assert_eq!(pages, 1, "max_entries 0 lists everything in one page");
        full.extend(per_page);
    }
    full.sort();
    println!(
        "  full ListVolumes after the restart (and its first health sweep), {FULL_LISTINGS} in a row, request to decoded reply: p50 {:.1} ms, min {:.1} ms, max {:.1} ms (bar: 20 ms at 10000)",
        percentile(&full, 0.5).as_secs_f64() * 1e3,
        full[0].as_secs_f64() * 1e3,
        full[full.len() - 1].as_secs_f64() * 1e3,
    );
    print_rss(&daemon, scale, "right after these listings");
    let delete_full = sweep(&clients, scale - tenth..scale, false).await;
    sweep(&clients, tenth..scale - tenth, false).await;
    let delete_small = sweep(&clients, 0..tenth, false).await;
    println!(
        "  delete throughput: {delete_full:.0} volumes/s for the first {tenth} (from {scale}), {delete_small:.0} volumes/s for the last {tenth}: {:.2}x",
        delete_full / delete_small
    );
    list_all(&mut c, 0, &[]).await;
    println!("  every volume deleted; the listing is empty");
}
