//! Milestone `quantization` (module 17): every scheme side by side on the digits MLP, the digits
//! CNN and the GPT — quality measured on the quantized engine itself, real bytes, measured
//! latency — plus the int8 GEMM against tt-accel's f32 GEMM and the int8 decode against the f32
//! decode, all in one run.
//!
//! Schemes: `fp32`; `dynamic_per_tensor`, `dynamic_per_channel` and `dynamic_per_group64`
//! (symmetric int8 weights — one scale per matrix, per output, per 64 inputs of an output, as
//! llama2.c's Q8_0 — activations quantized per row at run time); `int4_g32` (symmetric 4-bit
//! weights, one f16 scale per 32 inputs as ggml's Q4_0, activations int8 per group); `static_minmax` and `static_histogram`
//! (per-channel weights, activation `(S, Z)` frozen from calibration on training data); and for
//! the GPT, dynamic per-channel weights with the int8 KV cache; `qat` (the fp32 model fine-tuned
//! through fake quantization — per-channel weights, calibrated min-max input ranges — then
//! converted to static int8).

use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tt_accel::fused;
use tt_accel::gemm::{gemm, Rung};
use tt_accel::packed::pack_linears;
use tt_kvcache::{generate_cached, CachedGpt, KvStorage, OverflowPolicy};
use tt_profile::roofline::{peak_gflops, MemoryLevels};
use tt_quant::kernels::{vnni_peak_gops, IntLevel, PackedI8};
use tt_quant::observer::{Histogram, MinMax, Observer};
use tt_quant::qat::{convert_qat, prepare_qat};
use tt_quant::{
    calibrate, quantize_dynamic, quantize_int4, quantize_layers, Activations, Granularity, Int8Linear, QuantizedLayer,
    Scheme, WeightConfig,
};
use tt_tensor::data::{digits, ClassificationData, DataLoader};
use tt_tensor::nn::Sequential;
use tt_tensor::projection::{Projection, Workspace};
use tt_tensor::{no_grad, Module, Tensor};
use tt_transformer::eval::{exact_match_with, next_token_loss};
use tt_transformer::generate::GenerateConfig;
use tt_transformer::{Gpt, Tokenize, TransformerError};

use crate::acceleration::{step_breakdown, time_per_call};
use crate::{classifier, cnn_digits, mlp_digits, transformer, MilestoneError, Options, Result};

pub const NAME: &str = "quantization";

const PROMPT: &str = "Q: what is 3 plus 4?\nA:";

const SCHEMES: [&str; 8] = [
    "fp32",
    "dynamic_per_tensor",
    "dynamic_per_channel",
    "dynamic_per_group64",
    "int4_g32",
    "static_minmax",
    "static_histogram",
    "qat",
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn other(e: impl std::fmt::Display) -> MilestoneError {
    MilestoneError::Other(e.to_string())
}

/// An observer for a static scheme.
fn observer(scheme: &str) -> Box<dyn Observer> {
    match scheme {
        // 2048 bins and 255 levels are valid arguments.
        "static_histogram" => Box::new(Histogram::new(2048, 255).expect("valid histogram settings")),
        _ => Box::new(MinMax::default()),
    }
}

/// Quantizes `m` by `scheme` (calibrating a static scheme with `run`; for QAT, calibrating, then
/// fine-tuning with `finetune` through fake quantization, then converting); the quantized layers.
fn apply(
    m: &mut dyn Module,
    scheme: &str,
    run: &mut dyn FnMut(&dyn Module) -> tt_quant::Result<()>,
    finetune: &mut dyn FnMut(&mut dyn Module) -> Result<()>,
) -> Result<Vec<QuantizedLayer>> {
    Ok(match scheme {
        "fp32" => Vec::new(),
        "dynamic_per_tensor" => quantize_dynamic(m, WeightConfig::PER_TENSOR)?,
        "dynamic_per_channel" => quantize_dynamic(m, WeightConfig::PER_CHANNEL)?,
        "dynamic_per_group64" => {
            quantize_dynamic(m, WeightConfig { scheme: Scheme::Symmetric, granularity: Granularity::PerGroup(64) })?
        }
        "int4_g32" => quantize_int4(m, 32)?,
        "qat" => {
            let cal = calibrate(m, &|| observer("static_minmax"), run).map_err(other)?;
            prepare_qat(m, WeightConfig::PER_CHANNEL, &cal).map_err(other)?;
            finetune(m)?;
            convert_qat(m, WeightConfig::PER_CHANNEL, &cal).map_err(other)?
        }
        _ => {
            let cal = calibrate(m, &|| observer(scheme), run).map_err(other)?;
            quantize_layers(m, WeightConfig::PER_CHANNEL, &mut |name| Ok(Activations::Static(cal.qparams(name)?)))?
        }
    })
}

/// Weight bytes and whole-model bytes: quantized layers as stored, everything else in f32. For
/// fp32 the weights are those of the same layers a quantizer replaces (every Linear and Conv2d).
fn bytes(m: &mut dyn Module, layers: &[QuantizedLayer]) -> Result<(usize, usize)> {
    let all = 4 * m.num_parameters();
    if layers.is_empty() {
        let mut w = 0;
        tt_tensor::nn::map_linears(m, |_, l| {
            w += 4 * l.in_features() * l.out_features();
            Ok(())
        })?;
        tt_tensor::nn::map_conv2ds(m, |_, c| {
            w += 4 * c.matrix_shape().0 * c.matrix_shape().1;
            Ok(())
        })?;
        return Ok((w, all));
    }
    let q: usize = layers.iter().map(|l| l.weight_bytes).sum();
    let f32_equiv: usize = layers.iter().map(|l| 4 * l.shape.0 * l.shape.1).sum();
    Ok((q, all - f32_equiv + q))
}

fn accuracy(model: &dyn Module, data: &ClassificationData) -> Result<f32> {
    classifier::accuracy(model, data)
}

/// The digits MLP or CNN under every scheme.
fn classifier_rows(opts: &Options, name: &str) -> Result<Vec<Value>> {
    let (train, test) = digits::standard_split()?;
    let (train, test) = if name == "cnn" {
        (train.with_sample_shape(vec![1, 8, 8])?, test.with_sample_shape(vec![1, 8, 8])?)
    } else {
        (train, test)
    };
    let quiet = Options { quiet: true, ..opts.clone() };
    let load = || -> Result<Sequential> {
        Ok(if name == "cnn" { cnn_digits::load_or_train(&quiet)?.0 } else { mlp_digits::load_or_train(&quiet)?.0 })
    };
    // Calibration: the first 512 training samples (the test set is never seen before scoring).
    let calib: Vec<Tensor> = DataLoader::new(&train, 256, false, 0)?.epoch(0).take(2).map(|b| b.x).collect();
    // Latency: one batch of 256 test samples.
    let batch =
        DataLoader::new(&test, 256, false, 0)?.epoch(0).next().map(|b| b.x).ok_or_else(|| other("empty test set"))?;
    let samples = if opts.quick { 3 } else { 9 };
    let qat_epochs = if opts.quick { 1 } else { 3 };
    let mut rows = Vec::new();
    for scheme in SCHEMES {
        let mut m = load()?;
        let layers = apply(
            &mut m,
            scheme,
            &mut |m| {
                for x in &calib {
                    m.forward(x)?;
                }
                Ok(())
            },
            &mut |m| {
                // QAT fine-tuning: a few epochs at a tenth of the training learning rate.
                let cfg = classifier::TrainConfig {
                    epochs: qat_epochs,
                    batch_size: 32,
                    lr: 2e-4,
                    weight_decay: 1e-4,
                    seed: 0,
                };
                classifier::train(m, &train, &test, &cfg, &quiet)?;
                Ok(())
            },
        )?;
        let quality = accuracy(&m, &test)?;
        let (weight_bytes, model_bytes) = bytes(&mut m, &layers)?;
        let us = 1e6 * time_per_call(samples, || drop(no_grad(|| m.forward(&batch)))) / batch.shape()[0] as f64;
        rows.push(json!({
            "model": name, "scheme": scheme, "metric": "test_accuracy", "quality": quality,
            "weight_bytes": weight_bytes, "model_bytes": model_bytes,
            "latency": us, "latency_unit": "us_per_sample_batch256",
            "formats": layers.iter().map(|l| l.format).collect::<Vec<_>>(),
            "qat_finetune": if scheme == "qat" { json!({"epochs": qat_epochs, "lr": 2e-4, "batch_size": 32}) } else { Value::Null },
        }));
    }
    Ok(rows)
}

/// The digits MLP run fully in integers (`tt_quant::requant::IntegerLinear`): u8 pixels in, each
/// layer's u8 codes out, no float at run time. Activation ranges come from the 512 calibration
/// samples; the hidden layer's range starts at 0, so clamping to its zero point is the ReLU.
/// The class is the largest output code (the u8 map is monotone). Reports the accuracy and how
/// often the integer layers' codes equal the float formula's (`float_reference`).
fn integer_mlp(opts: &Options) -> Result<Value> {
    use tt_quant::requant::IntegerLinear;
    use tt_quant::{Granularity, QParams, QRange, QuantizedMatrix, Scheme};
    let (train, test) = digits::standard_split()?;
    let m = mlp_digits::load_or_train(&Options { quiet: true, ..opts.clone() })?.0;
    let linear = |i: usize| m.layers[i].as_linear().ok_or_else(|| other(format!("layer {i} of the MLP is a Linear")));
    let (l1, l2) = (linear(0)?, linear(2)?);
    let calib = DataLoader::new(&train, 512, false, 0)?.epoch(0).next().map(|b| b.x).ok_or_else(|| other("no data"))?;
    let range = |t: &Tensor| {
        let v = t.to_vec();
        (v.iter().copied().fold(0.0f32, f32::min), v.iter().copied().fold(0.0f32, f32::max))
    };
    let hidden = no_grad(|| m.layers[1].forward(&l1.forward(&calib)?))?;
    let logits = no_grad(|| m.forward(&calib))?;
    let u8_params = |(lo, hi): (f32, f32)| QParams::from_range(lo, hi, Scheme::Affine, QRange::U8).map_err(other);
    let (p_in, p_hidden, p_out) = (u8_params(range(&calib))?, u8_params(range(&hidden))?, u8_params(range(&logits))?);
    let layer = |l: &tt_tensor::nn::Linear, input: QParams, output: QParams| -> Result<IntegerLinear> {
        let w = l.projection()?.to_dense();
        let q = QuantizedMatrix::quantize(&w, Scheme::Symmetric, Granularity::PerChannel).map_err(other)?;
        let bias = l.bias.as_ref().map(|b| b.to_vec());
        IntegerLinear::new(&q, bias.as_deref(), input, output).map_err(other)
    };
    let (i1, i2) = (layer(l1, p_in, p_hidden)?, layer(l2, p_hidden, p_out)?);
    let x = DataLoader::new(&test, test.labels().len(), false, 0)?
        .epoch(0)
        .next()
        .ok_or_else(|| other("empty test set"))?;
    let rows = x.y.len();
    let a: Vec<u8> = x.x.to_vec().iter().map(|&v| p_in.quantize(v, QRange::U8) as u8).collect();
    let (mut h, mut out) = (vec![0u8; rows * 128], vec![0u8; rows * 10]);
    i1.forward(&a, rows, &mut h).map_err(other)?;
    i2.forward(&h, rows, &mut out).map_err(other)?;
    let correct = out
        .chunks_exact(10)
        .zip(&x.y)
        .filter(|(codes, &y)| {
            codes.iter().enumerate().max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i))).map(|(i, _)| i) == Some(y)
        })
        .count();
    // Agreement with the float formula, layer by layer on the same integer inputs.
    let (want_h, want_out) =
        (i1.float_reference(&a, rows).map_err(other)?, i2.float_reference(&h, rows).map_err(other)?);
    let pairs: Vec<(u8, u8)> = h.iter().zip(&want_h).chain(out.iter().zip(&want_out)).map(|(&g, &w)| (g, w)).collect();
    let equal = pairs.iter().filter(|(g, w)| g == w).count() as f64 / pairs.len() as f64;
    let max_diff = pairs.iter().map(|(g, w)| g.abs_diff(*w)).max().unwrap_or(0);
    Ok(json!({
        "model": "mlp", "scheme": "integer_only", "metric": "test_accuracy", "quality": correct as f64 / rows as f64,
        "codes_equal_float_reference": equal, "max_code_difference": max_diff, "samples": rows,
        "integer_level": IntLevel::current().name(),
    }))
}

fn engine(m: &Gpt) -> std::result::Result<CachedGpt, TransformerError> {
    engine_with(m, KvStorage::F32)
}

fn engine_with(m: &Gpt, kv: KvStorage) -> std::result::Result<CachedGpt, TransformerError> {
    let err = |e: tt_kvcache::KvError| TransformerError::Config(e.to_string());
    let mut e = CachedGpt::new(m, 1, OverflowPolicy::Error).map_err(err)?;
    e.set_row_kernels(fused::row_kernels());
    e.set_kv_storage(kv).map_err(err)?;
    Ok(e)
}

/// The trained GPT under every scheme: exact match and validation perplexity scored by the
/// quantized decoder itself, and greedy decode tok/s at `tokens` (all engines in one run,
/// interleaved). fp32 is tt-accel's packed f32 decoder (the fastest f32 engine here); every
/// engine uses the same fused row kernels, so only the weight format differs.
fn gpt_rows(opts: &Options, mem: &MemoryLevels) -> Result<(Vec<Value>, Value)> {
    let quiet = Options { quiet: true, corpus: None, ..opts.clone() };
    let transformer::QaEval { tokenizer, test, val_ids, train_text, data: qat_data } = transformer::qa_eval(opts)?;
    let calib_ids = tokenizer.encode_ids(&train_text[..train_text.len().min(8192)])?;
    let prompt = tokenizer.encode_ids(PROMPT)?;
    let windows = if opts.quick { 8 } else { 48 };
    // QAT fine-tuning: short, at a twentieth of the training peak learning rate.
    let qat_cfg = tt_transformer::train::TrainConfig {
        steps: if opts.quick { 4 } else { 150 },
        lr: 3e-4,
        min_lr: 1e-4,
        warmup_steps: if opts.quick { 1 } else { 10 },
        eval_every: if opts.quick { 4 } else { 150 },
        eval_windows: 8,
        long_every: 0,
        ..transformer::train_config(opts.quick)
    };
    let mut models = Vec::new();
    let mut rows = Vec::new();
    for scheme in SCHEMES {
        let (mut m, _, _, _) = transformer::load_or_train(&quiet)?;
        let mut calib_run = |md: &dyn Module| -> tt_quant::Result<()> {
            // Four 128-token windows of training text through the tensor model.
            for w in calib_ids.chunks(128).take(4).filter(|w| w.len() == 128) {
                let x = Tensor::from_vec(w.iter().map(|&i| i as f32).collect(), &[1, 128])?;
                md.forward(&x)?;
            }
            Ok(())
        };
        let layers = if scheme == "qat" {
            // `apply`'s QAT path with the GPT's own training loop (it needs the `Gpt`, not a
            // `dyn Module`): calibrate, fine-tune through fake quantization, convert.
            let cal = calibrate(&mut m, &|| observer("static_minmax"), &mut calib_run).map_err(other)?;
            prepare_qat(&mut m, WeightConfig::PER_CHANNEL, &cal).map_err(other)?;
            tt_transformer::train::train(&m, &qat_data, &val_ids, &qat_cfg, false, |_| {})?;
            convert_qat(&mut m, WeightConfig::PER_CHANNEL, &cal).map_err(other)?
        } else {
            apply(&mut m, scheme, &mut calib_run, &mut |_| Ok(()))?
        };
        if scheme == "fp32" {
            pack_linears(&mut m)?;
        }
        let start = Instant::now();
        let (em, _) = exact_match_with(|| engine(&m), &tokenizer, &test, 48, 2)?;
        let ppl = next_token_loss(&mut engine(&m)?, &val_ids, 128, windows)?.exp();
        let (weight_bytes, model_bytes) = bytes(&mut m, &layers)?;
        opts.say(format!(
            "  gpt {scheme:<20} exact match {:5.1}%  val ppl {ppl:.3}  weights {weight_bytes:>9} B  ({:.1} s)",
            100.0 * em,
            start.elapsed().as_secs_f64()
        ));
        rows.push(json!({
            "model": "gpt", "scheme": scheme, "metric": "test_exact_match", "quality": em,
            "val_perplexity": ppl, "weight_bytes": weight_bytes, "model_bytes": model_bytes,
            "formats": layers.iter().map(|l| l.format).collect::<Vec<_>>(),
            "qat_finetune": if scheme == "qat" { json!({"steps": qat_cfg.steps, "lr": qat_cfg.lr, "batch_size": qat_cfg.batch_size, "seq_len": qat_cfg.seq_len}) } else { Value::Null },
        }));
        models.push(m);
    }
    // QAT's control: the fp32 model fine-tuned with the same steps and seed, no fake quantization —
    // what the extra training alone is worth, so QAT's own effect can be read off.
    let (control, _, _, _) = transformer::load_or_train(&quiet)?;
    tt_transformer::train::train(&control, &qat_data, &val_ids, &qat_cfg, false, |_| {})?;
    let (control_em, _) = exact_match_with(|| engine(&control), &tokenizer, &test, 48, 2)?;
    let control_ppl = next_token_loss(&mut engine(&control)?, &val_ids, 128, windows)?.exp();
    opts.say(format!(
        "  gpt {:<20} exact match {:5.1}%  val ppl {control_ppl:.3}  (QAT's control: fp32 fine-tuned with the same {} steps)",
        "fp32 + fine-tune",
        100.0 * control_em,
        qat_cfg.steps
    ));
    let qat_i = SCHEMES.iter().position(|&s| s == "qat").ok_or_else(|| other("no qat row"))?;
    rows[qat_i]["control_fp32_finetuned"] = json!({"quality": control_em, "val_perplexity": control_ppl});
    // The int8 KV cache (q8 rows) on top of the int8 weights of PyTorch's default weight scheme.
    // PyTorch's default weight scheme, found by name (not by its place in the list).
    let best =
        SCHEMES.iter().position(|&s| s == "dynamic_per_channel").ok_or_else(|| other("no dynamic_per_channel row"))?;
    let start = Instant::now();
    let (kv_em, _) = exact_match_with(|| engine_with(&models[best], KvStorage::Int8), &tokenizer, &test, 48, 2)?;
    let kv_ppl = next_token_loss(&mut engine_with(&models[best], KvStorage::Int8)?, &val_ids, 128, windows)?.exp();
    opts.say(format!(
        "  gpt {:<20} exact match {:5.1}%  val ppl {kv_ppl:.3}  with the int8 KV cache  ({:.1} s)",
        SCHEMES[best],
        100.0 * kv_em,
        start.elapsed().as_secs_f64()
    ));
    // Decode speed: every engine, greedy, interleaved, median of `repeats`.
    let tokens = if opts.quick { 64 } else { 512 };
    let tokens = tokens.min(models[0].config.max_seq_len - prompt.len());
    let mut engines = models.iter().map(engine).collect::<std::result::Result<Vec<_>, _>>()?;
    engines.push(engine_with(&models[best], KvStorage::Int8)?);
    let cfg = GenerateConfig::greedy(tokens);
    let repeats = if opts.quick { 1 } else { 3 };
    let mut tps = vec![Vec::new(); engines.len()];
    let mut texts = vec![Vec::new(); engines.len()];
    for _ in 0..repeats {
        for (i, e) in engines.iter_mut().enumerate() {
            let t = generate_cached(e, std::slice::from_ref(&prompt), &cfg)?;
            tps[i].push(t.tokens_per_second(1));
            texts[i] = t.tokens;
        }
    }
    let tps: Vec<f64> = tps.into_iter().map(median).collect();
    opts.say(format!(
        "\n  decode, greedy {tokens} tokens after a {}-token prompt, batch 1, one thread (median of {repeats}):",
        prompt.len()
    ));
    let mut bound = Vec::new();
    for (i, e) in engines.iter().enumerate() {
        let weights: usize = e.projection_formats().iter().map(|f| f.2).sum();
        let s = e.cache().shape();
        let kv = 2 * s.layers * s.heads * e.cache().row_bytes() * (prompt.len() + tokens / 2);
        let (level, roof) = mem.decode_bound_tok_s(weights + kv);
        // The level rule counts a working set as cache-resident only up to half the cache; a
        // set between half and all of L2 runs partly from L2, so both bounds are shown.
        let l2_roof = mem.l2_read_gbs * 1e9 / (weights + kv) as f64;
        let name = if i < SCHEMES.len() { SCHEMES[i].to_string() } else { format!("{} + int8 KV", SCHEMES[best]) };
        opts.say(format!(
            "  {name:<32} {:>8.0} tok/s ({:.2}x fp32)  {} B read per token ({weights} weights + {kv} KV) → {level} bound {roof:.0} tok/s ({:.0}%; L2 bound {l2_roof:.0})",
            tps[i],
            tps[i] / tps[0],
            weights + kv,
            100.0 * tps[i] / roof
        ));
        bound.push((level, roof, l2_roof, weights, kv));
    }
    for (i, row) in rows.iter_mut().enumerate() {
        row["latency"] = json!(tps[i]);
        row["latency_unit"] = json!("decode_tok_s");
        row["same_tokens_as_fp32"] = json!(texts[i] == texts[0]);
        row["roofline_level"] = json!(bound[i].0);
        row["roofline_tok_s"] = json!(bound[i].1);
        row["l2_bound_tok_s"] = json!(bound[i].2);
        row["weight_bytes_read_per_token"] = json!(bound[i].3);
        row["kv_bytes_read_per_token"] = json!(bound[i].4);
    }
    let kv_i = engines.len() - 1;
    let breakdown = step_breakdown(opts, &mut engines[kv_i], &prompt, tokens / 2, "int8 weights + int8 KV")?;
    let decode = json!({
        "tokens": tokens,
        "fp32_tok_s": tps[0],
        "int8_tok_s": tps[best],
        "int8_scheme": SCHEMES[best],
        "speedup": tps[best] / tps[0],
        "fp32_exact_match": rows[0]["quality"],
        "int8_exact_match": rows[best]["quality"],
        "int8_kv_tok_s": tps[kv_i],
        "int8_kv_speedup": tps[kv_i] / tps[0],
        "int8_kv_exact_match": kv_em,
        "int8_kv_val_perplexity": kv_ppl,
        "int8_kv_roofline_level": bound[kv_i].0,
        "int8_kv_roofline_tok_s": bound[kv_i].1,
        "int8_kv_l2_bound_tok_s": bound[kv_i].2,
        "int8_kv_weight_bytes_read_per_token": bound[kv_i].3,
        "int8_kv_kv_bytes_read_per_token": bound[kv_i].4,
        "int8_kv_step_breakdown": breakdown,
        "breakdown_position": prompt.len() + tokens / 2,
        "prompt_tokens": prompt.len(),
        "repeats": repeats,
    });
    Ok((rows, decode))
}

/// int8 GEMM (`PackedI8`, u8 activations ready) and the whole int8 projection (quantizing 512
/// rows, the product, the epilogue) against tt-accel's packed f32 GEMM, n = 512.
fn gemm_row(opts: &Options) -> Result<Value> {
    let n = 512;
    let samples = if opts.quick { 3 } else { 9 };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let a: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let b: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut c = vec![0.0f32; n * n];
    let level = tt_accel::level();
    let f32_s = time_per_call(samples, || {
        // Sizes are consistent by construction.
        let _ = gemm(Rung::PackedSimd, level, 1, &a, n, &b, n, &mut c, n, n, n, n);
    });
    let codes: Vec<i8> = (0..n * n).map(|_| rng.random::<i8>()).collect();
    let au8: Vec<u8> = (0..n * n).map(|_| rng.random::<u8>()).collect();
    let packed = PackedI8::new(&codes, n, n).map_err(other)?;
    let mut acc = vec![0i32; n * packed.acc_cols()];
    let il = IntLevel::current();
    let i8_s = time_per_call(samples, || {
        let _ = packed.matmul(il, &au8, n, &mut acc);
    });
    let w = ndarray::Array2::from_shape_vec((n, n), b.clone()).map_err(other)?;
    let proj = Int8Linear::new(&w, WeightConfig::PER_CHANNEL, Activations::Dynamic).map_err(other)?;
    let mut ws = Workspace::default();
    ws.ensure(proj.workspace_len(n));
    let proj_s = time_per_call(samples, || proj.forward_rows(&a, n, None, &mut c, ws.bytes()));
    let ops = 2.0 * (n * n * n) as f64;
    let (f32_gflops, int8_gops, proj_gops) = (ops / f32_s / 1e9, ops / i8_s / 1e9, ops / proj_s / 1e9);
    let vnni_peak = vnni_peak_gops(if opts.quick { 2_000_000 } else { 20_000_000 });
    opts.say(format!(
        "GEMM n = {n}: f32 packed_simd {f32_gflops:.1} GFLOP/s; int8 ({il}) {int8_gops:.1} GOP/s = {:.2}x{}; whole int8 projection (quantize 512 rows + product + epilogue) {proj_gops:.1} GOP/s = {:.2}x",
        int8_gops / f32_gflops,
        vnni_peak.map_or(String::new(), |p| format!(" ({:.0}% of the measured VNNI peak {p:.0} GOP/s)", 100.0 * int8_gops / p)),
        proj_gops / f32_gflops
    ));
    Ok(json!({
        "n": n, "int8_gops": int8_gops, "f32_gflops": f32_gflops, "speedup": int8_gops / f32_gflops,
        "int8_projection_gops": proj_gops, "projection_speedup": proj_gops / f32_gflops,
        "int8_level": il.name(), "vnni_peak_gops": vnni_peak,
    }))
}

/// Accuracy against bytes for every model and scheme, as an SVG.
fn chart(path: &std::path::Path, rows: &[Value]) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| crate::chart::err(path, e);
    let root = crate::chart::canvas(path, (760, 460))?;
    let max_kb = rows.iter().filter_map(|r| r["weight_bytes"].as_f64()).fold(1.0, f64::max) / 1024.0;
    // Start the quality axis a little below the worst point, so the schemes' differences show.
    let worst = rows.iter().filter_map(|r| r["quality"].as_f64()).fold(1.0, f64::min);
    let y_lo = ((worst - 0.05) * 20.0).floor().max(0.0) / 20.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("quality vs weight bytes (each model: fp32 and int8 schemes)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d((1f64..max_kb * 1.5).log_scale(), y_lo..1.0)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("weight bytes (KiB, log)")
        .y_desc("accuracy / exact match")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (model, color) in [("mlp", RED), ("cnn", BLUE), ("gpt", GREEN)] {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r["model"] == model)
            .filter_map(|r| Some((r["weight_bytes"].as_f64()? / 1024.0, r["quality"].as_f64()?)))
            .collect();
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(e.to_string()))?
            .label(model)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    crate::chart::legend(path, &mut chart, SeriesLabelPosition::LowerLeft)?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

pub fn run(opts: &Options) -> Result<Value> {
    let peak = peak_gflops(1, if opts.quick { 200_000 } else { 4_000_000 })?;
    let mem = MemoryLevels::measure(opts.quick)?;
    opts.say(format!(
        "machine (measured now, 1 core): f32 FMA peak {peak:.1} GFLOP/s; read bandwidth L2 {:.0}, L3 {:.0} GB/s; integer kernels at {}",
        mem.l2_read_gbs,
        mem.l3_read_gbs,
        IntLevel::current()
    ));
    let gemm = gemm_row(opts)?;
    let mut rows = Vec::new();
    for name in ["mlp", "cnn"] {
        let r = classifier_rows(opts, name)?;
        opts.say(format!("\n{name} (held-out UCI digits accuracy; latency µs per sample at batch 256):"));
        for row in &r {
            opts.say(format!(
                "  {:<20} accuracy {:6.2}%  weights {:>7} B  model {:>7} B  {:>6.2} µs/sample",
                row["scheme"].as_str().unwrap_or(""),
                100.0 * row["quality"].as_f64().unwrap_or(0.0),
                row["weight_bytes"],
                row["model_bytes"],
                row["latency"].as_f64().unwrap_or(0.0)
            ));
        }
        rows.extend(r);
    }
    let integer = integer_mlp(opts)?;
    opts.say(format!(
        "  {:<20} accuracy {:6.2}%  (u8 in, u8 out, no float at run time; {:.2}% of its output codes equal the float reference's, none more than {} code off)",
        "integer-only",
        100.0 * integer["quality"].as_f64().unwrap_or(0.0),
        100.0 * integer["codes_equal_float_reference"].as_f64().unwrap_or(0.0),
        integer["max_code_difference"]
    ));
    opts.say("\ngpt (exact match on unseen questions and validation perplexity, scored by each quantized decoder):");
    let (gpt, decode) = gpt_rows(opts, &mem)?;
    rows.extend(gpt);
    opts.say("\n  stays f32 in every int8 model: biases, layer norms, embeddings (the GPT's tied output head), attention and softmax");
    let path = opts.cache_dir.join(NAME).join("quality_vs_bytes.svg");
    chart(&path, &rows)?;
    opts.say(format!("chart: {}", path.display()));
    Ok(json!({
        "milestone": NAME,
        "machine": {"peak_gflops_1core": peak, "l2_read_gbs": mem.l2_read_gbs, "l3_read_gbs": mem.l3_read_gbs},
        "gemm": gemm,
        "integer_mlp": integer,
        "models": rows,
        "decode": decode,
        "chart": path,
    }))
}
