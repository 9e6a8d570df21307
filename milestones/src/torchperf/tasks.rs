//! The TinyMLPerf-style tasks beyond the course's trained models, on data the project ships:
//! anomaly detection with an autoencoder on digits (some classes normal, the rest anomalies) and
//! tabular classification on the Wisconsin breast-cancer set inside `smartcore`. Both train in
//! seconds from fixed seeds.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tt_tensor::data::{digits, ClassificationData, Dataset};
use tt_tensor::loss::mse;
use tt_tensor::nn::{Linear, Relu, Sequential};
use tt_tensor::Tensor;

use super::tensor_sut::Samples;
use crate::classifier::{self, TrainConfig};
use crate::{Options, Result};

/// Digits 0–4 are "normal" (the autoencoder learns them); 5–9 are the anomalies.
pub const NORMAL_CLASSES: usize = 5;

fn samples(d: &ClassificationData) -> Samples {
    let per: usize = d.sample_shape().iter().product();
    let mut features = vec![0.0; d.len() * per];
    for i in 0..d.len() {
        d.get_into(i, &mut features[i * per..(i + 1) * per]);
    }
    Samples { features, shape: d.sample_shape().to_vec(), per }
}

/// The trained autoencoder (64 → 32 → 8 → 32 → 64), the held-out digits (every class) and which
/// of them are anomalies.
///
/// # Errors
/// Training errors.
pub fn anomaly(opts: &Options) -> Result<(Sequential, Samples, Vec<bool>)> {
    let (train, test) = digits::standard_split()?;
    let normal: Vec<usize> = (0..train.len()).filter(|&i| train.labels()[i] < NORMAL_CLASSES).collect();
    let train = train.subset(&normal)?;
    let mut model = Sequential::new()
        .layer(Linear::new(64, 32, true, 11))
        .layer(Relu)
        .layer(Linear::new(32, 8, true, 12))
        .layer(Relu)
        .layer(Linear::new(8, 32, true, 13))
        .layer(Relu)
        .layer(Linear::new(32, 64, true, 14));
    let cfg =
        TrainConfig { epochs: if opts.quick { 5 } else { 60 }, batch_size: 32, lr: 2e-3, weight_decay: 0.0, seed: 3 };
    let loss = |y: &Tensor, b: &tt_tensor::data::Batch| Ok(mse(y, &b.x)?);
    let quiet = Options { quiet: true, progress: false, ..opts.clone() };
    // The "test accuracy" train_with prints per epoch is meaningless here (quiet hides it).
    classifier::train_with(&mut model, &train, &train, &cfg, &quiet, &loss, &mut |_| Ok(()))?;
    let positive = test.labels().iter().map(|&l| l >= NORMAL_CLASSES).collect();
    Ok((model, samples(&test), positive))
}

/// The breast-cancer set, standardized with the training split's means and deviations, split
/// 80/20 stratified (seed 0); an MLP 30 → 16 → 2 trained on it. Returns the model, the test
/// samples and their labels.
///
/// # Errors
/// Training errors.
pub fn tabular(opts: &Options) -> Result<(Sequential, Samples, Vec<usize>)> {
    let ds = smartcore::dataset::breast_cancer::load_dataset();
    let (n, f) = (ds.num_samples, ds.num_features);
    let labels: Vec<usize> = ds.target.iter().map(|&t| t as usize).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (mut tr, mut te) = (Vec::new(), Vec::new());
    for class in 0..2 {
        let mut idx: Vec<usize> = (0..n).filter(|&i| labels[i] == class).collect();
        idx.shuffle(&mut rng);
        let k = (idx.len() as f64 * 0.2).round() as usize;
        te.extend_from_slice(&idx[..k]);
        tr.extend_from_slice(&idx[k..]);
    }
    tr.sort_unstable();
    te.sort_unstable();
    let (mut mean, mut sd) = (vec![0.0f64; f], vec![0.0f64; f]);
    for &i in &tr {
        for j in 0..f {
            mean[j] += ds.data[i * f + j] as f64 / tr.len() as f64;
        }
    }
    for &i in &tr {
        for j in 0..f {
            sd[j] += (ds.data[i * f + j] as f64 - mean[j]).powi(2) / (tr.len() - 1) as f64;
        }
    }
    let sd: Vec<f64> = sd.iter().map(|v| v.sqrt().max(1e-12)).collect();
    let pick = |idx: &[usize]| -> Result<ClassificationData> {
        let x = idx
            .iter()
            .flat_map(|&i| (0..f).map(move |j| i * f + j))
            .map(|k| ((ds.data[k] as f64 - mean[k % f]) / sd[k % f]) as f32);
        Ok(ClassificationData::new(x.collect(), vec![f], idx.iter().map(|&i| labels[i]).collect(), 2)?)
    };
    let (train, test) = (pick(&tr)?, pick(&te)?);
    let mut model =
        Sequential::new().layer(Linear::new(f, 16, true, 21)).layer(Relu).layer(Linear::new(16, 2, true, 22));
    let cfg =
        TrainConfig { epochs: if opts.quick { 5 } else { 40 }, batch_size: 32, lr: 1e-3, weight_decay: 1e-4, seed: 4 };
    let quiet = Options { quiet: true, progress: false, ..opts.clone() };
    classifier::train(&mut model, &train, &test, &cfg, &quiet)?;
    let y = test.labels().to_vec();
    Ok((model, samples(&test), y))
}

/// The digits CNN's held-out images as samples `[1, 8, 8]`, with labels.
///
/// # Errors
/// Data errors.
pub fn digits_test() -> Result<(Samples, Vec<usize>)> {
    let (_, test) = digits::standard_split()?;
    let test = test.with_sample_shape(vec![1, 8, 8])?;
    Ok((samples(&test), test.labels().to_vec()))
}
