//! Binding the front-ends' unix sockets. Nothing but the socket is put in its directory
//! (kubelet's plugin directory and /run/docker/plugins are read by others, and a CSI socket
//! directory should hold only the socket). While binding, berth holds an `flock` on the
//! socket's directory itself, and an existing socket there is replaced only if nothing
//! accepts connections on it (a socket left by a crashed daemon refuses them); one that
//! answers belongs to a live server and is refused. Under the directory lock two daemons
//! starting at once cannot both take the path. A file that is not a socket at that path is
//! refused, never deleted. Sockets are removed on shutdown, so `docker volume ls` never
//! waits on a dead plugin socket.
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::{ServeError, io_err};

/// A listening unix socket; dropping it removes the socket.
pub struct BoundSocket {
    pub listener: UnixListener,
    path: PathBuf,
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
pub fn bind_socket(endpoint: &str, mode: u32) -> Result<BoundSocket, ServeError> {
    let path = socket_path(endpoint);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("creating the directory of", &path))?;
    }
    let directory = path.parent().unwrap_or(Path::new("/"));
    // Released when this returns: the bound socket itself tells later binders it is taken.
    let _binding = lock_directory(directory)?;
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServeError::NotASocket { path });
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(ServeError::SocketInUse { path });
            }
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(socket = %path.display(), "replaced a stale socket"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing the stale socket", &path)(e)),
            }
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path).map_err(io_err("binding", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", &path))?;
    Ok(BoundSocket { listener, path })
}

/// Takes an exclusive `flock` on a directory, waiting for it; held while the returned
/// handle is open. No file is made.
fn lock_directory(directory: &Path) -> Result<std::fs::File, ServeError> {
    let handle = std::fs::File::open(directory)
        .map_err(io_err("opening the socket directory", directory))?;
    handle
        .lock()
        .map_err(io_err("locking the socket directory", directory))?;
    Ok(handle)
}

/// Opens (creating) the lock file and takes an exclusive `flock` on it without waiting;
/// `None` if another process holds it. The lock lasts as long as the returned file is open.
pub(crate) fn try_lock(path: &Path) -> Result<Option<std::fs::File>, ServeError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("opening the lock file", path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("locking", path)(e)),
    }
}
