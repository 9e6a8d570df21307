//! Datasets and batching: a [`Dataset`] trait, an in-memory classification dataset, a seeded
//! shuffling [`DataLoader`], and the real UCI handwritten-digits data.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, TensorError};
use crate::tensor::{checked_numel, Tensor};

/// A labelled dataset with fixed-shape samples.
pub trait Dataset {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shape of one sample (without the batch dim).
    fn sample_shape(&self) -> &[usize];
    /// Writes sample `i`'s features into `out` (length = product of `sample_shape`), returns its label.
    ///
    /// # Panics
    /// Implementations may panic if `i >= len()` or `out` is not one sample long; [`DataLoader`]
    /// only calls it with valid arguments.
    fn get_into(&self, i: usize, out: &mut [f32]) -> usize;
}

/// Features and class labels held in memory.
#[derive(Debug, Clone)]
pub struct ClassificationData {
    features: Vec<f32>,
    shape: Vec<usize>,
    labels: Vec<usize>,
    pub num_classes: usize,
}

impl ClassificationData {
    /// # Errors
    /// A sample shape whose size overflows, features that do not split into `labels.len()`
    /// samples of that shape, or a label `>= num_classes`.
    pub fn new(features: Vec<f32>, shape: Vec<usize>, labels: Vec<usize>, num_classes: usize) -> Result<Self> {
        let per = checked_numel("ClassificationData::new", &shape)?;
        if per.checked_mul(labels.len()) != Some(features.len()) {
            return Err(TensorError::InvalidArgument {
                op: "ClassificationData::new",
                reason: format!(
                    "{} features do not split into {} samples of shape {shape:?}",
                    features.len(),
                    labels.len()
                ),
            });
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= num_classes) {
            return Err(TensorError::OutOfRange {
                op: "ClassificationData::new",
                what: "label",
                index: bad,
                limit: num_classes,
            });
        }
        Ok(ClassificationData { features, shape, labels, num_classes })
    }
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }
    /// Picks samples by index (used for splits).
    ///
    /// # Errors
    /// An index `>= len()`.
    pub fn subset(&self, idx: &[usize]) -> Result<ClassificationData> {
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.labels.len()) {
            return Err(TensorError::OutOfRange {
                op: "ClassificationData::subset",
                what: "sample index",
                index: bad,
                limit: self.labels.len(),
            });
        }
        let per: usize = self.shape.iter().product();
        let mut features = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            features.extend_from_slice(&self.features[i * per..(i + 1) * per]);
        }
        Ok(ClassificationData {
            features,
            shape: self.shape.clone(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
        })
    }
    /// Same data viewed with another per-sample shape of equal size (e.g. `[64]` → `[1, 8, 8]`).
    ///
    /// # Errors
    /// A shape of another size (or whose size overflows).
    pub fn with_sample_shape(mut self, shape: Vec<usize>) -> Result<Self> {
        if checked_numel("with_sample_shape", &shape)? != self.shape.iter().product::<usize>() {
            return Err(TensorError::shape("with_sample_shape", &self.shape, &shape));
        }
        self.shape = shape;
        Ok(self)
    }
}

impl Dataset for ClassificationData {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn sample_shape(&self) -> &[usize] {
        &self.shape
    }
    /// # Panics
    /// If `i >= len()` or `out` is not one sample long (which would read another sample's
    /// features silently).
    fn get_into(&self, i: usize, out: &mut [f32]) -> usize {
        let per: usize = self.shape.iter().product();
        assert!(i < self.labels.len(), "get_into: sample index {i} out of range for {} samples", self.labels.len());
        assert_eq!(out.len(), per, "get_into: output holds {} values but a sample has {per}", out.len());
        out.copy_from_slice(&self.features[i * per..(i + 1) * per]);
        self.labels[i]
    }
}

/// A batch: inputs `[B, ...sample_shape]` and their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    pub x: Tensor,
    pub y: Vec<usize>,
}

/// Splits a dataset into batches, shuffling each epoch with a generator seeded by `(seed, epoch)`
/// so any epoch's order can be reproduced on its own.
pub struct DataLoader<'a, D: Dataset> {
    dataset: &'a D,
    /// Private so it cannot be set to 0 after construction (see [`DataLoader::batch_size`]).
    batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
}

impl<'a, D: Dataset> DataLoader<'a, D> {
    /// # Errors
    /// A `batch_size` of 0, an empty dataset (an epoch would silently train on nothing), or a
    /// batch `[batch_size, ...sample_shape]` whose size overflows.
    pub fn new(dataset: &'a D, batch_size: usize, shuffle: bool, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(TensorError::arg("DataLoader", "batch_size 0 must be at least 1"));
        }
        if dataset.is_empty() {
            return Err(TensorError::arg("DataLoader", "dataset is empty (length 0)"));
        }
        let mut batch_shape = vec![batch_size.min(dataset.len())];
        batch_shape.extend_from_slice(dataset.sample_shape());
        checked_numel("DataLoader", &batch_shape)?;
        Ok(DataLoader { dataset, batch_size, shuffle, seed, drop_last: false })
    }

    /// Samples per batch (the last batch may be smaller unless `drop_last`).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Number of batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// Sample order for `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.dataset.len()).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch));
            idx.shuffle(&mut rng);
        }
        idx
    }

    /// The batches of one epoch.
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = Batch> + '_ {
        let order = self.order(epoch);
        let per: usize = self.dataset.sample_shape().iter().product();
        let bs = self.batch_size;
        let nb = self.num_batches();
        (0..nb).map(move |b| {
            let idx = &order[b * bs..((b + 1) * bs).min(order.len())];
            let mut x = vec![0.0f32; idx.len() * per];
            let mut y = Vec::with_capacity(idx.len());
            for (j, &i) in idx.iter().enumerate() {
                y.push(self.dataset.get_into(i, &mut x[j * per..(j + 1) * per]));
            }
            let mut shape = vec![idx.len()];
            shape.extend_from_slice(self.dataset.sample_shape());
            Batch { x: Tensor::from_vec(x, &shape).expect("sized above"), y }
        })
    }
}

/// The UCI optical-recognition handwritten digits (1,797 8×8 images, 10 classes), as shipped
/// inside the `smartcore` crate (no download at run time). Pixel values 0..16 are scaled to [0, 1].
pub mod digits {
    use super::*;

    pub const NUM_SAMPLES: usize = 1797;
    pub const NUM_CLASSES: usize = 10;

    /// All samples, features `[64]`, in the file's order.
    pub fn load() -> Result<ClassificationData> {
        let ds = smartcore::dataset::digits::load_dataset();
        if ds.num_samples != NUM_SAMPLES || ds.num_features != 64 {
            return Err(TensorError::File {
                path: "smartcore digits.xy".into(),
                reason: format!("expected 1797×64, found {}×{}", ds.num_samples, ds.num_features),
            });
        }
        let features = ds.data.iter().map(|v| v / 16.0).collect();
        let labels = ds.target.iter().map(|&t| t as usize).collect();
        ClassificationData::new(features, vec![64], labels, NUM_CLASSES)
    }

    /// Stratified split: in every class, `test_fraction` of its samples (rounded) go to the test
    /// set, chosen by a generator seeded with `seed`. Returns (train, test).
    ///
    /// # Errors
    /// A `test_fraction` outside [0, 1] (NaN included).
    pub fn split(
        data: &ClassificationData,
        test_fraction: f32,
        seed: u64,
    ) -> Result<(ClassificationData, ClassificationData)> {
        if !(0.0..=1.0).contains(&test_fraction) {
            return Err(TensorError::arg("digits::split", format!("test_fraction {test_fraction} must be in [0, 1]")));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for class in 0..data.num_classes {
            let mut idx: Vec<usize> = (0..data.len()).filter(|&i| data.labels()[i] == class).collect();
            idx.shuffle(&mut rng);
            let n_test = (idx.len() as f32 * test_fraction).round() as usize;
            test.extend_from_slice(&idx[..n_test]);
            train.extend_from_slice(&idx[n_test..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        Ok((data.subset(&train)?, data.subset(&test)?))
    }

    /// The project's fixed split: 20% test, seed 0.
    pub fn standard_split() -> Result<(ClassificationData, ClassificationData)> {
        split(&load()?, 0.2, 0)
    }

    /// The course's digits MLP (milestone `mlp_digits`): 64 → Linear(128) → ReLU → Linear(10);
    /// layer `i` is initialised with seed `seed + i`.
    pub fn mlp(seed: u64) -> crate::nn::Sequential {
        use crate::nn::{Linear, Relu, Sequential};
        Sequential::new().layer(Linear::new(64, 128, true, seed)).layer(Relu).layer(Linear::new(
            128,
            10,
            true,
            seed + 1,
        ))
    }

    /// The course's digits CNN (milestone `cnn_digits`), on `[1, 8, 8]` images:
    /// conv3×3(1→16) → ReLU → pool2 → conv3×3(16→32) → ReLU → pool2 → 128 → Linear(64) → ReLU →
    /// Linear(10); layer `i` is initialised with seed `seed + i`.
    pub fn cnn(seed: u64) -> crate::nn::Sequential {
        use crate::nn::{Conv2d, Flatten, Linear, MaxPool2d, Relu, Sequential};
        Sequential::new()
            .layer(Conv2d::new(1, 16, 3, 1, 1, seed))
            .layer(Relu)
            .layer(MaxPool2d { kernel: 2, stride: 2 })
            .layer(Conv2d::new(16, 32, 3, 1, 1, seed + 1))
            .layer(Relu)
            .layer(MaxPool2d { kernel: 2, stride: 2 })
            .layer(Flatten)
            .layer(Linear::new(128, 64, true, seed + 2))
            .layer(Relu)
            .layer(Linear::new(64, 10, true, seed + 3))
    }
}
