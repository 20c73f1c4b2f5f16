//! The guest half of the VM project-quota test: `tests/vm_prjquota.rs` builds this example,
//! packs it into an initramfs and boots it under QEMU (TCG) with a stock Debian kernel, whose
//! XFS and ext4 have project quotas (the build host's kernel has none). It is not meant to
//! run anywhere else: it writes into the filesystems it is given until their quotas stop it.
//!
//! ```text
//! prjquota_vm [--skip-limit] FS=MOUNT_POINT...    FS: xfs | ext4 | plain
//! ```
//!
//! For each `xfs`/`ext4` mount (mounted with `-o prjquota`) it runs one volume's life as the
//! `prjquota` backend will: allocate a project id not in use on that filesystem (a foreign
//! project is planted first, so the allocation must skip it), create the directory with that
//! project id and `PROJINHERIT`, apply a 16 MiB limit, check that `statvfs` on the directory
//! reports 16 MiB, write 15 MiB, write past the limit (XFS: `ENOSPC` even for root; ext4:
//! `EDQUOT` for a writer without `CAP_SYS_RESOURCE`), read the usage from the quota, expand
//! to 32 MiB and write again, delete and check the id is released. A `plain` mount (no
//! `prjquota`) must be refused with a clear message.
//!
//! Output, one line each, on stdout (the guest's serial console):
//! `CHECK PASS|FAIL <fs> <check>: <detail>`, `INFO <fs> <detail>`, and last
//! `BERTH-VM-RESULT: <n> passed, <m> failed`. Exit status 0 only if nothing failed.
//!
//! `--skip-limit` (or `berth.skip_limit=1` on the kernel command line) deliberately skips
//! applying the limit, to prove the host-side test fails when sizes are not enforced.
//!
//! The volume's life goes through berth's host layer (`Host::project_quota_support`,
//! `set_project_quota`, `clear_project_quota`, `project_quota_usage`,
//! `project_ids_in_use` on [`LinuxHost`]); once the engine has its `prjquota` backend, it
//! switches to `Engine::open` + create/expand/delete on a `prjquota` pool. What berth says
//! is cross-checked against the kernel through a different interface ([`kernel`]: the
//! generic `Q_GETQUOTA`/`Q_GETNEXTQUOTA` where berth uses the XFS-style `Q_X*` commands).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use berth::engine::types::Ownership;
use berth::host::linux::LinuxHost;
use berth::host::mountinfo;
use berth::host::{Host, HostError};

const MIB: u64 = 1 << 20;
const LIMIT: u64 = 16 * MIB;
const EXPANDED: u64 = 32 * MIB;

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

/// One volume's life on a project-quota filesystem.
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
}

fn volume_life(
    report: &mut Report,
    host: &LinuxHost,
    fs_name: &str,
    mount_point: &Path,
    device: &Path,
    skip_limit: bool,
) -> Result<()> {
    // What the backend applies; with --skip-limit nothing (the directory is still tagged).
    let applied = |limit: u64| if skip_limit { 0 } else { limit };
    if skip_limit {
        info(
            fs_name,
            "limits NOT applied (berth.skip_limit=1): the limit checks must fail",
        );
    }
    let root = mount_point.join("volumes");
    host.make_dir(&root, &Ownership::default())?;

    // A project someone else owns on this filesystem: id 1, no limit, a little data.
    let foreign = root.join("foreign");
    host.make_dir(&foreign, &Ownership::default())?;
    host.set_project_quota(&foreign, 1, 0)
        .context("tag the foreign directory")?;
    fs::write(foreign.join("data"), vec![1u8; 64 * 1024])?;
    File::open(foreign.join("data"))?.sync_all()?;

    let in_use = host.project_ids_in_use(&root)?;
    report.check(
        fs_name,
        "ids-in-use",
        if in_use.contains(&1) {
            Ok(format!("berth: ids in use {in_use:?}"))
        } else {
            Err(anyhow!(
                "berth does not list the foreign project 1: {in_use:?}"
            ))
        },
    );
    let id = (1u32..)
        .find(|i| !in_use.contains(i))
        .context("no free id")?;
    report.check(
        fs_name,
        "allocate-id",
        kernel::get(device, id)
            .map_err(anyhow::Error::from)
            .and_then(|q| {
                if id != 1 && !q.in_use() {
                    Ok(format!(
                        "allocated project {id}, skipping ids in use; the kernel has no usage or limits for it"
                    ))
                } else {
                    bail!("allocated {id}: the kernel shows it in use: {q:?}")
                }
            }),
    );

    let vol = root.join("vol");
    host.make_dir(&vol, &Ownership::default())?;
    host.set_project_quota(&vol, id, applied(LIMIT))
        .context("set_project_quota")?;
    let dir = File::open(&vol).with_context(|| format!("open {}", vol.display()))?;
    report.check(
        fs_name,
        "set-project",
        kernel::get_xattr(&dir)
            .map_err(anyhow::Error::from)
            .and_then(|x| {
                if x.projid == id && x.xflags & kernel::FS_XFLAG_PROJINHERIT != 0 {
                    Ok(format!(
                        "{} has project {id} with PROJINHERIT",
                        vol.display()
                    ))
                } else {
                    bail!("the kernel reads back {x:?}")
                }
            }),
    );
    report.check(fs_name, "set-limit", limit_is(device, id, LIMIT));
    report.check(fs_name, "statvfs-size", statvfs_is(host, &vol, LIMIT));

    // The writer: XFS limits even root with every capability; ext4 limits only a writer
    // without CAP_SYS_RESOURCE, as in a container with Docker's default capabilities.
    let drop_cap = fs_name == "ext4";
    let (errno, who) = if drop_cap {
        (libc::EDQUOT, "root without CAP_SYS_RESOURCE")
    } else {
        (libc::ENOSPC, "root with all capabilities")
    };
    if drop_cap {
        caps::set_effective(caps::CAP_SYS_RESOURCE, false).context("drop CAP_SYS_RESOURCE")?;
    }
    let first = vol.join("first");
    report.check(
        fs_name,
        "write-to-limit",
        write_until(&first, 15 * MIB).and_then(|(n, err)| match err {
            None => Ok(format!("{who} wrote {}", mib(n))),
            Some(e) => bail!("{who}: write failed after {}: {e}", mib(n)),
        }),
    );
    let second = vol.join("second");
    report.check(
        fs_name,
        "write-past-limit",
        write_until(&second, 8 * MIB).and_then(|(n, err)| match err {
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
        caps::set_effective(caps::CAP_SYS_RESOURCE, true).context("raise CAP_SYS_RESOURCE")?;
        let extra = vol.join("privileged");
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
        caps::set_effective(caps::CAP_SYS_RESOURCE, false).context("drop CAP_SYS_RESOURCE")?;
    }

    sync_fs(&vol)?;
    report.check(
        fs_name,
        "usage",
        (|| {
            let used = host.project_quota_usage(&vol, id)?;
            let q = kernel::get(device, id)?;
            if !(15 * MIB..=LIMIT).contains(&used.bytes) {
                bail!(
                    "berth reports {} used, expected 15 MiB to {}",
                    mib(used.bytes),
                    mib(LIMIT)
                );
            }
            if used.bytes != q.curspace || used.inodes != q.curinodes {
                bail!("berth reports {used:?}, the kernel {q:?}");
            }
            Ok(format!(
                "berth reports {} and {} inodes used, as the kernel does",
                mib(used.bytes),
                used.inodes
            ))
        })(),
    );

    report.check(
        fs_name,
        "expand",
        host.set_project_quota(&vol, id, applied(EXPANDED))
            .map_err(anyhow::Error::from)
            .and_then(|()| limit_is(device, id, EXPANDED))
            .and_then(|l| Ok(format!("{l}; {}", statvfs_is(host, &vol, EXPANDED)?))),
    );
    let third = vol.join("third");
    report.check(
        fs_name,
        "write-after-expand",
        write_until(&third, 12 * MIB).and_then(|(n, err)| match err {
            None => Ok(format!("{who} wrote {} more", mib(n))),
            Some(e) => bail!("{who}: write failed after {}: {e}", mib(n)),
        }),
    );
    if drop_cap {
        caps::set_effective(caps::CAP_SYS_RESOURCE, true).context("raise CAP_SYS_RESOURCE")?;
    }

    // Delete: data gone, limit cleared, id released; the foreign project untouched. An open
    // descriptor keeps an unlinked directory (and its quota charge) alive: close it first.
    drop(dir);
    report.check(
        fs_name,
        "delete-releases-id",
        (|| {
            host.remove_tree(&root, &vol)?;
            host.clear_project_quota(&vol, id)?;
            // XFS inactivates unlinked inodes in the background (inodegc): the project's
            // last inode may stay charged for a moment after the rmdir.
            let start = Instant::now();
            loop {
                sync_fs(&root)?;
                let used = host.project_quota_usage(&root, id)?;
                let berth_ids = host.project_ids_in_use(&root)?;
                let q = kernel::get(device, id)?;
                let kernel_ids = kernel::ids_in_use(device)?;
                if !berth_ids.contains(&1) || !kernel_ids.contains(&1) {
                    bail!(
                        "the foreign project 1 vanished: berth {berth_ids:?}, kernel {kernel_ids:?}"
                    );
                }
                let released = used.bytes == 0
                    && used.inodes == 0
                    && !berth_ids.contains(&id)
                    && !q.in_use()
                    && !kernel_ids.contains(&id);
                if released {
                    return Ok(format!(
                        "project {id} released {} ms after the delete: no usage, no limits; \
                         in use: berth {berth_ids:?}, kernel {kernel_ids:?}",
                        start.elapsed().as_millis()
                    ));
                }
                if start.elapsed() > Duration::from_secs(10) {
                    bail!(
                        "project {id} still in use 10 s after the delete: berth {used:?} \
                         {berth_ids:?}, kernel {q:?} {kernel_ids:?}"
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })(),
    );
    host.remove_tree(&root, &foreign)?;
    host.clear_project_quota(&foreign, 1)?;
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
                let refusal = match LinuxHost::new().project_quota_support(mp) {
                    Ok(()) => Err(anyhow!(
                        "berth calls project quotas usable on a plain mount"
                    )),
                    Err(e @ HostError::Unsupported(_)) => Ok(format!("berth refuses: {e}")),
                    Err(e) => Err(anyhow!("expected Unsupported, got: {e}")),
                };
                report.check(fs_name, "refuse-without-prjquota", refusal);
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
