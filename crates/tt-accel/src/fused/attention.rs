//! One-query decode attention over an f32 or int8 KV cache: the one-pass online kernel and the
//! two-pass kernel with a scores row.

use super::{invalid_shape, mismatch};
use crate::dispatch::{self, Level};
use tt_tensor::{Result, TensorError};

/// One decode step of one attention head: the query `q` (`head_dim` floats) attends to all
/// `slots` cached positions; `keys` and `values` are `[slots, head_dim]` row-major, as the KV
/// cache stores them (`slots = keys.len() / head_dim`). Writes `softmax(scale·q·Kᵀ)·V` into
/// `out` (`head_dim` floats). At the dispatched level.
///
/// Fused: one pass over the cache in blocks of 16 keys (8 at AVX2): the block's scores stay in
/// registers, the running maximum `m` and sum `l` are updated online, `out` is rescaled by
/// `exp(m_old − m_new)` once per block and accumulates `pⱼ·vⱼ`; it is divided by `l` at the end.
/// No `slots`-long probability buffer exists. Non-finite inputs propagate to `out`, as in
/// `attention_head`.
///
/// # Errors
/// `InvalidShape` for an empty `q` or cache, or `keys` not a whole number of `head_dim` rows;
/// `ShapeMismatch` if `values` and `keys` or `out` and `q` differ in length; `InvalidArgument`
/// if `scale` is not finite.
pub fn decode_attention(q: &[f32], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) -> Result<()> {
    decode_attention_at(dispatch::level(), q, keys, values, scale, out)
}

/// [`decode_attention`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`decode_attention`].
pub fn decode_attention_at(
    level: Level,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    check_decode_attention("fused::decode_attention", q, keys, values, scale, out)?;
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::decode_attention(q, keys, values, scale, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::decode_attention(q, keys, values, scale, out) },
        _ => scalar::decode_attention(q, keys, values, scale, out),
    }
    Ok(())
}

/// [`decode_attention`] over an int8 KV cache: each key row `k_j = d_kⱼ·codes` and value row
/// likewise (see `tt_tensor::kernels::Q8Head`), dequantized on the fly inside the same one-pass
/// online softmax: the codes are widened to f32 as they are loaded, `d_kⱼ` multiplies the block's
/// scores and `d_vⱼ` its weights. Reads `head_dim + 4` bytes per row instead of `4·head_dim`.
///
/// # Errors
/// As [`decode_attention`], for codes instead of floats (and scale vectors of `slots` entries).
///
/// One portable kernel at every level (it takes no level): the SIMD int8 path is the two-pass
/// [`decode_attention_q8_2pass`], which the decoder's tables use.
pub fn decode_attention_q8(q: &[f32], kv: &tt_tensor::kernels::Q8Head, scale: f32, out: &mut [f32]) -> Result<()> {
    check_q8("fused::decode_attention_q8", q, kv, scale, out)?;
    scalar::decode_attention_q8(q, kv, scale, out);
    Ok(())
}

/// [`decode_attention`] using `scores` (at least `slots` floats) as scratch: at the AVX-512
/// level a two-pass kernel (all scores with a vector maximum, then the weights, then `P·V`),
/// which avoids the online kernel's per-block chain of horizontal reductions and scalar `exp`;
/// other levels run [`decode_attention`]. What the decoder's row-kernel table uses (it owns a
/// `slots`-long scratch row).
///
/// # Errors
/// As [`decode_attention`], and `scores` shorter than `slots`.
pub fn decode_attention_2pass(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    decode_attention_2pass_at(dispatch::level(), q, keys, values, scale, scores, out)
}

/// [`decode_attention_2pass`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`decode_attention_2pass`].
pub fn decode_attention_2pass_at(
    level: Level,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    check_decode_attention("fused::decode_attention_2pass", q, keys, values, scale, out)?;
    check_scores("fused::decode_attention_2pass", keys.len() / q.len(), scores)?;
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::decode_attention_2pass(q, keys, values, scale, scores, out) },
        l => return decode_attention_at(l, q, keys, values, scale, out),
    }
    Ok(())
}

/// [`decode_attention_q8`] with `scores` as scratch, two-pass at the AVX-512 level (see
/// [`decode_attention_2pass`]).
///
/// # Errors
/// As [`decode_attention_q8`], and `scores` shorter than `slots`.
pub fn decode_attention_q8_2pass(
    q: &[f32],
    kv: &tt_tensor::kernels::Q8Head,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    decode_attention_q8_2pass_at(dispatch::level(), q, kv, scale, scores, out)
}

/// [`decode_attention_q8_2pass`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`decode_attention_q8_2pass`].
pub fn decode_attention_q8_2pass_at(
    level: Level,
    q: &[f32],
    kv: &tt_tensor::kernels::Q8Head,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    // The same checks at every level, so an error does not depend on the CPU.
    check_q8("fused::decode_attention_q8_2pass", q, kv, scale, out)?;
    check_scores("fused::decode_attention_q8_2pass", kv.key_scales.len(), scores)?;
    let level = level.min(dispatch::level());
    if level != Level::Avx512 {
        return decode_attention_q8(q, kv, scale, out);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the level is AVX-512, at most `dispatch::level()`; lengths checked above.
    unsafe {
        avx512::decode_attention_q8_2pass(q, kv, scale, scores, out)
    };
    Ok(())
}

fn check_q8(op: &'static str, q: &[f32], kv: &tt_tensor::kernels::Q8Head, scale: f32, out: &[f32]) -> Result<()> {
    let hd = q.len();
    let slots = kv.key_scales.len();
    if hd == 0 || slots == 0 {
        return Err(TensorError::InvalidShape { op, shape: vec![slots, hd], reason: "empty query or cache".into() });
    }
    // The SIMD kernel reads the codes through raw pointers, up to `slots·hd`.
    let Some(codes) = slots.checked_mul(hd) else {
        return Err(invalid_shape(op, &[slots, hd], "slots × head_dim overflows usize"));
    };
    if kv.keys.len() != codes || kv.values.len() != codes || kv.value_scales.len() != slots {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: vec![kv.keys.len(), kv.values.len(), kv.value_scales.len()],
            rhs: vec![codes, codes, slots],
        });
    }
    if out.len() != hd {
        return Err(TensorError::ShapeMismatch { op, lhs: vec![out.len()], rhs: vec![hd] });
    }
    if !scale.is_finite() {
        return Err(TensorError::InvalidArgument { op, reason: format!("scale {scale} is not finite") });
    }
    Ok(())
}

fn check_scores(op: &'static str, slots: usize, scores: &[f32]) -> Result<()> {
    if scores.len() < slots {
        return Err(TensorError::ShapeMismatch { op, lhs: vec![scores.len()], rhs: vec![slots] });
    }
    Ok(())
}

pub(super) fn check_decode_attention(
    op: &'static str,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    out: &[f32],
) -> Result<()> {
    let hd = q.len();
    if hd == 0 {
        return Err(invalid_shape(op, &[0], "empty query (head_dim 0)"));
    }
    if out.len() != hd {
        return Err(mismatch(op, hd, out.len()));
    }
    if values.len() != keys.len() {
        return Err(mismatch(op, keys.len(), values.len()));
    }
    if keys.is_empty() || !keys.len().is_multiple_of(hd) {
        return Err(invalid_shape(
            op,
            &[keys.len()],
            &format!("the cache must hold at least one whole row of head_dim {hd}"),
        ));
    }
    if !scale.is_finite() {
        return Err(TensorError::InvalidArgument { op, reason: format!("scale must be finite, got {scale}") });
    }
    Ok(())
}

/// Keys per block in the scalar decode attention (the SIMD levels use one vector's lanes).
const SCALAR_BLOCK: usize = 16;

// ---------------------------------------------------------------------------------------------
// Scalar level: the same fused algorithms, one lane at a time
// ---------------------------------------------------------------------------------------------

mod scalar {
    use super::SCALAR_BLOCK;
    use tt_tensor::kernels::{dot, exp_fast};

    /// The online softmax of [`decode_attention`], written once over how a row is read: `score(j)`
    /// is `scale·q·kⱼ` (already scaled), `add(j, p, out)` accumulates `p·vⱼ` into `out`.
    fn online(
        hd: usize,
        slots: usize,
        out: &mut [f32],
        score: impl Fn(usize) -> f32,
        add: impl Fn(usize, f32, &mut [f32]),
    ) {
        debug_assert_eq!(out.len(), hd);
        out.fill(0.0);
        let (mut m, mut l) = (-f32::MAX, 0.0f32);
        let mut p = [0.0f32; SCALAR_BLOCK];
        for j0 in (0..slots).step_by(SCALAR_BLOCK) {
            let nb = SCALAR_BLOCK.min(slots - j0);
            let mut bm = m;
            for t in 0..nb {
                p[t] = score(j0 + t);
                bm = bm.max(p[t]);
            }
            let alpha = exp_fast(m - bm);
            let mut bs = 0.0;
            for pt in &mut p[..nb] {
                *pt = exp_fast(*pt - bm);
                bs += *pt;
            }
            l = l * alpha + bs;
            out.iter_mut().for_each(|o| *o *= alpha);
            for t in 0..nb {
                add(j0 + t, p[t], out);
            }
            m = bm;
        }
        let inv = 1.0 / l;
        out.iter_mut().for_each(|o| *o *= inv);
    }

    /// [`online`] over int8 rows.
    pub(super) fn decode_attention_q8(q: &[f32], kv: &tt_tensor::kernels::Q8Head, scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let score = |j: usize| {
            let d: f32 = q.iter().zip(&kv.keys[j * hd..(j + 1) * hd]).map(|(&a, &c)| a * c as f32).sum();
            d * kv.key_scales[j] * scale
        };
        let add = |j: usize, p: f32, out: &mut [f32]| {
            let w = p * kv.value_scales[j];
            for (o, &c) in out.iter_mut().zip(&kv.values[j * hd..(j + 1) * hd]) {
                *o += w * c as f32;
            }
        };
        online(hd, kv.key_scales.len(), out, score, add);
    }

    /// [`online`] over f32 rows.
    pub(super) fn decode_attention(q: &[f32], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let score = |j: usize| dot(q, &keys[j * hd..(j + 1) * hd]) * scale;
        let add = |j: usize, p: f32, out: &mut [f32]| {
            for (o, &v) in out.iter_mut().zip(&values[j * hd..(j + 1) * hd]) {
                *o += p * v;
            }
        };
        online(hd, keys.len() / hd, out, score, add);
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512F level: 16 lanes, masked loads and stores for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::fused::simd::avx512::{exp, mask, L};
    use std::arch::x86_64::*;
    use tt_tensor::kernels::exp_fast;

    /// `permutex2var` indices for one level of [`sum_lanes_16`]: two vectors holding `16/g` keys
    /// of `g` partial sums each become one vector holding `32/g` keys of `g/2` partial sums
    /// (the first half of each key's lanes with `hi = false`, the second half with `hi = true`;
    /// the two are added). Keys stay in order: those of the first vector, then the second's.
    const fn tree_index(g: usize, hi: bool) -> [i32; 16] {
        let (half, per) = (g / 2, 16 / g);
        let mut idx = [0i32; 16];
        let mut o = 0;
        while o < 16 {
            let (key, lane) = (o / half, o % half + if hi { half } else { 0 });
            // Bit 4 of an index selects the second source vector.
            idx[o] = if key < per { key * g + lane } else { 16 + (key - per) * g + lane } as i32;
            o += 1;
        }
        idx
    }

    const TREE: [[[i32; 16]; 2]; 4] = [
        [tree_index(16, false), tree_index(16, true)],
        [tree_index(8, false), tree_index(8, true)],
        [tree_index(4, false), tree_index(4, true)],
        [tree_index(2, false), tree_index(2, true)],
    ];

    /// Lane `t` of the result is the sum of the 16 lanes of `v[t]`: 16 horizontal sums in four
    /// levels of two-source permutes and adds (15 vector adds, 30 permutes) instead of 16
    /// separate reductions (64 shuffles and adds).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sum_lanes_16(mut v: [__m512; 16]) -> __m512 {
        let mut n = 16;
        for level in &TREE {
            // SAFETY: each index table holds 16 i32.
            let (lo, hi) = unsafe { (_mm512_loadu_epi32(level[0].as_ptr()), _mm512_loadu_epi32(level[1].as_ptr())) };
            for i in 0..n / 2 {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                v[i] = _mm512_add_ps(_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b));
            }
            n /= 2;
        }
        v[0]
    }

    /// Two-pass decode attention over f32 rows (`Q8 = false`: `k`, `v` point to f32) or int8
    /// rows (`Q8 = true`: to i8 codes, with `ks` / `vs` the row scales): pass 1 writes every score
    /// `scale·(d_kⱼ·)q·kⱼ` to `scores` and keeps a vector maximum (no horizontal reduction per
    /// block, so blocks do not wait on each other); pass 2 turns scores into weights
    /// `exp(sⱼ − m)` (times `d_vⱼ`) and sums them; pass 3 accumulates `Σ wⱼ·vⱼ` in four FMA
    /// chains per 16 output lanes and divides by the sum.
    ///
    /// # Safety
    /// AVX-512F; `k` and `v` hold `slots·hd` elements of their type, `ks`/`vs` `slots` scales
    /// (when `Q8`), `scores` at least `slots`, `out` and `q` `hd`.
    #[target_feature(enable = "avx512f")]
    unsafe fn two_pass<const Q8: bool>(
        q: &[f32],
        k: *const u8,
        v: *const u8,
        ks: &[f32],
        vs: &[f32],
        slots: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = q.len();
        // Lanes c..c + 16 of row j (masked past hd).
        let row = |base: *const u8, j: usize, c: usize| -> __m512 {
            // SAFETY: j < slots and c < hd: inside the row (caller's contract); masked lanes are
            // not read.
            unsafe {
                if Q8 {
                    load_q8(hd - c, (base as *const i8).add(j * hd + c))
                } else {
                    _mm512_maskz_loadu_ps(mask(hd - c), (base as *const f32).add(j * hd + c))
                }
            }
        };
        let (pq, ps) = (q.as_ptr(), scores.as_mut_ptr());
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for j0 in (0..slots).step_by(L) {
            let nb = L.min(slots - j0);
            let mut acc = [_mm512_setzero_ps(); L];
            // Key by key, each row read front to back: the cache sees one forward stream (a row
            // is hd·4 bytes; column-major over 16 rows it was 16 strided streams, which a cold
            // cache — the weights stream through it every step — served at half the speed).
            for (t, a) in acc.iter_mut().enumerate() {
                // A partial block re-reads its last key (in bounds); its lanes are masked below.
                let j = j0 + t.min(nb - 1);
                for c in (0..hd).step_by(L) {
                    // SAFETY: c < hd, lanes masked to hd: inside `q`.
                    let qc = unsafe { _mm512_maskz_loadu_ps(mask(hd - c), pq.add(c)) };
                    *a = _mm512_fmadd_ps(qc, row(k, j, c), *a);
                }
            }
            let km = mask(nb);
            let mut sc = _mm512_mul_ps(sum_lanes_16(acc), _mm512_set1_ps(scale));
            if Q8 {
                // SAFETY: lanes below nb read ks[j0..j0 + nb].
                sc = _mm512_mul_ps(sc, unsafe { _mm512_maskz_loadu_ps(km, ks.as_ptr().add(j0)) });
            }
            // SAFETY: lanes below nb write scores[j0..j0 + nb] (scores holds slots).
            unsafe { _mm512_mask_storeu_ps(ps.add(j0), km, sc) };
            vmax = _mm512_mask_max_ps(vmax, km, vmax, sc);
        }
        let m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        let mut vsum = _mm512_setzero_ps();
        for j0 in (0..slots).step_by(L) {
            let km = mask(slots - j0);
            // SAFETY: lanes below min(16, slots − j0): inside scores (and vs).
            unsafe {
                let w = _mm512_maskz_mov_ps(km, exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(km, ps.add(j0)), m)));
                vsum = _mm512_add_ps(vsum, w);
                let w = if Q8 { _mm512_mul_ps(w, _mm512_maskz_loadu_ps(km, vs.as_ptr().add(j0))) } else { w };
                _mm512_mask_storeu_ps(ps.add(j0), km, w);
            }
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(vsum));
        let po = out.as_mut_ptr();
        // SAFETY (weights): j < slots: inside scores.
        let w = |j: usize| _mm512_set1_ps(unsafe { *ps.add(j) });
        // Value rows front to back as well: 64 output lanes at a time, four accumulators (one
        // per 16 lanes, an FMA chain each), every value row of the span read once in order.
        for c0 in (0..hd).step_by(4 * L) {
            let mut o = [_mm512_setzero_ps(); 4];
            for j in 0..slots {
                let wj = w(j);
                for (t, o) in o.iter_mut().enumerate() {
                    let c = c0 + t * L;
                    if c < hd {
                        *o = _mm512_fmadd_ps(wj, row(v, j, c), *o);
                    }
                }
            }
            for (t, o) in o.iter().enumerate() {
                let c = c0 + t * L;
                if c < hd {
                    // SAFETY: c < hd, lanes masked to hd: inside `out`.
                    unsafe { _mm512_mask_storeu_ps(po.add(c), mask(hd - c), _mm512_mul_ps(*o, inv)) };
                }
            }
        }
    }

    /// [`two_pass`] over f32 rows.
    #[target_feature(enable = "avx512f")]
    pub(super) fn decode_attention_2pass(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let slots = keys.len() / q.len();
        // SAFETY: lengths checked by the caller (`decode_attention_2pass_at`).
        unsafe {
            two_pass::<false>(
                q,
                keys.as_ptr() as *const u8,
                values.as_ptr() as *const u8,
                &[],
                &[],
                slots,
                scale,
                scores,
                out,
            )
        }
    }

    /// [`two_pass`] over int8 rows.
    #[target_feature(enable = "avx512f")]
    pub(super) fn decode_attention_q8_2pass(
        q: &[f32],
        kv: &tt_tensor::kernels::Q8Head,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let slots = kv.key_scales.len();
        let (k, v) = (kv.keys.as_ptr() as *const u8, kv.values.as_ptr() as *const u8);
        // SAFETY: lengths checked by the caller (`decode_attention_q8_2pass_at`).
        unsafe { two_pass::<true>(q, k, v, kv.key_scales, kv.value_scales, slots, scale, scores, out) }
    }

    /// Up to 16 int8 codes of one row (`rem` of them remain in the row), widened to f32; lanes
    /// past the row are 0. AVX-512F only: a short tail is copied rather than read with a byte mask
    /// (which would need AVX-512BW).
    ///
    /// # Safety
    /// `p .. p + min(rem, 16)` lies inside one slice.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_q8(rem: usize, p: *const i8) -> __m512 {
        let bytes = if rem >= L {
            // SAFETY: 16 bytes inside the slice (forwarded contract).
            unsafe { _mm_loadu_si128(p as *const __m128i) }
        } else {
            let mut buf = [0i8; L];
            // SAFETY: `rem` bytes inside the slice; `buf` holds 16.
            unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), rem) };
            // SAFETY: `buf` holds 16 bytes.
            unsafe { _mm_loadu_si128(buf.as_ptr() as *const __m128i) }
        };
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))
    }

    /// Blocks of 16 keys, one pass. Per block: the 16 scores `q·kⱼ` are accumulated as 16-lane
    /// partial sums (one register per key, each `q` chunk loaded once) and reduced together
    /// into one vector ([`sum_lanes_16`]); one vector `exp` gives their weights; `out`
    /// (head_dim floats, in L1, the accumulator) is rescaled once and accumulates `pⱼ·vⱼ` in
    /// four independent FMA chains. In a last, partial block the missing keys re-read the last
    /// key's row (in bounds) and get score −∞, so weight exactly 0.
    #[target_feature(enable = "avx512f")]
    pub(super) fn decode_attention(q: &[f32], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let slots = keys.len() / hd;
        out.fill(0.0);
        let (pq, pk, pv, po) = (q.as_ptr(), keys.as_ptr(), values.as_ptr(), out.as_mut_ptr());
        let (mut m, mut l) = (-f32::MAX, 0.0f32);
        let mut tile = [0.0f32; L];
        for j0 in (0..slots).step_by(L) {
            let nb = L.min(slots - j0);
            // Offsets of the block's K and V rows, all < slots·hd.
            let rows: [usize; L] = std::array::from_fn(|t| (j0 + t.min(nb - 1)) * hd);
            let mut acc = [_mm512_setzero_ps(); L];
            for c in (0..hd).step_by(L) {
                let k = mask(hd - c);
                // SAFETY: c < hd and `k` enables lanes below hd, so these read inside `q`
                // (length hd) and inside rows[t]/hd < slots of `keys` (length slots·hd).
                unsafe {
                    let qc = _mm512_maskz_loadu_ps(k, pq.add(c));
                    for t in 0..L {
                        acc[t] = _mm512_fmadd_ps(qc, _mm512_maskz_loadu_ps(k, pk.add(rows[t] + c)), acc[t]);
                    }
                }
            }
            let scores = _mm512_mul_ps(sum_lanes_16(acc), _mm512_set1_ps(scale));
            let sv = _mm512_mask_blend_ps(mask(nb), _mm512_set1_ps(f32::NEG_INFINITY), scores);
            let bm = m.max(_mm512_reduce_max_ps(sv));
            let alpha = exp_fast(m - bm);
            let weights = exp(_mm512_sub_ps(sv, _mm512_set1_ps(bm)));
            l = l * alpha + _mm512_reduce_add_ps(weights);
            // SAFETY: `tile` holds 16 floats.
            unsafe { _mm512_storeu_ps(tile.as_mut_ptr(), weights) };
            let av = _mm512_set1_ps(alpha);
            for c in (0..hd).step_by(L) {
                let k = mask(hd - c);
                // SAFETY: c < hd and `k` enables lanes below hd, so these touch only `out`
                // (length hd) and rows[t]/hd < slots of `values` (length slots·hd).
                unsafe {
                    let mut o = [
                        _mm512_mul_ps(_mm512_maskz_loadu_ps(k, po.add(c)), av),
                        _mm512_setzero_ps(),
                        _mm512_setzero_ps(),
                        _mm512_setzero_ps(),
                    ];
                    for t in 0..L {
                        let vr = _mm512_maskz_loadu_ps(k, pv.add(rows[t] + c));
                        o[t % 4] = _mm512_fmadd_ps(_mm512_set1_ps(tile[t]), vr, o[t % 4]);
                    }
                    let o = _mm512_add_ps(_mm512_add_ps(o[0], o[1]), _mm512_add_ps(o[2], o[3]));
                    _mm512_mask_storeu_ps(po.add(c), k, o);
                }
            }
            m = bm;
        }
        let inv = _mm512_set1_ps(1.0 / l);
        for c in (0..hd).step_by(L) {
            let k = mask(hd - c);
            // SAFETY: c < hd and `k` enables only lanes inside `out`.
            unsafe { _mm512_mask_storeu_ps(po.add(c), k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, po.add(c)), inv)) };
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
    use tt_tensor::kernels::exp_fast;

    /// Lane `t` of the result is the sum of the 8 lanes of `v[t]`: three levels of `hadd` and
    /// one cross-half add (6 `hadd`s, 2 permutes, 1 add) instead of 8 separate reductions.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn sum_lanes_8(v: [__m256; 8]) -> __m256 {
        // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7].
        let t0 = _mm256_hadd_ps(v[0], v[1]);
        let t1 = _mm256_hadd_ps(v[2], v[3]);
        let t2 = _mm256_hadd_ps(v[4], v[5]);
        let t3 = _mm256_hadd_ps(v[6], v[7]);
        // [v0₀₋₃, v1₀₋₃, v2₀₋₃, v3₀₋₃ | v0₄₋₇, v1₄₋₇, v2₄₋₇, v3₄₋₇], and likewise for v4..v7.
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(u0, u1), _mm256_permute2f128_ps::<0x31>(u0, u1))
    }

    /// Blocks of 8 keys, one register of partial sums per key; see the AVX-512 version.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn decode_attention(q: &[f32], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let slots = keys.len() / hd;
        out.fill(0.0);
        let (pq, pk, pv, po) = (q.as_ptr(), keys.as_ptr(), values.as_ptr(), out.as_mut_ptr());
        let (mut m, mut l) = (-f32::MAX, 0.0f32);
        let mut tile = [0.0f32; L];
        for j0 in (0..slots).step_by(L) {
            let nb = L.min(slots - j0);
            // Offsets of the block's K and V rows, all < slots·hd (a partial block repeats its
            // last key, which then gets score −∞ and weight 0).
            let rows: [usize; L] = std::array::from_fn(|t| (j0 + t.min(nb - 1)) * hd);
            let mut acc = [_mm256_setzero_ps(); L];
            for c in (0..hd).step_by(L) {
                let k = mask(hd - c);
                // SAFETY: c < hd and `k` enables lanes below hd, so these read inside `q`
                // (length hd) and inside rows[t]/hd < slots of `keys` (length slots·hd).
                unsafe {
                    let qc = _mm256_maskload_ps(pq.add(c), k);
                    for t in 0..L {
                        acc[t] = _mm256_fmadd_ps(qc, _mm256_maskload_ps(pk.add(rows[t] + c), k), acc[t]);
                    }
                }
            }
            let scores = _mm256_mul_ps(sum_lanes_8(acc), _mm256_set1_ps(scale));
            let sv = _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), scores, _mm256_castsi256_ps(mask(nb)));
            let bm = m.max(hmax(sv));
            let alpha = exp_fast(m - bm);
            let weights = exp(_mm256_sub_ps(sv, _mm256_set1_ps(bm)));
            l = l * alpha + hsum(weights);
            // SAFETY: `tile` holds 8 floats.
            unsafe { _mm256_storeu_ps(tile.as_mut_ptr(), weights) };
            let av = _mm256_set1_ps(alpha);
            for c in (0..hd).step_by(L) {
                let k = mask(hd - c);
                // SAFETY: c < hd and `k` enables lanes below hd, so these touch only `out`
                // (length hd) and rows[t]/hd < slots of `values` (length slots·hd).
                unsafe {
                    let mut o = [
                        _mm256_mul_ps(_mm256_maskload_ps(po.add(c), k), av),
                        _mm256_setzero_ps(),
                        _mm256_setzero_ps(),
                        _mm256_setzero_ps(),
                    ];
                    for t in 0..L {
                        let vr = _mm256_maskload_ps(pv.add(rows[t] + c), k);
                        o[t % 4] = _mm256_fmadd_ps(_mm256_set1_ps(tile[t]), vr, o[t % 4]);
                    }
                    let o = _mm256_add_ps(_mm256_add_ps(o[0], o[1]), _mm256_add_ps(o[2], o[3]));
                    _mm256_maskstore_ps(po.add(c), k, o);
                }
            }
            m = bm;
        }
        let inv = _mm256_set1_ps(1.0 / l);
        for c in (0..hd).step_by(L) {
            let k = mask(hd - c);
            // SAFETY: c < hd and `k` enables only lanes inside `out`.
            unsafe { _mm256_maskstore_ps(po.add(c), k, _mm256_mul_ps(_mm256_maskload_ps(po.add(c), k), inv)) };
        }
    }
}
