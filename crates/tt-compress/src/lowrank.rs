//! Low-rank factorization: `W ≈ U·V` by truncated SVD, run as two projections in a row.
//!
//! `W = Σᵢ σᵢ·uᵢvᵢᵀ`; keeping the `r` largest singular values gives the best rank-`r` approximation
//! in the Frobenius norm, with error `‖W − W_r‖²_F = Σ_{i>r} σᵢ²` (Eckart–Young; tested). `U` is
//! `[out, r]` (the left singular vectors scaled by σ), `V` is `[r, in]`; the layer computes
//! `y = (x·Vᵀ)·Uᵀ + b`, `2·r·(out + in)` FLOPs per row instead of `2·out·in` — fewer once
//! `r < out·in/(out + in)`. The SVD is nalgebra's (f64), not ours.

use ndarray::Array2;
use tt_tensor::projection::{DenseF32, Projection};

use crate::error::{CompressError, Result};

/// The singular values of `w`, largest first (f64 SVD).
///
/// # Errors
/// A non-finite weight or an empty matrix.
pub fn singular_values(w: &Array2<f32>) -> Result<Vec<f64>> {
    Ok(svd(w)?.singular_values.iter().copied().collect())
}

/// The smallest rank keeping at least `fraction` of the energy `Σσᵢ²`.
///
/// # Errors
/// `fraction` outside `(0, 1]`.
pub fn rank_for_energy(singular: &[f64], fraction: f64) -> Result<usize> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(CompressError::arg("rank_for_energy", format!("fraction {fraction} must be in (0, 1]")));
    }
    let total: f64 = singular.iter().map(|s| s * s).sum();
    let mut kept = 0.0;
    for (i, s) in singular.iter().enumerate() {
        kept += s * s;
        if kept >= fraction * total * (1.0 - 1e-12) {
            return Ok(i + 1);
        }
    }
    Ok(singular.len().max(1))
}

/// The largest rank whose two factors fit `bytes` (4 per f32: `4·r·(out + in)`), at least 1.
pub fn rank_for_bytes(out_f: usize, in_f: usize, bytes: usize) -> usize {
    (bytes / (4 * (out_f + in_f)).max(1)).clamp(1, out_f.min(in_f).max(1))
}

fn svd(w: &Array2<f32>) -> Result<nalgebra::SVD<f64, nalgebra::Dyn, nalgebra::Dyn>> {
    let (rows, cols) = w.dim();
    if rows == 0 || cols == 0 {
        return Err(CompressError::arg("svd", format!("empty {rows}×{cols} matrix")));
    }
    if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
        return Err(CompressError::arg("svd", format!("weight {bad} is not finite")));
    }
    let m = nalgebra::DMatrix::from_fn(rows, cols, |i, j| w[[i, j]] as f64);
    Ok(m.svd(true, true))
}

/// `W ≈ U·V` as a `Projection` (see the module docs).
#[derive(Debug, Clone)]
pub struct LowRank {
    u: DenseF32,
    v: DenseF32,
    rank: usize,
}

impl LowRank {
    /// The rank-`rank` truncated SVD of `w` (`[out, in]`).
    ///
    /// # Errors
    /// `rank` 0 or above `min(out, in)`, or what [`singular_values`] rejects.
    pub fn factor(w: &Array2<f32>, rank: usize) -> Result<LowRank> {
        let (out_f, in_f) = w.dim();
        if rank == 0 || rank > out_f.min(in_f) {
            return Err(CompressError::arg("LowRank::factor", format!("rank {rank} of a {out_f}×{in_f} matrix")));
        }
        let s = svd(w)?;
        let (u, vt) = match (&s.u, &s.v_t) {
            (Some(u), Some(vt)) => (u, vt),
            // Both were requested above; nalgebra computes them when asked.
            _ => return Err(CompressError::arg("LowRank::factor", "the SVD returned no singular vectors")),
        };
        // nalgebra does not promise sorted singular values: take the `rank` largest.
        let mut order: Vec<usize> = (0..s.singular_values.len()).collect();
        order.sort_by(|&a, &b| s.singular_values[b].total_cmp(&s.singular_values[a]));
        let order = &order[..rank];
        let uf = Array2::from_shape_fn((out_f, rank), |(i, k)| (u[(i, order[k])] * s.singular_values[order[k]]) as f32);
        let vf = Array2::from_shape_fn((rank, in_f), |(k, j)| vt[(order[k], j)] as f32);
        Ok(LowRank { u: DenseF32::from_array(uf), v: DenseF32::from_array(vf), rank })
    }

    /// The kept rank.
    pub fn rank(&self) -> usize {
        self.rank
    }
}

impl Projection for LowRank {
    fn shape(&self) -> (usize, usize) {
        (self.u.shape().0, self.v.shape().1)
    }

    fn workspace_len(&self, rows: usize) -> usize {
        4 * rows * self.rank + 4 + self.u.workspace_len(rows).max(self.v.workspace_len(rows))
    }

    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8]) {
        let (t_bytes, rest) = ws.split_at_mut(4 * rows * self.rank + 4);
        // SAFETY: every bit pattern is a valid f32; the aligned middle holds rows·rank floats
        // (4 bytes of slack were asked for in `workspace_len`).
        let t = unsafe { t_bytes.align_to_mut::<f32>().1 };
        let t = &mut t[..rows * self.rank];
        self.v.forward_rows(x, rows, None, t, rest);
        self.u.forward_rows(t, rows, bias, y, rest);
    }

    fn to_dense(&self) -> Array2<f32> {
        self.u.to_dense().dot(&self.v.to_dense())
    }

    fn storage_bytes(&self) -> usize {
        self.u.storage_bytes() + self.v.storage_bytes()
    }

    fn format(&self) -> &'static str {
        "lowrank"
    }
}
