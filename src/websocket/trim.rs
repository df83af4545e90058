//! Gives memory freed by large transient buffers back to the OS.
//!
//! A WebSocket's frame buffers grow to its largest message and are freed
//! when it ends. glibc keeps most of that: freeing a buffer it had mapped on
//! its own (128 KiB or more at first) raises its mmap threshold to that
//! size, so later buffers up to it come from its heaps, and free pages in
//! the middle of a heap stay resident. A soak's idle server grew from 4 MiB
//! to 57 MiB after a round of echoes of up to 256 KiB and to 98 MiB after
//! the second, with 0.5 MiB in use. Once enough has been released,
//! `malloc_trim(0)` hands the free pages back; elsewhere this does nothing.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of large buffers released since the last trim.
static RELEASED: AtomicUsize = AtomicUsize::new(0);

/// Buffers below this are left to the allocator, which reuses them well.
const LARGE: usize = 64 << 10;

/// Released bytes that make a trim worth its cost (it walks every heap),
/// and about what an idle server may keep beyond what it uses.
const TRIM_AFTER: usize = 8 << 20;

/// Buffers of about `bytes` in all were freed.
pub(crate) fn released(bytes: usize) {
    if bytes < LARGE {
        return;
    }
    let total = RELEASED.fetch_add(bytes, Ordering::Relaxed) + bytes;
    // One thread trims: the one that takes the count back to zero.
    if total >= TRIM_AFTER && RELEASED.swap(0, Ordering::Relaxed) >= TRIM_AFTER {
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointer and has no precondition: it
    // returns free pages of glibc's heaps to the kernel, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_not_counted_and_large_ones_add_up_to_a_trim() {
        let before = RELEASED.load(Ordering::Relaxed);
        released(LARGE - 1);
        assert_eq!(RELEASED.load(Ordering::Relaxed), before);
        // Enough to trim, whatever was counted before: the count restarts.
        released(TRIM_AFTER);
        assert!(RELEASED.load(Ordering::Relaxed) < TRIM_AFTER);
    }
}
