//! Plain-array kernels with no autograd bookkeeping.
//!
//! These are the reference building blocks that both the differentiable ops and inference paths
//! use, and that performance modules replace layer by layer. All matrix products go through
//! `matrixmultiply::sgemm`; no op runs a scalar triple loop.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// `C = alpha * A·B + beta * C` on 2-D views of any strides (transposes are free: pass `.t()`).
pub fn gemm(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, mut c: ArrayViewMut2<f32>) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "gemm inner dimensions");
    assert_eq!(c.dim(), (m, n), "gemm output shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.mapv_inplace(|v| v * beta);
        return;
    }
    let (rsa, csa) = (a.strides()[0], a.strides()[1]);
    let (rsb, csb) = (b.strides()[0], b.strides()[1]);
    let (rsc, csc) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose dims were checked above,
    // so every index sgemm computes (i*rs + j*cs for i<rows, j<cols) is inside its view. `c` is a
    // unique mutable view, so it does not alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
        );
    }
}

/// `A·B` into a new array.
pub fn matmul2(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    gemm(1.0, a, b, 0.0, c.view_mut());
    c
}

/// Output size of a convolution or pooling window along one axis.
pub fn conv_out_size(input: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = input + 2 * padding;
    if stride == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

/// Geometry of a 2-D convolution over one image.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeom {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
    pub h_out: usize,
    pub w_out: usize,
}

/// Unfolds one image `[c_in, h, w]` into columns `[c_in*kh*kw, h_out*w_out]` (zero padding).
pub fn im2col(img: &[f32], g: &ConvGeom, cols: &mut [f32]) {
    let hw_out = g.h_out * g.w_out;
    debug_assert_eq!(cols.len(), g.c_in * g.kh * g.kw * hw_out);
    for c in 0..g.c_in {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut cols[row * hw_out..(row + 1) * hw_out];
                for oy in 0..g.h_out {
                    let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                    let out_row = &mut dst[oy * g.w_out..(oy + 1) * g.w_out];
                    if iy < 0 || iy >= g.h as isize {
                        out_row.fill(0.0);
                        continue;
                    }
                    let src = &img[(c * g.h + iy as usize) * g.w..(c * g.h + iy as usize + 1) * g.w];
                    for (ox, o) in out_row.iter_mut().enumerate() {
                        let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                        *o = if ix < 0 || ix >= g.w as isize { 0.0 } else { src[ix as usize] };
                    }
                }
            }
        }
    }
}

/// Adjoint of [`im2col`]: scatters-adds columns back into an image gradient `[c_in, h, w]`.
pub fn col2im(cols: &[f32], g: &ConvGeom, img: &mut [f32]) {
    let hw_out = g.h_out * g.w_out;
    for c in 0..g.c_in {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &cols[row * hw_out..(row + 1) * hw_out];
                for oy in 0..g.h_out {
                    let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let base = (c * g.h + iy as usize) * g.w;
                    for ox in 0..g.w_out {
                        let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                        if ix >= 0 && (ix as usize) < g.w {
                            img[base + ix as usize] += src[oy * g.w_out + ox];
                        }
                    }
                }
            }
        }
    }
}

/// `e^x` without a libm call, so loops over slices vectorize: `x = n·ln2 + r` with `n` rounded
/// by the 1.5·2²³ trick and `|r| ≤ ln2/2`, `e^r` by its degree-6 Taylor polynomial (truncation
/// error `r⁷/7! < 1.1e-7` relative), then scaled by `2ⁿ` through the exponent bits.
/// Over/underflows like `f32::exp`: +∞ above 88.72, 0 below −87.33. Checked against `f32::exp`.
#[inline]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // ln2 split so n·LN2_HI is exact for |n| < 2^9
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let xc = x.clamp(-87.33, 88.72);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * scale;
    if x > 88.72 {
        f32::INFINITY
    } else if x < -87.33 {
        0.0
    } else {
        y
    }
}

/// tanh-form GELU, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, evaluated as the identical
/// `x·σ(2u)` (since `0.5·(1 + tanh u) = σ(2u)`): one `exp` instead of a slower `tanh`.
/// For x → −∞, `exp` overflows to +∞ and the result is −0, as the limit requires.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C2: f32 = 2.0 * 0.797_884_6; // 2·sqrt(2/pi)
    x / (1.0 + exp_fast(-C2 * (x + 0.044715 * x * x * x)))
}

/// Derivative of [`gelu_tanh`]: `s + x·s·(1 − s)·2u'`, with `s = σ(2u)`, `u' = √(2/π)(1 + 3·0.044715·x²)`.
#[inline]
pub fn gelu_tanh_grad(x: f32) -> f32 {
    const C: f32 = 0.797_884_6;
    let s = 1.0 / (1.0 + exp_fast(-2.0 * C * (x + 0.044715 * x * x * x)));
    let du = C * (1.0 + 3.0 * 0.044715 * x * x);
    s + x * s * (1.0 - s) * 2.0 * du
}

/// Index of the first maximum; NaN never wins (0 for an empty or all-NaN input). Takes a slice or
/// any iterator of `&f32` (e.g. a strided ndarray lane), so no copy is needed.
pub fn argmax<'a>(v: impl IntoIterator<Item = &'a f32>) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.into_iter().enumerate() {
        if x > best_v {
            best = i;
            best_v = x;
        }
    }
    best
}

/// Numerically stable softmax of one row, in place (subtracts the row max before exp).
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = exp_fast(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Layer normalization of one row with affine parameters; returns (mean, 1/std).
pub fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for i in 0..x.len() {
        out[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
    }
    (mean, rstd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_matches_libm() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_fast(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        // A few ulp (f32 ulp is 1.2e-7 relative).
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert_eq!(exp_fast(100.0), f32::INFINITY);
        assert_eq!(exp_fast(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_fast(-100.0), 0.0);
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        // GELU's x → −∞ limit is −0 and stays finite.
        assert_eq!(gelu_tanh(-1e30), 0.0);
        assert_eq!(gelu_tanh(1e3), 1e3);
    }
}
