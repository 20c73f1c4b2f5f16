//! Export and import on the fake host: size hints, ownership, and a failure or crash at any step.

use std::path::Path;

use super::*;
use crate::engine::pool::PoolConfig;
use crate::engine::snapshot::SnapshotRequest;
use crate::engine::{EngineConfig, NodeInfo, VolumeService};
use crate::host::fake::FakeHost;

const GIB: u64 = 1 << 30;
const ADMIN: Caller = Caller {
    frontend: Frontend::Admin,
    wait_if_busy: false,
};

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

fn open(dir: &Path, host: FakeHost) -> Engine<FakeHost> {
    let mut pool = PoolConfig::default_root(Path::new("/pool"));
    pool.paths = vec![PathBuf::from("/pool/volumes")];
    pool.capacity = Some(10 * GIB);
    let config = EngineConfig {
        store_path: dir.join("berth.redb"),
        pools: vec![pool],
        node: NodeInfo::default(),
    };
    Engine::open(config, host).unwrap()
}

fn host() -> FakeHost {
    let h = FakeHost::new(100 * GIB);
    h.add_dir(Path::new("/pool/volumes"));
    h
}

fn archive(size: Option<u64>, bytes: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    write_hints(&mut out, &ArchiveHints { size, bytes }).unwrap();
    out.extend_from_slice(b"the rest of the archive");
    out
}

fn import(
    e: &Engine<FakeHost>,
    caller: Caller,
    n: &str,
    frontend: Option<OwnerFrontend>,
    input: &[u8],
) -> Result<Volume, EngineError> {
    e.import(
        caller,
        ImportRequest {
            name: name(n),
            spec: VolumeSpec::default(),
            owner: Owner::default(),
            frontend,
        },
        &mut &input[..],
    )
}

#[test]
fn hints_round_trip_and_size_an_import() {
    let bytes = archive(Some(3 * GIB), Some(5));
    let (prefix, hints) = peek_hints(&mut &bytes[..]).unwrap();
    assert_eq!(prefix.len(), 1024, "the header block and its padded data");
    assert_eq!(hints.volume_size(), Some(3 * GIB));
    let no_size = ArchiveHints {
        size: None,
        bytes: Some(GIB),
    };
    assert_eq!(no_size.volume_size(), Some(GIB + GIB / 100 * 25));
    let tiny = ArchiveHints {
        size: None,
        bytes: Some(1),
    };
    assert_eq!(tiny.volume_size(), Some(1 + MIN_HEADROOM));
    // Not berth's archive: nothing known, the block is read again by the unpacking.
    let plain = vec![b'x'; 600];
    let (prefix, hints) = peek_hints(&mut &plain[..]).unwrap();
    assert_eq!((prefix.len(), hints), (512, ArchiveHints::default()));
}

#[test]
fn an_import_is_sized_owned_and_ready_or_rolled_back_at_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), host());
    let input = archive(Some(2 * GIB), None);
    let before = e.host().call_count();
    let probe = import(&e, ADMIN, "probe", Some(OwnerFrontend::Mesos), &input).unwrap();
    assert_eq!(probe.size, Some(2 * GIB));
    assert_eq!(probe.frontend, OwnerFrontend::Mesos);
    assert_eq!(probe.phase, Phase::Ready);
    let steps = e.host().call_count() - before;
    assert!(
        e.host()
            .calls()
            .iter()
            .any(|c| c.op == "import_tree" && c.path == probe.placement.data)
    );
    for step in 0..steps {
        e.host().fail_at_call(e.host().call_count() + step);
        assert!(import(&e, ADMIN, "v", None, &input).is_err(), "step {step}");
        assert!(e.get(&name("v")).is_err(), "step {step}: rolled back");
        e.host().heal();
    }
    let v = import(&e, ADMIN, "v", None, &input).unwrap();
    assert_eq!(v.frontend, OwnerFrontend::Docker, "an operator's default");
    let again = import(&e, ADMIN, "v", None, &input).unwrap_err();
    assert!(
        matches!(again, EngineError::AlreadyExists { .. }),
        "{again}"
    );
    // A front-end imports only for itself.
    let docker = Caller {
        frontend: Frontend::Docker,
        wait_if_busy: false,
    };
    let refused = import(&e, docker, "w", Some(OwnerFrontend::Csi), &input).unwrap_err();
    assert!(matches!(refused, EngineError::Input(_)), "{refused}");
}

#[test]
fn a_crash_mid_import_is_rolled_back_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), host());
    e.host().crash_at("import_tree");
    let input = archive(Some(GIB), None);
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        import(&e, ADMIN, "v", None, &input)
    }));
    assert!(crashed.is_err());
    drop(e);
    let e = open(dir.path(), host());
    assert_eq!(
        e.recovery_report().rolled_back_creates,
        vec!["v".to_string()]
    );
    assert!(e.get(&name("v")).is_err());
    import(&e, ADMIN, "v", None, &input).unwrap();
}

#[test]
fn an_export_says_what_it_read_and_a_snapshot_is_its_owners() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), host());
    let csi = Caller {
        frontend: Frontend::Csi,
        wait_if_busy: false,
    };
    let v = e
        .create(
            csi,
            CreateRequest {
                name: name("v"),
                spec: VolumeSpec {
                    size: Some(GIB),
                    ..VolumeSpec::default()
                },
                owner: Owner::default(),
            },
        )
        .unwrap();
    let mut plans = Vec::new();
    let mut out = Vec::new();
    e.export(ADMIN, &name("v"), &mut |p| plans.push(p.clone()), &mut out)
        .unwrap();
    assert_eq!(plans.len(), 1);
    assert!(plans[0].consistent && plans[0].note.is_none());
    let (prefix, hints) = peek_hints(&mut &out[..]).unwrap();
    assert_eq!(hints.size, Some(GIB));
    assert_eq!(
        &out[prefix.len()..],
        v.placement.data.as_os_str().as_encoded_bytes()
    );
    e.snapshot(
        csi,
        SnapshotRequest {
            name: name("s"),
            source: name("v"),
        },
    )
    .unwrap();
    let docker = Caller {
        frontend: Frontend::Docker,
        wait_if_busy: false,
    };
    for target in ["v", "s"] {
        let refused = e
            .export(docker, &name(target), &mut |_| {}, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(refused, EngineError::HeldByOther { .. }),
            "{refused}"
        );
    }
    let missing = e
        .export(ADMIN, &name("nothing"), &mut |_| {}, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(missing, EngineError::NotFound { .. }), "{missing}");
}
