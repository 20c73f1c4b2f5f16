//! Deleting a loopfs image in two steps: a delete renames it into its pool base's trash
//! ([`TRASH_DIR`]) and is done once that rename is durable; the daemon's background task
//! ([`VolumeService::empty_trash`]) unlinks what the trash holds afterwards, off the
//! request's path (unlinking an allocated image on a host filesystem mounted with `discard`
//! takes hundreds of milliseconds). The record stays `Deleting` until the rename is
//! durable, and recovery of such a record finds the image gone and finishes. Every trash is
//! emptied after a start too. Its bytes stay used on the host disk until unlinked, which
//! [`Engine::room_on`] sees: it takes the filesystem's real free space.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::types::*;
use super::*;
use crate::host::Host;

/// The trashes that may hold something to unlink, and the wake-up of whoever empties them.
#[derive(Default)]
pub(super) struct TrashQueue {
    due: Mutex<BTreeSet<PathBuf>>,
    filled: Condvar,
}

impl TrashQueue {
    pub(super) fn push(&self, trash: PathBuf) {
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(trash);
        self.filled.notify_all();
    }

    /// The trashes due, waiting up to `wait` for one.
    fn take(&self, wait: Duration) -> BTreeSet<PathBuf> {
        let due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let (mut due, _) = self
            .filled
            .wait_timeout_while(due, wait, |d| d.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *due)
    }
}

impl<H: Host> Engine<H> {
    /// The trash of a pool base.
    pub(super) fn trash_of(base: &Path) -> PathBuf {
        base.join(TRASH_DIR)
    }

    /// Moves a deleted volume's image (and what else is given: its emptied mount point)
    /// into its base's trash, durably; returns the image's bytes.
    pub(super) fn trash_paths(&self, v: &Volume, paths: &[&Path]) -> Result<u64, EngineError> {
        let trash = Self::trash_of(&v.placement.base);
        let bytes = self
            .host
            .move_to_trash(&trash, paths)
            .map_err(Self::host_err(&v.name, "moving the image to the trash"))?;
        self.trash.push(trash);
        Ok(bytes)
    }

    /// Asks for every trash this engine's volumes can use to be emptied: at start, for
    /// what a crash (or a stop) left there.
    pub(super) fn queue_every_trash(&self) {
        let mut bases: BTreeSet<PathBuf> = self
            .pools
            .iter()
            .filter(|p| p.kind != PoolKind::Mount)
            .flat_map(|p| p.paths.iter().cloned())
            .collect();
        bases.extend(
            self.cache()
                .values()
                .filter(|v| v.placement.image.is_some())
                .map(|v| v.placement.base.clone()),
        );
        for base in bases {
            self.trash.push(Self::trash_of(&base));
        }
    }

    /// See [`VolumeService::empty_trash`].
    pub(super) fn do_empty_trash(&self, wait: Duration) -> u64 {
        let mut removed = 0;
        for trash in self.trash.take(wait) {
            match self.host.empty_trash(&trash) {
                Ok(n) => removed += n,
                // Left for the next start (or the next delete into this trash).
                Err(e) => tracing::warn!(
                    trash = %trash.display(),
                    error = %e,
                    "could not empty the trash; its space stays used until it is"
                ),
            }
        }
        removed
    }
}
