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
//!
//! Counting costs shared atomic updates on every allocation, which a speed measurement must not
//! pay: [`set_counting`]`(false)` leaves one relaxed load of two read-only flags per allocation,
//! and [`measure_peak`] counts (process-wide) only while its closure runs. `tito` installs it
//! switched off, so its milestones time their work uncounted and measure memory in separate
//! windows. The process-wide counters are exact only while counting stays on throughout.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

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

// Signed: with counting switched off for a while, memory allocated uncounted may be freed counted.
static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Counting on for the whole process ([`set_counting`]); on by default.
static COUNTING: AtomicBool = AtomicBool::new(true);
/// [`measure_peak`] windows open now: counting is on while any is.
static WINDOWS: AtomicUsize = AtomicUsize::new(0);

fn counting() -> bool {
    COUNTING.load(Ordering::Relaxed) || WINDOWS.load(Ordering::Relaxed) > 0
}

/// Switches process-wide counting on or off (on by default). Off, an allocation costs the
/// system allocator's time plus one relaxed load of two flags nobody writes, so timings are not
/// inflated by counting; [`measure_peak`] still counts inside its window.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Ordering::Relaxed);
}

fn removed(size: usize) {
    CURRENT.fetch_sub(size as isize, Ordering::Relaxed);
    thread_add(-(size as isize), false);
}

/// Forwards to [`System`], counting.
pub struct CountingAllocator;

fn added(size: usize) {
    thread_add(size as isize, true);
    INSTALLED.store(true, Ordering::Relaxed);
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let now = CURRENT.fetch_add(size as isize, Ordering::Relaxed) + size as isize;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are plain atomics and never affect the memory returned.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && counting() {
            added(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() && counting() {
            added(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from this allocator (System) with this layout.
        unsafe { System.dealloc(ptr, layout) };
        if counting() {
            removed(layout.size());
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && counting() {
            removed(layout.size());
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
        current_bytes: CURRENT.load(Ordering::Relaxed).max(0) as usize,
        peak_bytes: PEAK.load(Ordering::Relaxed).max(0) as usize,
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
/// Counting is on while `f` runs, whatever [`set_counting`] says.
pub fn measure_peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    /// Closes the window even if `f` panics.
    struct Window;
    impl Drop for Window {
        fn drop(&mut self) {
            WINDOWS.fetch_sub(1, Ordering::Relaxed);
        }
    }
    WINDOWS.fetch_add(1, Ordering::Relaxed);
    let _window = Window;
    let base = T_CURRENT.with(Cell::get);
    T_PEAK.with(|p| p.set(base));
    let out = f();
    let peak = T_PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}
