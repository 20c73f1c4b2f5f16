//! Read-only looks at this node for `berth doctor`: can berth open the loop control device,
//! are the programs it runs installed, how full is a filesystem, and does a directory's
//! mount propagate (shared) so kubelet and dockerd see the mounts berth makes beneath it.
//! Nothing here changes the system.

use std::path::{Path, PathBuf};

use super::mountinfo::{self, MountEntry};

/// Opens `/dev/loop-control` read-write, as attaching a loop device does.
pub fn open_loop_control() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map(drop)
}

/// Where `program` is: on `PATH`, or in the sbin directories a root shell has.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

/// Space on the filesystem holding `path`.
#[derive(Clone, Copy, Debug)]
pub struct Space {
    pub total_bytes: u64,
    /// Free to unprivileged users (`df`'s "available").
    pub available_bytes: u64,
}

pub fn space(path: &Path) -> nix::Result<Space> {
    let stats = nix::sys::statvfs::statvfs(path)?;
    let fragment = stats.fragment_size();
    Ok(Space {
        total_bytes: stats.blocks().saturating_mul(fragment),
        available_bytes: stats.blocks_available().saturating_mul(fragment),
    })
}

/// The mount a path lies on, and whether that mount is shared (propagates new mounts to
/// its peers in other mount namespaces).
#[derive(Clone, Debug)]
pub struct MountOf {
    pub entry: MountEntry,
    pub shared: bool,
}

/// The mount holding `path` (resolved), from this process's mount table.
pub fn mount_of(path: &Path) -> std::io::Result<MountOf> {
    let path = std::fs::canonicalize(path)?;
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    mount_in_table(&table, &path).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no mount holds {}", path.display()),
        )
    })
}

/// The last-mounted entry whose mount point is `path` or above it: the one visible there.
fn mount_in_table(table: &str, path: &Path) -> Option<MountOf> {
    let mut best: Option<MountOf> = None;
    for line in table.lines() {
        let Some(entry) = mountinfo::parse(line).pop() else {
            continue;
        };
        if !path.starts_with(&entry.mount_point) {
            continue;
        }
        let deeper_or_later = best.as_ref().is_none_or(|b| {
            entry.mount_point.components().count() >= b.entry.mount_point.components().count()
        });
        if deeper_or_later {
            // Optional fields sit between the mount options (6th field) and " - ".
            let shared = line
                .split_once(" - ")
                .map(|(left, _)| left.split(' ').skip(6).any(|f| f.starts_with("shared:")))
                .unwrap_or(false);
            best = Some(MountOf { entry, shared });
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:30 / /var/lib/kubelet rw,relatime - tmpfs tmpfs rw
41 40 0:31 / /var/lib/kubelet/plugins rw,relatime shared:7 master:2 - tmpfs tmpfs rw
";

    #[test]
    fn the_deepest_mount_wins_and_its_propagation_is_read() {
        let m = mount_in_table(TABLE, Path::new("/var/lib/berth")).unwrap();
        assert_eq!(m.entry.mount_point, Path::new("/"));
        assert!(m.shared);
        let m = mount_in_table(TABLE, Path::new("/var/lib/kubelet/pods")).unwrap();
        assert_eq!(m.entry.mount_point, Path::new("/var/lib/kubelet"));
        assert!(!m.shared, "private");
        let m = mount_in_table(TABLE, Path::new("/var/lib/kubelet/plugins/x")).unwrap();
        assert!(m.shared);
        // A path that merely shares a prefix string is not beneath the mount.
        let m = mount_in_table(TABLE, Path::new("/var/lib/kubeletx")).unwrap();
        assert_eq!(m.entry.mount_point, Path::new("/"));
    }
}
