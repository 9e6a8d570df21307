//! Observers: watch the values a tensor takes on representative data and choose its range.
//!
//! Static quantization freezes each activation's `(S, Z)` from what an observer saw during
//! calibration (`torch.ao.quantization` names: MinMax, MovingAverageMinMax, Histogram; plus a
//! Percentile clip). Each observer only accumulates statistics; [`Observer::qparams`] turns them
//! into a scale and zero point with [`QParams::from_range`].

use crate::error::{QuantError, Result};
use crate::scheme::{finite_range, QParams, QRange, Scheme};

/// Accumulates statistics of observed values and proposes a range.
pub trait Observer: Send + std::fmt::Debug {
    /// Records a batch of values (non-finite values are ignored).
    fn observe(&mut self, x: &[f32]);
    /// The range to quantize, `None` before any finite value was observed.
    fn range(&self) -> Option<(f32, f32)>;
    /// Short name (`"minmax"`, `"moving_average"`, `"histogram"`, `"percentile"`).
    fn name(&self) -> &'static str;

    /// `(S, Z)` for [`Observer::range`].
    ///
    /// # Errors
    /// If nothing was observed yet.
    fn qparams(&self, scheme: Scheme, range: QRange) -> Result<QParams> {
        let (lo, hi) = self.range().ok_or_else(|| {
            QuantError::arg("Observer::qparams", format!("the {} observer has seen no values", self.name()))
        })?;
        QParams::from_range(lo, hi, scheme, range)
    }
}

/// The running minimum and maximum.
#[derive(Debug, Clone, Default)]
pub struct MinMax {
    seen: Option<(f32, f32)>,
}

impl Observer for MinMax {
    fn observe(&mut self, x: &[f32]) {
        if let Some((lo, hi)) = batch_range(x) {
            self.seen = Some(self.seen.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
    }
    fn range(&self) -> Option<(f32, f32)> {
        self.seen
    }
    fn name(&self) -> &'static str {
        "minmax"
    }
}

/// Exponential moving average of each batch's min and max: `m ← m + c·(m_batch − m)`, started at
/// the first batch's values (PyTorch's default `c = 0.01`). Less sensitive to one outlier batch.
#[derive(Debug, Clone)]
pub struct MovingAverageMinMax {
    c: f32,
    seen: Option<(f32, f32)>,
}

impl MovingAverageMinMax {
    /// # Errors
    /// `c` outside `(0, 1]`.
    pub fn new(c: f32) -> Result<MovingAverageMinMax> {
        if !(c > 0.0 && c <= 1.0) {
            return Err(QuantError::arg(
                "MovingAverageMinMax::new",
                format!("averaging constant {c} must be in (0, 1]"),
            ));
        }
        Ok(MovingAverageMinMax { c, seen: None })
    }
}

impl Default for MovingAverageMinMax {
    fn default() -> Self {
        MovingAverageMinMax { c: 0.01, seen: None }
    }
}

impl Observer for MovingAverageMinMax {
    fn observe(&mut self, x: &[f32]) {
        if let Some((lo, hi)) = batch_range(x) {
            self.seen = Some(match self.seen {
                None => (lo, hi),
                Some((a, b)) => (a + self.c * (lo - a), b + self.c * (hi - b)),
            });
        }
    }
    fn range(&self) -> Option<(f32, f32)> {
        self.seen
    }
    fn name(&self) -> &'static str {
        "moving_average"
    }
}

/// The most bins a [`Histogram`] takes: its range search tries every pair of bin edges.
pub const MAX_BINS: usize = 1 << 14;

/// What a [`Histogram`] picks from its bins.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    /// The range with the smallest estimated L2 quantization error.
    MinL2 { levels: usize },
    /// The `p` and `1 − p` quantiles (e.g. 0.9999).
    Percentile(f64),
}

/// A histogram of observed values over a range that widens as needed; picks a clipping range
/// that minimises the estimated L2 quantization error (`Histogram::new`) or at a percentile
/// ([`Histogram::percentile`]).
///
/// Error model for a candidate range `[a, b]` with `L` levels (step `Δ = (b − a)/L`): a bin whose
/// centre lies inside contributes `count·Δ²/12` (uniform rounding noise), one outside contributes
/// `count·d²`, `d` its centre's distance to the nearer end (clipping). Every pair of bin edges
/// is tried (PyTorch's HistogramObserver narrows greedily instead; with prefix sums the full
/// search costs about two million O(1) evaluations at 2048 bins).
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<f64>,
    lo: f32,
    hi: f32,
    seen: bool,
    pick: Pick,
}

impl Histogram {
    /// L2-optimal range for codes with `levels` steps (255 for int8), over `bins` bins (2048 is
    /// PyTorch's default).
    ///
    /// # Errors
    /// Fewer than 2 bins or levels, or more than [`MAX_BINS`] bins (the search is quadratic).
    pub fn new(bins: usize, levels: usize) -> Result<Histogram> {
        if !(2..=MAX_BINS).contains(&bins) || levels < 2 {
            return Err(QuantError::arg(
                "Histogram::new",
                format!("{bins} bins and {levels} levels: need 2..={MAX_BINS} bins and ≥ 2 levels"),
            ));
        }
        Ok(Histogram { counts: vec![0.0; bins], lo: 0.0, hi: 0.0, seen: false, pick: Pick::MinL2 { levels } })
    }

    /// Clips at the `p` and `1 − p` quantiles of the observed values (`p` in (0.5, 1]).
    ///
    /// # Errors
    /// Fewer than 2 bins, or `p` outside `(0.5, 1]`.
    pub fn percentile(bins: usize, p: f64) -> Result<Histogram> {
        if !((2..=MAX_BINS).contains(&bins) && p > 0.5 && p <= 1.0) {
            return Err(QuantError::arg(
                "Histogram::percentile",
                format!("{bins} bins, p = {p}: need ≥ 2 bins and p in (0.5, 1]"),
            ));
        }
        Ok(Histogram { counts: vec![0.0; bins], lo: 0.0, hi: 0.0, seen: false, pick: Pick::Percentile(p) })
    }

    fn width(&self) -> f64 {
        (self.hi as f64 - self.lo as f64) / self.counts.len() as f64
    }

    fn bin_of(&self, v: f32) -> usize {
        let w = self.width();
        if w == 0.0 {
            return 0;
        }
        (((v as f64 - self.lo as f64) / w) as usize).min(self.counts.len() - 1)
    }

    /// Widens the histogram to `[lo, hi]`, moving each old bin's count to the new bin that
    /// holds its centre.
    fn widen(&mut self, lo: f32, hi: f32) {
        let bins = self.counts.len();
        let old = std::mem::replace(&mut self.counts, vec![0.0; bins]);
        let (old_lo, old_w) = (self.lo as f64, self.width());
        self.lo = lo;
        self.hi = hi;
        for (i, c) in old.into_iter().enumerate().filter(|(_, c)| *c > 0.0) {
            let centre = old_lo + (i as f64 + 0.5) * old_w;
            let b = self.bin_of(centre as f32);
            self.counts[b] += c;
        }
    }

    fn centre(&self, i: usize) -> f64 {
        self.lo as f64 + (i as f64 + 0.5) * self.width()
    }

    /// The bins `a..b` whose range has the smallest estimated L2 error (see the type's docs),
    /// over every pair: with prefix sums of `c`, `c·m` and `c·m²` each candidate costs O(1).
    fn min_l2(&self, levels: usize) -> (f64, usize, usize) {
        let n = self.counts.len();
        let (mut p0, mut p1, mut p2) = (vec![0.0; n + 1], vec![0.0; n + 1], vec![0.0; n + 1]);
        for i in 0..n {
            let (c, m) = (self.counts[i], self.centre(i));
            p0[i + 1] = p0[i] + c;
            p1[i + 1] = p1[i] + c * m;
            p2[i + 1] = p2[i] + c * m * m;
        }
        let w = self.width();
        // Quantization always widens a range to include 0 (`QParams::from_range`), so only
        // candidates that contain the edge nearest 0 are scored: the range chosen is the range
        // used.
        let zero = (((0.0 - self.lo as f64) / w).round().max(0.0) as usize).min(n);
        let mut best = (f64::INFINITY, 0, n);
        for a in 0..=zero.min(n - 1) {
            let lo = self.lo as f64 + a as f64 * w;
            // Bins left of `a` clip up to `lo`: Σ c·(lo − m)².
            let left = lo * lo * p0[a] - 2.0 * lo * p1[a] + p2[a];
            for b in (a + 1).max(zero)..=n {
                let hi = self.lo as f64 + b as f64 * w;
                let (c, s1, s2) = (p0[n] - p0[b], p1[n] - p1[b], p2[n] - p2[b]);
                let right = s2 - 2.0 * hi * s1 + hi * hi * c;
                // The step of the range as it will be used: widened to include 0.
                let step = (hi.max(0.0) - lo.min(0.0)) / levels as f64;
                let err = left + right + (p0[b] - p0[a]) * step * step / 12.0;
                if err < best.0 {
                    best = (err, a, b);
                }
            }
        }
        best
    }
}

impl Observer for Histogram {
    fn observe(&mut self, x: &[f32]) {
        let Some((lo, hi)) = batch_range(x) else { return };
        if !self.seen {
            self.lo = lo;
            self.hi = hi;
            self.seen = true;
        } else if lo < self.lo || hi > self.hi {
            self.widen(lo.min(self.lo), hi.max(self.hi));
        }
        for &v in x.iter().filter(|v| v.is_finite()) {
            let b = self.bin_of(v);
            self.counts[b] += 1.0;
        }
    }

    fn range(&self) -> Option<(f32, f32)> {
        if !self.seen {
            return None;
        }
        let n = self.counts.len();
        let edge = |i: usize| (self.lo as f64 + i as f64 * self.width()) as f32;
        if self.width() == 0.0 {
            return Some((self.lo, self.hi));
        }
        match self.pick {
            Pick::Percentile(p) => {
                let total: f64 = self.counts.iter().sum();
                let (mut below, mut a) = (0.0, 0);
                while a < n && below + self.counts[a] <= (1.0 - p) * total {
                    below += self.counts[a];
                    a += 1;
                }
                let (mut above, mut b) = (0.0, n);
                while b > a + 1 && above + self.counts[b - 1] <= (1.0 - p) * total {
                    above += self.counts[b - 1];
                    b -= 1;
                }
                Some((edge(a), edge(b)))
            }
            Pick::MinL2 { levels } => {
                let (_, a, b) = self.min_l2(levels);
                // Scored as widened to include 0 (see `min_l2`): report it so.
                Some((edge(a).min(0.0), edge(b).max(0.0)))
            }
        }
    }

    fn name(&self) -> &'static str {
        match self.pick {
            Pick::MinL2 { .. } => "histogram",
            Pick::Percentile(_) => "percentile",
        }
    }
}

/// The finite range of one batch, `None` if it has no finite value.
fn batch_range(x: &[f32]) -> Option<(f32, f32)> {
    x.iter().any(|v| v.is_finite()).then(|| finite_range(x))
}
