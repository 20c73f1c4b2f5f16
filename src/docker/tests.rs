//! The plugin protocol in-process, over the engine on the recording fake host: every
//! endpoint, reference counting, idempotency, and refusals that change nothing. The same
//! flows run against the real daemon and a real dockerd in `tests/docker_*.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::engine::pool::PoolConfig;
use crate::engine::types::{
    AccessType, CreateRequest, Owner, PublishTarget, Volume, VolumeName, VolumeSpec,
};
use crate::engine::{Engine, EngineConfig, NodeInfo};
use crate::host::fake::FakeHost;

const GIB: u64 = 1 << 30;
/// A deadline no test reaches.
const LONG: Duration = Duration::from_secs(60);

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Arc<Engine<FakeHost>>,
    plugin: Plugin,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut pool = PoolConfig::default_root(Path::new("/pool"));
    pool.paths = vec![PathBuf::from("/pool/volumes")];
    pool.capacity = Some(10 * GIB);
    let host = FakeHost::new(100 * GIB);
    host.add_dir(Path::new("/pool/volumes"));
    let engine = Arc::new(
        Engine::open(
            EngineConfig {
                store_path: dir.path().join("berth.redb"),
                pools: vec![pool],
                node: NodeInfo {
                    node_id: "n1".into(),
                    ..NodeInfo::default()
                },
            },
            host,
        )
        .unwrap(),
    );
    let service: Arc<dyn VolumeService> = engine.clone();
    Fixture {
        _dir: dir,
        engine,
        plugin: Plugin::new(service, "berth"),
    }
}

/// Host calls that change something (everything but reads).
fn mutations(h: &FakeHost) -> usize {
    h.calls()
        .iter()
        .filter(|c| !matches!(c.op, "mounts" | "loop_devices" | "fs_stats" | "tree_usage"))
        .count()
}

impl Fixture {
    async fn raw(&self, method: hyper::Method, path: &str, body: &[u8]) -> (u16, Value) {
        let reply = self
            .plugin
            .clone()
            .handle(http::Request {
                method,
                uri: path.parse().unwrap(),
                headers: hyper::HeaderMap::new(),
                body: bytes::Bytes::copy_from_slice(body),
                upload: None,
            })
            .await;
        assert_eq!(reply.content_type, CONTENT_TYPE);
        let value: Value = serde_json::from_slice(&reply.body).unwrap();
        if reply.status == 200 {
            assert_eq!(value.get("Err").and_then(Value::as_str).unwrap_or(""), "");
        } else {
            let err = value["Err"].as_str().unwrap();
            assert!(!err.is_empty(), "{path}: a failure has a message");
        }
        (reply.status, value)
    }

    async fn call(&self, endpoint: &str, body: Value) -> (u16, Value) {
        self.raw(
            hyper::Method::POST,
            &format!("/{endpoint}"),
            body.to_string().as_bytes(),
        )
        .await
    }

    async fn ok(&self, endpoint: &str, body: Value) -> Value {
        let (status, value) = self.call(endpoint, body.clone()).await;
        assert_eq!(status, 200, "{endpoint} {body}: {value}");
        value
    }

    /// Calls and expects a failure; returns the message.
    async fn err(&self, endpoint: &str, body: Value) -> (u16, String) {
        let (status, value) = self.call(endpoint, body.clone()).await;
        assert_ne!(status, 200, "{endpoint} {body} should fail: {value}");
        (status, value["Err"].as_str().unwrap().to_string())
    }

    async fn status(&self, name: &str) -> Value {
        self.ok("VolumeDriver.Get", json!({"Name": name})).await["Volume"]["Status"].clone()
    }
}

#[tokio::test]
async fn activate_and_capabilities_answer_without_a_body() {
    let f = fixture();
    let (status, v) = f.raw(hyper::Method::POST, "/Plugin.Activate", b"").await;
    assert_eq!((status, v), (200, json!({"Implements": ["VolumeDriver"]})));
    let (status, v) = f
        .raw(hyper::Method::POST, "/VolumeDriver.Capabilities", b"{}")
        .await;
    assert_eq!(
        (status, v),
        (200, json!({"Capabilities": {"Scope": "local"}}))
    );
    let (status, v) = f.raw(hyper::Method::POST, "/VolumeDriver.List", b"").await;
    assert_eq!((status, v), (200, json!({"Volumes": [], "Err": ""})));
}

#[tokio::test]
async fn the_whole_lifecycle_with_reference_counted_mounts() {
    let f = fixture();
    f.ok(
        "VolumeDriver.Create",
        json!({"Name": "v", "Opts": {"size": "16MiB", "label.team": "db", "mode": "0750"}}),
    )
    .await;
    let got = f.ok("VolumeDriver.Get", json!({"Name": "v"})).await;
    let volume = &got["Volume"];
    let data = f
        .engine
        .get(&VolumeName::parse("v").unwrap())
        .unwrap()
        .placement
        .data;
    assert_eq!(volume["Name"], "v");
    assert_eq!(volume["Mountpoint"], data.to_str().unwrap());
    let created = volume["CreatedAt"].as_str().unwrap();
    humantime::parse_rfc3339(created).unwrap_or_else(|e| panic!("{created}: {e}"));
    let status = &volume["Status"];
    assert_eq!(status["size"], "16MiB");
    assert_eq!(status["sizeBytes"], 16 << 20);
    assert!(status["usedBytes"].is_u64(), "{status}");
    assert_eq!(status["kind"], "root");
    assert_eq!(status["backend"], "loopfs");
    assert_eq!(status["pool"], "default");
    assert_eq!(status["state"], "reserved");
    assert_eq!(status["labels"], json!({"team": "db"}));
    let spec = f.engine.get(&VolumeName::parse("v").unwrap()).unwrap().spec;
    assert_eq!(spec.ownership.mode, Some(0o750));

    let path = f.ok("VolumeDriver.Path", json!({"Name": "v"})).await;
    assert_eq!(path["Mountpoint"], data.to_str().unwrap());

    // Two containers mount it; the volume stays attached until the last one unmounts.
    for id in ["c1", "c2", "c1"] {
        let m = f
            .ok("VolumeDriver.Mount", json!({"Name": "v", "ID": id}))
            .await;
        assert_eq!(m["Mountpoint"], data.to_str().unwrap());
    }
    let status = f.status("v").await;
    assert_eq!(status["state"], "attached");
    assert_eq!(
        status["publishedTo"],
        json!(["reference \"docker:c1\"", "reference \"docker:c2\""])
    );
    let (code, message) = f.err("VolumeDriver.Remove", json!({"Name": "v"})).await;
    assert_eq!(code, 409);
    assert!(message.contains("volume v is in use"), "{message}");
    assert!(message.contains("mount id c2"), "{message}");
    assert!(
        message.contains("docker ps -a --filter volume=v"),
        "{message}"
    );
    assert!(
        message.contains("stop and remove the containers"),
        "{message}"
    );

    f.ok("VolumeDriver.Unmount", json!({"Name": "v", "ID": "c1"}))
        .await;
    assert_eq!(f.status("v").await["state"], "attached");
    // A repeated Unmount is harmless.
    f.ok("VolumeDriver.Unmount", json!({"Name": "v", "ID": "c1"}))
        .await;
    assert_eq!(f.status("v").await["state"], "attached");
    f.ok("VolumeDriver.Unmount", json!({"Name": "v", "ID": "c2"}))
        .await;
    assert_eq!(f.status("v").await["state"], "detached");

    let list = f.ok("VolumeDriver.List", json!({})).await;
    let volumes = list["Volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0]["Name"], "v");
    assert_eq!(volumes[0]["Mountpoint"], data.to_str().unwrap());
    assert!(
        volumes[0]["Status"].get("usedBytes").is_none(),
        "List skips usage"
    );

    f.ok("VolumeDriver.Remove", json!({"Name": "v"})).await;
    assert!(f.engine.list(&VolumeFilter::default()).is_empty());
    assert_eq!(f.engine.host().mount_count(), 0);
    // Removing or unmounting what is gone succeeds: the caller's goal holds.
    f.ok("VolumeDriver.Remove", json!({"Name": "v"})).await;
    f.ok("VolumeDriver.Unmount", json!({"Name": "v", "ID": "c1"}))
        .await;
}

#[tokio::test]
async fn mounts_without_an_id_share_one_anonymous_reference() {
    let f = fixture();
    f.ok("VolumeDriver.Create", json!({"Name": "d"})).await;
    assert_eq!(f.status("d").await["size"], "unlimited");
    f.ok("VolumeDriver.Mount", json!({"Name": "d"})).await;
    f.ok("VolumeDriver.Mount", json!({"Name": "d", "ID": ""}))
        .await;
    f.ok("VolumeDriver.Mount", json!({"Name": "d", "ID": "c9"}))
        .await;
    assert_eq!(
        f.status("d").await["publishedTo"],
        json!(["reference \"docker\"", "reference \"docker:c9\""])
    );
    f.ok("VolumeDriver.Unmount", json!({"Name": "d"})).await;
    assert_eq!(
        f.status("d").await["publishedTo"],
        json!(["reference \"docker:c9\""])
    );
    f.ok("VolumeDriver.Unmount", json!({"Name": "d", "ID": "c9"}))
        .await;
    f.ok("VolumeDriver.Remove", json!({"Name": "d"})).await;
}

#[tokio::test]
async fn create_is_idempotent_with_the_same_options_only() {
    let f = fixture();
    let opts = json!({"Name": "v", "Opts": {"size": "1GiB", "uid": "999"}});
    f.ok("VolumeDriver.Create", opts.clone()).await;
    let before = mutations(f.engine.host());
    f.ok("VolumeDriver.Create", opts).await;
    // `1GiB` and `1073741824` are the same size.
    f.ok(
        "VolumeDriver.Create",
        json!({"Name": "v", "Opts": {"size": "1073741824", "uid": "999"}}),
    )
    .await;
    let (code, message) = f
        .err(
            "VolumeDriver.Create",
            json!({"Name": "v", "Opts": {"size": "2GiB", "uid": "999"}}),
        )
        .await;
    assert_eq!(code, 409);
    assert!(message.contains("volume v already exists"), "{message}");
    assert!(message.contains("size"), "{message}");
    assert_eq!(mutations(f.engine.host()), before);
}

#[tokio::test]
async fn bad_names_options_and_bodies_are_refused_and_change_nothing() {
    let f = fixture();
    let before = mutations(f.engine.host());
    let long = "a".repeat(300);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"Name": "../x"}), "invalid volume name \"../x\""),
        (json!({"Name": "a/b"}), "invalid volume name \"a/b\""),
        (json!({"Name": "a\u{0}b"}), "invalid volume name"),
        (json!({"Name": long}), "at most 128 bytes"),
        (json!({"Name": ""}), "cannot be empty"),
        (
            json!({"Name": "v", "Opts": {"size": "-1"}}),
            "option \"size\" for volume v: \"-1\" is not a size",
        ),
        (
            json!({"Name": "v", "Opts": {"size": "lots"}}),
            "option \"size\" for volume v",
        ),
        (
            json!({"Name": "v", "Opts": {"colour": "red"}}),
            "option \"colour\" for volume v: unknown key; berth accepts size, max_size, type",
        ),
        (
            json!({"Name": "v", "Opts": {"pool": "nope"}}),
            "no pool named \"nope\"",
        ),
        (
            json!({"Name": "v", "Opts": {"size": "20GiB"}}),
            "volume v: no pool can hold it",
        ),
        (
            json!({"Name": "v", "Opts": {"size": 16}}),
            "malformed VolumeDriver.Create request: invalid type: integer `16`, expected a string",
        ),
        (json!({"Opts": {}}), "missing field `Name`"),
        (json!(["v"]), "malformed VolumeDriver.Create request"),
    ];
    for (body, needle) in cases {
        let (code, message) = f.err("VolumeDriver.Create", body.clone()).await;
        assert!(message.contains(needle), "{body}: {message}");
        assert!((400..600).contains(&code), "{body}: {code}");
    }
    for raw in [&b"{\"Name\":"[..], b"", b"\xff\xfe", b"null"] {
        let (code, v) = f
            .raw(hyper::Method::POST, "/VolumeDriver.Create", raw)
            .await;
        assert_eq!(code, 400, "{raw:?}");
        let message = v["Err"].as_str().unwrap();
        assert!(
            message.contains("malformed VolumeDriver.Create request"),
            "{message}"
        );
        assert!(
            message.contains(r#"send JSON like {"Name":"v""#),
            "{message}"
        );
    }
    let (code, message) = f
        .err("VolumeDriver.Mount", json!({"Name": "v", "ID": "a b"}))
        .await;
    assert_eq!(code, 400);
    assert!(message.contains("ID for volume v"), "{message}");
    assert!(f.engine.list(&VolumeFilter::default()).is_empty());
    assert_eq!(mutations(f.engine.host()), before);

    // Every refusal is counted, with its reason, whether the front-end or the engine made it.
    let metrics = f.engine.metrics();
    let errors = |op: &'static str, kind: &'static str| {
        metrics
            .errors
            .get(&("docker", op, kind))
            .copied()
            .unwrap_or(0)
    };
    let creates = &metrics.ops[&("docker", "create")];
    assert_eq!((creates.count, creates.errors), (17, 17), "{metrics:?}");
    assert_eq!(errors("create", "malformed_request"), 7, "{metrics:?}");
    assert_eq!(errors("create", "invalid_input"), 9, "{metrics:?}");
    assert_eq!(errors("create", "no_capacity"), 1, "{metrics:?}");
    assert_eq!(errors("publish", "invalid_input"), 1, "{metrics:?}");
}

#[tokio::test]
async fn unknown_volumes_endpoints_and_methods_get_clear_errors() {
    let f = fixture();
    for endpoint in [
        "VolumeDriver.Mount",
        "VolumeDriver.Get",
        "VolumeDriver.Path",
    ] {
        let (code, message) = f.err(endpoint, json!({"Name": "ghost", "ID": "c"})).await;
        assert_eq!(code, 404);
        assert_eq!(
            message,
            "volume ghost not found; create it with `docker volume create --driver berth ghost`"
        );
    }
    let (code, v) = f
        .raw(hyper::Method::POST, "/VolumeDriver.Snapshot", b"{}")
        .await;
    assert_eq!(code, 404);
    assert!(
        v["Err"]
            .as_str()
            .unwrap()
            .contains("does not serve /VolumeDriver.Snapshot")
    );
    let (code, v) = f.raw(hyper::Method::GET, "/VolumeDriver.List", b"").await;
    assert_eq!(code, 405);
    assert!(v["Err"].as_str().unwrap().contains("takes POST, not GET"));
}

#[tokio::test]
async fn lower_case_fields_and_unknown_fields_are_accepted() {
    let f = fixture();
    f.ok(
        "VolumeDriver.Create",
        json!({"name": "v", "opts": {"size": "1GiB"}, "Extra": 1}),
    )
    .await;
    f.ok("VolumeDriver.Mount", json!({"name": "v", "id": "c1"}))
        .await;
    assert_eq!(
        f.status("v").await["publishedTo"],
        json!(["reference \"docker:c1\""])
    );
    f.ok("VolumeDriver.Create", json!({"Name": "w", "Opts": null}))
        .await;
}

#[tokio::test]
async fn a_block_volume_is_not_mounted_for_docker() {
    let f = fixture();
    let name = VolumeName::parse("raw").unwrap();
    f.engine
        .create(
            CALLER,
            CreateRequest {
                name: name.clone(),
                spec: VolumeSpec {
                    size: Some(GIB),
                    access: AccessType::Block,
                    ..VolumeSpec::default()
                },
                owner: Owner::default(),
            },
        )
        .unwrap();
    let (code, message) = f
        .err("VolumeDriver.Mount", json!({"Name": "raw", "ID": "c"}))
        .await;
    assert_eq!(code, 422);
    assert!(
        message.contains("volume raw: it is a raw block volume"),
        "{message}"
    );
    assert!(f.engine.get(&name).unwrap().publications.is_empty());
}

#[tokio::test]
async fn docker_sees_and_changes_only_its_own_volumes() {
    let f = fixture();
    let kubernetes = Caller {
        frontend: Frontend::Csi,
        wait_if_busy: false,
    };
    let name = VolumeName::parse("pvc-1").unwrap();
    f.engine
        .create(
            kubernetes,
            CreateRequest {
                name: name.clone(),
                spec: VolumeSpec {
                    size: Some(GIB),
                    ..VolumeSpec::default()
                },
                owner: Owner::default(),
            },
        )
        .unwrap();
    f.ok("VolumeDriver.Create", json!({"Name": "mine"})).await;
    let before = f.engine.get(&name).unwrap();
    let calls = mutations(f.engine.host());

    let listed = f.ok("VolumeDriver.List", json!({})).await;
    let names: Vec<&str> = listed["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    for (endpoint, body) in [
        ("VolumeDriver.Get", json!({"Name": "pvc-1"})),
        ("VolumeDriver.Path", json!({"Name": "pvc-1"})),
        ("VolumeDriver.Mount", json!({"Name": "pvc-1", "ID": "c1"})),
        ("VolumeDriver.Unmount", json!({"Name": "pvc-1", "ID": "c1"})),
        ("VolumeDriver.Remove", json!({"Name": "pvc-1"})),
        // `docker run -v pvc-1:/data` creates implicitly: neither a second volume nor a share.
        ("VolumeDriver.Create", json!({"Name": "pvc-1"})),
    ] {
        let (code, message) = f.err(endpoint, body).await;
        assert_eq!(code, 409, "{endpoint}: {message}");
        assert!(
            message.contains("volume pvc-1 belongs to the csi front-end: docker may not use"),
            "{endpoint}: {message}"
        );
    }
    assert_eq!(f.engine.get(&name).unwrap(), before);
    assert_eq!(mutations(f.engine.host()), calls);
}

#[tokio::test]
async fn host_failures_are_reported_and_leave_nothing() {
    let f = fixture();
    f.engine.host().fail_op("mount_image");
    let (code, message) = f
        .err(
            "VolumeDriver.Create",
            json!({"Name": "v", "Opts": {"size": "1GiB"}}),
        )
        .await;
    assert_eq!(code, 500);
    assert!(
        message.starts_with("volume v: mounting the filesystem image failed"),
        "{message}"
    );
    assert!(f.engine.list(&VolumeFilter::default()).is_empty());
    f.engine.host().heal();
    f.ok(
        "VolumeDriver.Create",
        json!({"Name": "v", "Opts": {"size": "1GiB"}}),
    )
    .await;
}

#[test]
fn driver_names_come_from_the_socket_file() {
    assert_eq!(
        driver_name(Path::new("/run/docker/plugins/berth.sock")),
        "berth"
    );
    assert_eq!(
        driver_name(Path::new("/x/berth-test-1-2.sock")),
        "berth-test-1-2"
    );
}

/// The engine, with `publish`, `delete` and `usage` slowed down: a volume busy behind a
/// long operation, as dockerd's timeouts meet it, or a directory too large to walk quickly.
struct Slow {
    inner: Arc<Engine<FakeHost>>,
    delay: Duration,
    /// Publishes that have finished (successfully or not).
    published: Arc<std::sync::atomic::AtomicUsize>,
}

impl VolumeService for Slow {
    fn record_refused(&self, f: Frontend, op: &'static str, e: Duration, kind: &'static str) {
        self.inner.record_refused(f, op, e, kind)
    }
    fn create(&self, c: Caller, r: CreateRequest) -> Result<Volume, EngineError> {
        self.inner.create(c, r)
    }
    fn publish(&self, c: Caller, n: &VolumeName, t: PublishTarget) -> Result<Volume, EngineError> {
        std::thread::sleep(self.delay);
        let result = self.inner.publish(c, n, t);
        self.published
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        result
    }
    fn publish_on(
        &self,
        c: Caller,
        n: &VolumeName,
        b: &PublishTarget,
        t: PublishTarget,
    ) -> Result<Volume, EngineError> {
        self.inner.publish_on(c, n, b, t)
    }
    fn create_in_range(
        &self,
        c: Caller,
        r: CreateRequest,
        s: &crate::engine::sizing::SizeRequest,
    ) -> Result<Volume, EngineError> {
        self.inner.create_in_range(c, r, s)
    }
    fn publish_ephemeral(
        &self,
        c: Caller,
        r: crate::engine::EphemeralRequest,
    ) -> Result<Volume, EngineError> {
        self.inner.publish_ephemeral(c, r)
    }
    fn unpublish(
        &self,
        c: Caller,
        n: &VolumeName,
        t: &PublishTarget,
    ) -> Result<Volume, EngineError> {
        self.inner.unpublish(c, n, t)
    }
    fn delete(&self, c: Caller, n: &VolumeName) -> Result<(), EngineError> {
        std::thread::sleep(self.delay);
        self.inner.delete(c, n)
    }
    fn wipe(&self, c: Caller, n: &VolumeName) -> Result<crate::engine::RemovalStats, EngineError> {
        self.inner.wipe(c, n)
    }
    fn create_pending(
        &self,
        c: Caller,
        r: CreateRequest,
        attach_within: Duration,
    ) -> Result<Volume, EngineError> {
        self.inner.create_pending(c, r, attach_within)
    }
    fn expire_pending_reservations(&self, now_ms: u64) -> Vec<VolumeName> {
        self.inner.expire_pending_reservations(now_ms)
    }
    fn empty_trash(&self, wait: Duration) -> u64 {
        self.inner.empty_trash(wait)
    }
    fn expand(&self, c: Caller, n: &VolumeName, size: u64) -> Result<Volume, EngineError> {
        self.inner.expand(c, n, size)
    }
    fn grant_group(&self, c: Caller, n: &VolumeName, gid: u32) -> Result<Volume, EngineError> {
        self.inner.grant_group(c, n, gid)
    }
    fn adopt(
        &self,
        c: Caller,
        n: &VolumeName,
        expected: &Owner,
        owner: Owner,
    ) -> Result<Volume, EngineError> {
        self.inner.adopt(c, n, expected, owner)
    }
    fn dirs_beneath(&self, root: &Path, relative: &Path, create: bool) -> Result<(), EngineError> {
        self.inner.dirs_beneath(root, relative, create)
    }
    fn random_id(&self) -> Result<[u8; 16], EngineError> {
        self.inner.random_id()
    }
    fn handover(
        &self,
        c: Caller,
        n: &VolumeName,
        to: crate::engine::types::OwnerFrontend,
    ) -> Result<Volume, EngineError> {
        self.inner.handover(c, n, to)
    }
    fn get(&self, n: &VolumeName) -> Result<Volume, EngineError> {
        self.inner.get(n)
    }
    fn list(&self, f: &VolumeFilter) -> Vec<std::sync::Arc<Volume>> {
        self.inner.list(f)
    }
    fn list_after(
        &self,
        caller: Caller,
        after: Option<&VolumeName>,
        limit: usize,
    ) -> Vec<std::sync::Arc<Volume>> {
        self.inner.list_after(caller, after, limit)
    }
    fn usage(&self, n: &VolumeName) -> Result<crate::engine::types::Usage, EngineError> {
        std::thread::sleep(self.delay);
        self.inner.usage(n)
    }
    fn health(&self, volume: &Volume) -> crate::engine::VolumeHealth {
        self.inner.health(volume)
    }
    fn listed_health(&self, page: &[std::sync::Arc<Volume>]) -> Vec<crate::engine::VolumeHealth> {
        self.inner.listed_health(page)
    }
    fn sweep_health(&self, valid_for: std::time::Duration) -> usize {
        self.inner.sweep_health(valid_for)
    }
    fn capacity(&self, s: &crate::engine::PoolSelector) -> Vec<crate::engine::types::PoolCapacity> {
        self.inner.capacity(s)
    }
    fn node(&self) -> &NodeInfo {
        self.inner.node()
    }
    fn pools(&self) -> &[PoolConfig] {
        self.inner.pools()
    }
    fn metrics(&self) -> crate::engine::metrics::MetricsSnapshot {
        self.inner.metrics()
    }
    fn recovery_report(&self) -> crate::engine::RecoveryReport {
        self.inner.recovery_report()
    }
    fn snapshot(
        &self,
        caller: Caller,
        request: crate::engine::snapshot::SnapshotRequest,
    ) -> Result<crate::engine::snapshot::Snapshot, EngineError> {
        self.inner.snapshot(caller, request)
    }
    fn delete_snapshot(&self, caller: Caller, name: &VolumeName) -> Result<(), EngineError> {
        self.inner.delete_snapshot(caller, name)
    }
    fn get_snapshot(
        &self,
        name: &VolumeName,
    ) -> Result<crate::engine::snapshot::Snapshot, EngineError> {
        self.inner.get_snapshot(name)
    }
    fn list_snapshots(
        &self,
        source: Option<&VolumeName>,
    ) -> Vec<crate::engine::snapshot::Snapshot> {
        self.inner.list_snapshots(source)
    }
    fn export(
        &self,
        caller: Caller,
        name: &VolumeName,
        started: &mut dyn FnMut(&crate::engine::transfer::ExportPlan),
        out: &mut dyn std::io::Write,
    ) -> Result<crate::engine::ArchiveStats, EngineError> {
        self.inner.export(caller, name, started, out)
    }
    fn import(
        &self,
        caller: Caller,
        request: crate::engine::transfer::ImportRequest,
        input: &mut dyn std::io::Read,
    ) -> Result<Volume, EngineError> {
        self.inner.import(caller, request, input)
    }
    fn probe(&self) -> Result<(), EngineError> {
        self.inner.probe()
    }
}

/// A plugin over [`Slow`] with 100 ms deadlines, and its count of finished publishes.
fn slow_plugin(f: &Fixture, delay: Duration) -> (Plugin, Arc<std::sync::atomic::AtomicUsize>) {
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slow: Arc<dyn VolumeService> = Arc::new(Slow {
        inner: Arc::clone(&f.engine),
        delay,
        published: Arc::clone(&published),
    });
    let short = Duration::from_millis(100);
    (
        Plugin::new(slow, "berth").with_deadlines(short, short),
        published,
    )
}

async fn post(plugin: &Plugin, path: &str, body: Value) -> (u16, Value) {
    let reply = plugin
        .clone()
        .handle(http::Request {
            method: hyper::Method::POST,
            uri: path.parse().unwrap(),
            headers: hyper::HeaderMap::new(),
            body: bytes::Bytes::from(body.to_string()),
            upload: None,
        })
        .await;
    (reply.status, serde_json::from_slice(&reply.body).unwrap())
}

/// Waits until `publishes` slow publishes have finished, then until volume `v` holds
/// `expected` references, and checks that it still does a moment later.
async fn assert_settles_at(
    f: &Fixture,
    published: &std::sync::atomic::AtomicUsize,
    publishes: usize,
    expected: usize,
) {
    let references = || {
        f.engine
            .get(&VolumeName::parse("v").unwrap())
            .unwrap()
            .publications
            .len()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while published.load(std::sync::atomic::Ordering::SeqCst) < publishes
        || references() != expected
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{} references, expected {expected}",
            references()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(references(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_answered_as_timed_out_is_released_when_it_completes() {
    let f = fixture();
    f.ok("VolumeDriver.Create", json!({"Name": "v"})).await;
    let (plugin, published) = slow_plugin(&f, Duration::from_millis(400));
    let mount = json!({"Name": "v", "ID": "c1"});
    let (status, reply) = post(&plugin, "/VolumeDriver.Mount", mount).await;
    assert_eq!(status, 503);
    let message = reply["Err"].as_str().unwrap();
    assert!(
        message.starts_with("mounting volume v is still running after 0 s"),
        "{message}"
    );
    assert!(
        message.contains("berth releases the mount again"),
        "{message}"
    );
    assert_settles_at(&f, &published, 1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_whose_caller_went_away_is_released_when_it_completes() {
    let f = fixture();
    f.ok("VolumeDriver.Create", json!({"Name": "v"})).await;
    let (plugin, published) = slow_plugin(&f, Duration::from_millis(300));
    let plugin = plugin.with_deadlines(LONG, LONG);
    // The client disconnects: the server drops the request's future.
    let mount = json!({"Name": "v", "ID": "c1"});
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        post(&plugin, "/VolumeDriver.Mount", mount),
    )
    .await;
    assert!(gave_up.is_err());
    assert_settles_at(&f, &published, 1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_mount_keeps_a_reference_that_was_already_held() {
    let f = fixture();
    f.ok("VolumeDriver.Create", json!({"Name": "v"})).await;
    f.ok("VolumeDriver.Mount", json!({"Name": "v", "ID": "c1"}))
        .await;
    let (plugin, published) = slow_plugin(&f, Duration::from_millis(300));
    let again = json!({"Name": "v", "ID": "c1"});
    let (status, _) = post(&plugin, "/VolumeDriver.Mount", again).await;
    assert_eq!(status, 503);
    assert_settles_at(&f, &published, 1, 1).await;
    // A mount answered in time keeps its reference.
    let patient = plugin.with_deadlines(LONG, LONG);
    let other = json!({"Name": "v", "ID": "c2"});
    let (status, _) = post(&patient, "/VolumeDriver.Mount", other).await;
    assert_eq!(status, 200);
    assert_settles_at(&f, &published, 2, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_remove_is_answered_in_time_and_finishes_in_the_background() {
    let f = fixture();
    f.ok("VolumeDriver.Create", json!({"Name": "v"})).await;
    let (plugin, _) = slow_plugin(&f, Duration::from_millis(300));
    let (status, reply) = post(&plugin, "/VolumeDriver.Remove", json!({"Name": "v"})).await;
    assert_eq!(status, 503);
    let message = reply["Err"].as_str().unwrap();
    assert!(
        message.contains("removing volume v is still running"),
        "{message}"
    );
    assert!(
        message.contains("it completes in the background"),
        "{message}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f.engine.list(&VolumeFilter::default()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the remove never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_does_not_wait_for_a_slow_usage_measurement() {
    let f = fixture();
    f.ok("VolumeDriver.Create", json!({"Name": "v"})).await;
    let (plugin, _) = slow_plugin(&f, Duration::from_secs(1));
    let plugin = plugin.with_deadlines(LONG, LONG);
    let started = std::time::Instant::now();
    let (status, reply) = post(&plugin, "/VolumeDriver.Get", json!({"Name": "v"})).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let usage = &reply["Volume"]["Status"];
    assert!(usage.get("usedBytes").is_none(), "{usage}");
    assert_eq!(
        usage["usageNote"],
        "being measured in the background; ask again shortly"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, reply) = post(&plugin, "/VolumeDriver.Get", json!({"Name": "v"})).await;
        if reply["Volume"]["Status"]["usedBytes"].is_u64() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never measured: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
