//! [`BlockSparseF32`]: a sparse matrix stored in **16×1 blocks** — 16 consecutive outputs of one
//! input column — as a `tt_tensor::Projection`, so sparsity is skipped a whole SIMD vector at a
//! time.
//!
//! ## Why this layout
//! CSR stores single non-zeros: its kernel gathers one input per non-zero and ends every output
//! row with a horizontal sum, so it beats the dense packed GEMV only far below its storage
//! break-even (module 18 measured 2–10% density, and an AVX-512 gather version no faster). This
//! format keeps [`PackedF32`](crate::packed::PackedF32)'s panel layout — outputs in panels of 16,
//! inputs major inside a panel — and simply **drops the all-zero columns of each panel**:
//!
//! ```text
//! row block b (outputs 16b .. 16b+15): stored columns cols[ptr[b] .. ptr[b+1]] (increasing)
//! vals[16k + lane] = W[16b + lane, cols[k]]          (zero-padded, also past the last output)
//! ```
//!
//! The kernel, per stored column: load its index, broadcast `x[col]`, load 16 values, one FMA
//! into the block's accumulator — the dense kernel's inner step with one index load added, no
//! gather, no horizontal sum. Its cost follows the fraction of **blocks** stored, not of
//! non-zeros: with unstructured sparsity at density `d` a block is stored with probability
//! `1 − (1 − d)¹⁶` (74% at `d` = 0.08), so it pays for matrices pruned in blocks (tt-compress's
//! block pruning) and only modestly for scattered zeros. Bytes: 64 per stored block + 4 per
//! column index + 4 per block pointer — below dense f32 once under 94% of the blocks are stored.
//!
//! ## Summation order (the same at every level)
//! Each output sums its stored columns into [`SPLIT`] = 4 partial sums (column `j` of the block
//! into partial `j mod 4`, in column order), then `(p₀ + p₁) + (p₂ + p₃) + bias`: four
//! independent FMA chains hide the FMA latency at one row, where a single accumulator would wait
//! on each add. The order differs from a dense dot product's, so the result equals the dense
//! product to f32 rounding (not bit for bit); the SIMD levels use fused multiply–adds where the
//! scalar reference rounds twice, so levels agree with each other to rounding as well.
//!
//! ## Levels
//! AVX-512: one 16-lane vector per block, up to 4 input rows per pass (each value vector loaded
//! once for all of them: 4 rows × 4 partial sums = 16 accumulators). AVX2: the same 16 values as
//! two 8-lane halves, one row per pass (8 accumulators; 16 would not fit its 16 registers).
//! Scalar: the reference. The level is chosen at construction (`dispatch::level()`, so
//! `TT_ACCEL_LEVEL` and `with_level` apply) and clamped to what the CPU runs; the layout is the
//! same at every level.

use ndarray::Array2;
use tt_tensor::{Projection, TensorError};

use crate::bounds::check_projection_rows;
use crate::dispatch::{self, Level};

/// Outputs per block (one AVX-512 register of f32; the same panel height as `PackedF32`).
pub const BLOCK: usize = 16;
/// Partial sums per output (see the module docs).
pub const SPLIT: usize = 4;
/// Input rows per pass of the AVX-512 kernel.
const ROWS: usize = 4;

/// A matrix `[out, in]` in 16×1 blocks (see the module docs).
#[derive(Debug, Clone)]
pub struct BlockSparseF32 {
    out_f: usize,
    in_f: usize,
    /// Block `b`'s columns are `cols[ptr[b]..ptr[b + 1]]`; `ptr` has `blocks + 1` entries
    /// ([`check_dims`]: no block, so one entry, when there are no inputs), non-decreasing,
    /// ending at `cols.len()`.
    ptr: Vec<u32>,
    /// Strictly increasing inside a block, each `< in_f`.
    cols: Vec<u32>,
    /// `BLOCK` values per stored column.
    vals: Vec<f32>,
    level: Level,
}

fn arg(op: &'static str, reason: String) -> TensorError {
    TensorError::InvalidArgument { op, reason }
}

/// The one check of a matrix's dimensions, before anything is allocated for it: outputs, inputs
/// and the `ceil(out/16) × in` block grid must each be addressable by u32 indices. Returns the
/// number of row blocks given a pointer: `ceil(out/16)`, or none when there are no inputs — no
/// block could hold a column, and the pointers of a `u32::MAX × 0` matrix would take 1 GiB for
/// a matrix with no element. So the pointers stay proportional to the matrix's elements.
fn check_dims(op: &'static str, out_f: usize, in_f: usize) -> tt_tensor::Result<usize> {
    let blocks = out_f.div_ceil(BLOCK);
    let max = u32::MAX as usize;
    if out_f > max || in_f > max || blocks.checked_mul(in_f).is_none_or(|n| n > max) {
        return Err(arg(op, format!("{out_f}×{in_f} is too large for u32 indices")));
    }
    Ok(if in_f == 0 { 0 } else { blocks })
}

impl BlockSparseF32 {
    /// The 16×1 blocks of `w` (`[out, in]`) holding any non-zero, for the current dispatch level.
    ///
    /// # Errors
    /// A non-finite weight, or more outputs, inputs or blocks than u32 indices address.
    pub fn from_dense(w: &Array2<f32>) -> tt_tensor::Result<BlockSparseF32> {
        Self::from_dense_with_level(w, dispatch::level())
    }

    /// As [`BlockSparseF32::from_dense`], for `level` (clamped to what the CPU runs).
    ///
    /// # Errors
    /// As [`BlockSparseF32::from_dense`].
    pub fn from_dense_with_level(w: &Array2<f32>, level: Level) -> tt_tensor::Result<BlockSparseF32> {
        let (out_f, in_f) = w.dim();
        let blocks = check_dims("BlockSparseF32::from_dense", out_f, in_f)?;
        if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
            return Err(arg("BlockSparseF32::from_dense", format!("weight {bad} is not finite")));
        }
        let (mut ptr, mut cols, mut vals) = (Vec::with_capacity(blocks + 1), Vec::new(), Vec::new());
        ptr.push(0u32);
        for b in 0..blocks {
            let rows = b * BLOCK..(out_f).min((b + 1) * BLOCK);
            for i in 0..in_f {
                if rows.clone().any(|o| w[[o, i]] != 0.0) {
                    cols.push(i as u32);
                    vals.extend((0..BLOCK).map(|l| if b * BLOCK + l < out_f { w[[b * BLOCK + l, i]] } else { 0.0 }));
                }
            }
            ptr.push(cols.len() as u32);
        }
        Ok(BlockSparseF32 { out_f, in_f, ptr, cols, vals, level: level.min(dispatch::detected()) })
    }

    /// A matrix from its parts (as [`BlockSparseF32::parts`] returns them), validated: what a
    /// loader of a stored matrix calls.
    ///
    /// # Errors
    /// Dimensions as in [`BlockSparseF32::from_dense`]; `ptr` not `ceil(out/16) + 1` non-decreasing
    /// entries from 0 to `cols.len()` (one entry, 0, when `in` is 0), a column out of
    /// range or not increasing within its block, `vals` not 16 per column, a non-finite value,
    /// or a value stored for an output past `out`.
    pub fn from_parts(
        out_f: usize,
        in_f: usize,
        ptr: Vec<u32>,
        cols: Vec<u32>,
        vals: Vec<f32>,
    ) -> tt_tensor::Result<BlockSparseF32> {
        let op = "BlockSparseF32::from_parts";
        let blocks = check_dims(op, out_f, in_f)?;
        if cols.len() > u32::MAX as usize {
            return Err(arg(op, format!("{} columns are too many for u32 indices", cols.len())));
        }
        if ptr.len() != blocks + 1 || ptr[0] != 0 || ptr[blocks] as usize != cols.len() {
            return Err(arg(
                op,
                format!(
                    "{} block pointers (first {:?}, last {:?}) for {blocks} blocks and {} columns",
                    ptr.len(),
                    ptr.first(),
                    ptr.last(),
                    cols.len()
                ),
            ));
        }
        if Some(vals.len()) != cols.len().checked_mul(BLOCK) {
            return Err(arg(op, format!("{} values for {} columns of {BLOCK}", vals.len(), cols.len())));
        }
        // Non-decreasing from 0 to cols.len(): every span below lies inside `cols`.
        if let Some(b) = ptr.windows(2).position(|p| p[0] > p[1]) {
            return Err(arg(op, format!("block pointers decrease at block {b}: {} > {}", ptr[b], ptr[b + 1])));
        }
        for b in 0..blocks {
            let (s, e) = (ptr[b] as usize, ptr[b + 1] as usize);
            let span = &cols[s..e];
            if let Some(&c) = span.iter().find(|&&c| c as usize >= in_f) {
                return Err(arg(op, format!("column {c} in block {b} is not below {in_f}")));
            }
            if span.windows(2).any(|p| p[0] >= p[1]) {
                return Err(arg(op, format!("columns of block {b} are not strictly increasing")));
            }
            let lanes = (out_f - b * BLOCK).min(BLOCK);
            for k in s..e {
                let v = &vals[k * BLOCK..(k + 1) * BLOCK];
                if let Some(bad) = v.iter().find(|v| !v.is_finite()) {
                    return Err(arg(op, format!("value {bad} is not finite")));
                }
                if v[lanes..].iter().any(|&v| v != 0.0) {
                    return Err(arg(op, format!("block {b} stores a value past output {out_f}")));
                }
            }
        }
        Ok(BlockSparseF32 { out_f, in_f, ptr, cols, vals, level: dispatch::level() })
    }

    /// `(ptr, cols, vals)`: see the module docs.
    pub fn parts(&self) -> (&[u32], &[u32], &[f32]) {
        (&self.ptr, &self.cols, &self.vals)
    }

    /// The same matrix run at `level` (clamped to what the CPU runs).
    pub fn at_level(mut self, level: Level) -> BlockSparseF32 {
        self.level = level.min(dispatch::detected());
        self
    }

    /// The level this matrix's kernel runs at.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Stored 16×1 blocks.
    pub fn stored_blocks(&self) -> usize {
        self.cols.len()
    }

    /// Stored blocks over all `ceil(out/16)·in` blocks (what the kernel's time follows).
    pub fn block_density(&self) -> f64 {
        let all = self.out_f.div_ceil(BLOCK) * self.in_f;
        if all == 0 {
            0.0
        } else {
            self.cols.len() as f64 / all as f64
        }
    }

    /// Non-zero weights over all `out·in` entries.
    pub fn density(&self) -> f64 {
        // In f64: `out·in` may exceed `usize` for a matrix this sparse (only its blocks are stored).
        let all = self.out_f as f64 * self.in_f as f64;
        if all == 0.0 {
            0.0
        } else {
            self.vals.iter().filter(|&&v| v != 0.0).count() as f64 / all
        }
    }

    /// Rows `0..rows` of `y` from `x`.
    ///
    /// # Safety
    /// `x.len() ≥ rows·in`, `y.len() ≥ rows·out`, `bias` (if any) holds `out` floats; the struct's
    /// invariants (checked at construction) keep every column index below `in`.
    unsafe fn run(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self.level` ≤ `dispatch::detected()` (clamped at construction), so the CPU
            // has AVX-512F; sizes are the caller's contract.
            Level::Avx512 => unsafe { avx512::rows(self, x, rows, bias, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, with AVX2 + FMA.
            Level::Avx2 => unsafe { avx2::rows(self, x, rows, bias, y) },
            _ => scalar_rows(self, x, rows, bias, y),
        }
    }
}

/// The portable reference: per block and row, `SPLIT` partial sums of 16 lanes in column order.
fn scalar_rows(m: &BlockSparseF32, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32]) {
    let (out_f, in_f) = (m.out_f, m.in_f);
    for b in 0..m.ptr.len() - 1 {
        let span = m.ptr[b] as usize..m.ptr[b + 1] as usize;
        let lanes = (out_f - b * BLOCK).min(BLOCK);
        for r in 0..rows {
            let xr = &x[r * in_f..(r + 1) * in_f];
            let mut acc = [[0.0f32; BLOCK]; SPLIT];
            for (j, k) in span.clone().enumerate() {
                let xv = xr[m.cols[k] as usize];
                for (a, &w) in acc[j % SPLIT].iter_mut().zip(&m.vals[k * BLOCK..(k + 1) * BLOCK]) {
                    *a += xv * w;
                }
            }
            for l in 0..lanes {
                let o = b * BLOCK + l;
                y[r * out_f + o] = ((acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l])) + bias.map_or(0.0, |b| b[o]);
            }
        }
    }
}

impl Projection for BlockSparseF32 {
    fn shape(&self) -> (usize, usize) {
        (self.out_f, self.in_f)
    }

    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], _ws: &mut [u8]) {
        // The SIMD kernels read and write through raw pointers: every size is checked here.
        if !check_projection_rows("BlockSparseF32::forward_rows", self.shape(), x, rows, bias, y) {
            return;
        }
        if self.in_f == 0 {
            // No block is stored without inputs (`check_dims`), so the kernels would write
            // nothing: every output is its bias. `rows·out` fits `y` (checked above).
            for yr in y[..rows * self.out_f].chunks_exact_mut(self.out_f) {
                match bias {
                    Some(b) => yr.copy_from_slice(b),
                    None => yr.fill(0.0),
                }
            }
            return;
        }
        // SAFETY: sizes checked above; column indices are below `in_f` (construction invariant).
        unsafe { self.run(x, rows, bias, y) }
    }

    fn to_dense(&self) -> Array2<f32> {
        let mut w = Array2::zeros((self.out_f, self.in_f));
        for b in 0..self.ptr.len() - 1 {
            let lanes = (self.out_f - b * BLOCK).min(BLOCK);
            for k in self.ptr[b] as usize..self.ptr[b + 1] as usize {
                for l in 0..lanes {
                    w[[b * BLOCK + l, self.cols[k] as usize]] = self.vals[k * BLOCK + l];
                }
            }
        }
        w
    }

    fn storage_bytes(&self) -> usize {
        4 * (self.vals.len() + self.cols.len() + self.ptr.len())
    }

    fn format(&self) -> &'static str {
        "block16"
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BlockSparseF32, BLOCK, ROWS, SPLIT};

    /// # Safety
    /// The CPU must support AVX-512F; sizes as in `BlockSparseF32::run`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows(m: &BlockSparseF32, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(ROWS);
            for b in 0..m.ptr.len() - 1 {
                // SAFETY: rows r0..r0+r lie inside `x` and `y` (forwarded contract), b < blocks.
                unsafe {
                    match r {
                        1 => block::<1>(m, x, r0, b, bias, y),
                        2 => block::<2>(m, x, r0, b, bias, y),
                        3 => block::<3>(m, x, r0, b, bias, y),
                        _ => block::<4>(m, x, r0, b, bias, y),
                    }
                }
            }
            r0 += r;
        }
    }

    /// Rows `r0..r0 + R` of block `b`.
    ///
    /// # Safety
    /// As [`rows`], with `r0 + R ≤ rows` and `b` < blocks.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize>(
        m: &BlockSparseF32,
        x: &[f32],
        r0: usize,
        b: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let (in_f, out_f) = (m.in_f, m.out_f);
        let (s, e) = (m.ptr[b] as usize, m.ptr[b + 1] as usize);
        let (xp, vp, cp) = (x.as_ptr(), m.vals.as_ptr(), m.cols.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); SPLIT]; R];
        let mut k = s;
        // One stored column into partial sum `j`: every column index is < in_f and k < e ≤
        // cols.len() (construction invariants), so all reads below stay inside `cols`, `vals`
        // and rows r0..r0+R of `x`.
        macro_rules! step {
            ($k:expr, $j:expr) => {{
                let (c, w) = unsafe { (*cp.add($k) as usize, _mm512_loadu_ps(vp.add($k * BLOCK))) };
                for r in 0..R {
                    let xb = _mm512_set1_ps(unsafe { *xp.add((r0 + r) * in_f + c) });
                    acc[r][$j] = _mm512_fmadd_ps(xb, w, acc[r][$j]);
                }
            }};
        }
        while k + SPLIT <= e {
            for j in 0..SPLIT {
                step!(k + j, j);
            }
            k += SPLIT;
        }
        // The tail with constant partial-sum indices: a run-time index into `acc` would keep the
        // accumulators in memory for the whole loop (measured 3× slower).
        let rem = e - k;
        if rem > 0 {
            step!(k, 0);
        }
        if rem > 1 {
            step!(k + 1, 1);
        }
        if rem > 2 {
            step!(k + 2, 2);
        }
        let o0 = b * BLOCK;
        let lanes = (out_f - o0).min(BLOCK);
        let mask: __mmask16 = if lanes == BLOCK { 0xffff } else { (1u16 << lanes) - 1 };
        for r in 0..R {
            let a = acc[r];
            let mut v = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            if let Some(bias) = bias {
                // SAFETY: the mask covers only outputs < out_f, inside `bias`.
                v = _mm512_add_ps(v, unsafe { _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(o0)) });
            }
            // SAFETY: masked to outputs < out_f of row r0 + r, inside `y`.
            unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr().add((r0 + r) * out_f + o0), mask, v) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockSparseF32, BLOCK, SPLIT};

    /// One row at a time, each block as two 8-lane halves.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; sizes as in `BlockSparseF32::run`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows(m: &BlockSparseF32, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        let (in_f, out_f) = (m.in_f, m.out_f);
        let (vp, cp) = (m.vals.as_ptr(), m.cols.as_ptr());
        for r in 0..rows {
            let xp = x[r * in_f..].as_ptr();
            for b in 0..m.ptr.len() - 1 {
                let (s, e) = (m.ptr[b] as usize, m.ptr[b + 1] as usize);
                let mut acc = [[_mm256_setzero_ps(); 2]; SPLIT];
                let mut k = s;
                // As in the AVX-512 kernel: k < e ≤ cols.len() and every index < in_f.
                macro_rules! step {
                    ($k:expr, $j:expr) => {{
                        let (c, w0, w1) = unsafe {
                            let p = vp.add($k * BLOCK);
                            (*cp.add($k) as usize, _mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                        };
                        let xb = _mm256_set1_ps(unsafe { *xp.add(c) });
                        acc[$j][0] = _mm256_fmadd_ps(xb, w0, acc[$j][0]);
                        acc[$j][1] = _mm256_fmadd_ps(xb, w1, acc[$j][1]);
                    }};
                }
                while k + SPLIT <= e {
                    for j in 0..SPLIT {
                        step!(k + j, j);
                    }
                    k += SPLIT;
                }
                // Constant indices into `acc`, as in the AVX-512 kernel.
                let rem = e - k;
                if rem > 0 {
                    step!(k, 0);
                }
                if rem > 1 {
                    step!(k + 1, 1);
                }
                if rem > 2 {
                    step!(k + 2, 2);
                }
                let o0 = b * BLOCK;
                let lanes = (out_f - o0).min(BLOCK);
                let mut buf = [0.0f32; BLOCK];
                for h in 0..2 {
                    let v = _mm256_add_ps(_mm256_add_ps(acc[0][h], acc[1][h]), _mm256_add_ps(acc[2][h], acc[3][h]));
                    // SAFETY: `buf` holds 16 floats.
                    unsafe { _mm256_storeu_ps(buf.as_mut_ptr().add(8 * h), v) };
                }
                for l in 0..lanes {
                    y[r * out_f + o0 + l] = buf[l] + bias.map_or(0.0, |b| b[o0 + l]);
                }
            }
        }
    }
}
