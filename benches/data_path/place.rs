//! The directories the data path bench runs its jobs in: a plain directory, a volume made
//! by berth's own host layer, or a lever's volume made by hand with `mkfs` + `losetup` +
//! `mount`; how each is settled and its caches dropped before a job; torn down on drop.
//! Apart from `data_path.rs`, which picks the variants, runs the rounds and reports.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use berth::host::Host;
use berth::host::linux::LinuxHost;
use berth::host::types::FsType;

use super::fio::job_files;
use super::host_support::Scratch;
use super::{os, path_str, run};

const GIB: u64 = 1 << 30;

/// A volume made with `mkfs` + `losetup` + `mount`, differing from berth's way only in what
/// its fields say (berth's own way also sets `POSIX_FADV_RANDOM` on the image's open file,
/// which `losetup` cannot: [`EXT4`] and [`XFS`] are berth's way without it).
#[derive(Clone, Copy)]
pub(super) struct Lever {
    pub(super) fs: FsType,
    pub(super) direct_io: bool,
    pub(super) sector_size: u32,
    pub(super) mkfs: &'static [&'static str],
    /// The inner filesystem's mount options.
    pub(super) options: &'static str,
    /// `/sys/block/loopN/queue/<name>` values written before the mount.
    pub(super) queue: &'static [(&'static str, &'static str)],
}

pub(super) const EXT4: Lever = Lever {
    fs: FsType::Ext4,
    direct_io: false,
    sector_size: 512,
    mkfs: &[
        "-E",
        "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
        "-m",
        "0",
    ],
    options: "noinit_itable",
    queue: &[],
};

pub(super) const XFS: Lever = Lever {
    fs: FsType::Xfs,
    direct_io: false,
    sector_size: 512,
    mkfs: &["-K"],
    options: "nouuid",
    queue: &[],
};

pub(super) const EXT4_DIRECT: Lever = Lever {
    direct_io: true,
    ..EXT4
};

/// One way of making the directory the jobs run in.
#[derive(Clone, Copy)]
pub(super) enum Setup {
    Plain,
    /// berth's own `create_image` + `mount_image`.
    Berth(FsType),
    Lever(Lever),
}

/// A mounted (or plain) directory for one round of one variant; torn down on drop.
pub(super) struct Place {
    pub(super) dir: PathBuf,
    image: Option<PathBuf>,
    device: Option<String>,
}

impl Place {
    pub(super) fn make(scratch: &Scratch, setup: Setup, n: usize) -> Self {
        let dir = scratch.join(&format!("dir-{n}"));
        std::fs::create_dir(&dir).unwrap();
        let image = scratch.join(&format!("image-{n}"));
        match setup {
            Setup::Plain => Self {
                dir,
                image: None,
                device: None,
            },
            Setup::Berth(fs) => {
                let host = LinuxHost::new();
                host.create_image(&image, GIB, Some(fs)).unwrap();
                host.mount_image(&image, &dir, fs).unwrap();
                Self {
                    dir,
                    image: Some(image),
                    device: None,
                }
            }
            Setup::Lever(lever) => {
                let size = GIB.max(lever.fs.min_size()).to_string();
                let image_str = path_str(&image);
                run("truncate", &os(&["-s", &size, image_str]));
                let force = if lever.fs == FsType::Xfs { "-f" } else { "-F" };
                let mut args = vec!["-q", force];
                args.extend(lever.mkfs);
                args.push(image_str);
                run(&format!("mkfs.{}", lever.fs.as_str()), &os(&args));
                run("fallocate", &os(&["-l", &size, image_str]));
                let dio = format!("--direct-io={}", if lever.direct_io { "on" } else { "off" });
                let sector = format!("--sector-size={}", lever.sector_size);
                let device = run("losetup", &os(&["-f", "--show", &dio, &sector, image_str]));
                let name = device.trim_start_matches("/dev/");
                for (knob, value) in lever.queue {
                    let file = format!("/sys/block/{name}/queue/{knob}");
                    std::fs::write(&file, value).unwrap_or_else(|e| panic!("{file}: {e}"));
                }
                let place = Self {
                    dir,
                    image: Some(image),
                    device: Some(device),
                };
                let device = place.device.as_deref().unwrap();
                run(
                    "mount",
                    &os(&["-o", lever.options, device, path_str(&place.dir)]),
                );
                place
            }
        }
    }

    /// Writes back everything dirty on the host filesystem, so that no job pays for an
    /// earlier one's (or another variant's) writeback.
    /// The volume's filesystem first (a no-op twice over for the plain directory), then the
    /// host's, which the scratch directory holding `dir` is on.
    pub(super) fn settle(&self) {
        for path in [&self.dir, self.dir.parent().unwrap()] {
            let dir = std::fs::File::open(path).unwrap();
            // SAFETY: syncfs only reads its fd argument; `dir` is open.
            let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
            assert_eq!(rc, 0, "syncfs {}", path.display());
        }
    }

    /// Drops the page cache of the job files (for a volume: the inner filesystem's) and of
    /// the image (the host's), all clean after a flush, so that a read finds nothing cached
    /// on either side.
    pub(super) fn drop_caches(&self) {
        let mut files = job_files(&self.dir);
        files.extend(self.image.clone());
        for path in files {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: posix_fadvise only reads its integer arguments; `file` is open.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0, "posix_fadvise {}", path.display());
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.image.is_some() {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::UMOUNT_NOFOLLOW);
        }
        if let Some(device) = &self.device {
            let _ = Command::new("losetup").args(["-d", device]).status();
        }
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
