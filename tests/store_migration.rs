//! The store's schema migration on a real store file written by the previous berth
//! (`tests/fixtures/store/v1.redb`: made by the schema-1 `berth serve` with two CSI claims,
//! two Docker volumes, one of them mounted, and a Marathon app's detached persistent volume),
//! and a `kill -9` in the middle of the migration's transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth::engine::types::{OwnerFrontend, Volume};
use berth::store::{SCHEMA_VERSION, Store};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store/v1.redb");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes_v1");
/// Set in the child process that is killed during the migration: the store to migrate.
const CHILD_STORE_ENV: &str = "BERTH_TEST_MIGRATION_VICTIM";

/// The schema version and every record, read with redb directly (not through berth).
fn raw(path: &Path) -> (u64, BTreeMap<String, Value>) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn
        .open_table(META)
        .unwrap()
        .get("schema_version")
        .unwrap()
        .unwrap()
        .value();
    let table = txn.open_table(VOLUMES).unwrap();
    let records = table
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (
                k.value().to_string(),
                serde_json::from_slice(v.value()).unwrap(),
            )
        })
        .collect();
    (version, records)
}

fn copy_of_fixture(dir: &Path) -> PathBuf {
    let path = dir.join("berth.redb");
    std::fs::copy(FIXTURE, &path).unwrap();
    path
}

#[test]
fn a_version_1_store_migrates_with_each_volume_owned_by_the_frontend_that_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of_fixture(dir.path());
    let (version, before) = raw(&path);
    assert_eq!(version, 1);
    assert_eq!(before.len(), 5, "{:?}", before.keys());
    assert!(before.values().all(|r| r.get("frontend").is_none()));

    let store = Store::open(&path).unwrap();
    let owners: BTreeMap<String, OwnerFrontend> = store
        .load_all::<Volume>()
        .unwrap()
        .into_iter()
        .map(|v| (v.name.to_string(), v.frontend))
        .collect();
    let mesos = owners
        .keys()
        .find(|n| n.starts_with("mysql#mysqldata#"))
        .unwrap()
        .clone();
    let expected = BTreeMap::from([
        // Provisioned with Kubernetes' claim metadata recorded as labels.
        (
            "pvc-1b4e28ba-2fa1-11d2-883f-0016d3cca427".to_string(),
            OwnerFrontend::Csi,
        ),
        // Provisioned without metadata: the external-provisioner's name gives it away.
        (
            "pvc-6f1d0c2a-9b7e-4d1e-8a55-3c2f10b7e9aa".to_string(),
            OwnerFrontend::Csi,
        ),
        ("web-data".to_string(), OwnerFrontend::Docker),
        ("pvc-notes".to_string(), OwnerFrontend::Docker),
        (mesos, OwnerFrontend::Mesos),
    ]);
    assert_eq!(owners, expected);
    drop(store);

    // Nothing but the owner changed, and the version says so.
    let (version, after) = raw(&path);
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(version, 2);
    for (name, mut record) in after {
        let frontend = record.as_object_mut().unwrap().remove("frontend").unwrap();
        assert_eq!(frontend, expected[&name].as_str(), "{name}");
        assert_eq!(record, before[&name], "{name}");
    }
    // Opening again is a no-op.
    let again = Store::open(&path).unwrap().load_all::<Volume>().unwrap();
    assert_eq!(again.len(), 5);
}

/// Run in a child process: migrates the store named by [`CHILD_STORE_ENV`] and kills itself
/// with SIGKILL after the third record is rewritten, before the transaction commits.
#[test]
fn migration_victim() {
    let Some(path) = std::env::var_os(CHILD_STORE_ENV) else {
        return; // Only the child of the test below does anything.
    };
    let _ = Store::open_observing_migration(Path::new(&path), &mut |n| {
        if n == 3 {
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        }
    });
    panic!("the migration finished although it should have been killed");
}

#[test]
fn kill_9_during_the_migration_leaves_version_1_untouched_and_the_next_open_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of_fixture(dir.path());
    let before = raw(&path);

    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "migration_victim",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STORE_ENV, &path)
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the child was not killed: {status}"
    );

    // Wholly version 1: the same version and byte-identical records.
    assert_eq!(raw(&path), before);

    let migrated = Store::open(&path).unwrap().load_all::<Volume>().unwrap();
    assert_eq!(migrated.len(), 5);
    assert_eq!(raw(&path).0, 2);
}
