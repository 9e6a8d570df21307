//! [`PackedF32`]: a linear map whose weights are packed once, at construction, for few-row
//! (decode-shaped) products — the `Projection` tt-accel installs through the seam.
//!
//! ## Why pack
//! At one row, `y = x·Wᵀ` is a matrix–vector product: every weight is used once, so the kernel
//! must stream the weights at memory speed and do nothing else. The dense `[out, in]` layout
//! gives one dot product per output (a horizontal reduction each, 8 lanes at best); general GEMM
//! libraries repack W on every call, which at one row costs more than the product itself.
//!
//! Packed layout: output rows are grouped in **panels of 16** (one AVX-512 register of outputs),
//! and inside a panel the weights are stored input-major:
//!
//! ```text
//! packed[(panel·in + i)·16 + lane] = W[panel·16 + lane, i]      (zero past the last output)
//! ```
//!
//! so for each input element `x[i]` the kernel loads 16 contiguous weights and does one FMA with
//! `x[i]` broadcast: no reductions, unit-stride loads, the whole matrix read exactly once per call
//! for up to 4 input rows at a time (a 4-row × 4-panel register tile: 16 accumulators, each
//! weight vector reused by 4 rows). Many rows (prefill) reuse the same tile, so one kernel serves
//! decode and prefill.
//!
//! The level (AVX-512 / AVX2 / scalar) is chosen once, when the projection is built
//! ([`crate::dispatch::level`] at that moment); the layout is the same at every level.

use std::ops::Range;
use std::sync::Arc;
use tt_tensor::kernels::RowFn;

use ndarray::Array2;
use tt_tensor::Projection;

use crate::bounds::check_projection_rows;
use crate::dispatch::{self, Level};
use crate::team::{chunks_for, share, Team};

/// Output rows per panel.
pub const PANEL: usize = 16;
/// Input rows handled per pass over the weights.
const ROWS: usize = 4;
/// Weight bytes per block of panels that every row group passes over while it stays in L2
/// (1 MiB per core on the machines measured; a quarter leaves room for rows and outputs).
const BLOCK_BYTES: usize = 256 << 10;
/// Panels handled together (independent accumulators hide the FMA latency).
const GROUP: usize = 4;

/// Weights packed in 16-output panels (see the module docs).
#[derive(Debug, Clone)]
pub struct PackedF32 {
    packed: Vec<f32>,
    out_f: usize,
    in_f: usize,
    level: Level,
    /// When set, the panels are split across the team's members (each streams its share of the
    /// weights; on this machine two shares of the default model fit the two cores' L2 caches).
    team: Option<Arc<Team>>,
}

impl PackedF32 {
    /// Packs `w` (`[out, in]`) for the current dispatch level.
    ///
    /// # Panics
    /// As [`PackedF32::with_level`].
    pub fn new(w: &Array2<f32>) -> PackedF32 {
        Self::with_level(w, dispatch::level())
    }

    /// Packs the matrix of any projection (its `to_dense()`).
    ///
    /// # Panics
    /// As [`PackedF32::with_level`].
    pub fn pack(p: &dyn Projection) -> PackedF32 {
        Self::new(&p.to_dense())
    }

    /// Packs `w` for `level` (clamped to what the CPU runs).
    ///
    /// # Panics
    /// If the padded layout's length overflows `usize` (only for a matrix of exbibytes, which no
    /// machine can hold).
    pub fn with_level(w: &Array2<f32>, level: Level) -> PackedF32 {
        let (out_f, in_f) = w.dim();
        let panels = out_f.div_ceil(PANEL);
        // The kernels read `packed` through raw pointers at offsets below this length.
        let len = panels.checked_mul(in_f).and_then(|n| n.checked_mul(PANEL));
        let mut packed = vec![0.0f32; len.expect("PackedF32: the packed matrix's length overflows usize")];
        tt_tensor::hugepages::advise_huge_pages(&mut packed);
        // With no inputs there is nothing to copy: do not walk the (possibly 2⁴⁰) empty rows.
        for (o, row) in w.outer_iter().enumerate().take(if in_f == 0 { 0 } else { out_f }) {
            let (panel, lane) = (o / PANEL, o % PANEL);
            for (i, &v) in row.iter().enumerate() {
                packed[(panel * in_f + i) * PANEL + lane] = v;
            }
        }
        // Never above what the CPU has: the SIMD kernels are only called at a level it supports.
        PackedF32 { packed, out_f, in_f, level: level.min(dispatch::detected()), team: None }
    }

    /// Splits every call's panels across `team` (see [`Team`]); the results are bit-identical
    /// to one thread's, since each output is computed by exactly one member the same way.
    pub fn with_team(mut self, team: Arc<Team>) -> PackedF32 {
        self.team = Some(team);
        self
    }

    /// The level this projection's kernel runs at.
    pub fn level(&self) -> Level {
        self.level
    }
}

/// The output buffer shared by team members, each writing only its own panels' outputs.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: members write disjoint elements (their own panel range) and the caller waits for all of
// them before the buffer's borrow ends.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl PackedF32 {
    /// `forward_rows`, with `gelu` as the epilogue when given.
    fn run(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], gelu: Option<RowFn>) {
        // The kernels below write through raw pointers: every size they rely on is checked here.
        if !check_projection_rows("PackedF32::forward_rows", self.shape(), x, rows, bias, y) {
            return;
        }
        let panels = self.out_f.div_ceil(PANEL);
        let out = OutPtr(y.as_mut_ptr());
        // Its own team, else the one installed on this thread.
        let team = self.team.clone().or_else(crate::team::current);
        match &team {
            Some(team) if team.size() > 1 && panels > 1 => {
                let chunks = chunks_for(panels, team.size(), rows.saturating_mul(self.in_f).saturating_mul(PANEL));
                team.for_each(chunks, &|c| {
                    // SAFETY: sizes checked above (`check_projection_rows`); chunks are disjoint
                    // panel ranges, each run once.
                    unsafe { self.panels(x, rows, bias, out, share(panels, chunks, c), None) }
                });
                // The row kernel dispatches at the calling thread's level (`with_level` does not
                // reach the members), so the epilogue runs here, over the finished rows.
                if let Some(gelu) = gelu {
                    y[..rows * self.out_f].chunks_exact_mut(self.out_f).for_each(gelu);
                }
            }
            // SAFETY: as above; the whole range on this thread.
            _ => unsafe { self.panels(x, rows, bias, out, 0..panels, gelu) },
        }
    }

    /// Outputs of panels `range` for all `rows`, four rows at a time. With more than four rows
    /// (a prefill, or a decode step over many sequences) the panels go in blocks that stay in
    /// L2 while every row group passes over them, so the weights stream from memory once per
    /// call, not once per four rows. Each output is the same sum in the same order either way.
    ///
    /// # Safety
    /// `x` holds `rows × in`, `out` points to `rows × out` writable floats of which no other
    /// thread writes the columns of `range`, `bias` (if any) holds `out` floats.
    unsafe fn panels(
        &self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        out: OutPtr,
        range: Range<usize>,
        gelu: Option<RowFn>,
    ) {
        let (out_f, in_f) = (self.out_f, self.in_f);
        let block = (BLOCK_BYTES / (4 * PANEL).saturating_mul(in_f.max(1))).max(1);
        let mut b0 = range.start;
        while b0 < range.end {
            let p = b0..(b0 + block).min(range.end);
            let mut r0 = 0;
            while r0 < rows {
                let r = (rows - r0).min(ROWS);
                let xs = &x[r0 * in_f..(r0 + r) * in_f];
                // SAFETY: row r0 starts inside the `rows × out` buffer.
                let y = unsafe { out.0.add(r0 * out_f) };
                let p = p.clone();
                match self.level {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `self.level` ≤ `dispatch::detected()` (clamped at construction), so
                    // the CPU has AVX-512F; reads stay in `xs`, `packed`, `bias`; writes in rows
                    // r0..r0+r, columns of `p` ⊆ `range` (forwarded contract).
                    Level::Avx512 => unsafe { avx512::rows(&self.packed, xs, r, in_f, out_f, bias, y, p) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above, with AVX2 + FMA.
                    Level::Avx2 => unsafe { avx2::rows(&self.packed, xs, r, in_f, out_f, bias, y, p) },
                    // SAFETY: as above (portable code).
                    _ => unsafe { scalar_rows(&self.packed, xs, r, in_f, out_f, bias, y, p) },
                }
                r0 += r;
            }
            b0 = p.end;
        }
        // The epilogue, over this call's columns of every row.
        if let Some(gelu) = gelu {
            let (o0, o1) = (range.start * PANEL, (range.end * PANEL).min(out_f));
            for i in 0..rows {
                // SAFETY: row i < rows and columns o0..o1 < out_f are this call's own outputs
                // (forwarded contract); no other thread writes them.
                gelu(unsafe { std::slice::from_raw_parts_mut(out.0.add(i * out_f + o0), o1 - o0) });
            }
        }
    }
}

impl Projection for PackedF32 {
    fn shape(&self) -> (usize, usize) {
        (self.out_f, self.in_f)
    }

    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], _ws: &mut [u8]) {
        self.run(x, rows, bias, y, None);
    }

    /// GELU applied to the outputs as soon as the call's panels are done, while they are in cache
    /// (see [`Projection::forward_rows_gelu`]); split across a team, it runs on the calling
    /// thread once the members are done (the row kernel dispatches at the caller's level).
    fn forward_rows_gelu(
        &self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
        _ws: &mut [u8],
        gelu: RowFn,
    ) {
        self.run(x, rows, bias, y, Some(gelu));
    }

    fn to_dense(&self) -> Array2<f32> {
        Array2::from_shape_fn((self.out_f, self.in_f), |(o, i)| {
            self.packed[((o / PANEL) * self.in_f + i) * PANEL + o % PANEL]
        })
    }

    /// Row `o` is lane `o % 16` of its panel, one value per 16 (a strided gather: an embedding
    /// lookup reads one row, so a packed table can serve as a tied head's token table).
    fn dense_row(&self, o: usize, out: &mut [f32]) {
        // The trait's documented `# Panics` (a caller's bug, like an index out of bounds); the
        // decoder checks every id against the vocabulary before looking a row up.
        assert!(o < self.out_f && out.len() == self.in_f, "PackedF32::dense_row sizes");
        let panel = &self.packed[(o / PANEL) * self.in_f * PANEL..][..self.in_f * PANEL];
        for (v, w) in out.iter_mut().zip(panel.iter().skip(o % PANEL).step_by(PANEL)) {
            *v = *w;
        }
    }

    fn storage_bytes(&self) -> usize {
        4 * self.packed.len()
    }

    fn format(&self) -> &'static str {
        "f32-packed"
    }
}

/// The portable kernel over the packed layout: for each panel, 16 accumulators per row.
/// Also the reference for the SIMD kernels' summation order (index order over `i`).
///
/// # Safety
/// `y` points to `rows × out_f` writable floats; only the columns of `panels` are written.
unsafe fn scalar_rows(
    packed: &[f32],
    x: &[f32],
    rows: usize,
    in_f: usize,
    out_f: usize,
    bias: Option<&[f32]>,
    y: *mut f32,
    panels: Range<usize>,
) {
    for panel in panels {
        let w = &packed[panel * in_f * PANEL..(panel + 1) * in_f * PANEL];
        let lanes = (out_f - panel * PANEL).min(PANEL);
        for r in 0..rows {
            let mut acc = [0.0f32; PANEL];
            let xr = &x[r * in_f..(r + 1) * in_f];
            for (i, &xi) in xr.iter().enumerate() {
                for (a, &wv) in acc.iter_mut().zip(&w[i * PANEL..(i + 1) * PANEL]) {
                    *a += xi * wv;
                }
            }
            for l in 0..lanes {
                let o = panel * PANEL + l;
                // SAFETY: r < rows and o < out_f (forwarded contract).
                unsafe { *y.add(r * out_f + o) = acc[l] + bias.map_or(0.0, |b| b[o]) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{GROUP, PANEL};

    /// `rows` (1..=4) rows against the panels of `panels`, in groups of up to 4.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `x` holds `rows × in_f`, `y` points to `rows × out_f`
    /// writable floats (only the columns of `panels` are written), `packed` holds
    /// `ceil(out_f/16) × in_f × 16` floats, `bias` (if any) `out_f`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows(
        packed: &[f32],
        x: &[f32],
        rows: usize,
        in_f: usize,
        out_f: usize,
        bias: Option<&[f32]>,
        y: *mut f32,
        panels: Range<usize>,
    ) {
        let mut p0 = panels.start;
        while p0 < panels.end {
            let g = if rows == 1 { 1 } else { (panels.end - p0).min(GROUP) };
            // SAFETY: forwarded contract; `p0 + g ≤ panels`.
            unsafe {
                match (rows, g) {
                    (1, 4) => tile::<1, 4>(packed, x, in_f, out_f, p0, bias, y),
                    (2, 4) => tile::<2, 4>(packed, x, in_f, out_f, p0, bias, y),
                    (3, 4) => tile::<3, 4>(packed, x, in_f, out_f, p0, bias, y),
                    (4, 4) => tile::<4, 4>(packed, x, in_f, out_f, p0, bias, y),
                    (1, _) => tile::<1, 1>(packed, x, in_f, out_f, p0, bias, y),
                    (2, _) => tile::<2, 1>(packed, x, in_f, out_f, p0, bias, y),
                    (3, _) => tile::<3, 1>(packed, x, in_f, out_f, p0, bias, y),
                    _ => tile::<4, 1>(packed, x, in_f, out_f, p0, bias, y),
                }
            }
            p0 += if g == GROUP { GROUP } else { 1 };
        }
    }

    /// An R-row × G-panel register tile: R·G accumulators of 16 outputs.
    ///
    /// # Safety
    /// As [`rows`], with `p0 + G ≤ ceil(out_f / 16)` and `x` holding at least `R` rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const G: usize>(
        packed: &[f32],
        x: &[f32],
        in_f: usize,
        out_f: usize,
        p0: usize,
        bias: Option<&[f32]>,
        y: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); G]; R];
        let w = packed.as_ptr();
        let xp = x.as_ptr();
        for i in 0..in_f {
            let mut wv = [_mm512_setzero_ps(); G];
            for (g, v) in wv.iter_mut().enumerate() {
                // SAFETY: (p0 + g) < panels and i < in_f, so the 16 floats at this offset lie
                // inside `packed`.
                *v = unsafe { _mm512_loadu_ps(w.add(((p0 + g) * in_f + i) * PANEL)) };
            }
            for r in 0..R {
                // SAFETY: r < R ≤ rows and i < in_f: inside `x`.
                let xb = _mm512_set1_ps(unsafe { *xp.add(r * in_f + i) });
                for g in 0..G {
                    acc[r][g] = _mm512_fmadd_ps(xb, wv[g], acc[r][g]);
                }
            }
        }
        for r in 0..R {
            for g in 0..G {
                let o0 = (p0 + g) * PANEL;
                let lanes = (out_f - o0).min(PANEL);
                let mask: __mmask16 = if lanes == PANEL { 0xffff } else { (1u16 << lanes) - 1 };
                let mut v = acc[r][g];
                if let Some(b) = bias {
                    // SAFETY: the mask covers only outputs < out_f, inside `b`.
                    v = _mm512_add_ps(v, unsafe { _mm512_maskz_loadu_ps(mask, b.as_ptr().add(o0)) });
                }
                // SAFETY: masked to outputs < out_f of row r, inside `y`.
                unsafe { _mm512_mask_storeu_ps(y.add(r * out_f + o0), mask, v) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::PANEL;

    /// `rows` (1..=4) rows against the panels of `panels`, each as two 8-lane halves.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; sizes as in the AVX-512 kernel.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows(
        packed: &[f32],
        x: &[f32],
        rows: usize,
        in_f: usize,
        out_f: usize,
        bias: Option<&[f32]>,
        y: *mut f32,
        panels: Range<usize>,
    ) {
        for panel in panels {
            // SAFETY: forwarded contract; panel < panels.
            unsafe {
                match rows {
                    1 => tile::<1>(packed, x, in_f, out_f, panel, bias, y),
                    2 => tile::<2>(packed, x, in_f, out_f, panel, bias, y),
                    3 => tile::<3>(packed, x, in_f, out_f, panel, bias, y),
                    _ => tile::<4>(packed, x, in_f, out_f, panel, bias, y),
                }
            }
        }
    }

    /// # Safety
    /// As [`rows`], for one panel < panels and `x` holding at least `R` rows.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize>(
        packed: &[f32],
        x: &[f32],
        in_f: usize,
        out_f: usize,
        panel: usize,
        bias: Option<&[f32]>,
        y: *mut f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let w = packed.as_ptr();
        for i in 0..in_f {
            // SAFETY: panel < panels, i < in_f: both halves lie inside `packed`.
            let (w0, w1) = unsafe {
                let p = w.add((panel * in_f + i) * PANEL);
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            };
            for r in 0..R {
                // SAFETY: r < R ≤ rows, i < in_f: inside `x`.
                let xb = _mm256_set1_ps(unsafe { *x.get_unchecked(r * in_f + i) });
                acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
            }
        }
        let o0 = panel * PANEL;
        let lanes = (out_f - o0).min(PANEL);
        for r in 0..R {
            let mut buf = [0.0f32; PANEL];
            // SAFETY: `buf` holds 16 floats.
            unsafe {
                _mm256_storeu_ps(buf.as_mut_ptr(), acc[r][0]);
                _mm256_storeu_ps(buf.as_mut_ptr().add(8), acc[r][1]);
            }
            for l in 0..lanes {
                // SAFETY: r < rows, o0 + l < out_f (forwarded contract).
                unsafe { *y.add(r * out_f + o0 + l) = buf[l] + bias.map_or(0.0, |b| b[o0 + l]) };
            }
        }
    }
}

/// Installs a [`PackedF32`] copy of every `Linear` below `m` (through `map_linears`: no model
/// field is named). Returns how many layers were packed.
///
/// # Errors
/// The first layer whose weight no longer matches an installed projection, or that carries a
/// forward transform (see [`tt_tensor::nn::ForwardTransform`]).
pub fn pack_linears(m: &mut dyn tt_tensor::Module) -> tt_tensor::Result<usize> {
    pack_linears_with(m, None)
}

/// [`pack_linears`], each projection split across `team` when given.
///
/// # Errors
/// As [`pack_linears`].
pub fn pack_linears_with(m: &mut dyn tt_tensor::Module, team: Option<Arc<Team>>) -> tt_tensor::Result<usize> {
    // A layer with a forward transform (a mask, factors in training, fake quantization) computes
    // something other than its stored weight: packing that weight would be silently wrong.
    if let Some((layer, t)) = tt_tensor::nn::layer_transforms(m).into_iter().next() {
        return Err(tt_tensor::TensorError::InvalidArgument {
            op: "pack_linears",
            reason: format!("layer {layer:?} carries a '{t}' forward transform; finish it before packing"),
        });
    }
    tt_tensor::nn::map_linears(m, |_, l| {
        let mut packed = PackedF32::pack(l.projection()?.as_ref());
        if let Some(t) = &team {
            packed = packed.with_team(Arc::clone(t));
        }
        l.set_projection(Arc::new(packed))
    })
}
