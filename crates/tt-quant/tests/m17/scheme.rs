//! The affine map on known values, edge ranges, and the error bound as a property.

use ndarray::Array2;
use proptest::prelude::*;
use tt_quant::{Granularity, QParams, QRange, QuantizedMatrix, Scheme};

/// Relative slack on the S/2 bound for values well inside the range.
const SLACK: f32 = 1.0 + 1e-6;

/// The bound at any value `v` in range: `S` is stored in f32 (relative rounding ≤ 2⁻²⁴), and a
/// code up to ±128 multiplies that rounding, so `|v|·ε` is added to `S/2`.
fn bound(scale: f32, v: f32) -> f32 {
    scale / 2.0 * SLACK + f32::EPSILON * v.abs()
}

#[test]
fn known_values_round_trip_within_half_a_step() {
    let x = [0.5f32, -0.5, 1.0, -1.0];
    for scheme in [Scheme::Affine, Scheme::Symmetric] {
        for range in [QRange::I8, QRange::I8_SYMMETRIC] {
            let p = QParams::from_range(-1.0, 1.0, scheme, range).unwrap();
            for &v in &x {
                let q = p.quantize(v, range);
                assert!((range.min()..=range.max()).contains(&q), "{scheme:?} {range:?}: code {q}");
                let back = p.dequantize(q);
                assert!((back - v).abs() <= bound(p.scale(), v), "{scheme:?} {range:?}: {v} → {q} → {back}");
            }
        }
    }
    // Symmetric [−127, 127] on [−1, 1]: S = 1/127, codes ±127 and ±64 (63.5 rounds half to even).
    let p = QParams::from_range(-1.0, 1.0, Scheme::Symmetric, QRange::I8_SYMMETRIC).unwrap();
    assert_eq!((p.scale(), p.zero_point()), (1.0 / 127.0, 0));
    assert_eq!([1.0f32, -1.0, 0.5, -0.5].map(|v| p.quantize(v, QRange::I8_SYMMETRIC)), [127, -127, 64, -64]);
    // Half to even: with S = 1, 0.5 → 0, 1.5 → 2, 2.5 → 2, −0.5 → 0.
    let unit = QParams::UNIT;
    assert_eq!([0.5f32, 1.5, 2.5, -0.5, -1.5].map(|v| unit.quantize(v, QRange::I8)), [0, 2, 2, 0, -2]);
    // Values outside the range clamp.
    assert_eq!(unit.quantize(1000.0, QRange::I8), 127);
    assert_eq!(unit.quantize(-1000.0, QRange::I8), -128);
}

#[test]
fn the_range_always_includes_zero_and_zero_is_exact() {
    for (lo, hi) in [(2.0f32, 5.0), (-5.0, -2.0), (0.1, 0.2), (-3.0, 7.0)] {
        for scheme in [Scheme::Affine, Scheme::Symmetric] {
            let p = QParams::from_range(lo, hi, scheme, QRange::I8).unwrap();
            let z = p.quantize(0.0, QRange::I8);
            assert_eq!(p.dequantize(z), 0.0, "[{lo}, {hi}] {scheme:?}");
        }
    }
    // Affine [2, 5] is widened to [0, 5]: Z = −128, the top code is 5.
    let p = QParams::from_range(2.0, 5.0, Scheme::Affine, QRange::I8).unwrap();
    assert_eq!(p.zero_point(), -128);
    assert!((p.dequantize(127) - 5.0).abs() < 1e-6);
}

#[test]
fn constants_zeros_tiny_and_huge_ranges_stay_finite_and_distinct() {
    // All zeros: no division by zero, everything maps back to 0.
    let zero = Array2::<f32>::zeros((3, 4));
    for scheme in [Scheme::Affine, Scheme::Symmetric] {
        for g in [Granularity::PerTensor, Granularity::PerChannel, Granularity::PerGroup(3)] {
            let q = QuantizedMatrix::quantize(&zero, scheme, g).unwrap();
            assert!(q.params().iter().all(|p| p.scale().is_finite() && p.scale() > 0.0));
            assert_eq!(q.dequantize(), zero);
        }
    }
    // A constant: exactly representable as the top code.
    let c = Array2::from_elem((2, 3), 0.7f32);
    let q = QuantizedMatrix::quantize(&c, Scheme::Symmetric, Granularity::PerTensor).unwrap();
    assert!(q.dequantize().iter().all(|&v| (v - 0.7).abs() < 1e-6));
    // Tiny: three distinct values stay three distinct, finite values.
    for scheme in [Scheme::Affine, Scheme::Symmetric] {
        let p = QParams::from_range(-1e-10, 1e-10, scheme, QRange::I8).unwrap();
        let back: Vec<f32> = [-1e-10f32, 0.0, 1e-10].iter().map(|&v| p.dequantize(p.quantize(v, QRange::I8))).collect();
        assert!(back.iter().all(|v| v.is_finite()), "{back:?}");
        assert!(back[0] < back[1] && back[1] < back[2], "{scheme:?}: {back:?}");
        assert!((back[2] - 1e-10).abs() <= p.scale(), "{back:?}");
    }
    // Huge: ±3e38 (the width overflows f32) stays finite and in order.
    for scheme in [Scheme::Affine, Scheme::Symmetric] {
        let p = QParams::from_range(-3e38, 3e38, scheme, QRange::I8).unwrap();
        assert!(p.scale().is_finite());
        let back: Vec<f32> = [-3e38f32, 0.0, 3e38].iter().map(|&v| p.dequantize(p.quantize(v, QRange::I8))).collect();
        assert!(back.iter().all(|v| v.is_finite()), "{scheme:?}: {back:?}");
        assert!(back[0] < 0.0 && back[1] == 0.0 && back[2] > 0.0);
        assert!((back[2] - 3e38).abs() <= bound(p.scale(), 3e38), "{scheme:?}: {back:?}, S = {}", p.scale());
    }
}

#[test]
fn bad_ranges_and_settings_are_errors() {
    assert!(QParams::from_range(f32::NAN, 1.0, Scheme::Affine, QRange::I8).is_err());
    assert!(QParams::from_range(0.0, f32::INFINITY, Scheme::Affine, QRange::I8).is_err());
    assert!(QParams::from_range(1.0, -1.0, Scheme::Affine, QRange::I8).is_err());
    let w = Array2::from_elem((2, 2), 1.0f32);
    assert!(QuantizedMatrix::quantize(&w, Scheme::Affine, Granularity::PerGroup(0)).is_err());
    let mut bad = w.clone();
    bad[[1, 1]] = f32::NAN;
    let e = QuantizedMatrix::quantize(&bad, Scheme::Symmetric, Granularity::PerChannel).unwrap_err();
    assert!(e.to_string().contains("not finite"), "{e}");
}

#[test]
fn granularities_keep_one_scale_per_tensor_row_or_group() {
    // Row 0 spans ±1, row 1 spans ±100: per-channel gives row 0 a 100× finer step.
    let w = ndarray::array![[1.0f32, -1.0, 0.5, 0.25, 0.1], [100.0, -100.0, 50.0, 1.0, 0.0]];
    let t = QuantizedMatrix::quantize(&w, Scheme::Symmetric, Granularity::PerTensor).unwrap();
    let c = QuantizedMatrix::quantize(&w, Scheme::Symmetric, Granularity::PerChannel).unwrap();
    let g = QuantizedMatrix::quantize(&w, Scheme::Symmetric, Granularity::PerGroup(2)).unwrap();
    assert_eq!((t.params().len(), c.params().len(), g.params().len()), (1, 2, 6));
    assert!((c.params()[1].scale() / c.params()[0].scale() - 100.0).abs() < 1e-3);
    let err = |q: &QuantizedMatrix| (&q.dequantize() - &w).iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let row0 = |q: &QuantizedMatrix| (0..5).map(|i| (q.dequantize()[[0, i]] - w[[0, i]]).abs()).fold(0.0, f32::max);
    assert!(row0(&c) < row0(&t) / 50.0, "per-channel {} vs per-tensor {}", row0(&c), row0(&t));
    assert!(err(&g) <= err(&c) * SLACK);
    // Bytes: codes plus 4-byte scales (symmetric: no zero points stored); affine adds a byte each.
    assert_eq!(t.storage_bytes(), 10 + 4);
    assert_eq!(c.storage_bytes(), 10 + 8);
    let a = QuantizedMatrix::quantize(&w, Scheme::Affine, Granularity::PerChannel).unwrap();
    assert_eq!(a.storage_bytes(), 10 + 10);
    assert!(t.codes().iter().all(|&q| q >= -127));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Inside the range the error is at most S/2; quantization is monotone and keeps signs.
    #[test]
    fn error_bound_monotone_and_sign_preserving(
        xs in proptest::collection::vec(-1e6f32..1e6, 1..40),
        affine in any::<bool>(),
        signed in any::<bool>(),
    ) {
        let scheme = if affine { Scheme::Affine } else { Scheme::Symmetric };
        let range = if signed { QRange::I8 } else { QRange::U8 };
        let (lo, hi) = tt_quant::scheme::finite_range(&xs);
        let p = QParams::from_range(lo, hi, scheme, range).unwrap();
        let mut sorted = xs.clone();
        sorted.sort_by(f32::total_cmp);
        let codes: Vec<i32> = sorted.iter().map(|&v| p.quantize(v, range)).collect();
        for (w, c) in codes.windows(2).zip(sorted.windows(2)) {
            prop_assert!(w[0] <= w[1], "not monotone: {:?} → {:?}", c, w);
        }
        for (&v, &q) in sorted.iter().zip(&codes) {
            let back = p.dequantize(q);
            // Symmetric unsigned-range maps waste half the codes only when all values share a
            // sign; every value is still inside the representable range.
            prop_assert!((back - v).abs() <= bound(p.scale(), v),
                "{v} → {q} → {back} (S = {})", p.scale());
            prop_assert!(back == 0.0 || back.signum() == v.signum(), "sign of {v} → {back}");
        }
    }

    /// The dequantized matrix is within S/2 of the original for every element and granularity.
    #[test]
    fn matrices_round_trip_within_their_own_scales(
        vals in proptest::collection::vec(-50f32..50.0, 1..60),
        cols in 1usize..9,
        group in 1usize..5,
    ) {
        let rows = vals.len().div_ceil(cols);
        let mut v = vals.clone();
        v.resize(rows * cols, 0.0);
        let w = Array2::from_shape_vec((rows, cols), v).unwrap();
        for scheme in [Scheme::Affine, Scheme::Symmetric] {
            for g in [Granularity::PerTensor, Granularity::PerChannel, Granularity::PerGroup(group)] {
                let q = QuantizedMatrix::quantize(&w, scheme, g).unwrap();
                let d = q.dequantize();
                for ((r, c), &x) in w.indexed_iter() {
                    let s = q.params_at(r, c).scale();
                    prop_assert!((d[[r, c]] - x).abs() <= bound(s, x), "{scheme:?} {g:?} ({r},{c}): {x} vs {}", d[[r, c]]);
                    let own = q.params_at(r, c).dequantize(q.codes()[r * cols + c] as i32);
                    prop_assert_eq!(d[[r, c]].to_bits(), own.to_bits(), "{:?} {:?} ({}, {})", scheme, g, r, c);
                }
            }
        }
    }
}

/// The probe's example: finite weights near `f32::MAX` gave a scale whose extreme code
/// dequantized to ±∞. Every code of every scheme and range now dequantizes finitely, the ends of
/// the range are still represented to within one step (the documented clamp), and a code range
/// too narrow to have a finite scale is an error.
#[test]
fn ranges_reaching_f32_max_keep_every_code_finite() {
    let m = f32::MAX;
    let ranges = [QRange::I8, QRange::I8_SYMMETRIC, QRange::U8, QRange::new(-8, 7).unwrap()];
    for scheme in [Scheme::Affine, Scheme::Symmetric] {
        for range in ranges {
            for (lo, hi) in [(-m, m), (0.0, m), (-m, 0.0), (-3e38, 3e38), (-1.0, m), (-m, 1.0)] {
                let p = QParams::from_range(lo, hi, scheme, range).unwrap();
                for q in [range.min(), range.max()] {
                    assert!(p.dequantize(q).is_finite(), "{scheme:?} {range:?} [{lo}, {hi}]: code {q}");
                }
                for v in [lo, hi] {
                    let back = p.dequantize(p.quantize(v, range));
                    let slack = p.scale() + 4.0 * f32::EPSILON * v.abs();
                    assert!((back - v).abs() <= slack, "{scheme:?} {range:?} [{lo}, {hi}]: {v} → {back}");
                }
            }
        }
    }
    // One step over two codes: S would be twice f32::MAX.
    assert!(QParams::from_range(-m, m, Scheme::Symmetric, QRange::new(0, 1).unwrap()).is_err());
}

#[test]
fn code_ranges_and_parameters_are_validated_where_they_are_built() {
    assert!(QRange::new(1, 1).is_err() && QRange::new(2, 1).is_err());
    let wide = QRange::new(i32::MIN, i32::MAX).unwrap();
    // The middle code and q − Z are computed without overflowing i32.
    let p = QParams::from_range(-1.0, 1.0, Scheme::Symmetric, wide).unwrap();
    assert_eq!(p.zero_point(), 0);
    assert!(p.dequantize(i32::MIN).is_finite() && p.dequantize(i32::MAX).is_finite());
    let far = QParams::new(1.0, i32::MIN).unwrap();
    assert_eq!(far.dequantize(i32::MAX), u32::MAX as f32);
    for bad in [0.0f32, -1.0, 1e-40, f32::NAN, f32::INFINITY] {
        assert!(QParams::new(bad, 0).is_err(), "{bad}");
    }
}
