//! Hugging Face Llama directories: a tiny seeded random Llama written as safetensors (one file and
//! two shards; F32, BF16 and F16) with its config.json, and a small Llama-2-style tokenizer.json
//! built here, loaded back; and every hostile directory refused with an error naming the file and
//! the field or tensor.

use std::path::Path;

#[path = "common/hf_writer.rs"]
mod hf_writer;
use hf_writer::{config, hf_tensors};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use tt_models::hf::{self, HfTokenizer};
use tt_models::weights::{LayerWeights, LlamaParams, LlamaWeights, Matrix, RopePairs};
use tt_models::ModelError;

fn params(tied: bool) -> LlamaParams {
    LlamaParams {
        dim: 16,
        hidden_dim: 40,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: 300,
        seq_len: 32,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_pairs: RopePairs::HalfSplit,
        tied,
    }
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        other => panic!("no encoder for {other:?}"),
    }
}

/// `w` with every value rounded as `dtype` stores it: what loading must give back exactly.
fn rounded(w: &LlamaWeights, dtype: Dtype) -> LlamaWeights {
    let r = |v: &mut Vec<f32>| {
        for x in v.iter_mut() {
            *x = match dtype {
                Dtype::F32 => *x,
                Dtype::BF16 => half::bf16::from_f32(*x).to_f32(),
                Dtype::F16 => half::f16::from_f32(*x).to_f32(),
                other => panic!("{other:?}"),
            };
        }
    };
    let rm = |m: &mut Matrix| match m {
        Matrix::F32 { values, .. } => r(values),
        Matrix::Q8 { .. } => unreachable!(),
    };
    let mut w = w.clone();
    rm(&mut w.tok_emb);
    for layer in &mut w.layers {
        let LayerWeights { attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3 } = layer;
        r(attn_norm);
        r(ffn_norm);
        for m in [wq, wk, wv, wo, w1, w2, w3] {
            rm(m);
        }
    }
    r(&mut w.final_norm);
    if let Some(head) = &mut w.lm_head {
        rm(head);
    }
    w
}

/// Raw tensors `(name, dtype, shape, bytes)` as one safetensors file.
fn safetensors_bytes(tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| (name.as_str(), TensorView::new(*dtype, shape.clone(), bytes).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

type Raw = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn raw(w: &LlamaWeights, dtype: Dtype) -> Raw {
    hf_tensors(w).into_iter().map(|(n, s, v)| (n, dtype, s, encode(&v, dtype))).collect()
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// `tensors` in `dir`: one `model.safetensors`, or split into `shards` files with an index.
fn write_tensors(dir: &Path, tensors: &Raw, shards: usize) {
    if shards == 1 {
        std::fs::write(dir.join("model.safetensors"), safetensors_bytes(tensors)).unwrap();
        return;
    }
    let per = tensors.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    for (k, part) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", k + 1);
        std::fs::write(dir.join(&file), safetensors_bytes(part)).unwrap();
        for (name, ..) in part {
            map.insert(name.clone(), json!(file));
        }
    }
    write_json(&dir.join("model.safetensors.index.json"), &json!({"metadata": {"total_size": 0}, "weight_map": map}));
}

fn model_dir(w: &LlamaWeights, dtype: Dtype, shards: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_json(&dir.path().join("config.json"), &config(&w.params));
    write_tensors(dir.path(), &raw(w, dtype), shards);
    std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&tokenizer_json()).unwrap()).unwrap();
    dir
}

fn random(tied: bool, seed: u64) -> LlamaWeights {
    LlamaWeights::random(params(tied), seed, 0.5).unwrap()
}

fn format_reason(e: ModelError) -> (String, String) {
    match e {
        ModelError::Format { path, reason } => (path.file_name().unwrap().to_string_lossy().into_owned(), reason),
        other => panic!("expected a format error, got {other:?}"),
    }
}

/// Loading `dir` fails with a format error about `file` whose reason contains every one of `words`.
fn refused(dir: &Path, file: &str, words: &[&str]) {
    let (at, reason) = format_reason(hf::load_weights(dir).unwrap_err());
    assert_eq!(at, file, "{reason}");
    for word in words {
        assert!(reason.contains(word), "{reason:?} lacks {word:?}");
    }
}

#[test]
fn one_f32_file_loads_the_weights_written() {
    let w = random(false, 1);
    let dir = model_dir(&w, Dtype::F32, 1);
    let loaded = hf::load_weights(dir.path()).unwrap();
    assert_eq!(loaded, w);
    assert_eq!(loaded.params.rope_pairs, RopePairs::HalfSplit);
}

#[test]
fn two_bf16_shards_load_as_converted() {
    let w = random(true, 2);
    let dir = model_dir(&w, Dtype::BF16, 2);
    assert!(dir.path().join("model-00002-of-00002.safetensors").exists());
    let loaded = hf::load_weights(dir.path()).unwrap();
    assert_eq!(loaded, rounded(&w, Dtype::BF16));
    assert_ne!(loaded, w, "bf16 rounding must have changed something");
    assert!(loaded.lm_head.is_none());
}

#[test]
fn f16_one_file_and_sharded_load_as_converted() {
    let w = random(false, 3);
    for shards in [1, 2] {
        let dir = model_dir(&w, Dtype::F16, shards);
        assert_eq!(hf::load_weights(dir.path()).unwrap(), rounded(&w, Dtype::F16), "{shards} shards");
    }
}

#[test]
fn mixed_dtypes_in_one_file_each_convert() {
    let w = random(false, 4);
    let dtypes = [Dtype::F32, Dtype::BF16, Dtype::F16];
    let tensors: Raw = hf_tensors(&w)
        .into_iter()
        .enumerate()
        .map(|(i, (n, s, v))| (n, dtypes[i % 3], s, encode(&v, dtypes[i % 3])))
        .collect();
    let dir = model_dir(&w, Dtype::F32, 1);
    write_tensors(dir.path(), &tensors, 1);
    let loaded = hf::load_weights(dir.path()).unwrap();
    let as_each = dtypes.map(|d| hf_tensors(&rounded(&w, d)));
    let expected: Vec<_> = (0..tensors.len()).map(|i| as_each[i % 3][i].clone()).collect();
    assert_eq!(hf_tensors(&loaded), expected);
}

/// Each Hugging Face tensor filled with its own constant, loaded into the role written here by
/// hand (gate = w1, up = w3, down = w2): the name mapping checked independently of the writer above.
#[test]
fn each_hf_name_lands_in_its_role() {
    let p = params(false);
    let [q, kv, _, o, up, down, _] = p.layer_shapes();
    let names = [
        ("input_layernorm.weight", vec![p.dim]),
        ("self_attn.q_proj.weight", vec![q.0, q.1]),
        ("self_attn.k_proj.weight", vec![kv.0, kv.1]),
        ("self_attn.v_proj.weight", vec![kv.0, kv.1]),
        ("self_attn.o_proj.weight", vec![o.0, o.1]),
        ("post_attention_layernorm.weight", vec![p.dim]),
        ("mlp.gate_proj.weight", vec![up.0, up.1]),
        ("mlp.up_proj.weight", vec![up.0, up.1]),
        ("mlp.down_proj.weight", vec![down.0, down.1]),
    ];
    let mut tensors = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, value: f32| {
        let n = shape.iter().product();
        tensors.push((name, Dtype::F32, shape, encode(&vec![value; n], Dtype::F32)));
    };
    add("model.embed_tokens.weight".into(), vec![p.vocab_size, p.dim], 0.5);
    for l in 0..p.n_layers {
        for (k, (name, shape)) in names.iter().enumerate() {
            add(format!("model.layers.{l}.{name}"), shape.clone(), (10 * l + k + 1) as f32);
        }
    }
    add("model.norm.weight".into(), vec![p.dim], 0.25);
    add("lm_head.weight".into(), vec![p.vocab_size, p.dim], 0.75);
    let dir = tempfile::tempdir().unwrap();
    write_json(&dir.path().join("config.json"), &config(&p));
    write_tensors(dir.path(), &tensors, 1);

    let filled = |(rows, cols): (usize, usize), v: f32| Matrix::F32 { rows, cols, values: vec![v; rows * cols] };
    let direct = LlamaWeights {
        params: p.clone(),
        tok_emb: filled((p.vocab_size, p.dim), 0.5),
        layers: (0..p.n_layers)
            .map(|l| {
                let c = |k: usize| (10 * l + k + 1) as f32;
                LayerWeights {
                    attn_norm: vec![c(0); p.dim],
                    wq: filled(q, c(1)),
                    wk: filled(kv, c(2)),
                    wv: filled(kv, c(3)),
                    wo: filled(o, c(4)),
                    ffn_norm: vec![c(5); p.dim],
                    w1: filled(up, c(6)),
                    w3: filled(up, c(7)),
                    w2: filled(down, c(8)),
                }
            })
            .collect(),
        final_norm: vec![0.25; p.dim],
        lm_head: Some(filled((p.vocab_size, p.dim), 0.75)),
    };
    assert_eq!(hf::load_weights(dir.path()).unwrap(), direct);
}

#[test]
fn tied_head_saved_anyway_and_old_rotary_buffers_are_ignored() {
    let w = random(true, 5);
    let mut tensors = raw(&w, Dtype::F32);
    tensors.push(("lm_head.weight".into(), Dtype::F32, vec![300, 16], encode(&vec![0.0; 300 * 16], Dtype::F32)));
    tensors.push((
        "model.layers.1.self_attn.rotary_emb.inv_freq".into(),
        Dtype::F32,
        vec![2],
        encode(&[1.0, 0.01], Dtype::F32),
    ));
    let dir = model_dir(&w, Dtype::F32, 1);
    write_tensors(dir.path(), &tensors, 1);
    assert_eq!(hf::load_weights(dir.path()).unwrap(), w);
}

#[test]
fn config_defaults_are_transformers() {
    let w = random(false, 6);
    let dir = model_dir(&w, Dtype::F32, 1);
    let mut c = config(&w.params);
    let obj = c.as_object_mut().unwrap();
    for key in ["rope_theta", "tie_word_embeddings", "hidden_act", "rope_scaling", "attention_bias", "mlp_bias"] {
        obj.remove(key);
    }
    write_json(&dir.path().join("config.json"), &c);
    assert_eq!(hf::load_weights(dir.path()).unwrap(), w);
    // Without num_key_value_heads every head has its own keys.
    let mut p = params(false);
    p.n_kv_heads = p.n_heads;
    let w = LlamaWeights::random(p, 7, 0.5).unwrap();
    let dir = model_dir(&w, Dtype::F32, 1);
    let mut c = config(&w.params);
    c.as_object_mut().unwrap().remove("num_key_value_heads");
    write_json(&dir.path().join("config.json"), &c);
    assert_eq!(hf::load_weights(dir.path()).unwrap(), w);
}

#[test]
fn transformers_5_rope_parameters_are_read() {
    let w = random(false, 8);
    let dir = model_dir(&w, Dtype::F32, 1);
    let mut c = config(&w.params);
    c.as_object_mut().unwrap().remove("rope_theta");
    c["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 500000.0});
    write_json(&dir.path().join("config.json"), &c);
    assert_eq!(hf::load_weights(dir.path()).unwrap().params.rope_theta, 500000.0);
    c["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0});
    write_json(&dir.path().join("config.json"), &c);
    refused(dir.path(), "config.json", &["rope_parameters.rope_type", "llama3"]);
}

/// `config.json` with `key` set to `value` is refused with a reason containing `words`.
fn config_refused(key: &str, value: Value, words: &[&str]) {
    let w = random(false, 9);
    let dir = model_dir(&w, Dtype::F32, 1);
    let mut c = config(&w.params);
    if value.is_null() {
        c.as_object_mut().unwrap().remove(key);
    } else {
        c[key] = value;
    }
    write_json(&dir.path().join("config.json"), &c);
    refused(dir.path(), "config.json", words);
}

#[test]
fn configs_it_cannot_run_are_refused_by_field() {
    config_refused("rope_scaling", json!({"type": "linear", "factor": 2.0}), &["rope_scaling"]);
    config_refused("attention_bias", json!(true), &["attention_bias"]);
    config_refused("mlp_bias", json!(true), &["mlp_bias"]);
    config_refused("hidden_act", json!("gelu"), &["hidden_act", "gelu"]);
    config_refused("head_dim", json!(8), &["head_dim"]);
    config_refused("architectures", json!(["MistralForCausalLM"]), &["architectures", "MistralForCausalLM"]);
    config_refused("model_type", json!("mistral"), &["model_type", "mistral"]);
    config_refused("hidden_size", Value::Null, &["hidden_size"]);
    config_refused("vocab_size", json!(0), &["vocab_size"]);
    config_refused("vocab_size", json!(-5), &["-5"]);
    config_refused("num_hidden_layers", json!(1u64 << 40), &["num_hidden_layers"]);
    config_refused("num_key_value_heads", json!(3), &["n_kv_heads"]);
    config_refused("rms_norm_eps", json!(-1.0), &["norm_eps"]);
}

#[test]
fn head_dim_equal_to_the_default_is_accepted() {
    let w = random(false, 10);
    let dir = model_dir(&w, Dtype::F32, 1);
    let mut c = config(&w.params);
    c["head_dim"] = json!(4);
    write_json(&dir.path().join("config.json"), &c);
    assert_eq!(hf::load_weights(dir.path()).unwrap(), w);
}

#[test]
fn missing_and_malformed_files_are_refused() {
    let w = random(false, 11);
    let dir = model_dir(&w, Dtype::F32, 1);
    std::fs::write(dir.path().join("config.json"), b"{\"hidden_size\": 16,").unwrap();
    refused(dir.path(), "config.json", &["invalid JSON"]);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    match hf::load_weights(dir.path()).unwrap_err() {
        ModelError::Io { path, .. } => assert!(path.ends_with("config.json")),
        other => panic!("{other:?}"),
    }
    let dir = model_dir(&w, Dtype::F32, 1);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (_, reason) = format_reason(hf::load_weights(dir.path()).unwrap_err());
    assert!(reason.contains("model.safetensors.index.json"), "{reason}");
    // A directory where the weights file should be.
    std::fs::create_dir(dir.path().join("model.safetensors")).unwrap();
    refused(dir.path(), "model.safetensors", &["not a regular file"]);
}

#[test]
fn wrong_dtype_shape_missing_and_extra_tensors_are_refused() {
    let w = random(false, 12);
    let dir = model_dir(&w, Dtype::F32, 1);
    let mut tensors = raw(&w, Dtype::F32);
    let k = tensors.iter().position(|t| t.0 == "model.layers.1.self_attn.k_proj.weight").unwrap();

    let mut t = tensors.clone();
    t[k].1 = Dtype::I32;
    write_tensors(dir.path(), &t, 1);
    refused(dir.path(), "model.safetensors", &["model.layers.1.self_attn.k_proj.weight", "I32"]);

    let mut t = tensors.clone();
    t[k].2 = vec![16, 8];
    write_tensors(dir.path(), &t, 1);
    refused(dir.path(), "model.safetensors", &["model.layers.1.self_attn.k_proj.weight", "[16, 8]", "[8, 16]"]);

    let mut t = tensors.clone();
    t.remove(k);
    write_tensors(dir.path(), &t, 1);
    refused(dir.path(), "model.safetensors", &["model.layers.1.self_attn.k_proj.weight", "missing"]);

    let mut t = tensors.clone();
    t.push(("model.layers.2.self_attn.k_proj.weight".into(), Dtype::F32, vec![8, 16], vec![0; 8 * 16 * 4]));
    write_tensors(dir.path(), &t, 1);
    refused(dir.path(), "model.safetensors", &["unexpected tensor model.layers.2.self_attn.k_proj.weight"]);

    // An untied head missing, and a bias the config did not ask for.
    let head = tensors.iter().position(|t| t.0 == "lm_head.weight").unwrap();
    let mut t = tensors.clone();
    t.remove(head);
    write_tensors(dir.path(), &t, 1);
    refused(dir.path(), "model.safetensors", &["lm_head.weight", "missing"]);
    tensors.push(("model.layers.0.self_attn.q_proj.bias".into(), Dtype::F32, vec![16], vec![0; 64]));
    write_tensors(dir.path(), &tensors, 1);
    refused(dir.path(), "model.safetensors", &["unexpected tensor model.layers.0.self_attn.q_proj.bias"]);
}

#[test]
fn nan_and_infinity_are_refused_by_tensor() {
    let w = random(false, 13);
    for (dtype, bad) in [(Dtype::F32, f32::NAN), (Dtype::BF16, f32::INFINITY), (Dtype::F16, 1e6)] {
        let dir = model_dir(&w, dtype, 1);
        let mut tensors = raw(&w, dtype);
        let k = tensors.iter().position(|t| t.0 == "model.norm.weight").unwrap();
        let mut v = vec![1.0f32; 16];
        v[3] = bad;
        tensors[k].3 = encode(&v, dtype);
        write_tensors(dir.path(), &tensors, 1);
        // 1e6 overflows f16 to infinity.
        refused(dir.path(), "model.safetensors", &["model.norm.weight", "value 3"]);
    }
}

#[test]
fn corrupt_safetensors_are_refused() {
    let w = random(false, 14);
    let dir = model_dir(&w, Dtype::F32, 1);
    let path = dir.path().join("model.safetensors");
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() - 4]).unwrap();
    refused(dir.path(), "model.safetensors", &["header implies"]);
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &huge).unwrap();
    refused(dir.path(), "model.safetensors", &["header length"]);
    std::fs::write(&path, &good[..5]).unwrap();
    refused(dir.path(), "model.safetensors", &["shorter than a safetensors header"]);
    let mut bad = good.clone();
    bad[8] = b'[';
    std::fs::write(&path, &bad).unwrap();
    refused(dir.path(), "model.safetensors", &["invalid safetensors header"]);
}

/// A two-shard directory whose index is edited by `edit`.
fn sharded_with_index(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> tempfile::TempDir {
    let w = random(false, 15);
    let dir = model_dir(&w, Dtype::F32, 2);
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    edit(index["weight_map"].as_object_mut().unwrap());
    write_json(&index_path, &index);
    dir
}

#[test]
fn shards_escaping_the_directory_are_refused() {
    for evil in ["../model-00001-of-00002.safetensors", "sub/x.safetensors", "/etc/passwd", "..", "", "a\\b"] {
        let dir = sharded_with_index(|map| {
            map.insert("model.norm.weight".into(), json!(evil));
        });
        refused(dir.path(), "model.safetensors.index.json", &["not a plain file name"]);
    }
}

#[test]
fn inconsistent_shards_are_refused() {
    let second = "model-00002-of-00002.safetensors";
    // The index puts a tensor in the other shard.
    let dir = sharded_with_index(|map| {
        map.insert("model.embed_tokens.weight".into(), json!(second));
    });
    refused(dir.path(), "model-00001-of-00002.safetensors", &["model.embed_tokens.weight", "puts in"]);
    // The index lists a tensor no shard holds.
    let dir = sharded_with_index(|map| {
        map.insert("model.layers.0.mlp.gate_proj.bias".into(), json!(second));
    });
    refused(dir.path(), "model.safetensors.index.json", &["model.layers.0.mlp.gate_proj.bias", "does not hold it"]);
    // A shard holds a tensor the index does not list.
    let dir = sharded_with_index(|map| {
        map.remove("model.norm.weight");
    });
    refused(dir.path(), second, &["model.norm.weight", "does not list"]);
    // A shard is missing.
    let dir = sharded_with_index(|_| {});
    std::fs::remove_file(dir.path().join(second)).unwrap();
    match hf::load_weights(dir.path()).unwrap_err() {
        ModelError::Io { path, .. } => assert!(path.ends_with(second)),
        other => panic!("{other:?}"),
    }
    // A tensor in both shards.
    let w = random(false, 15);
    let dir = model_dir(&w, Dtype::F32, 2);
    let tensors = raw(&w, Dtype::F32);
    let mut second_part: Raw = tensors[tensors.len().div_ceil(2)..].to_vec();
    second_part.push(tensors[0].clone());
    std::fs::write(dir.path().join(second), safetensors_bytes(&second_part)).unwrap();
    let (_, reason) = format_reason(hf::load_weights(dir.path()).unwrap_err());
    assert!(reason.contains("model.embed_tokens.weight"), "{reason}");
    // An empty index.
    let dir = sharded_with_index(|map| map.clear());
    refused(dir.path(), "model.safetensors.index.json", &["weight_map is empty"]);
}

// ---- tokenizer ----

const UNK: u32 = 0;
const BOS: usize = 1;
const EOS: usize = 2;
/// `<0x00>` ..= `<0xFF>` follow the three special tokens.
const BYTE0: usize = 3;

/// The pieces after the byte tokens, and the merges that build them (in rank order).
const PIECES: [&str; 18] = [
    "▁", "h", "e", "l", "o", "w", "r", "d", "ll", "▁h", "▁he", "▁hell", "▁hello", "▁w", "or", "▁wor", "▁worl", "▁world",
];
const MERGES: [&str; 10] = ["l l", "▁ h", "▁h e", "▁he ll", "▁hell o", "▁ w", "o r", "▁w or", "▁wor l", "▁worl d"];

fn piece_id(piece: &str) -> usize {
    BYTE0 + 256 + PIECES.iter().position(|p| *p == piece).unwrap()
}

/// An added special token as tokenizer.json lists it.
fn special_token(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true})
}

/// A Llama-2-style tokenizer.json (SentencePiece BPE as `transformers` converts it: "▁" for
/// spaces prepended, byte fallback, BOS added by the post-processor), with a vocabulary of 277.
fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for (id, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), json!(id));
    }
    for b in 0..256 {
        vocab.insert(format!("<0x{b:02X}>"), json!(BYTE0 + b));
    }
    for p in PIECES {
        vocab.insert(p.to_string(), json!(piece_id(p)));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special_token(0, "<unk>"), special_token(1, "<s>"), special_token(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": MERGES
        }
    })
}

#[test]
fn tokenizer_encodes_and_decodes_like_llama_2() {
    let w = random(false, 20);
    let dir = model_dir(&w, Dtype::F32, 1);
    let (loaded, tok) = hf::load(dir.path()).unwrap();
    assert_eq!(loaded, w);
    assert_eq!(tok.bos(), Some(BOS));
    assert_eq!(tok.eos(), [EOS]);
    let ids = tok.encode("hello world", true).unwrap();
    assert_eq!(ids, [BOS, piece_id("▁hello"), piece_id("▁world")]);
    assert_eq!(tok.encode("hello world", false).unwrap(), ids[1..]);
    assert_eq!(tok.decode(&ids).unwrap(), "hello world");
    // "é" is not a piece: its UTF-8 bytes fall back to byte tokens, and decode back.
    let ids = tok.encode("hé", false).unwrap();
    assert_eq!(ids, [piece_id("▁h"), BYTE0 + 0xC3, BYTE0 + 0xA9]);
    assert_eq!(tok.decode(&ids).unwrap(), "hé");
    assert_eq!(tok.decode(&[EOS]).unwrap(), "");
    assert_eq!(tok.inner().get_vocab_size(true), 277);
    assert_eq!(UNK, tok.inner().token_to_id("<unk>").unwrap());
}

#[test]
fn special_ids_come_from_tokenizer_config_then_config() {
    let w = random(false, 21);
    let dir = model_dir(&w, Dtype::F32, 1);
    let mut c = config(&w.params);
    c["bos_token_id"] = json!(null);
    c["eos_token_id"] = json!([2, 5]);
    write_json(&dir.path().join("config.json"), &c);
    let tok = HfTokenizer::load(dir.path()).unwrap();
    assert_eq!((tok.bos(), tok.eos()), (None, &[2, 5][..]));
    let (_, reason) = format_reason(tok.encode("hello", true).unwrap_err());
    assert!(reason.contains("no BOS token"), "{reason}");
    write_json(
        &dir.path().join("tokenizer_config.json"),
        &json!({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "<0x0A>", "add_bos_token": true}),
    );
    let tok = HfTokenizer::load(dir.path()).unwrap();
    assert_eq!((tok.bos(), tok.eos()), (Some(BOS), &[BYTE0 + 0x0A, 2, 5][..]));
    write_json(&dir.path().join("tokenizer_config.json"), &json!({"bos_token": "<|begin_of_text|>"}));
    let (at, reason) = format_reason(HfTokenizer::load(dir.path()).unwrap_err());
    assert_eq!(at, "tokenizer_config.json");
    assert!(reason.contains("bos_token") && reason.contains("<|begin_of_text|>"), "{reason}");
}

#[test]
fn tokenizer_ids_beyond_the_model_vocab_are_refused() {
    let w = random(false, 22);
    let dir = model_dir(&w, Dtype::F32, 1);
    let tok = HfTokenizer::load(dir.path()).unwrap();
    let (_, reason) = format_reason(tok.decode(&[1, 300]).unwrap_err());
    assert!(reason.contains("300") && reason.contains("vocab_size 300"), "{reason}");
    assert!(tok.decode(&[usize::MAX]).is_err());
    // A model whose vocabulary is smaller than the tokenizer's.
    let mut c = config(&w.params);
    c["vocab_size"] = json!(270);
    write_json(&dir.path().join("config.json"), &c);
    let tok = HfTokenizer::load(dir.path()).unwrap();
    assert_eq!(tok.encode("hé", false).unwrap(), [268, BYTE0 + 0xC3, BYTE0 + 0xA9]);
    let (_, reason) = format_reason(tok.encode("hello", false).unwrap_err());
    assert!(reason.contains(&format!("token id {}", piece_id("▁hello"))), "{reason}");
    c["vocab_size"] = json!(2);
    write_json(&dir.path().join("config.json"), &c);
    let (_, reason) = format_reason(HfTokenizer::load(dir.path()).unwrap_err());
    assert!(reason.contains("EOS id 2"), "{reason}");
}

#[test]
fn bad_tokenizer_files_are_refused() {
    let w = random(false, 23);
    let dir = model_dir(&w, Dtype::F32, 1);
    std::fs::write(dir.path().join("tokenizer.json"), b"{\"model\": 3}").unwrap();
    let (at, _) = format_reason(HfTokenizer::load(dir.path()).unwrap_err());
    assert_eq!(at, "tokenizer.json");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert!(matches!(HfTokenizer::load(dir.path()).unwrap_err(), ModelError::Io { .. }));
    let dir = model_dir(&w, Dtype::F32, 1);
    std::fs::write(dir.path().join("tokenizer_config.json"), b"{").unwrap();
    let (at, _) = format_reason(HfTokenizer::load(dir.path()).unwrap_err());
    assert_eq!(at, "tokenizer_config.json");
}

/// GPT-2's byte-to-character table, which byte-level BPE vocabularies (Llama 3's) are written in:
/// printable bytes stand for themselves, the rest for characters from U+0100 on.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + rank).unwrap()
}

/// Llama 3's pre-tokenizer pattern: its `\s+(?!\S)` look-ahead needs a regex engine with
/// look-around (onig, or the pure-Rust fancy-regex this crate builds the tokenizers crate with).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A Llama-3-style tokenizer.json: byte-level BPE (id = byte value), two merges, three added
/// special tokens from 258.
fn llama3_tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), json!(b));
    }
    vocab.insert("he".into(), json!(256));
    vocab.insert(format!("{}w", byte_char(b' ')), json!(257));
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special_token(258, "<|begin_of_text|>"), special_token(259, "<|end_of_text|>"), special_token(260, "<|eot_id|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
            "vocab": vocab, "merges": ["h e", format!("{} w", byte_char(b' '))]
        }
    })
}

#[test]
fn tokenizer_runs_llama_3_byte_level_with_its_look_ahead_pattern() {
    let w = random(false, 24);
    let dir = model_dir(&w, Dtype::F32, 1);
    std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&llama3_tokenizer_json()).unwrap()).unwrap();
    let mut c = config(&w.params);
    c["bos_token_id"] = json!(258);
    c["eos_token_id"] = json!([259, 260]);
    write_json(&dir.path().join("config.json"), &c);
    write_json(
        &dir.path().join("tokenizer_config.json"),
        &json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    );
    let tok = HfTokenizer::load(dir.path()).unwrap();
    assert_eq!((tok.bos(), tok.eos()), (Some(258), &[260, 259][..]));
    // "he", then of the two spaces the look-ahead keeps one alone and gives the other to "w".
    let ids = tok.encode("he  w", true).unwrap();
    assert_eq!(ids, [258, 256, usize::from(b' '), 257]);
    assert_eq!(tok.decode(&ids).unwrap(), "he  w");
    // Special tokens written in the text are matched; bytes outside the merges stay bytes.
    assert_eq!(tok.encode("é<|eot_id|>", false).unwrap(), [0xC3, 0xA9, 260]);
    assert_eq!(tok.decode(&[0xC3, 0xA9, 260]).unwrap(), "é");
}

/// `tests/fixtures/hf_llama2_tokenizer.json` (what the CLI tests give a Hugging Face directory)
/// is this file's Llama-2-style tokenizer; with `TT_WRITE_HF_FIXTURE=1` the test rewrites it.
#[test]
fn the_committed_tokenizer_fixture_is_the_one_built_here() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_llama2_tokenizer.json");
    let built = serde_json::to_string_pretty(&tokenizer_json()).unwrap();
    if std::env::var_os("TT_WRITE_HF_FIXTURE").is_some() {
        std::fs::write(&path, &built).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), built);
}
