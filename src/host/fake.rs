//! A recording, in-memory [`Host`] for the engine's unit tests. It keeps a model of
//! directories, mounts, images and loop devices so idempotency and crash recovery can be
//! checked without root, records every call, and fails on demand: at the N-th call, or at
//! every call of a given operation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{
    FsStats, Host, HostError, LoopDevice, MountEntry, RemovalStats, TargetKind, TreeUsage,
};
use crate::engine::types::{FsType, Ownership};

/// One recorded call: the operation and its main path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: &'static str,
    pub path: PathBuf,
}

#[derive(Default)]
struct Model {
    dirs: BTreeSet<PathBuf>,
    files: BTreeSet<PathBuf>,
    /// mount point -> (source, read-only)
    mounts: BTreeMap<PathBuf, (PathBuf, bool)>,
    /// image -> size
    images: BTreeMap<PathBuf, u64>,
    /// device -> image
    loops: BTreeMap<PathBuf, PathBuf>,
    next_loop: u32,
    calls: Vec<Call>,
    fail_at_call: Option<usize>,
    fail_ops: BTreeSet<&'static str>,
}

/// See the module docs.
#[derive(Default)]
pub struct FakeHost {
    model: Mutex<Model>,
    /// What `fs_stats` reports as every filesystem's size.
    pub fs_size: u64,
}

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

    pub fn heal(&self) {
        let mut m = self.lock();
        m.fail_at_call = None;
        m.fail_ops.clear();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn call_count(&self) -> usize {
        self.lock().calls.len()
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

    pub fn loop_count(&self) -> usize {
        self.lock().loops.len()
    }

    /// Drops every mount and loop device, as a reboot does.
    pub fn reboot(&self) {
        let mut m = self.lock();
        m.mounts.clear();
        m.loops.clear();
    }

    /// Adds a directory as if someone else had made it (e.g. a pool path).
    pub fn add_dir(&self, p: &Path) {
        self.lock().dirs.insert(p.to_path_buf());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the call and decides whether it fails.
    fn enter(
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
        if m.fail_at_call == Some(index) || m.fail_ops.contains(op) {
            if m.fail_at_call == Some(index) {
                m.fail_at_call = None;
            }
            return Err(HostError::Injected(format!("{op} {}", path.display())));
        }
        Ok(m)
    }
}

fn not_found(op: &'static str, path: &Path) -> HostError {
    HostError::io(op, path, std::io::Error::from_raw_os_error(libc::ENOENT))
}

impl Host for FakeHost {
    fn make_dir(&self, dir: &Path, _ownership: &Ownership) -> Result<(), HostError> {
        let mut m = self.enter("make_dir", dir)?;
        m.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn remove_tree(&self, root: &Path, path: &Path) -> Result<RemovalStats, HostError> {
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
        let mut stats = RemovalStats::default();
        m.dirs.retain(|d| {
            let gone = d.starts_with(path);
            stats.dirs += u64::from(gone);
            !gone
        });
        m.files.retain(|f| {
            let gone = f.starts_with(path);
            stats.files += u64::from(gone);
            !gone
        });
        m.images.retain(|i, _| !i.starts_with(path));
        Ok(stats)
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

    fn prepare_target(&self, target: &Path, kind: TargetKind) -> Result<bool, HostError> {
        let mut m = self.enter("prepare_target", target)?;
        let set = match kind {
            TargetKind::Directory => &mut m.dirs,
            TargetKind::File => &mut m.files,
        };
        Ok(set.insert(target.to_path_buf()))
    }

    fn remove_target(&self, target: &Path, kind: TargetKind) -> Result<(), HostError> {
        let mut m = self.enter("remove_target", target)?;
        match kind {
            TargetKind::Directory => m.dirs.remove(target),
            TargetKind::File => m.files.remove(target),
        };
        Ok(())
    }

    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), HostError> {
        let mut m = self.enter("bind_mount", target)?;
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

    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        let _m = self.enter("fs_stats", path)?;
        Ok(FsStats {
            bytes_total: self.fs_size,
            bytes_free: self.fs_size,
            bytes_available: self.fs_size,
            inodes_total: 1 << 20,
            inodes_free: 1 << 20,
        })
    }

    fn tree_usage(&self, path: &Path) -> Result<TreeUsage, HostError> {
        let m = self.enter("tree_usage", path)?;
        let inodes = m.dirs.iter().filter(|d| d.starts_with(path)).count() as u64;
        Ok(TreeUsage {
            bytes: inodes * 4096,
            inodes,
        })
    }

    fn sync_path(&self, path: &Path) -> Result<(), HostError> {
        let _m = self.enter("sync_path", path)?;
        Ok(())
    }
}
