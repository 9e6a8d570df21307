//! # tt-transformer
//!
//! The model the performance tier optimizes (course modules 10–13): tokenizers, embeddings,
//! causal multi-head attention, a pre-norm GPT, its training loop, generation without a cache,
//! checkpoints, and a built-in question/answer corpus with an exact-match metric — so every later
//! module can report its effect on this model's speed *and* quality.
//!
//! - [`tokenizer`]: character and byte-level BPE tokenizers that round-trip exactly.
//! - [`model`]: [`Gpt`], [`Block`], [`CausalSelfAttention`]; all weights public.
//! - [`train`]: AdamW + warmup/cosine + clipping, validation perplexity.
//! - [`generate`]: greedy / temperature / top-k / top-p by full recomputation (the reference for
//!   KV caching).
//! - [`checkpoint`]: safetensors weights + JSON config + tokenizer, atomic saves, checked loads.
//! - [`corpus`], [`eval`]: the dialogue corpus and exact-match accuracy on unseen questions.
//! - [`testing`]: the tiny GPT every crate's tests share.
//!
//! ```
//! use tt_transformer::generate::{generate, GenerateConfig};
//! use tt_transformer::{CharTokenizer, Gpt, GptConfig, Tokenize};
//! let tok = CharTokenizer::from_corpus("hello, world");
//! let cfg = GptConfig { d_model: 16, n_layers: 1, n_heads: 2, max_seq_len: 32, ..GptConfig::default_model(tok.vocab_size()) };
//! let model = Gpt::new(cfg)?; // untrained: seeded random weights, so the text is noise
//! let prompt = tok.encode_ids("hello")?;
//! let new = generate(&model, &prompt, &GenerateConfig::greedy(6))?;
//! assert_eq!(new.len(), 6);
//! assert_eq!(generate(&model, &prompt, &GenerateConfig::greedy(6))?, new, "same seed, same text");
//! println!("{}", tok.decode_ids(&new)?);
//! # Ok::<(), tt_transformer::TransformerError>(())
//! ```

pub mod attention;
pub mod checkpoint;
pub mod corpus;
pub mod error;
pub mod eval;
pub mod generate;
pub mod model;
pub mod testing;
pub mod tokenizer;
pub mod train;

pub use error::{Result, TransformerError};
pub use model::{Block, CausalSelfAttention, Gpt, GptConfig, Mlp, PositionEncoding};
pub use tokenizer::{BpeTokenizer, CharTokenizer, TokenId, Tokenize, Tokenizer};
