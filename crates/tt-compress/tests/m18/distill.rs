//! The distillation loss on known logits, its gradient, a constant teacher, extreme logits.

use tt_compress::distill::Distillation;
use tt_tensor::loss::{cross_entropy, kl_div_with_temperature};
use tt_tensor::testing::assert_grads;
use tt_tensor::Tensor;

fn t(v: &[f32], s: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), s).unwrap()
}

/// Known values: with α = 0 it is the cross-entropy; with α = 1 it is T²·KL; equal logits give
/// KL 0. One row [0, ln 3] vs teacher [ln 3, 0] at T = 1: p_t = (3/4, 1/4), q = (1/4, 3/4),
/// KL = ¾ln3 − ¼ln3 = ½ln3.
#[test]
fn known_values() {
    let (s, te) = (t(&[0.0, 3f32.ln()], &[1, 2]), t(&[3f32.ln(), 0.0], &[1, 2]));
    let kl = Distillation::new(1.0, 1.0).unwrap().loss(&s, &te, &[0]).unwrap().item().unwrap();
    assert!((kl - 0.5 * 3f32.ln()).abs() < 1e-6, "{kl}");
    let ce = Distillation::new(2.0, 0.0).unwrap().loss(&s, &te, &[1]).unwrap().item().unwrap();
    assert!((ce - cross_entropy(&s, &[1]).unwrap().item().unwrap()).abs() < 1e-7);
    // T² scaling at T = 3, α = 0.7.
    let d = Distillation::new(3.0, 0.7).unwrap();
    let got = d.loss(&s, &te, &[1]).unwrap().item().unwrap();
    let want = 0.7 * 9.0 * kl_div_with_temperature(&s, &te, 3.0).unwrap().item().unwrap()
        + 0.3 * cross_entropy(&s, &[1]).unwrap().item().unwrap();
    assert!((got - want).abs() < 1e-6);
    assert!(Distillation::new(1.0, 1.0).unwrap().loss(&s, &s, &[0]).unwrap().item().unwrap().abs() < 1e-6);
}

#[test]
fn the_gradient_matches_finite_differences_and_the_teacher_gets_none() {
    let teacher = Tensor::param(Tensor::randn(&[3, 5], 0.0, 2.0, 1).data().clone());
    let d = Distillation::new(2.5, 0.6).unwrap();
    let labels = [4usize, 0, 2];
    assert_grads(|i| Ok(d.loss(&i[0], &teacher, &labels).unwrap()), &[Tensor::randn(&[3, 5], 0.0, 1.0, 2)], 1e-3, 1e-2);
    let s = Tensor::param(Tensor::randn(&[3, 5], 0.0, 1.0, 3).data().clone());
    d.loss(&s, &teacher, &labels).unwrap().backward().unwrap();
    assert!(s.grad().is_some());
    assert!(teacher.grad().is_none_or(|g| g.iter().all(|&v| v == 0.0)), "the teacher is a constant");
}

#[test]
fn extreme_logits_stay_finite_and_bad_settings_are_errors() {
    let s = Tensor::param(ndarray::array![[1000.0f32, -1000.0, 0.0], [-1000.0, 1000.0, 5.0]].into_dyn());
    let te = t(&[-1000.0, 1000.0, 0.0, 1000.0, -1000.0, 0.0], &[2, 3]);
    let l = Distillation::new(2.0, 0.5).unwrap().loss(&s, &te, &[0, 1]).unwrap();
    assert!(l.item().unwrap().is_finite());
    l.backward().unwrap();
    assert!(s.grad().unwrap().iter().all(|g| g.is_finite()));
    for (temp, alpha) in
        [(0.0, 0.5), (-1.0, 0.5), (f32::NAN, 0.5), (1e-45, 0.5), (1.0, 1.5), (1.0, -0.1), (1.0, f32::NAN)]
    {
        assert!(Distillation::new(temp, alpha).is_err(), "T {temp} α {alpha}");
    }
    let d = Distillation::new(1.0, 0.5).unwrap();
    assert!(d.loss(&t(&[1.0, 2.0], &[1, 2]), &t(&[1.0, 2.0, 3.0], &[1, 3]), &[0]).is_err());
    assert!(d.loss(&t(&[1.0, 2.0], &[1, 2]), &t(&[1.0, 2.0], &[1, 2]), &[5]).is_err());
}

/// The settings are checked once and cannot be changed afterwards (the fields are private: a NaN
/// α set after `new` used to reach the loss unchecked); what was checked is what is used.
#[test]
fn distillation_settings_are_checked_and_kept() {
    for (t, a) in [(f32::NAN, 0.5), (1.0, f32::NAN), (0.0, 0.5), (f32::INFINITY, 0.5), (1.0, 1.5), (1.0, -0.1)] {
        assert!(Distillation::new(t, a).is_err(), "T = {t}, α = {a}");
    }
    let d = Distillation::new(2.0, 0.25).unwrap();
    assert_eq!((d.temperature(), d.alpha()), (2.0, 0.25));
}
