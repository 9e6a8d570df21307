//! Training (module 13): next-token cross-entropy, AdamW, linear warmup + cosine decay, gradient
//! clipping, periodic validation loss and perplexity, a progress bar with tokens/s.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tt_tensor::loss::{cross_entropy, cross_entropy_weighted};
use tt_tensor::optim::{clip_grad_norm, Adam, Optimizer};
use tt_tensor::{no_grad, Module, Tensor};

use crate::error::{Result, TransformerError};
use crate::model::Gpt;

/// Training hyper-parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup_steps: usize,
    pub weight_decay: f32,
    pub grad_clip: f32,
    /// Validate every this many steps (and at the end).
    pub eval_every: usize,
    /// Number of validation windows of `seq_len` tokens.
    pub eval_windows: usize,
    /// Every this many steps, train a batch of `data_parallel` windows of `long_seq_len` tokens
    /// instead, so positions beyond `seq_len` (up to the model's context) are trained too.
    /// 0 disables.
    pub long_every: usize,
    pub long_seq_len: usize,
    /// The batch is split into this many equal shards, each run forward and backward on its own
    /// thread. Gradients are summed (each shard's loss is scaled by 1/shards), so the update equals
    /// the full-batch update up to f32 rounding. Fixed in the config, not taken from the core
    /// count, so a seed gives the same model on any machine.
    pub data_parallel: usize,
    pub seed: u64,
}

impl TrainConfig {
    /// Checks every setting before anything is allocated or trained.
    ///
    /// # Errors
    /// A zero count or size, a learning rate or decay that is not finite and non-negative (the
    /// peak rate must be positive), or a batch that does not split into `data_parallel` shards.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TransformerError::Config(m));
        for (name, v) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("seq_len", self.seq_len),
            ("eval_every", self.eval_every),
            ("eval_windows", self.eval_windows),
            ("data_parallel", self.data_parallel),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.long_every > 0 && self.long_seq_len == 0 {
            return bad("long_seq_len must be at least 1 when long_every is set".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr {} must be a positive finite number", self.lr));
        }
        for (name, v) in [("min_lr", self.min_lr), ("weight_decay", self.weight_decay), ("grad_clip", self.grad_clip)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} {v} must be a finite number ≥ 0"));
            }
        }
        if self.min_lr > self.lr {
            return bad(format!("min_lr {} exceeds lr {}", self.min_lr, self.lr));
        }
        Ok(())
    }
}

/// What a custom loss sees for one shard of a batch: the logits `[batch, seq, vocab]` (in the
/// graph) and the token windows they came from.
#[derive(Debug, Clone, Copy)]
pub struct LossInput<'a> {
    pub logits: &'a Tensor,
    pub inputs: &'a [usize],
    pub targets: &'a [usize],
    /// Per-target loss weights, when the data has them.
    pub weights: Option<&'a [f32]>,
    pub batch: usize,
    pub seq: usize,
}

/// The standard loss: next-token cross-entropy, weighted when the data carries weights.
///
/// # Errors
/// Shape mismatches between logits and targets.
pub fn default_loss(input: &LossInput) -> Result<Tensor> {
    Ok(match input.weights {
        None => cross_entropy(input.logits, input.targets)?,
        Some(w) => cross_entropy_weighted(input.logits, input.targets, w)?,
    })
}

/// A replacement loss (distillation against a teacher's logits, a regularizer, …). Runs on the
/// data-parallel shard threads, hence `Sync`.
pub type LossFn<'a> = dyn Fn(&LossInput) -> Result<Tensor> + Sync + 'a;

/// A callback after every optimizer step, with the step index (re-apply pruning masks, update
/// quantization-aware observers, …). Returning an error stops training with it.
pub type AfterStepFn<'a> = dyn FnMut(usize, &Gpt) -> Result<()> + 'a;

/// Extension points of [`train_with_hooks`]: what techniques change without copying the loop.
#[derive(Default)]
pub struct TrainHooks<'a> {
    /// Replaces [`default_loss`].
    pub loss: Option<&'a LossFn<'a>>,
    pub after_step: Option<&'a mut AfterStepFn<'a>>,
    /// The tensors the optimizer updates instead of `model.parameters()` — for layers whose
    /// forward reads other trainable tensors (low-rank factors through a forward transform).
    pub parameters: Option<Vec<Tensor>>,
}

/// Learning rate at `step`: linear warmup to `lr`, then cosine decay to `min_lr` at `steps`.
pub fn lr_at(step: usize, cfg: &TrainConfig) -> f32 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f32 / cfg.warmup_steps as f32;
    }
    let span = cfg.steps.saturating_sub(cfg.warmup_steps).max(1);
    let progress = ((step - cfg.warmup_steps) as f32 / span as f32).min(1.0);
    cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + (std::f32::consts::PI * progress).cos())
}

/// One validation point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    pub train_loss: f32,
    pub val_loss: f32,
    pub val_perplexity: f32,
}

/// What a training run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: usize,
    pub tokens: usize,
    pub train_seconds: f64,
    pub tokens_per_second: f64,
    pub final_val_loss: f32,
    pub final_val_perplexity: f32,
    pub history: Vec<EvalPoint>,
}

/// A token stream to train on, with optional loss weights and window starts.
#[derive(Debug, Clone)]
pub struct TrainData {
    pub ids: Vec<usize>,
    /// `weights[p]`: loss weight for predicting `ids[p]` (same length as `ids`). `None`: all 1.
    pub weights: Option<Vec<f32>>,
    /// Positions where training windows may start. `None`: anywhere.
    pub starts: Option<Vec<usize>>,
}

impl TrainData {
    /// Plain language modelling: every token weighted 1, windows start anywhere.
    pub fn plain(ids: Vec<usize>) -> TrainData {
        TrainData { ids, weights: None, starts: None }
    }

    fn check(&self, max_window: usize) -> Result<()> {
        if self.ids.len() <= max_window + 1 {
            return Err(TransformerError::Config(format!("{} training tokens are too few", self.ids.len())));
        }
        if self.weights.as_ref().is_some_and(|w| w.len() != self.ids.len()) {
            return Err(TransformerError::Config("one loss weight per token is required".into()));
        }
        if let Some(s) = &self.starts {
            if !s.iter().any(|&p| p + max_window < self.ids.len()) {
                return Err(TransformerError::Config("no allowed window start leaves room for a window".into()));
            }
        }
        Ok(())
    }
}

/// A sampled batch: inputs, next-token targets and their loss weights.
struct Sampled {
    x: Vec<usize>,
    y: Vec<usize>,
    w: Option<Vec<f32>>,
}

/// Draws `batch` random windows of `seq + 1` tokens.
fn sample_batch(data: &TrainData, batch: usize, seq: usize, rng: &mut ChaCha8Rng) -> Sampled {
    let n = data.ids.len();
    let mut out = Sampled {
        x: Vec::with_capacity(batch * seq),
        y: Vec::with_capacity(batch * seq),
        w: data.weights.as_ref().map(|_| Vec::with_capacity(batch * seq)),
    };
    for _ in 0..batch {
        let start = match &data.starts {
            None => rng.random_range(0..n - seq),
            Some(starts) => loop {
                let s = starts[rng.random_range(0..starts.len())];
                if s + seq < n {
                    break s;
                }
            },
        };
        out.x.extend_from_slice(&data.ids[start..start + seq]);
        out.y.extend_from_slice(&data.ids[start + 1..start + seq + 1]);
        if let (Some(w), Some(all)) = (out.w.as_mut(), data.weights.as_ref()) {
            w.extend_from_slice(&all[start + 1..start + seq + 1]);
        }
    }
    out
}

/// Runs forward and backward for a batch split into `shards` equal parts on scoped threads;
/// returns the mean loss. Each leaf receives exactly one gradient accumulation per shard.
fn forward_backward_sharded(
    model: &Gpt,
    b: &Sampled,
    batch: usize,
    seq: usize,
    shards: usize,
    seed: u64,
    loss_fn: &LossFn,
) -> Result<f32> {
    let per = batch / shards;
    let run = |i: usize| -> Result<f32> {
        let r = i * per * seq..(i + 1) * per * seq;
        let logits = model.forward_train(&b.x[r.clone()], per, seq, seed.wrapping_add(i as u64))?;
        let loss = loss_fn(&LossInput {
            logits: &logits,
            inputs: &b.x[r.clone()],
            targets: &b.y[r.clone()],
            weights: b.w.as_ref().map(|w| &w[r]),
            batch: per,
            seq,
        })?;
        let value = loss.item()?;
        loss.mul_scalar(1.0 / shards as f32).backward()?;
        Ok(value)
    };
    if shards == 1 {
        return run(0);
    }
    let losses: Vec<Result<f32>> =
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..shards).map(|i| s.spawn(move || run(i))).collect();
            let mut out = vec![run(0)];
            out.extend(handles.into_iter().map(|h| {
                h.join().unwrap_or_else(|_| Err(TransformerError::Config("training thread panicked".into())))
            }));
            out
        });
    let mut total = 0.0;
    for l in losses {
        total += l?;
    }
    Ok(total / shards as f32)
}

/// Mean next-token loss over `windows` evenly spaced windows of `seq` tokens (deterministic).
pub fn evaluate_loss(model: &Gpt, ids: &[usize], seq: usize, windows: usize) -> Result<f32> {
    if ids.len() <= seq + 1 {
        return Err(TransformerError::Config(format!("{} evaluation tokens are too few for seq_len {seq}", ids.len())));
    }
    let span = ids.len() - seq - 1;
    let windows = windows.max(1);
    no_grad(|| {
        let mut total = 0.0f64;
        let chunk = 8;
        let starts: Vec<usize> = (0..windows).map(|w| w * span / windows).collect();
        for group in starts.chunks(chunk) {
            let mut x = Vec::new();
            let mut y = Vec::new();
            for &s in group {
                x.extend_from_slice(&ids[s..s + seq]);
                y.extend_from_slice(&ids[s + 1..s + seq + 1]);
            }
            let logits = model.forward_ids(&x, group.len(), seq)?;
            total += cross_entropy(&logits, &y)?.item()? as f64 * group.len() as f64;
        }
        Ok((total / windows as f64) as f32)
    })
}

/// Trains `model` in place on token streams; `log` receives one line per validation.
///
/// # Errors
/// An invalid config ([`TrainConfig::validate`]), windows longer than the model's context, too
/// little data, or a diverged (non-finite) loss.
pub fn train(
    model: &Gpt,
    data: &TrainData,
    val_ids: &[usize],
    cfg: &TrainConfig,
    progress: bool,
    log: impl FnMut(&str),
) -> Result<TrainReport> {
    train_with_hooks(model, data, val_ids, cfg, TrainHooks::default(), progress, log)
}

/// [`train`] with a replacement loss and an after-step callback (see [`TrainHooks`]).
///
/// # Errors
/// As [`train`], plus any error a hook returns.
pub fn train_with_hooks(
    model: &Gpt,
    data: &TrainData,
    val_ids: &[usize],
    cfg: &TrainConfig,
    mut hooks: TrainHooks,
    progress: bool,
    mut log: impl FnMut(&str),
) -> Result<TrainReport> {
    cfg.validate()?;
    let loss_fn: &LossFn = hooks.loss.unwrap_or(&default_loss);
    let max_window = cfg.seq_len.max(if cfg.long_every > 0 { cfg.long_seq_len } else { 0 });
    if max_window > model.config.max_seq_len {
        return Err(TransformerError::Config(format!(
            "training window {max_window} exceeds max_seq_len {}",
            model.config.max_seq_len
        )));
    }
    data.check(max_window)?;
    let params = hooks.parameters.take().unwrap_or_else(|| model.parameters());
    let mut opt = Adam::adamw(params.clone(), cfg.lr, cfg.weight_decay)?.with_betas(0.9, 0.95);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let bar = if progress { ProgressBar::new(cfg.steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] step {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut tokens = 0usize;
    let mut history = Vec::new();
    let mut recent = Vec::new();
    for step in 0..cfg.steps {
        let long = cfg.long_every > 0 && step % cfg.long_every == cfg.long_every - 1;
        let (batch, seq) =
            if long { (cfg.data_parallel.max(1), cfg.long_seq_len) } else { (cfg.batch_size, cfg.seq_len) };
        let sampled = sample_batch(data, batch, seq, &mut rng);
        opt.set_lr(lr_at(step, cfg))?;
        opt.zero_grad();
        let shards = if batch % cfg.data_parallel.max(1) == 0 { cfg.data_parallel.max(1) } else { 1 };
        let seed = (cfg.seed << 32) ^ (step as u64 * 1024);
        let l = forward_backward_sharded(model, &sampled, batch, seq, shards, seed, loss_fn)?;
        if cfg.grad_clip > 0.0 {
            clip_grad_norm(&params, cfg.grad_clip)?;
        }
        opt.step()?;
        if let Some(after) = hooks.after_step.as_mut() {
            after(step, model)?;
        }
        tokens += batch * seq;
        if !l.is_finite() {
            return Err(TransformerError::Config(format!("training diverged at step {step} (loss {l})")));
        }
        recent.push(l);
        let tps = tokens as f64 / start.elapsed().as_secs_f64();
        bar.set_message(format!("loss {l:.3} | {tps:.0} tok/s"));
        bar.inc(1);
        if (step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps {
            let val_loss = evaluate_loss(model, val_ids, cfg.seq_len, cfg.eval_windows)?;
            let train_loss = recent.iter().sum::<f32>() / recent.len() as f32;
            recent.clear();
            let p = EvalPoint { step: step + 1, train_loss, val_loss, val_perplexity: val_loss.exp() };
            bar.suspend(|| {
                log(&format!(
                    "step {:>5}  train loss {:.4}  val loss {:.4}  val ppl {:.3}  ({tps:.0} tok/s)",
                    p.step, p.train_loss, p.val_loss, p.val_perplexity
                ))
            });
            history.push(p);
        }
    }
    bar.finish_and_clear();
    let train_seconds = start.elapsed().as_secs_f64();
    // validate() guarantees steps ≥ 1, and the last step always evaluates.
    let last = history.last().cloned().expect("the last step evaluates");
    Ok(TrainReport {
        steps: cfg.steps,
        tokens,
        train_seconds,
        tokens_per_second: tokens as f64 / train_seconds,
        final_val_loss: last.val_loss,
        final_val_perplexity: last.val_perplexity,
        history,
    })
}
