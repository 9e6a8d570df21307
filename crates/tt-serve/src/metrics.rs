//! The server's Prometheus metrics, through the `metrics` facade and its Prometheus exporter
//! (rendered by our `/metrics` route; the exporter runs no listener of its own).
//!
//! The recorder is process-wide (the facade has one global recorder): several servers in one
//! process, as in the tests, share their counters.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Time to first token buckets (seconds): the course's 100 ms goal sits between two of them.
const TTFT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Time per output token buckets (seconds).
const TPOT_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

pub const REQUESTS: &str = "tt_serve_requests_total";
pub const QUEUE_DEPTH: &str = "tt_serve_queue_depth";
pub const RUNNING: &str = "tt_serve_running_batch_size";
pub const TTFT: &str = "tt_serve_time_to_first_token_seconds";
pub const TPOT: &str = "tt_serve_time_per_output_token_seconds";
pub const GENERATED: &str = "tt_serve_generated_tokens_total";
pub const PROMPT: &str = "tt_serve_prompt_tokens_total";

/// A handle on the process's recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// The process's recorder, installed on first use. If another recorder was installed first
    /// (an embedding program's), ours still renders, but records nothing.
    pub fn get() -> Metrics {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        let handle = HANDLE.get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(TTFT.into()), TTFT_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TPOT.into()), TPOT_BUCKETS))
                .expect("bucket lists are non-empty constants")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_counter!(REQUESTS, "HTTP requests answered, by status");
            metrics::describe_gauge!(QUEUE_DEPTH, "Requests waiting for a decoder slot");
            metrics::describe_gauge!(RUNNING, "Requests in the running batch");
            metrics::describe_histogram!(TTFT, metrics::Unit::Seconds, "Request arrival to its first token");
            metrics::describe_histogram!(TPOT, metrics::Unit::Seconds, "Time between a request's consecutive tokens");
            metrics::describe_counter!(GENERATED, "Tokens generated");
            metrics::describe_counter!(PROMPT, "Prompt tokens received");
            handle
        });
        Metrics { handle: handle.clone() }
    }

    pub fn request(&self, status: u16) {
        counter!(REQUESTS, "status" => status.to_string()).increment(1);
    }
    pub fn set_batch(&self, running: usize, queued: usize) {
        gauge!(RUNNING).set(running as f64);
        gauge!(QUEUE_DEPTH).set(queued as f64);
    }
    pub fn first_token(&self, d: Duration) {
        histogram!(TTFT).record(d.as_secs_f64());
    }
    pub fn next_token(&self, d: Duration) {
        histogram!(TPOT).record(d.as_secs_f64());
    }
    pub fn tokens(&self, n: usize) {
        counter!(GENERATED).increment(n as u64);
    }
    pub fn prompt_tokens(&self, n: usize) {
        counter!(PROMPT).increment(n as u64);
    }
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
