//! # tt-kvcache
//!
//! KV caching for the tinytorch-rs GPT (course module 14). Without a cache, generating token
//! `n` re-runs the model over all `n` previous tokens: O(n) work per token, O(n²) per sequence.
//! With a cache, each layer's keys and values of past positions are kept, and a decode step
//! computes Q/K/V for the new token only and attends over the cache: O(1) projections and O(n)
//! attention per token.
//!
//! - [`KvCache`]: preallocated `[layer][batch][head][slot][dim]` storage with `append`, `advance`,
//!   `reset`, an overflow policy (error or sliding window) and `memory_bytes() = 2·L·B·H·S·D·4`.
//! - [`CachedGpt`]: prefill + allocation-free decode steps over plain-array weights.
//! - [`generate_cached`] / [`generate_uncached`]: the same generation with and without reuse,
//!   on the same kernels, for honest speed comparisons.
//!
//! Correctness: cached logits equal tt-transformer's full-recompute logits (see
//! `tests/m14_kv_caching.rs`).

pub mod cache;
pub mod decoder;
pub mod kernels;
pub mod weights;

pub use cache::{CacheError, CacheShape, KvCache, OverflowPolicy};
pub use decoder::{generate_cached, generate_uncached, CachedGpt, Trace};
pub use weights::GptWeights;

use thiserror::Error;

/// Errors from cached generation.
#[derive(Debug, Error)]
pub enum KvError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Model(#[from] tt_transformer::TransformerError),
    #[error("input: {0}")]
    Input(String),
}
