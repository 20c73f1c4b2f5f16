//! berth in containers, against a real (private) dockerd. Needs root, docker.io and
//! busybox-static (see tests/support/dockerd.rs).
//!
//! - The Docker managed plugin (`packaging/docker-plugin/build.sh`): `docker plugin
//!   create`, `enable`, `docker volume create -d PLUGIN --opt size=…`, one container writes
//!   and another reads, the size is enforced, `disable` and `enable` keep the volume.
//! - The container image (`packaging/container/build.sh`) running the Marathon app's own
//!   command and config (`packaging/marathon/berth.json`) with its host mounts: the health
//!   check Marathon makes, `GET /healthz` on the admin TCP port, answers 200.

// The shared harness predates the crate-wide unsafe-comment lint (reported to its owner).
#[allow(clippy::undocumented_unsafe_blocks)]
#[path = "support/dockerd.rs"]
mod dockerd;
#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/release.rs"]
mod release;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dockerd::{Dockerd, IMAGE, unique_name};
use harness::cleanup::Scratch;
use release::{expected_version_line, release_binary, script};

/// The environment the packaging scripts need to reach this dockerd with its own CLI.
fn docker_env(d: &Dockerd) -> Vec<(String, String)> {
    vec![
        ("DOCKER".into(), "/usr/bin/docker".into()),
        ("DOCKER_HOST".into(), d.host().to_string()),
        (
            "DOCKER_CONFIG".into(),
            d.base_dir().join("cli").display().to_string(),
        ),
        (
            "BERTH_BINARY".into(),
            release_binary().display().to_string(),
        ),
    ]
}

fn run_script(d: &Dockerd, path: &str, args: &[&str]) -> String {
    let env = docker_env(d);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = script(path, args, &env);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the plugin (and its volumes) while dockerd still runs; declared after the
/// `Dockerd`, so it drops first.
struct PluginGuard<'a> {
    d: &'a Dockerd,
    name: String,
    volumes: Vec<String>,
}

impl Drop for PluginGuard<'_> {
    fn drop(&mut self) {
        for v in &self.volumes {
            let _ = self.d.docker(&["volume", "rm", "-f", v]);
        }
        let _ = self.d.docker(&["plugin", "disable", "-f", &self.name]);
        let _ = self.d.docker(&["plugin", "rm", "-f", &self.name]);
    }
}

#[test]
fn managed_plugin_serves_volumes_across_disable_and_enable() {
    let started = Instant::now();
    release_binary();
    let d = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    let name = unique_name("berth-plugin");
    let volume = "berth-plugin-data";
    let guard = PluginGuard {
        d: &d,
        name: name.clone(),
        volumes: vec![volume.to_string()],
    };
    run_script(&d, "packaging/docker-plugin/build.sh", &[&name]);
    let created = started.elapsed();
    d.docker_ok(&["plugin", "enable", &name]);
    let enabled = started.elapsed();
    let listed = d.docker_ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    assert!(listed.contains(&format!("{name}:latest true")), "{listed}");

    d.docker_ok(&[
        "volume",
        "create",
        "-d",
        &name,
        "--opt",
        "size=16MiB",
        volume,
    ]);
    let driver = d.docker_ok(&["volume", "inspect", "--format", "{{.Driver}}", volume]);
    assert_eq!(driver, format!("{name}:latest"));
    let mount = format!("{volume}:/data");
    // One container writes; the volume is its own filesystem of at least 16 MiB.
    let df = d.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "echo written-by-one > /data/file && sync && df -k /data | tail -n 1",
    ]);
    let size_kib: u64 = df
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("df: {df}"));
    // At least the 16 MiB asked for, at most 8 MiB more (the README's rule).
    assert!(
        (16 * 1024..=24 * 1024).contains(&size_kib),
        "the volume is not a 16 MiB filesystem: {df}"
    );
    // Another reads.
    let read = d.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &mount,
        IMAGE,
        "cat",
        "/data/file",
    ]);
    assert_eq!(read, "written-by-one");

    // Disable (forced: dockerd counts the volume as a use of the plugin) and enable.
    d.docker_ok(&["plugin", "disable", "-f", &name]);
    let listed = d.docker_ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    assert!(listed.contains(&format!("{name}:latest false")), "{listed}");
    d.docker_ok(&["plugin", "enable", &name]);
    let volumes = d.docker_ok(&["volume", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(
        volumes.contains(&format!("{volume} {name}:latest")),
        "{volumes}"
    );
    let read = d.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "cat /data/file && df -k /data | tail -n 1",
    ]);
    let mut lines = read.lines();
    assert_eq!(lines.next(), Some("written-by-one"), "{read}");
    assert!(
        lines
            .next()
            .is_some_and(|l| l.contains(&size_kib.to_string())),
        "{read}"
    );

    // Clean removal: the volume, then the plugin.
    d.docker_ok(&["volume", "rm", volume]);
    d.docker_ok(&["plugin", "disable", &name]);
    d.docker_ok(&["plugin", "rm", &name]);
    drop(guard);
    eprintln!(
        "managed plugin: created after {created:?}, enabled after {enabled:?}, done in {:?}",
        started.elapsed()
    );
}

/// A directory that is its own shared mount, as `docker run -v SRC:DST:rshared` demands of
/// its source (a systemd host's `/` is shared; this test machine's may not be).
struct SharedDir {
    dir: Scratch,
}

impl SharedDir {
    fn new() -> Self {
        let dir = Scratch::new("berth-marathon-");
        let path = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: mount(2) with valid C strings; a bind of the directory onto itself.
        unsafe {
            assert_eq!(
                libc::mount(
                    path.as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null()
                ),
                0
            );
            assert_eq!(
                libc::mount(
                    std::ptr::null(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_SHARED | libc::MS_REC,
                    std::ptr::null()
                ),
                0
            );
        }
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

#[test]
fn container_image_runs_the_marathon_app_and_passes_its_health_check() {
    let started = Instant::now();
    release_binary();
    let d = Dockerd::start().unwrap_or_else(|e| panic!("{e}"));
    let tag = format!("{}:test", unique_name("berth-image"));
    assert_eq!(run_script(&d, "packaging/container/build.sh", &[&tag]), tag);
    let version = d.docker_ok(&["run", "--rm", "--network", "none", &tag, "--version"]);
    assert_eq!(version, expected_version_line());

    // The Marathon app as Mesos' Docker containerizer would run it: its cmd through
    // /bin/sh, its env, its docker parameters, host networking. Only the host directories
    // (temporary here) and the port (a free one) differ.
    let app: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(release::repo().join("packaging/marathon/berth.json")).unwrap(),
    )
    .unwrap();
    let port = free_port();
    let declared = app["portDefinitions"][0]["port"].as_u64().unwrap();
    let config = app["env"]["BERTH_CONFIG_TOML"]
        .as_str()
        .unwrap()
        .replace(&format!(":{declared}\""), &format!(":{port}\""));
    assert!(config.contains(&format!("127.0.0.1:{port}")), "{config}");
    let host = SharedDir::new();
    let host_dir = |inside: &str| -> PathBuf {
        if inside == "/dev" {
            return PathBuf::from("/dev");
        }
        let p = host.path().join(inside.trim_start_matches('/'));
        fs::create_dir_all(&p).unwrap();
        p
    };
    let container = unique_name("berth-marathon");
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        container.clone(),
        "--network".into(),
        "host".into(),
        "--entrypoint".into(),
        "/bin/sh".into(),
    ];
    // Mesos passes each docker parameter as `--key=value`.
    assert_eq!(app["container"]["docker"]["privileged"], false);
    for param in app["container"]["docker"]["parameters"].as_array().unwrap() {
        let key = param["key"].as_str().unwrap();
        let value = param["value"].as_str().unwrap();
        let value = if key == "volume" {
            let mut parts = value.splitn(3, ':');
            let (_host, inside) = (parts.next().unwrap(), parts.next().unwrap());
            let mode = parts.next().map(|m| format!(":{m}")).unwrap_or_default();
            format!("{}:{inside}{mode}", host_dir(inside).display())
        } else {
            value.to_string()
        };
        args.push(format!("--{key}={value}"));
    }
    for (key, value) in app["env"].as_object().unwrap() {
        let value = if key == "BERTH_CONFIG_TOML" {
            config.clone()
        } else {
            value.as_str().unwrap().to_string()
        };
        args.push("-e".into());
        args.push(format!("{key}={value}"));
    }
    args.push(tag.clone());
    args.push("-c".into());
    args.push(app["cmd"].as_str().unwrap().to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    d.docker_ok(&argv);

    // Marathon's MESOS_HTTP check: GET /healthz on 127.0.0.1:PORT0, no token.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply = loop {
        if let Some(reply) = http_get(port, "/healthz")
            && reply.starts_with("HTTP/1.1 200")
        {
            break reply;
        }
        if Instant::now() > deadline {
            let logs = d.docker(&["logs", &container]);
            panic!(
                "no healthy /healthz on port {port} in 60 s; berth's log:\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reply.ends_with("ok\n"), "{reply}");
    // Everything else on TCP needs the token the command generated on the host.
    let refused = http_get(port, "/v1/volumes").unwrap();
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let token_path = host.path().join("etc/berth/admin.token");
    let token = fs::read_to_string(&token_path).unwrap();
    assert_eq!(token.len(), 64, "{token:?}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    let mode = fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The sockets and state appear on the host, where the Mesos hook and dvdcli look.
    assert!(host.path().join("run/berth/admin.sock").exists());
    assert!(host.path().join("run/docker/plugins/berth.sock").exists());
    assert!(host.path().join("var/lib/berth/berth.redb").exists());

    // Marathon stops tasks with SIGTERM: berth exits cleanly and removes its sockets.
    d.docker_ok(&["stop", "-t", "30", &container]);
    let code = d.docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &container]);
    assert_eq!(code, "0");
    assert!(!host.path().join("run/berth/admin.sock").exists());
    d.docker_ok(&["rm", &container]);
    d.docker_ok(&["image", "rm", &tag]);
    eprintln!(
        "container image + Marathon command: {:?}",
        started.elapsed()
    );
}
