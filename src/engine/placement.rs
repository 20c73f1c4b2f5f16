//! Where a new volume goes: the candidate pools, disks and paths, and how much room each
//! has left, decided under the placement lock so concurrent creates never over-commit.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::pool::PoolConfig;
use super::types::*;
use super::*;
use crate::host::Host;

impl<H: Host> Engine<H> {
    /// Picks a pool and base path (or disk) with room, and records the volume as `Creating`.
    /// The placement lock covers only the choice and the in-memory reservation; the durable
    /// commit is made after it, so concurrent creates share their `fsync`s.
    pub(super) fn reserve(
        &self,
        request: &CreateRequest,
        placement_spec: &VolumeSpec,
        frontend: OwnerFrontend,
        pending_until: Option<u64>,
    ) -> Result<Volume, EngineError> {
        let volume = self.place(request, placement_spec, frontend, pending_until)?;
        if let Err(e) = self.save(&volume, "create") {
            self.cache().remove(&volume.name);
            return Err(e);
        }
        Ok(volume)
    }

    /// Chooses where the volume goes and holds its room in the cache, under the placement
    /// lock.
    fn place(
        &self,
        request: &CreateRequest,
        placement_spec: &VolumeSpec,
        frontend: OwnerFrontend,
        pending_until: Option<u64>,
    ) -> Result<Volume, EngineError> {
        let name = &request.name;
        let _placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = self.node.max_volumes
            && self.cache().len() >= limit
        {
            return Err(EngineError::TooManyVolumes {
                volume: name.to_string(),
                limit,
            });
        }
        let mut reasons = Vec::new();
        let candidates = self
            .candidates(placement_spec, &mut reasons)
            .map_err(|e| e.for_volume(name.as_str()))?;
        // Directories go where there is most room; whole disks to the smallest that fits.
        // Without a requested kind, directories are preferred over giving away a disk.
        let best = candidates.into_iter().min_by_key(|c| match c.pool.kind {
            PoolKind::Mount => (1, c.room, c.base.clone()),
            _ => (0, u64::MAX - c.room, c.base.clone()),
        });
        let Some(Candidate {
            pool, base, size, ..
        }) = best
        else {
            return Err(EngineError::NoCapacity {
                volume: name.to_string(),
                reason: if reasons.is_empty() {
                    "no pools are configured".into()
                } else {
                    reasons.join("; ")
                },
            });
        };
        let backend = if request.spec.access == AccessType::Block {
            Backend::Loopfs
        } else {
            pool.backend_for(self.enforcing_of(pool), size)
        };
        let project_id = match backend {
            Backend::Prjquota => Some(
                self.free_project_id(name.as_str(), &base)
                    .map_err(|e| e.for_volume(name.as_str()))?,
            ),
            _ => None,
        };
        let dir = match backend {
            Backend::Disk => base.clone(),
            _ => base.join(name.as_str()),
        };
        let (data, image, fs) = match (request.spec.access, backend) {
            (AccessType::Block, _) => {
                let image = base.join(IMAGES_DIR).join(format!("{name}.img"));
                (image.clone(), Some(image), None)
            }
            (AccessType::Filesystem, Backend::Loopfs) => (
                dir.join("data"),
                Some(base.join(IMAGES_DIR).join(format!("{name}.img"))),
                Some(pool.fs),
            ),
            (
                AccessType::Filesystem,
                Backend::None | Backend::Disk | Backend::Btrfs | Backend::Prjquota,
            ) => (dir.join("data"), None, None),
        };
        if fs == Some(FsType::Xfs)
            && let Some(size) = size
            && size < FsType::Xfs.min_size()
        {
            return Err(EngineError::Input(InputError::Invalid {
                field: "size".into(),
                reason: format!(
                    "pool {} makes xfs volumes, and xfs starts at {} (mkfs.xfs makes no smaller filesystem); ask for at least that, or use an ext4 pool",
                    pool.name,
                    format_size(FsType::Xfs.min_size())
                ),
            }));
        }
        let volume = Volume {
            name: name.clone(),
            spec: request.spec.clone(),
            size,
            placement: Placement {
                pool: pool.name.clone(),
                kind: pool.kind,
                backend,
                base,
                dir,
                data,
                image,
                fs,
                project_id,
            },
            reclaim: request.spec.reclaim.unwrap_or(pool.reclaim),
            owner: request.owner.clone().into(),
            frontend,
            phase: Phase::Creating,
            publications: Vec::new(),
            created_at: now_ms(),
            attached_at: None,
            detached_at: None,
            pending_until,
            growing_to: None,
        };
        self.cache().insert(name.clone(), volume.clone());
        Ok(volume)
    }

    /// Every place that can hold the spec, and why each other place cannot.
    pub(super) fn candidates<'p>(
        &'p self,
        spec: &VolumeSpec,
        reasons: &mut Vec<String>,
    ) -> Result<Vec<Candidate<'p>>, EngineError> {
        let mut found = Vec::new();
        let mut measured = Vec::new();
        for pool in &self.pools {
            if let Some(why) = pool.mismatch(spec) {
                reasons.push(why);
                continue;
            }
            if let Some(why) = self.fs_mismatch(pool, spec.fs) {
                reasons.push(why);
                continue;
            }
            if pool.kind == PoolKind::Mount && spec.access == AccessType::Block {
                reasons.push(format!(
                    "pool {} gives whole disks, not block devices",
                    pool.name
                ));
                continue;
            }
            let bases = match pool.kind {
                PoolKind::Mount => self.disks(pool)?,
                _ => pool.paths.clone(),
            };
            if bases.is_empty() {
                reasons.push(format!(
                    "pool {} has no disks mounted under {:?}",
                    pool.name, pool.paths
                ));
            }
            for base in bases {
                let base_text = base.display().to_string();
                if let Some(c) = spec.constraints.iter().find(|c| !c.matches(&base_text)) {
                    reasons.push(format!("{base_text} in pool {} fails {c}", pool.name));
                    continue;
                }
                if let Some(selector) = &spec.selector
                    && let Some(unmet) = selector.unmet(&pool.labels_at(&base))
                {
                    reasons.push(format!(
                        "{base_text} in pool {} has labels {} and fails the selector's {unmet}",
                        pool.name,
                        describe_labels(&pool.labels_at(&base))
                    ));
                    continue;
                }
                if pool.kind == PoolKind::Mount {
                    if let Some(c) = self.disk_candidate(pool, base, spec, reasons)? {
                        found.push(c);
                    }
                    continue;
                }
                let size = spec.size.or(pool.default_size);
                let limits = self.room_seen(pool, &base, &mut measured)?;
                let room = limits.available();
                if size.unwrap_or(0) > room {
                    reasons.push(format!(
                        "{base_text} in pool {} has {} free ({}), {} asked",
                        pool.name,
                        format_size(room),
                        limits.describe(),
                        format_size(size.unwrap_or(0))
                    ));
                    continue;
                }
                found.push(Candidate {
                    pool,
                    base,
                    room,
                    size,
                });
            }
        }
        Ok(found)
    }

    /// The filesystems mounted directly beneath a mount pool's discovery directories,
    /// read afresh from the mount table on every call.
    pub(super) fn disks(&self, pool: &PoolConfig) -> Result<Vec<PathBuf>, EngineError> {
        let mounts = self.host.mounts().map_err(|source| EngineError::Host {
            volume: None,
            operation: "discovering disks",
            source,
        })?;
        let mut disks: Vec<PathBuf> = mounts
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|mp| pool.paths.iter().any(|d| mp.parent() == Some(d.as_path())))
            .collect();
        disks.sort();
        disks.dedup();
        Ok(disks)
    }

    /// A disk can take a volume when no volume holds it, no data is left on it, and its
    /// size lies within what is asked.
    pub(super) fn disk_candidate<'p>(
        &self,
        pool: &'p PoolConfig,
        disk: PathBuf,
        spec: &VolumeSpec,
        reasons: &mut Vec<String>,
    ) -> Result<Option<Candidate<'p>>, EngineError> {
        let text = disk.display().to_string();
        if let Some(holder) = self.cache().values().find(|v| v.placement.base == disk) {
            reasons.push(format!("disk {text} is held by volume {}", holder.name));
            return Ok(None);
        }
        let measure = |path: &Path| {
            self.host
                .tree_usage(path)
                .map_err(|source| EngineError::Host {
                    volume: None,
                    operation: "inspecting a disk",
                    source,
                })
        };
        if measure(&disk.join("data"))?.inodes > 0 || measure(&disk.join(RETAINED_DIR))?.inodes > 1
        {
            reasons.push(format!(
                "disk {text} still holds data of a released volume; wipe it first"
            ));
            return Ok(None);
        }
        let capacity = self.capacity_of(pool, &disk)?;
        if let Some(size) = spec.size
            && capacity < size
        {
            reasons.push(format!(
                "disk {text} has {}, {} asked",
                format_size(capacity),
                format_size(size)
            ));
            return Ok(None);
        }
        if let Some(max) = spec.max_size
            && capacity > max
        {
            reasons.push(format!(
                "disk {text} has {}, more than the maximum {}",
                format_size(capacity),
                format_size(max)
            ));
            return Ok(None);
        }
        Ok(Some(Candidate {
            pool,
            base: disk,
            room: capacity,
            size: Some(capacity),
        }))
    }

    /// Bytes a base path can still take (see [`room`]).
    pub(super) fn available_on(&self, pool: &PoolConfig, base: &Path) -> Result<u64, EngineError> {
        self.room_on(pool, base).map(|r| r.available())
    }

    pub(super) fn capacity_of(&self, pool: &PoolConfig, base: &Path) -> Result<u64, EngineError> {
        match pool.capacity {
            // A disk's capacity is its own size.
            Some(c) if pool.kind != PoolKind::Mount => Ok(c),
            _ => self
                .host
                .fs_stats(base)
                .map(|s| s.bytes_total)
                .map_err(|source| EngineError::Host {
                    volume: None,
                    operation: "measuring the pool",
                    source,
                }),
        }
    }

    /// Why `pool` cannot give a volume the filesystem `fs`: only `loopfs` pools make one, each
    /// of its configured type; the others hold directories on the filesystem under them.
    fn fs_mismatch(&self, pool: &PoolConfig, fs: Option<FsType>) -> Option<String> {
        let fs = fs?;
        match self.enforcing_of(pool) {
            Backend::Loopfs if pool.fs == fs => None,
            Backend::Loopfs => Some(format!(
                "pool {} makes {}, not {}",
                pool.name,
                pool.fs.as_str(),
                fs.as_str()
            )),
            Backend::Disk => Some(format!(
                "pool {} gives whole disks with the filesystem already on them; fs picks among loopfs pools",
                pool.name
            )),
            other => Some(format!(
                "pool {} makes no filesystems (backend {}): its volumes are directories on the filesystem under it",
                pool.name,
                other.as_str()
            )),
        }
    }

    pub(super) fn reserved_on(&self, base: &Path) -> u64 {
        self.cache().reserved_on(base).bytes + self.snapshots.bytes_on(base)
    }

    pub(super) fn do_capacity(&self, selector: &PoolSelector) -> Vec<PoolCapacity> {
        let spec = VolumeSpec {
            pool: selector.pool.clone(),
            kind: selector.kind,
            profile: selector.profile.clone(),
            ..VolumeSpec::default()
        };
        let selected = |pool: &PoolConfig, base: &PathBuf| {
            selector
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&pool.labels_at(base)))
        };
        self.pools
            .iter()
            .filter(|pool| pool.mismatch(&spec).is_none())
            .filter_map(|pool| {
                let mut bases = match pool.kind {
                    PoolKind::Mount => self.disks(pool).unwrap_or_default(),
                    _ => pool.paths.clone(),
                };
                if selector.selector.is_some() {
                    bases.retain(|base| selected(pool, base));
                    if bases.is_empty() {
                        return None;
                    }
                }
                Some((pool, bases))
            })
            .map(|(pool, bases)| {
                let mut capacity = 0u64;
                let mut reserved = 0u64;
                let mut available = 0u64;
                let mut snapshot_bytes = 0u64;
                for base in &bases {
                    let cap = self.capacity_of(pool, base).unwrap_or(0);
                    let res = self.reserved_on(base);
                    capacity += cap;
                    reserved += res;
                    snapshot_bytes += self.snapshots.bytes_on(base);
                    if pool.kind == PoolKind::Mount {
                        let free = self
                            .disk_candidate(
                                pool,
                                base.clone(),
                                &VolumeSpec::default(),
                                &mut Vec::new(),
                            )
                            .ok()
                            .flatten()
                            .is_some();
                        available += if free { cap } else { 0 };
                    } else {
                        available += self.room_on(pool, base).map(|r| r.available()).unwrap_or(0);
                    }
                }
                let volumes = self.cache().in_pool(&pool.name);
                PoolCapacity {
                    pool: pool.name.clone(),
                    kind: pool.kind,
                    backend: pool.backend_for(self.enforcing_of(pool), Some(1)),
                    profiles: pool.profiles.clone(),
                    capacity_bytes: capacity,
                    reserved_bytes: reserved,
                    available_bytes: available,
                    volumes,
                    snapshots: self.snapshots.count_in(&pool.name),
                    snapshot_bytes,
                }
            })
            .collect()
    }

    /// The lowest project id that no berth volume holds and the filesystem under `base`
    /// does not already use (listed in `/etc/projid` or set on a directory there). Called
    /// under the placement lock, so two creates never get the same id. `volume` is the one
    /// being placed, for the error when no id is left.
    pub(super) fn free_project_id(&self, volume: &str, base: &Path) -> Result<u32, EngineError> {
        let in_use = |dir: &Path| {
            self.host
                .project_ids_in_use(dir)
                .map_err(|source| EngineError::Host {
                    volume: None,
                    operation: "listing project ids in use",
                    source,
                })
        };
        let mut taken: BTreeSet<u32> = in_use(base)?;
        taken.extend(in_use(&base.join(RETAINED_DIR))?);
        taken.extend(self.cache().values().filter_map(|v| v.placement.project_id));
        (FIRST_PROJECT_ID..u32::MAX)
            .find(|id| !taken.contains(id))
            .ok_or_else(|| EngineError::Unsupported {
                volume: volume.to_string(),
                reason: "no project id is free".into(),
            })
    }
}

/// Labels as `{a=b, c=d}`, or `none`.
fn describe_labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "none".into();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}
