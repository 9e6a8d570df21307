//! Module 03 — layers: Linear, Sequential, LayerNorm, Embedding, Dropout, activation layers.

use tt_tensor::nn::{Dropout, Embedding, Gelu, LayerNorm, Linear, Relu, Sequential};
use tt_tensor::{no_grad, Module, Tensor};

#[test]
fn linear_computes_x_wt_plus_b() {
    let w = Tensor::param(ndarray::arr2(&[[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]]).into_dyn());
    let b = Tensor::param(ndarray::arr1(&[0.5f32, -0.5, 1.0]).into_dyn());
    let lin = Linear::from_tensors(w, Some(b)).unwrap();
    assert_eq!((lin.in_features(), lin.out_features()), (2, 3));
    let x = Tensor::from_vec(vec![1.0, 1.0, 2.0, -1.0], &[2, 2]).unwrap();
    let y = lin.forward(&x).unwrap();
    assert_eq!(y.to_vec(), vec![3.5, 6.5, 12.0, 0.5, 1.5, 5.0]);
    // Leading dims are folded: [2,1,2] → [2,1,3].
    assert_eq!(lin.forward(&x.reshape(&[2, 1, 2]).unwrap()).unwrap().shape(), vec![2, 1, 3]);
    let err = lin.forward(&Tensor::zeros(&[2, 3])).unwrap_err().to_string();
    assert!(err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
}

#[test]
fn linear_param_count_and_init_bounds() {
    let l = Linear::new(10, 5, true, 0);
    assert_eq!(l.num_parameters(), 55);
    let bound = 1.0 / 10f32.sqrt();
    assert!(l.weight.to_vec().iter().all(|v| v.abs() <= bound));
    assert_eq!(Linear::new(10, 5, true, 0).weight.to_vec(), l.weight.to_vec(), "same seed, same init");
    assert_eq!(Linear::new(10, 5, false, 0).num_parameters(), 50);
}

#[test]
fn sequential_names_and_forward() {
    let mut model = Sequential::new().layer(Linear::new(4, 8, true, 1)).layer(Relu).layer(Linear::new(8, 3, true, 2));
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["0.weight", "0.bias", "2.weight", "2.bias"]);
    assert_eq!(model.num_parameters(), 4 * 8 + 8 + 8 * 3 + 3);
    assert_eq!(model.children().len(), 3);
    assert_eq!(model.forward(&Tensor::zeros(&[5, 4])).unwrap().shape(), vec![5, 3]);
    model.set_training(false);
}

#[test]
fn layer_norm_normalizes_rows() {
    let ln = LayerNorm::new(6);
    let x = Tensor::randn(&[3, 6], 4.0, 5.0, 3);
    let y = ln.forward(&x).unwrap();
    for row in y.to_vec().chunks(6) {
        let mean = row.iter().sum::<f32>() / 6.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 6.0;
        assert!(mean.abs() < 1e-5, "mean {mean}");
        assert!((var - 1.0).abs() < 1e-3, "var {var}");
    }
    assert!(ln.forward(&Tensor::zeros(&[2, 5])).is_err());
}

#[test]
fn embedding_lookup() {
    let e = Embedding::new(5, 3, 1.0, 0).unwrap();
    let table = e.weight.to_vec();
    let out = e.forward_ids(&[4, 0], &[1, 2]).unwrap();
    assert_eq!(out.shape(), vec![1, 2, 3]);
    assert_eq!(out.to_vec()[..3], table[12..15]);
    assert!(e.forward_ids(&[5], &[1]).is_err());
    assert!(e.forward(&Tensor::from_vec(vec![1.5], &[1]).unwrap()).is_err());
}

#[test]
fn dropout_train_vs_eval() {
    let mut d = Dropout::new(0.5, 42).unwrap();
    let x = Tensor::ones(&[10000]);
    let y = d.forward(&x).unwrap().to_vec();
    let zeros = y.iter().filter(|&&v| v == 0.0).count();
    assert!((4500..5500).contains(&zeros), "{zeros} zeros");
    assert!(y.iter().all(|&v| v == 0.0 || v == 2.0), "kept values scaled by 1/(1-p)");
    d.set_training(false);
    assert_eq!(d.forward(&x).unwrap().to_vec(), x.to_vec());
    assert!(Dropout::new(1.0, 0).is_err());
}

#[test]
fn no_grad_forward_builds_no_graph() {
    let model = Sequential::new().layer(Linear::new(3, 3, true, 0)).layer(Gelu);
    let x = Tensor::ones(&[1, 3]);
    let y = model.forward(&x).unwrap();
    assert!(y.requires_grad() && y.op_name().is_some());
    let y2 = no_grad(|| model.forward(&x)).unwrap();
    assert!(!y2.requires_grad() && y2.op_name().is_none());
    assert_eq!(y.to_vec(), y2.to_vec());
}

#[test]
fn seeded_dropout_op() {
    let x = Tensor::ones(&[4000]);
    let a = x.dropout(0.25, 7).unwrap().to_vec();
    assert_eq!(a, x.dropout(0.25, 7).unwrap().to_vec(), "same seed, same mask");
    assert_ne!(a, x.dropout(0.25, 8).unwrap().to_vec());
    let zeros = a.iter().filter(|&&v| v == 0.0).count();
    assert!((850..1150).contains(&zeros), "{zeros} of 4000 dropped at p = 0.25");
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    assert_eq!(x.dropout(0.0, 1).unwrap().to_vec(), x.to_vec());
    assert!(x.dropout(1.0, 1).is_err());
    tt_tensor::testing::assert_grads(|i| i[0].dropout(0.5, 3), &[Tensor::randn(&[3, 4], 0.0, 1.0, 1)], 1e-3, 1e-2);
}

// ---- The projection seam: any weight format behind Linear and Conv2d ----

mod seam {
    use std::sync::Arc;

    use tt_tensor::nn::{linears, map_conv2ds, map_linears, walk_mut, Linear, Sequential};
    use tt_tensor::optim::{Optimizer, Sgd};
    use tt_tensor::projection::{check_projection, project, DenseF32, Projection, Workspace};
    use tt_tensor::testing::TransposedF64;
    use tt_tensor::{no_grad, Module, Tensor};

    /// The digits MLP (milestone `mlp_digits`).
    fn mlp() -> Sequential {
        tt_tensor::data::digits::mlp(0)
    }

    /// The digits CNN (milestone `cnn_digits`).
    fn cnn() -> Sequential {
        tt_tensor::data::digits::cnn(0)
    }

    /// Installs `TransposedF64` (with `error` on output 0) in every Linear and Conv2d, by name only.
    fn install(m: &mut dyn Module, error: f32) -> (usize, usize) {
        let lin =
            map_linears(m, |_, l| l.set_projection(Arc::new(TransposedF64::wrong(l.projection()?.as_ref(), error))))
                .unwrap();
        let conv = map_conv2ds(m, |_, c| {
            let dense = DenseF32::from_array(c.weight.data().clone().into_shape_with_order(c.matrix_shape()).unwrap());
            c.set_projection(Arc::new(TransposedF64::wrong(&dense, error)))
        })
        .unwrap();
        (lin, conv)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.to_vec().iter().zip(b.to_vec()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn mlp_and_cnn_compute_the_same_function_through_another_format() {
        for (name, build, x) in [
            ("mlp", mlp as fn() -> Sequential, Tensor::randn(&[5, 64], 0.0, 1.0, 3)),
            ("cnn", cnn, Tensor::randn(&[3, 1, 8, 8], 0.0, 1.0, 4)),
        ] {
            let plain = build();
            let mut seamed = build();
            let counts = install(&mut seamed, 0.0);
            assert_eq!(counts, if name == "mlp" { (2, 0) } else { (2, 2) }, "{name}: layers reached by name");
            let (want, got) = no_grad(|| (plain.forward(&x).unwrap(), seamed.forward(&x).unwrap()));
            // f64 vs f32 accumulation over ≤ 144 terms of O(1) values: ~1e-6; 1e-5 is the stated bound.
            let diff = max_diff(&want, &got);
            assert!(diff <= 1e-5, "{name}: {diff}");
            // The same check catches a projection that is off by 1e-3 in one output.
            let mut wrong = build();
            install(&mut wrong, 1e-3);
            let diff = max_diff(&want, &no_grad(|| wrong.forward(&x).unwrap()));
            assert!(diff > 1e-4, "{name}: a wrong projection went unnoticed ({diff})");
        }
    }

    #[test]
    fn installed_projection_runs_only_without_a_graph_and_keeps_weight_equal() {
        let mut m = mlp();
        install(&mut m, 1e-3);
        let x = Tensor::randn(&[2, 64], 0.0, 1.0, 5);
        // With a graph (training), the dense weight runs: the deliberate error is absent.
        let trained = m.forward(&x).unwrap();
        assert!(trained.requires_grad());
        let plain = no_grad(|| mlp().forward(&x).unwrap());
        assert!(max_diff(&trained, &plain) <= 1e-5);
        // Weight equals the projection's to_dense (the f64 copy of the f32 weights is exact).
        let l = m.children()[0].1.as_linear().unwrap();
        let p = l.installed_projection().unwrap();
        assert_eq!((p.format(), p.storage_bytes()), ("f64-transposed", 8 * 64 * 128));
        assert_eq!(l.weight.to_vec(), p.to_dense().iter().copied().collect::<Vec<f32>>());
    }

    #[test]
    fn a_stale_projection_is_an_error_not_a_silently_different_model() {
        let mut m = mlp();
        install(&mut m, 0.0);
        let x = Tensor::randn(&[2, 64], 0.0, 1.0, 6);
        let loss = m.forward(&x).unwrap().sum();
        loss.backward().unwrap();
        Sgd::new(m.parameters(), 0.1, 0.0, 0.0).unwrap().step().unwrap();
        let err = no_grad(|| m.forward(&x)).unwrap_err().to_string();
        assert!(err.contains("changed after") && err.contains("f64-transposed"), "{err}");
        // Clearing falls back to the (trained) dense weight.
        map_linears(&mut m, |_, l| {
            l.clear_projection();
            Ok(())
        })
        .unwrap();
        assert!(no_grad(|| m.forward(&x)).is_ok());
    }

    #[test]
    fn shapes_are_checked_at_install_and_at_call() {
        let mut l = Linear::new(4, 3, true, 0);
        let wrong = DenseF32::from_array(ndarray::Array2::zeros((4, 3)));
        let err = l.set_projection(Arc::new(wrong)).unwrap_err().to_string();
        assert!(err.contains("(4, 3)") && err.contains("(3, 4)"), "{err}");
        let p = l.projection().unwrap();
        let mut y = [0.0f32; 3];
        assert!(project(p.as_ref(), &[1.0; 3], 1, None, &mut y, &mut []).is_err(), "short input");
        assert!(project(p.as_ref(), &[1.0; 8], 2, None, &mut y, &mut []).is_err(), "short output");
        assert!(project(p.as_ref(), &[1.0; 4], 1, Some(&[0.0; 2]), &mut y, &mut []).is_err(), "bias length");
        let t = TransposedF64::of(p.as_ref());
        assert!(project(&t, &[1.0; 4], 1, None, &mut y, &mut [0u8; 8]).is_err(), "workspace too small");
        let mut ws = Workspace::default();
        ws.ensure(t.workspace_len(1));
        project(&t, &[1.0; 4], 1, None, &mut y, ws.bytes()).unwrap();
        // Any implementation can be checked against its own to_dense().
        assert!(check_projection(&t, 5, 0).unwrap() < 1e-5);
        assert!(check_projection(p.as_ref(), 9, 0).unwrap() < 1e-5);
        assert!(check_projection(&TransposedF64::wrong(p.as_ref(), 1e-2), 3, 0).unwrap() > 5e-3);
    }

    #[test]
    fn the_default_projection_shares_the_weight() {
        let l = Linear::new(6, 2, false, 0);
        let p = l.projection().unwrap();
        assert_eq!(p.format(), "f32");
        l.weight.set_data(ndarray::Array2::<f32>::ones((2, 6)).into_dyn()).unwrap();
        let mut y = [0.0f32; 2];
        project(p.as_ref(), &[1.0; 6], 1, None, &mut y, &mut []).unwrap();
        assert_eq!(y, [6.0, 6.0], "the projection sees the new weight: shared, not copied");
    }

    #[test]
    fn children_mut_names_match_children() {
        let mut m = cnn();
        let read: Vec<String> = m.children().into_iter().map(|c| c.0).collect();
        let mut walked = Vec::new();
        walk_mut(&mut m, &mut |name, _| {
            walked.push(name.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(read, walked);
        assert_eq!(linears(&m).into_iter().map(|l| l.0).collect::<Vec<_>>(), ["7", "9"]);
    }
}

/// Hostile constructor arguments and edited public fields of the layers: named errors.
mod bad_input {
    use tt_tensor::nn::{Dropout, Embedding, LayerNorm};
    use tt_tensor::{Module, Tensor, TensorError};

    #[test]
    fn dropout_p_nan_or_out_of_range() {
        for p in [f32::NAN, -0.1, 1.0, f32::INFINITY] {
            let e = Dropout::new(p, 0).err().expect("rejected");
            assert!(
                matches!(e, TensorError::InvalidArgument { op: "Dropout", .. }) && e.to_string().contains("p = "),
                "{e}"
            );
            let e = Tensor::ones(&[4]).dropout(p, 0).unwrap_err();
            assert!(matches!(e, TensorError::InvalidArgument { op: "dropout", .. }), "{e}");
        }
        // `p` is a public field: an edited NaN used to zero every element silently.
        let mut d = Dropout::new(0.5, 0).unwrap();
        d.p = f32::NAN;
        let e = d.forward(&Tensor::ones(&[8])).unwrap_err();
        assert!(e.to_string().contains("p = NaN"), "{e}");
        d.set_training(false);
        assert!(d.forward(&Tensor::ones(&[8])).is_err(), "checked in eval mode too");
    }

    #[test]
    fn embedding_rejects_bad_std_sizes_and_ids() {
        for std in [f32::NAN, -1.0, f32::INFINITY] {
            let e = Embedding::new(4, 2, std, 0).err().expect("rejected");
            assert!(
                matches!(e, TensorError::InvalidArgument { op: "Embedding::new", .. }) && e.to_string().contains("std"),
                "{e}"
            );
        }
        let e = Embedding::new(usize::MAX, 2, 1.0, 0).err().expect("rejected");
        assert!(matches!(e, TensorError::InvalidShape { op: "Embedding::new", .. }), "{e}");
        let emb = Embedding::new(4, 2, 1.0, 0).unwrap();
        let e = emb.forward_ids(&[], &[1 << 32, 1 << 32]).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        // A huge id as f32 used to saturate to usize::MAX in the message.
        let e = emb.forward(&Tensor::from_vec(vec![1e30], &[1]).unwrap()).unwrap_err();
        assert!(
            matches!(e, TensorError::InvalidArgument { op: "Embedding", .. })
                && e.to_string().contains("out of range for 4 rows"),
            "{e}"
        );
        for bad in [f32::NAN, f32::INFINITY, -1.0] {
            assert!(emb.forward(&Tensor::from_vec(vec![bad], &[1]).unwrap()).is_err(), "{bad}");
        }
        assert_eq!(emb.forward(&Tensor::from_vec(vec![3.0], &[1]).unwrap()).unwrap().shape(), vec![1, 2]);
    }

    #[test]
    fn layer_norm_rejects_bad_eps_and_sizes() {
        let mut ln = LayerNorm::new(3);
        for eps in [f32::NAN, -1e-5, f32::INFINITY] {
            ln.eps = eps;
            let e = ln.forward(&Tensor::ones(&[2, 3])).unwrap_err();
            assert!(
                matches!(e, TensorError::InvalidArgument { op: "layer_norm", .. }) && e.to_string().contains("eps"),
                "{e}"
            );
        }
        ln.eps = 0.0;
        assert!(ln.forward(&Tensor::randn(&[2, 3], 0.0, 1.0, 0)).is_ok(), "eps = 0 is allowed, as in PyTorch");
        let e = LayerNorm::try_new(usize::MAX).err().expect("rejected");
        assert!(matches!(e, TensorError::InvalidShape { op: "LayerNorm::new", .. }), "{e}");
    }
}

/// A forward transform reparametrizes a layer's dense forward (QAT, pruning masks): the product
/// uses the transformed weight and input, and gradients flow back through the transform.
mod forward_transform {
    use std::sync::Arc;
    use tt_tensor::nn::{Conv2d, ForwardTransform, Linear};
    use tt_tensor::{Module, Tensor};

    /// `W ↦ 2W`, `x ↦ x + 1`.
    #[derive(Debug)]
    struct DoubleShift;
    impl ForwardTransform for DoubleShift {
        fn weight(&self, w: &Tensor) -> tt_tensor::Result<Tensor> {
            Ok(w.mul_scalar(2.0))
        }
        fn input(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
            Ok(x.add_scalar(1.0))
        }
        fn name(&self) -> &'static str {
            "double-shift"
        }
    }

    #[test]
    fn linear_and_conv_use_the_transformed_weight_and_input_and_backpropagate_through_it() {
        let mut l = Linear::new(3, 2, true, 0);
        let x = Tensor::from_vec(vec![0.5, -1.0, 2.0], &[1, 3]).unwrap();
        let want = x.add_scalar(1.0).linear(&l.weight.mul_scalar(2.0), l.bias.as_ref()).unwrap();
        assert!(l.set_transform(Some(Arc::new(DoubleShift))).is_none());
        assert_eq!(l.transform().map(|t| t.name()), Some("double-shift"));
        let y = l.forward(&x).unwrap();
        assert_eq!(y.to_vec(), want.to_vec());
        y.sum().backward().unwrap();
        // d Σ(2W·(x+1)) / dW = 2·(x + 1) for each output row.
        let g: Vec<f32> = l.weight.grad().unwrap().iter().copied().collect();
        assert_eq!(g, vec![3.0, 0.0, 6.0, 3.0, 0.0, 6.0]);
        assert!(l.set_transform(None).is_some());
        assert_ne!(l.forward(&x).unwrap().to_vec(), want.to_vec());

        let mut c = Conv2d::new(1, 2, 3, 1, 1, 0);
        let img = Tensor::from_vec((0..16).map(|i| i as f32 * 0.1).collect(), &[1, 1, 4, 4]).unwrap();
        let want = img.add_scalar(1.0).conv2d(&c.weight.mul_scalar(2.0), c.bias.as_ref(), 1, 1).unwrap();
        c.set_transform(Some(Arc::new(DoubleShift)));
        assert_eq!(c.forward(&img).unwrap().to_vec(), want.to_vec());
    }
}

// ---- Inference-only weights: freeze releases the dense copy a weight format made redundant ----

mod freeze {
    use std::sync::Arc;

    use tt_tensor::data::digits;
    use tt_tensor::nn::{freeze, map_conv2ds, map_linears, thaw, Linear, Sequential};
    use tt_tensor::optim::{Optimizer, Sgd};
    use tt_tensor::serialize::to_safetensors_bytes;
    use tt_tensor::testing::TransposedF64;
    use tt_tensor::{no_grad, Module, Tensor};

    /// The digits CNN with every conv and linear layer in another format (f64, transposed): its
    /// dense weights are then redundant copies.
    fn cnn_in_f64() -> Sequential {
        let mut m = digits::cnn(0);
        map_linears(&mut m, |_, l| l.set_projection(Arc::new(TransposedF64::of(l.projection()?.as_ref())))).unwrap();
        map_conv2ds(&mut m, |_, c| {
            let dense = tt_tensor::projection::DenseF32::from_array(
                c.weight.data().clone().into_shape_with_order(c.matrix_shape()).unwrap(),
            );
            c.set_projection(Arc::new(TransposedF64::of(&dense)))
        })
        .unwrap();
        m
    }

    fn input() -> Tensor {
        Tensor::randn(&[3, 1, 8, 8], 0.0, 1.0, 9)
    }

    #[test]
    fn a_frozen_model_computes_the_same_and_holds_only_its_formats() {
        let mut m = cnn_in_f64();
        let x = input();
        let before = no_grad(|| m.forward(&x)).unwrap().to_vec();
        let checkpoint = to_safetensors_bytes(&m.named_parameters(), None).unwrap();
        let params: usize = m.parameters().iter().map(Tensor::numel).sum();

        let frozen = freeze(&mut m).unwrap();
        assert_eq!(frozen.layers, ["0", "3", "7", "9"]);
        let weights = 4 * (16 * 9 + 32 * 16 * 9 + 64 * 128 + 10 * 64);
        assert_eq!(frozen.bytes_freed, weights);
        // Bit for bit the same function; shapes and counts are unchanged.
        assert_eq!(no_grad(|| m.forward(&x)).unwrap().to_vec(), before);
        assert_eq!(m.parameters().iter().map(Tensor::numel).sum::<usize>(), params);
        // Saving reads each released weight through its format: the same file as before.
        assert_eq!(to_safetensors_bytes(&m.named_parameters(), None).unwrap(), checkpoint);
        // ... and reading does not bring the dense copy back.
        let released: Vec<bool> = m.parameters().iter().map(Tensor::is_released).collect();
        assert_eq!(released.iter().filter(|&&r| r).count(), 4);
        // Freezing again frees nothing more.
        assert_eq!(freeze(&mut m).unwrap().bytes_freed, 0);
    }

    #[test]
    fn training_a_frozen_weight_is_an_error_naming_it_until_thawed() {
        let mut m = cnn_in_f64();
        freeze(&mut m).unwrap();
        let x = input();
        let e = m.forward(&x).unwrap_err().to_string();
        assert!(e.contains("0.weight") && e.contains("released"), "{e}");
        // Thawed, the model trains again: the dense weights are back, equal to the formats'.
        assert_eq!(thaw(&m), 4);
        assert!(m.parameters().iter().all(|t| !t.is_released()));
        let y = m.forward(&x).unwrap();
        let mut opt = Sgd::new(m.parameters(), 0.1, 0.0, 0.0).unwrap();
        y.sum().backward().unwrap();
        opt.step().unwrap();
        // A step changed the weights, so the installed formats are stale: an error, not the
        // old function.
        assert!(no_grad(|| m.forward(&x)).is_err());
    }

    #[test]
    fn a_write_to_a_released_weight_makes_it_resident_and_the_format_stale() {
        let mut l = Linear::new(6, 4, true, 1);
        l.set_projection(Arc::new(TransposedF64::of(l.projection().unwrap().as_ref()))).unwrap();
        let dense = l.weight.to_vec();
        assert_eq!(l.release_weight("fc.weight").unwrap(), 4 * 6 * 4);
        assert!(l.weight.is_released());
        assert_eq!(l.weight.shape(), [4, 6]);
        assert_eq!(l.weight.to_vec(), dense, "a read recomputes the same values");
        assert!(format!("{:?}", l.weight).contains("fc.weight"));
        l.weight.data_mut()[[0, 0]] += 1.0;
        assert!(!l.weight.is_released());
        assert!(l.projection().is_err(), "the format no longer matches the weight");
    }

    /// Installing a format over a released weight keeps it released: the new format is the only
    /// copy (a loader filling a model built without weights), and reads see its values.
    #[test]
    fn a_format_installed_over_a_released_weight_keeps_it_released() {
        let mut l = Linear::new(6, 4, true, 1);
        l.set_projection(Arc::new(TransposedF64::of(l.projection().unwrap().as_ref()))).unwrap();
        l.release_weight("fc.weight").unwrap();
        let other = Linear::new(6, 4, true, 2);
        let version = l.weight.version();
        l.set_projection(Arc::new(TransposedF64::of(other.projection().unwrap().as_ref()))).unwrap();
        assert!(l.weight.is_released());
        assert_ne!(l.weight.version(), version, "the values changed");
        assert_eq!(l.weight.to_vec(), other.weight.to_vec());
        let x = Tensor::randn(&[2, 6], 0.0, 1.0, 4);
        let (a, b) =
            (no_grad(|| l.forward(&x)).unwrap(), no_grad(|| x.linear(&other.weight, l.bias.as_ref())).unwrap());
        let diff = a.to_vec().iter().zip(b.to_vec()).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-6, "{diff}");
    }

    /// Readers racing with releases and re-residencies always see the tensor's real shape and
    /// values, never the empty array a released tensor holds.
    #[test]
    fn readers_racing_with_release_see_the_values_never_the_empty_array() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let t = Tensor::from_vec((0..64).map(|i| i as f32).collect(), &[8, 8]).unwrap();
        let values = t.data().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (t2, stop2) = (t.clone(), Arc::clone(&stop));
        let flipper = std::thread::spawn(move || {
            let m: tt_tensor::Materialize = Arc::new(move || values.clone());
            while !stop2.load(Ordering::Relaxed) {
                t2.release("w", Arc::clone(&m)).unwrap();
                t2.make_resident();
            }
        });
        for i in 0..20_000 {
            assert_eq!(t.shape(), [8, 8], "read {i}");
            let d = t.data();
            assert_eq!((d.shape(), d[[7, 7]]), (&[8usize, 8][..], 63.0), "read {i}");
        }
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
    }

    /// A format that is a dense view of the weight itself cannot be its only copy: releasing it
    /// is an error naming the weight (it would recompute itself from itself), not a hang.
    #[test]
    fn a_dense_view_of_the_weight_itself_cannot_be_released_to() {
        let mut l = Linear::new(4, 3, false, 0);
        let view = l.projection().unwrap();
        l.set_projection(view).unwrap();
        let mut m = Sequential::new().layer(l);
        let e = freeze(&mut m).unwrap_err().to_string();
        assert!(e.contains("0.weight") && e.contains("dense view"), "{e}");
    }

    /// A thread holding a read of a tensor asks for its label while another waits to release
    /// it: the answer comes at once (no lock is taken for a resident tensor), then the release.
    #[test]
    fn a_label_asked_under_a_read_does_not_wait_for_a_release() {
        let t = Tensor::from_vec(vec![1.0; 6], &[2, 3]).unwrap();
        let values = t.data().clone();
        let guard = t.data();
        let t2 = t.clone();
        let releaser = std::thread::spawn(move || t2.release("w", Arc::new(move || values.clone())).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(t.released_label(), None);
        drop(guard);
        assert_eq!(releaser.join().unwrap(), 24);
        assert_eq!(t.released_label().as_deref(), Some("w"));
    }

    #[test]
    fn only_layers_with_a_format_can_release_their_weight() {
        let l = Linear::new(3, 2, false, 0);
        let e = l.release_weight("head.weight").unwrap_err().to_string();
        assert!(e.contains("head.weight") && e.contains("only copy"), "{e}");
        let mut plain = digits::mlp(0);
        assert_eq!(freeze(&mut plain).unwrap(), tt_tensor::nn::Frozen::default());
        // Clearing the format of a frozen layer gives the layer its dense weight back.
        let mut l = Linear::new(3, 2, false, 0);
        l.set_projection(Arc::new(TransposedF64::of(l.projection().unwrap().as_ref()))).unwrap();
        l.release_weight("w").unwrap();
        l.clear_projection();
        assert!(!l.weight.is_released());
    }
}
