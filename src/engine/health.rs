//! Whether a volume is still whole as the host shows it now: what CSI reports as a
//! `VolumeCondition` (kubelet turns an abnormal one into an event on the pod). Each backend
//! has its own probe; the rules are here, the front-ends only map the answer.
//!
//! A volume is abnormal when its data directory vanished, when a loopfs volume's filesystem
//! is no longer mounted at its directory or its loop device is gone (detached behind
//! berth's back), when that ext4 filesystem has recorded errors, or when a published block
//! volume's loop device was detached.
//!
//! Probing takes a few system calls per volume (a few microseconds each here, far more for
//! a loopfs volume), so a listing of thousands would spend most of its time on them. A
//! sweep ([`HealthBook`]) probes every volume in the background, and a listing of more
//! than [`LIVE_PROBE_LIMIT`] volumes reports what the last sweep found, as long as it is
//! fresh (the sweeper says for how long): a condition can then be up to one sweep interval
//! old. Smaller listings, a volume made after the sweep began and `NodeGetVolumeStats`
//! probe as they answer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::types::*;
use super::*;
use crate::host::Host;

/// A volume's condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeHealth {
    Normal,
    /// What is wrong, for an operator to read (`volume NAME: ...`).
    Abnormal(String),
}

/// A listing of at most this many volumes probes each as it lists it.
pub const LIVE_PROBE_LIMIT: usize = 256;

/// What the last health sweep found: only the abnormal volumes, since on a healthy node
/// that is none of them.
#[derive(Default)]
pub(super) struct HealthBook {
    /// When the last finished sweep began (monotonic, and as Unix milliseconds to compare
    /// with a volume's `created_at`), and how long its findings hold.
    began: Option<(Instant, u64, Duration)>,
    abnormal: HashMap<VolumeName, String>,
}

impl<H: Host> Engine<H> {
    /// Probes every volume and keeps what is wrong for listings; returns how many are
    /// abnormal.
    pub(super) fn do_sweep_health(&self, valid_for: Duration) -> usize {
        let began = (Instant::now(), now_ms(), valid_for);
        let volumes: Vec<Arc<Volume>> = self.cache().values().cloned().collect();
        let abnormal: HashMap<VolumeName, String> = volumes
            .iter()
            .filter_map(|v| match self.do_health(v) {
                VolumeHealth::Normal => None,
                VolumeHealth::Abnormal(what) => Some((v.name.clone(), what)),
            })
            .collect();
        let count = abnormal.len();
        *self.health_book.lock().unwrap_or_else(|e| e.into_inner()) = HealthBook {
            began: Some(began),
            abnormal,
        };
        count
    }

    /// The health of each volume of a listing's page, in order: probed now for a small
    /// page, from the last sweep for a large one (see the module docs).
    pub(super) fn do_listed_health(&self, page: &[Arc<Volume>]) -> Vec<VolumeHealth> {
        if page.len() <= LIVE_PROBE_LIMIT {
            return page.iter().map(|v| self.do_health(v)).collect();
        }
        let book = self.health_book.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = book
            .began
            .filter(|(at, _, valid_for)| at.elapsed() <= *valid_for)
            .map(|(_, ms, _)| ms);
        page.iter()
            .map(|v| match fresh {
                // The sweep saw this very volume (not one of the same name made since).
                Some(began) if v.phase == Phase::Ready && v.created_at < began => {
                    match book.abnormal.get(&v.name) {
                        Some(what) => VolumeHealth::Abnormal(what.clone()),
                        None => VolumeHealth::Normal,
                    }
                }
                _ => self.do_health(v),
            })
            .collect()
    }

    /// The health of `v`.
    pub(super) fn do_health(&self, v: &Volume) -> VolumeHealth {
        match self.probe_volume(v) {
            Ok(()) => VolumeHealth::Normal,
            Err(what) => VolumeHealth::Abnormal(format!("volume {}: {what}", v.name)),
        }
    }

    /// `Err(what is wrong)` for an abnormal volume.
    fn probe_volume(&self, v: &Volume) -> Result<(), String> {
        match v.phase {
            Phase::Ready => {}
            Phase::Creating => return Err("it is still being created".into()),
            Phase::Deleting { .. } => return Err("it is being deleted".into()),
        }
        match (v.spec.access, &v.placement.image) {
            (AccessType::Filesystem, Some(image)) => {
                let dir = &v.placement.dir;
                let mounted = self
                    .host
                    .is_mount_point(dir)
                    .map_err(|e| format!("its directory cannot be read: {e}"))?;
                if !mounted {
                    return Err(format!(
                        "its filesystem is no longer mounted at {}",
                        dir.display()
                    ));
                }
                let Some(device) = self.loops_over(image)?.into_iter().next() else {
                    return Err(format!(
                        "no loop device holds its image {}: it was detached",
                        image.display()
                    ));
                };
                self.probe_errors(&device)?;
            }
            (AccessType::Block, Some(image)) => {
                let devices: Vec<&Path> = v
                    .publications
                    .iter()
                    .filter_map(|p| p.device.as_deref())
                    .collect();
                if devices.is_empty() {
                    return Ok(());
                }
                let attached = self.loops_over(image)?;
                return match devices.iter().find(|d| !attached.iter().any(|a| a == *d)) {
                    Some(device) => Err(format!(
                        "its loop device {} no longer holds its image {}: it was detached",
                        device.display(),
                        image.display()
                    )),
                    None => Ok(()),
                };
            }
            _ => {}
        }
        match self.host.target_exists(&v.placement.data) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "its data directory {} is gone",
                v.placement.data.display()
            )),
            Err(e) => Err(format!("its data directory cannot be read: {e}")),
        }
    }

    fn loops_over(&self, image: &Path) -> Result<Vec<PathBuf>, String> {
        self.host
            .image_loops(image)
            .map_err(|e| format!("the loop devices over its image cannot be read: {e}"))
    }

    fn probe_errors(&self, device: &Path) -> Result<(), String> {
        match self.host.fs_error_count(device) {
            Ok(Some(0) | None) => Ok(()),
            Ok(Some(n)) => Err(format!(
                "its filesystem on {} has recorded {n} error(s) (see the kernel log; check it with fsck while it is not in use)",
                device.display()
            )),
            Err(e) => Err(format!("its filesystem's error count cannot be read: {e}")),
        }
    }
}
