//! Module 13, the Llama family: RMSNorm, rotary positions (both pair conventions), SwiGLU and
//! grouped-query attention in the one model, checked against a plain f64 reference written from
//! the architecture's definition, by gradient checks, and by training.

use tt_tensor::testing::assert_grads;
use tt_tensor::{Module, Tensor};
use tt_transformer::model::{Norm, RopePairs};
use tt_transformer::testing::{tiny_llama_config, train_on_pattern, PATTERN};
use tt_transformer::{Gpt, GptConfig, TransformerError};

/// Row-major `[out, in]` weight of a linear layer, widened.
fn w64(l: &tt_tensor::nn::Linear) -> Vec<f64> {
    l.weight.to_vec().into_iter().map(f64::from).collect()
}

fn matvec(w: &[f64], x: &[f64], out: usize) -> Vec<f64> {
    let n = x.len();
    (0..out).map(|o| (0..n).map(|i| w[o * n + i] * x[i]).sum()).collect()
}

fn rms(x: &[f64], gamma: &Tensor, eps: f32) -> Vec<f64> {
    let ss = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps as f64;
    let g = gamma.to_vec();
    x.iter().zip(g).map(|(v, g)| v / ss.sqrt() * g as f64).collect()
}

/// Turns one head's vector to `pos`: pair `i` by `pos · θ^(−2i/hd)`, in f64.
fn rope(x: &mut [f64], pos: usize, theta: f64, pairs: RopePairs) {
    let (hd, half) = (x.len(), x.len() / 2);
    for i in 0..half {
        let angle = pos as f64 * theta.powf(-((2 * i) as f64) / hd as f64);
        let (a, b) = match pairs {
            RopePairs::Interleaved => (2 * i, 2 * i + 1),
            RopePairs::HalfSplit => (i, i + half),
        };
        let (v0, v1) = (x[a], x[b]);
        x[a] = v0 * angle.cos() - v1 * angle.sin();
        x[b] = v0 * angle.sin() + v1 * angle.cos();
    }
}

/// Logits `[t][vocab]` of a Llama for one sequence, in f64 plain loops, from the definition:
/// x = emb[id]; per block x += Wo·attn(rope(Wq·h), rope(Wk·h), Wv·h) with h = rms(x), query
/// head j using K/V head j/(H/KV); x += W2(silu(W1·h) ⊙ W3·h) with h = rms(x); logits = head(rms(x)).
fn reference(m: &Gpt, ids: &[usize]) -> Vec<Vec<f64>> {
    let c = &m.config;
    let (d, t, hd) = (c.d_model, ids.len(), c.head_dim());
    let (nh, nkv) = (c.n_heads, c.kv_heads(0));
    let emb: Vec<f64> = m.tok_emb.weight.to_vec().into_iter().map(f64::from).collect();
    let mut xs: Vec<Vec<f64>> = ids.iter().map(|&i| emb[i * d..(i + 1) * d].to_vec()).collect();
    let norm_gamma = |n: &Norm| match n {
        Norm::Rms(r) => (r.gamma.clone(), r.eps),
        Norm::Layer(_) => panic!("a Llama has RMS norms"),
    };
    for b in &m.blocks {
        let (g1, eps) = norm_gamma(&b.ln1);
        let qkv = w64(&b.attn.qkv);
        let (qw, kvw) = (nh * hd, nkv * hd);
        let mut q = vec![];
        let mut k = vec![];
        let mut v = vec![];
        for (p, x) in xs.iter().enumerate() {
            let y = matvec(&qkv, &rms(x, &g1, eps), qw + 2 * kvw);
            let (mut qp, mut kp) = (y[..qw].to_vec(), y[qw..qw + kvw].to_vec());
            for head in qp.chunks_mut(hd).chain(kp.chunks_mut(hd)) {
                rope(head, p, c.rope_theta as f64, c.rope_pairs);
            }
            q.push(qp);
            k.push(kp);
            v.push(y[qw + kvw..].to_vec());
        }
        let wo = w64(&b.attn.proj);
        for p in 0..t {
            let mut att = vec![0.0; qw];
            for h in 0..nh {
                let j = h / (nh / nkv);
                let qh = &q[p][h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=p)
                    .map(|s| (0..hd).map(|i| qh[i] * k[s][j * hd + i]).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (s, w) in e.iter().enumerate() {
                    for i in 0..hd {
                        att[h * hd + i] += w / z * v[s][j * hd + i];
                    }
                }
            }
            let o = matvec(&wo, &att, d);
            xs[p].iter_mut().zip(o).for_each(|(x, o)| *x += o);
        }
        let (g2, eps) = norm_gamma(&b.ln2);
        let (w1, w3, w2) = (w64(&b.mlp.fc), w64(b.mlp.up.as_ref().expect("SwiGLU has up")), w64(&b.mlp.proj));
        let hidden = b.mlp.fc.out_features();
        for x in xs.iter_mut() {
            let h = rms(x, &g2, eps);
            let (a, u) = (matvec(&w1, &h, hidden), matvec(&w3, &h, hidden));
            let gated: Vec<f64> = a.iter().zip(&u).map(|(a, u)| a / (1.0 + (-a).exp()) * u).collect();
            x.iter_mut().zip(matvec(&w2, &gated, d)).for_each(|(x, o)| *x += o);
        }
    }
    let (gf, eps) = norm_gamma(&m.ln_f);
    let head = match &m.lm_head {
        Some(h) => w64(h),
        None => emb,
    };
    xs.iter().map(|x| matvec(&head, &rms(x, &gf, eps), c.vocab_size)).collect()
}

/// `m`'s weights drawn wider than the init (std 0.3) so that every layer changes the logits well
/// above f32 rounding: a reference mismatch cannot hide under near-zero activations.
fn widened(config: GptConfig) -> Gpt {
    let m = Gpt::new(config).unwrap();
    for (i, p) in m.parameters().iter().enumerate() {
        let shape = p.shape();
        let n = p.numel();
        let vals: Vec<f32> = (0..n).map(|j| (((j * 7919 + i * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.6).collect();
        let vals = if shape.len() == 1 { vals.iter().map(|v| 1.0 + v).collect() } else { vals };
        p.set_data(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), vals).unwrap()).unwrap();
    }
    m
}

#[test]
fn the_tensor_model_matches_the_f64_reference_in_every_variant() {
    let ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3];
    for (pairs, (nh, nkv), tied) in [
        (RopePairs::Interleaved, (4, 2), true),
        (RopePairs::HalfSplit, (4, 2), false),
        (RopePairs::Interleaved, (4, 4), false),
        (RopePairs::HalfSplit, (4, 1), true),
    ] {
        let config = GptConfig {
            rope_pairs: pairs,
            tie_weights: tied,
            n_kv_heads: Some(nkv),
            n_heads: nh,
            ..tiny_llama_config(12, 3)
        };
        let m = widened(config);
        let got = m.forward_ids(&ids, 1, ids.len()).unwrap().to_vec();
        let want = reference(&m, &ids);
        let scale = want.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
        let worst = want.iter().flatten().zip(&got).fold(0.0f64, |a, (w, g)| a.max((w - *g as f64).abs()));
        // f32 sums of ≤ 48 products per layer, two layers: rounding is ~1e-6 of the scale.
        assert!(worst <= 1e-4 * scale, "{pairs:?} heads {nh}/{nkv} tied {tied}: off by {worst} (scale {scale})");
        assert!(scale > 1.0, "the widened weights give logits well away from 0 ({scale})");
    }
}

#[test]
fn a_llama_has_the_state_dict_of_its_config() {
    let c = tiny_llama_config(12, 0);
    let m = Gpt::new(c.clone()).unwrap();
    let names: Vec<(String, Vec<usize>)> = m.named_parameters().into_iter().map(|(n, t)| (n, t.shape())).collect();
    assert_eq!(names, c.parameter_shapes());
    let (d, h, hd) = (32, 48, 8);
    assert_eq!(
        names[..6].iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
        [
            "tok_emb.weight",
            "blocks.0.ln1.weight",
            "blocks.0.attn.qkv.weight",
            "blocks.0.attn.proj.weight",
            "blocks.0.ln2.weight",
            "blocks.0.mlp.fc.weight"
        ]
    );
    // Q for 4 heads, K and V for 2: (4 + 2·2)·8 rows.
    assert_eq!(names[2].1, [(4 + 4) * hd, d]);
    let per_block = d + 8 * hd * d + d * 4 * hd + d + 3 * h * d;
    assert_eq!(m.num_parameters(), 12 * d + 2 * per_block + d, "no biases, no position table, tied head");
}

#[test]
fn bad_llama_configs_are_errors() {
    for bad in [
        GptConfig { n_kv_heads: Some(3), ..tiny_llama_config(12, 0) },
        GptConfig { n_kv_heads: Some(0), ..tiny_llama_config(12, 0) },
        GptConfig { rope_theta: f32::NAN, ..tiny_llama_config(12, 0) },
        GptConfig { norm_eps: -1.0, ..tiny_llama_config(12, 0) },
        // d 30 / 6 heads: head size 5 has no rotary pairs.
        GptConfig { d_model: 30, n_heads: 6, n_kv_heads: Some(6), ..tiny_llama_config(12, 0) },
        GptConfig { heads_per_block: Some(vec![2, 2]), ..tiny_llama_config(12, 0) },
    ] {
        assert!(matches!(Gpt::new(bad.clone()), Err(TransformerError::Config(_))), "{bad:?}");
    }
}

#[test]
fn a_tiny_llama_has_exact_gradients() {
    let config = GptConfig {
        vocab_size: 6,
        d_model: 8,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: Some(1),
        mlp_hidden: Some(vec![12]),
        max_seq_len: 8,
        tie_weights: false,
        ..tiny_llama_config(6, 1)
    };
    for pairs in [RopePairs::Interleaved, RopePairs::HalfSplit] {
        let m = widened(GptConfig { rope_pairs: pairs, ..config.clone() });
        let params = m.parameters();
        let ids = [1, 4, 2, 5];
        assert_grads(
            |_| {
                m.forward_ids(&ids, 1, ids.len())
                    .map_err(|e| tt_tensor::TensorError::InvalidArgument { op: "llama", reason: e.to_string() })
            },
            &params,
            2e-3,
            2e-2,
        );
    }
}

#[test]
fn a_tiny_llama_learns_the_pattern() {
    let m = Gpt::new(GptConfig { max_seq_len: 64, ..tiny_llama_config(12, 5) }).unwrap();
    train_on_pattern(&m, 60).unwrap();
    let seq: Vec<usize> = (0..32).map(|i| PATTERN[i % PATTERN.len()]).collect();
    let logits = m.forward_ids(&seq, 1, 32).unwrap();
    let pred = logits.argmax_axis(2).unwrap();
    // Past the first period, every next token is determined by the previous two.
    let right = (8..31).filter(|&p| pred[[0, p]] == seq[p + 1]).count();
    assert_eq!(right, 23, "after 60 steps the Llama predicts the pattern");
}
