//! The fixed-point multiplier on known values and against exact rounding; the fully integer layer
//! against the float formula.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tt_quant::requant::{FixedPointMultiplier, IntegerLinear};
use tt_quant::{Granularity, IntLevel, QParams, QRange, QuantizedMatrix, Scheme};

#[test]
fn the_multiplier_on_known_values() {
    let half = FixedPointMultiplier::new(0.5).unwrap();
    assert_eq!((half.m0, half.shift), (1 << 30, 0));
    assert_eq!(half.value(), 0.5);
    // Ties round away from zero.
    assert_eq!([3, -3, 5, -5, 4].map(|x| half.apply(x)), [2, -2, 3, -3, 2]);
    let third = FixedPointMultiplier::new(1.0 / 3.0).unwrap();
    assert!((1 << 30..1i64 << 31).contains(&(third.m0 as i64)));
    assert_eq!(third.apply(300), 100);
    assert_eq!(third.apply(-301), -100);
    let one = FixedPointMultiplier::new(1.0).unwrap();
    assert_eq!((one.apply(7), one.apply(-7), one.apply(i32::MAX)), (7, -7, i32::MAX));
    let big = FixedPointMultiplier::new(1000.0).unwrap();
    assert_eq!(big.apply(i32::MAX / 10), i32::MAX, "saturates");
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-12, 1e12] {
        assert!(FixedPointMultiplier::new(bad).is_err(), "{bad}");
    }
}

/// `apply(x)` is `x·M₀·2⁻³¹⁻ⁿ` rounded half away from zero — checked in f64, which is exact for
/// these products (|x| < 2²², M₀ < 2³¹) — and `M₀·2⁻³¹⁻ⁿ` is within 2⁻³¹ relative of the request.
#[test]
fn the_multiplier_rounds_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..2000 {
        let m = 2f64.powf(rng.random_range(-20.0..4.0));
        let f = FixedPointMultiplier::new(m).unwrap();
        assert!(((f.value() - m) / m).abs() <= 2f64.powi(-31), "{m}");
        let x: i32 = rng.random_range(-(1 << 22)..(1 << 22));
        let exact = x as f64 * f.value();
        let want = (exact.abs() + 0.5).floor().copysign(exact) as i32;
        assert_eq!(f.apply(x), if exact == 0.0 { 0 } else { want }, "x {x}, M {m}");
    }
}

#[test]
fn the_integer_layer_equals_the_float_formula_but_for_rounding_ties() {
    let (rows, in_f, out_f) = (40, 75, 33);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let w = Array2::from_shape_fn((out_f, in_f), |_| rng.random_range(-0.5f32..0.5));
    let bias: Vec<f32> = (0..out_f).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let a: Vec<u8> = (0..rows * in_f).map(|_| rng.random::<u8>()).collect();
    let input = QParams::new(0.02, 100).unwrap();
    for g in [Granularity::PerTensor, Granularity::PerChannel] {
        let q = QuantizedMatrix::quantize(&w, Scheme::Symmetric, g).unwrap();
        // Output range from the float outputs themselves, as calibration would choose it.
        let deq = q.dequantize();
        let mut lo_hi = (f32::INFINITY, f32::NEG_INFINITY);
        for r in 0..rows {
            for o in 0..out_f {
                let v: f32 =
                    bias[o] + (0..in_f).map(|i| input.dequantize(a[r * in_f + i] as i32) * deq[[o, i]]).sum::<f32>();
                lo_hi = (lo_hi.0.min(v), lo_hi.1.max(v));
            }
        }
        let output = QParams::from_range(lo_hi.0, lo_hi.1, Scheme::Affine, QRange::U8).unwrap();
        let layer = IntegerLinear::new(&q, Some(&bias), input, output).unwrap();
        let want = layer.float_reference(&a, rows).unwrap();
        for level in IntLevel::available() {
            let mut got = vec![0u8; rows * out_f];
            layer.clone().with_level(level).forward(&a, rows, &mut got).unwrap();
            let diffs = got.iter().zip(&want).filter(|(x, y)| x != y).count();
            let worst = got.iter().zip(&want).map(|(&x, &y)| (x as i32 - y as i32).abs()).max().unwrap();
            assert!(
                worst <= 1 && diffs * 100 <= got.len(),
                "{level} {g:?}: {diffs} of {} differ (max {worst})",
                got.len()
            );
        }
    }
}

#[test]
fn bad_settings_are_errors() {
    let w = Array2::from_elem((2, 3), 0.5f32);
    let q = QuantizedMatrix::quantize(&w, Scheme::Symmetric, Granularity::PerChannel).unwrap();
    let p = QParams::new(0.1, 0).unwrap();
    assert!(IntegerLinear::new(&q, Some(&[1.0]), p, p).is_err());
    assert!(IntegerLinear::new(&q, None, QParams::new(0.5, 300).unwrap(), p).is_err());
    let a = QuantizedMatrix::quantize(&w, Scheme::Affine, Granularity::PerChannel).unwrap();
    assert!(IntegerLinear::new(&a, None, p, p).is_err());
    let l = IntegerLinear::new(&q, None, p, p).unwrap();
    assert!(l.forward(&[0; 5], 2, &mut [0; 4]).is_err());
    assert!(l.forward(&[0; 6], 2, &mut [0; 3]).is_err());
}

/// The multiplier's fields are public: hand-built extremes give saturated or zero results and
/// finite-or-infinite values, never an overflow panic or a wrapped product.
#[test]
fn hand_built_multipliers_at_the_extremes_saturate() {
    use tt_quant::requant::FixedPointMultiplier;
    for (m0, shift) in
        [(i32::MAX, i32::MIN), (i32::MAX, i32::MAX), (i32::MIN, i32::MIN), (1 << 30, -31), (1 << 30, -100)]
    {
        let m = FixedPointMultiplier { m0, shift };
        let _ = m.value();
        for x in [i32::MIN, -1, 0, 1, i32::MAX] {
            let y = m.apply(x);
            if shift >= 126 - 31 {
                assert_eq!(y, 0, "{m:?}·{x}");
            }
            if shift <= -33 && x != 0 {
                // |x·m0·2^k| ≥ 2^31: saturated with the product's sign.
                let sign = (x as i64 * m0 as i64).signum();
                assert_eq!(y, if sign > 0 { i32::MAX } else { i32::MIN }, "{m:?}·{x}");
            }
        }
    }
}

/// Runs `f` on its own thread and fails the test if it takes more than 20 s.
fn within_20s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The probe's example: the float reference of a 2²⁰-output, one-input layer over 2²⁰ rows
/// aborted asking for 1 TiB — the slices bound the rows and the outputs, not their product. Here
/// 2²² rows against 2¹⁷ outputs ask for 512 GiB: an error, quickly; and no outputs over no inputs
/// is an empty result for any row count, without looping over them.
#[test]
fn float_reference_results_that_do_not_fit_are_errors() {
    within_20s("float_reference", || {
        let p = QParams::new(0.01, 0).unwrap();
        let unit = QParams::new(1.0, 128).unwrap();
        let out_f = 1 << 17;
        let w =
            QuantizedMatrix::from_parts(out_f, 1, vec![1; out_f], vec![p], Scheme::Symmetric, Granularity::PerTensor)
                .unwrap();
        let layer = IntegerLinear::new(&w, None, unit, unit).unwrap();
        let e = layer.float_reference(&vec![0u8; 1 << 22], 1 << 22).unwrap_err().to_string();
        assert!(e.contains("do not fit in memory"), "{e}");
        assert_eq!(layer.float_reference(&[3, 4], 2).unwrap().len(), 2 * out_f);
        let empty =
            QuantizedMatrix::from_parts(0, 0, vec![], vec![p], Scheme::Symmetric, Granularity::PerTensor).unwrap();
        let layer = IntegerLinear::new(&empty, None, unit, unit).unwrap();
        assert_eq!(layer.float_reference(&[], usize::MAX).unwrap(), Vec::<u8>::new());
        layer.forward(&[], usize::MAX, &mut []).unwrap();
    });
}
