//! `config.json` of a `LlamaForCausalLM`, read into [`LlamaParams`]: what the model can run is
//! accepted, everything else (rotary scaling, biases, another activation or architecture) refused
//! by name rather than run wrongly.

use serde::Deserialize;

use crate::weights::{LlamaParams, RopePairs};

/// The same bounds as the llama2.c loader's, far beyond any released Llama, so a hostile config is
/// refused by its numbers alone before any size arithmetic.
const MAX_DIM: u64 = 1 << 16;
const MAX_HIDDEN_DIM: u64 = 1 << 18;
const MAX_LAYERS: u64 = 1 << 10;
const MAX_VOCAB: u64 = 1 << 22;
const MAX_SEQ_LEN: u64 = 1 << 20;

/// The fields of `config.json` this loader reads; unknown keys are ignored. Absent optional fields
/// take `transformers`' `LlamaConfig` defaults.
#[derive(Debug, Deserialize)]
pub(crate) struct Config {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: u64,
    intermediate_size: u64,
    num_hidden_layers: u64,
    num_attention_heads: u64,
    /// `None`: one key/value head per query head.
    #[serde(default)]
    num_key_value_heads: Option<u64>,
    vocab_size: u64,
    max_position_embeddings: u64,
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    /// Older configs' way of asking for scaled rotary positions (`"llama3"`, `"linear"`, …).
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5's replacement of `rope_theta` and `rope_scaling`.
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "silu")]
    hidden_act: String,
    #[serde(default)]
    head_dim: Option<u64>,
    #[serde(default)]
    pub(crate) bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub(crate) eos_token_id: Option<TokenIds>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    #[serde(default)]
    rope_type: Option<String>,
    #[serde(default)]
    rope_theta: Option<f64>,
}

/// A special token's id: Llama 3 lists several end-of-sequence ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenIds {
    One(u64),
    Many(Vec<u64>),
}

impl TokenIds {
    pub(crate) fn ids(&self) -> Vec<u64> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

fn silu() -> String {
    "silu".into()
}

/// `transformers`' default when neither `rope_theta` nor `rope_parameters` says.
const DEFAULT_ROPE_THETA: f64 = 10000.0;

impl Config {
    /// The model's parameters: rotary pairs half-split (Hugging Face permutes q/k rows to it).
    ///
    /// # Errors
    ///
    /// The first field naming something this model cannot run, or a size that is zero, beyond
    /// the bounds above, or inconsistent with the others.
    pub(crate) fn params(&self) -> std::result::Result<LlamaParams, String> {
        self.check_supported()?;
        let size = |name: &str, v: u64, max: u64| -> std::result::Result<usize, String> {
            match usize::try_from(v) {
                Ok(u) if (1..=max).contains(&v) => Ok(u),
                _ => Err(format!("{name} is {v}, not in 1..={max}")),
            }
        };
        let dim = size("hidden_size", self.hidden_size, MAX_DIM)?;
        let n_heads = size("num_attention_heads", self.num_attention_heads, MAX_DIM)?;
        let n_kv_heads = match self.num_key_value_heads {
            Some(v) => size("num_key_value_heads", v, MAX_DIM)?,
            None => n_heads,
        };
        if let Some(head_dim) = self.head_dim {
            if !dim.is_multiple_of(n_heads) || head_dim != (dim / n_heads) as u64 {
                return Err(format!(
                    "head_dim {head_dim} is not hidden_size / num_attention_heads = {dim} / {n_heads} \
                     (only that head width is supported)"
                ));
            }
        }
        let params = LlamaParams {
            dim,
            hidden_dim: size("intermediate_size", self.intermediate_size, MAX_HIDDEN_DIM)?,
            n_layers: size("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?,
            n_heads,
            n_kv_heads,
            vocab_size: size("vocab_size", self.vocab_size, MAX_VOCAB)?,
            seq_len: size("max_position_embeddings", self.max_position_embeddings, MAX_SEQ_LEN)?,
            norm_eps: self.rms_norm_eps as f32,
            rope_theta: self.rope_theta()? as f32,
            rope_pairs: RopePairs::HalfSplit,
            tied: self.tie_word_embeddings,
        };
        params.check()?;
        Ok(params)
    }

    fn check_supported(&self) -> std::result::Result<(), String> {
        let llama_arch = self.architectures.as_deref().map(|a| a == ["LlamaForCausalLM"]);
        let llama_type = self.model_type.as_deref().map(|t| t == "llama");
        match (llama_arch, llama_type) {
            (Some(false), _) => {
                return Err(format!(
                    "architectures is {:?}, not [\"LlamaForCausalLM\"]",
                    self.architectures.as_deref().unwrap_or_default()
                ))
            }
            (_, Some(false)) => {
                return Err(format!(
                    "model_type is {:?}, not \"llama\"",
                    self.model_type.as_deref().unwrap_or_default()
                ))
            }
            (None, None) => return Err("neither architectures nor model_type says this is a Llama".into()),
            _ => {}
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is set: scaled rotary positions are not supported".into());
        }
        if self.attention_bias {
            return Err("attention_bias is true: attention projections with biases are not supported".into());
        }
        if self.mlp_bias {
            return Err("mlp_bias is true: MLP projections with biases are not supported".into());
        }
        if self.hidden_act != "silu" {
            return Err(format!("hidden_act is {:?}: only \"silu\" (SwiGLU) is supported", self.hidden_act));
        }
        Ok(())
    }

    /// θ from `rope_theta` or transformers 5's `rope_parameters` (which must then be the
    /// unscaled `"default"` kind, and agree with `rope_theta` when both are given).
    fn rope_theta(&self) -> std::result::Result<f64, String> {
        let Some(rp) = &self.rope_parameters else {
            return Ok(self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA));
        };
        if let Some(kind) = rp.rope_type.as_deref().filter(|k| *k != "default") {
            return Err(format!("rope_parameters.rope_type is {kind:?}: scaled rotary positions are not supported"));
        }
        match (self.rope_theta, rp.rope_theta) {
            (Some(a), Some(b)) if a != b => Err(format!("rope_theta {a} and rope_parameters.rope_theta {b} disagree")),
            (a, b) => Ok(a.or(b).unwrap_or(DEFAULT_ROPE_THETA)),
        }
    }
}
