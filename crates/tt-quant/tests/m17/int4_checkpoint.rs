//! Int4 checkpoints: `U8` nibbles and `F16` scales in the documented layout, loaded straight into
//! `Int4Linear` with bit-identical outputs (MLP with a ragged group, CNN, GPT through the
//! KV-cached decoder, int8 and int4 side by side), and hostile int4 files refused by name.

use safetensors::{Dtype, SafeTensors};
use tt_kvcache::{CachedGpt, OverflowPolicy};
use tt_quant::checkpoint::{self, FORMAT, FORMAT_1, FORMAT_KEY};
use tt_quant::int4::f16;
use tt_quant::{quantize_dynamic, quantize_int4, Int4Linear, WeightConfig};
use tt_tensor::nn::{Linear, Relu, Sequential};
use tt_tensor::{no_grad, Module, Tensor};
use tt_transformer::generate::NextTokenSource;
use tt_transformer::Gpt;

use super::checkpoint::{assert_each_refused, bits, formats, input, Edit, Raw};
use super::models::tiny_gpt;

/// 45 inputs: groups of 32 and a ragged 13.
fn mlp(seed: u64) -> Sequential {
    Sequential::new().layer(Linear::new(45, 32, true, seed)).layer(Relu).layer(Linear::new(32, 8, true, seed + 1))
}

fn int4_mlp() -> Sequential {
    let mut m = mlp(1);
    quantize_int4(&mut m, 32).unwrap();
    m
}

/// Saves `saved`, loads it into `fresh` (same architecture, other weights) through a checkpoint
/// unit on disk: the same formats, and outputs equal bit for bit.
fn round_trip(tag: &str, saved: &mut dyn Module, fresh: &mut dyn Module, x: &Tensor) {
    let dir = std::env::temp_dir().join(format!("tt-quant-int4-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    checkpoint::save(saved, &dir).unwrap();
    let layers = checkpoint::load(fresh, &dir).unwrap();
    assert!(layers.iter().all(|l| l.format.starts_with("int")), "{tag}: {layers:?}");
    assert_eq!(formats(fresh), formats(saved), "{tag}");
    let (a, b) = (no_grad(|| saved.forward(x)).unwrap(), no_grad(|| fresh.forward(x)).unwrap());
    assert_eq!(bits(&a), bits(&b), "{tag}: loaded outputs differ");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The file holds what the module docs say: `U8 [out, ⌈in/32⌉·16]` nibbles in ggml's order,
/// `F16 [out, groups]` scales, `int4_group` metadata — and loads back bit for bit.
#[test]
fn an_int4_mlp_saves_nibbles_and_f16_scales_and_round_trips_bit_for_bit() {
    let mut saved = int4_mlp();
    let bytes = checkpoint::to_safetensors(&mut saved).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (w, s) = (st.tensor("0.weight").unwrap(), st.tensor("0.weight_scale").unwrap());
    assert_eq!((w.dtype(), w.shape()), (Dtype::U8, &[32usize, 32][..]));
    assert_eq!((s.dtype(), s.shape()), (Dtype::F16, &[32usize, 2][..]));
    assert_eq!(st.tensor("0.bias").unwrap().dtype(), Dtype::F32);
    let meta = SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap();
    assert_eq!(meta[FORMAT_KEY], FORMAT);
    assert_eq!(meta["0.int4_group"], "32");
    // Decoding the file by its documented layout gives the layer's dense weight.
    let lin = saved.layers[0].as_linear_mut().unwrap();
    let dense = lin.installed_projection().unwrap().to_dense();
    let scale = |o: usize, g: usize| {
        let b = &s.data()[2 * (o * 2 + g)..];
        f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
    };
    for o in 0..32 {
        for i in 0..45 {
            let byte = w.data()[o * 32 + (i / 32) * 16 + i % 16];
            let nib = if i % 32 < 16 { byte & 15 } else { byte >> 4 };
            assert_eq!((nib as f32 - 8.0) * scale(o, i / 32), dense[[o, i]], "({o}, {i})");
        }
        // Inputs 45..64 are padding: code 0.
        assert!((45..64).all(|i| {
            let byte = w.data()[o * 32 + 16 + i % 16];
            (if i % 32 < 16 { byte & 15 } else { byte >> 4 }) == 8
        }));
    }
    // 32×45 f32 is 5760 bytes; here 32·32 code bytes and 32·2·2 scale bytes.
    assert_eq!(w.data().len() + s.data().len(), 1024 + 128);
    let mut fresh = mlp(7);
    let layers = checkpoint::from_safetensors(&mut fresh, &bytes).unwrap();
    assert_eq!(
        layers.iter().map(|l| (l.name.as_str(), l.format)).collect::<Vec<_>>(),
        [("0", "int4/g32"), ("2", "int4/g32")]
    );
    assert_eq!(layers[0].weight_bytes, 1024 + 128);
    let x = input(&[5, 45], 2);
    assert_eq!(bits(&no_grad(|| fresh.forward(&x)).unwrap()), bits(&no_grad(|| saved.forward(&x)).unwrap()));
    // Saving the loaded model writes the same file.
    assert_eq!(checkpoint::to_safetensors(&mut fresh).unwrap(), bytes);
    round_trip("mlp", &mut int4_mlp(), &mut mlp(9), &x);
}

#[test]
fn an_int4_cnn_and_a_mixed_int8_int4_model_round_trip_bit_for_bit() {
    use tt_tensor::data::digits;
    let mut saved = digits::cnn(3);
    quantize_int4(&mut saved, 64).unwrap();
    round_trip("cnn", &mut saved, &mut digits::cnn(5), &input(&[3, 1, 8, 8], 1));
    // Layer 0 int8, layer 2 int4, in one file.
    let mut mixed = mlp(1);
    quantize_dynamic(&mut mixed, WeightConfig::PER_CHANNEL).unwrap();
    let w = mixed.layers[2].as_linear_mut().unwrap().projection().unwrap().to_dense();
    mixed.layers[2]
        .as_linear_mut()
        .unwrap()
        .set_projection(std::sync::Arc::new(Int4Linear::new(&w, 32).unwrap()))
        .unwrap();
    assert_eq!(formats(&mut mixed)[1].1, "int4/g32");
    round_trip("mixed", &mut mixed, &mut mlp(4), &input(&[2, 45], 6));
}

/// An int4 GPT saved and loaded: the KV-cached decoders over both give the same logits bit for bit.
#[test]
fn an_int4_gpt_round_trips_and_decodes_identically() {
    let mut saved = tiny_gpt();
    quantize_int4(&mut saved, 32).unwrap();
    let mut cfg = saved.config.clone();
    cfg.seed = 99;
    let mut fresh = Gpt::new(cfg).unwrap();
    let x = Tensor::from_vec(vec![1.0, 5.0, 9.0, 2.0, 7.0, 3.0], &[1, 6]).unwrap();
    round_trip("gpt", &mut saved, &mut fresh, &x);
    let prompt = [1usize, 5, 9, 2];
    let mut a = CachedGpt::new(&saved, 1, OverflowPolicy::Error).unwrap();
    let mut b = CachedGpt::new(&fresh, 1, OverflowPolicy::Error).unwrap();
    let (la, lb) = (a.prefill(&prompt, 4).unwrap().to_vec(), b.prefill(&prompt, 4).unwrap().to_vec());
    assert_eq!(la.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), lb.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    for t in [7usize, 3, 11] {
        let (la, lb) = (a.append(&[t]).unwrap().to_vec(), b.append(&[t]).unwrap().to_vec());
        assert_eq!(
            la.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            lb.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

/// Sets scale `i` of layer 0 to `v`.
fn set_scale(r: &mut Raw, i: usize, v: f16) {
    r.t("0.weight_scale").2[2 * i..2 * i + 2].copy_from_slice(&v.to_bits().to_le_bytes());
}

fn cases() -> Vec<(&'static str, Edit, &'static [&'static str])> {
    let bad_scale = |v: f16| -> Edit { Box::new(move |r: &mut Raw| set_scale(r, 5, v)) };
    let scale_needles: &'static [&'static str] = &["0.weight_scale", "at flat index 5", "not a finite positive f16"];
    vec![
        (
            "codes cut to 31 rows",
            Box::new(|r| {
                let t = r.t("0.weight");
                t.1 = vec![31, 32];
                t.2.truncate(31 * 32);
            }),
            &["0.weight", "shape [31, 32], expected [32, 32]"],
        ),
        (
            "scales cut short",
            Box::new(|r| {
                let t = r.t("0.weight_scale");
                t.1 = vec![32, 1];
                t.2.truncate(64);
            }),
            &["0.weight_scale", "shape [32, 1], expected [32, 2]"],
        ),
        (
            // 45 inputs are 2 groups of 32 or 1 of 64: the same 32 code bytes per row, one scale.
            "group 64 for a file of group 32",
            Box::new(|r| _ = r.meta().insert("0.int4_group".into(), "64".into())),
            &["0.weight_scale", "shape [32, 2], expected [32, 1]"],
        ),
        (
            "group 128 for a file of group 32",
            Box::new(|r| _ = r.meta().insert("0.int4_group".into(), "128".into())),
            &["0.weight", "shape [32, 32], expected [32, 64]"],
        ),
        (
            "group 48",
            Box::new(|r| _ = r.meta().insert("0.int4_group".into(), "48".into())),
            &["0.int4_group", "\"48\" is not a supported"],
        ),
        (
            "group +32",
            Box::new(|r| _ = r.meta().insert("0.int4_group".into(), "+32".into())),
            &["0.int4_group", "\"+32\""],
        ),
        ("no group", Box::new(|r| _ = r.meta().remove("0.int4_group")), &["0.weight is U8", "no 0.int4_group"]),
        (
            "an int8 field too",
            Box::new(|r| _ = r.meta().insert("0.scheme".into(), "symmetric".into())),
            &["0.scheme", "int8 field", "int4 layer"],
        ),
        ("NaN scale", bad_scale(f16::NAN), scale_needles),
        ("infinite scale", bad_scale(f16::INFINITY), scale_needles),
        ("zero scale", bad_scale(f16::ZERO), scale_needles),
        ("negative zero scale", bad_scale(f16::NEG_ZERO), scale_needles),
        ("negative scale", bad_scale(f16::from_f32(-0.01)), scale_needles),
        (
            "scales as F32",
            Box::new(|r| {
                let t = r.t("0.weight_scale");
                let f: Vec<u8> =
                    t.2.chunks_exact(2)
                        .flat_map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32().to_le_bytes())
                        .collect();
                *t = (Dtype::F32, t.1.clone(), f);
            }),
            &["0.weight_scale", "dtype F32, expected F16"],
        ),
        ("no scales", Box::new(|r| _ = r.tensors.remove("0.weight_scale")), &["0.weight_scale is missing"]),
        (
            "codes as I8",
            Box::new(|r| r.t("0.weight").0 = Dtype::I8),
            &["metadata 0.int4_group describes an int4 layer", "0.weight has dtype I8"],
        ),
        // Row 0, block 1, byte 15: inputs 47 and 63, both past the 45 inputs.
        (
            "padding nibble not code 0",
            Box::new(|r| r.t("0.weight").2[31] = 0x98),
            &["0.weight", "padding nibble of input 63"],
        ),
        (
            "int4 in a format 1 file",
            Box::new(|r| _ = r.meta().insert(FORMAT_KEY.into(), FORMAT_1.into())),
            &["metadata key \"0.int4_group\" is unknown"],
        ),
    ]
}

#[test]
fn hostile_int4_files_are_errors_naming_the_tensor_and_leave_the_model_unchanged() {
    let good = checkpoint::to_safetensors(&mut int4_mlp()).unwrap();
    let raw = Raw::decode(&good);
    let mut target = mlp(9);
    quantize_int4(&mut target, 64).unwrap();
    let x = input(&[3, 45], 3);
    let mut files: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("truncated by 5 bytes", good[..good.len() - 5].to_vec(), &["not a complete safetensors file"]),
        ("cut inside the codes", good[..good.len() / 2].to_vec(), &["not a complete safetensors file"]),
    ];
    for (what, edit, needles) in cases() {
        let mut r = raw.clone();
        edit(&mut r);
        files.push((what, r.encode(), needles));
    }
    assert_each_refused(&mut target, &x, files);
    // The unedited file, taken apart and put back together, loads.
    let layers = checkpoint::from_safetensors(&mut target, &raw.encode()).unwrap();
    assert_eq!(layers.iter().map(|l| l.format).collect::<Vec<_>>(), ["int4/g32", "int4/g32"]);
}

/// An int4 layer whose dense weight was changed after quantization is stale: not saved.
#[test]
fn a_stale_int4_layer_is_not_saved() {
    let mut m = int4_mlp();
    let l = m.layers[2].as_linear_mut().unwrap();
    let mut w = l.weight.data().clone();
    w[[0, 0]] += 1.0;
    l.weight.set_data(w).unwrap();
    let e = checkpoint::to_safetensors(&mut m).unwrap_err().to_string();
    assert!(e.contains("Linear 2: its weight no longer equals its 'int4/g32' projection"), "{e}");
}
