//! The measured regions of the memory milestone's docs page (docs/17-memory.md): `rows` (every
//! shape and format: weight and KV bytes, peak RSS, decode rate and its roofline bound) and
//! `goals` (issue 20's targets judged on those rows).

use serde_json::Value;

use super::{array, num, table, text, yes_no, Region};
use crate::{MilestoneError, Result};

/// Charts the milestone writes: (path relative to the cache directory, name under docs/figures/).
pub const FIGURES: &[(&str, &str)] = &[("memory/peak_rss.svg", "17-memory-peak-rss.svg")];

fn mb(r: &Value, key: &str) -> Result<String> {
    Ok(format!("{:.1}", num(r, key)? / 1e6))
}

/// The KV cache storage of a row (rows written before it was recorded kept it in f32).
fn kv(r: &Value) -> &str {
    r["kv"].as_str().unwrap_or("f32")
}

/// The row of `shape` in `weights` with its KV cache in `kv`, if it was measured.
fn row<'a>(rows: &'a [Value], shape: &str, weights: &str, kv_storage: &str) -> Option<&'a Value> {
    rows.iter().find(|r| {
        r["shape"] == shape && r["weights"] == weights && kv(r) == kv_storage && r["peak_rss_bytes"].is_number()
    })
}

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(summary: &Value) -> Result<Vec<Region>> {
    let rows = array(summary, "/rows")?;
    let mut cells = Vec::new();
    for r in rows {
        let (shape, weights) = (text(r, "/shape")?, text(r, "/weights")?);
        if let Some(e) = r.get("error") {
            let why = e.as_str().unwrap_or("failed");
            cells.push(vec![
                shape.into(),
                weights.into(),
                kv(r).into(),
                format!("not measured: {why}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        cells.push(vec![
            shape.to_string(),
            weights.to_string(),
            kv(r).to_string(),
            mb(r, "/weight_bytes")?,
            mb(r, "/kv_bytes")?,
            mb(r, "/peak_rss_bytes")?,
            format!("{:.2}×", num(r, "/rss_vs_fp32")?),
            format!("{:.1}", num(r, "/tok_s")?),
            format!(
                "{:.1} ({}, {:.0}%)",
                num(r, "/roofline_tok_s")?,
                text(r, "/roofline_level")?,
                100.0 * num(r, "/tok_s")? / num(r, "/roofline_tok_s")?
            ),
        ]);
    }
    let mut rows_md = format!(
        "Each row is a separate process: it builds the model (fp32, pruned50) or loads it from the quantized checkpoint another process wrote (int8, int4), decodes {} tokens after a {}-token prompt (batch 1, one thread) with its KV cache in f32 or int8 (column KV) and reports its peak resident set (`VmHWM`). RSS × fp32 is over the fp32 row (f32 KV cache). MB are 10⁶ bytes.\n\n",
        num(summary, "/tokens")?,
        num(summary, "/prompt_tokens")?
    );
    rows_md.push_str(&table(
        &[
            "shape",
            "weights",
            "KV",
            "weights MB",
            "KV cache MB",
            "peak RSS MB",
            "RSS × fp32",
            "decode tok/s",
            "roofline tok/s (level, % reached)",
        ],
        &cells,
    ));
    Ok(vec![Region { name: "rows", markdown: rows_md }, Region { name: "goals", markdown: goals(rows)? }])
}

fn goals(rows: &[Value]) -> Result<String> {
    // Weights in `w`, KV cache in `k`. Speeds compare like with like (f32 caches); memory is
    // judged both with the f32 cache and with the whole deployment quantized.
    let rss = |s: &str, w: &str, k: &str| row(rows, s, w, k).map(|r| num(r, "/peak_rss_bytes")).transpose();
    let tps = |s: &str, w: &str| row(rows, s, w, "f32").map(|r| num(r, "/tok_s")).transpose();
    let roof = |s: &str, w: &str| -> Result<Option<f64>> {
        row(rows, s, w, "f32").map(|r| Ok(num(r, "/tok_s")? / num(r, "/roofline_tok_s")?)).transpose()
    };
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let judge = |v: Option<f64>, ok: &dyn Fn(f64) -> bool, fmt: &dyn Fn(f64) -> String| match v {
        Some(v) => vec![fmt(v), yes_no(ok(v)).to_string()],
        None => vec!["not measured".into(), "—".into()],
    };
    let x = |v: f64| format!("{v:.2}×");
    let pct = |v: f64| format!("{:.0}%", 100.0 * v);
    let mut t = Vec::new();
    let mut push = |goal: &str, cells: Vec<String>| t.push([vec![goal.to_string()], cells].concat());
    let fp32 = rss("stories42M", "fp32", "f32")?;
    for (w, bound) in [("int8", 0.30), ("int4", 0.18)] {
        for k in ["f32", "int8"] {
            let goal = format!("stories42M: {w} RSS ≤ {bound:.2}× fp32 ({k} KV cache)");
            push(&goal, judge(ratio(rss("stories42M", w, k)?, fp32), &|v| v <= bound, &x));
        }
    }
    for k in ["f32", "int8"] {
        let goal = format!("stories110M in int4: peak RSS < 100 MB ({k} KV cache)");
        push(&goal, judge(rss("stories110M", "int4", k)?.map(|b| b / 1e6), &|v| v < 100.0, &|v| format!("{v:.1} MB")));
    }
    push(
        "stories42M decode: int8 ≥ 3× fp32",
        judge(ratio(tps("stories42M", "int8")?, tps("stories42M", "fp32")?), &|v| v >= 3.0, &x),
    );
    push(
        "stories42M decode: int4 ≥ 1.5× int8",
        judge(ratio(tps("stories42M", "int4")?, tps("stories42M", "int8")?), &|v| v >= 1.5, &x),
    );
    for w in ["fp32", "int8", "int4"] {
        let goal = format!("stories42M {w} decode ≥ 85% of its roofline bound");
        push(&goal, judge(roof("stories42M", w)?, &|v| v >= 0.85, &pct));
    }
    if t.is_empty() {
        return Err(MilestoneError::Other("report: no goals".into()));
    }
    Ok(table(&["goal (issue 20)", "measured", "met"], &t))
}
