//! `LinuxHost::export_tree` and `import_tree` on real files: owners, modes, mtimes,
//! extended attributes, symlinks kept as links, hard links, and archives that try to write
//! outside the directory they are unpacked in. Root only (owners, trusted xattrs).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use berth::host::linux::LinuxHost;
use berth::host::{Host, HostError};

#[path = "support/host.rs"]
mod support;

use support::*;

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: (test) both strings are NUL-terminated and outlive the call; `value` is valid
    // for its length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: (test) both strings are NUL-terminated; `buf` is valid for its length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (rc >= 0).then(|| {
        buf.truncate(rc as usize);
        buf
    })
}

/// Every entry beneath `root`: kind, owner, mode, size, content or link target, mtime.
pub fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if m.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                format!(
                    "file {:?}",
                    String::from_utf8_lossy(&fs::read(&path).unwrap())
                )
            };
            let mode = if m.file_type().is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                format!(
                    "{what} {}:{} {mode:o} mtime={}",
                    m.uid(),
                    m.gid(),
                    m.mtime()
                ),
            );
        }
    }
    out
}

fn sample_tree(src: &Path, outside: &Path) {
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("plain.txt"), b"hello").unwrap();
    fs::write(src.join("sub/deeper/secret"), b"0600 of 1234").unwrap();
    fs::set_permissions(
        src.join("sub/deeper/secret"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(src.join("sub/deeper/secret"), Some(1234), Some(4321)).unwrap();
    std::os::unix::fs::chown(src.join("sub"), Some(70), Some(71)).unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o2750)).unwrap();
    fs::hard_link(src.join("plain.txt"), src.join("sub/hard.txt")).unwrap();
    symlink(outside, src.join("escape")).unwrap();
    symlink("../plain.txt", src.join("sub/relative")).unwrap();
    let long = "n".repeat(120);
    fs::write(src.join("sub").join(format!("{long}-{long}")), b"long name").unwrap();
    set_xattr(&src.join("plain.txt"), "user.colour", b"blue");
    set_xattr(&src.join("sub"), "trusted.berth", b"\x00binary\xff");
    set_xattr(src, "user.top", b"root dir");
    fs::set_permissions(src, fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(src, Some(99), Some(98)).unwrap();
}

#[test]
fn an_export_imports_identically_and_links_stay_links() {
    assert!(
        is_root(),
        "host_archive needs root (owners, trusted xattrs)"
    );
    let s = Scratch::new();
    let host = LinuxHost::new();
    let (src, dst, outside) = (s.join("src"), s.join("dst"), s.join("outside"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    fs::write(&outside, b"not to be touched").unwrap();
    sample_tree(&src, &outside);

    let mut archive = Vec::new();
    let out = host.export_tree(&src, &mut archive).unwrap();
    assert_eq!(out.bytes, archive.len() as u64);
    assert_eq!(out.entries, 9, "everything beneath the top");
    let read = host.import_tree(&dst, &mut archive.as_slice()).unwrap();
    assert_eq!(read.bytes, archive.len() as u64);

    assert_eq!(describe(&src), describe(&dst));
    let (a, b) = (fs::metadata(&src).unwrap(), fs::metadata(&dst).unwrap());
    assert_eq!((b.uid(), b.gid(), b.mode() & 0o7777), (99, 98, 0o711));
    assert_eq!(a.mtime(), b.mtime());
    assert_eq!(
        get_xattr(&dst, "user.top").as_deref(),
        Some(&b"root dir"[..])
    );
    assert_eq!(
        get_xattr(&dst.join("plain.txt"), "user.colour").as_deref(),
        Some(&b"blue"[..])
    );
    assert_eq!(
        get_xattr(&dst.join("sub"), "trusted.berth").as_deref(),
        Some(&b"\x00binary\xff"[..])
    );
    let hard = (
        fs::metadata(dst.join("plain.txt")).unwrap(),
        fs::metadata(dst.join("sub/hard.txt")).unwrap(),
    );
    assert_eq!(hard.0.ino(), hard.1.ino(), "the hard link is one file");
    assert!(
        fs::symlink_metadata(dst.join("escape"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&outside).unwrap(), b"not to be touched");

    // Cut off anywhere, the archive is refused rather than unpacked short.
    for cut in [archive.len() - 1024, archive.len() / 2, 512] {
        let again = s.join(&format!("cut-{cut}"));
        fs::create_dir(&again).unwrap();
        let err = host.import_tree(&again, &mut &archive[..cut]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("cut off") || text.contains("EOF"),
            "{cut}: {text}"
        );
    }
}

/// One raw tar header block (ustar), with whatever name, for archives the tar crate's
/// builder refuses to write.
fn raw_entry(name: &[u8], kind: u8, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    {
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_archives_are_refused_and_write_nothing_outside() {
    assert!(is_root(), "host_archive needs root");
    let s = Scratch::new();
    let host = LinuxHost::new();
    let victim_dir = s.join("victim");
    fs::create_dir(&victim_dir).unwrap();
    let victim = victim_dir.join("file");
    fs::write(&victim, b"original").unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            archive(&[raw_entry(b"../victim/file", b'0', b"", b"pwned")]),
        ),
        (
            "nested dotdot",
            archive(&[raw_entry(b"a/../../victim/file", b'0', b"", b"pwned")]),
        ),
        (
            "absolute",
            archive(&[raw_entry(
                victim.as_os_str().as_encoded_bytes(),
                b'0',
                b"",
                b"pwned",
            )]),
        ),
        (
            "through a symlink",
            archive(&[
                raw_entry(b"l", b'2', victim_dir.as_os_str().as_encoded_bytes(), b""),
                raw_entry(b"l/file", b'0', b"", b"pwned"),
            ]),
        ),
        (
            "through a symlinked directory deeper",
            archive(&[
                raw_entry(b"d/", b'5', b"", b""),
                raw_entry(b"d/l", b'2', b"/", b""),
                raw_entry(b"d/l/tmp/x", b'0', b"", b"pwned"),
            ]),
        ),
        (
            "hard link out",
            archive(&[raw_entry(b"h", b'1', b"../victim/file", b"")]),
        ),
    ];
    for (what, bytes) in cases {
        let dst = s.join(&format!("dst-{}", what.replace(' ', "-")));
        fs::create_dir(&dst).unwrap();
        let err = host.import_tree(&dst, &mut bytes.as_slice()).unwrap_err();
        assert!(
            matches!(
                err,
                HostError::OutsideRoot { .. } | HostError::Symlink { .. }
            ),
            "{what}: {err}"
        );
        assert_eq!(fs::read(&victim).unwrap(), b"original", "{what}");
        assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 1, "{what}");
        assert!(!Path::new("/tmp/x").exists() || fs::read("/tmp/x").unwrap() != b"pwned");
    }
    // A name listed twice, the second a file where a link was: the link is replaced, never
    // written through.
    let dst = s.join("twice");
    fs::create_dir(&dst).unwrap();
    let bytes = archive(&[
        raw_entry(b"x", b'2', victim.as_os_str().as_encoded_bytes(), b""),
        raw_entry(b"x", b'0', b"", b"mine"),
    ]);
    host.import_tree(&dst, &mut bytes.as_slice()).unwrap();
    assert_eq!(fs::read(dst.join("x")).unwrap(), b"mine");
    assert_eq!(fs::read(&victim).unwrap(), b"original");
}
