//! Shared helpers for the transformer tests (included with `mod common;`).

#![allow(dead_code)]

use tt_transformer::{Gpt, GptConfig};

pub fn tiny_config(vocab: usize, seed: u64) -> GptConfig {
    GptConfig { d_model: 16, n_heads: 2, max_seq_len: 32, ..tt_transformer::testing::tiny_config(vocab, seed) }
}

pub fn tiny(vocab: usize, seed: u64) -> Gpt {
    Gpt::new(tiny_config(vocab, seed)).unwrap()
}
