//! Whether a volume is still whole as the host shows it now: what CSI reports as a
//! `VolumeCondition` (kubelet turns an abnormal one into an event on the pod). Each backend
//! has its own probe; the rules are here, the front-ends only map the answer.
//!
//! A volume is abnormal when its data directory vanished, when a loopfs volume's filesystem
//! is no longer mounted at its directory or its loop device is gone (detached behind
//! berth's back), when that ext4 filesystem has recorded errors, or when a published block
//! volume's loop device was detached.

use std::path::{Path, PathBuf};

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

impl<H: Host> Engine<H> {
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
