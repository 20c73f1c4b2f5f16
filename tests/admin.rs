//! Root integration tests of the admin API and `berth volume`, against the real `berth`
//! binary on the real host: wipes that must not escape the volume (symlinks to the outside,
//! to `/etc`, to a sibling volume, hard links, a bind mount planted inside), a `kill -9` in
//! the middle of a wipe of 10,000 files, loop-device and image release, the token on TCP,
//! the CLI's table and JSON, and `/metrics` read by a Prometheus parser.
//!
//! Volumes are made before the daemon starts, by opening the engine in this process on the
//! same config (`berth::daemon::open_engine`), then closing it; the daemon then serves them.
//! Each test has its own directory under /var/tmp, sockets, port and daemon, and a guard that
//! unmounts, detaches and removes everything it made, even when the test fails.

#[path = "support/harness/mod.rs"]
mod harness;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::config::Config;
use berth::engine::VolumeService;
use berth::engine::types::{
    Caller, CreateRequest, Frontend, Owner, PublishTarget, VolumeName, VolumeSpec,
};
use berth::server::client::{Client, Response};
use harness::cleanup::{Scratch, loops_under, mounts_under};
use harness::serve::{Serve, Served};
use serde_json::Value;

const SECRET: &str = "admin-test-token-6f1d0c2b";
const SEED: Caller = Caller {
    frontend: Frontend::Internal,
    wait_if_busy: true,
};

/// A test's directory, config and clean-up.
struct Env {
    dir: PathBuf,
    _scratch: Scratch,
    config_path: PathBuf,
    config: Config,
    port: u16,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Env {
    fn new(test: &str) -> Self {
        harness::require_root();
        let scratch = Scratch::new(&format!("berth-admin-{test}-"));
        let dir = scratch.path().to_path_buf();
        let port = free_port();
        std::fs::write(dir.join("token"), format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let d = dir.display();
        let text = format!(
            r#"
state_dir = "{d}/state"
node_id = "test-node"

[listen]
csi = ""
docker = ""
admin = "{d}/admin.sock"
admin_tcp = "127.0.0.1:{port}"

[admin]
token_file = "{d}/token"

[[pools]]
name = "plain"
kind = "root"
paths = ["{d}/plain"]
backend = "none"
reclaim = "retain"

[[pools]]
name = "loop"
kind = "root"
paths = ["{d}/loop"]
backend = "loopfs"
capacity = "1GiB"
"#
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap();
        Self {
            dir,
            _scratch: scratch,
            config_path,
            config,
            port,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Appends pool tables to the config (before the daemon starts).
    fn add_pools(&mut self, toml: &str) {
        let mut text = std::fs::read_to_string(&self.config_path).unwrap();
        text.push_str(toml);
        std::fs::write(&self.config_path, text).unwrap();
        self.config = Config::load(&self.config_path).unwrap();
    }

    /// A loop-backed ext4 disk of `mib` MiB mounted at `disks/<disk>` (undone by the guard).
    fn disk(&self, disk: &str, mib: u64) -> PathBuf {
        use berth::host::Host;
        let host = berth::host::linux::LinuxHost::new();
        let image = self.path(&format!("images/{disk}.img"));
        let mount_point = self.path(&format!("disks/{disk}"));
        std::fs::create_dir_all(image.parent().unwrap()).unwrap();
        std::fs::create_dir_all(&mount_point).unwrap();
        host.create_image(&image, mib << 20, Some(berth::engine::types::FsType::Ext4))
            .unwrap();
        host.mount_image(&image, &mount_point, berth::engine::types::FsType::Ext4)
            .unwrap();
        mount_point
    }

    fn socket(&self) -> String {
        self.path("admin.sock").display().to_string()
    }

    /// Opens the engine in this process (the daemon must not be running), runs `seed`,
    /// closes it again.
    fn seed<T>(&self, seed: impl FnOnce(&dyn VolumeService) -> T) -> T {
        let engine: Arc<dyn VolumeService> = berth::daemon::open_engine(&self.config).unwrap();
        seed(engine.as_ref())
    }

    fn start(&self) -> Daemon {
        let mut served = Serve::new(&self.config_path, self.path("daemon.log"))
            .log_level("debug")
            .spawn();
        let client = Client::new(&self.socket(), Some(SECRET)).unwrap();
        served.wait_until("answer /healthz", || {
            client
                .call("GET", "/healthz")
                .is_ok_and(|r| r.status == 200)
        });
        Daemon { served, client }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Runs `berth volume ARGS` against this daemon; returns (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("volume")
            .args(args)
            .env("BERTH_ADMIN_SOCKET", self.socket())
            .env("BERTH_TOKEN_FILE", self.path("token"))
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_ADMIN_TOKEN")
            .env_remove("BERTH_CONFIG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

/// A running daemon; stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    served: Served,
    client: Client,
}

impl Daemon {
    fn call(&self, method: &str, path: &str) -> (u16, Value) {
        let r: Response = self.client.call(method, path).unwrap();
        let body = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into()));
        (r.status, body)
    }

    fn pid(&self) -> i32 {
        self.served.pid() as i32
    }

    fn kill9(mut self) {
        self.served.kill();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.served.stop();
    }
}

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

fn create(
    engine: &dyn VolumeService,
    n: &str,
    pool: &str,
    size: Option<u64>,
    owner: Owner,
) -> PathBuf {
    let v = engine
        .create(
            SEED,
            CreateRequest {
                name: name(n),
                spec: VolumeSpec {
                    size,
                    pool: Some(pool.into()),
                    ..VolumeSpec::default()
                },
                owner,
            },
        )
        .unwrap();
    v.placement.data
}

fn canary(dir: &Path, content: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("canary");
    std::fs::write(&file, content).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/inner"), content).unwrap();
    file
}

fn assert_canary(dir: &Path, content: &str) {
    assert_eq!(
        std::fs::read_to_string(dir.join("canary")).unwrap(),
        content,
        "{}",
        dir.display()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sub/inner")).unwrap(),
        content
    );
}

fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Regular files beneath `dir` (not following links); 0 when it is gone.
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += count_files(&e.path()),
            Ok(t) if t.is_file() => n += 1,
            _ => {}
        }
    }
    n
}

#[test]
fn wipe_unlinks_planted_symlinks_and_hard_links_never_their_targets() {
    let env = Env::new("links");
    let outside = env.path("outside");
    canary(&outside, "outside");
    std::fs::write(outside.join("hardlinked"), "shared inode").unwrap();
    let (victim, sibling, etc_victim) = env.seed(|e| {
        (
            create(e, "victim", "plain", None, Owner::default()),
            create(e, "sibling", "plain", None, Owner::default()),
            create(e, "etc-victim", "plain", None, Owner::default()),
        )
    });
    canary(&sibling, "sibling");
    // What a hostile container can plant in its volume.
    std::fs::write(victim.join("own-file"), "mine").unwrap();
    symlink(&outside, victim.join("to-outside"));
    symlink(outside.join("canary"), victim.join("to-outside-file"));
    symlink("../../sibling/data", victim.join("to-sibling"));
    std::fs::create_dir_all(victim.join("deep/er")).unwrap();
    symlink("../../../../outside", victim.join("deep/er/up-and-out"));
    std::fs::hard_link(outside.join("hardlinked"), victim.join("hard")).unwrap();
    let daemon = env.start();

    let (ok, out, err) = env.cli(&["wipe", "victim", "--yes"]);
    assert!(ok, "{out}{err}\n{}", env.log());
    assert!(out.starts_with("wiped victim: removed"), "{out}");
    assert_canary(&outside, "outside");
    assert_canary(&sibling, "sibling");
    assert_eq!(
        std::fs::read_to_string(outside.join("hardlinked")).unwrap(),
        "shared inode"
    );
    assert!(!victim.exists() && !env.path("plain/victim").exists());
    let (status, _) = daemon.call("GET", "/v1/volumes/victim");
    assert_eq!(status, 404);

    // Only now that links to our own canaries are known not to be followed: one to /etc.
    let etc_before = std::fs::read_dir("/etc").unwrap().count();
    symlink("/etc", etc_victim.join("etc"));
    symlink("/etc/hostname", etc_victim.join("hostname"));
    let (status, body) = daemon.call("DELETE", "/v1/volumes/etc-victim?wipe=true");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"]["symlinks"].as_u64(), Some(2), "{body}");
    assert!(Path::new("/etc/hostname").exists());
    assert_eq!(std::fs::read_dir("/etc").unwrap().count(), etc_before);
    let (status, list) = daemon.call("GET", "/v1/volumes");
    assert_eq!(status, 200);
    assert_eq!(list["volumes"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn wipe_does_not_cross_a_mount_planted_inside_the_volume() {
    let env = Env::new("mount");
    let outside = env.path("outside");
    canary(&outside, "bound");
    let victim = env.seed(|e| create(e, "victim", "plain", None, Owner::default()));
    std::fs::write(victim.join("own-file"), "mine").unwrap();
    let planted = victim.join("sub/mnt");
    std::fs::create_dir_all(&planted).unwrap();
    let bound = Command::new("mount")
        .arg("--bind")
        .arg(&outside)
        .arg(&planted)
        .status()
        .unwrap();
    assert!(bound.success());
    let daemon = env.start();

    // Decided behaviour: the wipe removes what it can, never enters the mount, and fails
    // naming the mount point; the volume stays tombstoned ("deleting") until the operator
    // unmounts and wipes again.
    let (status, body) = daemon.call("DELETE", "/v1/volumes/victim?wipe=true");
    assert_eq!(status, 500, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&planted.display().to_string()),
        "{message}"
    );
    assert!(message.contains("mount"), "{message}");
    assert_canary(&outside, "bound");
    assert_canary(&planted, "bound");
    let (_, shown) = daemon.call("GET", "/v1/volumes/victim");
    assert_eq!(shown["state"], "deleting", "{shown}");
    let (ok, out, err) = env.cli(&["ls", "--state", "deleting", "-q"]);
    assert!(ok, "{err}");
    assert_eq!(out, "victim\n");

    // A restart while the mount is still there must not keep berth down: the unfinished
    // wipe is reported and left for the operator.
    drop(daemon);
    let daemon = env.start();
    let (_, shown) = daemon.call("GET", "/v1/volumes/victim");
    assert_eq!(shown["state"], "deleting", "{shown}");
    assert!(env.log().contains("could not finish"), "{}", env.log());
    assert_canary(&planted, "bound");

    nix::mount::umount2(&planted, nix::mount::MntFlags::MNT_DETACH)
        .expect("unmounting the planted bind");
    let (status, body) = daemon.call("DELETE", "/v1/volumes/victim?wipe=true");
    assert_eq!(status, 200, "{body}");
    assert!(!victim.exists());
    assert_canary(&outside, "bound");
}

#[test]
fn kill_9_during_a_wipe_of_10000_files_is_finished_on_restart() {
    let env = Env::new("kill");
    let outside = env.path("outside");
    canary(&outside, "outside");
    let neighbour = env.seed(|e| create(e, "neighbour", "plain", None, Owner::default()));
    canary(&neighbour, "neighbour");
    // The wipe may outrun the poll on a fast disk; then try again with a fresh volume.
    for attempt in 0..4 {
        let id = format!("big-{attempt}");
        let data = env.seed(|e| create(e, &id, "plain", None, Owner::default()));
        for d in 0..100 {
            let sub = data.join(format!("d{d:03}"));
            std::fs::create_dir(&sub).unwrap();
            for f in 0..100 {
                std::fs::write(sub.join(format!("f{f:03}")), b"x").unwrap();
            }
        }
        assert_eq!(count_files(&data), 10_000);
        let daemon = env.start();
        let client = Client::new(&env.socket(), Some(SECRET)).unwrap();
        let path = format!("/v1/volumes/{id}?wipe=true");
        let wiping = std::thread::spawn(move || client.call("DELETE", &path).map(|r| r.status));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut left = count_files(&data);
        while left == 10_000 && Instant::now() < deadline {
            left = count_files(&data);
        }
        let pid = daemon.pid();
        daemon.kill9();
        let left_after_kill = count_files(&data);
        let _ = wiping.join();
        if left_after_kill == 0 {
            eprintln!("attempt {attempt}: the wipe finished before the kill (pid {pid}); again");
            continue;
        }
        assert!(
            left_after_kill < 10_000,
            "the wipe never started:\n{}",
            env.log()
        );
        eprintln!("attempt {attempt}: killed berth (pid {pid}) with {left_after_kill} files left");

        let daemon = env.start();
        let (status, _) = daemon.call("GET", &format!("/v1/volumes/{id}"));
        assert_eq!(status, 404, "the half-wiped volume must not reappear");
        assert!(!data.exists(), "{}", data.display());
        assert!(!env.path(&format!("plain/{id}")).exists());
        assert!(
            env.log()
                .contains("finished a delete interrupted by a crash"),
            "{}",
            env.log()
        );
        assert_canary(&neighbour, "neighbour");
        assert_canary(&outside, "outside");
        let (_, list) = daemon.call("GET", "/v1/volumes");
        let ids: Vec<&str> = list["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["id"].as_str())
            .collect();
        assert!(
            ids.contains(&"neighbour") && !ids.contains(&id.as_str()),
            "{ids:?}"
        );
        return;
    }
    panic!("the wipe of 10,000 files always finished before the kill: nothing was tested");
}

#[test]
fn a_loopfs_wipe_releases_the_mount_the_loop_device_and_the_image() {
    let env = Env::new("loopfs");
    let data = env.seed(|e| create(e, "lv", "loop", Some(32 << 20), Owner::default()));
    std::fs::write(data.join("file"), vec![7u8; 1 << 20]).unwrap();
    let image = env.path("loop/.images/lv.img");
    let dir = env.path("loop/lv");
    assert!(image.exists());
    assert_eq!(mounts_under(&dir), vec![dir.clone()]);
    assert_eq!(loops_under(&image).len(), 1);
    let daemon = env.start();
    let (status, shown) = daemon.call("GET", "/v1/volumes/lv");
    assert_eq!(status, 200);
    assert_eq!(shown["backend"], "loopfs");
    assert!(
        shown["usage"]["bytes_used"].as_u64().unwrap() >= 1 << 20,
        "{shown}"
    );

    let (status, body) = daemon.call("DELETE", "/v1/volumes/lv?wipe=true");
    assert_eq!(status, 200, "{body}");
    assert!(!image.exists());
    assert!(!dir.exists());
    assert!(mounts_under(&dir).is_empty());
    // The kernel detaches an autoclear loop device on the last close, a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !loops_under(&image).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(loops_under(&image).is_empty());
    let (_, cap) = daemon.call("GET", "/v1/volumes?pool=loop");
    assert_eq!(cap["volumes"], serde_json::json!([]));
}

/// Sends raw HTTP to the TCP listener; returns the whole response text.
fn raw_tcp(port: u16, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn on_tcp_requests_without_the_token_get_401_and_change_nothing() {
    let env = Env::new("tcp");
    let data = env.seed(|e| create(e, "victim", "plain", None, Owner::default()));
    std::fs::write(data.join("precious"), "data").unwrap();
    let daemon = env.start();
    let wrong = "admin-test-token-6f1d0c2X";
    let attempts = [
        "DELETE /v1/volumes/victim?wipe=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_string(),
        format!(
            "DELETE /v1/volumes/victim?wipe=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {wrong}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "DELETE /v2/apps/a/tasks/t?wipe=true HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {SECRET}\r\nConnection: close\r\n\r\n"
        ),
        "GET /v1/volumes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
    ];
    for request in &attempts {
        let response = raw_tcp(env.port, request);
        assert!(
            response.starts_with("HTTP/1.1 401"),
            "{request}\n{response}"
        );
        assert!(
            response
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{response}"
        );
        assert!(!response.contains("victim"), "{response}");
    }
    let health = raw_tcp(
        env.port,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("precious")).unwrap(),
        "data"
    );

    let tcp = Client::new(&format!("http://127.0.0.1:{}", env.port), Some(SECRET)).unwrap();
    let r = tcp.call("GET", "/v1/volumes/victim").unwrap();
    assert_eq!(r.status, 200);
    let shown: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(shown["state"], "reserved");
    let (status, _) = daemon.call("GET", "/v1/volumes/victim");
    assert_eq!(
        status, 200,
        "the unix socket wants the token too, and has it"
    );
    let bare = Client::new(&env.socket(), None).unwrap();
    assert_eq!(bare.call("GET", "/v1/volumes").unwrap().status, 401);
    drop(daemon);
    let log = env.log();
    assert!(
        log.contains("refused an admin request without a valid bearer token"),
        "{log}"
    );
    assert!(
        !log.contains(SECRET) && !log.contains(wrong),
        "a token reached the log"
    );
    let socket_mode = std::fs::metadata(env.path("admin.sock")).map(|m| m.permissions().mode());
    assert!(socket_mode.is_err(), "the socket is removed at shutdown");
}

/// One rule for the token (the unix socket wants it too, as TCP does) and `berth volume`
/// finds it where the daemon does: the daemon's config file (`--config`, `BERTH_CONFIG`),
/// whose `token_file` it reads, or `BERTH_ADMIN_TOKEN`; without any it is told where to look.
#[test]
fn berth_volume_finds_the_token_in_the_daemons_config_or_the_environment() {
    let env = Env::new("token-source");
    env.seed(|e| create(e, "kept", "plain", None, Owner::default()));
    let _daemon = env.start();
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command
            .arg("volume")
            .args(args)
            .env("BERTH_ADMIN_SOCKET", env.socket())
            .stdin(Stdio::null());
        for var in [
            "BERTH_TOKEN",
            "BERTH_ADMIN_TOKEN",
            "BERTH_TOKEN_FILE",
            "BERTH_CONFIG",
            "RUST_BACKTRACE",
        ] {
            command.env_remove(var);
        }
        command.envs(vars.iter().copied());
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let config = env.config_path.to_str().unwrap().to_string();

    let (ok, _, stderr) = run(&["ls", "-q"], &[]);
    assert!(!ok, "the socket wants the token when one is configured");
    assert!(
        stderr.contains("401")
            && stderr.contains("BERTH_ADMIN_TOKEN")
            && stderr.contains("--config"),
        "{stderr}"
    );
    for (args, vars) in [
        (vec!["ls", "-q", "--config", config.as_str()], vec![]),
        (vec!["ls", "-q"], vec![("BERTH_CONFIG", config.as_str())]),
        (vec!["ls", "-q"], vec![("BERTH_ADMIN_TOKEN", SECRET)]),
    ] {
        let (ok, stdout, stderr) = run(&args, &vars);
        assert!(ok, "{args:?} {vars:?}: {stderr}");
        assert_eq!(stdout, "kept\n", "{args:?} {vars:?}");
    }
    // An explicit token wins over the config's; a wrong one is refused.
    let (ok, _, stderr) = run(
        &["ls", "-q", "--config", config.as_str()],
        &[("BERTH_ADMIN_TOKEN", "not-the-token")],
    );
    assert!(!ok && stderr.contains("401"), "{stderr}");
    // A config named but unreadable is an error that names it, not a silent tokenless call.
    let (ok, _, stderr) = run(&["ls", "--config", "/nonexistent/berth.toml"], &[]);
    assert!(
        !ok && stderr.contains("/nonexistent/berth.toml"),
        "{stderr}"
    );
}

#[test]
fn the_cli_table_json_inspect_rm_and_a_refused_wipe() {
    let env = Env::new("cli");
    env.seed(|e| {
        let owner = Owner {
            framework_id: Some("marathon".into()),
            app_id: Some("/prod/db".into()),
            task_id: Some("prod_db.1f2e".into()),
            persistence_id: Some("prod_db#pgdata#53ab8732-0000".into()),
            container_path: Some("pgdata".into()),
        };
        create(e, "pgdata", "loop", Some(16 << 20), owner);
        let old = create(e, "old", "plain", None, Owner::default());
        std::fs::write(old.join("kept"), "keep me").unwrap();
        let logs = create(e, "logs", "plain", None, Owner::default());
        std::fs::write(logs.join("app.log"), "hello").unwrap();
        e.publish(
            SEED,
            &name("logs"),
            PublishTarget::Reference {
                holder: "test".into(),
            },
        )
        .unwrap();
    });
    let _daemon = env.start();

    let (ok, table, err) = env.cli(&["ls"]);
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
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
        ],
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert_eq!(&lines[1][..3], ["logs", "attached", "-"], "{table}");
    // Made by berth itself (not a front-end): Docker's until handed over.
    assert_eq!(&lines[1][4..8], ["plain", "root", "docker", "-"], "{table}");
    assert_eq!(&lines[2][..2], ["old", "reserved"], "{table}");
    assert_eq!(&lines[3][..3], ["pgdata", "reserved", "16MiB"], "{table}");
    assert_eq!(
        &lines[3][4..8],
        ["loop", "root", "docker", "prod_db.1f2e"],
        "{table}"
    );

    let (ok, json, err) = env.cli(&["ls", "-o", "json", "--pool", "loop"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&json).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], "pgdata");
    assert_eq!(
        listed[0]["owner"]["persistence_id"],
        "prod_db#pgdata#53ab8732-0000"
    );
    assert_eq!(listed[0]["size_bytes"], 16 << 20);
    assert_eq!(listed[0]["frontend"], "docker");
    let (ok, json, err) = env.cli(&["ls", "-o", "json", "--frontend", "csi"]);
    assert!(ok, "{err}");
    assert_eq!(json.trim(), "[]");
    let (ok, _, err) = env.cli(&["ls", "--frontend", "kubernetes"]);
    assert!(!ok);
    assert!(err.contains("use csi, docker or mesos"), "{err}");

    let (ok, shown, _) = env.cli(&["inspect", "logs"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["publications"][0]["holder"], "test");
    assert!(shown["usage"]["bytes_used"].as_u64().unwrap() > 0);

    let (ok, _, err) = env.cli(&["wipe", "pgdata"]);
    assert!(!ok);
    assert!(
        err.contains("--yes") && err.contains("not a terminal"),
        "{err}"
    );
    let (ok, _, err) = env.cli(&["wipe", "logs", "--yes"]);
    assert!(!ok);
    assert!(err.contains("attached"), "{err}");
    let (ok, _, err) = env.cli(&["inspect", "../etc"]);
    assert!(!ok);
    assert!(err.contains("invalid volume name"), "{err}");
    let (ok, _, err) = env.cli(&["inspect", "ghost"]);
    assert!(!ok);
    assert!(err.contains("404") && err.contains("ghost"), "{err}");

    // rm refuses an attached volume, and on a retain pool keeps the data aside.
    let (ok, out, err) = env.cli(&["rm", "logs"]);
    assert!(!ok, "attached: {out}");
    assert!(err.contains("attached"), "{err}");
    let (ok, out, err) = env.cli(&["rm", "old"]);
    assert!(ok, "{err}");
    assert_eq!(out, "old\n");
    assert!(err.contains("retained"), "{err}");
    let retained: Vec<PathBuf> = std::fs::read_dir(env.path("plain/.retained"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(retained.len(), 1, "{retained:?}");
    assert_eq!(
        std::fs::read_to_string(retained[0].join("data/kept")).unwrap(),
        "keep me"
    );
    let (ok, out, _) = env.cli(&["ls", "-q"]);
    assert!(ok);
    assert_eq!(out, "logs\npgdata\n");
}

#[test]
fn metrics_from_the_daemon_parse_as_prometheus_text() {
    let env = Env::new("metrics");
    env.seed(|e| {
        create(e, "a", "plain", None, Owner::default());
        create(e, "b", "loop", Some(16 << 20), Owner::default());
    });
    let daemon = env.start();
    let (status, _) = daemon.call("DELETE", "/v1/volumes/a?wipe=true");
    assert_eq!(status, 200);
    let (status, _) = daemon.call("DELETE", "/v1/volumes/ghost");
    assert_eq!(status, 404);
    let r = daemon.client.call("GET", "/metrics").unwrap();
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    for line in text.lines() {
        assert!(
            !matches!(
                prometheus_parse::LineInfo::parse(line),
                prometheus_parse::LineInfo::Ignored | prometheus_parse::LineInfo::Empty
            ),
            "{line:?}"
        );
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |metric: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| s.value.clone())
            .unwrap_or_else(|| panic!("no {metric} {labels:?}:\n{text}"))
    };
    use prometheus_parse::Value as V;
    assert_eq!(
        value("berth_volumes", &[("pool", "loop"), ("state", "reserved")]),
        V::Gauge(1.0)
    );
    assert_eq!(
        value("berth_volumes", &[("pool", "plain"), ("state", "reserved")]),
        V::Gauge(0.0)
    );
    assert_eq!(
        value("berth_pool_capacity_bytes", &[("pool", "loop")]),
        V::Gauge((1u64 << 30) as f64)
    );
    assert_eq!(
        value("berth_pool_reserved_bytes", &[("pool", "loop")]),
        V::Gauge((16u64 << 20) as f64)
    );
    assert!(matches!(value("berth_pool_used_bytes", &[("pool", "loop")]), V::Gauge(b) if b > 0.0));
    assert_eq!(
        value(
            "berth_operations_total",
            &[("frontend", "admin"), ("op", "wipe")]
        ),
        V::Counter(1.0)
    );
    assert_eq!(
        value(
            "berth_operation_errors_total",
            &[
                ("frontend", "admin"),
                ("op", "delete"),
                ("kind", "not_found")
            ]
        ),
        V::Counter(1.0)
    );
    assert!(matches!(
        value("berth_operation_duration_seconds", &[("frontend", "admin"), ("op", "wipe")]),
        V::Histogram(b) if b.last().is_some_and(|h| h.less_than.is_infinite() && h.count == 1.0)
    ));
}

#[test]
fn wiping_a_mount_disk_empties_it_and_returns_it_to_the_pool() {
    let mut env = Env::new("disk");
    let disk = env.disk("d1", 64);
    let d = env.dir.display().to_string();
    env.add_pools(&format!(
        "\n[[pools]]\nname = \"disks\"\nkind = \"mount\"\npaths = [\"{d}/disks\"]\nreclaim = \"retain\"\n"
    ));
    let whole = VolumeSpec {
        size: Some(8 << 20),
        kind: Some(berth::engine::types::PoolKind::Mount),
        ..VolumeSpec::default()
    };
    let request = |n: &str| CreateRequest {
        name: name(n),
        spec: whole.clone(),
        owner: Owner::default(),
    };
    let data = env.seed(|e| e.create(SEED, request("whole")).unwrap().placement.data);
    assert!(data.starts_with(&disk), "{}", data.display());
    std::fs::create_dir_all(data.join("db")).unwrap();
    std::fs::write(data.join("db/table"), "rows").unwrap();
    symlink(env.path("outside"), data.join("escape"));
    canary(&env.path("outside"), "outside");
    let daemon = env.start();
    let (_, shown) = daemon.call("GET", "/v1/volumes/whole");
    assert_eq!(
        (shown["kind"].as_str(), shown["backend"].as_str()),
        (Some("mount"), Some("disk"))
    );
    // Input berth cannot honour is 422 on the admin socket: a disk has no room for a copy.
    let (status, body) = daemon.call("POST", "/v1/volumes/whole/snapshots/copy");
    assert_eq!(
        (status, body["kind"].as_str()),
        (422, Some("unsupported")),
        "{body}"
    );
    let (status, body) = daemon.call("DELETE", "/v1/volumes/whole?wipe=true");
    assert_eq!(status, 200, "{body}");
    assert!(!data.exists(), "the volume's data is gone");
    assert_eq!(
        mounts_under(&disk),
        vec![disk.clone()],
        "the disk stays mounted"
    );
    assert_canary(&env.path("outside"), "outside");
    drop(daemon);
    // Empty and unheld, the disk is handed out again.
    let again = env.seed(|e| e.create(SEED, request("again")).map(|v| v.placement.base));
    assert_eq!(again.unwrap(), disk);
}
