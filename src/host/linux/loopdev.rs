//! Loop devices through `LOOP_CTL_GET_FREE` and `LOOP_CONFIGURE`: finding the devices an
//! image is attached to, attaching, clearing.
//!
//! A device refuses discards: the loop driver turns a discard (`fstrim`, a `discard` mount)
//! into a hole punched in the image, and an image with holes no longer guarantees its size.

use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

use super::fd::{invalid, nix_err, open_regular_rw, statx_path};
use crate::host::HostError;

/// How many times to ask for another free loop device when one is taken under our feet.
const LOOP_ATTEMPTS: usize = 16;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>` (the `LOOP_CONFIGURE` argument).
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

pub(super) mod ioctl {
    use super::LoopConfig;
    // From <linux/loop.h>; these are "bad" (not _IOC-encoded) request numbers.
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_none_bad!(loop_set_capacity, 0x4C07);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
}

/// An attached loop device as `/sys/block` shows it.
#[derive(Clone, Debug)]
pub(super) struct SysLoop {
    pub(super) device: PathBuf,
    pub(super) backing: PathBuf,
    /// `major:minor`, as in mountinfo.
    pub(super) devnum: String,
    pub(super) autoclear: bool,
}

fn read_sys(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim_end_matches('\n').to_string())
}

pub(super) fn sys_loops() -> Result<Vec<SysLoop>, HostError> {
    let sys = Path::new("/sys/block");
    let entries = std::fs::read_dir(sys).map_err(|e| HostError::io("readdir", sys, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostError::io("readdir", sys, e))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let backing = match read_sys(&dir.join("loop/backing_file")) {
            Ok(b) => b,
            // Not attached (or detached meanwhile).
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(HostError::io("read", &dir.join("loop/backing_file"), e)),
        };
        let backing = backing
            .strip_suffix(" (deleted)")
            .map(str::to_string)
            .unwrap_or(backing);
        let devnum = read_sys(&dir.join("dev")).unwrap_or_else(|_| format!("7:{number}"));
        let autoclear = read_sys(&dir.join("loop/autoclear")).is_ok_and(|s| s.trim() == "1");
        out.push((
            number,
            SysLoop {
                device: PathBuf::from(format!("/dev/loop{number}")),
                backing: PathBuf::from(backing),
                devnum,
                autoclear,
            },
        ));
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out.into_iter().map(|(_, l)| l).collect())
}

/// Loop devices whose backing file is `image` (same device and inode; a deleted or replaced
/// file does not match).
pub(super) fn loops_of(image: &Path) -> Result<Vec<SysLoop>, HostError> {
    let want = statx_path(image)?;
    Ok(sys_loops()?
        .into_iter()
        .filter(|l| statx_path(&l.backing).is_ok_and(|m| m.same_inode(&want) && m.is_file()))
        .collect())
}

/// Opens `/dev/loopN`, making the node if there is no udev to do it.
fn open_loop_node(number: i32) -> Result<(OwnedFd, PathBuf), HostError> {
    let device = PathBuf::from(format!("/dev/loop{number}"));
    let flags = OFlag::O_RDWR | OFlag::O_CLOEXEC;
    match nix::fcntl::open(&device, flags, Mode::empty()) {
        Ok(fd) => return Ok((fd, device)),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(nix_err("open", &device, e)),
    }
    let sys = PathBuf::from(format!("/sys/block/loop{number}/dev"));
    let devnum = read_sys(&sys).map_err(|e| HostError::io("read", &sys, e))?;
    let (major, minor) = devnum
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| invalid("read", &sys, format!("bad device number {devnum:?}")))?;
    match nix::sys::stat::mknod(
        &device,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        libc::makedev(major, minor),
    ) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(nix_err("mknod", &device, e)),
    }
    let fd =
        nix::fcntl::open(&device, flags, Mode::empty()).map_err(|e| nix_err("open", &device, e))?;
    Ok((fd, device))
}

/// Attaches `image` to a fresh loop device; returns the open device (keep it open until the
/// device has another user when `autoclear` is set) and its path.
pub(super) fn attach(image: &Path, autoclear: bool) -> Result<(OwnedFd, PathBuf), HostError> {
    let (backing, _) = open_regular_rw("attach", image)?;
    // The loop device keeps this open file for its life, readahead state included. The inner
    // filesystem already reads ahead through the device (its queue's `read_ahead_kb`), so
    // the host reading ahead again around each of its requests only reads what nobody asked
    // for: with the host disk's readahead (8 MiB here) a 4k random read inside a volume
    // could pull in far more, and whether a later read found it cached made reads swing
    // (benches/data_path.rs). A hint about reads only: writes, flushes and their ordering
    // are untouched, and a filesystem that refuses it still gets its volume.
    if let Err(e) = nix::fcntl::posix_fadvise(
        &backing,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
    ) {
        tracing::warn!(
            image = %image.display(),
            error = %e,
            "the image's filesystem refuses POSIX_FADV_RANDOM: the host reads ahead around \
             each read inside the volume"
        );
    }
    let control_path = Path::new("/dev/loop-control");
    let control = nix::fcntl::open(
        control_path,
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| nix_err("open", control_path, e))?;
    let mut name = [0u8; LO_NAME_SIZE];
    let bytes = image.as_os_str().as_bytes();
    let n = bytes.len().min(LO_NAME_SIZE - 1);
    name[..n].copy_from_slice(&bytes[..n]);
    let backing_fd =
        u32::try_from(backing.as_raw_fd()).map_err(|_| invalid("attach", image, "negative fd"))?;
    // Buffered, not LO_FLAGS_DIRECT_IO: on the kernels measured (benches/data_path.rs) every
    // direct request of a loop device waited about a scheduler tick, making 4k random reads
    // inside a volume 20 times slower than on the host. Buffered is as durable: the driver
    // turns the inner filesystem's flush and FUA into an fsync of the image.
    let flags = if autoclear { LO_FLAGS_AUTOCLEAR } else { 0 };
    let mut last_error = None;
    for _ in 0..LOOP_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument; `control` is an open fd of
        // /dev/loop-control for the duration of the call.
        let number = unsafe { ioctl::loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(|e| nix_err("LOOP_CTL_GET_FREE", control_path, e))?;
        let (device_fd, device) = open_loop_node(number)?;
        let config = LoopConfig {
            fd: backing_fd,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `LoopConfig` mirrors
        // exactly (#[repr(C)], sizes asserted at compile time); the pointer is to a live
        // local for the duration of the call, and `device_fd`/`backing` are open fds. The
        // kernel takes its own reference to the backing file.
        match unsafe { ioctl::loop_configure(device_fd.as_raw_fd(), &config) } {
            Ok(_) => {
                if let Err(e) = refuse_discards(&device) {
                    let _ = clear_loop(device_fd.as_fd(), &device);
                    return Err(e);
                }
                return Ok((device_fd, device));
            }
            // Another process configured this device first: ask for another one.
            Err(Errno::EBUSY) => {
                last_error = Some(nix_err("LOOP_CONFIGURE", &device, Errno::EBUSY));
            }
            Err(e) => return Err(nix_err("LOOP_CONFIGURE", &device, e)),
        }
    }
    Err(last_error.unwrap_or_else(|| nix_err("LOOP_CONFIGURE", image, Errno::EBUSY)))
}

/// Makes `device` (`/dev/loopN`) refuse discards by lowering its discard limit to nothing
/// (`queue/discard_max_bytes`, the limit an administrator may set): `fstrim` then says the
/// operation is not supported instead of punching holes in the image. Setting it again
/// changes nothing.
pub(super) fn refuse_discards(device: &Path) -> Result<(), HostError> {
    let Some(name) = device.file_name() else {
        return Err(invalid("refuse discards", device, "not a device path"));
    };
    let limit = Path::new("/sys/block")
        .join(name)
        .join("queue/discard_max_bytes");
    if read_sys(&limit).is_ok_and(|v| v == "0") {
        return Ok(());
    }
    match std::fs::write(&limit, "0") {
        Ok(()) => Ok(()),
        // A read-only /sys (berth in a container without it): the volume works, and each
        // mount, grow and start fills again what a trim took.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EROFS | libc::EACCES | libc::EPERM)
            ) =>
        {
            tracing::warn!(
                device = %device.display(),
                error = %e,
                "cannot make the loop device refuse discards: an fstrim inside the volume \
                 punches holes in its image until the next mount or grow; give berth a \
                 writable /sys"
            );
            Ok(())
        }
        Err(e) => Err(HostError::io("write", &limit, e)),
    }
}

pub(super) fn clear_loop(fd: BorrowedFd<'_>, device: &Path) -> Result<(), HostError> {
    // SAFETY: LOOP_CLR_FD takes no argument; `fd` is an open fd of a loop device.
    match unsafe { ioctl::loop_clr_fd(fd.as_raw_fd()) } {
        Ok(_) | Err(Errno::ENXIO) => Ok(()),
        Err(e) => Err(nix_err("LOOP_CLR_FD", device, e)),
    }
}

pub(super) fn open_device(device: &Path) -> Result<Option<OwnedFd>, HostError> {
    match nix::fcntl::open(device, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        // Detached meanwhile (a device being torn down refuses new openers with ENXIO).
        Err(Errno::ENOENT | Errno::ENXIO) => Ok(None),
        Err(e) => Err(nix_err("open", device, e)),
    }
}

pub(super) fn attach_loop(image: &Path) -> Result<PathBuf, HostError> {
    let ours = loops_of(image)?;
    if let Some(l) = ours.iter().find(|l| !l.autoclear) {
        refuse_discards(&l.device)?;
        return Ok(l.device.clone());
    }
    if let Some(l) = ours.first() {
        // An autoclear device belongs to a mounted filesystem (or is being detached).
        return Err(HostError::io(
            "attach",
            image,
            io::Error::new(
                ErrorKind::ResourceBusy,
                format!(
                    "in use through {} (mounted or detaching)",
                    l.device.display()
                ),
            ),
        ));
    }
    let (_fd, device) = attach(image, false)?;
    Ok(device)
}

pub(super) fn detach_loop(image: &Path) -> Result<(), HostError> {
    let ours = match loops_of(image) {
        Ok(l) => l,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    for l in ours {
        if let Some(fd) = open_device(&l.device)? {
            clear_loop(fd.as_fd(), &l.device)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_file_name), 56);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_init), 216);
        assert_eq!(std::mem::offset_of!(LoopConfig, info), 8);
        assert_eq!(std::mem::offset_of!(LoopConfig, reserved), 240);
    }
}
