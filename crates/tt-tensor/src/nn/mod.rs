//! Layers behind a small [`Module`] trait, in the spirit of candle-nn: plain structs with public
//! weight fields, a `forward`, named parameters for state dicts, and a train/eval switch.
//!
//! Weights are public `Tensor`s so that a quantizer or pruner can read and replace them
//! ([`Tensor::set_data`]) or swap a whole layer inside a [`Sequential`] without forking model code.

mod layers;

pub use layers::{
    AvgPool2d, Conv2d, Dropout, Embedding, Flatten, Gelu, LayerNorm, Linear, MaxPool2d, Relu, Sequential, Sigmoid, Tanh,
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

    /// All parameters, unnamed.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// Total number of scalar parameters.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.numel()).sum()
    }
}

/// Prefixes each name with `prefix.`.
pub fn prefixed(prefix: &str, params: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    params.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)).collect()
}
