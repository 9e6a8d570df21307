//! The trained GPT decoding greedily in a loop, for profilers (`perf record`, callgrind): one
//! engine, nothing else in the process.
//!
//! ```sh
//! cargo run --release -p milestones --example decode -- [f32|packed|int8|int8-kv8] [tokens] [repeats]
//! ```
//! `f32`: dense reference layers and kernels; `packed`: tt-accel's packed layers and fused row
//! kernels; `int8`: dynamic per-channel int8 layers and fused row kernels; `int8-kv8`: plus the
//! int8 KV cache. Needs the cached model (`cargo tito milestone transformer` trains it).

use milestones::{transformer, Options};
use tt_kvcache::{generate_cached, CachedGpt, KvStorage, OverflowPolicy};
use tt_transformer::generate::GenerateConfig;
use tt_transformer::Tokenize;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let engine = args.first().map_or("int8-kv8", String::as_str);
    let tokens: usize = args.get(1).map_or(Ok(512), |s| s.parse())?;
    let repeats: usize = args.get(2).map_or(Ok(20), |s| s.parse())?;
    let opts = Options { quiet: true, ..Options::default() };
    let (mut model, tokenizer, _, _) = transformer::load_or_train(&opts)?;
    match engine {
        "f32" => {}
        "packed" => drop(tt_accel::packed::pack_linears(&mut model)?),
        "int8" | "int8-kv8" => drop(tt_quant::quantize_dynamic(&mut model, tt_quant::WeightConfig::PER_CHANNEL)?),
        other => return Err(format!("unknown engine '{other}' (f32, packed, int8, int8-kv8)").into()),
    }
    let mut e = CachedGpt::new(&model, 1, OverflowPolicy::Error)?;
    if engine != "f32" {
        e.set_row_kernels(tt_accel::fused::row_kernels());
    }
    if engine == "int8-kv8" {
        e.set_kv_storage(KvStorage::Int8)?;
    }
    let prompt = tokenizer.encode_ids("Q: what is 3 plus 4?\nA:")?;
    let tokens = tokens.min(model.config.max_seq_len - prompt.len());
    let cfg = GenerateConfig::greedy(tokens);
    let mut best = 0.0f64;
    for _ in 0..repeats {
        best = best.max(generate_cached(&mut e, std::slice::from_ref(&prompt), &cfg)?.tokens_per_second(1));
    }
    println!("{engine}: {tokens} tokens × {repeats}: best {best:.0} tok/s");
    Ok(())
}
