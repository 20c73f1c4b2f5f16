//! The guest half of the VM project-quota test: `tests/vm_prjquota.rs` builds this example,
//! packs it into an initramfs and boots it under QEMU (TCG) with a stock Debian kernel, whose
//! XFS and ext4 have project quotas (the build host's kernel has none). It is not meant to
//! run anywhere else: it writes into the filesystems it is given until their quotas stop it.
//!
//! ```text
//! prjquota_vm [--skip-limit] FS=MOUNT_POINT...    FS: xfs | ext4 | plain
//! ```
//!
//! For each `xfs`/`ext4` mount (mounted with `-o prjquota`) it runs volumes' lives through
//! berth's engine (`Engine::open` on a `root` pool with `backend = "prjquota"`, then
//! create/usage/expand/delete, as every front-end does): a foreign project is planted first,
//! so the project id allocation must skip it; a 16 MiB volume is created, `statvfs` inside it
//! must report 16 MiB, 15 MiB are written, writing past the limit must fail (XFS: `ENOSPC`
//! even for root; ext4: `EDQUOT` for a writer without `CAP_SYS_RESOURCE`), usage must come
//! from the quota, the volume is expanded to 32 MiB and written again, then deleted: its id
//! must be released (no usage, no limit, not in use) and handed out again, while a retained
//! volume's id stays taken. `auto` must pick `prjquota` there. On the `plain` mount (no
//! `prjquota`) an explicit `prjquota` pool must be refused at start with a clear message, and
//! `auto` must fall back to `loopfs`.
//!
//! Everything berth does is checked against the kernel through an interface berth does not
//! use ([`kernel`]: the generic `Q_GETQUOTA`/`Q_GETNEXTQUOTA` and `FS_IOC_FSGETXATTR`, where
//! berth uses the XFS-style `Q_X*` commands), and `statvfs` as a container would see it.
//!
//! Output, one line each, on stdout (the guest's serial console):
//! `CHECK PASS|FAIL <fs> <check>: <detail>`, `INFO <fs> <detail>`, and last
//! `BERTH-VM-RESULT: <n> passed, <m> failed`. Exit status 0 only if nothing failed.
//!
//! `--skip-limit` (or `berth.skip_limit=1` on the kernel command line) deliberately removes
//! each limit right after berth set it, to prove the host-side test fails when sizes are not
//! enforced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use berth::engine::pool::{BackendChoice, PoolConfig};
use berth::engine::types::{
    Backend, Caller, CreateRequest, Frontend, Owner, Ownership, PoolKind, ReclaimPolicy, Volume,
    VolumeName, VolumeSpec,
};
use berth::engine::{
    Engine, EngineConfig, EngineError, FIRST_PROJECT_ID, NodeInfo, PoolSelector, VolumeService,
};
use berth::host::Host;
use berth::host::linux::LinuxHost;
use berth::host::mountinfo;

const MIB: u64 = 1 << 20;
const LIMIT: u64 = 16 * MIB;
const EXPANDED: u64 = 32 * MIB;
const CALLER: Caller = Caller {
    frontend: Frontend::Internal,
    wait_if_busy: true,
};

/// The kernel's own view, for checking what berth did: `quotactl(2)` with the generic
/// `Q_GETQUOTA`/`Q_GETNEXTQUOTA` on `PRJQUOTA` and `FS_IOC_FSGETXATTR`. Read-only.
mod kernel {
    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const PRJQUOTA: i32 = 2;
    const SUBCMDSHIFT: i32 = 8;
    const Q_GETQUOTA: i32 = 0x80_0007;
    const Q_GETNEXTQUOTA: i32 = 0x80_0009;
    /// `if_dqblk` block limits are in units of 1 KiB (`QIF_DQBLKSIZE`).
    pub const QIF_DQBLKSIZE: u64 = 1024;
    pub const FS_XFLAG_PROJINHERIT: u32 = 0x200;

    /// `struct if_nextdqblk` (a `struct if_dqblk` with the id appended; same prefix).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Dqblk {
        pub bhardlimit: u64,
        pub bsoftlimit: u64,
        pub curspace: u64,
        pub ihardlimit: u64,
        pub isoftlimit: u64,
        pub curinodes: u64,
        pub btime: u64,
        pub itime: u64,
        pub valid: u32,
        pub id: u32,
    }

    impl Dqblk {
        /// Has usage or limits: the id belongs to someone.
        pub fn in_use(&self) -> bool {
            self.curspace != 0
                || self.curinodes != 0
                || self.bhardlimit != 0
                || self.bsoftlimit != 0
                || self.ihardlimit != 0
                || self.isoftlimit != 0
        }
    }

    /// `struct fsxattr`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct FsXattr {
        pub xflags: u32,
        pub extsize: u32,
        pub nextents: u32,
        pub projid: u32,
        pub cowextsize: u32,
        pub pad: [u8; 8],
    }

    const _: () = assert!(size_of::<Dqblk>() == 72 && size_of::<FsXattr>() == 28);

    nix::ioctl_read!(fs_ioc_fsgetxattr, b'X', 31, FsXattr);

    /// `quotactl(2)` for the commands that fill a [`Dqblk`].
    fn quotactl(cmd: i32, device: &Path, id: u32, data: &mut Dqblk) -> io::Result<()> {
        let dev = CString::new(device.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let id = i32::try_from(id).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let cmd = (cmd << SUBCMDSHIFT) | PRJQUOTA;
        // SAFETY: `dev` is a NUL-terminated string that outlives the call; `data` is a live,
        // exclusively borrowed `struct if_nextdqblk`, the largest struct Q_GETQUOTA
        // (`if_dqblk`, its prefix) and Q_GETNEXTQUOTA write.
        let r = unsafe { libc::quotactl(cmd, dev.as_ptr(), id, (data as *mut Dqblk).cast()) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Usage and limits of project `id`; an id the filesystem has never seen is all zeros.
    pub fn get(device: &Path, id: u32) -> io::Result<Dqblk> {
        let mut q = Dqblk::default();
        match quotactl(Q_GETQUOTA, device, id, &mut q) {
            Ok(()) => Ok(Dqblk { id, ..q }),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Dqblk {
                id,
                ..Dqblk::default()
            }),
            Err(e) => Err(e),
        }
    }

    /// Every project id with usage or limits on the filesystem of `device`, 0 excluded.
    pub fn ids_in_use(device: &Path) -> io::Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut next = 0u32;
        loop {
            let mut q = Dqblk::default();
            match quotactl(Q_GETNEXTQUOTA, device, next, &mut q) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
                Err(e) => return Err(e),
            }
            if q.id != 0 && q.in_use() {
                ids.push(q.id);
            }
            match q.id.checked_add(1) {
                Some(n) if n <= i32::MAX as u32 => next = n,
                _ => return Ok(ids),
            }
        }
    }

    pub fn get_xattr(dir: &File) -> io::Result<FsXattr> {
        let mut x = FsXattr::default();
        // SAFETY: `dir` is an open fd; `x` is a live `struct fsxattr` the kernel fills.
        unsafe { fs_ioc_fsgetxattr(dir.as_raw_fd(), &mut x) }.map_err(io::Error::from)?;
        Ok(x)
    }
}

/// Turning `CAP_SYS_RESOURCE` off and on in the effective set (it stays permitted), so one
/// process can write both as a container's root (Docker's default set lacks it) and as a
/// fully privileged root. The payload is single-threaded, so the thread's set is the
/// process's.
mod caps {
    use std::io;

    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    pub const CAP_SYS_RESOURCE: u32 = 24;

    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    fn get() -> io::Result<[Data; 2]> {
        let mut hdr = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget(2) with a v3 header reads `hdr` and fills two `Data` structs, which
        // is exactly what `data` holds; both live across the call.
        let r =
            unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
        if r == 0 {
            Ok(data)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn set_effective(cap: u32, on: bool) -> io::Result<()> {
        let mut data = get()?;
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        if on {
            data[word].effective |= bit;
        } else {
            data[word].effective &= !bit;
        }
        let mut hdr = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        // SAFETY: capset(2) with a v3 header reads two `Data` structs from `data`; both
        // `hdr` and `data` live across the call.
        let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Counts and prints checks.
#[derive(Default)]
struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, fs: &str, name: &str, result: Result<String>) -> bool {
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("CHECK PASS {fs} {name}: {detail}");
                true
            }
            Err(e) => {
                self.failed += 1;
                println!("CHECK FAIL {fs} {name}: {e:#}");
                false
            }
        }
    }
}

fn info(fs: &str, detail: &str) {
    println!("INFO {fs} {detail}");
}

/// The device mounted at `mount_point`, for `quotactl(2)`.
fn device_of(mount_point: &Path) -> Result<PathBuf> {
    let table = fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    mountinfo::parse(&table)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mount_point)
        .map(|m| PathBuf::from(m.source))
        .with_context(|| format!("nothing is mounted at {}", mount_point.display()))
}

/// Appends to `path` in 1 MiB chunks until `total` bytes are written or a write fails;
/// returns the bytes accepted and the error, if any. Data is fsynced when all went in.
fn write_until(path: &Path, total: u64) -> Result<(u64, Option<io::Error>)> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let chunk = vec![0x5au8; MIB as usize];
    let mut written = 0u64;
    while written < total {
        let want = usize::try_from((total - written).min(MIB)).context("chunk size")?;
        match f.write(&chunk[..want]) {
            Ok(0) => return Ok((written, Some(io::Error::from(io::ErrorKind::WriteZero)))),
            Ok(n) => written += n as u64,
            Err(e) => return Ok((written, Some(e))),
        }
    }
    if let Err(e) = f.sync_all() {
        return Ok((written, Some(e)));
    }
    Ok((written, None))
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => "ENOSPC".into(),
        Some(libc::EDQUOT) => "EDQUOT".into(),
        _ => e.to_string(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / MIB as f64)
}

/// Volumes' lives on a project-quota filesystem, through the engine.
fn scenario(report: &mut Report, fs_name: &str, mount_point: &Path, skip_limit: bool) {
    let host = LinuxHost::new();
    let device = match device_of(mount_point) {
        Ok(d) => d,
        Err(e) => {
            report.check(fs_name, "mounted", Err(e));
            return;
        }
    };
    if !report.check(
        fs_name,
        "support",
        host.project_quota_support(mount_point)
            .map(|()| format!("berth: project quotas usable on {}", device.display()))
            .map_err(anyhow::Error::from),
    ) {
        return;
    }
    if let Err(e) = volume_life(report, &host, fs_name, mount_point, &device, skip_limit) {
        report.check(fs_name, "scenario", Err(e));
    }
    report.check(
        fs_name,
        "auto-picks-prjquota",
        auto_backend(fs_name, mount_point).and_then(|b| match b {
            Backend::Prjquota => Ok("backend auto resolves to prjquota".into()),
            other => bail!("backend auto resolves to {}", other.as_str()),
        }),
    );
}

fn name(s: &str) -> Result<VolumeName> {
    VolumeName::parse(s).map_err(|e| anyhow!("{e}"))
}

fn pool(fs_name: &str, base: &Path, backend: BackendChoice) -> PoolConfig {
    let mut p = PoolConfig::default_root(Path::new("/unused"));
    p.name = fs_name.into();
    p.kind = PoolKind::Root;
    p.paths = vec![base.to_path_buf()];
    p.backend = backend;
    p
}

fn open(
    fs_name: &str,
    base: &Path,
    backend: BackendChoice,
) -> Result<Engine<LinuxHost>, EngineError> {
    let host = LinuxHost::new();
    if let Err(e) = host.make_dir(base, &Ownership::default()) {
        return Err(EngineError::Unsupported {
            volume: "-".into(),
            reason: format!("make {}: {e}", base.display()),
        });
    }
    let store = Path::new("/tmp").join(format!(
        "berth-{fs_name}-{}.redb",
        base.file_name().and_then(|n| n.to_str()).unwrap_or("pool")
    ));
    Engine::open(
        EngineConfig {
            store_path: store,
            pools: vec![pool(fs_name, base, backend)],
            node: NodeInfo::default(),
        },
        host,
    )
}

/// The backend `auto` resolves to on `mount_point` (a pool of its own, beside the others).
fn auto_backend(fs_name: &str, mount_point: &Path) -> Result<Backend> {
    let e = open(fs_name, &mount_point.join("auto"), BackendChoice::Auto)?;
    e.capacity(&PoolSelector::default())
        .first()
        .map(|c| c.backend)
        .context("no pool in capacity")
}

fn create(e: &Engine<LinuxHost>, n: &str, size: u64, reclaim: ReclaimPolicy) -> Result<Volume> {
    Ok(e.create(
        CALLER,
        CreateRequest {
            name: name(n)?,
            spec: VolumeSpec {
                size: Some(size),
                reclaim: Some(reclaim),
                ..VolumeSpec::default()
            },
            owner: Owner::default(),
        },
    )?)
}

/// The project id of a `prjquota` volume.
fn project_of(v: &Volume) -> Result<u32> {
    if v.placement.backend != Backend::Prjquota {
        bail!(
            "volume {} got backend {}",
            v.name,
            v.placement.backend.as_str()
        );
    }
    v.placement
        .project_id
        .with_context(|| format!("volume {} has no project id", v.name))
}

/// Polls until project `id` has no usage and no limits in the kernel and berth does not list
/// it as in use. XFS inactivates unlinked inodes in the background (inodegc): the project's
/// last inode may stay charged for a moment after the rmdir.
fn released(host: &LinuxHost, base: &Path, device: &Path, id: u32) -> Result<String> {
    let start = Instant::now();
    loop {
        sync_fs(base)?;
        let used = host.project_quota_usage(base, id)?;
        let berth_ids = host.project_ids_in_use(base)?;
        let q = kernel::get(device, id)?;
        let kernel_ids = kernel::ids_in_use(device)?;
        if used.bytes == 0
            && used.inodes == 0
            && !berth_ids.contains(&id)
            && !q.in_use()
            && !kernel_ids.contains(&id)
        {
            return Ok(format!(
                "project {id} released {} ms after the delete: no usage, no limits; \
                 in use: berth {berth_ids:?}, kernel {kernel_ids:?}",
                start.elapsed().as_millis()
            ));
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "project {id} still in use 10 s after the delete: berth {used:?} {berth_ids:?}, \
                 kernel {q:?} {kernel_ids:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn volume_life(
    report: &mut Report,
    host: &LinuxHost,
    fs_name: &str,
    mount_point: &Path,
    device: &Path,
    skip_limit: bool,
) -> Result<()> {
    // With --skip-limit, each limit berth sets is removed again at once.
    let sabotage = |v: &Volume| -> Result<()> {
        if skip_limit {
            host.set_project_quota(&v.placement.dir, project_of(v)?, 0)?;
        }
        Ok(())
    };
    if skip_limit {
        info(
            fs_name,
            "limits removed behind berth's back (berth.skip_limit=1): the limit checks must fail",
        );
    }
    let base = mount_point.join("volumes");
    host.make_dir(&base, &Ownership::default())?;

    // A project someone else owns on this filesystem, with the first id berth would pick.
    let foreign = base.join("foreign");
    host.make_dir(&foreign, &Ownership::default())?;
    host.set_project_quota(&foreign, FIRST_PROJECT_ID, 0)
        .context("tag the foreign directory")?;
    fs::write(foreign.join("data"), vec![1u8; 64 * 1024])?;
    File::open(foreign.join("data"))?.sync_all()?;

    let e = open(fs_name, &base, BackendChoice::Prjquota).context("Engine::open")?;
    let v = create(&e, "vol", LIMIT, ReclaimPolicy::Delete).context("create")?;
    sabotage(&v)?;
    let id = project_of(&v)?;
    let data = v.placement.data.clone();
    report.check(
        fs_name,
        "allocate-id",
        kernel::get(device, id)
            .map_err(anyhow::Error::from)
            .and_then(|q| {
                if id == FIRST_PROJECT_ID {
                    bail!("allocated the foreign project's id {id}");
                }
                if q.curinodes > 2 || q.curspace > 64 * 1024 {
                    bail!("allocated {id}, which already has usage: {q:?}");
                }
                Ok(format!(
                    "volume {} got project {id}, skipping the foreign {FIRST_PROJECT_ID}",
                    v.name
                ))
            }),
    );
    report.check(
        fs_name,
        "set-project",
        (|| {
            for dir in [&v.placement.dir, &data] {
                let x = kernel::get_xattr(&File::open(dir)?)?;
                if x.projid != id || x.xflags & kernel::FS_XFLAG_PROJINHERIT == 0 {
                    bail!("{}: the kernel reads back {x:?}", dir.display());
                }
            }
            Ok(format!(
                "{} and its data directory have project {id} with PROJINHERIT",
                v.placement.dir.display()
            ))
        })(),
    );
    report.check(fs_name, "set-limit", limit_is(device, id, LIMIT));
    report.check(fs_name, "statvfs-size", statvfs_is(host, &data, LIMIT));

    // The writer: XFS limits even root with every capability; ext4 limits only a writer
    // without CAP_SYS_RESOURCE, as in a container with Docker's default capabilities.
    let drop_cap = fs_name == "ext4";
    let (errno, who) = if drop_cap {
        (libc::EDQUOT, "root without CAP_SYS_RESOURCE")
    } else {
        (libc::ENOSPC, "root with all capabilities")
    };
    let write = |path: &Path, total: u64| -> Result<(u64, Option<io::Error>)> {
        if drop_cap {
            caps::set_effective(caps::CAP_SYS_RESOURCE, false).context("drop CAP_SYS_RESOURCE")?;
        }
        let r = write_until(path, total);
        if drop_cap {
            caps::set_effective(caps::CAP_SYS_RESOURCE, true).context("raise CAP_SYS_RESOURCE")?;
        }
        r
    };
    report.check(
        fs_name,
        "write-to-limit",
        write(&data.join("first"), 15 * MIB).and_then(|(n, err)| match err {
            None => Ok(format!("{who} wrote {}", mib(n))),
            Some(e) => bail!("{who}: write failed after {}: {e}", mib(n)),
        }),
    );
    report.check(
        fs_name,
        "write-past-limit",
        write(&data.join("second"), 8 * MIB).and_then(|(n, err)| match err {
            Some(e) if e.raw_os_error() == Some(errno) && 15 * MIB + n <= LIMIT => Ok(format!(
                "{who}: {} after {} more ({} in all)",
                errno_name(&e),
                mib(n),
                mib(15 * MIB + n)
            )),
            Some(e) => bail!(
                "{who}: expected {}, got {} after {} more",
                errno_name(&io::Error::from_raw_os_error(errno)),
                errno_name(&e),
                mib(n)
            ),
            None => bail!(
                "{who} wrote {} into a {} volume without an error",
                mib(15 * MIB + n),
                mib(LIMIT)
            ),
        }),
    );
    if drop_cap {
        let extra = data.join("privileged");
        match write_until(&extra, 2 * MIB) {
            Ok((n, None)) => info(
                fs_name,
                &format!(
                    "root WITH CAP_SYS_RESOURCE is not limited: wrote {} more past the limit",
                    mib(n)
                ),
            ),
            Ok((n, Some(e))) => info(
                fs_name,
                &format!(
                    "root WITH CAP_SYS_RESOURCE was limited: {} after {}",
                    errno_name(&e),
                    mib(n)
                ),
            ),
            Err(e) => info(fs_name, &format!("privileged write: {e:#}")),
        }
        fs::remove_file(&extra).context("remove the privileged file")?;
    }

    sync_fs(&data)?;
    report.check(
        fs_name,
        "usage",
        (|| {
            let u = e.usage(&v.name)?;
            let q = kernel::get(device, id)?;
            if !(15 * MIB..=LIMIT).contains(&u.bytes_used) {
                bail!(
                    "berth reports {} used, expected 15 MiB to {}",
                    mib(u.bytes_used),
                    mib(LIMIT)
                );
            }
            if u.bytes_used != q.curspace || u.inodes_used != q.curinodes {
                bail!("berth reports {u:?}, the kernel {q:?}");
            }
            if u.bytes_total != LIMIT {
                bail!("berth reports a total of {}", mib(u.bytes_total));
            }
            Ok(format!(
                "berth reports {} of {} and {} inodes used, as the kernel's quota does",
                mib(u.bytes_used),
                mib(u.bytes_total),
                u.inodes_used
            ))
        })(),
    );

    report.check(
        fs_name,
        "expand",
        (|| {
            let grown = e.expand(CALLER, &v.name, EXPANDED)?;
            sabotage(&grown)?;
            let limit = limit_is(device, id, EXPANDED)?;
            Ok(format!("{limit}; {}", statvfs_is(host, &data, EXPANDED)?))
        })(),
    );
    report.check(
        fs_name,
        "write-after-expand",
        write(&data.join("third"), 12 * MIB).and_then(|(n, err)| match err {
            None => Ok(format!("{who} wrote {} more", mib(n))),
            Some(e) => bail!("{who}: write failed after {}: {e}", mib(n)),
        }),
    );

    report.check(
        fs_name,
        "delete-releases-id",
        (|| {
            e.delete(CALLER, &v.name)?;
            if v.placement.dir.exists() {
                bail!("{} is still there", v.placement.dir.display());
            }
            let r = released(host, &base, device, id)?;
            let foreign_ids = kernel::ids_in_use(device)?;
            if !foreign_ids.contains(&FIRST_PROJECT_ID) {
                bail!("the foreign project vanished: {foreign_ids:?}");
            }
            Ok(r)
        })(),
    );
    report.check(
        fs_name,
        "id-reused",
        (|| {
            let again = create(&e, "again", LIMIT, ReclaimPolicy::Delete)?;
            let reused = project_of(&again)?;
            let used = e.usage(&again.name)?.bytes_used;
            e.delete(CALLER, &again.name)?;
            if reused != id {
                bail!("the next volume got project {reused}, not the released {id}");
            }
            if used > 64 * 1024 {
                bail!("the next volume starts with {} used", mib(used));
            }
            Ok(format!(
                "the next volume got the released project {id}, starting empty"
            ))
        })(),
    );

    // Retained data keeps its files' project id after berth forgets the volume; the id must
    // not be handed to a new volume, or the retained bytes count against the new one.
    report.check(
        fs_name,
        "retain-keeps-id",
        (|| {
            let kept = create(&e, "kept", LIMIT, ReclaimPolicy::Retain)?;
            let kept_id = project_of(&kept)?;
            write_until(&kept.placement.data.join("old"), 4 * MIB)?;
            e.delete(CALLER, &kept.name)?;
            let next = create(&e, "next", LIMIT, ReclaimPolicy::Delete)?;
            let next_id = project_of(&next)?;
            sync_fs(&base)?;
            let used = e.usage(&next.name)?.bytes_used;
            e.delete(CALLER, &next.name)?;
            if next_id == kept_id {
                bail!(
                    "a new volume got project {next_id}, still charged by retained data: it \
                     starts with {} of {} used",
                    mib(used),
                    mib(LIMIT)
                );
            }
            Ok(format!(
                "retained data keeps project {kept_id}; the next volume got {next_id}"
            ))
        })(),
    );
    drop(e);
    host.remove_tree(mount_point, &base)?;
    Ok(())
}

/// The kernel's hard block limit for project `id` must be `bytes`.
fn limit_is(device: &Path, id: u32, bytes: u64) -> Result<String> {
    let q = kernel::get(device, id)?;
    let hard = q.bhardlimit * kernel::QIF_DQBLKSIZE;
    if hard == bytes {
        Ok(format!("the kernel has a hard limit of {}", mib(hard)))
    } else {
        bail!(
            "the kernel has a hard limit of {} for project {id}, expected {}",
            mib(hard),
            mib(bytes)
        )
    }
}

/// `statvfs(2)` on `dir` must report the project limit as the filesystem size.
fn statvfs_is(host: &LinuxHost, dir: &Path, size: u64) -> Result<String> {
    let st = host.fs_stats(dir)?;
    if st.bytes_total == size && st.bytes_available <= size {
        Ok(format!(
            "statvfs reports {} total, {} available",
            mib(st.bytes_total),
            mib(st.bytes_available)
        ))
    } else {
        bail!(
            "statvfs reports {} total ({} available), expected {}",
            mib(st.bytes_total),
            mib(st.bytes_available),
            mib(size)
        )
    }
}

/// `syncfs(2)`: flushes delayed allocations so quota usage is final.
fn sync_fs(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    nix::unistd::syncfs(&f).with_context(|| format!("syncfs {}", path.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    let mut skip_limit = fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == "berth.skip_limit=1"))
        .unwrap_or(false);
    let mut targets = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--skip-limit" {
            skip_limit = true;
        } else if let Some((fs_name, mp)) = arg.split_once('=') {
            targets.push((fs_name.to_string(), PathBuf::from(mp)));
        } else {
            eprintln!("usage: prjquota_vm [--skip-limit] xfs|ext4|plain=MOUNT_POINT...");
            return ExitCode::from(2);
        }
    }
    let mut report = Report::default();
    for (fs_name, mp) in &targets {
        match fs_name.as_str() {
            "xfs" | "ext4" => scenario(&mut report, fs_name, mp, skip_limit),
            "plain" => {
                let refusal = match open(fs_name, &mp.join("volumes"), BackendChoice::Prjquota) {
                    Ok(_) => Err(anyhow!("berth opened a prjquota pool on a plain mount")),
                    Err(e @ EngineError::PoolUnusable { .. }) => {
                        Ok(format!("refused at start: {e}"))
                    }
                    Err(e) => Err(anyhow!("expected PoolUnusable, got: {e}")),
                };
                report.check(fs_name, "refuse-without-prjquota", refusal);
                report.check(
                    fs_name,
                    "auto-falls-back",
                    auto_backend(fs_name, mp).and_then(|b| match b {
                        Backend::Loopfs => Ok("backend auto resolves to loopfs".into()),
                        other => bail!("backend auto resolves to {}", other.as_str()),
                    }),
                );
            }
            other => {
                report.check(other, "known-fs", Err(anyhow!("unknown kind {other}")));
            }
        }
    }
    println!(
        "BERTH-VM-RESULT: {} passed, {} failed",
        report.passed, report.failed
    );
    if report.failed == 0 && report.passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
