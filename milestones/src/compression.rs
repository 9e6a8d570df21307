//! Milestone `compression` (module 18): the digits MLP and CNN pruned unstructured (with and
//! without fine-tuning), the MLP's hidden units and the CNN's channels removed (params, bytes,
//! accuracy, latency), CSR and the 16×1 block-sparse format against dense GEMV across densities
//! (unstructured and block-pruned masks, both GPT MLP shapes) with the measured crossovers,
//! low-rank layers at several ranks, and distillation of the CNN into a small MLP against the
//! same MLP trained alone; the GPT's MLP units and heads pruned, factored and distilled. Every
//! accuracy is on held-out data; every time measured in this run.
//!
//! The GPT: its MLP units and its attention heads removed (25%, 50%, against a fine-tuned
//! control), global unstructured pruning, low-rank layers and distillation into a smaller GPT.

use serde_json::{json, Value};
use tt_accel::packed::PackedF32;
use tt_compress::csr::CsrF32;
use tt_compress::distill::Distillation;
use tt_compress::lowrank::LowRank;
use tt_compress::prune::{amount_for, cubic_schedule, Pruning};
use tt_compress::{sparsity, structured};
use tt_tensor::data::{digits, ClassificationData, DataLoader};
use tt_tensor::loss::cross_entropy;
use tt_tensor::nn::{Linear, Relu, Sequential};
use tt_tensor::projection::Projection;
use tt_tensor::{no_grad, Module, Tensor};

use crate::acceleration::time_per_call;
use crate::classifier::{self, TrainConfig};
use crate::{cnn_digits, mlp_digits, MilestoneError, Options, Result};

pub const NAME: &str = "compression";

const SPARSITIES: [f64; 5] = [0.5, 0.7, 0.8, 0.9, 0.95];

fn other(e: impl std::fmt::Display) -> MilestoneError {
    MilestoneError::Other(e.to_string())
}

fn data(cnn: bool) -> Result<(ClassificationData, ClassificationData)> {
    let (train, test) = digits::standard_split()?;
    Ok(if cnn {
        (train.with_sample_shape(vec![1, 8, 8])?, test.with_sample_shape(vec![1, 8, 8])?)
    } else {
        (train, test)
    })
}

fn load(name: &str, opts: &Options) -> Result<Sequential> {
    let quiet = Options { quiet: true, ..opts.clone() };
    Ok(if name == "cnn" { cnn_digits::load_or_train(&quiet)?.0 } else { mlp_digits::load_or_train(&quiet)?.0 })
}

fn layer_names(m: &mut dyn Module) -> Result<Vec<String>> {
    Ok(sparsity::weights(m).map_err(other)?.into_iter().map(|(n, _)| n).collect())
}

/// Prunes `m` to `sparsity` on the cubic schedule over `epochs` one-epoch fine-tuning runs:
/// before each epoch `prune` removes what the schedule asks of the still-unpruned weights, and
/// the masks are re-applied after every optimizer step. Returns the pruning (masks still on).
fn prune_gradually(
    m: &mut Sequential,
    sparsity_target: f64,
    epochs: usize,
    train: &ClassificationData,
    test: &ClassificationData,
    quiet: &Options,
    prune: &dyn Fn(&mut Pruning, &mut Sequential, f64) -> Result<()>,
) -> Result<Pruning> {
    let mut p = Pruning::default();
    let cfg = TrainConfig { epochs: 1, batch_size: 32, lr: 1e-3, weight_decay: 1e-4, seed: 0 };
    for e in 1..=epochs {
        let target = cubic_schedule(0.0, sparsity_target, e, epochs).map_err(other)?;
        let now = sparsity::model(m).map_err(other)?;
        prune(&mut p, m, amount_for(now, target).map_err(other)?)?;
        let ce = |logits: &Tensor, batch: &tt_tensor::data::Batch| Ok(cross_entropy(logits, &batch.y)?);
        classifier::train_with(
            m,
            train,
            test,
            &TrainConfig { seed: e as u64, ..cfg.clone() },
            quiet,
            &ce,
            &mut |_| {
                p.reapply();
                Ok(())
            },
        )?;
    }
    Ok(p)
}

/// One-shot global magnitude pruning to each sparsity, then the same target reached by the cubic
/// schedule over fine-tuning epochs (masks re-applied after every step).
fn unstructured(opts: &Options, name: &str) -> Result<Vec<Value>> {
    let (train, test) = data(name == "cnn")?;
    let quiet = Options { quiet: true, ..opts.clone() };
    let epochs = if opts.quick { 1 } else { 6 };
    let mut rows = Vec::new();
    for &s in &SPARSITIES {
        // One shot, no fine-tuning.
        let mut m = load(name, opts)?;
        let names = layer_names(&mut m)?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut p = Pruning::default();
        p.global_magnitude(&mut m, &refs, s).map_err(other)?;
        let measured = sparsity::model(&mut m).map_err(other)?;
        let q = classifier::accuracy(&m, &test)?;
        rows.push(json!({"model": name, "sparsity": measured, "finetuned": false, "quality": q}));
        // Gradual: the cubic schedule over the fine-tuning epochs, pruning once per epoch.
        let mut m = load(name, opts)?;
        let global =
            |p: &mut Pruning, m: &mut Sequential, amount: f64| p.global_magnitude(m, &refs, amount).map_err(other);
        prune_gradually(&mut m, s, epochs, &train, &test, &quiet, &global)?;
        let measured = sparsity::model(&mut m).map_err(other)?;
        let q = classifier::accuracy(&m, &test)?;
        rows.push(
            json!({"model": name, "sparsity": measured, "finetuned": true, "quality": q, "finetune_epochs": epochs}),
        );
        opts.say(format!(
            "  {name} sparsity {:>4.0}%: accuracy {:6.2}% one-shot, {:6.2}% pruned gradually over {epochs} fine-tuning epochs",
            100.0 * measured,
            100.0 * rows[rows.len() - 2]["quality"].as_f64().unwrap_or(0.0),
            100.0 * q
        ));
    }
    Ok(rows)
}

/// Block pruning of the digits MLP (16×1 blocks by L2 norm, every layer to the same block
/// sparsity), one shot and gradually over the same fine-tuning epochs as the unstructured rows;
/// the gradual model is then scored again with every layer running as a `BlockSparseF32`
/// projection — the format the block kernel speeds up — which must give the same accuracy.
fn block_pruned(opts: &Options) -> Result<Vec<Value>> {
    let (train, test) = data(false)?;
    let quiet = Options { quiet: true, ..opts.clone() };
    let epochs = if opts.quick { 1 } else { 6 };
    let sparsities: &[f64] = if opts.quick { &[0.5] } else { &[0.5, 0.7, 0.8, 0.9] };
    let mut rows = Vec::new();
    for &s in sparsities {
        let mut m = load("mlp", opts)?;
        let names = layer_names(&mut m)?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut p = Pruning::default();
        p.block_magnitude(&mut m, &refs, s).map_err(other)?;
        let one_shot = classifier::accuracy(&m, &test)?;
        let mut m = load("mlp", opts)?;
        let blocks =
            |p: &mut Pruning, m: &mut Sequential, amount: f64| p.block_magnitude(m, &refs, amount).map_err(other);
        let p = prune_gradually(&mut m, s, epochs, &train, &test, &quiet, &blocks)?;
        p.make_permanent(&mut m).map_err(other)?;
        let measured = sparsity::model(&mut m).map_err(other)?;
        let q = classifier::accuracy(&m, &test)?;
        let mut stored = Vec::new();
        tt_tensor::nn::map_linears(&mut m, |_, l| {
            let bs = tt_compress::blocksparse::BlockSparseF32::from_dense(&l.projection()?.to_dense())?;
            stored.push(bs.block_density());
            l.set_projection(std::sync::Arc::new(bs))
        })?;
        let q_block = classifier::accuracy(&m, &test)?;
        opts.say(format!(
            "  mlp block-pruned to {:>4.1}% zeros: accuracy {:6.2}% one-shot, {:6.2}% pruned gradually over {epochs} epochs ({:6.2}% run as block16; blocks stored {})",
            100.0 * measured,
            100.0 * one_shot,
            100.0 * q,
            100.0 * q_block,
            stored.iter().map(|d| format!("{:.0}%", 100.0 * d)).collect::<Vec<_>>().join(" / ")
        ));
        rows.push(json!({"model": "mlp", "sparsity": measured, "one_shot": one_shot, "quality": q, "quality_block16": q_block, "block_density_per_layer": stored, "finetune_epochs": epochs}));
    }
    Ok(rows)
}

/// Bytes of a model's parameters as stored (every tt-tensor parameter is f32).
fn param_bytes(m: &dyn Module) -> usize {
    m.named_parameters().iter().map(|(_, t)| 4 * t.numel()).sum()
}

/// Structured pruning of a digits model, 25% and 50%, fine-tuned 3 epochs: the MLP's hidden
/// layer loses that share of its units; the CNN's two convolutions that share of their output
/// channels each (the first conv's filters and the second's input channels, then the second's
/// filters and the Linear's flattened columns). Latency of a batch-256 forward against the
/// unpruned model, interleaved in this run.
fn structured_rows(opts: &Options, name: &str) -> Result<Vec<Value>> {
    let cnn = name == "cnn";
    let (train, test) = data(cnn)?;
    let quiet = Options { quiet: true, ..opts.clone() };
    let batch =
        DataLoader::new(&test, 256, false, 0)?.epoch(0).next().map(|b| b.x).ok_or_else(|| other("empty test set"))?;
    let samples = if opts.quick { 3 } else { 9 };
    let base = load(name, opts)?;
    let base_us = 1e6 * time_per_call(samples, || drop(no_grad(|| base.forward(&batch))));
    let unit = if cnn { "channels" } else { "hidden units" };
    let mut rows = vec![
        json!({"model": name, "unit": unit, "ratio": 0.0, "params": base.num_parameters(), "bytes": param_bytes(&base), "quality": classifier::accuracy(&base, &test)?, "latency_speedup": 1.0, "latency_us": base_us}),
    ];
    for ratio in [0.25, 0.5] {
        let mut m = load(name, opts)?;
        let widths = if cnn {
            let a = structured::prune_conv_channels(&mut m, 0, 3, ratio).map_err(other)?;
            let b = structured::prune_conv_channels(&mut m, 3, 7, ratio).map_err(other)?;
            vec![a.len(), b.len()]
        } else {
            vec![structured::prune_hidden_units(&mut m, 0, 2, ratio).map_err(other)?.len()]
        };
        let before = classifier::accuracy(&m, &test)?;
        let cfg = TrainConfig {
            epochs: if opts.quick { 1 } else { 3 },
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 1e-4,
            seed: 0,
        };
        classifier::train(&mut m, &train, &test, &cfg, &quiet)?;
        let q = classifier::accuracy(&m, &test)?;
        let us = 1e6 * time_per_call(samples, || drop(no_grad(|| m.forward(&batch))));
        // The baseline again, so drift between the two timings shows in the ratio's spread.
        let base_again = 1e6 * time_per_call(samples, || drop(no_grad(|| base.forward(&batch))));
        let speedup = 0.5 * (base_us + base_again) / us;
        opts.say(format!(
            "  {name} {unit} −{:.0}% (widths {widths:?}): {} parameters ({} B), accuracy {:6.2}% right after, {:6.2}% after {} epochs, batch-256 forward {us:.1} µs ({speedup:.2}x)",
            100.0 * ratio,
            m.num_parameters(),
            param_bytes(&m),
            100.0 * before,
            100.0 * q,
            cfg.epochs
        ));
        rows.push(json!({"model": name, "unit": unit, "ratio": ratio, "widths": widths, "params": m.num_parameters(), "bytes": param_bytes(&m), "quality": q, "quality_before_finetune": before, "finetune_epochs": cfg.epochs, "latency_speedup": speedup, "latency_us": us}));
    }
    Ok(rows)
}

/// Sparse kernels against tt-accel's packed dense GEMV at one row, across densities: CSR and the
/// 16×1 block-sparse format on **unstructured** masks (each weight kept with probability `d`),
/// and both on **block-pruned** masks (a dense random matrix with `1 − d` of its 16×1 blocks
/// pruned by L2 norm, so the same weight density `d` in whole blocks). Timed interleaved per row
/// (the dense GEMV again at every density, so drift shows in its spread). A crossover is the
/// highest density up to which the format is faster than the dense GEMV timed beside it at every
/// measured density; a storage break-even, the same for fewer bytes than dense f32.
fn sparse_shape(opts: &Options, out_f: usize, in_f: usize) -> Result<Value> {
    use rand::{Rng, SeedableRng};
    use tt_compress::blocksparse::BlockSparseF32;
    let samples = if opts.quick { 3 } else { 9 };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let x: Vec<f32> = (0..in_f).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut y = vec![0.0f32; out_f];
    let full = ndarray::Array2::from_shape_fn((out_f, in_f), |_| rng.random_range(-1.0f32..1.0));
    let dense = PackedF32::new(&full);
    let dense_bytes = dense.storage_bytes();
    let time =
        |p: &dyn Projection, y: &mut [f32]| 1e6 * time_per_call(samples, || p.forward_rows(&x, 1, None, y, &mut []));
    let mut rows = Vec::new();
    for density in [1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01] {
        let w = ndarray::Array2::from_shape_fn((out_f, in_f), |_| {
            if rng.random::<f64>() < density {
                rng.random_range(-1.0f32..1.0)
            } else {
                0.0
            }
        });
        let keep =
            tt_compress::prune::block_mask(&full.view(), &ndarray::Array2::ones((out_f, in_f)).view(), 1.0 - density)
                .map_err(other)?;
        let wb = &full * &keep;
        let (c, b) = (CsrF32::from_dense(&w).map_err(other)?, BlockSparseF32::from_dense(&w).map_err(other)?);
        let (cb, bb) = (CsrF32::from_dense(&wb).map_err(other)?, BlockSparseF32::from_dense(&wb).map_err(other)?);
        let dense_us = time(&dense, &mut y);
        let (csr_us, block_us) = (time(&c, &mut y), time(&b, &mut y));
        let (bp_csr_us, bp_block_us) = (time(&cb, &mut y), time(&bb, &mut y));
        opts.say(format!(
            "  {out_f}×{in_f} density {density:>4.2}: dense {dense_us:>5.2} µs ({dense_bytes} B) | unstructured: CSR {csr_us:>6.2} µs ({} B), block16 {block_us:>6.2} µs ({} B, {:>3.0}% of blocks) | block-pruned: CSR {bp_csr_us:>6.2} µs, block16 {bp_block_us:>6.2} µs ({} B)",
            c.storage_bytes(),
            b.storage_bytes(),
            100.0 * b.block_density(),
            bb.storage_bytes(),
        ));
        rows.push(json!({
            "density": density, "csr_us": csr_us, "dense_us": dense_us,
            "csr_bytes": c.storage_bytes(), "dense_bytes": dense_bytes,
            "block_us": block_us, "block_bytes": b.storage_bytes(), "block_density": b.block_density(),
            "block_pruned": {"density": bb.density(), "csr_us": bp_csr_us, "block_us": bp_block_us, "csr_bytes": cb.storage_bytes(), "block_bytes": bb.storage_bytes(), "block_density": bb.block_density()},
        }));
    }
    // The highest density up to which the format wins at every measured density, from the
    // sparsest up (rows are in decreasing density): one lucky timing at a high density on this
    // noisy machine does not move it, as "the highest density that won once" would.
    let highest = |pick: &dyn Fn(&Value) -> bool| {
        rows.iter().rev().take_while(|r| pick(r)).last().map_or(Value::Null, |r| r["density"].clone())
    };
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::INFINITY);
    let bp = |r: &Value, k: &str| r["block_pruned"][k].as_f64().unwrap_or(f64::INFINITY);
    Ok(json!({
        "shape": [out_f, in_f],
        "level": tt_accel::level().name(),
        "crossover_density": highest(&|r| f(r, "csr_us") < f(r, "dense_us")),
        "block_crossover_density": highest(&|r| f(r, "block_us") < f(r, "dense_us")),
        "block_pruned_crossover_density": highest(&|r| bp(r, "block_us") < f(r, "dense_us")),
        "block_pruned_csr_crossover_density": highest(&|r| bp(r, "csr_us") < f(r, "dense_us")),
        "csr_storage_breakeven_density": highest(&|r| f(r, "csr_bytes") < f(r, "dense_bytes")),
        "block_storage_breakeven_density": highest(&|r| f(r, "block_bytes") < f(r, "dense_bytes")),
        "block_pruned_storage_breakeven_density": highest(&|r| bp(r, "block_bytes") < f(r, "dense_bytes")),
        "rows": rows,
    }))
}

/// [`sparse_shape`] on the GPT's MLP shapes: 512×128 (`fc`, the existing keys at the top level)
/// and its transpose 128×512 (`proj`, under `"transpose"`).
fn sparse_kernel(opts: &Options) -> Result<Value> {
    let mut v = sparse_shape(opts, 512, 128)?;
    v["transpose"] = sparse_shape(opts, 128, 512)?;
    Ok(v)
}

/// Low-rank factors of the MLP's first layer (128×64) at several ranks: right after factoring,
/// and fine-tuned (the whole model, with the layer's `U` and `V` trained in place of its weight;
/// the same 3 epochs and settings as the structured rows), then converted back to a `LowRank`
/// projection and scored as that.
fn low_rank(opts: &Options) -> Result<Vec<Value>> {
    use tt_compress::lowrank::{Factored, WithFactors};
    let (train, test) = data(false)?;
    let quiet = Options { quiet: true, ..opts.clone() };
    let cfg =
        TrainConfig { epochs: if opts.quick { 1 } else { 3 }, batch_size: 32, lr: 1e-3, weight_decay: 1e-4, seed: 0 };
    let mut rows = Vec::new();
    for rank in [4usize, 8, 16, 32, 64] {
        let mut m = load("mlp", opts)?;
        let (bytes, dense_bytes, (out_f, in_f)) = {
            let l = m.layers[0].as_linear_mut().ok_or_else(|| other("layer 0 of the MLP is a Linear"))?;
            let dense = l.projection()?;
            let (dense_bytes, shape) = (dense.storage_bytes(), dense.shape());
            let lr = LowRank::factor(&dense.to_dense(), rank).map_err(other)?;
            let b = lr.storage_bytes();
            l.set_projection(std::sync::Arc::new(lr))?;
            (b, dense_bytes, shape)
        };
        let q = classifier::accuracy(&m, &test)?;
        let mut m = load("mlp", opts)?;
        let factors = Factored::factor(&mut m, &["0"], rank).map_err(other)?;
        let ce = |logits: &Tensor, batch: &tt_tensor::data::Batch| Ok(cross_entropy(logits, &batch.y)?);
        classifier::train_with(
            &mut WithFactors { model: &mut m, factors: &factors },
            &train,
            &test,
            &cfg,
            &quiet,
            &ce,
            &mut |_| Ok(()),
        )?;
        factors.finish(&mut m).map_err(other)?;
        let l = m.layers[0].as_linear().ok_or_else(|| other("layer 0 of the MLP is a Linear"))?;
        let (format, ft_bytes) = l.installed_projection().map_or(("none", 0), |p| (p.format(), p.storage_bytes()));
        if format != "lowrank" || ft_bytes != bytes {
            return Err(other(format!("fine-tuned layer 0 is '{format}' of {ft_bytes} B, not the rank-{rank} pair")));
        }
        let ft = classifier::accuracy(&m, &test)?;
        opts.say(format!(
            "  mlp layer 0 ({out_f}×{in_f}) at rank {rank:>2}: {bytes:>6} B (dense {dense_bytes} B), accuracy {:6.2}%, {:6.2}% after {} fine-tuning epochs",
            100.0 * q,
            100.0 * ft,
            cfg.epochs
        ));
        rows.push(json!({"model": "mlp", "layer": "0", "rank": rank, "bytes": bytes, "dense_bytes": dense_bytes, "quality": q, "finetuned": ft, "finetune_epochs": cfg.epochs}));
    }
    Ok(rows)
}

/// How a pruned GPT (and its unpruned control) is fine-tuned: 200 steps at lr 1e-3 → 1e-4
/// (4 with `--quick`). torchperf's ablation fine-tunes its models the same way.
pub fn gpt_finetune_config(opts: &Options) -> tt_transformer::train::TrainConfig {
    tt_transformer::train::TrainConfig {
        steps: if opts.quick { 4 } else { 200 },
        lr: 1e-3,
        min_lr: 1e-4,
        warmup_steps: if opts.quick { 1 } else { 10 },
        eval_every: if opts.quick { 4 } else { 200 },
        eval_windows: 8,
        long_every: 0,
        ..crate::transformer::train_config(opts.quick)
    }
}

/// The trained CNN teaches a small MLP (64 → 32 → 10); the same MLP trained alone with the same
/// data, epochs and seed is the control. The temperature and α are chosen on a validation split
/// carved from the training set (20%, seeded) — never on the test set — and both students are
/// trained on the remaining 80%.
fn distillation(opts: &Options) -> Result<Value> {
    let (train_all, test) = data(false)?;
    let (_, test_img) = data(true)?;
    let (train, val) = digits::split(&train_all, 0.2, 1)?;
    let quiet = Options { quiet: true, ..opts.clone() };
    let teacher = load("cnn", opts)?;
    let teacher_q = classifier::accuracy(&teacher, &test_img)?;
    let student = |seed| {
        Sequential::new().layer(Linear::new(64, 32, true, seed)).layer(Relu).layer(Linear::new(32, 10, true, seed + 1))
    };
    let cfg =
        TrainConfig { epochs: if opts.quick { 2 } else { 20 }, batch_size: 32, lr: 2e-3, weight_decay: 1e-4, seed: 0 };
    let distill = |d: Distillation| -> Result<Sequential> {
        let mut m = student(7);
        let loss = |logits: &Tensor, batch: &tt_tensor::data::Batch| -> Result<Tensor> {
            let n = batch.x.shape()[0];
            let t = no_grad(|| teacher.forward(&batch.x.reshape(&[n, 1, 8, 8])?))?;
            d.loss(logits, &t, &batch.y).map_err(other)
        };
        classifier::train_with(&mut m, &train, &val, &cfg, &quiet, &loss, &mut |_| Ok(()))?;
        Ok(m)
    };
    let mut grid = Vec::new();
    let mut best: Option<(f32, Distillation)> = None;
    let temps: &[f32] = if opts.quick { &[4.0] } else { &[1.0, 2.0, 4.0, 8.0] };
    let alphas: &[f32] = if opts.quick { &[0.7] } else { &[0.3, 0.5, 0.7, 0.9] };
    for &t in temps {
        for &a in alphas {
            let d = Distillation::new(t, a).map_err(other)?;
            let v = classifier::accuracy(&distill(d)?, &val)?;
            grid.push(json!({"temperature": t, "alpha": a, "val_quality": v}));
            if best.is_none_or(|(bv, _)| v > bv) {
                best = Some((v, d));
            }
        }
    }
    let Some((best_val, d)) = best else { return Err(other("empty distillation grid")) };
    let mut scratch = student(7);
    classifier::train(&mut scratch, &train, &val, &cfg, &quiet)?;
    let (scratch_val, scratch_q) = (classifier::accuracy(&scratch, &val)?, classifier::accuracy(&scratch, &test)?);
    let distilled = distill(d)?;
    let distilled_q = classifier::accuracy(&distilled, &test)?;
    opts.say(format!(
        "  teacher CNN {} params {:6.2}%; student MLP {} params, {} epochs, same data and seed: from scratch {:6.2}% (val {:6.2}%), distilled {:6.2}% (val {:6.2}%) with T {} and α {} chosen on validation out of {} settings",
        teacher.num_parameters(),
        100.0 * teacher_q,
        scratch.num_parameters(),
        cfg.epochs,
        100.0 * scratch_q,
        100.0 * scratch_val,
        100.0 * distilled_q,
        100.0 * best_val,
        d.temperature(),
        d.alpha(),
        grid.len()
    ));
    Ok(json!({
        "teacher": {"model": "cnn", "params": teacher.num_parameters(), "quality": teacher_q},
        "student_scratch": {"model": "mlp 64-32-10", "params": scratch.num_parameters(), "quality": scratch_q, "val_quality": scratch_val},
        "student_distilled": {"model": "mlp 64-32-10", "params": distilled.num_parameters(), "quality": distilled_q, "val_quality": best_val},
        "temperature": d.temperature(), "alpha": d.alpha(), "epochs": cfg.epochs,
        "selection": "validation split (20% of the training set, seed 1)", "grid": grid,
    }))
}

fn gpt_engine(m: &tt_transformer::Gpt) -> std::result::Result<tt_kvcache::CachedGpt, tt_transformer::TransformerError> {
    let mut e = tt_kvcache::CachedGpt::new(m, 1, tt_kvcache::OverflowPolicy::Error)
        .map_err(|e| tt_transformer::TransformerError::Config(e.to_string()))?;
    e.set_row_kernels(tt_accel::fused::row_kernels());
    Ok(e)
}

/// The trained GPT: 25% and 50% of every block's MLP units, or of its attention heads, removed
/// (fine-tuned after, and the unpruned model fine-tuned with the same steps as the control),
/// and global unstructured
/// magnitude pruning of its 16 linear layers (one-shot, and fine-tuned with masks re-applied
/// after every step). Quality: exact match on the unseen questions, scored by the KV-cached
/// decoder; structured rows also measure decode tok/s (packed projections, fused row kernels,
/// one thread, median of 3, interleaved) and the pruned parts' own share: `fc` + `proj` of one
/// block's MLP and `qkv` + `proj` of its attention as packed projections at one row, timed alone
/// (median of 5 interleaved rounds).
fn gpt(opts: &Options) -> Result<(Vec<Value>, Vec<Value>, Vec<Value>)> {
    use crate::transformer;
    use tt_transformer::eval::exact_match_with;
    use tt_transformer::generate::GenerateConfig;
    use tt_transformer::Tokenize;
    let quiet = Options { quiet: true, corpus: None, ..opts.clone() };
    let transformer::QaEval { tokenizer, test, val_ids, data, .. } = transformer::qa_eval(opts)?;
    let ft = gpt_finetune_config(opts);
    let em = |m: &tt_transformer::Gpt| -> Result<f32> {
        Ok(exact_match_with(|| gpt_engine(m), &tokenizer, &test, 48, 2)?.0)
    };
    let prompt = tokenizer.encode_ids("Q: what is 3 plus 4?\nA:")?;
    // Structured: the control (unpruned, fine-tuned), then MLP units and attention heads at 25%
    // and 50%, each fine-tuned with the same steps.
    let mut models = Vec::new();
    let mut structured = Vec::new();
    let variants = [("control", 0.0), ("mlp units", 0.25), ("mlp units", 0.5), ("heads", 0.25), ("heads", 0.5)];
    // Head pruning removes a head's Q, K and V rows together; in a grouped-query model (the
    // Llama) a K/V head serves several query heads, which `prune_gpt_heads` refuses: those
    // variants are skipped, and the summary says so.
    let grouped = {
        let c = transformer::model_config(1, opts.quick, opts.arch);
        c.kv_heads(0) != c.heads(0)
    };
    if grouped {
        opts.say("gpt: head pruning skipped (grouped-query attention: K/V heads are shared by query heads)");
    }
    for (unit, ratio) in variants.into_iter().filter(|v| !(grouped && v.0 == "heads")) {
        let (mut m, _, _, _) = transformer::load_or_train(&quiet)?;
        match unit {
            "mlp units" => drop(structured::prune_gpt_mlp(&mut m, ratio).map_err(other)?),
            "heads" => drop(structured::prune_gpt_heads(&mut m, ratio).map_err(other)?),
            _ => {}
        }
        let before = em(&m)?;
        tt_transformer::train::train(&m, &data, &val_ids, &ft, false, |_| {})?;
        let after = em(&m)?;
        let kv_bytes = gpt_engine(&m)?.cache().memory_bytes();
        structured.push(json!({"model": "gpt", "unit": unit, "ratio": ratio, "params": m.num_parameters(), "bytes": param_bytes(&m), "kv_cache_bytes": kv_bytes, "quality": after, "quality_before_finetune": before, "finetune_steps": ft.steps, "mlp_hidden": m.config.mlp_hidden, "heads_per_block": m.config.heads_per_block}));
        tt_accel::packed::pack_linears(&mut m)?;
        models.push(m);
    }
    let tokens = if opts.quick { 64 } else { 512 };
    let tokens = tokens.min(models[0].config.max_seq_len - prompt.len());
    let mut engines = models.iter().map(gpt_engine).collect::<std::result::Result<Vec<_>, _>>()?;
    let cfg = GenerateConfig::greedy(tokens);
    let mut tps = vec![Vec::new(); engines.len()];
    for _ in 0..if opts.quick { 1 } else { 3 } {
        for (i, e) in engines.iter_mut().enumerate() {
            tps[i].push(tt_kvcache::generate_cached(e, std::slice::from_ref(&prompt), &cfg)?.tokens_per_second(1));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let tps: Vec<f64> = tps.into_iter().map(median).collect();
    // The pruned part alone, block 0 at one row (packed): `fc` + `proj` of the MLP, or `qkv` +
    // `proj` of the attention.
    let samples = if opts.quick { 3 } else { 9 };
    let pair_us = |a: &std::sync::Arc<dyn Projection>, b: &std::sync::Arc<dyn Projection>| {
        let x = vec![0.5f32; a.shape().1];
        let (mut h, mut y) = (vec![0.0f32; a.shape().0], vec![0.0f32; b.shape().0]);
        // The attention's output projection reads the first `in` values of the qkv output (the
        // Q part), which has the right width; the values do not matter for the timing.
        1e6 * time_per_call(samples, || {
            a.forward_rows(&x, 1, None, &mut h, &mut []);
            b.forward_rows(&h[..b.shape().1], 1, None, &mut y, &mut []);
        })
    };
    // Rounds over the models, medians per model: at a few µs per call the VM's drift between
    // one model's timing and the next is as large as the effect, so the models take turns.
    let mut parts = Vec::new();
    for m in &models {
        let (fc, proj) = (m.blocks[0].mlp.fc.projection()?, m.blocks[0].mlp.proj.projection()?);
        let (qkv, out) = (m.blocks[0].attn.qkv.projection()?, m.blocks[0].attn.proj.projection()?);
        parts.push(((fc, proj), (qkv, out)));
    }
    let (mut mlp_t, mut attn_t) = (vec![Vec::new(); models.len()], vec![Vec::new(); models.len()]);
    for _ in 0..if opts.quick { 1 } else { 5 } {
        for (i, (mlp, attn)) in parts.iter().enumerate() {
            mlp_t[i].push(pair_us(&mlp.0, &mlp.1));
            attn_t[i].push(pair_us(&attn.0, &attn.1));
        }
    }
    let mlp_us: Vec<f64> = mlp_t.into_iter().map(median).collect();
    let attn_us: Vec<f64> = attn_t.into_iter().map(median).collect();
    for (i, row) in structured.iter_mut().enumerate() {
        row["decode_tok_s"] = json!(tps[i]);
        row["latency_speedup"] = json!(tps[i] / tps[0]);
        row["mlp_block_us"] = json!(mlp_us[i]);
        row["mlp_speedup"] = json!(mlp_us[0] / mlp_us[i]);
        row["attn_proj_block_us"] = json!(attn_us[i]);
        row["attn_proj_speedup"] = json!(attn_us[0] / attn_us[i]);
        opts.say(format!(
            "  gpt {:<9} −{:>2.0}%: {} params ({} B, KV cache {} B), exact match {:5.1}% before / {:5.1}% after {} fine-tuning steps; decode {:.0} tok/s ({:.2}x); block 0 at one row: MLP {:.2} µs ({:.2}x), attention projections {:.2} µs ({:.2}x)",
            row["unit"].as_str().unwrap_or(""),
            100.0 * row["ratio"].as_f64().unwrap_or(0.0),
            row["params"],
            row["bytes"],
            row["kv_cache_bytes"],
            100.0 * row["quality_before_finetune"].as_f64().unwrap_or(0.0),
            100.0 * row["quality"].as_f64().unwrap_or(0.0),
            ft.steps,
            tps[i],
            tps[i] / tps[0],
            mlp_us[i],
            mlp_us[0] / mlp_us[i],
            attn_us[i],
            attn_us[0] / attn_us[i]
        ));
    }
    // Low-rank: every linear layer factored at one rank, scored as factored, then (from a fresh
    // copy) fine-tuned through trainable factors the same steps as the control and converted
    // back to `LowRank` projections.
    let mut low_rank = Vec::new();
    let ranks: &[usize] = if opts.quick { &[8] } else { &[16, 32, 64] };
    for &rank in ranks {
        let (mut m, _, _, _) = transformer::load_or_train(&quiet)?;
        let (mut bytes, mut dense_bytes) = (0usize, 0usize);
        let mut names = Vec::new();
        tt_tensor::nn::map_linears(&mut m, |n, l| {
            names.push(n.to_string());
            let w = l.projection()?.to_dense();
            dense_bytes += 4 * w.len();
            let r = rank.min(w.nrows().min(w.ncols()));
            let lr = LowRank::factor(&w, r)
                .map_err(|e| tt_tensor::TensorError::InvalidArgument { op: "low-rank", reason: e.to_string() })?;
            bytes += lr.storage_bytes();
            l.set_projection(std::sync::Arc::new(lr))
        })?;
        let q = em(&m)?;
        let (mut m, _, _, _) = transformer::load_or_train(&quiet)?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let factors = tt_compress::lowrank::Factored::factor(&mut m, &refs, rank).map_err(other)?;
        let params = tt_compress::lowrank::WithFactors { model: &mut m, factors: &factors }.parameters();
        let hooks = tt_transformer::train::TrainHooks { loss: None, after_step: None, parameters: Some(params) };
        tt_transformer::train::train_with_hooks(&m, &data, &val_ids, &ft, hooks, false, |_| {})?;
        factors.finish(&mut m).map_err(other)?;
        let tuned = em(&m)?;
        opts.say(format!(
            "  gpt, every linear layer at rank {rank}: {bytes} B of linear weights (dense {dense_bytes} B), exact match {:5.1}%, {:5.1}% after {} fine-tuning steps",
            100.0 * q,
            100.0 * tuned,
            ft.steps
        ));
        low_rank.push(json!({"model": "gpt", "rank": rank, "bytes": bytes, "dense_bytes": dense_bytes, "quality": q, "finetuned": tuned, "finetune_steps": ft.steps}));
    }
    // Unstructured, global over the 16 linear layers.
    let mut unstructured = Vec::new();
    let sparsities: &[f64] = if opts.quick { &[0.5] } else { &SPARSITIES };
    for &s in sparsities {
        for finetune in [false, true] {
            let (mut m, _, _, _) = transformer::load_or_train(&quiet)?;
            let names = layer_names(&mut m)?;
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut p = Pruning::default();
            if !finetune {
                p.global_magnitude(&mut m, &refs, s).map_err(other)?;
            } else {
                // Gradually: the cubic schedule in `stages` steps over the first 80% of
                // fine-tuning (pruned from the training hook), masks re-applied after every step.
                let stages = 5;
                let every = (ft.steps * 4 / 5 / stages).max(1);
                p.global_magnitude(&mut m, &refs, cubic_schedule(0.0, s, 1, stages).map_err(other)?).map_err(other)?;
                let mut failure = None;
                let mut after = |step: usize, _: &tt_transformer::Gpt| -> tt_transformer::Result<()> {
                    let stage = (step + 1) / every + 1;
                    if (step + 1).is_multiple_of(every) && stage <= stages {
                        let target = cubic_schedule(0.0, s, stage, stages).unwrap_or(s);
                        if let Err(e) = amount_for(p.mask_sparsity(), target).and_then(|a| p.advance_global(a)) {
                            failure = Some(e.to_string());
                        }
                    }
                    p.reapply();
                    Ok(())
                };
                let hooks =
                    tt_transformer::train::TrainHooks { loss: None, after_step: Some(&mut after), parameters: None };
                tt_transformer::train::train_with_hooks(&m, &data, &val_ids, &ft, hooks, false, |_| {})?;
                if let Some(e) = failure {
                    return Err(other(e));
                }
            }
            p.make_permanent(&mut m).map_err(other)?;
            let measured = sparsity::model(&mut m).map_err(other)?;
            let q = em(&m)?;
            opts.say(format!(
                "  gpt sparsity {:>4.0}%{}: exact match {:5.1}%",
                100.0 * measured,
                if finetune {
                    format!(" pruned gradually over {} fine-tuning steps", ft.steps)
                } else {
                    " one-shot".into()
                },
                100.0 * q
            ));
            unstructured.push(json!({"model": "gpt", "sparsity": measured, "finetuned": finetune, "quality": q}));
        }
    }
    Ok((structured, unstructured, low_rank))
}

/// The trained GPT (d 128, 4 layers) teaches a GPT of half its width and depth (d 64, 2 layers); the same student trained
/// alone with the same steps, data and seed is the control. T = 2 and α = 0.5 (DistilBERT's
/// temperature; not tuned — each run is a full training), the hard term the same answer-weighted
/// cross-entropy the teacher was trained with.
fn gpt_distillation(opts: &Options) -> Result<Value> {
    use crate::transformer;
    use tt_transformer::eval::{exact_match_with, next_token_loss};
    use tt_transformer::train::{default_loss, train, train_with_hooks, LossInput, TrainHooks};
    let quiet = Options { quiet: true, corpus: None, ..opts.clone() };
    let transformer::QaEval { tokenizer, test, val_ids, data, .. } = transformer::qa_eval(opts)?;
    let (teacher, _, _, _) = transformer::load_or_train(&quiet)?;
    let cfg = transformer::train_config(opts.quick);
    // Half the teacher's width and depth (d 64, 2 layers for the default GPT).
    let tc = &teacher.config;
    let n_layers = (tc.n_layers / 2).max(1);
    let student_cfg = tt_transformer::GptConfig {
        d_model: tc.d_model / 2,
        n_layers,
        // Per-block MLP widths (a Llama's) halve with the width and keep one per layer.
        mlp_hidden: tc.mlp_hidden.as_ref().map(|h| h.iter().take(n_layers).map(|w| (w / 2).max(1)).collect()),
        seed: 11,
        ..tc.clone()
    };
    let (t, alpha) = (2.0f32, 0.5f32);
    let score = |m: &tt_transformer::Gpt| -> Result<(f32, f32)> {
        let em = exact_match_with(|| gpt_engine(m), &tokenizer, &test, 48, 2)?.0;
        let ppl = next_token_loss(&mut gpt_engine(m)?, &val_ids, 128, if opts.quick { 8 } else { 48 })?.exp();
        Ok((em, ppl))
    };
    let scratch = tt_transformer::Gpt::new(student_cfg.clone())?;
    train(&scratch, &data, &val_ids, &cfg, false, |_| {})?;
    let distilled = tt_transformer::Gpt::new(student_cfg)?;
    let loss = |input: &LossInput| -> tt_transformer::Result<Tensor> {
        let tl = no_grad(|| teacher.forward_ids(input.inputs, input.batch, input.seq))?;
        let soft = tt_tensor::loss::kl_div_with_temperature(input.logits, &tl, t)?.mul_scalar(alpha * t * t);
        Ok(soft.add(&default_loss(input)?.mul_scalar(1.0 - alpha))?)
    };
    train_with_hooks(
        &distilled,
        &data,
        &val_ids,
        &cfg,
        TrainHooks { loss: Some(&loss), after_step: None, parameters: None },
        false,
        |_| {},
    )?;
    let ((tq, tp), (sq, sp), (dq, dp)) = (score(&teacher)?, score(&scratch)?, score(&distilled)?);
    opts.say(format!(
        "  teacher GPT {} params: exact match {:5.1}% (val ppl {tp:.3}); student GPT (half the width and depth) {} params, {} steps each, same data and seed: from scratch {:5.1}% (ppl {sp:.3}), distilled (T {t}, α {alpha}) {:5.1}% (ppl {dp:.3})",
        teacher.num_parameters(),
        100.0 * tq,
        scratch.num_parameters(),
        cfg.steps,
        100.0 * sq,
        100.0 * dq
    ));
    Ok(json!({
        "teacher": {"model": format!("gpt d{} l{}", teacher.config.d_model, teacher.config.n_layers), "params": teacher.num_parameters(), "quality": tq, "val_perplexity": tp},
        "student_scratch": {"model": format!("gpt d{} l{}", scratch.config.d_model, scratch.config.n_layers), "params": scratch.num_parameters(), "quality": sq, "val_perplexity": sp},
        "student_distilled": {"model": format!("gpt d{} l{}", distilled.config.d_model, distilled.config.n_layers), "params": distilled.num_parameters(), "quality": dq, "val_perplexity": dp},
        "temperature": t, "alpha": alpha, "steps": cfg.steps,
    }))
}

/// A line chart of `series` (label, points) as SVG at `path`.
fn line_chart(
    path: &std::path::Path,
    title: &str,
    x_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    x_log: bool,
) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| crate::chart::err(path, e);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (x0, x1) = pts.clone().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let root = crate::chart::canvas(path, (760, 460))?;
    let palette = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(36).y_label_area_size(52);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                // Log axes put ticks at values like 0.30000000000000004.
                .x_label_formatter(&|x| format!("{:.3}", x).trim_end_matches('0').trim_end_matches('.').to_string())
                .y_desc("accuracy / exact match")
                .draw()
                .map_err(|e| err(e.to_string()))?;
            for (i, (label, p)) in series.iter().enumerate() {
                let color = palette[i % palette.len()];
                chart
                    .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))
                    .map_err(|e| err(e.to_string()))?
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                chart
                    .draw_series(p.iter().map(|&q| Circle::new(q, 3, color.filled())))
                    .map_err(|e| err(e.to_string()))?;
            }
            crate::chart::legend(path, &mut chart, SeriesLabelPosition::LowerLeft)?;
        }};
    }
    if x_log {
        draw!(builder
            .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0f64..1.0)
            .map_err(|e| err(e.to_string()))?);
    } else {
        draw!(builder.build_cartesian_2d(x0.min(0.0)..x1 * 1.02, 0f64..1.0).map_err(|e| err(e.to_string()))?);
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Accuracy against sparsity (unstructured rows) and accuracy against bytes (low-rank rows).
fn charts(opts: &Options, unstructured: &[Value], low_rank: &[Value]) -> Result<Vec<std::path::PathBuf>> {
    let mut series = Vec::new();
    for model in ["mlp", "cnn", "gpt"] {
        for finetuned in [false, true] {
            let pts: Vec<(f64, f64)> = unstructured
                .iter()
                .filter(|r| r["model"] == model && r["finetuned"] == finetuned)
                .filter_map(|r| Some((r["sparsity"].as_f64()?, r["quality"].as_f64()?)))
                .collect();
            if !pts.is_empty() {
                series.push((
                    format!("{model}{}", if finetuned { ", pruned gradually / fine-tuned" } else { ", one-shot" }),
                    pts,
                ));
            }
        }
    }
    let a = opts.cache_dir.join(NAME).join("quality_vs_sparsity.svg");
    line_chart(
        &a,
        "quality vs unstructured sparsity (held-out data)",
        "sparsity (fraction of zero weights)",
        &series,
        false,
    )?;
    // Bytes as a fraction of the dense layers' so the MLP's one layer and the GPT's sixteen share
    // an axis.
    let mut series = Vec::new();
    for (model, what) in [("mlp", "layer 0"), ("gpt", "every linear layer")] {
        for (key, label) in [("quality", "as factored"), ("finetuned", "fine-tuned")] {
            let pts: Vec<(f64, f64)> = low_rank
                .iter()
                .filter(|r| r["model"] == model)
                .filter_map(|r| Some((r["bytes"].as_f64()? / r["dense_bytes"].as_f64()?, r[key].as_f64()?)))
                .collect();
            if !pts.is_empty() {
                series.push((format!("{model} {what}, {label}"), pts));
            }
        }
    }
    let b = opts.cache_dir.join(NAME).join("quality_vs_bytes.svg");
    line_chart(
        &b,
        "low-rank factors: quality vs bytes (held-out data)",
        "bytes of the factored layers / dense bytes (log)",
        &series,
        true,
    )?;
    Ok(vec![a, b])
}

pub fn run(opts: &Options) -> Result<Value> {
    opts.say(
        "unstructured magnitude pruning (global threshold over all Linear/Conv2d weights; held-out digits accuracy):",
    );
    let mut unstructured_rows = unstructured(opts, "mlp")?;
    unstructured_rows.extend(unstructured(opts, "cnn")?);
    opts.say("\nblock pruning (16×1 blocks by L2 norm, every layer; held-out digits accuracy):");
    let block_rows = block_pruned(opts)?;
    opts.say("\nstructured pruning (MLP hidden units / CNN filters removed by the L2 norm of their incoming weights):");
    let mut structured = structured_rows(opts, "mlp")?;
    structured.extend(structured_rows(opts, "cnn")?);
    opts.say("\nthe GPT (exact match on the unseen questions, scored by the KV-cached decoder):");
    let (gpt_structured, gpt_unstructured, gpt_low_rank) = gpt(opts)?;
    structured.extend(gpt_structured);
    unstructured_rows.extend(gpt_unstructured);
    opts.say("\nsparse kernels: CSR and 16×1 block-sparse vs the packed dense GEMV, one row (median µs per call):");
    let sparse = sparse_kernel(opts)?;
    for s in [&sparse, &sparse["transpose"]] {
        opts.say(format!(
            "  {} crossovers (highest density faster than dense): CSR {}, block16 unstructured {}, block16 block-pruned {}; storage break-even: CSR {}, block16 unstructured {}, block-pruned {}",
            s["shape"], s["crossover_density"], s["block_crossover_density"], s["block_pruned_crossover_density"],
            s["csr_storage_breakeven_density"], s["block_storage_breakeven_density"], s["block_pruned_storage_breakeven_density"]
        ));
    }
    opts.say("\nlow-rank (truncated SVD):");
    let mut low = low_rank(opts)?;
    low.extend(gpt_low_rank);
    opts.say("\nknowledge distillation:");
    let distill = distillation(opts)?;
    let gpt_distill = gpt_distillation(opts)?;
    let chart_paths = charts(opts, &unstructured_rows, &low)?;
    opts.say(format!(
        "\ncharts: {}",
        chart_paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    ));
    Ok(json!({
        "milestone": NAME,
        "unstructured": unstructured_rows,
        "structured": structured,
        "sparse_kernel": sparse,
        "block_pruned": block_rows,
        "low_rank": low,
        "distillation": distill,
        "gpt_distillation": gpt_distill,
        "charts": chart_paths,
    }))
}
