//! The family-neutral form of a Llama checkpoint: every loader (llama2.c, Hugging Face) produces a
//! [`LlamaWeights`], and one function turns it into the model. Matrices are `[out, in]` row-major
//! (PyTorch's `nn.Linear` layout, which both formats store).

pub use tt_transformer::model::RopePairs;

/// A Llama model's hyper-parameters, as a checkpoint states them.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaParams {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub rope_pairs: RopePairs,
    /// The output head is the token table.
    pub tied: bool,
}

/// One weight matrix `[rows, cols]`, as the file holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Matrix {
    F32 {
        rows: usize,
        cols: usize,
        values: Vec<f32>,
    },
    /// Symmetric int8 in groups of `group` along each row (llama2.c's Q8_0): `codes` row-major,
    /// `scales[r·⌈cols/group⌉ + g]`; value = code · scale.
    Q8 {
        rows: usize,
        cols: usize,
        group: usize,
        codes: Vec<i8>,
        scales: Vec<f32>,
    },
}

impl Matrix {
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Matrix::F32 { rows, cols, .. } | Matrix::Q8 { rows, cols, .. } => (*rows, *cols),
        }
    }
}

/// One transformer layer's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// RMSNorm before attention, `[dim]`.
    pub attn_norm: Vec<f32>,
    /// `[n_heads·head_dim, dim]`, `[n_kv_heads·head_dim, dim]` twice, `[dim, n_heads·head_dim]`.
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    /// RMSNorm before the MLP, `[dim]`.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU: `w2(silu(w1·x) ⊙ w3·x)`; `w1`, `w3` `[hidden, dim]`, `w2` `[dim, hidden]`.
    pub w1: Matrix,
    pub w2: Matrix,
    pub w3: Matrix,
}

/// A whole Llama checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaWeights {
    pub params: LlamaParams,
    /// `[vocab, dim]`.
    pub tok_emb: Matrix,
    pub layers: Vec<LayerWeights>,
    /// `[dim]`.
    pub final_norm: Vec<f32>,
    /// `[vocab, dim]`, `None` when tied.
    pub lm_head: Option<Matrix>,
}

impl LlamaParams {
    /// A head's width, `dim / n_heads`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads.max(1)
    }

    /// The width of a layer's keys (and values), `n_kv_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// The shapes `(rows, cols)` of a layer's matrices, in [`LAYER_MATRICES`]' order.
    pub fn layer_shapes(&self) -> [(usize, usize); 7] {
        let (q, kv) = (self.n_heads * self.head_dim(), self.kv_dim());
        let (dim, hidden) = (self.dim, self.hidden_dim);
        [(q, dim), (kv, dim), (kv, dim), (dim, q), (hidden, dim), (dim, hidden), (hidden, dim)]
    }

    /// Checks the relations a Llama model needs between its sizes: none zero, heads dividing
    /// `dim`, key/value heads dividing the query heads, an even head width (RoPE rotates pairs).
    ///
    /// # Errors
    ///
    /// The first relation that fails, naming the fields.
    pub fn check(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("dim", self.dim),
            ("hidden_dim", self.hidden_dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} is 0"));
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return Err(format!("n_heads {} does not divide dim {}", self.n_heads, self.dim));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!("n_kv_heads {} does not divide n_heads {}", self.n_kv_heads, self.n_heads));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!("head size dim/n_heads = {} is odd (RoPE rotates pairs)", self.head_dim()));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(format!("norm_eps {} is not a positive number", self.norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta {} is not a positive number", self.rope_theta));
        }
        Ok(())
    }
}

/// A layer's matrices by name (llama2.c's `export.py` names: `layers.{l}.` + name), in the order
/// both llama2.c formats store them and [`LayerWeights::matrices`] lists them.
pub const LAYER_MATRICES: [&str; 7] = [
    "attention.wq",
    "attention.wk",
    "attention.wv",
    "attention.wo",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
];

impl LayerWeights {
    /// The layer's matrices in [`LAYER_MATRICES`]' order.
    pub fn matrices(&self) -> [&Matrix; 7] {
        [&self.wq, &self.wk, &self.wv, &self.wo, &self.w1, &self.w2, &self.w3]
    }
}

impl Matrix {
    /// `rows · cols` values, as f32 or as int8 codes with `rows · ⌈cols/group⌉` scales: whether
    /// the storage holds exactly that.
    fn check_len(&self) -> std::result::Result<(), String> {
        match self {
            Matrix::F32 { rows, cols, values } => {
                if values.len() != rows * cols {
                    return Err(format!("{} values for a {rows}×{cols} matrix", values.len()));
                }
            }
            Matrix::Q8 { rows, cols, group, codes, scales } => {
                if *group == 0 {
                    return Err("group size 0".into());
                }
                if codes.len() != rows * cols || scales.len() != rows * cols.div_ceil(*group) {
                    return Err(format!(
                        "{} codes and {} scales for a {rows}×{cols} matrix in groups of {group}",
                        codes.len(),
                        scales.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl LlamaWeights {
    /// Checks every tensor's shape against [`LlamaWeights::params`] (and the params themselves,
    /// [`LlamaParams::check`]), and that `lm_head` is present exactly when the head is untied.
    ///
    /// # Errors
    ///
    /// The first tensor whose shape or storage is wrong, by name (`layers.1.attention.wk`).
    pub fn check_shapes(&self) -> std::result::Result<(), String> {
        let p = &self.params;
        p.check()?;
        let vector = |name: &str, v: &[f32]| {
            if v.len() == p.dim {
                Ok(())
            } else {
                Err(format!("{name}: {} values, dim is {}", v.len(), p.dim))
            }
        };
        let matrix = |name: &str, m: &Matrix, shape: (usize, usize)| {
            if m.shape() != shape {
                return Err(format!("{name}: shape {:?}, expected {shape:?}", m.shape()));
            }
            m.check_len().map_err(|e| format!("{name}: {e}"))
        };
        matrix("tok_embeddings", &self.tok_emb, (p.vocab_size, p.dim))?;
        if self.layers.len() != p.n_layers {
            return Err(format!("{} layers, n_layers is {}", self.layers.len(), p.n_layers));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            vector(&format!("layers.{l}.attention_norm"), &layer.attn_norm)?;
            vector(&format!("layers.{l}.ffn_norm"), &layer.ffn_norm)?;
            for ((name, m), shape) in LAYER_MATRICES.into_iter().zip(layer.matrices()).zip(p.layer_shapes()) {
                matrix(&format!("layers.{l}.{name}"), m, shape)?;
            }
        }
        vector("norm", &self.final_norm)?;
        match (&self.lm_head, p.tied) {
            (None, true) => Ok(()),
            (Some(head), false) => matrix("output", head, (p.vocab_size, p.dim)),
            (Some(_), true) => Err("output: present, but the head is tied to the token table".into()),
            (None, false) => Err("output: missing, and the head is not tied".into()),
        }
    }

    /// A model of `params` with seeded random weights: every matrix entry uniform with standard
    /// deviation `std` (uniform, not normal, so the values are exact f32 arithmetic on ChaCha8's
    /// output and a checkpoint written from them has the same bytes on every platform), every
    /// norm weight uniform in `[0.5, 1.5)`. Drawn in the order token table; each layer's attention
    /// norm, wq, wk, wv, wo, MLP norm, w1, w2, w3; final norm; output head (when untied).
    ///
    /// # Errors
    ///
    /// `params` fail [`LlamaParams::check`], or `std` is negative or not finite.
    pub fn random(params: LlamaParams, seed: u64, std: f32) -> std::result::Result<LlamaWeights, String> {
        use rand::SeedableRng;
        params.check()?;
        if !(std.is_finite() && std >= 0.0) {
            return Err(format!("std {std} is not a non-negative number"));
        }
        let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // U(-a, a) has standard deviation a/√3.
        let half_width = std * 3f32.sqrt();
        let matrix = |rng: &mut rand_chacha::ChaCha8Rng, rows: usize, cols: usize| Matrix::F32 {
            rows,
            cols,
            values: uniform(rng, rows * cols, -half_width, 2.0 * half_width),
        };
        let p = &params;
        let [q, kv, _, o, up, down, _] = p.layer_shapes();
        let tok_emb = matrix(rng, p.vocab_size, p.dim);
        let layers = (0..p.n_layers)
            .map(|_| LayerWeights {
                attn_norm: uniform(rng, p.dim, 0.5, 1.0),
                wq: matrix(rng, q.0, q.1),
                wk: matrix(rng, kv.0, kv.1),
                wv: matrix(rng, kv.0, kv.1),
                wo: matrix(rng, o.0, o.1),
                ffn_norm: uniform(rng, p.dim, 0.5, 1.0),
                w1: matrix(rng, up.0, up.1),
                w2: matrix(rng, down.0, down.1),
                w3: matrix(rng, up.0, up.1),
            })
            .collect();
        let final_norm = uniform(rng, p.dim, 0.5, 1.0);
        let lm_head = (!p.tied).then(|| matrix(rng, p.vocab_size, p.dim));
        Ok(LlamaWeights { params, tok_emb, layers, final_norm, lm_head })
    }
}

/// `n` values uniform in `[low, low + width)`.
fn uniform(rng: &mut rand_chacha::ChaCha8Rng, n: usize, low: f32, width: f32) -> Vec<f32> {
    use rand::Rng;
    (0..n).map(|_| low + rng.random::<f32>() * width).collect()
}
