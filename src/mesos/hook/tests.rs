//! The hook in process, over the engine on the recording fake host: every request goes
//! through [`handle`] as the admin router will send it. Sandboxes and root filesystems are
//! real temporary directories (the hook checks them on disk); the mounts are the fake's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::ids::persistence_id;
use super::*;
use crate::engine::pool::PoolConfig;
use crate::engine::types::{
    MAX_NAME_LEN, Owner, PoolKind, PublishTarget, Volume, VolumeFilter, VolumeName, VolumeState,
};
use crate::engine::{Engine, EngineConfig, NodeInfo};
use crate::host::fake::FakeHost;
use crate::mesos::api::{CleanupReply, MountPoint, Origin, PrepareReply};

const MYSQL_APP: &str = include_str!("../../../tests/fixtures/marathon/stateful-mysql.json");
const POSTGRES_APP: &str = include_str!("../../../tests/fixtures/marathon/stateful-postgres.json");
const PERSISTENT_POD: &str =
    include_str!("../../../tests/fixtures/marathon/persistent-volume-pod.json");
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// An agent: a work directory on disk, and the engine over the fake host.
struct Agent {
    dir: tempfile::TempDir,
    engine: Arc<Engine<FakeHost>>,
    config: MesosConfig,
}

impl Agent {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = PoolConfig::default_root(Path::new("/pool"));
        pool.paths = vec![PathBuf::from("/pool/volumes")];
        pool.capacity = Some(100 * GIB);
        let host = FakeHost::new(1 << 40);
        host.add_dir(Path::new("/pool/volumes"));
        let engine = Engine::open(
            EngineConfig {
                store_path: dir.path().join("berth.redb"),
                pools: vec![pool],
                node: NodeInfo::default(),
            },
            host,
        )
        .unwrap();
        let work_dir = dir.path().join("mesos");
        std::fs::create_dir(&work_dir).unwrap();
        Self {
            dir,
            engine: Arc::new(engine),
            config: MesosConfig { work_dir },
        }
    }

    fn work_dir(&self) -> &Path {
        &self.config.work_dir
    }

    /// A run's sandbox, laid out as the Mesos agent does.
    fn sandbox(&self, run: &str) -> PathBuf {
        let dir = self
            .work_dir()
            .join("slaves/S0/frameworks/F/executors/E/runs")
            .join(run);
        std::fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    /// A container root filesystem with `/var` (as the provisioner leaves it).
    fn rootfs(&self, run: &str) -> PathBuf {
        let dir = self
            .work_dir()
            .join("provisioner/containers")
            .join(run)
            .join("rootfs");
        std::fs::create_dir_all(dir.join("var")).unwrap();
        dir.canonicalize().unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(hyper::Method::POST, path, body.to_string().into_bytes())
            .await
            .unwrap_or_else(|| panic!("{path} was not answered"))
    }

    async fn send(&self, method: hyper::Method, path: &str, body: Vec<u8>) -> Option<(u16, Value)> {
        let engine: Arc<dyn VolumeService> = self.engine.clone();
        let request = Request {
            method,
            uri: path.parse().unwrap(),
            headers: hyper::HeaderMap::new(),
            body: body.into(),
            upload: None,
        };
        let reply = handle(&engine, &self.config, &request).await?;
        assert_eq!(reply.content_type, "application/json");
        Some((reply.status, serde_json::from_slice(&reply.body).unwrap()))
    }

    async fn prepare(&self, body: Value) -> (u16, Value) {
        self.post(PREPARE_PATH, &body).await
    }

    async fn prepare_ok(&self, body: Value) -> PrepareReply {
        let (status, reply) = self.prepare(body).await;
        assert_eq!(status, 200, "{reply:#}");
        serde_json::from_value(reply).unwrap()
    }

    async fn cleanup_ok(&self, body: Value) -> CleanupReply {
        let (status, reply) = self.post(CLEANUP_PATH, &body).await;
        assert_eq!(status, 200, "{reply:#}");
        serde_json::from_value(reply).unwrap()
    }

    fn volumes(&self) -> Vec<Volume> {
        self.engine
            .list(&VolumeFilter::default())
            .iter()
            .map(|v| Volume::clone(v))
            .collect()
    }

    fn volume(&self, name: &str) -> Volume {
        self.engine.get(&VolumeName::parse(name).unwrap()).unwrap()
    }

    fn mounted(&self, path: &Path) -> Option<bool> {
        self.engine.host().mounted_at(path).map(|(_, ro)| ro)
    }
}

fn prepare_body(definition: &str, task: &str, sandbox: &Path, rootfs: Option<&Path>) -> Value {
    let mut layout = json!({ "sandbox": sandbox });
    if let Some(rootfs) = rootfs {
        layout["rootfs"] = json!(rootfs);
    }
    json!({
        "definition": serde_json::from_str::<Value>(definition).unwrap(),
        "task_id": task,
        "framework_id": "fw-1",
        "layout": layout,
    })
}

fn cleanup_body(task: &str, sandbox: &Path, rootfs: Option<&Path>) -> Value {
    let mut body = prepare_body("{}", task, sandbox, rootfs);
    body.as_object_mut().unwrap().remove("definition");
    body
}

fn edited(definition: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut document: Value = serde_json::from_str(definition).unwrap();
    edit(&mut document);
    document.to_string()
}

fn error_of(reply: &Value) -> &str {
    reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {reply:#}"))
}

fn is_uuid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && text.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        && parts[2].starts_with('4')
}

#[tokio::test]
async fn app_prepare_mounts_the_volume_in_the_sandbox_and_the_alias_in_the_rootfs() {
    let agent = Agent::new();
    let (sandbox, rootfs) = (agent.sandbox("c1"), agent.rootfs("c1"));
    let body = prepare_body(MYSQL_APP, "mysql.t1", &sandbox, Some(&rootfs));
    let reply = agent.prepare_ok(body.clone()).await;

    assert_eq!(reply.volumes.len(), 1);
    let prepared = &reply.volumes[0];
    assert_eq!(prepared.origin, Origin::Created);
    assert_eq!(prepared.container_path, "mysqldata");
    assert_eq!(prepared.size, Some(1000 * MIB));
    let uuid = prepared.volume.strip_prefix("mysql#mysqldata#").unwrap();
    assert!(is_uuid(uuid), "{}", prepared.volume);
    let alias = rootfs.join("var/lib/mysql");
    assert_eq!(
        prepared.mounts,
        vec![
            MountPoint {
                path: sandbox.join("mysqldata"),
                read_only: false
            },
            MountPoint {
                path: alias.clone(),
                read_only: false
            },
        ]
    );
    assert_eq!(agent.mounted(&sandbox.join("mysqldata")), Some(false));
    assert_eq!(agent.mounted(&alias), Some(false));
    assert!(
        agent.engine.host().is_dir(&rootfs.join("var/lib")),
        "the alias's parent is made, by the host layer"
    );

    let v = agent.volume(&prepared.volume);
    assert_eq!(
        v.owner,
        Owner {
            framework_id: Some("fw-1".into()),
            app_id: Some("/mysql".into()),
            task_id: Some("mysql.t1".into()),
            persistence_id: Some(prepared.volume.clone()),
            container_path: Some("mysqldata".into()),
        }
    );
    assert_eq!(v.spec.kind, Some(PoolKind::Root));
    assert_eq!(v.state(), VolumeState::Attached);

    // Prepare again (a retry): the same volume, nothing new.
    let calls = agent.engine.host().call_count();
    let again = agent.prepare_ok(body).await;
    assert_eq!(again.volumes[0].volume, prepared.volume);
    assert_eq!(again.volumes[0].origin, Origin::Relaunched);
    assert_eq!(agent.volumes().len(), 1);
    assert!(
        agent.engine.host().calls()[calls..]
            .iter()
            .all(|c| c.op != "bind_mount" && c.op != "create_image"),
        "nothing mounted or made twice"
    );
}

#[tokio::test]
async fn cleanup_detaches_and_a_relaunch_gets_the_same_volume_back() {
    let agent = Agent::new();
    let (sandbox, rootfs) = (agent.sandbox("c1"), agent.rootfs("c1"));
    let name = agent
        .prepare_ok(prepare_body(MYSQL_APP, "mysql.t1", &sandbox, Some(&rootfs)))
        .await
        .volumes[0]
        .volume
        .clone();

    let cleaned = agent
        .cleanup_ok(cleanup_body("mysql.t1", &sandbox, Some(&rootfs)))
        .await;
    assert_eq!(cleaned.volumes.len(), 1);
    assert_eq!(cleaned.volumes[0].volume, name);
    assert_eq!(cleaned.volumes[0].state, "detached");
    let mut unmounted = cleaned.volumes[0].unmounted.clone();
    unmounted.sort();
    assert_eq!(
        unmounted,
        vec![rootfs.join("var/lib/mysql"), sandbox.join("mysqldata")]
    );
    assert_eq!(
        agent.engine.host().mount_count(),
        1,
        "only the volume's own filesystem"
    );
    assert_eq!(agent.volume(&name).state(), VolumeState::Detached);

    // Again: nothing left to do, still detached, still reserved.
    let again = agent
        .cleanup_ok(cleanup_body("mysql.t1", &sandbox, Some(&rootfs)))
        .await;
    assert!(again.volumes[0].unmounted.is_empty());
    assert_eq!(again.volumes[0].state, "detached");

    // The relaunch runs in a new sandbox and root filesystem, with the same task id.
    let (sandbox2, rootfs2) = (agent.sandbox("c2"), agent.rootfs("c2"));
    let relaunch = agent
        .prepare_ok(prepare_body(
            MYSQL_APP,
            "mysql.t1",
            &sandbox2,
            Some(&rootfs2),
        ))
        .await;
    assert_eq!(relaunch.volumes[0].volume, name);
    assert_eq!(relaunch.volumes[0].origin, Origin::Relaunched);
    assert_eq!(agent.mounted(&sandbox2.join("mysqldata")), Some(false));
    assert_eq!(agent.mounted(&sandbox.join("mysqldata")), None);
    assert_eq!(agent.volumes().len(), 1);
}

#[tokio::test]
async fn a_mount_inside_another_volume_is_unmounted_first() {
    let agent = Agent::new();
    // Volume "inner" is also mounted at a relative, nested path inside volume "outer".
    let nested = edited(MYSQL_APP, |doc| {
        doc["container"]["volumes"] = json!([
            { "containerPath": "inner", "mode": "RW", "persistent": { "size": 10 } },
            { "containerPath": "outer", "mode": "RW", "persistent": { "size": 10 } },
            { "containerPath": "outer/inner", "hostPath": "inner", "mode": "RO" },
        ]);
    });
    let sandbox = agent.sandbox("c1");
    let reply = agent
        .prepare_ok(prepare_body(&nested, "t1", &sandbox, None))
        .await;
    assert_eq!(reply.volumes[0].mounts[1].path, sandbox.join("outer/inner"));
    assert_eq!(agent.mounted(&sandbox.join("outer/inner")), Some(true));
    let binds: Vec<PathBuf> = agent
        .engine
        .host()
        .calls()
        .iter()
        .filter(|c| c.op == "bind_mount")
        .map(|c| c.path.clone())
        .collect();
    let position = |p: &str| binds.iter().position(|b| *b == sandbox.join(p)).unwrap();
    assert!(position("outer") < position("outer/inner"), "{binds:?}");
    let before = agent.engine.host().call_count();
    agent.cleanup_ok(cleanup_body("t1", &sandbox, None)).await;
    let unmounts: Vec<PathBuf> = agent.engine.host().calls()[before..]
        .iter()
        .filter(|c| c.op == "unmount")
        .map(|c| c.path.clone())
        .collect();
    let inner = sandbox.join("outer/inner");
    let outer = sandbox.join("outer");
    let last_inner = unmounts.iter().rposition(|p| *p == inner).unwrap();
    let first_outer = unmounts.iter().position(|p| *p == outer).unwrap();
    assert!(last_inner < first_outer, "{unmounts:?}");
}

#[tokio::test]
async fn scale_up_adopts_a_detached_volume_never_an_attached_one() {
    let agent = Agent::new();
    let mut names = Vec::new();
    for task in ["t1", "t2"] {
        let (sandbox, rootfs) = (agent.sandbox(task), agent.rootfs(task));
        let reply = agent
            .prepare_ok(prepare_body(MYSQL_APP, task, &sandbox, Some(&rootfs)))
            .await;
        assert_eq!(reply.volumes[0].origin, Origin::Created);
        names.push(reply.volumes[0].volume.clone());
    }
    assert_ne!(names[0], names[1]);
    // Scale down: t2 ends.
    agent
        .cleanup_ok(cleanup_body(
            "t2",
            &agent.sandbox("t2"),
            Some(&agent.rootfs("t2")),
        ))
        .await;

    // Scale up: t3 takes over t2's volume; t1's is attached and stays t1's.
    let (sandbox, rootfs) = (agent.sandbox("t3"), agent.rootfs("t3"));
    let reply = agent
        .prepare_ok(prepare_body(MYSQL_APP, "t3", &sandbox, Some(&rootfs)))
        .await;
    assert_eq!(reply.volumes[0].volume, names[1]);
    assert_eq!(
        reply.volumes[0].origin,
        Origin::Adopted {
            from_task: Some("t2".into())
        }
    );
    let adopted = agent.volume(&names[1]);
    assert_eq!(adopted.owner.task_id.as_deref(), Some("t3"));
    assert_eq!(
        adopted.owner.persistence_id.as_deref(),
        Some(names[1].as_str())
    );
    assert_eq!(adopted.state(), VolumeState::Attached);
    assert_eq!(agent.volume(&names[0]).owner.task_id.as_deref(), Some("t1"));

    // Nothing detached is left: a fourth instance gets a new volume.
    let (sandbox, rootfs) = (agent.sandbox("t4"), agent.rootfs("t4"));
    let reply = agent
        .prepare_ok(prepare_body(MYSQL_APP, "t4", &sandbox, Some(&rootfs)))
        .await;
    assert_eq!(reply.volumes[0].origin, Origin::Created);
    assert_eq!(agent.volumes().len(), 3);

    // The same app written without its leading slash is the same app.
    agent
        .cleanup_ok(cleanup_body("t4", &sandbox, Some(&rootfs)))
        .await;
    let relative = edited(MYSQL_APP, |doc| doc["id"] = json!("mysql"));
    let reply = agent
        .prepare_ok(prepare_body(&relative, "t4", &sandbox, Some(&rootfs)))
        .await;
    assert_eq!(reply.volumes[0].origin, Origin::Relaunched);

    // Another framework's detached volume of an app with the same id is not taken.
    agent
        .cleanup_ok(cleanup_body("t4", &sandbox, Some(&rootfs)))
        .await;
    let mut other = prepare_body(
        MYSQL_APP,
        "t5",
        &agent.sandbox("t5"),
        Some(&agent.rootfs("t5")),
    );
    other["framework_id"] = json!("fw-2");
    let reply = agent.prepare_ok(other).await;
    assert_eq!(reply.volumes[0].origin, Origin::Created);
}

#[tokio::test]
async fn volumes_of_one_old_instance_move_together() {
    let agent = Agent::new();
    let two_volumes = edited(MYSQL_APP, |doc| {
        let volumes = doc["container"]["volumes"].as_array_mut().unwrap();
        volumes.truncate(1);
        let mut logs = volumes[0].clone();
        logs["containerPath"] = json!("logs");
        volumes.push(logs);
    });
    let mut owned: Vec<Vec<String>> = Vec::new();
    for task in ["a", "b"] {
        let reply = agent
            .prepare_ok(prepare_body(&two_volumes, task, &agent.sandbox(task), None))
            .await;
        owned.push(reply.volumes.iter().map(|v| v.volume.clone()).collect());
    }
    for task in ["a", "b"] {
        agent
            .cleanup_ok(cleanup_body(task, &agent.sandbox(task), None))
            .await;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Make b's logs the longest detached, so that only the preference for one donor keeps
    // a's volumes together.
    let a_logs = VolumeName::parse(&owned[0][1]).unwrap();
    let elsewhere = PublishTarget::Bind {
        path: PathBuf::from("/elsewhere"),
        read_only: false,
    };
    agent
        .engine
        .publish(CALLER, &a_logs, elsewhere.clone())
        .unwrap();
    agent.engine.unpublish(CALLER, &a_logs, &elsewhere).unwrap();

    let reply = agent
        .prepare_ok(prepare_body(&two_volumes, "c", &agent.sandbox("c"), None))
        .await;
    let taken: Vec<String> = reply.volumes.iter().map(|v| v.volume.clone()).collect();
    assert_eq!(taken, owned[0], "a's data and a's logs");
    for v in &reply.volumes {
        assert_eq!(
            v.origin,
            Origin::Adopted {
                from_task: Some("a".into())
            }
        );
    }
}

#[tokio::test]
async fn changing_size_type_or_profile_is_refused_and_changes_nothing() {
    let agent = Agent::new();
    let (sandbox, rootfs) = (agent.sandbox("c1"), agent.rootfs("c1"));
    let name = agent
        .prepare_ok(prepare_body(MYSQL_APP, "t1", &sandbox, Some(&rootfs)))
        .await
        .volumes[0]
        .volume
        .clone();
    agent
        .cleanup_ok(cleanup_body("t1", &sandbox, Some(&rootfs)))
        .await;

    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 3] = [
        ("persistent.size asks 2000 MiB but it has 1000 MiB", |doc| {
            doc["container"]["volumes"][0]["persistent"]["size"] = json!(2000)
        }),
        ("persistent.type asks path but it is root", |doc| {
            doc["container"]["volumes"][0]["persistent"]["type"] = json!("path")
        }),
        ("persistent.profileName asks fast but it has none", |doc| {
            doc["container"]["volumes"][0]["persistent"]["profileName"] = json!("fast")
        }),
    ];
    // Checking the mount points reads the host; nothing else may happen.
    let changes = |agent: &Agent| {
        let calls = agent.engine.host().calls();
        calls.len()
            - calls
                .iter()
                .filter(|c| c.op == "check_dirs_beneath")
                .count()
    };
    let calls = changes(&agent);
    for (needle, edit) in cases {
        let changed = edited(MYSQL_APP, edit);
        for task in ["t1", "t2"] {
            let (sandbox, rootfs) = (agent.sandbox(task), agent.rootfs(task));
            let (status, reply) = agent
                .prepare(prepare_body(&changed, task, &sandbox, Some(&rootfs)))
                .await;
            assert_eq!(status, 409, "{reply:#}");
            let error = error_of(&reply);
            assert!(
                error.contains(
                    "Marathon cannot change a persistent volume's size, type or profile after deploy"
                ),
                "{error}"
            );
            assert!(error.contains(needle), "{error}");
            assert!(error.contains(&name), "{error}");
            let url = format!("/v1/volumes/{}?wipe=true", name.replace('#', "%23"));
            assert!(error.contains(&url), "{error}");
        }
    }
    assert_eq!(changes(&agent), calls, "the host was not touched");
    assert_eq!(agent.volumes().len(), 1);
    assert_eq!(agent.volume(&name).state(), VolumeState::Detached);
}

#[tokio::test]
async fn sandboxes_and_root_filesystems_outside_the_work_dir_are_refused() {
    let agent = Agent::new();
    let outside = agent.dir.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    let escaping = agent.work_dir().join("escape");
    std::os::unix::fs::symlink(&outside, &escaping).unwrap();
    let sandbox = agent.sandbox("c1");
    let cases: Vec<(PathBuf, Option<PathBuf>, u16, &str)> = vec![
        (
            outside.clone(),
            None,
            403,
            "not beneath the Mesos agent work directory",
        ),
        (agent.work_dir().to_path_buf(), None, 403, "not beneath"),
        (escaping.clone(), None, 403, "not beneath"),
        (
            PathBuf::from("relative/sandbox"),
            None,
            400,
            "absolute path",
        ),
        (
            agent.work_dir().join("x/../../elsewhere"),
            None,
            400,
            "without ..",
        ),
        (agent.work_dir().join("missing"), None, 400, "missing"),
        (sandbox.clone(), Some(outside.clone()), 403, "rootfs"),
        (
            sandbox.clone(),
            Some(PathBuf::from("/")),
            403,
            "rootfs / is not beneath",
        ),
    ];
    for (sandbox, rootfs, status, needle) in cases {
        let body = prepare_body(MYSQL_APP, "t1", &sandbox, rootfs.as_deref());
        let (got, reply) = agent.prepare(body).await;
        assert_eq!(got, status, "{sandbox:?} {rootfs:?}: {reply:#}");
        assert!(error_of(&reply).contains(needle), "{needle}: {reply:#}");
        let (got, reply) = agent
            .post(
                CLEANUP_PATH,
                &cleanup_body("t1", &sandbox, rootfs.as_deref()),
            )
            .await;
        if needle != "missing" {
            assert_eq!(got, status, "cleanup {sandbox:?}: {reply:#}");
        }
    }
    assert!(agent.volumes().is_empty());
    assert_eq!(agent.engine.host().mount_count(), 0);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[tokio::test]
async fn alias_mounts_need_a_rootfs_unless_host_paths_are_allowed() {
    let agent = Agent::new();
    let sandbox = agent.sandbox("c1");
    let (status, reply) = agent
        .prepare(prepare_body(MYSQL_APP, "t1", &sandbox, None))
        .await;
    assert_eq!(status, 403, "{reply:#}");
    let error = error_of(&reply);
    assert!(error.contains("/var/lib/mysql"), "{error}");
    // The flags the operator types, not the request's field names.
    assert!(
        error.contains("berth mesos prepare --rootfs DIR"),
        "{error}"
    );
    assert!(error.contains("--allow-host-paths"), "{error}");
    assert!(
        !error.contains("(rootfs)") && !error.contains("allow_host_paths"),
        "{error}"
    );
    assert!(agent.volumes().is_empty(), "nothing reserved");

    // Allowed: the container shares the host's filesystem, so the alias is the host path.
    let mut body = prepare_body(MYSQL_APP, "t1", &sandbox, None);
    body["layout"]["allow_host_paths"] = json!(true);
    let reply = agent.prepare_ok(body.clone()).await;
    assert_eq!(
        reply.volumes[0].mounts[1].path,
        PathBuf::from("/var/lib/mysql")
    );
    assert_eq!(agent.mounted(Path::new("/var/lib/mysql")), Some(false));

    // Cleanup needs the same permission to unmount a host path.
    let mut cleanup = body;
    cleanup.as_object_mut().unwrap().remove("definition");
    let mut sandbox_only = cleanup.clone();
    sandbox_only["layout"]["allow_host_paths"] = json!(false);
    let cleaned = agent.cleanup_ok(sandbox_only).await;
    assert_eq!(
        cleaned.volumes[0].unmounted,
        vec![sandbox.join("mysqldata")]
    );
    assert_eq!(cleaned.volumes[0].kept, vec!["/var/lib/mysql".to_string()]);
    assert_eq!(cleaned.volumes[0].state, "attached");
    let cleaned = agent.cleanup_ok(cleanup).await;
    assert_eq!(
        cleaned.volumes[0].unmounted,
        vec![PathBuf::from("/var/lib/mysql")]
    );
    assert_eq!(cleaned.volumes[0].state, "detached");
}

#[tokio::test]
async fn symbolic_links_below_a_sandbox_or_rootfs_are_refused() {
    let agent = Agent::new();
    let (sandbox, rootfs) = (agent.sandbox("c1"), agent.rootfs("c1"));
    // An image whose /var/lib points at a host directory (the host layer's walk finds it;
    // tests/mesos_symlink.rs plants a real one).
    agent.engine.host().add_symlink(&rootfs.join("var/lib"));
    let (status, reply) = agent
        .prepare(prepare_body(MYSQL_APP, "t1", &sandbox, Some(&rootfs)))
        .await;
    assert_eq!(status, 403, "{reply:#}");
    assert!(
        error_of(&reply).contains("var/lib is a symbolic link"),
        "{reply:#}"
    );
    // A task that planted a link where its volume goes.
    let rootfs2 = agent.rootfs("c2");
    agent.engine.host().add_symlink(&sandbox.join("mysqldata"));
    let (status, reply) = agent
        .prepare(prepare_body(MYSQL_APP, "t1", &sandbox, Some(&rootfs2)))
        .await;
    assert_eq!(status, 403, "{reply:#}");
    assert!(
        error_of(&reply).contains("mysqldata is a symbolic link"),
        "{reply:#}"
    );

    assert!(agent.volumes().is_empty());
    let host = agent.engine.host();
    assert_eq!(host.mount_count(), 0);
    assert!(
        !host.is_dir(&rootfs.join("var/lib/mysql")),
        "nothing made past a link"
    );
    // Refused while planning: no persistence id was even drawn.
    assert!(host.calls().iter().all(|c| c.op != "random_bytes"));
    // Without the links, the same requests go through, ids drawn from the host.
    let clean = agent.sandbox("c3");
    agent
        .prepare_ok(prepare_body(
            MYSQL_APP,
            "t3",
            &clean,
            Some(&agent.rootfs("c3")),
        ))
        .await;
    assert!(host.calls().iter().any(|c| c.op == "random_bytes"));
}

#[tokio::test]
async fn a_pod_volume_is_shared_by_its_containers_read_only_where_asked() {
    let agent = Agent::new();
    let pod = edited(PERSISTENT_POD, |doc| {
        doc["containers"][1]["volumeMounts"][0]["readOnly"] = json!(true);
        let mut third = doc["containers"][1].clone();
        third["name"] = json!("container3");
        third["volumeMounts"][0]["mountPath"] = json!("/srv/data");
        doc["containers"].as_array_mut().unwrap().push(third);
    });
    let sandbox = agent.sandbox("pod1");
    let rootfs3 = agent.rootfs("pod1-container3");
    let own_sandbox = agent.sandbox("pod1-container2");
    let task = "persistent-volume-pod.instance-1";
    let mut body = prepare_body(&pod, task, &sandbox, None);
    body["layout"]["container_rootfs"] = json!({ "container3": rootfs3 });
    body["layout"]["container_sandboxes"] = json!({ "container2": own_sandbox });
    let reply = agent.prepare_ok(body.clone()).await;

    assert_eq!(reply.volumes.len(), 1);
    let prepared = &reply.volumes[0];
    assert!(
        prepared.volume.starts_with("persistent-volume-pod#pst#"),
        "{}",
        prepared.volume
    );
    assert_eq!(prepared.size, Some(10 * MIB));
    let container1 = sandbox.join(format!("tasks/{task}.container1/pst1"));
    let expected = [
        (sandbox.join("pst"), false),
        (container1.clone(), false),
        (own_sandbox.join("pst2"), true),
        (rootfs3.join("srv/data"), true),
    ];
    let mounts: Vec<(PathBuf, bool)> = prepared
        .mounts
        .iter()
        .map(|m| (m.path.clone(), m.read_only))
        .collect();
    assert_eq!(mounts, expected);
    for (path, read_only) in &expected {
        assert_eq!(agent.mounted(path), Some(*read_only), "{}", path.display());
    }
    // The mount points' parents exist on disk (the engine makes only the last component).
    let host = agent.engine.host();
    assert!(
        host.is_dir(container1.parent().unwrap()),
        "the container's sandbox is made"
    );
    assert!(host.is_dir(&rootfs3.join("srv")));

    let mut cleanup = body.clone();
    cleanup.as_object_mut().unwrap().remove("definition");
    let cleaned = agent.cleanup_ok(cleanup).await;
    assert_eq!(cleaned.volumes[0].unmounted.len(), 4);
    assert_eq!(cleaned.volumes[0].state, "detached");
    assert_eq!(
        agent.engine.host().mount_count(),
        1,
        "only the volume's own filesystem"
    );

    // Refusals, each before anything changes.
    let refusals: Vec<(Value, u16, &str)> = vec![
        (
            json!({ "container_rootfs": {} }),
            403,
            "berth mesos prepare --container-rootfs NAME=DIR",
        ),
        (
            json!({ "container_rootfs": { "container3": rootfs3, "nope": rootfs3 } }),
            400,
            "no container named \"nope\"",
        ),
        (json!({ "rootfs": rootfs3 }), 400, "rootfs is for apps"),
    ];
    let calls = agent.engine.host().call_count();
    for (layout, status, needle) in refusals {
        let mut body = prepare_body(&pod, "persistent-volume-pod.instance-2", &sandbox, None);
        for (key, value) in layout.as_object().unwrap() {
            body["layout"][key] = value.clone();
        }
        let (got, reply) = agent.prepare(body).await;
        assert_eq!(got, status, "{reply:#}");
        assert!(error_of(&reply).contains(needle), "{needle}: {reply:#}");
    }
    assert_eq!(agent.engine.host().call_count(), calls);
    assert_eq!(agent.volumes().len(), 1);
}

#[tokio::test]
async fn requests_are_checked_at_the_edge_and_change_nothing() {
    let agent = Agent::new();
    let sandbox = agent.sandbox("c1");
    let rootfs = agent.rootfs("c1");

    let (status, reply) = agent
        .send(hyper::Method::POST, PREPARE_PATH, b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        error_of(&reply).contains("malformed request body"),
        "{reply:#}"
    );

    let mut unknown = prepare_body(MYSQL_APP, "t1", &sandbox, Some(&rootfs));
    unknown["colour"] = json!("red");
    let (status, reply) = agent.prepare(unknown).await;
    assert_eq!(status, 400);
    assert!(error_of(&reply).contains("colour"), "{reply:#}");
    let mut unknown = prepare_body(MYSQL_APP, "t1", &sandbox, Some(&rootfs));
    unknown["layout"]["sandbx"] = json!("/x");
    let (status, reply) = agent.prepare(unknown).await;
    assert_eq!(status, 400);
    assert!(error_of(&reply).contains("sandbx"), "{reply:#}");

    // The daemon validates the definition itself.
    let broken = edited(MYSQL_APP, |doc| {
        doc["container"]["volumes"][0]["containerPath"] = json!("/data");
        doc["container"]["volumes"][0]["persistent"]["size"] = json!(-1);
    });
    let (status, reply) = agent
        .prepare(prepare_body(&broken, "t1", &sandbox, Some(&rootfs)))
        .await;
    assert_eq!(status, 422, "{reply:#}");
    assert_eq!(reply["kind"], "invalid_definition");
    let paths: Vec<&str> = reply["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"container.volumes[0].containerPath"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"container.volumes[0].persistent.size"),
        "{paths:?}"
    );

    for (task, needle) in [
        ("", "must not be empty"),
        ("a/b", "must not contain /"),
        ("..", "must not be . or .."),
        ("a\nb", "control characters"),
    ] {
        let (status, reply) = agent
            .prepare(prepare_body(MYSQL_APP, task, &sandbox, Some(&rootfs)))
            .await;
        assert_eq!(status, 400, "{task:?}: {reply:#}");
        assert!(error_of(&reply).contains(needle), "{reply:#}");
        let (status, _) = agent
            .post(CLEANUP_PATH, &cleanup_body(task, &sandbox, Some(&rootfs)))
            .await;
        assert_eq!(status, 400, "cleanup {task:?}");
    }

    let (status, reply) = agent
        .send(hyper::Method::GET, PREPARE_PATH, Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 405);
    assert!(error_of(&reply).contains("takes POST"), "{reply:#}");
    let (status, _) = agent
        .send(hyper::Method::POST, "/v1/mesos/launch", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(
        agent
            .send(hyper::Method::GET, "/v1/volumes", Vec::new())
            .await
            .is_none(),
        "other paths are left to the admin router"
    );
    assert!(
        agent
            .send(hyper::Method::GET, "/v1/mesosx", Vec::new())
            .await
            .is_none()
    );

    assert!(agent.volumes().is_empty());
    assert_eq!(agent.engine.host().mount_count(), 0);
}

#[tokio::test]
async fn a_volume_no_pool_can_hold_is_insufficient_storage_and_leaves_nothing() {
    let agent = Agent::new();
    let sandbox = agent.sandbox("c1");
    // The documented PostgreSQL example asks for a 512 GiB disk of type mount.
    let (status, reply) = agent
        .prepare(prepare_body(POSTGRES_APP, "pg.1", &sandbox, None))
        .await;
    assert_eq!(status, 507, "{reply:#}");
    assert_eq!(reply["kind"], "no_capacity");
    let error = error_of(&reply);
    assert!(error.contains("postgres#pgdata#"), "{error}");
    assert!(error.contains("kind root, not mount"), "{error}");
    assert!(agent.volumes().is_empty());
    assert_eq!(agent.engine.host().mount_count(), 0);
}

#[tokio::test]
async fn the_owner_of_a_new_volume_reaches_its_spec() {
    let agent = Agent::new();
    let sandbox = agent.sandbox("c1");
    let rootfs = agent.rootfs("c1");
    let mut body = prepare_body(MYSQL_APP, "t1", &sandbox, Some(&rootfs));
    body["owner_uid"] = json!(101);
    body["owner_gid"] = json!(104);
    let reply = agent.prepare_ok(body).await;
    let v = agent.volume(&reply.volumes[0].volume);
    assert_eq!(v.spec.ownership.uid, Some(101));
    assert_eq!(v.spec.ownership.gid, Some(104));
}

#[test]
fn persistence_ids_are_volume_names_and_long_ones_shrink_deterministically() {
    let uuid = "53ab8732-1a2b-4c3d-8e4f-0123456789ab";
    let name = persistence_id("/prod/mysql", "mysqldata", uuid).unwrap();
    assert_eq!(name.as_str(), format!("prod.mysql#mysqldata#{uuid}"));

    let long_app = format!("/{}", ["group"; 30].join("/"));
    let long = persistence_id(&long_app, "data", uuid).unwrap();
    assert!(long.as_str().len() <= MAX_NAME_LEN, "{long}");
    assert!(long.as_str().ends_with(&format!("#{uuid}")), "{long}");
    assert!(long.as_str().starts_with("group.group."), "{long}");
    assert_eq!(long, persistence_id(&long_app, "data", uuid).unwrap());
    let other = persistence_id(&long_app, "logs", uuid).unwrap();
    assert_ne!(long, other, "the hash tells container paths apart");

    let bad = persistence_id("/app", "my data", uuid);
    assert!(
        matches!(&bad, Err(HookError::BadRequest(m)) if m.contains("' '")),
        "{bad:?}"
    );
}

#[tokio::test]
async fn the_definitions_user_owns_a_new_volume_unless_the_request_names_an_owner() {
    let nobody = crate::host::users::account("nobody")
        .unwrap()
        .expect("the test host has user nobody");
    let as_nobody = edited(MYSQL_APP, |d| d["user"] = json!("nobody"));
    let agent = Agent::new();
    let sandbox = agent.sandbox("c1");
    let rootfs = agent.rootfs("c1");
    let reply = agent
        .prepare_ok(prepare_body(&as_nobody, "t1", &sandbox, Some(&rootfs)))
        .await;
    let v = agent.volume(&reply.volumes[0].volume);
    assert_eq!(v.spec.ownership.uid, Some(nobody.uid));
    assert_eq!(v.spec.ownership.gid, Some(nobody.gid));
    assert_eq!(v.spec.ownership.mode, None, "the default mode, 0755");

    let agent = Agent::new();
    let sandbox = agent.sandbox("c1");
    let rootfs = agent.rootfs("c1");
    let mut body = prepare_body(&as_nobody, "t1", &sandbox, Some(&rootfs));
    body["owner_uid"] = json!(101);
    let reply = agent.prepare_ok(body).await;
    let v = agent.volume(&reply.volumes[0].volume);
    assert_eq!(v.spec.ownership.uid, Some(101));
    assert_eq!(v.spec.ownership.gid, None);
}

#[tokio::test]
async fn a_user_unknown_on_the_node_is_refused_before_anything_is_made() {
    let agent = Agent::new();
    let sandbox = agent.sandbox("c1");
    let rootfs = agent.rootfs("c1");
    let ghost = edited(MYSQL_APP, |d| d["user"] = json!("no-such-user-berth-test"));
    let (status, reply) = agent
        .prepare(prepare_body(&ghost, "t1", &sandbox, Some(&rootfs)))
        .await;
    assert_eq!(status, 400, "{reply:#}");
    assert!(
        error_of(&reply).contains("no-such-user-berth-test"),
        "{reply:#}"
    );
    assert!(agent.volumes().is_empty());
}
