//! The int4 × int8 product: `y[r, o] = Σ_g (Σ_{i∈g} a[r, i]·q[o, i]) · (S_w[o, g]·S_a[r, g])`,
//! with the inner sums exact in i32 and the groups combined in f32 in one fixed order (`g`
//! ascending, starting from 0.0; `t = isum as f32 · (S_w·S_a)` then `y = y + t`, no fused
//! multiply-add) — the same IEEE operations per output at every level, so every level gives the
//! same bits as [`matmul_reference`].
//!
//! ## Layout ([`PackedI4`])
//! Codes `q ∈ [−8, 7]` are stored as nibbles `u = q + 8 ∈ [0, 15]`, two per byte. Within each
//! block of 32 inputs of one output row, byte `i ∈ [0, 16)` holds input `i` in its low nibble and
//! input `i + 16` in its high nibble — ggml's Q4_0 order: one AND gives inputs 0–15 and one shift
//! gives 16–31, each already in input order, no shuffle. The kernel layout interleaves 16 outputs
//! (a panel) in 4-byte units, as `PackedI8` does:
//!
//! ```text
//! codes[((panel·NB + b)·4 + k)·64 + lane·4 + j] = u[o, 32b + 4k + j] | u[o, 32b + 16 + 4k + j] << 4
//!                                                     (o = panel·16 + lane; code 0, nibble 8, past the edges)
//! scales[(panel·G + g)·16 + lane]               = S_w[o, g] as f16
//! ```
//!
//! so one 64-byte load holds 4 inputs (low nibbles) and 4 more (high nibbles) of 16 outputs: two
//! `vpdpbusd` operands after an AND and a shift. The row-major file order of
//! [`crate::checkpoint`] is the same bytes, unpermuted ([`PackedI4::from_nibbles`] /
//! [`PackedI4::nibbles`]). This is the only copy of the codes in memory.
//!
//! ## Exactness
//! The kernels multiply the unsigned nibbles `u` with the signed activation codes `a ∈ [−127,
//! 127]` (`vpdpbusd` and `vpmaddubsw` take u8 × i8), and correct once per group:
//! `Σ q·a = Σ u·a − 8·Σa`, with `Σa` per row and group computed when the row is quantized.
//! - **AVX-512 VNNI**: `vpdpbusd` adds 4 products `|u·a| ≤ 15·127` per lane into i32 — no
//!   saturating step at all.
//! - **AVX2**: `vpmaddubsw` saturates its i16 pair sums, but `|2·15·127| = 3810` never reaches
//!   it; 8 such sums per 32-input block (`≤ 30 480 < 32 767`) are added in i16, then widened with
//!   `vpmaddwd` into i32 once per block.
//! - **Scalar**: the reference order over the same layout.
//!
//! Per group `|Σ q·a| ≤ group·8·127 < 2²⁴` (groups of at most [`MAX_GROUP`]), so its conversion
//! to f32 is exact too. A ragged last group (inputs not a multiple of the group) is padded with
//! code 0 and activation 0: padding adds exactly 0.

use half::f16;

use crate::error::{try_weight_buffer, try_with_capacity, QuantError, Result};
use crate::kernels::{IntLevel, MAX_UNBACKED, PANEL};
use crate::rowops::MAGIC;

/// Inputs per code block: 16 bytes of nibbles.
pub const BLOCK: usize = 32;

/// The group sizes the format supports (inputs sharing one weight scale, and one activation
/// scale): multiples of [`BLOCK`], each group's integer sum staying below 2²⁴.
pub const GROUPS: [usize; 3] = [32, 64, 128];

/// The largest supported group.
pub const MAX_GROUP: usize = 128;

/// The nibble of code 0 (codes are stored offset by 8).
const ZERO_NIBBLE: u8 = 8;

/// `Ok(())` if `group` is one of [`GROUPS`], else an error naming `op`.
pub(crate) fn check_group(op: &'static str, group: usize) -> Result<()> {
    if GROUPS.contains(&group) {
        Ok(())
    } else {
        Err(QuantError::arg(op, format!("int4 group size {group} is not one of {GROUPS:?}")))
    }
}

/// An int4 `[out, in]` matrix with one f16 scale per output and group, packed for the kernels
/// (see the module docs).
#[derive(Debug, Clone)]
pub struct PackedI4 {
    codes: Vec<u8>,
    scales: Vec<f16>,
    out_f: usize,
    in_f: usize,
    group: usize,
    /// Groups per row: `in` rounded up to the group, divided by it.
    groups: usize,
    /// 32-input blocks per row: `groups·group/32`.
    blocks: usize,
    panels: usize,
}

impl PackedI4 {
    /// Packs row-major codes `q` (`[out, in]`, each in `[−8, 7]`) and row-major scales
    /// (`[out, groups]`, `groups = ⌈in/group⌉`).
    ///
    /// # Errors
    /// A group not in [`GROUPS`]; slices of the wrong length; a code outside `[−8, 7]`; a scale
    /// that is not finite and positive; sizes that overflow `usize` or do not fit in memory.
    pub fn new(q: &[i8], scales: &[f16], out_f: usize, in_f: usize, group: usize) -> Result<PackedI4> {
        let op = "PackedI4::new";
        if out_f.checked_mul(in_f) != Some(q.len()) {
            return Err(QuantError::arg(op, format!("{} codes for a {out_f}×{in_f} matrix", q.len())));
        }
        if let Some(i) = q.iter().position(|c| !(-8..=7).contains(c)) {
            return Err(QuantError::arg(op, format!("code {} at flat index {i} is outside [−8, 7]", q[i])));
        }
        let mut p = PackedI4::empty(op, scales, out_f, in_f, group)?;
        if in_f > 0 {
            for (o, row) in q.chunks_exact(in_f).enumerate() {
                for (i, &c) in row.iter().enumerate() {
                    p.set(o, i, c);
                }
            }
        }
        Ok(p)
    }

    /// Packs row-major nibble bytes as [`crate::checkpoint`] stores them: `[out, blocks·16]`,
    /// byte `i` of block `b` holding input `32b + i` (low nibble) and `32b + 16 + i` (high), codes
    /// offset by 8.
    ///
    /// # Errors
    /// As [`PackedI4::new`]; `bytes` of the wrong length; a padding nibble (past `in`) that is not
    /// code 0.
    pub fn from_nibbles(bytes: &[u8], scales: &[f16], out_f: usize, in_f: usize, group: usize) -> Result<PackedI4> {
        let op = "PackedI4::from_nibbles";
        let mut p = PackedI4::empty(op, scales, out_f, in_f, group)?;
        let row_bytes = p.blocks * BLOCK / 2;
        if out_f.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(QuantError::arg(
                op,
                format!(
                    "{} bytes for {out_f} rows of {row_bytes} bytes ({in_f} inputs in groups of {group})",
                    bytes.len()
                ),
            ));
        }
        if row_bytes > 0 {
            for (o, row) in bytes.chunks_exact(row_bytes).enumerate() {
                for (n, &byte) in row.iter().enumerate() {
                    let (b, i) = (n / 16, n % 16);
                    for (input, nib) in [(b * BLOCK + i, byte & 15), (b * BLOCK + 16 + i, byte >> 4)] {
                        if input >= in_f && nib != ZERO_NIBBLE {
                            return Err(QuantError::arg(
                                op,
                                format!("row {o}: the padding nibble of input {input} (past {in_f}) is {nib}, not 8 (code 0)"),
                            ));
                        }
                    }
                    let at = p.byte_index(o, b * BLOCK + i);
                    p.codes[at] = byte;
                }
            }
        }
        Ok(p)
    }

    /// All codes at 0, scales checked and laid out.
    fn empty(op: &'static str, scales: &[f16], out_f: usize, in_f: usize, group: usize) -> Result<PackedI4> {
        check_group(op, group)?;
        let groups = in_f.div_ceil(group);
        if out_f.checked_mul(groups) != Some(scales.len()) {
            return Err(QuantError::arg(
                op,
                format!("{} scales for {out_f} rows of {groups} groups of {group}", scales.len()),
            ));
        }
        if let Some(i) = scales.iter().position(|s| !(s.is_finite() && s.to_f32() > 0.0)) {
            return Err(QuantError::arg(
                op,
                format!("scale {} at flat index {i} is not finite and positive", scales[i]),
            ));
        }
        let (blocks, panels) = (groups * (group / BLOCK), out_f.div_ceil(PANEL));
        let sizes = panels
            .checked_mul(PANEL)
            .and_then(|lanes| Some((lanes.checked_mul(blocks)?.checked_mul(BLOCK / 2)?, lanes.checked_mul(groups)?)));
        let Some((code_len, scale_len)) = sizes else {
            return Err(QuantError::arg(op, format!("a {out_f}×{in_f} matrix: the padded size overflows usize")));
        };
        let mut codes = try_weight_buffer(op, code_len)?;
        codes.resize(code_len, ZERO_NIBBLE | ZERO_NIBBLE << 4);
        // Padding outputs get scale 0: their codes are 0, so they add 0·0.
        let mut packed_scales = try_with_capacity(op, scale_len)?;
        packed_scales.resize(scale_len, f16::ZERO);
        if groups > 0 {
            for (o, row) in scales.chunks_exact(groups).enumerate() {
                for (g, &s) in row.iter().enumerate() {
                    packed_scales[((o / PANEL) * groups + g) * PANEL + o % PANEL] = s;
                }
            }
        }
        Ok(PackedI4 { codes, scales: packed_scales, out_f, in_f, group, groups, blocks, panels })
    }

    /// Where the byte holding input `i` (low nibble if `i mod 32 < 16`) of output `o` lives.
    fn byte_index(&self, o: usize, i: usize) -> usize {
        let (b, within) = (i / BLOCK, i % BLOCK % 16);
        (((o / PANEL) * self.blocks + b) * 4 + within / 4) * 64 + (o % PANEL) * 4 + within % 4
    }

    fn set(&mut self, o: usize, i: usize, q: i8) {
        let at = self.byte_index(o, i);
        let u = (q + 8) as u8;
        let b = &mut self.codes[at];
        *b = if i % BLOCK < 16 { (*b & 0xF0) | u } else { (*b & 0x0F) | u << 4 };
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.out_f, self.in_f)
    }

    /// Inputs per scale.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Groups per row, `⌈in/group⌉`.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// 32-input blocks per row (`groups·group/32`): activation rows are `blocks·32` bytes.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Bytes the packed codes and scales occupy (padding included): what a forward call reads.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * self.scales.len()
    }

    /// The code of `W[o, i]`, in `[−8, 7]`.
    ///
    /// # Panics
    /// `o ≥ out` or `i ≥ in`.
    pub fn code(&self, o: usize, i: usize) -> i8 {
        assert!(o < self.out_f && i < self.in_f, "PackedI4::code: ({o}, {i}) outside {}×{}", self.out_f, self.in_f);
        let b = self.codes[self.byte_index(o, i)];
        let u = if i % BLOCK < 16 { b & 15 } else { b >> 4 };
        u as i8 - 8
    }

    /// The scale of output `o`, group `g`.
    ///
    /// # Panics
    /// `o ≥ out` or `g ≥ groups`.
    pub fn scale(&self, o: usize, g: usize) -> f16 {
        assert!(
            o < self.out_f && g < self.groups,
            "PackedI4::scale: ({o}, {g}) outside {}×{}",
            self.out_f,
            self.groups
        );
        self.scales[((o / PANEL) * self.groups + g) * PANEL + o % PANEL]
    }

    /// The row-major scales `[out, groups]`.
    pub fn row_scales(&self) -> Vec<f16> {
        (0..self.out_f).flat_map(|o| (0..self.groups).map(move |g| self.scale(o, g))).collect()
    }

    /// The row-major nibble bytes `[out, blocks·16]` ([`PackedI4::from_nibbles`]'s input).
    pub fn nibbles(&self) -> Vec<u8> {
        let row_bytes = self.blocks * BLOCK / 2;
        let mut out = Vec::with_capacity(self.out_f * row_bytes);
        for o in 0..self.out_f {
            for b in 0..self.blocks {
                out.extend((0..16).map(|i| self.codes[self.byte_index(o, b * BLOCK + i)]));
            }
        }
        out
    }

    /// `y[r·out + o] = Σ_g isum·(S_w[o, g]·S_a[r, g])` for `r < rows` (no bias), at `level`
    /// (clamped to what the CPU runs), over activation rows quantized by [`quantize_row`]:
    /// `codes` `rows × blocks·32`, `scales` and `sums` `rows × groups`.
    ///
    /// # Errors
    /// A slice shorter than `rows` rows (products that overflow included).
    pub fn matmul(&self, level: IntLevel, a: Acts<'_>, rows: usize, y: &mut [f32]) -> Result<()> {
        let need = |have: usize, per: usize| rows.checked_mul(per).is_some_and(|n| have >= n);
        let kb = self.blocks * BLOCK;
        let fits = need(a.codes.len(), kb)
            && need(a.scales.len(), self.groups)
            && need(a.sums.len(), self.groups)
            && need(y.len(), self.out_f);
        if !fits {
            return Err(QuantError::arg(
                "PackedI4::matmul",
                format!(
                    "{rows} rows need {kb}·{rows} codes, {g}·{rows} scales and sums and {}·{rows} outputs; got {}, {}, {} \
                     and {}",
                    self.out_f,
                    a.codes.len(),
                    a.scales.len(),
                    a.sums.len(),
                    y.len(),
                    g = self.groups,
                ),
            ));
        }
        if self.out_f == 0 {
            return Ok(());
        }
        let level = level.min(IntLevel::detected()).without_amx();
        #[cfg(target_arch = "x86_64")]
        let level = if level == IntLevel::Avx2 && !is_x86_feature_detected!("f16c") { IntLevel::Scalar } else { level };
        tt_accel::dispatch::record_level_use("int4", level.name());
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level is clamped to what the CPU has (AVX-512F + VNNI); every slice holds
            // `rows` rows (checked above).
            IntLevel::Avx512Vnni => unsafe { vnni::matmul(self, a, rows, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, with AVX2 and F16C.
            IntLevel::Avx2 => unsafe { avx2::matmul(self, a, rows, y) },
            _ => scalar_matmul(self, a, rows, y),
        }
        Ok(())
    }
}

/// Quantized activation rows: `codes` (`blocks·32` per row, i8 in `[−127, 127]`, 0 past `in`),
/// `scales` `S_a` and `sums` `Σa` per row and group.
#[derive(Debug, Clone, Copy)]
pub struct Acts<'a> {
    pub codes: &'a [i8],
    pub scales: &'a [f32],
    pub sums: &'a [i32],
}

/// Quantizes one row `x` (`in` values) per group, symmetric to `[−127, 127]`:
/// `S_a = max|x|/127` (0 for an all-zero group, whose codes are 0), `a = round_half_even(x/S_a)`
/// computed as `x·(1/S_a)` clamped to ±127. Writes `codes` (`blocks·32`, zero past `x`), `scales` and `sums`
/// (`groups` each). Returns whether every value was finite (if not, the codes mean nothing).
///
/// # Panics
/// `codes`, `scales` or `sums` shorter than `x` needs in groups of `group`, or `group` 0.
pub fn quantize_row(x: &[f32], group: usize, codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]) -> bool {
    let groups = x.len().div_ceil(group);
    codes[x.len()..groups * group].fill(0);
    let mut finite = true;
    for (g, xs) in x.chunks(group).enumerate() {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        finite &= xs.iter().all(|v| v.is_finite());
        let s = amax / 127.0;
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        let mut sum = 0i32;
        for (c, &v) in codes[g * group..].iter_mut().zip(xs) {
            // Clamped first, then rounded by adding and subtracting MAGIC (ties to even, like
            // `round_ties_even`, which without SSE4.1 is a libm call per value).
            let t = (v * inv).clamp(-127.0, 127.0);
            let q = ((t + MAGIC) - MAGIC) as i8;
            *c = q;
            sum += q as i32;
        }
        scales[g] = s;
        sums[g] = sum;
    }
    finite
}

/// The plainest reference: row-major activation codes `a` (`rows × groups·group`, zero-padded)
/// with `a_scales` (`rows × groups`), row-major weight codes `q` (`out × in`, unpadded) with
/// `w_scales` (`out × groups`); the group sums in i32, combined in the module docs' order.
///
/// # Errors
/// A slice too short, a group not in [`GROUPS`], or a result of more values than fit in memory
/// (or, with no inputs, more than [`MAX_UNBACKED`]).
pub fn matmul_reference(
    a: &[i8],
    a_scales: &[f32],
    q: &[i8],
    w_scales: &[f16],
    rows: usize,
    in_f: usize,
    out_f: usize,
    group: usize,
) -> Result<Vec<f32>> {
    let op = "int4::matmul_reference";
    check_group(op, group)?;
    let groups = in_f.div_ceil(group);
    let fits = |have: usize, n: usize, per: usize| n.checked_mul(per).is_some_and(|k| have >= k);
    let n = rows.checked_mul(out_f);
    let ok = fits(a.len(), rows, groups * group)
        && fits(a_scales.len(), rows, groups)
        && fits(q.len(), out_f, in_f)
        && fits(w_scales.len(), out_f, groups)
        && n.is_some_and(|n| in_f > 0 || n <= MAX_UNBACKED);
    let Some(n) = n.filter(|_| ok) else {
        return Err(QuantError::arg(op, format!("slices too short for {rows} rows of a {out_f}×{in_f} matrix")));
    };
    let mut y = try_with_capacity(op, n)?;
    for r in 0..rows {
        for o in 0..out_f {
            let mut acc = 0.0f32;
            for g in 0..groups {
                let isum: i32 = (g * group..in_f.min((g + 1) * group))
                    .map(|i| a[r * groups * group + i] as i32 * q[o * in_f + i] as i32)
                    .sum();
                acc += isum as f32 * (w_scales[o * groups + g].to_f32() * a_scales[r * groups + g]);
            }
            y.push(acc);
        }
    }
    Ok(y)
}

/// The scalar kernel over the packed layout: per row and panel, 16 lanes, groups in order.
fn scalar_matmul(w: &PackedI4, a: Acts<'_>, rows: usize, y: &mut [f32]) {
    let (kb, per_group) = (w.blocks * BLOCK, w.group / BLOCK);
    for r in 0..rows {
        let ar = &a.codes[r * kb..(r + 1) * kb];
        for panel in 0..w.panels {
            let mut acc = [0.0f32; PANEL];
            for g in 0..w.groups {
                let mut raw = [0i32; PANEL];
                for b in g * per_group..(g + 1) * per_group {
                    for k in 0..4 {
                        let wk = &w.codes[((panel * w.blocks + b) * 4 + k) * 64..][..64];
                        let (lo, hi) = (&ar[b * BLOCK + 4 * k..][..4], &ar[b * BLOCK + 16 + 4 * k..][..4]);
                        for (lane, s) in raw.iter_mut().enumerate() {
                            for j in 0..4 {
                                let byte = wk[lane * 4 + j];
                                *s += (byte & 15) as i32 * lo[j] as i32 + (byte >> 4) as i32 * hi[j] as i32;
                            }
                        }
                    }
                }
                let (sa, corr) = (a.scales[r * w.groups + g], 8 * a.sums[r * w.groups + g]);
                for (lane, v) in acc.iter_mut().enumerate() {
                    let s = w.scales[(panel * w.groups + g) * PANEL + lane].to_f32();
                    *v += (raw[lane] - corr) as f32 * (s * sa);
                }
            }
            let o0 = panel * PANEL;
            let n = PANEL.min(w.out_f - o0);
            y[r * w.out_f + o0..][..n].copy_from_slice(&acc[..n]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Acts, PackedI4, BLOCK, PANEL};

    /// # Safety
    /// AVX-512F and VNNI; every slice holds `rows` rows (checked by `PackedI4::matmul`).
    pub(super) unsafe fn matmul(w: &PackedI4, a: Acts<'_>, rows: usize, y: &mut [f32]) {
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(4);
            // One row (a decode step) walks one panel at a time: a single forward stream, which
            // the hardware prefetcher keeps ahead of; four panels side by side (four streams
            // `blocks·256` bytes apart) ran 10–25% slower from DRAM here (AMD EPYC, stories
            // shapes), though slightly faster from L1/L2.
            // SAFETY: rows r0..r0 + r exist (caller's contract); features forwarded.
            unsafe {
                match r {
                    1 => panels::<1, 1>(w, a, r0, y),
                    2 => panels::<2, 2>(w, a, r0, y),
                    3 => panels::<3, 2>(w, a, r0, y),
                    _ => panels::<4, 1>(w, a, r0, y),
                }
            }
            r0 += r;
        }
    }

    /// # Safety
    /// As [`matmul`], rows `r0..r0 + R` existing.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn panels<const R: usize, const P: usize>(w: &PackedI4, a: Acts<'_>, r0: usize, y: &mut [f32]) {
        let mut p = 0;
        while p + P <= w.panels {
            // SAFETY: panels p..p + P exist; forwarded.
            unsafe { tile::<R, P>(w, a, r0, p, y) };
            p += P;
        }
        while p < w.panels {
            // SAFETY: as above.
            unsafe { tile::<R, 1>(w, a, r0, p, y) };
            p += 1;
        }
    }

    /// Rows `r0..r0 + R` × panels `p0..p0 + P`, over all groups.
    ///
    /// # Safety
    /// As [`panels`], with `p0 + P ≤ panels`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn tile<const R: usize, const P: usize>(w: &PackedI4, a: Acts<'_>, r0: usize, p0: usize, y: &mut [f32]) {
        let (kb, per_group, groups) = (w.blocks * BLOCK, w.group / BLOCK, w.groups);
        let (codes, scales) = (w.codes.as_ptr(), w.scales.as_ptr() as *const __m256i);
        let nib = _mm512_set1_epi8(0x0F);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for g in 0..groups {
            // Low and high nibbles accumulate apart: two independent vpdpbusd chains per tile
            // entry instead of one twice as long (integer adds: the sum is the same).
            let mut ints = [[[_mm512_setzero_si512(); 2]; P]; R];
            for b in g * per_group..(g + 1) * per_group {
                for k in 0..4 {
                    let mut lo = [_mm512_setzero_si512(); P];
                    let mut hi = [_mm512_setzero_si512(); P];
                    for p in 0..P {
                        // SAFETY: panel p0 + p < panels, block b < blocks, k < 4: 64 bytes inside `codes`.
                        let v = unsafe {
                            _mm512_loadu_si512(codes.add((((p0 + p) * w.blocks + b) * 4 + k) * 64) as *const _)
                        };
                        lo[p] = _mm512_and_si512(v, nib);
                        // A 32-bit shift moves each byte's high nibble down (and a neighbour's low nibble into
                        // the top, which the mask drops): AVX-512F has no 16-bit shift without BW.
                        hi[p] = _mm512_and_si512(_mm512_srli_epi32::<4>(v), nib);
                    }
                    for (r, row) in ints.iter_mut().enumerate() {
                        // SAFETY: row r0 + r < rows; bytes b·32 + 4k .. + 4 and + 16 lie inside its kb.
                        let (al, ah) = unsafe {
                            let base = a.codes.as_ptr().add((r0 + r) * kb + b * BLOCK + 4 * k);
                            (
                                _mm512_set1_epi32((base as *const i32).read_unaligned()),
                                _mm512_set1_epi32((base.add(16) as *const i32).read_unaligned()),
                            )
                        };
                        for (p, [vl, vh]) in row.iter_mut().enumerate() {
                            *vl = _mm512_dpbusd_epi32(*vl, lo[p], al);
                            *vh = _mm512_dpbusd_epi32(*vh, hi[p], ah);
                        }
                    }
                }
            }
            for (r, (row, ints)) in acc.iter_mut().zip(&ints).enumerate() {
                let i = (r0 + r) * groups + g;
                let (sa, corr) = (_mm512_set1_ps(a.scales[i]), _mm512_set1_epi32(8 * a.sums[i]));
                for (p, (v, &[lo, hi])) in row.iter_mut().zip(ints).enumerate() {
                    let raw = _mm512_add_epi32(lo, hi);
                    // SAFETY: 16 f16 scales of panel p0 + p, group g < groups: inside `scales`.
                    let s = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(scales.add((p0 + p) * groups + g)) });
                    let t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(raw, corr)), _mm512_mul_ps(s, sa));
                    *v = _mm512_add_ps(*v, t);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (p, &v) in row.iter().enumerate() {
                let o0 = (p0 + p) * PANEL;
                let n = PANEL.min(w.out_f - o0);
                let mask = if n == PANEL { u16::MAX } else { (1u16 << n) - 1 };
                // SAFETY: outputs o0..o0 + n of row r0 + r lie inside `y` (caller's contract).
                unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr().add((r0 + r) * w.out_f + o0), mask, v) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Acts, PackedI4, BLOCK, PANEL};

    /// # Safety
    /// AVX2 and F16C; every slice holds `rows` rows (checked by `PackedI4::matmul`).
    pub(super) unsafe fn matmul(w: &PackedI4, a: Acts<'_>, rows: usize, y: &mut [f32]) {
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(2);
            for panel in 0..w.panels {
                // SAFETY: rows r0..r0 + r exist, panel < panels; features forwarded.
                unsafe {
                    if r == 2 {
                        tile::<2>(w, a, r0, panel, y)
                    } else {
                        tile::<1>(w, a, r0, panel, y)
                    }
                }
            }
            r0 += r;
        }
    }

    /// Rows `r0..r0 + R` × one panel, as two 8-lane halves.
    ///
    /// # Safety
    /// As [`matmul`], rows `r0..r0 + R` existing, `panel < panels`.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn tile<const R: usize>(w: &PackedI4, a: Acts<'_>, r0: usize, panel: usize, y: &mut [f32]) {
        let (kb, per_group, groups) = (w.blocks * BLOCK, w.group / BLOCK, w.groups);
        let (codes, scales) = (w.codes.as_ptr(), w.scales.as_ptr() as *const __m128i);
        let (nib, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for g in 0..groups {
            let mut ints = [[_mm256_setzero_si256(); 2]; R];
            for b in g * per_group..(g + 1) * per_group {
                // Pair sums ≤ 3810 each, 8 per lane per block: ≤ 30 480, inside i16.
                let mut pairs = [[_mm256_setzero_si256(); 2]; R];
                for k in 0..4 {
                    // SAFETY: block b < blocks, k < 4 of panel < panels: 64 bytes inside `codes`.
                    let wp = unsafe { codes.add(((panel * w.blocks + b) * 4 + k) * 64) };
                    for h in 0..2 {
                        // SAFETY: half h of the 64 bytes.
                        let v = unsafe { _mm256_loadu_si256(wp.add(32 * h) as *const _) };
                        let (lo, hi) = (_mm256_and_si256(v, nib), _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib));
                        for (r, row) in pairs.iter_mut().enumerate() {
                            // SAFETY: row r0 + r < rows; bytes b·32 + 4k .. + 4 and + 16 inside its kb.
                            let (al, ah) = unsafe {
                                let base = a.codes.as_ptr().add((r0 + r) * kb + b * BLOCK + 4 * k);
                                (
                                    _mm256_set1_epi32((base as *const i32).read_unaligned()),
                                    _mm256_set1_epi32((base.add(16) as *const i32).read_unaligned()),
                                )
                            };
                            let s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, al), _mm256_maddubs_epi16(hi, ah));
                            row[h] = _mm256_add_epi16(row[h], s);
                        }
                    }
                }
                for (row, p) in ints.iter_mut().zip(&pairs) {
                    for h in 0..2 {
                        row[h] = _mm256_add_epi32(row[h], _mm256_madd_epi16(p[h], ones));
                    }
                }
            }
            for (r, (row, ints)) in acc.iter_mut().zip(&ints).enumerate() {
                let i = (r0 + r) * groups + g;
                let (sa, corr) = (_mm256_set1_ps(a.scales[i]), _mm256_set1_epi32(8 * a.sums[i]));
                for h in 0..2 {
                    // SAFETY: 8 f16 scales (half h) of panel, group g < groups: inside `scales`.
                    let s = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(scales.add(((panel * groups + g) * 2) + h)) });
                    let t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ints[h], corr)), _mm256_mul_ps(s, sa));
                    row[h] = _mm256_add_ps(row[h], t);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let mut buf = [0.0f32; PANEL];
            for (h, &v) in row.iter().enumerate() {
                // SAFETY: `buf` holds 16 f32.
                unsafe { _mm256_storeu_ps(buf.as_mut_ptr().add(8 * h), v) };
            }
            let o0 = panel * PANEL;
            let n = PANEL.min(w.out_f - o0);
            y[(r0 + r) * w.out_f + o0..][..n].copy_from_slice(&buf[..n]);
        }
    }
}
