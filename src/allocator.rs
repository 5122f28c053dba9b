//! The process's memory allocator (glibc's malloc on Linux builds): how much heap is in use,
//! and settings that keep a long-running server's resident memory tracking that.

/// Bytes of heap this process has allocated and not freed (small chunks in use plus
/// mmap-served large ones), as glibc's allocator counts them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use_bytes() -> Option<u64> {
    // SAFETY: mallinfo2 only reads the allocator's bookkeeping (under its own locks).
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use_bytes() -> Option<u64> {
    None
}

/// The size from which allocations are served by mmap, and free space at the top of the heap
/// beyond which it is returned: glibc's defaults, but fixed.
///
/// Why: glibc raises both thresholds each time it frees a large mmap-served block, after
/// which such blocks (connection buffers, here) come from the heap and leave holes it never
/// returns. Measured with members churning around one who stays (tests/faults.rs), resident
/// memory then drifts by ±1 MiB (±4 %) over a flat heap; with fixed thresholds it stays within
/// 0.5 %.
const MMAP_THRESHOLD: i32 = 128 * 1024;
const TRIM_THRESHOLD: i32 = 128 * 1024;

/// Fixes glibc's thresholds (see above), unless the operator tuned malloc through the
/// environment. Returns whether it did.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn fix_thresholds() -> bool {
    let tuned = std::env::var_os("GLIBC_TUNABLES")
        .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc."))
        || std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
    if tuned {
        return false;
    }
    // SAFETY: mallopt adjusts allocator parameters; these are valid values for both.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_thresholds() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_in_use_follows_allocations() {
        // Other tests allocate in parallel (the count is process-wide), hence a block far
        // larger than they hold and a margin for them.
        const BLOCK: usize = 64 << 20;
        const OTHERS: u64 = 8 << 20;
        let before = super::heap_in_use_bytes().expect("glibc");
        let block = std::hint::black_box(vec![1u8; BLOCK]);
        let during = super::heap_in_use_bytes().expect("glibc");
        assert!(
            during + OTHERS >= before + BLOCK as u64,
            "{before} → {during} with 64 MiB live"
        );
        drop(block);
        let after = super::heap_in_use_bytes().expect("glibc");
        assert!(
            after + BLOCK as u64 <= during + OTHERS,
            "{during} → {after} after freeing 64 MiB"
        );
    }
}
