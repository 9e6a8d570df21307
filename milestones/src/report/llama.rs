//! The measured regions of the llama milestone's docs page (docs/13-llama.md): `rows` (every shape
//! and engine: decode and prefill rates, roofline, the llama2.c peer) and `goals` (issue 21's
//! targets judged on those rows).

use serde_json::Value;

use super::{array, num, table, text, yes_no, Region};
use crate::Result;

/// Charts the milestone writes (none).
pub const FIGURES: &[(&str, &str)] = &[];

/// llama.cpp's tg128 tok/s on this machine kind, one thread, as issue 21 quotes them (build
/// b4748, `llama-bench` on random GGUF files of the same shapes): not measured by this repository.
const LLAMA_CPP: &[(&str, &str, f64)] = &[
    ("stories15M", "int8 (Q8_0 file)", 1050.0),
    ("stories15M", "int4", 1210.0),
    ("stories110M", "int8 (Q8_0 file)", 130.0),
    ("stories110M", "int4", 171.0),
];

fn peer(r: &Value) -> Option<f64> {
    r["peer_tok_s"].as_f64()
}

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(summary: &Value) -> Result<Vec<Region>> {
    let rows = array(summary, "/rows")?;
    let mut cells = Vec::new();
    for r in rows {
        let (tok_s, roof) = (num(r, "/decode_tok_s")?, num(r, "/roofline_tok_s")?);
        let peer_cell = match peer(r) {
            Some(p) => format!("{} {p:.1} ({:.2}×)", text(r, "/peer")?, tok_s / p),
            None if text(r, "/peer")?.is_empty() => "—".into(),
            None => format!("{}: not given", text(r, "/peer")?),
        };
        cells.push(vec![
            text(r, "/shape")?.to_string(),
            text(r, "/engine")?.to_string(),
            format!("{}", num(r, "/threads")?),
            format!("{tok_s:.1}"),
            format!("{roof:.1} ({}, {:.0}%)", text(r, "/roofline_level")?, 100.0 * tok_s / roof),
            format!("{:.0} ({} tokens)", num(r, "/prefill_tok_s")?, num(r, "/prefill_tokens")?),
            peer_cell,
        ]);
    }
    let mut md = format!(
        "Decode: batch 1, a {}-token prompt then {} greedy tokens, the median of three generations. Roofline: the \
         bytes one step reads (every projection and the head once, the KV cache to mid-generation) over the read \
         bandwidth of the memory level they live in. Peer: llama2.c's own program on the same file, its `achieved \
         tok/s` (ours ÷ its in brackets).\n\n",
        num(summary, "/prompt_tokens")?,
        num(summary, "/decode_tokens")?
    );
    md.push_str(&table(
        &[
            "shape",
            "engine",
            "threads",
            "decode tok/s",
            "roofline tok/s (level, % reached)",
            "prefill tok/s",
            "peer tok/s",
        ],
        &cells,
    ));
    let cpp = summary["llama_cpp"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !cpp.is_empty() {
        md.push_str(
            "\nllama.cpp in the same run, on the same f32 file converted to GGUF and quantized by its own tools, \
             `llama-bench` on one thread (tg: decode, pp: prefill):\n\n",
        );
        let mut c = Vec::new();
        for r in cpp {
            c.push(vec![
                text(r, "/shape")?.to_string(),
                text(r, "/format")?.to_string(),
                format!("{:.1}", num(r, "/tg_tok_s")?),
                format!("{:.0} ({} tokens)", num(r, "/pp_tok_s")?, num(r, "/prefill_tokens")?),
            ]);
        }
        md.push_str(&table(&["shape", "llama.cpp format", "tg tok/s", "pp tok/s"], &c));
    }
    Ok(vec![Region { name: "rows", markdown: md }, Region { name: "goals", markdown: goals(rows, cpp)? }])
}

/// llama.cpp's decode rate for our `engine` on `shape`: measured in this run if it was, else the
/// issue's figure (and which it is).
fn llama_cpp_rate(cpp: &[Value], shape: &str, engine: &str) -> Option<(f64, &'static str)> {
    let format = match engine {
        "int8 (Q8_0 file)" => "Q8_0",
        "int4" => "Q4_0",
        _ => return None,
    };
    let measured =
        cpp.iter().find(|r| r["shape"] == shape && r["format"] == format).and_then(|r| r["tg_tok_s"].as_f64());
    match measured {
        Some(v) => Some((v, "measured in this run")),
        None => LLAMA_CPP.iter().find(|c| c.0 == shape && c.1 == engine).map(|c| (c.2, "the issue's figure")),
    }
}

fn goals(rows: &[Value], cpp: &[Value]) -> Result<String> {
    let mut t = Vec::new();
    for r in rows {
        let (shape, engine, threads) = (text(r, "/shape")?, text(r, "/engine")?, num(r, "/threads")?);
        let tok_s = num(r, "/decode_tok_s")?;
        if engine == "f32" {
            let share = tok_s / num(r, "/roofline_tok_s")?;
            t.push(vec![
                format!("{shape} f32, {threads} thread(s): ≥ 90% of its roofline"),
                format!("{:.0}%", 100.0 * share),
                yes_no(share >= 0.9).into(),
            ]);
            let cell = match peer(r) {
                Some(p) => vec![format!("{tok_s:.1} vs {p:.1}"), yes_no(tok_s >= p).into()],
                None => vec!["run.c not given".into(), "—".into()],
            };
            t.push([vec![format!("{shape} f32, {threads} thread(s): not slower than run.c")], cell].concat());
        }
        if let Some((rate, source)) = llama_cpp_rate(cpp, shape, engine) {
            t.push(vec![
                format!("{shape} {engine}: ahead of llama.cpp ({rate:.1} tok/s, {source})"),
                format!("{tok_s:.1}"),
                yes_no(tok_s > rate).into(),
            ]);
        }
    }
    Ok(table(&["goal (issue 21)", "measured", "met"], &t))
}
