//! Analytic FLOP counts (2 FLOPs per multiply-accumulate; MACs reported alongside).
//!
//! Conventions (`../shared/reference/semantics.md` §1): bias adds are not counted; LayerNorm is 5
//! ops per element; GELU 1 per element (DeepSpeed); softmax 5 per element; residual adds 1 per
//! element; embedding lookups 0. Attention is given twice: **computed** (the full T×T square, as
//! the kernels do and as `torch.utils.flop_counter` counts) and **useful** (only the causal
//! lower triangle, `T(T+1)/2` query–key pairs), which is what Kaplan et al.'s formula assumes.

use serde::Serialize;
use tt_transformer::GptConfig;

/// `[rows, in] · Wᵀ` with `W` `[out, in]`.
pub fn linear(rows: usize, in_f: usize, out_f: usize) -> u64 {
    2 * (rows * in_f * out_f) as u64
}

/// Conv2d: `2·B·C_out·H_out·W_out·(C_in/groups)·k_h·k_w`, `H_out = ⌊(H + 2p − k)/s⌋ + 1`.
pub fn conv2d(
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> u64 {
    let ho = (h + 2 * padding - k) / stride + 1;
    let wo = (w + 2 * padding - k) / stride + 1;
    2 * (batch * c_out * ho * wo * c_in * k * k) as u64
}

/// `QKᵀ` plus `A·V` for `pairs` query–key pairs per (batch, head).
fn attention_pairs(batch: usize, heads: usize, pairs: usize, head_dim: usize) -> u64 {
    2 * 2 * (batch * heads * pairs * head_dim) as u64
}

/// One row of a FLOP table.
#[derive(Debug, Clone, Serialize)]
pub struct FlopRow {
    pub part: String,
    pub flops: u64,
    pub macs: u64,
}

fn row(part: &str, flops: u64, is_mac: bool) -> FlopRow {
    FlopRow { part: part.into(), flops, macs: if is_mac { flops / 2 } else { 0 } }
}

/// FLOPs of one GPT forward over `batch × seq` tokens, by part. `causal_useful` selects the
/// attention convention (see the module docs).
pub fn gpt_forward(cfg: &GptConfig, batch: usize, seq: usize, causal_useful: bool) -> Vec<FlopRow> {
    let (d, l, h, v) = (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.vocab_size);
    let hidden = cfg.mlp_ratio * d;
    let rows = batch * seq;
    let pairs = if causal_useful { seq * (seq + 1) / 2 } else { seq * seq };
    let attention = attention_pairs(batch, h, pairs, d / h);
    let elem = (rows * d) as u64;
    vec![
        row("attention projections (qkv, out)", l as u64 * (linear(rows, d, 3 * d) + linear(rows, d, d)), true),
        row("mlp (fc, proj)", l as u64 * (linear(rows, d, hidden) + linear(rows, hidden, d)), true),
        row(
            if causal_useful { "attention QKᵀ + A·V (causal)" } else { "attention QKᵀ + A·V (full square)" },
            l as u64 * attention,
            true,
        ),
        row("attention softmax", l as u64 * 5 * (batch * h * seq * seq) as u64, false),
        row("layer norms", 5 * elem * (2 * l + 1) as u64, false),
        row("gelu", l as u64 * (rows * hidden) as u64, false),
        row("residual + position adds", elem * (2 * l + 1) as u64, false),
        row("lm head", linear(rows, d, v), true),
    ]
}

/// Kaplan et al. (2020): forward ≈ `2N + 2·n_layer·n_ctx·d_model` FLOPs per token, with
/// `N = 12·n_layer·d_model²` non-embedding parameters (for d_attn = d_model, d_ff = 4·d_model).
pub fn kaplan_forward_per_token(cfg: &GptConfig, n_ctx: usize) -> u64 {
    let (d, l) = (cfg.d_model as u64, cfg.n_layers as u64);
    2 * 12 * l * d * d + 2 * l * n_ctx as u64 * d
}

pub fn total(rows: &[FlopRow]) -> u64 {
    rows.iter().map(|r| r.flops).sum()
}
