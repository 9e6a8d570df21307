//! Milestone `llama` (module 13/14, issue 21): real Llama shapes from llama2.c checkpoint files,
//! decoded by the one cached decoder, beside llama2.c's own `run.c` / `runq.c` on the same files.
//!
//! For the `stories15M` (dim 288, 6 layers, 6 heads, context 256) and `stories110M` (dim 768, 12
//! layers, 12 heads, context 1024) shapes, vocabulary 32,000, random weights (speed depends on
//! the shapes), it writes a legacy f32 checkpoint and a version-2 Q8_0 one (group 32) with
//! tt-models' writers, then measures:
//! - decode tok/s of our engine (batch 1): f32 (packed projections and token table) on one
//!   thread and on every core (the team splits each projection), int8 (the Q8_0 file loaded
//!   straight into per-group int8 projections) and int4 (group 32, converted on load) on one
//!   thread — the median of three generations — with each one's roofline bound;
//! - prefill tok/s of a 512-token prompt (the context minus one where it is shorter);
//! - the peers, when their binaries are given (nothing of llama2.c is in this repository: build
//!   them yourself, e.g. `gcc -Ofast -march=native run.c -o run -lm`, and with `-fopenmp` for all
//!   cores): `TT_RUN_C`, `TT_RUNQ_C` (one thread), `TT_RUN_C_OMP`, `TT_RUNQ_C_OMP` (every core,
//!   `OMP_NUM_THREADS` set), and `TT_LLAMA2C_TOKENIZER` (llama2.c's 32,000-token `tokenizer.bin`,
//!   which run.c needs). Their rate is what they print as `achieved tok/s`, the median of three
//!   runs as ours is;
//! - llama.cpp, when `TT_LLAMA_CPP_BIN` names a directory holding its `llama-bench`,
//!   `llama-quantize` and `llama-convert-llama2c-to-ggml` (built by you; nothing of llama.cpp is
//!   in this repository): the same f32 file converted to GGUF (with the llama2.c tokenizer), then
//!   quantized to Q8_0 and Q4_0, measured with `llama-bench` on one thread (`tg` decode and `pp`
//!   prefill, its own median of repetitions).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tt_accel::packed::{pack_linears_with, PackedF32};
use tt_kvcache::{generate_cached, CachedGpt, OverflowPolicy};
use tt_models::llama2c::checkpoint::{write_legacy, write_q80};
use tt_models::weights::{LlamaParams, LlamaWeights, RopePairs};
use tt_profile::roofline::MemoryLevels;
use tt_transformer::generate::GenerateConfig;
use tt_transformer::Gpt;

use crate::{MilestoneError, Options, Result};

pub const NAME: &str = "llama";

/// Prompt tokens before the timed decode, and tokens decoded.
const PROMPT: usize = 16;
const DECODE: usize = 128;
/// Prefill length (or the context minus one).
const PREFILL: usize = 512;
/// Q8_0's group (ggml's; runq.c reads it from the file).
const GROUP: usize = 32;

pub(crate) fn shapes(quick: bool) -> Vec<(&'static str, LlamaParams)> {
    let p = |dim, hidden, layers, heads, seq, vocab| LlamaParams {
        dim,
        hidden_dim: hidden,
        n_layers: layers,
        n_heads: heads,
        n_kv_heads: heads,
        vocab_size: vocab,
        seq_len: seq,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_pairs: RopePairs::Interleaved,
        tied: true,
    };
    if quick {
        return vec![("tiny", p(64, 160, 2, 4, 160, 512))];
    }
    vec![("stories15M", p(288, 768, 6, 6, 256, 32_000)), ("stories110M", p(768, 2048, 12, 12, 1024, 32_000))]
}

fn err(e: impl std::fmt::Display) -> MilestoneError {
    MilestoneError::Other(e.to_string())
}

/// The shape's two checkpoint files in the cache (written once; random weights, seed 21).
pub(crate) fn files(opts: &Options, shape: &str, params: &LlamaParams) -> Result<(PathBuf, PathBuf)> {
    let dir = opts.cache_dir.join(NAME).join(shape);
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let (f32_path, q80_path) = (dir.join("model.bin"), dir.join("model_q80.bin"));
    if !(f32_path.is_file() && q80_path.is_file()) {
        opts.say(format!("{shape}: writing llama2.c checkpoints in {}", dir.display()));
        let w = LlamaWeights::random(params.clone(), 21, 0.02).map_err(err)?;
        write_legacy(&f32_path, &w).map_err(err)?;
        write_q80(&q80_path, &w, GROUP).map_err(err)?;
    }
    Ok((f32_path, q80_path))
}

/// One engine configuration: how the model is prepared.
#[derive(Clone, Copy, PartialEq)]
enum Engine {
    F32,
    F32Threads,
    Int8,
    Int4,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::F32 => "f32",
            Engine::F32Threads => "f32",
            Engine::Int8 => "int8 (Q8_0 file)",
            Engine::Int4 => "int4",
        }
    }
    fn threads(self) -> usize {
        match self {
            Engine::F32Threads => tt_accel::team::global().map_or(1, |t| t.size()),
            _ => 1,
        }
    }
}

/// The model of `engine`, from the files.
fn model(engine: Engine, f32_path: &Path, q80_path: &Path) -> Result<Gpt> {
    let path = if engine == Engine::Int8 { q80_path } else { f32_path };
    let mut m = tt_models::llama2c::load(path).map_err(err)?;
    match engine {
        Engine::F32 | Engine::F32Threads => {
            let team = if engine == Engine::F32Threads { tt_accel::team::global().cloned() } else { None };
            pack_linears_with(&mut m, team.clone())?;
            tt_quant::quantize_embeddings(&mut m, &|t| {
                let p = PackedF32::new(t);
                Ok(Arc::new(match &team {
                    Some(team) => p.with_team(Arc::clone(team)),
                    None => p,
                }) as Arc<_>)
            })
            .map_err(err)?;
        }
        Engine::Int8 => {}
        Engine::Int4 => {
            tt_quant::quantize_int4(&mut m, 32).map_err(err)?;
            tt_quant::quantize_embeddings(&mut m, &|t| Ok(Arc::new(tt_quant::Int4Linear::new(t, 32)?) as Arc<_>))
                .map_err(err)?;
        }
    }
    tt_tensor::nn::freeze(&mut m)?;
    Ok(m)
}

/// Decode and prefill rates of `engine` on the shape's files, and the bytes a decode step reads.
fn measure(engine: Engine, f32_path: &Path, q80_path: &Path) -> Result<Value> {
    let m = model(engine, f32_path, q80_path)?;
    let (v, ctx) = (m.config.vocab_size, m.config.max_seq_len);
    let kernels =
        if engine.threads() > 1 { tt_accel::fused::row_kernels_threaded() } else { tt_accel::fused::row_kernels() };
    let decode = DECODE.min(ctx - PROMPT);
    let mut e = CachedGpt::with_context(&m, 1, OverflowPolicy::Error, PROMPT + decode)?;
    e.set_row_kernels(kernels);
    let prompt: Vec<usize> = (0..PROMPT).map(|i| (i * 7919 + 13) % v).collect();
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = generate_cached(&mut e, std::slice::from_ref(&prompt), &GenerateConfig::greedy(decode))?;
        let s: f64 = t.step_seconds.iter().skip(1).sum();
        rates.push((t.step_seconds.len() - 1) as f64 / s);
    }
    rates.sort_by(f64::total_cmp);
    let projections: usize = e.projection_formats().iter().map(|p| p.2).sum();
    let kv_mid = e.cache().memory_bytes() * (PROMPT + decode / 2) / (PROMPT + decode);
    drop(e);
    let n = PREFILL.min(ctx - 1);
    let mut p = CachedGpt::with_context(&m, 1, OverflowPolicy::Error, n)?;
    p.set_row_kernels(kernels);
    let ids: Vec<usize> = (0..n).map(|i| (i * 104_729 + 7) % v).collect();
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let t = Instant::now();
        p.prefill(&ids, n)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(json!({
        "engine": engine.name(),
        "threads": engine.threads(),
        "decode_tok_s": rates[1],
        "decode_tok_s_runs": rates,
        "prefill_tokens": n,
        "prefill_tok_s": n as f64 / best,
        "bytes_per_step": projections + kv_mid,
    }))
}

/// A peer binary's `achieved tok/s` on `model`, the median of three runs (as ours), if `var`
/// names one (and the tokenizer is given).
fn peer(var: &str, threads: usize, model: &Path, steps: usize) -> Result<Option<f64>> {
    let mut rates = Vec::with_capacity(3);
    for _ in 0..3 {
        match peer_once(var, threads, model, steps)? {
            Some(r) => rates.push(r),
            None => return Ok(None),
        }
    }
    rates.sort_by(f64::total_cmp);
    Ok(Some(rates[1]))
}

fn peer_once(var: &str, threads: usize, model: &Path, steps: usize) -> Result<Option<f64>> {
    let (Some(exe), Some(tok)) = (std::env::var_os(var), std::env::var_os("TT_LLAMA2C_TOKENIZER")) else {
        return Ok(None);
    };
    let out = std::process::Command::new(&exe)
        .arg(model)
        .arg("-z")
        .arg(&tok)
        .args(["-t", "0", "-n", &steps.to_string(), "-i", "Once upon a time"])
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .map_err(|e| err(format!("{var}={}: {e}", exe.to_string_lossy())))?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.split_once("achieved tok/s:").and_then(|(_, r)| r.trim().parse::<f64>().ok()))
        .ok_or_else(|| err(format!("{var}: no 'achieved tok/s' in its output: {}", text.trim())))?;
    Ok(Some(rate))
}

/// llama.cpp's GGUF files of the shape (F32 converted from the llama2.c file, then Q8_0 and Q4_0),
/// made once in the cache, if `TT_LLAMA_CPP_BIN` and the tokenizer are given.
fn gguf_files(f32_path: &Path) -> Result<Option<[(String, PathBuf); 3]>> {
    let (Some(bin), Some(tok)) = (std::env::var_os("TT_LLAMA_CPP_BIN"), std::env::var_os("TT_LLAMA2C_TOKENIZER"))
    else {
        return Ok(None);
    };
    let bin = PathBuf::from(bin);
    let dir = f32_path.parent().unwrap_or(Path::new("."));
    let f32_gguf = dir.join("model-f32.gguf");
    let run = |cmd: &mut std::process::Command| -> Result<()> {
        let out = cmd.output().map_err(|e| err(format!("{cmd:?}: {e}")))?;
        if !out.status.success() {
            return Err(err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(())
    };
    if !f32_gguf.is_file() {
        run(std::process::Command::new(bin.join("llama-convert-llama2c-to-ggml"))
            .arg("--copy-vocab-from-model")
            .arg(&tok)
            .arg("--llama2c-model")
            .arg(f32_path)
            .arg("--llama2c-output-model")
            .arg(&f32_gguf))?;
    }
    let mut files = vec![("F32".to_string(), f32_gguf.clone())];
    for q in ["Q8_0", "Q4_0"] {
        let path = dir.join(format!("model-{}.gguf", q.to_lowercase()));
        if !path.is_file() {
            run(std::process::Command::new(bin.join("llama-quantize")).arg(&f32_gguf).arg(&path).arg(q))?;
        }
        files.push((q.to_string(), path));
    }
    Ok(files.try_into().ok())
}

/// `llama-bench`'s decode (`tg`) and prefill (`pp`) tok/s of `gguf`, one thread.
fn llama_bench(gguf: &Path, decode: usize, prefill: usize) -> Result<(f64, f64)> {
    let bin = PathBuf::from(std::env::var_os("TT_LLAMA_CPP_BIN").unwrap_or_default());
    let out = std::process::Command::new(bin.join("llama-bench"))
        .arg("-m")
        .arg(gguf)
        .args(["-t", "1", "-n", &decode.to_string(), "-p", &prefill.to_string(), "-o", "json"])
        .output()
        .map_err(|e| err(format!("llama-bench: {e}")))?;
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)
        .map_err(|e| err(format!("llama-bench printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))))?;
    let rate = |gen: bool| {
        rows.iter()
            .find(|r| (r["n_gen"].as_u64().unwrap_or(0) > 0) == gen)
            .and_then(|r| r["avg_ts"].as_f64())
            .ok_or_else(|| err("llama-bench: no avg_ts"))
    };
    Ok((rate(true)?, rate(false)?))
}

pub fn run(opts: &Options) -> Result<Value> {
    let mem = MemoryLevels::measure(opts.quick)?;
    let cores = tt_accel::team::global().map_or(1, |t| t.size());
    let mut rows = Vec::new();
    let mut llama_cpp = Vec::new();
    opts.say(format!(
        "llama2.c checkpoints of random weights; our decoder (batch 1, {PROMPT}-token prompt, {DECODE} decoded, median of 3) beside run.c / runq.c where TT_RUN_C / TT_RUNQ_C name them"
    ));
    opts.say(format!(
        "{:<12} {:<17} {:>7} {:>12} {:>16} {:>12} {:>12}",
        "shape", "engine", "threads", "decode tok/s", "roofline (%)", "prefill tok/s", "peer tok/s"
    ));
    for (shape, params) in shapes(opts.quick) {
        let (f32_path, q80_path) = files(opts, shape, &params)?;
        let steps = (PROMPT + DECODE).min(params.seq_len);
        let mut engines = vec![Engine::F32, Engine::Int8, Engine::Int4];
        if cores > 1 {
            engines.insert(1, Engine::F32Threads);
        }
        for engine in engines {
            let mut row = measure(engine, &f32_path, &q80_path)?;
            let bytes = row["bytes_per_step"].as_u64().unwrap_or(1) as usize;
            let (level, roof) = mem.decode_bound_tok_s(bytes);
            let (var, file) = match engine {
                Engine::F32 => (Some("TT_RUN_C"), &f32_path),
                Engine::F32Threads => (Some("TT_RUN_C_OMP"), &f32_path),
                Engine::Int8 => (Some("TT_RUNQ_C"), &q80_path),
                Engine::Int4 => (None, &f32_path),
            };
            let peer_rate = match var {
                Some(v) => peer(v, engine.threads(), file, steps)?,
                None => None,
            };
            let peer_name = match engine {
                Engine::F32 | Engine::F32Threads => "run.c",
                Engine::Int8 => "runq.c",
                Engine::Int4 => "",
            };
            row["shape"] = json!(shape);
            row["roofline_tok_s"] = json!(roof);
            row["roofline_level"] = json!(level);
            row["peer"] = json!(peer_name);
            row["peer_tok_s"] = json!(peer_rate);
            opts.say(format!(
                "{shape:<12} {:<17} {:>7} {:>12.1} {:>9.1} ({:>3.0}%) {:>12.1} {:>12}",
                engine.name(),
                engine.threads(),
                row["decode_tok_s"].as_f64().unwrap_or(f64::NAN),
                roof,
                100.0 * row["decode_tok_s"].as_f64().unwrap_or(0.0) / roof,
                row["prefill_tok_s"].as_f64().unwrap_or(f64::NAN),
                peer_rate.map_or("—".to_string(), |r| format!("{r:.1}"))
            ));
            rows.push(row);
        }
        if let Some(files) = gguf_files(&f32_path)? {
            let prefill = PREFILL.min(params.seq_len - 1);
            for (format, path) in files {
                let (tg, pp) = llama_bench(&path, DECODE, prefill)?;
                opts.say(format!("{shape:<12} llama.cpp {format:<7} {:>7} {tg:>12.1} {:>16} {pp:>12.1}", 1, ""));
                llama_cpp.push(json!({"shape": shape, "format": format, "threads": 1, "tg_tok_s": tg, "pp_tok_s": pp, "prefill_tokens": prefill, "decode_tokens": DECODE}));
            }
        }
    }
    Ok(json!({
        "milestone": NAME,
        "prompt_tokens": PROMPT,
        "decode_tokens": DECODE,
        "group": GROUP,
        "memory_levels": {"l2_read_gbs": mem.l2_read_gbs, "l3_read_gbs": mem.l3_read_gbs, "dram_read_gbs": mem.dram_read_gbs},
        "rows": rows,
        "llama_cpp": llama_cpp,
    }))
}
