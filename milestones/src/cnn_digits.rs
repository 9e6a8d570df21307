//! Milestone `cnn_digits` (module 09): a small LeNet-style CNN on the 8×8 UCI digits.

use serde_json::json;
use tt_tensor::data::{digits, Dataset};
use tt_tensor::nn::Sequential;
use tt_tensor::Module;

use crate::classifier::{self, SavedClassifier, TrainConfig};
use crate::{Options, Result};

pub const NAME: &str = "cnn_digits";

/// The course's digits CNN (`tt_tensor::data::digits::cnn`).
pub fn build(seed: u64) -> Sequential {
    tt_tensor::data::digits::cnn(seed)
}

pub fn config(quick: bool) -> TrainConfig {
    TrainConfig { epochs: if quick { 1 } else { 25 }, batch_size: 32, lr: 2e-3, weight_decay: 1e-4, seed: 0 }
}

/// Loads the cached CNN, or trains and caches it. Returns the model and its saved info.
pub fn load_or_train(opts: &Options) -> Result<(Sequential, SavedClassifier)> {
    let model = build(0);
    if !opts.retrain {
        if let Some(info) = classifier::load(&model, &classifier::checkpoint_dir(opts, NAME))? {
            return Ok((model, info));
        }
    }
    let out = train(opts)?;
    Ok((out.0, out.1))
}

fn train(opts: &Options) -> Result<(Sequential, SavedClassifier, Vec<classifier::EpochStats>)> {
    let (train, test) = digits::standard_split()?;
    let (train, test) = (train.with_sample_shape(vec![1, 8, 8])?, test.with_sample_shape(vec![1, 8, 8])?);
    opts.say(format!(
        "cnn_digits: UCI handwritten digits as 1×8×8 images, {} train / {} test (stratified, seed 0)",
        train.len(),
        test.len()
    ));
    let mut model = build(0);
    opts.say(format!("model: LeNet-style CNN, {} parameters", model.num_parameters()));
    let cfg = config(opts.quick);
    let (info, history, _) = classifier::train_and_save(NAME, &mut model, &train, &test, cfg, opts)?;
    Ok((model, info, history))
}

pub fn run(opts: &Options) -> Result<serde_json::Value> {
    let (model, info, history) = train(opts)?;
    Ok(json!({
        "milestone": NAME,
        "test_accuracy": info.test_accuracy,
        "train_seconds": info.train_seconds,
        "params": model.num_parameters(),
        "epochs": history,
        "checkpoint": classifier::checkpoint_dir(opts, NAME),
    }))
}
