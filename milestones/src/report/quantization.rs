//! The measured regions of the quantization milestone's docs page (docs/17): the int8 GEMM, every
//! model under every scheme, and the int8 KV cache's decode step.

use serde_json::Value;

use super::{array, find, get, grouped_int, num, pct, table, text, Region};
use crate::Result;

/// Charts the milestone writes: (path relative to the cache directory, name under docs/figures/).
pub const FIGURES: &[(&str, &str)] = &[("quantization/quality_vs_bytes.svg", "17-quality-vs-bytes.svg")];

const SCHEME_NAMES: [(&str, &str); 8] = [
    ("fp32", "fp32"),
    ("dynamic_per_tensor", "dynamic per-tensor"),
    ("dynamic_per_channel", "dynamic per-channel"),
    ("dynamic_per_group64", "dynamic per-group (64)"),
    ("int4_g32", "int4 (group 32)"),
    ("static_minmax", "static min-max"),
    ("static_histogram", "static histogram"),
    ("qat", "QAT"),
];

fn gemm(s: &Value) -> Result<Region> {
    let f32_gflops = num(s, "/gemm/f32_gflops")?;
    let int8 = num(s, "/gemm/int8_gops")?;
    let peak = match get(s, "/gemm/vnni_peak_gops")? {
        Value::Null => String::new(),
        p => format!(
            " ({} of the VNNI peak measured in the same run, {:.0} GOP/s)",
            pct(int8 / p.as_f64().unwrap_or(f64::NAN), 0),
            p.as_f64().unwrap_or(f64::NAN)
        ),
    };
    let n = num(s, "/gemm/n")?;
    let rows = vec![
        vec!["f32, tt-accel packed GEMM".into(), format!("{f32_gflops:.1}"), "1.00×".into()],
        vec![
            format!("int8 product (`PackedI8::matmul` at {}, u8 activations ready)", text(s, "/gemm/int8_level")?),
            format!("**{int8:.1}**{peak}"),
            format!("**{:.2}×**", num(s, "/gemm/speedup")?),
        ],
        vec![
            format!("whole int8 projection (quantize {n:.0} rows + product + epilogue)"),
            format!("{:.1}", num(s, "/gemm/int8_projection_gops")?),
            format!("{:.2}×", num(s, "/gemm/projection_speedup")?),
        ],
    ];
    Ok(Region { name: "gemm", markdown: table(&[&format!("n = {n:.0}"), "GOP/s", "vs f32"], &rows) })
}

fn models(s: &Value) -> Result<Region> {
    let rows = array(s, "/models")?;
    let mut out = Vec::new();
    for model in ["mlp", "cnn", "gpt"] {
        let fp32 = find(rows, "/models", &[("model", model.into()), ("scheme", "fp32".into())])?;
        let (fp32_bytes, fp32_latency) = (num(fp32, "/weight_bytes")?, num(fp32, "/latency")?);
        let gpt = model == "gpt";
        let quality = |r: &Value| -> Result<String> {
            Ok(if gpt {
                format!("{} (ppl {:.3})", pct(num(r, "/quality")?, 1), num(r, "/val_perplexity")?)
            } else {
                pct(num(r, "/quality")?, 2)
            })
        };
        // Speed against fp32, as "× faster": tok/s grows with speed, µs/sample shrinks.
        let speed = |latency: f64| if gpt { latency / fp32_latency } else { fp32_latency / latency };
        let latency = |latency: f64| {
            if gpt {
                format!("{} tok/s", grouped_int(latency))
            } else {
                format!("{latency:.2} µs/sample")
            }
        };
        for (scheme, label) in SCHEME_NAMES {
            let r = find(rows, "/models", &[("model", model.into()), ("scheme", scheme.into())])?;
            let (bytes, lat) = (num(r, "/weight_bytes")?, num(r, "/latency")?);
            out.push(vec![
                model.to_uppercase(),
                label.into(),
                quality(r)?,
                format!("{} ({:.2}×)", grouped_int(bytes), fp32_bytes / bytes),
                format!(
                    "{} ({:.2}×)",
                    grouped_int(num(r, "/model_bytes")?),
                    num(fp32, "/model_bytes")? / num(r, "/model_bytes")?
                ),
                latency(lat),
                format!("{:.2}×", speed(lat)),
            ]);
        }
        if gpt {
            let r =
                find(rows, "/models", &[("model", "gpt".into()), ("scheme", text(s, "/decode/int8_scheme")?.into())])?;
            let bytes = num(r, "/weight_bytes")?;
            let tok_s = num(s, "/decode/int8_kv_tok_s")?;
            out.push(vec![
                "GPT".into(),
                format!(
                    "{} + int8 KV cache",
                    SCHEME_NAMES.iter().find(|(k, _)| *k == r["scheme"]).map_or("?", |n| n.1)
                ),
                format!(
                    "{} (ppl {:.3})",
                    pct(num(s, "/decode/int8_kv_exact_match")?, 1),
                    num(s, "/decode/int8_kv_val_perplexity")?
                ),
                format!("{} ({:.2}×)", grouped_int(bytes), fp32_bytes / bytes),
                format!(
                    "{} ({:.2}×)",
                    grouped_int(num(r, "/model_bytes")?),
                    num(fp32, "/model_bytes")? / num(r, "/model_bytes")?
                ),
                format!("**{} tok/s**", grouped_int(tok_s)),
                format!("**{:.2}×**", num(s, "/decode/int8_kv_speedup")?),
            ]);
        }
    }
    let mut md =
        table(&["model", "scheme", "quality", "weight bytes", "model bytes", "latency", "speed vs fp32"], &out);
    let qat = find(rows, "/models", &[("model", "gpt".into()), ("scheme", "qat".into())])?;
    let int = get(s, "/integer_mlp")?;
    md.push_str(&format!(
        "\nGPT latency: greedy decode of {:.0} tokens after a {:.0}-token prompt, batch 1, one thread, median of {:.0}, \
         every engine interleaved in the same run. Classifier latency is per sample of a batch of 256. \
         QAT's control, the fp32 GPT fine-tuned with the same steps and seed without fake quantization: \
         {} exact match (ppl {:.3}). The digits MLP run fully in integers (`integer_mlp`, {} kernels): {} accuracy, \
         {} of its output codes equal to the float formula's, none more than {:.0} code off.\n",
        num(s, "/decode/tokens")?,
        num(s, "/decode/prompt_tokens")?,
        num(s, "/decode/repeats")?,
        pct(num(qat, "/control_fp32_finetuned/quality")?, 1),
        num(qat, "/control_fp32_finetuned/val_perplexity")?,
        text(int, "/integer_level")?,
        pct(num(int, "/quality")?, 2),
        pct(num(int, "/codes_equal_float_reference")?, 2),
        num(int, "/max_code_difference")?,
    ));
    Ok(Region { name: "models", markdown: md })
}

fn int8_kv(s: &Value) -> Result<Region> {
    let rows = array(s, "/models")?;
    let fp32 = find(rows, "/models", &[("model", "gpt".into()), ("scheme", "fp32".into())])?;
    let int8 = find(rows, "/models", &[("model", "gpt".into()), ("scheme", text(s, "/decode/int8_scheme")?.into())])?;
    let read = |r: &Value| -> Result<f64> {
        Ok(num(r, "/weight_bytes_read_per_token")? + num(r, "/kv_bytes_read_per_token")?)
    };
    let (kv_w, kv_kv) =
        (num(s, "/decode/int8_kv_weight_bytes_read_per_token")?, num(s, "/decode/int8_kv_kv_bytes_read_per_token")?);
    let tok_s = num(s, "/decode/int8_kv_tok_s")?;
    let mut md = format!(
        "A decode step at mid-generation reads {} bytes with int8 weights **and** the int8 cache ({} of weights, \
         packed with their scales and code sums, + {} of cache), against {} with int8 weights and the f32 cache \
         ({} of it cache) and {} for the f32 decoder. Measured: **{} tok/s, {:.2}× the f32 decoder in the same run**, \
         exact match {} (perplexity {:.3}). Reading those bytes bounds a step at {} tok/s from {} (the \
         milestone's level rule) and {} tok/s from L2 (read bandwidths measured in the same run: L2 {:.0} GB/s, \
         L3 {:.0} GB/s).\n\n",
        grouped_int(kv_w + kv_kv),
        grouped_int(kv_w),
        grouped_int(kv_kv),
        grouped_int(read(int8)?),
        grouped_int(num(int8, "/kv_bytes_read_per_token")?),
        grouped_int(read(fp32)?),
        grouped_int(tok_s),
        num(s, "/decode/int8_kv_speedup")?,
        pct(num(s, "/decode/int8_kv_exact_match")?, 1),
        num(s, "/decode/int8_kv_val_perplexity")?,
        grouped_int(num(s, "/decode/int8_kv_roofline_tok_s")?),
        text(s, "/decode/int8_kv_roofline_level")?,
        grouped_int(num(s, "/decode/int8_kv_l2_bound_tok_s")?),
        num(s, "/machine/l2_read_gbs")?,
        num(s, "/machine/l3_read_gbs")?,
    );
    md.push_str(&format!(
        "That step under the op profiler (position {:.0}):\n\n",
        num(s, "/decode/breakdown_position")?
    ));
    let ops = array(s, "/decode/int8_kv_step_breakdown")?
        .iter()
        .map(|o| {
            Ok(vec![
                text(o, "/op")?.to_string(),
                format!("{:.2}", num(o, "/us_per_step")?),
                format!("{:.1}%", num(o, "/percent")?),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    md.push_str(&table(&["op", "µs per step", "share"], &ops));
    Ok(Region { name: "int8_kv", markdown: md })
}

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(summary: &Value) -> Result<Vec<Region>> {
    Ok(vec![gemm(summary)?, models(summary)?, int8_kv(summary)?])
}
