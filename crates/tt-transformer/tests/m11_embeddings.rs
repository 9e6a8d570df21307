//! Module 11 — embeddings: token + learned or sinusoidal position embeddings.

mod common;

use tt_tensor::testing::assert_grads;
use tt_tensor::Module;
use tt_transformer::model::sinusoidal_table;
use tt_transformer::{Gpt, PositionEncoding};

#[test]
fn embedding_is_token_row_plus_position_row() {
    let m = common::tiny(10, 1);
    let e = m.embed(&[3, 7, 3], 1, 3, 0).unwrap().to_vec();
    let tok = m.tok_emb.weight.to_vec();
    let pos = m.pos_emb.to_vec();
    let d = 16;
    for (t, &id) in [3usize, 7, 3].iter().enumerate() {
        for j in 0..d {
            assert_eq!(e[t * d + j], tok[id * d + j] + pos[t * d + j]);
        }
    }
    // Starting offset selects later position rows (used by cached decoding).
    let e2 = m.embed(&[3], 1, 1, 5).unwrap().to_vec();
    assert_eq!(e2[0], tok[3 * d] + pos[5 * d]);
    assert!(m.embed(&[3], 1, 1, 32).is_err(), "position past max_seq_len");
}

#[test]
fn sinusoidal_table_values() {
    let t = sinusoidal_table(50, 8);
    assert_eq!(t.shape(), &[50, 8]);
    for i in 0..8 {
        assert!((t[[0, i]] - if i % 2 == 0 { 0.0 } else { 1.0 }).abs() < 1e-7);
    }
    assert!((t[[7, 0]] - 7f32.sin()).abs() < 1e-6);
    assert!((t[[7, 1]] - 7f32.cos()).abs() < 1e-6);
    // Dimension pair 2i uses frequency 1/10000^(2i/d).
    let f = 1.0 / 10000f64.powf(4.0 / 8.0);
    assert!((t[[9, 4]] as f64 - (9.0 * f).sin()).abs() < 1e-6);
}

#[test]
fn sinusoidal_positions_are_not_parameters() {
    let mut cfg = common::tiny_config(10, 0);
    cfg.position = PositionEncoding::Sinusoidal;
    let m = Gpt::new(cfg).unwrap();
    let names: Vec<String> = m.named_parameters().into_iter().map(|p| p.0).collect();
    assert!(!names.iter().any(|n| n.starts_with("pos_emb")));
    assert!(!m.pos_emb.requires_grad());
    let learned = common::tiny(10, 0);
    assert_eq!(learned.num_parameters(), m.num_parameters() + 32 * 16);
}

#[test]
fn embedding_gradients() {
    let m = common::tiny(6, 2);
    // Repeated id 2 accumulates gradient from both positions; position rows get their own.
    assert_grads(
        |p| {
            let tok = p[0].index_select_rows(&[2, 5, 2])?.reshape(&[1, 3, 16])?;
            tok.add(&p[1].narrow(0, 0, 3)?)
        },
        &[m.tok_emb.weight.detach(), m.pos_emb.detach()],
        1e-3,
        1e-2,
    );
}

/// The sampler at its boundary: empty, NaN or +inf logits are named errors; tiny temperatures
/// pick the most likely token instead of overflowing to inf − inf = NaN.
mod sampler_hardening {
    use tt_tensor::TensorError;
    use tt_transformer::generate::{Sampler, Sampling};
    use tt_transformer::TransformerError;

    fn sample(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Sampling {
        Sampling::Sample { temperature, top_k, top_p }
    }

    fn modes() -> Vec<Sampling> {
        vec![Sampling::Greedy, sample(1.0, None, None), sample(0.7, Some(2), Some(0.9))]
    }

    fn says(e: &TransformerError, what: &str) -> bool {
        matches!(e, TransformerError::Tensor(TensorError::InvalidArgument { op: "Sampler::next", .. }))
            && e.to_string().contains(what)
    }

    #[test]
    fn empty_nan_and_infinite_logits_are_errors() {
        for mode in modes() {
            let mut s = Sampler::new(mode, 0).unwrap();
            let e = s.next(&[]).unwrap_err();
            assert!(says(&e, "logits are empty"), "{mode:?}: {e}");
            let e = s.next(&[0.5, f32::NAN, 1.0]).unwrap_err();
            assert!(says(&e, "logits[1] = NaN"), "{mode:?}: {e}");
            let e = s.next(&[0.5, 1.0, f32::INFINITY]).unwrap_err();
            assert!(says(&e, "logits[2] = inf"), "{mode:?}: {e}");
            let e = s.next(&[f32::NEG_INFINITY; 3]).unwrap_err();
            assert!(says(&e, "all 3 logits are -inf"), "{mode:?}: {e}");
        }
    }

    #[test]
    fn masked_tokens_are_never_chosen() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        for mode in modes() {
            let mut s = Sampler::new(mode, 3).unwrap();
            for _ in 0..200 {
                let t = s.next(&logits).unwrap();
                assert!(t == 1 || t == 3, "{mode:?} picked masked token {t}");
            }
        }
    }

    #[test]
    fn tiny_temperature_picks_the_most_likely_token() {
        // 1e-38 passes validation; logits / T used to overflow to +inf, and inf − inf = NaN made
        // every comparison false, so the least likely token was returned.
        for temperature in [1e-38, 1e-45, f32::MIN_POSITIVE] {
            for (logits, best) in [([1.0, 5.0, 3.0], 1), ([-10.0, -5.0, -7.0], 1), ([2.0, -1e30, 1.9], 0)] {
                for (k, p) in [(None, None), (Some(2), None), (None, Some(0.5))] {
                    let mut s = Sampler::new(sample(temperature, k, p), 9).unwrap();
                    for _ in 0..20 {
                        assert_eq!(s.next(&logits).unwrap(), best, "T = {temperature}, logits {logits:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn ordinary_sampling_is_seeded_and_uses_every_likely_token() {
        let logits = [1.0, 1.2, 0.8, -3.0];
        let draw = |seed| {
            let mut s = Sampler::new(sample(1.0, None, None), seed).unwrap();
            (0..300).map(|_| s.next(&logits).unwrap()).collect::<Vec<_>>()
        };
        let a = draw(5);
        assert_eq!(a, draw(5), "same seed, same tokens");
        for t in 0..3 {
            assert!(a.contains(&t), "token {t} never drawn");
        }
        let mut g = Sampler::new(Sampling::Greedy, 0).unwrap();
        assert_eq!(g.next(&logits).unwrap(), 1);
    }
}
