//! CSI request fields parsed into engine types: StorageClass `parameters` (and an inline
//! ephemeral volume's `volume_context`), volume capabilities, capacity ranges and topology.
//!
//! Everything here is pure, so every refusal can be tested without a server. A refusal is a
//! [`Status`] whose message names the field and says what to do; the RPC handlers add the
//! volume's name.

use std::collections::{BTreeMap, HashMap};

use tonic::Status;

use super::proto::volume_capability::{AccessType as CsiAccess, access_mode::Mode};
use super::proto::{CapacityRange, Topology, TopologyRequirement, VolumeCapability};
use crate::engine::request;
use crate::engine::sizing::SizeRange;
use crate::engine::types::{AccessType, VolumeSpec};

/// Keys Kubernetes itself puts into `parameters` and `volume_context`.
const K8S_PREFIX: &str = "csi.storage.k8s.io/";
/// `volume_context` key that marks an inline ephemeral volume (value `"true"`).
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// Kubernetes metadata berth records as labels, so operators can find a claim's volume.
const RECORDED_KEYS: [&str; 4] = [
    "csi.storage.k8s.io/pvc/name",
    "csi.storage.k8s.io/pvc/namespace",
    "csi.storage.k8s.io/pod.name",
    "csi.storage.k8s.io/pod.namespace",
];
/// The prefix of user labels in `parameters` (`label/team = db`).
const LABEL_PREFIX: &str = "label/";

/// Where a parameter map came from: they accept the same keys, and an ephemeral volume's
/// context may also carry its `size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamSource {
    /// `CreateVolumeRequest.parameters` (a StorageClass's `parameters`).
    Parameters,
    /// `NodePublishVolumeRequest.volume_context` of an inline ephemeral volume.
    EphemeralContext,
}

impl ParamSource {
    fn field(self) -> &'static str {
        match self {
            Self::Parameters => "parameters",
            Self::EphemeralContext => "volume_context",
        }
    }
}

/// What a parameter map asks of the volume, in the engine's vocabulary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeParameters {
    /// Its size is set only by an ephemeral volume's context.
    pub request: VolumeSpec,
}

impl VolumeParameters {
    /// The spec these parameters describe; size, access and source are set by the caller.
    pub fn spec(&self) -> VolumeSpec {
        VolumeSpec {
            size: None,
            ..self.request.clone()
        }
    }

    /// Only from an ephemeral volume's context.
    pub fn size(&self) -> Option<u64> {
        self.request.size
    }
}

/// Parses StorageClass parameters or an ephemeral volume's context through the engine's
/// request vocabulary. Unknown keys are refused (a typo must not silently give another kind
/// of volume); Kubernetes' own `csi.storage.k8s.io/*` keys are accepted, and the claim's or
/// pod's name and namespace are recorded as labels.
pub fn parse_parameters(
    map: &HashMap<String, String>,
    source: ParamSource,
) -> Result<VolumeParameters, Status> {
    let field = source.field();
    let invalid =
        |key: &str, reason: String| Status::invalid_argument(format!("{field}.{key}: {reason}"));
    let dialect = match source {
        ParamSource::Parameters => &request::CSI_PARAMETERS,
        ParamSource::EphemeralContext => &request::CSI_EPHEMERAL,
    };
    let mut recorded = BTreeMap::new();
    let mut shared = Vec::new();
    for (key, value) in map {
        if RECORDED_KEYS.contains(&key.as_str()) {
            recorded.insert(key.clone(), value.clone());
        } else if key.starts_with(K8S_PREFIX) {
            // Kubernetes' own context keys: nothing to act on.
        } else if key
            .strip_prefix(LABEL_PREFIX)
            .is_some_and(|label| label.starts_with(K8S_PREFIX))
        {
            return Err(invalid(
                key,
                format!("labels under {K8S_PREFIX} are Kubernetes' own; use another key"),
            ));
        } else {
            shared.push((key.as_str(), value.as_str()));
        }
    }
    let mut request = dialect
        .parse(shared)
        .map_err(|e| invalid(&e.key, e.reason))?;
    request.labels.extend(recorded);
    Ok(VolumeParameters { request })
}

/// How a capability asks to use the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    pub access: AccessType,
    /// A reader-only access mode, or the `ro` mount flag.
    pub read_only: bool,
    /// `MountVolume.fs_type`, if set.
    pub fs_type: Option<String>,
    /// `MountVolume.volume_mount_group`, if set.
    pub mount_group: Option<u32>,
}

/// Why a capability cannot be used: malformed (always `INVALID_ARGUMENT`), or well-formed
/// but beyond what berth volumes can do (the code depends on the RPC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CapabilityError {
    Invalid(String),
    Unsupported(String),
}

impl CapabilityError {
    #[cfg(test)]
    pub fn message(&self) -> &str {
        match self {
            Self::Invalid(m) | Self::Unsupported(m) => m,
        }
    }

    /// The status for an RPC where an unsupported capability gets `unsupported_code`.
    pub fn status(&self, unsupported_code: tonic::Code) -> Status {
        match self {
            Self::Invalid(m) => Status::invalid_argument(m.clone()),
            Self::Unsupported(m) => Status::new(unsupported_code, m.clone()),
        }
    }
}

/// Parses one capability; `field` names it in messages (`volume_capabilities[0]`).
pub fn parse_capability(
    cap: &VolumeCapability,
    field: &str,
) -> Result<Capability, CapabilityError> {
    let Some(mode) = &cap.access_mode else {
        return Err(CapabilityError::Invalid(format!(
            "{field}.access_mode is required"
        )));
    };
    let read_only = match Mode::try_from(mode.mode) {
        Ok(Mode::SingleNodeWriter) => false,
        Ok(Mode::SingleNodeReaderOnly) => true,
        Ok(Mode::Unknown) | Err(_) => {
            return Err(CapabilityError::Invalid(format!(
                "{field}.access_mode: {} is not an access mode; use SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY",
                mode.mode
            )));
        }
        Ok(other) => {
            return Err(CapabilityError::Unsupported(format!(
                "{field}.access_mode {} is not supported: berth volumes live on one node; use SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY",
                other.as_str_name()
            )));
        }
    };
    match &cap.access_type {
        None => Err(CapabilityError::Invalid(format!(
            "{field}.access_type is required: block or mount"
        ))),
        Some(CsiAccess::Block(_)) if read_only => {
            Err(CapabilityError::Unsupported(read_only_block(&format!(
                "{field}.access_mode {}",
                Mode::SingleNodeReaderOnly.as_str_name()
            ))))
        }
        Some(CsiAccess::Block(_)) => Ok(Capability {
            access: AccessType::Block,
            read_only,
            fs_type: None,
            mount_group: None,
        }),
        Some(CsiAccess::Mount(mount)) => {
            let mut read_only = read_only;
            for flag in &mount.mount_flags {
                match flag.as_str() {
                    "ro" => read_only = true,
                    "rw" | "defaults" => {}
                    other => {
                        return Err(CapabilityError::Invalid(format!(
                            "{field}.mount.mount_flags: {other:?} is not supported; berth bind-mounts volumes and accepts only \"ro\" and \"rw\""
                        )));
                    }
                }
            }
            let mount_group = match mount.volume_mount_group.as_str() {
                "" => None,
                raw => Some(raw.parse::<u32>().map_err(|_| {
                    CapabilityError::Invalid(format!(
                        "{field}.mount.volume_mount_group: {raw:?} is not a numeric group id"
                    ))
                })?),
            };
            Ok(Capability {
                access: AccessType::Filesystem,
                read_only,
                fs_type: Some(mount.fs_type.clone()).filter(|f| !f.is_empty()),
                mount_group,
            })
        }
    }
}

/// Why a block volume cannot be given read-only: a read-only bind mount of a device node
/// does not stop writes through it, and berth shares one loop device per volume.
pub fn read_only_block(what: &str) -> String {
    format!(
        "{what}: berth cannot make block access read-only (a read-only bind of a device node still allows writes); publish it read-write or use a filesystem volume"
    )
}

/// Checks a capability against an existing volume: the access type must match, and a
/// requested filesystem type must be the one the volume has (its loopfs filesystem).
/// Plain directory volumes live on the pool's filesystem, whatever it is, so any `fs_type`
/// is accepted for them.
pub fn check_fits(
    cap: &Capability,
    volume: &crate::engine::types::Volume,
    field: &str,
) -> Result<(), CapabilityError> {
    if cap.access != volume.spec.access {
        let (asked, is) = match volume.spec.access {
            AccessType::Block => ("mount", "a block volume"),
            AccessType::Filesystem => ("block", "a filesystem volume"),
        };
        return Err(CapabilityError::Unsupported(format!(
            "{field} asks for {asked} access, but volume {} is {is}",
            volume.name
        )));
    }
    if let (Some(asked), Some(fs)) = (&cap.fs_type, volume.placement.fs)
        && asked != fs.as_str()
    {
        return Err(CapabilityError::Unsupported(format!(
            "{field}.mount.fs_type {asked:?}: volume {} has an {} filesystem (set by its pool)",
            volume.name,
            fs.as_str()
        )));
    }
    Ok(())
}

/// `capacity_range` checked, as the engine's size range: `required` is 0 when unspecified,
/// `limit` `None`.
pub fn parse_range(range: Option<&CapacityRange>) -> Result<SizeRange, Status> {
    let Some(range) = range else {
        return Ok(SizeRange::default());
    };
    let non_negative = |value: i64, name: &str| {
        u64::try_from(value).map_err(|_| {
            Status::invalid_argument(format!(
                "capacity_range.{name}: {value} is negative; sizes are bytes, 0 for unspecified"
            ))
        })
    };
    let required = non_negative(range.required_bytes, "required_bytes")?;
    let limit = non_negative(range.limit_bytes, "limit_bytes")?;
    let limit = (limit > 0).then_some(limit);
    if let Some(limit) = limit
        && limit < required
    {
        return Err(Status::out_of_range(format!(
            "capacity_range: limit_bytes {limit} is below required_bytes {required}"
        )));
    }
    Ok(SizeRange { required, limit })
}

/// This node's topology as CSI carries it.
pub fn topology_of(node: &BTreeMap<String, String>) -> Topology {
    Topology {
        segments: node.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Whether this node lies in `topology`: every segment it names has this node's value.
pub fn node_in(node: &BTreeMap<String, String>, topology: &Topology) -> bool {
    topology
        .segments
        .iter()
        .all(|(k, v)| node.get(k) == Some(v))
}

/// Checks that accessibility requirements admit this node: one of the `requisite`
/// topologies must hold it, or, when there are none, one of the `preferred`. A volume
/// berth makes is reachable only here, so a request that excludes this node cannot be met.
pub fn check_requirements(
    node: &BTreeMap<String, String>,
    requirements: Option<&TopologyRequirement>,
) -> Result<(), Status> {
    let Some(req) = requirements else {
        return Ok(());
    };
    let (list, which) = if !req.requisite.is_empty() {
        (&req.requisite, "requisite")
    } else if !req.preferred.is_empty() {
        (&req.preferred, "preferred")
    } else {
        return Ok(());
    };
    if list.iter().any(|t| node_in(node, t)) {
        return Ok(());
    }
    Err(Status::resource_exhausted(format!(
        "accessibility_requirements.{which} does not include this node ({}); berth volumes live on the node that serves the request",
        describe(node)
    )))
}

fn describe(node: &BTreeMap<String, String>) -> String {
    node.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::proto::volume_capability::{AccessMode, BlockVolume, MountVolume};
    use crate::engine::types::{Ownership, PoolKind, ReclaimPolicy};
    use tonic::Code;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_map_to_the_spec() {
        let p = parse_parameters(
            &map(&[
                ("type", "path"),
                ("pool", "ssd"),
                ("profile", "fast"),
                ("reclaim", "retain"),
                ("uid", "1000"),
                ("gid", "2000"),
                ("mode", "0750"),
                ("label/team", "db"),
                ("csi.storage.k8s.io/pvc/name", "data"),
                ("csi.storage.k8s.io/pvc/namespace", "prod"),
                ("csi.storage.k8s.io/pv/name", "pvc-1"),
            ]),
            ParamSource::Parameters,
        )
        .unwrap();
        assert_eq!(p.request.kind, Some(PoolKind::Path));
        assert_eq!(p.request.pool.as_deref(), Some("ssd"));
        assert_eq!(p.request.profile.as_deref(), Some("fast"));
        assert_eq!(p.request.reclaim, Some(ReclaimPolicy::Retain));
        assert_eq!(
            p.request.ownership,
            Ownership {
                uid: Some(1000),
                gid: Some(2000),
                mode: Some(0o750)
            }
        );
        assert_eq!(p.request.labels.get("team"), Some("db"));
        assert_eq!(
            p.request.labels.get("csi.storage.k8s.io/pvc/namespace"),
            Some("prod")
        );
        assert!(!p.request.labels.contains_key("csi.storage.k8s.io/pv/name"));
        let spec = p.spec();
        assert_eq!(spec.pool.as_deref(), Some("ssd"));
        assert_eq!(spec.size, None);
    }

    #[test]
    fn bad_parameters_name_the_key() {
        let cases = [
            (vec![("colour", "red")], "parameters.colour: unknown key"),
            (vec![("type", "disk")], "parameters.type"),
            (vec![("reclaim", "keep")], "parameters.reclaim"),
            (vec![("uid", "-1")], "parameters.uid"),
            (vec![("gid", "lots")], "parameters.gid"),
            (vec![("mode", "0999")], "parameters.mode"),
            (vec![("mode", "")], "parameters.mode"),
            (vec![("pool", "")], "parameters.pool"),
            (vec![("label/", "x")], "parameters.label/"),
            (
                vec![("label/csi.storage.k8s.io/ephemeral", "true")],
                "Kubernetes' own",
            ),
            (vec![("size", "1Gi")], "parameters.size: unknown key"),
        ];
        for (pairs, needle) in cases {
            let err = parse_parameters(&map(&pairs), ParamSource::Parameters).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{pairs:?}");
            assert!(
                err.message().contains(needle),
                "{pairs:?}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn an_ephemeral_context_may_carry_a_size_and_pod_metadata() {
        let p = parse_parameters(
            &map(&[
                ("size", "64Mi"),
                (EPHEMERAL_KEY, "true"),
                ("csi.storage.k8s.io/pod.name", "web-0"),
                ("csi.storage.k8s.io/pod.namespace", "prod"),
                ("csi.storage.k8s.io/pod.uid", "1234"),
                ("csi.storage.k8s.io/serviceAccount.name", "default"),
            ]),
            ParamSource::EphemeralContext,
        )
        .unwrap();
        assert_eq!(p.size(), Some(64 << 20));
        assert_eq!(p.request.labels.len(), 2, "{:?}", p.request.labels);
        let err =
            parse_parameters(&map(&[("size", "-1")]), ParamSource::EphemeralContext).unwrap_err();
        assert!(err.message().contains("volume_context.size"), "{err}");
    }

    fn cap(mode: Mode, access: CsiAccess) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(access),
        }
    }

    fn mount(fs: &str, flags: &[&str], group: &str) -> CsiAccess {
        CsiAccess::Mount(MountVolume {
            fs_type: fs.into(),
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            volume_mount_group: group.into(),
        })
    }

    #[test]
    fn capabilities_parse_access_read_only_and_group() {
        let c = parse_capability(&cap(Mode::SingleNodeWriter, mount("", &[], "")), "c").unwrap();
        assert_eq!(c.access, AccessType::Filesystem);
        assert!(!c.read_only);
        let c = parse_capability(
            &cap(Mode::SingleNodeWriter, mount("ext4", &["ro"], "2000")),
            "c",
        )
        .unwrap();
        assert!(c.read_only);
        assert_eq!(c.fs_type.as_deref(), Some("ext4"));
        assert_eq!(c.mount_group, Some(2000));
        let c = parse_capability(
            &cap(Mode::SingleNodeWriter, CsiAccess::Block(BlockVolume {})),
            "c",
        )
        .unwrap();
        assert_eq!(c.access, AccessType::Block);
        assert!(!c.read_only);
    }

    #[test]
    fn capabilities_berth_cannot_honour_are_refused() {
        let err = parse_capability(
            &cap(Mode::SingleNodeReaderOnly, CsiAccess::Block(BlockVolume {})),
            "c",
        )
        .unwrap_err();
        assert!(matches!(err, CapabilityError::Unsupported(_)), "{err:?}");
        assert!(err.message().contains("read-only"), "{err:?}");
        let unsupported = [Mode::MultiNodeReaderOnly, Mode::MultiNodeMultiWriter];
        for mode in unsupported {
            let err = parse_capability(&cap(mode, mount("", &[], "")), "c").unwrap_err();
            assert!(matches!(err, CapabilityError::Unsupported(_)), "{err:?}");
            assert!(err.message().contains(mode.as_str_name()), "{err:?}");
        }
        let invalid = [
            VolumeCapability::default(),
            VolumeCapability {
                access_mode: Some(AccessMode { mode: 0 }),
                access_type: Some(mount("", &[], "")),
            },
            VolumeCapability {
                access_mode: Some(AccessMode { mode: 99 }),
                access_type: Some(mount("", &[], "")),
            },
            VolumeCapability {
                access_mode: Some(AccessMode { mode: 1 }),
                access_type: None,
            },
            cap(Mode::SingleNodeWriter, mount("", &["noexec"], "")),
            cap(Mode::SingleNodeWriter, mount("", &[], "wheel")),
        ];
        for c in invalid {
            let err = parse_capability(&c, "volume_capability").unwrap_err();
            assert!(matches!(err, CapabilityError::Invalid(_)), "{c:?}: {err:?}");
            assert!(err.message().starts_with("volume_capability"), "{err:?}");
            assert_eq!(
                err.status(Code::FailedPrecondition).code(),
                Code::InvalidArgument
            );
        }
    }

    #[test]
    fn ranges_refuse_negative_and_contradictory_bounds() {
        let r = |required, limit| CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        };
        assert_eq!(parse_range(None).unwrap(), SizeRange::default());
        assert_eq!(
            parse_range(Some(&r(5, 0))).unwrap(),
            SizeRange {
                required: 5,
                limit: None
            }
        );
        let err = parse_range(Some(&r(-1, 0))).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("required_bytes"), "{err}");
        let err = parse_range(Some(&r(0, -5))).unwrap_err();
        assert!(err.message().contains("limit_bytes"), "{err}");
        let err = parse_range(Some(&r(10, 5))).unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
    }

    #[test]
    fn topology_requirements_must_admit_this_node() {
        let node: BTreeMap<String, String> = [
            ("topology.berth.io/node".to_string(), "n1".to_string()),
            ("zone".to_string(), "a".to_string()),
        ]
        .into();
        let t = |pairs: &[(&str, &str)]| Topology {
            segments: map(pairs),
        };
        assert!(node_in(&node, &t(&[("topology.berth.io/node", "n1")])));
        assert!(node_in(&node, &topology_of(&node)));
        assert!(!node_in(&node, &t(&[("topology.berth.io/node", "n2")])));
        assert!(!node_in(&node, &t(&[("rack", "r1")])));
        let req = |requisite: Vec<Topology>, preferred: Vec<Topology>| TopologyRequirement {
            requisite,
            preferred,
        };
        let here = t(&[("topology.berth.io/node", "n1")]);
        let there = t(&[("topology.berth.io/node", "n2")]);
        assert!(check_requirements(&node, None).is_ok());
        assert!(check_requirements(&node, Some(&req(vec![], vec![]))).is_ok());
        assert!(
            check_requirements(&node, Some(&req(vec![there.clone(), here.clone()], vec![])))
                .is_ok()
        );
        assert!(check_requirements(&node, Some(&req(vec![], vec![here.clone()]))).is_ok());
        for r in [
            req(vec![there.clone()], vec![here.clone()]),
            req(vec![], vec![there.clone()]),
        ] {
            let err = check_requirements(&node, Some(&r)).unwrap_err();
            assert_eq!(err.code(), Code::ResourceExhausted);
            assert!(err.message().contains("topology.berth.io/node=n1"), "{err}");
        }
    }
}
