//! Latency statistics in criterion's and MLPerf's conventions.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Percentile by linear interpolation at rank `p·(n−1)` of the sorted samples (criterion, NumPy's
/// default). `p` in [0, 1].
pub fn percentile_interpolated(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Percentile as MLPerf LoadGen reports it: `sorted[⌊n·p⌋]`, no interpolation (clamped to n−1).
pub fn percentile_mlperf(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    sorted[((sorted.len() as f64 * p).floor() as usize).min(sorted.len() - 1)]
}

/// Tukey fences: counts of samples outside 1.5·IQR (mild, excluding severe) and 3·IQR (severe).
/// Outliers are labelled, never dropped.
pub fn tukey_outliers(sorted: &[f64]) -> (usize, usize) {
    let q1 = percentile_interpolated(sorted, 0.25);
    let q3 = percentile_interpolated(sorted, 0.75);
    let iqr = q3 - q1;
    let severe = sorted.iter().filter(|&&x| x < q1 - 3.0 * iqr || x > q3 + 3.0 * iqr).count();
    let mild = sorted.iter().filter(|&&x| x < q1 - 1.5 * iqr || x > q3 + 1.5 * iqr).count() - severe;
    (mild, severe)
}

/// Bootstrap confidence interval of the median: `resamples` resamples with replacement drawn by
/// a seeded generator; returns the (α/2, 1−α/2) percentiles of the resampled medians.
pub fn bootstrap_median_ci(samples: &[f64], resamples: usize, confidence: f64, seed: u64) -> (f64, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = samples.len();
    let mut medians = Vec::with_capacity(resamples);
    let mut buf = vec![0.0; n];
    for _ in 0..resamples {
        for b in buf.iter_mut() {
            *b = samples[rng.random_range(0..n)];
        }
        buf.sort_by(f64::total_cmp);
        medians.push(percentile_interpolated(&buf, 0.5));
    }
    medians.sort_by(f64::total_cmp);
    let alpha = 1.0 - confidence;
    (percentile_interpolated(&medians, alpha / 2.0), percentile_interpolated(&medians, 1.0 - alpha / 2.0))
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
    /// IQR / median: `torch.utils.benchmark` warns at ≥ 0.10.
    pub iqr_over_median: f64,
}

impl LatencyStats {
    pub fn from_samples(samples_ms: &[f64]) -> LatencyStats {
        assert!(!samples_ms.is_empty(), "no latency samples");
        let mut s = samples_ms.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let mean = s.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        let (mild, severe) = tukey_outliers(&s);
        let median = percentile_interpolated(&s, 0.5);
        LatencyStats {
            n,
            mean,
            median,
            std: var.sqrt(),
            min: s[0],
            max: s[n - 1],
            p50: median,
            p90: percentile_interpolated(&s, 0.9),
            p99: percentile_interpolated(&s, 0.99),
            median_ci95: bootstrap_median_ci(&s, 10_000, 0.95, 0),
            outliers_mild: mild,
            outliers_severe: severe,
            iqr_over_median: (percentile_interpolated(&s, 0.75) - percentile_interpolated(&s, 0.25)) / median,
        }
    }
}

/// Times `f`: `warmup` untimed calls, then `iterations` timed calls (milliseconds each).
pub fn measure_latency(warmup: usize, iterations: usize, mut f: impl FnMut()) -> LatencyStats {
    for _ in 0..warmup {
        f();
    }
    let samples: Vec<f64> = (0..iterations.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    LatencyStats::from_samples(&samples)
}
