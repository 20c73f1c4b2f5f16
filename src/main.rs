//! The `berth` command: the daemon and the operator's tools. The only place `anyhow` lives.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use berth::config::Config;

/// Node-local persistent volumes for Kubernetes (CSI), Docker and Mesos/Marathon.
#[derive(Parser)]
#[command(name = "berth", version = berth_version(), about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "BERTH_LOG_JSON")]
    log_json: bool,
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

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
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
    }
}
