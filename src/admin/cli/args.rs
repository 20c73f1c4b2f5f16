//! The `berth volume` subcommands and their flags, as clap parses them.

use std::path::PathBuf;

use super::{CliError, DEFAULT_ENDPOINT, run};

/// Connection options shared by every `berth volume` subcommand.
#[derive(clap::Args, Debug)]
pub struct VolumeArgs {
    /// The admin API: a unix socket path, or http://HOST:PORT for the TCP listener.
    #[arg(long, global = true, env = "BERTH_ADMIN_SOCKET", default_value = DEFAULT_ENDPOINT)]
    pub admin_socket: String,
    /// The admin bearer token (prefer BERTH_ADMIN_TOKEN, --token-file or the daemon's config:
    /// arguments show in `ps`).
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file whose first line is the admin token (e.g. the daemon's admin.token_file).
    #[arg(
        long,
        global = true,
        env = "BERTH_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// The daemon's config file, where the token is looked for last (default
    /// /etc/berth/config.toml, if it exists).
    #[arg(long, global = true, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: VolumeCommand,
}

/// `berth volume` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum VolumeCommand {
    /// List volumes (a table, or JSON with -o json).
    #[command(alias = "list")]
    Ls {
        /// Only volumes in this state: reserved, attached, detached, creating, deleting.
        #[arg(long)]
        state: Option<String>,
        /// Only volumes of this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Only volumes owned by this Marathon app.
        #[arg(long)]
        app: Option<String>,
        /// Only volumes owned by this task.
        #[arg(long)]
        task: Option<String>,
        /// Only volumes with this label (KEY=VALUE).
        #[arg(long, short = 'l')]
        label: Option<String>,
        /// Only volumes owned by this front-end: csi, docker or mesos.
        #[arg(long)]
        frontend: Option<String>,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: OutputFormat,
        /// Print only the volume ids.
        #[arg(long, short = 'q', conflicts_with = "output")]
        quiet: bool,
    },
    /// Show one volume as JSON.
    Inspect {
        /// The volume id, as `berth volume ls` shows it.
        id: String,
    },
    /// Destroy a volume's data and release its reservation (asks first unless --yes).
    Wipe {
        /// The volume id, as `berth volume ls` shows it.
        id: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Release a detached volume; its data is destroyed or retained as its pool's reclaim
    /// policy says.
    Rm {
        /// The volume id, as `berth volume ls` shows it.
        id: String,
    },
    /// Take a snapshot of a volume, named SNAP (default: NAME-<unix seconds>); prints its id.
    Snapshot {
        id: String,
        snapshot: Option<String>,
    },
    /// List snapshots (of volume NAME only, if given) as JSON.
    Snapshots { id: Option<String> },
    /// Make a new volume NEWNAME holding snapshot SNAP (in the snapshot's pool).
    Restore { snapshot: String, new_name: String },
    /// Delete a snapshot.
    RmSnapshot { snapshot: String },
    /// Give a detached volume to another front-end (csi, docker or mesos), data untouched.
    /// To csi, prints the static PersistentVolume (YAML) that makes it a Kubernetes volume.
    Handover {
        /// The volume id, as `berth volume ls` shows it.
        id: String,
        /// The front-end that is to own it: csi, docker or mesos.
        #[arg(long)]
        to: String,
        /// For --to csi: the PersistentVolume's storageClassName (default "": it binds a
        /// claim that asks for `storageClassName: ""`).
        #[arg(long)]
        storage_class: Option<String>,
        /// For --to csi: the PersistentVolume's name (default: from the volume's id).
        #[arg(long)]
        pv_name: Option<String>,
        /// For --to csi: a label (KEY=VALUE) for the PersistentVolume, beside the volume's
        /// own, for a claim's selector to match; repeatable.
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
    },
    /// Write volume or snapshot NAME to stdout as a tar archive (an attached volume is read
    /// from a snapshot taken for the purpose where its backend can take one).
    Export {
        /// The volume or snapshot id.
        id: String,
    },
    /// Make a new volume NAME from a tar archive on stdin (as `export` writes it).
    Import {
        /// The new volume's id.
        id: String,
        /// The volume's size (e.g. 10GiB); default: the exported volume's size, else its
        /// data's size with headroom.
        #[arg(long)]
        size: Option<String>,
        /// The pool to place it in.
        #[arg(long)]
        pool: Option<String>,
        /// The front-end that will own it: csi, docker or mesos (default docker, like
        /// every volume an operator makes).
        #[arg(long)]
        frontend: Option<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

impl VolumeArgs {
    /// Resolves the token and runs the subcommand on the process's terminal.
    pub fn run(self) -> Result<(), CliError> {
        let token = crate::admin::token_source::resolve(
            self.token.as_deref(),
            self.token_file.as_deref(),
            self.config.as_deref(),
        )
        .map_err(CliError::Usage)?;
        run(self.command, &self.admin_socket, token.as_deref())
    }
}
