//! One HTTP/1.1 request over a unix socket, as the Docker plugin API and the admin API
//! speak it, with `Connection: close` so the reply is everything until end of file.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends one request with a JSON (or empty) body and extra `headers`; returns the status
/// and the body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(150)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    read_response(&mut stream)
}

/// Reads a whole `Connection: close` response: the status and the body.
pub fn read_response(stream: &mut UnixStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header in {raw:?}")))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// [`request`] whose reply is JSON (`null` when empty); panics on a transport error or a
/// body that is not JSON.
#[track_caller]
pub fn json(socket: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, raw) = request(socket, method, path, &[], body.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", socket.display()));
    if raw.iter().all(u8::is_ascii_whitespace) {
        return (status, serde_json::Value::Null);
    }
    let value = serde_json::from_slice(&raw).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: reply {:?} is not JSON: {e}",
            String::from_utf8_lossy(&raw)
        )
    });
    (status, value)
}
