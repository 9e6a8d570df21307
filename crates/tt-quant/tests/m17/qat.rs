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
