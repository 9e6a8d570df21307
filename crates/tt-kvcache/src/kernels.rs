//! Small inference kernels for the decoder. Each has a reference it is tested against.

use ndarray::{ArrayView2, ArrayViewMut2};

/// Dot product with 8 independent accumulators so the compiler can vectorize the reduction
/// (a single accumulator forces one sequential add chain).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Rows at or above which a projection uses GEMM (packing pays off) instead of dot products.
pub const GEMM_MIN_ROWS: usize = 8;

/// `y[r, :] = x[r, :] · Wᵀ + b` for `rows` rows; `w` is `[out, in]` row-major.
/// Few rows (decode): each weight row is loaded once and dotted with every input row.
/// Many rows (prefill): one GEMM.
pub fn linear_rows(x: &[f32], w: &[f32], b: &[f32], rows: usize, in_f: usize, out_f: usize, y: &mut [f32]) {
    debug_assert!(x.len() >= rows * in_f && w.len() == out_f * in_f && b.len() == out_f && y.len() >= rows * out_f);
    if rows >= GEMM_MIN_ROWS {
        let xv = ArrayView2::from_shape((rows, in_f), &x[..rows * in_f]).expect("sized");
        let wv = ArrayView2::from_shape((out_f, in_f), w).expect("sized");
        for r in 0..rows {
            y[r * out_f..(r + 1) * out_f].copy_from_slice(b);
        }
        let yv = ArrayViewMut2::from_shape((rows, out_f), &mut y[..rows * out_f]).expect("sized");
        tt_tensor::kernels::gemm(1.0, xv, wv.t(), 1.0, yv);
        return;
    }
    for o in 0..out_f {
        let wr = &w[o * in_f..(o + 1) * in_f];
        for r in 0..rows {
            y[r * out_f + o] = dot(wr, &x[r * in_f..(r + 1) * in_f]) + b[o];
        }
    }
}

/// Reference for [`linear_rows`]: straightforward sums in index order.
pub fn linear_rows_reference(x: &[f32], w: &[f32], b: &[f32], rows: usize, in_f: usize, out_f: usize) -> Vec<f32> {
    let mut y = vec![0.0; rows * out_f];
    for r in 0..rows {
        for o in 0..out_f {
            let mut s = b[o];
            for i in 0..in_f {
                s += x[r * in_f + i] * w[o * in_f + i];
            }
            y[r * out_f + o] = s;
        }
    }
    y
}
