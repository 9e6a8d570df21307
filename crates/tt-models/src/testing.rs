//! A small llama2.c model for tests and examples: random weights (seeded) and a byte-fallback
//! tokenizer with a few merges, written as the two files `tito` and [`crate::open::open`] read.

use std::path::{Path, PathBuf};

use crate::llama2c::{checkpoint, tokenizer};
use crate::weights::{LlamaParams, LlamaWeights, RopePairs};
use crate::{ModelError, Result};

/// Writes `model.bin` (2 layers, dim 64, 4 heads over 2 K/V heads, context `seq_len`; seed 7,
/// init scale 0.3 so the logits are far from uniform) and `tokenizer.bin` beside it in `dir`;
/// returns the model's path.
///
/// # Errors
/// The files cannot be written, or `seq_len` is 0.
pub fn write_tiny_llama2c(dir: &Path, seq_len: usize) -> Result<PathBuf> {
    let pieces = tokenizer::synthetic_pieces(&[(" ", -0.5), ("he", -1.0), ("ll", -2.0), ("hell", -3.0), ("o ", -4.0)]);
    tokenizer::write(&dir.join("tokenizer.bin"), &pieces, 8)?;
    let params = LlamaParams {
        dim: 64,
        hidden_dim: 96,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: pieces.len(),
        seq_len,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_pairs: RopePairs::Interleaved,
        tied: true,
    };
    let model = dir.join("model.bin");
    let weights = LlamaWeights::random(params, 7, 0.3).map_err(|e| ModelError::format(&model, e))?;
    checkpoint::write_legacy(&model, &weights)?;
    Ok(model)
}
