//! The verbs that work on any model (`--model PATH`: a checkpoint unit of this project, a llama2.c
//! `.bin`, a Hugging Face directory), or on the course GPT when no model is named (trained on
//! first use, as the milestones do): `generate`, `quantize`, `prune`, `bench`, `profile`.
//!
//! Each is a few lines over the libraries: `tt_models::open` opens, tt-quant / tt-compress
//! transform, tt-kvcache's `CachedGpt` decodes, tt-profile measures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use tt_kvcache::{CachedGpt, OverflowPolicy};
use tt_models::open::Opened;
use tt_tensor::Module;
use tt_transformer::generate::{generate_traced, Event, GenerateConfig, Sampling};
use tt_transformer::Gpt;

/// Where the model comes from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A checkpoint unit directory, a llama2.c .bin or a Hugging Face directory (default: the
    /// course GPT, trained on first use).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// A llama2.c tokenizer.bin (default: tokenizer.bin beside the model).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Compute threads (default: `TT_THREADS`, else one per core this process may run on).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// Runs `f` with the process's team — `--threads`, else `TT_THREADS`, else one per core —
/// installed on this thread (see `tt_accel::team::install`), after checking the count.
///
/// # Errors
/// A thread count outside 1..=256 (flag or environment), or `f`'s error.
pub fn with_threads<R>(args: &ModelArgs, f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    tt_accel::team::install(threads(args)?, f)
}

/// The process's team for `args` (`None`: one thread).
///
/// # Errors
/// As [`with_threads`].
pub fn threads(args: &ModelArgs) -> Result<Option<std::sync::Arc<tt_accel::team::Team>>, String> {
    match args.threads {
        Some(n) => tt_accel::team::set_threads(n).map_err(|e| format!("--threads: {e}"))?,
        None => drop(tt_accel::team::threads()?),
    }
    Ok(tt_accel::team::global().cloned())
}

/// The row kernels for the installed team: attention split by heads when it has several members.
pub fn row_kernels() -> tt_tensor::kernels::RowKernels {
    match tt_accel::team::current() {
        Some(t) if t.size() > 1 => tt_accel::fused::row_kernels_threaded(),
        _ => tt_accel::fused::row_kernels(),
    }
}

/// The weight format to run or save in.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// As stored: quantized layers (a Q8_0 file's, a quantized unit's) as they are, f32 ones in
    /// tt-accel's packed layout.
    Stored,
    /// Every layer in f32 (quantized ones dequantized), packed.
    F32,
    /// Symmetric int8 per output channel, dynamic activations (tt-quant).
    Int8,
    /// Symmetric int4 in groups of 32 with f16 scales (tt-quant).
    Int4,
}

/// Opens the model `args` names, or the course GPT.
pub fn open(args: &ModelArgs) -> Result<Opened, String> {
    match &args.model {
        Some(p) => tt_models::open::open(p, args.tokenizer.as_deref()).map_err(|e| e.to_string()),
        None => {
            // `json` sends the milestones' report (training progress on first use) to stderr:
            // stdout is the verbs' output alone.
            let opts = milestones::Options { json: true, ..Default::default() };
            let (model, tok, _, _) = milestones::transformer::load_or_train(&opts).map_err(|e| e.to_string())?;
            Ok(Opened { model, codec: tt_models::open::course_codec(tok), format: "course GPT" })
        }
    }
}

/// Puts every projection and the token table of `model` in `weights` (f32 in tt-accel's packed
/// layout; `stored` packs only what is f32), then releases the dense copies: the format is what
/// the process holds.
pub fn convert(model: &mut Gpt, weights: Weights) -> Result<(), String> {
    use std::sync::Arc;
    use tt_quant::{Activations, Int4Linear, Int8Linear, WeightConfig};
    let e = |e: &dyn std::fmt::Display| e.to_string();
    match weights {
        Weights::Stored => {
            // The same f32 values in tt-accel's packed layout (its one-row kernels stream the
            // weights; the dense layout reduces one dot product per output); other formats stay.
            let dense = |p: &Arc<dyn tt_tensor::Projection>| p.format() == "f32";
            tt_tensor::nn::map_linears(model, |_, l| {
                let p = l.projection()?;
                if dense(&p) {
                    l.set_projection(Arc::new(tt_accel::packed::PackedF32::pack(p.as_ref())))?;
                }
                Ok(())
            })
            .map_err(|x| e(&x))?;
            let table = model.tok_emb.projection().map_err(|x| e(&x))?;
            if dense(&table) {
                let packed = Arc::new(tt_accel::packed::PackedF32::pack(table.as_ref()));
                model.tok_emb.set_projection(packed).map_err(|x| e(&x))?;
            }
        }
        Weights::F32 => {
            tt_accel::packed::pack_linears(model).map_err(|x| e(&x))?;
            tt_quant::quantize_embeddings(model, &|t| Ok(Arc::new(tt_accel::packed::PackedF32::new(t)) as Arc<_>))
                .map_err(|x| e(&x))?;
        }
        Weights::Int8 => {
            tt_quant::quantize_dynamic(model, WeightConfig::PER_CHANNEL).map_err(|x| e(&x))?;
            tt_quant::quantize_embeddings(model, &|t| {
                Ok(Arc::new(Int8Linear::new(t, WeightConfig::PER_CHANNEL, Activations::Dynamic)?) as Arc<_>)
            })
            .map_err(|x| e(&x))?;
        }
        Weights::Int4 => {
            tt_quant::quantize_int4(model, 32).map_err(|x| e(&x))?;
            tt_quant::quantize_embeddings(model, &|t| Ok(Arc::new(Int4Linear::new(t, 32)?) as Arc<_>))
                .map_err(|x| e(&x))?;
        }
    }
    tt_tensor::nn::freeze(model).map_err(|x| e(&x))?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 is greedy (arg-max).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches P.
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "stored")]
    pub weights: Weights,
}

/// A KV-cached decoder for `model`, sized for `positions`, with tt-accel's fused row kernels.
fn engine(model: &Gpt, positions: usize) -> Result<CachedGpt, String> {
    engine_of(model, 1, positions)
}

/// [`engine`] for `batch` sequences.
fn engine_of(model: &Gpt, batch: usize, positions: usize) -> Result<CachedGpt, String> {
    let context = positions.clamp(1, model.config.max_seq_len);
    let mut engine =
        CachedGpt::with_context(model, batch, OverflowPolicy::Error, context).map_err(|e| e.to_string())?;
    engine.set_row_kernels(row_kernels());
    Ok(engine)
}

/// `tito generate`: the prompt's continuation on stdout as it is produced, the rates on stderr.
pub fn generate(a: &GenerateArgs) -> Result<(), String> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        return Err(format!("--temperature {} must be a finite number >= 0", a.temperature));
    }
    if let Some(p) = a.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(format!("--top-p {p} must be in (0, 1]"));
    }
    let Opened { mut model, codec, format } = open(&a.model)?;
    convert(&mut model, a.weights)?;
    let prompt = codec.encode_prompt(&a.prompt).map_err(|e| e.to_string())?;
    let max_seq = model.config.max_seq_len;
    if prompt.is_empty() || prompt.len() >= max_seq {
        return Err(format!("the prompt is {} tokens; this model's context is {max_seq}", prompt.len()));
    }
    let max_tokens = a.max_tokens.min(max_seq - prompt.len());
    let mut engine = engine(&model, prompt.len() + max_tokens)?;
    let sampling = if a.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample { temperature: a.temperature, top_k: None, top_p: a.top_p }
    };
    let cfg = GenerateConfig { max_new_tokens: max_tokens, sampling, seed: a.seed, stop_tokens: codec.stop_tokens() };
    let mut out = std::io::stdout().lock();
    let mut prev = *prompt.last().expect("non-empty");
    let (mut failed, mut ends_line) = (None, false);
    let (start, mut first) = (Instant::now(), None);
    let trace = generate_traced(&mut engine, &[&prompt], &cfg, &mut |ev| match ev {
        Event::Token { token, .. } => {
            if failed.is_none() {
                match codec.piece(prev, token) {
                    Ok(bytes) => {
                        ends_line = bytes.last().map_or(ends_line, |&b| b == b'\n');
                        let _ = out.write_all(&bytes).and_then(|_| out.flush());
                    }
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            prev = token;
        }
        Event::First => first = Some(start.elapsed().as_secs_f64()),
        Event::Finished { .. } => {}
    })
    .map_err(|e| e.to_string())?;
    if !ends_line {
        let _ = writeln!(out);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let n = trace.tokens[0].len();
    let decode: f64 = trace.step_seconds.iter().skip(1).sum();
    eprintln!(
        "{format} model, {} weights: {} prompt tokens in {:.1} ms; {n} tokens, {:.1} tok/s decoding",
        name(a.weights),
        prompt.len(),
        1e3 * first.unwrap_or(0.0),
        (n.saturating_sub(1)) as f64 / decode.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

pub fn name(w: Weights) -> &'static str {
    match w {
        Weights::Stored => "stored",
        Weights::F32 => "f32",
        Weights::Int8 => "int8",
        Weights::Int4 => "int4",
    }
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The checkpoint unit to write (`tito generate --model DIR` reads it).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, value_enum)]
    pub weights: Weights,
    /// int8 only: static activation scales calibrated on this UTF-8 text (min/max of each layer's
    /// inputs over up to 8 windows of 128 tokens) instead of dynamic per-row quantization.
    #[arg(long, value_name = "TEXT_FILE")]
    pub calibrate: Option<PathBuf>,
}

/// Windows of calibration text the model runs.
const CALIBRATION_WINDOWS: usize = 8;
const CALIBRATION_WINDOW: usize = 128;

/// Quantizes `model` to int8 with static activation parameters observed on `text` (module 17's
/// calibration), then releases the dense copies.
fn calibrate_int8(model: &mut Gpt, codec: &dyn tt_models::open::TextCodec, text: &Path) -> Result<(), String> {
    use tt_quant::{calibrate::calibrate, observer::MinMax, Activations, WeightConfig};
    const LIMIT: u64 = 64 << 20;
    let len = std::fs::metadata(text).map_err(|e| format!("{}: {e}", text.display()))?.len();
    if len > LIMIT {
        return Err(format!("{}: {len} bytes; calibration text is read whole, at most {LIMIT}", text.display()));
    }
    let text_s = std::fs::read_to_string(text).map_err(|e| format!("{}: {e}", text.display()))?;
    let ids = codec.encode_prompt(&text_s).map_err(|e| format!("{}: {e}", text.display()))?;
    let window = CALIBRATION_WINDOW.min(model.config.max_seq_len);
    if ids.len() < window {
        return Err(format!("{}: {} tokens; calibration needs at least {window}", text.display(), ids.len()));
    }
    let mut run = |m: &dyn Module| -> tt_quant::Result<()> {
        for w in ids.chunks_exact(window).take(CALIBRATION_WINDOWS) {
            let x = tt_tensor::Tensor::from_vec(w.iter().map(|&i| i as f32).collect(), &[1, window])?;
            tt_tensor::no_grad(|| m.forward(&x))?;
        }
        Ok(())
    };
    let cal = calibrate(model, &|| Box::new(MinMax::default()), &mut run).map_err(|e| e.to_string())?;
    tt_quant::quantize_layers(model, WeightConfig::PER_CHANNEL, &mut |name| {
        Ok(Activations::Static(cal.qparams(name)?))
    })
    .map_err(|e| e.to_string())?;
    tt_tensor::nn::freeze(model).map_err(|e| e.to_string())?;
    Ok(())
}

/// `tito quantize`: the model in int8 or int4, saved as a checkpoint unit with its tokenizer.
pub fn quantize(a: &QuantizeArgs) -> Result<(), String> {
    if matches!(a.weights, Weights::F32 | Weights::Stored) {
        return Err("--weights must be int8 or int4 (f32 and stored are the model as it is)".into());
    }
    if a.calibrate.is_some() && a.weights != Weights::Int8 {
        return Err("--calibrate applies to int8 (int4 quantizes its activations per group as they come)".into());
    }
    refuse_overwrite_of_another_kind(&a.out)?;
    let Opened { mut model, codec, format } = open(&a.model)?;
    let before: usize = model.parameters().iter().map(|t| 4 * t.numel()).sum();
    match &a.calibrate {
        Some(text) => calibrate_int8(&mut model, codec.as_ref(), text)?,
        None => convert(&mut model, a.weights)?,
    }
    tt_models::open::save(&mut model, codec.as_ref(), name(a.weights), &a.out).map_err(|e| e.to_string())?;
    let bytes = dir_bytes(&a.out);
    eprintln!(
        "{format} model in {}: {} (f32: {:.1} MB; the checkpoint: {:.1} MB on disk)",
        name(a.weights),
        a.out.display(),
        before as f64 / 1e6,
        bytes as f64 / 1e6
    );
    Ok(())
}

/// Writing a unit replaces one; anything else in the way is not ours to replace.
fn refuse_overwrite_of_another_kind(out: &Path) -> Result<(), String> {
    if out.exists() && !(out.is_dir() && tt_tensor::serialize::unit_exists(out)) && !is_empty_dir(out) {
        return Err(format!("{}: exists and is not a checkpoint unit; choose another --out", out.display()));
    }
    Ok(())
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// How a model is pruned (module 18's methods).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMethod {
    /// Remove whole MLP units (structured: the model gets smaller and faster).
    Mlp,
    /// Remove whole attention heads (structured; multi-head blocks only).
    Heads,
    /// Zero the smallest weights of every linear layer (unstructured: same shape, sparse values).
    Magnitude,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "mlp")]
    pub method: PruneMethod,
    /// The fraction removed, in [0, 1).
    #[arg(long, default_value_t = 0.5)]
    pub amount: f64,
}

/// `tito prune`: a structured or unstructured pruning of the model, saved as a checkpoint unit.
pub fn prune(a: &PruneArgs) -> Result<(), String> {
    if !(0.0..1.0).contains(&a.amount) {
        return Err(format!("--amount {} must be in [0, 1)", a.amount));
    }
    refuse_overwrite_of_another_kind(&a.out)?;
    let Opened { mut model, codec, format } = open(&a.model)?;
    // Pruning rewrites weights: they must be dense f32 (a loaded model's are inference-only).
    tt_tensor::nn::thaw(&model);
    let before = model.num_parameters();
    let e = |e: tt_compress::CompressError| e.to_string();
    match a.method {
        PruneMethod::Mlp => drop(tt_compress::structured::prune_gpt_mlp(&mut model, a.amount).map_err(e)?),
        PruneMethod::Heads => drop(tt_compress::structured::prune_gpt_heads(&mut model, a.amount).map_err(e)?),
        PruneMethod::Magnitude => {
            let names: Vec<String> = tt_tensor::nn::linears(&model).into_iter().map(|(n, _)| n).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut p = tt_compress::prune::Pruning::default();
            p.magnitude(&mut model, &names, a.amount).map_err(e)?;
            p.make_permanent(&mut model).map_err(e)?;
        }
    }
    tt_models::open::save(&mut model, codec.as_ref(), "f32-pruned", &a.out).map_err(|e| e.to_string())?;
    eprintln!(
        "{format} model pruned ({:?}, {:.0}%): {before} → {} parameters; saved to {}",
        a.method,
        100.0 * a.amount,
        model.num_parameters(),
        a.out.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value = "stored")]
    pub weights: Weights,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prefill: usize,
    /// Tokens decoded.
    #[arg(long, default_value_t = 128)]
    pub decode: usize,
    /// Sequences decoded side by side (decode tok/s counts every row's tokens).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
}

/// `tito bench`: prefill and decode rates of the cached decoder (`--threads`, `--batch` sequences
/// side by side, 1 by default) and the process's peak resident memory, as JSON on stdout.
pub fn bench(a: &BenchArgs) -> Result<(), String> {
    let Opened { mut model, format, .. } = open(&a.model)?;
    convert(&mut model, a.weights)?;
    let (v, max) = (model.config.vocab_size, model.config.max_seq_len);
    let prefill = a.prefill.clamp(1, max - 1);
    let decode = a.decode.min(max - prefill);
    if a.batch == 0 || a.batch > 256 {
        return Err(format!("--batch {} must be in 1..=256", a.batch));
    }
    let b = a.batch;
    let ids: Vec<usize> = (0..b * prefill).map(|i| (i * 7919 + 13) % v).collect();
    let mut engine = engine_of(&model, b, prefill + decode)?;
    let mut formats: Vec<&str> = engine.projection_formats().into_iter().map(|f| f.1).collect();
    formats.sort_unstable();
    formats.dedup();
    let t = Instant::now();
    engine.prefill(&ids, prefill).map_err(|e| e.to_string())?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut next: Vec<usize> = (0..b).map(|r| ids[r * prefill + prefill - 1]).collect();
    let t = Instant::now();
    for _ in 0..decode {
        let logits = engine.decode_step(&next).map_err(|e| e.to_string())?;
        for (r, n) in next.iter_mut().enumerate() {
            *n = tt_transformer::generate::argmax(&logits[r * v..(r + 1) * v]);
        }
    }
    let decode_s = t.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "model": a.model.model.as_ref().map_or("course GPT".into(), |p| p.display().to_string()),
        "format": format,
        "weights": name(a.weights),
        "projection_formats": formats,
        "parameters": model.num_parameters(),
        "batch": b,
        "prefill_tokens": prefill,
        "prefill_tok_s": (b * prefill) as f64 / prefill_s,
        "decode_tokens": decode,
        "decode_tok_s": (b * decode) as f64 / decode_s,
        "peak_rss_bytes": milestones::child::proc_status_bytes("VmHWM"),
        "level": tt_accel::level().name(),
        "int_level": tt_quant::IntLevel::current().name(),
        "threads": tt_accel::team::current().map_or(1, |t| t.size()),
        "team": tt_accel::team::current().map(|t| {
            let s = t.stats();
            serde_json::json!({"shared_jobs": s.shared_jobs, "caller_only_jobs": s.caller_only_jobs, "stalls": s.stalls,
                "chunks": s.chunks, "member_chunks": s.member_chunks})
        }),
    });
    println!("{}", serde_json::to_string_pretty(&summary).expect("JSON values serialize"));
    Ok(())
}

#[derive(Args, Debug)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value = "stored")]
    pub weights: Weights,
}

/// `tito profile`: parameters, FLOPs per token, memory, and one decode step's per-op table with
/// each op's roofline position (tt-profile).
pub fn profile(a: &ProfileArgs) -> Result<(), String> {
    let Opened { mut model, format, .. } = open(&a.model)?;
    convert(&mut model, a.weights)?;
    let c = &model.config;
    let positions = c.max_seq_len.min(256);
    let mut engine = engine(&model, positions)?;
    let ids: Vec<usize> = (0..positions / 2).map(|i| (i * 7919 + 13) % c.vocab_size).collect();
    engine.prefill(&ids, ids.len()).map_err(|e| e.to_string())?;
    let weight_bytes: usize = engine.projection_formats().iter().map(|f| f.2).sum();
    let (step, profile) = tt_profile::profiler::profile(|| engine.decode_step(&[ids[0]]).map(|_| ()));
    step.map_err(|e| e.to_string())?;
    println!("{format} model, {} weights", name(a.weights));
    println!(
        "parameters {}; FLOPs per token {} (one decode step at position {}); projections and head {:.1} MB; KV \
         cache {:.1} MB for {positions} positions",
        model.num_parameters(),
        profile.forward_flops(),
        ids.len(),
        weight_bytes as f64 / 1e6,
        engine.cache().memory_bytes() as f64 / 1e6
    );
    print!("{}", profile.table(tt_profile::profiler::SortBy::Time));
    // Each op's place under this machine's roofs (one core's FMA peak, STREAM triad bandwidth),
    // measured now: one decode step is memory-bound where its ops sit left of the ridge.
    let e = |x: tt_tensor::TensorError| x.to_string();
    let roof = tt_profile::roofline::Roofline {
        peak_gflops: tt_profile::roofline::peak_gflops(1, 4_000_000).map_err(e)?,
        bandwidth_gbs: tt_profile::roofline::stream_triad_gbs(1 << 24, 3).map_err(e)?,
    };
    println!(
        "roofline: peak {:.1} GFLOP/s (one core), bandwidth {:.1} GB/s (STREAM triad), ridge {:.1} FLOP/byte",
        roof.peak_gflops,
        roof.bandwidth_gbs,
        roof.ridge()
    );
    let mut ops: Vec<(&str, u64, u64, f64)> = Vec::new();
    for r in &profile.records {
        match ops.iter_mut().find(|o| o.0 == r.name) {
            Some(o) => (o.1, o.2, o.3) = (o.1 + r.flops, o.2 + r.bytes, o.3 + r.duration_us),
            None => ops.push((r.name, r.flops, r.bytes, r.duration_us)),
        }
    }
    println!("{:<14} {:>10} {:>12} {:>12} {:>10}", "op", "FLOP/byte", "GFLOP/s", "attainable", "bound");
    for (name, flops, bytes, us) in ops {
        let p = roof.place(flops, bytes, (us * 1e-6).max(1e-9)).map_err(e)?;
        println!(
            "{name:<14} {:>10.2} {:>12.2} {:>12.2} {:>10}",
            p.intensity, p.achieved_gflops, p.attainable_gflops, p.bound
        );
    }
    Ok(())
}
