//! Module 14 — KV caching: the cache API, cached logits equal to full recomputation at every step,
//! identical greedy text, sliding-window semantics, and allocation-free decode steps.
//!
//! Tolerance: cached and uncached logits are the same f32 math summed in different orders (GEMM
//! blocking vs. 8-lane dot products, one softmax row vs. a masked full row). Rounding differences
//! are ~1e-6 relative per op; with logits of magnitude ≤ ~10 after 2–4 layers they stay near 1e-5.
//! 1e-4 leaves a 10× margin, while any real bug (a wrong position, a missing or stale key) moves
//! logits by far more.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tt_kvcache::{generate_cached, generate_uncached, CacheError, CachedGpt, KvCache, KvError, OverflowPolicy};
use tt_tensor::kernels::{dot, linear_rows, linear_rows_reference};
use tt_tensor::no_grad;
use tt_transformer::generate::{generate_batch, GenerateConfig, Sampling};
use tt_transformer::{Gpt, GptConfig, TransformerError};

/// Counts allocations made by the current thread (tests run on parallel threads).
struct CountingAlloc;
thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}
// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: p was allocated by System.alloc with layout l.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const TOL: f32 = 1e-4;

fn config(vocab: usize, seed: u64, layers: usize) -> GptConfig {
    GptConfig { n_layers: layers, max_seq_len: 40, ..tt_transformer::testing::tiny_config(vocab, seed) }
}

/// A model trained briefly on a repeating pattern, so its logits are far from uniform.
fn trained(seed: u64) -> Gpt {
    let m = Gpt::new(config(12, seed, 2)).unwrap();
    tt_transformer::testing::train_on_pattern(&m, 60).unwrap();
    m
}

/// Last-position logits of every sequence by full recomputation (the tt-transformer reference).
fn reference_last(m: &Gpt, seqs: &[Vec<usize>]) -> Vec<f32> {
    let (b, t, v) = (seqs.len(), seqs[0].len(), m.config.vocab_size);
    let flat: Vec<usize> = seqs.iter().flatten().copied().collect();
    let all = no_grad(|| m.forward_ids(&flat, b, t)).unwrap().to_vec();
    (0..b).flat_map(|i| all[(i * t + t - 1) * v..(i * t + t) * v].to_vec()).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Checks cached logits against the reference after the prompt and after every decode step,
/// until the context is full.
fn check_every_step(m: &Gpt, batch: usize, prompt_len: usize) {
    let v = m.config.vocab_size;
    let mut seqs: Vec<Vec<usize>> =
        (0..batch).map(|b| (0..prompt_len).map(|i| (i * 3 + b * 5 + 1) % v).collect()).collect();
    let mut eng = CachedGpt::new(m, batch, OverflowPolicy::Error).unwrap();
    let flat: Vec<usize> = seqs.iter().flatten().copied().collect();
    let mut logits = eng.prefill(&flat, prompt_len).unwrap().to_vec();
    loop {
        let want = reference_last(m, &seqs);
        let diff = max_diff(&logits, &want);
        assert!(diff <= TOL, "batch {batch}, prompt {prompt_len}, length {}: max |Δ| = {diff}", seqs[0].len());
        if seqs[0].len() == m.config.max_seq_len {
            break;
        }
        // Feed a varied next token (not always the arg-max) so many paths are exercised.
        let next: Vec<usize> = (0..batch).map(|b| (seqs[b].len() * 7 + b) % v).collect();
        for (s, &t) in seqs.iter_mut().zip(&next) {
            s.push(t);
        }
        logits = eng.decode_step(&next).unwrap().to_vec();
    }
    assert_eq!(eng.cache().len(), m.config.max_seq_len);
}

#[test]
fn cached_logits_equal_full_recompute_random_model() {
    let m = Gpt::new(config(17, 3, 3)).unwrap();
    for prompt_len in 1..=16 {
        check_every_step(&m, 1, prompt_len);
    }
    for prompt_len in [1, 5, 16] {
        check_every_step(&m, 4, prompt_len);
    }
}

#[test]
fn cached_logits_equal_full_recompute_trained_model() {
    let m = trained(4);
    for prompt_len in [1, 2, 7, 16] {
        check_every_step(&m, 1, prompt_len);
        check_every_step(&m, 4, prompt_len);
    }
}

#[test]
fn greedy_generation_is_identical_with_and_without_cache() {
    let m = trained(5);
    let prompts: Vec<Vec<usize>> = vec![vec![1, 5, 9], vec![2, 7, 7], vec![3, 1, 5], vec![9, 2, 7]];
    let cfg = GenerateConfig::greedy(30);
    let reference = generate_batch(&m, &prompts, &cfg).unwrap();
    let mut eng = CachedGpt::new(&m, 4, OverflowPolicy::Error).unwrap();
    let cached = generate_cached(&mut eng, &prompts, &cfg).unwrap();
    let uncached = generate_uncached(&mut eng, &prompts, &cfg).unwrap();
    assert_eq!(cached.tokens, reference);
    assert_eq!(uncached.tokens, reference);
    assert_eq!(cached.step_seconds.len(), 30);
    // Seeded sampling matches too: the same seeds drive the same samplers on equal logits.
    let s = GenerateConfig {
        max_new_tokens: 20,
        sampling: Sampling::Sample { temperature: 0.8, top_k: Some(5), top_p: Some(0.9) },
        seed: 11,
        stop_tokens: vec![],
    };
    let mut one = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
    assert_eq!(
        generate_cached(&mut one, &prompts[..1], &s).unwrap().tokens,
        generate_batch(&m, &prompts[..1], &s).unwrap()
    );
}

#[test]
fn decode_steps_allocate_nothing() {
    let m = trained(6);
    for batch in [1, 4] {
        let mut eng = CachedGpt::new(&m, batch, OverflowPolicy::Error).unwrap();
        let prompt: Vec<usize> = (0..batch * 5).map(|i| i % 12).collect();
        eng.prefill(&prompt, 5).unwrap();
        let toks = vec![3usize; batch];
        let before = ALLOCS.with(Cell::get);
        for _ in 0..20 {
            eng.decode_step(&toks).unwrap();
        }
        assert_eq!(ALLOCS.with(Cell::get) - before, 0, "batch {batch}: decode steps allocated");
    }
}

#[test]
fn cache_api_memory_and_reset() {
    let mut c = KvCache::new(2, 3, 4, 10, 8, OverflowPolicy::Error).unwrap();
    assert_eq!(c.memory_bytes(), 2 * 2 * 3 * 4 * 10 * 8 * 4);
    assert_eq!((c.len(), c.capacity()), (0, 10));
    let k: Vec<f32> = (0..3 * 4 * 2 * 8).map(|i| i as f32).collect();
    let v: Vec<f32> = k.iter().map(|x| -x).collect();
    c.append(0, &k, &v, 2).unwrap();
    assert_eq!(c.keys(0, 1, 2).unwrap().len(), 2 * 8, "appended layer sees its new positions");
    assert_eq!(c.keys(1, 1, 2).unwrap().len(), 0);
    // Layout [batch, head, n, dim]: sequence 1, head 2, position 1 starts at ((1*4+2)*2+1)*8.
    assert_eq!(c.keys(0, 1, 2).unwrap()[8], (((4 + 2) * 2 + 1) * 8) as f32);
    assert_eq!(c.values(0, 1, 2).unwrap()[8], -((((4 + 2) * 2 + 1) * 8) as f32));
    assert!(c.advance(2).is_err(), "layer 1 has not appended");
    assert!(c.append(0, &k, &v, 2).is_err(), "layer 0 appended twice in a step");
    c.append(1, &k, &v, 2).unwrap();
    c.advance(2).unwrap();
    assert_eq!((c.len(), c.position()), (2, 2));
    assert!(matches!(c.append(2, &k, &v, 2), Err(CacheError::BadLayer { .. })));
    assert!(c.append(0, &k[..8], &v[..8], 2).is_err());
    let ptr = c.keys(0, 0, 0).unwrap().as_ptr();
    c.reset();
    assert_eq!((c.len(), c.position()), (0, 0));
    c.append(0, &k, &v, 2).unwrap();
    assert_eq!(c.keys(0, 0, 0).unwrap().as_ptr(), ptr, "reset reuses the same memory");
    assert_eq!(c.memory_bytes(), 2 * 2 * 3 * 4 * 10 * 8 * 4);
    c.advance(2).unwrap_err();
    c.append(1, &k, &v, 2).unwrap();
    c.advance(2).unwrap();
    c.truncate(1).unwrap();
    assert_eq!((c.len(), c.position(), c.keys(1, 0, 0).unwrap().len()), (1, 1, 8));
    assert!(c.truncate(2).is_err());
    assert!(KvCache::new(0, 1, 1, 1, 1, OverflowPolicy::Error).is_err());
    assert!(KvCache::new(1, 1, 1, 4, 1, OverflowPolicy::SlidingWindow(5)).is_err());
}

#[test]
fn overflow_is_an_error_naming_position_and_capacity() {
    let mut c = KvCache::new(1, 1, 1, 3, 2, OverflowPolicy::Error).unwrap();
    let kv = [0.0f32; 2];
    for _ in 0..3 {
        c.append(0, &kv, &kv, 1).unwrap();
        c.advance(1).unwrap();
    }
    let e = c.append(0, &kv, &kv, 1).unwrap_err();
    assert_eq!(e, CacheError::Overflow { position: 3, capacity: 3 });
    assert!(e.to_string().contains("position 3") && e.to_string().contains("capacity 3"));
    // Through the model: the context bound is reported as a context overflow.
    let m = Gpt::new(config(10, 1, 1)).unwrap();
    let mut eng = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
    eng.prefill(&[1; 40], 40).unwrap();
    assert!(matches!(
        eng.decode_step(&[1]),
        Err(KvError::Model(TransformerError::ContextOverflow { position: 40, max_seq_len: 40 }))
    ));
    assert!(eng.decode_step(&[10]).is_err(), "id outside vocab");
    assert!(eng.decode_step(&[1, 2]).is_err(), "wrong batch");
    // A generation longer than the context is reported up front, not by allocating for it.
    let huge = GenerateConfig::greedy(1 << 40);
    assert!(matches!(
        generate_cached(&mut eng, &[vec![1, 2]], &huge),
        Err(KvError::Model(TransformerError::ContextOverflow { max_seq_len: 40, .. }))
    ));
    assert!(KvCache::new(1 << 20, 1 << 20, 1 << 20, 40, 1 << 20, OverflowPolicy::Error).is_err(), "overflowing size");
}

#[test]
fn a_shorter_context_sizes_the_cache_and_computes_the_same() {
    let m = trained(13);
    let mut full = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
    let mut short = CachedGpt::with_context(&m, 1, OverflowPolicy::Error, 12).unwrap();
    assert_eq!(short.cache().memory_bytes() * m.config.max_seq_len, full.cache().memory_bytes() * 12);
    let seq = [1usize, 5, 9, 2];
    assert_eq!(short.prefill(&seq, 4).unwrap(), full.prefill(&seq, 4).unwrap());
    for t in 0..8 {
        assert_eq!(short.decode_step(&[t]).unwrap(), full.decode_step(&[t]).unwrap(), "step {t}");
    }
    assert!(matches!(short.decode_step(&[0]), Err(KvError::Model(TransformerError::ContextOverflow { .. }))));
    for bad in [0, m.config.max_seq_len + 1] {
        assert!(CachedGpt::with_context(&m, 1, OverflowPolicy::Error, bad).is_err(), "context {bad}");
    }
}

#[test]
fn sliding_window_cache_keeps_the_last_w_positions() {
    let mut c = KvCache::new(1, 1, 1, 8, 1, OverflowPolicy::SlidingWindow(3)).unwrap();
    assert_eq!(c.capacity(), 3);
    for p in 0..6 {
        c.append(0, &[p as f32], &[10.0 * p as f32], 1).unwrap();
        c.advance(1).unwrap();
    }
    assert_eq!(c.keys(0, 0, 0).unwrap(), &[3.0, 4.0, 5.0]);
    assert_eq!(c.values(0, 0, 0).unwrap(), &[30.0, 40.0, 50.0]);
    assert!(matches!(c.keys(1, 0, 0), Err(CacheError::BadLayer { layer: 1, layers: 1 })));
    assert!(c.values(0, 1, 0).is_err() && c.keys(0, 0, 1).is_err());
    assert_eq!((c.len(), c.position()), (3, 6));
}

/// Reference for sliding-window attention: full recomputation over every position with the
/// banded causal mask `i − W < j ≤ i`, written as plain loops over the model's weights.
fn windowed_reference_last(m: &Gpt, seq: &[usize], window: usize) -> Vec<f32> {
    let c = &m.config;
    let (d, nh, hd, t) = (c.d_model, c.n_heads, c.head_dim(), seq.len());
    let (tok, pos) = (m.tok_emb.weight.to_vec(), m.pos_emb.to_vec());
    let mut x: Vec<f32> =
        (0..t).flat_map(|p| (0..d).map(move |j| (p, j))).map(|(p, j)| tok[seq[p] * d + j] + pos[p * d + j]).collect();
    let ln = |v: &[f32], n: &tt_transformer::model::Norm| {
        let tt_transformer::model::Norm::Layer(n) = n else { panic!("a GPT-2 model has layer norms") };
        let mut o = vec![0.0; v.len()];
        tt_tensor::kernels::layer_norm_row(v, &n.gamma.to_vec(), &n.beta.to_vec(), n.eps, &mut o);
        o
    };
    let lin = |x: &[f32], l: &tt_tensor::nn::Linear| {
        let b = l.bias.as_ref().map(|b| b.to_vec());
        linear_rows_reference(x, &l.weight.to_vec(), b.as_deref(), t, l.in_features(), l.out_features())
    };
    for blk in &m.blocks {
        let h: Vec<f32> = (0..t).flat_map(|p| ln(&x[p * d..(p + 1) * d], &blk.ln1)).collect();
        let qkv = lin(&h, &blk.attn.qkv);
        let mut att = vec![0.0; t * d];
        for hh in 0..nh {
            for i in 0..t {
                let lo = (i + 1).saturating_sub(window);
                let q = &qkv[i * 3 * d + hh * hd..i * 3 * d + (hh + 1) * hd];
                let mut sc: Vec<f32> = (lo..=i)
                    .map(|j| dot(q, &qkv[j * 3 * d + d + hh * hd..j * 3 * d + d + (hh + 1) * hd]) / (hd as f32).sqrt())
                    .collect();
                tt_tensor::kernels::softmax_row(&mut sc);
                for (k, j) in (lo..=i).enumerate() {
                    for e in 0..hd {
                        att[i * d + hh * hd + e] += sc[k] * qkv[j * 3 * d + 2 * d + hh * hd + e];
                    }
                }
            }
        }
        let o = lin(&att, &blk.attn.proj);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let h: Vec<f32> = (0..t).flat_map(|p| ln(&x[p * d..(p + 1) * d], &blk.ln2)).collect();
        let mut f = lin(&h, &blk.mlp.fc);
        f.iter_mut().for_each(|v| *v = tt_tensor::kernels::gelu_tanh(*v));
        let o = lin(&f, &blk.mlp.proj);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    }
    let hl = ln(&x[(t - 1) * d..t * d], &m.ln_f);
    (0..c.vocab_size).map(|o| dot(&tok[o * d..(o + 1) * d], &hl)).collect()
}

#[test]
fn windowed_reference_without_a_window_is_the_model() {
    let m = trained(7);
    let seq: Vec<usize> = (0..20).map(|i| (i * 5 + 2) % 12).collect();
    assert!(max_diff(&windowed_reference_last(&m, &seq, usize::MAX), &reference_last(&m, &[seq])) <= TOL);
}

#[test]
fn sliding_window_equals_banded_attention() {
    let m = trained(8);
    for window in [4, 9] {
        let mut eng = CachedGpt::new(&m, 1, OverflowPolicy::SlidingWindow(window)).unwrap();
        assert_eq!(eng.cache().memory_bytes(), 2 * 2 * 4 * window * 8 * 4);
        // A prompt longer than the window is fed one token at a time past the window.
        let mut seq: Vec<usize> = (0..12).map(|i| (i * 5 + 1) % 12).collect();
        let mut logits = eng.prefill(&seq, seq.len()).unwrap().to_vec();
        while seq.len() < 40 {
            let want = windowed_reference_last(&m, &seq, window);
            let diff = max_diff(&logits, &want);
            assert!(diff <= TOL, "window {window}, length {}: {diff}", seq.len());
            let next = (seq.len() * 3) % 12;
            seq.push(next);
            logits = eng.decode_step(&[next]).unwrap().to_vec();
        }
        // And it really differs from unbounded attention once past the window.
        assert!(max_diff(&logits, &reference_last(&m, &[seq])) > 1e-3);
    }
}

#[test]
fn projection_kernel_matches_reference() {
    let x: Vec<f32> = (0..16 * 37).map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5).collect();
    let w: Vec<f32> = (0..29 * 37).map(|i| ((i * 5) % 11) as f32 / 11.0 - 0.5).collect();
    let b: Vec<f32> = (0..29).map(|i| i as f32 / 29.0).collect();
    for rows in [1, 3, 8, 16] {
        let mut y = vec![0.0; rows * 29];
        for bias in [Some(&b[..]), None] {
            linear_rows(&x, &w, bias, rows, 37, 29, &mut y);
            let want = linear_rows_reference(&x, &w, bias, rows, 37, 29);
            assert!(max_diff(&y, &want) < 1e-5, "rows {rows}");
        }
    }
}

// ---- The seam: the decoder shares the model's layers, in any weight format ----

mod seam {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::Arc;

    use super::{check_every_step, config, max_diff, reference_last, trained, TOL};
    use tt_kvcache::{CachedGpt, OverflowPolicy};
    use tt_tensor::hook::{set_observer, OpEvent, OpObserver};
    use tt_tensor::nn::{map_linears, Linear};
    use tt_tensor::testing::TransposedF64;
    use tt_tensor::Tensor;
    use tt_transformer::corpus::QaPair;
    use tt_transformer::eval::{exact_match, exact_match_with, next_token_loss};
    use tt_transformer::generate::FullRecompute;
    use tt_transformer::{CharTokenizer, Gpt, Tokenizer};

    /// Keeps the rows `keep` of `fc` and the matching input columns of `proj` in one block:
    /// what structured pruning of MLP hidden units does.
    fn narrow_mlp(m: &mut Gpt, block: usize, keep: &[usize]) {
        let mlp = &mut m.blocks[block].mlp;
        let (fw, fb, pw) =
            (mlp.fc.weight.data().clone(), mlp.fc.bias.as_ref().unwrap().to_vec(), mlp.proj.weight.data().clone());
        let d = fw.shape()[1];
        let fc_w: Vec<f32> = keep.iter().flat_map(|&r| (0..d).map(move |c| (r, c))).map(|(r, c)| fw[[r, c]]).collect();
        let fc_b: Vec<f32> = keep.iter().map(|&r| fb[r]).collect();
        let proj_w: Vec<f32> =
            (0..d).flat_map(|o| keep.iter().map(move |&r| (o, r))).map(|(o, r)| pw[[o, r]]).collect();
        let h = keep.len();
        let param = |v: Vec<f32>, shape: &[usize]| Tensor::param(ndarray::ArrayD::from_shape_vec(shape, v).unwrap());
        mlp.fc = Linear::from_tensors(param(fc_w, &[h, d]), Some(param(fc_b, &[h]))).unwrap();
        mlp.proj = Linear::from_tensors(param(proj_w, &[d, h]), mlp.proj.bias.clone()).unwrap();
    }

    #[test]
    fn a_block_with_a_narrowed_mlp_decodes_like_the_tensor_model() {
        let mut m = trained(9);
        // 128 → 96 hidden units in block 1 (every fourth unit dropped); block 0 keeps 128.
        let keep: Vec<usize> = (0..128).filter(|i| i % 4 != 1).collect();
        narrow_mlp(&mut m, 1, &keep);
        assert_eq!(m.blocks[1].mlp.fc.out_features(), 96);
        assert_eq!(m.blocks[0].mlp.fc.out_features(), 128);
        for (batch, prompt) in [(1, 1), (1, 9), (4, 3)] {
            check_every_step(&m, batch, prompt);
        }
    }

    #[test]
    fn the_decoder_runs_installed_projections_and_shares_weights() {
        let mut m = trained(10);
        map_linears(&mut m, |_, l| l.set_projection(Arc::new(TransposedF64::of(l.projection()?.as_ref())))).unwrap();
        let eng = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        let formats = eng.projection_formats();
        assert_eq!(formats.len(), 4 * 2 + 1);
        assert!(formats[..8].iter().all(|f| f.1 == "f64-transposed") && formats[8].1 == "f32", "{formats:?}");
        drop(eng);
        check_every_step(&m, 1, 4);
        // A deliberately wrong projection in one layer shows up in the decoder's logits.
        let mut wrong = trained(10);
        let fc = &mut wrong.blocks[1].mlp.fc;
        fc.set_projection(Arc::new(TransposedF64::wrong(fc.projection().unwrap().as_ref(), 0.05))).unwrap();
        let mut eng = CachedGpt::new(&wrong, 1, OverflowPolicy::Error).unwrap();
        let seq = vec![1usize, 5, 9, 2];
        let got = eng.prefill(&seq, 4).unwrap().to_vec();
        assert!(max_diff(&got, &reference_last(&trained(10), &[seq])) > 1e-3);
        // Dense layers are shared, not copied: a weight edited after construction is seen.
        let m = trained(11);
        let mut eng = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        m.blocks[0].mlp.fc.weight.data_mut().mapv_inplace(|v| v * 0.5);
        let seq = vec![3usize, 1, 4, 1, 5];
        let got = eng.prefill(&seq, 5).unwrap().to_vec();
        assert!(max_diff(&got, &reference_last(&m, &[seq])) <= TOL);
    }

    /// A GPT whose projections are all in another format, frozen (the dense weights released),
    /// decodes and generates exactly as before freezing, and saves the same checkpoint.
    #[test]
    fn a_frozen_gpt_decodes_and_saves_as_before() {
        use tt_kvcache::generate_cached;
        use tt_transformer::generate::GenerateConfig;
        let mut m = trained(12);
        map_linears(&mut m, |_, l| l.set_projection(Arc::new(TransposedF64::of(l.projection()?.as_ref())))).unwrap();
        // The token table too: lookups read its rows, and the tied head multiplies by it.
        let table = Arc::new(TransposedF64::of(m.tok_emb.projection().unwrap().as_ref()));
        m.tok_emb.set_projection(table).unwrap();
        let params =
            |m: &Gpt| tt_tensor::serialize::to_safetensors_bytes(&tt_tensor::Module::named_parameters(m), None);
        let saved = params(&m).unwrap();
        let prompts = vec![vec![1usize, 5, 9, 2]];
        let cfg = GenerateConfig::greedy(30);
        let mut before = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        let want = generate_cached(&mut before, &prompts, &cfg).unwrap().tokens;
        let want_logits = before.prefill(&prompts[0], 4).unwrap().to_vec();
        drop(before);

        let frozen = tt_tensor::nn::freeze(&mut m).unwrap();
        assert_eq!(frozen.layers.len(), 9, "{:?}", frozen.layers);
        assert!(m.tok_emb.weight.is_released() && m.blocks.iter().all(|b| b.mlp.fc.weight.is_released()));
        let mut after = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        assert_eq!(generate_cached(&mut after, &prompts, &cfg).unwrap().tokens, want);
        assert_eq!(after.prefill(&prompts[0], 4).unwrap(), &want_logits[..]);
        assert_eq!(params(&m).unwrap(), saved);
        assert!(m.blocks.iter().all(|b| b.mlp.fc.weight.is_released()), "saving made a weight resident");
    }

    #[test]
    fn inconsistent_layer_shapes_are_errors_naming_the_block() {
        let mut m = Gpt::new(config(12, 0, 2)).unwrap();
        m.blocks[1].mlp.proj = Linear::new(100, 32, true, 0); // fc gives 128, proj wants 100
        let err = CachedGpt::new(&m, 1, OverflowPolicy::Error).err().unwrap().to_string();
        assert!(err.contains("blocks.1") && err.contains("mlp.proj"), "{err}");
        assert!(CachedGpt::new(&Gpt::new(config(12, 0, 2)).unwrap(), 0, OverflowPolicy::Error).is_err());
    }

    #[derive(Default)]
    struct Events(RefCell<Vec<(String, &'static str)>>);
    impl OpObserver for Events {
        fn on_op(&self, e: OpEvent) {
            self.0.borrow_mut().push((e.layer, e.name));
        }
    }

    #[test]
    fn a_decode_step_reports_ops_and_layers_to_the_profiler() {
        let m = trained(12);
        let mut eng = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        eng.prefill(&[1, 2, 3], 3).unwrap();
        let events = Rc::new(Events::default());
        set_observer(Some(events.clone()));
        eng.decode_step(&[4]).unwrap();
        set_observer(None);
        let ev = events.0.borrow();
        let count = |layer: &str, op: &str| ev.iter().filter(|e| e.0 == layer && e.1 == op).count();
        for l in ["blocks.0", "blocks.1"] {
            assert_eq!(
                (
                    count(l, "layer_norm"),
                    count(l, "linear"),
                    count(l, "attention"),
                    count(l, "linear+gelu"),
                    count(l, "add")
                ),
                (2, 3, 1, 1, 2),
                "{l}: {ev:?}"
            );
        }
        assert_eq!((count("embed", "embedding"), count("head", "layer_norm"), count("head", "linear")), (1, 1, 1));
    }

    fn qa() -> (Tokenizer, Vec<QaPair>) {
        let pairs: Vec<QaPair> = ["hi", "what is 2 plus 2?", "who are you?", "say yes", "count to three"]
            .iter()
            .map(|q| QaPair { category: "test".into(), question: q.to_string(), answer: "yes".into() })
            .collect();
        let text: String = pairs.iter().map(|p| format!("{}{}\n", p.prompt(), p.answer)).collect();
        (Tokenizer::Char(CharTokenizer::from_corpus(&text)), pairs)
    }

    #[test]
    fn quality_is_measured_on_the_engine_that_runs() {
        let (tok, pairs) = qa();
        let mut cfg = config(tt_transformer::Tokenize::vocab_size(&tok), 3, 2);
        cfg.max_seq_len = 64;
        let m = Gpt::new(cfg).unwrap();
        let (em_tensor, a_tensor) = exact_match(&m, &tok, &pairs, 12, 2).unwrap();
        let (em_cached, a_cached) =
            exact_match_with(|| Ok(CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap()), &tok, &pairs, 12, 2)
                .unwrap();
        assert_eq!(em_tensor, em_cached);
        let gen = |a: &[tt_transformer::eval::Answer]| a.iter().map(|x| x.generated.clone()).collect::<Vec<_>>();
        assert_eq!(gen(&a_tensor), gen(&a_cached), "the same answers, token for token");
        let ids: Vec<usize> = (0..300).map(|i| (i * 5 + i / 7) % m.config.vocab_size).collect();
        let full = next_token_loss(&mut FullRecompute::new(&m), &ids, 40, 4).unwrap();
        let cached = next_token_loss(&mut CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap(), &ids, 40, 4).unwrap();
        assert!((full - cached).abs() < 1e-4, "{full} vs {cached}");
        // An engine whose projections are wrong is scored as it is, not as its dense twin.
        let mut bad = Gpt::new(m.config.clone()).unwrap();
        map_linears(&mut bad, |_, l| l.set_projection(Arc::new(TransposedF64::wrong(l.projection()?.as_ref(), 0.5))))
            .unwrap();
        let worse = next_token_loss(&mut CachedGpt::new(&bad, 1, OverflowPolicy::Error).unwrap(), &ids, 40, 4).unwrap();
        assert!((worse - full).abs() > 1e-3, "{worse} vs {full}");
    }
}

mod all_heads {
    use super::{max_diff, trained};
    use tt_kvcache::{CachedGpt, KvCache, OverflowPolicy};
    use tt_tensor::kernels::{HeadsJob, RowKernels};

    /// A heads kernel written plainly: head by head through the reference one-query kernel.
    fn heads_one_by_one(job: &HeadsJob, out: &mut [f32]) {
        let r = RowKernels::reference();
        let hd = job.head_dim;
        let mut scores = vec![0.0; job.slots];
        for h in 0..job.heads {
            let kv = h * job.head_stride..h * job.head_stride + job.slots * hd;
            (r.decode_attention)(
                &job.q[h * hd..(h + 1) * hd],
                &job.keys[kv.clone()],
                &job.values[kv],
                hd,
                job.scale,
                &mut scores,
                &mut out[h * hd..(h + 1) * hd],
            );
        }
    }

    #[test]
    fn a_kernel_taking_all_heads_sees_the_same_cache_rows() {
        let m = trained(13);
        for batch in [1, 3] {
            let mut plain = CachedGpt::new(&m, batch, OverflowPolicy::Error).unwrap();
            let mut all = CachedGpt::new(&m, batch, OverflowPolicy::Error).unwrap();
            all.set_row_kernels(RowKernels {
                decode_attention_heads: Some(heads_one_by_one),
                ..RowKernels::reference()
            });
            let prompt: Vec<usize> = (0..batch * 5).map(|i| (i * 7 + 1) % 12).collect();
            let (a, b) = (plain.prefill(&prompt, 5).unwrap().to_vec(), all.prefill(&prompt, 5).unwrap().to_vec());
            assert_eq!(a, b);
            for step in 0..20 {
                let next: Vec<usize> = (0..batch).map(|i| (step * 5 + i) % 12).collect();
                let a = plain.decode_step(&next).unwrap().to_vec();
                let b = all.decode_step(&next).unwrap().to_vec();
                assert!(max_diff(&a, &b) == 0.0, "batch {batch}, step {step}");
            }
        }
        // The layout the kernel relies on.
        let mut c = KvCache::new(1, 2, 3, 4, 2, OverflowPolicy::Error).unwrap();
        let k: Vec<f32> = (0..2 * 3 * 2).map(|i| i as f32).collect();
        c.append(0, &k, &k, 1).unwrap();
        let r = c.heads(0, 1).unwrap();
        assert_eq!((r.head_stride, r.slots), (4 * 2, 1));
        assert_eq!(&r.keys[2 * r.head_stride..2 * r.head_stride + 2], c.keys(0, 1, 2).unwrap());
        assert!(c.heads(0, 2).is_err());
    }
}

/// The engine's softmax row kernel is what prefill attention runs (the fused one in tt-accel's
/// table): a table whose softmax is marked changes the prefill's logits, and decode steps (whose
/// attention kernel owns its softmax) do not call it.
mod softmax_row_kernel {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::trained;
    use tt_kvcache::{CachedGpt, OverflowPolicy};
    use tt_tensor::kernels::{softmax_row, RowKernels};

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn counted(row: &mut [f32]) {
        CALLS.fetch_add(1, Ordering::Relaxed);
        softmax_row(row);
    }

    #[test]
    fn prefill_attention_runs_the_tables_softmax() {
        let m = trained(14);
        let mut plain = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        let mut counting = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        counting.set_row_kernels(RowKernels { softmax: counted, ..RowKernels::reference() });
        let before = CALLS.load(Ordering::Relaxed);
        let a = plain.prefill(&[1, 2, 3, 4], 4).unwrap().to_vec();
        let b = counting.prefill(&[1, 2, 3, 4], 4).unwrap().to_vec();
        assert_eq!(a, b, "the same softmax, counted");
        // 4 query rows per head, 4 heads, 2 layers.
        assert_eq!(CALLS.load(Ordering::Relaxed) - before, 4 * 4 * 2);
    }
}

/// The int8 storage option: rows quantized within half a step, the same cache protocol, and a
/// decoder whose prefill and decode steps see the same quantized rows.
mod int8_cache {
    use super::*;
    use tt_kvcache::cache::quantize_row_q8;
    use tt_kvcache::KvStorage;

    #[test]
    fn rows_round_trip_within_half_a_step_and_zero_rows_stay_zero() {
        let x: Vec<f32> = (0..32).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let mut q = [0i8; 32];
        let d = quantize_row_q8(&x, &mut q);
        assert!((d - x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0).abs() < 1e-9);
        for (&v, &c) in x.iter().zip(&q) {
            assert!((v - d * c as f32).abs() <= d / 2.0 * (1.0 + 1e-5), "{v} → {c}");
        }
        assert!(q.iter().any(|&c| c.abs() == 127));
        let d0 = quantize_row_q8(&[0.0; 8], &mut q[..8]);
        assert_eq!((d0, &q[..8]), (0.0, &[0i8; 8][..]));
        assert!(quantize_row_q8(&[1.0, f32::NAN], &mut q[..2]).is_nan());
    }

    #[test]
    fn the_int8_cache_keeps_the_protocol_and_is_smaller() {
        let (l, b, h, s, d) = (2, 2, 3, 8, 32);
        let mut f = KvCache::new(l, b, h, s, d, OverflowPolicy::SlidingWindow(4)).unwrap();
        let mut q = KvCache::with_storage(l, b, h, s, d, OverflowPolicy::SlidingWindow(4), KvStorage::Int8).unwrap();
        assert_eq!(q.memory_bytes(), 2 * l * b * h * 4 * (d + 4));
        assert_eq!(f.memory_bytes(), 2 * l * b * h * 4 * d * 4);
        assert!(q.keys(0, 0, 0).is_err() && q.heads(0, 0).is_err() && f.keys_q8(0, 0, 0).is_err());
        // Six single positions through a window of 4: the int8 rows dequantize to the f32 rows.
        for t in 0..6 {
            for layer in 0..l {
                let kv: Vec<f32> = (0..b * h * d).map(|i| ((i + 31 * t + 7 * layer) as f32 * 0.11).cos()).collect();
                f.append(layer, &kv, &kv, 1).unwrap();
                q.append(layer, &kv, &kv, 1).unwrap();
            }
            f.advance(1).unwrap();
            q.advance(1).unwrap();
        }
        assert_eq!((q.len(), q.position()), (4, 6));
        for layer in 0..l {
            for bi in 0..b {
                for hi in 0..h {
                    let (want, got) = (f.keys(layer, bi, hi).unwrap(), q.keys_q8(layer, bi, hi).unwrap());
                    assert_eq!(got.scales.len(), 4);
                    for (j, &sc) in got.scales.iter().enumerate() {
                        for i in 0..d {
                            let deq = sc * got.codes[j * d + i] as f32;
                            assert!((deq - want[j * d + i]).abs() <= sc / 2.0 * (1.0 + 1e-5));
                        }
                    }
                    let v = q.values_q8(layer, bi, hi).unwrap();
                    assert_eq!((v.codes, v.scales), (got.codes, got.scales));
                }
            }
        }
    }

    /// Prefill dequantizes the cached rows and runs the GEMM attention; a decode step runs the row
    /// kernel on codes. Both read the same quantized cache, so the logits of a prompt decoded
    /// token by token equal those of its prefill within the m14 tolerance; and the int8 cache
    /// stays close to the f32 cache (its rows are within d/2), while not equal to it.
    #[test]
    fn int8_prefill_and_decode_agree_and_stay_near_the_f32_cache() {
        let m = trained(8);
        let seq: Vec<usize> = (0..24).map(|i| (i * 7 + 2) % 12).collect();
        let mut whole = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        whole.set_kv_storage(KvStorage::Int8).unwrap();
        let mut stepped = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        stepped.set_kv_storage(KvStorage::Int8).unwrap();
        let mut f32_engine = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        assert_eq!(stepped.cache().storage(), KvStorage::Int8);
        let mut worst_f32 = 0.0f32;
        stepped.prefill(&seq[..1], 1).unwrap();
        f32_engine.prefill(&seq[..1], 1).unwrap();
        for t in 1..seq.len() {
            let a = whole.prefill(&seq[..=t], t + 1).unwrap().to_vec();
            let b = stepped.decode_step(&[seq[t]]).unwrap().to_vec();
            let c = f32_engine.decode_step(&[seq[t]]).unwrap().to_vec();
            assert!(max_diff(&a, &b) <= TOL, "position {t}: prefill vs decode {}", max_diff(&a, &b));
            worst_f32 = worst_f32.max(max_diff(&b, &c));
        }
        assert!(worst_f32 > 0.0 && worst_f32 < 0.05, "int8 vs f32 cache: {worst_f32}");
        // Decode steps on the int8 cache allocate nothing either.
        let before = ALLOCS.with(Cell::get);
        for _ in 0..10 {
            stepped.decode_step(&[3]).unwrap();
        }
        assert_eq!(ALLOCS.with(Cell::get) - before, 0);
    }
}

/// Blocks with different head counts (what head pruning leaves, module 18): the cache holds each
/// layer's own heads, and the decoder — f32 and int8 cache, prefill and decode — equals the tensor
/// model at every step (the m14 tolerance).
mod per_block_heads {
    use super::*;
    use tt_kvcache::KvStorage;

    fn pruned_config(seed: u64) -> GptConfig {
        GptConfig { heads_per_block: Some(vec![4, 1, 3]), ..config(13, seed, 3) }
    }

    #[test]
    fn layers_hold_their_own_heads() {
        let (b, s, d) = (2, 6, 8);
        let mut c = KvCache::with_layer_heads(&[3, 1], b, s, d, OverflowPolicy::Error, KvStorage::F32).unwrap();
        assert_eq!(c.layer_heads(), &[3, 1]);
        assert_eq!(c.shape().heads, 3, "the widest layer");
        assert_eq!(c.memory_bytes(), 2 * (3 + 1) * b * s * d * 4);
        // Layer 0 takes 3 heads' rows per position, layer 1 one head's.
        let k0: Vec<f32> = (0..b * 3 * d).map(|i| i as f32).collect();
        let k1: Vec<f32> = (0..b * d).map(|i| -(i as f32)).collect();
        assert!(c.append(1, &k0, &k0, 1).is_err(), "three heads' rows for a one-head layer");
        c.append(0, &k0, &k0, 1).unwrap();
        c.append(1, &k1, &k1, 1).unwrap();
        c.advance(1).unwrap();
        assert_eq!(c.keys(0, 1, 2).unwrap(), &k0[(3 + 2) * d..(3 + 3) * d]);
        assert_eq!(c.keys(1, 1, 0).unwrap(), &k1[d..2 * d]);
        assert!(c.keys(1, 0, 1).is_err(), "layer 1 has one head");
        assert_eq!(c.heads(1, 1).unwrap().keys, &k1[d..2 * d]);
        let q = KvCache::with_layer_heads(&[3, 1], b, s, d, OverflowPolicy::Error, KvStorage::Int8).unwrap();
        assert_eq!(q.memory_bytes(), 2 * (3 + 1) * b * s * (d + 4));
        assert!(KvCache::with_layer_heads(&[2, 0], b, s, d, OverflowPolicy::Error, KvStorage::F32).is_err());
        assert!(KvCache::with_layer_heads(&[], b, s, d, OverflowPolicy::Error, KvStorage::F32).is_err());
    }

    #[test]
    fn a_gpt_with_fewer_heads_in_some_blocks_decodes_like_the_tensor_model() {
        let m = Gpt::new(pruned_config(2)).unwrap();
        assert_eq!(m.blocks.iter().map(|b| b.attn.proj.in_features()).collect::<Vec<_>>(), vec![32, 8, 24]);
        for (batch, prompt) in [(1, 1), (1, 9), (3, 4)] {
            check_every_step(&m, batch, prompt);
        }
        let eng = CachedGpt::new(&m, 2, OverflowPolicy::Error).unwrap();
        assert_eq!(eng.cache().layer_heads(), &[4, 1, 3]);
        assert_eq!(eng.cache().memory_bytes(), 2 * (4 + 1 + 3) * 2 * 40 * 8 * 4);
    }

    /// The int8 cache with per-layer heads: decode steps equal a prefill of the same prefix (both
    /// read the same quantized rows) and stay near the f32 cache.
    #[test]
    fn the_int8_cache_with_per_block_heads_agrees_with_prefill_and_f32() {
        let m = Gpt::new(pruned_config(5)).unwrap();
        let seq: Vec<usize> = (0..20).map(|i| (i * 5 + 1) % 13).collect();
        let mut whole = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        whole.set_kv_storage(KvStorage::Int8).unwrap();
        let mut stepped = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        stepped.set_kv_storage(KvStorage::Int8).unwrap();
        assert_eq!(stepped.cache().layer_heads(), &[4, 1, 3]);
        stepped.prefill(&seq[..1], 1).unwrap();
        let mut worst_f32 = 0.0f32;
        for t in 1..seq.len() {
            let a = whole.prefill(&seq[..=t], t + 1).unwrap().to_vec();
            let b = stepped.decode_step(&[seq[t]]).unwrap().to_vec();
            assert!(max_diff(&a, &b) <= TOL, "position {t}: prefill vs decode {}", max_diff(&a, &b));
            worst_f32 = worst_f32.max(max_diff(&b, &reference_last(&m, &[seq[..=t].to_vec()])));
        }
        assert!(worst_f32 < 0.05, "int8 vs the tensor model: {worst_f32}");
    }

    #[test]
    fn bad_head_counts_are_config_errors_naming_the_field() {
        for (heads, says) in
            [(vec![4, 1], "3 layers"), (vec![4, 0, 2], "heads_per_block[1] = 0"), (vec![4, 5, 2], "1..=4")]
        {
            let e = Gpt::new(GptConfig { heads_per_block: Some(heads), ..config(13, 0, 3) }).err().unwrap().to_string();
            assert!(e.contains("heads_per_block") && e.contains(says), "{e}");
        }
    }
}

/// A trained tiny Llama (RMSNorm, rotary positions, SwiGLU, 4 query heads over 2 K/V heads)
/// with `pairs` and a tied or untied head.
fn trained_llama(pairs: tt_transformer::model::RopePairs, tied: bool) -> Gpt {
    let c = GptConfig {
        rope_pairs: pairs,
        tie_weights: tied,
        max_seq_len: 40,
        ..tt_transformer::testing::tiny_llama_config(12, 8)
    };
    let m = Gpt::new(c).unwrap();
    tt_transformer::testing::train_on_pattern(&m, 60).unwrap();
    m
}

#[test]
fn a_llama_decodes_like_its_full_recompute_at_every_step() {
    use tt_transformer::model::RopePairs;
    for (pairs, tied) in [(RopePairs::Interleaved, true), (RopePairs::HalfSplit, false)] {
        let m = trained_llama(pairs, tied);
        for prompt_len in [1, 6, 16] {
            check_every_step(&m, 1, prompt_len);
            check_every_step(&m, 3, prompt_len);
        }
        // Multi-head (no grouping) too: every K/V head its own query head.
        let mha = Gpt::new(GptConfig { n_kv_heads: Some(4), ..m.config.clone() }).unwrap();
        check_every_step(&mha, 2, 5);
    }
}

#[test]
fn a_llama_cache_holds_its_key_value_heads_only() {
    let m = trained_llama(tt_transformer::model::RopePairs::Interleaved, true);
    let eng = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
    // 2 layers × (K and V) × 2 K/V heads × 40 positions × head 8 × 4 bytes: half of 4 heads'.
    assert_eq!(eng.cache().memory_bytes(), 2 * 2 * 2 * 40 * 8 * 4);
    let names: Vec<String> = eng.projection_formats().into_iter().map(|p| p.0).collect();
    assert_eq!(
        names[..5],
        ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc", "blocks.0.mlp.up", "blocks.0.mlp.proj"]
    );
}

#[test]
fn a_llama_generates_the_same_greedy_text_with_an_int8_cache_and_without_a_cache() {
    let m = trained_llama(tt_transformer::model::RopePairs::HalfSplit, true);
    let prompts: Vec<Vec<usize>> = vec![vec![1, 5, 9], vec![2, 7, 7]];
    let cfg = GenerateConfig::greedy(30);
    let reference = generate_batch(&m, &prompts, &cfg).unwrap();
    let mut eng = CachedGpt::new(&m, 2, OverflowPolicy::Error).unwrap();
    assert_eq!(generate_cached(&mut eng, &prompts, &cfg).unwrap().tokens, reference);
    eng.set_kv_storage(tt_kvcache::KvStorage::Int8).unwrap();
    // The trained pattern is decided by wide margins: int8 keys and values keep every choice.
    assert_eq!(generate_cached(&mut eng, &prompts, &cfg).unwrap().tokens, reference);
}

/// Continuous batching's engine: slots at their own positions, joining and leaving.
mod slots {
    use super::*;
    use tt_kvcache::SlotTokens;
    use tt_transformer::generate::argmax;

    /// Logits of `seq` fed to a fresh one-slot engine: its prompt `seq[..p]`, then one token a
    /// step; one row per step.
    fn alone(m: &Gpt, seq: &[usize], p: usize) -> Vec<Vec<f32>> {
        let mut e = CachedGpt::new(m, 1, OverflowPolicy::Error).unwrap();
        let mut out = vec![e.step(&[SlotTokens { slot: 0, ids: &seq[..p] }]).unwrap().to_vec()];
        for t in p..seq.len() {
            out.push(e.step(&[SlotTokens { slot: 0, ids: &seq[t..=t] }]).unwrap().to_vec());
        }
        out
    }

    /// A row's logits among other rows vs alone: every kernel works row by row, but the dense
    /// projection multiplies one row by dot products and several by a GEMM, which sums in
    /// another order: a few float roundings of logits of magnitude ~10 (observed ≤ 1e-6).
    const ROW_TOL: f32 = 1e-5;

    /// Three sequences join a three-slot engine at different steps (a prompt prefilled beside
    /// the others' decode tokens), one leaves and its slot is reused by a fourth: every
    /// sequence's logits at every step equal those of running it alone (within [`ROW_TOL`], the
    /// same greedy token), and the reference model's within the m14 tolerance.
    #[test]
    fn a_sequence_among_others_equals_it_alone() {
        let m = trained(21);
        let v = m.config.vocab_size;
        let seqs: Vec<Vec<usize>> =
            (0..4).map(|s| (0..14 + s).map(|i| (i * (s + 2) + 3 * s + 1) % v).collect()).collect();
        let prompts = [5, 3, 7, 4];
        // (step it joins at, slot): the fourth reuses slot 0 once the first has left.
        let joins = [(0, 0), (2, 1), (3, 2), (15, 0)];
        let mut eng = CachedGpt::new(&m, 3, OverflowPolicy::Error).unwrap();
        let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 4];
        // Next token index of each running sequence.
        let mut at: Vec<Option<usize>> = vec![None; 4];
        for step in 0..30 {
            for (i, &(when, slot)) in joins.iter().enumerate() {
                if when == step {
                    assert!(at.iter().enumerate().all(|(j, a)| a.is_none() || joins[j].1 != slot), "slot {slot} busy");
                    eng.reset_slot(slot).unwrap();
                    at[i] = Some(0);
                }
            }
            let running: Vec<usize> = (0..4).filter(|&i| at[i].is_some()).collect();
            if running.is_empty() {
                break;
            }
            let entries: Vec<SlotTokens> = running
                .iter()
                .map(|&i| {
                    let t = at[i].unwrap();
                    let ids = if t == 0 { &seqs[i][..prompts[i]] } else { &seqs[i][t..=t] };
                    SlotTokens { slot: joins[i].1, ids }
                })
                .collect();
            let logits = eng.step(&entries).unwrap().to_vec();
            assert_eq!(logits.len(), running.len() * v);
            for (k, &i) in running.iter().enumerate() {
                got[i].push(logits[k * v..(k + 1) * v].to_vec());
                let t = at[i].unwrap();
                let next = if t == 0 { prompts[i] } else { t + 1 };
                at[i] = (next < seqs[i].len()).then_some(next);
            }
        }
        for i in 0..4 {
            let want = alone(&m, &seqs[i], prompts[i]);
            assert_eq!(got[i].len(), want.len());
            for (t, (g, w)) in got[i].iter().zip(&want).enumerate() {
                assert!(max_diff(g, w) <= ROW_TOL, "sequence {i} step {t}: {} apart", max_diff(g, w));
                assert_eq!(argmax(g), argmax(w), "sequence {i} step {t}: another greedy token");
            }
            // The last step ran the whole sequence.
            let r = reference_last(&m, std::slice::from_ref(&seqs[i]));
            assert!(max_diff(&want[want.len() - 1], &r) <= TOL);
        }
    }

    #[test]
    fn bad_steps_are_refused_before_anything_runs() {
        let m = trained(22);
        let mut eng = CachedGpt::new(&m, 2, OverflowPolicy::Error).unwrap();
        eng.step(&[SlotTokens { slot: 1, ids: &[1, 2, 3] }]).unwrap();
        assert_eq!((eng.slot_position(0).unwrap(), eng.slot_position(1).unwrap()), (0, 3));
        let msg = |r: Result<&[f32], tt_kvcache::KvError>| r.unwrap_err().to_string();
        assert!(msg(eng.step(&[])).contains("at least one"));
        assert!(msg(eng.step(&[SlotTokens { slot: 2, ids: &[1] }])).contains("out of range"));
        assert!(msg(eng.step(&[SlotTokens { slot: 0, ids: &[] }])).contains("no tokens"));
        let twice = [SlotTokens { slot: 0, ids: &[1] }, SlotTokens { slot: 0, ids: &[2] }];
        assert!(msg(eng.step(&twice)).contains("twice"));
        assert!(msg(eng.step(&[SlotTokens { slot: 0, ids: &[99] }])).contains("vocab"));
        let long = vec![1; 38];
        let over = [SlotTokens { slot: 0, ids: &[1] }, SlotTokens { slot: 1, ids: &long }];
        assert!(msg(eng.step(&over)).contains("context"), "{}", msg(eng.step(&over)));
        // Nothing ran: slot 0 is still empty, slot 1 still at 3; both keep working.
        assert_eq!((eng.slot_position(0).unwrap(), eng.slot_position(1).unwrap()), (0, 3));
        eng.step(&[SlotTokens { slot: 0, ids: &[4] }, SlotTokens { slot: 1, ids: &[5] }]).unwrap();
        eng.reset_slot(1).unwrap();
        assert_eq!((eng.slot_position(0).unwrap(), eng.slot_position(1).unwrap()), (1, 0));
        assert!(eng.reset_slot(2).is_err());
    }

    #[test]
    fn cache_rows_grow_and_empty_on_their_own() {
        let mut c = KvCache::new(2, 2, 1, 6, 2, OverflowPolicy::SlidingWindow(3)).unwrap();
        for layer in 0..2 {
            c.append_row(layer, 1, &[1.0; 4], &[2.0; 4], 2).unwrap();
        }
        assert!(c.advance(2).is_err(), "row 0 appended nothing");
        c.advance_row(1, 2).unwrap();
        assert_eq!((c.row_len(0), c.row_len(1)), (0, 2));
        // Row 1's window slides on its own; row 0 still holds nothing.
        for t in 0..3 {
            for layer in 0..2 {
                c.append_row(layer, 1, &[t as f32; 2], &[t as f32; 2], 1).unwrap();
            }
            c.advance_row(1, 1).unwrap();
        }
        assert_eq!(
            (c.row_len(1), c.row_position(1), c.keys(0, 1, 0).unwrap()),
            (3, 5, &[0.0, 0.0, 1.0, 1.0, 2.0, 2.0][..])
        );
        assert!(c.keys(0, 0, 0).unwrap().is_empty());
        c.reset_row(1);
        assert!(c.is_empty());
        assert!(c.append_row(0, 2, &[0.0; 2], &[0.0; 2], 1).is_err());
    }
}
