//! Int4 weights: the kernels exactly equal to the plain reference at every level (odd widths,
//! extreme codes, zero and NaN rows), `Int4Linear` against the float formula on its dequantized
//! operands, its bytes, and int4 models through the seam (tensor model and KV-cached decoder).

use std::sync::Arc;

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tt_kvcache::{CachedGpt, OverflowPolicy};
use tt_quant::int4::{self, f16, kernels, Acts, Int4Linear, PackedI4, GROUPS};
use tt_quant::{quantize_int4, IntLevel};
use tt_tensor::nn::{Linear, Relu, Sequential};
use tt_tensor::projection::{check_projection, project, Projection, Workspace};
use tt_tensor::{no_grad, randn_array, Module, Tensor};
use tt_transformer::generate::{FullRecompute, NextTokenSource};

use super::models::tiny_gpt;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Activation rows quantized as `Int4Linear` does: `(codes, scales, sums, finite)`.
fn quantize_rows(x: &[f32], rows: usize, in_f: usize, group: usize) -> (Vec<i8>, Vec<f32>, Vec<i32>, Vec<bool>) {
    let groups = in_f.div_ceil(group);
    let (mut c, mut s, mut n) = (vec![0i8; rows * groups * group], vec![0.0; rows * groups], vec![0; rows * groups]);
    let mut finite = Vec::new();
    for r in 0..rows {
        finite.push(kernels::quantize_row(
            &x[r * in_f..(r + 1) * in_f],
            group,
            &mut c[r * groups * group..(r + 1) * groups * group],
            &mut s[r * groups..(r + 1) * groups],
            &mut n[r * groups..(r + 1) * groups],
        ));
    }
    (c, s, n, finite)
}

/// Codes with both extremes present, random f16 scales over several binades.
fn random_weight(rng: &mut ChaCha8Rng, out_f: usize, in_f: usize, group: usize) -> (Vec<i8>, Vec<f16>) {
    let mut q: Vec<i8> = (0..out_f * in_f).map(|_| rng.random_range(-8..=7)).collect();
    if q.len() >= 2 {
        q[0] = -8;
        let n = q.len();
        q[n - 1] = 7;
    }
    let s = (0..out_f * in_f.div_ceil(group)).map(|_| f16::from_f32(rng.random_range(1e-3f32..4.0))).collect();
    (q, s)
}

/// Every level of the packed kernel equals the reference bit for bit, over widths that are not
/// multiples of the group (a ragged last group), outputs not multiples of the 16-lane panel, each
/// group size, 1–5 rows (every VNNI and AVX2 tile shape), rows with all-zero groups.
#[test]
fn int4_kernels_equal_the_reference_bit_for_bit_at_every_level() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let levels = IntLevel::available();
    for &group in &GROUPS {
        for &(out_f, in_f) in &[(1, 1), (16, 32), (17, 33), (5, 31), (33, 100), (64, 257), (48, 128), (3, 0)] {
            for rows in 1..=5 {
                let (q, s) = random_weight(&mut rng, out_f, in_f, group);
                let p = PackedI4::new(&q, &s, out_f, in_f, group).unwrap();
                let mut x: Vec<f32> = (0..rows * in_f).map(|_| rng.random_range(-3.0f32..3.0)).collect();
                // Row 0's first group is all zeros (scale 0, codes 0).
                x[..in_f.min(group)].fill(0.0);
                let (c, sa, sums, _) = quantize_rows(&x, rows, in_f, group);
                let want = kernels::matmul_reference(&c, &sa, &q, &s, rows, in_f, out_f, group).unwrap();
                for &level in &levels {
                    let mut y = vec![f32::NAN; rows * out_f];
                    p.matmul(level, Acts { codes: &c, scales: &sa, sums: &sums }, rows, &mut y).unwrap();
                    assert_eq!(bits(&y), bits(&want), "{level}: g{group} {rows}×{in_f} → {out_f}");
                }
            }
        }
    }
}

/// The largest products at both ends: codes −8 and 7 against activation codes ±127 over a whole
/// group — the sums the kernels must hold without saturating (`vpmaddubsw`'s i16 pairs, the
/// i16 block sums of the AVX2 path).
#[test]
fn extreme_codes_and_activations_do_not_saturate() {
    for &group in &GROUPS {
        let (out_f, in_f) = (32, 2 * group + 7);
        for code in [-8i8, 7] {
            let q = vec![code; out_f * in_f];
            let s = vec![f16::ONE; out_f * in_f.div_ceil(group)];
            let p = PackedI4::new(&q, &s, out_f, in_f, group).unwrap();
            for sign in [-1.0f32, 1.0] {
                let x = vec![sign; in_f];
                let (c, sa, sums, _) = quantize_rows(&x, 1, in_f, group);
                assert!(c[..in_f].iter().all(|&a| a as f32 == 127.0 * sign));
                let want = kernels::matmul_reference(&c, &sa, &q, &s, 1, in_f, out_f, group).unwrap();
                // Exactly Σ code·sign: each group's 127·code·len times 1/127 (S_a), summed in f32.
                assert!((want[0] - code as f32 * sign * in_f as f32).abs() <= 1e-3 * in_f as f32, "{want:?}");
                for level in IntLevel::available() {
                    let mut y = vec![0.0; out_f];
                    p.matmul(level, Acts { codes: &c, scales: &sa, sums: &sums }, 1, &mut y).unwrap();
                    assert_eq!(bits(&y), bits(&want), "{level}: code {code}, sign {sign}, g{group}");
                }
            }
        }
    }
}

/// Packing keeps every code and scale where the documented layouts say: the row-major nibbles
/// (ggml's order: input i low, i + 16 high) unpack to the same matrix.
#[test]
fn the_nibble_layout_round_trips_and_follows_the_documented_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (out_f, in_f, group) = (19, 70, 32);
    let (q, s) = random_weight(&mut rng, out_f, in_f, group);
    let p = PackedI4::new(&q, &s, out_f, in_f, group).unwrap();
    for o in 0..out_f {
        for i in 0..in_f {
            assert_eq!(p.code(o, i), q[o * in_f + i], "({o}, {i})");
        }
    }
    assert_eq!(p.row_scales(), s);
    let nib = p.nibbles();
    assert_eq!(nib.len(), out_f * 3 * 16);
    // Row 2, block 1, byte 5: inputs 37 (low) and 53 (high), offset by 8.
    assert_eq!(nib[2 * 48 + 16 + 5], ((q[2 * in_f + 37] + 8) as u8) | ((q[2 * in_f + 53] + 8) as u8) << 4);
    // Past the 70 inputs: code 0 (nibble 8) in both halves.
    assert_eq!(nib[2 * 48 + 32 + 15], 0x88);
    let back = PackedI4::from_nibbles(&nib, &s, out_f, in_f, group).unwrap();
    assert_eq!(back.nibbles(), nib);
    for o in 0..out_f {
        for i in 0..in_f {
            assert_eq!(back.code(o, i), q[o * in_f + i]);
        }
    }
    let mut bad = nib.clone();
    bad[48 - 1] = 0x18; // row 0's last byte: input 95 (padding) has code −7
    let e = PackedI4::from_nibbles(&bad, &s, out_f, in_f, group).unwrap_err().to_string();
    assert!(e.contains("padding nibble"), "{e}");
}

#[test]
fn bad_codes_scales_groups_and_sizes_are_errors() {
    let s = vec![f16::ONE; 2];
    assert!(PackedI4::new(&[8, 0, 0, 0], &s, 2, 2, 32).unwrap_err().to_string().contains("outside [−8, 7]"));
    assert!(PackedI4::new(&[0; 4], &s, 2, 2, 48).unwrap_err().to_string().contains("group size 48"));
    assert!(PackedI4::new(&[0; 3], &s, 2, 2, 32).unwrap_err().to_string().contains("3 codes"));
    for bad in [f16::NAN, f16::INFINITY, f16::ZERO, f16::NEG_ZERO, f16::from_f32(-1.0)] {
        let e = PackedI4::new(&[0; 4], &[f16::ONE, bad], 2, 2, 32).unwrap_err().to_string();
        assert!(e.contains("not finite and positive"), "{bad}: {e}");
    }
    let w = Array2::from_shape_vec((1, 3), vec![1.0, f32::NAN, 0.0]).unwrap();
    assert!(Int4Linear::new(&w, 32).unwrap_err().to_string().contains("weight (0, 1) is NaN"));
    let w = Array2::from_shape_vec((1, 2), vec![1.0, 1e6]).unwrap();
    assert!(Int4Linear::new(&w, 32).unwrap_err().to_string().contains("65504"));
    let p = PackedI4::new(&[0; 4], &s, 2, 2, 32).unwrap();
    let mut y = [0.0; 2];
    let short = Acts { codes: &[0; 31], scales: &[0.0], sums: &[0] };
    assert!(p.matmul(IntLevel::Scalar, short, 1, &mut y).is_err());
    assert!(quantize_int4(&mut Sequential::new(), 16).unwrap_err().to_string().contains("group size 16"));
}

/// The quantizer: a group's negative extreme maps to −8 exactly, a positive one to 7; every
/// weight is within half a step of its code; an all-zero group has scale 1 and codes 0.
#[test]
fn quantizing_uses_the_signed_extreme_and_stays_within_half_a_step() {
    let mut w = Array2::from_shape_fn((4, 45), |(o, i)| ((o * 45 + i) as f32 * 0.37).sin());
    w[[0, 3]] = -2.0; // row 0, group 0: negative extreme
    w[[1, 40]] = 1.5; // row 1, group 1 (ragged, 13 inputs): positive extreme
    w.row_mut(2).fill(0.0);
    let q = Int4Linear::new(&w, 32).unwrap();
    let p = q.packed();
    assert_eq!((p.code(0, 3), p.scale(0, 0).to_f32()), (-8, 0.25));
    assert_eq!(p.code(1, 40), 7);
    assert_eq!(p.scale(1, 1), f16::from_f32(1.5 / 7.0));
    assert_eq!((p.code(2, 7), p.scale(2, 1)), (0, f16::ONE));
    let d = q.to_dense();
    for ((o, i), &v) in w.indexed_iter() {
        let step = p.scale(o, i / 32).to_f32();
        assert!((d[[o, i]] - v).abs() <= step / 2.0 * (1.0 + 1e-6), "({o}, {i}): {v} → {}", d[[o, i]]);
    }
}

/// A weight of f32 values exactly representable in the format, for checks against the float
/// formula.
fn layer(out_f: usize, in_f: usize, group: usize, seed: u64) -> Int4Linear {
    let w = randn_array(&[out_f, in_f], 0.0, 0.1, &mut ChaCha8Rng::seed_from_u64(seed));
    Int4Linear::new(&w.into_dimensionality().unwrap(), group).unwrap()
}

/// Outputs against the float formula on the dequantized operands, `Σ_g Σ_i (S_a·a)(S_w·q) + b`
/// in f64. The kernel's integer sums are exact; what differs is f32 rounding: each group's term
/// `isum·(S_w·S_a)` is rounded twice (≤ 2ε relative) and the running sum over `G` groups once per
/// add (≤ ε·Σ|terms| each), and the bias add once — so `|y − exact| ≤ (G + 3)·ε·(Σ|terms| + |b|)`
/// with ε = 2⁻²⁴. Also: bit-identical outputs at every level, NaN rows all NaN, zero rows the bias.
#[test]
fn int4_linear_matches_the_float_formula_and_is_identical_at_every_level() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for &group in &GROUPS {
        for &(out_f, in_f, rows) in &[(24, 100, 3), (17, 257, 5), (64, 64, 1)] {
            let l = layer(out_f, in_f, group, 3);
            let x: Vec<f32> = (0..rows * in_f).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let bias: Vec<f32> = (0..out_f).map(|o| 0.1 * o as f32 - 0.5).collect();
            let (c, sa, _, _) = quantize_rows(&x, rows, in_f, group);
            let (groups, w) = (in_f.div_ceil(group), l.to_dense());
            let mut outs = Vec::new();
            for level in IntLevel::available() {
                let l = l.clone().with_level(level);
                let mut y = vec![0.0; rows * out_f];
                let mut ws = Workspace::default();
                ws.ensure(l.workspace_len(rows));
                project(&l, &x, rows, Some(&bias), &mut y, ws.bytes()).unwrap();
                outs.push((level, y));
            }
            let y = &outs[0].1;
            for (level, other) in &outs {
                assert_eq!(bits(other), bits(y), "{level}: g{group} {rows}×{in_f} → {out_f}");
            }
            let eps = f32::EPSILON as f64 / 2.0;
            for r in 0..rows {
                for o in 0..out_f {
                    let (mut exact, mut mag) = (bias[o] as f64, bias[o].abs() as f64);
                    for g in 0..groups {
                        let t: f64 = (g * group..in_f.min((g + 1) * group))
                            .map(|i| (sa[r * groups + g] * c[r * groups * group + i] as f32) as f64 * w[[o, i]] as f64)
                            .sum();
                        exact += t;
                        mag += t.abs();
                    }
                    let tol = (groups as f64 + 3.0) * eps * mag;
                    let d = (y[r * out_f + o] as f64 - exact).abs();
                    assert!(d <= tol, "g{group} ({r}, {o}): {} vs {exact}: {d} > {tol}", y[r * out_f + o]);
                }
            }
        }
    }
    let l = layer(20, 70, 32, 5);
    let mut x = vec![0.5f32; 3 * 70];
    x[70..140].fill(0.0);
    x[140 + 69] = f32::NAN;
    x[3] = f32::INFINITY;
    let bias: Vec<f32> = (0..20).map(|o| o as f32).collect();
    let mut y = vec![0.0; 60];
    let mut ws = Workspace::default();
    ws.ensure(l.workspace_len(3));
    project(&l, &x, 3, Some(&bias), &mut y, ws.bytes()).unwrap();
    assert!(y[..20].iter().all(|v| v.is_nan()), "an infinite input: NaN outputs");
    assert_eq!(bits(&y[20..40]), bits(&bias), "a zero row gives the bias");
    assert!(y[40..].iter().all(|v| v.is_nan()), "a NaN input: NaN outputs");
}

/// tt-tensor's contract check: outputs against `to_dense` with unquantized f32 inputs. The
/// difference is the activations' rounding, at most `S_a/2 = max|x_g|/254` per input: bounded by
/// `Σ_i |W[o, i]|·max|x|/254` (inputs here are N(0, 1); 6 bounds them), plus f32 slack.
#[test]
fn int4_linear_passes_the_projection_contract_with_exact_bytes_and_format() {
    for &(out_f, in_f, group) in &[(32, 64, 32), (17, 45, 32), (40, 200, 64), (16, 128, 128)] {
        let l = layer(out_f, in_f, group, 7);
        let w = l.to_dense();
        let row_l1 = w.rows().into_iter().map(|r| r.iter().map(|v| v.abs()).sum::<f32>()).fold(0.0, f32::max);
        let worst = check_projection(&l, 4, 1).unwrap();
        assert!(worst <= row_l1 * 6.0 / 254.0 + 1e-4, "{out_f}×{in_f} g{group}: {worst}");
        let (groups, panels) = (in_f.div_ceil(group), out_f.div_ceil(16));
        // Packed: panel-padded nibbles + f16 scales; stored: unpadded.
        assert_eq!(l.storage_bytes(), panels * 16 * (groups * group / 2 + 2 * groups));
        assert_eq!(l.weight_bytes(), out_f * (groups * group / 2 + 2 * groups));
        assert_eq!(l.format(), format!("int4/g{group}"));
    }
    // 32×64 in f32 is 8 KiB; in int4/g32, 1 KiB of codes and 128 bytes of scales.
    assert_eq!(layer(32, 64, 32, 1).storage_bytes(), 1024 + 128);
}

/// `quantize_int4` installs int4 in every Linear and Conv2d by name, refuses layers that carry a
/// forward transform (leaving the model as it was), and an int4 MLP and CNN stay near fp32.
#[test]
fn quantize_int4_installs_by_name_and_refuses_transforms() {
    use tt_tensor::data::digits;
    for (name, mut m, x, n) in [
        (
            "mlp",
            digits::mlp(1),
            Tensor::from_array(randn_array(&[16, 64], 0.0, 1.0, &mut ChaCha8Rng::seed_from_u64(0))),
            2,
        ),
        (
            "cnn",
            digits::cnn(3),
            Tensor::from_array(randn_array(&[4, 1, 8, 8], 0.0, 1.0, &mut ChaCha8Rng::seed_from_u64(1))),
            4,
        ),
    ] {
        let fp32 = no_grad(|| m.forward(&x)).unwrap().to_vec();
        let layers = quantize_int4(&mut m, int4::Q4_0_GROUP).unwrap();
        assert_eq!(layers.len(), n, "{name}");
        assert!(layers.iter().all(|l| l.format == "int4/g32" && l.storage_bytes >= l.weight_bytes), "{name}");
        let q = no_grad(|| m.forward(&x)).unwrap().to_vec();
        let scale = fp32.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = fp32.iter().zip(&q).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale;
        // 4-bit weights: a few percent of the output range (int8 stays under 3%).
        assert!(d > 0.0 && d < 0.15, "{name}: int4 vs fp32 relative difference {d}");
    }
    let mut m = Sequential::new().layer(Linear::new(8, 16, true, 0)).layer(Relu).layer(Linear::new(16, 4, true, 1));
    m.layers[2].as_linear_mut().unwrap().set_transform(Some(Arc::new(tt_tensor::testing::DoubledWeight)));
    let e = quantize_int4(&mut m, 32).unwrap_err().to_string();
    assert!(e.contains("layer '2' carries a 'doubled' forward transform"), "{e}");
    assert!(tt_tensor::nn::linears(&m).iter().all(|(_, l)| l.installed_projection().is_none()), "model unchanged");
}

/// The KV-cached decoder runs the model's own int4 projections: its logits equal the tensor
/// model's up to f32 summation order. The two paths compute a layer's inputs in different orders,
/// so an activation code can flip where a value sits on a rounding boundary (one step of
/// `max|x|/127` in one input of one group); 1e-3 covers that, as for int8, and the tokens match.
#[test]
fn an_int4_gpt_decodes_with_the_kv_cache_as_the_tensor_model_at_every_level() {
    for level in tt_accel::dispatch::available() {
        tt_accel::with_level(level, |_| {
            let mut m = tiny_gpt();
            assert_eq!(quantize_int4(&mut m, 32).unwrap().len(), 8);
            let mut eng = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
            let formats = eng.projection_formats();
            assert_eq!(formats.iter().filter(|f| f.1 == "int4/g32").count(), 8, "{formats:?}");
            let mut full = FullRecompute::new(&m);
            let prompt = [1usize, 5, 9, 2];
            let mut a = full.append(&prompt).unwrap().to_vec();
            let mut b = eng.prefill(&prompt, 4).unwrap().to_vec();
            for step in 0..30 {
                let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(d <= 1e-3, "{level} ({}): step {step}: {d}", IntLevel::current());
                let (ia, ib) = (argmax(&a), argmax(&b));
                assert_eq!(ia, ib, "{level}: step {step}: greedy tokens");
                let next = (step * 5 + 3) % 12;
                a = full.append(&[next]).unwrap().to_vec();
                b = eng.decode_step(&[next]).unwrap().to_vec();
            }
        });
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Every level equals the reference bit for bit on shapes from 0 up (rows, inputs, outputs),
    /// codes drawn mostly from the extremes (−8, 7) and inputs with large and tiny groups; a row
    /// count the slices cannot hold is a clean error at every level.
    #[test]
    fn int4_kernels_equal_the_reference_on_any_shape(
        rows in 0usize..10,
        in_f in 0usize..300,
        out_f in 0usize..40,
        g in 0usize..3,
        seed in proptest::prelude::any::<u64>(),
    ) {
        let group = GROUPS[g];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q: Vec<i8> = (0..out_f * in_f).map(|_| match rng.random_range(0..4) { 0 => -8, 1 => 7, _ => rng.random_range(-8..=7) }).collect();
        let s: Vec<f16> = (0..out_f * in_f.div_ceil(group)).map(|_| f16::from_f32(rng.random_range(1e-4f32..60.0))).collect();
        let p = PackedI4::new(&q, &s, out_f, in_f, group).unwrap();
        let x: Vec<f32> = (0..rows * in_f).map(|i| if (i / 7) % 5 == 0 { 1e-30 } else { rng.random_range(-1e3f32..1e3) }).collect();
        let (c, sa, sums, _) = quantize_rows(&x, rows, in_f, group);
        let want = kernels::matmul_reference(&c, &sa, &q, &s, rows, in_f, out_f, group).unwrap();
        for level in IntLevel::available() {
            let mut y = vec![f32::NAN; rows * out_f];
            p.matmul(level, Acts { codes: &c, scales: &sa, sums: &sums }, rows, &mut y).unwrap();
            proptest::prop_assert_eq!(bits(&y), bits(&want), "{}", level);
            let acts = Acts { codes: &c, scales: &sa, sums: &sums };
            proptest::prop_assert!(p.matmul(level, acts, usize::MAX, &mut y).is_err() || out_f == 0 && in_f == 0);
        }
    }
}

/// A row read on its own (an embedding lookup of an int4 token table) is that row of `to_dense`,
/// for every group size, with a ragged last group.
#[test]
fn a_dense_row_is_the_row_of_to_dense() {
    let w = randn_array(&[19, 75], 0.0, 1.0, &mut ChaCha8Rng::seed_from_u64(3)).into_dimensionality().unwrap();
    for g in GROUPS {
        let l = Int4Linear::new(&w, g).unwrap();
        let dense = l.to_dense();
        let mut row = vec![0.0; 75];
        for o in [0, 7, 18] {
            l.dense_row(o, &mut row);
            assert_eq!(row, dense.row(o).to_vec(), "group {g} row {o}");
        }
    }
}
