//! Plumbing every front-end shares, below the front-ends and above the engine: unix sockets
//! ([`socket`]), the small HTTP/1.1 server ([`http`]), the admin socket's one client
//! ([`client`]) and one status map ([`status`]), the shutdown signal and the serving tasks
//! the daemon waits on (among them the pending-reservation sweep). Front-ends import
//! this, never `crate::daemon`.

pub mod client;
pub mod engine_call;
pub mod http;
pub mod socket;
pub mod status;
pub mod usage;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;

use crate::engine::{EngineError, VolumeService};

pub use engine_call::call_engine;
pub use socket::{BoundSocket, bind_socket, socket_path};

/// Why berth cannot start or keep serving: a socket, the state directory's lock, the
/// configuration, or the engine it opens.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is served by another running process (it accepts connections); stop it or configure another path"
    )]
    SocketInUse { path: PathBuf },
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

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Io { what, path, source }
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
pub type Servers = tokio::task::JoinSet<Result<(), ServeError>>;

/// How often pending reservations are checked against their deadlines.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Rolls back pending reservations whose task never attached in time (see
/// [`VolumeService::expire_pending_reservations`]); the engine logs each one.
pub async fn sweep_pending_reservations(
    engine: Arc<dyn VolumeService>,
    stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    every(
        SWEEP_INTERVAL,
        "pending-reservation sweep",
        engine,
        stop,
        |e| {
            e.expire_pending_reservations(crate::engine::now_ms());
        },
    )
    .await
}

/// Probes every volume's health at start and then every `interval`, for listings too large
/// to probe as they answer (see [`VolumeService::sweep_health`]). A sweep is trusted for
/// three intervals, so one slow sweep does not send listings back to probing. Each sweep
/// also hands the allocator's free pages back to the kernel: a large listing's reply leaves
/// megabytes freed but held.
pub async fn sweep_volume_health(
    engine: Arc<dyn VolumeService>,
    stop: watch::Receiver<bool>,
    interval: std::time::Duration,
) -> Result<(), ServeError> {
    every(interval, "health sweep", engine, stop, move |e| {
        let abnormal = e.sweep_health(interval * 3);
        tracing::debug!(abnormal, "swept every volume's health");
        crate::host::linux::release_free_memory();
    })
    .await
}

/// How long after a large reply is built its memory is handed back: by then it has been
/// encoded (and freed) and most likely written out.
const REPLY_SENT: std::time::Duration = std::time::Duration::from_millis(10);

/// Hands the allocator's free pages back to the kernel shortly after a large reply (a full
/// listing of 10,000 volumes is megabytes of small allocations, freed once encoded) instead
/// of holding them until the next health sweep. Call from within the runtime.
pub fn release_memory_after_reply() {
    tokio::spawn(async {
        tokio::time::sleep(REPLY_SENT).await;
        // Cancelled only when the daemon is stopping, which hands everything back anyway.
        if let Err(e) = tokio::task::spawn_blocking(crate::host::linux::release_free_memory).await
            && e.is_panic()
        {
            tracing::error!(error = %e, "handing a reply's memory back panicked");
        }
    });
}

/// Runs `job` on the blocking pool at once and then every `interval` until shutdown.
async fn every(
    interval: std::time::Duration,
    what: &'static str,
    engine: Arc<dyn VolumeService>,
    stop: watch::Receiver<bool>,
    job: impl Fn(&dyn VolumeService) + Clone + Send + 'static,
) -> Result<(), ServeError> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown_future(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {}
        }
        let (engine, job) = (Arc::clone(&engine), job.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || job(&*engine)).await {
            tracing::error!(error = %e, "the {what} panicked");
        }
    }
}

/// How long one wait for a trash to empty lasts: bounds how long a stop waits for it.
const TRASH_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Unlinks what deletes (and earlier runs) left in the pools' trashes, off the requests'
/// path (see [`VolumeService::empty_trash`]).
pub async fn empty_trash_in_background(
    engine: Arc<dyn VolumeService>,
    stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let stop = shutdown_future(stop);
    tokio::pin!(stop);
    loop {
        let engine = Arc::clone(&engine);
        let emptied = tokio::task::spawn_blocking(move || engine.empty_trash(TRASH_WAIT));
        tokio::select! {
            _ = &mut stop => return Ok(()),
            done = emptied => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "emptying the trash panicked");
                    tokio::time::sleep(TRASH_WAIT).await;
                }
            }
        }
    }
}
