//! Clean-up of what a test made under its own directory: every mount beneath it (deepest
//! first, the topmost mount of a stack first) and every loop device whose backing file lies
//! beneath it. Nothing outside the directory is touched, so tests running in parallel with
//! each other and with other helpers' tests never undo each other's mounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::MntFlags;

/// Where scratch directories go: `BERTH_TEST_DIR`, else `/var/tmp` (a real disk, unlike a
/// tmpfs `/tmp`, so loop images there behave as on a node).
pub fn test_root() -> PathBuf {
    std::env::var_os("BERTH_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// A temp directory cleaned of mounts and loop devices, then removed, on drop. If a mount
/// cannot be removed the directory is left in place (never a recursive delete through a
/// mount) and its path is printed.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    /// A fresh directory under the test root: `prefix` followed by random characters.
    pub fn new(prefix: &str) -> Self {
        Self::new_in(&test_root(), prefix)
    }

    /// A fresh directory under `base`: `prefix` followed by random characters.
    pub fn new_in(base: &Path, prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(base)
            .unwrap_or_else(|e| panic!("cannot make a temp dir in {}: {e}", base.display()));
        let path = dir.path().canonicalize().expect("canonical temp dir");
        Self {
            dir: Some(dir),
            path,
        }
    }

    /// The directory (canonical, so it compares equal to mount table entries).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let clean = clean_under(&self.path);
        let dir = self.dir.take();
        if !clean {
            eprintln!(
                "leaving {} behind: mounts remain beneath it: {:?}",
                self.path.display(),
                mounts_under(&self.path)
            );
            if let Some(d) = dir {
                let _ = d.keep();
            }
        }
    }
}

/// Unmounts everything at or beneath `dir` and detaches the loop devices whose backing
/// file lies beneath it; returns whether no mount remains. Idempotent.
pub fn clean_under(dir: &Path) -> bool {
    for _ in 0..16 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        for mount in mounts {
            if nix::mount::umount2(&mount, MntFlags::UMOUNT_NOFOLLOW).is_err() {
                let _ = nix::mount::umount2(&mount, MntFlags::MNT_DETACH);
            }
        }
    }
    for device in loops_under(dir) {
        let _ = Command::new("losetup").arg("-d").arg(&device).status();
    }
    mounts_under(dir).is_empty()
}

/// Mount points at or beneath `dir`, deepest first and, at one depth, the most recent
/// first (so a stack of mounts comes off from the top).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.reverse();
    // A stable sort keeps the most recent first among equals.
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|p| Path::new(&unescape_mountinfo(p)) == path)
}

/// A mountinfo path field with its `\ooo` escapes (space, tab, newline, backslash) undone.
pub fn unescape_mountinfo(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\'
            && let Some(digits) = octal
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push(
                digits
                    .iter()
                    .fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Loop devices (`/dev/loopN`) whose backing file lies beneath `dir`, also when that file
/// was deleted since.
pub fn loops_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing
                .trim_end_matches('\n')
                .trim_end_matches(" (deleted)");
            Path::new(backing)
                .starts_with(dir)
                .then(|| PathBuf::from("/dev").join(e.file_name()))
        })
        .collect();
    found.sort();
    found
}

/// Fails the test if anything is still mounted or attached beneath `dir`.
#[track_caller]
pub fn assert_nothing_left_under(dir: &Path) {
    assert_eq!(
        mounts_under(dir),
        Vec::<PathBuf>::new(),
        "mounts left beneath {}",
        dir.display()
    );
    assert_eq!(
        loops_under(dir),
        Vec::<PathBuf>::new(),
        "loop devices left over files beneath {}",
        dir.display()
    );
}
