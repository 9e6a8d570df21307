//! Analytic FLOP counts (2 FLOPs per multiply-accumulate; MACs reported alongside).
//!
//! Conventions (`../shared/reference/semantics.md` §1): bias adds are not counted; LayerNorm is 5
//! ops per element; GELU 1 per element (DeepSpeed); softmax 5 per element; residual adds 1 per
//! element; embedding lookups 0. Attention is given twice: **computed** (the full T×T square, as
//! the kernels do and as `torch.utils.flop_counter` counts) and **useful** (only the causal
//! lower triangle, `T(T+1)/2` query–key pairs), which is what Kaplan et al.'s formula assumes.

use serde::Serialize;
use tt_tensor::kernels::conv_out_size;
use tt_tensor::{Result, TensorError};
use tt_transformer::GptConfig;

fn overflow(op: &'static str, what: &str) -> TensorError {
    TensorError::InvalidArgument { op, reason: format!("{what} overflows u64") }
}

/// Product in u64, or an error naming `op` and `what` on overflow (never wraps).
fn prod(op: &'static str, what: &str, xs: &[u64]) -> Result<u64> {
    xs.iter().try_fold(1u64, |acc, &x| acc.checked_mul(x)).ok_or_else(|| overflow(op, what))
}

/// Sum in u64, or an error naming `op` and `what` on overflow.
fn sum(op: &'static str, what: &str, xs: &[u64]) -> Result<u64> {
    xs.iter().try_fold(0u64, |acc, &x| acc.checked_add(x)).ok_or_else(|| overflow(op, what))
}

/// `[rows, in] · Wᵀ` with `W` `[out, in]`.
///
/// # Errors
/// If the count overflows u64.
pub fn linear(rows: usize, in_f: usize, out_f: usize) -> Result<u64> {
    prod("flops::linear", "2·rows·in·out", &[2, rows as u64, in_f as u64, out_f as u64])
}

/// Conv2d: `2·B·C_out·H_out·W_out·(C_in/groups)·k_h·k_w`, `H_out = ⌊(H + 2p − k)/s⌋ + 1`.
///
/// # Errors
/// `k` or `stride` of 0, a kernel larger than the padded input (or a padded size that
/// overflows), or a count that overflows u64.
pub fn conv2d(
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<u64> {
    const OP: &str = "flops::conv2d";
    let bad = |reason: String| TensorError::InvalidArgument { op: OP, reason };
    if k == 0 {
        return Err(bad("kernel 0 must be at least 1".into()));
    }
    if stride == 0 {
        return Err(bad("stride 0 must be at least 1".into()));
    }
    let (Some(ho), Some(wo)) = (conv_out_size(h, k, stride, padding), conv_out_size(w, k, stride, padding)) else {
        return Err(bad(format!("kernel {k} with padding {padding} does not fit a {h}x{w} input")));
    };
    let dims = [2, batch, c_out, ho, wo, c_in, k, k].map(|x| x as u64);
    prod(OP, "2·B·C_out·H_out·W_out·C_in·k·k", &dims)
}

/// `QKᵀ` plus `A·V` for `pairs` query–key pairs per (batch, head).
fn attention_pairs(batch: u64, heads: u64, pairs: u64, head_dim: u64) -> Result<u64> {
    prod("flops::gpt_forward", "attention FLOPs", &[2, 2, batch, heads, pairs, head_dim])
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

fn check_config(op: &'static str, cfg: &GptConfig) -> Result<()> {
    cfg.validate().map_err(|e| TensorError::InvalidArgument { op, reason: e.to_string() })
}

/// FLOPs of one GPT forward over `batch × seq` tokens, by part. `causal_useful` selects the
/// attention convention (see the module docs).
///
/// # Errors
/// An invalid config (e.g. `n_heads` of 0), or a count that overflows u64.
pub fn gpt_forward(cfg: &GptConfig, batch: usize, seq: usize, causal_useful: bool) -> Result<Vec<FlopRow>> {
    const OP: &str = "flops::gpt_forward";
    check_config(OP, cfg)?;
    let u = |x: usize| x as u64;
    let (d, l, v) = (u(cfg.d_model), u(cfg.n_layers), u(cfg.vocab_size));
    let head_dim = u(cfg.head_dim());
    let (batch, seq) = (u(batch), u(seq));
    let p = |what: &str, xs: &[u64]| prod(OP, what, xs);
    let s = |what: &str, xs: &[u64]| sum(OP, what, xs);
    let lin = |rows: u64, i: u64, o: u64| p("linear FLOPs", &[2, rows, i, o]);
    // Per-block MLP widths (structured pruning leaves them unequal).
    let hidden: Vec<u64> = (0..cfg.n_layers).map(|b| u(cfg.hidden(b))).collect();
    let mut mlp = 0u64;
    let mut gelu = 0u64;
    for &hb in &hidden {
        mlp = s("mlp", &[mlp, lin(rows_of(batch, seq)?, d, hb)?, lin(rows_of(batch, seq)?, hb, d)?])?;
        gelu = s("gelu", &[gelu, p("gelu", &[rows_of(batch, seq)?, hb])?])?;
    }
    let rows = p("batch·seq", &[batch, seq])?;
    // seq·(seq+1)/2 without overflowing where the result fits.
    let pairs = if causal_useful {
        if seq % 2 == 0 {
            p("causal pairs", &[seq / 2, seq + 1])?
        } else {
            p("causal pairs", &[seq, seq.div_ceil(2)])?
        }
    } else {
        p("attention pairs", &[seq, seq])?
    };
    // Per-block head counts (head pruning leaves them unequal): block b's Q/K/V are
    // heads(b)·head_dim wide, its output projection takes that many inputs, and its attention
    // and softmax run over heads(b) heads.
    let (mut projections, mut attention, mut softmax) = (0u64, 0u64, 0u64);
    for b in 0..cfg.n_layers {
        let (hb, ab) = (u(cfg.heads(b)), u(cfg.attn_width(b)));
        let a3 = p("3·attention width", &[3, ab])?;
        projections = s("attention projections", &[projections, lin(rows, d, a3)?, lin(rows, ab, d)?])?;
        attention = s("attention", &[attention, attention_pairs(batch, hb, pairs, head_dim)?])?;
        softmax = s("attention softmax", &[softmax, p("attention softmax", &[5, batch, hb, seq, seq])?])?;
    }
    let elem = p("rows·d_model", &[rows, d])?;
    let norms = p("2·n_layers + 1", &[2, l])?.checked_add(1).ok_or_else(|| overflow(OP, "2·n_layers + 1"))?;
    Ok(vec![
        row("attention projections (qkv, out)", projections, true),
        row("mlp (fc, proj)", mlp, true),
        row(
            if causal_useful { "attention QKᵀ + A·V (causal)" } else { "attention QKᵀ + A·V (full square)" },
            attention,
            true,
        ),
        row("attention softmax", softmax, false),
        row("layer norms", p("layer norms", &[5, elem, norms])?, false),
        row("gelu", gelu, false),
        row("residual + position adds", p("residual adds", &[elem, norms])?, false),
        row("lm head", lin(rows, d, v)?, true),
    ])
}

fn rows_of(batch: u64, seq: u64) -> Result<u64> {
    prod("flops::gpt_forward", "batch·seq", &[batch, seq])
}

/// Kaplan et al. (2020): forward ≈ `2N + 2·n_layer·n_ctx·d_model` FLOPs per token, with
/// `N = 12·n_layer·d_model²` non-embedding parameters (for d_attn = d_model, d_ff = 4·d_model).
///
/// # Errors
/// An invalid config, or a count that overflows u64.
pub fn kaplan_forward_per_token(cfg: &GptConfig, n_ctx: usize) -> Result<u64> {
    const OP: &str = "flops::kaplan_forward_per_token";
    check_config(OP, cfg)?;
    let (d, l) = (cfg.d_model as u64, cfg.n_layers as u64);
    let params = prod(OP, "2·12·n_layer·d_model²", &[2, 12, l, d, d])?;
    let ctx = prod(OP, "2·n_layer·n_ctx·d_model", &[2, l, n_ctx as u64, d])?;
    sum(OP, "forward FLOPs per token", &[params, ctx])
}

/// Sum of the rows' FLOPs.
///
/// # Errors
/// If the sum overflows u64.
pub fn total(rows: &[FlopRow]) -> Result<u64> {
    sum("flops::total", "total FLOPs", &rows.iter().map(|r| r.flops).collect::<Vec<_>>())
}
