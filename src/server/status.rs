//! The admin socket's one HTTP status map: the admin API (`/v1/volumes`, Marathon's task
//! API) and the Mesos hook (`/v1/mesos/...`) answer on the same socket, so one engine error
//! gets one status there, whichever path was asked. Conflicts with the volume's state
//! (busy with another operation, attached, being deleted) are 409, as a REST client expects,
//! to be retried or resolved; input berth cannot honour is 422 (malformed input is 400).
//! The Docker plugin socket speaks Docker's protocol and has its own map.

use crate::engine::EngineError;

/// The HTTP status of each engine error on the admin socket.
pub fn admin_status(e: &EngineError) -> u16 {
    match e {
        EngineError::Input(_) => 400,
        EngineError::Unsupported { .. } => 422,
        EngineError::HeldByOther { .. } => 403,
        EngineError::NotFound { .. } | EngineError::SnapshotNotFound { .. } => 404,
        EngineError::AlreadyExists { .. }
        | EngineError::SnapshotExists { .. }
        | EngineError::Busy { .. }
        | EngineError::InUse { .. }
        | EngineError::WrongPhase { .. }
        | EngineError::NotPublishedAt { .. }
        | EngineError::TargetConflict { .. } => 409,
        EngineError::NoCapacity { .. } | EngineError::TooManyVolumes { .. } => 507,
        EngineError::PoolUnusable { .. } | EngineError::Host { .. } | EngineError::Store { .. } => {
            500
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::InputError;

    #[test]
    fn conflicts_are_409_and_unsupported_input_422_as_the_readme_says() {
        let v = || "db".to_string();
        let cases = [
            (EngineError::Busy { volume: v() }, 409),
            (
                EngineError::InUse {
                    volume: v(),
                    targets: "/t".into(),
                },
                409,
            ),
            (
                EngineError::WrongPhase {
                    volume: v(),
                    phase: "deleted",
                },
                409,
            ),
            (
                EngineError::Unsupported {
                    volume: v(),
                    reason: "no".into(),
                },
                422,
            ),
            (
                EngineError::Input(InputError::Invalid {
                    field: "size".into(),
                    reason: "no".into(),
                }),
                400,
            ),
            (EngineError::NotFound { volume: v() }, 404),
        ];
        for (error, status) in cases {
            assert_eq!(admin_status(&error), status, "{error}");
        }
    }
}
