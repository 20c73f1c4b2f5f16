//! What a test sets and inspects on the fake (failures to inject, planted paths, the model's
//! state), and how every [`Host`](crate::host::Host) call is recorded and fails on demand.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::host::types::Ownership;
use crate::host::{FsKind, HostError};

use super::FakeHost;
use super::model::{Call, Model};

impl FakeHost {
    pub fn new(fs_size: u64) -> Self {
        Self {
            model: Mutex::default(),
            fs_size,
        }
    }

    /// The next call with index `n` (0-based, counting all calls so far) fails.
    pub fn fail_at_call(&self, n: usize) {
        self.lock().fail_at_call = Some(n);
    }

    /// Every call of `op` fails until [`FakeHost::heal`].
    pub fn fail_op(&self, op: &'static str) {
        self.lock().fail_ops.insert(op);
    }

    /// Every call of `op` panics, as if berth were killed right there: nothing after it
    /// runs, nothing is undone. Catch the panic, then reopen the store to recover.
    pub fn crash_at(&self, op: &'static str) {
        self.lock().crash_ops.insert(op);
    }

    pub fn heal(&self) {
        let mut m = self.lock();
        m.fail_at_call = None;
        m.fail_ops.clear();
        m.crash_ops.clear();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn call_count(&self) -> usize {
        self.lock().calls.len()
    }

    /// The ownership `make_dir` last applied to `p`, if it applied any.
    pub fn ownership_of(&self, p: &Path) -> Option<Ownership> {
        self.lock().ownership.get(p).cloned()
    }

    pub fn is_dir(&self, p: &Path) -> bool {
        self.lock().dirs.contains(p)
    }

    pub fn mounted_at(&self, p: &Path) -> Option<(PathBuf, bool)> {
        self.lock().mounts.get(p).cloned()
    }

    pub fn mount_count(&self) -> usize {
        self.lock().mounts.len()
    }

    pub fn has_image(&self, p: &Path) -> bool {
        self.lock().images.contains_key(p)
    }

    /// The images directly or deeper beneath `dir` (a trash, say).
    pub fn images_beneath(&self, dir: &Path) -> Vec<PathBuf> {
        let m = self.lock();
        m.images
            .keys()
            .filter(|i| i.starts_with(dir))
            .cloned()
            .collect()
    }

    pub fn loop_count(&self) -> usize {
        self.lock().loops.len()
    }

    /// Drops every mount and loop device and changes the boot id, as a reboot does.
    pub fn reboot(&self) {
        let mut m = self.lock();
        m.mounts.clear();
        m.loops.clear();
        m.boots += 1;
    }

    /// The filesystem on `device` has recorded `count` errors.
    pub fn set_fs_errors(&self, device: &Path, count: u64) {
        self.lock().fs_errors.insert(device.to_path_buf(), count);
    }

    /// Detaches loop device `device` as an operator's `losetup -d` would, behind berth's back.
    pub fn drop_loop(&self, device: &Path) {
        self.lock().loops.remove(device);
    }

    /// Removes `dir` (and everything beneath) as someone else might, behind berth's back.
    pub fn drop_dir(&self, dir: &Path) {
        let mut m = self.lock();
        m.dirs.retain(|d| !d.starts_with(dir));
        m.files.retain(|f| !f.starts_with(dir));
        m.subvolumes.retain(|s, _| !s.starts_with(dir));
    }

    /// The directory `dir` sits in a damaged filesystem: a removal walk over it removes and
    /// counts everything else it reaches, then stops with `ENOTEMPTY` at `dir`, whose
    /// entries (and whose ancestors) stay, as ext4 answers for a directory block gone bad.
    pub fn damage_dir(&self, dir: &Path) {
        let mut m = self.lock();
        m.dirs.insert(dir.to_path_buf());
        m.damaged.insert(dir.to_path_buf());
    }

    /// Adds a file as if a user had written it (e.g. inside a volume's filesystem).
    pub fn add_file(&self, p: &Path) {
        self.lock().files.insert(p.to_path_buf());
    }

    /// Plants a symbolic link at `p`, as a task or an image could.
    pub fn add_symlink(&self, p: &Path) {
        self.lock().symlinks.insert(p.to_path_buf());
    }

    /// Adds a directory as if someone else had made it (e.g. a pool path).
    pub fn add_dir(&self, p: &Path) {
        self.lock().dirs.insert(p.to_path_buf());
    }

    /// Everything at or beneath `prefix` is on a filesystem of `kind`.
    pub fn set_fs_kind(&self, prefix: &Path, kind: FsKind) {
        self.lock().fs_kinds.insert(prefix.to_path_buf(), kind);
    }

    /// Turns the fake's project quota support on or off.
    pub fn set_project_quotas(&self, supported: bool) {
        self.lock().project_quotas = supported;
    }

    /// Marks a project id as taken by the operator (as if listed in `/etc/projid`).
    pub fn reserve_project_id(&self, id: u32) {
        self.lock().reserved_project_ids.insert(id);
    }

    pub fn is_subvolume(&self, p: &Path) -> bool {
        self.lock().subvolumes.contains_key(p)
    }

    /// The limit of the subvolume at `p` (`None`: not a subvolume; `Some(None)`: no limit).
    pub fn subvolume_limit(&self, p: &Path) -> Option<Option<u64>> {
        self.lock().subvolumes.get(p).copied()
    }

    /// The project id and limit of the directory `p`, if it is in a project.
    pub fn project_of(&self, p: &Path) -> Option<(u32, u64)> {
        self.lock().projects.get(p).copied()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the call and decides whether it fails.
    pub(super) fn enter(
        &self,
        op: &'static str,
        path: &Path,
    ) -> Result<std::sync::MutexGuard<'_, Model>, HostError> {
        let mut m = self.lock();
        let index = m.calls.len();
        m.calls.push(Call {
            op,
            path: path.to_path_buf(),
        });
        if m.crash_ops.contains(op) {
            drop(m);
            panic!("injected crash at {op} {}", path.display());
        }
        if m.fail_at_call == Some(index) || m.fail_ops.contains(op) {
            if m.fail_at_call == Some(index) {
                m.fail_at_call = None;
            }
            return Err(HostError::Injected(format!("{op} {}", path.display())));
        }
        Ok(m)
    }
}
