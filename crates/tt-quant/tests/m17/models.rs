//! Int8 models through the seam: every Linear and Conv2d quantized by name; the tensor model and
//! the KV-cached decoder run the same int8 projections and agree; training still sees f32.

use ndarray::Array2;
use tt_kvcache::{generate_cached, CachedGpt, OverflowPolicy};
use tt_quant::{quantize_dynamic, IntLevel, WeightConfig};
use tt_tensor::loss::cross_entropy;
use tt_tensor::optim::{Adam, Optimizer};
use tt_tensor::{no_grad, randn_array, Module, Tensor};
use tt_transformer::generate::{FullRecompute, GenerateConfig, NextTokenSource};
use tt_transformer::Gpt;

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.data(), b.data());
    let scale = a.iter().map(|v| v.abs()).fold(0.0f32, f32::max).max(1e-6);
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / scale
}

fn input(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    Tensor::from_array(randn_array(shape, 0.0, 1.0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)))
}

#[test]
fn an_int8_mlp_and_cnn_stay_close_to_fp32_and_train_on_f32_weights() {
    use tt_tensor::data::digits;
    for (name, mut m, x, layers) in
        [("mlp", digits::mlp(1), input(&[32, 64], 0), 2usize), ("cnn", digits::cnn(3), input(&[8, 1, 8, 8], 1), 4)]
    {
        let fp32 = no_grad(|| m.forward(&x)).unwrap();
        assert_eq!(quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap().len(), layers, "{name}");
        let int8 = no_grad(|| m.forward(&x)).unwrap();
        let d = max_rel_diff(&fp32, &int8);
        assert!(d > 0.0 && d < 0.03, "{name}: int8 vs fp32 relative difference {d}");
        // Training records a graph and so uses the dense weights, which are the dequantized
        // int8 values: a step changes them and the installed projection becomes stale (an error).
        let mut opt = Adam::new(m.parameters(), 1e-2, 0.0).unwrap();
        let loss = cross_entropy(&m.forward(&x).unwrap(), &vec![1usize; x.shape()[0]]).unwrap();
        loss.backward().unwrap();
        opt.step().unwrap();
        let Err(e) = no_grad(|| m.forward(&x)) else { panic!("{name}: a stale projection must be an error") };
        assert!(e.to_string().contains("int8-dyn/ch"), "{name}: {e}");
    }
}

/// A 2-layer GPT trained briefly on a repeating sequence (shared with `checkpoint.rs`).
pub(crate) fn tiny_gpt() -> Gpt {
    tt_transformer::testing::trained_tiny(3).unwrap()
}

/// The decoder and the tensor model hold the same int8 projections; their activations differ
/// only by f32 summation order, so the per-row activation codes agree except where a value sits
/// on a rounding boundary — 1e-3 covers one such flipped code; tokens must match exactly.
#[test]
fn the_int8_decoder_matches_the_int8_tensor_model_at_every_level() {
    for level in tt_accel::dispatch::available() {
        tt_accel::with_level(level, |_| {
            let mut m = tiny_gpt();
            assert_eq!(quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap().len(), 8);
            let mut eng = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
            let formats = eng.projection_formats();
            assert_eq!(formats.iter().filter(|f| f.1 == "int8-dyn/ch").count(), 8, "{formats:?}");
            let mut full = FullRecompute::new(&m);
            let prompt = [1usize, 5, 9, 2];
            let mut a = full.append(&prompt).unwrap().to_vec();
            let mut b = eng.prefill(&prompt, 4).unwrap().to_vec();
            for step in 0..40 {
                let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(d <= 1e-3, "{level} ({}): step {step}: {d}", IntLevel::current());
                let next = (step * 5 + 3) % 12;
                a = full.append(&[next]).unwrap().to_vec();
                b = eng.decode_step(&[next]).unwrap().to_vec();
            }
            let cfg = GenerateConfig::greedy(50);
            let cached = generate_cached(&mut eng, &[prompt.to_vec()], &cfg).unwrap().tokens;
            let uncached = tt_transformer::generate::generate_with(&mut full, &prompt, &cfg).unwrap();
            assert_eq!(cached[0], uncached, "{level}: greedy tokens");
        });
    }
}

#[test]
fn quantizing_the_gpt_keeps_its_tied_head_and_norms_in_f32() {
    let mut m = tiny_gpt();
    let before: Vec<(String, Array2<f32>)> =
        vec![("tok_emb".into(), m.tok_emb.weight.data().clone().into_dimensionality().unwrap())];
    quantize_dynamic(&mut m, WeightConfig::PER_TENSOR).unwrap();
    assert_eq!(m.tok_emb.weight.data().clone().into_dimensionality::<ndarray::Ix2>().unwrap(), before[0].1);
    let linears = tt_tensor::nn::linears(&m);
    assert!(linears.iter().all(|(_, l)| l.installed_projection().is_some_and(|p| p.format() == "int8-dyn/tensor")));
}
