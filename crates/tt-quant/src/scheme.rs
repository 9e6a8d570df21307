//! The quantization math: the affine map `r = S·(q − Z)` and how `(S, Z)` follow from a range.
//!
//! Conventions (`../shared/reference/semantics.md` §2, as in `torch.ao.quantization` and Jacob et
//! al. 2018):
//! - `q = clamp(round(r / S) + Z, q_min, q_max)`, rounding half to even; `r̂ = S·(q − Z)`.
//! - The range always includes 0 (`m⁻ = min(x_min, 0)`, `m⁺ = max(x_max, 0)`), so 0 is exactly
//!   representable — zero padding and ReLU zeros quantize without error.
//! - **Affine**: `S = (m⁺ − m⁻)/(q_max − q_min)`, `Z = clamp(q_min − round(m⁻/S))`.
//! - **Symmetric**: `S = max(|m⁻|, m⁺)/((q_max − q_min)/2)`, `Z` the middle of the range
//!   (0 for signed codes). Weights use `[−127, 127]` so that negation is exact.
//! - An all-zero range gets `S = 1` (every value is 0; nothing to divide by); `S` is computed in
//!   f64 so that ranges as wide as ±3e38 (whose width overflows f32) or as narrow as ±1e-10 stay
//!   finite and distinct, and never drops below the smallest normal f32.
//!
//! Error bound (property-tested): inside the range, `|x − r̂| ≤ S/2`; outside it, values clamp.

use ndarray::Array2;

use crate::error::{QuantError, Result};

/// Inclusive range of integer codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QRange {
    pub min: i32,
    pub max: i32,
}

impl QRange {
    /// Signed int8, `[−128, 127]`.
    pub const I8: QRange = QRange { min: -128, max: 127 };
    /// Signed int8 without −128, `[−127, 127]`: symmetric weights, exact negation.
    pub const I8_SYMMETRIC: QRange = QRange { min: -127, max: 127 };
    /// Unsigned int8, `[0, 255]`: activations in the integer kernels.
    pub const U8: QRange = QRange { min: 0, max: 255 };

    fn levels(self) -> f64 {
        (self.max - self.min) as f64
    }
}

/// How `(S, Z)` are derived from a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Uses the whole code range for `[m⁻, m⁺]`; `Z` shifts it.
    Affine,
    /// Centred on zero: `Z` is the middle code, `S` covers the larger of `|m⁻|`, `m⁺`.
    Symmetric,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Affine => "affine",
            Scheme::Symmetric => "symmetric",
        }
    }
}

/// Which values share one `(S, Z)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One pair for the whole tensor.
    PerTensor,
    /// One pair per output channel (row of a `[out, in]` weight, axis 0).
    PerChannel,
    /// One pair per run of this many inputs within a row (the last group of a row may be shorter).
    PerGroup(usize),
}

impl Granularity {
    pub fn name(self) -> String {
        match self {
            Granularity::PerTensor => "per-tensor".into(),
            Granularity::PerChannel => "per-channel".into(),
            Granularity::PerGroup(g) => format!("per-group-{g}"),
        }
    }
}

/// A scale and zero point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

impl QParams {
    /// `(S, Z)` for values in `[min, max]` (the range is widened to include 0).
    ///
    /// # Errors
    /// A bound that is NaN or infinite, or `min > max`.
    pub fn from_range(min: f32, max: f32, scheme: Scheme, range: QRange) -> Result<QParams> {
        if !min.is_finite() || !max.is_finite() || min > max {
            return Err(QuantError::arg(
                "QParams::from_range",
                format!("range [{min}, {max}] is not a finite, ordered range"),
            ));
        }
        let (lo, hi) = ((min as f64).min(0.0), (max as f64).max(0.0));
        let (scale, zero_point) = match scheme {
            Scheme::Affine => {
                // Z from the scale as stored (f32), so that `lo` maps to q_min with that scale.
                let s = Self::clamp_scale((hi - lo) / range.levels()) as f32 as f64;
                let z = (range.min as f64 - (lo / s).round_ties_even()).clamp(range.min as f64, range.max as f64);
                (s, z as i32)
            }
            Scheme::Symmetric => {
                let s = Self::clamp_scale(lo.abs().max(hi) / (range.levels() / 2.0));
                // The middle code: 0 for [−128, 127] and [−127, 127], 128 for [0, 255].
                (s, (range.min + range.max + 1).div_euclid(2))
            }
        };
        Ok(QParams { scale: scale as f32, zero_point })
    }

    /// An all-zero range has no width: any scale represents it, 1 keeps the codes at `Z`. Other
    /// scales stay at or above the smallest normal f32 so that `x / S` never overflows from a
    /// subnormal divisor.
    fn clamp_scale(s: f64) -> f64 {
        if s == 0.0 {
            1.0
        } else {
            s.max(f32::MIN_POSITIVE as f64)
        }
    }

    /// A usable scale: a positive **normal** f32 (a subnormal one passes `S > 0`, but `1/S`
    /// overflows to ∞ and `0·∞` is NaN).
    pub fn scale_ok(scale: f32) -> bool {
        scale.is_normal() && scale > 0.0
    }

    /// Whether these are an affine map onto u8 codes with a usable scale (activations).
    pub fn is_u8_affine(self) -> bool {
        Self::scale_ok(self.scale) && (0..=255).contains(&self.zero_point)
    }

    /// `clamp(round(x / S) + Z)`, half to even; NaN maps to `Z` (it is no value to preserve).
    pub fn quantize(self, x: f32, range: QRange) -> i32 {
        if x.is_nan() {
            return self.zero_point.clamp(range.min, range.max);
        }
        let q = (x as f64 / self.scale as f64).round_ties_even() + self.zero_point as f64;
        q.clamp(range.min as f64, range.max as f64) as i32
    }

    /// `S·(q − Z)`.
    pub fn dequantize(self, q: i32) -> f32 {
        (self.scale as f64 * (q - self.zero_point) as f64) as f32
    }
}

/// `(min, max)` of the finite values of `x` (`(0, 0)` if it has none).
pub fn finite_range(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in x.iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// A `[rows, cols]` matrix stored as int8 codes with its scales and zero points — the storage of
/// an int8 weight. `params` holds one entry (per-tensor), one per row (per-channel) or
/// `rows · ceil(cols / g)` in row-major group order (per-group).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub codes: Vec<i8>,
    pub params: Vec<QParams>,
    pub scheme: Scheme,
    pub granularity: Granularity,
    pub range: QRange,
}

impl QuantizedMatrix {
    /// Quantizes `w` (`[rows, cols]`). Symmetric matrices use `[−127, 127]`, affine `[−128, 127]`.
    ///
    /// # Errors
    /// A non-finite weight, or a group size of 0.
    pub fn quantize(w: &Array2<f32>, scheme: Scheme, granularity: Granularity) -> Result<QuantizedMatrix> {
        let (rows, cols) = w.dim();
        if let Granularity::PerGroup(0) = granularity {
            return Err(QuantError::arg("QuantizedMatrix::quantize", "group size must be at least 1"));
        }
        if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
            return Err(QuantError::arg("QuantizedMatrix::quantize", format!("weight {bad} is not finite")));
        }
        let range = match scheme {
            Scheme::Symmetric => QRange::I8_SYMMETRIC,
            Scheme::Affine => QRange::I8,
        };
        let w = w.as_standard_layout();
        let data = w.as_slice().expect("standard layout");
        let group = Self::group_len(granularity, rows, cols);
        // Every group is a contiguous run of the row-major data; per-tensor is one run of all.
        let mut params = Vec::new();
        let mut codes = vec![0i8; rows * cols];
        let runs: Vec<std::ops::Range<usize>> = match granularity {
            Granularity::PerTensor => std::iter::once(0..rows * cols).collect(),
            // At least one (possibly empty) run per row, so a per-channel matrix with no
            // columns still has one parameter per row.
            _ => (0..rows)
                .flat_map(|r| {
                    (0..cols.div_ceil(group.max(1)).max(1))
                        .map(move |g| r * cols + (g * group).min(cols)..r * cols + ((g + 1) * group).min(cols))
                })
                .collect(),
        };
        for run in runs {
            let (lo, hi) = finite_range(&data[run.clone()]);
            let p = QParams::from_range(lo, hi, scheme, range)?;
            for i in run {
                codes[i] = p.quantize(data[i], range) as i8;
            }
            params.push(p);
        }
        Ok(QuantizedMatrix { rows, cols, codes, params, scheme, granularity, range })
    }

    /// Checks what the kernels and `dequantize` rely on: one code per element, the parameter count
    /// of the granularity, usable scales, zero points and codes inside the scheme's range (which
    /// keeps the integer sums within i32). A matrix from [`QuantizedMatrix::quantize`] passes.
    ///
    /// # Errors
    /// The first inconsistency, named.
    pub fn validate(&self) -> Result<()> {
        let op = "QuantizedMatrix::validate";
        if self.codes.len() != self.rows * self.cols {
            return Err(QuantError::arg(
                op,
                format!("{} codes for a {}×{} matrix", self.codes.len(), self.rows, self.cols),
            ));
        }
        let want = match self.granularity {
            Granularity::PerTensor => 1,
            Granularity::PerChannel => self.rows,
            Granularity::PerGroup(0) => return Err(QuantError::arg(op, "group size 0")),
            Granularity::PerGroup(g) => self.rows * self.cols.div_ceil(g.min(self.cols.max(1))).max(1),
        };
        if self.params.len() != want {
            return Err(QuantError::arg(
                op,
                format!(
                    "{} parameters for a {} {}×{} matrix (need {want})",
                    self.params.len(),
                    self.granularity.name(),
                    self.rows,
                    self.cols
                ),
            ));
        }
        let range = match self.scheme {
            Scheme::Symmetric => QRange::I8_SYMMETRIC,
            Scheme::Affine => QRange::I8,
        };
        if self.range != range {
            return Err(QuantError::arg(
                op,
                format!("{} weights use codes {range:?}, not {:?}", self.scheme.name(), self.range),
            ));
        }
        for p in &self.params {
            let zp_ok = match self.scheme {
                Scheme::Symmetric => p.zero_point == 0,
                Scheme::Affine => (range.min..=range.max).contains(&p.zero_point),
            };
            if !QParams::scale_ok(p.scale) || !zp_ok {
                return Err(QuantError::arg(
                    op,
                    format!("parameters {p:?} are not valid {} int8 parameters", self.scheme.name()),
                ));
            }
        }
        if let Some(c) = self.codes.iter().find(|&&c| !(range.min..=range.max).contains(&(c as i32))) {
            return Err(QuantError::arg(op, format!("code {c} is outside {range:?}")));
        }
        Ok(())
    }

    /// Inputs per `(S, Z)` within a row (`cols` for per-tensor and per-channel).
    fn group_len(g: Granularity, _rows: usize, cols: usize) -> usize {
        match g {
            Granularity::PerGroup(n) => n.min(cols.max(1)),
            _ => cols,
        }
    }

    /// The `(S, Z)` of element `(r, c)`.
    pub fn params_at(&self, r: usize, c: usize) -> QParams {
        match self.granularity {
            Granularity::PerTensor => self.params[0],
            Granularity::PerChannel => self.params[r],
            Granularity::PerGroup(_) => {
                let g = Self::group_len(self.granularity, self.rows, self.cols);
                self.params[r * self.cols.div_ceil(g) + c / g]
            }
        }
    }

    /// The dequantized matrix `S·(q − Z)`.
    pub fn dequantize(&self) -> Array2<f32> {
        Array2::from_shape_fn((self.rows, self.cols), |(r, c)| {
            self.params_at(r, c).dequantize(self.codes[r * self.cols + c] as i32)
        })
    }

    /// Bytes stored: one per code, four per scale, one per zero point (affine only — symmetric
    /// zero points are all 0 and need no storage).
    pub fn storage_bytes(&self) -> usize {
        let per_param = if self.scheme == Scheme::Affine { 5 } else { 4 };
        self.codes.len() + per_param * self.params.len()
    }
}
