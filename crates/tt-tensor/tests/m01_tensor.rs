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
    assert_eq!(a.argmax(), 5);
    assert_eq!(a.max_value(), 6.0);
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
