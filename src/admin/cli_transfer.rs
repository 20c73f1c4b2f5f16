//! `berth volume export NAME|SNAP > FILE` and `berth volume import NAME < FILE`: the archive
//! streams between stdin/stdout and the admin API without being held in memory, so
//! `berth volume export db | ssh node-b berth volume import db` moves a volume. On a
//! terminal stderr shows a progress line; on a pipe or file, nothing but warnings.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use super::cli::{CliError, Client, Console};
use super::views::VolumeView;
use crate::engine::types::{VolumeName, format_size};
use crate::server::client::parse_response;

/// Bytes read from stdin per request chunk.
const CHUNK: usize = 256 << 10;

/// A progress line on stderr, redrawn at most every [`Progress::EVERY`].
struct Progress {
    enabled: bool,
    verb: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
}

impl Progress {
    const EVERY: Duration = Duration::from_millis(200);

    fn new(enabled: bool, verb: &'static str, total: Option<u64>) -> Self {
        Self {
            enabled,
            verb,
            total,
            done: 0,
            started: Instant::now(),
            drawn: None,
        }
    }

    fn add(&mut self, n: usize, err: &mut dyn Write) -> Result<(), CliError> {
        self.done += n as u64;
        if self.enabled && self.drawn.is_none_or(|at| at.elapsed() >= Self::EVERY) {
            self.drawn = Some(Instant::now());
            self.draw(err)?;
        }
        Ok(())
    }

    fn draw(&self, err: &mut dyn Write) -> Result<(), CliError> {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = format_size((self.done as f64 / secs) as u64);
        let of = match self.total {
            // The data's size is an estimate of the archive's: never show more than 99%.
            Some(t) if t > 0 => format!(
                " of ~{} ({}%)",
                format_size(t),
                (self.done * 100 / t).min(99)
            ),
            _ => String::new(),
        };
        let line = format!(
            "\r\x1b[2K{} {}{of}, {rate}/s",
            self.verb,
            format_size(self.done)
        );
        err.write_all(line.as_bytes()).map_err(CliError::Output)?;
        err.flush().map_err(CliError::Output)
    }

    fn finish(&self, err: &mut dyn Write) -> Result<(), CliError> {
        if self.enabled && self.drawn.is_some() {
            err.write_all(b"\r\x1b[2K").map_err(CliError::Output)?;
        }
        Ok(())
    }
}

/// The status line and headers of a response, read up to the blank line.
struct Head {
    status: u16,
    chunked: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut dyn BufRead, protocol: &dyn Fn(&str) -> CliError) -> Result<Head, CliError> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .map_err(|e| protocol(&format!("reading the reply: {e}")))?;
        if n == 0 {
            return Err(protocol("the reply ended inside its headers"));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let status = lines
        .first()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol("malformed status line"))?;
    let headers: Vec<(String, String)> = lines
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    Ok(Head {
        status,
        chunked,
        headers,
    })
}

/// Copies a chunked body to `out`; a body that ends before its last chunk is an error.
fn copy_chunked(
    r: &mut dyn BufRead,
    out: &mut dyn Write,
    progress: &mut Progress,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let cut = || {
        CliError::Protocol(
            "the archive was cut off: the export failed on the server (see its log) or the connection broke"
                .into(),
        )
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(|_| cut())? == 0 {
            return Err(cut());
        }
        let size_text = line.trim().split(';').next().unwrap_or("");
        let mut left = u64::from_str_radix(size_text, 16).map_err(|_| cut())?;
        if left == 0 {
            return Ok(());
        }
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = r.read(&mut buf[..want]).map_err(|_| cut())?;
            if n == 0 {
                return Err(cut());
            }
            out.write_all(&buf[..n]).map_err(CliError::Output)?;
            progress.add(n, err)?;
            left -= n as u64;
        }
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).map_err(|_| cut())?;
    }
}

/// `berth volume export`.
pub fn export(
    client: &Client,
    console: &mut Console<'_>,
    name: &VolumeName,
) -> Result<(), CliError> {
    let path = format!("{}/export", super::cli::volume_path(name));
    let (stream, endpoint) = client.open("GET", &path, &[])?;
    let protocol = |what: &str| CliError::Protocol(format!("{what} ({endpoint})"));
    let mut reader = BufReader::with_capacity(CHUNK, stream);
    let head = read_head(&mut reader, &protocol)?;
    if !(200..300).contains(&head.status) {
        let mut rest = Vec::new();
        reader
            .read_to_end(&mut rest)
            .map_err(|e| protocol(&format!("reading the reply: {e}")))?;
        let body = if head.chunked {
            crate::server::client::dechunk(&rest).unwrap_or(rest)
        } else {
            rest
        };
        return crate::server::client::Response {
            status: head.status,
            body,
        }
        .json::<serde_json::Value>()
        .map(drop)
        .map_err(CliError::from);
    }
    if !head.chunked {
        return Err(protocol("the archive was not sent chunked"));
    }
    if let Some(note) = head.get("x-berth-note") {
        console
            .err
            .write_all(format!("warning: {note}\n").as_bytes())
            .map_err(CliError::Output)?;
    }
    let total = head.get("x-berth-data-bytes").and_then(|v| v.parse().ok());
    let mut progress = Progress::new(console.progress, "exporting", total);
    copy_chunked(&mut reader, console.out, &mut progress, console.err)?;
    console.out.flush().map_err(CliError::Output)?;
    progress.finish(console.err)
}

/// `berth volume import`.
pub fn import(
    client: &Client,
    console: &mut Console<'_>,
    name: &VolumeName,
    query: &[(&str, Option<String>)],
) -> Result<(), CliError> {
    let params: Vec<String> = query
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| format!("{k}={}", super::cli::url_encode(v)))
        })
        .collect();
    let mut path = format!("{}/import", super::cli::volume_path(name));
    if !params.is_empty() {
        path = format!("{path}?{}", params.join("&"));
    }
    let extra = [
        ("Content-Type", crate::server::http::TAR),
        ("Transfer-Encoding", "chunked"),
    ];
    let (mut stream, endpoint) = client.open("POST", &path, &extra)?;
    let mut progress = Progress::new(console.progress, "importing", None);
    let mut buf = vec![0u8; CHUNK];
    // A server that refuses the archive answers and closes before reading it all: stop
    // sending and read its answer.
    let mut sent = Ok(());
    loop {
        let n = console
            .input
            .read(&mut buf)
            .map_err(|e| CliError::Usage(format!("reading the archive from stdin: {e}")))?;
        let chunk = if n == 0 {
            b"0\r\n\r\n".to_vec()
        } else {
            let mut c = format!("{n:x}\r\n").into_bytes();
            c.extend_from_slice(&buf[..n]);
            c.extend_from_slice(b"\r\n");
            c
        };
        if let Err(e) = stream.write_all(&chunk) {
            sent = Err(e);
            break;
        }
        if n == 0 {
            break;
        }
        progress.add(n, console.err)?;
    }
    progress.finish(console.err)?;
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        let e = sent.err().or(read.err());
        return Err(CliError::Io {
            endpoint,
            source: e.unwrap_or_else(|| std::io::Error::other("no answer")),
        });
    }
    let view: VolumeView = parse_response(&raw)?.json()?;
    console
        .out
        .write_all(format!("{}\n", view.id).as_bytes())
        .map_err(CliError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_drawn_on_a_terminal_only() {
        let mut err = Vec::new();
        let mut quiet = Progress::new(false, "exporting", Some(1 << 20));
        quiet.add(1 << 19, &mut err).unwrap();
        quiet.finish(&mut err).unwrap();
        assert!(err.is_empty(), "nothing on a pipe");
        let mut shown = Progress::new(true, "exporting", Some(1 << 20));
        shown.add(1 << 19, &mut err).unwrap();
        let line = String::from_utf8(err.clone()).unwrap();
        assert!(
            line.starts_with("\r\x1b[2Kexporting 512KiB of ~1MiB (50%), "),
            "{line:?}"
        );
        // Past the estimate it never claims to be done.
        shown.drawn = None;
        shown.add(1 << 20, &mut err).unwrap();
        assert!(String::from_utf8_lossy(&err).contains("(99%)"));
        shown.finish(&mut err).unwrap();
        assert!(
            err.ends_with(b"\r\x1b[2K"),
            "the line is cleared at the end"
        );
    }

    #[test]
    fn a_chunked_archive_cut_off_is_an_error() {
        let mut progress = Progress::new(false, "exporting", None);
        let mut out = Vec::new();
        let whole = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n";
        copy_chunked(&mut &whole[..], &mut out, &mut progress, &mut Vec::new()).unwrap();
        assert_eq!(out, b"helloabc");
        for cut in [whole.len() - 5, 12, 6] {
            let err = copy_chunked(
                &mut &whole[..cut],
                &mut Vec::new(),
                &mut progress,
                &mut Vec::new(),
            )
            .unwrap_err();
            assert!(err.to_string().contains("cut off"), "{cut}: {err}");
        }
    }
}
