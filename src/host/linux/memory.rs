//! The allocator's share of the daemon's footprint. glibc gives each thread that allocates
//! its own arena (up to eight per core), and keeps what was freed in each: a daemon whose
//! blocking pool threads each build a listing or read the store at start holds several
//! arenas of freed pages. Two arenas serve a daemon that spends its time in syscalls, and
//! returning what start-up freed keeps a restarted daemon as small as a long-running one.

/// Caps the allocator at two arenas. Call before any thread is started.
pub fn limit_allocator_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive
    // count, and it is called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
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
