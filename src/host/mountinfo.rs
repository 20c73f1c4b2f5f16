//! Parsing `/proc/self/mountinfo` (proc(5)): one line a mount,
//! `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
//! Paths escape space, tab, newline and backslash as octal (`\040`); we unescape them so
//! they compare equal to the paths berth builds.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the mounted filesystem's device.
    pub device: String,
    /// The directory of the filesystem that is mounted here (`/` unless a bind mount of a
    /// subdirectory).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// The filesystem's own options (`prjquota`, `subvolid=256`, ...), shared by all its
    /// mounts; `options` are this mount's.
    pub super_options: String,
}

impl MountEntry {
    pub fn is_read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }

    pub fn is_beneath(&self, dir: &Path) -> bool {
        self.mount_point.starts_with(dir)
    }

    /// Whether the filesystem's options include `name` (exactly, or as `name=value`).
    pub fn has_super_option(&self, name: &str) -> bool {
        self.super_options
            .split(',')
            .any(|o| o == name || o.split_once('=').is_some_and(|(k, _)| k == name))
    }
}

/// Parses the whole table; malformed lines are skipped (the kernel does not write them).
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut fields = left.split(' ');
    let id = fields.next()?.parse().ok()?;
    let parent = fields.next()?.parse().ok()?;
    let device = fields.next()?.to_string();
    let root = PathBuf::from(unescape(fields.next()?));
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let options = fields.next()?.to_string();
    let mut right = right.split(' ');
    let fs_type = right.next()?.to_string();
    let source = unescape(right.next().unwrap_or(""));
    let super_options = right.next().unwrap_or("").to_string();
    Some(MountEntry {
        id,
        parent,
        device,
        root,
        mount_point,
        options,
        fs_type,
        source,
        super_options,
    })
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = &bytes[i + 1..i + 4];
            if octal.iter().all(|b| (b'0'..=b'7').contains(b))
                && let Ok(value) = u8::from_str_radix(&String::from_utf8_lossy(octal), 8)
            {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bind_mounts_and_escapes() {
        let text = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 254:0 /var/lib/berth/volumes/db/data /mnt/my\\040target rw,relatime shared:1 - ext4 /dev/vda rw
99 22 7:3 / /var/lib/berth/volumes/big ro,relatime - ext4 /dev/loop3 rw
garbage line
";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[1].root, Path::new("/var/lib/berth/volumes/db/data"));
        assert_eq!(mounts[1].mount_point, Path::new("/mnt/my target"));
        assert_eq!(mounts[1].device, "254:0");
        assert!(!mounts[1].is_read_only());
        assert!(mounts[2].is_read_only());
        assert_eq!(mounts[2].source, "/dev/loop3");
        assert_eq!(mounts[2].super_options, "rw");
        assert!(mounts[2].has_super_option("rw"));
        assert!(!mounts[2].has_super_option("r"));
        assert!(mounts[2].is_beneath(Path::new("/var/lib/berth")));
    }

    #[test]
    fn super_options_with_values() {
        let line = "43 27 0:39 /sv/data /mnt/t rw,relatime - btrfs /dev/loop1 \
                    rw,discard=async,space_cache=v2,subvolid=256,subvol=/sv";
        let m = parse_line(line).expect("parses");
        assert_eq!(m.root, Path::new("/sv/data"));
        assert!(m.has_super_option("subvolid"));
        assert!(m.has_super_option("discard"));
        assert!(!m.has_super_option("prjquota"));
    }

    #[test]
    fn unescapes_only_octal_triples() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trail\\"), "trail\\");
        assert_eq!(unescape("x\\9zz"), "x\\9zz");
    }
}
