//! The GPT question answerer as a system under test: one variant of the model and decoder
//! (KV cache, kernels, weight format, pruning, threads) and worker threads that each own a
//! decoder. With the KV cache, each worker schedules by continuous batching (tt-serve's
//! [`Batcher`], the server's own scheduler): queued questions join free decoder slots at any step,
//! whatever their length, and leave — answered — as they finish. Without the cache (the
//! ablation's baseline) there is nothing to keep between steps: a worker answers one question at
//! a time, re-running the whole sequence per token.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tt_accel::fused;
use tt_accel::packed::pack_linears_with;
use tt_kvcache::{CachedGpt, KvStorage, OverflowPolicy};
use tt_perf::loadgen::{QuerySample, QuerySampleLibrary, QuerySampleResponse, Responder, SystemUnderTest};

use super::queue::{Pending, WorkQueue};
use tt_quant::{quantize_dynamic, WeightConfig};
use tt_serve::batcher::{Batcher, Finish, Job, Refused, Sink};
use tt_tensor::Module;
use tt_transformer::corpus::QaPair;
use tt_transformer::generate::{generate_traced, Event, GenerateConfig, Sampling, WithoutCache};
use tt_transformer::{Gpt, Tokenize, Tokenizer};

use crate::{MilestoneError, Result};

/// Answers stop at the end of the line or after this many tokens (as the exact-match scorer).
pub const MAX_NEW_TOKENS: usize = 48;

/// One point of the ablation's design space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub kv_cache: bool,
    /// tt-accel's packed projections and fused row kernels; otherwise the reference layers and
    /// row kernels (int8 then runs tt-quant's scalar integer kernel).
    pub accelerated: bool,
    pub int8: bool,
    /// int8 KV cache rows (only with `kv_cache`).
    pub int8_kv: bool,
    /// 50% of every block's MLP units removed (and fine-tuned; see `torchperf::models`).
    pub pruned: bool,
    /// Threads inside one decode, where the variant's kernels can use them: with the
    /// accelerated kernels, attention by heads (and packed fp32 projections by output panels;
    /// the int8 projections run on one thread). The reference kernels use one thread whatever
    /// this says — the ablation measures that too.
    pub threads: usize,
}

impl Variant {
    pub const BASELINE: Variant =
        Variant { kv_cache: false, accelerated: false, int8: false, int8_kv: false, pruned: false, threads: 1 };
    /// The configuration the suite submits: every optimization that keeps quality.
    pub const OPTIMIZED: Variant =
        Variant { kv_cache: true, accelerated: true, int8: true, int8_kv: true, pruned: false, threads: 1 };

    pub fn name(&self) -> String {
        format!(
            "kv={} kernels={} weights={}{} pruning={} threads={}",
            if self.kv_cache { "on" } else { "off" },
            if self.accelerated { "accelerated" } else { "reference" },
            if self.int8 { "int8" } else { "fp32" },
            if self.int8_kv && self.kv_cache { "+int8kv" } else { "" },
            if self.pruned { "50%" } else { "0" },
            self.threads
        )
    }
}

/// The model with the variant's weight format installed, and its bytes as stored for inference.
pub struct Prepared {
    pub model: Gpt,
    pub model_bytes: u64,
}

/// Installs the variant's projections into `model` (a fresh copy).
///
/// # Errors
/// Packing or quantizing errors.
pub fn prepare(mut model: Gpt, v: &Variant) -> Result<Prepared> {
    let params = model.num_parameters() as u64;
    let dense_proj: u64 =
        CachedGpt::new(&model, 1, OverflowPolicy::Error)?.projection_formats().iter().map(|p| p.2 as u64).sum();
    let team = if v.threads > 1 { tt_accel::team::global().cloned() } else { None };
    if v.int8 {
        let q = |m: &mut Gpt| quantize_dynamic(m, WeightConfig::PER_CHANNEL).map(|_| ());
        if v.accelerated {
            q(&mut model)?;
        } else {
            tt_accel::dispatch::with_level(tt_accel::Level::Scalar, |_| q(&mut model))?;
        }
    } else if v.accelerated {
        pack_linears_with(&mut model, team)?;
    }
    let proj: u64 =
        CachedGpt::new(&model, 1, OverflowPolicy::Error)?.projection_formats().iter().map(|p| p.2 as u64).sum();
    // Embeddings, norms and biases stay f32; the projections count as stored.
    Ok(Prepared { model_bytes: 4 * params - dense_proj + proj, model })
}

/// A decoder for `batch` rows with the variant's kernels and KV storage.
///
/// # Errors
/// The decoder's.
pub fn engine(model: &Gpt, v: &Variant, batch: usize) -> Result<CachedGpt> {
    let mut e = CachedGpt::new(model, batch, OverflowPolicy::Error)?;
    if v.accelerated {
        e.set_row_kernels(if v.threads > 1 { fused::row_kernels_threaded() } else { fused::row_kernels() });
    }
    if v.int8_kv && v.kv_cache {
        e.set_kv_storage(KvStorage::Int8)?;
    }
    Ok(e)
}

/// Greedy answers to `prompts` (equal lengths; the system under test passes one) by the
/// workspace's one generation loop: one prefill, then a decode step per token (or, without the
/// cache, the whole sequence again). An answer ends at a stop token or after [`MAX_NEW_TOKENS`], fewer if the
/// context ends first. `first` runs once the first token of every row exists;
/// `finished(row, tokens)` as each row ends.
///
/// # Errors
/// The decoder's; prompts of unequal length or a count other than the engine's batch.
pub fn generate(
    engine: &mut CachedGpt,
    kv_cache: bool,
    prompts: &[&[usize]],
    stops: &[usize],
    mut first: impl FnMut(),
    mut finished: impl FnMut(usize, &[usize]),
) -> Result<()> {
    let n = prompts.first().map_or(0, |p| p.len());
    let cfg = GenerateConfig::greedy(MAX_NEW_TOKENS.min(engine.max_seq_len().saturating_sub(n))).with_stop(stops);
    let mut on_event = |e: Event<'_>| match e {
        Event::First => first(),
        Event::Finished { row, tokens } => finished(row, tokens),
        Event::Token { .. } => {}
    };
    if kv_cache {
        generate_traced(engine, prompts, &cfg, &mut on_event)?;
    } else {
        generate_traced(&mut WithoutCache::new(engine), prompts, &cfg, &mut on_event)?;
    }
    Ok(())
}

/// The answer text from generated tokens, as `tt_transformer::eval::answer_with` reads it.
pub fn answer_text(tokenizer: &Tokenizer, tokens: &[usize]) -> String {
    tokenizer.decode_ids(tokens).map(|t| t.lines().next().unwrap_or("").trim().to_string()).unwrap_or_default()
}

/// The questions as a query sample library: tokenized prompts and their reference answers.
pub struct QaLibrary {
    pub prompts: Arc<Vec<Vec<usize>>>,
    pub answers: Vec<String>,
    loaded: usize,
}

impl QaLibrary {
    /// # Errors
    /// Tokenizer errors.
    pub fn new(tokenizer: &Tokenizer, pairs: &[QaPair]) -> Result<QaLibrary> {
        let prompts =
            pairs.iter().map(|p| tokenizer.encode_ids(&p.prompt())).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(QaLibrary {
            prompts: Arc::new(prompts),
            answers: pairs.iter().map(|p| p.answer.clone()).collect(),
            loaded: 0,
        })
    }

    /// Exact match of an accuracy run's responses.
    pub fn exact_match(&self, accuracy: &[(usize, Vec<u8>)]) -> f64 {
        let correct = accuracy.iter().filter(|(i, d)| String::from_utf8_lossy(d) == self.answers[*i]).count();
        correct as f64 / accuracy.len().max(1) as f64
    }
}

impl QuerySampleLibrary for QaLibrary {
    fn name(&self) -> String {
        format!("qa-test-{}", self.prompts.len())
    }
    fn total_sample_count(&self) -> usize {
        self.prompts.len()
    }
    fn performance_sample_count(&self) -> usize {
        self.prompts.len()
    }
    fn load_samples(&mut self, indices: &[usize]) -> tt_perf::Result<()> {
        // Prompts are tokenized up front; loading is bookkeeping (they are a few KB).
        self.loaded = indices.len();
        Ok(())
    }
    fn unload_samples(&mut self, _: &[usize]) -> tt_perf::Result<()> {
        self.loaded = 0;
        Ok(())
    }
}

struct Inner {
    queue: WorkQueue,
    prompts: Arc<Vec<Vec<usize>>>,
    tokenizer: Tokenizer,
    stops: Vec<usize>,
    errors: Mutex<Vec<String>>,
}

impl Inner {
    fn answer(&self, p: &Pending, tokens: &[usize]) {
        let text = answer_text(&self.tokenizer, tokens);
        p.responder.complete(&[QuerySampleResponse {
            id: p.sample.id,
            data: text.into_bytes(),
            tokens: Some(tokens.len() as u32),
        }]);
    }
    /// Answers `p` empty and records why (so a run never hangs on a failed question).
    fn fail(&self, p: &Pending, why: &str) {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).push(why.to_string());
        p.responder.complete(&[QuerySampleResponse { id: p.sample.id, data: Vec::new(), tokens: Some(0) }]);
    }
}

/// The question answerer under test: `workers` threads, each with its own decoder of
/// `max_batch` slots (one, without the KV cache), pulling from one queue.
pub struct QaSut {
    name: String,
    inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
}

impl QaSut {
    /// # Errors
    /// Building an engine fails, or the tokenizer has no newline.
    pub fn new(
        name: &str,
        model: Arc<Gpt>,
        variant: Variant,
        tokenizer: &Tokenizer,
        prompts: Arc<Vec<Vec<usize>>>,
        workers: usize,
        max_batch: usize,
    ) -> Result<QaSut> {
        let stops = tokenizer.encode_ids("\n")?;
        let inner = Arc::new(Inner {
            queue: WorkQueue::default(),
            prompts,
            tokenizer: tokenizer.clone(),
            stops,
            errors: Mutex::new(Vec::new()),
        });
        let slots = if variant.kv_cache { max_batch.max(1) } else { 1 };
        // Engines are built here, before any query, so allocation is not timed — and before any
        // thread starts, so a failure leaves none behind.
        let engines = (0..workers.max(1)).map(|_| engine(&model, &variant, slots)).collect::<Result<Vec<_>>>()?;
        // Built before spawning: if a spawn fails, dropping `sut` stops the workers started.
        let mut sut = QaSut { name: name.to_string(), inner, workers: Vec::new() };
        for (w, e) in engines.into_iter().enumerate() {
            let inner = Arc::clone(&sut.inner);
            let h = std::thread::Builder::new()
                .name(format!("qa-worker-{w}"))
                .spawn(move || if variant.kv_cache { continuous(&inner, e) } else { one_at_a_time(&inner, e) })
                .map_err(|e| MilestoneError::Other(format!("cannot start a worker thread: {e}")))?;
            sut.workers.push(h);
        }
        Ok(sut)
    }

    /// Errors the workers met (a failed or panicking generation answers its samples with an
    /// empty answer and records why here, so a run never hangs on it).
    pub fn errors(&self) -> Vec<String> {
        self.inner.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A question in a decoder slot: its first token is the system's first token for LoadGen, its
/// end is its answer.
struct Answer<'a> {
    inner: &'a Inner,
    p: Pending,
    started: bool,
}

impl Sink for Answer<'_> {
    fn token(&mut self, _: usize) -> bool {
        if !self.started {
            self.started = true;
            self.p.responder.first_token(self.p.sample.id);
        }
        true
    }
    fn finish(&mut self, end: Finish, tokens: &[usize]) {
        match end {
            Finish::Error(why) => self.inner.fail(&self.p, &why),
            _ => self.inner.answer(&self.p, tokens),
        }
    }
}

/// Continuous batching: before every step, queued questions fill the free slots (waiting for
/// one only when nothing runs); each step decodes every running question.
fn continuous(inner: &Inner, engine: CachedGpt) {
    let mut b: Batcher<Answer<'_>> = Batcher::new(engine);
    let context = b.context();
    loop {
        let free = b.slots() - b.running();
        let taken = if b.running() == 0 {
            match inner.queue.next_batch(|q| q.drain(..free.min(q.len())).collect()) {
                Some(t) => t,
                None => return,
            }
        } else {
            inner.queue.try_take(free)
        };
        for p in taken {
            let prompt = inner.prompts[p.sample.index].clone();
            let max_new_tokens = MAX_NEW_TOKENS.min(context.saturating_sub(prompt.len()));
            let sink = Answer { inner, p, started: false };
            let job = Job {
                prompt,
                max_new_tokens,
                sampling: Sampling::Greedy,
                seed: 0,
                stop_tokens: inner.stops.clone(),
                sink,
            };
            match b.admit(job) {
                Ok(()) => {}
                // At most `free` were taken.
                Err(Refused::Full(job)) => inner.fail(&job.sink.p, "no free slot"),
                Err(Refused::Invalid(why, job)) => inner.fail(&job.sink.p, &why),
            }
        }
        b.step();
    }
}

/// Without a KV cache: one question at a time, by the one generation loop over an engine that
/// re-runs the whole sequence every step.
fn one_at_a_time(inner: &Inner, mut eng: CachedGpt) {
    while let Some(batch) = inner.queue.next_batch(|q| q.pop_front().into_iter().collect()) {
        for p in batch {
            let prompt = inner.prompts[p.sample.index].as_slice();
            let mut answered = false;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                generate(
                    &mut eng,
                    false,
                    &[prompt],
                    &inner.stops,
                    || p.responder.first_token(p.sample.id),
                    |_, tokens| {
                        inner.answer(&p, tokens);
                        answered = true;
                    },
                )
            }))
            .unwrap_or_else(|_| Err(MilestoneError::Other("generation panicked".into())));
            if let (Err(e), false) = (r, answered) {
                inner.fail(&p, &e.to_string());
            }
        }
    }
}

impl SystemUnderTest for QaSut {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn issue_query(&self, samples: &[QuerySample], responder: &Responder) {
        self.inner.queue.push(samples, responder);
    }
}

impl Drop for QaSut {
    fn drop(&mut self) {
        self.inner.queue.shutdown();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
