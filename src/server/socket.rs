//! Binding the front-ends' unix sockets. A socket path is guarded by an `flock`ed lock file
//! beside it (`PATH.lock`), so a second daemon cannot take a socket that a live one serves;
//! a socket left by a crashed daemon (its lock is free) is replaced, but nothing else is: a
//! file that is not a socket at that path is refused, never deleted. Sockets are removed on
//! shutdown, so `docker volume ls` never waits on a dead plugin socket.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::{DaemonError, io_err};

/// A listening unix socket and the lock that makes it ours; dropping it removes the socket.
pub struct BoundSocket {
    pub listener: UnixListener,
    path: PathBuf,
    _lock: std::fs::File,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts `unix:///path`, `unix:/path` and plain `/path`.
pub fn socket_path(endpoint: &str) -> PathBuf {
    let trimmed = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    PathBuf::from(trimmed)
}

/// Binds a unix socket safely; see the module docs. Must be called inside a tokio runtime.
pub fn bind_socket(endpoint: &str, mode: u32) -> Result<BoundSocket, DaemonError> {
    let path = socket_path(endpoint);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("creating the directory of", &path))?;
    }
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let Some(lock) = try_lock(&lock_path)? else {
        return Err(DaemonError::SocketInUse {
            path,
            lock: lock_path,
        });
    };
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(DaemonError::NotASocket { path });
        }
        _ => {}
    }
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(socket = %path.display(), "replaced a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing the stale socket", &path)(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io_err("binding", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", &path))?;
    Ok(BoundSocket {
        listener,
        path,
        _lock: lock,
    })
}

/// Opens (creating) the lock file and takes an exclusive `flock` on it without waiting;
/// `None` if another process holds it. The lock lasts as long as the returned file is open.
pub(crate) fn try_lock(path: &Path) -> Result<Option<std::fs::File>, DaemonError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("opening the lock file", path))?;
    // SAFETY: flock on a file descriptor we own; the caller keeps the file open for as long
    // as it needs the lock.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((locked == 0).then_some(file))
}
