//! Embeddings (module 11), attention (12) and the pre-norm GPT (13), in two families: GPT-2 and
//! Llama.
//!
//! ```text
//! ids ─► tok_emb (+ pos_emb) ─► N × Block ─► ln_f ─► lm_head ─► logits
//! Block: x + attn(ln1(x)), then x + mlp(ln2(x))
//!   GPT-2: LayerNorm, learned positions, mlp = proj(GELU(fc x)), biases
//!   Llama: RMSNorm, rotary positions on Q and K, mlp = proj(SiLU(fc x) ⊙ up x) (SwiGLU),
//!          grouped-query attention (n_kv_heads K/V heads shared by n_heads queries), no biases
//! ```
//!
//! One model type covers both: the config says which norm, position encoding and MLP each block
//! has ([`GptConfig::llama`] sets the Llama ones), so the trainer, the cached decoder, the
//! checkpoints and every weight format see one set of layers.
//!
//! Every weight is a public [`Tensor`] so later modules (KV cache, quantization, pruning) can read
//! or replace it. The forward pass here is the full-recompute reference: it always processes the
//! whole sequence.

use std::sync::Arc;

use ndarray::{Array2, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
pub use tt_tensor::kernels::{RopePairs, RopeTable};
use tt_tensor::nn::{prefixed, Embedding, LayerNorm, Linear, RmsNorm};
use tt_tensor::{randn_array, Array, Module, Projection, Tensor};

use crate::error::{Result, TransformerError};

/// How positions are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionEncoding {
    /// A trained `[max_seq_len, d_model]` table (GPT-2).
    Learned,
    /// Fixed sin/cos table (Vaswani et al.), not trained.
    Sinusoidal,
    /// Rotary embeddings on each head's queries and keys (Llama): no table added to the input.
    Rotary,
}

/// The normalization of every block and of the final norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// Mean and variance, scale and shift (GPT-2).
    #[default]
    LayerNorm,
    /// Root mean square, scale only (Llama).
    RmsNorm,
}

/// The MLP of every block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlpKind {
    /// `proj(GELU(fc x))` (GPT-2).
    #[default]
    Gelu,
    /// `proj(SiLU(fc x) ⊙ up x)` (Llama's SwiGLU; `fc` is its gate `w1`, `up` its `w3`).
    SwiGlu,
}

fn default_eps() -> f32 {
    1e-5
}
fn default_theta() -> f32 {
    10_000.0
}
fn yes() -> bool {
    true
}

/// How [`Gpt::new_with`] stores a weight: given its path, its `[out, in]` shape and a way to draw
/// its initial values, `Some(format)` or `None` (keep the drawn values, dense).
pub type WeightFormat<'a> = dyn FnMut(&str, (usize, usize), &mut dyn FnMut() -> Array2<f32>) -> tt_tensor::Result<Option<Arc<dyn Projection>>>
    + 'a;

/// Model hyper-parameters (saved as JSON with every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub max_seq_len: usize,
    /// Hidden width of the MLP as a multiple of d_model (4 in GPT-2).
    pub mlp_ratio: usize,
    /// Per-block MLP hidden widths, overriding `mlp_ratio · d_model` — what structured pruning
    /// leaves (module 18). Absent in configs written before it, and for unpruned models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_hidden: Option<Vec<usize>>,
    /// Per-block attention head counts, each at most `n_heads` — what head pruning leaves
    /// (module 18). The head width stays `d_model / n_heads`, so a block with `h` heads has Q, K
    /// and V of width `h · head_dim` and an output projection with that many inputs. Absent in
    /// configs written before it, and for unpruned models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads_per_block: Option<Vec<usize>>,
    /// Share the token-embedding matrix with the output head.
    pub tie_weights: bool,
    pub position: PositionEncoding,
    /// Residual dropout probability in training (on each block's attention and MLP outputs and on
    /// the embeddings); 0 disables. Never applied by inference paths.
    #[serde(default)]
    pub dropout: f32,
    pub seed: u64,
    /// Block and final norms (configs written before Llama: LayerNorm).
    #[serde(default)]
    pub norm: NormKind,
    /// The norms' epsilon.
    #[serde(default = "default_eps")]
    pub norm_eps: f32,
    #[serde(default)]
    pub mlp: MlpKind,
    /// Key/value heads, dividing `n_heads` (grouped-query attention); `None`: one per query head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_kv_heads: Option<usize>,
    /// Rotary base θ (with [`PositionEncoding::Rotary`]).
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    /// Which head dimensions rotary embeddings pair (the checkpoint's convention).
    #[serde(default)]
    pub rope_pairs: RopePairs,
    /// Linear layers carry biases (GPT-2) or not (Llama).
    #[serde(default = "yes")]
    pub bias: bool,
}

impl GptConfig {
    /// The course's default model: d_model 128, 4 layers, 4 heads, context 640 (module 14
    /// generates 512 tokens after a prompt), MLP 4×, tied head, learned positions, no dropout.
    pub fn default_model(vocab_size: usize) -> GptConfig {
        GptConfig {
            vocab_size,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            max_seq_len: 640,
            mlp_ratio: 4,
            mlp_hidden: None,
            heads_per_block: None,
            tie_weights: true,
            position: PositionEncoding::Learned,
            dropout: 0.0,
            seed: 0,
            norm: NormKind::LayerNorm,
            norm_eps: 1e-5,
            mlp: MlpKind::Gelu,
            n_kv_heads: None,
            rope_theta: 10_000.0,
            rope_pairs: RopePairs::Interleaved,
            bias: true,
        }
    }

    /// A Llama: RMSNorm, rotary positions (`rope_pairs`, θ 10 000), SwiGLU MLPs of width
    /// `hidden`, `n_kv_heads` key/value heads, no biases, tied head as given. Other fields as
    /// [`GptConfig::default_model`].
    pub fn llama(
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        (n_heads, n_kv_heads): (usize, usize),
        hidden: usize,
        max_seq_len: usize,
    ) -> GptConfig {
        GptConfig {
            d_model,
            n_layers,
            n_heads,
            max_seq_len,
            mlp_hidden: Some(vec![hidden; n_layers]),
            position: PositionEncoding::Rotary,
            norm: NormKind::RmsNorm,
            mlp: MlpKind::SwiGlu,
            n_kv_heads: Some(n_kv_heads),
            bias: false,
            ..GptConfig::default_model(vocab_size)
        }
    }

    /// Key/value heads of every block: `n_kv_heads`, else `n_heads` (of block `l`, which head
    /// pruning may have lowered; grouped-query models are not head-pruned).
    pub fn kv_heads(&self, l: usize) -> usize {
        match self.n_kv_heads {
            Some(kv) if kv != self.n_heads => kv,
            _ => self.heads(l),
        }
    }

    /// Rows of block `l`'s fused Q/K/V projection: `(heads + 2·kv_heads) · head_dim`.
    pub fn qkv_width(&self, l: usize) -> usize {
        (self.heads(l) + 2 * self.kv_heads(l)) * self.head_dim()
    }

    /// The MLP hidden width of block `l`: `mlp_hidden[l]` if set, else `mlp_ratio · d_model`.
    pub fn hidden(&self, l: usize) -> usize {
        match &self.mlp_hidden {
            Some(h) => h.get(l).copied().unwrap_or(0),
            None => self.mlp_ratio * self.d_model,
        }
    }

    /// The attention head count of block `l`: `heads_per_block[l]` if set, else `n_heads`.
    pub fn heads(&self, l: usize) -> usize {
        match &self.heads_per_block {
            Some(h) => h.get(l).copied().unwrap_or(0),
            None => self.n_heads,
        }
    }

    /// The Q (or K, or V) width of block `l`: `heads(l) · head_dim` (`d_model` when unpruned).
    pub fn attn_width(&self, l: usize) -> usize {
        self.heads(l) * self.head_dim()
    }

    /// Hard caps: no course model comes near them, and they bound what a config alone (a
    /// sinusoidal table, a KV cache) can make the program allocate.
    pub const MAX_SEQ_LEN: usize = 1 << 16;
    pub const MAX_D_MODEL: usize = 1 << 14;
    pub const MAX_LAYERS: usize = 1 << 10;
    pub const MAX_VOCAB: usize = 1 << 22;
    pub const MAX_MLP_RATIO: usize = 64;
    /// At most 2³¹ parameters (8 GiB of f32).
    pub const MAX_PARAMETERS: usize = 1 << 31;

    /// Checks the config before anything is allocated: positive sizes under the hard caps,
    /// `n_heads` dividing `d_model`, dropout in [0, 1), per-block MLP widths and head counts (one
    /// per layer, heads in `1..=n_heads`), and a parameter count that fits.
    ///
    /// # Errors
    /// [`TransformerError::Config`] naming the field and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TransformerError::Config(m));
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, Self::MAX_VOCAB),
            ("d_model", self.d_model, Self::MAX_D_MODEL),
            ("n_layers", self.n_layers, Self::MAX_LAYERS),
            ("n_heads", self.n_heads, self.d_model.max(1)),
            ("max_seq_len", self.max_seq_len, Self::MAX_SEQ_LEN),
            ("mlp_ratio", self.mlp_ratio, Self::MAX_MLP_RATIO),
        ] {
            if v == 0 || v > max {
                return bad(format!("{name} = {v} must be in 1..={max}"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!("d_model {} is not divisible by n_heads {}", self.d_model, self.n_heads));
        }
        if let Some(kv) = self.n_kv_heads {
            if kv == 0 || !self.n_heads.is_multiple_of(kv) {
                return bad(format!("n_kv_heads {kv} must divide n_heads {}", self.n_heads));
            }
            if kv != self.n_heads && self.heads_per_block.is_some() {
                return bad("heads_per_block (head pruning) needs one key/value head per query head".into());
            }
        }
        if !(self.norm_eps >= 0.0 && self.norm_eps.is_finite()) {
            return bad(format!("norm_eps {} must be finite and >= 0", self.norm_eps));
        }
        if self.position == PositionEncoding::Rotary {
            if !self.head_dim().is_multiple_of(2) {
                return bad(format!("rotary positions need an even head size, not {}", self.head_dim()));
            }
            if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
                return bad(format!("rope_theta {} must be finite and > 1", self.rope_theta));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if let Some(h) = &self.mlp_hidden {
            let max = Self::MAX_MLP_RATIO * self.d_model;
            if h.len() != self.n_layers {
                return bad(format!("mlp_hidden has {} widths for {} layers", h.len(), self.n_layers));
            }
            if let Some((l, &w)) = h.iter().enumerate().find(|(_, &w)| w == 0 || w > max) {
                return bad(format!("mlp_hidden[{l}] = {w} must be in 1..={max}"));
            }
        }
        if let Some(h) = &self.heads_per_block {
            if h.len() != self.n_layers {
                return bad(format!("heads_per_block has {} head counts for {} layers", h.len(), self.n_layers));
            }
            if let Some((l, &n)) = h.iter().enumerate().find(|(_, &n)| n == 0 || n > self.n_heads) {
                return bad(format!("heads_per_block[{l}] = {n} must be in 1..={} (n_heads)", self.n_heads));
            }
        }
        let total: usize = self.parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        if total > Self::MAX_PARAMETERS {
            return bad(format!("{total} parameters exceed the cap of {}", Self::MAX_PARAMETERS));
        }
        Ok(())
    }

    /// State-dict names and shapes of the model this config builds, in
    /// [`Module::named_parameters`] order, computed without allocating the model: what a loader
    /// compares a weights file against before building anything. (Sizes are capped by
    /// [`GptConfig::validate`]'s per-field limits, so the products cannot overflow.)
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, v) = (self.d_model, self.vocab_size);
        let mut out = vec![("tok_emb.weight".to_string(), vec![v, d])];
        if self.position == PositionEncoding::Learned {
            out.push(("pos_emb.weight".into(), vec![self.max_seq_len, d]));
        }
        let layer_norm = self.norm == NormKind::LayerNorm;
        let swiglu = self.mlp == MlpKind::SwiGlu;
        for l in 0..self.n_layers {
            let (h, a, q) = (self.hidden(l), self.attn_width(l), self.qkv_width(l));
            for (name, shape, present) in [
                ("ln1.weight", vec![d], true),
                ("ln1.bias", vec![d], layer_norm),
                ("attn.qkv.weight", vec![q, d], true),
                ("attn.qkv.bias", vec![q], self.bias),
                ("attn.proj.weight", vec![d, a], true),
                ("attn.proj.bias", vec![d], self.bias),
                ("ln2.weight", vec![d], true),
                ("ln2.bias", vec![d], layer_norm),
                ("mlp.fc.weight", vec![h, d], true),
                ("mlp.fc.bias", vec![h], self.bias),
                ("mlp.up.weight", vec![h, d], swiglu),
                ("mlp.up.bias", vec![h], swiglu && self.bias),
                ("mlp.proj.weight", vec![d, h], true),
                ("mlp.proj.bias", vec![d], self.bias),
            ] {
                if present {
                    out.push((format!("blocks.{l}.{name}"), shape));
                }
            }
        }
        out.push(("ln_f.weight".into(), vec![d]));
        if layer_norm {
            out.push(("ln_f.bias".into(), vec![d]));
        }
        if !self.tie_weights {
            out.push(("lm_head.weight".into(), vec![v, d]));
        }
        out
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}

/// Fixed sinusoidal table: `PE[p, 2i] = sin(p / 10000^{2i/d})`, `PE[p, 2i+1] = cos(...)`.
pub fn sinusoidal_table(max_len: usize, d: usize) -> Array {
    let mut t = Array2::<f32>::zeros((max_len, d));
    for p in 0..max_len {
        for i in 0..d {
            let freq = 1.0 / 10000f64.powf((2 * (i / 2)) as f64 / d as f64);
            let angle = p as f64 * freq;
            t[[p, i]] = if i % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
        }
    }
    t.into_dyn()
}

/// Causal multi-head self-attention with a fused QKV projection.
pub struct CausalSelfAttention {
    /// `[a + 2·kv, d]` with `a = n_heads · head_dim` (`d` unless heads were pruned) and
    /// `kv = n_kv_heads · head_dim` (`a` without grouped-query attention): rows `0..a` produce Q,
    /// the next `kv` K, the last `kv` V; head `h` owns columns `h·head_dim..` of each.
    pub qkv: Linear,
    /// `[d, a]`: head `h`'s output enters through columns `h·head_dim..(h+1)·head_dim`.
    pub proj: Linear,
    /// This block's head count (`GptConfig::heads`).
    pub n_heads: usize,
    /// Key/value heads (`GptConfig::kv_heads`): query head `h` attends with K/V head
    /// `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    /// Rotary embeddings applied to Q and K (Llama), shared by every block and the decoder.
    pub rope: Option<Arc<RopeTable>>,
}

/// A block's (or the final) normalization: GPT-2's LayerNorm or Llama's RMSNorm.
pub enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn new(kind: NormKind, d: usize, eps: f32) -> Result<Norm> {
        Ok(match kind {
            NormKind::LayerNorm => {
                let mut n = LayerNorm::try_new(d)?;
                n.eps = eps;
                Norm::Layer(n)
            }
            NormKind::RmsNorm => Norm::Rms(RmsNorm::new(d, eps)?),
        })
    }

    /// The scale (`gamma`) every kind has.
    pub fn gamma(&self) -> &Tensor {
        match self {
            Norm::Layer(n) => &n.gamma,
            Norm::Rms(n) => &n.gamma,
        }
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        match self {
            Norm::Layer(n) => n.named_parameters(),
            Norm::Rms(n) => n.named_parameters(),
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Norm::Layer(n) => n.kind(),
            Norm::Rms(n) => n.kind(),
        }
    }
}

/// `[T, T]` additive mask: 0 on and below the diagonal, −∞ above (a position sees only its past).
pub fn causal_mask(t: usize) -> Tensor {
    let m = Array2::from_shape_fn((t, t), |(i, j)| if j > i { f32::NEG_INFINITY } else { 0.0 });
    Tensor::from_array(m.into_dyn())
}

impl CausalSelfAttention {
    /// Attention output `[B, T, d]` and the attention probabilities `[B, H, T, T]` (a constant),
    /// computed by the fused kernel [`crate::attention::causal_attention`].
    pub fn forward_with_weights(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let s = x.shape();
        if s.len() != 3 {
            return Err(TransformerError::Tensor(tt_tensor::TensorError::InvalidShape {
                op: "attention",
                shape: s,
                reason: "expected [batch, seq, d_model]".into(),
            }));
        }
        let qkv = self.qkv.forward(x)?;
        let qkv =
            if self.rope.is_some() || self.n_kv_heads != self.n_heads { self.rotate_and_share(&qkv)? } else { qkv };
        let (y, probs) = crate::attention::causal_attention(&qkv, self.n_heads)?;
        Ok((self.proj.forward(&y)?, Tensor::from_array(probs)))
    }

    /// Llama's Q/K/V `[B, T, a + 2·kv]` → the `[B, T, 3a]` the fused attention takes: Q and K
    /// turned by the rotary table (positions from 0), each K/V head repeated for the
    /// `n_heads / n_kv_heads` query heads that share it. Differentiable ops only.
    fn rotate_and_share(&self, qkv: &Tensor) -> Result<Tensor> {
        let s = qkv.shape();
        let (b, t, (h, kvh)) = (s[0], s[1], (self.n_heads, self.n_kv_heads));
        if h == 0 || kvh == 0 || !h.is_multiple_of(kvh) || !s[2].is_multiple_of(h + 2 * kvh) {
            return Err(TransformerError::Config(format!(
                "qkv width {} does not hold {h} query and 2 × {kvh} key/value heads",
                s[2]
            )));
        }
        let hd = s[2] / (h + 2 * kvh);
        let (a, kv) = (h * hd, kvh * hd);
        let mut q = qkv.narrow(2, 0, a)?.reshape(&[b, t, h, hd])?;
        let mut k = qkv.narrow(2, a, kv)?.reshape(&[b, t, kvh, hd])?;
        let mut v = qkv.narrow(2, a + kv, kv)?.reshape(&[b, t, kvh, hd])?;
        if let Some(rope) = &self.rope {
            q = q.rope(rope, 0)?;
            k = k.rope(rope, 0)?;
        }
        if kvh != h {
            // [B, T, kvh, hd] → [B, T, kvh, g, hd] (each head g times) → [B, T, h, hd]: query
            // head j·g + r reads K/V head j.
            let g = h / kvh;
            let share = |x: Tensor| -> Result<Tensor> {
                let x = x.unsqueeze(3)?;
                let copies: Vec<&Tensor> = std::iter::repeat_n(&x, g).collect();
                Ok(Tensor::concat(&copies, 3)?.reshape(&[b, t, h, hd])?)
            };
            k = share(k)?;
            v = share(v)?;
        }
        let flat = |x: Tensor| x.reshape(&[b, t, a]);
        Ok(Tensor::concat(&[&flat(q)?, &flat(k)?, &flat(v)?], 2)?)
    }

    /// The same attention composed from basic differentiable ops (reshape, permute, batched matmul,
    /// additive causal mask, softmax): the straightforward reference the fused kernel is tested
    /// against.
    pub fn forward_composed(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let s = x.shape();
        if s.len() != 3 {
            return Err(TransformerError::Tensor(tt_tensor::TensorError::InvalidShape {
                op: "attention",
                shape: s,
                reason: "expected [batch, seq, d_model]".into(),
            }));
        }
        if self.rope.is_some() || self.n_kv_heads != self.n_heads {
            return Err(TransformerError::Config(
                "the composed reference covers GPT-2 attention (no rotary positions, one K/V head per query head)"
                    .into(),
            ));
        }
        let (b, t) = (s[0], s[1]);
        let h = self.n_heads;
        // The attention width a = h·dh comes from the projection (below d_model once heads are
        // pruned); the residual width d never enters here.
        let a = self.qkv.out_features() / 3;
        let dh = a / h.max(1);
        // [B,T,3a] → [B,T,3,H,dh] → [3,B,H,T,dh]
        let qkv = self.qkv.forward(x)?.reshape(&[b, t, 3, h, dh])?.permute(&[2, 0, 3, 1, 4])?;
        let q = qkv.narrow(0, 0, 1)?.reshape(&[b, h, t, dh])?;
        let k = qkv.narrow(0, 1, 1)?.reshape(&[b, h, t, dh])?;
        let v = qkv.narrow(0, 2, 1)?.reshape(&[b, h, t, dh])?;
        let scores = q.matmul(&k.transpose(2, 3)?)?.mul_scalar(1.0 / (dh as f32).sqrt());
        let att = scores.add(&causal_mask(t))?.softmax(3)?;
        let y = att.matmul(&v)?.permute(&[0, 2, 1, 3])?.reshape(&[b, t, a])?;
        Ok((self.proj.forward(&y)?, att))
    }
}

impl Module for CausalSelfAttention {
    fn forward(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
        self.forward_with_weights(x).map(|r| r.0).map_err(into_tensor_error)
    }
    fn kind(&self) -> &'static str {
        "CausalSelfAttention"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("qkv".into(), &self.qkv), ("proj".into(), &self.proj)]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![("qkv".into(), &mut self.qkv), ("proj".into(), &mut self.proj)]
    }
}

fn into_tensor_error(e: TransformerError) -> tt_tensor::TensorError {
    match e {
        TransformerError::Tensor(t) => t,
        other => tt_tensor::TensorError::InvalidArgument { op: "transformer", reason: other.to_string() },
    }
}

/// Position-wise feed-forward network: `proj(GELU(fc x))`, or with `up` Llama's SwiGLU
/// `proj(SiLU(fc x) ⊙ up x)`. Hidden unit `j` is row `j` of `fc` (and of `up`) and column `j` of
/// `proj`.
pub struct Mlp {
    pub fc: Linear,
    pub up: Option<Linear>,
    pub proj: Linear,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
        let h = match &self.up {
            Some(up) => self.fc.forward(x)?.silu().mul(&up.forward(x)?)?,
            None => self.fc.forward(x)?.gelu(),
        };
        self.proj.forward(&h)
    }
    fn kind(&self) -> &'static str {
        "Mlp"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut c: Vec<(String, &dyn Module)> = vec![("fc".into(), &self.fc)];
        if let Some(up) = &self.up {
            c.push(("up".into(), up));
        }
        c.push(("proj".into(), &self.proj));
        c
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        let mut c: Vec<(String, &mut dyn Module)> = vec![("fc".into(), &mut self.fc)];
        if let Some(up) = &mut self.up {
            c.push(("up".into(), up));
        }
        c.push(("proj".into(), &mut self.proj));
        c
    }
}

/// One pre-norm transformer block.
pub struct Block {
    pub ln1: Norm,
    pub attn: CausalSelfAttention,
    pub ln2: Norm,
    pub mlp: Mlp,
}

/// Dropout for one training forward pass: probability and a base seed; each site derives its own.
#[derive(Debug, Clone, Copy)]
pub struct DropoutSeed {
    pub p: f32,
    pub seed: u64,
}

impl DropoutSeed {
    fn apply(self, x: &Tensor, site: u64) -> Result<Tensor> {
        let s = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ site.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Ok(x.dropout(self.p, s)?)
    }
}

impl Block {
    /// Block output and its attention probabilities.
    pub fn forward_with_weights(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.forward_train(x, None, 0)
    }

    /// Block forward with optional residual dropout (`site` distinguishes layers).
    pub fn forward_train(&self, x: &Tensor, dropout: Option<DropoutSeed>, site: u64) -> Result<(Tensor, Tensor)> {
        let (mut a, w) = self.attn.forward_with_weights(&self.ln1.forward(x)?)?;
        if let Some(d) = dropout {
            a = d.apply(&a, 2 * site + 1)?;
        }
        let x = x.add(&a)?;
        let mut m = self.mlp.forward(&self.ln2.forward(&x)?)?;
        if let Some(d) = dropout {
            m = d.apply(&m, 2 * site + 2)?;
        }
        Ok((x.add(&m)?, w))
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
        self.forward_with_weights(x).map(|r| r.0).map_err(into_tensor_error)
    }
    fn kind(&self) -> &'static str {
        "Block"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("ln1".into(), &self.ln1),
            ("attn".into(), &self.attn),
            ("ln2".into(), &self.ln2),
            ("mlp".into(), &self.mlp),
        ]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![
            ("ln1".into(), &mut self.ln1),
            ("attn".into(), &mut self.attn),
            ("ln2".into(), &mut self.ln2),
            ("mlp".into(), &mut self.mlp),
        ]
    }
}

/// The GPT model.
pub struct Gpt {
    pub config: GptConfig,
    pub tok_emb: Embedding,
    /// Learned table (a parameter) or fixed sinusoidal table (a constant), `[max_seq_len, d]`;
    /// with rotary positions an empty `[0, d]` constant (nothing is added to the input).
    pub pos_emb: Tensor,
    /// The rotary table of every block (`[max_seq_len, head_dim/2]` angles), with rotary
    /// positions.
    pub rope: Option<Arc<RopeTable>>,
    pub blocks: Vec<Block>,
    pub ln_f: Norm,
    /// `None` when weights are tied: the head is `tok_emb.weight`.
    pub lm_head: Option<Linear>,
}

impl Gpt {
    /// A freshly initialized model: GPT-2 init, N(0, 0.02) weights, zero biases, residual output
    /// projections scaled by 1/√(2·n_layers).
    pub fn new(config: GptConfig) -> Result<Gpt> {
        Gpt::new_with(config, &mut |_, _, _| Ok(None))
    }

    /// [`Gpt::new`] with each linear weight — and the token table (`"tok_emb"`, which a tied head
    /// shares) — stored as `format(path, shape, draw)` decides: a weight format (the layer then
    /// holds only the format: see [`Linear::from_projection`]) or `None` to keep the values
    /// drawn. `draw` gives `Gpt::new`'s initial values for that weight; a format that calls it
    /// for every weight builds exactly the quantized `Gpt::new(config)`, holding at most one f32
    /// weight at a time, and a loader that never calls it builds the model without any f32 copy
    /// of its formatted weights (the weights it skips are not drawn, so later ones are drawn
    /// differently, which a loader overwrites anyway). Paths are the state-dict names
    /// (`"tok_emb"`, `"blocks.0.mlp.fc"`, `"lm_head"`).
    ///
    /// # Errors
    /// An invalid config, or the first error `format` returns.
    pub fn new_with(config: GptConfig, format: &mut WeightFormat<'_>) -> Result<Gpt> {
        config.validate()?;
        let (d, v, l) = (config.d_model, config.vocab_size, config.n_layers);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let resid_std = 0.02 / ((2 * l) as f32).sqrt();
        // One weight, drawn only if the format asks for its values or keeps them dense: the
        // format's projection, or the dense values.
        type Stored = std::result::Result<Arc<dyn Projection>, Array2<f32>>;
        let mut weight = |rng: &mut ChaCha8Rng, path: &str, shape: (usize, usize), std: f32| -> Result<Stored> {
            let mut drawn: Option<Array2<f32>> = None;
            let draw = |rng: &mut ChaCha8Rng| -> Array2<f32> {
                randn_array(&[shape.0, shape.1], 0.0, std, rng).into_dimensionality().expect("drawn 2-D")
            };
            let p = format(path, shape, &mut || drawn.insert(draw(rng)).clone())?;
            Ok(match p {
                Some(p) => Ok(p),
                None => Err(drawn.unwrap_or_else(|| draw(rng))),
            })
        };
        let tok_emb = match weight(&mut rng, "tok_emb", (v, d), 0.02)? {
            Ok(p) => Embedding::from_projection(p, "tok_emb.weight")?,
            Err(table) => Embedding::from_tensor(Tensor::param(table.into_dyn()))?,
        };
        let pos_emb = match config.position {
            PositionEncoding::Learned => Tensor::param(randn_array(&[config.max_seq_len, d], 0.0, 0.01, &mut rng)),
            PositionEncoding::Sinusoidal => Tensor::from_array(sinusoidal_table(config.max_seq_len, d)),
            PositionEncoding::Rotary => Tensor::from_array(Array::zeros(IxDyn(&[0, d]))),
        };
        let rope = match config.position {
            PositionEncoding::Rotary => Some(Arc::new(RopeTable::new(
                config.max_seq_len,
                config.head_dim(),
                config.rope_theta,
                config.rope_pairs,
            )?)),
            _ => None,
        };
        let with_bias = config.bias;
        let mut linear = |path: String, shape: (usize, usize), std: f32, bias: bool| -> Result<Linear> {
            let bias = (bias && with_bias).then(|| Tensor::param(Array::zeros(IxDyn(&[shape.0]))));
            Ok(match weight(&mut rng, &path, shape, std)? {
                Ok(p) => Linear::from_projection(p, bias, &format!("{path}.weight"))?,
                Err(w) => Linear::from_tensors(Tensor::param(w.into_dyn()), bias).expect("shapes built consistently"),
            })
        };
        let mut blocks = Vec::with_capacity(l);
        let (norm, eps) = (config.norm, config.norm_eps);
        for b in 0..l {
            let (hidden, a) = (config.hidden(b), config.attn_width(b));
            let qkv = linear(format!("blocks.{b}.attn.qkv"), (config.qkv_width(b), d), 0.02, true)?;
            let proj = linear(format!("blocks.{b}.attn.proj"), (d, a), resid_std, true)?;
            let fc = linear(format!("blocks.{b}.mlp.fc"), (hidden, d), 0.02, true)?;
            let up = match config.mlp {
                MlpKind::SwiGlu => Some(linear(format!("blocks.{b}.mlp.up"), (hidden, d), 0.02, true)?),
                MlpKind::Gelu => None,
            };
            let mlp_proj = linear(format!("blocks.{b}.mlp.proj"), (d, hidden), resid_std, true)?;
            blocks.push(Block {
                ln1: Norm::new(norm, d, eps)?,
                attn: CausalSelfAttention {
                    qkv,
                    proj,
                    n_heads: config.heads(b),
                    n_kv_heads: config.kv_heads(b),
                    rope: rope.clone(),
                },
                ln2: Norm::new(norm, d, eps)?,
                mlp: Mlp { fc, up, proj: mlp_proj },
            });
        }
        let lm_head = match config.tie_weights {
            true => None,
            false => Some(linear("lm_head".into(), (v, d), 0.02, false)?),
        };
        let ln_f = Norm::new(norm, d, eps)?;
        Ok(Gpt { config, tok_emb, pos_emb, rope, blocks, ln_f, lm_head })
    }

    /// Checks ids against the vocabulary and the sequence length against the context.
    pub fn check_input(&self, ids: &[usize], batch: usize, seq: usize) -> Result<()> {
        if ids.len() != batch * seq || seq == 0 {
            return Err(TransformerError::Config(format!("{} ids do not form a [{batch}, {seq}] batch", ids.len())));
        }
        if seq > self.config.max_seq_len {
            return Err(TransformerError::ContextOverflow { position: seq - 1, max_seq_len: self.config.max_seq_len });
        }
        if let Some(&bad) = ids.iter().find(|&&i| i >= self.config.vocab_size) {
            return Err(TransformerError::Tokenizer(format!(
                "id {bad} is outside vocab_size {}",
                self.config.vocab_size
            )));
        }
        Ok(())
    }

    /// Token + position embeddings for positions `start..start+seq`: `[batch, seq, d]`.
    pub fn embed(&self, ids: &[usize], batch: usize, seq: usize, start: usize) -> Result<Tensor> {
        let tok = self.tok_emb.forward_ids(ids, &[batch, seq])?;
        if self.config.position == PositionEncoding::Rotary {
            return Ok(tok);
        }
        let pos = self.pos_emb.narrow(0, start, seq)?;
        Ok(tok.add(&pos)?)
    }

    /// Final layer norm and output head: `[..., d] → [..., vocab]`.
    pub fn head(&self, h: &Tensor) -> Result<Tensor> {
        let h = self.ln_f.forward(h)?;
        Ok(match &self.lm_head {
            Some(head) => head.forward(&h)?,
            // Tied: the table as a head, in its format when no graph is recorded.
            None => self.tok_emb.as_head(&h)?,
        })
    }

    /// Logits `[batch, seq, vocab]` for a batch of equal-length sequences (row-major ids).
    pub fn forward_ids(&self, ids: &[usize], batch: usize, seq: usize) -> Result<Tensor> {
        Ok(self.forward_with_attention(ids, batch, seq)?.0)
    }

    /// Logits and every layer's attention probabilities `[batch, heads, seq, seq]`.
    pub fn forward_with_attention(&self, ids: &[usize], batch: usize, seq: usize) -> Result<(Tensor, Vec<Tensor>)> {
        self.forward_impl(ids, batch, seq, None)
    }

    /// Training forward: like [`Gpt::forward_ids`] plus residual dropout (`config.dropout`) with
    /// masks derived from `seed`, so sharded training stays reproducible.
    pub fn forward_train(&self, ids: &[usize], batch: usize, seq: usize, seed: u64) -> Result<Tensor> {
        let d = (self.config.dropout > 0.0).then_some(DropoutSeed { p: self.config.dropout, seed });
        Ok(self.forward_impl(ids, batch, seq, d)?.0)
    }

    fn forward_impl(
        &self,
        ids: &[usize],
        batch: usize,
        seq: usize,
        dropout: Option<DropoutSeed>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.check_input(ids, batch, seq)?;
        let mut x = tt_tensor::hook::layer_scope(|| "embed".into(), || self.embed(ids, batch, seq, 0))?;
        if let Some(d) = dropout {
            x = d.apply(&x, 0)?;
        }
        let mut atts = Vec::with_capacity(self.blocks.len());
        for (l, block) in self.blocks.iter().enumerate() {
            let (y, w) = tt_tensor::hook::layer_scope(
                || format!("blocks.{l}"),
                || block.forward_train(&x, dropout, 1 + l as u64),
            )?;
            x = y;
            atts.push(w);
        }
        Ok((tt_tensor::hook::layer_scope(|| "head".into(), || self.head(&x))?, atts))
    }

    /// Non-embedding parameter count (Kaplan et al.'s N).
    pub fn non_embedding_parameters(&self) -> usize {
        self.blocks.iter().map(|b| b.num_parameters()).sum::<usize>() + self.ln_f.num_parameters()
    }
}

impl Module for Gpt {
    /// Takes ids stored as f32, shape `[batch, seq]`.
    fn forward(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
        let s = x.shape();
        if s.len() != 2 {
            return Err(tt_tensor::TensorError::InvalidShape {
                op: "Gpt",
                shape: s,
                reason: "expected [batch, seq] ids".into(),
            });
        }
        let mut ids = Vec::with_capacity(x.numel());
        for v in x.to_vec() {
            if !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < self.config.vocab_size) {
                return Err(tt_tensor::TensorError::InvalidArgument {
                    op: "Gpt",
                    reason: format!("id {v} is not an integer in 0..{}", self.config.vocab_size),
                });
            }
            ids.push(v as usize);
        }
        self.forward_ids(&ids, s[0], s[1]).map_err(into_tensor_error)
    }
    /// Children's parameters, with the learned position table (owned by the model itself, not by
    /// a child layer) right after the token embedding.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> =
            self.children().into_iter().flat_map(|(name, child)| prefixed(&name, child.named_parameters())).collect();
        if self.config.position == PositionEncoding::Learned {
            let after_tok = v.iter().take_while(|(n, _)| n.starts_with("tok_emb.")).count();
            v.insert(after_tok, ("pos_emb.weight".into(), self.pos_emb.clone()));
        }
        v
    }
    fn kind(&self) -> &'static str {
        "Gpt"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut c: Vec<(String, &dyn Module)> = vec![("tok_emb".into(), &self.tok_emb)];
        for (i, b) in self.blocks.iter().enumerate() {
            c.push((format!("blocks.{i}"), b));
        }
        c.push(("ln_f".into(), &self.ln_f));
        if let Some(h) = &self.lm_head {
            c.push(("lm_head".into(), h));
        }
        c
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        let mut c: Vec<(String, &mut dyn Module)> = vec![("tok_emb".into(), &mut self.tok_emb)];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            c.push((format!("blocks.{i}"), b));
        }
        c.push(("ln_f".into(), &mut self.ln_f));
        if let Some(h) = &mut self.lm_head {
            c.push(("lm_head".into(), h));
        }
        c
    }
}
