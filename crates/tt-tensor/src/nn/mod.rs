//! Layers behind a small [`Module`] trait, in the spirit of candle-nn: plain structs with public
//! weight fields, a `forward`, named parameters for state dicts, and a train/eval switch.
//!
//! Weights are public `Tensor`s so that a quantizer or pruner can read and replace them
//! ([`Tensor::set_data`]) or swap a whole layer inside a [`Sequential`] without forking model code.

mod layers;

pub use layers::{
    AvgPool2d, Conv2d, Dropout, Embedding, Flatten, ForwardTransform, Gelu, LayerNorm, Linear, MaxPool2d, Relu,
    RmsNorm, Sequential, Sigmoid, Tanh,
};

use crate::error::Result;
use crate::tensor::Tensor;

/// A layer or model.
pub trait Module: Send + Sync {
    /// Applies the layer. Records a graph unless called inside [`no_grad`](crate::no_grad).
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Parameters with dotted names (`"0.weight"`), in a stable order; the state-dict keys.
    /// By default, each child's parameters prefixed with the child's name: containers only list
    /// their [`Module::children`]; leaves that own tensors override this.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.children().into_iter().flat_map(|(name, child)| prefixed(&name, child.named_parameters())).collect()
    }

    /// Switches training-only behaviour (dropout) on or off. Containers recurse.
    fn set_training(&mut self, _training: bool) {}

    /// Short type name for tables ("Linear", "Conv2d").
    fn kind(&self) -> &'static str;

    /// Direct sub-layers with their names, for per-layer reports. Leaves return none.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        Vec::new()
    }

    /// The same sub-layers as [`Module::children`], with the same names in the same order,
    /// mutably: how [`map_linears`] reaches every layer without naming model fields.
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        Vec::new()
    }

    /// `Some` if this layer is a [`Linear`].
    fn as_linear(&self) -> Option<&Linear> {
        None
    }

    /// `Some` if this layer is a [`Linear`].
    fn as_linear_mut(&mut self) -> Option<&mut Linear> {
        None
    }

    /// `Some` if this layer is a [`Conv2d`].
    fn as_conv2d(&self) -> Option<&Conv2d> {
        None
    }

    /// `Some` if this layer is a [`Conv2d`].
    fn as_conv2d_mut(&mut self) -> Option<&mut Conv2d> {
        None
    }

    /// `Some` if this layer is an [`Embedding`].
    fn as_embedding(&self) -> Option<&Embedding> {
        None
    }

    /// `Some` if this layer is an [`Embedding`].
    fn as_embedding_mut(&mut self) -> Option<&mut Embedding> {
        None
    }

    /// All parameters, unnamed.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// Total number of scalar parameters.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.numel()).sum()
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Calls `f` on every layer of the tree below `m` (not `m` itself), depth first, in
/// [`Module::children`] order, with its dotted path (`"blocks.2.mlp.fc"`). Stops at the first error.
pub fn walk_mut(m: &mut dyn Module, f: &mut dyn FnMut(&str, &mut dyn Module) -> Result<()>) -> Result<()> {
    fn go(m: &mut dyn Module, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Module) -> Result<()>) -> Result<()> {
        for (name, child) in m.children_mut() {
            let path = join(prefix, &name);
            f(&path, &mut *child)?;
            go(child, &path, f)?;
        }
        Ok(())
    }
    go(m, "", f)
}

/// Every layer below `m` that carries a [`ForwardTransform`], as `(path, transform name)` in
/// [`Module::children`] order. Such a layer computes something other than its stored weight, so
/// code that reads the stored weight as the layer's function (a checkpoint save, a packer, a
/// quantizer, a structured pruner) must refuse it or compose with the transform.
///
/// ```
/// use tt_tensor::nn::{layer_transforms, Linear, Sequential};
/// let mlp = Sequential::new().layer(Linear::new(4, 2, true, 0));
/// assert!(layer_transforms(&mlp).is_empty());
/// ```
pub fn layer_transforms(m: &dyn Module) -> Vec<(String, &'static str)> {
    fn go(m: &dyn Module, prefix: &str, out: &mut Vec<(String, &'static str)>) {
        for (name, child) in m.children() {
            let path = join(prefix, &name);
            let t =
                child.as_linear().and_then(Linear::transform).or_else(|| child.as_conv2d().and_then(Conv2d::transform));
            if let Some(t) = t {
                out.push((path.clone(), t.name()));
            }
            go(child, &path, out);
        }
    }
    let mut out = Vec::new();
    go(m, "", &mut out);
    out
}

/// Calls `f` on every [`Linear`] below `m` with its state-dict path (`"blocks.0.attn.qkv"`), so a
/// quantizer or pruner can install a projection or change weights without knowing the model's
/// fields. Returns how many layers were visited.
///
/// ```
/// use std::sync::Arc;
/// use tt_tensor::nn::{map_linears, Linear, Relu, Sequential};
/// use tt_tensor::projection::DenseF32;
/// let mut mlp = Sequential::new().layer(Linear::new(4, 8, true, 0)).layer(Relu).layer(Linear::new(8, 2, true, 1));
/// let n = map_linears(&mut mlp, |name, l| {
///     assert!(name == "0" || name == "2");
///     let copy = DenseF32::from_array(l.projection()?.to_dense());
///     l.set_projection(Arc::new(copy))
/// })
/// .unwrap();
/// assert_eq!(n, 2);
/// ```
///
/// # Errors
/// The first error `f` returns.
pub fn map_linears(m: &mut dyn Module, f: impl FnMut(&str, &mut Linear) -> Result<()>) -> Result<usize> {
    map_layers(m, |l| l.as_linear_mut(), f)
}

/// Calls `f` on every layer below `m` that `pick` selects; returns how many there were.
fn map_layers<T: ?Sized>(
    m: &mut dyn Module,
    pick: fn(&mut dyn Module) -> Option<&mut T>,
    mut f: impl FnMut(&str, &mut T) -> Result<()>,
) -> Result<usize> {
    let mut n = 0;
    walk_mut(m, &mut |name, layer| match pick(layer) {
        Some(l) => {
            n += 1;
            f(name, l)
        }
        None => Ok(()),
    })?;
    Ok(n)
}

/// Like [`map_linears`] for every [`Conv2d`] (whose weight is a `[C_out, C_in·k·k]` projection).
///
/// # Errors
/// The first error `f` returns.
pub fn map_conv2ds(m: &mut dyn Module, f: impl FnMut(&str, &mut Conv2d) -> Result<()>) -> Result<usize> {
    map_layers(m, |l| l.as_conv2d_mut(), f)
}

/// Like [`map_linears`] for every [`Embedding`] (whose table is a `[num, dim]` projection): how a
/// checkpoint reaches token tables stored in a weight format.
///
/// # Errors
/// The first error `f` returns.
pub fn map_embeddings(m: &mut dyn Module, f: impl FnMut(&str, &mut Embedding) -> Result<()>) -> Result<usize> {
    map_layers(m, |l| l.as_embedding_mut(), f)
}

/// Every [`Linear`] below `m` with its path, read-only (the decoder, reports).
pub fn linears(m: &dyn Module) -> Vec<(String, &Linear)> {
    fn go<'a>(m: &'a dyn Module, prefix: &str, out: &mut Vec<(String, &'a Linear)>) {
        for (name, child) in m.children() {
            let path = join(prefix, &name);
            if let Some(l) = child.as_linear() {
                out.push((path.clone(), l));
            }
            go(child, &path, out);
        }
    }
    let mut out = Vec::new();
    go(m, "", &mut out);
    out
}

/// Prefixes each name with `prefix.`.
pub fn prefixed(prefix: &str, params: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    params.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)).collect()
}

/// What [`freeze`] released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frozen {
    /// Paths of the layers whose dense weight was released (`"blocks.0.mlp.fc"`).
    pub layers: Vec<String>,
    /// Bytes of dense f32 weights freed.
    pub bytes_freed: usize,
}

/// Inference-only weights: releases the dense weight of every [`Linear`], [`Conv2d`] and
/// [`Embedding`] below `m` that carries a weight format ([`Linear::set_projection`]), so the format's bytes are the
/// only copy in memory. Layers still in dense f32 keep their weight: it is their storage.
///
/// Nothing else changes: the model computes the same function (its layers run their formats, as
/// before), a read of a released weight recomputes a temporary copy from its format (so saving a
/// checkpoint writes the same file as before freezing), and an op that records a graph over one
/// — training, a gradient check — is an error naming it. [`thaw`] undoes it.
///
/// ```
/// use std::sync::Arc;
/// use tt_tensor::nn::{freeze, map_linears, Linear, Relu, Sequential};
/// use tt_tensor::projection::DenseF32;
/// let mut mlp = Sequential::new().layer(Linear::new(4, 8, true, 0)).layer(Relu).layer(Linear::new(8, 2, true, 1));
/// map_linears(&mut mlp, |_, l| {
///     let copy = DenseF32::from_array(l.projection()?.to_dense());
///     l.set_projection(Arc::new(copy))
/// })
/// .unwrap();
/// let frozen = freeze(&mut mlp).unwrap();
/// assert_eq!(frozen.layers, ["0", "2"]);
/// assert_eq!(frozen.bytes_freed, 4 * (8 * 4 + 2 * 8));
/// ```
///
/// # Errors
/// A layer whose weight changed after its format was installed (its format would recompute
/// other values): nothing after it is released.
pub fn freeze(m: &mut dyn Module) -> Result<Frozen> {
    let mut frozen = Frozen::default();
    walk_mut(m, &mut |path, layer| {
        let label = format!("{path}.weight");
        let freed = if let Some(l) = layer.as_linear().filter(|l| l.installed_projection().is_some()) {
            l.release_weight(&label)?
        } else if let Some(c) = layer.as_conv2d().filter(|c| c.installed_projection().is_some()) {
            c.release_weight(&label)?
        } else if let Some(e) = layer.as_embedding().filter(|e| e.installed_projection().is_some()) {
            e.release_weight(&label)?
        } else {
            return Ok(());
        };
        frozen.layers.push(path.to_string());
        frozen.bytes_freed += freed;
        Ok(())
    })?;
    Ok(frozen)
}

/// Makes every released parameter of `m` resident again (see [`freeze`]); returns how many were.
/// Training can then resume; a step that changes a weight makes its installed format stale, which
/// the layer reports when next used without a graph.
pub fn thaw(m: &dyn Module) -> usize {
    let mut n = 0;
    for t in m.parameters().iter().filter(|t| t.is_released()) {
        t.make_resident();
        n += 1;
    }
    n
}
