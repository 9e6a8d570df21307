//! Shared training loop and checkpointing for the digit classifiers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tt_tensor::data::{Batch, ClassificationData, DataLoader, Dataset};
use tt_tensor::loss::cross_entropy;
use tt_tensor::optim::{Adam, Optimizer};
use tt_tensor::serialize::{
    load_state_dict, load_unit, parse_safetensors, save_unit, to_safetensors_bytes, unit_exists,
};
use tt_tensor::{no_grad, Module, Tensor};

use crate::{MilestoneError, Options, Result};

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub seed: u64,
}

/// One epoch's measured numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f32,
    pub train_accuracy: f32,
    pub test_accuracy: f32,
    pub seconds: f64,
}

/// Fraction of samples whose arg-max prediction equals the label.
pub fn accuracy(model: &dyn Module, data: &ClassificationData) -> Result<f32> {
    let loader = DataLoader::new(data, 256, false, 0)?;
    let mut correct = 0usize;
    no_grad(|| -> Result<()> {
        for batch in loader.epoch(0) {
            let pred = model.forward(&batch.x)?.argmax_axis(1)?;
            correct += pred.iter().zip(&batch.y).filter(|(p, y)| p == y).count();
        }
        Ok(())
    })?;
    Ok(correct as f32 / data.len().max(1) as f32)
}

/// Trains `model` with Adam and cross-entropy, evaluating held-out accuracy after each epoch.
/// Returns per-epoch stats and the total training wall time in seconds (evaluation excluded).
pub fn train(
    model: &mut dyn Module,
    train: &ClassificationData,
    test: &ClassificationData,
    cfg: &TrainConfig,
    opts: &Options,
) -> Result<(Vec<EpochStats>, f64)> {
    let ce = |logits: &Tensor, batch: &Batch| Ok(cross_entropy(logits, &batch.y)?);
    train_with(model, train, test, cfg, opts, &ce, &mut |_| Ok(()))
}

/// The loss of one batch from the model's logits (cross-entropy by default; distillation's
/// loss reads a teacher too).
pub type ClassifierLoss<'a> = dyn Fn(&Tensor, &Batch) -> Result<Tensor> + 'a;

/// [`train`] with a replacement loss and a callback after every optimizer step (given the step
/// number) — pruning masks are re-applied there.
pub fn train_with(
    model: &mut dyn Module,
    train: &ClassificationData,
    test: &ClassificationData,
    cfg: &TrainConfig,
    opts: &Options,
    loss_fn: &ClassifierLoss<'_>,
    after_step: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<(Vec<EpochStats>, f64)> {
    let loader = DataLoader::new(train, cfg.batch_size, true, cfg.seed)?;
    let mut opt = Adam::adamw(model.parameters(), cfg.lr, cfg.weight_decay)?;
    let bar = if opts.progress {
        let b = ProgressBar::new((cfg.epochs * loader.num_batches()) as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} epoch {msg} [{bar:30}] {pos}/{len} batches ({elapsed})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut history = Vec::new();
    let mut train_seconds = 0.0;
    let mut step = 0usize;
    for epoch in 0..cfg.epochs {
        bar.set_message(format!("{}/{}", epoch + 1, cfg.epochs));
        model.set_training(true);
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for batch in loader.epoch(epoch as u64) {
            opt.zero_grad();
            let logits = model.forward(&batch.x)?;
            let loss = loss_fn(&logits, &batch)?;
            loss.backward()?;
            opt.step()?;
            after_step(step)?;
            step += 1;
            let pred = logits.argmax_axis(1)?;
            correct += pred.iter().zip(&batch.y).filter(|(p, y)| p == y).count();
            loss_sum += loss.item()? as f64 * batch.y.len() as f64;
            seen += batch.y.len();
            bar.inc(1);
        }
        let seconds = start.elapsed().as_secs_f64();
        train_seconds += seconds;
        model.set_training(false);
        let test_accuracy = accuracy(model, test)?;
        let stats = EpochStats {
            epoch: epoch + 1,
            train_loss: (loss_sum / seen as f64) as f32,
            train_accuracy: correct as f32 / seen as f32,
            test_accuracy,
            seconds,
        };
        bar.suspend(|| {
            opts.say(format!(
                "epoch {:>2}/{}  loss {:.4}  train acc {:5.1}%  test acc {:5.1}%  ({:.2} s)",
                stats.epoch,
                cfg.epochs,
                stats.train_loss,
                100.0 * stats.train_accuracy,
                100.0 * stats.test_accuracy,
                stats.seconds
            ))
        });
        history.push(stats);
    }
    bar.finish_and_clear();
    Ok((history, train_seconds))
}

/// A saved classifier: weights in `model.safetensors`, this JSON beside it in `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedClassifier {
    pub kind: String,
    pub train: TrainConfig,
    pub test_accuracy: f32,
    pub train_seconds: f64,
    pub params: usize,
}

/// Directory of a cached classifier: one checkpoint unit (see `tt_tensor::serialize::save_unit`)
/// with `model.safetensors` and `config.json`, under the options' cache key (`--quick` models
/// live apart, so a quick run never replaces a full one).
pub fn checkpoint_dir(opts: &Options, name: &str) -> PathBuf {
    opts.cache_dir.join(opts.cache_key(name))
}

const PARTS: [&str; 2] = ["model.safetensors", "config.json"];

/// Saves weights and config as one unit: an interruption leaves the previous checkpoint intact.
pub fn save(model: &dyn Module, info: &SavedClassifier, dir: &Path) -> Result<PathBuf> {
    let mut meta = HashMap::new();
    meta.insert("kind".to_string(), info.kind.clone());
    let weights = to_safetensors_bytes(&model.named_parameters(), Some(meta))?;
    let json = serde_json::to_vec_pretty(info).map_err(|e| MilestoneError::Other(e.to_string()))?;
    save_unit(dir, &[(PARTS[0], &weights), (PARTS[1], &json)])?;
    Ok(dir.to_path_buf())
}

/// Loads a cached model's weights into `model` and returns its config; `Ok(None)` if not cached.
/// Every file is checked against the manifest's checksums; non-finite weights are an error.
pub fn load(model: &dyn Module, dir: &Path) -> Result<Option<SavedClassifier>> {
    if !unit_exists(dir) {
        return Ok(None);
    }
    let parts = load_unit(dir, &PARTS)?;
    let info: SavedClassifier = serde_json::from_slice(&parts[1])
        .map_err(|e| MilestoneError::Other(format!("{}: corrupt config: {e}", dir.display())))?;
    let (state, _) = parse_safetensors(&parts[0], &dir.join(PARTS[0]).display().to_string())?;
    load_state_dict(model, state)?;
    Ok(Some(info))
}

/// Trains `model`, measures held-out accuracy, saves it under `kind`, and reports the result.
/// Returns the saved info and the per-epoch history.
pub fn train_and_save(
    kind: &str,
    model: &mut dyn Module,
    train_set: &ClassificationData,
    test_set: &ClassificationData,
    cfg: TrainConfig,
    opts: &Options,
) -> Result<(SavedClassifier, Vec<EpochStats>, PathBuf)> {
    // A checkpoint path that cannot hold the result fails now, not after the training run.
    let dir = checkpoint_dir(opts, kind);
    tt_tensor::serialize::prepare_unit_dir(&dir)?;
    let (history, train_seconds) = train(model, train_set, test_set, &cfg, opts)?;
    let test_accuracy = accuracy(model, test_set)?;
    let info =
        SavedClassifier { kind: kind.into(), train: cfg, test_accuracy, train_seconds, params: model.num_parameters() };
    let path = save(model, &info, &dir)?;
    opts.say(format!(
        "held-out accuracy {:.2}% after {:.1} s of training; saved {}",
        100.0 * test_accuracy,
        train_seconds,
        path.display()
    ));
    Ok((info, history, path))
}
