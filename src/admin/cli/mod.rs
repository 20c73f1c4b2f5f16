//! `berth volume ...`: the operator's command line on the admin API.
//!
//! It speaks plain HTTP/1.1 (one request per connection) over the admin unix socket, or
//! over TCP for an `http://HOST:PORT` endpoint, so it needs no async runtime. `ls` prints a
//! table like `kubectl get` (or JSON with `-o json`), `inspect` the volume's JSON, `rm`
//! releases a volume as its reclaim policy says, and `wipe` destroys its data after asking
//! (or with `--yes`; never silently when stdin is not a terminal). A wipe runs inside its
//! request on the server, so the progress shown is the honest one: elapsed time, then what
//! was removed.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;

use super::handover::{HandoverView, to_yaml};
use super::snapshots::SnapshotView;
use super::views::{DataOutcome, DeleteView, VolumeList, VolumeView};
use crate::engine::types::{OwnerFrontend, VolumeName, VolumeState, format_size};
pub use crate::server::client::{Client, ClientError, Duplex, Endpoint, Response};

mod args;
mod render;

pub use args::{OutputFormat, VolumeArgs, VolumeCommand};
pub use render::{age, table};

/// Where `berth volume` finds the API unless told otherwise.
pub const DEFAULT_ENDPOINT: &str = "/run/berth/admin.sock";

#[derive(Debug, Error)]
pub enum CliError {
    #[error(
        "connecting to the admin API at {endpoint}: {source} (is berth running? see --admin-socket)"
    )]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the admin API at {endpoint}: {source}")]
    Io {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin API answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("the admin API sent a reply berth volume cannot read: {0}")]
    Protocol(String),
    #[error("{0}")]
    Usage(String),
    /// berth will not do it in the volume's current state.
    #[error("{0}")]
    Refused(String),
    #[error("volume {0} was not wiped")]
    Declined(String),
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Usage(message) => Self::Usage(message),
            ClientError::Connect { endpoint, source } => Self::Connect { endpoint, source },
            ClientError::Io { endpoint, source } => Self::Io { endpoint, source },
            ClientError::Api { status, message } => Self::Api { status, message },
            ClientError::Protocol(message) => Self::Protocol(message),
        }
    }
}

/// Runs one subcommand against the API at `endpoint` on the process's terminal.
pub fn run(command: VolumeCommand, endpoint: &str, token: Option<&str>) -> Result<(), CliError> {
    let client = Client::new(endpoint, token)?;
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let progress = std::io::stderr().is_terminal();
    let mut input = stdin.lock();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut console = Console {
        out: &mut out,
        err: &mut err,
        input: &mut input,
        interactive,
        progress,
    };
    run_on(command, &client, &mut console)
}

/// The terminal a command talks to; tests give it buffers.
pub struct Console<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub input: &'a mut dyn BufRead,
    /// stdin is a terminal: the command may ask questions.
    pub interactive: bool,
    /// stderr is a terminal: the command may redraw a progress line.
    pub progress: bool,
}

/// Runs one subcommand with `client` on `console`.
pub fn run_on(
    command: VolumeCommand,
    client: &Client,
    console: &mut Console<'_>,
) -> Result<(), CliError> {
    match command {
        VolumeCommand::Ls {
            state,
            pool,
            app,
            task,
            label,
            frontend,
            output,
            quiet,
        } => {
            if let Some(s) = &state {
                s.parse::<VolumeState>()
                    .map_err(|e| CliError::Usage(e.to_string()))?;
            }
            if let Some(f) = &frontend {
                f.parse::<OwnerFrontend>()
                    .map_err(|e| CliError::Usage(e.to_string()))?;
            }
            let filters = [
                ("state", state),
                ("pool", pool),
                ("app", app),
                ("task", task),
                ("label", label),
                ("frontend", frontend),
            ];
            let query: Vec<String> = filters
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", url_encode(v))))
                .collect();
            let path = if query.is_empty() {
                "/v1/volumes".to_string()
            } else {
                format!("/v1/volumes?{}", query.join("&"))
            };
            let list: VolumeList = client.call("GET", &path)?.json()?;
            let text = if quiet {
                list.volumes.iter().map(|v| format!("{}\n", v.id)).collect()
            } else {
                match output {
                    OutputFormat::Table => table(&list.volumes, SystemTime::now()),
                    OutputFormat::Json => pretty(&list.volumes)? + "\n",
                }
            };
            write_out(console.out, &text)
        }
        VolumeCommand::Inspect { id } => {
            let name = parse_id(&id)?;
            let value: serde_json::Value = client.call("GET", &volume_path(&name))?.json()?;
            write_out(console.out, &(pretty(&value)? + "\n"))
        }
        VolumeCommand::Rm { id } => {
            let name = parse_id(&id)?;
            let done: DeleteView = client.call("DELETE", &volume_path(&name))?.json()?;
            write_out(console.out, &format!("{}\n", done.id))?;
            if done.data == DataOutcome::Retained {
                write_out(
                    console.err,
                    &format!(
                        "{}: data retained under its pool's .retained directory (reclaim policy retain)\n",
                        done.id
                    ),
                )?;
            }
            Ok(())
        }
        VolumeCommand::Wipe { id, yes } => wipe(client, console, &id, yes),
        VolumeCommand::Snapshot { id, snapshot } => {
            let name = parse_id(&id)?;
            let snapshot = match snapshot {
                Some(s) => parse_id(&s)?,
                None => {
                    let secs = SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    parse_id(&format!("{name}-{secs}"))?
                }
            };
            let path = format!(
                "{}/snapshots/{}",
                volume_path(&name),
                url_encode(snapshot.as_str())
            );
            let view: SnapshotView = client.call("POST", &path)?.json()?;
            write_out(console.out, &format!("{}\n", view.id))
        }
        VolumeCommand::Snapshots { id } => {
            let path = match id {
                Some(id) => format!(
                    "/v1/snapshots?volume={}",
                    url_encode(parse_id(&id)?.as_str())
                ),
                None => "/v1/snapshots".to_string(),
            };
            let list: Vec<SnapshotView> = client.call("GET", &path)?.json()?;
            write_out(console.out, &(pretty(&list)? + "\n"))
        }
        VolumeCommand::Restore { snapshot, new_name } => {
            let (snapshot, name) = (parse_id(&snapshot)?, parse_id(&new_name)?);
            let path = format!(
                "/v1/snapshots/{}/restore/{}",
                url_encode(snapshot.as_str()),
                url_encode(name.as_str())
            );
            let view: VolumeView = client.call("POST", &path)?.json()?;
            write_out(console.out, &format!("{}\n", view.id))
        }
        VolumeCommand::Handover {
            id,
            to,
            storage_class,
            pv_name,
            labels,
        } => {
            let pv = PvFlags {
                storage_class,
                pv_name,
                labels,
            };
            handover(client, console, &id, &to, pv)
        }
        VolumeCommand::Export { id } => {
            super::cli_transfer::export(client, console, &parse_id(&id)?)
        }
        VolumeCommand::Import {
            id,
            size,
            pool,
            frontend,
        } => super::cli_transfer::import(
            client,
            console,
            &parse_id(&id)?,
            &[("size", size), ("pool", pool), ("frontend", frontend)],
        ),
        VolumeCommand::RmSnapshot { snapshot } => {
            let snapshot = parse_id(&snapshot)?;
            let path = format!("/v1/snapshots/{}", url_encode(snapshot.as_str()));
            client.call("DELETE", &path)?;
            write_out(console.out, &format!("{snapshot}\n"))
        }
    }
}

fn wipe(client: &Client, console: &mut Console<'_>, id: &str, yes: bool) -> Result<(), CliError> {
    let name = parse_id(id)?;
    let view: VolumeView = client.call("GET", &volume_path(&name))?.json()?;
    if view.state == VolumeState::Attached {
        let targets: Vec<String> = view
            .publications
            .iter()
            .map(|p| p.target.describe(&name))
            .collect();
        return Err(CliError::Refused(format!(
            "volume {name} is attached ({}); unpublish it (stop its container or pod) first",
            targets.join("; ")
        )));
    }
    if !yes {
        if !console.interactive {
            return Err(CliError::Usage(format!(
                "refusing to wipe volume {name} without confirmation: stdin is not a terminal; pass --yes"
            )));
        }
        let contents = match &view.usage {
            Some(u) => format!(
                "{} files and directories, {}",
                u.inodes_used,
                format_size(u.bytes_used)
            ),
            None => "contents unknown".into(),
        };
        write_out(
            console.err,
            &format!("Wipe volume {name} ({contents})? This destroys its data. [y/N] "),
        )?;
        console.err.flush().map_err(CliError::Output)?;
        let mut answer = String::new();
        console
            .input
            .read_line(&mut answer)
            .map_err(CliError::Output)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Err(CliError::Declined(name.to_string()));
        }
    }
    let started = Instant::now();
    let (done_tx, done_rx) = mpsc::channel();
    let request_client = client.clone();
    let path = format!("{}?wipe=true", volume_path(&name));
    std::thread::spawn(move || {
        let result = request_client
            .call("DELETE", &path)
            .and_then(|r| r.json::<DeleteView>())
            .map_err(CliError::from);
        // The receiver waits until this arrives; if it is gone there is no one to tell.
        let _ = done_tx.send(result);
    });
    const SPINNER: [char; 4] = ['|', '/', '-', '\\'];
    let mut frame = 0usize;
    let mut last_note = Instant::now();
    let result = loop {
        match done_rx.recv_timeout(Duration::from_millis(125)) {
            Ok(result) => break result,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(CliError::Protocol(
                    "the wipe request ended without an answer".into(),
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let secs = started.elapsed().as_secs();
                if console.progress {
                    frame = (frame + 1) % SPINNER.len();
                    write_out(
                        console.err,
                        &format!("\r{} wiping {name}: {secs}s elapsed", SPINNER[frame]),
                    )?;
                    console.err.flush().map_err(CliError::Output)?;
                } else if last_note.elapsed() >= Duration::from_secs(10) {
                    last_note = Instant::now();
                    write_out(
                        console.err,
                        &format!("still wiping {name}: {secs}s elapsed\n"),
                    )?;
                }
            }
        }
    };
    if console.progress && started.elapsed() >= Duration::from_millis(125) {
        write_out(console.err, "\r\x1b[2K")?;
    }
    let done = result?;
    let removed = done.removed.unwrap_or_default();
    write_out(
        console.out,
        &format!(
            "wiped {}: removed {} files, {} directories, {} symlinks, {}{} in {:.1}s{}\n",
            done.id,
            removed.files,
            removed.dirs,
            removed.symlinks,
            format_size(removed.bytes),
            match removed.image_bytes {
                0 => String::new(),
                image => format!(" (and its {} image)", format_size(image)),
            },
            started.elapsed().as_secs_f64(),
            match &removed.incomplete {
                None => String::new(),
                Some(why) => format!("\n  the count is partial: {why}"),
            }
        ),
    )
}

/// `berth volume handover`'s options for the PersistentVolume.
struct PvFlags {
    storage_class: Option<String>,
    pv_name: Option<String>,
    labels: Vec<String>,
}

/// `berth volume handover`: the new owner on stderr; for csi the PersistentVolume on stdout.
fn handover(
    client: &Client,
    console: &mut Console<'_>,
    id: &str,
    to: &str,
    pv: PvFlags,
) -> Result<(), CliError> {
    let name = parse_id(id)?;
    let to: OwnerFrontend = to
        .parse()
        .map_err(|e: crate::engine::InputError| CliError::Usage(format!("--to: {e}")))?;
    if to != OwnerFrontend::Csi
        && (pv.storage_class.is_some() || pv.pv_name.is_some() || !pv.labels.is_empty())
    {
        return Err(CliError::Usage(
            "--storage-class, --pv-name and --label are for --to csi".into(),
        ));
    }
    if let Some(bad) = pv.labels.iter().find(|l| l.contains(',')) {
        return Err(CliError::Usage(format!(
            "--label {bad:?}: one KEY=VALUE per --label"
        )));
    }
    let labels = (!pv.labels.is_empty()).then(|| pv.labels.join(","));
    let mut query = format!("to={to}");
    for (key, value) in [
        ("storage_class", pv.storage_class),
        ("pv_name", pv.pv_name),
        ("labels", labels),
    ] {
        if let Some(value) = value {
            query.push_str(&format!("&{key}={}", url_encode(&value)));
        }
    }
    let path = format!("{}/handover?{query}", volume_path(&name));
    let done: HandoverView = client.call("POST", &path)?.json()?;
    for left in &done.labels_left_off {
        write_out(
            console.err,
            &format!("label {left}; left off the PersistentVolume\n"),
        )?;
    }
    write_out(
        console.err,
        &format!(
            "volume {} handed over from {} to {}\n",
            done.volume.id, done.from, done.volume.frontend
        ),
    )?;
    match &done.persistent_volume {
        Some(pv) => write_out(console.out, &to_yaml(pv)),
        None => write_out(console.out, &format!("{}\n", done.volume.id)),
    }
}

fn parse_id(id: &str) -> Result<VolumeName, CliError> {
    VolumeName::parse(id).map_err(|e| CliError::Usage(e.to_string()))
}

pub(super) fn volume_path(name: &VolumeName) -> String {
    format!("/v1/volumes/{}", url_encode(name.as_str()))
}

fn write_out(w: &mut dyn Write, text: &str) -> Result<(), CliError> {
    w.write_all(text.as_bytes()).map_err(CliError::Output)
}

fn pretty(value: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Protocol(e.to_string()))
}

/// Percent-encodes everything but unreserved characters.
pub(super) fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s| t + Duration::from_secs(s);
        assert_eq!(age(t, at(5)), "5s");
        assert_eq!(age(t, at(600)), "10m");
        assert_eq!(age(t, at(3 * 3600)), "3h");
        assert_eq!(age(t, at(5 * 86_400)), "5d");
        assert_eq!(
            age(at(10), t),
            "0s",
            "a clock running behind is not negative"
        );
    }

    #[test]
    fn url_encoding_keeps_only_unreserved() {
        assert_eq!(url_encode("a=b c/d#e"), "a%3Db%20c%2Fd%23e");
        assert_eq!(url_encode("pvc-1.x_y~"), "pvc-1.x_y~");
    }
}
