//! The allocator's share of the daemon's footprint. glibc gives each thread that allocates
//! its own arena (up to eight per core), and keeps what was freed in each: a daemon whose
//! threads each build a listing or read the store at start holds several arenas of freed
//! pages. One arena serves a daemon that spends its time in syscalls. glibc also raises its
//! mmap and trim thresholds to the largest block freed so far: after one large listing (a
//! 2 MB reply) it would keep up to twice that of freed heap. Fixed thresholds keep large
//! blocks mapped (returned when freed) and the heap trimmed. Returning what start-up freed
//! keeps a restarted daemon as small as a long-running one. benches/csi_lifecycle.rs
//! records what each did.

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
