//! The model verbs as a new user runs them, on a llama2.c checkpoint and tokenizer the test
//! writes (random weights, a synthetic tokenizer): generate streams text and reports its rate on
//! stderr; quantize and prune write units that generate reads back; bench prints JSON; profile
//! prints the per-op table; bad flags and files are one-line errors.

use std::path::Path;
use std::process::Command;

use tt_models::llama2c::checkpoint;

fn tito(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tito")).args(args).output().expect("tito runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A llama2.c model and its tokenizer.bin beside it, in `dir`.
fn write_model(dir: &Path) -> String {
    tt_models::testing::write_tiny_llama2c(dir, 64).unwrap().display().to_string()
}

#[test]
fn generate_quantize_prune_bench_and_profile_a_llama2c_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path());
    let args = ["generate", "--model", &model, "--prompt", "hello", "--max-tokens", "12"];
    let (code, out, err) = tito(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("tok/s"), "the rate goes to stderr: {err}");
    assert!(!out.contains("tok/s"), "stdout is the text alone: {out}");
    // Greedy is deterministic; sampling is seeded.
    assert_eq!(tito(&args).1, out);
    let sampled =
        |seed: &str| tito(&[&args[..], &["--temperature", "0.9", "--top-p", "0.9", "--seed", seed]].concat()).1;
    assert_eq!(sampled("3"), sampled("3"));

    for weights in ["int8", "int4"] {
        let unit = dir.path().join(weights).display().to_string();
        let (code, _, err) = tito(&["quantize", "--model", &model, "--out", &unit, "--weights", weights]);
        assert_eq!(code, 0, "{err}");
        let (code, text, err) = tito(&["generate", "--model", &unit, "--prompt", "hello", "--max-tokens", "12"]);
        assert_eq!(code, 0, "{weights}: {err}");
        assert!(!text.trim().is_empty() || err.contains("tok/s"), "{weights}");
    }
    // Static int8: activation scales calibrated on text (and refused for int4).
    let text = dir.path().join("calib.txt");
    std::fs::write(&text, "hello world, hello hello. ".repeat(40)).unwrap();
    let static8 = dir.path().join("static8").display().to_string();
    let calib =
        ["quantize", "--model", &model, "--out", &static8, "--weights", "int8", "--calibrate", text.to_str().unwrap()];
    let (code, _, err) = tito(&calib);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tito(&["generate", "--model", &static8, "--prompt", "hello", "--max-tokens", "8"]).0, 0);
    let (code, _, err) = tito(&[&calib[..6], &["int4", "--calibrate", text.to_str().unwrap()]].concat());
    assert_ne!(code, 0);
    assert!(err.contains("--calibrate applies to int8"), "{err}");

    let pruned = dir.path().join("pruned").display().to_string();
    let (code, _, err) = tito(&["prune", "--model", &model, "--out", &pruned, "--amount", "0.5"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("parameters"), "{err}");
    assert_eq!(tito(&["generate", "--model", &pruned, "--prompt", "hello", "--max-tokens", "4"]).0, 0);

    let (code, out, err) = tito(&["bench", "--model", &model, "--prefill", "16", "--decode", "8"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("bench prints JSON");
    for k in ["prefill_tok_s", "decode_tok_s", "peak_rss_bytes"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
    assert_eq!(v["projection_formats"], serde_json::json!(["f32-packed"]), "an f32 file runs packed");
    // A Q8_0 file keeps its int8 layers unless told otherwise.
    let q80 = dir.path().join("model_q80.bin");
    let w = checkpoint::read(Path::new(&model)).unwrap();
    checkpoint::write_q80(&q80, &w, 32).unwrap();
    let q80 = q80.display().to_string();
    let (code, out, err) = tito(&["bench", "--model", &q80, "--prefill", "8", "--decode", "4"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["projection_formats"], serde_json::json!(["int8-dyn/group"]), "{v}");
    // Thread counts: the flag sets the process's team (3 members: more than this machine's cores
    // is allowed) and the same greedy text comes out; a bad count is an error naming it.
    let (code, out, err) = tito(&["bench", "--model", &model, "--prefill", "8", "--decode", "4", "--threads", "3"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["threads"], 3, "{v}");
    let gen =
        |t: &str| tito(&["generate", "--model", &model, "--prompt", "hello", "--max-tokens", "12", "--threads", t]);
    assert_eq!(gen("1").1, gen("3").1, "the text does not depend on the thread count");
    for bad in ["0", "257", "two"] {
        let (code, _, err) = gen(bad);
        assert_ne!(code, 0);
        assert!(err.contains("--threads") || err.contains("threads"), "{bad}: {err}");
    }
    let (code, out, err) = tito(&["profile", "--model", &model, "--weights", "int8"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("FLOPs per token") && out.contains("linear"), "{out}");
}

#[test]
fn bad_models_and_flags_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path());
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not a model").unwrap();
    let other = dir.path().join("notes");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("mine.txt"), b"keep me").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", "--model", junk.to_str().unwrap(), "--prompt", "x"], "junk.bin"),
        (vec!["generate", "--model", "/nonexistent/model.bin", "--prompt", "x"], "no such file"),
        (vec!["generate", "--model", &model, "--prompt", "x", "--temperature=-1"], "--temperature"),
        (vec!["generate", "--model", &model, "--prompt", "x", "--top-p", "1.5"], "--top-p"),
        (
            vec!["quantize", "--model", &model, "--out", other.to_str().unwrap(), "--weights", "int8"],
            "not a checkpoint unit",
        ),
        (vec!["prune", "--model", &model, "--out", "x", "--amount", "1.5"], "--amount"),
    ];
    for (args, needle) in cases {
        let (code, _, err) = tito(&args);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(std::fs::read(other.join("mine.txt")).unwrap(), b"keep me", "nothing of the user's is touched");
    // A llama2.c model without its tokenizer says where to put it.
    std::fs::remove_file(dir.path().join("tokenizer.bin")).unwrap();
    let (code, _, err) = tito(&["generate", "--model", &model, "--prompt", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("--tokenizer"), "{err}");
}

/// A Hugging Face directory: config.json, model.safetensors (f32) and a Llama-2-style
/// tokenizer.json (the tokenizer fixture of tt-models' tests, vocabulary 277).
fn write_hf(dir: &Path) -> String {
    let tokenizer =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/tt-models/tests/fixtures/hf_llama2_tokenizer.json");
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
    let (d, hidden, layers, heads, kv, vocab, seq) = (32usize, 64usize, 2usize, 4usize, 2usize, 277usize, 64usize);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
            "intermediate_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": seq,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": 2
        }))
        .unwrap(),
    )
    .unwrap();
    let hd = d / heads;
    let mut tensors: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![vocab, d])];
    for l in 0..layers {
        for (n, s) in [
            ("input_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![heads * hd, d]),
            ("self_attn.k_proj.weight", vec![kv * hd, d]),
            ("self_attn.v_proj.weight", vec![kv * hd, d]),
            ("self_attn.o_proj.weight", vec![d, heads * hd]),
            ("post_attention_layernorm.weight", vec![d]),
            ("mlp.gate_proj.weight", vec![hidden, d]),
            ("mlp.up_proj.weight", vec![hidden, d]),
            ("mlp.down_proj.weight", vec![d, hidden]),
        ] {
            tensors.push((format!("model.layers.{l}.{n}"), s));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![d]));
    tensors.push(("lm_head.weight".into(), vec![vocab, d]));
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(t, (_, s))| {
            let n: usize = s.iter().product();
            let one = s.len() == 1;
            (0..n)
                .flat_map(|i| {
                    (if one { 1.0 } else { (((i * 31 + t * 17) % 101) as f32 / 101.0 - 0.5) * 0.4 }).to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s), b)| {
            (n.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    dir.display().to_string()
}

#[test]
fn generate_and_quantize_a_hugging_face_model() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    let model = write_hf(&hf);
    let (code, out, err) = tito(&["generate", "--model", &model, "--prompt", "hello world", "--max-tokens", "10"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Hugging Face") && err.contains("tok/s"), "{err}");
    let unit = dir.path().join("int4").display().to_string();
    let (code, _, err) = tito(&["quantize", "--model", &model, "--out", &unit, "--weights", "int4"]);
    assert_eq!(code, 0, "{err}");
    let (code, again, err) = tito(&["generate", "--model", &unit, "--prompt", "hello world", "--max-tokens", "10"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty() && !again.is_empty());
}
