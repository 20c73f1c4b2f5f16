//! The admin API in process, over the engine on the fake host: authentication, every route
//! with good and bad input, the Marathon routes, the metrics text (read back with a real
//! Prometheus parser), the pending-reservation sweep, and the CLI against a real socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;

use super::cli::{self, Console, OutputFormat, VolumeCommand};
use super::*;
use crate::config::Config;
use crate::engine::pool::{BackendChoice, PoolConfig};
use crate::engine::types::{CreateRequest, Owner, OwnerFrontend, PublishTarget, VolumeSpec};
use crate::engine::{Engine, EngineConfig, NodeInfo};
use crate::host::fake::FakeHost;
use crate::server::Servers;

const GIB: u64 = 1 << 30;
const SECRET: &str = "s3cret-token-0123456789";
const CSI: Caller = Caller {
    frontend: Frontend::Csi,
    wait_if_busy: false,
};

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Arc<dyn VolumeService>,
    admin: Arc<Admin>,
}

fn pools() -> Vec<PoolConfig> {
    let mut fast = PoolConfig::default_root(Path::new("/pool"));
    fast.name = "fast".into();
    fast.paths = vec![PathBuf::from("/pool/fast")];
    fast.capacity = Some(10 * GIB);
    let mut keep = fast.clone();
    keep.name = "keep".into();
    keep.paths = vec![PathBuf::from("/pool/keep")];
    keep.backend = BackendChoice::None;
    keep.reclaim = ReclaimPolicy::Retain;
    vec![fast, keep]
}

fn fixture(token: Option<&str>) -> Fixture {
    fixture_with_host(token).0
}

/// The fixture, and its engine with the fake host reachable.
fn fixture_with_host(token: Option<&str>) -> (Fixture, Arc<Engine<FakeHost>>) {
    let dir = tempfile::tempdir().unwrap();
    let host = FakeHost::new(100 * GIB);
    host.add_dir(Path::new("/pool/fast"));
    host.add_dir(Path::new("/pool/keep"));
    let engine = Engine::open(
        EngineConfig {
            store_path: dir.path().join("berth.redb"),
            pools: pools(),
            node: NodeInfo {
                node_id: "node-1".into(),
                ..NodeInfo::default()
            },
        },
        host,
    )
    .unwrap();
    let concrete = Arc::new(engine);
    let engine: Arc<dyn VolumeService> = concrete.clone();
    let admin = Admin::new(Arc::clone(&engine), token.map(|t| Token::new(t).unwrap()));
    let f = Fixture {
        _dir: dir,
        engine,
        admin,
    };
    (f, concrete)
}

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

fn create(e: &Arc<dyn VolumeService>, n: &str, pool: &str, owner: Owner) {
    let mut spec = VolumeSpec {
        size: Some(GIB),
        pool: Some(pool.into()),
        ..VolumeSpec::default()
    };
    spec.labels.insert("team", format!("team-{n}"));
    e.create(
        CSI,
        CreateRequest {
            name: name(n),
            spec,
            owner,
        },
    )
    .unwrap();
}

fn bind(path: &str) -> PublishTarget {
    PublishTarget::Bind {
        path: PathBuf::from(path),
        read_only: false,
    }
}

fn owner(app: &str, task: &str, container_path: &str) -> Owner {
    Owner {
        framework_id: Some("marathon-fw".into()),
        app_id: Some(app.into()),
        task_id: Some(task.into()),
        persistence_id: Some(format!(
            "{}#{container_path}#53ab8732",
            app.trim_matches('/')
        )),
        container_path: Some(container_path.into()),
    }
}

fn request(method: &str, uri: &str, token: Option<&str>) -> Request {
    let mut headers = hyper::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            hyper::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    Request {
        method: method.parse().unwrap(),
        uri: uri.parse().unwrap(),
        headers,
        body: Bytes::new(),
        upload: None,
    }
}

async fn call(f: &Fixture, method: &str, uri: &str) -> (u16, Value) {
    let reply = Arc::clone(&f.admin)
        .handle(request(method, uri, Some(SECRET)))
        .await;
    let body = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&reply.body).into()));
    (reply.status, body)
}

fn ids(list: &Value) -> Vec<String> {
    list["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tokens_compare_in_full() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"", b"a"));
    assert!(Token::new("  ").is_err());
    assert!(Token::new("a b").is_err());
    assert_eq!(
        format!("{:?}", Token::new(SECRET).unwrap()),
        "Token(<redacted>)"
    );
}

#[tokio::test]
async fn without_the_token_nothing_is_shown_or_changed() {
    let f = fixture(Some(SECRET));
    create(&f.engine, "db", "fast", Owner::default());
    let wrong_same_length = "s3cret-token-0123456780";
    let mut basic = request("DELETE", "/v1/volumes/db?wipe=true", None);
    basic.headers.insert(
        hyper::header::AUTHORIZATION,
        format!("Basic {SECRET}").parse().unwrap(),
    );
    let attempts = [
        request("DELETE", "/v1/volumes/db?wipe=true", None),
        request(
            "DELETE",
            "/v1/volumes/db?wipe=true",
            Some(wrong_same_length),
        ),
        request("DELETE", "/v1/volumes/db?wipe=true", Some("short")),
        request("DELETE", "/v2/apps/a/tasks/t?wipe=true", None),
        request("GET", "/v1/volumes", Some("")),
        request("GET", "/metrics", None),
        request("GET", "/no/such/route", None),
        basic,
    ];
    for r in attempts {
        let uri = r.uri.to_string();
        let reply = Arc::clone(&f.admin).handle(r).await;
        assert_eq!(reply.status, 401, "{uri}");
        assert_eq!(
            reply.headers,
            vec![("www-authenticate", "Bearer realm=\"berth\"".to_string())]
        );
        let body = String::from_utf8_lossy(&reply.body);
        assert!(!body.contains(SECRET), "{body}");
        assert!(body.contains("Authorization: Bearer"), "{body}");
    }
    assert!(f.engine.get(&name("db")).is_ok(), "nothing was deleted");
    assert_eq!(f.engine.metrics().ops.get(&("admin", "wipe")), None);

    let lowercase_scheme = {
        let mut r = request("GET", "/v1/volumes", None);
        r.headers.insert(
            hyper::header::AUTHORIZATION,
            format!("bearer {SECRET}").parse().unwrap(),
        );
        r
    };
    assert_eq!(
        Arc::clone(&f.admin).handle(lowercase_scheme).await.status,
        200
    );
    // The health check needs no token and shows nothing but its verdict.
    let health = Arc::clone(&f.admin)
        .handle(request("GET", "/healthz", None))
        .await;
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok\n"[..]));
}

#[tokio::test]
async fn without_a_configured_token_the_socket_is_open() {
    let f = fixture(None);
    create(&f.engine, "db", "fast", Owner::default());
    let reply = Arc::clone(&f.admin)
        .handle(request("GET", "/v1/volumes", None))
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn volumes_list_with_filters_and_show_their_owner_state_and_usage() {
    let f = fixture(Some(SECRET));
    create(
        &f.engine,
        "pg",
        "fast",
        owner("/prod/db", "prod_db.t1", "pgdata"),
    );
    create(
        &f.engine,
        "logs",
        "keep",
        owner("/prod/web", "prod_web.t2", "logs"),
    );
    create(&f.engine, "scratch", "fast", Owner::default());
    f.engine.publish(CSI, &name("pg"), bind("/t/pg")).unwrap();
    f.engine
        .publish(CSI, &name("logs"), bind("/t/logs"))
        .unwrap();
    f.engine
        .unpublish(CSI, &name("logs"), &bind("/t/logs"))
        .unwrap();

    let (status, all) = call(&f, "GET", "/v1/volumes").await;
    assert_eq!(status, 200);
    assert_eq!(all["node"], "node-1");
    assert_eq!(ids(&all), ["logs", "pg", "scratch"]);

    let cases = [
        ("state=attached", vec!["pg"]),
        ("state=detached", vec!["logs"]),
        ("state=reserved", vec!["scratch"]),
        ("pool=keep", vec!["logs"]),
        ("task=prod_db.t1", vec!["pg"]),
        ("app=%2Fprod%2Fweb", vec!["logs"]),
        ("label=team%3Dteam-scratch", vec!["scratch"]),
        ("pool=fast&state=reserved", vec!["scratch"]),
        ("pool=nope", vec![]),
    ];
    for (query, want) in cases {
        let (status, list) = call(&f, "GET", &format!("/v1/volumes?{query}")).await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(ids(&list), want, "{query}");
    }
    for (query, needle) in [
        ("state=gone", "state"),
        ("colour=red", "colour"),
        ("label=novalue", "KEY=VALUE"),
        ("pool=a&pool=b", "twice"),
        ("pool=%zz", "percent"),
    ] {
        let (status, body) = call(&f, "GET", &format!("/v1/volumes?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
        assert_eq!(body["kind"], "invalid_input");
    }

    let (status, pg) = call(&f, "GET", "/v1/volumes/pg").await;
    assert_eq!(status, 200);
    assert_eq!(pg["state"], "attached");
    assert_eq!(pg["size_bytes"], GIB);
    assert_eq!(pg["pool"], "fast");
    assert_eq!(pg["kind"], "root");
    assert_eq!(pg["backend"], "loopfs");
    assert_eq!(pg["owner"]["task_id"], "prod_db.t1");
    assert_eq!(pg["owner"]["persistence_id"], "prod/db#pgdata#53ab8732");
    assert_eq!(pg["owner"]["framework_id"], "marathon-fw");
    assert_eq!(pg["labels"]["team"], "team-pg");
    assert_eq!(pg["publications"][0]["path"], "/t/pg");
    assert_eq!(pg["publications"][0]["state"], "published");
    assert!(pg["usage"]["bytes_total"].as_u64().unwrap() > 0, "{pg}");
    assert!(pg["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(pg["attached_at"].is_string());
    let (_, logs) = call(&f, "GET", "/v1/volumes/logs").await;
    assert_eq!(logs["state"], "detached");
    assert!(logs["detached_at"].is_string());
    assert_eq!(logs["reclaim"], "retain");

    let (status, missing) = call(&f, "GET", "/v1/volumes/ghost").await;
    assert_eq!((status, missing["kind"].as_str()), (404, Some("not_found")));
    assert!(missing["error"].as_str().unwrap().contains("ghost"));
    for bad in ["..", "a%2Fb", "%00x", &"a".repeat(300)] {
        let (status, body) = call(&f, "GET", &format!("/v1/volumes/{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = call(&f, "GET", "/v1/volumes/pg?verbose=1").await;
    assert_eq!(status, 400);
    let (status, _) = call(&f, "PUT", "/v1/volumes/pg").await;
    assert_eq!(status, 405);
    for (method, uri, allow) in [
        ("POST", "/metrics", "GET"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/v1/volumes", "GET"),
    ] {
        let reply = Arc::clone(&f.admin)
            .handle(request(method, uri, Some(SECRET)))
            .await;
        assert_eq!(reply.status, 405, "{method} {uri}");
        assert_eq!(reply.headers, vec![("allow", allow.to_string())]);
    }
    let (status, body) = call(&f, "GET", "/v1/nothing").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/v1/volumes"));
}

#[tokio::test]
async fn delete_follows_the_reclaim_policy_wipe_destroys_and_attached_is_refused() {
    let f = fixture(Some(SECRET));
    create(&f.engine, "busy", "fast", Owner::default());
    create(&f.engine, "kept", "keep", Owner::default());
    create(&f.engine, "gone", "keep", Owner::default());
    f.engine
        .publish(CSI, &name("busy"), bind("/t/busy"))
        .unwrap();

    for uri in ["/v1/volumes/busy", "/v1/volumes/busy?wipe=true"] {
        let (status, body) = call(&f, "DELETE", uri).await;
        assert_eq!(status, 409, "{uri}");
        assert_eq!(body["kind"], "in_use");
        assert!(
            body["error"].as_str().unwrap().contains("/t/busy"),
            "{body}"
        );
    }
    assert!(f.engine.get(&name("busy")).is_ok());

    let (status, body) = call(&f, "DELETE", "/v1/volumes/kept?wipe=maybe").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("wipe"), "{body}");
    let (status, body) = call(&f, "DELETE", "/v1/volumes/kept?force=true").await;
    assert_eq!(status, 400, "{body}");
    assert!(f.engine.get(&name("kept")).is_ok());

    let (status, body) = call(&f, "DELETE", "/v1/volumes/kept").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], "retained");
    assert_eq!(body["wiped"], false);
    let (status, body) = call(&f, "DELETE", "/v1/volumes/gone?wipe=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], "destroyed");
    assert!(body["removed"]["dirs"].is_u64(), "{body}");
    let (status, _) = call(&f, "DELETE", "/v1/volumes/gone?wipe=true").await;
    assert_eq!(status, 404);
    let ops = f.engine.metrics().ops;
    assert_eq!(ops[&("admin", "wipe")].count, 3, "two refused, one done");
    assert_eq!(ops[&("admin", "delete")].count, 2);
}

#[tokio::test]
async fn a_wipe_of_a_volume_whose_directory_vanished_succeeds_and_says_its_count_is_partial() {
    let (f, engine) = fixture_with_host(Some(SECRET));
    create(&f.engine, "vanished", "keep", Owner::default());
    let dir = f.engine.get(&name("vanished")).unwrap().placement.dir;
    engine.host().drop_dir(&dir);
    let (status, body) = call(&f, "DELETE", "/v1/volumes/vanished?wipe=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["removed"]["incomplete"], "its directory /pool/keep/vanished was already gone",
        "{body}"
    );
    assert!(f.engine.get(&name("vanished")).is_err());
    // A whole count carries no such field.
    create(&f.engine, "whole", "keep", Owner::default());
    let (status, body) = call(&f, "DELETE", "/v1/volumes/whole?wipe=true").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["removed"].get("incomplete").is_none(), "{body}");
}

#[tokio::test]
async fn marathon_routes_list_and_release_a_tasks_volumes() {
    let f = fixture(Some(SECRET));
    create(
        &f.engine,
        "pg-data",
        "fast",
        owner("/prod/db", "prod_db.t1", "pgdata"),
    );
    create(
        &f.engine,
        "pg-wal",
        "fast",
        owner("prod/db", "prod_db.t1", "pgwal"),
    );
    create(
        &f.engine,
        "pg-2",
        "fast",
        owner("/prod/db", "prod_db.t2", "pgdata"),
    );
    create(
        &f.engine,
        "web",
        "fast",
        owner("/prod/web", "prod_web.t9", "www"),
    );
    f.engine
        .publish(CSI, &name("pg-2"), bind("/t/pg2"))
        .unwrap();

    let (status, body) = call(&f, "GET", "/v2/apps/prod/db/tasks").await;
    assert_eq!(status, 200, "{body}");
    let tasks = body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["id"], "prod_db.t1");
    assert_eq!(tasks[0]["appId"], "/prod/db");
    assert_eq!(tasks[0]["host"], "node-1");
    let local = tasks[0]["localVolumes"].as_array().unwrap();
    assert_eq!(local.len(), 2);
    assert_eq!(local[0]["containerPath"], "pgdata");
    assert_eq!(local[0]["persistenceId"], "prod/db#pgdata#53ab8732");
    assert_eq!(local[1]["containerPath"], "pgwal");
    let (_, none) = call(&f, "GET", "/v2/apps/other/tasks").await;
    assert_eq!(none["tasks"], serde_json::json!([]));

    let (status, body) = call(&f, "DELETE", "/v2/apps/prod/db/tasks/prod_db.t2?wipe=true").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("pg-2"), "{body}");
    assert!(f.engine.get(&name("pg-2")).is_ok());
    let (status, _) = call(&f, "DELETE", "/v2/apps/prod/db/tasks/prod_db.t1?scale=true").await;
    assert_eq!(status, 400);
    let (status, _) = call(&f, "DELETE", "/v2/apps/prod/db/tasks/nope?wipe=true").await;
    assert_eq!(status, 404);

    let (status, body) = call(
        &f,
        "DELETE",
        "/v2/apps/prod/db/tasks/prod_db.t1?wipe=true&force=true",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task"]["id"], "prod_db.t1");
    assert_eq!(body["wiped"], true);
    assert_eq!(body["volumes"].as_array().unwrap().len(), 2);
    for gone in ["pg-data", "pg-wal"] {
        assert!(f.engine.get(&name(gone)).is_err(), "{gone}");
    }
    for kept in ["pg-2", "web"] {
        assert!(f.engine.get(&name(kept)).is_ok(), "{kept}");
    }
    let (status, _) = call(&f, "POST", "/v2/apps/prod/db/tasks").await;
    assert_eq!(status, 405);
    let (status, _) = call(&f, "GET", "/v2/apps/tasks").await;
    assert_eq!(status, 404, "an app id is needed");
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let f = fixture(Some(SECRET));
    create(&f.engine, "a", "fast", Owner::default());
    create(&f.engine, "b", "keep", Owner::default());
    f.engine.publish(CSI, &name("a"), bind("/t/a")).unwrap();
    let _ = f.engine.create(
        CSI,
        CreateRequest {
            name: name("huge"),
            spec: VolumeSpec {
                size: Some(1000 * GIB),
                ..VolumeSpec::default()
            },
            owner: Owner::default(),
        },
    );
    let reply = Arc::clone(&f.admin)
        .handle(request("GET", "/metrics", Some(SECRET)))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, prometheus::CONTENT_TYPE);
    let text = String::from_utf8(reply.body).unwrap();
    for line in text.lines() {
        let parsed = prometheus_parse::LineInfo::parse(line);
        assert!(
            !matches!(
                parsed,
                prometheus_parse::LineInfo::Ignored | prometheus_parse::LineInfo::Empty
            ),
            "unparsable line {line:?}"
        );
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let find = |metric: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| s.value.clone())
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"))
    };
    use prometheus_parse::Value as V;
    assert_eq!(
        find("berth_volumes", &[("pool", "fast"), ("state", "attached")]),
        V::Gauge(1.0)
    );
    assert_eq!(
        find("berth_volumes", &[("pool", "keep"), ("state", "reserved")]),
        V::Gauge(1.0)
    );
    assert_eq!(
        find("berth_volumes", &[("pool", "keep"), ("state", "deleting")]),
        V::Gauge(0.0)
    );
    assert_eq!(
        find("berth_pool_capacity_bytes", &[("pool", "fast")]),
        V::Gauge((10 * GIB) as f64)
    );
    assert_eq!(
        find("berth_pool_reserved_bytes", &[("pool", "keep")]),
        V::Gauge(GIB as f64)
    );
    // The fake host measures plain directories by their inodes, loop filesystems as empty.
    assert!(matches!(find("berth_pool_used_bytes", &[("pool", "keep")]), V::Gauge(b) if b > 0.0));
    assert_eq!(
        find("berth_pool_used_bytes", &[("pool", "fast")]),
        V::Gauge(0.0)
    );
    assert_eq!(
        find(
            "berth_operations_total",
            &[("frontend", "csi"), ("op", "create")]
        ),
        V::Counter(3.0)
    );
    assert_eq!(
        find(
            "berth_operation_errors_total",
            &[
                ("frontend", "csi"),
                ("op", "create"),
                ("kind", "no_capacity")
            ]
        ),
        V::Counter(1.0)
    );
    let V::Histogram(buckets) = find(
        "berth_operation_duration_seconds",
        &[("frontend", "csi"), ("op", "create")],
    ) else {
        panic!("not a histogram");
    };
    assert_eq!(
        buckets.len(),
        crate::engine::metrics::LATENCY_BUCKETS.len() + 1
    );
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative"
    );
    let last = buckets.last().unwrap();
    assert!(
        last.less_than.is_infinite() && last.count == 3.0,
        "{last:?}"
    );
    assert!(scrape.docs.contains_key("berth_pool_used_bytes"));
    assert!(
        text.contains("berth_operation_duration_seconds_count{frontend=\"csi\",op=\"create\"} 3")
    );
}

#[tokio::test]
async fn a_pending_reservation_is_swept_by_the_daemon_and_can_be_retried() {
    let f = fixture(Some(SECRET));
    let attempt = || CreateRequest {
        name: name("resident"),
        spec: VolumeSpec {
            size: Some(GIB),
            ..VolumeSpec::default()
        },
        owner: owner("/prod/db", "prod_db.t1", "pgdata"),
    };
    let v = f
        .engine
        .create_pending(CSI, attempt(), Duration::from_millis(300))
        .unwrap();
    let (_, shown) = call(&f, "GET", "/v1/volumes/resident").await;
    assert_eq!(shown["state"], "reserved");
    assert!(shown["pending_until"].is_string(), "{shown}");
    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = tokio::spawn(crate::server::sweep_pending_reservations(
        Arc::clone(&f.engine),
        stop_rx,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = call(&f, "GET", "/v1/volumes/resident").await;
        if status == 404 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never rolled back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(crate::engine::now_ms() >= v.pending_until.unwrap());
    let (_, cap) = call(&f, "GET", "/metrics").await;
    assert!(
        cap.as_str()
            .unwrap()
            .contains("berth_operations_total{frontend=\"internal\",op=\"expire\"} 1")
    );
    // The retry attaches in time and stays.
    f.engine
        .create_pending(CSI, attempt(), Duration::from_millis(300))
        .unwrap();
    f.engine
        .publish(CSI, &name("resident"), bind("/t/r"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, shown) = call(&f, "GET", "/v1/volumes/resident").await;
    assert_eq!(status, 200);
    assert_eq!(shown["state"], "attached");
    assert!(shown.get("pending_until").is_none(), "{shown}");
    stop_tx.send(true).unwrap();
    sweeper.await.unwrap().unwrap();
}

/// Serves `f`'s admin API (token [`SECRET`]) on `admin.sock` in the returned directory, until
/// `true` is sent or the servers are dropped.
fn serve_socket(f: &Fixture) -> (tempfile::TempDir, watch::Sender<bool>, Servers) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.listen.admin = dir.path().join("admin.sock").display().to_string();
    config.admin.token = Some(SECRET.into());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Servers::new();
    start(&config, &f.engine, 0o600, &stop_rx, &mut servers).unwrap();
    (dir, stop_tx, servers)
}

/// Runs a CLI command against `endpoint`; returns (result, stdout, stderr).
fn cli_run(
    command: VolumeCommand,
    endpoint: &str,
    token: Option<&str>,
    answer: &str,
    interactive: bool,
) -> (Result<(), cli::CliError>, String, String) {
    let client = cli::Client::new(endpoint, token).unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut input = std::io::Cursor::new(answer.as_bytes().to_vec());
    let result = cli::run_on(
        command,
        &client,
        &mut Console {
            out: &mut out,
            err: &mut err,
            input: &mut input,
            interactive,
            progress: false,
        },
    );
    (
        result,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn ls(output: OutputFormat) -> VolumeCommand {
    VolumeCommand::Ls {
        state: None,
        pool: None,
        app: None,
        task: None,
        label: None,
        frontend: None,
        output,
        quiet: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_to_the_socket_started_by_start() {
    let f = fixture(None);
    let (dir, stop_tx, mut servers) = serve_socket(&f);
    let socket = dir.path().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    create(
        &f.engine,
        "pg",
        "fast",
        owner("/prod/db", "prod_db.t1", "pgdata"),
    );
    create(&f.engine, "scratch", "keep", Owner::default());
    let endpoint = socket.display().to_string();

    let out = tokio::task::spawn_blocking(move || {
        let no_token = cli_run(ls(OutputFormat::Table), &endpoint, None, "", false);
        let table = cli_run(ls(OutputFormat::Table), &endpoint, Some(SECRET), "", false);
        let json = cli_run(ls(OutputFormat::Json), &endpoint, Some(SECRET), "", false);
        let wipe = |yes, interactive, answer: &str| {
            cli_run(
                VolumeCommand::Wipe {
                    id: "scratch".into(),
                    yes,
                },
                &endpoint,
                Some(SECRET),
                answer,
                interactive,
            )
        };
        let refused = wipe(false, false, "");
        let declined = wipe(false, true, "n\n");
        let confirmed = wipe(false, true, "y\n");
        let inspect = cli_run(
            VolumeCommand::Inspect { id: "pg".into() },
            &endpoint,
            Some(SECRET),
            "",
            false,
        );
        let bad_id = cli_run(
            VolumeCommand::Rm {
                id: "../etc".into(),
            },
            &endpoint,
            Some(SECRET),
            "",
            false,
        );
        (
            no_token, table, json, refused, declined, confirmed, inspect, bad_id,
        )
    })
    .await
    .unwrap();
    let (no_token, table, json, refused, declined, confirmed, inspect, bad_id) = out;

    let e = no_token.0.unwrap_err().to_string();
    assert!(e.contains("401"), "{e}");

    table.0.unwrap();
    let lines: Vec<&str> = table.1.lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.1);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATE",
            "SIZE",
            "USED",
            "POOL",
            "KIND",
            "FRONTEND",
            "OWNER/TASK",
            "AGE"
        ]
    );
    let pg: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&pg[..3], ["pg", "reserved", "1GiB"]);
    assert_eq!(&pg[4..8], ["fast", "root", "csi", "prod_db.t1"]);
    assert!(pg[8].ends_with('s'), "{}", lines[1]);
    let scratch: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(scratch[7], "-");
    // Columns line up: every cell of a column starts where its header does.
    let state_col = lines[0].find("STATE").unwrap();
    assert_eq!(lines[1].find("reserved"), Some(state_col));

    json.0.unwrap();
    let parsed: Vec<views::VolumeView> = serde_json::from_str(&json.1).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].id, "pg");
    assert_eq!(parsed[0].owner.task_id.as_deref(), Some("prod_db.t1"));
    assert_eq!(parsed[0].frontend, OwnerFrontend::Csi);

    let e = refused.0.unwrap_err().to_string();
    assert!(e.contains("--yes") && e.contains("scratch"), "{e}");
    assert!(matches!(declined.0, Err(cli::CliError::Declined(_))));
    assert!(
        declined.2.contains("Wipe volume scratch ("),
        "{}",
        declined.2
    );
    assert!(declined.2.contains("This destroys its data. [y/N]"));
    confirmed.0.unwrap();
    assert!(
        confirmed.1.starts_with("wiped scratch: removed"),
        "{}",
        confirmed.1
    );
    assert!(f.engine.get(&name("scratch")).is_err());

    inspect.0.unwrap();
    let shown: Value = serde_json::from_str(&inspect.1).unwrap();
    assert_eq!(shown["id"], "pg");
    let e = bad_id.0.unwrap_err().to_string();
    assert!(e.contains("invalid volume name"), "{e}");

    stop_tx.send(true).unwrap();
    while servers.join_next().await.is_some() {}
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

#[test]
fn refusals_are_logged_at_most_once_per_period_with_a_count() {
    let r = Refusals::default();
    let get = hyper::Method::GET;
    r.note(&get, "/v1/volumes");
    let first = r.state.lock().unwrap().0;
    assert!(first.is_some());
    for _ in 0..5 {
        r.note(&get, "/v1/volumes");
    }
    let (last, suppressed) = *r.state.lock().unwrap();
    assert_eq!((last, suppressed), (first, 5), "the next report will say 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_restores_over_the_api_and_the_cli() {
    let f = fixture(Some(SECRET));
    create(&f.engine, "pg", "fast", Owner::default());
    // Authenticated like every other route.
    let refused = Arc::clone(&f.admin)
        .handle(request("POST", "/v1/volumes/pg/snapshots/s1", None))
        .await;
    assert_eq!(refused.status, 401);
    assert!(f.engine.list_snapshots(None).is_empty());

    let (status, taken) = call(&f, "POST", "/v1/volumes/pg/snapshots/s1").await;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(taken["id"], "s1");
    assert_eq!(taken["volume"], "pg");
    assert_eq!(taken["size_bytes"], GIB);
    assert_eq!(
        call(&f, "POST", "/v1/volumes/pg/snapshots/s1").await.1,
        taken
    );
    let (status, listed) = call(&f, "GET", "/v1/snapshots?volume=pg").await;
    assert_eq!((status, listed.as_array().unwrap().len()), (200, 1));
    assert_eq!(
        call(&f, "GET", "/v1/snapshots?volume=other").await.1,
        Value::Array(vec![])
    );
    assert_eq!(call(&f, "GET", "/v1/snapshots/s1").await.1, taken);
    assert_eq!(call(&f, "GET", "/v1/snapshots/nope").await.0, 404);
    assert_eq!(call(&f, "GET", "/v1/snapshots?colour=red").await.0, 400);
    assert_eq!(
        call(&f, "POST", "/v1/volumes/nope/snapshots/s2").await.0,
        404
    );
    assert_eq!(call(&f, "GET", "/v1/volumes/pg/snapshots/s1").await.0, 405);

    let (status, restored) = call(&f, "POST", "/v1/snapshots/s1/restore/pg2").await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["id"], "pg2");
    let v = f.engine.get(&name("pg2")).unwrap();
    assert_eq!(v.spec.snapshot, Some(name("s1")));
    assert_eq!(v.size, Some(GIB));
    assert_eq!(
        call(&f, "POST", "/v1/snapshots/nope/restore/pg3").await.0,
        404
    );

    // The same through the CLI on a real socket.
    let (dir, stop_tx, _servers) = serve_socket(&f);
    let socket = dir.path().join("admin.sock");
    let endpoint = socket.display().to_string();
    let outputs = tokio::task::spawn_blocking(move || {
        let run = |c| cli_run(c, &endpoint, Some(SECRET), "", false);
        vec![
            run(VolumeCommand::Snapshot {
                id: "pg".into(),
                snapshot: Some("s2".into()),
            }),
            run(VolumeCommand::Snapshots {
                id: Some("pg".into()),
            }),
            run(VolumeCommand::Restore {
                snapshot: "s2".into(),
                new_name: "pg3".into(),
            }),
            run(VolumeCommand::RmSnapshot {
                snapshot: "s2".into(),
            }),
            run(VolumeCommand::Snapshot {
                id: "nope".into(),
                snapshot: None,
            }),
        ]
    })
    .await
    .unwrap();
    assert_eq!(outputs[0].1, "s2\n", "{:?}", outputs[0]);
    let listed: Value = serde_json::from_str(&outputs[1].1).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(outputs[2].1, "pg3\n", "{:?}", outputs[2]);
    assert!(f.engine.get(&name("pg3")).is_ok());
    assert_eq!(outputs[3].1, "s2\n", "{:?}", outputs[3]);
    assert!(f.engine.get_snapshot(&name("s2")).is_err());
    let failed = outputs[4].0.as_ref().unwrap_err().to_string();
    assert!(failed.contains("nope"), "{failed}");
    stop_tx.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_metrics_and_health_and_nothing_else() {
    let f = fixture(Some(SECRET));
    create(&f.engine, "keep", "fast", Owner::default());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = Config::default();
    config.listen.admin = String::new();
    config.listen.metrics_tcp = Some(format!("127.0.0.1:{port}"));
    config.admin.token = Some(SECRET.into());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Servers::new();
    start(&config, &f.engine, 0o600, &stop_rx, &mut servers).unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let answers = tokio::task::spawn_blocking(move || {
        // No token: Prometheus scrapes without one.
        let client = cli::Client::new(&endpoint, None).unwrap();
        [
            ("GET", "/metrics"),
            ("GET", "/healthz"),
            ("GET", "/v1/volumes"),
            ("DELETE", "/v1/volumes/keep?wipe=true"),
            ("GET", "/v2/apps/x/tasks"),
            ("POST", "/metrics"),
        ]
        .map(|(method, path)| {
            let r = client.call(method, path).unwrap();
            (r.status, String::from_utf8_lossy(&r.body).into_owned())
        })
    })
    .await
    .unwrap();
    assert_eq!(answers[0].0, 200);
    assert!(
        answers[0].1.contains("berth_volumes{pool="),
        "{}",
        answers[0].1
    );
    assert_eq!(answers[1].0, 200);
    for (status, body) in &answers[2..5] {
        assert_eq!(*status, 404, "{body}");
        assert!(body.contains("serves only /metrics and /healthz"), "{body}");
    }
    assert_eq!(answers[5].0, 405);
    assert!(f.engine.get(&name("keep")).is_ok(), "nothing deleted");
    stop_tx.send(true).unwrap();
}

#[tokio::test]
async fn a_handover_is_refused_on_bad_input_or_while_attached_and_then_changes_only_the_owner() {
    let f = fixture(Some(SECRET));
    create(&f.engine, "db", "fast", Owner::default());
    f.engine.publish(CSI, &name("db"), bind("/pod/db")).unwrap();
    let before = f.engine.get(&name("db")).unwrap();

    let unauthenticated = Arc::clone(&f.admin)
        .handle(request("POST", "/v1/volumes/db/handover?to=docker", None))
        .await;
    assert_eq!(unauthenticated.status, 401);
    for (method, uri, status, says) in [
        (
            "POST",
            "/v1/volumes/db/handover",
            400,
            "to=csi, to=docker or to=mesos",
        ),
        (
            "POST",
            "/v1/volumes/db/handover?to=k8s",
            400,
            "not a front-end",
        ),
        (
            "POST",
            "/v1/volumes/db/handover?to=csi&bogus=1",
            400,
            "unknown query parameter",
        ),
        (
            "POST",
            "/v1/volumes/db/handover?to=csi&storage_class=Fast_SSD",
            400,
            "storage_class",
        ),
        (
            "POST",
            "/v1/volumes/db/handover?to=csi&pv_name=UPPER",
            400,
            "pv_name",
        ),
        (
            "POST",
            "/v1/volumes/db/handover?to=csi&labels=app",
            400,
            "not KEY=VALUE",
        ),
        (
            "POST",
            "/v1/volumes/db/handover?to=csi&labels=a%20b=c",
            400,
            "label",
        ),
        ("GET", "/v1/volumes/db/handover?to=csi", 405, "POST"),
        (
            "POST",
            "/v1/volumes/nothing/handover?to=csi",
            404,
            "nothing",
        ),
        (
            "POST",
            "/v1/volumes/db/handover?to=docker",
            409,
            "is attached (mounted at /pod/db)",
        ),
    ] {
        let (got, body) = call(&f, method, uri).await;
        assert_eq!(got, status, "{method} {uri}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{method} {uri}: {error}");
        assert_eq!(
            f.engine.get(&name("db")).unwrap(),
            before,
            "{uri} changed nothing"
        );
    }

    f.engine
        .unpublish(CSI, &name("db"), &bind("/pod/db"))
        .unwrap();
    let (status, moved) = call(&f, "POST", "/v1/volumes/db/handover?to=docker").await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(
        (moved["from"].as_str(), moved["volume"]["frontend"].as_str()),
        (Some("csi"), Some("docker"))
    );
    assert!(moved.get("persistent_volume").is_none(), "{moved}");
    let (status, back) = call(
        &f,
        "POST",
        "/v1/volumes/db/handover?to=csi&storage_class=fast&labels=app%3Ddb,tier%3Dsql",
    )
    .await;
    assert_eq!(status, 200, "{back}");
    let pv = &back["persistent_volume"];
    assert_eq!(
        pv["metadata"]["labels"],
        serde_json::json!({"team": "team-db", "app": "db", "tier": "sql"}),
        "{pv:#}"
    );
    assert_eq!(pv["spec"]["capacity"]["storage"], GIB.to_string());
    assert_eq!(pv["spec"]["storageClassName"], "fast");
    assert_eq!(
        pv["spec"]["csi"]["driver"],
        crate::config::DEFAULT_DRIVER_NAME
    );
    assert_eq!(pv["spec"]["csi"]["volumeHandle"], "db");
    let after = f.engine.get(&name("db")).unwrap();
    assert_eq!(after.frontend, OwnerFrontend::Csi);
    assert_eq!(
        (after.placement, after.size, after.spec),
        (before.placement, before.size, before.spec)
    );
}
