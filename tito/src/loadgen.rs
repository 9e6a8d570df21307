//! `tito loadgen`: MLPerf's LoadGen over the network — a scenario run against any
//! OpenAI-compatible `/v1/completions` endpoint (`tito serve`, or vLLM, llama.cpp's server…),
//! judged by MLPerf's rules, its `mlperf_log_summary.txt` and detail JSON written to `--out`.
//!
//! A few lines over `tt_perf::http` (the streaming client system under test and its prompt
//! library) and `tt_perf::loadgen` / `results`. It starts no server and trains no model: the
//! default prompts are the course's held-out questions as text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tt_perf::http::{self, HttpConfig, HttpSut, PromptLibrary};
use tt_perf::loadgen::{self, Scenario, TestSettings};

/// The scenarios a network system is run in (MultiStream is for on-device streams).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
#[value(rename_all = "PascalCase")]
pub enum ScenarioArg {
    SingleStream,
    Server,
    Offline,
}

#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080 (requests go to URL/v1/completions).
    #[arg(long)]
    url: String,
    /// SingleStream (p90 latency, one query at a time), Server (a rate, judged at p99 within
    /// 100 ms) or Offline (samples per second, every sample at once).
    #[arg(long, value_enum)]
    scenario: ScenarioArg,
    /// Server: the Poisson arrival rate; Offline: the expected rate, which sizes the one query
    /// (rate × duration × 1.1 samples). Default 10.
    #[arg(long, value_name = "Q")]
    target_qps: Option<f64>,
    /// The run's minimum duration (MLPerf's official one is 600,000).
    #[arg(long, value_name = "D", default_value_t = 10_000)]
    duration_ms: u64,
    /// The run's minimum query count (default MLPerf's: 64 for SingleStream's p90, 662 for
    /// Server's p99; Offline: 1, its samples set by --target-qps).
    #[arg(long, value_name = "N")]
    min_queries: Option<u64>,
    /// The most tokens each completion may have.
    #[arg(long, value_name = "N", default_value_t = 32)]
    max_tokens: u32,
    /// Prompts, one per line (default: the course's held-out questions, `Q: …\nA:`).
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// The model to request (default: the first the server lists at /v1/models).
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// A stop sequence (repeatable; default a newline with the course's prompts, whose answers
    /// end there, and none with --prompts).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// Where the logs go.
    #[arg(long, value_name = "DIR", default_value = "loadgen-results")]
    out: PathBuf,
}

/// How long to wait for `/v1/models` before calling the server unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the scenario, writes the logs, prints the summary and the failed requests.
///
/// # Errors
/// A flag out of range, an unreadable or empty prompts file, a server that cannot be reached or
/// lists no model, the run's own (`tt_perf::loadgen::start_test`), the logs' file system.
pub fn run(a: &LoadgenArgs) -> Result<(), String> {
    let scenario = match a.scenario {
        ScenarioArg::SingleStream => Scenario::SingleStream,
        ScenarioArg::Server => Scenario::Server,
        ScenarioArg::Offline => Scenario::Offline,
    };
    if a.target_qps.is_some() && scenario == Scenario::SingleStream {
        return Err("--target-qps applies to Server and Offline, not SingleStream".into());
    }
    let qps = a.target_qps.unwrap_or(10.0);
    if !(qps.is_finite() && qps > 0.0) {
        return Err(format!("--target-qps {qps} must be a positive number"));
    }
    let (prompts, stop) = match &a.prompts {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("--prompts {}: {e}", path.display()))?;
            let prompts: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect();
            if prompts.is_empty() {
                return Err(format!("--prompts {}: no prompts (one per line)", path.display()));
            }
            (prompts, a.stop.clone())
        }
        None => {
            let prompts = tt_transformer::corpus::generate(0).test.iter().map(|q| q.prompt()).collect();
            let stop = if a.stop.is_empty() { vec!["\n".to_string()] } else { a.stop.clone() };
            (prompts, stop)
        }
    };
    let listed = http::list_models(&a.url, PROBE_TIMEOUT).map_err(|e| e.to_string())?;
    let model = match (&a.model, listed.first()) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => return Err(format!("{} lists no models at /v1/models; name one with --model", a.url)),
    };
    let mut library = PromptLibrary::new(prompts).map_err(|e| e.to_string())?;
    let config = HttpConfig { max_tokens: a.max_tokens, stop, ..HttpConfig::new(a.url.clone(), model) };
    let sut = HttpSut::new(config, &library).map_err(|e| e.to_string())?;
    let official = TestSettings::official(scenario).min_query_count;
    let min_queries = a.min_queries.unwrap_or(if scenario == Scenario::Offline { 1 } else { official });
    let settings = TestSettings {
        server_target_qps: qps,
        offline_expected_qps: qps,
        ..TestSettings::scaled(scenario, Duration::from_millis(a.duration_ms), min_queries)
    };
    let log = loadgen::start_test(&sut, &mut library, &settings).map_err(|e| e.to_string())?;
    let failures = sut.take_failures();
    let judged = http::judge(log, &failures).map_err(|e| e.to_string())?;
    let summary = judged.write_logs(&a.out).map_err(|e| e.to_string())?;
    print!("{}", judged.summary_text());
    println!("\nFailed requests : {failures}");
    println!("Logs            : {}", summary.display());
    Ok(())
}
