//! Issue 8's crash torture, concurrency and socket tests, against the real `berth` binary as
//! root (real mounts, loop devices and ext4 images).
//!
//! - `kill_9_torture`: client threads send a seeded random mix of operations (create,
//!   publish, unpublish, expand, delete, wipe; plain-directory and loopfs volumes) through
//!   the real CSI, Docker and admin sockets while berth is killed with SIGKILL at random
//!   moments, `BERTH_TORTURE_KILLS` times (200 by default; `BERTH_TORTURE_SOAK=1` for a
//!   long run). After each restart it checks the invariants of `support/torture/checks.rs`,
//!   sends every operation whose answer was lost again (it must succeed as the first time
//!   would have), and checks again, exactly. A violation fails at once with the seed
//!   (`BERTH_TORTURE_SEED` replays the same choices) and the last operations.
//! - `concurrent_clients_on_overlapping_volumes`: 32 clients mix CSI, Docker and admin
//!   calls on a handful of shared volume names for a bounded time, under a deadline.
//! - The socket tests: modes, one daemon per state directory and per socket, stale sockets.

#[path = "support/docker_plugin.rs"]
mod docker_plugin;
#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/torture/mod.rs"]
mod torture;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::cleanup::Scratch;
use harness::serve::Serve;
use torture::berth::{Berth, Endpoints};
use torture::checks::{self, World};
use torture::csi::Csi;
use torture::model::{self, Action, Layout, Op, Outcome, Pending, Vol};
use torture::rng::{Rng, SEED_ENV, seed_from_env};

/// Prints a figure of the run where `cargo test` shows it, passing or not: straight to
/// stderr, past the test harness's capture of `println!`.
macro_rules! figure {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

const KILLS_ENV: &str = "BERTH_TORTURE_KILLS";
const SOAK_ENV: &str = "BERTH_TORTURE_SOAK";
/// How long a restart may take before the test gives up on it.
const RESTART_WITHIN: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The last operations, for the report of a violation.
struct OpLog(Mutex<VecDeque<String>>);

impl OpLog {
    const KEEP: usize = 60;

    fn new() -> Self {
        Self(Mutex::new(VecDeque::new()))
    }

    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == Self::KEEP {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn tail(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One client thread of the torture and the volumes it alone works on.
struct Worker {
    id: usize,
    rng: Rng,
    names: Vec<String>,
    volumes: BTreeMap<String, Option<Vol>>,
    pending: Option<Pending>,
    serial: u64,
}

#[derive(Default)]
struct Counters {
    /// Operations answered as expected (successes and expected refusals).
    answered: AtomicU64,
    refusals: AtomicU64,
    /// Expands refused because another mount namespace holds the filesystem.
    busy_elsewhere: AtomicU64,
    creates: AtomicU64,
    publishes: AtomicU64,
    unpublishes: AtomicU64,
    expands: AtomicU64,
    deletes: AtomicU64,
}

impl Counters {
    fn count(&self, op: &Op, outcome: &Outcome) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        let counter = match (outcome, &op.action) {
            _ if model::busy_elsewhere(op, outcome) => &self.busy_elsewhere,
            (Outcome::Refused { .. }, _) => &self.refusals,
            (_, Action::Create { .. }) => &self.creates,
            (_, Action::Publish(_)) => &self.publishes,
            (_, Action::Unpublish(_)) => &self.unpublishes,
            (_, Action::Expand { .. }) => &self.expands,
            (_, Action::Delete(_)) => &self.deletes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Sends operations until `stop`; an answer lost because berth was killed leaves the
/// operation pending and ends the thread's round.
#[allow(clippy::too_many_arguments)]
fn run_worker(
    w: &mut Worker,
    csi: &Csi,
    endpoints: &Endpoints,
    layout: &Layout,
    stop: &AtomicBool,
    killed: &AtomicBool,
    log: &OpLog,
    counters: &Counters,
    round: usize,
) -> Result<(), String> {
    while !stop.load(Ordering::SeqCst) {
        let name = w.rng.pick(&w.names).clone();
        w.serial += 1;
        let slot = w.volumes.get_mut(&name).expect("a worker's own volume");
        let owner = format!("w{}", w.id);
        let op = model::choose(&mut w.rng, &name, slot, layout, &owner, w.serial);
        let started = Instant::now();
        let outcome = model::execute(csi, endpoints, &op);
        log.push(format!("round {round} w{}: {op} -> {outcome}", w.id));
        if matches!(outcome, Outcome::Lost(_)) && killed.load(Ordering::SeqCst) {
            w.pending = Some(Pending { op, started });
            return Ok(());
        }
        model::settle(slot, &op, &outcome, false, layout, &mut w.rng)?;
        counters.count(&op, &outcome);
    }
    Ok(())
}

/// Everything a violation report needs.
struct Report<'a> {
    seed: u64,
    log: &'a OpLog,
}

impl Report<'_> {
    fn fail(&self, round: usize, berth: &Berth, what: &str) -> ! {
        panic!(
            "\ntorture: VIOLATION at kill {round}: {what}\n  \
             seed {seed}: replay with {SEED_ENV}={seed}\n  \
             last operations:\n{ops}\n  berth's log ends:\n{log}\n  {kept}\n  \
             mounts under its directory: {mounts:?}\n  loop devices: {loops:?}\n  \
             filesystem tools running: {tools:?}\n",
            seed = self.seed,
            ops = self.log.tail(),
            log = berth.log_tail(40),
            kept = berth.keep_log(),
            mounts = torture::berth::mounts_under(&berth.dir),
            loops = torture::berth::loops_under(&berth.dir),
            tools = torture::berth::tools_running(),
        )
    }
}

fn check(workers: &[Worker], berth: &Berth, layout: &Layout, csi: &Csi) -> Result<u64, String> {
    let volumes: BTreeMap<String, Option<Vol>> = workers
        .iter()
        .flat_map(|w| w.volumes.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    let pending: Vec<&Op> = workers
        .iter()
        .filter_map(|w| w.pending.as_ref().map(|p| &p.op))
        .collect();
    let world = World::with_pending(&berth.dir, layout, &volumes, &pending);
    checks::check(&world, csi, &berth.endpoints())
}

#[test]
fn kill_9_torture() {
    let seed = seed_from_env();
    let soak = std::env::var(SOAK_ENV).is_ok_and(|v| v == "1");
    let kills: usize = std::env::var(KILLS_ENV)
        .ok()
        .map(|v| v.parse().expect("BERTH_TORTURE_KILLS is a number"))
        .unwrap_or(if soak { 2000 } else { 200 });
    let (workers_n, per_worker) = if soak { (6, 4) } else { (4, 3) };
    figure!(
        "torture: seed {seed} (replay with {SEED_ENV}={seed}), {kills} kills, {workers_n} clients x {per_worker} volumes{}",
        if soak { ", soak" } else { "" }
    );
    let runtime = runtime();
    let mut berth = Berth::new("torture", "");
    let layout = Layout {
        pool: berth.pool(),
        k8s: berth.k8s(),
    };
    let mut workers: Vec<Worker> = (0..workers_n)
        .map(|id| {
            let names: Vec<String> = (0..per_worker).map(|i| format!("t{id}v{i}")).collect();
            Worker {
                id,
                rng: Rng::stream(seed, id as u64 + 1),
                volumes: names.iter().map(|n| (n.clone(), None)).collect(),
                names,
                pending: None,
                serial: 0,
            }
        })
        .collect();
    for w in &workers {
        for name in &w.names {
            std::fs::create_dir_all(layout.staging(name)).expect("staging dir");
        }
    }
    let mut rng = Rng::stream(seed, 0);
    let log = OpLog::new();
    let report = Report { seed, log: &log };
    let counters = Counters::default();
    let endpoints = berth.endpoints();
    let began = Instant::now();

    let mut restart_total = berth
        .start(RESTART_WITHIN)
        .unwrap_or_else(|e| report.fail(0, &berth, &e));
    let mut restart_max = restart_total;
    let connect = |berth: &Berth| Csi::connect(runtime.handle(), &berth.csi_endpoint());
    let mut csi = connect(&berth).unwrap_or_else(|e| report.fail(0, &berth, &e));
    let (mut rounds, mut facts) = (0u64, 0u64);
    let (mut interrupting_kills, mut interrupted, mut retries) = (0usize, 0usize, 0usize);
    let mut log_seen = 0;
    let mut held_restarts = 0usize;

    for round in 1..=kills {
        // Operations, until the killer strikes.
        let stop = AtomicBool::new(false);
        let killed = AtomicBool::new(false);
        let delay = Duration::from_micros(rng.below(20_001));
        let (killed_at, outcomes) = std::thread::scope(|scope| {
            let handles: Vec<_> = workers
                .iter_mut()
                .map(|w| {
                    let (csi, endpoints, layout) = (&csi, &endpoints, &layout);
                    let (stop, killed, log, counters) = (&stop, &killed, &log, &counters);
                    scope.spawn(move || {
                        run_worker(
                            w, csi, endpoints, layout, stop, killed, log, counters, round,
                        )
                    })
                })
                .collect();
            std::thread::sleep(delay);
            killed.store(true, Ordering::SeqCst);
            let at = Instant::now();
            berth.kill();
            stop.store(true, Ordering::SeqCst);
            let outcomes: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            (at, outcomes)
        });
        for outcome in outcomes {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(violation)) => report.fail(round, &berth, &violation),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        let in_flight = workers
            .iter()
            .filter(|w| w.pending.as_ref().is_some_and(|p| p.started < killed_at))
            .count();
        interrupted += in_flight;
        interrupting_kills += usize::from(in_flight > 0);

        // Back up: berth's recovery must leave a consistent state.
        let took = match berth.start(RESTART_WITHIN) {
            Ok(took) => took,
            // Killed during an offline grow, berth leaves its e2fsck or resize2fs running,
            // holding the volume's device: the restart cannot mount it back (EBUSY) and
            // exits. As systemd's Restart=on-failure would, start again once they are done.
            Err(e)
                if e.contains("re-mounting the volume filesystem failed")
                    && e.contains("(os error 16)") =>
            {
                held_restarts += 1;
                let started = Instant::now();
                while !torture::berth::tools_running().is_empty()
                    && started.elapsed() < RESTART_WITHIN
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                berth.start(RESTART_WITHIN).unwrap_or_else(|e| {
                    report.fail(
                        round,
                        &berth,
                        &format!("restart after the tools finished: {e}"),
                    )
                })
            }
            Err(e) => report.fail(round, &berth, &format!("restart: {e}")),
        };
        restart_total += took;
        restart_max = restart_max.max(took);
        csi = connect(&berth).unwrap_or_else(|e| report.fail(round, &berth, &e));
        // Everything under its pool is berth's own: its recovery must not find strays.
        let daemon_log = berth.log();
        if let Some(stray) = daemon_log[log_seen..]
            .lines()
            .find(|l| l.contains("that the store does not know"))
        {
            report.fail(
                round,
                &berth,
                &format!("recovery reported a stray: {stray}"),
            );
        }
        log_seen = daemon_log.len();
        facts += check(&workers, &berth, &layout, &csi)
            .unwrap_or_else(|e| report.fail(round, &berth, &format!("after restart: {e}")));
        rounds += 1;

        // Every lost answer is asked for again and must be what it would have been.
        for w in &mut workers {
            let Some(Pending { op, .. }) = w.pending.take() else {
                continue;
            };
            let outcome = model::execute(&csi, &endpoints, &op);
            log.push(format!("round {round} w{} retry: {op} -> {outcome}", w.id));
            let slot = w.volumes.get_mut(&op.volume).expect("own volume");
            model::settle(slot, &op, &outcome, true, &layout, &mut w.rng)
                .unwrap_or_else(|e| report.fail(round, &berth, &e));
            counters.count(&op, &outcome);
            retries += 1;
        }
        facts += check(&workers, &berth, &layout, &csi)
            .unwrap_or_else(|e| report.fail(round, &berth, &format!("after the retries: {e}")));
        rounds += 1;
    }

    // The end: release and delete everything through the API; nothing may be left.
    for w in &mut workers {
        for name in w.names.clone() {
            let Some(v) = w.volumes[&name].clone() else {
                continue;
            };
            let mut ops: Vec<Action> = Vec::new();
            if let Some(p) = v.csi {
                ops.push(Action::Unpublish(model::Via::Csi(p)));
            }
            for id in v.docker {
                ops.push(Action::Unpublish(model::Via::Docker(id)));
            }
            // The admin API deletes a volume of either front-end.
            ops.push(Action::Delete(model::Remover::AdminWipe));
            for action in ops {
                let op = Op {
                    volume: name.clone(),
                    action,
                    expect: model::Expect::Success,
                };
                let outcome = model::execute(&csi, &endpoints, &op);
                log.push(format!("teardown: {op} -> {outcome}"));
                let slot = w.volumes.get_mut(&name).expect("own volume");
                model::settle(slot, &op, &outcome, false, &layout, &mut w.rng)
                    .unwrap_or_else(|e| report.fail(kills, &berth, &format!("teardown: {e}")));
            }
        }
    }
    facts += check(&workers, &berth, &layout, &csi)
        .unwrap_or_else(|e| report.fail(kills, &berth, &format!("after the teardown: {e}")));
    rounds += 1;
    drop(csi);
    berth
        .stop()
        .unwrap_or_else(|e| report.fail(kills, &berth, &format!("stopping: {e}")));
    let daemon_log = berth.log();
    if daemon_log.contains("panicked") {
        report.fail(kills, &berth, "berth panicked (see its log)");
    }
    let seen = |needle: &str| daemon_log.matches(needle).count();
    let elapsed = began.elapsed();
    let answered = Counters::get(&counters.answered);
    figure!(
        "torture: {kills} kills in {:.1} s; {interrupting_kills} kills ({:.0}%) landed with an \
         operation in flight, {interrupted} operations interrupted, {retries} retried (all \
         answered as the first attempt would have been)",
        elapsed.as_secs_f64(),
        100.0 * interrupting_kills as f64 / kills.max(1) as f64,
    );
    figure!(
        "torture: {answered} operations answered ({:.0}/s): {} creates, {} publishes, {} \
         unpublishes, {} expands, {} deletes/wipes, {} expected refusals",
        answered as f64 / elapsed.as_secs_f64(),
        Counters::get(&counters.creates),
        Counters::get(&counters.publishes),
        Counters::get(&counters.unpublishes),
        Counters::get(&counters.expands),
        Counters::get(&counters.deletes),
        Counters::get(&counters.refusals),
    );
    if held_restarts > 0 {
        figure!(
            "torture: {held_restarts} restarts found a killed daemon's e2fsck or resize2fs still \
             holding a volume's device, exited, and were started again once it finished"
        );
    }
    let busy = Counters::get(&counters.busy_elsewhere);
    if busy > 0 {
        figure!(
            "torture: {busy} expands were refused because another mount namespace on this \
             machine held the filesystem (mounted back unchanged, as checked)"
        );
    }
    figure!(
        "torture: {rounds} invariant checks ({facts} facts verified); restarts took {:.1} ms on \
         average, {:.1} ms at most",
        restart_total.as_secs_f64() * 1000.0 / berth.starts.max(1) as f64,
        restart_max.as_secs_f64() * 1000.0,
    );
    figure!(
        "torture: berth's recovery rolled back {} creates, finished {} deletes and dropped {} \
         publications interrupted by kills",
        seen("rolled back a create interrupted by a crash"),
        seen("finished a delete interrupted by a crash"),
        seen("dropped a publication whose mount is gone"),
    );
}

/// How long the concurrency test's clients run (`BERTH_CONCURRENCY_SECS`, default 20).
fn crowd_duration() -> Duration {
    let secs = std::env::var("BERTH_CONCURRENCY_SECS")
        .ok()
        .map(|v| {
            v.parse()
                .expect("BERTH_CONCURRENCY_SECS is a number of seconds")
        })
        .unwrap_or(20);
    Duration::from_secs(secs)
}

#[test]
fn concurrent_clients_on_overlapping_volumes() {
    use torture::crowd::{Client, SHARED};
    const CLIENTS: usize = 32;
    let seed = seed_from_env();
    let run_for = crowd_duration();
    // Every call is bounded; all 32 clients must be done this long after the run ends.
    let grace = Duration::from_secs(40);
    figure!(
        "concurrency: seed {seed}, {CLIENTS} clients on {} shared volumes for {run_for:?}",
        SHARED.len()
    );
    let runtime = runtime();
    let mut berth = Berth::new("crowd", "");
    let layout = Layout {
        pool: berth.pool(),
        k8s: berth.k8s(),
    };
    for name in SHARED {
        for c in 0..CLIENTS {
            std::fs::create_dir_all(Client::staging(&layout, name, c)).expect("staging dir");
        }
    }
    // The clients' bind mounts of Docker's Mountpoints, as dockerd makes for containers:
    // outside berth's directory, since berth does not record them.
    let binds = Scratch::new("berth-crowd-binds-");
    berth
        .start(RESTART_WITHIN)
        .unwrap_or_else(|e| panic!("concurrency: {e}"));
    let endpoints = berth.endpoints();
    let doing: std::sync::Arc<Mutex<Vec<String>>> =
        std::sync::Arc::new(Mutex::new(vec![String::new(); CLIENTS]));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let began = Instant::now();
    let end = began + run_for;
    for id in 0..CLIENTS {
        let csi = Csi::connect(runtime.handle(), &berth.csi_endpoint())
            .unwrap_or_else(|e| panic!("concurrency: {e}"));
        let (endpoints, layout, binds, doing, done_tx) = (
            endpoints.clone(),
            layout.clone(),
            binds.path().to_path_buf(),
            std::sync::Arc::clone(&doing),
            done_tx.clone(),
        );
        std::thread::spawn(move || {
            let mut client = Client::new(id, seed, layout, binds);
            let mut now = |what: String| doing.lock().unwrap_or_else(|e| e.into_inner())[id] = what;
            let mut result = Ok(());
            while result.is_ok() && Instant::now() < end {
                result = client.step(&csi, &endpoints, &mut now);
            }
            now(format!("c{id} finished"));
            let _ = done_tx.send((client, result));
        });
    }
    drop(done_tx);
    let mut clients = Vec::new();
    while clients.len() < CLIENTS {
        let left = (end + grace).saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok((client, Ok(()))) => clients.push(client),
            Ok((client, Err(violation))) => {
                panic!(
                    "concurrency: VIOLATION by client {} (seed {seed}): {violation}\nberth's log ends:\n{}\n{}",
                    client.id,
                    berth.log_tail(40),
                    berth.keep_log()
                );
            }
            Err(_) => {
                let stuck: Vec<String> = doing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|d| !d.ends_with("finished"))
                    .cloned()
                    .collect();
                panic!(
                    "concurrency: deadlock? {} of {CLIENTS} clients are still running {grace:?} \
                     after the end of the run, in: {stuck:?}\nberth's log ends:\n{}\n{}",
                    CLIENTS - clients.len(),
                    berth.log_tail(40),
                    berth.keep_log()
                );
            }
        }
    }
    let elapsed = began.elapsed();
    assert!(
        berth.alive(),
        "concurrency: berth died during the run:\n{}",
        berth.log_tail(40)
    );

    // What berth records must be exactly what the clients hold.
    let (status, list) = endpoints.admin("GET", "/v1/volumes").expect("admin list");
    assert_eq!(status, 200, "{list}");
    let list: berth::admin::views::VolumeList = serde_json::from_value(list).expect("a list");
    let mut recorded: Vec<String> = Vec::new();
    for v in &list.volumes {
        for p in &v.publications {
            recorded.push(format!("{} {}", v.id, p.target));
        }
    }
    let mut held: Vec<String> = Vec::new();
    for c in &clients {
        for (name, h) in &c.held {
            match &h.via {
                model::Via::Csi(p) => {
                    held.push(format!("{name} {}", p.staging.display()));
                    held.push(format!("{name} {}", p.target.display()));
                }
                model::Via::Docker(id) => held.push(format!("{name} reference \"docker:{id}\"")),
            }
        }
    }
    recorded.sort();
    held.sort();
    assert_eq!(
        recorded, held,
        "concurrency: berth records other publications than the clients were told they hold"
    );
    let csi = Csi::connect(runtime.handle(), &berth.csi_endpoint()).expect("CSI");
    let volumes: BTreeMap<String, Option<Vol>> =
        SHARED.iter().map(|n| (n.to_string(), None)).collect();
    let staging = SHARED
        .iter()
        .flat_map(|n| (0..CLIENTS).map(|c| Client::staging(&layout, n, c)))
        .collect();
    let world = World {
        dir: &berth.dir,
        layout: &layout,
        volumes: &volumes,
        relaxed: volumes.keys().cloned().collect(),
        loose_targets: Default::default(),
        staging,
    };
    let facts = checks::check(&world, &csi, &endpoints)
        .unwrap_or_else(|e| panic!("concurrency: VIOLATION at the end: {e}"));

    // Release everything (each must succeed), delete everything, and nothing may be left.
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for c in &mut clients {
        for name in SHARED {
            c.release(&csi, &endpoints, name)
                .unwrap_or_else(|e| panic!("concurrency: releasing: {e}"));
        }
        for (what, n) in &c.tally {
            *tally.entry(what.clone()).or_default() += n;
        }
        slowest = slowest.max(c.slowest);
    }
    // Through the admin API, which acts on volumes of either front-end.
    for name in SHARED {
        match endpoints.admin("DELETE", &format!("/v1/volumes/{name}?wipe=true")) {
            Ok((200 | 204 | 404, _)) => {}
            other => panic!("concurrency: deleting {name}: {other:?}"),
        }
    }
    let world = World {
        relaxed: Default::default(),
        ..world
    };
    let facts = facts
        + checks::check(&world, &csi, &endpoints)
            .unwrap_or_else(|e| panic!("concurrency: VIOLATION after the clean-up: {e}"));
    berth.stop().expect("berth stops cleanly");
    assert!(
        !berth.log().contains("panicked"),
        "concurrency: berth panicked:\n{}",
        berth.log_tail(40)
    );
    let ops: u64 = tally.values().sum();
    figure!(
        "concurrency: {ops} calls by {CLIENTS} clients in {:.1} s ({:.0}/s), slowest {:.0} ms; \
         {facts} facts verified at the end",
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64(),
        slowest.as_secs_f64() * 1000.0
    );
    let answers: Vec<String> = tally
        .iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    figure!("concurrency: answers: {}", answers.join(", "));
}

/// A socket's mode bits, and what tells it from another socket made at the same path later
/// (its inode and change time: an inode number is reused at once).
type SocketIdentity = (u32, (u64, i64, i64));

/// The identity of `path`, which must be a socket.
fn socket_identity(path: &std::path::Path) -> SocketIdentity {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
    (
        meta.permissions().mode() & 0o7777,
        (meta.ino(), meta.ctime(), meta.ctime_nsec()),
    )
}

/// Runs a second `berth serve` on `config`; it must exit by itself (within 20 s).
fn second_daemon(config: &std::path::Path) -> std::process::Output {
    Serve::new(config, config.with_extension("log"))
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .run_to_exit()
}

/// The first daemon answers on all three sockets, which are the ones it bound.
fn assert_serves(
    berth: &Berth,
    runtime: &tokio::runtime::Runtime,
    sockets: &[(std::path::PathBuf, SocketIdentity)],
) {
    for (path, identity) in sockets {
        assert_eq!(
            &socket_identity(path),
            identity,
            "{} was replaced",
            path.display()
        );
    }
    let endpoints = berth.endpoints();
    let (status, reply) = endpoints
        .docker("/VolumeDriver.Get", &serde_json::json!({"Name": "kept"}))
        .expect("Docker answers");
    assert_eq!(status, 200, "{reply}");
    assert!(matches!(
        endpoints.admin("GET", "/v1/volumes/kept"),
        Ok((200, _))
    ));
    let csi = Csi::connect(runtime.handle(), &berth.csi_endpoint()).expect("CSI answers");
    let listed = csi.list().expect("CSI ListVolumes");
    // CSI answers too, and lists nothing: `kept` is Docker's.
    assert_eq!(listed, vec![]);
}

#[test]
fn sockets_are_private_owned_by_one_daemon_and_replaced_only_when_stale() {
    let runtime = runtime();
    let mut berth = Berth::new("sockets", "");
    berth.start(RESTART_WITHIN).expect("berth starts");
    let endpoints = berth.endpoints();
    let (status, reply) = endpoints
        .docker("/VolumeDriver.Create", &serde_json::json!({"Name": "kept"}))
        .expect("Docker answers");
    assert_eq!(status, 200, "{reply}");
    let paths = [
        berth.csi_socket(),
        berth.docker_socket(),
        berth.admin_socket(),
    ];
    let sockets: Vec<_> = paths
        .iter()
        .map(|p| (p.clone(), socket_identity(p)))
        .collect();
    for (path, (mode, _)) in &sockets {
        assert_eq!(*mode, 0o600, "{} has mode {mode:o}", path.display());
    }
    let config = std::fs::read_to_string(berth.config_path()).expect("config");

    // A second daemon on the same state directory, with sockets of its own.
    let mut other = config.clone();
    for p in &paths {
        let name = p.display().to_string();
        other = other.replace(&name, &name.replace(".sock", "-2.sock"));
    }
    let second = berth.dir.join("same-state.toml");
    std::fs::write(&second, &other).expect("config");
    let refused = second_daemon(&second);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    let expected = format!(
        "state directory {} is used by another running berth (its lock {} is held)",
        berth.dir.join("state").display(),
        berth.dir.join("state/berth.lock").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    for p in &paths {
        let theirs = std::path::PathBuf::from(p.display().to_string().replace(".sock", "-2.sock"));
        assert!(
            !theirs.exists(),
            "the refused daemon left {}",
            theirs.display()
        );
    }
    assert_serves(&berth, &runtime, &sockets);

    // A second daemon on the same sockets, with a state directory of its own.
    let second = berth.dir.join("same-sockets.toml");
    let state = berth.dir.join("state").display().to_string();
    std::fs::write(&second, config.replace(&state, &format!("{state}-2"))).expect("config");
    let refused = second_daemon(&second);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is served by another running process (it accepts connections)",
            berth.csi_socket().display(),
        )),
        "{stderr}"
    );
    assert_serves(&berth, &runtime, &sockets);

    // Killed, berth leaves its sockets behind; the next start replaces them.
    berth.kill();
    for p in &paths {
        assert!(
            std::os::unix::net::UnixStream::connect(p).is_err(),
            "{} still answers",
            p.display()
        );
    }
    berth
        .start(RESTART_WITHIN)
        .expect("berth starts again over stale sockets");
    let replaced: Vec<_> = paths
        .iter()
        .map(|p| (p.clone(), socket_identity(p)))
        .collect();
    for ((path, (mode, new)), (_, (_, old))) in replaced.iter().zip(&sockets) {
        assert_eq!(*mode, 0o600, "{} has mode {mode:o}", path.display());
        assert_ne!(new, old, "{} was not replaced", path.display());
    }
    assert_serves(&berth, &runtime, &replaced);

    // Anything else at a socket's path is not berth's to delete.
    berth.kill();
    let docker = berth.docker_socket();
    std::fs::remove_file(&docker).expect("removing the stale socket");
    std::fs::write(&docker, "an operator's file\n").expect("a regular file");
    let error = berth
        .start(RESTART_WITHIN)
        .expect_err("berth refuses a non-socket");
    assert!(
        error.contains(&format!(
            "{} exists and is not a socket; berth replaces only a stale socket there",
            docker.display()
        )),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&docker).expect("the file is intact"),
        "an operator's file\n"
    );
    std::fs::remove_file(&docker).expect("removing the file");

    // Stopped cleanly, it removes its sockets.
    berth.start(RESTART_WITHIN).expect("berth starts");
    berth.stop().expect("berth stops cleanly");
    for p in &paths {
        assert!(!p.exists(), "{} is left after a clean stop", p.display());
    }
}
