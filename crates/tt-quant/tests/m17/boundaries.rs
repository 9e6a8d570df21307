//! Boundary cases found in review: each one was undefined behaviour, a half-changed model, or a
//! mismatch between two paths that claim to agree.

use ndarray::Array2;
use tt_quant::observer::{Histogram, MinMax, Observer};
use tt_quant::qat::fake_quantize_u8;
use tt_quant::{
    calibrate, Activations, Granularity, Int8Linear, QParams, QRange, QuantizedMatrix, Scheme, WeightConfig,
};
use tt_tensor::nn::{Linear, Relu, Sequential};
use tt_tensor::projection::{project, Projection, Workspace};
use tt_tensor::Tensor;

fn run(p: &dyn Projection, x: &[f32], rows: usize, bias: Option<&[f32]>) -> tt_tensor::Result<Vec<f32>> {
    let mut y = vec![0.0; rows * p.shape().0];
    let mut ws = Workspace::default();
    ws.ensure(p.workspace_len(rows));
    project(p, x, rows, bias, &mut y, ws.bytes())?;
    Ok(y)
}

#[test]
fn a_bias_of_the_wrong_length_is_an_error() {
    let q = Int8Linear::new(&Array2::from_elem((32, 8), 0.5), WeightConfig::PER_CHANNEL, Activations::Dynamic).unwrap();
    assert!(run(&q, &[1.0; 8], 1, Some(&[1.0])).is_err());
    assert_eq!(run(&q, &[1.0; 8], 1, Some(&[1.0; 32])).unwrap().len(), 32);
}

/// A matrix with no inputs quantizes to one parameter per row and computes the bias; matrices
/// built by hand are validated before any kernel reads them.
#[test]
fn quantized_matrices_are_validated_before_the_kernels_read_them() {
    let empty = Int8Linear::new(&Array2::zeros((32, 0)), WeightConfig::PER_CHANNEL, Activations::Dynamic).unwrap();
    let bias: Vec<f32> = (0..32).map(|o| o as f32).collect();
    assert_eq!(run(&empty, &[], 2, Some(&bias)).unwrap(), [bias.clone(), bias].concat());
    let good =
        QuantizedMatrix::quantize(&Array2::from_elem((32, 4), 1.0), Scheme::Affine, Granularity::PerChannel).unwrap();
    let parts = |params: Vec<QParams>, codes: Vec<i8>| {
        QuantizedMatrix::from_parts(32, 4, codes, params, Scheme::Affine, Granularity::PerChannel)
    };
    let (params, codes) = (good.params().to_vec(), good.codes().to_vec());
    assert_eq!(parts(params.clone(), codes.clone()).unwrap(), good);
    let mut wild_zp = params.clone();
    wild_zp[3] = QParams::new(wild_zp[3].scale(), 1 << 20).unwrap();
    let mut short = codes.clone();
    short.pop();
    for (what, m) in [
        ("one scale for 32 rows", parts(params[..1].to_vec(), codes.clone())),
        ("zero point 2^20", parts(wild_zp, codes.clone())),
        ("a code short", parts(params.clone(), short)),
    ] {
        assert!(m.is_err(), "{what}");
    }
    assert!(QParams::new(1e-40, 0).is_err(), "subnormal scale");
}

/// The probe's example: a hand-built 2³² × 2³² matrix with no codes (the product wraps to 0)
/// is refused, and so is one whose rows nothing stored backs (2³² × 0, per-tensor), before the
/// per-row allocation an int8 layer would make.
#[test]
fn hand_built_matrices_whose_sizes_wrap_are_refused() {
    let p = QParams::new(1.0, 0).unwrap();
    let big = 1usize << 32;
    for g in [Granularity::PerTensor, Granularity::PerChannel, Granularity::PerGroup(1)] {
        let wrapped = QuantizedMatrix::from_parts(big, big, vec![], vec![p], Scheme::Symmetric, g);
        assert!(wrapped.unwrap_err().to_string().contains("codes for a"), "{g:?}");
    }
    let unbacked = QuantizedMatrix::from_parts(big, 0, vec![], vec![p], Scheme::Symmetric, Granularity::PerTensor);
    let e = unbacked.unwrap_err().to_string();
    assert!(e.contains("4294967296×0 matrix"), "{e}");
    // The same with the parameter per row it would need: parameters that really exist.
    let m = QuantizedMatrix::from_parts(3, 0, vec![], vec![p; 3], Scheme::Symmetric, Granularity::PerChannel);
    assert!(Int8Linear::from_quantized(m.unwrap(), Activations::Dynamic).is_ok());
    // A per-group parameter count that overflows is an error, not a wrapped count.
    let e = QuantizedMatrix::from_parts(usize::MAX, 2, vec![], vec![p], Scheme::Symmetric, Granularity::PerGroup(1));
    assert!(e.is_err());
}

/// A calibration that cannot start (one layer's projection is stale) leaves no layer wrapped.
#[test]
fn a_failed_calibration_changes_no_layer() {
    let mut m = Sequential::new().layer(Linear::new(4, 8, true, 0)).layer(Relu).layer(Linear::new(8, 2, true, 1));
    tt_quant::quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap();
    // Make layer "2"'s installed projection stale.
    let w = m.layers[2].as_linear().unwrap().weight.clone();
    let new = w.data().mapv(|v| v + 1.0);
    w.set_data(new).unwrap();
    let r = calibrate(&mut m, &|| Box::new(MinMax::default()) as Box<dyn Observer>, &mut |_| Ok(()));
    assert!(r.is_err());
    let formats: Vec<_> =
        tt_tensor::nn::linears(&m).iter().map(|(_, l)| l.installed_projection().map(|p| p.format())).collect();
    assert_eq!(formats, [Some("int8-dyn/ch"), Some("int8-dyn/ch")], "no layer left observing");
}

/// QAT's input fake quantization rounds exactly as the int8 layer's rows do, including values at
/// half steps (where an f64 division and an f32 reciprocal can disagree).
#[test]
fn qat_input_rounding_equals_the_int8_rows() {
    let p = QParams::new(0.1, 100).unwrap();
    let xs: Vec<f32> =
        (-300..300).map(|k| (k as f32 + 0.5) * 0.1).chain((0..500).map(|i| (i as f32 * 0.731).sin() * 9.0)).collect();
    let faked = fake_quantize_u8(&Tensor::from_vec(xs.clone(), &[xs.len()]).unwrap(), p).unwrap().to_vec();
    let layer =
        Int8Linear::new(&Array2::from_elem((1, xs.len()), 1.0), WeightConfig::PER_TENSOR, Activations::Static(p))
            .unwrap();
    let (codes, got) = layer.quantize_inputs(&xs, 1).unwrap().remove(0);
    assert_eq!(got, Some(p));
    for (i, (&c, &f)) in codes.iter().zip(&faked).enumerate() {
        assert_eq!(p.dequantize(c as i32), f, "value {} at {i}", xs[i]);
    }
}

/// The L2 histogram keeps a lone outlier when clipping it costs more than the rounding noise it
/// saves (10,000 values), and its range always contains 0 (as the quantizer will make it).
#[test]
fn the_histogram_keeps_an_expensive_outlier_and_contains_zero() {
    let mut xs: Vec<f32> = (0..10_000).map(|i| -1.0 + 2.0 * (i as f32 + 0.5) / 10_000.0).collect();
    xs.push(100.0);
    let mut h = Histogram::new(2048, 255).unwrap();
    h.observe(&xs);
    let (lo, hi) = h.range().unwrap();
    assert!(hi > 90.0 && lo < -0.9, "[{lo}, {hi}]");
    let mut pos = Histogram::new(512, 255).unwrap();
    pos.observe(&(0..1000).map(|i| 5.0 + i as f32 * 0.01).collect::<Vec<_>>());
    let (plo, _) = pos.range().unwrap();
    assert!(plo <= 0.01, "a positive-only range starts at 0: {plo}");
    assert!(Histogram::new(1 << 20, 255).is_err(), "bins are capped");
    let _ = QRange::U8;
}

#[test]
fn tiny_kv_rows_keep_their_bound() {
    let x = [1e-39f32, -3e-40, 5e-40, 0.0];
    let mut c = [0i8; 4];
    let d = tt_kvcache::cache::quantize_row_q8(&x, &mut c);
    assert!(d > 0.0);
    for (&v, &q) in x.iter().zip(&c) {
        assert!((v - d * q as f32).abs() <= d / 2.0 + f32::from_bits(1), "{v} → {q}");
    }
}

/// Runs `f` on its own thread and fails the test if it takes more than 20 s (a hang, or a loop
/// over a count nothing bounds).
fn within_20s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The probe's examples: huge matrices with no columns (no data at all) aborted on allocating a
/// parameter per row or group — `2⁴⁰ × 0` per-channel ran out of memory, per-group asked for
/// 16 GiB, and an int8 layer or `quantize_dynamic` over such a weight aborted. Rows with no
/// columns are now bounded by `MAX_UNBACKED` before anything is allocated, naming the shape; up
/// to that bound they still quantize, one parameter per row.
#[test]
fn huge_matrices_with_no_columns_are_refused_before_allocating() {
    use tt_quant::kernels::MAX_UNBACKED;
    within_20s("quantizing empty rows", || {
        let huge = Array2::<f32>::zeros((1 << 40, 0));
        for g in [Granularity::PerTensor, Granularity::PerChannel, Granularity::PerGroup(4), Granularity::PerGroup(1)] {
            for scheme in [Scheme::Symmetric, Scheme::Affine] {
                let e = QuantizedMatrix::quantize(&huge, scheme, g).unwrap_err().to_string();
                assert!(e.contains("1099511627776×0 matrix"), "{g:?} {scheme:?}: {e}");
            }
        }
        let e = Int8Linear::new(&Array2::zeros((1 << 36, 0)), WeightConfig::PER_CHANNEL, Activations::Dynamic);
        assert!(e.unwrap_err().to_string().contains("68719476736×0 matrix"));
        let weight = Tensor::param(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1 << 40, 0])));
        let mut m = Sequential::new().layer(Linear::from_tensors(weight, None).unwrap());
        let e = tt_quant::quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap_err().to_string();
        assert!(e.contains("1099511627776×0 matrix"), "{e}");
        assert!(m.layers[0].as_linear().unwrap().installed_projection().is_none(), "the model is unchanged");
        // At the bound: one parameter per row, and an int8 layer that computes the bias.
        let edge = Array2::<f32>::zeros((MAX_UNBACKED, 0));
        let q = QuantizedMatrix::quantize(&edge, Scheme::Symmetric, Granularity::PerChannel).unwrap();
        assert_eq!((q.params().len(), q.dequantize().dim()), (MAX_UNBACKED, (MAX_UNBACKED, 0)));
        assert!(QuantizedMatrix::quantize(
            &Array2::zeros((MAX_UNBACKED + 1, 0)),
            Scheme::Affine,
            Granularity::PerTensor
        )
        .is_err());
        let layer = Int8Linear::new(&edge, WeightConfig::PER_TENSOR, Activations::Dynamic).unwrap();
        assert_eq!(layer.weight().params().len(), 1);
        // Rows of no inputs are bounded too (no slice bounds them).
        assert!(layer.quantize_inputs(&[], usize::MAX).is_err());
        assert!(layer.quantize_inputs(&[], MAX_UNBACKED + 1).is_err());
        assert_eq!(layer.quantize_inputs(&[], 3).unwrap().len(), 3);
    });
}

/// Dequantizing walks each parameter's run of codes by slices: equal, bit for bit, to the
/// affine map of each element's own parameters, at every granularity, over shapes with short
/// last groups and no rows or columns.
#[test]
fn dequantize_is_the_affine_map_of_each_elements_parameters() {
    for (rows, cols) in [(0usize, 0usize), (0, 3), (3, 0), (1, 1), (3, 7), (5, 16)] {
        let w = Array2::from_shape_fn((rows, cols), |(r, c)| ((r * 31 + c * 17) % 23) as f32 - 11.0 + r as f32 * 9.0);
        for g in [Granularity::PerTensor, Granularity::PerChannel, Granularity::PerGroup(3), Granularity::PerGroup(99)]
        {
            for scheme in [Scheme::Symmetric, Scheme::Affine] {
                let q = QuantizedMatrix::quantize(&w, scheme, g).unwrap();
                let d = q.dequantize();
                assert_eq!(d.dim(), (rows, cols));
                for r in 0..rows {
                    for c in 0..cols {
                        let want = q.params_at(r, c).dequantize(q.codes()[r * cols + c] as i32);
                        assert_eq!(d[[r, c]].to_bits(), want.to_bits(), "{rows}×{cols} {g:?} {scheme:?} ({r}, {c})");
                    }
                }
            }
        }
    }
}
