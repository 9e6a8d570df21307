//! [`Team`]: a few persistent threads that run one small job together, with a synchronization
//! cost of a fraction of a microsecond — what splitting a single decode-step projection across
//! cores needs (a scope or a thread spawn per projection costs several microseconds, about as
//! much as the projection itself) — and the process's one pool of compute threads
//! ([`global`]). See `docs/16-acceleration.md` § "Threads" for the policy in full.
//!
//! ## Protocol: each member's share first, then stealing
//! A job is `chunks` independent pieces (disjoint outputs). The caller publishes it by writing,
//! for every member, a 64-bit word on its own cache line — generation, next chunk, end of the
//! member's contiguous share — and then bumping the generation the workers spin on. Each member,
//! the caller (member 0) included, claims the chunks of its own share from the front by
//! compare-and-swap on its word; with its share done it steals the others' remaining chunks from
//! the back of their words. Every claim is valid only within the job's generation. Claims of
//! one's own share touch only one's own cache line, so a balanced job costs about what a fixed
//! split costs; the stealing is what makes the split degrade gracefully. A worker spins for a
//! short while (tens of microseconds, the gap between two projections of a decode step), then
//! sleeps on a condition variable so an idle team holds no core. The caller returns once every
//! *claimed* chunk is finished; it never waits for a member that has not claimed one.
//!
//! ## A descheduled member
//! The old protocol gave member `i` share `i` and waited for every member, so one member that the
//! OS had descheduled (another process on its core) held the whole step for a time slice —
//! milliseconds, against microseconds of work: two threads ran at a third of one thread's speed.
//! Now (measured in `cargo tito milestone acceleration`, contended rows):
//! - a member that is not running when a job starts claims nothing: the running members finish
//!   their shares and steal its share, and the job finishes at the speed of the members that run;
//! - a member preempted *inside* a chunk still holds that chunk's outputs (two threads may not
//!   write them), so the caller waits for it. That wait is detected — the caller waited longer
//!   than [`STALL_FLOOR`] plus twice its own time in the job, having run at least one chunk
//!   itself — and the team then runs its next
//!   jobs on the caller alone for a back-off period (1 ms, doubling while trouble recurs within
//!   2 s, up to [`MAX_BACKOFF`]) before it tries its members again. The same back-off follows when most of
//!   the last ~16 shared jobs *lost* — took longer than the caller alone would have (its time per
//!   chunk times the chunks), or the caller ran every chunk itself because no member was running
//!   to take one. Members whose cores are shared with other work (another process,
//!   or another VM on the host) are late or slow, and their spinning takes cycles from the
//!   caller's competitor and so from the caller: one thread is then the better plan, and during
//!   a back-off the members sleep. Under a persistent competitor the loss
//!   is bounded by one stall per back-off period; when the competitor leaves, the members are
//!   used again within one period. [`Team::stats`] counts both.
//! - a call that finds the team busy with another thread's job runs its chunks on the calling
//!   thread instead of queueing behind it: a second caller adds only its own thread, never
//!   another team's worth.
//!
//! Results never depend on who ran a chunk: each chunk computes its own outputs the same way on
//! any thread, so a split equals one thread's result bit for bit at any team size.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The job: called once per chunk with its index `0..chunks`.
type Job = dyn Fn(usize) + Sync;

/// The most chunks one published round holds (16 bits of a share word); [`Team::for_each`]
/// runs larger jobs in rounds.
pub const MAX_CHUNKS: usize = (1 << 16) - 1;

/// A caller's wait for claimed chunks beyond this (plus twice its own time in the job) counts as
/// a stall: a member was descheduled inside its chunk.
pub const STALL_FLOOR: Duration = Duration::from_micros(100);
/// The longest back-off after repeated stalls.
pub const MAX_BACKOFF: Duration = Duration::from_millis(512);
const FIRST_BACKOFF: Duration = Duration::from_millis(1);

/// A member's share word: generation (32 bits) | next unclaimed chunk (16) | end (16): the
/// chunks `next..end` of the share are unclaimed.
fn pack(generation: u32, next: usize, end: usize) -> u64 {
    (u64::from(generation) << 32) | ((next as u64) << 16) | end as u64
}
fn generation_of(v: u64) -> u32 {
    (v >> 32) as u32
}
fn next_of(v: u64) -> usize {
    ((v >> 16) & 0xffff) as usize
}
fn end_of(v: u64) -> usize {
    (v & 0xffff) as usize
}

/// A value alone on its cache lines (two: adjacent-line prefetch pairs them), so that writes to
/// one counter do not evict the others from the cores spinning on them.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    /// The latest round's generation: what the workers wait on.
    generation: Line<AtomicU64>,
    /// One share word per member (see [`pack`]), claimed from by CAS.
    shares: Box<[Line<AtomicU64>]>,
    /// Chunks of the current round finished (by anyone).
    finished: Line<AtomicUsize>,
    stop: AtomicBool,
    /// Workers asleep on `wake` (the caller notifies only when some are).
    sleepers: AtomicUsize,
    wake_lock: Mutex<()>,
    wake: std::sync::Condvar,
    /// Set when a chunk panicked on a worker (the caller then panics too, after all are done).
    panicked: AtomicBool,
    /// The current job. Written by the caller only before publishing a round, when every chunk
    /// of the previous round is finished and none can be claimed; read by a worker only after
    /// it claimed a chunk of the current round, and only until it counts that chunk finished.
    job: UnsafeCell<*const Job>,
}

// SAFETY: `job` is written and read only under the protocol on the field: a write happens after
// the caller saw every claimed chunk finished (Acquire on `finished`) and before it publishes the
// next round (Release stores of the share words); a read happens after a successful claim of that
// round (AcqRel CAS on a share word, in the release sequence of the publishing store) and before
// the reader's Release increment of `finished`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// The most members a team may have: far more than any machine has cores, and few enough that a
/// mistaken size is refused at once rather than after starting threads until the system refuses.
pub const MAX_SIZE: usize = 256;

thread_local! {
    /// Set while this thread runs a chunk of some team's job (as the caller or as a worker).
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

/// What a team has done since it started (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TeamStats {
    /// Jobs handed to the members.
    pub shared_jobs: u64,
    /// Jobs the caller ran alone: during a back-off, or because another thread's job held the team.
    pub caller_only_jobs: u64,
    /// Shared jobs whose caller waited on a member preempted inside a chunk (each starts a back-off).
    pub stalls: u64,
    /// Back-offs started: after a stall, or after most recent shared jobs lost against the caller
    /// alone (it waited for the members longer than its own share took).
    pub backoffs: u64,
    /// Chunks of shared jobs, and how many of them the members other than the caller ran.
    pub chunks: u64,
    pub member_chunks: u64,
}

/// The caller-side state, under the team's lock.
struct Control {
    generation: u32,
    /// No members until then (a back-off after a stall).
    solo_until: Option<Instant>,
    backoff: Duration,
    /// The first back-off and the longest.
    limits: (Duration, Duration),
    /// Moving average (over about 16 shared jobs) of "the split lost": the job took longer than
    /// the caller alone would have (its time per chunk times the chunks), or no member was running
    /// to take a chunk.
    lost: f32,
    /// When the last back-off started: trouble again within [`CALM`] of it doubles the next one.
    last_trouble: Option<Instant>,
    /// Lost jobs are not counted until then: sleeping members were just woken, and a wake-up
    /// takes longer than a small job.
    waking_until: Option<Instant>,
    /// The last time sleeping members were woken.
    last_wake: Option<Instant>,
}

/// How long after waking sleeping members lost jobs are not held against them...
const WAKE_GRACE: Duration = Duration::from_millis(2);
/// ...when no wake-up was needed for this long before.
const QUIET: Duration = Duration::from_millis(20);

/// Without trouble for this long, a new back-off starts again at the first length; until then
/// back-offs double, so a persistent competitor costs about one probe per [`MAX_BACKOFF`].
const CALM: Duration = Duration::from_secs(2);

/// [`TeamStats`] as counters readable while a job runs.
#[derive(Default)]
struct Counters {
    shared_jobs: AtomicU64,
    caller_only_jobs: AtomicU64,
    stalls: AtomicU64,
    backoffs: AtomicU64,
    chunks: AtomicU64,
    member_chunks: AtomicU64,
}

/// Persistent helper threads; the caller thread is member 0.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time; holds the caller-side state.
    control: Mutex<Control>,
    counters: Counters,
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
            generation: Line(AtomicU64::new(0)),
            shares: (0..size.max(1)).map(|_| Line(AtomicU64::new(0))).collect(),
            finished: Line(AtomicUsize::new(0)),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            wake_lock: Mutex::new(()),
            wake: std::sync::Condvar::new(),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(std::ptr::null::<fn(usize)>() as *const Job),
        });
        let limits = (FIRST_BACKOFF, MAX_BACKOFF);
        let control = Mutex::new(Control {
            generation: 0,
            solo_until: None,
            backoff: FIRST_BACKOFF,
            limits,
            lost: 0.0,
            last_trouble: None,
            waking_until: None,
            last_wake: None,
        });
        let mut team = Team { shared, workers: Vec::new(), control, counters: Counters::default() };
        for id in 1..size.max(1) {
            let s = Arc::clone(&team.shared);
            // On error `team` drops here, which stops the workers already started.
            let handle =
                std::thread::Builder::new().name(format!("tt-accel-team-{id}")).spawn(move || worker(&s, id))?;
            team.workers.push(handle);
        }
        Ok(team)
    }

    /// Sets the back-off after a stall: `first` after a stall that follows a clean job, doubling
    /// on each repeated stall up to `max` (defaults 1 ms and [`MAX_BACKOFF`]).
    pub fn with_backoff(self, first: Duration, max: Duration) -> Team {
        {
            let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
            c.limits = (first, max.max(first));
            c.backoff = first;
        }
        self
    }

    /// Members, the caller included.
    pub fn size(&self) -> usize {
        self.workers.len() + 1
    }

    /// What the team has done so far: shared jobs, jobs the caller ran alone, stalls.
    pub fn stats(&self) -> TeamStats {
        let c = &self.counters;
        TeamStats {
            shared_jobs: c.shared_jobs.load(Ordering::Relaxed),
            caller_only_jobs: c.caller_only_jobs.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
            backoffs: c.backoffs.load(Ordering::Relaxed),
            chunks: c.chunks.load(Ordering::Relaxed),
            member_chunks: c.member_chunks.load(Ordering::Relaxed),
        }
    }

    /// Runs `job(i)` once for every `i` in `0..size()`, on whichever members are free (see
    /// [`Team::for_each`]); returns when all are done.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        self.for_each(self.size(), job);
    }

    /// Runs `job(c)` once for every chunk `c` in `0..chunks`, each on whichever member claims it
    /// first (the calling thread is one of them), and returns when all are done. Chunks must be
    /// independent (disjoint outputs) for the result not to depend on who ran them.
    ///
    /// Runs every chunk on the calling thread, in order, when called from inside a chunk (of this
    /// or any team: handing work to members that may be waiting for this very thread would never
    /// return), when another thread's job holds the team, or during a back-off after a stall.
    ///
    /// # Panics
    /// If a chunk panicked (after every claimed chunk has finished): a panic in a chunk is a bug
    /// in the job, re-raised on the caller like a panic inside a scope.
    pub fn for_each(&self, chunks: usize, job: &(dyn Fn(usize) + Sync)) {
        let alone = || (0..chunks).for_each(job);
        if IN_JOB.with(|j| j.get()) {
            return alone();
        }
        if self.workers.is_empty() || chunks <= 1 {
            return in_job(alone);
        }
        let mut control = match self.control.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.counters.caller_only_jobs.fetch_add(1, Ordering::Relaxed);
                return in_job(alone);
            }
        };
        if let Some(until) = control.solo_until {
            if Instant::now() < until {
                self.counters.caller_only_jobs.fetch_add(1, Ordering::Relaxed);
                drop(control);
                return in_job(alone);
            }
            control.solo_until = None;
        }
        let mut start = 0;
        while start < chunks {
            if control.solo_until.is_some_and(|t| Instant::now() < t) {
                // A back-off started in an earlier round: the rest on this thread.
                self.counters.caller_only_jobs.fetch_add(1, Ordering::Relaxed);
                drop(control);
                return in_job(|| (start..chunks).for_each(job));
            }
            let n = (chunks - start).min(MAX_CHUNKS);
            let round = |c: usize| job(start + c);
            self.round(&mut control, n, &round);
            start += n;
        }
    }

    /// One published round of `chunks` (≤ MAX_CHUNKS) chunks, with the team's lock held.
    fn round(&self, control: &mut Control, chunks: usize, job: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        control.generation = control.generation.wrapping_add(1);
        let generation = control.generation;
        s.finished.store(0, Ordering::Relaxed);
        // SAFETY: every chunk of the previous round finished (we waited for `finished`) and none
        // can be claimed (every share's `next` reached its `end`), so no worker reads `job` now. The
        // pointer's lifetime is erased; it is dereferenced only before this function returns,
        // while `job` is still borrowed.
        unsafe {
            *s.job.get() = std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Job>(job as *const _);
        }
        // Contiguous shares with the bounds rounded up, so that any empty shares (fewer chunks
        // than members) are the last members', never the caller's. ≤ 65535 · 256: no overflow.
        let members = s.shares.len();
        let bound = |m: usize| (chunks * m).div_ceil(members);
        for (m, w) in s.shares.iter().enumerate() {
            w.store(pack(generation, bound(m), bound(m + 1)), Ordering::Release);
        }
        let woke = s.publish(generation);
        let start = Instant::now();
        if woke {
            // Grace for members woken after a quiet spell (the team's first jobs, the probe after
            // a back-off) — not for members that keep falling asleep because their core is taken.
            if control.last_wake.is_none_or(|t| start.duration_since(t) > QUIET) {
                control.waking_until = start.checked_add(WAKE_GRACE);
            }
            control.last_wake = Some(start);
        }
        // The caller claims like any member; a panicking chunk still counts as finished (the
        // wait below counts chunks), and its panic is re-raised once all are done.
        let (mut mine, mut ran) = (None, 0usize);
        in_job(|| {
            while let Some(c) = s.claim(generation, 0) {
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(c))) {
                    mine.get_or_insert(p);
                }
                ran += 1;
                s.finished.fetch_add(1, Ordering::Release);
            }
        });
        // Every chunk is claimed now; wait for the members still inside theirs.
        let own = start.elapsed();
        let mut spins = 0u32;
        while s.finished.load(Ordering::Acquire) < chunks {
            spin(&mut spins);
        }
        let waited = start.elapsed().saturating_sub(own);
        // The members' panic flag is taken at once, so that nothing below can leave it set to
        // fail the next, healthy job.
        let member_panicked = s.panicked.swap(false, Ordering::Relaxed);
        self.counters.shared_jobs.fetch_add(1, Ordering::Relaxed);
        self.counters.chunks.fetch_add(chunks as u64, Ordering::Relaxed);
        self.counters.member_chunks.fetch_add((chunks - ran) as u64, Ordering::Relaxed);
        // The caller's own time is the yardstick of a chunk's; with no chunk of its own (the
        // members took them all) it has none, and a long wait is only a long chunk.
        let stall = ran > 0 && waited > STALL_FLOOR + 2 * own;
        // Lost: the split took longer than the caller alone would have, or the caller ran every
        // chunk itself (no member was running to take one).
        // Alone, the caller would have taken about own · chunks / ran.
        let slower_than_alone = (own + waited).as_nanos() * ran as u128 > own.as_nanos() * chunks as u128;
        let lost = ran > 0 && (ran == chunks || slower_than_alone);
        if control.waking_until.is_none_or(|t| Instant::now() > t) {
            control.lost += (f32::from(u8::from(lost)) - control.lost) / 16.0;
        }
        if stall || control.lost > 0.5 {
            // A member descheduled inside its chunk, or members persistently slower than the
            // caller (their cores shared with other work): run alone for a while.
            if stall {
                self.counters.stalls.fetch_add(1, Ordering::Relaxed);
            }
            self.counters.backoffs.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            if control.last_trouble.is_none_or(|t| now.duration_since(t) > CALM) {
                control.backoff = control.limits.0;
            }
            control.solo_until = now.checked_add(control.backoff);
            control.backoff = control.backoff.saturating_mul(2).min(control.limits.1);
            control.lost = 0.0;
            control.last_trouble = Some(now);
        }
        // Only now, with every chunk finished, may a panic leave this frame (the job is borrowed).
        if let Some(p) = mine {
            std::panic::resume_unwind(p);
        }
        if member_panicked {
            // A chunk panicking is a bug in the job (a kernel), not bad input: re-raised on the
            // caller's thread, like a panic inside a scope (the member's own payload stays there).
            panic!("a tt-accel team member's chunk of the job panicked");
        }
    }
}

/// One iteration of the caller's wait for the members' chunks: `pause` at first (measured: a
/// plain re-read loop here made two-thread decode 0.73× one thread, against 1.23× with `pause`),
/// then yielding the core, in case the member it waits for is queued behind it.
fn spin(spins: &mut u32) {
    *spins += 1;
    if *spins < 1 << 14 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// How long a worker spins for the next job before it sleeps: longer than the gaps between the
/// jobs of one decode step, short enough that an idle team soon holds no core.
const SPIN_FOR: Duration = Duration::from_micros(200);

impl Shared {
    /// Publishes a new round (or the stop) and wakes sleeping workers. SeqCst on the generation
    /// and on `sleepers` (here and in `wait`) orders them: either the worker sees the new
    /// generation before sleeping, or this thread sees the sleeper and notifies it under the lock.
    /// Returns whether some worker was asleep.
    fn publish(&self, generation: u32) -> bool {
        self.generation.store(u64::from(generation), Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
            return true;
        }
        false
    }

    /// Claims a chunk of round `generation` for member `me`: the front of its own share, else
    /// the back of another member's (the next ones first), if any chunk is left.
    fn claim(&self, generation: u32, me: usize) -> Option<usize> {
        let n = self.shares.len();
        (0..n).find_map(|k| self.claim_from(generation, (me + k) % n, k > 0))
    }

    /// One chunk of member `from`'s share: its front, or its back when stealing.
    fn claim_from(&self, generation: u32, from: usize, steal: bool) -> Option<usize> {
        let w = &self.shares[from];
        let mut v = w.load(Ordering::Acquire);
        loop {
            let (next, end) = (next_of(v), end_of(v));
            if generation_of(v) != generation || next >= end {
                return None;
            }
            let (claimed, new) = if steal {
                (end - 1, pack(generation, next, end - 1))
            } else {
                (next, pack(generation, next + 1, end))
            };
            match w.compare_exchange_weak(v, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(claimed),
                Err(now) => v = now,
            }
        }
    }

    /// Waits until the generation differs from `seen` (or the team stops); returns it.
    fn wait(&self, seen: u32) -> u32 {
        let start = Instant::now();
        let mut i = 0u32;
        loop {
            let g = self.generation.load(Ordering::Acquire) as u32;
            if g != seen || self.stop.load(Ordering::Relaxed) {
                return g;
            }
            std::hint::spin_loop();
            i = i.wrapping_add(1);
            // The window is measured in time, not iterations: `pause` lasts from ~10 to ~140
            // cycles depending on the CPU.
            if i.is_multiple_of(16) && start.elapsed() > SPIN_FOR {
                break;
            }
        }
        let mut guard = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut g = self.generation.load(Ordering::SeqCst) as u32;
        while g == seen && !self.stop.load(Ordering::SeqCst) {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            g = self.generation.load(Ordering::SeqCst) as u32;
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        g
    }
}

fn worker(s: &Shared, me: usize) {
    let mut seen = 0u32;
    loop {
        let g = s.wait(seen);
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        seen = g;
        while let Some(c) = s.claim(g, me) {
            // SAFETY: we claimed chunk `c` of round `g`, so `job` points to that round's live job
            // until we count the chunk finished (see `Shared::job`).
            let job = unsafe { &**s.job.get() };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| in_job(|| job(c)))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
            s.finished.fetch_add(1, Ordering::Release);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // A new generation wakes every worker, which then sees `stop` (its share words still hold
        // an older generation: nothing to claim).
        let g = (self.shared.generation.load(Ordering::SeqCst) as u32).wrapping_add(1);
        let _ = self.shared.publish(g);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

thread_local! {
    /// The team this thread's kernels split their work over (see [`install`]).
    static INSTALLED: std::cell::RefCell<Option<Arc<Team>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `team` as this thread's team: the kernels that split work without a team of
/// their own (the int8 products, [`crate::packed::PackedF32`] without
/// [`with_team`](crate::packed::PackedF32::with_team), the threaded attention table) split it
/// over `team` (`None`: one thread). The previous setting is restored after, also on a panic. How
/// a program says "this decode / prefill / server batch uses these threads" — once, around the
/// call, instead of per layer.
pub fn install<R>(team: Option<Arc<Team>>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Team>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            INSTALLED.with(|t| *t.borrow_mut() = prev);
        }
    }
    let _restore = Restore(INSTALLED.with(|t| std::mem::replace(&mut *t.borrow_mut(), team)));
    f()
}

/// The team [`install`]ed on this thread, if any.
pub fn current() -> Option<Arc<Team>> {
    INSTALLED.with(|t| t.borrow().clone())
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

/// The work (multiply-adds, or a comparable count) below which a chunk is not worth its own
/// claim: a stolen chunk moves a share word's cache line between cores (hundreds of nanoseconds
/// on a VM whose cores sit on different dies), about as long as this much arithmetic.
pub const CHUNK_COST: usize = 1 << 18;

/// How many chunks to cut `units` independent units of work, each costing about `unit_cost`,
/// into for `members` members: one per member for a small job (a decode-step projection: more
/// claims would cost more than they balance), up to four per member when each chunk still
/// carries [`CHUNK_COST`] of work (so that a member that arrives late, or is preempted, leaves
/// small remainders to the others); never more than the units, at least 1.
pub fn chunks_for(units: usize, members: usize, unit_cost: usize) -> usize {
    let worth = units.saturating_mul(unit_cost) / CHUNK_COST;
    units.min(members.saturating_mul(4)).min(worth.max(members)).clamp(1, MAX_CHUNKS)
}

/// The thread count the process's compute uses: what [`set_threads`] set, else the environment
/// variable `TT_THREADS`, else [`std::thread::available_parallelism`] (which honours the CPU
/// affinity mask, e.g. `taskset`, and cgroup CPU quotas).
///
/// # Errors
/// `TT_THREADS` set to something other than a whole number in `1..=MAX_SIZE`.
pub fn threads() -> Result<usize, String> {
    if let Some(&n) = CHOSEN.get() {
        return Ok(n);
    }
    match std::env::var("TT_THREADS") {
        Ok(v) => parse_threads(&v).map_err(|e| format!("TT_THREADS: {e}")),
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_SIZE)),
    }
}

/// Parses a thread count: a whole number in `1..=MAX_SIZE`.
///
/// # Errors
/// Anything else, named.
pub fn parse_threads(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_SIZE).contains(&n) => Ok(n),
        _ => Err(format!("{v:?} is not a thread count (a whole number from 1 to {MAX_SIZE})")),
    }
}

static CHOSEN: OnceLock<usize> = OnceLock::new();

/// Sets the process's thread count (`--threads`) before the [`global`] team starts.
///
/// # Errors
/// `n` outside `1..=MAX_SIZE`, or a count was already chosen or the global team already
/// started with a different size (its size is fixed for the process's life).
pub fn set_threads(n: usize) -> Result<(), String> {
    if !(1..=MAX_SIZE).contains(&n) {
        return Err(format!("{n} threads: expected 1 to {MAX_SIZE}"));
    }
    if let Some(t) = GLOBAL.get() {
        let size = t.as_ref().map_or(1, |t| t.size());
        if size != n {
            return Err(format!("the process's team already started with {size} members"));
        }
    }
    if CHOSEN.get_or_init(|| n) != &n {
        return Err(format!("the thread count is already {}", CHOSEN.get().copied().unwrap_or(n)));
    }
    Ok(())
}

static GLOBAL: OnceLock<Option<Arc<Team>>> = OnceLock::new();

/// The process-wide team: [`threads`] members (`None` for one thread, or if a thread cannot
/// start), created on first use. Every inference kernel that splits work splits it here — the
/// packed projections, the heads-parallel attention, the int8 products — so one decode, prefill
/// or server batch never runs more compute threads than this, and two callers at once do not
/// add up (the second runs alone on its own thread: see [`Team::for_each`]). An invalid
/// `TT_THREADS` is reported on stderr once and one thread per core is used; programs that want
/// it to be an error call [`threads`] first (the `tito` CLI does).
pub fn global() -> Option<&'static Arc<Team>> {
    GLOBAL
        .get_or_init(|| {
            let n = threads().unwrap_or_else(|e| {
                eprintln!("tt-accel: {e}; using one thread per core");
                std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_SIZE)
            });
            (n > 1).then(|| Team::new(n).ok().map(Arc::new)).flatten()
        })
        .as_ref()
}

/// Teams of other sizes, for measuring a workload at several thread counts in one process (the
/// scaling curves, the GEMM ladder's threaded rung): the [`global`] team when `n` is its size,
/// else one kept per size (at most [`KEPT_TEAMS`] at once).
///
/// # Errors
/// `n` outside `1..=MAX_SIZE`; a thread could not start.
pub fn sized(n: usize) -> std::io::Result<Arc<Team>> {
    if !(1..=MAX_SIZE).contains(&n) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a team of {n} members: expected 1 to {MAX_SIZE}"),
        ));
    }
    if let Some(g) = global().filter(|g| g.size() == n) {
        return Ok(Arc::clone(g));
    }
    static TEAMS: OnceLock<Mutex<Vec<Arc<Team>>>> = OnceLock::new();
    let mut teams = TEAMS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = teams.iter().find(|t| t.size() == n) {
        return Ok(Arc::clone(t));
    }
    if teams.len() >= KEPT_TEAMS {
        // A team still in use lives on in its user's `Arc` and stops when that is dropped.
        teams.remove(0);
    }
    let t = Arc::new(Team::new(n)?);
    teams.push(Arc::clone(&t));
    Ok(t)
}

/// Teams of non-global sizes kept at once by [`sized`].
pub const KEPT_TEAMS: usize = 4;
