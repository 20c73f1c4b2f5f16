//! Why a hook request was refused or failed, and the HTTP reply each refusal becomes.

use crate::engine::EngineError;
use crate::mesos::api::ErrorReply;
use crate::mesos::validate::Violation;
use crate::server::http::Reply;
use crate::server::status::admin_status;

use super::error_reply;

/// Why a hook request was refused or failed.
#[derive(Debug)]
pub(super) enum HookError {
    /// The request itself is wrong: an id, a path, a field that does not apply.
    BadRequest(String),
    /// The definition breaks Marathon's rules.
    Definition(Vec<Violation>),
    /// A path the hook will not mount at.
    Forbidden(String),
    /// The definition changes what Marathon cannot change after deploy.
    Changed(String),
    /// Looking up the task's user failed.
    Io(String),
    /// The engine refused an operation (it has counted that).
    Engine(EngineError),
    /// The engine refused a lookup, which it does not count.
    Lookup(EngineError),
}

impl From<EngineError> for HookError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl HookError {
    /// The error kind of a refusal the engine has not counted (made here, or a lookup).
    pub(super) fn uncounted_kind(&self) -> Option<&'static str> {
        match self {
            Self::BadRequest(_) => Some("invalid_input"),
            Self::Definition(_) => Some("invalid_definition"),
            Self::Forbidden(_) => Some("forbidden"),
            Self::Changed(_) => Some("immutable_after_deploy"),
            Self::Io(_) => Some("host"),
            Self::Lookup(e) => Some(e.kind()),
            Self::Engine(_) => None,
        }
    }

    pub(super) fn into_reply(self) -> Reply {
        match self {
            Self::BadRequest(message) => error_reply(400, "invalid_input", message),
            Self::Definition(violations) => Reply::json(
                422,
                &ErrorReply {
                    error: format!(
                        "the definition breaks {} of Marathon's rules for volumes",
                        violations.len()
                    ),
                    kind: "invalid_definition".into(),
                    violations,
                },
            ),
            Self::Forbidden(message) => error_reply(403, "forbidden", message),
            Self::Changed(message) => error_reply(409, "immutable_after_deploy", message),
            Self::Io(message) => error_reply(500, "host", message),
            Self::Engine(e) | Self::Lookup(e) => {
                error_reply(admin_status(&e), e.kind(), e.to_string())
            }
        }
    }
}
