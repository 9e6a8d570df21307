//! Milestone `memory` (module 17, issue 20): the memory a process really holds for a model in each
//! weight format, at sizes where it binds.
//!
//! For each model shape (the course GPT; GPTs of the llama2.c `stories42M` and `stories110M`
//! shapes, random weights) and each format (fp32, int8, int4, 50% of the MLP units pruned), a
//! **separate process** (`tito memory-child`) builds the model format by format
//! (`Gpt::new_with`: no f32 copy of a quantized layer ever exists beside its codes), decodes 256
//! tokens with the KV-cached decoder and reports its peak resident set (`VmHWM`), the bytes of
//! its weights and of its KV cache, and its decode rate. Every row keeps its KV cache in f32;
//! the int8 and int4 models are measured a second time with an int8 KV cache (module 14's
//! `KvStorage::Int8`), the whole deployment quantized. The parent adds each row's roofline
//! bound: the bytes one decode step reads, over the measured bandwidth of the memory level they
//! live in. Bytes on disk play no part: every figure is what the process held or read.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ndarray::Array2;
use serde_json::{json, Value};
use tt_accel::packed::PackedF32;
use tt_kvcache::{generate_cached, CachedGpt, KvStorage, OverflowPolicy};
use tt_profile::roofline::MemoryLevels;
use tt_quant::int4::Int4Linear;
use tt_quant::{Activations, Int8Linear, WeightConfig};
use tt_tensor::{Module, Projection};
use tt_transformer::generate::GenerateConfig;
use tt_transformer::{Gpt, GptConfig};

use crate::{transformer, MilestoneError, Options, Result};

pub const NAME: &str = "memory";

/// Tokens decoded after the prompt.
pub const TOKENS: usize = 256;
const PROMPT: usize = 16;
/// Generations timed per row; the median's rate is reported.
const DECODE_RUNS: usize = 3;

/// The weight formats measured, by the name the JSON rows carry.
pub const WEIGHTS: [&str; 4] = ["fp32", "int8", "int4", "pruned50"];

/// The rows of each shape: (weights, KV cache storage). The first is the reference of the
/// `rss_vs_fp32` column.
pub const ROWS: [(&str, &str); 6] =
    [("fp32", "f32"), ("int8", "f32"), ("int4", "f32"), ("pruned50", "f32"), ("int8", "int8"), ("int4", "int8")];

/// The model shapes: the course GPT (`vocab` from its tokenizer) and llama2.c's two TinyStories
/// shapes (d_model, layers, heads; context 1024, vocabulary 32,000) as GPT-2-style blocks.
fn shapes(vocab: usize, quick: bool) -> Vec<(&'static str, GptConfig)> {
    let course = transformer::model_config(vocab, false, crate::Arch::Gpt);
    let stories = |d, layers, heads| GptConfig {
        vocab_size: 32_000,
        d_model: d,
        n_layers: layers,
        n_heads: heads,
        max_seq_len: 1024,
        ..GptConfig::default_model(32_000)
    };
    let mut v = vec![("course", course)];
    if !quick {
        v.push(("stories42M", stories(512, 8, 8)));
        v.push(("stories110M", stories(768, 12, 12)));
    }
    v
}

/// What `tito memory-child` does with a model.
#[derive(Debug, Clone)]
pub enum ChildMode {
    /// Build it format by format in this process, then decode.
    Build,
    /// Build it, then save it as a quantized checkpoint unit in this directory (with its config).
    Save(std::path::PathBuf),
    /// Load it from a checkpoint [`ChildMode::Save`] wrote — no f32 copy of a quantized layer is
    /// ever made — then decode.
    Load(std::path::PathBuf),
}

/// The checkpoint part holding the model's `GptConfig`.
const CONFIG_PART: &str = "config.json";

/// The model of a row: `config` (halved MLPs for pruned50) with each weight in `weights`' format.
fn build(config: &GptConfig, weights: &str) -> Result<Gpt> {
    let mut config = config.clone();
    match weights {
        "fp32" | "int8" | "int4" => {}
        "pruned50" => config.mlp_hidden = Some((0..config.n_layers).map(|l| config.hidden(l) / 2).collect()),
        other => return Err(MilestoneError::Other(format!("unknown weight format '{other}' (one of {WEIGHTS:?})"))),
    }
    Ok(Gpt::new_with(config, &mut |path, _, draw| layer_format(weights, path, &draw()))?)
}

/// The skeleton of the model saved in `dir` (every weight an `Unloaded` placeholder: no weight
/// memory), filled from the checkpoint.
fn load(dir: &Path) -> Result<Gpt> {
    let err = |e: tt_quant::QuantError| MilestoneError::Other(format!("{}: {e}", dir.display()));
    let config = tt_tensor::serialize::load_unit(dir, &[CONFIG_PART])?.remove(0);
    let config: GptConfig = serde_json::from_slice(&config)
        .map_err(|e| MilestoneError::Other(format!("{}: {CONFIG_PART}: {e}", dir.display())))?;
    let mut model =
        Gpt::new_with(config, &mut |_, (o, i), _| Ok(Some(Arc::new(tt_tensor::projection::Unloaded::new(o, i)))))?;
    tt_quant::checkpoint::load(&mut model, dir).map_err(err)?;
    Ok(model)
}

/// The body of `tito memory-child`: the row's model built, saved or loaded (see [`ChildMode`]),
/// then [`TOKENS`] tokens decoded (`tokens`), and what the process held. Run it in a process of
/// its own: the peak resident set is the whole process's.
///
/// # Errors
/// An unknown format, checkpoint errors, or the decoder's errors.
pub fn child_main(config: GptConfig, weights: &str, kv: &str, tokens: usize, mode: ChildMode) -> Result<Value> {
    crate::child::return_freed_memory_to_os();
    let kv_storage = match kv {
        "f32" => KvStorage::F32,
        "int8" => KvStorage::Int8,
        other => return Err(MilestoneError::Other(format!("unknown KV cache storage '{other}' (f32 or int8)"))),
    };
    let model = match &mode {
        ChildMode::Build => build(&config, weights)?,
        ChildMode::Save(dir) => {
            let mut model = build(&config, weights)?;
            let config = serde_json::to_vec(&model.config).map_err(|e| MilestoneError::Other(e.to_string()))?;
            tt_quant::checkpoint::save_with(&mut model, dir, &[(CONFIG_PART, &config)])
                .map_err(|e| MilestoneError::Other(format!("{}: {e}", dir.display())))?;
            return Ok(json!({"saved": dir.display().to_string()}));
        }
        ChildMode::Load(dir) => load(dir)?,
    };
    let (load_peak, loaded_rss) = (crate::child::proc_status_bytes("VmHWM"), crate::child::proc_status_bytes("VmRSS"));
    let context = PROMPT + tokens;
    let mut engine = CachedGpt::with_context(&model, 1, OverflowPolicy::Error, context)?;
    engine.set_row_kernels(tt_accel::fused::row_kernels());
    engine.set_kv_storage(kv_storage)?;
    let projections: usize = engine.projection_formats().iter().map(|p| p.2).sum();
    // Everything else the model holds in f32: embeddings, norms, biases (released weights hold
    // nothing; their bytes are the formats' above).
    let dense: usize = model.parameters().iter().filter(|t| !t.is_released()).map(|t| 4 * t.numel()).sum();
    // A tied head is the token table: a dense one is counted in `dense` already.
    let shared_head = model.lm_head.is_none() && !model.tok_emb.weight.is_released();
    let head = engine.projection_formats().last().map_or(0, |p| p.2);
    let weight_bytes = projections + dense - if shared_head { head } else { 0 };
    let prompt: Vec<usize> = (0..PROMPT).map(|i| (i * 7919 + 13) % model.config.vocab_size).collect();
    // The generation runs DECODE_RUNS times (each from an empty cache, the same tokens): a
    // shared VM's memory bandwidth moves between runs of half a second, and the median run's
    // rate is the figure least moved by it. Memory is unaffected (the same buffers are reused).
    let mut rates = Vec::with_capacity(DECODE_RUNS);
    let mut trace = None;
    for _ in 0..DECODE_RUNS {
        let t = generate_cached(&mut engine, std::slice::from_ref(&prompt), &GenerateConfig::greedy(tokens))?;
        let decode_s: f64 = t.step_seconds.iter().skip(1).sum();
        rates.push(t.step_seconds.len().saturating_sub(1) as f64 / decode_s);
        trace = Some(t);
    }
    let trace = trace.expect("DECODE_RUNS > 0");
    rates.sort_by(f64::total_cmp);
    let kv_bytes = engine.cache().memory_bytes();
    Ok(json!({
        "weights": weights,
        "kv": kv_storage.name(),
        "loaded_from_checkpoint": matches!(mode, ChildMode::Load(_)),
        "params": model.num_parameters(),
        "weight_bytes": weight_bytes,
        "projection_bytes": projections,
        "kv_bytes": kv_bytes,
        "context": context,
        "tokens": trace.tokens[0].len(),
        "tok_s": rates[rates.len() / 2],
        "tok_s_runs": rates,
        "load_peak_rss_bytes": load_peak,
        "loaded_rss_bytes": loaded_rss,
        "peak_rss_bytes": crate::child::proc_status_bytes("VmHWM"),
        "level": tt_accel::level().name(),
        "int_level": tt_quant::IntLevel::current().name(),
    }))
}

/// The format of the layer at `path` in `weights`; `None` keeps it dense f32. The fp32 rows run
/// tt-accel's packed projections (the fastest f32 engine here, the same bytes as dense).
fn layer_format(weights: &str, path: &str, w: &Array2<f32>) -> tt_tensor::Result<Option<Arc<dyn Projection>>> {
    Ok(match weights {
        "int8" => Some(Arc::new(
            Int8Linear::new(w, WeightConfig::PER_CHANNEL, Activations::Dynamic)
                .map_err(|e| tt_tensor::TensorError::InvalidArgument { op: "int8", reason: e.to_string() })?,
        )),
        "int4" => Some(Arc::new(
            Int4Linear::new(w, 32)
                .map_err(|e| tt_tensor::TensorError::InvalidArgument { op: "int4", reason: e.to_string() })?,
        )),
        _ if path == "tok_emb" => None,
        _ => Some(Arc::new(PackedF32::new(w))),
    })
}

/// Bytes one decode step reads: every projection once (the head included), and the KV cache up
/// to the middle of the generation on average.
fn bytes_per_step(row: &Value) -> Result<usize> {
    let n = |k: &str| row[k].as_u64().map(|v| v as usize).ok_or_else(|| bad_row(k));
    let kv_mid = n("kv_bytes")? * (PROMPT + n("tokens")? / 2) / n("context")?.max(1);
    Ok(n("projection_bytes")? + kv_mid)
}

fn bad_row(key: &str) -> MilestoneError {
    MilestoneError::Other(format!("memory: a child's row has no '{key}'"))
}

/// Runs one child (`mode`: `--save DIR`, `--load DIR` or neither) and returns what it printed.
fn child(
    exe: &Path,
    config: &GptConfig,
    (weights, kv): (&str, &str),
    tokens: usize,
    mode: &[&std::ffi::OsStr],
) -> Result<Value> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("memory-child")
        .arg("--config")
        .arg(serde_json::to_string(config).map_err(|e| MilestoneError::Other(e.to_string()))?)
        .arg("--weights")
        .arg(weights)
        .arg("--tokens")
        .arg(tokens.to_string())
        .arg("--kv")
        .arg(kv)
        .args(mode);
    crate::child::run_json(cmd, Duration::from_secs(600), "memory child")
}

/// One row: a quantized model is saved as a checkpoint by one process and loaded by another
/// (what a deployment does: the measured process never sees f32 weights); an f32 one is built
/// in the measured process (loading f32 values holds the same bytes). `saved` lists the
/// checkpoints this run wrote already (one per shape and format, whatever the KV cache).
fn row(
    exe: &Path,
    opts: &Options,
    shape: &str,
    config: &GptConfig,
    (weights, kv): (&str, &str),
    tokens: usize,
    saved: &mut Vec<std::path::PathBuf>,
) -> Result<Value> {
    if weights == "fp32" || weights == "pruned50" {
        return child(exe, config, (weights, kv), tokens, &[]);
    }
    let dir = opts.cache_dir.join(NAME).join(format!("{shape}-{weights}"));
    let (save, load) = (std::ffi::OsStr::new("--save"), std::ffi::OsStr::new("--load"));
    if !saved.contains(&dir) {
        child(exe, config, (weights, kv), tokens, &[save, dir.as_os_str()])?;
        saved.push(dir.clone());
    }
    child(exe, config, (weights, kv), tokens, &[load, dir.as_os_str()])
}

pub fn run(opts: &Options) -> Result<Value> {
    let Some(exe) = &opts.serve_exe else {
        return Err(MilestoneError::Other(
            "the memory milestone measures separate processes: run it from tito (`cargo tito milestone memory`)".into(),
        ));
    };
    let (model, _, _, _) = transformer::load_or_train(&Options { corpus: None, quiet: true, ..opts.clone() })?;
    let vocab = model.config.vocab_size;
    drop(model);
    let tokens = if opts.quick { 32 } else { TOKENS };
    let mem = MemoryLevels::measure(opts.quick)?;
    opts.say(format!(
        "memory: each row a separate process that builds the model format by format and decodes {tokens} tokens after a {PROMPT}-token prompt (batch 1, one thread, KV cache sized for {} positions: f32, or int8 where marked +kv8)",
        PROMPT + tokens
    ));
    opts.say(format!(
        "{:<12} {:<9} {:>12} {:>12} {:>12} {:>9} {:>10} {:>14}",
        "shape", "weights", "weights MB", "KV cache MB", "peak RSS MB", "× fp32", "tok/s", "roofline tok/s"
    ));
    let mut saved = Vec::new();
    let mut rows = Vec::new();
    for (shape, config) in shapes(vocab, opts.quick) {
        let mut fp32_rss = None;
        for (weights, kv) in ROWS {
            let label = if kv == "f32" { weights.to_string() } else { format!("{weights}+kv8") };
            let mut row = match row(exe, opts, shape, &config, (weights, kv), tokens, &mut saved) {
                Ok(r) => r,
                Err(e) if weights == "int4" => {
                    opts.say(format!("{shape:<12} {label:<9} not measured: {e}"));
                    rows.push(json!({"shape": shape, "weights": weights, "kv": kv, "error": e.to_string()}));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (level, roof) = mem.decode_bound_tok_s(bytes_per_step(&row)?);
            row["shape"] = json!(shape);
            row["config"] = json!({"d_model": config.d_model, "n_layers": config.n_layers, "n_heads": config.n_heads, "vocab_size": config.vocab_size, "max_seq_len": config.max_seq_len});
            row["roofline_tok_s"] = json!(roof);
            row["roofline_level"] = json!(level);
            row["bytes_per_step"] = json!(bytes_per_step(&row)?);
            let rss = row["peak_rss_bytes"].as_f64().ok_or_else(|| bad_row("peak_rss_bytes"))?;
            let fp32 = *fp32_rss.get_or_insert(rss);
            row["rss_vs_fp32"] = json!(rss / fp32);
            let mb = |k: &str| row[k].as_f64().unwrap_or(f64::NAN) / 1e6;
            opts.say(format!(
                "{shape:<12} {label:<9} {:>12.1} {:>12.1} {:>12.1} {:>8.2}x {:>10.1} {:>10.1} ({level})",
                mb("weight_bytes"),
                mb("kv_bytes"),
                rss / 1e6,
                rss / fp32,
                row["tok_s"].as_f64().unwrap_or(f64::NAN),
                roof
            ));
            rows.push(row);
        }
    }
    let path = opts.cache_dir.join(NAME).join("peak_rss.svg");
    chart(&path, &rows)?;
    opts.say(format!("chart: {}", path.display()));
    Ok(json!({
        "milestone": NAME,
        "tokens": tokens,
        "prompt_tokens": PROMPT,
        "memory_levels": {
            "l1_read_gbs": mem.l1_read_gbs, "l2_read_gbs": mem.l2_read_gbs,
            "l3_read_gbs": mem.l3_read_gbs, "dram_read_gbs": mem.dram_read_gbs,
        },
        "rows": rows,
    }))
}

/// Peak resident memory of each row as bars, grouped by shape, the weights' share darker.
fn chart(path: &Path, rows: &[Value]) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| crate::chart::err(path, e);
    let measured: Vec<&Value> = rows.iter().filter(|r| r["peak_rss_bytes"].is_number()).collect();
    let top = measured.iter().filter_map(|r| r["peak_rss_bytes"].as_f64()).fold(1.0, f64::max) / 1e6 * 1.15;
    let root = crate::chart::canvas(path, (1100, 460))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("peak resident memory per process (MB; dark: weight bytes)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..measured.len().max(1) as f64, 0f64..top)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_desc("shape / weights")
        .y_desc("MB")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, r) in measured.iter().enumerate() {
        let mb = |k: &str| r[k].as_f64().unwrap_or(0.0) / 1e6;
        let x = i as f64;
        chart
            .draw_series([
                Rectangle::new([(x + 0.1, 0.0), (x + 0.9, mb("peak_rss_bytes"))], BLUE.mix(0.35).filled()),
                Rectangle::new([(x + 0.1, 0.0), (x + 0.9, mb("weight_bytes"))], BLUE.filled()),
            ])
            .map_err(|e| err(e.to_string()))?;
        let kv = if r["kv"] == "int8" { "+kv8" } else { "" };
        let label = format!("{} {}{kv}", r["shape"].as_str().unwrap_or(""), r["weights"].as_str().unwrap_or(""));
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (x + 0.1, mb("peak_rss_bytes") + top * 0.02),
                ("sans-serif", 10),
            )))
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}
