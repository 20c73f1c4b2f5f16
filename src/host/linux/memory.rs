//! The allocator's share of the daemon's footprint. glibc gives each thread that allocates
//! its own arena (up to eight per core), and keeps what was freed in each: a daemon whose
//! threads each build a listing or read the store at start holds several arenas of freed
//! pages. One arena serves a daemon that spends its time in syscalls. glibc also raises its
//! mmap and trim thresholds to the largest block freed so far: after one large listing (a
//! 2 MB reply) it would keep up to twice that of freed heap. Fixed thresholds keep large
//! blocks mapped (returned when freed) and the heap trimmed. Returning what start-up freed
//! keeps a restarted daemon as small as a long-running one. benches/csi_lifecycle.rs
//! records what each did.
//!
//! Each thread also keeps a cache of the blocks it freed (tcache: up to seven per size
//! class, a few hundred KiB once a thread has freed blocks of many sizes), which no trim
//! returns and only the thread's end gives back. A burst of creates starts a dozen blocking
//! threads, whose caches together held about 2 MiB at 10,000 volumes. glibc reads the
//! cache's size only from `GLIBC_TUNABLES` as a program starts, so `berth serve` without
//! that setting starts itself again (the same process: `execve` of its own binary, same
//! arguments) with `glibc.malloc.tcache_count=0` added. A setting of the operator's for
//! `tcache_count` is left as it is.

use std::ffi::OsString;
use std::io;

/// The environment variable glibc reads its tunables from, and the one berth sets.
const TUNABLES: &str = "GLIBC_TUNABLES";
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";

/// Above this a block is mapped on its own, and free heap above this is returned.
#[cfg(target_env = "gnu")]
const THRESHOLD: libc::c_int = 128 << 10;

/// Caps the allocator at one arena with fixed thresholds. Call before any thread is
/// started.
pub fn limit_allocator_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters, each to a value glibc accepts (any
    // positive arena count; thresholds well below the 32 MiB mmap maximum), and it is
    // called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

/// Hands the allocator's free pages back to the kernel: after start-up's transient work, and
/// after each health sweep (a large listing's reply leaves pages freed but held).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns unused pages of the heap; any pad is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `GLIBC_TUNABLES` with the thread cache turned off, or `None` if the given value already
/// sets `tcache_count` (the operator's choice, or this process started itself again).
fn tunables_without_thread_cache(current: Option<&str>) -> Option<String> {
    let current = current.unwrap_or("");
    let sets_it = current.split(':').any(|t| {
        t.split_once('=')
            .is_some_and(|(name, _)| name == TCACHE_COUNT)
    });
    if sets_it {
        return None;
    }
    let ours = format!("{TCACHE_COUNT}=0");
    Some(if current.is_empty() {
        ours
    } else {
        format!("{current}:{ours}")
    })
}

/// Starts this program again with the thread cache turned off, unless `GLIBC_TUNABLES`
/// already sets it (`Ok`). A successful exec does not return; `Err` says why it failed, and
/// the caller carries on with glibc's default caches. Call first thing, before any thread
/// is started or any file opened.
pub fn restart_without_thread_cache() -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    if !cfg!(target_env = "gnu") {
        return Ok(());
    }
    let current = std::env::var_os(TUNABLES);
    let current = current.as_ref().map(|v| v.to_string_lossy());
    let Some(tunables) = tunables_without_thread_cache(current.as_deref()) else {
        return Ok(());
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("berth"));
    // `/proc/self/exe` is this very binary even if its path was replaced since it started.
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(TUNABLES, tunables)
        .exec();
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_cache_setting_is_added_once_and_an_operators_is_kept() {
        let off = "glibc.malloc.tcache_count=0";
        assert_eq!(tunables_without_thread_cache(None).as_deref(), Some(off));
        assert_eq!(
            tunables_without_thread_cache(Some("")).as_deref(),
            Some(off)
        );
        assert_eq!(
            tunables_without_thread_cache(Some("glibc.malloc.check=3")).as_deref(),
            Some("glibc.malloc.check=3:glibc.malloc.tcache_count=0")
        );
        assert_eq!(tunables_without_thread_cache(Some(off)), None);
        assert_eq!(
            tunables_without_thread_cache(Some("glibc.malloc.tcache_count=7:x=1")),
            None
        );
        // A longer name that merely starts with it is another tunable.
        assert_eq!(
            tunables_without_thread_cache(Some("glibc.malloc.tcache_count_x=1")).as_deref(),
            Some("glibc.malloc.tcache_count_x=1:glibc.malloc.tcache_count=0")
        );
    }
}
