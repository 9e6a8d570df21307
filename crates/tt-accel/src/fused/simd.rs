//! The SIMD building blocks every family shares: the constants of [`exp_fast`] and its vector
//! forms, lane masks and horizontal reductions.

use crate::dispatch::{self, Level};
use tt_tensor::kernels::exp_fast;

/// The constants of [`exp_fast`], so every level evaluates the same range reduction and the
/// same polynomial (see its docs for the derivation).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) mod expc {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_145_75;
    pub const LN2_LO: f32 = 1.428_606_8e-6;
    /// 1.5·2²³: adding and subtracting it rounds to an integer.
    pub const ROUND: f32 = 12_582_912.0;
    /// Above this `exp` is +∞ (input clamped here).
    pub const HI: f32 = 88.72;
    /// Below this `exp` is 0 (input clamped here).
    pub const LO: f32 = -87.33;
    /// Taylor coefficients of `e^r`, highest degree first (Horner order).
    pub const POLY: [f32; 7] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
    /// `2·√(2/π)` and the cubic coefficient of the tanh-form GELU, as in `gelu_tanh`.
    pub const GELU_C2: f32 = 2.0 * 0.797_884_6;
    pub const GELU_CUBIC: f32 = 0.044715;
}

/// `x = exp(x)` elementwise with `level`'s exponential (clamped to [`dispatch::level`]): the
/// vectorized [`exp_fast`] the fused kernels use, exposed so tests can compare it with the scalar
/// one directly.
#[doc(hidden)]
pub fn exp_at(level: Level, x: &mut [f32]) {
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::exp_slice(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::exp_slice(x) },
        _ => x.iter_mut().for_each(|v| *v = exp_fast(*v)),
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512F level: 16 lanes, masked loads and stores for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::expc::*;
    use std::arch::x86_64::*;

    pub(in crate::fused) const L: usize = 16;

    /// Mask of the first `min(rem, 16)` lanes.
    #[inline]
    pub(in crate::fused) fn mask(rem: usize) -> __mmask16 {
        if rem >= L {
            0xFFFF
        } else {
            ((1u32 << rem) - 1) as __mmask16
        }
    }

    /// [`exp_fast`] on 16 lanes: same clamp, same rounding of `n`, same polynomial (evaluated
    /// with FMA), same `+∞` above 88.72 and `0` below −87.33; NaN stays NaN (`max`/`min` return
    /// their second operand when one is NaN, so `x` goes second).
    ///
    /// [`exp_fast`]: tt_tensor::kernels::exp_fast
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::fused) fn exp(x: __m512) -> __m512 {
        let (hi, lo) = (_mm512_set1_ps(HI), _mm512_set1_ps(LO));
        let xc = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
        let round = _mm512_set1_ps(ROUND);
        let n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)), round), round);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc));
        let mut p = _mm512_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        // 2ⁿ through the exponent bits; n ∈ [−126, 128] after the clamp.
        let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        )));
        let y = _mm512_mul_ps(p, two_n);
        let y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, hi), y, _mm512_set1_ps(f32::INFINITY));
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo), y, _mm512_setzero_ps())
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn exp_slice(x: &mut [f32]) {
        let (n, p) = (x.len(), x.as_mut_ptr());
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes i..min(i + 16, n), all inside `x`.
            unsafe { _mm512_mask_storeu_ps(p.add(i), k, exp(_mm512_maskz_loadu_ps(k, p.add(i)))) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA level: 8 lanes, `maskload`/`maskstore` for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::expc::*;
    use std::arch::x86_64::*;

    pub(in crate::fused) const L: usize = 8;

    /// Lane mask (all-ones in the first `min(rem, 8)` 32-bit lanes) for `maskload`/`maskstore`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::fused) fn mask(rem: usize) -> __m256i {
        let rem = rem.min(L) as i32;
        _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::fused) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::fused) fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
    }

    /// [`exp_fast`](tt_tensor::kernels::exp_fast) on 8 lanes; see the AVX-512 version.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::fused) fn exp(x: __m256) -> __m256 {
        let (hi, lo) = (_mm256_set1_ps(HI), _mm256_set1_ps(LO));
        let xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
        let round = _mm256_set1_ps(ROUND);
        let n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)), round), round);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc));
        let mut p = _mm256_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let y = _mm256_mul_ps(p, two_n);
        let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi));
        _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_slice(x: &mut [f32]) {
        let (n, p) = (x.len(), x.as_mut_ptr());
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes i..min(i + 8, n), all inside `x`.
            unsafe { _mm256_maskstore_ps(p.add(i), k, exp(_mm256_maskload_ps(p.add(i), k))) };
        }
    }
}
