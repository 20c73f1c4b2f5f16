//! A reservation is a promise (issue 14), on the real kernel as root: the size `df` shows
//! inside a volume, what an unsized request gets on the embedded default, and the figures
//! every front-end reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth::admin::views::VolumeView;
use berth::config::Config;
use berth::daemon::open_engine;
use berth::engine::VolumeService;
use berth::engine::pool::{EMBEDDED_DEFAULT_SIZE, SizeRule};
use berth::engine::types::*;

#[path = "support/host.rs"]
mod support;
use support::Scratch;

const CALLER: Caller = Caller {
    frontend: Frontend::Internal,
    wait_if_busy: true,
};

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

fn request(n: &str, size: Option<u64>) -> CreateRequest {
    CreateRequest {
        name: name(n),
        spec: VolumeSpec {
            size,
            ..VolumeSpec::default()
        },
        owner: Owner::default(),
    }
}

/// What `df` shows as the size of the filesystem holding `path`.
fn df_total(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    s.blocks() * s.fragment_size()
}

#[test]
fn an_unsized_request_on_the_embedded_default_gets_the_documented_bounded_size() {
    let scratch = Scratch::new();
    let config = Config::parse(
        &format!("state_dir = {:?}", scratch.path.display().to_string()),
        Path::new("test.toml"),
    )
    .unwrap();
    assert!(
        config.pools.is_empty(),
        "the embedded default is under test"
    );
    let engine: Arc<dyn VolumeService> = open_engine(&config).unwrap();

    let v = engine.create(CALLER, request("implicit", None)).unwrap();
    assert_eq!(v.size, Some(EMBEDDED_DEFAULT_SIZE));
    assert_eq!(EMBEDDED_DEFAULT_SIZE, 10 << 30, "the README says 10 GiB");
    assert_ne!(v.placement.backend, Backend::None, "the size is enforced");
    assert_eq!(SizeRule::of(&v), SizeRule::PoolDefault);
    let view = serde_json::to_value(VolumeView::new(&v, None)).unwrap();
    assert_eq!(view["size_rule"], "pool_default");
    assert_eq!(view["size_bytes"], EMBEDDED_DEFAULT_SIZE);

    let sized = engine
        .create(CALLER, request("sized", Some(64 << 20)))
        .unwrap();
    let view = serde_json::to_value(VolumeView::new(&sized, None)).unwrap();
    assert_eq!(view["size_rule"], "requested");

    if v.placement.backend == Backend::Loopfs {
        // The volume's own filesystem, not the node's disk.
        let data: PathBuf = v.placement.data.clone();
        assert!(df_total(&data) < 2 * EMBEDDED_DEFAULT_SIZE);
    }
    engine.delete(CALLER, &name("implicit")).unwrap();
    engine.delete(CALLER, &name("sized")).unwrap();
}
