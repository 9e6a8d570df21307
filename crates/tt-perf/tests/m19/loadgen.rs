use std::sync::{Arc, Mutex};
use std::time::Duration;

use tt_perf::clock::{Clock, ManualClock};
use tt_perf::loadgen::{
    self, Mode, QuerySample, QuerySampleResponse, Responder, Scenario, SystemUnderTest, TestSettings,
};
use tt_perf::results::{self, Judged};

use crate::fakes::{Library, Parallel, Queue, Serial};

const MS: u64 = 1_000_000;

fn run(sut: &dyn SystemUnderTest, lib: &mut Library, s: &TestSettings, clock: Arc<ManualClock>) -> Judged {
    results::judge(loadgen::start_test_with_clock(sut, lib, s, clock).unwrap()).unwrap()
}

/// SingleStream: 100 queries, latency (id mod 10 + 1) ms: ten of each of 1..=10 ms.
fn single_stream_known() -> Judged {
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |id| (id % 10 + 1) * MS);
    let mut s = TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 100);
    s.min_query_count = 100;
    run(&sut, &mut Library::new(10, 10), &s, clock)
}

#[test]
fn fake_system_gives_exactly_the_expected_summary() {
    let j = single_stream_known();
    assert!(j.valid, "{:?}", j.failed_rules);
    assert_eq!(j.log.queries_issued, 100);
    assert_eq!(j.target_percentile_ns, 10 * MS); // sorted[90]
    assert_eq!(j.sample_latency.median, 6.0 * MS as f64); // sorted[50]
    assert_eq!(j.sample_latency.mean, 5.5 * MS as f64);
    assert_eq!((j.sample_latency.min, j.sample_latency.max), (MS as f64, 10.0 * MS as f64));
    // Issue times are cumulative latencies: the last query starts after 99 of them.
    let issued_before_last: u64 = (0..99).map(|id| (id % 10 + 1) * MS).sum();
    assert_eq!(j.log.final_query_issued_ns, issued_before_last);
    let text = j.summary_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], "MLPerf Results Summary");
    assert_eq!(lines[3], "SUT name : serial-fake");
    assert_eq!(lines[4], "Scenario : SingleStream");
    assert_eq!(lines[5], "Mode     : PerformanceOnly");
    assert_eq!(lines[6], "90th percentile latency (ns) : 10000000");
    assert_eq!(lines[7], "Result is : VALID");
    assert_eq!(lines[8], "  Min duration satisfied : Yes");
    assert_eq!(lines[9], "  Min queries satisfied : Yes");
    assert_eq!(lines[10], "  Early stopping satisfied: Yes");
    assert!(text.contains("QPS w/o loadgen overhead        : 181.82"), "{text}");
    assert!(text.contains("Min latency (ns)                : 1000000"));
    assert!(text.contains("99.00 percentile latency (ns)   : 10000000"));
    // The early-stopping estimate is one of the measured latencies, at or above the p90.
    let est = j.early_stopping.percentile_estimate.unwrap();
    assert!(est >= 10.0 * MS as f64 - 0.5);
}

#[test]
fn logs_are_written_in_mlperf_format() {
    let j = single_stream_known();
    let dir = std::env::temp_dir().join(format!("tt-perf-logs-{}", std::process::id()));
    let path = j.write_logs(&dir).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("================================================\nMLPerf Results Summary\n"));
    let detail: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("mlperf_log_detail.json")).unwrap()).unwrap();
    assert_eq!(detail["result_validity"], "VALID");
    assert_eq!(detail["scenario"], "SingleStream");
    assert_eq!(detail["target_percentile_latency_ns"], 10 * MS);
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn same_seeds_same_run_and_samples_from_the_loaded_set() {
    let a = single_stream_known();
    let b = single_stream_known();
    assert_eq!(a.log.sample_latencies_ns, b.log.sample_latencies_ns);
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| MS);
    let mut lib = Library::new(1000, 16);
    let s = TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 200);
    let j = run(&sut, &mut lib, &s, clock);
    assert_eq!(j.log.queries_issued, 200);
    assert_eq!(lib.loads, 1);
    let seen = sut.seen.lock().unwrap();
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert!(distinct.len() <= 16, "samples come from the 16 loaded");
}

#[test]
fn min_duration_fails_alone() {
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| 10 * MS);
    let mut s = TestSettings::scaled(Scenario::SingleStream, Duration::from_secs(10), 64);
    s.max_duration = Some(Duration::from_secs(1));
    let j = run(&sut, &mut Library::new(10, 10), &s, clock);
    assert!(!j.valid);
    assert!(!j.min_duration_met && j.min_queries_met && j.early_stopping.met);
    assert_eq!(j.failed_rules.len(), 1);
    assert!(j.failed_rules[0].starts_with("min duration"), "{:?}", j.failed_rules);
    assert!(j.summary_text().contains("Result is : INVALID\n  Min duration satisfied : NO"));
}

#[test]
fn min_queries_fails_alone() {
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| 10 * MS);
    let mut s = TestSettings::scaled(Scenario::SingleStream, Duration::from_secs(1), 2000);
    s.max_duration = Some(Duration::from_secs(2));
    let j = run(&sut, &mut Library::new(10, 10), &s, clock);
    assert!(j.min_duration_met && !j.min_queries_met && j.early_stopping.met);
    assert_eq!(j.failed_rules.len(), 1);
    assert!(j.failed_rules[0].starts_with("min queries"), "{:?}", j.failed_rules);
}

#[test]
fn early_stopping_fails_alone_single_stream() {
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| 10 * MS);
    let s = TestSettings::scaled(Scenario::SingleStream, Duration::from_millis(100), 10);
    let j = run(&sut, &mut Library::new(10, 10), &s, clock);
    assert!(j.min_duration_met && j.min_queries_met && !j.early_stopping.met);
    assert_eq!(j.failed_rules.len(), 1);
    assert!(j.failed_rules[0].contains("needs 64 queries"), "{:?}", j.failed_rules);
}

fn server_settings(qps: f64, n: u64) -> TestSettings {
    let mut s = TestSettings::scaled(Scenario::Server, Duration::from_secs(1), n);
    s.server_target_qps = qps;
    s.target_latency = Duration::from_millis(100);
    s
}

#[test]
fn server_valid_and_early_stopping_failing_alone() {
    // Parallel system, 5 ms each: valid once there are enough queries (h_min(0) = 459).
    let fast = Parallel { latency: Box::new(|_| 5 * MS) };
    let j = run(&fast, &mut Library::new(50, 50), &server_settings(1000.0, 600), Arc::new(ManualClock::new()));
    assert!(j.valid, "{:?}", j.failed_rules);
    assert_eq!(j.perf_constraints_met, Some(true));
    // Five of 600 over the bound: the p99 (sorted[594]) is within it, but 600 queries cannot
    // show that at 99% confidence.
    let five_slow = Parallel { latency: Box::new(|id| if id < 5 { 200 * MS } else { 5 * MS }) };
    let j = run(&five_slow, &mut Library::new(50, 50), &server_settings(1000.0, 600), Arc::new(ManualClock::new()));
    assert!(j.min_duration_met && j.min_queries_met && j.perf_constraints_met == Some(true) && !j.early_stopping.met);
    assert_eq!(j.failed_rules.len(), 1, "{:?}", j.failed_rules);
    assert!(j.summary_text().contains("  Performance constraints satisfied : Yes"));
}

#[test]
fn server_latency_bound_fails() {
    // 2% over the bound: the p99 is over it. Early stopping then fails too — it can only pass
    // when the percentile is under the bound with confidence, so these two rules cannot
    // disagree in this direction.
    let slow = Parallel { latency: Box::new(|id| if id % 50 == 0 { 200 * MS } else { 5 * MS }) };
    let j = run(&slow, &mut Library::new(50, 50), &server_settings(1000.0, 1000), Arc::new(ManualClock::new()));
    assert!(j.min_duration_met && j.min_queries_met);
    assert_eq!(j.perf_constraints_met, Some(false));
    assert!(j.failed_rules[0].starts_with("performance constraint"), "{:?}", j.failed_rules);
    assert!(j.summary_text().contains("  Performance constraints satisfied : NO"));
}

#[test]
fn poisson_schedule_statistics() {
    let s = server_settings(200.0, 20_000);
    let t = loadgen::poisson_schedule(&s).unwrap();
    assert_eq!(t.len(), 20_000); // 20,000 queries cover more than 1 s at 200/s
    assert_eq!(t, loadgen::poisson_schedule(&s).unwrap(), "seeded");
    let gaps: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e9).collect();
    let mean = tt_perf::stats::mean(&gaps).unwrap();
    let sd = tt_perf::stats::sample_std(&gaps).unwrap();
    // Exponential gaps: mean 1/λ = 5 ms and coefficient of variation 1. With 20k gaps the mean's
    // standard error is 5 ms/√20000 ≈ 0.7%: 3% is over four of them.
    assert!((mean - 0.005).abs() < 0.00015, "mean gap {mean}");
    assert!((sd / mean - 1.0).abs() < 0.03, "cv {}", sd / mean);
    let other = loadgen::poisson_schedule(&TestSettings { schedule_seed: 99, ..s.clone() }).unwrap();
    assert_ne!(t, other);
    // Long runs cover the minimum duration.
    let long = loadgen::poisson_schedule(&server_settings(10.0, 1)).unwrap();
    assert!(*long.last().unwrap() >= 1_000_000_000);
}

#[test]
fn multistream_query_latency_is_its_slowest_sample() {
    let clock = Arc::new(ManualClock::new());
    // Serial: samples of a query run one after another, 1 ms each; 8 per query → 8 ms.
    let sut = Serial::new(clock.clone(), |_| MS);
    let mut s = TestSettings::scaled(Scenario::MultiStream, Duration::ZERO, 700);
    s.multi_stream_samples_per_query = 8;
    let j = run(&sut, &mut Library::new(64, 64), &s, clock);
    assert_eq!(j.log.queries_issued, 700);
    assert_eq!(j.log.sample_latencies_ns.len(), 5600);
    assert_eq!(j.target_percentile_ns, 8 * MS);
    assert_eq!(j.sample_latency.min, MS as f64);
    assert!(j.valid, "{:?}", j.failed_rules);
    assert!(j.summary_text().contains("99th percentile latency (ns) : 8000000"));
}

#[test]
fn offline_samples_per_second() {
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| 2 * MS);
    let mut s = TestSettings::scaled(Scenario::Offline, Duration::from_millis(100), 1);
    s.offline_expected_qps = 500.0; // 500/s · 0.1 s · 1.1 = 55 samples
    let j = run(&sut, &mut Library::new(20, 20), &s, clock);
    assert_eq!(j.log.sample_latencies_ns.len(), 55);
    assert_eq!(j.log.queries_issued, 1);
    assert_eq!(j.log.final_completion_ns, 110 * MS);
    assert!((j.value - 500.0).abs() < 1e-9);
    assert!(j.valid, "{:?}", j.failed_rules);
    assert!(j.summary_text().contains("Samples per second: 500.000"));
}

#[test]
fn accuracy_only_touches_every_sample_once() {
    for scenario in [Scenario::SingleStream, Scenario::MultiStream, Scenario::Server, Scenario::Offline] {
        let clock = Arc::new(ManualClock::new());
        let sut = Serial::new(clock.clone(), |_| MS);
        let mut s = TestSettings::scaled(scenario, Duration::from_secs(100), 1_000_000);
        s.mode = Mode::AccuracyOnly;
        let mut lib = Library::new(25, 7);
        let log = loadgen::start_test_with_clock(&sut, &mut lib, &s, clock).unwrap();
        let mut seen = sut.seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..25).collect::<Vec<_>>(), "{scenario:?}");
        assert_eq!(lib.loads, 4, "chunks of 7");
        assert_eq!(log.accuracy.len(), 25);
        for (i, (index, data)) in log.accuracy.iter().enumerate() {
            assert_eq!(*index, i);
            assert_eq!(data, &(i as u32).to_le_bytes().to_vec());
        }
    }
}

#[test]
fn invalid_settings_are_rejected() {
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| MS);
    let mut lib = Library::new(10, 10);
    let mut bad = server_settings(0.0, 10);
    assert!(loadgen::start_test_with_clock(&sut, &mut lib, &bad, clock.clone()).is_err());
    bad.server_target_qps = f64::NAN;
    assert!(bad.validate().is_err());
    let mut s = TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 1);
    s.target_latency_percentile = 1.0;
    assert!(s.validate().is_err());
    s = TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 1);
    s.mode = Mode::FindPeakPerformance;
    assert!(s.validate().is_err());
    s = TestSettings::scaled(Scenario::Server, Duration::from_secs(1_000_000), 1);
    s.server_target_qps = 1e6;
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("would issue"), "{e}");
    let empty = loadgen::start_test_with_clock(
        &sut,
        &mut Library::new(0, 0),
        &TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 1),
        clock,
    );
    assert!(empty.is_err());
}

struct Misbehaving {
    duplicate: bool,
}

impl SystemUnderTest for Misbehaving {
    fn name(&self) -> String {
        "bad".into()
    }
    fn issue_query(&self, samples: &[QuerySample], responder: &Responder) {
        if self.duplicate {
            let r = QuerySampleResponse { id: samples[0].id, ..Default::default() };
            responder.complete(&[r.clone(), r]);
        }
    }
}

#[test]
fn misbehaving_systems_are_errors() {
    let mut s = TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 5);
    s.completion_timeout = Duration::from_millis(50);
    let e = loadgen::start_test_with_clock(
        &Misbehaving { duplicate: true },
        &mut Library::new(3, 3),
        &s,
        Arc::new(ManualClock::new()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("second response"), "{e}");
    let e = loadgen::start_test_with_clock(
        &Misbehaving { duplicate: false },
        &mut Library::new(3, 3),
        &s,
        Arc::new(ManualClock::new()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("responses missing"), "{e}");
}

#[test]
fn find_peak_brackets_a_queue() {
    // A single server of 10 ms per query saturates at 100 queries/s; a 100 ms p99 bound holds
    // somewhat below that.
    let sut = Queue { service_ns: 10 * MS, free_at: Mutex::new(0) };
    let mut s = server_settings(20.0, 700);
    s.min_duration = Duration::from_secs(10);
    s.mode = Mode::FindPeakPerformance;
    s.peak_search_steps = 5;
    let clock = || -> Arc<dyn Clock> { Arc::new(ManualClock::new()) };
    let mut lib = Library::new(10, 10);
    let reset = |q: &Queue| *q.free_at.lock().unwrap() = 0;
    reset(&sut);
    let (steps, best) = loadgen::find_peak_with_clock(&sut, &mut lib, &s, &|| {
        reset(&sut);
        clock()
    })
    .unwrap();
    let best = best.expect("some rate is valid");
    let peak = best.log.settings.server_target_qps;
    assert!(best.valid);
    assert!((40.0..100.0).contains(&peak), "peak {peak}, steps {steps:?}");
    // Every rate above the peak that was tried is invalid.
    assert!(steps.iter().filter(|st| st.target_qps > peak).all(|st| !st.valid));
    assert!(loadgen::find_peak(&sut, &mut lib, &TestSettings::scaled(Scenario::Offline, Duration::ZERO, 1)).is_err());
}

#[test]
fn accuracy_runs_are_not_judged_by_performance_rules() {
    let clock = Arc::new(ManualClock::new());
    let sut = Serial::new(clock.clone(), |_| MS);
    let mut s = TestSettings::scaled(Scenario::SingleStream, Duration::from_secs(100), 1_000_000);
    s.mode = Mode::AccuracyOnly;
    let j = run(&sut, &mut Library::new(5, 5), &s, clock);
    assert!(j.valid && j.failed_rules.is_empty());
    let text = j.summary_text();
    assert!(text.contains("Mode     : AccuracyOnly"));
    assert!(text.contains("Performance rules not applied"), "{text}");
    assert!(!text.contains("Early Stopping Result"));
}

/// A library whose loading takes 2 s of (manual) time.
struct SlowLoad {
    inner: Library,
    clock: Arc<ManualClock>,
}

impl tt_perf::loadgen::QuerySampleLibrary for SlowLoad {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn total_sample_count(&self) -> usize {
        self.inner.total
    }
    fn performance_sample_count(&self) -> usize {
        self.inner.perf
    }
    fn load_samples(&mut self, indices: &[usize]) -> tt_perf::Result<()> {
        self.clock.advance(2_000 * MS);
        self.inner.load_samples(indices)
    }
    fn unload_samples(&mut self, indices: &[usize]) -> tt_perf::Result<()> {
        self.inner.unload_samples(indices)
    }
}

#[test]
fn loading_samples_is_not_run_time() {
    let clock = Arc::new(ManualClock::new());
    let sut = Parallel { latency: Box::new(|_| 10 * MS) };
    let mut s = TestSettings::scaled(Scenario::Offline, Duration::from_secs(1), 1);
    s.offline_expected_qps = 100.0; // 110 samples
    let mut lib = SlowLoad { inner: Library::new(10, 10), clock: clock.clone() };
    let j = run_any(&sut, &mut lib, &s, clock);
    // The run itself lasted 10 ms: too short, whatever the load took.
    assert!(!j.min_duration_met);
    assert!((j.value - 110.0 / 0.010).abs() < 1e-6, "{}", j.value);
}

fn run_any(
    sut: &dyn SystemUnderTest,
    lib: &mut dyn tt_perf::loadgen::QuerySampleLibrary,
    s: &TestSettings,
    clock: Arc<ManualClock>,
) -> Judged {
    results::judge(loadgen::start_test_with_clock(sut, lib, s, clock).unwrap()).unwrap()
}

#[test]
fn find_peak_treats_a_timeout_as_an_invalid_rate() {
    // Answers only the first 1,000 samples of each run: at a rate whose run needs more, the
    // run times out — that rate is invalid, the search goes on.
    struct Capped {
        seen: Mutex<u64>,
    }
    impl SystemUnderTest for Capped {
        fn name(&self) -> String {
            "capped".into()
        }
        fn issue_query(&self, samples: &[QuerySample], responder: &Responder) {
            let mut seen = self.seen.lock().unwrap();
            for q in samples {
                *seen += 1;
                if *seen <= 1000 {
                    let now = responder.now_ns();
                    responder.complete_at(&[QuerySampleResponse { id: q.id, ..Default::default() }], now + MS);
                }
            }
        }
    }
    let sut = Capped { seen: Mutex::new(0) };
    let mut s = server_settings(100.0, 662);
    s.min_duration = Duration::from_secs(5); // 500 samples at 100/s, 1,000 at 200/s, 2,000 at 400/s
    s.completion_timeout = Duration::from_millis(50);
    s.peak_search_steps = 0;
    let (steps, best) = loadgen::find_peak_with_clock(&sut, &mut Library::new(10, 10), &s, &|| {
        *sut.seen.lock().unwrap() = 0;
        Arc::new(ManualClock::new())
    })
    .unwrap();
    assert!(steps.iter().any(|st| !st.valid && st.p99_ns == u64::MAX), "{steps:?}");
    assert!(best.is_some());
}

#[test]
fn official_settings_follow_current_mlperf_minimums() {
    assert_eq!(TestSettings::official(Scenario::MultiStream).min_query_count, 662);
    assert_eq!(TestSettings::official(Scenario::SingleStream).min_query_count, 64);
    assert_eq!(TestSettings::official(Scenario::Offline).min_query_count, 24_576);
    assert_eq!(TestSettings::official(Scenario::Server).min_duration, Duration::from_secs(600));
}

#[test]
fn the_schedule_stops_at_max_duration() {
    let mut s = server_settings(1.0, 1);
    s.min_duration = Duration::from_secs(100);
    s.max_duration = Some(Duration::from_secs(2));
    assert!(loadgen::poisson_schedule(&s).unwrap().iter().all(|&t| t < 2_000_000_000));
}
