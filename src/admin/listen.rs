//! The admin API's listeners: the unix socket, and the TCP addresses `listen.admin_tcp`
//! (the whole API, behind the token) and `listen.metrics_tcp` (`/metrics` and `/healthz`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Admin, LIMITS, configured_token, server_error};
use crate::config::Config;
use crate::engine::VolumeService;
use crate::server::http::{Reply, Request};
use crate::server::{ServeError, Servers, bind_socket, shutdown_future};

/// Starts the admin API on its unix socket and, if configured, on TCP.
pub fn start(
    config: &Config,
    engine: &Arc<dyn VolumeService>,
    mode: u32,
    stop: &watch::Receiver<bool>,
    servers: &mut Servers,
) -> Result<(), ServeError> {
    let token = configured_token(config)?;
    let admin = Admin::with_config(
        Arc::clone(engine),
        token.clone(),
        config.mesos.clone(),
        &config.csi.driver_name,
    );
    if !config.listen.admin.is_empty() {
        // Without a token the socket's mode is the only guard: keep it root's alone.
        let mode = if token.is_some() { mode } else { 0o600 };
        let socket = Arc::new(bind_socket(&config.listen.admin, mode)?);
        let admin = Arc::clone(&admin);
        let stop = stop.clone();
        tracing::info!(socket = %config.listen.admin, token = token.is_some(), "admin API listening");
        servers.spawn(async move {
            let accept = move || {
                let socket = Arc::clone(&socket);
                async move { socket.listener.accept().await.map(|(s, _)| s) }
            };
            let handle = move |req| Arc::clone(&admin).handle(req);
            crate::server::http::serve(accept, handle, LIMITS, server_error, shutdown_future(stop))
                .await;
            Ok(())
        });
    }
    if let Some(address) = &config.listen.admin_tcp {
        if token.is_none() {
            return Err(ServeError::Config(
                "listen.admin_tcp: the admin API on TCP needs admin.token or admin.token_file"
                    .into(),
            ));
        }
        let listener = bind_tcp(address)?;
        if listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
            tracing::warn!(address = %address, "the admin API listens on a non-loopback address without TLS: its token crosses the network in clear text");
        }
        tracing::info!(address = %address, "admin API listening on TCP");
        let admin = Arc::clone(&admin);
        serve_tcp(listener, stop, servers, move |req| {
            Arc::clone(&admin).handle(req)
        });
    }
    if let Some(address) = &config.listen.metrics_tcp {
        let listener = bind_tcp(address)?;
        tracing::info!(address = %address, "metrics and health listening on TCP");
        let admin = Arc::clone(&admin);
        serve_tcp(listener, stop, servers, move |req| {
            Arc::clone(&admin).handle_metrics_only(req)
        });
    }
    Ok(())
}

/// Serves `handle` on a bound TCP listener until `stop`.
fn serve_tcp<H, HF>(
    listener: tokio::net::TcpListener,
    stop: &watch::Receiver<bool>,
    servers: &mut Servers,
    handle: H,
) where
    H: Fn(Request) -> HF + Clone + Send + Sync + 'static,
    HF: std::future::Future<Output = Reply> + Send + 'static,
{
    let listener = Arc::new(listener);
    let stop = stop.clone();
    servers.spawn(async move {
        let accept = move || {
            let listener = Arc::clone(&listener);
            async move { listener.accept().await.map(|(s, _)| s) }
        };
        crate::server::http::serve(accept, handle, LIMITS, server_error, shutdown_future(stop))
            .await;
        Ok(())
    });
}

fn bind_tcp(address: &str) -> Result<tokio::net::TcpListener, ServeError> {
    let io = |what| {
        move |source| ServeError::Io {
            what,
            path: PathBuf::from(address),
            source,
        }
    };
    let std_listener =
        std::net::TcpListener::bind(address).map_err(io("binding the admin TCP address"))?;
    std_listener
        .set_nonblocking(true)
        .map_err(io("configuring the admin TCP listener"))?;
    tokio::net::TcpListener::from_std(std_listener)
        .map_err(io("registering the admin TCP listener"))
}
