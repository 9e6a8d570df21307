//! Cost of tt-tensor's op hook with no profiler attached, on the default GPT forward (128 tokens):
//! - `hook_disabled/op_scope`: one `OpScope` open + close with nothing observing (every op pays it);
//! - `hook_disabled/layer_scope`: one layer scope (containers pay it per child);
//! - `gpt_forward_128/plain` vs `/profiled`: the forward itself, and with the profiler recording.
//!
//! Disabled overhead = (ops × op_scope + layers × layer_scope) / plain forward; the counts per
//! forward are printed once at start.

use criterion::{criterion_group, criterion_main, Criterion};
use tt_tensor::hook::{layer_scope, OpInfo, OpScope};
use tt_tensor::no_grad;
use tt_transformer::{Gpt, GptConfig};

fn bench(c: &mut Criterion) {
    let m = Gpt::new(GptConfig::default_model(48)).expect("valid config");
    let ids: Vec<usize> = (0..128).map(|i| i % 48).collect();
    let (_, p) = tt_profile::profiler::profile(|| no_grad(|| m.forward_ids(&ids, 1, 128)).unwrap());
    let layers = 2 + m.blocks.len();
    println!("hook calls per forward: {} op scopes, {layers} layer scopes", p.records.len());

    let mut g = c.benchmark_group("hook_disabled");
    g.bench_function("op_scope", |b| {
        b.iter(|| {
            let s = OpScope::begin(std::hint::black_box("op"), || OpInfo {
                input_shapes: vec![vec![1]],
                flops: 1,
                bytes: 1,
            });
            drop(std::hint::black_box(s));
        })
    });
    g.bench_function("layer_scope", |b| b.iter(|| layer_scope(|| "blocks.0".to_string(), || std::hint::black_box(1))));
    g.finish();

    let mut g = c.benchmark_group("gpt_forward_128");
    g.bench_function("plain", |b| b.iter(|| no_grad(|| m.forward_ids(&ids, 1, 128).unwrap())));
    g.bench_function("profiled", |b| {
        b.iter(|| tt_profile::profiler::profile(|| no_grad(|| m.forward_ids(&ids, 1, 128).unwrap())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
