//! A loop device berth attaches reads from its image only what it is asked for: the image's
//! open file carries `POSIX_FADV_RANDOM`, so the host does not read ahead around each request
//! (the inner filesystem reads ahead itself). Checked for real: sequential 4k `O_DIRECT`
//! reads of the device, then which pages of the image sit in the host page cache. A loop
//! device attached without the hint (`losetup`) caches 20 pages for the same four reads on
//! the kernel measured in benches/data_path.rs.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use berth::engine::types::FsType;
use berth::host::linux::LinuxHost;
use berth::host::{Host, TargetKind};

#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/host.rs"]
mod support;

use support::*;

const PAGE: usize = 4096;

/// How many of `file`'s first `len` bytes' pages are in the page cache (`mincore` of a
/// shared mapping).
fn resident_pages(file: &File, len: usize) -> usize {
    // SAFETY: (test) a fresh shared read-only mapping of an open file of at least `len`
    // bytes; nothing is read through it, and it is unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap");
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: (test) `map` is a live mapping of `len` bytes and `vec` has one byte per page.
    let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    // SAFETY: (test) unmaps exactly the mapping made above.
    unsafe { libc::munmap(map, len) };
    assert_eq!(rc, 0, "mincore");
    vec.iter().filter(|&&b| b & 1 == 1).count()
}

/// Reads `count` consecutive pages of `device` from page `first`, bypassing its own cache.
fn read_direct(device: &Path, first: u64, count: u64) {
    let dev = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .unwrap();
    let layout = std::alloc::Layout::from_size_align(PAGE, PAGE).unwrap();
    // SAFETY: (test) a non-zero-sized layout; freed below.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null());
    // SAFETY: (test) `ptr` is valid for PAGE bytes and only used here.
    let buffer = unsafe { std::slice::from_raw_parts_mut(ptr, PAGE) };
    let result =
        (first..first + count).try_for_each(|page| dev.read_exact_at(buffer, page * PAGE as u64));
    // SAFETY: (test) allocated above with the same layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    result.unwrap();
}

/// Drops `image`'s pages (clean: berth fsyncs what it writes and the inner filesystem is
/// idle), reads four consecutive pages of `device` from page `first`, and asserts that the
/// host cached those four only: without the hint its readahead takes them for a stream and
/// reads well past them.
fn assert_reads_only_what_is_asked(image: &Path, device: &Path, first: u64) {
    let file = File::open(image).unwrap();
    let len = usize::try_from(file.metadata().unwrap().len()).unwrap();
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
    assert_eq!(resident_pages(&file, len), 0, "{}", image.display());
    read_direct(device, first, 4);
    assert_eq!(
        resident_pages(&file, len),
        4,
        "the host read ahead in {}: its loop device {} lacks POSIX_FADV_RANDOM",
        image.display(),
        device.display()
    );
}

#[test]
fn block_volume_loop_device_does_not_read_ahead_on_the_host() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let image = s.join("block.img");
    host.create_image(&image, 64 * MIB, None).unwrap();
    let device = host.attach_loop(&image).unwrap();
    assert_reads_only_what_is_asked(&image, &device, 2560);
    host.detach_loop(&image).unwrap();
    wait_no_loops(&host, &image);
}

#[test]
fn mounted_volume_loop_device_does_not_read_ahead_on_the_host() {
    harness::require_root();
    let s = scratch();
    let host = LinuxHost::new();
    let image = s.join("vol.img");
    let mnt = s.join("mnt");
    host.prepare_target(&mnt, TargetKind::Directory).unwrap();
    host.create_image(&image, 64 * MIB, Some(FsType::Ext4))
        .unwrap();
    host.mount_image(&image, &mnt, FsType::Ext4).unwrap();
    let device = backed_loops(&host, &image).pop().expect("a loop device");
    // Settle the fresh mount's own writes (superblock, journal) so that they are clean.
    File::open(&mnt).unwrap().sync_all().unwrap();
    File::open(&image).unwrap().sync_all().unwrap();
    // Free space in the middle of the new filesystem: nothing there but what we read.
    assert_reads_only_what_is_asked(&image, &device, 10240);
    host.unmount(&mnt).unwrap();
    wait_no_loops(&host, &image);
}
