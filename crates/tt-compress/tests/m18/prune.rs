//! Sparsity and magnitude pruning: exact counts, iterative amounts, global thresholds, masks.

use tt_compress::prune::Pruning;
use tt_compress::sparsity;
use tt_tensor::loss::cross_entropy;
use tt_tensor::nn::{Linear, Relu, Sequential};
use tt_tensor::optim::{Adam, Optimizer};
use tt_tensor::{no_grad, Module, Tensor};

fn ones_linear(i: usize, o: usize) -> Sequential {
    let w = Tensor::param(ndarray::Array2::<f32>::ones((o, i)).into_dyn());
    Sequential::new().layer(Linear::from_tensors(w, None).unwrap())
}

#[test]
fn sparsity_of_known_matrices_is_a_fraction() {
    let t = Tensor::from_vec(vec![0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0], &[2, 4]).unwrap();
    assert_eq!(sparsity::counts(&t), (5, 8));
    assert_eq!(sparsity::tensor(&t), 0.625);
    assert_eq!(sparsity::tensor(&Tensor::from_vec(vec![], &[0]).unwrap()), 0.0);
    let mut m = ones_linear(2, 4);
    assert_eq!(sparsity::model(&mut m).unwrap(), 0.0);
}

/// An all-ones Linear(2, 4) pruned by 0 / 0.5 / 1 has exactly 0 / 4 / 8 zeros; 0% changes nothing.
#[test]
fn pruning_amounts_are_exact() {
    for (amount, zeros) in [(0.0, 0usize), (0.5, 4), (1.0, 8)] {
        let mut m = ones_linear(2, 4);
        let before = m.layers[0].as_linear().unwrap().weight.to_vec();
        Pruning::default().magnitude(&mut m, &["0"], amount).unwrap();
        let w = &m.layers[0].as_linear().unwrap().weight;
        assert_eq!(sparsity::counts(w).0, zeros, "amount {amount}");
        if amount == 0.0 {
            assert_eq!(w.to_vec(), before);
        }
    }
}

/// Repeated pruning acts on the still-unpruned weights (as `torch.nn.utils.prune`): 0.5 twice
/// leaves a quarter; the smallest magnitudes go first; a dominant weight survives 90%.
#[test]
fn iterative_pruning_removes_the_smallest_of_what_is_left() {
    let w: Vec<f32> = (0..100).map(|i| if i == 37 { 50.0 } else { (i as f32 - 49.5) / 10.0 }).collect();
    let mut m = Sequential::new().layer(
        Linear::from_tensors(
            Tensor::param(ndarray::Array2::from_shape_vec((10, 10), w.clone()).unwrap().into_dyn()),
            None,
        )
        .unwrap(),
    );
    let mut p = Pruning::default();
    p.magnitude(&mut m, &["0"], 0.5).unwrap();
    assert_eq!(sparsity::model(&mut m).unwrap(), 0.5);
    // The 50 pruned are the 50 smallest |w|.
    let after = m.layers[0].as_linear().unwrap().weight.to_vec();
    let mut mags: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    mags.sort_by(f32::total_cmp);
    assert!(after.iter().zip(&w).all(|(a, o)| *a == 0.0 || o.abs() >= mags[49]));
    p.magnitude(&mut m, &["0"], 0.5).unwrap();
    assert_eq!(sparsity::model(&mut m).unwrap(), 0.75);
    let mut q = Pruning::default();
    let mut m2 = Sequential::new().layer(
        Linear::from_tensors(
            Tensor::param(ndarray::Array2::from_shape_vec((10, 10), w.clone()).unwrap().into_dyn()),
            None,
        )
        .unwrap(),
    );
    q.magnitude(&mut m2, &["0"], 0.9).unwrap();
    assert_eq!(m2.layers[0].as_linear().unwrap().weight.to_vec()[37], 50.0, "the dominant weight survives 90%");
}

/// One global threshold: a layer of small weights loses more of them than a layer of large ones.
#[test]
fn global_pruning_uses_one_threshold_across_layers() {
    let small =
        Linear::from_tensors(Tensor::param(ndarray::Array2::from_elem((4, 4), 0.1f32).into_dyn()), None).unwrap();
    let large =
        Linear::from_tensors(Tensor::param(ndarray::Array2::from_elem((4, 4), 1.0f32).into_dyn()), None).unwrap();
    let mut m = Sequential::new().layer(small).layer(Relu).layer(large);
    Pruning::default().global_magnitude(&mut m, &["0", "2"], 0.5).unwrap();
    let z = |i: usize| sparsity::counts(&m.layers[i].as_linear().unwrap().weight).0;
    assert_eq!((z(0), z(2)), (16, 0));
    assert_eq!(sparsity::model(&mut m).unwrap(), 0.5);
}

#[test]
fn invalid_settings_are_rejected_before_anything_changes() {
    let mut m = ones_linear(2, 4);
    let mut p = Pruning::default();
    for bad in [-0.1, 1.5, f64::NAN] {
        assert!(p.magnitude(&mut m, &["0"], bad).is_err(), "{bad}");
        assert!(p.global_magnitude(&mut m, &["0"], bad).is_err(), "{bad}");
    }
    let e = p.magnitude(&mut m, &["0", "nope"], 0.5).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert_eq!(sparsity::model(&mut m).unwrap(), 0.0, "nothing pruned");
    assert!(p.layers().is_empty());
}

/// Adam with momentum from before pruning moves pruned weights; the forward mask keeps them out
/// of the function and `reapply` (the after-step hook) zeroes them again; `make_permanent` keeps
/// the zeros and removes the masks.
#[test]
fn masks_survive_optimizer_steps_and_make_permanent_keeps_the_zeros() {
    let mut m = Sequential::new().layer(Linear::new(6, 8, true, 1)).layer(Relu).layer(Linear::new(8, 3, true, 2));
    let x = Tensor::randn(&[16, 6], 0.0, 1.0, 3);
    let y: Vec<usize> = (0..16).map(|i| i % 3).collect();
    let mut opt = Adam::new(m.parameters(), 1e-2, 0.1).unwrap();
    let step = |m: &Sequential, opt: &mut Adam| {
        opt.zero_grad();
        cross_entropy(&m.forward(&x).unwrap(), &y).unwrap().backward().unwrap();
        opt.step().unwrap();
    };
    step(&m, &mut opt); // momentum and weight decay now act on every weight
    let mut p = Pruning::default();
    p.magnitude(&mut m, &["0", "2"], 0.6).unwrap();
    let zeros = |m: &mut Sequential| sparsity::model(m).unwrap();
    let target = zeros(&mut m);
    assert!((target - 0.6).abs() < 0.02, "{target}");
    for _ in 0..5 {
        step(&m, &mut opt);
        assert!(zeros(&mut m) < target, "the optimizer moved pruned weights (so reapply matters)");
        // The forward already ignores them: the masked forward equals the model with them zeroed.
        let masked = no_grad(|| m.forward(&x)).unwrap().to_vec();
        p.reapply();
        assert_eq!(zeros(&mut m), target);
        assert_eq!(no_grad(|| m.forward(&x)).unwrap().to_vec(), masked);
    }
    p.make_permanent(&mut m).unwrap();
    assert!(m.layers[0].as_linear().unwrap().transform().is_none());
    assert_eq!(zeros(&mut m), target);
}

#[test]
fn the_cubic_schedule_and_amounts_reach_the_target() {
    use tt_compress::prune::{amount_for, cubic_schedule};
    assert_eq!(cubic_schedule(0.0, 0.8, 0, 10).unwrap(), 0.0);
    assert_eq!(cubic_schedule(0.0, 0.8, 10, 10).unwrap(), 0.8);
    assert_eq!(cubic_schedule(0.0, 0.8, 20, 10).unwrap(), 0.8);
    // Half way: 0.8·(1 − 0.5³) = 0.7 — most of the pruning happens early.
    assert!((cubic_schedule(0.0, 0.8, 5, 10).unwrap() - 0.7).abs() < 1e-12);
    assert!(cubic_schedule(0.5, 0.2, 1, 10).is_err() && cubic_schedule(0.0, 0.5, 1, 0).is_err());
    // 50% → 75% takes half of what is left; pruning that amount reaches it.
    assert_eq!(amount_for(0.5, 0.75).unwrap(), 0.5);
    let mut m = ones_linear(10, 10);
    let mut p = Pruning::default();
    let mut s = 0.0;
    for t in 1..=4 {
        let target = cubic_schedule(0.0, 0.9, t, 4).unwrap();
        p.magnitude(&mut m, &["0"], amount_for(s, target).unwrap()).unwrap();
        s = sparsity::model(&mut m).unwrap();
        assert!((s - target).abs() <= 0.01, "step {t}: {s} vs {target}");
    }
    assert!(amount_for(0.6, 0.5).is_err());
}

/// Pruning further from a training hook, without the model: the layers' forward masks follow.
#[test]
fn advance_global_prunes_more_without_the_model() {
    let mut m = Sequential::new().layer(Linear::new(6, 8, true, 1)).layer(Relu).layer(Linear::new(8, 3, true, 2));
    let x = Tensor::randn(&[4, 6], 0.0, 1.0, 3);
    let mut p = Pruning::default();
    p.global_magnitude(&mut m, &["0", "2"], 0.5).unwrap();
    p.advance_global(0.5).unwrap();
    assert!((sparsity::model(&mut m).unwrap() - 0.75).abs() < 0.02);
    // The forward uses the new masks even if the stored weights were moved off zero.
    for l in p.layers() {
        let mut w = l.weight.data_mut();
        w.iter_mut().for_each(|v| *v += 1.0);
    }
    let masked = no_grad(|| m.forward(&x)).unwrap().to_vec();
    p.reapply();
    assert_eq!(no_grad(|| m.forward(&x)).unwrap().to_vec(), masked);
    assert!(p.advance_global(2.0).is_err());
}

/// The probe's example: one `Pruning` applied to a second model zeroed the first one's weights.
/// It is refused now, naming the problem, and neither model changes.
#[test]
fn a_pruning_belongs_to_one_model_and_refuses_another() {
    let build = |seed| {
        Sequential::new().layer(Linear::new(6, 8, true, seed)).layer(Relu).layer(Linear::new(8, 3, true, seed + 1))
    };
    let (mut a, mut b) = (build(1), build(5));
    let mut p = Pruning::default();
    p.magnitude(&mut a, &["0"], 0.5).unwrap();
    let weights = |m: &Sequential| [0, 2].map(|i| m.layers[i].as_linear().unwrap().weight.to_vec());
    let (a_before, b_before) = (weights(&a), weights(&b));
    for (what, r) in [
        ("magnitude", p.magnitude(&mut b, &["0"], 0.5)),
        ("magnitude of another layer", p.magnitude(&mut b, &["2"], 0.5)),
        ("global", p.global_magnitude(&mut b, &["0", "2"], 0.5)),
        ("block", p.block_magnitude(&mut b, &["2"], 0.5)),
    ] {
        let e = r.expect_err(what).to_string();
        assert!(e.contains("belongs to another model"), "{what}: {e}");
    }
    assert_eq!((weights(&a), weights(&b)), (a_before, b_before), "neither model changed");
    assert!(b.layers[0].as_linear().unwrap().transform().is_none(), "no mask installed in the other model");
    // The model it belongs to still works with it.
    p.magnitude(&mut a, &["2"], 0.5).unwrap();
    let e = p.make_permanent(&mut b).unwrap_err().to_string();
    assert!(e.contains("belongs to another model"), "{e}");
    assert!(a.layers[0].as_linear().unwrap().transform().is_some(), "a refused make_permanent removes nothing");
}

/// Another `Pruning`'s mask is a foreign transform: a second `Pruning` on the same layer would
/// replace it (and its `reapply` would no longer be the one the layer runs with).
#[test]
fn a_second_pruning_does_not_replace_the_first_ones_mask() {
    let mut m = Sequential::new().layer(Linear::new(6, 8, true, 1));
    let mut first = Pruning::default();
    first.magnitude(&mut m, &["0"], 0.5).unwrap();
    let e = Pruning::default().magnitude(&mut m, &["0"], 0.5).unwrap_err().to_string();
    assert!(e.contains("not this Pruning's mask"), "{e}");
    first.magnitude(&mut m, &["0"], 0.5).unwrap();
    assert_eq!(sparsity::model(&mut m).unwrap(), 0.75);
}
