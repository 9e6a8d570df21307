//! Models people have on disk, loaded into tinytorch-rs's one model ([`tt_transformer::Gpt`], GPT-2
//! and Llama blocks) and its one cached decoder.
//!
//! - [`llama2c`]: Andrej Karpathy's llama2.c checkpoints (the legacy f32 format and version 2's
//!   Q8_0) and its `tokenizer.bin`, encoding exactly as its `run.c` does.
//! - [`hf`]: Hugging Face Llama directories (`config.json`, safetensors in F32, BF16 or F16, one
//!   file or sharded) and their `tokenizer.json`, run by Hugging Face's `tokenizers` crate.
//! - [`weights`]: the family-neutral form every loader produces first ([`weights::LlamaWeights`]):
//!   each matrix by its role, f32 or already quantized, checked against the config before a byte
//!   of it is allocated.
//!
//! What this crate does not do: train, generate or quantize (tt-transformer, tt-kvcache and
//! tt-quant do, on the loaded model), or download anything — every path is a local file.

pub mod error;
pub mod hf;
pub mod llama2c;
pub mod model;
pub mod open;
pub mod testing;
pub mod weights;

pub use error::{ModelError, Result};
