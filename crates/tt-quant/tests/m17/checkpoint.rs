//! Quantized checkpoints: int8 MLP, CNN and GPT saved as safetensors with real I8 tensors and
//! loaded into freshly built fp32 models with outputs equal bit for bit; the bytes are a quarter
//! of the f32 file's; hostile files are rejected with a message naming the tensor or key, and a
//! failed load leaves the model as it was.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tt_kvcache::{CachedGpt, OverflowPolicy};
use tt_quant::checkpoint::{self, FORMAT, FORMAT_KEY, WEIGHTS_PART};
use tt_quant::{quantize_dynamic, Activations, Granularity, Int8Linear, QParams, QRange, Scheme, WeightConfig};
use tt_tensor::nn::{map_conv2ds, map_linears, Linear, Relu, Sequential};
use tt_tensor::projection::{DenseF32, Projection};
use tt_tensor::{no_grad, randn_array, Module, Tensor};
use tt_transformer::generate::NextTokenSource;
use tt_transformer::Gpt;

use super::models::tiny_gpt;

pub(super) fn input(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    Tensor::from_array(randn_array(shape, 0.0, 1.0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)))
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tt-m17-ck-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub(super) fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().iter().map(|v| v.to_bits()).collect()
}

fn mlp(seed: u64) -> Sequential {
    Sequential::new()
        .layer(Linear::new(64, 256, true, seed))
        .layer(Relu)
        .layer(Linear::new(256, 256, true, seed + 1))
        .layer(Relu)
        .layer(Linear::new(256, 128, true, seed + 2))
        .layer(Relu)
        .layer(Linear::new(128, 10, true, seed + 3))
}

const AFFINE_PER_TENSOR: WeightConfig = WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerTensor };
const AFFINE_PER_CHANNEL: WeightConfig = WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerChannel };

/// The i-th quantized layer's weight config and activations: every combination of symmetric /
/// affine, per-tensor / per-channel and dynamic / static appears within eight layers. Static
/// scales come from a real range, so they are no round decimal (their bits must round-trip).
fn config(i: usize) -> (WeightConfig, Activations) {
    let w = [WeightConfig::PER_TENSOR, WeightConfig::PER_CHANNEL, AFFINE_PER_CHANNEL, AFFINE_PER_TENSOR][i % 4];
    let act = if (i / 4 + i) % 2 == 1 {
        let lo = -3.1 + 0.37 * i as f32;
        Activations::Static(QParams::from_range(lo, 2.9 + 0.11 * i as f32, Scheme::Affine, QRange::U8).unwrap())
    } else {
        Activations::Dynamic
    };
    (w, act)
}

/// Installs `config(i)` in the i-th Linear / Conv2d (Linears first) except those named in
/// `skip`; returns the (name, format) of every layer installed.
fn quantize_mixed(m: &mut dyn Module, skip: &[&str]) -> Vec<(String, &'static str)> {
    let mut i = 0;
    let mut done = Vec::new();
    let mut make = |name: &str, w: &ndarray::Array2<f32>| -> Option<Arc<Int8Linear>> {
        if skip.contains(&name) {
            return None;
        }
        let (cfg, act) = config(i);
        i += 1;
        let q = Int8Linear::new(w, cfg, act).unwrap();
        done.push((name.to_string(), q.format()));
        Some(Arc::new(q))
    };
    map_linears(m, |name, l| match make(name, &l.projection()?.to_dense()) {
        Some(q) => l.set_projection(q),
        None => Ok(()),
    })
    .unwrap();
    map_conv2ds(m, |name, c| match make(name, &tt_quant::linear::conv_matrix(c)?) {
        Some(q) => c.set_projection(q),
        None => Ok(()),
    })
    .unwrap();
    done
}

/// Every Linear / Conv2d's installed format (`"none"` for none), by name.
pub(super) fn formats(m: &mut dyn Module) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let f = |p: Option<&Arc<dyn Projection>>| p.map_or("none".to_string(), |p| p.format().to_string());
    map_linears(m, |n, l| {
        v.push((n.to_string(), f(l.installed_projection())));
        Ok(())
    })
    .unwrap();
    map_conv2ds(m, |n, c| {
        v.push((n.to_string(), f(c.installed_projection())));
        Ok(())
    })
    .unwrap();
    v
}

/// Saves `saved` as a unit, loads it into `fresh`, and checks outputs on `x` bit for bit, the
/// installed formats and the reported layers.
fn round_trip(tag: &str, saved: &mut dyn Module, fresh: &mut dyn Module, x: &Tensor, quantized: &[(String, &str)]) {
    let dir = temp_dir(tag);
    checkpoint::save(saved, &dir).unwrap();
    let want = no_grad(|| saved.forward(x)).unwrap();
    assert_ne!(bits(&no_grad(|| fresh.forward(x)).unwrap()), bits(&want), "{tag}: the fresh model must differ");
    let layers = checkpoint::load(fresh, &dir).unwrap();
    let got = no_grad(|| fresh.forward(x)).unwrap();
    assert_eq!(bits(&got), bits(&want), "{tag}: outputs after load");
    assert_eq!(formats(fresh), formats(saved), "{tag}: installed formats");
    let reported: Vec<(String, &str)> = layers.iter().map(|l| (l.name.clone(), l.format)).collect();
    assert_eq!(reported, quantized, "{tag}: reported layers");
    // Every parameter equal too (the dense weights are the dequantized codes on both sides).
    for ((n, a), (m, b)) in saved.named_parameters().iter().zip(fresh.named_parameters().iter()) {
        assert_eq!((n, bits(a)), (m, bits(b)), "{tag}: parameter {n}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_int8_mlp_round_trips_bit_for_bit_in_a_quarter_of_the_bytes() {
    let mut saved = mlp(1);
    let quantized = quantize_mixed(&mut saved, &[]);
    assert_eq!(
        quantized.iter().map(|q| q.1).collect::<Vec<_>>(),
        ["int8-dyn/tensor", "int8-static/ch", "int8-dyn/ch-affine", "int8-static/tensor-affine"]
    );
    round_trip("mlp", &mut saved, &mut mlp(50), &input(&[16, 64], 0), &quantized);

    // The file: I8 codes with the weight's shape, F32 scales, I8 zero points for affine only;
    // the same model gives the same bytes (the metadata is written in sorted order).
    let bytes = checkpoint::to_safetensors(&mut saved).unwrap();
    assert!(checkpoint::to_safetensors(&mut saved).unwrap() == bytes, "saving is deterministic");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let expect: &[(&str, Dtype, &[usize])] = &[
        ("0.weight", Dtype::I8, &[256, 64]),
        ("0.weight_scale", Dtype::F32, &[1]),
        ("2.weight", Dtype::I8, &[256, 256]),
        ("2.weight_scale", Dtype::F32, &[256]),
        ("4.weight", Dtype::I8, &[128, 256]),
        ("4.weight_scale", Dtype::F32, &[128]),
        ("4.weight_zero_point", Dtype::I8, &[128]),
        ("6.weight", Dtype::I8, &[10, 128]),
        ("6.weight_scale", Dtype::F32, &[1]),
        ("6.weight_zero_point", Dtype::I8, &[1]),
        ("0.bias", Dtype::F32, &[256]),
        ("6.bias", Dtype::F32, &[10]),
    ];
    for (name, dtype, shape) in expect {
        let t = st.tensor(name).unwrap();
        assert_eq!((t.dtype(), t.shape()), (*dtype, *shape), "{name}");
        assert_eq!(t.data().len(), shape.iter().product::<usize>() * dtype.bitsize() / 8, "{name}");
    }
    assert_eq!(st.len(), 4 * 2 + 4 + 2, "4 weights, 4 biases, 4 scales, 2 zero points");
    // The codes are the projection's own, row-major.
    let codes: Vec<i8> = st.tensor("2.weight").unwrap().data().iter().map(|&b| b as i8).collect();
    let l2 = saved.layers[2].as_linear().unwrap().installed_projection().unwrap().clone();
    assert_eq!(codes, l2.as_any().unwrap().downcast_ref::<Int8Linear>().unwrap().weight().codes());

    // Metadata: scheme, granularity, activations; static scales as exact bits.
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta[FORMAT_KEY], FORMAT);
    assert_eq!((meta["0.scheme"].as_str(), meta["0.granularity"].as_str()), ("symmetric", "per-tensor"));
    assert_eq!((meta["4.scheme"].as_str(), meta["4.granularity"].as_str()), ("affine", "per-channel"));
    assert_eq!(meta["0.activations"], "dynamic");
    let Activations::Static(p) = config(1).1 else { panic!("layer 2 is static") };
    assert_eq!(meta["2.activations"], format!("static:0x{:08x}:{}", p.scale().to_bits(), p.zero_point()));
    assert_eq!(meta.len(), 1 + 3 * 4);

    // A quarter of the f32 file: codes are 1 byte instead of 4; biases and scales stay f32.
    let f32_file = tt_tensor::serialize::to_safetensors_bytes(&mlp(1).named_parameters(), None).unwrap();
    let ratio = bytes.len() as f64 / f32_file.len() as f64;
    assert!((0.25..0.27).contains(&ratio), "int8 {} bytes vs f32 {} bytes: ratio {ratio}", bytes.len(), f32_file.len());
}

#[test]
fn an_int8_cnn_round_trips_bit_for_bit_with_conv_weights_in_their_own_shape() {
    let mut saved = tt_tensor::data::digits::cnn(3);
    let quantized = quantize_mixed(&mut saved, &[]);
    // Linears first: "7", "9", then the convolutions "0", "3".
    assert_eq!(quantized.iter().map(|q| q.0.as_str()).collect::<Vec<_>>(), ["7", "9", "0", "3"]);
    round_trip("cnn", &mut saved, &mut tt_tensor::data::digits::cnn(60), &input(&[4, 1, 8, 8], 2), &quantized);
    let bytes = checkpoint::to_safetensors(&mut saved).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (name, shape) in [("0.weight", [16, 1, 3, 3]), ("3.weight", [32, 16, 3, 3])] {
        let t = st.tensor(name).unwrap();
        assert_eq!((t.dtype(), t.shape()), (Dtype::I8, &shape[..]), "{name}");
    }
    assert_eq!(st.tensor("0.weight_scale").unwrap().shape(), [16], "conv 0 is affine per-channel");
    assert_eq!(st.tensor("3.weight_zero_point").unwrap().shape(), [1], "conv 3 is affine per-tensor");
}

#[test]
fn a_tiny_gpt_round_trips_bit_for_bit_with_a_layer_left_in_f32() {
    let mut saved = tiny_gpt();
    let quantized = quantize_mixed(&mut saved, &["blocks.1.attn.proj"]);
    assert_eq!(quantized.len(), 7);
    let mut cfg = saved.config.clone();
    cfg.seed = 1234;
    let mut fresh = Gpt::new(cfg).unwrap();
    // A layer the file keeps in f32 loads dense, even where the model had a projection.
    tt_quant::quantize_dynamic(&mut fresh, WeightConfig::PER_TENSOR).unwrap();
    let ids = [1.0f32, 5.0, 9.0, 2.0, 7.0, 7.0, 3.0, 1.0];
    let x = Tensor::from_vec(ids.to_vec(), &[1, 8]).unwrap();
    round_trip("gpt", &mut saved, &mut fresh, &x, &quantized);
    let f = formats(&mut fresh);
    assert!(f.contains(&("blocks.1.attn.proj".to_string(), "none".to_string())), "{f:?}");
    // The KV-cached decoder over the loaded model runs the same projections.
    let prompt = [1usize, 5, 9, 2];
    let mut a = CachedGpt::new(&saved, 1, OverflowPolicy::Error).unwrap();
    let mut b = CachedGpt::new(&fresh, 1, OverflowPolicy::Error).unwrap();
    let (la, lb) = (a.prefill(&prompt, 4).unwrap().to_vec(), b.prefill(&prompt, 4).unwrap().to_vec());
    assert_eq!(la.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), lb.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    assert_eq!(a.append(&[7]).unwrap().to_vec(), b.append(&[7]).unwrap().to_vec());
}

/// A safetensors file taken apart, to be edited and put back together.
#[derive(Clone)]
pub(super) struct Raw {
    pub(super) tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    meta: Option<HashMap<String, String>>,
}

impl Raw {
    pub(super) fn decode(bytes: &[u8]) -> Raw {
        let st = SafeTensors::deserialize(bytes).unwrap();
        let tensors =
            st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
        Raw { tensors, meta: SafeTensors::read_metadata(bytes).unwrap().1.metadata().clone() }
    }
    pub(super) fn encode(&self) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> =
            self.tensors.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
        safetensors::serialize(views, self.meta.clone()).unwrap()
    }
    pub(super) fn t(&mut self, name: &str) -> &mut (Dtype, Vec<usize>, Vec<u8>) {
        self.tensors.get_mut(name).unwrap_or_else(|| panic!("no {name}"))
    }
    fn set_f32(&mut self, name: &str, i: usize, v: f32) {
        self.t(name).2[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub(super) fn meta(&mut self) -> &mut HashMap<String, String> {
        self.meta.as_mut().unwrap()
    }
}

/// A small MLP: "0" symmetric per-channel with static activations, "2" affine per-tensor dynamic.
fn small_mlp(seed: u64) -> Sequential {
    Sequential::new().layer(Linear::new(16, 32, true, seed)).layer(Relu).layer(Linear::new(32, 8, true, seed + 1))
}

fn small_saved() -> Sequential {
    let mut m = small_mlp(1);
    let act = Activations::Static(QParams::from_range(-2.7, 3.3, Scheme::Affine, QRange::U8).unwrap());
    map_linears(&mut m, |name, l| {
        let (cfg, a) =
            if name == "0" { (WeightConfig::PER_CHANNEL, act) } else { (AFFINE_PER_TENSOR, Activations::Dynamic) };
        l.set_projection(Arc::new(Int8Linear::new(&l.projection()?.to_dense(), cfg, a)?))
    })
    .unwrap();
    m
}

pub(super) type Edit = Box<dyn Fn(&mut Raw)>;

/// Loads each of `files` (what, bytes, words its error must contain) into `target`: every one an
/// error naming the weights part and its words, and `target`'s outputs on `x` and formats as
/// they were.
pub(super) fn assert_each_refused(target: &mut dyn Module, x: &Tensor, files: Vec<(&str, Vec<u8>, &[&str])>) {
    let before = (bits(&no_grad(|| target.forward(x)).unwrap()), formats(target));
    for (what, bytes, needles) in files {
        let e = checkpoint::from_safetensors(target, &bytes).expect_err(what).to_string();
        for n in needles {
            assert!(e.contains(n), "{what}: {e:?} should mention {n:?}");
        }
        assert!(e.contains(WEIGHTS_PART), "{what}: {e}");
        let after = (bits(&no_grad(|| target.forward(x)).unwrap()), formats(target));
        assert!(after == before, "{what}: a failed load changed the model");
    }
}

fn cases() -> Vec<(&'static str, Edit, &'static [&'static str])> {
    fn f32_of(b: &[u8]) -> Vec<u8> {
        b.iter().flat_map(|&c| (c as i8 as f32).to_le_bytes()).collect()
    }
    vec![
        (
            "weight as F32",
            Box::new(|r| {
                let t = r.t("0.weight");
                *t = (Dtype::F32, t.1.clone(), f32_of(&t.2));
            }),
            &["0.weight", "dtype F32"],
        ),
        ("weight as U8", Box::new(|r| r.t("2.weight").0 = Dtype::U8), &["2.weight", "dtype U8"]),
        (
            "scale as F64",
            Box::new(|r| {
                let t = r.t("0.weight_scale");
                *t = (Dtype::F64, vec![16], t.2.clone());
            }),
            &["0.weight_scale", "dtype F64, expected F32"],
        ),
        (
            "zero point as U8",
            Box::new(|r| r.t("2.weight_zero_point").0 = Dtype::U8),
            &["2.weight_zero_point", "dtype U8, expected I8"],
        ),
        (
            "bias as I8",
            Box::new(|r| {
                let t = r.t("2.bias");
                *t = (Dtype::I8, vec![32], t.2.clone());
            }),
            &["2.bias", "dtype I8, expected F32"],
        ),
        (
            "transposed weight",
            Box::new(|r| r.t("0.weight").1 = vec![16, 32]),
            &["0.weight", "shape [16, 32], expected [32, 16]"],
        ),
        (
            "flattened weight",
            Box::new(|r| r.t("2.weight").1 = vec![256]),
            &["2.weight", "shape [256], expected [8, 32]"],
        ),
        (
            "one scale for a per-channel layer",
            Box::new(|r| {
                let t = r.t("0.weight_scale");
                t.1 = vec![1];
                t.2.truncate(4);
            }),
            &["0.weight_scale", "shape [1], expected [32]"],
        ),
        (
            "per-tensor metadata for per-channel scales",
            Box::new(|r| {
                r.meta().insert("0.granularity".into(), "per-tensor".into());
            }),
            &["0.weight_scale", "shape [32], expected [1]"],
        ),
        (
            "bias of the wrong length",
            Box::new(|r| {
                let t = r.t("0.bias");
                t.1 = vec![31];
                t.2.truncate(31 * 4);
            }),
            &["0.bias", "shape [31], expected [32]"],
        ),
        (
            "scale 0",
            Box::new(|r| r.set_f32("0.weight_scale", 3, 0.0)),
            &["0.weight_scale", "scale 0 at index 3", "positive"],
        ),
        (
            "scale NaN",
            Box::new(|r| r.set_f32("2.weight_scale", 0, f32::NAN)),
            &["2.weight_scale", "scale NaN at index 0"],
        ),
        ("negative scale", Box::new(|r| r.set_f32("0.weight_scale", 0, -0.01)), &["0.weight_scale", "scale -0.01"]),
        (
            "infinite scale",
            Box::new(|r| r.set_f32("0.weight_scale", 1, f32::INFINITY)),
            &["0.weight_scale", "scale inf"],
        ),
        ("subnormal scale", Box::new(|r| r.set_f32("0.weight_scale", 1, 1e-40)), &["0.weight_scale", "normal"]),
        (
            "overflowing scale",
            Box::new(|r| r.set_f32("2.weight_scale", 0, f32::MAX)),
            &["2.weight_scale", "overflows f32"],
        ),
        (
            "static zero point 256",
            Box::new(|r| {
                let a = r.meta()["0.activations"].clone();
                let (head, _) = a.rsplit_once(':').unwrap();
                r.meta().insert("0.activations".into(), format!("{head}:256"));
            }),
            &["0.activations", "zero point 256", "[0, 255]"],
        ),
        (
            "static zero point -1",
            Box::new(|r| {
                let a = r.meta()["0.activations"].clone();
                let (head, _) = a.rsplit_once(':').unwrap();
                r.meta().insert("0.activations".into(), format!("{head}:-1"));
            }),
            &["0.activations", "zero point -1"],
        ),
        (
            "static scale NaN",
            Box::new(|r| {
                r.meta().insert("0.activations".into(), "static:0x7fc00000:128".into());
            }),
            &["0.activations", "static scale NaN"],
        ),
        (
            "static scale unparseable",
            Box::new(|r| {
                r.meta().insert("0.activations".into(), "static:0.0235:128".into());
            }),
            &["0.activations", "\"static:0.0235:128\" is not"],
        ),
        (
            "code -128 in a symmetric layer",
            Box::new(|r| r.t("0.weight").2[37] = 0x80),
            &["0.weight", "code -128 at flat index 37", "symmetric"],
        ),
        (
            "missing scale",
            Box::new(|r| {
                r.tensors.remove("0.weight_scale");
            }),
            &["0.weight_scale is missing"],
        ),
        (
            "missing zero point",
            Box::new(|r| {
                r.tensors.remove("2.weight_zero_point");
            }),
            &["2.weight_zero_point is missing", "affine"],
        ),
        (
            "zero point for a symmetric layer",
            Box::new(|r| {
                r.tensors.insert("0.weight_zero_point".into(), (Dtype::I8, vec![32], vec![0; 32]));
            }),
            &["0.weight_zero_point is unexpected", "symmetric"],
        ),
        (
            "missing bias",
            Box::new(|r| {
                r.tensors.remove("2.bias");
            }),
            &["tensor 2.bias is missing"],
        ),
        (
            "missing weight",
            Box::new(|r| {
                r.tensors.remove("2.weight");
            }),
            &["2.weight is not stored as I8"],
        ),
        (
            "unknown tensor",
            Box::new(|r| {
                r.tensors.insert("1.weight".into(), (Dtype::F32, vec![1], vec![0; 4]));
            }),
            &["tensor 1.weight is unexpected"],
        ),
        ("non-finite bias", Box::new(|r| r.set_f32("0.bias", 5, f32::NAN)), &["0.bias", "non-finite", "index 5"]),
        ("no metadata", Box::new(|r| r.meta = None), &["no __metadata__"]),
        (
            "no format key",
            Box::new(|r| {
                r.meta().remove(FORMAT_KEY);
            }),
            &["\"format\""],
        ),
        (
            "another format",
            Box::new(|r| {
                r.meta().insert(FORMAT_KEY.into(), "pt".into());
            }),
            &["metadata format", "\"pt\""],
        ),
        (
            "missing scheme",
            Box::new(|r| {
                r.meta().remove("2.scheme");
            }),
            &["2.weight is I8", "no 2.scheme"],
        ),
        (
            "missing activations",
            Box::new(|r| {
                r.meta().remove("0.activations");
            }),
            &["no 0.activations"],
        ),
        (
            "unknown scheme",
            Box::new(|r| {
                r.meta().insert("0.scheme".into(), "asymmetric".into());
            }),
            &["metadata 0.scheme", "\"asymmetric\""],
        ),
        (
            "per-group granularity",
            Box::new(|r| {
                r.meta().insert("2.granularity".into(), "per-group-4".into());
            }),
            &["metadata 2.granularity", "per-group-4"],
        ),
        (
            "metadata for a missing layer",
            Box::new(|r| {
                r.meta().insert("5.scheme".into(), "symmetric".into());
            }),
            &["metadata key \"5.scheme\" is unknown"],
        ),
        (
            "unknown metadata field",
            Box::new(|r| {
                r.meta().insert("0.bits".into(), "8".into());
            }),
            &["\"0.bits\" is unknown"],
        ),
        (
            "metadata for an f32 layer",
            Box::new(|r| {
                let t = r.t("2.weight");
                *t = (Dtype::F32, t.1.clone(), f32_of(&t.2));
                r.tensors.remove("2.weight_scale");
                r.tensors.remove("2.weight_zero_point");
            }),
            &["metadata 2.", "tensor 2.weight has dtype F32"],
        ),
    ]
}

#[test]
fn hostile_files_are_errors_naming_the_tensor_and_leave_the_model_unchanged() {
    let good = checkpoint::to_safetensors(&mut small_saved()).unwrap();
    let raw = Raw::decode(&good);
    // The target: another model with an int8 layer of its own, which no failed load may touch.
    let mut target = small_mlp(9);
    map_linears(&mut target, |name, l| {
        if name == "2" {
            l.set_projection(Arc::new(Int8Linear::new(
                &l.projection()?.to_dense(),
                WeightConfig::PER_TENSOR,
                Activations::Dynamic,
            )?))?;
        }
        Ok(())
    })
    .unwrap();
    let x = input(&[4, 16], 3);
    let mut truncated: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty", vec![], &["not a complete safetensors file"]),
        ("header length only", good[..8].to_vec(), &["not a complete safetensors file"]),
        ("truncated by 7 bytes", good[..good.len() - 7].to_vec(), &["not a complete safetensors file"]),
        ("truncated header", good[..good.len() / 20].to_vec(), &["not a complete safetensors file"]),
    ];
    for (what, edit, needles) in cases() {
        let mut r = raw.clone();
        edit(&mut r);
        truncated.push((what, r.encode(), needles));
    }
    assert_each_refused(&mut target, &x, truncated);
    // The unedited file, taken apart and put back together, loads.
    let layers = checkpoint::from_safetensors(&mut target, &raw.encode()).unwrap();
    assert_eq!(layers.iter().map(|l| l.format).collect::<Vec<_>>(), ["int8-static/ch", "int8-dyn/tensor-affine"]);
    let saved = no_grad(|| small_saved().forward(&x)).unwrap();
    assert_eq!(bits(&no_grad(|| target.forward(&x)).unwrap()), bits(&saved));
}

#[test]
fn the_checkpoint_unit_is_checksummed_and_carries_extra_parts() {
    let dir = temp_dir("unit");
    let mut saved = small_saved();
    checkpoint::save_with(&mut saved, &dir, &[("config.json", b"{\"d\": 16}")]).unwrap();
    let parts = tt_tensor::serialize::load_unit(&dir, &["config.json"]).unwrap();
    assert_eq!(parts[0], b"{\"d\": 16}");
    assert!(checkpoint::save_with(&mut saved, &dir, &[(WEIGHTS_PART, b"")]).is_err(), "a repeated part name");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(tt_tensor::serialize::MANIFEST)).unwrap()).unwrap();
    let file = dir.join(manifest["files"][WEIGHTS_PART]["file"].as_str().unwrap());
    let good = std::fs::read(&file).unwrap();
    let mut target = small_mlp(9);
    let x = input(&[4, 16], 3);
    let before = bits(&no_grad(|| target.forward(&x)).unwrap());
    let mut flipped = good.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x10;
    for (what, bytes, needle) in
        [("truncated", &good[..good.len() - 1], "truncated"), ("flipped", &flipped[..], "checksum mismatch")]
    {
        std::fs::write(&file, bytes).unwrap();
        let e = checkpoint::load(&mut target, &dir).expect_err(what).to_string();
        assert!(e.contains(needle), "{what}: {e}");
        assert_eq!(bits(&no_grad(|| target.forward(&x)).unwrap()), before, "{what}");
    }
    std::fs::write(&file, &good).unwrap();
    checkpoint::load(&mut target, &dir).unwrap();
    assert_eq!(bits(&no_grad(|| target.forward(&x)).unwrap()), bits(&no_grad(|| saved.forward(&x)).unwrap()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stale_int8_layer_is_not_saved_and_other_formats_save_as_f32() {
    let mut m = small_saved();
    let w = m.layers[0].as_linear().unwrap().weight.clone();
    let changed = w.data().mapv(|v| v * 1.5); // (the read guard must end before the write)
    w.set_data(changed).unwrap();
    let e = checkpoint::to_safetensors(&mut m).unwrap_err().to_string();
    assert!(e.contains("Linear 0") && e.contains("no longer equals its 'int8-static/ch' projection"), "{e}");
    // A projection that is not int8 (here the dense reference, installed) is saved as its f32 weight.
    let mut m = small_mlp(4);
    map_linears(&mut m, |_, l| l.set_projection(Arc::new(DenseF32::from_array(l.projection()?.to_dense())))).unwrap();
    let st_bytes = checkpoint::to_safetensors(&mut m).unwrap();
    let st = SafeTensors::deserialize(&st_bytes).unwrap();
    assert!(st.tensors().iter().all(|(_, t)| t.dtype() == Dtype::F32));
    assert_eq!(checkpoint::from_safetensors(&mut small_mlp(5), &st_bytes).unwrap(), vec![]);
}

#[test]
fn as_any_finds_int8_behind_dyn_projection_and_nothing_by_default() {
    let w = ndarray::array![[0.5f32, -1.0], [0.25, 1.0]];
    // A format that never needs recognizing says nothing (the default).
    let plain: Arc<dyn Projection> = Arc::new(tt_tensor::testing::TransposedF64::of(&DenseF32::from_array(w.clone())));
    assert!(plain.as_any().is_none());
    let q: Arc<dyn Projection> = Arc::new(Int8Linear::new(&w, WeightConfig::PER_TENSOR, Activations::Dynamic).unwrap());
    let back = q.as_any().and_then(|a| a.downcast_ref::<Int8Linear>()).unwrap();
    assert_eq!(back.weight().codes().len(), 4);
    assert_eq!((back.weight().codes()[1], back.weight().codes()[3]), (-127, 127), "per-tensor symmetric over ±1");
}

/// The probe's example: a model with a finite weight near `f32::MAX` quantized to a scale whose
/// extreme code dequantized to ±∞; it saved, and its own loader refused the file. Now every
/// such model saves and loads back, bit for bit.
#[test]
fn weights_near_f32_max_quantize_save_and_load() {
    let configs = [
        WeightConfig::PER_CHANNEL,
        WeightConfig::PER_TENSOR,
        WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerChannel },
        WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerTensor },
    ];
    let dir = temp_dir("huge");
    for cfg in configs {
        for v in [3e38f32, -3e38, f32::MAX, -f32::MAX] {
            let mut saved = small_mlp(1);
            let w = saved.layers[0].as_linear().unwrap().weight.clone();
            let mut d = w.data().clone();
            d[[0, 0]] = v;
            w.set_data(d).unwrap();
            tt_quant::quantize_dynamic(&mut saved, cfg).unwrap();
            let dense = saved.layers[0].as_linear().unwrap().weight.to_vec();
            assert!(dense.iter().all(|x| x.is_finite()), "{cfg:?} {v}: the dequantized weight is finite");
            assert!((dense[0] - v).abs() <= v.abs() * 1e-2, "{cfg:?} {v}: {} stands for it", dense[0]);
            checkpoint::save(&mut saved, &dir).unwrap();
            let mut loaded = small_mlp(2);
            checkpoint::load(&mut loaded, &dir).unwrap_or_else(|e| panic!("{cfg:?} {v}: {e}"));
            assert_eq!(formats(&mut loaded), formats(&mut saved));
            let x = input(&[2, 16], 5);
            let (a, b) = (no_grad(|| saved.forward(&x)).unwrap(), no_grad(|| loaded.forward(&x)).unwrap());
            assert_eq!(bits(&a), bits(&b), "{cfg:?} {v}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The probe's example: saving during an unfinished low-rank factorization stored the layer's
/// unused weight, and the reloaded model silently computed something else. A layer carrying any
/// forward transform (int8 or f32) is refused, naming it, and nothing is written; once the
/// transform is finished the model saves and reloads to what it computes.
#[test]
fn saving_a_layer_that_carries_a_transform_is_refused() {
    use tt_compress::lowrank::Factored;
    let dir = temp_dir("transform");
    let x = input(&[2, 16], 3);
    let mut m = small_mlp(1);
    let f = Factored::factor(&mut m, &["2"], 2).unwrap();
    let e = checkpoint::save(&mut m, &dir).unwrap_err().to_string();
    assert!(e.contains("layer '2' carries a 'lowrank' forward transform"), "{e}");
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none(), "nothing written");
    f.finish(&mut m).unwrap();
    checkpoint::save(&mut m, &dir).unwrap();
    let mut loaded = small_mlp(9);
    checkpoint::load(&mut loaded, &dir).unwrap();
    // The finished layer keeps its low-rank projection; the loaded one is dense: equal but for
    // the rounding of the two products.
    let (a, b) = (no_grad(|| loaded.forward(&x)).unwrap().to_vec(), no_grad(|| m.forward(&x)).unwrap().to_vec());
    assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= 1e-5), "{a:?} vs {b:?}");
    // Any transform, on an int8 layer too (its projection computes without it, training with it).
    let mut q = small_saved();
    q.layers[0].as_linear_mut().unwrap().set_transform(Some(Arc::new(tt_tensor::testing::DoubledWeight)));
    let e = checkpoint::to_safetensors(&mut q).unwrap_err().to_string();
    assert!(e.contains("layer '0' carries a 'doubled' forward transform"), "{e}");
    q.layers[0].as_linear_mut().unwrap().set_transform(None);
    assert!(checkpoint::to_safetensors(&mut q).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Per-group int8 (Q8_0's layout: symmetric codes, one scale per `G` inputs of a row) saves its
/// scales as `[out, ⌈in/G⌉]` and loads back bit for bit, ragged last groups included; group
/// sizes that do not parse, and scales of the wrong shape, are errors naming the key or tensor.
#[test]
fn per_group_int8_round_trips_and_bad_groups_are_refused() {
    let grouped = |g| WeightConfig { scheme: Scheme::Symmetric, granularity: Granularity::PerGroup(g) };
    let x = input(&[4, 64], 2);
    for g in [32, 48, 64] {
        let mut saved = mlp(1);
        quantize_dynamic(&mut saved, grouped(g)).unwrap();
        let bytes = checkpoint::to_safetensors(&mut saved).unwrap();
        let raw = Raw::decode(&bytes);
        // The first layer: 256 outputs of 64 inputs → ⌈64/g⌉ groups each.
        assert_eq!(raw.tensors["0.weight_scale"].1, vec![256, 64usize.div_ceil(g)], "group {g}");
        let name = format!("int8-g{g}");
        let want: Vec<(String, &str)> =
            ["0", "2", "4", "6"].iter().map(|l| (l.to_string(), "int8-dyn/group")).collect();
        round_trip(&name, &mut saved, &mut mlp(40), &x, &want);
    }
    let mut saved = mlp(1);
    quantize_dynamic(&mut saved, grouped(32)).unwrap();
    let raw = Raw::decode(&checkpoint::to_safetensors(&mut saved).unwrap());
    let mut target = mlp(3);
    quantize_dynamic(&mut target, grouped(32)).unwrap();
    let mut files: Vec<(&str, Vec<u8>, &[&str])> = Vec::new();
    for (what, g) in [("group 0", "per-group-0"), ("leading zero", "per-group-032"), ("sign", "per-group-+32")] {
        let mut r = raw.clone();
        r.meta().insert("0.granularity".into(), g.into());
        files.push((what, r.encode(), &["metadata 0.granularity"]));
    }
    let mut r = raw.clone();
    r.meta().insert("0.granularity".into(), "per-group-64".into());
    files.push(("scales of another group size", r.encode(), &["0.weight_scale", "shape"]));
    assert_each_refused(&mut target, &x, files);
}
