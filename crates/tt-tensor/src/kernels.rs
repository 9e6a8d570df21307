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

/// tanh-form GELU: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

/// Derivative of [`gelu_tanh`].
#[inline]
pub fn gelu_tanh_grad(x: f32) -> f32 {
    const C: f32 = 0.797_884_6;
    let u = C * (x + 0.044715 * x * x * x);
    let t = u.tanh();
    let du = C * (1.0 + 3.0 * 0.044715 * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

/// Numerically stable softmax of one row, in place (subtracts the row max before exp).
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
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
