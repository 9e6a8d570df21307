//! Continuous batching: the scheduler over the one cached decoder.
//!
//! The decoder ([`CachedGpt`]) holds `slots` sequences, each at its own position. A [`Batcher`]
//! decides which run: a request is admitted into a free slot at any step, and its whole prompt
//! is prefilled in the next step beside the other requests' single decode tokens (one forward
//! pass, [`CachedGpt::step`]); each step samples one token per running request with that
//! request's own seeded [`Sampler`]; a request that finishes (a stop token, its token budget, or
//! its [`Sink`] saying stop — a stop string matched, the client left) frees its slot at once.
//!
//! The rules of a request's output are those of the workspace's generation loop
//! (`tt_transformer::generate::generate_traced`): greedy or seeded sampling from the logits after
//! each token, a stop token kept as the last token, at most `max_new_tokens`. So a request's
//! tokens are those it would get alone; its logits differ from alone only by the dense
//! projection's summation order at another row count (see `tests/batching.rs`).
//!
//! What it does not do: tokenize, time, or talk to anyone. Text, clocks and channels are the
//! [`Sink`]'s business (the server's, or the benchmark's question answerer's).

use std::panic::{catch_unwind, AssertUnwindSafe};

use tt_kvcache::{CachedGpt, SlotTokens};
use tt_transformer::generate::{Sampler, Sampling};

/// Why a request's generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// It produced one of its stop tokens (the last token).
    StopToken,
    /// Its [`Sink`] asked to stop (a stop string matched, or nobody is listening any more).
    Sink,
    /// It produced `max_new_tokens`.
    Length,
    /// The step it was in failed (an engine error, or a panic inside the step).
    Error(String),
}

/// Where a running request's tokens go.
pub trait Sink {
    /// A new token (stop tokens included). Return `false` to end the request here.
    fn token(&mut self, token: usize) -> bool;
    /// The request ended; `tokens` is its whole output. Called exactly once per admitted request.
    fn finish(&mut self, end: Finish, tokens: &[usize]);
}

/// A request: a prompt and how to continue it.
#[derive(Debug, Clone)]
pub struct Job<S> {
    pub prompt: Vec<usize>,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Ids that end the generation (kept as its last token).
    pub stop_tokens: Vec<usize>,
    pub sink: S,
}

/// Why a job was not admitted.
#[derive(Debug)]
pub enum Refused<S> {
    /// Every slot is busy: the job comes back, to be queued.
    Full(Job<S>),
    /// The job can never run here (empty prompt, past the context, bad sampling settings): the
    /// reason, and the job back.
    Invalid(String, Job<S>),
}

struct Running<S> {
    job: Job<S>,
    sampler: Sampler,
    /// Whether its prompt has been run (it is prefilled in the first step after admission).
    prefilled: bool,
    out: Vec<usize>,
}

/// The scheduler: a decoder with `slots` rows, and the request in each.
pub struct Batcher<S: Sink> {
    engine: CachedGpt,
    rows: Vec<Option<Running<S>>>,
    /// The slots that run in the current step, and their logits (kept: a step reuses them).
    live: Vec<usize>,
    logits: Vec<f32>,
}

impl<S: Sink> Batcher<S> {
    /// Schedules over `engine`'s rows (its batch is the number of slots).
    pub fn new(engine: CachedGpt) -> Batcher<S> {
        let rows = (0..engine.batch()).map(|_| None).collect();
        Batcher { engine, rows, live: Vec::new(), logits: Vec::new() }
    }

    /// Requests that can run side by side.
    pub fn slots(&self) -> usize {
        self.rows.len()
    }

    /// Requests admitted and not finished.
    pub fn running(&self) -> usize {
        self.rows.iter().filter(|r| r.is_some()).count()
    }

    /// Longest prompt plus output a request may have.
    pub fn context(&self) -> usize {
        self.engine.max_seq_len()
    }

    /// The decoder (its formats, its cache).
    pub fn engine(&self) -> &CachedGpt {
        &self.engine
    }

    /// Puts `job` into a free slot; its prompt runs in the next [`Batcher::step`].
    ///
    /// # Errors
    /// [`Refused::Full`] when every slot is busy; [`Refused::Invalid`] for a job that can never
    /// run: an empty prompt, a prompt plus `max_new_tokens` past the context, a zero token
    /// budget, or invalid sampling settings.
    pub fn admit(&mut self, job: Job<S>) -> Result<(), Refused<S>> {
        let context = self.context();
        let total = job.prompt.len().saturating_add(job.max_new_tokens);
        let invalid = if job.prompt.is_empty() {
            Some("the prompt is empty".to_string())
        } else if job.max_new_tokens == 0 {
            Some("max_new_tokens is 0".to_string())
        } else if total > context {
            Some(format!(
                "prompt ({} tokens) plus max_new_tokens ({}) exceeds the context of {context}",
                job.prompt.len(),
                job.max_new_tokens
            ))
        } else if let Some(&bad) = job.prompt.iter().find(|&&t| t >= self.engine.vocab_size()) {
            Some(format!("token id {bad} is outside the vocabulary of {}", self.engine.vocab_size()))
        } else {
            None
        };
        if let Some(why) = invalid {
            return Err(Refused::Invalid(why, job));
        }
        let sampler = match Sampler::new(job.sampling, job.seed) {
            Ok(s) => s,
            Err(e) => return Err(Refused::Invalid(e.to_string(), job)),
        };
        let Some(slot) = self.rows.iter().position(Option::is_none) else {
            return Err(Refused::Full(job));
        };
        // In range: `slot` indexes `rows`, which has one entry per engine row.
        self.engine.reset_slot(slot).expect("slot within the engine's batch");
        let out = Vec::with_capacity(job.max_new_tokens);
        self.rows[slot] = Some(Running { job, sampler, prefilled: false, out });
        Ok(())
    }

    /// One forward pass over every running request — new ones' prompts, the others' last
    /// tokens — then one token sampled for each, sent to its sink; requests that finish leave.
    /// Returns the number of requests that ran (0: nothing to do).
    ///
    /// A failing or panicking step ends every request in it with [`Finish::Error`] and empties
    /// their slots; the batcher stays usable.
    pub fn step(&mut self) -> usize {
        let Batcher { engine, rows, live, logits } = self;
        live.clear();
        live.extend((0..rows.len()).filter(|&i| rows[i].is_some()));
        if live.is_empty() {
            return 0;
        }
        let entries: Vec<SlotTokens<'_>> = live
            .iter()
            .map(|&slot| {
                let r = rows[slot].as_ref().expect("live rows are occupied");
                let ids = if r.prefilled {
                    std::slice::from_ref(r.out.last().expect("a prefilled row has a token"))
                } else {
                    &r.job.prompt[..]
                };
                SlotTokens { slot, ids }
            })
            .collect();
        let result = catch_unwind(AssertUnwindSafe(|| {
            engine.step(&entries).map(|l| {
                logits.clear();
                logits.extend_from_slice(l);
            })
        }));
        drop(entries);
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                fail_all(engine, rows, live, &format!("the decoder failed: {e}"));
                return live.len();
            }
            Err(p) => {
                fail_all(engine, rows, live, &format!("the decoder panicked: {}", panic_message(&*p)));
                return live.len();
            }
        }
        let v = logits.len() / live.len();
        for (k, &slot) in live.iter().enumerate() {
            let r = rows[slot].as_mut().expect("live rows are occupied");
            r.prefilled = true;
            let token = match r.sampler.next(&logits[k * v..(k + 1) * v]) {
                Ok(t) => t,
                Err(e) => {
                    let mut r = rows[slot].take().expect("occupied");
                    r.job.sink.finish(Finish::Error(format!("sampling failed: {e}")), &r.out);
                    continue;
                }
            };
            r.out.push(token);
            // A sink that panics (a bug in the caller's code) ends its own request only.
            let more = catch_unwind(AssertUnwindSafe(|| r.job.sink.token(token)));
            let end = match more {
                Err(p) => Some(Finish::Error(format!("the request's sink panicked: {}", panic_message(&*p)))),
                Ok(false) => Some(Finish::Sink),
                Ok(true) if r.job.stop_tokens.contains(&token) => Some(Finish::StopToken),
                Ok(true) if r.out.len() >= r.job.max_new_tokens => Some(Finish::Length),
                Ok(true) => None,
            };
            if let Some(end) = end {
                let mut r = rows[slot].take().expect("occupied");
                let _ = catch_unwind(AssertUnwindSafe(|| r.job.sink.finish(end, &r.out)));
            }
        }
        live.len()
    }
}

fn fail_all<S: Sink>(engine: &mut CachedGpt, rows: &mut [Option<Running<S>>], live: &[usize], why: &str) {
    for &slot in live {
        if let Some(mut r) = rows[slot].take() {
            // In range (a live slot); a failed step may have left the row half-appended.
            let _ = engine.reset_slot(slot);
            let _ = catch_unwind(AssertUnwindSafe(|| r.job.sink.finish(Finish::Error(why.to_string()), &r.out)));
        }
    }
}

/// The text a panic carried, if it was a string.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
