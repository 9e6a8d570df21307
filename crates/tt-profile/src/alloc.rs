//! A counting global allocator that a binary can install to measure its heap:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: tt_profile::alloc::CountingAllocator = tt_profile::alloc::CountingAllocator;
//! # fn main() {}
//! ```
//!
//! It forwards to the system allocator and keeps process-wide counters (current bytes, peak bytes,
//! allocation count) and the same per thread, so [`measure_peak`] is exact for the calling thread
//! even while other threads allocate. Without it installed, [`snapshot`] reports zeros and
//! [`is_installed`] is false.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

thread_local! {
    // Signed: memory freed on another thread than the one that allocated it moves these below 0.
    static T_CURRENT: Cell<isize> = const { Cell::new(0) };
    static T_PEAK: Cell<isize> = const { Cell::new(0) };
    static T_ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn thread_add(delta: isize, count: bool) {
    // try_with: during thread teardown the slots may be gone; the global counters still count.
    let _ = T_CURRENT.try_with(|c| {
        let now = c.get() + delta;
        c.set(now);
        let _ = T_PEAK.try_with(|p| p.set(p.get().max(now)));
    });
    if count {
        let _ = T_ALLOCS.try_with(|a| a.set(a.get() + 1));
    }
}

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Forwards to [`System`], counting.
pub struct CountingAllocator;

fn added(size: usize) {
    thread_add(size as isize, true);
    INSTALLED.store(true, Ordering::Relaxed);
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are plain atomics and never affect the memory returned.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from this allocator (System) with this layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        thread_add(-(layout.size() as isize), false);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            thread_add(-(layout.size() as isize), false);
            added(new_size);
        }
        p
    }
}

/// Heap counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HeapSnapshot {
    pub current_bytes: usize,
    pub peak_bytes: usize,
    pub allocations: usize,
}

pub fn snapshot() -> HeapSnapshot {
    HeapSnapshot {
        current_bytes: CURRENT.load(Ordering::Relaxed),
        peak_bytes: PEAK.load(Ordering::Relaxed),
        allocations: ALLOCATIONS.load(Ordering::Relaxed),
    }
}

/// Whether the counting allocator has served any allocation (i.e. is installed).
pub fn is_installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// This thread's counters: bytes it allocated minus bytes it freed, its peak, its allocations.
pub fn thread_snapshot() -> (isize, isize, usize) {
    (T_CURRENT.with(Cell::get), T_PEAK.with(Cell::get), T_ALLOCS.with(Cell::get))
}

/// Starts a new process-wide peak measurement from the current heap size.
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Peak heap growth of the calling thread while running `f`, over its heap use when `f` started.
/// Exact for single-threaded work regardless of what other threads do.
pub fn measure_peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = T_CURRENT.with(Cell::get);
    T_PEAK.with(|p| p.set(base));
    let out = f();
    let peak = T_PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}
