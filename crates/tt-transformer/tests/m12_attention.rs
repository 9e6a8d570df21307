//! Module 12 — attention: causal masking, agreement with a straightforward reference, gradients,
//! and attention that is not uniform once trained.

mod common;

use tt_tensor::loss::cross_entropy;
use tt_tensor::optim::{Adam, Optimizer};
use tt_tensor::testing::assert_grads;
use tt_tensor::{no_grad, Module, Tensor};

/// Reference attention: explicit loops over batch, head, query and key, using the layer's weights.
fn reference_attention(
    x: &[f32],
    b: usize,
    t: usize,
    d: usize,
    h: usize,
    attn: &tt_transformer::CausalSelfAttention,
) -> Vec<f32> {
    let (wqkv, bqkv) = (attn.qkv.weight.to_vec(), attn.qkv.bias.as_ref().unwrap().to_vec());
    let (wo, bo) = (attn.proj.weight.to_vec(), attn.proj.bias.as_ref().unwrap().to_vec());
    let dh = d / h;
    let lin = |inp: &[f32], w: &[f32], bias: &[f32], out_f: usize| -> Vec<f32> {
        (0..out_f).map(|o| bias[o] + (0..d).map(|i| inp[i] * w[o * d + i]).sum::<f32>()).collect()
    };
    let mut out = vec![0.0; b * t * d];
    for bi in 0..b {
        let qkv: Vec<Vec<f32>> =
            (0..t).map(|ti| lin(&x[(bi * t + ti) * d..(bi * t + ti + 1) * d], &wqkv, &bqkv, 3 * d)).collect();
        let mut y = vec![0.0; t * d];
        for hi in 0..h {
            for qi in 0..t {
                let q = &qkv[qi][hi * dh..(hi + 1) * dh];
                let scores: Vec<f32> = (0..=qi)
                    .map(|ki| {
                        q.iter().zip(&qkv[ki][d + hi * dh..d + (hi + 1) * dh]).map(|(a, b)| a * b).sum::<f32>()
                            / (dh as f32).sqrt()
                    })
                    .collect();
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for j in 0..dh {
                    y[qi * d + hi * dh + j] = (0..=qi).map(|ki| e[ki] / z * qkv[ki][2 * d + hi * dh + j]).sum();
                }
            }
        }
        for ti in 0..t {
            let o = lin(&y[ti * d..(ti + 1) * d], &wo, &bo, d);
            out[(bi * t + ti) * d..(bi * t + ti + 1) * d].copy_from_slice(&o);
        }
    }
    out
}

#[test]
fn attention_matches_reference_loops() {
    let m = common::tiny(10, 3);
    let attn = &m.blocks[0].attn;
    let (b, t, d) = (2, 5, 16);
    let x = Tensor::randn(&[b, t, d], 0.0, 1.0, 4);
    let got = no_grad(|| attn.forward(&x)).unwrap().to_vec();
    let want = reference_attention(&x.to_vec(), b, t, d, 2, attn);
    for (g, w) in got.iter().zip(&want) {
        // Same math in a different summation order: f32 rounding only.
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
}

#[test]
fn changing_a_later_token_never_changes_earlier_outputs() {
    let m = common::tiny(10, 5);
    let a = [1usize, 4, 2, 8, 3, 3, 7];
    let logits_a = no_grad(|| m.forward_ids(&a, 1, a.len())).unwrap().to_vec();
    for change_at in 1..a.len() {
        let mut b = a;
        b[change_at] = (b[change_at] + 5) % 10;
        let logits_b = no_grad(|| m.forward_ids(&b, 1, b.len())).unwrap().to_vec();
        let v = 10;
        for pos in 0..change_at {
            assert_eq!(
                &logits_a[pos * v..(pos + 1) * v],
                &logits_b[pos * v..(pos + 1) * v],
                "position {pos} saw token {change_at}"
            );
        }
        assert_ne!(&logits_a[change_at * v..(change_at + 1) * v], &logits_b[change_at * v..(change_at + 1) * v]);
    }
}

#[test]
fn attention_weights_are_causal_distributions() {
    let m = common::tiny(10, 6);
    let (_, atts) = no_grad(|| m.forward_with_attention(&[1, 2, 3, 4, 5], 1, 5)).unwrap();
    assert_eq!(atts.len(), 2);
    let w = atts[0].to_vec(); // [1, 2, 5, 5]
    for row in w.chunks(5).enumerate() {
        let (r, vals) = row;
        let i = r % 5;
        assert!((vals.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(vals[i + 1..].iter().all(|&v| v == 0.0), "row {i} attends to the future: {vals:?}");
    }
}

#[test]
fn gradients_through_attention_and_layer_norm() {
    let m = common::tiny(10, 7);
    let blk = &m.blocks[0];
    let x = Tensor::randn(&[1, 4, 16], 0.0, 1.0, 8);
    assert_grads(|i| blk.attn.forward(&i[0]), std::slice::from_ref(&x), 2e-3, 2e-2);
    assert_grads(|i| blk.forward(&i[0]), std::slice::from_ref(&x), 2e-3, 2e-2);
    // With respect to the weights too.
    let (w, b) = (blk.attn.qkv.weight.detach(), blk.attn.qkv.bias.as_ref().unwrap().detach());
    assert_grads(
        |i| x.linear(&i[0], Some(&i[1]))?.reshape(&[1, 4, 48])?.narrow(2, 0, 16)?.softmax(2),
        &[w, b],
        2e-3,
        2e-2,
    );
}

/// Sequences `a b a b …` with `a`, `b` drawn per sequence: the next token is always the one
/// before the current one, which no position-only rule can predict.
fn alternating(batch: usize, len: usize, seed: u64) -> Vec<usize> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..batch)
        .flat_map(|_| {
            let (a, b) = (rng.random_range(0..8), rng.random_range(0..8));
            (0..len).map(move |i| if i % 2 == 0 { a } else { b })
        })
        .collect()
}

#[test]
fn trained_attention_is_not_uniform() {
    let m = common::tiny(8, 9);
    let (b, t) = (16, 17);
    let mut opt = Adam::new(m.parameters(), 1e-2, 0.0).unwrap();
    for step in 0..150 {
        let s = alternating(b, t, step);
        let x: Vec<usize> = s.chunks(t).flat_map(|c| c[..t - 1].to_vec()).collect();
        let y: Vec<usize> = s.chunks(t).flat_map(|c| c[1..].to_vec()).collect();
        opt.zero_grad();
        cross_entropy(&m.forward_ids(&x, b, t - 1).unwrap(), &y).unwrap().backward().unwrap();
        opt.step().unwrap();
    }
    // On fresh sequences: per layer, the mean over heads, sequences and late query rows of
    // (largest weight − 1/(i+1)), i.e. how far above uniform attention the sharpest key is.
    let s = alternating(8, t - 1, 999);
    let n = t - 1;
    let sharpness = |model: &tt_transformer::Gpt| -> Vec<f32> {
        let (_, atts) = no_grad(|| model.forward_with_attention(&s, 8, n)).unwrap();
        atts.iter()
            .map(|a| {
                let w = a.to_vec();
                let (mut e, mut c) = (0.0, 0.0);
                for row_start in (0..8 * 2).map(|bh| bh * n * n) {
                    for i in 8..n {
                        let row = &w[row_start + i * n..row_start + (i + 1) * n];
                        e += row.iter().copied().fold(0.0, f32::max) - 1.0 / (i + 1) as f32;
                        c += 1.0;
                    }
                }
                e / c
            })
            .collect()
    };
    let logits = no_grad(|| m.forward_ids(&s, 8, n)).unwrap();
    let pred = logits.argmax_axis(2).unwrap();
    let correct =
        (0..8).flat_map(|q| (1..n).map(move |i| (q, i))).filter(|&(q, i)| pred[[q, i]] == s[q * n + i - 1]).count();
    assert!(correct as f32 >= 0.95 * (8 * (n - 1)) as f32, "copy task learned: {correct} of {}", 8 * (n - 1));
    let trained = sharpness(&m);
    let untrained = sharpness(&common::tiny(8, 9));
    let best = trained.iter().copied().fold(0.0, f32::max);
    let base = untrained.iter().copied().fold(0.0, f32::max);
    assert!(
        best > 0.15 && best > 4.0 * base,
        "attention stayed near uniform: trained {trained:?}, untrained {untrained:?}"
    );
}

#[test]
fn fused_attention_matches_composed_reference_and_its_gradients_check() {
    let m = common::tiny(10, 21);
    let attn = &m.blocks[1].attn;
    for &(b, t) in &[(1usize, 1usize), (2, 7), (3, 16)] {
        let x = Tensor::randn(&[b, t, 16], 0.0, 1.0, 22 + t as u64);
        let (y1, p1) = no_grad(|| attn.forward_with_weights(&x)).unwrap();
        let (y2, p2) = no_grad(|| attn.forward_composed(&x)).unwrap();
        // Same math; GEMM over strided views vs. after copies: f32 rounding only.
        assert!(tt_tensor::testing::max_abs_diff(&y1.data(), &y2.data()) < 1e-5);
        assert!(tt_tensor::testing::max_abs_diff(&p1.data(), &p2.data()) < 1e-6);
        // Gradients of the input agree too.
        let xg = Tensor::param(x.data().clone());
        attn.forward_with_weights(&xg).unwrap().0.sum().backward().unwrap();
        let g1 = xg.grad().unwrap();
        xg.zero_grad();
        attn.forward_composed(&xg).unwrap().0.sum().backward().unwrap();
        assert!(tt_tensor::testing::max_abs_diff(&g1, &xg.grad().unwrap()) < 1e-4);
    }
    let qkv = Tensor::randn(&[2, 5, 48], 0.0, 1.0, 30);
    assert_grads(|i| Ok(tt_transformer::attention::causal_attention(&i[0], 2).unwrap().0), &[qkv], 2e-3, 2e-2);
    assert!(tt_transformer::attention::causal_attention(&Tensor::zeros(&[2, 5, 47]), 2).is_err());
}

/// The one attention-head kernel (shared by the fused attention and the cached decoder) against
/// its f64 reference: both dispatch paths (dot products below `GEMM_MIN_ROWS` queries, GEMM at
/// and above), strided Q/K/V, odd sizes, and `n` new queries over longer caches. Tolerance 1e-5:
/// f32 sums of ≤ 33 terms of O(1) values, while a wrong mask or offset moves results by ~0.1.
#[test]
fn attention_head_kernel_matches_reference_on_both_paths() {
    use tt_tensor::kernels::{attention_head, attention_head_reference, Rows, GEMM_MIN_ROWS};
    let hd = 5;
    let stride = 3 * hd + 2; // packed-QKV-like rows with padding: strided views
    let data: Vec<f32> = Tensor::randn(&[40 * stride], 0.0, 1.0, 9).to_vec();
    for slots in [1, 7, 17, 33] {
        for n in [1, 2, GEMM_MIN_ROWS - 1, GEMM_MIN_ROWS, 17, 33].into_iter().filter(|&n| n <= slots) {
            let q = Rows { data: &data[(slots - n) * stride..], rows: n, cols: hd, stride };
            let k = Rows { data: &data[hd..], rows: slots, cols: hd, stride };
            let v = Rows { data: &data[2 * hd..], rows: slots, cols: hd, stride };
            let (want_p, want_o) = attention_head_reference(q, k, v, 0.7);
            let mut probs = vec![f32::NAN; n * slots];
            let out_stride = hd + 3;
            let mut out = vec![f32::NAN; n * out_stride];
            attention_head(q, k, v, 0.7, &mut probs, &mut out, out_stride);
            let got_o: Vec<f32> = (0..n).flat_map(|t| out[t * out_stride..t * out_stride + hd].to_vec()).collect();
            assert!(probs.iter().chain(&got_o).all(|x| x.is_finite()), "every output written");
            let dp = probs.iter().zip(&want_p).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            let dout = got_o.iter().zip(&want_o).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(dp <= 1e-5 && dout <= 1e-5, "slots {slots}, n {n}: probs {dp}, out {dout}");
        }
    }
}

/// A block with fewer heads than `n_heads` (what head pruning leaves): the head width stays
/// `d_model / n_heads`, so Q/K/V and the output projection's input are `heads · head_dim` wide.
/// Its fused attention equals the composed reference and its gradients (the same tolerances as
/// above), the whole model trains, and its config round-trips through JSON while a config written
/// before per-block heads existed still loads as "every block has n_heads".
#[test]
fn blocks_with_fewer_heads_run_train_and_serialize() {
    let cfg = tt_transformer::GptConfig { n_heads: 4, heads_per_block: Some(vec![3, 1]), ..common::tiny_config(10, 5) };
    let m = tt_transformer::Gpt::new(cfg.clone()).unwrap();
    assert_eq!((cfg.heads(0), cfg.attn_width(0), cfg.heads(1), cfg.attn_width(1)), (3, 12, 1, 4));
    for (l, a) in [(0, 12), (1, 4)] {
        let attn = &m.blocks[l].attn;
        assert_eq!((attn.qkv.out_features(), attn.proj.in_features(), attn.n_heads), (3 * a, a, cfg.heads(l)));
        let x = Tensor::randn(&[2, 7, 16], 0.0, 1.0, 40 + l as u64);
        let (y1, p1) = no_grad(|| attn.forward_with_weights(&x)).unwrap();
        let (y2, p2) = no_grad(|| attn.forward_composed(&x)).unwrap();
        assert_eq!(y1.shape(), vec![2, 7, 16]);
        assert_eq!(p1.shape(), vec![2, cfg.heads(l), 7, 7]);
        assert!(tt_tensor::testing::max_abs_diff(&y1.data(), &y2.data()) < 1e-5);
        assert!(tt_tensor::testing::max_abs_diff(&p1.data(), &p2.data()) < 1e-6);
        let xg = Tensor::param(x.data().clone());
        attn.forward_with_weights(&xg).unwrap().0.sum().backward().unwrap();
        let g1 = xg.grad().unwrap();
        xg.zero_grad();
        attn.forward_composed(&xg).unwrap().0.sum().backward().unwrap();
        assert!(tt_tensor::testing::max_abs_diff(&g1, &xg.grad().unwrap()) < 1e-4);
    }
    // Trains: a few Adam steps lower the loss on a repeating pattern.
    let seq: Vec<usize> = (0..17).map(|i| [1, 4, 7, 2][i % 4]).collect();
    let loss = || cross_entropy(&m.forward_ids(&seq[..16], 1, 16).unwrap(), &seq[1..]).unwrap();
    let start = no_grad(|| loss().item().unwrap());
    let mut opt = Adam::new(m.parameters(), 1e-2, 0.0).unwrap();
    for _ in 0..20 {
        opt.zero_grad();
        loss().backward().unwrap();
        opt.step().unwrap();
    }
    assert!(no_grad(|| loss().item().unwrap()) < 0.5 * start);
    // JSON: the field round-trips; an old config (no field) means n_heads everywhere.
    let json = serde_json::to_value(&cfg).unwrap();
    assert_eq!(serde_json::from_value::<tt_transformer::GptConfig>(json.clone()).unwrap(), cfg);
    let mut old = json;
    old.as_object_mut().unwrap().remove("heads_per_block");
    let old: tt_transformer::GptConfig = serde_json::from_value(old).unwrap();
    assert_eq!((old.heads(1), old.heads_per_block), (4, None));
}
