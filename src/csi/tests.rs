//! The CSI services over a real unix socket and a real gRPC client, on an engine over the
//! recording fake host: every RPC's answers, refusals and idempotency, without root. The
//! same flows run against the real daemon and kernel in `tests/csi.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

use super::proto::controller_client::ControllerClient;
use super::proto::controller_service_capability::rpc;
use super::proto::identity_client::IdentityClient;
use super::proto::node_client::NodeClient;
use super::proto::node_service_capability::rpc as node_rpc;
use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::{AccessType as CsiAccess, BlockVolume, MountVolume};
use super::proto::*;
use super::testing::{assert_code, block, cap, mount, mount_with, params};
use super::{CsiService, connect, serve, status_of};
use crate::engine::pool::{BackendChoice, PoolConfig};
use crate::engine::types::{
    Backend, Caller, CreateRequest, Frontend, Owner, ReclaimPolicy, VolumeFilter, VolumeName,
    VolumeSpec,
};
use crate::engine::{Engine, EngineConfig, EngineError, InputError, NodeInfo, VolumeService};
use crate::host::HostError;
use crate::host::fake::FakeHost;

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;
const NODE_KEY: &str = "topology.berth.io/node";

struct Harness {
    _dir: tempfile::TempDir,
    engine: Arc<Engine<FakeHost>>,
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), crate::server::ServeError>>,
}

impl Harness {
    /// A node `n1` with a 10 GiB size-enforcing pool `default` and a plain-directory pool
    /// `plain` with profile `bulk`, served on a socket in a temp dir.
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost::new(100 * GIB as u64);
        let mut default = PoolConfig::default_root(Path::new("/pool"));
        default.paths = vec![PathBuf::from("/pool/volumes")];
        default.capacity = Some(10 * GIB as u64);
        let mut plain = PoolConfig::default_root(Path::new("/plain"));
        plain.name = "plain".into();
        plain.paths = vec![PathBuf::from("/plain/volumes")];
        plain.backend = BackendChoice::None;
        plain.capacity = Some(GIB as u64);
        plain.profiles = vec!["bulk".into()];
        for pool in [&default, &plain] {
            host.add_dir(&pool.paths[0]);
        }
        let engine = Engine::open(
            EngineConfig {
                store_path: dir.path().join("berth.redb"),
                pools: vec![default, plain],
                node: NodeInfo {
                    node_id: "n1".into(),
                    topology: BTreeMap::from([
                        (NODE_KEY.to_string(), "n1".to_string()),
                        ("zone".to_string(), "a".to_string()),
                    ]),
                    max_volumes: Some(50),
                },
            },
            host,
        )
        .unwrap();
        let engine = Arc::new(engine);
        let socket = dir.path().join("csi.sock");
        let endpoint = format!("unix://{}", socket.display());
        let bound = crate::server::bind_socket(&endpoint, 0o600).unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let service = CsiService::new(
            Arc::clone(&engine) as Arc<dyn VolumeService>,
            "berth.csi.io",
        );
        let server = tokio::spawn(serve(
            bound,
            service,
            crate::server::shutdown_future(stop_rx),
        ));
        let channel = connect(&endpoint).await.unwrap();
        Self {
            _dir: dir,
            engine,
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
            stop,
            server,
        }
    }

    async fn create(&mut self, req: CreateVolumeRequest) -> Result<Volume, tonic::Status> {
        self.controller
            .create_volume(req)
            .await
            .map(|r| r.into_inner().volume.unwrap())
    }

    async fn stage(
        &mut self,
        id: &str,
        staging: &str,
        cap: VolumeCapability,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.into(),
                volume_capability: Some(cap),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn publish(
        &mut self,
        id: &str,
        staging: &str,
        target: &str,
        cap: VolumeCapability,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.into(),
                target_path: target.into(),
                volume_capability: Some(cap),
                readonly,
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn unpublish(&mut self, id: &str, target: &str) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.into(),
            })
            .await
            .map(|_| ())
    }

    async fn unstage(&mut self, id: &str, staging: &str) -> Result<(), tonic::Status> {
        self.node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.into(),
            })
            .await
            .map(|_| ())
    }

    async fn delete(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: id.into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn list(
        &mut self,
        max_entries: i32,
        token: &str,
    ) -> Result<ListVolumesResponse, tonic::Status> {
        self.controller
            .list_volumes(ListVolumesRequest {
                max_entries,
                starting_token: token.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn capacity(&mut self, req: GetCapacityRequest) -> i64 {
        self.controller
            .get_capacity(req)
            .await
            .unwrap()
            .into_inner()
            .available_capacity
    }

    /// Closes the clients, stops the server and waits for it to finish.
    async fn stop(self) {
        let Self {
            identity,
            controller,
            node,
            stop,
            server,
            ..
        } = self;
        drop((identity, controller, node));
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
    }
}

fn request(name: &str, required: i64, limit: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        volume_capabilities: vec![mount()],
        ..Default::default()
    }
}

fn topology(node: &str) -> Topology {
    Topology {
        segments: params(&[(NODE_KEY, node)]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_names_berth_and_advertises_what_it_does() {
    let mut h = Harness::new().await;
    let info = h
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "berth.csi.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = h
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    use super::proto::plugin_capability::{Type, service, volume_expansion};
    let services: Vec<i32> = caps
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(Type::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    assert_eq!(
        services,
        [
            service::Type::ControllerService as i32,
            service::Type::VolumeAccessibilityConstraints as i32
        ]
    );
    assert!(caps.iter().any(|c| matches!(&c.r#type,
        Some(Type::VolumeExpansion(e)) if e.r#type == volume_expansion::Type::Online as i32)));
    let probe = h
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    // When the mount table cannot be read, berth is not ready, and says why.
    h.engine.host().fail_op("mounts");
    assert_code(
        h.identity.probe(ProbeRequest {}).await,
        Code::FailedPrecondition,
        "not ready",
    );
    h.engine.host().heal();

    let controller: Vec<i32> = h
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|super::proto::controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    let expected = [
        rpc::Type::CreateDeleteVolume,
        rpc::Type::ListVolumes,
        rpc::Type::ListVolumesPublishedNodes,
        rpc::Type::VolumeCondition,
        rpc::Type::GetCapacity,
        rpc::Type::CloneVolume,
        rpc::Type::ExpandVolume,
        rpc::Type::CreateDeleteSnapshot,
        rpc::Type::ListSnapshots,
        rpc::Type::GetSnapshot,
    ];
    assert_eq!(controller, expected.map(|t| t as i32));
    let node: Vec<i32> = h
        .node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|super::proto::node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    let expected = [
        node_rpc::Type::StageUnstageVolume,
        node_rpc::Type::GetVolumeStats,
        node_rpc::Type::ExpandVolume,
        node_rpc::Type::VolumeCondition,
        node_rpc::Type::VolumeMountGroup,
    ];
    assert_eq!(node, expected.map(|t| t as i32));
    let info = h
        .node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "n1");
    assert_eq!(info.max_volumes_per_node, 50);
    let segments = info.accessible_topology.unwrap().segments;
    assert_eq!(segments.get(NODE_KEY).map(String::as_str), Some("n1"));
    assert_eq!(segments.get("zone").map(String::as_str), Some("a"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_and_refuses_a_different_volume_of_the_same_name() {
    let mut h = Harness::new().await;
    let v = h.create(request("db", GIB, 0)).await.unwrap();
    assert_eq!(v.volume_id, "db");
    assert_eq!(v.capacity_bytes, GIB);
    assert_eq!(v.accessible_topology.len(), 1);
    assert_eq!(
        v.accessible_topology[0]
            .segments
            .get(NODE_KEY)
            .map(String::as_str),
        Some("n1")
    );
    // The same request, and any range the volume's size lies in, give the same volume.
    for (required, limit) in [(GIB, 0), (GIB, GIB), (GIB / 2, 2 * GIB), (0, GIB)] {
        let again = h.create(request("db", required, limit)).await.unwrap();
        assert_eq!(again, v, "range {required}..{limit}");
    }
    assert_code(
        h.create(request("db", 2 * GIB, 2 * GIB)).await,
        Code::AlreadyExists,
        "size",
    );
    let mut other_pool = request("db", GIB, 0);
    other_pool.parameters = params(&[("label/team", "web")]);
    assert_code(h.create(other_pool).await, Code::AlreadyExists, "labels");
    let mut as_block = request("db", GIB, 0);
    as_block.volume_capabilities = vec![block()];
    assert_code(h.create(as_block).await, Code::AlreadyExists, "access");
    // A volume without any size is an unlimited directory; CSI reads 0 as unknown.
    let dir = h.create(request("scratch", 0, 0)).await.unwrap();
    assert_eq!(dir.capacity_bytes, 0);
    assert_eq!(h.create(request("scratch", 0, 0)).await.unwrap(), dir);
    assert_code(
        h.create(request("scratch", GIB, 0)).await,
        Code::AlreadyExists,
        "size",
    );
    // The filesystem is part of what the volume is.
    let mut ext4 = request("db2", GIB, 0);
    ext4.volume_capabilities = vec![mount_with("ext4", &[], "")];
    h.create(ext4.clone()).await.unwrap();
    h.create(ext4).await.unwrap();
    let mut xfs = request("db2", GIB, 0);
    xfs.volume_capabilities = vec![mount_with("xfs", &[], "")];
    assert_code(h.create(xfs).await, Code::AlreadyExists, "ext4");
    // A plain directory lives on whatever filesystem its pool is on.
    let mut plain = request("plain-xfs", GIB / 4, 0);
    plain.parameters = params(&[("pool", "plain")]);
    plain.volume_capabilities = vec![mount_with("xfs", &[], "")];
    h.create(plain).await.unwrap();
    // Delete is idempotent, and an id that names nothing is deleted already.
    for _ in 0..2 {
        h.delete("db").await.unwrap();
    }
    h.delete("never-existed").await.unwrap();
    h.delete("../../etc").await.unwrap();
    assert_code(h.delete("").await, Code::InvalidArgument, "volume_id");
    assert!(h.engine.get(&VolumeName::parse("db").unwrap()).is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refuses_bad_input_naming_the_field_and_makes_nothing() {
    let mut h = Harness::new().await;
    let mut no_caps = request("v", GIB, 0);
    no_caps.volume_capabilities.clear();
    let mut multi_node = request("v", GIB, 0);
    multi_node.volume_capabilities = vec![cap(
        Mode::MultiNodeMultiWriter,
        CsiAccess::Mount(MountVolume::default()),
    )];
    let mut mixed = request("v", GIB, 0);
    mixed.volume_capabilities = vec![mount(), block()];
    let mut bad_flag = request("v", GIB, 0);
    bad_flag.volume_capabilities = vec![mount_with("", &["noexec"], "")];
    let mut unknown = request("v", GIB, 0);
    unknown.parameters = params(&[("colour", "red")]);
    let mut bad_type = request("v", GIB, 0);
    bad_type.parameters = params(&[("type", "disk")]);
    let mut no_pool = request("v", GIB, 0);
    no_pool.parameters = params(&[("pool", "nope")]);
    let mut xfs = request("v", GIB, 0);
    xfs.volume_capabilities = vec![mount_with("xfs", &[], "")];
    let mut two_fs = request("v", GIB, 0);
    two_fs.volume_capabilities = vec![mount_with("ext4", &[], ""), mount_with("xfs", &[], "")];
    let mut snapshot = request("v", GIB, 0);
    snapshot.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: "s1".into(),
            },
        )),
    });
    let cases: Vec<(CreateVolumeRequest, Code, &str)> = vec![
        (
            request("", GIB, 0),
            Code::InvalidArgument,
            "name is required",
        ),
        (request("../x", GIB, 0), Code::InvalidArgument, "name"),
        (
            request(&"a".repeat(300), GIB, 0),
            Code::InvalidArgument,
            "at most 128",
        ),
        (
            no_caps,
            Code::InvalidArgument,
            "volume v: volume_capabilities is required",
        ),
        (multi_node, Code::InvalidArgument, "MULTI_NODE_MULTI_WRITER"),
        (mixed, Code::InvalidArgument, "mix block and mount"),
        (bad_flag, Code::InvalidArgument, "noexec"),
        (
            unknown,
            Code::InvalidArgument,
            "parameters.colour: unknown key",
        ),
        (bad_type, Code::InvalidArgument, "parameters.type"),
        (no_pool, Code::InvalidArgument, "no pool named \"nope\""),
        (snapshot, Code::NotFound, "snapshot s1 not found"),
        (xfs, Code::InvalidArgument, "pool default makes ext4"),
        (two_fs, Code::InvalidArgument, "a volume has one"),
        (request("v", -1, 0), Code::InvalidArgument, "required_bytes"),
        (request("v", 2 * GIB, GIB), Code::OutOfRange, "limit_bytes"),
        // A loopfs ext4 volume is at least 16 MiB.
        (
            request("v", MIB, 8 * MIB),
            Code::OutOfRange,
            "smallest filesystem",
        ),
        (
            request("v", 11 * GIB, 0),
            Code::ResourceExhausted,
            "left to reserve of its capacity",
        ),
    ];
    for (req, code, needle) in cases {
        let name = req.name.clone();
        let result = h.create(req).await;
        assert_code(result, code, needle);
        let _ = name;
    }
    assert!(h.engine.list(&VolumeFilter::default()).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_are_raised_to_the_filesystem_minimum_within_the_limit() {
    let mut h = Harness::new().await;
    let v = h.create(request("small", MIB, 0)).await.unwrap();
    assert_eq!(v.capacity_bytes, 16 * MIB);
    // The retry gets the same volume back even though its size is not the one asked.
    assert_eq!(h.create(request("small", MIB, 0)).await.unwrap(), v);
    // Only a limit: that size.
    let v = h.create(request("capped", 0, 64 * MIB)).await.unwrap();
    assert_eq!(v.capacity_bytes, 64 * MIB);
    // Plain directory pools have no minimum: the size is a reservation.
    let mut plain = request("tiny", MIB, 0);
    plain.parameters = params(&[("pool", "plain")]);
    assert_eq!(h.create(plain).await.unwrap().capacity_bytes, MIB);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_choose_the_pool_and_are_recorded() {
    let mut h = Harness::new().await;
    let mut req = request("bulk", 100 * MIB, 0);
    req.parameters = params(&[
        ("profile", "bulk"),
        ("reclaim", "retain"),
        ("uid", "1000"),
        ("gid", "1000"),
        ("mode", "0770"),
        ("label/team", "data"),
        ("csi.storage.k8s.io/pvc/name", "cache"),
        ("csi.storage.k8s.io/pvc/namespace", "prod"),
        ("csi.storage.k8s.io/pv/name", "bulk"),
    ]);
    h.create(req).await.unwrap();
    let v = h.engine.get(&VolumeName::parse("bulk").unwrap()).unwrap();
    assert_eq!(v.placement.pool, "plain");
    assert_eq!(v.placement.backend, Backend::None);
    assert_eq!(v.reclaim, ReclaimPolicy::Retain);
    assert_eq!(v.spec.ownership.mode, Some(0o770));
    assert_eq!(v.spec.labels.get("team"), Some("data"));
    assert_eq!(
        v.spec.labels.get("csi.storage.k8s.io/pvc/namespace"),
        Some("prod")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_requirements_are_honoured() {
    let mut h = Harness::new().await;
    let mut here = request("here", GIB, 0);
    here.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topology("n2"), topology("n1")],
        preferred: vec![topology("n2")],
    });
    h.create(here).await.unwrap();
    for requirement in [
        TopologyRequirement {
            requisite: vec![topology("n2")],
            preferred: vec![],
        },
        TopologyRequirement {
            requisite: vec![],
            preferred: vec![topology("n2"), topology("n3")],
        },
    ] {
        let mut there = request("there", GIB, 0);
        there.accessibility_requirements = Some(requirement);
        assert_code(
            h.create(there).await,
            Code::ResourceExhausted,
            "does not include this node",
        );
    }
    assert!(h.engine.get(&VolumeName::parse("there").unwrap()).is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_copy_an_existing_volume_of_this_node() {
    let mut h = Harness::new().await;
    h.create(request("src", 64 * MIB, 0)).await.unwrap();
    let source = |id: &str| {
        Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Volume(
                volume_content_source::VolumeSource {
                    volume_id: id.into(),
                },
            )),
        })
    };
    // No size asked: the clone is as big as its source.
    let mut clone = request("copy", 0, 0);
    clone.volume_content_source = source("src");
    let v = h.create(clone.clone()).await.unwrap();
    assert_eq!(v.capacity_bytes, 64 * MIB);
    assert_eq!(v.content_source, source("src"));
    assert_eq!(h.create(clone).await.unwrap(), v);
    assert!(h.engine.host().calls().iter().any(|c| c.op == "copy_tree"));
    let mut small = request("small-copy", MIB, 32 * MIB);
    small.volume_content_source = source("src");
    assert_code(h.create(small).await, Code::OutOfRange, "source volume");
    let mut missing = request("orphan", GIB, 0);
    missing.volume_content_source = source("nope");
    assert_code(h.create(missing).await, Code::NotFound, "nope");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_volumes_pages_correctly_at_every_page_size() {
    let mut h = Harness::new().await;
    let names: Vec<String> = (0..7).map(|i| format!("vol-{i}")).collect();
    for n in &names {
        h.create(request(n, 0, 0)).await.unwrap();
    }
    for page_size in 0..=9 {
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = h.list(page_size, &token).await.unwrap();
            pages += 1;
            if page_size > 0 {
                assert!(page.entries.len() <= page_size as usize);
            }
            seen.extend(
                page.entries
                    .iter()
                    .map(|e| e.volume.as_ref().unwrap().volume_id.clone()),
            );
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
            assert!(pages <= names.len(), "paging does not end");
        }
        assert_eq!(seen, names, "page size {page_size}");
    }
    // A token stays good when the volume it points after is deleted meanwhile.
    let first = h.list(2, "").await.unwrap();
    h.delete("vol-1").await.unwrap();
    let rest = h.list(0, &first.next_token).await.unwrap();
    let rest: Vec<_> = rest
        .entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().volume_id.as_str())
        .collect();
    assert_eq!(rest, ["vol-2", "vol-3", "vol-4", "vol-5", "vol-6"]);
    assert_code(
        h.list(0, "invalid-token").await,
        Code::Aborted,
        "invalid-token",
    );
    assert_code(h.list(0, "after/../x").await, Code::Aborted, "not a token");
    assert_code(h.list(-1, "").await, Code::InvalidArgument, "max_entries");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_what_is_left_after_reservations() {
    let mut h = Harness::new().await;
    let all = h.capacity(GetCapacityRequest::default()).await;
    assert_eq!(all, 11 * GIB);
    let default_pool = GetCapacityRequest {
        parameters: params(&[("pool", "default")]),
        ..Default::default()
    };
    let response = h
        .controller
        .get_capacity(default_pool.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.available_capacity, 10 * GIB);
    assert_eq!(response.maximum_volume_size, Some(10 * GIB));
    assert_eq!(response.minimum_volume_size, Some(16 * MIB));
    h.create(request("a", 3 * GIB, 0)).await.unwrap();
    assert_eq!(h.capacity(default_pool.clone()).await, 7 * GIB);
    let bulk = GetCapacityRequest {
        parameters: params(&[("profile", "bulk")]),
        ..Default::default()
    };
    assert_eq!(h.capacity(bulk).await, GIB);
    let elsewhere = GetCapacityRequest {
        accessible_topology: Some(topology("n2")),
        ..Default::default()
    };
    assert_eq!(h.capacity(elsewhere).await, 0);
    let here = GetCapacityRequest {
        accessible_topology: Some(topology("n1")),
        ..default_pool
    };
    assert_eq!(h.capacity(here).await, 7 * GIB);
    let multi_node = GetCapacityRequest {
        volume_capabilities: vec![cap(
            Mode::MultiNodeReaderOnly,
            CsiAccess::Mount(MountVolume::default()),
        )],
        ..Default::default()
    };
    assert_eq!(h.capacity(multi_node).await, 0);
    assert_code(
        h.controller
            .get_capacity(GetCapacityRequest {
                parameters: params(&[("colour", "red")]),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "colour",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_confirms_only_what_the_volume_can_do() {
    let mut h = Harness::new().await;
    h.create(request("v", GIB, 0)).await.unwrap();
    let validate = |caps: Vec<VolumeCapability>, parameters: HashMap<String, String>| {
        ValidateVolumeCapabilitiesRequest {
            volume_id: "v".into(),
            volume_capabilities: caps,
            parameters,
            ..Default::default()
        }
    };
    let ok = h
        .controller
        .validate_volume_capabilities(validate(
            vec![mount(), mount_with("ext4", &["ro"], "")],
            HashMap::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.confirmed.unwrap().volume_capabilities.len(), 2);
    for (caps, parameters, needle) in [
        (vec![block()], HashMap::new(), "a filesystem volume"),
        (vec![mount_with("xfs", &[], "")], HashMap::new(), "ext4"),
        (
            vec![cap(
                Mode::MultiNodeReaderOnly,
                CsiAccess::Mount(MountVolume::default()),
            )],
            HashMap::new(),
            "MULTI_NODE_READER_ONLY",
        ),
        (
            vec![mount()],
            params(&[("pool", "plain")]),
            "parameters.pool",
        ),
    ] {
        let answer = h
            .controller
            .validate_volume_capabilities(validate(caps, parameters))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.confirmed.is_none());
        assert!(answer.message.contains(needle), "{}", answer.message);
    }
    assert_code(
        h.controller
            .validate_volume_capabilities(validate(vec![], HashMap::new()))
            .await,
        Code::InvalidArgument,
        "volume_capabilities",
    );
    let mut missing = validate(vec![mount()], HashMap::new());
    missing.volume_id = "nope".into();
    assert_code(
        h.controller.validate_volume_capabilities(missing).await,
        Code::NotFound,
        "nope",
    );
    let mut no_id = validate(vec![mount()], HashMap::new());
    no_id.volume_id.clear();
    assert_code(
        h.controller.validate_volume_capabilities(no_id).await,
        Code::InvalidArgument,
        "volume_id",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_lifecycle_is_idempotent_at_every_step() {
    let mut h = Harness::new().await;
    h.create(request("v", GIB, 0)).await.unwrap();
    let (staging, a, b) = ("/k/staging/v", "/k/pods/a", "/k/pods/b");
    // Publishing before staging is refused.
    assert_code(
        h.publish("v", staging, a, mount(), false).await,
        Code::FailedPrecondition,
        "NodeStageVolume",
    );
    assert_code(
        h.publish("v", "", a, mount(), false).await,
        Code::FailedPrecondition,
        "staging_target_path",
    );
    for _ in 0..2 {
        h.stage("v", staging, mount()).await.unwrap();
    }
    for _ in 0..2 {
        h.publish("v", staging, a, mount(), false).await.unwrap();
        h.publish("v", staging, b, mount(), true).await.unwrap();
    }
    let data = h
        .engine
        .get(&VolumeName::parse("v").unwrap())
        .unwrap()
        .placement
        .data;
    let fake = h.engine.host();
    assert_eq!(
        fake.mounted_at(Path::new(staging)),
        Some((data.clone(), false))
    );
    assert_eq!(fake.mounted_at(Path::new(a)), Some((data.clone(), false)));
    assert_eq!(fake.mounted_at(Path::new(b)), Some((data.clone(), true)));
    // The same target with another read-only setting is a different publication.
    assert_code(
        h.publish("v", staging, a, mount(), true).await,
        Code::AlreadyExists,
        "read-only",
    );
    // A block publication of a filesystem volume exceeds what it can do.
    assert_code(
        h.publish("v", staging, "/k/pods/c", block(), false).await,
        Code::FailedPrecondition,
        "block access",
    );
    assert_code(
        h.delete("v").await,
        Code::FailedPrecondition,
        "unpublish it first",
    );
    for _ in 0..2 {
        h.unpublish("v", a).await.unwrap();
        h.unpublish("v", b).await.unwrap();
    }
    for _ in 0..2 {
        h.unstage("v", staging).await.unwrap();
    }
    assert_eq!(
        h.engine.host().mount_count(),
        1,
        "only the volume's own filesystem"
    );
    h.delete("v").await.unwrap();
    // Every node RPC on a volume that does not exist is NOT_FOUND.
    assert_code(h.stage("v", staging, mount()).await, Code::NotFound, "v");
    assert_code(
        h.publish("v", staging, a, mount(), false).await,
        Code::NotFound,
        "v",
    );
    assert_code(h.unpublish("v", a).await, Code::NotFound, "v");
    assert_code(h.unstage("v", staging).await, Code::NotFound, "v");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rpcs_refuse_missing_fields() {
    let mut h = Harness::new().await;
    h.create(request("v", GIB, 0)).await.unwrap();
    assert_code(
        h.stage("", "/s", mount()).await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        h.stage("v", "", mount()).await,
        Code::InvalidArgument,
        "staging_target_path",
    );
    assert_code(
        h.stage("v", "relative", mount()).await,
        Code::InvalidArgument,
        "absolute",
    );
    assert_code(
        h.node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: "v".into(),
                staging_target_path: "/s".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "volume_capability is required",
    );
    assert_code(
        h.publish("", "/s", "/t", mount(), false).await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        h.publish("v", "/s", "", mount(), false).await,
        Code::InvalidArgument,
        "target_path",
    );
    assert_code(
        h.node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: "v".into(),
                target_path: "/t".into(),
                staging_target_path: "/s".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "volume_capability is required",
    );
    assert_code(
        h.unpublish("", "/t").await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        h.unpublish("v", "").await,
        Code::InvalidArgument,
        "target_path",
    );
    assert_code(
        h.unstage("", "/s").await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        h.unstage("v", "").await,
        Code::InvalidArgument,
        "staging_target_path",
    );
    let stats = |id: &str, path: &str| NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    };
    assert_code(
        h.node.node_get_volume_stats(stats("", "/t")).await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        h.node.node_get_volume_stats(stats("v", "")).await,
        Code::InvalidArgument,
        "volume_path",
    );
    assert_code(
        h.node
            .node_get_volume_stats(stats("nope", "some/path"))
            .await,
        Code::NotFound,
        "nope",
    );
    let expand = |id: &str, path: &str| NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        ..Default::default()
    };
    assert_code(
        h.node.node_expand_volume(expand("", "/t")).await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        h.node.node_expand_volume(expand("v", "")).await,
        Code::InvalidArgument,
        "volume_path",
    );
    assert_code(
        h.node.node_expand_volume(expand("nope", "some/path")).await,
        Code::NotFound,
        "nope",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_usage_and_an_abnormal_condition_when_the_data_is_gone() {
    let mut h = Harness::new().await;
    let mut req = request("d", 0, 0);
    req.parameters = params(&[("pool", "plain")]);
    h.create(req).await.unwrap();
    h.stage("d", "/k/s", mount()).await.unwrap();
    h.publish("d", "/k/s", "/k/t", mount(), false)
        .await
        .unwrap();
    let stats = |path: &str| NodeGetVolumeStatsRequest {
        volume_id: "d".into(),
        volume_path: path.into(),
        staging_target_path: "/k/s".into(),
    };
    for path in ["/k/t", "/k/s"] {
        let answer = h
            .node
            .node_get_volume_stats(stats(path))
            .await
            .unwrap()
            .into_inner();
        let units: Vec<i32> = answer.usage.iter().map(|u| u.unit).collect();
        assert_eq!(
            units,
            [
                volume_usage::Unit::Bytes as i32,
                volume_usage::Unit::Inodes as i32
            ]
        );
        assert!(answer.usage.iter().all(|u| u.total > 0 && u.used >= 0));
        assert!(!answer.volume_condition.unwrap().abnormal);
    }
    assert_code(
        h.node.node_get_volume_stats(stats("/k/elsewhere")).await,
        Code::NotFound,
        "not staged or published at /k/elsewhere",
    );
    h.engine.host().fail_op("tree_usage");
    let answer = h
        .node
        .node_get_volume_stats(stats("/k/t"))
        .await
        .unwrap()
        .into_inner();
    let condition = answer.volume_condition.unwrap();
    assert!(condition.abnormal);
    assert!(
        condition.message.contains("volume d"),
        "{}",
        condition.message
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expansion_grows_never_shrinks_and_checks_the_path() {
    let mut h = Harness::new().await;
    h.create(request("g", GIB, 0)).await.unwrap();
    let expand = |required: i64, limit: i64| ControllerExpandVolumeRequest {
        volume_id: "g".into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        ..Default::default()
    };
    for _ in 0..2 {
        let r = h
            .controller
            .controller_expand_volume(expand(2 * GIB, 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, 2 * GIB);
        assert!(!r.node_expansion_required);
    }
    let r = h
        .controller
        .controller_expand_volume(expand(GIB, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 2 * GIB, "no shrinking");
    assert_code(
        h.controller
            .controller_expand_volume(expand(GIB, GIB))
            .await,
        Code::OutOfRange,
        "does not shrink",
    );
    assert_code(
        h.controller
            .controller_expand_volume(expand(20 * GIB, 0))
            .await,
        Code::ResourceExhausted,
        "growing",
    );
    let mut no_range = expand(GIB, 0);
    no_range.capacity_range = None;
    assert_code(
        h.controller.controller_expand_volume(no_range).await,
        Code::InvalidArgument,
        "capacity_range is required",
    );
    let mut as_block = expand(3 * GIB, 0);
    as_block.volume_capability = Some(block());
    assert_code(
        h.controller.controller_expand_volume(as_block).await,
        Code::InvalidArgument,
        "block access",
    );
    // A volume this berth does not hold is another node's: its NodeExpandVolume grows it.
    let mut elsewhere = expand(3 * GIB, 0);
    elsewhere.volume_id = "nope".into();
    let answer = h
        .controller
        .controller_expand_volume(elsewhere)
        .await
        .unwrap()
        .into_inner();
    assert!(answer.node_expansion_required);
    assert_eq!(answer.capacity_bytes, 3 * GIB);
    assert!(h.engine.get(&VolumeName::parse("nope").unwrap()).is_err());

    h.stage("g", "/k/s", mount()).await.unwrap();
    let node_expand = |path: &str, required: i64| NodeExpandVolumeRequest {
        volume_id: "g".into(),
        volume_path: path.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    assert_code(
        h.node
            .node_expand_volume(node_expand("/k/t", 3 * GIB))
            .await,
        Code::NotFound,
        "not staged or published",
    );
    for _ in 0..2 {
        let r = h
            .node
            .node_expand_volume(node_expand("/k/s", 3 * GIB))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, 3 * GIB);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volumes_are_staged_and_published_as_device_nodes() {
    let mut h = Harness::new().await;
    let mut req = request("raw", 64 * MIB, 0);
    req.volume_capabilities = vec![block()];
    h.create(req).await.unwrap();
    let staging = "/k/staging/raw";
    for _ in 0..2 {
        h.stage("raw", staging, block()).await.unwrap();
        h.publish("raw", staging, "/k/dev/raw", block(), false)
            .await
            .unwrap();
    }
    let fake = h.engine.host();
    let (source, _) = fake.mounted_at(Path::new("/k/staging/raw/raw")).unwrap();
    assert!(
        source.to_string_lossy().starts_with("/dev/loop"),
        "{source:?}"
    );
    assert_eq!(fake.mounted_at(Path::new("/k/dev/raw")).unwrap().0, source);
    assert_eq!(fake.loop_count(), 1);
    // A read-only bind of a device node would still allow writes: refused.
    assert_code(
        h.publish("raw", staging, "/k/dev/ro", block(), true).await,
        Code::FailedPrecondition,
        "read-only",
    );
    let mut reader = request("raw-ro", 64 * MIB, 0);
    reader.volume_capabilities = vec![cap(
        Mode::SingleNodeReaderOnly,
        CsiAccess::Block(BlockVolume {}),
    )];
    assert_code(h.create(reader).await, Code::InvalidArgument, "read-only");
    assert_code(
        h.publish("raw", staging, "/k/dev/other", mount(), false)
            .await,
        Code::FailedPrecondition,
        "mount access",
    );
    let answer = h
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "raw".into(),
            volume_path: "/k/dev/raw".into(),
            staging_target_path: staging.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.usage.len(), 1);
    assert_eq!(answer.usage[0].total, 64 * MIB);
    for _ in 0..2 {
        h.unpublish("raw", "/k/dev/raw").await.unwrap();
        h.unstage("raw", staging).await.unwrap();
    }
    assert_eq!(h.engine.host().loop_count(), 0);
    h.delete("raw").await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_volumes_live_as_long_as_their_publication() {
    let mut h = Harness::new().await;
    let id = "csi-0123456789abcdef";
    let publish = |context: HashMap<String, String>| NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: "/k/pods/p/vol".into(),
        volume_capability: Some(mount()),
        volume_context: context,
        ..Default::default()
    };
    let context = params(&[
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "prod"),
        ("size", "64Mi"),
    ]);
    for _ in 0..2 {
        h.node
            .node_publish_volume(publish(context.clone()))
            .await
            .unwrap();
    }
    let name = VolumeName::parse(id).unwrap();
    let v = h.engine.get(&name).unwrap();
    assert_eq!(v.size, Some(64 << 20));
    assert_eq!(
        v.spec.labels.get("csi.storage.k8s.io/pod.name"),
        Some("web-0")
    );
    assert_eq!(v.publications.len(), 1);
    h.unpublish(id, "/k/pods/p/vol").await.unwrap();
    assert!(h.engine.get(&name).is_err(), "removed with its publication");
    // A retried unpublish finds nothing.
    assert_code(h.unpublish(id, "/k/pods/p/vol").await, Code::NotFound, id);
    let mut bad = context.clone();
    bad.insert("colour".into(), "red".into());
    assert_code(
        h.node.node_publish_volume(publish(bad)).await,
        Code::InvalidArgument,
        "volume_context.colour: unknown key",
    );
    // An ephemeral volume cannot take over a persistent volume's id.
    h.create(request("csi-taken", GIB, 0)).await.unwrap();
    let mut taken = publish(context.clone());
    taken.volume_id = "csi-taken".into();
    assert_code(
        h.node.node_publish_volume(taken).await,
        Code::AlreadyExists,
        "persistent",
    );
    // A publish that fails leaves no volume behind.
    h.engine.host().fail_op("bind_mount");
    assert!(h.node.node_publish_volume(publish(context)).await.is_err());
    h.engine.host().heal();
    assert!(h.engine.get(&name).is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_mount_group_is_applied_as_group_ownership() {
    let mut h = Harness::new().await;
    h.create(request("shared", GIB, 0)).await.unwrap();
    h.stage("shared", "/k/s", mount_with("", &[], "3000"))
        .await
        .unwrap();
    let data = h
        .engine
        .get(&VolumeName::parse("shared").unwrap())
        .unwrap()
        .placement
        .data;
    assert_eq!(h.engine.host().ownership_of(&data).unwrap().gid, Some(3000));
    h.publish("shared", "/k/s", "/k/t", mount_with("", &[], "4000"), false)
        .await
        .unwrap();
    assert_eq!(h.engine.host().ownership_of(&data).unwrap().gid, Some(4000));
    assert_code(
        h.publish(
            "shared",
            "/k/s",
            "/k/u",
            mount_with("", &[], "staff"),
            false,
        )
        .await,
        Code::InvalidArgument,
        "volume_mount_group",
    );
    h.stop().await;
}

#[tokio::test]
async fn csi_never_sees_or_changes_a_docker_or_mesos_volume_whatever_id_is_sent() {
    let mut h = Harness::new().await;
    h.create(request("pvc-1", GIB, 0)).await.unwrap();
    for (id, frontend) in [("web", Frontend::Docker), ("mysql#d#1", Frontend::Mesos)] {
        let caller = Caller {
            frontend,
            wait_if_busy: false,
        };
        let request = CreateRequest {
            name: VolumeName::parse(id).unwrap(),
            spec: VolumeSpec {
                size: Some(GIB as u64),
                ..VolumeSpec::default()
            },
            owner: Owner::default(),
        };
        h.engine.create(caller, request).unwrap();
    }
    let before = h.engine.list(&VolumeFilter::default());
    let listed: Vec<String> = h
        .list(0, "")
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect();
    assert_eq!(listed, ["pvc-1"]);
    for id in ["web", "mysql#d#1"] {
        // Deleting a volume Kubernetes does not have succeeds and deletes nothing.
        h.delete(id).await.unwrap();
        assert_code(
            h.stage(id, "/k/staging/x", mount()).await,
            Code::NotFound,
            "may not use or change it",
        );
        assert_code(
            h.publish(id, "/k/staging/x", "/k/pods/x", mount(), false)
                .await,
            Code::NotFound,
            "may not use or change it",
        );
        let validate = h
            .controller
            .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: id.into(),
                volume_capabilities: vec![mount()],
                ..Default::default()
            })
            .await;
        assert_code(validate, Code::NotFound, "belongs to the");
        // Asking to create it is refused, not answered with the other front-end's volume.
        assert_code(
            h.create(request(id, GIB, 0)).await,
            Code::AlreadyExists,
            "may not use or change it",
        );
    }
    assert_eq!(h.engine.list(&VolumeFilter::default()), before);
    h.stop().await;
}

#[test]
fn every_engine_error_has_its_csi_code() {
    let v = || "v".to_string();
    let cases = [
        (
            EngineError::Input(InputError::Invalid {
                field: "f".into(),
                reason: "r".into(),
            }),
            Code::InvalidArgument,
        ),
        (EngineError::NotFound { volume: v() }, Code::NotFound),
        (
            EngineError::AlreadyExists {
                volume: v(),
                difference: "size".into(),
            },
            Code::AlreadyExists,
        ),
        (EngineError::Busy { volume: v() }, Code::Aborted),
        (
            EngineError::InUse {
                volume: v(),
                targets: "/t".into(),
            },
            Code::FailedPrecondition,
        ),
        (
            EngineError::WrongPhase {
                volume: v(),
                phase: "deleted",
            },
            Code::Aborted,
        ),
        (
            EngineError::NoCapacity {
                volume: v(),
                reason: "full".into(),
            },
            Code::ResourceExhausted,
        ),
        (
            EngineError::Unsupported {
                volume: v(),
                reason: "no".into(),
            },
            Code::InvalidArgument,
        ),
        (
            EngineError::PoolUnusable {
                pool: "p".into(),
                reason: "r".into(),
            },
            Code::FailedPrecondition,
        ),
        (
            EngineError::TargetConflict {
                volume: v(),
                target: "/t".into(),
                how: "ro".into(),
            },
            Code::AlreadyExists,
        ),
        (
            EngineError::TooManyVolumes {
                volume: v(),
                limit: 1,
            },
            Code::ResourceExhausted,
        ),
        (
            EngineError::Host {
                volume: Some(v()),
                operation: "op",
                source: HostError::Injected("x".into()),
            },
            Code::Internal,
        ),
    ];
    for (error, code) in cases {
        let status = status_of(&error);
        assert_eq!(status.code(), code, "{error}");
        assert_eq!(status.message(), error.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_volume_limit_is_resource_exhausted() {
    let mut h = Harness::new().await;
    for i in 0..50 {
        h.create(request(&format!("v{i}"), 0, 0)).await.unwrap();
    }
    assert_code(
        h.create(request("v50", 0, 0)).await,
        Code::ResourceExhausted,
        "limit of 50",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_the_socket() {
    let h = Harness::new().await;
    let socket = h._dir.path().join("csi.sock");
    assert!(socket.exists());
    h.stop().await;
    assert!(!socket.exists());
}
