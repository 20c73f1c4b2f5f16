//! Creating a volume: validating the request, reserving room, carving it on the host.
//!
//! The `Creating` record is committed before any host work, so a crash mid-create is rolled
//! back at the next start (see `recovery`).

use super::types::*;
use super::*;
use crate::host::Host;

impl<H: Host> Engine<H> {
    pub(super) fn do_create(
        &self,
        caller: Caller,
        request: CreateRequest,
        pending_until: Option<u64>,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(&request.name, caller.wait_if_busy)?;
        self.create_locked(caller, request, pending_until)
    }

    /// The create itself; the caller holds the volume's lock.
    pub(super) fn create_locked(
        &self,
        caller: Caller,
        request: CreateRequest,
        pending_until: Option<u64>,
    ) -> Result<Volume, EngineError> {
        let name = request.name.clone();
        if let Some(existing) = self.cached(&name) {
            access::check(caller, &existing)?;
            match existing.phase {
                Phase::Ready if existing.spec == request.spec => return Ok(existing),
                Phase::Ready => {
                    return Err(EngineError::AlreadyExists {
                        volume: name.to_string(),
                        difference: spec_difference(&existing.spec, &request.spec),
                    });
                }
                Phase::Deleting { .. } => {
                    return Err(EngineError::WrongPhase {
                        volume: name.to_string(),
                        phase: "deleted",
                    });
                }
                // A create that failed half-way and was not rolled back: start over.
                Phase::Creating => self.undo_create(&existing)?,
            }
        }
        let restore = self.restore_source(caller, &name, &request.spec)?;
        // A restore goes to its snapshot's pool, with at least the snapshot's size.
        let mut placement_spec = request.spec.clone();
        if let Some((snapshot, _)) = &restore {
            placement_spec.pool = Some(snapshot.pool.clone());
            placement_spec.size = placement_spec.size.or(snapshot.source_size);
            // A btrfs snapshot is restored as a snapshot of it, which the kernel makes only
            // on the same filesystem: the volume goes to the snapshot's pool path.
            if snapshot.backend == Backend::Btrfs && !snapshot.is_image() {
                placement_spec.constraints.push(PathConstraint {
                    like: true,
                    pattern: regex::escape(&snapshot.base.to_string_lossy()),
                });
            }
        }
        let source = self.validate_spec(&name, &placement_spec)?;
        let owner = OwnerFrontend::of_creator(caller.frontend);
        let volume = self.reserve(&request, &placement_spec, owner, pending_until)?;
        let carved = match &restore {
            Some((snapshot, _)) => self.carve_from_snapshot(&volume, snapshot),
            None => self.carve(&volume, source.as_ref()),
        };
        if let Err(e) = carved {
            if let Err(undo) = self.undo_create(&volume) {
                tracing::error!(volume = %name, error = %undo, "rolling back a failed create");
            }
            return Err(e);
        }
        let mut ready = volume;
        ready.phase = Phase::Ready;
        if ready.completes_at_start() {
            self.save_completion(&ready, "create")?;
        } else {
            self.save(&ready, "create")?;
        }
        Ok(ready)
    }

    /// Checks what the request asks beyond what its types guarantee; returns the clone source.
    pub(super) fn validate_spec(
        &self,
        name: &VolumeName,
        spec: &VolumeSpec,
    ) -> Result<Option<Volume>, EngineError> {
        let invalid = |field: &str, reason: String| {
            EngineError::Input(InputError::Invalid {
                field: field.into(),
                reason,
            })
        };
        if let Some(mode) = spec.ownership.mode
            && mode > 0o7777
        {
            return Err(invalid(
                "mode",
                format!("{mode:o} is not a permission mode"),
            ));
        }
        if let (Some(size), Some(max)) = (spec.size, spec.max_size)
            && max < size
        {
            return Err(invalid(
                "max_size",
                format!("{max} is below the size {size}"),
            ));
        }
        if spec.max_size.is_some() && spec.kind != Some(PoolKind::Mount) {
            return Err(invalid(
                "max_size",
                "a maximum size applies only to volumes of type mount".into(),
            ));
        }
        if spec.access == AccessType::Block && spec.size.is_none() {
            return Err(invalid("size", "a block volume needs a size".into()));
        }
        if let Some(pool) = &spec.pool
            && self.pool(pool).is_none()
        {
            return Err(invalid(
                "pool",
                format!(
                    "no pool named {pool:?}; this node has {:?}",
                    self.pools.iter().map(|p| &p.name).collect::<Vec<_>>()
                ),
            ));
        }
        let Some(source_name) = &spec.source else {
            return Ok(None);
        };
        let source = self
            .cached(source_name)
            .ok_or_else(|| EngineError::NotFound {
                volume: source_name.to_string(),
            })?;
        if source.phase != Phase::Ready {
            return Err(EngineError::WrongPhase {
                volume: source_name.to_string(),
                phase: "created or deleted",
            });
        }
        if source.spec.access != AccessType::Filesystem || spec.access != AccessType::Filesystem {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: "cloning is supported between filesystem volumes only".into(),
            });
        }
        if let (Some(want), Some(have)) = (spec.size, source.size)
            && want < have
        {
            return Err(invalid(
                "size",
                format!("a clone of {source_name} needs at least its size, {have} bytes"),
            ));
        }
        Ok(Some(source))
    }

    /// Makes the volume's host resources. Each step is idempotent.
    pub(super) fn carve(&self, v: &Volume, source: Option<&Volume>) -> Result<(), EngineError> {
        let p = &v.placement;
        let err = |op| Self::host_err(&v.name, op);
        let no_owner = Ownership::default();
        match (v.spec.access, &p.image, p.fs) {
            (AccessType::Block, Some(image), _) => {
                let size = v.size.unwrap_or(0);
                self.host
                    .create_image(image, size, None)
                    .map_err(err("creating the image"))?;
            }
            (AccessType::Filesystem, Some(image), Some(fs)) => {
                let size = v.size.unwrap_or(0);
                self.host
                    .make_dir(&p.dir, &no_owner)
                    .map_err(err("creating the volume directory"))?;
                self.host
                    .create_image(image, size, Some(fs))
                    .map_err(err("creating the filesystem image"))?;
                self.host
                    .mount_image(image, &p.dir, fs)
                    .map_err(err("mounting the filesystem image"))?;
                self.host
                    .make_dir(&p.data, &v.spec.ownership)
                    .map_err(err("creating the data directory"))?;
            }
            _ => {
                let size = v.size.unwrap_or(0);
                let make_data = || {
                    self.host
                        .make_dir(&p.data, &v.spec.ownership)
                        .map_err(err("creating the data directory"))
                };
                match p.backend {
                    Backend::Btrfs => {
                        self.host
                            .btrfs_create_subvolume(&p.dir)
                            .map_err(err("creating the subvolume"))?;
                        self.host
                            .btrfs_set_limit(&p.dir, size)
                            .map_err(err("setting the qgroup limit"))?;
                        make_data()?;
                    }
                    Backend::Prjquota => {
                        self.host
                            .make_dir(&p.dir, &no_owner)
                            .map_err(err("creating the volume directory"))?;
                        self.host
                            .set_project_quota(&p.dir, p.project_id.unwrap_or(0), size)
                            .map_err(err("setting the project quota"))?;
                        make_data()?;
                    }
                    _ => self
                        .host
                        .make_dirs(&[(&p.dir, &no_owner), (&p.data, &v.spec.ownership)])
                        .map_err(err("creating the volume and data directories"))?,
                }
            }
        }
        if let Some(source) = source {
            self.host
                .copy_tree(&source.placement.data, &p.data)
                .map_err(err("copying the source volume"))?;
        }
        Ok(())
    }

    /// Removes whatever a create made, then the record.
    pub(super) fn undo_create(&self, v: &Volume) -> Result<(), EngineError> {
        self.destroy(v, false)?;
        self.forget(&v.name, "rolling back a create")
    }
}
