//! Module 06 — optimizers: exact update rules, convergence, and gradient clipping.

use tt_tensor::optim::{clip_grad_norm, Adam, Optimizer, Sgd};
use tt_tensor::Tensor;

fn param(v: &[f32]) -> Tensor {
    Tensor::param(ndarray::Array1::from(v.to_vec()).into_dyn())
}

/// loss = Σ w², gradient 2w.
fn quadratic_grad(w: &Tensor) {
    w.zero_grad();
    w.mul(w).unwrap().sum().backward().unwrap();
}

#[test]
fn sgd_plain_momentum_and_weight_decay() {
    let w = param(&[1.0, -2.0]);
    let mut opt = Sgd::new(vec![w.clone()], 0.1, 0.0, 0.0).unwrap();
    quadratic_grad(&w);
    opt.step().unwrap();
    assert_eq!(w.to_vec(), vec![0.8, -1.6]);

    // Momentum 0.9: v1 = g1, v2 = 0.9·v1 + g2.
    let w = param(&[1.0]);
    let mut opt = Sgd::new(vec![w.clone()], 0.1, 0.9, 0.0).unwrap();
    quadratic_grad(&w);
    opt.step().unwrap(); // g=2, v=2, w=0.8
    quadratic_grad(&w);
    opt.step().unwrap(); // g=1.6, v=3.4, w=0.46
    assert!((w.to_vec()[0] - 0.46).abs() < 1e-6);

    // Weight decay λ=0.5 adds λw to the gradient: g = 2 + 0.5 = 2.5.
    let w = param(&[1.0]);
    let mut opt = Sgd::new(vec![w.clone()], 0.1, 0.0, 0.5).unwrap();
    quadratic_grad(&w);
    opt.step().unwrap();
    assert!((w.to_vec()[0] - 0.75).abs() < 1e-6);
    assert!(Sgd::new(vec![], -1.0, 0.0, 0.0).is_err());
}

#[test]
fn adam_first_step_is_lr_sized_and_converges() {
    // With bias correction, Adam's first step is lr·sign(g) (up to eps).
    let w = param(&[1.0, -3.0]);
    let mut opt = Adam::new(vec![w.clone()], 0.01, 0.0).unwrap();
    quadratic_grad(&w);
    opt.step().unwrap();
    let v = w.to_vec();
    assert!((v[0] - 0.99).abs() < 1e-6 && (v[1] + 2.99).abs() < 1e-6, "{v:?}");
    for _ in 0..2000 {
        quadratic_grad(&w);
        opt.step().unwrap();
    }
    assert!(w.to_vec().iter().all(|x| x.abs() < 0.02), "{:?}", w.to_vec());
}

#[test]
fn adamw_decay_is_decoupled() {
    // Zero gradient: Adam's L2 decay does nothing through m/v only if g = 0 → but AdamW still shrinks w.
    let w = param(&[2.0]);
    let mut opt = Adam::adamw(vec![w.clone()], 0.1, 0.5).unwrap();
    w.set_grad(Some(ndarray::arr1(&[0.0f32]).into_dyn())).unwrap();
    opt.step().unwrap();
    assert!((w.to_vec()[0] - 2.0 * (1.0 - 0.1 * 0.5)).abs() < 1e-6);
    let w2 = param(&[2.0]);
    let mut adam = Adam::new(vec![w2.clone()], 0.1, 0.5).unwrap();
    w2.set_grad(Some(ndarray::arr1(&[0.0f32]).into_dyn())).unwrap();
    adam.step().unwrap();
    // L2 decay puts λw = 1.0 into the gradient, so Adam's first step is a full lr step.
    assert!((w2.to_vec()[0] - 1.9).abs() < 1e-5, "{}", w2.to_vec()[0]);
}

#[test]
fn gradient_clipping() {
    let a = param(&[0.0, 0.0]);
    let b = param(&[0.0]);
    a.set_grad(Some(ndarray::arr1(&[3.0f32, 0.0]).into_dyn())).unwrap();
    b.set_grad(Some(ndarray::arr1(&[4.0f32]).into_dyn())).unwrap();
    let norm = clip_grad_norm(&[a.clone(), b.clone()], 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let ga = a.grad().unwrap();
    let gb = b.grad().unwrap();
    let new_norm = (ga[[0]].powi(2) + gb[[0]].powi(2)).sqrt();
    assert!((new_norm - 1.0).abs() < 1e-4, "{new_norm}");
    // Below the threshold nothing changes.
    let n2 = clip_grad_norm(&[a.clone(), b.clone()], 10.0).unwrap();
    assert!((n2 - new_norm).abs() < 1e-6);
}

#[test]
fn set_lr_and_zero_grad() {
    let w = param(&[1.0]);
    let mut opt = Sgd::new(vec![w.clone()], 0.1, 0.0, 0.0).unwrap();
    opt.set_lr(0.05).unwrap();
    assert_eq!(opt.lr(), 0.05);
    quadratic_grad(&w);
    opt.zero_grad();
    assert!(w.grad().is_none());
    opt.step().unwrap();
    assert_eq!(w.to_vec(), vec![1.0], "no gradient, no update");
}

/// NaN, negative or out-of-range hyperparameters: named errors at construction, at `set_lr`, and at
/// `step` (the fields are public), with the weights left untouched.
mod bad_hyperparameters {
    use super::{param, quadratic_grad};
    use tt_tensor::optim::{clip_grad_norm, Adam, Optimizer, Sgd};
    use tt_tensor::TensorError;

    fn says(e: &TensorError, op: &str, what: &str) -> bool {
        matches!(e, TensorError::InvalidArgument { op: o, .. } if *o == op) && e.to_string().contains(what)
    }

    #[test]
    fn constructors_reject_bad_values() {
        for lr in [f32::NAN, -0.1, f32::INFINITY] {
            assert!(says(&Sgd::new(vec![param(&[1.0])], lr, 0.0, 0.0).err().unwrap(), "Sgd", "learning rate"));
            assert!(says(&Adam::new(vec![param(&[1.0])], lr, 0.0).err().unwrap(), "Adam", "learning rate"));
            assert!(says(&Adam::adamw(vec![param(&[1.0])], lr, 0.0).err().unwrap(), "Adam", "learning rate"));
        }
        let e = Sgd::new(vec![param(&[1.0])], 0.1, f32::NAN, 0.0).err().unwrap();
        assert!(says(&e, "Sgd", "momentum NaN"), "{e}");
        let e = Sgd::new(vec![param(&[1.0])], 0.1, 0.9, -1.0).err().unwrap();
        assert!(says(&e, "Sgd", "weight_decay -1"), "{e}");
        let e = Adam::adamw(vec![param(&[1.0])], 0.1, f32::NAN).err().unwrap();
        assert!(says(&e, "Adam", "weight_decay NaN"), "{e}");
    }

    #[test]
    fn set_lr_rejects_and_keeps_the_old_rate() {
        let mut sgd = Sgd::new(vec![param(&[1.0])], 0.1, 0.0, 0.0).unwrap();
        let e = sgd.set_lr(f32::NAN).unwrap_err();
        assert!(says(&e, "Sgd::set_lr", "learning rate NaN"), "{e}");
        assert_eq!(sgd.lr(), 0.1);
        let mut adam = Adam::new(vec![param(&[1.0])], 0.1, 0.0).unwrap();
        assert!(says(&adam.set_lr(-1.0).unwrap_err(), "Adam::set_lr", "learning rate -1"));
        assert_eq!(adam.lr(), 0.1);
        adam.set_lr(0.0).unwrap();
        assert_eq!(adam.lr(), 0.0);
    }

    #[test]
    fn step_rechecks_public_fields() {
        let w = param(&[1.0, -2.0]);
        let mut sgd = Sgd::new(vec![w.clone()], 0.1, 0.0, 0.0).unwrap();
        sgd.lr = f32::NAN;
        quadratic_grad(&w);
        assert!(says(&sgd.step().unwrap_err(), "Sgd", "learning rate NaN"));
        assert_eq!(w.to_vec(), vec![1.0, -2.0], "a NaN learning rate must not step");
        sgd.lr = 0.1;
        sgd.momentum = -0.5;
        assert!(says(&sgd.step().unwrap_err(), "Sgd", "momentum"));

        let mut adam = Adam::new(vec![w.clone()], 0.1, 0.0).unwrap().with_betas(1.0, 0.999);
        assert!(says(&adam.step().unwrap_err(), "Adam", "beta1 1"));
        let mut adam = Adam::new(vec![w.clone()], 0.1, 0.0).unwrap().with_betas(0.9, f32::NAN);
        assert!(says(&adam.step().unwrap_err(), "Adam", "beta2 NaN"));
        let mut adam = Adam::new(vec![w.clone()], 0.1, 0.0).unwrap();
        adam.eps = 0.0;
        assert!(says(&adam.step().unwrap_err(), "Adam", "eps 0"));
        assert_eq!(w.to_vec(), vec![1.0, -2.0]);
    }

    #[test]
    fn clip_grad_norm_rejects_non_positive_or_nan_max_norm() {
        let a = param(&[0.0, 0.0]);
        a.set_grad(Some(ndarray::arr1(&[3.0f32, 4.0]).into_dyn())).unwrap();
        for max_norm in [0.0, -1.0, f32::NAN, f32::NEG_INFINITY] {
            let e = clip_grad_norm(std::slice::from_ref(&a), max_norm).unwrap_err();
            assert!(says(&e, "clip_grad_norm", "max_norm"), "{e}");
        }
        assert_eq!(
            a.grad().unwrap().iter().copied().collect::<Vec<f32>>(),
            vec![3.0, 4.0],
            "a negative max_norm used to flip the gradient"
        );
        // +inf only measures.
        assert!((clip_grad_norm(std::slice::from_ref(&a), f32::INFINITY).unwrap() - 5.0).abs() < 1e-6);
        assert_eq!(a.grad().unwrap().iter().copied().collect::<Vec<f32>>(), vec![3.0, 4.0]);
    }
}
