//! # tt-kvcache
//!
//! KV caching for the tinytorch-rs GPT (course module 14). Without a cache, generating token
//! `n` re-runs the model over all `n` previous tokens: O(n) work per token, O(n²) per sequence.
//! With a cache, each layer's keys and values of past positions are kept, and a decode step
//! computes Q/K/V for the new token only and attends over the cache: O(1) projections and O(n)
//! attention per token.
//!
//! - [`KvCache`]: preallocated `[layer][batch][head][slot][dim]` storage with `append`, `advance`,
//!   `reset`, an overflow policy (error or sliding window) and `memory_bytes() = 2·L·B·H·S·D·4`;
//!   optionally int8 storage ([`KvStorage::Int8`]: codes plus a scale per head and position).
//! - [`CachedGpt`]: prefill + allocation-free decode steps. It shares the model's layers: each
//!   linear map is the layer's own [`tt_tensor::Projection`], in whatever weight format was
//!   installed through the seam (dense f32 by default); this crate knows no format but the trait.
//! - [`generate_cached`] / [`generate_uncached`]: the same generation with and without reuse,
//!   on the same kernels, for honest speed comparisons.
//!
//! Correctness: cached logits equal tt-transformer's full-recompute logits (see
//! `tests/m14_kv_caching.rs`).
//!
//! ```
//! use tt_kvcache::{generate_cached, generate_uncached, CachedGpt, OverflowPolicy};
//! use tt_transformer::generate::GenerateConfig;
//! use tt_transformer::{Gpt, GptConfig};
//! let cfg = GptConfig { d_model: 16, n_layers: 2, n_heads: 2, max_seq_len: 32, ..GptConfig::default_model(10) };
//! let model = Gpt::new(cfg)?;
//! let mut engine = CachedGpt::new(&model, 1, OverflowPolicy::Error)?;
//! let greedy = GenerateConfig::greedy(8);
//! let cached = generate_cached(&mut engine, &[vec![1, 2, 3]], &greedy)?;
//! let recomputed = generate_uncached(&mut engine, &[vec![1, 2, 3]], &greedy)?;
//! // The same tokens; the cached run did O(1) projections per token instead of O(n).
//! assert_eq!(cached.tokens, recomputed.tokens);
//! assert_eq!(cached.tokens[0].len(), 8);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cache;
pub mod decoder;

pub use cache::{CacheError, CacheShape, HeadRows, KvCache, KvStorage, OverflowPolicy, Q8Rows};
pub use decoder::{generate_cached, generate_uncached, CachedGpt, SlotTokens};
pub use tt_transformer::generate::Trace;

use thiserror::Error;

/// Errors from cached generation.
#[derive(Debug, Error)]
pub enum KvError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Model(#[from] tt_transformer::TransformerError),
    #[error(transparent)]
    Tensor(#[from] tt_tensor::TensorError),
    #[error("input: {0}")]
    Input(String),
}
