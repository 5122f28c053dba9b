//! Asks the CPU to start loading memory the packet path is about to touch.
//!
//! A packet's fan-out visits every subscriber's forwarding state once; in a room of a hundred,
//! that state has left the cache since the last packet, and each subscriber cost a chain of
//! dependent cache misses (egress, outbound stream, route, history slot): about half of Yoom's
//! own time per packet at 1 → 100. Asking for the next subscribers' lines while this one is
//! encrypted overlaps those misses with work.

/// Starts loading the `lines` cache lines from `at` into every cache level. A hint only: it
/// never faults, whatever `at` is, and does nothing on targets without the instruction.
#[inline(always)]
pub fn prefetch<T: ?Sized>(at: *const T, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = at.cast::<i8>();
        for line in 0..lines {
            // SAFETY: a prefetch is a hint; it reads nothing the program sees and cannot fault
            // (the address is only computed, with wrapping arithmetic, never dereferenced).
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line * 64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, lines);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_address_is_fine() {
        let value = [0u8; 256];
        prefetch(&value, 4);
        prefetch(std::ptr::null::<u8>(), 2);
        prefetch(usize::MAX as *const u8, 2);
    }
}
