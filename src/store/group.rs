//! Group commit: durable writes that arrive while another is being committed share the next
//! transaction, and so its one `fsync`.
//!
//! Why: every durable redb commit ends in an `fsync`, the dearest step of a state change. With
//! one commit per caller, eight concurrent operations wait in line for eight `fsync`s; here
//! they wait for at most two (the one in progress, then theirs, together).
//!
//! How (leader and followers, no thread of our own): a writer queues its change and, if no
//! commit is running, becomes the leader: it takes every queued change, applies them in order
//! in one `Durability::Immediate` transaction, and hands each writer its outcome. Writers
//! that queued meanwhile wait, and one of them leads the next batch. Nobody returns before
//! the transaction holding its change is durable. If a batch fails, each writer commits its
//! own change alone, so an error reaches only the writer it belongs to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use redb::{Database, Durability};

use super::{StoreError, Table, txn_err};

/// One change to one record.
pub(super) enum Change {
    Put {
        table: Table,
        key: String,
        bytes: Vec<u8>,
    },
    Remove {
        table: Table,
        key: String,
    },
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
    /// Transactions committed with `fsync` (each is one durable commit).
    pub durable_commits: u64,
    /// Transactions committed without `fsync` (made durable by the next durable one).
    pub unsynced_commits: u64,
    /// Record changes written by those transactions.
    pub changes: u64,
}

#[derive(Default)]
pub(super) struct GroupCommit {
    queue: Mutex<Queue>,
    settled: Condvar,
    durable_commits: AtomicU64,
    unsynced_commits: AtomicU64,
    changes: AtomicU64,
}

impl GroupCommit {
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
                    return self.apply(db, std::slice::from_ref(&change), Durability::Immediate);
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
            let result = self.apply_all(db, &changes, Durability::Immediate);
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
        self.apply(db, std::slice::from_ref(&change), Durability::None)
    }

    fn apply(
        &self,
        db: &Database,
        changes: &[Change],
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.apply_all(db, &changes.iter().collect::<Vec<_>>(), durability)
    }

    /// One transaction holding `changes` in order.
    fn apply_all(
        &self,
        db: &Database,
        changes: &[&Change],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(txn_err)?;
        txn.set_durability(durability).map_err(txn_err)?;
        for change in changes {
            match change {
                Change::Put { table, key, bytes } => {
                    let mut table = txn.open_table(*table).map_err(txn_err)?;
                    table
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(txn_err)?;
                }
                Change::Remove { table, key } => {
                    let mut table = txn.open_table(*table).map_err(txn_err)?;
                    table.remove(key.as_str()).map_err(txn_err)?;
                }
            }
        }
        txn.commit().map_err(txn_err)?;
        let counter = match durability {
            Durability::Immediate => &self.durable_commits,
            _ => &self.unsynced_commits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.changes
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            durable_commits: self.durable_commits.load(Ordering::Relaxed),
            unsynced_commits: self.unsynced_commits.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
        }
    }
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
