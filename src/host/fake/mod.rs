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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod control;
mod model;
#[cfg(test)]
mod tests;

pub use model::Call;
use model::Model;
use model::{invalid, not_found};

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
        let mut m = self.enter("make_dir", dir)?;
        m.dirs.insert(dir.to_path_buf());
        if *ownership != Ownership::default() {
            m.ownership.insert(dir.to_path_buf(), ownership.clone());
        }
        Ok(())
    }

    fn remove_tree_counting(
        &self,
        root: &Path,
        path: &Path,
        stats: &mut RemovalStats,
    ) -> Result<(), HostError> {
        let mut m = self.enter("remove_tree", path)?;
        if !path.starts_with(root) || path == root {
            return Err(HostError::OutsideRoot {
                path: path.to_path_buf(),
                root: root.to_path_buf(),
            });
        }
        if m.mounts.keys().any(|mp| mp.starts_with(path)) {
            return Err(HostError::CrossesMount {
                path: path.to_path_buf(),
            });
        }
        // A subvolume has its own st_dev: the real walk does not enter one either.
        if let Some(sub) = m.subvolumes.keys().find(|s| s.starts_with(path)) {
            return Err(HostError::CrossesMount { path: sub.clone() });
        }
        let damaged: Vec<PathBuf> = m
            .damaged
            .iter()
            .filter(|d| d.starts_with(path))
            .cloned()
            .collect();
        // What a walk cannot get rid of: a damaged directory, what is in it, and the
        // directories holding it.
        let stays = |p: &Path| damaged.iter().any(|d| p.starts_with(d) || d.starts_with(p));
        m.projects.retain(|d, _| !d.starts_with(path) || stays(d));
        m.dirs.retain(|d| {
            let gone = d.starts_with(path) && !stays(d);
            stats.dirs += u64::from(gone);
            !gone
        });
        m.files.retain(|f| {
            let gone = f.starts_with(path) && !stays(f);
            stats.files += u64::from(gone);
            !gone
        });
        m.images.retain(|i, _| !i.starts_with(path) || stays(i));
        match damaged.first() {
            Some(d) => Err(HostError::io(
                "rmdir",
                d,
                std::io::Error::from_raw_os_error(libc::ENOTEMPTY),
            )),
            None => Ok(()),
        }
    }

    fn move_to_trash(&self, trash: &Path, paths: &[&Path]) -> Result<u64, HostError> {
        let mut m = self.enter("move_to_trash", trash)?;
        if m.symlinks.contains(trash) {
            return Err(HostError::Symlink {
                path: trash.to_path_buf(),
            });
        }
        if let Some(path) = paths.iter().find(|p| m.mounts.contains_key(**p)) {
            return Err(HostError::CrossesMount {
                path: path.to_path_buf(),
            });
        }
        m.dirs.insert(trash.to_path_buf());
        let mut bytes = 0;
        for path in paths {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            m.random_counter += 1;
            let to = trash.join(format!("{name}.{}", m.random_counter));
            if let Some(size) = m.images.remove(*path) {
                bytes += size;
                m.images.insert(to, size);
                continue;
            }
            let moved: Vec<PathBuf> = m
                .dirs
                .iter()
                .filter(|d| d.starts_with(path))
                .cloned()
                .collect();
            for d in moved {
                m.dirs.remove(&d);
                let rel = d.strip_prefix(path).unwrap_or(Path::new(""));
                m.dirs.insert(to.join(rel));
            }
            let moved: Vec<PathBuf> = m
                .files
                .iter()
                .filter(|f| f.starts_with(path))
                .cloned()
                .collect();
            for f in moved {
                m.files.remove(&f);
                let rel = f.strip_prefix(path).unwrap_or(Path::new(""));
                m.files.insert(to.join(rel));
            }
        }
        Ok(bytes)
    }

    fn empty_trash(&self, trash: &Path) -> Result<u64, HostError> {
        let mut m = self.enter("empty_trash", trash)?;
        let before = m.images.len() + m.files.len() + m.symlinks.len();
        let inside = |p: &Path| p.starts_with(trash) && p != trash;
        m.images.retain(|i, _| !inside(i));
        m.files.retain(|f| !inside(f));
        m.symlinks.retain(|l| !inside(l));
        m.dirs.retain(|d| !inside(d));
        Ok((before - m.images.len() - m.files.len() - m.symlinks.len()) as u64)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        let mut m = self.enter("rename", from)?;
        let moved: Vec<PathBuf> = m
            .dirs
            .iter()
            .filter(|d| d.starts_with(from))
            .cloned()
            .collect();
        if moved.is_empty() {
            return if m.dirs.contains(to) {
                Ok(())
            } else {
                Err(not_found("rename", from))
            };
        }
        for d in moved {
            m.dirs.remove(&d);
            let rel = d.strip_prefix(from).unwrap_or(Path::new(""));
            m.dirs.insert(to.join(rel));
            // Project ids travel with the directories that carry them.
            if let Some(project) = m.projects.remove(&d) {
                m.projects.insert(to.join(rel), project);
            }
        }
        Ok(())
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        let m = self.enter("copy_tree", from)?;
        if !m.dirs.contains(from) {
            return Err(not_found("copy_tree", from));
        }
        if !m.dirs.contains(to) {
            return Err(not_found("copy_tree", to));
        }
        Ok(())
    }

    /// Writes the directory's path (the fake has no file contents), so a test can see what
    /// was exported.
    fn export_tree(
        &self,
        root: &Path,
        out: &mut dyn std::io::Write,
    ) -> Result<crate::host::ArchiveStats, HostError> {
        let m = self.enter("export_tree", root)?;
        if !m.dirs.contains(root) {
            return Err(not_found("export_tree", root));
        }
        let text = root.as_os_str().as_encoded_bytes();
        out.write_all(text)
            .map_err(|e| HostError::io("write", root, e))?;
        Ok(crate::host::ArchiveStats {
            entries: 0,
            bytes: text.len() as u64,
        })
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
        let mut m = self.enter("prepare_target", target)?;
        let set = match kind {
            TargetKind::Directory => &mut m.dirs,
            TargetKind::File => &mut m.files,
        };
        Ok(set.insert(target.to_path_buf()))
    }

    fn target_exists(&self, target: &Path) -> Result<bool, HostError> {
        let m = self.enter("target_exists", target)?;
        Ok(m.dirs.contains(target) || m.files.contains(target))
    }

    fn remove_target(&self, target: &Path, kind: TargetKind) -> Result<(), HostError> {
        let mut m = self.enter("remove_target", target)?;
        match kind {
            TargetKind::Directory => m.dirs.remove(target),
            TargetKind::File => m.files.remove(target),
        };
        Ok(())
    }

    fn bind_mount(
        &self,
        root: &Path,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError> {
        let mut m = self.enter("bind_mount", target)?;
        if !source.starts_with(root) {
            return Err(HostError::OutsideRoot {
                path: source.to_path_buf(),
                root: root.to_path_buf(),
            });
        }
        if !m.dirs.contains(target) && !m.files.contains(target) {
            return Err(not_found("mount", target));
        }
        m.mounts
            .insert(target.to_path_buf(), (source.to_path_buf(), read_only));
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), HostError> {
        let mut m = self.enter("unmount", target)?;
        if let Some((source, _)) = m.mounts.remove(target) {
            // An image's filesystem going away releases its autoclear loop device.
            if m.images.contains_key(&source) {
                m.loops.retain(|_, image| image != &source);
                // The damage was inside that filesystem: the mount point beneath is whole.
                m.damaged.retain(|d| !d.starts_with(target));
            }
        }
        Ok(())
    }

    fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        let m = self.enter("mounts", Path::new("/proc/self/mountinfo"))?;
        Ok(m.mounts
            .iter()
            .enumerate()
            .map(|(i, (mp, (source, ro)))| MountEntry {
                id: i as u32 + 100,
                parent: 1,
                device: "0:0".into(),
                root: source.clone(),
                mount_point: mp.clone(),
                options: if *ro { "ro".into() } else { "rw".into() },
                fs_type: "fake".into(),
                source: source.display().to_string(),
                super_options: "rw".into(),
            })
            .collect())
    }

    fn create_image(&self, image: &Path, size: u64, _fs: Option<FsType>) -> Result<(), HostError> {
        let mut m = self.enter("create_image", image)?;
        m.images.entry(image.to_path_buf()).or_insert(size);
        Ok(())
    }

    fn mount_image(&self, image: &Path, target: &Path, _fs: FsType) -> Result<(), HostError> {
        let mut m = self.enter("mount_image", target)?;
        if !m.images.contains_key(image) {
            return Err(not_found("mount_image", image));
        }
        if m.mounts.get(target).is_some_and(|(s, _)| s == image) {
            return Ok(());
        }
        let n = m.next_loop;
        m.next_loop += 1;
        m.loops
            .insert(PathBuf::from(format!("/dev/loop{n}")), image.to_path_buf());
        m.mounts
            .insert(target.to_path_buf(), (image.to_path_buf(), false));
        m.dirs.insert(target.join("data"));
        Ok(())
    }

    fn grow_image(
        &self,
        image: &Path,
        size: u64,
        _mounted: Option<(&Path, FsType)>,
    ) -> Result<(), HostError> {
        let mut m = self.enter("grow_image", image)?;
        match m.images.get_mut(image) {
            Some(current) => {
                *current = (*current).max(size);
                Ok(())
            }
            None => Err(not_found("grow_image", image)),
        }
    }

    fn attach_loop(&self, image: &Path) -> Result<PathBuf, HostError> {
        let mut m = self.enter("attach_loop", image)?;
        if let Some((dev, _)) = m.loops.iter().find(|(_, i)| *i == image) {
            return Ok(dev.clone());
        }
        let dev = PathBuf::from(format!("/dev/loop{}", m.next_loop));
        m.next_loop += 1;
        m.loops.insert(dev.clone(), image.to_path_buf());
        Ok(dev)
    }

    fn detach_loop(&self, image: &Path) -> Result<(), HostError> {
        let mut m = self.enter("detach_loop", image)?;
        m.loops.retain(|_, i| i != image);
        Ok(())
    }

    fn loop_devices(&self) -> Result<Vec<LoopDevice>, HostError> {
        let m = self.enter("loop_devices", Path::new("/sys/block"))?;
        Ok(m.loops
            .iter()
            .map(|(d, i)| LoopDevice {
                device: d.clone(),
                backing_file: i.clone(),
            })
            .collect())
    }

    fn image_loops(&self, image: &Path) -> Result<Vec<PathBuf>, HostError> {
        let m = self.enter("image_loops", image)?;
        Ok(m.loops
            .iter()
            .filter(|(_, backing)| *backing == image)
            .map(|(device, _)| device.clone())
            .collect())
    }

    fn is_mount_point(&self, path: &Path) -> Result<bool, HostError> {
        let m = self.enter("is_mount_point", path)?;
        Ok(m.mounts.contains_key(path))
    }

    fn fs_error_count(&self, device: &Path) -> Result<Option<u64>, HostError> {
        let m = self.enter("fs_error_count", device)?;
        Ok(m.loops
            .contains_key(device)
            .then(|| m.fs_errors.get(device).copied().unwrap_or(0)))
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

    /// Refuses a planted link or file anywhere on the way, in both modes (the fake does not
    /// know every directory that exists on disk, so it does not stop at an unknown one).
    fn dirs_beneath(&self, root: &Path, relative: &Path, create: bool) -> Result<(), HostError> {
        // Recorded apart: a check reads, a walk that creates changes the host.
        let op = if create {
            "dirs_beneath"
        } else {
            "check_dirs_beneath"
        };
        let mut m = self.enter(op, root)?;
        let mut path = root.to_path_buf();
        let mut walked = vec![path.clone()];
        for component in relative.components() {
            let std::path::Component::Normal(name) = component else {
                return Err(HostError::io(
                    "mkdir",
                    &root.join(relative),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "only plain names are walked beneath a root",
                    ),
                ));
            };
            path.push(name);
            walked.push(path.clone());
        }
        for p in &walked {
            if m.symlinks.contains(p) {
                return Err(HostError::Symlink { path: p.clone() });
            }
            if m.files.contains(p) || m.images.contains_key(p) {
                return Err(HostError::io(
                    "open",
                    p,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "exists and is not a directory",
                    ),
                ));
            }
        }
        if create {
            m.dirs.extend(walked.into_iter().skip(1));
        }
        Ok(())
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
        let mut m = self.enter("copy_image", to)?;
        let size = *m
            .images
            .get(from)
            .ok_or_else(|| not_found("copy_image", from))?;
        if let Some(mount_point) = freeze
            && !m.mounts.contains_key(mount_point)
        {
            return Err(invalid(mount_point, "is not mounted: nothing to freeze"));
        }
        m.images.insert(to.to_path_buf(), size);
        Ok(())
    }

    fn thaw(&self, mount_point: &Path) -> Result<(), HostError> {
        let _m = self.enter("thaw", mount_point)?;
        Ok(())
    }

    fn btrfs_snapshot(&self, from: &Path, to: &Path, _read_only: bool) -> Result<(), HostError> {
        let mut m = self.enter("btrfs_snapshot", to)?;
        m.require_subvolume(from)?;
        m.require_btrfs(to)?;
        if m.subvolumes.contains_key(to) {
            return Ok(());
        }
        if m.dirs.contains(to) || m.files.contains(to) {
            return Err(invalid(to, "exists and is not a btrfs subvolume"));
        }
        let copied: Vec<PathBuf> = m
            .dirs
            .iter()
            .filter_map(|d| d.strip_prefix(from).ok().map(|rel| to.join(rel)))
            .collect();
        m.dirs.extend(copied);
        m.subvolumes.insert(to.to_path_buf(), None);
        Ok(())
    }

    fn fs_kind(&self, path: &Path) -> Result<FsKind, HostError> {
        let m = self.enter("fs_kind", path)?;
        Ok(m.kind_of(path))
    }

    fn btrfs_create_subvolume(&self, path: &Path) -> Result<(), HostError> {
        let mut m = self.enter("btrfs_create_subvolume", path)?;
        m.require_btrfs(path)?;
        if m.subvolumes.contains_key(path) {
            return Ok(());
        }
        if m.dirs.contains(path) || m.files.contains(path) {
            return Err(invalid(path, "exists and is not a btrfs subvolume"));
        }
        m.dirs.insert(path.to_path_buf());
        m.subvolumes.insert(path.to_path_buf(), None);
        Ok(())
    }

    fn btrfs_delete_subvolume(&self, path: &Path) -> Result<(), HostError> {
        let mut m = self.enter("btrfs_delete_subvolume", path)?;
        if !m.dirs.contains(path) && !m.files.contains(path) {
            return Ok(());
        }
        m.require_subvolume(path)?;
        if let Some((mp, _)) = m
            .mounts
            .iter()
            .find(|(mp, (source, _))| mp.starts_with(path) || source.starts_with(path))
        {
            return Err(HostError::CrossesMount { path: mp.clone() });
        }
        if m.subvolumes
            .keys()
            .any(|s| s.starts_with(path) && s != path)
        {
            return Err(HostError::io(
                "BTRFS_IOC_SNAP_DESTROY",
                path,
                std::io::Error::from_raw_os_error(libc::ENOTEMPTY),
            ));
        }
        m.subvolumes.remove(path);
        m.dirs.retain(|d| !d.starts_with(path));
        m.files.retain(|f| !f.starts_with(path));
        m.images.retain(|i, _| !i.starts_with(path));
        m.projects.retain(|d, _| !d.starts_with(path));
        Ok(())
    }

    fn btrfs_enable_quota(&self, fs_path: &Path) -> Result<(), HostError> {
        let mut m = self.enter("btrfs_enable_quota", fs_path)?;
        m.require_btrfs(fs_path)?;
        m.btrfs_quota.insert(fs_path.to_path_buf());
        Ok(())
    }

    fn btrfs_set_limit(&self, subvolume: &Path, bytes: u64) -> Result<(), HostError> {
        let mut m = self.enter("btrfs_set_limit", subvolume)?;
        m.require_subvolume(subvolume)?;
        if !m.btrfs_quota.iter().any(|p| subvolume.starts_with(p)) {
            return Err(HostError::Unsupported(format!(
                "quotas are not enabled on the btrfs holding {}; enable them first",
                subvolume.display()
            )));
        }
        m.subvolumes
            .insert(subvolume.to_path_buf(), (bytes != 0).then_some(bytes));
        Ok(())
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
        let mut m = self.enter("set_project_quota", dir)?;
        if project_id == 0 {
            return Err(invalid(dir, "project 0 is every file's default project"));
        }
        if !m.dirs.contains(dir) {
            return Err(not_found("set_project_quota", dir));
        }
        m.require_project_quotas(dir)?;
        m.projects
            .insert(dir.to_path_buf(), (project_id, limit_bytes));
        Ok(())
    }

    fn clear_project_quota(&self, dir: &Path, project_id: u32) -> Result<(), HostError> {
        let mut m = self.enter("clear_project_quota", dir)?;
        match m.projects.get(dir) {
            Some((id, _)) if *id != project_id => Err(invalid(dir, "is in another project")),
            _ => {
                m.projects.remove(dir);
                Ok(())
            }
        }
    }

    fn project_quota_usage(&self, path: &Path, project_id: u32) -> Result<TreeUsage, HostError> {
        let m = self.enter("project_quota_usage", path)?;
        m.require_project_quotas(path)?;
        let mut usage = TreeUsage::default();
        for (dir, _) in m.projects.iter().filter(|(_, (id, _))| *id == project_id) {
            let u = m.usage_beneath(dir);
            usage.bytes += u.bytes;
            usage.inodes += u.inodes;
        }
        Ok(usage)
    }

    fn project_ids_in_use(&self, fs_path: &Path) -> Result<BTreeSet<u32>, HostError> {
        let m = self.enter("project_ids_in_use", fs_path)?;
        let mut ids = m.reserved_project_ids.clone();
        ids.extend(
            m.projects
                .iter()
                .filter(|(d, _)| d.as_path() == fs_path || d.parent() == Some(fs_path))
                .map(|(_, (id, _))| *id),
        );
        ids.remove(&0);
        Ok(ids)
    }
}
