//! Module 02 — activations: values, numerical stability, and gradients.

use tt_tensor::testing::assert_grads;
use tt_tensor::Tensor;

fn t(v: &[f32], s: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), s).unwrap()
}

#[test]
fn relu_sigmoid_tanh_values() {
    let x = t(&[-2.0, 0.0, 3.0], &[3]);
    assert_eq!(x.relu().to_vec(), vec![0.0, 0.0, 3.0]);
    let s = x.sigmoid().to_vec();
    assert!((s[1] - 0.5).abs() < 1e-7);
    assert!((s[2] - 1.0 / (1.0 + (-3.0f32).exp())).abs() < 1e-6);
    assert!((x.tanh().to_vec()[0] - (-2.0f32).tanh()).abs() < 1e-7);
    // Sigmoid must not overflow on the tails.
    let tails = t(&[-1000.0, 1000.0], &[2]).sigmoid().to_vec();
    assert_eq!(tails, vec![0.0, 1.0]);
}

#[test]
fn gelu_tanh_form_values() {
    // Reference values of 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) computed in f64.
    let xs = [-3.0f64, -1.0, 0.0, 0.5, 2.0];
    let got = t(&xs.map(|v| v as f32), &[5]).gelu().to_vec();
    for (x, g) in xs.iter().zip(got) {
        let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
        assert!((g as f64 - want).abs() < 1e-6, "gelu({x}) = {g}, want {want}");
    }
}

#[test]
fn softmax_is_stable_and_normalized() {
    let x = t(&[1000.0, 1001.0, 1002.0, -5.0, 0.0, 5.0], &[2, 3]);
    let s = x.softmax(1).unwrap().to_vec();
    assert!(s.iter().all(|v| v.is_finite()));
    assert!((s[0] + s[1] + s[2] - 1.0).abs() < 1e-6);
    // Shift invariance: softmax(x + c) = softmax(x).
    let base = t(&[0.0, 1.0, 2.0], &[3]).softmax(0).unwrap().to_vec();
    for i in 0..3 {
        assert!((s[i] - base[i]).abs() < 1e-6);
    }
    // Along axis 0 columns sum to one.
    let c = x.softmax(0).unwrap().sum_axis(0, false).unwrap().to_vec();
    assert!(c.iter().all(|v| (v - 1.0).abs() < 1e-6));
}

#[test]
fn log_softmax_equals_log_of_softmax_and_is_finite_on_extremes() {
    let x = Tensor::randn(&[4, 7], 0.0, 3.0, 11);
    let a = x.log_softmax(1).unwrap().to_vec();
    let b = x.softmax(1).unwrap().log().to_vec();
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() < 1e-5);
    }
    let ext = t(&[-1e4, 0.0, 1e4], &[3]).log_softmax(0).unwrap().to_vec();
    assert!(ext.iter().all(|v| v.is_finite()), "{ext:?}");
    assert_eq!(ext[2], 0.0);
}

#[test]
fn activation_gradients() {
    // Inputs avoid ReLU's kink at 0, where the derivative is undefined.
    let x = || Tensor::from_vec(vec![-1.3, -0.4, 0.3, 0.9, 2.1, -2.2], &[2, 3]).unwrap();
    assert_grads(|i| Ok(i[0].relu()), &[x()], 1e-3, 1e-2);
    assert_grads(|i| Ok(i[0].sigmoid()), &[x()], 1e-3, 1e-2);
    assert_grads(|i| Ok(i[0].tanh()), &[x()], 1e-3, 1e-2);
    assert_grads(|i| Ok(i[0].gelu()), &[x()], 1e-3, 1e-2);
    assert_grads(|i| i[0].softmax(1), &[x()], 1e-3, 1e-2);
    assert_grads(|i| i[0].softmax(0), &[x()], 1e-3, 1e-2);
    assert_grads(|i| i[0].log_softmax(1), &[x()], 1e-3, 1e-2);
}
