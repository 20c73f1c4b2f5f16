//! The admin API's archive routes, streamed both ways (neither body is held in memory):
//! - `GET /v1/volumes/NAME/export`: volume or snapshot NAME as a tar archive
//!   (`application/x-tar`). Headers say what was read: `x-berth-consistent: true|false`,
//!   `x-berth-note` (why not consistent), `x-berth-data-bytes` (the data's size, for a
//!   progress bar). A failure after the first byte cuts the response off (no final chunk).
//! - `POST /v1/volumes/NAME/import[?size=SIZE&pool=POOL&frontend=csi|docker|mesos]`, the
//!   archive as an `application/x-tar` body: a new volume holding it, sized from `size` or
//!   from the archive, owned by `frontend` (default: Docker's, like every volume an
//!   operator makes).

use std::io::{self, Read, Write};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::{ADMIN, Admin, Query, bad_request, engine_error, error_reply};
use crate::engine::transfer::{ExportPlan, ImportRequest};
use crate::engine::types::{Owner, OwnerFrontend, VolumeName, VolumeSpec, parse_size};
use crate::engine::{EngineError, VolumeService};
use crate::server::http::{Reply, TAR};

/// Bytes an export hands to the connection at a time.
const CHUNK: usize = 256 << 10;
/// Chunks in flight between the engine and the connection, each way.
const IN_FLIGHT: usize = 8;

/// Sends what the export writes to the connection, in [`CHUNK`]s.
struct ChannelWriter {
    chunks: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads an upload the connection task forwards chunk by chunk.
struct ChannelReader {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Forwards the frames of `body` to `chunks` until it ends or the reader is gone.
async fn forward(mut body: Incoming, chunks: mpsc::Sender<io::Result<Bytes>>) {
    while let Some(frame) = body.frame().await {
        let chunk = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => Ok(data),
                Err(_) => continue, // trailers
            },
            Err(e) => Err(io::Error::other(format!("reading the upload: {e}"))),
        };
        let failed = chunk.is_err();
        if chunks.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

fn parse_name(raw: &str) -> Result<VolumeName, Reply> {
    VolumeName::parse(raw).map_err(|e| engine_error(&EngineError::Input(e)))
}

/// A header value from free text: visible ASCII only.
fn header_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

impl Admin {
    pub(super) async fn export(&self, id: &str, query: &Query) -> Reply {
        if let Err(e) = query.only(&[]) {
            return bad_request(&e);
        }
        let name = match parse_name(id) {
            Ok(n) => n,
            Err(reply) => return reply,
        };
        let (plan_tx, plan_rx) = oneshot::channel::<ExportPlan>();
        let (chunks_tx, chunks_rx) = mpsc::channel(IN_FLIGHT);
        let engine = std::sync::Arc::clone(&self.engine);
        let task = tokio::task::spawn_blocking(move || {
            let mut plan_tx = Some(plan_tx);
            let mut started = |plan: &ExportPlan| {
                if let Some(tx) = plan_tx.take() {
                    let _ = tx.send(plan.clone());
                }
            };
            let mut out = ChannelWriter {
                chunks: chunks_tx.clone(),
                buffer: Vec::with_capacity(CHUNK),
            };
            let result = engine
                .export(ADMIN, &name, &mut started, &mut out)
                .and_then(|stats| {
                    out.flush().map(|()| stats).map_err(|e| EngineError::Host {
                        volume: Some(name.to_string()),
                        operation: "sending the archive",
                        source: crate::host::HostError::io("write", std::path::Path::new("-"), e),
                    })
                });
            if let Err(e) = &result {
                // Cuts the response off, so the client cannot take it for whole.
                let _ = chunks_tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
            result
        });
        match plan_rx.await {
            Ok(plan) => {
                let mut reply = Reply::streamed(TAR, chunks_rx)
                    .with_header("x-berth-consistent", plan.consistent.to_string())
                    .with_header("x-berth-data-bytes", plan.bytes.to_string())
                    .with_header("x-berth-source", plan.source);
                if let Some(note) = &plan.note {
                    reply = reply.with_header("x-berth-note", header_text(note));
                }
                reply
            }
            // The export failed before its first byte.
            Err(_) => match task.await {
                Ok(Err(e)) => engine_error(&e),
                Ok(Ok(_)) => error_reply(500, "internal", "the export ended before it began"),
                Err(e) => {
                    tracing::error!(error = %e, "an export's engine call panicked");
                    error_reply(
                        500,
                        "internal",
                        "the export failed unexpectedly; see the log",
                    )
                }
            },
        }
    }

    pub(super) async fn import(&self, id: &str, query: &Query, upload: Option<Incoming>) -> Reply {
        let Some(upload) = upload else {
            return bad_request(&format!(
                "send the archive as the request body with Content-Type: {TAR}"
            ));
        };
        let request = match import_request(id, query) {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        let (chunks_tx, chunks_rx) = mpsc::channel(IN_FLIGHT);
        let forwarding = tokio::spawn(forward(upload, chunks_tx));
        let imported = self
            .blocking(move |engine: &dyn VolumeService| {
                let mut input = ChannelReader {
                    chunks: chunks_rx,
                    current: Bytes::new(),
                };
                engine.import(ADMIN, request, &mut input)
            })
            .await;
        forwarding.abort();
        match imported {
            Ok(Ok(v)) => Reply::json(200, &super::views::VolumeView::new(&v, None)),
            Ok(Err(e)) => engine_error(&e),
            Err(reply) => reply,
        }
    }
}

fn import_request(id: &str, query: &Query) -> Result<ImportRequest, Reply> {
    query
        .only(&["size", "pool", "frontend"])
        .map_err(|e| bad_request(&e))?;
    let name = parse_name(id)?;
    let input = |e| engine_error(&EngineError::Input(e));
    let size = query
        .get("size")
        .map(parse_size)
        .transpose()
        .map_err(input)?;
    let frontend = query
        .get("frontend")
        .map(str::parse::<OwnerFrontend>)
        .transpose()
        .map_err(input)?;
    Ok(ImportRequest {
        name,
        spec: VolumeSpec {
            size,
            pool: query.get("pool").map(str::to_string),
            ..VolumeSpec::default()
        },
        owner: Owner::default(),
        frontend,
    })
}
