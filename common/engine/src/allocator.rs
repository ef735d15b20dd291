//! Process-wide tuning of glibc's allocator for the training and
//! attribution loops.
//!
//! Every step allocates and frees activation buffers of a few megabytes.
//! By default glibc serves those with fresh `mmap`s and hands freed memory
//! back to the kernel at once, so each step pays for page faults, zeroed
//! pages and TLB shootdowns across threads (about a third of a small
//! model's training step, measured). Keeping freed memory in the process
//! removes that; the peak resident size stays that of one step.

/// Serve large allocations from the heap and keep freed memory for reuse.
/// Call once at the start of a stage. Does nothing off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's largest allowed mmap threshold (32 MiB on 64-bit): above
        // it, allocations are rare and mapping them is fine.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; both values
        // are within glibc's documented ranges.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
