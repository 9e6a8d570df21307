//! Writing a Llama as a Hugging Face directory (config.json, safetensors), for the loader's tests.

#![allow(dead_code)]

use serde_json::{json, Value};
use tt_models::weights::{LlamaParams, LlamaWeights, Matrix};

pub fn config(p: &LlamaParams) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.dim,
        "intermediate_size": p.hidden_dim,
        "num_hidden_layers": p.n_layers,
        "num_attention_heads": p.n_heads,
        "num_key_value_heads": p.n_kv_heads,
        "vocab_size": p.vocab_size,
        "max_position_embeddings": p.seq_len,
        "rms_norm_eps": p.norm_eps,
        "rope_theta": p.rope_theta,
        "tie_word_embeddings": p.tied,
        "hidden_act": "silu",
        "rope_scaling": null,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "transformers_version": "4.44.0"
    })
}

pub fn values(m: &Matrix) -> &[f32] {
    match m {
        Matrix::F32 { values, .. } => values,
        Matrix::Q8 { .. } => panic!("HF weights are f32"),
    }
}

/// The weights by Hugging Face name with their shapes, in the order the tensors are written.
pub fn hf_tensors(w: &LlamaWeights) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let m = |name: String, m: &Matrix| {
        let (r, c) = m.shape();
        (name, vec![r, c], values(m).to_vec())
    };
    let v = |name: String, v: &[f32]| (name, vec![v.len()], v.to_vec());
    let mut out = vec![m("model.embed_tokens.weight".into(), &w.tok_emb)];
    for (l, layer) in w.layers.iter().enumerate() {
        let n = |s: &str| format!("model.layers.{l}.{s}");
        out.push(v(n("input_layernorm.weight"), &layer.attn_norm));
        out.push(m(n("self_attn.q_proj.weight"), &layer.wq));
        out.push(m(n("self_attn.k_proj.weight"), &layer.wk));
        out.push(m(n("self_attn.v_proj.weight"), &layer.wv));
        out.push(m(n("self_attn.o_proj.weight"), &layer.wo));
        out.push(v(n("post_attention_layernorm.weight"), &layer.ffn_norm));
        out.push(m(n("mlp.gate_proj.weight"), &layer.w1));
        out.push(m(n("mlp.up_proj.weight"), &layer.w3));
        out.push(m(n("mlp.down_proj.weight"), &layer.w2));
    }
    out.push(v("model.norm.weight".into(), &w.final_norm));
    if let Some(head) = &w.lm_head {
        out.push(m("lm_head.weight".into(), head));
    }
    out
}

/// `w` as an f32 Hugging Face directory in `dir`: config.json and one model.safetensors.
pub fn write_f32_dir(dir: &std::path::Path, w: &LlamaWeights) {
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config(&w.params)).unwrap()).unwrap();
    let tensors = hf_tensors(w);
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            (n.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
}
