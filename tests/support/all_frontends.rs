//! Test support: ONE real `berth serve` with every front-end on at once (CSI, the Docker
//! volume plugin, the admin API on its unix socket and on TCP with a token, and the Mesos
//! hook), as a node that runs Kubernetes, Docker and Marathon side by side has it.
//!
//! Include it with `#[path = "support/all_frontends.rs"] mod all_frontends;`. Each [`Node`]
//! has its own directory under /var/tmp (state, pool, Mesos work directory, token), its own
//! sockets and TCP port, and a Docker plugin socket `/run/docker/plugins/<driver>.sock` with a
//! name unique to the test process. Dropping it stops the daemon and removes everything it
//! made (mounts and loop devices beneath its directory, the directory, the plugin socket),
//! even after a failed assertion. Needs root; without it the test fails, it is not skipped.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth::admin::cli::Client;
use berth::csi::proto::controller_client::ControllerClient;
use berth::csi::proto::node_client::NodeClient;
use berth::csi::proto::volume_capability::access_mode::Mode;
use berth::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use berth::csi::proto::{
    NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest,
    NodeUnstageVolumeRequest, VolumeCapability,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

pub const TOKEN: &str = "three-frontends-token-5e0c";
/// The README's Marathon MySQL app.
const MYSQL: &str = include_str!("../fixtures/marathon/stateful-mysql.json");
const PLUGIN_DIR: &str = "/run/docker/plugins";
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// See the module docs.
pub struct Node {
    child: Option<Child>,
    dir: PathBuf,
    pub driver: String,
    pub docker_socket: PathBuf,
    pub port: u16,
    pub node_id: String,
}

impl Node {
    pub fn start() -> Node {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts filesystems and runs the Mesos hook: run it as root (scripts/test.sh)"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let driver = format!("berth-3fe-{}-{n}", std::process::id());
        let dir = PathBuf::from(format!("/var/tmp/{driver}"));
        if dir.exists() {
            cleanup(&dir);
        }
        for sub in ["pool", "mesos", "k8s"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let docker_socket = PathBuf::from(format!("{PLUGIN_DIR}/{driver}.sock"));
        let node_id = "three-frontends-node".to_string();
        let d = dir.display();
        let config = format!(
            r#"state_dir = "{d}/state"
node_id = "{node_id}"

[listen]
csi = "unix://{d}/csi.sock"
docker = "{docker}"
admin = "{d}/admin.sock"
admin_tcp = "127.0.0.1:{port}"

[admin]
token_file = "{d}/token"

[mesos]
work_dir = "{d}/mesos"

[[pools]]
name = "default"
kind = "root"
paths = ["{d}/pool"]
backend = "loopfs"
capacity = "2GiB"
default_size = "32MiB"
"#,
            docker = docker_socket.display(),
        );
        std::fs::write(dir.join("berth.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("berth.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(dir.join("berth.toml"))
            .env("BERTH_LOG", "info")
            .env_remove("CSI_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let node = Node {
            child: Some(child),
            dir,
            driver,
            docker_socket,
            port,
            node_id,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(node.admin_socket().exists()
            && node.csi_socket().exists()
            && node.docker_socket.exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        {
            assert!(
                Instant::now() < deadline,
                "berth did not open its sockets:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn csi_socket(&self) -> PathBuf {
        self.dir.join("csi.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("berth.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("berth.log")).unwrap_or_default()
    }

    /// One admin API request on the unix socket with the token: status and JSON body.
    pub fn admin(&self, method: &str, path: &str) -> (u16, Value) {
        let client = Client::new(self.admin_socket().to_str().unwrap(), Some(TOKEN)).unwrap();
        let response = client.call(method, path).unwrap();
        let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        (response.status, body)
    }

    /// `GET /v1/volumes/{name}`: the volume as the admin API shows it.
    pub fn volume(&self, name: &str) -> (u16, Value) {
        self.admin("GET", &format!("/v1/volumes/{}", encode(name)))
    }

    /// `berth volume ARGS` against the unix socket, given the token through the daemon's
    /// config file (`--config`), as an operator on the node runs it.
    pub fn cli(&self, args: &[&str]) -> Output {
        berth_command()
            .arg("volume")
            .args(args)
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .arg("--config")
            .arg(self.config_path())
            .output()
            .unwrap()
    }

    /// `berth mesos ARGS --json` with the token file: the hook's answer, or a panic.
    pub fn mesos<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = berth_command()
            .arg("mesos")
            .args(args)
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .arg("--token-file")
            .arg(self.path("token"))
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "berth mesos: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A Marathon task's sandbox beneath the Mesos work directory.
    pub fn sandbox(&self, run: &str) -> PathBuf {
        let dir = self
            .path("mesos/slaves/S0/frameworks/marathon-1/executors/E/runs")
            .join(run);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// One Docker volume plugin call (`/VolumeDriver.*`): status and JSON body.
    pub fn docker_plugin(&self, path: &str, body: Value) -> (u16, Value) {
        let mut stream = UnixStream::connect(&self.docker_socket).unwrap();
        let body = body.to_string();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// The README's MySQL app with its persistent volume alone (its `/var/lib/mysql` alias
    /// needs a container root filesystem) of 32 MiB, written to a file.
    pub fn mysql_app(&self) -> PathBuf {
        let mut app: Value = serde_json::from_str(MYSQL).unwrap();
        let persistent = app["container"]["volumes"][0].clone();
        app["container"]["volumes"] = json!([persistent]);
        app["container"]["volumes"][0]["persistent"]["size"] = json!(32);
        let definition = self.path("mysql.json");
        std::fs::write(&definition, app.to_string()).unwrap();
        definition
    }

    /// CSI controller and node clients on the CSI socket.
    pub async fn csi(&self) -> (ControllerClient<Channel>, NodeClient<Channel>) {
        let endpoint = format!("unix://{}", self.csi_socket().display());
        let channel = berth::csi::connect(&endpoint).await.unwrap();
        (
            ControllerClient::new(channel.clone()),
            NodeClient::new(channel),
        )
    }

    /// What kubelet does for a pod: NodeStageVolume, then NodePublishVolume; the pod's
    /// mount (its target path).
    pub async fn csi_attach(
        &self,
        csi: &mut NodeClient<Channel>,
        id: &str,
    ) -> Result<PathBuf, tonic::Status> {
        let (staging, target) = self.kubelet_paths();
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        csi.node_stage_volume(NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_capability()),
            ..Default::default()
        })
        .await?;
        csi.node_publish_volume(NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(mount_capability()),
            ..Default::default()
        })
        .await?;
        Ok(target)
    }

    /// What kubelet does when the pod goes: NodeUnpublishVolume, then NodeUnstageVolume.
    pub async fn csi_detach(&self, csi: &mut NodeClient<Channel>, id: &str) {
        let (staging, target) = self.kubelet_paths();
        csi.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap();
        csi.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
    }

    /// kubelet's staging and target paths for the one pod these tests run.
    fn kubelet_paths(&self) -> (PathBuf, PathBuf) {
        (self.path("k8s/pv/globalmount"), self.path("k8s/pod/mount"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while !matches!(child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        cleanup(&self.dir);
        let _ = std::fs::remove_file(&self.docker_socket);
        let _ = std::fs::remove_file(self.docker_socket.with_extension("sock.lock"));
    }
}

/// A single-node-writer filesystem volume, as a PVC asks for one.
pub fn mount_capability() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

/// `berth mesos prepare|cleanup` arguments for task `mysql.t1` of framework `marathon-1`
/// in `sandbox` (prepare with the definition).
pub fn task_args(sub: &str, definition: &Path, sandbox: &Path) -> Vec<String> {
    let mut args = vec![sub.to_string()];
    if sub == "prepare" {
        args.push(definition.display().to_string());
    }
    for (flag, value) in [
        ("--task-id", "mysql.t1".to_string()),
        ("--framework-id", "marathon-1".to_string()),
        ("--sandbox", sandbox.display().to_string()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    args
}

/// `berth` with none of the caller's berth settings in its environment.
pub fn berth_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
    for var in [
        "BERTH_ADMIN_SOCKET",
        "BERTH_TOKEN",
        "BERTH_ADMIN_TOKEN",
        "BERTH_TOKEN_FILE",
        "BERTH_CONFIG",
        "RUST_BACKTRACE",
        "MESOS_TASK_ID",
        "MESOS_FRAMEWORK_ID",
        "MESOS_SANDBOX",
    ] {
        command.env_remove(var);
    }
    command.stdin(Stdio::null());
    command
}

/// A volume name in a URL path (`#` would end it).
pub fn encode(name: &str) -> String {
    name.replace('%', "%25").replace('#', "%23")
}

/// Unmounts everything beneath `dir` (deepest first), detaches the loop devices whose
/// images lie beneath it and removes it.
fn cleanup(dir: &Path) {
    for _ in 0..3 {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    for entry in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let backing = entry.path().join("loop/backing_file");
        if let Ok(file) = std::fs::read_to_string(&backing)
            && Path::new(file.trim()).starts_with(dir)
        {
            let device = Path::new("/dev").join(entry.file_name());
            let _ = Command::new("losetup").arg("-d").arg(device).status();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
