//! Latency statistics in criterion's and MLPerf's conventions.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
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

/// Interpolated percentile of samples already checked (non-empty, sorted, p in [0, 1]).
fn interpolated(sorted: &[f64], p: f64) -> f64 {
    let rank = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Percentile by linear interpolation at rank `p·(n−1)` of the sorted samples (criterion, NumPy's
/// default).
///
/// # Errors
/// No samples, a NaN sample, samples not sorted ascending, or `p` outside [0, 1].
pub fn percentile_interpolated(sorted: &[f64], p: f64) -> Result<f64> {
    check_sorted("percentile_interpolated", sorted)?;
    check_p("percentile_interpolated", p)?;
    Ok(interpolated(sorted, p))
}

/// Percentile as MLPerf LoadGen reports it: `sorted[⌊n·p⌋]`, no interpolation (clamped to n−1).
///
/// # Errors
/// No samples, a NaN sample, samples not sorted ascending, or `p` outside [0, 1].
pub fn percentile_mlperf(sorted: &[f64], p: f64) -> Result<f64> {
    check_sorted("percentile_mlperf", sorted)?;
    check_p("percentile_mlperf", p)?;
    Ok(sorted[((sorted.len() as f64 * p).floor() as usize).min(sorted.len() - 1)])
}

/// Tukey fences: counts of samples outside 1.5·IQR (mild, excluding severe) and 3·IQR (severe).
/// Outliers are labelled, never dropped.
///
/// # Errors
/// No samples, a NaN sample, or samples not sorted ascending.
pub fn tukey_outliers(sorted: &[f64]) -> Result<(usize, usize)> {
    check_sorted("tukey_outliers", sorted)?;
    Ok(tukey(sorted))
}

fn tukey(sorted: &[f64]) -> (usize, usize) {
    let q1 = interpolated(sorted, 0.25);
    let q3 = interpolated(sorted, 0.75);
    let iqr = q3 - q1;
    let severe = sorted.iter().filter(|&&x| x < q1 - 3.0 * iqr || x > q3 + 3.0 * iqr).count();
    let mild = sorted.iter().filter(|&&x| x < q1 - 1.5 * iqr || x > q3 + 1.5 * iqr).count() - severe;
    (mild, severe)
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
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = samples.len();
    let mut medians = Vec::with_capacity(resamples);
    let mut buf = vec![0.0; n];
    for _ in 0..resamples {
        for b in buf.iter_mut() {
            *b = samples[rng.random_range(0..n)];
        }
        buf.sort_by(f64::total_cmp);
        medians.push(interpolated(&buf, 0.5));
    }
    medians.sort_by(f64::total_cmp);
    let alpha = 1.0 - confidence;
    Ok((interpolated(&medians, alpha / 2.0), interpolated(&medians, 1.0 - alpha / 2.0)))
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
        let (mild, severe) = tukey(&s);
        let median = interpolated(&s, 0.5);
        Ok(LatencyStats {
            n,
            mean,
            median,
            std: var.sqrt(),
            min: s[0],
            max: s[n - 1],
            p50: median,
            p90: interpolated(&s, 0.9),
            p99: interpolated(&s, 0.99),
            median_ci95: bootstrap_median_ci(&s, 10_000, 0.95, 0)?,
            outliers_mild: mild,
            outliers_severe: severe,
            iqr_over_median: (interpolated(&s, 0.75) - interpolated(&s, 0.25)) / median,
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
