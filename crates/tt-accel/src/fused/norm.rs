//! Layer norm (see the [module docs](super) for the fused algorithm and its numerics).

use super::{invalid_shape, mismatch};
use crate::dispatch::{self, Level};
use tt_tensor::{Result, TensorError};

/// Layer normalization of one row, `out = (x − mean)/√(var + eps)·γ + β`, returning
/// `(mean, 1/√(var + eps))` like [`tt_tensor::kernels::layer_norm_row`], at the dispatched level.
///
/// Fused: one pass computes Σx and Σx² (in f64 lanes, see the module docs), one pass normalizes.
///
/// # Errors
/// `InvalidShape` for an empty row, `ShapeMismatch` if `gamma`, `beta` or `out` differs in length
/// from `x`, `InvalidArgument` unless `eps` is positive and finite (it is what keeps a
/// constant row finite).
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> Result<(f32, f32)> {
    layer_norm_at(dispatch::level(), x, gamma, beta, eps, out)
}

/// [`layer_norm`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`layer_norm`].
pub fn layer_norm_at(
    level: Level,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(f32, f32)> {
    check_layer_norm("fused::layer_norm", x, gamma, beta, eps, out)?;
    Ok(match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::layer_norm(x, gamma, beta, eps, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::layer_norm(x, gamma, beta, eps, out) },
        _ => scalar::layer_norm(x, gamma, beta, eps, out),
    })
}

pub(super) fn check_layer_norm(
    op: &'static str,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &[f32],
) -> Result<()> {
    if x.is_empty() {
        return Err(invalid_shape(op, &[0], "empty row"));
    }
    for len in [gamma.len(), beta.len(), out.len()] {
        if len != x.len() {
            return Err(mismatch(op, x.len(), len));
        }
    }
    if !eps.is_finite() || eps <= 0.0 {
        return Err(TensorError::InvalidArgument { op, reason: format!("eps must be positive and finite, got {eps}") });
    }
    Ok(())
}

/// `(mean, 1/√(var + eps))` from f64 sums of `x` and `x²` over `n` values. The variance is
/// clamped at 0 (rounding can leave `E[x²] − mean²` a hair negative for a constant row).
#[inline]
fn finish_stats(s1: f64, s2: f64, n: usize, eps: f32) -> (f32, f32) {
    let n = n as f64;
    let mean = s1 / n;
    let var = (s2 / n - mean * mean).max(0.0);
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

// ---------------------------------------------------------------------------------------------
// Scalar level: the same fused algorithms, one lane at a time
// ---------------------------------------------------------------------------------------------

mod scalar {
    use super::finish_stats;

    pub(super) fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
        // Four independent f64 accumulator pairs so the adds overlap.
        let (mut s1, mut s2) = ([0.0f64; 4], [0.0f64; 4]);
        let chunks = x.chunks_exact(4);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..4 {
                let v = c[l] as f64;
                s1[l] += v;
                s2[l] += v * v;
            }
        }
        for &v in rest {
            s1[0] += v as f64;
            s2[0] += v as f64 * v as f64;
        }
        let sum = |s: [f64; 4]| (s[0] + s[1]) + (s[2] + s[3]);
        let (mean, rstd) = finish_stats(sum(s1), sum(s2), x.len(), eps);
        for i in 0..x.len() {
            out[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
        }
        (mean, rstd)
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512F level: 16 lanes, masked loads and stores for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::finish_stats;
    use crate::fused::simd::avx512::{mask, L};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
        let n = x.len();
        let px = x.as_ptr();
        // Pass 1: Σx and Σx² in f64, two 8-lane halves per 16 values.
        let (mut s1a, mut s1b) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let (mut s2a, mut s2b) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        for i in (0..n).step_by(L) {
            // SAFETY: i < n and the mask enables only lanes inside `x`; the rest read as 0,
            // which adds nothing to either sum.
            let v = unsafe { _mm512_maskz_loadu_ps(mask(n - i), px.add(i)) };
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
            s1a = _mm512_add_pd(s1a, lo);
            s2a = _mm512_fmadd_pd(lo, lo, s2a);
            s1b = _mm512_add_pd(s1b, hi);
            s2b = _mm512_fmadd_pd(hi, hi, s2b);
        }
        let s1 = _mm512_reduce_add_pd(_mm512_add_pd(s1a, s1b));
        let s2 = _mm512_reduce_add_pd(_mm512_add_pd(s2a, s2b));
        let (mean, rstd) = finish_stats(s1, s2, n, eps);
        // Pass 2: out = (x − mean)·rstd·γ + β.
        let (mv, rv) = (_mm512_set1_ps(mean), _mm512_set1_ps(rstd));
        let (pg, pb, po) = (gamma.as_ptr(), beta.as_ptr(), out.as_mut_ptr());
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: `gamma`, `beta` and `out` have length n (checked by the caller); i < n and
            // `k` enables only lanes below n.
            unsafe {
                let xv = _mm512_maskz_loadu_ps(k, px.add(i));
                let t = _mm512_mul_ps(_mm512_sub_ps(xv, mv), rv);
                let y = _mm512_fmadd_ps(t, _mm512_maskz_loadu_ps(k, pg.add(i)), _mm512_maskz_loadu_ps(k, pb.add(i)));
                _mm512_mask_storeu_ps(po.add(i), k, y);
            }
        }
        (mean, rstd)
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA level: 8 lanes, `maskload`/`maskstore` for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::finish_stats;
    use crate::fused::simd::avx2::{mask, L};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum_pd(v: __m256d) -> f64 {
        let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
        _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
        let n = x.len();
        let px = x.as_ptr();
        let (mut s1a, mut s1b) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let (mut s2a, mut s2b) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for i in (0..n).step_by(L) {
            // SAFETY: i < n and the mask enables only lanes inside `x`; the rest read as 0.
            let v = unsafe { _mm256_maskload_ps(px.add(i), mask(n - i)) };
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
            s1a = _mm256_add_pd(s1a, lo);
            s2a = _mm256_fmadd_pd(lo, lo, s2a);
            s1b = _mm256_add_pd(s1b, hi);
            s2b = _mm256_fmadd_pd(hi, hi, s2b);
        }
        let s1 = hsum_pd(_mm256_add_pd(s1a, s1b));
        let s2 = hsum_pd(_mm256_add_pd(s2a, s2b));
        let (mean, rstd) = finish_stats(s1, s2, n, eps);
        let (mv, rv) = (_mm256_set1_ps(mean), _mm256_set1_ps(rstd));
        let (pg, pb, po) = (gamma.as_ptr(), beta.as_ptr(), out.as_mut_ptr());
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: `gamma`, `beta` and `out` have length n (checked by the caller); i < n and
            // `k` enables only lanes below n.
            unsafe {
                let t = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(px.add(i), k), mv), rv);
                let y = _mm256_fmadd_ps(t, _mm256_maskload_ps(pg.add(i), k), _mm256_maskload_ps(pb.add(i), k));
                _mm256_maskstore_ps(po.add(i), k, y);
            }
        }
        (mean, rstd)
    }
}
