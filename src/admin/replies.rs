//! The admin API's error replies: one JSON shape `{error, kind}`, statuses from the shared
//! status map, and the 405 for a method a route does not take.

use crate::engine::EngineError;
use crate::server::http::{Reply, Request};
use crate::server::status::admin_status;

use super::views::ErrorView;

pub(super) fn engine_error(e: &EngineError) -> Reply {
    error_reply(admin_status(e), e.kind(), &e.to_string())
}

pub(super) fn error_reply(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &ErrorView {
            error: message.to_string(),
            kind: kind.to_string(),
        },
    )
}

pub(super) fn bad_request(message: &str) -> Reply {
    tracing::debug!(error = message, "refused a malformed admin request");
    error_reply(400, "invalid_input", message)
}

/// For [`crate::server::http::serve`]: errors the server produces before a handler runs.
pub(super) fn server_error(status: u16, message: &str) -> Reply {
    error_reply(status, "http", message)
}

pub(super) fn method_not_allowed(allowed: &'static str) -> Reply {
    error_reply(
        405,
        "method_not_allowed",
        &format!("this route takes {allowed}"),
    )
    .with_header("allow", allowed)
}

/// `None` when the request's method is one of `allowed` (`"GET, HEAD"`), else a 405.
pub(super) fn check_method(req: &Request, allowed: &'static str) -> Option<Reply> {
    if allowed.split(", ").any(|m| m == req.method.as_str()) {
        None
    } else {
        Some(method_not_allowed(allowed))
    }
}
