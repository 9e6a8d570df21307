//! The measured regions of the profile milestone's docs page (docs/15): `machine` (peak, memory
//! bandwidths), the GPT's `gpt_layers`, `gpt_flops`, `gpt_memory`, `gpt_latency` and `gpt_ops`,
//! and the CNN's `cnn`.

use serde_json::Value;

use super::{array, get, grouped, num, table, text, yes_no, Region};
use crate::Result;

/// Charts the milestone writes: (path relative to the cache directory, name under docs/figures/).
pub const FIGURES: &[(&str, &str)] = &[];

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(summary: &Value) -> Result<Vec<Region>> {
    let gpt = get(summary, "/gpt")?;
    let cnn = get(summary, "/cnn")?;
    Ok(vec![
        Region { name: "machine", markdown: machine(get(summary, "/machine")?)? },
        Region { name: "gpt_layers", markdown: layers(gpt)? },
        Region { name: "gpt_flops", markdown: flops(gpt)? },
        Region { name: "gpt_memory", markdown: memory(gpt)? },
        Region { name: "gpt_latency", markdown: latency(gpt)? },
        Region { name: "gpt_ops", markdown: ops(gpt)? },
        Region { name: "cnn", markdown: format!("{}\n{}", cnn_sentence(cnn)?, ops(cnn)?) },
    ])
}

fn machine(m: &Value) -> Result<String> {
    let (p1, triad) = (num(m, "/peak_gflops_1core")?, num(m, "/stream_triad_gbs")?);
    let level = |k: &str| -> Result<String> { Ok(format!("{:.1} GB/s", num(m, k)?)) };
    Ok(table(
        &["", "measured"],
        &[
            vec!["peak f32, 1 core".into(), format!("{p1:.1} GFLOP/s ({})", text(m, "/simd")?)],
            vec![
                format!("peak f32, {} cores", num(m, "/threads")?),
                format!("{:.1} GFLOP/s", num(m, "/peak_gflops_all_cores")?),
            ],
            vec!["STREAM triad, 1 thread".into(), format!("{triad:.1} GB/s")],
            vec!["ridge point (peak / triad)".into(), format!("{:.1} FLOP/byte", p1 / triad)],
            vec!["read bandwidth, L1 / L2 / L3".into(), {
                let l = ["/memory_levels/l1_read_gbs", "/memory_levels/l2_read_gbs", "/memory_levels/l3_read_gbs"];
                l.iter().map(|k| level(k)).collect::<Result<Vec<_>>>()?.join(" / ")
            }],
            vec!["read bandwidth, DRAM".into(), level("/memory_levels/dram_read_gbs")?],
        ],
    ))
}

fn layers(gpt: &Value) -> Result<String> {
    let mut rows = Vec::new();
    for l in array(gpt, "/per_layer")? {
        let name = text(l, "/layer")?;
        rows.push(vec![
            if name.is_empty() { "(top level)".to_string() } else { name.to_string() },
            grouped(num(l, "/params")?, 0),
            grouped(num(l, "/flops")?, 0),
            grouped(num(l, "/activation_bytes")?, 0),
            format!("{:.1}", num(l, "/time_us")?),
        ]);
    }
    let head = format!("GPT forward over {} tokens, batch 1:\n\n", num(gpt, "/analytic/n_ctx")?);
    Ok(head + &table(&["layer", "params", "FLOPs", "activations (B)", "time (µs)"], &rows))
}

fn flops(gpt: &Value) -> Result<String> {
    let a = get(gpt, "/analytic")?;
    let (computed, useful) = (array(a, "/computed")?, array(a, "/useful_causal")?);
    let mut rows = Vec::new();
    for (c, u) in computed.iter().zip(useful) {
        rows.push(vec![text(c, "/part")?.to_string(), grouped(num(c, "/flops")?, 0), grouped(num(u, "/flops")?, 0)]);
    }
    let (tc, tu, kaplan) = (num(a, "/computed_total")?, num(a, "/useful_total")?, num(a, "/kaplan")?);
    rows.push(vec!["**total**".into(), format!("**{}**", grouped(tc, 0)), format!("**{}**", grouped(tu, 0))]);
    let measured = num(gpt, "/flops_per_forward")?;
    Ok(format!(
        "Total **{} FLOPs** ({} MACs) counted by the profiler; equal to the analytic table's computed total: {}. \
         Analytic, by part:\n\n{}\nKaplan's `2N + 2·n_layer·n_ctx·d` over {} tokens = {}; useful / Kaplan = **{:.3}**; \
         counting the full attention square instead would be {:.1}% above Kaplan.\n",
        grouped(measured, 0),
        grouped(num(gpt, "/macs_per_forward")?, 0),
        yes_no(measured == tc),
        table(&["part", "computed", "useful (causal)"], &rows),
        num(a, "/n_ctx")?,
        grouped(kaplan, 0),
        num(a, "/useful_over_kaplan")?,
        100.0 * (tc / kaplan - 1.0),
    ))
}

fn bytes(v: &Value, k: &str) -> Result<String> {
    Ok(match get(v, k)? {
        Value::Null => "not measured (counting allocator not installed)".to_string(),
        _ => format!("{} B", grouped(num(v, k)?, 0)),
    })
}

fn memory(gpt: &Value) -> Result<String> {
    Ok(format!(
        "Parameters {} B; activations estimated {} B; **measured peak heap {}** during a forward that records \
         the graph, {} under `no_grad`. KV cache for this input: {} B ({} B for the full {}-token context).\n",
        grouped(num(gpt, "/param_bytes")?, 0),
        grouped(num(gpt, "/activation_bytes_estimate")?, 0),
        bytes(gpt, "/peak_heap_bytes")?,
        bytes(gpt, "/peak_heap_bytes_no_grad")?,
        grouped(num(gpt, "/kv_cache_bytes/n_ctx")?, 0),
        grouped(num(gpt, "/kv_cache_bytes/max_seq_len")?, 0),
        num(gpt, "/kv_cache_bytes/context")?,
    ))
}

fn latency(m: &Value) -> Result<String> {
    let l = get(m, "/latency_ms")?;
    let ms = |k: &str| -> Result<String> { Ok(format!("{:.3}", num(l, k)?)) };
    Ok(format!(
        "Latency over {} runs (`no_grad`, ms): median **{}** (95% CI {}–{}), mean {} ± {}, min {}, p90 {}, p99 {}, \
         max {}; outliers {} mild / {} severe (kept).\n",
        num(l, "/n")?,
        ms("/median")?,
        ms("/median_ci95/0")?,
        ms("/median_ci95/1")?,
        ms("/mean")?,
        ms("/std")?,
        ms("/min")?,
        ms("/p90")?,
        ms("/p99")?,
        ms("/max")?,
        num(l, "/outliers_mild")?,
        num(l, "/outliers_severe")?,
    ))
}

/// The per-op table: share of the forward's op time and of its FLOPs, rate, and roofline place.
fn ops(m: &Value) -> Result<String> {
    let total_us = num(m, "/op_time_us")?;
    let total_flops = num(m, "/flops_per_forward")?;
    let mut rows = Vec::new();
    for o in array(m, "/ops")? {
        let r = get(o, "/roofline")?;
        let bound = text(r, "/bound")?;
        let roof = if bound == "compute-bound" { "of peak" } else { "of its level's roof" };
        rows.push(vec![
            text(o, "/op")?.to_string(),
            num(o, "/calls")?.to_string(),
            grouped(num(o, "/time_us")?, 1),
            format!("{:.1}%", 100.0 * num(o, "/time_us")? / total_us),
            format!("{:.1}%", 100.0 * num(o, "/flops")? / total_flops),
            format!("{:.2}", num(r, "/achieved_gflops")?),
            format!("{:.2}", num(r, "/intensity")?),
            text(o, "/memory_level")?.to_string(),
            format!("{bound}, {:.0}% {roof}", 100.0 * num(r, "/fraction")?),
        ]);
    }
    Ok(table(
        &[
            "op",
            "calls",
            "time (µs)",
            "% of op time",
            "% of FLOPs",
            "GFLOP/s",
            "intensity (FLOP/B)",
            "data in",
            "roofline",
        ],
        &rows,
    ))
}

fn cnn_sentence(cnn: &Value) -> Result<String> {
    let l = get(cnn, "/latency_ms")?;
    Ok(format!(
        "{} parameters; {} FLOPs per forward; median latency {:.1} µs (p90 {:.1}, p99 {:.1}); measured peak heap {} \
         with graph (activations estimated {} B).\n",
        grouped(num(cnn, "/params")?, 0),
        grouped(num(cnn, "/flops_per_forward")?, 0),
        1e3 * num(l, "/median")?,
        1e3 * num(l, "/p90")?,
        1e3 * num(l, "/p99")?,
        bytes(cnn, "/peak_heap_bytes")?,
        grouped(num(cnn, "/activation_bytes_estimate")?, 0),
    ))
}
