//! [`CsrF32`]: a sparse matrix in compressed sparse row form as a `tt_tensor::Projection`.
//!
//! Per output row `o`, its non-zeros are `values[indptr[o]..indptr[o + 1]]` at input columns
//! `indices[..]` (u32: the input widths here are far below 2³²). Bytes: 4 per value, 4 per
//! index, 4 per row pointer — so CSR saves storage over dense f32 only below ~50% density, and
//! its gathers make it slower than a dense kernel until far sparser than that; where on this
//! machine is for the compression milestone to measure, not for this module to assume.
//!
//! The kernel is the straightforward one (per row and output, a gathered dot product in index
//! order) — the reference a SIMD version will be tested against.

use ndarray::Array2;
use tt_tensor::Projection;

use crate::error::{CompressError, Result};

/// A CSR matrix `[out, in]` (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct CsrF32 {
    out_f: usize,
    in_f: usize,
    /// `out + 1` entries; one (0) when there are no inputs: no row can hold a non-zero then, and
    /// a pointer per row would make a `2⁴⁰ × 0` matrix, which has no element, cost 4 TiB.
    indptr: Vec<u32>,
    indices: Vec<u32>,
    values: Vec<f32>,
}

impl CsrF32 {
    /// The non-zeros of `w` (`[out, in]`; exact zeros are dropped).
    ///
    /// # Errors
    /// More than `u32::MAX` inputs or non-zeros, or a non-finite weight.
    pub fn from_dense(w: &Array2<f32>) -> Result<CsrF32> {
        let (out_f, in_f) = w.dim();
        if in_f > u32::MAX as usize || w.len() > u32::MAX as usize {
            return Err(CompressError::arg(
                "CsrF32::from_dense",
                format!("{out_f}×{in_f} is too large for u32 indices"),
            ));
        }
        if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
            return Err(CompressError::arg("CsrF32::from_dense", format!("weight {bad} is not finite")));
        }
        let rows = if in_f == 0 { 0 } else { out_f }; // see `indptr`
        let (mut indptr, mut indices, mut values) = (Vec::with_capacity(rows + 1), Vec::new(), Vec::new());
        indptr.push(0u32);
        for row in w.outer_iter().take(rows) {
            for (i, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    indices.push(i as u32);
                    values.push(v);
                }
            }
            indptr.push(values.len() as u32);
        }
        Ok(CsrF32 { out_f, in_f, indptr, indices, values })
    }

    /// Stored non-zeros.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Non-zeros over all entries.
    pub fn density(&self) -> f64 {
        if self.out_f * self.in_f == 0 {
            0.0
        } else {
            self.nnz() as f64 / (self.out_f * self.in_f) as f64
        }
    }
}

impl Projection for CsrF32 {
    fn shape(&self) -> (usize, usize) {
        (self.out_f, self.in_f)
    }

    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], _ws: &mut [u8]) {
        let (out_f, in_f) = (self.out_f, self.in_f);
        if out_f == 0 {
            return; // no output to write: `rows` may be anything, even usize::MAX
        }
        if in_f == 0 {
            // No row pointers are stored (see `indptr`): every output is its bias.
            let n = rows.checked_mul(out_f).filter(|&n| n <= y.len());
            let Some(n) = n else { panic!("CsrF32::forward_rows: {rows} rows of {out_f} outputs, {} given", y.len()) };
            for yr in y[..n].chunks_exact_mut(out_f) {
                match bias {
                    Some(b) => yr.copy_from_slice(b),
                    None => yr.fill(0.0),
                }
            }
            return;
        }
        for r in 0..rows {
            let xr = &x[r * in_f..(r + 1) * in_f];
            for o in 0..out_f {
                let span = self.indptr[o] as usize..self.indptr[o + 1] as usize;
                let s: f32 =
                    self.values[span.clone()].iter().zip(&self.indices[span]).map(|(&v, &i)| v * xr[i as usize]).sum();
                y[r * out_f + o] = s + bias.map_or(0.0, |b| b[o]);
            }
        }
    }

    fn to_dense(&self) -> Array2<f32> {
        let mut w = Array2::zeros((self.out_f, self.in_f));
        for o in 0..self.indptr.len() - 1 {
            for k in self.indptr[o] as usize..self.indptr[o + 1] as usize {
                w[[o, self.indices[k] as usize]] = self.values[k];
            }
        }
        w
    }

    fn storage_bytes(&self) -> usize {
        4 * (self.values.len() + self.indices.len() + self.indptr.len())
    }

    fn format(&self) -> &'static str {
        "csr"
    }
}
