//! The one way a front-end calls the engine from async code. Engine calls block (the store
//! commits with `fsync`, the host mounts and walks trees), so they run on tokio's blocking
//! pool, never on the async threads that serve the sockets.

use std::sync::Arc;

use tokio::task::JoinError;

use crate::engine::VolumeService;

/// Runs `call` on the engine on the blocking pool and waits for it. `Err` only when the call
/// panicked (or the runtime is shutting down); each front-end maps that to its own error.
pub async fn call_engine<T: Send + 'static>(
    engine: &Arc<dyn VolumeService>,
    call: impl FnOnce(&dyn VolumeService) -> T + Send + 'static,
) -> Result<T, JoinError> {
    let engine = Arc::clone(engine);
    tokio::task::spawn_blocking(move || call(engine.as_ref())).await
}
