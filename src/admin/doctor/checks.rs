//! The checks `berth doctor` runs, in the order an operator would fix them: kernel and
//! tools, then each pool, then sockets and the orchestrators' directories, then the store
//! and the running daemon.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Check, Status};
use crate::admin::cli::Client;
use crate::config::Config;
use crate::engine::pool::{BackendChoice, PoolConfig};
use crate::engine::types::{PoolKind, format_size};
use crate::host::probe;

/// Where dockerd looks for plugin sockets (Docker's plugin discovery).
const DOCKER_PLUGIN_DIRS: [&str; 3] = [
    "/run/docker/plugins",
    "/etc/docker/plugins",
    "/usr/lib/docker/plugins",
];

/// A pool's filesystem counts as full below this much available space, or 1 % of it.
const FULL_BELOW_BYTES: u64 = 64 << 20;

/// Runs every check for `config` on this node.
pub fn run_checks(config: &Config, kubelet_dir: &Path) -> Vec<Check> {
    let pools = config.effective_pools();
    let mut report = Vec::new();
    loop_control(&pools, &mut report);
    mkfs_tools(&pools, &mut report);
    for pool in &pools {
        pool_checks(pool, &mut report);
    }
    sockets(config, &mut report);
    docker_discovery(config, &mut report);
    kubelet(config, kubelet_dir, &mut report);
    store_clock(config, &mut report);
    daemon_health(config, &mut report);
    reservations(config, &pools, &mut report);
    report
}

fn may_use_loopfs(pool: &PoolConfig) -> bool {
    matches!(pool.backend, BackendChoice::Auto | BackendChoice::Loopfs)
}

fn loop_control(pools: &[PoolConfig], report: &mut Vec<Check>) {
    let name = "loop devices";
    if !pools.iter().any(may_use_loopfs) {
        report.push(Check::new(name, Status::Skip, "no pool uses loopfs images"));
        return;
    }
    report.push(match probe::open_loop_control() {
        Ok(()) => Check::new(name, Status::Ok, "opened /dev/loop-control read-write"),
        Err(e) => Check::new(name, Status::Fail, format!("/dev/loop-control: {e}")).fix(
            "load the loop module (modprobe loop); in a container, give berth /dev/loop-control \
             and the /dev/loopN devices (or run it privileged)",
        ),
    });
}

fn mkfs_tools(pools: &[PoolConfig], report: &mut Vec<Check>) {
    let wanted: BTreeSet<&str> = pools
        .iter()
        .filter(|p| may_use_loopfs(p))
        .map(|p| p.fs.as_str())
        .collect();
    if wanted.is_empty() {
        report.push(Check::new(
            "mkfs tools",
            Status::Skip,
            "no pool uses loopfs images",
        ));
    }
    for fs in wanted {
        let program = format!("mkfs.{fs}");
        let package = if fs == "xfs" { "xfsprogs" } else { "e2fsprogs" };
        report.push(match probe::find_program(&program) {
            Some(path) => Check::new(&program, Status::Ok, path.display().to_string()),
            None => Check::new(
                &program,
                Status::Fail,
                format!("{program} is not installed"),
            )
            .fix(format!("apt-get install {package}")),
        });
    }
}

fn pool_checks(pool: &PoolConfig, report: &mut Vec<Check>) {
    for path in &pool.paths {
        let name = |what: &str| format!("pool {} {}: {what}", pool.name, path.display());
        if !path.is_dir() {
            report.push(
                Check::new(name("directory"), Status::Fail, "does not exist").fix(format!(
                    "mkdir -p {} (or fix the pool's paths)",
                    path.display()
                )),
            );
            continue;
        }
        let mount = match probe::mount_of(path) {
            Ok(m) => m,
            Err(e) => {
                report.push(Check::new(name("mount"), Status::Fail, e.to_string()));
                continue;
            }
        };
        report.push(size_enforcement(pool, &mount, name("size limits")));
        // For a mount pool the disks are mounted beneath its directory: their space is theirs.
        if pool.kind != PoolKind::Mount {
            report.push(free_space(pool, path, name("free space")));
        }
        report.push(propagation(
            path,
            &mount,
            name("propagation"),
            "volumes mounted beneath it are not seen by kubelet, dockerd or Mesos in their mount namespaces",
        ));
    }
}

/// How this pool can limit a volume's size, and why not when it cannot.
fn size_enforcement(pool: &PoolConfig, mount: &probe::MountOf, name: String) -> Check {
    let fs = mount.entry.fs_type.as_str();
    let at = mount.entry.mount_point.display();
    let btrfs = fs == "btrfs";
    let prjquota = matches!(fs, "xfs" | "ext4") && mount.entry.has_super_option("prjquota");
    let found = if btrfs {
        format!("btrfs at {at}: qgroups can limit each volume")
    } else if prjquota {
        format!("{fs} at {at} mounted with prjquota: project quotas can limit each volume")
    } else {
        format!("{fs} at {at}: no btrfs and no prjquota mount option, so no per-directory limits")
    };
    match pool.backend {
        BackendChoice::Btrfs if !btrfs => Check::new(name, Status::Fail, found)
            .fix("put the pool on a btrfs filesystem, or set backend = \"auto\""),
        BackendChoice::Prjquota if !prjquota => Check::new(name, Status::Fail, found).fix(
            "mount the filesystem with -o prjquota (xfs, or ext4 with the quota feature), or \
             set backend = \"auto\"",
        ),
        BackendChoice::Auto if !btrfs && !prjquota => Check::new(
            name,
            Status::Ok,
            format!("{found}; volumes are loopfs images"),
        ),
        BackendChoice::None => Check::new(
            name,
            Status::Ok,
            "backend = \"none\": sizes are not enforced",
        ),
        _ => Check::new(name, Status::Ok, found),
    }
}

fn free_space(pool: &PoolConfig, path: &Path, name: String) -> Check {
    let space = match probe::space(path) {
        Ok(s) => s,
        Err(e) => return Check::new(name, Status::Fail, format!("statvfs: {e}")),
    };
    let floor = FULL_BELOW_BYTES.max(space.total_bytes / 100);
    let detail = format!(
        "{} available of {}",
        format_size(space.available_bytes),
        format_size(space.total_bytes)
    );
    if space.available_bytes < floor {
        return Check::new(
            name,
            Status::Fail,
            format!("{detail}: the filesystem is full"),
        )
        .fix("free space on that filesystem, or move the pool to one with room");
    }
    match pool.capacity {
        Some(capacity) if capacity > space.total_bytes => Check::new(
            name,
            Status::Warn,
            format!(
                "{detail}; the pool's capacity {} is more than the filesystem holds",
                format_size(capacity)
            ),
        )
        .fix("lower the pool's capacity, or volumes will fail to write once the disk is full"),
        _ => Check::new(name, Status::Ok, detail),
    }
}

fn propagation(path: &Path, mount: &probe::MountOf, name: String, why: &str) -> Check {
    let at = mount.entry.mount_point.display();
    if mount.shared {
        Check::new(
            name,
            Status::Ok,
            format!("{} is on shared mount {at}", path.display()),
        )
    } else {
        Check::new(
            name,
            Status::Fail,
            format!("{} is on private mount {at}: {why}", path.display()),
        )
        .fix(format!("mount --make-rshared {at}"))
    }
}

/// The directory of each socket berth listens on, with the front-end's name.
fn socket_paths(config: &Config) -> Vec<(&'static str, PathBuf)> {
    [
        ("csi", &config.listen.csi),
        ("docker", &config.listen.docker),
        ("admin", &config.listen.admin),
    ]
    .into_iter()
    .filter(|(_, path)| !path.is_empty())
    .map(|(name, path)| (name, PathBuf::from(path)))
    .collect()
}

fn sockets(config: &Config, report: &mut Vec<Check>) {
    let want_mode = config.listen.socket_mode & 0o7777;
    for (frontend, socket) in socket_paths(config) {
        let name = format!("{frontend} socket {}", socket.display());
        let check = match std::fs::symlink_metadata(&socket) {
            Ok(meta) if !meta.file_type().is_socket() => {
                Check::new(name, Status::Fail, "exists but is not a socket")
                    .fix("remove it; berth makes the socket at start")
            }
            Ok(meta) if meta.permissions().mode() & 0o7777 != want_mode => Check::new(
                name,
                Status::Warn,
                format!(
                    "mode {:o}, the config says {want_mode:o}",
                    meta.permissions().mode() & 0o7777
                ),
            )
            .fix("restart berth, which sets the configured socket_mode"),
            Ok(_) => Check::new(name, Status::Ok, format!("a socket, mode {want_mode:o}")),
            Err(_) => match socket.parent() {
                Some(dir) if dir.is_dir() => Check::new(
                    name,
                    Status::Warn,
                    "no socket yet: berth is not running or has not started this front-end",
                ),
                _ => Check::new(name, Status::Warn, "its directory does not exist yet")
                    .fix("berth creates it at start; check the listen paths in the config"),
            },
        };
        report.push(check);
        // Docker and kubelet mount volumes through paths beside these sockets.
        if frontend != "admin"
            && let Some(dir) = socket.parent().filter(|d| d.is_dir())
            && let Ok(mount) = probe::mount_of(dir)
        {
            report.push(propagation(
                dir,
                &mount,
                format!("{frontend} plugin directory {}: propagation", dir.display()),
                "mounts made beneath it do not reach the orchestrator",
            ));
        }
    }
}

fn docker_discovery(config: &Config, report: &mut Vec<Check>) {
    let name = "docker plugin discovery";
    if config.listen.docker.is_empty() {
        report.push(Check::new(
            name,
            Status::Skip,
            "the Docker front-end is off",
        ));
        return;
    }
    let socket = Path::new(&config.listen.docker);
    let discovered = DOCKER_PLUGIN_DIRS
        .iter()
        .any(|dir| socket.parent() == Some(Path::new(dir)));
    report.push(if discovered {
        Check::new(
            name,
            Status::Ok,
            format!("dockerd finds {}", socket.display()),
        )
    } else {
        Check::new(
            name,
            Status::Warn,
            format!(
                "{} is not in {}: dockerd will not find the plugin by name",
                socket.display(),
                DOCKER_PLUGIN_DIRS.join(", ")
            ),
        )
        .fix("set [listen] docker = \"/run/docker/plugins/berth.sock\"")
    });
}

fn kubelet(config: &Config, kubelet_dir: &Path, report: &mut Vec<Check>) {
    let name = "kubelet plugin registration";
    if config.listen.csi.is_empty() {
        report.push(Check::new(name, Status::Skip, "the CSI front-end is off"));
        return;
    }
    let registry = kubelet_dir.join("plugins_registry");
    report.push(if registry.is_dir() {
        Check::new(name, Status::Ok, registry.display().to_string())
    } else {
        Check::new(
            name,
            Status::Warn,
            format!(
                "{} does not exist: kubelet is not running here, or uses another --root-dir",
                registry.display()
            ),
        )
        .fix("on a Kubernetes node, run doctor with --kubelet-dir set to kubelet's --root-dir")
    });
}

/// The store file's modification time is its last commit: a time in the future means the
/// clock went back since, which makes every age berth computes (reservation timeouts) wrong.
fn store_clock(config: &Config, report: &mut Vec<Check>) {
    let store = config.store_path();
    let name = format!("store {}", store.display());
    let modified = match std::fs::metadata(&store).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => {
            report.push(Check::new(
                name,
                Status::Skip,
                "no store yet (berth never ran here)",
            ));
            return;
        }
    };
    report.push(match SystemTime::now().duration_since(modified) {
        Ok(age) => Check::new(
            name,
            Status::Ok,
            format!("last commit {} ago", humantime::format_duration(round(age))),
        ),
        Err(ahead) if ahead.duration().as_secs() > 60 => Check::new(
            name,
            Status::Fail,
            format!(
                "last commit {} in the future: the clock went back",
                humantime::format_duration(round(ahead.duration()))
            ),
        )
        .fix("set the clock right (timedatectl, NTP) before berth times out reservations"),
        Err(_) => Check::new(name, Status::Ok, "last commit just now"),
    });
}

fn round(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}

fn daemon_health(config: &Config, report: &mut Vec<Check>) {
    let name = "daemon health";
    if config.listen.admin.is_empty() {
        report.push(Check::new(name, Status::Skip, "the admin socket is off"));
        return;
    }
    let answer = Client::new(&config.listen.admin, None).and_then(|c| c.call("GET", "/healthz"));
    report.push(match answer {
        Ok(r) if r.status == 200 => Check::new(
            name,
            Status::Ok,
            format!("{} answers /healthz", config.listen.admin),
        ),
        Ok(r) => Check::new(
            name,
            Status::Fail,
            format!(
                "/healthz answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            ),
        )
        .fix("read berth's log (journalctl -u berth, or /var/log/berth.log)"),
        Err(e) => Check::new(name, Status::Fail, e.to_string())
            .fix("start berth (systemctl start berth) and read its log if it stops"),
    });
}

/// A pool's gauge in the daemon's `/metrics` text.
fn pool_gauge(metrics: &str, metric: &str, pool: &str) -> Option<u64> {
    let prefix = format!("{metric}{{pool=\"{pool}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Each pool's reservations against what its filesystem can still hold, as the running
/// daemon counts them (its `/metrics`): a full pool, or a configured capacity the disk's free
/// space no longer backs (requests below the nominal room are refused), is a warning.
fn reservations(config: &Config, pools: &[PoolConfig], report: &mut Vec<Check>) {
    let skip = |report: &mut Vec<Check>, why: String| {
        for pool in pools {
            let name = format!("pool {}: reservations", pool.name);
            report.push(Check::new(name, Status::Skip, why.clone()));
        }
    };
    if config.listen.admin.is_empty() {
        return skip(report, "the admin socket is off".into());
    }
    let answer = Client::new(&config.listen.admin, None).and_then(|c| c.call("GET", "/metrics"));
    let metrics = match answer {
        Ok(r) if r.status == 200 => String::from_utf8_lossy(&r.body).into_owned(),
        Ok(r) => return skip(report, format!("/metrics answered {}", r.status)),
        Err(e) => return skip(report, format!("the daemon does not answer: {e}")),
    };
    for pool in pools {
        let name = format!("pool {}: reservations", pool.name);
        let gauge = |metric: &str| pool_gauge(&metrics, metric, &pool.name);
        let (Some(capacity), Some(reserved), Some(available)) = (
            gauge("berth_pool_capacity_bytes"),
            gauge("berth_pool_reserved_bytes"),
            gauge("berth_pool_available_bytes"),
        ) else {
            report.push(Check::new(
                name,
                Status::Skip,
                "the daemon does not report it",
            ));
            continue;
        };
        report.push(reservation_check(pool, name, capacity, reserved, available));
    }
}

/// The verdict on one pool's daemon figures.
fn reservation_check(
    pool: &PoolConfig,
    name: String,
    capacity: u64,
    reserved: u64,
    available: u64,
) -> Check {
    let left = capacity.saturating_sub(reserved);
    let detail = format!(
        "{} reserved of {}; {} available for new volumes",
        format_size(reserved),
        format_size(capacity),
        format_size(available)
    );
    if available == 0 {
        Check::new(name, Status::Warn, format!("{detail}: no new volume fits"))
            .fix("free space on that filesystem, or delete volumes no longer needed")
    } else if pool.capacity.is_some() && available < left {
        // A configured capacity is a promise the filesystem no longer backs.
        Check::new(
            name,
            Status::Warn,
            format!(
                "{detail}: its filesystem holds less than the {} its capacity still allows",
                format_size(left)
            ),
        )
        .fix("free space on that filesystem, or lower the pool's capacity; larger requests are refused")
    } else {
        Check::new(name, Status::Ok, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_warn_on_a_full_pool_and_on_a_capacity_the_disk_does_not_back() {
        const MIB: u64 = 1 << 20;
        let mut pool = PoolConfig::default_root(Path::new("/srv/berth"));
        let check = |pool: &PoolConfig, available| {
            reservation_check(pool, "r".into(), 1024 * MIB, 256 * MIB, available)
        };
        // On a shared disk without a configured capacity, others' files are not a warning.
        assert_eq!(check(&pool, 100 * MIB).status, Status::Ok);
        assert_eq!(check(&pool, 0).status, Status::Warn);
        assert!(check(&pool, 0).detail.ends_with("no new volume fits"));
        pool.capacity = Some(1024 * MIB);
        let short = check(&pool, 100 * MIB);
        assert_eq!(short.status, Status::Warn);
        assert!(
            short
                .detail
                .contains("holds less than the 768MiB its capacity still allows"),
            "{}",
            short.detail
        );
        assert_eq!(check(&pool, 768 * MIB).status, Status::Ok);
    }
}
