//! [`LlamaWeights`] into the one model: a [`Gpt`] of Llama blocks whose every matrix is already
//! in its format — f32 matrices as dense projections, Q8_0 ones as per-group int8 projections
//! ([`tt_quant::Int8Linear`]) — so no second copy of a weight is ever made and the cached decoder
//! runs it as it is.
//!
//! Every weight of the built model is inference-only (released, in the sense of
//! `tt_tensor::nn::freeze`): `tt_tensor::nn::thaw` gives dense, trainable weights back.

use std::sync::Arc;

use ndarray::Array2;
use tt_quant::{Activations, Granularity, Int8Linear, QParams, QuantizedMatrix, Scheme};
use tt_tensor::projection::DenseF32;
use tt_tensor::{Projection, Tensor};
use tt_transformer::{Gpt, GptConfig};

use crate::weights::{LlamaWeights, Matrix};
use crate::{ModelError, Result};

/// The model config a checkpoint's parameters describe.
pub fn config(w: &LlamaWeights) -> GptConfig {
    let p = &w.params;
    GptConfig {
        tie_weights: p.tied,
        norm_eps: p.norm_eps,
        rope_theta: p.rope_theta,
        rope_pairs: p.rope_pairs,
        ..GptConfig::llama(p.vocab_size, p.dim, p.n_layers, (p.n_heads, p.n_kv_heads), p.hidden_dim, p.seq_len)
    }
}

/// Builds the model from `w`, consuming it matrix by matrix (its f32 values move into the model
/// without a copy; Q/K/V are stacked into the fused projection, one layer at a time).
///
/// # Errors
/// A config the model refuses, a matrix of the wrong shape, Q/K/V in different formats or group
/// sizes, or a Q8 scale the int8 format cannot hold (each named by its tensor; `label` names the
/// file in errors).
pub fn build(w: LlamaWeights, label: &std::path::Path) -> Result<Gpt> {
    let config = config(&w);
    config.validate()?;
    let err = |reason: String| ModelError::format(label, reason);
    let LlamaWeights { params: _, tok_emb, layers, final_norm, lm_head } = w;
    // Each layer's projections by their model path, built before the model asks for them.
    let mut formats: Vec<(String, Arc<dyn Projection>)> = Vec::with_capacity(6 * layers.len() + 2);
    formats.push(("tok_emb".into(), projection(tok_emb, "tok_embeddings").map_err(err)?));
    let mut norms = Vec::with_capacity(layers.len());
    for (l, layer) in layers.into_iter().enumerate() {
        let name = |n: &str| format!("layers.{l}.{n}");
        let qkv =
            stack([layer.wq, layer.wk, layer.wv]).map_err(|e| err(format!("{}: {e}", name("attention.wq/wk/wv"))))?;
        formats.push((format!("blocks.{l}.attn.qkv"), projection(qkv, &name("attention.wqkv")).map_err(err)?));
        formats.push((format!("blocks.{l}.attn.proj"), projection(layer.wo, &name("attention.wo")).map_err(err)?));
        formats.push((format!("blocks.{l}.mlp.fc"), projection(layer.w1, &name("feed_forward.w1")).map_err(err)?));
        formats.push((format!("blocks.{l}.mlp.up"), projection(layer.w3, &name("feed_forward.w3")).map_err(err)?));
        formats.push((format!("blocks.{l}.mlp.proj"), projection(layer.w2, &name("feed_forward.w2")).map_err(err)?));
        norms.push((layer.attn_norm, layer.ffn_norm));
    }
    if let Some(head) = lm_head {
        formats.push(("lm_head".into(), projection(head, "output").map_err(err)?));
    }
    let mut model = Gpt::new_with(config, &mut |path, shape, _| {
        let i = formats.iter().position(|(p, _)| p == path).ok_or_else(|| tt_tensor::TensorError::InvalidArgument {
            op: "tt_models::build",
            reason: format!("no weight for {path}"),
        })?;
        let (_, p) = formats.swap_remove(i);
        if p.shape() != shape {
            return Err(tt_tensor::TensorError::InvalidArgument {
                op: "tt_models::build",
                reason: format!("{path} is {:?} in the file, the config makes it {shape:?}", p.shape()),
            });
        }
        Ok(Some(p))
    })?;
    let set = |t: &Tensor, v: Vec<f32>, what: String| -> Result<()> {
        let n = v.len();
        t.set_data(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n]), v).map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(format!("{what}: {e}")))
    };
    for (l, (b, (attn, ffn))) in model.blocks.iter_mut().zip(norms).enumerate() {
        set(b.ln1.gamma(), attn, format!("layers.{l}.attention_norm"))?;
        set(b.ln2.gamma(), ffn, format!("layers.{l}.ffn_norm"))?;
    }
    set(model.ln_f.gamma(), final_norm, "norm".into())?;
    Ok(model)
}

/// Q, K and V rows stacked into one matrix of their common format.
fn stack(parts: [Matrix; 3]) -> std::result::Result<Matrix, String> {
    let cols = parts[0].shape().1;
    if parts.iter().any(|m| m.shape().1 != cols) {
        return Err("Q, K and V take inputs of different widths".into());
    }
    let rows = parts.iter().map(|m| m.shape().0).sum();
    match parts {
        [Matrix::F32 { values: q, .. }, Matrix::F32 { values: k, .. }, Matrix::F32 { values: v, .. }] => {
            Ok(Matrix::F32 { rows, cols, values: [q, k, v].concat() })
        }
        [Matrix::Q8 { group, codes: qc, scales: qs, .. }, Matrix::Q8 { group: gk, codes: kc, scales: ks, .. }, Matrix::Q8 { group: gv, codes: vc, scales: vs, .. }]
            if group == gk && group == gv =>
        {
            Ok(Matrix::Q8 { rows, cols, group, codes: [qc, kc, vc].concat(), scales: [qs, ks, vs].concat() })
        }
        _ => Err("Q, K and V are stored in different formats or group sizes".into()),
    }
}

/// One matrix as the projection the model computes with: f32 values as a dense projection (moved,
/// not copied), Q8 codes and scales as a per-group int8 layer (dynamic activations).
fn projection(m: Matrix, name: &str) -> std::result::Result<Arc<dyn Projection>, String> {
    match m {
        Matrix::F32 { rows, cols, values } => {
            let w = Array2::from_shape_vec((rows, cols), values).map_err(|e| format!("{name}: {e}"))?;
            Ok(Arc::new(DenseF32::from_array(w)))
        }
        Matrix::Q8 { rows, cols, group, codes, scales } => {
            // A group of zeros has scale 0 in the file; the format wants a positive scale, and
            // any one dequantizes zero codes to zero.
            let params = scales
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    QParams::new(if s == 0.0 { f32::MIN_POSITIVE } else { s }, 0)
                        .map_err(|e| format!("{name}: scale {s} at group {i}: {e}"))
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let q =
                QuantizedMatrix::from_parts(rows, cols, codes, params, Scheme::Symmetric, Granularity::PerGroup(group))
                    .map_err(|e| format!("{name}: {e}"))?;
            let layer = Int8Linear::from_quantized(q, Activations::Dynamic).map_err(|e| format!("{name}: {e}"))?;
            Ok(Arc::new(layer))
        }
    }
}
