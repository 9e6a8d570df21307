//! Module 05 — autograd: finite-difference checks for every differentiable op, graph semantics.

use tt_tensor::testing::assert_grads;
use tt_tensor::{no_grad, Tensor};

fn r(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, seed)
}
fn pos(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, 0.5, 2.0, seed)
}

// f32 central differences with ε = 1e-2: tolerance 1e-3 absolute + 1e-2 relative (see testing.rs).
const ATOL: f32 = 1e-3;
const RTOL: f32 = 1e-2;

#[test]
fn elementwise_binary_ops_with_broadcasting() {
    assert_grads(|i| i[0].add(&i[1]), &[r(&[2, 3], 1), r(&[3], 2)], ATOL, RTOL);
    assert_grads(|i| i[0].sub(&i[1]), &[r(&[2, 3], 1), r(&[2, 1], 2)], ATOL, RTOL);
    assert_grads(|i| i[0].mul(&i[1]), &[r(&[2, 3], 1), r(&[1, 3], 2)], ATOL, RTOL);
    assert_grads(|i| i[0].div(&i[1]), &[r(&[2, 3], 1), pos(&[3], 2)], ATOL, RTOL);
}

#[test]
fn elementwise_unary_ops() {
    assert_grads(|i| Ok(i[0].exp()), &[r(&[4], 1)], ATOL, RTOL);
    assert_grads(|i| Ok(i[0].log()), &[pos(&[4], 1)], ATOL, RTOL);
    assert_grads(|i| Ok(i[0].sqrt()), &[pos(&[4], 1)], ATOL, RTOL);
    assert_grads(|i| Ok(i[0].pow(3.0)), &[r(&[4], 1)], ATOL, RTOL);
    assert_grads(|i| Ok(i[0].neg().add_scalar(2.0).mul_scalar(3.0)), &[r(&[4], 1)], ATOL, RTOL);
    let mask = ndarray::arr1(&[1.0f32, 0.0, 2.0, 0.5]).into_dyn();
    assert_grads(|i| i[0].mul_const(&mask), &[r(&[4], 1)], ATOL, RTOL);
}

#[test]
fn reductions() {
    assert_grads(|i| Ok(i[0].sum()), &[r(&[2, 3], 1)], ATOL, RTOL);
    assert_grads(|i| Ok(i[0].mean()), &[r(&[2, 3], 1)], ATOL, RTOL);
    assert_grads(|i| i[0].sum_axis(1, false), &[r(&[2, 3, 2], 1)], ATOL, RTOL);
    assert_grads(|i| i[0].mean_axis(0, true), &[r(&[2, 3], 1)], ATOL, RTOL);
    // Distinct values so the max is unique and differentiable.
    let x = Tensor::from_vec(vec![0.1, 0.9, -0.5, 2.0, 1.1, 0.3], &[2, 3]).unwrap();
    assert_grads(|i| i[0].max_axis(1, false), &[x], ATOL, RTOL);
}

#[test]
fn matmul_forms() {
    assert_grads(|i| i[0].matmul(&i[1]), &[r(&[3, 4], 1), r(&[4, 2], 2)], ATOL, RTOL);
    assert_grads(|i| i[0].matmul(&i[1]), &[r(&[2, 3, 4], 1), r(&[4, 2], 2)], ATOL, RTOL);
    assert_grads(|i| i[0].matmul(&i[1]), &[r(&[2, 3, 4], 1), r(&[2, 4, 2], 2)], ATOL, RTOL);
    assert_grads(|i| i[0].linear(&i[1], Some(&i[2])), &[r(&[2, 3, 4], 1), r(&[5, 4], 2), r(&[5], 3)], ATOL, RTOL);
    assert_grads(|i| i[0].linear(&i[1], None), &[r(&[3, 4], 1), r(&[2, 4], 2)], ATOL, RTOL);
}

#[test]
fn shape_ops() {
    assert_grads(|i| i[0].reshape(&[3, 2]), &[r(&[2, 3], 1)], ATOL, RTOL);
    assert_grads(|i| i[0].permute(&[2, 0, 1]), &[r(&[2, 3, 4], 1)], ATOL, RTOL);
    assert_grads(|i| i[0].transpose(0, 1), &[r(&[2, 3], 1)], ATOL, RTOL);
    assert_grads(|i| i[0].narrow(1, 1, 2), &[r(&[2, 4], 1)], ATOL, RTOL);
    assert_grads(|i| Tensor::concat(&[&i[0], &i[1]], 1), &[r(&[2, 3], 1), r(&[2, 2], 2)], ATOL, RTOL);
    assert_grads(|i| Tensor::stack(&[&i[0], &i[1]], 0), &[r(&[2, 3], 1), r(&[2, 3], 2)], ATOL, RTOL);
    assert_grads(|i| i[0].index_select_rows(&[2, 0, 2]), &[r(&[3, 4], 1)], ATOL, RTOL);
}

#[test]
fn layer_norm_gradients() {
    assert_grads(|i| i[0].layer_norm(&i[1], &i[2], 1e-5), &[r(&[3, 5], 1), r(&[5], 2), r(&[5], 3)], ATOL, 2e-2);
}

#[test]
fn reused_tensor_accumulates_gradient() {
    // y = x·x + x  →  dy/dx = 2x + 1
    let x = Tensor::param(ndarray::arr1(&[3.0f32, -1.0]).into_dyn());
    x.mul(&x).unwrap().add(&x).unwrap().sum().backward().unwrap();
    assert_eq!(x.grad().unwrap().iter().copied().collect::<Vec<_>>(), vec![7.0, -1.0]);
    // A second backward adds to the leaf's gradient until it is zeroed.
    x.mul(&x).unwrap().sum().backward().unwrap();
    assert_eq!(x.grad().unwrap().iter().copied().collect::<Vec<_>>(), vec![13.0, -3.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
}

#[test]
fn diamond_graph() {
    // a = 2x; b = a + 1; c = a * b  → dc/dx = 2b + 2a = 8x + 2
    let x = Tensor::param(ndarray::arr1(&[1.5f32]).into_dyn());
    let a = x.mul_scalar(2.0);
    let b = a.add_scalar(1.0);
    a.mul(&b).unwrap().sum().backward().unwrap();
    assert_eq!(x.grad().unwrap()[[0]], 14.0);
}

#[test]
fn no_grad_and_errors() {
    let x = Tensor::param(ndarray::arr1(&[1.0f32, 2.0]).into_dyn());
    let y = no_grad(|| x.mul_scalar(2.0).sum());
    assert!(!y.requires_grad());
    assert!(y.backward().is_err(), "no graph was recorded");
    assert!(x.mul_scalar(2.0).backward().is_err(), "non-scalar needs an explicit gradient");
    let z = x.mul_scalar(2.0);
    z.backward_with(ndarray::arr1(&[1.0f32, 10.0]).into_dyn()).unwrap();
    assert_eq!(x.grad().unwrap().iter().copied().collect::<Vec<_>>(), vec![2.0, 20.0]);
    // Constants get no gradient.
    let c = Tensor::ones(&[2]);
    x.mul(&c).unwrap().sum().backward().unwrap();
    assert!(c.grad().is_none());
    // Detached tensors cut the graph.
    let d = x.detach();
    assert!(!d.requires_grad());
}

#[test]
fn deep_chain_does_not_overflow_the_stack() {
    let x = Tensor::param(ndarray::arr1(&[1.0f32]).into_dyn());
    let mut h = x.clone();
    for _ in 0..20_000 {
        h = h.mul_scalar(1.0);
    }
    h.sum().backward().unwrap();
    assert_eq!(x.grad().unwrap()[[0]], 1.0);
}

/// A user-defined op whose backward breaks the contract: an autograd error, not a silent
/// broadcast or a dropped gradient in release builds.
mod bad_custom_ops {
    use tt_tensor::{Array, Tensor, TensorError};

    fn leaf() -> Tensor {
        Tensor::param(ndarray::Array::ones(ndarray::IxDyn(&[3])))
    }

    #[test]
    fn wrong_gradient_shape_is_an_error() {
        let x = leaf();
        let y = Tensor::custom_op("bad_shape", &[&x], x.data().clone(), || {
            Box::new(|_g: &Array| vec![Some(Array::ones(ndarray::IxDyn(&[1])))])
        });
        let e = y.sum().backward().unwrap_err();
        assert!(matches!(e, TensorError::Autograd(_)), "{e}");
        assert!(e.to_string().contains("bad_shape") && e.to_string().contains("[1]"), "{e}");
    }

    #[test]
    fn wrong_gradient_count_is_an_error() {
        let x = leaf();
        let y = Tensor::custom_op("bad_count", &[&x], x.data().clone(), || {
            Box::new(|_g: &Array| Vec::<Option<Array>>::new())
        });
        let e = y.sum().backward().unwrap_err();
        assert!(e.to_string().contains("bad_count") && e.to_string().contains("0 gradients for 1 inputs"), "{e}");
    }
}
