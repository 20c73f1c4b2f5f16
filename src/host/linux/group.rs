//! Giving berth's sockets to a group (`listen.group`), so its members may call them without
//! root.

use std::io;
use std::path::Path;

/// The gid of a group named or numbered `group`, from the system's group database.
pub fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group named {group:?}"),
        )),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Makes `gid` the group of the file at `path` (its owner stays).
pub fn set_group(path: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid))
}
