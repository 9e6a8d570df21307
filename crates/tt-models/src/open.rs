//! Any model on disk, by path: what `tito generate --model PATH` and the other verbs open.
//!
//! - a directory holding a checkpoint unit of this project (`manifest.json`): the course GPT as
//!   `tt_transformer::checkpoint` saves it, or a quantized model as [`save`] writes it;
//! - a Hugging Face directory (`config.json` beside `model.safetensors` or its sharded index);
//! - a llama2.c checkpoint file, its tokenizer from `--tokenizer` or `tokenizer.bin` beside it.
//!
//! Each comes with its text codec ([`TextCodec`]): how a prompt becomes ids and ids become text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tt_tensor::projection::Unloaded;
use tt_transformer::{Gpt, GptConfig, Tokenize, Tokenizer};

use crate::hf::HfTokenizer;
use crate::llama2c::tokenizer::Llama2cTokenizer;
use crate::{ModelError, Result};

/// A model's text side: prompt → ids, ids → bytes to print as they come.
pub trait TextCodec: Send + Sync {
    /// The prompt's ids, with whatever the model was trained to see first (llama2.c: BOS).
    ///
    /// # Errors
    /// Text the tokenizer cannot encode.
    fn encode_prompt(&self, text: &str) -> Result<Vec<usize>>;
    /// The bytes `id` prints as after `prev` (pieces of one UTF-8 character may come apart).
    ///
    /// # Errors
    /// An id outside the vocabulary.
    fn piece(&self, prev: usize, id: usize) -> Result<Vec<u8>>;
    /// Ids that end a generation.
    fn stop_tokens(&self) -> Vec<usize>;
    /// The tokenizer as a checkpoint part: (part name, bytes), and its kind for [`save`].
    ///
    /// # Errors
    /// A tokenizer that does not serialize.
    fn to_part(&self) -> Result<(&'static str, Vec<u8>, CodecKind)>;
    /// The id a prompt starts with, if the tokenizer adds one.
    fn bos(&self) -> Option<usize> {
        None
    }
}

/// Which tokenizer a saved unit holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodecKind {
    /// The course's character or BPE tokenizer (`tokenizer.json`).
    Course,
    /// llama2.c's `tokenizer.bin`.
    Llama2c,
    /// Hugging Face's `tokenizer.json` (with the special ids resolved when it was opened).
    HuggingFace,
}

/// The course tokenizer; generation ends at a newline (answers are one line). A prompt that is
/// one question line (`Q: …`, no answer cue) gets the `\nA:` the model was trained to answer
/// after (the corpus's `Q: question\nA: answer` form), so `--prompt "Q: what is 3 plus 4?"`
/// answers rather than stopping at the question's end.
struct Course(Tokenizer);

impl TextCodec for Course {
    fn encode_prompt(&self, text: &str) -> Result<Vec<usize>> {
        let question = text.starts_with("Q:") && !text.contains('\n');
        let text = if question { format!("{text}\nA:") } else { text.to_string() };
        Ok(self.0.encode_ids(&text)?)
    }
    fn piece(&self, _: usize, id: usize) -> Result<Vec<u8>> {
        Ok(self.0.decode_ids(&[id])?.into_bytes())
    }
    fn stop_tokens(&self) -> Vec<usize> {
        self.0.encode_ids("\n").ok().filter(|v| v.len() == 1).unwrap_or_default()
    }
    fn to_part(&self) -> Result<(&'static str, Vec<u8>, CodecKind)> {
        let json = serde_json::to_vec(&self.0).map_err(|e| {
            ModelError::format("tokenizer.json", format!("the course tokenizer does not serialize: {e}"))
        })?;
        Ok(("tokenizer.json", json, CodecKind::Course))
    }
}

/// llama2.c's tokenizer, as run.c uses it: BOS first; a generation ends at BOS (run.c's stop)
/// or EOS.
struct Llama2c {
    tok: Llama2cTokenizer,
    bytes: Vec<u8>,
}

impl TextCodec for Llama2c {
    fn encode_prompt(&self, text: &str) -> Result<Vec<usize>> {
        self.tok.encode(text, true, false)
    }
    fn piece(&self, prev: usize, id: usize) -> Result<Vec<u8>> {
        Ok(crate::llama2c::tokenizer::safe_piece(self.tok.decode(prev, id)?).to_vec())
    }
    fn stop_tokens(&self) -> Vec<usize> {
        vec![self.tok.bos(), self.tok.eos()]
    }
    fn to_part(&self) -> Result<(&'static str, Vec<u8>, CodecKind)> {
        Ok(("tokenizer.bin", self.bytes.clone(), CodecKind::Llama2c))
    }
}

/// A Hugging Face tokenizer: BOS first when it has one; a generation ends at any EOS id.
struct Hf(HfTokenizer);

impl TextCodec for Hf {
    fn encode_prompt(&self, text: &str) -> Result<Vec<usize>> {
        self.0.encode(text, self.0.bos().is_some())
    }
    /// What `id` adds to the text after `prev`: decoding a token alone drops the leading space a
    /// SentencePiece piece carries, so the pair is decoded and `prev`'s text taken off.
    fn piece(&self, prev: usize, id: usize) -> Result<Vec<u8>> {
        let (both, before) = (self.0.decode(&[prev, id])?, self.0.decode(&[prev])?);
        Ok(match both.strip_prefix(&before) {
            Some(rest) => rest.as_bytes().to_vec(),
            None => self.0.decode(&[id])?.into_bytes(),
        })
    }
    fn stop_tokens(&self) -> Vec<usize> {
        self.0.eos().to_vec()
    }
    fn to_part(&self) -> Result<(&'static str, Vec<u8>, CodecKind)> {
        let json = self.0.inner().to_string(false).map_err(|e| {
            ModelError::format("tokenizer.json", format!("the Hugging Face tokenizer does not serialize: {e}"))
        })?;
        Ok(("tokenizer.json", json.into_bytes(), CodecKind::HuggingFace))
    }
    fn bos(&self) -> Option<usize> {
        self.0.bos()
    }
}

/// An opened model and its codec.
pub struct Opened {
    pub model: Gpt,
    pub codec: Box<dyn TextCodec>,
    /// What was opened, for messages: `"llama2.c"`, `"tinytorch checkpoint"`, …
    pub format: &'static str,
}

/// The `info` a unit written by [`save`] carries beside its config.
#[derive(Serialize, Deserialize)]
struct SavedInfo {
    /// The weight format of the projections (`int8`, `int4`, `f32`, `pruned`…), for messages.
    weights: String,
    tokenizer: CodecKind,
    /// The tokenizer's BOS and EOS ids (a Hugging Face tokenizer's are resolved from files the
    /// unit does not keep).
    #[serde(default)]
    bos: Option<usize>,
    #[serde(default)]
    eos: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct SavedConfig {
    model: GptConfig,
    info: SavedInfo,
}

/// The config part's name in a unit (the course checkpoint's too).
const CONFIG_PART: &str = "config.json";

/// Opens the model at `path` (see the module docs); `tokenizer` overrides where a llama2.c
/// model's tokenizer is read from.
///
/// # Errors
/// A path that is none of the kinds above, or the loader's errors (each naming the file).
pub fn open(path: &Path, tokenizer: Option<&Path>) -> Result<Opened> {
    if path.is_dir() {
        if tt_tensor::serialize::unit_exists(path) {
            return open_unit(path);
        }
        if path.join("config.json").is_file() {
            let (weights, tok) = crate::hf::load(path)?;
            let model = crate::model::build(weights, path)?;
            return Ok(Opened { model, codec: Box::new(Hf(tok)), format: "Hugging Face" });
        }
        return Err(ModelError::format(
            path,
            "a directory that is neither a checkpoint unit of this project (manifest.json) nor a Hugging Face \
             model (config.json with model.safetensors)",
        ));
    }
    if !path.is_file() {
        return Err(ModelError::format(path, "no such file or directory"));
    }
    let model = crate::llama2c::load(path)?;
    let tok_path: PathBuf = tokenizer.map(Path::to_path_buf).unwrap_or_else(|| path.with_file_name("tokenizer.bin"));
    if !tok_path.is_file() {
        return Err(ModelError::format(
            &tok_path,
            "a llama2.c model needs its tokenizer.bin: put it beside the model or pass --tokenizer PATH",
        ));
    }
    let bytes = std::fs::read(&tok_path).map_err(|source| ModelError::Io { path: tok_path.clone(), source })?;
    let tok = Llama2cTokenizer::from_bytes(&bytes, model.config.vocab_size, &tok_path)?;
    Ok(Opened { model, codec: Box::new(Llama2c { tok, bytes }), format: "llama2.c" })
}

/// A checkpoint unit: the course GPT's (f32 weights, `info` of its training) or one [`save`]
/// wrote (any weight format, loaded into a skeleton without an f32 copy of a quantized layer).
fn open_unit(dir: &Path) -> Result<Opened> {
    let config = tt_tensor::serialize::load_unit(dir, &[CONFIG_PART])
        .map_err(|e| ModelError::format(dir, e.to_string()))?
        .remove(0);
    let Ok(saved) = serde_json::from_slice::<SavedConfig>(&config) else {
        let (model, tok, _) = tt_transformer::checkpoint::load(dir)?;
        return Ok(Opened { model, codec: Box::new(Course(tok)), format: "tinytorch checkpoint" });
    };
    saved.model.validate()?;
    let part = match saved.info.tokenizer {
        CodecKind::Course | CodecKind::HuggingFace => "tokenizer.json",
        CodecKind::Llama2c => "tokenizer.bin",
    };
    let tok_bytes =
        tt_tensor::serialize::load_unit(dir, &[part]).map_err(|e| ModelError::format(dir, e.to_string()))?.remove(0);
    let mut model = Gpt::new_with(saved.model, &mut |_, (o, i), _| Ok(Some(Arc::new(Unloaded::new(o, i)) as Arc<_>)))?;
    tt_quant::checkpoint::load(&mut model, dir).map_err(|e| ModelError::format(dir, e.to_string()))?;
    let codec: Box<dyn TextCodec> = match saved.info.tokenizer {
        CodecKind::Course => Box::new(Course(
            Tokenizer::from_json(&tok_bytes).map_err(|e| ModelError::format(dir.join(part), e.to_string()))?,
        )),
        CodecKind::Llama2c => {
            let tok = Llama2cTokenizer::from_bytes(&tok_bytes, model.config.vocab_size, &dir.join(part))?;
            Box::new(Llama2c { tok, bytes: tok_bytes })
        }
        CodecKind::HuggingFace => Box::new(Hf(HfTokenizer::from_parts(
            &tok_bytes,
            model.config.vocab_size,
            saved.info.bos,
            saved.info.eos,
            &dir.join(part),
        )?)),
    };
    Ok(Opened { model, codec, format: "tinytorch checkpoint" })
}

/// Saves `model` (in whatever formats its layers hold: int8, int4, f32…) with `codec`'s tokenizer
/// as one checkpoint unit in `dir`, which [`open`] reads back. `weights` names the format in the
/// saved info.
///
/// # Errors
/// As `tt_quant::checkpoint::save_with`.
pub fn save(model: &mut Gpt, codec: &dyn TextCodec, weights: &str, dir: &Path) -> Result<()> {
    let (part, bytes, tokenizer) = codec.to_part()?;
    let info = SavedInfo { weights: weights.into(), tokenizer, bos: codec.bos(), eos: codec.stop_tokens() };
    let config = SavedConfig { model: model.config.clone(), info };
    let config = serde_json::to_vec_pretty(&config).map_err(|e| ModelError::format(dir, e.to_string()))?;
    tt_quant::checkpoint::save_with(model, dir, &[(CONFIG_PART, &config), (part, &bytes)])
        .map_err(|e| ModelError::format(dir, e.to_string()))
}

/// The course tokenizer as a codec (for the course GPT the milestones train).
pub fn course_codec(tok: Tokenizer) -> Box<dyn TextCodec> {
    Box::new(Course(tok))
}
