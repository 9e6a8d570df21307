//! Judging a run by MLPerf's rules, and writing its logs in MLPerf's format:
//! `mlperf_log_summary.txt` for people and `mlperf_log_detail.json` for programs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::early_stopping::{self, EarlyStopping, CONFIDENCE};
use crate::loadgen::{duration_ns, Mode, RunLog, Scenario};
use crate::stats::{self, Summary};
use crate::{PerfError, Result};

/// A run with its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    pub log: RunLog,
    pub valid: bool,
    /// The metric line's name and value, as the summary prints them.
    pub metric: String,
    pub value: f64,
    /// The sample (Server, SingleStream) or query (MultiStream) latency at the target percentile.
    pub target_percentile_ns: u64,
    pub min_duration_met: bool,
    pub min_queries_met: bool,
    /// Server only (the latency bound); `None` where the scenario has no constraint.
    pub perf_constraints_met: Option<bool>,
    pub early_stopping: EarlyStopping,
    /// One line per failed rule, naming it.
    pub failed_rules: Vec<String>,
    pub sample_latency: Summary,
    /// MultiStream's per-query latencies.
    pub query_latency: Option<Summary>,
    pub first_token_latency: Option<Summary>,
    pub time_per_output_token: Option<Summary>,
}

fn summary_ns(xs: &[u64]) -> Result<Summary> {
    Summary::of(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>())
}

/// Apply the validity rules: VALID = min duration ∧ min queries ∧ latency constraint (Server) ∧
/// early stopping (SingleStream, MultiStream, Server).
///
/// # Errors
/// The log's settings invalid ([`crate::loadgen::TestSettings::validate`]: a `RunLog`'s fields
/// are public, so they are checked again here); a run with no samples.
pub fn judge(log: RunLog) -> Result<Judged> {
    let s = &log.settings;
    s.validate()?;
    let p = s.target_latency_percentile;
    if log.sample_latencies_ns.is_empty() {
        return Err(PerfError::Stats("the run has no completed samples".into()));
    }
    let sample_latency = summary_ns(&log.sample_latencies_ns)?;
    let mut sorted_samples = log.sample_latencies_ns.clone();
    sorted_samples.sort_unstable();
    let mut sorted_queries = log.query_latencies_ns.clone();
    sorted_queries.sort_unstable();
    let n_samples = sorted_samples.len() as u64;
    let secs = |ns: u64| ns as f64 / 1e9;

    let min_ns = duration_ns("min_duration", s.min_duration)?;
    let min_duration_met = match s.scenario {
        Scenario::SingleStream | Scenario::MultiStream => log.final_query_issued_ns >= min_ns,
        Scenario::Server => log.final_query_scheduled_ns >= min_ns,
        Scenario::Offline => log.final_completion_ns >= min_ns,
    };
    let min_queries_met = match s.scenario {
        Scenario::Offline => n_samples >= s.min_query_count,
        _ => log.queries_issued >= s.min_query_count,
    };
    let bound = duration_ns("target_latency", s.target_latency)?;
    let (metric, value, target_percentile_ns, perf_constraints_met, early) = match s.scenario {
        Scenario::SingleStream => {
            let v = stats::percentile_sorted(&sorted_samples, p)?;
            let f: Vec<f64> = sorted_samples.iter().map(|&x| x as f64).collect();
            (
                format!("{:.0}th percentile latency (ns)", p * 100.0),
                v as f64,
                v,
                None,
                early_stopping::latency_estimate(&f, p, CONFIDENCE)?,
            )
        }
        Scenario::MultiStream => {
            let v = stats::percentile_sorted(&sorted_queries, p)?;
            let f: Vec<f64> = sorted_queries.iter().map(|&x| x as f64).collect();
            (
                format!("{:.0}th percentile latency (ns)", p * 100.0),
                v as f64,
                v,
                None,
                early_stopping::latency_estimate(&f, p, CONFIDENCE)?,
            )
        }
        Scenario::Server => {
            let v = stats::percentile_sorted(&sorted_samples, p)?;
            let over = sorted_samples.iter().filter(|&&x| x > bound).count() as u64;
            // (n − 1) / time: the last sample's start is the open end of the interval.
            let qps = (n_samples.saturating_sub(1)) as f64 / secs(log.final_completion_ns).max(1e-12);
            (
                "Completed samples per second".to_string(),
                qps,
                v,
                Some(v <= bound),
                early_stopping::server(n_samples, over, p, CONFIDENCE)?,
            )
        }
        Scenario::Offline => {
            let v = stats::percentile_sorted(&sorted_samples, p)?;
            let sps = n_samples as f64 / secs(log.final_completion_ns).max(1e-12);
            let es = EarlyStopping { met: true, queries_needed: 0, percentile_estimate: None, lines: Vec::new() };
            ("Samples per second".to_string(), sps, v, None, es)
        }
    };
    let mut failed_rules = Vec::new();
    if perf_constraints_met == Some(false) {
        failed_rules.push(format!(
            "performance constraint: {:.0}th percentile latency {} ns exceeds the bound {} ns; reduce the target QPS",
            p * 100.0,
            target_percentile_ns,
            bound
        ));
    }
    if !min_duration_met {
        failed_rules.push(format!(
            "min duration: the run covered {:.3} s of the {:.3} s required",
            secs(match s.scenario {
                Scenario::Server => log.final_query_scheduled_ns,
                Scenario::Offline => log.final_completion_ns,
                _ => log.final_query_issued_ns,
            }),
            s.min_duration.as_secs_f64()
        ));
    }
    if !min_queries_met {
        let got = if s.scenario == Scenario::Offline { n_samples } else { log.queries_issued };
        failed_rules.push(format!("min queries: {got} issued of the {} required", s.min_query_count));
    }
    if !early.met {
        failed_rules.push(format!("early stopping: needs {} queries at 99% confidence", early.queries_needed));
    }
    // An accuracy run is judged by its task metric, not by these rules (LoadGen's accuracy mode
    // issues every sample once, whatever the duration).
    if s.mode == Mode::AccuracyOnly {
        failed_rules.clear();
    }
    let valid = failed_rules.is_empty();
    let query_latency =
        (s.scenario == Scenario::MultiStream).then(|| summary_ns(&log.query_latencies_ns)).transpose()?;
    let first_token_latency = (!log.first_token_ns.is_empty()).then(|| summary_ns(&log.first_token_ns)).transpose()?;
    let time_per_output_token =
        (!log.time_per_output_token_ns.is_empty()).then(|| summary_ns(&log.time_per_output_token_ns)).transpose()?;
    Ok(Judged {
        valid,
        metric,
        value,
        target_percentile_ns,
        min_duration_met,
        min_queries_met,
        perf_constraints_met,
        early_stopping: early,
        failed_rules,
        sample_latency,
        query_latency,
        first_token_latency,
        time_per_output_token,
        log,
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "NO"
    }
}

fn latency_block(out: &mut String, label: &str, s: &Summary) {
    let _ = writeln!(out, "Min {label} (ns)                : {:.0}", s.min);
    let _ = writeln!(out, "Max {label} (ns)                : {:.0}", s.max);
    let _ = writeln!(out, "Mean {label} (ns)               : {:.0}", s.mean);
    for (p, v) in &s.percentiles {
        let _ = writeln!(out, "{:.2} percentile {label} (ns)   : {v:.0}", p * 100.0);
    }
}

impl Judged {
    /// The text of `mlperf_log_summary.txt`, in LoadGen's layout.
    pub fn summary_text(&self) -> String {
        let s = &self.log.settings;
        let mut o = String::new();
        let bar = "================================================";
        let _ = writeln!(o, "{bar}\nMLPerf Results Summary\n{bar}");
        let _ = writeln!(o, "SUT name : {}", self.log.sut_name);
        let _ = writeln!(o, "Scenario : {}", s.scenario.name());
        let _ = writeln!(o, "Mode     : {}", s.mode.name());
        // LoadGen's own spacing differs by scenario; kept so the lines grep the same.
        if s.scenario == Scenario::Server {
            let _ = writeln!(o, "{}    : {:.3}", self.metric, self.value);
        } else if s.scenario == Scenario::Offline {
            let _ = writeln!(o, "{}: {:.3}", self.metric, self.value);
        } else {
            let _ = writeln!(o, "{} : {:.0}", self.metric, self.value);
        }
        let _ = writeln!(o, "Result is : {}", if self.valid { "VALID" } else { "INVALID" });
        if s.mode == Mode::AccuracyOnly {
            let _ = writeln!(
                o,
                "  Performance rules not applied: AccuracyOnly issues every sample once ({} samples)",
                self.log.accuracy.len()
            );
        } else {
            if let Some(met) = self.perf_constraints_met {
                let _ = writeln!(o, "  Performance constraints satisfied : {}", yes(met));
            }
            let _ = writeln!(o, "  Min duration satisfied : {}", yes(self.min_duration_met));
            let _ = writeln!(o, "  Min queries satisfied : {}", yes(self.min_queries_met));
            let _ = writeln!(o, "  Early stopping satisfied: {}", yes(self.early_stopping.met));
        }
        if !self.valid {
            let _ = writeln!(o, "Recommendations:");
            for r in &self.failed_rules {
                let _ = writeln!(o, " * {r}");
            }
        }
        if s.scenario != Scenario::Offline && s.mode != Mode::AccuracyOnly {
            let _ = writeln!(o, "Early Stopping Result:");
            for l in &self.early_stopping.lines {
                let _ = writeln!(o, "{l}");
            }
        }
        let _ = writeln!(o, "\n{bar}\nAdditional Stats\n{bar}");
        let secs = |ns: u64| ns as f64 / 1e9;
        match s.scenario {
            Scenario::SingleStream => {
                let n = self.log.sample_latencies_ns.len() as f64;
                let _ = writeln!(
                    o,
                    "QPS w/ loadgen overhead         : {:.2}",
                    (n - 1.0) / secs(self.log.final_query_issued_ns).max(1e-12)
                );
                let _ = writeln!(o, "QPS w/o loadgen overhead        : {:.2}\n", 1e9 / self.sample_latency.mean);
            }
            Scenario::Server => {
                let n = self.log.sample_latencies_ns.len() as f64;
                let _ = writeln!(
                    o,
                    "Scheduled samples per second    : {:.2}",
                    (n - 1.0) / secs(self.log.final_query_scheduled_ns).max(1e-12)
                );
                let _ = writeln!(o, "Completed samples per second    : {:.2}\n", self.value);
            }
            Scenario::MultiStream => {
                let _ = writeln!(o, "Per-query latency:");
                if let Some(q) = &self.query_latency {
                    latency_block(&mut o, "latency", q);
                }
                let _ = writeln!(o, "\nPer-sample latency:");
            }
            Scenario::Offline => {}
        }
        latency_block(&mut o, "latency", &self.sample_latency);
        if let Some(ft) = &self.first_token_latency {
            let _ = writeln!(o);
            latency_block(&mut o, "First Token latency", ft);
        }
        if let Some(tp) = &self.time_per_output_token {
            let _ = writeln!(o);
            latency_block(&mut o, "Time to Output Token", tp);
            let _ = writeln!(o, "Tokens                          : {}", self.log.tokens);
        }
        let _ = writeln!(o, "\n{bar}\nTest Parameters Used\n{bar}");
        let _ = writeln!(
            o,
            "samples_per_query : {}",
            match s.scenario {
                Scenario::SingleStream | Scenario::Server => 1,
                Scenario::MultiStream => s.multi_stream_samples_per_query,
                Scenario::Offline => self.log.sample_latencies_ns.len(),
            }
        );
        let _ = writeln!(
            o,
            "target_qps : {}",
            match s.scenario {
                Scenario::Server => s.server_target_qps,
                Scenario::Offline => s.offline_expected_qps,
                _ => 0.0,
            }
        );
        let _ = writeln!(o, "target_latency (ns): {}", s.target_latency.as_nanos());
        let _ = writeln!(o, "target_latency_percentile : {}", s.target_latency_percentile);
        let _ = writeln!(o, "min_duration (ms): {}", s.min_duration.as_millis());
        let _ = writeln!(o, "max_duration (ms): {}", s.max_duration.map_or(0, |d| d.as_millis()));
        let _ = writeln!(o, "min_query_count : {}", s.min_query_count);
        let _ = writeln!(o, "qsl_rng_seed : {}", s.qsl_seed);
        let _ = writeln!(o, "sample_index_rng_seed : {}", s.sample_index_seed);
        let _ = writeln!(o, "schedule_rng_seed : {}", s.schedule_seed);
        let _ = writeln!(o, "performance_sample_count : see detail log ({})", self.log.qsl_name);
        if s.mode == Mode::AccuracyOnly {
            let _ = writeln!(o, "accuracy_samples : {}", self.log.accuracy.len());
        }
        o
    }

    /// The machine-readable detail: every verdict, statistic and setting (latencies in ns).
    pub fn detail_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sut_name": self.log.sut_name,
            "qsl_name": self.log.qsl_name,
            "scenario": self.log.settings.scenario.name(),
            "mode": self.log.settings.mode.name(),
            "result_validity": if self.valid { "VALID" } else { "INVALID" },
            "metric": self.metric,
            "value": self.value,
            "result_min_duration_met": self.min_duration_met,
            "result_min_queries_met": self.min_queries_met,
            "result_perf_constraints_met": self.perf_constraints_met,
            "early_stopping_met": self.early_stopping.met,
            "early_stopping": self.early_stopping,
            "failed_rules": self.failed_rules,
            "result_query_count": self.log.queries_issued,
            "result_sample_count": self.log.sample_latencies_ns.len(),
            "target_percentile_latency_ns": self.target_percentile_ns,
            "sample_latency_ns": self.sample_latency,
            "query_latency_ns": self.query_latency,
            "first_token_latency_ns": self.first_token_latency,
            "time_per_output_token_ns": self.time_per_output_token,
            "tokens": self.log.tokens,
            "final_query_issued_ns": self.log.final_query_issued_ns,
            "final_query_scheduled_ns": self.log.final_query_scheduled_ns,
            "final_completion_ns": self.log.final_completion_ns,
            "settings": self.log.settings,
        })
    }

    /// Writes `mlperf_log_summary.txt` and `mlperf_log_detail.json` into `dir` (created if
    /// missing), each through a temporary file and a rename. Returns the summary's path.
    ///
    /// # Errors
    /// The file system's.
    pub fn write_logs(&self, dir: &Path) -> Result<PathBuf> {
        let detail = serde_json::to_string_pretty(&self.detail_json()).expect("JSON values serialize");
        write_atomic(&dir.join("mlperf_log_detail.json"), detail.as_bytes())?;
        let summary = dir.join("mlperf_log_summary.txt");
        write_atomic(&summary, self.summary_text().as_bytes())?;
        Ok(summary)
    }
}

/// Write through a temporary file in the same directory and rename it into place, so a reader
/// never sees half a file.
///
/// # Errors
/// The file system's, with the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| PerfError::Io { path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    // A fresh, exclusively created temp file (tempfile: random name, O_EXCL), never one at a fixed
    // name that a link or another run's file could occupy; renamed over the target when complete.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".tt-perf-").suffix(".tmp").tempfile_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
