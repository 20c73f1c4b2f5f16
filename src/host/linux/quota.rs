//! Project quotas on xfs and ext4: a directory tagged with a project id (inherited by what is
//! created inside it) and a hard block limit on that project.
//!
//! # Kernel interfaces
//! - **`FS_IOC_FSGETXATTR` / `FS_IOC_FSSETXATTR`** (`<linux/fs.h>`, `struct fsxattr`) read and
//!   set a file's `fsx_projid` and `FS_XFLAG_PROJINHERIT`, on an fd opened for reading (not
//!   `O_PATH`). Setting is read-modify-write of the whole struct, so other flags and extent
//!   hints stay. ext4 refuses a non-zero project id without its `project` feature
//!   (`EOPNOTSUPP`).
//! - **`quotactl(2)`** with the XFS-style commands (`<linux/dqblk_xfs.h>`) works for both xfs
//!   and ext4: the generic quota layer translates `struct fs_disk_quota` (limits in 512-byte
//!   "basic blocks"). It names the filesystem by its block device: the mount's source from
//!   mountinfo, checked to be a block device whose number is the filesystem's `st_dev`.
//!   `quotactl_fd(2)` would avoid the device path but is 5.14+ and answers `ENOSYS` both for
//!   "no such syscall" and "no quota support", so it is not used.
//! - **Telling "no kernel support" from "not enabled"**: `Q_GETINFO` answers `ENOSYS` when the
//!   filesystem has no quota operations at all (xfs without `CONFIG_XFS_QUOTA`, a kernel
//!   without `CONFIG_QUOTA`) and `ESRCH` when project quota accounting is off.
//!   `Q_XGETQSTATV` is not usable for that: it answers `ENOSYS` whenever no quota type is on.
//!   Its `qs_flags` tell whether project limits are enforced (`FS_QUOTA_PDQ_ENFD`).
//! - **xfs** turns project quotas on with the `prjquota` (alias `pquota`) mount option; a
//!   kernel without `CONFIG_XFS_QUOTA` refuses that mount ("quota support not available in
//!   this kernel") and mounts without it show `noquota`. `pqnoenforce` accounts only.
//! - **ext4** needs the `quota` and `project` features (`mkfs.ext4 -O quota,project`, hidden
//!   quota inodes, accounting from mount time on) and the `prjquota` mount option for
//!   enforcement. A kernel without `CONFIG_QFMT_V2` refuses to mount such a filesystem
//!   read-write at all; read-only it mounts with accounting off.
//!
//! Nothing here shells out; `xfs_quota`/`setquota` are not needed on the host.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, ErrorKind};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::fd::{
    cstring, fd_kind, invalid, mount_by_id, nix_err, oflags_dir, open_dir_nofollow, open_parent,
    statx_at, statx_fd,
};
use crate::host::{FsKind, HostError, MountEntry, TreeUsage};

const PRJQUOTA: u32 = 2;
const SUBCMDSHIFT: u32 = 8;
const Q_GETINFO: u32 = 0x80_0005;
/// `XQM_CMD(3)`.
const Q_XGETQUOTA: u32 = (b'X' as u32) << 8 | 3;
/// `XQM_CMD(4)`.
const Q_XSETQLIM: u32 = (b'X' as u32) << 8 | 4;
/// `XQM_CMD(8)`.
const Q_XGETQSTATV: u32 = (b'X' as u32) << 8 | 8;
const FS_DQUOT_VERSION: i8 = 1;
const FS_PROJ_QUOTA: i8 = 2;
const FS_DQ_BHARD: u16 = 1 << 3;
const FS_QSTATV_VERSION1: i8 = 1;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
/// Quota limits and counts are in 512-byte basic blocks.
const BB: u64 = 512;

const _: () = assert!(Q_XGETQUOTA == 0x5803);
const _: () = assert!(Q_XSETQLIM == 0x5804);
const _: () = assert!(Q_XGETQSTATV == 0x5808);

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FsXattr {
    fsx_xflags: u32,
    fsx_extsize: u32,
    fsx_nextents: u32,
    fsx_projid: u32,
    fsx_cowextsize: u32,
    fsx_pad: [u8; 8],
}

/// `struct fs_disk_quota` of `<linux/dqblk_xfs.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FsDiskQuota {
    d_version: i8,
    d_flags: i8,
    d_fieldmask: u16,
    d_id: u32,
    d_blk_hardlimit: u64,
    d_blk_softlimit: u64,
    d_ino_hardlimit: u64,
    d_ino_softlimit: u64,
    d_bcount: u64,
    d_icount: u64,
    d_itimer: i32,
    d_btimer: i32,
    d_iwarns: u16,
    d_bwarns: u16,
    d_itimer_hi: i8,
    d_btimer_hi: i8,
    d_rtbtimer_hi: i8,
    d_padding2: i8,
    d_rtb_hardlimit: u64,
    d_rtb_softlimit: u64,
    d_rtbcount: u64,
    d_rtbtimer: i32,
    d_rtbwarns: u16,
    d_padding3: i16,
    d_padding4: [u8; 8],
}

/// `struct fs_qfilestatv`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FsQfilestatv {
    qfs_ino: u64,
    qfs_nblks: u64,
    qfs_nextents: u32,
    qfs_pad: u32,
}

/// `struct fs_quota_statv`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FsQuotaStatv {
    qs_version: i8,
    qs_pad1: u8,
    qs_flags: u16,
    qs_incoredqs: u32,
    qs_uquota: FsQfilestatv,
    qs_gquota: FsQfilestatv,
    qs_pquota: FsQfilestatv,
    qs_btimelimit: i32,
    qs_itimelimit: i32,
    qs_rtbtimelimit: i32,
    qs_bwarnlimit: u16,
    qs_iwarnlimit: u16,
    qs_rtbwarnlimit: u16,
    qs_pad3: u16,
    qs_pad4: u32,
    qs_pad2: [u64; 7],
}

/// `struct if_dqinfo` of `<linux/quota.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IfDqinfo {
    dqi_bgrace: u64,
    dqi_igrace: u64,
    dqi_flags: u32,
    dqi_valid: u32,
}

const _: () = assert!(size_of::<FsXattr>() == 28);
const _: () = assert!(size_of::<FsDiskQuota>() == 112);
const _: () = assert!(std::mem::offset_of!(FsDiskQuota, d_bcount) == 40);
const _: () = assert!(std::mem::offset_of!(FsDiskQuota, d_rtb_hardlimit) == 72);
const _: () = assert!(size_of::<FsQfilestatv>() == 24);
const _: () = assert!(size_of::<FsQuotaStatv>() == 160);
const _: () = assert!(std::mem::offset_of!(FsQuotaStatv, qs_btimelimit) == 80);
const _: () = assert!(size_of::<IfDqinfo>() == 24);

mod ioctl {
    use super::FsXattr;
    nix::ioctl_read!(fs_getxattr, b'X', 31, FsXattr);
    nix::ioctl_write_ptr!(fs_setxattr, b'X', 32, FsXattr);
}

const _: () = assert!(nix::request_code_read!(b'X', 31, size_of::<FsXattr>()) == 0x801C_581F);
const _: () = assert!(nix::request_code_write!(b'X', 32, size_of::<FsXattr>()) == 0x401C_5820);

/// Marker for the argument structs `quotactl` commands take.
trait QuotaArg {}
impl QuotaArg for FsDiskQuota {}
impl QuotaArg for FsQuotaStatv {}
impl QuotaArg for IfDqinfo {}

/// `quotactl(QCMD(cmd, PRJQUOTA), device, id, arg)`.
///
/// # Safety
/// `arg` must be the struct the kernel reads or writes for `cmd`: [`FsDiskQuota`] for
/// `Q_XGETQUOTA`/`Q_XSETQLIM`, [`FsQuotaStatv`] for `Q_XGETQSTATV`, [`IfDqinfo`] for
/// `Q_GETINFO`.
unsafe fn quotactl<T: QuotaArg>(
    cmd: u32,
    device: &CString,
    id: u32,
    arg: &mut T,
) -> Result<(), Errno> {
    let qcmd = libc::c_int::from_ne_bytes(((cmd << SUBCMDSHIFT) | PRJQUOTA).to_ne_bytes());
    let id = libc::c_int::from_ne_bytes(id.to_ne_bytes());
    // SAFETY: `device` is a NUL-terminated path that outlives the call; `arg` is a live,
    // exclusively borrowed struct of the layout the command expects (the caller's contract),
    // which the kernel reads or writes for the duration of the call only.
    let rc = unsafe { libc::quotactl(qcmd, device.as_ptr(), id, (arg as *mut T).cast()) };
    Errno::result(rc).map(drop)
}

/// The filesystem a project-quota call acts on.
struct QuotaFs {
    kind: FsKind,
    entry: MountEntry,
    device: CString,
}

impl QuotaFs {
    fn at(&self) -> String {
        format!("{} at {}", self.kind, self.entry.mount_point.display())
    }
}

/// Identifies the filesystem holding `fd`: xfs or ext4, with its block device.
fn quota_fs(fd: BorrowedFd<'_>, path: &Path) -> Result<QuotaFs, HostError> {
    let kind = fd_kind(fd, path)?;
    if !matches!(kind, FsKind::Xfs | FsKind::Ext4) {
        return Err(HostError::Unsupported(format!(
            "project quotas need xfs or ext4; {} is on {kind}",
            path.display()
        )));
    }
    let meta = statx_fd(fd).map_err(|e| nix_err("stat", path, e))?;
    let entry = mount_by_id(meta.mnt_id)?.ok_or_else(|| {
        HostError::io(
            "quota",
            path,
            io::Error::other("its mount is not in /proc/self/mountinfo"),
        )
    })?;
    let source = PathBuf::from(&entry.source);
    // The source is the kernel's report; following a /dev/mapper symlink there is fine.
    let is_ours = nix::sys::stat::stat(&source)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFBLK && st.st_rdev == meta.dev);
    if !is_ours {
        return Err(HostError::Unsupported(format!(
            "cannot find the block device of the {kind} at {}: its mount source {} is not \
             device {}",
            entry.mount_point.display(),
            entry.source,
            entry.device
        )));
    }
    let device = cstring("quota", &source, source.as_os_str().as_bytes())?;
    Ok(QuotaFs {
        kind,
        entry,
        device,
    })
}

/// ext4 superblock features: (`project`, `quota`), read from the device.
fn ext4_features(fs: &QuotaFs) -> Result<(bool, bool), HostError> {
    const RO_COMPAT_QUOTA: u32 = 0x0100;
    const RO_COMPAT_PROJECT: u32 = 0x2000;
    let path = Path::new(std::ffi::OsStr::from_bytes(fs.device.as_bytes()));
    let file = File::open(path).map_err(|e| HostError::io("open", path, e))?;
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, 1024)
        .map_err(|e| HostError::io("read", path, e))?;
    if sb[0x38..0x3A] != [0x53, 0xEF] {
        return Err(invalid("read", path, "no ext4 superblock"));
    }
    let ro_compat = u32::from_le_bytes([sb[0x64], sb[0x65], sb[0x66], sb[0x67]]);
    Ok((
        ro_compat & RO_COMPAT_PROJECT != 0,
        ro_compat & RO_COMPAT_QUOTA != 0,
    ))
}

/// What the filesystem's setup lacks for enforced project quotas, if anything.
fn setup_reason(fs: &QuotaFs) -> Result<Option<String>, HostError> {
    let e = &fs.entry;
    let enforced = e.has_super_option("prjquota") || e.has_super_option("pquota");
    let accounting_only = e.has_super_option("pqnoenforce") || e.has_super_option("pqnoenf");
    let at = fs.at();
    let mount_reason = || {
        if accounting_only {
            format!("{at} is mounted with pqnoenforce (accounting only); mount it with prjquota")
        } else {
            format!("{at} is mounted without prjquota")
        }
    };
    match fs.kind {
        FsKind::Ext4 => {
            let (project, quota) = ext4_features(fs)?;
            if !project {
                return Ok(Some(format!(
                    "{at} lacks the project feature; mkfs.ext4 -O quota,project and mount -o \
                     prjquota"
                )));
            }
            if !quota {
                return Ok(Some(format!(
                    "{at} lacks the quota feature; tune2fs -O quota (unmounted) and mount -o \
                     prjquota"
                )));
            }
            if e.has_super_option("ro") {
                return Ok(Some(format!(
                    "{at} is mounted read-only: ext4 accounts quotas only on a read-write \
                     mount (a kernel without CONFIG_QFMT_V2 refuses to mount an ext4 with the \
                     quota feature read-write)"
                )));
            }
            Ok((!enforced).then(mount_reason))
        }
        _ => Ok((!enforced).then(mount_reason)),
    }
}

/// `Ok` when project limits are enforced on `fs`, else `Unsupported` saying why.
fn check_support(fs: &QuotaFs) -> Result<(), HostError> {
    let mut info = IfDqinfo::default();
    // SAFETY: Q_GETINFO writes one `struct if_dqinfo`, mirrored by `IfDqinfo` (size asserted).
    let probe = unsafe { quotactl(Q_GETINFO, &fs.device, 0, &mut info) };
    let mut reasons = Vec::new();
    match probe {
        Err(Errno::ENOSYS) => {
            reasons.push(format!(
                "the kernel has no quota support for {} (quotactl: ENOSYS)",
                fs.kind
            ));
            reasons.extend(setup_reason(fs)?);
        }
        Err(Errno::ESRCH) => {
            reasons.extend(setup_reason(fs)?);
            if reasons.is_empty() {
                reasons.push(format!(
                    "project quota accounting is off on {} (quotactl Q_GETINFO: ESRCH)",
                    fs.at()
                ));
            }
        }
        Err(e) => return Err(nix_err("quotactl Q_GETINFO", &fs.entry.mount_point, e)),
        Ok(()) => {
            let mut state = FsQuotaStatv {
                qs_version: FS_QSTATV_VERSION1,
                ..FsQuotaStatv::default()
            };
            // SAFETY: Q_XGETQSTATV reads `qs_version` and writes one `struct
            // fs_quota_statv`, mirrored by `FsQuotaStatv` (size asserted).
            let flags = match unsafe { quotactl(Q_XGETQSTATV, &fs.device, 0, &mut state) } {
                Ok(()) => state.qs_flags,
                Err(Errno::ENOSYS) => 0, // "no quota type on at all"
                Err(e) => {
                    return Err(nix_err("quotactl Q_XGETQSTATV", &fs.entry.mount_point, e));
                }
            };
            if flags & FS_QUOTA_PDQ_ENFD != 0 {
                return Ok(());
            }
            reasons.extend(setup_reason(fs)?);
            if reasons.is_empty() {
                reasons.push(format!(
                    "{} accounts project quotas but does not enforce them; mount it with \
                     prjquota",
                    fs.at()
                ));
            }
        }
    }
    Err(HostError::Unsupported(reasons.join("; ")))
}

fn open_follow(path: &Path) -> Result<OwnedFd, HostError> {
    nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| nix_err("open", path, e))
}

pub(super) fn support(path: &Path) -> Result<(), HostError> {
    let fd = open_follow(path)?;
    let fs = quota_fs(fd.as_fd(), path)?;
    check_support(&fs)
}

fn get_xattr(fd: BorrowedFd<'_>, path: &Path) -> Result<FsXattr, HostError> {
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr`, mirrored by `FsXattr` (size and
    // request number asserted), into a live local; `fd` is open for reading.
    unsafe { ioctl::fs_getxattr(fd.as_raw_fd(), &mut attr) }
        .map_err(|e| nix_err("FS_IOC_FSGETXATTR", path, e))?;
    Ok(attr)
}

fn set_xattr(fd: BorrowedFd<'_>, path: &Path, attr: &FsXattr) -> Result<(), HostError> {
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` (mirrored by `FsXattr`) from a
    // live borrow; `fd` is open for reading.
    unsafe { ioctl::fs_setxattr(fd.as_raw_fd(), attr) }
        .map_err(|e| nix_err("FS_IOC_FSSETXATTR", path, e))?;
    Ok(())
}

fn set_block_limit(fs: &QuotaFs, project_id: u32, bytes: u64) -> Result<(), Errno> {
    let mut quota = FsDiskQuota {
        d_version: FS_DQUOT_VERSION,
        d_flags: FS_PROJ_QUOTA,
        d_fieldmask: FS_DQ_BHARD,
        d_id: project_id,
        d_blk_hardlimit: bytes.div_ceil(BB),
        ..FsDiskQuota::default()
    };
    // SAFETY: Q_XSETQLIM reads one `struct fs_disk_quota`, mirrored by `FsDiskQuota` (size
    // and offsets asserted).
    unsafe { quotactl(Q_XSETQLIM, &fs.device, project_id, &mut quota) }
}

pub(super) fn set_project(dir: &Path, project_id: u32, limit_bytes: u64) -> Result<(), HostError> {
    if project_id == 0 {
        return Err(invalid(
            "project quota",
            dir,
            "project 0 is every file's default project",
        ));
    }
    let fd = open_dir_nofollow(dir)?;
    let fs = quota_fs(fd.as_fd(), dir)?;
    check_support(&fs)?;
    let mut attr = get_xattr(fd.as_fd(), dir)?;
    if attr.fsx_projid != project_id || attr.fsx_xflags & FS_XFLAG_PROJINHERIT == 0 {
        attr.fsx_projid = project_id;
        attr.fsx_xflags |= FS_XFLAG_PROJINHERIT;
        set_xattr(fd.as_fd(), dir, &attr)?;
    }
    set_block_limit(&fs, project_id, limit_bytes)
        .map_err(|e| nix_err("quotactl Q_XSETQLIM", dir, e))
}

pub(super) fn clear_project(dir: &Path, project_id: u32) -> Result<(), HostError> {
    if project_id == 0 {
        return Err(invalid(
            "project quota",
            dir,
            "project 0 is every file's default project",
        ));
    }
    let (fd, exists) = match open_dir_nofollow(dir) {
        Ok(fd) => (fd, true),
        Err(e) if e.errno() == Some(libc::ENOENT) => (open_parent(dir)?.0, false),
        Err(e) => return Err(e),
    };
    let fs = quota_fs(fd.as_fd(), dir)?;
    match set_block_limit(&fs, project_id, 0) {
        // No quota record, accounting off, or no quota support: no limit to clear.
        Ok(()) | Err(Errno::ENOENT | Errno::ESRCH | Errno::ENOSYS) => {}
        Err(e) => return Err(nix_err("quotactl Q_XSETQLIM", dir, e)),
    }
    if !exists {
        return Ok(());
    }
    let mut attr = get_xattr(fd.as_fd(), dir)?;
    if attr.fsx_projid != project_id && attr.fsx_projid != 0 {
        return Err(invalid(
            "project quota",
            dir,
            format!("is in project {}, not {project_id}", attr.fsx_projid),
        ));
    }
    if attr.fsx_projid != 0 || attr.fsx_xflags & FS_XFLAG_PROJINHERIT != 0 {
        attr.fsx_projid = 0;
        attr.fsx_xflags &= !FS_XFLAG_PROJINHERIT;
        set_xattr(fd.as_fd(), dir, &attr)?;
    }
    Ok(())
}

pub(super) fn usage(path: &Path, project_id: u32) -> Result<TreeUsage, HostError> {
    let fd = open_follow(path)?;
    let fs = quota_fs(fd.as_fd(), path)?;
    let mut quota = FsDiskQuota::default();
    // SAFETY: Q_XGETQUOTA writes one `struct fs_disk_quota`, mirrored by `FsDiskQuota`.
    match unsafe { quotactl(Q_XGETQUOTA, &fs.device, project_id, &mut quota) } {
        Ok(()) => Ok(TreeUsage {
            bytes: quota.d_bcount.saturating_mul(BB),
            inodes: quota.d_icount,
        }),
        Err(Errno::ENOENT) => Ok(TreeUsage::default()),
        Err(e @ (Errno::ESRCH | Errno::ENOSYS)) => {
            check_support(&fs)?;
            Err(nix_err("quotactl Q_XGETQUOTA", path, e))
        }
        Err(e) => Err(nix_err("quotactl Q_XGETQUOTA", path, e)),
    }
}

/// Project ids named in `/etc/projid` (`name:id`) or `/etc/projects` (`id:path`) text.
fn parse_id_file(text: &str, id_field: usize) -> impl Iterator<Item = u32> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(move |l| l.split(':').nth(id_field)?.trim().parse().ok())
}

pub(super) const PROJECT_FILES: [(&str, usize); 2] = [("/etc/projid", 1), ("/etc/projects", 0)];

pub(super) fn ids_in_use(
    fs_path: &Path,
    files: &[(&str, usize)],
) -> Result<BTreeSet<u32>, HostError> {
    let mut ids = BTreeSet::new();
    for (file, field) in files {
        match std::fs::read_to_string(file) {
            Ok(text) => ids.extend(parse_id_file(&text, *field)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(HostError::io("read", Path::new(file), e)),
        }
    }
    let top = nix::fcntl::open(
        fs_path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| nix_err("open", fs_path, e))?;
    let projid = |fd: BorrowedFd<'_>, path: &Path| match get_xattr(fd, path) {
        Ok(attr) => Ok(Some(attr.fsx_projid)),
        // Filesystems without project ids.
        Err(e)
            if matches!(
                e.errno(),
                Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    };
    ids.extend(projid(top.as_fd(), fs_path)?);
    let listing = nix::unistd::dup(&top).map_err(|e| nix_err("dup", fs_path, e))?;
    let mut dir = Dir::from_fd(listing).map_err(|e| nix_err("readdir", fs_path, e))?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| nix_err("readdir", fs_path, e))?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    for name in names {
        let path = fs_path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        match statx_at(top.as_fd(), &name) {
            Ok(meta) if meta.is_dir() && !meta.mount_root => {}
            Ok(_) | Err(Errno::ENOENT) => continue,
            Err(e) => return Err(nix_err("stat", &path, e)),
        }
        let child = match nix::fcntl::openat(&top, name.as_c_str(), oflags_dir(), Mode::empty()) {
            Ok(fd) => fd,
            // Gone or replaced by something else meanwhile.
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => continue,
            Err(e) => return Err(nix_err("open", &path, e)),
        };
        ids.extend(projid(child.as_fd(), &path)?);
    }
    ids.remove(&0);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_headers() {
        // Checked against <linux/dqblk_xfs.h>, <linux/fs.h> and <linux/quota.h> with a C
        // compiler on Debian 12.
        assert_eq!(std::mem::offset_of!(FsXattr, fsx_projid), 12);
        assert_eq!(std::mem::offset_of!(FsDiskQuota, d_id), 4);
        assert_eq!(std::mem::offset_of!(FsDiskQuota, d_blk_hardlimit), 8);
        assert_eq!(std::mem::offset_of!(FsDiskQuota, d_itimer), 56);
        assert_eq!(std::mem::offset_of!(FsDiskQuota, d_padding4), 104);
        assert_eq!(std::mem::offset_of!(FsQuotaStatv, qs_flags), 2);
        assert_eq!(std::mem::offset_of!(FsQuotaStatv, qs_pquota), 56);
        assert_eq!(std::mem::offset_of!(FsQuotaStatv, qs_pad2), 104);
        assert_eq!(Q_GETINFO << SUBCMDSHIFT | PRJQUOTA, 0x8000_0502);
    }

    #[test]
    fn id_files() {
        let projid = "# name:id\nlogs:42\n\n  db:7  \nbad:x\nweird\n";
        assert_eq!(parse_id_file(projid, 1).collect::<Vec<_>>(), vec![42, 7]);
        let projects = "42:/srv/logs\n# 9:/x\n10:/a:b\n";
        assert_eq!(parse_id_file(projects, 0).collect::<Vec<_>>(), vec![42, 10]);
    }
}
