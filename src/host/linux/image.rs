//! Image files: detecting and making filesystems with the mkfs tools, creating allocated
//! images (sized for their filesystem, see [`super::fs_size`]), and mounting an image
//! through a loop device.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;

use super::dir_sync::fsync_shared_dir;
use super::fd::{
    fd_path, fsync_fd, invalid, mount_by_id, nix_err, open_nofollow, open_parent, open_regular_rw,
    statx_fd,
};
use super::fs_size::{self, SizeMemory};
use super::loopdev::{attach, clear_loop, loops_of, open_device, refuse_discards};
use crate::host::HostError;
use crate::host::types::FsType;

/// What filesystem signature the start of an image carries.
fn detect_fs(file: &File, path: &Path) -> Result<Option<FsType>, HostError> {
    let mut head = [0u8; 2048];
    let mut got = 0;
    while got < head.len() {
        let n = file
            .read_at(&mut head[got..], got as u64)
            .map_err(|e| HostError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    // XFS: "XFSB" at 0; byte 126 is sb_inprogress, set while mkfs.xfs has not finished.
    if got >= 128 && &head[0..4] == b"XFSB" && head[126] == 0 {
        return Ok(Some(FsType::Xfs));
    }
    // ext2/3/4: s_magic 0xEF53 (little endian) at 1024 + 56.
    if got >= 1082 && head[1080] == 0x53 && head[1081] == 0xEF {
        return Ok(Some(FsType::Ext4));
    }
    Ok(None)
}

/// Finds an administration tool: `$PATH` first, then the usual sbin directories (a daemon's
/// environment may lack them).
fn tool(name: &str) -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A finished tool run: its exit status, its complaint (stderr and stdout) and its command
/// line, for messages.
pub(super) struct ToolRun {
    pub(super) status: std::process::ExitStatus,
    pub(super) text: String,
    command: String,
}

impl ToolRun {
    pub(super) fn error(self) -> HostError {
        HostError::Command {
            command: self.command,
            status: self.status.to_string(),
            stderr: self.text,
        }
    }
}

pub(super) fn run_tool(name: &str, args: &[&OsStr]) -> Result<ToolRun, HostError> {
    let program = tool(name);
    let mut command = name.to_string();
    for a in args {
        command.push(' ');
        command.push_str(&a.to_string_lossy());
    }
    let output = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HostError::io("exec", &program, e))?;
    // Both: e2fsck, say, says why on stdout ("... is in use.") and that it gave up on stderr.
    let text = [&output.stderr, &output.stdout]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Ok(ToolRun {
        status: output.status,
        text,
        command,
    })
}

pub(super) fn run(name: &str, args: &[&OsStr]) -> Result<(), HostError> {
    let done = run_tool(name, args)?;
    if done.status.success() {
        Ok(())
    } else {
        Err(done.error())
    }
}

fn mkfs(image: &Path, fs: FsType) -> Result<(), HostError> {
    let img = image.as_os_str();
    match fs {
        FsType::Ext4 => run(
            "mkfs.ext4",
            &[
                OsStr::new("-q"),
                OsStr::new("-F"),
                OsStr::new("-E"),
                OsStr::new("nodiscard,lazy_itable_init=1,lazy_journal_init=1"),
                OsStr::new("-m"),
                OsStr::new("0"),
                img,
            ],
        ),
        FsType::Xfs => run(
            "mkfs.xfs",
            &[OsStr::new("-q"), OsStr::new("-f"), OsStr::new("-K"), img],
        ),
    }
}

pub(super) fn create_image(
    image: &Path,
    size: u64,
    fs: Option<FsType>,
    sizes: &SizeMemory,
) -> Result<(), HostError> {
    let (parent, name) = open_parent(image)?;
    let fd = nix::fcntl::openat(
        &parent,
        name,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| match e {
        Errno::ELOOP => HostError::Symlink {
            path: image.to_path_buf(),
        },
        e => nix_err("create", image, e),
    })?;
    let meta = statx_fd(fd.as_fd()).map_err(|e| nix_err("stat", image, e))?;
    if !meta.is_file() {
        return Err(invalid("create", image, "exists and is not a regular file"));
    }
    let file = File::from(fd);
    let set_len = |len: u64| {
        let len = i64::try_from(len).map_err(|_| invalid("truncate", image, "size too large"))?;
        nix::unistd::ftruncate(&file, len).map_err(|e| nix_err("ftruncate", image, e))
    };
    // A filesystem image is bigger than `size` by its filesystem's own metadata; a retried
    // create finds it so, already made.
    let fits = match fs {
        None => meta.size == size,
        Some(_) => meta.size >= size,
    };
    if meta.size == 0 && size > 0 {
        set_len(size)?;
    } else if !fits {
        return Err(invalid(
            "create",
            image,
            format!("exists with {} bytes, not {size}", meta.size),
        ));
    }
    if let Some(fs) = fs {
        match detect_fs(&file, image)? {
            Some(found) if found == fs => {}
            Some(found) => {
                return Err(invalid(
                    "mkfs",
                    image,
                    format!("already holds {}, not {}", found.as_str(), fs.as_str()),
                ));
            }
            None => {
                // Made, measured, and made again larger until the filesystem holds `size`;
                // the size that held it last time is tried first.
                let mut image_size = sizes.first_guess(fs, size);
                for _ in 0..8 {
                    set_len(image_size)?;
                    mkfs(image, fs)?;
                    let usable = fs_size::usable_bytes(image, fs)?;
                    if usable >= size {
                        sizes.remember(fs, size, image_size);
                        break;
                    }
                    image_size = fs_size::next_image_size(image_size, usable, size);
                }
            }
        }
    }
    // A reservation is a guarantee: every block of the image is allocated now, so writes
    // inside the volume never meet a full host disk.
    let len = statx_fd(file.as_fd())
        .map_err(|e| nix_err("stat", image, e))?
        .size;
    allocate(&file, image, 0, len)?;
    fsync_fd(file.as_fd(), image)?;
    fsync_shared_dir(parent.as_fd(), image)
}

/// `fallocate(2)` of `len` bytes from `offset`: real blocks, not a hole (the data reads as
/// zeros). Refused with `ENOSPC` when the host filesystem cannot hold them.
pub(super) fn allocate(
    fd: &impl AsFd,
    image: &Path,
    offset: u64,
    len: u64,
) -> Result<(), HostError> {
    if len == 0 {
        return Ok(());
    }
    let to_off =
        |n: u64| i64::try_from(n).map_err(|_| invalid("allocate", image, "size too large"));
    nix::fcntl::fallocate(
        fd.as_fd(),
        nix::fcntl::FallocateFlags::empty(),
        to_off(offset)?,
        to_off(len)?,
    )
    .map_err(|e| nix_err("fallocate", image, e))
}

/// Allocates every block of an existing image again: fills any hole punched since (a grow
/// cut short by a crash between its resize and its allocation), and changes nothing where
/// all is allocated.
pub(super) fn allocate_whole(image: &Path) -> Result<(), HostError> {
    let (fd, meta) = open_regular_rw("allocate", image)?;
    allocate(&fd, image, 0, meta.size)?;
    fsync_fd(fd.as_fd(), image)
}

pub(super) fn mount_image(image: &Path, target: &Path, fs: FsType) -> Result<(), HostError> {
    // Every mount (a publish, a recovery) restores the guarantee first. A host disk too
    // full for it does not keep the user from their data: mounted all the same, and said.
    match allocate_whole(image) {
        Err(e) if e.errno() == Some(libc::ENOSPC) => tracing::warn!(
            image = %image.display(),
            error = %e,
            "the image has holes and the host disk has no room to fill them: writes inside \
             the volume may fail before it is full; free space on the host disk"
        ),
        other => other?,
    }
    let (target_fd, target_meta) = open_nofollow(target)?;
    if !target_meta.is_dir() {
        return Err(invalid("mount", target, "not a directory"));
    }
    let ours = loops_of(image)?;
    if target_meta.mount_root {
        let entry = mount_by_id(target_meta.mnt_id)?;
        if let Some(entry) = entry {
            if let Some(l) = ours.iter().find(|l| l.devnum == entry.device) {
                // Already mounted here (perhaps by a berth that let discards through).
                return refuse_discards(&l.device);
            }
            return Err(invalid(
                "mount",
                target,
                format!(
                    "already has a mount of {} ({})",
                    entry.source, entry.fs_type
                ),
            ));
        }
    }
    // Reuse a device already backed by the image: a second device over the same file would
    // be a second, independent block device and mounting both corrupts the filesystem.
    let mut device = None;
    for l in &ours {
        if let Some(fd) = open_device(&l.device)? {
            refuse_discards(&l.device)?;
            device = Some((fd, l.device.clone(), false));
            break;
        }
    }
    let (device_fd, device, fresh) = match device {
        Some(d) => d,
        None => {
            let (fd, dev) = attach(image, true)?;
            (fd, dev, true)
        }
    };
    // ext4's background inode-table zeroing reaches the loop device as WRITE_ZEROES, which
    // the loop driver turns into holes punched in the allocated image: it stays off (the
    // tables are flagged uninitialised, which ext4 handles). A restored snapshot is a copy of
    // its source's filesystem, UUID included; xfs refuses to mount a second filesystem with a
    // mounted one's UUID unless told `nouuid`.
    let data = match fs {
        FsType::Ext4 => Some("noinit_itable"),
        FsType::Xfs => Some("nouuid"),
    };
    let result = nix::mount::mount(
        Some(device.as_path()),
        &fd_path(target_fd.as_fd()),
        Some(fs.as_str()),
        MsFlags::empty(),
        data,
    );
    match result {
        Ok(()) => Ok(()), // closing `device_fd` leaves the mount as the device's only user
        Err(e) => {
            let error = nix_err("mount", target, e);
            if fresh {
                // Best effort: with AUTOCLEAR the close below detaches it anyway.
                let _ = clear_loop(device_fd.as_fd(), &device);
            }
            drop(device_fd);
            Err(error)
        }
    }
}
