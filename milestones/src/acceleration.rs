//! Milestone `acceleration` (module 16): the machine's measured limits, decode-shaped products
//! with weights packed once, and the trained GPT decoding with tt-accel's kernels installed
//! through the seam — against the reference kernels, in one run, with identical tokens.
//!
//! Every figure is measured here; percentages are of limits measured in the same run.

use std::time::Instant;

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use serde_json::{json, Value};
use std::sync::Arc;

use tt_accel::fused;
use tt_accel::gemm::{gemm, Rung};
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

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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

fn gemv_rows(opts: &Options, peak: f64, mem: &MemoryLevels) -> Vec<Value> {
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
        // Each weight is read once per call: the packed kernel's weight stream, against the read
        // bandwidth of the level the weights fit in.
        let weight_bytes = 4 * k * n;
        let (level, level_gbs) = mem.for_working_set(weight_bytes);
        let weight_gbs = weight_bytes as f64 / tp / 1e9;
        rows.push(json!({
            "m": m, "k": k, "n": n, "packed_gflops": gp, "matrixmultiply_gflops": gm, "speedup": gp / gm,
            "pct_of_peak": 100.0 * gp / peak, "weight_bytes": weight_bytes, "weight_gbs": weight_gbs,
            "level": level, "pct_of_level_bandwidth": 100.0 * weight_gbs / level_gbs,
        }));
    }
    rows
}

/// The GEMM ladder at square sizes: every rung (the slow scalar ones only at small n) and
/// matrixmultiply, GFLOP/s and % of the measured 1-core peak.
fn ladder(opts: &Options, peak: f64, peak2: f64) -> Result<Vec<Value>> {
    let sizes: &[usize] = if opts.quick { &[64, 128] } else { &[128, 256, 512, 1024] };
    let samples = if opts.quick { 2 } else { 5 };
    opts.say(format!(
        "\nGEMM ladder, C = A·B square n×n×n (GFLOP/s, median of {samples}; % of the 1-core peak, of the 2-core peak for 2 threads):"
    ));
    opts.say(format!("{:>6} {:<16} {:>7} {:>10} {:>9}", "n", "rung", "threads", "GFLOP/s", "% peak"));
    let mut rows = Vec::new();
    let level = tt_accel::level();
    for &n in sizes {
        let a = tt_tensor::Tensor::randn(&[n * n], 0.0, 1.0, 1).to_vec();
        let b = tt_tensor::Tensor::randn(&[n * n], 0.0, 1.0, 2).to_vec();
        let mut c = vec![0.0f32; n * n];
        let flops = 2.0 * (n as f64).powi(3);
        let mut cases: Vec<(&str, usize)> = Vec::new();
        if n <= 256 {
            cases.extend([("naive", 1), ("reordered", 1)]);
        }
        cases.extend([("blocked", 1), ("packed_simd", 1), ("threaded", 2), ("matrixmultiply", 1)]);
        for (name, threads) in cases {
            let secs = if name == "matrixmultiply" {
                time_per_call(samples, || {
                    let av = ArrayView2::from_shape((n, n), &a).expect("sized");
                    let bv = ArrayView2::from_shape((n, n), &b).expect("sized");
                    tt_tensor::kernels::gemm(
                        1.0,
                        av,
                        bv,
                        0.0,
                        ArrayViewMut2::from_shape((n, n), &mut c).expect("sized"),
                    );
                })
            } else {
                let rung = Rung::parse(name).ok_or_else(|| MilestoneError::Other(format!("no rung {name}")))?;
                gemm(rung, level, threads, &a, n, &b, n, &mut c, n, n, n, n)?;
                time_per_call(samples, || {
                    let _ = gemm(rung, level, threads, &a, n, &b, n, &mut c, n, n, n, n);
                })
            };
            let g = flops / secs / 1e9;
            let roof = if threads == 2 { peak2 } else { peak };
            opts.say(format!("{n:>6} {name:<16} {threads:>7} {g:>10.1} {:>8.0}%", 100.0 * g / roof));
            rows.push(json!({"n": n, "rung": name, "threads": threads, "gflops": g, "pct_of_peak": 100.0 * g / roof}));
        }
    }
    Ok(rows)
}

type LayerNormFn = fn(&[f32], &[f32], &[f32], f32, &mut [f32]) -> tt_tensor::Result<(f32, f32)>;

/// Each fused kernel beside the unfused chain it replaces, on decoder-shaped data.
fn fusion(opts: &Options, mem: &MemoryLevels) -> Result<Vec<Value>> {
    let samples = if opts.quick { 3 } else { 9 };
    opts.say(format!(
        "\nfused kernels vs their unfused chains (µs per call, median of {samples}); bytes = data read + written once, against the read bandwidth of the level that holds it:"
    ));
    opts.say(format!(
        "{:<22} {:<20} {:>11} {:>9} {:>8} {:>9} {:>6} {:>8}",
        "op", "shape", "unfused µs", "fused µs", "speedup", "GB/s", "level", "% level"
    ));
    let r = |n: usize, seed: u64| tt_tensor::Tensor::randn(&[n], 0.0, 1.0, seed).to_vec();
    let mut rows = Vec::new();
    let mut report = |op: &str, shape: String, bytes: usize, u: f64, f: f64| {
        let (level, level_gbs) = mem.for_working_set(bytes);
        let gbs = bytes as f64 / f / 1e9;
        opts.say(format!(
            "{op:<22} {shape:<20} {:>11.2} {:>9.2} {:>7.2}x {gbs:>9.1} {level:>6} {:>7.0}%",
            u * 1e6,
            f * 1e6,
            u / f,
            100.0 * gbs / level_gbs
        ));
        rows.push(json!({
            "op": op, "shape": shape, "unfused_us": u * 1e6, "fused_us": f * 1e6, "speedup": u / f,
            "bytes": bytes, "fused_gbs": gbs, "level": level, "pct_of_level_bandwidth": 100.0 * gbs / level_gbs,
        }));
    };
    // Layer norm: 64 rows of 128.
    let (x, g, b) = (r(64 * 128, 1), r(128, 2), r(128, 3));
    let mut out = vec![0.0f32; 64 * 128];
    let ln = |f: LayerNormFn, out: &mut [f32]| {
        for (xr, or) in x.chunks_exact(128).zip(out.chunks_exact_mut(128)) {
            let _ = f(xr, &g, &b, 1e-5, or);
        }
    };
    let u = time_per_call(samples, || ln(fused::unfused::layer_norm, &mut out));
    let f = time_per_call(samples, || ln(fused::layer_norm, &mut out));
    report("layer_norm", "64 rows × 128".into(), 4 * (2 * 64 * 128 + 2 * 128), u, f);
    // Softmax: 16 rows of 640.
    let logits = r(16 * 640, 4);
    let mut buf = logits.clone();
    let u = time_per_call(samples, || {
        buf.copy_from_slice(&logits);
        buf.chunks_exact_mut(640).for_each(fused::unfused::softmax);
    });
    let f = time_per_call(samples, || {
        buf.copy_from_slice(&logits);
        buf.chunks_exact_mut(640).for_each(|row| {
            let _ = fused::softmax(row);
        });
    });
    report("softmax", "16 rows × 640".into(), 4 * 2 * 16 * 640, u, f);
    // Bias + GELU: 64 rows of 512.
    let (h, bias) = (r(64 * 512, 5), r(512, 6));
    let mut y = h.clone();
    let u = time_per_call(samples, || {
        y.copy_from_slice(&h);
        let _ = fused::unfused::bias_gelu(&mut y, &bias);
    });
    let f = time_per_call(samples, || {
        y.copy_from_slice(&h);
        let _ = fused::bias_gelu(&mut y, &bias);
    });
    report("bias_gelu", "64 rows × 512".into(), 4 * (2 * 64 * 512 + 512), u, f);
    // Decode attention: one query, head_dim 32, 640 cached positions.
    let (q, keys, values) = (r(32, 7), r(640 * 32, 8), r(640 * 32, 9));
    let (mut probs, mut o) = (vec![0.0f32; 640], vec![0.0f32; 32]);
    let scale = 1.0 / 32f32.sqrt();
    let u = time_per_call(samples, || {
        let _ = fused::unfused::decode_attention(&q, &keys, &values, scale, &mut probs, &mut o);
    });
    let f = time_per_call(samples, || {
        let _ = fused::decode_attention(&q, &keys, &values, scale, &mut o);
    });
    let attn_bytes = 4 * (2 * 640 * 32 + 2 * 32);
    report("decode_attention", "head 32, 640 slots".into(), attn_bytes, u, f);
    // The decoder's form: the same with a scores scratch row (two passes at AVX-512).
    let f2 = time_per_call(samples, || {
        let _ = fused::decode_attention_2pass(&q, &keys, &values, scale, &mut probs, &mut o);
    });
    report("decode_attention_2pass", "head 32, 640 slots".into(), attn_bytes, u, f2);
    Ok(rows)
}

/// An SVG chart of the ladder: GFLOP/s against n per rung, with the measured peak as a line.
fn ladder_chart(path: &std::path::Path, rows: &[Value], peak: f64) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| crate::chart::err(path, e);
    let max_n = rows.iter().filter_map(|r| r["n"].as_f64()).fold(1.0, f64::max);
    let top = rows.iter().filter_map(|r| r["gflops"].as_f64()).fold(peak, f64::max) * 1.1;
    let root = crate::chart::canvas(path, (760, 460))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("GEMM ladder on this machine (1 core unless threaded)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..max_n * 1.05, 0f64..top)
        .map_err(|e| err(e.to_string()))?;
    chart.configure_mesh().x_desc("n (square n×n×n)").y_desc("GFLOP/s").draw().map_err(|e| err(e.to_string()))?;
    let palette = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, rung) in ["naive", "reordered", "blocked", "packed_simd", "threaded", "matrixmultiply"].iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r["rung"] == *rung)
            .filter_map(|r| Some((r["n"].as_f64()?, r["gflops"].as_f64()?)))
            .collect();
        let color = palette[i];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(if *rung == "threaded" { "threaded (2 threads)" } else { rung })
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .draw_series(LineSeries::new(vec![(0.0, peak), (max_n * 1.05, peak)], BLACK.mix(0.4)))
        .map_err(|e| err(e.to_string()))?
        .label(format!("measured 1-core peak {peak:.0}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.4)));
    crate::chart::legend(path, &mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Where a decode step's time goes: `engine` decodes greedily to `mid` tokens after `prompt`,
/// then 64 more steps under the op profiler (recording adds a little time per op: read the
/// shares, not the absolute µs). Prints the table under `label` and returns its rows.
pub fn step_breakdown(
    opts: &Options,
    engine: &mut CachedGpt,
    prompt: &[usize],
    mid: usize,
    label: &str,
) -> Result<Vec<Value>> {
    engine.prefill(prompt, prompt.len())?;
    let mut next = prompt[prompt.len() - 1];
    for _ in 0..mid {
        next = tt_tensor::kernels::argmax(engine.decode_step(&[next])?);
    }
    let (r, prof) = tt_profile::profiler::profile(|| -> Result<()> {
        for _ in 0..64 {
            next = tt_tensor::kernels::argmax(engine.decode_step(&[next])?);
        }
        Ok(())
    });
    r?;
    let summary = prof.summary(tt_profile::profiler::SortBy::Time);
    let breakdown: Vec<Value> =
        summary.iter().map(|o| json!({"op": o.op, "us_per_step": o.total_us / 64.0, "percent": o.percent})).collect();
    let in_ops: f64 = summary.iter().map(|o| o.total_us).sum();
    opts.say(format!(
        "\n{label} decode step at position {}, under the op profiler ({:.1} µs per step wall, {:.1} in ops):",
        prompt.len() + mid,
        prof.wall_us / 64.0,
        in_ops / 64.0
    ));
    for o in &breakdown {
        opts.say(format!(
            "  {:<12} {:>7.2} µs  {:>5.1}%",
            o["op"].as_str().unwrap_or(""),
            o["us_per_step"].as_f64().unwrap_or(0.0),
            o["percent"].as_f64().unwrap_or(0.0)
        ));
    }
    Ok(breakdown)
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
    // Both cores at once: what "2 threads ≥ 1.8×" can reach on this machine at this moment.
    let peak2 = peak_gflops(2, peak_iters)?;
    let mem = MemoryLevels::measure(opts.quick)?;
    opts.say(format!("f32 FMA peak on 2 cores at once: {peak2:.1} GFLOP/s ({:.2}x one core)", peak2 / peak));
    opts.say(format!(
        "machine (measured now, 1 core): f32 FMA peak {peak:.1} GFLOP/s; read bandwidth L1 {:.0}, L2 {:.0}, L3 {:.0}, DRAM {:.1} GB/s; dispatch level {}",
        mem.l1_read_gbs,
        mem.l2_read_gbs,
        mem.l3_read_gbs,
        mem.dram_read_gbs,
        tt_accel::level()
    ));
    let c = mem.caches;
    opts.say(format!(
        "caches per core ({}): L1d {} KiB, L2 {} KiB, L3 {} MiB — working sets {:?} KiB",
        if c.detected { "read from sysfs" } else { "not readable: fallback sizes" },
        c.l1d >> 10,
        c.l2 >> 10,
        c.l3 >> 20,
        MemoryLevels::sizes(c).map(|b| b >> 10)
    ));
    let gemm_rows = ladder(opts, peak, peak2)?;
    let chart = opts.cache_dir.join(NAME).join("gemm_ladder.svg");
    ladder_chart(&chart, &gemm_rows, peak)?;
    opts.say(format!("chart: {}", chart.display()));
    let gemv = gemv_rows(opts, peak, &mem);
    let fusion_rows = fusion(opts, &mem)?;

    // The decoder: the same CachedGpt, reference layers vs packed layers installed by name.
    let (mut model, tokenizer, _, _) = transformer::load_or_train(&Options { corpus: None, ..opts.clone() })?;
    let prompt = tokenizer.encode_ids(PROMPT)?;
    let tokens = if opts.quick { 64 } else { 512 };
    let tokens = tokens.min(model.config.max_seq_len - prompt.len());
    let mut reference = CachedGpt::new(&model, 1, OverflowPolicy::Error)?;
    let packed_layers = pack_linears(&mut model)?;
    let mut accelerated = CachedGpt::new(&model, 1, OverflowPolicy::Error)?;
    accelerated.set_row_kernels(fused::row_kernels());
    // The same packed layers split over two cores by output panels (a second model copy holds
    // them, so the one-thread engine above keeps its own).
    // The process-wide team (one member per core, at most 2) serves both the projections and the
    // heads-parallel attention, so no more threads than cores spin.
    let team = match tt_accel::team::global() {
        Some(t) => Arc::clone(t),
        None => Arc::new(Team::new(1).map_err(|e| MilestoneError::Other(format!("cannot start a thread: {e}")))?),
    };
    let (mut model2, _, _, _) =
        transformer::load_or_train(&Options { corpus: None, retrain: false, quiet: true, ..opts.clone() })?;
    pack_linears_with(&mut model2, Some(Arc::clone(&team)))?;
    let mut two_threads = CachedGpt::new(&model2, 1, OverflowPolicy::Error)?;
    two_threads.set_row_kernels(fused::row_kernels_threaded());
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
    // Where a step's time goes: 64 accelerated decode steps at mid-generation.
    let mid = tokens / 2;
    let breakdown = step_breakdown(opts, &mut accelerated, &prompt, mid, "accelerated")?;
    let repeats = if opts.quick { 1 } else { 3 };
    let runs = decode_runs(&mut [&mut reference, &mut accelerated, &mut two_threads], &prompt, tokens, repeats)?;
    let identical = runs.iter().flatten().all(|t| t.tokens == runs[0][0].tokens);
    let tok_s = |ts: &[Trace]| median(ts.iter().map(|t| t.tokens_per_second(1)).collect());
    let (ref_tps, acc_tps, two_tps) = (tok_s(&runs[0]), tok_s(&runs[1]), tok_s(&runs[2]));
    // One hand-off per packed projection and one per layer's attention.
    let syncs_per_token = accelerated.projection_formats().iter().filter(|f| f.1 == "f32-packed").count()
        + accelerated.cache().shape().layers;
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
        "  packed projections ({packed_layers} layers via map_linears) + fused row kernels: {acc_tps:>8.0} tok/s  ({:.2}x)",
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
        "  over {} cores (projections by output panels, attention by heads; norms and the rest on one): {two_tps:>8.0} tok/s  ({:.2}x one thread); team hand-off {sync_us:.2} µs × {syncs_per_token} per token = {:.1} µs",
        team.size(),
        two_tps / acc_tps,
        sync_us * syncs_per_token as f64
    ));
    // Prefill of a long prompt: projections by output panels and attention by heads on two cores.
    let long: Vec<usize> = prompt.iter().cycle().take(tokens.min(model.config.max_seq_len)).copied().collect();
    let samples = if opts.quick { 3 } else { 7 };
    let mut prefill_s = [0.0f64; 2];
    for (i, e) in [&mut accelerated, &mut two_threads].into_iter().enumerate() {
        let mut t = Vec::new();
        for _ in 0..samples {
            let start = Instant::now();
            e.prefill(&long, long.len())?;
            t.push(start.elapsed().as_secs_f64());
        }
        prefill_s[i] = median(t);
    }
    opts.say(format!(
        "  prefill of {} tokens: {:.2} ms on one thread, {:.2} ms over {} cores ({:.2}x; median of {samples})",
        long.len(),
        1e3 * prefill_s[0],
        1e3 * prefill_s[1],
        team.size(),
        prefill_s[0] / prefill_s[1]
    ));
    let scaling = crate::scaling::run(opts, &model.config, &mem)?;
    let amx = crate::scaling::amx(opts, &model.config)?;
    if !identical || worst > 1e-4 {
        return Err(MilestoneError::Other(format!(
            "the accelerated decoder diverged from the reference (identical tokens: {identical}, max |Δ logit| {worst})"
        )));
    }
    Ok(json!({
        "milestone": NAME,
        "machine": {
            "peak_gflops_1core": peak,
            "peak_gflops_2cores": peak2,
            "l1_read_gbs": mem.l1_read_gbs,
            "l2_read_gbs": mem.l2_read_gbs,
            "l3_read_gbs": mem.l3_read_gbs,
            "dram_read_gbs": mem.dram_read_gbs,
            "caches": mem.caches,
            "working_set_bytes": MemoryLevels::sizes(mem.caches),
            "dispatch_level": tt_accel::level().name(),
        },
        "gemm_samples": if opts.quick { 2 } else { 5 },
        "gemm": gemm_rows,
        "gemm_chart": chart,
        "gemv": gemv,
        "fusion": fusion_rows,
        "decode": {
            "tokens": tokens,
            "prompt_tokens": prompt.len(),
            "repeats": repeats,
            "packed_layers": packed_layers,
            "threads": team.size(),
            "weight_bytes": weight_bytes,
            "kv_bytes": kv_bytes,
            "sync_us": sync_us,
            "syncs_per_token": syncs_per_token,
            "breakdown_position": prompt.len() + mid,
            "breakdown_steps": 64,
            "reference_tok_s": ref_tps,
            "accelerated_tok_s": acc_tps,
            "threads2_tok_s": two_tps,
            "threads2_sync_us_per_token": sync_us * syncs_per_token as f64,
            "roofline_tok_s": roof_tps,
            "roofline_level": level,
            "bytes_per_token": weight_bytes + kv_bytes,
            "identical_tokens": identical,
            "max_abs_logit_diff": worst,
            "step_breakdown": breakdown,
        },
        "threads": crate::scaling::thread_counts().last().copied().unwrap_or(1),
        "scaling": scaling["scaling"],
        "scaling_pairs_2v1": scaling["pairs_2v1"],
        "contended": scaling["contended"],
        "amx": amx["rows"],
        "amx_reason": amx.get("reason").cloned().unwrap_or(Value::Null),
        "amx_detail": amx,
        "prefill": {
            "tokens": long.len(),
            "samples": samples,
            "one_thread_ms": 1e3 * prefill_s[0],
            "threads2_ms": 1e3 * prefill_s[1],
            "speedup": prefill_s[0] / prefill_s[1],
        },
    }))
}
