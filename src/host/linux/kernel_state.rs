//! Facts the kernel keeps about this boot and its filesystems, read from `/proc` and
//! `/sys`: the boot id (to tell a restart from a reboot) and ext4's error counts (to tell a
//! damaged volume filesystem).

use std::io::ErrorKind;
use std::path::Path;

use crate::host::HostError;

/// Where ext4 keeps a directory of counters per mounted filesystem, named after its device.
pub(super) const EXT4_SYSFS: &str = "/sys/fs/ext4";

/// `errors_count` of the filesystem on `device` in the ext4 sysfs directory `sysfs`; `None`
/// when there is none.
pub(super) fn fs_error_count(sysfs: &Path, device: &Path) -> Result<Option<u64>, HostError> {
    let Some(name) = device.file_name() else {
        return Ok(None);
    };
    let file = sysfs.join(name).join("errors_count");
    match std::fs::read_to_string(&file) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            HostError::io(
                "read",
                &file,
                std::io::Error::new(ErrorKind::InvalidData, format!("not a count: {text:?}")),
            )
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HostError::io("read", &file, e)),
    }
}

/// Where the kernel tells its boot id.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

pub(super) fn boot_id() -> Result<String, HostError> {
    let path = Path::new(BOOT_ID);
    let text = std::fs::read_to_string(path).map_err(|e| HostError::io("read", path, e))?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_error_counts_are_read_per_device() {
        let sysfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(sysfs.path().join("loop7")).unwrap();
        std::fs::write(sysfs.path().join("loop7/errors_count"), "3\n").unwrap();
        std::fs::create_dir(sysfs.path().join("loop8")).unwrap();
        std::fs::write(sysfs.path().join("loop8/errors_count"), "many\n").unwrap();
        let count = |dev: &str| fs_error_count(sysfs.path(), Path::new(dev));
        assert_eq!(count("/dev/loop7").unwrap(), Some(3));
        assert_eq!(count("/dev/loop9").unwrap(), None, "no ext4 on it");
        assert!(
            count("/dev/loop8")
                .unwrap_err()
                .to_string()
                .contains("many")
        );
    }
}
