//! The measured regions of the torchperf milestone's docs page (docs/19): the scenarios, the
//! TinyMLPerf-style suite, the ablation (per output token, over rounds) and the production
//! targets.

use serde_json::Value;

use super::{array, get, grouped_int, num, opt_ms, table, text, yes_no_at, Region};
use crate::{MilestoneError, Result};

/// Charts the milestone writes: (path relative to the cache directory, name under docs/figures/).
/// The results directory of a full-size run is `torchperf/results` (a `--quick` run writes
/// `results-quick`, so its charts never reach docs/).
pub const FIGURES: &[(&str, &str)] =
    &[("torchperf/results/pareto.svg", "19-pareto.svg"), ("torchperf/results/walk.svg", "19-walk.svg")];

/// A range `[lo, hi]` at `path`, as `lo–hi` with `decimals` places.
fn range(v: &Value, path: &str, decimals: usize) -> Result<String> {
    Ok(format!("{:.*}–{:.*}", decimals, num(v, &format!("{path}/0"))?, decimals, num(v, &format!("{path}/1"))?))
}

fn scenarios(s: &Value) -> Result<Region> {
    let mut rows = Vec::new();
    for r in array(s, "/scenarios")? {
        let (scenario, mode) = (text(r, "/scenario")?, text(r, "/mode")?);
        let metric = text(r, "/metric")?;
        let value = num(r, "/value")?;
        let (label, result, shown) = match mode {
            "AccuracyOnly" => ("AccuracyOnly".to_string(), "—".to_string(), format!("{metric} {value:.4}")),
            "FindPeakPerformance" => (
                format!("{scenario} (peak)"),
                text(r, "/result")?.to_string(),
                format!("{} samples/s at {}/s", grouped_int(value), grouped_int(num(r, "/target_qps")?)),
            ),
            _ => (
                scenario.to_string(),
                text(r, "/result")?.to_string(),
                match metric.split_once("th percentile latency (ns)") {
                    Some((p, _)) => format!("p{p} {:.3} ms", value / 1e6),
                    None if metric.to_lowercase().contains("samples per second") => {
                        format!("{} samples/s", grouped_int(value))
                    }
                    None => format!("{value:.0} ({metric})"),
                },
            ),
        };
        let latencies = if mode == "AccuracyOnly" || scenario == "Offline" {
            "—".to_string()
        } else {
            format!("{:.3} / {:.3}", num(r, "/p50_ms")?, num(r, "/p99_ms")?)
        };
        rows.push(vec![
            text(r, "/sut")?.to_string(),
            label,
            result,
            shown,
            format!("{} ({})", grouped_int(num(r, "/queries")?), grouped_int(num(r, "/samples")?)),
            latencies,
            opt_ms(r, "/ttft_p50_ms", 3)?,
            opt_ms(r, "/tpot_p50_ms", 4)?,
        ]);
    }
    let mut md = table(
        &["system", "scenario", "result", "metric", "queries (samples)", "p50 / p99 ms", "TTFT p50 ms", "TPOT p50 ms"],
        &rows,
    );
    md.push_str(&format!("\nScale: {}.", text(s, "/scale")?));
    for r in array(s, "/scenarios")?.iter().filter(|r| r["mode"] == "FindPeakPerformance") {
        let steps = array(r, "/peak_search")?
            .iter()
            .map(|p| {
                Ok(format!(
                    "{}/s {} (p99 {:.1} ms)",
                    grouped_int(num(p, "/target_qps")?),
                    if get(p, "/valid")? == true { "valid" } else { "invalid" },
                    num(p, "/p99_ns")? / 1e6
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        md.push_str(&format!(
            " {}'s peak search (bound {:.0} ms) tried {}.",
            text(r, "/sut")?,
            num(r, "/target_latency_ms")?,
            steps.join(", ")
        ));
    }
    md.push('\n');
    Ok(Region { name: "scenarios", markdown: md })
}

fn tiny_suite(s: &Value) -> Result<Region> {
    let rows = array(s, "/tiny_suite")?
        .iter()
        .map(|r| {
            Ok(vec![
                text(r, "/task")?.replace('_', " "),
                text(r, "/metric")?.to_string(),
                format!("{:.4}", num(r, "/fp32_quality")?),
                format!("{:.4}", num(r, "/quality")?),
                format!("{:.4}", num(r, "/target")?),
                yes_no_at(r, "/passed")?.to_string(),
                format!("{:.3} ms", num(r, "/median_latency_ms")?),
                grouped_int(num(r, "/samples")?),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let md = table(&["task", "metric", "FP32", "int8", "target", "passed", "latency", "samples"], &rows);
    Ok(Region { name: "tiny_suite", markdown: md })
}

fn main_effects(s: &Value) -> Result<Region> {
    let mut noisy = Vec::new();
    let rows = array(s, "/ablation/main_effects")?
        .iter()
        .map(|e| {
            let (pairs, within) = (num(e, "/pairs")?, num(e, "/pairs_within_noise")?);
            let factor = text(e, "/factor")?;
            if 2.0 * within > pairs {
                noisy.push(factor.to_string());
            }
            Ok(vec![
                format!("{factor} {} → {}", text(e, "/from")?, text(e, "/to")?),
                format!("{:+.4}", num(e, "/quality_delta")?),
                format!("{:.2}", num(e, "/latency_ratio")?),
                format!("{within:.0} of {pairs:.0}"),
                format!("{:.3}", num(e, "/bytes_ratio")?),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let mut md =
        table(&["factor", "quality Δ", "latency × (per output token)", "pairs within noise", "bytes ×"], &rows);
    md.push_str(&format!(
        "\nLatency unit: {}; {:.0} rounds, each SingleStream run at least {} s and {:.0} queries. {}\n",
        text(s, "/ablation/latency_unit")?,
        num(s, "/ablation/rounds")?,
        num(s, "/ablation/latency_settings/min_duration_s")?,
        num(s, "/ablation/latency_settings/min_query_count")?,
        if noisy.is_empty() {
            "No main effect has most of its pairs within noise.".to_string()
        } else {
            format!("Within noise (most pairs' ranges overlap): **{}** — not a measured difference.", noisy.join(", "))
        }
    ));
    let inter = array(s, "/ablation/interactions")?
        .iter()
        .take(3)
        .map(|i| {
            Ok(format!(
                "{} × {} {:.2}",
                text(i, "/factors/0")?,
                text(i, "/factors/1")?,
                num(i, "/latency_interaction")?
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    md.push_str(&format!("\nLargest latency interactions (1 = the two speedups multiply): {}.\n", inter.join("; ")));
    Ok(Region { name: "main_effects", markdown: md })
}

fn pareto(s: &Value) -> Result<Region> {
    let rows = array(s, "/ablation/rows")?
        .iter()
        .filter(|r| r["pareto"] == true)
        .map(|r| {
            Ok(vec![
                text(r, "/config")?.to_string(),
                format!("{:.4}", num(r, "/quality")?),
                format!("{:.4} ({})", num(r, "/tpot_ms")?, range(r, "/tpot_range_ms", 4)?),
                opt_ms(r, "/ttft_ms", 3)?,
                format!("{:.3}", num(r, "/p50_ms")?),
                grouped_int(num(r, "/model_bytes")?),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let md = table(
        &[
            "configuration",
            "exact match",
            "ms per output token (range over rounds)",
            "TTFT ms",
            "p50 per answer ms",
            "model bytes",
        ],
        &rows,
    );
    Ok(Region { name: "pareto", markdown: md })
}

fn walk(s: &Value) -> Result<Region> {
    let steps = array(s, "/ablation/walk")?;
    let bounds = |w: &Value| -> Result<(f64, f64)> { Ok((num(w, "/tpot_range_ms/0")?, num(w, "/tpot_range_ms/1")?)) };
    let rows = steps
        .iter()
        .enumerate()
        .map(|(i, w)| {
            // A step whose range over the rounds overlaps the previous step's did not measurably
            // change the latency, whatever its ratio says.
            let (lo, hi) = bounds(w)?;
            let noise = match i.checked_sub(1).map(|p| bounds(&steps[p])).transpose()? {
                Some((plo, phi)) if lo <= phi && plo <= hi => " (within noise)",
                _ => "",
            };
            Ok(vec![
                format!("{} (`{}`)", text(w, "/step")?, text(w, "/config")?),
                format!("{:.4}", num(w, "/quality")?),
                format!("{:.4} ({})", num(w, "/tpot_ms")?, range(w, "/tpot_range_ms", 4)?),
                format!("{:.2}{noise}", num(w, "/speedup_over_previous")?),
                opt_ms(w, "/ttft_ms", 3)?,
                format!("{:.3}", num(w, "/p50_ms")?),
                grouped_int(num(w, "/model_bytes")?),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let mut md = table(
        &[
            "step",
            "exact match",
            "ms per output token (range over rounds)",
            "× previous",
            "TTFT ms",
            "p50 per answer ms",
            "model bytes",
        ],
        &rows,
    );
    let (first, last) = match (steps.first(), steps.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(MilestoneError::Other("report: /ablation/walk is empty".into())),
    };
    md.push_str(&format!(
        "\nFrom the baseline to the last step: {:.2}× the baseline's speed per output token, {:.2}× fewer model bytes, exact match {:+.4}.\n",
        num(last, "/speedup_over_baseline")?,
        num(first, "/model_bytes")? / num(last, "/model_bytes")?,
        num(last, "/quality")? - num(first, "/quality")?
    ));
    Ok(Region { name: "walk", markdown: md })
}

fn production(s: &Value) -> Result<Region> {
    let rows = array(s, "/production")?
        .iter()
        .map(|p| {
            let measured = match get(p, "/measured")? {
                Value::Null => text(p, "/why")?.to_string(),
                m => format!("{:.2} {}", m.as_f64().unwrap_or(f64::NAN), text(p, "/unit")?),
            };
            let config = match get(p, "/config")? {
                Value::Null => "—".to_string(),
                c => c.as_str().map_or_else(|| c.to_string(), str::to_string),
            };
            Ok(vec![
                text(p, "/target")?.replace('_', " "),
                text(p, "/requirement")?.to_string(),
                measured,
                config,
                yes_no_at(p, "/met")?.into(),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Region {
        name: "production",
        markdown: table(&["target", "requirement", "measured", "configuration", "met"], &rows),
    })
}

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(summary: &Value) -> Result<Vec<Region>> {
    Ok(vec![
        scenarios(summary)?,
        tiny_suite(summary)?,
        main_effects(summary)?,
        pareto(summary)?,
        walk(summary)?,
        production(summary)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, tpot: f64, lo: f64, hi: f64, speedup: f64) -> Value {
        serde_json::json!({"step": name, "config": name, "quality": 0.5, "tpot_ms": tpot, "tpot_range_ms": [lo, hi],
            "speedup_over_previous": speedup, "speedup_over_baseline": 1.0, "ttft_ms": null, "p50_ms": 1.0, "model_bytes": 100})
    }

    #[test]
    fn a_walk_step_overlapping_the_previous_range_is_within_noise() {
        let s = serde_json::json!({"ablation": {"walk": [
            step("baseline", 1.0, 0.9, 1.1, 1.0),
            step("+fast", 0.5, 0.45, 0.55, 2.0),
            step("+noise", 0.52, 0.5, 0.6, 0.96),
        ]}});
        let md = walk(&s).unwrap().markdown;
        assert!(md.contains("| 2.00 |"), "{md}");
        assert!(md.contains("| 0.96 (within noise) |"), "{md}");
        let mut missing = s.clone();
        missing["ablation"]["walk"][1].as_object_mut().unwrap().remove("p50_ms");
        assert!(walk(&missing).unwrap_err().to_string().contains("/p50_ms"));
    }
}
