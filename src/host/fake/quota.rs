//! What the fake's btrfs subvolume and quota calls and its project quota calls do to its
//! model. Kept apart from the [`Host`](crate::host::Host) impl in `mod.rs`, which records
//! each call and injects failures before handing it here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::model::{Model, invalid, not_found};
use crate::host::{HostError, TreeUsage};

impl Model {
    pub(super) fn btrfs_snapshot(&mut self, from: &Path, to: &Path) -> Result<(), HostError> {
        self.require_subvolume(from)?;
        self.require_btrfs(to)?;
        if self.subvolumes.contains_key(to) {
            return Ok(());
        }
        if self.dirs.contains(to) || self.files.contains(to) {
            return Err(invalid(to, "exists and is not a btrfs subvolume"));
        }
        let copied: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter_map(|d| d.strip_prefix(from).ok().map(|rel| to.join(rel)))
            .collect();
        self.dirs.extend(copied);
        self.subvolumes.insert(to.to_path_buf(), None);
        Ok(())
    }

    pub(super) fn btrfs_create_subvolume(&mut self, path: &Path) -> Result<(), HostError> {
        self.require_btrfs(path)?;
        if self.subvolumes.contains_key(path) {
            return Ok(());
        }
        if self.dirs.contains(path) || self.files.contains(path) {
            return Err(invalid(path, "exists and is not a btrfs subvolume"));
        }
        self.dirs.insert(path.to_path_buf());
        self.subvolumes.insert(path.to_path_buf(), None);
        Ok(())
    }

    pub(super) fn btrfs_delete_subvolume(&mut self, path: &Path) -> Result<(), HostError> {
        if !self.dirs.contains(path) && !self.files.contains(path) {
            return Ok(());
        }
        self.require_subvolume(path)?;
        if let Some((mp, _)) = self
            .mounts
            .iter()
            .find(|(mp, (source, _))| mp.starts_with(path) || source.starts_with(path))
        {
            return Err(HostError::CrossesMount { path: mp.clone() });
        }
        if self
            .subvolumes
            .keys()
            .any(|s| s.starts_with(path) && s != path)
        {
            return Err(HostError::io(
                "BTRFS_IOC_SNAP_DESTROY",
                path,
                std::io::Error::from_raw_os_error(libc::ENOTEMPTY),
            ));
        }
        self.subvolumes.remove(path);
        self.dirs.retain(|d| !d.starts_with(path));
        self.files.retain(|f| !f.starts_with(path));
        self.images.retain(|i, _| !i.starts_with(path));
        self.projects.retain(|d, _| !d.starts_with(path));
        Ok(())
    }

    pub(super) fn btrfs_enable_quota(&mut self, fs_path: &Path) -> Result<(), HostError> {
        self.require_btrfs(fs_path)?;
        self.btrfs_quota.insert(fs_path.to_path_buf());
        Ok(())
    }

    pub(super) fn btrfs_set_limit(
        &mut self,
        subvolume: &Path,
        bytes: u64,
    ) -> Result<(), HostError> {
        self.require_subvolume(subvolume)?;
        if !self.btrfs_quota.iter().any(|p| subvolume.starts_with(p)) {
            return Err(HostError::Unsupported(format!(
                "quotas are not enabled on the btrfs holding {}; enable them first",
                subvolume.display()
            )));
        }
        self.subvolumes
            .insert(subvolume.to_path_buf(), (bytes != 0).then_some(bytes));
        Ok(())
    }

    pub(super) fn set_project_quota(
        &mut self,
        dir: &Path,
        project_id: u32,
        limit_bytes: u64,
    ) -> Result<(), HostError> {
        if project_id == 0 {
            return Err(invalid(dir, "project 0 is every file's default project"));
        }
        if !self.dirs.contains(dir) {
            return Err(not_found("set_project_quota", dir));
        }
        self.require_project_quotas(dir)?;
        self.projects
            .insert(dir.to_path_buf(), (project_id, limit_bytes));
        Ok(())
    }

    pub(super) fn clear_project_quota(
        &mut self,
        dir: &Path,
        project_id: u32,
    ) -> Result<(), HostError> {
        match self.projects.get(dir) {
            Some((id, _)) if *id != project_id => Err(invalid(dir, "is in another project")),
            _ => {
                self.projects.remove(dir);
                Ok(())
            }
        }
    }

    pub(super) fn project_quota_usage(
        &self,
        path: &Path,
        project_id: u32,
    ) -> Result<TreeUsage, HostError> {
        self.require_project_quotas(path)?;
        let mut usage = TreeUsage::default();
        for (dir, _) in self
            .projects
            .iter()
            .filter(|(_, (id, _))| *id == project_id)
        {
            let u = self.usage_beneath(dir);
            usage.bytes += u.bytes;
            usage.inodes += u.inodes;
        }
        Ok(usage)
    }

    pub(super) fn project_ids_in_use(&self, fs_path: &Path) -> Result<BTreeSet<u32>, HostError> {
        let mut ids = self.reserved_project_ids.clone();
        ids.extend(
            self.projects
                .iter()
                .filter(|(d, _)| d.as_path() == fs_path || d.parent() == Some(fs_path))
                .map(|(_, (id, _))| *id),
        );
        ids.remove(&0);
        Ok(ids)
    }
}
