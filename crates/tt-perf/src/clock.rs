//! Where LoadGen's time comes from. Real runs use [`RealClock`]; tests drive a [`ManualClock`]
//! so that a fake system with known latencies gives exactly known results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Nanoseconds since the clock's start.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
    /// Returns once `now_ns() ≥ t` (immediately if it already is).
    fn sleep_until_ns(&self, t: u64);
}

/// Monotonic wall time from `Instant`.
#[derive(Debug)]
pub struct RealClock {
    start: Instant,
}

impl RealClock {
    pub fn new() -> RealClock {
        RealClock { start: Instant::now() }
    }
}

impl Default for RealClock {
    fn default() -> Self {
        RealClock::new()
    }
}

impl Clock for RealClock {
    fn now_ns(&self) -> u64 {
        // Saturates rather than wraps: after 584 years time stops, it never restarts at 0.
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
    fn sleep_until_ns(&self, t: u64) {
        // Sleep most of the way, then spin: thread::sleep overshoots by tens of microseconds,
        // which would show up as queueing delay in Server latencies.
        loop {
            let now = self.now_ns();
            if now >= t {
                return;
            }
            let left = t - now;
            if left > 200_000 {
                std::thread::sleep(Duration::from_nanos(left - 150_000));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Time that moves only when told: `advance` by a system's known latency, `sleep_until` jumps.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock::default()
    }
    /// Moves time on by `ns`, saturating at `u64::MAX`: a wrapped clock would run backwards.
    pub fn advance(&self, ns: u64) {
        // fetch_update's closure always returns Some, so the Err arm cannot happen.
        let _ = self.now.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_add(ns)));
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
    fn sleep_until_ns(&self, t: u64) {
        self.now.fetch_max(t, Ordering::SeqCst);
    }
}
