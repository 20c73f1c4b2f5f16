//! Every refused request shows in `/metrics` with its front-end and reason (issue 18): a
//! batch of bad CSI requests over the real CSI socket and bad Mesos hook calls over the real
//! admin socket, then `berth_operation_errors_total` read back from the same daemon. Refusals
//! made by a front-end before the engine and refusals made by the engine are each counted
//! once. Every metric family served is listed in the README.

#[path = "support/csi_daemon.rs"]
mod csi_daemon;
#[path = "support/harness/mod.rs"]
mod harness;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use berth::csi::proto::*;
use csi_daemon::Daemon;
use tonic::Code;

const GIB: i64 = 1 << 30;

fn mount() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

fn create(name: &str, required: i64, parameters: &[(&str, &str)]) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount()],
        parameters: parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

/// One HTTP/1.1 request on the admin socket: status and body.
fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("the admin socket answers");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of `berth_operation_errors_total{frontend,op,kind}` (0 when absent).
fn errors(metrics: &str, frontend: &str, op: &str, kind: &str) -> u64 {
    let labels = format!("{{frontend=\"{frontend}\",op=\"{op}\",kind=\"{kind}\"}}");
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("berth_operation_errors_total")?
                .strip_prefix(&labels)
        })
        .map(|v| v.trim().parse().expect("a count"))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_csi_requests_and_bad_mesos_hook_calls_are_counted_by_reason_and_front_end() {
    harness::require_root();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let daemon = Daemon::start_with_admin(&format!(
        "\n[mesos]\nwork_dir = \"{}\"\n",
        work.path().display()
    ));
    let mut c = daemon.clients().await;

    // CSI, refused before the engine: three bad inputs to CreateVolume, one each to
    // DeleteVolume and NodeGetVolumeStats.
    for request in [
        create("", GIB, &[]),
        create("Bad Name!", GIB, &[]),
        create("fine", GIB, &[("no-such-parameter", "1")]),
    ] {
        let status = c.controller.create_volume(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let status = c
        .controller
        .delete_volume(DeleteVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = c
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: String::new(),
            volume_path: "/x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A lookup the engine refuses (no such volume), twice.
    for _ in 0..2 {
        let status = c
            .node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: "ghost".into(),
                staging_target_path: daemon.k8s("staging/ghost").display().to_string(),
                target_path: daemon.k8s("target/ghost").display().to_string(),
                volume_capability: Some(mount()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    // Refused by the engine's own operation (counted there, once): more than the pool holds.
    let status = c
        .controller
        .create_volume(create("huge", 1 << 50, &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Mesos hook: a body that is not JSON (twice), an id with a slash, a definition that
    // breaks Marathon's rules, and the wrong method.
    let admin = daemon.admin_socket();
    let sandbox = work.path().join("sandbox");
    let sandbox = sandbox.display();
    for _ in 0..2 {
        let (status, body) = http(&admin, "POST", "/v1/mesos/prepare", "{not json");
        assert_eq!(status, 400, "{body}");
    }
    let (status, body) = http(
        &admin,
        "POST",
        "/v1/mesos/cleanup",
        &format!(r#"{{"task_id":"a/b","layout":{{"sandbox":"{sandbox}"}}}}"#),
    );
    assert_eq!(status, 400, "{body}");
    let definition = r#"{"id":"/db","container":{"volumes":[{"containerPath":"data","mode":"RW","persistent":{"size":0}}]}}"#;
    let (status, body) = http(
        &admin,
        "POST",
        "/v1/mesos/prepare",
        &format!(
            r#"{{"definition":{definition},"task_id":"db.1","layout":{{"sandbox":"{sandbox}"}}}}"#
        ),
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = http(&admin, "GET", "/v1/mesos/cleanup", "");
    assert_eq!(status, 405, "{body}");

    let (status, metrics) = http(&admin, "GET", "/metrics", "");
    assert_eq!(status, 200, "{metrics}");
    // The README's table lists every metric family the daemon serves.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for family in metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
    {
        assert!(
            readme.contains(&format!("`{family}`")),
            "README does not list {family}"
        );
    }
    let expected = [
        ("csi", "create", "invalid_input", 3),
        ("csi", "delete", "invalid_input", 1),
        ("csi", "usage", "invalid_input", 1),
        ("csi", "publish", "not_found", 2),
        ("csi", "create", "no_capacity", 1),
        ("mesos", "publish", "malformed_request", 2),
        ("mesos", "unpublish", "invalid_input", 1),
        ("mesos", "publish", "invalid_definition", 1),
        ("mesos", "unpublish", "method_not_allowed", 1),
    ];
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|&(frontend, op, kind, want)| {
            let got = errors(&metrics, frontend, op, kind);
            (got != want).then(|| format!("{frontend} {op} {kind}: {got}, expected {want}"))
        })
        .collect();
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("berth_operation_errors_total{"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{wrong:#?}\ncounted:\n{}",
        counted.join("\n")
    );
    let total: u64 = expected.iter().map(|e| e.3).sum();
    let all: u64 = counted
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(all, total, "nothing else counted:\n{}", counted.join("\n"));
}
