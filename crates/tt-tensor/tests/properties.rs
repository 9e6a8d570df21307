//! Property tests of the shape ops and kernels later modules build on: for random shapes and
//! arguments, ops either return the right thing or a clean error — never a panic, never a wrong
//! shape — and every fast kernel equals its reference.

use proptest::prelude::*;
use tt_tensor::kernels::{attention_head, attention_head_reference, linear_rows, linear_rows_reference, Rows};
use tt_tensor::projection::{check_projection, DenseF32};
use tt_tensor::{broadcast_shape, Tensor};

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5, 1..5)
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, seed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn reshape_round_trips_and_rejects_wrong_sizes(s in shape(), seed in 0u64..1000) {
        let t = tensor(&s, seed);
        let n: usize = s.iter().product();
        let flat = t.reshape(&[n]).unwrap();
        prop_assert_eq!(flat.to_vec(), t.to_vec());
        prop_assert_eq!(flat.reshape(&s).unwrap().shape(), s.clone());
        prop_assert!(t.reshape(&[n + 1]).is_err());
    }

    #[test]
    fn permute_then_inverse_is_identity(s in shape(), seed in 0u64..1000, rot in 0usize..4) {
        let t = tensor(&s, seed);
        let k = s.len();
        let perm: Vec<usize> = (0..k).map(|i| (i + rot) % k).collect();
        let mut inv = vec![0; k];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let p = t.permute(&perm).unwrap();
        prop_assert_eq!(p.shape(), perm.iter().map(|&a| s[a]).collect::<Vec<_>>());
        prop_assert_eq!(p.permute(&inv).unwrap().to_vec(), t.to_vec());
        prop_assert!(t.permute(&vec![0; k + 1]).is_err());
    }

    #[test]
    fn narrow_matches_slicing_or_errors(s in shape(), seed in 0u64..1000, axis in 0usize..5, start in 0usize..6, len in 0usize..6) {
        let t = tensor(&s, seed);
        match t.narrow(axis, start, len) {
            Ok(n) => {
                prop_assert!(axis < s.len() && start + len <= s[axis]);
                let mut want = s.clone();
                want[axis] = len;
                prop_assert_eq!(n.shape(), want);
                let d = t.data();
                let expect: Vec<f32> = d.slice_axis(ndarray::Axis(axis), ndarray::Slice::from(start..start + len)).iter().copied().collect();
                prop_assert_eq!(n.to_vec(), expect);
            }
            Err(_) => prop_assert!(axis >= s.len() || start + len > s[axis]),
        }
        // Overflowing arguments are errors too, not wrapped-around slices.
        prop_assert!(t.narrow(0, usize::MAX, 2).is_err());
    }

    #[test]
    fn concat_then_narrow_recovers_the_parts(s in shape(), seed in 0u64..1000, extra in 1usize..4) {
        let a = tensor(&s, seed);
        let mut s2 = s.clone();
        s2[0] = extra;
        let b = tensor(&s2, seed + 1);
        let c = Tensor::concat(&[&a, &b], 0).unwrap();
        prop_assert_eq!(c.narrow(0, 0, s[0]).unwrap().to_vec(), a.to_vec());
        prop_assert_eq!(c.narrow(0, s[0], extra).unwrap().to_vec(), b.to_vec());
    }

    #[test]
    fn broadcasting_is_symmetric_and_adds_agree(s in shape(), mask in prop::collection::vec(any::<bool>(), 4), seed in 0u64..1000) {
        // b is s with some dims set to 1 (and maybe fewer leading dims).
        let b_shape: Vec<usize> = s.iter().enumerate().map(|(i, &d)| if mask[i % 4] { 1 } else { d }).collect();
        prop_assert_eq!(broadcast_shape("t", &s, &b_shape).unwrap(), s.clone());
        prop_assert_eq!(broadcast_shape("t", &b_shape, &s).unwrap(), s.clone());
        let (a, b) = (tensor(&s, seed), tensor(&b_shape, seed + 7));
        prop_assert_eq!(a.add(&b).unwrap().to_vec(), b.add(&a).unwrap().to_vec());
        let bad: Vec<usize> = s.iter().map(|&d| d + 1).collect();
        prop_assert!(s.iter().all(|&d| d == 1) || broadcast_shape("t", &s, &bad).is_err());
    }

    /// The dense projection kernel on both of its paths (dot below 8 rows, GEMM from 8).
    #[test]
    fn linear_rows_equals_reference(rows in 1usize..20, in_f in 1usize..40, out_f in 1usize..40, seed in 0u64..1000, bias in any::<bool>()) {
        let x = tensor(&[rows, in_f], seed).to_vec();
        let w = tensor(&[out_f, in_f], seed + 1).to_vec();
        let b = tensor(&[out_f], seed + 2).to_vec();
        let b = bias.then_some(&b[..]);
        let mut y = vec![0.0; rows * out_f];
        linear_rows(&x, &w, b, rows, in_f, out_f, &mut y);
        let want = linear_rows_reference(&x, &w, b, rows, in_f, out_f);
        // f32 sums of ≤ 40 products of N(0,1) values: rounding ~1e-6 relative; 1e-4 absolute.
        for (a, e) in y.iter().zip(&want) {
            prop_assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{} vs {}", a, e);
        }
        let p = DenseF32::from_array(ndarray::Array2::from_shape_vec((out_f, in_f), w).unwrap());
        prop_assert!(check_projection(&p, rows, seed).unwrap() < 1e-4);
    }

    #[test]
    fn attention_head_equals_reference(slots in 1usize..24, n_frac in 0.0f64..1.0, hd in 1usize..9, seed in 0u64..1000) {
        let n = 1 + ((slots - 1) as f64 * n_frac) as usize;
        let data = tensor(&[3 * slots * hd], seed).to_vec();
        let rows = |off: usize, r: usize| Rows { data: &data[off..], rows: r, cols: hd, stride: hd };
        let (q, k, v) = (rows(0, n), rows(slots * hd, slots), rows(2 * slots * hd, slots));
        let (wp, wo) = attention_head_reference(q, k, v, 0.5);
        let mut probs = vec![0.0; n * slots];
        let mut out = vec![0.0; n * hd];
        attention_head(q, k, v, 0.5, &mut probs, &mut out, hd);
        for (a, e) in probs.iter().chain(&out).zip(wp.iter().chain(&wo)) {
            prop_assert!((a - e).abs() <= 1e-5 * (1.0 + e.abs()), "{} vs {}", a, e);
        }
    }
}
