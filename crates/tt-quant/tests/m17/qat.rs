//! QAT: the fake-quantize op's values and straight-through gradient, checked against finite
//! differences where they are defined; prepare → train → convert on an MLP.

use tt_quant::observer::MinMax;
use tt_quant::qat::{convert_qat, fake_quantize, prepare_qat};
use tt_quant::{calibrate, Granularity, QParams, QRange, Scheme, WeightConfig};
use tt_tensor::loss::cross_entropy;
use tt_tensor::nn::{Linear, Relu, Sequential};
use tt_tensor::optim::{Adam, Optimizer};
use tt_tensor::{no_grad, randn_array, Module, Tensor};

fn p() -> QParams {
    QParams::new(0.25, 10).unwrap()
}

fn fq(v: f32) -> f32 {
    let x = Tensor::from_vec(vec![v], &[1]).unwrap();
    fake_quantize(&x, &[p()], QRange::U8).unwrap().to_vec()[0]
}

#[test]
fn values_are_the_dequantized_codes_and_the_gradient_passes_only_inside_the_range() {
    // Codes 0..=255 with Z = 10 cover [−2.5, 61.25].
    let xs = vec![-5.0f32, -2.5, -1.1, 0.0, 0.3, 7.37, 61.25, 70.0];
    let x = Tensor::param(ndarray::Array1::from(xs.clone()).into_dyn());
    let y = fake_quantize(&x, &[p()], QRange::U8).unwrap();
    for (&v, &got) in xs.iter().zip(&y.to_vec()) {
        assert_eq!(got, p().dequantize(p().quantize(v, QRange::U8)), "{v}");
    }
    y.sum().backward().unwrap();
    let g = x.grad().unwrap().iter().copied().collect::<Vec<_>>();
    assert_eq!(g, vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
}

/// Fake quantization is a staircase: its derivative is 0 almost everywhere and undefined at
/// the steps, so a finite difference smaller than a step says nothing. What the straight-through
/// gradient stands for is the staircase's slope at the scale of a step: a difference over whole
/// steps is exactly 1 inside the range — and exactly 0 outside it, where the gradient is 0 too.
#[test]
fn the_straight_through_gradient_is_the_finite_difference_over_whole_steps() {
    for x0 in [0.1f32, 3.3, 20.06, 50.0] {
        for k in [1.0f32, 4.0, 16.0] {
            let h = k * p().scale();
            assert_eq!((fq(x0 + h) - fq(x0)) / h, 1.0, "inside at {x0}, {k} steps");
        }
    }
    for x0 in [-10.0f32, 65.0, 100.0] {
        assert_eq!((fq(x0 + 1.0) - fq(x0)) / 1.0, 0.0, "outside at {x0}");
    }
}

#[test]
fn per_channel_parameters_and_bad_arguments() {
    let w = Tensor::from_vec(vec![1.0, -1.0, 10.0, 5.0], &[2, 2]).unwrap();
    let ps = [QParams::new(1.0 / 127.0, 0).unwrap(), QParams::new(10.0 / 127.0, 0).unwrap()];
    let y = fake_quantize(&w, &ps, QRange::I8_SYMMETRIC).unwrap().to_vec();
    assert_eq!(y[0], 1.0);
    assert!((y[3] - 5.0).abs() <= 10.0 / 127.0 / 2.0);
    assert!(fake_quantize(&w, &ps[..1], QRange::I8).is_ok());
    assert!(fake_quantize(&w, &[p(), p(), p()], QRange::I8).is_err());
    assert!(QParams::new(0.0, 0).is_err());
}

fn mlp() -> Sequential {
    Sequential::new().layer(Linear::new(16, 32, true, 1)).layer(Relu).layer(Linear::new(32, 4, true, 2))
}

fn data(seed: u64) -> Tensor {
    use rand::SeedableRng;
    Tensor::from_array(randn_array(&[64, 16], 0.0, 1.0, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)))
}

/// prepare → the graph forward is fake-quantized → a few Adam steps train through it → convert:
/// the int8 model computes what the fake-quantized forward computed (same codes, same input
/// parameters; only the integer epilogue's f32 rounding differs).
#[test]
fn prepare_train_convert_gives_an_int8_model_equal_to_its_fake_quantized_forward() {
    let x = data(0);
    let labels: Vec<usize> = (0..64).map(|i| i % 4).collect();
    let mut m = mlp();
    let cal = calibrate(&mut m, &|| Box::new(MinMax::default()), &mut |md| {
        md.forward(&x)?;
        Ok(())
    })
    .unwrap();
    let fp32 = no_grad(|| m.forward(&x)).unwrap().to_vec();
    assert_eq!(prepare_qat(&mut m, WeightConfig::PER_CHANNEL, &cal).unwrap(), 2);
    let faked = m.forward(&x).unwrap().to_vec();
    assert!(faked.iter().zip(&fp32).any(|(a, b)| a != b), "the forward is fake-quantized");
    let mut opt = Adam::new(m.parameters(), 1e-3, 0.0).unwrap();
    let mut losses = Vec::new();
    for _ in 0..20 {
        opt.zero_grad();
        let loss = cross_entropy(&m.forward(&x).unwrap(), &labels).unwrap();
        losses.push(loss.item().unwrap());
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    assert!(losses[19] < losses[0], "QAT trains: {losses:?}");
    let trained_fake = m.forward(&x).unwrap().to_vec();
    let layers = convert_qat(&mut m, WeightConfig::PER_CHANNEL, &cal).unwrap();
    assert!(layers.iter().all(|l| l.format == "int8-static/ch"));
    let int8 = no_grad(|| m.forward(&x)).unwrap().to_vec();
    let scale = trained_fake.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = int8.iter().zip(&trained_fake).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d <= 1e-5 * scale.max(1.0), "int8 vs fake-quantized forward: {d}");
    assert!(prepare_qat(&mut m, WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerChannel }, &cal)
        .is_err());
}

fn calibrated(m: &mut Sequential, x: &Tensor) -> tt_quant::Calibration {
    calibrate(m, &|| Box::new(MinMax::default()), &mut |md| {
        md.forward(x)?;
        Ok(())
    })
    .unwrap()
}

/// The probe's example: `prepare_qat` replaced a pruning mask, so pruned weights regrew after one
/// step. QAT is now composed over the mask: pruned weights get no gradient and stay exactly 0
/// through training (no `reapply`), conversion quantizes them to code 0 and puts the mask back.
#[test]
fn qat_over_a_pruning_mask_keeps_the_pruned_weights_zero() {
    use tt_compress::prune::Pruning;
    let x = data(3);
    let labels: Vec<usize> = (0..64).map(|i| i % 4).collect();
    let mut m = mlp();
    let mut pruning = Pruning::default();
    pruning.magnitude(&mut m, &["0", "2"], 0.5).unwrap();
    let cal = calibrated(&mut m, &x);
    prepare_qat(&mut m, WeightConfig::PER_CHANNEL, &cal).unwrap();
    let e = prepare_qat(&mut m, WeightConfig::PER_CHANNEL, &cal).unwrap_err().to_string();
    assert!(e.contains("prepared for QAT already"), "{e}");
    let pruned = |m: &Sequential| -> Vec<f32> {
        pruning
            .layers()
            .iter()
            .flat_map(|l| {
                let i = l.name.parse::<usize>().unwrap();
                let w = m.layers[i].as_linear().unwrap().weight.to_vec();
                w.into_iter().zip(l.mask.iter()).filter(|(_, &k)| k == 0.0).map(|(v, _)| v).collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(!pruned(&m).is_empty() && pruned(&m).iter().all(|&v| v == 0.0));
    let mut opt = Adam::new(m.parameters(), 1e-2, 0.0).unwrap();
    for _ in 0..3 {
        opt.zero_grad();
        cross_entropy(&m.forward(&x).unwrap(), &labels).unwrap().backward().unwrap();
        opt.step().unwrap();
        assert!(pruned(&m).iter().all(|&v| v == 0.0), "a pruned weight regrew under QAT");
    }
    convert_qat(&mut m, WeightConfig::PER_CHANNEL, &cal).unwrap();
    assert!(pruned(&m).iter().all(|&v| v == 0.0), "the int8 weights keep the zeros");
    for i in [0, 2] {
        let l = m.layers[i].as_linear().unwrap();
        assert_eq!(l.transform().map(|t| t.name()), Some("mask"), "layer {i}: the mask is back");
    }
    pruning.make_permanent(&mut m).unwrap();
}

/// The probe's example: quantizing during an unfinished low-rank factorization quantized the
/// layer's unused stored weight instead of `U·V`. A layer carrying any forward transform is
/// refused (naming it), the model unchanged; once the transform is finished, quantizing works
/// on what the layer computes.
#[test]
fn quantizing_a_layer_that_carries_a_transform_is_refused() {
    use tt_compress::lowrank::Factored;
    use tt_compress::prune::Pruning;
    let x = data(4);
    let mut m = mlp();
    let f = Factored::factor(&mut m, &["0"], 3).unwrap();
    let before = no_grad(|| m.forward(&x)).unwrap().to_vec();
    let e = tt_quant::quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap_err().to_string();
    assert!(e.contains("layer '0' carries a 'lowrank' forward transform"), "{e}");
    assert!(tt_tensor::nn::linears(&m).iter().all(|(_, l)| l.installed_projection().is_none()), "nothing installed");
    assert_eq!(no_grad(|| m.forward(&x)).unwrap().to_vec(), before);
    f.finish(&mut m).unwrap();
    tt_quant::quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap();
    let after = no_grad(|| m.forward(&x)).unwrap().to_vec();
    let d = after.iter().zip(&before).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d < 0.05, "the int8 model computes the factored one: {d}");
    // A pruning mask likewise, until it is made permanent.
    let mut m = mlp();
    let mut p = Pruning::default();
    p.magnitude(&mut m, &["2"], 0.5).unwrap();
    let e = tt_quant::quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap_err().to_string();
    assert!(e.contains("layer '2' carries a 'mask' forward transform"), "{e}");
    p.make_permanent(&mut m).unwrap();
    tt_quant::quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap();
}
