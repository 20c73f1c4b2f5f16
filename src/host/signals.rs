//! Signal dispositions for the command-line tools.
//!
//! Rust starts every program with SIGPIPE ignored, so a write to a closed pipe fails with
//! EPIPE and `println!` panics on it (`berth config | head -1`). A command-line tool should
//! instead end quietly, as `cat` does: the reader has what it wanted. The daemon keeps
//! SIGPIPE ignored, since a client hanging up must never kill it.

/// Restores the default SIGPIPE action (end the process quietly).
pub fn restore_default_sigpipe() -> nix::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler, so no code runs in signal context; it is called
    // once at start, before any thread that could write to a pipe exists.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(|_| ())
}
