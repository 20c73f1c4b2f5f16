//! Growing an image and its filesystem: online where the kernel allows it, offline (unmount,
//! check, resize, mount again) for ext4 without `CAP_SYS_RESOURCE`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::dirs::fs_stats;
use super::fd::{
    fd_path, fsync_fd, invalid, mount_by_id, nix_err, open_nofollow, open_regular_rw,
    read_mountinfo,
};
use super::fs_size;
use super::image::{allocate, run, run_tool};
use super::loopdev::{SysLoop, ioctl, loops_of, open_device};
use crate::host::types::FsType;
use crate::host::{HostError, MountEntry};

/// Grows the image (and its filesystem) until the filesystem shows `size`: the metadata the
/// new space brings is only known once it is made, so a short grow is done again.
pub(super) fn grow_image(
    image: &Path,
    size: u64,
    mounted: Option<(&Path, FsType)>,
) -> Result<(), HostError> {
    for _ in 0..4 {
        match grow_image_once(image, size, mounted)? {
            Some(shown) if shown < size => continue,
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// One grow step; returns what the filesystem shows afterwards (`None`: unmounted).
fn grow_image_once(
    image: &Path,
    size: u64,
    mounted: Option<(&Path, FsType)>,
) -> Result<Option<u64>, HostError> {
    let (fd, meta) = open_regular_rw("grow", image)?;
    // A filesystem image carries its metadata beside the size its filesystem shows.
    // Unmounted, only the image grows (its filesystem is grown where it is mounted).
    let filesystem = match mounted {
        Some((mount_point, fs)) => Some((fs, fs_stats(mount_point)?.bytes_total)),
        None => None,
    };
    let (shown, target) = match filesystem {
        // Already showing the size (a retried grow): only the allocation may be missing,
        // if the grow that was cut short had resized but not yet allocated.
        Some((_, usable)) if usable >= size => {
            allocate(&fd, image, 0, meta.size)?;
            fsync_fd(fd.as_fd(), image)?;
            return Ok(Some(usable));
        }
        Some((_, usable)) => (usable, fs_size::grown_image_size(meta.size, usable, size)),
        None => (meta.size, size),
    };
    if size < shown {
        return Err(invalid(
            "grow",
            image,
            format!("is {shown} bytes; shrinking to {size} is not supported"),
        ));
    }
    let size = target.max(meta.size);
    let ours = loops_of(image)?;
    // Where the filesystem is mounted, and whether it can grow there, is settled before
    // anything changes: a refused grow leaves the image and its device as they were.
    let target = match mounted {
        None => None,
        Some((mount_point, fs)) => {
            let (entry, device) = mounted_from(image, mount_point, &ours)?;
            if fs == FsType::Ext4 && !has_capability(CAP_SYS_RESOURCE)? {
                offline_grow_refusal(mount_point, &entry)?;
            }
            Some((mount_point, fs, entry, device))
        }
    };
    // Extends the image and tells its loop devices; doing it again changes nothing.
    let extend = || -> Result<(), HostError> {
        if size > meta.size {
            // The growth is allocated like the image was: still a guarantee.
            allocate(&fd, image, meta.size, size - meta.size)?;
            fsync_fd(fd.as_fd(), image)?;
        }
        for l in &ours {
            if let Some(dev) = open_device(&l.device)? {
                // SAFETY: LOOP_SET_CAPACITY takes no argument; `dev` is an open loop device fd.
                unsafe { ioctl::loop_set_capacity(dev.as_raw_fd()) }
                    .map_err(|e| nix_err("LOOP_SET_CAPACITY", &l.device, e))?;
            }
        }
        Ok(())
    };
    let Some((mount_point, fs, entry, device)) = target else {
        return extend().map(|()| None);
    };
    match fs {
        FsType::Ext4 => grow_ext4(mount_point, &entry, &device, &extend)?,
        FsType::Xfs => {
            extend()?;
            run("xfs_growfs", &[OsStr::new("-d"), mount_point.as_os_str()])?
        }
    }
    // A resize zeroes new metadata through the loop device, which punches holes in the
    // image: allocated again (allocating what is allocated changes nothing).
    allocate(&fd, image, 0, size)?;
    fsync_fd(fd.as_fd(), image)?;
    Ok(Some(fs_stats(mount_point)?.bytes_total))
}

/// The mount at `mount_point` (its root) and the one of `ours`, the loop devices of
/// `image`, that it is made from.
fn mounted_from(
    image: &Path,
    mount_point: &Path,
    ours: &[SysLoop],
) -> Result<(MountEntry, SysLoop), HostError> {
    let (mp_fd, mp_meta) = open_nofollow(mount_point)?;
    let entry = if mp_meta.mount_root {
        mount_by_id(mp_meta.mnt_id)?
    } else {
        None
    };
    drop(mp_fd);
    let Some(entry) = entry else {
        return Err(invalid("grow", mount_point, "is not a mount point"));
    };
    let Some(device) = ours.iter().find(|l| l.devnum == entry.device) else {
        return Err(invalid(
            "grow",
            mount_point,
            format!(
                "holds {}, not a loop device of {}",
                entry.source,
                image.display()
            ),
        ));
    };
    Ok((entry, device.clone()))
}

const CAP_SYS_RESOURCE: u32 = 24;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct` of `<linux/capability.h>`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const _: () = assert!(std::mem::size_of::<CapHeader>() == 8);
const _: () = assert!(std::mem::size_of::<CapData>() == 12);

/// Whether the calling thread has capability `cap` in effect (`capget(2)`).
fn has_capability(cap: u32) -> Result<bool, HostError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: with a version-3 header, capget reads `header` and writes two
    // `__user_cap_data_struct`s (mirrored by `CapData`, sizes asserted) to `data`, a live
    // local array of exactly two; both pointers are valid for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::from_mut(&mut header),
            data.as_mut_ptr(),
        )
    };
    Errno::result(rc).map_err(|e| nix_err("capget", Path::new("/proc/thread-self"), e))?;
    let word = usize::try_from(cap / 32).unwrap_or(usize::MAX);
    Ok(data
        .get(word)
        .is_some_and(|d| d.effective & (1 << (cap % 32)) != 0))
}

fn is_permission_denied(error: &HostError) -> bool {
    matches!(error, HostError::Command { stderr, .. }
        if stderr.contains("Permission denied") || stderr.contains("Operation not permitted"))
}

/// Grows the ext4 mounted at `mount_point` (the mount `entry`, on `device`) to its device's
/// size: online with `CAP_SYS_RESOURCE`, else offline if nothing else mounts it.
/// `extend` makes the image and its device larger; offline, it runs only once the
/// filesystem is checked, so a filesystem that turns out to be busy is left as it was.
fn grow_ext4(
    mount_point: &Path,
    entry: &MountEntry,
    device: &SysLoop,
    extend: &dyn Fn() -> Result<(), HostError>,
) -> Result<(), HostError> {
    if has_capability(CAP_SYS_RESOURCE)? {
        extend()?;
        match run("resize2fs", &[device.device.as_os_str()]) {
            Ok(()) => return Ok(()),
            // The capability is there but the resize was refused anyway (an LSM, a user
            // namespace that does not own the filesystem): offline it is.
            Err(e) if is_permission_denied(&e) => {}
            Err(e) => return Err(e),
        }
    }
    grow_ext4_offline(mount_point, entry, device, extend)
}

/// The `MS_*` flags that reproduce a mount's per-mount options (mountinfo field 6).
fn mount_flags(options: &str) -> MsFlags {
    let mut flags = MsFlags::empty();
    for option in options.split(',') {
        flags |= match option {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        };
    }
    flags
}

/// `e2fsck -f -p`: exit codes 0 (clean), 1 (errors fixed) and 2 (fixed, "reboot" — which
/// only matters for a mounted root filesystem) are fine; `resize2fs` insists on a freshly
/// checked filesystem.
fn check_ext4(device: &Path) -> Result<(), HostError> {
    let done = run_tool(
        "e2fsck",
        &[OsStr::new("-f"), OsStr::new("-p"), device.as_os_str()],
    )?;
    match done.status.code() {
        Some(0..=2) => Ok(()),
        _ => Err(done.error()),
    }
}

fn mount_device(
    device: &Path,
    mount_point: &Path,
    fs: &str,
    flags: MsFlags,
) -> Result<(), HostError> {
    let (fd, meta) = open_nofollow(mount_point)?;
    if !meta.is_dir() {
        return Err(invalid("mount", mount_point, "not a directory"));
    }
    nix::mount::mount(
        Some(device),
        &fd_path(fd.as_fd()),
        Some(fs),
        flags,
        None::<&str>,
    )
    .map_err(|e| nix_err("mount", mount_point, e))
}

/// Unmounts `mount_point`, retrying `EBUSY` briefly: a holder may be transient (a child
/// process forked elsewhere in this process that has not reached `exec` and its
/// close-on-exec yet, a udev probe). A mount still busy after that is reported.
fn unmount_when_idle(mount_point: &Path) -> Result<(), HostError> {
    let mut tries = 0;
    loop {
        match nix::mount::umount2(mount_point, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) if tries < 5 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(nix_err("umount", mount_point, e)),
        }
    }
}

/// Why the ext4 mounted at `mount_point` (the mount `entry`) cannot be grown offline, if it
/// cannot: another mount of it (a container may be using it), or a mount of a directory
/// inside it rather than its root.
fn offline_grow_refusal(mount_point: &Path, entry: &MountEntry) -> Result<(), HostError> {
    let others: Vec<String> = read_mountinfo()?
        .into_iter()
        .filter(|m| m.device == entry.device && m.id != entry.id)
        .map(|m| m.mount_point.display().to_string())
        .collect();
    if entry.root != Path::new("/") {
        // Mounting the device again would put the filesystem's root where a subdirectory
        // of it was: not the same mount. (berth's own image mounts are of the root.)
        return Err(HostError::Unsupported(format!(
            "online ext4 resize needs CAP_SYS_RESOURCE, and {} is a mount of {} inside the \
             filesystem, which berth does not remount",
            mount_point.display(),
            entry.root.display()
        )));
    }
    if !others.is_empty() {
        return Err(HostError::Unsupported(format!(
            "online ext4 resize needs CAP_SYS_RESOURCE; unpublish the volume to grow it \
             offline (also mounted at {})",
            others.join(", ")
        )));
    }
    Ok(())
}

/// Offline grow: see the module docs. Refused while the filesystem has another mount.
fn grow_ext4_offline(
    mount_point: &Path,
    entry: &MountEntry,
    device: &SysLoop,
    extend: &dyn Fn() -> Result<(), HostError>,
) -> Result<(), HostError> {
    offline_grow_refusal(mount_point, entry)?;
    // The device detaches itself on its last close (autoclear): hold it across the unmount.
    let Some(hold) = open_device(&device.device)? else {
        return Err(invalid(
            "grow",
            &device.device,
            "loop device went away during the grow",
        ));
    };
    let flags = mount_flags(&entry.options);
    unmount_when_idle(mount_point)?;
    let resized = check_ext4(&device.device)
        .and_then(|()| extend())
        .and_then(|()| run("resize2fs", &[device.device.as_os_str()]));
    let remounted = mount_device(&device.device, mount_point, "ext4", flags);
    drop(hold);
    match (resized, remounted) {
        (resized, Ok(())) => resized,
        (resized, Err(mount_error)) => {
            let mut message = format!(
                "{mount_error}; the filesystem on {} is left unmounted",
                device.device.display()
            );
            if let Err(e) = resized {
                message.push_str(&format!(" (the offline resize failed too: {e})"));
            }
            Err(HostError::io(
                "mount after offline resize",
                mount_point,
                io::Error::other(message),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_flags_from_options() {
        assert_eq!(
            mount_flags("ro,nosuid,nodev,relatime"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RELATIME
        );
        assert_eq!(mount_flags("rw"), MsFlags::empty());
    }

    #[test]
    fn capget_answers() {
        // Whatever this process has, the call itself must work.
        assert!(has_capability(CAP_SYS_RESOURCE).is_ok());
        assert!(has_capability(63).is_ok());
    }
}
