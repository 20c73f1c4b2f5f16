//! Build script:
//! - generates the CSI v1.12.0 gRPC bindings (messages, servers and
//!   clients) from `proto/csi.proto`;
//! - records the git commit for `berth --version`.
//!
//! No system `protoc` is needed: `protox` parses the proto in pure Rust
//! (it embeds the `google/protobuf/*.proto` well-known-type sources) and
//! the resulting `FileDescriptorSet` is handed to `tonic-prost-build`.
//! `google.protobuf.*` types map to `prost-types` (prost-build's default;
//! note that the wrapper types `BoolValue`/`Int64Value` become
//! `Option<bool>`/`Option<i64>`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_csi_proto()?;
    record_git_commit();
    Ok(())
}

fn compile_csi_proto() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile(["proto/csi.proto"], ["proto"])?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    Ok(())
}

fn record_git_commit() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves. In a linked worktree `.git` is a file, so ask git where
    // HEAD, the branch's ref and packed-refs live; a path that does not exist would make
    // cargo rerun this script (and rebuild berth) on every build, so only existing ones.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// `git ARGS` in the crate's directory: trimmed stdout, or None if git fails.
fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
