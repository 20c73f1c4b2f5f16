//! The CSI socket answers every conforming gRPC client, whatever `:authority` it sends.
//!
//! On a unix socket the authority names nothing, and clients fill it in differently:
//! grpc-go since 2022 sends `localhost`, but grpc-go before that (kubelets before 1.26) sends
//! the socket's path (`/run/berth/csi.sock`), and grpc-core (Python `grpcio`, C++, Java; Mesos'
//! CSI client) sends it percent-encoded (`%2Frun%2Fberth%2Fcsi.sock`); some send it empty.
//! None but `localhost` is a valid URI authority, and `h2`'s server resets such a stream with
//! PROTOCOL_ERROR while decoding its headers, before hyper, tower or tonic see the request.
//!
//! Why a connection layer: `h2`, `hyper` and `tonic` are used as published, and no hook of
//! theirs runs before that check. The only place left is the byte stream between the accepted
//! socket and the server, so [`AuthorityRewriting`] sits there and replaces an `:authority`
//! that is not a valid authority with `localhost`. Everything else reaches the server as the
//! client sent it, so the server still judges every other part of the protocol itself.
//!
//! How: [`AuthorityRewriter`] follows the client-to-server half of the connection: the
//! client preface, then frames (a 9-byte header, then the payload). Frames other than
//! HEADERS and CONTINUATION are forwarded byte for byte. A header block (a HEADERS frame and
//! its CONTINUATION frames, which HTTP/2 forbids interleaving with anything) is gathered,
//! decoded with `loona-hpack` (Huffman strings, and one dynamic table for the whole
//! connection, since a later block may index what an earlier one added), and re-encoded with
//! every field a literal that is not indexed. That re-encoding leaves the server's dynamic
//! table empty, so the encoder has no state to keep in step with the server and its
//! SETTINGS_HEADER_TABLE_SIZE never constrains it. The decoder's table follows the client's
//! size updates up to the server's limit, the protocol's default 4096 (tonic's server never
//! changes it); the client's own SETTINGS_HEADER_TABLE_SIZE governs the server's encoder, on
//! the server-to-client half, which passes untouched. The block goes out as a HEADERS frame
//! (with the client's END_STREAM flag and PRIORITY fields, without padding, which carries
//! nothing) and CONTINUATION frames, none larger than 16 KiB, the frame size every peer takes.
//! A stream that does not start with the HTTP/2 preface is passed through untouched, for the
//! server to refuse.
//!
//! A malformed header block (bad padding, an interrupted block, HPACK the decoder refuses)
//! ends the connection with an error: once a block cannot be decoded, later ones cannot be
//! either, and forwarding them could hand the server headers the client never sent.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::Decoder;
use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// What every HTTP/2 client sends first (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// A HEADERS frame's priority fields: stream dependency (4 bytes) and weight (1 byte).
const PRIORITY_LEN: usize = 5;

/// The largest frame payload every HTTP/2 peer accepts (the floor of SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The largest header block gathered; far above the header list hyper's server accepts.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// The HPACK dynamic table size the server allows: the protocol's default.
const SERVER_HEADER_TABLE_SIZE: usize = 4096;

/// What an invalid authority becomes.
const LOCALHOST: &[u8] = b"localhost";

/// Why a connection was ended.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(
        "the HEADERS frame of stream {stream} has {padding} bytes of padding in a {length}-byte payload"
    )]
    BadPadding {
        stream: u32,
        padding: usize,
        length: usize,
    },
    #[error(
        "the header block of stream {stream} was interrupted by a frame of type {frame_type:#x}"
    )]
    Interrupted { stream: u32, frame_type: u8 },
    #[error("a CONTINUATION frame on stream {stream} continues no header block")]
    StrayContinuation { stream: u32 },
    #[error("the header block of stream {stream} exceeds {MAX_HEADER_BLOCK} bytes")]
    TooLarge { stream: u32 },
    #[error("the header block of stream {stream} is not valid HPACK: {source}")]
    Hpack {
        stream: u32,
        #[source]
        source: DecoderError,
    },
}

/// A frame's 9-byte header, parsed.
#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    length: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(raw: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            length: usize::from(raw[0]) << 16 | usize::from(raw[1]) << 8 | usize::from(raw[2]),
            kind: raw[3],
            flags: raw[4],
            stream: u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]) & 0x7fff_ffff,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let length = u32::try_from(self.length).expect("frames written are at most 16 KiB");
        out.extend_from_slice(&length.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

/// Where the rewriter is in the client's byte stream.
#[derive(Debug)]
enum Stage {
    /// Matching the client preface; `matched` bytes of it seen so far.
    Preface { matched: usize },
    /// Gathering a frame header.
    FrameHeader {
        raw: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Forwarding the payload of a frame that carries no headers.
    Forward { remaining: usize },
    /// Gathering the payload of a HEADERS or CONTINUATION frame.
    HeaderPayload {
        header: FrameHeader,
        payload: Vec<u8>,
    },
    /// Not HTTP/2: everything goes through as it is.
    Passthrough,
}

impl Stage {
    fn next_frame() -> Self {
        Self::FrameHeader {
            raw: [0; FRAME_HEADER_LEN],
            have: 0,
        }
    }
}

/// A header block whose END_HEADERS has not come yet.
#[derive(Debug)]
struct OpenBlock {
    stream: u32,
    /// The HEADERS frame's END_STREAM and PRIORITY flags.
    flags: u8,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

/// The client-to-server half of one connection, with invalid `:authority` values rewritten.
/// Feed it the bytes as they arrive, in any pieces.
pub struct AuthorityRewriter {
    stage: Stage,
    open: Option<OpenBlock>,
    decoder: Decoder<'static>,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityRewriter {
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(SERVER_HEADER_TABLE_SIZE);
        Self {
            stage: Stage::Preface { matched: 0 },
            open: None,
            decoder,
        }
    }

    /// Consumes `input` and appends what the server should read to `out`. Bytes of an
    /// unfinished frame header or header block are kept for the next call.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        while !input.is_empty() {
            match &mut self.stage {
                Stage::Passthrough => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                Stage::Preface { matched } => {
                    let n = (PREFACE.len() - *matched).min(input.len());
                    let (taken, rest) = input.split_at(n);
                    out.extend_from_slice(taken);
                    input = rest;
                    if taken != &PREFACE[*matched..*matched + n] {
                        self.stage = Stage::Passthrough;
                    } else if *matched + n == PREFACE.len() {
                        self.stage = Stage::next_frame();
                    } else {
                        *matched += n;
                    }
                }
                Stage::Forward { remaining } => {
                    let n = (*remaining).min(input.len());
                    let (taken, rest) = input.split_at(n);
                    out.extend_from_slice(taken);
                    input = rest;
                    *remaining -= n;
                    if *remaining == 0 {
                        self.stage = Stage::next_frame();
                    }
                }
                Stage::FrameHeader { raw, have } => {
                    let n = (FRAME_HEADER_LEN - *have).min(input.len());
                    raw[*have..*have + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    *have += n;
                    if *have == FRAME_HEADER_LEN {
                        let raw = *raw;
                        self.start_frame(&raw, out)?;
                    }
                }
                Stage::HeaderPayload { header, payload } => {
                    let n = (header.length - payload.len()).min(input.len());
                    payload.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if payload.len() == header.length {
                        let header = *header;
                        let payload = std::mem::take(payload);
                        self.stage = Stage::next_frame();
                        self.header_frame(header, &payload, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A frame header is complete: decide what to do with its payload.
    fn start_frame(
        &mut self,
        raw: &[u8; FRAME_HEADER_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), AuthorityError> {
        let header = FrameHeader::parse(raw);
        if header.kind == HEADERS || header.kind == CONTINUATION {
            let gathered = self.open.as_ref().map_or(0, |open| open.fragment.len());
            if gathered + header.length > MAX_HEADER_BLOCK {
                return Err(AuthorityError::TooLarge {
                    stream: header.stream,
                });
            }
            if header.length == 0 {
                self.stage = Stage::next_frame();
                return self.header_frame(header, &[], out);
            }
            self.stage = Stage::HeaderPayload {
                header,
                payload: Vec::with_capacity(header.length),
            };
            return Ok(());
        }
        if let Some(open) = &self.open {
            return Err(AuthorityError::Interrupted {
                stream: open.stream,
                frame_type: header.kind,
            });
        }
        out.extend_from_slice(raw);
        self.stage = if header.length == 0 {
            Stage::next_frame()
        } else {
            Stage::Forward {
                remaining: header.length,
            }
        };
        Ok(())
    }

    /// A whole HEADERS or CONTINUATION frame: add it to the open block, and send the block
    /// on once it ends.
    fn header_frame(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AuthorityError> {
        if header.kind == HEADERS {
            if let Some(open) = &self.open {
                return Err(AuthorityError::Interrupted {
                    stream: open.stream,
                    frame_type: HEADERS,
                });
            }
            let (priority, fragment) = split_headers_payload(&header, payload)?;
            self.open = Some(OpenBlock {
                stream: header.stream,
                flags: header.flags & (END_STREAM | PRIORITY),
                priority,
                fragment: fragment.to_vec(),
            });
        } else {
            match &mut self.open {
                Some(open) if open.stream == header.stream => {
                    open.fragment.extend_from_slice(payload);
                }
                _ => {
                    return Err(AuthorityError::StrayContinuation {
                        stream: header.stream,
                    });
                }
            }
        }
        if header.flags & END_HEADERS != 0
            && let Some(open) = self.open.take()
        {
            self.send_block(open, out)?;
        }
        Ok(())
    }

    /// Decodes a complete header block and writes it re-encoded, as HEADERS and
    /// CONTINUATION frames.
    fn send_block(&mut self, open: OpenBlock, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let mut block = Vec::with_capacity(open.fragment.len() + LOCALHOST.len());
        self.decoder
            .decode_with_cb(&open.fragment, |name, value| {
                let value: &[u8] = if &*name == b":authority" && !is_valid_authority(&value) {
                    LOCALHOST
                } else {
                    &value
                };
                put_literal(&mut block, &name, value);
            })
            .map_err(|source| AuthorityError::Hpack {
                stream: open.stream,
                source,
            })?;

        let priority_len = open.priority.map_or(0, |p| p.len());
        let (first, mut rest) = block.split_at((MAX_FRAME_PAYLOAD - priority_len).min(block.len()));
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        FrameHeader {
            length: priority_len + first.len(),
            kind: HEADERS,
            flags: open.flags | end,
            stream: open.stream,
        }
        .write(out);
        if let Some(priority) = open.priority {
            out.extend_from_slice(&priority);
        }
        out.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(MAX_FRAME_PAYLOAD.min(rest.len()));
            FrameHeader {
                length: chunk.len(),
                kind: CONTINUATION,
                flags: if tail.is_empty() { END_HEADERS } else { 0 },
                stream: open.stream,
            }
            .write(out);
            out.extend_from_slice(chunk);
            rest = tail;
        }
        Ok(())
    }
}

/// A HEADERS payload's priority fields and header block fragment, without the padding.
fn split_headers_payload<'a>(
    header: &FrameHeader,
    payload: &'a [u8],
) -> Result<(Option<[u8; PRIORITY_LEN]>, &'a [u8]), AuthorityError> {
    let bad_padding = |padding| AuthorityError::BadPadding {
        stream: header.stream,
        padding,
        length: payload.len(),
    };
    let mut rest = payload;
    let mut padding = 0;
    if header.flags & PADDED != 0 {
        let (&pad_length, tail) = rest.split_first().ok_or(bad_padding(1))?;
        padding = usize::from(pad_length);
        rest = tail;
    }
    let mut priority = None;
    if header.flags & PRIORITY != 0 {
        if rest.len() < PRIORITY_LEN {
            return Err(bad_padding(padding));
        }
        let (fields, tail) = rest.split_at(PRIORITY_LEN);
        priority = Some(fields.try_into().expect("split at PRIORITY_LEN"));
        rest = tail;
    }
    if padding > rest.len() {
        return Err(bad_padding(padding));
    }
    Ok((priority, &rest[..rest.len() - padding]))
}

/// Whether `h2` takes `value` as an authority (it parses it exactly so).
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Appends a field as a literal without indexing, with a literal name (RFC 7541 6.2.2),
/// both strings raw (not Huffman-coded).
fn put_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        put_integer(out, 0x00, 7, string.len());
        out.extend_from_slice(string);
    }
}

/// Appends an HPACK integer with a `prefix_bits`-bit prefix after the bits in `first`
/// (RFC 7541 5.1).
fn put_integer(out: &mut Vec<u8>, first: u8, prefix_bits: u32, value: usize) {
    let limit = (1usize << prefix_bits) - 1;
    if value < limit {
        out.push(first | value as u8);
        return;
    }
    out.push(first | limit as u8);
    let mut rest = value - limit;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// How many client bytes are read at a time.
const READ_CHUNK: usize = 16 * 1024;

/// An accepted CSI connection, as the gRPC server reads it: the client's bytes through an
/// [`AuthorityRewriter`], the server's bytes straight to the client.
pub struct AuthorityRewriting<S> {
    inner: S,
    rewriter: AuthorityRewriter,
    /// Rewritten bytes the server has not read yet, from `ready_from` on.
    ready: Vec<u8>,
    ready_from: usize,
    chunk: Box<[u8]>,
}

impl<S> AuthorityRewriting<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: AuthorityRewriter::new(),
            ready: Vec::new(),
            ready_from: 0,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewriting<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_from < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_from);
                buf.put_slice(&this.ready[this.ready_from..this.ready_from + n]);
                this.ready_from += n;
                if this.ready_from == this.ready.len() {
                    this.ready.clear();
                    this.ready_from = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = this.rewriter.feed(chunk.filled(), &mut this.ready) {
                tracing::warn!(error = %e, "closing a CSI connection: malformed HTTP/2 headers");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewriting<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for AuthorityRewriting<UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
