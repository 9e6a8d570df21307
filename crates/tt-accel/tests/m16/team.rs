//! The team — the process's one pool of compute threads: every chunk runs exactly once at any
//! size; a member descheduled inside its chunk (simulated by a chunk that sleeps on a worker) is
//! detected and the team backs off to the caller alone, then uses its members again; a caller
//! that finds the team busy runs alone instead of queueing; thread counts are parsed strictly.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tt_accel::team::{chunks_for, parse_threads, Team, TeamStats, MAX_BACKOFF, MAX_CHUNKS, MAX_SIZE};

fn on_a_worker() -> bool {
    std::thread::current().name().is_some_and(|n| n.starts_with("tt-accel-team-"))
}

#[test]
fn every_chunk_runs_exactly_once_at_any_size() {
    for size in [1, 2, 3, 7] {
        let team = Team::new(size).unwrap();
        for chunks in [0, 1, 2, 5, 64, 1000, MAX_CHUNKS + 3] {
            let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            team.for_each(chunks, &|c| {
                hits[c].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{size} members, {chunks} chunks");
        }
    }
    // Small jobs: one chunk per member; large ones: four; never more than the units.
    assert_eq!(chunks_for(0, 4, 1 << 30), 1);
    assert_eq!(chunks_for(3, 4, 1 << 30), 3);
    assert_eq!(chunks_for(24, 2, 49_152 / 24), 2, "a decode-step projection");
    assert_eq!(chunks_for(1000, 2, 1 << 20), 8);
    assert_eq!(chunks_for(usize::MAX, MAX_SIZE, usize::MAX), MAX_SIZE * 4);
}

/// Spins for about `us` microseconds (a chunk long enough for a woken worker to join in).
fn busy(us: u64) {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

/// Runs 64-chunk jobs, a worker being stuck in its first chunk (as if the OS had given its core
/// to another process) for `stuck_ms`, until the team backs off — after that stall, or earlier
/// if this machine's load makes the members lose jobs first (either is a back-off to test).
fn stall(team: &Team, stuck_ms: u64) {
    let stuck = AtomicBool::new(false);
    for _ in 0..1000 {
        if team.stats().backoffs > 0 {
            return;
        }
        team.for_each(64, &|_| {
            if on_a_worker() && !stuck.swap(true, Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(stuck_ms));
            }
            busy(5);
        });
    }
    panic!("no worker ever claimed a chunk: {:?}", team.stats());
}

/// A worker stuck in its chunk makes the caller wait once; the team counts a stall, backs off and
/// runs the following jobs on the caller alone (no chunk reaches a worker) until the back-off ends.
#[test]
fn a_member_stuck_in_its_chunk_makes_the_team_back_off_to_the_caller() {
    // A back-off long enough that this test's own preemption cannot end it early.
    let team = Team::new(2).unwrap().with_backoff(Duration::from_secs(60), Duration::from_secs(60));
    stall(&team, 30);
    let after_stall = team.stats();
    assert!(after_stall.backoffs >= 1);
    let on_workers = AtomicUsize::new(0);
    for _ in 0..20 {
        team.for_each(64, &|_| {
            if on_a_worker() {
                on_workers.fetch_add(1, Ordering::Relaxed);
            }
            busy(5);
        });
    }
    assert_eq!(on_workers.load(Ordering::Relaxed), 0);
    let now = team.stats();
    assert_eq!(now.caller_only_jobs, after_stall.caller_only_jobs + 20);
    assert_eq!(now.shared_jobs, after_stall.shared_jobs);
}

/// After the back-off (1 ms by default) the team shares its jobs again.
#[test]
fn after_the_back_off_the_team_shares_jobs_again() {
    let team = Team::new(2).unwrap();
    stall(&team, 30);
    std::thread::sleep(MAX_BACKOFF);
    let before = team.stats();
    team.for_each(8, &|_| {});
    assert_eq!(team.stats().shared_jobs, before.shared_jobs + 1, "{:?}", team.stats());
}

/// Two threads calling one team at once: the second does not queue behind the first (which may be
/// waiting for a descheduled member) but runs its own chunks, so at most `size` threads compute.
#[test]
fn a_caller_that_finds_the_team_busy_runs_alone() {
    let team = Arc::new(Team::new(2).unwrap());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let release = Arc::new(AtomicBool::new(false));
    let holder = {
        let (team, release) = (Arc::clone(&team), Arc::clone(&release));
        std::thread::spawn(move || {
            let once = AtomicBool::new(false);
            team.for_each(2, &|_| {
                if !once.swap(true, Ordering::Relaxed) {
                    started_tx.send(()).unwrap();
                    while !release.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
        })
    };
    started_rx.recv().unwrap();
    let ran = AtomicUsize::new(0);
    team.for_each(10, &|_| {
        assert!(!on_a_worker(), "a busy team's worker took a second caller's chunk");
        ran.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(ran.load(Ordering::Relaxed), 10);
    assert!(team.stats().caller_only_jobs >= 1);
    release.store(true, Ordering::Relaxed);
    holder.join().unwrap();
}

#[test]
fn a_panicking_chunk_is_raised_on_the_caller_and_the_team_still_works() {
    let team = Team::new(3).unwrap();
    for bad in [0usize, 7, 63] {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.for_each(64, &|c| assert!(c != bad, "chunk {c} fails"));
        }));
        assert!(r.is_err(), "chunk {bad}'s panic reached the caller");
        let n = AtomicUsize::new(0);
        team.for_each(64, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 64);
    }
    assert_eq!(TeamStats::default().stalls, 0);
}

#[test]
fn thread_counts_are_whole_numbers_from_one_to_the_maximum() {
    assert_eq!(parse_threads("3"), Ok(3));
    assert_eq!(parse_threads(" 16 "), Ok(16));
    for bad in ["0", "-1", "two", "", "1.5", "257", "99999999999999999999999"] {
        let e = parse_threads(bad).unwrap_err();
        assert!(e.contains("thread count"), "{bad}: {e}");
    }
    assert!(tt_accel::team::sized(0).is_err());
    assert!(tt_accel::team::sized(MAX_SIZE + 1).is_err());
    assert_eq!(tt_accel::team::sized(3).unwrap().size(), 3);
}

/// The caller's chunk and a worker's chunk both panicking in one job: the job panics once, and
/// the next job (healthy) does not inherit the worker's failure.
#[test]
fn a_double_panic_does_not_fail_the_next_job() {
    let team = Team::new(2).unwrap();
    for _ in 0..50 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.for_each(2, &|_| {
                busy(20);
                panic!("both fail");
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        team.for_each(4, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 4);
    }
}

/// Members persistently slower than the caller (each of their chunks takes ten times the
/// caller's, as on a core shared with other work): most shared jobs "lose" against the caller
/// alone, and the team backs off to the caller without any single stall being needed.
#[test]
fn persistently_slow_members_make_the_team_back_off() {
    let team = Team::new(2).unwrap();
    for _ in 0..200 {
        team.for_each(2, &|_| busy(if on_a_worker() { 60 } else { 6 }));
        if team.stats().backoffs > 0 {
            break;
        }
    }
    let s = team.stats();
    assert!(s.backoffs > 0, "{s:?}");
    let before = s.caller_only_jobs;
    team.for_each(2, &|_| {});
    assert!(team.stats().caller_only_jobs > before || team.stats().backoffs > s.backoffs, "{:?}", team.stats());
}
