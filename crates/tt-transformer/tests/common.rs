//! Shared helpers for the transformer tests (included with `mod common;`).

#![allow(dead_code)]

use tt_transformer::{Gpt, GptConfig, PositionEncoding};

pub fn tiny_config(vocab: usize, seed: u64) -> GptConfig {
    GptConfig {
        vocab_size: vocab,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        max_seq_len: 32,
        mlp_ratio: 4,
        mlp_hidden: None,
        heads_per_block: None,
        tie_weights: true,
        position: PositionEncoding::Learned,
        dropout: 0.0,
        seed,
    }
}

pub fn tiny(vocab: usize, seed: u64) -> Gpt {
    Gpt::new(tiny_config(vocab, seed)).unwrap()
}
