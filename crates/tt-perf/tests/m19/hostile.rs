//! Hostile input: settings, counts and libraries chosen to overflow, wrap, allocate without bound
//! or loop forever. Each must end in a result or a typed error, never a panic, abort or hang, and
//! never a wrapped value judged VALID.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tt_perf::ablation::{self, Factor};
use tt_perf::clock::{Clock, ManualClock};
use tt_perf::early_stopping::{self, CONFIDENCE};
use tt_perf::loadgen::{self, Mode, Scenario, TestSettings, MAX_PEAK_SEARCH_STEPS, MAX_RECORD_BYTES, MAX_SAMPLES};
use tt_perf::{results, stats, PerfError};

use crate::fakes::{Library, Parallel, Serial};

const MS: u64 = 1_000_000;

/// The first duration that does not fit `u64` nanoseconds: 584.5 years.
fn past_u64_ns() -> Duration {
    Duration::from_nanos(u64::MAX) + Duration::from_nanos(1)
}

/// Runs `f` on its own thread and fails if it has not finished within `secs`: a hang is the bug
/// these tests look for, so it must fail the test rather than stall the test run.
fn finishes<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let v = f();
        let _ = tx.send(());
        v
    });
    if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
        panic!("did not finish within {secs} s: a loop that does not end");
    }
    // Finished or panicked: either way the thread is done; pass a panic on as the test's.
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn field_of(e: &PerfError) -> &'static str {
    match e {
        PerfError::InvalidSetting { field, .. } => field,
        other => panic!("expected InvalidSetting, got {other}"),
    }
}

/// A VALID SingleStream run on a manual clock: 100 queries of 1 ms.
fn valid_single_stream() -> results::Judged {
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| MS);
    let s = TestSettings::scaled(Scenario::SingleStream, Duration::from_millis(50), 100);
    let j =
        results::judge(loadgen::start_test_with_clock(&sut, &mut Library::new(10, 10), &s, clock).unwrap()).unwrap();
    assert!(j.valid, "{:?}", j.failed_rules);
    j
}

#[test]
fn a_584_year_min_duration_is_an_error_not_valid() {
    let mut s = TestSettings::scaled(Scenario::SingleStream, past_u64_ns(), 1);
    assert_eq!(field_of(&s.validate().unwrap_err()), "min_duration");
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| MS);
    let e = loadgen::start_test_with_clock(&sut, &mut Library::new(10, 10), &s, clock).unwrap_err();
    assert_eq!(field_of(&e), "min_duration");
    assert!(e.to_string().contains("584 years"), "{e}");
    // The same duration set on a finished run's log: it used to truncate to 0.29 s and pass.
    let mut log = valid_single_stream().log;
    log.settings.min_duration = past_u64_ns();
    assert_eq!(field_of(&results::judge(log).unwrap_err()), "min_duration");
    // The largest duration that fits is a setting, not an error.
    s.min_duration = Duration::from_nanos(u64::MAX);
    s.validate().unwrap();
}

#[test]
fn every_duration_beyond_the_clock_is_refused_by_name() {
    let base = TestSettings::scaled(Scenario::Server, Duration::from_secs(1), 1);
    let cases: [(&str, TestSettings); 4] = [
        ("min_duration", TestSettings { min_duration: Duration::MAX, ..base.clone() }),
        ("max_duration", TestSettings { max_duration: Some(past_u64_ns()), ..base.clone() }),
        ("target_latency", TestSettings { target_latency: Duration::MAX, ..base.clone() }),
        ("completion_timeout", TestSettings { completion_timeout: past_u64_ns(), ..base.clone() }),
    ];
    for (field, s) in cases {
        assert_eq!(field_of(&s.validate().unwrap_err()), field);
        assert_eq!(field_of(&loadgen::poisson_schedule(&s).unwrap_err()), field);
    }
    // Zero and one nanosecond are fine everywhere.
    for d in [Duration::ZERO, Duration::from_nanos(1)] {
        TestSettings {
            min_duration: d,
            max_duration: Some(d),
            target_latency: d,
            completion_timeout: d,
            ..base.clone()
        }
        .validate()
        .unwrap();
    }
}

#[test]
fn a_setting_changed_to_nan_after_construction_is_caught_at_run_start() {
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| MS);
    let mut s = TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 10);
    s.target_latency_percentile = f64::NAN;
    let e = loadgen::start_test_with_clock(&sut, &mut Library::new(10, 10), &s, clock.clone()).unwrap_err();
    assert_eq!(field_of(&e), "target_latency_percentile");
    assert!(sut.seen.lock().unwrap().is_empty(), "nothing was issued");
    let mut server = TestSettings::scaled(Scenario::Server, Duration::from_secs(1), 10);
    server.server_target_qps = f64::NAN;
    assert_eq!(field_of(&loadgen::poisson_schedule(&server).unwrap_err()), "server_target_qps");
    assert_eq!(
        field_of(&loadgen::find_peak(&sut, &mut Library::new(10, 10), &server).unwrap_err()),
        "server_target_qps"
    );
    // And on a log judged after the run.
    let mut log = valid_single_stream().log;
    log.settings.target_latency_percentile = f64::NAN;
    assert_eq!(field_of(&results::judge(log).unwrap_err()), "target_latency_percentile");
}

#[test]
fn rates_zero_negative_nan_inf_and_huge_are_refused() {
    let bad = [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, f64::MAX, f64::MIN_POSITIVE, 5e-324];
    for qps in bad {
        let mut s = TestSettings::scaled(Scenario::Server, Duration::from_secs(1), 662);
        s.server_target_qps = qps;
        assert_eq!(field_of(&s.validate().unwrap_err()), "server_target_qps", "server {qps}");
        let mut o = TestSettings::scaled(Scenario::Offline, Duration::from_secs(1), 1);
        o.offline_expected_qps = qps;
        // Offline's count is the larger of the rate's and min_query_count: a tiny positive
        // expected rate just leaves min_query_count.
        if qps > 0.0 && qps < 1.0 {
            o.validate().unwrap();
        } else {
            assert_eq!(field_of(&o.validate().unwrap_err()), "offline_expected_qps", "offline {qps}");
        }
    }
    // A rate so low that the minimum count would take longer than the clock can count…
    let mut s = TestSettings::scaled(Scenario::Server, Duration::ZERO, 662);
    s.server_target_qps = 1e-9;
    assert_eq!(field_of(&s.validate().unwrap_err()), "server_target_qps");
    // Even with no minimum count: the schedule holds at least one arrival (a proptest found a
    // tiny rate with min_query_count 0 accepted, then refused by the schedule).
    let tiny = TestSettings {
        server_target_qps: f64::MIN_POSITIVE,
        min_duration: Duration::from_nanos(1),
        ..TestSettings::scaled(Scenario::Server, Duration::ZERO, 0)
    };
    assert_eq!(field_of(&tiny.validate().unwrap_err()), "server_target_qps");
    // …is fine under a max_duration, which ends the schedule first.
    s.max_duration = Some(Duration::from_secs(1));
    s.validate().unwrap();
    assert!(finishes(10, move || loadgen::poisson_schedule(&s).unwrap()).is_empty());
    // A huge rate over no duration issues just the minimum count, all at once.
    let mut s = TestSettings::scaled(Scenario::Server, Duration::ZERO, 5);
    s.server_target_qps = 1e300;
    assert_eq!(finishes(10, move || loadgen::poisson_schedule(&s).unwrap()), vec![0; 5]);
}

#[test]
fn counts_at_0_1_and_max() {
    for scenario in [Scenario::SingleStream, Scenario::MultiStream, Scenario::Server, Scenario::Offline] {
        for n in [0, 1, MAX_SAMPLES] {
            let s =
                TestSettings { multi_stream_samples_per_query: 1, ..TestSettings::scaled(scenario, Duration::ZERO, n) };
            s.validate().unwrap();
        }
        for n in [MAX_SAMPLES + 1, u64::MAX] {
            let e = TestSettings::scaled(scenario, Duration::ZERO, n).validate().unwrap_err();
            assert_eq!(field_of(&e), "min_query_count", "{scenario:?}");
        }
    }
    let mut ms = TestSettings::scaled(Scenario::MultiStream, Duration::ZERO, 1);
    for (per_query, ok) in [(0, false), (1, true), (MAX_SAMPLES as usize, true), (usize::MAX, false)] {
        ms.multi_stream_samples_per_query = per_query;
        assert_eq!(ms.validate().is_ok(), ok, "{per_query}");
    }
    // 2²⁶ queries of 2³⁸ samples: the product wraps u64 to 0, and is still refused.
    ms.min_query_count = 1 << 26;
    ms.multi_stream_samples_per_query = 1 << 38;
    assert_eq!(field_of(&ms.validate().unwrap_err()), "multi_stream_samples_per_query");
    ms.min_query_count = 1 << 20;
    ms.multi_stream_samples_per_query = 1 << 20;
    assert_eq!(field_of(&ms.validate().unwrap_err()), "multi_stream_samples_per_query");
    // A query count of zero still issues one query, and judges it.
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| MS);
    let s = TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 0);
    let log = loadgen::start_test_with_clock(&sut, &mut Library::new(1, 1), &s, clock).unwrap();
    assert_eq!(log.queries_issued, 1);
    // A Server run with nothing to schedule is an error from judging, not a panic.
    let empty = TestSettings::scaled(Scenario::Server, Duration::ZERO, 0);
    let fast = Parallel { latency: Box::new(|_| MS) };
    let log =
        loadgen::start_test_with_clock(&fast, &mut Library::new(1, 1), &empty, Arc::new(ManualClock::new())).unwrap();
    assert!(results::judge(log).is_err());
}

#[test]
fn peak_search_steps_are_capped() {
    let mut s = TestSettings::scaled(Scenario::Server, Duration::from_secs(1), 1);
    for (steps, ok) in
        [(0, true), (1, true), (MAX_PEAK_SEARCH_STEPS, true), (MAX_PEAK_SEARCH_STEPS + 1, false), (usize::MAX, false)]
    {
        s.peak_search_steps = steps;
        assert_eq!(s.validate().is_ok(), ok, "{steps}");
    }
    let sut = Parallel { latency: Box::new(|_| MS) };
    let e = loadgen::find_peak_with_clock(&sut, &mut Library::new(10, 10), &s, &|| Arc::new(ManualClock::new()))
        .unwrap_err();
    assert_eq!(field_of(&e), "peak_search_steps");
}

#[test]
fn the_server_schedule_length_is_checked_before_building_it() {
    // 10⁹ arrivals would take 8 GB; refused before the first is drawn.
    let mut s = TestSettings::scaled(Scenario::Server, Duration::from_secs(1000), 1);
    s.server_target_qps = 1e6;
    let e = finishes(10, move || loadgen::poisson_schedule(&s).unwrap_err());
    assert_eq!(field_of(&e), "server_target_qps");
    assert!(e.to_string().contains(&MAX_SAMPLES.to_string()), "{e}");
}

#[test]
fn a_library_claiming_2_pow_40_samples_is_refused_without_allocating() {
    // Allocating 2⁴⁰ indices or records would abort the process, so finishing is the proof.
    for (mode, total, perf) in [
        (Mode::AccuracyOnly, 1usize << 40, 10),
        (Mode::PerformanceOnly, 1 << 40, 1 << 40),
        (Mode::PerformanceOnly, 10, usize::MAX),
    ] {
        let clock = Arc::new(ManualClock::new());
        let sut = Serial::new(clock.clone(), |_| MS);
        let mut s = TestSettings::scaled(Scenario::Offline, Duration::ZERO, 1);
        s.mode = mode;
        let mut lib = Library::new(total, perf);
        let e = loadgen::start_test_with_clock(&sut, &mut lib, &s, clock).unwrap_err();
        match &e {
            PerfError::TooLarge { count, limit, .. } => {
                assert!(*count > u128::from(*limit) && *limit == MAX_SAMPLES, "{e}");
            }
            other => panic!("expected TooLarge, got {other}"),
        }
        assert!(e.to_string().contains("fake-"), "names the library: {e}");
        assert_eq!(lib.loads, 0, "refused before loading");
    }
    // One sample, and exactly the limit's worth of claim, are accepted.
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| MS);
    let s = TestSettings::scaled(Scenario::Offline, Duration::ZERO, 1);
    loadgen::start_test_with_clock(&sut, &mut Library::new(1, 1), &s, clock.clone()).unwrap();
    loadgen::start_test_with_clock(&sut, &mut Library::new(MAX_SAMPLES as usize, 4), &s, clock).unwrap();
}

#[test]
fn early_stopping_with_extreme_counts_terminates() {
    let ps = [f64::MIN_POSITIVE, 1e-300, 1e-9, 0.5, 0.9, 0.99, 1.0 - 1e-9, 1.0 - f64::EPSILON];
    for &p in &ps {
        for t in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            let r = finishes(10, move || early_stopping::min_passing(t, p, CONFIDENCE));
            if let Ok(h) = r {
                assert!(h >= 1);
            }
            let r = finishes(10, move || early_stopping::server(u64::MAX, t, p, CONFIDENCE));
            if let Ok(es) = r {
                assert!(es.met, "u64::MAX queries meet any need that fits u64");
            }
        }
        finishes(10, move || early_stopping::min_queries(p, CONFIDENCE)).ok();
    }
    // The doubling used to wrap to 0 and spin forever; now it says why it stopped.
    let e = finishes(10, || early_stopping::min_passing(u64::MAX, 0.99, CONFIDENCE)).unwrap_err();
    assert!(e.to_string().contains(&u64::MAX.to_string()), "names t: {e}");
    assert!(early_stopping::server(0, u64::MAX, 0.99, CONFIDENCE).is_err());
    for bad in [0.0, 1.0, f64::NAN, f64::INFINITY, -1.0] {
        assert!(early_stopping::min_passing(1, bad, CONFIDENCE).is_err());
        assert!(early_stopping::min_passing(1, 0.9, bad).is_err());
    }
    // odds is public too: a p that is not a probability is NaN, not statrs' panic.
    for bad in [2.0, -0.5, f64::NAN, f64::INFINITY] {
        assert!(early_stopping::odds(1, 0, bad).is_nan(), "{bad}");
    }
    assert_eq!(early_stopping::odds(0, u64::MAX, f64::NAN), 1.0);
    // statrs' -inf here is past its precision: no answer, rather than a wrong one.
    assert!(early_stopping::odds(u64::MAX, u64::MAX, 0.5).is_nan());
}

/// The linear scan `latency_estimate` used before it bisected: the reference it must agree with.
fn discarded_by_scan(n: u64, p: f64) -> u64 {
    let mut t = 1u64;
    while t < n && early_stopping::min_passing(t + 1, p, CONFIDENCE).unwrap() + t < n {
        t += 1;
    }
    t
}

#[test]
fn latency_estimate_bisection_matches_the_linear_scan() {
    for p in [0.9, 0.99] {
        let need = early_stopping::min_queries(p, CONFIDENCE).unwrap();
        for n in (need..need + 1500).step_by(37).chain([need, need + 1]) {
            let sorted: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let es = early_stopping::latency_estimate(&sorted, p, CONFIDENCE).unwrap();
            let t = discarded_by_scan(n, p);
            assert_eq!(es.percentile_estimate, Some((n - t) as f64), "n = {n}, p = {p}");
        }
    }
    // A long run is judged in bounded time (the scan took one early-stopping search per query).
    let sorted: Vec<f64> = (0..2_000_000).map(f64::from).collect();
    let es = finishes(20, move || early_stopping::latency_estimate(&sorted, 0.99, CONFIDENCE).unwrap());
    assert!(es.met);
}

#[test]
fn a_hand_built_run_log_is_judged_or_refused_never_a_panic() {
    let base = valid_single_stream().log;
    // MultiStream with no per-query latencies: nothing to take a percentile of.
    let mut log = base.clone();
    log.settings.scenario = Scenario::MultiStream;
    log.query_latencies_ns.clear();
    assert!(results::judge(log).is_err());
    // Counters and latencies at u64::MAX are judged (INVALID or not), without overflow.
    for scenario in [Scenario::SingleStream, Scenario::Server, Scenario::Offline] {
        let mut log = base.clone();
        log.settings.scenario = scenario;
        log.queries_issued = u64::MAX;
        log.final_query_issued_ns = u64::MAX;
        log.final_query_scheduled_ns = u64::MAX;
        log.final_completion_ns = u64::MAX;
        log.sample_latencies_ns.iter_mut().for_each(|l| *l = u64::MAX);
        let j = results::judge(log).unwrap();
        let _ = (j.summary_text(), j.detail_json());
    }
}

#[test]
fn the_manual_clock_saturates() {
    let c = ManualClock::new();
    c.advance(u64::MAX);
    c.advance(u64::MAX);
    assert_eq!(c.now_ns(), u64::MAX);
    c.sleep_until_ns(0);
    assert_eq!(c.now_ns(), u64::MAX);
}

#[test]
fn bootstrap_resamples_are_bounded() {
    let e = stats::bootstrap_ci(&[1.0, 2.0], stats::median_of, usize::MAX, 0.95, 1).unwrap_err();
    assert!(matches!(e, PerfError::TooLarge { .. }), "{e}");
    assert!(stats::bootstrap_ci(&[1.0], stats::median_of, 1, 0.95, 1).is_ok());
}

#[test]
fn a_factorial_design_too_large_to_list_is_refused() {
    let two = |i: usize| Factor::new(&format!("f{i}"), &["a", "b"]);
    let e = ablation::full_factorial(&(0..130).map(two).collect::<Vec<_>>()).unwrap_err();
    assert!(matches!(e, PerfError::TooLarge { .. }), "{e}");
    assert_eq!(ablation::full_factorial(&(0..20).map(two).collect::<Vec<_>>()).unwrap().len(), 1 << 20);
    assert_eq!(ablation::full_factorial(&[]).unwrap(), vec![Vec::<usize>::new()]);
    assert!(ablation::full_factorial(&[Factor::new("none", &[])]).unwrap().is_empty());
    // A level out of range is named, not a panic — also where a walk reports a missing step.
    assert_eq!(ablation::config_name(&[two(0)], &[usize::MAX]), format!("f0=#{}?", usize::MAX));
    let study = ablation::analyse(&[two(0)], Vec::new()).unwrap();
    assert!(ablation::walk(&study, &[("bad", vec![7])]).is_err());
}

fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_nanos(u64::MAX)),
        Just(past_u64_ns()),
        Just(Duration::MAX),
        (0u64..3_000_000_000).prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

fn rates() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-1.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(1e300),
        Just(f64::MIN_POSITIVE),
        Just(5e-324),
        0.5f64..5000.0,
        any::<f64>(),
    ]
}

fn counts() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(1), Just(MAX_SAMPLES), Just(MAX_SAMPLES + 1), Just(u64::MAX), 0u64..2000, any::<u64>()]
}

fn probabilities() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(1.0),
        Just(f64::NAN),
        Just(f64::MIN_POSITIVE),
        Just(1.0 - f64::EPSILON),
        Just(0.9),
        Just(0.99),
        0.0f64..1.0,
        any::<f64>(),
    ]
}

fn settings() -> impl Strategy<Value = TestSettings> {
    let scenario = prop_oneof![
        Just(Scenario::SingleStream),
        Just(Scenario::MultiStream),
        Just(Scenario::Server),
        Just(Scenario::Offline)
    ];
    let mode = prop_oneof![Just(Mode::PerformanceOnly), Just(Mode::AccuracyOnly), Just(Mode::FindPeakPerformance)];
    (
        (scenario, mode, durations(), counts(), proptest::option::of(durations()), durations()),
        (probabilities(), rates(), rates(), counts(), any::<u64>(), durations()),
        (
            prop_oneof![Just(0usize), Just(1), Just(64), Just(65), Just(usize::MAX), 0usize..100],
            prop_oneof![Just(0u64), Just(1), Just(4096), Just(MAX_RECORD_BYTES), Just(u64::MAX), any::<u64>()],
        ),
    )
        .prop_map(
            |((scenario, mode, min_d, n, max_d, lat), (p, sq, oq, per_query, seed, timeout), (steps, budget))| {
                TestSettings {
                    mode,
                    max_duration: max_d,
                    target_latency: lat,
                    target_latency_percentile: p,
                    server_target_qps: sq,
                    offline_expected_qps: oq,
                    multi_stream_samples_per_query: per_query.try_into().unwrap_or(usize::MAX),
                    qsl_seed: seed,
                    sample_index_seed: seed.rotate_left(1),
                    schedule_seed: seed.rotate_left(2),
                    completion_timeout: timeout,
                    peak_search_steps: steps,
                    max_record_bytes: budget,
                    ..TestSettings::scaled(scenario, min_d, n)
                }
            },
        )
}

/// Whether a validated run is small enough to carry out here: at most a few thousand samples on
/// a manual clock where each sample takes 1 ms.
fn small(s: &TestSettings) -> bool {
    let limit = 4000.0;
    let secs = s.min_duration.as_secs_f64();
    let n = s.min_query_count as f64;
    let per_query = s.multi_stream_samples_per_query as f64;
    match s.scenario {
        Scenario::SingleStream => n <= limit && secs * 1e3 <= limit,
        Scenario::MultiStream => n * per_query <= limit && secs * 1e3 <= limit && per_query <= limit,
        Scenario::Server => n <= limit && s.server_target_qps * secs <= limit,
        Scenario::Offline => n <= limit && s.offline_expected_qps * secs * 1.1 <= limit,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn settings_api_never_panics_or_hangs(s in settings()) {
        finishes(30, move || match s.validate() {
            Err(e) => {
                field_of(&e);
            }
            Ok(()) => {
                // What validate promises: every duration on the clock, the rate usable.
                assert!(s.min_duration.as_nanos() <= u128::from(u64::MAX));
                assert!(s.target_latency_percentile > 0.0 && s.target_latency_percentile < 1.0);
                if s.scenario == Scenario::Server {
                    assert!(s.server_target_qps.is_finite() && s.server_target_qps > 0.0);
                }
                if !small(&s) {
                    return;
                }
                if s.scenario == Scenario::Server {
                    // Within the counts, or refused by the memory budget.
                    match loadgen::poisson_schedule(&s) {
                        Ok(times) => assert!(times.len() as u64 <= MAX_SAMPLES),
                        Err(e) => assert!(matches!(e, PerfError::OverBudget { .. }), "{e}"),
                    }
                }
                let clock = Arc::new(ManualClock::new());
                let sut = Serial::new(clock.clone(), |_| MS);
                // Errors are allowed (a run cut to nothing by max_duration); panics are not.
                if let Ok(log) = loadgen::start_test_with_clock(&sut, &mut Library::new(20, 7), &s, clock) {
                    let _ = results::judge(log).map(|j| j.summary_text());
                }
            }
        });
    }

    #[test]
    fn early_stopping_never_panics_or_hangs(t in counts(), n in counts(), p in probabilities(), c in probabilities()) {
        finishes(30, move || {
            let o = early_stopping::odds(n, t, p);
            assert!(o.is_nan() || (0.0..=1.0).contains(&o), "{o}");
            if let Ok(h) = early_stopping::min_passing(t, p, c) {
                assert!(h >= 1);
            }
            let _ = early_stopping::min_queries(p, c);
            if let Ok(es) = early_stopping::server(n, t, p, c) {
                assert_eq!(es.met, n >= es.queries_needed);
            }
            let sorted: Vec<f64> = (0..n % 3000).map(|i| i as f64).collect();
            if let Ok(es) = early_stopping::latency_estimate(&sorted, p, c) {
                assert_eq!(es.met, es.percentile_estimate.is_some());
            }
        });
    }
}

/// Logs are written through a fresh, exclusively created temp file: a link planted at a fixed
/// temp name, or a user's own `*.tmp` file, is neither written through nor renamed into place.
#[cfg(unix)]
#[test]
fn write_atomic_never_writes_through_a_planted_temp_name() {
    let dir = std::env::temp_dir().join(format!("tt-m19-atomic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "victim").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("mlperf_log_summary.txt.tmp")).unwrap();
    std::fs::write(dir.join("data.json.tmp"), "the user's").unwrap();
    let summary = dir.join("mlperf_log_summary.txt");
    tt_perf::results::write_atomic(&summary, b"summary").unwrap();
    tt_perf::results::write_atomic(&dir.join("data.json"), b"{}").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
    assert_eq!(std::fs::read_to_string(&summary).unwrap(), "summary");
    assert_eq!(std::fs::read_to_string(dir.join("data.json")).unwrap(), "{}");
    assert_eq!(std::fs::read_to_string(dir.join("data.json.tmp")).unwrap(), "the user's");
    let leftovers = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".tt-perf-"));
    assert_eq!(leftovers.count(), 0, "no temp file left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}
