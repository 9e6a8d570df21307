//! Quantized checkpoints loaded without f32: a GPT whose linears and token table are int8 (or
//! int4) is saved, then loaded into a skeleton built with `Unloaded` placeholders — no f32 weight
//! is ever built — and decodes with the saved model's logits bit for bit. Loading into an ordinary
//! model works as before, and a file that leaves a layer out is refused with the model unchanged.

use std::path::PathBuf;
use std::sync::Arc;

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use tt_kvcache::{CachedGpt, OverflowPolicy};
use tt_quant::checkpoint::{self, WEIGHTS_PART};
use tt_tensor::nn::linears;
use tt_tensor::projection::Unloaded;
use tt_tensor::serialize::save_unit;
use tt_transformer::generate::NextTokenSource;
use tt_transformer::testing::trained_tiny;
use tt_transformer::{Gpt, GptConfig};

use super::quantize_all::quantize_all;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tt-m17-skel-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The trained tiny GPT with every linear and the (tied) token table in int8 per-channel, or in
/// int4 of group 32.
fn quantized(int4: bool) -> Gpt {
    quantize_all(trained_tiny(3).unwrap(), int4)
}

/// A GPT holding no weights: every linear and the token table an `Unloaded` placeholder.
fn skeleton(config: GptConfig) -> Gpt {
    Gpt::new_with(config, &mut |_, (o, i), _| Ok(Some(Arc::new(Unloaded::new(o, i))))).unwrap()
}

/// `(path, format)` of every linear, then the token table's.
fn formats(m: &Gpt) -> Vec<(String, &'static str)> {
    let mut out: Vec<_> =
        linears(m).into_iter().map(|(n, l)| (n, l.installed_projection().map_or("none", |p| p.format()))).collect();
    out.push(("tok_emb".into(), m.tok_emb.installed_projection().map_or("none", |p| p.format())));
    out
}

fn all_released(m: &Gpt) -> bool {
    linears(m).iter().all(|(_, l)| l.weight.is_released()) && m.tok_emb.weight.is_released()
}

/// Prefill then three decode steps through the KV-cached decoder: every logit's bits.
fn decoded(m: &Gpt) -> Vec<Vec<u32>> {
    let mut eng = CachedGpt::new(m, 1, OverflowPolicy::Error).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut out = vec![bits(eng.prefill(&[1, 5, 9, 2], 4).unwrap())];
    for t in [7usize, 3, 11] {
        out.push(bits(eng.append(&[t]).unwrap()));
    }
    out
}

#[test]
fn int8_and_int4_checkpoints_load_into_a_skeleton_without_any_f32_weight() {
    for int4 in [false, true] {
        let tag = if int4 { "int4" } else { "int8" };
        let mut saved = quantized(int4);
        // One linear left in f32: the skeleton gets its stored values as its format, still released.
        let dense_layer = "blocks.1.mlp.proj";
        saved.blocks[1].mlp.proj.clear_projection();
        let dir = temp_dir(tag);
        checkpoint::save(&mut saved, &dir).unwrap();

        let mut skel = skeleton(saved.config.clone());
        assert!(all_released(&skel), "{tag}: the skeleton is built without weights");
        assert!(formats(&skel).iter().all(|(_, f)| *f == "unloaded"), "{tag}");
        let e = checkpoint::to_safetensors(&mut skel).unwrap_err().to_string();
        assert!(e.contains("never loaded"), "{tag}: a skeleton has nothing to save: {e}");
        let layers = checkpoint::load(&mut skel, &dir).unwrap();
        assert_eq!(layers.len(), 8, "{tag}: 7 linears and the token table");
        assert!(layers.iter().any(|l| l.name == "tok_emb"), "{tag}");

        assert!(all_released(&skel), "{tag}: every weight is still only its format");
        let (want, got) = (formats(&saved), formats(&skel));
        assert!(got.iter().all(|(_, f)| *f != "unloaded"), "{tag}: a placeholder is left: {got:?}");
        for ((n, w), (m, g)) in want.iter().zip(&got) {
            assert_eq!(n, m);
            if n == dense_layer {
                assert_eq!((*w, *g), ("none", "f32"), "{tag}: {n}");
            } else {
                assert_eq!(w, g, "{tag}: {n}");
            }
        }
        assert_eq!(decoded(&skel), decoded(&saved), "{tag}: logits bit for bit");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_resident_model_still_loads_quantized_layers_and_token_tables_as_before() {
    let mut saved = quantized(false);
    let bytes = checkpoint::to_safetensors(&mut saved).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("tok_emb.weight").unwrap().dtype(), safetensors::Dtype::I8);
    assert_eq!(st.tensor("tok_emb.weight_scale").unwrap().shape(), [12]);

    let mut cfg = saved.config.clone();
    cfg.seed = 41;
    let mut fresh = Gpt::new(cfg.clone()).unwrap();
    checkpoint::from_safetensors(&mut fresh, &bytes).unwrap();
    assert_eq!(formats(&fresh), formats(&saved));
    assert!(!fresh.tok_emb.weight.is_released() && linears(&fresh).iter().all(|(_, l)| !l.weight.is_released()));
    let table = fresh.tok_emb.weight.data().clone().into_dimensionality::<ndarray::Ix2>().unwrap();
    assert_eq!(table, fresh.tok_emb.installed_projection().unwrap().to_dense(), "the table is the dequantized codes");
    assert_eq!(decoded(&fresh), decoded(&saved));

    // An f32 file loaded over that model: the table's int8 format is removed (it would be stale).
    let mut plain = Gpt::new(cfg).unwrap();
    let plain_bytes = checkpoint::to_safetensors(&mut plain).unwrap();
    checkpoint::from_safetensors(&mut fresh, &plain_bytes).unwrap();
    assert!(formats(&fresh).iter().all(|(_, f)| *f == "none"), "{:?}", formats(&fresh));
    assert_eq!(decoded(&fresh), decoded(&plain));
}

/// `bytes` without the tensors and metadata of `layer`.
fn without_layer(bytes: &[u8], layer: &str) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let prefix = format!("{layer}.");
    let keep = |n: &str| !n.starts_with(&prefix);
    let tensors: Vec<(String, TensorView<'_>)> = st.tensors().into_iter().filter(|(n, _)| keep(n)).collect();
    let meta = header.metadata().clone().unwrap().into_iter().filter(|(k, _)| keep(k)).collect();
    safetensors::serialize(tensors, Some(meta)).unwrap()
}

#[test]
fn a_file_that_leaves_a_layer_out_is_refused_and_the_model_is_unchanged() {
    let mut saved = quantized(false);
    let cut = without_layer(&checkpoint::to_safetensors(&mut saved).unwrap(), "blocks.0.mlp.fc");
    let dir = temp_dir("cut");
    save_unit(&dir, &[(WEIGHTS_PART, &cut)]).unwrap();

    let mut skel = skeleton(saved.config.clone());
    let biases: Vec<Vec<f32>> = linears(&skel).iter().map(|(_, l)| l.bias.as_ref().unwrap().to_vec()).collect();
    for e in
        [checkpoint::from_safetensors(&mut skel, &cut).unwrap_err(), checkpoint::load(&mut skel, &dir).unwrap_err()]
    {
        let e = e.to_string();
        assert!(e.contains("blocks.0.mlp.fc.weight is missing"), "{e}");
        assert!(formats(&skel).iter().all(|(_, f)| *f == "unloaded"), "nothing installed");
        let now: Vec<Vec<f32>> = linears(&skel).iter().map(|(_, l)| l.bias.as_ref().unwrap().to_vec()).collect();
        assert_eq!(now, biases, "no parameter set");
    }

    let mut resident = Gpt::new(saved.config.clone()).unwrap();
    let before = decoded(&resident);
    assert!(checkpoint::load(&mut resident, &dir).is_err());
    assert!(formats(&resident).iter().all(|(_, f)| *f == "none"));
    assert_eq!(decoded(&resident), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An int8 and an int4 GPT, token table included, frozen after quantizing: every dense weight
/// released, the same logits bit for bit through the decoder and the tensor model, and the same
/// checkpoint as before freezing.
#[test]
fn a_frozen_int8_or_int4_gpt_answers_and_saves_exactly_as_before() {
    for int4 in [false, true] {
        let mut m = quantized(int4);
        let want = decoded(&m);
        let ids = [1usize, 5, 9, 2, 7];
        let tensor = |m: &Gpt| tt_tensor::no_grad(|| m.forward_ids(&ids, 1, ids.len())).unwrap().to_vec();
        let want_tensor = tensor(&m);
        let saved = checkpoint::to_safetensors(&mut m).unwrap();
        let frozen = tt_tensor::nn::freeze(&mut m).unwrap();
        assert!(frozen.bytes_freed > 0 && all_released(&m), "int4 {int4}");
        assert_eq!(decoded(&m), want, "int4 {int4}: decoder");
        assert_eq!(tensor(&m), want_tensor, "int4 {int4}: tensor model");
        assert_eq!(checkpoint::to_safetensors(&mut m).unwrap(), saved, "int4 {int4}: checkpoint");
    }
}
