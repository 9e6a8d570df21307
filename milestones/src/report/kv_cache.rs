//! The measured regions of the kv_cache milestone's docs page (docs/14): `generation` (cached vs
//! uncached generation per length, the reference, the cache's size) and `sample` (the text).

use serde_json::Value;

use super::{array, flag, grouped, median_of, num, table, text, yes_no, Region};
use crate::Result;

/// Charts the milestone writes: (path relative to the cache directory, name under docs/figures/).
pub const FIGURES: &[(&str, &str)] = &[];

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(summary: &Value) -> Result<Vec<Region>> {
    let mut rows = Vec::new();
    for r in array(summary, "/rows")? {
        let kib = |k: &str| -> Result<String> { Ok(format!("{} KiB", grouped(num(r, k)? / 1024.0, 0))) };
        let ms = |a: &str, b: &str| -> Result<String> { Ok(format!("{:.3} / {:.3} ms", num(r, a)?, num(r, b)?)) };
        rows.push(vec![
            grouped(num(r, "/tokens")?, 0),
            grouped(num(r, "/uncached_tok_s")?, 0),
            grouped(num(r, "/cached_tok_s")?, 0),
            format!("{:.1}×", num(r, "/speedup")?),
            ms("/uncached_first_step_ms", "/uncached_last_step_ms")?,
            ms("/cached_first_step_ms", "/cached_last_step_ms")?,
            kib("/cache_bytes_used")?,
            yes_no(flag(r, "/identical")?).to_string(),
        ]);
    }
    let repeats = match num(summary, "/repeats")? {
        1.0 => "one run".to_string(),
        n => format!("{}, the two sides interleaved", median_of(n)),
    };
    let mut generation = format!(
        "Greedy generation after the {}-token prompt, batch 1, {} thread; each cell {repeats}.\n\n",
        num(summary, "/prompt_tokens")?,
        num(summary, "/threads")?,
    );
    generation.push_str(&table(
        &[
            "tokens",
            "uncached tok/s",
            "cached tok/s",
            "speedup",
            "uncached first / last step",
            "cached first / last step",
            "cache used",
            "same text",
        ],
        &rows,
    ));
    generation.push_str(&format!(
        "\ntt-transformer's own full-recompute generation (autograd ops under `no_grad`): {} tok/s at {} tokens. \
         Cached, uncached and tt-transformer's reference texts identical at every length: {}. \
         The cache allocated for the full {}-token context: {} KiB.\n",
        grouped(num(summary, "/reference_tok_s")?, 0),
        num(summary, "/reference_tokens")?,
        yes_no(flag(summary, "/outputs_identical")?),
        num(summary, "/cache_capacity")?,
        grouped(num(summary, "/cache_bytes_allocated")? / 1024.0, 0),
    ));
    let sample = format!("```\n{}\n...\n```", text(summary, "/sample")?.trim_end());
    Ok(vec![Region { name: "generation", markdown: generation }, Region { name: "sample", markdown: sample }])
}
