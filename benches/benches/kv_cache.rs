//! KV-cache benches on the default GPT shape (d 128, 4 layers, 4 heads, context 640, vocab 48):
//! - one decode step at context 32, 128 and 512: cached (append one token, attend over the
//!   cache) vs uncached (re-run the whole context + 1 tokens), same engine and kernels;
//! - the cached decode step with tt-accel's packed projections and fused row kernels;
//! - batched cached decode throughput at batch 1, 4 and 16 (context 128).
//!
//! The cache is truncated back after each timed step so every iteration sees the same context.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tt_kvcache::{CachedGpt, OverflowPolicy};
use tt_transformer::{Gpt, GptConfig};

fn model() -> Gpt {
    Gpt::new(GptConfig::default_model(48)).expect("valid config")
}

fn bench(c: &mut Criterion) {
    let m = model();
    let mut g = c.benchmark_group("decode_step");
    for &ctx in &[32usize, 128, 512] {
        let ids: Vec<usize> = (0..ctx + 1).map(|i| (i * 7) % 48).collect();
        let mut eng = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        eng.prefill(&ids[..ctx], ctx).unwrap();
        g.bench_with_input(BenchmarkId::new("cached", ctx), &ctx, |b, &ctx| {
            b.iter(|| {
                eng.decode_step(&ids[ctx..]).unwrap();
                eng.truncate(ctx).unwrap();
            })
        });
        let mut full = CachedGpt::new(&m, 1, OverflowPolicy::Error).unwrap();
        g.bench_with_input(BenchmarkId::new("uncached", ctx), &ctx, |b, &ctx| {
            b.iter(|| {
                full.prefill(&ids, ctx + 1).unwrap();
            })
        });
    }
    g.finish();

    // The same decode step with tt-accel's packed projections and fused row kernels installed.
    let mut g = c.benchmark_group("decode_step_accelerated");
    let mut packed = model();
    tt_accel::packed::pack_linears(&mut packed).expect("packs");
    for &ctx in &[32usize, 128, 512] {
        let ids: Vec<usize> = (0..ctx + 1).map(|i| (i * 7) % 48).collect();
        let mut eng = CachedGpt::new(&packed, 1, OverflowPolicy::Error).unwrap();
        eng.set_row_kernels(tt_accel::fused::row_kernels());
        eng.prefill(&ids[..ctx], ctx).unwrap();
        g.bench_with_input(BenchmarkId::new("packed_fused", ctx), &ctx, |b, &ctx| {
            b.iter(|| {
                eng.decode_step(&ids[ctx..]).unwrap();
                eng.truncate(ctx).unwrap();
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("batched_decode");
    let ctx = 128;
    for &batch in &[1usize, 4, 16] {
        let ids: Vec<usize> = (0..batch * ctx).map(|i| (i * 5) % 48).collect();
        let next: Vec<usize> = (0..batch).map(|i| i % 48).collect();
        let mut eng = CachedGpt::new(&m, batch, OverflowPolicy::Error).unwrap();
        eng.prefill(&ids, ctx).unwrap();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            b.iter(|| {
                eng.decode_step(&next).unwrap();
                eng.truncate(ctx).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
