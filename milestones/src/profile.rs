//! Milestone `profile` (module 15): profile the trained CNN and GPT — parameters and FLOPs per
//! layer, memory estimate vs measured peak heap, latency statistics, the per-op table, and each
//! op's place under this machine's measured roofline. Writes a JSON report and Chrome traces.

use serde_json::json;
use tt_profile::flops;
use tt_profile::params::count_parameters;
use tt_profile::profiler::{profile, Profile, SortBy};
use tt_profile::roofline::{peak_gflops, simd_level, stream_triad_gbs, MemoryLevels, Roofline};
use tt_profile::stats::measure_latency;
use tt_tensor::serialize::atomic_write;
use tt_tensor::{no_grad, Module, Tensor};
use tt_transformer::Tokenize;

use crate::{cnn_digits, transformer, MilestoneError, Options, Result};

pub const NAME: &str = "profile";

/// Output bytes of one forward op: each op reports bytes = inputs + output.
fn output_bytes(r: &tt_profile::profiler::Record) -> u64 {
    r.bytes.saturating_sub(4 * r.input_shapes.iter().map(|s| s.iter().product::<usize>() as u64).sum::<u64>())
}

/// Output bytes of the forward ops in `layer` (all layers if `None`): what a training step keeps
/// alive for backward.
fn activation_bytes(p: &Profile, layer: Option<&str>) -> u64 {
    p.records.iter().filter(|r| !r.backward && layer.is_none_or(|l| r.layer == l)).map(output_bytes).sum()
}

/// Peak heap growth while running `f`, if the counting allocator is installed.
fn peak_heap(f: impl FnOnce()) -> Option<usize> {
    let ((), peak) = tt_profile::alloc::measure_peak(f);
    tt_profile::alloc::is_installed().then_some(peak)
}

fn report_model(
    name: &str,
    model: &dyn Module,
    input: &Tensor,
    roof: &Roofline,
    mem: &MemoryLevels,
    opts: &Options,
    iters: usize,
) -> Result<serde_json::Value> {
    opts.say(format!("\n== {name} — input {:?} ==", input.shape()));
    let params = count_parameters(model);
    opts.say(format!("parameters: {} ({} trainable, {} bytes f32)", params.total, params.trainable, 4 * params.total));
    let (_, prof) = profile(|| no_grad(|| model.forward(input)).map(|_| ()));
    let fwd_flops = prof.forward_flops();
    opts.say(format!("{:<22} {:>10} {:>14} {:>16} {:>12}", "layer", "params", "FLOPs", "activations (B)", "time (µs)"));
    let mut layer_rows = Vec::new();
    for (layer, fl, us) in prof.per_layer() {
        let prefix = format!("{layer}.");
        let p: usize =
            params.layers.iter().filter(|l| l.layer == layer || l.layer.starts_with(&prefix)).map(|l| l.params).sum();
        let act = activation_bytes(&prof, Some(&layer));
        let shown = if layer.is_empty() { "(top level)" } else { layer.as_str() };
        opts.say(format!("{shown:<22} {p:>10} {fl:>14} {act:>16} {us:>12.1}"));
        layer_rows.push(json!({"layer": layer, "params": p, "flops": fl, "activation_bytes": act, "time_us": us}));
    }
    opts.say(format!("forward FLOPs: {fwd_flops} ({} MACs; 2 FLOPs per MAC, bias adds not counted)", fwd_flops / 2));
    let act = activation_bytes(&prof, None);
    let peak_train = peak_heap(|| {
        let y = model.forward(input).expect("forward ran above");
        std::hint::black_box(&y);
    });
    let peak_infer = peak_heap(|| {
        let y = no_grad(|| model.forward(input)).expect("forward ran above");
        std::hint::black_box(&y);
    });
    opts.say(format!(
        "memory: parameters {} B; activations estimated {} B (every forward op's output); measured peak heap {} (forward with graph) / {} (no_grad)",
        4 * params.total,
        act,
        peak_train.map_or("n/a (counting allocator not installed)".into(), |b| format!("{b} B")),
        peak_infer.map_or("n/a".into(), |b| format!("{b} B")),
    ));
    let lat = measure_latency(10, iters, || {
        let y = no_grad(|| model.forward(input)).expect("forward ran above");
        std::hint::black_box(&y);
    })?;
    opts.say(format!(
        "latency over {} runs (ms): median {:.4} [95% CI {:.4}–{:.4}], mean {:.4} ± {:.4}, min {:.4}, p90 {:.4}, p99 {:.4}, max {:.4}; outliers {} mild / {} severe (labelled, kept)",
        lat.n, lat.median, lat.median_ci95.0, lat.median_ci95.1, lat.mean, lat.std, lat.min, lat.p90, lat.p99, lat.max, lat.outliers_mild, lat.outliers_severe
    ));
    opts.say("per-op table (one forward):");
    for line in prof.table(SortBy::Time).lines() {
        opts.say(format!("  {line}"));
    }
    opts.say(format!(
        "roofline placement (peak {:.0} GFLOP/s; each op against the read bandwidth of the memory level its per-call working set fits in — L1 {:.0}, L2 {:.0}, L3 {:.0}, DRAM {:.1} GB/s):",
        roof.peak_gflops, mem.l1_read_gbs, mem.l2_read_gbs, mem.l3_read_gbs, mem.dram_read_gbs
    ));
    let mut ops = Vec::new();
    for s in prof.summary(SortBy::Time) {
        let bytes: u64 = prof.records.iter().filter(|r| !r.backward && r.name == s.op).map(|r| r.bytes).sum();
        // An op too fast for the clock (0 µs) has no measurable rate to place.
        if s.flops == 0 || bytes == 0 || s.total_us <= 0.0 {
            continue;
        }
        // A DRAM-only roof misplaces every op whose data sits in cache (an add on small arrays
        // then shows over 100% of "attainable"): place it against its own level.
        let per_call = (bytes / s.calls.max(1) as u64) as usize;
        let (level, level_gbs) = mem.for_working_set(per_call);
        let pl = Roofline { peak_gflops: roof.peak_gflops, bandwidth_gbs: level_gbs }.place(
            s.flops,
            bytes,
            s.total_us / 1e6,
        )?;
        opts.say(format!(
            "  {:<16} {:>9} B/call in {:<4} intensity {:>7.2} FLOP/B  attainable {:>7.1}  achieved {:>7.2} GFLOP/s ({:>5.1}%)  {}",
            s.op,
            per_call,
            level,
            pl.intensity,
            pl.attainable_gflops,
            pl.achieved_gflops,
            100.0 * pl.fraction,
            pl.bound
        ));
        ops.push(json!({"op": s.op, "calls": s.calls, "time_us": s.total_us, "flops": s.flops, "bytes": bytes, "bytes_per_call": per_call, "memory_level": level, "roofline": pl}));
    }
    let op_time_us: f64 = prof.summary(SortBy::Time).iter().map(|s| s.total_us).sum();
    let trace = opts.cache_dir.join(NAME).join(format!("{name}_trace.json"));
    prof.write_chrome_trace(&trace)?;
    opts.say(format!("trace: {}", trace.display()));
    Ok(json!({
        "params": params.total,
        "param_layers": params.layers,
        "flops_per_forward": fwd_flops,
        "macs_per_forward": fwd_flops / 2,
        "per_layer": layer_rows,
        "activation_bytes_estimate": act,
        "param_bytes": 4 * params.total,
        "peak_heap_bytes": peak_train,
        "peak_heap_bytes_no_grad": peak_infer,
        "latency_ms": lat,
        "ops": ops,
        "op_time_us": op_time_us,
        "trace": trace,
    }))
}

pub fn run(opts: &Options) -> Result<serde_json::Value> {
    let (iters, peak_iters, triad_n) = if opts.quick { (10, 200_000, 1 << 20) } else { (100, 4_000_000, 1 << 25) };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let p1 = peak_gflops(1, peak_iters)?;
    let pall = peak_gflops(threads, peak_iters)?;
    let triad = stream_triad_gbs(triad_n, 5)?;
    opts.say(format!(
        "machine: peak f32 {p1:.1} GFLOP/s on 1 core, {pall:.1} on {threads} ({}); STREAM triad {triad:.1} GB/s (1 thread, 3 × {} MiB arrays)",
        simd_level(),
        (triad_n * 4) >> 20
    ));
    let roof = Roofline { peak_gflops: p1, bandwidth_gbs: triad };
    let mem = MemoryLevels::measure(opts.quick)?;

    let (cnn, _) = cnn_digits::load_or_train(opts)?;
    let cnn_json = report_model("cnn", &cnn, &Tensor::zeros(&[1, 1, 8, 8]), &roof, &mem, opts, iters)?;

    let (gpt, tok, _, _) = transformer::load_or_train(&Options { corpus: None, ..opts.clone() })?;
    let prompt: Vec<f32> = tok
        .encode(&"Q: what is 3 plus 4?\nA: 7\n".repeat(6))
        .map_err(MilestoneError::from)?
        .into_iter()
        .map(|t| t as f32)
        .collect();
    let n_ctx = prompt.len().min(128);
    let ids = Tensor::from_vec(prompt[..n_ctx].to_vec(), &[1, n_ctx])?;
    let mut gpt_json = report_model("gpt", &gpt, &ids, &roof, &mem, opts, iters)?;
    let computed = flops::gpt_forward(&gpt.config, 1, n_ctx, false)?;
    let useful = flops::gpt_forward(&gpt.config, 1, n_ctx, true)?;
    let kaplan = flops::kaplan_forward_per_token(&gpt.config, n_ctx)? * n_ctx as u64;
    opts.say(format!(
        "GPT forward over {n_ctx} tokens, analytic (computed = full attention square; useful = causal triangle):"
    ));
    for (c, u) in computed.iter().zip(&useful) {
        opts.say(format!("  {:<36} {:>12} {:>12}", c.part, c.flops, u.flops));
    }
    let (tc, tu) = (flops::total(&computed)?, flops::total(&useful)?);
    opts.say(format!(
        "  total computed {tc} (profiler measured {}), useful {tu}; Kaplan 2N + 2·n_layer·n_ctx·d = {kaplan} → useful/Kaplan = {:.3}",
        gpt_json["flops_per_forward"],
        tu as f64 / kaplan as f64
    ));
    let c = &gpt.config;
    // L·H summed over blocks: a model with pruned heads caches only the heads each block has.
    let layer_heads: usize = (0..c.n_layers).map(|l| c.heads(l)).sum();
    let kv_bytes = |s: usize| 2 * layer_heads * s * c.head_dim() * 4;
    opts.say(format!(
        "KV cache (batch 1, 2·L·H·S·D·4): {} B at S = {n_ctx}, {} B at the full context S = {}",
        kv_bytes(n_ctx),
        kv_bytes(c.max_seq_len),
        c.max_seq_len
    ));
    gpt_json["kv_cache_bytes"] =
        json!({"n_ctx": kv_bytes(n_ctx), "max_seq_len": kv_bytes(c.max_seq_len), "context": c.max_seq_len});
    gpt_json["analytic"] = json!({"computed": computed, "useful_causal": useful, "computed_total": tc, "useful_total": tu, "kaplan": kaplan, "useful_over_kaplan": tu as f64 / kaplan as f64, "n_ctx": n_ctx});

    let report = json!({
        "milestone": NAME,
        "machine": {"peak_gflops_1core": p1, "peak_gflops_all_cores": pall, "threads": threads, "stream_triad_gbs": triad, "simd": simd_level(), "memory_levels": mem},
        "gpt": gpt_json,
        "cnn": cnn_json,
    });
    let path = opts.cache_dir.join(NAME).join("report.json");
    atomic_write(&path, &serde_json::to_vec_pretty(&report).map_err(|e| MilestoneError::Other(e.to_string()))?)?;
    opts.say(format!("\nreport: {}", path.display()));
    Ok(report)
}
