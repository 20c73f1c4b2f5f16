//! Calls in flight: the deadlines berth answers by before dockerd gives up, and the release
//! of a mount reference whose answer never reached dockerd.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::VolumeService;
use crate::engine::types::{PublishTarget, VolumeName};
use crate::server::http::Reply;

use super::CALLER;
use super::request::{Call, Failure};

/// How long a call may take before berth answers that it is still running: a little less
/// than dockerd waits (two minutes for Create and Mount, one for the rest), so dockerd shows
/// berth's message rather than a bare timeout.
#[derive(Clone, Copy, Debug)]
pub(super) struct Deadlines {
    pub(super) create_and_mount: Duration,
    pub(super) other: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            create_and_mount: Duration::from_secs(110),
            other: Duration::from_secs(50),
        }
    }
}

impl Deadlines {
    pub(super) fn of(&self, call: &Call) -> Duration {
        match call {
            Call::Create(_) | Call::Mount(..) => self.create_and_mount,
            Call::Activate
            | Call::Capabilities
            | Call::Remove(_)
            | Call::Unmount(..)
            | Call::Path(_)
            | Call::Get(_)
            | Call::List => self.other,
        }
    }
}

/// A finished call: the reply, and the mount reference it took (if it took a new one).
pub(super) struct Done {
    pub(super) reply: Reply,
    pub(super) taken: Option<(VolumeName, PublishTarget)>,
}

/// An engine call in flight. If it is dropped before its answer was handed back (the
/// deadline passed, or the client went away) and the call turns out to have taken a mount
/// reference, the reference is released again: dockerd treats that Mount as failed and will
/// never send the Unmount that would release it.
pub(super) struct InFlight {
    pub(super) task: Option<tokio::task::JoinHandle<Result<Done, Failure>>>,
    pub(super) engine: Arc<dyn VolumeService>,
}

impl InFlight {
    /// The call's outcome, or `None` if it did not finish within `deadline`.
    pub(super) async fn wait(
        &mut self,
        deadline: Duration,
    ) -> Option<Result<Result<Done, Failure>, tokio::task::JoinError>> {
        let task = self.task.as_mut()?;
        let joined = tokio::time::timeout(deadline, task).await.ok()?;
        self.task = None;
        Some(joined)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = Arc::clone(&self.engine);
        runtime.spawn(async move {
            let Ok(Ok(Done {
                taken: Some((name, holder)),
                ..
            })) = task.await
            else {
                return;
            };
            tracing::warn!(volume = %name, holder = %holder, "releasing a mount whose answer never reached the caller");
            let released = crate::server::call_engine(&engine, move |e| {
                e.unpublish(CALLER, &name, &holder)
            })
            .await;
            if let Ok(Err(e)) = released {
                tracing::warn!(error = %e, "releasing an undelivered mount failed");
            }
        });
    }
}
