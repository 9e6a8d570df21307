//! Per-group int8 (Q8_0-style: symmetric codes, one scale per group of inputs): the group kernel
//! at every level equal to its plain reference bit for bit (group sizes 1 to wider than the
//! row, ragged last groups, odd widths, extreme codes), the layer bit-identical across levels
//! and equal to the float formula to f32 rounding, NaN and zero rows, the layer's bytes, and the
//! weight rebuilt from the packed codes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tt_quant::kernels::group::{matmul_reference, PackedGroups};
use tt_quant::kernels::IntLevel;
use tt_quant::{
    quantize_dynamic, Activations, Granularity, Int8Linear, QParams, QuantizedMatrix, Scheme, WeightConfig,
};
use tt_tensor::projection::Projection;

use super::linear::{float_formula, forward, matrix, rows};

const GROUPS: [usize; 9] = [1, 3, 5, 32, 64, 128, 200, 4096, 33];

fn grouped(g: usize) -> WeightConfig {
    WeightConfig { scheme: Scheme::Symmetric, granularity: Granularity::PerGroup(g) }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A symmetric per-group matrix with random codes in `[−127, 127]` (or all `fill`) and random
/// scales.
fn codes_matrix(out_f: usize, in_f: usize, g: usize, fill: Option<i8>, rng: &mut ChaCha8Rng) -> QuantizedMatrix {
    let codes = (0..out_f * in_f).map(|_| fill.unwrap_or_else(|| rng.random_range(-127..=127))).collect();
    let n = out_f * in_f.div_ceil(g).max(1);
    let params = (0..n).map(|_| QParams::new(rng.random_range(1e-3f32..0.1), 0).unwrap()).collect();
    QuantizedMatrix::from_parts(out_f, in_f, codes, params, Scheme::Symmetric, Granularity::PerGroup(g)).unwrap()
}

/// The kernel at `level` on unpadded rows `a`: each row laid out as the packed weight says.
fn run(level: IntLevel, w: &PackedGroups, a: &[u8], za: &[i32], rows: usize) -> Vec<f32> {
    let p = w.packed();
    let ((out_f, in_f), kb, cols) = (p.shape(), p.row_bytes(), p.acc_cols());
    let mut padded = vec![0u8; rows * kb];
    for r in 0..rows {
        for i in 0..in_f {
            padded[r * kb + p.padded_input(i)] = a[r * in_f + i];
        }
    }
    let mut out = vec![f32::NAN; rows * cols];
    w.matmul(level, &padded, za, rows, &mut out).unwrap();
    (0..rows).flat_map(|r| out[r * cols..r * cols + out_f].to_vec()).collect()
}

#[test]
fn the_group_kernel_equals_its_reference_bit_for_bit_at_every_level() {
    let levels = IntLevel::available();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &g in &GROUPS {
        for &in_f in &[1usize, 3, 31, 64, 67, 128, 129, 300] {
            for &(n, out_f) in &[(1usize, 17usize), (2, 16), (3, 33), (7, 50), (13, 5)] {
                let q = codes_matrix(out_f, in_f, g, None, &mut rng);
                let a: Vec<u8> = (0..n * in_f).map(|_| rng.random()).collect();
                let za: Vec<i32> = (0..n).map(|_| rng.random_range(0..=255)).collect();
                let want = matmul_reference(&a, &za, &q, n).unwrap();
                let w = PackedGroups::new(&q).unwrap();
                for &level in &levels {
                    let got = run(level, &w, &a, &za, n);
                    assert_eq!(bits(&got), bits(&want), "{level}: g {g}, {n}×{in_f}×{out_f}");
                }
            }
        }
    }
}

/// Codes ±127 against activations 255 with zero points 0 and 255: the largest group sums and
/// corrections. Every level equals the reference, and with unit scales the reference is the
/// exact integer (the sums stay below 2²⁴ here, so f32 holds them).
#[test]
fn extreme_codes_are_exact_at_every_level() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (g, in_f) in [(32usize, 256usize), (64, 256), (128, 256), (67, 201)] {
        for code in [127i8, -127] {
            for za in [0i32, 255, 128] {
                let mut q = codes_matrix(17, in_f, g, Some(code), &mut rng);
                let unit = vec![QParams::new(1.0, 0).unwrap(); q.params().len()];
                q = QuantizedMatrix::from_parts(17, in_f, q.codes().to_vec(), unit, Scheme::Symmetric, q.granularity())
                    .unwrap();
                let a = vec![255u8; 2 * in_f];
                let want = matmul_reference(&a, &[za, za], &q, 2).unwrap();
                let exact = ((255 - za) * code as i32 * in_f as i32) as f32;
                assert!(want.iter().all(|&v| v == exact), "g {g} code {code} za {za}: {} vs {exact}", want[0]);
                let w = PackedGroups::new(&q).unwrap();
                for level in IntLevel::available() {
                    assert_eq!(bits(&run(level, &w, &a, &[za, za], 2)), bits(&want), "{level}: g {g} {code} {za}");
                }
            }
        }
    }
}

#[test]
fn per_group_layers_give_the_same_bits_at_every_level() {
    for (i, &g) in [1usize, 32, 64, 128, 5, 1000].iter().enumerate() {
        for &(n, in_f, out_f) in &[(1usize, 67usize, 17usize), (3, 128, 50), (13, 129, 33), (2, 256, 64)] {
            let w = matrix(out_f, in_f, i as u64);
            let x = rows(n, in_f, 100 + i as u64);
            let bias: Vec<f32> = (0..out_f).map(|o| 0.1 * o as f32 - 1.0).collect();
            for act in [Activations::Dynamic, Activations::Static(QParams::new(6.0 / 255.0, 40).unwrap())] {
                let base = Int8Linear::new(&w, grouped(g), act).unwrap();
                let want = forward(&base.clone().with_level(IntLevel::Scalar), &x, n, Some(&bias));
                for level in IntLevel::available() {
                    let got = forward(&base.clone().with_level(level), &x, n, Some(&bias));
                    assert_eq!(bits(&got), bits(&want), "{level} g {g} {act:?} {n}×{in_f}×{out_f}");
                }
            }
        }
    }
}

/// `y = Σ S_a(a − Z_a)·S_w(w) + b` in f64 from the layer's own codes. The integer group sums are
/// exact; what rounds is, per output, the conversion of each group sum (exact below 2²⁴, i.e.
/// for every group of at most 518 inputs), `G` products and `G` additions in f32, then the
/// multiply by `S_a` and the bias add: at most `(2G + 3)·2⁻²⁴` of `Σ_i |â_i·ŵ_i| + |b|` (each
/// rounding is relative to a partial result no larger than that sum).
#[test]
fn per_group_outputs_equal_the_float_formula_to_f32_rounding() {
    let (n, in_f, out_f) = (5usize, 201usize, 40usize);
    let w = matrix(out_f, in_f, 7);
    let x = rows(n, in_f, 8);
    let bias: Vec<f32> = (0..out_f).map(|o| (o as f32).sin()).collect();
    for g in [1usize, 32, 64, 128, 67, 500] {
        let q = Int8Linear::new(&w, grouped(g), Activations::Dynamic).unwrap();
        let y = forward(&q, &x, n, Some(&bias));
        let groups = in_f.div_ceil(g) as f64;
        for (k, (want, mag)) in float_formula(&q, &x, n, &bias).into_iter().enumerate() {
            let got = y[k] as f64;
            let tol = (2.0 * groups + 3.0) * f32::EPSILON as f64 / 2.0 * mag;
            assert!((got - want).abs() <= tol, "g {g} output {k}: {got} vs {want} (tolerance {tol})");
        }
    }
}

#[test]
fn nan_rows_give_nan_and_zero_rows_give_the_bias() {
    let (in_f, out_f) = (67usize, 20usize);
    let mut w = matrix(out_f, in_f, 1);
    w.row_mut(3).fill(0.0);
    let bias: Vec<f32> = (0..out_f).map(|o| o as f32 - 7.5).collect();
    for g in [1usize, 32, 64] {
        let q = Int8Linear::new(&w, grouped(g), Activations::Dynamic).unwrap();
        let mut x = rows(3, in_f, 2);
        x[in_f..2 * in_f].fill(0.0);
        let clean = forward(&q, &x, 3, Some(&bias));
        // A zero input row and a zero weight row contribute exactly nothing.
        assert_eq!(bits(&clean[out_f..2 * out_f]), bits(&bias), "g {g}");
        assert!((0..3).all(|r| clean[r * out_f + 3] == bias[3]), "g {g}");
        for level in IntLevel::available() {
            let mut x = x.clone();
            x[2 * in_f + 40] = f32::NAN;
            let y = forward(&q.clone().with_level(level), &x, 3, Some(&bias));
            assert!(y[2 * out_f..].iter().all(|v| v.is_nan()), "{level} g {g}");
            assert_eq!(bits(&y[..2 * out_f]), bits(&clean[..2 * out_f]), "{level} g {g}");
        }
        // No rows at all: nothing to compute, and no error.
        assert!(forward(&q, &[], 0, Some(&bias)).is_empty());
    }
}

/// The layer holds its weight once: its bytes are the codes, scales and code sums it keeps (here
/// no panel or group padding), and the matrix it rebuilds is the one it was built from.
#[test]
fn a_layer_holds_codes_scales_and_sums_once_and_rebuilds_its_matrix() {
    let (out_f, in_f) = (64usize, 128usize);
    let w = matrix(out_f, in_f, 3);
    let q = Int8Linear::new(&w, grouped(32), Activations::Dynamic).unwrap();
    let codes = out_f * in_f;
    let scales = 4 * out_f * (in_f / 32);
    assert_eq!(q.storage_bytes(), codes + scales + scales, "codes + f32 scales + i32 code sums");
    assert_eq!(q.weight_bytes(), codes + scales, "the checkpoint's bytes: codes + scales");
    assert_eq!(q.weight().storage_bytes(), q.weight_bytes());
    assert_eq!(q.format(), "int8-dyn/group");
    let ch = Int8Linear::new(&w, WeightConfig::PER_CHANNEL, Activations::Dynamic).unwrap();
    assert_eq!(ch.storage_bytes(), codes + 4 * out_f + 4 * out_f, "codes + scales + code sums");
    let affine = WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerChannel };
    let af = Int8Linear::new(&w, affine, Activations::Dynamic).unwrap();
    assert_eq!(af.storage_bytes(), codes + 3 * 4 * out_f, "codes + scales + code sums + zero points");
    // Every format, odd and empty shapes: the rebuilt matrix is the one quantized.
    let mut cfgs = vec![WeightConfig::PER_CHANNEL, WeightConfig::PER_TENSOR, affine];
    cfgs.push(WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerTensor });
    cfgs.extend([1, 5, 32, 1000].map(grouped));
    for cfg in cfgs {
        for (o, i) in [(17usize, 67usize), (0, 5), (3, 0), (16, 128)] {
            let w = matrix(o, i, 4);
            let m = QuantizedMatrix::quantize(&w, cfg.scheme, cfg.granularity).unwrap();
            let q = Int8Linear::from_quantized(m.clone(), Activations::Dynamic).unwrap();
            assert_eq!(q.weight(), m, "{cfg:?} {o}×{i}");
            assert_eq!(q.to_dense(), m.dequantize(), "{cfg:?} {o}×{i}");
            assert_eq!(q.weight_bytes(), m.storage_bytes(), "{cfg:?} {o}×{i}");
        }
    }
}

#[test]
fn affine_groups_and_group_zero_are_clear_errors() {
    let w = matrix(4, 8, 0);
    let affine = WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerGroup(4) };
    let e = Int8Linear::new(&w, affine, Activations::Dynamic).unwrap_err().to_string();
    assert!(e.contains("affine per-group") && e.contains("symmetric"), "{e}");
    assert!(Int8Linear::new(&w, grouped(0), Activations::Dynamic).is_err());
}

/// `quantize_dynamic` with a per-group config installs group layers in an MLP, close to fp32.
#[test]
fn quantize_dynamic_installs_per_group_layers() {
    use rand::SeedableRng;
    use tt_tensor::{no_grad, randn_array, Module, Tensor};
    let mut m = tt_tensor::data::digits::mlp(1);
    let x = Tensor::from_array(randn_array(&[32, 64], 0.0, 1.0, &mut ChaCha8Rng::seed_from_u64(0)));
    let fp32 = no_grad(|| m.forward(&x)).unwrap();
    let layers = quantize_dynamic(&mut m, grouped(32)).unwrap();
    assert_eq!(layers.len(), 2);
    assert!(layers.iter().all(|l| l.format == "int8-dyn/group"), "{layers:?}");
    let int8 = no_grad(|| m.forward(&x)).unwrap();
    let (a, b) = (fp32.data(), int8.data());
    let scale = a.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let d = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / scale;
    assert!(d > 0.0 && d < 0.03, "per-group int8 vs fp32 relative difference {d}");
}

/// The group kernel's sizes are checked before any pointer is formed: 0 rows do nothing, a row
/// count whose products wrap (`usize::MAX`) and buffers one short are errors, at every level.
#[test]
fn group_kernel_sizes_are_checked_at_0_1_and_usize_max() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let q = codes_matrix(20, 70, 32, None, &mut rng);
    let w = PackedGroups::new(&q).unwrap();
    let (kb, cols) = (w.packed().row_bytes(), w.packed().acc_cols());
    for level in IntLevel::available() {
        assert!(w.matmul(level, &[], &[], 0, &mut []).is_ok(), "{level}: 0 rows");
        let (a, za, mut out) = (vec![0u8; kb], vec![0i32; 1], vec![0.0f32; cols]);
        assert!(w.matmul(level, &a, &za, 1, &mut out).is_ok(), "{level}: 1 row");
        assert!(w.matmul(level, &a[..kb - 1], &za, 1, &mut out).is_err(), "{level}: activations one short");
        assert!(w.matmul(level, &a, &[], 1, &mut out).is_err(), "{level}: no zero point");
        assert!(w.matmul(level, &a, &za, 1, &mut out[..cols - 1]).is_err(), "{level}: output one short");
        assert!(w.matmul(level, &a, &za, usize::MAX, &mut out).is_err(), "{level}: usize::MAX rows");
    }
}
