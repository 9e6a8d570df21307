//! Module 13 — the GPT: parameter count, training to overfit, checkpoints, generation, corpus.

mod common;

use tt_tensor::loss::cross_entropy;
use tt_tensor::optim::{Adam, Optimizer};
use tt_tensor::{no_grad, Module};
use tt_transformer::corpus;
use tt_transformer::generate::{generate, GenerateConfig, Sampling};
use tt_transformer::train::{lr_at, train, TrainConfig, TrainData};
use tt_transformer::{checkpoint, CharTokenizer, Gpt, Tokenizer, TransformerError};

#[test]
fn parameter_count_matches_the_formula() {
    let cfg = common::tiny_config(10, 0);
    let m = Gpt::new(cfg.clone()).unwrap();
    let (d, l, v, s) = (16, 2, 10, 32);
    // per block: 2 LayerNorms (4d) + qkv (3d²+3d) + proj (d²+d) + fc (4d²+4d) + proj (4d²+d) = 12d² + 13d
    let per_block = 12 * d * d + 13 * d;
    assert_eq!(m.num_parameters(), v * d + s * d + l * per_block + 2 * d, "tied head adds nothing");
    assert_eq!(m.non_embedding_parameters(), l * per_block + 2 * d);
    // State-dict keys (checkpoint format): derived from the children, pinned here.
    let names: Vec<String> = m.named_parameters().into_iter().map(|p| p.0).collect();
    assert_eq!(names[..4], ["tok_emb.weight", "pos_emb.weight", "blocks.0.ln1.weight", "blocks.0.ln1.bias"]);
    assert_eq!(
        names[4..8],
        ["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias"]
    );
    assert_eq!(names[names.len() - 2..], ["ln_f.weight", "ln_f.bias"]);
    assert_eq!(names.len(), 2 + 12 * l + 2, "12 tensors per block: 2 norms and 4 linears, weight and bias each");
    let mut untied = cfg;
    untied.tie_weights = false;
    assert_eq!(Gpt::new(untied).unwrap().num_parameters(), m.num_parameters() + v * d);
}

#[test]
fn invalid_configs_and_inputs_are_errors() {
    let mut cfg = common::tiny_config(10, 0);
    cfg.n_heads = 3;
    assert!(matches!(Gpt::new(cfg), Err(TransformerError::Config(_))));
    let m = common::tiny(10, 0);
    assert!(m.forward_ids(&[1, 2, 10], 1, 3).is_err(), "id out of vocabulary");
    assert!(m.forward_ids(&[1, 2, 3], 2, 2).is_err(), "ids do not fill the batch");
    let long = vec![1; 33];
    assert!(matches!(m.forward_ids(&long, 1, 33), Err(TransformerError::ContextOverflow { .. })));
}

#[test]
fn tiny_model_overfits_one_batch() {
    let m = common::tiny(12, 1);
    let x: Vec<usize> = (0..2 * 16).map(|i| (i * 7 + 3) % 12).collect();
    let y: Vec<usize> = (0..2 * 16).map(|i| (i * 5 + 1) % 12).collect();
    let mut opt = Adam::new(m.parameters(), 1e-2, 0.0).unwrap();
    let mut last = f32::MAX;
    for _ in 0..300 {
        opt.zero_grad();
        let loss = cross_entropy(&m.forward_ids(&x, 2, 16).unwrap(), &y).unwrap();
        last = loss.item().unwrap();
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    assert!(last < 0.02, "final loss {last}");
}

#[test]
fn lr_schedule_warms_up_then_decays() {
    let cfg = TrainConfig {
        steps: 100,
        batch_size: 1,
        seq_len: 4,
        lr: 1.0,
        min_lr: 0.1,
        warmup_steps: 10,
        weight_decay: 0.0,
        grad_clip: 1.0,
        eval_every: 10,
        eval_windows: 1,
        long_every: 0,
        long_seq_len: 0,
        data_parallel: 1,
        seed: 0,
    };
    assert!((lr_at(0, &cfg) - 0.1).abs() < 1e-6);
    assert!((lr_at(9, &cfg) - 1.0).abs() < 1e-6);
    assert!((lr_at(10, &cfg) - 1.0).abs() < 1e-6);
    assert!((lr_at(55, &cfg) - 0.55).abs() < 1e-6, "cosine midpoint");
    assert!((lr_at(100, &cfg) - 0.1).abs() < 1e-6);
    assert!(lr_at(30, &cfg) > lr_at(60, &cfg));
}

fn small_train_cfg(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 4,
        seq_len: 16,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 5,
        weight_decay: 0.01,
        grad_clip: 1.0,
        eval_every: steps,
        eval_windows: 4,
        long_every: 0,
        long_seq_len: 0,
        data_parallel: 2,
        seed: 3,
    }
}

#[test]
fn training_is_seeded_and_reduces_validation_loss() {
    let text = "Q: hello!\nA: hi!\n".repeat(40);
    let tok = CharTokenizer::from_corpus(&text);
    let ids: Vec<usize> =
        tt_transformer::Tokenize::encode(&tok, &text).unwrap().into_iter().map(|t| t as usize).collect();
    let run = || {
        let m = common::tiny(tt_transformer::Tokenize::vocab_size(&tok), 4);
        let before = tt_transformer::train::evaluate_loss(&m, &ids, 16, 4).unwrap();
        let r = train(&m, &TrainData::plain(ids.clone()), &ids, &small_train_cfg(40), false, |_| {}).unwrap();
        (before, r, m.tok_emb.weight.to_vec())
    };
    let (before, r1, w1) = run();
    let (_, r2, w2) = run();
    assert!(r1.final_val_loss < before * 0.5, "{} → {}", before, r1.final_val_loss);
    assert_eq!(r1.final_val_loss, r2.final_val_loss);
    assert_eq!(w1, w2, "same seed, same weights");
    assert!((r1.final_val_perplexity - r1.final_val_loss.exp()).abs() < 1e-4);
    assert!(r1.tokens_per_second > 0.0 && r1.tokens == 40 * 4 * 16);
}

/// Path of a checkpoint part's content-addressed file, from the manifest.
fn stored(dir: &std::path::Path, part: &str) -> std::path::PathBuf {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    dir.join(m["files"][part]["file"].as_str().unwrap())
}

#[test]
fn checkpoint_round_trip_is_bit_exact() {
    let dir = std::env::temp_dir().join(format!("tt-m13-ck-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tok = Tokenizer::Char(CharTokenizer::from_corpus("abcdefghi"));
    let m = common::tiny(10, 11);
    checkpoint::save(&dir, &m, &tok, serde_json::json!({"note": "test"})).unwrap();
    assert!(checkpoint::exists(&dir));
    let (m2, tok2, info) = checkpoint::load(&dir).unwrap();
    assert_eq!(info["note"], "test");
    assert_eq!(tok2, tok);
    let ids = [1, 2, 3, 4, 5];
    let a = no_grad(|| m.forward_ids(&ids, 1, 5)).unwrap().to_vec();
    let b = no_grad(|| m2.forward_ids(&ids, 1, 5)).unwrap().to_vec();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));

    // Truncated weights.
    let w = stored(&dir, "model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    let e = checkpoint::load(&dir).err().unwrap().to_string();
    assert!(e.contains("model.") && e.contains("truncated"), "{e}");
    // One flipped bit.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    std::fs::write(&w, &flipped).unwrap();
    let e = checkpoint::load(&dir).err().unwrap().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    std::fs::write(&w, &bytes).unwrap();
    // An edited config (n_heads changes no weight shape, so only the checksum can tell).
    let c = stored(&dir, "config.json");
    let text = std::fs::read_to_string(&c).unwrap();
    std::fs::write(&c, text.replace("\"n_heads\": 2", "\"n_heads\": 4")).unwrap();
    let e = checkpoint::load(&dir).err().unwrap().to_string();
    assert!(e.contains("config.") && e.contains("checksum mismatch"), "{e}");
    std::fs::write(&c, &text).unwrap();
    checkpoint::load(&dir).unwrap();
    // Missing files.
    std::fs::remove_file(stored(&dir, "tokenizer.json")).unwrap();
    let e = checkpoint::load(&dir).err().unwrap().to_string();
    assert!(e.contains("tokenizer.") && e.contains("missing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let e = checkpoint::load(&dir).err().unwrap().to_string();
    assert!(e.contains("manifest.json") && e.contains("missing"), "{e}");
    assert!(!checkpoint::exists(&dir));
}

#[test]
fn gpt_module_forward_rejects_ids_that_are_not_vocabulary_integers() {
    let m = common::tiny(10, 0);
    for bad in [-1.0f32, 0.5, 10.0, f32::NAN] {
        let x = tt_tensor::Tensor::from_vec(vec![1.0, bad], &[1, 2]).unwrap();
        let e = m.forward(&x).unwrap_err().to_string();
        assert!(e.contains("is not an integer in 0..10"), "{bad}: {e}");
    }
    let ok = tt_tensor::Tensor::from_vec(vec![1.0, 9.0], &[1, 2]).unwrap();
    assert_eq!(m.forward(&ok).unwrap().shape(), vec![1, 2, 10]);
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_loadable() {
    let dir = std::env::temp_dir().join(format!("tt-m13-int-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tok = Tokenizer::Char(CharTokenizer::from_corpus("abcdefghi"));
    let old = common::tiny(10, 1);
    checkpoint::save(&dir, &old, &tok, serde_json::json!("old")).unwrap();
    let new = common::tiny(10, 2);
    for parts_written in 0..=3 {
        let e = checkpoint::save_interrupted(&dir, &new, &tok, parts_written).unwrap_err().to_string();
        assert!(e.contains("interrupted"), "{e}");
        let (m, _, info) = checkpoint::load(&dir).unwrap();
        assert_eq!(info, "old", "after {parts_written} parts");
        assert_eq!(m.tok_emb.weight.to_vec(), old.tok_emb.weight.to_vec());
    }
    // Hostile manifests: a size past u64, a path out of the directory. Errors, not panics.
    let mpath = dir.join("manifest.json");
    let good = std::fs::read_to_string(&mpath).unwrap();
    let m: serde_json::Value = serde_json::from_str(&good).unwrap();
    let size = m["files"]["config.json"]["bytes"].to_string();
    let file = m["files"]["config.json"]["file"].as_str().unwrap().to_string();
    for (from, to, expect) in [
        (format!("\"bytes\": {size}"), "\"bytes\": 18446744073709551615".to_string(), "config"),
        (file.clone(), "../../etc/passwd".to_string(), "outside the checkpoint"),
    ] {
        std::fs::write(&mpath, good.replacen(&from, &to, 1)).unwrap();
        let e = checkpoint::load(&dir).err().unwrap().to_string();
        assert!(e.contains(expect), "{e}");
    }
    std::fs::write(&mpath, &good).unwrap();
    // A complete save replaces it and removes the old generation's files.
    checkpoint::save(&dir, &new, &tok, serde_json::json!("new")).unwrap();
    assert_eq!(checkpoint::load(&dir).unwrap().2, "new");
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 5, "three parts, the manifest and its lock");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostile_checkpoint_parts_are_errors_before_allocation() {
    let dir = std::path::Path::new("ck");
    let tok = Tokenizer::Char(CharTokenizer::from_corpus("abcdefghi"));
    let m = common::tiny(10, 3);
    let weights = tt_tensor::serialize::to_safetensors_bytes(&m.named_parameters(), None).unwrap();
    let tok_json = serde_json::to_vec(&tok).unwrap();
    let config = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = serde_json::json!({"model": m.config, "info": null});
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let load = |w: &[u8], t: &[u8], c: &[u8]| checkpoint::from_parts(w, t, c, dir).err().map(|e| e.to_string());
    assert_eq!(load(&weights, &tok_json, &config(&|_| ())), None);
    // Sizes a file cannot justify: rejected by the caps or by the weights' shapes, never allocated.
    for (field, value, expect) in [
        ("max_seq_len", 1_000_000_000u64, "max_seq_len"),
        ("n_layers", 1_000_000_000, "n_layers"),
        ("d_model", 1 << 40, "d_model"),
        ("n_layers", 3, "blocks.2"),
        ("max_seq_len", 64, "pos_emb.weight"),
        ("n_heads", 3, "n_heads 3"),
    ] {
        let e = load(&weights, &tok_json, &config(&|v| v["model"][field] = value.into())).unwrap();
        assert!(e.contains("config") && e.contains(expect), "{field} = {value}: {e}");
    }
    // A non-finite weight.
    let nan = tt_tensor::Tensor::from_array(ndarray::ArrayD::from_elem(vec![10, 16], f32::NAN));
    let mut params = m.named_parameters();
    params[0].1 = nan;
    let bad = tt_tensor::serialize::to_safetensors_bytes(&params, None).unwrap();
    let e = load(&bad, &tok_json, &config(&|_| ())).unwrap();
    assert!(e.contains("non-finite") && e.contains("tok_emb.weight"), "{e}");
    // Tokenizers: a repeated character; a BPE merge naming an id that does not exist yet; a
    // merge list whose pieces double in length at every merge.
    let swapped = String::from_utf8(tok_json.clone()).unwrap().replacen("\"c\"", "\"b\"", 1);
    let e = load(&weights, swapped.as_bytes(), &config(&|_| ())).unwrap();
    assert!(e.contains("appears twice"), "{e}");
    let bpe = br#"{"kind":"bpe","merges":[[97,98],[300,97]]}"#;
    assert!(tt_transformer::Tokenizer::from_json(bpe).unwrap_err().to_string().contains("does not exist yet"));
    let doubling: Vec<[u32; 2]> = (0..40).map(|r| if r == 0 { [97, 97] } else { [255 + r, 255 + r] }).collect();
    let json = serde_json::to_vec(&serde_json::json!({"kind": "bpe", "merges": doubling})).unwrap();
    assert!(tt_transformer::Tokenizer::from_json(&json).unwrap_err().to_string().contains("over the cap"));
}

#[test]
fn generation_modes() {
    let m = common::tiny(10, 12);
    let prompt = [1usize, 2, 3];
    let g1 = generate(&m, &prompt, &GenerateConfig::greedy(8)).unwrap();
    let g2 = generate(&m, &prompt, &GenerateConfig::greedy(8)).unwrap();
    assert_eq!(g1.len(), 8);
    assert_eq!(g1, g2, "greedy is deterministic");
    // Greedy equals the arg-max of the full forward at each step.
    let mut seq = prompt.to_vec();
    for &tok in &g1 {
        let logits = no_grad(|| m.forward_ids(&seq, 1, seq.len())).unwrap().to_vec();
        let last = &logits[(seq.len() - 1) * 10..];
        assert_eq!(tok, tt_transformer::generate::argmax(last));
        seq.push(tok);
    }
    let sample = |seed, top_k, top_p| {
        let cfg = GenerateConfig {
            max_new_tokens: 12,
            sampling: Sampling::Sample { temperature: 1.5, top_k, top_p },
            seed,
            stop_tokens: vec![],
        };
        generate(&m, &prompt, &cfg).unwrap()
    };
    assert_eq!(sample(1, None, None), sample(1, None, None), "seeded sampling is reproducible");
    assert_ne!(sample(1, None, None), sample(2, None, None));
    assert_eq!(
        sample(5, Some(1), None),
        generate(&m, &prompt, &GenerateConfig::greedy(12)).unwrap(),
        "top-k 1 is greedy"
    );
    assert_eq!(
        sample(5, None, Some(1e-6)),
        generate(&m, &prompt, &GenerateConfig::greedy(12)).unwrap(),
        "tiny top-p is greedy"
    );
    // Stop token ends generation and is included.
    let stop = g1[2];
    let s = generate(&m, &prompt, &GenerateConfig::greedy(8).with_stop(&[stop])).unwrap();
    assert_eq!(s.last(), Some(&stop));
    assert!(s.len() <= 3);
    assert!(matches!(
        generate(&m, &prompt, &GenerateConfig::greedy(30)),
        Err(TransformerError::ContextOverflow { .. })
    ));
    let bad = GenerateConfig {
        max_new_tokens: 1,
        sampling: Sampling::Sample { temperature: 0.0, top_k: None, top_p: None },
        seed: 0,
        stop_tokens: vec![],
    };
    assert!(generate(&m, &prompt, &bad).is_err());
}

#[test]
fn corpus_splits_hold_out_questions_not_content() {
    let c = corpus::generate(0);
    let again = corpus::generate(0);
    assert_eq!(c.test, again.test, "deterministic");
    let train_q: std::collections::HashSet<_> = c.train.iter().map(|p| p.question.as_str()).collect();
    assert!(c.test.iter().all(|p| !train_q.contains(p.question.as_str())), "test questions unseen in training");
    assert!(c.val.iter().all(|p| !train_q.contains(p.question.as_str())));
    // Every test answer is taught in training by some question with the same answer.
    let train_answers: std::collections::HashSet<_> = c.train.iter().map(|p| p.answer.as_str()).collect();
    assert!(c.test.iter().all(|p| train_answers.contains(p.answer.as_str())));
    for cat in ["greeting", "fact", "arithmetic", "reasoning"] {
        assert!(c.test.iter().any(|p| p.category == cat), "{cat} missing from test");
    }
    assert!(c.test.len() >= 250, "{}", c.test.len());
    // Every item keeps at least two training phrasings.
    assert!(c.train.len() >= 2 * c.test.len());
}

#[test]
fn annotation_marks_answers_and_question_starts() {
    let a = corpus::annotate("Q: hi?\nA: yo\nQ: 1+1?\nA: 2\n");
    let marked: String = a.text.chars().zip(&a.answer_mask).filter(|(_, &m)| m).map(|(c, _)| c).collect();
    assert_eq!(marked, "yo\n2\n");
    assert_eq!(a.question_starts, vec![0, 13]);
    let c = corpus::generate(0);
    let ann = c.train_annotated(1, 0);
    assert_eq!(ann.answer_mask.len(), ann.text.chars().count());
    assert_eq!(ann.question_starts.len(), c.train.len());
}

#[test]
fn dropout_only_in_training_forward() {
    let mut cfg = common::tiny_config(10, 13);
    cfg.dropout = 0.2;
    let m = Gpt::new(cfg).unwrap();
    let ids = [1usize, 2, 3, 4];
    let eval = no_grad(|| m.forward_ids(&ids, 1, 4)).unwrap().to_vec();
    let t1 = no_grad(|| m.forward_train(&ids, 1, 4, 5)).unwrap().to_vec();
    let t2 = no_grad(|| m.forward_train(&ids, 1, 4, 5)).unwrap().to_vec();
    let t3 = no_grad(|| m.forward_train(&ids, 1, 4, 6)).unwrap().to_vec();
    assert_eq!(t1, t2, "same seed, same masks");
    assert_ne!(t1, t3);
    assert_ne!(t1, eval, "training forward drops");
    assert_eq!(eval, no_grad(|| m.forward_ids(&ids, 1, 4)).unwrap().to_vec(), "inference never drops");
    let mut bad = common::tiny_config(10, 0);
    bad.dropout = 1.0;
    assert!(Gpt::new(bad).is_err());
}

// ---- The seam: weight formats reach the GPT by name; training hooks; evaluation on any source ----

mod seam {
    use std::sync::Arc;

    use super::{common, small_train_cfg};
    use tt_tensor::nn::{map_linears, walk_mut};
    use tt_tensor::testing::TransposedF64;
    use tt_tensor::{no_grad, Module};
    use tt_transformer::eval::next_token_loss;
    use tt_transformer::generate::{generate, generate_with, FullRecompute, GenerateConfig};
    use tt_transformer::train::{default_loss, evaluate_loss, train, train_with_hooks, TrainData, TrainHooks};
    use tt_transformer::{Gpt, TransformerError};

    fn logits(m: &Gpt, ids: &[usize]) -> Vec<f32> {
        no_grad(|| m.forward_ids(ids, 2, ids.len() / 2)).unwrap().to_vec()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn gpt_computes_the_same_logits_through_another_weight_format() {
        for tie in [true, false] {
            let mut cfg = common::tiny_config(11, 2);
            cfg.tie_weights = tie;
            let plain = Gpt::new(cfg.clone()).unwrap();
            let ids: Vec<usize> = (0..2 * 9).map(|i| (i * 7 + 3) % 11).collect();
            let want = logits(&plain, &ids);
            for (error, should_match) in [(0.0, true), (1e-3, false)] {
                let mut m = Gpt::new(cfg.clone()).unwrap();
                let mut names = Vec::new();
                let n = map_linears(&mut m, |name, l| {
                    names.push(name.to_string());
                    l.set_projection(Arc::new(TransposedF64::wrong(l.projection()?.as_ref(), error)))
                })
                .unwrap();
                assert_eq!(n, 4 * cfg.n_layers + usize::from(!tie));
                assert_eq!(
                    names[..4],
                    ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc", "blocks.0.mlp.proj"]
                );
                let diff = max_diff(&logits(&m, &ids), &want);
                // f64 vs f32 sums through 2 blocks: ~1e-6 on O(1) logits.
                assert_eq!(diff <= 1e-5, should_match, "tie {tie}, error {error}: max |Δ| {diff}");
            }
        }
    }

    /// Built format by format, the model is `Gpt::new`'s with the same seed: same parameters
    /// (read through the formats), same logits; no linear weight is resident.
    #[test]
    fn a_gpt_built_format_by_format_is_gpt_new() {
        use tt_tensor::projection::DenseF32;
        for tie in [true, false] {
            let mut cfg = common::tiny_config(11, 4);
            cfg.tie_weights = tie;
            let plain = Gpt::new(cfg.clone()).unwrap();
            let mut paths = Vec::new();
            let built = Gpt::new_with(cfg.clone(), &mut |path, shape, draw| {
                paths.push(path.to_string());
                let w = draw();
                assert_eq!(w.dim(), shape, "{path}");
                Ok(Some(Arc::new(DenseF32::from_array(w))))
            })
            .unwrap();
            assert_eq!(paths.len(), 1 + 4 * cfg.n_layers + usize::from(!tie));
            assert_eq!(paths[..3], ["tok_emb", "blocks.0.attn.qkv", "blocks.0.attn.proj"]);
            let released = built.named_parameters().into_iter().filter(|(_, t)| t.is_released()).count();
            assert_eq!(released, paths.len());
            let bytes = |m: &Gpt| tt_tensor::serialize::to_safetensors_bytes(&m.named_parameters(), None).unwrap();
            assert_eq!(bytes(&built), bytes(&plain), "tie {tie}");
            let ids: Vec<usize> = (0..2 * 9).map(|i| (i * 7 + 3) % 11).collect();
            assert_eq!(logits(&built, &ids), logits(&plain, &ids));
            // A format's error stops the build, naming nothing half-made.
            let e = Gpt::new_with(cfg.clone(), &mut |path, _, _| {
                Err(tt_tensor::TensorError::InvalidArgument { op: "test", reason: path.to_string() })
            });
            assert!(e.is_err());
            // A loader that never draws: the layers hold its formats, nothing else is drawn.
            let zeros = Gpt::new_with(cfg.clone(), &mut |_, (o, i), _| {
                Ok(Some(Arc::new(DenseF32::from_array(ndarray::Array2::zeros((o, i))))))
            })
            .unwrap();
            assert!(zeros.blocks[0].mlp.fc.weight.to_vec().iter().all(|&w| w == 0.0));
        }
    }

    /// A tied head whose table carries a format decides like a `Linear`: a frozen-in-place table
    /// (no grad) under a training step runs the dense table through the graph; a released one is
    /// refused by name, never read silently.
    #[test]
    fn a_tied_head_with_a_format_decides_like_a_linear() {
        use tt_tensor::projection::DenseF32;
        let mut m = common::tiny(16, 1);
        let table = m.tok_emb.projection().unwrap().to_dense();
        m.tok_emb.set_projection(Arc::new(DenseF32::from_array(table))).unwrap();
        m.tok_emb.weight.set_requires_grad(false);
        let ids = [1usize, 2, 3];
        let logits = m.forward_ids(&ids, 1, 3).unwrap();
        logits.sum().backward().unwrap();
        assert!(m.blocks[0].mlp.fc.weight.grad().is_some(), "the other layers trained");
        m.tok_emb.weight.set_requires_grad(true);
        tt_tensor::nn::freeze(&mut m).unwrap();
        let e = m.forward_ids(&ids, 1, 3).unwrap_err().to_string();
        assert!(e.contains("tok_emb.weight"), "{e}");
        assert!(no_grad(|| m.forward_ids(&ids, 1, 3)).is_ok());
    }

    #[test]
    fn gpt_children_mut_walks_the_state_dict_tree() {
        let mut m = common::tiny(10, 0);
        let mut walked = Vec::new();
        walk_mut(&mut m, &mut |name, _| {
            walked.push(name.to_string());
            Ok(())
        })
        .unwrap();
        // Every parameter's owner (its name minus ".weight"/".bias") is a walked layer.
        for (p, _) in m.named_parameters() {
            let owner = &p[..p.rfind('.').unwrap()];
            assert!(owner == "pos_emb" || walked.iter().any(|w| w == owner), "{p} not reachable");
        }
        assert_eq!(walked.len(), 1 + 2 * (1 + 4 + 2 + 2) + 1);
    }

    #[test]
    fn full_recompute_source_matches_generate_and_evaluate_loss() {
        let m = common::tiny(13, 5);
        let prompt = [1, 4, 2];
        let cfg = GenerateConfig::greedy(12).with_stop(&[7]);
        assert_eq!(
            generate_with(&mut FullRecompute::new(&m), &prompt, &cfg).unwrap(),
            generate(&m, &prompt, &cfg).unwrap()
        );
        let ids: Vec<usize> = (0..200).map(|i| (i * i + 3) % 13).collect();
        let a = evaluate_loss(&m, &ids, 16, 5).unwrap();
        let b = next_token_loss(&mut FullRecompute::new(&m), &ids, 16, 5).unwrap();
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        // Context is checked before anything runs.
        let long = GenerateConfig::greedy(40);
        assert!(matches!(
            generate_with(&mut FullRecompute::new(&m), &prompt, &long),
            Err(TransformerError::ContextOverflow { .. })
        ));
        assert!(next_token_loss(&mut FullRecompute::new(&m), &ids, 40, 1).is_err());
    }

    fn data() -> (TrainData, Vec<usize>) {
        let ids: Vec<usize> = (0..400).map(|i| [1, 2, 3, 2, 5, 1, 4][i % 7]).collect();
        (TrainData::plain(ids.clone()), ids)
    }

    #[test]
    fn training_hooks_replace_the_loss_and_run_after_each_step() {
        let (data, ids) = data();
        let cfg = small_train_cfg(12);
        let plain = common::tiny(6, 1);
        train(&plain, &data, &ids, &cfg, false, |_| {}).unwrap();
        // A loss hook that is the default loss gives the very same model.
        let hooked = common::tiny(6, 1);
        let loss = |i: &tt_transformer::train::LossInput| default_loss(i);
        let hooks = TrainHooks { loss: Some(&loss), after_step: None, parameters: None };
        train_with_hooks(&hooked, &data, &ids, &cfg, hooks, false, |_| {}).unwrap();
        assert_eq!(plain.tok_emb.weight.to_vec(), hooked.tok_emb.weight.to_vec());
        // An after-step hook runs once per step and can hold a weight at zero (a pruning mask).
        let masked = common::tiny(6, 1);
        let mut steps = Vec::new();
        let mut after = |step: usize, m: &Gpt| -> tt_transformer::Result<()> {
            steps.push(step);
            m.blocks[0].mlp.fc.weight.data_mut()[[0, 0]] = 0.0;
            Ok(())
        };
        let hooks = TrainHooks { loss: None, after_step: Some(&mut after), parameters: None };
        train_with_hooks(&masked, &data, &ids, &cfg, hooks, false, |_| {}).unwrap();
        assert_eq!(steps, (0..12).collect::<Vec<_>>());
        assert_eq!(masked.blocks[0].mlp.fc.weight.data()[[0, 0]], 0.0);
        // A different loss gives a different model; a failing hook stops training with its error.
        let scaled = common::tiny(6, 1);
        let loss2 = |i: &tt_transformer::train::LossInput| Ok(default_loss(i)?.mul_scalar(3.0));
        train_with_hooks(
            &scaled,
            &data,
            &ids,
            &cfg,
            TrainHooks { loss: Some(&loss2), after_step: None, parameters: None },
            false,
            |_| {},
        )
        .unwrap();
        assert_ne!(plain.tok_emb.weight.to_vec(), scaled.tok_emb.weight.to_vec());
        let mut fail =
            |_: usize, _: &Gpt| -> tt_transformer::Result<()> { Err(TransformerError::Config("stop".into())) };
        let r = train_with_hooks(
            &common::tiny(6, 1),
            &data,
            &ids,
            &cfg,
            TrainHooks { loss: None, after_step: Some(&mut fail), parameters: None },
            false,
            |_| {},
        );
        assert!(matches!(r, Err(TransformerError::Config(m)) if m == "stop"));
    }

    #[test]
    fn training_hooks_choose_the_parameters_the_optimizer_updates() {
        let (data, ids) = data();
        let cfg = small_train_cfg(6);
        let m = common::tiny(6, 1);
        let (emb, fc) = (m.tok_emb.weight.to_vec(), m.blocks[0].mlp.fc.weight.to_vec());
        let hooks = TrainHooks { loss: None, after_step: None, parameters: Some(vec![m.tok_emb.weight.clone()]) };
        train_with_hooks(&m, &data, &ids, &cfg, hooks, false, |_| {}).unwrap();
        assert_ne!(m.tok_emb.weight.to_vec(), emb, "the listed parameter trains");
        assert_eq!(m.blocks[0].mlp.fc.weight.to_vec(), fc, "an unlisted one does not");
    }

    #[test]
    fn invalid_training_configs_are_errors_before_training() {
        let (data, ids) = data();
        let m = common::tiny(6, 1);
        for (what, cfg) in [
            ("steps", tt_transformer::train::TrainConfig { steps: 0, ..small_train_cfg(1) }),
            ("lr", tt_transformer::train::TrainConfig { lr: f32::NAN, ..small_train_cfg(1) }),
            ("lr", tt_transformer::train::TrainConfig { lr: -1.0, ..small_train_cfg(1) }),
            ("batch_size", tt_transformer::train::TrainConfig { batch_size: 0, ..small_train_cfg(1) }),
            ("eval_every", tt_transformer::train::TrainConfig { eval_every: 0, ..small_train_cfg(1) }),
        ] {
            let err = train(&m, &data, &ids, &cfg, false, |_| {}).unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
    }
}

#[test]
fn saving_a_model_whose_layer_carries_a_forward_transform_is_refused() {
    let dir = std::env::temp_dir().join(format!("tt-m13-transform-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tok = Tokenizer::Char(CharTokenizer::from_corpus("abcdefghi"));
    let mut m = common::tiny(10, 4);
    assert!(tt_tensor::nn::layer_transforms(&m).is_empty());
    tt_tensor::nn::map_linears(&mut m, |name, l| {
        if name == "blocks.1.mlp.fc" {
            l.set_transform(Some(std::sync::Arc::new(tt_tensor::testing::DoubledWeight)));
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(tt_tensor::nn::layer_transforms(&m), vec![("blocks.1.mlp.fc".to_string(), "doubled")]);
    let e = checkpoint::save(&dir, &m, &tok, serde_json::Value::Null).unwrap_err().to_string();
    assert!(e.contains("blocks.1.mlp.fc") && e.contains("doubled"), "{e}");
    assert!(!checkpoint::exists(&dir), "nothing was published");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- The one generation loop: events, batching, sources without a cache ----

mod generation_loop {
    use super::common;
    use tt_transformer::generate::{
        generate, generate_batch, generate_traced, Event, FullRecompute, GenerateConfig, NextTokenSource, Sampling,
        WithoutCache,
    };

    #[derive(Debug, PartialEq)]
    enum Seen {
        Token(usize, usize),
        First,
        Finished(usize, Vec<usize>),
    }

    fn record(events: &mut Vec<Seen>) -> impl FnMut(Event<'_>) + '_ {
        |e| {
            events.push(match e {
                Event::Token { row, token } => Seen::Token(row, token),
                Event::First => Seen::First,
                Event::Finished { row, tokens } => Seen::Finished(row, tokens.to_vec()),
            })
        }
    }

    #[test]
    fn events_are_each_token_then_first_then_each_rows_end_once() {
        let m = common::tiny(11, 3);
        let prompts: [&[usize]; 2] = [&[1, 2, 3], &[4, 5, 6]];
        // Stop on the first token row 0 generates, so the rows end at different steps.
        let first0 = generate(&m, prompts[0], &GenerateConfig::greedy(1)).unwrap()[0];
        let cfg = GenerateConfig::greedy(6).with_stop(&[first0]);
        let mut events = Vec::new();
        let trace =
            generate_traced(&mut FullRecompute::batched(&m, 2), &prompts, &cfg, &mut record(&mut events)).unwrap();
        assert_eq!(trace.tokens[0], vec![first0]);
        // Rebuild the events the rules promise from the trace alone.
        let mut want = Vec::new();
        let steps = trace.tokens.iter().map(Vec::len).max().unwrap();
        for step in 0..steps {
            for (row, t) in trace.tokens.iter().enumerate() {
                if step < t.len() {
                    want.push(Seen::Token(row, t[step]));
                }
            }
            if step == 0 {
                want.push(Seen::First);
            }
            for (row, t) in trace.tokens.iter().enumerate() {
                if step + 1 == t.len() {
                    want.push(Seen::Finished(row, t.clone()));
                }
            }
        }
        assert_eq!(events, want);
        // One timed step per token of the longest row; the first covers the prompt.
        assert_eq!(trace.step_seconds.len(), steps);
        assert!(trace.step_seconds.iter().all(|&s| s > 0.0));
    }

    #[test]
    fn nothing_to_generate_still_ends_every_row() {
        let m = common::tiny(11, 3);
        let mut events = Vec::new();
        let trace = generate_traced(
            &mut FullRecompute::batched(&m, 2),
            &[&[1], &[2]],
            &GenerateConfig::greedy(0),
            &mut record(&mut events),
        )
        .unwrap();
        assert_eq!(events, vec![Seen::Finished(0, vec![]), Seen::Finished(1, vec![])]);
        assert!(trace.step_seconds.is_empty());
    }

    #[test]
    fn a_batch_generates_what_each_row_generates_alone_with_its_seed() {
        let m = common::tiny(11, 4);
        let prompts = vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10, 0, 1]];
        let sampling = Sampling::Sample { temperature: 0.9, top_k: Some(5), top_p: Some(0.9) };
        let cfg = GenerateConfig { max_new_tokens: 10, sampling, seed: 17, stop_tokens: vec![3] };
        let batch = generate_batch(&m, &prompts, &cfg).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = GenerateConfig { seed: 17 + i as u64, ..cfg.clone() };
            assert_eq!(batch[i], generate(&m, p, &alone).unwrap(), "row {i}");
        }
    }

    #[test]
    fn sources_without_a_cache_or_batched_score_like_the_reference() {
        let m = common::tiny(11, 5);
        let ids: Vec<usize> = (0..2 * 7).map(|i| (i * 5 + 2) % 11).collect();
        let mut want = Vec::new();
        FullRecompute::batched(&m, 2).append_all(&ids, &mut want).unwrap();
        // Row by row: the batched source returns [batch, n, vocab].
        for row in 0..2 {
            let mut alone = Vec::new();
            FullRecompute::new(&m).append_all(&ids[row * 7..(row + 1) * 7], &mut alone).unwrap();
            assert_eq!(alone, want[row * 7 * 11..(row + 1) * 7 * 11], "row {row}");
        }
        // The trait's default append_all (one position at a time) through WithoutCache.
        let mut inner = FullRecompute::batched(&m, 2);
        let mut got = Vec::new();
        WithoutCache::new(&mut inner).append_all(&ids, &mut got).unwrap();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        // The same sums, but over sequences of different lengths (a different batch shape).
        assert!(diff < 1e-5, "max |Δ| {diff}");
        // A rejected append changes nothing.
        let mut inner = FullRecompute::new(&m);
        let mut src = WithoutCache::new(&mut inner);
        let before = src.append(&[1, 2]).unwrap().to_vec();
        assert!(src.append(&[99]).is_err());
        src.reset();
        assert_eq!(src.append(&[1, 2]).unwrap(), &before[..]);
    }

    #[test]
    fn prompts_that_do_not_fit_the_source_are_errors() {
        let m = common::tiny(11, 5);
        let cfg = GenerateConfig::greedy(2);
        let mut one = FullRecompute::new(&m);
        assert!(generate_traced(&mut one, &[&[1], &[2]], &cfg, &mut |_| {}).is_err(), "2 prompts, batch 1");
        let mut two = FullRecompute::batched(&m, 2);
        assert!(generate_traced(&mut two, &[&[1], &[2, 3]], &cfg, &mut |_| {}).is_err(), "unequal lengths");
        assert!(generate_traced(&mut two, &[], &cfg, &mut |_| {}).is_err(), "no prompts");
        assert!(two.append(&[1, 2, 3]).is_err(), "3 ids over 2 rows");
    }
}
