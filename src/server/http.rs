//! The small HTTP/1.1 server the Docker plugin API and the admin API share.
//!
//! Each connection runs in its own task, so a slow or broken client stalls only itself:
//! headers must arrive within [`HttpLimits::header_timeout`] and the body within the same time
//! again (else 408), a body larger than [`HttpLimits::max_body`] is refused with 413 (before
//! any of it is read when its declared length is over the limit), a request that takes
//! longer than [`HttpLimits::request_timeout`] gets 503, and at most
//! [`HttpLimits::max_connections`] connections are served at once (the rest wait in the
//! listen backlog). Handlers see the whole body as bytes and return a [`Reply`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

/// Limits applied to every connection and request.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_body: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            header_timeout: Duration::from_secs(10),
            // Docker gives Create and Mount two minutes; a wipe of a large volume may take
            // longer, which is why the admin API sets its own.
            request_timeout: Duration::from_secs(110),
            max_connections: 256,
        }
    }
}

/// A request as handlers see it.
pub struct Request {
    pub method: hyper::Method,
    pub uri: hyper::Uri,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// A response: status, content type, body and any extra headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra headers (lower-case names), e.g. `www-authenticate` on a 401.
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header; `name` is lower-case (`www-authenticate`).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value)
            .unwrap_or_else(|e| format!("{{\"error\":\"encoding the reply: {e}\"}}").into_bytes());
        Self::new(status, "application/json", body)
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(
            status,
            "text/plain; charset=utf-8",
            body.into().into_bytes(),
        )
    }
}

/// Serves connections from `accept` until `stop` resolves. `accept` yields connected
/// streams (unix or TCP); `handle` answers each request.
pub async fn serve<S, A, AF, H, HF>(
    mut accept: A,
    handle: H,
    limits: HttpLimits,
    on_error: fn(u16, &str) -> Reply,
    stop: impl Future<Output = ()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: FnMut() -> AF,
    AF: Future<Output = std::io::Result<S>>,
    H: Fn(Request) -> HF + Clone + Send + Sync + 'static,
    HF: Future<Output = Reply> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(stop);
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let handle = handle.clone();
                async move {
                    let reply = answer(req, &handle, limits, on_error).await;
                    let mut response = hyper::Response::new(Full::new(Bytes::from(reply.body)));
                    *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
                        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(reply.content_type),
                    );
                    for (name, value) in reply.headers {
                        match (
                            hyper::header::HeaderName::from_bytes(name.as_bytes()),
                            hyper::header::HeaderValue::from_str(&value),
                        ) {
                            (Ok(name), Ok(value)) => {
                                response.headers_mut().append(name, value);
                            }
                            _ => tracing::warn!(header = name, "dropping a malformed reply header"),
                        }
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn answer<H, HF>(
    req: hyper::Request<Incoming>,
    handle: &H,
    limits: HttpLimits,
    on_error: fn(u16, &str) -> Reply,
) -> Reply
where
    H: Fn(Request) -> HF,
    HF: Future<Output = Reply>,
{
    let (parts, body) = req.into_parts();
    let too_large = || {
        on_error(
            413,
            &format!("the request body is larger than {} bytes", limits.max_body),
        )
    };
    // A declared Content-Length over the limit is refused before any of the body is read.
    if body.size_hint().lower() > limits.max_body as u64 {
        return too_large();
    }
    // The body gets as long as the headers did: a client that stops sending mid-body would
    // otherwise hold its connection slot for ever.
    let collected = tokio::time::timeout(
        limits.header_timeout,
        Limited::new(body, limits.max_body).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => return on_error(400, &format!("reading the request body: {e}")),
        Err(_) => {
            return on_error(
                408,
                &format!(
                    "the request body did not arrive within {} s",
                    limits.header_timeout.as_secs()
                ),
            );
        }
    };
    let request = Request {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    match tokio::time::timeout(limits.request_timeout, handle(request)).await {
        Ok(reply) => reply,
        Err(_) => on_error(
            503,
            &format!(
                "the request took longer than {} s; it may still complete, retry to see its result",
                limits.request_timeout.as_secs()
            ),
        ),
    }
}
