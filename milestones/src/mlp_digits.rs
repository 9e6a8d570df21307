//! Milestone `mlp_digits` (module 07): a two-layer MLP on the real UCI digits.

use serde_json::json;
use tt_tensor::data::{digits, Dataset};
use tt_tensor::nn::Sequential;
use tt_tensor::Module;

use crate::classifier::{self, SavedClassifier, TrainConfig};
use crate::{Options, Result};

pub const NAME: &str = "mlp_digits";

/// The course's digits MLP (`tt_tensor::data::digits::mlp`).
pub fn build(seed: u64) -> Sequential {
    tt_tensor::data::digits::mlp(seed)
}

pub fn config(quick: bool) -> TrainConfig {
    TrainConfig { epochs: if quick { 2 } else { 30 }, batch_size: 32, lr: 2e-3, weight_decay: 1e-4, seed: 0 }
}

/// Loads the cached MLP, or trains and caches it. Returns the model and its saved info.
pub fn load_or_train(opts: &Options) -> Result<(Sequential, SavedClassifier)> {
    let model = build(0);
    if !opts.retrain {
        if let Some(info) = classifier::load(&model, &classifier::checkpoint_dir(opts, NAME))? {
            return Ok((model, info));
        }
    }
    let (train, test) = digits::standard_split()?;
    let mut model = build(0);
    let (info, _, _) = classifier::train_and_save(NAME, &mut model, &train, &test, config(opts.quick), opts)?;
    Ok((model, info))
}

pub fn run(opts: &Options) -> Result<serde_json::Value> {
    let (train, test) = digits::standard_split()?;
    opts.say(format!(
        "mlp_digits: UCI handwritten digits, {} train / {} test (stratified, seed 0)",
        train.len(),
        test.len()
    ));
    let mut model = build(0);
    let cfg = config(opts.quick);
    opts.say(format!("model: Linear(64,128) → ReLU → Linear(128,10), {} parameters", model.num_parameters()));
    let (info, history, path) = classifier::train_and_save(NAME, &mut model, &train, &test, cfg, opts)?;
    Ok(json!({
        "milestone": NAME,
        "test_accuracy": info.test_accuracy,
        "train_seconds": info.train_seconds,
        "params": info.params,
        "epochs": history,
        "checkpoint": path,
    }))
}
