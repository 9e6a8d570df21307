//! Milestone `acceleration` (module 16): the machine's measured limits, decode-shaped products
//! with weights packed once, and the trained GPT decoding with tt-accel's kernels installed
//! through the seam — against the reference kernels, in one run, with identical tokens.
//!
//! Every figure is measured here; percentages are of limits measured in the same run.

use std::time::Instant;

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use serde_json::{json, Value};
use std::sync::Arc;

use tt_accel::packed::{pack_linears, pack_linears_with, PackedF32};
use tt_accel::team::Team;
use tt_kvcache::{generate_cached, CachedGpt, OverflowPolicy, Trace};
use tt_profile::roofline::{peak_gflops, MemoryLevels};
use tt_tensor::Projection;
use tt_transformer::generate::GenerateConfig;
use tt_transformer::Tokenize;

use crate::{transformer, MilestoneError, Options, Result};

pub const NAME: &str = "acceleration";

const PROMPT: &str = "Q: what is 3 plus 4?\nA:";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds per call of `f` over `samples` samples of enough calls to last ≥ 2 ms each.
pub fn time_per_call(samples: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-9);
    let calls = ((2e-3 / once).ceil() as usize).clamp(1, 1_000_000);
    median(
        (0..samples)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..calls {
                    f();
                }
                t.elapsed().as_secs_f64() / calls as f64
            })
            .collect(),
    )
}

fn gemv_rows(opts: &Options, peak: f64) -> Vec<Value> {
    let samples = if opts.quick { 3 } else { 9 };
    opts.say(format!(
        "\ndecode-shaped products y = x·Wᵀ (GFLOP/s, median of {samples}); packed = tt-accel PackedF32 (weights packed once), matrixmultiply packs W every call:"
    ));
    opts.say(format!("{:>14} {:>12} {:>16} {:>9} {:>12}", "m×k×n", "packed", "matrixmultiply", "speedup", "% of peak"));
    let mut rows = Vec::new();
    for &(m, k, n) in &[(1usize, 256usize, 1024usize), (1, 128, 512), (4, 128, 512), (8, 256, 1024)] {
        let w = Array2::from_shape_fn((n, k), |(i, j)| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 29) as f32 / 29.0 - 0.5).collect();
        let mut y = vec![0.0f32; m * n];
        let packed = PackedF32::new(&w);
        let flops = (2 * m * k * n) as f64;
        let tp = time_per_call(samples, || packed.forward_rows(&x, m, None, &mut y, &mut []));
        let tm = time_per_call(samples, || {
            let xv = ArrayView2::from_shape((m, k), &x).expect("sized");
            let yv = ArrayViewMut2::from_shape((m, n), &mut y).expect("sized");
            tt_tensor::kernels::gemm(1.0, xv, w.t(), 0.0, yv);
        });
        let (gp, gm) = (flops / tp / 1e9, flops / tm / 1e9);
        opts.say(format!(
            "{:>14} {gp:>12.1} {gm:>16.1} {:>8.1}x {:>11.0}%",
            format!("{m}×{k}×{n}"),
            gp / gm,
            100.0 * gp / peak
        ));
        rows.push(
            json!({"m": m, "k": k, "n": n, "packed_gflops": gp, "matrixmultiply_gflops": gm, "speedup": gp / gm}),
        );
    }
    rows
}

/// Greedy generation of `n` tokens on each engine, interleaved, `repeats` times.
fn decode_runs(engines: &mut [&mut CachedGpt], prompt: &[usize], n: usize, repeats: usize) -> Result<Vec<Vec<Trace>>> {
    let cfg = GenerateConfig::greedy(n);
    let mut out: Vec<Vec<Trace>> = engines.iter().map(|_| Vec::new()).collect();
    for _ in 0..repeats {
        for (e, o) in engines.iter_mut().zip(out.iter_mut()) {
            o.push(generate_cached(e, &[prompt.to_vec()], &cfg)?);
        }
    }
    Ok(out)
}

pub fn run(opts: &Options) -> Result<Value> {
    let peak_iters = if opts.quick { 200_000 } else { 4_000_000 };
    let peak = peak_gflops(1, peak_iters)?;
    let mem = MemoryLevels::measure(opts.quick)?;
    opts.say(format!(
        "machine (measured now, 1 core): f32 FMA peak {peak:.1} GFLOP/s; read bandwidth L1 {:.0}, L2 {:.0}, L3 {:.0}, DRAM {:.1} GB/s; dispatch level {}",
        mem.l1_read_gbs,
        mem.l2_read_gbs,
        mem.l3_read_gbs,
        mem.dram_read_gbs,
        tt_accel::level()
    ));
    let gemv = gemv_rows(opts, peak);

    // The decoder: the same CachedGpt, reference layers vs packed layers installed by name.
    let (mut model, tokenizer, _, _) = transformer::load_or_train(&Options { corpus: None, ..opts.clone() })?;
    let prompt = tokenizer.encode_ids(PROMPT)?;
    let tokens = if opts.quick { 64 } else { 512 };
    let tokens = tokens.min(model.config.max_seq_len - prompt.len());
    let mut reference = CachedGpt::new(&model, 1, OverflowPolicy::Error)?;
    let packed_layers = pack_linears(&mut model)?;
    let mut accelerated = CachedGpt::new(&model, 1, OverflowPolicy::Error)?;
    // The same packed layers split over two cores by output panels (a second model copy holds
    // them, so the one-thread engine above keeps its own).
    let team = Arc::new(Team::new(2));
    let (mut model2, _, _, _) =
        transformer::load_or_train(&Options { corpus: None, retrain: false, quiet: true, ..opts.clone() })?;
    pack_linears_with(&mut model2, Some(Arc::clone(&team)))?;
    let mut two_threads = CachedGpt::new(&model2, 1, OverflowPolicy::Error)?;
    let sync_us = 1e6 * time_per_call(9, || team.run(&|_| {}));
    // Logits at every step, both engines fed the reference's greedy tokens.
    let mut worst = 0.0f32;
    let mut a = reference.prefill(&prompt, prompt.len())?.to_vec();
    let mut b = accelerated.prefill(&prompt, prompt.len())?.to_vec();
    for _ in 0..tokens - 1 {
        worst = worst.max(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max));
        let next = tt_tensor::kernels::argmax(&a);
        a = reference.decode_step(&[next])?.to_vec();
        b = accelerated.decode_step(&[next])?.to_vec();
    }
    let repeats = if opts.quick { 1 } else { 3 };
    let runs = decode_runs(&mut [&mut reference, &mut accelerated, &mut two_threads], &prompt, tokens, repeats)?;
    let identical = runs.iter().flatten().all(|t| t.tokens == runs[0][0].tokens);
    let tok_s = |ts: &[Trace]| median(ts.iter().map(|t| t.tokens_per_second(1)).collect());
    let (ref_tps, acc_tps, two_tps) = (tok_s(&runs[0]), tok_s(&runs[1]), tok_s(&runs[2]));
    let syncs_per_token = accelerated.projection_formats().iter().filter(|f| f.1 == "f32-packed").count();
    // Bytes one decode step reads: every projection's storage, the output head, and the KV
    // cache at the middle of the generation.
    let weight_bytes: usize = accelerated.projection_formats().iter().map(|f| f.2).sum();
    let s = accelerated.cache().shape();
    let kv_bytes = 2 * s.layers * s.heads * s.head_dim * 4 * (prompt.len() + tokens / 2);
    let (level, roof_tps) = mem.decode_bound_tok_s(weight_bytes + kv_bytes);
    opts.say(format!(
        "\ndecode, trained GPT, greedy {tokens} tokens after a {}-token prompt, batch 1, one thread unless stated (median of {repeats}):",
        prompt.len()
    ));
    opts.say(format!("  reference kernels (dense f32, dot products): {ref_tps:>8.0} tok/s"));
    opts.say(format!(
        "  packed projections ({packed_layers} layers via map_linears): {acc_tps:>8.0} tok/s  ({:.2}x)",
        acc_tps / ref_tps
    ));
    opts.say(format!(
        "  roofline bound: {} B per token ({} B weights + {} B KV) from {level} at its read bandwidth = {roof_tps:.0} tok/s; accelerated at {:.0}% of it",
        weight_bytes + kv_bytes,
        weight_bytes,
        kv_bytes,
        100.0 * acc_tps / roof_tps
    ));
    opts.say(format!(
        "  tokens identical on both engines: {}; max |Δ logit| over {tokens} steps: {worst:.2e}",
        if identical { "yes" } else { "NO" }
    ));
    opts.say(format!(
        "  packed projections split over 2 cores (attention, norms and the rest on one): {two_tps:>8.0} tok/s  ({:.2}x one thread); team hand-off {sync_us:.2} µs × {syncs_per_token} projections = {:.1} µs per token",
        two_tps / acc_tps,
        sync_us * syncs_per_token as f64
    ));
    if !identical || worst > 1e-4 {
        return Err(MilestoneError::Other(format!(
            "the accelerated decoder diverged from the reference (identical tokens: {identical}, max |Δ logit| {worst})"
        )));
    }
    Ok(json!({
        "milestone": NAME,
        "machine": {
            "peak_gflops_1core": peak,
            "l1_read_gbs": mem.l1_read_gbs,
            "l2_read_gbs": mem.l2_read_gbs,
            "l3_read_gbs": mem.l3_read_gbs,
            "dram_read_gbs": mem.dram_read_gbs,
            "dispatch_level": tt_accel::level().name(),
        },
        "gemv": gemv,
        "decode": {
            "tokens": tokens,
            "reference_tok_s": ref_tps,
            "accelerated_tok_s": acc_tps,
            "threads2_tok_s": two_tps,
            "threads2_sync_us_per_token": sync_us * syncs_per_token as f64,
            "roofline_tok_s": roof_tps,
            "roofline_level": level,
            "bytes_per_token": weight_bytes + kv_bytes,
            "identical_tokens": identical,
            "max_abs_logit_diff": worst,
        },
    }))
}
