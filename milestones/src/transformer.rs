//! Milestone `transformer` (modules 10–13): train the default GPT on the built-in dialogue corpus
//! (or on `--corpus FILE`), then report validation perplexity, exact-match accuracy on unseen test
//! questions, and sample answers. The checkpoint is cached for later milestones.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use tt_tensor::Module;
use tt_transformer::corpus::{self, QaCorpus};
use tt_transformer::eval::exact_match;
use tt_transformer::train::{evaluate_loss, train, TrainConfig, TrainData, TrainReport};
use tt_transformer::{checkpoint, CharTokenizer, Gpt, GptConfig, Tokenize, Tokenizer};

use crate::{Arch, MilestoneError, Options, Result};

pub const NAME: &str = "transformer";

/// Threads used for data-parallel training and evaluation (a fixed shard count, see `TrainConfig`).
pub const SHARDS: usize = 2;

/// [`GptConfig::default_model`]; `--quick` shrinks it to d_model 32 and 2 layers.
pub fn model_config(vocab_size: usize, quick: bool, arch: Arch) -> GptConfig {
    // Residual dropout 0.1 narrowed the train/validation gap but cut exact match from ~0.70 to
    // 0.46 in this 3-minute budget (underfitting), so the default model trains without it.
    let full = match arch {
        Arch::Gpt => GptConfig::default_model(vocab_size),
        // The GPT's budget: its learned position table (640×128) goes to wider SwiGLU MLPs
        // (3·128·448 weights a block against the GPT's 2·128·512), with 4 query heads over 2
        // K/V heads; 4 layers of width 128, context 640.
        Arch::Llama => GptConfig::llama(vocab_size, 128, 4, (4, 2), 448, 640),
    };
    match (quick, arch) {
        (false, _) => full,
        (true, Arch::Gpt) => GptConfig { d_model: 32, n_layers: 2, ..full },
        (true, Arch::Llama) => GptConfig::llama(vocab_size, 32, 2, (4, 2), 96, 640),
    }
}

/// Training settings. Windows are 128 tokens (the longest question and its answer fit); every
/// 40th step trains two 640-token windows so every position of the context is trained.
pub fn train_config(quick: bool) -> TrainConfig {
    TrainConfig {
        steps: if quick { 20 } else { STEPS },
        batch_size: 8,
        seq_len: 128,
        lr: 6e-3,
        min_lr: 2e-4,
        warmup_steps: if quick { 2 } else { 60 },
        weight_decay: 0.1,
        grad_clip: 1.0,
        eval_every: if quick { 20 } else { 250 },
        eval_windows: 32,
        long_every: 40,
        long_seq_len: 640,
        data_parallel: SHARDS,
        seed: 0,
    }
}

const STEPS: usize = 1800;
/// Each training question appears this many times (shuffled) in the training stream.
const TRAIN_REPEATS: usize = 20;

/// Where the checkpoint of a corpus lives: `<cache>/transformer` for the built-in corpus,
/// `<cache>/transformer-corpus-<SHA-256 prefix of the file's contents>` for `--corpus FILE` (two
/// files with the same name never share a model), with `-quick` appended for `--quick` models.
pub fn checkpoint_dir(opts: &Options) -> PathBuf {
    let name = match opts.arch {
        Arch::Gpt => NAME.to_string(),
        Arch::Llama => format!("{NAME}-llama"),
    };
    match &opts.corpus {
        None => opts.cache_dir.join(opts.cache_key(&name)),
        Some(c) => {
            let sha = tt_tensor::serialize::sha256_hex(c.text().as_bytes());
            opts.cache_dir.join(opts.cache_key(&format!("{name}-corpus-{}", &sha[..16])))
        }
    }
}

/// The largest `--corpus` file read (a corpus this size would take days to train on here).
pub const MAX_CORPUS_BYTES: u64 = 64 << 20;

/// Loss weight of question tokens relative to answer tokens (1.0) on the built-in corpus. The
/// question's content is random by design; weighting it less puts the gradient on the answers.
pub const QUESTION_WEIGHT: f32 = 0.1;

/// Text to train on: (train text, validation text, QA corpus if built-in).
pub fn load_text(opts: &Options) -> Result<(String, String, Option<QaCorpus>)> {
    match &opts.corpus {
        None => {
            let c = corpus::generate(0);
            Ok((c.train_annotated(TRAIN_REPEATS, 0).text, c.val_text(), Some(c)))
        }
        Some(c) => {
            let text = c.text();
            // Last 10% (at a character boundary) is validation.
            let cut = text.char_indices().nth(text.chars().count() * 9 / 10).map_or(text.len(), |(i, _)| i);
            Ok((text[..cut].to_string(), text[cut..].to_string(), None))
        }
    }
}

/// A `--corpus` file, read once (it may be a pipe: `--corpus <(cat file)`), then shared by
/// every step that needs it: the cache key, training and evaluation.
#[derive(Clone)]
pub struct UserCorpus {
    path: PathBuf,
    text: std::sync::Arc<str>,
}

impl std::fmt::Debug for UserCorpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserCorpus({}, {} bytes)", self.path.display(), self.text.len())
    }
}

impl UserCorpus {
    /// Reads `path`: UTF-8, at least 2000 characters, at most [`MAX_CORPUS_BYTES`].
    ///
    /// # Errors
    /// An unreadable file, one over the size limit, not UTF-8, or too short; each names the path.
    pub fn read(path: &Path) -> Result<UserCorpus> {
        use std::io::Read;
        let err = |e: String| MilestoneError::Other(format!("--corpus {}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut bytes = Vec::new();
        // `take` bounds the read even for endless files (/dev/zero) whose metadata says 0 bytes.
        file.take(MAX_CORPUS_BYTES + 1).read_to_end(&mut bytes).map_err(|e| err(e.to_string()))?;
        if bytes.len() as u64 > MAX_CORPUS_BYTES {
            return Err(err(format!("larger than the {} MiB limit", MAX_CORPUS_BYTES >> 20)));
        }
        let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
        if text.chars().count() < 2000 {
            return Err(err("need at least 2000 characters".into()));
        }
        Ok(UserCorpus { path: path.to_path_buf(), text: text.into() })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Trains a fresh model and saves it. Returns the model, tokenizer and training report.
fn train_new(opts: &Options) -> Result<(Gpt, Tokenizer, TrainReport)> {
    // A checkpoint path that cannot hold the result fails now, not after the training run.
    let dir = checkpoint_dir(opts);
    tt_tensor::serialize::prepare_unit_dir(&dir)?;
    let (train_text, val_text, qa) = load_text(opts)?;
    let vocab_text = match &qa {
        Some(c) => c.all_text(),
        None => format!("{train_text}{val_text}"),
    };
    let tokenizer = Tokenizer::Char(CharTokenizer::from_corpus(&vocab_text));
    let model = Gpt::new(model_config(tokenizer.vocab_size(), opts.quick, opts.arch))?;
    let cfg = train_config(opts.quick);
    opts.say(format!(
        "training {}: d_model {}, {} layers, {} heads ({} K/V), context {}, {} parameters, vocab {} (characters)",
        match opts.arch {
            Arch::Gpt => "GPT",
            Arch::Llama => "Llama",
        },
        model.config.d_model,
        model.config.n_layers,
        model.config.n_heads,
        model.config.kv_heads(0),
        model.config.max_seq_len,
        model.num_parameters(),
        tokenizer.vocab_size()
    ));
    opts.say(format!(
        "{} steps of {}×{} tokens (every {}th step two {}-token windows), AdamW lr {} warmup {} cosine to {}, clip {}, {} data-parallel shards",
        cfg.steps, cfg.batch_size, cfg.seq_len, cfg.long_every, cfg.long_seq_len, cfg.lr, cfg.warmup_steps, cfg.min_lr, cfg.grad_clip, cfg.data_parallel
    ));
    let val_ids = tokenizer.encode_ids(&val_text)?;
    let data = train_data(&tokenizer, &train_text, qa.as_ref())?;
    if qa.is_some() {
        opts.say(format!(
            "loss weight 1.0 on answer tokens, {QUESTION_WEIGHT} on the rest; windows start at questions"
        ));
    }
    let report = train(&model, &data, &val_ids, &cfg, opts.progress, |line| opts.say(line))?;
    let info = json!({ "train": cfg, "report": report, "corpus": opts.corpus.as_ref().map(UserCorpus::path) });
    checkpoint::save(&dir, &model, &tokenizer, info)?;
    Ok((model, tokenizer, report))
}

/// The training stream: on the built-in corpus, answer tokens weighted 1 and the rest
/// [`QUESTION_WEIGHT`], windows starting at questions (character tokens align 1:1 with the
/// annotation); on a user corpus, plain text.
pub fn train_data(tokenizer: &Tokenizer, train_text: &str, qa: Option<&QaCorpus>) -> Result<TrainData> {
    Ok(match qa {
        Some(c) => {
            let ann = c.train_annotated(TRAIN_REPEATS, 0);
            TrainData {
                ids: tokenizer.encode_ids(&ann.text)?,
                weights: Some(ann.answer_mask.iter().map(|&a| if a { 1.0 } else { QUESTION_WEIGHT }).collect()),
                starts: Some(ann.question_starts),
            }
        }
        None => TrainData::plain(tokenizer.encode_ids(train_text)?),
    })
}

/// What the optimization milestones score a GPT variant with on the built-in corpus: the
/// tokenizer, the unseen test questions (every 10th with `--quick`), the validation ids, the
/// training text and stream (for fine-tuning and calibration).
pub struct QaEval {
    pub tokenizer: Tokenizer,
    pub test: Vec<corpus::QaPair>,
    pub val_ids: Vec<usize>,
    pub train_text: String,
    pub data: TrainData,
}

/// [`QaEval`] for the cached default GPT (trained first if absent).
///
/// # Errors
/// Training or loading errors.
pub fn qa_eval(opts: &Options) -> Result<QaEval> {
    let (_, tokenizer, _, _) = load_or_train(&Options { corpus: None, ..opts.clone() })?;
    let (train_text, val_text, qa) = load_text(&Options { quiet: true, corpus: None, ..opts.clone() })?;
    let qa = qa.ok_or_else(|| MilestoneError::Other("the built-in corpus has questions".into()))?;
    let test = if opts.quick { qa.test.iter().step_by(10).cloned().collect() } else { qa.test.clone() };
    let data = train_data(&tokenizer, &train_text, Some(&qa))?;
    let val_ids = tokenizer.encode_ids(&val_text)?;
    Ok(QaEval { tokenizer, test, val_ids, train_text, data })
}

/// Loads the cached model for the options' corpus, training it first if absent or `--retrain`.
/// Returns the model, its tokenizer, the training report and whether it was reused.
pub fn load_or_train(opts: &Options) -> Result<(Gpt, Tokenizer, TrainReport, bool)> {
    let dir = checkpoint_dir(opts);
    if !opts.retrain && checkpoint::exists(&dir) {
        let (model, tok, info) = checkpoint::load(&dir)?;
        let report: TrainReport = serde_json::from_value(info["report"].clone()).map_err(|e| {
            MilestoneError::Other(format!("{}: checkpoint info has no training report: {e}", dir.display()))
        })?;
        opts.say(format!("reusing checkpoint {} (use --retrain to train again)", dir.display()));
        return Ok((model, tok, report, true));
    }
    let (m, t, r) = train_new(opts)?;
    Ok((m, t, r, false))
}

pub fn run(opts: &Options) -> Result<serde_json::Value> {
    let (model, tokenizer, report, reused) = load_or_train(opts)?;
    let (_, val_text, qa) = load_text(opts)?;
    let val_ids = tokenizer.encode_ids(&val_text)?;
    let val_loss = evaluate_loss(&model, &val_ids, 128, 48)?;
    // Loss over full 640-token windows: shows how the model does across its whole context.
    let val_loss_640 = if val_ids.len() > 641 { Some(evaluate_loss(&model, &val_ids, 640, 4)?) } else { None };
    opts.say(format!(
        "trained in {:.1} s ({:.0} tokens/s); validation loss {:.4}, perplexity {:.3} (128-token windows){}",
        report.train_seconds,
        report.tokens_per_second,
        val_loss,
        val_loss.exp(),
        val_loss_640.map_or(String::new(), |l| format!("; {:.4} over 640-token windows", l))
    ));
    let mut out = json!({
        "milestone": NAME,
        "params": model.num_parameters(),
        "non_embedding_params": model.non_embedding_parameters(),
        "config": model.config,
        "val_loss": val_loss,
        "val_perplexity": val_loss.exp(),
        "val_loss_ctx640": val_loss_640,
        "train_seconds": report.train_seconds,
        "tokens_per_second": report.tokens_per_second,
        "train_tokens": report.tokens,
        "reused_checkpoint": reused,
        "checkpoint": checkpoint_dir(opts),
        "history": report.history,
        "test_exact_match": serde_json::Value::Null,
    });
    if let Some(c) = qa {
        let test: Vec<_> = if opts.quick { c.test.iter().step_by(10).cloned().collect() } else { c.test.clone() };
        let start = Instant::now();
        let (em, answers) = exact_match(&model, &tokenizer, &test, 48, SHARDS)?;
        let mut per_cat = serde_json::Map::new();
        for cat in ["greeting", "fact", "arithmetic", "reasoning"] {
            let of: Vec<_> = answers.iter().filter(|a| a.category == cat).collect();
            let acc = of.iter().filter(|a| a.correct).count() as f64 / of.len().max(1) as f64;
            per_cat.insert(cat.into(), json!({"questions": of.len(), "exact_match": acc}));
            opts.say(format!("  {cat:<10} {:>4} questions  exact match {:5.1}%", of.len(), 100.0 * acc));
        }
        opts.say(format!(
            "test exact match: {:.1}% of {} unseen questions ({:.1} s, greedy, no KV cache)",
            100.0 * em,
            test.len(),
            start.elapsed().as_secs_f64()
        ));
        opts.say("sample answers to test questions:");
        let samples: Vec<_> = ["greeting", "fact", "arithmetic", "reasoning"]
            .iter()
            .flat_map(|cat| answers.iter().filter(move |a| &a.category == cat).take(2))
            .collect();
        for a in &samples {
            opts.say(format!(
                "  Q: {}\n  A: {}   [{}]",
                a.question,
                a.generated,
                if a.correct { "correct" } else { "expected: " }.to_string() + if a.correct { "" } else { &a.expected }
            ));
        }
        out["test_exact_match"] = json!(em);
        out["test_questions"] = json!(test.len());
        out["per_category"] = serde_json::Value::Object(per_cat);
        out["samples"] = json!(samples);
    }
    Ok(out)
}
