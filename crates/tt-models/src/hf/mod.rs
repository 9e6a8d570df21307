//! Hugging Face Llama checkpoints: a directory holding
//!
//! - `config.json` of a `LlamaForCausalLM`; refused by name: rotary scaling, biases, an
//!   activation other than SiLU, a head width other than `hidden_size / heads`;
//! - `model.safetensors`, or `model.safetensors.index.json` and the shards it names: F32, BF16 or
//!   F16, converted to f32 on load. Every header is checked against the config before a value is
//!   read; values stream from each shard in 1 MiB chunks, so no shard is held in memory whole;
//! - `tokenizer.json` (and optionally `tokenizer_config.json`), read by the `tokenizers` crate.
//!
//! Hugging Face's conversion permuted each head's q/k rows so rotary pairs are the two halves of
//! the head ([`RopePairs::HalfSplit`](crate::weights::RopePairs)); the weights are kept as stored.
//! Files are followed through symbolic links: the Hugging Face cache's snapshots are links into
//! its blob store. Shard names in the index must be plain file names, so nothing outside the
//! directory is read.

mod config;
mod tensors;
mod tokenizer;

use std::io::Read;
use std::path::Path;

pub use tokenizer::HfTokenizer;

use crate::error::{ModelError, Result};
use crate::weights::LlamaWeights;

const CONFIG: &str = "config.json";
/// A config is a few kilobytes.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads the weights and the tokenizer in `dir`.
///
/// # Errors
///
/// As [`load_weights`] and [`HfTokenizer::load`].
pub fn load(dir: &Path) -> Result<(LlamaWeights, HfTokenizer)> {
    Ok((load_weights(dir)?, HfTokenizer::load(dir)?))
}

/// Reads the weights in `dir` (`config.json` and the safetensors) into [`LlamaWeights`]: every
/// matrix [`Matrix::F32`](crate::weights::Matrix), rotary pairs half-split.
///
/// # Errors
///
/// [`ModelError::Io`] when a file is missing or cannot be read; [`ModelError::Format`], naming the
/// file and the field or tensor, when `config.json` is not JSON, lacks a size, asks for something
/// this model cannot run or has sizes out of bounds or inconsistent; when neither
/// `model.safetensors` nor the index is there, the index names a shard that is not a plain file
/// name, a shard's header is invalid or does not match its file's length, a tensor is in a shard
/// the index does not put it in (so none is in two), a tensor is missing, unexpected, of a dtype
/// other than F32/BF16/F16 or of a shape other than the config's, or a value is NaN or infinite.
pub fn load_weights(dir: &Path) -> Result<LlamaWeights> {
    let config_path = dir.join(CONFIG);
    let config: config::Config = read_json(&config_path, MAX_CONFIG_BYTES)?;
    let params = config.params().map_err(|e| ModelError::format(&config_path, e))?;
    tensors::read(dir, params)
}

/// Opens `path` for reading if it is a regular file (after links), checked before opening:
/// opening a FIFO would wait for a writer.
fn open_regular(path: &Path) -> Result<std::fs::File> {
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(ModelError::format(path, "not a regular file"));
    }
    std::fs::File::open(path).map_err(io)
}

/// The whole of `path`, refused beyond `max` bytes before anything is allocated.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    let file = open_regular(path)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max {
        return Err(ModelError::format(path, format!("{len} bytes, more than the {max} such a file may have")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take`: a file that grew since is still read only up to the bound.
    file.take(max).read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// `path` parsed as JSON into `T`, the file at most `max` bytes.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path, max: u64) -> Result<T> {
    let bytes = read_bounded(path, max)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // A missing or mistyped field says so itself; only syntax errors need the label.
        let what = if e.classify() == serde_json::error::Category::Data { "" } else { "invalid JSON: " };
        ModelError::format(path, format!("{what}{e}"))
    })
}
