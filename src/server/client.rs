//! The one client of berth's admin socket, for `berth volume` and `berth mesos`: plain
//! HTTP/1.1, one request per connection, over the unix socket or, for an `http://HOST:PORT`
//! endpoint, loopback TCP. It is blocking, so a command-line tool needs no async runtime.
//! An answer is the status and the whole body; an error answer's message is the `error`
//! field of the JSON body every admin-socket path sends.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The endpoint or the token given cannot be used.
    #[error("{0}")]
    Usage(String),
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// Sending or reading failed after the connection was made (also: no answer in time).
    #[error("talking to {endpoint}: {source}")]
    Io {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("a reply that cannot be read: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the request was sent but no answer came in time: the operation may still
    /// complete on the server.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

/// Where the API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// A socket path (`/run/berth/admin.sock`, `unix:///...`) or `http://HOST:PORT`.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        if let Some(rest) = text.strip_prefix("http://") {
            let address = rest.trim_end_matches('/');
            if address.is_empty() || address.contains('/') {
                return Err(ClientError::Usage(format!(
                    "{text:?}: give the TCP endpoint as http://HOST:PORT"
                )));
            }
            return Ok(Self::Tcp(address.to_string()));
        }
        if text.starts_with("https://") {
            return Err(ClientError::Usage(
                "the admin API does not serve TLS; use its unix socket, or http:// on loopback"
                    .into(),
            ));
        }
        Ok(Self::Unix(super::socket_path(text)))
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Unix(p) => p.display().to_string(),
            Self::Tcp(a) => format!("http://{a}"),
        }
    }
}

/// A reply: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as `T` when the status is a success; the API's error message otherwise.
    pub fn json<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        if (200..300).contains(&self.status) {
            return serde_json::from_slice(&self.body)
                .map_err(|e| ClientError::Protocol(format!("{e}")));
        }
        let message = serde_json::from_slice::<ErrorBody>(&self.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).trim().to_string());
        Err(ClientError::Api {
            status: self.status,
            message,
        })
    }
}

/// The `error` field of an error answer.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// A connection to the admin API, for a request whose body or answer streams.
pub trait Duplex: Read + Write {}
impl Duplex for std::os::unix::net::UnixStream {}
impl Duplex for std::net::TcpStream {}

/// A one-request-per-connection HTTP/1.1 client for the admin socket.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    timeout: Option<Duration>,
}

impl Client {
    pub fn new(endpoint: &str, token: Option<&str>) -> Result<Self, ClientError> {
        if let Some(t) = token
            && (t.is_empty() || t.chars().any(|c| c.is_control()))
        {
            return Err(ClientError::Usage(
                "the token is empty or contains control characters".into(),
            ));
        }
        Ok(Self {
            endpoint: Endpoint::parse(endpoint)?,
            token: token.map(str::to_string),
            timeout: None,
        })
    }

    /// Gives up reading an answer after `timeout` (an [`ClientError::is_timeout`] error).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Where the requests go, as the user would write it.
    pub fn endpoint(&self) -> String {
        self.endpoint.describe()
    }

    /// Connects and sends the head of a request (`extra` headers added, no
    /// `Content-Length`); returns the connection, to stream a body to and read the reply
    /// from (with [`parse_response`]), and the endpoint's name.
    pub fn open(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
    ) -> Result<(Box<dyn Duplex>, String), ClientError> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: berth-cli\r\nConnection: close\r\n"
        );
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        let endpoint = self.endpoint.describe();
        let connect = |source| ClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let mut stream: Box<dyn Duplex> = match &self.endpoint {
            Endpoint::Unix(path) => {
                Box::new(std::os::unix::net::UnixStream::connect(path).map_err(connect)?)
            }
            Endpoint::Tcp(address) => {
                Box::new(std::net::TcpStream::connect(address).map_err(connect)?)
            }
        };
        stream
            .write_all(head.as_bytes())
            .map_err(|source| ClientError::Io {
                endpoint: endpoint.clone(),
                source,
            })?;
        Ok((stream, endpoint))
    }

    /// Sends one request without a body and reads the whole reply.
    pub fn call(&self, method: &str, path: &str) -> Result<Response, ClientError> {
        self.exchange(method, path, None)
    }

    /// Sends one request with a JSON body and reads the whole reply.
    pub fn send_json(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Response, ClientError> {
        self.exchange(method, path, Some(body))
    }

    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: berth-cli\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.map_or(0, <[u8]>::len)
        );
        if body.is_some() {
            request.push_str("Content-Type: application/json\r\n");
        }
        if let Some(token) = &self.token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        let endpoint = self.endpoint.describe();
        let connect = |source| ClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let io = |source| ClientError::Io {
            endpoint: endpoint.clone(),
            source,
        };
        let mut raw = Vec::new();
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let mut s = std::os::unix::net::UnixStream::connect(path).map_err(connect)?;
                s.set_read_timeout(self.timeout).map_err(io)?;
                s.write_all(&bytes).map_err(io)?;
                s.read_to_end(&mut raw).map_err(io)?;
            }
            Endpoint::Tcp(address) => {
                let mut s = std::net::TcpStream::connect(address).map_err(connect)?;
                s.set_read_timeout(self.timeout).map_err(io)?;
                s.write_all(&bytes).map_err(io)?;
                s.read_to_end(&mut raw).map_err(io)?;
            }
        }
        parse_response(&raw)
    }
}

/// Parses a whole HTTP/1.1 response (`Content-Length`, chunked, or until close).
pub fn parse_response(raw: &[u8]) -> Result<Response, ClientError> {
    let bad = |what: &str| ClientError::Protocol(what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not UTF-8"))?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("malformed status line"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("malformed chunked body"))?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| bad("the body is shorter than announced"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

pub fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_length_chunks_or_close() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert!(r.body.is_empty());
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
    }

    #[test]
    fn errors_carry_the_apis_message() {
        let r = Response {
            status: 409,
            body: br#"{"error":"volume v is attached at /t; unpublish it first","kind":"in_use"}"#
                .to_vec(),
        };
        let e = r.json::<serde_json::Value>().unwrap_err().to_string();
        assert!(e.contains("409") && e.contains("attached at /t"), "{e}");
    }

    #[test]
    fn endpoints_are_sockets_or_http() {
        assert_eq!(
            Endpoint::parse("unix:///run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:7480/").unwrap(),
            Endpoint::Tcp("127.0.0.1:7480".into())
        );
        assert!(Endpoint::parse("https://h:1").is_err());
        assert!(Endpoint::parse("http://h:1/v1").is_err());
    }

    #[test]
    fn a_request_with_a_body_gets_its_answer_and_a_silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            // The first connection is answered with what it sent; the second never is.
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = vec![0u8; 4096];
            let n = s.read(&mut seen).unwrap();
            let text = String::from_utf8_lossy(&seen[..n]).into_owned();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            drop(s);
            let (held, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(held);
            text
        });
        let client = Client::new(socket.to_str().unwrap(), Some("t0ken"))
            .unwrap()
            .with_timeout(Duration::from_millis(200));
        let echoed = client.send_json("POST", "/v1/x", br#"{"a":1}"#).unwrap();
        assert_eq!(
            (echoed.status, echoed.body.as_slice()),
            (200, &br#"{"a":1}"#[..])
        );
        let late = client.call("GET", "/v1/y").unwrap_err();
        assert!(late.is_timeout(), "{late}");
        let sent = server.join().unwrap();
        assert!(sent.contains("Authorization: Bearer t0ken\r\n"), "{sent}");
        assert!(sent.contains("Content-Length: 7\r\n"), "{sent}");
    }
}
