//! The one harness every integration test shares, so a test reads as what it checks and
//! not as how to run a daemon or clean up after one:
//! - [`require_root`]: the one root check (a root test fails, it is never skipped);
//! - [`cleanup`]: a scratch directory that takes every mount and loop device made beneath
//!   it along when dropped, even after a failed assertion;
//! - [`serve`]: the one way to start `berth serve` on a config, wait for its sockets, stop
//!   it, and print its log when a test fails;
//! - [`http`]: one HTTP/1.1 request over a unix socket;
//! - [`csi`]: the three CSI clients on one connection, once the daemon is ready.
//!
//! Include it at the test crate's root with
//! `#[path = "support/harness/mod.rs"] mod harness;` (benches:
//! `#[path = "../tests/support/harness/mod.rs"]`); the other support files
//! (`csi_daemon.rs`, `docker_plugin.rs`, `host.rs`, ...) build on it as `crate::harness`.

#![allow(dead_code)] // Each test uses a part.

pub mod cleanup;
pub mod csi;
pub mod http;
pub mod serve;

/// Fails the test unless it runs as root: root tests mount filesystems and attach loop
/// devices for real, and a test that silently skips proves nothing.
#[track_caller]
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts filesystems and attaches loop devices: run it as root \
         (scripts/test.sh does)"
    );
}
