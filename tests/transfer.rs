//! Root integration tests of `berth volume export` and `import` between two real daemons,
//! each with its own state directory, pools and admin socket (node A and node B): a round
//! trip through a shell pipe that keeps files, owners, modes, xattrs, links and hard links;
//! an attached volume read from a snapshot taken for the export; a hostile archive refused
//! with nothing made; and a kill -9 in the middle of an import.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::admin::cli::Client;
use berth::config::Config;
use berth::engine::VolumeService;
use berth::engine::types::{Caller, CreateRequest, Frontend, Owner, VolumeName, VolumeSpec};
use serde_json::Value;

#[path = "support/csi_daemon.rs"]
mod csi_daemon;
#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/tree.rs"]
mod tree;

use csi_daemon::{loops_under as loops_beneath, mounts_under as mounts_beneath};
use tree::*;

const SECRET: &str = "transfer-test-token-91c3";
const SEED: Caller = Caller {
    frontend: Frontend::Internal,
    wait_if_busy: true,
};

/// One node: its directory, config, daemon and clean-up.
struct Node {
    dir: PathBuf,
    config: Config,
    child: Option<Child>,
}

impl Node {
    fn new(name: &str) -> Self {
        Self::with_pools(name, "")
    }

    /// A node with a pool `btrfs` too: a btrfs filesystem on a loop device of its own.
    fn with_btrfs(name: &str) -> Self {
        Self::with_pools(
            name,
            "[[pools]]\nname = \"btrfs\"\nkind = \"root\"\npaths = [\"{d}/btrfs\"]\nbackend = \"btrfs\"\ncapacity = \"1GiB\"\n",
        )
    }

    fn with_pools(name: &str, extra: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the transfer tests need root (loop devices, mounts, owners)"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-transfer-{name}-"))
            .tempdir_in("/var/tmp")
            .unwrap()
            .keep();
        std::fs::write(dir.join("token"), format!("{SECRET}\n")).unwrap();
        let d = dir.display();
        let extra = extra.replace("{d}", &d.to_string());
        if !extra.is_empty() {
            let image = dir.join("btrfs.img");
            std::fs::File::create(&image)
                .unwrap()
                .set_len(1 << 30)
                .unwrap();
            let made = Command::new("mkfs.btrfs")
                .args(["-q", "-f"])
                .arg(&image)
                .status();
            assert!(
                made.is_ok_and(|s| s.success()),
                "mkfs.btrfs failed: install btrfs-progs (scripts/test-deps.sh)"
            );
            std::fs::create_dir(dir.join("btrfs")).unwrap();
            let mounted = Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(dir.join("btrfs"))
                .status()
                .unwrap();
            assert!(mounted.success(), "mounting the btrfs image");
        }
        let text = format!(
            r#"
state_dir = "{d}/state"
node_id = "{name}"

[listen]
csi = ""
docker = "{d}/docker.sock"
admin = "{d}/admin.sock"

[admin]
token_file = "{d}/token"

[[pools]]
name = "loop"
kind = "root"
paths = ["{d}/loop"]
backend = "loopfs"
capacity = "2GiB"

[[pools]]
name = "plain"
kind = "root"
paths = ["{d}/plain"]
backend = "none"

{extra}"#
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        Self {
            dir,
            config,
            child: None,
        }
    }

    fn socket(&self) -> String {
        self.dir.join("admin.sock").display().to_string()
    }

    /// Opens the engine in this process (the daemon must not be running), runs `seed`.
    fn seed<T>(&self, seed: impl FnOnce(&dyn VolumeService) -> T) -> T {
        let engine: Arc<dyn VolumeService> = berth::daemon::open_engine(&self.config).unwrap();
        seed(engine.as_ref())
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["serve", "--config"])
                .arg(self.dir.join("config.toml"))
                .env("BERTH_LOG", "debug")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let client = Client::new(&self.socket(), Some(SECRET)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client
            .call("GET", "/healthz")
            .is_ok_and(|r| r.status == 200)
        {
            assert!(
                Instant::now() < deadline,
                "berth never got ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str) -> (u16, Value) {
        let r = Client::new(&self.socket(), Some(SECRET))
            .unwrap()
            .call(method, path)
            .unwrap();
        let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, body)
    }

    /// A Docker plugin API call on this node.
    fn docker(&self, path: &str, body: &str) -> Value {
        use std::io::Read;
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.join("docker.sock")).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let json = raw.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str(json).unwrap_or(Value::Null)
    }

    /// `berth volume ARGS` on this node, as a shell fragment (for pipes).
    fn cli(&self, args: &str) -> String {
        format!(
            "BERTH_ADMIN_SOCKET={} BERTH_TOKEN_FILE={} {} volume {args}",
            self.socket(),
            self.dir.join("token").display(),
            env!("CARGO_BIN_EXE_berth")
        )
    }

    fn data_of(&self, volume: &str) -> PathBuf {
        let (status, view) = self.call("GET", &format!("/v1/volumes/{volume}"));
        assert_eq!(status, 200, "{view}");
        PathBuf::from(view["path"].as_str().unwrap())
    }

    /// Files beneath the pools that an export or a failed import would leave.
    fn leftovers(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for pool in ["loop", "plain", "btrfs"] {
            let snaps = self.dir.join(pool).join(".snapshots");
            for e in std::fs::read_dir(&snaps).into_iter().flatten().flatten() {
                found.push(e.path());
            }
        }
        found
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        for _ in 0..3 {
            for m in mounts_beneath(&self.dir) {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        for dev in loops_beneath(&self.dir) {
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        }
        if mounts_beneath(&self.dir).is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn sh(script: &str) -> (bool, String, String) {
    let out = Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {script}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn create(engine: &dyn VolumeService, name: &str, pool: &str, size: Option<u64>) -> PathBuf {
    engine
        .create(
            SEED,
            CreateRequest {
                name: VolumeName::parse(name).unwrap(),
                spec: VolumeSpec {
                    size,
                    pool: Some(pool.into()),
                    ..VolumeSpec::default()
                },
                owner: Owner::default(),
            },
        )
        .unwrap()
        .placement
        .data
}

#[test]
fn a_volume_moves_between_nodes_through_a_pipe_and_arrives_identical() {
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    let outside = a.dir.join("outside");
    std::fs::write(&outside, b"outside the volume").unwrap();
    let (data, notes) = a.seed(|e| {
        (
            create(e, "db", "loop", Some(300 << 20)),
            create(e, "notes", "plain", None),
        )
    });
    std::fs::write(notes.join("n.txt"), b"changing").unwrap();
    sample_tree(&data, &outside);
    a.start();
    b.start();

    // Attached through Docker, so the export reads a snapshot taken for it.
    let mounted = a.docker("/VolumeDriver.Mount", r#"{"Name":"db","ID":"c1"}"#);
    assert_eq!(mounted["Err"], "", "{mounted}");
    let (ok, out, err) = sh(&format!("{} | {}", a.cli("export db"), b.cli("import db2")));
    assert!(
        ok,
        "export | import failed: {err}\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(out.trim(), "db2");
    assert!(err.is_empty(), "nothing on stderr on a pipe: {err:?}");

    let copy = b.data_of("db2");
    assert_eq!(describe(&data), describe(&copy));
    assert_eq!(
        get_xattr(&copy, "user.top").as_deref(),
        Some(&b"root dir"[..])
    );
    assert_eq!(
        get_xattr(&copy.join("sub"), "trusted.berth").as_deref(),
        Some(&b"\x00binary\xff"[..])
    );
    assert_eq!(
        get_xattr(&copy.join("plain.txt"), "user.colour").as_deref(),
        Some(&b"blue"[..])
    );
    use std::os::unix::fs::MetadataExt;
    let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
    assert_eq!(
        meta(&copy.join("plain.txt")).ino(),
        meta(&copy.join("sub/hard.txt")).ino()
    );
    assert!(meta(&copy.join("escape")).file_type().is_symlink());
    assert_eq!(std::fs::read_link(copy.join("escape")).unwrap(), outside);
    // Sized like its source, owned by Docker (an operator's default).
    let (_, view) = b.call("GET", "/v1/volumes/db2");
    assert_eq!(view["size_bytes"], 300 << 20, "{view}");
    assert_eq!(view["frontend"], "docker");
    assert!(
        a.log()
            .contains("exporting a snapshot taken for the export"),
        "an attached loopfs volume is read from a snapshot:\n{}",
        a.log()
    );
    // The export's copy is gone, and so is its mount.
    assert!(a.leftovers().is_empty(), "{:?}", a.leftovers());
    assert!(
        mounts_beneath(&a.dir)
            .iter()
            .all(|m| !m.to_string_lossy().contains("berth-export")),
        "{:?}",
        mounts_beneath(&a.dir)
    );
    // A file and back: the same bytes, and a snapshot exports too.
    let file = a.dir.join("db.tar");
    let (ok, _, err) = sh(&format!("{} > {}", a.cli("export db"), file.display()));
    assert!(ok, "{err}");
    let (status, _) = a.call("POST", "/v1/volumes/db/snapshots/db-snap");
    assert_eq!(status, 200);
    let (ok, _, err) = sh(&format!(
        "{} | {}",
        a.cli("export db-snap"),
        b.cli("import db3 --size 400MiB --frontend mesos")
    ));
    assert!(ok, "{err}\n{}", a.log());
    assert_eq!(describe(&data), describe(&b.data_of("db3")));
    let (_, view) = b.call("GET", "/v1/volumes/db3");
    assert_eq!(
        (view["size_bytes"].as_u64(), view["frontend"].as_str()),
        (Some(400 << 20), Some("mesos"))
    );
    assert!(
        a.leftovers()
            .iter()
            .all(|p| p.to_string_lossy().contains("db-snap")),
        "{:?}",
        a.leftovers()
    );

    // An attached plain directory has no point-in-time copy: exported as it is, with a
    // warning.
    let mounted = a.docker("/VolumeDriver.Mount", r#"{"Name":"notes","ID":"c2"}"#);
    assert_eq!(mounted["Err"], "", "{mounted}");
    let (ok, _, err) = sh(&format!(
        "{} | {}",
        a.cli("export notes"),
        b.cli("import notes")
    ));
    assert!(ok, "{err}");
    assert!(err.contains("warning: volume notes is in use"), "{err}");
    assert_eq!(describe(&notes), describe(&b.data_of("notes")));

    // The admin API wants its token for both.
    let bare = Client::new(&a.socket(), None).unwrap();
    assert_eq!(
        bare.call("GET", "/v1/volumes/db/export").unwrap().status,
        401
    );
    // Importing over an existing volume is refused and leaves it as it was.
    let (ok, _, err) = sh(&format!("{} < {}", b.cli("import db2"), file.display()));
    assert!(!ok && err.contains("already exists"), "{err}");
    assert_eq!(describe(&data), describe(&b.data_of("db2")));
}

#[test]
fn a_hostile_archive_is_refused_and_nothing_is_made() {
    let mut b = Node::new("hostile");
    b.start();
    let victim = b.dir.join("victim");
    std::fs::create_dir(&victim).unwrap();
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "dotdot",
            vec![raw_entry(b"../../../../victim/x", b'0', b"", b"pwned")],
        ),
        (
            "absolute",
            vec![raw_entry(
                victim.join("x").as_os_str().as_encoded_bytes(),
                b'0',
                b"",
                b"pwned",
            )],
        ),
        (
            "through-a-symlink",
            vec![
                raw_entry(b"ok.txt", b'0', b"", b"fine"),
                raw_entry(b"l", b'2', victim.as_os_str().as_encoded_bytes(), b""),
                raw_entry(b"l/x", b'0', b"", b"pwned"),
            ],
        ),
    ];
    for (what, entries) in cases {
        let file = b.dir.join(format!("{what}.tar"));
        let mut bytes = entries.concat();
        bytes.extend_from_slice(&[0u8; 1024]);
        std::fs::write(&file, bytes).unwrap();
        let (ok, _, err) = sh(&format!(
            "{} < {}",
            b.cli("import evil --pool plain"),
            file.display()
        ));
        assert!(!ok, "{what} was imported");
        assert!(
            err.contains("beneath") || err.contains("symbolic link"),
            "{what}: {err}"
        );
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "{what}");
        let (status, _) = b.call("GET", "/v1/volumes/evil");
        assert_eq!(status, 404, "{what}: the half-made volume is rolled back");
        assert!(
            !b.dir.join("plain/evil").exists(),
            "{what}: its directory is gone"
        );
    }
}

#[test]
fn an_import_killed_mid_way_is_rolled_back_at_the_next_start() {
    let mut b = Node::new("crash");
    b.start();
    // The import's client sends the start of an archive, then waits.
    let mut import = Command::new("sh")
        .args(["-c", &b.cli("import half --pool loop --size 64MiB")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = import.stdin.take().unwrap();
    let mut part = raw_entry(b"a-file", b'0', b"", &vec![7u8; 200_000]);
    part.truncate(100_000);
    stdin.write_all(&part).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, view) = b.call("GET", "/v1/volumes/half");
        if status == 200 {
            assert_eq!(view["state"], "creating", "{view}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the import never began:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    b.kill();
    drop(stdin);
    let _ = import.wait();
    b.start();
    let (status, view) = b.call("GET", "/v1/volumes/half");
    assert_eq!(status, 404, "rolled back: {view}\n{}", b.log());
    let images: Vec<_> = std::fs::read_dir(b.dir.join("loop/.images"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(images.is_empty(), "no image left: {images:?}");
    assert!(
        loops_beneath(&b.dir).is_empty(),
        "{:?}",
        loops_beneath(&b.dir)
    );
    // And the same name imports whole afterwards.
    let mut whole = raw_entry(b"a-file", b'0', b"", b"complete");
    whole.extend_from_slice(&[0u8; 1024]);
    let file = b.dir.join("whole.tar");
    std::fs::write(&file, whole).unwrap();
    let (ok, _, err) = sh(&format!(
        "{} < {}",
        b.cli("import half --pool loop --size 64MiB"),
        file.display()
    ));
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(b.data_of("half").join("a-file")).unwrap(),
        b"complete"
    );
}

#[test]
fn an_export_killed_mid_way_leaves_no_copy_after_the_restart() {
    let mut a = Node::new("exportcrash");
    let data = a.seed(|e| create(e, "big", "loop", Some(256 << 20)));
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i * 7 + i / 4096) as u8)
        .collect();
    let mut f = std::fs::File::create(data.join("big.bin")).unwrap();
    for _ in 0..64 {
        f.write_all(&block).unwrap();
    }
    drop(f);
    a.start();
    let mounted = a.docker("/VolumeDriver.Mount", r#"{"Name":"big","ID":"c1"}"#);
    assert_eq!(mounted["Err"], "", "{mounted}");
    // A reader that never reads: the export stalls with its copy mounted.
    let mut export = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["volume", "export", "big"])
        .env("BERTH_ADMIN_SOCKET", a.socket())
        .env("BERTH_TOKEN_FILE", a.dir.join("token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = a.dir.clone();
    let copy_mounted = || {
        mounts_beneath(&dir)
            .iter()
            .any(|m| m.to_string_lossy().contains("berth-export"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !copy_mounted() {
        assert!(
            Instant::now() < deadline,
            "the export never mounted its copy:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    a.kill();
    let _ = export.kill();
    let _ = export.wait();
    assert!(
        !a.leftovers().is_empty(),
        "the crash left the copy for recovery"
    );
    a.start();
    assert!(a.leftovers().is_empty(), "{:?}\n{}", a.leftovers(), a.log());
    assert!(!copy_mounted(), "{:?}", mounts_beneath(&dir));
    assert_eq!(
        loops_beneath(&a.dir).len(),
        1,
        "only the volume's own loop device"
    );
    // The volume itself is untouched and exports whole.
    let (ok, _, err) = sh(&format!(
        "{} | tar -tvf - | grep -c big.bin",
        a.cli("export big")
    ));
    assert!(ok, "{err}");
}

#[test]
fn an_attached_btrfs_volume_is_exported_from_a_snapshot_of_it() {
    let mut a = Node::with_btrfs("btrfs-a");
    let mut b = Node::new("btrfs-b");
    let outside = a.dir.join("outside");
    let data = a.seed(|e| create(e, "sub", "btrfs", Some(128 << 20)));
    sample_tree(&data, &outside);
    a.start();
    b.start();
    let (_, view) = a.call("GET", "/v1/volumes/sub");
    assert_eq!(view["backend"], "btrfs", "{view}");
    let mounted = a.docker("/VolumeDriver.Mount", r#"{"Name":"sub","ID":"c1"}"#);
    assert_eq!(mounted["Err"], "", "{mounted}");
    let (ok, _, err) = sh(&format!(
        "{} | {}",
        a.cli("export sub"),
        b.cli("import sub")
    ));
    assert!(ok, "{err}\n{}", a.log());
    assert!(err.is_empty(), "{err}");
    assert!(
        a.log()
            .contains("exporting a snapshot taken for the export"),
        "{}",
        a.log()
    );
    assert_eq!(describe(&data), describe(&b.data_of("sub")));
    assert_eq!(
        get_xattr(&b.data_of("sub").join("sub"), "trusted.berth").as_deref(),
        Some(&b"\x00binary\xff"[..])
    );
    assert!(a.leftovers().is_empty(), "{:?}", a.leftovers());
}
