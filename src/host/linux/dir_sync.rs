//! One `fsync` for many changes to the same directory (group sync).
//!
//! Every create and delete adds or removes an entry in a directory shared by all volumes
//! (the pool, its trash, the images directory) and must `fsync` that directory before it
//! says done. `fsync` of a directory writes the directory's dirty blocks and inode as they
//! are when it runs, so one that *starts* after an entry was changed makes that change
//! durable, whoever asked for it. Concurrent callers therefore share syncs: each takes a
//! ticket after its change; if no sync of that directory is running it runs one itself
//! (covering every ticket taken so far); otherwise it waits for the running one to end and
//! checks again, since that one may have started before its change. A failed sync covers
//! nobody: its caller gets the error, and the callers waiting on it run their own.
//!
//! Directories are told apart by device and inode, taken from the caller's open descriptor,
//! so two paths to one directory share and a directory replaced under a path does not. An
//! entry lives only while a caller holds a descriptor to that directory, so its inode cannot
//! be reused meanwhile.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::fd::{fsync_fd, nix_err, statx_fd};
use crate::host::HostError;

/// `fsync` of the open directory `dir` (at `path`, for errors), shared with the other
/// callers syncing the same directory at the same time.
pub(super) fn fsync_shared_dir(dir: BorrowedFd<'_>, path: &Path) -> Result<(), HostError> {
    let meta = statx_fd(dir).map_err(|e| nix_err("stat", path, e))?;
    SHARED.sync((meta.dev, meta.ino), || fsync_fd(dir, path))
}

static SHARED: GroupSyncs = GroupSyncs::new();

/// Device and inode of a directory.
type DirKey = (u64, u64);

#[derive(Default)]
struct DirState {
    /// Tickets handed out: each caller's change is covered by a sync of a later target.
    requested: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// A caller is running a sync now.
    syncing: bool,
    /// Callers inside [`GroupSyncs::sync`] for this directory.
    users: usize,
}

struct GroupSyncs {
    dirs: Mutex<BTreeMap<DirKey, DirState>>,
    ended: Condvar,
}

impl GroupSyncs {
    const fn new() -> Self {
        Self {
            dirs: Mutex::new(BTreeMap::new()),
            ended: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<DirKey, DirState>> {
        self.dirs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once a `sync` that started after this call began has succeeded (this
    /// caller's own, or another caller's for the same `key`), or with the error of this
    /// caller's own failed `sync`.
    fn sync<E>(&self, key: DirKey, sync: impl Fn() -> Result<(), E>) -> Result<(), E> {
        let mut dirs = self.lock();
        let state = dirs.entry(key).or_default();
        state.users += 1;
        state.requested += 1;
        let ticket = state.requested;
        let result = loop {
            let state = state_of(&mut dirs, key);
            if state.synced >= ticket {
                break Ok(());
            }
            if state.syncing {
                dirs = self
                    .ended
                    .wait(dirs)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.syncing = true;
            let target = state.requested;
            drop(dirs);
            let outcome = sync();
            dirs = self.lock();
            let state = state_of(&mut dirs, key);
            state.syncing = false;
            if outcome.is_ok() {
                state.synced = target;
            }
            self.ended.notify_all();
            if outcome.is_err() {
                break outcome;
            }
        };
        let state = state_of(&mut dirs, key);
        state.users -= 1;
        if state.users == 0 {
            dirs.remove(&key);
        }
        result
    }
}

/// The state of a directory this caller registered in (so it is there).
fn state_of<'a>(
    dirs: &'a mut MutexGuard<'_, BTreeMap<DirKey, DirState>>,
    key: DirKey,
) -> &'a mut DirState {
    dirs.get_mut(&key)
        .expect("a directory stays registered while a caller is inside sync")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    const KEY: DirKey = (1, 2);

    type Outcome = Result<(), &'static str>;

    fn wait_for_requests(syncs: &GroupSyncs, n: u64) {
        for _ in 0..2000 {
            if syncs.lock().get(&KEY).map_or(0, |s| s.requested) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("{n} callers never arrived");
    }

    /// A caller whose sync has started and runs until the returned sender says how it ends.
    fn held_sync(syncs: &Arc<GroupSyncs>) -> (JoinHandle<Outcome>, mpsc::Sender<Outcome>) {
        let (end, ends) = mpsc::channel::<Outcome>();
        let (started, running) = mpsc::channel::<()>();
        let syncs = Arc::clone(syncs);
        let caller = std::thread::spawn(move || {
            syncs.sync(KEY, || {
                started.send(()).unwrap();
                ends.recv().unwrap()
            })
        });
        running.recv().unwrap();
        (caller, end)
    }

    /// A caller whose syncs succeed and are counted in `runs`.
    fn counted_sync(syncs: &Arc<GroupSyncs>, runs: &Arc<AtomicUsize>) -> JoinHandle<Outcome> {
        let (syncs, runs) = (Arc::clone(syncs), Arc::clone(runs));
        std::thread::spawn(move || {
            syncs.sync(KEY, || {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        })
    }

    /// The first caller's sync is held open; two more arrive during it. Neither is covered
    /// by the running sync (it started before their changes), so exactly one more sync
    /// runs, for both.
    #[test]
    fn callers_arriving_during_a_sync_share_the_next_one() {
        let syncs = Arc::new(GroupSyncs::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (first, end) = held_sync(&syncs);
        let later = [counted_sync(&syncs, &runs), counted_sync(&syncs, &runs)];
        wait_for_requests(&syncs, 3);
        assert_eq!(runs.load(Ordering::SeqCst), 0, "the later callers waited");
        end.send(Ok(())).unwrap();
        assert_eq!(first.join().unwrap(), Ok(()));
        for caller in later {
            assert_eq!(caller.join().unwrap(), Ok(()));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one sync for both");
        assert!(syncs.lock().is_empty(), "nothing left behind");
    }

    /// A failed sync covers nobody: its caller gets the error, a caller that waited on it
    /// runs its own.
    #[test]
    fn a_failed_sync_covers_nobody() {
        let syncs = Arc::new(GroupSyncs::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (first, end) = held_sync(&syncs);
        let second = counted_sync(&syncs, &runs);
        wait_for_requests(&syncs, 2);
        end.send(Err("disk gone")).unwrap();
        assert_eq!(first.join().unwrap(), Err("disk gone"));
        assert_eq!(second.join().unwrap(), Ok(()));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the waiter synced itself");
    }

    /// Different directories never wait for each other.
    #[test]
    fn other_directories_do_not_wait() {
        let syncs = Arc::new(GroupSyncs::new());
        let (first, end) = held_sync(&syncs);
        assert_eq!(syncs.sync((1, 3), || Outcome::Ok(())), Ok(()));
        end.send(Ok(())).unwrap();
        assert_eq!(first.join().unwrap(), Ok(()));
    }
}
