//! Front-end (being written).

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::daemon::{DaemonError, Servers};
use crate::engine::VolumeService;

/// Starts this front-end's server, if configured.
pub fn start(
    _config: &Config,
    _engine: &Arc<dyn VolumeService>,
    _mode: u32,
    _stop: &watch::Receiver<bool>,
    _servers: &mut Servers,
) -> Result<(), DaemonError> {
    Ok(())
}
