//! A sample tree with everything an archive must carry (owners, modes, set-gid, xattrs in
//! the user and trusted namespaces, a symlink pointing outside, a relative one, a hard link,
//! a long name), and a description of a tree to compare two copies by.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
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

pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
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

pub fn sample_tree(src: &Path, outside: &Path) {
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

/// One raw tar header block (ustar), with whatever name, for archives the tar crate's
/// builder refuses to write.
pub fn raw_entry(name: &[u8], kind: u8, link: &[u8], data: &[u8]) -> Vec<u8> {
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
