//! Fused row kernels against the unfused chains they replace, at every dispatch level this
//! machine has, on odd widths and the model's widths (128, 512).
//!
//! Tolerances (each also stated where it is used):
//! - vectorized exp vs `exp_fast`: same range reduction, only the polynomial's FMA rounding
//!   differs → ≤ 3e-7 relative (a few ulp; one f32 ulp is 6e-8–1.2e-7 relative).
//! - layer norm: one-pass f64 statistics vs the reference's two-pass f32 sums, whose sequential
//!   f32 sums drift like √n ulp (measured 4.8e-7 at n ≤ 512, 2e-6 at 4096) → outputs (O(1))
//!   within 2e-6·(1 + |ref|) for the tested n ≤ 512, and within 2e-6 of an f64 ground truth. A
//!   constant row must give β to 1e-6 (the reference misses it by its own mean error × 316).
//! - softmax: exp within a few ulp of `exp_fast`, sums in a different order and rescaled → each
//!   probability within 1.5e-6 relative of an f64 softmax, and within (1e-6 + 5e-8·√n)
//!   relative of `softmax_row`, whose sequential f32 sum drifts like √n ulp (plus 1e-12
//!   absolute for values that underflow); the row sums to 1 within 1e-5.
//! - bias + GELU: the same `exp` a few ulp off, whose argument can be up to ~30 in size, so its
//!   rounding error is magnified by |arg| → 1e-6 relative + 1e-7 absolute.
//! - decode attention: scores and the weighted sum of V accumulate in another order, with the
//!   online rescaling. Outputs are convex combinations of V rows in [−1, 1], so errors are
//!   absolute: a few ulp per term of a sum with weights adding to 1 → within 2e-6 of
//!   `attention_head` and of an f64 reference (measured ≤ 4.2e-7 up to 640 slots).

use super::common::{max_diff, random, ODD_SIZES};
use tt_accel::dispatch::{available, level, with_level, Level};
use tt_accel::fused::{self, unfused};
use tt_tensor::kernels::{attention_head_reference, exp_fast, Rows};
use tt_tensor::TensorError;

/// `ODD_SIZES` and the model's widths.
fn widths() -> impl Iterator<Item = usize> {
    ODD_SIZES.iter().copied().chain([128, 512])
}

/// Runs `f` at every level this machine has (forced with `with_level`), checking the forced
/// level is the one in use.
fn each_level(mut f: impl FnMut(Level)) {
    for l in available() {
        with_level(l, |used| {
            assert_eq!(used, l);
            f(used)
        });
    }
}

fn scaled(v: Vec<f32>, a: f32, b: f32) -> Vec<f32> {
    v.into_iter().map(|x| a * x + b).collect()
}

/// Largest `|a − b| / (abs + rel·|b|)`: ≤ 1 means within tolerance.
fn worst_ratio(a: &[f32], b: &[f32], rel: f32, abs: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (abs + rel * y.abs())).fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------------------------
// exp
// ---------------------------------------------------------------------------------------------

#[test]
fn vectorized_exp_matches_exp_fast() {
    let mut xs: Vec<f32> = (0..20_000).map(|i| -100.0 + i as f32 * 0.01).collect();
    xs.extend([0.0, -0.0, 88.72, 88.73, -87.33, -87.34, 1e-30, -1e-30, f32::INFINITY, f32::NEG_INFINITY]);
    each_level(|l| {
        let mut got = xs.clone();
        fused::exp_at(l, &mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = exp_fast(x);
            if want == 0.0 || want.is_infinite() {
                assert_eq!(g, want, "{l}: exp({x})");
            } else {
                // Same reduction; only the FMA rounding of the polynomial differs: a few ulp.
                assert!((g - want).abs() <= 3e-7 * want, "{l}: exp({x}) = {g}, exp_fast {want}");
            }
        }
        let mut nan = [f32::NAN; 3];
        fused::exp_at(l, &mut nan);
        assert!(nan.iter().all(|v| v.is_nan()), "{l}: NaN propagates");
    });
}

// ---------------------------------------------------------------------------------------------
// layer norm
// ---------------------------------------------------------------------------------------------

/// Two-pass layer norm in f64: the ground truth.
fn layer_norm_f64(x: &[f32], g: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (var + eps as f64).sqrt();
    (0..x.len()).map(|i| ((x[i] as f64 - mean) * rstd * g[i] as f64 + b[i] as f64) as f32).collect()
}

#[test]
fn layer_norm_matches_unfused_at_every_level() {
    let eps = 1e-5;
    for (si, w) in widths().enumerate() {
        let seed = 100 + si as u64;
        // O(1) inputs with a small offset, γ around 1, β around 0, as in the model.
        let x = scaled(random(w, seed), 1.5, 0.2);
        let g = scaled(random(w, seed + 1), 0.5, 1.0);
        let b = scaled(random(w, seed + 2), 0.1, 0.0);
        let mut want = vec![0.0; w];
        let (m_ref, r_ref) = unfused::layer_norm(&x, &g, &b, eps, &mut want).unwrap();
        let truth = layer_norm_f64(&x, &g, &b, eps);
        each_level(|l| {
            let mut got = vec![f32::NAN; w];
            let (m, r) = fused::layer_norm(&x, &g, &b, eps, &mut got).unwrap();
            // Two-pass f32 reference vs one-pass f64 statistics: 2e-6 (see the file docs).
            assert!(worst_ratio(&got, &want, 2e-6, 2e-6) <= 1.0, "{l} w={w}: {}", max_diff(&got, &want));
            assert!((m - m_ref).abs() <= 1e-5 * (1.0 + m_ref.abs()), "{l} w={w}: mean {m} vs {m_ref}");
            assert!((r - r_ref).abs() <= 1e-5 * r_ref, "{l} w={w}: rstd {r} vs {r_ref}");
            // And against the f64 truth, the fused kernel is tighter still.
            assert!(worst_ratio(&got, &truth, 2e-6, 2e-6) <= 1.0, "{l} w={w}: {}", max_diff(&got, &truth));
        });
    }
}

#[test]
fn layer_norm_one_pass_statistics_survive_a_large_offset() {
    // Σx² − n·mean² cancels badly when |mean| ≫ std; accumulating in f64 keeps it exact enough.
    let w = 512;
    let x = scaled(random(w, 7), 1.0, 300.0);
    let (g, b) = (vec![1.0; w], vec![0.0; w]);
    let truth = layer_norm_f64(&x, &g, &b, 1e-5);
    each_level(|l| {
        let mut got = vec![0.0; w];
        fused::layer_norm(&x, &g, &b, 1e-5, &mut got).unwrap();
        // Only the rounding of x − mean (mean ≈ 300, ulp 3e-5) remains: ~3e-5·rstd ≈ 6e-5.
        assert!(max_diff(&got, &truth) <= 1e-4, "{l}: {}", max_diff(&got, &truth));
    });
}

#[test]
fn layer_norm_of_a_constant_row_is_beta() {
    for w in [1, 7, 33, 512] {
        let x = vec![0.3; w];
        let g = scaled(random(w, 3), 0.5, 1.0);
        let b = random(w, 4);
        let mut want = vec![0.0; w];
        let (m_ref, r_ref) = unfused::layer_norm(&x, &g, &b, 1e-5, &mut want).unwrap();
        // The reference's sequential f32 mean is off 0.3 by its summation error (it grows with
        // w: ~2e-6 at w = 512), and its output is β + (0.3 − mean)·rstd·γ with rstd ≈ 316.
        let ref_err = (0.3 - m_ref).abs() * r_ref * g.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        each_level(|l| {
            let mut got = vec![f32::NAN; w];
            let (m, r) = fused::layer_norm(&x, &g, &b, 1e-5, &mut got).unwrap();
            // Variance 0: eps keeps 1/√(var + eps) finite (≈ 316) and x − mean is 0.
            assert!(got.iter().all(|v| v.is_finite()), "{l} w={w}");
            assert!(max_diff(&got, &b) <= 1e-6, "{l} w={w}: {}", max_diff(&got, &b));
            assert!((m - 0.3).abs() <= 1e-7 && (r - 1e-5f32.sqrt().recip()).abs() <= 1e-3 * r, "{l}: {m} {r}");
            // So the two agree up to exactly that error of the reference.
            assert!(
                max_diff(&got, &want) <= ref_err * 1.01 + 1e-6,
                "{l} w={w}: {} vs {ref_err}",
                max_diff(&got, &want)
            );
        });
    }
}

#[test]
fn layer_norm_rejects_bad_arguments() {
    let x = random(8, 1);
    let (g, b) = (vec![1.0; 8], vec![0.0; 8]);
    let mut out = vec![0.0; 8];
    assert!(matches!(fused::layer_norm(&x, &g[..7], &b, 1e-5, &mut out), Err(TensorError::ShapeMismatch { .. })));
    assert!(matches!(fused::layer_norm(&x, &g, &b[..7], 1e-5, &mut out), Err(TensorError::ShapeMismatch { .. })));
    assert!(matches!(fused::layer_norm(&x, &g, &b, 1e-5, &mut out[..7]), Err(TensorError::ShapeMismatch { .. })));
    assert!(matches!(fused::layer_norm(&[], &[], &[], 1e-5, &mut []), Err(TensorError::InvalidShape { .. })));
    for eps in [0.0, -1e-5, f32::NAN, f32::INFINITY] {
        assert!(matches!(fused::layer_norm(&x, &g, &b, eps, &mut out), Err(TensorError::InvalidArgument { .. })));
        assert!(unfused::layer_norm(&x, &g, &b, eps, &mut out).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// softmax
// ---------------------------------------------------------------------------------------------

fn softmax_f64(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

fn assert_distribution(p: &[f32], what: &str) {
    assert!(p.iter().all(|v| v.is_finite() && *v >= 0.0), "{what}: not a distribution");
    let s: f64 = p.iter().map(|&v| v as f64).sum();
    assert!((s - 1.0).abs() <= 1e-5, "{what}: sums to {s}");
}

#[test]
fn softmax_matches_unfused_at_every_level() {
    for (si, w) in widths().chain([640, 4096]).enumerate() {
        // Logits spread over ±6 so the probabilities span several orders of magnitude.
        let x = scaled(random(w, 200 + si as u64), 6.0, 0.0);
        let mut want = x.clone();
        unfused::softmax(&mut want);
        let truth = softmax_f64(&x);
        // The reference's sequential f32 sum drifts like √n·ulp (2e-6 from the truth measured
        // at n = 4096); the fused lane-wise sums stay under 1e-6 at every width.
        let rel = 1e-6 + 5e-8 * (w as f32).sqrt();
        each_level(|l| {
            let mut got = x.clone();
            fused::softmax(&mut got).unwrap();
            let r = worst_ratio(&got, &want, rel, 1e-12);
            assert!(r <= 1.0, "{l} w={w}: ratio {r}, max diff {}", max_diff(&got, &want));
            let r = worst_ratio(&got, &truth, 1.5e-6, 1e-12);
            assert!(r <= 1.0, "{l} w={w}: ratio {r} to the f64 softmax");
            assert_distribution(&got, &format!("{l} w={w}"));
        });
    }
}

#[test]
fn softmax_handles_large_logits_and_negative_infinity() {
    let w = 200;
    // ±80: exp(160) would overflow f32 if the maximum were not subtracted.
    let big: Vec<f32> = random(w, 5).iter().map(|&v| if v > 0.0 { 80.0 - v } else { -80.0 - v }).collect();
    // −∞ entries (masked positions) get exactly 0.
    let mut masked = scaled(random(w, 6), 3.0, 0.0);
    for i in (0..w).step_by(3) {
        masked[i] = f32::NEG_INFINITY;
    }
    // Huge finite logits: differences beyond exp's range.
    let huge: Vec<f32> = random(w, 8).iter().map(|&v| v * 1e30).collect();
    for (name, x) in [("±80", big), ("-inf", masked), ("1e30", huge)] {
        let truth = softmax_f64(&x);
        let mut want = x.clone();
        unfused::softmax(&mut want);
        each_level(|l| {
            let mut got = x.clone();
            fused::softmax(&mut got).unwrap();
            assert_distribution(&got, &format!("{l} {name}"));
            assert!(worst_ratio(&got, &want, 2e-6, 1e-12) <= 1.0, "{l} {name}: {}", max_diff(&got, &want));
            assert!(worst_ratio(&got, &truth, 2e-6, 1e-12) <= 1.0, "{l} {name}: {}", max_diff(&got, &truth));
            for (g, v) in got.iter().zip(&x) {
                if *v == f32::NEG_INFINITY {
                    assert_eq!(*g, 0.0, "{l} {name}");
                }
            }
        });
    }
}

#[test]
fn softmax_rejects_rows_without_a_distribution() {
    each_level(|l| {
        let mut empty: [f32; 0] = [];
        fused::softmax_at(l, &mut empty).unwrap();
        let mut one = [f32::NEG_INFINITY, 5.0];
        fused::softmax_at(l, &mut one).unwrap();
        assert_eq!(one, [0.0, 1.0]);
        for w in [1, 7, 33, 129] {
            let bad_rows = [
                vec![f32::NEG_INFINITY; w],
                (0..w).map(|i| if i == w / 2 { f32::NAN } else { 0.5 }).collect(),
                (0..w).map(|i| if i == w - 1 { f32::INFINITY } else { 0.5 }).collect::<Vec<_>>(),
            ];
            for row in bad_rows {
                let mut got = row.clone();
                let r = fused::softmax_at(l, &mut got);
                assert!(matches!(r, Err(TensorError::InvalidArgument { .. })), "{l} w={w} {row:?}");
                // Unchanged (bitwise: NaN ≠ NaN).
                assert!(got.iter().zip(&row).all(|(a, b)| a.to_bits() == b.to_bits()), "{l} w={w}");
            }
        }
    });
}

#[test]
fn dispatching_entries_use_the_current_level() {
    let x = scaled(random(129, 9), 5.0, 0.0);
    each_level(|l| {
        let (mut a, mut b) = (x.clone(), x.clone());
        fused::softmax(&mut a).unwrap();
        fused::softmax_at(l, &mut b).unwrap();
        assert_eq!(a, b, "{l}");
        // Asking for more than the thread's level is clamped to it.
        let mut c = x.clone();
        fused::softmax_at(Level::Avx512, &mut c).unwrap();
        assert_eq!(a, c, "{l}: clamped to {}", level());
    });
}

// ---------------------------------------------------------------------------------------------
// bias + GELU
// ---------------------------------------------------------------------------------------------

#[test]
fn bias_gelu_matches_unfused_at_every_level() {
    for (si, w) in widths().enumerate() {
        for rows in [1, 3, 64] {
            let seed = 300 + (si * 10 + rows) as u64;
            // Pre-activations over ±8 plus a bias of ±1: covers GELU's flat, curved and linear parts.
            let y = scaled(random(rows * w, seed), 8.0, 0.0);
            let bias = random(w, seed + 1);
            let mut want = y.clone();
            unfused::bias_gelu(&mut want, &bias).unwrap();
            each_level(|l| {
                let mut got = y.clone();
                fused::bias_gelu(&mut got, &bias).unwrap();
                // exp a few ulp off, magnified by |argument| (≤ ~30): 1e-6 relative + 1e-7
                // absolute (measured: 2.1e-7).
                let r = worst_ratio(&got, &want, 1e-6, 1e-7);
                assert!(r <= 1.0, "{l} {rows}x{w}: ratio {r}, max diff {}", max_diff(&got, &want));
            });
        }
    }
}

#[test]
fn bias_gelu_edge_values_and_shapes() {
    let bias = [0.0f32; 7];
    let row = [-1e30f32, -100.0, -10.0, 0.0, 10.0, 100.0, 1e3];
    let mut want = row;
    unfused::bias_gelu(&mut want, &bias).unwrap();
    each_level(|l| {
        let mut got = row;
        fused::bias_gelu(&mut got, &bias).unwrap();
        assert!(got.iter().all(|v| v.is_finite()), "{l}: {got:?}");
        // GELU(x) → 0 for x → −∞ and → x for large x.
        assert_eq!(got[0], 0.0, "{l}");
        assert_eq!(got[3], 0.0, "{l}");
        assert_eq!(&got[5..], &[100.0, 1e3], "{l}");
        assert!(worst_ratio(&got, &want, 1e-6, 1e-7) <= 1.0, "{l}: {got:?} vs {want:?}");
        let mut y = vec![0.0; 10];
        assert!(matches!(fused::bias_gelu(&mut y, &[0.0; 3]), Err(TensorError::InvalidShape { .. })));
        assert!(fused::bias_gelu(&mut y, &[]).is_err());
        fused::bias_gelu(&mut [], &[]).unwrap();
        fused::bias_gelu(&mut [], &[1.0]).unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// decode attention
// ---------------------------------------------------------------------------------------------

fn unfused_attention(q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    let mut probs = vec![0.0; k.len() / q.len()];
    let mut out = vec![0.0; q.len()];
    unfused::decode_attention(q, k, v, scale, &mut probs, &mut out).unwrap();
    out
}

fn f64_attention(q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    let (hd, slots) = (q.len(), k.len() / q.len());
    let rows = |data, rows| Rows { data, rows, cols: hd, stride: hd };
    attention_head_reference(rows(q, 1), rows(k, slots), rows(v, slots), scale).1
}

#[test]
fn decode_attention_matches_unfused_at_every_level() {
    for hd in [32, 7, 64] {
        for slots in [1, 7, 33, 129, 640] {
            let seed = 400 + (hd * 1000 + slots) as u64;
            let k = random(slots * hd, seed + 1);
            let v = random(slots * hd, seed + 2);
            let scale = 1.0 / (hd as f32).sqrt();
            // Typical (q in ±1) and peaked (q in ±8: a few keys dominate) score distributions.
            for qs in [1.0, 8.0] {
                let q = scaled(random(hd, seed), qs, 0.0);
                let want = unfused_attention(&q, &k, &v, scale);
                let truth = f64_attention(&q, &k, &v, scale);
                each_level(|l| {
                    let mut out = vec![f32::NAN; hd];
                    fused::decode_attention(&q, &k, &v, scale, &mut out).unwrap();
                    assert!(out.iter().all(|x| x.is_finite()), "{l} hd={hd} slots={slots}");
                    // Reordered sums and online rescaling: 2e-6 absolute (see the file docs).
                    let (d, dt) = (max_diff(&out, &want), max_diff(&out, &truth));
                    assert!(d <= 2e-6 && dt <= 2e-6, "{l} hd={hd} slots={slots} q×{qs}: {d} {dt}");
                    // The two-pass form (scores in a scratch row) to the same bound.
                    let mut two = vec![f32::NAN; hd];
                    fused::decode_attention_2pass(&q, &k, &v, scale, &mut vec![f32::NAN; slots], &mut two).unwrap();
                    let d2 = max_diff(&two, &truth);
                    assert!(d2 <= 2e-6, "{l} two-pass hd={hd} slots={slots} q×{qs}: {d2}");
                });
            }
        }
    }
}

#[test]
fn decode_attention_rescales_when_the_maximum_keeps_growing() {
    // Scores increase with the slot, so the running maximum moves in every block and the
    // accumulator is rescaled each time; the last keys dominate.
    let (hd, slots) = (32, 640);
    let q = random(hd, 11);
    let qq: f32 = q.iter().map(|x| x * x).sum();
    // Score j = 0.02·j, up to 12.8 (much larger scores lose f32 precision in the score itself).
    // A plain loop: valgrind flags std's optimized `collect` of a `flat_map` in release builds (a
    // branch on an uninitialised value inside `Vec::from_iter`), which would hide real reports.
    let mut k = Vec::with_capacity(slots * hd);
    for j in 0..slots {
        k.extend(q.iter().map(|&x| x * j as f32 * 0.02 / qq));
    }
    let v = random(slots * hd, 12);
    let scale = 1.0;
    let want = unfused_attention(&q, &k, &v, scale);
    let truth = f64_attention(&q, &k, &v, scale);
    each_level(|l| {
        let mut out = vec![0.0; hd];
        fused::decode_attention(&q, &k, &v, scale, &mut out).unwrap();
        let (d, dt) = (max_diff(&out, &want), max_diff(&out, &truth));
        assert!(d <= 2e-6 && dt <= 2e-6, "{l}: {d} {dt}");
    });
}

#[test]
fn decode_attention_rejects_bad_shapes() {
    let (q, k, v) = (vec![0.5; 4], vec![0.5; 12], vec![0.5; 12]);
    let mut out = vec![0.0; 4];
    fused::decode_attention(&q, &k, &v, 0.5, &mut out).unwrap();
    // Equal keys: the output is the mean of the values.
    assert!(max_diff(&out, &[0.5; 4]) <= 1e-6);
    let e = |r: tt_tensor::Result<()>| r.unwrap_err();
    assert!(matches!(e(fused::decode_attention(&[], &k, &v, 0.5, &mut [])), TensorError::InvalidShape { .. }));
    assert!(matches!(e(fused::decode_attention(&q, &k, &v, 0.5, &mut out[..3])), TensorError::ShapeMismatch { .. }));
    assert!(matches!(e(fused::decode_attention(&q, &k, &v[..8], 0.5, &mut out)), TensorError::ShapeMismatch { .. }));
    assert!(matches!(
        e(fused::decode_attention(&q, &k[..10], &v[..10], 0.5, &mut out)),
        TensorError::InvalidShape { .. }
    ));
    assert!(matches!(e(fused::decode_attention(&q, &[], &[], 0.5, &mut out)), TensorError::InvalidShape { .. }));
    assert!(matches!(e(fused::decode_attention(&q, &k, &v, f32::NAN, &mut out)), TensorError::InvalidArgument { .. }));
    let mut probs = vec![0.0; 2];
    assert!(unfused::decode_attention(&q, &k, &v, 0.5, &mut probs, &mut out).is_err());
}

#[test]
fn gelu_without_bias_matches_the_reference_at_every_level() {
    for level in tt_accel::dispatch::available() {
        for &n in &[1usize, 7, 17, 33, 129, 512] {
            let x: Vec<f32> = crate::common::random(n, n as u64).iter().map(|v| v * 6.0).collect();
            let mut y = x.clone();
            tt_accel::fused::gelu_at(level, &mut y);
            let want: Vec<f32> = x.iter().map(|&v| tt_tensor::kernels::gelu_tanh(v)).collect();
            // The same range reduction and polynomial as exp_fast, vectorized: a few ulp.
            let d = crate::common::max_diff(&y, &want);
            assert!(d <= 1e-6 * 6.0, "{level} n {n}: {d}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// decode attention over an int8 KV cache
// ---------------------------------------------------------------------------------------------

/// Symmetric int8 rows (the KV cache's q8 storage) of `rows × hd` values: codes and scales.
fn q8_rows(x: &[f32], hd: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = vec![0i8; x.len()];
    let scales =
        x.chunks(hd).zip(codes.chunks_mut(hd)).map(|(r, c)| tt_kvcache::cache::quantize_row_q8(r, c)).collect();
    (codes, scales)
}

/// The int8 kernel equals the f32 attention over the dequantized rows (the f64 reference, and
/// the tt-tensor reference kernel) within the same 2e-6 as the f32 kernel: dequantizing on the
/// fly is exact per value (an i8 times a scale, rounded once) and the rest is the same online
/// softmax. At every level and odd head widths (tails of the 16-code loads).
#[test]
fn decode_attention_q8_matches_attention_over_dequantized_rows_at_every_level() {
    for hd in [32, 7, 20, 64] {
        for slots in [1, 7, 33, 129, 640] {
            let seed = 900 + (hd * 1000 + slots) as u64;
            let (k, v) = (random(slots * hd, seed + 1), scaled(random(slots * hd, seed + 2), 3.0, 0.5));
            let ((kc, ks), (vc, vs)) = (q8_rows(&k, hd), q8_rows(&v, hd));
            let deq = |c: &[i8], s: &[f32]| -> Vec<f32> {
                c.iter().enumerate().map(|(i, &x)| s[i / hd] * x as f32).collect()
            };
            let (kd, vd) = (deq(&kc, &ks), deq(&vc, &vs));
            let kv = tt_tensor::kernels::Q8Head { keys: &kc, key_scales: &ks, values: &vc, value_scales: &vs };
            let scale = 1.0 / (hd as f32).sqrt();
            for qs in [1.0, 8.0] {
                let q = scaled(random(hd, seed), qs, 0.0);
                let truth = f64_attention(&q, &kd, &vd, scale);
                let mut reference = vec![0.0; hd];
                tt_tensor::kernels::decode_attention_q8_reference(
                    &q,
                    &kv,
                    scale,
                    &mut vec![0.0; slots],
                    &mut reference,
                );
                assert!(max_diff(&reference, &truth) <= 2e-6, "reference hd={hd} slots={slots}");
                each_level(|l| {
                    let mut out = vec![f32::NAN; hd];
                    fused::decode_attention_q8(&q, &kv, scale, &mut out).unwrap();
                    let d = max_diff(&out, &truth);
                    assert!(d <= 2e-6, "{l} hd={hd} slots={slots} q×{qs}: {d}");
                    let mut two = vec![f32::NAN; hd];
                    fused::decode_attention_q8_2pass(&q, &kv, scale, &mut vec![f32::NAN; slots], &mut two).unwrap();
                    let d2 = max_diff(&two, &truth);
                    assert!(d2 <= 2e-6, "{l} two-pass hd={hd} slots={slots} q×{qs}: {d2}");
                });
            }
        }
    }
}

#[test]
fn decode_attention_q8_rejects_bad_shapes() {
    let (q, codes, scales) = ([0.5f32; 4], [1i8; 8], [0.1f32; 2]);
    let kv = |k: &'static [i8], ks: &'static [f32]| tt_tensor::kernels::Q8Head {
        keys: k,
        key_scales: ks,
        values: k,
        value_scales: ks,
    };
    let mut out = [0.0f32; 4];
    let good = tt_tensor::kernels::Q8Head { keys: &codes, key_scales: &scales, values: &codes, value_scales: &scales };
    fused::decode_attention_q8(&q, &good, 0.5, &mut out).unwrap();
    assert!(fused::decode_attention_q8(&q, &kv(&[1; 7], &[0.1; 2]), 0.5, &mut out).is_err());
    assert!(fused::decode_attention_q8(&q, &kv(&[1; 8], &[0.1; 3]), 0.5, &mut out).is_err());
    assert!(fused::decode_attention_q8(&q, &kv(&[], &[]), 0.5, &mut out).is_err());
    assert!(fused::decode_attention_q8(&q, &good, f32::NAN, &mut out).is_err());
    assert!(fused::decode_attention_q8(&q, &good, 0.5, &mut out[..3]).is_err());
    assert!(fused::decode_attention_q8_2pass(&q, &good, 0.5, &mut [0.0; 1], &mut out).is_err(), "scores too short");
    assert!(fused::decode_attention_q8_2pass(&q, &kv(&[1; 7], &[0.1; 2]), 0.5, &mut [0.0; 2], &mut out).is_err());
    fused::decode_attention_q8_2pass(&q, &good, 0.5, &mut [0.0; 2], &mut out).unwrap();
    let (k, v) = ([0.5f32; 8], [1.0f32; 8]);
    assert!(fused::decode_attention_2pass(&q, &k, &v, 0.5, &mut [0.0; 1], &mut out).is_err(), "scores too short");
    fused::decode_attention_2pass(&q, &k, &v, 0.5, &mut [0.0; 2], &mut out).unwrap();
    assert!(out.iter().all(|&o| (o - 1.0).abs() < 1e-6));
}
