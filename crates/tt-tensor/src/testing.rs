//! Test helpers shared by every crate: finite-difference gradient checks and approximate equality.

use crate::error::Result;
use crate::tensor::{Array, Tensor};

/// Result of a gradient check: the worst discrepancy found.
#[derive(Debug, Clone)]
pub struct GradCheck {
    pub max_abs_err: f32,
    pub max_rel_err: f32,
    pub worst: String,
}

/// Compares autograd gradients of `sum(f(inputs) ⊙ r)` (r fixed random weights, so every output
/// element matters) with central differences `(L(x+ε) − L(x−ε)) / 2ε`, for every element of every
/// input. Passes when each element satisfies `|analytic − numeric| ≤ atol + rtol·|numeric|`.
///
/// Differences are taken in f32 with ε = 1e-2 by default: ε must be large enough that f32 rounding
/// of L (relative 6e-8) divided by ε stays far below the tolerance, and small enough that the O(ε²)
/// truncation error of central differences on smooth ops stays below it too.
pub fn grad_check(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    eps: f32,
    atol: f32,
    rtol: f32,
) -> Result<GradCheck> {
    for t in inputs {
        t.zero_grad();
        t.set_requires_grad(true);
    }
    let out = f(inputs)?;
    let r = Tensor::rand_uniform(&out.shape(), 0.5, 1.5, 12345);
    let loss = |ins: &[Tensor]| -> Result<f64> {
        let o = crate::no_grad(|| f(ins))?;
        let total = o.data().iter().zip(r.data().iter()).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
        Ok(total)
    };
    out.mul(&r)?.sum().backward()?;
    let mut report = GradCheck { max_abs_err: 0.0, max_rel_err: 0.0, worst: String::new() };
    for (k, t) in inputs.iter().enumerate() {
        let analytic = t.grad().unwrap_or_else(|| Array::zeros(t.data().raw_dim()));
        let n = t.numel();
        for i in 0..n {
            let orig = t.data().as_slice().expect("std")[i];
            t.data_mut().as_slice_mut().expect("std")[i] = orig + eps;
            let lp = loss(inputs)?;
            t.data_mut().as_slice_mut().expect("std")[i] = orig - eps;
            let lm = loss(inputs)?;
            t.data_mut().as_slice_mut().expect("std")[i] = orig;
            let numeric = ((lp - lm) / (2.0 * eps as f64)) as f32;
            let a = analytic.as_slice().expect("std")[i];
            let abs = (a - numeric).abs();
            let rel = abs / numeric.abs().max(1e-6);
            if abs > atol + rtol * numeric.abs() && abs > report.max_abs_err {
                report.worst = format!("input {k} element {i}: analytic {a}, numeric {numeric}");
            }
            report.max_abs_err = report.max_abs_err.max(abs);
            if abs > atol {
                report.max_rel_err = report.max_rel_err.max(rel);
            }
        }
    }
    Ok(report)
}

/// Asserts a gradient check passes with the given tolerances; panics with the worst element.
pub fn assert_grads(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], atol: f32, rtol: f32) {
    let r = grad_check(f, inputs, 1e-2, atol, rtol).expect("gradient check ran");
    assert!(r.worst.is_empty(), "gradient check failed: {} (max abs err {})", r.worst, r.max_abs_err);
}

/// Largest absolute elementwise difference (∞ when shapes differ).
pub fn max_abs_diff(a: &Array, b: &Array) -> f32 {
    if a.shape() != b.shape() {
        return f32::INFINITY;
    }
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_check_catches_a_wrong_derivative() {
        let x = Tensor::from_vec(vec![0.3, -0.7, 1.2], &[3]).unwrap();
        // Correct: d/dx x² = 2x.
        let ok =
            grad_check(|i| Ok(i[0].unary("sq", 1, |v| v * v, |v| 2.0 * v)), std::slice::from_ref(&x), 1e-2, 1e-3, 1e-2)
                .unwrap();
        assert!(ok.worst.is_empty(), "{}", ok.worst);
        // Wrong by 10%: must be reported.
        let bad = grad_check(|i| Ok(i[0].unary("sq", 1, |v| v * v, |v| 2.2 * v)), &[x], 1e-2, 1e-3, 1e-2).unwrap();
        assert!(!bad.worst.is_empty());
    }
}

/// A [`Projection`](crate::Projection) for seam tests: the weight stored **transposed**
/// (`[in, out]`) in **f64**, inputs widened to f64 in the caller's workspace — a different layout,
/// arithmetic and workspace use from [`DenseF32`](crate::projection::DenseF32), so a model that
/// still computes the same function through it shows the seam works, not a shortcut.
/// [`TransposedF64::wrong`] adds a deliberate error to output 0, for tests that must fail.
#[derive(Debug, Clone)]
pub struct TransposedF64 {
    wt: Vec<f64>,
    out_f: usize,
    in_f: usize,
    error: f64,
}

impl TransposedF64 {
    /// The same matrix as `p`.
    pub fn of(p: &dyn crate::Projection) -> TransposedF64 {
        Self::wrong(p, 0.0)
    }
    /// The same matrix as `p`, but `error` is added to output 0 of every row.
    pub fn wrong(p: &dyn crate::Projection, error: f32) -> TransposedF64 {
        let w = p.to_dense();
        let (out_f, in_f) = w.dim();
        TransposedF64 { wt: w.t().iter().map(|&v| v as f64).collect(), out_f, in_f, error: error as f64 }
    }
}

impl crate::Projection for TransposedF64 {
    fn shape(&self) -> (usize, usize) {
        (self.out_f, self.in_f)
    }
    fn workspace_len(&self, rows: usize) -> usize {
        // Slack for aligning the f64 view inside an unaligned byte buffer.
        8 * rows * self.in_f + 8
    }
    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8]) {
        // SAFETY: every bit pattern is a valid f64, and align_to_mut only hands out the aligned
        // middle part of the buffer.
        let (_, xs, _) = unsafe { ws.align_to_mut::<f64>() };
        let (n, o) = (self.in_f, self.out_f);
        for (dst, &v) in xs[..rows * n].iter_mut().zip(&x[..rows * n]) {
            *dst = v as f64;
        }
        for r in 0..rows {
            for j in 0..o {
                let mut s = bias.map_or(0.0, |b| b[j] as f64);
                for i in 0..n {
                    s += xs[r * n + i] * self.wt[i * o + j];
                }
                y[r * o + j] = (s + if j == 0 { self.error } else { 0.0 }) as f32;
            }
        }
    }
    fn to_dense(&self) -> ndarray::Array2<f32> {
        ndarray::Array2::from_shape_fn((self.out_f, self.in_f), |(j, i)| self.wt[i * self.out_f + j] as f32)
    }
    fn storage_bytes(&self) -> usize {
        8 * self.wt.len()
    }
    fn format(&self) -> &'static str {
        "f64-transposed"
    }
}

/// A forward transform that doubles the weight: a layer carrying it computes something other
/// than its stored weight — what tests of "refuse a layer with a transform" install.
#[derive(Debug)]
pub struct DoubledWeight;

impl crate::nn::ForwardTransform for DoubledWeight {
    fn weight(&self, w: &Tensor) -> Result<Tensor> {
        Ok(w.mul_scalar(2.0))
    }
    fn input(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn name(&self) -> &'static str {
        "doubled"
    }
}
