//! `berth mesos validate|prepare|cleanup` as an operator or a Mesos agent runs them: the real
//! binary, talking HTTP over a real unix socket to the Mesos hook. The hook is served here in
//! process over the engine on the fake host, so this needs no root; `mesos_postgres.rs` runs
//! the same commands against a real daemon on the real kernel.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use berth::config::MesosConfig;
use berth::engine::pool::PoolConfig;
use berth::engine::types::{VolumeFilter, VolumeState};
use berth::engine::{Engine, EngineConfig, NodeInfo, VolumeService};
use berth::host::fake::FakeHost;
use berth::server::http::{HttpLimits, Reply};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/marathon");

fn berth(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
    command.args(args);
    for var in [
        "MESOS_TASK_ID",
        "MESOS_FRAMEWORK_ID",
        "MESOS_SANDBOX",
        "BERTH_ADMIN_SOCKET",
        "BERTH_TOKEN",
        "BERTH_ADMIN_TOKEN",
        "BERTH_CONFIG",
        "BERTH_TOKEN_FILE",
        "RUST_BACKTRACE",
    ] {
        command.env_remove(var);
    }
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("running berth")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_the_documented_examples() {
    for (file, summary) in [
        ("stateful-mysql.json", "valid app /mysql"),
        ("stateful-postgres.json", "valid app /postgres"),
        (
            "persistent-volume-pod.json",
            "valid pod /persistent-volume-pod",
        ),
    ] {
        let out = run(&mut berth(&[
            "mesos",
            "validate",
            &format!("{FIXTURES}/{file}"),
        ]));
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(summary), "{}", text(&out.stdout));
    }
    let out = run(&mut berth(&[
        "mesos",
        "validate",
        &format!("{FIXTURES}/persistent-volume-pod.json"),
    ]));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("container container1 mounts pst at pst1 (rw)"),
        "{stdout}"
    );
}

#[test]
fn validate_prints_every_violation_with_its_json_path_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"id": "/db", "container": {"volumes": [
            {"containerPath": "/var/lib/db", "mode": "RW", "persistent": {"size": 0}},
            {"containerPath": "/data", "hostPath": "nothing", "mode": "RW"}
        ]}}"#,
    )
    .unwrap();
    let out = run(&mut berth(&["mesos", "validate", broken.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for line in [
        "container.volumes[0].containerPath: must be a single relative path segment",
        "container.volumes[0].persistent.size: \"0\" is not a size: a size must be greater than zero",
        "container.volumes[1].hostPath: \"nothing\" does not name a persistent volume",
        "unreachableStrategy: must be \"disabled\"",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    assert!(
        text(&out.stderr).contains("breaks 4 of Marathon's rules"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&mut berth(&["mesos", "validate", "/nonexistent/app.json"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/app.json"));
}

/// The hook on a unix socket, as the admin API serves it, over an engine on the fake host.
struct Hook {
    dir: tempfile::TempDir,
    socket: PathBuf,
    work_dir: PathBuf,
    engine: Arc<dyn VolumeService>,
    /// Serves the socket until dropped.
    _runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Hook {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = PoolConfig::default_root(Path::new("/pool"));
        pool.paths = vec![PathBuf::from("/pool/volumes")];
        pool.capacity = Some(100 << 30);
        let host = FakeHost::new(1 << 40);
        host.add_dir(Path::new("/pool/volumes"));
        let engine: Arc<dyn VolumeService> = Arc::new(
            Engine::open(
                EngineConfig {
                    store_path: dir.path().join("berth.redb"),
                    pools: vec![pool],
                    node: NodeInfo::default(),
                },
                host,
            )
            .unwrap(),
        );
        let work_dir = dir.path().join("mesos");
        std::fs::create_dir(&work_dir).unwrap();
        let config = MesosConfig {
            work_dir: work_dir.clone(),
        };
        let socket = dir.path().join("admin.sock");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = {
            let _entered = runtime.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        let served = Arc::clone(&engine);
        runtime.spawn(async move {
            let listener = Arc::new(listener);
            berth::server::http::serve(
                move || {
                    let listener = Arc::clone(&listener);
                    async move { listener.accept().await.map(|(stream, _)| stream) }
                },
                move |req| {
                    let engine = Arc::clone(&served);
                    let config = config.clone();
                    async move {
                        berth::mesos::hook::handle(&engine, &config, &req)
                            .await
                            .unwrap_or_else(|| Reply::text(404, "not a Mesos path"))
                    }
                },
                HttpLimits::default(),
                |status, message| Reply::text(status, message),
                async move {
                    let _ = stopped.await;
                },
            )
            .await;
        });
        Self {
            dir,
            socket,
            work_dir,
            engine,
            _runtime: runtime,
            stop: Some(stop),
        }
    }

    fn sandbox(&self, run: &str) -> PathBuf {
        let dir = self
            .work_dir
            .join("slaves/S0/frameworks/F/executors/E/runs")
            .join(run);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rootfs(&self, run: &str) -> PathBuf {
        let dir = self
            .work_dir
            .join("provisioner/containers")
            .join(run)
            .join("rootfs");
        std::fs::create_dir_all(dir.join("var/lib")).unwrap();
        dir
    }

    /// `berth mesos SUBCOMMAND` for task `task` in run `run`, with the Mesos environment.
    fn command(&self, subcommand: &str, task: &str, run: &str) -> Command {
        let mut command = berth(&["mesos", subcommand]);
        command
            .env("MESOS_TASK_ID", task)
            .env("MESOS_FRAMEWORK_ID", "fw-1")
            .env("MESOS_SANDBOX", self.sandbox(run))
            .env("BERTH_ADMIN_SOCKET", &self.socket)
            .arg("--rootfs")
            .arg(self.rootfs(run));
        command
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[test]
fn prepare_and_cleanup_talk_to_the_hook_over_the_admin_socket() {
    let hook = Hook::start();
    let app = format!("{FIXTURES}/stateful-mysql.json");

    let out = run(hook.command("prepare", "mysql.t1", "c1").arg(&app));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let first_line = stdout.lines().next().unwrap();
    assert!(first_line.starts_with("mysql#mysqldata#"), "{stdout}");
    assert!(
        first_line.ends_with("(mysqldata): created, 1000MiB"),
        "{stdout}"
    );
    let sandbox = hook.sandbox("c1").canonicalize().unwrap();
    let rootfs = hook.rootfs("c1").canonicalize().unwrap();
    assert!(
        stdout.contains(&format!(
            "mounted at {}",
            sandbox.join("mysqldata").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "mounted at {}",
            rootfs.join("var/lib/mysql").display()
        )),
        "{stdout}"
    );
    let name = first_line.split(' ').next().unwrap().to_string();

    // Again, as JSON: the same volume, the task's own.
    let out = run(hook
        .command("prepare", "mysql.t1", "c1")
        .arg(&app)
        .arg("--json"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["volumes"][0]["volume"], name.as_str());
    assert_eq!(reply["volumes"][0]["origin"]["kind"], "relaunched");

    let out = run(&mut hook.command("cleanup", "mysql.t1", "c1"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with(&format!("{name}: detached")), "{stdout}");
    assert!(stdout.contains("unmounted"), "{stdout}");
    let volumes = hook.engine.list(&VolumeFilter::default());
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].state(), VolumeState::Detached);

    // A new instance of the app takes the detached volume over.
    let out = run(hook.command("prepare", "mysql.t2", "c2").arg(&app));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!(
            "{name} (mysqldata): reused (detached, was task mysql.t1)"
        )),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn refusals_reach_the_operator_with_the_daemons_reason() {
    let hook = Hook::start();
    let app = format!("{FIXTURES}/stateful-mysql.json");

    // A sandbox outside the agent work directory.
    let outside = hook.dir.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    let out = run(hook
        .command("prepare", "t1", "c1")
        .arg(&app)
        .arg("--sandbox")
        .arg(&outside));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("berth refused (403)"), "{stderr}");
    assert!(
        stderr.contains("not beneath the Mesos agent work directory"),
        "{stderr}"
    );

    // A broken definition never leaves the client.
    let broken = hook.dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"id": "/x", "container": {"volumes": [{"containerPath": "a/b", "persistent": {"size": 1}}]}, "unreachableStrategy": "disabled"}"#).unwrap();
    let out = run(hook.command("prepare", "t1", "c1").arg(&broken));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("container.volumes[0].containerPath"),
        "{}",
        text(&out.stdout)
    );

    // No daemon at the socket.
    let out = run(hook
        .command("cleanup", "t1", "c1")
        .arg("--admin-socket")
        .arg(hook.dir.path().join("none.sock")));
    assert_eq!(out.status.code(), Some(3), "daemon unreachable");
    assert!(
        text(&out.stderr).contains("is `berth serve` running"),
        "{}",
        text(&out.stderr)
    );

    // Required task facts are named.
    let out = run(&mut berth(&["mesos", "cleanup", "--sandbox", "/x"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--task-id"),
        "{}",
        text(&out.stderr)
    );

    assert!(hook.engine.list(&VolumeFilter::default()).is_empty());
}
