//! Structured pruning shrinks shapes — MLP units, CNN channels, GPT MLP units and attention
//! heads; the shrunk model equals the dense one with those units zeroed.

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
    use tt_transformer::{Gpt, GptConfig};

    pub(super) fn config() -> GptConfig {
        GptConfig { max_seq_len: 32, ..tt_transformer::testing::tiny_config(12, 4) }
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

    /// A quarter and then half of every block's heads removed (4 → 3 → 2 of width 8): the qkv
    /// rows and output-projection columns shrink, and the logits equal the dense model's with
    /// those heads' output-projection columns zeroed. Tolerance 1e-5 absolute on logits of
    /// magnitude ≲ 1: heads are independent until the output projection, so the same products
    /// are summed over fewer zero terms. The KV-cached decoder (f32, and int8 within its rounding)
    /// equals the tensor model at every step, and a checkpoint round-trips the head counts.
    #[test]
    fn pruned_heads_equal_the_masked_dense_gpt_decode_and_round_trip() {
        use tt_compress::structured::prune_gpt_heads;
        use tt_kvcache::KvStorage;
        let ids: Vec<usize> = (0..20).map(|i| (i * 5 + 2) % 12).collect();
        let mut pruned = Gpt::new(config()).unwrap();
        let dense = Gpt::new(config()).unwrap();
        let first = prune_gpt_heads(&mut pruned, 0.25).unwrap();
        assert_eq!(pruned.config.heads_per_block, Some(vec![3, 3]));
        let second = prune_gpt_heads(&mut pruned, 0.34).unwrap();
        assert_eq!(pruned.config.heads_per_block, Some(vec![2, 2]));
        for b in &pruned.blocks {
            assert_eq!((b.attn.n_heads, b.attn.qkv.out_features(), b.attn.proj.in_features()), (2, 48, 16));
        }
        // Heads kept overall, in the original numbering (the second pass indexes the first's).
        let kept: Vec<Vec<usize>> = first.iter().zip(&second).map(|(f, s)| s.iter().map(|&i| f[i]).collect()).collect();
        for (b, keep) in dense.blocks.iter().zip(&kept) {
            let mut w = b.attn.proj.weight.data_mut();
            for h in (0..4).filter(|h| !keep.contains(h)) {
                w.slice_mut(ndarray::s![.., h * 8..(h + 1) * 8]).fill(0.0);
            }
        }
        let (a, b) = (logits(&pruned, &ids), logits(&dense, &ids));
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(d <= 1e-5, "pruned heads vs masked dense: {d}");
        // Per block: 2 heads of 8 removed from qkv (3·16 rows + biases) and proj (16 columns).
        assert_eq!(dense.num_parameters() - pruned.num_parameters(), 2 * (3 * 16 * 32 + 3 * 16 + 32 * 16));
        // Decoding, f32 cache: every step equals the tensor model.
        let v = 12;
        let mut eng = CachedGpt::new(&pruned, 1, OverflowPolicy::Error).unwrap();
        assert_eq!(eng.cache().layer_heads(), &[2, 2]);
        let mut q8 = CachedGpt::new(&pruned, 1, OverflowPolicy::Error).unwrap();
        q8.set_kv_storage(KvStorage::Int8).unwrap();
        let mut got = eng.prefill(&ids[..4], 4).unwrap().to_vec();
        let mut got8 = q8.prefill(&ids[..4], 4).unwrap().to_vec();
        for t in 4..=ids.len() {
            let want = &a[(t - 1) * v..t * v];
            assert!(got.iter().zip(want).all(|(x, y)| (x - y).abs() <= 1e-4), "f32 cache at {t}");
            assert!(got8.iter().zip(want).all(|(x, y)| (x - y).abs() <= 5e-2), "int8 cache at {t}");
            if t < ids.len() {
                got = eng.decode_step(&ids[t..=t]).unwrap().to_vec();
                got8 = q8.decode_step(&ids[t..=t]).unwrap().to_vec();
            }
        }
        // A checkpoint with per-block head counts.
        let dir = std::env::temp_dir().join(format!("tt-compress-heads-{}", std::process::id()));
        let tok = tt_transformer::Tokenizer::Char(tt_transformer::CharTokenizer::from_corpus("abcdefghijk"));
        tt_transformer::checkpoint::save(&dir, &pruned, &tok, serde_json::Value::Null).unwrap();
        let (loaded, _, _) = tt_transformer::checkpoint::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded.config.heads_per_block, Some(vec![2, 2]));
        assert_eq!(logits(&loaded, &ids), a);
        // Errors: removing every head, a bad amount, a config with a bad head count.
        assert!(prune_gpt_heads(&mut Gpt::new(config()).unwrap(), 1.0).is_err());
        assert!(prune_gpt_heads(&mut Gpt::new(config()).unwrap(), 1.5).is_err());
        let mut bad = config();
        bad.heads_per_block = Some(vec![2, 5]);
        let e = Gpt::new(bad).err().unwrap().to_string();
        assert!(e.contains("heads_per_block[1] = 5"), "{e}");
    }

    /// Heads are ranked by the value path, `‖V rows‖·‖proj columns‖`: a head whose V rows are
    /// tiny goes first however large its Q/K rows or its output columns are; scaling V by c and
    /// the output columns by 1/c (the same function) changes no ranking.
    #[test]
    fn the_head_with_the_weakest_value_path_goes() {
        use tt_compress::structured::prune_gpt_heads;
        let weak = |scale_v: f32, scale_o: f32| {
            let m = Gpt::new(config()).unwrap();
            for b in &m.blocks {
                let mut w = b.attn.qkv.weight.data_mut();
                w.slice_mut(ndarray::s![64 + 8..64 + 16, ..]).mapv_inplace(|x| x * scale_v); // head 1's V
                w.slice_mut(ndarray::s![8..16, ..]).mapv_inplace(|x| x * 100.0); // head 1's Q
                b.attn.proj.weight.data_mut().slice_mut(ndarray::s![.., 8..16]).mapv_inplace(|x| x * scale_o);
            }
            m
        };
        let mut m = weak(1e-3, 10.0);
        assert_eq!(prune_gpt_heads(&mut m, 0.25).unwrap(), vec![vec![0, 2, 3]; 2]);
        let (mut a, mut b) = (Gpt::new(config()).unwrap(), weak(4.0, 0.25));
        assert_eq!(prune_gpt_heads(&mut a, 0.5).unwrap(), prune_gpt_heads(&mut b, 0.5).unwrap());
    }
}

/// CNN channels: the digits CNN's two convolutions lose half their filters (by the L2 norm of
/// each filter and bias); the first conv's consumer is the second conv (its input channels), the
/// second's the Linear after Flatten (each channel's 4·4 columns, channel-major). The pruned CNN
/// equals the dense CNN with those filters and biases zeroed: ReLU and max-pooling keep a zero
/// channel zero. Tolerance 1e-5 relative: the same products, summed over fewer zero terms.
mod cnn {
    use tt_compress::structured::{channels_to_keep, prune_conv_channels};
    use tt_tensor::nn::{Conv2d, Sequential, Sigmoid};
    use tt_tensor::{no_grad, Module, Tensor};

    pub(super) fn cnn() -> Sequential {
        tt_tensor::data::digits::cnn(3)
    }

    fn zero_filters(m: &mut Sequential, layer: usize, keep: &[usize]) {
        let c = m.layers[layer].as_conv2d_mut().unwrap();
        let n = c.weight.shape()[0];
        let mut w = c.weight.data_mut();
        let mut b = c.bias.as_ref().unwrap().data_mut();
        for o in (0..n).filter(|o| !keep.contains(o)) {
            w.slice_mut(ndarray::s![o, .., .., ..]).fill(0.0);
            b[[o]] = 0.0;
        }
    }

    #[test]
    fn removing_channels_shrinks_both_convs_and_the_linear_and_equals_the_masked_dense_cnn() {
        let x = Tensor::randn(&[5, 1, 8, 8], 0.0, 1.0, 7);
        let mut m = cnn();
        let mut dense = cnn();
        let before = m.num_parameters();
        let k0 = prune_conv_channels(&mut m, 0, 3, 0.5).unwrap();
        let k3 = prune_conv_channels(&mut m, 3, 7, 0.5).unwrap();
        assert_eq!((k0.len(), k3.len()), (8, 16));
        let shape = |m: &mut Sequential, i: usize| m.layers[i].as_conv2d_mut().unwrap().weight.shape();
        assert_eq!(shape(&mut m, 0), vec![8, 1, 3, 3]);
        assert_eq!(shape(&mut m, 3), vec![16, 8, 3, 3]);
        let fc = m.layers[7].as_linear().unwrap();
        assert_eq!((fc.out_features(), fc.in_features()), (64, 64));
        let removed = (8 * 9 + 8) + (32 * 16 * 9 + 32 - (16 * 8 * 9 + 16)) + 64 * 64;
        assert_eq!(before - m.num_parameters(), removed);
        zero_filters(&mut dense, 0, &k0);
        zero_filters(&mut dense, 3, &k3);
        let (a, b) = (no_grad(|| m.forward(&x)).unwrap().to_vec(), no_grad(|| dense.forward(&x)).unwrap().to_vec());
        let scale = b.iter().fold(0.0f32, |s, v| s.max(v.abs()));
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(d <= 1e-5 * scale.max(1.0), "pruned CNN vs masked dense: {d}");
        assert_eq!(no_grad(|| m.forward(&x)).unwrap().shape(), vec![5, 10]);
    }

    #[test]
    fn the_weakest_filters_go_and_bad_pairs_are_errors() {
        let mut c = Conv2d::new(2, 4, 1, 1, 0, 0);
        // Filter norms (bias 0): 3, 1, 2, 4 — half removed keeps channels 0 and 3.
        c.weight = Tensor::param(
            ndarray::Array4::from_shape_vec((4, 2, 1, 1), vec![3.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 4.0])
                .unwrap()
                .into_dyn(),
        );
        c.bias = Some(Tensor::param(ndarray::Array1::zeros(4).into_dyn()));
        assert_eq!(channels_to_keep(&c, 0.5).unwrap(), vec![0, 3]);
        assert!(channels_to_keep(&c, 1.0).is_err());
        let mut m = cnn();
        assert!(prune_conv_channels(&mut m, 1, 3, 0.5).is_err(), "ReLU is not a Conv2d");
        assert!(prune_conv_channels(&mut m, 0, 7, 0.5).is_err(), "conv 3 between mixes channels");
        assert!(prune_conv_channels(&mut m, 3, 9, 0.5).is_err(), "the Linear 64 → 10 is not the flattened consumer");
        assert!(prune_conv_channels(&mut m, 3, 0, 0.5).is_err(), "order");
        assert!(prune_conv_channels(&mut m, 0, 3, -0.1).is_err());
        let mut sig =
            Sequential::new().layer(Conv2d::new(1, 4, 3, 1, 1, 0)).layer(Sigmoid).layer(Conv2d::new(4, 2, 3, 1, 1, 1));
        assert!(prune_conv_channels(&mut sig, 0, 2, 0.5).is_err(), "sigmoid(0) = 0.5: a removed channel is not zero");
        assert_eq!(m.layers[0].as_conv2d_mut().unwrap().weight.shape()[0], 16, "unchanged after errors");
    }
}

/// Structured pruning rebuilds layers from their stored weights, so a layer carrying a forward
/// transform is refused before anything changes: rebuilt over a pruning mask, pruned weights
/// regrew (and the `Pruning` then refused the model as another one); over an unfinished low-rank
/// factorization, the layer reverted to its unused weight and `Factored::finish` failed.
mod transforms {
    use tt_compress::lowrank::Factored;
    use tt_compress::prune::Pruning;
    use tt_compress::structured::{keep_inputs, keep_outputs, prune_gpt_heads, prune_gpt_mlp, prune_hidden_units};
    use tt_tensor::{no_grad, Module, Tensor};
    use tt_transformer::Gpt;

    use super::mlp;

    fn message<T>(r: tt_compress::Result<T>) -> String {
        r.err().expect("a layer with a forward transform must be refused").to_string()
    }

    /// A layer running another format (packed here; int8 alike) would come back dense f32 from its
    /// rebuilt weight: refused, naming the layer and the format, and the model keeps it.
    #[test]
    fn structured_pruning_refuses_a_layer_running_an_installed_format() {
        let mut m = mlp();
        assert_eq!(tt_accel::packed::pack_linears(&mut m).unwrap(), 2);
        let e = message(prune_hidden_units(&mut m, 0, 2, 0.5));
        assert!(e.contains("'0'") && e.contains("f32-packed") && e.contains("prune before"), "{e}");
        let l = m.layers[0].as_linear().unwrap();
        assert_eq!((l.out_features(), l.installed_projection().map(|p| p.format())), (32, Some("f32-packed")));
    }

    #[test]
    fn structured_pruning_refuses_a_masked_layer_and_leaves_the_model_unchanged() {
        let x = Tensor::randn(&[3, 10], 0.0, 1.0, 2);
        let mut m = mlp();
        let mut p = Pruning::default();
        p.magnitude(&mut m, &["0"], 0.5).unwrap();
        let before = no_grad(|| m.forward(&x)).unwrap().to_vec();
        let e = message(prune_hidden_units(&mut m, 0, 2, 0.0));
        assert!(e.contains("'0'") && e.contains("'mask'") && e.contains("make_permanent"), "{e}");
        let l = m.layers[0].as_linear().unwrap();
        assert_eq!((l.out_features(), l.transform().map(|t| t.name())), (32, Some("mask")), "unchanged");
        assert_eq!(no_grad(|| m.forward(&x)).unwrap().to_vec(), before);
        let e = message(keep_outputs(l, &[0, 1]));
        assert!(e.contains("'mask'"), "{e}");
        // The Pruning still owns the model; once permanent, the layer prunes as before.
        p.make_permanent(&mut m).unwrap();
        assert_eq!(prune_hidden_units(&mut m, 0, 2, 0.5).unwrap().len(), 16);
    }

    #[test]
    fn structured_pruning_refuses_a_factored_layer_before_and_after_it_finishes() {
        let mut m = mlp();
        let f = Factored::factor(&mut m, &["2"], 2).unwrap();
        let e = message(prune_hidden_units(&mut m, 0, 2, 0.0));
        assert!(e.contains("'2'") && e.contains("'lowrank'") && e.contains("Factored::finish"), "{e}");
        let e = message(keep_inputs(m.layers[2].as_linear().unwrap(), &[0]));
        assert!(e.contains("'lowrank'"), "{e}");
        f.finish(&mut m).unwrap();
        // Finished, the layer runs the factors as a low-rank projection, which a layer rebuilt
        // from its dense weight would drop: still refused, now naming the installed format.
        let e = message(prune_hidden_units(&mut m, 0, 2, 0.5));
        assert!(e.contains("'2'") && e.contains("installed 'lowrank' projection"), "{e}");
    }

    #[test]
    fn gpt_pruning_refuses_a_masked_layer_in_any_block_before_changing_one() {
        let mut m = Gpt::new(super::gpt::config()).unwrap();
        let mut p = Pruning::default();
        p.magnitude(&mut m, &["blocks.1.mlp.proj", "blocks.1.attn.qkv"], 0.5).unwrap();
        let e = message(prune_gpt_mlp(&mut m, 0.5));
        assert!(e.contains("'blocks.1.mlp.proj'") && e.contains("'mask'"), "{e}");
        let e = message(prune_gpt_heads(&mut m, 0.5));
        assert!(e.contains("'blocks.1.attn.qkv'") && e.contains("'mask'"), "{e}");
        assert_eq!((m.blocks[0].mlp.fc.out_features(), m.blocks[0].attn.n_heads), (128, 4), "block 0 unchanged");
        assert_eq!((m.config.mlp_hidden.clone(), m.config.heads_per_block.clone()), (None, None));
        p.make_permanent(&mut m).unwrap();
        assert_eq!(prune_gpt_mlp(&mut m, 0.5).unwrap()[1].len(), 64);
    }

    #[test]
    fn conv_pruning_refuses_a_masked_conv() {
        let mut m = super::cnn::cnn();
        let mut p = Pruning::default();
        p.magnitude(&mut m, &["3"], 0.5).unwrap();
        let e = message(tt_compress::structured::prune_conv_channels(&mut m, 0, 3, 0.5));
        assert!(e.contains("'3'") && e.contains("'mask'"), "{e}");
        assert_eq!(m.layers[0].as_conv2d_mut().unwrap().weight.shape()[0], 16, "unchanged");
    }
}

/// Shapes and fields a caller can set that once aborted, hung or panicked: ranking allocated per
/// unit of a layer with no element, `keep_inputs` walked 2⁴⁰ empty rows, a repeated kept index
/// multiplied the copy, and a public head count or weight shape was trusted.
mod hostile {
    use std::sync::mpsc;
    use std::time::Duration;

    use ndarray::{Array1, Array2, Array4};
    use tt_compress::structured::{channels_to_keep, keep_inputs, keep_outputs, prune_gpt_heads, units_to_keep};
    use tt_tensor::nn::{Conv2d, Linear};
    use tt_tensor::Tensor;
    use tt_transformer::Gpt;

    fn within_20_s(f: impl FnOnce() -> bool + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(true), "wrong, or still running after 20 s");
    }

    fn linear(w: Array2<f32>, bias: Option<Array1<f32>>) -> Linear {
        Linear::from_tensors(Tensor::param(w.into_dyn()), bias.map(|b| Tensor::param(b.into_dyn()))).unwrap()
    }

    #[test]
    fn units_with_no_element_are_refused_before_ranking() {
        within_20_s(|| {
            let empty = linear(Array2::zeros((1 << 40, 0)), None);
            let e = units_to_keep(&empty, 0.5).unwrap_err().to_string();
            // With a bias (or inputs) there is something to rank; a small layer still works.
            let biased = linear(Array2::zeros((4, 0)), Some(Array1::from(vec![3.0, 1.0, 2.0, 4.0])));
            e.contains("nothing to rank") && units_to_keep(&biased, 0.5).unwrap() == vec![0, 3]
        });
        let mut c = Conv2d::new(1, 2, 1, 1, 0, 0);
        c.weight = Tensor::param(Array4::<f32>::zeros((1 << 40, 0, 3, 3)).into_dyn());
        c.bias = None;
        assert!(channels_to_keep(&c, 0.5).unwrap_err().to_string().contains("nothing to rank"));
        c.weight = Tensor::param(Array2::<f32>::zeros((2, 9)).into_dyn());
        assert!(channels_to_keep(&c, 0.5).is_err(), "a 2-D conv weight");
        c.weight = Tensor::param(Array4::<f32>::zeros((2, 1, 1, 1)).into_dyn());
        c.bias = Some(Tensor::param(Array1::<f32>::zeros(3).into_dyn()));
        assert!(channels_to_keep(&c, 0.5).is_err(), "a bias of 3 for 2 channels");
    }

    #[test]
    fn keeping_nothing_of_a_layer_with_no_inputs_returns_at_once() {
        within_20_s(|| {
            let l = linear(Array2::zeros((1 << 40, 0)), None);
            keep_inputs(&l, &[]).is_ok_and(|k| (k.out_features(), k.in_features()) == (1 << 40, 0))
        });
    }

    #[test]
    fn kept_indices_must_be_strictly_increasing() {
        let l = linear(Array2::ones((4, 1 << 16)), None);
        // Repeated, a few bytes of indices would ask for 2¹⁶ copies of each row or column.
        let many = vec![0usize; 1 << 16];
        assert!(keep_outputs(&l, &many).is_err() && keep_inputs(&l, &many).is_err());
        assert!(keep_outputs(&l, &[2, 1]).is_err() && keep_inputs(&l, &[5, 3]).is_err(), "decreasing");
        assert!(keep_outputs(&l, &[4]).is_err() && keep_inputs(&l, &[1 << 16]).is_err(), "out of range");
        let k = keep_inputs(&keep_outputs(&l, &[1, 3]).unwrap(), &[0, 7]).unwrap();
        assert_eq!((k.out_features(), k.in_features()), (2, 2));
        let mut short_bias = linear(Array2::ones((4, 2)), Some(Array1::zeros(4)));
        short_bias.bias = Some(Tensor::param(Array1::<f32>::zeros(2).into_dyn()));
        assert!(keep_outputs(&short_bias, &[3]).is_err(), "a bias of 2 for 4 units");
        assert!(units_to_keep(&short_bias, 0.5).is_err(), "a bias of 2 for 4 units");
    }

    #[test]
    fn head_counts_that_wrap_or_divide_by_zero_are_errors() {
        let mut m = Gpt::new(super::gpt::config()).unwrap();
        // 2⁶³ heads of width 8 (d_model 32 / 4 heads): the product wraps to 0 in a release build.
        m.blocks[0].attn.n_heads = 1 << 63;
        assert!(prune_gpt_heads(&mut m, 0.25).is_err());
        m.blocks[0].attn.n_heads = 4;
        m.config.n_heads = 0;
        assert!(prune_gpt_heads(&mut m, 0.25).is_err(), "no heads: no head width");
        m.config.n_heads = 64; // head width 32 / 64 = 0
        assert!(prune_gpt_heads(&mut m, 0.25).is_err(), "heads of width 0");
        m.config.n_heads = 4;
        assert_eq!(
            prune_gpt_heads(&mut m, 0.25).unwrap(),
            prune_gpt_heads(&mut Gpt::new(super::gpt::config()).unwrap(), 0.25).unwrap()
        );
    }
}
