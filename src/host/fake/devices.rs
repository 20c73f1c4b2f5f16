//! What the fake's mount, image and loop device calls do to its model. Kept apart from the
//! [`Host`](crate::host::Host) impl in `mod.rs`, which records each call and injects
//! failures before handing it here.

use std::path::{Path, PathBuf};

use super::model::{Model, invalid, not_found};
use crate::host::{HostError, LoopDevice, MountEntry};

impl Model {
    pub(super) fn bind_mount(
        &mut self,
        root: &Path,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError> {
        if !source.starts_with(root) {
            return Err(HostError::OutsideRoot {
                path: source.to_path_buf(),
                root: root.to_path_buf(),
            });
        }
        if !self.dirs.contains(target) && !self.files.contains(target) {
            return Err(not_found("mount", target));
        }
        self.mounts
            .insert(target.to_path_buf(), (source.to_path_buf(), read_only));
        Ok(())
    }

    pub(super) fn unmount(&mut self, target: &Path) -> Result<(), HostError> {
        if let Some((source, _)) = self.mounts.remove(target) {
            // An image's filesystem going away releases its autoclear loop device.
            if self.images.contains_key(&source) {
                self.loops.retain(|_, image| image != &source);
                // The damage was inside that filesystem: the mount point beneath is whole.
                self.damaged.retain(|d| !d.starts_with(target));
            }
        }
        Ok(())
    }

    pub(super) fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        Ok(self
            .mounts
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

    pub(super) fn create_image(&mut self, image: &Path, size: u64) -> Result<(), HostError> {
        self.images.entry(image.to_path_buf()).or_insert(size);
        Ok(())
    }

    pub(super) fn mount_image(&mut self, image: &Path, target: &Path) -> Result<(), HostError> {
        if !self.images.contains_key(image) {
            return Err(not_found("mount_image", image));
        }
        if self.mounts.get(target).is_some_and(|(s, _)| s == image) {
            return Ok(());
        }
        let n = self.next_loop;
        self.next_loop += 1;
        self.loops
            .insert(PathBuf::from(format!("/dev/loop{n}")), image.to_path_buf());
        self.mounts
            .insert(target.to_path_buf(), (image.to_path_buf(), false));
        self.dirs.insert(target.join("data"));
        Ok(())
    }

    pub(super) fn grow_image(&mut self, image: &Path, size: u64) -> Result<(), HostError> {
        match self.images.get_mut(image) {
            Some(current) => {
                *current = (*current).max(size);
                Ok(())
            }
            None => Err(not_found("grow_image", image)),
        }
    }

    pub(super) fn attach_loop(&mut self, image: &Path) -> Result<PathBuf, HostError> {
        if let Some((dev, _)) = self.loops.iter().find(|(_, i)| *i == image) {
            return Ok(dev.clone());
        }
        let dev = PathBuf::from(format!("/dev/loop{}", self.next_loop));
        self.next_loop += 1;
        self.loops.insert(dev.clone(), image.to_path_buf());
        Ok(dev)
    }

    pub(super) fn detach_loop(&mut self, image: &Path) -> Result<(), HostError> {
        self.loops.retain(|_, i| i != image);
        Ok(())
    }

    pub(super) fn loop_devices(&self) -> Result<Vec<LoopDevice>, HostError> {
        Ok(self
            .loops
            .iter()
            .map(|(d, i)| LoopDevice {
                device: d.clone(),
                backing_file: i.clone(),
            })
            .collect())
    }

    pub(super) fn image_loops(&self, image: &Path) -> Result<Vec<PathBuf>, HostError> {
        Ok(self
            .loops
            .iter()
            .filter(|(_, backing)| *backing == image)
            .map(|(device, _)| device.clone())
            .collect())
    }

    pub(super) fn fs_error_count(&self, device: &Path) -> Result<Option<u64>, HostError> {
        Ok(self
            .loops
            .contains_key(device)
            .then(|| self.fs_errors.get(device).copied().unwrap_or(0)))
    }

    pub(super) fn copy_image(
        &mut self,
        from: &Path,
        to: &Path,
        freeze: Option<&Path>,
    ) -> Result<(), HostError> {
        let size = *self
            .images
            .get(from)
            .ok_or_else(|| not_found("copy_image", from))?;
        if let Some(mount_point) = freeze
            && !self.mounts.contains_key(mount_point)
        {
            return Err(invalid(mount_point, "is not mounted: nothing to freeze"));
        }
        self.images.insert(to.to_path_buf(), size);
        Ok(())
    }
}
