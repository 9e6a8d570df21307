//! The GPT question answerer as a system under test: one variant of the model and decoder
//! (KV cache, kernels, weight format, pruning, threads), worker threads that each own their
//! engines, and dynamic batching — queued questions of equal prompt length run as one batched
//! decode (the decoder's batch rows share one position, so only equal lengths can share a
//! batch; a row that finishes early is answered then and its slot idles to the batch's end).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tt_accel::fused;
use tt_accel::packed::pack_linears_with;
use tt_kvcache::{CachedGpt, KvStorage, OverflowPolicy};
use tt_perf::loadgen::{QuerySample, QuerySampleLibrary, QuerySampleResponse, Responder, SystemUnderTest};

use super::queue::{Pending, WorkQueue};
use tt_quant::{quantize_dynamic, WeightConfig};
use tt_tensor::Module;
use tt_transformer::corpus::QaPair;
use tt_transformer::generate::{generate_traced, Event, GenerateConfig, WithoutCache};
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

/// Greedy answers to `prompts` (equal lengths) in one batched generation by the workspace's one
/// generation loop: one prefill, then a decode step per token (or, without the cache, the whole
/// sequence again). An answer ends at a stop token or after [`MAX_NEW_TOKENS`], fewer if the
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
    max_batch: usize,
    kv_cache: bool,
    errors: Mutex<Vec<String>>,
}

/// The question answerer under test: `workers` threads, each with its own decoders (one per
/// batch size used), pulling from one queue.
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
            max_batch: max_batch.max(1),
            kv_cache: variant.kv_cache,
            errors: Mutex::new(Vec::new()),
        });
        // Engines are built here, before any query, so allocation is not timed (batch sizes
        // above 1 are built on first use by the worker) — and before any thread starts, so a
        // failure leaves none behind.
        let firsts = (0..workers.max(1)).map(|_| engine(&model, &variant, 1)).collect::<Result<Vec<_>>>()?;
        // Built before spawning: if a spawn fails, dropping `sut` stops the workers started.
        let mut sut = QaSut { name: name.to_string(), inner, workers: Vec::new() };
        for (w, first) in firsts.into_iter().enumerate() {
            let (inner, model) = (Arc::clone(&sut.inner), Arc::clone(&model));
            let h = std::thread::Builder::new()
                .name(format!("qa-worker-{w}"))
                .spawn(move || worker(&inner, &model, variant, first))
                .map_err(|e| MilestoneError::Other(format!("cannot start a worker thread: {e}")))?;
            sut.workers.push(h);
        }
        Ok(sut)
    }

    /// Errors the workers met (a failed or panicking generation answers its samples with an
    /// empty answer and records why here, so a run never hangs on it).
    pub fn errors(&self) -> Vec<String> {
        self.inner.errors.lock().expect("errors lock").clone()
    }
}

fn worker(inner: &Inner, model: &Gpt, variant: Variant, first: CachedGpt) {
    let mut engines: Vec<Option<CachedGpt>> = (0..=inner.max_batch).map(|_| None).collect();
    engines[1] = Some(first);
    loop {
        // The oldest question, and every queued one of its prompt length, up to max_batch.
        let Some(batch) = inner.queue.next_batch(|q| {
            let head = q.pop_front().expect("next_batch gives a non-empty queue");
            let len = inner.prompts[head.sample.index].len();
            let mut batch = vec![head];
            let mut i = 0;
            while batch.len() < inner.max_batch && i < q.len() {
                if inner.prompts[q[i].sample.index].len() == len {
                    batch.push(q.remove(i).expect("in range"));
                } else {
                    i += 1;
                }
            }
            batch
        }) else {
            return;
        };
        let b = batch.len();
        if engines[b].is_none() {
            match engine(model, &variant, b) {
                Ok(e) => engines[b] = Some(e),
                Err(e) => {
                    fail(inner, &batch, &e.to_string());
                    continue;
                }
            }
        }
        let eng = engines[b].as_mut().expect("built above");
        let prompts: Vec<&[usize]> = batch.iter().map(|p| inner.prompts[p.sample.index].as_slice()).collect();
        let mut answered = vec![false; b];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            generate(
                eng,
                inner.kv_cache,
                &prompts,
                &inner.stops,
                || batch.iter().for_each(|p| p.responder.first_token(p.sample.id)),
                |i, tokens| {
                    let text = answer_text(&inner.tokenizer, tokens);
                    let p = &batch[i];
                    p.responder.complete(&[QuerySampleResponse {
                        id: p.sample.id,
                        data: text.into_bytes(),
                        tokens: Some(tokens.len() as u32),
                    }]);
                    answered[i] = true;
                },
            )
        }))
        .unwrap_or_else(|_| Err(MilestoneError::Other("generation panicked".into())));
        if let Err(e) = r {
            let left: Vec<&Pending> = batch.iter().zip(&answered).filter(|(_, &a)| !a).map(|(p, _)| p).collect();
            inner.errors.lock().expect("errors lock").push(e.to_string());
            for p in left {
                p.responder.complete(&[QuerySampleResponse { id: p.sample.id, data: Vec::new(), tokens: Some(0) }]);
            }
        }
    }
}

fn fail(inner: &Inner, batch: &[Pending], why: &str) {
    inner.errors.lock().expect("errors lock").push(why.to_string());
    for p in batch {
        p.responder.complete(&[QuerySampleResponse { id: p.sample.id, data: Vec::new(), tokens: Some(0) }]);
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
