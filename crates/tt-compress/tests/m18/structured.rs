//! Structured pruning shrinks shapes; the shrunk model equals the dense one with those units
//! zeroed.

use tt_compress::structured::{prune_hidden_units, units_to_keep};
use tt_tensor::nn::{Linear, Relu, Sequential};
use tt_tensor::{no_grad, Module, Tensor};

fn mlp() -> Sequential {
    Sequential::new().layer(Linear::new(10, 32, true, 5)).layer(Relu).layer(Linear::new(32, 4, true, 6))
}

/// Removing half the hidden units by L2 norm: the producer is 16×10, the consumer 4×16, the
/// parameter count drops accordingly, and outputs equal the dense model whose removed units have
/// zero rows and biases (ReLU(0) = 0 feeds the consumer nothing). Tolerance 1e-6 relative: the
/// same products, summed over 16 instead of 32 inputs (the zeros add nothing, but the GEMM's
/// blocking can group the sums differently).
#[test]
fn removing_units_shrinks_the_layers_and_equals_the_masked_dense_model() {
    let mut m = mlp();
    let x = Tensor::randn(&[7, 10], 0.0, 1.0, 9);
    let keep = units_to_keep(m.layers[0].as_linear().unwrap(), 0.5).unwrap();
    assert_eq!(keep.len(), 16);
    // The masked dense reference: zero the removed units' rows and biases.
    let dense = mlp();
    {
        let p = dense.layers[0].as_linear().unwrap();
        let mut w = p.weight.data_mut();
        let mut b = p.bias.as_ref().unwrap().data_mut();
        for o in (0..32).filter(|o| !keep.contains(o)) {
            w.slice_mut(ndarray::s![o, ..]).fill(0.0);
            b[[o]] = 0.0;
        }
    }
    let before = m.num_parameters();
    let kept = prune_hidden_units(&mut m, 0, 2, 0.5).unwrap();
    assert_eq!(kept, keep);
    let (p, c) = (m.layers[0].as_linear().unwrap(), m.layers[2].as_linear().unwrap());
    assert_eq!((p.out_features(), p.in_features(), c.out_features(), c.in_features()), (16, 10, 4, 16));
    assert_eq!(before - m.num_parameters(), 16 * 10 + 16 + 4 * 16);
    let (a, b) = (no_grad(|| m.forward(&x)).unwrap().to_vec(), no_grad(|| dense.forward(&x)).unwrap().to_vec());
    let scale = b.iter().fold(0.0f32, |s, v| s.max(v.abs()));
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(d <= 1e-6 * scale.max(1.0), "shrunk vs masked dense: {d}");
}

#[test]
fn the_weakest_units_go_and_bad_settings_are_errors() {
    // Rows with norms 3, 1, 2, 4 (no bias): removing half keeps units 0 and 3.
    let w = ndarray::array![[3.0f32, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 4.0]];
    let l = Linear::from_tensors(Tensor::param(w.into_dyn()), None).unwrap();
    assert_eq!(units_to_keep(&l, 0.5).unwrap(), vec![0, 3]);
    assert!(units_to_keep(&l, 1.0).is_err(), "removing every unit");
    assert!(units_to_keep(&l, -0.5).is_err());
    let mut m = mlp();
    assert!(prune_hidden_units(&mut m, 0, 1, 0.5).is_err(), "ReLU is not a Linear");
    assert!(prune_hidden_units(&mut m, 2, 0, 0.5).is_err(), "order");
    assert!(prune_hidden_units(&mut m, 0, 9, 0.5).is_err(), "out of range");
    assert_eq!(m.layers[0].as_linear().unwrap().out_features(), 32, "unchanged after errors");
}

mod gpt {
    use tt_compress::structured::prune_gpt_mlp;
    use tt_kvcache::{CachedGpt, OverflowPolicy};
    use tt_tensor::{no_grad, Module};
    use tt_transformer::{Gpt, GptConfig, PositionEncoding};

    fn config() -> GptConfig {
        GptConfig {
            vocab_size: 12,
            d_model: 32,
            n_layers: 2,
            n_heads: 4,
            max_seq_len: 32,
            mlp_ratio: 4,
            mlp_hidden: None,
            heads_per_block: None,
            tie_weights: true,
            position: PositionEncoding::Learned,
            dropout: 0.0,
            seed: 4,
        }
    }

    fn logits(m: &Gpt, ids: &[usize]) -> Vec<f32> {
        no_grad(|| m.forward_ids(ids, 1, ids.len())).unwrap().to_vec()
    }

    /// Half of every block's MLP units removed: the shapes and config shrink, the logits equal
    /// the dense model's with those units zeroed (1e-5: the same products over fewer zero terms),
    /// the KV-cached decoder runs the narrower blocks, and the checkpoint round-trips them.
    #[test]
    fn pruned_gpt_equals_the_masked_dense_gpt_decodes_and_round_trips() {
        let ids: Vec<usize> = (0..20).map(|i| (i * 7 + 3) % 12).collect();
        let mut pruned = Gpt::new(config()).unwrap();
        let dense = Gpt::new(config()).unwrap();
        let kept = prune_gpt_mlp(&mut pruned, 0.5).unwrap();
        assert_eq!(pruned.config.mlp_hidden, Some(vec![64, 64]));
        for (b, keep) in dense.blocks.iter().zip(&kept) {
            let mut w = b.mlp.fc.weight.data_mut();
            let mut bias = b.mlp.fc.bias.as_ref().unwrap().data_mut();
            for o in (0..128).filter(|o| !keep.contains(o)) {
                w.slice_mut(ndarray::s![o, ..]).fill(0.0);
                bias[[o]] = 0.0;
            }
        }
        let (a, b) = (logits(&pruned, &ids), logits(&dense, &ids));
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(d <= 1e-5, "pruned vs masked dense: {d}");
        assert!(pruned.num_parameters() < dense.num_parameters());
        // The decoder: the last position's logits equal the tensor model's.
        let mut eng = CachedGpt::new(&pruned, 1, OverflowPolicy::Error).unwrap();
        let last = eng.prefill(&ids, ids.len()).unwrap().to_vec();
        let want = &a[(ids.len() - 1) * 12..];
        assert!(last.iter().zip(want).all(|(x, y)| (x - y).abs() <= 1e-4));
        // A checkpoint with per-block widths.
        let dir = std::env::temp_dir().join(format!("tt-compress-gpt-{}", std::process::id()));
        let tok = tt_transformer::Tokenizer::Char(tt_transformer::CharTokenizer::from_corpus("abcdefghijk"));
        tt_transformer::checkpoint::save(&dir, &pruned, &tok, serde_json::Value::Null).unwrap();
        let (loaded, _, _) = tt_transformer::checkpoint::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded.config.mlp_hidden, Some(vec![64, 64]));
        assert_eq!(logits(&loaded, &ids), a);
        assert!(prune_gpt_mlp(&mut Gpt::new(config()).unwrap(), 1.0).is_err());
        let mut bad = config();
        bad.mlp_hidden = Some(vec![64]);
        assert!(Gpt::new(bad).is_err(), "one width for two layers");
    }
}
