//! A fully integer linear layer: u8 codes in, u8 codes out, no float at run time — the form
//! integer-only accelerators run (Jacob et al. 2018, §2.2–2.4; gemmlowp).
//!
//! With input `(S₁, Z₁)`, symmetric weights `S₂[o]` (`Z₂ = 0`) and output `(S₃, Z₃)`:
//!
//! ```text
//! q₃[o] = clamp(Z₃ + M[o]·(Σᵢ (q₁ᵢ − Z₁)·q₂[o, i] + b_q[o]), 0, 255)
//! M[o]  = S₁·S₂[o] / S₃ = M₀·2⁻³¹·2⁻ⁿ   with M₀ ∈ [2³⁰, 2³¹)  (a Q31 fixed-point multiplier)
//! b_q[o] = round(b[o] / (S₁·S₂[o]))     (an int32 bias on the accumulator's scale)
//! ```
//!
//! The product is the exact i32 accumulation of [`crate::kernels`]; the multiply by `M` is one
//! 64-bit integer product and a rounding shift. Against the float formula
//! `round(Z₃ + (S₁S₂/S₃)·Σ(q₁ − Z₁)q₂ + b/S₃)` the only differences are the rounding of `b_q` and
//! of `M₀` (relative 2⁻³¹), so results agree exactly except within a hair of a rounding tie, and
//! never by more than one code (tested).

use crate::error::{try_with_capacity, QuantError, Result};
use crate::kernels::{IntLevel, PackedI8};
use crate::scheme::{QParams, QuantizedMatrix, Scheme};

/// `M = M₀·2⁻³¹·2⁻ⁿ` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPointMultiplier {
    /// In `[2³⁰, 2³¹)`.
    pub m0: i32,
    /// `n`: a right shift after the Q31 product (negative: a left shift, for `M ≥ 1`).
    pub shift: i32,
}

impl FixedPointMultiplier {
    /// The multiplier nearest `m`.
    ///
    /// # Errors
    /// `m` not finite and positive, or outside `[2⁻³⁰, 2³⁰]` (far beyond any scale ratio).
    pub fn new(m: f64) -> Result<FixedPointMultiplier> {
        if !(m.is_finite() && (2f64.powi(-30)..=2f64.powi(30)).contains(&m)) {
            return Err(QuantError::arg(
                "FixedPointMultiplier::new",
                format!("multiplier {m} is outside [2^-30, 2^30]"),
            ));
        }
        // m = f·2^e with f in [0.5, 1).
        let mut e = m.log2().floor() as i32 + 1;
        let mut f = m / 2f64.powi(e);
        if f >= 1.0 {
            f /= 2.0;
            e += 1;
        } else if f < 0.5 {
            f *= 2.0;
            e -= 1;
        }
        let mut m0 = (f * 2f64.powi(31)).round() as i64;
        if m0 == 1 << 31 {
            m0 = 1 << 30;
            e += 1;
        }
        Ok(FixedPointMultiplier { m0: m0 as i32, shift: -e })
    }

    /// The value this multiplier represents exactly.
    pub fn value(self) -> f64 {
        // i64: the fields are public, and −31 − i32::MIN overflows i32 (beyond ±2¹⁰²⁴ the power
        // is 0 or ∞ anyway).
        let e = (-31 - self.shift as i64).clamp(-2000, 2000) as i32;
        self.m0 as f64 * 2f64.powi(e)
    }

    /// `x·M` rounded to the nearest integer, ties away from zero, saturated to i32.
    pub fn apply(self, x: i32) -> i32 {
        let prod = x as i128 * self.m0 as i128;
        // i64: a hand-built shift near i32::MAX must not overflow the sum.
        let total = 31 + self.shift as i64;
        let r = if total <= 0 {
            // |prod| < 2⁶², so a shift capped at 64 fits i128; saturation happens below.
            prod * (1i128 << (-total).min(64))
        } else if total >= 126 {
            // Shifted past every bit of a 63-bit product (a hand-built multiplier).
            0
        } else {
            let half = 1i128 << (total - 1);
            let mag = (prod.abs() + half) >> total;
            if prod < 0 {
                -mag
            } else {
                mag
            }
        };
        r.clamp(i32::MIN as i128, i32::MAX as i128) as i32
    }
}

/// The fully integer layer (see the module docs).
#[derive(Debug, Clone)]
pub struct IntegerLinear {
    packed: PackedI8,
    code_sums: Vec<i32>,
    bias: Vec<i32>,
    multipliers: Vec<FixedPointMultiplier>,
    input: QParams,
    output: QParams,
    level: IntLevel,
    /// `S₁·S₂[o]/S₃` in f64, for [`IntegerLinear::float_reference`].
    ratios: Vec<f64>,
    /// `b[o]/S₃` in f64, likewise.
    bias_out: Vec<f64>,
}

impl IntegerLinear {
    /// From symmetric int8 weights, an f32 bias, and the u8 affine input and output parameters.
    ///
    /// # Errors
    /// Affine or per-group weights, a bias of the wrong length or not finite, parameters that are
    /// not u8 affine maps, or a scale ratio outside what a fixed-point multiplier holds.
    pub fn new(
        weight: &QuantizedMatrix,
        bias: Option<&[f32]>,
        input: QParams,
        output: QParams,
    ) -> Result<IntegerLinear> {
        let op = "IntegerLinear::new";
        let (out_f, in_f) = (weight.rows(), weight.cols());
        if weight.scheme() != Scheme::Symmetric || matches!(weight.granularity(), crate::Granularity::PerGroup(_)) {
            return Err(QuantError::arg(op, "weights must be symmetric, per-tensor or per-channel"));
        }
        let per_out = weight.row_params()?;
        for (what, p) in [("input", input), ("output", output)] {
            if !p.is_u8_affine() {
                return Err(QuantError::arg(op, format!("{what} parameters {p:?} are not a u8 affine map")));
            }
        }
        if let Some(b) = bias {
            if b.len() != out_f || b.iter().any(|v| !v.is_finite()) {
                return Err(QuantError::arg(
                    op,
                    format!("bias of {} values for {out_f} outputs (all finite)", b.len()),
                ));
            }
        }
        let packed = PackedI8::new(weight.codes(), out_f, in_f)?;
        let code_sums = crate::linear::row_code_sums(weight.codes(), out_f, in_f);
        let (mut bias_q, mut multipliers, mut ratios, mut bias_out) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (o, w) in per_out.iter().enumerate() {
            let s_acc = input.scale() as f64 * w.scale() as f64;
            let b = bias.map_or(0.0, |b| b[o] as f64);
            let bq = (b / s_acc).round();
            if bq.abs() > (1i64 << 30) as f64 {
                return Err(QuantError::arg(op, format!("bias {b} is too large for an int32 bias at scale {s_acc}")));
            }
            bias_q.push(bq as i32);
            ratios.push(s_acc / output.scale() as f64);
            bias_out.push(b / output.scale() as f64);
            multipliers.push(FixedPointMultiplier::new(s_acc / output.scale() as f64)?);
        }
        Ok(IntegerLinear {
            packed,
            code_sums,
            bias: bias_q,
            multipliers,
            input,
            output,
            level: IntLevel::current(),
            ratios,
            bias_out,
        })
    }

    /// Runs the product at `level` (clamped to what the CPU has).
    pub fn with_level(mut self, level: IntLevel) -> IntegerLinear {
        self.level = level.min(IntLevel::detected());
        self
    }

    /// The fixed-point multipliers, one per output.
    pub fn multipliers(&self) -> &[FixedPointMultiplier] {
        &self.multipliers
    }

    /// Checks `rows` rows against `a.len()` input codes and `out` output codes (checked
    /// products); returns `rows·out_f`.
    fn check(&self, a: &[u8], rows: usize, out: usize) -> Result<usize> {
        let (out_f, in_f) = self.packed.shape();
        match (rows.checked_mul(in_f), rows.checked_mul(out_f)) {
            (Some(n_in), Some(n_out)) if a.len() >= n_in && out >= n_out => Ok(n_out),
            _ => Err(QuantError::arg(
                "IntegerLinear",
                format!("{rows} rows of {in_f} input and {out_f} output codes; got {} and {out}", a.len()),
            )),
        }
    }

    /// `q₃` for `rows` rows of input codes `a` (`rows × in`) into `out` (`rows × out`). Allocates
    /// its padded input and accumulators per call: this layer shows the integer pipeline end to
    /// end; the decode path is [`crate::Int8Linear`].
    ///
    /// # Errors
    /// Slices too short for `rows` rows.
    pub fn forward(&self, a: &[u8], rows: usize, out: &mut [u8]) -> Result<()> {
        // No outputs: nothing to write (and with no inputs either, `rows` bounds nothing).
        if self.check(a, rows, out.len())? == 0 {
            return Ok(());
        }
        let (out_f, in_f) = self.packed.shape();
        let (kb, cols) = (self.packed.row_bytes(), self.packed.acc_cols());
        // rows ≤ out.len()/out_f, and kb, cols < in_f + 4, out_f + 16: neither product overflows.
        let mut padded = vec![0u8; rows * kb];
        for r in 0..rows {
            padded[r * kb..r * kb + in_f].copy_from_slice(&a[r * in_f..(r + 1) * in_f]);
        }
        let mut acc = vec![0i32; rows * cols];
        self.packed.matmul(self.level, &padded, rows, &mut acc)?;
        let z1 = self.input.zero_point();
        for r in 0..rows {
            for o in 0..out_f {
                // Exact: |Σ (q₁ − Z₁)q₂| < 2³¹ (PackedI8's MAX_K) and |b_q| ≤ 2³⁰, summed in i64.
                let t = acc[r * cols + o] as i64 - z1 as i64 * self.code_sums[o] as i64 + self.bias[o] as i64;
                let t = t.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                let y = self.output.zero_point() as i64 + self.multipliers[o].apply(t) as i64;
                out[r * out_f + o] = y.clamp(0, 255) as u8;
            }
        }
        Ok(())
    }

    /// The float formula: `clamp(round(Z₃ + (S₁S₂/S₃)·Σ(q₁ − Z₁)q₂ + b/S₃), 0, 255)` in f64.
    ///
    /// # Errors
    /// As [`IntegerLinear::forward`]; a result over no inputs (`in = 0`) of more than
    /// [`crate::kernels::MAX_UNBACKED`] codes; a `rows·out` result that does not fit in memory
    /// (`a` bounds `rows`, the weight `out`, but not their product).
    pub fn float_reference(&self, a: &[u8], rows: usize) -> Result<Vec<u8>> {
        let op = "IntegerLinear::float_reference";
        let (out_f, in_f) = self.packed.shape();
        // Checked product rows·out_f (with no output buffer to bound it).
        let n = self.check(a, rows, usize::MAX)?;
        if in_f == 0 && n > crate::kernels::MAX_UNBACKED {
            return Err(QuantError::arg(
                op,
                format!("{rows}×{out_f} results over no inputs (at most {})", crate::kernels::MAX_UNBACKED),
            ));
        }
        let mut out = try_with_capacity(op, n)?;
        // No outputs: nothing to compute (and with no inputs either, `rows` bounds nothing).
        if n == 0 {
            return Ok(out);
        }
        for r in 0..rows {
            for o in 0..out_f {
                let dot: i64 = (0..in_f)
                    .map(|i| (a[r * in_f + i] as i64 - self.input.zero_point() as i64) * self.packed.code(o, i) as i64)
                    .sum();
                let y = self.output.zero_point() as f64 + self.ratios[o] * dot as f64 + self.bias_out[o];
                out.push(y.round().clamp(0.0, 255.0) as u8);
            }
        }
        Ok(out)
    }
}
