//! `berth serve`: open the engine, bind every configured front-end's socket, tell systemd
//! we are ready, and shut down cleanly on SIGTERM/SIGINT.
//!
//! One daemon per state directory: `serve` first takes an `flock` on `STATE_DIR/berth.lock`
//! and holds it until it exits, so a second daemon on the same state stops before it touches
//! anything, saying which lock is held.
//!
//! Sockets: nothing but the socket is put in its directory (kubelet's plugin directory and
//! /run/docker/plugins are read by others, and a CSI socket directory should hold only the
//! socket). While binding, berth holds an `flock` on the socket's directory itself, and
//! an existing socket there is replaced only if nothing accepts connections on it (a socket
//! left by a crashed daemon refuses them); one that answers belongs to a live server and is
//! refused. Under the directory lock two daemons starting at once cannot both take the
//! path. A file that is not a socket at that path is refused, never deleted. Sockets are
//! removed on shutdown, so `docker volume ls` never waits on a dead plugin socket.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::engine::{Engine, EngineError, VolumeService};
use crate::host::linux::LinuxHost;

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

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::Io { what, path, source }
}

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
pub fn bind_socket(endpoint: &str, mode: u32) -> Result<BoundSocket, DaemonError> {
    let path = socket_path(endpoint);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("creating the directory of", &path))?;
    }
    let directory = path.parent().unwrap_or(Path::new("/"));
    // Released when this returns: the bound socket itself tells later binders it is taken.
    let _binding = lock_directory(directory)?;
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(DaemonError::NotASocket { path });
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(DaemonError::SocketInUse { path });
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
fn lock_directory(directory: &Path) -> Result<std::fs::File, DaemonError> {
    let handle = std::fs::File::open(directory)
        .map_err(io_err("opening the socket directory", directory))?;
    // SAFETY: flock on a file descriptor we own, kept open by the caller while it needs
    // the lock.
    if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err("locking the socket directory", directory)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(handle)
}

/// Opens (creating) the lock file and takes an exclusive `flock` on it without waiting;
/// `None` if another process holds it. The lock lasts as long as the returned file is open.
fn try_lock(path: &Path) -> Result<Option<std::fs::File>, DaemonError> {
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

/// Takes the state directory's lock (see the module docs), creating the directory.
fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, DaemonError> {
    std::fs::create_dir_all(state_dir)
        .map_err(io_err("creating the state directory", state_dir))?;
    let lock = state_dir.join("berth.lock");
    try_lock(&lock)?.ok_or_else(|| DaemonError::StateInUse {
        state_dir: state_dir.to_path_buf(),
        lock,
    })
}

/// Sends `READY=1` to systemd when run under `Type=notify`.
fn notify_ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = PathBuf::from(socket);
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|d| {
        if let Some(abstract_name) = socket.to_str().and_then(|s| s.strip_prefix('@')) {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            d.send_to_addr(b"READY=1\n", &addr)
        } else {
            d.send_to(b"READY=1\n", &socket)
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// Opens the engine on the real host, with the config's directories in place.
pub fn open_engine(config: &Config) -> Result<Arc<dyn VolumeService>, DaemonError> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(io_err("creating the state directory", &config.state_dir))?;
    for pool in config.effective_pools() {
        if pool.kind == crate::engine::types::PoolKind::Root {
            for base in &pool.paths {
                std::fs::create_dir_all(base)
                    .map_err(io_err("creating the pool directory", base))?;
            }
        }
    }
    let engine = Engine::open(config.engine_config(), LinuxHost::new())?;
    Ok(Arc::new(engine))
}

/// A shutdown future that front-end servers can each hold a copy of.
pub async fn shutdown_future(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Runs the daemon until a signal (or `stop` resolves, for tests).
pub async fn serve(
    config: Config,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let started = std::time::Instant::now();
    let _state_lock = lock_state_dir(&config.state_dir)?;
    let engine = tokio::task::spawn_blocking({
        let config = config.clone();
        move || open_engine(&config)
    })
    .await
    .map_err(|e| DaemonError::Config(format!("opening the engine panicked: {e}")))??;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let group = socket_group(&config)?;
    let mode = config.listen.socket_mode | if group.is_some() { 0o060 } else { 0 };
    crate::csi::start(&config, &engine, mode, &stop_rx, &mut servers)?;
    crate::docker::start(&config, &engine, mode, &stop_rx, &mut servers)?;
    crate::admin::start(&config, &engine, mode, &stop_rx, &mut servers)?;
    if let Some(gid) = group {
        give_sockets_to_group(&config, gid)?;
    }
    servers.spawn(sweep_pending_reservations(
        Arc::clone(&engine),
        stop_rx.clone(),
    ));
    tracing::info!(
        volumes = engine.list(&Default::default()).len(),
        millis = started.elapsed().as_millis() as u64,
        node = %engine.node().node_id,
        "berth is ready"
    );
    notify_ready();
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down on signal"),
        _ = stop => tracing::info!("shutting down"),
        Some(done) = servers.join_next() => {
            if let Ok(Err(e)) = done { return Err(e); }
        }
    }
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    Ok(())
}

/// The gid of `listen.group`, if set.
fn socket_group(config: &Config) -> Result<Option<u32>, DaemonError> {
    let Some(group) = &config.listen.group else {
        return Ok(None);
    };
    crate::host::linux::group_id(group)
        .map(Some)
        .map_err(|e| DaemonError::Config(format!("listen.group {group:?}: {e}")))
}

/// Gives every socket berth serves to the group `gid`.
fn give_sockets_to_group(config: &Config, gid: u32) -> Result<(), DaemonError> {
    let endpoints = [
        crate::csi::endpoint(config),
        config.listen.docker.clone(),
        config.listen.admin.clone(),
    ];
    for endpoint in endpoints.iter().filter(|e| !e.is_empty()) {
        let path = socket_path(endpoint);
        crate::host::linux::set_group(&path, gid)
            .map_err(io_err("giving listen.group the socket", &path))?;
    }
    Ok(())
}

/// How often pending reservations are checked against their deadlines.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Rolls back pending reservations whose task never attached in time (see
/// [`VolumeService::expire_pending_reservations`]); the engine logs each one.
pub async fn sweep_pending_reservations(
    engine: Arc<dyn VolumeService>,
    stop: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown_future(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {}
        }
        let engine = Arc::clone(&engine);
        let swept = tokio::task::spawn_blocking(move || {
            engine.expire_pending_reservations(crate::engine::now_ms())
        })
        .await;
        if let Err(e) = swept {
            tracing::error!(error = %e, "the pending-reservation sweep panicked");
        }
    }
}

/// What each front-end's `start` adds to the daemon: a task that serves until shutdown.
pub type Servers = tokio::task::JoinSet<Result<(), DaemonError>>;
