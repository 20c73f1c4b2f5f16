//! The layer check: imports only point down. Reads every `src/**/*.rs`, collects the
//! `crate::<module>` paths its code names (in `use` lines and inline paths, comments left
//! out) and fails on any that names a module of a higher layer than the file's own.
//!
//! Layers, top to bottom (`main.rs` sits above them all and names the library as `berth::`):
//! daemon (and logging, start-up wiring main calls) → front-ends (csi, docker, admin, mesos)
//! → server → config → engine → host, store.
//! Modules of one layer may use each other (the admin socket serves the Mesos hook's
//! routes). A new top-level module must be given a layer here, or this test fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, highest first.
const LAYERS: &[&[&str]] = &[
    &["daemon", "logging"],
    &["csi", "docker", "admin", "mesos"],
    &["server"],
    &["config"],
    &["engine"],
    &["host", "store"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a source file belongs to (`src/engine/pool.rs` → `engine`); `None`
/// for the crate roots.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Every module named as `crate::<module>` or inside `crate::{<module>, ...}` outside
/// comments.
fn crate_paths(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = &rest[..at];
            rest = &rest[at + "crate::".len()..];
            if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue; // `mycrate::`, not `crate::`
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    found.extend(ident(item.trim()));
                }
            } else {
                found.extend(ident(rest));
            }
        }
    }
    found
}

fn ident(text: &str) -> Option<String> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| text[..end].to_string())
}

/// The violations in one file: `(file, its module, the higher module it names)`, or an
/// error for a module that has no layer.
fn check_file(relative: &Path, source: &str) -> Result<Vec<String>, String> {
    let Some(module) = module_of(relative) else {
        return Ok(Vec::new());
    };
    let own = layer_of(&module).ok_or_else(|| {
        format!(
            "{}: module `{module}` has no layer; add it to LAYERS in tests/layers.rs",
            relative.display()
        )
    })?;
    let mut violations = Vec::new();
    for named in crate_paths(source) {
        if let Some(theirs) = layer_of(&named)
            && theirs < own
        {
            violations.push(format!(
                "{}: `{module}` imports `crate::{named}`, a higher layer",
                relative.display()
            ));
        }
    }
    Ok(violations)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("reading a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_only_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut problems = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("reading a source file");
        let relative = file.strip_prefix(&src).expect("a file under src");
        match check_file(relative, &source) {
            Ok(v) => problems.extend(v),
            Err(e) => problems.push(e),
        }
    }
    assert!(
        problems.is_empty(),
        "layer violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_reports_an_upward_import() {
    let host = "use std::fmt;\nuse crate::engine::types::FsType;\n";
    let found = check_file(Path::new("host/linux/image.rs"), host).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("`host` imports `crate::engine`"),
        "{found:?}"
    );

    let grouped = "use crate::{config::Config, daemon::open_engine};";
    let found = check_file(Path::new("csi/mod.rs"), grouped).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("crate::daemon"), "{found:?}");

    let inline = "let x = crate::server::socket_path(e); // crate::daemon in a comment";
    assert!(
        check_file(Path::new("docker/mod.rs"), inline)
            .unwrap()
            .is_empty()
    );
    assert!(
        check_file(Path::new("daemon.rs"), "use crate::engine::Engine;")
            .unwrap()
            .is_empty()
    );
    assert!(check_file(Path::new("shiny/mod.rs"), "").is_err());
}
