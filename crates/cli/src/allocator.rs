//! How the broker's memory is given back to the system.
//!
//! glibc serves a large request (above 128 KiB) with its own mapping and unmaps it when freed,
//! but it then raises that threshold to the freed size, so the next request of about the same
//! size comes from the heap and stays resident after it is freed. Password hashing (argon2id,
//! 19 MiB of working memory per hash: the console's first-start password, each login with a
//! password) made a broker hold 19 MiB per thread that ever hashed: 28 MiB at rest after its
//! first start against 9.5 MiB after a restart. A fixed threshold keeps every large block in
//! its own mapping, returned when freed.

/// Fixes glibc's mapping threshold at its default (128 KiB). Call before other threads start.
pub(crate) fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes the allocator's tuning; it is called before any other
        // thread exists, and M_MMAP_THRESHOLD with 128 KiB is a documented, valid setting.
        #[allow(unsafe_code)]
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        if set != 1 {
            eprintln!("tern: could not fix the allocator's mapping threshold; large freed blocks may stay resident");
        }
    }
}
