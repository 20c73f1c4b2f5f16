//! Each pool's size-enforcing backend, decided once at start.

use super::pool::PoolConfig;
use super::types::*;
use super::*;
use crate::host::Host;

/// Decides a pool's size-enforcing backend from its config and the filesystem under its
/// paths. An explicitly chosen backend that cannot work is refused at start, naming the
/// pool and why; `auto` falls back to `loopfs` and says why in the log.
pub(super) fn resolve_backend<H: Host>(
    host: &H,
    pool: &PoolConfig,
) -> Result<Backend, EngineError> {
    use crate::host::FsKind;
    use pool::BackendChoice;
    let refuse = |reason: String| EngineError::PoolUnusable {
        pool: pool.name.clone(),
        reason,
    };
    if pool.kind == PoolKind::Mount {
        return Ok(Backend::Disk);
    }
    let all_btrfs = || -> Result<bool, EngineError> {
        for base in &pool.paths {
            let kind = host
                .fs_kind(base)
                .map_err(|e| refuse(format!("cannot inspect {}: {e}", base.display())))?;
            if kind != FsKind::Btrfs {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let enable_btrfs = || -> Result<(), EngineError> {
        for base in &pool.paths {
            host.btrfs_enable_quota(base)
                .map_err(|e| refuse(format!("enabling btrfs quotas on {}: {e}", base.display())))?;
        }
        Ok(())
    };
    let prjquota = || -> Result<(), String> {
        for base in &pool.paths {
            host.project_quota_support(base)
                .map_err(|e| format!("{}: {e}", base.display()))?;
        }
        Ok(())
    };
    match pool.backend {
        BackendChoice::None => Ok(Backend::None),
        BackendChoice::Loopfs => Ok(Backend::Loopfs),
        BackendChoice::Btrfs => {
            if !all_btrfs()? {
                return Err(refuse(format!(
                    "backend btrfs needs every path on btrfs: {:?}",
                    pool.paths
                )));
            }
            enable_btrfs()?;
            Ok(Backend::Btrfs)
        }
        BackendChoice::Prjquota => {
            prjquota().map_err(|why| refuse(format!("backend prjquota cannot work: {why}")))?;
            Ok(Backend::Prjquota)
        }
        BackendChoice::Auto => {
            if all_btrfs()? {
                match enable_btrfs() {
                    Ok(()) => return Ok(Backend::Btrfs),
                    Err(e) => {
                        tracing::warn!(pool = %pool.name, error = %e, "btrfs quotas unavailable; using loopfs")
                    }
                }
            } else if let Err(why) = prjquota() {
                tracing::info!(pool = %pool.name, reason = %why, "no project quotas; sizes are enforced with loopfs");
            } else {
                return Ok(Backend::Prjquota);
            }
            Ok(Backend::Loopfs)
        }
    }
}
