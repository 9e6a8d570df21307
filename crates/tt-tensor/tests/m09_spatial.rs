//! Module 09 — spatial: conv2d (im2col + GEMM) against a direct reference, pooling, gradients.

use tt_tensor::nn::{Conv2d, Flatten, Linear, MaxPool2d, Relu, Sequential};
use tt_tensor::testing::assert_grads;
use tt_tensor::{Module, Tensor};

/// Direct convolution loops: the reference the im2col path is checked against.
fn conv_reference(x: &Tensor, w: &Tensor, b: &[f32], stride: usize, pad: usize) -> (Vec<usize>, Vec<f32>) {
    let (xs, ws) = (x.shape(), w.shape());
    let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (co, k) = (ws[0], ws[2]);
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (wd + 2 * pad - k) / stride + 1;
    let (xv, wv) = (x.to_vec(), w.to_vec());
    let mut out = vec![0.0; n * co * ho * wo];
    for bi in 0..n {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = b[o];
                    for ci in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    s += xv[((bi * c + ci) * h + iy as usize) * wd + ix as usize]
                                        * wv[((o * c + ci) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                    out[((bi * co + o) * ho + oy) * wo + ox] = s;
                }
            }
        }
    }
    (vec![n, co, ho, wo], out)
}

#[test]
fn conv2d_matches_direct_reference() {
    for &(stride, pad, k, h) in &[(1, 0, 3, 5), (1, 1, 3, 8), (2, 1, 3, 7), (2, 0, 2, 6), (1, 2, 5, 6)] {
        let conv = Conv2d::new(3, 4, k, stride, pad, 9);
        let x = Tensor::randn(&[2, 3, h, h], 0.0, 1.0, 10);
        let y = conv.forward(&x).unwrap();
        let (shape, want) = conv_reference(&x, &conv.weight, &conv.bias.as_ref().unwrap().to_vec(), stride, pad);
        assert_eq!(y.shape(), shape, "stride {stride} pad {pad}");
        for (g, w) in y.to_vec().iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "stride {stride} pad {pad}: {g} vs {w}");
        }
    }
    let conv = Conv2d::new(3, 4, 3, 1, 0, 0);
    assert!(conv.forward(&Tensor::zeros(&[1, 2, 5, 5])).is_err(), "channel mismatch");
    assert!(conv.forward(&Tensor::zeros(&[1, 3, 2, 2])).is_err(), "kernel larger than input");
    assert!(conv.forward(&Tensor::zeros(&[3, 5, 5])).is_err(), "missing batch dim");
}

#[test]
fn pooling_values() {
    let x = Tensor::from_vec((0..16).map(|v| v as f32).collect(), &[1, 1, 4, 4]).unwrap();
    assert_eq!(x.max_pool2d(2, 2).unwrap().to_vec(), vec![5., 7., 13., 15.]);
    assert_eq!(x.avg_pool2d(2, 2).unwrap().to_vec(), vec![2.5, 4.5, 10.5, 12.5]);
    assert_eq!(x.max_pool2d(3, 1).unwrap().shape(), vec![1, 1, 2, 2]);
    assert!(x.max_pool2d(5, 1).is_err());
}

#[test]
fn spatial_gradients() {
    let x = Tensor::randn(&[2, 2, 5, 5], 0.0, 1.0, 1);
    let w = Tensor::randn(&[3, 2, 3, 3], 0.0, 0.5, 2);
    let b = Tensor::randn(&[3], 0.0, 0.5, 3);
    assert_grads(|i| i[0].conv2d(&i[1], Some(&i[2]), 1, 1), &[x.clone(), w.clone(), b.clone()], 2e-3, 2e-2);
    assert_grads(|i| i[0].conv2d(&i[1], Some(&i[2]), 2, 0), &[x.clone(), w, b], 2e-3, 2e-2);
    // Random values are distinct, so each window's max is unique.
    assert_grads(|i| i[0].max_pool2d(2, 2), &[Tensor::randn(&[1, 2, 4, 4], 0.0, 1.0, 4)], 1e-3, 1e-2);
    assert_grads(|i| i[0].avg_pool2d(2, 1), &[x], 1e-3, 1e-2);
}

#[test]
fn small_cnn_shapes() {
    let cnn = Sequential::new()
        .layer(Conv2d::new(1, 8, 3, 1, 1, 0))
        .layer(Relu)
        .layer(MaxPool2d { kernel: 2, stride: 2 })
        .layer(Conv2d::new(8, 16, 3, 1, 1, 1))
        .layer(Relu)
        .layer(MaxPool2d { kernel: 2, stride: 2 })
        .layer(Flatten)
        .layer(Linear::new(64, 10, true, 2));
    let y = cnn.forward(&Tensor::zeros(&[5, 1, 8, 8])).unwrap();
    assert_eq!(y.shape(), vec![5, 10]);
    assert_eq!(cnn.num_parameters(), 8 * 9 + 8 + 16 * 8 * 9 + 16 + 64 * 10 + 10);
}

/// Degenerate pooling and convolution geometry: named errors before anything is allocated.
mod bad_geometry {
    use tt_tensor::nn::{AvgPool2d, MaxPool2d};
    use tt_tensor::{Module, Tensor, TensorError};

    fn says(e: &TensorError, op: &str, what: &str) -> bool {
        matches!(e, TensorError::InvalidArgument { op: o, .. } if *o == op) && e.to_string().contains(what)
    }

    #[test]
    fn pooling_kernel_or_stride_zero() {
        // Kernel 0 used to run and then panic in backward (an index past the input).
        let x = Tensor::param(ndarray::Array::ones(ndarray::IxDyn(&[1, 1, 4, 4])));
        assert!(says(&x.max_pool2d(0, 1).unwrap_err(), "max_pool2d", "kernel 0x0"));
        assert!(says(&x.avg_pool2d(0, 1).unwrap_err(), "avg_pool2d", "kernel 0x0"));
        assert!(says(&x.max_pool2d(2, 0).unwrap_err(), "max_pool2d", "stride 0"));
        assert!(says(&x.avg_pool2d(2, 0).unwrap_err(), "avg_pool2d", "stride 0"));
        assert!(says(&MaxPool2d { kernel: 0, stride: 2 }.forward(&x).unwrap_err(), "max_pool2d", "kernel"));
        assert!(says(&AvgPool2d { kernel: 2, stride: 0 }.forward(&x).unwrap_err(), "avg_pool2d", "stride"));
        let e = x.max_pool2d(5, 1).unwrap_err();
        assert!(
            matches!(e, TensorError::InvalidShape { op: "max_pool2d", .. }) && e.to_string().contains("does not fit"),
            "{e}"
        );
        let y = x.max_pool2d(2, 2).unwrap();
        y.sum().backward().unwrap();
        assert_eq!(x.grad().unwrap().sum(), 4.0);
    }

    #[test]
    fn conv_stride_padding_and_kernel() {
        let x = Tensor::ones(&[1, 1, 3, 3]);
        let w = Tensor::ones(&[1, 1, 2, 2]);
        assert!(says(&x.conv2d(&w, None, 0, 0).unwrap_err(), "conv2d", "stride 0"));
        assert!(says(&x.conv2d(&Tensor::ones(&[1, 1, 0, 2]), None, 1, 0).unwrap_err(), "conv2d", "kernel 0x2"));
        // `h + 2·padding` used to overflow (a panic in debug, a wrapped size in release).
        assert!(says(&x.conv2d(&w, None, 1, usize::MAX / 2 + 1).unwrap_err(), "conv2d", "padding"));
        // A padding that fits usize but makes the im2col buffer / output overflow.
        let e = x.conv2d(&w, None, 1, 1 << 31).unwrap_err();
        assert!(
            matches!(e, TensorError::InvalidShape { op: "conv2d", .. }) && e.to_string().contains("overflows"),
            "{e}"
        );
        assert_eq!(x.conv2d(&w, None, 1, 1).unwrap().shape(), vec![1, 1, 4, 4]);
    }
}
