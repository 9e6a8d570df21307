//! `cargo xtask fuzz`: seeded mutation fuzzing of the checkpoint loaders (the fp32 GPT's and
//! tt-quant's int8 one) and the tokenizers.
//!
//! Every iteration `i` derives its own generator from `(seed, target, i)`, mutates a valid input
//! (bit flips, interesting bytes and integers, truncation, deleted or duplicated ranges, numbers
//! in JSON replaced by extreme ones) and feeds it to the code under test. Outcomes are counted:
//! `ok` (accepted), `err` (a clean error), `wrong` (accepted but misbehaving: a tokenizer that
//! does not round-trip), `panic` (caught per iteration) and `abort` (the worker process died:
//! an allocation failure under the memory cap, a stack overflow, a signal).
//!
//! The orchestrator runs chunks of iterations in worker processes (this same executable,
//! `fuzz-worker`) under `ulimit -v`, so an attempt to allocate hundreds of GB fails as an abort
//! instead of taking the machine down. When a worker dies, its chunk is re-run with tracing to
//! find the iteration, which is counted and skipped. Any iteration is reproduced with
//! `cargo xtask fuzz-one --target T --seed S --iter I`.

use std::io::{BufRead, BufReader, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tt_tensor::nn::Sequential;
use tt_tensor::Module;
use tt_transformer::{checkpoint, BpeTokenizer, CharTokenizer, Gpt, GptConfig, Tokenize, Tokenizer};

/// What is fuzzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `checkpoint::from_parts` on mutated weights / tokenizer / config (past the checksum, as a
    /// hostile file with a recomputed manifest would be), and now and then `checkpoint::load` on
    /// a mutated manifest.
    Checkpoint,
    /// `Tokenizer::from_json` on mutated tokenizer files, then encode / decode / round trip.
    Tokenizer,
    /// `tt_quant::checkpoint::from_safetensors` on mutated quantized checkpoints (int8 MLPs and
    /// a CNN, symmetric and affine, dynamic and static activations) into a freshly built model;
    /// an accepted file must run, save again and load back to the same outputs.
    QuantCheckpoint,
    /// Proves the harness can fail: iteration 3 panics, 5 aborts the process, 7 answers wrongly.
    SelfTest,
}

impl Target {
    /// What `cargo xtask fuzz` runs by default.
    #[cfg(test)]
    pub const ALL: [Target; 3] = [Target::Checkpoint, Target::Tokenizer, Target::QuantCheckpoint];
    pub fn name(self) -> &'static str {
        match self {
            Target::Checkpoint => "checkpoint",
            Target::Tokenizer => "tokenizer",
            Target::QuantCheckpoint => "quant-checkpoint",
            Target::SelfTest => "selftest",
        }
    }
    pub fn parse(s: &str) -> Option<Target> {
        [Target::Checkpoint, Target::Tokenizer, Target::QuantCheckpoint, Target::SelfTest]
            .into_iter()
            .find(|t| t.name() == s)
    }
}

/// The result of one iteration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Err,
    Wrong(String),
    Panic(String),
}

/// Runs `f`, turning a panic into [`Outcome::Panic`] with its message.
pub fn classify(f: impl FnOnce() -> Outcome) -> Outcome {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(o) => o,
        Err(payload) => Outcome::Panic(
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic payload".into()),
        ),
    }
}

/// Valid inputs the mutations start from, built deterministically.
pub struct Corpus {
    /// (weights, tokenizer, config) of a char-tokenizer and a BPE-tokenizer checkpoint.
    checkpoints: Vec<[Vec<u8>; 3]>,
    tokenizers: Vec<Vec<u8>>,
    /// Quantized checkpoints: (which of [`quant_model`]'s architectures, safetensors bytes).
    quantized: Vec<(usize, Vec<u8>)>,
    texts: Vec<String>,
    /// A published checkpoint unit to mutate the manifest of (per worker), and its manifest.
    unit_dir: Option<(PathBuf, Vec<u8>)>,
}

const TEXT: &str = "Q: what is 3 plus 4?\nA: 7\nQ: hello there, who are you?\nA: a tiny model. Ünïcödé ok?\n";

fn tiny_config(vocab: usize) -> GptConfig {
    GptConfig {
        d_model: 8,
        n_layers: 1,
        max_seq_len: 16,
        mlp_ratio: 2,
        n_heads: 2,
        ..tt_transformer::testing::tiny_config(vocab, 7)
    }
}

impl Corpus {
    /// Builds the seed inputs; with `unit_dir`, also publishes a checkpoint there.
    pub fn new(unit_dir: Option<&Path>) -> Corpus {
        let toks = [Tokenizer::Char(CharTokenizer::from_corpus(TEXT)), Tokenizer::Bpe(BpeTokenizer::train(TEXT, 24))];
        let mut checkpoints = Vec::new();
        let mut tokenizers = Vec::new();
        for tok in &toks {
            let model = Gpt::new(tiny_config(tok.vocab_size())).expect("valid tiny config");
            let weights =
                tt_tensor::serialize::to_safetensors_bytes(&model.named_parameters(), None).expect("serializes");
            let tjson = serde_json::to_vec(tok).expect("serializes");
            let cfg = serde_json::to_vec(&serde_json::json!({"model": model.config, "info": {"note": "fuzz"}}))
                .expect("serializes");
            checkpoints.push([weights, tjson.clone(), cfg]);
            tokenizers.push(tjson);
        }
        let unit_dir = unit_dir.map(|d| {
            let model = Gpt::new(tiny_config(toks[0].vocab_size())).expect("valid");
            checkpoint::save(d, &model, &toks[0], serde_json::Value::Null).expect("writable temp dir");
            let manifest = std::fs::read(d.join(tt_tensor::serialize::MANIFEST)).expect("just written");
            (d.to_path_buf(), manifest)
        });
        let texts = vec![TEXT.to_string(), "hello".into(), String::new(), "Q: 🙂 \u{0}\u{FFFD} é".into()];
        Corpus { checkpoints, tokenizers, quantized: quantized_corpus(), texts, unit_dir }
    }
}

/// The architectures of the quantized seeds: an MLP and a small CNN (fresh weights per `seed`).
fn quant_model(kind: usize, seed: u64) -> Sequential {
    use tt_tensor::nn::{Conv2d, Flatten, Linear, Relu};
    match kind {
        0 => Sequential::new().layer(Linear::new(8, 16, true, seed)).layer(Relu).layer(Linear::new(
            16,
            4,
            true,
            seed + 1,
        )),
        _ => Sequential::new().layer(Conv2d::new(1, 4, 3, 1, 1, seed)).layer(Relu).layer(Flatten).layer(Linear::new(
            4 * 4 * 4,
            3,
            true,
            seed + 1,
        )),
    }
}

/// An input for [`quant_model`] `kind`.
fn quant_input(kind: usize) -> tt_tensor::Tensor {
    let shape: &[usize] = if kind == 0 { &[2, 8] } else { &[2, 1, 4, 4] };
    let n = shape.iter().product::<usize>();
    tt_tensor::Tensor::from_vec((0..n).map(|i| (i as f32 * 0.37).sin() * 2.0).collect(), shape).expect("shape")
}

/// Valid quantized checkpoints: every weight configuration the format stores, dynamic and
/// static activations.
fn quantized_corpus() -> Vec<(usize, Vec<u8>)> {
    use tt_quant::{Activations, Granularity, QParams, Scheme, WeightConfig};
    let configs = [
        (WeightConfig::PER_CHANNEL, None),
        (WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerTensor }, None),
        (WeightConfig::PER_TENSOR, Some(QParams::new(0.02, 128).expect("valid"))),
        (
            WeightConfig { scheme: Scheme::Affine, granularity: Granularity::PerChannel },
            Some(QParams::new(0.5, 3).expect("valid")),
        ),
    ];
    let mut out = Vec::new();
    for kind in 0..2 {
        for (i, (cfg, stat)) in configs.iter().enumerate() {
            let mut m = quant_model(kind, 3 + i as u64);
            let mut act = |_: &str| -> tt_quant::Result<Activations> {
                Ok(stat.map_or(Activations::Dynamic, Activations::Static))
            };
            tt_quant::quantize_layers(&mut m, *cfg, &mut act).expect("quantizes");
            out.push((kind, tt_quant::checkpoint::to_safetensors(&mut m).expect("saves")));
        }
    }
    out
}

/// Outputs as bits (NaN-aware equality).
fn output_bits(m: &Sequential, x: &tt_tensor::Tensor) -> Result<Vec<u32>, String> {
    tt_tensor::no_grad(|| m.forward(x))
        .map(|y| y.to_vec().iter().map(|v| v.to_bits()).collect())
        .map_err(|e| e.to_string())
}

/// Loads mutated quantized bytes into a fresh model; an accepted file must run, save, and load
/// back into another fresh model with the same outputs.
fn exercise_quantized(kind: usize, bytes: &[u8]) -> Outcome {
    use tt_quant::checkpoint::{from_safetensors, to_safetensors};
    let mut m = quant_model(kind, 100);
    if from_safetensors(&mut m, bytes).is_err() {
        return Outcome::Err;
    }
    let x = quant_input(kind);
    let first = match output_bits(&m, &x) {
        Ok(b) => b,
        Err(e) => return Outcome::Wrong(format!("accepted quantized checkpoint fails to run: {e}")),
    };
    let again = match to_safetensors(&mut m) {
        Ok(b) => b,
        Err(e) => return Outcome::Wrong(format!("an accepted quantized checkpoint cannot be saved again: {e}")),
    };
    let mut back = quant_model(kind, 200);
    if let Err(e) = from_safetensors(&mut back, &again) {
        return Outcome::Wrong(format!("its own re-save is refused: {e}"));
    }
    match output_bits(&back, &x) {
        Ok(b) if b == first => Outcome::Ok,
        Ok(_) => Outcome::Wrong("the re-saved checkpoint computes other outputs".into()),
        Err(e) => Outcome::Wrong(format!("the re-saved checkpoint fails to run: {e}")),
    }
}

/// The generator of iteration `i`: independent of every other iteration, so any one replays.
fn rng_for(seed: u64, target: Target, i: u64) -> ChaCha8Rng {
    let t = target as u64 + 1;
    ChaCha8Rng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "3",
    "255",
    "256",
    "65536",
    "4294967295",
    "4294967296",
    "1000000000",
    "18446744073709551615",
    "18446744073709551616",
    "1e9",
    "1e309",
    "-0.0",
    "NaN",
    "0.5",
];
const INTERESTING_U64: &[u64] = &[0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, u64::MAX, 1 << 40];

/// Applies 1–4 random mutations to `input`.
pub fn mutate(input: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let p = rng.random_range(0..len);
                v[p] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let p = rng.random_range(0..len);
                v[p] = *[0u8, 0xff, 0x7f, 0x80, b'9', b'-', b'"', b'{', b'[', b']', b'}', b',', b':']
                    .get(rng.random_range(0..13))
                    .unwrap_or(&0);
            }
            2 => v.truncate(rng.random_range(0..=len)),
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16.min(len - a))).min(len);
                v.drain(a..b);
            }
            4 if len > 0 && len < 1 << 20 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64.min(len - a))).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.random_range(0..=len);
                v.splice(at..at, chunk);
            }
            5 => {
                // Replace a run of digits (a JSON number, a header offset) with an extreme one.
                let runs: Vec<(usize, usize)> = digit_runs(&v);
                if let Some(&(a, b)) = runs.get(rng.random_range(0..runs.len().max(1))) {
                    let n = INTERESTING_NUMBERS[rng.random_range(0..INTERESTING_NUMBERS.len())];
                    v.splice(a..b, n.bytes());
                }
            }
            6 if len >= 8 => {
                let p = rng.random_range(0..=len - 8);
                let x = INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())];
                let width = if rng.random_bool(0.5) { 4 } else { 8 };
                v[p..p + width].copy_from_slice(&x.to_le_bytes()[..width]);
            }
            7 if len > 1 => {
                let (a, b) = (rng.random_range(0..len), rng.random_range(0..len));
                v.swap(a, b);
            }
            _ => {
                let p = rng.random_range(0..=len);
                v.insert(p, rng.random());
            }
        }
    }
    v
}

fn digit_runs(v: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if v[i].is_ascii_digit() {
            let s = i;
            while i < v.len() && (v[i].is_ascii_digit() || v[i] == b'.') {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// Encodes and decodes with a tokenizer that loaded; a failed round trip of text it accepted is
/// a silently wrong answer.
fn exercise_tokenizer(tok: &Tokenizer, texts: &[String], rng: &mut ChaCha8Rng) -> Outcome {
    for t in texts {
        if let Ok(ids) = tok.encode(t) {
            match tok.decode(&ids) {
                Ok(back) if &back == t => {}
                Ok(back) => return Outcome::Wrong(format!("round trip of {t:?} gave {back:?}")),
                Err(e) => return Outcome::Wrong(format!("decode of its own encoding of {t:?} failed: {e}")),
            }
        }
    }
    let ids: Vec<u32> = (0..rng.random_range(0..8)).map(|_| rng.random_range(0..tok.vocab_size() as u32 + 3)).collect();
    let _ = tok.decode(&ids);
    let _ = tok.decode_ids(&[usize::MAX, 0]);
    Outcome::Ok
}

/// Runs iteration `i` of `target`.
pub fn run_one(corpus: &Corpus, target: Target, seed: u64, i: u64) -> Outcome {
    let mut rng = rng_for(seed, target, i);
    classify(|| match target {
        Target::SelfTest => match i {
            3 => panic!("self-test panic"),
            5 => std::process::abort(),
            7 => Outcome::Wrong("self-test wrong answer".into()),
            _ => Outcome::Ok,
        },
        Target::Checkpoint => {
            if let (Some((dir, good)), true) = (&corpus.unit_dir, rng.random_bool(0.02)) {
                // The file is rewritten from the pristine copy every time, so an iteration that
                // panics cannot change what later ones see.
                let path = dir.join(tt_tensor::serialize::MANIFEST);
                std::fs::write(&path, mutate(good, &mut rng)).expect("temp dir writable");
                return if checkpoint::load(dir).is_ok() { Outcome::Ok } else { Outcome::Err };
            }
            let base = &corpus.checkpoints[rng.random_range(0..corpus.checkpoints.len())];
            let mut parts = base.clone();
            let which = rng.random_range(0..3);
            parts[which] = mutate(&base[which], &mut rng);
            match checkpoint::from_parts(&parts[0], &parts[1], &parts[2], Path::new("fuzz")) {
                Ok((model, tok, _)) => {
                    // An accepted checkpoint must also run.
                    let ids: Vec<usize> = (0..4).map(|j| j % model.config.vocab_size).collect();
                    match tt_tensor::no_grad(|| model.forward_ids(&ids, 1, 4)) {
                        Ok(l) if l.to_vec().iter().all(|v| v.is_finite()) => {
                            exercise_tokenizer(&tok, &corpus.texts, &mut rng)
                        }
                        Ok(_) => Outcome::Wrong("accepted weights give non-finite logits".into()),
                        Err(e) => Outcome::Wrong(format!("accepted checkpoint fails to run: {e}")),
                    }
                }
                Err(_) => Outcome::Err,
            }
        }
        Target::QuantCheckpoint => {
            let (kind, base) = &corpus.quantized[rng.random_range(0..corpus.quantized.len())];
            exercise_quantized(*kind, &mutate(base, &mut rng))
        }
        Target::Tokenizer => {
            let base = &corpus.tokenizers[rng.random_range(0..corpus.tokenizers.len())];
            match Tokenizer::from_json(&mutate(base, &mut rng)) {
                Ok(tok) => {
                    let mut texts = corpus.texts.clone();
                    texts.push(String::from_utf8_lossy(&mutate(TEXT.as_bytes(), &mut rng)).into_owned());
                    exercise_tokenizer(&tok, &texts, &mut rng)
                }
                Err(_) => Outcome::Err,
            }
        }
    })
}

/// Outcome counts over a range of iterations.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub err: u64,
    pub wrong: u64,
    pub panic: u64,
    pub abort: u64,
    /// Up to 5 (iteration, message) examples of panics, wrong answers and aborts.
    pub examples: Vec<(u64, String)>,
}

impl Counts {
    fn add(&mut self, i: u64, o: Outcome) {
        match o {
            Outcome::Ok => self.ok += 1,
            Outcome::Err => self.err += 1,
            Outcome::Wrong(m) => {
                self.wrong += 1;
                self.example(i, format!("wrong: {m}"));
            }
            Outcome::Panic(m) => {
                self.panic += 1;
                self.example(i, format!("panic: {m}"));
            }
        }
    }
    fn example(&mut self, i: u64, m: String) {
        if self.examples.len() < 5 {
            self.examples.push((i, m));
        }
    }
    fn merge(&mut self, o: Counts) {
        self.ok += o.ok;
        self.err += o.err;
        self.wrong += o.wrong;
        self.panic += o.panic;
        self.abort += o.abort;
        for (i, m) in o.examples {
            self.example(i, m);
        }
    }
    pub fn total(&self) -> u64 {
        self.ok + self.err + self.wrong + self.panic + self.abort
    }
}

/// Runs iterations `from..to` in this process (panics caught, printed nowhere).
pub fn run_range(corpus: &Corpus, target: Target, seed: u64, from: u64, to: u64, trace: bool) -> Counts {
    let mut c = Counts::default();
    for i in from..to {
        if trace {
            let _ = writeln!(std::io::stderr(), "iter {i}");
        }
        c.add(i, run_one(corpus, target, seed, i));
    }
    c
}

fn silence_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(p) => args.get(p + 1).and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a valid value")),
    }
}

fn temp_unit_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tt-fuzz-{tag}-{}", std::process::id()))
}

/// `xtask fuzz-worker --target T --seed S --from A --to B [--trace]`: prints one JSON line of counts.
pub fn worker(args: &[String]) -> ExitCode {
    let parsed = (|| -> Result<_, String> {
        let target = Target::parse(&arg(args, "--target", String::new())?).ok_or("unknown --target")?;
        Ok((target, arg(args, "--seed", 0u64)?, arg(args, "--from", 0u64)?, arg(args, "--to", 0u64)?))
    })();
    let (target, seed, from, to) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xtask fuzz-worker: error: {e}");
            return ExitCode::from(2);
        }
    };
    silence_panics();
    let dir = temp_unit_dir("w");
    let corpus = Corpus::new((target == Target::Checkpoint).then_some(dir.as_path()));
    let counts = run_range(&corpus, target, seed, from, to, args.iter().any(|a| a == "--trace"));
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", serde_json::to_string(&counts).expect("counts serialize"));
    ExitCode::SUCCESS
}

/// `xtask fuzz-one --target T --seed S --iter I`: replays one iteration, panics visible.
pub fn one(args: &[String]) -> ExitCode {
    let target = arg(args, "--target", String::new()).ok().and_then(|t| Target::parse(&t));
    let (Some(target), Ok(seed), Ok(i)) = (target, arg(args, "--seed", 0u64), arg(args, "--iter", 0u64)) else {
        eprintln!("xtask fuzz-one: error: needs --target checkpoint|tokenizer|quant-checkpoint --seed S --iter I");
        return ExitCode::from(2);
    };
    let dir = temp_unit_dir("one");
    let corpus = Corpus::new((target == Target::Checkpoint).then_some(dir.as_path()));
    let o = run_one(&corpus, target, seed, i);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{o:?}");
    ExitCode::SUCCESS
}

/// One worker process over `from..to` under the memory cap: its counts, or, if it died, how it
/// exited and the last iteration it announced (with `trace`).
fn worker_once(
    exe: &Path,
    target: Target,
    seed: u64,
    (from, to): (u64, u64),
    mem_kb: u64,
    trace: bool,
) -> Result<Result<Counts, (String, Option<u64>)>, String> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {mem_kb} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args(["fuzz-worker", "--target", target.name()])
        .args(["--seed", &seed.to_string(), "--from", &from.to_string(), "--to", &to.to_string()]);
    if trace {
        cmd.arg("--trace");
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot start a worker: {e}"))?;
    if out.status.success() {
        if let Ok(c) = serde_json::from_str::<Counts>(String::from_utf8_lossy(&out.stdout).trim()) {
            return Ok(Ok(c));
        }
    }
    let last = BufReader::new(&out.stderr[..])
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("iter ").and_then(|n| n.parse::<u64>().ok()))
        .last();
    Ok(Err((out.status.to_string(), last)))
}

/// Runs one chunk in a memory-capped worker; when it dies, re-runs it with tracing to find the
/// iteration, counts that one as an abort, runs the iterations before it on their own, and
/// continues after it.
fn run_chunk(exe: &Path, target: Target, seed: u64, from: u64, to: u64, mem_kb: u64) -> Result<Counts, String> {
    if let Ok(c) = worker_once(exe, target, seed, (from, to), mem_kb, false)? {
        return Ok(c);
    }
    let mut total = Counts::default();
    let mut start = from;
    while start < to {
        match worker_once(exe, target, seed, (start, to), mem_kb, true)? {
            Ok(c) => {
                total.merge(c);
                break;
            }
            Err((status, last)) => {
                let i = last.ok_or_else(|| format!("a worker died before its first iteration ({status})"))?;
                // Iterations are deterministic: the ones before `i` complete when run on their own.
                if i > start {
                    total.merge(run_chunk(exe, target, seed, start, i, mem_kb)?);
                }
                total.abort += 1;
                total.example(i, format!("abort: worker {status} at this iteration"));
                start = i + 1;
            }
        }
    }
    Ok(total)
}

/// `xtask fuzz [--iterations N] [--seed S] [--mem-mb M] [--jobs J]`: N iterations per target.
/// Exits non-zero if any iteration panicked, aborted or answered wrongly.
pub fn orchestrate(args: &[String]) -> ExitCode {
    let parsed = (|| -> Result<_, String> {
        Ok((
            arg(args, "--iterations", 100_000u64)?,
            arg(args, "--seed", 0u64)?,
            arg(args, "--mem-mb", 2048u64)?,
            arg(args, "--jobs", 2usize)?.max(1),
            arg(args, "--targets", "checkpoint,tokenizer,quant-checkpoint".to_string())?
                .split(',')
                .map(|t| Target::parse(t).ok_or_else(|| format!("unknown target {t:?}")))
                .collect::<Result<Vec<_>, _>>()?,
        ))
    })();
    let (iterations, seed, mem_mb, jobs, targets) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xtask fuzz: error: {e}");
            return ExitCode::from(2);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("xtask fuzz: error: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let chunk = 25_000u64;
    let start = std::time::Instant::now();
    println!(
        "fuzz: {iterations} iterations per target, seed {seed}, memory cap {mem_mb} MiB per worker, {jobs} workers"
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7}",
        "target", "iterations", "ok", "err", "wrong", "panics", "aborts"
    );
    let mut failed = false;
    for target in targets {
        let ranges: Vec<(u64, u64)> =
            (0..iterations).step_by(chunk as usize).map(|a| (a, (a + chunk).min(iterations))).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Result<Counts, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..jobs)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&(a, b)) = ranges.get(k) else { break mine };
                            mine.push(run_chunk(&exe, target, seed, a, b, mem_mb * 1024));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|_| vec![Err("worker thread panicked".into())]))
                .collect()
        });
        let mut c = Counts::default();
        for r in results {
            match r {
                Ok(x) => c.merge(x),
                Err(e) => {
                    eprintln!("xtask fuzz: error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        println!(
            "{:<12} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7}",
            target.name(),
            c.total(),
            c.ok,
            c.err,
            c.wrong,
            c.panic,
            c.abort
        );
        for (i, m) in &c.examples {
            println!(
                "    iteration {i}: {m}  (replay: cargo xtask fuzz-one --target {} --seed {seed} --iter {i})",
                target.name()
            );
        }
        failed |= c.panic + c.abort + c.wrong > 0 || c.total() != iterations;
    }
    println!(
        "fuzz: {:.1} s; {}",
        start.elapsed().as_secs_f64(),
        if failed { "FAILED" } else { "0 panics, 0 aborts, 0 wrong answers" }
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short slice of the fuzz run, in-process (aborts are the orchestrator's to catch).
    #[test]
    fn a_short_fuzz_slice_finds_no_panics_or_wrong_answers() {
        silence_panics();
        let dir = temp_unit_dir("test");
        let corpus = Corpus::new(Some(&dir));
        for target in Target::ALL {
            let c = run_range(&corpus, target, 1, 0, 1500, false);
            assert_eq!((c.panic, c.wrong), (0, 0), "{}: {:?}", target.name(), c.examples);
            // The mutations reach both sides: some inputs load, most are rejected.
            assert!(c.ok > 0 && c.err > 0, "{}: {c:?}", target.name());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_harness_counts_a_panic_and_replays_an_iteration() {
        silence_panics();
        assert_eq!(classify(|| panic!("boom")), Outcome::Panic("boom".into()));
        assert_eq!(classify(|| Outcome::Err), Outcome::Err);
        let corpus = Corpus::new(None);
        let a = run_one(&corpus, Target::Tokenizer, 5, 17);
        assert_eq!(a, run_one(&corpus, Target::Tokenizer, 5, 17), "iteration i is reproducible");
        let m1 = mutate(b"{\"a\": 123}", &mut rng_for(0, Target::Tokenizer, 1));
        let m2 = mutate(b"{\"a\": 123}", &mut rng_for(0, Target::Tokenizer, 1));
        assert_eq!(m1, m2);
    }
}
