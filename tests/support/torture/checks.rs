//! The invariants, checked against berth's three front-ends, the kernel and the disk:
//!
//! - the admin API, CSI `ListVolumes` and Docker `List` list the same volumes, none of them
//!   half-made (creating, deleting, publishing) while nothing runs;
//! - every acknowledged volume is there with its size, backend and publications, and its
//!   checksum file reads back identical from its data path; no deleted one is;
//! - the mounts under the test's directory are exactly the loopfs volumes' own filesystems
//!   and the recorded bind publications, each once (nothing stray, nothing stacked);
//! - the loop devices over files under the test's directory are exactly one per loopfs
//!   volume, over its image (none over a deleted image);
//! - the pool holds exactly the recorded volumes' directories and images (nothing left by a
//!   delete), each image with a filesystem of at least the volume's size;
//!   nothing is retained;
//! - the target directory holds only the staging directories the test made and the targets
//!   of recorded publications (a target berth made is removed when it is unpublished).
//!
//! Volumes with a pending operation (its answer was lost) may be in the state before or
//! after it; only the model comparison is relaxed for them, never the other invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::admin::views::{VolumeList, VolumeView};
use berth::engine::types::{Backend, OwnerFrontend, PublicationState, PublishTarget, VolumeState};
use serde_json::{Value, json};

use super::berth::{Endpoints, loops_under, mounts_under};
use super::csi::{Csi, describe};
use super::model::{Action, Front, Layout, Op, SUM_FILE, Via, Vol};

/// What the test knows: every volume name it uses and what it believes of each.
pub struct World<'a> {
    pub dir: &'a Path,
    pub layout: &'a Layout,
    pub volumes: &'a BTreeMap<String, Option<Vol>>,
    /// Volumes whose state the test does not know exactly (an answer was lost, or several
    /// clients raced on them): not compared with the model, but with everything else.
    pub relaxed: BTreeSet<String>,
    /// Target paths that may exist without a recorded publication (a publish or unpublish
    /// whose answer was lost).
    pub loose_targets: BTreeSet<PathBuf>,
    /// The staging directories the test made, as a kubelet does.
    pub staging: BTreeSet<PathBuf>,
}

impl<'a> World<'a> {
    /// The world of the torture test: exact but for the operations in `pending`.
    pub fn with_pending(
        dir: &'a Path,
        layout: &'a Layout,
        volumes: &'a BTreeMap<String, Option<Vol>>,
        pending: &[&Op],
    ) -> Self {
        let mut loose_targets = BTreeSet::new();
        for op in pending {
            if let Action::Publish(Via::Csi(p)) | Action::Unpublish(Via::Csi(p)) = &op.action {
                loose_targets.insert(p.target.clone());
            }
        }
        Self {
            dir,
            layout,
            volumes,
            relaxed: pending.iter().map(|op| op.volume.clone()).collect(),
            loose_targets,
            staging: volumes.keys().map(|n| layout.staging(n)).collect(),
        }
    }
}

/// How long a loop device may take to disappear after its filesystem is unmounted (the
/// kernel detaches an autoclear device in the release path of its last close).
const LOOP_SETTLE: Duration = Duration::from_secs(3);

/// Checks every invariant; returns how many facts were verified, or the first violation.
pub fn check(world: &World<'_>, csi: &Csi, endpoints: &Endpoints) -> Result<u64, String> {
    let mut facts = Facts(0);

    // What berth says, through each front-end.
    let store = admin_volumes(endpoints)?;
    let csi_list: BTreeMap<String, i64> = csi
        .list()
        .map_err(|s| format!("CSI ListVolumes failed: {}", describe(&s)))?
        .into_iter()
        .collect();
    let docker_list = docker_volumes(endpoints)?;
    // The admin API lists every volume; each front-end exactly those it owns.
    let owned_by = |front: OwnerFrontend| -> BTreeSet<&String> {
        store
            .iter()
            .filter(|(_, v)| v.frontend == front)
            .map(|(name, _)| name)
            .collect()
    };
    let (admin_csi, admin_docker) = (
        owned_by(OwnerFrontend::Csi),
        owned_by(OwnerFrontend::Docker),
    );
    let csi_names: BTreeSet<&String> = csi_list.keys().collect();
    let docker_names: BTreeSet<&String> = docker_list.keys().collect();
    facts.hold(admin_csi == csi_names && admin_docker == docker_names, || {
        format!(
            "the front-ends list other volumes than they own: admin's CSI-owned {admin_csi:?}, CSI {csi_names:?}, admin's Docker-owned {admin_docker:?}, Docker {docker_names:?}"
        )
    })?;
    facts.hold(admin_csi.len() + admin_docker.len() == store.len(), || {
        format!(
            "volumes owned by neither CSI nor Docker: {:?}",
            store.keys()
        )
    })?;

    let layout = world.layout;
    for (name, view) in &store {
        facts.hold(world.volumes.contains_key(name), || {
            format!("berth holds volume {name}, which the test never created")
        })?;
        facts.hold(
            !matches!(view.state, VolumeState::Creating | VolumeState::Deleting),
            || format!("volume {name} is {:?} while nothing runs", view.state),
        )?;
        for p in &view.publications {
            facts.hold(p.state == PublicationState::Published, || {
                format!(
                    "volume {name}: publication {} is {:?} while nothing runs",
                    p.target, p.state
                )
            })?;
        }
        facts.hold(view.path == layout.data(name), || {
            format!(
                "volume {name}: data path {} is not {}",
                view.path.display(),
                layout.data(name).display()
            )
        })?;
        if view.frontend != OwnerFrontend::Docker {
            continue;
        }
        let mountpoint = docker_list.get(name).cloned().unwrap_or_default();
        facts.hold(Path::new(&mountpoint) == view.path, || {
            format!(
                "volume {name}: Docker's Mountpoint {mountpoint:?} is not its data path {}",
                view.path.display()
            )
        })?;
    }

    // The model against the store.
    for (name, believed) in world.volumes {
        let view = store.get(name);
        if !world.relaxed.contains(name) {
            match (believed, view) {
                (Some(_), None) => {
                    return Err(format!("acknowledged volume {name} is missing"));
                }
                (None, Some(view)) => {
                    return Err(format!(
                        "volume {name} was never created or its delete was acknowledged, yet berth holds it ({:?})",
                        view.state
                    ));
                }
                (Some(v), Some(view)) => {
                    let csi_capacity = csi_list.get(name).copied();
                    compare(name, v, view, csi_capacity, layout, &mut facts)?
                }
                (None, None) => facts.hold(!layout.pool.join(name).exists(), || {
                    format!(
                        "deleted volume {name} left {}",
                        layout.pool.join(name).display()
                    )
                })?,
            }
        }
        if let (Some(Vol { sum: Some(sum), .. }), Some(view)) = (believed, view) {
            let file = view.path.join(SUM_FILE);
            let read = std::fs::read(&file);
            facts.hold(read.as_ref().is_ok_and(|r| r == sum), || match &read {
                Ok(r) => format!(
                    "volume {name}: {} holds {} bytes that differ from the {} written",
                    file.display(),
                    r.len(),
                    sum.len()
                ),
                Err(e) => format!("volume {name}: its checksum file {}: {e}", file.display()),
            })?;
        }
    }

    // The kernel's mounts against the store.
    let mut expected: Vec<PathBuf> = Vec::new();
    for (name, view) in &store {
        if view.backend == Backend::Loopfs {
            expected.push(layout.pool.join(name));
        }
        for p in &view.publications {
            if let PublishTarget::Bind { path, .. } = &p.target {
                expected.push(path.clone());
            }
        }
    }
    let mounted = mounts_under(world.dir);
    let (extra, missing) = difference(&mounted, &expected);
    facts.hold(extra.is_empty() && missing.is_empty(), || {
        format!(
            "the mounts under {} are not what berth records: not recorded (or stacked) {extra:?}, recorded but not mounted {missing:?}",
            world.dir.display()
        )
    })?;

    // Loop devices: one per loopfs volume, over its image.
    let expected_loops: Vec<String> = store
        .iter()
        .filter(|(_, v)| v.backend == Backend::Loopfs)
        .map(|(name, _)| image_of(layout, name).display().to_string())
        .collect();
    let started = Instant::now();
    loop {
        let attached: Vec<String> = loops_under(world.dir).into_iter().map(|(_, b)| b).collect();
        let (extra, missing) = difference(&attached, &expected_loops);
        if extra.is_empty() && missing.is_empty() {
            facts.0 += 1;
            break;
        }
        if started.elapsed() > LOOP_SETTLE {
            return Err(format!(
                "the loop devices over files under {} are not one per loopfs volume: unexpected {extra:?}, missing {missing:?}",
                world.dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // The pool's directories and images against the store.
    let mut expected_entries: BTreeSet<String> = store.keys().cloned().collect();
    expected_entries.extend([".images".to_string(), ".retained".to_string()]);
    let mut entries = dir_names(&layout.pool);
    // The trash is berth's own too: what it holds was deleted and waits to be unlinked.
    entries.remove(".trash");
    facts.hold(entries == expected_entries, || {
        format!("the pool holds {entries:?}, berth records {expected_entries:?}")
    })?;
    let images: BTreeSet<String> = store
        .iter()
        .filter(|(_, v)| v.backend == Backend::Loopfs)
        .map(|(name, _)| format!("{name}.img"))
        .collect();
    let found = dir_names(&layout.pool.join(".images"));
    facts.hold(found == images, || {
        format!("the pool's images are {found:?}, berth records {images:?}")
    })?;
    let retained = dir_names(&layout.pool.join(".retained"));
    facts.hold(retained.is_empty(), || {
        format!("data was retained: {retained:?}")
    })?;

    // Targets: only staging directories and recorded (or pending) publications.
    let mut allowed: BTreeSet<PathBuf> = world.staging.clone();
    for view in store.values() {
        for p in &view.publications {
            if let PublishTarget::Bind { path, .. } = &p.target {
                allowed.insert(path.clone());
            }
        }
    }
    allowed.extend(world.loose_targets.iter().cloned());
    for entry in dir_names(&layout.k8s) {
        let path = layout.k8s.join(&entry);
        facts.hold(allowed.contains(&path), || {
            format!(
                "{} was left behind: no publication records it",
                path.display()
            )
        })?;
    }
    Ok(facts.0)
}

/// Counts the facts verified; the first that does not hold is the violation.
struct Facts(u64);

impl Facts {
    fn hold(&mut self, ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
        self.0 += 1;
        if ok { Ok(()) } else { Err(what()) }
    }
}

/// Compares what the test believes of volume `name` with berth's record of it.
fn compare(
    name: &str,
    v: &Vol,
    view: &VolumeView,
    csi_capacity: Option<i64>,
    layout: &Layout,
    facts: &mut Facts,
) -> Result<(), String> {
    facts.hold(view.size_bytes == v.size, || {
        format!(
            "volume {name} is {:?} bytes, acknowledged {:?}",
            view.size_bytes, v.size
        )
    })?;
    let backend = if v.size.is_some() {
        Backend::Loopfs
    } else {
        Backend::None
    };
    facts.hold(view.backend == backend, || {
        format!(
            "volume {name} has backend {:?}, expected {backend:?}",
            view.backend
        )
    })?;
    // CSI lists only its own volumes.
    let capacity = v.size.unwrap_or(0) as i64;
    let expected = (v.front == Front::Csi).then_some(capacity);
    facts.hold(csi_capacity == expected, || {
        format!("volume {name}: CSI lists capacity {csi_capacity:?}, expected {expected:?}")
    })?;
    let mut expected: BTreeSet<String> = v.docker.iter().map(|id| format!("docker:{id}")).collect();
    if let Some(p) = &v.csi {
        expected.insert(p.staging.display().to_string());
        expected.insert(p.target.display().to_string());
    }
    let recorded: BTreeSet<String> = view
        .publications
        .iter()
        .map(|p| match &p.target {
            PublishTarget::Bind { path, .. } => path.display().to_string(),
            PublishTarget::Reference { holder } => holder.clone(),
        })
        .collect();
    facts.hold(recorded == expected, || {
        format!("volume {name} is published at {recorded:?}, acknowledged {expected:?}")
    })?;
    if let Some(size) = v.size {
        // Its own filesystem: the image holds the volume's size plus the filesystem's own
        // overhead, and the filesystem in it shows at least the size and at most
        // max(2%, 8 MiB) more (the README's rule), which is what its users can fill; every
        // block of the image is allocated (a grow cut short is allocated on the next mount
        // or grow, and the loop device refuses discards).
        let image = image_of(layout, name);
        let meta = std::fs::metadata(&image).ok();
        let len = meta.as_ref().map(|m| m.len());
        facts.hold(len.is_some_and(|l| l >= size), || {
            format!(
                "volume {name}: its image {} is {len:?} bytes, the volume {size}",
                image.display()
            )
        })?;
        let allocated = meta.as_ref().map(|m| m.blocks() * 512);
        facts.hold(allocated >= len, || {
            format!(
                "volume {name}: its image {} has {allocated:?} of {len:?} bytes allocated",
                image.display()
            )
        })?;
        let fs_bytes = nix::sys::statvfs::statvfs(&view.path)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        let slack = (size / 50).max(8 << 20);
        facts.hold(fs_bytes >= size && fs_bytes <= size + slack, || {
            format!(
                "volume {name}: the filesystem at {} has {fs_bytes} bytes, the volume {size}",
                view.path.display()
            )
        })?;
    }
    Ok(())
}

pub fn image_of(layout: &Layout, name: &str) -> PathBuf {
    layout.pool.join(".images").join(format!("{name}.img"))
}

fn admin_volumes(endpoints: &Endpoints) -> Result<BTreeMap<String, VolumeView>, String> {
    let (status, reply) = endpoints
        .admin("GET", "/v1/volumes")
        .map_err(|e| format!("admin GET /v1/volumes: {e}"))?;
    if status != 200 {
        return Err(format!("admin GET /v1/volumes: {status} {reply}"));
    }
    let list: VolumeList = serde_json::from_value(reply)
        .map_err(|e| format!("admin GET /v1/volumes: unexpected reply: {e}"))?;
    Ok(list
        .volumes
        .into_iter()
        .map(|v| (v.id.clone(), v))
        .collect())
}

/// Docker's `List`: name → Mountpoint.
fn docker_volumes(endpoints: &Endpoints) -> Result<BTreeMap<String, String>, String> {
    let (status, reply) = endpoints
        .docker("/VolumeDriver.List", &json!({}))
        .map_err(|e| format!("Docker List: {e}"))?;
    if status != 200 {
        return Err(format!("Docker List: {status} {reply}"));
    }
    Ok(reply["Volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let field = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (field("Name"), field("Mountpoint"))
        })
        .collect())
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What `actual` has beyond `expected`, and what it lacks (as multisets).
fn difference<T: Ord + Clone + std::fmt::Debug>(actual: &[T], expected: &[T]) -> (Vec<T>, Vec<T>) {
    let count = |items: &[T]| {
        let mut m: BTreeMap<T, usize> = BTreeMap::new();
        for i in items {
            *m.entry(i.clone()).or_default() += 1;
        }
        m
    };
    let (a, e) = (count(actual), count(expected));
    let mut extra = Vec::new();
    let mut missing = Vec::new();
    for (item, n) in &a {
        for _ in *e.get(item).unwrap_or(&0)..*n {
            extra.push(item.clone());
        }
    }
    for (item, n) in &e {
        for _ in *a.get(item).unwrap_or(&0)..*n {
            missing.push(item.clone());
        }
    }
    (extra, missing)
}
