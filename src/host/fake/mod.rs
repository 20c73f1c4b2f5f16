//! A recording, in-memory [`Host`] for the engine's unit tests. It keeps a model of
//! directories, mounts, images and loop devices so idempotency and crash recovery can be
//! checked without root, records every call, and fails on demand: at the N-th call, or at
//! every call of a given operation, or "crashes" (panics) at a given operation.
//!
//! Size enforcement is modelled simply: [`Host::fs_kind`] answers what
//! [`FakeHost::set_fs_kind`] set for the longest matching path prefix (ext4 otherwise).
//! btrfs subvolumes are directories with an optional limit; the btrfs calls need a path on a
//! prefix set to [`FsKind::Btrfs`], and limits need [`Host::btrfs_enable_quota`] on a
//! prefix first. Project quotas are supported only after
//! [`FakeHost::set_project_quotas`]`(true)`; they map a directory to a project id and limit.
//! Usage counts 4 KiB per modelled directory, like [`Host::tree_usage`] here.
//!
//! This file is the [`Host`] impl: each call is recorded and may fail (`enter`, in
//! `control.rs`), then changes the model by concern: `tree.rs` (directories, removal, trash,
//! copies), `devices.rs` (mounts, images, loop devices), `quota.rs` (btrfs, project quotas).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod control;
mod devices;
mod model;
mod quota;
#[cfg(test)]
mod tests;
mod tree;

pub use model::Call;
use model::{Model, not_found};

use super::types::{FsType, Ownership};
use super::{
    FsKind, FsStats, Host, HostError, LoopDevice, MountEntry, RemovalStats, TargetKind, TreeUsage,
};

/// See the module docs.
#[derive(Default)]
pub struct FakeHost {
    model: Mutex<Model>,
    /// What `fs_stats` reports as every filesystem's size.
    pub fs_size: u64,
}
impl Host for FakeHost {
    fn make_dir(&self, dir: &Path, ownership: &Ownership) -> Result<(), HostError> {
        self.enter("make_dir", dir)?.make_dir(dir, ownership)
    }

    fn remove_tree_counting(
        &self,
        root: &Path,
        path: &Path,
        stats: &mut RemovalStats,
    ) -> Result<(), HostError> {
        self.enter("remove_tree", path)?
            .remove_tree_counting(root, path, stats)
    }

    fn move_to_trash(&self, trash: &Path, paths: &[&Path]) -> Result<u64, HostError> {
        self.enter("move_to_trash", trash)?
            .move_to_trash(trash, paths)
    }

    fn empty_trash(&self, trash: &Path) -> Result<u64, HostError> {
        self.enter("empty_trash", trash)?.empty_trash(trash)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        self.enter("rename", from)?.rename(from, to)
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        self.enter("copy_tree", from)?.copy_tree(from, to)
    }

    fn export_tree(
        &self,
        root: &Path,
        out: &mut dyn std::io::Write,
    ) -> Result<crate::host::ArchiveStats, HostError> {
        self.enter("export_tree", root)?.export_tree(root, out)
    }

    /// Reads the input to its end.
    fn import_tree(
        &self,
        root: &Path,
        input: &mut dyn std::io::Read,
    ) -> Result<crate::host::ArchiveStats, HostError> {
        {
            let m = self.enter("import_tree", root)?;
            if !m.dirs.contains(root) {
                return Err(not_found("import_tree", root));
            }
        }
        let bytes = std::io::copy(input, &mut std::io::sink())
            .map_err(|e| HostError::io("read the archive", root, e))?;
        Ok(crate::host::ArchiveStats { entries: 0, bytes })
    }

    fn prepare_target(&self, target: &Path, kind: TargetKind) -> Result<bool, HostError> {
        self.enter("prepare_target", target)?
            .prepare_target(target, kind)
    }

    fn target_exists(&self, target: &Path) -> Result<bool, HostError> {
        let m = self.enter("target_exists", target)?;
        Ok(m.dirs.contains(target) || m.files.contains(target))
    }

    fn remove_target(&self, target: &Path, kind: TargetKind) -> Result<(), HostError> {
        self.enter("remove_target", target)?
            .remove_target(target, kind)
    }

    fn bind_mount(
        &self,
        root: &Path,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError> {
        self.enter("bind_mount", target)?
            .bind_mount(root, source, target, read_only)
    }

    fn unmount(&self, target: &Path) -> Result<(), HostError> {
        self.enter("unmount", target)?.unmount(target)
    }

    fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        self.enter("mounts", Path::new("/proc/self/mountinfo"))?
            .mounts()
    }

    fn create_image(&self, image: &Path, size: u64, _fs: Option<FsType>) -> Result<(), HostError> {
        self.enter("create_image", image)?.create_image(image, size)
    }

    fn mount_image(&self, image: &Path, target: &Path, _fs: FsType) -> Result<(), HostError> {
        self.enter("mount_image", target)?
            .mount_image(image, target)
    }

    fn grow_image(
        &self,
        image: &Path,
        size: u64,
        _mounted: Option<(&Path, FsType)>,
    ) -> Result<(), HostError> {
        self.enter("grow_image", image)?.grow_image(image, size)
    }

    fn attach_loop(&self, image: &Path) -> Result<PathBuf, HostError> {
        self.enter("attach_loop", image)?.attach_loop(image)
    }

    fn detach_loop(&self, image: &Path) -> Result<(), HostError> {
        self.enter("detach_loop", image)?.detach_loop(image)
    }

    fn loop_devices(&self) -> Result<Vec<LoopDevice>, HostError> {
        self.enter("loop_devices", Path::new("/sys/block"))?
            .loop_devices()
    }

    fn image_loops(&self, image: &Path) -> Result<Vec<PathBuf>, HostError> {
        self.enter("image_loops", image)?.image_loops(image)
    }

    fn is_mount_point(&self, path: &Path) -> Result<bool, HostError> {
        let m = self.enter("is_mount_point", path)?;
        Ok(m.mounts.contains_key(path))
    }

    fn fs_error_count(&self, device: &Path) -> Result<Option<u64>, HostError> {
        self.enter("fs_error_count", device)?.fs_error_count(device)
    }

    fn boot_id(&self) -> Result<String, HostError> {
        // Not recorded as a call: reading it changes nothing, and counting it would shift
        // the call indices `fail_at_call` tests rely on.
        Ok(format!("fake-boot-{}", self.lock().boots))
    }

    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        let _m = self.enter("fs_stats", path)?;
        Ok(FsStats {
            device: 0,
            bytes_total: self.fs_size,
            bytes_free: self.fs_size,
            bytes_available: self.fs_size,
            inodes_total: 1 << 20,
            inodes_free: 1 << 20,
        })
    }

    fn tree_usage(&self, path: &Path) -> Result<TreeUsage, HostError> {
        let m = self.enter("tree_usage", path)?;
        Ok(m.usage_beneath(path))
    }

    fn sync_path(&self, path: &Path) -> Result<(), HostError> {
        let _m = self.enter("sync_path", path)?;
        Ok(())
    }

    fn dirs_beneath(&self, root: &Path, relative: &Path, create: bool) -> Result<(), HostError> {
        // Recorded apart: a check reads, a walk that creates changes the host.
        let op = if create {
            "dirs_beneath"
        } else {
            "check_dirs_beneath"
        };
        self.enter(op, root)?.dirs_beneath(root, relative, create)
    }

    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        let mut m = self.enter("random_bytes", Path::new("getrandom"))?;
        for b in buf.iter_mut() {
            m.random_counter += 1;
            *b = (m.random_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
        }
        Ok(())
    }

    fn copy_image(&self, from: &Path, to: &Path, freeze: Option<&Path>) -> Result<(), HostError> {
        self.enter("copy_image", to)?.copy_image(from, to, freeze)
    }

    fn thaw(&self, mount_point: &Path) -> Result<(), HostError> {
        let _m = self.enter("thaw", mount_point)?;
        Ok(())
    }

    fn btrfs_snapshot(&self, from: &Path, to: &Path, _read_only: bool) -> Result<(), HostError> {
        self.enter("btrfs_snapshot", to)?.btrfs_snapshot(from, to)
    }

    fn fs_kind(&self, path: &Path) -> Result<FsKind, HostError> {
        let m = self.enter("fs_kind", path)?;
        Ok(m.kind_of(path))
    }

    fn btrfs_create_subvolume(&self, path: &Path) -> Result<(), HostError> {
        self.enter("btrfs_create_subvolume", path)?
            .btrfs_create_subvolume(path)
    }

    fn btrfs_delete_subvolume(&self, path: &Path) -> Result<(), HostError> {
        self.enter("btrfs_delete_subvolume", path)?
            .btrfs_delete_subvolume(path)
    }

    fn btrfs_enable_quota(&self, fs_path: &Path) -> Result<(), HostError> {
        self.enter("btrfs_enable_quota", fs_path)?
            .btrfs_enable_quota(fs_path)
    }

    fn btrfs_set_limit(&self, subvolume: &Path, bytes: u64) -> Result<(), HostError> {
        self.enter("btrfs_set_limit", subvolume)?
            .btrfs_set_limit(subvolume, bytes)
    }

    fn btrfs_usage(&self, subvolume: &Path) -> Result<TreeUsage, HostError> {
        let m = self.enter("btrfs_usage", subvolume)?;
        m.require_subvolume(subvolume)?;
        Ok(m.usage_beneath(subvolume))
    }

    fn project_quota_support(&self, path: &Path) -> Result<(), HostError> {
        let m = self.enter("project_quota_support", path)?;
        m.require_project_quotas(path)
    }

    fn set_project_quota(
        &self,
        dir: &Path,
        project_id: u32,
        limit_bytes: u64,
    ) -> Result<(), HostError> {
        self.enter("set_project_quota", dir)?
            .set_project_quota(dir, project_id, limit_bytes)
    }

    fn clear_project_quota(&self, dir: &Path, project_id: u32) -> Result<(), HostError> {
        self.enter("clear_project_quota", dir)?
            .clear_project_quota(dir, project_id)
    }

    fn project_quota_usage(&self, path: &Path, project_id: u32) -> Result<TreeUsage, HostError> {
        self.enter("project_quota_usage", path)?
            .project_quota_usage(path, project_id)
    }

    fn project_ids_in_use(&self, fs_path: &Path) -> Result<BTreeSet<u32>, HostError> {
        self.enter("project_ids_in_use", fs_path)?
            .project_ids_in_use(fs_path)
    }
}
