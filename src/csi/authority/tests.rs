//! The rewriter on hand-built client byte streams. Header blocks are encoded with
//! `httlib-hpack` (an HPACK implementation independent of the decoder the rewriter uses) as
//! the client, and what the rewriter sends on is decoded again with a fresh `httlib-hpack`
//! decoder as the server: its table starts empty, as the server's does.

use httlib_hpack::{Decoder as ServerDecoder, Encoder as ClientEncoder};

use super::*;

const SETTINGS: u8 = 0x4;
const DATA: u8 = 0x0;
const WINDOW_UPDATE: u8 = 0x8;

const RAW_PATH: &str = "/run/berth/csi.sock";
const PERCENT_PATH: &str = "%2Frun%2Fberth%2Fcsi.sock";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHeader {
        length: payload.len(),
        kind,
        flags,
        stream,
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out
}

/// A gRPC request's fields with the given authority.
fn request(authority: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".into()),
        (":scheme", "http".into()),
        (":path", "/csi.v1.Identity/Probe".into()),
        (":authority", authority.into()),
        ("content-type", "application/grpc".into()),
        ("te", "trailers".into()),
    ]
}

/// Encodes fields as the client would, with the given `httlib-hpack` flags.
fn encode(encoder: &mut ClientEncoder, fields: &[(&str, String)], flags: u8) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        let field = (name.as_bytes().to_vec(), value.as_bytes().to_vec(), flags);
        encoder.encode(field, &mut block).expect("encodable");
    }
    block
}

fn with_preface(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    for frame in frames {
        out.extend_from_slice(frame);
    }
    out
}

/// Feeds `input` whole, then one byte at a time, and returns the output, which must be
/// the same both ways.
fn rewrite(input: &[u8]) -> Result<Vec<u8>, AuthorityError> {
    let mut whole = Vec::new();
    AuthorityRewriter::new().feed(input, &mut whole)?;
    let mut bytewise = Vec::new();
    let mut rewriter = AuthorityRewriter::new();
    for byte in input {
        rewriter.feed(std::slice::from_ref(byte), &mut bytewise)?;
    }
    assert_eq!(
        whole, bytewise,
        "the output depends on how the input was cut"
    );
    Ok(whole)
}

#[derive(Debug, PartialEq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Splits the server's input into frames, after checking the preface.
fn frames(out: &[u8]) -> Vec<Frame> {
    assert_eq!(&out[..PREFACE.len()], PREFACE, "the preface is forwarded");
    let mut rest = &out[PREFACE.len()..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let header = FrameHeader::parse(rest[..FRAME_HEADER_LEN].try_into().unwrap());
        let end = FRAME_HEADER_LEN + header.length;
        if header.kind == HEADERS || header.kind == CONTINUATION {
            assert!(
                header.length <= MAX_FRAME_PAYLOAD,
                "frame too large: {header:?}"
            );
        }
        frames.push(Frame {
            kind: header.kind,
            flags: header.flags,
            stream: header.stream,
            payload: rest[FRAME_HEADER_LEN..end].to_vec(),
        });
        rest = &rest[end..];
    }
    frames
}

/// A header block as the server decodes it: stream, HEADERS flags, fields.
type Block = (u32, u8, Vec<(String, String)>);

/// Decodes the header blocks the server receives, with one decoder for the connection;
/// checks CONTINUATION frames follow their HEADERS on the same stream, and that no block
/// is padded.
fn server_blocks(frames: &[Frame]) -> Vec<Block> {
    let mut decoder = ServerDecoder::default();
    let mut blocks = Vec::new();
    let mut open: Option<(u32, u8, Vec<u8>)> = None;
    for frame in frames {
        match frame.kind {
            HEADERS => {
                assert!(open.is_none(), "HEADERS inside a block");
                assert_eq!(frame.flags & PADDED, 0, "padding is dropped");
                let skip = if frame.flags & PRIORITY != 0 { 5 } else { 0 };
                open = Some((frame.stream, frame.flags, frame.payload[skip..].to_vec()));
            }
            CONTINUATION => {
                let (stream, _, fragment) = open.as_mut().expect("CONTINUATION in a block");
                assert_eq!(*stream, frame.stream);
                fragment.extend_from_slice(&frame.payload);
            }
            _ => assert!(open.is_none(), "a frame inside a block: {frame:?}"),
        }
        if (frame.kind == HEADERS || frame.kind == CONTINUATION) && frame.flags & END_HEADERS != 0 {
            let (stream, flags, mut fragment) = open.take().unwrap();
            let mut fields = Vec::new();
            decoder
                .decode(&mut fragment, &mut fields)
                .expect("the server decodes the block");
            let fields = fields
                .into_iter()
                .map(|(n, v, _)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            blocks.push((stream, flags, fields));
        }
    }
    assert!(open.is_none(), "a block left open");
    blocks
}

fn authority_of(fields: &[(String, String)]) -> Option<&str> {
    fields
        .iter()
        .find(|(name, _)| name == ":authority")
        .map(|(_, value)| value.as_str())
}

fn expected(fields: &[(&str, String)], authority: &str) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(n, v)| {
            let v = if *n == ":authority" { authority } else { v };
            (n.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn a_literal_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
    let fields = request(RAW_PATH);
    let block = encode(&mut ClientEncoder::default(), &fields, 0);
    let out = rewrite(&with_preface(&[frame(HEADERS, END_HEADERS, 1, &block)])).unwrap();
    let blocks = server_blocks(&frames(&out));
    assert_eq!(
        blocks,
        vec![(1, END_HEADERS, expected(&fields, "localhost"))]
    );
}

#[test]
fn a_huffman_coded_percent_encoded_authority_becomes_localhost() {
    let fields = request(PERCENT_PATH);
    let flags = ClientEncoder::HUFFMAN_NAME | ClientEncoder::HUFFMAN_VALUE;
    let block = encode(&mut ClientEncoder::default(), &fields, flags);
    assert!(
        !block
            .windows(PERCENT_PATH.len())
            .any(|w| w == PERCENT_PATH.as_bytes()),
        "the test's authority is Huffman-coded"
    );
    let out = rewrite(&with_preface(&[frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &block,
    )]))
    .unwrap();
    let blocks = server_blocks(&frames(&out));
    assert_eq!(
        blocks,
        vec![(3, END_HEADERS | END_STREAM, expected(&fields, "localhost"))]
    );
}

#[test]
fn valid_authorities_are_kept_and_an_empty_one_becomes_localhost() {
    for (sent, seen) in [
        ("localhost", "localhost"),
        ("berth.example:50051", "berth.example:50051"),
        ("[::1]:8080", "[::1]:8080"),
        ("", "localhost"),
        (RAW_PATH, "localhost"),
        (PERCENT_PATH, "localhost"),
    ] {
        let block = encode(&mut ClientEncoder::default(), &request(sent), 0);
        let out = rewrite(&with_preface(&[frame(HEADERS, END_HEADERS, 1, &block)])).unwrap();
        let blocks = server_blocks(&frames(&out));
        assert_eq!(authority_of(&blocks[0].2), Some(seen), "sent {sent:?}");
    }
}

#[test]
fn a_block_without_authority_stays_without() {
    let fields: Vec<_> = request("x")
        .into_iter()
        .filter(|(n, _)| *n != ":authority")
        .collect();
    let block = encode(&mut ClientEncoder::default(), &fields, 0);
    let out = rewrite(&with_preface(&[frame(HEADERS, END_HEADERS, 1, &block)])).unwrap();
    assert_eq!(server_blocks(&frames(&out))[0].2, expected(&fields, ""));
}

#[test]
fn repeats_indexed_in_the_clients_dynamic_table_are_decoded_on_every_stream() {
    let mut client = ClientEncoder::default();
    let fields = request(PERCENT_PATH);
    let indexing = ClientEncoder::WITH_INDEXING | ClientEncoder::HUFFMAN_VALUE;
    let first = encode(&mut client, &fields, indexing);
    // The second and third requests refer to the first's fields by dynamic-table index.
    let best = ClientEncoder::BEST_FORMAT | ClientEncoder::WITH_INDEXING;
    let second = encode(&mut client, &fields, best);
    assert!(second.len() < 10, "the repeat is indexed: {second:02x?}");
    let mut third_fields = request(RAW_PATH);
    third_fields[2].1 = "/csi.v1.Node/NodeGetInfo".into();
    let third = encode(&mut client, &third_fields, best);

    let out = rewrite(&with_preface(&[
        frame(SETTINGS, 0, 0, &[]),
        frame(HEADERS, END_HEADERS, 1, &first),
        frame(HEADERS, END_HEADERS, 3, &second),
        frame(HEADERS, END_HEADERS, 5, &third),
    ]))
    .unwrap();
    let blocks = server_blocks(&frames(&out));
    assert_eq!(
        blocks,
        vec![
            (1, END_HEADERS, expected(&fields, "localhost")),
            (3, END_HEADERS, expected(&fields, "localhost")),
            (5, END_HEADERS, expected(&third_fields, "localhost")),
        ]
    );
}

#[test]
fn a_block_split_over_continuation_frames_is_gathered() {
    let fields = request(RAW_PATH);
    let block = encode(
        &mut ClientEncoder::default(),
        &fields,
        ClientEncoder::HUFFMAN_VALUE,
    );
    let (a, rest) = block.split_at(7);
    let (b, c) = rest.split_at(rest.len() / 2);
    let out = rewrite(&with_preface(&[
        frame(HEADERS, END_STREAM, 7, a),
        frame(CONTINUATION, 0, 7, b),
        frame(CONTINUATION, END_HEADERS, 7, c),
        frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]),
    ]))
    .unwrap();
    let sent = frames(&out);
    assert_eq!(
        sent.len(),
        2,
        "one HEADERS frame then the WINDOW_UPDATE: {sent:?}"
    );
    assert_eq!(
        sent[1],
        Frame {
            kind: WINDOW_UPDATE,
            flags: 0,
            stream: 0,
            payload: vec![0, 0, 0x10, 0]
        }
    );
    assert_eq!(
        server_blocks(&sent),
        vec![(7, END_STREAM | END_HEADERS, expected(&fields, "localhost"))]
    );
}

#[test]
fn padding_is_dropped_and_priority_fields_are_kept() {
    let fields = request(PERCENT_PATH);
    let block = encode(&mut ClientEncoder::default(), &fields, 0);
    let priority = [0x80, 0, 0, 3, 200];
    let mut payload = vec![6];
    payload.extend_from_slice(&priority);
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0; 6]);
    let flags = PADDED | PRIORITY | END_HEADERS | END_STREAM;
    let out = rewrite(&with_preface(&[frame(HEADERS, flags, 9, &payload)])).unwrap();
    let sent = frames(&out);
    assert_eq!(sent[0].flags, PRIORITY | END_HEADERS | END_STREAM);
    assert_eq!(sent[0].payload[..5], priority);
    assert_eq!(
        server_blocks(&sent),
        vec![(
            9,
            PRIORITY | END_HEADERS | END_STREAM,
            expected(&fields, "localhost")
        )]
    );

    // Padded without priority, and padding that fills the rest exactly.
    let mut payload = vec![3];
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0; 3]);
    let out = rewrite(&with_preface(&[frame(
        HEADERS,
        PADDED | END_HEADERS,
        11,
        &payload,
    )]))
    .unwrap();
    assert_eq!(
        server_blocks(&frames(&out)),
        vec![(11, END_HEADERS, expected(&fields, "localhost"))]
    );
}

#[test]
fn other_frames_pass_byte_for_byte() {
    let block = encode(&mut ClientEncoder::default(), &request(RAW_PATH), 0);
    let settings = frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0, 0, 0, 4, 0, 0x40, 0, 0]);
    let data = frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]);
    let empty_data = frame(DATA, 0, 3, &[]);
    let big_data = frame(DATA, 0, 3, &vec![0xab; 40_000]);
    let ack = frame(SETTINGS, 0x1, 0, &[]);
    let input = with_preface(&[
        settings.clone(),
        frame(HEADERS, END_HEADERS, 1, &block),
        data.clone(),
        empty_data.clone(),
        big_data.clone(),
        ack.clone(),
    ]);
    let out = rewrite(&input).unwrap();
    let sent = frames(&out);
    let raw: Vec<Vec<u8>> = sent
        .iter()
        .filter(|f| f.kind != HEADERS)
        .map(|f| frame(f.kind, f.flags, f.stream, &f.payload))
        .collect();
    assert_eq!(raw, vec![settings, data, empty_data, big_data, ack]);
}

#[test]
fn a_large_block_is_sent_in_frames_of_at_most_16_kib() {
    let mut fields = request(RAW_PATH);
    let big = "v".repeat(20_000);
    fields.push(("x-big", big.clone()));
    fields.push(("x-bigger", big.repeat(2)));
    let block = encode(
        &mut ClientEncoder::default(),
        &fields,
        ClientEncoder::HUFFMAN_VALUE,
    );
    // The client's frames, each within the 16 KiB every server takes.
    let mut client_frames = Vec::new();
    for (i, chunk) in block.chunks(MAX_FRAME_PAYLOAD).enumerate() {
        let last = (i + 1) * MAX_FRAME_PAYLOAD >= block.len();
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = (if i == 0 { PRIORITY } else { 0 }) | if last { END_HEADERS } else { 0 };
        let mut payload = if i == 0 { vec![0, 0, 0, 0, 15] } else { vec![] };
        payload.extend_from_slice(chunk);
        client_frames.push(frame(kind, flags, 1, &payload));
    }
    let out = rewrite(&with_preface(&client_frames)).unwrap();
    let sent = frames(&out);
    assert_eq!(sent.len(), 4, "60 KB raw take four 16 KiB frames");
    assert!(
        sent[..sent.len() - 1]
            .iter()
            .all(|f| f.flags & END_HEADERS == 0)
    );
    assert_eq!(sent[3].flags, END_HEADERS);
    // Compared without assert_eq: the fields are too large to print.
    let blocks = server_blocks(&sent);
    assert!(
        blocks == vec![(1, PRIORITY, expected(&fields, "localhost"))],
        "the server reads another block"
    );
}

#[test]
fn table_size_updates_from_the_client_are_followed() {
    let mut client = ClientEncoder::default();
    let fields = request(RAW_PATH);
    let first = encode(&mut client, &fields, ClientEncoder::WITH_INDEXING);
    // Shrinking the table to nothing evicts the first request's entries; growing it back
    // starts an empty table.
    let mut second = Vec::new();
    client.update_max_dynamic_size(0, &mut second).unwrap();
    client.update_max_dynamic_size(4096, &mut second).unwrap();
    second.extend(encode(
        &mut client,
        &fields,
        ClientEncoder::BEST_FORMAT | ClientEncoder::WITH_INDEXING,
    ));
    let out = rewrite(&with_preface(&[
        frame(HEADERS, END_HEADERS, 1, &first),
        frame(HEADERS, END_HEADERS, 3, &second),
    ]))
    .unwrap();
    let blocks = server_blocks(&frames(&out));
    assert_eq!(blocks[1], (3, END_HEADERS, expected(&fields, "localhost")));

    // A size above what the server allows is refused.
    let mut too_big = Vec::new();
    ClientEncoder::default()
        .update_max_dynamic_size(8192, &mut too_big)
        .unwrap();
    too_big.extend(encode(&mut ClientEncoder::default(), &fields, 0));
    let refused = rewrite(&with_preface(&[frame(HEADERS, END_HEADERS, 1, &too_big)]));
    assert!(
        matches!(refused, Err(AuthorityError::Hpack { stream: 1, .. })),
        "{refused:?}"
    );
}

#[test]
fn malformed_header_blocks_end_the_connection() {
    let block = encode(&mut ClientEncoder::default(), &request(RAW_PATH), 0);
    let interrupted = rewrite(&with_preface(&[
        frame(HEADERS, 0, 1, &block[..4]),
        frame(DATA, 0, 1, &[1, 2]),
    ]));
    assert!(
        matches!(
            interrupted,
            Err(AuthorityError::Interrupted {
                stream: 1,
                frame_type: DATA
            })
        ),
        "{interrupted:?}"
    );

    let two_headers = rewrite(&with_preface(&[
        frame(HEADERS, 0, 1, &block[..4]),
        frame(HEADERS, END_HEADERS, 3, &block),
    ]));
    assert!(
        matches!(
            two_headers,
            Err(AuthorityError::Interrupted {
                stream: 1,
                frame_type: HEADERS
            })
        ),
        "{two_headers:?}"
    );

    let other_stream = rewrite(&with_preface(&[
        frame(HEADERS, 0, 1, &block[..4]),
        frame(CONTINUATION, END_HEADERS, 3, &block[4..]),
    ]));
    assert!(
        matches!(
            other_stream,
            Err(AuthorityError::StrayContinuation { stream: 3 })
        ),
        "{other_stream:?}"
    );

    let stray = rewrite(&with_preface(&[frame(
        CONTINUATION,
        END_HEADERS,
        1,
        &block,
    )]));
    assert!(
        matches!(stray, Err(AuthorityError::StrayContinuation { stream: 1 })),
        "{stray:?}"
    );

    let mut payload = vec![200];
    payload.extend_from_slice(&block);
    let padding = rewrite(&with_preface(&[frame(
        HEADERS,
        PADDED | END_HEADERS,
        1,
        &payload,
    )]));
    assert!(
        matches!(
            padding,
            Err(AuthorityError::BadPadding {
                stream: 1,
                padding: 200,
                ..
            })
        ),
        "{padding:?}"
    );

    let short_priority = rewrite(&with_preface(&[frame(
        HEADERS,
        PRIORITY | END_HEADERS,
        1,
        &[0, 0],
    )]));
    assert!(
        matches!(short_priority, Err(AuthorityError::BadPadding { .. })),
        "{short_priority:?}"
    );

    // Index 70 names no entry: the dynamic table is empty.
    let unknown = rewrite(&with_preface(&[frame(
        HEADERS,
        END_HEADERS,
        1,
        &[0x80 | 70],
    )]));
    assert!(
        matches!(unknown, Err(AuthorityError::Hpack { stream: 1, .. })),
        "{unknown:?}"
    );

    let huge = rewrite(
        &with_preface(&[frame(HEADERS, 0, 1, &vec![0; MAX_FRAME_PAYLOAD])])
            .into_iter()
            .chain(
                std::iter::repeat_n(frame(CONTINUATION, 0, 1, &vec![0; MAX_FRAME_PAYLOAD]), 64)
                    .flatten(),
            )
            .collect::<Vec<u8>>(),
    );
    assert!(
        matches!(huge, Err(AuthorityError::TooLarge { stream: 1 })),
        "{huge:?}"
    );
}

#[test]
fn a_stream_that_is_not_http2_passes_untouched() {
    let input = b"GET / HTTP/1.1\r\nHost: /run/berth/csi.sock\r\n\r\n".repeat(3);
    assert_eq!(rewrite(&input).unwrap(), input);
    // A preface that goes wrong halfway.
    let mut input = PREFACE[..10].to_vec();
    input.extend_from_slice(b"garbage and more");
    assert_eq!(rewrite(&input).unwrap(), input);
}
