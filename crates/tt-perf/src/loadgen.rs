//! LoadGen: the traffic generator between a benchmark and a system under test, after MLPerf
//! Inference's `loadgen/`. It owns the clock, chooses samples and arrival times from seeds,
//! issues queries in the scenario's pattern, timestamps every completion, and leaves judging to
//! [`crate::results`].
//!
//! The system under test ([`SystemUnderTest`]) receives queries through `issue_query` and answers
//! through a [`Responder`], from any thread and at any later time; it must not block in
//! `issue_query` for longer than it takes to enqueue, since Server latency is counted from each
//! query's *scheduled* arrival (a system that blocks pays its queueing delay, as in MLPerf).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use serde::Serialize;

use crate::clock::{Clock, RealClock};
use crate::{PerfError, Result};

/// The four MLPerf scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scenario {
    /// One sample per query; the next query when the previous completes. Metric: p90 latency.
    SingleStream,
    /// `samples_per_query` samples per query, issued the same way; a query's latency is its
    /// slowest sample's. Metric: p99 query latency.
    MultiStream,
    /// One sample per query, Poisson arrivals at a target rate, no limit on outstanding queries.
    /// Metric: the rate, valid only if the p99 latency is within the bound.
    Server,
    /// One query holding every sample. Metric: samples per second.
    Offline,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SingleStream => "SingleStream",
            Scenario::MultiStream => "MultiStream",
            Scenario::Server => "Server",
            Scenario::Offline => "Offline",
        }
    }
    /// The latency percentile the scenario is judged by.
    pub fn default_percentile(self) -> f64 {
        match self {
            Scenario::SingleStream => 0.90,
            _ => 0.99,
        }
    }
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    PerformanceOnly,
    /// Every sample of the library exactly once; responses kept for the task's metric.
    AccuracyOnly,
    /// Server only: search for the highest target rate whose run is valid ([`find_peak`]).
    FindPeakPerformance,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::PerformanceOnly => "PerformanceOnly",
            Mode::AccuracyOnly => "AccuracyOnly",
            Mode::FindPeakPerformance => "FindPeakPerformance",
        }
    }
}

/// The most samples one run may issue, and the most a library may claim. A larger count is a
/// typo or a hostile library, refused before anything is allocated. This bounds counts (records
/// index samples and queries in `u32`); memory is bounded by [`TestSettings::max_record_bytes`],
/// which at its default admits far fewer samples.
pub const MAX_SAMPLES: u64 = 100_000_000;
const _: () = assert!(MAX_SAMPLES <= u32::MAX as u64);

/// The default of [`TestSettings::max_record_bytes`]: 2 GiB of LoadGen's own bookkeeping, about
/// 16 million samples of a performance run or 13 million of an accuracy run (fewer with large
/// responses) — far beyond any run here, and well within a 24 GB machine with the model beside it.
pub const MAX_RECORD_BYTES: u64 = 2 << 30;

/// FindPeakPerformance bisection steps beyond this cannot move an `f64` rate (each halves the
/// bracket), and each step is a whole run.
pub const MAX_PEAK_SEARCH_STEPS: usize = 64;

/// A duration as the clock's `u64` nanoseconds. One beyond about 584 years does not fit and is
/// refused: truncating it would turn a 584-year minimum into a fraction of a second.
pub(crate) fn duration_ns(field: &'static str, d: Duration) -> Result<u64> {
    u64::try_from(d.as_nanos()).map_err(|_| PerfError::InvalidSetting {
        field,
        reason: format!("{d:?} does not fit the clock's u64 nanoseconds (about 584 years)"),
    })
}

/// `n` if it is within [`MAX_SAMPLES`], else an error naming `field`.
fn within_sample_limit(field: &'static str, n: u64) -> Result<u64> {
    if n > MAX_SAMPLES {
        return Err(PerfError::InvalidSetting {
            field,
            reason: format!(
                "the run would issue {n} samples, above the limit of {MAX_SAMPLES}; lower the rate, duration or query count"
            ),
        });
    }
    Ok(n)
}

/// LoadGen's test settings. [`TestSettings::official`] holds MLPerf's minimums; benchmarks here
/// scale durations down and must say so (the summary prints every setting).
///
/// The fields are public for struct-update syntax; every entry point that reads them
/// ([`start_test`], [`poisson_schedule`], [`find_peak`], [`crate::results::judge`]) runs
/// [`TestSettings::validate`] first, so a field changed after construction is checked at use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestSettings {
    pub scenario: Scenario,
    pub mode: Mode,
    /// A run lasts at least this long…
    pub min_duration: Duration,
    /// …and issues at least this many queries (Offline: samples).
    pub min_query_count: u64,
    /// Stop issuing here even if the minimums are not met (the run is then INVALID). `None`: no cap.
    pub max_duration: Option<Duration>,
    /// Server latency bound, judged at `target_latency_percentile`.
    pub target_latency: Duration,
    pub target_latency_percentile: f64,
    pub server_target_qps: f64,
    /// Offline issues `max(min_query_count, expected_qps · min_duration · 1.1)` samples.
    pub offline_expected_qps: f64,
    pub multi_stream_samples_per_query: usize,
    /// Which samples the library loads for performance runs.
    pub qsl_seed: u64,
    /// Which loaded sample each query takes.
    pub sample_index_seed: u64,
    /// Server arrival times.
    pub schedule_seed: u64,
    /// How long to wait for outstanding responses after the last query before failing the run.
    pub completion_timeout: Duration,
    /// FindPeakPerformance: bisection steps after the valid/invalid bracket is found (at most
    /// [`MAX_PEAK_SEARCH_STEPS`]).
    pub peak_search_steps: usize,
    /// The most bytes a run may retain for its own bookkeeping: a record per issued sample, the
    /// issue and log vectors, the loaded sample set, and (AccuracyOnly) the responses' data as
    /// the allocator holds it. Not the system's or the library's own memory. A run whose
    /// samples cannot fit is refused before allocating; one that grows past it (a SingleStream
    /// run that never reaches `min_duration`, large accuracy responses) stops with
    /// [`PerfError::OverBudget`]. Default [`MAX_RECORD_BYTES`].
    pub max_record_bytes: u64,
}

impl TestSettings {
    /// MLPerf Inference's official rules for a scenario: 600 s, and as many queries as early
    /// stopping needs to claim the percentile (64 for SingleStream's p90, 662 for MultiStream's
    /// and Server's p99 — current `mlperf.conf` sets MultiStream's 662 and leaves the others to
    /// early stopping); Offline at least 24,576 samples.
    pub fn official(scenario: Scenario) -> TestSettings {
        let min_query_count = match scenario {
            Scenario::SingleStream => 64,
            Scenario::MultiStream | Scenario::Server => 662,
            Scenario::Offline => 24_576,
        };
        TestSettings::scaled(scenario, Duration::from_secs(600), min_query_count)
    }

    /// The same rules with a shorter minimum duration and query count (state both when reporting).
    /// Nothing is checked here; [`TestSettings::validate`] is, at every use.
    pub fn scaled(scenario: Scenario, min_duration: Duration, min_query_count: u64) -> TestSettings {
        TestSettings {
            scenario,
            mode: Mode::PerformanceOnly,
            min_duration,
            min_query_count,
            max_duration: None,
            target_latency: Duration::from_millis(100),
            target_latency_percentile: scenario.default_percentile(),
            server_target_qps: 10.0,
            offline_expected_qps: 100.0,
            multi_stream_samples_per_query: 8,
            qsl_seed: 0x5eed_0001,
            sample_index_seed: 0x5eed_0002,
            schedule_seed: 0x5eed_0003,
            completion_timeout: Duration::from_secs(120),
            peak_search_steps: 4,
            max_record_bytes: MAX_RECORD_BYTES,
        }
    }

    /// # Errors
    /// [`PerfError::InvalidSetting`] naming the field: a duration beyond the clock's `u64`
    /// nanoseconds; a percentile outside (0, 1); the scenario's rate not a positive finite
    /// number; no samples per MultiStream query; FindPeakPerformance outside Server; more than
    /// [`MAX_PEAK_SEARCH_STEPS`]; a run that would issue more than [`MAX_SAMPLES`] samples; a
    /// Server schedule that would run past the clock's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(PerfError::InvalidSetting { field, reason });
        let min_ns = duration_ns("min_duration", self.min_duration)?;
        let max_ns = self.max_duration.map(|d| duration_ns("max_duration", d)).transpose()?;
        duration_ns("target_latency", self.target_latency)?;
        duration_ns("completion_timeout", self.completion_timeout)?;
        if !(self.target_latency_percentile > 0.0 && self.target_latency_percentile < 1.0) {
            return bad("target_latency_percentile", format!("{} is outside (0, 1)", self.target_latency_percentile));
        }
        if self.scenario == Scenario::Server && !(self.server_target_qps.is_finite() && self.server_target_qps > 0.0) {
            return bad("server_target_qps", format!("{} must be a positive number", self.server_target_qps));
        }
        if self.scenario == Scenario::Offline
            && !(self.offline_expected_qps.is_finite() && self.offline_expected_qps > 0.0)
        {
            return bad("offline_expected_qps", format!("{} must be a positive number", self.offline_expected_qps));
        }
        if self.scenario == Scenario::MultiStream && self.multi_stream_samples_per_query == 0 {
            return bad("multi_stream_samples_per_query", "must be at least 1".into());
        }
        if self.mode == Mode::FindPeakPerformance && self.scenario != Scenario::Server {
            return bad("mode", format!("FindPeakPerformance applies to Server, not {}", self.scenario.name()));
        }
        if self.peak_search_steps > MAX_PEAK_SEARCH_STEPS {
            return bad(
                "peak_search_steps",
                format!("{} is above the limit of {MAX_PEAK_SEARCH_STEPS}", self.peak_search_steps),
            );
        }
        self.planned_samples()?;
        if self.scenario == Scenario::Server {
            // The schedule runs until both minimums are covered (or max_duration, which ends it
            // on the clock), and holds at least one arrival: the minimum count alone takes
            // max(min_query_count, 1) / rate seconds, which must stay on the clock — and without
            // a max_duration so must a random gap many times the mean (P(gap > 64·mean) = e⁻⁶⁴),
            // or a valid rate could still fail to schedule.
            let mean_gap_ns = 1e9 / self.server_target_qps;
            if max_ns.is_none() && mean_gap_ns * 64.0 >= u64::MAX as f64 {
                return bad(
                    "server_target_qps",
                    format!(
                        "at {}/s one arrival's gap ({:.3e} s on average) is beyond the clock's u64 nanoseconds",
                        self.server_target_qps,
                        mean_gap_ns / 1e9
                    ),
                );
            }
            let by_count_ns = self.min_query_count.max(1) as f64 / self.server_target_qps * 1e9;
            let horizon = by_count_ns.max(min_ns as f64).min(max_ns.map_or(f64::INFINITY, |m| m as f64));
            if horizon.is_nan() || horizon >= u64::MAX as f64 {
                return bad(
                    "server_target_qps",
                    format!(
                        "{} queries at {}/s would take {:.3e} s, beyond the clock's u64 nanoseconds",
                        self.min_query_count,
                        self.server_target_qps,
                        by_count_ns / 1e9
                    ),
                );
            }
        }
        Ok(())
    }

    /// The fewest samples a performance run issues (SingleStream and MultiStream issue more when
    /// the system reaches `min_duration` after `min_query_count`), within [`MAX_SAMPLES`].
    fn planned_samples(&self) -> Result<u64> {
        let queries = within_sample_limit("min_query_count", self.min_query_count.max(1))?;
        match self.scenario {
            Scenario::SingleStream => Ok(queries),
            Scenario::MultiStream => {
                let per_query = self.multi_stream_samples_per_query as u64;
                within_sample_limit("multi_stream_samples_per_query", queries.saturating_mul(per_query))
            }
            Scenario::Server => {
                let by_rate = self.server_target_qps * self.min_duration.as_secs_f64();
                if by_rate.is_nan() || by_rate > MAX_SAMPLES as f64 {
                    return Err(PerfError::InvalidSetting {
                        field: "server_target_qps",
                        reason: format!(
                            "{}/s for {:?} would issue {by_rate:.3e} samples, above the limit of {MAX_SAMPLES}",
                            self.server_target_qps, self.min_duration
                        ),
                    });
                }
                Ok(queries)
            }
            Scenario::Offline => self.offline_sample_count(),
        }
    }

    /// Offline's sample count, `max(min_query_count, ⌈expected_qps · min_duration · 1.1⌉, 1)`,
    /// within [`MAX_SAMPLES`].
    fn offline_sample_count(&self) -> Result<u64> {
        // The relative nudge keeps 500 · 0.1 · 1.1 = 55.000000000000007 at 55.
        let by_rate = (self.offline_expected_qps * self.min_duration.as_secs_f64() * 1.1 * (1.0 - 1e-12)).ceil();
        if by_rate.is_nan() || by_rate > MAX_SAMPLES as f64 {
            return Err(PerfError::InvalidSetting {
                field: "offline_expected_qps",
                reason: format!(
                    "{}/s for {:?} would issue {by_rate:.3e} samples, above the limit of {MAX_SAMPLES}",
                    self.offline_expected_qps, self.min_duration
                ),
            });
        }
        // An integer within [0, MAX_SAMPLES] (negative rates were refused): converted exactly.
        let n = (by_rate.max(0.0) as u64).max(self.min_query_count).max(1);
        within_sample_limit("min_query_count", n)
    }
}

/// One sample of a query: `id` identifies the response, `index` the library's sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuerySample {
    pub id: u64,
    pub index: usize,
}

/// The system's answer to one sample. `data` is what the accuracy metric reads (a class id, an
/// answer's bytes); `tokens` the number of output tokens for generative systems.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuerySampleResponse {
    pub id: u64,
    pub data: Vec<u8>,
    pub tokens: Option<u32>,
}

/// The samples a benchmark can draw on (MLPerf's QSL). LoadGen loads a performance set before a
/// performance run and every sample, chunk by chunk, for an accuracy run.
pub trait QuerySampleLibrary {
    fn name(&self) -> String;
    fn total_sample_count(&self) -> usize;
    /// How many samples fit in memory at once.
    fn performance_sample_count(&self) -> usize;
    /// # Errors
    /// The library's own (a bad index, a failed read).
    fn load_samples(&mut self, indices: &[usize]) -> Result<()>;
    /// # Errors
    /// The library's own.
    fn unload_samples(&mut self, indices: &[usize]) -> Result<()>;
}

/// The system under test.
pub trait SystemUnderTest: Send + Sync {
    fn name(&self) -> String;
    /// Take the samples and answer each through `responder`, now or later, from any thread.
    fn issue_query(&self, samples: &[QuerySample], responder: &Responder);
    /// No more queries are coming: run whatever is batched.
    fn flush_queries(&self) {}
}

/// One issued sample. Indices and query numbers are below [`MAX_SAMPLES`], so `u32`; response
/// data lives in [`Ledger::accuracy`], only for accuracy runs.
#[derive(Debug, Clone, Default)]
struct Record {
    scheduled_ns: u64,
    done_ns: Option<u64>,
    first_token_ns: Option<u64>,
    tokens: Option<u32>,
    index: u32,
    query: u32,
}

/// Why a run stops, recorded by whichever thread finds it and reported by the issuer.
#[derive(Debug, Clone)]
enum Fault {
    Sut(String),
    OverBudget { what: &'static str, samples: u64, bytes: u128, limit: u64 },
}

impl Fault {
    fn error(&self) -> PerfError {
        match self {
            Fault::Sut(e) => PerfError::Sut(e.clone()),
            &Fault::OverBudget { what, samples, bytes, limit } => {
                PerfError::OverBudget { what: what.into(), samples, bytes, limit }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Ledger {
    records: Vec<Record>,
    /// AccuracyOnly: `(sample index, response data)` per record, in issue order.
    accuracy: Vec<(usize, Vec<u8>)>,
    completed: usize,
    /// Response data retained so far, as [`heap_bytes`] counts it.
    data_bytes: u64,
    fault: Option<Fault>,
}

/// What a run may retain ([`TestSettings::max_record_bytes`]) and what it costs: an upper
/// estimate per issued sample plus a fixed part for the loaded sample set.
#[derive(Debug, Clone, Copy)]
struct Budget {
    limit: u64,
    per_sample: u64,
    fixed: u128,
}

impl Budget {
    /// The budget of a run of `settings` that loads `loaded` of a library's `total` samples at
    /// a time.
    fn new(settings: &TestSettings, total: usize, loaded: usize) -> Budget {
        use std::mem::size_of;
        let accuracy = settings.mode == Mode::AccuracyOnly;
        // The run log's four latency vectors (sample, query, first token, per output token).
        let log = 4 * size_of::<u64>();
        // While issuing: the chosen library index, the QuerySample handed to the system and a
        // Server arrival time, whose growing vector may hold up to twice its length.
        let issue = size_of::<usize>() + size_of::<QuerySample>() + 2 * size_of::<u64>();
        let entry = if accuracy { size_of::<(usize, Vec<u8>)>() } else { 0 };
        let per_sample = (size_of::<Record>() + log + issue + entry) as u64;
        // The loaded indices, and rand's `index::sample` choosing them: it holds up to the
        // library's length in u32s when that is under about 37 times the amount chosen (and
        // under 2 MB when the factor is larger, for lengths below 500,000).
        let (total, loaded) = (total as u128, loaded as u128);
        let fixed = loaded * size_of::<usize>() as u128 + total.min(37 * loaded) * size_of::<u32>() as u128;
        Budget { limit: settings.max_record_bytes, per_sample, fixed }
    }

    fn bytes(&self, samples: u64) -> u128 {
        self.fixed + u128::from(samples) * u128::from(self.per_sample)
    }

    /// # Errors
    /// [`PerfError::OverBudget`] if `samples` cannot fit, naming `what`.
    fn check(&self, what: &str, samples: u64) -> Result<()> {
        let bytes = self.bytes(samples);
        if bytes > u128::from(self.limit) {
            return Err(PerfError::OverBudget { what: what.into(), samples, bytes, limit: self.limit });
        }
        Ok(())
    }

    /// The most samples that fit, and whether the budget (rather than [`MAX_SAMPLES`]) binds.
    fn sample_capacity(&self) -> (u64, bool) {
        let by_budget = (u128::from(self.limit).saturating_sub(self.fixed) / u128::from(self.per_sample))
            .try_into()
            .unwrap_or(u64::MAX);
        (by_budget.min(MAX_SAMPLES), by_budget < MAX_SAMPLES)
    }
}

/// The heap a `Vec<u8>` of `len` bytes holds: its bytes rounded up to 16, plus the
/// allocator's 16-byte header — a 1-byte response costs 32 bytes, which a count of response
/// bytes alone would miss by 32 times. Empty vectors allocate nothing.
fn heap_bytes(len: usize) -> u64 {
    if len == 0 {
        0
    } else {
        (len as u64).saturating_add(15) / 16 * 16 + 16
    }
}

/// Room for `additional` more items in `v`, or [`PerfError::Alloc`] naming `what`.
fn try_reserve<T>(v: &mut Vec<T>, additional: usize, what: &'static str) -> Result<()> {
    v.try_reserve_exact(additional).map_err(|_| PerfError::Alloc {
        what,
        bytes: (v.len() as u128 + additional as u128) * std::mem::size_of::<T>() as u128,
    })
}

/// AccuracyOnly: where response data may go. `base` is what the run's records take.
#[derive(Debug, Clone, Copy)]
struct DataBudget {
    base: u128,
    limit: u64,
}

#[derive(Debug)]
struct Shared {
    ledger: Mutex<Ledger>,
    changed: Condvar,
    clock: Arc<dyn Clock>,
    /// `Some` in accuracy runs, which keep every response's data.
    keep_data: Option<DataBudget>,
}

impl std::fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock(now {} ns)", self.now_ns())
    }
}

/// How a system reports completions; cheap to clone and send to worker threads.
#[derive(Debug, Clone)]
pub struct Responder {
    shared: Arc<Shared>,
}

impl Responder {
    /// The samples are answered; their latency ends now.
    pub fn complete(&self, responses: &[QuerySampleResponse]) {
        self.complete_at(responses, self.shared.clock.now_ns());
    }

    /// The samples were answered at `at_ns` on the run's clock — for systems that timestamp
    /// their own completions (a simulated system in tests, hardware timestamps). Real systems
    /// call [`Responder::complete`].
    pub fn complete_at(&self, responses: &[QuerySampleResponse], at_ns: u64) {
        let now = at_ns;
        let mut guard = self.shared.ledger.lock().expect("ledger lock");
        let l = &mut *guard;
        for r in responses {
            let Some((i, rec)) = usize::try_from(r.id).ok().and_then(|i| Some(i).zip(l.records.get_mut(i))) else {
                l.fault.get_or_insert(Fault::Sut(format!("response for unknown id {}", r.id)));
                continue;
            };
            if rec.done_ns.is_some() {
                l.fault.get_or_insert(Fault::Sut(format!("second response for id {}", r.id)));
                continue;
            }
            rec.done_ns = Some(now);
            rec.tokens = r.tokens;
            l.completed += 1;
            // Once the run is stopping, nothing more is kept: the issuer reports the fault.
            if let (Some(b), None) = (self.shared.keep_data, &l.fault) {
                let data_bytes = l.data_bytes.saturating_add(heap_bytes(r.data.len()));
                let bytes = b.base + u128::from(data_bytes);
                if bytes > u128::from(b.limit) {
                    l.fault = Some(Fault::OverBudget {
                        what: "the accuracy run's responses",
                        samples: l.completed as u64,
                        bytes,
                        limit: b.limit,
                    });
                    continue;
                }
                l.data_bytes = data_bytes;
                if let Some(entry) = l.accuracy.get_mut(i) {
                    entry.1 = r.data.clone();
                }
            }
        }
        drop(guard);
        self.shared.changed.notify_all();
    }

    /// The first output token of sample `id` exists (time to first token ends now).
    pub fn first_token(&self, id: u64) {
        let now = self.shared.clock.now_ns();
        let mut l = self.shared.ledger.lock().expect("ledger lock");
        match usize::try_from(id).ok().and_then(|i| l.records.get_mut(i)) {
            Some(rec) => {
                rec.first_token_ns.get_or_insert(now);
            }
            None => {
                l.fault.get_or_insert(Fault::Sut(format!("first token for unknown id {id}")));
            }
        }
    }

    /// The clock latencies are measured on (for systems that report their own phases).
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }
}

/// Everything a run measured, before judging.
#[derive(Debug, Clone, Serialize)]
pub struct RunLog {
    pub sut_name: String,
    pub qsl_name: String,
    pub settings: TestSettings,
    pub queries_issued: u64,
    /// Per sample, in issue order: completion − scheduled arrival.
    pub sample_latencies_ns: Vec<u64>,
    /// Per query (MultiStream: its slowest sample; otherwise equal to the sample's).
    pub query_latencies_ns: Vec<u64>,
    /// Per sample that reported a first token: first token − scheduled arrival.
    pub first_token_ns: Vec<u64>,
    /// Per sample with ≥ 2 tokens: (completion − first token) / (tokens − 1).
    pub time_per_output_token_ns: Vec<u64>,
    pub tokens: u64,
    /// When the last query was issued (SingleStream, MultiStream) or scheduled (Server).
    pub final_query_issued_ns: u64,
    pub final_query_scheduled_ns: u64,
    /// When the last sample completed.
    pub final_completion_ns: u64,
    /// AccuracyOnly: `(sample index, response data)` for every sample, by index.
    #[serde(skip)]
    pub accuracy: Vec<(usize, Vec<u8>)>,
}

/// Run one test: load samples, issue queries per the scenario, wait for every response.
///
/// # Errors
/// Invalid settings ([`TestSettings::validate`]); an empty library, or one claiming more than
/// [`MAX_SAMPLES`] samples ([`PerfError::TooLarge`], before anything is allocated); a run whose
/// samples (every library sample for AccuracyOnly, the settings' minimum or the Server
/// schedule otherwise) cannot fit [`TestSettings::max_record_bytes`] ([`PerfError::OverBudget`],
/// before allocating them); a SingleStream or MultiStream run reaching that budget or
/// [`MAX_SAMPLES`] before its minimum duration, or accuracy responses outgrowing the budget
/// ([`PerfError::OverBudget`], the run stopped); the allocator refusing memory within the budget
/// ([`PerfError::Alloc`]); the system answering an unknown id, twice, or not at all within
/// `completion_timeout`; the library's own load errors.
pub fn start_test(
    sut: &dyn SystemUnderTest,
    qsl: &mut dyn QuerySampleLibrary,
    settings: &TestSettings,
) -> Result<RunLog> {
    start_test_with_clock(sut, qsl, settings, Arc::new(RealClock::new()))
}

/// A library's claimed count, refused above [`MAX_SAMPLES`]: it sizes the sample choice and,
/// for accuracy runs, one record per sample.
fn library_count(qsl: &dyn QuerySampleLibrary, what: &str, n: usize) -> Result<usize> {
    if n as u128 > u128::from(MAX_SAMPLES) {
        return Err(PerfError::TooLarge {
            what: format!("library {}'s {what}", qsl.name()),
            count: n as u128,
            limit: MAX_SAMPLES,
        });
    }
    Ok(n)
}

/// [`start_test`] on a given clock (tests use a [`crate::clock::ManualClock`]).
///
/// # Errors
/// As [`start_test`].
pub fn start_test_with_clock(
    sut: &dyn SystemUnderTest,
    qsl: &mut dyn QuerySampleLibrary,
    settings: &TestSettings,
    clock: Arc<dyn Clock>,
) -> Result<RunLog> {
    settings.validate()?;
    let total = library_count(qsl, "total_sample_count", qsl.total_sample_count())?;
    let perf = library_count(qsl, "performance_sample_count", qsl.performance_sample_count())?.min(total);
    if total == 0 || perf == 0 {
        return Err(PerfError::Settings(format!("library {} has no samples to issue", qsl.name())));
    }
    let accuracy = settings.mode == Mode::AccuracyOnly;
    let budget = Budget::new(settings, total, perf);
    // The fewest samples the run issues: every sample once, or the settings' minimum.
    let planned = if accuracy { total as u64 } else { settings.planned_samples()? };
    let what = format!("the {} {} run of library {}", settings.scenario.name(), settings.mode.name(), qsl.name());
    budget.check(&what, planned)?;
    let mut ledger = Ledger::default();
    // Within MAX_SAMPLES, so within usize.
    try_reserve(&mut ledger.records, planned as usize, "the run's records")?;
    if accuracy {
        try_reserve(&mut ledger.accuracy, total, "the accuracy log")?;
    }
    let shared = Arc::new(Shared {
        ledger: Mutex::new(ledger),
        changed: Condvar::new(),
        clock: clock.clone(),
        keep_data: accuracy.then(|| DataBudget { base: budget.bytes(planned), limit: budget.limit }),
    });
    let responder = Responder { shared: shared.clone() };
    let mut run = Issuer {
        sut,
        settings,
        min_ns: duration_ns("min_duration", settings.min_duration)?,
        max_ns: settings.max_duration.map(|d| duration_ns("max_duration", d)).transpose()?,
        shared: &shared,
        responder: &responder,
        budget,
        queries: 0,
        final_issue: 0,
        start: None,
    };
    if accuracy {
        for first in (0..total).step_by(perf) {
            let mut chunk = Vec::new();
            try_reserve(&mut chunk, perf, "an accuracy chunk's indices")?;
            chunk.extend(first..total.min(first + perf));
            qsl.load_samples(&chunk)?;
            let issued = run.accuracy_chunk(&chunk);
            qsl.unload_samples(&chunk)?;
            issued?;
        }
    } else {
        // The performance set: a seeded choice of `perf` distinct samples, as LoadGen makes.
        let mut rng = ChaCha8Rng::seed_from_u64(settings.qsl_seed);
        let loaded = rand::seq::index::sample(&mut rng, total, perf).into_vec();
        qsl.load_samples(&loaded)?;
        let issued = run.performance(&loaded);
        qsl.unload_samples(&loaded)?;
        issued?;
    }
    // Times count from the first issue, after the samples are loaded: loading is not the run.
    let (queries, final_issue, run_start) = (run.queries, run.final_issue, run.start.unwrap_or(0));
    // Taken, not cloned: the records and responses are freed as the log is built.
    let l = std::mem::take(&mut *shared.ledger.lock().expect("ledger lock"));
    collect(sut, qsl, settings, l, queries, final_issue, run_start)
}

struct Issuer<'a> {
    sut: &'a dyn SystemUnderTest,
    settings: &'a TestSettings,
    /// `settings.min_duration` and `max_duration` in the clock's nanoseconds.
    min_ns: u64,
    max_ns: Option<u64>,
    shared: &'a Arc<Shared>,
    responder: &'a Responder,
    budget: Budget,
    queries: usize,
    final_issue: u64,
    /// When issuing began (after the first load).
    start: Option<u64>,
}

impl Issuer<'_> {
    fn now(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// Appends records for one query; returns their samples. The caller has kept the run's
    /// samples within the budget's capacity, so the records never grow past it.
    ///
    /// # Errors
    /// A fault already recorded (the run stops issuing); the allocator refusing the records.
    fn register(&mut self, indices: &[usize], scheduled_ns: u64) -> Result<Vec<QuerySample>> {
        let mut guard = self.shared.ledger.lock().expect("ledger lock");
        let l = &mut *guard;
        if let Some(f) = &l.fault {
            return Err(f.error());
        }
        let len = l.records.len();
        if l.records.capacity() - len < indices.len() {
            // Doubling, but never past what the budget admits.
            let cap = usize::try_from(self.budget.sample_capacity().0).unwrap_or(usize::MAX);
            let want = (2 * l.records.capacity()).min(cap).max(len + indices.len());
            try_reserve(&mut l.records, want - len, "the run's records")?;
        }
        // Indices are below the library's count and queries below its samples, both within
        // MAX_SAMPLES, which fits u32.
        let query = self.queries as u32;
        l.records.extend(indices.iter().map(|&index| Record {
            index: index as u32,
            query,
            scheduled_ns,
            ..Record::default()
        }));
        if self.shared.keep_data.is_some() {
            try_reserve(&mut l.accuracy, indices.len(), "the accuracy log")?;
            l.accuracy.extend(indices.iter().map(|&index| (index, Vec::new())));
        }
        self.queries += 1;
        let mut samples = Vec::new();
        try_reserve(&mut samples, indices.len(), "a query's samples")?;
        samples.extend(indices.iter().enumerate().map(|(k, &index)| QuerySample { id: (len + k) as u64, index }));
        Ok(samples)
    }

    fn issue(&mut self, indices: &[usize], scheduled_ns: u64) -> Result<usize> {
        let samples = self.register(indices, scheduled_ns)?;
        self.final_issue = self.now();
        self.sut.issue_query(&samples, self.responder);
        Ok(samples.len())
    }

    /// Blocks until `n` records are complete (or the timeout passes, or the system misbehaved).
    fn wait_completed(&self, n: usize) -> Result<()> {
        let timeout = self.settings.completion_timeout;
        let deadline = std::time::Instant::now().checked_add(timeout).ok_or_else(|| PerfError::InvalidSetting {
            field: "completion_timeout",
            reason: format!("{timeout:?} from now is beyond the system clock's range"),
        })?;
        let mut l = self.shared.ledger.lock().expect("ledger lock");
        loop {
            if let Some(f) = &l.fault {
                return Err(f.error());
            }
            if l.completed >= n {
                return Ok(());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(PerfError::Timeout(format!(
                    "{} of {n} responses missing after {timeout:?}",
                    n - l.completed
                )));
            }
            l = self.shared.changed.wait_timeout(l, deadline - now).expect("ledger lock").0;
        }
    }

    /// Judged on the last *issue* time, as the validity rule is: stopping when the clock passes
    /// the minimum would leave the last issue before it.
    fn minimums_met(&self, start: u64) -> bool {
        self.queries > 0
            && self.final_issue.saturating_sub(start) >= self.min_ns
            && self.queries as u64 >= self.settings.min_query_count
    }

    fn over_max(&self, start: u64) -> bool {
        // Saturating: a `Clock` is the caller's and may step backwards.
        self.max_ns.is_some_and(|m| self.now().saturating_sub(start) >= m)
    }

    fn performance(&mut self, loaded: &[usize]) -> Result<()> {
        let s = self.settings;
        let mut pick = ChaCha8Rng::seed_from_u64(s.sample_index_seed);
        let mut choose = |n: usize| -> Result<Vec<usize>> {
            let mut v = Vec::new();
            try_reserve(&mut v, n, "the chosen sample indices")?;
            v.extend((0..n).map(|_| loaded[pick.random_range(0..loaded.len())]));
            Ok(v)
        };
        let start = self.now();
        self.start.get_or_insert(start);
        match s.scenario {
            Scenario::SingleStream | Scenario::MultiStream => {
                let per_query = if s.scenario == Scenario::SingleStream { 1 } else { s.multi_stream_samples_per_query };
                let (capacity, by_budget) = self.budget.sample_capacity();
                let mut issued = 0usize;
                while !self.minimums_met(start) && !self.over_max(start) {
                    // A fast system under a long minimum duration would otherwise grow the
                    // records without bound; validate() keeps per_query within MAX_SAMPLES.
                    let next = (issued + per_query) as u64;
                    if next > capacity && by_budget {
                        return Err(PerfError::OverBudget {
                            what: format!(
                                "the {} run, still short of its min_duration {:?} (set max_duration or lower min_duration)",
                                s.scenario.name(),
                                s.min_duration
                            ),
                            samples: next,
                            bytes: self.budget.bytes(next),
                            limit: self.budget.limit,
                        });
                    }
                    if next > capacity {
                        return Err(PerfError::InvalidSetting {
                            field: "min_duration",
                            reason: format!(
                                "the run reached the limit of {MAX_SAMPLES} samples before {:?}; set max_duration or lower min_duration",
                                s.min_duration
                            ),
                        });
                    }
                    let idx = choose(per_query)?;
                    let t = self.now();
                    issued += self.issue(&idx, t)?;
                    self.wait_completed(issued)?;
                }
                self.sut.flush_queries();
            }
            Scenario::Server => {
                let times = poisson_schedule(s)?;
                self.budget.check("the Server schedule", times.len() as u64)?;
                let idx = choose(times.len())?;
                let mut l = self.shared.ledger.lock().expect("ledger lock");
                let more = times.len().saturating_sub(l.records.len());
                try_reserve(&mut l.records, more, "the run's records")?;
                drop(l);
                for (k, &at) in times.iter().enumerate() {
                    let due = start.checked_add(at).ok_or_else(|| PerfError::InvalidSetting {
                        field: "min_duration",
                        reason: format!(
                            "arrival {at} ns after a start at {start} ns passes the clock's u64 nanoseconds"
                        ),
                    })?;
                    self.shared.clock.sleep_until_ns(due);
                    self.issue(&idx[k..k + 1], due)?;
                }
                self.sut.flush_queries();
                self.wait_completed(times.len())?;
            }
            Scenario::Offline => {
                // Within MAX_SAMPLES, so it fits usize.
                let n = s.offline_sample_count()? as usize;
                let idx = choose(n)?;
                self.issue(&idx, start)?;
                self.sut.flush_queries();
                self.wait_completed(idx.len())?;
            }
        }
        Ok(())
    }

    fn accuracy_chunk(&mut self, chunk: &[usize]) -> Result<()> {
        let per_query = match self.settings.scenario {
            Scenario::SingleStream => 1,
            Scenario::MultiStream => self.settings.multi_stream_samples_per_query,
            // Server queries hold one sample each, as in LoadGen; they are issued back to back.
            Scenario::Server => 1,
            Scenario::Offline => chunk.len(),
        };
        let sequential = matches!(self.settings.scenario, Scenario::SingleStream | Scenario::MultiStream);
        let mut issued = self.shared.ledger.lock().expect("ledger lock").records.len();
        let now = self.now();
        self.start.get_or_insert(now);
        for q in chunk.chunks(per_query) {
            let t = self.now();
            issued += self.issue(q, t)?;
            if sequential {
                self.wait_completed(issued)?;
            }
        }
        self.sut.flush_queries();
        self.wait_completed(issued)
    }
}

fn collect(
    sut: &dyn SystemUnderTest,
    qsl: &dyn QuerySampleLibrary,
    settings: &TestSettings,
    l: Ledger,
    queries: usize,
    final_issue: u64,
    start: u64,
) -> Result<RunLog> {
    if let Some(f) = &l.fault {
        return Err(f.error());
    }
    // Sized exactly (counted first) and fallibly: these are the budget's log vectors.
    let with_first_token = l.records.iter().filter(|r| r.first_token_ns.is_some()).count();
    let with_tokens =
        l.records.iter().filter(|r| r.first_token_ns.is_some() && r.tokens.is_some_and(|n| n >= 2)).count();
    let mut sample_latencies_ns = Vec::new();
    try_reserve(&mut sample_latencies_ns, l.records.len(), "the sample latencies")?;
    let mut query_latencies_ns = Vec::new();
    try_reserve(&mut query_latencies_ns, queries, "the query latencies")?;
    query_latencies_ns.resize(queries, 0u64);
    let (mut first_token_ns, mut time_per_output_token_ns) = (Vec::new(), Vec::new());
    try_reserve(&mut first_token_ns, with_first_token, "the first-token latencies")?;
    try_reserve(&mut time_per_output_token_ns, with_tokens, "the per-token latencies")?;
    let (mut tokens, mut final_completion_ns, mut final_scheduled) = (0u64, 0u64, 0u64);
    for r in &l.records {
        let done = r.done_ns.ok_or_else(|| PerfError::Sut(format!("sample {} never answered", r.index)))?;
        let lat = done.saturating_sub(r.scheduled_ns);
        sample_latencies_ns.push(lat);
        let q = &mut query_latencies_ns[r.query as usize];
        *q = (*q).max(lat);
        final_completion_ns = final_completion_ns.max(done);
        final_scheduled = final_scheduled.max(r.scheduled_ns);
        if let Some(ft) = r.first_token_ns {
            first_token_ns.push(ft.saturating_sub(r.scheduled_ns));
            if let Some(n) = r.tokens.filter(|&n| n >= 2) {
                time_per_output_token_ns.push(done.saturating_sub(ft) / (u64::from(n) - 1));
            }
        }
        tokens += u64::from(r.tokens.unwrap_or(0));
    }
    drop(l.records);
    let mut accuracy = l.accuracy;
    // Every index once, so unstable is stable, and it sorts in place.
    accuracy.sort_unstable_by_key(|a| a.0);
    Ok(RunLog {
        sut_name: sut.name(),
        qsl_name: qsl.name(),
        settings: settings.clone(),
        queries_issued: queries as u64,
        sample_latencies_ns,
        query_latencies_ns,
        first_token_ns,
        time_per_output_token_ns,
        tokens,
        final_query_issued_ns: final_issue.saturating_sub(start),
        final_query_scheduled_ns: final_scheduled.saturating_sub(start),
        final_completion_ns: final_completion_ns.saturating_sub(start),
        accuracy,
    })
}

/// Server arrival offsets in ns from the run's start: seeded exponential gaps at
/// `server_target_qps`, generated until both the minimum duration and the minimum count are
/// covered (as LoadGen generates the whole schedule up front), stopped at `max_duration`.
///
/// # Errors
/// Invalid settings ([`TestSettings::validate`]); a schedule that, by the draw of its gaps,
/// would pass [`MAX_SAMPLES`] arrivals or the clock's `u64` nanoseconds; one whose run could not
/// fit [`TestSettings::max_record_bytes`] ([`PerfError::OverBudget`], stopped when it gets
/// there).
pub fn poisson_schedule(s: &TestSettings) -> Result<Vec<u64>> {
    s.validate()?;
    // The run's records before any library is loaded: a schedule the run could not hold is
    // refused as it reaches that length, not after.
    let budget = Budget::new(s, 0, 0);
    let (capacity, by_budget) = budget.sample_capacity();
    let gap = Exp::new(s.server_target_qps)
        .map_err(|e| PerfError::InvalidSetting { field: "server_target_qps", reason: e.to_string() })?;
    let mut sched = ChaCha8Rng::seed_from_u64(s.schedule_seed);
    let min_ns = duration_ns("min_duration", s.min_duration)? as f64;
    let cap_ns = s.max_duration.map(|m| duration_ns("max_duration", m)).transpose()?.map(|c| c as f64);
    let mut times = Vec::new();
    let mut t = 0.0f64;
    // Every pass pushes one arrival or stops, and the pushes are capped: the loop ends.
    while t < min_ns || (times.len() as u64) < s.min_query_count {
        t += gap.sample(&mut sched) * 1e9;
        if cap_ns.is_some_and(|c| t >= c) {
            break;
        }
        if t.is_nan() || t >= u64::MAX as f64 {
            return Err(PerfError::InvalidSetting {
                field: "server_target_qps",
                reason: format!(
                    "at {}/s the schedule passes the clock's u64 nanoseconds after {} arrivals",
                    s.server_target_qps,
                    times.len()
                ),
            });
        }
        let next = times.len() as u64 + 1;
        if next > capacity && by_budget {
            return Err(PerfError::OverBudget {
                what: format!("the Server schedule at {}/s covering {:?}", s.server_target_qps, s.min_duration),
                samples: next,
                bytes: budget.bytes(next),
                limit: budget.limit,
            });
        }
        if next > capacity {
            return Err(PerfError::InvalidSetting {
                field: "server_target_qps",
                reason: format!(
                    "at {}/s the schedule passes the limit of {MAX_SAMPLES} arrivals before covering {:?}",
                    s.server_target_qps, s.min_duration
                ),
            });
        }
        if times.len() == times.capacity() {
            // Doubling, but never past the run's capacity; within MAX_SAMPLES, so usize.
            let more = times.len().max(1024).min(capacity as usize - times.len());
            try_reserve(&mut times, more, "the Server schedule")?;
        }
        // Within u64 (checked above); the sub-nanosecond fraction is dropped.
        times.push(t as u64);
    }
    Ok(times)
}

/// One Server run of a peak search.
#[derive(Debug, Clone, Serialize)]
pub struct PeakStep {
    pub target_qps: f64,
    pub valid: bool,
    pub p99_ns: u64,
}

/// FindPeakPerformance: the highest Server target rate whose run is VALID, found by doubling (at
/// most 8 times, and never past a rate whose settings are invalid or whose run cannot fit
/// [`TestSettings::max_record_bytes`]) or halving (at most 4 times)
/// from `server_target_qps` to bracket it, then bisecting `peak_search_steps` times. Every loop
/// is bounded by those counts, so the search ends whatever the system does.
/// Returns every step and the judged result of the best valid run (if any).
///
/// # Errors
/// As [`start_test`]; settings that are not Server, or invalid ([`TestSettings::validate`]).
pub fn find_peak(
    sut: &dyn SystemUnderTest,
    qsl: &mut dyn QuerySampleLibrary,
    settings: &TestSettings,
) -> Result<(Vec<PeakStep>, Option<crate::results::Judged>)> {
    find_peak_with_clock(sut, qsl, settings, &|| Arc::new(RealClock::new()))
}

/// [`find_peak`] with a fresh clock from `clock` for every run.
///
/// # Errors
/// As [`find_peak`].
pub fn find_peak_with_clock(
    sut: &dyn SystemUnderTest,
    qsl: &mut dyn QuerySampleLibrary,
    settings: &TestSettings,
    clock: &dyn Fn() -> Arc<dyn Clock>,
) -> Result<(Vec<PeakStep>, Option<crate::results::Judged>)> {
    if settings.scenario != Scenario::Server {
        return Err(PerfError::InvalidSetting {
            field: "scenario",
            reason: format!("FindPeakPerformance applies to Server, not {}", settings.scenario.name()),
        });
    }
    let at = |qps: f64| TestSettings { server_target_qps: qps, mode: Mode::PerformanceOnly, ..settings.clone() };
    at(settings.server_target_qps).validate()?;
    let mut steps = Vec::new();
    let mut best: Option<crate::results::Judged> = None;
    let mut try_qps = |qps: f64, qsl: &mut dyn QuerySampleLibrary| -> Result<bool> {
        // A rate the system cannot keep up with may not finish within the completion timeout:
        // that rate is invalid, not the search.
        let j = match start_test_with_clock(sut, qsl, &at(qps), clock()) {
            Ok(log) => crate::results::judge(log)?,
            Err(PerfError::Timeout(_)) => {
                steps.push(PeakStep { target_qps: qps, valid: false, p99_ns: u64::MAX });
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        steps.push(PeakStep { target_qps: qps, valid: j.valid, p99_ns: j.target_percentile_ns });
        let valid = j.valid;
        if valid && best.as_ref().is_none_or(|b| b.log.settings.server_target_qps < qps) {
            best = Some(j);
        }
        Ok(valid)
    };
    let q0 = settings.server_target_qps;
    let (mut lo, mut hi) = if try_qps(q0, qsl)? {
        let mut lo = q0;
        let mut hi = None;
        for _ in 0..8 {
            // A doubled rate can pass MAX_SAMPLES (or infinity): the search stops below it.
            if at(lo * 2.0).validate().is_err() {
                break;
            }
            match try_qps(lo * 2.0, qsl) {
                Ok(true) => lo *= 2.0,
                Ok(false) => {
                    hi = Some(lo * 2.0);
                    break;
                }
                // A rate whose run cannot fit the memory budget is not tried: the search stays
                // below it, as below an invalid setting.
                Err(PerfError::OverBudget { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        (Some(lo), hi)
    } else {
        let mut hi = q0;
        let mut lo = None;
        // Each halving doubles the run's length (min_query_count / rate): four at most.
        for _ in 0..4 {
            if at(hi / 2.0).validate().is_err() {
                break;
            }
            if try_qps(hi / 2.0, qsl)? {
                lo = Some(hi / 2.0);
                break;
            }
            hi /= 2.0;
        }
        (lo, Some(hi))
    };
    if let (Some(l), Some(h)) = (lo.as_mut(), hi.as_mut()) {
        for _ in 0..settings.peak_search_steps {
            let mid = 0.5 * (*l + *h);
            if try_qps(mid, qsl)? {
                *l = mid;
            } else {
                *h = mid;
            }
        }
    }
    Ok((steps, best))
}
