//! KV-cached GPT inference: prefill the prompt in one batched pass, then decode one token per
//! step, computing Q/K/V only for the new token and attending over the cache. Both families of
//! the one model run here: GPT-2 blocks (LayerNorm, learned positions, GELU) and Llama blocks
//! (RMSNorm, rotary positions on Q and K, SwiGLU, grouped-query attention — the cache then holds
//! the K/V heads only).
//!
//! The whole forward pass is in `CachedGpt::run_spans`, readable top to bottom. The decoder
//! **shares** the model's weights: per linear map it holds the layer's own
//! [`Projection`] (an `Arc`, in whatever format was installed — dense f32 by default, sharing the
//! weight tensor) and bias tensor; norms and embeddings are the model's own tensors. Layer widths
//! come from the projections, so a block whose MLP was narrowed or whose heads were removed by
//! pruning just works (the cache holds each layer's own head count).
//!
//! All activations live in `Scratch` and are sized at construction for one token per sequence,
//! so decode steps allocate nothing; a longer prefill grows them once. Every op opens a profiler
//! scope and every block a layer scope, so tt-profile sees a decode step like a forward pass.

use std::sync::Arc;
use tt_tensor::kernels::RowFn;

use tt_tensor::hook::{layer_scope, OpInfo, OpScope};
use tt_tensor::kernels::{
    attention_head_with, rms_norm_row, silu, HeadsJob, PrefillHeadsJob, Q8Head, RopeTable, RowKernels, Rows,
};
use tt_tensor::nn::Linear;
use tt_tensor::projection::{Projection, Workspace};
use tt_tensor::Tensor;
use tt_transformer::generate::{generate_traced, GenerateConfig, NextTokenSource, Trace, WithoutCache};
use tt_transformer::model::Norm as ModelNorm;
use tt_transformer::{Gpt, PositionEncoding, TransformerError};

use crate::cache::{KvCache, KvStorage, OverflowPolicy};
use crate::KvError;

/// One linear map as the decoder runs it: the model layer's projection and bias, shared.
#[derive(Debug, Clone)]
struct Proj {
    p: Arc<dyn Projection>,
    bias: Option<Tensor>,
}

impl Proj {
    fn of(l: &Linear) -> Result<Proj, KvError> {
        Ok(Proj { p: l.projection()?, bias: l.bias.clone() })
    }
    /// (out, in)
    fn shape(&self) -> (usize, usize) {
        self.p.shape()
    }
    /// `y = x·Wᵀ + b` for `rows` rows, reported to the profiler as `linear`.
    fn run(&self, x: &[f32], rows: usize, y: &mut [f32], ws: &mut [u8]) {
        let (out_f, in_f) = self.p.shape();
        let _op = OpScope::begin("linear", || OpInfo {
            input_shapes: vec![vec![rows, in_f], vec![out_f, in_f]],
            flops: 2 * (rows * in_f * out_f) as u64,
            bytes: (4 * rows * (in_f + out_f) + self.p.storage_bytes()) as u64,
        });
        let bias = self.bias.as_ref().map(Tensor::data);
        // Tensor data is always standard layout (tt-tensor's invariant), so as_slice succeeds.
        let bias = bias.as_ref().map(|b| b.as_slice().expect("tensor data is standard layout"));
        self.p.forward_rows(&x[..rows * in_f], rows, bias, &mut y[..rows * out_f], ws);
    }

    /// [`Proj::run`] with `gelu` as the projection's epilogue (`Projection::forward_rows_gelu`):
    /// the MLP's `fc`, reported as one `linear+gelu` op.
    fn run_gelu(&self, x: &[f32], rows: usize, y: &mut [f32], ws: &mut [u8], gelu: RowFn) {
        let (out_f, in_f) = self.p.shape();
        let _op = OpScope::begin("linear+gelu", || OpInfo {
            input_shapes: vec![vec![rows, in_f], vec![out_f, in_f]],
            // GELU counted as elsewhere in this decoder: 10 FLOPs per element.
            flops: (2 * rows * in_f * out_f + 10 * rows * out_f) as u64,
            bytes: (4 * rows * (in_f + out_f) + self.p.storage_bytes()) as u64,
        });
        let bias = self.bias.as_ref().map(Tensor::data);
        let bias = bias.as_ref().map(|b| b.as_slice().expect("tensor data is standard layout"));
        self.p.forward_rows_gelu(&x[..rows * in_f], rows, bias, &mut y[..rows * out_f], ws, gelu);
    }
}

/// A norm's parameters, shared with the model: a layer norm (`beta` present) or an RMS norm.
#[derive(Debug, Clone)]
struct Norm {
    gamma: Tensor,
    beta: Option<Tensor>,
    eps: f32,
}

impl Norm {
    fn of(n: &ModelNorm) -> Norm {
        match n {
            ModelNorm::Layer(n) => Norm { gamma: n.gamma.clone(), beta: Some(n.beta.clone()), eps: n.eps },
            ModelNorm::Rms(n) => Norm { gamma: n.gamma.clone(), beta: None, eps: n.eps },
        }
    }
    /// Whether every parameter is `d` wide.
    fn is_of_width(&self, d: usize) -> bool {
        self.gamma.shape() == [d] && self.beta.as_ref().is_none_or(|b| b.shape() == [d])
    }
    /// Normalizes `rows` rows of width `d` from `x` into `out`.
    fn run(&self, k: &RowKernels, x: &[f32], rows: usize, d: usize, out: &mut [f32]) {
        let name = if self.beta.is_some() { "layer_norm" } else { "rms_norm" };
        let _op = OpScope::begin(name, || OpInfo {
            input_shapes: vec![vec![rows, d]],
            flops: (8 * rows * d) as u64,
            bytes: (4 * (2 * rows * d + 2 * d)) as u64,
        });
        let g = self.gamma.data();
        // Tensor data is always standard layout (tt-tensor's invariant): `as_slice` cannot fail.
        let g = g.as_slice().expect("standard layout");
        let Some(beta) = &self.beta else {
            for r in 0..rows {
                rms_norm_row(&x[r * d..(r + 1) * d], g, self.eps, &mut out[r * d..(r + 1) * d]);
            }
            return;
        };
        let b = beta.data();
        let b = b.as_slice().expect("standard layout");
        for r in 0..rows {
            (k.layer_norm)(&x[r * d..(r + 1) * d], g, b, self.eps, &mut out[r * d..(r + 1) * d]);
        }
    }
}

/// One transformer block's layers, in the order the forward pass uses them.
#[derive(Debug, Clone)]
struct DecoderBlock {
    ln1: Norm,
    qkv: Proj,
    attn_proj: Proj,
    n_heads: usize,
    /// K/V heads (`n_heads` unless grouped-query).
    n_kv_heads: usize,
    ln2: Norm,
    fc: Proj,
    /// SwiGLU's `w3` (Llama); `None`: GELU MLP.
    up: Option<Proj>,
    mlp_proj: Proj,
}

/// Widths the scratch buffers are sized by (the widest block's, for pruned models).
#[derive(Debug, Clone, Copy)]
struct Dims {
    d: usize,
    /// Q width: `n_heads · head_dim`.
    attn: usize,
    /// Fused Q/K/V width: `(n_heads + 2·n_kv_heads) · head_dim`.
    qkv: usize,
    hidden: usize,
    vocab: usize,
}

/// Reusable activations, `rows × width` each, and the projections' workspace.
#[derive(Debug, Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    hidden: Vec<f32>,
    /// SwiGLU's `up` branch.
    up: Vec<f32>,
    kbuf: Vec<f32>,
    vbuf: Vec<f32>,
    /// One head's keys and values dequantized from an int8 cache (prefill only).
    kdq: Vec<f32>,
    vdq: Vec<f32>,
    scores: Vec<f32>,
    logits: Vec<f32>,
    ws: Workspace,
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Scratch {
    /// Grows every buffer for `rows` rows and `queries` query rows per head; never shrinks.
    fn ensure(&mut self, rows: usize, logit_rows: usize, dims: Dims, up: bool, max_keys: usize, ws_bytes: usize) {
        let Dims { d, attn, qkv, hidden, vocab } = dims;
        grow(&mut self.x, rows * d);
        grow(&mut self.h, rows * d);
        grow(&mut self.qkv, rows * qkv);
        grow(&mut self.att, rows * attn);
        grow(&mut self.tmp, rows * d);
        grow(&mut self.hidden, rows * hidden);
        if up {
            grow(&mut self.up, rows * hidden);
        }
        grow(&mut self.kbuf, rows * attn);
        grow(&mut self.vbuf, rows * attn);
        grow(&mut self.scores, rows.max(1) * max_keys);
        grow(&mut self.logits, logit_rows * vocab);
        self.ws.ensure(ws_bytes);
    }
}

/// A GPT with a KV cache for a batch of sequences (slots), each at its own position.
pub struct CachedGpt {
    /// The token table as a projection (its format, or a dense view of the shared tensor): rows
    /// are looked up with `dense_row`, and a tied head multiplies by it.
    tok_emb: Arc<dyn Projection>,
    /// Learned or sinusoidal positions (`None` with rotary ones).
    pos_emb: Option<Tensor>,
    /// The model's rotary table (Llama), turning each new Q and K head to its position.
    rope: Option<Arc<RopeTable>>,
    blocks: Vec<DecoderBlock>,
    ln_f: Norm,
    /// The output head: `lm_head`'s projection, or the token embedding when weights are tied.
    head: Proj,
    dims: Dims,
    max_seq_len: usize,
    cache: KvCache,
    batch: usize,
    s: Scratch,
    /// (rows, logit rows) the scratch buffers are sized for.
    ensured: (usize, usize),
    /// Layer norm, GELU and one-query attention (see [`CachedGpt::set_row_kernels`]).
    kernels: RowKernels,
    /// The current step's spans, and [`CachedGpt::step`]'s ids laid end to end (kept, so
    /// steps allocate nothing).
    spans: Vec<Span>,
    step_ids: Vec<usize>,
}

impl CachedGpt {
    /// Shares the model's layers (no weight is copied) and preallocates a cache for `batch`
    /// sequences.
    ///
    /// # Errors
    /// A zero batch, a layer whose installed projection is stale, or layer shapes that do not
    /// chain (`d_model` in and out of every block, `(n_heads + 2·n_kv_heads)·head_dim` out of
    /// `qkv`, the MLP's `fc` (and `up`) out equal to its `proj` in). Blocks may differ in head
    /// count (pruned heads) but must agree on the head width (one cache row width).
    pub fn new(model: &Gpt, batch: usize, policy: OverflowPolicy) -> Result<CachedGpt, KvError> {
        CachedGpt::with_context(model, batch, policy, model.config.max_seq_len)
    }

    /// [`CachedGpt::new`] for sequences of at most `context` positions (at most the model's
    /// `max_seq_len`): the KV cache holds `context` positions — its memory is
    /// `2·layers·batch·heads·context·head_dim` values — and longer sequences are refused. What a
    /// server or a benchmark that generates a known length allocates, rather than the model's
    /// whole context.
    ///
    /// # Errors
    /// As [`CachedGpt::new`], and a `context` of 0 or past the model's `max_seq_len`.
    pub fn with_context(
        model: &Gpt,
        batch: usize,
        policy: OverflowPolicy,
        context: usize,
    ) -> Result<CachedGpt, KvError> {
        let c = &model.config;
        if context == 0 || context > c.max_seq_len {
            return Err(KvError::Input(format!("context {context} must be in 1..={}", c.max_seq_len)));
        }
        let d = c.d_model;
        let bad = |m: String| Err(KvError::Input(m));
        let tok = model.tok_emb.weight.shape();
        let positions = if c.position == PositionEncoding::Rotary { 0 } else { c.max_seq_len };
        if tok != [c.vocab_size, d] || model.pos_emb.shape() != [positions, d] {
            return bad(format!(
                "embeddings {tok:?} / {:?} do not match vocab {} × d_model {d}, context {}",
                model.pos_emb.shape(),
                c.vocab_size,
                c.max_seq_len
            ));
        }
        let mut blocks = Vec::with_capacity(model.blocks.len());
        let (mut attn, mut qkv_width, mut hidden, mut head_dim) = (0, 0, 0, None);
        let mut layer_heads = Vec::with_capacity(model.blocks.len());
        for (i, b) in model.blocks.iter().enumerate() {
            let blk = DecoderBlock {
                ln1: Norm::of(&b.ln1),
                qkv: Proj::of(&b.attn.qkv)?,
                attn_proj: Proj::of(&b.attn.proj)?,
                n_heads: b.attn.n_heads,
                n_kv_heads: b.attn.n_kv_heads,
                ln2: Norm::of(&b.ln2),
                fc: Proj::of(&b.mlp.fc)?,
                up: b.mlp.up.as_ref().map(Proj::of).transpose()?,
                mlp_proj: Proj::of(&b.mlp.proj)?,
            };
            let ((q3, q_in), (p_out, p_in)) = (blk.qkv.shape(), blk.attn_proj.shape());
            let ((f_out, f_in), (m_out, m_in)) = (blk.fc.shape(), blk.mlp_proj.shape());
            let (nh, nkv) = (blk.n_heads, blk.n_kv_heads);
            // Q is attn.proj's input width a; K and V split the rest evenly.
            let a = p_in;
            let kv = q3.saturating_sub(a) / 2;
            let heads_ok = nh > 0
                && nkv > 0
                && nh.is_multiple_of(nkv)
                && a > 0
                && a.is_multiple_of(nh)
                && q3 == a + 2 * kv
                && kv == nkv * (a / nh);
            let up_ok = blk.up.as_ref().is_none_or(|u| u.shape() == (f_out, d));
            if !heads_ok || !up_ok || q_in != d || p_out != d || f_in != d || m_out != d || m_in != f_out {
                return bad(format!(
                    "blocks.{i}: layer shapes do not chain (d_model {d}, {} heads): qkv {:?}, attn.proj {:?}, mlp.fc {:?}, mlp.proj {:?}",
                    blk.n_heads,
                    blk.qkv.shape(),
                    blk.attn_proj.shape(),
                    blk.fc.shape(),
                    blk.mlp_proj.shape()
                ));
            }
            let hd = a / blk.n_heads;
            if *head_dim.get_or_insert(hd) != hd {
                return bad(format!(
                    "blocks.{i} has heads of width {hd}, block 0 of width {head_dim:?}: one KV cache needs one head width"
                ));
            }
            layer_heads.push(nkv);
            if !(blk.ln1.is_of_width(d) && blk.ln2.is_of_width(d)) {
                return bad(format!("blocks.{i}: a norm is not of width d_model {d}"));
            }
            attn = attn.max(a);
            qkv_width = qkv_width.max(q3);
            hidden = hidden.max(f_out);
            blocks.push(blk);
        }
        let Some(head_dim) = head_dim else {
            return bad("the model has no blocks".into());
        };
        let head = match &model.lm_head {
            Some(h) => Proj::of(h)?,
            None => Proj { p: model.tok_emb.projection()?, bias: None },
        };
        if head.shape() != (c.vocab_size, d) {
            return bad(format!("lm_head {:?} is not (vocab {}, d_model {d})", head.shape(), c.vocab_size));
        }
        let rope = model.rope.clone();
        if let Some(r) = &rope {
            if r.head_dim() != head_dim || r.positions() < context {
                return bad(format!(
                    "the rotary table covers {} positions of heads {} wide; the model needs {context} of {head_dim}",
                    r.positions(),
                    r.head_dim()
                ));
            }
        }
        let ln_f = Norm::of(&model.ln_f);
        if !ln_f.is_of_width(d) {
            return bad(format!("ln_f is not of width d_model {d}"));
        }
        let cache = KvCache::with_layer_heads(&layer_heads, batch, context, head_dim, policy, KvStorage::F32)?;
        let mut engine = CachedGpt {
            tok_emb: model.tok_emb.projection()?,
            pos_emb: rope.is_none().then(|| model.pos_emb.clone()),
            rope,
            blocks,
            ln_f,
            head,
            dims: Dims { d, attn, qkv: qkv_width, hidden, vocab: c.vocab_size },
            max_seq_len: context,
            cache,
            batch,
            s: Scratch::default(),
            ensured: (0, 0),
            kernels: RowKernels::reference(),
            spans: Vec::with_capacity(batch),
            step_ids: Vec::with_capacity(batch),
        };
        engine.ensure_scratch(batch, batch);
        Ok(engine)
    }

    fn ensure_scratch(&mut self, rows: usize, logit_rows: usize) {
        if rows <= self.ensured.0 && logit_rows <= self.ensured.1 {
            return;
        }
        self.ensured = (rows.max(self.ensured.0), logit_rows.max(self.ensured.1));
        let (rows, logit_rows) = self.ensured;
        // The head runs on the logit rows only (a prefill's last positions): sized for all of
        // the chunk's rows, an int8 head's accumulators alone would be `rows · vocab · 4` bytes.
        let ws = self
            .blocks
            .iter()
            .flat_map(|b| [Some(&b.qkv), Some(&b.attn_proj), Some(&b.fc), b.up.as_ref(), Some(&b.mlp_proj)])
            .flatten()
            .map(|p| p.p.workspace_len(rows))
            .chain([self.head.p.workspace_len(logit_rows)])
            .max()
            .unwrap_or(0);
        let up = self.blocks.iter().any(|b| b.up.is_some());
        self.s.ensure(rows, logit_rows, self.dims, up, self.cache.capacity(), ws);
    }

    /// Switches the KV cache to `storage` (f32 or int8), emptying it; the shape and overflow
    /// policy stay. With int8, decode steps attend over codes and scales through
    /// `RowKernels::decode_attention_q8`; prefill dequantizes each head's rows first.
    ///
    /// # Errors
    /// As [`KvCache::with_storage`] (it cannot fail for a shape that was valid before).
    pub fn set_kv_storage(&mut self, storage: KvStorage) -> Result<(), KvError> {
        let s = self.cache.shape();
        self.cache = KvCache::with_layer_heads(
            self.cache.layer_heads(),
            s.batch,
            self.max_seq_len,
            s.head_dim,
            self.cache.policy(),
            storage,
        )?;
        if storage == KvStorage::Int8 {
            grow(&mut self.s.kdq, s.capacity * s.head_dim);
            grow(&mut self.s.vdq, s.capacity * s.head_dim);
        }
        Ok(())
    }

    /// Replaces the row kernels (layer norm, GELU, one-query attention) — e.g. tt-accel's fused
    /// SIMD set. Projections come from the model's layers; these are the rest of the loop.
    pub fn set_row_kernels(&mut self, kernels: RowKernels) {
        self.kernels = kernels;
    }

    /// The row kernels in use.
    pub fn row_kernels(&self) -> &RowKernels {
        &self.kernels
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn vocab_size(&self) -> usize {
        self.dims.vocab
    }
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }
    /// Storage format of every projection, `(name, format, bytes)`, in forward order.
    pub fn projection_formats(&self) -> Vec<(String, &'static str, usize)> {
        let mut v = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let up = b.up.as_ref().map(|u| ("mlp.up", u));
            let layers = [("attn.qkv", &b.qkv), ("attn.proj", &b.attn_proj), ("mlp.fc", &b.fc)]
                .into_iter()
                .chain(up)
                .chain([("mlp.proj", &b.mlp_proj)]);
            for (n, p) in layers {
                v.push((format!("blocks.{i}.{n}"), p.p.format(), p.p.storage_bytes()));
            }
        }
        v.push(("head".into(), self.head.p.format(), self.head.p.storage_bytes()));
        v
    }
    /// Starts a new generation (the cache's memory is reused).
    pub fn reset(&mut self) {
        self.cache.reset();
    }

    /// Forgets every position past `len` (see [`KvCache::truncate`]).
    pub fn truncate(&mut self, len: usize) -> Result<(), KvError> {
        Ok(self.cache.truncate(len)?)
    }

    /// Resets, then runs the prompts (`batch × n` ids, row-major) through one batched forward,
    /// filling the cache. Returns the logits of each sequence's last position, `[batch, vocab]`.
    pub fn prefill(&mut self, ids: &[usize], n: usize) -> Result<&[f32], KvError> {
        self.reset();
        self.forward(ids, n)
    }

    /// Appends one token per sequence and returns the next-token logits `[batch, vocab]`.
    pub fn decode_step(&mut self, tokens: &[usize]) -> Result<&[f32], KvError> {
        self.forward(tokens, 1)
    }

    /// Runs `n` new tokens per sequence through the model, appending their keys and values, and
    /// returns the logits of each sequence's last new position, `[batch, vocab]`. Each sequence
    /// continues from its own position (equal, unless slots were stepped apart with
    /// [`CachedGpt::step`]).
    pub fn forward(&mut self, ids: &[usize], n: usize) -> Result<&[f32], KvError> {
        self.forward_batch(ids, n, false)
    }

    /// Like [`CachedGpt::forward`], but returns the logits after **every** new position,
    /// `[batch, n, vocab]` (for perplexity).
    pub fn forward_all(&mut self, ids: &[usize], n: usize) -> Result<&[f32], KvError> {
        self.forward_batch(ids, n, true)
    }

    /// Continuous batching's step: runs each entry's new tokens in its own slot (batch row), each
    /// slot at its own position, in one forward pass — a joining request's whole prompt beside
    /// other requests' single decode tokens — and returns one logits row per entry, in entry
    /// order, `[entries, vocab]`. Slots not named are untouched. A row's result does not depend
    /// on which other rows share the step (every kernel works row by row).
    ///
    /// # Errors
    /// No entries, an entry with no ids, a slot out of range or named twice, an id outside the
    /// vocabulary, or a slot whose sequence would pass the context — all checked before anything
    /// runs; the cache's own errors.
    pub fn step(&mut self, entries: &[SlotTokens<'_>]) -> Result<&[f32], KvError> {
        let mut ids = std::mem::take(&mut self.step_ids);
        ids.clear();
        self.spans.clear();
        for e in entries {
            self.spans.push(Span { slot: e.slot, row0: ids.len(), n: e.ids.len() });
            ids.extend_from_slice(e.ids);
        }
        let r = self.run_spans(&ids, false).map(|l| l.len());
        self.step_ids = ids;
        let len = r?;
        Ok(&self.s.logits[..len])
    }

    /// Empties slot `slot` for a new sequence, keeping the other slots (see
    /// [`KvCache::reset_row`]).
    ///
    /// # Errors
    /// A slot out of range.
    pub fn reset_slot(&mut self, slot: usize) -> Result<(), KvError> {
        if slot >= self.batch {
            return Err(KvError::Input(format!("slot {slot} out of range ({} slots)", self.batch)));
        }
        self.cache.reset_row(slot);
        Ok(())
    }

    /// Absolute position of slot `slot`'s next token.
    ///
    /// # Errors
    /// A slot out of range.
    pub fn slot_position(&self, slot: usize) -> Result<usize, KvError> {
        if slot >= self.batch {
            return Err(KvError::Input(format!("slot {slot} out of range ({} slots)", self.batch)));
        }
        Ok(self.cache.row_position(slot))
    }

    /// Every sequence's `n` new tokens (`ids` row-major, `[batch, n]`) as one span per slot.
    fn forward_batch(&mut self, ids: &[usize], n: usize, all_logits: bool) -> Result<&[f32], KvError> {
        let b = self.batch;
        if n == 0 || ids.len() != b * n {
            return Err(KvError::Input(format!("{} ids do not form a [{b}, {n}] batch", ids.len())));
        }
        self.spans.clear();
        self.spans.extend((0..b).map(|slot| Span { slot, row0: slot * n, n }));
        self.run_spans(ids, all_logits)
    }

    /// Checks the spans in `self.spans` over `ids` before anything runs.
    fn check_spans(&self, ids: &[usize]) -> Result<(), KvError> {
        let (b, vocab) = (self.batch, self.dims.vocab);
        if self.spans.is_empty() {
            return Err(KvError::Input("a step needs at least one slot's tokens".into()));
        }
        for (i, sp) in self.spans.iter().enumerate() {
            if sp.slot >= b {
                return Err(KvError::Input(format!("slot {} out of range ({b} slots)", sp.slot)));
            }
            if sp.n == 0 {
                return Err(KvError::Input(format!("slot {} has no tokens to run", sp.slot)));
            }
            if self.spans[..i].iter().any(|o| o.slot == sp.slot) {
                return Err(KvError::Input(format!("slot {} appears twice in one step", sp.slot)));
            }
            let pos0 = self.cache.row_position(sp.slot);
            if pos0 + sp.n > self.max_seq_len {
                return Err(TransformerError::ContextOverflow {
                    position: pos0 + sp.n - 1,
                    max_seq_len: self.max_seq_len,
                }
                .into());
            }
        }
        if let Some(&bad) = ids.iter().find(|&&i| i >= vocab) {
            return Err(KvError::Input(format!("id {bad} is outside vocab_size {vocab}")));
        }
        Ok(())
    }

    /// The forward pass over the spans in `self.spans` (each slot's new tokens, `ids[row0..row0
    /// + n]`), top to bottom: embed → per block (attention, MLP) → final norm → head. Returns
    /// each span's last-position logits, or with `all_logits` every position's, in span order.
    fn run_spans(&mut self, ids: &[usize], all_logits: bool) -> Result<&[f32], KvError> {
        self.check_spans(ids)?;
        let vocab = self.dims.vocab;
        // A sliding window that would evict inside a multi-token chunk: feed the spans one token
        // at a time (column by column), so no query loses a key inside its window.
        let sliding = matches!(self.cache.policy(), OverflowPolicy::SlidingWindow(_));
        if sliding && self.spans.iter().any(|sp| sp.n > 1 && !self.cache.fits_row(sp.slot, sp.n)) {
            let spans = self.spans.clone();
            let longest = spans.iter().map(|sp| sp.n).max().unwrap_or(0);
            let mut per: Vec<Vec<f32>> = vec![Vec::new(); spans.len()];
            for t in 0..longest {
                let live: Vec<usize> = (0..spans.len()).filter(|&i| t < spans[i].n).collect();
                let col: Vec<usize> = live.iter().map(|&i| ids[spans[i].row0 + t]).collect();
                self.spans.clear();
                self.spans.extend(live.iter().enumerate().map(|(k, &i)| Span { slot: spans[i].slot, row0: k, n: 1 }));
                let l = self.run_spans(&col, false)?;
                for (k, &i) in live.iter().enumerate() {
                    if all_logits || t + 1 == spans[i].n {
                        per[i].extend_from_slice(&l[k * vocab..(k + 1) * vocab]);
                    }
                }
            }
            let all = per.concat();
            grow(&mut self.s.logits, all.len());
            self.s.logits[..all.len()].copy_from_slice(&all);
            return Ok(&self.s.logits[..all.len()]);
        }
        let rows: usize = self.spans.iter().map(|sp| sp.n).sum();
        let logit_rows = if all_logits { rows } else { self.spans.len() };
        self.ensure_scratch(rows, logit_rows);
        let d = self.dims.d;
        let CachedGpt { tok_emb, pos_emb, rope, blocks, ln_f, head, cache, s, kernels, spans, .. } = self;
        let (k, spans) = (&*kernels, &*spans);

        // Token + position embedding.
        layer_scope(
            || "embed".into(),
            || {
                let _op = OpScope::begin("embedding", || OpInfo {
                    input_shapes: vec![vec![rows]],
                    flops: (rows * d) as u64,
                    bytes: (4 * 3 * rows * d) as u64,
                });
                let pos = pos_emb.as_ref().map(Tensor::data);
                // Standard layout, as every tensor's data (see `Norm::run`).
                let pos = pos.as_ref().map(|p| p.as_slice().expect("standard layout"));
                for sp in spans {
                    let pos0 = cache.row_position(sp.slot);
                    for t in 0..sp.n {
                        let r = sp.row0 + t;
                        let xr = &mut s.x[r * d..(r + 1) * d];
                        tok_emb.dense_row(ids[r], xr);
                        if let Some(pos) = pos {
                            let p = pos0 + t;
                            for j in 0..d {
                                xr[j] += pos[p * d + j];
                            }
                        }
                    }
                }
            },
        );
        for (l, blk) in blocks.iter().enumerate() {
            layer_scope(
                || format!("blocks.{l}"),
                || -> Result<(), KvError> {
                    // Attention sub-block: x += proj(attn(ln1(x))).
                    blk.ln1.run(k, &s.x, rows, d, &mut s.h);
                    blk.qkv.run(&s.h, rows, &mut s.qkv, s.ws.bytes());
                    let heads =
                        Heads { q: blk.n_heads, kv: blk.n_kv_heads, dim: blk.attn_proj.shape().1 / blk.n_heads };
                    if let Some(rope) = rope {
                        rotate(rope, &mut s.qkv, heads, spans, cache);
                    }
                    attention(k, cache, l, heads, spans, s)?;
                    blk.attn_proj.run(&s.att, rows, &mut s.tmp, s.ws.bytes());
                    add_residual(&mut s.x[..rows * d], &s.tmp[..rows * d]);
                    // MLP sub-block: x += proj(gelu(fc(ln2(x)))), GELU as fc's epilogue, or
                    // x += proj(silu(fc(h)) ⊙ up(h)) with h = ln2(x) (SwiGLU).
                    blk.ln2.run(k, &s.x, rows, d, &mut s.h);
                    match &blk.up {
                        None => blk.fc.run_gelu(&s.h, rows, &mut s.hidden, s.ws.bytes(), k.gelu),
                        Some(up) => {
                            blk.fc.run(&s.h, rows, &mut s.hidden, s.ws.bytes());
                            up.run(&s.h, rows, &mut s.up, s.ws.bytes());
                            swiglu(&mut s.hidden[..rows * up.shape().0], &s.up[..rows * up.shape().0]);
                        }
                    }
                    blk.mlp_proj.run(&s.hidden, rows, &mut s.tmp, s.ws.bytes());
                    add_residual(&mut s.x[..rows * d], &s.tmp[..rows * d]);
                    Ok(())
                },
            )?;
        }
        for sp in spans {
            cache.advance_row(sp.slot, sp.n)?;
        }
        // Final norm and head: for each span's last position, or for every position.
        layer_scope(
            || "head".into(),
            || {
                if all_logits {
                    ln_f.run(k, &s.x, rows, d, &mut s.h);
                    head.run(&s.h, rows, &mut s.logits, s.ws.bytes());
                } else {
                    for (e, sp) in spans.iter().enumerate() {
                        let r = sp.row0 + sp.n - 1;
                        s.tmp[e * d..(e + 1) * d].copy_from_slice(&s.x[r * d..(r + 1) * d]);
                    }
                    ln_f.run(k, &s.tmp, logit_rows, d, &mut s.h);
                    head.run(&s.h, logit_rows, &mut s.logits, s.ws.bytes());
                }
            },
        );
        Ok(&s.logits[..logit_rows * vocab])
    }
}

/// One slot's new tokens in a [`CachedGpt::step`].
#[derive(Debug, Clone, Copy)]
pub struct SlotTokens<'a> {
    /// The batch row (slot) whose sequence they continue.
    pub slot: usize,
    pub ids: &'a [usize],
}

/// Where one slot's new tokens sit in a forward pass: rows `row0..row0 + n` of the activations.
#[derive(Debug, Clone, Copy)]
struct Span {
    slot: usize,
    row0: usize,
    n: usize,
}

/// `x += t`, reported as `add`.
fn add_residual(x: &mut [f32], t: &[f32]) {
    let _op = OpScope::begin("add", || OpInfo {
        input_shapes: vec![vec![x.len()], vec![t.len()]],
        flops: x.len() as u64,
        bytes: (4 * 3 * x.len()) as u64,
    });
    x.iter_mut().zip(t).for_each(|(x, t)| *x += t);
}

/// `x ← silu(x) ⊙ u`, element by element in llama2.c's order, reported as `swiglu`.
fn swiglu(x: &mut [f32], u: &[f32]) {
    let _op = OpScope::begin("swiglu", || OpInfo {
        input_shapes: vec![vec![x.len()], vec![u.len()]],
        flops: 6 * x.len() as u64,
        bytes: (4 * 3 * x.len()) as u64,
    });
    for (x, &u) in x.iter_mut().zip(u) {
        *x = silu(*x) * u;
    }
}

/// One block's head layout: query heads, K/V heads, head width.
#[derive(Debug, Clone, Copy)]
struct Heads {
    q: usize,
    kv: usize,
    dim: usize,
}

impl Heads {
    /// Q width.
    fn q_width(self) -> usize {
        self.q * self.dim
    }
    /// K (and V) width.
    fn kv_width(self) -> usize {
        self.kv * self.dim
    }
    /// One row of the fused Q/K/V.
    fn row(self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }
}

/// Turns every new row's query and key heads to its position (its slot's next position plus its
/// place in the span), reported as `rope`.
fn rotate(rope: &RopeTable, qkv: &mut [f32], h: Heads, spans: &[Span], cache: &KvCache) {
    let rows: usize = spans.iter().map(|sp| sp.n).sum();
    let _op = OpScope::begin("rope", || OpInfo {
        input_shapes: vec![vec![rows, h.row()]],
        flops: (3 * rows * (h.q_width() + h.kv_width())) as u64,
        bytes: (4 * 2 * rows * (h.q_width() + h.kv_width())) as u64,
    });
    for sp in spans {
        let pos0 = cache.row_position(sp.slot);
        for t in 0..sp.n {
            let r = sp.row0 + t;
            let row = &mut qkv[r * h.row()..r * h.row() + h.q_width() + h.kv_width()];
            for head in row.chunks_exact_mut(h.dim) {
                rope.rotate(head, pos0 + t, false);
            }
        }
    }
}

/// Appends each span's keys and values to its slot in layer `l` of the cache, then runs every
/// (span, query head) of its new queries over its slot's cached positions, writing `s.att`
/// (`rows × q width`). Query head `j` reads K/V head `j / (q / kv)`.
fn attention(
    k: &RowKernels,
    cache: &mut KvCache,
    l: usize,
    h: Heads,
    spans: &[Span],
    s: &mut Scratch,
) -> Result<(), KvError> {
    let (hd, (a, kvw), stride) = (h.dim, (h.q_width(), h.kv_width()), h.row());
    let group = h.q / h.kv;
    let cap = cache.capacity();
    let _op = OpScope::begin("attention", || {
        let rows: usize = spans.iter().map(|sp| sp.n).sum();
        // Slots each span's queries see after this step, and query-slot pairs.
        let visible = |sp: &Span| (cache.row_len(sp.slot) + sp.n).min(cap);
        let pairs: usize = spans.iter().map(|sp| sp.n * visible(sp)).sum();
        let kv_rows: usize = spans.iter().map(visible).sum();
        OpInfo {
            input_shapes: vec![vec![rows, stride]],
            // Scores and P·V over every visible slot (4·hd per score) plus the softmax.
            flops: ((4 * hd + 5) * h.q * pairs) as u64,
            bytes: (4 * rows * (stride + a) + 2 * h.kv * kv_rows * cache.row_bytes()) as u64,
        }
    });
    // Gather each span's K and V into the cache's [kv head, n, head_dim] order and append them.
    for sp in spans {
        let (kb, vb) =
            (&mut s.kbuf[sp.row0 * kvw..(sp.row0 + sp.n) * kvw], &mut s.vbuf[sp.row0 * kvw..(sp.row0 + sp.n) * kvw]);
        for t in 0..sp.n {
            let q = &s.qkv[(sp.row0 + t) * stride..(sp.row0 + t + 1) * stride];
            for j in 0..h.kv {
                let dst = (j * sp.n + t) * hd;
                kb[dst..dst + hd].copy_from_slice(&q[a + j * hd..a + (j + 1) * hd]);
                vb[dst..dst + hd].copy_from_slice(&q[a + kvw + j * hd..a + kvw + (j + 1) * hd]);
            }
        }
        cache.append_row(l, sp.slot, kb, vb, sp.n)?;
    }
    let scale = 1.0 / (hd as f32).sqrt();
    if cache.storage() == KvStorage::Int8 {
        return attention_q8(k, cache, h, l, spans, scale, s);
    }
    // The all-heads kernels take one K/V head per query head.
    let shared = group != 1;
    for sp in spans {
        let (n, r0) = (sp.n, sp.row0);
        if let (1, Some(all_heads), false) = (n, k.decode_attention_heads, shared) {
            // A decode step with a kernel that takes every head at once (e.g. split across cores).
            let r = cache.heads(l, sp.slot)?;
            let job = HeadsJob {
                q: &s.qkv[r0 * stride..r0 * stride + a],
                keys: r.keys,
                values: r.values,
                heads: h.q,
                head_dim: hd,
                head_stride: r.head_stride,
                slots: r.slots,
                scale,
            };
            all_heads(&job, &mut s.att[r0 * a..(r0 + 1) * a]);
            continue;
        }
        if let (true, Some(all_heads), false) = (n > 1, k.prefill_attention_heads, shared) {
            // A prefill chunk with a kernel that takes every head at once (e.g. split across cores).
            let r = cache.heads(l, sp.slot)?;
            let job = PrefillHeadsJob {
                q: &s.qkv[r0 * stride..(r0 + n) * stride],
                q_stride: stride,
                rows: n,
                keys: r.keys,
                values: r.values,
                heads: h.q,
                head_dim: hd,
                head_stride: r.head_stride,
                slots: r.slots,
                scale,
            };
            all_heads(&job, &mut s.att[r0 * a..(r0 + n) * a], a);
            continue;
        }
        for qh in 0..h.q {
            let (keys, vals) = (cache.keys(l, sp.slot, qh / group)?, cache.values(l, sp.slot, qh / group)?);
            let slots = keys.len() / hd;
            let q0 = r0 * stride + qh * hd;
            let out = &mut s.att[r0 * a + qh * hd..];
            if n == 1 {
                // A decode step: one query per head, the engine's row kernel.
                (k.decode_attention)(
                    &s.qkv[q0..q0 + hd],
                    keys,
                    vals,
                    hd,
                    scale,
                    &mut s.scores[..slots],
                    &mut out[..hd],
                );
                continue;
            }
            let q = Rows { data: &s.qkv[q0..], rows: n, cols: hd, stride };
            let kr = Rows { data: keys, rows: slots, cols: hd, stride: hd };
            let v = Rows { data: vals, rows: slots, cols: hd, stride: hd };
            attention_head_with(q, kr, v, scale, &mut s.scores, out, a, &k.softmax);
        }
    }
    Ok(())
}

/// [`attention`] over an int8 cache (the spans are already appended): decode steps run the row
/// kernel on codes and scales; a prefill dequantizes each head's rows into scratch and runs the
/// f32 attention kernel, so both see exactly the cached (quantized) keys and values.
fn attention_q8(
    k: &RowKernels,
    cache: &KvCache,
    h: Heads,
    l: usize,
    spans: &[Span],
    scale: f32,
    s: &mut Scratch,
) -> Result<(), KvError> {
    let (hd, a, stride, group) = (h.dim, h.q_width(), h.row(), h.q / h.kv);
    for sp in spans {
        let (n, r0) = (sp.n, sp.row0);
        for qh in 0..h.q {
            let (kq, vq) = (cache.keys_q8(l, sp.slot, qh / group)?, cache.values_q8(l, sp.slot, qh / group)?);
            let slots = kq.scales.len();
            let q0 = r0 * stride + qh * hd;
            let out = &mut s.att[r0 * a + qh * hd..];
            if n == 1 {
                let kv = Q8Head { keys: kq.codes, key_scales: kq.scales, values: vq.codes, value_scales: vq.scales };
                (k.decode_attention_q8)(&s.qkv[q0..q0 + hd], &kv, scale, &mut s.scores[..slots], &mut out[..hd]);
                continue;
            }
            for (rows, dq) in [(kq, &mut s.kdq), (vq, &mut s.vdq)] {
                for (j, &d) in rows.scales.iter().enumerate() {
                    for (x, &c) in dq[j * hd..(j + 1) * hd].iter_mut().zip(&rows.codes[j * hd..(j + 1) * hd]) {
                        *x = d * c as f32;
                    }
                }
            }
            let q = Rows { data: &s.qkv[q0..], rows: n, cols: hd, stride };
            let kr = Rows { data: &s.kdq[..slots * hd], rows: slots, cols: hd, stride: hd };
            let v = Rows { data: &s.vdq[..slots * hd], rows: slots, cols: hd, stride: hd };
            attention_head_with(q, kr, v, scale, &mut s.scores, out, a, &k.softmax);
        }
    }
    Ok(())
}

fn engine_error(e: KvError) -> TransformerError {
    match e {
        KvError::Model(t) => t,
        other => TransformerError::Engine(Box::new(other)),
    }
}

/// The engine scores its batch of sequences for generation and evaluation (exact match,
/// perplexity) with its own weights and kernels.
impl NextTokenSource for CachedGpt {
    fn vocab_size(&self) -> usize {
        self.dims.vocab
    }
    fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }
    fn batch(&self) -> usize {
        self.batch
    }
    fn reset(&mut self) {
        self.cache.reset();
    }
    fn append(&mut self, ids: &[usize]) -> tt_transformer::Result<&[f32]> {
        let n = ids.len() / self.batch;
        self.forward(ids, n).map_err(engine_error)
    }
    fn append_all(&mut self, ids: &[usize], out: &mut Vec<f32>) -> tt_transformer::Result<()> {
        let n = ids.len() / self.batch;
        let l = self.forward_all(ids, n).map_err(engine_error)?;
        out.clear();
        out.extend_from_slice(l);
        Ok(())
    }
}

/// The engine's own error back from the generation loop (which carries it boxed).
fn from_engine(e: TransformerError) -> KvError {
    match e {
        TransformerError::Engine(b) => match b.downcast::<KvError>() {
            Ok(k) => *k,
            Err(b) => KvError::Model(TransformerError::Engine(b)),
        },
        other => KvError::Model(other),
    }
}

/// Generation with the cache: one prefill, then one decode step per token, by the workspace's
/// one generation loop (`tt_transformer::generate::generate_traced`), so the tokens equal
/// `generate_batch`'s for the same logits. `prompts` are one per batch row, of equal length.
///
/// # Errors
/// As `generate_traced`; the engine's errors as themselves.
pub fn generate_cached(engine: &mut CachedGpt, prompts: &[Vec<usize>], cfg: &GenerateConfig) -> Result<Trace, KvError> {
    let rows: Vec<&[usize]> = prompts.iter().map(Vec::as_slice).collect();
    generate_traced(engine, &rows, cfg, &mut |_| {}).map_err(from_engine)
}

/// The baseline: the same engine and kernels, but every step resets the cache and re-runs the
/// whole sequence so far (what generation costs without a cache).
///
/// # Errors
/// As [`generate_cached`].
pub fn generate_uncached(
    engine: &mut CachedGpt,
    prompts: &[Vec<usize>],
    cfg: &GenerateConfig,
) -> Result<Trace, KvError> {
    let rows: Vec<&[usize]> = prompts.iter().map(Vec::as_slice).collect();
    generate_traced(&mut WithoutCache::new(engine), &rows, cfg, &mut |_| {}).map_err(from_engine)
}
