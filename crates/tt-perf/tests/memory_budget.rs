//! A run's memory is bounded by `TestSettings::max_record_bytes`, not only its sample count: runs
//! that cannot fit are refused before allocating, and runs that outgrow it (a SingleStream run
//! that never reaches its minimum duration, large accuracy responses) stop with an error.
//!
//! A binary of its own because it counts allocations: the global allocator below keeps each
//! thread's live and peak heap bytes, and every system here answers on the issuing thread, so a
//! test's peak is what its run allocated.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use tt_perf::clock::ManualClock;
use tt_perf::loadgen::{
    self, Mode, QuerySample, QuerySampleResponse, Responder, Scenario, SystemUnderTest, TestSettings, MAX_RECORD_BYTES,
    MAX_SAMPLES,
};
use tt_perf::PerfError;

#[path = "m19/fakes.rs"]
#[allow(dead_code)]
mod fakes;
use fakes::{Library, Parallel};

const MIB: u64 = 1 << 20;

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    // `try_with`: the allocator runs while thread-locals are torn down, too.
    let _ = LIVE.try_with(|l| {
        let live = l.get() + size;
        l.set(live);
        let _ = PEAK.try_with(|p| p.set(p.get().max(live)));
    });
}

fn note_dealloc(size: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator, as GlobalAlloc requires.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_dealloc(layout.size());
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds realloc's contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note_dealloc(layout.size());
            note_alloc(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the most heap bytes this thread held beyond what it held
/// before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let v = f();
    (v, (PEAK.with(Cell::get) - base) as u64)
}

/// The budget error's fields, or a panic naming what came instead.
fn over_budget(e: &PerfError) -> (u64, u128, u64) {
    match e {
        &PerfError::OverBudget { samples, bytes, limit, .. } => (samples, bytes, limit),
        other => panic!("expected OverBudget, got {other}"),
    }
}

/// Answers every sample at once, on the issuing thread, with `len` bytes; the clock never moves.
struct Answers {
    len: usize,
}

impl SystemUnderTest for Answers {
    fn name(&self) -> String {
        "instant".into()
    }
    fn issue_query(&self, samples: &[QuerySample], responder: &Responder) {
        for s in samples {
            responder.complete(&[QuerySampleResponse { id: s.id, data: vec![7; self.len], tokens: None }]);
        }
    }
}

fn accuracy(scenario: Scenario) -> TestSettings {
    TestSettings { mode: Mode::AccuracyOnly, ..TestSettings::scaled(scenario, Duration::ZERO, 1) }
}

#[test]
fn an_accuracy_run_of_max_samples_is_refused_before_allocating() {
    // The outside probe: a library of exactly MAX_SAMPLES and 1-byte answers reached 14.6 GB.
    for scenario in [Scenario::SingleStream, Scenario::MultiStream, Scenario::Server, Scenario::Offline] {
        let clock = Arc::new(ManualClock::new());
        let mut lib = Library::new(MAX_SAMPLES as usize, 1000);
        let (r, peak) =
            peak_of(|| loadgen::start_test_with_clock(&Answers { len: 1 }, &mut lib, &accuracy(scenario), clock));
        let e = r.unwrap_err();
        let (samples, bytes, limit) = over_budget(&e);
        assert_eq!((samples, limit), (MAX_SAMPLES, MAX_RECORD_BYTES), "{e}");
        assert!(bytes > u128::from(limit), "{e}");
        let text = e.to_string();
        for part in [MAX_SAMPLES.to_string(), bytes.to_string(), MAX_RECORD_BYTES.to_string()] {
            assert!(text.contains(&part), "names the count, the bytes and the limit: {text}");
        }
        assert!(text.contains("fake-"), "names the library: {text}");
        assert_eq!(lib.loads, 0, "refused before loading");
        assert!(peak < MIB, "refused before allocating, yet {peak} bytes were allocated");
    }
}

#[test]
fn a_performance_run_over_the_budget_is_refused_before_allocating() {
    // 10⁸ Offline samples are within MAX_SAMPLES, so validate() accepts them; the records are not.
    let mut s = TestSettings::scaled(Scenario::Offline, Duration::from_secs(1), 1);
    s.offline_expected_qps = MAX_SAMPLES as f64 / 1.1;
    s.validate().unwrap();
    let clock = Arc::new(ManualClock::new());
    let mut lib = Library::new(100, 100);
    let (r, peak) = peak_of(|| loadgen::start_test_with_clock(&Answers { len: 0 }, &mut lib, &s, clock));
    let (samples, _, limit) = over_budget(&r.unwrap_err());
    assert_eq!((samples, limit), (MAX_SAMPLES, MAX_RECORD_BYTES));
    assert!(peak < MIB, "{peak} bytes");
    // A performance set the budget cannot hold is refused before it is chosen or loaded.
    let s = TestSettings { max_record_bytes: 1000, ..TestSettings::scaled(Scenario::Offline, Duration::ZERO, 1) };
    let mut lib = Library::new(10_000, 10_000);
    let e =
        loadgen::start_test_with_clock(&Answers { len: 0 }, &mut lib, &s, Arc::new(ManualClock::new())).unwrap_err();
    over_budget(&e);
    assert_eq!(lib.loads, 0);
}

#[test]
fn the_budget_is_exact_at_its_edge_0_1_and_max() {
    // The refusal names what the run needs; exactly that is accepted, one byte less is not.
    let run = |budget: u64| {
        let s = TestSettings { max_record_bytes: budget, ..accuracy(Scenario::Offline) };
        let fast = Parallel { latency: Box::new(|_| 1) };
        loadgen::start_test_with_clock(&fast, &mut Library::new(50, 10), &s, Arc::new(ManualClock::new()))
    };
    let (samples, needed, _) = over_budget(&run(0).unwrap_err());
    assert_eq!(samples, 50);
    let needed = u64::try_from(needed).unwrap();
    assert_eq!(run(needed).unwrap().accuracy.len(), 50, "empty responses take nothing beyond the records");
    let (_, bytes, limit) = over_budget(&run(needed - 1).unwrap_err());
    assert_eq!((bytes, limit), (u128::from(needed), needed - 1));
    over_budget(&run(1).unwrap_err());
    assert_eq!(run(u64::MAX).unwrap().accuracy.len(), 50);
}

#[test]
fn a_single_stream_run_that_never_reaches_min_duration_stops_at_the_budget() {
    // The clock never moves, so min_duration is never met; before the budget this ran to
    // MAX_SAMPLES (8.6 GB).
    for scenario in [Scenario::SingleStream, Scenario::MultiStream] {
        let budget = 256 * 1024;
        let s = TestSettings {
            max_record_bytes: budget,
            multi_stream_samples_per_query: 3,
            ..TestSettings::scaled(scenario, Duration::from_secs(1), 1)
        };
        let clock = Arc::new(ManualClock::new());
        let (r, peak) =
            peak_of(|| loadgen::start_test_with_clock(&Answers { len: 0 }, &mut Library::new(10, 10), &s, clock));
        let e = r.unwrap_err();
        let (samples, bytes, limit) = over_budget(&e);
        assert_eq!(limit, budget);
        assert!(bytes > u128::from(budget) && samples > 100, "it ran until the budget: {e}");
        assert!(e.to_string().contains("min_duration"), "says why: {e}");
        assert!(peak <= budget, "held {peak} bytes under a budget of {budget}");
    }
}

#[test]
fn a_server_schedule_stops_at_the_budget() {
    // 10⁷ arrivals are within MAX_SAMPLES; under a 1 MiB budget the schedule stops early.
    let mut s = TestSettings::scaled(Scenario::Server, Duration::from_secs(10), 1);
    s.server_target_qps = 1e6;
    s.max_record_bytes = MIB;
    let (r, peak) = peak_of(|| loadgen::poisson_schedule(&s));
    let (samples, bytes, limit) = over_budget(&r.unwrap_err());
    assert!(samples < 10_000 && bytes > u128::from(limit), "{samples} {bytes}");
    assert!(peak <= MIB, "{peak} bytes");
    s.max_record_bytes = MAX_RECORD_BYTES;
    let short = TestSettings { min_duration: Duration::from_millis(10), ..s };
    assert!(loadgen::poisson_schedule(&short).unwrap().len() > 1000);
}

#[test]
fn large_responses_hit_the_response_budget_and_the_run_stops() {
    // Records for 100 samples fit in 1 MiB; 100 responses of 64 KiB do not.
    for scenario in [Scenario::SingleStream, Scenario::MultiStream, Scenario::Server, Scenario::Offline] {
        let s = TestSettings { max_record_bytes: MIB, ..accuracy(scenario) };
        let sut = Answers { len: 64 * 1024 };
        let clock = Arc::new(ManualClock::new());
        let (r, peak) = peak_of(|| loadgen::start_test_with_clock(&sut, &mut Library::new(100, 100), &s, clock));
        let e = r.unwrap_err();
        let (samples, bytes, limit) = over_budget(&e);
        assert_eq!(limit, MIB, "{scenario:?}");
        assert!(samples < 20 && bytes > u128::from(MIB), "{scenario:?}: {e}");
        assert!(e.to_string().contains("responses"), "{e}");
        // The budget, plus the one response in flight that did not fit.
        assert!(peak <= MIB + 2 * 64 * 1024, "{scenario:?}: held {peak} bytes");
    }
    // The same run with room for them completes, every response kept.
    let s = TestSettings { max_record_bytes: 16 * MIB, ..accuracy(Scenario::Offline) };
    let log = loadgen::start_test_with_clock(
        &Answers { len: 64 * 1024 },
        &mut Library::new(100, 100),
        &s,
        Arc::new(ManualClock::new()),
    )
    .unwrap();
    assert!(log.accuracy.iter().all(|(_, d)| d.len() == 64 * 1024));
}

#[test]
fn tiny_responses_are_counted_at_their_heap_cost() {
    // 1-byte answers hold a 32-byte allocation each: counting their bytes alone would let 32
    // times more through. Records fit; the responses' allocations do not.
    let base = |budget| TestSettings { max_record_bytes: budget, ..accuracy(Scenario::Offline) };
    let run = |budget, len| {
        loadgen::start_test_with_clock(
            &Answers { len },
            &mut Library::new(1000, 1000),
            &base(budget),
            Arc::new(ManualClock::new()),
        )
    };
    let (_, records, _) = over_budget(&run(0, 0).unwrap_err());
    let records = u64::try_from(records).unwrap();
    run(records, 0).unwrap();
    // 1000 bytes of data would fit in records + 1000; their heap (32 each) does not.
    let e = run(records + 1000, 1).unwrap_err();
    over_budget(&e);
    assert_eq!(run(records + 32 * 1000, 1).unwrap().accuracy.len(), 1000);
}

#[test]
fn a_peak_search_stays_below_a_rate_whose_run_cannot_fit() {
    let mut s = TestSettings::scaled(Scenario::Server, Duration::from_secs(1), 500);
    s.server_target_qps = 1000.0;
    let lib = || Library::new(10, 10);
    // What one sample costs, and the run's fixed part, from the budget's own refusals.
    let (_, per_sample, _) =
        over_budget(&loadgen::poisson_schedule(&TestSettings { max_record_bytes: 0, ..s.clone() }).unwrap_err());
    let zero = TestSettings { max_record_bytes: 0, ..s.clone() };
    let (planned, bytes, _) = over_budget(
        &loadgen::start_test_with_clock(&Answers { len: 0 }, &mut lib(), &zero, Arc::new(ManualClock::new()))
            .unwrap_err(),
    );
    let fixed = bytes - u128::from(planned) * per_sample;
    // About 1,000 arrivals fit (1 s at 1000/s), the doubled rate's 2,000 do not.
    s.max_record_bytes = u64::try_from(fixed + 1500 * per_sample).unwrap();
    let fast = Parallel { latency: Box::new(|_| 1_000_000) };
    let (steps, best) = loadgen::find_peak_with_clock(&fast, &mut lib(), &s, &|| Arc::new(ManualClock::new())).unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(steps[0].valid && best.unwrap().log.settings.server_target_qps == 1000.0);
}
