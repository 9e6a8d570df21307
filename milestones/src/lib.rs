//! # milestones
//!
//! One source file per milestone. Each trains or loads a model, measures what the course module
//! is about, prints a human report, and returns a JSON summary of the same measured numbers
//! (`tito milestone NAME --json` prints it). Nothing printed here is a constant: every figure comes
//! from a measurement made in the same run.
//!
//! Trained models are cached under [`Options::cache_dir`] (default `.tt-cache/`, override with the
//! `TT_CACHE_DIR` environment variable) so later milestones reuse them; `--retrain` forces training.

pub mod acceleration;
pub mod chart;
pub mod child;
pub mod classifier;
pub mod cnn_digits;
pub mod compression;
pub mod kv_cache;
pub mod llama;
pub mod memory;
pub mod mlp_digits;
pub mod profile;
pub mod quantization;
pub mod report;
pub mod scaling;
pub mod serving;
pub mod torchperf;
pub mod transformer;

use std::io::Write;
use std::path::PathBuf;

use thiserror::Error;

/// Why a milestone failed.
#[derive(Debug, Error)]
pub enum MilestoneError {
    #[error("unknown milestone '{0}' (see `tito milestone --list`)")]
    Unknown(String),
    #[error(transparent)]
    Tensor(#[from] tt_tensor::TensorError),
    #[error(transparent)]
    Transformer(#[from] tt_transformer::TransformerError),
    #[error(transparent)]
    KvCache(#[from] tt_kvcache::KvError),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, MilestoneError>;

/// Settings shared by every milestone.
#[derive(Debug, Clone)]
pub struct Options {
    /// Print only the JSON summary on stdout (the human report goes to stderr).
    pub json: bool,
    /// Train even if a cached model exists.
    pub retrain: bool,
    /// Small settings for tests and smoke runs (fewer epochs); figures are still measured.
    pub quick: bool,
    /// Where trained models are cached.
    pub cache_dir: PathBuf,
    /// Show progress bars (on stderr).
    pub progress: bool,
    /// Train the language model on this UTF-8 text (`--corpus FILE`, read once) instead of the
    /// built-in corpus.
    pub corpus: Option<transformer::UserCorpus>,
    /// Print no human report at all (library callers and tests).
    pub quiet: bool,
    /// Benchmarks: MLPerf's official minimum durations and query counts instead of scaled ones.
    pub full: bool,
    /// The `tito` executable, for milestones that measure a separate serving process (its peak
    /// memory, forced kernel levels); `None` reports those as not measured.
    pub serve_exe: Option<PathBuf>,
    /// The course language model's family (`--arch`): the GPT, or a Llama of the same
    /// parameter budget.
    pub arch: Arch,
}

/// The course language model's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    #[default]
    Gpt,
    Llama,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            json: false,
            retrain: false,
            quick: false,
            cache_dir: default_cache_dir(),
            progress: true,
            corpus: None,
            quiet: false,
            full: false,
            serve_exe: None,
            arch: Arch::Gpt,
        }
    }
}

/// `$TT_CACHE_DIR`, else `.tt-cache` at the workspace root (the same from any subdirectory).
pub fn default_cache_dir() -> PathBuf {
    match std::env::var_os("TT_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from(".tt-cache"), |root| root.join(".tt-cache")),
    }
}

/// Whether a published model checkpoint named `key` is in `cache`.
pub fn is_cached(cache: &std::path::Path, key: &str) -> bool {
    tt_tensor::serialize::unit_exists(&cache.join(key))
}

/// Options a milestone may use beyond `--json` and `--quick` (which all take).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses {
    /// `--retrain`: it loads a cached model that could be retrained.
    pub retrain: bool,
    /// `--corpus`: it trains or loads the language model of a user corpus.
    pub corpus: bool,
    /// `--arch llama`: it runs on the course language model in either family.
    pub arch: bool,
}

impl Options {
    /// Cache key of a model: `base`, or `base-quick` for the small `--quick` settings, so a quick
    /// run never replaces a full-size model.
    pub fn cache_key(&self, base: &str) -> String {
        if self.quick {
            format!("{base}-quick")
        } else {
            base.to_string()
        }
    }

    /// Creates the cache directory and proves it writable, before any training starts.
    ///
    /// # Errors
    /// A path that is a file, or a directory that cannot be created or written; the error names it.
    pub fn prepare_cache_dir(&self) -> Result<()> {
        let dir = &self.cache_dir;
        let err = |e: std::io::Error| {
            MilestoneError::Other(format!(
                "cache directory {} is not usable (set TT_CACHE_DIR to another): {e}",
                dir.display()
            ))
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let probe = dir.join(format!(".write-probe-{}", std::process::id()));
        std::fs::write(&probe, b"ok").map_err(err)?;
        std::fs::remove_file(&probe).map_err(err)?;
        Ok(())
    }

    /// Writes a line of the human report (stdout normally, stderr in JSON mode).
    pub fn say(&self, line: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        if self.json {
            let _ = writeln!(std::io::stderr(), "{}", line.as_ref());
        } else {
            let _ = writeln!(std::io::stdout(), "{}", line.as_ref());
        }
    }
}

/// A runnable milestone.
pub struct Milestone {
    pub name: &'static str,
    pub module: &'static str,
    pub description: &'static str,
    pub uses: Uses,
    /// Cache keys of the trained models it uses (loading a cached one, or training and caching
    /// it), in the full-size settings (`--quick` ones carry a `-quick` suffix): what `tito
    /// status` reports on.
    pub models: &'static [&'static str],
    pub run: fn(&Options) -> Result<serde_json::Value>,
}

/// Every milestone, in course order.
pub fn all() -> &'static [Milestone] {
    &[
        Milestone {
            name: "mlp_digits",
            models: &["mlp_digits"],
            uses: Uses { retrain: false, corpus: false, arch: false },
            module: "07",
            description: "train an MLP on the UCI handwritten digits; held-out accuracy per epoch",
            run: mlp_digits::run,
        },
        Milestone {
            name: "cnn_digits",
            models: &["cnn_digits"],
            uses: Uses { retrain: false, corpus: false, arch: false },
            module: "09",
            description: "train a LeNet-style CNN on the UCI digits (8x8 images); held-out accuracy per epoch",
            run: cnn_digits::run,
        },
        Milestone {
            name: "transformer",
            models: &["transformer"],
            uses: Uses { retrain: true, corpus: true, arch: true },
            module: "13",
            description:
                "train the default GPT on the built-in Q/A corpus; perplexity and exact-match on unseen questions",
            run: transformer::run,
        },
        Milestone {
            name: "llama",
            models: &[],
            uses: Uses { retrain: false, corpus: false, arch: false },
            module: "13",
            description: "llama2.c checkpoints of the stories15M / stories110M shapes in the one decoder: f32, Q8_0 as int8, int4 decode and prefill tok/s with rooflines, beside run.c / runq.c when given",
            run: llama::run,
        },
        Milestone {
            name: "kv_cache",
            models: &["transformer"],
            uses: Uses { retrain: true, corpus: false, arch: true },
            module: "14",
            description: "greedy generation with and without the KV cache: same tokens, tok/s, speedup, cache memory",
            run: kv_cache::run,
        },
        Milestone {
            name: "profile",
            models: &["transformer", "cnn_digits"],
            uses: Uses { retrain: true, corpus: false, arch: false },
            module: "15",
            description: "profile the trained CNN and GPT: parameters, FLOPs, memory, latency, per-op table, roofline",
            run: profile::run,
        },
        Milestone {
            name: "acceleration",
            models: &["transformer"],
            module: "16",
            uses: Uses { retrain: true, corpus: false, arch: false },
            description: "measured machine limits, packed decode projections vs matrixmultiply, the accelerated decoder vs the reference",
            run: acceleration::run,
        },
        Milestone {
            name: "quantization",
            models: &["mlp_digits", "cnn_digits", "transformer"],
            module: "17",
            uses: Uses { retrain: true, corpus: false, arch: true },
            description: "int8 (per tensor, channel, group) and int4 weights with integer kernels: MLP, CNN and GPT under each scheme (quality, bytes, latency), int8 vs f32 GEMM and decode",
            run: quantization::run,
        },
        Milestone {
            name: "memory",
            models: &["transformer"],
            module: "17",
            uses: Uses { retrain: false, corpus: false, arch: false },
            description: "resident memory of separate processes decoding 256 tokens: the course GPT and the stories42M / stories110M shapes in fp32, int8, int4 and 50% pruned; weight and KV bytes, tok/s, roofline",
            run: memory::run,
        },
        Milestone {
            name: "compression",
            models: &["mlp_digits", "cnn_digits", "transformer"],
            module: "18",
            uses: Uses { retrain: false, corpus: false, arch: true },
            description: "pruning (unstructured, structured: units, channels, heads), CSR and block-sparse vs dense, low-rank with fine-tuning, distillation on the digits models and the GPT",
            run: compression::run,
        },
        Milestone {
            name: "torchperf",
            models: &["transformer", "cnn_digits", "torchperf/models/gpt-control", "torchperf/models/gpt-pruned50"],
            module: "19",
            uses: Uses { retrain: true, corpus: false, arch: false },
            description: "MLPerf-style scenarios on the GPT and CNN, a TinyMLPerf-style suite, the ablation with its Pareto front, the production targets",
            run: torchperf::run,
        },
        Milestone {
            name: "serving",
            models: &["transformer"],
            module: "19",
            uses: Uses { retrain: false, corpus: false, arch: false },
            description: "the course GPT behind `tito serve`: continuous batching, Server scenario over HTTP vs in process, overload, 2 replicas behind nginx",
            run: serving::run,
        },
    ]
}

/// Looks a milestone up by name.
pub fn find(name: &str) -> Result<&'static Milestone> {
    all().iter().find(|m| m.name == name).ok_or_else(|| MilestoneError::Unknown(name.to_string()))
}

/// The error for a flag that milestone `name` does not use (it would be ignored).
pub fn unused_flag(name: &str, flag: &str) -> MilestoneError {
    MilestoneError::Other(format!("milestone {name} does not use {flag} (it would be ignored)"))
}

/// Runs a milestone by name, after rejecting options it does not use and checking the cache
/// directory.
///
/// # Errors
/// An unknown name, an option the milestone does not use, an unusable cache directory, or the
/// milestone's own errors.
pub fn run(name: &str, opts: &Options) -> Result<serde_json::Value> {
    let m = find(name)?;
    if opts.retrain && !m.uses.retrain {
        return Err(unused_flag(name, "--retrain (it always trains)"));
    }
    if opts.arch != Arch::Gpt && !m.uses.arch {
        return Err(unused_flag(name, "--arch"));
    }
    if opts.corpus.is_some() && !m.uses.corpus {
        return Err(unused_flag(name, "--corpus"));
    }
    opts.prepare_cache_dir()?;
    (m.run)(opts)
}
