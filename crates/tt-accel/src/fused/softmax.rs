//! Softmax of one row: online max and sum, then one write pass.

use crate::dispatch::{self, Level};
use tt_tensor::{Result, TensorError};

/// Softmax of one row in place, at the dispatched level.
///
/// Fused: one pass keeps a running maximum `m` and a running sum `s` of `exp(x − m)` (when `m`
/// grows, `s` is multiplied by `exp(m_old − m_new)`), per SIMD lane and per block of values so
/// the rescale costs one `exp` per block; a second pass writes `exp(x − m)/s`. Entries of `−∞`
/// get probability 0; logits of any finite magnitude are safe (nothing is exponentiated above 0).
/// An empty row is left as is.
///
/// # Errors
/// `InvalidArgument` (row unchanged) if the row contains NaN or `+∞`, or every entry is `−∞` —
/// softmax is undefined there (the unfused `softmax_row` would fill the row with NaN).
pub fn softmax(row: &mut [f32]) -> Result<()> {
    softmax_at(dispatch::level(), row)
}

/// [`softmax`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`softmax`].
pub fn softmax_at(level: Level, row: &mut [f32]) -> Result<()> {
    if row.is_empty() {
        return Ok(());
    }
    let level = level.min(dispatch::level());
    let (max, sum) = match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::softmax_stats(row) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::softmax_stats(row) },
        _ => scalar::softmax_stats(row),
    };
    // Every term is exp(≤ 0) ≤ 1 and the maximum contributes exactly 1, so a valid row has
    // 1 ≤ sum ≤ len. NaN or +∞ inputs make it NaN; an all −∞ row leaves it 0.
    if sum.is_nan() || sum <= 0.0 {
        return Err(TensorError::InvalidArgument {
            op: "fused::softmax",
            reason: "row contains NaN or +inf, or only -inf: softmax is undefined".into(),
        });
    }
    let inv = 1.0 / sum;
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX-512F is available.
        Level::Avx512 => unsafe { avx512::softmax_write(row, max, inv) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX2 and FMA are available.
        Level::Avx2 => unsafe { avx2::softmax_write(row, max, inv) },
        _ => scalar::softmax_write(row, max, inv),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scalar level: the same fused algorithms, one lane at a time
// ---------------------------------------------------------------------------------------------

mod scalar {
    use tt_tensor::kernels::exp_fast;

    /// Online `(max, Σ exp(x − max))` in blocks of 16: one rescale `exp` per block.
    pub(super) fn softmax_stats(row: &[f32]) -> (f32, f32) {
        // A finite start so `m_old − m_new` is never `−∞ − (−∞)`; −∞ entries never raise it.
        let (mut m, mut s) = (-f32::MAX, 0.0f32);
        let mut e = [0.0f32; 16];
        for block in row.chunks(16) {
            let bm = block.iter().fold(m, |a, &b| a.max(b));
            // The exponentials into a fixed array (a loop the compiler can vectorize), then
            // summed as a tree; a running `sum += exp(..)` would serialize on the add.
            e.fill(0.0);
            for (ei, &x) in e.iter_mut().zip(block) {
                *ei = exp_fast(x - bm);
            }
            let mut w = 16;
            while w > 1 {
                w /= 2;
                for i in 0..w {
                    e[i] += e[i + w];
                }
            }
            s = s * exp_fast(m - bm) + e[0];
            m = bm;
        }
        (m, s)
    }

    pub(super) fn softmax_write(row: &mut [f32], max: f32, inv: f32) {
        for v in row.iter_mut() {
            *v = exp_fast(*v - max) * inv;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512F level: 16 lanes, masked loads and stores for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::fused::simd::avx512::{exp, mask, L};
    use std::arch::x86_64::*;

    /// Per-lane running `(m, s)`; four vectors (64 values) share one rescale.
    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax_stats(row: &[f32]) -> (f32, f32) {
        let n = row.len();
        let p = row.as_ptr();
        // Finite start so `m − m_new` is never `−∞ − (−∞)`; padding lanes are −∞ (weight 0).
        let mut m = _mm512_set1_ps(-f32::MAX);
        let mut s = _mm512_setzero_ps();
        let mut i = 0;
        while i + 4 * L <= n {
            // SAFETY: i + 64 ≤ n, so the four loads read row[i..i + 64].
            let (x0, x1, x2, x3) = unsafe {
                (
                    _mm512_loadu_ps(p.add(i)),
                    _mm512_loadu_ps(p.add(i + L)),
                    _mm512_loadu_ps(p.add(i + 2 * L)),
                    _mm512_loadu_ps(p.add(i + 3 * L)),
                )
            };
            let mn = _mm512_max_ps(m, _mm512_max_ps(_mm512_max_ps(x0, x1), _mm512_max_ps(x2, x3)));
            let e01 = _mm512_add_ps(exp(_mm512_sub_ps(x0, mn)), exp(_mm512_sub_ps(x1, mn)));
            let e23 = _mm512_add_ps(exp(_mm512_sub_ps(x2, mn)), exp(_mm512_sub_ps(x3, mn)));
            s = _mm512_fmadd_ps(s, exp(_mm512_sub_ps(m, mn)), _mm512_add_ps(e01, e23));
            m = mn;
            i += 4 * L;
        }
        while i < n {
            // SAFETY: i < n and the mask enables only lanes inside `row`; the others are −∞.
            let x = unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask(n - i), p.add(i)) };
            let mn = _mm512_max_ps(m, x);
            s = _mm512_fmadd_ps(s, exp(_mm512_sub_ps(m, mn)), exp(_mm512_sub_ps(x, mn)));
            m = mn;
            i += L;
        }
        let max = _mm512_reduce_max_ps(m);
        let sum = _mm512_reduce_add_ps(_mm512_mul_ps(s, exp(_mm512_sub_ps(m, _mm512_set1_ps(max)))));
        (max, sum)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax_write(row: &mut [f32], max: f32, inv: f32) {
        let (n, p) = (row.len(), row.as_mut_ptr());
        let (mv, iv) = (_mm512_set1_ps(max), _mm512_set1_ps(inv));
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes inside `row`.
            unsafe {
                let x = _mm512_maskz_loadu_ps(k, p.add(i));
                _mm512_mask_storeu_ps(p.add(i), k, _mm512_mul_ps(exp(_mm512_sub_ps(x, mv)), iv));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA level: 8 lanes, `maskload`/`maskstore` for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::fused::simd::avx2::{exp, hmax, hsum, mask, L};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_stats(row: &[f32]) -> (f32, f32) {
        let n = row.len();
        let p = row.as_ptr();
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut m = _mm256_set1_ps(-f32::MAX);
        let mut s = _mm256_setzero_ps();
        let mut i = 0;
        while i + 4 * L <= n {
            // SAFETY: i + 32 ≤ n, so the four loads read row[i..i + 32].
            let (x0, x1, x2, x3) = unsafe {
                (
                    _mm256_loadu_ps(p.add(i)),
                    _mm256_loadu_ps(p.add(i + L)),
                    _mm256_loadu_ps(p.add(i + 2 * L)),
                    _mm256_loadu_ps(p.add(i + 3 * L)),
                )
            };
            let mn = _mm256_max_ps(m, _mm256_max_ps(_mm256_max_ps(x0, x1), _mm256_max_ps(x2, x3)));
            let e01 = _mm256_add_ps(exp(_mm256_sub_ps(x0, mn)), exp(_mm256_sub_ps(x1, mn)));
            let e23 = _mm256_add_ps(exp(_mm256_sub_ps(x2, mn)), exp(_mm256_sub_ps(x3, mn)));
            s = _mm256_fmadd_ps(s, exp(_mm256_sub_ps(m, mn)), _mm256_add_ps(e01, e23));
            m = mn;
            i += 4 * L;
        }
        while i < n {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes inside `row`; the others become −∞.
            let x = unsafe { _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(p.add(i), k), _mm256_castsi256_ps(k)) };
            let mn = _mm256_max_ps(m, x);
            s = _mm256_fmadd_ps(s, exp(_mm256_sub_ps(m, mn)), exp(_mm256_sub_ps(x, mn)));
            m = mn;
            i += L;
        }
        let max = hmax(m);
        let sum = hsum(_mm256_mul_ps(s, exp(_mm256_sub_ps(m, _mm256_set1_ps(max)))));
        (max, sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_write(row: &mut [f32], max: f32, inv: f32) {
        let (n, p) = (row.len(), row.as_mut_ptr());
        let (mv, iv) = (_mm256_set1_ps(max), _mm256_set1_ps(inv));
        let mut i = 0;
        while i + L <= n {
            // SAFETY: i + 8 ≤ n.
            unsafe {
                let x = _mm256_loadu_ps(p.add(i));
                _mm256_storeu_ps(p.add(i), _mm256_mul_ps(exp(_mm256_sub_ps(x, mv)), iv));
            }
            i += L;
        }
        if i < n {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes inside `row`.
            unsafe {
                let x = _mm256_maskload_ps(p.add(i), k);
                _mm256_maskstore_ps(p.add(i), k, _mm256_mul_ps(exp(_mm256_sub_ps(x, mv)), iv));
            }
        }
    }
}
