//! Per-group int8 products — the weight format of ggml's Q8_0 (group 32) and llama2.c's
//! `runq.c` (group 64): symmetric codes in `[−127, 127]` with one f32 scale per run of `g`
//! inputs of an output row.
//!
//! For an input row `a` (u8, with its zero point `Z_a`: see [`crate::linear`]) and output `o`,
//! with `G` the groups of a row:
//!
//! ```text
//! t_g = Σ_{i ∈ g} a_i·w[o, i] − Z_a·Σ_{i ∈ g} w[o, i]        exact i32 (= Σ (a_i − Z_a)·w[o, i])
//! f   = (…((0 + t_0·S[o, 0]) + t_1·S[o, 1]) + …) + t_{G−1}·S[o, G−1]      f32, this order
//! ```
//!
//! Each `t_g` is an exact integer (`|t_g| ≤ g·255·127`, within i32 for every `g ≤ MAX_K`);
//! the float steps are a conversion, a multiply and an add per group, in group order, never
//! contracted into an FMA. Every level runs exactly these operations per output lane, so
//! every level gives the same bits as [`matmul_reference`] (tested). The caller scales `f` by
//! `S_a` and adds the bias.
//!
//! ## Kernels
//! The weights are a [`PackedI8`] packed with [`PackedI8::new_grouped`]: each group starts on a
//! 4-input block, so a group is a whole number of the blocks the i32 kernels step over. A
//! register tile keeps, per row and panel of 16 outputs, an i32 accumulator that runs over one
//! group's blocks (`vpdpbusd` at the VNNI level, `vpmaddwd` at AVX2, as in the per-channel
//! kernels) and an f32 accumulator it is folded into at the end of the group: the group loop
//! adds one zero-point correction, one conversion and one multiply-add per 16 outputs and row,
//! against `g/4` integer instructions (8 at Q8_0's group 32), and nothing leaves the registers
//! until the whole row is done. The scales and code sums sit panel-major beside the codes,
//! `[(panel·G + g)·16 + lane]`, one 64-byte load per panel and group.

use super::{IntLevel, PackedI8, MAX_UNBACKED, PANEL};
use crate::error::{try_with_capacity, QuantError, Result};
use crate::scheme::{Granularity, QParams, QuantizedMatrix, Scheme};

/// A symmetric per-group int8 `[out, in]` matrix packed for the group kernels: codes once
/// (padded into [`PackedI8`]'s panels), and per output and group its scale and code sum.
#[derive(Debug, Clone)]
pub struct PackedGroups {
    packed: PackedI8,
    /// The group size as given (it may exceed `in`; the packed matrix clamps it).
    group: usize,
    /// `S_w` of group `g` of output `o` at `((o/16)·per_row + g)·16 + o%16`; 0 past `out`.
    scales: Vec<f32>,
    /// `Σ_{i ∈ g} w[o, i]`, same layout: the activation zero point's correction.
    sums: Vec<i32>,
    /// Scales per output: the groups of a row, or 1 with no inputs (a [`QuantizedMatrix`] keeps
    /// one per row even then).
    per_row: usize,
}

/// The group size of a symmetric per-group matrix, or why the group kernels cannot run it.
fn group_of(q: &QuantizedMatrix) -> Result<usize> {
    match (q.granularity(), q.scheme()) {
        (Granularity::PerGroup(g), Scheme::Symmetric) => Ok(g),
        (Granularity::PerGroup(g), Scheme::Affine) => Err(QuantError::Unsupported(format!(
            "affine per-group ({g}) weights: the group kernels take symmetric weights (as Q8_0); a zero point per \
             group would need the activations' sum per group in every row"
        ))),
        (other, _) => Err(QuantError::Unsupported(format!(
            "{} weights in the per-group kernels (use the per-channel kernels)",
            other.name()
        ))),
    }
}

impl PackedGroups {
    /// Packs a symmetric per-group matrix.
    ///
    /// # Errors
    /// Another granularity or an affine scheme ([`QuantError::Unsupported`]), or what
    /// [`PackedI8::new_grouped`] refuses.
    pub fn new(q: &QuantizedMatrix) -> Result<PackedGroups> {
        let op = "PackedGroups::new";
        let group = group_of(q)?;
        let (out_f, in_f) = (q.rows(), q.cols());
        let packed = PackedI8::new_grouped(q.codes(), out_f, in_f, group)?;
        let per_row = packed.groups().max(1);
        // acc_cols·per_row ≤ the packed length (per_row ≤ k4 with inputs), or acc_cols without.
        let n = packed.acc_cols() * per_row;
        let (mut scales, mut sums) = (try_with_capacity(op, n)?, try_with_capacity(op, n)?);
        scales.resize(n, 0.0f32);
        sums.resize(n, 0i32);
        let at = |o: usize, g: usize| ((o / PANEL) * per_row + g) * PANEL + o % PANEL;
        for (o, ps) in q.params().chunks_exact(per_row).enumerate() {
            for (g, p) in ps.iter().enumerate() {
                scales[at(o, g)] = p.scale();
            }
        }
        if in_f > 0 {
            for (o, row) in q.codes().chunks_exact(in_f).enumerate() {
                for (g, codes) in row.chunks(packed.group()).enumerate() {
                    sums[at(o, g)] = codes.iter().map(|&c| c as i32).sum();
                }
            }
        }
        Ok(PackedGroups { packed, group, scales, sums, per_row })
    }

    /// The packed codes.
    pub fn packed(&self) -> &PackedI8 {
        &self.packed
    }

    /// The group size as the matrix was quantized with (see [`PackedI8::group`] for the one the
    /// kernels use, clamped to the row).
    pub fn group(&self) -> usize {
        self.group
    }

    /// The scale of group `g` of output `o`.
    ///
    /// # Panics
    /// `o ≥ out` or `g` past the row's groups.
    pub fn scale(&self, o: usize, g: usize) -> f32 {
        let out_f = self.packed.shape().0;
        assert!(o < out_f && g < self.per_row, "PackedGroups::scale: ({o}, {g}) outside {out_f}×{}", self.per_row);
        self.scales[((o / PANEL) * self.per_row + g) * PANEL + o % PANEL]
    }

    /// Bytes held: the packed codes, scales and code sums (panel padding included).
    pub fn bytes(&self) -> usize {
        self.packed.bytes() + 4 * (self.scales.len() + self.sums.len())
    }

    /// The matrix rebuilt from the packed form (what checkpoints and `to_dense` read): the same
    /// codes and parameters it was packed from.
    pub fn to_quantized(&self) -> QuantizedMatrix {
        let (out_f, in_f) = self.packed.shape();
        let mut params = Vec::with_capacity(out_f * self.per_row);
        for o in 0..out_f {
            for g in 0..self.per_row {
                let s = self.scale(o, g);
                params.push(QParams::new(s, 0).expect("a scale taken from a valid QParams"));
            }
        }
        QuantizedMatrix::from_valid_parts(
            out_f,
            in_f,
            self.packed.unpack(),
            params,
            Scheme::Symmetric,
            Granularity::PerGroup(self.group),
        )
    }

    /// `out[r·acc_cols + o] = f` of the module docs for row `r < rows` of `a` (laid out as
    /// [`PackedI8::padded_input`] says, padding 0) with zero point `za[r]`, at `level` (clamped to
    /// what the CPU runs). Columns past `out` are written with 0.
    ///
    /// # Errors
    /// `a` shorter than `rows·row_bytes()`, `za` shorter than `rows`, or `out` shorter than
    /// `rows·acc_cols()` (products that overflow included).
    pub fn matmul(&self, level: IntLevel, a: &[u8], za: &[i32], rows: usize, out: &mut [f32]) -> Result<()> {
        let p = &self.packed;
        // The one check every kernel level relies on: all pointer offsets below are < these.
        let need = |have: usize, per: usize| rows.checked_mul(per).is_some_and(|n| have >= n);
        if !need(a.len(), p.row_bytes()) || za.len() < rows || !need(out.len(), p.acc_cols()) {
            return Err(QuantError::arg(
                "PackedGroups::matmul",
                format!(
                    "{rows} rows need {}·{rows} bytes, {rows} zero points, {}·{rows} outputs; got {}, {}, {}",
                    p.row_bytes(),
                    p.acc_cols(),
                    a.len(),
                    za.len(),
                    out.len()
                ),
            ));
        }
        // No outputs: nothing to write (and a loop over `rows` empty rows could run for ever).
        if p.acc_cols() == 0 {
            return Ok(());
        }
        let level = level.min(IntLevel::detected()).without_amx();
        tt_accel::dispatch::record_level_use("int", level.name());
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level is clamped to what the CPU supports (VNNI detected); `a`, `za`
            // and `out` hold what `rows` rows need (checked above).
            IntLevel::Avx512Vnni => unsafe { vnni::matmul(self, a, za, rows, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, with AVX2.
            IntLevel::Avx2 => unsafe { avx2::matmul(self, a, za, rows, out) },
            _ => scalar_matmul(self, a, za, rows, out),
        }
        Ok(())
    }
}

/// The scalar kernel over the packed layout: per row and panel, 16 lanes of the module docs'
/// formula.
fn scalar_matmul(w: &PackedGroups, a: &[u8], za: &[i32], rows: usize, out: &mut [f32]) {
    let p = &w.packed;
    let (kb, cols, gk4) = (p.row_bytes(), p.acc_cols(), p.gk4);
    for r in 0..rows {
        let ar = &a[r * kb..(r + 1) * kb];
        for panel in 0..cols / PANEL {
            let mut f = [0.0f32; PANEL];
            for g in 0..p.groups() {
                let mut s = [0i32; PANEL];
                for k in g * gk4..(g + 1) * gk4 {
                    let wk = &p.packed[(panel * p.k4 + k) * PANEL * 4..][..PANEL * 4];
                    let ak = &ar[k * 4..k * 4 + 4];
                    for (lane, s) in s.iter_mut().enumerate() {
                        for j in 0..4 {
                            *s = s.wrapping_add(ak[j] as i32 * wk[lane * 4 + j] as i32);
                        }
                    }
                }
                let at = (panel * w.per_row + g) * PANEL;
                for lane in 0..PANEL {
                    let t = s[lane].wrapping_sub(za[r].wrapping_mul(w.sums[at + lane]));
                    f[lane] += t as f32 * w.scales[at + lane];
                }
            }
            out[r * cols + panel * PANEL..][..PANEL].copy_from_slice(&f);
        }
    }
}

/// The plainest reference over the unpacked matrix `q` (symmetric, per-group): for each of
/// `rows` rows of `a` (`rows × in`, unpadded) with zero point `za[r]`, `rows × out` values of the
/// module docs' `f`, group by group in the same order. What the tests compare every level with.
///
/// # Errors
/// `q` not symmetric per-group; `a` shorter than `rows·in` or `za` than `rows`; a result that
/// overflows `usize` or does not fit in memory, or, with no inputs, one of more than
/// [`MAX_UNBACKED`] values.
pub fn matmul_reference(a: &[u8], za: &[i32], q: &QuantizedMatrix, rows: usize) -> Result<Vec<f32>> {
    let op = "group::matmul_reference";
    group_of(q)?;
    let (out_f, in_f) = (q.rows(), q.cols());
    let out = rows.checked_mul(out_f);
    let backed = in_f > 0 || out.is_some_and(|n| n <= MAX_UNBACKED);
    let n = match out {
        Some(n) if rows.checked_mul(in_f).is_some_and(|k| a.len() >= k) && za.len() >= rows && backed => n,
        _ => {
            return Err(QuantError::arg(
                op,
                format!(
                    "{} activations and {} zero points for {rows} rows of a {out_f}×{in_f} matrix",
                    a.len(),
                    za.len()
                ),
            ))
        }
    };
    let mut y = try_with_capacity(op, n)?;
    let per_row = q.params().len() / out_f.max(1);
    for r in 0..rows {
        let ar = &a[r * in_f..(r + 1) * in_f];
        for o in 0..out_f {
            let wo = &q.codes()[o * in_f..(o + 1) * in_f];
            let ps = &q.params()[o * per_row..(o + 1) * per_row];
            let mut f = 0.0f32;
            if in_f > 0 {
                let group = q.group_len();
                for ((ag, wg), p) in ar.chunks(group).zip(wo.chunks(group)).zip(ps) {
                    let s: i32 = ag.iter().zip(wg).map(|(&x, &c)| x as i32 * c as i32).sum();
                    let cs: i32 = wg.iter().map(|&c| c as i32).sum();
                    let t = s.wrapping_sub(za[r].wrapping_mul(cs));
                    f += t as f32 * p.scale();
                }
            }
            y.push(f);
        }
    }
    Ok(y)
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{PackedGroups, PANEL};

    /// Rows per tile: each row and panel holds an i32 and an f32 accumulator.
    const MR: usize = 6;

    /// # Safety
    /// The CPU has AVX-512F and AVX-512 VNNI; `a` holds `rows·row_bytes` bytes, `za` `rows`
    /// values and `out` `rows·acc_cols` (checked by `PackedGroups::matmul`).
    pub(super) unsafe fn matmul(w: &PackedGroups, a: &[u8], za: &[i32], rows: usize, out: &mut [f32]) {
        let (kb, cols) = (w.packed.row_bytes(), w.packed.acc_cols());
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(MR);
            // SAFETY: rows r0..r0 + r lie inside `a`, `za` and `out` (caller's contract); CPU
            // features forwarded.
            unsafe {
                let (ap, zp, op) = (a.as_ptr().add(r0 * kb), za.as_ptr().add(r0), out.as_mut_ptr().add(r0 * cols));
                // Few rows: more panels per tile, for independent accumulation chains.
                match r {
                    1 => panels::<1, 4>(w, ap, zp, op),
                    2 => panels::<2, 4>(w, ap, zp, op),
                    3 => panels::<3, 3>(w, ap, zp, op),
                    4 => panels::<4, 2>(w, ap, zp, op),
                    5 => panels::<5, 2>(w, ap, zp, op),
                    _ => panels::<6, 2>(w, ap, zp, op),
                }
            }
            r0 += r;
        }
    }

    /// All panels for `R` rows, `P` panels at a time, then one at a time.
    ///
    /// # Safety
    /// `a` holds `R` rows of `row_bytes`, `za` `R` values, `out` `R` rows of `acc_cols`; VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn panels<const R: usize, const P: usize>(w: &PackedGroups, a: *const u8, za: *const i32, out: *mut f32) {
        let panels = w.packed.acc_cols() / PANEL;
        let mut p = 0;
        while p + P <= panels {
            // SAFETY: panels p..p + P exist; forwarded contract.
            unsafe { tile::<R, P>(w, a, za, out, p) };
            p += P;
        }
        while p < panels {
            // SAFETY: as above.
            unsafe { tile::<R, 1>(w, a, za, out, p) };
            p += 1;
        }
    }

    /// One `R × P` register tile over the whole input dimension, group by group.
    ///
    /// # Safety
    /// As [`panels`], with `p0 + P ≤ panels`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn tile<const R: usize, const P: usize>(
        w: &PackedGroups,
        a: *const u8,
        za: *const i32,
        out: *mut f32,
        p0: usize,
    ) {
        let pk = &w.packed;
        let (k4, gk4, kb, cols) = (pk.k4, pk.gk4, pk.row_bytes(), pk.acc_cols());
        let base = pk.packed.as_ptr();
        let mut f = [[_mm512_setzero_ps(); P]; R];
        for g in 0..pk.groups() {
            let mut s = [[_mm512_setzero_si512(); P]; R];
            for k in g * gk4..(g + 1) * gk4 {
                let mut wv = [_mm512_setzero_si512(); P];
                for (p, v) in wv.iter_mut().enumerate() {
                    // SAFETY: panel p0 + p < panels and k < k4: 64 bytes inside `packed`.
                    *v = unsafe { _mm512_loadu_si512(base.add(((p0 + p) * k4 + k) * PANEL * 4) as *const _) };
                }
                for (r, row) in s.iter_mut().enumerate() {
                    // SAFETY: row r < R, bytes 4k..4k + 4 < row_bytes: inside `a`.
                    let four = unsafe { (a.add(r * kb + k * 4) as *const i32).read_unaligned() };
                    let av = _mm512_set1_epi32(four);
                    for (acc, &wp) in row.iter_mut().zip(&wv) {
                        *acc = _mm512_dpbusd_epi32(*acc, av, wp);
                    }
                }
            }
            for p in 0..P {
                let at = ((p0 + p) * w.per_row + g) * PANEL;
                // SAFETY: panel p0 + p and group g < per_row: 16 values inside `sums`, `scales`.
                let (cs, sc) = unsafe {
                    (
                        _mm512_loadu_si512(w.sums.as_ptr().add(at) as *const _),
                        _mm512_loadu_ps(w.scales.as_ptr().add(at)),
                    )
                };
                for r in 0..R {
                    // SAFETY: r < R values inside `za`.
                    let z = _mm512_set1_epi32(unsafe { *za.add(r) });
                    let t = _mm512_sub_epi32(s[r][p], _mm512_mullo_epi32(z, cs));
                    f[r][p] = _mm512_add_ps(f[r][p], _mm512_mul_ps(_mm512_cvtepi32_ps(t), sc));
                }
            }
        }
        for (r, row) in f.iter().enumerate() {
            for (p, v) in row.iter().enumerate() {
                // SAFETY: row r, columns (p0 + p)·16 .. +16 ≤ acc_cols: inside `out`.
                unsafe { _mm512_storeu_ps(out.add(r * cols + (p0 + p) * PANEL), *v) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{PackedGroups, PANEL};

    /// # Safety
    /// The CPU has AVX2; `a` holds `rows·row_bytes` bytes, `za` `rows` values and `out`
    /// `rows·acc_cols` (checked by `PackedGroups::matmul`).
    pub(super) unsafe fn matmul(w: &PackedGroups, a: &[u8], za: &[i32], rows: usize, out: &mut [f32]) {
        let (kb, cols) = (w.packed.row_bytes(), w.packed.acc_cols());
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(2);
            for panel in 0..cols / PANEL {
                // SAFETY: rows r0..r0 + r lie inside `a`, `za` and `out`; panel < panels; AVX2.
                unsafe {
                    let (ap, zp, op) = (a.as_ptr().add(r0 * kb), za.as_ptr().add(r0), out.as_mut_ptr().add(r0 * cols));
                    if r == 2 {
                        tile::<2>(w, ap, zp, op, panel)
                    } else {
                        tile::<1>(w, ap, zp, op, panel)
                    }
                }
            }
            r0 += r;
        }
    }

    /// `R` rows × one panel, as the per-channel AVX2 tile (each quarter of a 64-byte block
    /// widened to i16, `vpmaddwd` against the row's 4 bytes: output `4q + l`'s sum in lanes
    /// `2l, 2l + 1` of quarter `q`). At the end of a group, `vphaddd` adds the pairs and a
    /// 64-bit permute puts outputs `8h..8h + 8` in order, then the group's correction and
    /// scale fold it into two f32 accumulators per row.
    ///
    /// # Safety
    /// `a` holds `R` rows of `row_bytes`, `za` `R` values, `out` `R` rows of `acc_cols`;
    /// panel < panels; AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn tile<const R: usize>(w: &PackedGroups, a: *const u8, za: *const i32, out: *mut f32, panel: usize) {
        let pk = &w.packed;
        let (gk4, cols) = (pk.gk4, pk.acc_cols());
        let mut f = [[_mm256_setzero_ps(); 2]; R];
        for g in 0..pk.groups() {
            let mut s = [[_mm256_setzero_si256(); 4]; R];
            // SAFETY: as this function's contract; group g's blocks lie within 0..k4.
            unsafe { super::super::avx2::sum_blocks(pk, a, panel, g * gk4..(g + 1) * gk4, &mut s) };
            let at = (panel * w.per_row + g) * PANEL;
            for h in 0..2 {
                // SAFETY: group g < per_row of this panel: 16 values inside `sums` and `scales`.
                let (cs, sc) = unsafe {
                    (
                        _mm256_loadu_si256(w.sums.as_ptr().add(at + 8 * h) as *const _),
                        _mm256_loadu_ps(w.scales.as_ptr().add(at + 8 * h)),
                    )
                };
                for r in 0..R {
                    // [o0 o1 p0 p1 | o2 o3 p2 p3] (o: quarter 2h's outputs, p: 2h + 1's) → in order.
                    let pairs = _mm256_hadd_epi32(s[r][2 * h], s[r][2 * h + 1]);
                    let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(pairs);
                    // SAFETY: r < R values inside `za`.
                    let z = _mm256_set1_epi32(unsafe { *za.add(r) });
                    let t = _mm256_sub_epi32(v, _mm256_mullo_epi32(z, cs));
                    f[r][h] = _mm256_add_ps(f[r][h], _mm256_mul_ps(_mm256_cvtepi32_ps(t), sc));
                }
            }
        }
        for (r, row) in f.iter().enumerate() {
            for (h, v) in row.iter().enumerate() {
                // SAFETY: row r, columns panel·16 + 8h .. +8 ≤ acc_cols: inside `out`.
                unsafe { _mm256_storeu_ps(out.add(r * cols + panel * PANEL + 8 * h), *v) };
            }
        }
    }
}
