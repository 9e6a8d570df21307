//! Small models for tests, this crate's and the crates built on it: one definition of the tiny
//! GPT that the decoder, kernel, quantization and compression tests check against, so they all
//! exercise the same shapes.

use tt_tensor::loss::cross_entropy;
use tt_tensor::optim::{Adam, Optimizer};
use tt_tensor::Module;

use crate::error::Result;
use crate::model::{Gpt, GptConfig, PositionEncoding};

/// A 32-wide, 2-layer, 4-head GPT with a 64-token context, learned positions, tied embeddings
/// and no dropout: every part of the real model, small enough to test in milliseconds. Vary it
/// with struct update syntax (`GptConfig { n_layers: 3, ..tiny_config(12, 0) }`).
pub fn tiny_config(vocab_size: usize, seed: u64) -> GptConfig {
    GptConfig {
        vocab_size,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        max_seq_len: 64,
        mlp_ratio: 4,
        mlp_hidden: None,
        heads_per_block: None,
        tie_weights: true,
        position: PositionEncoding::Learned,
        dropout: 0.0,
        seed,
        ..GptConfig::default_model(vocab_size)
    }
}

/// [`tiny_config`] as a Llama: RMSNorm, rotary positions, SwiGLU MLPs of width 48 (not a multiple
/// of d_model, as llama2.c's are not), grouped-query attention (4 query heads sharing 2 K/V
/// heads), no biases, tied head.
pub fn tiny_llama_config(vocab_size: usize, seed: u64) -> GptConfig {
    GptConfig { seed, ..GptConfig::llama(vocab_size, 32, 2, (4, 2), 48, 64) }
}

/// The repeating token pattern the tiny models are trained on (ids below 12).
pub const PATTERN: [usize; 7] = [1, 5, 9, 2, 7, 7, 3];

/// Trains `model` for `steps` Adam steps (lr 1e-2) on 33 tokens of [`PATTERN`], so its logits are
/// far from uniform: a comparison of two engines then sees real, peaked distributions.
///
/// # Errors
/// A vocabulary smaller than the pattern's ids, or a context shorter than 32 tokens.
pub fn train_on_pattern(model: &Gpt, steps: usize) -> Result<()> {
    let seq: Vec<usize> = (0..33).map(|i| PATTERN[i % PATTERN.len()]).collect();
    let mut opt = Adam::new(model.parameters(), 1e-2, 0.0)?;
    for _ in 0..steps {
        opt.zero_grad();
        cross_entropy(&model.forward_ids(&seq[..32], 1, 32)?, &seq[1..])?.backward()?;
        opt.step()?;
    }
    Ok(())
}

/// [`tiny_config`]`(12, seed)` trained 40 steps on [`PATTERN`].
///
/// # Errors
/// None in practice (the configuration is valid); the training step's errors are passed on.
pub fn trained_tiny(seed: u64) -> Result<Gpt> {
    let m = Gpt::new(tiny_config(12, seed))?;
    train_on_pattern(&m, 40)?;
    Ok(m)
}
