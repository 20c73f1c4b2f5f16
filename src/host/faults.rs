//! Fault injection around any [`Host`]: the real kernel, with chosen calls failing.
//!
//! [`Faulty`] delegates every call to the host it wraps and counts them; a plan makes the
//! N-th call from now fail before it reaches the kernel, as a failing `mount`, `mkfs`, loop
//! attach, `fsync` or `rename` would. Tests use it to fail each step of each operation in
//! turn and check that the store and the host stay consistent and a retry succeeds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::types::{FsType, Ownership};
use super::{
    FsKind, FsStats, Host, HostError, LoopDevice, MountEntry, RemovalStats, TargetKind, TreeUsage,
};

#[derive(Default)]
struct Plan {
    calls: usize,
    fail_at: Option<usize>,
    log: Vec<&'static str>,
}

/// See the module docs.
pub struct Faulty<H> {
    inner: H,
    plan: Mutex<Plan>,
}

impl<H: Host> Faulty<H> {
    pub fn new(inner: H) -> Self {
        Self {
            inner,
            plan: Mutex::default(),
        }
    }

    /// The call `n` calls from now (0 = the next one) fails.
    pub fn fail_in(&self, n: usize) {
        let mut p = self.lock();
        p.fail_at = Some(p.calls + n);
    }

    pub fn clear(&self) {
        self.lock().fail_at = None;
    }

    /// Calls made so far, and their names.
    pub fn calls(&self) -> usize {
        self.lock().calls
    }

    pub fn log(&self) -> Vec<&'static str> {
        self.lock().log.clone()
    }

    pub fn inner(&self) -> &H {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, op: &'static str, path: &Path) -> Result<(), HostError> {
        let mut p = self.lock();
        let index = p.calls;
        p.calls += 1;
        p.log.push(op);
        if p.fail_at == Some(index) {
            p.fail_at = None;
            return Err(HostError::Injected(format!("{op} {}", path.display())));
        }
        Ok(())
    }
}

impl<H: Host> Host for Faulty<H> {
    fn make_dir(&self, dir: &Path, ownership: &Ownership) -> Result<(), HostError> {
        self.check("make_dir", dir)?;
        self.inner.make_dir(dir, ownership)
    }
    fn remove_tree_counting(
        &self,
        root: &Path,
        path: &Path,
        removed: &mut RemovalStats,
    ) -> Result<(), HostError> {
        self.check("remove_tree", path)?;
        self.inner.remove_tree_counting(root, path, removed)
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        self.check("rename", from)?;
        self.inner.rename(from, to)
    }
    fn move_to_trash(&self, trash: &Path, paths: &[&Path]) -> Result<u64, HostError> {
        self.check("move_to_trash", trash)?;
        self.inner.move_to_trash(trash, paths)
    }
    fn empty_trash(&self, trash: &Path) -> Result<u64, HostError> {
        self.check("empty_trash", trash)?;
        self.inner.empty_trash(trash)
    }
    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        self.check("copy_tree", from)?;
        self.inner.copy_tree(from, to)
    }
    fn export_tree(
        &self,
        root: &Path,
        out: &mut dyn std::io::Write,
    ) -> Result<crate::host::ArchiveStats, HostError> {
        self.check("export_tree", root)?;
        self.inner.export_tree(root, out)
    }
    fn import_tree(
        &self,
        root: &Path,
        input: &mut dyn std::io::Read,
    ) -> Result<crate::host::ArchiveStats, HostError> {
        self.check("import_tree", root)?;
        self.inner.import_tree(root, input)
    }
    fn prepare_target(&self, target: &Path, kind: TargetKind) -> Result<bool, HostError> {
        self.check("prepare_target", target)?;
        self.inner.prepare_target(target, kind)
    }
    fn target_exists(&self, target: &Path) -> Result<bool, HostError> {
        self.check("target_exists", target)?;
        self.inner.target_exists(target)
    }
    fn remove_target(&self, target: &Path, kind: TargetKind) -> Result<(), HostError> {
        self.check("remove_target", target)?;
        self.inner.remove_target(target, kind)
    }
    fn bind_mount(
        &self,
        root: &Path,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError> {
        self.check("bind_mount", target)?;
        self.inner.bind_mount(root, source, target, read_only)
    }
    fn unmount(&self, target: &Path) -> Result<(), HostError> {
        self.check("unmount", target)?;
        self.inner.unmount(target)
    }
    fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        self.check("mounts", Path::new("/proc/self/mountinfo"))?;
        self.inner.mounts()
    }
    fn create_image(&self, image: &Path, size: u64, fs: Option<FsType>) -> Result<(), HostError> {
        self.check("create_image", image)?;
        self.inner.create_image(image, size, fs)
    }
    fn mount_image(&self, image: &Path, target: &Path, fs: FsType) -> Result<(), HostError> {
        self.check("mount_image", image)?;
        self.inner.mount_image(image, target, fs)
    }
    fn grow_image(
        &self,
        image: &Path,
        size: u64,
        mounted: Option<(&Path, FsType)>,
    ) -> Result<(), HostError> {
        self.check("grow_image", image)?;
        self.inner.grow_image(image, size, mounted)
    }
    fn attach_loop(&self, image: &Path) -> Result<PathBuf, HostError> {
        self.check("attach_loop", image)?;
        self.inner.attach_loop(image)
    }
    fn detach_loop(&self, image: &Path) -> Result<(), HostError> {
        self.check("detach_loop", image)?;
        self.inner.detach_loop(image)
    }
    fn loop_devices(&self) -> Result<Vec<LoopDevice>, HostError> {
        self.check("loop_devices", Path::new("/sys/block"))?;
        self.inner.loop_devices()
    }
    fn image_loops(&self, image: &Path) -> Result<Vec<PathBuf>, HostError> {
        self.check("image_loops", image)?;
        self.inner.image_loops(image)
    }
    fn is_mount_point(&self, path: &Path) -> Result<bool, HostError> {
        self.check("is_mount_point", path)?;
        self.inner.is_mount_point(path)
    }
    fn fs_error_count(&self, device: &Path) -> Result<Option<u64>, HostError> {
        self.check("fs_error_count", device)?;
        self.inner.fs_error_count(device)
    }
    fn boot_id(&self) -> Result<String, HostError> {
        self.inner.boot_id()
    }
    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        self.check("fs_stats", path)?;
        self.inner.fs_stats(path)
    }
    fn tree_usage(&self, path: &Path) -> Result<TreeUsage, HostError> {
        self.check("tree_usage", path)?;
        self.inner.tree_usage(path)
    }
    fn sync_path(&self, path: &Path) -> Result<(), HostError> {
        self.check("sync_path", path)?;
        self.inner.sync_path(path)
    }
    fn dirs_beneath(&self, root: &Path, relative: &Path, create: bool) -> Result<(), HostError> {
        self.check("dirs_beneath", root)?;
        self.inner.dirs_beneath(root, relative, create)
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        self.check("random_bytes", Path::new("getrandom"))?;
        self.inner.random_bytes(buf)
    }
    fn copy_image(&self, from: &Path, to: &Path, freeze: Option<&Path>) -> Result<(), HostError> {
        self.check("copy_image", to)?;
        self.inner.copy_image(from, to, freeze)
    }
    fn thaw(&self, mount_point: &Path) -> Result<(), HostError> {
        self.check("thaw", mount_point)?;
        self.inner.thaw(mount_point)
    }
    fn btrfs_snapshot(&self, from: &Path, to: &Path, read_only: bool) -> Result<(), HostError> {
        self.check("btrfs_snapshot", to)?;
        self.inner.btrfs_snapshot(from, to, read_only)
    }
    fn fs_kind(&self, path: &Path) -> Result<FsKind, HostError> {
        self.check("fs_kind", path)?;
        self.inner.fs_kind(path)
    }
    fn btrfs_create_subvolume(&self, path: &Path) -> Result<(), HostError> {
        self.check("btrfs_create_subvolume", path)?;
        self.inner.btrfs_create_subvolume(path)
    }
    fn btrfs_delete_subvolume(&self, path: &Path) -> Result<(), HostError> {
        self.check("btrfs_delete_subvolume", path)?;
        self.inner.btrfs_delete_subvolume(path)
    }
    fn btrfs_enable_quota(&self, fs_path: &Path) -> Result<(), HostError> {
        self.check("btrfs_enable_quota", fs_path)?;
        self.inner.btrfs_enable_quota(fs_path)
    }
    fn btrfs_set_limit(&self, subvolume: &Path, bytes: u64) -> Result<(), HostError> {
        self.check("btrfs_set_limit", subvolume)?;
        self.inner.btrfs_set_limit(subvolume, bytes)
    }
    fn btrfs_usage(&self, subvolume: &Path) -> Result<TreeUsage, HostError> {
        self.check("btrfs_usage", subvolume)?;
        self.inner.btrfs_usage(subvolume)
    }
    fn project_quota_support(&self, path: &Path) -> Result<(), HostError> {
        self.check("project_quota_support", path)?;
        self.inner.project_quota_support(path)
    }
    fn set_project_quota(
        &self,
        dir: &Path,
        project_id: u32,
        limit_bytes: u64,
    ) -> Result<(), HostError> {
        self.check("set_project_quota", dir)?;
        self.inner.set_project_quota(dir, project_id, limit_bytes)
    }
    fn clear_project_quota(&self, dir: &Path, project_id: u32) -> Result<(), HostError> {
        self.check("clear_project_quota", dir)?;
        self.inner.clear_project_quota(dir, project_id)
    }
    fn project_quota_usage(&self, path: &Path, project_id: u32) -> Result<TreeUsage, HostError> {
        self.check("project_quota_usage", path)?;
        self.inner.project_quota_usage(path, project_id)
    }
    fn project_ids_in_use(&self, fs_path: &Path) -> Result<BTreeSet<u32>, HostError> {
        self.check("project_ids_in_use", fs_path)?;
        self.inner.project_ids_in_use(fs_path)
    }
}
