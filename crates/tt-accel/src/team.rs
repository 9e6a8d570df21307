//! [`Team`]: a few persistent threads that run one small job together, with a synchronization
//! cost of a fraction of a microsecond — what splitting a single decode-step projection across
//! cores needs (a rayon scope or a thread spawn per projection costs several microseconds, about
//! as much as the projection itself).
//!
//! Protocol: the caller publishes a job and bumps a generation counter; each worker spins on the
//! counter for a short while (tens of microseconds — the gap between two projections of a decode
//! step), then sleeps on a condition variable so an idle team holds no core; it runs its share
//! and bumps a done counter; the caller runs share 0 itself and then waits for the done count.
//! Shares must be independent (disjoint outputs).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The job: called once per member with its index `0..size`.
type Job = dyn Fn(usize) + Sync;

struct Shared {
    generation: AtomicU64,
    done: AtomicUsize,
    stop: AtomicBool,
    /// Workers asleep on `wake` (the caller notifies only when some are).
    sleepers: AtomicUsize,
    wake_lock: std::sync::Mutex<()>,
    wake: std::sync::Condvar,
    /// Set when a member's share panicked (the caller then panics too, after all are done).
    panicked: AtomicBool,
    /// The current job, valid between a generation bump and the done count reaching the number
    /// of workers (the caller keeps it alive and does not return before then).
    job: UnsafeCell<*const Job>,
}

// SAFETY: `job` is written only by the caller of `run` while no worker reads it (before the
// generation bump, after every worker has finished the previous generation), and read by workers
// only between the bump (Release/Acquire) and their done increment.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// The most members a team may have: far more than any machine has cores, and few enough that a
/// mistaken size is refused at once rather than after starting threads until the system refuses.
pub const MAX_SIZE: usize = 256;

thread_local! {
    /// Set while this thread runs a share of some team's job (as the caller or as a worker).
    static IN_JOB: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`IN_JOB`] set, restoring it after (also when `f` panics).
fn in_job<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_JOB.with(|j| j.set(self.0));
        }
    }
    let _restore = Restore(IN_JOB.with(|j| j.replace(true)));
    f()
}

/// Persistent helper threads; the caller thread is member 0.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes `run` calls from different threads (one job at a time).
    lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team").field("size", &self.size()).finish()
    }
}

impl Team {
    /// A team of `size` members: the caller plus `size − 1` threads (`size` 0 counts as 1).
    ///
    /// # Errors
    /// `InvalidInput` if `size` exceeds [`MAX_SIZE`] (before any thread starts); the operating
    /// system refused to start a thread (the ones already started are stopped).
    pub fn new(size: usize) -> std::io::Result<Team> {
        if size > MAX_SIZE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a team of {size} members: at most {MAX_SIZE}"),
            ));
        }
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            wake_lock: std::sync::Mutex::new(()),
            wake: std::sync::Condvar::new(),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(std::ptr::null::<fn(usize)>() as *const Job),
        });
        let mut team = Team { shared, workers: Vec::new(), lock: std::sync::Mutex::new(()) };
        for id in 1..size.max(1) {
            let s = Arc::clone(&team.shared);
            // On error `team` drops here, which stops the workers already started.
            let handle =
                std::thread::Builder::new().name(format!("tt-accel-team-{id}")).spawn(move || worker(&s, id))?;
            team.workers.push(handle);
        }
        Ok(team)
    }

    /// Members, the caller included.
    pub fn size(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(i)` for every member `i` (0 on the calling thread) and returns when all are done.
    ///
    /// Called from inside a share of a job (of this or any team), it runs every share on the
    /// calling thread, in order: handing work to a team whose members may be waiting for this
    /// very thread would never return.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if IN_JOB.with(|j| j.get()) {
            (0..self.size()).for_each(job);
            return;
        }
        if self.workers.is_empty() {
            in_job(|| job(0));
            return;
        }
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        s.done.store(0, Ordering::Relaxed);
        // SAFETY: every worker finished the previous generation (we waited for `done`), so none
        // reads `job` now. The pointer's lifetime is erased; it is dereferenced only before we
        // return below, while `job` is still borrowed.
        unsafe {
            *s.job.get() = std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Job>(job as *const _);
        }
        s.bump();
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| in_job(|| job(0))));
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < self.workers.len() {
            spin(&mut spins);
        }
        // Only now, with every share finished, may a panic leave this frame (the job is borrowed).
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        // A share panicking is a bug in the job (a kernel), not bad input: re-raise it on the
        // caller's thread, like a panic inside a rayon scope.
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a tt-accel team member's share of the job panicked");
        }
    }
}

fn spin(spins: &mut u32) {
    *spins += 1;
    if *spins < 1 << 14 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Spin iterations a worker waits for the next job before it sleeps (~20–50 µs here).
const SPIN_BEFORE_SLEEP: u32 = 1 << 13;

impl Shared {
    /// Publishes a new generation and wakes sleeping workers. SeqCst on the counter and on
    /// `sleepers` (here and in `wait`) orders them: either the worker sees the new generation
    /// before sleeping, or this thread sees the sleeper and notifies it under the lock.
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }

    /// Waits until the generation differs from `seen` (or the team stops); returns it.
    fn wait(&self, seen: u64) -> u64 {
        for _ in 0..SPIN_BEFORE_SLEEP {
            let g = self.generation.load(Ordering::Acquire);
            if g != seen || self.stop.load(Ordering::Relaxed) {
                return g;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut g = self.generation.load(Ordering::SeqCst);
        while g == seen && !self.stop.load(Ordering::SeqCst) {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            g = self.generation.load(Ordering::SeqCst);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        g
    }
}

fn worker(s: &Shared, id: usize) {
    let mut seen = 0u64;
    loop {
        let g = s.wait(seen);
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        seen = g;
        // SAFETY: the Acquire load saw the caller's Release bump, after which `job` points to a
        // live job until we increment `done`.
        let job = unsafe { &**s.job.get() };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| in_job(|| job(id)))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.bump();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Splits `0..n` into `parts` contiguous ranges of near-equal size; range `i` (`parts` 0 counts as
/// 1; an `i` past the last part gets an empty range at `n`). Exact for any `n`: the products are
/// taken in 128 bits, since a wrapped bound would hand two members overlapping outputs.
pub fn share(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    // ≤ n because the multiplier is at most `parts`, so the narrowing cannot truncate.
    let bound = |j: usize| (n as u128 * j.min(parts) as u128 / parts as u128) as usize;
    bound(i)..bound(i.saturating_add(1))
}

/// A process-wide team with one member per core (at most 2 on this machine; `None` on a
/// single core or if a thread cannot start), created on first use. The packed projections and the
/// heads-parallel attention of one decoder share it, so no more threads than cores spin.
pub fn global() -> Option<&'static Arc<Team>> {
    static GLOBAL: std::sync::OnceLock<Option<Arc<Team>>> = std::sync::OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
            (cores > 1).then(|| Team::new(cores).ok().map(Arc::new)).flatten()
        })
        .as_ref()
}
