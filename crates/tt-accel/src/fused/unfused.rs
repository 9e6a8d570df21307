//! The unfused chains the fused kernels replace: the `tt_tensor::kernels` reference kernels
//! called one after another, with their intermediate buffers. Same validation and errors as
//! the fused forms, so tests and benches compare like with like.

use super::attention::check_decode_attention;
use super::gelu::check_bias_gelu;
use super::norm::check_layer_norm;
use tt_tensor::kernels::{attention_head, gelu_tanh, layer_norm_row, softmax_row, Rows};
use tt_tensor::{Result, TensorError};

/// [`layer_norm_row`]: a mean pass, a variance pass, a normalize pass.
///
/// # Errors
/// As [`super::layer_norm`].
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> Result<(f32, f32)> {
    check_layer_norm("unfused::layer_norm", x, gamma, beta, eps, out)?;
    Ok(layer_norm_row(x, gamma, beta, eps, out))
}

/// [`softmax_row`]: a max pass, an exp + sum pass that stores the exponentials, a scale
/// pass. A row with NaN, `+∞` or only `−∞` entries comes out NaN (no error).
pub fn softmax(row: &mut [f32]) {
    softmax_row(row);
}

/// A bias-add pass over `y` (rows × `bias.len()`), then a [`gelu_tanh`] pass.
///
/// # Errors
/// As [`super::bias_gelu`].
pub fn bias_gelu(y: &mut [f32], bias: &[f32]) -> Result<()> {
    check_bias_gelu("unfused::bias_gelu", y, bias)?;
    if y.is_empty() {
        return Ok(());
    }
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
    for v in y.iter_mut() {
        *v = gelu_tanh(*v);
    }
    Ok(())
}

/// [`attention_head`] with one query over `slots = keys.len() / q.len()` cached rows, as the
/// KV-cached decoder calls it: scores into `probs` (which needs `slots` floats), softmax
/// over them, then `P·V` into `out`.
///
/// # Errors
/// As [`super::decode_attention`], and `ShapeMismatch` if `probs` is shorter than `slots`.
pub fn decode_attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    probs: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    let op = "unfused::decode_attention";
    check_decode_attention(op, q, keys, values, scale, out)?;
    let hd = q.len();
    let slots = keys.len() / hd;
    if probs.len() < slots {
        return Err(TensorError::ShapeMismatch { op, lhs: vec![probs.len()], rhs: vec![slots] });
    }
    let rows = |data, rows| Rows { data, rows, cols: hd, stride: hd };
    attention_head(rows(q, 1), rows(keys, slots), rows(values, slots), scale, probs, out, hd);
    Ok(())
}
