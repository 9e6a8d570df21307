//! Backing large, long-lived weight buffers with 2 MiB pages.
//!
//! A decode step streams every weight once: for a model of hundreds of MB that is tens of
//! thousands of 4 KiB pages a token, each a TLB miss and a page walk that the hardware
//! prefetcher cannot hide. Transparent huge pages cut that 512-fold. Linux backs only regions
//! that ask (`madvise` mode, the common default), so formats that pack their weights once ask
//! for it right after allocating, before the pages are first touched.

/// Asks the kernel to back the 2 MiB-aligned interior of `buf` with huge pages. Advice only:
/// contents, lifetime and ownership are unchanged, and where the kernel declines (THP off, not
/// Linux, a buffer under 2 MiB) nothing happens.
pub fn advise_huge_pages<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_mut_ptr() as usize;
        let end = start.saturating_add(std::mem::size_of_val(buf));
        let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside `buf`, memory this call borrows mutably; MADV_HUGEPAGE
            // changes only how the kernel backs those pages, never what they hold.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}
