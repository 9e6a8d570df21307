//! A tensor model (the digits CNN, the tabular MLP, the autoencoder) as a system under test:
//! worker threads share the model and pull queued samples, up to `max_batch` per forward (one
//! at a time in SingleStream, whole batches in Offline and under Server load).

use std::sync::Arc;
use std::thread::JoinHandle;

use tt_perf::loadgen::{QuerySample, QuerySampleLibrary, QuerySampleResponse, Responder, SystemUnderTest};

use super::queue::WorkQueue;
use tt_tensor::{no_grad, Module, Tensor};

use crate::{MilestoneError, Result};

/// What the system answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The arg-max class, one byte.
    Class,
    /// The mean squared reconstruction error of the input, an f32 (the anomaly score).
    ReconstructionError,
}

/// Samples held in memory: `features` row-major, `per` values each, viewed as `shape`.
pub struct Samples {
    pub features: Vec<f32>,
    pub shape: Vec<usize>,
    pub per: usize,
}

impl Samples {
    pub fn len(&self) -> usize {
        self.features.len() / self.per.max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Inner {
    queue: WorkQueue,
    samples: Arc<Samples>,
    model: Arc<dyn Module + Send + Sync>,
    output: Output,
    max_batch: usize,
    errors: std::sync::Mutex<Vec<String>>,
}

pub struct TensorSut {
    name: String,
    inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
}

impl TensorSut {
    /// # Errors
    /// A thread cannot start.
    pub fn new(
        name: &str,
        model: Arc<dyn Module + Send + Sync>,
        samples: Arc<Samples>,
        output: Output,
        workers: usize,
        max_batch: usize,
    ) -> Result<TensorSut> {
        let inner = Arc::new(Inner {
            queue: WorkQueue::default(),
            samples,
            model,
            output,
            max_batch: max_batch.max(1),
            errors: std::sync::Mutex::new(Vec::new()),
        });
        // Built before spawning: if a spawn fails, dropping `sut` stops the workers started.
        let mut sut = TensorSut { name: name.to_string(), inner, workers: Vec::new() };
        for w in 0..workers.max(1) {
            let inner = Arc::clone(&sut.inner);
            sut.workers.push(
                std::thread::Builder::new()
                    .name(format!("tensor-worker-{w}"))
                    .spawn(move || worker(&inner))
                    .map_err(|e| MilestoneError::Other(format!("cannot start a worker thread: {e}")))?,
            );
        }
        Ok(sut)
    }

    /// Errors the workers met; their samples were answered with empty data.
    pub fn errors(&self) -> Vec<String> {
        self.inner.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn worker(inner: &Inner) {
    let per = inner.samples.per;
    let mut x = Vec::with_capacity(inner.max_batch * per);
    loop {
        let Some(batch) = inner.queue.next_batch(|q| {
            let n = q.len().min(inner.max_batch);
            q.drain(..n).collect()
        }) else {
            return;
        };
        x.clear();
        for p in &batch {
            let i = p.sample.index;
            x.extend_from_slice(&inner.samples.features[i * per..(i + 1) * per]);
        }
        let mut shape = vec![batch.len()];
        shape.extend_from_slice(&inner.samples.shape);
        let answers: Vec<Vec<u8>> = no_grad(|| -> tt_tensor::Result<Vec<Vec<u8>>> {
            let input = Tensor::from_vec(x.clone(), &shape)?;
            let y = inner.model.forward(&input)?;
            Ok(match inner.output {
                Output::Class => y.argmax_axis(1)?.into_iter().map(|c| vec![c as u8]).collect(),
                Output::ReconstructionError => {
                    let out = y.to_vec();
                    out.chunks(per)
                        .zip(x.chunks(per))
                        .map(|(o, i)| {
                            let e = o.iter().zip(i).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / per as f32;
                            e.to_le_bytes().to_vec()
                        })
                        .collect()
                }
            })
        })
        .unwrap_or_else(|e| {
            inner.errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
            vec![Vec::new(); batch.len()]
        });
        for (p, data) in batch.iter().zip(answers) {
            p.responder.complete(&[QuerySampleResponse { id: p.sample.id, data, tokens: None }]);
        }
    }
}

impl SystemUnderTest for TensorSut {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn issue_query(&self, samples: &[QuerySample], responder: &Responder) {
        self.inner.queue.push(samples, responder);
    }
}

impl Drop for TensorSut {
    fn drop(&mut self) {
        self.inner.queue.shutdown();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// In-memory samples as a library (loading is bookkeeping).
pub struct Library {
    pub name: String,
    pub n: usize,
}

impl QuerySampleLibrary for Library {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn total_sample_count(&self) -> usize {
        self.n
    }
    fn performance_sample_count(&self) -> usize {
        self.n
    }
    fn load_samples(&mut self, _: &[usize]) -> tt_perf::Result<()> {
        Ok(())
    }
    fn unload_samples(&mut self, _: &[usize]) -> tt_perf::Result<()> {
        Ok(())
    }
}

/// Accuracy of class responses against labels.
pub fn class_accuracy(accuracy: &[(usize, Vec<u8>)], labels: &[usize]) -> f64 {
    let ok = accuracy.iter().filter(|(i, d)| d.first().map(|&c| c as usize) == Some(labels[*i])).count();
    ok as f64 / accuracy.len().max(1) as f64
}

/// Reconstruction errors from responses, by sample index.
pub fn scores(accuracy: &[(usize, Vec<u8>)]) -> Vec<f64> {
    accuracy
        .iter()
        .map(|(_, d)| d.get(..4).map_or(f64::NAN, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64))
        .collect()
}

/// ROC AUC of `scores` (higher = more anomalous) against `positive` labels: the Mann–Whitney
/// probability that a random positive scores above a random negative, ties counting half.
/// NaN if a score is NaN or either class is empty (no AUC exists then).
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> f64 {
    if scores.iter().any(|s| s.is_nan()) {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    let rank_sum: f64 = ranks.iter().zip(positive).filter(|(_, &p)| p).map(|(r, _)| r).sum();
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}
