//! The durable reservation store: one record per volume, written in one ACID transaction per
//! state change.
//!
//! Why redb: an embedded, pure-Rust, copy-on-write B-tree whose commits are atomic. A `kill -9`
//! at any instant leaves either the previous or the next committed state, never a torn record,
//! and it needs no external process. A durable redb commit writes every page on the path from
//! the root and flushes them all; so a write is made durable instead by the store's own
//! [`journal`] (one small frame and one flush), and redb is made durable at checkpoints (see
//! [`group`] for how writes reach both). Records are JSON so an operator can
//! read a dump, and so optional fields can be added without a migration; the schema version
//! in the `meta` table guards against an older berth opening a newer store, and an older
//! store is migrated at open (see [`migrate`]).
//!
//! The store knows keys and serializable records, not what a volume is: the engine owns the
//! record type, so the store sits below the engine and imports nothing of it. Only a
//! migration reads old records, as the JSON an older berth wrote.
//!
//! Snapshots have their own table, keyed by snapshot name: their namespace is separate from
//! the volumes' (a snapshot may share a name with a volume).

mod group;
mod journal;
pub mod migrate;

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

pub use group::StoreStats;
use group::{Change, GroupCommit};
use journal::{FrameKind, Journal};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// The record layout this build reads and writes.
/// 2: every record names the front-end that owns it (`frontend`).
pub const SCHEMA_VERSION: u64 = 2;

/// The schema version the store file says while a daemon has it open: [`SCHEMA_VERSION`]
/// with the journal in use. Until the store is closed cleanly its latest writes may be in
/// the journal alone, and a berth without the journal would open the file without them.
/// Every berth refuses a store whose version is above its own, so those refuse this one;
/// a clean close writes [`SCHEMA_VERSION`] back.
pub const SCHEMA_VERSION_OPEN: u64 = SCHEMA_VERSION + 1000;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes_v1");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots_v1");

type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// The tables a change can write, by the code the journal knows them by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Records {
    Volumes,
    Snapshots,
}

impl Records {
    fn table(self) -> Table {
        match self {
            Records::Volumes => VOLUMES,
            Records::Snapshots => SNAPSHOTS,
        }
    }

    fn code(self) -> u8 {
        match self {
            Records::Volumes => 1,
            Records::Snapshots => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Records::Volumes),
            2 => Some(Records::Snapshots),
            _ => None,
        }
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error(
        "the store at {path} has schema version {found}, this berth understands up to {SCHEMA_VERSION}; upgrade berth"
    )]
    Schema { path: PathBuf, found: u64 },
    #[error("the record {key} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("migrating the store at {path} from schema version {from}: volume {key}: {reason}")]
    Migration {
        path: PathBuf,
        from: u64,
        key: String,
        reason: String,
    },
    #[error("store transaction: {0}")]
    Transaction(#[from] Box<redb::Error>),
    #[error("the store's journal {path}: {source}")]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn txn_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Transaction(Box::new(e.into()))
}

/// See the module docs.
pub struct Store {
    db: Database,
    path: PathBuf,
    commits: GroupCommit,
    /// Set once [`Store::open`] has replayed the journal and checked the schema: only then
    /// does closing checkpoint. A store refused at open (a newer berth's, a frame it cannot
    /// read) leaves its journal as it found it.
    opened: bool,
}

/// redb's page cache. Records are read once at start (the engine keeps them in memory) and
/// written one at a time, so a small cache costs nothing and keeps a daemon holding many
/// volumes small: reading 10,000 records at start would otherwise leave megabytes of them
/// cached for good, and redb's default would grow towards a gigabyte. A commit touches one
/// path from the root to a leaf, a few pages, which 64 pages hold with room to spare.
const CACHE_BYTES: usize = 256 << 10;

impl Store {
    /// Opens (or creates) the store file. redb holds an exclusive lock on it, so a second
    /// daemon on the same state directory fails here.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_observing_migration(path, &mut |_| {})
    }

    /// [`Store::open`], calling `rewrote(n)` after the n-th record of a migration has been
    /// rewritten (inside the uncommitted transaction): crash tests kill the process there.
    pub fn open_observing_migration(
        path: &Path,
        rewrote: &mut dyn FnMut(usize),
    ) -> Result<Self, StoreError> {
        let open_err = |e: redb::Error| StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(e),
        };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(e.into()))?;
        let journal_path = journal_path(path);
        let journal_err = |source| StoreError::Journal {
            path: journal_path.clone(),
            source,
        };
        let (journal, frames) = Journal::open(&journal_path).map_err(journal_err)?;
        let mut store = Self {
            db,
            path: path.to_path_buf(),
            commits: GroupCommit::new(journal).map_err(journal_err)?,
            opened: false,
        };
        store.refuse_newer()?;
        store.replay(frames)?;
        store.check_schema(rewrote)?;
        store.opened = true;
        Ok(store)
    }

    /// Applies the frames a crash left in the journal, in order, and checkpoints them.
    fn replay(&self, frames: Vec<journal::Frame>) -> Result<(), StoreError> {
        if frames.is_empty() {
            return Ok(());
        }
        let count = frames.len();
        let mut changes = Vec::with_capacity(count);
        for frame in frames {
            let records = Records::from_code(frame.records).ok_or_else(|| StoreError::Corrupt {
                key: frame.key.clone(),
                reason: format!("journal frame for unknown records {}", frame.records),
            })?;
            changes.push(match frame.kind {
                FrameKind::Put => Change::Put {
                    records,
                    key: frame.key,
                    bytes: frame.value,
                },
                FrameKind::Remove => Change::Remove {
                    records,
                    key: frame.key,
                },
            });
        }
        group::apply(
            &self.db,
            &changes.iter().collect::<Vec<_>>(),
            Durability::None,
        )?;
        self.commits.checkpoint(&self.db)?;
        tracing::info!(
            store = %self.path.display(),
            changes = count,
            "replayed the store's journal"
        );
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables of a new store, or migrates an older one to [`SCHEMA_VERSION`] in
    /// one durable transaction. A store already at this version is only read: a restart
    /// commits nothing.
    fn check_schema(&self, rewrote: &mut dyn FnMut(usize)) -> Result<(), StoreError> {
        if self.is_current()? {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(txn_err)?;
        txn.set_durability(Durability::Immediate).map_err(txn_err)?;
        {
            let mut meta = txn.open_table(META).map_err(txn_err)?;
            let found = meta
                .get("schema_version")
                .map_err(txn_err)?
                .map(|v| v.value());
            let mut volumes = txn.open_table(VOLUMES).map_err(txn_err)?;
            // Every version since snapshots came has their table; make sure it exists.
            txn.open_table(SNAPSHOTS).map_err(txn_err)?;
            match found {
                Some(SCHEMA_VERSION | SCHEMA_VERSION_OPEN) => {}
                Some(1) => self.migrate_v1(&mut volumes, rewrote)?,
                Some(other) => {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found: other,
                    });
                }
                None => {}
            }
            meta.insert("schema_version", SCHEMA_VERSION_OPEN)
                .map_err(txn_err)?;
        }
        txn.commit().map_err(txn_err)
    }

    /// The schema version the store file says (`None`: a new store).
    fn stored_version(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(txn_err)?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(txn_err(e)),
        };
        Ok(meta
            .get("schema_version")
            .map_err(txn_err)?
            .map(|v| v.value()))
    }

    /// Refuses a store that a newer berth wrote before anything here (a replay of its
    /// journal) changes it.
    fn refuse_newer(&self) -> Result<(), StoreError> {
        match self.stored_version()? {
            None | Some(1 | SCHEMA_VERSION | SCHEMA_VERSION_OPEN) => Ok(()),
            Some(found) => Err(StoreError::Schema {
                path: self.path.clone(),
                found,
            }),
        }
    }

    /// Whether the store is at [`SCHEMA_VERSION`], marked open, with every table in place.
    fn is_current(&self) -> Result<bool, StoreError> {
        if self.stored_version()? != Some(SCHEMA_VERSION_OPEN) {
            return Ok(false);
        }
        let txn = self.db.begin_read().map_err(txn_err)?;
        for table in [VOLUMES, SNAPSHOTS] {
            match txn.open_table(table) {
                Ok(_) => {}
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
                Err(e) => return Err(txn_err(e)),
            }
        }
        Ok(true)
    }

    /// Version 1 → 2 inside the caller's transaction: every record gains its `frontend`.
    fn migrate_v1(
        &self,
        volumes: &mut redb::Table<&str, &[u8]>,
        rewrote: &mut dyn FnMut(usize),
    ) -> Result<(), StoreError> {
        let failed = |key: &str, reason: String| StoreError::Migration {
            path: self.path.clone(),
            from: 1,
            key: key.to_string(),
            reason,
        };
        let mut records = Vec::new();
        for entry in volumes.iter().map_err(txn_err)? {
            let (key, value) = entry.map_err(txn_err)?;
            let key = key.value().to_string();
            let mut record: serde_json::Value =
                serde_json::from_slice(value.value()).map_err(|e| failed(&key, e.to_string()))?;
            migrate::v1_to_v2(&mut record).map_err(|reason| failed(&key, reason))?;
            let bytes = serde_json::to_vec(&record).map_err(|e| failed(&key, e.to_string()))?;
            records.push((key, bytes));
        }
        for (n, (key, bytes)) in records.iter().enumerate() {
            volumes
                .insert(key.as_str(), bytes.as_slice())
                .map_err(txn_err)?;
            rewrote(n + 1);
        }
        tracing::info!(
            store = %self.path.display(),
            volumes = records.len(),
            "migrated the store from schema version 1 to 2: each volume's owning front-end inferred"
        );
        Ok(())
    }

    /// Every record. A record that cannot be decoded is an error naming it, never silently
    /// dropped.
    pub fn load_all<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let mut records = Vec::new();
        self.load_each(|record| records.push(record))?;
        Ok(records)
    }

    /// Hands every record to `each` as it is decoded, in key order: a caller that keeps them
    /// in its own structure never holds them twice.
    pub fn load_each<T: DeserializeOwned>(&self, each: impl FnMut(T)) -> Result<(), StoreError> {
        self.load(VOLUMES, each)
    }

    /// Every snapshot record, read like [`Store::load_all`].
    pub fn load_snapshots<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let mut records = Vec::new();
        self.load(SNAPSHOTS, |record| records.push(record))?;
        Ok(records)
    }

    /// Writes the snapshot record under `key` durably.
    pub fn put_snapshot<T: Serialize>(&self, key: &str, record: &T) -> Result<(), StoreError> {
        self.commits
            .commit(&self.db, Self::put_change(Records::Snapshots, key, record)?)
    }

    /// Removes the snapshot record under `key` durably; a missing record is fine.
    pub fn remove_snapshot(&self, key: &str) -> Result<(), StoreError> {
        self.commits
            .commit(&self.db, Self::remove_change(Records::Snapshots, key))
    }

    fn load<T: DeserializeOwned>(
        &self,
        definition: Table,
        mut each: impl FnMut(T),
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(txn_err)?;
        let table = txn.open_table(definition).map_err(txn_err)?;
        for entry in table.iter().map_err(txn_err)? {
            let (key, value) = entry.map_err(txn_err)?;
            let record: T =
                serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                    key: key.value().to_string(),
                    reason: e.to_string(),
                })?;
            each(record);
        }
        Ok(())
    }

    /// Writes the record under `key` durably. Concurrent writes share one commit (see
    /// [`group`]); this returns once the record is on disk.
    pub fn put<T: Serialize>(&self, key: &str, record: &T) -> Result<(), StoreError> {
        self.commits
            .commit(&self.db, Self::put_change(Records::Volumes, key, record)?)
    }

    /// Writes the record under `key` without waiting for the disk: readers see it at once, it
    /// becomes durable with the next durable commit, and a crash before that may lose it. For
    /// an intent whose loss recovery can do without.
    pub fn put_unsynced<T: Serialize>(&self, key: &str, record: &T) -> Result<(), StoreError> {
        self.commits
            .commit_unsynced(&self.db, Self::put_change(Records::Volumes, key, record)?)
    }

    /// Removes the record under `key` durably; a missing record is fine.
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.commits
            .commit(&self.db, Self::remove_change(Records::Volumes, key))
    }

    /// Removes the record under `key` without waiting for the disk, like
    /// [`Store::put_unsynced`].
    pub fn remove_unsynced(&self, key: &str) -> Result<(), StoreError> {
        self.commits
            .commit_unsynced(&self.db, Self::remove_change(Records::Volumes, key))
    }

    fn put_change<T: Serialize>(
        records: Records,
        key: &str,
        record: &T,
    ) -> Result<Change, StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Change::Put {
            records,
            key: key.to_string(),
            bytes,
        })
    }

    fn remove_change(records: Records, key: &str) -> Change {
        Change::Remove {
            records,
            key: key.to_string(),
        }
    }

    /// What this store has written since it was opened.
    pub fn stats(&self) -> StoreStats {
        self.commits.stats()
    }

    /// Writes [`SCHEMA_VERSION`] over [`SCHEMA_VERSION_OPEN`]: at a clean close, once every
    /// write is in the store file.
    fn mark_closed(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(txn_err)?;
        txn.set_durability(Durability::Immediate).map_err(txn_err)?;
        {
            let mut meta = txn.open_table(META).map_err(txn_err)?;
            meta.insert("schema_version", SCHEMA_VERSION)
                .map_err(txn_err)?;
        }
        txn.commit().map_err(txn_err)
    }

    /// A read that proves the store answers (for readiness probes).
    pub fn probe(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(txn_err)?;
        txn.open_table(META).map_err(txn_err)?;
        Ok(())
    }
}

impl Drop for Store {
    /// A store closed cleanly leaves its journal empty, so the next open replays nothing, and
    /// says [`SCHEMA_VERSION`] again.
    fn drop(&mut self) {
        if !self.opened {
            return;
        }
        if let Err(e) = self.commits.checkpoint(&self.db) {
            tracing::warn!(store = %self.path.display(), error = %e, "checkpoint at close failed; the next start replays the journal");
            return;
        }
        if !self.commits.journal_is_empty() {
            return;
        }
        if let Err(e) = self.mark_closed() {
            tracing::warn!(store = %self.path.display(), error = %e, "marking the store closed failed; a berth without the journal will refuse it");
        }
    }
}

/// The journal beside the store file: `berth.redb` → `berth.redb.journal`.
pub fn journal_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}
