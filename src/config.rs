//! The daemon's configuration: a TOML file, or the embedded default when there is none.
//!
//! The default needs no file at all: state under `/var/lib/berth`, one `root` pool at
//! `/var/lib/berth/volumes` whose backend enforces sizes, sockets under `/run/berth/` and
//! the Docker plugin socket at `/run/docker/plugins/berth.sock`. Unknown keys are errors,
//! and every error names the field, so a typo is refused at start rather than ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine::pool::PoolConfig;
use crate::engine::{EngineConfig, NodeInfo};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";
pub const DEFAULT_RUN_DIR: &str = "/run/berth";
pub const DEFAULT_DOCKER_SOCKET: &str = "/run/docker/plugins/berth.sock";
pub const DEFAULT_DRIVER_NAME: &str = "berth.csi.io";
/// The Mesos agent's default `--work_dir`; task sandboxes live beneath it.
pub const DEFAULT_MESOS_WORK_DIR: &str = "/var/lib/mesos";
/// The topology key local volumes carry; its value is the node id.
pub const DEFAULT_TOPOLOGY_KEY: &str = "topology.berth.io/node";
/// As Marathon's `task_reservation_timeout` default.
pub const DEFAULT_RESERVATION_TIMEOUT_SECS: u64 = 20;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the reservation store and the default pool live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// This node's id; default: the host name.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The topology key whose value is the node id.
    #[serde(default = "default_topology_key")]
    pub topology_key: String,
    /// Extra topology segments (e.g. `"topology.kubernetes.io/zone" = "a"`).
    #[serde(default)]
    pub topology: BTreeMap<String, String>,
    /// The most volumes this node holds.
    #[serde(default)]
    pub max_volumes: Option<usize>,
    /// Seconds a pending reservation (made for a task that has yet to start) may wait for
    /// its first attach before it is rolled back; Marathon's `task_reservation_timeout`.
    #[serde(default = "default_reservation_timeout_secs")]
    pub reservation_timeout_secs: u64,
    /// Seconds between two sweeps of every volume's health, which ListVolumes pages of more
    /// than 256 volumes report instead of probing each volume.
    #[serde(default = "default_health_sweep_secs")]
    pub health_sweep_secs: u64,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub csi: CsiConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub mesos: MesosConfig,
    /// Pools; default: one `root` pool under `state_dir/volumes`.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
}

/// Where each front-end listens; a front-end set to `""` is off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "default_csi_socket")]
    pub csi: String,
    #[serde(default = "default_docker_socket")]
    pub docker: String,
    #[serde(default = "default_admin_socket")]
    pub admin: String,
    /// Also serve the admin API on TCP (`127.0.0.1:7480`); needs `admin.token`.
    #[serde(default)]
    pub admin_tcp: Option<String>,
    /// Serve only `/metrics` and `/healthz`, without a token, on this TCP address
    /// (`127.0.0.1:9480`), for Prometheus; the volume API stays off it.
    #[serde(default)]
    pub metrics_tcp: Option<String>,
    /// Permission bits of the unix sockets.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: u32,
    /// A group (name or gid) given each socket, with read and write for it (`0660` from
    /// the default mode).
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsiConfig {
    /// The CSI driver name (GetPluginInfo).
    #[serde(default = "default_driver_name")]
    pub driver_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token every admin request must carry; required for TCP.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (read at start), instead of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// The Mesos hook (`berth mesos prepare` / `cleanup`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MesosConfig {
    /// The agent's `--work_dir`. The hook mounts volumes only into sandboxes and container
    /// root filesystems beneath it, so a caller cannot point it at `/etc`.
    #[serde(default = "default_mesos_work_dir")]
    pub work_dir: PathBuf,
}

fn default_mesos_work_dir() -> PathBuf {
    PathBuf::from(DEFAULT_MESOS_WORK_DIR)
}

impl Default for MesosConfig {
    fn default() -> Self {
        Self {
            work_dir: default_mesos_work_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_topology_key() -> String {
    DEFAULT_TOPOLOGY_KEY.into()
}
fn default_csi_socket() -> String {
    format!("{DEFAULT_RUN_DIR}/csi.sock")
}
fn default_docker_socket() -> String {
    DEFAULT_DOCKER_SOCKET.into()
}
fn default_admin_socket() -> String {
    format!("{DEFAULT_RUN_DIR}/admin.sock")
}
fn default_reservation_timeout_secs() -> u64 {
    DEFAULT_RESERVATION_TIMEOUT_SECS
}
fn default_health_sweep_secs() -> u64 {
    30
}
fn default_socket_mode() -> u32 {
    0o600
}
fn default_driver_name() -> String {
    DEFAULT_DRIVER_NAME.into()
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            csi: default_csi_socket(),
            docker: default_docker_socket(),
            admin: default_admin_socket(),
            admin_tcp: None,
            metrics_tcp: None,
            socket_mode: default_socket_mode(),
            group: None,
        }
    }
}

impl Default for CsiConfig {
    fn default() -> Self {
        Self {
            driver_name: default_driver_name(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            node_id: None,
            topology_key: default_topology_key(),
            topology: BTreeMap::new(),
            max_volumes: None,
            reservation_timeout_secs: default_reservation_timeout_secs(),
            health_sweep_secs: default_health_sweep_secs(),
            listen: Listen::default(),
            csi: CsiConfig::default(),
            admin: AdminConfig::default(),
            mesos: MesosConfig::default(),
            pools: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// The pools in force: the configured ones, or the embedded default.
    pub fn effective_pools(&self) -> Vec<PoolConfig> {
        if self.pools.is_empty() {
            vec![PoolConfig::embedded_default(&self.state_dir)]
        } else {
            self.pools.clone()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.state_dir.is_absolute() {
            return Err(format!(
                "state_dir: {} must be an absolute path",
                self.state_dir.display()
            ));
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.len() > 128)
        {
            return Err("node_id: 1 to 128 characters".into());
        }
        if self.listen.socket_mode > 0o777 {
            return Err(format!(
                "listen.socket_mode: {:o} is not a permission mode",
                self.listen.socket_mode
            ));
        }
        if self.listen.group.as_deref() == Some("") {
            return Err("listen.group: a group name or gid, or leave it out".into());
        }
        if self.listen.admin_tcp.is_some()
            && self.admin.token.is_none()
            && self.admin.token_file.is_none()
        {
            return Err(
                "listen.admin_tcp: the admin API on TCP needs admin.token or admin.token_file"
                    .into(),
            );
        }
        let work_dir = &self.mesos.work_dir;
        if !work_dir.is_absolute()
            || work_dir.parent().is_none()
            || work_dir
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "mesos.work_dir: {} must be an absolute path below / without ..",
                work_dir.display()
            ));
        }
        if !(1..=86_400).contains(&self.reservation_timeout_secs) {
            return Err(format!(
                "reservation_timeout_secs: {} is outside 1 to 86400 seconds",
                self.reservation_timeout_secs
            ));
        }
        if !(1..=3_600).contains(&self.health_sweep_secs) {
            return Err(format!(
                "health_sweep_secs: {} is outside 1 to 3600 seconds",
                self.health_sweep_secs
            ));
        }
        if self.max_volumes == Some(0) {
            return Err("max_volumes: must be at least 1".into());
        }
        if !is_driver_name(&self.csi.driver_name) {
            return Err(format!(
                "csi.driver_name: {:?} is not a CSI driver name; use at most 63 letters, digits, - and . in domain style, starting and ending with a letter or digit, e.g. berth.csi.io",
                self.csi.driver_name
            ));
        }
        if self.topology_key.is_empty() || self.topology_key.chars().any(char::is_whitespace) {
            return Err(format!(
                "topology_key: {:?} is not a topology key; use e.g. topology.berth.io/node",
                self.topology_key
            ));
        }
        let mut names = std::collections::HashSet::new();
        for pool in &self.pools {
            pool.validate()?;
            if !names.insert(&pool.name) {
                return Err(format!("pools.{}: the name is used twice", pool.name));
            }
        }
        Ok(())
    }

    /// How long a pending reservation may wait for its first attach.
    pub fn reservation_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.reservation_timeout_secs)
    }

    /// How often every volume's health is swept.
    pub fn health_sweep_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.health_sweep_secs)
    }

    /// This node's id: the configured one or the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(hostname)
    }

    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("berth.redb")
    }

    pub fn engine_config(&self) -> EngineConfig {
        let node_id = self.node_id();
        let mut topology = self.topology.clone();
        topology.insert(self.topology_key.clone(), node_id.clone());
        EngineConfig {
            store_path: self.store_path(),
            pools: self.effective_pools(),
            node: NodeInfo {
                node_id,
                topology,
                max_volumes: self.max_volumes,
            },
        }
    }
}

/// CSI's rule for plugin names: domain-name notation, at most 63 characters, beginning and
/// ending with an alphanumeric, with dashes, dots and alphanumerics between.
fn is_driver_name(name: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() <= 63
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A commented example with every key, shipped as `/etc/berth/config.toml.example`.
pub const EXAMPLE: &str = include_str!("../packaging/config.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(c, Config::default());
        let pools = c.effective_pools();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].paths[0], Path::new("/var/lib/berth/volumes"));
        assert_eq!(c.listen.csi, "/run/berth/csi.sock");
        assert_eq!(c.mesos.work_dir, Path::new("/var/lib/mesos"));
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = Config::parse(EXAMPLE, Path::new("example")).unwrap();
        // The example shows the embedded default's pool, bounded default size included.
        assert_eq!(c.pools, Config::default().effective_pools());
        assert_eq!(
            c.pools[0].default_size,
            Some(crate::engine::pool::EMBEDDED_DEFAULT_SIZE)
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("colour = 'red'", "colour"),
            ("state_dir = 'relative'", "state_dir"),
            ("[listen]\nsocket_mode = 4095", "socket_mode"),
            ("[listen]\nadmin_tcp = '127.0.0.1:1'", "admin_tcp"),
            ("[mesos]\nwork_dir = 'mesos'", "mesos.work_dir"),
            ("[mesos]\nwork_dir = '/'", "mesos.work_dir"),
            ("[mesos]\nwork_dir = '/var/../etc'", "mesos.work_dir"),
            ("[mesos]\nsandbox = '/x'", "sandbox"),
            ("reservation_timeout_secs = 0", "reservation_timeout_secs"),
            ("health_sweep_secs = 0", "health_sweep_secs"),
            ("health_sweep_secs = 3601", "health_sweep_secs"),
            (
                "[[pools]]\nname='a'\nkind='root'\npaths=['/x','/y']",
                "root pool has exactly one path",
            ),
            (
                "[[pools]]\nname='a'\nkind='root'\npaths=['/x']\ndefault_size='-1'",
                "-1",
            ),
            (
                "[[pools]]\nname='a'\nkind='root'\npaths=['/x']\nbackend='zfs'",
                "backend",
            ),
            (
                "[[pools]]\nname='a'\nkind='root'\npaths=['/x']\nsize='1G'",
                "size",
            ),
            (
                "[[pools]]\nname='a'\nkind='root'\npaths=['/x']\n[[pools]]\nname='a'\nkind='root'\npaths=['/y']",
                "used twice",
            ),
            ("[csi]\ndriver_name = 'berth_csi'", "csi.driver_name"),
            ("[csi]\ndriver_name = '.berth'", "csi.driver_name"),
            ("topology_key = ''", "topology_key"),
        ];
        for (text, needle) in cases {
            let e = Config::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.contains("t.toml"), "{e}");
        }
    }
}
