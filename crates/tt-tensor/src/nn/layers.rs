use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Module;
use crate::error::{Result, TensorError};
use crate::projection::{
    check_resident, clear_layer_format, layer_projection, records_graph, release_layer_weight, InstalledProjection,
    Projection,
};
use crate::tensor::{check_normal, checked_numel, randn_array, uniform_array, Array, Tensor};

/// A reparametrization of a layer's dense forward pass: the weight and the input pass through
/// it before the product, and gradients flow through it (QAT's fake quantization; a pruning
/// mask `W ⊙ M`). Installed per layer by name (`map_linears`, `map_conv2ds`), like a projection,
/// so no model code changes. It applies whenever the dense weight is used — always while a graph
/// is recorded; an installed projection (the deployed form) takes precedence otherwise.
pub trait ForwardTransform: Send + Sync + std::fmt::Debug {
    /// The weight the product uses.
    ///
    /// # Errors
    /// Whatever the transform's ops return.
    fn weight(&self, w: &Tensor) -> Result<Tensor>;
    /// The input the product uses.
    ///
    /// # Errors
    /// Whatever the transform's ops return.
    fn input(&self, x: &Tensor) -> Result<Tensor>;
    /// Short name for reports (`"fake-quant"`, `"mask"`).
    fn name(&self) -> &'static str;
    /// The transform as [`Any`](std::any::Any), so that a crate can recognize its own transforms
    /// behind `dyn ForwardTransform` (`downcast_ref`) — to compose over another one and take it
    /// apart again, or to remove only what it installed. `None` by default, as for
    /// [`Projection::as_any`].
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// Fully connected layer `y = x·Wᵀ + b`, `W` stored `[out, in]`.
///
/// It may carry a [`Projection`] — the same matrix in another storage format (packed, int8,
/// sparse, low-rank). With no graph being recorded, `forward` runs the projection; while
/// recording, it uses the dense `weight`, which installing set equal to the projection's
/// `to_dense()`: checkpoints, gradient checks and evaluation all see one function.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    projection: Option<InstalledProjection>,
    transform: Option<Arc<dyn ForwardTransform>>,
}

impl Linear {
    /// PyTorch's default init: U(−1/√in, 1/√in) for weight and bias.
    pub fn new(in_features: usize, out_features: usize, bias: bool, seed: u64) -> Linear {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let bound = 1.0 / (in_features.max(1) as f32).sqrt();
        let weight = Tensor::param(uniform_array(&[out_features, in_features], -bound, bound, &mut rng));
        let bias = bias.then(|| Tensor::param(uniform_array(&[out_features], -bound, bound, &mut rng)));
        Linear { weight, bias, projection: None, transform: None }
    }

    /// Wraps existing tensors (weight `[out, in]`, bias `[out]`).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let s = weight.shape();
        if s.len() != 2 {
            return Err(TensorError::invalid_shape("Linear::from_tensors", &s, "weight must be [out, in]"));
        }
        if let Some(b) = &bias {
            if b.shape() != [s[0]] {
                return Err(TensorError::shape("Linear::from_tensors (bias)", &b.shape(), &[s[0]]));
            }
        }
        Ok(Linear { weight, bias, projection: None, transform: None })
    }

    /// A layer whose weight exists only in the format `p` (`[out, in]` = `p.shape()`): the dense
    /// weight is never built, as after [`Linear::release_weight`]. How a model is built — or
    /// loaded — format by format without ever holding all its f32 weights. `label` names the
    /// weight in errors (`"blocks.0.mlp.fc.weight"`).
    ///
    /// # Errors
    /// A bias whose length is not `p`'s output count.
    pub fn from_projection(p: Arc<dyn Projection>, bias: Option<Tensor>, label: &str) -> Result<Linear> {
        let (out_f, in_f) = p.shape();
        if let Some(b) = &bias {
            if b.shape() != [out_f] {
                return Err(TensorError::shape("Linear::from_projection (bias)", &b.shape(), &[out_f]));
            }
        }
        let (weight, installed) =
            InstalledProjection::born_released("Linear::from_projection", label, &[out_f, in_f], p)?;
        Ok(Linear { weight, bias, projection: Some(installed), transform: None })
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Installs `p` as this layer's weight format and sets `weight` to `p.to_dense()`.
    ///
    /// # Errors
    /// If `p.shape()` is not `(out_features, in_features)`.
    pub fn set_projection(&mut self, p: Arc<dyn Projection>) -> Result<()> {
        self.projection = Some(InstalledProjection::install("Linear::set_projection", &self.weight, p)?);
        Ok(())
    }

    /// Removes the installed projection and returns it; the dense weight stays (made resident
    /// again if it was released: without the projection it is the layer's only copy).
    pub fn clear_projection(&mut self) -> Option<Arc<dyn Projection>> {
        clear_layer_format(&mut self.projection, &self.weight)
    }

    /// Frees the dense weight so the installed projection's storage is the only copy in memory
    /// (inference only; see [`crate::nn::freeze`], which calls this for every layer by name).
    /// Returns the bytes freed.
    ///
    /// # Errors
    /// No projection installed (the dense weight is then the layer's only copy), or the weight
    /// changed since it was installed.
    pub fn release_weight(&self, label: &str) -> Result<usize> {
        release_layer_weight("Linear::release_weight", &self.projection, label, &self.weight)
    }

    /// Installs (Some) or removes (None) a [`ForwardTransform`]; returns the previous one.
    pub fn set_transform(&mut self, t: Option<Arc<dyn ForwardTransform>>) -> Option<Arc<dyn ForwardTransform>> {
        std::mem::replace(&mut self.transform, t)
    }

    /// The installed forward transform, if any.
    pub fn transform(&self) -> Option<&Arc<dyn ForwardTransform>> {
        self.transform.as_ref()
    }

    /// The installed projection, if any (it may be stale: see [`Linear::projection`]).
    pub fn installed_projection(&self) -> Option<&Arc<dyn Projection>> {
        self.projection.as_ref().map(InstalledProjection::projection)
    }

    /// The projection this layer computes with: the installed one, or else a [`DenseF32`](crate::projection::DenseF32) that
    /// **shares** `weight` (no copy). What the KV-cached decoder holds.
    ///
    /// # Errors
    /// If `weight` was written after the installed projection was built from it.
    pub fn projection(&self) -> Result<Arc<dyn Projection>> {
        layer_projection("Linear", &self.projection, &self.weight)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.projection {
            Some(i) if !records_graph(&[Some(x), Some(&self.weight), self.bias.as_ref()]) => {
                x.project(i.current("Linear", &self.weight)?.as_ref(), self.bias.as_ref())
            }
            _ => {
                check_resident("Linear", &self.weight)?;
                match &self.transform {
                    Some(t) => t.input(x)?.linear(&t.weight(&self.weight)?, self.bias.as_ref()),
                    None => x.linear(&self.weight, self.bias.as_ref()),
                }
            }
        }
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }
    fn kind(&self) -> &'static str {
        "Linear"
    }
    fn as_linear(&self) -> Option<&Linear> {
        Some(self)
    }
    fn as_linear_mut(&mut self) -> Option<&mut Linear> {
        Some(self)
    }
}

/// 2-D convolution, weight `[C_out, C_in, k, k]`.
///
/// Reaches the projection seam through im2col: its weight is a `[C_out, C_in·k·k]` matrix applied
/// to one row of unfolded patch values per output pixel. An installed [`Projection`] of that shape
/// runs when no graph is recorded, exactly as for [`Linear`].
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    projection: Option<InstalledProjection>,
    transform: Option<Arc<dyn ForwardTransform>>,
}

impl Conv2d {
    pub fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize, seed: u64) -> Conv2d {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let fan_in = (c_in * kernel * kernel).max(1) as f32;
        let bound = 1.0 / fan_in.sqrt();
        Conv2d {
            weight: Tensor::param(uniform_array(&[c_out, c_in, kernel, kernel], -bound, bound, &mut rng)),
            bias: Some(Tensor::param(uniform_array(&[c_out], -bound, bound, &mut rng))),
            stride,
            padding,
            projection: None,
            transform: None,
        }
    }

    /// The weight as the `[C_out, C_in·k·k]` matrix a projection replaces: `(rows, cols)`.
    pub fn matrix_shape(&self) -> (usize, usize) {
        let s = self.weight.shape();
        (s[0], s[1..].iter().product())
    }

    /// Installs `p` (shape [`Conv2d::matrix_shape`]) and sets `weight` to its `to_dense()`.
    ///
    /// # Errors
    /// If `p.shape()` is not [`Conv2d::matrix_shape`].
    pub fn set_projection(&mut self, p: Arc<dyn Projection>) -> Result<()> {
        self.projection = Some(InstalledProjection::install("Conv2d::set_projection", &self.weight, p)?);
        Ok(())
    }

    /// Frees the dense weight (see [`Linear::release_weight`]).
    ///
    /// # Errors
    /// As [`Linear::release_weight`].
    pub fn release_weight(&self, label: &str) -> Result<usize> {
        release_layer_weight("Conv2d::release_weight", &self.projection, label, &self.weight)
    }

    /// Removes the installed projection and returns it (see [`Linear::clear_projection`]).
    pub fn clear_projection(&mut self) -> Option<Arc<dyn Projection>> {
        clear_layer_format(&mut self.projection, &self.weight)
    }

    /// The installed projection, if any.
    pub fn installed_projection(&self) -> Option<&Arc<dyn Projection>> {
        self.projection.as_ref().map(InstalledProjection::projection)
    }

    /// Installs (Some) or removes (None) a [`ForwardTransform`] (its weight is the 4-D
    /// `[C_out, C_in, k, k]` tensor); returns the previous one.
    pub fn set_transform(&mut self, t: Option<Arc<dyn ForwardTransform>>) -> Option<Arc<dyn ForwardTransform>> {
        std::mem::replace(&mut self.transform, t)
    }

    /// The installed forward transform, if any.
    pub fn transform(&self) -> Option<&Arc<dyn ForwardTransform>> {
        self.transform.as_ref()
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.projection {
            Some(i) if !records_graph(&[Some(x), Some(&self.weight), self.bias.as_ref()]) => {
                let s = self.weight.shape();
                let p = i.current("Conv2d", &self.weight)?;
                x.conv2d_projected(p.as_ref(), (s[2], s[3]), self.bias.as_ref(), self.stride, self.padding)
            }
            _ => {
                check_resident("Conv2d", &self.weight)?;
                match &self.transform {
                    Some(t) => {
                        t.input(x)?.conv2d(&t.weight(&self.weight)?, self.bias.as_ref(), self.stride, self.padding)
                    }
                    None => x.conv2d(&self.weight, self.bias.as_ref(), self.stride, self.padding),
                }
            }
        }
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }
    fn kind(&self) -> &'static str {
        "Conv2d"
    }
    fn as_conv2d(&self) -> Option<&Conv2d> {
        Some(self)
    }
    fn as_conv2d_mut(&mut self) -> Option<&mut Conv2d> {
        Some(self)
    }
}

/// Max pooling with a square window.
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.max_pool2d(self.kernel, self.stride)
    }
    fn kind(&self) -> &'static str {
        "MaxPool2d"
    }
}

/// Average pooling with a square window.
pub struct AvgPool2d {
    pub kernel: usize,
    pub stride: usize,
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.avg_pool2d(self.kernel, self.stride)
    }
    fn kind(&self) -> &'static str {
        "AvgPool2d"
    }
}

/// Flattens every dim after the batch dim.
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten_from(1)
    }
    fn kind(&self) -> &'static str {
        "Flatten"
    }
}

/// Lookup table `[num_embeddings, dim]`.
///
/// Like [`Linear`], it may carry a [`Projection`] of its table (out = rows, in = dim) — the same
/// matrix in another format, int8 for instance, which a tied output head then runs as well.
/// Without a recorded graph, lookups read rows from it ([`Projection::dense_row`]).
pub struct Embedding {
    pub weight: Tensor,
    projection: Option<InstalledProjection>,
}

impl Embedding {
    /// N(0, std²) init (PyTorch uses std 1; GPT-2 0.02).
    ///
    /// # Errors
    /// A `std` that is negative or not finite, or a table `[num, dim]` whose size overflows.
    pub fn new(num: usize, dim: usize, std: f32, seed: u64) -> Result<Embedding> {
        check_normal("Embedding::new", 0.0, std)?;
        checked_numel("Embedding::new", &[num, dim])?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Ok(Embedding { weight: Tensor::param(randn_array(&[num, dim], 0.0, std, &mut rng)), projection: None })
    }

    /// Wraps an existing table `[num, dim]`.
    ///
    /// # Errors
    /// A table that is not 2-D.
    pub fn from_tensor(weight: Tensor) -> Result<Embedding> {
        let s = weight.shape();
        if s.len() != 2 {
            return Err(TensorError::invalid_shape("Embedding::from_tensor", &s, "table must be [num, dim]"));
        }
        Ok(Embedding { weight, projection: None })
    }

    /// A table that exists only in the format `p` (see [`Linear::from_projection`]).
    pub fn from_projection(p: Arc<dyn Projection>, label: &str) -> Result<Embedding> {
        let (rows, dim) = p.shape();
        let (weight, installed) =
            InstalledProjection::born_released("Embedding::from_projection", label, &[rows, dim], p)?;
        Ok(Embedding { weight, projection: Some(installed) })
    }

    /// Installs `p` as the table's format and sets `weight` to `p.to_dense()` (see
    /// [`Linear::set_projection`]).
    ///
    /// # Errors
    /// If `p.shape()` is not the table's `(num, dim)`.
    pub fn set_projection(&mut self, p: Arc<dyn Projection>) -> Result<()> {
        self.projection = Some(InstalledProjection::install("Embedding::set_projection", &self.weight, p)?);
        Ok(())
    }

    /// Removes the installed projection and returns it (see [`Linear::clear_projection`]).
    pub fn clear_projection(&mut self) -> Option<Arc<dyn Projection>> {
        clear_layer_format(&mut self.projection, &self.weight)
    }

    /// The installed projection, if any.
    pub fn installed_projection(&self) -> Option<&Arc<dyn Projection>> {
        self.projection.as_ref().map(InstalledProjection::projection)
    }

    /// The table as a projection: the installed format, or a [`DenseF32`](crate::projection::DenseF32) sharing `weight`.
    ///
    /// # Errors
    /// If `weight` was written after the installed projection was built from it.
    pub fn projection(&self) -> Result<Arc<dyn Projection>> {
        layer_projection("Embedding", &self.projection, &self.weight)
    }

    /// Frees the dense table (see [`Linear::release_weight`]).
    ///
    /// # Errors
    /// As [`Linear::release_weight`].
    pub fn release_weight(&self, label: &str) -> Result<usize> {
        release_layer_weight("Embedding::release_weight", &self.projection, label, &self.weight)
    }

    /// The table as a tied output head, `h·Tᵀ` (`[..., dim] → [..., rows]`): its format when no
    /// graph is recorded, as a `Linear` decides, else the dense table.
    ///
    /// # Errors
    /// A stale format, a released table while a graph is recorded, or `h`'s last dimension not
    /// the table's width.
    pub fn as_head(&self, h: &Tensor) -> Result<Tensor> {
        match &self.projection {
            Some(i) if !records_graph(&[Some(h), Some(&self.weight)]) => {
                h.project(i.current("Embedding", &self.weight)?.as_ref(), None)
            }
            _ => {
                check_resident("Embedding", &self.weight)?;
                h.linear(&self.weight, None)
            }
        }
    }

    /// Looks up ids; the output has shape `ids_shape + [dim]`. Reads rows from the installed
    /// format when no graph is recorded.
    ///
    /// # Errors
    /// An `ids_shape` that does not hold `ids.len()` ids (or whose size overflows), an id
    /// outside the table, a stale format, or a released table while a graph is recorded.
    pub fn forward_ids(&self, ids: &[usize], ids_shape: &[usize]) -> Result<Tensor> {
        if checked_numel("Embedding", ids_shape)? != ids.len() {
            return Err(TensorError::invalid_shape("Embedding", ids_shape, format!("does not hold {} ids", ids.len())));
        }
        let (rows, dim) = {
            let s = self.weight.shape();
            (s[0], s[1])
        };
        let mut shape = ids_shape.to_vec();
        shape.push(dim);
        match &self.projection {
            Some(i) if !records_graph(&[Some(&self.weight)]) => {
                let p = i.current("Embedding", &self.weight)?;
                if let Some(&bad) = ids.iter().find(|&&id| id >= rows) {
                    return Err(TensorError::arg("Embedding", format!("id {bad} out of range for {rows} rows")));
                }
                let mut out = vec![0.0f32; ids.len() * dim];
                for (o, &id) in out.chunks_exact_mut(dim.max(1)).zip(ids) {
                    p.dense_row(id, o);
                }
                Tensor::from_vec(out, &shape)
            }
            _ => {
                check_resident("Embedding", &self.weight)?;
                self.weight.index_select_rows(ids)?.reshape(&shape)
            }
        }
    }
}

impl Module for Embedding {
    /// Takes ids stored as f32 (non-negative integers); errors on anything else.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let vals = x.to_vec();
        let rows = self.weight.shape()[0];
        let mut ids = Vec::with_capacity(vals.len());
        for v in vals {
            if v < 0.0 || v.fract() != 0.0 {
                return Err(TensorError::arg("Embedding", format!("id {v} is not a non-negative integer")));
            }
            // Checked as a float: `as usize` would saturate a huge id and report the wrong value.
            if f64::from(v) >= rows as f64 {
                return Err(TensorError::arg("Embedding", format!("id {v} out of range for {rows} rows")));
            }
            ids.push(v as usize);
        }
        self.forward_ids(&ids, &x.shape())
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
    fn kind(&self) -> &'static str {
        "Embedding"
    }
    fn as_embedding(&self) -> Option<&Embedding> {
        Some(self)
    }
    fn as_embedding_mut(&mut self) -> Option<&mut Embedding> {
        Some(self)
    }
}

/// Layer normalization over the last dim.
pub struct LayerNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    /// `gamma = 1`, `beta = 0`, `eps = 1e-5`. The checked form is [`LayerNorm::try_new`].
    ///
    /// # Panics
    /// If `dim` f32 values overflow `isize::MAX` bytes.
    pub fn new(dim: usize) -> LayerNorm {
        LayerNorm::try_new(dim).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `gamma = 1`, `beta = 0`, `eps = 1e-5`.
    ///
    /// # Errors
    /// If `dim` f32 values overflow `isize::MAX` bytes.
    pub fn try_new(dim: usize) -> Result<LayerNorm> {
        checked_numel("LayerNorm::new", &[dim])?;
        Ok(LayerNorm {
            gamma: Tensor::param(Array::ones(ndarray::IxDyn(&[dim]))),
            beta: Tensor::param(Array::zeros(ndarray::IxDyn(&[dim]))),
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    /// # Errors
    /// As [`Tensor::layer_norm`], e.g. an `eps` set to NaN or a negative value.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.gamma, &self.beta, self.eps)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.gamma.clone()), ("bias".to_string(), self.beta.clone())]
    }
    fn kind(&self) -> &'static str {
        "LayerNorm"
    }
}

/// RMS normalization over the last dimension with a learned scale and no shift (Llama):
/// `y = gamma ⊙ x / √(mean(x²) + eps)`.
pub struct RmsNorm {
    pub gamma: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    /// `gamma = 1`.
    ///
    /// # Errors
    /// If `dim` f32 values overflow `isize::MAX` bytes.
    pub fn new(dim: usize, eps: f32) -> Result<RmsNorm> {
        checked_numel("RmsNorm::new", &[dim])?;
        Ok(RmsNorm { gamma: Tensor::param(Array::ones(ndarray::IxDyn(&[dim]))), eps })
    }
}

impl Module for RmsNorm {
    /// # Errors
    /// As [`Tensor::rms_norm`].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.rms_norm(&self.gamma, self.eps)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.gamma.clone())]
    }
    fn kind(&self) -> &'static str {
        "RmsNorm"
    }
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales the rest by
/// 1/(1−p); in eval mode it is the identity. Its mask generator is seeded.
pub struct Dropout {
    pub p: f32,
    training: bool,
    rng: Mutex<ChaCha8Rng>,
}

fn check_dropout_p(p: f32) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(TensorError::arg("Dropout", format!("p = {p} must be in [0, 1)")));
    }
    Ok(())
}

impl Dropout {
    /// # Errors
    /// A `p` outside [0, 1) (NaN included).
    pub fn new(p: f32, seed: u64) -> Result<Dropout> {
        check_dropout_p(p)?;
        Ok(Dropout { p, training: true, rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) })
    }
    pub fn is_training(&self) -> bool {
        self.training
    }
}

impl Module for Dropout {
    /// # Errors
    /// A `p` set outside [0, 1) through the public field (checked in eval mode too).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // `p` is public: NaN or 1 would otherwise zero every element silently.
        check_dropout_p(self.p)?;
        if !self.training || self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let mask = Array::from_shape_simple_fn(ndarray::IxDyn(&x.shape()), || {
            if rng.random::<f32>() < keep {
                1.0 / keep
            } else {
                0.0
            }
        });
        x.mul_const(&mask)
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn kind(&self) -> &'static str {
        "Dropout"
    }
}

macro_rules! activation_layer {
    ($name:ident, $method:ident, $doc:literal) => {
        #[doc = $doc]
        pub struct $name;
        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                Ok(x.$method())
            }
            fn kind(&self) -> &'static str {
                stringify!($name)
            }
        }
    };
}
activation_layer!(Relu, relu, "ReLU activation layer.");
activation_layer!(Gelu, gelu, "GELU (tanh form) activation layer.");
activation_layer!(Tanh, tanh, "tanh activation layer.");
activation_layer!(Sigmoid, sigmoid, "Sigmoid activation layer.");

/// Layers applied in order. Children are named by position ("0", "1", ...).
#[derive(Default)]
pub struct Sequential {
    pub layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    pub fn new() -> Sequential {
        Sequential { layers: Vec::new() }
    }
    /// Builder-style append.
    pub fn layer(mut self, layer: impl Module + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = crate::hook::layer_scope(|| i.to_string(), || layer.forward(&h))?;
        }
        Ok(h)
    }
    fn set_training(&mut self, training: bool) {
        for l in &mut self.layers {
            l.set_training(training);
        }
    }
    fn kind(&self) -> &'static str {
        "Sequential"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers.iter().enumerate().map(|(i, l)| (i.to_string(), l.as_ref())).collect()
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        self.layers.iter_mut().enumerate().map(|(i, l)| (i.to_string(), l.as_mut() as &mut dyn Module)).collect()
    }
}
