//! The real `berth` binary's CSI socket answers gRPC clients other than tonic's, whatever
//! `:authority` they send: Python `grpcio` (grpc-core, which sends the percent-encoded
//! socket path) calling every RPC of the proto, and a hand-written HTTP/2 client sending the
//! raw socket path, an empty authority and `localhost`, as kubelets of different ages do.

#[path = "support/csi_daemon.rs"]
mod csi_daemon;
#[path = "support/harness/mod.rs"]
mod harness;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth::csi::proto::{
    GetPluginInfoRequest, GetPluginInfoResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    ProbeRequest, ProbeResponse,
};
use csi_daemon::Daemon;
use httlib_hpack::{Decoder, Encoder};
use prost::Message;

/// Every RPC the proto declares, as `csi.v1.Service/Method`.
fn proto_rpcs() -> BTreeSet<String> {
    let proto =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/csi.proto"))
            .expect("proto/csi.proto");
    let mut service = String::new();
    let mut rpcs = BTreeSet::new();
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.trim_end_matches(['{', ' ']).to_string();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let method = rest.split('(').next().unwrap().trim();
            rpcs.insert(format!("csi.v1.{service}/{method}"));
        }
    }
    rpcs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_with_default_options_gets_an_answer_to_every_rpc() {
    harness::require_root();
    let have_grpcio = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_grpcio,
        "this test needs python3 with grpcio and grpcio-tools: run scripts/test-deps.sh"
    );
    let daemon = Daemon::start("");
    daemon.clients().await;
    let work = daemon.k8s("grpcio");
    std::fs::create_dir_all(&work).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/csi_grpcio.py");
    let output = tokio::task::spawn_blocking({
        let socket = daemon.socket();
        move || {
            Command::new("python3")
                .arg(script)
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto"))
                .arg(socket)
                .arg(work)
                .output()
                .expect("python3 runs")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the grpcio client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut answers: HashMap<String, serde_json::Value> = HashMap::new();
    for line in stdout.lines() {
        let answer: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let rpc = answer["rpc"].as_str().unwrap().to_string();
        assert!(
            answers.insert(rpc.clone(), answer).is_none(),
            "{rpc} called twice"
        );
    }
    let called: BTreeSet<String> = answers.keys().cloned().collect();
    assert_eq!(
        called,
        proto_rpcs(),
        "every RPC of the proto is called once"
    );

    // A transport failure (the stream reset, as before) shows as INTERNAL or UNAVAILABLE.
    for (rpc, answer) in &answers {
        let code = answer["code"].as_str().unwrap();
        assert!(
            !["INTERNAL", "UNAVAILABLE", "UNKNOWN", "DEADLINE_EXCEEDED"].contains(&code),
            "{rpc} got no CSI answer: {answer}\nberth's log:\n{}",
            daemon.log()
        );
    }
    for rpc in [
        "Identity/GetPluginInfo",
        "Identity/GetPluginCapabilities",
        "Identity/Probe",
        "Controller/ControllerGetCapabilities",
        "Controller/GetCapacity",
        "Controller/CreateVolume",
        "Controller/ValidateVolumeCapabilities",
        "Controller/ListVolumes",
        "Controller/ControllerExpandVolume",
        "Controller/DeleteVolume",
        "Node/NodeGetInfo",
        "Node/NodeGetCapabilities",
        "Node/NodeStageVolume",
        "Node/NodePublishVolume",
        "Node/NodeGetVolumeStats",
        "Node/NodeExpandVolume",
        "Node/NodeUnpublishVolume",
        "Node/NodeUnstageVolume",
    ] {
        let answer = &answers[&format!("csi.v1.{rpc}")];
        assert_eq!(answer["code"], "OK", "{rpc}: {answer}");
    }
    // What berth does not offer is refused as such, not reset.
    for rpc in [
        "GroupController/GroupControllerGetCapabilities",
        "SnapshotMetadata/GetMetadataAllocated",
    ] {
        let answer = &answers[&format!("csi.v1.{rpc}")];
        assert_eq!(answer["code"], "UNIMPLEMENTED", "{rpc}: {answer}");
    }
    // The script sends an empty CreateSnapshot: berth offers snapshots, so that is a bad
    // argument, answered as one.
    assert_eq!(
        answers["csi.v1.Controller/CreateSnapshot"]["code"],
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        answers["csi.v1.Node/NodeGetInfo"]["response"]["nodeId"],
        daemon.node_id.as_str()
    );
    assert_eq!(answers["csi.v1.Identity/Probe"]["response"]["ready"], true);
}

/// A gRPC client written straight on HTTP/2, so that it can send any `:authority`: HPACK
/// from `httlib-hpack` (Huffman values, its dynamic table used across requests), frames by
/// hand.
struct RawClient {
    socket: UnixStream,
    encoder: Encoder<'static>,
    decoder: Decoder<'static>,
    next_stream: u32,
}

/// What came back on one stream.
#[derive(Debug, Default)]
struct RawAnswer {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The gRPC message of a unary answer.
    fn message<M: Message + Default>(&self) -> M {
        assert_eq!(self.header("grpc-status"), Some("0"), "{self:?}");
        assert_eq!(self.body[0], 0, "uncompressed");
        let length = u32::from_be_bytes(self.body[1..5].try_into().unwrap()) as usize;
        M::decode(&self.body[5..5 + length]).expect("a message")
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

impl RawClient {
    fn connect(path: &Path) -> Self {
        let mut socket = UnixStream::connect(path).expect("connects");
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        socket.write_all(&frame(0x4, 0, 0, &[])).unwrap();
        Self {
            socket,
            encoder: Encoder::default(),
            decoder: Decoder::default(),
            next_stream: 1,
        }
    }

    /// One unary call with the given authority.
    fn call(&mut self, authority: &str, path: &str, request: &impl Message) -> RawAnswer {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            let flags = Encoder::HUFFMAN_VALUE | Encoder::WITH_INDEXING | Encoder::BEST_FORMAT;
            self.encoder
                .encode(
                    (name.as_bytes().to_vec(), value.as_bytes().to_vec(), flags),
                    &mut block,
                )
                .unwrap();
        }
        let body = request.encode_to_vec();
        let mut data = vec![0];
        data.extend_from_slice(&(body.len() as u32).to_be_bytes());
        data.extend_from_slice(&body);
        self.socket
            .write_all(&frame(0x1, 0x4, stream, &block))
            .unwrap();
        self.socket
            .write_all(&frame(0x0, 0x1, stream, &data))
            .unwrap();
        self.read_answer(stream)
    }

    fn read_answer(&mut self, stream: u32) -> RawAnswer {
        let mut answer = RawAnswer::default();
        let mut block = Vec::new();
        loop {
            let mut header = [0; 9];
            self.socket
                .read_exact(&mut header)
                .expect("the server answers");
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let (kind, flags) = (header[3], header[4]);
            let on = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let mut payload = vec![0; length];
            self.socket.read_exact(&mut payload).unwrap();
            match kind {
                // SETTINGS from the server: acknowledge.
                0x4 if flags & 0x1 == 0 => self.socket.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
                0x3 => panic!(
                    "stream {on} reset with error code {}",
                    u32::from_be_bytes(payload[..4].try_into().unwrap())
                ),
                0x7 => panic!(
                    "the server went away with error code {}: {}",
                    u32::from_be_bytes(payload[4..8].try_into().unwrap()),
                    String::from_utf8_lossy(&payload[8..])
                ),
                0x0 if on == stream => answer.body.extend_from_slice(&payload),
                0x1 | 0x9 => {
                    let mut fragment = payload.as_slice();
                    if kind == 0x1 && flags & 0x8 != 0 {
                        let pad = fragment[0] as usize;
                        fragment = &fragment[1..fragment.len() - pad];
                    }
                    if kind == 0x1 && flags & 0x20 != 0 {
                        fragment = &fragment[5..];
                    }
                    block.extend_from_slice(fragment);
                    if flags & 0x4 != 0 {
                        let mut fields = Vec::new();
                        self.decoder.decode(&mut block, &mut fields).expect("HPACK");
                        block.clear();
                        if on == stream {
                            answer.headers.extend(fields.into_iter().map(|(n, v, _)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            }));
                        }
                    }
                    if on == stream && flags & 0x1 != 0 {
                        return answer;
                    }
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_path_an_empty_or_localhost_authority_is_answered() {
    harness::require_root();
    let daemon = Daemon::start("");
    daemon.clients().await;
    let socket = daemon.socket();
    let node_id = daemon.node_id.clone();
    tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(&socket);
        let socket_path = socket.display().to_string();
        let percent = socket_path.replace('/', "%2F");
        // Repeats on one connection: the client indexes the authority in its dynamic table.
        for authority in [
            "/run/berth/csi.sock",
            socket_path.as_str(),
            socket_path.as_str(),
            percent.as_str(),
            "",
            "localhost",
        ] {
            let probe: ProbeResponse = client
                .call(authority, "/csi.v1.Identity/Probe", &ProbeRequest {})
                .message();
            assert_eq!(probe.ready, Some(true), "authority {authority:?}");
            let info: NodeGetInfoResponse = client
                .call(
                    authority,
                    "/csi.v1.Node/NodeGetInfo",
                    &NodeGetInfoRequest {},
                )
                .message();
            assert_eq!(info.node_id, node_id, "authority {authority:?}");
            let plugin: GetPluginInfoResponse = client
                .call(
                    authority,
                    "/csi.v1.Identity/GetPluginInfo",
                    &GetPluginInfoRequest {},
                )
                .message();
            assert!(!plugin.name.is_empty());
        }
    })
    .await
    .unwrap();
}
