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
    let e = Embedding::new(5, 3, 1.0, 0);
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
