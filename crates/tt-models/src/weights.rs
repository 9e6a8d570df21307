//! The family-neutral form of a Llama checkpoint: every loader (llama2.c, Hugging Face) produces a
//! [`LlamaWeights`], and one function turns it into the model. Matrices are `[out, in]` row-major
//! (PyTorch's `nn.Linear` layout, which both formats store).

/// Which pairs of a head's dimensions rotary embeddings rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairs {
    /// `(2i, 2i+1)`: llama2.c and Meta's original checkpoints.
    Interleaved,
    /// `(i, i + head_dim/2)`: Hugging Face's `LlamaForCausalLM` (its q/k rows are permuted to it).
    HalfSplit,
}

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
