//! Sizing policy for a size range (a required size and a limit, as CSI asks them): the size
//! a volume gets on the pools that could take it, and whether a filesystem type can be
//! served there. Sized volumes are made in whole pages and raised to the smallest
//! filesystem berth makes when the limit allows; a range no size can meet is refused.
//!
//! Front-ends that send one exact size (Docker, Mesos) do not come here: the engine refuses
//! a size below a filesystem's minimum when it places their volume.

use super::pool::PoolConfig;
use super::types::{AccessType, Backend, Caller, CreateRequest, PoolCapacity, Volume, VolumeSpec};
use super::{Engine, EngineError, InputError, PoolSelector, VolumeService};
use crate::host::Host;

/// Sized volumes are made in whole pages: loop devices use direct I/O.
pub const SIZE_GRANULARITY: u64 = 4096;

/// A size range: `required` is 0 when unspecified, `limit` `None` when there is none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeRange {
    pub required: u64,
    pub limit: Option<u64>,
}

impl SizeRange {
    pub fn contains(&self, size: u64) -> bool {
        size >= self.required && self.limit.is_none_or(|l| size <= l)
    }
}

/// What a create in a size range asks about size (see [`VolumeService::create_in_range`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SizeRequest {
    pub range: SizeRange,
    /// The size of the volume or snapshot it is cloned from, which it is at least.
    pub at_least: Option<u64>,
    /// The filesystem type asked for, if any.
    pub fs_type: Option<String>,
}

impl<H: Host> Engine<H> {
    pub(super) fn do_create_in_range(
        &self,
        caller: Caller,
        mut request: CreateRequest,
        size: &SizeRequest,
    ) -> Result<Volume, EngineError> {
        let _guard = self.locks.acquire(&request.name, caller.wait_if_busy)?;
        request.spec.size = self.size_in_range(&request, size)?;
        self.create_locked(caller, request, None)
    }

    /// The size a create in a range gets; the caller holds the volume's lock. A volume of
    /// this name that already has a size in the range is the one asked for: its size is
    /// kept, so the create compares only the rest of the spec.
    fn size_in_range(
        &self,
        request: &CreateRequest,
        size: &SizeRequest,
    ) -> Result<Option<u64>, EngineError> {
        if let Some(existing) = self.cached(&request.name) {
            let fits = match existing.size {
                Some(has) => size.range.contains(has),
                None => size.range == SizeRange::default(),
            };
            if fits {
                if let (Some(asked), Some(has)) = (&size.fs_type, existing.placement.fs)
                    && asked != has.as_str()
                {
                    return Err(EngineError::AlreadyExists {
                        volume: request.name.to_string(),
                        difference: format!("it has an {} filesystem, {asked} asked", has.as_str()),
                    });
                }
                return Ok(existing.spec.size);
            }
        }
        let chosen = size_for_range(self, &request.spec, size.range, size.at_least)?;
        if let (Some(_), Some(fs)) = (chosen, &size.fs_type) {
            check_fs_type(self, &request.spec, fs)?;
        }
        Ok(chosen)
    }
}

/// The size to make a volume for `range`: `None` (no size: the pool's default or an
/// unlimited directory) when nothing asks for one, otherwise at least `required` (or the
/// `limit` when only that is given), at least `at_least` (a clone's source size), at least
/// `minimum` (the smallest filesystem berth makes), in whole pages, and never above `limit`.
pub fn choose_size(
    range: SizeRange,
    at_least: Option<u64>,
    minimum: u64,
) -> Result<Option<u64>, InputError> {
    let asked = if range.required > 0 {
        Some(range.required)
    } else {
        range.limit
    };
    let Some(want) = asked.max(at_least) else {
        return Ok(None);
    };
    let need = want.max(minimum);
    let size = need
        .div_ceil(SIZE_GRANULARITY)
        .saturating_mul(SIZE_GRANULARITY);
    match range.limit {
        Some(limit) if size > limit => {
            let aligned_limit = limit / SIZE_GRANULARITY * SIZE_GRANULARITY;
            if aligned_limit >= need {
                Ok(Some(aligned_limit))
            } else if limit >= need {
                Ok(Some(need))
            } else {
                Err(InputError::OutOfRange {
                    limit,
                    need,
                    why: why_bigger(range.required, at_least, minimum),
                })
            }
        }
        _ => Ok(Some(size)),
    }
}

fn why_bigger(required: u64, at_least: Option<u64>, minimum: u64) -> String {
    if at_least.is_some_and(|s| s > required && s >= minimum) {
        " (the size of its source volume)".into()
    } else if minimum > required {
        format!(" (the smallest filesystem berth makes here is {minimum} bytes)")
    } else {
        String::new()
    }
}

/// The smallest size a volume of `spec` can have: the largest filesystem minimum among the
/// `candidates` (the pools that could take it, with the size-enforcing backend each resolved
/// at start, as `VolumeService::capacity` reports them) that would make it a loopfs
/// filesystem. Sizes below are raised (within the limit) rather than refused.
pub fn minimum_size(candidates: &[PoolCapacity], configs: &[PoolConfig], spec: &VolumeSpec) -> u64 {
    if spec.access == AccessType::Block {
        return 0;
    }
    candidates
        .iter()
        .filter(|c| c.backend == Backend::Loopfs)
        .filter_map(|c| configs.iter().find(|p| p.name == c.pool))
        .map(|p| p.fs.min_size())
        .max()
        .unwrap_or(0)
}

/// An upper bound of [`minimum_size`] from the pools' configs alone: sizes at or above it
/// need no look-up of the pools' backends.
pub fn minimum_size_bound(configs: &[PoolConfig], spec: &VolumeSpec) -> u64 {
    if spec.access == AccessType::Block {
        return 0;
    }
    configs
        .iter()
        .filter(|p| p.mismatch(spec).is_none())
        .map(|p| p.fs.min_size())
        .max()
        .unwrap_or(0)
}

/// The pools that could take a volume of `spec`, as `capacity` reports them.
fn candidates(engine: &dyn VolumeService, spec: &VolumeSpec) -> Vec<PoolCapacity> {
    engine.capacity(&PoolSelector {
        pool: spec.pool.clone(),
        kind: spec.kind,
        profile: spec.profile.clone(),
        selector: spec.selector.clone(),
    })
}

/// The smallest volume of `spec` this node makes (0: no minimum).
pub fn smallest_volume(engine: &dyn VolumeService, spec: &VolumeSpec) -> u64 {
    minimum_size(&candidates(engine, spec), engine.pools(), spec)
}

/// [`choose_size`] with the filesystem minimum of the pools that could take `spec`. The
/// exact minimum needs each pool's resolved backend (a walk over the volumes), so it is
/// looked up only for sizes below what any candidate pool could need.
pub fn size_for_range(
    engine: &dyn VolumeService,
    spec: &VolumeSpec,
    range: SizeRange,
    at_least: Option<u64>,
) -> Result<Option<u64>, InputError> {
    match choose_size(range, at_least, 0)? {
        Some(size) if size < minimum_size_bound(engine.pools(), spec) => {
            choose_size(range, at_least, smallest_volume(engine, spec))
        }
        other => Ok(other),
    }
}

/// Refuses a filesystem type `fs` that a pool able to take `spec` would not give it, since
/// the engine places a volume on whichever of them has most room: a loopfs pool makes its
/// own filesystem; any other backend (a quota on a directory) lives on the pool's
/// filesystem, whatever it is, and takes any type.
pub fn check_fs_type(
    engine: &dyn VolumeService,
    spec: &VolumeSpec,
    fs: &str,
) -> Result<(), InputError> {
    let fs_of = |pool: &str| {
        engine
            .pools()
            .iter()
            .find(|p| p.name == pool)
            .map(|p| p.fs.as_str())
    };
    let other: Vec<String> = candidates(engine, spec)
        .iter()
        .filter(|c| c.backend == Backend::Loopfs && fs_of(&c.pool) != Some(fs))
        .map(|c| format!("pool {} makes {}", c.pool, fs_of(&c.pool).unwrap_or("?")))
        .collect();
    if other.is_empty() {
        return Ok(());
    }
    Err(InputError::Invalid {
        field: format!("filesystem type {fs:?}"),
        reason: format!(
            "{}; name a pool whose fs is {fs}, or ask for no filesystem type",
            other.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::types::{FsType, PoolKind};
    use crate::engine::{Engine, EngineConfig, NodeInfo};
    use crate::host::fake::FakeHost;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sizes_honour_required_limit_minimum_and_source() {
        const MIB: u64 = 1 << 20;
        let range = |required, limit| SizeRange { required, limit };
        // Nothing asked: no size.
        assert_eq!(choose_size(range(0, None), None, 16 * MIB).unwrap(), None);
        // Exact pages stay exact; others round up to a page.
        assert_eq!(
            choose_size(range(64 * MIB, None), None, 0).unwrap(),
            Some(64 * MIB)
        );
        assert_eq!(choose_size(range(5000, None), None, 0).unwrap(), Some(8192));
        // Below the filesystem minimum: raised, within the limit.
        assert_eq!(
            choose_size(range(MIB, Some(32 * MIB)), None, 16 * MIB).unwrap(),
            Some(16 * MIB)
        );
        let err = choose_size(range(MIB, Some(8 * MIB)), None, 16 * MIB).unwrap_err();
        assert!(matches!(err, InputError::OutOfRange { .. }), "{err}");
        assert!(err.to_string().contains("smallest filesystem"), "{err}");
        // Only a limit: that size.
        assert_eq!(
            choose_size(range(0, Some(32 * MIB)), None, 0).unwrap(),
            Some(32 * MIB)
        );
        // A limit that is not a whole page: the largest page-aligned size below it.
        assert_eq!(
            choose_size(range(5000, Some(10_000)), None, 0).unwrap(),
            Some(8192)
        );
        assert_eq!(
            choose_size(range(5000, Some(5000)), None, 0).unwrap(),
            Some(5000)
        );
        // A clone is at least its source.
        assert_eq!(
            choose_size(range(0, None), Some(64 * MIB), 0).unwrap(),
            Some(64 * MIB)
        );
        assert_eq!(
            choose_size(range(MIB, None), Some(64 * MIB), 0).unwrap(),
            Some(64 * MIB)
        );
        let err = choose_size(range(MIB, Some(2 * MIB)), Some(64 * MIB), 0).unwrap_err();
        assert!(err.to_string().contains("source volume"), "{err}");
    }

    #[test]
    fn the_minimum_follows_the_pools_that_could_take_the_volume() {
        let mut ext4 = PoolConfig::default_root(Path::new("/a"));
        ext4.name = "ext4".into();
        let mut xfs = PoolConfig::default_root(Path::new("/b"));
        xfs.name = "xfs".into();
        xfs.fs = FsType::Xfs;
        let mut quota = PoolConfig::default_root(Path::new("/c"));
        quota.name = "quota".into();
        quota.fs = FsType::Xfs;
        let configs = [ext4, xfs, quota];
        let candidate = |pool: &str, backend| PoolCapacity {
            pool: pool.into(),
            kind: PoolKind::Root,
            backend,
            profiles: Vec::new(),
            capacity_bytes: 0,
            reserved_bytes: 0,
            available_bytes: 0,
            volumes: 0,
            snapshots: 0,
            snapshot_bytes: 0,
        };
        let all = [
            candidate("ext4", Backend::Loopfs),
            candidate("xfs", Backend::Loopfs),
            candidate("quota", Backend::Prjquota),
        ];
        let spec = |pool: Option<&str>, access| VolumeSpec {
            pool: pool.map(str::to_string),
            access,
            ..VolumeSpec::default()
        };
        let fs = AccessType::Filesystem;
        assert_eq!(
            minimum_size(&all[..1], &configs, &spec(Some("ext4"), fs)),
            16 << 20
        );
        assert_eq!(minimum_size(&all, &configs, &spec(None, fs)), 300 << 20);
        // A project quota on a directory has no minimum, whatever the filesystem.
        assert_eq!(
            minimum_size(&all[2..], &configs, &spec(Some("quota"), fs)),
            0
        );
        assert_eq!(
            minimum_size(&all, &configs, &spec(None, AccessType::Block)),
            0
        );
        assert_eq!(
            minimum_size_bound(&configs, &spec(Some("ext4"), fs)),
            16 << 20
        );
        assert_eq!(
            minimum_size_bound(&configs, &spec(Some("quota"), fs)),
            300 << 20
        );
        assert_eq!(
            minimum_size_bound(&configs, &spec(None, AccessType::Block)),
            0
        );
    }

    /// An engine on the fake host with one loopfs pool of each filesystem at start.
    fn engine(dir: &Path) -> Engine<FakeHost> {
        let mut ext4 = PoolConfig::default_root(Path::new("/p/ext4"));
        ext4.name = "ext4".into();
        let mut xfs = PoolConfig::default_root(Path::new("/p/xfs"));
        xfs.name = "xfs".into();
        xfs.fs = FsType::Xfs;
        let host = FakeHost::new(100 << 30);
        host.add_dir(Path::new("/p/ext4"));
        host.add_dir(Path::new("/p/xfs"));
        let config = EngineConfig {
            store_path: dir.join("berth.redb"),
            pools: vec![ext4, xfs],
            node: NodeInfo::default(),
        };
        Engine::open(config, host).unwrap()
    }

    fn on(pool: Option<&str>, access: AccessType) -> VolumeSpec {
        VolumeSpec {
            pool: pool.map(str::to_string),
            access,
            ..VolumeSpec::default()
        }
    }

    #[test]
    fn a_range_is_raised_to_the_smallest_filesystem_of_the_pools_that_could_take_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let fs = AccessType::Filesystem;
        let range = |required, limit| SizeRange { required, limit };
        // On ext4 alone: 16 MiB; on either pool: xfs's 300 MiB.
        assert_eq!(
            size_for_range(&engine, &on(Some("ext4"), fs), range(MIB, None), None).unwrap(),
            Some(16 * MIB)
        );
        assert_eq!(
            size_for_range(&engine, &on(None, fs), range(MIB, None), None).unwrap(),
            Some(300 * MIB)
        );
        assert_eq!(smallest_volume(&engine, &on(None, fs)), 300 * MIB);
        // A block volume has no filesystem, so no minimum; sizes are still whole pages.
        assert_eq!(
            size_for_range(
                &engine,
                &on(None, AccessType::Block),
                range(5000, None),
                None
            )
            .unwrap(),
            Some(8192)
        );
        // Above every minimum: exact.
        assert_eq!(
            size_for_range(&engine, &on(None, fs), range(512 * MIB, None), None).unwrap(),
            Some(512 * MIB)
        );
        // A limit below the minimum is refused, and nothing is made.
        let err = size_for_range(
            &engine,
            &on(Some("xfs"), fs),
            range(MIB, Some(64 * MIB)),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, InputError::OutOfRange { limit, need, .. } if limit == 64 * MIB && need == 300 * MIB),
            "{err}"
        );
        assert!(err.to_string().contains("smallest filesystem"), "{err}");
        assert!(engine.list(&Default::default()).is_empty());
    }

    #[test]
    fn a_create_in_a_range_is_sized_under_the_lock_and_a_retry_keeps_the_size_it_got() {
        use crate::engine::types::{Frontend, Owner, VolumeName};
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let caller = Caller {
            frontend: Frontend::Csi,
            wait_if_busy: false,
        };
        let request = |name: &str| CreateRequest {
            name: VolumeName::parse(name).unwrap(),
            spec: on(Some("ext4"), AccessType::Filesystem),
            owner: Owner::default(),
        };
        let asking = |required, limit, fs: Option<&str>| SizeRequest {
            range: SizeRange { required, limit },
            at_least: None,
            fs_type: fs.map(str::to_string),
        };
        // Raised to ext4's minimum, within the limit.
        let v = engine
            .create_in_range(caller, request("small"), &asking(MIB, Some(64 * MIB), None))
            .unwrap();
        assert_eq!(v.size, Some(16 * MIB));
        // The same range again: the same volume, not a conflict over its raised size.
        let again = engine
            .create_in_range(caller, request("small"), &asking(MIB, Some(64 * MIB), None))
            .unwrap();
        assert_eq!(again.created_at, v.created_at);
        // It exists with ext4: asking xfs of it is a conflict.
        let err = engine
            .create_in_range(
                caller,
                request("small"),
                &asking(MIB, Some(64 * MIB), Some("xfs")),
            )
            .unwrap_err();
        assert!(matches!(err, EngineError::AlreadyExists { .. }), "{err}");
        // A limit below the minimum: refused, nothing made.
        let err = engine
            .create_in_range(caller, request("tiny"), &asking(MIB, Some(8 * MIB), None))
            .unwrap_err();
        assert!(
            matches!(err, EngineError::Input(InputError::OutOfRange { .. })),
            "{err}"
        );
        assert!(engine.get(&VolumeName::parse("tiny").unwrap()).is_err());
        // A filesystem type the pool does not make: refused, nothing made.
        let err = engine
            .create_in_range(caller, request("other"), &asking(MIB, None, Some("xfs")))
            .unwrap_err();
        assert!(err.to_string().contains("pool ext4 makes ext4"), "{err}");
        assert_eq!(engine.list(&Default::default()).len(), 1);
    }

    #[test]
    fn a_filesystem_type_is_served_only_where_every_candidate_pool_makes_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let fs = AccessType::Filesystem;
        check_fs_type(&engine, &on(Some("xfs"), fs), "xfs").unwrap();
        check_fs_type(&engine, &on(Some("ext4"), fs), "ext4").unwrap();
        let err = check_fs_type(&engine, &on(Some("ext4"), fs), "xfs").unwrap_err();
        assert!(err.to_string().contains("pool ext4 makes ext4"), "{err}");
        // Either pool could take it, and one makes the other filesystem.
        let err = check_fs_type(&engine, &on(None, fs), "ext4").unwrap_err();
        assert!(err.to_string().contains("pool xfs makes xfs"), "{err}");
        assert!(!err.to_string().contains("pool ext4"), "{err}");
    }
}
