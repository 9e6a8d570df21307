//! Low-rank: full rank reproduces W, the truncation error is Eckart–Young's, the layer equals its
//! own dense matrix.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use tt_compress::lowrank::{rank_for_bytes, rank_for_energy, singular_values, LowRank};
use tt_tensor::projection::{check_projection, Projection};

fn matrix(o: usize, i: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((o, i), |_| rng.random_range(-1.0f32..1.0))
}

fn frob2(a: &Array2<f32>) -> f64 {
    a.iter().map(|&v| (v as f64).powi(2)).sum()
}

#[test]
fn full_rank_reproduces_w_and_truncation_error_is_the_dropped_energy() {
    let w = matrix(24, 40, 1);
    let s = singular_values(&w).unwrap();
    assert_eq!(s.len(), 24);
    assert!(s.windows(2).all(|p| p[0] >= p[1]), "largest first");
    let full = LowRank::factor(&w, 24).unwrap();
    let d = (&full.to_dense() - &w).iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(d < 1e-5, "full rank: {d}");
    for r in [1, 5, 12] {
        let lr = LowRank::factor(&w, r).unwrap();
        let err = frob2(&(&lr.to_dense() - &w));
        let dropped: f64 = s[r..].iter().map(|v| v * v).sum();
        assert!((err - dropped).abs() <= 1e-4 * frob2(&w), "rank {r}: {err} vs {dropped}");
        assert_eq!(lr.storage_bytes(), 4 * r * (24 + 40));
        // The two-stage layer computes its own dense matrix (f32 in a different order).
        assert!(check_projection(&lr, 5, 3).unwrap() < 1e-4, "rank {r}");
        assert_eq!((lr.format(), lr.shape(), lr.rank()), ("lowrank", (24, 40), r));
    }
}

#[test]
fn a_rank_one_matrix_is_exact_at_rank_one_and_ranks_are_chosen_by_energy_or_bytes() {
    let (u, v): (Vec<f32>, Vec<f32>) =
        ((0..8).map(|i| i as f32 - 3.0).collect(), (0..5).map(|j| 0.5 * j as f32 + 1.0).collect());
    let w = Array2::from_shape_fn((8, 5), |(i, j)| u[i] * v[j]);
    let lr = LowRank::factor(&w, 1).unwrap();
    assert!((&lr.to_dense() - &w).iter().all(|d| d.abs() < 1e-4));
    let s = singular_values(&w).unwrap();
    assert_eq!(rank_for_energy(&s, 0.999).unwrap(), 1);
    let s2 = [3.0, 2.0, 1.0];
    // Energies 9, 4, 1 of 14: 64% at rank 1, 93% at rank 2.
    assert_eq!(
        (rank_for_energy(&s2, 0.6).unwrap(), rank_for_energy(&s2, 0.9).unwrap(), rank_for_energy(&s2, 1.0).unwrap()),
        (1, 2, 3)
    );
    assert!(rank_for_energy(&s2, 0.0).is_err() && rank_for_energy(&s2, 1.5).is_err());
    assert_eq!(rank_for_bytes(128, 512, 4 * 32 * 640), 32);
    assert_eq!(rank_for_bytes(128, 512, 1), 1);
}

/// `4·(out + in)` bytes per rank overflowed `usize` for huge shapes (a panic in a debug build, a
/// wrong rank in a release one): a factor pair that large fits no budget, so rank 1.
#[test]
fn rank_for_bytes_saturates_at_the_edges() {
    let max = usize::MAX;
    for (out_f, in_f, bytes, rank) in [
        (0, 0, 0, 1),
        (1, 1, 0, 1),
        (1, 1, max, 1),
        (max, max, max, 1),
        (max, 1, max, 1),
        (max / 4, max / 4, max, 1),
        (1 << 62, 1 << 62, max, 1),
        (max, max, 8, 1),
    ] {
        assert_eq!(rank_for_bytes(out_f, in_f, bytes), rank, "{out_f}×{in_f} in {bytes} bytes");
    }
    assert_eq!(rank_for_bytes(1 << 40, 1 << 40, max), (max / (1 << 43)).min(1 << 40), "no wrap below the limit");
}

#[test]
fn bad_ranks_and_weights_are_errors() {
    let w = matrix(4, 6, 2);
    assert!(LowRank::factor(&w, 0).is_err() && LowRank::factor(&w, 5).is_err());
    let mut bad = w.clone();
    bad[[1, 1]] = f32::INFINITY;
    assert!(LowRank::factor(&bad, 2).is_err() && singular_values(&bad).is_err());
    assert!(singular_values(&Array2::zeros((0, 3))).is_err());
}

mod finetune {
    use super::matrix;
    use tt_compress::lowrank::{Factored, LowRank, WithFactors};
    use tt_compress::prune::Pruning;
    use tt_tensor::nn::{Linear, Relu, Sequential};
    use tt_tensor::optim::{Adam, Optimizer};
    use tt_tensor::{no_grad, Module, Tensor};

    fn model() -> Sequential {
        Sequential::new().layer(Linear::new(6, 5, true, 1)).layer(Relu).layer(Linear::new(5, 3, true, 2))
    }

    fn input() -> Tensor {
        Tensor::from_array(matrix(4, 6, 9).into_dyn())
    }

    /// Autograd's gradients of U and V through the layer's `U·V` weight match central
    /// differences (f32, ε = 1e-2: the check's own defaults and tolerance).
    #[test]
    fn gradients_reach_both_factors() {
        let mut m = model();
        let f = Factored::factor(&mut m, &["0"], 2).unwrap();
        let l = &f.layers()[0];
        assert_eq!((l.u.shape(), l.v.shape()), (vec![5, 2], vec![2, 6]));
        let x = input();
        // The check perturbs U and V in place; the layer's transform shares them.
        tt_tensor::testing::assert_grads(|_| m.forward(&x), &[l.u.clone(), l.v.clone()], 1e-2, 1e-2);
    }

    /// A few optimizer steps move U and V (the layer's own weight is not a parameter any more);
    /// finishing gives a LowRank projection whose output equals the trained transform's.
    #[test]
    fn trained_factors_convert_back_to_an_equal_projection() {
        let mut m = model();
        let f = Factored::factor(&mut m, &["0"], 3).unwrap();
        let (u0, v0) = (f.layers()[0].u.data().clone(), f.layers()[0].v.data().clone());
        let x = input();
        // Factored at rank 3 the layer computes the truncated SVD of its weight.
        let w = m.layers[0].as_linear().unwrap().weight.data().clone().into_dimensionality().unwrap();
        let before = no_grad(|| m.forward(&x)).unwrap().data().clone();
        let want_rank3 = {
            let mut r = model();
            r.layers[0]
                .as_linear_mut()
                .unwrap()
                .set_projection(std::sync::Arc::new(LowRank::factor(&w, 3).unwrap()))
                .unwrap();
            no_grad(|| r.forward(&x)).unwrap().data().clone()
        };
        assert!(tt_tensor::testing::max_abs_diff(&before, &want_rank3) < 1e-5);
        {
            let wf = WithFactors { model: &mut m, factors: &f };
            let names: Vec<String> = wf.named_parameters().into_iter().map(|(n, _)| n).collect();
            assert_eq!(names, ["0.bias", "2.weight", "2.bias", "0.u", "0.v"]);
            let mut opt = Adam::adamw(wf.parameters(), 1e-2, 1e-4).unwrap();
            let target = Tensor::from_array(ndarray::ArrayD::ones(vec![4, 3]));
            let loss = |m: &dyn Module| {
                let d = m.forward(&x).unwrap().sub(&target).unwrap();
                d.mul(&d).unwrap().mean()
            };
            let first = loss(&wf).item().unwrap();
            for _ in 0..20 {
                opt.zero_grad();
                loss(&wf).backward().unwrap();
                opt.step().unwrap();
            }
            assert!(loss(&wf).item().unwrap() < first, "fine-tuning lowers the loss");
        }
        let l = &f.layers()[0];
        assert!(
            tt_tensor::testing::max_abs_diff(&l.u.data(), &u0) > 1e-3
                && tt_tensor::testing::max_abs_diff(&l.v.data(), &v0) > 1e-3
        );
        let trained = no_grad(|| m.forward(&x)).unwrap().data().clone();
        let lr = l.to_low_rank().unwrap();
        assert_eq!(lr.rank(), 3);
        f.finish(&mut m).unwrap();
        let lin = m.layers[0].as_linear().unwrap();
        assert!(lin.transform().is_none());
        assert_eq!(lin.installed_projection().unwrap().format(), "lowrank");
        let after = no_grad(|| m.forward(&x)).unwrap().data().clone();
        let d = tt_tensor::testing::max_abs_diff(&after, &trained);
        // The same U·V applied as two products instead of one: f32 rounding only.
        assert!(d < 1e-5, "{d}");
        // The weight is U·V too, so a recording forward agrees.
        let recorded = m.forward(&x).unwrap().data().clone();
        assert!(tt_tensor::testing::max_abs_diff(&recorded, &trained) < 1e-5);
    }

    #[test]
    fn bad_factoring_is_an_error_and_changes_nothing() {
        let mut m = model();
        assert!(Factored::factor(&mut m, &["1"], 2).is_err(), "Relu is not a Linear");
        assert!(Factored::factor(&mut m, &["0", "nope"], 2).is_err());
        assert!(Factored::factor(&mut m, &["0"], 0).is_err());
        assert!(m.layers[0].as_linear().unwrap().transform().is_none());
        let mut p = Pruning::default();
        p.magnitude(&mut m, &["0"], 0.5).unwrap();
        let e = Factored::factor(&mut m, &["0"], 2).unwrap_err();
        assert!(e.to_string().contains("mask"), "{e}");
        assert!(LowRank::from_factors(ndarray::Array2::zeros((3, 2)), ndarray::Array2::zeros((3, 4))).is_err());
        assert!(LowRank::from_factors(ndarray::Array2::zeros((3, 0)), ndarray::Array2::zeros((0, 4))).is_err());
        let mut u = ndarray::Array2::zeros((3, 2));
        u[[0, 0]] = f32::NAN;
        assert!(LowRank::from_factors(u, ndarray::Array2::zeros((2, 4))).is_err());
    }
}

/// Workspace sizes that overflow are `usize::MAX` (no caller has that much), so `project`
/// refuses instead of a wrapped size passing its check; 0 and 1 rows work.
#[test]
fn low_rank_workspace_sizes_do_not_wrap() {
    use tt_tensor::projection::{project, Workspace};
    let lr = LowRank::factor(&matrix(5, 7, 3), 2).unwrap();
    for rows in [usize::MAX, usize::MAX / 4, 1usize << 62] {
        assert_eq!(lr.workspace_len(rows), usize::MAX, "{rows} rows");
        assert!(project(&lr, &[], rows, None, &mut [], &mut []).is_err());
    }
    let mut ws = Workspace::default();
    for rows in [0usize, 1] {
        ws.ensure(lr.workspace_len(rows));
        let mut y = vec![0.0; rows * 5];
        project(&lr, &vec![1.0; rows * 7], rows, None, &mut y, ws.bytes()).unwrap();
    }
}

/// `Factored::finish` removes only its own transforms: a layer whose transform was replaced is an
/// error, and nothing changes.
#[test]
fn finish_refuses_a_layer_whose_transform_is_not_its_own() {
    use std::sync::Arc;
    use tt_compress::lowrank::Factored;
    use tt_tensor::nn::{ForwardTransform, Linear, Sequential};
    use tt_tensor::Tensor;
    #[derive(Debug)]
    struct Other;
    impl ForwardTransform for Other {
        fn weight(&self, w: &Tensor) -> tt_tensor::Result<Tensor> {
            Ok(w.clone())
        }
        fn input(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
            Ok(x.clone())
        }
        fn name(&self) -> &'static str {
            "other"
        }
    }
    let mut m = Sequential::new().layer(Linear::new(6, 5, true, 1));
    let f = Factored::factor(&mut m, &["0"], 2).unwrap();
    m.layers[0].as_linear_mut().unwrap().set_transform(Some(Arc::new(Other)));
    let e = f.finish(&mut m).unwrap_err().to_string();
    assert!(e.contains("carries a 'other' transform, not this factorization's"), "{e}");
    let l = m.layers[0].as_linear().unwrap();
    assert_eq!(l.transform().map(|t| t.name()), Some("other"));
    assert!(l.installed_projection().is_none());
}
