//! GELU (tanh form), alone or with its bias added in the same pass.

use super::invalid_shape;
use crate::dispatch::{self, Level};
use tt_tensor::Result;

/// The GEMM epilogue `y[r, j] = gelu_tanh(y[r, j] + bias[j])` over `y` = rows × `bias.len()`,
/// at the dispatched level.
///
/// Fused: each value is loaded once, gets its bias and the tanh-form GELU (`x·σ(2u)`, with the
/// vectorized [`exp_fast`](tt_tensor::kernels::exp_fast)) in registers, and is stored once.
///
/// # Errors
/// `InvalidShape` if `y` is not a whole number of rows of `bias.len()` (an empty `bias` is only
/// valid with an empty `y`).
pub fn bias_gelu(y: &mut [f32], bias: &[f32]) -> Result<()> {
    bias_gelu_at(dispatch::level(), y, bias)
}

/// [`bias_gelu`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`bias_gelu`].
pub fn bias_gelu_at(level: Level, y: &mut [f32], bias: &[f32]) -> Result<()> {
    check_bias_gelu("fused::bias_gelu", y, bias)?;
    if y.is_empty() {
        return Ok(());
    }
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::bias_gelu(y, bias) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::bias_gelu(y, bias) },
        _ => scalar::bias_gelu(y, bias),
    }
    Ok(())
}

/// GELU (tanh form) in place, at the dispatched level: the activation alone, for callers whose
/// projection already added the bias. Same vectorized `exp` as [`bias_gelu`].
pub fn gelu(y: &mut [f32]) {
    gelu_at(dispatch::level(), y)
}

/// [`gelu`] at `level` (clamped to [`dispatch::level`]).
pub fn gelu_at(level: Level, y: &mut [f32]) {
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::gelu_slice(y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::gelu_slice(y) },
        _ => scalar::gelu_slice(y),
    }
}

pub(super) fn check_bias_gelu(op: &'static str, y: &[f32], bias: &[f32]) -> Result<()> {
    let w = bias.len();
    // `is_multiple_of(0)` holds only for 0: an empty bias fits only an empty `y`.
    if !y.len().is_multiple_of(w) {
        return Err(invalid_shape(op, &[y.len()], &format!("not a whole number of rows of width {w}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scalar level: the same fused algorithms, one lane at a time
// ---------------------------------------------------------------------------------------------

mod scalar {
    use tt_tensor::kernels::gelu_tanh;

    pub(super) fn bias_gelu(y: &mut [f32], bias: &[f32]) {
        for row in y.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = gelu_tanh(*v + b);
            }
        }
    }

    pub(super) fn gelu_slice(y: &mut [f32]) {
        y.iter_mut().for_each(|v| *v = gelu_tanh(*v));
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512F level: 16 lanes, masked loads and stores for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::fused::simd::avx512::{exp, mask, L};
    use crate::fused::simd::expc::{GELU_C2, GELU_CUBIC};
    use std::arch::x86_64::*;

    /// `gelu_tanh` on 16 lanes: `x / (1 + exp(−2√(2/π)·(x + 0.044715·x³)))`, the argument
    /// computed in the scalar kernel's operation order.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn gelu(x: __m512) -> __m512 {
        let x3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(GELU_CUBIC), x), x), x);
        let e = exp(_mm512_mul_ps(_mm512_set1_ps(-GELU_C2), _mm512_add_ps(x, x3)));
        _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn bias_gelu(y: &mut [f32], bias: &[f32]) {
        let w = bias.len();
        let pb = bias.as_ptr();
        for row in y.chunks_exact_mut(w) {
            let py = row.as_mut_ptr();
            for j in (0..w).step_by(L) {
                let k = mask(w - j);
                // SAFETY: `row` and `bias` have length w; j < w and `k` enables only lanes below w.
                unsafe {
                    let x = _mm512_add_ps(_mm512_maskz_loadu_ps(k, py.add(j)), _mm512_maskz_loadu_ps(k, pb.add(j)));
                    _mm512_mask_storeu_ps(py.add(j), k, gelu(x));
                }
            }
        }
    }

    /// GELU in place over a whole slice (no bias): the decoder's activation after `fc`, whose
    /// projection already added the bias.
    #[target_feature(enable = "avx512f")]
    pub(super) fn gelu_slice(y: &mut [f32]) {
        let n = y.len();
        let py = y.as_mut_ptr();
        for j in (0..n).step_by(L) {
            let k = mask(n - j);
            // SAFETY: j < n and `k` enables only lanes below n.
            unsafe { _mm512_mask_storeu_ps(py.add(j), k, gelu(_mm512_maskz_loadu_ps(k, py.add(j)))) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA level: 8 lanes, `maskload`/`maskstore` for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::fused::simd::avx2::{exp, mask, L};
    use crate::fused::simd::expc::{GELU_C2, GELU_CUBIC};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn gelu(x: __m256) -> __m256 {
        let x3 = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_CUBIC), x), x), x);
        let e = exp(_mm256_mul_ps(_mm256_set1_ps(-GELU_C2), _mm256_add_ps(x, x3)));
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn bias_gelu(y: &mut [f32], bias: &[f32]) {
        let w = bias.len();
        let pb = bias.as_ptr();
        for row in y.chunks_exact_mut(w) {
            let py = row.as_mut_ptr();
            let mut j = 0;
            while j + L <= w {
                // SAFETY: `row` and `bias` have length w and j + 8 ≤ w.
                unsafe {
                    let x = _mm256_add_ps(_mm256_loadu_ps(py.add(j)), _mm256_loadu_ps(pb.add(j)));
                    _mm256_storeu_ps(py.add(j), gelu(x));
                }
                j += L;
            }
            if j < w {
                let k = mask(w - j);
                // SAFETY: j < w and `k` enables only lanes below w.
                unsafe {
                    let x = _mm256_add_ps(_mm256_maskload_ps(py.add(j), k), _mm256_maskload_ps(pb.add(j), k));
                    _mm256_maskstore_ps(py.add(j), k, gelu(x));
                }
            }
        }
    }

    /// GELU in place over a whole slice (no bias).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_slice(y: &mut [f32]) {
        let n = y.len();
        let py = y.as_mut_ptr();
        let mut j = 0;
        while j + L <= n {
            // SAFETY: j + 8 ≤ n.
            unsafe { _mm256_storeu_ps(py.add(j), gelu(_mm256_loadu_ps(py.add(j)))) };
            j += L;
        }
        if j < n {
            let k = mask(n - j);
            // SAFETY: j < n and `k` enables only lanes below n.
            unsafe { _mm256_maskstore_ps(py.add(j), k, gelu(_mm256_maskload_ps(py.add(j), k))) };
        }
    }
}
