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
//! - **Ranges reaching `f32::MAX`**: every code must dequantize to a finite f32 (a weight that
//!   dequantizes to ±∞ cannot be saved and loaded, nor multiplied). Where the `S` above would
//!   take an extreme code past `f32::MAX`, `S` is lowered to the largest f32 that keeps it
//!   finite: by a few ulps, or, for an affine range spanning nearly ±`f32::MAX` (whose integer
//!   zero point leaves one end a code short), to `f32::MAX/128`. Values at the ends of such a
//!   range clamp to the extreme code, off by at most one step `S` instead of `S/2`.
//!
//! Error bound (property-tested): inside the range, `|x − r̂| ≤ S/2`; outside it, values clamp.
//!
//! The types keep their fields private: a [`QParams`] always has a usable scale, a [`QRange`] is
//! never empty, and a [`QuantizedMatrix`] is always consistent (validated once, where it is built),
//! so the kernels and the checkpoint writer can rely on them.

use ndarray::Array2;

use crate::error::{try_with_capacity, QuantError, Result};
use crate::kernels::MAX_UNBACKED;

/// Inclusive range of integer codes, `min < max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QRange {
    min: i32,
    max: i32,
}

impl QRange {
    /// Signed int8, `[−128, 127]`.
    pub const I8: QRange = QRange { min: -128, max: 127 };
    /// Signed int8 without −128, `[−127, 127]`: symmetric weights, exact negation.
    pub const I8_SYMMETRIC: QRange = QRange { min: -127, max: 127 };
    /// Unsigned int8, `[0, 255]`: activations in the integer kernels.
    pub const U8: QRange = QRange { min: 0, max: 255 };

    /// `[min, max]`.
    ///
    /// # Errors
    /// `min ≥ max`: a range of one code has no step to derive a scale from.
    pub fn new(min: i32, max: i32) -> Result<QRange> {
        if min >= max {
            return Err(QuantError::arg("QRange::new", format!("[{min}, {max}] needs min < max")));
        }
        Ok(QRange { min, max })
    }

    /// The smallest code.
    pub fn min(self) -> i32 {
        self.min
    }

    /// The largest code.
    pub fn max(self) -> i32 {
        self.max
    }

    /// Whether `q` is a code of this range.
    pub fn contains(self, q: i32) -> bool {
        (self.min..=self.max).contains(&q)
    }

    fn levels(self) -> f64 {
        self.max as f64 - self.min as f64
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

/// A scale and zero point; the scale is always usable ([`QParams::scale_ok`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    scale: f32,
    zero_point: i32,
}

impl QParams {
    /// `S = 1, Z = 0`.
    pub const UNIT: QParams = QParams { scale: 1.0, zero_point: 0 };

    /// `(S, Z)` as given. Whether `Z` suits a code range is for the user to check
    /// ([`QParams::is_u8_affine`], [`QuantizedMatrix::from_parts`]).
    ///
    /// # Errors
    /// A scale that is not a positive normal f32.
    pub fn new(scale: f32, zero_point: i32) -> Result<QParams> {
        if !Self::scale_ok(scale) {
            return Err(QuantError::arg("QParams::new", format!("scale {scale} is not a positive normal f32")));
        }
        Ok(QParams { scale, zero_point })
    }

    /// `S`.
    pub fn scale(self) -> f32 {
        self.scale
    }

    /// `Z`.
    pub fn zero_point(self) -> i32 {
        self.zero_point
    }

    /// `(S, Z)` for values in `[min, max]` (the range is widened to include 0), with every code
    /// of `range` dequantizing to a finite f32 (see the module docs on ranges reaching
    /// `f32::MAX`).
    ///
    /// # Errors
    /// A bound that is NaN or infinite, or `min > max`; a range whose scale cannot be a normal
    /// f32 (a code range so narrow that the step exceeds `f32::MAX`).
    pub fn from_range(min: f32, max: f32, scheme: Scheme, range: QRange) -> Result<QParams> {
        let op = "QParams::from_range";
        if !min.is_finite() || !max.is_finite() || min > max {
            return Err(QuantError::arg(op, format!("range [{min}, {max}] is not a finite, ordered range")));
        }
        let (lo, hi) = ((min as f64).min(0.0), (max as f64).max(0.0));
        let zero_point = |s: f64| match scheme {
            // Z from the scale as stored (f32), so that `lo` maps to q_min with that scale.
            Scheme::Affine => {
                (range.min as f64 - (lo / s).round_ties_even()).clamp(range.min as f64, range.max as f64) as i32
            }
            // The middle code: 0 for [−128, 127] and [−127, 127], 128 for [0, 255].
            Scheme::Symmetric => (range.min as i64 + range.max as i64 + 1).div_euclid(2) as i32,
        };
        let ideal = match scheme {
            Scheme::Affine => (hi - lo) / range.levels(),
            Scheme::Symmetric => lo.abs().max(hi) / (range.levels() / 2.0),
        };
        let mut scale = Self::clamp_scale(ideal) as f32;
        // Only ranges reaching f32::MAX need more than one round: S is lowered to f32::MAX over
        // the widest code distance (rounded down by a last ulp if the division rounded up).
        for _ in 0..8 {
            if !Self::scale_ok(scale) {
                break;
            }
            let z = zero_point(scale as f64);
            let p = QParams { scale, zero_point: z };
            if p.dequantize(range.min).is_finite() && p.dequantize(range.max).is_finite() {
                return Ok(p);
            }
            let widest = (range.min as f64 - z as f64).abs().max((range.max as f64 - z as f64).abs());
            scale = ((f32::MAX as f64 / widest) as f32).min(f32::from_bits(scale.to_bits() - 1));
        }
        Err(QuantError::arg(
            op,
            format!("range [{min}, {max}] over codes {range:?} has no normal f32 scale with finite extreme codes"),
        ))
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

    /// `S·(q − Z)` (in f64: `q − Z` spans more than i32 for extreme zero points).
    pub fn dequantize(self, q: i32) -> f32 {
        (self.scale as f64 * (q as f64 - self.zero_point as f64)) as f32
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
/// `rows · ceil(cols / g)` in row-major group order (per-group). Always consistent (see
/// [`QuantizedMatrix::from_parts`]): the kernels, `dequantize` and the checkpoint writer rely on it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    rows: usize,
    cols: usize,
    codes: Vec<i8>,
    params: Vec<QParams>,
    scheme: Scheme,
    granularity: Granularity,
}

/// Which stored part of a [`QuantizedMatrix`] an inconsistency is in (the checkpoint loader
/// names the tensor holding it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Shape,
    Codes,
    Params,
    ZeroPoints,
}

impl QuantizedMatrix {
    /// Quantizes `w` (`[rows, cols]`). Symmetric matrices use `[−127, 127]`, affine `[−128, 127]`.
    ///
    /// A matrix with no columns still gets one parameter per row (per-channel, per-group), as the
    /// integer kernels keep one per output; its rows are then backed by no data, so at most
    /// [`MAX_UNBACKED`] of them are accepted (a `2⁴⁰ × 0` weight would otherwise ask for terabytes
    /// of parameters that store nothing).
    ///
    /// # Errors
    /// A non-finite weight; a group size of 0; no columns and more than [`MAX_UNBACKED`] rows;
    /// codes or parameters that do not fit in memory (per-group parameters take twice the bytes
    /// of the f32 weight at group size 1).
    pub fn quantize(w: &Array2<f32>, scheme: Scheme, granularity: Granularity) -> Result<QuantizedMatrix> {
        let op = "QuantizedMatrix::quantize";
        let (rows, cols) = w.dim();
        let n_params = Self::param_count(rows, cols, granularity).map_err(|reason| QuantError::arg(op, reason))?;
        if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
            return Err(QuantError::arg(op, format!("weight {bad} is not finite")));
        }
        let range = Self::code_range(scheme);
        let w = w.as_standard_layout();
        let data = w.as_slice().expect("standard layout");
        let mut codes = try_with_capacity(op, data.len())?;
        codes.resize(data.len(), 0i8);
        let mut params = try_with_capacity(op, n_params)?;
        // Every group is a contiguous run of the row-major data; per-tensor is one run of all.
        let mut run = |x: &[f32], q: &mut [i8]| -> Result<()> {
            let (lo, hi) = finite_range(x);
            let p = QParams::from_range(lo, hi, scheme, range)?;
            for (c, &v) in q.iter_mut().zip(x) {
                *c = p.quantize(v, range) as i8;
            }
            params.push(p);
            Ok(())
        };
        match granularity {
            Granularity::PerTensor => run(data, &mut codes)?,
            // `chunks_exact(0)` would panic; each empty row gets its (unit) parameter.
            _ if cols == 0 => (0..rows).try_for_each(|_| run(&[], &mut []))?,
            _ => {
                let group = Self::group_len_of(granularity, cols);
                for (x, q) in data.chunks_exact(cols).zip(codes.chunks_exact_mut(cols)) {
                    x.chunks(group).zip(q.chunks_mut(group)).try_for_each(|(x, q)| run(x, q))?;
                }
            }
        }
        debug_assert_eq!(params.len(), n_params);
        Ok(QuantizedMatrix { rows, cols, codes, params, scheme, granularity })
    }

    /// How many `(S, Z)` a `rows × cols` matrix of `granularity` has (see the type's docs), checked
    /// for what every matrix must satisfy before anything is allocated: a group size of at least
    /// 1, and at most [`MAX_UNBACKED`] rows if there are no columns (then a per-channel or
    /// per-group count is the row count itself, backed by nothing stored). With columns the count
    /// is at most `rows·cols`, the number of codes.
    fn param_count(rows: usize, cols: usize, granularity: Granularity) -> std::result::Result<usize, String> {
        if cols == 0 && rows > MAX_UNBACKED {
            return Err(format!(
                "a {rows}×0 matrix: rows with no columns store nothing, and at most {MAX_UNBACKED} of them get \
                 parameters"
            ));
        }
        match granularity {
            Granularity::PerTensor => Ok(1),
            Granularity::PerChannel => Ok(rows),
            Granularity::PerGroup(0) => Err("group size must be at least 1".into()),
            // ≤ rows·cols, or = rows ≤ MAX_UNBACKED with no columns: cannot overflow.
            Granularity::PerGroup(g) => Ok(rows * cols.div_ceil(g).max(1)),
        }
    }

    /// A matrix from its stored parts (row-major `codes`, `params` as in the type's docs),
    /// checked for everything the kernels and `dequantize` rely on: one code per element, at most
    /// [`MAX_UNBACKED`] rows if there are no columns (as [`QuantizedMatrix::quantize`]), the
    /// parameter count of the granularity, zero points and codes inside the scheme's range
    /// ([`QuantizedMatrix::code_range`], which keeps the integer sums within i32), and scales
    /// with which every code dequantizes to a finite f32. A matrix from
    /// [`QuantizedMatrix::quantize`] passes.
    ///
    /// # Errors
    /// The first inconsistency, named.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        codes: Vec<i8>,
        params: Vec<QParams>,
        scheme: Scheme,
        granularity: Granularity,
    ) -> Result<QuantizedMatrix> {
        Self::build(rows, cols, codes, params, scheme, granularity)
            .map_err(|(_, reason)| QuantError::arg("QuantizedMatrix::from_parts", reason))
    }

    /// A matrix rebuilt from the parts of one that was valid (a packed kernel format unpacking
    /// what it was built from): not checked again, except in debug builds.
    pub(crate) fn from_valid_parts(
        rows: usize,
        cols: usize,
        codes: Vec<i8>,
        params: Vec<QParams>,
        scheme: Scheme,
        granularity: Granularity,
    ) -> QuantizedMatrix {
        let q = QuantizedMatrix { rows, cols, codes, params, scheme, granularity };
        debug_assert_eq!(q.check(), Ok(()));
        q
    }

    /// [`QuantizedMatrix::from_parts`] with the part each failure is in.
    pub(crate) fn build(
        rows: usize,
        cols: usize,
        codes: Vec<i8>,
        params: Vec<QParams>,
        scheme: Scheme,
        granularity: Granularity,
    ) -> std::result::Result<QuantizedMatrix, (Part, String)> {
        let q = QuantizedMatrix { rows, cols, codes, params, scheme, granularity };
        q.check()?;
        Ok(q)
    }

    fn check(&self) -> std::result::Result<(), (Part, String)> {
        let (rows, cols) = (self.rows, self.cols);
        if rows.checked_mul(cols) != Some(self.codes.len()) {
            return Err((Part::Shape, format!("{} codes for a {rows}×{cols} matrix", self.codes.len())));
        }
        let want = Self::param_count(rows, cols, self.granularity).map_err(|e| (Part::Shape, e))?;
        if want != self.params.len() {
            return Err((
                Part::Params,
                format!(
                    "{} parameters for a {} {rows}×{cols} matrix (need {want})",
                    self.params.len(),
                    self.granularity.name()
                ),
            ));
        }
        let range = self.range();
        for (i, p) in self.params.iter().enumerate() {
            let zp_ok = match self.scheme {
                Scheme::Symmetric => p.zero_point == 0,
                Scheme::Affine => range.contains(p.zero_point),
            };
            if !zp_ok {
                let allowed = if self.scheme == Scheme::Symmetric { (0, 0) } else { (range.min, range.max) };
                return Err((
                    Part::ZeroPoints,
                    format!(
                        "zero point {} at index {i} is outside {} weights' [{}, {}]",
                        p.zero_point,
                        self.scheme.name(),
                        allowed.0,
                        allowed.1
                    ),
                ));
            }
            if !(p.dequantize(range.min).is_finite() && p.dequantize(range.max).is_finite()) {
                return Err((
                    Part::Params,
                    format!(
                        "scale {} at index {i}: the dequantized weight overflows f32 (codes {range:?}, zero point {})",
                        p.scale, p.zero_point
                    ),
                ));
            }
        }
        if let Some(i) = self.codes.iter().position(|&c| !range.contains(c as i32)) {
            return Err((
                Part::Codes,
                format!(
                    "code {} at flat index {i} is outside {} weights' [{}, {}]",
                    self.codes[i],
                    self.scheme.name(),
                    range.min,
                    range.max
                ),
            ));
        }
        Ok(())
    }

    /// The code range of a scheme's weights: `[−127, 127]` symmetric (exact negation),
    /// `[−128, 127]` affine.
    pub fn code_range(scheme: Scheme) -> QRange {
        match scheme {
            Scheme::Symmetric => QRange::I8_SYMMETRIC,
            Scheme::Affine => QRange::I8,
        }
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The row-major codes.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// The scales and zero points, in the order of the type's docs.
    pub fn params(&self) -> &[QParams] {
        &self.params
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The code range ([`QuantizedMatrix::code_range`] of the scheme).
    pub fn range(&self) -> QRange {
        Self::code_range(self.scheme)
    }

    /// One `(S, Z)` per row, for kernels that keep one scale per output (at most the number of
    /// codes, or [`MAX_UNBACKED`] with no columns: see [`QuantizedMatrix::quantize`]).
    ///
    /// # Errors
    /// Per-group parameters (a row has several).
    pub fn row_params(&self) -> Result<Vec<QParams>> {
        match self.granularity {
            Granularity::PerTensor => Ok(vec![self.params[0]; self.rows]),
            Granularity::PerChannel => Ok(self.params.clone()),
            Granularity::PerGroup(g) => Err(QuantError::Unsupported(format!(
                "per-group ({g}) weights in a kernel that keeps one scale per output row (the per-group int8 kernel \
                 is `Int8Linear`'s)"
            ))),
        }
    }

    /// Inputs per `(S, Z)` within a row: the group size, clamped to the row (at least 1); the
    /// last group of a row is shorter when it does not divide `cols`.
    pub(crate) fn group_len(&self) -> usize {
        Self::group_len_of(self.granularity, self.cols)
    }

    /// Inputs per `(S, Z)` within a row (`cols` for per-tensor and per-channel).
    fn group_len_of(g: Granularity, cols: usize) -> usize {
        match g {
            Granularity::PerGroup(n) => n.min(cols.max(1)),
            _ => cols,
        }
    }

    /// The `(S, Z)` of element `(r, c)`.
    ///
    /// # Panics
    /// `r ≥ rows` (per-channel, per-group) or `c ≥ cols` (per-group).
    pub fn params_at(&self, r: usize, c: usize) -> QParams {
        match self.granularity {
            Granularity::PerTensor => self.params[0],
            Granularity::PerChannel => self.params[r],
            Granularity::PerGroup(_) => {
                let g = Self::group_len_of(self.granularity, self.cols);
                assert!(c < self.cols, "QuantizedMatrix::params_at: column {c} of {}", self.cols);
                self.params[r * self.cols.div_ceil(g) + c / g]
            }
        }
    }

    /// The dequantized matrix `S·(q − Z)` (finite: see [`QuantizedMatrix::from_parts`]).
    pub fn dequantize(&self) -> Array2<f32> {
        // Plain slice loops over each parameter's run of codes: ndarray's index iterator
        // (`from_shape_fn`) drew valgrind reports of branches on uninitialised values here.
        let mut out = Vec::with_capacity(self.codes.len());
        let mut run = |codes: &[i8], p: QParams| out.extend(codes.iter().map(|&q| p.dequantize(q as i32)));
        match self.granularity {
            Granularity::PerTensor => run(&self.codes, self.params[0]),
            // No codes (and `chunks_exact(0)` would panic).
            _ if self.cols == 0 => {}
            _ => {
                let group = Self::group_len_of(self.granularity, self.cols);
                let per_row = self.cols.div_ceil(group);
                for (row, ps) in self.codes.chunks_exact(self.cols).zip(self.params.chunks_exact(per_row)) {
                    row.chunks(group).zip(ps).for_each(|(codes, &p)| run(codes, p));
                }
            }
        }
        Array2::from_shape_vec((self.rows, self.cols), out).expect("one value per code of a rows×cols matrix")
    }

    /// Bytes stored: one per code, four per scale, one per zero point (affine only — symmetric
    /// zero points are all 0 and need no storage).
    pub fn storage_bytes(&self) -> usize {
        Self::stored_bytes(self.codes.len(), self.params.len(), self.scheme)
    }

    /// [`QuantizedMatrix::storage_bytes`] of a matrix of `codes` codes and `params` parameters,
    /// for formats that do not keep the matrix itself.
    pub(crate) fn stored_bytes(codes: usize, params: usize, scheme: Scheme) -> usize {
        let per_param = if scheme == Scheme::Affine { 5 } else { 4 };
        codes + per_param * params
    }

    /// The parameter count of a `rows × cols` matrix of `granularity` (see the type's docs),
    /// for a valid matrix's shape.
    pub(crate) fn params_len(rows: usize, cols: usize, granularity: Granularity) -> usize {
        Self::param_count(rows, cols, granularity).unwrap_or(0)
    }
}
