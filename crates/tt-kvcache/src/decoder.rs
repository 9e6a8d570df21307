//! KV-cached GPT inference: prefill the prompt in one batched pass, then decode one token per
//! step, computing Q/K/V only for the new token and attending over the cache.
//!
//! The whole forward pass is in [`CachedGpt::forward`], readable top to bottom. All buffers live in
//! [`Scratch`] and are sized at construction for one token per sequence, so decode steps allocate
//! nothing; a longer prefill grows them once.

use std::time::Instant;

use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use tt_tensor::kernels::{gelu_tanh, gemm, layer_norm_row, softmax_row};
use tt_transformer::generate::{GenerateConfig, Sampler};
use tt_transformer::{Gpt, TransformerError};

use crate::cache::{KvCache, OverflowPolicy};
use crate::kernels::{dot, linear_rows, GEMM_MIN_ROWS};
use crate::weights::GptWeights;
use crate::KvError;

/// Reusable activations, `rows × width` each.
#[derive(Debug, Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    hidden: Vec<f32>,
    kbuf: Vec<f32>,
    vbuf: Vec<f32>,
    scores: Vec<f32>,
    logits: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Scratch {
    fn ensure(&mut self, rows: usize, w: &GptWeights, batch: usize, max_keys: usize) {
        let d = w.d_model;
        grow(&mut self.x, rows * d);
        grow(&mut self.h, rows * d);
        grow(&mut self.qkv, rows * 3 * d);
        grow(&mut self.att, rows * d);
        grow(&mut self.tmp, rows * d);
        grow(&mut self.hidden, rows * w.hidden);
        grow(&mut self.kbuf, rows * d);
        grow(&mut self.vbuf, rows * d);
        grow(&mut self.scores, rows.max(1) * max_keys);
        grow(&mut self.logits, batch * w.vocab);
    }
}

/// A GPT with a KV cache for a batch of equal-length sequences.
pub struct CachedGpt {
    w: GptWeights,
    cache: KvCache,
    batch: usize,
    s: Scratch,
}

impl CachedGpt {
    /// Copies the model's weights and preallocates a cache for `batch` sequences.
    pub fn new(model: &Gpt, batch: usize, policy: OverflowPolicy) -> Result<CachedGpt, KvError> {
        let w = GptWeights::from_model(model);
        let cache = KvCache::new(w.n_layers(), batch, w.n_heads, w.max_seq_len, w.head_dim(), policy)?;
        let mut s = Scratch::default();
        s.ensure(batch, &w, batch, cache.capacity());
        Ok(CachedGpt { w, cache, batch, s })
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
    pub fn weights(&self) -> &GptWeights {
        &self.w
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Starts a new generation (the cache's memory is reused).
    pub fn reset(&mut self) {
        self.cache.reset();
    }

    /// Forgets every position past `len` (see [`KvCache::truncate`]).
    pub fn truncate(&mut self, len: usize) -> Result<(), KvError> {
        Ok(self.cache.truncate(len)?)
    }

    /// Resets, then runs the prompts (`batch × n` ids, row-major) through one batched forward,
    /// filling the cache. Returns the logits of each sequence's last position, `[batch, vocab]`.
    pub fn prefill(&mut self, ids: &[usize], n: usize) -> Result<&[f32], KvError> {
        self.reset();
        self.forward(ids, n)
    }

    /// Appends one token per sequence and returns the next-token logits `[batch, vocab]`.
    pub fn decode_step(&mut self, tokens: &[usize]) -> Result<&[f32], KvError> {
        self.forward(tokens, 1)
    }

    /// Runs `n` new tokens per sequence through the model, appending their keys and values, and
    /// returns the logits of each sequence's last new position.
    pub fn forward(&mut self, ids: &[usize], n: usize) -> Result<&[f32], KvError> {
        let (b, w) = (self.batch, &self.w);
        if n == 0 || ids.len() != b * n {
            return Err(KvError::Input(format!("{} ids do not form a [{b}, {n}] batch", ids.len())));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i >= w.vocab) {
            return Err(KvError::Input(format!("id {bad} is outside vocab_size {}", w.vocab)));
        }
        let pos0 = self.cache.position();
        if pos0 + n > w.max_seq_len {
            return Err(TransformerError::ContextOverflow { position: pos0 + n - 1, max_seq_len: w.max_seq_len }.into());
        }
        // A sliding window that would evict inside this chunk: feed it one token at a time.
        if n > 1 && !self.cache.fits(n) && matches!(self.cache.policy(), OverflowPolicy::SlidingWindow(_)) {
            for t in 0..n {
                let col: Vec<usize> = (0..b).map(|i| ids[i * n + t]).collect();
                self.forward(&col, 1)?;
            }
            return Ok(&self.s.logits[..b * self.w.vocab]);
        }
        let rows = b * n;
        let (d, hd, nh) = (w.d_model, w.head_dim(), w.n_heads);
        self.s.ensure(rows, w, b, self.cache.capacity());
        let s = &mut self.s;

        // Token + position embedding.
        for (r, &id) in ids.iter().enumerate() {
            let p = pos0 + r % n;
            let xr = &mut s.x[r * d..(r + 1) * d];
            for j in 0..d {
                xr[j] = w.tok_emb[id * d + j] + w.pos_emb[p * d + j];
            }
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, blk) in w.blocks.iter().enumerate() {
            // Attention sub-block: x += proj(attn(ln1(x))).
            for r in 0..rows {
                layer_norm_row(&s.x[r * d..(r + 1) * d], &blk.ln1_g, &blk.ln1_b, w.eps, &mut s.h[r * d..(r + 1) * d]);
            }
            linear_rows(&s.h, &blk.wqkv, &blk.bqkv, rows, d, 3 * d, &mut s.qkv);
            // Gather this chunk's K and V into the cache's [batch, head, n, head_dim] order.
            for bi in 0..b {
                for t in 0..n {
                    let q = &s.qkv[(bi * n + t) * 3 * d..(bi * n + t + 1) * 3 * d];
                    for h in 0..nh {
                        let dst = ((bi * nh + h) * n + t) * hd;
                        s.kbuf[dst..dst + hd].copy_from_slice(&q[d + h * hd..d + (h + 1) * hd]);
                        s.vbuf[dst..dst + hd].copy_from_slice(&q[2 * d + h * hd..2 * d + (h + 1) * hd]);
                    }
                }
            }
            self.cache.append(l, &s.kbuf[..rows * d], &s.vbuf[..rows * d], n)?;
            for bi in 0..b {
                for h in 0..nh {
                    let keys = self.cache.keys(l, bi, h);
                    let vals = self.cache.values(l, bi, h);
                    let slots = keys.len() / hd;
                    if n >= GEMM_MIN_ROWS {
                        // Many queries (prefill): scores and outputs by GEMM over strided views,
                        // then the causal mask and softmax row by row.
                        let sc = &mut s.scores[..n * slots];
                        let q = ArrayView2::from_shape((n, hd).strides((3 * d, 1)), &s.qkv[bi * n * 3 * d + h * hd..])
                            .expect("view");
                        let kv = ArrayView2::from_shape((slots, hd), keys).expect("view");
                        gemm(scale, q, kv.t(), 0.0, ArrayViewMut2::from_shape((n, slots), &mut *sc).expect("view"));
                        for t in 0..n {
                            let visible = slots - n + t + 1;
                            let row = &mut sc[t * slots..(t + 1) * slots];
                            softmax_row(&mut row[..visible]);
                            row[visible..].fill(0.0);
                        }
                        let p = ArrayView2::from_shape((n, slots), &*sc).expect("view");
                        let vv = ArrayView2::from_shape((slots, hd), vals).expect("view");
                        let out = ArrayViewMut2::from_shape((n, hd).strides((d, 1)), &mut s.att[bi * n * d + h * hd..])
                            .expect("view");
                        gemm(1.0, p, vv, 0.0, out);
                        continue;
                    }
                    for t in 0..n {
                        let r = bi * n + t;
                        let q = &s.qkv[r * 3 * d + h * hd..r * 3 * d + (h + 1) * hd];
                        // Causal within the chunk: query t sees every slot up to its own.
                        let visible = slots - n + t + 1;
                        let sc = &mut s.scores[..visible];
                        for (j, sj) in sc.iter_mut().enumerate() {
                            *sj = dot(q, &keys[j * hd..(j + 1) * hd]) * scale;
                        }
                        softmax_row(sc);
                        let out = &mut s.att[r * d + h * hd..r * d + (h + 1) * hd];
                        out.fill(0.0);
                        for (j, &p) in sc.iter().enumerate() {
                            for (o, &vv) in out.iter_mut().zip(&vals[j * hd..(j + 1) * hd]) {
                                *o += p * vv;
                            }
                        }
                    }
                }
            }
            linear_rows(&s.att, &blk.wo, &blk.bo, rows, d, d, &mut s.tmp);
            s.x[..rows * d].iter_mut().zip(&s.tmp[..rows * d]).for_each(|(x, t)| *x += t);
            // MLP sub-block: x += proj(gelu(fc(ln2(x)))).
            for r in 0..rows {
                layer_norm_row(&s.x[r * d..(r + 1) * d], &blk.ln2_g, &blk.ln2_b, w.eps, &mut s.h[r * d..(r + 1) * d]);
            }
            linear_rows(&s.h, &blk.wfc, &blk.bfc, rows, d, w.hidden, &mut s.hidden);
            s.hidden[..rows * w.hidden].iter_mut().for_each(|v| *v = gelu_tanh(*v));
            linear_rows(&s.hidden, &blk.wproj, &blk.bproj, rows, w.hidden, d, &mut s.tmp);
            s.x[..rows * d].iter_mut().zip(&s.tmp[..rows * d]).for_each(|(x, t)| *x += t);
        }
        self.cache.advance(n)?;
        // Final norm and head for each sequence's last position only.
        for bi in 0..b {
            let r = bi * n + n - 1;
            layer_norm_row(&s.x[r * d..(r + 1) * d], &w.lnf_g, &w.lnf_b, w.eps, &mut s.h[..d]);
            let hrow = &s.h[..d];
            let lg = &mut s.logits[bi * w.vocab..(bi + 1) * w.vocab];
            for (o, out) in lg.iter_mut().enumerate() {
                *out = dot(&w.head[o * d..(o + 1) * d], hrow);
            }
        }
        Ok(&s.logits[..b * w.vocab])
    }
}

/// Generated tokens with the wall time of every step.
#[derive(Debug, Clone)]
pub struct Trace {
    /// New tokens per sequence (a stop token, if hit, is the last one).
    pub tokens: Vec<Vec<usize>>,
    /// `step_seconds[0]` covers the prompt and the first token; each later entry one more token.
    pub step_seconds: Vec<f64>,
}

impl Trace {
    /// Total tokens generated per second over all steps (batch × steps / time).
    pub fn tokens_per_second(&self, batch: usize) -> f64 {
        (batch * self.step_seconds.len()) as f64 / self.step_seconds.iter().sum::<f64>()
    }
}

fn check_prompts(prompts: &[Vec<usize>], batch: usize) -> Result<usize, KvError> {
    let n = prompts.first().map_or(0, Vec::len);
    if prompts.len() != batch || n == 0 || prompts.iter().any(|p| p.len() != n) {
        return Err(KvError::Input(format!("need {batch} non-empty prompts of equal length")));
    }
    Ok(n)
}

/// Generation with the cache: one prefill, then one decode step per token. Samplers are seeded
/// exactly as in `tt_transformer::generate::generate_batch` (seed + sequence index), so both
/// produce the same tokens from the same logits.
pub fn generate_cached(engine: &mut CachedGpt, prompts: &[Vec<usize>], cfg: &GenerateConfig) -> Result<Trace, KvError> {
    run_generation(engine, prompts, cfg, true)
}

/// The baseline: the same engine and kernels, but every step resets the cache and re-runs the
/// whole sequence so far (what generation costs without a cache).
pub fn generate_uncached(
    engine: &mut CachedGpt,
    prompts: &[Vec<usize>],
    cfg: &GenerateConfig,
) -> Result<Trace, KvError> {
    run_generation(engine, prompts, cfg, false)
}

fn run_generation(
    engine: &mut CachedGpt,
    prompts: &[Vec<usize>],
    cfg: &GenerateConfig,
    cached: bool,
) -> Result<Trace, KvError> {
    let b = engine.batch;
    let n = check_prompts(prompts, b)?;
    let v = engine.w.vocab;
    let mut samplers: Vec<Sampler> =
        (0..b).map(|i| Sampler::new(cfg.sampling, cfg.seed.wrapping_add(i as u64))).collect::<Result<_, _>>()?;
    let mut seqs: Vec<usize> = Vec::with_capacity(b * (n + cfg.max_new_tokens));
    // Sequences stay row-major [b, len]; uncached steps need the whole of each.
    let mut rows: Vec<Vec<usize>> = prompts.to_vec();
    rows.iter_mut().for_each(|r| r.reserve(cfg.max_new_tokens));
    let mut out: Vec<Vec<usize>> = (0..b).map(|_| Vec::with_capacity(cfg.max_new_tokens)).collect();
    let mut done = vec![false; b];
    let mut step_seconds = Vec::with_capacity(cfg.max_new_tokens);
    let mut next = vec![0usize; b];
    for step in 0..cfg.max_new_tokens {
        let start = Instant::now();
        let logits = if step == 0 || !cached {
            let len = rows[0].len();
            seqs.clear();
            rows.iter().for_each(|r| seqs.extend_from_slice(r));
            engine.prefill(&seqs, len)?
        } else {
            engine.decode_step(&next)?
        };
        for i in 0..b {
            next[i] = samplers[i].next(&logits[i * v..(i + 1) * v]);
        }
        step_seconds.push(start.elapsed().as_secs_f64());
        for i in 0..b {
            rows[i].push(next[i]);
            if !done[i] {
                out[i].push(next[i]);
                done[i] = cfg.stop_tokens.contains(&next[i]);
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(Trace { tokens: out, step_seconds })
}
