//! The `berth` command: the daemon and the operator's tools. The only place `anyhow` lives.
//!
//! Errors end here: printed once, as one line of their cause chain (`berth: a: b: c`), with
//! the backtrace only under `--debug`, and turned into the documented exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use berth::admin::cli::CliError;
use berth::config::Config;
use berth::mesos::cli::MesosCliError;

/// The exit codes `berth --help` and the README document.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  berth refused or failed (the message says why)
  2  usage: a bad argument, option or command line
  3  the daemon is unreachable (not running, or the wrong --admin-socket)";

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

/// Node-local persistent volumes for Kubernetes (CSI), Docker and Mesos/Marathon.
#[derive(Parser)]
#[command(name = "berth", version = berth_version(), about, long_about = None,
    after_help = EXIT_CODES)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "BERTH_LOG_JSON")]
    log_json: bool,
    /// On failure, print the full error with its backtrace (with RUST_BACKTRACE=1) instead
    /// of one line.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: CSI, Docker plugin and admin API on their sockets.
    Serve {
        /// Config file (TOML); without one berth runs on its embedded default.
        #[arg(long, short, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
        /// This node's id, over the config's `node_id` (on Kubernetes: the node name).
        #[arg(long, env = "BERTH_NODE_ID")]
        node_id: Option<String>,
    },
    /// List, inspect, remove and wipe volumes through the admin API.
    Volume(berth::admin::cli::VolumeArgs),
    /// Print the embedded default configuration, or check a config file.
    Config {
        /// Check this file instead of printing the default.
        #[arg(long)]
        check: Option<PathBuf>,
    },
    /// Check this node as berth needs it; a table of checks and what to do about failures.
    Doctor(berth::admin::doctor::DoctorArgs),
    /// Marathon apps and pods: validate a definition; prepare and clean up a task's volumes.
    #[command(subcommand)]
    Mesos(berth::mesos::cli::MesosCommand),
}

fn berth_version() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (",
        env!("BERTH_GIT_COMMIT"),
        ")"
    )
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config, node_id } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(id) = node_id {
                config.node_id = Some(id);
                config
                    .validate()
                    .map_err(|e| anyhow::anyhow!("--node-id / BERTH_NODE_ID: {e}"))?;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(berth::daemon::serve(config, std::future::pending()))?;
            Ok(())
        }
        Command::Volume(args) => Ok(args.run()?),
        Command::Config { check } => {
            match check {
                Some(path) => {
                    Config::load(&path)?;
                    println!("{}: ok", path.display());
                }
                None => print!("{}", berth::config::EXAMPLE),
            }
            Ok(())
        }
        Command::Mesos(command) => Ok(berth::mesos::cli::run(command)?),
        Command::Doctor(args) => Ok(args.run()?),
    }
}

/// The error and its causes on one line. A cause whose text the message already quotes
/// (`reading x: No such file` over the io::Error `No such file`) is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// The documented exit code for a failure.
fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(e) = err.downcast_ref::<CliError>() {
        return match e {
            CliError::Connect { .. } => EXIT_UNREACHABLE,
            CliError::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILED,
        };
    }
    if let Some(MesosCliError::Connect { .. }) = err.downcast_ref::<MesosCliError>() {
        return EXIT_UNREACHABLE;
    }
    EXIT_FAILED
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. }) {
        // Before the runtime starts its threads: see host::linux::memory.
        if let Err(e) = berth::host::linux::restart_without_thread_cache() {
            eprintln!(
                "berth: starting again with glibc's per-thread malloc caches off failed ({e}); \
                 running with them"
            );
        }
        berth::host::linux::limit_allocator_arenas();
    }
    // `volume import` keeps SIGPIPE ignored: a server that refuses an archive closes the
    // connection while it is being sent, and the import must live to read why.
    let keeps_sigpipe_ignored = match &cli.command {
        Command::Serve { .. } => true,
        Command::Volume(args) => {
            matches!(
                args.command,
                berth::admin::cli::VolumeCommand::Import { .. }
            )
        }
        _ => false,
    };
    if !keeps_sigpipe_ignored && let Err(e) = berth::host::signals::restore_default_sigpipe() {
        eprintln!("berth: restoring the default SIGPIPE action: {e}");
    }
    berth::logging::init(berth::logging::LogStyle::detect(cli.log_json));
    let debug = cli.debug;
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if debug {
                eprintln!("berth: {err:?}");
            } else {
                eprintln!("berth: {}", one_line(&err));
            }
            ExitCode::from(exit_code(&err))
        }
    }
}
