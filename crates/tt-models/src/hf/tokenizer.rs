//! `tokenizer.json`, read and run by the `tokenizers` crate (Hugging Face's own implementation),
//! with the special ids from `tokenizer_config.json` and `config.json`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config::Config;
use crate::error::{ModelError, Result};

pub(crate) const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// Llama 3's `tokenizer.json` is 9 MB; the largest in use are a few tens.
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;
const MAX_TOKENIZER_CONFIG_BYTES: u64 = 16 << 20;

/// A Hugging Face tokenizer for a model of `vocab_size` tokens: every id it produces or takes is
/// checked against that vocabulary.
#[derive(Debug)]
pub struct HfTokenizer {
    tokenizer: tokenizers::Tokenizer,
    path: PathBuf,
    vocab_size: usize,
    bos: Option<usize>,
    eos: Vec<usize>,
}

/// `tokenizer_config.json`'s special tokens: a string, or an added-token object with `content`.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    bos_token: Option<SpecialToken>,
    #[serde(default)]
    eos_token: Option<SpecialToken>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    fn content(&self) -> &str {
        match self {
            SpecialToken::Text(s) | SpecialToken::Added { content: s } => s,
        }
    }
}

impl HfTokenizer {
    /// Reads `tokenizer.json` in `dir`, for the model `config.json` there describes. The BOS id is
    /// `tokenizer_config.json`'s `bos_token` (when that file is there), else `config.json`'s
    /// `bos_token_id`; the EOS ids are both files' (Llama 3 lists several).
    ///
    /// # Errors
    ///
    /// [`ModelError::Io`] when a file cannot be read; [`ModelError::Format`] when `config.json`
    /// is not a supported Llama, `tokenizer.json` is not a tokenizer the crate can build,
    /// `tokenizer_config.json` is not JSON, a special token is not in the vocabulary, or a
    /// special id is beyond the model's vocabulary.
    pub fn load(dir: &Path) -> Result<HfTokenizer> {
        let config_path = dir.join(super::CONFIG);
        let config: Config = super::read_json(&config_path, super::MAX_CONFIG_BYTES)?;
        let vocab_size = config.params().map_err(|e| ModelError::format(&config_path, e))?.vocab_size;
        let path = dir.join(TOKENIZER);
        let bytes = super::read_bounded(&path, MAX_TOKENIZER_BYTES)?;
        let tokenizer =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| ModelError::format(&path, e.to_string()))?;
        let tc_path = dir.join(TOKENIZER_CONFIG);
        let tc: TokenizerConfig =
            if tc_path.exists() { super::read_json(&tc_path, MAX_TOKENIZER_CONFIG_BYTES)? } else { Default::default() };
        let id_of = |field: &str, token: &SpecialToken| {
            tokenizer.token_to_id(token.content()).map(|id| id as u64).ok_or_else(|| {
                ModelError::format(&tc_path, format!("{field} {:?} is not in {TOKENIZER}", token.content()))
            })
        };
        let bos = match (&tc.bos_token, &config.bos_token_id) {
            (Some(token), _) => Some(id_of("bos_token", token)?),
            (None, Some(ids)) => match ids.ids()[..] {
                [id] => Some(id),
                _ => return Err(ModelError::format(&config_path, "bos_token_id is not one id")),
            },
            (None, None) => None,
        };
        let mut eos = Vec::new();
        if let Some(token) = &tc.eos_token {
            eos.push(id_of("eos_token", token)?);
        }
        eos.extend(config.eos_token_id.iter().flat_map(|ids| ids.ids()));
        let mut seen = std::collections::HashSet::new();
        eos.retain(|id| seen.insert(*id));
        let in_vocab = |field: &str, id: u64| match usize::try_from(id) {
            Ok(id) if id < vocab_size => Ok(id),
            _ => Err(ModelError::format(dir, format!("{field} {id} is beyond the model's vocab_size {vocab_size}"))),
        };
        Ok(HfTokenizer {
            bos: bos.map(|id| in_vocab("BOS id", id)).transpose()?,
            eos: eos.into_iter().map(|id| in_vocab("EOS id", id)).collect::<Result<_>>()?,
            tokenizer,
            path,
            vocab_size,
        })
    }

    /// A tokenizer saved beside a converted model (`tokenizer.json`'s bytes, its special ids
    /// already resolved by [`HfTokenizer::load`]); `path` names it in errors.
    ///
    /// # Errors
    ///
    /// [`ModelError::Format`] when the bytes are not a tokenizer the crate can build or a
    /// special id is beyond `vocab_size`.
    pub fn from_parts(
        json: &[u8],
        vocab_size: usize,
        bos: Option<usize>,
        eos: Vec<usize>,
        path: &Path,
    ) -> Result<HfTokenizer> {
        let tokenizer = tokenizers::Tokenizer::from_bytes(json).map_err(|e| ModelError::format(path, e.to_string()))?;
        if let Some(id) = bos.iter().chain(&eos).find(|&&id| id >= vocab_size) {
            return Err(ModelError::format(
                path,
                format!("special id {id} is beyond the model's vocab_size {vocab_size}"),
            ));
        }
        Ok(HfTokenizer { tokenizer, path: path.to_path_buf(), vocab_size, bos, eos })
    }

    /// `text`'s token ids, BOS first when `add_bos`. The tokenizer's post-processor is not run
    /// (it would add BOS itself), so `add_bos` alone decides.
    ///
    /// # Errors
    ///
    /// [`ModelError::Format`] when the tokenizer fails, produces an id beyond the model's
    /// vocabulary, or `add_bos` is asked of a tokenizer with no BOS token.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<usize>> {
        let fail = |reason: String| ModelError::format(&self.path, reason);
        let encoding = self.tokenizer.encode(text, false).map_err(|e| fail(format!("encoding failed: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.get_ids().len() + 1);
        if add_bos {
            ids.push(self.bos.ok_or_else(|| {
                fail(format!("no BOS token: neither {TOKENIZER_CONFIG}'s bos_token nor config.json's bos_token_id"))
            })?);
        }
        for &id in encoding.get_ids() {
            let id = id as usize;
            if id >= self.vocab_size {
                return Err(fail(format!("token id {id} is beyond the model's vocab_size {}", self.vocab_size)));
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens (BOS, EOS) left out.
    ///
    /// # Errors
    ///
    /// [`ModelError::Format`] when an id is beyond the model's vocabulary or the tokenizer fails.
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        let fail = |reason: String| ModelError::format(&self.path, reason);
        let ids = ids
            .iter()
            .map(|&id| match u32::try_from(id) {
                Ok(v) if id < self.vocab_size => Ok(v),
                _ => Err(fail(format!("token id {id} is beyond the model's vocab_size {}", self.vocab_size))),
            })
            .collect::<Result<Vec<u32>>>()?;
        self.tokenizer.decode(&ids, true).map_err(|e| fail(format!("decoding failed: {e}")))
    }

    /// The beginning-of-sequence id, if the tokenizer has one.
    pub fn bos(&self) -> Option<usize> {
        self.bos
    }

    /// The ids that end a generation (possibly none).
    pub fn eos(&self) -> &[usize] {
        &self.eos
    }

    /// The `tokenizers` tokenizer itself, e.g. for its `decode_stream` when printing tokens as
    /// they come (decoding one token alone loses SentencePiece's leading spaces). Ids it returns
    /// are not range-checked.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}
