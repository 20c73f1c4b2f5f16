//! What the fake's directory and file calls do to its model: making directories and
//! mount targets, the removal walk, the trash, renames, copies and archives, and walks
//! beneath a root. Kept apart from the [`Host`](crate::host::Host) impl in `mod.rs`,
//! which records each call and injects failures before handing it here.

use std::path::{Path, PathBuf};

use super::model::{Model, not_found};
use crate::host::types::Ownership;
use crate::host::{HostError, RemovalStats, TargetKind};

impl Model {
    pub(super) fn make_dir(&mut self, dir: &Path, ownership: &Ownership) -> Result<(), HostError> {
        self.dirs.insert(dir.to_path_buf());
        if *ownership != Ownership::default() {
            self.ownership.insert(dir.to_path_buf(), ownership.clone());
        }
        Ok(())
    }

    pub(super) fn remove_tree_counting(
        &mut self,
        root: &Path,
        path: &Path,
        stats: &mut RemovalStats,
    ) -> Result<(), HostError> {
        if !path.starts_with(root) || path == root {
            return Err(HostError::OutsideRoot {
                path: path.to_path_buf(),
                root: root.to_path_buf(),
            });
        }
        if self.mounts.keys().any(|mp| mp.starts_with(path)) {
            return Err(HostError::CrossesMount {
                path: path.to_path_buf(),
            });
        }
        // A subvolume has its own st_dev: the real walk does not enter one either.
        if let Some(sub) = self.subvolumes.keys().find(|s| s.starts_with(path)) {
            return Err(HostError::CrossesMount { path: sub.clone() });
        }
        let damaged: Vec<PathBuf> = self
            .damaged
            .iter()
            .filter(|d| d.starts_with(path))
            .cloned()
            .collect();
        // What a walk cannot get rid of: a damaged directory, what is in it, and the
        // directories holding it.
        let stays = |p: &Path| damaged.iter().any(|d| p.starts_with(d) || d.starts_with(p));
        self.projects
            .retain(|d, _| !d.starts_with(path) || stays(d));
        self.dirs.retain(|d| {
            let gone = d.starts_with(path) && !stays(d);
            stats.dirs += u64::from(gone);
            !gone
        });
        self.files.retain(|f| {
            let gone = f.starts_with(path) && !stays(f);
            stats.files += u64::from(gone);
            !gone
        });
        self.images.retain(|i, _| !i.starts_with(path) || stays(i));
        match damaged.first() {
            Some(d) => Err(HostError::io(
                "rmdir",
                d,
                std::io::Error::from_raw_os_error(libc::ENOTEMPTY),
            )),
            None => Ok(()),
        }
    }

    pub(super) fn move_to_trash(
        &mut self,
        trash: &Path,
        paths: &[&Path],
    ) -> Result<u64, HostError> {
        if self.symlinks.contains(trash) {
            return Err(HostError::Symlink {
                path: trash.to_path_buf(),
            });
        }
        if let Some(path) = paths.iter().find(|p| self.mounts.contains_key(**p)) {
            return Err(HostError::CrossesMount {
                path: path.to_path_buf(),
            });
        }
        self.dirs.insert(trash.to_path_buf());
        let mut bytes = 0;
        for path in paths {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            self.random_counter += 1;
            let to = trash.join(format!("{name}.{}", self.random_counter));
            if let Some(size) = self.images.remove(*path) {
                bytes += size;
                self.images.insert(to, size);
                continue;
            }
            let moved: Vec<PathBuf> = self
                .dirs
                .iter()
                .filter(|d| d.starts_with(path))
                .cloned()
                .collect();
            for d in moved {
                self.dirs.remove(&d);
                let rel = d.strip_prefix(path).unwrap_or(Path::new(""));
                self.dirs.insert(to.join(rel));
            }
            let moved: Vec<PathBuf> = self
                .files
                .iter()
                .filter(|f| f.starts_with(path))
                .cloned()
                .collect();
            for f in moved {
                self.files.remove(&f);
                let rel = f.strip_prefix(path).unwrap_or(Path::new(""));
                self.files.insert(to.join(rel));
            }
        }
        Ok(bytes)
    }

    pub(super) fn empty_trash(&mut self, trash: &Path) -> Result<u64, HostError> {
        let before = self.images.len() + self.files.len() + self.symlinks.len();
        let inside = |p: &Path| p.starts_with(trash) && p != trash;
        self.images.retain(|i, _| !inside(i));
        self.files.retain(|f| !inside(f));
        self.symlinks.retain(|l| !inside(l));
        self.dirs.retain(|d| !inside(d));
        Ok((before - self.images.len() - self.files.len() - self.symlinks.len()) as u64)
    }

    pub(super) fn rename(&mut self, from: &Path, to: &Path) -> Result<(), HostError> {
        let moved: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter(|d| d.starts_with(from))
            .cloned()
            .collect();
        if moved.is_empty() {
            return if self.dirs.contains(to) {
                Ok(())
            } else {
                Err(not_found("rename", from))
            };
        }
        for d in moved {
            self.dirs.remove(&d);
            let rel = d.strip_prefix(from).unwrap_or(Path::new(""));
            self.dirs.insert(to.join(rel));
            // Project ids travel with the directories that carry them.
            if let Some(project) = self.projects.remove(&d) {
                self.projects.insert(to.join(rel), project);
            }
        }
        Ok(())
    }

    pub(super) fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), HostError> {
        if !self.dirs.contains(from) {
            return Err(not_found("copy_tree", from));
        }
        if !self.dirs.contains(to) {
            return Err(not_found("copy_tree", to));
        }
        Ok(())
    }

    /// Writes the directory's path (the fake has no file contents), so a test can see what
    /// was exported.
    pub(super) fn export_tree(
        &self,
        root: &Path,
        out: &mut dyn std::io::Write,
    ) -> Result<crate::host::ArchiveStats, HostError> {
        if !self.dirs.contains(root) {
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

    pub(super) fn prepare_target(
        &mut self,
        target: &Path,
        kind: TargetKind,
    ) -> Result<bool, HostError> {
        let set = match kind {
            TargetKind::Directory => &mut self.dirs,
            TargetKind::File => &mut self.files,
        };
        Ok(set.insert(target.to_path_buf()))
    }

    pub(super) fn remove_target(
        &mut self,
        target: &Path,
        kind: TargetKind,
    ) -> Result<(), HostError> {
        match kind {
            TargetKind::Directory => self.dirs.remove(target),
            TargetKind::File => self.files.remove(target),
        };
        Ok(())
    }

    /// Refuses a planted link or file anywhere on the way, in both modes (the fake does not
    /// know every directory that exists on disk, so it does not stop at an unknown one).
    pub(super) fn dirs_beneath(
        &mut self,
        root: &Path,
        relative: &Path,
        create: bool,
    ) -> Result<(), HostError> {
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
            if self.symlinks.contains(p) {
                return Err(HostError::Symlink { path: p.clone() });
            }
            if self.files.contains(p) || self.images.contains_key(p) {
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
            self.dirs.extend(walked.into_iter().skip(1));
        }
        Ok(())
    }
}
