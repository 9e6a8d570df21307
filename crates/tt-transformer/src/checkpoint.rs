//! Checkpoints: weights (`model.safetensors`), `tokenizer.json` and `config.json` (model config
//! plus free-form training info), saved as **one unit** (`tt_tensor::serialize::save_unit`):
//! content-addressed files plus a `manifest.json` with their SHA-256, published by one atomic
//! rename. An interrupted save leaves the previous checkpoint loadable; a flipped bit, an edited
//! config (`n_heads`!) or a swapped tokenizer character is a checksum error.
//!
//! Loading validates before allocating: the config against its hard caps, the tokenizer's
//! consistency, and every tensor shape in the weights file's header against the shapes the config
//! implies — only then is a model built. Non-finite weights are an error.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tt_tensor::serialize::{load_state_dict, load_unit, parse_safetensors, safetensors_shapes, save_unit, unit_exists};
use tt_tensor::Module;

use crate::error::{Result, TransformerError};
use crate::model::{Gpt, GptConfig};
use crate::tokenizer::{Tokenize, Tokenizer};

/// Largest weight magnitude accepted. Trained weights of these models are O(1)–O(10); a flipped
/// exponent bit makes values like 1e38 that are finite but overflow the forward pass to inf/NaN.
pub const MAX_ABS_WEIGHT: f32 = 1e4;

/// The parts of a GPT checkpoint unit.
pub const PARTS: [&str; 3] = ["model.safetensors", "tokenizer.json", "config.json"];

#[derive(Serialize, Deserialize)]
struct ConfigFile {
    model: GptConfig,
    info: serde_json::Value,
}

fn ck_err(path: &Path, reason: impl Into<String>) -> TransformerError {
    TransformerError::Checkpoint { path: path.display().to_string(), reason: reason.into() }
}

/// The three parts' bytes, in [`PARTS`] order.
fn to_parts(model: &Gpt, tokenizer: &Tokenizer, info: serde_json::Value, dir: &Path) -> Result<[Vec<u8>; 3]> {
    if tokenizer.vocab_size() != model.config.vocab_size {
        return Err(ck_err(
            dir,
            format!("tokenizer has {} ids but the model {}", tokenizer.vocab_size(), model.config.vocab_size),
        ));
    }
    // A layer with a forward transform (low-rank factors in training, a mask not made
    // permanent) computes something other than its stored weight: saving that weight would
    // reload as a different model.
    if let Some((layer, t)) = tt_tensor::nn::layer_transforms(model).into_iter().next() {
        return Err(ck_err(
            dir,
            format!("layer {layer:?} carries a '{t}' forward transform; finish it before saving (its weight is not what it computes)"),
        ));
    }
    let weights = tt_tensor::serialize::to_safetensors_bytes(&model.named_parameters(), None)?;
    let tok = serde_json::to_vec(tokenizer).map_err(|e| ck_err(dir, e.to_string()))?;
    let cfg = ConfigFile { model: model.config.clone(), info };
    let cfg = serde_json::to_vec_pretty(&cfg).map_err(|e| ck_err(dir, e.to_string()))?;
    Ok([weights, tok, cfg])
}

/// Saves model, tokenizer and `info` into `dir` as one unit, replacing a previous checkpoint
/// there only once the new one is complete.
///
/// # Errors
/// A tokenizer whose vocabulary does not match the model, a layer that carries a forward
/// transform, or an I/O failure (the previous checkpoint, if any, is then intact).
pub fn save(dir: &Path, model: &Gpt, tokenizer: &Tokenizer, info: serde_json::Value) -> Result<()> {
    let parts = to_parts(model, tokenizer, info, dir)?;
    let named: Vec<(&str, &[u8])> = PARTS.iter().copied().zip(parts.iter().map(Vec::as_slice)).collect();
    Ok(save_unit(dir, &named)?)
}

/// For tests of interrupted saves: writes the first `parts_written` parts of a new checkpoint,
/// then fails before publishing it.
#[doc(hidden)]
pub fn save_interrupted(dir: &Path, model: &Gpt, tokenizer: &Tokenizer, parts_written: usize) -> Result<()> {
    let parts = to_parts(model, tokenizer, serde_json::Value::Null, dir)?;
    let named: Vec<(&str, &[u8])> = PARTS.iter().copied().zip(parts.iter().map(Vec::as_slice)).collect();
    Ok(tt_tensor::serialize::save_unit_interrupted(dir, &named, parts_written)?)
}

/// Whether `dir` holds a published checkpoint.
pub fn exists(dir: &Path) -> bool {
    unit_exists(dir)
}

/// Loads a checkpoint: the files are verified against the manifest's checksums, then
/// [`from_parts`] validates and builds the model.
///
/// # Errors
/// A missing, truncated, corrupt or edited file, or parts that do not fit each other; each error
/// names the file and the problem.
pub fn load(dir: &Path) -> Result<(Gpt, Tokenizer, serde_json::Value)> {
    let mut parts = load_unit(dir, &PARTS).map_err(|e| ck_err(dir, e.to_string()))?.into_iter();
    let (w, t, c) = (parts.next(), parts.next(), parts.next());
    let (Some(weights), Some(tokenizer), Some(config)) = (w, t, c) else {
        return Err(ck_err(dir, "the manifest is missing a part"));
    };
    from_parts(&weights, &tokenizer, &config, dir)
}

/// Builds a model from a checkpoint's three parts (already read), validating everything before
/// allocating the model. `dir` only names the checkpoint in errors.
///
/// # Errors
/// A corrupt config or tokenizer, a config outside [`GptConfig::validate`]'s limits, a tokenizer
/// whose size differs from `vocab_size`, a weights file whose tensor names or shapes differ from
/// the config's, or a non-finite weight or one beyond [`MAX_ABS_WEIGHT`].
pub fn from_parts(
    weights: &[u8],
    tokenizer: &[u8],
    config: &[u8],
    dir: &Path,
) -> Result<(Gpt, Tokenizer, serde_json::Value)> {
    let cfg_path = dir.join("config.json");
    let cfg: ConfigFile =
        serde_json::from_slice(config).map_err(|e| ck_err(&cfg_path, format!("corrupt config: {e}")))?;
    cfg.model.validate().map_err(|e| ck_err(&cfg_path, e.to_string()))?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_json(tokenizer).map_err(|e| ck_err(&tok_path, e.to_string()))?;
    if tokenizer.vocab_size() != cfg.model.vocab_size {
        return Err(ck_err(
            &tok_path,
            format!(
                "mismatched: tokenizer has {} ids, config says vocab_size {}",
                tokenizer.vocab_size(),
                cfg.model.vocab_size
            ),
        ));
    }
    let w_path = dir.join("model.safetensors");
    let label = w_path.display().to_string();
    let mut want = cfg.model.parameter_shapes();
    want.sort();
    let have = safetensors_shapes(weights, &label).map_err(|e| ck_err(&w_path, e.to_string()))?;
    if have != want {
        let diff: Vec<String> = want
            .iter()
            .filter(|w| !have.contains(w))
            .map(|(n, s)| format!("config implies {n} {s:?}"))
            .chain(have.iter().filter(|h| !want.contains(h)).map(|(n, s)| format!("file has {n} {s:?}")))
            .take(6)
            .collect();
        return Err(ck_err(&w_path, format!("mismatched with config.json: {}", diff.join("; "))));
    }
    let (state, _) = parse_safetensors(weights, &label).map_err(|e| ck_err(&w_path, e.to_string()))?;
    for (name, a) in &state {
        if let Some(v) = a.iter().find(|v| v.abs() > MAX_ABS_WEIGHT) {
            return Err(ck_err(
                &w_path,
                format!("tensor {name} holds {v}, beyond ±{MAX_ABS_WEIGHT} (a corrupted exponent?)"),
            ));
        }
    }
    let model = Gpt::new(cfg.model)?;
    load_state_dict(&model, state).map_err(|e| ck_err(&w_path, format!("mismatched with config.json: {e}")))?;
    Ok((model, tokenizer, cfg.info))
}
