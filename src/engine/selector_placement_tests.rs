//! Placement by label selector, on the fake host: each operator of the grammar picks the
//! pool (or the base path, by its disk labels) whose labels satisfy it, and a selector no
//! place satisfies is refused with each place's labels and the requirement it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::pool::PoolConfig;
use super::request::DOCKER;
use super::*;
use crate::host::fake::FakeHost;

const GIB: u64 = 1 << 30;
const DOCKER_CALLER: Caller = Caller {
    frontend: Frontend::Docker,
    wait_if_busy: false,
};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pool(name: &str, paths: &[&str], own: &[(&str, &str)]) -> PoolConfig {
    let mut pool = PoolConfig::default_root(Path::new("/unused"));
    pool.name = name.into();
    pool.kind = PoolKind::Path;
    pool.paths = paths.iter().map(PathBuf::from).collect();
    pool.labels = labels(own);
    pool.capacity = Some(10 * GIB);
    pool
}

/// Pools `fast` (media=ssd, rack=r1), `slow` (media=hdd, rack=r3) and `mixed`, whose two
/// paths carry their own disk labels (rack=r2 and none) on top of the pool's tier=bulk.
fn engine(dir: &Path) -> Engine<FakeHost> {
    let mut mixed = pool("mixed", &["/p/mixed-a", "/p/mixed-b"], &[("tier", "bulk")]);
    mixed.disk_labels.insert(
        "/p/mixed-a".into(),
        labels(&[("rack", "r2"), ("media", "nvme")]),
    );
    let pools = vec![
        pool("fast", &["/p/fast"], &[("media", "ssd"), ("rack", "r1")]),
        pool("slow", &["/p/slow"], &[("media", "hdd"), ("rack", "r3")]),
        mixed,
    ];
    for p in &pools {
        p.validate().unwrap();
    }
    let host = FakeHost::new(100 * GIB);
    for path in ["/p/fast", "/p/slow", "/p/mixed-a", "/p/mixed-b"] {
        host.add_dir(Path::new(path));
    }
    let config = EngineConfig {
        store_path: dir.join("berth.redb"),
        pools,
        node: NodeInfo {
            node_id: "n1".into(),
            ..NodeInfo::default()
        },
    };
    Engine::open(config, host).unwrap()
}

/// Creates a volume asking `selector` (through the one request vocabulary) and says where
/// it landed: `pool:base`.
fn place(engine: &Engine<FakeHost>, name: &str, selector: &str) -> Result<String, EngineError> {
    let spec = DOCKER
        .parse([("size", "1MiB"), ("selector", selector)])
        .unwrap();
    let request = CreateRequest {
        name: VolumeName::parse(name).unwrap(),
        spec,
        owner: Owner::default(),
    };
    let volume = engine.create(DOCKER_CALLER, request)?;
    Ok(format!(
        "{}:{}",
        volume.placement.pool,
        volume.placement.base.display()
    ))
}

#[test]
fn each_operator_picks_the_place_whose_labels_satisfy_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let cases = [
        ("media=ssd", "fast:/p/fast"),
        ("media==hdd", "slow:/p/slow"),
        ("rack in (r2,r9)", "mixed:/p/mixed-a"),
        ("tier,!rack", "mixed:/p/mixed-b"),
        ("media!=ssd,media!=hdd,media!=nvme", "mixed:/p/mixed-b"),
        ("rack notin (r1,r2),media", "slow:/p/slow"),
        ("media=nvme,tier=bulk", "mixed:/p/mixed-a"),
    ];
    for (index, (selector, expected)) in cases.into_iter().enumerate() {
        let placed = place(&engine, &format!("v{index}"), selector)
            .unwrap_or_else(|e| panic!("{selector}: {e}"));
        assert_eq!(placed, expected, "{selector}");
    }
}

#[test]
fn an_unsatisfiable_selector_says_why_for_every_place_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let error = place(&engine, "v", "media=ssd,rack=r2").unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, EngineError::NoCapacity { .. }), "{message}");
    for reason in [
        "/p/fast in pool fast has labels {media=ssd, rack=r1} and fails the selector's rack=r2",
        "/p/slow in pool slow has labels {media=hdd, rack=r3} and fails the selector's media=ssd",
        "/p/mixed-a in pool mixed has labels {media=nvme, rack=r2, tier=bulk} and fails the selector's media=ssd",
        "/p/mixed-b in pool mixed has labels {tier=bulk} and fails the selector's media=ssd",
    ] {
        assert!(message.contains(reason), "{reason}\n{message}");
    }
    assert!(engine.list(&VolumeFilter::default()).is_empty());
}

#[test]
fn the_selector_is_part_of_the_spec_for_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    assert_eq!(place(&engine, "v", "media=ssd").unwrap(), "fast:/p/fast");
    assert_eq!(place(&engine, "v", "media=ssd").unwrap(), "fast:/p/fast");
    let error = place(&engine, "v", "media").unwrap_err().to_string();
    assert!(error.contains("different parameters (selector)"), "{error}");
}

#[test]
fn capacity_counts_only_the_places_a_selector_picks() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let capacity = |selector: &str| -> Vec<(String, u64)> {
        let selector = PoolSelector {
            selector: Some(selector::LabelSelector::parse(selector).unwrap()),
            ..PoolSelector::default()
        };
        engine
            .capacity(&selector)
            .into_iter()
            .map(|c| (c.pool, c.capacity_bytes))
            .collect()
    };
    assert_eq!(capacity("media=ssd"), [("fast".to_string(), 10 * GIB)]);
    assert_eq!(capacity("tier"), [("mixed".to_string(), 20 * GIB)]);
    assert_eq!(capacity("rack=r2"), [("mixed".to_string(), 10 * GIB)]);
    assert_eq!(capacity("media=tape"), []);
    assert_eq!(engine.capacity(&PoolSelector::default()).len(), 3);
}
