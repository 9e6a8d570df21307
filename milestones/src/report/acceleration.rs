//! The measured regions of the acceleration milestone's docs page (docs/16): `machine`,
//! `gemm_ladder` (with its chart), `gemv`, `fusion`, `decode`, `step_breakdown`, `goals` (issue
//! 10's targets against this run's figures), `scaling` (threads 1…N, two-thread pairs, a busy
//! core), `amx` (VNNI → AMX) and `goals23` (issue 23's targets).

use serde_json::Value;

use super::{array, get, grouped, iec, median_of, num, table, text, yes_no, Region};
use crate::{MilestoneError, Result};

/// Charts the milestone writes: (path relative to the cache directory, name under docs/figures/).
pub const FIGURES: &[(&str, &str)] = &[("acceleration/gemm_ladder.svg", "16-gemm-ladder.svg")];

const RUNGS: [&str; 6] = ["naive", "reordered", "blocked", "packed_simd", "threaded", "matrixmultiply"];

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(summary: &Value) -> Result<Vec<Region>> {
    Ok(vec![
        Region { name: "machine", markdown: machine(get(summary, "/machine")?)? },
        Region { name: "gemm_ladder", markdown: ladder(summary)? },
        Region { name: "gemv", markdown: gemv(summary)? },
        Region { name: "fusion", markdown: fusion(summary)? },
        Region { name: "decode", markdown: decode(summary)? },
        Region { name: "step_breakdown", markdown: breakdown(get(summary, "/decode")?)? },
        Region { name: "goals", markdown: goals(summary)? },
        Region { name: "scaling", markdown: scaling(summary)? },
        Region { name: "amx", markdown: amx(summary)? },
        Region { name: "goals23", markdown: goals23(summary)? },
    ])
}

/// The scaling curves, the five pairs and the contended decode (issue 23).
fn scaling(summary: &Value) -> Result<String> {
    let mut rows = Vec::new();
    for r in array(summary, "/scaling")? {
        let t = num(r, "/threads")?;
        let w = text(r, "/workload")?;
        let figure = match r.get("qps").and_then(Value::as_f64) {
            Some(q) => format!("{q:.0} qps"),
            None => format!("{:.3} ms", num(r, "/ms")?),
        };
        rows.push(vec![
            w.to_string(),
            format!("{t}"),
            figure,
            format!("{:.2}×", num(r, "/speedup")?),
            format!("{:.0}%", 100.0 * num(r, "/efficiency")?),
            text(r, "/bound")?.to_string(),
        ]);
    }
    let mut out = format!(
        "At 1 … {} threads (the cores this process may use), each workload on a team of that size installed on \
         the calling thread, the way `--threads t` runs it; ms per GEMM, per prefill, per decode step (median of \
         the run's samples); speedup against one thread in this run; per thread = speedup / threads:\n\n",
        num(summary, "/threads")?
    );
    out.push_str(&table(&["workload", "threads", "time (or rate)", "speedup", "per thread", "bound by"], &rows));
    let mut pairs = Vec::new();
    for p in array(summary, "/scaling_pairs_2v1")? {
        let ratios: Vec<String> =
            array(p, "/ratios")?.iter().filter_map(Value::as_f64).map(|r| format!("{r:.2}×")).collect();
        pairs.push(vec![text(p, "/workload")?.to_string(), ratios.join(", ")]);
    }
    out.push_str("\nTwo threads against one, consecutive pairs in this run (all of them):\n\n");
    out.push_str(&table(&["workload", "2 threads / 1 thread"], &pairs));
    let c = get(summary, "/contended")?;
    out.push_str(&format!(
        "\n**A busy core.** Decode at batch 1 with {}: one thread {:.3} ms per token (idle: {:.3}), two threads {:.3} \
         (idle: {:.3}) — {:.2}× the contended one thread. Over those runs the team shared {} jobs, counted {} stalls \
         (a member descheduled inside its chunk) and ran {} jobs on the caller alone during the back-offs that \
         followed.\n",
        text(c, "/competitor")?,
        num(c, "/contended_1_thread_ms")?,
        num(c, "/idle_1_thread_ms")?,
        num(c, "/contended_2_threads_ms")?,
        num(c, "/idle_2_threads_ms")?,
        num(c, "/contended_speedup")?,
        num(c, "/shared_jobs")?,
        num(c, "/stalls")?,
        num(c, "/caller_only_jobs")?,
    ));
    Ok(out)
}

/// The AMX ladder: VNNI → AMX at square int8 GEMMs, with fractions of each unit's peak.
fn amx(summary: &Value) -> Result<String> {
    let rows = array(summary, "/amx")?;
    if rows.is_empty() {
        let why = summary.pointer("/amx_reason").and_then(Value::as_str).unwrap_or("not measured");
        return Ok(format!(
            "Not measured on this machine: {why}. The tile kernel's exactness tests skip here with \
            that reason; the figures come from a CPU with AMX (Intel Sapphire Rapids or later).\n"
        ));
    }
    let d = get(summary, "/amx_detail")?;
    let mut t = Vec::new();
    for r in rows {
        t.push(vec![
            format!("{}³", num(r, "/n")?),
            format!("{:.0} ({:.0}% of peak)", num(r, "/vnni_gops")?, num(r, "/pct_of_vnni_peak")?),
            format!("{:.0} ({:.0}% of peak)", num(r, "/amx_gops")?, num(r, "/pct_of_amx_peak")?),
            format!("{:.2}×", num(r, "/speedup_vs_vnni")?),
        ]);
    }
    let mut out = format!(
        "int8 GEMM C = A·Wᵀ on one core, GOP/s; peaks measured in this run: `vpdpbusd` {:.0}, `tdpbusd` {:.0} \
         GOP/s:\n\n",
        num(d, "/vnni_peak_gops")?,
        num(d, "/amx_peak_gops")?
    );
    out.push_str(&table(&["n", "VNNI", "AMX", "AMX / VNNI"], &t));
    out.push_str(&format!(
        "\nThe int8 course-shape model: prefill of {} tokens {:.2} ms with VNNI, {:.2} ms with AMX ({:.2}×); decode \
         at batch 1 {:.3} vs {:.3} ms per token ({:.2}×: one row stays on VNNI by design).\n",
        num(d, "/prefill/tokens")?,
        num(d, "/prefill/vnni_ms")?,
        num(d, "/prefill/amx_ms")?,
        num(d, "/prefill/speedup")?,
        num(d, "/decode_batch1/vnni_ms_per_token")?,
        num(d, "/decode_batch1/amx_ms_per_token")?,
        num(d, "/decode_batch1/speedup")?,
    ));
    Ok(out)
}

/// Issue 23's goals against this run.
fn goals23(summary: &Value) -> Result<String> {
    let met = |ok: bool| yes_no(ok).to_string();
    let mut rows = Vec::new();
    for p in array(summary, "/scaling_pairs_2v1")? {
        let ratios: Vec<f64> = array(p, "/ratios")?.iter().filter_map(Value::as_f64).collect();
        let text_r: Vec<String> = ratios.iter().map(|r| format!("{r:.2}×")).collect();
        let ok = !ratios.is_empty() && ratios.iter().all(|&r| r >= 1.8);
        rows.push(vec![
            format!("2 threads ≥ 1.8× one thread, {} (every consecutive run)", text(p, "/workload")?),
            text_r.join(", "),
            met(ok),
        ]);
    }
    let threads = num(summary, "/threads")?;
    let many = if threads >= 16.0 {
        let at = |w: &str| {
            array(summary, "/scaling").ok().and_then(|rows| {
                rows.iter()
                    .filter(|r| r["workload"].as_str().is_some_and(|x| x.starts_with(w)))
                    .filter(|r| r["threads"].as_f64() == Some(threads))
                    .find_map(|r| r["speedup"].as_f64())
            })
        };
        let (g, p) = (at("gemm").unwrap_or(f64::NAN), at("prefill").unwrap_or(f64::NAN));
        vec![
            "16 cores: GEMM and prefill ≥ 10×".into(),
            format!("GEMM {g:.1}×, prefill {p:.1}×"),
            met(g >= 10.0 && p >= 10.0),
        ]
    } else {
        vec![
            "16 cores: GEMM and prefill ≥ 10×".into(),
            format!("not measured: this machine has {threads} cores (the prepared script `deploy/scaling.sh` runs it where 16 are lent)"),
            "—".into(),
        ]
    };
    rows.push(many);
    let amx = array(summary, "/amx")?;
    if amx.is_empty() {
        let why = summary.pointer("/amx_reason").and_then(Value::as_str).unwrap_or("not measured");
        rows.push(vec![
            "AMX int8 GEMM ≥ 3× VNNI and ≥ 50% of the AMX peak at 512³, 1024³; int8 prefill ≥ 2×".into(),
            format!("not measured: {why}"),
            "—".into(),
        ]);
    } else {
        let mut ok = true;
        let mut t = Vec::new();
        for r in amx {
            let (x, pct) = (num(r, "/speedup_vs_vnni")?, num(r, "/pct_of_amx_peak")?);
            ok &= x >= 3.0 && pct >= 50.0;
            t.push(format!("{}³: {x:.2}×, {pct:.0}% of peak", num(r, "/n")?));
        }
        let pf = num(summary, "/amx_detail/prefill/speedup")?;
        t.push(format!("prefill {pf:.2}×"));
        rows.push(vec![
            "AMX int8 GEMM ≥ 3× VNNI and ≥ 50% of the AMX peak at 512³, 1024³; int8 prefill ≥ 2×".into(),
            t.join("; "),
            met(ok && pf >= 2.0),
        ]);
    }
    Ok(table(&["goal (issue 23)", "this run", "met"], &rows))
}

fn machine(m: &Value) -> Result<String> {
    let (p1, p2) = (num(m, "/peak_gflops_1core")?, num(m, "/peak_gflops_2cores")?);
    let sizes = array(m, "/working_set_bytes")?;
    let mut rows = vec![
        vec![
            "f32 FMA peak, 1 core".to_string(),
            format!("{p1:.1} GFLOP/s (dispatch level {})", text(m, "/dispatch_level")?),
        ],
        vec!["f32 FMA peak, 2 cores at once".into(), format!("{p2:.1} GFLOP/s ({:.2}× one core)", p2 / p1)],
    ];
    for (i, level) in ["L1", "L2", "L3", "DRAM"].into_iter().enumerate() {
        let key = format!("/{}_read_gbs", level.to_lowercase());
        let set = sizes
            .get(i)
            .and_then(Value::as_f64)
            .ok_or_else(|| MilestoneError::Other(format!("report: /machine/working_set_bytes has no entry {i}")))?;
        rows.push(vec![format!("read bandwidth, {level} ({} set)", iec(set)), format!("{:.1} GB/s", num(m, &key)?)]);
    }
    Ok(table(&["", "measured in this run"], &rows))
}

/// The ladder's row for `rung` at size `n`, if measured.
fn rung<'a>(gemm: &'a [Value], n: f64, rung: &str) -> Option<&'a Value> {
    gemm.iter().find(|r| r["n"].as_f64() == Some(n) && r["rung"] == rung)
}

fn ladder(summary: &Value) -> Result<String> {
    let gemm = array(summary, "/gemm")?;
    let mut sizes: Vec<f64> = gemm.iter().filter_map(|r| r["n"].as_f64()).collect();
    sizes.dedup();
    let mut rows = Vec::new();
    for &n in &sizes {
        let mut row = vec![format!("{n}")];
        let packed = rung(gemm, n, "packed_simd").map(|r| num(r, "/gflops")).transpose()?;
        for name in RUNGS {
            row.push(match rung(gemm, n, name) {
                None => "—".into(),
                Some(r) => {
                    let g = num(r, "/gflops")?;
                    let share = format!("{:.0}%", num(r, "/pct_of_peak")?);
                    match (name, packed) {
                        ("threaded", Some(p)) => format!("{g:.1} ({share}; {:.2}×)", g / p),
                        _ => format!("{g:.1} ({share})"),
                    }
                }
            });
        }
        rows.push(row);
    }
    let mut out = table(&[&["n"][..], &RUNGS[..]].concat(), &rows);
    out.push_str(&format!(
        "\nGFLOP/s, {} (% of the measured 1-core peak; threaded: % of the 2-core peak, and × packed_simd). ",
        median_of(num(summary, "/gemm_samples")?)
    ));
    let lead: Vec<String> = sizes
        .iter()
        .filter_map(|&n| Some((n, rung(gemm, n, "packed_simd")?, rung(gemm, n, "matrixmultiply")?)))
        .map(|(n, p, m)| Ok(format!("{n}: {:.2}×", num(p, "/gflops")? / num(m, "/gflops")?)))
        .collect::<Result<_>>()?;
    out.push_str(&format!("packed_simd / matrixmultiply at n = {}. ", lead.join(", ")));
    out.push_str("Chart of the same run: [`figures/16-gemm-ladder.svg`](figures/16-gemm-ladder.svg).\n");
    Ok(out)
}

fn gemv(summary: &Value) -> Result<String> {
    let mut rows = Vec::new();
    for r in array(summary, "/gemv")? {
        rows.push(vec![
            format!("{}×{}×{}", num(r, "/m")?, num(r, "/k")?, num(r, "/n")?),
            format!("{:.1} ({:.0}% of peak)", num(r, "/packed_gflops")?, num(r, "/pct_of_peak")?),
            format!("{:.1}", num(r, "/matrixmultiply_gflops")?),
            format!("**{:.1}×**", num(r, "/speedup")?),
            iec(num(r, "/weight_bytes")?),
            format!("{:.0} GB/s", num(r, "/weight_gbs")?),
            format!("{:.0}% of {}", num(r, "/pct_of_level_bandwidth")?, text(r, "/level")?),
        ]);
    }
    Ok(table(
        &[
            "m×k×n",
            "packed GFLOP/s",
            "matrixmultiply",
            "speedup",
            "weights",
            "weight stream",
            "of the level's read bandwidth",
        ],
        &rows,
    ))
}

fn fusion(summary: &Value) -> Result<String> {
    let mut rows = Vec::new();
    for r in array(summary, "/fusion")? {
        rows.push(vec![
            format!("`{}`", text(r, "/op")?),
            text(r, "/shape")?.to_string(),
            format!("{:.2}", num(r, "/unfused_us")?),
            format!("{:.2}", num(r, "/fused_us")?),
            format!("{:.2}×", num(r, "/speedup")?),
            format!("{:.1} GB/s", num(r, "/fused_gbs")?),
            format!("{:.0}% of {}", num(r, "/pct_of_level_bandwidth")?, text(r, "/level")?),
        ]);
    }
    Ok(table(
        &["op", "shape", "unfused µs", "fused µs", "speedup", "fused: bytes / time", "of the level's read bandwidth"],
        &rows,
    ))
}

fn decode(summary: &Value) -> Result<String> {
    let d = get(summary, "/decode")?;
    let (r, a, t2) = (num(d, "/reference_tok_s")?, num(d, "/accelerated_tok_s")?, num(d, "/threads2_tok_s")?);
    let threads = num(d, "/threads")?;
    let mut out = format!(
        "Trained GPT, greedy {} tokens after a {}-token prompt, batch 1 ({}, engines interleaved); \
         {} projections packed by name:\n\n",
        num(d, "/tokens")?,
        num(d, "/prompt_tokens")?,
        median_of(num(d, "/repeats")?),
        num(d, "/packed_layers")?,
    );
    out.push_str(&table(
        &["engine", "tok/s", "vs reference"],
        &[
            vec!["reference kernels (dense f32, dot products)".into(), grouped(r, 0), "1.00×".into()],
            vec![
                "packed projections + fused row kernels, 1 thread".into(),
                format!("**{}**", grouped(a, 0)),
                format!("**{:.2}×**", a / r),
            ],
            vec![
                format!("the same over {threads} cores (projections by panels, attention by heads)"),
                grouped(t2, 0),
                format!("{:.2}× ({:.2}× one thread)", t2 / r, t2 / a),
            ],
        ],
    ));
    let p = get(summary, "/prefill")?;
    out.push_str(&format!(
        "\nTokens identical on all engines: {}; largest |Δ logit| against the reference over the {} steps: {:.2e}.\n\n\
         **Roofline.** One decode step reads {} B of projection weights plus {} B of KV cache at mid-generation: \
         {} B, read from {} at its measured bandwidth, bounds one core at **{} tok/s**; the one-thread accelerated \
         decoder runs at **{:.0}%** of that bound.\n\n\
         **Two threads.** Team hand-off {:.2} µs × {} per token = {:.1} µs per token; decode over {threads} cores \
         {:.2}× one thread. Prefill of {} tokens: {:.2} ms on one thread, {:.2} ms over {threads} cores ({:.2}×; \
         {}).\n",
        yes_no(get(d, "/identical_tokens")?.as_bool() == Some(true)),
        num(d, "/tokens")?,
        num(d, "/max_abs_logit_diff")?,
        grouped(num(d, "/weight_bytes")?, 0),
        grouped(num(d, "/kv_bytes")?, 0),
        grouped(num(d, "/bytes_per_token")?, 0),
        text(d, "/roofline_level")?,
        grouped(num(d, "/roofline_tok_s")?, 0),
        100.0 * a / num(d, "/roofline_tok_s")?,
        num(d, "/sync_us")?,
        num(d, "/syncs_per_token")?,
        num(d, "/threads2_sync_us_per_token")?,
        t2 / a,
        num(p, "/tokens")?,
        num(p, "/one_thread_ms")?,
        num(p, "/threads2_ms")?,
        num(p, "/speedup")?,
        median_of(num(p, "/samples")?),
    ));
    Ok(out)
}

fn breakdown(d: &Value) -> Result<String> {
    let mut rows = Vec::new();
    for o in array(d, "/step_breakdown")? {
        rows.push(vec![
            format!("`{}`", text(o, "/op")?),
            format!("{:.2}", num(o, "/us_per_step")?),
            format!("{:.1}%", num(o, "/percent")?),
        ]);
    }
    Ok(format!(
        "{} accelerated decode steps at position {}, through the decoder's own op scopes:\n\n{}",
        num(d, "/breakdown_steps")?,
        num(d, "/breakdown_position")?,
        table(&["op", "µs per step", "share"], &rows)
    ))
}

/// Issue 10's goals, each against this run's figures. A goal whose sizes this run did not
/// measure (quick settings) says so rather than passing.
fn goals(summary: &Value) -> Result<String> {
    let gemm = array(summary, "/gemm")?;
    let met = |ok: bool| yes_no(ok).to_string();
    let mut rows = Vec::new();
    let big: Vec<f64> = [512.0, 1024.0].into_iter().filter(|&n| rung(gemm, n, "packed_simd").is_some()).collect();
    let (mut packed, mut threaded, mut ok_p, mut ok_t) = (Vec::new(), Vec::new(), !big.is_empty(), !big.is_empty());
    for &n in &big {
        let (p, m, t) = (rung(gemm, n, "packed_simd"), rung(gemm, n, "matrixmultiply"), rung(gemm, n, "threaded"));
        let (Some(p), Some(m), Some(t)) = (p, m, t) else { continue };
        let (pct, lead, x) =
            (num(p, "/pct_of_peak")?, num(p, "/gflops")? / num(m, "/gflops")?, num(t, "/gflops")? / num(p, "/gflops")?);
        ok_p &= pct >= 90.0 && lead > 1.0;
        ok_t &= x >= 1.8;
        packed.push(format!("{n}³: {pct:.0}% of peak, {lead:.2}× matrixmultiply"));
        threaded.push(format!("{n}³: {x:.2}×"));
    }
    let unmeasured = "not measured (these settings stop below 512³)".to_string();
    rows.push(vec![
        "packed GEMM ≥ 90% of the 1-core peak at 512³, 1024³, ahead of matrixmultiply".into(),
        if big.is_empty() { unmeasured.clone() } else { packed.join("; ") },
        met(ok_p),
    ]);
    rows.push(vec![
        "threaded GEMM, 2 threads ≥ 1.8× packed".into(),
        if big.is_empty() { unmeasured } else { threaded.join("; ") },
        met(ok_t),
    ]);
    let gemv = array(summary, "/gemv")?;
    let one_row: Vec<&Value> = gemv.iter().filter(|r| r["m"].as_f64() == Some(1.0)).collect();
    let mut speedups = Vec::new();
    let mut ok = !one_row.is_empty();
    for r in &one_row {
        let x = num(r, "/speedup")?;
        ok &= x >= 5.0;
        speedups.push(format!("{}×{}: {x:.1}×", num(r, "/k")?, num(r, "/n")?));
    }
    rows.push(vec!["packed GEMV ≥ 5× matrixmultiply at one row".into(), speedups.join("; "), met(ok)]);
    let in_l2: Vec<&&Value> = one_row.iter().filter(|r| r["level"] == "L2").collect();
    let mut shares = Vec::new();
    let mut ok = !in_l2.is_empty();
    for r in &in_l2 {
        let pct = num(r, "/pct_of_level_bandwidth")?;
        ok &= pct >= 90.0;
        shares.push(format!("1×{}×{}: {pct:.0}% of L2 read bandwidth", num(r, "/k")?, num(r, "/n")?));
    }
    let shares =
        if in_l2.is_empty() { "no one-row shape has its weights in L2 here".into() } else { shares.join("; ") };
    rows.push(vec!["GEMV at the L2 roof when the weights fit in L2 (read here as ≥ 90%)".into(), shares, met(ok)]);
    let fusion = array(summary, "/fusion")?;
    let speeds = fusion.iter().map(|r| num(r, "/speedup")).collect::<Result<Vec<f64>>>()?;
    let lo = speeds.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = speeds.iter().copied().fold(0.0, f64::max);
    rows.push(vec!["fused kernels ≥ 2× their chains".into(), format!("{lo:.1}–{hi:.1}×"), met(lo >= 2.0)]);
    let mut bw = Vec::new();
    let mut ok = true;
    for r in fusion {
        let pct = num(r, "/pct_of_level_bandwidth")?;
        ok &= pct >= 80.0;
        bw.push(format!("{} {pct:.0}%", text(r, "/op")?));
    }
    rows.push(vec!["elementwise kernels ≥ 80% of their level's bandwidth".into(), bw.join(", "), met(ok)]);
    let d = get(summary, "/decode")?;
    let (r, a, t2) = (num(d, "/reference_tok_s")?, num(d, "/accelerated_tok_s")?, num(d, "/threads2_tok_s")?);
    let bound = 100.0 * a / num(d, "/roofline_tok_s")?;
    rows.push(vec![
        "decode ≥ 85% of its roofline bound".into(),
        format!("{bound:.0}% of the {} bound", text(d, "/roofline_level")?),
        met(bound >= 85.0),
    ]);
    rows.push(vec!["decode ≥ 1.5× the reference kernels".into(), format!("{:.2}×", a / r), met(a / r >= 1.5)]);
    rows.push(vec![
        "2 threads ≥ 1.8× one thread (decode)".into(),
        format!("{:.2}× (prefill {:.2}×)", t2 / a, num(summary, "/prefill/speedup")?),
        met(t2 / a >= 1.8),
    ]);
    Ok(table(&["goal (issue 10)", "this run", "met"], &rows))
}
