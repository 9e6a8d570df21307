//! # milestones
//!
//! One source file per milestone. Each trains or loads a model, measures what the course module
//! is about, prints a human report, and returns a JSON summary of the same measured numbers
//! (`tito milestone NAME --json` prints it). Nothing printed here is a constant: every figure comes
//! from a measurement made in the same run.
//!
//! Trained models are cached under [`Options::cache_dir`] (default `.tt-cache/`, override with the
//! `TT_CACHE_DIR` environment variable) so later milestones reuse them; `--retrain` forces training.

pub mod classifier;
pub mod cnn_digits;
pub mod kv_cache;
pub mod mlp_digits;
pub mod profile;
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
    /// Train the language model on this UTF-8 text file instead of the built-in corpus.
    pub corpus: Option<PathBuf>,
    /// Print no human report at all (library callers and tests).
    pub quiet: bool,
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
        }
    }
}

/// `$TT_CACHE_DIR`, else `.tt-cache` in the current directory.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("TT_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".tt-cache"))
}

impl Options {
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
    pub run: fn(&Options) -> Result<serde_json::Value>,
}

/// Every milestone, in course order.
pub fn all() -> &'static [Milestone] {
    &[
        Milestone {
            name: "mlp_digits",
            module: "07",
            description: "train an MLP on the UCI handwritten digits; held-out accuracy per epoch",
            run: mlp_digits::run,
        },
        Milestone {
            name: "cnn_digits",
            module: "09",
            description: "train a LeNet-style CNN on the UCI digits (8x8 images); held-out accuracy per epoch",
            run: cnn_digits::run,
        },
        Milestone {
            name: "transformer",
            module: "13",
            description:
                "train the default GPT on the built-in Q/A corpus; perplexity and exact-match on unseen questions",
            run: transformer::run,
        },
        Milestone {
            name: "kv_cache",
            module: "14",
            description: "greedy generation with and without the KV cache: same tokens, tok/s, speedup, cache memory",
            run: kv_cache::run,
        },
        Milestone {
            name: "profile",
            module: "15",
            description: "profile the trained CNN and GPT: parameters, FLOPs, memory, latency, per-op table, roofline",
            run: profile::run,
        },
    ]
}

/// Looks a milestone up by name.
pub fn find(name: &str) -> Result<&'static Milestone> {
    all().iter().find(|m| m.name == name).ok_or_else(|| MilestoneError::Unknown(name.to_string()))
}

/// Runs a milestone by name.
pub fn run(name: &str, opts: &Options) -> Result<serde_json::Value> {
    (find(name)?.run)(opts)
}
