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
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
