//! `berth serve`: open the engine, bind every configured front-end's socket, tell systemd
//! we are ready, and shut down cleanly on SIGTERM/SIGINT.
//!
//! One daemon per state directory: `serve` first takes an `flock` on `STATE_DIR/berth.lock`
//! and holds it until it exits, so a second daemon on the same state stops before it touches
//! anything, saying which lock is held.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::engine::{Engine, VolumeService};
use crate::host::linux::LinuxHost;
use crate::server::socket::{socket_path, try_lock};
use crate::server::{
    ServeError, empty_trash_in_background, io_err, sweep_pending_reservations, sweep_volume_health,
};

/// Takes the state directory's lock (see the module docs), creating the directory.
fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, ServeError> {
    std::fs::create_dir_all(state_dir)
        .map_err(io_err("creating the state directory", state_dir))?;
    let lock = state_dir.join("berth.lock");
    try_lock(&lock)?.ok_or_else(|| ServeError::StateInUse {
        state_dir: state_dir.to_path_buf(),
        lock,
    })
}

/// The gid of `listen.group`, if set.
fn socket_group(config: &Config) -> Result<Option<u32>, ServeError> {
    let Some(group) = &config.listen.group else {
        return Ok(None);
    };
    crate::host::linux::group_id(group)
        .map(Some)
        .map_err(|e| ServeError::Config(format!("listen.group {group:?}: {e}")))
}

/// Gives every socket berth serves to the group `gid`.
fn give_sockets_to_group(config: &Config, gid: u32) -> Result<(), ServeError> {
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

/// Catches SIGTERM and SIGINT from the moment it is called; the future resolves when one
/// arrives. Called before any socket is bound, so a signal while berth starts is a clean
/// shutdown (sockets removed), not the default action that kills it in place.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
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
}

/// Opens the engine on the real host, with the config's directories in place.
pub fn open_engine(config: &Config) -> Result<Arc<dyn VolumeService>, ServeError> {
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
    // Reading every record at start leaves freed pages behind; give them back.
    crate::host::linux::release_free_memory();
    Ok(Arc::new(engine))
}

/// Runs the daemon until a signal (or `stop` resolves, for tests).
pub async fn serve(
    config: Config,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let started = std::time::Instant::now();
    let signalled = shutdown_signal();
    let _state_lock = lock_state_dir(&config.state_dir)?;
    let engine = tokio::task::spawn_blocking({
        let config = config.clone();
        move || open_engine(&config)
    })
    .await
    .map_err(|e| ServeError::Config(format!("opening the engine panicked: {e}")))??;
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
    servers.spawn(sweep_volume_health(
        Arc::clone(&engine),
        stop_rx.clone(),
        config.health_sweep_interval(),
    ));
    servers.spawn(empty_trash_in_background(
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
        _ = signalled => tracing::info!("shutting down on signal"),
        _ = stop => tracing::info!("shutting down"),
        Some(done) = servers.join_next() => {
            if let Ok(Err(e)) = done { return Err(e); }
        }
    }
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    Ok(())
}
