//! Module 04 — losses: MSE, cross-entropy, binary cross-entropy, KL divergence with temperature.

use tt_tensor::loss::{
    bce_with_logits, binary_cross_entropy, cross_entropy, cross_entropy_weighted, kl_div_with_temperature, mse,
};
use tt_tensor::testing::assert_grads;
use tt_tensor::Tensor;

fn t(v: &[f32], s: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), s).unwrap()
}

#[test]
fn mse_value() {
    let l = mse(&t(&[1.0, 2.0, 3.0], &[3]), &t(&[1.0, 0.0, 6.0], &[3])).unwrap();
    assert!((l.item().unwrap() - 13.0 / 3.0).abs() < 1e-6);
    assert!(mse(&t(&[1.0], &[1]), &t(&[1.0, 2.0], &[2])).is_err());
}

#[test]
fn cross_entropy_value_matches_definition() {
    let logits = t(&[2.0, 1.0, 0.1, 0.5, 2.5, 0.3], &[2, 3]);
    let l = cross_entropy(&logits, &[0, 1]).unwrap().item().unwrap();
    let row = |r: &[f32], y: usize| {
        let lse = r.iter().map(|v| v.exp()).sum::<f32>().ln();
        lse - r[y]
    };
    let want = (row(&[2.0, 1.0, 0.1], 0) + row(&[0.5, 2.5, 0.3], 1)) / 2.0;
    assert!((l - want).abs() < 1e-6);
    // Uniform logits over C classes give ln C.
    let u = cross_entropy(&Tensor::zeros(&[4, 10]), &[0, 3, 5, 9]).unwrap().item().unwrap();
    assert!((u - 10f32.ln()).abs() < 1e-6);
    // Extreme logits stay finite.
    assert!(cross_entropy(&t(&[1e4, -1e4], &[1, 2]), &[1]).unwrap().item().unwrap().is_finite());
    assert!(cross_entropy(&logits, &[0, 3]).is_err());
    assert!(cross_entropy(&logits, &[0]).is_err());
}

#[test]
fn binary_cross_entropy_values() {
    let p = t(&[0.9, 0.2], &[2]);
    let y = t(&[1.0, 0.0], &[2]);
    let want = -((0.9f32).ln() + (0.8f32).ln()) / 2.0;
    assert!((binary_cross_entropy(&p, &y).unwrap().item().unwrap() - want).abs() < 1e-6);
    let z = t(&[2.0, -1.0, 30.0], &[3]);
    let yz = t(&[1.0, 0.0, 0.0], &[3]);
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    // For z = 30, y = 0 the loss is softplus(30) = 30 + ln(1 + e^-30) ≈ 30; naive 1 − σ(30) would round to 0.
    let want2 = (-(sig(2.0)).ln() - (1.0 - sig(-1.0)).ln() + 30.0) / 3.0;
    let got2 = bce_with_logits(&z, &yz).unwrap().item().unwrap();
    assert!((got2 - want2).abs() < 1e-4, "{got2} vs {want2}");
    // Saturated probabilities do not produce infinities.
    assert!(binary_cross_entropy(&t(&[0.0, 1.0], &[2]), &t(&[1.0, 0.0], &[2])).unwrap().item().unwrap().is_finite());
}

#[test]
fn kl_divergence_with_temperature() {
    let s = t(&[1.0, 2.0, 3.0], &[1, 3]);
    assert!(kl_div_with_temperature(&s, &s, 2.0).unwrap().item().unwrap().abs() < 1e-6, "KL(p‖p) = 0");
    let te = t(&[3.0, 1.0, 0.0], &[1, 3]);
    let temp = 2.0f32;
    let soft = |v: &[f32]| {
        let e: Vec<f32> = v.iter().map(|x| (x / temp).exp()).collect();
        let z: f32 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect::<Vec<_>>()
    };
    let (ps, pt) = (soft(&[1.0, 2.0, 3.0]), soft(&[3.0, 1.0, 0.0]));
    let want: f32 = pt.iter().zip(&ps).map(|(a, b)| a * (a / b).ln()).sum();
    let got = kl_div_with_temperature(&s, &te, temp).unwrap().item().unwrap();
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    assert!(got > 0.0);
    assert!(kl_div_with_temperature(&s, &te, 0.0).is_err());
}

#[test]
fn loss_gradients() {
    let logits = Tensor::randn(&[3, 5], 0.0, 1.0, 1);
    assert_grads(|i| cross_entropy(&i[0], &[1, 4, 0]), &[logits], 1e-3, 1e-2);
    let target = Tensor::randn(&[2, 3], 0.0, 1.0, 2);
    assert_grads(|i| mse(&i[0], &target), &[Tensor::randn(&[2, 3], 0.0, 1.0, 3)], 1e-3, 1e-2);
    let yb = t(&[1.0, 0.0, 1.0], &[3]);
    assert_grads(|i| bce_with_logits(&i[0], &yb), &[t(&[0.3, -1.2, 2.0], &[3])], 1e-3, 1e-2);
    assert_grads(|i| binary_cross_entropy(&i[0], &yb), &[t(&[0.3, 0.6, 0.8], &[3])], 1e-3, 2e-2);
    let teacher = Tensor::randn(&[2, 4], 0.0, 1.0, 4);
    assert_grads(|i| kl_div_with_temperature(&i[0], &teacher, 3.0), &[Tensor::randn(&[2, 4], 0.0, 1.0, 5)], 1e-3, 1e-2);
}

#[test]
fn weighted_cross_entropy() {
    let logits = Tensor::randn(&[3, 4], 0.0, 1.0, 9);
    let plain = cross_entropy(&logits, &[0, 2, 3]).unwrap().item().unwrap();
    let ones = cross_entropy_weighted(&logits, &[0, 2, 3], &[2.0, 2.0, 2.0]).unwrap().item().unwrap();
    assert!((plain - ones).abs() < 1e-6, "uniform weights are the plain mean");
    // Zero weight removes a row: equals the plain loss of the remaining rows.
    let two = cross_entropy(&logits.narrow(0, 0, 2).unwrap(), &[0, 2]).unwrap().item().unwrap();
    let masked = cross_entropy_weighted(&logits, &[0, 2, 3], &[1.0, 1.0, 0.0]).unwrap().item().unwrap();
    assert!((two - masked).abs() < 1e-6);
    assert!(cross_entropy_weighted(&logits, &[0, 2, 3], &[0.0, 0.0, 0.0]).is_err());
    assert!(cross_entropy_weighted(&logits, &[0, 2, 3], &[1.0, -1.0, 1.0]).is_err());
    assert!(cross_entropy_weighted(&logits, &[0, 2, 3], &[1.0]).is_err());
    assert_grads(
        |i| cross_entropy_weighted(&i[0], &[1, 0, 3], &[0.2, 1.0, 3.0]),
        std::slice::from_ref(&logits),
        1e-3,
        1e-2,
    );
}

/// Bad targets, empty batches, bad weights and temperatures: named errors, not NaN or 0 losses.
mod bad_input {
    use super::t;
    use tt_tensor::loss::{
        bce_with_logits, binary_cross_entropy, cross_entropy, cross_entropy_weighted, kl_div_with_temperature, mse,
    };
    use tt_tensor::{Tensor, TensorError};

    #[test]
    fn cross_entropy_targets_batches_and_lengths() {
        let logits = t(&[1.0, 2.0, 3.0, 1.0, 0.0, -1.0], &[2, 3]);
        let e = cross_entropy(&logits, &[0, 3]).unwrap_err();
        assert!(matches!(e, TensorError::OutOfRange { op: "cross_entropy", index: 3, limit: 3, .. }), "{e}");
        assert!(e.to_string().contains("target class"), "{e}");
        let e = cross_entropy(&logits, &[0]).unwrap_err();
        assert!(
            matches!(e, TensorError::InvalidArgument { op: "cross_entropy", .. })
                && e.to_string().contains("1 targets"),
            "{e}"
        );
        for empty in [Tensor::zeros(&[0, 3]), Tensor::zeros(&[2, 0])] {
            let e = cross_entropy(&empty, &[]).unwrap_err();
            assert!(
                matches!(e, TensorError::InvalidShape { op: "cross_entropy", .. }) && e.to_string().contains("empty"),
                "{e}"
            );
        }
        assert!(matches!(cross_entropy(&Tensor::scalar(1.0), &[0]).unwrap_err(), TensorError::InvalidShape { .. }));
    }

    #[test]
    fn weighted_cross_entropy_names_the_bad_weight() {
        let logits = t(&[1.0, 2.0, 3.0, 1.0, 0.0, -1.0], &[2, 3]);
        let e = cross_entropy_weighted(&logits, &[0, 1], &[1.0, f32::NAN]).unwrap_err();
        assert!(matches!(e, TensorError::InvalidArgument { op: "cross_entropy_weighted", .. }), "{e}");
        assert!(e.to_string().contains("weights[1] = NaN"), "{e}");
        let e = cross_entropy_weighted(&logits, &[0, 1], &[f32::INFINITY, 1.0]).unwrap_err();
        assert!(e.to_string().contains("weights[0] = inf"), "{e}");
        let e = cross_entropy_weighted(&logits, &[0, 1], &[0.0, 0.0]).unwrap_err();
        assert!(e.to_string().contains("all zero"), "{e}");
        let e = cross_entropy_weighted(&logits, &[0, 1], &[3e38, 3e38]).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let e = cross_entropy_weighted(&Tensor::zeros(&[0, 3]), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn empty_inputs_are_errors_not_zero_losses() {
        let z = Tensor::zeros(&[0]);
        for (op, e) in [
            ("mse", mse(&z, &z).unwrap_err()),
            ("binary_cross_entropy", binary_cross_entropy(&z, &z).unwrap_err()),
            ("bce_with_logits", bce_with_logits(&z, &z).unwrap_err()),
            ("kl_div", kl_div_with_temperature(&Tensor::zeros(&[0, 3]), &Tensor::zeros(&[0, 3]), 1.0).unwrap_err()),
        ] {
            assert!(
                matches!(e, TensorError::InvalidShape { op: o, .. } if o == op) && e.to_string().contains("empty"),
                "{e}"
            );
        }
    }

    #[test]
    fn binary_cross_entropy_values_outside_the_unit_interval() {
        let ok = t(&[0.5, 0.5], &[2]);
        let e = binary_cross_entropy(&ok, &t(&[2.0, 0.0], &[2])).unwrap_err();
        assert!(matches!(e, TensorError::InvalidArgument { op: "binary_cross_entropy", .. }), "{e}");
        assert!(e.to_string().contains("targets[0] = 2"), "{e}");
        let e = binary_cross_entropy(&t(&[0.5, f32::NAN], &[2]), &ok).unwrap_err();
        assert!(e.to_string().contains("probs[1] = NaN"), "{e}");
        let e = bce_with_logits(&t(&[10.0, -3.0], &[2]), &t(&[0.0, -1.0], &[2])).unwrap_err();
        assert!(
            matches!(e, TensorError::InvalidArgument { op: "bce_with_logits", .. })
                && e.to_string().contains("targets[1] = -1"),
            "{e}"
        );
        assert!(bce_with_logits(&t(&[10.0, -3.0], &[2]), &t(&[0.25, 1.0], &[2])).is_ok(), "soft labels are fine");
    }

    #[test]
    fn kl_temperature_and_rank() {
        let s = t(&[1.0, 2.0], &[1, 2]);
        for temp in [0.0, -1.0, f32::NAN, f32::INFINITY, 1e-45] {
            let e = kl_div_with_temperature(&s, &s, temp).unwrap_err();
            assert!(
                matches!(e, TensorError::InvalidArgument { op: "kl_div", .. }) && e.to_string().contains("temperature"),
                "{temp}: {e}"
            );
        }
        // 0-d logits: `ndim − 1` used to underflow.
        let e = kl_div_with_temperature(&Tensor::scalar(1.0), &Tensor::scalar(1.0), 1.0).unwrap_err();
        assert!(matches!(e, TensorError::InvalidShape { op: "kl_div", .. }), "{e}");
        assert!(kl_div_with_temperature(&s, &s, 2.0).unwrap().item().unwrap().abs() < 1e-6);
    }
}
