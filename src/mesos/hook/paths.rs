//! Where the hook may mount: paths the caller names, checked beneath the agent work directory
//! and walked by descriptor through the host layer.

use std::path::{Component, Path, PathBuf};

use crate::engine::{EngineError, VolumeService};
use crate::host::HostError;

use super::error::HookError;

/// Resolves a directory the caller names (following links) and checks that it lies strictly
/// beneath the agent work directory. A directory that is gone (`must_exist` false, for
/// cleanup) is checked as written.
pub(super) fn beneath_work_dir(
    work_dir: &Path,
    path: &Path,
    field: &str,
    must_exist: bool,
) -> Result<PathBuf, HookError> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(HookError::BadRequest(format!(
            "{field} {} must be an absolute path without ..",
            path.display()
        )));
    }
    let work = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    let resolved = match std::fs::canonicalize(path) {
        Ok(resolved) => resolved,
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
            path.components().collect()
        }
        Err(e) => {
            return Err(HookError::BadRequest(format!(
                "{field} {}: {e}",
                path.display()
            )));
        }
    };
    if resolved == work || !resolved.starts_with(&work) {
        return Err(HookError::Forbidden(format!(
            "{field} {} is not beneath the Mesos agent work directory {} ([mesos] work_dir in \
             berth's config); berth mounts volumes only into sandboxes and container root \
             filesystems there",
            path.display(),
            work_dir.display()
        )));
    }
    Ok(resolved)
}

/// `root` joined with the normal components of `inner` (absolute or relative); refuses a
/// path that names `root` itself.
pub(super) fn join_beneath(root: &Path, inner: &Path, field: &str) -> Result<PathBuf, HookError> {
    let mut joined = root.to_path_buf();
    for component in inner.components() {
        match component {
            Component::Normal(part) => joined.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(HookError::BadRequest(format!(
                    "{field} {} must not contain ..",
                    inner.display()
                )));
            }
        }
    }
    if joined == root {
        return Err(HookError::BadRequest(format!(
            "{field} {:?} names {} itself; mount a volume at a directory below it",
            inner.display().to_string(),
            root.display()
        )));
    }
    Ok(joined)
}

/// Checks the existing part of the path from `root` down to `target` through the host's
/// fd-relative walk: each component must be a directory and not a symbolic link. The part
/// that does not exist yet is made later, by the same walk.
pub(super) fn check_mount_path(
    engine: &dyn VolumeService,
    root: &Path,
    target: &Path,
) -> Result<(), HookError> {
    let relative = beneath(root, target)?;
    engine
        .dirs_beneath(root, relative, false)
        .map_err(walk_error)
}

/// Creates the missing directories above `target` (the engine makes `target` itself, and
/// removes it again on unmount), walking from `root` by fd without following a link.
pub(super) fn make_parents(
    engine: &dyn VolumeService,
    root: &Path,
    target: &Path,
) -> Result<(), HookError> {
    let Some(parent) = target.parent() else {
        return Ok(());
    };
    let relative = beneath(root, parent)?;
    engine
        .dirs_beneath(root, relative, true)
        .map_err(walk_error)
}

/// `path` relative to `root`, which it must lie beneath.
pub(super) fn beneath<'p>(root: &Path, path: &'p Path) -> Result<&'p Path, HookError> {
    path.strip_prefix(root).map_err(|_| {
        HookError::Forbidden(format!(
            "{} is not beneath {}",
            path.display(),
            root.display()
        ))
    })
}

/// A refused walk in the words of a task's author.
pub(super) fn walk_error(e: EngineError) -> HookError {
    match e {
        EngineError::Host {
            source: HostError::Symlink { path },
            ..
        } => HookError::Forbidden(format!(
            "{} is a symbolic link; berth does not follow links when mounting into a sandbox or \
             a container (a link can point out of it); mount at the path it points to instead",
            path.display()
        )),
        EngineError::Host {
            source: HostError::Io { path, source, .. },
            ..
        } if source.kind() == std::io::ErrorKind::InvalidInput => HookError::BadRequest(format!(
            "{} exists and is not a directory; a volume is mounted on a directory",
            path.display()
        )),
        other => HookError::Engine(other),
    }
}
