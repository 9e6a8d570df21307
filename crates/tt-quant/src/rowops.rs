//! The per-row steps around the integer product: a row's range, its quantization to u8, and the
//! epilogues that fold the zero points in and scale back to f32 (per output, or, for per-group
//! weights whose kernel has folded the zero point and weight scales in, by `S_a` alone).
//!
//! Each has a scalar version (the reference, and what the AVX2 and scalar levels run) and an
//! AVX-512 version for the VNNI level. Both perform the same IEEE operations in the same order —
//! min/max, multiply, add, exact conversions of integral values, and wrapping i32 arithmetic —
//! so they give the same bits; the tests hold the whole projection bit-identical across levels.

use crate::scheme::QParams;

/// Adding and subtracting 1.5·2²³ rounds a value of magnitude < 2²² to an integer, ties to even,
/// in the default rounding mode — `round_ties_even`, with plain adds that vectorize.
pub(crate) const MAGIC: f32 = 12_582_912.0;
/// `x / S` is clamped to ±1024 before rounding (far outside any code, inside MAGIC's range).
pub(crate) const LIMIT: f32 = 1024.0;

/// Whether every value is finite, and the `(min, max)` of the row (meaningful only if so).
pub(crate) fn row_stats(x: &[f32], avx512: bool) -> (bool, f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: callers pass `avx512` only at the VNNI level, which implies AVX-512F.
        return unsafe { avx512::row_stats(x) };
    }
    let _ = avx512;
    scalar_row_stats(x)
}

fn scalar_row_stats(x: &[f32]) -> (bool, f32, f32) {
    let (mut finite, mut lo, mut hi) = (true, f32::INFINITY, f32::NEG_INFINITY);
    for &v in x {
        finite &= v.is_finite();
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if x.is_empty() {
        (true, 0.0, 0.0)
    } else {
        (finite, lo, hi)
    }
}

/// Quantizes one row to u8 with `p`: `clamp(round_half_even(clamp(x·(1/S), ±1024)) + Z, 0, 255)`;
/// `out` past `x.len()` is zero-filled. Returns the sum of the codes.
pub(crate) fn quantize_row(x: &[f32], p: QParams, out: &mut [u8], avx512: bool) -> i32 {
    let n = x.len().min(out.len());
    let (done, mut sum) = {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512 {
                // SAFETY: AVX-512F as above; the kernel stays inside the first n elements.
                unsafe { avx512::quantize(&x[..n], p, &mut out[..n]) }
            } else {
                (0, 0)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = avx512;
            (0, 0)
        }
    };
    let (inv, z) = (1.0 / p.scale(), p.zero_point() as f32);
    for i in done..n {
        let q = quantize_one(x[i], inv, z);
        out[i] = q;
        sum += q as i32;
    }
    out[n..].fill(0);
    sum
}

/// One value's u8 code as every integer path computes it (`inv = 1/S`, `z = Z`).
#[inline(always)]
pub(crate) fn quantize_one(v: f32, inv: f32, z: f32) -> u8 {
    let t = (v * inv).clamp(-LIMIT, LIMIT);
    ((t + MAGIC) - MAGIC + z).clamp(0.0, 255.0) as u8
}

/// Everything the epilogue of one row needs besides its accumulators.
pub(crate) struct Epilogue<'a> {
    pub code_sums: &'a [i32],
    pub zero_points: Option<&'a [i32]>,
    pub scales: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub in_f: usize,
}

impl Epilogue<'_> {
    /// `y[o] = (S_a·S_w[o])·t + b[o]` with `t = acc − Z_a·Σw[o] − Z_w[o]·(Σa − K·Z_a)`: wrapping
    /// i32 arithmetic is exact here because the true sum fits i32 (`MAX_K`), and the f32 steps
    /// are a multiply and an add, never contracted into an FMA.
    ///
    /// # Panics
    /// `acc` or one of the epilogue's slices shorter than `y` (the SIMD path reads them without
    /// bounds checks, so this is checked first).
    pub(crate) fn row(&self, acc: &[i32], sa: f32, za: i32, asum: i32, y: &mut [f32], avx512: bool) {
        let n = y.len();
        let long = |len: Option<usize>| len.is_none_or(|l| l >= n);
        assert!(
            acc.len() >= n
                && self.code_sums.len() >= n
                && self.scales.len() >= n
                && long(self.zero_points.map(<[i32]>::len))
                && long(self.bias.map(<[f32]>::len)),
            "Epilogue::row: a slice is shorter than the {n} outputs"
        );
        let row_term = asum.wrapping_sub((self.in_f as i32).wrapping_mul(za));
        let done = {
            #[cfg(target_arch = "x86_64")]
            {
                if avx512 {
                    // SAFETY: AVX-512F as above; every slice holds y.len() elements (asserted above).
                    unsafe { avx512::epilogue(self, acc, sa, za, row_term, y) }
                } else {
                    0
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = avx512;
                0
            }
        };
        for o in done..y.len() {
            let mut t = acc[o].wrapping_sub(za.wrapping_mul(self.code_sums[o]));
            if let Some(zw) = self.zero_points {
                t = t.wrapping_sub(zw[o].wrapping_mul(row_term));
            }
            let v = t as f32 * (sa * self.scales[o]);
            y[o] = match self.bias {
                Some(b) => v + b[o],
                None => v,
            };
        }
    }
}

/// The per-group epilogue: `y[o] = f[o]·S_a + b[o]` from the group kernels' sums `f`. One
/// multiply and one add, the same code at every level.
pub(crate) fn scale_row(f: &[f32], sa: f32, bias: Option<&[f32]>, y: &mut [f32]) {
    match bias {
        Some(b) => y.iter_mut().zip(f).zip(b).for_each(|((y, &f), &b)| *y = f * sa + b),
        None => y.iter_mut().zip(f).for_each(|(y, &f)| *y = f * sa),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Epilogue, LIMIT, MAGIC};
    use crate::scheme::QParams;

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row_stats(x: &[f32]) -> (bool, f32, f32) {
        let n = x.len() / 16 * 16;
        let (mut lo, mut hi) = (_mm512_set1_ps(f32::INFINITY), _mm512_set1_ps(f32::NEG_INFINITY));
        let mut finite: u16 = 0xFFFF;
        let inf = _mm512_set1_ps(f32::INFINITY);
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 ≤ n ≤ x.len().
            let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
            // |v| < ∞ is false for ±∞ and NaN.
            let abs = _mm512_abs_ps(v);
            finite &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs, inf);
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let (mut l, mut h) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let mut ok = finite == 0xFFFF;
        for &v in &x[n..] {
            ok &= v.is_finite();
            l = l.min(v);
            h = h.max(v);
        }
        if x.is_empty() {
            (true, 0.0, 0.0)
        } else {
            // Only finite rows use (l, h): min/max of finite values are exact in any order.
            (ok, l, h)
        }
    }

    /// Quantizes the first multiple of 16 elements; returns how many and the sum of their codes.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `out.len() ≥ x.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quantize(x: &[f32], p: QParams, out: &mut [u8]) -> (usize, i32) {
        let n = x.len() / 16 * 16;
        let (inv, z) = (_mm512_set1_ps(1.0 / p.scale()), _mm512_set1_ps(p.zero_point() as f32));
        let (lim_lo, lim_hi) = (_mm512_set1_ps(-LIMIT), _mm512_set1_ps(LIMIT));
        let (magic, zero, top) = (_mm512_set1_ps(MAGIC), _mm512_setzero_ps(), _mm512_set1_ps(255.0));
        let mut sum = _mm512_setzero_si512();
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 ≤ n ≤ x.len() ≤ out.len().
            let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
            // The scalar order: clamp(x·inv), +MAGIC, −MAGIC, +Z, clamp(0, 255).
            let t = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, inv), lim_lo), lim_hi);
            let r = _mm512_add_ps(_mm512_sub_ps(_mm512_add_ps(t, magic), magic), z);
            let q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, zero), top));
            sum = _mm512_add_epi32(sum, q);
            // SAFETY: 16 bytes at out[i..i + 16].
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi32_epi8(q)) };
        }
        (n, _mm512_reduce_add_epi32(sum))
    }

    /// The epilogue for the first multiple of 16 outputs; returns how many.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `acc`, the epilogue's slices and `y` hold at least `y.len()` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn epilogue(e: &Epilogue, acc: &[i32], sa: f32, za: i32, row_term: i32, y: &mut [f32]) -> usize {
        let n = y.len() / 16 * 16;
        let (sa_v, za_v, rt_v) = (_mm512_set1_ps(sa), _mm512_set1_epi32(za), _mm512_set1_epi32(row_term));
        for o in (0..n).step_by(16) {
            // SAFETY: o + 16 ≤ n ≤ every slice's length (caller's contract).
            unsafe {
                let a = _mm512_loadu_si512(acc.as_ptr().add(o) as *const _);
                let cs = _mm512_loadu_si512(e.code_sums.as_ptr().add(o) as *const _);
                let mut t = _mm512_sub_epi32(a, _mm512_mullo_epi32(za_v, cs));
                if let Some(zw) = e.zero_points {
                    let zw = _mm512_loadu_si512(zw.as_ptr().add(o) as *const _);
                    t = _mm512_sub_epi32(t, _mm512_mullo_epi32(zw, rt_v));
                }
                let s = _mm512_mul_ps(sa_v, _mm512_loadu_ps(e.scales.as_ptr().add(o)));
                let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(t), s);
                if let Some(b) = e.bias {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(b.as_ptr().add(o)));
                }
                _mm512_storeu_ps(y.as_mut_ptr().add(o), v);
            }
        }
        n
    }
}
