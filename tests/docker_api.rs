//! The Docker volume plugin API of the real `berth` binary, as plain HTTP on its unix
//! socket (what `dvdcli` and dockerd send): every endpoint, idempotency, refusals that leave
//! nothing behind, body limits, slow clients, restarts and the socket's life cycle.
//! Needs root (volumes are loop-mounted filesystems).

#[path = "support/docker_plugin.rs"]
mod docker_plugin;
#[path = "support/harness/mod.rs"]
mod harness;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use docker_plugin::{Berth, assert_nothing_mounted_under, read_response, request};
use serde_json::{Value, json};

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

fn mountpoint(reply: &Value) -> PathBuf {
    PathBuf::from(reply["Mountpoint"].as_str().expect("a Mountpoint"))
}

#[test]
fn the_dvdcli_flow_works_end_to_end() {
    let berth = Berth::start();
    let activated = berth.ok("/Plugin.Activate", json!(null));
    assert_eq!(activated, json!({"Implements": ["VolumeDriver"]}));
    let caps = berth.ok("/VolumeDriver.Capabilities", json!({}));
    assert_eq!(caps, json!({"Capabilities": {"Scope": "local"}}));

    berth.ok(
        "/VolumeDriver.Create",
        json!({"Name": "dvd", "Opts": {"size": "16MiB", "mode": "0770", "uid": "123", "gid": "456"}}),
    );
    // dvdcli mounts without an ID, then asks Get for the path.
    let mounted = mountpoint(&berth.ok("/VolumeDriver.Mount", json!({"Name": "dvd"})));
    let got = berth.ok("/VolumeDriver.Get", json!({"Name": "dvd"}));
    assert_eq!(mountpoint(&got["Volume"]), mounted);
    assert_eq!(
        mountpoint(&berth.ok("/VolumeDriver.Path", json!({"Name": "dvd"}))),
        mounted
    );

    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&mounted).unwrap();
    assert!(meta.is_dir());
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (123, 456, 0o770)
    );
    std::fs::write(mounted.join("hello"), b"world").unwrap();

    let status = &got["Volume"]["Status"];
    assert_eq!(status["state"], "attached");
    assert_eq!(status["size"], "16MiB");
    assert_eq!(status["sizeBytes"], 16 << 20);
    assert_eq!(status["backend"], "loopfs");
    assert_eq!(status["kind"], "root");
    assert_eq!(status["publishedTo"], json!(["reference \"docker\""]));
    let created = got["Volume"]["CreatedAt"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && created.contains('T'),
        "RFC 3339: {created}"
    );

    // The size is enforced: the volume's own filesystem fills up.
    let big = vec![0u8; 32 << 20];
    let mut file = std::fs::File::create(mounted.join("big")).unwrap();
    let error = file
        .write_all(&big)
        .and_then(|_| file.sync_all())
        .unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
    drop(file);
    std::fs::remove_file(mounted.join("big")).unwrap();
    let used =
        berth.ok("/VolumeDriver.Get", json!({"Name": "dvd"}))["Volume"]["Status"]["usedBytes"]
            .as_u64()
            .unwrap();
    assert!(used > 0 && used < 16 << 20, "usedBytes {used}");

    let (code, message) = berth.err("/VolumeDriver.Remove", json!({"Name": "dvd"}));
    assert_eq!(code, 409);
    assert!(message.contains("volume dvd is in use"), "{message}");
    assert_eq!(std::fs::read(mounted.join("hello")).unwrap(), b"world");

    berth.ok("/VolumeDriver.Unmount", json!({"Name": "dvd"}));
    let list = berth.ok("/VolumeDriver.List", json!({}));
    assert_eq!(list["Volumes"][0]["Name"], "dvd");
    assert_eq!(list["Volumes"][0]["Status"]["state"], "detached");
    berth.ok("/VolumeDriver.Remove", json!({"Name": "dvd"}));
    assert_eq!(
        berth.ok("/VolumeDriver.List", json!({}))["Volumes"],
        json!([])
    );
    assert!(!mounted.exists());
    assert_eq!(berth.pool_leftovers(), Vec::<PathBuf>::new());
    assert_nothing_mounted_under(&berth.pool());
}

#[test]
fn every_reply_is_json_of_the_plugin_content_type() {
    let berth = Berth::start();
    let (status, raw) = request(berth.socket(), "POST", "/VolumeDriver.List", &[], b"{}").unwrap();
    assert_eq!(status, 200);
    serde_json::from_slice::<Value>(&raw).unwrap();
    let mut stream = UnixStream::connect(berth.socket()).unwrap();
    stream
        .write_all(b"POST /VolumeDriver.Get HTTP/1.1\r\nHost: p\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"Name\":\"x\"}\n")
        .unwrap();
    let mut head = String::new();
    std::io::Read::read_to_string(&mut stream, &mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-type: {CONTENT_TYPE}")),
        "{head}"
    );
    assert!(head.contains(&format!(
        r#"{{"Err":"volume x not found; create it with `docker volume create --driver {} x`"}}"#,
        berth.driver()
    )));
}

#[test]
fn mounts_are_counted_per_caller_and_concurrent_mounts_all_succeed() {
    let berth = Berth::start();
    berth.ok(
        "/VolumeDriver.Create",
        json!({"Name": "shared", "Opts": {"size": "16MiB"}}),
    );
    let ids: Vec<String> = (0..8).map(|i| format!("{i:064x}")).collect();
    std::thread::scope(|s| {
        for id in &ids {
            let berth = &berth;
            s.spawn(move || berth.ok("/VolumeDriver.Mount", json!({"Name": "shared", "ID": id})));
        }
    });
    let status =
        berth.ok("/VolumeDriver.Get", json!({"Name": "shared"}))["Volume"]["Status"].clone();
    assert_eq!(
        status["publishedTo"].as_array().unwrap().len(),
        8,
        "{status}"
    );
    for (i, id) in ids.iter().enumerate() {
        berth.err("/VolumeDriver.Remove", json!({"Name": "shared"}));
        berth.ok("/VolumeDriver.Unmount", json!({"Name": "shared", "ID": id}));
        let state =
            berth.ok("/VolumeDriver.Get", json!({"Name": "shared"}))["Volume"]["Status"]["state"]
                .clone();
        let expected = if i + 1 == ids.len() {
            "detached"
        } else {
            "attached"
        };
        assert_eq!(state, expected, "after {} unmounts", i + 1);
    }
    berth.ok("/VolumeDriver.Remove", json!({"Name": "shared"}));
}

#[test]
fn create_is_idempotent_and_other_options_are_an_error() {
    let berth = Berth::start();
    let body = json!({"Name": "same", "Opts": {"size": "16MiB", "label.team": "db"}});
    berth.ok("/VolumeDriver.Create", body.clone());
    let file = mountpoint(&berth.ok("/VolumeDriver.Path", json!({"Name": "same"}))).join("keep");
    std::fs::write(&file, b"1").unwrap();
    berth.ok("/VolumeDriver.Create", body);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"1",
        "a repeated Create keeps the data"
    );
    let (code, message) = berth.err(
        "/VolumeDriver.Create",
        json!({"Name": "same", "Opts": {"size": "32MiB", "label.team": "db"}}),
    );
    assert_eq!(code, 409);
    assert!(
        message.contains("volume same already exists with different parameters (size)"),
        "{message}"
    );
    let status = berth.ok("/VolumeDriver.Get", json!({"Name": "same"}))["Volume"]["Status"].clone();
    assert_eq!(status["size"], "16MiB");
    assert_eq!(status["labels"], json!({"team": "db"}));
}

#[test]
fn bad_names_options_and_bodies_are_refused_and_leave_nothing() {
    let berth = Berth::start();
    let long = "a".repeat(300);
    let cases = [
        (json!({"Name": "../x"}), "invalid volume name \"../x\""),
        (json!({"Name": "a/b"}), "invalid volume name \"a/b\""),
        (
            json!({"Name": long}),
            "a name is at most 128 bytes, this one has 300",
        ),
        (
            json!({"Name": "v", "Opts": {"size": "-1"}}),
            "option \"size\" for volume v: \"-1\" is not a size",
        ),
        (
            json!({"Name": "v", "Opts": {"size": "lots"}}),
            "option \"size\" for volume v: \"lots\" is not a size",
        ),
        (
            json!({"Name": "v", "Opts": {"colour": "red"}}),
            "option \"colour\" for volume v: unknown key",
        ),
        (
            json!({"Name": "v", "Opts": {"type": "floppy"}}),
            "use root, path or mount",
        ),
        (
            json!({"Name": "v", "Opts": {"size": "1000TiB"}}),
            "volume v: no pool can hold it",
        ),
        (
            json!({"Name": "v", "Opts": {"profile": "gold"}}),
            "does not carry profile \"gold\"",
        ),
        (json!({"Name": 7}), "malformed VolumeDriver.Create request"),
    ];
    for (body, needle) in cases {
        let (code, message) = berth.err("/VolumeDriver.Create", body.clone());
        assert!(message.contains(needle), "{body}: {message}");
        assert!((400..600).contains(&code), "{body}: {code}");
    }
    for raw in ["{\"Name\":", "", "not json", "[]"] {
        let (code, message) = berth
            .try_post("/VolumeDriver.Create", raw)
            .map(|(c, v)| (c, v["Err"].as_str().unwrap_or_default().to_string()))
            .unwrap();
        assert_eq!(code, 400, "{raw:?}");
        assert!(
            message.starts_with("malformed VolumeDriver.Create request: "),
            "{message}"
        );
        assert!(message.contains("send JSON like"), "{message}");
    }
    for path in [
        "/VolumeDriver.Mount",
        "/VolumeDriver.Remove",
        "/VolumeDriver.Get",
    ] {
        let (code, message) = berth.err(path, json!({"Name": "../etc"}));
        assert_eq!(code, 400, "{path}");
        assert!(
            message.contains("invalid volume name \"../etc\""),
            "{message}"
        );
    }
    assert_eq!(
        berth.ok("/VolumeDriver.List", json!({}))["Volumes"],
        json!([])
    );
    assert_eq!(berth.pool_leftovers(), Vec::<PathBuf>::new());
    assert_nothing_mounted_under(&berth.pool());
    let beside_pool = berth.pool().parent().unwrap().join("x");
    assert!(!beside_pool.exists(), "../x escaped the pool");
}

#[test]
fn an_oversized_body_is_refused_and_the_server_keeps_serving() {
    let berth = Berth::start();
    let huge = format!(
        r#"{{"Name":"v","Opts":{{"label.big":"{}"}}}}"#,
        "x".repeat(1 << 20)
    );
    // The server answers after the first 64 KiB and closes; the rest of the write may fail.
    let mut stream = UnixStream::connect(berth.socket()).unwrap();
    let head = format!(
        "POST /VolumeDriver.Create HTTP/1.1\r\nHost: p\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        huge.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(huge.as_bytes());
    let (status, raw) = read_response(&mut stream)
        .unwrap_or_else(|e| panic!("the server should answer before closing: {e}"));
    assert_eq!(status, 413);
    let value: Value = serde_json::from_slice(&raw).unwrap();
    let message = value["Err"].as_str().unwrap();
    assert!(message.contains("larger than 65536 bytes"), "{message}");
    assert_eq!(
        berth.ok("/VolumeDriver.List", json!({}))["Volumes"],
        json!([])
    );
}

#[test]
fn a_slow_or_silent_client_does_not_stall_others() {
    let berth = Berth::start();
    berth.ok("/VolumeDriver.Create", json!({"Name": "busy"}));
    // Half a request line, half a header block and half a body, each left hanging.
    let mut stalled = Vec::new();
    for partial in [
        &b"POST /VolumeDriver.Ge"[..],
        b"POST /VolumeDriver.Get HTTP/1.1\r\nHost: p\r\nContent-Le",
        b"POST /VolumeDriver.Get HTTP/1.1\r\nHost: p\r\nContent-Length: 40\r\n\r\n{\"Name\":",
    ] {
        let mut s = UnixStream::connect(berth.socket()).unwrap();
        s.write_all(partial).unwrap();
        stalled.push(s);
    }
    for _ in 0..5 {
        let started = Instant::now();
        let got = berth.ok("/VolumeDriver.Get", json!({"Name": "busy"}));
        assert_eq!(got["Volume"]["Name"], "busy");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a request next to stalled clients took {:?}",
            started.elapsed()
        );
    }
    drop(stalled);
}

#[test]
fn volumes_and_mount_references_survive_a_restart() {
    let mut berth = Berth::start();
    berth.ok(
        "/VolumeDriver.Create",
        json!({"Name": "keep", "Opts": {"size": "16MiB"}}),
    );
    let data = mountpoint(&berth.ok("/VolumeDriver.Mount", json!({"Name": "keep", "ID": "c1"})));
    std::fs::write(data.join("file"), b"before restart").unwrap();

    berth.stop();
    assert!(
        !berth.socket().exists(),
        "the socket is removed on shutdown"
    );
    berth.launch();

    let got = berth.ok("/VolumeDriver.Get", json!({"Name": "keep"}));
    assert_eq!(mountpoint(&got["Volume"]), data);
    assert_eq!(got["Volume"]["Status"]["state"], "attached");
    assert_eq!(
        got["Volume"]["Status"]["publishedTo"],
        json!(["reference \"docker:c1\""])
    );
    assert_eq!(std::fs::read(data.join("file")).unwrap(), b"before restart");
    let (code, _) = berth.err("/VolumeDriver.Remove", json!({"Name": "keep"}));
    assert_eq!(
        code, 409,
        "the reference taken before the restart still holds"
    );
    berth.ok("/VolumeDriver.Unmount", json!({"Name": "keep", "ID": "c1"}));
    berth.ok("/VolumeDriver.Remove", json!({"Name": "keep"}));
    assert_nothing_mounted_under(&berth.pool());
}

#[test]
fn mount_references_from_before_a_reboot_are_dropped_at_start() {
    let mut berth = Berth::start();
    berth.ok("/VolumeDriver.Create", json!({"Name": "boot"}));
    berth.ok("/VolumeDriver.Mount", json!({"Name": "boot", "ID": "c1"}));
    berth.stop();
    // The kernel's boot id changes only with a reboot: make the stored reference belong to
    // another boot instead, as one recorded before a reboot would.
    {
        use berth::engine::types::Volume;
        let store_path = berth.pool().parent().unwrap().join("state/berth.redb");
        let store = berth::store::Store::open(&store_path).unwrap();
        let mut v = store
            .load_all::<Volume>()
            .unwrap()
            .into_iter()
            .find(|v| v.name.as_str() == "boot")
            .unwrap();
        assert!(v.publications[0].boot_id.is_some(), "the boot id is stored");
        v.publications[0].boot_id = Some("00000000-0000-0000-0000-000000000000".into());
        store.put("boot", &v).unwrap();
    }
    berth.launch();

    let got = berth.ok("/VolumeDriver.Get", json!({"Name": "boot"}));
    assert_eq!(got["Volume"]["Status"]["state"], "detached");
    assert!(got["Volume"]["Status"]["publishedTo"].is_null(), "{got}");
    assert!(
        berth.log().contains("an earlier boot took"),
        "the drop is logged:\n{}",
        berth.log()
    );
    berth.ok("/VolumeDriver.Remove", json!({"Name": "boot"}));
    assert_nothing_mounted_under(&berth.pool());
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not_taken() {
    let mut berth = Berth::start();
    berth.ok("/VolumeDriver.Create", json!({"Name": "v"}));

    // A second daemon on the same socket is refused while the first runs.
    let second = berth.second_instance_output();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("is served by another running process"),
        "{stderr}"
    );
    berth.ok("/VolumeDriver.Get", json!({"Name": "v"}));

    // A crash leaves the socket file behind; the next start replaces it.
    berth.crash();
    assert!(berth.socket().exists(), "a killed daemon leaves its socket");
    assert!(
        UnixStream::connect(berth.socket()).is_err(),
        "nobody serves it"
    );
    berth.launch();
    berth.ok("/VolumeDriver.Get", json!({"Name": "v"}));
    berth.stop();
    assert!(!berth.socket().exists());
}
