//! Latency statistics: MLPerf's percentiles (no interpolation) for results, criterion's
//! interpolated percentiles and bootstrap intervals for describing a distribution.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::{PerfError, Result};

/// The percentiles MLPerf's summary prints, in its order.
pub const SUMMARY_PERCENTILES: [f64; 6] = [0.50, 0.90, 0.95, 0.97, 0.99, 0.999];

/// MLPerf LoadGen's percentile: `sorted[⌊n·p⌋]`, 0-based, no interpolation (clamped to the last
/// element for `p = 1`). `sorted` must be ascending.
///
/// # Errors
/// No samples, or `p` outside `[0, 1]`.
pub fn percentile_sorted<T: Copy>(sorted: &[T], p: f64) -> Result<T> {
    if sorted.is_empty() {
        return Err(PerfError::Stats("percentile of no samples".into()));
    }
    if !(0.0..=1.0).contains(&p) {
        return Err(PerfError::Stats(format!("percentile {p} is outside [0, 1]")));
    }
    let i = ((sorted.len() as f64 * p).floor() as usize).min(sorted.len() - 1);
    Ok(sorted[i])
}

/// criterion's and numpy's default percentile: linear interpolation at `p·(n−1)`.
///
/// # Errors
/// No samples, or `p` outside `[0, 1]`.
pub fn percentile_interpolated(sorted: &[f64], p: f64) -> Result<f64> {
    if sorted.is_empty() {
        return Err(PerfError::Stats("percentile of no samples".into()));
    }
    if !(0.0..=1.0).contains(&p) {
        return Err(PerfError::Stats(format!("percentile {p} is outside [0, 1]")));
    }
    let x = p * (sorted.len() - 1) as f64;
    let lo = x.floor() as usize;
    let hi = x.ceil() as usize;
    Ok(sorted[lo] + (sorted[hi] - sorted[lo]) * (x - lo as f64))
}

/// Arithmetic mean.
///
/// # Errors
/// No samples.
pub fn mean(xs: &[f64]) -> Result<f64> {
    if xs.is_empty() {
        return Err(PerfError::Stats("mean of no samples".into()));
    }
    Ok(xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation (Bessel's `n − 1`); 0 for one sample.
///
/// # Errors
/// No samples.
pub fn sample_std(xs: &[f64]) -> Result<f64> {
    let m = mean(xs)?;
    if xs.len() == 1 {
        return Ok(0.0);
    }
    Ok((xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt())
}

/// A sorted copy, refusing NaN (a NaN latency is a measurement bug, not a sample).
///
/// # Errors
/// A NaN among `xs`.
pub fn sorted(xs: &[f64]) -> Result<Vec<f64>> {
    if xs.iter().any(|x| x.is_nan()) {
        return Err(PerfError::Stats("a sample is NaN".into()));
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// Summary of a set of samples (latencies in whatever unit they came in).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// `sorted[⌊n/2⌋]`, the MLPerf p50 (for even n the upper middle value).
    pub median: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// `(p, value)` for [`SUMMARY_PERCENTILES`], MLPerf style.
    pub percentiles: Vec<(f64, f64)>,
}

impl Summary {
    /// # Errors
    /// No samples, or a NaN.
    pub fn of(xs: &[f64]) -> Result<Summary> {
        let s = sorted(xs)?;
        let percentiles = SUMMARY_PERCENTILES
            .iter()
            .map(|&p| percentile_sorted(&s, p).map(|v| (p, v)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Summary {
            n: s.len(),
            mean: mean(&s)?,
            median: percentile_sorted(&s, 0.5)?,
            std: sample_std(&s)?,
            min: s[0],
            max: s[s.len() - 1],
            percentiles,
        })
    }

    /// The value at percentile `p` if it is one of [`SUMMARY_PERCENTILES`].
    pub fn at(&self, p: f64) -> Option<f64> {
        self.percentiles.iter().find(|(q, _)| (q - p).abs() < 1e-12).map(|&(_, v)| v)
    }
}

/// The most resamples [`bootstrap_ci`] takes: criterion's default is 100,000, and each one is
/// stored, so a count far beyond it is a typo that would otherwise allocate without bound.
pub const MAX_RESAMPLES: usize = 10_000_000;

/// Percentile bootstrap confidence interval of `statistic` (criterion's method): resample with
/// replacement `resamples` times, seeded, and take the `(1 − level)/2` and `(1 + level)/2`
/// interpolated percentiles of the statistic.
///
/// # Errors
/// No samples, `resamples` 0 or above [`MAX_RESAMPLES`], or `level` outside `(0, 1)`.
pub fn bootstrap_ci(
    xs: &[f64],
    statistic: impl Fn(&[f64]) -> f64,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<(f64, f64)> {
    if xs.is_empty() || resamples == 0 {
        return Err(PerfError::Stats("a bootstrap needs samples and at least one resample".into()));
    }
    if resamples > MAX_RESAMPLES {
        return Err(PerfError::TooLarge {
            what: "bootstrap resamples".into(),
            count: resamples as u128,
            limit: MAX_RESAMPLES as u64,
        });
    }
    if !(level > 0.0 && level < 1.0) {
        return Err(PerfError::Stats(format!("confidence level {level} is outside (0, 1)")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut buf = vec![0.0; xs.len()];
    let mut stats = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for b in buf.iter_mut() {
            *b = xs[rng.random_range(0..xs.len())];
        }
        stats.push(statistic(&buf));
    }
    let s = sorted(&stats)?;
    Ok((percentile_interpolated(&s, (1.0 - level) / 2.0)?, percentile_interpolated(&s, (1.0 + level) / 2.0)?))
}

/// Median of an unsorted slice (interpolated for even n), for bootstrap statistics.
pub fn median_of(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    percentile_interpolated(&v, 0.5).unwrap_or(f64::NAN)
}

/// Tukey's fences: counts of mild (beyond 1.5·IQR) and severe (beyond 3·IQR) outliers. They are
/// labels: criterion never drops them, and neither does anything here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outliers {
    pub mild: usize,
    pub severe: usize,
}

/// # Errors
/// No samples, or a NaN.
pub fn tukey_outliers(xs: &[f64]) -> Result<Outliers> {
    let s = sorted(xs)?;
    let q1 = percentile_interpolated(&s, 0.25)?;
    let q3 = percentile_interpolated(&s, 0.75)?;
    let iqr = q3 - q1;
    let (mut mild, mut severe) = (0, 0);
    for &x in &s {
        if x < q1 - 3.0 * iqr || x > q3 + 3.0 * iqr {
            severe += 1;
        } else if x < q1 - 1.5 * iqr || x > q3 + 1.5 * iqr {
            mild += 1;
        }
    }
    Ok(Outliers { mild, severe })
}
