//! TorchPerf (course module 19): benchmarking by MLPerf Inference's rules.
//!
//! - [`loadgen`]: the System Under Test and Query Sample Library traits, the four scenarios
//!   (SingleStream, MultiStream, Server, Offline) and three modes, seeded sample choice and
//!   Poisson schedules, completion timestamps.
//! - [`results`]: validity (min duration, min queries, the latency bound, early stopping — each
//!   failed rule named) and the logs: `mlperf_log_summary.txt` and a JSON detail file.
//! - [`stats`]: MLPerf percentiles (no interpolation), criterion-style summaries, bootstrap CIs,
//!   Tukey outlier labels. [`early_stopping`]: the binomial criterion via `statrs`.
//! - [`ablation`]: factors × levels, main effects, interactions, Pareto front, the walk.
//! - [`http`]: LoadGen over the network — a system under test that is a streaming HTTP client of
//!   any OpenAI-compatible `/v1/completions` endpoint, with a library of text prompts.
//!
//! Memory is bounded by design: a run retains at most `TestSettings::max_record_bytes` (default
//! [`loadgen::MAX_RECORD_BYTES`], 2 GiB) of its own records, logs and kept responses. A run whose
//! samples cannot fit is refused before allocating ([`PerfError::OverBudget`]); one that outgrows
//! it stops with that error; the allocator refusing within it is [`PerfError::Alloc`], not an
//! abort. Counts are capped separately at [`loadgen::MAX_SAMPLES`].
//!
//! What it deliberately does not do: know any model. Systems under test live with their models
//! (the course's are in `milestones::torchperf`); this crate depends on nothing of the course, so
//! a practitioner can benchmark their own system with it. It measures no energy.
//!
//! ```
//! use std::time::Duration;
//! use tt_perf::loadgen::{self, QuerySample, QuerySampleLibrary, QuerySampleResponse, Responder, Scenario, SystemUnderTest, TestSettings};
//!
//! struct Echo;
//! impl SystemUnderTest for Echo {
//!     fn name(&self) -> String { "echo".into() }
//!     fn issue_query(&self, samples: &[QuerySample], done: &Responder) {
//!         let r: Vec<_> = samples.iter().map(|s| QuerySampleResponse { id: s.id, data: vec![s.index as u8], tokens: None }).collect();
//!         done.complete(&r);
//!     }
//! }
//! struct Ten;
//! impl QuerySampleLibrary for Ten {
//!     fn name(&self) -> String { "ten".into() }
//!     fn total_sample_count(&self) -> usize { 10 }
//!     fn performance_sample_count(&self) -> usize { 10 }
//!     fn load_samples(&mut self, _: &[usize]) -> tt_perf::Result<()> { Ok(()) }
//!     fn unload_samples(&mut self, _: &[usize]) -> tt_perf::Result<()> { Ok(()) }
//! }
//! let settings = TestSettings::scaled(Scenario::SingleStream, Duration::from_millis(10), 64);
//! let judged = tt_perf::results::judge(loadgen::start_test(&Echo, &mut Ten, &settings)?)?;
//! assert!(judged.valid, "{:?}", judged.failed_rules);
//! assert!(judged.summary_text().contains("Result is : VALID"));
//! # Ok::<(), tt_perf::PerfError>(())
//! ```

pub mod ablation;
pub mod clock;
pub mod early_stopping;
mod error;
pub mod http;
pub mod loadgen;
pub mod results;
pub mod stats;

pub use error::{PerfError, Result};
