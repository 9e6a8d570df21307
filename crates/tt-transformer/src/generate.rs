//! Generation without a cache: every step re-runs the model over the whole sequence. This is the
//! reference path that module 14's KV-cached generation is tested against, so it is kept simple.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tt_tensor::{no_grad, TensorError};

use crate::error::{Result, TransformerError};
use crate::model::Gpt;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Arg-max (first maximum on ties).
    Greedy,
    /// Sample from softmax(logits / temperature), optionally restricted to the `top_k` most likely
    /// tokens and then to the smallest set whose probability reaches `top_p` (nucleus sampling).
    Sample { temperature: f32, top_k: Option<usize>, top_p: Option<f32> },
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Seeds the sampler; the same seed gives the same text.
    pub seed: u64,
    /// Generation stops after producing any of these (it is included in the output).
    pub stop_tokens: Vec<usize>,
}

impl GenerateConfig {
    pub fn greedy(max_new_tokens: usize) -> GenerateConfig {
        GenerateConfig { max_new_tokens, sampling: Sampling::Greedy, seed: 0, stop_tokens: Vec::new() }
    }
    pub fn with_stop(mut self, tokens: &[usize]) -> GenerateConfig {
        self.stop_tokens = tokens.to_vec();
        self
    }
}

/// Picks next tokens; owns the seeded generator so a whole generation is reproducible.
pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
    scratch: Vec<(f32, usize)>,
}

impl Sampler {
    pub fn new(sampling: Sampling, seed: u64) -> Result<Sampler> {
        if let Sampling::Sample { temperature, top_k, top_p } = sampling {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(TransformerError::Config(format!("temperature {temperature} must be positive")));
            }
            if top_k == Some(0) {
                return Err(TransformerError::Config("top_k must be at least 1".into()));
            }
            if let Some(p) = top_p {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(TransformerError::Config(format!("top_p {p} must be in (0, 1]")));
                }
            }
        }
        Ok(Sampler { sampling, rng: ChaCha8Rng::seed_from_u64(seed), scratch: Vec::new() })
    }

    /// Chooses a token from one row of logits. `-inf` logits (masked tokens) are never chosen.
    ///
    /// # Errors
    /// Empty logits, a NaN or `+inf` logit, or logits that are all `-inf` (no token can be chosen).
    pub fn next(&mut self, logits: &[f32]) -> Result<usize> {
        check_logits(logits)?;
        Ok(match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Sample { temperature, top_k, top_p } => {
                let s = &mut self.scratch;
                s.clear();
                s.extend(logits.iter().enumerate().map(|(i, &l)| (l / temperature, i)));
                // A tiny temperature can push finite logits to ±inf, and inf − inf = NaN would then
                // pick the least likely token. Only then, scale the gaps to the largest logit
                // instead: (l − max)/T ≤ 0 cannot overflow upwards and the top token gets 0.
                let top = s.iter().fold(f32::NEG_INFINITY, |m, e| m.max(e.0));
                if !top.is_finite() {
                    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    s.iter_mut().for_each(|e| e.0 = (logits[e.1] - max) / temperature);
                }
                // Most likely first; ties broken by id so the order is deterministic.
                s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                if let Some(k) = top_k {
                    s.truncate(k.min(s.len()));
                }
                let max = s[0].0;
                let mut total = 0.0;
                for e in s.iter_mut() {
                    e.0 = (e.0 - max).exp();
                    total += e.0;
                }
                for e in s.iter_mut() {
                    e.0 /= total;
                }
                if let Some(p) = top_p {
                    let mut cum = 0.0;
                    let mut keep = s.len();
                    for (i, e) in s.iter().enumerate() {
                        cum += e.0;
                        if cum >= p {
                            keep = i + 1;
                            break;
                        }
                    }
                    s.truncate(keep);
                    let t: f32 = s.iter().map(|e| e.0).sum();
                    s.iter_mut().for_each(|e| e.0 /= t);
                }
                let u: f32 = self.rng.random();
                let mut cum = 0.0;
                let mut pick = None;
                for e in s.iter() {
                    cum += e.0;
                    if u < cum {
                        pick = Some(e.1);
                        break;
                    }
                }
                // Rounding can leave the cumulative sum just under u: take the last candidate.
                pick.unwrap_or_else(|| s.last().expect("check_logits: at least one candidate").1)
            }
        })
    }
}

/// Logits a token can be chosen from: at least one, none NaN or `+inf`, not all `-inf`.
fn check_logits(logits: &[f32]) -> Result<()> {
    let bad = |reason: String| TransformerError::Tensor(TensorError::InvalidArgument { op: "Sampler::next", reason });
    if logits.is_empty() {
        return Err(bad("logits are empty (a vocabulary of 0 tokens)".into()));
    }
    if let Some((i, l)) = logits.iter().enumerate().find(|(_, l)| l.is_nan() || **l == f32::INFINITY) {
        return Err(bad(format!("logits[{i}] = {l}: logits must not be NaN or +inf")));
    }
    if logits.iter().all(|&l| l == f32::NEG_INFINITY) {
        return Err(bad(format!("all {} logits are -inf: no token can be chosen", logits.len())));
    }
    Ok(())
}

pub use tt_tensor::kernels::argmax;

/// Anything that scores the next token of one growing sequence: the tensor model by full
/// recomputation ([`FullRecompute`]) or a KV-cached decoder (tt-kvcache's `CachedGpt`, with
/// whatever weight formats it holds). Evaluation takes one, so a quantized or pruned engine is
/// measured by itself, not by its dense twin.
pub trait NextTokenSource {
    fn vocab_size(&self) -> usize;
    /// Longest sequence it can score.
    fn max_seq_len(&self) -> usize;
    /// Forgets the current sequence.
    fn reset(&mut self);
    /// Appends `ids` to the current sequence and returns the next-token logits after its last
    /// position, `[vocab]`.
    ///
    /// # Errors
    /// Empty `ids`, an id outside the vocabulary, or a sequence longer than [`Self::max_seq_len`].
    fn append(&mut self, ids: &[usize]) -> Result<&[f32]>;
    /// Like [`Self::append`], but returns the logits after **each** appended position,
    /// `[ids.len(), vocab]` (for perplexity). By default one position at a time.
    ///
    /// # Errors
    /// As [`Self::append`].
    fn append_all(&mut self, ids: &[usize], out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        for &id in ids {
            let l = self.append(&[id])?;
            out.extend_from_slice(l);
        }
        Ok(())
    }
}

/// The tensor [`Gpt`] as a [`NextTokenSource`]: every call re-runs the whole sequence (no cache).
/// The reference that cached engines are compared with.
pub struct FullRecompute<'a> {
    model: &'a Gpt,
    ids: Vec<usize>,
    logits: Vec<f32>,
}

impl<'a> FullRecompute<'a> {
    pub fn new(model: &'a Gpt) -> FullRecompute<'a> {
        FullRecompute { model, ids: Vec::new(), logits: Vec::new() }
    }

    /// Appends `ids` and leaves the logits of the last `keep` positions in `self.logits`.
    fn run(&mut self, ids: &[usize], keep: usize) -> Result<()> {
        if ids.is_empty() {
            return Err(TransformerError::Config("append needs at least one id".into()));
        }
        let len = self.ids.len() + ids.len();
        // Check before growing: a rejected append leaves the sequence unchanged.
        let mut all = self.ids.clone();
        all.extend_from_slice(ids);
        self.model.check_input(&all, 1, len)?;
        let logits = no_grad(|| self.model.forward_ids(&all, 1, len))?;
        let v = self.model.config.vocab_size;
        let data = logits.data();
        let flat = data.as_slice().expect("standard layout");
        self.logits.clear();
        self.logits.extend_from_slice(&flat[(len - keep) * v..]);
        self.ids = all;
        Ok(())
    }
}

impl NextTokenSource for FullRecompute<'_> {
    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }
    fn max_seq_len(&self) -> usize {
        self.model.config.max_seq_len
    }
    fn reset(&mut self) {
        self.ids.clear();
    }
    fn append(&mut self, ids: &[usize]) -> Result<&[f32]> {
        self.run(ids, 1)?;
        Ok(&self.logits)
    }
    fn append_all(&mut self, ids: &[usize], out: &mut Vec<f32>) -> Result<()> {
        self.run(ids, ids.len())?;
        out.clear();
        out.extend_from_slice(&self.logits);
        Ok(())
    }
}

/// Generates up to `max_new_tokens` after `prompt` from any [`NextTokenSource`] (it is reset
/// first). Returns only the new tokens; a stop token, if hit, is the last one. The sampler is
/// seeded with `cfg.seed`, as in [`generate`], so equal logits give equal text.
///
/// # Errors
/// An empty prompt, a prompt plus `max_new_tokens` longer than the source's context (checked
/// before anything runs), invalid sampling settings, or the source's own errors.
pub fn generate_with(source: &mut dyn NextTokenSource, prompt: &[usize], cfg: &GenerateConfig) -> Result<Vec<usize>> {
    if prompt.is_empty() {
        return Err(TransformerError::Config("the prompt is empty".into()));
    }
    // The same rule as [`generate_batch`]: prompt and new tokens must fit the context.
    let total = prompt.len().saturating_add(cfg.max_new_tokens);
    if total > source.max_seq_len() {
        return Err(TransformerError::ContextOverflow { position: total - 1, max_seq_len: source.max_seq_len() });
    }
    let mut sampler = Sampler::new(cfg.sampling, cfg.seed)?;
    let mut out = Vec::with_capacity(cfg.max_new_tokens);
    source.reset();
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut tok = sampler.next(source.append(prompt)?)?;
    loop {
        out.push(tok);
        if out.len() == cfg.max_new_tokens || cfg.stop_tokens.contains(&tok) {
            return Ok(out);
        }
        tok = sampler.next(source.append(&[tok])?)?;
    }
}

/// Generates up to `max_new_tokens` after `prompt` by full recomputation. Returns only the new
/// tokens (a stop token, if hit, is the last one). Errors if the sequence would exceed the
/// model's context.
pub fn generate(model: &Gpt, prompt: &[usize], cfg: &GenerateConfig) -> Result<Vec<usize>> {
    Ok(generate_batch(model, &[prompt.to_vec()], cfg)?.remove(0))
}

/// Generates for several equal-length prompts at once (one batched forward per step). A sequence
/// that hit a stop token keeps being computed (so the batch stays rectangular) but its output ends
/// at the stop token.
pub fn generate_batch(model: &Gpt, prompts: &[Vec<usize>], cfg: &GenerateConfig) -> Result<Vec<Vec<usize>>> {
    let b = prompts.len();
    let t0 = prompts.first().map_or(0, Vec::len);
    if b == 0 || t0 == 0 || prompts.iter().any(|p| p.len() != t0) {
        return Err(TransformerError::Config("prompts must be non-empty and of equal length".into()));
    }
    let total = t0.saturating_add(cfg.max_new_tokens);
    if total > model.config.max_seq_len {
        return Err(TransformerError::ContextOverflow { position: total - 1, max_seq_len: model.config.max_seq_len });
    }
    let mut samplers: Vec<Sampler> =
        (0..b).map(|i| Sampler::new(cfg.sampling, cfg.seed.wrapping_add(i as u64))).collect::<Result<_>>()?;
    let mut seqs: Vec<Vec<usize>> = prompts.to_vec();
    let mut outs: Vec<Vec<usize>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let v = model.config.vocab_size;
    no_grad(|| -> Result<()> {
        for _ in 0..cfg.max_new_tokens {
            let len = seqs[0].len();
            let flat: Vec<usize> = seqs.iter().flatten().copied().collect();
            let logits = model.forward_ids(&flat, b, len)?;
            let data = logits.data();
            let all = data.as_slice().expect("standard layout");
            for i in 0..b {
                let row = &all[(i * len + len - 1) * v..(i * len + len) * v];
                let tok = samplers[i].next(row)?;
                seqs[i].push(tok);
                if !done[i] {
                    outs[i].push(tok);
                    done[i] = cfg.stop_tokens.contains(&tok);
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(())
    })?;
    Ok(outs)
}
