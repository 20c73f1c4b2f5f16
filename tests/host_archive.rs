//! `LinuxHost::export_tree` and `import_tree` on real files: owners, modes, mtimes,
//! extended attributes, symlinks kept as links, hard links, and archives that try to write
//! outside the directory they are unpacked in. Root only (owners, trusted xattrs).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth::host::linux::LinuxHost;
use berth::host::{Host, HostError};

#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/host.rs"]
mod support;
#[path = "support/tree.rs"]
mod tree;

use support::*;
use tree::*;

#[test]
fn an_export_imports_identically_and_links_stay_links() {
    require_root(); // owners, trusted xattrs
    let s = scratch();
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

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_archives_are_refused_and_write_nothing_outside() {
    require_root();
    let s = scratch();
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
