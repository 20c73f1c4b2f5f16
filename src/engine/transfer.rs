//! Export and import: a volume's or a snapshot's files as one tar stream, and a new volume
//! made from such a stream, so data can move to another node or to any backup tool.
//!
//! # What an export reads
//! - A volume nothing is attached to: its data directory, under the volume's lock, so
//!   nothing attaches while it is read.
//! - An attached volume whose backend can take a point-in-time copy (`loopfs`, `btrfs`): a
//!   snapshot taken for the purpose, read after the volume's lock is released and removed
//!   afterwards. It is recorded `Creating` for its whole life, so a crash leaves nothing:
//!   recovery removes it like any interrupted snapshot.
//! - An attached `none` or `prjquota` volume: its data as it is, which may change while it
//!   is read; the [`ExportPlan`] says so before the first byte.
//! - A snapshot: its copy (an image snapshot through a temporary copy of it, so the
//!   snapshot itself is never mounted).
//!
//! The archive starts with a pax global header carrying the source's size and the bytes
//! its data uses (`BERTH.size`, `BERTH.bytes`), from which an import sizes the new volume
//! when not told; tar tools ignore it.
//!
//! # Import
//! A new filesystem volume, recorded `Creating` before anything is made and `Ready` only
//! once the whole archive is unpacked: an archive that is refused ([`crate::host`]'s rules:
//! no absolute names, no `..`, nothing through a symlink), cut off or too large for the
//! volume rolls the volume back, and a crash mid-import is rolled back at the next start.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::snapshot::{SNAPSHOTS_DIR, Snapshot, SnapshotPhase};
use super::types::*;
use super::*;
use crate::host::{ArchiveStats, Host};

/// Records of the archive's leading pax global header.
const SIZE_RECORD: &str = "BERTH.size";
const BYTES_RECORD: &str = "BERTH.bytes";
/// The most of a leading global header an import reads.
const MAX_GLOBAL_HEADER: u64 = 64 << 10;
/// An import sized from the bytes the exported data used gets this much more, in percent,
/// and at least [`MIN_HEADROOM`]: room for a filesystem's own overhead and some growth.
const HEADROOM_PERCENT: u64 = 25;
const MIN_HEADROOM: u64 = 64 << 20;

/// What an export reads, told before its first byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportPlan {
    /// `volume` or `snapshot`.
    pub source: &'static str,
    /// Read from a point-in-time copy or from a volume nothing is attached to.
    pub consistent: bool,
    /// Why the read is not consistent, when it is not.
    pub note: Option<String>,
    /// Bytes the data uses: an estimate of the archive's size.
    pub bytes: u64,
}

/// A request to make a volume from an archive.
#[derive(Clone, Debug)]
pub struct ImportRequest {
    pub name: VolumeName,
    /// `size` `None`: the archive's source size, else its data with headroom.
    pub spec: VolumeSpec,
    pub owner: Owner,
    /// The front-end that will own the volume; `None`: the caller's
    /// ([`OwnerFrontend::of_creator`]). Only the admin API and berth may give it to another.
    pub frontend: Option<OwnerFrontend>,
}

/// What the archive's global header says about its source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ArchiveHints {
    size: Option<u64>,
    bytes: Option<u64>,
}

impl ArchiveHints {
    /// The size a volume importing the archive gets when not told.
    fn volume_size(&self) -> Option<u64> {
        self.size.or_else(|| {
            self.bytes
                .map(|b| b.saturating_add((b / 100 * HEADROOM_PERCENT).max(MIN_HEADROOM)))
        })
    }
}

/// Writes the pax global header that opens an export.
fn write_hints(out: &mut dyn Write, hints: &ArchiveHints) -> io::Result<()> {
    let mut data = Vec::new();
    for (key, value) in [(SIZE_RECORD, hints.size), (BYTES_RECORD, hints.bytes)] {
        let Some(value) = value else { continue };
        // A record is "LEN key=value\n", LEN counting its own digits.
        let rest = format!(" {key}={value}\n");
        let mut len = rest.len() + 1;
        while format!("{len}").len() + rest.len() != len {
            len += 1;
        }
        data.extend_from_slice(format!("{len}{rest}").as_bytes());
    }
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XGlobalHeader);
    header.set_path("pax_global_header")?;
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    out.write_all(header.as_bytes())?;
    out.write_all(&data)?;
    let pad = (512 - data.len() % 512) % 512;
    out.write_all(&vec![0u8; pad])
}

/// Reads the archive's first block and, when it is a pax global header, the header; returns
/// the bytes read (to be read again by the unpacking) and what the header says.
fn peek_hints(input: &mut dyn Read) -> io::Result<(Vec<u8>, ArchiveHints)> {
    let mut prefix = Vec::with_capacity(512);
    (&mut *input).take(512).read_to_end(&mut prefix)?;
    let mut hints = ArchiveHints::default();
    if prefix.len() < 512 {
        return Ok((prefix, hints));
    }
    let header = tar::Header::from_byte_slice(&prefix);
    if !header.entry_type().is_pax_global_extensions() {
        return Ok((prefix, hints));
    }
    let size = header.size()?;
    if size > MAX_GLOBAL_HEADER {
        return Err(io::Error::other(format!(
            "the archive's global header has {size} bytes, more than the {MAX_GLOBAL_HEADER} berth reads"
        )));
    }
    let padded = size.div_ceil(512) * 512;
    (&mut *input).take(padded).read_to_end(&mut prefix)?;
    let data = prefix.get(512..512 + size as usize).unwrap_or(&[]);
    for record in tar::PaxExtensions::new(data) {
        let record = record?;
        let value = record.value().ok().and_then(|v| v.parse::<u64>().ok());
        match record.key() {
            Ok(SIZE_RECORD) => hints.size = value,
            Ok(BYTES_RECORD) => hints.bytes = value,
            _ => {}
        }
    }
    Ok((prefix, hints))
}

fn invalid_archive(reason: String) -> EngineError {
    EngineError::Input(InputError::Invalid {
        field: "archive".into(),
        reason,
    })
}

impl<H: Host> Engine<H> {
    pub(super) fn do_export(
        &self,
        caller: Caller,
        name: &VolumeName,
        started: &mut dyn FnMut(&ExportPlan),
        out: &mut dyn Write,
    ) -> Result<ArchiveStats, EngineError> {
        if self.cached(name).is_some() {
            return self.export_volume(caller, name, started, out);
        }
        let _guard = self.snapshots.locks.acquire(name, caller.wait_if_busy)?;
        let snapshot = self
            .do_get_snapshot(name)
            .map_err(|_| EngineError::NotFound {
                volume: format!("{name} (no volume or snapshot of that name)"),
            })?;
        self.check_snapshot_access(caller, &snapshot)?;
        let hints = ArchiveHints {
            size: snapshot.source_size,
            bytes: Some(snapshot.size),
        };
        let plan = ExportPlan {
            source: "snapshot",
            consistent: true,
            note: None,
            bytes: snapshot.size,
        };
        if !snapshot.is_image() {
            started(&plan);
            return self.write_archive(name, &snapshot.path.join("data"), &hints, out);
        }
        // An image snapshot is read through a copy, mounted, so the snapshot stays as taken.
        let view = self.temporary_copy(&snapshot, &snapshot.path, None)?;
        started(&plan);
        self.export_view(name, &view, &hints, out)
    }

    fn export_volume(
        &self,
        caller: Caller,
        name: &VolumeName,
        started: &mut dyn FnMut(&ExportPlan),
        out: &mut dyn Write,
    ) -> Result<ArchiveStats, EngineError> {
        let guard = self.locks.acquire(name, caller.wait_if_busy)?;
        let v = self.ready_volume(name)?;
        access::check(caller, &v)?;
        let p = &v.placement;
        if v.spec.access == AccessType::Block {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: "it is a block volume: an export holds files; copy its device instead"
                    .into(),
            });
        }
        let bytes = self
            .host
            .tree_usage(&p.data)
            .map_err(Self::host_err(name, "measuring the data to export"))?
            .bytes;
        let hints = ArchiveHints {
            size: v.size,
            bytes: Some(bytes),
        };
        let mut plan = ExportPlan {
            source: "volume",
            consistent: true,
            note: None,
            bytes,
        };
        let snapshots = p.image.is_some() || p.backend == Backend::Btrfs;
        if v.publications.is_empty() || !snapshots {
            if !v.publications.is_empty() {
                plan.consistent = false;
                plan.note = Some(format!(
                    "volume {name} is in use and its backend ({}) takes no point-in-time copy: the archive is read while the data may change; stop its users first for a consistent copy",
                    p.backend.as_str()
                ));
            }
            if let Some(note) = &plan.note {
                tracing::warn!(volume = %name, "{note}");
            }
            started(&plan);
            return self.write_archive(name, &p.data, &hints, out);
        }
        let (source, freeze) = match &p.image {
            Some(image) => (image.clone(), Some(p.dir.as_path())),
            None => (p.dir.clone(), None),
        };
        let view = self.temporary_copy(&Snapshot::template_of(&v), &source, freeze)?;
        drop(guard);
        tracing::info!(volume = %name, copy = %view.name, "the volume is attached: exporting a snapshot taken for the export");
        started(&plan);
        self.export_view(name, &view, &hints, out)
    }

    /// A copy of `source` (an image, frozen at `freeze` while copied, or a subvolume) made
    /// like `template`, recorded as a `Creating` snapshot for the whole of its short life,
    /// and mounted at its view directory when it is an image.
    fn temporary_copy(
        &self,
        template: &Snapshot,
        source: &Path,
        freeze: Option<&Path>,
    ) -> Result<Snapshot, EngineError> {
        let name = VolumeName::parse(&format!("berth-export-{}-{}", now_ms(), std::process::id()))
            .map_err(EngineError::Input)?;
        let dir = template.base.join(SNAPSHOTS_DIR);
        let err = |op| Self::host_err(&template.source, op);
        self.host
            .make_dir(&dir, &Ownership::default())
            .map_err(err("creating the snapshot directory"))?;
        let mut s = template.clone();
        s.path = if s.is_image() {
            dir.join(format!("{name}.img"))
        } else {
            dir.join(name.as_str())
        };
        s.name = name;
        s.phase = SnapshotPhase::Creating;
        s.created_at = now_ms();
        self.save_snapshot(&s, "export")?;
        let copied = match (s.is_image(), s.fs) {
            (true, Some(fs)) => self
                .host
                .copy_image(source, &s.path, freeze)
                .map_err(err("copying the image for the export"))
                .and_then(|()| {
                    self.host
                        .make_dir(&s.view_dir(), &Ownership::default())
                        .map_err(err("creating the export's mount point"))
                })
                .and_then(|()| {
                    self.host
                        .mount_image(&s.path, &s.view_dir(), fs)
                        .map_err(err("mounting the export's copy"))
                }),
            (true, None) => Err(EngineError::Unsupported {
                volume: template.source.to_string(),
                reason: "it is a block volume: an export holds files".into(),
            }),
            (false, _) => self
                .host
                .btrfs_snapshot(source, &s.path, true)
                .map_err(err("snapshotting the subvolume for the export")),
        };
        match copied {
            Ok(()) => Ok(s),
            Err(e) => {
                self.drop_temporary(&s);
                Err(e)
            }
        }
    }

    /// Exports the temporary snapshot `view` and removes it, whatever the export did.
    fn export_view(
        &self,
        name: &VolumeName,
        view: &Snapshot,
        hints: &ArchiveHints,
        out: &mut dyn Write,
    ) -> Result<ArchiveStats, EngineError> {
        let root = if view.is_image() {
            view.view_dir().join("data")
        } else {
            view.path.join("data")
        };
        let result = self.write_archive(name, &root, hints, out);
        self.drop_temporary(view);
        result
    }

    fn drop_temporary(&self, s: &Snapshot) {
        if let Err(e) = self.remove_snapshot_copy(s) {
            tracing::error!(snapshot = %s.name, error = %e, "removing an export's copy; the next start removes it");
        }
    }

    fn write_archive(
        &self,
        name: &VolumeName,
        root: &std::path::Path,
        hints: &ArchiveHints,
        out: &mut dyn Write,
    ) -> Result<ArchiveStats, EngineError> {
        write_hints(out, hints).map_err(|e| EngineError::Host {
            volume: Some(name.to_string()),
            operation: "writing the archive",
            source: crate::host::HostError::io("write", root, e),
        })?;
        self.host
            .export_tree(root, out)
            .map_err(Self::host_err(name, "writing the archive"))
    }

    pub(super) fn do_import(
        &self,
        caller: Caller,
        request: ImportRequest,
        input: &mut dyn Read,
    ) -> Result<Volume, EngineError> {
        let name = request.name.clone();
        if request.spec.access != AccessType::Filesystem {
            return Err(EngineError::Unsupported {
                volume: name.to_string(),
                reason: "an archive holds files: it imports into a filesystem volume".into(),
            });
        }
        if request.spec.source.is_some() || request.spec.snapshot.is_some() {
            return Err(EngineError::Input(InputError::Invalid {
                field: "source".into(),
                reason: "an import fills a new volume from the archive alone".into(),
            }));
        }
        let frontend = match request.frontend {
            Some(f)
                if !matches!(caller.frontend, Frontend::Admin | Frontend::Internal)
                    && f != OwnerFrontend::of_creator(caller.frontend) =>
            {
                return Err(EngineError::Input(InputError::Invalid {
                    field: "frontend".into(),
                    reason: format!(
                        "only an operator may import a volume for another front-end ({f})"
                    ),
                }));
            }
            Some(f) => f,
            None => OwnerFrontend::of_creator(caller.frontend),
        };
        let (prefix, hints) =
            peek_hints(input).map_err(|e| invalid_archive(format!("reading it: {e}")))?;
        let mut spec = request.spec;
        spec.size = spec.size.or_else(|| hints.volume_size());
        let create = CreateRequest {
            name: name.clone(),
            spec,
            owner: request.owner,
        };
        let _guard = self.locks.acquire(&name, caller.wait_if_busy)?;
        if let Some(existing) = self.cached(&name) {
            access::check(caller, &existing)?;
            match existing.phase {
                // An import cut off before a crash, not yet rolled back.
                Phase::Creating => self.undo_create(&existing)?,
                _ => {
                    return Err(EngineError::AlreadyExists {
                        volume: name.to_string(),
                        difference: "an import makes a new volume".into(),
                    });
                }
            }
        }
        self.validate_spec(&name, &create.spec)?;
        let volume = self.reserve(&create, &create.spec, frontend, None)?;
        let mut replay = io::Cursor::new(prefix).chain(input);
        let filled = self.carve(&volume, None).and_then(|()| {
            self.host
                .import_tree(&volume.placement.data, &mut replay)
                .map_err(Self::host_err(&name, "unpacking the archive"))
        });
        if let Err(e) = filled {
            if let Err(undo) = self.undo_create(&volume) {
                tracing::error!(volume = %name, error = %undo, "rolling back a failed import");
            }
            return Err(e);
        }
        let mut ready = volume;
        ready.phase = Phase::Ready;
        self.save(&ready, "import")?;
        Ok(ready)
    }
}

impl Snapshot {
    /// A snapshot of `v` as it is now, before it is named and placed.
    fn template_of(v: &Volume) -> Self {
        let p = &v.placement;
        Self {
            name: v.name.clone(),
            source: v.name.clone(),
            pool: p.pool.clone(),
            base: p.base.clone(),
            backend: p.backend,
            access: v.spec.access,
            fs: p.fs,
            path: PathBuf::new(),
            size: v.size.unwrap_or(0),
            source_size: v.size,
            phase: SnapshotPhase::Creating,
            created_at: now_ms(),
            frontend: Some(v.frontend),
        }
    }
}

#[cfg(test)]
mod tests;
