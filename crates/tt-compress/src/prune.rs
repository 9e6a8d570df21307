//! Magnitude pruning with persistent masks (`../shared/reference/semantics.md` §3,
//! `torch.nn.utils.prune`).
//!
//! - **Amount** is a fraction of the weights still unpruned in the layer (or, globally, in all
//!   chosen layers): `k = round(amount · n_unpruned)` (half to even, as Python's `round`), so
//!   pruning 0.5 twice leaves a quarter. The `k` smallest `|w|` are pruned, ties broken by
//!   position (deterministic).
//! - **Masks persist**: pruning zeroes the weights and installs the mask as the layer's
//!   `ForwardTransform` (`w ⊙ M` in every dense forward, so pruned weights get zero gradient);
//!   optimizers may still move a pruned weight (momentum from before pruning, weight decay), so
//!   [`Pruning::reapply`] zeroes them again — call it after every optimizer step (the GPT's
//!   `train_with_hooks` after-step hook, or the classifier loop). [`Pruning::make_permanent`]
//!   zeroes once more and removes the masks.
//! - A pruned weight invalidates a projection installed over it (tt-tensor's staleness check):
//!   prune first, then install int8 / packed / sparse formats.
//! - **A `Pruning` belongs to one model**: it holds that model's weight tensors (to zero them
//!   again without the model), so every call that takes a model first checks that the layers it
//!   pruned are that model's, by tensor identity, and refuses another model with an error. It
//!   installs masks only where a layer carries no transform or its own mask, and removes only its
//!   own masks (QAT's fake quantization may be composed over one: convert it first).

use std::sync::Arc;

use ndarray::{Array2, ArrayD, ArrayView2};
use tt_tensor::nn::ForwardTransform;
use tt_tensor::{Module, Tensor};

use crate::error::{CompressError, Result};

/// `w ⊙ M` in the forward pass (the mask is a constant: no gradient of its own).
#[derive(Debug)]
struct Mask {
    mask: Tensor,
}

impl ForwardTransform for Mask {
    fn weight(&self, w: &Tensor) -> tt_tensor::Result<Tensor> {
        w.mul(&self.mask)
    }
    fn input(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
        Ok(x.clone())
    }
    fn name(&self) -> &'static str {
        "mask"
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// One pruned layer: its weight (shared with the model) and its 0/1 mask.
#[derive(Debug, Clone)]
pub struct PrunedLayer {
    pub name: String,
    pub weight: Tensor,
    pub mask: ArrayD<f32>,
    /// The mask as the layer's forward transform holds it (shared: updating it updates the
    /// layer's forward without touching the model).
    forward: Tensor,
}

impl PrunedLayer {
    /// Pruned (masked-out) entries.
    pub fn pruned(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 0.0).count()
    }
}

/// The masks of a model being pruned (see the module docs).
#[derive(Debug, Default)]
pub struct Pruning {
    layers: Vec<PrunedLayer>,
}

/// `k = round_half_even(amount · n)`.
fn to_prune(amount: f64, n: usize) -> usize {
    ((amount * n as f64).round_ties_even() as usize).min(n)
}

fn check_amount(op: &'static str, amount: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&amount) {
        return Err(CompressError::arg(op, format!("amount {amount} must be a fraction in [0, 1]")));
    }
    Ok(())
}

impl Pruning {
    /// The pruned layers, in the order they were first pruned.
    pub fn layers(&self) -> &[PrunedLayer] {
        &self.layers
    }

    /// Refuses a model other than the one this pruned: every pruned layer must be in `all` (the
    /// model's weights by name) with the very weight tensor it pruned.
    fn check_model(&self, all: &[(String, Tensor)], op: &'static str) -> Result<()> {
        for l in &self.layers {
            if !all.iter().any(|(n, w)| *n == l.name && w.id() == l.weight.id()) {
                return Err(CompressError::arg(
                    op,
                    format!(
                        "this Pruning belongs to another model: layer '{}' of this one is not the weight it pruned \
                         (a Pruning prunes, reapplies and removes the masks of one model; use a new one per model)",
                        l.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `t` is the mask this installed on layer `name`.
    fn is_own_mask(&self, name: &str, t: &Arc<dyn ForwardTransform>) -> bool {
        let mask = t.as_any().and_then(|a| a.downcast_ref::<Mask>());
        mask.is_some_and(|m| self.layers.iter().any(|l| l.name == name && l.forward.id() == m.mask.id()))
    }

    /// Current masks of `names` (all-ones for a layer not pruned yet), validated to exist.
    fn current(
        &self,
        m: &mut dyn Module,
        names: &[&str],
        op: &'static str,
    ) -> Result<Vec<(String, Tensor, ArrayD<f32>)>> {
        let all = crate::sparsity::weights(m)?;
        self.check_model(&all, op)?;
        names
            .iter()
            .map(|&n| {
                let (_, w) = all.iter().find(|(name, _)| name == n).ok_or_else(|| {
                    CompressError::arg(
                        op,
                        format!(
                            "no Linear or Conv2d named '{n}' (have: {})",
                            all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?;
                let mask = match self.layers.iter().find(|l| l.name == n) {
                    Some(l) => l.mask.clone(),
                    None => ArrayD::ones(w.data().raw_dim()),
                };
                Ok((n.to_string(), w.clone(), mask))
            })
            .collect()
    }

    /// Prunes `amount` of the still-unpruned weights of each layer in `names`, separately.
    ///
    /// # Errors
    /// An amount outside `[0, 1]`, an unknown layer name, a layer carrying another forward
    /// transform (including another `Pruning`'s mask), or a model other than the one this
    /// `Pruning` pruned before; nothing is changed then.
    pub fn magnitude(&mut self, m: &mut dyn Module, names: &[&str], amount: f64) -> Result<()> {
        check_amount("Pruning::magnitude", amount)?;
        let mut layers = self.current(m, names, "Pruning::magnitude")?;
        for (_, w, mask) in &mut layers {
            let data = w.data();
            let mut live: Vec<(f32, usize)> = data
                .iter()
                .zip(mask.iter())
                .enumerate()
                .filter(|(_, (_, &k))| k != 0.0)
                .map(|(i, (v, _))| (v.abs(), i))
                .collect();
            let k = to_prune(amount, live.len());
            live.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let flat = mask.as_slice_mut().expect("a fresh or cloned mask is standard layout");
            for &(_, i) in &live[..k] {
                flat[i] = 0.0;
            }
        }
        self.install(m, layers)
    }

    /// Prunes `amount` of the still-unpruned **16×1 blocks** (16 consecutive outputs of one
    /// input column, the unit `BlockSparseF32` skips) of each layer in `names`, separately,
    /// ranked by their L2 norm: see [`block_mask`]. A Conv2d weight is taken as
    /// `[C_out, C_in·k·k]`. Masks persist as with [`Pruning::magnitude`].
    ///
    /// # Errors
    /// As [`Pruning::magnitude`].
    pub fn block_magnitude(&mut self, m: &mut dyn Module, names: &[&str], amount: f64) -> Result<()> {
        check_amount("Pruning::block_magnitude", amount)?;
        let mut layers = self.current(m, names, "Pruning::block_magnitude")?;
        for (_, w, mask) in &mut layers {
            // As the seam sees the weight: `[out, everything else]` (a Conv2d's `[C_out, C_in·k·k]`).
            let rows = mask.shape().first().copied().unwrap_or(1);
            let cols = mask.len().checked_div(rows).unwrap_or(0);
            let data = w.data();
            let flat_w: Vec<f32> = data.iter().copied().collect();
            let w2 = ArrayView2::from_shape((rows, cols), &flat_w)
                .map_err(|e| CompressError::arg("Pruning::block_magnitude", e.to_string()))?;
            let flat_m = mask.as_slice().expect("masks are built in standard layout");
            let m2 = ArrayView2::from_shape((rows, cols), flat_m)
                .map_err(|e| CompressError::arg("Pruning::block_magnitude", e.to_string()))?;
            let new = block_mask(&w2, &m2, amount)?;
            mask.as_slice_mut()
                .expect("masks are built in standard layout")
                .copy_from_slice(new.as_slice().expect("fresh array"));
        }
        self.install(m, layers)
    }

    /// Prunes `amount` of the still-unpruned weights of all layers in `names` together, with one
    /// magnitude threshold: layers with many small weights lose more of them.
    ///
    /// # Errors
    /// As [`Pruning::magnitude`].
    pub fn global_magnitude(&mut self, m: &mut dyn Module, names: &[&str], amount: f64) -> Result<()> {
        check_amount("Pruning::global_magnitude", amount)?;
        let mut layers = self.current(m, names, "Pruning::global_magnitude")?;
        let mut live: Vec<(f32, usize, usize)> = Vec::new();
        for (li, (_, w, mask)) in layers.iter().enumerate() {
            let data = w.data();
            live.extend(
                data.iter()
                    .zip(mask.iter())
                    .enumerate()
                    .filter(|(_, (_, &k))| k != 0.0)
                    .map(|(i, (v, _))| (v.abs(), li, i)),
            );
        }
        let k = to_prune(amount, live.len());
        live.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for &(_, li, i) in &live[..k] {
            // Masks are `ArrayD::ones` or clones of them: always standard layout.
            layers[li].2.as_slice_mut().expect("masks are built in standard layout")[i] = 0.0;
        }
        self.install(m, layers)
    }

    /// Records the masks, zeroes the pruned weights and installs the forward masks.
    fn install(&mut self, m: &mut dyn Module, layers: Vec<(String, Tensor, ArrayD<f32>)>) -> Result<()> {
        // Refuse before changing anything if a layer carries a transform that is not ours.
        let names: Vec<&str> = layers.iter().map(|l| l.0.as_str()).collect();
        if let Some((n, t)) = transform_on(m, &names, |n, t| self.is_own_mask(n, t))? {
            return Err(CompressError::arg(
                "Pruning",
                format!("layer '{n}' already carries another forward transform ('{t}', not this Pruning's mask)"),
            ));
        }
        for (name, weight, mask) in layers {
            match self.layers.iter_mut().find(|l| l.name == name) {
                Some(l) => {
                    l.forward.set_data(mask.clone())?;
                    l.mask = mask;
                }
                None => {
                    let forward = Tensor::from_array(mask.clone());
                    self.layers.push(PrunedLayer { name, weight, mask, forward });
                }
            }
        }
        self.reapply();
        let transform = |name: &str| -> Option<Arc<dyn ForwardTransform>> {
            self.layers
                .iter()
                .find(|l| l.name == name)
                .map(|l| Arc::new(Mask { mask: l.forward.clone() }) as Arc<dyn ForwardTransform>)
        };
        tt_tensor::nn::map_linears(m, |n, l| {
            if let Some(t) = transform(n) {
                l.set_transform(Some(t));
            }
            Ok(())
        })?;
        tt_tensor::nn::map_conv2ds(m, |n, c| {
            if let Some(t) = transform(n) {
                c.set_transform(Some(t));
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Prunes `amount` more of the still-unpruned weights of the layers already pruned, with one
    /// threshold across them, **without the model**: the weights and the forward masks are
    /// shared with its layers, so a training loop's after-step hook (which only sees the model
    /// immutably) can prune on a schedule.
    ///
    /// # Errors
    /// An amount outside `[0, 1]`.
    pub fn advance_global(&mut self, amount: f64) -> Result<()> {
        check_amount("Pruning::advance_global", amount)?;
        let mut live: Vec<(f32, usize, usize)> = Vec::new();
        for (li, l) in self.layers.iter().enumerate() {
            let data = l.weight.data();
            live.extend(
                data.iter()
                    .zip(l.mask.iter())
                    .enumerate()
                    .filter(|(_, (_, &k))| k != 0.0)
                    .map(|(i, (v, _))| (v.abs(), li, i)),
            );
        }
        let k = to_prune(amount, live.len());
        live.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for &(_, li, i) in &live[..k] {
            self.layers[li].mask.as_slice_mut().expect("masks are built in standard layout")[i] = 0.0;
        }
        for l in &self.layers {
            l.forward.set_data(l.mask.clone())?;
        }
        self.reapply();
        Ok(())
    }

    /// Fraction of masked-out entries over the pruned layers (0 before any pruning).
    pub fn mask_sparsity(&self) -> f64 {
        let (z, n) = self.layers.iter().fold((0, 0), |(z, n), l| (z + l.pruned(), n + l.mask.len()));
        if n == 0 {
            0.0
        } else {
            z as f64 / n as f64
        }
    }

    /// Zeroes every pruned weight again (after an optimizer step moved some).
    pub fn reapply(&self) {
        for l in &self.layers {
            // A write marks a projection installed over the weight stale: write only if an
            // optimizer really moved a pruned weight.
            let moved = l.weight.data().iter().zip(l.mask.iter()).any(|(&w, &k)| k == 0.0 && w != 0.0);
            if !moved {
                continue;
            }
            let mut d = l.weight.data_mut();
            d.zip_mut_with(&l.mask, |w, &k| {
                if k == 0.0 {
                    *w = 0.0;
                }
            });
        }
    }

    /// Zeroes the pruned weights a last time and removes the masks from the layers: the zeros
    /// stay, nothing keeps them any more.
    ///
    /// # Errors
    /// A model other than the one this pruned, or a pruned layer whose transform is no longer
    /// this `Pruning`'s mask (QAT's fake quantization composed over it: convert it first); the
    /// model is then unchanged.
    pub fn make_permanent(self, m: &mut dyn Module) -> Result<()> {
        let op = "Pruning::make_permanent";
        self.check_model(&crate::sparsity::weights(m)?, op)?;
        let names: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        if let Some((n, t)) = transform_on(m, &names, |n, t| self.is_own_mask(n, t))? {
            return Err(CompressError::arg(
                op,
                format!("layer '{n}' carries a '{t}' transform over its mask; finish that transform first"),
            ));
        }
        self.reapply();
        tt_tensor::nn::map_linears(m, |n, l| {
            if l.transform().is_some_and(|t| self.is_own_mask(n, t)) {
                l.set_transform(None);
            }
            Ok(())
        })?;
        tt_tensor::nn::map_conv2ds(m, |n, c| {
            if c.transform().is_some_and(|t| self.is_own_mask(n, t)) {
                c.set_transform(None);
            }
            Ok(())
        })?;
        Ok(())
    }
}

/// The first layer of `names` (Linears in model order, then Conv2ds) carrying a forward
/// transform that `accept` does not accept, with the transform's name: what a call that rewrites
/// a layer's weight or rebuilds the layer checks before changing anything, since the transform
/// would be dropped or would run over the wrong weight.
pub(crate) fn transform_on(
    m: &mut dyn Module,
    names: &[&str],
    accept: impl Fn(&str, &Arc<dyn ForwardTransform>) -> bool,
) -> Result<Option<(String, &'static str)>> {
    let mut found = None;
    let mut check = |n: &str, t: Option<&Arc<dyn ForwardTransform>>| {
        if let Some(t) = t.filter(|t| names.contains(&n) && !accept(n, t)) {
            found.get_or_insert((n.to_string(), t.name()));
        }
    };
    tt_tensor::nn::map_linears(m, |n, l| {
        check(n, l.transform());
        Ok(())
    })?;
    tt_tensor::nn::map_conv2ds(m, |n, c| {
        check(n, c.transform());
        Ok(())
    })?;
    Ok(found)
}

/// Outputs per block of [`block_mask`] (tt-accel's `sparse::BLOCK`).
pub const BLOCK: usize = tt_accel::sparse::BLOCK;

/// The mask after pruning `amount` of the still-unpruned 16×1 blocks of `w` (`[out, in]`;
/// rows `16b..16b + 16` of one column, the last block shorter when `out` is not a multiple of
/// 16), as `ln_structured(n = 2)` counts amounts: `k = round(amount · n_unpruned)` blocks with the
/// smallest L2 norm of their still-unmasked weights are zeroed whole, ties broken by position
/// (row block, then column). A block is unpruned while any of its mask entries is non-zero.
/// Why blocks: a 16×1 block is what the block-sparse kernel skips in one step, so zeros in
/// whole blocks save time, where the same number of scattered zeros mostly does not.
///
/// # Errors
/// An amount outside `[0, 1]`, or `mask` not of `w`'s shape.
pub fn block_mask(w: &ArrayView2<f32>, mask: &ArrayView2<f32>, amount: f64) -> Result<Array2<f32>> {
    check_amount("block_mask", amount)?;
    if w.dim() != mask.dim() {
        return Err(CompressError::arg("block_mask", format!("mask {:?} for a {:?} weight", mask.dim(), w.dim())));
    }
    let (out_f, in_f) = w.dim();
    if w.is_empty() {
        // Nothing to prune; the block grid below would still walk 2³⁶ empty rows of a 2⁴⁰ × 0 matrix.
        return Ok(mask.to_owned());
    }
    let blocks = out_f.div_ceil(BLOCK);
    let rows = |b: usize| b * BLOCK..out_f.min((b + 1) * BLOCK);
    let mut live: Vec<(f64, usize, usize)> = Vec::new();
    for b in 0..blocks {
        for i in 0..in_f {
            if rows(b).any(|o| mask[[o, i]] != 0.0) {
                let norm2: f64 = rows(b).map(|o| ((w[[o, i]] * mask[[o, i]]) as f64).powi(2)).sum();
                live.push((norm2, b, i));
            }
        }
    }
    let k = to_prune(amount, live.len());
    live.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut out = mask.to_owned();
    for &(_, b, i) in &live[..k] {
        for o in rows(b) {
            out[[o, i]] = 0.0;
        }
    }
    Ok(out)
}

/// The cubic sparsity schedule of Zhu & Gupta (2017), "To prune, or not to prune":
/// `s_t = s_f + (s_i − s_f)·(1 − t/n)³` for step `t` of `n` (clamped to `[0, n]`) — prune fast
/// while many weights are redundant, slowly near the end. Returns the target sparsity at `t`.
///
/// # Errors
/// Sparsities outside `[0, 1]`, `s_f < s_i`, or `n` = 0.
pub fn cubic_schedule(initial: f64, target: f64, t: usize, n: usize) -> Result<f64> {
    if !((0.0..=1.0).contains(&initial) && (0.0..=1.0).contains(&target) && target >= initial && n > 0) {
        return Err(CompressError::arg(
            "cubic_schedule",
            format!("initial {initial}, target {target}, {n} steps: need 0 ≤ initial ≤ target ≤ 1 and n > 0"),
        ));
    }
    let frac = 1.0 - (t.min(n) as f64 / n as f64);
    Ok(target + (initial - target) * frac.powi(3))
}

/// The amount to prune now (a fraction of the still-unpruned weights, as [`Pruning::magnitude`]
/// takes it) to go from sparsity `current` to `target`.
///
/// # Errors
/// Sparsities outside `[0, 1]`, or `target < current`.
pub fn amount_for(current: f64, target: f64) -> Result<f64> {
    if !((0.0..=1.0).contains(&current) && (0.0..=1.0).contains(&target) && target >= current) {
        return Err(CompressError::arg("amount_for", format!("from {current} to {target}")));
    }
    Ok(if current >= 1.0 { 0.0 } else { (target - current) / (1.0 - current) })
}
