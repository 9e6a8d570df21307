//! Low-rank factorization: `W ≈ U·V` by truncated SVD, run as two projections in a row.
//!
//! `W = Σᵢ σᵢ·uᵢvᵢᵀ`; keeping the `r` largest singular values gives the best rank-`r` approximation
//! in the Frobenius norm, with error `‖W − W_r‖²_F = Σ_{i>r} σᵢ²` (Eckart–Young; tested). `U` is
//! `[out, r]` (the left singular vectors scaled by σ), `V` is `[r, in]`; the layer computes
//! `y = (x·Vᵀ)·Uᵀ + b`, `2·r·(out + in)` FLOPs per row instead of `2·out·in` — fewer once
//! `r < out·in/(out + in)`. The SVD is nalgebra's (f64), not ours.
//!
//! **Fine-tuning after factoring** ([`Factored`]): each chosen Linear gets a forward transform
//! that computes its weight as `U·V` from two trainable leaves (so autograd reaches them), and
//! [`WithFactors`] lists them with the model's parameters, since the training loops build their
//! optimizer from `Module::parameters` — the layer keeps its structure and names (a `Sequential`
//! is not re-indexed, `map_linears` still finds it). [`Factored::finish`] turns the trained factors
//! back into [`LowRank`] projections, whose output equals the trained transform's.

use std::sync::Arc;

use ndarray::Array2;
use tt_tensor::nn::ForwardTransform;
use tt_tensor::projection::{DenseF32, Projection};
use tt_tensor::{Module, Tensor};

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
    // Saturating: a rank-1 pair of factors too large for `usize` fits no budget (rank 1 then).
    let per_rank = 4usize.saturating_mul(out_f.saturating_add(in_f)).max(1);
    (bytes / per_rank).clamp(1, out_f.min(in_f).max(1))
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

    /// `U·V` from given factors `u` (`[out, r]`) and `v` (`[r, in]`).
    ///
    /// # Errors
    /// Inner dimensions that differ or are 0, or a non-finite value.
    pub fn from_factors(u: Array2<f32>, v: Array2<f32>) -> Result<LowRank> {
        let rank = u.ncols();
        if rank == 0 || v.nrows() != rank {
            return Err(CompressError::arg(
                "LowRank::from_factors",
                format!("U {:?} and V {:?} do not multiply at a rank ≥ 1", u.dim(), v.dim()),
            ));
        }
        if let Some(bad) = u.iter().chain(v.iter()).find(|x| !x.is_finite()) {
            return Err(CompressError::arg("LowRank::from_factors", format!("factor value {bad} is not finite")));
        }
        Ok(LowRank { u: DenseF32::from_array(u), v: DenseF32::from_array(v), rank })
    }

    /// The factors `(U, V)`.
    pub fn factors(&self) -> (Array2<f32>, Array2<f32>) {
        (self.u.to_dense(), self.v.to_dense())
    }

    /// The kept rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Bytes of the `rows × rank` intermediate in the workspace, with 4 bytes of slack for
    /// aligning it to f32; `None` if that overflows `usize`.
    fn temp_bytes(&self, rows: usize) -> Option<usize> {
        rows.checked_mul(self.rank)?.checked_mul(4)?.checked_add(4)
    }
}

/// The weight as `U·V` in the forward pass (both leaves; the layer's own weight is unused).
#[derive(Debug)]
struct FactorTransform {
    u: Tensor,
    v: Tensor,
}

impl ForwardTransform for FactorTransform {
    fn weight(&self, _w: &Tensor) -> tt_tensor::Result<Tensor> {
        self.u.matmul(&self.v)
    }
    fn input(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
        Ok(x.clone())
    }
    fn name(&self) -> &'static str {
        "lowrank"
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// One factored layer: its name and its trainable factors (shared with its forward transform).
#[derive(Debug, Clone)]
pub struct FactoredLayer {
    pub name: String,
    /// `[out, r]`.
    pub u: Tensor,
    /// `[r, in]`.
    pub v: Tensor,
}

impl FactoredLayer {
    /// The factors as they are now, as an inference projection.
    ///
    /// # Errors
    /// A factor that is not 2-D or has become non-finite.
    pub fn to_low_rank(&self) -> Result<LowRank> {
        let two_d = |t: &Tensor| -> Result<Array2<f32>> {
            t.data()
                .clone()
                .into_dimensionality()
                .map_err(|e| CompressError::arg("FactoredLayer::to_low_rank", e.to_string()))
        };
        LowRank::from_factors(two_d(&self.u)?, two_d(&self.v)?)
    }
}

/// Linears factored for fine-tuning (see the module docs).
#[derive(Debug, Default)]
pub struct Factored {
    layers: Vec<FactoredLayer>,
}

impl Factored {
    /// Factors each Linear of `names` at `rank` (clamped to `min(out, in)`) by truncated SVD of
    /// the matrix it computes now, and installs `U·V` as its forward transform (removing an
    /// installed projection, which would otherwise run instead under `no_grad`). The model
    /// computes the rank-`rank` approximation from then on, in training and evaluation.
    ///
    /// # Errors
    /// An unknown name, a layer that already carries a forward transform (a pruning mask,
    /// fake-quant), a stale projection, or what [`LowRank::factor`] rejects; nothing is changed
    /// then.
    pub fn factor(m: &mut dyn Module, names: &[&str], rank: usize) -> Result<Factored> {
        let mut found: Vec<(String, Array2<f32>)> = Vec::new();
        let mut problem = None;
        tt_tensor::nn::map_linears(m, |n, l| {
            if names.contains(&n) {
                if let Some(t) = l.transform() {
                    problem.get_or_insert(format!("layer '{n}' already carries a '{}' transform", t.name()));
                }
                found.push((n.to_string(), l.projection()?.to_dense()));
            }
            Ok(())
        })?;
        if let Some(missing) = names.iter().find(|n| !found.iter().any(|(f, _)| f == *n)) {
            problem.get_or_insert(format!("no Linear named '{missing}'"));
        }
        if let Some(p) = problem {
            return Err(CompressError::arg("Factored::factor", p));
        }
        let mut layers = Vec::new();
        for (name, w) in &found {
            let lr = LowRank::factor(w, rank.min(w.nrows().min(w.ncols())))?;
            let (u, v) = lr.factors();
            layers.push(FactoredLayer {
                name: name.clone(),
                u: Tensor::param(u.into_dyn()),
                v: Tensor::param(v.into_dyn()),
            });
        }
        tt_tensor::nn::map_linears(m, |n, l| {
            if let Some(f) = layers.iter().find(|f| f.name == n) {
                l.clear_projection();
                l.set_transform(Some(Arc::new(FactorTransform { u: f.u.clone(), v: f.v.clone() })));
            }
            Ok(())
        })?;
        Ok(Factored { layers })
    }

    /// The factored layers, in the order of `names`' discovery (model order).
    pub fn layers(&self) -> &[FactoredLayer] {
        &self.layers
    }

    /// Removes the transforms and installs each layer's trained factors as a [`LowRank`]
    /// projection (which sets the layer's weight to `U·V`, so checkpoints see the same function).
    ///
    /// # Errors
    /// A factor that became non-finite, or a factored layer whose transform is no longer this
    /// factorization's (another transform composed over it, such as QAT's fake quantization:
    /// finish that one first); nothing is changed then.
    pub fn finish(self, m: &mut dyn Module) -> Result<()> {
        let projections: Vec<(String, LowRank)> =
            self.layers.iter().map(|f| Ok((f.name.clone(), f.to_low_rank()?))).collect::<Result<_>>()?;
        let own = |n: &str, t: Option<&Arc<dyn ForwardTransform>>| {
            let ft = t.and_then(|t| t.as_any()).and_then(|a| a.downcast_ref::<FactorTransform>());
            ft.is_some_and(|ft| {
                self.layers.iter().any(|f| f.name == n && f.u.id() == ft.u.id() && f.v.id() == ft.v.id())
            })
        };
        let mut problem = None;
        tt_tensor::nn::map_linears(m, |n, l| {
            if projections.iter().any(|(name, _)| name == n) && !own(n, l.transform()) {
                let what = l.transform().map_or("no transform".to_string(), |t| format!("a '{}' transform", t.name()));
                problem.get_or_insert(format!("layer '{n}' carries {what}, not this factorization's"));
            }
            Ok(())
        })?;
        if let Some(p) = problem {
            return Err(CompressError::arg("Factored::finish", p));
        }
        tt_tensor::nn::map_linears(m, |n, l| {
            if let Some((_, lr)) = projections.iter().find(|(name, _)| name == n) {
                l.set_transform(None);
                l.set_projection(Arc::new(lr.clone()))?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

/// `model` with its factored layers' `U` and `V` among its parameters (named `<layer>.u`,
/// `<layer>.v`) in place of those layers' unused weights: what a training loop that takes the
/// model's parameters (`classifier::train_with`) optimizes. Forward, training mode and children
/// are the model's.
pub struct WithFactors<'a> {
    pub model: &'a mut dyn Module,
    pub factors: &'a Factored,
}

impl Module for WithFactors<'_> {
    fn forward(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
        self.model.forward(x)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let unused: Vec<String> = self.factors.layers.iter().map(|f| format!("{}.weight", f.name)).collect();
        let mut v: Vec<(String, Tensor)> =
            self.model.named_parameters().into_iter().filter(|(n, _)| !unused.contains(n)).collect();
        for f in &self.factors.layers {
            v.push((format!("{}.u", f.name), f.u.clone()));
            v.push((format!("{}.v", f.name), f.v.clone()));
        }
        v
    }
    fn set_training(&mut self, training: bool) {
        self.model.set_training(training);
    }
    fn kind(&self) -> &'static str {
        "WithFactors"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.model.children()
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        self.model.children_mut()
    }
}

impl Projection for LowRank {
    fn shape(&self) -> (usize, usize) {
        (self.u.shape().0, self.v.shape().1)
    }

    /// `usize::MAX` where a size overflows: no caller has that much, so `project` refuses.
    fn workspace_len(&self, rows: usize) -> usize {
        let inner = self.u.workspace_len(rows).max(self.v.workspace_len(rows));
        self.temp_bytes(rows).and_then(|t| t.checked_add(inner)).unwrap_or(usize::MAX)
    }

    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8]) {
        // The trait's `# Panics` (`project` checks the workspace first); checked before the
        // unsafe re-typing below, so no size there has wrapped.
        let t_len = self.temp_bytes(rows).filter(|&n| n <= ws.len());
        let Some(t_len) = t_len else { panic!("LowRank::forward_rows workspace: {} bytes for {rows} rows", ws.len()) };
        let (t_bytes, rest) = ws.split_at_mut(t_len);
        // SAFETY: every bit pattern is a valid f32; the aligned middle holds rows·rank floats
        // (4 bytes of slack in `temp_bytes`).
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
