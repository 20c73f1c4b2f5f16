//! Plumbing every front-end shares, below the front-ends and above the engine: unix sockets
//! ([`socket`]), the small HTTP/1.1 server ([`http`]), the shutdown signal and the set of
//! serving tasks the daemon waits on. Front-ends import this, never `crate::daemon`.

pub mod http;
pub mod socket;

use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::sync::watch;

use crate::engine::EngineError;

pub use socket::{BoundSocket, bind_socket, socket_path};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is served by another running berth (its lock {lock} is held); stop it or configure another path"
    )]
    SocketInUse { path: PathBuf, lock: PathBuf },
    #[error(
        "{path} exists and is not a socket; berth replaces only a stale socket there: move it away or configure another path"
    )]
    NotASocket { path: PathBuf },
    #[error(
        "state directory {state_dir} is used by another running berth (its lock {lock} is held); stop that one or give this one another state_dir"
    )]
    StateInUse { state_dir: PathBuf, lock: PathBuf },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Config(String),
}

pub(crate) fn io_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::Io { what, path, source }
}

/// A shutdown future that front-end servers can each hold a copy of.
pub async fn shutdown_future(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// What each front-end's `start` adds to the daemon: a task that serves until shutdown.
pub type Servers = tokio::task::JoinSet<Result<(), DaemonError>>;
