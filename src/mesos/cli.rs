//! `berth mesos validate|prepare|cleanup`. `validate` works offline. `prepare` and `cleanup`
//! are thin clients of the running daemon, which owns the store: they check the definition
//! locally (so a broken one is reported without a round trip), send one request over the
//! admin socket and print what the daemon did.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use thiserror::Error;

use super::api::{
    CLEANUP_PATH, CleanupReply, CleanupRequest, ErrorReply, Origin, PREPARE_PATH, PrepareReply,
    PrepareRequest, TaskLayout,
};
use super::validate::{Definition, Violation, parse_definition};
use crate::engine::types::{PoolKind, format_size};
use crate::server::client::{Client, ClientError, Response};

/// The admin socket of a default install.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/berth/admin.sock";

/// How long to wait for the daemon; creating a large loopfs volume takes a while.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Subcommand)]
pub enum MesosCommand {
    /// Check a Marathon app or pod definition's volumes and print every violation.
    Validate {
        /// The definition (JSON); `-` reads standard input.
        definition: PathBuf,
    },
    /// Reserve, create or reuse, and mount a task's persistent volumes (before it starts).
    Prepare(Box<PrepareArgs>),
    /// Unmount a task's volumes (after it ended); reservations and data stay, detached.
    Cleanup(Box<CleanupArgs>),
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The Marathon app or pod definition (JSON); `-` reads standard input.
    pub definition: PathBuf,
    #[command(flatten)]
    pub task: TaskArgs,
    /// Owner (uid) of a new volume's data directory; default: the definition's `user`.
    #[arg(long)]
    pub owner_uid: Option<u32>,
    /// Group (gid) of a new volume's data directory.
    #[arg(long)]
    pub owner_gid: Option<u32>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Which task, and where its files are on the agent.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The Mesos task id (for a pod, the Marathon instance id).
    #[arg(long, env = "MESOS_TASK_ID")]
    pub task_id: String,
    /// The Mesos framework id of the task (Marathon's); a volume is reused only by tasks of
    /// the framework that reserved it.
    #[arg(long, env = "MESOS_FRAMEWORK_ID")]
    pub framework_id: Option<String>,
    /// The task's sandbox on the agent, beneath the agent work directory.
    #[arg(long, env = "MESOS_SANDBOX")]
    pub sandbox: PathBuf,
    /// App: the container's root filesystem; alias volumes at absolute paths are mounted
    /// inside it.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Pod: a container's root filesystem, as NAME=DIR (repeat per container).
    #[arg(long = "container-rootfs", value_name = "NAME=DIR", value_parser = parse_named_dir)]
    pub container_rootfs: Vec<(String, PathBuf)>,
    /// Pod: a container's sandbox, as NAME=DIR; default SANDBOX/tasks/TASK_ID.NAME.
    #[arg(long = "container-sandbox", value_name = "NAME=DIR", value_parser = parse_named_dir)]
    pub container_sandboxes: Vec<(String, PathBuf)>,
    /// Without a root filesystem, mount absolute container paths on the host itself
    /// (the container shares the host's filesystem). Dangerous: /var/lib/mysql is then the
    /// host's.
    #[arg(long)]
    pub allow_host_paths: bool,
}

/// How to reach the daemon.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The daemon's admin socket.
    #[arg(long, env = "BERTH_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    /// The admin bearer token, if the daemon has one (prefer BERTH_ADMIN_TOKEN, --token-file
    /// or the daemon's config: arguments show in `ps`).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file whose first line is the admin token (e.g. the daemon's admin.token_file).
    #[arg(long, env = "BERTH_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The daemon's config file, where the token is looked for last (default
    /// /etc/berth/config.toml, if it exists).
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the daemon's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Error)]
pub enum MesosCliError {
    #[error("{0}")]
    Token(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: not valid JSON: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: the definition breaks {count} of Marathon's rules for volumes (listed above)")]
    Invalid { path: PathBuf, count: usize },
    #[error("talking to berth at {socket}: {message}")]
    Connect { socket: PathBuf, message: String },
    #[error("berth refused ({status}): {message}")]
    Refused { status: u16, message: String },
}

/// Runs one `berth mesos` command.
pub fn run(command: MesosCommand) -> Result<(), MesosCliError> {
    match command {
        MesosCommand::Validate { definition } => {
            let (_, parsed) = read_definition(&definition)?;
            println!("{}: {}", definition.display(), describe(&parsed));
            Ok(())
        }
        MesosCommand::Prepare(args) => {
            let (json, _) = read_definition(&args.definition)?;
            let request = PrepareRequest {
                definition: json,
                task_id: args.task.task_id.clone(),
                framework_id: args.task.framework_id.clone(),
                layout: args.task.layout()?,
                owner_uid: args.owner_uid,
                owner_gid: args.owner_gid,
            };
            let body = call(&args.daemon, PREPARE_PATH, &request)?;
            if args.daemon.json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let reply: PrepareReply = decode(&body)?;
            print!("{}", prepare_summary(&reply));
            Ok(())
        }
        MesosCommand::Cleanup(args) => {
            let request = CleanupRequest {
                task_id: args.task.task_id.clone(),
                framework_id: args.task.framework_id.clone(),
                layout: args.task.layout()?,
            };
            let body = call(&args.daemon, CLEANUP_PATH, &request)?;
            if args.daemon.json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let reply: CleanupReply = decode(&body)?;
            print!("{}", cleanup_summary(&reply));
            Ok(())
        }
    }
}

impl TaskArgs {
    /// The layout with relative paths made absolute: the daemon has another working directory.
    fn layout(&self) -> Result<TaskLayout, MesosCliError> {
        let named =
            |pairs: &[(String, PathBuf)]| -> Result<BTreeMap<String, PathBuf>, MesosCliError> {
                pairs
                    .iter()
                    .map(|(name, dir)| Ok((name.clone(), absolute(dir)?)))
                    .collect()
            };
        Ok(TaskLayout {
            sandbox: absolute(&self.sandbox)?,
            rootfs: self.rootfs.as_deref().map(absolute).transpose()?,
            container_rootfs: named(&self.container_rootfs)?,
            container_sandboxes: named(&self.container_sandboxes)?,
            allow_host_paths: self.allow_host_paths,
        })
    }
}

fn absolute(path: &Path) -> Result<PathBuf, MesosCliError> {
    std::path::absolute(path).map_err(|source| MesosCliError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_named_dir(raw: &str) -> Result<(String, PathBuf), String> {
    match raw.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!(
            "{raw:?}: expected NAME=DIR, e.g. container1=/var/lib/mesos/..."
        )),
    }
}

/// Reads and validates a definition; prints every violation (with its JSON path) and fails
/// if there is any.
fn read_definition(path: &Path) -> Result<(serde_json::Value, Definition), MesosCliError> {
    let read_err = |source| MesosCliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(read_err)?
    } else {
        std::fs::read_to_string(path).map_err(read_err)?
    };
    // A syntax error is reported as one, with its place, before any rule is checked.
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| syntax_error(path, &e))?;
    match parse_definition(&text) {
        Ok(definition) => Ok((json, definition)),
        Err(violations) => {
            print_violations(&violations);
            Err(MesosCliError::Invalid {
                path: path.to_path_buf(),
                count: violations.len(),
            })
        }
    }
}

fn syntax_error(path: &Path, error: &serde_json::Error) -> MesosCliError {
    // serde_json's text ends with " at line L column C", which the variant shows up front.
    let text = error.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(message, _)| message);
    MesosCliError::Syntax {
        path: path.to_path_buf(),
        line: error.line(),
        column: error.column(),
        message: message.to_string(),
    }
}

fn print_violations(violations: &[Violation]) {
    for v in violations {
        println!("{v}");
    }
}

/// What a valid definition asks of berth, for `validate`.
fn describe(definition: &Definition) -> String {
    let mut out = String::new();
    let (kind, id) = match definition {
        Definition::App(app) => ("app", &app.id),
        Definition::Pod(pod) => ("pod", &pod.id),
    };
    let _ = writeln!(out, "valid {kind} {id}");
    for pv in definition.persistent_volumes() {
        let mut extra = String::new();
        if let Some(max) = pv.spec.max_size {
            let _ = write!(extra, ", up to {} MiB", max >> 20);
        }
        if let Some(profile) = &pv.spec.profile {
            let _ = write!(extra, ", profile {profile}");
        }
        for c in &pv.spec.constraints {
            let _ = write!(extra, ", path {c}");
        }
        if let Some(pool) = &pv.spec.pool {
            let _ = write!(extra, ", pool {pool}");
        }
        if let Some(selector) = &pv.spec.selector {
            let _ = write!(extra, ", selector {selector}");
        }
        let _ = writeln!(
            out,
            "  persistent volume {}: {}, {} MiB{extra}, at $MESOS_SANDBOX/{}",
            pv.name,
            pv.spec.kind.map_or("root", PoolKind::as_str),
            pv.size_mib(),
            pv.name
        );
    }
    let mode = |read_only: bool| if read_only { "ro" } else { "rw" };
    match definition {
        Definition::App(app) => {
            for alias in &app.alias_mounts {
                let _ = writeln!(
                    out,
                    "  also mounted at {} ({}): {}",
                    alias.container_path.display(),
                    mode(alias.read_only),
                    alias.volume
                );
            }
        }
        Definition::Pod(pod) => {
            for m in &pod.mounts {
                let _ = writeln!(
                    out,
                    "  container {} mounts {} at {} ({})",
                    m.container,
                    m.volume,
                    m.mount_path.display(),
                    mode(m.read_only)
                );
            }
        }
    }
    for u in definition.unmanaged_volumes() {
        let _ = writeln!(out, "  {u}");
    }
    out
}

fn prepare_summary(reply: &PrepareReply) -> String {
    let mut out = String::new();
    for v in &reply.volumes {
        let origin = match &v.origin {
            Origin::Created => "created".to_string(),
            Origin::Relaunched => "reused (this task's own)".to_string(),
            Origin::Adopted { from_task } => format!(
                "reused (detached, was task {})",
                from_task.as_deref().unwrap_or("unknown")
            ),
        };
        let size = v.size.map(format_size).unwrap_or_else(|| "unsized".into());
        let _ = writeln!(out, "{} ({}): {origin}, {size}", v.volume, v.container_path);
        for m in &v.mounts {
            let ro = if m.read_only { " (read-only)" } else { "" };
            let _ = writeln!(out, "  mounted at {}{ro}", m.path.display());
        }
    }
    out
}

fn cleanup_summary(reply: &CleanupReply) -> String {
    let mut out = String::new();
    if reply.volumes.is_empty() {
        let _ = writeln!(out, "task {}: no volumes", reply.task_id);
    }
    for v in &reply.volumes {
        let _ = writeln!(out, "{}: {}", v.volume, v.state);
        for path in &v.unmounted {
            let _ = writeln!(out, "  unmounted {}", path.display());
        }
        for kept in &v.kept {
            let _ = writeln!(
                out,
                "  still mounted at {kept} (outside this task's directories)"
            );
        }
    }
    out
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, MesosCliError> {
    serde_json::from_slice(body).map_err(|e| MesosCliError::Refused {
        status: 200,
        message: format!("an answer berth's client does not understand: {e}"),
    })
}

/// Sends one request to the daemon and returns the body of a 200 answer.
fn call(
    daemon: &DaemonArgs,
    path: &str,
    request: &impl serde::Serialize,
) -> Result<Vec<u8>, MesosCliError> {
    let connect_err = |message: String| MesosCliError::Connect {
        socket: daemon.admin_socket.clone(),
        message,
    };
    let body = serde_json::to_vec(request).map_err(|e| connect_err(e.to_string()))?;
    let token = crate::admin::token_source::resolve(
        daemon.token.as_deref(),
        daemon.token_file.as_deref(),
        daemon.config.as_deref(),
    )
    .map_err(MesosCliError::Token)?;
    let client = Client::new(&daemon.admin_socket.to_string_lossy(), token.as_deref())
        .map_err(|e| connect_err(e.to_string()))?
        .with_timeout(REQUEST_TIMEOUT);
    let Response { status, body } = client.send_json("POST", path, &body).map_err(|e| match e {
        e if e.is_timeout() => connect_err(format!(
            "no answer within {} s; the operation may still complete: run it again to see",
            REQUEST_TIMEOUT.as_secs()
        )),
        ClientError::Connect { source, .. } => connect_err(format!(
            "{source} (is `berth serve` running, and is this its admin socket?)"
        )),
        other => connect_err(other.to_string()),
    })?;
    if status == 200 {
        return Ok(body);
    }
    match serde_json::from_slice::<ErrorReply>(&body) {
        Ok(reply) => {
            print_violations(&reply.violations);
            Err(MesosCliError::Refused {
                status,
                message: reply.error,
            })
        }
        Err(_) => Err(MesosCliError::Refused {
            status,
            message: String::from_utf8_lossy(&body).trim().to_string(),
        }),
    }
}
