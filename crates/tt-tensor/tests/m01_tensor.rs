//! Module 01 — tensors: creation, shapes, elementwise math, broadcasting, reductions, matmul.

use tt_tensor::{Tensor, TensorError};

fn t(v: &[f32], s: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), s).unwrap()
}

/// Reference matmul: plain triple loop, used only to check the GEMM path.
fn naive_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

#[test]
fn creation_and_shapes() {
    assert_eq!(Tensor::zeros(&[2, 3]).to_vec(), vec![0.0; 6]);
    assert_eq!(Tensor::ones(&[4]).to_vec(), vec![1.0; 4]);
    assert_eq!(Tensor::arange(4).to_vec(), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(Tensor::full(&[2], 7.5).to_vec(), vec![7.5, 7.5]);
    let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    assert_eq!(x.shape(), vec![2, 3]);
    assert_eq!(x.numel(), 6);
    assert_eq!(x.ndim(), 2);
    assert!(matches!(Tensor::from_vec(vec![1.0; 5], &[2, 3]), Err(TensorError::InvalidShape { .. })));
}

#[test]
fn seeded_random_is_reproducible_and_has_right_moments() {
    let a = Tensor::randn(&[10000], 1.0, 2.0, 7);
    let b = Tensor::randn(&[10000], 1.0, 2.0, 7);
    let c = Tensor::randn(&[10000], 1.0, 2.0, 8);
    assert_eq!(a.to_vec(), b.to_vec());
    assert_ne!(a.to_vec(), c.to_vec());
    let v = a.to_vec();
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
    assert!((mean - 1.0).abs() < 0.08, "mean {mean}");
    assert!((var.sqrt() - 2.0).abs() < 0.08, "std {}", var.sqrt());
    let u = Tensor::rand_uniform(&[1000], -1.0, 3.0, 1).to_vec();
    assert!(u.iter().all(|&x| (-1.0..3.0).contains(&x)));
}

#[test]
fn elementwise_and_broadcasting() {
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let row = t(&[10., 20., 30.], &[3]);
    let col = t(&[1., 2.], &[2, 1]);
    assert_eq!(a.add(&row).unwrap().to_vec(), vec![11., 22., 33., 14., 25., 36.]);
    assert_eq!(a.sub(&col).unwrap().to_vec(), vec![0., 1., 2., 2., 3., 4.]);
    assert_eq!(a.mul(&col).unwrap().to_vec(), vec![1., 2., 3., 8., 10., 12.]);
    assert_eq!(a.div(&row).unwrap().to_vec(), vec![0.1, 0.1, 0.1, 0.4, 0.25, 0.2]);
    assert_eq!((&a + &a).to_vec(), vec![2., 4., 6., 8., 10., 12.]);
    assert_eq!(a.neg().to_vec()[0], -1.0);
    assert_eq!(t(&[4.0, 9.0], &[2]).sqrt().to_vec(), vec![2.0, 3.0]);
    assert_eq!(t(&[2.0, 3.0], &[2]).pow(3.0).to_vec(), vec![8.0, 27.0]);
    assert!((t(&[1.0], &[1]).exp().to_vec()[0] - std::f32::consts::E).abs() < 1e-6);
    assert!((t(&[std::f32::consts::E], &[1]).log().to_vec()[0] - 1.0).abs() < 1e-6);
    // Incompatible shapes are an error naming both shapes.
    let err = a.add(&t(&[1., 2.], &[2])).unwrap_err().to_string();
    assert!(err.contains("[2, 3]") && err.contains("[2]"), "{err}");
}

#[test]
fn reductions() {
    let a = t(&[1., 5., 3., 4., 2., 6.], &[2, 3]);
    assert_eq!(a.sum().item().unwrap(), 21.0);
    assert_eq!(a.mean().item().unwrap(), 3.5);
    assert_eq!(a.sum_axis(0, false).unwrap().to_vec(), vec![5., 7., 9.]);
    assert_eq!(a.sum_axis(1, true).unwrap().shape(), vec![2, 1]);
    assert_eq!(a.mean_axis(1, false).unwrap().to_vec(), vec![3.0, 4.0]);
    assert_eq!(a.max_axis(1, false).unwrap().to_vec(), vec![5.0, 6.0]);
    assert_eq!(a.argmax_axis(1).unwrap().iter().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(a.argmax().unwrap(), 5);
    assert_eq!(a.max_value().unwrap(), 6.0);
    assert!(a.sum_axis(2, false).is_err());
}

#[test]
fn matmul_matches_naive_reference() {
    for &(m, k, n) in &[(1, 1, 1), (3, 5, 4), (17, 33, 9), (64, 64, 64)] {
        let a = Tensor::randn(&[m, k], 0.0, 1.0, 1);
        let b = Tensor::randn(&[k, n], 0.0, 1.0, 2);
        let got = a.matmul(&b).unwrap().to_vec();
        let want = naive_matmul(&a.to_vec(), &b.to_vec(), m, k, n);
        for (g, w) in got.iter().zip(&want) {
            // Summation order differs between GEMM and the loop: allow f32 rounding of a k-term sum.
            assert!((g - w).abs() <= 1e-5 * (k as f32) * (1.0 + w.abs()), "{g} vs {w}");
        }
    }
}

#[test]
fn batched_and_folded_matmul() {
    let a = Tensor::randn(&[2, 3, 4, 5], 0.0, 1.0, 3);
    let b2 = Tensor::randn(&[5, 6], 0.0, 1.0, 4);
    let b4 = Tensor::randn(&[2, 3, 5, 6], 0.0, 1.0, 5);
    let folded = a.matmul(&b2).unwrap();
    assert_eq!(folded.shape(), vec![2, 3, 4, 6]);
    let batched = a.matmul(&b4).unwrap();
    let (av, bv, cv) = (a.to_vec(), b4.to_vec(), batched.to_vec());
    for i in 0..6 {
        let want = naive_matmul(&av[i * 20..(i + 1) * 20], &bv[i * 30..(i + 1) * 30], 4, 5, 6);
        for (g, w) in cv[i * 24..(i + 1) * 24].iter().zip(&want) {
            assert!((g - w).abs() < 1e-4);
        }
    }
    let fv = folded.to_vec();
    let want0 = naive_matmul(&av[..20], &b2.to_vec(), 4, 5, 6);
    for (g, w) in fv[..24].iter().zip(&want0) {
        assert!((g - w).abs() < 1e-4);
    }
    assert!(a.matmul(&Tensor::zeros(&[4, 6])).is_err());
    assert!(a.matmul(&Tensor::zeros(&[2, 2, 5, 6])).is_err());
}

#[test]
fn shape_ops() {
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    assert_eq!(a.reshape(&[3, 2]).unwrap().shape(), vec![3, 2]);
    assert!(a.reshape(&[4, 2]).is_err());
    assert_eq!(a.transpose(0, 1).unwrap().to_vec(), vec![1., 4., 2., 5., 3., 6.]);
    assert!(a.permute(&[0, 0]).is_err());
    assert_eq!(a.narrow(1, 1, 2).unwrap().to_vec(), vec![2., 3., 5., 6.]);
    assert!(a.narrow(1, 2, 2).is_err());
    let c = Tensor::concat(&[&a, &a], 0).unwrap();
    assert_eq!(c.shape(), vec![4, 3]);
    assert_eq!(Tensor::concat(&[&a, &a], 1).unwrap().to_vec()[..6], [1., 2., 3., 1., 2., 3.]);
    let s = Tensor::stack(&[&a, &a, &a], 0).unwrap();
    assert_eq!(s.shape(), vec![3, 2, 3]);
    assert_eq!(a.unsqueeze(0).unwrap().shape(), vec![1, 2, 3]);
    assert_eq!(s.flatten_from(1).unwrap().shape(), vec![3, 6]);
    assert_eq!(a.index_select_rows(&[1, 1, 0]).unwrap().to_vec(), vec![4., 5., 6., 4., 5., 6., 1., 2., 3.]);
    assert!(a.index_select_rows(&[2]).is_err());
}

#[test]
fn item_and_set_data() {
    assert_eq!(Tensor::scalar(3.0).item().unwrap(), 3.0);
    assert!(Tensor::zeros(&[2]).item().is_err());
    let a = Tensor::zeros(&[2]);
    assert!(a.set_data(ndarray::arr1(&[1.0f32, 2.0, 3.0]).into_dyn()).is_err());
    a.set_data(ndarray::arr1(&[1.0f32, 2.0]).into_dyn()).unwrap();
    assert_eq!(a.to_vec(), vec![1.0, 2.0]);
}

/// Hostile sizes, indices and parameters at the tensor boundary: a named error, never a panic,
/// a wrapped overflow or a silently wrong value.
mod bad_input {
    use tt_tensor::{Tensor, TensorError};

    fn is_overflow(e: &TensorError, op: &str) -> bool {
        matches!(e, TensorError::InvalidShape { op: o, .. } if *o == op) && e.to_string().contains("overflows")
    }

    #[test]
    fn shapes_whose_size_overflows_are_errors() {
        let huge = [usize::MAX / 2, 3];
        // 2³²·2³² wraps to 0 in release builds, which used to "match" an empty vector.
        assert!(is_overflow(&Tensor::from_vec(vec![], &[1 << 32, 1 << 32]).unwrap_err(), "from_vec"));
        assert!(is_overflow(&Tensor::try_zeros(&huge).unwrap_err(), "zeros"));
        assert!(is_overflow(&Tensor::try_ones(&huge).unwrap_err(), "ones"));
        assert!(is_overflow(&Tensor::try_full(&huge, 1.0).unwrap_err(), "full"));
        assert!(is_overflow(&Tensor::try_arange(usize::MAX).unwrap_err(), "arange"));
        assert!(is_overflow(&Tensor::try_randn(&huge, 0.0, 1.0, 0).unwrap_err(), "randn"));
        assert!(is_overflow(&Tensor::try_rand_uniform(&huge, 0.0, 1.0, 0).unwrap_err(), "rand_uniform"));
        // ndarray requires the non-zero dims to fit even when one dim is 0.
        assert!(is_overflow(&Tensor::try_zeros(&[0, usize::MAX, 2]).unwrap_err(), "zeros"));
        let empty = Tensor::zeros(&[0]);
        assert!(is_overflow(&empty.reshape(&[1 << 32, 1 << 32, 0]).unwrap_err(), "reshape"));
        assert!(is_overflow(&empty.reshape(&[1 << 32, 1 << 32]).unwrap_err(), "reshape"));
    }

    #[test]
    fn large_but_representable_shapes_are_allowed() {
        // Empty, so nothing is allocated, but every dim is huge: allowed.
        assert_eq!(Tensor::try_zeros(&[0, 1 << 60]).unwrap().shape(), vec![0, 1 << 60]);
        assert_eq!(Tensor::zeros(&[0]).reshape(&[1 << 40, 0]).unwrap().shape(), vec![1 << 40, 0]);
        assert_eq!(Tensor::try_arange(5).unwrap().to_vec(), vec![0., 1., 2., 3., 4.]);
        assert_eq!(Tensor::try_full(&[2], f32::NAN).unwrap().numel(), 2, "a NaN fill is data, not a hyperparameter");
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn panicking_constructor_names_the_overflow() {
        let _ = Tensor::zeros(&[usize::MAX, 2]);
    }

    #[test]
    fn random_constructors_reject_bad_parameters() {
        for (mean, std) in [(0.0, f32::NAN), (0.0, -1.0), (0.0, f32::INFINITY), (f32::NAN, 1.0)] {
            let e = Tensor::try_randn(&[2], mean, std, 0).unwrap_err();
            assert!(matches!(e, TensorError::InvalidArgument { op: "randn", .. }), "{e}");
            assert!(e.to_string().contains("mean") || e.to_string().contains("std"), "{e}");
        }
        for (lo, hi) in [(1.0, 1.0), (2.0, 1.0), (f32::NAN, 1.0), (0.0, f32::INFINITY), (-3e38, 3e38)] {
            let e = Tensor::try_rand_uniform(&[2], lo, hi, 0).unwrap_err();
            assert!(matches!(e, TensorError::InvalidArgument { op: "rand_uniform", .. }), "{e}");
            assert!(e.to_string().contains("low"), "{e}");
        }
        // Valid arguments: the panicking and checked forms agree bit for bit.
        assert_eq!(Tensor::try_randn(&[4], 1.0, 2.0, 3).unwrap().to_vec(), Tensor::randn(&[4], 1.0, 2.0, 3).to_vec());
    }

    #[test]
    fn narrow_start_plus_len_cannot_wrap() {
        let x = Tensor::arange(4);
        let e = x.narrow(0, usize::MAX, 2).unwrap_err();
        assert!(matches!(e, TensorError::InvalidArgument { op: "narrow", .. }), "{e}");
        assert!(e.to_string().contains("start") && e.to_string().contains("overflows"), "{e}");
        let e = x.narrow(0, 3, 2).unwrap_err();
        assert!(matches!(e, TensorError::OutOfRange { op: "narrow", index: 5, limit: 4, .. }), "{e}");
        assert_eq!(x.narrow(0, 1, 2).unwrap().to_vec(), vec![1.0, 2.0]);
    }

    #[test]
    fn stack_names_itself() {
        let e = Tensor::stack(&[], 0).unwrap_err();
        assert!(matches!(e, TensorError::InvalidArgument { op: "stack", .. }), "{e}");
        let a = Tensor::zeros(&[2]);
        let e = Tensor::stack(&[&a, &a], 2).unwrap_err();
        assert!(matches!(e, TensorError::OutOfRange { op: "stack", what: "axis", index: 2, limit: 2 }), "{e}");
    }

    #[test]
    fn maxima_of_nothing_are_errors() {
        let empty = Tensor::zeros(&[0]);
        let e = empty.argmax().unwrap_err();
        assert!(matches!(e, TensorError::InvalidShape { op: "argmax", .. }) && e.to_string().contains("empty"), "{e}");
        assert!(matches!(empty.max_value().unwrap_err(), TensorError::InvalidShape { op: "max_value", .. }));
        // An axis of size 0: no maximum, and the backward used to index an empty lane.
        let x = Tensor::param(ndarray::Array::zeros(ndarray::IxDyn(&[2, 0])));
        let e = x.max_axis(1, false).unwrap_err();
        assert!(
            matches!(e, TensorError::InvalidShape { op: "max_axis", .. }) && e.to_string().contains("axis 1"),
            "{e}"
        );
        assert!(matches!(x.argmax_axis(1).unwrap_err(), TensorError::InvalidShape { op: "argmax_axis", .. }));
        // Other dims may be empty.
        assert_eq!(x.argmax_axis(0).unwrap().len(), 0);
    }

    #[test]
    fn mean_of_nothing_is_nan_not_zero() {
        assert!(Tensor::zeros(&[0]).mean().item().unwrap().is_nan());
        let m = Tensor::zeros(&[3, 0]).mean_axis(1, false).unwrap().to_vec();
        assert!(m.len() == 3 && m.iter().all(|v| v.is_nan()), "{m:?}");
        assert_eq!(Tensor::ones(&[4]).mean().item().unwrap(), 1.0);
    }

    #[test]
    fn products_of_empty_inputs_cannot_ask_for_a_huge_output() {
        let a = Tensor::zeros(&[1 << 31, 0]);
        let b = Tensor::zeros(&[0, 1 << 31]);
        assert!(is_overflow(&a.matmul(&b).unwrap_err(), "matmul"));
        let w = Tensor::zeros(&[1 << 31, 0]);
        assert!(is_overflow(&a.linear(&w, None).unwrap_err(), "linear"));
        let a3 = Tensor::zeros(&[2, 1 << 31, 0]);
        let b3 = Tensor::zeros(&[2, 0, 1 << 31]);
        assert!(is_overflow(&a3.matmul(&b3).unwrap_err(), "matmul"));
    }

    #[test]
    fn set_grad_checks_the_shape() {
        let w = Tensor::param(ndarray::Array::zeros(ndarray::IxDyn(&[3])));
        let e = w.set_grad(Some(ndarray::Array::ones(ndarray::IxDyn(&[1])))).unwrap_err();
        assert!(matches!(e, TensorError::ShapeMismatch { .. }) && e.to_string().contains("set_grad"), "{e}");
        assert!(w.grad().is_none(), "a rejected gradient is not stored");
        w.set_grad(Some(ndarray::Array::ones(ndarray::IxDyn(&[3])))).unwrap();
        assert_eq!(w.grad().unwrap().len(), 3);
    }
}

mod bad_input_joins {
    use tt_tensor::{Tensor, TensorError};

    #[test]
    fn broadcasting_and_concat_of_empty_inputs_cannot_overflow() {
        let a = Tensor::zeros(&[1 << 40, 1, 0]);
        let b = Tensor::zeros(&[1, 1 << 40, 0]);
        for (op, e) in [("add", a.add(&b).unwrap_err()), ("mul", a.mul(&b).unwrap_err())] {
            assert!(matches!(e, TensorError::InvalidShape { op: o, .. } if o == op), "{e}");
            assert!(e.to_string().contains("overflows"), "{e}");
        }
        // Each part is representable (2⁶⁰ rows of nothing); four of them are not.
        let c = Tensor::zeros(&[1 << 60, 0]);
        let e = Tensor::concat(&[&c, &c, &c, &c], 0).unwrap_err();
        assert!(
            matches!(e, TensorError::InvalidShape { op: "concat", .. }) && e.to_string().contains("overflows"),
            "{e}"
        );
        // Nine of the largest representable parts: the sum itself overflows usize.
        let d = Tensor::zeros(&[(1 << 61) - 1, 0]);
        let e = Tensor::concat(&[&d; 9], 0).unwrap_err();
        assert!(e.to_string().contains("overflow usize"), "{e}");
        assert_eq!(Tensor::concat(&[&Tensor::ones(&[2]), &Tensor::ones(&[3])], 0).unwrap().shape(), vec![5]);
    }
}
