//! Generation: sampling, the [`NextTokenSource`] seam every engine implements, and the one
//! generation loop ([`generate_traced`]) that the tensor model, the KV-cached decoder, the
//! evaluation scorers and the benchmark's question answerer all run. [`FullRecompute`] (the
//! tensor model re-run over the whole sequence each step) is the reference that module 14's
//! KV-cached generation is tested against.

use std::time::Instant;

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

/// Anything that scores the next token of a growing batch of sequences: the tensor model by full
/// recomputation ([`FullRecompute`]) or a KV-cached decoder (tt-kvcache's `CachedGpt`, with
/// whatever weight formats it holds). Evaluation and generation take one, so a quantized or
/// pruned engine is measured by itself, not by its dense twin.
///
/// A source holds [`Self::batch`] sequences of equal length; ids are passed row-major,
/// `[batch, n]`, and logits come back `[batch, vocab]`. Most sources hold one.
pub trait NextTokenSource {
    fn vocab_size(&self) -> usize;
    /// Longest sequence it can score.
    fn max_seq_len(&self) -> usize;
    /// Sequences it scores side by side.
    fn batch(&self) -> usize {
        1
    }
    /// Forgets the current sequences.
    fn reset(&mut self);
    /// Appends `n = ids.len() / batch` ids to every sequence (`ids` row-major, `[batch, n]`) and
    /// returns the next-token logits after each sequence's last position, `[batch, vocab]`.
    ///
    /// # Errors
    /// No ids, a length that is not a multiple of the batch, an id outside the vocabulary, or a
    /// sequence longer than [`Self::max_seq_len`].
    fn append(&mut self, ids: &[usize]) -> Result<&[f32]>;
    /// Like [`Self::append`], but returns the logits after **each** appended position,
    /// `[batch, n, vocab]` (for perplexity). By default one position at a time.
    ///
    /// # Errors
    /// As [`Self::append`].
    fn append_all(&mut self, ids: &[usize], out: &mut Vec<f32>) -> Result<()> {
        let (b, v) = (self.batch(), self.vocab_size());
        let n = rows_of(ids.len(), b)?;
        out.clear();
        out.resize(b * n * v, 0.0);
        let mut col = vec![0; b];
        for t in 0..n {
            for (i, c) in col.iter_mut().enumerate() {
                *c = ids[i * n + t];
            }
            let l = self.append(&col)?;
            for i in 0..b {
                out[(i * n + t) * v..(i * n + t + 1) * v].copy_from_slice(&l[i * v..(i + 1) * v]);
            }
        }
        Ok(())
    }
}

/// Ids per sequence when `len` ids are spread over `batch` sequences.
fn rows_of(len: usize, batch: usize) -> Result<usize> {
    if batch == 0 || len == 0 || !len.is_multiple_of(batch) {
        return Err(TransformerError::Config(format!("{len} ids do not form {batch} non-empty sequences")));
    }
    Ok(len / batch)
}

/// The tensor [`Gpt`] as a [`NextTokenSource`]: every call re-runs the whole sequences (no cache).
/// The reference that cached engines are compared with.
pub struct FullRecompute<'a> {
    model: &'a Gpt,
    batch: usize,
    /// The sequences so far, row-major `[batch, len]`.
    ids: Vec<usize>,
    len: usize,
    logits: Vec<f32>,
}

impl<'a> FullRecompute<'a> {
    /// One sequence.
    pub fn new(model: &'a Gpt) -> FullRecompute<'a> {
        FullRecompute::batched(model, 1)
    }

    /// `batch` sequences, run as one batched forward per call.
    pub fn batched(model: &'a Gpt, batch: usize) -> FullRecompute<'a> {
        FullRecompute { model, batch, ids: Vec::new(), len: 0, logits: Vec::new() }
    }

    /// Appends `ids` and leaves the logits of the last `keep` positions of each sequence in
    /// `self.logits`, `[batch, keep, vocab]`.
    fn run(&mut self, ids: &[usize], keep: impl Fn(usize) -> usize) -> Result<()> {
        let (b, v) = (self.batch, self.model.config.vocab_size);
        let n = rows_of(ids.len(), b)?;
        let len = self.len + n;
        // Built aside: a rejected append leaves the sequences unchanged.
        let mut all = Vec::with_capacity(b * len);
        for i in 0..b {
            all.extend_from_slice(&self.ids[i * self.len..(i + 1) * self.len]);
            all.extend_from_slice(&ids[i * n..(i + 1) * n]);
        }
        self.model.check_input(&all, b, len)?;
        let logits = no_grad(|| self.model.forward_ids(&all, b, len))?;
        let data = logits.data();
        let flat = data.as_slice().expect("standard layout");
        let keep = keep(n);
        self.logits.clear();
        for i in 0..b {
            self.logits.extend_from_slice(&flat[(i * len + len - keep) * v..(i + 1) * len * v]);
        }
        self.ids = all;
        self.len = len;
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
    fn batch(&self) -> usize {
        self.batch
    }
    fn reset(&mut self) {
        self.ids.clear();
        self.len = 0;
    }
    fn append(&mut self, ids: &[usize]) -> Result<&[f32]> {
        self.run(ids, |_| 1)?;
        Ok(&self.logits)
    }
    fn append_all(&mut self, ids: &[usize], out: &mut Vec<f32>) -> Result<()> {
        self.run(ids, |n| n)?;
        out.clear();
        out.extend_from_slice(&self.logits);
        Ok(())
    }
}

/// Any source with its cache thrown away at every step: each append resets it and re-runs the
/// whole sequences so far. What generation costs without a KV cache, on the same engine and
/// kernels (the baseline of module 14 and of the ablation's `kv=off` cells).
pub struct WithoutCache<'a> {
    inner: &'a mut dyn NextTokenSource,
    /// The sequences so far, one `Vec` per row.
    rows: Vec<Vec<usize>>,
    flat: Vec<usize>,
}

impl<'a> WithoutCache<'a> {
    pub fn new(inner: &'a mut dyn NextTokenSource) -> WithoutCache<'a> {
        let rows = vec![Vec::new(); inner.batch()];
        WithoutCache { inner, rows, flat: Vec::new() }
    }
}

impl NextTokenSource for WithoutCache<'_> {
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_seq_len(&self) -> usize {
        self.inner.max_seq_len()
    }
    fn batch(&self) -> usize {
        self.rows.len()
    }
    fn reset(&mut self) {
        self.rows.iter_mut().for_each(Vec::clear);
        self.inner.reset();
    }
    fn append(&mut self, ids: &[usize]) -> Result<&[f32]> {
        let n = rows_of(ids.len(), self.rows.len())?;
        let len = self.rows[0].len() + n;
        self.flat.clear();
        for (i, r) in self.rows.iter().enumerate() {
            self.flat.extend_from_slice(r);
            self.flat.extend_from_slice(&ids[i * n..(i + 1) * n]);
        }
        self.inner.reset();
        let logits = self.inner.append(&self.flat)?;
        // Committed only once the engine took them: a rejected append changes nothing.
        for (r, chunk) in self.rows.iter_mut().zip(self.flat.chunks(len)) {
            r.clear();
            r.extend_from_slice(chunk);
        }
        Ok(logits)
    }
}

/// What a generation reports as it goes, for callers that stream text or time answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// `row` produced `token` (rows that already finished produce no more events).
    Token { row: usize, token: usize },
    /// Every row has its first token: the prompt is processed (time to first token).
    First,
    /// `row` reached a stop token or the length cap; `tokens` is its whole output. Sent exactly
    /// once per row, also for rows with nothing to generate (`max_new_tokens` 0).
    Finished { row: usize, tokens: &'a [usize] },
}

/// Generated tokens with the wall time of every step.
#[derive(Debug, Clone)]
pub struct Trace {
    /// New tokens per sequence (a stop token, if hit, is the last one).
    pub tokens: Vec<Vec<usize>>,
    /// `step_seconds[0]` covers the prompt and the first token (time to first token); each later
    /// entry one more token per sequence: scoring it and sampling it.
    pub step_seconds: Vec<f64>,
}

impl Trace {
    /// Total tokens generated per second over all steps (batch × steps / time).
    pub fn tokens_per_second(&self, batch: usize) -> f64 {
        (batch * self.step_seconds.len()) as f64 / self.step_seconds.iter().sum::<f64>()
    }
}

/// **The** generation loop: every generator of this workspace runs it. The prompts (equal
/// lengths, one per row of `source`) are appended in one call, then one token per row per step
/// until every row has hit a stop token (end of line, EOS: whatever `cfg.stop_tokens` holds; it
/// is kept as the row's last token) or `cfg.max_new_tokens`. A row that finished keeps being
/// scored (the batch stays rectangular) but its output ends there. Row `i` samples with seed
/// `cfg.seed + i`, so the same logits give the same text alone or in a batch. `on_event` sees
/// each token, the first step's end and each row's end, as they happen.
///
/// # Errors
/// No prompts, an empty prompt, prompts of unequal length or a count other than the source's
/// batch, a prompt plus `max_new_tokens` longer than the source's context (all checked before
/// anything runs), invalid sampling settings, or the source's own errors.
pub fn generate_traced(
    source: &mut dyn NextTokenSource,
    prompts: &[&[usize]],
    cfg: &GenerateConfig,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Trace> {
    let b = prompts.len();
    let n = prompts.first().map_or(0, |p| p.len());
    if b == 0 || n == 0 || prompts.iter().any(|p| p.len() != n) {
        return Err(TransformerError::Config("prompts must be non-empty and of equal length".into()));
    }
    if b != source.batch() {
        return Err(TransformerError::Config(format!("{b} prompts for a source of batch {}", source.batch())));
    }
    // Checked before anything is allocated for the new tokens: a typo of 2^40 must not try to
    // reserve terabytes.
    let total = n.saturating_add(cfg.max_new_tokens);
    if total > source.max_seq_len() {
        return Err(TransformerError::ContextOverflow { position: total - 1, max_seq_len: source.max_seq_len() });
    }
    let v = source.vocab_size();
    let mut samplers: Vec<Sampler> =
        (0..b).map(|i| Sampler::new(cfg.sampling, cfg.seed.wrapping_add(i as u64))).collect::<Result<_>>()?;
    let mut out: Vec<Vec<usize>> = (0..b).map(|_| Vec::with_capacity(cfg.max_new_tokens)).collect();
    let mut done = vec![false; b];
    let mut next: Vec<usize> = prompts.concat();
    let mut step_seconds = Vec::with_capacity(cfg.max_new_tokens);
    source.reset();
    for step in 0..cfg.max_new_tokens {
        let start = Instant::now();
        let logits = source.append(&next)?;
        next.truncate(b);
        for (i, s) in samplers.iter_mut().enumerate() {
            next[i] = s.next(&logits[i * v..(i + 1) * v])?;
        }
        step_seconds.push(start.elapsed().as_secs_f64());
        for i in (0..b).filter(|&i| !done[i]) {
            out[i].push(next[i]);
            on_event(Event::Token { row: i, token: next[i] });
        }
        if step == 0 {
            on_event(Event::First);
        }
        for i in 0..b {
            if !done[i] && (cfg.stop_tokens.contains(&next[i]) || out[i].len() == cfg.max_new_tokens) {
                done[i] = true;
                on_event(Event::Finished { row: i, tokens: &out[i] });
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    if cfg.max_new_tokens == 0 {
        (0..b).for_each(|i| on_event(Event::Finished { row: i, tokens: &[] }));
    }
    Ok(Trace { tokens: out, step_seconds })
}

/// Generates up to `max_new_tokens` after `prompt` from any single-sequence [`NextTokenSource`]
/// (it is reset first). Returns only the new tokens; a stop token, if hit, is the last one.
///
/// # Errors
/// As [`generate_traced`].
pub fn generate_with(source: &mut dyn NextTokenSource, prompt: &[usize], cfg: &GenerateConfig) -> Result<Vec<usize>> {
    Ok(generate_traced(source, &[prompt], cfg, &mut |_| {})?.tokens.remove(0))
}

/// Generates up to `max_new_tokens` after `prompt` by full recomputation. Returns only the new
/// tokens (a stop token, if hit, is the last one).
///
/// # Errors
/// As [`generate_traced`].
pub fn generate(model: &Gpt, prompt: &[usize], cfg: &GenerateConfig) -> Result<Vec<usize>> {
    generate_with(&mut FullRecompute::new(model), prompt, cfg)
}

/// Generates for several equal-length prompts at once, one batched forward per step (see
/// [`generate_traced`] for the rules).
///
/// # Errors
/// As [`generate_traced`].
pub fn generate_batch(model: &Gpt, prompts: &[Vec<usize>], cfg: &GenerateConfig) -> Result<Vec<Vec<usize>>> {
    let rows: Vec<&[usize]> = prompts.iter().map(Vec::as_slice).collect();
    let mut source = FullRecompute::batched(model, prompts.len());
    Ok(generate_traced(&mut source, &rows, cfg, &mut |_| {})?.tokens)
}
