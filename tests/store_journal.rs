//! The store's journal under `kill -9`: a child process writes and removes records as fast as
//! it can, saying after each write that it returned; the test kills it at several points
//! (before the first checkpoint and after several) and reopens the store. Every write that
//! returned must be there, nothing after the next one may be, and a second open replays
//! nothing. Until a clean close the store file says a schema version no berth without the
//! journal accepts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use berth::store::{SCHEMA_VERSION, SCHEMA_VERSION_OPEN, Store, StoreStats, journal_path};
use redb::{ReadableDatabase, TableDefinition};
use serde_json::{Value, json};

/// Set in the child: the store it writes to.
const CHILD_STORE_ENV: &str = "BERTH_TEST_JOURNAL_VICTIM";
const KEYS: usize = 97;

/// Operation `i`: which key, and the record it writes (`None`: it removes the key).
fn operation(i: usize) -> (String, Option<Value>) {
    let key = format!("k{:02}", i % KEYS);
    if i % 10 == 9 {
        (key, None)
    } else {
        let record = json!({"key": key, "i": i, "pad": "x".repeat(400 + i % 300)});
        (key, Some(record))
    }
}

/// The records after the first `n` operations, by key.
fn after(n: usize) -> BTreeMap<String, Value> {
    let mut records = BTreeMap::new();
    for i in 0..n {
        match operation(i) {
            (key, Some(record)) => records.insert(key, record),
            (key, None) => records.remove(&key),
        };
    }
    records
}

/// Every record, by key, and what opening the store wrote.
fn stored(path: &Path) -> (BTreeMap<String, Value>, StoreStats) {
    let store = Store::open(path).unwrap();
    let records: Vec<Value> = store.load_all().unwrap();
    let records = records
        .into_iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r))
        .collect();
    (records, store.stats())
}

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The schema version in the store file, read with redb directly (as an older berth would).
fn schema_version(path: &Path) -> u64 {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get("schema_version").unwrap().unwrap().value()
}

/// Run in a child process: writes operations until it is killed, printing `acked i` after
/// operation `i` returned.
#[test]
fn journal_victim() {
    let Some(path) = std::env::var_os(CHILD_STORE_ENV) else {
        return; // Only the child of the test below does anything.
    };
    let store = Store::open(Path::new(&path)).unwrap();
    for i in 0.. {
        match operation(i) {
            (key, Some(record)) => store.put(&key, &record).unwrap(),
            (key, None) => store.remove(&key).unwrap(),
        }
        println!("acked {i}");
    }
}

/// Runs [`journal_victim`] on the store at `path`, kills it with SIGKILL once it has
/// acknowledged operation `kill_after`, and returns how many operations it acknowledged.
fn write_until_killed(path: &Path, kill_after: usize) -> usize {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "journal_victim",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STORE_ENV, path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = None;
    for line in lines.by_ref() {
        if let Some(i) = line.unwrap().strip_prefix("acked ") {
            acked = Some(i.parse::<usize>().unwrap());
            if acked == Some(kill_after) {
                break;
            }
        }
    }
    child.kill().unwrap();
    // What the child printed before it died: its last acknowledged operation.
    for line in lines {
        if let Some(i) = line.unwrap().strip_prefix("acked ") {
            acked = Some(i.parse::<usize>().unwrap());
        }
    }
    child.wait().unwrap();
    acked.expect("the child acknowledged nothing") + 1
}

/// Sets the schema version in the store file with redb directly.
fn set_schema_version(path: &Path, version: u64) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("schema_version", version)
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn kill_9_keeps_every_acknowledged_write_across_checkpoints() {
    // About 350 records fill the journal: kill before the first checkpoint and after several.
    for kill_after in [40, 700, 2_100] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.redb");
        let acked = write_until_killed(&path, kill_after);
        assert!(
            std::fs::metadata(journal_path(&path)).is_ok(),
            "the journal is beside the store"
        );

        assert_eq!(
            schema_version(&path),
            SCHEMA_VERSION_OPEN,
            "a store left by a crash must say it is open with a journal"
        );
        let (found, replaying) = stored(&path);
        assert_eq!(schema_version(&path), SCHEMA_VERSION, "closed cleanly");
        // Before the first checkpoint there are frames to replay for sure; later the kill may
        // (rarely) fall just after a checkpoint, with none.
        if kill_after < 300 {
            assert_eq!(replaying.checkpoints, 1, "not replayed: {replaying:?}");
        } else {
            assert!(replaying.checkpoints <= 1, "{replaying:?}");
        }
        // The operation after the last acknowledged one may have landed too.
        assert!(
            found == after(acked) || found == after(acked + 1),
            "killed after {acked} acknowledged operations: the store holds {} records, \
             expected {} (or {})",
            found.len(),
            after(acked).len(),
            after(acked + 1).len()
        );
        // Replayed and checkpointed by that open: the next one reads the same and commits
        // nothing.
        assert_eq!(stored(&path), (found, StoreStats::default()));
    }
}

/// A store a newer berth left after a crash is refused before its journal is replayed: the
/// frames are still there for that berth.
#[test]
fn a_newer_store_is_refused_before_its_journal_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.redb");
    write_until_killed(&path, 40);
    set_schema_version(&path, SCHEMA_VERSION_OPEN + 1);
    let refused = Store::open(&path).err().expect("a newer store opened");
    assert!(refused.to_string().contains("upgrade berth"), "{refused}");
    set_schema_version(&path, SCHEMA_VERSION_OPEN);
    let (_, replaying) = stored(&path);
    assert_eq!(
        replaying.checkpoints, 1,
        "the refused open replayed the journal"
    );
}
