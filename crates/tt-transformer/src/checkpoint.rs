//! Checkpoints: `model.safetensors` (weights), `tokenizer.json`, and `config.json` (model config
//! plus free-form training info). Each file is written atomically and `config.json` last, so a
//! directory with a config has complete weights and tokenizer beside it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tt_tensor::serialize::{atomic_write, load_safetensors, load_state_dict, save_module};

use crate::error::{Result, TransformerError};
use crate::model::{Gpt, GptConfig};
use crate::tokenizer::{Tokenize, Tokenizer};

#[derive(Serialize, Deserialize)]
struct ConfigFile {
    model: GptConfig,
    info: serde_json::Value,
}

fn ck_err(path: &Path, reason: impl Into<String>) -> TransformerError {
    TransformerError::Checkpoint { path: path.display().to_string(), reason: reason.into() }
}

/// Saves model, tokenizer and `info` into `dir`.
pub fn save(dir: &Path, model: &Gpt, tokenizer: &Tokenizer, info: serde_json::Value) -> Result<()> {
    if tokenizer.vocab_size() != model.config.vocab_size {
        return Err(ck_err(
            dir,
            format!("tokenizer has {} ids but the model {}", tokenizer.vocab_size(), model.config.vocab_size),
        ));
    }
    save_module(model, &dir.join("model.safetensors"), None)?;
    let tok = serde_json::to_vec(tokenizer).map_err(|e| ck_err(dir, e.to_string()))?;
    atomic_write(&dir.join("tokenizer.json"), &tok)?;
    let cfg = ConfigFile { model: model.config.clone(), info };
    let cfg = serde_json::to_vec_pretty(&cfg).map_err(|e| ck_err(dir, e.to_string()))?;
    atomic_write(&dir.join("config.json"), &cfg)?;
    Ok(())
}

/// Whether `dir` holds a complete checkpoint.
pub fn exists(dir: &Path) -> bool {
    ["config.json", "model.safetensors", "tokenizer.json"].iter().all(|f| dir.join(f).is_file())
}

/// Loads a checkpoint. A missing file, a truncated or corrupt file, or weights that do not match
/// the config are each an error that names the file and the problem.
pub fn load(dir: &Path) -> Result<(Gpt, Tokenizer, serde_json::Value)> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| {
            ck_err(
                &p,
                if e.kind() == std::io::ErrorKind::NotFound {
                    "missing (file not found)".to_string()
                } else {
                    e.to_string()
                },
            )
        })
    };
    let cfg_path = dir.join("config.json");
    let cfg: ConfigFile =
        serde_json::from_slice(&read("config.json")?).map_err(|e| ck_err(&cfg_path, format!("corrupt config: {e}")))?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer: Tokenizer = serde_json::from_slice(&read("tokenizer.json")?)
        .map_err(|e| ck_err(&tok_path, format!("corrupt tokenizer: {e}")))?;
    let tokenizer = tokenizer.rebuild();
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
    let model = Gpt::new(cfg.model)?;
    let w_path = dir.join("model.safetensors");
    if !w_path.is_file() {
        return Err(ck_err(&w_path, "missing (file not found)"));
    }
    let (state, _) = load_safetensors(&w_path).map_err(|e| ck_err(&w_path, e.to_string()))?;
    load_state_dict(&model, state).map_err(|e| ck_err(&w_path, format!("mismatched with config.json: {e}")))?;
    Ok((model, tokenizer, cfg.info))
}
