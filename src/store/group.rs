//! Group commit: durable writes that arrive while another is being committed share the next
//! journal flush.
//!
//! Why: every durable write ends in an `fdatasync`, the dearest step of a state change. With
//! one flush per caller, eight concurrent operations wait in line for eight; here they wait
//! for at most two (the one in progress, then theirs, together).
//!
//! How (leader and followers, no thread of our own): a writer queues its change and, if no
//! commit is running, becomes the leader: it takes every queued change, writes them in order
//! (one redb transaction, one journal append, see [`super::journal`]), flushes the journal and
//! hands each writer its outcome. Writers that queued meanwhile wait, and one of them leads the
//! next batch. Nobody returns before the flush holding its change. If a batch fails, each
//! writer commits its change alone, so an error reaches only the writer it belongs to.
//!
//! Should the journal fail (a write or flush error), the store makes everything durable in
//! redb, empties the journal and from then on commits to redb alone: slower, never less safe.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use redb::{Database, Durability};

use super::journal::{FrameKind, FrameRef, Journal};
use super::{Records, StoreError, txn_err};

/// One change to one record.
pub(super) enum Change {
    Put {
        records: Records,
        key: String,
        bytes: Vec<u8>,
    },
    Remove {
        records: Records,
        key: String,
    },
}

impl Change {
    fn frame(&self) -> FrameRef<'_> {
        match self {
            Change::Put {
                records,
                key,
                bytes,
            } => FrameRef {
                kind: FrameKind::Put,
                records: records.code(),
                key,
                value: bytes,
            },
            Change::Remove { records, key } => FrameRef {
                kind: FrameKind::Remove,
                records: records.code(),
                key,
                value: &[],
            },
        }
    }
}

/// What a writer learns about its queued change.
enum Outcome {
    Durable,
    /// Its batch failed: the writer commits its change alone.
    Alone(Change),
}

#[derive(Default)]
struct Queue {
    next_ticket: u64,
    waiting: Vec<(u64, Change)>,
    outcomes: HashMap<u64, Outcome>,
    leading: bool,
}

/// Counts of what reached the disk, for the metrics and the tests that bound them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Writes made durable (each one journal flush, or one durable redb commit).
    pub durable_commits: u64,
    /// Writes not waited for (made durable by the next durable one).
    pub unsynced_commits: u64,
    /// Record changes written by those writes.
    pub changes: u64,
    /// Times the journal's frames were made durable in redb and the journal began anew.
    pub checkpoints: u64,
}

/// Whether writes still go through the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JournalState {
    Working,
    /// It failed and was emptied: every write is a redb commit of its own durability.
    Bypassed,
    /// It failed and could not be emptied: its frames would undo later writes when replayed
    /// at the next open, so the store takes no more writes.
    Broken,
}

/// The journal and whether it still works; held while a write reaches both redb and the
/// journal, so both see writes in one order.
struct Writer {
    journal: Journal,
    state: JournalState,
}

impl Writer {
    fn broken(&self) -> StoreError {
        StoreError::Journal {
            path: self.journal.path().to_path_buf(),
            source: std::io::Error::other(
                "an earlier write to it failed and it could not be emptied; restart berth",
            ),
        }
    }
}

pub(super) struct GroupCommit {
    queue: Mutex<Queue>,
    settled: Condvar,
    writer: Mutex<Writer>,
    /// The journal's file, flushed without holding `writer`.
    flusher: File,
    durable_commits: AtomicU64,
    unsynced_commits: AtomicU64,
    changes: AtomicU64,
    checkpoints: AtomicU64,
}

impl GroupCommit {
    pub fn new(journal: Journal) -> std::io::Result<Self> {
        Ok(Self {
            queue: Mutex::default(),
            settled: Condvar::new(),
            flusher: journal.flusher()?,
            writer: Mutex::new(Writer {
                journal,
                state: JournalState::Working,
            }),
            durable_commits: AtomicU64::default(),
            unsynced_commits: AtomicU64::default(),
            changes: AtomicU64::default(),
            checkpoints: AtomicU64::default(),
        })
    }

    /// Returns once `change` is durable, committed together with whatever else was queued.
    pub fn commit(&self, db: &Database, change: Change) -> Result<(), StoreError> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push((ticket, change));
        loop {
            match queue.outcomes.remove(&ticket) {
                Some(Outcome::Durable) => return Ok(()),
                Some(Outcome::Alone(change)) => {
                    drop(queue);
                    return self.write(db, &[&change], true);
                }
                None => {}
            }
            if queue.leading {
                queue = self.settled.wait(queue).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            queue.leading = true;
            let batch = std::mem::take(&mut queue.waiting);
            drop(queue);
            let changes: Vec<&Change> = batch.iter().map(|(_, c)| c).collect();
            let result = self.write(db, &changes, true);
            queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.leading = false;
            for (t, change) in batch {
                let outcome = match result {
                    Ok(()) => Outcome::Durable,
                    Err(_) => Outcome::Alone(change),
                };
                queue.outcomes.insert(t, outcome);
            }
            self.settled.notify_all();
        }
    }

    /// Commits `change` at once without waiting for the disk: it becomes durable with the
    /// next durable commit, and a crash before that may lose it.
    pub fn commit_unsynced(&self, db: &Database, change: Change) -> Result<(), StoreError> {
        self.write(db, &[&change], false)
    }

    /// Makes every write so far durable in redb and starts the journal afresh, if it holds
    /// any frame (a store closing, or one that replayed its journal at open).
    pub fn checkpoint(&self, db: &Database) -> Result<(), StoreError> {
        let mut writer = self.writer();
        if writer.state == JournalState::Working && writer.journal.frames() > 0 {
            self.checkpoint_locked(db, &mut writer)?;
        }
        Ok(())
    }

    /// Whether every write is in redb alone: no frame in the journal (or no journal in use),
    /// so nothing is lost to a reader of the store file.
    pub fn journal_is_empty(&self) -> bool {
        let writer = self.writer();
        match writer.state {
            JournalState::Working => writer.journal.frames() == 0,
            JournalState::Bypassed => true,
            JournalState::Broken => false,
        }
    }

    /// `changes` in one redb transaction and one journal append, then, if `durable`, a flush.
    fn write(&self, db: &Database, changes: &[&Change], durable: bool) -> Result<(), StoreError> {
        let mut writer = self.writer();
        match writer.state {
            JournalState::Working => {}
            JournalState::Bypassed => {
                let durability = if durable {
                    Durability::Immediate
                } else {
                    Durability::None
                };
                apply(db, changes, durability)?;
                self.count(changes, durable);
                return Ok(());
            }
            JournalState::Broken => return Err(writer.broken()),
        }
        apply(db, changes, Durability::None)?;
        match writer.journal.append(changes.iter().map(|c| c.frame())) {
            Ok(true) => {}
            // Full: redb takes these changes durably and the journal begins anew.
            Ok(false) => {
                self.checkpoint_locked(db, &mut writer)?;
                self.count(changes, true);
                return Ok(());
            }
            Err(e) => {
                self.journal_failed(db, &mut writer, "writing to", &e)?;
                self.count(changes, true);
                return Ok(());
            }
        }
        drop(writer);
        if durable && let Err(e) = self.flusher.sync_data() {
            // After a failed flush the kernel may have dropped the written pages: only a
            // durable redb commit, which writes them again, can be trusted now.
            self.journal_failed(db, &mut self.writer(), "flushing", &e)?;
        }
        self.count(changes, durable);
        Ok(())
    }

    /// A durable redb commit (every earlier non-durable one becomes durable with it), then a
    /// new journal generation.
    fn checkpoint_locked(&self, db: &Database, writer: &mut Writer) -> Result<(), StoreError> {
        apply(db, &[], Durability::Immediate)?;
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = writer.journal.start_generation() {
            return self.journal_failed(db, writer, "starting a new generation of", &e);
        }
        Ok(())
    }

    /// The journal cannot be trusted any more: make every write so far durable in redb, then
    /// empty the journal (a new generation, or failing that, no file) so that its frames
    /// cannot undo later writes at the next open, and write to redb alone from now on. If it
    /// cannot be emptied, the store takes no more writes.
    fn journal_failed(
        &self,
        db: &Database,
        writer: &mut Writer,
        doing: &str,
        e: &std::io::Error,
    ) -> Result<(), StoreError> {
        writer.state = JournalState::Broken;
        tracing::error!(
            journal = %writer.journal.path().display(),
            error = %e,
            "{doing} the store's journal failed; writes go to the store file alone from now on"
        );
        apply(db, &[], Durability::Immediate)?;
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        match writer.journal.start_generation() {
            Ok(()) => writer.state = JournalState::Bypassed,
            Err(_) => {
                writer
                    .journal
                    .remove()
                    .map_err(|source| StoreError::Journal {
                        path: writer.journal.path().to_path_buf(),
                        source,
                    })?;
                writer.state = JournalState::Bypassed;
            }
        }
        Ok(())
    }

    /// Makes the journal fail from now on as a failing disk would (its writes get `EBADF`).
    #[cfg(test)]
    pub fn break_journal(&self) {
        self.writer().journal.break_writes();
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, changes: &[&Change], durable: bool) {
        let counter = if durable {
            &self.durable_commits
        } else {
            &self.unsynced_commits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.changes
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            durable_commits: self.durable_commits.load(Ordering::Relaxed),
            unsynced_commits: self.unsynced_commits.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
        }
    }
}

/// One redb transaction holding `changes` in order.
pub(super) fn apply(
    db: &Database,
    changes: &[&Change],
    durability: Durability,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(txn_err)?;
    txn.set_durability(durability).map_err(txn_err)?;
    for change in changes {
        match change {
            Change::Put {
                records,
                key,
                bytes,
            } => {
                let mut table = txn.open_table(records.table()).map_err(txn_err)?;
                table
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(txn_err)?;
            }
            Change::Remove { records, key } => {
                let mut table = txn.open_table(records.table()).map_err(txn_err)?;
                table.remove(key.as_str()).map_err(txn_err)?;
            }
        }
    }
    txn.commit().map_err(txn_err)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::store::Store;

    #[test]
    fn each_lone_write_is_one_durable_commit_and_nothing_is_committed_at_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        for i in 0..5 {
            store.put(&format!("v{i}"), &i).unwrap();
        }
        store.remove("v0").unwrap();
        store.put_unsynced("v9", &9).unwrap();
        let stats = store.stats();
        assert_eq!(
            (stats.durable_commits, stats.unsynced_commits, stats.changes),
            (6, 1, 7)
        );
        drop(store);
        let store = Store::open(&path).unwrap();
        let mut all: Vec<i32> = store.load_all().unwrap();
        all.sort();
        assert_eq!(all, vec![1, 2, 3, 4, 9]);
        assert_eq!(
            store.stats(),
            Default::default(),
            "a reopen commits nothing"
        );
    }

    #[test]
    fn a_failing_journal_leaves_every_write_durable_and_none_undone_at_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        store.put("a", &1).unwrap();
        store.put("b", &1).unwrap();
        store.commits.break_journal();
        // The journal's frames say a=1, b=1; these writes must not be undone by them.
        store.put("a", &2).unwrap();
        store.remove("b").unwrap();
        store.put_unsynced("c", &3).unwrap();
        let stats = store.stats();
        assert_eq!(stats.checkpoints, 1, "{stats:?}");
        assert!(
            !crate::store::journal_path(&path).exists(),
            "a journal that cannot be written is emptied (here: removed)"
        );
        drop(store);
        let store = Store::open(&path).unwrap();
        let mut all: Vec<i32> = store.load_all().unwrap();
        all.sort();
        assert_eq!(all, vec![2, 3]);
        // A fresh journal works again.
        store.put("d", &4).unwrap();
        assert_eq!(store.stats().durable_commits, 1);
    }

    #[test]
    fn concurrent_writes_all_land_in_at_most_one_commit_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Arc::new(Store::open(&path).unwrap());
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..25 {
                        store.put(&format!("w{w}-{i:02}"), &(w * 100 + i)).unwrap();
                    }
                    store.remove(&format!("w{w}-00")).unwrap();
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.changes, 8 * 26);
        assert!(stats.durable_commits <= stats.changes, "{stats:?}");
        drop(store);
        let store = Store::open(&path).unwrap();
        let mut all: Vec<i32> = store.load_all().unwrap();
        all.sort();
        let expected: Vec<i32> = (0..8)
            .flat_map(|w| (1..25).map(move |i| w * 100 + i))
            .collect();
        assert_eq!(all, expected);
    }
}
