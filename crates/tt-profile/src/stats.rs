//! Latency statistics in criterion's and MLPerf's conventions.

use std::time::Instant;

use serde::Serialize;
use tt_tensor::{Result, TensorError};

fn arg(op: &'static str, reason: String) -> TensorError {
    TensorError::InvalidArgument { op, reason }
}

/// Non-empty, no NaN, ascending (what the percentile functions read).
fn check_sorted(op: &'static str, sorted: &[f64]) -> Result<()> {
    if sorted.is_empty() {
        return Err(arg(op, "no samples: sorted is empty".into()));
    }
    if let Some(i) = sorted.iter().position(|x| x.is_nan()) {
        return Err(arg(op, format!("sorted[{i}] is NaN")));
    }
    if let Some(i) = sorted.windows(2).position(|w| w[0] > w[1]) {
        return Err(arg(
            op,
            format!(
                "samples are not sorted ascending: sorted[{i}] = {} > sorted[{}] = {}",
                sorted[i],
                i + 1,
                sorted[i + 1]
            ),
        ));
    }
    Ok(())
}

fn check_p(op: &'static str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(arg(op, format!("p {p} must be in [0, 1]")));
    }
    Ok(())
}

/// Samples that statistics can be computed from: at least one, all finite.
fn check_samples(op: &'static str, samples: &[f64]) -> Result<()> {
    if samples.is_empty() {
        return Err(arg(op, "no samples: samples is empty".into()));
    }
    if let Some((i, x)) = samples.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(arg(op, format!("samples[{i}] = {x} is not finite")));
    }
    Ok(())
}

fn perf(op: &'static str, e: tt_perf::PerfError) -> TensorError {
    arg(op, e.to_string())
}

/// Percentile by linear interpolation at rank `p·(n−1)` of the sorted samples (criterion, NumPy's
/// default). The statistics themselves live in `tt_perf::stats` (one implementation); this
/// module adds the checks and the error type the profiler's callers use.
///
/// # Errors
/// No samples, a NaN sample, samples not sorted ascending, or `p` outside [0, 1].
pub fn percentile_interpolated(sorted: &[f64], p: f64) -> Result<f64> {
    check_sorted("percentile_interpolated", sorted)?;
    check_p("percentile_interpolated", p)?;
    tt_perf::stats::percentile_interpolated(sorted, p).map_err(|e| perf("percentile_interpolated", e))
}

/// Percentile as MLPerf LoadGen reports it: `sorted[⌊n·p⌋]`, no interpolation (clamped to n−1).
///
/// # Errors
/// No samples, a NaN sample, samples not sorted ascending, or `p` outside [0, 1].
pub fn percentile_mlperf(sorted: &[f64], p: f64) -> Result<f64> {
    check_sorted("percentile_mlperf", sorted)?;
    check_p("percentile_mlperf", p)?;
    tt_perf::stats::percentile_sorted(sorted, p).map_err(|e| perf("percentile_mlperf", e))
}

/// Tukey fences: counts of samples outside 1.5·IQR (mild, excluding severe) and 3·IQR (severe).
/// Outliers are labelled, never dropped.
///
/// # Errors
/// No samples, a NaN sample, or samples not sorted ascending.
pub fn tukey_outliers(sorted: &[f64]) -> Result<(usize, usize)> {
    check_sorted("tukey_outliers", sorted)?;
    let o = tt_perf::stats::tukey_outliers(sorted).map_err(|e| perf("tukey_outliers", e))?;
    Ok((o.mild, o.severe))
}

/// Bootstrap confidence interval of the median: `resamples` resamples with replacement drawn by
/// a seeded generator; returns the (α/2, 1−α/2) percentiles of the resampled medians.
///
/// # Errors
/// No samples, a sample that is not finite, `resamples` of 0, or `confidence` outside (0, 1).
pub fn bootstrap_median_ci(samples: &[f64], resamples: usize, confidence: f64, seed: u64) -> Result<(f64, f64)> {
    const OP: &str = "bootstrap_median_ci";
    check_samples(OP, samples)?;
    if resamples == 0 {
        return Err(arg(OP, "resamples 0 must be at least 1".into()));
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(arg(OP, format!("confidence {confidence} must be in (0, 1)")));
    }
    tt_perf::stats::bootstrap_ci(samples, tt_perf::stats::median_of, resamples, confidence, seed)
        .map_err(|e| perf(OP, e))
}

/// Summary of latency samples (milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct LatencyStats {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Linear interpolation at p·(n−1).
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// Bootstrap 95% confidence interval of the median (10,000 seeded resamples).
    pub median_ci95: (f64, f64),
    pub outliers_mild: usize,
    pub outliers_severe: usize,
    /// IQR / median: `torch.utils.benchmark` warns at ≥ 0.10 (NaN or +inf when the median is 0).
    pub iqr_over_median: f64,
}

impl LatencyStats {
    /// # Errors
    /// No samples, or a sample that is not finite.
    pub fn from_samples(samples_ms: &[f64]) -> Result<LatencyStats> {
        check_samples("LatencyStats::from_samples", samples_ms)?;
        let mut s = samples_ms.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let mean = s.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        let (mild, severe) = tukey_outliers(&s)?;
        let interpolated = |s: &[f64], p: f64| percentile_interpolated(s, p);
        let median = interpolated(&s, 0.5)?;
        Ok(LatencyStats {
            n,
            mean,
            median,
            std: var.sqrt(),
            min: s[0],
            max: s[n - 1],
            p50: median,
            p90: interpolated(&s, 0.9)?,
            p99: interpolated(&s, 0.99)?,
            median_ci95: bootstrap_median_ci(&s, 10_000, 0.95, 0)?,
            outliers_mild: mild,
            outliers_severe: severe,
            iqr_over_median: (interpolated(&s, 0.75)? - interpolated(&s, 0.25)?) / median,
        })
    }
}

/// Times `f`: `warmup` untimed calls, then `iterations` timed calls (milliseconds each).
///
/// # Errors
/// `iterations` of 0 (checked before `f` runs).
pub fn measure_latency(warmup: usize, iterations: usize, mut f: impl FnMut()) -> Result<LatencyStats> {
    if iterations == 0 {
        return Err(arg("measure_latency", "iterations 0 must be at least 1".into()));
    }
    for _ in 0..warmup {
        f();
    }
    let samples: Vec<f64> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    LatencyStats::from_samples(&samples)
}
