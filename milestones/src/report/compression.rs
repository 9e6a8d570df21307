//! The measured regions of the compression milestone's docs page (docs/18): pruning of the
//! digits models and the GPT, the sparse kernels, low-rank factors and distillation.

use serde_json::Value;

use super::{array, get, num, table, Region};
use super::{find, grouped_int, pct, text};
use crate::Result;

/// Charts the milestone writes: (path relative to the cache directory, name under docs/figures/).
pub const FIGURES: &[(&str, &str)] = &[
    ("compression/quality_vs_sparsity.svg", "18-quality-vs-sparsity.svg"),
    ("compression/quality_vs_bytes.svg", "18-lowrank-quality-vs-bytes.svg"),
];

/// The rows of `/{array}` whose `model` is `model`.
fn of<'a>(s: &'a Value, path: &str, model: &str) -> Result<Vec<&'a Value>> {
    Ok(array(s, path)?.iter().filter(|r| r["model"] == model).collect())
}

/// A density at `path` (a crossover or break-even), or "none" where no measured density won.
fn density(s: &Value, path: &str) -> Result<String> {
    Ok(match get(s, path)? {
        Value::Null => "none".into(),
        v => format!("{}", v.as_f64().unwrap_or(f64::NAN)),
    })
}

/// One-shot and gradual rows of `model`, paired in the order the milestone measured them.
fn one_shot_and_gradual<'a>(s: &'a Value, model: &str) -> Result<Vec<(&'a Value, &'a Value)>> {
    let rows = of(s, "/unstructured", model)?;
    let (shot, grad): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r["finetuned"] == false);
    if shot.len() != grad.len() || shot.is_empty() {
        return Err(crate::MilestoneError::Other(format!(
            "report: /unstructured has {} one-shot and {} gradual rows for {model}",
            shot.len(),
            grad.len()
        )));
    }
    Ok(shot.into_iter().zip(grad).collect())
}

fn unstructured_digits(s: &Value) -> Result<Region> {
    let structured = array(s, "/structured")?;
    let dense = |m: &str| -> Result<String> {
        Ok(pct(num(find(structured, "/structured", &[("model", m.into()), ("ratio", 0.0.into())])?, "/quality")?, 2))
    };
    let (mlp, cnn) = (one_shot_and_gradual(s, "mlp")?, one_shot_and_gradual(s, "cnn")?);
    let mut rows = vec![vec!["0% (dense)".into(), dense("mlp")?, "—".into(), dense("cnn")?, "—".into()]];
    for ((ms, mg), (cs, cg)) in mlp.iter().zip(&cnn) {
        rows.push(vec![
            format!("{:.0}%", 100.0 * num(ms, "/sparsity")?),
            pct(num(ms, "/quality")?, 2),
            pct(num(mg, "/quality")?, 2),
            pct(num(cs, "/quality")?, 2),
            pct(num(cg, "/quality")?, 2),
        ]);
    }
    let mut md = table(&["sparsity (measured)", "MLP one-shot", "MLP gradual", "CNN one-shot", "CNN gradual"], &rows);
    md.push_str(&format!("\nGradual: over {:.0} fine-tuning epoch(s).\n", num(mlp[0].1, "/finetune_epochs")?));
    Ok(Region { name: "unstructured_digits", markdown: md })
}

fn structured_digits(s: &Value) -> Result<Region> {
    let mut rows = Vec::new();
    for (model, label) in [("mlp", "MLP, hidden units"), ("cnn", "CNN, both convs' channels")] {
        for r in of(s, "/structured", model)? {
            let ratio = num(r, "/ratio")?;
            let (removed, before) = if ratio == 0.0 {
                (format!("{}, none removed", model.to_uppercase()), pct(num(r, "/quality")?, 2))
            } else {
                let widths =
                    r["widths"].as_array().map(|w| w.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "));
                (
                    format!("{label}, {:.0}% removed (widths {})", 100.0 * ratio, widths.unwrap_or_default()),
                    pct(num(r, "/quality_before_finetune")?, 2),
                )
            };
            let after = if ratio == 0.0 { "—".into() } else { pct(num(r, "/quality")?, 2) };
            rows.push(vec![
                removed,
                format!("{} ({} B)", grouped_int(num(r, "/params")?), grouped_int(num(r, "/bytes")?)),
                before,
                after,
                format!("{} µs ({:.2}×)", grouped_int(num(r, "/latency_us")?), num(r, "/latency_speedup")?),
            ]);
        }
    }
    let md = table(
        &[
            "model, units removed",
            "parameters (bytes)",
            "accuracy right after",
            "after fine-tuning",
            "batch-256 forward (speedup)",
        ],
        &rows,
    );
    Ok(Region { name: "structured_digits", markdown: md })
}

fn gpt_structured(s: &Value) -> Result<Region> {
    let gpt = of(s, "/structured", "gpt")?;
    let mut rows = Vec::new();
    for r in &gpt {
        let (unit, ratio) = (text(r, "/unit")?, num(r, "/ratio")?);
        let removed = match unit {
            "control" => "nothing (control)".to_string(),
            "heads" => format!(
                "{:.0}% of heads ({} per block)",
                100.0 * ratio,
                get(r, "/heads_per_block")?.get(0).map_or("?".into(), |h| h.to_string())
            ),
            _ => format!("{:.0}% of {unit}", 100.0 * ratio),
        };
        rows.push(vec![
            removed,
            format!("{} ({} B)", grouped_int(num(r, "/params")?), grouped_int(num(r, "/bytes")?)),
            format!("{} B", grouped_int(num(r, "/kv_cache_bytes")?)),
            format!("{} → {}", pct(num(r, "/quality_before_finetune")?, 1), pct(num(r, "/quality")?, 1)),
            format!("{} ({:.2}×)", grouped_int(num(r, "/decode_tok_s")?), num(r, "/latency_speedup")?),
            format!("{:.2} ({:.2}×)", num(r, "/mlp_block_us")?, num(r, "/mlp_speedup")?),
            format!("{:.2} ({:.2}×)", num(r, "/attn_proj_block_us")?, num(r, "/attn_proj_speedup")?),
        ]);
    }
    let mut md = table(
        &[
            "removed",
            "params (bytes)",
            "KV cache",
            "exact match before → after fine-tuning",
            "decode tok/s (speedup)",
            "block 0 `fc`+`proj` µs (×)",
            "block 0 `qkv`+`proj` µs (×)",
        ],
        &rows,
    );
    md.push_str(&format!(
        "\nEach row fine-tuned {:.0} steps after pruning; the control is the unpruned model fine-tuned the same steps.\n",
        num(gpt.first().copied().unwrap_or(&Value::Null), "/finetune_steps")?
    ));
    Ok(Region { name: "gpt_structured", markdown: md })
}

fn gpt_unstructured(s: &Value) -> Result<Region> {
    let rows = one_shot_and_gradual(s, "gpt")?
        .into_iter()
        .map(|(shot, grad)| {
            Ok(vec![
                format!("{:.0}%", 100.0 * num(shot, "/sparsity")?),
                pct(num(shot, "/quality")?, 1),
                pct(num(grad, "/quality")?, 1),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Region { name: "gpt_unstructured", markdown: table(&["sparsity (measured)", "one-shot", "gradual"], &rows) })
}

fn csr(s: &Value) -> Result<Region> {
    let md = format!(
        "At {} ({}), CSR is faster than the dense GEMV up to density {} (the highest density up to which it wins at every \
         sparser measured one), and stores less than dense f32 up to density {}. Timings are in the tables below.\n",
        get(s, "/sparse_kernel/shape")?,
        text(s, "/sparse_kernel/level")?,
        density(s, "/sparse_kernel/crossover_density")?,
        density(s, "/sparse_kernel/csr_storage_breakeven_density")?,
    );
    Ok(Region { name: "csr", markdown: md })
}

fn block16(s: &Value, base: &str, name: &'static str) -> Result<Region> {
    let mut rows = Vec::new();
    let mut dense_bytes = 0.0;
    for r in array(s, &format!("{base}/rows"))? {
        dense_bytes = num(r, "/dense_bytes")?;
        let us = |x: f64| if x < 0.1 { format!("{x:.3}") } else { format!("{x:.2}") };
        rows.push(vec![
            format!("{:.2}", num(r, "/density")?),
            us(num(r, "/dense_us")?),
            us(num(r, "/csr_us")?),
            format!("{} ({})", us(num(r, "/block_us")?), pct(num(r, "/block_density")?, 0)),
            us(num(r, "/block_pruned/block_us")?),
            us(num(r, "/block_pruned/csr_us")?),
            format!(
                "{} / {} / {}",
                grouped_int(num(r, "/csr_bytes")?),
                grouped_int(num(r, "/block_bytes")?),
                grouped_int(num(r, "/block_pruned/block_bytes")?)
            ),
        ]);
    }
    let bytes_header =
        format!("bytes: CSR / block16 unstr. / block16 block-pruned (dense {})", grouped_int(dense_bytes));
    let mut md = table(
        &[
            "density",
            "dense µs",
            "CSR µs",
            "block16 µs, unstructured (blocks stored)",
            "block16 µs, block-pruned",
            "CSR µs, block-pruned",
            &bytes_header,
        ],
        &rows,
    );
    md.push_str(&format!(
        "\nCrossovers (highest density up to which the format beats the dense GEMV at every sparser density): \
         CSR {}, block16 unstructured {}, block16 block-pruned {}, CSR block-pruned {}. Storage break-even: \
         CSR {}, block16 unstructured {}, block16 block-pruned {}.\n",
        density(s, &format!("{base}/crossover_density"))?,
        density(s, &format!("{base}/block_crossover_density"))?,
        density(s, &format!("{base}/block_pruned_crossover_density"))?,
        density(s, &format!("{base}/block_pruned_csr_crossover_density"))?,
        density(s, &format!("{base}/csr_storage_breakeven_density"))?,
        density(s, &format!("{base}/block_storage_breakeven_density"))?,
        density(s, &format!("{base}/block_pruned_storage_breakeven_density"))?,
    ));
    Ok(Region { name, markdown: md })
}

fn block_pruned(s: &Value) -> Result<Region> {
    let gradual = one_shot_and_gradual(s, "mlp")?;
    let mut rows = Vec::new();
    for r in array(s, "/block_pruned")? {
        let sparsity = num(r, "/sparsity")?;
        // The unstructured gradual row nearest in sparsity, for comparison.
        let unstr = gradual
            .iter()
            .map(|(_, g)| g)
            .filter(|g| (g["sparsity"].as_f64().unwrap_or(f64::NAN) - sparsity).abs() < 0.02)
            .map(|g| num(g, "/quality").map(|q| pct(q, 2)))
            .next()
            .transpose()?
            .unwrap_or_else(|| "—".into());
        rows.push(vec![
            format!("{:.0}%", 100.0 * sparsity),
            pct(num(r, "/one_shot")?, 2),
            format!("{} (as block16: {})", pct(num(r, "/quality")?, 2), pct(num(r, "/quality_block16")?, 2)),
            unstr,
        ]);
    }
    let md = table(&["zeros (measured)", "one-shot", "gradual, fine-tuned", "unstructured, gradual (above)"], &rows);
    Ok(Region { name: "block_pruned", markdown: md })
}

fn lowrank_mlp(s: &Value) -> Result<Region> {
    let mlp = of(s, "/low_rank", "mlp")?;
    let rows = mlp
        .iter()
        .map(|r| {
            Ok(vec![
                format!("{:.0}", num(r, "/rank")?),
                format!(
                    "{} ({:.0}% of dense)",
                    grouped_int(num(r, "/bytes")?),
                    100.0 * num(r, "/bytes")? / num(r, "/dense_bytes")?
                ),
                pct(num(r, "/quality")?, 2),
                pct(num(r, "/finetuned")?, 2),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let mut md = table(&["rank", "bytes", "accuracy", "after fine-tuning"], &rows);
    let first = mlp.first().copied().unwrap_or(&Value::Null);
    md.push_str(&format!(
        "\nDense layer: {} bytes; fine-tuning epochs: {:.0}.\n",
        grouped_int(num(first, "/dense_bytes")?),
        num(first, "/finetune_epochs")?
    ));
    Ok(Region { name: "lowrank_mlp", markdown: md })
}

fn lowrank_gpt(s: &Value) -> Result<Region> {
    let gpt = of(s, "/low_rank", "gpt")?;
    let control =
        find(array(s, "/structured")?, "/structured", &[("model", "gpt".into()), ("unit", "control".into())])?;
    let dense = pct(num(s, "/gpt_distillation/teacher/quality")?, 1);
    let first = gpt.first().copied().unwrap_or(&Value::Null);
    let rows = gpt
        .iter()
        .map(|r| {
            Ok(vec![
                format!("{:.0}", num(r, "/rank")?),
                grouped_int(num(r, "/bytes")?),
                pct(num(r, "/quality")?, 1),
                pct(num(r, "/finetuned")?, 1),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let md = table(
        &[
            "rank",
            &format!("bytes of linear weights (dense {})", grouped_int(num(first, "/dense_bytes")?)),
            &format!("exact match as factored (dense {dense})"),
            &format!(
                "after {:.0} fine-tuning steps (control {})",
                num(first, "/finetune_steps")?,
                pct(num(control, "/quality")?, 1)
            ),
        ],
        &rows,
    );
    Ok(Region { name: "lowrank_gpt", markdown: md })
}

fn distill_digits(s: &Value) -> Result<Region> {
    let d = get(s, "/distillation")?;
    let grid = array(d, "/grid")?;
    let vals = grid.iter().map(|g| num(g, "/val_quality")).collect::<Result<Vec<_>>>()?;
    let (lo, hi) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let rows = vec![
        vec![
            "teacher (CNN)".into(),
            grouped_int(num(d, "/teacher/params")?),
            pct(num(d, "/teacher/quality")?, 2),
            "—".into(),
        ],
        vec![
            "student from scratch".into(),
            grouped_int(num(d, "/student_scratch/params")?),
            pct(num(d, "/student_scratch/quality")?, 2),
            pct(num(d, "/student_scratch/val_quality")?, 2),
        ],
        vec![
            format!(
                "student distilled (T {:.1}, α {:.1}, chosen on validation)",
                num(d, "/temperature")?,
                num(d, "/alpha")?
            ),
            grouped_int(num(d, "/student_distilled/params")?),
            pct(num(d, "/student_distilled/quality")?, 2),
            pct(num(d, "/student_distilled/val_quality")?, 2),
        ],
    ];
    let mut md = table(&["", "parameters", "test accuracy", "validation"], &rows);
    md.push_str(&format!(
        "\nEpochs, each student: {:.0}; {} settings tried, validation accuracy {}–{}.\n",
        num(d, "/epochs")?,
        grid.len(),
        pct(lo, 1),
        pct(hi, 1)
    ));
    Ok(Region { name: "distill_digits", markdown: md })
}

fn distill_gpt(s: &Value) -> Result<Region> {
    let d = get(s, "/gpt_distillation")?;
    let row = |label: String, key: &str| -> Result<Vec<String>> {
        Ok(vec![
            format!("{label} ({})", text(d, &format!("/{key}/model"))?),
            grouped_int(num(d, &format!("/{key}/params"))?),
            pct(num(d, &format!("/{key}/quality"))?, 1),
            format!("{:.3}", num(d, &format!("/{key}/val_perplexity"))?),
        ])
    };
    let rows = vec![
        row("teacher".into(), "teacher")?,
        row("student from scratch".into(), "student_scratch")?,
        row(
            format!("student distilled (T {:.1}, α {:.1})", num(d, "/temperature")?, num(d, "/alpha")?),
            "student_distilled",
        )?,
    ];
    let mut md = table(&["", "parameters", "exact match (unseen questions)", "validation perplexity"], &rows);
    md.push_str(&format!("\nBoth students: {:.0} training steps, same data and seed.\n", num(d, "/steps")?));
    Ok(Region { name: "distill_gpt", markdown: md })
}

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(summary: &Value) -> Result<Vec<Region>> {
    Ok(vec![
        unstructured_digits(summary)?,
        structured_digits(summary)?,
        gpt_structured(summary)?,
        gpt_unstructured(summary)?,
        csr(summary)?,
        block16(summary, "/sparse_kernel", "block16_fc")?,
        block16(summary, "/sparse_kernel/transpose", "block16_proj")?,
        block_pruned(summary)?,
        lowrank_mlp(summary)?,
        lowrank_gpt(summary)?,
        distill_digits(summary)?,
        distill_gpt(summary)?,
    ])
}
