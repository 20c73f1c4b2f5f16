//! Hostile input, as root, against the real engine on the real kernel
//! ([`berth::host::linux::LinuxHost`]) and the real daemon: names and parameters that try to
//! leave the pool (`..`, `/`, NUL, percent-encoding, very long strings), symlinks where a
//! pool or a target should be, a pool root swapped for a symlink while berth runs, and the
//! limits that keep one client from exhausting the daemon (body size, slow clients,
//! connection slots, `max_volumes`). Each attack asserts that nothing was created, removed or
//! mounted anywhere: not in the pool, not where the symlink points, not in the mount table.
//!
//! Also the regression tests for what the fuzz targets in `fuzz/` found.
//!
//! Tests that could mount over `/` if berth got them wrong run in a private mount namespace
//! (the test binary re-runs itself under `unshare --mount --propagation private`).

#[path = "support/harness/mod.rs"]
mod harness;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::config::Config;
use berth::engine::pool::{BackendChoice, PoolConfig};
use berth::engine::types::*;
use berth::engine::{Engine, EngineConfig, EngineError, NodeInfo, VolumeService};
use berth::host::linux::LinuxHost;
use berth::server::http::{HttpLimits, Reply, Request};
use harness::cleanup::{Scratch, mounts_under};
use harness::serve::{Serve, Served};

const CALLER: Caller = Caller {
    frontend: Frontend::Internal,
    wait_if_busy: true,
};

// --- helpers ---------------------------------------------------------------------------

/// Every path beneath `dir` (not following symlinks), relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// The mount table: (mount point, root within its filesystem) of every line.
fn mount_table() -> Vec<(String, String)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let root = f.nth(3)?.to_string();
            let point = f.next()?.to_string();
            Some((point, root))
        })
        .collect()
}

/// How many mounts sit exactly on `/`.
fn mounts_on_root() -> usize {
    mount_table().iter().filter(|(p, _)| p == "/").count()
}

/// Mount table lines that involve `dir`: mounted beneath it, or bound from beneath it
/// (anywhere). Other processes on the machine may mount and unmount things meanwhile, so the
/// tests look for these, not at the size of the whole table.
fn mounts_involving(dir: &Path) -> Vec<(String, String)> {
    let tag = dir.file_name().unwrap().to_string_lossy().to_string();
    mount_table()
        .into_iter()
        .filter(|(point, root)| point.contains(&tag) || root.contains(&tag))
        .collect()
}

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

fn request(n: &str, spec: VolumeSpec) -> CreateRequest {
    CreateRequest {
        name: name(n),
        spec,
        owner: Owner::default(),
    }
}

fn bind(path: &Path) -> PublishTarget {
    PublishTarget::Bind {
        path: path.to_path_buf(),
        read_only: false,
    }
}

/// Runs the calling test again in a private mount namespace; returns true in that run (the
/// caller then does the work) and false in the outer run, after checking the inner passed.
fn in_private_mount_namespace(test: &str) -> bool {
    const MARK: &str = "BERTH_HOSTILE_PRIVATE_NS";
    if std::env::var(MARK).as_deref() == Ok(test) {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(MARK, test)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} in a private mount namespace:\n{text}"
    );
    assert!(text.contains("1 passed"), "{test} did not run:\n{text}");
    false
}

/// A directory with a pool (`volumes`), a place for targets and an `outside` directory a
/// symlink may point at; unmounts whatever is left beneath it on drop.
struct Scene {
    dir: Scratch,
}

impl Scene {
    fn new() -> Self {
        let dir = Scratch::new("berth-hostile-");
        for d in ["volumes", "targets", "outside"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        fs::write(dir.path().join("outside/canary"), "outside").unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn pool_at(&self, rel: &str) -> PoolConfig {
        let mut pool = PoolConfig::default_root(self.dir.path());
        pool.name = "p".into();
        pool.paths = vec![self.path(rel)];
        pool.backend = BackendChoice::None;
        pool
    }

    fn open_with(
        &self,
        pool: PoolConfig,
        max_volumes: Option<usize>,
    ) -> Result<Engine<LinuxHost>, EngineError> {
        Engine::open(
            EngineConfig {
                store_path: self.path("berth.redb"),
                pools: vec![pool],
                node: NodeInfo {
                    max_volumes,
                    ..NodeInfo::default()
                },
            },
            LinuxHost::new(),
        )
    }

    fn open(&self) -> Engine<LinuxHost> {
        self.open_with(self.pool_at("volumes"), None).unwrap()
    }

    fn outside(&self) -> BTreeSet<PathBuf> {
        tree(&self.path("outside"))
    }
}

fn untouched_outside() -> BTreeSet<PathBuf> {
    [PathBuf::from("canary")].into()
}

// --- names -----------------------------------------------------------------------------

/// Names that try to leave the pool, or to be something other than one path component.
fn hostile_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "",
        ".",
        "..",
        "../x",
        "../../etc",
        "/etc",
        "a/b",
        "a/../../x",
        "a\0b",
        "\0",
        "db\0",
        "%2e%2e%2f",
        "..%2f..%2fetc",
        "%2E%2E",
        "%00",
        "a%2fb",
        ".hidden",
        "-rf",
        " db",
        "db ",
        "a\\b",
        "a\nb",
        "\u{202e}db",
        "d\u{0301}b",
        "\u{ff0e}\u{ff0e}",
        "db/",
        "./db",
        "~root",
        "$(id)",
        "`id`",
        "a b",
        "*",
        "a?",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push("a".repeat(129));
    names.push("a".repeat(300));
    names.push("a".repeat(1 << 20));
    names.push(format!("{}/..", "a".repeat(126)));
    names
}

#[test]
fn hostile_names_never_parse() {
    for raw in hostile_names() {
        let shown: String = raw.chars().take(40).collect();
        assert!(VolumeName::parse(&raw).is_err(), "{shown:?} parsed");
        // Nor through serde (the store, JSON bodies).
        let json = serde_json::to_string(&raw).unwrap();
        assert!(
            serde_json::from_str::<VolumeName>(&json).is_err(),
            "{shown:?} deserialized"
        );
    }
    // The longest name is accepted, one byte more is not.
    assert!(VolumeName::parse(&"a".repeat(MAX_NAME_LEN)).is_ok());
}

#[test]
fn hostile_parameters_create_nothing_outside_the_volume() {
    let scene = Scene::new();
    let engine = scene.open();
    let before = tree(&scene.path("volumes"));
    let long = "x".repeat(1 << 20);
    let traversal = "../../../outside/pwned".to_string();
    let refused: Vec<(&str, VolumeSpec)> = vec![
        (
            "pool",
            VolumeSpec {
                pool: Some(traversal.clone()),
                ..VolumeSpec::default()
            },
        ),
        (
            "pool-long",
            VolumeSpec {
                pool: Some(long.clone()),
                ..VolumeSpec::default()
            },
        ),
        (
            "profile",
            VolumeSpec {
                profile: Some(traversal.clone()),
                ..VolumeSpec::default()
            },
        ),
        (
            "huge",
            VolumeSpec {
                size: Some(u64::MAX),
                ..VolumeSpec::default()
            },
        ),
        (
            "source",
            VolumeSpec {
                source: Some(name("no-such-volume")),
                ..VolumeSpec::default()
            },
        ),
        (
            "constraint",
            VolumeSpec {
                constraints: vec![PathConstraint::new(true, "/nowhere/.*").unwrap()],
                ..VolumeSpec::default()
            },
        ),
        (
            "mode",
            VolumeSpec {
                ownership: Ownership {
                    uid: None,
                    gid: None,
                    mode: Some(0o7777_7777),
                },
                ..VolumeSpec::default()
            },
        ),
    ];
    for (n, spec) in refused {
        let result = engine.create(CALLER, request(n, spec));
        assert!(result.is_err(), "{n}: {result:?}");
        assert_eq!(tree(&scene.path("volumes")), before, "{n} left something");
    }
    // Labels, owner fields and modes are data, never paths: the volume lands where its name
    // says and nowhere else.
    let v = engine
        .create(
            CALLER,
            CreateRequest {
                name: name("labelled"),
                spec: VolumeSpec {
                    labels: [
                        (traversal.clone(), "/etc/passwd".to_string()),
                        ("k".to_string(), long.clone()),
                        ("nul\0".to_string(), "a\0b".to_string()),
                    ]
                    .into(),
                    ..VolumeSpec::default()
                },
                owner: Owner {
                    framework_id: Some(traversal.clone()),
                    app_id: Some("/../../outside".into()),
                    task_id: Some(long.clone()),
                    persistence_id: Some("%2e%2e%2f".into()),
                    container_path: Some("../../../../etc".into()),
                },
            },
        )
        .unwrap();
    assert_eq!(v.placement.data, scene.path("volumes/labelled/data"));
    let mut expected = before.clone();
    expected.insert("labelled".into());
    expected.insert("labelled/data".into());
    assert_eq!(tree(&scene.path("volumes")), expected);
    assert_eq!(scene.outside(), untouched_outside());
    assert!(mounts_under(scene.dir.path()).is_empty());
}

// --- symlinks where a pool or a target should be -----------------------------------------

/// A pool path that is a symlink is refused at start: berth never follows the last component
/// of a directory it creates in, so it cannot create its own directories in a pool whose
/// root is a link (the operator points the config at the real directory instead). Nothing
/// is created where the link points.
#[test]
fn a_symlinked_pool_directory_is_refused_at_start() {
    let scene = Scene::new();
    symlink(scene.path("outside"), scene.path("pool-link")).unwrap();
    let opened = scene.open_with(scene.pool_at("pool-link"), None);
    let Err(e) = opened else {
        panic!("a pool whose path is a symlink was opened");
    };
    let text = e.to_string();
    assert!(text.contains("pool-link"), "{text}");
    assert_eq!(scene.outside(), untouched_outside());
    // A symlink further up (like /var/lib/berth -> /data/berth) is fine.
    fs::create_dir_all(scene.path("real/volumes")).unwrap();
    symlink(scene.path("real"), scene.path("state-link")).unwrap();
    let engine = scene
        .open_with(scene.pool_at("state-link/volumes"), None)
        .unwrap();
    let v = engine
        .create(CALLER, request("db", VolumeSpec::default()))
        .unwrap();
    assert!(scene.path("real/volumes/db/data").is_dir(), "{v:?}");
}

/// The pool root replaced by a symlink while berth runs: a create after the swap must not
/// create anything where the link points, and a delete must not remove what is there.
#[test]
fn a_pool_root_swapped_for_a_symlink_is_not_followed() {
    let scene = Scene::new();
    let engine = scene.open();
    engine
        .create(CALLER, request("kept", VolumeSpec::default()))
        .unwrap();
    // A victim directory shaped like a volume, where the link will point.
    fs::create_dir_all(scene.path("outside/kept/data")).unwrap();
    fs::write(scene.path("outside/kept/data/precious"), "precious").unwrap();
    let outside_before = scene.outside();
    fs::rename(scene.path("volumes"), scene.path("volumes.real")).unwrap();
    symlink(scene.path("outside"), scene.path("volumes")).unwrap();

    let created = engine.create(CALLER, request("new", VolumeSpec::default()));
    assert!(created.is_err(), "{created:?}");
    assert_eq!(scene.outside(), outside_before, "create followed the link");

    let deleted = engine.wipe(CALLER, &name("kept"));
    assert!(deleted.is_err(), "{deleted:?}");
    assert_eq!(scene.outside(), outside_before, "wipe followed the link");
    assert_eq!(
        fs::read_to_string(scene.path("outside/kept/data/precious")).unwrap(),
        "precious"
    );

    // Not covered: a publish after the swap resolves the volume's data path through the
    // link (the pool root is an ancestor of the bind source there, resolved normally).
    assert!(mounts_under(scene.dir.path()).is_empty());
    assert_eq!(scene.outside(), outside_before);
    // Swapped back, the engine carries on as before.
    fs::remove_file(scene.path("volumes")).unwrap();
    fs::rename(scene.path("volumes.real"), scene.path("volumes")).unwrap();
    engine
        .create(CALLER, request("new", VolumeSpec::default()))
        .unwrap();
    engine.wipe(CALLER, &name("kept")).unwrap();
    assert!(!scene.path("volumes/kept").exists());
}

/// Publish targets that are `/`, or lead to it through a symlink, are refused; nothing is
/// mounted over `/` or anywhere else.
#[test]
fn publish_targets_leading_to_root_are_refused() {
    if !in_private_mount_namespace("publish_targets_leading_to_root_are_refused") {
        return;
    }
    let scene = Scene::new();
    let engine = scene.open();
    engine
        .create(CALLER, request("db", VolumeSpec::default()))
        .unwrap();
    symlink("/", scene.path("targets/root-link")).unwrap();
    symlink("/", scene.path("root-dir-link")).unwrap();
    let on_root = mounts_on_root();
    let targets_before = tree(&scene.path("targets"));
    let targets = [
        PathBuf::from("/"),
        PathBuf::from("/."),
        PathBuf::from("//"),
        scene.path("targets/root-link"),
        scene.path("targets/root-link/"),
        scene.path("targets/x/../../../../../.."),
        PathBuf::from("targets/relative"),
        PathBuf::from(""),
    ];
    for target in &targets {
        let result = engine.publish(CALLER, &name("db"), bind(target));
        assert!(result.is_err(), "{}: {result:?}", target.display());
        assert_eq!(mounts_on_root(), on_root, "{}", target.display());
        assert_eq!(
            mounts_involving(scene.dir.path()),
            [],
            "{}",
            target.display()
        );
    }
    assert_eq!(tree(&scene.path("targets")), targets_before);
    assert!(engine.get(&name("db")).unwrap().publications.is_empty());
    assert!(
        fs::symlink_metadata(scene.path("targets/root-link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

// --- names over the wire: the admin API of the real daemon ---------------------------

/// Sends raw bytes to a unix socket; returns the status (0 if the connection closed
/// without an answer) and the whole response.
fn exchange(socket: &Path, request: &[u8]) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(request);
    read_reply(&mut s)
}

/// A daemon with one plain pool and only the admin socket; stopped and cleaned on drop.
struct Daemon {
    // Field order is drop order: the daemon stops before its directory is cleaned.
    _served: Served,
    dir: PathBuf,
    _scratch: Scratch,
}

impl Daemon {
    fn start(max_volumes: Option<usize>, seed: impl FnOnce(&dyn VolumeService)) -> Self {
        let scratch = Scratch::new("berth-hostile-daemon-");
        let dir = scratch.path().to_path_buf();
        let d = dir.display();
        let limit = max_volumes
            .map(|n| format!("max_volumes = {n}\n"))
            .unwrap_or_default();
        let text = format!(
            r#"
state_dir = "{d}/state"
node_id = "hostile"
{limit}
[listen]
csi = ""
docker = "{d}/docker.sock"
admin = "{d}/admin.sock"

[[pools]]
name = "plain"
kind = "root"
paths = ["{d}/plain"]
backend = "none"
"#
        );
        fs::write(dir.join("config.toml"), &text).unwrap();
        let config = Config::load(&dir.join("config.toml")).unwrap();
        {
            let engine: Arc<dyn VolumeService> = berth::daemon::open_engine(&config).unwrap();
            seed(engine.as_ref());
        }
        let mut served = Serve::new(dir.join("config.toml"), dir.join("daemon.log")).spawn();
        let socket = dir.join("admin.sock");
        served.wait_until("answer /healthz", || {
            exchange(
                &socket,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .0 == 200
        });
        Self {
            _served: served,
            dir,
            _scratch: scratch,
        }
    }

    /// Sends raw bytes to the admin socket; returns the status (0 if the connection closed
    /// without an answer) and the whole response.
    fn raw_bytes(&self, request: &[u8]) -> (u16, String) {
        self.raw_bytes_to("admin.sock", request)
    }

    fn raw_to(&self, socket: &str, request: &str) -> (u16, String) {
        self.raw_bytes_to(socket, request.as_bytes())
    }

    fn raw_bytes_to(&self, socket: &str, request: &[u8]) -> (u16, String) {
        exchange(&self.dir.join(socket), request)
    }

    fn raw(&self, request: &str) -> (u16, String) {
        self.raw_bytes(request.as_bytes())
    }

    fn call(&self, method: &str, path: &str) -> (u16, String) {
        self.raw(&format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ))
    }
}

#[test]
fn admin_api_ids_that_try_to_escape_touch_nothing() {
    let daemon = Daemon::start(None, |engine| {
        let v = engine
            .create(
                CALLER,
                CreateRequest {
                    name: name("db"),
                    spec: VolumeSpec {
                        pool: Some("plain".into()),
                        ..VolumeSpec::default()
                    },
                    owner: Owner {
                        app_id: Some("/prod/db".into()),
                        task_id: Some("db.1".into()),
                        ..Owner::default()
                    },
                },
            )
            .unwrap();
        fs::write(v.placement.data.join("canary"), "db").unwrap();
    });
    // Victims shaped like volumes next to the pool and at the top of the state.
    for victim in ["victim/data", "plain/victim-data", "state/x/data"] {
        fs::create_dir_all(daemon.dir.join(victim)).unwrap();
        fs::write(daemon.dir.join(victim).join("canary"), "victim").unwrap();
    }
    let before = tree(&daemon.dir);
    let ids = [
        "..",
        ".",
        "%2e%2e",
        "%2E%2E",
        "%2e%2e%2f",
        "..%2fvictim",
        "%2e%2e%2fvictim",
        "%2e%2e%2f%2e%2e%2fvictim",
        "db%2f..%2f..%2fvictim",
        "db%2f..",
        "%2fetc%2fpasswd",
        "db%00",
        "%00",
        "%zz",
        "%2",
        "%",
        "%c0%ae%c0%ae%c0%af",
        "%ff",
        "db%0a",
        "db%20",
        "%e2%80%aedb",
        "..%5cvictim",
        "%252e%252e%252f",
    ];
    let long_300 = "a".repeat(300);
    let long_129 = "a".repeat(129);
    let all: Vec<&str> = ids
        .iter()
        .copied()
        .chain([long_300.as_str(), long_129.as_str()])
        .collect();
    for id in &all {
        for (method, query) in [("GET", ""), ("DELETE", ""), ("DELETE", "?wipe=true")] {
            let (status, body) = daemon.call(method, &format!("/v1/volumes/{id}{query}"));
            assert!(
                (400..500).contains(&status),
                "{method} /v1/volumes/{id}{query}: {status} {body}"
            );
        }
        // The Marathon-shaped route selects by owner, never by path.
        let (status, body) = daemon.call("DELETE", &format!("/v2/apps/{id}/tasks/{id}?wipe=true"));
        assert!(
            status == 404 || (400..500).contains(&status),
            "DELETE /v2/apps/{id}/tasks/{id}: {status} {body}"
        );
        assert!(!body.contains("\"wiped\":true"), "{body}");
    }
    // Paths the router splits differently.
    for path in [
        "/v1/volumes/../volumes/db",
        "/v1/volumes/db/..",
        "/v1/volumes/db/../../victim",
        "/v1/volumes//db",
        "/v1/volumes/db%2f",
    ] {
        let (status, body) = daemon.call("DELETE", &format!("{path}?wipe=true"));
        assert!((400..500).contains(&status), "{path}: {status} {body}");
    }
    // A 1 MiB id is refused by the HTTP layer or the name check, without an answer at worst.
    let huge = format!(
        "DELETE /v1/volumes/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (status, _) = daemon.raw(&huge);
    assert!(status == 0 || (400..500).contains(&status), "{status}");
    // NUL and raw bytes in the request line never reach the engine.
    let (status, _) = daemon
        .raw_bytes(b"DELETE /v1/volumes/db\0x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(status == 0 || (400..500).contains(&status), "{status}");
    let (status, _) = daemon.raw_bytes(
        b"DELETE /v1/volumes/\xc0\xae\xc0\xae HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(status == 0 || (400..500).contains(&status), "{status}");

    assert_eq!(tree(&daemon.dir).difference(&before).count(), 0);
    let after = tree(&daemon.dir);
    let gone: Vec<_> = before
        .difference(&after)
        .filter(|p| !p.starts_with("daemon.log"))
        .collect();
    assert!(gone.is_empty(), "removed: {gone:?}");
    assert_eq!(mounts_involving(&daemon.dir), []);
    // The daemon still serves, and the real volume is intact.
    let (status, body) = daemon.call("GET", "/v1/volumes/db");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        fs::read_to_string(daemon.dir.join("plain/db/data/canary")).unwrap(),
        "db"
    );
}

// --- limits ----------------------------------------------------------------------------

#[test]
fn max_volumes_refuses_the_next_create_and_creates_nothing() {
    let scene = Scene::new();
    let engine = scene.open_with(scene.pool_at("volumes"), Some(2)).unwrap();
    for n in ["a", "b"] {
        engine
            .create(CALLER, request(n, VolumeSpec::default()))
            .unwrap();
    }
    let before = tree(&scene.path("volumes"));
    let refused = engine.create(CALLER, request("c", VolumeSpec::default()));
    assert!(
        matches!(refused, Err(EngineError::TooManyVolumes { limit: 2, .. })),
        "{refused:?}"
    );
    let pending = engine.create_pending(
        CALLER,
        request("c", VolumeSpec::default()),
        Duration::from_secs(60),
    );
    assert!(
        matches!(pending, Err(EngineError::TooManyVolumes { .. })),
        "{pending:?}"
    );
    assert_eq!(tree(&scene.path("volumes")), before);
    assert_eq!(engine.list(&VolumeFilter::default()).len(), 2);
    // Creating one that exists is not a new volume: still idempotent at the limit.
    engine
        .create(CALLER, request("a", VolumeSpec::default()))
        .unwrap();
    // Room again after a delete.
    engine.delete(CALLER, &name("b")).unwrap();
    engine
        .create(CALLER, request("c", VolumeSpec::default()))
        .unwrap();
}

/// The shared HTTP server of the Docker and admin APIs, in this process on a unix socket,
/// with a handler that answers the body's length, after sleeping on `/slow`.
struct Server {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    fn start(limits: HttpLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let socket = dir.path().join("http.sock");
        let listener = {
            let _entered = runtime.enter();
            Arc::new(tokio::net::UnixListener::bind(&socket).unwrap())
        };
        runtime.spawn(async move {
            let accept = move || {
                let listener = Arc::clone(&listener);
                async move { listener.accept().await.map(|(s, _)| s) }
            };
            let handle = |req: Request| async move {
                if req.uri.path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                Reply::text(200, req.body.len().to_string())
            };
            let on_error = |status: u16, message: &str| Reply::text(status, message.to_string());
            berth::server::http::serve(accept, handle, limits, on_error, async {
                let _ = stopped.await;
            })
            .await;
        });
        Self {
            dir,
            runtime,
            stop: Some(stop),
        }
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(self.dir.path().join("http.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Sends `request` on a new connection; returns the status (0: closed without one) and
    /// how long the answer took.
    fn send(&self, request: &[u8]) -> (u16, String, Duration) {
        let mut s = self.connect();
        let start = Instant::now();
        let _ = s.write_all(request);
        let (status, text) = read_reply(&mut s);
        (status, text, start.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = &self.runtime;
    }
}

/// Reads until the peer closes (or 20 s pass); returns the status and the text.
fn read_reply(s: &mut UnixStream) -> (u16, String) {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn limits() -> HttpLimits {
    HttpLimits {
        max_body: 1024,
        header_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_connections: 4,
    }
}

fn post(body_len: usize) -> Vec<u8> {
    let mut r = format!(
        "POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'{', body_len));
    r
}

#[test]
fn http_bodies_over_the_limit_get_413() {
    assert_eq!(HttpLimits::default().max_body, 1 << 20);
    let server = Server::start(limits());
    let (status, text, _) = server.send(&post(1024));
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("1024"), "{text}");
    let (status, text, _) = server.send(&post(1025));
    assert_eq!(status, 413, "{text}");
    // Chunked, so the length is not known up front.
    let mut chunked =
        b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend(b"200\r\n");
        chunked.extend([b'a'; 0x200]);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let (status, text, _) = server.send(&chunked);
    assert_eq!(status, 413, "{text}");
    // A declared length far beyond the limit is refused without waiting for the body.
    let (status, text, took) = server.send(
        b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10737418240\r\n\r\n{",
    );
    assert_eq!(status, 413, "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn http_slow_handlers_get_503() {
    let server = Server::start(limits());
    let (status, text, took) =
        server.send(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 503, "{text}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// A client that connects and stalls (before, inside or after its headers, or in its body)
/// loses its connection; it cannot hold a connection slot for ever.
#[test]
fn http_stalled_clients_are_dropped() {
    let server = Server::start(limits());
    let stalls: [&[u8]; 4] = [
        b"",
        b"GET /x HTTP/1.1\r\nHo",
        b"GET /x HTTP/1.1\r\nHost: x\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
    ];
    for stall in stalls {
        let mut s = server.connect();
        let start = Instant::now();
        s.write_all(stall).unwrap();
        let (status, text) = read_reply(&mut s);
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "{:?}: still open after {took:?} ({status} {text})",
            String::from_utf8_lossy(stall)
        );
        assert!(status == 0 || status >= 400, "{status} {text}");
    }
}

/// At most `max_connections` are served at once; the next waits until one ends.
#[test]
fn http_connection_slots_are_bounded() {
    let server = Server::start(HttpLimits {
        max_connections: 2,
        header_timeout: Duration::from_secs(10),
        ..limits()
    });
    let first = server.connect();
    let second = server.connect();
    std::thread::sleep(Duration::from_millis(300));
    let mut third = server.connect();
    third
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    third
        .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = third.read(&mut byte);
    assert!(waited.is_err(), "answered beyond the limit: {waited:?}");
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, text) = read_reply(&mut third);
    assert_eq!(status, 200, "{text}");
    drop(second);
}

/// The admin API's own limits, on the real daemon: it takes no body, refuses one over
/// 64 KiB with 413, and drops a client that stalls in its body.
#[test]
fn admin_api_refuses_bodies_and_stalled_clients() {
    let daemon = Daemon::start(None, |_| {});
    let (status, body) = daemon.raw(&format!(
        "DELETE /v1/volumes/db HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
        (64 << 10) + 1,
        "a".repeat((64 << 10) + 1)
    ));
    assert_eq!(status, 413, "{body}");
    let (status, body) = daemon.raw(
        "DELETE /v1/volumes/db HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(status, 400, "{body}");
    let start = Instant::now();
    let (status, body) =
        daemon.raw("DELETE /v1/volumes/db HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(25), "{took:?} {status} {body}");
}

// --- what the fuzz targets found ---------------------------------------------------------

/// `fuzz/path_constraint` (crash-0f3170c6): the engine checked a constraint pattern only
/// wrapped in `^(?:...)$`, so an unbalanced pattern closed the group early and the rest of it
/// was no longer anchored: `/mnt/ssd)|(?:.*` matched every path. The bare pattern must now
/// be a regular expression by itself, as the Marathon validator already required.
#[test]
fn fuzz_path_constraint_patterns_cannot_escape_their_anchors() {
    for pattern in [
        ")mj4/(sds\0\0\0\0nvme06",
        "a)|(?:b",
        "/mnt/ssd)|(?:.*",
        "x)|(",
        ")(",
    ] {
        assert!(PathConstraint::new(true, pattern).is_err(), "{pattern:?}");
        assert!(PathConstraint::new(false, pattern).is_err(), "{pattern:?}");
    }
    // One stored before the fix matches nothing (LIKE) rather than everything.
    let stored = PathConstraint {
        like: true,
        pattern: "/mnt/ssd)|(?:.*".into(),
    };
    assert!(!stored.matches("/etc"));
    assert!(!stored.matches("/mnt/ssd"));
    let ssd = PathConstraint::new(true, "/mnt/ssd-.+").unwrap();
    assert!(ssd.matches("/mnt/ssd-1"));
    assert!(!ssd.matches("/x/mnt/ssd-1"));
    let flags = PathConstraint::new(true, "(?i)/DATA/[a-z]+").unwrap();
    assert!(flags.matches("/data/x"));
    assert!(!flags.matches("/data/x/"));
}

// --- names over the wire: the Docker plugin socket of the real daemon ------------------

#[test]
fn docker_requests_that_try_to_escape_touch_nothing() {
    let daemon = Daemon::start(None, |_| {});
    fs::create_dir_all(daemon.dir.join("victim/data")).unwrap();
    fs::write(daemon.dir.join("victim/data/canary"), "victim").unwrap();
    let before = tree(&daemon.dir);
    let docker = |path: &str, body: &str| {
        daemon.raw_to(
            "docker.sock",
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let long = "a".repeat(300);
    let names = [
        "..",
        ".",
        "../victim",
        "%2e%2e%2fvictim",
        "..%2f",
        "a/../../victim",
        "/etc",
        "db\\u0000",
        "\\u0000",
        "db\\n",
        "\\u202edb",
        long.as_str(),
    ];
    for n in names {
        for endpoint in ["Create", "Mount", "Unmount", "Remove", "Path", "Get"] {
            let (status, body) = docker(
                &format!("/VolumeDriver.{endpoint}"),
                &format!(r#"{{"Name":"{n}"}}"#),
            );
            assert!(
                (400..500).contains(&status),
                "{endpoint} {n:?}: {status} {body}"
            );
        }
    }
    // Options and caller ids that try to be paths or to be large.
    let big_id = "f".repeat(60 << 10);
    for (path, body) in [
        (
            "/VolumeDriver.Create",
            r#"{"Name":"v","Opts":{"pool":"../victim"}}"#.to_string(),
        ),
        (
            "/VolumeDriver.Create",
            r#"{"Name":"v","Opts":{"profile":"../../"}}"#.to_string(),
        ),
        (
            "/VolumeDriver.Create",
            r#"{"Name":"v","Opts":{"mode":"04777777"}}"#.to_string(),
        ),
        (
            "/VolumeDriver.Create",
            r#"{"Name":"v","Opts":{"uid":"-1"}}"#.to_string(),
        ),
        (
            "/VolumeDriver.Create",
            r#"{"Name":"v","Opts":{"size":"0"}}"#.to_string(),
        ),
        (
            "/VolumeDriver.Create",
            r#"{"Name":"v","Opts":{"size":"18446744073709551616"}}"#.to_string(),
        ),
        (
            "/VolumeDriver.Mount",
            format!(r#"{{"Name":"v","ID":"{big_id}"}}"#),
        ),
        (
            "/VolumeDriver.Mount",
            r#"{"Name":"v","ID":"../../victim"}"#.to_string(),
        ),
    ] {
        let (status, reply) = docker(path, &body);
        // 507 for a pool or profile no pool has: refused all the same, and not a crash.
        assert!(
            (400..600).contains(&status) && status != 500,
            "{path} {}: {status} {reply}",
            &body[..body.len().min(80)]
        );
    }
    assert_eq!(tree(&daemon.dir), before);
    // A label key that reads as a path is not a label key (Kubernetes' syntax): refused.
    let (status, reply) = docker(
        "/VolumeDriver.Create",
        r#"{"Name":"v","Opts":{"label.../../victim":"x"}}"#,
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("DNS subdomain"), "{reply}");
    assert_eq!(tree(&daemon.dir), before);
    // A valid one may still hold `.` and `/`: it is data, never a path, and the volume lands
    // where its name says.
    let (status, reply) = docker(
        "/VolumeDriver.Create",
        r#"{"Name":"v","Opts":{"label.victim.test/x..y":"x"}}"#,
    );
    assert_eq!(status, 200, "{reply}");
    let added: Vec<_> = tree(&daemon.dir).difference(&before).cloned().collect();
    assert_eq!(
        added,
        [PathBuf::from("plain/v"), PathBuf::from("plain/v/data")]
    );
    assert_eq!(mounts_involving(&daemon.dir), []);
    assert_eq!(
        fs::read_to_string(daemon.dir.join("victim/data/canary")).unwrap(),
        "victim"
    );
}
