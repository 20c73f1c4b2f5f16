//! Pools: where volumes are carved from, and how a request picks its place.
//!
//! A pool has a kind (`root`, `path`), one or more base paths, a size-enforcement backend,
//! profiles and labels. A request is matched against pools by kind, pool name, profile and
//! path constraints, then placed on the base path with the most room; the sum of
//! reservations on a base path never exceeds its capacity.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use super::labels::{key_error as label_key_error, value_error as label_value_error};
use super::types::{Backend, FsType, PoolKind, ReclaimPolicy, Volume, VolumeSpec, parse_size};

/// The size the embedded default pool gives a request that names none: a volume made
/// without thinking about size is still bounded, so it cannot fill the node's disk.
pub const EMBEDDED_DEFAULT_SIZE: u64 = 10 << 30;

/// How a pool enforces sizes. `auto` picks the best the filesystem under it supports:
/// btrfs qgroups on btrfs, project quotas where the kernel and mount have them, otherwise
/// `loopfs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    None,
    Loopfs,
    Btrfs,
    Prjquota,
}

/// A pool as declared in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub kind: PoolKind,
    /// Base directories; for `root` exactly one. For `mount` pools, discovery directories:
    /// every filesystem mounted directly beneath one is a disk of the pool.
    pub paths: Vec<PathBuf>,
    #[serde(default)]
    pub backend: BackendChoice,
    /// The filesystem made inside `loopfs` images.
    #[serde(default = "default_fs")]
    pub fs: FsType,
    #[serde(default)]
    pub profiles: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels of one disk (a mount pool's disk mount point) or base path, added to the
    /// pool's own for a request's `selector`: `"/mnt/disks/d1" = { media = "ssd" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disk_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub reclaim: ReclaimPolicy,
    /// Size for requests that name none (`512MiB`, `1GiB`, bytes).
    #[serde(
        default,
        deserialize_with = "deserialize_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_size: Option<u64>,
    /// What the pool may reserve in all; default: the size of the filesystem under each path.
    #[serde(
        default,
        deserialize_with = "deserialize_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub capacity: Option<u64>,
}

fn default_fs() -> FsType {
    FsType::Ext4
}

fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Bytes(0)) => Err(serde::de::Error::custom("a size must be greater than zero")),
        Some(Raw::Bytes(b)) => Ok(Some(b)),
        Some(Raw::Text(t)) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

impl PoolConfig {
    /// One `root` pool under the state directory, as the embedded default has it; unsized
    /// requests there are unlimited directories (the embedded default bounds them).
    pub fn default_root(state_dir: &Path) -> Self {
        Self {
            name: "default".into(),
            kind: PoolKind::Root,
            paths: vec![state_dir.join("volumes")],
            backend: BackendChoice::Auto,
            fs: FsType::Ext4,
            profiles: Vec::new(),
            labels: BTreeMap::new(),
            disk_labels: BTreeMap::new(),
            reclaim: ReclaimPolicy::Delete,
            default_size: None,
            capacity: None,
        }
    }

    /// The embedded default: [`Self::default_root`] with unsized requests bounded by
    /// [`EMBEDDED_DEFAULT_SIZE`].
    pub fn embedded_default(state_dir: &Path) -> Self {
        Self {
            default_size: Some(EMBEDDED_DEFAULT_SIZE),
            ..Self::default_root(state_dir)
        }
    }

    /// Checks what serde cannot: names, path counts, absolute paths.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "pools.{}.name: use letters, digits, - _ and .",
                self.name
            ));
        }
        if self.paths.is_empty() {
            return Err(format!("pools.{}.paths: at least one path", self.name));
        }
        if self.kind == PoolKind::Root && self.paths.len() != 1 {
            return Err(format!(
                "pools.{}.paths: a root pool has exactly one path",
                self.name
            ));
        }
        if self.kind == PoolKind::Mount && self.default_size.is_some() {
            return Err(format!(
                "pools.{}.default_size: a mount pool gives each volume a whole disk",
                self.name
            ));
        }
        for p in &self.paths {
            if !p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "pools.{}.paths: {} must be absolute, without ..",
                    self.name,
                    p.display()
                ));
            }
        }
        for (path, labels) in
            std::iter::once((&String::new(), &self.labels)).chain(&self.disk_labels)
        {
            let field = if path.is_empty() {
                format!("pools.{}.labels", self.name)
            } else {
                if !Path::new(path).is_absolute() {
                    return Err(format!(
                        "pools.{}.disk_labels: {path:?} must be an absolute path",
                        self.name
                    ));
                }
                format!("pools.{}.disk_labels.{path:?}", self.name)
            };
            for (key, value) in labels {
                if let Some(why) = label_key_error(key).or_else(|| label_value_error(value)) {
                    return Err(format!("{field}: {why}"));
                }
            }
        }
        Ok(())
    }

    /// The labels a selector sees at `base` (a disk or base path): the pool's, with that
    /// disk's own on top.
    pub fn labels_at(&self, base: &Path) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        if let Some(own) = self.disk_labels.get(base.to_string_lossy().as_ref()) {
            labels.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        labels
    }

    /// The backend a volume gets in this pool, given the pool's resolved enforcing backend:
    /// a volume without any size is a plain directory, and `mount` pools give whole disks.
    pub fn backend_for(&self, enforcing: Backend, size: Option<u64>) -> Backend {
        if self.kind == PoolKind::Mount {
            return Backend::Disk;
        }
        match size {
            None => Backend::None,
            Some(_) => enforcing,
        }
    }

    /// Why this pool cannot take the spec, or `None` if it can (capacity aside).
    pub fn mismatch(&self, spec: &VolumeSpec) -> Option<String> {
        if let Some(pool) = &spec.pool
            && pool != &self.name
        {
            return Some(format!(
                "pool {} is not the requested pool {pool}",
                self.name
            ));
        }
        if let Some(kind) = spec.kind
            && kind != self.kind
        {
            return Some(format!(
                "pool {} is of kind {}, not {}",
                self.name,
                self.kind.as_str(),
                kind.as_str()
            ));
        }
        if let Some(profile) = &spec.profile
            && !self.profiles.contains(profile)
        {
            return Some(format!(
                "pool {} does not carry profile {profile:?} (it has {:?})",
                self.name, self.profiles
            ));
        }
        None
    }
}

/// Where a volume's size came from, so `berth volume inspect` can say which rule applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeRule {
    /// The request named the size.
    Requested,
    /// The request named none; the pool's `default_size` applied.
    PoolDefault,
    /// A `mount` pool volume is the whole disk it was given.
    WholeDisk,
    /// The request named none and the pool has no `default_size`: a plain directory whose
    /// only bound is the filesystem under it.
    Unlimited,
}

impl SizeRule {
    pub fn of(volume: &Volume) -> Self {
        if volume.placement.kind == PoolKind::Mount {
            Self::WholeDisk
        } else if volume.spec.size.is_some() {
            Self::Requested
        } else if volume.size.is_some() {
            Self::PoolDefault
        } else {
            Self::Unlimited
        }
    }
}
