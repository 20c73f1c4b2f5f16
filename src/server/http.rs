//! The small HTTP/1.1 server the Docker plugin API and the admin API share.
//!
//! Each connection runs in its own task, so a slow or broken client stalls only itself:
//! headers must arrive within [`HttpLimits::header_timeout`] and the body within the same time
//! again (else 408), a body larger than [`HttpLimits::max_body`] is refused with 413 (before
//! any of it is read when its declared length is over the limit), a request that takes
//! longer than [`HttpLimits::request_timeout`] gets 503, and at most
//! [`HttpLimits::max_connections`] connections are served at once (the rest wait in the
//! listen backlog). Handlers see the whole body as bytes and return a [`Reply`].
//!
//! Two exceptions stream instead, for archives of any size: a request whose
//! `Content-Type` is [`TAR`] is not collected (nor bound by `max_body`): its handler reads
//! it from [`Request::upload`]; and a [`Reply`] with a [`Download`] sends what its producer
//! puts in the channel, chunked, as it comes. A producer that fails sends an error, which
//! ends the response without its final chunk, so the client sees it cut off.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Body, Frame, Incoming};
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

/// The content type whose request bodies are streamed to the handler.
pub const TAR: &str = "application/x-tar";

/// A request as handlers see it.
pub struct Request {
    pub method: hyper::Method,
    pub uri: hyper::Uri,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    /// The body, unread, of a [`TAR`] request (`body` is then empty).
    pub upload: Option<Incoming>,
}

/// The chunks of a streamed reply body, as its producer sends them.
pub type Chunks = tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>;

/// A streamed reply body. It is taken once, when the reply is sent; clones share it.
#[derive(Clone)]
pub struct Download(Arc<Mutex<Option<Chunks>>>);

impl Download {
    pub fn new(chunks: Chunks) -> Self {
        Self(Arc::new(Mutex::new(Some(chunks))))
    }

    fn take(&self) -> Option<Chunks> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Download(..)")
    }
}

impl PartialEq for Download {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Download {}

/// A response: status, content type, body and any extra headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra headers (lower-case names), e.g. `www-authenticate` on a 401.
    pub headers: Vec<(&'static str, String)>,
    /// A streamed body, sent instead of `body`.
    pub download: Option<Download>,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
            download: None,
        }
    }

    /// A 200 reply whose body `chunks` streams.
    pub fn streamed(content_type: &'static str, chunks: Chunks) -> Self {
        let mut reply = Self::new(200, content_type, Vec::new());
        reply.download = Some(Download::new(chunks));
        reply
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
                    let mut response = hyper::Response::new(body_of(&reply));
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

type ReplyBody = BoxBody<Bytes, std::io::Error>;

fn body_of(reply: &Reply) -> ReplyBody {
    match reply.download.as_ref().and_then(Download::take) {
        Some(chunks) => {
            let frames = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(chunks),
                |chunk| chunk.map(Frame::data),
            );
            BodyExt::boxed(StreamBody::new(frames))
        }
        None => Full::new(Bytes::from(reply.body.clone()))
            .map_err(|never| match never {})
            .boxed(),
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
    let tar = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(TAR.as_bytes()));
    if tar {
        let request = Request {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body: Bytes::new(),
            upload: Some(body),
        };
        return run_handler(request, handle, limits, on_error).await;
    }
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
        upload: None,
    };
    run_handler(request, handle, limits, on_error).await
}

async fn run_handler<H, HF>(
    request: Request,
    handle: &H,
    limits: HttpLimits,
    on_error: fn(u16, &str) -> Reply,
) -> Reply
where
    H: Fn(Request) -> HF,
    HF: Future<Output = Reply>,
{
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
