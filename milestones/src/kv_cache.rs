//! Milestone `kv_cache` (module 14): the same greedy generation with and without the KV cache,
//! timed the same way, on the trained transformer.
//!
//! Both sides run the same engine and kernels ([`tt_kvcache::CachedGpt`]): the cached side
//! prefills once and then decodes one token per step; the uncached side re-runs the whole sequence
//! every step. Both produce the same tokens, which are also checked against tt-transformer's
//! reference generation. Single-threaded: the figures are per core.

use serde_json::json;
use tt_kvcache::{generate_cached, generate_uncached, CachedGpt, OverflowPolicy, Trace};
use tt_transformer::generate::{generate, GenerateConfig};
use tt_transformer::Tokenize;

use crate::{transformer, MilestoneError, Options, Result};

pub const NAME: &str = "kv_cache";

const PROMPT: &str = "Q: what is 3 plus 4?\nA:";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(opts: &Options) -> Result<serde_json::Value> {
    let (model, tokenizer, _, _) = transformer::load_or_train(&Options { corpus: None, ..opts.clone() })?;
    let prompt = tokenizer.encode_ids(PROMPT)?;
    let lengths: &[usize] = if opts.quick { &[16, 32] } else { &[64, 128, 256, 512] };
    let repeats = if opts.quick { 1 } else { 3 };
    opts.say(format!(
        "kv_cache: greedy generation after a {}-token prompt, batch 1, one thread; median of {repeats} runs per cell",
        prompt.len()
    ));
    let mut engine =
        CachedGpt::new(&model, 1, OverflowPolicy::Error).map_err(|e| MilestoneError::Other(e.to_string()))?;
    let mut rows = Vec::new();
    let mut all_identical = true;
    let mut last_text = String::new();
    opts.say(format!(
        "{:>6} {:>14} {:>12} {:>8} {:>22} {:>22} {:>11}  same text",
        "tokens",
        "uncached tok/s",
        "cached tok/s",
        "speedup",
        "uncached 1st/last ms",
        "cached 1st/last ms",
        "cache KiB"
    ));
    for &n in lengths {
        let cfg = GenerateConfig::greedy(n);
        let prompts = vec![prompt.clone()];
        let kv = |e: tt_kvcache::KvError| MilestoneError::Other(e.to_string());
        let mut cached: Vec<Trace> = Vec::new();
        let mut uncached: Vec<Trace> = Vec::new();
        // Interleave the two sides so drift in machine load affects both alike.
        for _ in 0..repeats {
            uncached.push(generate_uncached(&mut engine, &prompts, &cfg).map_err(kv)?);
            cached.push(generate_cached(&mut engine, &prompts, &cfg).map_err(kv)?);
        }
        let identical = cached.iter().chain(&uncached).all(|t| t.tokens == cached[0].tokens);
        all_identical &= identical;
        let c_tps = median(cached.iter().map(|t| t.tokens_per_second(1)).collect());
        let u_tps = median(uncached.iter().map(|t| t.tokens_per_second(1)).collect());
        // Step 0 includes the prompt; the "first" decode step is step 1.
        let step_ms = |ts: &[Trace], i: usize| 1e3 * median(ts.iter().map(|t| t.step_seconds[i]).collect());
        let (c_first, c_last) = (step_ms(&cached, 1), step_ms(&cached, n - 1));
        let (u_first, u_last) = (step_ms(&uncached, 1), step_ms(&uncached, n - 1));
        let cache = engine.cache();
        let s = cache.shape();
        let used_bytes = 2 * s.layers * s.batch * s.heads * (prompt.len() + n) * s.head_dim * 4;
        opts.say(format!(
            "{n:>6} {u_tps:>14.0} {c_tps:>12.0} {:>7.1}x {:>10.3} / {:>9.3} {:>10.3} / {:>9.3} {:>11.1}  {}",
            c_tps / u_tps,
            u_first,
            u_last,
            c_first,
            c_last,
            used_bytes as f64 / 1024.0,
            if identical { "yes" } else { "NO" }
        ));
        rows.push(json!({
            "tokens": n,
            "uncached_tok_s": u_tps,
            "cached_tok_s": c_tps,
            "speedup": c_tps / u_tps,
            "uncached_first_step_ms": u_first,
            "uncached_last_step_ms": u_last,
            "cached_first_step_ms": c_first,
            "cached_last_step_ms": c_last,
            "cache_bytes_used": used_bytes,
            "cache_bytes_allocated": cache.memory_bytes(),
            "identical": identical,
        }));
        last_text = tokenizer.decode_ids(&cached[0].tokens[0])?;
    }
    // The longest generation must also equal tt-transformer's own full-recompute reference.
    let longest = *lengths.last().expect("at least one length");
    let start = std::time::Instant::now();
    let reference = generate(&model, &prompt, &GenerateConfig::greedy(longest))?;
    let reference_tps = longest as f64 / start.elapsed().as_secs_f64();
    let ref_text = tokenizer.decode_ids(&reference)?;
    let reference_identical = ref_text == last_text;
    all_identical &= reference_identical;
    opts.say(format!(
        "tt-transformer's own full-recompute generation (autograd ops under no_grad): {reference_tps:.0} tok/s at {longest} tokens"
    ));
    opts.say(format!(
        "cached, uncached and tt-transformer reference texts identical: {}",
        if all_identical { "yes" } else { "NO" }
    ));
    opts.say(format!(
        "cache allocated for the full context: {:.1} KiB (2·L·B·H·S·D·4 with S = {})",
        engine.cache().memory_bytes() as f64 / 1024.0,
        engine.cache().capacity()
    ));
    let preview: String = last_text.chars().take(160).collect();
    opts.say(format!("first 160 characters generated:\n{PROMPT}{preview}"));
    Ok(json!({
        "milestone": NAME,
        "prompt": PROMPT,
        "prompt_tokens": prompt.len(),
        "outputs_identical": all_identical,
        "reference_identical": reference_identical,
        "reference_tok_s": reference_tps,
        "reference_tokens": longest,
        "rows": rows,
        "cache_bytes_allocated": engine.cache().memory_bytes(),
        "cache_capacity": engine.cache().capacity(),
        "sample": format!("{PROMPT}{preview}"),
        "threads": 1,
        "repeats": repeats,
    }))
}
